//! Where things live: which shard an event belongs to, and which nodes replicate a
//! shard.
//!
//! Both are pure functions of the cluster's configuration (the `--peers` list and the
//! shard count), so every node and every frontend computes the same answer without
//! asking anyone.
//!
//! Invariants:
//! - `shard_of` is `EventId::shard`: FNV-1a (64 bit) of the event id's bytes, modulo the
//!   shard count (clients that route to leaders compute it too). It
//!   is part of the on-disk contract: changing it, or the shard count of an existing
//!   cluster, would strand events in the wrong group. A test pins its values.
//! - A shard is replicated on [`REPLICAS`] nodes (all of them when there are fewer):
//!   the nodes at positions `shard, shard+1, ...` (mod n) of the id-sorted node list,
//!   so shards spread evenly and each node leads some.

use std::collections::BTreeMap;

use raft_store::raft::NodeId;
use raft_store::EventId;

use crate::error::StartError;

use crate::limits::{NODES_MAX, REPLICAS_PER_SHARD as REPLICAS, SHARDS_MAX};

/// The static shape of a cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cluster {
    nodes: BTreeMap<NodeId, String>,
    shards: u32,
}

impl Cluster {
    pub fn new(nodes: BTreeMap<NodeId, String>, shards: u32) -> Result<Self, StartError> {
        if nodes.is_empty() || nodes.len() > NODES_MAX {
            return Err(StartError::Config(format!(
                "a cluster has 1..={NODES_MAX} nodes, not {}",
                nodes.len()
            )));
        }
        if nodes.contains_key(&0) {
            return Err(StartError::Config("node ids start at 1".into()));
        }
        if shards == 0 || shards > SHARDS_MAX {
            return Err(StartError::Config(format!(
                "--shards must be 1..={SHARDS_MAX}, not {shards}"
            )));
        }
        Ok(Self { nodes, shards })
    }

    /// Parses `1=127.0.0.1:7001,2=127.0.0.1:7002`.
    pub fn parse_peers(text: &str) -> Result<BTreeMap<NodeId, String>, StartError> {
        let mut nodes = BTreeMap::new();
        for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let bad =
                || StartError::Config(format!("peer {item:?} is not of the form ID=HOST:PORT"));
            let (id, addr) = item.split_once('=').ok_or_else(bad)?;
            let id: NodeId = id.trim().parse().map_err(|_| bad())?;
            let addr = addr.trim();
            if addr.is_empty() || !addr.contains(':') {
                return Err(bad());
            }
            if nodes.insert(id, addr.to_string()).is_some() {
                return Err(StartError::Config(format!(
                    "node {id} is listed twice in --peers"
                )));
            }
        }
        Ok(nodes)
    }

    pub fn shards(&self) -> u32 {
        self.shards
    }

    pub fn nodes(&self) -> &BTreeMap<NodeId, String> {
        &self.nodes
    }

    /// Node `node`'s address; `None` for a node not in the cluster, or one a frontend
    /// has not learned the address of (kept as an empty string).
    pub fn addr(&self, node: NodeId) -> Option<&str> {
        self.nodes
            .get(&node)
            .map(String::as_str)
            .filter(|a| !a.is_empty())
    }

    /// The shard an event lives in.
    pub fn shard_of(&self, event: &EventId) -> u32 {
        event.shard(self.shards)
    }

    /// The nodes replicating `shard`, in id order.
    pub fn members(&self, shard: u32) -> Vec<NodeId> {
        assert!(shard < self.shards, "shard {shard} out of range");
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        let n = ids.len();
        let mut members: Vec<NodeId> = (0..REPLICAS.min(n))
            .map(|k| ids[(shard as usize + k) % n])
            .collect();
        members.sort_unstable();
        members
    }

    /// The shards `node` replicates.
    pub fn shards_of(&self, node: NodeId) -> Vec<u32> {
        (0..self.shards)
            .filter(|&s| self.members(s).contains(&node))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(n: u64, shards: u32) -> Cluster {
        let nodes = (1..=n)
            .map(|i| (i, format!("127.0.0.1:{}", 7000 + i)))
            .collect();
        Cluster::new(nodes, shards).unwrap()
    }

    #[test]
    fn shard_of_is_pinned() {
        // These values are an on-disk contract; see the module doc.
        let c = cluster(3, 8);
        let got: Vec<u32> = ["gig", "rock-night", "a", "stadium-2027", "foobar"]
            .iter()
            .map(|e| c.shard_of(&EventId::new(*e).unwrap()))
            .collect();
        // FNV-1a 64 of each id, modulo 8 (e.g. "a" = 0xaf63dc4c8601ec8c, "foobar" =
        // 0x85944171f73967e8).
        assert_eq!(got, [6, 3, 4, 6, 0]);
    }

    #[test]
    fn every_shard_has_three_distinct_members_spread_evenly() {
        let c = cluster(5, 10);
        let mut load = BTreeMap::new();
        for s in 0..10 {
            let m = c.members(s);
            assert_eq!(m.len(), 3);
            assert!(m.windows(2).all(|w| w[0] < w[1]));
            for id in m {
                *load.entry(id).or_insert(0) += 1;
            }
        }
        assert!(load.values().all(|&l| l == 6), "{load:?}");
        assert_eq!(c.shards_of(1).len(), 6);
        // Fewer nodes than replicas: every node holds every shard.
        let c = cluster(2, 4);
        assert!((0..4).all(|s| c.members(s) == vec![1, 2]));
    }

    #[test]
    fn peers_parse_and_reject_garbage() {
        let p = Cluster::parse_peers("1=127.0.0.1:7001, 2=127.0.0.1:7002").unwrap();
        assert_eq!(p[&2], "127.0.0.1:7002");
        for bad in ["1", "x=1.2.3.4:5", "1=", "1=host", "1=a:1,1=b:2"] {
            assert!(Cluster::parse_peers(bad).is_err(), "{bad:?} accepted");
        }
        assert!(Cluster::new(BTreeMap::new(), 8).is_err());
        assert!(Cluster::new(p.clone(), 0).is_err());
        assert!(Cluster::new(p, SHARDS_MAX + 1).is_err());
    }
}
