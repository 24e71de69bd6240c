//! The rejoin gate: a replica that lost its state for a shard (it started with none,
//! in a cluster where the shard may already exist: a replaced disk), or whose state
//! went back in time (a data dir restored from a backup), may hold none of the entries
//! it acknowledged before, nor remember its vote. Until a leader has caught it up, it
//! must not help elect a leader that lacks committed entries, nor stand itself.
//!
//! Rules, per shard:
//! - A replica that starts with no state for a shard starts **closed**, and the
//!   closed state is written to `rejoin.json` in the data dir before its group starts,
//!   so a restart half-way through catching up stays closed (the store then holds
//!   some of the shard, which alone would look like a healthy replica).
//! - A replica that starts with state **probes**: it is closed (in memory) until every
//!   other member of the shard told it its last log position. If any holds a later
//!   one than this replica (Raft's order: term, then index), this replica's log may be
//!   older than what it acknowledged, so it closes for good, as above; otherwise it
//!   opens. A replica that merely lagged closes too, and is caught up in moments.
//! - While closed, the replica does not start elections (openraft's runtime `elect`
//!   switch) and refuses every vote, except, once it knows its target, a vote for a
//!   candidate whose last log position is at least the target (below); it still
//!   stores what a leader sends and acknowledges it, which is safe: those
//!   acknowledgements are durable.
//! - The **target**: the latest last log position the other members report
//!   (`rejoin`, over the peer port), asked after the start and persisted, once every
//!   other voter of the newest configuration known answered. Every committed entry is
//!   on a majority of the voters; this replica may have been one of them, so only the
//!   answers of all the others are sure to include it. A replica that lost state does
//!   not take the answer of another that is catching up too (`catching_up` in its
//!   status): two such are a majority lost in a group of three, which only an operator
//!   may settle (`seatd reform`, which makes one survivor the only voter). A log at least as up to date as the target holds every entry that
//!   was committed when the answers were given (Raft's leader-completeness argument),
//!   so the replica may vote for a candidate with such a log (which keeps a cluster
//!   restarted whole electable: the replicas that lag vote for the most advanced) and
//!   opens once it has applied an entry at or past the target. Until every other
//!   member answered, the gate stays closed (a shard with a member down and a member
//!   wiped or restarted waits for the one that is down, which is the price of not
//!   losing entries; the re-form command is the operator's way out).
//! - The closed state kept in the file is re-examined at every start too: the target
//!   only rises with fresh answers (the file may have come back with a restored
//!   backup), and a replica that had applied its target before it stopped probes as a
//!   plain replica.
//! - A leader in the highest term anyone reports is evidence enough even when other
//!   voters are catching up: it was elected through the others' gates and holds every
//!   committed entry.
//! - **Vote floor**: a replica votes only in terms above the highest its peers
//!   reported when it probed, since it may have voted in those before it lost state.
//! - A node that led before it stopped must win an election again: its committed
//!   self-vote is made uncommitted before the group starts (openraft would otherwise
//!   resume the term at once, past every gate), and groups start with elections off
//!   until their gate allows them.
//! - A brand-new group is created by one node ([`VoteGate::open`] after it checked that
//!   no node has any state for the shard) as a group of itself alone; the other
//!   members join as learners and catch up like any rejoining replica (see
//!   `membership`), so no closed gate ever has to vote for the first leader.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use openraft::raft::VoteRequest;
use openraft::{LogId, Raft};
use raft_store::raft::{NodeId, TypeConfig};
use serde::{Deserialize, Serialize};

use crate::error::StartError;

/// The gate file, in a node's data dir.
pub const GATE_FILE: &str = "rejoin.json";
use crate::limits::GATE_FILE_BYTES_MAX;

/// A position in a Raft log, ordered as openraft orders log ids: by term, then the
/// node whose leadership wrote the entry (openraft may have two leaders in a term,
/// one after the other), then index. The field order gives the derived order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct LogPos {
    pub term: u64,
    #[serde(default)]
    pub node: NodeId,
    pub index: u64,
}

