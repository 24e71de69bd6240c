//! Property tests: random interleavings of holds, checkouts, releases, expiries and
//! clock movements by several users on an 8-seat venue, checked after every step
//! against the invariants and against a reference model written here, separately and
//! as plainly as possible (vectors and linear scans, no indexes). Clock jumps of about
//! the decision retention exercise forgetting: the model drops a record that only
//! answers retries once more than `DECISION_RETENTION_MS` passed since it became so,
//! and a retry after that is decided as new.

mod common;

use common::{ev, hold_req, T0};
use proptest::prelude::*;
use raft_store::layout::{RowLayout, SectionLayout};
use raft_store::limits::DECISION_RETENTION_MS;
use raft_store::{
    Batch, Command, CreateEvent, HoldState, Limits, Outcome, Refusal, Reply, SeatMachine,
    SeatStateName, VenueLayout,
};

const SEATS: [&str; 8] = ["A-1", "A-2", "A-3", "A-4", "B-1", "B-2", "B-3", "B-4"];
const UNKNOWN_SEAT: usize = 8;
const LIMITS: Limits = Limits {
    seats_per_hold_max: 3,
    seats_per_user_max: 4,
    hold_ttl_ms_min: 1_000,
    hold_ttl_ms_max: 10_000,
    hold_ttl_ms_default: 5_000,
    checkout_ttl_ms: 3_000,
};

fn create_cmd() -> Command {
    let row = |id: &str| RowLayout {
        id: id.into(),
        seats: Some(4),
        first: None,
        seat_ids: None,
    };
    Command::CreateEvent(CreateEvent {
        event_id: ev("e"),
        name: "Model".into(),
        starts_at_ms: T0,
        layout: VenueLayout {
            venue: "V".into(),
            sections: vec![SectionLayout {
                id: "S".into(),
                rows: vec![row("A"), row("B")],
            }],
        },
        limits: LIMITS,
        by: None,
        id_key: raft_store::IdKey([7; 16]),
    })
}

#[derive(Clone, Debug)]
enum Op {
    Hold {
        user: u8,
        crid: u8,
        seats: Vec<usize>,
        ttl_ms: Option<u64>,
        cas: Option<u64>,
    },
    Begin {
        pick: usize,
        key: u8,
    },
    Complete {
        pick: usize,
        key: u8,
    },
    Abort {
        pick: usize,
        key: u8,
    },
    Release {
        pick: usize,
        user: Option<u8>,
    },
    Expire,
    Advance {
        ms: i64,
    },
    /// The clock jumps by about the retention, to just before, at or just after the
    /// moment some record is forgotten.
    Retention {
        extra_ms: i64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..4, 0u8..5, prop::collection::vec(0usize..9, 0..5), prop::option::weighted(0.3, (1u64..24).prop_map(|n| n * 500)), prop::option::weighted(0.3, 0u64..3))
            .prop_map(|(user, crid, seats, ttl_ms, cas)| Op::Hold { user, crid, seats, ttl_ms, cas }),
        2 => (0usize..12, 0u8..5).prop_map(|(pick, key)| Op::Begin { pick, key }),
        2 => (0usize..12, 0u8..5).prop_map(|(pick, key)| Op::Complete { pick, key }),
        1 => (0usize..12, 0u8..5).prop_map(|(pick, key)| Op::Abort { pick, key }),
        1 => (0usize..12, prop::option::weighted(0.2, 0u8..4)).prop_map(|(pick, user)| Op::Release { pick, user }),
        1 => Just(Op::Expire),
        // Whole half-seconds, so stamps often land exactly on a deadline.
        3 => (-4i64..12).prop_map(|n| Op::Advance { ms: n * 500 }),
        1 => (-3i64..4).prop_map(|n| Op::Retention { extra_ms: n * 500 }),
    ]
}

// ---------------------------------------------------------------------------------
// The reference model.

#[derive(Clone, Copy, Debug, PartialEq)]
enum Owner {
    Free,
    Hold(usize),
    Sold(usize),
}

