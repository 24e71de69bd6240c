//! The RocksDB store: groups kept apart, restarts that resume, snapshots that move a
//! whole event, and data directories that are refused with a reason.

mod common;

use common::{create, hold_req, T0};
use openraft::storage::{
    RaftLogReader, RaftLogStorage, RaftLogStorageExt, RaftSnapshotBuilder, RaftStateMachine,
};
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, Vote};
use raft_store::raft::TypeConfig;
use raft_store::storage::Store;
use raft_store::{Batch, Command, Limits, SeatMachine};

fn entry(index: u64, commands: Vec<Command>) -> Entry<TypeConfig> {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(
            Batch {
                ts_ms: T0 + index,
                commands,
            }
            .into(),
        ),
    }
}

fn event_entries(event: &str, n: u64) -> Vec<Entry<TypeConfig>> {
    let mut out = vec![entry(1, vec![create(event, 1, 4, 10, Limits::default())])];
    for i in 2..=n {
        let seat = format!("{}-{}", ["A", "B", "C", "D"][(i % 4) as usize], i % 10 + 1);
        out.push(entry(
            i,
            vec![Command::Hold(hold_req(
                event,
                &format!("u{i}"),
                "r",
                &[&seat],
            ))],
        ));
    }
    out
}

/// Group 1 of `store`, with event "ev" (4 rows of 10 seats) created at entry 1.
async fn group_with_event(store: &Store) -> raft_store::storage::StateMachineStore {
    let (_, mut sm) = store.group(1).unwrap();
    sm.apply(vec![entry(
        1,
        vec![create("ev", 1, 4, 10, Limits::default())],
    )])
    .await
    .unwrap();
    sm
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn groups_never_see_each_other_and_dropping_one_keeps_the_other() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let store = Store::open(dir.path()).unwrap();
        let (mut log1, mut sm1) = store.group(1).unwrap();
        let (mut log2, mut sm2) = store.group(2).unwrap();
        log1.blocking_append(event_entries("one", 20))
            .await
            .unwrap();
        log2.blocking_append(event_entries("two", 5)).await.unwrap();
        sm1.apply(event_entries("one", 20)).await.unwrap();
        sm2.apply(event_entries("two", 5)).await.unwrap();
        log2.save_vote(&Vote::new(3, 2)).await.unwrap();

        assert_eq!(
            log1.get_log_state()
                .await
                .unwrap()
                .last_log_id
                .unwrap()
                .index,
            20
        );
        assert_eq!(
            log2.get_log_state()
                .await
                .unwrap()
                .last_log_id
                .unwrap()
                .index,
            5
        );
        assert_eq!(log1.read_vote().await.unwrap(), None);
        assert_eq!(log1.try_get_log_entries(0..).await.unwrap().len(), 20);
        assert!(sm1
            .reader()
            .read(|m| m.seat_map(&common::ev("two")).is_err()));
        let two_digest = sm2.reader().read(|m| m.digest());
        assert_eq!(store.groups().unwrap(), vec![1, 2]);

        store.drop_group(1).unwrap();
        assert_eq!(store.groups().unwrap(), vec![2]);
        drop((log1, sm1, log2, sm2));
        let (mut log1, mut sm1) = store.group(1).unwrap();
        let (mut log2, sm2) = store.group(2).unwrap();
        assert_eq!(log1.get_log_state().await.unwrap().last_log_id, None);
        assert_eq!(sm1.applied_state().await.unwrap().0, None);
        assert_eq!(log2.try_get_log_entries(0..).await.unwrap().len(), 5);
        assert_eq!(log2.read_vote().await.unwrap(), Some(Vote::new(3, 2)));
        assert_eq!(sm2.reader().read(|m| m.digest()), two_digest);
    });
}

