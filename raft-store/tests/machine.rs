//! One test per command and per refusal of the seat state machine.

mod common;

use common::*;
use raft_store::limits::{
    EVENTS_PER_SHARD_MAX, SEATS_PER_EVENT_MAX, SEAT_ID_BYTES_MAX, SECTIONS_PER_EVENT_MAX,
    TEXT_BYTES_MAX,
};
use raft_store::{
    Batch, Command, CreateEvent, HoldState, Limit, Limits, Refusal, Reply, SaleState, SeatMachine,
    SeatMapPart, SeatStateName::*,
};

fn conflict(seats: &[&str]) -> Refusal {
    Refusal::Conflict {
        seats: seats.iter().map(|s| s.to_string()).collect(),
    }
}

fn invalid(outcome: raft_store::Outcome, needle: &str) {
    match outcome {
        Err(Refusal::Invalid(msg)) => assert!(msg.contains(needle), "{msg:?} lacks {needle:?}"),
        other => panic!("expected invalid ({needle}), got {other:?}"),
    }
}

#[test]
fn create_event_is_idempotent_and_validated() {
    let mut h = Harness::new();
    // The identical definition again succeeds and changes nothing.
    h.run_unchanged(create("e", 2, 2, 5, Limits::default()))
        .unwrap();
    // A different definition under the same id is refused.
    invalid(
        h.run(create("e", 1, 1, 1, Limits::default())),
        "already exists",
    );
    assert_eq!(h.m.seat_map(&ev("e")).unwrap().seats.len(), 20);
    let bad_limits = Limits {
        seats_per_hold_max: 0,
        ..Limits::default()
    };
    invalid(
        h.run(create("f", 1, 1, 1, bad_limits)),
        "seats_per_hold_max",
    );
    let bad_ttl = Limits {
        hold_ttl_ms_default: 10,
        ..Limits::default()
    };
    invalid(h.run(create("f", 1, 1, 1, bad_ttl)), "default");
    invalid(h.run(create("f", 1, 1, 0, Limits::default())), "positive");
    assert!(h.m.seat_map(&ev("f")).is_err());
}

#[test]
fn hold_takes_every_seat_and_bumps_versions() {
    let mut h = Harness::new();
    let Ok(Reply::Held(v)) = h.hold("u1", "r1", &["A-1", "A-2"]) else {
        panic!()
    };
    let id = v.hold_id.to_string();
    assert!(
        id.starts_with("e.h1-") && id.len() == "e.h1-".len() + 16,
        "{id}"
    );
    assert_eq!(v.expires_at_ms, T0 + Limits::default().hold_ttl_ms_default);
    assert_eq!(v.seats, vec![("A-1".into(), 1), ("A-2".into(), 1)]);
    assert_eq!(v.state, HoldState::Active);
    assert_eq!(h.seat("A-1"), (Held, 1));
    assert_eq!(h.seat("A-3"), (Available, 0));
    let map = h.m.seat_map(&ev("e")).unwrap();
    assert_eq!(map.applied_index, h.index);
    assert_eq!((map.sections[0].available, map.sections[0].held), (8, 2));
}

#[test]
fn conflicting_hold_names_every_unavailable_seat_and_changes_nothing() {
    let mut h = Harness::new();
    h.held("u1", "r1", &["A-1", "A-3"]);
    let before = h.m.seat_map(&ev("e")).unwrap().seats;
    assert_eq!(
        h.hold("u2", "r1", &["A-1", "A-2", "A-3"]),
        Err(conflict(&["A-1", "A-3"]))
    );
    assert_eq!(
        h.m.seat_map(&ev("e")).unwrap().seats,
        before,
        "a refused hold changed seats"
    );
}

#[test]
fn malformed_holds_are_invalid() {
    let mut h = Harness::new();
    invalid(h.hold("u1", "r1", &[]), "at least one");
    invalid(h.hold("u1", "r2", &["A-1", "A-1"]), "twice");
    invalid(
        h.hold("u1", "r3", &["A-1", "Z-9", "Q-1"]),
        "unknown seats: Z-9,Q-1",
    );
    let eleven: Vec<String> = (1..=5)
        .map(|n| format!("A-{n}"))
        .chain((1..=5).map(|n| format!("B-{n}")))
        .chain(["C-1".to_string()])
        .collect();
    let eleven: Vec<&str> = eleven.iter().map(String::as_str).collect();
    invalid(h.hold("u1", "r4", &eleven), "at most 10");
    for ttl in [999, 15 * 60 * 1000 + 1] {
        let mut req = hold_req("e", "u1", "r5", &["A-1"]);
        req.ttl_ms = Some(ttl);
        invalid(h.run(Command::Hold(req)), "TTL");
    }
    let mut req = hold_req("e", "u1", "r6", &["A-1", "A-2"]);
    req.expected_versions = Some(vec![0]);
    invalid(h.run(Command::Hold(req)), "expected versions");
    invalid(h.hold("", "r7", &["A-1"]), "user id");
    invalid(h.hold("u 1", "r7", &["A-1"]), "user id");
    invalid(h.hold("u1", "", &["A-1"]), "client reservation id");
    assert_eq!(
        h.run(Command::Hold(hold_req("nope", "u1", "r8", &["A-1"]))),
        Err(Refusal::NotFound("event nope".into()))
    );
    // None of that touched a seat, and none of it was remembered.
    assert!(h
        .m
        .seat_map(&ev("e"))
        .unwrap()
        .seats
        .iter()
        .all(|s| s.version == 0));
    h.held("u1", "r2", &["A-1"]);
}

#[test]
fn per_user_limit_counts_held_and_bought_seats() {
    let mut h = Harness::new();
    h.held("u1", "r1", &["A-1", "A-2", "A-3", "A-4", "A-5"]);
    let sold = h.held("u1", "r2", &["B-1", "B-2"]);
    h.ok(Command::BeginCheckout {
        hold: sold.clone(),
        idempotency_key: "k".into(),
        by: None,
    });
    h.ok(Command::CompleteCheckout {
        hold: sold,
        idempotency_key: "k".into(),
        payment_ref: "p".into(),
    });
    invalid(h.hold("u1", "r3", &["C-1", "C-2"]), "limit is 8");
    h.held("u1", "r4", &["C-1"]);
    // Another user is not affected.
    h.held("u2", "r3", &["C-2", "C-3"]);
}

