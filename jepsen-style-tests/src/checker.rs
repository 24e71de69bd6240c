//! The checker: reads a history and the final state of the cluster and says whether
//! anything was oversold, lost or answered wrongly.
//!
//! **Per seat, linearizability.** Every seat is an independent register whose model
//! is available → held(h) → sold(h), or back to available by release or expiry. The
//! search a linearizability checker normally does collapses here, because seatd
//! exposes the order: every change of a seat bumps its version by exactly one, and
//! holds and reads report the versions they saw. So a history is linearizable per
//! seat when:
//! - no version is seen in two states (or held by two holds);
//! - states follow the model: held exactly at odd versions, available or sold at
//!   even ones, nothing after sold;
//! - real time is respected: an operation invoked after another completed never
//!   sees an older version (a read may see the same one, a hold creates a newer one);
//!   an operation that never completed (`info`) may have been applied at any later
//!   point, so it constrains nothing but must explain any hold it created.
//!
//! A multi-seat hold is all-or-nothing: every read (and the final state) shows all
//! of its seats at or past the versions the hold got, or none.
//!
//! **Whole system, on the final state** (after healing, read from every replica): no
//! seat in two orders; every acknowledged commit present; no definitely failed
//! commit present; available + held + sold = capacity; every hold ended at most once
//! (never both released and committed); a retried operation (same reservation id or
//! idempotency key) got the same answer as the first try; replicas identical.

use std::collections::{BTreeMap, BTreeSet};

use crate::history::{pair, Completed, Kind, Op, Record, SeatState, Seats, Value};

/// Hold id → (event, seats with the versions the hold got), for every granted hold.
type Granted = BTreeMap<String, (String, Vec<(String, u64)>)>;

/// The cluster after the run, healed and read from every replica.
#[derive(Clone, Debug, Default)]
pub struct FinalState {
    /// Per event: the seat map each replica (by node id) serves.
    pub maps: BTreeMap<String, BTreeMap<u64, Seats>>,
    /// Per event, per section: (capacity, available, held, sold), from the leader.
    pub counts: BTreeMap<String, Vec<(u32, u32, u32, u32)>>,
    /// Every hold that exists, by id.
    pub holds: BTreeMap<String, FinalHold>,
    /// Shards whose replicas differ (empty when all agree).
    pub divergent: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FinalHold {
    pub event: String,
    pub rid: String,
    /// active, checking_out, committed, released or expired.
    pub state: String,
    pub seats: Vec<(String, u64)>,
}

/// Each check and the problems it found.
#[derive(Debug, Default)]
pub struct Report {
    pub checks: BTreeMap<&'static str, Vec<String>>,
    pub ops: BTreeMap<String, usize>,
}

impl Report {
    fn check(&mut self, name: &'static str) -> &mut Vec<String> {
        self.checks.entry(name).or_default()
    }

    pub fn is_valid(&self) -> bool {
        self.checks.values().all(|p| p.is_empty())
    }

    /// Every problem, as "check: problem".
    pub fn problems(&self) -> Vec<String> {
        self.checks
            .iter()
            .flat_map(|(c, ps)| ps.iter().map(move |p| format!("{c}: {p}")))
            .collect()
    }