#[test]
fn a_reopened_store_resumes_from_its_last_applied_entry() {
    let dir = tempfile::tempdir().unwrap();
    let entries = event_entries("ev", 40);
    let digest = rt().block_on(async {
        let store = Store::open(dir.path()).unwrap();
        let (mut log, mut sm) = store.group(3).unwrap();
        log.blocking_append(entries.clone()).await.unwrap();
        sm.apply(entries[..30].to_vec()).await.unwrap();
        sm.apply(entries[30..].to_vec()).await.unwrap();
        sm.reader().read(|m| m.digest())
    });
    rt().block_on(async {
        let store = Store::open(dir.path()).unwrap();
        let (_, mut sm) = store.group(3).unwrap();
        let (applied, _) = sm.applied_state().await.unwrap();
        assert_eq!(applied.unwrap().index, 40);
        assert_eq!(sm.reader().read(|m| m.digest()), digest);
        // The same as replaying the whole log into a fresh machine.
        let mut fresh = SeatMachine::new();
        for e in &entries {
            let EntryPayload::Normal(b) = &e.payload else {
                unreachable!()
            };
            fresh.apply(e.log_id.index, b);
        }
        // The store keeps cold records on disk only: compare what stays in memory.
        fresh.take_changes();
        fresh.evict_cold();
        assert_eq!(fresh.digest(), digest);
    });
}

#[test]
fn a_stadium_snapshot_installs_on_an_empty_store_identically() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let store = Store::open(dir.path().join("a")).unwrap();
        let (_, mut sm) = store.group(1).unwrap();
        let layout = raft_store::layout::preset("stadium").unwrap();
        let create = Command::CreateEvent(raft_store::CreateEvent {
            event_id: common::ev("big"),
            name: "Stadium".into(),
            starts_at_ms: T0,
            layout,
            limits: Limits::default(),
            by: None,
            id_key: raft_store::IdKey([7; 16]),
        });
        let mut entries = vec![entry(1, vec![create])];
        // Holds on a fifth of the seats, and some of them sold.
        let holds: Vec<Command> = (0..2000)
            .map(|i| {
                let row = raft_store::layout::row_label(i % 2000);
                let seats: Vec<String> = (1..=10).map(|n| format!("{row}-{n}")).collect();
                let seats: Vec<&str> = seats.iter().map(String::as_str).collect();
                Command::Hold(hold_req(
                    "big",
                    &format!("u{i}"),
                    "r",
                    &seats[..(i % 8) + 1],
                ))
            })
            .collect();
        entries.push(entry(2, holds));
        let pay: Vec<Command> = (1..=500u64)
            .flat_map(|seq| {
                let hold = raft_store::HoldId {
                    event: common::ev("big"),
                    seq,
                    tag: common::TEST_ID_KEY.tag(b'h', seq),
                };
                [
                    Command::BeginCheckout {
                        hold: hold.clone(),
                        idempotency_key: format!("k{seq}"),
                        by: None,
                    },
                    Command::CompleteCheckout {
                        hold,
                        idempotency_key: format!("k{seq}"),
                        payment_ref: "p".into(),
                    },
                ]
            })
            .collect();
        entries.push(entry(3, pay));
        sm.apply(entries).await.unwrap();
        let digest = sm.reader().read(|m| m.digest());
        let snap = sm.build_snapshot().await.unwrap();
        assert_eq!(snap.meta.last_log_id.unwrap().index, 3);
        let bytes = snap.snapshot.get_ref().len();
        assert!(
            bytes > 100_000,
            "a 100k-seat event encodes to {bytes} bytes"
        );
        eprintln!("stadium snapshot: {bytes} bytes");

        let other = Store::open(dir.path().join("b")).unwrap();
        let (_, mut empty) = other.group(9).unwrap();
        empty
            .install_snapshot(&snap.meta, snap.snapshot.clone())
            .await
            .unwrap();
        assert_eq!(empty.reader().read(|m| m.digest()), digest);
        assert_eq!(
            empty.get_current_snapshot().await.unwrap().unwrap().meta,
            snap.meta
        );
        drop((empty, other));
        // And it survives a restart, from records.
        let other = Store::open(dir.path().join("b")).unwrap();
        let (_, again) = other.group(9).unwrap();
        assert_eq!(again.reader().read(|m| m.digest()), digest);
    });
}