impl From<&LogId<NodeId>> for LogPos {
    fn from(l: &LogId<NodeId>) -> Self {
        Self {
            term: l.leader_id.term,
            node: l.leader_id.node_id,
            index: l.index,
        }
    }
}

/// The gates of a node: the closed ones of its gate file (shard → target, `None`
/// until every other member answered), and those probing since this start.
#[derive(Clone)]
pub struct GateBook {
    path: PathBuf,
    closed: Arc<Mutex<BTreeMap<u32, Option<LogPos>>>>,
    probing: Arc<Mutex<BTreeSet<u32>>>,
    /// Per shard, the highest term the other members reported at this start: this
    /// replica may have voted in it before it lost state, so it votes only above.
    floors: Arc<Mutex<BTreeMap<u32, u64>>>,
}

impl GateBook {
    /// Reads `dir`'s gate file (none: every gate open).
    pub fn open(dir: &Path) -> Result<Self, StartError> {
        let path = dir.join(GATE_FILE);
        let bad = |e: String| StartError::Config(format!("{}: {e}", path.display()));
        let closed = match std::fs::metadata(&path) {
            Ok(m) if m.len() > GATE_FILE_BYTES_MAX => {
                return Err(bad(format!("larger than {GATE_FILE_BYTES_MAX} bytes")))
            }
            Ok(_) => {
                let text = std::fs::read_to_string(&path).map_err(|e| bad(e.to_string()))?;
                serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(bad(e.to_string())),
        };
        Ok(Self {
            path,
            closed: Arc::new(Mutex::new(closed)),
            probing: Default::default(),
            floors: Default::default(),
        })
    }

    /// Writes the closed gates: a new file, synced, renamed over the old one.
    fn persist(&self, closed: &BTreeMap<u32, Option<LogPos>>) -> Result<(), StartError> {
        let bad = |e: std::io::Error| StartError::Config(format!("{}: {e}", self.path.display()));
        let tmp = self.path.with_extension("json.tmp");
        let text = serde_json::to_string(closed).expect("a map of numbers");
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp).map_err(bad)?;
            f.write_all(text.as_bytes()).map_err(bad)?;
            f.sync_all().map_err(bad)?;
        }
        std::fs::rename(&tmp, &self.path).map_err(bad)?;
        if let Some(dir) = self.path.parent() {
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(bad)?;
        }
        Ok(())
    }

    fn update(
        &self,
        f: impl FnOnce(&mut BTreeMap<u32, Option<LogPos>>) -> bool,
    ) -> Result<(), StartError> {
        let mut closed = self.closed.lock().unwrap_or_else(|p| p.into_inner());
        let mut next = closed.clone();
        if f(&mut next) {
            self.persist(&next)?;
            *closed = next;
        }
        Ok(())
    }

    fn probing(&self) -> std::sync::MutexGuard<'_, BTreeSet<u32>> {
        self.probing.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The gate of `shard`: closed if the file says so, or (written now) if the
    /// replica starts with no state for it; and probing in every case, so that even a
    /// target kept in the file is raised by what the members say now (the file may
    /// have come back with a restored backup).
    pub fn gate(&self, shard: u32, started_empty: bool) -> Result<VoteGate, StartError> {
        if started_empty {
            self.update(|c| {
                if c.contains_key(&shard) {
                    return false;
                }
                c.insert(shard, None);
                true
            })?;
        }
        self.probing().insert(shard);
        Ok(VoteGate {
            shard,
            book: self.clone(),
        })
    }

    /// Whether the gate file keeps `shard` closed (the replica is catching up).
    pub fn closed_on_disk(&self, shard: u32) -> bool {
        self.state(shard).is_some()
    }

    fn state(&self, shard: u32) -> Option<Option<LogPos>> {
        let closed = self.closed.lock().unwrap_or_else(|p| p.into_inner());
        closed.get(&shard).copied()
    }
}

