//! Three replicas of one shard, in one process, talking Raft over real gRPC with
//! mutual TLS on loopback: they replicate identically, and when the leader dies the
//! others elect a new one that still knows every decision. And what a forger gets
//! from a peer port: nothing without a node certificate, a refusal for a message in
//! another node's name or with out-of-bounds values, and no change to the replica.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use coordinator::lifecycle::CancellationToken;
use coordinator::peers::PeerChannels;
use coordinator::raft_net::{GateBook, RaftService, ShardNetwork, VoteGate};
use coordinator::tls::{write_certs, PeerTls};
use openraft::{BasicNode, Raft, ServerState};
use raft_store::layout::generate;
use raft_store::raft::{raft_config, LogPolicy, NodeId, RaftTiming, TypeConfig};
use raft_store::storage::{MachineReader, Store};
use raft_store::{Batch, Command, CreateEvent, EventId, HoldRequest, Limits, Refusal, Reply};
use seatd_proto::raft::raft_client::RaftClient;
use seatd_proto::raft::{RaftReply, RaftRequest};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

const T0: u64 = 1_700_000_000_000;

struct Node {
    raft: Raft<TypeConfig>,
    reader: MachineReader,
    stop: Option<CancellationToken>,
    server: tokio::task::JoinHandle<()>,
    _store: Store,
}

fn hold(user: &str, seat: &str) -> Command {
    Command::Hold(HoldRequest {
        event_id: EventId::new("gig").unwrap(),
        user: user.into(),
        seats: vec![seat.into()],
        client_reservation_id: format!("{user}-r"),
        ttl_ms: None,
        expected_versions: None,
    })
}

/// An open rejoin gate for node `id`'s shard 0 (its replicas start together).
/// An open gate: these replicas are new and nothing here probes the others.
fn open_gate(dir: &std::path::Path, id: NodeId, raft: &Raft<TypeConfig>) -> VoteGate {
    let gates = dir.join(format!("gates{id}"));
    std::fs::create_dir_all(&gates).unwrap();
    let gate = GateBook::open(&gates).unwrap().gate(0, false).unwrap();
    gate.open(raft).unwrap();
    gate
}

/// Node `id` of a cluster whose peer addresses are `book`, with certificates in
/// `dir/certs`.
async fn start(
    id: NodeId,
    listener: TcpListener,
    dir: &std::path::Path,
    book: &HashMap<NodeId, String>,
) -> Node {
    let store = Store::open(dir.join(format!("node{id}"))).unwrap();
    let (log, sm) = store.group(0).unwrap();
    let reader = sm.reader();
    let config = raft_config("grpc-test", LogPolicy::default(), RaftTiming::default()).unwrap();
    let tls = PeerTls::load(&dir.join("certs"), id).unwrap();
    let net = ShardNetwork {
        shard: 0,
        peers: PeerChannels::new(tls.clone(), book.clone()),
    };
    let raft = Raft::new(id, config, net, log, sm).await.unwrap();
    let stop = CancellationToken::new();
    let stopped = stop.clone();
    let service = RaftService::new(
        HashMap::from([(0, (raft.clone(), open_gate(dir, id, &raft)))]),
        book.keys().copied().collect(),
        std::sync::Arc::new(|_| Default::default()),
        stop.clone(),
    );
    let server = tokio::spawn(async move {
        tonic::transport::Server::builder()
            .tls_config(tls.server())
            .unwrap()
            .add_service(service.into_server())
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async move {
                stopped.cancelled().await
            })
            .await
            .unwrap();
    });
    Node {
        raft,
        reader,
        stop: Some(stop),
        server,
        _store: store,
    }
}

async fn leader_of(nodes: &BTreeMap<NodeId, Node>) -> NodeId {
    let any = nodes.values().next().unwrap();
    let m = any
        .raft
        .wait(Some(Duration::from_secs(15)))
        .metrics(
            |m| m.current_leader.is_some_and(|l| nodes.contains_key(&l)),
            "a live leader",
        )
        .await
        .unwrap();
    let leader = m.current_leader.unwrap();
    nodes[&leader]
        .raft
        .wait(Some(Duration::from_secs(15)))
        .state(ServerState::Leader, "leader state")
        .await
        .unwrap();
    leader
}