#[test]
fn unusable_data_directories_are_refused_with_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node");
    let store = Store::open(&path).unwrap();
    // Locked by a live store (another process would see the same lock).
    let err = Store::open(&path)
        .err()
        .expect("second open refused")
        .to_string();
    assert!(
        err.contains("locked") && err.contains(path.to_str().unwrap()),
        "{err}"
    );
    drop(store);
    Store::open(&path).unwrap();

    // Another program's directory.
    let alien = dir.path().join("alien");
    std::fs::create_dir_all(&alien).unwrap();
    std::fs::write(alien.join("data.txt"), "hello").unwrap();
    let err = Store::open(&alien).err().unwrap().to_string();
    assert!(
        err.contains("not a seatd data directory") && err.contains("alien"),
        "{err}"
    );

    // Unreadable: the path is a file, or the marker cannot be read.
    let file = dir.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    let err = Store::open(&file).err().unwrap().to_string();
    assert!(
        err.contains("a-file") && err.contains("cannot create"),
        "{err}"
    );
    let odd = dir.path().join("odd");
    std::fs::create_dir_all(odd.join("FORMAT")).unwrap();
    let err = Store::open(&odd).err().unwrap().to_string();
    assert!(
        err.contains("odd") && err.contains("cannot read FORMAT"),
        "{err}"
    );

    // A future format.
    std::fs::write(path.join("FORMAT"), "seatd-store 99\n").unwrap();
    let err = Store::open(&path).err().unwrap().to_string();
    assert!(
        err.contains("seatd-store 99") && err.contains("node"),
        "{err}"
    );
    // An older format: refused, saying why and what to do.
    for older in ["seatd-store 1", "seatd-store 2"] {
        std::fs::write(path.join("FORMAT"), format!("{older}\n")).unwrap();
        let err = Store::open(&path).err().unwrap().to_string();
        assert!(
            err.contains(older) && err.contains("older seatd") && err.contains("empty one"),
            "{err}"
        );
    }
    std::fs::write(path.join("FORMAT"), "seatd-store 3\n").unwrap();

    // RocksDB's own files damaged.
    let current = path.join("db").join("CURRENT");
    std::fs::write(&current, "MANIFEST-999999\n").unwrap();
    let err = Store::open(&path).err().unwrap().to_string();
    assert!(err.contains("node"), "{err}");
}

#[test]
fn a_damaged_record_is_an_error_not_a_reset() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let store = Store::open(dir.path()).unwrap();
        let (mut log, mut sm) = store.group(1).unwrap();
        log.blocking_append(event_entries("ev", 3)).await.unwrap();
        sm.apply(event_entries("ev", 3)).await.unwrap();
        let mut reader = log.get_log_reader().await;
        assert_eq!(reader.try_get_log_entries(2..=2).await.unwrap().len(), 1);
    });
    // Overwrite a log entry's bytes through RocksDB itself.
    {
        let mut opts = rocksdb::Options::default();
        opts.create_if_missing(false);
        let db = rocksdb::DB::open_cf(&opts, dir.path().join("db"), ["log", "meta", "sm"]).unwrap();
        let mut key = 1u32.to_be_bytes().to_vec();
        key.extend_from_slice(&2u64.to_be_bytes());
        db.put_cf(db.cf_handle("log").unwrap(), key, b"garbage")
            .unwrap();
    }
    rt().block_on(async {
        let store = Store::open(dir.path()).unwrap();
        let (mut log, _) = store.group(1).unwrap();
        let err = log.try_get_log_entries(0..).await.unwrap_err().to_string();
        assert!(
            err.contains("corrupt") || err.contains("log entry"),
            "{err}"
        );
    });
}

