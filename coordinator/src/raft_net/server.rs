//! The receiving side: the `seatd.raft.v1.Raft` service of a node's peer port. It
//! routes each message to its shard's Raft, after three checks:
//! 1. the caller is a node of the cluster, by its verified TLS certificate;
//! 2. the message's `from`, and the vote's leader inside it, are that node;
//! 3. the values inside are within [`super::bounds`].
//!
//! A refused message gets a `RaftReply` with `error` set (never reaching openraft);
//! a caller without a node certificate gets UNAUTHENTICATED. Every reply echoes its
//! request's `seq`.
//!
//! Bounded: at most [`PIPES_MAX`] append pipes are open at once (each is a task
//! here); one more is refused with RESOURCE_EXHAUSTED until one closes. Every open
//! pipe ends when the node stops serving, so pipes never hold up a shutdown.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use openraft::Raft;
use raft_store::raft::{decode_message, encode_message, NodeId, TypeConfig};
use seatd_proto::raft::raft_server;
use seatd_proto::raft::{LocalStatusRequest, RaftReply, RaftRequest};
use seatd_proto::v1 as pb;
use serde::{de::DeserializeOwned, Serialize};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use crate::lifecycle::CancellationToken;
use tokio_stream::wrappers::ReceiverStream;

use super::gate::VoteGate;
use super::{bounds, MESSAGE_BYTES_MAX, PIPE_DEPTH};
use crate::tls::{caller_node, from_a_node};

use crate::limits::PIPES_MAX;

/// This node's own view of its shards (with digests when asked).
pub type LocalStatusFn = Arc<dyn Fn(bool) -> pb::ClusterStatus + Send + Sync>;

/// The receiving side: routes each message to its shard's Raft.
#[derive(Clone)]
pub struct RaftService {
    shards: Arc<HashMap<u32, (Raft<TypeConfig>, VoteGate)>>,
    /// The cluster's nodes: only they may call.
    nodes: Arc<BTreeSet<NodeId>>,
    local_status: LocalStatusFn,
    pipes: Arc<Semaphore>,
    /// Cancelled when the node stops serving; open pipes end then.
    stopped: CancellationToken,
}

fn refusal(seq: u64, error: String) -> RaftReply {
    RaftReply {
        payload: Vec::new(),
        error,
        seq,
    }
}

impl RaftService {
    /// Serves `shards` to the cluster's `nodes`; every open append pipe ends once
    /// `stopped` is cancelled.
    pub fn new(
        shards: HashMap<u32, (Raft<TypeConfig>, VoteGate)>,
        nodes: BTreeSet<NodeId>,
        local_status: LocalStatusFn,
        stopped: CancellationToken,
    ) -> Self {
        Self {
            shards: Arc::new(shards),
            nodes: Arc::new(nodes),
            local_status,
            pipes: Arc::new(Semaphore::new(PIPES_MAX)),
            stopped,
        }
    }

    pub fn into_server(self) -> raft_server::RaftServer<Self> {
        raft_server::RaftServer::new(self)
            .max_decoding_message_size(MESSAGE_BYTES_MAX)
            .max_encoding_message_size(MESSAGE_BYTES_MAX)
    }

    /// The calling node, by its certificate; UNAUTHENTICATED for anyone else.
    fn caller<T>(&self, request: &tonic::Request<T>) -> Result<NodeId, tonic::Status> {
        if !from_a_node(request) {
            return Err(tonic::Status::unauthenticated(
                "the peer port takes only callers with a cluster node certificate",
            ));
        }
        caller_node(request, self.nodes.iter().copied()).ok_or_else(|| {
            tonic::Status::permission_denied("the certificate names no node of this cluster")
        })
    }