    pub fn summary(&self) -> String {
        let mut out = String::from("operations:");
        for (k, n) in &self.ops {
            out.push_str(&format!(" {k}={n}"));
        }
        out.push('\n');
        for (check, problems) in &self.checks {
            let verdict = if problems.is_empty() {
                "ok"
            } else {
                "VIOLATED"
            };
            out.push_str(&format!("  {check:<28} {verdict}\n"));
            for p in problems.iter().take(10) {
                out.push_str(&format!("      {p}\n"));
            }
            if problems.len() > 10 {
                out.push_str(&format!("      ... and {} more\n", problems.len() - 10));
            }
        }
        out
    }
}

/// One thing known about a seat at a version.
#[derive(Clone, Debug)]
struct Obs {
    version: u64,
    state: SeatState,
    holder: Option<String>,
    invoked: u64,
    completed: u64,
    /// A hold creates its version; reads and final states only see one.
    creates: bool,
    what: String,
}

const END: u64 = u64::MAX;

pub fn check(records: &[Record], end: &FinalState) -> Report {
    let mut report = Report::default();
    let ops = match pair(records) {
        Ok(ops) => ops,
        Err(e) => {
            report.check("history well formed").push(e);
            return report;
        }
    };
    report.check("history well formed");
    for o in &ops {
        let f = match o.op {
            Op::Hold { .. } => "hold",
            Op::Commit { .. } => "commit",
            Op::Release { .. } => "release",
            Op::Read { .. } => "read",
        };
        let k = match o.kind {
            Kind::Ok => "ok",
            Kind::Fail => "fail",
            _ => "info",
        };
        *report.ops.entry(format!("{f}:{k}")).or_default() += 1;
    }
    let holds = granted_holds(&ops);
    for name in [
        "seat states",
        "seat held twice",
        "real-time order (stale reads)",
        "multi-seat holds all or nothing",
    ] {
        report.check(name);
    }
    per_seat(&ops, &holds, end, &mut report);
    all_or_nothing(&ops, &holds, end, &mut report);
    commits(&ops, &holds, end, &mut report);
    retries(&ops, &mut report);
    whole_system(&ops, end, &mut report);
    report
}

/// Hold id → (event, seats with versions), from every ok hold.
fn granted_holds(ops: &[Completed]) -> Granted {
    let mut holds = BTreeMap::new();
    for o in ops {
        if let (Op::Hold { event, .. }, Kind::Ok, Some(Value::Held { hold, seats })) =
            (&o.op, o.kind, &o.value)
        {
            holds.insert(hold.clone(), (event.clone(), seats.clone()));
        }
    }
    holds
}

fn per_seat(ops: &[Completed], holds: &Granted, end: &FinalState, report: &mut Report) {
    let mut seats: BTreeMap<(String, String), Vec<Obs>> = BTreeMap::new();
    for o in ops.iter().filter(|o| o.kind == Kind::Ok) {
        match (&o.op, &o.value) {
            (Op::Hold { event, .. }, Some(Value::Held { hold, seats: got })) => {
                for (s, v) in got {
                    seats
                        .entry((event.clone(), s.clone()))
                        .or_default()
                        .push(Obs {
                            version: *v,
                            state: SeatState::Held,
                            holder: Some(hold.clone()),
                            invoked: o.invoked_us,
                            completed: o.completed_us,
                            creates: true,
                            what: format!("hold {hold}"),
                        });
                }
            }
            (Op::Read { event }, Some(Value::Map { seats: map, index })) => {
                for (s, (state, v)) in map {
                    seats
                        .entry((event.clone(), s.clone()))
                        .or_default()
                        .push(Obs {
                            version: *v,
                            state: *state,
                            holder: None,
                            invoked: o.invoked_us,
                            completed: o.completed_us,
                            creates: false,
                            what: format!("read at index {index}"),
                        });
                }
            }
            // A commit or a release that succeeded ended the hold: the seat's next
            // version is sold (or available) by that hold.
            (Op::Commit { hold, .. }, Some(Value::Committed { .. }))
            | (Op::Release { hold, .. }, Some(Value::Released)) => {
                let Some((event, got)) = holds.get(hold) else {
                    continue;
                };
                let sold = matches!(o.op, Op::Commit { .. });
                for (s, v) in got {
                    seats
                        .entry((event.clone(), s.clone()))
                        .or_default()
                        .push(Obs {
                            version: v + 1,
                            state: if sold {
                                SeatState::Sold
                            } else {
                                SeatState::Available
                            },
                            holder: Some(hold.clone()),
                            invoked: o.invoked_us,
                            completed: o.completed_us,
                            creates: false,
                            what: format!("{} of {hold}", if sold { "commit" } else { "release" }),
                        });
                }
            }
            _ => {}
        }
    }
    let holder_of: BTreeMap<(&str, &str, u64), &str> = end
        .holds
        .iter()
        .flat_map(|(h, fh)| {
            fh.seats
                .iter()
                .map(move |(s, v)| ((fh.event.as_str(), s.as_str(), *v), h.as_str()))
        })
        .collect();
    for (event, replicas) in &end.maps {
        for map in replicas.values() {
            for (s, (state, v)) in map {
                let holder = match state {
                    SeatState::Held => holder_of.get(&(event.as_str(), s.as_str(), *v)),
                    SeatState::Sold => holder_of.get(&(event.as_str(), s.as_str(), v - 1)),
                    SeatState::Available => None,
                };
                seats
                    .entry((event.clone(), s.clone()))
                    .or_default()
                    .push(Obs {
                        version: *v,
                        state: *state,
                        holder: holder.map(|h| h.to_string()),
                        invoked: END,
                        completed: END,
                        creates: false,
                        what: "final state".into(),
                    });
            }
        }
    }
    for ((event, seat), obs) in &mut seats {
        let name = format!("{event}/{seat}");
        // One state (and one holder) per version.
        let mut by_version: BTreeMap<u64, &Obs> = BTreeMap::new();
        for o in obs.iter() {
            match by_version.get(&o.version) {
                Some(first) if first.state != o.state => report.check("seat states").push(format!(
                    "{name} version {}: {:?} by {} but {:?} by {}",
                    o.version, first.state, first.what, o.state, o.what
                )),
                Some(first)
                    if first.holder.is_some() && o.holder.is_some() && first.holder != o.holder =>
                {
                    report.check("seat held twice").push(format!(
                        "{name} version {} held by {} ({}) and {} ({})",
                        o.version,
                        first.holder.as_deref().unwrap_or("?"),
                        first.what,
                        o.holder.as_deref().unwrap_or("?"),
                        o.what
                    ))
                }
                Some(_) => {}
                None => {
                    by_version.insert(o.version, o);
                }
            }
            let legal = match o.state {
                SeatState::Held => o.version % 2 == 1,
                SeatState::Available | SeatState::Sold => o.version % 2 == 0,
            };
            if !legal {
                report.check("seat states").push(format!(
                    "{name} is {:?} at version {} ({}): not a state the model reaches",
                    o.state, o.version, o.what
                ));
            }
        }
        if let Some(sold_at) = obs
            .iter()
            .filter(|o| o.state == SeatState::Sold)
            .map(|o| o.version)
            .min()
        {
            for o in obs.iter().filter(|o| o.version > sold_at) {
                report.check("seat states").push(format!(
                    "{name} changed after it was sold at version {sold_at}: {:?} at {} ({})",
                    o.state, o.version, o.what
                ));
            }
        }
        // Real time: nothing invoked after an operation completed sees an older version.
        obs.sort_by_key(|o| o.completed);
        let mut done: Vec<(u64, u64, &str)> = Vec::new(); // (completed, version, what)
        let mut max_so_far: Vec<u64> = Vec::new();
        for o in obs.iter() {
            done.push((o.completed, o.version, &o.what));
            let m = max_so_far.last().copied().unwrap_or(0).max(o.version);
            max_so_far.push(m);
        }
        for o in obs.iter().filter(|o| o.invoked != END) {
            // Operations completed before this one was invoked.
            let before = done.partition_point(|(c, _, _)| *c < o.invoked);
            if before == 0 {
                continue;
            }
            let seen = max_so_far[before - 1];
            let stale = if o.creates {
                o.version <= seen
            } else {
                o.version < seen
            };
            if stale {
                report.check("real-time order (stale reads)").push(format!(
                    "{name}: {} saw version {} after version {seen} had been acknowledged",
                    o.what, o.version
                ));
            }
        }
    }
}

fn all_or_nothing(ops: &[Completed], holds: &Granted, end: &FinalState, report: &mut Report) {
    let mut snapshots: Vec<(&str, String, &Seats)> = Vec::new();
    for o in ops.iter().filter(|o| o.kind == Kind::Ok) {
        if let (Op::Read { event }, Some(Value::Map { seats, index })) = (&o.op, &o.value) {
            snapshots.push((event, format!("read at index {index}"), seats));
        }
    }
    for (event, replicas) in &end.maps {
        for (node, map) in replicas {
            snapshots.push((event, format!("final state on node {node}"), map));
        }
    }
    for (hold, (event, seats)) in holds {
        if seats.len() < 2 {
            continue;
        }
        for (ev, what, map) in snapshots.iter().filter(|(e, _, _)| *e == event) {
            let present: Vec<bool> = seats
                .iter()
                .map(|(s, v)| map.get(s).is_some_and(|(_, seen)| seen >= v))
                .collect();
            if present.iter().any(|p| *p) && !present.iter().all(|p| *p) {
                report
                    .check("multi-seat holds all or nothing")
                    .push(format!(
                        "{ev}: {what} shows hold {hold} on only some of its seats {seats:?}"
                    ));
            }
        }
    }
}

fn commits(ops: &[Completed], holds: &Granted, end: &FinalState, report: &mut Report) {
    report.check("no seat in two orders");
    report.check("acknowledged commits present");
    report.check("failed commits absent");
    report.check("holds end at most once");
    // Seats sold per acknowledged commit.
    let mut sold_by: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    let mut committed_ok: BTreeSet<&str> = BTreeSet::new();
    let mut released_ok: BTreeSet<&str> = BTreeSet::new();
    let mut maybe_committed: BTreeSet<&str> = BTreeSet::new();
    for o in ops {
        match (&o.op, o.kind, &o.value) {
            (Op::Commit { hold, .. }, Kind::Ok, _) => {
                committed_ok.insert(hold);
                maybe_committed.insert(hold);
                if let Some((event, seats)) = holds.get(hold) {
                    for (s, _) in seats {
                        sold_by
                            .entry((event.clone(), s.clone()))
                            .or_default()
                            .insert(hold.clone());
                    }
                }
            }
            (Op::Commit { hold, .. }, Kind::Info, _) => {
                maybe_committed.insert(hold);
            }
            (Op::Release { hold, .. }, Kind::Ok, _) => {
                released_ok.insert(hold);
            }
            _ => {}
        }
    }
    for ((event, seat), by) in &sold_by {
        if by.len() > 1 {
            report
                .check("no seat in two orders")
                .push(format!("{event}/{seat} sold by holds {by:?}"));
        }
    }
    let mut final_sold: BTreeMap<(&str, &str), Vec<&str>> = BTreeMap::new();
    for (h, fh) in end.holds.iter().filter(|(_, fh)| fh.state == "committed") {
        for (s, _) in &fh.seats {
            final_sold.entry((&fh.event, s)).or_default().push(h);
        }
    }
    for ((event, seat), by) in &final_sold {
        if by.len() > 1 {
            report.check("no seat in two orders").push(format!(
                "final state: {event}/{seat} in the orders of {by:?}"
            ));
        }
    }
    for hold in &committed_ok {
        let state = end.holds.get(*hold).map(|h| h.state.as_str());
        if state != Some("committed") {
            report.check("acknowledged commits present").push(format!(
                "commit of {hold} was acknowledged, but the hold is {state:?} in the end"
            ));
        }
    }
    for o in ops.iter().filter(|o| o.kind == Kind::Fail) {
        if let Op::Commit { hold, .. } = &o.op {
            let state = end.holds.get(hold).map(|h| h.state.as_str());
            if state == Some("committed") && !maybe_committed.contains(hold.as_str()) {
                report.check("failed commits absent").push(format!(
                    "commit of {hold} was refused and never retried, yet it is committed"
                ));
            }
        }
    }
    for hold in committed_ok.intersection(&released_ok) {
        report
            .check("holds end at most once")
            .push(format!("{hold} was both committed and released"));
    }
}

fn retries(ops: &[Completed], report: &mut Report) {
    report.check("retries get the first answer");
    let mut holds: BTreeMap<(&str, &str, &str), &str> = BTreeMap::new();
    let mut orders: BTreeMap<(&str, &str), &str> = BTreeMap::new();
    for o in ops.iter().filter(|o| o.kind == Kind::Ok) {
        match (&o.op, &o.value) {
            (
                Op::Hold {
                    event, user, rid, ..
                },
                Some(Value::Held { hold, .. }),
            ) => {
                let first = holds.entry((event, user, rid)).or_insert(hold);
                if first != hold {
                    report.check("retries get the first answer").push(format!(
                        "reservation {rid} of {user} got holds {first} and {hold}"
                    ));
                }
            }
            (Op::Commit { hold, key, .. }, Some(Value::Committed { order, .. })) => {
                let first = orders.entry((hold, key)).or_insert(order);
                if first != order {
                    report.check("retries get the first answer").push(format!(
                        "key {key} for {hold} got orders {first} and {order}"
                    ));
                }
            }
            _ => {}
        }
    }
}

fn whole_system(ops: &[Completed], end: &FinalState, report: &mut Report) {
    report.check("replicas identical");
    report.check("counts add up");
    report.check("holds explained");
    for d in &end.divergent {
        report.check("replicas identical").push(d.clone());
    }
    for (event, replicas) in &end.maps {
        let mut distinct = replicas.values().collect::<Vec<_>>();
        distinct.dedup();
        if distinct.len() > 1 {
            report
                .check("replicas identical")
                .push(format!("{event}: replicas serve different seat maps"));
        }
    }
    for (event, sections) in &end.counts {
        for (i, (cap, a, h, s)) in sections.iter().enumerate() {
            if a + h + s != *cap {
                report.check("counts add up").push(format!(
                    "{event} section {i}: {a} available + {h} held + {s} sold != {cap}"
                ));
            }
        }
    }
    let asked: BTreeSet<(&str, &str)> = ops
        .iter()
        .filter_map(|o| match &o.op {
            Op::Hold { event, rid, .. } => Some((event.as_str(), rid.as_str())),
            _ => None,
        })
        .collect();
    for (h, fh) in &end.holds {
        if !asked.contains(&(fh.event.as_str(), fh.rid.as_str())) {
            report
                .check("holds explained")
                .push(format!("{h} exists, but no client asked for it"));
        }
    }
}