#[derive(Clone, Debug, PartialEq)]
enum MState {
    Active,
    Paying { key: u8, deadline: u64 },
    Committed(usize),
    Released,
    Expired,
}

#[derive(Clone, Debug)]
struct MHold {
    user: u8,
    crid: u8,
    seats: Vec<usize>,
    versions: Vec<u64>,
    expires: u64,
    state: MState,
}

/// What a command answered, reduced to what the model can predict.
#[derive(Clone, Debug, PartialEq)]
enum Kind {
    Held {
        seq: usize,
        expires: u64,
        versions: Vec<u64>,
    },
    Started {
        deadline: u64,
    },
    Completed {
        order: usize,
    },
    Aborted {
        state: &'static str,
    },
    Released,
    Swept,
    Invalid,
    NotFound,
    Conflict(Vec<String>),
    Expired,
    Declined,
    WrongState,
}

#[derive(Default)]
struct Model {
    now: u64,
    seats: Vec<(Owner, u64)>,
    holds: Vec<MHold>,  // hold seq n is holds[n - 1]
    orders: Vec<usize>, // order seq n is orders[n - 1], naming its hold seq
    /// Each with the time it came to only answer retries (a refusal at once, a grant
    /// when its hold ended).
    requests: Vec<((u8, u8), Kind, Option<u64>)>,
    /// Key, hold seq, Started | Completed | a refusal (with the time of the refusal).
    keys: Vec<(u8, usize, Kind, Option<u64>)>,
}

impl Model {
    fn new() -> Self {
        Model {
            now: T0,
            seats: vec![(Owner::Free, 0); 8],
            ..Default::default()
        }
    }

    fn free(&mut self, seq: usize) {
        for &s in &self.holds[seq - 1].seats.clone() {
            assert_eq!(self.seats[s].0, Owner::Hold(seq));
            self.seats[s] = (Owner::Free, self.seats[s].1 + 1);
        }
        // The hold ended: its grant only answers retries from now on.
        let now = self.now;
        let request = self
            .requests
            .iter_mut()
            .find(|r| matches!(r.1, Kind::Held { seq: s, .. } if s == seq))
            .expect("an ended hold's request is remembered");
        request.2 = Some(now);
    }

    /// Forgets what only answered retries for more than the retention.
    fn forget(&mut self) {
        let now = self.now;
        let due = |since: &Option<u64>| since.is_some_and(|t| now > t + DECISION_RETENTION_MS);
        self.requests.retain(|r| !due(&r.2));
        self.keys.retain(|k| !due(&k.3));
    }

    /// How many records wait to be forgotten.
    fn awaiting_purge(&self) -> u64 {
        let n = self.requests.iter().filter(|r| r.2.is_some()).count()
            + self.keys.iter().filter(|k| k.3.is_some()).count();
        n as u64
    }

    fn sweep(&mut self) {
        for seq in 1..=self.holds.len() {
            let h = self.holds[seq - 1].clone();
            match h.state {
                MState::Active if h.expires <= self.now => {
                    self.free(seq);
                    self.holds[seq - 1].state = MState::Expired;
                }
                MState::Paying { key, deadline } if deadline <= self.now => {
                    let refusal = if h.expires <= self.now {
                        self.free(seq);
                        self.holds[seq - 1].state = MState::Expired;
                        Kind::Expired
                    } else {
                        self.holds[seq - 1].state = MState::Active;
                        Kind::WrongState
                    };
                    self.set_key(key, seq, refusal);
                }
                _ => {}
            }
        }
    }

    fn owned_by(&self, user: u8) -> usize {
        self.holds
            .iter()
            .filter(|h| h.user == user)
            .filter(|h| {
                matches!(
                    h.state,
                    MState::Active | MState::Paying { .. } | MState::Committed(_)
                )
            })
            .map(|h| h.seats.len())
            .sum()
    }

