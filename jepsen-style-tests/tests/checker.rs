//! The checker is itself tested: a clean history passes, and hand-written histories
//! with a double sale, a lost commit, a stale read, a half-applied multi-seat hold,
//! a retry answered differently and a hold nobody asked for are each reported by the
//! check that owns them.

use std::collections::BTreeMap;

use seatd_jepsen::checker::{check, FinalHold, FinalState};
use seatd_jepsen::history::{read_jsonl, write_jsonl, Kind, Op, Record, SeatState, Value};

/// Builds a history one record at a time, with increasing timestamps.
#[derive(Default)]
struct H {
    records: Vec<Record>,
    t: u64,
}

impl H {
    fn at(&mut self, process: u32, kind: Kind, op: Op, value: Option<Value>) -> &mut Self {
        self.t += 10;
        self.records.push(Record {
            process,
            time_us: self.t,
            kind,
            op,
            value,
        });
        self
    }

    fn call(&mut self, process: u32, op: Op, kind: Kind, value: Value) -> &mut Self {
        self.at(process, Kind::Invoke, op.clone(), None)
            .at(process, kind, op, Some(value))
    }
}

fn hold_op(user: &str, seats: &[&str], rid: &str) -> Op {
    Op::Hold {
        event: "ev".into(),
        user: user.into(),
        seats: seats.iter().map(|s| s.to_string()).collect(),
        rid: rid.into(),
    }
}

fn held(hold: &str, seats: &[(&str, u64)]) -> Value {
    Value::Held {
        hold: hold.into(),
        seats: seats.iter().map(|(s, v)| (s.to_string(), *v)).collect(),
    }
}

fn commit_op(hold: &str, key: &str) -> Op {
    Op::Commit {
        hold: hold.into(),
        key: key.into(),
        token: "tok_visa".into(),
    }
}

fn committed(order: &str, seats: &[&str]) -> Value {
    Value::Committed {
        order: order.into(),
        seats: seats.iter().map(|s| s.to_string()).collect(),
    }
}

fn map(seats: &[(&str, SeatState, u64)]) -> BTreeMap<String, (SeatState, u64)> {
    seats
        .iter()
        .map(|(s, st, v)| (s.to_string(), (*st, *v)))
        .collect()
}

fn read(seats: &[(&str, SeatState, u64)]) -> Value {
    Value::Map {
        index: 1,
        seats: map(seats),
    }
}

fn read_op() -> Op {
    Op::Read { event: "ev".into() }
}

use SeatState::{Available as A, Held as Hd, Sold as S};

/// (hold id, reservation id, final state, seats with versions)
type HoldRow<'a> = (&'a str, &'a str, &'a str, &'a [(&'a str, u64)]);

/// The final state every replica agrees on, with these holds.
fn end(seats: &[(&str, SeatState, u64)], holds: &[HoldRow]) -> FinalState {
    let m = map(seats);
    let held = m.values().filter(|(s, _)| *s == Hd).count() as u32;
    let sold = m.values().filter(|(s, _)| *s == S).count() as u32;
    let cap = m.len() as u32;
    FinalState {
        maps: BTreeMap::from([("ev".to_string(), BTreeMap::from([(1, m.clone()), (2, m)]))]),
        counts: BTreeMap::from([("ev".to_string(), vec![(cap, cap - held - sold, held, sold)])]),
        holds: holds
            .iter()
            .map(|(id, rid, state, seats)| {
                (
                    id.to_string(),
                    FinalHold {
                        event: "ev".into(),
                        rid: rid.to_string(),
                        state: state.to_string(),
                        seats: seats.iter().map(|(s, v)| (s.to_string(), *v)).collect(),
                    },
                )
            })
            .collect(),
        divergent: vec![],
    }
}

fn violated(report: &seatd_jepsen::checker::Report) -> Vec<&'static str> {
    report
        .checks
        .iter()
        .filter(|(_, p)| !p.is_empty())
        .map(|(c, _)| *c)
        .collect()
}