/// One shard's gate (see the module doc).
#[derive(Clone)]
pub struct VoteGate {
    shard: u32,
    book: GateBook,
}

impl VoteGate {
    /// Whether the gate is closed (probing, or the replica is catching up).
    pub fn is_closed(&self) -> bool {
        self.is_probing() || self.book.state(self.shard).is_some()
    }

    /// Whether the gate is closed on disk: the replica lost state or found its log
    /// behind, and is catching up.
    pub fn is_catching_up(&self) -> bool {
        self.book.closed_on_disk(self.shard)
    }

    fn is_probing(&self) -> bool {
        self.book.probing().contains(&self.shard)
    }

    /// Whether the gate waits for every other member's last log position.
    pub fn needs_target(&self) -> bool {
        self.is_probing() || self.book.state(self.shard) == Some(None)
    }

    /// The log position the replica must apply before the gate opens, once known.
    pub fn target(&self) -> Option<LogPos> {
        self.book.state(self.shard).flatten()
    }

    /// Makes `raft` follow the gate: no elections while it is closed.
    pub fn apply_to(&self, raft: &Raft<TypeConfig>) {
        raft.runtime_config().elect(!self.is_closed());
    }

    /// Opens the gate for good (a group this node creates, or a replica caught up).
    pub fn open(&self, raft: &Raft<TypeConfig>) -> Result<(), StartError> {
        self.open_book()?;
        raft.runtime_config().elect(true);
        Ok(())
    }

    fn open_book(&self) -> Result<(), StartError> {
        self.book.update(|c| c.remove(&self.shard).is_some())?;
        self.book.probing().remove(&self.shard);
        Ok(())
    }

    /// Takes the latest last log position of every other member (`None`: none has
    /// an entry), with `mine`, this replica's: a probing gate opens if no other member
    /// is ahead and closes for good (persisted) if one is; a closed gate records its
    /// target, unless it has one. Returns whether the gate is still closed; the
    /// caller then applies the gate to its group ([`VoteGate::apply_to`]).
    pub fn settle(&self, others: Option<LogPos>, mine: Option<LogPos>) -> Result<bool, StartError> {
        let shard = self.shard;
        if self.is_probing() && self.book.closed_on_disk(shard) {
            // Closed already (it lost state, or was behind, at an earlier start): the
            // target only ever rises.
            let fresh = others.unwrap_or_default();
            self.book.update(|c| {
                let t = c.entry(shard).or_insert(None);
                let raised = Some(t.map_or(fresh, |t| t.max(fresh)));
                let changed = *t != raised;
                *t = raised;
                changed
            })?;
            self.book.probing().remove(&shard);
            return Ok(true);
        }
        if self.is_probing() {
            if others <= mine {
                self.open_book()?;
                return Ok(false);
            }
            tracing::warn!(
                shard,
                ?mine,
                ?others,
                "this replica's log is behind another member's (lagging, or restored \
                 from a backup): it votes only for logs at least as far until caught up"
            );
            self.book.update(|c| {
                c.insert(shard, others);
                true
            })?;
            self.book.probing().remove(&shard);
            return Ok(true);
        }
        // Closed with no state at the start: other members without an entry count as
        // position 0, so any applied entry reaches it.
        let target = others.unwrap_or_default();
        self.book.update(|c| match c.get_mut(&shard) {
            Some(t @ None) => {
                *t = Some(target);
                true
            }
            _ => false,
        })?;
        Ok(self.is_closed())
    }

    /// At start: a gate closed on disk whose target the replica had applied already
    /// (it stopped before it noticed) is no longer catching up; it probes like any
    /// replica with state, which is as safe (a stale file from a restored backup gets
    /// the same fresh comparison) and lets two such replicas count each other's answers.
    pub fn reached_before_start(&self, applied: Option<LogPos>) -> Result<bool, StartError> {
        let reached =
            self.is_probing() && matches!((self.target(), applied), (Some(t), Some(a)) if a >= t);
        if reached {
            self.book.update(|c| c.remove(&self.shard).is_some())?;
        }
        Ok(reached)
    }