    fn hold(
        &mut self,
        user: u8,
        crid: u8,
        seats: &[usize],
        ttl: Option<u64>,
        cas: Option<u64>,
    ) -> Kind {
        if let Some((_, k, _)) = self.requests.iter().find(|(r, _, _)| *r == (user, crid)) {
            return k.clone();
        }
        let ttl = ttl.unwrap_or(LIMITS.hold_ttl_ms_default);
        let mut sorted = seats.to_vec();
        sorted.sort();
        sorted.dedup();
        if seats.is_empty()
            || seats.len() > 3
            || !(1_000..=10_000).contains(&ttl)
            || sorted.len() != seats.len()
            || seats.contains(&UNKNOWN_SEAT)
        {
            return Kind::Invalid;
        }
        let kind = if self.owned_by(user) + seats.len() > 4 {
            Kind::Invalid
        } else {
            let bad: Vec<String> = seats
                .iter()
                .filter(|&&s| {
                    self.seats[s].0 != Owner::Free || cas.is_some_and(|v| v != self.seats[s].1)
                })
                .map(|&s| SEATS[s].to_string())
                .collect();
            if !bad.is_empty() {
                Kind::Conflict(bad)
            } else {
                let seq = self.holds.len() + 1;
                for &s in seats {
                    self.seats[s] = (Owner::Hold(seq), self.seats[s].1 + 1);
                }
                let versions: Vec<u64> = seats.iter().map(|&s| self.seats[s].1).collect();
                let expires = self.now + ttl;
                self.holds.push(MHold {
                    user,
                    crid,
                    seats: seats.to_vec(),
                    versions: versions.clone(),
                    expires,
                    state: MState::Active,
                });
                Kind::Held {
                    seq,
                    expires,
                    versions,
                }
            }
        };
        let refused = (!matches!(kind, Kind::Held { .. })).then_some(self.now);
        self.requests.push(((user, crid), kind.clone(), refused));
        kind
    }

    fn key_record(&self, key: u8, seq: usize) -> Option<Kind> {
        let (_, hold, kind, _) = self.keys.iter().find(|k| k.0 == key)?;
        Some(if *hold != seq {
            Kind::Invalid
        } else {
            kind.clone()
        })
    }

    fn set_key(&mut self, key: u8, seq: usize, kind: Kind) {
        let refused =
            (!matches!(kind, Kind::Started { .. } | Kind::Completed { .. })).then_some(self.now);
        match self.keys.iter_mut().find(|k| k.0 == key) {
            Some(k) => {
                k.2 = kind;
                k.3 = refused;
            }
            None => self.keys.push((key, seq, kind, refused)),
        }
    }

    fn begin(&mut self, seq: usize, key: u8) -> Kind {
        if let Some(k) = self.key_record(key, seq) {
            return k;
        }
        let Some(h) = self.holds.get(seq.wrapping_sub(1)) else {
            return Kind::NotFound;
        };
        let refusal = match h.state {
            MState::Active => {
                let deadline = self.now + LIMITS.checkout_ttl_ms;
                self.holds[seq - 1].state = MState::Paying { key, deadline };
                self.set_key(key, seq, Kind::Started { deadline });
                return Kind::Started { deadline };
            }
            MState::Paying { .. } => return Kind::WrongState,
            MState::Committed(_) | MState::Released => Kind::WrongState,
            MState::Expired => Kind::Expired,
        };
        self.set_key(key, seq, refusal.clone());
        refusal
    }

    fn complete(&mut self, seq: usize, key: u8) -> Kind {
        match self.key_record(key, seq) {
            Some(Kind::Started { .. }) => {}
            Some(k) => return k,
            None if seq == 0 || seq > self.holds.len() => return Kind::NotFound,
            None => return Kind::WrongState,
        }
        self.orders.push(seq);
        let order = self.orders.len();
        for &s in &self.holds[seq - 1].seats {
            self.seats[s] = (Owner::Sold(order), self.seats[s].1 + 1);
        }
        self.holds[seq - 1].state = MState::Committed(order);
        self.set_key(key, seq, Kind::Completed { order });
        Kind::Completed { order }
    }

