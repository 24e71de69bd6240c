//! The Raft transport over gRPC: openraft's network for one shard (client side) and
//! the `seatd.raft.v1.Raft` service that hands incoming messages to the right shard's
//! Raft (server side).
//!
//! Messages are openraft's own types, encoded by `raft_store::raft::encode_message`
//! and tagged with their shard. One HTTP/2 channel per peer address is shared by every
//! shard's client, so a node with 8 shards keeps 1 connection per peer, not 8.
//!
//! The vote gate: a replica that started with no state for a shard, in a cluster where
//! the shard already exists (its disk was replaced), has lost its log and its vote.
//! Until a leader has caught it up, it refuses to vote for any candidate whose log goes
//! beyond the initial membership entry: otherwise it could vote twice in one term, or
//! help elect a candidate that lacks committed entries it used to hold. Refusing a vote
//! is always safe in Raft (it looks like a lost message). Candidates of a brand-new
//! group (log ending at the initial membership entry, index 0) still get its vote, so
//! a new cluster of empty nodes can elect its first leaders.
//!
//! Errors: a peer that cannot be reached is `Unreachable` (openraft backs off); a reply
//! that does not decode, or a peer refusing the message, is a `Network` error; a Raft
//! error raised by the peer comes back as `RemoteError`. Every call is bounded by the
//! deadline openraft gives (`RPCOption::hard_ttl`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, Raft};
use raft_store::raft::{decode_message, encode_message, NodeId, TypeConfig};
use seatd_proto::raft::raft_client::RaftClient;
use seatd_proto::raft::raft_server;
use seatd_proto::raft::{RaftReply, RaftRequest};
use serde::{de::DeserializeOwned, Serialize};
use tonic::transport::{Channel, Endpoint};

/// Channels to peers, by address, shared by every shard of a node.
#[derive(Clone, Default)]
pub struct Peers {
    channels: Arc<Mutex<HashMap<String, Channel>>>,
    /// Whether each peer answered its last message: a change is logged once, instead
    /// of every shard logging every failed retry.
    reachable: Arc<Mutex<HashMap<String, bool>>>,
    /// Where each node is now (`--peers`). Raft's membership remembers the address a
    /// node had when it joined; this book wins, so a node that moved (a replaced
    /// machine, a dev cluster restarted on new ports) is found at its new address.
    book: Arc<HashMap<NodeId, String>>,
}

impl Peers {
    /// Peers found through `book` first, membership addresses second.
    pub fn with_address_book(book: HashMap<NodeId, String>) -> Self {
        Self {
            book: Arc::new(book),
            ..Self::default()
        }
    }

    fn observe(&self, addr: &str, target: NodeId, ok: bool) {
        let mut map = self.reachable.lock().unwrap_or_else(|p| p.into_inner());
        let before = map.insert(addr.to_string(), ok);
        match (before, ok) {
            (Some(true) | None, false) => {
                tracing::warn!(peer = target, %addr, "peer unreachable")
            }
            (Some(false), true) => tracing::info!(peer = target, %addr, "peer reachable again"),
            _ => {}
        }
    }

    pub fn channel(&self, addr: &str) -> Result<Channel, tonic::transport::Error> {
        let mut map = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = map.get(addr) {
            return Ok(c.clone());
        }
        // Lazy: connects on first use and reconnects after failures by itself.
        let channel = Endpoint::from_shared(format!("http://{addr}"))?
            .connect_timeout(std::time::Duration::from_secs(1))
            .tcp_nodelay(true)
            .connect_lazy();
        map.insert(addr.to_string(), channel.clone());
        Ok(channel)
    }
}

/// openraft's network factory for one shard of one node.
#[derive(Clone)]
pub struct ShardNetwork {
    pub shard: u32,
    pub from: NodeId,
    pub peers: Peers,
}

impl RaftNetworkFactory<TypeConfig> for ShardNetwork {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> PeerClient {
        PeerClient {
            net: self.clone(),
            target,
            addr: self
                .peers
                .book
                .get(&target)
                .cloned()
                .unwrap_or_else(|| node.addr.clone()),
        }
    }
}

/// The client for one peer of one shard.
pub struct PeerClient {
    net: ShardNetwork,
    target: NodeId,
    addr: String,
}

#[derive(Clone, Copy)]
enum Rpc {
    Vote,
    Append,
    Snapshot,
}

impl PeerClient {
    async fn call<Req, Resp, E>(
        &self,
        rpc: Rpc,
        request: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let channel = self
            .net
            .peers
            .channel(&self.addr)
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))?;
        let mut client = RaftClient::new(channel)
            .max_decoding_message_size(MESSAGE_BYTES_MAX)
            .max_encoding_message_size(MESSAGE_BYTES_MAX);
        let req = RaftRequest {
            shard: self.net.shard,
            from: self.net.from,
            payload: encode_message(request),
        };
        let call = async {
            match rpc {
                Rpc::Vote => client.vote(req).await,
                Rpc::Append => client.append_entries(req).await,
                Rpc::Snapshot => client.install_snapshot(req).await,
            }
        };
        let answer = tokio::time::timeout(option.hard_ttl(), call).await;
        let peers = &self.net.peers;
        let reply = match answer {
            Err(_) => {
                let e =
                    std::io::Error::new(std::io::ErrorKind::TimedOut, "raft rpc deadline passed");
                return Err(RPCError::Unreachable(Unreachable::new(&e)));
            }
            Ok(Err(status)) if status.code() == tonic::Code::Unavailable => {
                peers.observe(&self.addr, self.target, false);
                return Err(RPCError::Unreachable(Unreachable::new(&status)));
            }
            Ok(Err(status)) => return Err(RPCError::Network(NetworkError::new(&status))),
            Ok(Ok(reply)) => reply.into_inner(),
        };
        peers.observe(&self.addr, self.target, true);
        if !reply.error.is_empty() {
            let e = std::io::Error::other(format!("peer {} refused: {}", self.target, reply.error));
            return Err(RPCError::Network(NetworkError::new(&e)));
        }
        let decoded: Result<Resp, RaftError<NodeId, E>> =
            decode_message(&reply.payload).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        decoded.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