#[test]
fn history_stays_on_disk_and_still_answers_retries() {
    let dir = tempfile::tempdir().unwrap();
    let hold_a1 = |user: &str, crid: &str| Command::Hold(hold_req("ev", user, crid, &["A-1"]));
    let first = rt().block_on(async {
        let store = Store::open(dir.path()).unwrap();
        let mut sm = group_with_event(&store).await;
        let first = sm
            .apply(vec![entry(2, vec![hold_a1("u0", "r0")])])
            .await
            .unwrap();
        // 2,000 buyers hold and release the same seat: a long history, one seat.
        let mut index = 3;
        for i in 0..2000u64 {
            let hold = raft_store::HoldId {
                event: common::ev("ev"),
                seq: i + 2,
                tag: common::TEST_ID_KEY.tag(b'h', i + 2),
            };
            let cmds = vec![
                hold_a1(&format!("u{}", i + 1), "r"),
                Command::Release {
                    hold,
                    user: format!("u{}", i + 1),
                    by: None,
                },
            ];
            if i == 0 {
                // Free the seat held by u0 first.
                let h1 = raft_store::HoldId {
                    event: common::ev("ev"),
                    seq: 1,
                    tag: common::TEST_ID_KEY.tag(b'h', 1),
                };
                sm.apply(vec![entry(
                    index,
                    vec![Command::Release {
                        hold: h1,
                        user: "u0".into(),
                        by: None,
                    }],
                )])
                .await
                .unwrap();
                index += 1;
            }
            let out = sm.apply(vec![entry(index, cmds)]).await.unwrap();
            assert!(out[0].iter().all(|o| o.is_ok()), "{out:?}");
            index += 1;
        }
        // Memory holds none of that history.
        assert_eq!(sm.reader().read(|m| m.records_in_memory()), 0);
        first
    });
    rt().block_on(async {
        let store = Store::open(dir.path()).unwrap();
        let (_, mut sm) = store.group(1).unwrap();
        assert_eq!(sm.reader().read(|m| m.records_in_memory()), 0);
        // A retry from long ago is answered from disk, and changes nothing.
        let retry = sm
            .apply(vec![entry(5000, vec![hold_a1("u0", "r0")])])
            .await
            .unwrap();
        assert_eq!(retry, first);
        // Commands on an evicted hold see its real state.
        let h1 = raft_store::HoldId {
            event: common::ev("ev"),
            seq: 1,
            tag: common::TEST_ID_KEY.tag(b'h', 1),
        };
        let out = sm
            .apply(vec![entry(
                5001,
                vec![Command::BeginCheckout {
                    hold: h1.clone(),
                    idempotency_key: "k".into(),
                    by: None,
                }],
            )])
            .await
            .unwrap();
        assert!(
            matches!(&out[0][0], Err(raft_store::Refusal::WrongState(m)) if m.contains("released")),
            "{out:?}"
        );
        let view = sm.reader().hold(&h1).unwrap().unwrap();
        assert_eq!(view.state, raft_store::HoldState::Released);
        assert!(sm
            .reader()
            .hold(&raft_store::HoldId {
                event: common::ev("ev"),
                seq: 99_999,
                tag: common::TEST_ID_KEY.tag(b'h', 99_999),
            })
            .unwrap()
            .is_err());
        assert_eq!(sm.reader().read(|m| m.records_in_memory()), 0);
    });
}

#[test]
fn a_record_dropped_from_memory_is_found_right_after_the_apply_that_dropped_it() {
    // `apply` answers before its records are written and drops the cold ones from
    // memory at once, so whatever reads them next must wait for that write. Each round
    // reads straight after the apply; a reader that did not wait would miss the hold
    // (or the retried grant) in most rounds, as the write is still queued.
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let store = Store::open(dir.path()).unwrap();
        let mut sm = group_with_event(&store).await;
        let mut index = 2;
        for round in 0..300u64 {
            let user = format!("u{round}");
            let hold = Command::Hold(hold_req("ev", &user, "r", &["B-2"]));
            let granted = sm
                .apply(vec![entry(index, vec![hold.clone()])])
                .await
                .unwrap();
            let Ok(raft_store::Reply::Held(view)) = &granted[0][0] else {
                panic!("round {round}: {granted:?}");
            };
            let id = view.hold_id.clone();
            let released = sm
                .apply(vec![entry(
                    index + 1,
                    vec![Command::Release {
                        hold: id.clone(),
                        user: user.clone(),
                        by: None,
                    }],
                )])
                .await
                .unwrap();
            assert!(released[0][0].is_ok(), "round {round}: {released:?}");
            // The released hold left memory with that apply; its record is on disk.
            let seen = sm.reader().hold(&id).unwrap().unwrap();
            assert_eq!(seen.state, raft_store::HoldState::Released, "round {round}");
            // A retry of the grant is answered from disk with the first answer.
            let retry = sm.apply(vec![entry(index + 2, vec![hold])]).await.unwrap();
            assert_eq!(retry, granted, "round {round}");
            index += 3;
        }
        assert_eq!(sm.reader().read(|m| m.records_in_memory()), 0);
    });
}