#[test]
fn compare_and_set_on_versions() {
    let mut h = Harness::new();
    let id = h.held("u1", "r1", &["A-1"]);
    h.ok(Command::Release {
        hold: id,
        user: "u1".into(),
        by: None,
    });
    assert_eq!(h.seat("A-1"), (Available, 2));
    let mut stale = hold_req("e", "u2", "r1", &["A-1", "A-2"]);
    stale.expected_versions = Some(vec![0, 0]);
    assert_eq!(h.run(Command::Hold(stale)), Err(conflict(&["A-1"])));
    let mut fresh = hold_req("e", "u2", "r2", &["A-1", "A-2"]);
    fresh.expected_versions = Some(vec![2, 0]);
    let Ok(Reply::Held(v)) = h.run(Command::Hold(fresh)) else {
        panic!()
    };
    assert_eq!(v.seats, vec![("A-1".into(), 3), ("A-2".into(), 1)]);
}

#[test]
fn expired_holds_free_their_seats_at_the_entry_timestamp() {
    let mut h = Harness::new();
    let id = h.held("u1", "r1", &["A-1"]);
    let expires = T0 + Limits::default().hold_ttl_ms_default;
    h.at(expires - 1);
    assert_eq!(h.hold("u2", "r1", &["A-1"]), Err(conflict(&["A-1"])));
    // At exactly expires_at the seat counts as available, with no Expire entry needed.
    h.at(expires);
    h.held("u2", "r2", &["A-1"]);
    assert_eq!(h.m.hold(&id).unwrap().state, HoldState::Expired);
    assert_eq!(h.seat("A-1"), (Held, 3));
}

#[test]
fn expire_command_sweeps_every_event() {
    let mut h = Harness::new();
    h.ok(create("f", 1, 1, 5, Limits::default()));
    h.held("u1", "r1", &["A-1"]);
    h.ok(Command::Hold(hold_req("f", "u1", "r1", &["A-2"])));
    let ttl = Limits::default().hold_ttl_ms_default;
    assert_eq!(
        h.at(T0 + ttl).ok(Command::Expire),
        Reply::Expired {
            holds_expired: 2,
            checkouts_aborted: 0
        }
    );
    assert_eq!(h.seat("A-1"), (Available, 2));
    assert_eq!(
        h.at(T0 + 2 * ttl).ok(Command::Expire),
        Reply::Expired {
            holds_expired: 0,
            checkouts_aborted: 0
        }
    );
}

#[test]
fn time_never_moves_backwards() {
    let mut h = Harness::new();
    h.at(T0 + 10_000);
    h.held("u1", "r1", &["A-1"]);
    // A later entry stamped earlier (a new leader with a slow clock) is treated as now.
    h.at(T0);
    let Ok(Reply::Held(v)) = h.hold("u2", "r1", &["A-2"]) else {
        panic!()
    };
    assert_eq!(v.created_at_ms, T0 + 10_000);
    assert_eq!(h.m.clock_ms(), T0 + 10_000);
}

#[test]
fn a_retried_hold_gets_the_first_decision_whatever_happened_since() {
    let mut h = Harness::new();
    let first = h.hold("u1", "r1", &["A-1"]);
    let Ok(Reply::Held(v)) = &first else { panic!() };
    h.ok(Command::Release {
        hold: v.hold_id.clone(),
        user: "u1".into(),
        by: None,
    });
    assert_eq!(
        h.run_unchanged(Command::Hold(hold_req("e", "u1", "r1", &["A-1"]))),
        first
    );
    let other_args = Command::Hold(hold_req("e", "u1", "r1", &["B-5", "C-1"]));
    assert_eq!(
        h.run_unchanged(other_args),
        first,
        "arguments of a retry do not matter"
    );
    // A refusal is remembered too: the seat frees up, the retry still hears "conflict".
    let taken = h.held("u2", "r1", &["A-2"]);
    assert_eq!(h.hold("u3", "r1", &["A-2"]), Err(conflict(&["A-2"])));
    h.ok(Command::Release {
        hold: taken,
        user: "u2".into(),
        by: None,
    });
    assert_eq!(h.hold("u3", "r1", &["A-2"]), Err(conflict(&["A-2"])));
    // ...but a new reservation id is a new request.
    h.held("u3", "r2", &["A-2"]);
}

fn begin(h: &mut Harness, id: &raft_store::HoldId, key: &str) -> raft_store::Outcome {
    h.run(Command::BeginCheckout {
        hold: id.clone(),
        idempotency_key: key.into(),
        by: None,
    })
}

fn complete(h: &mut Harness, id: &raft_store::HoldId, key: &str) -> raft_store::Outcome {
    h.run(Command::CompleteCheckout {
        hold: id.clone(),
        idempotency_key: key.into(),
        payment_ref: "ch_1".into(),
    })
}

fn abort(h: &mut Harness, id: &raft_store::HoldId, key: &str) -> raft_store::Outcome {
    h.run(Command::AbortCheckout {
        hold: id.clone(),
        idempotency_key: key.into(),
        reason: "card declined".into(),
    })
}

#[test]
fn checkout_sells_the_seats_once() {
    let mut h = Harness::new();
    let id = h.held("u1", "r1", &["A-1", "A-2"]);
    let Ok(Reply::CheckoutStarted {
        payment_deadline_ms,
        ..
    }) = begin(&mut h, &id, "k1")
    else {
        panic!()
    };
    assert_eq!(payment_deadline_ms, T0 + Limits::default().checkout_ttl_ms);
    assert_eq!(
        begin(&mut h, &id, "k1"),
        Ok(Reply::CheckoutStarted {
            hold_id: id.clone(),
            payment_deadline_ms
        })
    );
    let Ok(Reply::Completed(order)) = complete(&mut h, &id, "k1") else {
        panic!()
    };
    assert!(order.order_id.to_string().starts_with("e.o1-"));
    assert_eq!(order.seats, vec!["A-1".into(), "A-2".into()]);
    assert_eq!(order.payment_ref, "ch_1");
    assert_eq!(h.seat("A-1"), (Sold, 2));
    assert_eq!(h.m.order(&order.order_id).unwrap(), order);
    assert_eq!(
        h.m.hold(&id).unwrap().state,
        HoldState::Committed { order: 1 }
    );
    // Retries of either step with the same key return the same order and change nothing.
    let again = Command::BeginCheckout {
        hold: id.clone(),
        idempotency_key: "k1".into(),
        by: None,
    };
    assert_eq!(h.run_unchanged(again), Ok(Reply::Completed(order.clone())));
    let again = Command::CompleteCheckout {
        hold: id.clone(),
        idempotency_key: "k1".into(),
        payment_ref: "ch_2".into(),
    };
    assert_eq!(h.run_unchanged(again), Ok(Reply::Completed(order.clone())));
    // A new key cannot sell it again; sold seats stay sold long after the TTL.
    assert!(
        matches!(begin(&mut h, &id, "k2"), Err(Refusal::WrongState(m)) if m.contains("already committed"))
    );
    h.at(T0 + 10 * Limits::default().hold_ttl_ms_max);
    h.ok(Command::Expire);
    assert_eq!(h.seat("A-1"), (Sold, 2));
    assert_eq!(h.hold("u2", "r1", &["A-1"]), Err(conflict(&["A-1"])));
}

