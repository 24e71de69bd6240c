//! The proposer on a real single-node Raft group: concurrent commands share log
//! entries, batching changes no answer (commands that conflict inside one entry are
//! decided in log order), stamps never go backwards even when the wall clock does,
//! and a wall clock that jumps an hour ahead expires no hold.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use coordinator::clock::{Clock, Stamper};
use coordinator::peers::PeerChannels;
use coordinator::raft_net::ShardNetwork;
use coordinator::shard::proposer::{Proposer, ShardError};
use openraft::{BasicNode, Raft};
use raft_store::layout::generate;
use raft_store::raft::{raft_config, LogPolicy, RaftTiming, TypeConfig};
use raft_store::storage::{MachineReader, Store};
use raft_store::{Command, CreateEvent, EventId, HoldRequest, Limits, Refusal, Reply};

/// Clocks the test sets by hand: the wall clock (ms since the epoch) and the
/// monotonic one (ms since the test began).
struct HandClock(AtomicU64, AtomicU64);

impl HandClock {
    fn new(wall_ms: u64) -> Arc<Self> {
        Arc::new(Self(AtomicU64::new(wall_ms), AtomicU64::new(0)))
    }

    /// Real time passes: both clocks move.
    fn pass(&self, ms: u64) {
        self.0.fetch_add(ms, Ordering::Relaxed);
        self.1.fetch_add(ms, Ordering::Relaxed);
    }
}

impl Clock for HandClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    fn monotonic(&self) -> Duration {
        Duration::from_millis(self.1.load(Ordering::Relaxed))
    }
}

const T0: u64 = 1_800_000_000_000;

async fn single_node(dir: &std::path::Path) -> (Store, Raft<TypeConfig>, MachineReader) {
    let store = Store::open(dir).unwrap();
    let (log, sm) = store.group(0).unwrap();
    let reader = sm.reader();
    let config = raft_config("batching", LogPolicy::default(), RaftTiming::default()).unwrap();
    coordinator::tls::write_certs(&dir.join("certs"), &[1]).unwrap();
    let tls = coordinator::tls::PeerTls::load(&dir.join("certs"), 1).unwrap();
    let net = ShardNetwork {
        shard: 0,
        peers: PeerChannels::new(tls, Default::default()),
    };
    let raft = Raft::new(1, config, net, log, sm).await.unwrap();
    raft.initialize(BTreeMap::from([(1, BasicNode::new("127.0.0.1:1"))]))
        .await
        .unwrap();
    raft.wait(Some(Duration::from_secs(10)))
        .state(openraft::ServerState::Leader, "leader")
        .await
        .unwrap();
    (store, raft, reader)
}

