//! The AppendEntries pipe against a misbehaving fake follower: a reply can never be
//! taken for another request's.
//!
//! The bug this pins (issue 18, finding 1): openraft wraps every `append_entries` call
//! in its own timeout. When that fired after our request was sent but before its reply
//! was read, the pipe stayed open, and the next call read the previous request's
//! reply; a follower's `Success` names no index, so the leader counted entries the
//! follower never stored.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use coordinator::peers::PeerChannels;
use coordinator::raft_net::ShardNetwork;
use coordinator::tls::{write_certs, PeerTls};
use openraft::error::{RPCError, RaftError};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse};
use openraft::{BasicNode, CommittedLeaderId, LogId, Vote};
use raft_store::raft::{decode_message, encode_message, NodeId, TypeConfig};
use seatd_proto::raft::raft_server::{Raft, RaftServer};
use seatd_proto::raft::{LocalStatusRequest, RaftReply, RaftRequest};
use seatd_proto::v1 as pb;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};

/// How the fake follower answers.
#[derive(Clone, Copy)]
enum Misbehaviour {
    /// The first request's reply comes late (after the caller gave up on it); every
    /// reply echoes its request's `seq`.
    SlowFirstReply,
    /// Every reply names the wrong request.
    WrongSeq,
}

/// A follower that answers each request on a pipe with `Success` when the request
/// has no `prev_log_id` and `Conflict` otherwise, so a test can tell whose reply it
/// got.
#[derive(Clone)]
struct FakeFollower {
    how: Misbehaviour,
    requests: Arc<AtomicU64>,
}

fn answer(req: &RaftRequest, seq: u64) -> RaftReply {
    let rpc: AppendEntriesRequest<TypeConfig> = decode_message(&req.payload).unwrap();
    let resp: Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>> =
        Ok(match rpc.prev_log_id {
            None => AppendEntriesResponse::Success,
            Some(_) => AppendEntriesResponse::Conflict,
        });
    RaftReply {
        payload: encode_message(&resp),
        error: String::new(),
        seq,
    }
}

#[tonic::async_trait]
impl Raft for FakeFollower {
    async fn vote(
        &self,
        _: tonic::Request<RaftRequest>,
    ) -> Result<tonic::Response<RaftReply>, tonic::Status> {
        Err(tonic::Status::unimplemented("fake"))
    }

    async fn append_entries(
        &self,
        _: tonic::Request<RaftRequest>,
    ) -> Result<tonic::Response<RaftReply>, tonic::Status> {
        Err(tonic::Status::unimplemented("fake"))
    }

    type AppendStreamStream = ReceiverStream<Result<RaftReply, tonic::Status>>;

    async fn append_stream(
        &self,
        request: tonic::Request<tonic::Streaming<RaftRequest>>,
    ) -> Result<tonic::Response<Self::AppendStreamStream>, tonic::Status> {
        let mut incoming = request.into_inner();
        let (tx, rx) = mpsc::channel(4);
        let me = self.clone();
        tokio::spawn(async move {
            while let Ok(Some(req)) = incoming.message().await {
                let n = me.requests.fetch_add(1, Ordering::SeqCst);
                let seq = match me.how {
                    Misbehaviour::SlowFirstReply => {
                        if n == 0 {
                            tokio::time::sleep(Duration::from_millis(300)).await;
                        }
                        req.seq
                    }
                    Misbehaviour::WrongSeq => req.seq + 1,
                };
                if tx.send(Ok(answer(&req, seq))).await.is_err() {
                    return;
                }
            }
        });
        Ok(tonic::Response::new(ReceiverStream::new(rx)))
    }

    async fn install_snapshot(
        &self,
        _: tonic::Request<RaftRequest>,
    ) -> Result<tonic::Response<RaftReply>, tonic::Status> {
        Err(tonic::Status::unimplemented("fake"))
    }

    async fn local_status(
        &self,
        _: tonic::Request<LocalStatusRequest>,
    ) -> Result<tonic::Response<pb::ClusterStatus>, tonic::Status> {
        Err(tonic::Status::unimplemented("fake"))
    }
}

/// Starts the fake as node 2 (mutual TLS, as a real peer port) and returns node 1's
/// client for it.
async fn setup(
    how: Misbehaviour,
) -> (
    tempfile::TempDir,
    impl RaftNetwork<TypeConfig>,
    Arc<AtomicU64>,
) {
    let dir = tempfile::tempdir().unwrap();
    write_certs(dir.path(), &[1, 2]).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let requests = Arc::new(AtomicU64::new(0));
    let fake = FakeFollower {
        how,
        requests: requests.clone(),
    };
    let server_tls = PeerTls::load(dir.path(), 2).unwrap().server();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .tls_config(server_tls)
            .unwrap()
            .add_service(RaftServer::new(fake))
            .serve_with_incoming(TcpListenerStream::new(listener))
            .await
            .unwrap();
    });
    let peers = PeerChannels::new(
        PeerTls::load(dir.path(), 1).unwrap(),
        HashMap::from([(2, addr.clone())]),
    );
    let mut net = ShardNetwork { shard: 0, peers };
    let client = net.new_client(2, &BasicNode::new(addr)).await;
    (dir, client, requests)
}

fn append(prev_index: Option<u64>) -> AppendEntriesRequest<TypeConfig> {
    AppendEntriesRequest {
        vote: Vote::new_committed(1, 1),
        prev_log_id: prev_index.map(|i| LogId::new(CommittedLeaderId::new(1, 1), i)),
        entries: vec![],
        leader_commit: None,
    }
}

const TTL: Duration = Duration::from_secs(2);

#[tokio::test]
async fn a_dropped_call_never_lends_its_reply_to_the_next() {
    let (_dir, mut client, requests) = setup(Misbehaviour::SlowFirstReply).await;
    // Call A (whose reply is Success) is dropped mid-way, as openraft's own timeout
    // does: sent, but its reply not read yet.
    let dropped = tokio::time::timeout(
        Duration::from_millis(100),
        client.append_entries(append(None), RPCOption::new(TTL)),
    )
    .await;
    assert!(dropped.is_err(), "the fake answers A only after 300 ms");
    // Call B must get its own answer (Conflict), not A's late Success.
    let b = client
        .append_entries(append(Some(7)), RPCOption::new(TTL))
        .await
        .expect("B is answered");
    assert_eq!(b, AppendEntriesResponse::Conflict);
    assert_eq!(requests.load(Ordering::SeqCst), 2);
    // The pipe B opened is reused for the next call.
    let c = client
        .append_entries(append(None), RPCOption::new(TTL))
        .await
        .unwrap();
    assert_eq!(c, AppendEntriesResponse::Success);
}

#[tokio::test]
async fn a_reply_naming_another_request_is_an_error() {
    let (_dir, mut client, requests) = setup(Misbehaviour::WrongSeq).await;
    for _ in 0..3 {
        let r = client
            .append_entries(append(None), RPCOption::new(TTL))
            .await;
        assert!(
            matches!(r, Err(RPCError::Network(_))),
            "a mismatched reply is never taken: {r:?}"
        );
    }
    assert_eq!(requests.load(Ordering::SeqCst), 3);
}