#[test]
fn an_expired_hold_answers_expired_for_good() {
    let mut h = Harness::new();
    let id = h.held("u1", "r1", &["A-1"]);
    h.at(T0 + Limits::default().hold_ttl_ms_default);
    assert_eq!(begin(&mut h, &id, "k1"), Err(Refusal::Expired));
    h.held("u2", "r1", &["A-1"]);
    assert_eq!(begin(&mut h, &id, "k1"), Err(Refusal::Expired));
    assert_eq!(begin(&mut h, &id, "k2"), Err(Refusal::Expired));
    assert_eq!(
        h.run(Command::Release {
            hold: id,
            user: "u1".into(),
            by: None,
        }),
        Err(Refusal::Expired)
    );
}

#[test]
fn a_paying_buyer_keeps_the_seats_until_the_payment_deadline() {
    let limits = Limits::default();
    let mut h = Harness::new();
    let id = h.held("u1", "r1", &["A-1"]);
    // Start paying 1 s before the hold would expire.
    h.at(T0 + limits.hold_ttl_ms_default - 1_000);
    let Ok(Reply::CheckoutStarted {
        payment_deadline_ms,
        ..
    }) = begin(&mut h, &id, "k1")
    else {
        panic!()
    };
    h.at(T0 + limits.hold_ttl_ms_default + 5_000);
    h.ok(Command::Expire);
    assert_eq!(
        h.seat("A-1").0,
        Held,
        "a checkout in progress must not expire"
    );
    assert!(h.hold("u2", "r1", &["A-1"]).is_err());
    // Past the payment deadline the checkout is aborted; the hold's own TTL is gone too.
    h.at(payment_deadline_ms);
    assert_eq!(
        h.ok(Command::Expire),
        Reply::Expired {
            holds_expired: 1,
            checkouts_aborted: 1
        }
    );
    assert_eq!(h.seat("A-1").0, Available);
    // The late payment's completion is refused, so the coordinator refunds it.
    assert_eq!(complete(&mut h, &id, "k1"), Err(Refusal::Expired));
}

#[test]
fn a_timed_out_checkout_of_a_live_hold_returns_it_to_active() {
    let limits = Limits {
        checkout_ttl_ms: 10_000,
        ..Limits::default()
    };
    let mut h = Harness::new();
    h.ok(create("g", 1, 1, 5, limits));
    let Reply::Held(v) = h.ok(Command::Hold(hold_req("g", "u1", "r1", &["A-1"]))) else {
        panic!()
    };
    let id = v.hold_id;
    begin(&mut h, &id, "k1").unwrap();
    h.at(T0 + 10_000);
    assert_eq!(
        h.ok(Command::Expire),
        Reply::Expired {
            holds_expired: 0,
            checkouts_aborted: 1
        }
    );
    assert_eq!(h.m.hold(&id).unwrap().state, HoldState::Active);
    assert!(
        matches!(complete(&mut h, &id, "k1"), Err(Refusal::WrongState(m)) if m.contains("timed out"))
    );
    // A fresh attempt with a new key works.
    begin(&mut h, &id, "k2").unwrap();
    assert!(matches!(
        complete(&mut h, &id, "k2"),
        Ok(Reply::Completed(_))
    ));
}

#[test]
fn a_declined_payment_returns_the_hold_and_is_remembered() {
    let mut h = Harness::new();
    let id = h.held("u1", "r1", &["A-1"]);
    begin(&mut h, &id, "k1").unwrap();
    assert_eq!(
        abort(&mut h, &id, "k1"),
        Ok(Reply::CheckoutAborted {
            hold_id: id.clone(),
            state: HoldState::Active
        })
    );
    assert_eq!(
        abort(&mut h, &id, "k1"),
        Ok(Reply::CheckoutAborted {
            hold_id: id.clone(),
            state: HoldState::Active
        })
    );
    let declined = Err(Refusal::Declined("card declined".into()));
    assert_eq!(begin(&mut h, &id, "k1"), declined);
    assert_eq!(complete(&mut h, &id, "k1"), declined);
    assert_eq!(h.seat("A-1").0, Held);
    begin(&mut h, &id, "k2").unwrap();
    complete(&mut h, &id, "k2").unwrap();
    assert!(
        matches!(abort(&mut h, &id, "k2"), Err(Refusal::WrongState(m)) if m.contains("completed"))
    );
}

#[test]
fn an_abort_after_the_ttl_expires_the_hold() {
    let mut h = Harness::new();
    let id = h.held("u1", "r1", &["A-1"]);
    h.at(T0 + Limits::default().hold_ttl_ms_default - 10);
    begin(&mut h, &id, "k1").unwrap();
    h.at(T0 + Limits::default().hold_ttl_ms_default + 10);
    assert_eq!(
        abort(&mut h, &id, "k1"),
        Ok(Reply::CheckoutAborted {
            hold_id: id,
            state: HoldState::Expired
        })
    );
    assert_eq!(h.seat("A-1").0, Available);
}

#[test]
fn checkout_refusals() {
    let mut h = Harness::new();
    let a = h.held("u1", "r1", &["A-1"]);
    let b = h.held("u1", "r2", &["A-2"]);
    begin(&mut h, &a, "k1").unwrap();
    assert_eq!(begin(&mut h, &b, "k1"), Err(Refusal::KeyReused));
    assert!(
        matches!(begin(&mut h, &a, "k2"), Err(Refusal::WrongState(m)) if m.contains("already in progress"))
    );
    assert!(
        matches!(complete(&mut h, &b, "k3"), Err(Refusal::WrongState(m)) if m.contains("no checkout"))
    );
    assert!(
        matches!(abort(&mut h, &b, "k3"), Err(Refusal::WrongState(m)) if m.contains("no checkout"))
    );
    let ghost = raft_store::HoldId {
        event: ev("e"),
        seq: 99,
        tag: 0,
    };
    assert!(matches!(
        begin(&mut h, &ghost, "k4"),
        Err(Refusal::NotFound(_))
    ));
    assert!(matches!(
        complete(&mut h, &ghost, "k4"),
        Err(Refusal::NotFound(_))
    ));
    invalid(begin(&mut h, &b, ""), "idempotency key");
    invalid(
        h.run(Command::CompleteCheckout {
            hold: a.clone(),
            idempotency_key: "k1".into(),
            payment_ref: "".into(),
        }),
        "payment reference",
    );
    invalid(
        h.run(Command::AbortCheckout {
            hold: a.clone(),
            idempotency_key: "k1".into(),
            reason: "x".repeat(300),
        }),
        "reason",
    );
    // A released hold cannot be checked out.
    h.ok(Command::Release {
        hold: b.clone(),
        user: "u1".into(),
        by: None,
    });
    assert!(
        matches!(begin(&mut h, &b, "k5"), Err(Refusal::WrongState(m)) if m.contains("released"))
    );
}