fn hold(user: &str, seat: &str) -> Command {
    Command::Hold(HoldRequest {
        event_id: EventId::new("flash").unwrap(),
        user: user.into(),
        seats: vec![seat.into()],
        client_reservation_id: format!("{user}-r"),
        ttl_ms: None,
        expected_versions: None,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_commands_share_entries_and_conflicts_resolve_in_log_order() {
    let dir = tempfile::tempdir().unwrap();
    let (_store, raft, reader) = single_node(dir.path()).await;
    let clock = HandClock::new(T0);
    let stamper = Stamper::new(clock.clone(), reader.clone()).following(raft.metrics());
    let proposer = Proposer::start(0, raft.clone(), stamper);
    let created = proposer
        .propose(Command::CreateEvent(CreateEvent {
            event_id: EventId::new("flash").unwrap(),
            name: "Flash sale".into(),
            starts_at_ms: T0,
            layout: generate("Hall", 1, 10, 50),
            limits: Limits::default(),
            by: None,
            id_key: raft_store::IdKey([7; 16]),
        }))
        .await
        .unwrap();
    assert!(matches!(created, Ok(Reply::EventCreated { .. })));
    let entries_before = raft.metrics().borrow().last_log_index.unwrap();

    // 300 buyers at once: 200 want the same seat, 100 want seats of their own.
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..300u32 {
        let p = proposer.clone();
        let seat = if i < 200 {
            "A-1".to_string()
        } else {
            let k = i - 200;
            format!("{}-{}", if k < 50 { "B" } else { "C" }, k % 50 + 1)
        };
        calls.spawn(async move { (i, p.propose(hold(&format!("u{i}"), &seat)).await) });
    }
    let mut winners = Vec::new();
    let mut own = 0;
    while let Some(r) = calls.join_next().await {
        let (i, outcome) = r.unwrap();
        match outcome.unwrap() {
            Ok(Reply::Held(h)) if i < 200 => winners.push(h),
            Ok(Reply::Held(_)) => own += 1,
            Err(Refusal::Conflict { seats }) => {
                assert!(i < 200);
                assert_eq!(seats, vec!["A-1"]);
            }
            other => panic!("unexpected outcome for buyer {i}: {other:?}"),
        }
    }
    assert_eq!(winners.len(), 1, "one seat, one winner");
    assert_eq!(own, 100);
    let entries = raft.metrics().borrow().last_log_index.unwrap() - entries_before;
    eprintln!("300 concurrent commands took {entries} log entries");
    assert!(
        entries < 300 / 4,
        "300 concurrent commands took {entries} entries: not batched"
    );
    // Log order decided: the winner's hold is the first hold any A-1 buyer got, and
    // the state agrees with the answers.
    let map = reader.read(|m| m.seat_map(&EventId::new("flash").unwrap()).unwrap());
    assert_eq!(map.sections[0].held, 101);
    assert_eq!(
        reader.read(|m| m.hold(&winners[0].hold_id).unwrap().seats[0].0.to_string()),
        "A-1"
    );
    raft.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stamps_never_go_backwards_when_the_clock_does() {
    let dir = tempfile::tempdir().unwrap();
    let (_store, raft, reader) = single_node(dir.path()).await;
    let clock = HandClock::new(T0);
    let stamper = Stamper::new(clock.clone(), reader.clone()).following(raft.metrics());
    let proposer = Proposer::start(0, raft.clone(), stamper.clone());
    proposer
        .propose(Command::CreateEvent(CreateEvent {
            event_id: EventId::new("flash").unwrap(),
            name: "Flash sale".into(),
            starts_at_ms: T0,
            layout: generate("Hall", 1, 2, 10),
            limits: Limits::default(),
            by: None,
            id_key: raft_store::IdKey([7; 16]),
        }))
        .await
        .unwrap()
        .unwrap();
    let Ok(Reply::Held(first)) = proposer.propose(hold("a", "A-1")).await.unwrap() else {
        panic!("hold refused");
    };
    assert_eq!(first.created_at_ms, T0);
    // The clock jumps back ten minutes (a new leader with a slow clock).
    clock.0.store(T0 - 600_000, Ordering::Relaxed);
    assert!(stamper.stamp() >= T0);
    let Ok(Reply::Held(second)) = proposer.propose(hold("b", "A-2")).await.unwrap() else {
        panic!("hold refused");
    };
    assert!(second.created_at_ms >= first.created_at_ms);
    assert!(second.expires_at_ms >= first.expires_at_ms);
    // A stopped group answers every queued command, with an error.
    raft.shutdown().await.unwrap();
    let late = proposer.propose(hold("c", "A-3")).await;
    assert!(matches!(late, Err(ShardError::Unavailable(_))), "{late:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wall_clock_an_hour_ahead_expires_no_hold() {
    let dir = tempfile::tempdir().unwrap();
    let (_store, raft, reader) = single_node(dir.path()).await;
    let clock = HandClock::new(T0);
    let stamper = Stamper::new(clock.clone(), reader.clone()).following(raft.metrics());
    let proposer = Proposer::start(0, raft.clone(), stamper.clone());
    proposer
        .propose(Command::CreateEvent(CreateEvent {
            event_id: EventId::new("flash").unwrap(),
            name: "Flash sale".into(),
            starts_at_ms: T0,
            layout: generate("Hall", 1, 2, 10),
            limits: Limits::default(),
            by: None,
            id_key: raft_store::IdKey([7; 16]),
        }))
        .await
        .unwrap()
        .unwrap();
    let mut minute = hold("a", "A-1");
    if let Command::Hold(h) = &mut minute {
        h.ttl_ms = Some(60_000);
    }
    let Ok(Reply::Held(first)) = proposer.propose(minute).await.unwrap() else {
        panic!("hold refused");
    };
    assert_eq!(first.expires_at_ms, T0 + 60_000);
    // Ten seconds later the leader's wall clock jumps an hour ahead (NTP, a VM
    // migration, a bad --clock-skew-ms).
    clock.pass(10_000);
    clock.0.fetch_add(3_600_000, Ordering::Relaxed);
    let Ok(Reply::Held(second)) = proposer.propose(hold("b", "A-2")).await.unwrap() else {
        panic!("hold refused");
    };
    // Log time moved with the monotonic clock (plus 10 ms of slew), not the hour.
    assert_eq!(second.created_at_ms, T0 + 10_010);
    let expire = proposer.propose(Command::Expire).await.unwrap();
    assert!(
        matches!(
            expire,
            Ok(Reply::Expired {
                holds_expired: 0,
                ..
            })
        ),
        "{expire:?}"
    );
    let still = reader.read(|m| m.hold(&first.hold_id).unwrap());
    assert_eq!(still.state, raft_store::HoldState::Active, "expired early");
    assert!(stamper.log_now_ms() < first.expires_at_ms);
    // Its minute passes by the monotonic clock: then it expires.
    clock.pass(50_000);
    assert!(stamper.log_now_ms() >= first.expires_at_ms);
    let expire = proposer.propose(Command::Expire).await.unwrap();
    assert!(
        matches!(
            expire,
            Ok(Reply::Expired {
                holds_expired: 1,
                ..
            })
        ),
        "{expire:?}"
    );
    raft.shutdown().await.unwrap();
}