    fn abort(&mut self, seq: usize, key: u8) -> Kind {
        match self.key_record(key, seq) {
            Some(Kind::Started { .. }) => {}
            Some(Kind::Completed { .. }) => return Kind::WrongState,
            Some(Kind::Invalid) => return Kind::Invalid,
            Some(_) => {
                return Kind::Aborted {
                    state: mstate_name(&self.holds[seq - 1].state),
                }
            }
            None if seq == 0 || seq > self.holds.len() => return Kind::NotFound,
            None => return Kind::WrongState,
        }
        if self.holds[seq - 1].expires <= self.now {
            self.free(seq);
            self.holds[seq - 1].state = MState::Expired;
        } else {
            self.holds[seq - 1].state = MState::Active;
        }
        self.set_key(key, seq, Kind::Declined);
        Kind::Aborted {
            state: mstate_name(&self.holds[seq - 1].state),
        }
    }

    fn release(&mut self, seq: usize, user: u8) -> Kind {
        let Some(h) = self.holds.get(seq.wrapping_sub(1)) else {
            return Kind::NotFound;
        };
        if h.user != user {
            return Kind::Invalid;
        }
        match h.state {
            MState::Active => {
                self.free(seq);
                self.holds[seq - 1].state = MState::Released;
                Kind::Released
            }
            MState::Released => Kind::Released,
            MState::Expired => Kind::Expired,
            MState::Paying { .. } | MState::Committed(_) => Kind::WrongState,
        }
    }
}

fn mstate_name(s: &MState) -> &'static str {
    match s {
        MState::Active => "active",
        MState::Paying { .. } => "checking_out",
        MState::Committed(_) => "committed",
        MState::Released => "released",
        MState::Expired => "expired",
    }
}

fn kind_of(out: &Outcome) -> Kind {
    match out {
        Ok(Reply::Held(v)) => Kind::Held {
            seq: v.hold_id.seq as usize,
            expires: v.expires_at_ms,
            versions: v.seats.iter().map(|s| s.1).collect(),
        },
        Ok(Reply::CheckoutStarted {
            payment_deadline_ms,
            ..
        }) => Kind::Started {
            deadline: *payment_deadline_ms,
        },
        Ok(Reply::Completed(o)) => Kind::Completed {
            order: o.order_id.seq as usize,
        },
        Ok(Reply::CheckoutAborted { state, .. }) => Kind::Aborted {
            state: state.name(),
        },
        Ok(Reply::Released { .. }) => Kind::Released,
        Ok(Reply::Expired { .. }) => Kind::Swept,
        Ok(other) => panic!("unexpected reply {other:?}"),
        // A key used with another hold is bad input too (INVALID_ARGUMENT).
        Err(Refusal::Invalid(_) | Refusal::KeyReused) => Kind::Invalid,
        Err(Refusal::NotFound(_)) => Kind::NotFound,
        Err(Refusal::Conflict { seats }) => Kind::Conflict(seats.clone()),
        Err(Refusal::Expired) => Kind::Expired,
        Err(Refusal::Declined(_)) => Kind::Declined,
        Err(Refusal::WrongState(_)) => Kind::WrongState,
        // The model stays within every cap.
        Err(Refusal::Limit(e)) => panic!("unexpected limit refusal {e}"),
    }
}

