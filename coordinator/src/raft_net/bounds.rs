//! Sanity bounds on what a peer sends, checked after decoding and before openraft
//! sees a message.
//!
//! openraft trusts its peers: a vote of term `u64::MAX` is persisted and the next
//! election overflows `term + 1`; a snapshot chunk at a huge offset makes the receiver
//! grow its buffer to that offset. Peers are authenticated (mutual TLS), so these
//! bounds are a second line against a buggy or compromised peer, not the first.
//!
//! Invariant: every bound is far beyond what a real cluster reaches (a term per
//! millisecond for 8,900 years stays below [`TERM_MAX`]), so a healthy peer never
//! trips one, and arithmetic on any accepted value cannot overflow.

use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use openraft::{LogId, Vote};
use raft_store::raft::{NodeId, TypeConfig};

pub use crate::limits::{INDEX_MAX, SNAPSHOT_BYTES_MAX, TERM_MAX};

/// Why a message was refused.
pub type Refusal = String;

fn vote(v: &Vote<NodeId>, from: NodeId) -> Result<(), Refusal> {
    if v.leader_id.term > TERM_MAX {
        return Err(format!("term {} is beyond {TERM_MAX}", v.leader_id.term));
    }
    if v.leader_id.node_id != from {
        return Err(format!(
            "node {from} sent a vote for node {}",
            v.leader_id.node_id
        ));
    }
    Ok(())
}

fn log_id(l: Option<&LogId<NodeId>>, what: &str) -> Result<(), Refusal> {
    match l {
        Some(l) if l.index > INDEX_MAX || l.leader_id.term > TERM_MAX => Err(format!(
            "{what} {}-{} is beyond the bounds",
            l.leader_id.term, l.index
        )),
        _ => Ok(()),
    }
}

pub fn append(rpc: &AppendEntriesRequest<TypeConfig>, from: NodeId) -> Result<(), Refusal> {
    vote(&rpc.vote, from)?;
    log_id(rpc.prev_log_id.as_ref(), "prev_log_id")?;
    log_id(rpc.leader_commit.as_ref(), "leader_commit")?;
    // openraft sends at most `max_payload_entries` per message (raft_store::raft).
    let entries_max = raft_store::limits::ENTRIES_PER_APPEND_MAX;
    if rpc.entries.len() > entries_max {
        return Err(format!(
            "{} entries in one AppendEntries, beyond {entries_max}",
            rpc.entries.len()
        ));
    }
    for e in &rpc.entries {
        log_id(Some(&e.log_id), "entry")?;
        if e.log_id.leader_id.term > rpc.vote.leader_id.term {
            return Err("an entry's term is beyond the leader's".into());
        }
    }
    Ok(())
}

pub fn vote_request(rpc: &VoteRequest<NodeId>, from: NodeId) -> Result<(), Refusal> {
    vote(&rpc.vote, from)?;
    log_id(rpc.last_log_id.as_ref(), "last_log_id")
}

pub fn snapshot(rpc: &InstallSnapshotRequest<TypeConfig>, from: NodeId) -> Result<(), Refusal> {
    vote(&rpc.vote, from)?;
    log_id(rpc.meta.last_log_id.as_ref(), "snapshot last_log_id")?;
    let end = rpc.offset.checked_add(rpc.data.len() as u64);
    match end {
        Some(end) if end <= SNAPSHOT_BYTES_MAX => Ok(()),
        _ => Err(format!(
            "snapshot chunk at offset {} (+{} bytes) is beyond {SNAPSHOT_BYTES_MAX} bytes",
            rpc.offset,
            rpc.data.len()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::{CommittedLeaderId, LeaderId};

    fn vote_req(term: u64, node: NodeId, last: Option<(u64, u64)>) -> VoteRequest<NodeId> {
        VoteRequest {
            vote: Vote {
                leader_id: LeaderId::new(term, node),
                committed: false,
            },
            last_log_id: last.map(|(t, i)| LogId::new(CommittedLeaderId::new(t, node), i)),
        }
    }

    #[test]
    fn a_sane_vote_passes_and_forged_ones_do_not() {
        assert!(vote_request(&vote_req(5, 2, Some((4, 100))), 2).is_ok());
        // The reviewer's forged term.
        assert!(vote_request(&vote_req(u64::MAX, 2, None), 2).is_err());
        // A vote in another node's name.
        assert!(vote_request(&vote_req(5, 3, None), 2).is_err());
        assert!(vote_request(&vote_req(5, 2, Some((4, u64::MAX))), 2).is_err());
        assert!(vote_request(&vote_req(5, 2, Some((u64::MAX, 1))), 2).is_err());
    }

    fn append_req(entries: usize) -> AppendEntriesRequest<TypeConfig> {
        let entries = (1..=entries as u64)
            .map(|i| openraft::Entry {
                log_id: LogId::new(CommittedLeaderId::new(5, 2), i),
                payload: openraft::EntryPayload::Blank,
            })
            .collect();
        AppendEntriesRequest {
            vote: vote_req(5, 2, None).vote,
            prev_log_id: None,
            leader_commit: None,
            entries,
        }
    }

    #[test]
    fn an_append_longer_than_openraft_sends_is_refused() {
        let most = raft_store::limits::ENTRIES_PER_APPEND_MAX;
        assert!(append(&append_req(most), 2).is_ok());
        assert!(append(&append_req(most + 1), 2).is_err());
        assert!(append(&append_req(1), 3).is_err(), "sent in another's name");
    }
}