/// A clean run: a pair held and sold, a seat held and released, a hold that
/// expired, a refused hold, an unknown hold that did apply, reads along the way.
fn clean() -> (H, FinalState) {
    let mut h = H::default();
    h.call(
        1,
        read_op(),
        Kind::Ok,
        read(&[("A-1", A, 0), ("A-2", A, 0), ("A-3", A, 0)]),
    )
    .call(
        1,
        hold_op("u1", &["A-1", "A-2"], "r1"),
        Kind::Ok,
        held("ev.h1", &[("A-1", 1), ("A-2", 1)]),
    )
    .call(
        2,
        hold_op("u2", &["A-2"], "r2"),
        Kind::Fail,
        Value::Refused {
            code: "conflict".into(),
            seats: vec!["A-2".into()],
        },
    )
    .call(
        1,
        commit_op("ev.h1", "k1"),
        Kind::Ok,
        committed("ev.o1", &["A-1", "A-2"]),
    )
    // A retry of the commit with the same key: the same order.
    .call(
        1,
        commit_op("ev.h1", "k1"),
        Kind::Ok,
        committed("ev.o1", &["A-1", "A-2"]),
    )
    .call(
        2,
        hold_op("u2", &["A-3"], "r3"),
        Kind::Ok,
        held("ev.h2", &[("A-3", 1)]),
    )
    .call(
        2,
        Op::Release {
            hold: "ev.h2".into(),
            user: "u2".into(),
        },
        Kind::Ok,
        Value::Released,
    )
    .call(
        3,
        read_op(),
        Kind::Ok,
        read(&[("A-1", S, 2), ("A-2", S, 2), ("A-3", A, 2)]),
    )
    .call(
        3,
        hold_op("u3", &["A-3"], "r4"),
        Kind::Info,
        Value::Unknown {
            message: "timeout".into(),
        },
    );
    let end = end(
        &[("A-1", S, 2), ("A-2", S, 2), ("A-3", Hd, 3)],
        &[
            ("ev.h1", "r1", "committed", &[("A-1", 1), ("A-2", 1)]),
            ("ev.h2", "r3", "released", &[("A-3", 1)]),
            ("ev.h3", "r4", "active", &[("A-3", 3)]),
        ],
    );
    (h, end)
}

#[test]
fn a_clean_history_passes_every_check() {
    let (h, end) = clean();
    let report = check(&h.records, &end);
    assert!(report.is_valid(), "{}", report.summary());
    assert_eq!(report.ops["hold:ok"], 2);
    assert_eq!(report.ops["hold:info"], 1);
    // The JSON lines round trip.
    let mut buf = Vec::new();
    write_jsonl(&h.records, &mut buf).unwrap();
    assert_eq!(read_jsonl(&buf[..]).unwrap(), h.records);
}

#[test]
fn a_double_sale_is_reported() {
    let mut h = H::default();
    h.call(
        1,
        hold_op("u1", &["A-1"], "r1"),
        Kind::Ok,
        held("ev.h1", &[("A-1", 1)]),
    )
    .call(
        1,
        commit_op("ev.h1", "k1"),
        Kind::Ok,
        committed("ev.o1", &["A-1"]),
    )
    // A broken cluster grants the sold seat again, and sells it again.
    .call(
        2,
        hold_op("u2", &["A-1"], "r2"),
        Kind::Ok,
        held("ev.h2", &[("A-1", 3)]),
    )
    .call(
        2,
        commit_op("ev.h2", "k2"),
        Kind::Ok,
        committed("ev.o2", &["A-1"]),
    );
    let end = end(
        &[("A-1", S, 4)],
        &[
            ("ev.h1", "r1", "committed", &[("A-1", 1)]),
            ("ev.h2", "r2", "committed", &[("A-1", 3)]),
        ],
    );
    let report = check(&h.records, &end);
    let v = violated(&report);
    assert!(v.contains(&"no seat in two orders"), "{}", report.summary());
    assert!(v.contains(&"seat states"), "{}", report.summary());
}

