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
//! AppendEntries, which replication sends several times per committed entry (the
//! entries, then the new commit index, then heartbeats), travels over a pipe: one
//! long-lived bidirectional stream per (shard, follower), opened on first use. openraft
//! replicates to a follower one message at a time, so the pipe carries strictly one
//! request, then its reply; any error or missed deadline drops the pipe (a late reply
//! can never be taken for the next one) and the next message opens a new one. Votes and
//! snapshots stay unary calls. The server ends its side of every pipe when the node
//! stops serving, so open pipes never hold up a shutdown.
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
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

/// Messages a pipe buffers in each direction. The sender waits for each reply, so one
/// is enough; two lets the next request be queued while the reply is being read.
const PIPE_DEPTH: usize = 2;

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
            pipe: None,
        }
    }
}

/// The client for one peer of one shard.
pub struct PeerClient {
    net: ShardNetwork,
    target: NodeId,
    addr: String,
    /// The open AppendEntries pipe to the peer, if any (see the module doc).
    pipe: Option<Pipe>,
}

/// One open AppendEntries pipe: requests go in `tx`, replies come out of `replies` in
/// the same order.
struct Pipe {
    tx: mpsc::Sender<RaftRequest>,
    replies: tonic::Streaming<RaftReply>,
}

#[derive(Clone, Copy)]
enum Rpc {
    Vote,
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
        let mut client = self
            .client()
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))?;
        let req = self.request(request);
        let call = async {
            match rpc {
                Rpc::Vote => client.vote(req).await,
                Rpc::Snapshot => client.install_snapshot(req).await,
            }
            .map(tonic::Response::into_inner)
        };
        let answer = tokio::time::timeout(option.hard_ttl(), call).await;
        self.finish(answer)
    }

    /// Sends `request` down the AppendEntries pipe (opening it if needed) and reads its
    /// reply. Any failure drops the pipe, so the next message starts a fresh one.
    async fn piped(
        &mut self,
        request: &AppendEntriesRequest<TypeConfig>,
        option: &RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        let req = self.request(request);
        let answer = tokio::time::timeout(option.hard_ttl(), self.pipe_round_trip(req)).await;
        if !matches!(answer, Ok(Ok(_))) {
            self.pipe = None;
        }
        self.finish(answer)
    }

    async fn pipe_round_trip(&mut self, req: RaftRequest) -> Result<RaftReply, tonic::Status> {
        let pipe = match &mut self.pipe {
            Some(pipe) => {
                pipe.tx
                    .send(req)
                    .await
                    .map_err(|_| tonic::Status::unavailable("the append pipe closed"))?;
                pipe
            }
            None => {
                let mut client = self
                    .client()
                    .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
                let (tx, rx) = mpsc::channel(PIPE_DEPTH);
                // Queued before the call, so the peer has work the moment it answers.
                tx.send(req)
                    .await
                    .map_err(|_| tonic::Status::unavailable("the append pipe closed"))?;
                let replies = client
                    .append_stream(ReceiverStream::new(rx))
                    .await?
                    .into_inner();
                self.pipe.insert(Pipe { tx, replies })
            }
        };
        pipe.replies
            .message()
            .await?
            .ok_or_else(|| tonic::Status::unavailable("the peer ended the append pipe"))
    }

    fn client(&self) -> Result<RaftClient<Channel>, tonic::transport::Error> {
        let channel = self.net.peers.channel(&self.addr)?;
        Ok(RaftClient::new(channel)
            .max_decoding_message_size(MESSAGE_BYTES_MAX)
            .max_encoding_message_size(MESSAGE_BYTES_MAX))
    }

    fn request<Req: Serialize>(&self, request: &Req) -> RaftRequest {
        RaftRequest {
            shard: self.net.shard,
            from: self.net.from,
            payload: encode_message(request),
        }
    }

    /// Turns a transport outcome into openraft's result (see the module doc's errors).
    /// The error type is openraft's, as its `RaftNetwork` trait requires.
    #[allow(clippy::result_large_err)]
    fn finish<Resp, E>(
        &self,
        answer: Result<Result<RaftReply, tonic::Status>, tokio::time::error::Elapsed>,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>
    where
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
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
            Ok(Ok(reply)) => reply,
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
        self.piped(&rpc, &option).await
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
    /// Turns true when the node stops serving; open pipes end then.
    stopped: watch::Receiver<bool>,
}

impl RaftService {
    /// Serves `shards`; every open append pipe ends once `stopped` turns true.
    pub fn new(
        shards: HashMap<u32, (Raft<TypeConfig>, VoteGate)>,
        stopped: watch::Receiver<bool>,
    ) -> Self {
        Self {
            shards: Arc::new(shards),
            stopped,
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

fn reply<T: Serialize>(result: &T) -> RaftReply {
    RaftReply {
        payload: encode_message(result),
        error: String::new(),
    }
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
        Ok(tonic::Response::new(
            self.handle(request.into_inner(), call).await,
        ))
    }

    async fn handle<Req, Resp, F, Fut>(&self, req: RaftRequest, call: F) -> RaftReply
    where
        Req: DeserializeOwned,
        Resp: Serialize,
        F: FnOnce(Raft<TypeConfig>, VoteGate, Req) -> Fut,
        Fut: std::future::Future<Output = Result<Resp, RaftReply>>,
    {
        let (raft, gate) = match self.shard(&req) {
            Ok(r) => r.clone(),
            Err(refusal) => return refusal,
        };
        match decode_message::<Req>(&req.payload) {
            Ok(rpc) => match call(raft, gate, rpc).await {
                Ok(answer) => reply(&answer),
                Err(refusal) => refusal,
            },
            Err(e) => undecodable(e),
        }
    }

    async fn append(&self, req: RaftRequest) -> RaftReply {
        self.handle(
            req,
            |raft, _, rpc: AppendEntriesRequest<TypeConfig>| async move {
                Ok(raft.append_entries(rpc).await)
            },
        )
        .await
    }

    /// One pipe's loop: each request is answered before the next is read, so replies
    /// keep the requests' order. Ends when the sender closes, the stream fails, the
    /// reply side is gone, or the node stops serving.
    async fn run_pipe(
        self,
        mut incoming: tonic::Streaming<RaftRequest>,
        replies: mpsc::Sender<Result<RaftReply, tonic::Status>>,
    ) {
        let mut stopped = self.stopped.clone();
        loop {
            let next = tokio::select! {
                next = incoming.message() => next,
                _ = stopped.wait_for(|s| *s) => return,
            };
            let req = match next {
                Ok(Some(req)) => req,
                Ok(None) => return,
                Err(status) => {
                    let _ = replies.send(Err(status)).await;
                    return;
                }
            };
            let reply = self.append(req).await;
            if replies.send(Ok(reply)).await.is_err() {
                return;
            }
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
        Ok(tonic::Response::new(
            self.append(request.into_inner()).await,
        ))
    }

    type AppendStreamStream = ReceiverStream<Result<RaftReply, tonic::Status>>;

    async fn append_stream(
        &self,
        request: tonic::Request<tonic::Streaming<RaftRequest>>,
    ) -> Result<tonic::Response<Self::AppendStreamStream>, tonic::Status> {
        let (tx, rx) = mpsc::channel(PIPE_DEPTH);
        tokio::spawn(self.clone().run_pipe(request.into_inner(), tx));
        Ok(tonic::Response::new(ReceiverStream::new(rx)))
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