    /// Records the highest term the other members reported (see [`GateBook`]'s floors).
    pub fn set_vote_floor(&self, term: u64) {
        let mut floors = self.book.floors.lock().unwrap_or_else(|p| p.into_inner());
        let floor = floors.entry(self.shard).or_insert(0);
        *floor = (*floor).max(term);
    }

    fn vote_floor(&self) -> u64 {
        let floors = self.book.floors.lock().unwrap_or_else(|p| p.into_inner());
        floors.get(&self.shard).copied().unwrap_or(0)
    }

    /// Opens the gate if the replica has applied an entry at or past its target.
    pub fn open_if_caught_up(&self, raft: &Raft<TypeConfig>) -> bool {
        if self.is_probing() {
            return false;
        }
        let Some(state) = self.book.state(self.shard) else {
            return true;
        };
        let Some(target) = state else { return false };
        let applied = raft
            .metrics()
            .borrow()
            .last_applied
            .as_ref()
            .map(LogPos::from);
        if applied.is_some_and(|a| a >= target) {
            match self.open(raft) {
                Ok(()) => {
                    tracing::info!(shard = self.shard, ?target, "caught up: votes again");
                    return true;
                }
                Err(e) => tracing::warn!(shard = self.shard, error = %e, "cannot open the gate"),
            }
        }
        false
    }

    /// Whether `raft` may take part in `request`'s election: an open gate may; a
    /// closed one only for a candidate whose log reaches the target (module doc).
    pub(super) fn admits(
        &self,
        raft: &Raft<TypeConfig>,
        request: &VoteRequest<NodeId>,
    ) -> Result<(), String> {
        self.above_floor(request.vote.leader_id.term)?;
        if self.open_if_caught_up(raft) {
            return Ok(());
        }
        let candidate = request.last_log_id.as_ref().map(LogPos::from);
        if self.admits_while_closed(candidate) {
            return Ok(());
        }
        Err(match (self.is_probing(), self.target()) {
            (true, _) | (false, None) => "this replica's rejoin gate is closed: it is \
                comparing its log with the other members'"
                .to_string(),
            (false, Some(t)) => format!(
                "this replica's rejoin gate is closed: it votes only for a log at or past \
                 {t:?} until it has applied that far"
            ),
        })
    }

    /// A vote this replica may have cast before it lost state is not cast again.
    fn above_floor(&self, term: u64) -> Result<(), String> {
        let floor = self.vote_floor();
        if term <= floor {
            return Err(format!(
                "this replica votes only in terms above {floor}, the highest its peers \
                 reported when it started (it may have voted in those before)"
            ));
        }
        Ok(())
    }