/// Largest Raft message either side accepts: a batch entry list or a snapshot chunk.
pub const MESSAGE_BYTES_MAX: usize = 64 << 20;

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call(Rpc::Append, &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.call(Rpc::Snapshot, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call(Rpc::Vote, &rpc, &option).await
    }
}

/// Whether a replica that started empty may vote yet (see the module doc).
#[derive(Clone, Debug, Default)]
pub struct VoteGate {
    catching_up: Arc<AtomicBool>,
}

impl VoteGate {
    /// A gate for a replica that starts with no state for its shard.
    pub fn started_empty() -> Self {
        Self {
            catching_up: Arc::new(AtomicBool::new(true)),
        }
    }

    /// Whether `raft` may take part in `request`'s election; opens for good once a
    /// leader has caught the replica up (it applied a committed entry).
    fn admits(&self, raft: &Raft<TypeConfig>, request: &VoteRequest<NodeId>) -> bool {
        if !self.catching_up.load(Ordering::Acquire) {
            return true;
        }
        if raft.metrics().borrow().last_applied.is_some() {
            self.catching_up.store(false, Ordering::Release);
            return true;
        }
        request.last_log_id.is_none_or(|l| l.index == 0)
    }
}

/// The receiving side: routes each message to its shard's Raft.
#[derive(Clone)]
pub struct RaftService {
    shards: Arc<HashMap<u32, (Raft<TypeConfig>, VoteGate)>>,
}

impl RaftService {
    pub fn new(shards: HashMap<u32, (Raft<TypeConfig>, VoteGate)>) -> Self {
        Self {
            shards: Arc::new(shards),
        }
    }

    pub fn into_server(self) -> raft_server::RaftServer<Self> {
        raft_server::RaftServer::new(self)
            .max_decoding_message_size(MESSAGE_BYTES_MAX)
            .max_encoding_message_size(MESSAGE_BYTES_MAX)
    }

    fn shard(&self, req: &RaftRequest) -> Result<&(Raft<TypeConfig>, VoteGate), RaftReply> {
        self.shards.get(&req.shard).ok_or_else(|| RaftReply {
            payload: Vec::new(),
            error: format!("shard {} is not hosted here", req.shard),
        })
    }
}

fn undecodable(e: raft_store::Error) -> RaftReply {
    RaftReply {
        payload: Vec::new(),
        error: format!("undecodable message: {e}"),
    }
}

fn reply<T: Serialize>(result: &T) -> Result<tonic::Response<RaftReply>, tonic::Status> {
    Ok(tonic::Response::new(RaftReply {
        payload: encode_message(result),
        error: String::new(),
    }))
}

impl RaftService {
    /// Decodes a message for its shard, runs it, and encodes the answer (openraft's
    /// result, errors included). An unknown shard or undecodable bytes get a refusal.
    async fn serve<Req, Resp, F, Fut>(
        &self,
        request: tonic::Request<RaftRequest>,
        call: F,
    ) -> Result<tonic::Response<RaftReply>, tonic::Status>
    where
        Req: DeserializeOwned,
        Resp: Serialize,
        F: FnOnce(Raft<TypeConfig>, VoteGate, Req) -> Fut,
        Fut: std::future::Future<Output = Result<Resp, RaftReply>>,
    {
        let req = request.into_inner();
        let (raft, gate) = match self.shard(&req) {
            Ok(r) => r.clone(),
            Err(refusal) => return Ok(tonic::Response::new(refusal)),
        };
        match decode_message::<Req>(&req.payload) {
            Ok(rpc) => match call(raft, gate, rpc).await {
                Ok(answer) => reply(&answer),
                Err(refusal) => Ok(tonic::Response::new(refusal)),
            },
            Err(e) => Ok(tonic::Response::new(undecodable(e))),
        }
    }
}

#[tonic::async_trait]
impl raft_server::Raft for RaftService {
    async fn vote(
        &self,
        request: tonic::Request<RaftRequest>,
    ) -> Result<tonic::Response<RaftReply>, tonic::Status> {
        self.serve(request, |raft, gate, rpc: VoteRequest<NodeId>| async move {
            if !gate.admits(&raft, &rpc) {
                return Err(RaftReply {
                    payload: Vec::new(),
                    error: "this replica started empty and is not caught up yet; \
                            it votes once a leader has caught it up"
                        .into(),
                });
            }
            Ok(raft.vote(rpc).await)
        })
        .await
    }

    async fn append_entries(
        &self,
        request: tonic::Request<RaftRequest>,
    ) -> Result<tonic::Response<RaftReply>, tonic::Status> {
        self.serve(
            request,
            |raft, _, rpc: AppendEntriesRequest<TypeConfig>| async move {
                Ok(raft.append_entries(rpc).await)
            },
        )
        .await
    }

    async fn install_snapshot(
        &self,
        request: tonic::Request<RaftRequest>,
    ) -> Result<tonic::Response<RaftReply>, tonic::Status> {
        self.serve(
            request,
            |raft, _, rpc: InstallSnapshotRequest<TypeConfig>| async move {
                Ok(raft.install_snapshot(rpc).await)
            },
        )
        .await
    }
}
