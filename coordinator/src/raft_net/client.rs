//! The sending side: openraft's network for one shard of one node.
//!
//! Cancel safety: openraft may drop a call's future at any await (its own timeout
//! around each call starts before ours). Nothing is repaired after an await here: the
//! AppendEntries pipe is moved into the call and moved back only once the reply
//! matched, so a dropped call drops its pipe, and the next call opens a fresh one that
//! carries only its own request.

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use raft_store::raft::{decode_message, encode_message, NodeId, TypeConfig};
use seatd_proto::raft::raft_client::RaftClient;
use seatd_proto::raft::{RaftReply, RaftRequest};
use serde::{de::DeserializeOwned, Serialize};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use super::{MESSAGE_BYTES_MAX, PIPE_DEPTH};
use crate::peers::PeerChannels;

type RaftResult<T, E = openraft::error::Infallible> =
    Result<T, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>;

/// openraft's network factory for one shard of one node.
#[derive(Clone)]
pub struct ShardNetwork {
    pub shard: u32,
    pub peers: PeerChannels,
}

impl RaftNetworkFactory<TypeConfig> for ShardNetwork {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> PeerClient {
        PeerClient {
            net: self.clone(),
            target,
            remembered: node.addr.clone(),
            pipe: None,
            seq: 0,
        }
    }
}

/// The client for one peer of one shard.
pub struct PeerClient {
    net: ShardNetwork,
    target: NodeId,
    /// The address Raft's membership remembers for the peer (the book wins).
    remembered: String,
    /// The open AppendEntries pipe to the peer, when no call holds it.
    pipe: Option<Pipe>,
    /// The last sequence number sent; every request gets the next.
    seq: u64,
}

/// One open AppendEntries pipe: requests go in `tx`, replies come out of `replies` in
/// the same order.
struct Pipe {
    tx: mpsc::Sender<RaftRequest>,
    replies: tonic::Streaming<RaftReply>,
}

/// Why a round trip failed, before it is mapped to openraft's error.
enum Failure {
    Status(tonic::Status),
    TimedOut,
    /// The reply named another request: the pipe is out of step.
    Mismatch {
        sent: u64,
        got: u64,
    },
}

impl From<tonic::Status> for Failure {
    fn from(s: tonic::Status) -> Self {
        Failure::Status(s)
    }
}

#[derive(Clone, Copy)]
enum Rpc {
    Vote,
    Snapshot,
}

impl PeerClient {
    fn next_request<Req: Serialize>(&mut self, request: &Req) -> RaftRequest {
        self.seq += 1;
        RaftRequest {
            shard: self.net.shard,
            from: self.net.peers.me(),
            payload: encode_message(request),
            seq: self.seq,
        }
    }

    fn client(&self) -> Result<RaftClient<Channel>, tonic::Status> {
        let channel = self
            .net
            .peers
            .channel(self.target, Some(&self.remembered))
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        Ok(RaftClient::new(channel)
            .max_decoding_message_size(MESSAGE_BYTES_MAX)
            .max_encoding_message_size(MESSAGE_BYTES_MAX))
    }

