//! Fixtures shared by the state machine's integration tests.
#![allow(dead_code)]

use raft_store::layout::generate;
use raft_store::{
    Batch, Command, CreateEvent, EventId, HoldId, HoldRequest, Limits, Outcome, SeatMachine,
};

pub const T0: u64 = 1_700_000_000_000;

/// A machine that applies commands one per entry and checks every invariant after each.
pub struct Harness {
    pub m: SeatMachine,
    pub index: u64,
    pub now: u64,
}

pub fn ev(id: &str) -> EventId {
    EventId::new(id).unwrap()
}

/// The id key of every event the tests create.
pub const TEST_ID_KEY: raft_store::IdKey = raft_store::IdKey([7; 16]);

/// The id of hold `seq` of event `event` created by [`create`].
#[allow(dead_code)]
pub fn hold_id(event: &str, seq: u64) -> HoldId {
    HoldId {
        event: ev(event),
        seq,
        tag: TEST_ID_KEY.tag(b'h', seq),
    }
}

pub fn create(id: &str, sections: u32, rows: u32, per_row: u32, limits: Limits) -> Command {
    Command::CreateEvent(CreateEvent {
        event_id: ev(id),
        name: format!("Show {id}"),
        starts_at_ms: T0 + 86_400_000,
        layout: generate("Hall", sections, rows, per_row),
        limits,
        by: None,
        id_key: TEST_ID_KEY,
    })
}

pub fn hold_req(event: &str, user: &str, crid: &str, seats: &[&str]) -> HoldRequest {
    HoldRequest {
        event_id: ev(event),
        user: user.into(),
        seats: seats.iter().map(|s| s.to_string()).collect(),
        client_reservation_id: crid.into(),
        ttl_ms: None,
        expected_versions: None,
    }
}

impl Harness {
    /// One event `e` of 2 sections x 2 rows x 5 seats (rows A-D), default limits.
    pub fn new() -> Self {
        let mut h = Self {
            m: SeatMachine::new(),
            index: 0,
            now: T0,
        };
        h.ok(create("e", 2, 2, 5, Limits::default()));
        h
    }

    pub fn at(&mut self, now: u64) -> &mut Self {
        self.now = now;
        self
    }

    pub fn run(&mut self, cmd: Command) -> Outcome {
        self.index += 1;
        let mut out = self.m.apply(
            self.index,
            &Batch {
                ts_ms: self.now,
                commands: vec![cmd],
            },
        );
        self.m.check_invariants().unwrap();
        out.pop().unwrap()
    }

    /// Runs `cmd` and asserts it changed nothing: the state equals that of applying an
    /// empty entry at the same index.
    pub fn run_unchanged(&mut self, cmd: Command) -> Outcome {
        let mut untouched = self.m.clone();
        let out = self.run(cmd);
        untouched.apply(
            self.index,
            &Batch {
                ts_ms: self.now,
                commands: vec![],
            },
        );
        assert_eq!(self.m.digest(), untouched.digest(), "command changed state");
        out
    }

    pub fn ok(&mut self, cmd: Command) -> raft_store::Reply {
        let out = self.run(cmd.clone());
        out.unwrap_or_else(|r| panic!("{cmd:?} refused: {r:?}"))
    }

    pub fn hold(&mut self, user: &str, crid: &str, seats: &[&str]) -> Outcome {
        self.run(Command::Hold(hold_req("e", user, crid, seats)))
    }

    pub fn held(&mut self, user: &str, crid: &str, seats: &[&str]) -> HoldId {
        match self.hold(user, crid, seats) {
            Ok(raft_store::Reply::Held(v)) => v.hold_id,
            other => panic!("hold of {seats:?} gave {other:?}"),
        }
    }

    pub fn seat(&self, id: &str) -> (raft_store::SeatStateName, u64) {
        let map = self.m.seat_map(&ev("e")).unwrap();
        let s = map.seats.iter().find(|s| &*s.id == id).unwrap();
        (s.state, s.version)
    }
}
