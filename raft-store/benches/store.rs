//! Throughput of the RocksDB store, with fsync on (not a test; prints figures).
//!
//! - entries appended per second for 1, 16 and 256 commands per entry, by 1, 8 and 32
//!   groups appending concurrently, and how many appends one WAL sync covers;
//! - commands applied per second through the state machine store (records written to
//!   RocksDB in the same batch as the applied id);
//! - how long applying the creation of the largest event allowed takes through the
//!   store (the state lock is held for all of it), and its write to land.
//!
//! Run: `cargo bench -p seatd-raft-store --bench store [-- FILTER]` (`SEATD_BENCH_SECS`
//! per case, default 3; FILTER `append`, `apply` or `create` runs only those cases).

use std::time::{Duration, Instant};

use openraft::storage::{RaftLogStorageExt, RaftStateMachine};
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};
use raft_store::raft::TypeConfig;
use raft_store::storage::Store;
use raft_store::{Batch, Command, CreateEvent, EventId, HoldRequest, Limits};

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

const T0: u64 = 1_700_000_000_000;

fn hold(i: u64) -> Command {
    Command::Hold(HoldRequest {
        event_id: EventId::new("bench").unwrap(),
        user: format!("user-{i}"),
        seats: vec![format!(
            "{}-{}",
            raft_store::layout::row_label((i / 50) as usize % 2000),
            i % 50 + 1
        )],
        client_reservation_id: format!("r{i}"),
        ttl_ms: None,
        expected_versions: None,
    })
}

fn entry(index: u64, commands: Vec<Command>) -> Entry<TypeConfig> {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(
            Batch {
                ts_ms: T0,
                commands,
            }
            .into(),
        ),
    }
}

async fn append_case(secs: Duration, groups: u32, per_entry: u64) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let deadline = Instant::now() + secs;
    let tasks: Vec<_> = (0..groups)
        .map(|g| {
            let (mut log, _) = store.group(g).unwrap();
            tokio::spawn(async move {
                let mut index = 0;
                while Instant::now() < deadline && index < 10_000_000 {
                    index += 1;
                    let cmds = (0..per_entry)
                        .map(|k| hold(index * per_entry + k))
                        .collect();
                    log.blocking_append(vec![entry(index, cmds)]).await.unwrap();
                }
                index
            })
        })
        .collect();
    let start = Instant::now();
    let mut entries = 0;
    for t in tasks {
        entries += t.await.unwrap();
    }
    let elapsed = start.elapsed().as_secs_f64();
    let (syncs, acks) = store.sync_stats().snapshot();
    println!(
        "append groups={groups:<3} commands_per_entry={per_entry:<4} entries_per_s={:<8.0} commands_per_s={:<9.0} appends_per_sync={:.1}",
        entries as f64 / elapsed,
        (entries * per_entry) as f64 / elapsed,
        acks as f64 / syncs.max(1) as f64
    );
}

async fn apply_case(secs: Duration, per_entry: u64) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let (_, mut sm) = store.group(1).unwrap();
    let create = Command::CreateEvent(CreateEvent {
        event_id: EventId::new("bench").unwrap(),
        name: "Bench".into(),
        starts_at_ms: T0,
        layout: raft_store::layout::generate("Bench", 40, 50, 50),
        limits: Limits::default(),
        by: None,
        id_key: raft_store::IdKey([7; 16]),
    });
    sm.apply(vec![entry(1, vec![create])]).await.unwrap();
    let deadline = Instant::now() + secs;
    let start = Instant::now();
    let (mut index, mut commands) = (1, 0);
    while Instant::now() < deadline && commands + per_entry <= 100_000 {
        index += 1;
        let cmds = (0..per_entry).map(|k| hold(commands + k)).collect();
        sm.apply(vec![entry(index, cmds)]).await.unwrap();
        commands += per_entry;
    }
    let elapsed = start.elapsed().as_secs_f64();
    println!(
        "apply commands_per_entry={per_entry:<4} commands_per_s={:.0} ({commands} single-seat holds on a 100,000-seat event)",
        commands as f64 / elapsed
    );
}

/// Applies the creation of the largest event allowed through a group's state
/// machine store, `rounds` times on fresh groups: 40 sections of rows of 50 numbered
/// seats (`SEATS_PER_EVENT_MAX`), or, when `named`, the most named seats that fit
/// `COMMAND_BYTES_MAX` with short names (400,000).
async fn create_case(rounds: u32, named: bool) {
    use raft_store::layout::{generate, RowLayout, SectionLayout, VenueLayout};
    use raft_store::limits::SEATS_PER_EVENT_MAX;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let layout = if named {
        VenueLayout {
            venue: "Named".into(),
            sections: (0..40)
                .map(|s| SectionLayout {
                    id: format!("S{s}"),
                    rows: (0..100)
                        .map(|r| RowLayout {
                            id: format!("S{s}R{r}"),
                            seats: None,
                            first: None,
                            seat_ids: Some(
                                (0..100).map(|n| format!("S{s}-{}", r * 100 + n)).collect(),
                            ),
                        })
                        .collect(),
                })
                .collect(),
        }
    } else {
        generate("Numbered", 40, (SEATS_PER_EVENT_MAX / 40 / 50) as u32, 50)
    };
    let seats = layout.capacity();
    let create = Command::CreateEvent(CreateEvent {
        event_id: EventId::new("largest").unwrap(),
        name: "Largest".into(),
        starts_at_ms: T0,
        layout,
        limits: Limits::default(),
        by: None,
        id_key: raft_store::IdKey([7; 16]),
    });
    let bytes = raft_store::limits::command_bytes(&create);
    let (mut applies, mut cpu, mut landed) = (Vec::new(), Vec::new(), Vec::new());
    for g in 0..rounds {
        let (_, mut sm) = store.group(100 + g).unwrap();
        let entries = vec![entry(1, vec![create.clone()])];
        let start = Instant::now();
        let cpu_start = thread_cpu();
        // Nothing in `apply` awaits: it runs on this thread from start to end.
        let out = sm.apply(entries).await.unwrap();
        cpu.push(thread_cpu() - cpu_start);
        applies.push(start.elapsed());
        assert!(out[0][0].is_ok(), "{:?}", out[0][0]);
        // The next apply waits for this one's records to be written.
        sm.apply(vec![entry(2, vec![])]).await.unwrap();
        landed.push(start.elapsed());
    }
    let ms = |v: &[Duration]| {
        v.iter()
            .map(|d| format!("{:.1}", d.as_secs_f64() * 1e3))
            .collect::<Vec<_>>()
            .join(" ")
    };
    println!(
        "create seats={seats} named={named} command_bytes={bytes} apply_cpu_ms=[{}] apply_ms=[{}] written_ms=[{}]",
        ms(&cpu),
        ms(&applies),
        ms(&landed)
    );
}

/// The CPU time this thread has used.
fn thread_cpu() -> Duration {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `t` is a valid timespec for the call to fill in.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

fn main() {
    // `cargo bench` passes `--bench`; a plain argument selects cases by name.
    let filter = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with("--"))
        .unwrap_or_default();
    let run = |case: &str| case.contains(filter.as_str());
    let secs = std::env::var("SEATD_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let secs = Duration::from_secs(secs);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        if run("append") {
            for per_entry in [1, 16, 256] {
                for groups in [1, 8, 32] {
                    append_case(secs, groups, per_entry).await;
                }
            }
        }
        if run("apply") {
            for per_entry in [1, 16, 256] {
                apply_case(secs, per_entry).await;
            }
        }
        if run("create") {
            create_case(5, false).await;
            create_case(5, true).await;
        }
    });
}