/// Turns an op into a command, resolving hold picks against the holds made so far.
fn command(op: &Op, model: &Model) -> Option<(Command, usize)> {
    let seq_of = |pick: usize| {
        if model.holds.is_empty() || pick >= 10 {
            99
        } else {
            pick % model.holds.len() + 1
        }
    };
    let hold = |seq: usize| common::hold_id("e", seq as u64);
    Some(match op {
        Op::Hold {
            user,
            crid,
            seats,
            ttl_ms,
            cas,
        } => {
            let ids: Vec<&str> = seats
                .iter()
                .map(|&s| SEATS.get(s).copied().unwrap_or("Z-1"))
                .collect();
            let mut req = hold_req("e", &format!("u{user}"), &format!("r{crid}"), &ids);
            req.ttl_ms = *ttl_ms;
            req.expected_versions = cas.map(|v| vec![v; seats.len()]);
            (Command::Hold(req), 0)
        }
        Op::Begin { pick, key } => (
            Command::BeginCheckout {
                hold: hold(seq_of(*pick)),
                idempotency_key: format!("k{key}"),
                by: None,
            },
            seq_of(*pick),
        ),
        Op::Complete { pick, key } => (
            Command::CompleteCheckout {
                hold: hold(seq_of(*pick)),
                idempotency_key: format!("k{key}"),
                payment_ref: "pay".into(),
            },
            seq_of(*pick),
        ),
        Op::Abort { pick, key } => (
            Command::AbortCheckout {
                hold: hold(seq_of(*pick)),
                idempotency_key: format!("k{key}"),
                reason: "declined".into(),
            },
            seq_of(*pick),
        ),
        Op::Release { pick, user } => {
            let seq = seq_of(*pick);
            let owner = model.holds.get(seq.wrapping_sub(1)).map_or(0, |h| h.user);
            (
                Command::Release {
                    hold: hold(seq),
                    user: format!("u{}", user.unwrap_or(owner)),
                    by: None,
                },
                seq,
            )
        }
        Op::Expire => (Command::Expire, 0),
        Op::Advance { .. } | Op::Retention { .. } => return None,
    })
}

fn model_step(model: &mut Model, op: &Op, seq: usize) -> Kind {
    // As the machine does: forget first, then expire, then decide.
    model.forget();
    model.sweep();
    match op {
        Op::Hold {
            user,
            crid,
            seats,
            ttl_ms,
            cas,
        } => model.hold(*user, *crid, seats, *ttl_ms, *cas),
        Op::Begin { key, .. } => model.begin(seq, *key),
        Op::Complete { key, .. } => model.complete(seq, *key),
        Op::Abort { key, .. } => model.abort(seq, *key),
        Op::Release { .. } => {
            let Command::Release { user, .. } = command(op, model).unwrap().0 else {
                unreachable!()
            };
            model.release(seq, user[1..].parse().unwrap())
        }
        Op::Expire => Kind::Swept,
        Op::Advance { .. } | Op::Retention { .. } => unreachable!(),
    }
}

fn compare(m: &SeatMachine, model: &Model) -> Result<(), TestCaseError> {
    m.check_invariants().map_err(TestCaseError::fail)?;
    let map = m.seat_map(&ev("e")).unwrap();
    for (i, seat) in map.seats.iter().enumerate() {
        let (owner, version) = model.seats[i];
        let want = match owner {
            Owner::Free => SeatStateName::Available,
            Owner::Hold(_) => SeatStateName::Held,
            Owner::Sold(_) => SeatStateName::Sold,
        };
        prop_assert_eq!(
            (seat.state, seat.version),
            (want, version),
            "seat {}",
            seat.id
        );
    }
    for (n, h) in model.holds.iter().enumerate() {
        let view = m.hold(&common::hold_id("e", n as u64 + 1)).unwrap();
        prop_assert_eq!(view.state.name(), mstate_name(&h.state), "hold {}", n + 1);
        prop_assert_eq!(&*view.user, format!("u{}", h.user));
        prop_assert_eq!(&*view.client_reservation_id, format!("r{}", h.crid));
        prop_assert_eq!(view.expires_at_ms, h.expires);
        let versions: Vec<u64> = view.seats.iter().map(|s| s.1).collect();
        prop_assert_eq!(&versions, &h.versions);
        if let MState::Committed(o) = h.state {
            prop_assert_eq!(view.state, HoldState::Committed { order: o as u64 });
        }
    }
    Ok(())
}