#[test]
fn decided_requests_are_answered_from_disk_after_eviction_a_restart_and_a_snapshot() {
    // The store skips reading a request's record when its filter has never seen the
    // key. Each way a record reaches the disk must reach the filter too, or a retry
    // would be decided again as a new request: here the refused request's seat is
    // free again when it is retried, so a second decision would grant it.
    let dir = tempfile::tempdir().unwrap();
    let hold = |user: &str| Command::Hold(hold_req("ev", user, "r", &["A-1"]));
    let retries = || vec![hold("winner"), hold("loser")];
    rt().block_on(async {
        let store = Store::open(dir.path().join("a")).unwrap();
        let mut sm = group_with_event(&store).await;
        let first = sm
            .apply(vec![entry(2, vec![hold("winner"), hold("loser")])])
            .await
            .unwrap()
            .remove(0);
        let Ok(raft_store::Reply::Held(won)) = &first[0] else {
            panic!("{first:?}");
        };
        let winners_hold = won.hold_id.clone();
        assert!(
            matches!(&first[1], Err(raft_store::Refusal::Conflict { .. })),
            "{first:?}"
        );
        let released = sm
            .apply(vec![entry(
                3,
                vec![Command::Release {
                    hold: winners_hold,
                    user: "winner".into(),
                    by: None,
                }],
            )])
            .await
            .unwrap();
        assert!(released[0][0].is_ok(), "{released:?}");
        // Both decisions are now cold: on disk only.
        assert_eq!(sm.reader().read(|m| m.records_in_memory()), 0);

        // Right after the applies that wrote them.
        let again = sm.apply(vec![entry(4, retries())]).await.unwrap();
        assert_eq!(again[0], first, "after eviction");
        let snap = sm.build_snapshot().await.unwrap();
        drop((sm, store));

        // After a restart, from the records read when the group opens.
        let store = Store::open(dir.path().join("a")).unwrap();
        let (_, mut sm) = store.group(1).unwrap();
        let again = sm.apply(vec![entry(5, retries())]).await.unwrap();
        assert_eq!(again[0], first, "after a restart");

        // On another node, from an installed snapshot's records.
        let other = Store::open(dir.path().join("b")).unwrap();
        let (_, mut copy) = other.group(1).unwrap();
        copy.install_snapshot(&snap.meta, snap.snapshot)
            .await
            .unwrap();
        let again = copy.apply(vec![entry(5, retries())]).await.unwrap();
        assert_eq!(again[0], first, "after a snapshot");
    });
}

// ---------------------------------------------------------------------------------
// Retention on the store: purged records leave the disk, identically on every replica.

use raft_store::limits::DECISION_RETENTION_MS;

fn entry_at(index: u64, ts_ms: u64, commands: Vec<Command>) -> Entry<TypeConfig> {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(Batch { ts_ms, commands }.into()),
    }
}

/// Every state machine record of `group` in the closed store at `path`, in key order
/// (keys without the group prefix).
fn sm_records(path: &std::path::Path, group: u32) -> Vec<(Vec<u8>, Vec<u8>)> {
    let opts = rocksdb::Options::default();
    let db =
        rocksdb::DB::open_cf_for_read_only(&opts, path.join("db"), ["log", "meta", "sm"], false)
            .unwrap();
    let prefix = group.to_be_bytes();
    db.prefix_iterator_cf(db.cf_handle("sm").unwrap(), prefix)
        .map(|item| item.unwrap())
        .take_while(|(k, _)| k.starts_with(&prefix))
        .map(|(k, v)| (k[4..].to_vec(), v.to_vec()))
        .collect()
}

/// How many records of `kind` (the first key byte: 6 a hold request's decision, 7 a
/// checkout, 8 an idempotency key's binding, 10 a retention queue entry) are among
/// `records`.
fn count_kind(records: &[(Vec<u8>, Vec<u8>)], kind: u8) -> usize {
    records
        .iter()
        .filter(|(k, _)| k.first() == Some(&kind))
        .count()
}