    /// Checks a message's sender, decodes it for its shard, checks its bounds, runs it
    /// and encodes the answer (openraft's result, errors included).
    async fn handle<Req, Resp, F, Fut>(
        &self,
        caller: NodeId,
        req: RaftRequest,
        check: fn(&Req, NodeId) -> Result<(), bounds::Refusal>,
        call: F,
    ) -> RaftReply
    where
        Req: DeserializeOwned,
        Resp: Serialize,
        F: FnOnce(Raft<TypeConfig>, VoteGate, Req) -> Fut,
        Fut: std::future::Future<Output = Result<Resp, String>>,
    {
        let seq = req.seq;
        if req.from != caller {
            return refusal(
                seq,
                format!("node {caller} sent a message from node {}", req.from),
            );
        }
        let Some((raft, gate)) = self.shards.get(&req.shard).cloned() else {
            return refusal(seq, format!("shard {} is not hosted here", req.shard));
        };
        let rpc = match decode_message::<Req>(&req.payload) {
            Ok(rpc) => rpc,
            Err(e) => return refusal(seq, format!("undecodable message: {e}")),
        };
        if let Err(why) = check(&rpc, caller) {
            tracing::warn!(peer = caller, shard = req.shard, %why, "refused a raft message");
            return refusal(seq, why);
        }
        match call(raft, gate, rpc).await {
            Ok(answer) => RaftReply {
                payload: encode_message(&answer),
                error: String::new(),
                seq,
            },
            Err(why) => refusal(seq, why),
        }
    }

    async fn append(&self, caller: NodeId, req: RaftRequest) -> RaftReply {
        self.handle(
            caller,
            req,
            bounds::append,
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
        caller: NodeId,
        mut incoming: tonic::Streaming<RaftRequest>,
        replies: mpsc::Sender<Result<RaftReply, tonic::Status>>,
        _permit: OwnedSemaphorePermit,
    ) {
        let stopped = self.stopped.clone();
        loop {
            let next = tokio::select! {
                next = incoming.message() => next,
                _ = stopped.cancelled() => return,
            };
            let req = match next {
                Ok(Some(req)) => req,
                Ok(None) => return,
                Err(status) => {
                    let _ = replies.send(Err(status)).await;
                    return;
                }
            };
            let reply = self.append(caller, req).await;
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
        let caller = self.caller(&request)?;
        let reply = self
            .handle(
                caller,
                request.into_inner(),
                bounds::vote_request,
                |raft, gate, rpc: VoteRequest<NodeId>| async move {
                    gate.admits(&raft, &rpc)?;
                    Ok(raft.vote(rpc).await)
                },
            )
            .await;
        Ok(tonic::Response::new(reply))
    }

    async fn append_entries(
        &self,
        request: tonic::Request<RaftRequest>,
    ) -> Result<tonic::Response<RaftReply>, tonic::Status> {
        let caller = self.caller(&request)?;
        Ok(tonic::Response::new(
            self.append(caller, request.into_inner()).await,
        ))
    }

    type AppendStreamStream = ReceiverStream<Result<RaftReply, tonic::Status>>;

    async fn append_stream(
        &self,
        request: tonic::Request<tonic::Streaming<RaftRequest>>,
    ) -> Result<tonic::Response<Self::AppendStreamStream>, tonic::Status> {
        let caller = self.caller(&request)?;
        let permit = self.pipes.clone().try_acquire_owned().map_err(|_| {
            tonic::Status::resource_exhausted(format!("{PIPES_MAX} append pipes already open"))
        })?;
        let (tx, rx) = mpsc::channel(PIPE_DEPTH);
        tokio::spawn(
            self.clone()
                .run_pipe(caller, request.into_inner(), tx, permit),
        );
        Ok(tonic::Response::new(ReceiverStream::new(rx)))
    }

    async fn install_snapshot(
        &self,
        request: tonic::Request<RaftRequest>,
    ) -> Result<tonic::Response<RaftReply>, tonic::Status> {
        let caller = self.caller(&request)?;
        let reply = self
            .handle(
                caller,
                request.into_inner(),
                bounds::snapshot,
                |raft, _, rpc: InstallSnapshotRequest<TypeConfig>| async move {
                    Ok(raft.install_snapshot(rpc).await)
                },
            )
            .await;
        Ok(tonic::Response::new(reply))
    }

    async fn local_status(
        &self,
        request: tonic::Request<LocalStatusRequest>,
    ) -> Result<tonic::Response<pb::ClusterStatus>, tonic::Status> {
        self.caller(&request)?;
        let digest = request.get_ref().digest;
        let status = self.local_status.clone();
        if !digest {
            // Metrics only: cheap, answered here (the rejoin poll asks often).
            return Ok(tonic::Response::new(status(false)));
        }
        // A digest encodes and hashes a shard's whole state: off the async workers.
        let view = tokio::task::spawn_blocking(move || status(digest))
            .await
            .map_err(|e| tonic::Status::internal(format!("status task: {e}")))?;
        Ok(tonic::Response::new(view))
    }
}
