//! Crash safety with real processes: a child appends and applies entries, printing
//! what it has been told is durable; the test SIGKILLs it at seeded random moments and,
//! after each kill, checks that every acknowledged entry is in the log and that the
//! state machine, brought up to the log as openraft would, equals a fresh replay.
//!
//! Replay a failure with `SEATD_CRASH_SEED=<seed> cargo test -p seatd-raft-store --test crash`.
//! SIGKILL loses the process, not the kernel's page cache, so this checks ordering and
//! atomicity of what the store acknowledges, not the disk's fsync.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command as Process, Stdio};
use std::time::{Duration, Instant};

use common::{create, hold_req, T0};
use openraft::storage::{RaftLogReader, RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};
use raft_store::raft::TypeConfig;
use raft_store::storage::{LogStore, StateMachineStore, Store};
use raft_store::{Batch, Command, HoldId, Limits, SeatMachine};

const CHILD_DIR_ENV: &str = "SEATD_CRASH_CHILD_DIR";
const SEED_ENV: &str = "SEATD_CRASH_SEED";
const ROUNDS: u64 = 6;
/// Entries one child writes at most, so a child that is never killed still stops.
const ENTRIES_PER_CHILD_MAX: u64 = 20_000;

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn seed() -> u64 {
    std::env::var(SEED_ENV)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5ea7)
}

/// The entry at `index`: a pure function of the index and the seed, so the test can
/// check what the log holds without talking to the child.
fn entry_for(index: u64, seed: u64) -> Entry<TypeConfig> {
    let commands = if index == 1 {
        vec![create("crash", 1, 10, 10, Limits::default())]
    } else {
        let r = splitmix(index ^ seed);
        (0..(r % 3 + 1))
            .map(|k| {
                let r = splitmix(r + k);
                let hold = HoldId {
                    event: common::ev("crash"),
                    seq: (r >> 8) % index + 1,
                    tag: common::TEST_ID_KEY.tag(b'h', (r >> 8) % index + 1),
                };
                match r % 5 {
                    0 => Command::Release {
                        hold,
                        user: format!("u{}", (r >> 16) % 50),
                        by: None,
                    },
                    1 => Command::BeginCheckout {
                        hold,
                        idempotency_key: format!("k{}", r >> 20),
                        by: None,
                    },
                    2 => Command::CompleteCheckout {
                        hold,
                        idempotency_key: format!("k{}", r >> 20),
                        payment_ref: "p".into(),
                    },
                    _ => {
                        let seat = format!(
                            "{}-{}",
                            raft_store::layout::row_label((r >> 8) as usize % 10),
                            (r >> 12) % 10 + 1
                        );
                        Command::Hold(hold_req(
                            "crash",
                            &format!("u{}", (r >> 16) % 50),
                            &format!("r{index}-{k}"),
                            &[&seat],
                        ))
                    }
                }
            })
            .collect()
    };
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(
            Batch {
                ts_ms: T0 + index * 50,
                commands,
            }
            .into(),
        ),
    }
}

/// Applies to `sm` every logged entry it has not applied yet, as openraft does for
/// committed entries after a restart. Returns the last log index.
async fn catch_up(log: &mut LogStore, sm: &mut StateMachineStore) -> u64 {
    let last = log
        .get_log_state()
        .await
        .unwrap()
        .last_log_id
        .map_or(0, |l| l.index);
    let applied = sm.applied_state().await.unwrap().0.map_or(0, |l| l.index);
    assert!(
        applied <= last,
        "applied {applied} past the log's end {last}"
    );
    let missing = log.try_get_log_entries(applied + 1..=last).await.unwrap();
    assert_eq!(missing.len() as u64, last - applied, "a hole in the log");
    sm.apply(missing).await.unwrap();
    last
}

/// `(tag, number)` for every acknowledgement printed on a line.
fn acks(line: &str) -> Vec<(&'static str, u64)> {
    let words: Vec<&str> = line.split_whitespace().collect();
    words
        .windows(2)
        .filter_map(|w| {
            let tag = ["READY", "APPENDED", "APPLIED"]
                .into_iter()
                .find(|t| *t == w[0])?;
            Some((tag, w[1].parse().ok()?))
        })
        .collect()
}