const REFUSALS: u64 = 3_000;

/// The history every replica shares up to the snapshot: an event, a hold on A-1 by
/// "owner", `REFUSALS` requests for A-1 with fresh ids, the owner's payment declined,
/// and the owner's hold released. `REFUSALS + 2` records then only answer retries.
fn history_before_snapshot() -> Vec<Entry<TypeConfig>> {
    let owner = raft_store::HoldId {
        event: common::ev("ev"),
        seq: 1,
        tag: common::TEST_ID_KEY.tag(b'h', 1),
    };
    let mut out = vec![
        entry_at(1, T0, vec![create("ev", 1, 4, 10, Limits::default())]),
        entry_at(
            2,
            T0,
            vec![Command::Hold(hold_req("ev", "owner", "r", &["A-1"]))],
        ),
    ];
    for chunk in 0..REFUSALS / 1000 {
        let refused = (0..1000)
            .map(|i| {
                let user = format!("u{}", chunk * 1000 + i);
                Command::Hold(hold_req("ev", &user, "r", &["A-1"]))
            })
            .collect();
        out.push(entry_at(3 + chunk, T0, refused));
    }
    let next = 3 + REFUSALS / 1000;
    out.push(entry_at(
        next,
        T0 + 1_000,
        vec![
            Command::BeginCheckout {
                hold: owner.clone(),
                idempotency_key: "k1".into(),
                by: None,
            },
            Command::AbortCheckout {
                hold: owner.clone(),
                idempotency_key: "k1".into(),
                reason: "declined".into(),
            },
        ],
    ));
    out.push(entry_at(
        next + 1,
        T0 + 2_000,
        vec![Command::Release {
            hold: owner,
            user: "owner".into(),
            by: None,
        }],
    ));
    out
}

/// The history after the snapshot: the retention runs out, the backlog is forgotten
/// by entries without commands, then the first refusal, the owner's request and the
/// declined key are retried.
fn history_after_snapshot(first_index: u64) -> Vec<Entry<TypeConfig>> {
    let retries = || {
        vec![
            Command::Hold(hold_req("ev", "u0", "r", &["A-1"])),
            Command::Hold(hold_req("ev", "owner", "r", &["A-1"])),
            Command::BeginCheckout {
                hold: raft_store::HoldId {
                    event: common::ev("ev"),
                    seq: 1,
                    tag: common::TEST_ID_KEY.tag(b'h', 1),
                },
                idempotency_key: "k1".into(),
                by: None,
            },
        ]
    };
    let mut index = first_index;
    let mut at = |ts_ms: u64, commands: Vec<Command>| {
        index += 1;
        entry_at(index - 1, ts_ms, commands)
    };
    // At exactly the retention of the oldest, every retry hears its first answer.
    let mut out = vec![at(T0 + DECISION_RETENTION_MS, retries())];
    let backlog = (REFUSALS + 2) as usize;
    let purge_entries = backlog.div_ceil(SeatMachine::purge_budget_records(0));
    for _ in 0..purge_entries {
        out.push(at(T0 + DECISION_RETENTION_MS + 2_001, vec![]));
    }
    out.push(at(T0 + DECISION_RETENTION_MS + 2_002, retries()));
    out
}