#[test]
fn an_idempotency_key_names_one_hold_across_the_shards_events() {
    // The reviewer's scenario: a key that paid for a hold in one event is used again
    // for a hold in another event of the shard (there, with a card that would be
    // declined). It is refused before anything happens, and the first order stays.
    let mut h = Harness::new();
    h.ok(create("f", 1, 1, 5, Limits::default()));
    let alice = h.held("alice", "r1", &["A-1"]);
    begin(&mut h, &alice, "k").unwrap();
    let Ok(Reply::Completed(order)) = complete(&mut h, &alice, "k") else {
        panic!()
    };
    let Reply::Held(v) = h.ok(Command::Hold(hold_req("f", "bob", "r1", &["A-1"]))) else {
        panic!()
    };
    let bob = v.hold_id;
    let reused = Command::BeginCheckout {
        hold: bob.clone(),
        idempotency_key: "k".into(),
        by: None,
    };
    assert_eq!(h.run_unchanged(reused.clone()), Err(Refusal::KeyReused));
    // Refused for good, and never with the other hold's answer.
    assert_eq!(h.run_unchanged(reused), Err(Refusal::KeyReused));
    assert!(matches!(
        complete(&mut h, &bob, "k"),
        Err(Refusal::WrongState(m)) if m.contains("no checkout")
    ));
    assert_eq!(h.m.order(&order.order_id).unwrap(), order);
    assert_eq!(h.m.hold(&bob).unwrap().state, HoldState::Active);
    // The key still answers for its own hold; bob pays under a key of his own.
    assert_eq!(begin(&mut h, &alice, "k"), Ok(Reply::Completed(order)));
    assert!(matches!(
        begin(&mut h, &bob, "k2"),
        Ok(Reply::CheckoutStarted { .. })
    ));
    // A refused first checkout binds its key too: it answers that hold's retries.
    let late = h.held("carol", "r1", &["B-1"]);
    h.at(T0 + Limits::default().hold_ttl_ms_default);
    assert_eq!(begin(&mut h, &late, "k3"), Err(Refusal::Expired));
    let dave = h.held("dave", "r1", &["B-2"]);
    assert_eq!(begin(&mut h, &dave, "k3"), Err(Refusal::KeyReused));
    // Malformed keys and unknown holds bind nothing.
    let ghost = raft_store::HoldId {
        event: ev("f"),
        seq: 99,
        tag: 0,
    };
    assert!(matches!(
        begin(&mut h, &ghost, "k4"),
        Err(Refusal::NotFound(_))
    ));
    assert!(matches!(
        begin(&mut h, &dave, "k4"),
        Ok(Reply::CheckoutStarted { .. })
    ));
}

#[test]
fn a_key_binding_on_disk_only_still_refuses_another_hold() {
    // The store keeps key bindings on disk only, and reads back the ones an entry may
    // need before applying it (`cold_keys`, `warm`), as for every cold record.
    let mut h = Harness::new();
    h.ok(create("f", 1, 1, 5, Limits::default()));
    let alice = h.held("alice", "r1", &["A-1"]);
    begin(&mut h, &alice, "k").unwrap();
    let Reply::Held(v) = h.ok(Command::Hold(hold_req("f", "bob", "r1", &["A-1"]))) else {
        panic!()
    };
    let records: std::collections::BTreeMap<Vec<u8>, Vec<u8>> =
        h.m.all_records().into_iter().collect();
    let mut lean = SeatMachine::load_records(&records).unwrap();
    let batch = Batch {
        ts_ms: h.now,
        commands: vec![Command::BeginCheckout {
            hold: v.hold_id,
            idempotency_key: "k".into(),
            by: None,
        }],
    };
    // Without reading it back the binding is unknown, and the checkout would start.
    let mut unwarmed = lean.clone();
    assert!(matches!(
        unwarmed.apply(h.index + 1, &batch)[0],
        Ok(Reply::CheckoutStarted { .. })
    ));
    let wanted = lean.cold_keys(&batch);
    let found: Vec<_> = wanted
        .iter()
        .filter_map(|k| records.get(k).map(|v| (k.clone(), v.clone())))
        .collect();
    assert!(!found.is_empty(), "the binding is among the keys to read");
    lean.warm(found).unwrap();
    assert_eq!(lean.apply(h.index + 1, &batch)[0], Err(Refusal::KeyReused));
    lean.check_invariants().unwrap();
    // Bindings leave memory with the other cold records.
    let with_binding = lean.records_in_memory();
    lean.take_changes();
    lean.evict_cold();
    assert_eq!(lean.records_in_memory(), with_binding - 1);
}

#[test]
fn release_rules() {
    let mut h = Harness::new();
    let id = h.held("u1", "r1", &["A-1", "A-2"]);
    invalid(
        h.run(Command::Release {
            hold: id.clone(),
            user: "u2".into(),
            by: None,
        }),
        "does not belong",
    );
    assert_eq!(
        h.ok(Command::Release {
            hold: id.clone(),
            user: "u1".into(),
            by: None,
        }),
        Reply::Released {
            hold_id: id.clone()
        }
    );
    assert_eq!(h.seat("A-2"), (Available, 2));
    // Releasing twice is answered the same and changes nothing.
    let again = Command::Release {
        hold: id.clone(),
        user: "u1".into(),
        by: None,
    };
    assert_eq!(h.run_unchanged(again), Ok(Reply::Released { hold_id: id }));
    let paying = h.held("u1", "r2", &["A-3"]);
    begin(&mut h, &paying, "k").unwrap();
    assert!(matches!(
        h.run(Command::Release {
            hold: paying.clone(),
            user: "u1".into(),
            by: None,
        }),
        Err(Refusal::WrongState(_))
    ));
    complete(&mut h, &paying, "k").unwrap();
    assert!(
        matches!(h.run(Command::Release { hold: paying, user: "u1".into(), by: None, }), Err(Refusal::WrongState(m)) if m.contains("committed"))
    );
    let ghost = raft_store::HoldId {
        event: ev("e"),
        seq: 42,
        tag: 0,
    };
    assert!(matches!(
        h.run(Command::Release {
            hold: ghost,
            user: "u1".into(),
            by: None,
        }),
        Err(Refusal::NotFound(_))
    ));
}