async fn all_applied(nodes: &BTreeMap<NodeId, Node>, index: u64) {
    for n in nodes.values() {
        n.raft
            .wait(Some(Duration::from_secs(15)))
            .metrics(
                |m| m.last_applied.is_some_and(|l| l.index >= index),
                "applied",
            )
            .await
            .unwrap();
    }
}

fn digests(nodes: &BTreeMap<NodeId, Node>) -> Vec<[u8; 32]> {
    nodes
        .values()
        .map(|n| n.reader.read(|m| m.digest()))
        .collect()
}

/// Three started nodes (certificates for nodes 1 to 4: node 4 is in no cluster) and
/// their peer addresses.
async fn cluster(dir: &std::path::Path) -> (BTreeMap<NodeId, Node>, HashMap<NodeId, String>) {
    write_certs(&dir.join("certs"), &[1, 2, 3, 4]).unwrap();
    let mut listeners = Vec::new();
    for _ in 0..3 {
        listeners.push(TcpListener::bind("127.0.0.1:0").await.unwrap());
    }
    let book: HashMap<NodeId, String> = listeners
        .iter()
        .enumerate()
        .map(|(i, l)| (i as NodeId + 1, l.local_addr().unwrap().to_string()))
        .collect();
    let mut nodes = BTreeMap::new();
    for (i, l) in listeners.into_iter().enumerate() {
        let id = i as NodeId + 1;
        nodes.insert(id, start(id, l, dir, &book).await);
    }
    let members: BTreeMap<NodeId, BasicNode> = book
        .iter()
        .map(|(id, a)| (*id, BasicNode::new(a)))
        .collect();
    nodes[&1].raft.initialize(members).await.unwrap();
    (nodes, book)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_over_grpc_survive_losing_the_leader() {
    let dir = tempfile::tempdir().unwrap();
    let (mut nodes, _) = cluster(dir.path()).await;

    let leader = leader_of(&nodes).await;
    let create = Command::CreateEvent(CreateEvent {
        event_id: EventId::new("gig").unwrap(),
        name: "Gig".into(),
        starts_at_ms: T0,
        layout: generate("Club", 1, 2, 10),
        limits: Limits::default(),
        by: None,
        id_key: raft_store::IdKey([7; 16]),
    });
    nodes[&leader]
        .raft
        .client_write(
            Batch {
                ts_ms: T0,
                commands: vec![create],
            }
            .into(),
        )
        .await
        .unwrap();
    let mut last = 0;
    for i in 0..20u64 {
        let seat = format!("A-{}", i % 10 + 1);
        let out = nodes[&leader]
            .raft
            .client_write(
                Batch {
                    ts_ms: T0 + i,
                    commands: vec![hold(&format!("u{i}"), &seat)],
                }
                .into(),
            )
            .await
            .unwrap();
        let expect_held = i < 10;
        assert_eq!(
            matches!(out.data[0], Ok(Reply::Held(_))),
            expect_held,
            "{:?}",
            out.data
        );
        last = out.log_id.index;
    }
    all_applied(&nodes, last).await;
    let d = digests(&nodes);
    assert!(d.windows(2).all(|w| w[0] == w[1]), "replicas differ");

    // The leader dies: its Raft stops and its port closes.
    let mut dead = nodes.remove(&leader).unwrap();
    dead.raft.shutdown().await.unwrap();
    dead.stop.take().unwrap().cancel();
    let _ = dead.server.await;

    let new_leader = leader_of(&nodes).await;
    assert_ne!(new_leader, leader);
    // Every decision survived: A-1 is still held, B-1 is free.
    let out = nodes[&new_leader]
        .raft
        .client_write(
            Batch {
                ts_ms: T0 + 100,
                commands: vec![hold("late", "A-1"), hold("later", "B-1")],
            }
            .into(),
        )
        .await
        .unwrap();
    assert!(matches!(&out.data[0], Err(Refusal::Conflict { seats }) if seats.len() == 1));
    assert!(matches!(&out.data[1], Ok(Reply::Held(_))), "{:?}", out.data);
    all_applied(&nodes, out.log_id.index).await;
    let d = digests(&nodes);
    assert!(
        d.windows(2).all(|w| w[0] == w[1]),
        "surviving replicas differ"
    );

    for n in nodes.values_mut() {
        n.raft.shutdown().await.unwrap();
        n.stop.take().unwrap().cancel();
    }
}

/// A client of `addr`'s peer port presenting node `as_node`'s certificate (or none).
async fn forger(
    dir: &std::path::Path,
    target: NodeId,
    addr: &str,
    as_node: Option<NodeId>,
) -> RaftClient<tonic::transport::Channel> {
    let certs = dir.join("certs");
    let ca = std::fs::read_to_string(certs.join("ca.pem")).unwrap();
    let mut tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(ca))
        .domain_name(coordinator::tls::node_dns_name(target));
    if let Some(id) = as_node {
        tls = PeerTls::load(&certs, id).unwrap().client(target);
    }
    let channel = tonic::transport::Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect_timeout(Duration::from_secs(2))
        .connect_lazy();
    RaftClient::new(channel)
}