/// The child: resumes the store and keeps appending and applying until killed.
#[test]
fn crash_child() {
    let Ok(dir) = std::env::var(CHILD_DIR_ENV) else {
        return;
    };
    let seed = seed();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let store = Store::open(&dir).unwrap();
        let (mut log, mut sm) = store.group(1).unwrap();
        let last = catch_up(&mut log, &mut sm).await;
        println!("READY {last}");
        for index in last + 1..=last + ENTRIES_PER_CHILD_MAX {
            let e = entry_for(index, seed);
            log.blocking_append(vec![e.clone()]).await.unwrap();
            println!("APPENDED {index}");
            sm.apply(vec![e]).await.unwrap();
            println!("APPLIED {index}");
        }
    });
}

#[test]
fn sigkill_never_loses_an_acknowledged_entry() {
    if std::env::var(CHILD_DIR_ENV).is_ok() {
        return;
    }
    let seed = seed();
    let dir = tempfile::tempdir().unwrap();
    let me = std::env::current_exe().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut acked_total = 0;
    for round in 0..ROUNDS {
        let mut child = Process::new(&me)
            .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
            .env(CHILD_DIR_ENV, dir.path())
            .env(SEED_ENV, seed.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let kill_after = Duration::from_millis(50 + splitmix(seed ^ round) % 400);
        // Read acknowledgements until the deadline (bounded by time and by count).
        let (mut appended, mut applied, mut ready) = (0u64, 0u64, false);
        let mut lines = BufReader::new(stdout).lines();
        let mut started: Option<Instant> = None;
        for line in lines.by_ref() {
            // libtest may print its own words before ours on the same line.
            for (tag, n) in acks(&line.unwrap()) {
                match tag {
                    "READY" => {
                        ready = true;
                        started = Some(Instant::now());
                    }
                    "APPENDED" => appended = n,
                    _ => applied = n,
                }
            }
            if started.is_some_and(|s| s.elapsed() >= kill_after) {
                break;
            }
        }
        child.kill().unwrap();
        child.wait().unwrap();
        // Lines the child printed before dying are acknowledgements too.
        for line in lines.map_while(Result::ok) {
            for (tag, n) in acks(&line) {
                match tag {
                    "APPENDED" => appended = appended.max(n),
                    "APPLIED" => applied = applied.max(n),
                    _ => {}
                }
            }
        }
        assert!(ready, "seed {seed} round {round}: the child never started");
        acked_total = appended;

        rt.block_on(async {
            let store = Store::open(dir.path()).unwrap();
            let (mut log, mut sm) = store.group(1).unwrap();
            let last = catch_up(&mut log, &mut sm).await;
            assert!(
                last >= appended,
                "seed {seed} round {round}: acknowledged {appended}, log ends at {last}"
            );
            assert!(
                last >= applied,
                "seed {seed} round {round}: applied {applied}, log ends at {last}"
            );
            let entries = log.try_get_log_entries(1..=last).await.unwrap();
            let mut fresh = SeatMachine::new();
            for e in &entries {
                let want = entry_for(e.log_id.index, seed);
                assert_eq!(
                    e, &want,
                    "seed {seed} round {round}: entry {} differs",
                    e.log_id.index
                );
                let EntryPayload::Normal(b) = &e.payload else {
                    unreachable!()
                };
                fresh.apply(e.log_id.index, b);
            }
            // The store keeps cold records on disk only: compare what stays in memory.
            fresh.take_changes();
            fresh.evict_cold();
            let digest = sm.reader().read(|m| m.digest());
            assert_eq!(
                digest,
                fresh.digest(),
                "seed {seed} round {round}: state differs from a replay"
            );
        });
    }
    assert!(
        acked_total > 10,
        "seed {seed}: the children acknowledged almost nothing ({acked_total})"
    );
}