    async fn call<Req, Resp, E>(
        &mut self,
        rpc: Rpc,
        request: &Req,
        option: &RPCOption,
    ) -> RaftResult<Resp, E>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let req = self.next_request(request);
        let sent = req.seq;
        let client = self.client();
        let call = async move {
            let mut client = client?;
            let reply = match rpc {
                Rpc::Vote => client.vote(req).await,
                Rpc::Snapshot => client.install_snapshot(req).await,
            }?
            .into_inner();
            matching(sent, reply)
        };
        let answer = tokio::time::timeout(option.hard_ttl(), call)
            .await
            .unwrap_or(Err(Failure::TimedOut));
        self.finish(answer)
    }

    /// Sends `request` down the AppendEntries pipe (opening one if none is free) and
    /// reads its reply; the pipe comes back only with a matching reply.
    async fn piped(
        &mut self,
        request: &AppendEntriesRequest<TypeConfig>,
        option: &RPCOption,
    ) -> RaftResult<AppendEntriesResponse<NodeId>> {
        let req = self.next_request(request);
        let pipe = self.pipe.take();
        let client = self.client();
        let trip = round_trip(pipe, client, req);
        let answer = match tokio::time::timeout(option.hard_ttl(), trip).await {
            Ok(Ok((pipe, reply))) => {
                self.pipe = Some(pipe);
                Ok(reply)
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err(Failure::TimedOut),
        };
        self.finish(answer)
    }

    /// Turns a transport outcome into openraft's result (see the module doc's errors).
    /// The error type is openraft's, as its `RaftNetwork` trait requires.
    #[allow(clippy::result_large_err)]
    fn finish<Resp, E>(&self, answer: Result<RaftReply, Failure>) -> RaftResult<Resp, E>
    where
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let peers = &self.net.peers;
        let reply = match answer {
            Err(Failure::TimedOut) => {
                let e =
                    std::io::Error::new(std::io::ErrorKind::TimedOut, "raft rpc deadline passed");
                return Err(RPCError::Unreachable(Unreachable::new(&e)));
            }
            Err(Failure::Mismatch { sent, got }) => {
                tracing::warn!(
                    peer = self.target,
                    sent,
                    got,
                    "reply out of step; pipe reset"
                );
                let e = std::io::Error::other(format!(
                    "peer {} answered request {got}, not {sent}",
                    self.target
                ));
                return Err(RPCError::Network(NetworkError::new(&e)));
            }
            Err(Failure::Status(status)) if status.code() == tonic::Code::Unavailable => {
                peers.observe(self.target, false);
                return Err(RPCError::Unreachable(Unreachable::new(&status)));
            }
            Err(Failure::Status(status)) => {
                return Err(RPCError::Network(NetworkError::new(&status)))
            }
            Ok(reply) => reply,
        };
        peers.observe(self.target, true);
        if !reply.error.is_empty() {
            let e = std::io::Error::other(format!("peer {} refused: {}", self.target, reply.error));
            return Err(RPCError::Network(NetworkError::new(&e)));
        }
        let decoded: Result<Resp, RaftError<NodeId, E>> =
            decode_message(&reply.payload).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        decoded.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

/// `reply` if it answers request `sent`.
fn matching(sent: u64, reply: RaftReply) -> Result<RaftReply, Failure> {
    if reply.seq != sent {
        return Err(Failure::Mismatch {
            sent,
            got: reply.seq,
        });
    }
    Ok(reply)
}

/// One request and its reply over `pipe` (or a new pipe when `None`). Owns the pipe
/// throughout: dropping this future drops the pipe (see the module doc).
async fn round_trip(
    pipe: Option<Pipe>,
    client: Result<RaftClient<Channel>, tonic::Status>,
    req: RaftRequest,
) -> Result<(Pipe, RaftReply), Failure> {
    let sent = req.seq;
    let closed = || tonic::Status::unavailable("the append pipe closed");
    let mut pipe = match pipe {
        Some(pipe) => {
            pipe.tx.send(req).await.map_err(|_| closed())?;
            pipe
        }
        None => {
            let (tx, rx) = mpsc::channel(PIPE_DEPTH);
            // Queued before the call, so the peer has work the moment it answers.
            tx.send(req).await.map_err(|_| closed())?;
            let replies = client?
                .append_stream(ReceiverStream::new(rx))
                .await?
                .into_inner();
            Pipe { tx, replies }
        }
    };
    let reply = pipe
        .replies
        .message()
        .await?
        .ok_or_else(|| tonic::Status::unavailable("the peer ended the append pipe"))?;
    Ok((pipe, matching(sent, reply)?))
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RaftResult<AppendEntriesResponse<NodeId>> {
        self.piped(&rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RaftResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        self.call(Rpc::Snapshot, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> RaftResult<VoteResponse<NodeId>> {
        self.call(Rpc::Vote, &rpc, &option).await
    }
}