#[test]
fn stopping_and_cancelling_a_sale() {
    let mut h = Harness::new();
    let live = h.held("u1", "r1", &["A-1"]);
    let paying = h.held("u2", "r1", &["A-2"]);
    let sold = h.held("u3", "r1", &["A-3"]);
    begin(&mut h, &sold, "ks").unwrap();
    complete(&mut h, &sold, "ks").unwrap();
    begin(&mut h, &paying, "kp").unwrap();
    h.ok(Command::SetSale {
        event_id: ev("e"),
        sale: SaleState::Stopped,
        by: None,
    });
    assert!(
        matches!(h.hold("u4", "r1", &["B-1"]), Err(Refusal::WrongState(m)) if m.contains("stopped"))
    );
    // Existing holds can still be released while the sale is stopped.
    h.ok(Command::SetSale {
        event_id: ev("e"),
        sale: SaleState::OnSale,
        by: None,
    });
    h.held("u4", "r2", &["B-1"]);
    h.ok(Command::SetSale {
        event_id: ev("e"),
        sale: SaleState::Cancelled,
        by: None,
    });
    assert_eq!(h.m.hold(&live).unwrap().state, HoldState::Released);
    assert_eq!(h.m.hold(&paying).unwrap().state, HoldState::Released);
    assert!(
        matches!(complete(&mut h, &paying, "kp"), Err(Refusal::WrongState(m)) if m.contains("cancelled"))
    );
    assert_eq!(h.seat("A-3").0, Sold, "orders survive a cancellation");
    assert_eq!(h.seat("A-1").0, Available);
    assert!(
        matches!(h.hold("u5", "r1", &["B-2"]), Err(Refusal::WrongState(m)) if m.contains("cancelled"))
    );
    assert!(matches!(
        h.run(Command::SetSale {
            event_id: ev("e"),
            sale: SaleState::OnSale,
            by: None,
        }),
        Err(Refusal::WrongState(_))
    ));
    h.ok(Command::SetSale {
        event_id: ev("e"),
        sale: SaleState::Cancelled,
        by: None,
    });
    assert!(matches!(
        h.run(Command::SetSale {
            event_id: ev("x"),
            sale: SaleState::Stopped,
            by: None,
        }),
        Err(Refusal::NotFound(_))
    ));
}

#[test]
fn reads_of_unknown_ids_are_not_found() {
    let h = Harness::new();
    assert!(matches!(h.m.seat_map(&ev("x")), Err(Refusal::NotFound(_))));
    assert!(matches!(
        h.m.hold(&raft_store::HoldId::parse("e.h1-0000000000000000").unwrap()),
        Err(Refusal::NotFound(_))
    ));
    assert!(matches!(
        h.m.hold(&raft_store::HoldId::parse("x.h1-0000000000000000").unwrap()),
        Err(Refusal::NotFound(_))
    ));
    assert!(matches!(
        h.m.order(&raft_store::OrderId::parse("e.o1-0000000000000000").unwrap()),
        Err(Refusal::NotFound(_))
    ));
}