type Disk = std::collections::BTreeMap<Vec<u8>, Vec<u8>>;

/// Takes the machine's changes and makes them on `disk`, as storage does.
fn store_changes(m: &mut SeatMachine, disk: &mut Disk) {
    let changes = m.take_changes();
    for k in &changes.deletes {
        disk.remove(k);
    }
    let deleted: std::collections::BTreeSet<&Vec<u8>> = changes.deletes.iter().collect();
    for (k, v) in changes.puts {
        assert!(!deleted.contains(&k), "a record both written and deleted");
        disk.insert(k, v);
    }
}

/// Applies `batch` the way the store does: read back the cold records it may need,
/// apply, write the changes, evict the cold records.
fn apply_lean(
    m: &mut SeatMachine,
    disk: &mut Disk,
    index: u64,
    batch: &Batch,
) -> Vec<raft_store::Outcome> {
    let mut tried = std::collections::BTreeSet::new();
    for _round in 0..8 {
        let keys: Vec<Vec<u8>> = m
            .cold_keys(batch)
            .into_iter()
            .filter(|k| tried.insert(k.clone()))
            .collect();
        if keys.is_empty() {
            break;
        }
        let found: Vec<(Vec<u8>, Vec<u8>)> = keys
            .iter()
            .filter_map(|k| disk.get(k).map(|v| (k.clone(), v.clone())))
            .collect();
        m.warm(found).unwrap();
    }
    let out = m.apply(index, batch);
    store_changes(m, disk);
    m.evict_cold();
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn machine_agrees_with_the_model(ops in prop::collection::vec(op(), 1..80)) {
        let mut m = SeatMachine::new();
        let mut model = Model::new();
        let mut index = 1;
        m.apply(index, &Batch { ts_ms: model.now, commands: vec![create_cmd()] });
        let mut versions_before: Vec<u64> = vec![0; 8];
        let mut wall = T0;
        // What storage would hold: the records handed over after each entry.
        let mut disk = Disk::new();
        store_changes(&mut m, &mut disk);
        // A second machine that keeps only hot records in memory, as the store does,
        // reading cold ones back from its own disk before each entry.
        let mut lean = m.clone();
        let mut lean_disk = disk.clone();
        lean.evict_cold();
        for op in &ops {
            if let Op::Advance { ms } = op {
                wall = (wall as i64 + ms).max(T0 as i64) as u64;
                continue;
            }
            if let Op::Retention { extra_ms } = op {
                wall = (wall as i64 + DECISION_RETENTION_MS as i64 + extra_ms) as u64;
                // The lean replica restarts from its records (as after a crash, or a
                // snapshot installed): it must forget the same records at the same time.
                lean = SeatMachine::load_records(&lean_disk).map_err(|e| TestCaseError::fail(e.to_string()))?;
                continue;
            }
            let (cmd, seq) = command(op, &model).unwrap();
            index += 1;
            // Stamps wander back and forth (leaders with different clocks); the
            // machine's time is the latest stamp seen.
            let ts_ms = wall.saturating_sub((index % 3) * 500);
            model.now = model.now.max(ts_ms);
            let batch = Batch { ts_ms, commands: vec![cmd] };
            let got = m.apply(index, &batch).pop().unwrap();
            let lean_got = apply_lean(&mut lean, &mut lean_disk, index, &batch);
            prop_assert_eq!(&lean_got[0], &got, "a machine with cold records on disk decided differently");
            let want = model_step(&mut model, op, seq);
            prop_assert_eq!(kind_of(&got), want, "op {:?}", op);
            compare(&m, &model)?;
            prop_assert_eq!(m.records_awaiting_purge(), model.awaiting_purge(), "records queued to be forgotten");
            store_changes(&mut m, &mut disk);
            let reloaded = SeatMachine::load_records(&disk).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let mut hot = m.clone();
            hot.evict_cold();
            prop_assert_eq!(reloaded.digest(), hot.digest(), "records on disk differ from the machine");
            prop_assert_eq!(lean.digest(), hot.digest(), "the lean machine's memory differs");
            prop_assert_eq!(&lean_disk, &disk, "the lean machine's records differ");
            lean.check_invariants().map_err(TestCaseError::fail)?;
            let versions: Vec<u64> = m.seat_map(&ev("e")).unwrap().seats.iter().map(|s| s.version).collect();
            prop_assert!(versions.iter().zip(&versions_before).all(|(a, b)| a >= b), "a version went down");
            versions_before = versions;
        }
        // The state survives a round trip through its encoding, and the copy behaves
        // exactly like the original from then on.
        let bytes = m.encode();
        let mut copy = SeatMachine::decode(&bytes).unwrap();
        prop_assert_eq!(copy.encode(), bytes);
        let next = Batch { ts_ms: model.now + 60_000, commands: vec![Command::Expire, Command::Hold(hold_req("e", "u9", "r9", &["A-1"]))] };
        prop_assert_eq!(copy.apply(index + 1, &next), m.apply(index + 1, &next));
        prop_assert_eq!(copy.digest(), m.digest());
    }

    #[test]
    fn retries_change_nothing(ops in prop::collection::vec(op(), 1..60), dup in prop::collection::vec(any::<bool>(), 60)) {
        // Run A applies each command alone; run B applies each command followed, in the
        // same entry, by a retry of it when `dup` says so, and retries every hold again
        // in the last entry. Originals must answer alike, retries like their original,
        // and both runs must end in the same state.
        let mut a = SeatMachine::new();
        let mut b = SeatMachine::new();
        let mut model = Model::new();
        a.apply(1, &Batch { ts_ms: T0, commands: vec![create_cmd()] });
        b.apply(1, &Batch { ts_ms: T0, commands: vec![create_cmd()] });
        let mut index = 1;
        let mut holds = Vec::new();
        let cmds: Vec<(Command, bool)> = ops
            .iter()
            .zip(&dup)
            .filter_map(|(op, &d)| {
                if let Op::Advance { ms } = op {
                    model.now = model.now.max((model.now as i64 + ms) as u64);
                    return None;
                }
                if let Op::Retention { extra_ms } = op {
                    model.now = (model.now as i64 + DECISION_RETENTION_MS as i64 + extra_ms) as u64;
                    return None;
                }
                let (cmd, seq) = command(op, &model)?;
                model_step(&mut model, op, seq);
                Some((cmd, d))
            })
            .collect();
        // Timestamps come from a separate clock walk so both runs see the same times.
        for (n, (cmd, d)) in cmds.iter().enumerate() {
            index += 1;
            let ts_ms = T0 + n as u64 * 700;
            let ra = a.apply(index, &Batch { ts_ms, commands: vec![cmd.clone()] });
            let mut batch = vec![cmd.clone()];
            // Expire is the leader's sweep, not a client request: it is never retried.
            let d = *d && !matches!(cmd, Command::Expire);
            if d { batch.push(cmd.clone()); }
            if let Command::Hold(_) = cmd { holds.push(cmd.clone()); }
            if n + 1 == cmds.len() { batch.extend(holds.iter().cloned()); }
            let rb = b.apply(index, &Batch { ts_ms, commands: batch });
            prop_assert_eq!(&rb[0], &ra[0]);
            if d { prop_assert_eq!(&rb[1], &ra[0], "retry of {:?} answered differently", cmd); }
        }
        prop_assert_eq!(a.digest(), b.digest());
        a.check_invariants().map_err(TestCaseError::fail)?;
    }

    #[test]
    fn damaged_state_bytes_give_an_error_never_a_panic(
        ops in prop::collection::vec(op(), 1..30),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut m = SeatMachine::new();
        let mut model = Model::new();
        m.apply(1, &Batch { ts_ms: T0, commands: vec![create_cmd()] });
        for (n, op) in ops.iter().enumerate() {
            if let Some((cmd, seq)) = command(op, &model) {
                model_step(&mut model, op, seq);
                m.apply(n as u64 + 2, &Batch { ts_ms: T0, commands: vec![cmd] });
            }
        }
        let good = m.encode();
        // Truncation and raw bit flips are caught by the frame.
        prop_assert!(SeatMachine::decode(&good[..cut.index(good.len())]).is_err());
        let mut bad = good.clone();
        // Each position flipped once: the same byte flipped twice at one position
        // would undo itself and leave the state undamaged.
        let mut flipped = std::collections::BTreeSet::new();
        for (at, byte) in &flips {
            let i = at.index(bad.len());
            if flipped.insert(i) {
                bad[i] ^= byte | 1;
            }
        }
        prop_assert!(SeatMachine::decode(&bad).is_err());
        // Payload damage behind a recomputed checksum must still be refused or yield a
        // state that passes every invariant; it must never panic.
        let mut forged = good.clone();
        for (at, byte) in &flips {
            let i = 18 + at.index(forged.len() - 18);
            forged[i] ^= byte | 1;
        }
        let crc = crc32fast::hash(&forged[18..]).to_le_bytes();
        forged[14..18].copy_from_slice(&crc);
        if let Ok(state) = SeatMachine::decode(&forged) {
            state.check_invariants().map_err(TestCaseError::fail)?;
        }
    }
}

