//! What a run needs from the cluster it breaks, whether its nodes are processes
//! behind proxies ([`crate::cluster::Cluster`]) or containers on a Docker network
//! ([`crate::compose::ComposeCluster`]): endpoints for the buyers, a direct line to
//! each node for the final reads, and the faults it can inject.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::time::{Duration, Instant};

use seatd_proto::raft::raft_client::RaftClient;
use seatd_proto::raft::LocalStatusRequest;
use seatd_proto::v1 as pb;
use seatd_proto::v1::seats_client::SeatsClient;
use tonic::transport::Channel;

use crate::run::Fault;

pub trait Target {
    fn node_ids(&self) -> Vec<u64>;
    /// Where buyers connect (frontends and nodes).
    fn endpoints(&self) -> Vec<String>;
    /// A node's own address, for reading its replica.
    fn node_endpoint(&self, id: u64) -> String;
    /// An operator's token, where the cluster checks tokens (`None`: it does not).
    fn operator_token(&self) -> Option<String> {
        None
    }
    /// A client of node `id`'s peer port (mutual TLS), which alone gives digests.
    fn peer_status_client(&self, id: u64) -> Option<RaftClient<Channel>>;
    fn shards(&self) -> u32;
    /// Whether this target can inject `fault`.
    fn supports(&self, fault: Fault) -> bool;
    /// Injects `fault` (aimed at `leader` where it picks a node); says what it did.
    fn inject(
        &self,
        fault: Fault,
        leader: u64,
        rng: &mut fastrand::Rng,
    ) -> impl Future<Output = String>;
    /// Undoes every fault: links healed, processes resumed and running again.
    fn heal(&self) -> impl Future<Output = ()>;
    /// The end of each node's log, for a failure report.
    fn log_tails(&self, lines: usize) -> String;
}

/// `message` as a request carrying `token` (when there is one) as its bearer token.
pub fn bearing<T>(message: T, token: Option<&str>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(value) = token.and_then(|t| format!("Bearer {t}").parse().ok()) {
        request.metadata_mut().insert("authorization", value);
    }
    request
}

pub fn node_client(t: &impl Target, id: u64) -> SeatsClient<Channel> {
    let channel = tonic::transport::Endpoint::from_shared(t.node_endpoint(id))
        .expect("valid node url")
        .connect_timeout(Duration::from_secs(1))
        .timeout(Duration::from_secs(5))
        .connect_lazy();
    SeatsClient::new(channel).max_decoding_message_size(64 << 20)
}

/// A client of the peer port at `addr`, presenting node `id`'s certificate from
/// `certs` (the harness acts as that node to read its digests).
pub fn peer_client(certs: &std::path::Path, id: u64, addr: &str) -> Option<RaftClient<Channel>> {
    let tls = coordinator::tls::PeerTls::load(certs, id).ok()?;
    let channel = tonic::transport::Endpoint::from_shared(format!("https://{addr}"))
        .ok()?
        .tls_config(tls.client(id))
        .ok()?
        .connect_timeout(Duration::from_secs(1))
        .timeout(Duration::from_secs(5))
        .connect_lazy();
    Some(RaftClient::new(channel).max_decoding_message_size(64 << 20))
}

/// Node `id`'s own view, with its shards' digests (over its peer port).
pub async fn local_status(t: &impl Target, id: u64) -> Option<pb::ClusterStatus> {
    let mut c = t.peer_status_client(id)?;
    c.local_status(LocalStatusRequest { digest: true })
        .await
        .ok()
        .map(|r| r.into_inner())
}

/// The leader of each shard, where every member that answers agrees on it.
pub async fn leaders(t: &impl Target) -> BTreeMap<u32, u64> {
    let mut votes: BTreeMap<u32, BTreeSet<Option<u64>>> = BTreeMap::new();
    let mut leading: BTreeMap<u32, u64> = BTreeMap::new();
    for id in t.node_ids() {
        let Some(s) = local_status(t, id).await else {
            continue;
        };
        for sh in s
            .shards
            .iter()
            .filter(|s| s.members.contains(&s.reported_by))
        {
            votes.entry(sh.shard).or_default().insert(sh.leader);
            // A new shard starts as a group of one and takes in the others as they
            // catch up: it counts once it has its full set of voters.
            let voters = t.node_ids().len().min(3);
            if sh.role_kind == pb::ShardRole::Leader as i32 && sh.members.len() == voters {
                leading.insert(sh.shard, id);
            }
        }
    }
    leading
        .into_iter()
        .filter(|(shard, l)| {
            votes
                .get(shard)
                .is_some_and(|v| v.len() == 1 && v.contains(&Some(*l)))
        })
        .collect()
}

pub async fn wait_ready(t: &impl Target, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if leaders(t).await.len() == t.shards() as usize {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// Waits until every shard's replicas agree (applied index and digest); returns
/// what still differs.
pub async fn wait_converged(t: &impl Target, within: Duration) -> Vec<String> {
    let deadline = Instant::now() + within;
    loop {
        let mut views: BTreeMap<u32, BTreeSet<(u64, Vec<u8>)>> = BTreeMap::new();
        let mut missing = Vec::new();
        for id in t.node_ids() {
            match local_status(t, id).await {
                Some(s) => {
                    for sh in s
                        .shards
                        .into_iter()
                        .filter(|s| s.members.contains(&s.reported_by))
                    {
                        views
                            .entry(sh.shard)
                            .or_default()
                            .insert((sh.applied_index, sh.digest));
                    }
                }
                None => missing.push(id),
            }
        }
        let differing: Vec<String> = views
            .iter()
            .filter(|(_, v)| v.len() > 1)
            .map(|(shard, v)| {
                format!(
                    "shard {shard}: replicas at {:?}",
                    v.iter().map(|x| x.0).collect::<Vec<_>>()
                )
            })
            .chain(missing.iter().map(|id| format!("node {id} did not answer")))
            .collect();
        if differing.is_empty() || Instant::now() > deadline {
            return differing;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
