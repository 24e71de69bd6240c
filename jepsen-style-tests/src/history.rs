//! The recorded history of a run: every client operation as an invocation and a
//! completion, in the order the harness saw them, one JSON object per line.
//!
//! A completion is `ok` (it happened, with its value), `fail` (it definitely did not
//! happen: the cluster refused it) or `info` (unknown: a timeout, a lost connection,
//! UNAVAILABLE after retries). Each client process runs one operation at a time, so
//! an invocation is completed by the next record of the same process; an invocation
//! left open when the run ends counts as `info`.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::sync::Mutex;
use std::time::Instant;

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Invoke,
    Ok,
    Fail,
    Info,
}

/// What a client asked for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "f", rename_all = "snake_case")]
pub enum Op {
    Hold {
        event: String,
        user: String,
        seats: Vec<String>,
        rid: String,
    },
    Commit {
        hold: String,
        key: String,
        token: String,
    },
    Release {
        hold: String,
        user: String,
    },
    /// A linearizable read of an event's seat map.
    Read {
        event: String,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SeatState {
    Available,
    Held,
    Sold,
}

/// A seat map as the history keeps it: seat → (state, version).
pub type Seats = BTreeMap<String, (SeatState, u64)>;

/// What a completion said.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "v", rename_all = "snake_case")]
pub enum Value {
    /// A hold granted: each seat with the version it got.
    Held {
        hold: String,
        seats: Vec<(String, u64)>,
    },
    Committed {
        order: String,
        seats: Vec<String>,
    },
    Released,
    /// A seat map: seat → (state, version), and the log index it reflects.
    Map {
        index: u64,
        seats: Seats,
    },
    /// Refused (with the error code, and the seats of a conflict).
    Refused {
        code: String,
        seats: Vec<String>,
    },
    /// Unknown outcome.
    Unknown {
        message: String,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub process: u32,
    /// Microseconds since the run started.
    pub time_us: u64,
    pub kind: Kind,
    pub op: Op,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<Value>,
}

/// An invocation with its completion.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Completed {
    pub process: u32,
    pub op: Op,
    pub invoked_us: u64,
    /// `u64::MAX` for an operation that never completed.
    pub completed_us: u64,
    pub kind: Kind,
    pub value: Option<Value>,
}

/// Pairs each invocation with the completion that follows it in its process.
pub fn pair(records: &[Record]) -> Result<Vec<Completed>, String> {
    let mut open: BTreeMap<u32, &Record> = BTreeMap::new();
    let mut done = Vec::new();
    for r in records {
        match r.kind {
            Kind::Invoke => {
                if let Some(prev) = open.insert(r.process, r) {
                    return Err(format!(
                        "process {} invoked {:?} while {:?} was open",
                        r.process, r.op, prev.op
                    ));
                }
            }
            kind => {
                let inv = open.remove(&r.process).ok_or_else(|| {
                    format!(
                        "process {} completed {:?} without invoking it",
                        r.process, r.op
                    )
                })?;
                done.push(Completed {
                    process: r.process,
                    op: inv.op.clone(),
                    invoked_us: inv.time_us,
                    completed_us: r.time_us,
                    kind,
                    value: r.value.clone(),
                });
            }
        }
    }
    for (process, inv) in open {
        done.push(Completed {
            process,
            op: inv.op.clone(),
            invoked_us: inv.time_us,
            completed_us: u64::MAX,
            kind: Kind::Info,
            value: None,
        });
    }
    Ok(done)
}

/// Records a run's history, in memory and (optionally) as JSON lines.
pub struct Recorder {
    started: Instant,
    records: Mutex<Vec<Record>>,
}

impl Default for Recorder {
    fn default() -> Self {
        Self {
            started: Instant::now(),
            records: Mutex::default(),
        }
    }
}

impl Recorder {
    pub fn record(&self, process: u32, kind: Kind, op: &Op, value: Option<Value>) {
        let mut records = self.records.lock().unwrap_or_else(|p| p.into_inner());
        // Timestamps are taken under the lock, so the file order is the time order.
        let time_us = self.started.elapsed().as_micros() as u64;
        records.push(Record {
            process,
            time_us,
            kind,
            op: op.clone(),
            value,
        });
    }

    pub fn records(&self) -> Vec<Record> {
        self.records
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

pub fn write_jsonl(records: &[Record], mut out: impl Write) -> std::io::Result<()> {
    for r in records {
        serde_json::to_writer(&mut out, r)?;
        out.write_all(b"\n")?;
    }
    Ok(())
}

pub fn read_jsonl(input: impl BufRead) -> Result<Vec<Record>, String> {
    let mut records = Vec::new();
    for (n, line) in input.lines().enumerate() {
        let line = line.map_err(|e| format!("line {}: {e}", n + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        records.push(serde_json::from_str(&line).map_err(|e| format!("line {}: {e}", n + 1))?);
    }
    Ok(records)
}