#[test]
fn records_rebuild_the_machine_and_damage_is_refused() {
    let mut m = SeatMachine::new();
    m.apply(
        1,
        &Batch {
            ts_ms: T0,
            commands: vec![
                create_cmd(),
                Command::Hold(hold_req("e", "u", "r", &["A-1", "B-2"])),
            ],
        },
    );
    let records = m.all_records();
    let loaded = SeatMachine::load_records(records.clone()).unwrap();
    m.evict_cold();
    assert_eq!(loaded.digest(), m.digest());
    assert_eq!(
        SeatMachine::load_records(Vec::<(Vec<u8>, Vec<u8>)>::new())
            .unwrap()
            .digest(),
        SeatMachine::new().digest()
    );
    // Any one record damaged, truncated or missing: an error or a consistent state.
    for i in 0..records.len() {
        let mut dropped = records.clone();
        dropped.remove(i);
        if let Ok(s) = SeatMachine::load_records(dropped) {
            s.check_invariants().unwrap();
        }
        for cut in [0, 1, records[i].1.len() / 2] {
            let mut damaged = records.clone();
            damaged[i].1.truncate(cut);
            if let Ok(s) = SeatMachine::load_records(damaged) {
                s.check_invariants().unwrap();
            }
        }
        let mut bad_key = records.clone();
        bad_key[i].0.truncate(1);
        if let Ok(s) = SeatMachine::load_records(bad_key) {
            s.check_invariants().unwrap();
        }
    }
    let mut alien = records.clone();
    alien.push((vec![42, 1, b'e'], vec![]));
    assert!(SeatMachine::load_records(alien)
        .unwrap_err()
        .to_string()
        .contains("unknown record kind"));
}

#[test]
fn batches_round_trip_and_damage_is_refused() {
    let batch = Batch {
        ts_ms: T0,
        commands: vec![
            create_cmd(),
            Command::Hold(hold_req("e", "u", "r", &["A-1"])),
            Command::Expire,
            Command::Release {
                hold: common::hold_id("e", 1),
                user: "u".into(),
                by: None,
            },
        ],
    };
    let bytes = batch.encode();
    assert_eq!(Batch::decode(&bytes).unwrap(), batch);
    for n in 0..bytes.len() {
        assert!(Batch::decode(&bytes[..n]).is_err());
    }
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(Batch::decode(&longer).is_err());
    let mut version = bytes.clone();
    version[4] = 9;
    let err = Batch::decode(&version).unwrap_err().to_string();
    assert!(err.contains("format version 9"), "{err}");
    assert!(
        SeatMachine::decode(&bytes).is_err(),
        "a batch is not a state image"
    );
}
