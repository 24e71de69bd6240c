//! The workload: many concurrent buyers on a few small events, so contention is
//! high. Each buyer holds 1–4 adjacent seats, commits (mostly with a good card,
//! sometimes a declined one), releases, reads the seat map, or lets short holds
//! expire. Calls go through the client library (deadlines, retries against the next
//! endpoint with the same keys); an operation whose outcome stays unknown is tried
//! again now and then with the very same reservation id or idempotency key.
//!
//! Every operation is recorded before it is sent and when it completes: `ok`, `fail`
//! (the cluster refused it) or `info` (unknown).

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use seatd_client::{pb, Client, Error};

use crate::history::{Kind, Op, Recorder, SeatState, Value};

/// The venue every event of a run uses: rows of `SEATS_PER_ROW`.
pub const ROWS: [&str; 8] = ["A", "B", "C", "D", "E", "F", "G", "H"];
pub const SEATS_PER_ROW: u32 = 25;

pub struct Buyer {
    pub id: u32,
    /// The events on sale now (the run replaces them over time).
    pub events: Arc<RwLock<Vec<String>>>,
    pub client: Arc<Client>,
    pub recorder: Arc<Recorder>,
    rng: fastrand::Rng,
    held: Vec<(String, String)>, // (hold id, user)
    n: u64,
}

fn refused(e: &Error) -> Value {
    let seats = match e {
        Error::Conflict { seats, .. } => seats.clone(),
        _ => Vec::new(),
    };
    Value::Refused {
        code: e.code().to_string(),
        seats,
    }
}

impl Buyer {
    pub fn new(
        id: u32,
        seed: u64,
        events: Arc<RwLock<Vec<String>>>,
        client: Arc<Client>,
        recorder: Arc<Recorder>,
    ) -> Self {
        Self {
            id,
            events,
            client,
            recorder,
            rng: fastrand::Rng::with_seed(seed ^ (u64::from(id) << 32)),
            held: Vec::new(),
            n: 0,
        }
    }

    /// Runs operations until `until`.
    pub async fn run(mut self, until: Instant) {
        while Instant::now() < until {
            let op = self.next_op();
            let mut kind = self.perform(&op).await;
            // Unknown outcome: sometimes ask again, with the same keys.
            let mut again = 0;
            while kind == Kind::Info && again < 2 && self.rng.bool() && Instant::now() < until {
                kind = self.perform(&op).await;
                again += 1;
            }
            tokio::time::sleep(Duration::from_millis(self.rng.u64(0..20))).await;
        }
    }

    fn next_op(&mut self) -> Op {
        self.n += 1;
        let roll = self.rng.u32(0..100);
        if roll < 12 && !self.held.is_empty() {
            let (hold, _) = self.held[self.rng.usize(0..self.held.len())].clone();
            let token = if self.rng.u32(0..10) == 0 {
                "tok_chargeDeclined"
            } else {
                "tok_visa"
            };
            return Op::Commit {
                key: format!("k-{hold}-{token}"),
                hold,
                token: token.into(),
            };
        }
        if roll < 22 && !self.held.is_empty() {
            let (hold, user) = self.held.swap_remove(self.rng.usize(0..self.held.len()));
            return Op::Release { hold, user };
        }
        let event = {
            let on_sale = self.events.read().unwrap_or_else(|p| p.into_inner());
            on_sale[self.rng.usize(0..on_sale.len())].clone()
        };
        if roll < 40 {
            return Op::Read { event };
        }
        let row = ROWS[self.rng.usize(0..ROWS.len())];
        let len = self.rng.u32(1..=4);
        let first = self.rng.u32(1..=SEATS_PER_ROW + 1 - len);
        Op::Hold {
            event,
            user: format!("b{}u{}", self.id, self.n),
            seats: (first..first + len).map(|n| format!("{row}-{n}")).collect(),
            rid: format!("b{}r{}", self.id, self.n),
        }
    }

    /// Sends `op` once (the library retries inside) and records it.
    async fn perform(&mut self, op: &Op) -> Kind {
        self.recorder.record(self.id, Kind::Invoke, op, None);
        let (kind, value) = match op {
            Op::Hold {
                event,
                user,
                seats,
                rid,
            } => {
                let seats: Vec<&str> = seats.iter().map(String::as_str).collect();
                // Half the holds are short, so some expire untouched; none outlives
                // the quiet time before the final read (`run::QUIESCE_MS`).
                let ttl = Duration::from_millis(if self.rng.bool() { 1_500 } else { 4_000 });
                match self
                    .client
                    .hold(event, user, &seats, Some(ttl), Some(rid))
                    .await
                {
                    Ok(h) => {
                        self.held.push((h.hold_id.clone(), user.clone()));
                        (
                            Kind::Ok,
                            Value::Held {
                                hold: h.hold_id,
                                seats: h
                                    .seats
                                    .into_iter()
                                    .map(|s| (s.seat_id, s.version))
                                    .collect(),
                            },
                        )
                    }
                    Err(e) => outcome(e),
                }
            }
            Op::Commit { hold, key, token } => {
                match self.client.commit(hold, token, Some(key)).await {
                    Ok(o) => {
                        self.held.retain(|(h, _)| h != hold);
                        (
                            Kind::Ok,
                            Value::Committed {
                                order: o.order_id,
                                seats: o.seat_ids,
                            },
                        )
                    }
                    Err(e) => outcome(e),
                }
            }
            Op::Release { hold, user } => match self.client.release(hold, user).await {
                Ok(_) => (Kind::Ok, Value::Released),
                Err(e) => outcome(e),
            },
            Op::Read { event } => match self.client.seat_map(event, false).await {
                Ok(m) => (Kind::Ok, map_value(&m)),
                Err(e) => outcome(e),
            },
        };
        self.recorder.record(self.id, kind, op, Some(value));
        kind
    }
}

fn outcome(e: Error) -> (Kind, Value) {
    // A server's INTERNAL is not retried, but the command may have been applied
    // before the server failed: its outcome is as unknown as UNAVAILABLE's.
    if matches!(e, Error::Unavailable(_) | Error::Internal(_)) {
        (
            Kind::Info,
            Value::Unknown {
                message: e.to_string(),
            },
        )
    } else {
        (Kind::Fail, refused(&e))
    }
}

pub fn map_value(m: &pb::SeatMap) -> Value {
    Value::Map {
        index: m.applied_index,
        seats: m
            .seats
            .iter()
            .map(|s| {
                let state = match pb::SeatState::try_from(s.state) {
                    Ok(pb::SeatState::Held) => SeatState::Held,
                    Ok(pb::SeatState::Sold) => SeatState::Sold,
                    _ => SeatState::Available,
                };
                (s.id.clone(), (state, s.version))
            })
            .collect(),
    }
}