#[test]
fn retention_forgets_the_same_records_on_replicas_restored_from_a_snapshot_or_restarted() {
    let dir = tempfile::tempdir().unwrap();
    let before = history_before_snapshot();
    let after = history_after_snapshot(before.len() as u64 + 1);
    let paths = ["a", "b", "c"].map(|n| dir.path().join(n));
    rt().block_on(async {
        // Replica a applies the whole history; b and c start from a's snapshot.
        let store_a = Store::open(&paths[0]).unwrap();
        let (_, mut a) = store_a.group(1).unwrap();
        let first = a.apply(before.clone()).await.unwrap();
        assert!(first[2..2 + (REFUSALS / 1000) as usize]
            .iter()
            .flatten()
            .all(|o| matches!(o, Err(raft_store::Refusal::Conflict { .. }))));
        let snap = a.build_snapshot().await.unwrap();
        let mut stores = vec![store_a];
        let mut replicas = vec![a];
        for path in &paths[1..] {
            let store = Store::open(path).unwrap();
            let (_, mut sm) = store.group(1).unwrap();
            sm.install_snapshot(&snap.meta, snap.snapshot.clone())
                .await
                .unwrap();
            stores.push(store);
            replicas.push(sm);
        }
        assert_eq!(
            replicas[0].reader().read(|m| m.records_awaiting_purge()),
            REFUSALS + 2
        );
        let mut answers = Vec::new();
        for (n, e) in after.iter().enumerate() {
            if n == after.len() / 2 {
                // c restarts in the middle of the backlog, from its records.
                replicas.pop();
                stores.pop();
                let store = Store::open(&paths[2]).unwrap();
                let (_, sm) = store.group(1).unwrap();
                stores.push(store);
                replicas.push(sm);
            }
            let mut outs = Vec::new();
            for sm in &mut replicas {
                outs.push(sm.apply(vec![e.clone()]).await.unwrap());
            }
            assert!(outs.iter().all(|o| *o == outs[0]), "entry {n}: {outs:?}");
            let digests: Vec<_> = replicas
                .iter()
                .map(|sm| sm.reader().read(|m| m.digest()))
                .collect();
            assert!(digests.iter().all(|d| *d == digests[0]), "entry {n}");
            answers.push(outs.swap_remove(0).remove(0));
        }
        // Within the retention, the first answers.
        let (within, last) = (&answers[0], answers.last().unwrap());
        assert!(
            matches!(&within[0], Err(raft_store::Refusal::Conflict { .. })),
            "{within:?}"
        );
        assert!(matches!(&within[1], Ok(raft_store::Reply::Held(v)) if v.hold_id.seq == 1));
        assert!(
            matches!(&within[2], Err(raft_store::Refusal::Declined(_))),
            "{within:?}"
        );
        // After it, new decisions: the seat is free, so u0 gets it, and the owner, who
        // asks again with the same id, finds it taken; the key hears what the hold is.
        assert!(
            matches!(&last[0], Ok(raft_store::Reply::Held(v)) if v.user.as_ref() == "u0"),
            "{last:?}"
        );
        assert!(
            matches!(&last[1], Err(raft_store::Refusal::Conflict { .. })),
            "{last:?}"
        );
        assert!(
            matches!(&last[2], Err(raft_store::Refusal::WrongState(m)) if m.contains("released")),
            "{last:?}"
        );
        for sm in &replicas {
            // Only the three new decisions wait now: the owner's refusal, the key's.
            assert_eq!(sm.reader().read(|m| m.records_awaiting_purge()), 2);
        }
    });
    // The disks agree record for record, and the backlog left them.
    let records = paths.each_ref().map(|p| sm_records(p, 1));
    assert_eq!(records[0], records[1]);
    assert_eq!(records[0], records[2]);
    assert_eq!(count_kind(&records[0], 6), 1, "the owner's new refusal");
    assert_eq!(count_kind(&records[0], 7), 1, "k1's new refusal");
    assert_eq!(
        count_kind(&records[0], 8),
        1,
        "k1 bound again, by its new refusal"
    );
    assert_eq!(count_kind(&records[0], 10), 2, "their two queue entries");
}