    /// A closed gate's answer: yes only for a candidate's log at or past a known
    /// target (none while probing).
    fn admits_while_closed(&self, candidate: Option<LogPos>) -> bool {
        match (self.is_probing(), self.target()) {
            (false, Some(target)) => candidate.is_some_and(|c| c >= target),
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(term: u64, index: u64) -> Option<LogPos> {
        Some(LogPos {
            term,
            node: 1,
            index,
        })
    }

    #[test]
    fn a_closed_gate_and_its_target_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let book = GateBook::open(dir.path()).unwrap();
        let g = book.gate(3, true).unwrap();
        assert!(g.is_closed() && g.needs_target());
        assert_eq!(g.target(), None);
        assert!(g.settle(pos(2, 1_000), None).unwrap());
        assert!(g.settle(pos(3, 2_000), None).unwrap()); // the first target stays
        assert_eq!(g.target(), pos(2, 1_000));
        // Restarted: the store now holds part of the shard, so it does not start
        // empty, but the file keeps the gate closed; it probes again, and the target
        // only rises (the file may be part of a restored backup).
        let again = GateBook::open(dir.path()).unwrap().gate(3, false).unwrap();
        assert!(again.is_catching_up() && again.needs_target());
        assert!(again.settle(pos(1, 5_000), None).unwrap());
        assert_eq!(again.target(), pos(2, 1_000), "an earlier term is lower");
        let third = GateBook::open(dir.path()).unwrap().gate(3, false).unwrap();
        assert!(third.settle(pos(3, 10), pos(2, 900)).unwrap());
        assert_eq!(third.target(), pos(3, 10));
    }

    #[test]
    fn a_replica_with_state_probes_and_closes_only_behind_another_member() {
        let dir = tempfile::tempdir().unwrap();
        let book = GateBook::open(dir.path()).unwrap();
        // Level with the others (or ahead): opens, and the file stays empty.
        let level = book.gate(1, false).unwrap();
        assert!(level.is_closed() && level.needs_target());
        assert!(!level.settle(pos(4, 900), pos(4, 900)).unwrap());
        assert!(!level.is_closed());
        // A later term wins over a longer log of an earlier one.
        let newer_term = book.gate(2, false).unwrap();
        assert!(!newer_term.settle(pos(4, 900), pos(5, 10)).unwrap());
        // Behind (a restored backup, or a plain lag): closed for good, with the target.
        let behind = book.gate(3, false).unwrap();
        assert!(behind.settle(pos(4, 900), pos(4, 300)).unwrap());
        assert_eq!(behind.target(), pos(4, 900));
        let restarted = GateBook::open(dir.path()).unwrap();
        assert!(restarted.gate(3, false).unwrap().is_closed());
        assert!(restarted.gate(1, false).unwrap().target().is_none());
        // While closed it votes only for a log reaching the target, term first.
        assert!(behind.admits_while_closed(pos(4, 900)));
        assert!(behind.admits_while_closed(pos(5, 1)));
        assert!(!behind.admits_while_closed(pos(4, 899)));
        assert!(!behind.admits_while_closed(pos(3, 5_000)));
        assert!(!behind.admits_while_closed(None));
        // Probing, or closed without a target: no vote at all.
        assert!(!book.gate(5, false).unwrap().admits_while_closed(pos(9, 9)));
        assert!(!book.gate(6, true).unwrap().admits_while_closed(pos(9, 9)));
        // Stopped after applying its target, before opening: probes as a plain replica.
        let restarted = GateBook::open(dir.path()).unwrap();
        let reached = restarted.gate(3, false).unwrap();
        assert!(!reached.reached_before_start(pos(4, 899)).unwrap());
        assert!(reached.reached_before_start(pos(4, 900)).unwrap());
        assert!(!reached.is_catching_up() && reached.needs_target());
        // Two leaders in one term: the later node's entries rank higher (openraft).
        let rival = LogPos {
            term: 4,
            node: 2,
            index: 10,
        };
        assert!(pos(4, 900) < Some(rival));
        // Every other member without entries: nothing to be behind.
        assert!(!book.gate(4, false).unwrap().settle(None, None).unwrap());
    }

    #[test]
    fn no_vote_at_or_below_the_highest_term_the_peers_reported() {
        let dir = tempfile::tempdir().unwrap();
        let gate = GateBook::open(dir.path()).unwrap().gate(1, false).unwrap();
        assert!(gate.above_floor(1).is_ok(), "no floor before the probe");
        gate.set_vote_floor(7);
        gate.set_vote_floor(5); // only rises
        assert!(gate.above_floor(7).is_err());
        assert!(gate.above_floor(3).is_err());
        assert!(gate.above_floor(8).is_ok());
    }

    #[test]
    fn a_corrupt_gate_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(GATE_FILE), b"{not json").unwrap();
        assert!(GateBook::open(dir.path()).is_err());
    }
}
