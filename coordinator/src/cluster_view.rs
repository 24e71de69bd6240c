//! Cluster views: what each node reports about the shards it hosts, and the best
//! view of each shard among the answers. Read by bootstrap, membership, rejoin, the
//! frontend's leader map and `ClusterStatus`.
//!
//! A node asks its peers over the peer port (and learns where each serves clients
//! from the answer); a frontend asks the nodes' client ports. Every ask is bounded
//! by its timeout; a node that does not answer is `None`, never an error.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use raft_store::raft::NodeId;
use seatd_proto::raft::raft_client::RaftClient;
use seatd_proto::raft::LocalStatusRequest;
use seatd_proto::v1 as pb;
use tonic::{Request, Response};

use crate::error::Error;
use crate::forward::forwarded;
use crate::peers::Links;
use crate::process::Process;

/// Asks every node in `nodes` for its local view (this node answers itself), each
/// within `timeout`; `None` for a node that did not answer. A node asks its peers
/// over the peer port (and learns where each serves clients from the answer); a
/// frontend asks the nodes' client ports.
pub async fn peer_views(
    node: &Arc<Process>,
    nodes: &[NodeId],
    timeout: Duration,
) -> Result<Vec<(NodeId, Option<pb::ClusterStatus>)>, Error> {
    let mut tasks = tokio::task::JoinSet::new();
    for &peer in nodes {
        let node = node.clone();
        tasks.spawn(async move {
            if peer == node.id {
                return (peer, Some(local_status(&node, false)));
            }
            let view = tokio::time::timeout(timeout, view_of(&node, peer, timeout))
                .await
                .ok()
                .flatten();
            if let Some(me) = view.as_ref().and_then(|v| v.nodes.first()) {
                if me.id == peer && matches!(node.links, Links::Peers(_)) {
                    node.learn_client_addr(peer, &me.addr);
                }
            }
            (peer, view)
        });
    }
    let mut views = Vec::with_capacity(nodes.len());
    while let Some(joined) = tasks.join_next().await {
        views.push(joined.map_err(|e| Error::Unavailable(format!("status task: {e}")))?);
    }
    views.sort_by_key(|(id, _)| *id);
    Ok(views)
}

/// Node `peer`'s own view, without digests.
async fn view_of(node: &Process, peer: NodeId, timeout: Duration) -> Option<pb::ClusterStatus> {
    let channel = node.channel_to(peer).ok()?;
    match &node.links {
        Links::Peers(_) => {
            let mut client = RaftClient::new(channel);
            let mut req = Request::new(LocalStatusRequest { digest: false });
            req.set_timeout(timeout);
            client
                .local_status(req)
                .await
                .ok()
                .map(Response::into_inner)
        }
        Links::Clients(_) => {
            let mut client = pb::seats_client::SeatsClient::new(channel);
            let req = forwarded(
                pb::ClusterStatusRequest {
                    local: true,
                    digest: false,
                },
                0,
                timeout,
            );
            client
                .cluster_status(req)
                .await
                .ok()
                .map(Response::into_inner)
        }
    }
}

/// This node's own view of the shards it hosts, with each shard's state digest when
/// `with_digest` (asked over the peer port only: it reads a shard's whole state).
pub(crate) fn local_status(node: &Process, with_digest: bool) -> pb::ClusterStatus {
    let mut shards: Vec<pb::ShardStatus> = node
        .shards
        .values()
        .map(|s| {
            let mut view = s.status(with_digest);
            let gate = node.gates.get(&s.id);
            view.rejoining = gate.is_some_and(|g| g.is_closed());
            view.catching_up = gate.is_some_and(|g| g.is_catching_up());
            view
        })
        .collect();
    shards.sort_by_key(|s| s.shard);
    pb::ClusterStatus {
        nodes: vec![pb::NodeStatus {
            id: node.id,
            addr: node.client_addr(node.id).unwrap_or_default(),
            reachable: true,
        }],
        shards,
    }
}

/// The best view of each shard among the answers: a leader's (highest term first),
/// else the most advanced replica's.
pub(crate) fn merge_views(
    node: &Process,
    views: Vec<(NodeId, Option<pb::ClusterStatus>)>,
) -> pb::ClusterStatus {
    let mut best: BTreeMap<u32, pb::ShardStatus> = BTreeMap::new();
    let mut nodes = Vec::new();
    for (id, view) in views {
        nodes.push(pb::NodeStatus {
            id,
            addr: node.client_addr(id).unwrap_or_default(),
            reachable: view.is_some(),
        });
        for mut s in view.map(|v| v.shards).unwrap_or_default() {
            s.digest.clear();
            let rank =
                |s: &pb::ShardStatus| (crate::shard::reports_leader(s), s.term, s.applied_index);
            match best.get(&s.shard) {
                Some(b) if rank(b) >= rank(&s) => {}
                _ => {
                    best.insert(s.shard, s);
                }
            }
        }
    }
    let shards = (0..node.cluster.shards())
        .map(|shard| {
            best.remove(&shard).unwrap_or_else(|| pb::ShardStatus {
                shard,
                members: node.cluster.members(shard),
                ..Default::default()
            })
        })
        .collect();
    pb::ClusterStatus { nodes, shards }
}