#[test]
fn purged_records_leave_the_disk_and_a_retry_after_a_restart_is_new() {
    let dir = tempfile::tempdir().unwrap();
    let before = history_before_snapshot();
    let after = history_after_snapshot(before.len() as u64 + 1);
    rt().block_on(async {
        let store = Store::open(dir.path()).unwrap();
        let (_, mut sm) = store.group(1).unwrap();
        sm.apply(before).await.unwrap();
    });
    let stored = sm_records(dir.path(), 1);
    assert_eq!(count_kind(&stored, 6), REFUSALS as usize + 1);
    assert_eq!(count_kind(&stored, 7), 1);
    assert_eq!(count_kind(&stored, 8), 1, "k1 bound to the owner's hold");
    assert_eq!(count_kind(&stored, 10), REFUSALS as usize + 2);
    let (purges, retries) = after.split_at(after.len() - 1);
    rt().block_on(async {
        let store = Store::open(dir.path()).unwrap();
        let (_, mut sm) = store.group(1).unwrap();
        sm.apply(purges.to_vec()).await.unwrap();
        assert_eq!(sm.reader().read(|m| m.records_awaiting_purge()), 0);
    });
    let stored = sm_records(dir.path(), 1);
    assert_eq!(count_kind(&stored, 6), 0);
    assert_eq!(count_kind(&stored, 7), 0);
    assert_eq!(
        count_kind(&stored, 8),
        0,
        "k1's binding went with its refusal"
    );
    assert_eq!(count_kind(&stored, 10), 0);
    // The filter, rebuilt from the disk, no longer knows the purged requests; one that
    // did (without a restart) would only read and find nothing, as the test above does.
    rt().block_on(async {
        let store = Store::open(dir.path()).unwrap();
        let (_, mut sm) = store.group(1).unwrap();
        let out = sm.apply(retries.to_vec()).await.unwrap();
        assert!(
            matches!(&out[0][0], Ok(raft_store::Reply::Held(_))),
            "{out:?}"
        );
    });
}

/// `snapshot` relabelled as format `version` (same payload, checksum still valid).
fn relabelled(snapshot: &[u8], version: u16) -> Vec<u8> {
    let mut out = snapshot.to_vec();
    out[4..6].copy_from_slice(&version.to_le_bytes());
    out
}

/// A snapshot of an older format (1 and 2 hold records in the encoding before hold ids
/// had tags and commands actors), or of a future one, is refused by its version rather
/// than misread; a directory of an older format is refused when opened (see
/// `unusable_data_directories_are_refused_with_the_path`).
#[test]
fn a_snapshot_of_another_format_is_refused_not_misread() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let store = Store::open(dir.path().join("new")).unwrap();
        let (_, mut sm) = store.group(1).unwrap();
        sm.apply(history_before_snapshot()).await.unwrap();
        let snap = sm.build_snapshot().await.unwrap();
        let other = Store::open(dir.path().join("other")).unwrap();
        for (group, version) in [(1, 1u16), (2, 2), (3, 9)] {
            let (_, mut copy) = other.group(group).unwrap();
            let data = relabelled(snap.snapshot.get_ref(), version);
            let err = copy
                .install_snapshot(&snap.meta, Box::new(std::io::Cursor::new(data)))
                .await
                .unwrap_err()
                .to_string();
            assert!(err.contains(&format!("format version {version}")), "{err}");
        }
        // The snapshot as built installs.
        let (_, mut copy) = other.group(4).unwrap();
        copy.install_snapshot(
            &snap.meta,
            Box::new(std::io::Cursor::new(snap.snapshot.get_ref().clone())),
        )
        .await
        .unwrap();
    });
}

/// An apply waiting for the state lock (held here by a slow reader on another thread)
/// leaves the async worker free: on a runtime of one thread, a ticker keeps ticking
/// meanwhile. Before applies ran on the blocking pool, the one thread was stuck in
/// the lock for the reader's whole 500 ms and the ticker did not tick at all.
#[test]
fn an_apply_waiting_for_the_state_lock_does_not_stall_the_async_worker() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let (_, mut sm) = store.group(1).unwrap();
    let reader = sm.reader();
    let (locked_tx, locked_rx) = std::sync::mpsc::channel();
    let slow_reader = std::thread::spawn(move || {
        reader.read(|_| {
            locked_tx.send(()).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(500));
        })
    });
    locked_rx.recv().unwrap();
    let ticks = rt().block_on(async {
        let ticks = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
        let ticker = tokio::spawn({
            let ticks = ticks.clone();
            async move {
                for _ in 0..1_000 {
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    ticks.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        });
        let applied = sm
            .apply(vec![entry_at(
                1,
                T0,
                vec![create("ev", 1, 1, 10, Limits::default())],
            )])
            .await
            .unwrap();
        assert!(applied[0][0].is_ok(), "{applied:?}");
        ticker.abort();
        ticks.load(std::sync::atomic::Ordering::Relaxed)
    });
    slow_reader.join().unwrap();
    // About 50 ticks fit in the reader's 500 ms; even a very busy machine gets 5.
    assert!(ticks >= 5, "the worker was stalled: {ticks} ticks");
}