#[test]
fn event_list_filters_by_time_and_text() {
    let mut h = Harness::new();
    for (id, name, day) in [
        ("jazz", "Late Jazz", 3),
        ("rock", "Rock Night", 1),
        ("folk", "Folk & Jazz", 2),
    ] {
        let Command::CreateEvent(mut def) = create(id, 1, 1, 5, Limits::default()) else {
            unreachable!()
        };
        def.name = name.into();
        def.starts_at_ms = T0 + day * 86_400_000;
        h.ok(Command::CreateEvent(def));
    }
    let ids = |v: Vec<raft_store::EventSummary>| {
        v.into_iter()
            .map(|e| e.event_id.to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        ids(h.m.events(None, None, None, 100)),
        ["e", "rock", "folk", "jazz"]
    );
    assert_eq!(
        ids(h.m.events(None, None, Some("JAZZ"), 100)),
        ["folk", "jazz"]
    );
    assert_eq!(
        ids(h.m.events(Some(T0 + 2 * 86_400_000), None, None, 100)),
        ["folk", "jazz"]
    );
    assert_eq!(
        ids(h.m.events(None, Some(T0 + 86_400_000), None, 100)),
        ["e", "rock"]
    );
    assert_eq!(ids(h.m.events(None, None, Some("hall"), 2)), ["e", "rock"]);
    let rock = &h.m.events(None, None, Some("rock"), 1)[0];
    assert_eq!(
        (rock.capacity, rock.available, rock.sale),
        (5, 5, SaleState::OnSale)
    );
}

#[test]
fn a_batch_applies_in_order_at_one_timestamp() {
    let mut m = SeatMachine::new();
    let out = m.apply(
        1,
        &Batch {
            ts_ms: T0,
            commands: vec![
                create("e", 1, 1, 5, Limits::default()),
                Command::Hold(hold_req("e", "u1", "r1", &["A-1"])),
                Command::Hold(hold_req("e", "u2", "r1", &["A-1", "A-2"])),
            ],
        },
    );
    assert!(out[0].is_ok() && out[1].is_ok());
    assert_eq!(out[2], Err(conflict(&["A-1"])));
    assert_eq!(m.applied_index(), Some(1));
    m.apply_empty(2);
    assert_eq!(m.applied_index(), Some(2));
}

#[test]
#[should_panic(expected = "applied after")]
fn applying_an_old_index_is_a_bug() {
    let mut m = SeatMachine::new();
    m.apply(
        5,
        &Batch {
            ts_ms: T0,
            commands: vec![],
        },
    );
    m.apply(
        5,
        &Batch {
            ts_ms: T0,
            commands: vec![],
        },
    );
}

fn limit(l: Limit, actual: usize) -> raft_store::Outcome {
    Err(Refusal::Limit(l.exceeded(actual)))
}

#[test]
fn an_event_over_the_caps_is_refused_and_the_largest_allowed_is_created() {
    let mut h = Harness::new();
    // One seat too many: refused from the layout's counts, before a plan is built.
    // (The old limit was 2,000,000 seats, and nothing bounded a shard's events.)
    let over = SEATS_PER_EVENT_MAX as u32 + 1;
    assert_eq!(
        h.run_unchanged(create("big", 1, 1, over, Limits::default())),
        limit(Limit::SeatsPerEvent, over as usize)
    );
    assert_eq!(
        h.run_unchanged(create("big", 1, 2, u32::MAX, Limits::default())),
        limit(Limit::SeatsPerEvent, 2 * u32::MAX as usize)
    );
    assert_eq!(
        h.run_unchanged(create(
            "many",
            SECTIONS_PER_EVENT_MAX as u32 + 1,
            1,
            1,
            Limits::default()
        )),
        limit(Limit::SectionsPerEvent, SECTIONS_PER_EVENT_MAX + 1)
    );
    let Command::CreateEvent(mut def) = create("named", 1, 1, 1, Limits::default()) else {
        unreachable!()
    };
    def.name = "n".repeat(TEXT_BYTES_MAX + 1);
    assert_eq!(
        h.run_unchanged(Command::CreateEvent(def.clone())),
        limit(Limit::TextBytes, TEXT_BYTES_MAX + 1)
    );
    def.name = "Named".into();
    def.layout.sections[0].rows[0].seats = None;
    def.layout.sections[0].rows[0].seat_ids = Some(vec!["s".repeat(SEAT_ID_BYTES_MAX + 1)]);
    assert_eq!(
        h.run_unchanged(Command::CreateEvent(def)),
        limit(Limit::SeatIdBytes, SEAT_ID_BYTES_MAX + 1)
    );
    assert!(h.m.seat_map(&ev("big")).is_err());
    // Exactly at the limit: 40 sections of rows of 50 seats.
    let rows = (SEATS_PER_EVENT_MAX / 40 / 50) as u32;
    h.ok(create("largest", 40, rows, 50, Limits::default()));
    let map = h.m.seat_map(&ev("largest")).unwrap();
    assert_eq!(map.seats.len(), SEATS_PER_EVENT_MAX);
}

#[test]
fn a_full_shard_refuses_new_events_in_apply_and_every_replica_agrees() {
    let tiny = |n: usize| {
        Command::CreateEvent(CreateEvent {
            event_id: ev(&format!("e{n}")),
            name: format!("Show {n}"),
            starts_at_ms: T0,
            layout: raft_store::layout::generate("Hall", 1, 1, 1),
            limits: Limits::default(),
            by: None,
            id_key: raft_store::IdKey([7; 16]),
        })
    };
    let mut m = SeatMachine::new();
    let all: Vec<usize> = (0..EVENTS_PER_SHARD_MAX).collect();
    for (i, chunk) in all.chunks(1_000).enumerate() {
        let out = m.apply(
            i as u64 + 1,
            &Batch {
                ts_ms: T0,
                commands: chunk.iter().map(|&n| tiny(n)).collect(),
            },
        );
        assert!(out.iter().all(Result::is_ok));
    }
    assert_eq!(m.event_count(), EVENTS_PER_SHARD_MAX);
    // The next event is refused; creating an existing one again still answers as
    // before (a client retrying its own creation is not told the shard is full).
    let entry = Batch {
        ts_ms: T0,
        commands: vec![tiny(EVENTS_PER_SHARD_MAX), tiny(0)],
    };
    let mut replica = m.clone();
    let out = m.apply(1_000, &entry);
    assert_eq!(
        out[0],
        limit(Limit::EventsPerShard, EVENTS_PER_SHARD_MAX + 1)
    );
    assert!(matches!(out[1], Ok(Reply::EventCreated { .. })));
    assert_eq!(m.event_count(), EVENTS_PER_SHARD_MAX);
    assert_eq!(
        m.check_room(&ev("e0"), 1),
        Ok(()),
        "an existing event needs no room"
    );
    assert!(m.check_room(&ev("new"), 1).is_err());
    // Another replica applying the same entry decides the same, to the byte.
    assert_eq!(replica.apply(1_000, &entry), out);
    assert_eq!(replica.digest(), m.digest());
    m.check_invariants().unwrap();
}

#[test]
fn seat_map_parts_cover_every_seat_once_in_layout_order() {
    let mut h = Harness::new();
    h.held("u1", "r1", &["B-2", "C-5"]);
    let whole = h.m.seat_map(&ev("e")).unwrap();
    assert_eq!(
        (whole.seats.len(), whole.rows.len(), whole.next_seat),
        (20, 4, None)
    );
    // What a seat looks like to a reader: its id, its row, its state and version.
    let flat = |m: &raft_store::SeatMap| -> Vec<(String, String, u32, String)> {
        m.seats
            .iter()
            .map(|s| {
                let row = &m.rows[s.row as usize];
                (
                    s.id.to_string(),
                    row.id.clone(),
                    row.section,
                    format!("{:?}@{}", s.state, s.version),
                )
            })
            .collect()
    };
    let read_all = |section: Option<&str>, page: u32| {
        let mut seats = Vec::new();
        let mut from_seat = 0;
        loop {
            let part = SeatMapPart {
                section: section.map(Into::into),
                from_seat,
                seats_max: Some(page),
            };
            let map = h.m.seat_map_part(&ev("e"), &part).unwrap();
            assert!(map.seats.len() <= page as usize);
            assert_eq!(map.sections, whole.sections, "every part has every section");
            seats.extend(flat(&map));
            match map.next_seat {
                Some(next) => from_seat = next,
                None => return seats,
            }
        }
    };
    for page in [1, 3, 7, 20, 1000] {
        assert_eq!(read_all(None, page), flat(&whole), "pages of {page}");
    }
    // A section's seats are the run of the whole map that is in that section.
    let s2: Vec<_> = flat(&whole).into_iter().filter(|s| s.2 == 1).collect();
    assert_eq!(s2.len(), 10);
    assert_eq!(read_all(Some("S2"), 4), s2);
    let part = |section: Option<&str>, from_seat| SeatMapPart {
        section: section.map(Into::into),
        from_seat,
        seats_max: None,
    };
    assert_eq!(
        flat(&h.m.seat_map_part(&ev("e"), &part(Some("S2"), 0)).unwrap()),
        s2
    );
    assert!(matches!(
        h.m.seat_map_part(&ev("e"), &part(Some("S9"), 0)),
        Err(Refusal::NotFound(_))
    ));
    // A cursor outside the section (or the event) is refused, not clamped.
    for (section, from) in [(Some("S2"), 3), (None, 20), (None, u32::MAX)] {
        assert!(matches!(
            h.m.seat_map_part(&ev("e"), &part(section, from)),
            Err(Refusal::Invalid(_))
        ));
    }
}

// ---------------------------------------------------------------------------------
// Retention: decisions that only answer retries are forgotten after
// DECISION_RETENTION_MS of log time, a bounded number per entry.

use raft_store::limits::{DECISION_RETENTION_MS, HOLD_TTL_MS_CAP};

/// Applies one entry of `commands` stamped `ts_ms`, checks every invariant, and
/// returns the answers.
fn entry(h: &mut Harness, ts_ms: u64, commands: Vec<Command>) -> Vec<raft_store::Outcome> {
    h.index += 1;
    h.now = ts_ms;
    let out = h.m.apply(h.index, &Batch { ts_ms, commands });
    h.m.check_invariants().unwrap();
    out
}

#[test]
fn ten_thousand_refused_holds_are_forgotten_after_the_retention_a_bounded_number_per_entry() {
    let mut h = Harness::new();
    h.held("owner", "r", &["A-1"]);
    let memory_before = h.m.records_in_memory();
    let image_bytes_before = h.m.encode().len();
    // 10,000 requests for a taken seat, each with a fresh id: each refusal is recorded.
    for chunk in 0..10 {
        let refused: Vec<Command> = (0..1000)
            .map(|i| {
                let user = format!("u{}", chunk * 1000 + i);
                Command::Hold(hold_req("e", &user, "r", &["A-1"]))
            })
            .collect();
        let out = entry(&mut h, T0, refused);
        assert!(out.iter().all(|o| *o == Err(conflict(&["A-1"]))));
    }
    assert_eq!(h.m.records_awaiting_purge(), 10_000);
    assert_eq!(h.m.records_in_memory(), memory_before + 10_000);
    let ttl_ms = Limits::default().hold_ttl_ms_default;
    assert_eq!(
        h.m.next_deadline_ms(),
        Some(T0 + ttl_ms),
        "the owner's hold first"
    );

    // At exactly the retention nothing is forgotten: a retry still hears "conflict"
    // though the seat is free by now (the owner's hold expired long ago).
    let retry = Command::Hold(hold_req("e", "u0", "r", &["A-1"]));
    h.at(T0 + DECISION_RETENTION_MS);
    h.ok(Command::Expire);
    assert_eq!(h.run_unchanged(retry.clone()), Err(conflict(&["A-1"])));
    // The owner's hold expired at that time: its grant now waits too.
    assert_eq!(h.m.records_awaiting_purge(), 10_001);
    // The leader proposes `Expire` when this passes, so an idle shard forgets too.
    assert_eq!(h.m.next_deadline_ms(), Some(T0 + DECISION_RETENTION_MS + 1));

    // One millisecond later the refusals go, oldest first, at most the budget per
    // entry: an entry without commands forgets `purge_budget_records(0)`.
    let budget = SeatMachine::purge_budget_records(0);
    assert!((1..10_000).contains(&budget));
    let mut entries = 0;
    while h.m.records_awaiting_purge() > 1 {
        let before = h.m.records_awaiting_purge();
        entry(&mut h, T0 + DECISION_RETENTION_MS + 1, vec![]);
        let purged = before - h.m.records_awaiting_purge();
        assert!(purged >= 1 && purged as usize <= budget, "purged {purged}");
        entries += 1;
    }
    assert_eq!(entries, 10_000usize.div_ceil(budget));
    assert_eq!(
        h.m.next_deadline_ms(),
        Some(T0 + 2 * DECISION_RETENTION_MS + 1),
        "the owner's grant, forgotten a retention after its hold expired"
    );
    // Only the owner's expired hold and its grant are left: memory is back to what it
    // was before the refusals, and so is the state image.
    assert_eq!(h.m.records_in_memory(), memory_before);
    assert!(h.m.encode().len() <= image_bytes_before + 1_000);
    // A retry now is a new request, decided on the seat as it is.
    let Ok(Reply::Held(v)) = h.run(retry) else {
        panic!("a retry after the retention is decided anew")
    };
    assert_eq!(v.user.as_ref(), "u0");
}

#[test]
fn a_retry_gets_the_first_answer_within_the_retention_and_a_new_decision_after() {
    let mut h = Harness::new();
    // A refusal: the seat is taken when first asked for.
    let taken = h.held("owner", "r", &["A-1"]);
    let refused = Command::Hold(hold_req("e", "late", "r", &["A-1"]));
    assert_eq!(h.run(refused.clone()), Err(conflict(&["A-1"])));
    h.ok(Command::Release {
        hold: taken,
        user: "owner".into(),
        by: None,
    });
    // A grant whose hold ended.
    let granted = Command::Hold(hold_req("e", "buyer", "r", &["B-1"]));
    let first = h.run(granted.clone());
    let Ok(Reply::Held(view)) = &first else {
        panic!("{first:?}")
    };
    h.ok(Command::Release {
        hold: view.hold_id.clone(),
        user: "buyer".into(),
        by: None,
    });
    // A declined payment: its idempotency key's refusal.
    let paid = h.held("payer", "r", &["C-1"]);
    begin(&mut h, &paid, "k1").unwrap();
    let declined = abort(&mut h, &paid, "k1");
    assert!(declined.is_ok(), "{declined:?}");
    let retry_key = Command::BeginCheckout {
        hold: paid.clone(),
        idempotency_key: "k1".into(),
        by: None,
    };
    let was_declined = Err(Refusal::Declined("card declined".into()));
    assert_eq!(h.run_unchanged(retry_key.clone()), was_declined);

    // Within the retention every retry hears the first answer and changes nothing.
    for at in [T0 + 60_000, T0 + DECISION_RETENTION_MS] {
        h.at(at);
        h.ok(Command::Expire);
        assert_eq!(h.run_unchanged(refused.clone()), Err(conflict(&["A-1"])));
        assert_eq!(h.run_unchanged(granted.clone()), first);
        assert_eq!(h.run_unchanged(retry_key.clone()), was_declined);
    }

    // After it, each is a new request, decided on the state as it is now.
    h.at(T0 + DECISION_RETENTION_MS + 1);
    let Ok(Reply::Held(again)) = h.run(refused) else {
        panic!("A-1 is free: a new decision grants it")
    };
    assert_eq!(again.seats, vec![("A-1".into(), 3)]);
    let Ok(Reply::Held(second)) = h.run(granted) else {
        panic!("a new decision for the same reservation id")
    };
    assert_ne!(
        second.hold_id, view.hold_id,
        "a new hold, not the first one"
    );
    // The hold whose payment was declined expired long ago: the key now hears that.
    assert_eq!(h.run(retry_key), Err(Refusal::Expired));
}

#[test]
fn a_live_holds_request_is_never_forgotten_however_long_it_lives() {
    // The longest-lived hold the caps allow: a TTL of HOLD_TTL_MS_CAP, checked out at
    // its last moment with a payment deadline of the same cap.
    let longest = Limits {
        hold_ttl_ms_max: HOLD_TTL_MS_CAP,
        checkout_ttl_ms: HOLD_TTL_MS_CAP,
        ..Limits::default()
    };
    let mut h = Harness::new();
    h.ok(create("long", 1, 1, 5, longest));
    let mut request = hold_req("long", "buyer", "r", &["A-1"]);
    request.ttl_ms = Some(HOLD_TTL_MS_CAP);
    let first = h.run(Command::Hold(request.clone()));
    let Ok(Reply::Held(view)) = &first else {
        panic!("{first:?}")
    };
    let id = view.hold_id.clone();
    // Refusals around it, so that purging is busy while the hold lives.
    let refusals: Vec<Command> = (0..200)
        .map(|i| Command::Hold(hold_req("long", &format!("u{i}"), "r", &["A-1"])))
        .collect();
    entry(&mut h, T0, refusals.clone());
    h.at(T0 + HOLD_TTL_MS_CAP - 1);
    begin(&mut h, &id, "k").unwrap();
    let retry = Command::Hold(request);
    for at in [
        T0 + DECISION_RETENTION_MS + 1,
        T0 + DECISION_RETENTION_MS + HOLD_TTL_MS_CAP / 2,
        T0 + HOLD_TTL_MS_CAP + HOLD_TTL_MS_CAP - 2,
    ] {
        // Enough entries to forget everything due, then the retry.
        for _ in 0..10 {
            entry(&mut h, at, vec![]);
        }
        assert_eq!(h.m.hold(&id).unwrap().state.name(), "checking_out");
        assert_eq!(h.run_unchanged(retry.clone()), first, "at {at}");
    }
    assert_eq!(h.m.records_awaiting_purge(), 0, "the refusals are gone");
    assert!(matches!(
        complete(&mut h, &id, "k"),
        Ok(Reply::Completed(_))
    ));
    // A committed hold's request is derived from the hold, which stays with its order.
    let much_later = T0 + 30 * DECISION_RETENTION_MS;
    for _ in 0..10 {
        entry(&mut h, much_later, vec![]);
    }
    h.at(much_later);
    assert_eq!(h.run_unchanged(retry), first);
    assert_eq!(h.m.records_awaiting_purge(), 0);
}

#[test]
fn a_refused_checkouts_key_is_forgotten_with_its_binding() {
    let mut h = Harness::new();
    let paid = h.held("payer", "r", &["C-1"]);
    begin(&mut h, &paid, "k1").unwrap();
    assert!(abort(&mut h, &paid, "k1").is_ok(), "declined");
    // Within the retention the key belongs to the declined hold.
    let other = h.held("other", "r", &["D-1"]);
    assert_eq!(h.run_unchanged(reuse(&other)), Err(Refusal::KeyReused));

    // After it the refusal and the binding go together (the entry that holds D-2
    // purges them first), so the key is free for a new hold...
    h.at(T0 + DECISION_RETENTION_MS + 1);
    let later = h.held("other", "r2", &["D-2"]);
    let Ok(Reply::CheckoutStarted { hold_id, .. }) = h.run(reuse(&later)) else {
        panic!("k1 was forgotten: a new checkout under it starts")
    };
    assert_eq!(hold_id, later);
    // ...and bound to that hold now: the first hold may not take it back.
    assert_eq!(h.run_unchanged(reuse(&paid)), Err(Refusal::KeyReused));

    fn reuse(hold: &raft_store::HoldId) -> Command {
        Command::BeginCheckout {
            hold: hold.clone(),
            idempotency_key: "k1".into(),
            by: None,
        }
    }
}

/// An id with the right event and sequence number but a tag the event did not hand
/// out (a walked or forged id) names nothing: reads, releases and checkouts of it are
/// not found, and the real hold is untouched.
#[test]
fn a_hold_id_with_a_wrong_tag_is_not_found() {
    let mut h = Harness::new();
    let Ok(Reply::Held(v)) = h.hold("u1", "r1", &["A-1"]) else {
        panic!()
    };
    let mut forged = v.hold_id.clone();
    forged.tag ^= 1;
    assert!(matches!(h.m.hold(&forged), Err(Refusal::NotFound(_))));
    let release = Command::Release {
        hold: forged.clone(),
        user: "u1".into(),
        by: None,
    };
    assert!(matches!(
        h.run_unchanged(release),
        Err(Refusal::NotFound(_))
    ));
    let begin = Command::BeginCheckout {
        hold: forged.clone(),
        idempotency_key: "k-forged".into(),
        by: None,
    };
    assert!(matches!(h.run_unchanged(begin), Err(Refusal::NotFound(_))));
    assert_eq!(h.m.hold(&v.hold_id).unwrap().state, HoldState::Active);
    // Two events with different keys hand out different tags for the same number.
    let other = raft_store::IdKey([8; 16]);
    assert_ne!(other.tag(b'h', 1), v.hold_id.tag);
}

/// The audit trail: who released a hold, who paid for it and who changed a sale is
/// kept with it and shown.
#[test]
fn actors_are_recorded_on_holds_orders_and_sales() {
    let mut h = Harness::new();
    let op = raft_store::Actor {
        subject: "ops-1".into(),
        role: raft_store::ActorRole::Operator,
    };
    let buyer = raft_store::Actor {
        subject: "u1".into(),
        role: raft_store::ActorRole::Buyer,
    };
    let Ok(Reply::Held(a)) = h.hold("u1", "r1", &["A-1"]) else {
        panic!()
    };
    let release = Command::Release {
        hold: a.hold_id.clone(),
        user: "u1".into(),
        by: Some(op.clone()),
    };
    assert!(h.run(release).is_ok());
    assert_eq!(h.m.hold(&a.hold_id).unwrap().by, Some(op.clone()));
    let Ok(Reply::Held(b)) = h.hold("u1", "r2", &["A-2"]) else {
        panic!()
    };
    let begin = Command::BeginCheckout {
        hold: b.hold_id.clone(),
        idempotency_key: "k-audit".into(),
        by: Some(buyer.clone()),
    };
    assert!(h.run(begin).is_ok());
    let Ok(Reply::Completed(order)) = complete(&mut h, &b.hold_id, "k-audit") else {
        panic!()
    };
    assert_eq!(order.by, Some(buyer));
    let stop = Command::SetSale {
        event_id: ev("e"),
        sale: SaleState::Stopped,
        by: Some(op.clone()),
    };
    assert!(h.run(stop).is_ok());
    assert_eq!(
        h.m.event_summary(&ev("e")).unwrap().sale_changed_by,
        Some(op)
    );
    // An actor's subject is checked like a user id.
    let bad = Command::SetSale {
        event_id: ev("e"),
        sale: SaleState::OnSale,
        by: Some(raft_store::Actor {
            subject: "two words".into(),
            role: raft_store::ActorRole::Operator,
        }),
    };
    assert!(matches!(h.run(bad), Err(Refusal::Invalid(_))));
}