#[test]
fn a_lost_commit_is_reported() {
    let mut h = H::default();
    h.call(
        1,
        hold_op("u1", &["A-1"], "r1"),
        Kind::Ok,
        held("ev.h1", &[("A-1", 1)]),
    )
    .call(
        1,
        commit_op("ev.h1", "k1"),
        Kind::Ok,
        committed("ev.o1", &["A-1"]),
    );
    // In the end the hold merely expired: the acknowledged order is gone.
    let end = end(
        &[("A-1", A, 2)],
        &[("ev.h1", "r1", "expired", &[("A-1", 1)])],
    );
    let report = check(&h.records, &end);
    let v = violated(&report);
    assert!(
        v.contains(&"acknowledged commits present"),
        "{}",
        report.summary()
    );
}

#[test]
fn a_stale_read_is_reported() {
    let mut h = H::default();
    h.call(
        1,
        hold_op("u1", &["A-1"], "r1"),
        Kind::Ok,
        held("ev.h1", &[("A-1", 1)]),
    )
    // Invoked after the hold was acknowledged, yet it shows the seat as before.
    .call(2, read_op(), Kind::Ok, read(&[("A-1", A, 0)]));
    let end = end(
        &[("A-1", Hd, 1)],
        &[("ev.h1", "r1", "active", &[("A-1", 1)])],
    );
    let report = check(&h.records, &end);
    assert_eq!(
        violated(&report),
        vec!["real-time order (stale reads)"],
        "{}",
        report.summary()
    );
}

#[test]
fn a_half_applied_multi_seat_hold_is_reported() {
    let mut h = H::default();
    h.call(
        1,
        hold_op("u1", &["A-1", "A-2"], "r1"),
        Kind::Ok,
        held("ev.h1", &[("A-1", 1), ("A-2", 1)]),
    );
    // The final state has the hold on A-1 only.
    let end = end(
        &[("A-1", Hd, 1), ("A-2", A, 0)],
        &[("ev.h1", "r1", "active", &[("A-1", 1), ("A-2", 1)])],
    );
    let report = check(&h.records, &end);
    let v = violated(&report);
    assert!(
        v.contains(&"multi-seat holds all or nothing"),
        "{}",
        report.summary()
    );
}

#[test]
fn retries_answered_differently_and_unexplained_holds_are_reported() {
    let mut h = H::default();
    h.call(
        1,
        hold_op("u1", &["A-1"], "r1"),
        Kind::Ok,
        held("ev.h1", &[("A-1", 1)]),
    )
    .call(
        1,
        hold_op("u1", &["A-1"], "r1"),
        Kind::Ok,
        held("ev.h2", &[("A-2", 1)]),
    );
    let end = end(
        &[("A-1", Hd, 1), ("A-2", Hd, 1), ("A-3", Hd, 1)],
        &[
            ("ev.h1", "r1", "active", &[("A-1", 1)]),
            ("ev.h2", "r1", "active", &[("A-2", 1)]),
            ("ev.h3", "nobody", "active", &[("A-3", 1)]),
        ],
    );
    let report = check(&h.records, &end);
    let v = violated(&report);
    assert!(
        v.contains(&"retries get the first answer"),
        "{}",
        report.summary()
    );
    assert!(v.contains(&"holds explained"), "{}", report.summary());
}

#[test]
fn diverging_replicas_and_bad_counts_are_reported() {
    let (h, mut end) = clean();
    end.maps
        .get_mut("ev")
        .unwrap()
        .insert(3, map(&[("A-1", S, 2), ("A-2", S, 2), ("A-3", A, 2)]));
    end.counts.insert("ev".into(), vec![(3, 1, 1, 2)]);
    let report = check(&h.records, &end);
    let v = violated(&report);
    assert!(v.contains(&"replicas identical"), "{}", report.summary());
    assert!(v.contains(&"counts add up"), "{}", report.summary());
}