fn forged_vote(term: u64, candidate: NodeId) -> RaftRequest {
    let rpc: openraft::raft::VoteRequest<NodeId> = openraft::raft::VoteRequest {
        vote: openraft::Vote::new(term, candidate),
        last_log_id: None,
    };
    RaftRequest {
        shard: 0,
        from: candidate,
        payload: raft_store::raft::encode_message(&rpc),
        seq: 9,
    }
}

fn refused(reply: &RaftReply) -> bool {
    !reply.error.is_empty() && reply.payload.is_empty() && reply.seq == 9
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_port_refuses_forgers_and_out_of_bounds_messages() {
    let dir = tempfile::tempdir().unwrap();
    let (mut nodes, book) = cluster(dir.path()).await;
    let leader = leader_of(&nodes).await;
    let target = if leader == 1 { 2 } else { 1 };
    let addr = &book[&target];
    let other = (1..=3).find(|id| *id != target).unwrap();
    let vote_before = nodes[&target].raft.metrics().borrow().vote;

    // No client certificate: the TLS handshake fails, nothing is served.
    let r = forger(dir.path(), target, addr, None)
        .await
        .vote(forged_vote(u64::MAX, other))
        .await;
    assert!(r.is_err(), "served a caller without a certificate: {r:?}");

    // A certificate of a node outside the cluster: refused.
    let r = forger(dir.path(), target, addr, Some(4))
        .await
        .vote(forged_vote(5, 4))
        .await;
    assert_eq!(r.unwrap_err().code(), tonic::Code::PermissionDenied);

    let mut peer = forger(dir.path(), target, addr, Some(other)).await;
    // In another node's name (`from`), and with the vote naming another candidate.
    let third = (1..=3).find(|id| *id != target && *id != other).unwrap();
    let r = peer.vote(forged_vote(5, third)).await.unwrap().into_inner();
    assert!(refused(&r), "{r:?}");
    let mut wrong_candidate = forged_vote(5, third);
    wrong_candidate.from = other;
    let r = peer.vote(wrong_candidate).await.unwrap().into_inner();
    assert!(refused(&r), "{r:?}");
    // The reviewer's term of u64::MAX, from a real member.
    let r = peer
        .vote(forged_vote(u64::MAX, other))
        .await
        .unwrap()
        .into_inner();
    assert!(refused(&r), "{r:?}");
    // A snapshot chunk far beyond any snapshot.
    let snap: openraft::raft::InstallSnapshotRequest<TypeConfig> =
        openraft::raft::InstallSnapshotRequest {
            vote: openraft::Vote::new_committed(1, other),
            meta: Default::default(),
            offset: u64::MAX - 10,
            data: vec![0; 16],
            done: false,
        };
    let r = peer
        .install_snapshot(RaftRequest {
            shard: 0,
            from: other,
            payload: raft_store::raft::encode_message(&snap),
            seq: 9,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(refused(&r), "{r:?}");
    let vote_after = nodes[&target].raft.metrics().borrow().vote;
    assert_eq!(
        (vote_after.leader_id.term, vote_after.leader_id.node_id),
        (vote_before.leader_id.term, vote_before.leader_id.node_id),
        "no forged message changed the replica's vote"
    );

    for n in nodes.values_mut() {
        n.raft.shutdown().await.unwrap();
        n.stop.take().unwrap().cancel();
    }
}
