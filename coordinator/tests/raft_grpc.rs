//! Three replicas of one shard, in one process, talking Raft over real gRPC on
//! loopback: they replicate identically, and when the leader dies the others elect a
//! new one that still knows every decision.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use coordinator::raft_net::{Peers, RaftService, ShardNetwork, VoteGate};
use openraft::{BasicNode, Raft, ServerState};
use raft_store::layout::generate;
use raft_store::raft::{raft_config, LogPolicy, NodeId, RaftTiming, TypeConfig};
use raft_store::storage::{MachineReader, Store};
use raft_store::{Batch, Command, CreateEvent, EventId, HoldRequest, Limits, Refusal, Reply};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::wrappers::TcpListenerStream;

const T0: u64 = 1_700_000_000_000;

struct Node {
    raft: Raft<TypeConfig>,
    reader: MachineReader,
    stop: Option<watch::Sender<bool>>,
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

async fn start(id: NodeId, listener: TcpListener, dir: &std::path::Path) -> Node {
    let store = Store::open(dir.join(format!("node{id}"))).unwrap();
    let (log, sm) = store.group(0).unwrap();
    let reader = sm.reader();
    let config = raft_config("grpc-test", LogPolicy::default(), RaftTiming::default()).unwrap();
    let net = ShardNetwork {
        shard: 0,
        from: id,
        peers: Peers::default(),
    };
    let raft = Raft::new(id, config, net, log, sm).await.unwrap();
    let (stop, mut stopped) = watch::channel(false);
    let service = RaftService::new(
        HashMap::from([(0, (raft.clone(), VoteGate::default()))]),
        stopped.clone(),
    );
    let server = tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(service.into_server())
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async move {
                let _ = stopped.wait_for(|s| *s).await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_over_grpc_survive_losing_the_leader() {
    let dir = tempfile::tempdir().unwrap();
    let mut listeners = Vec::new();
    for _ in 0..3 {
        listeners.push(TcpListener::bind("127.0.0.1:0").await.unwrap());
    }
    let addrs: Vec<String> = listeners
        .iter()
        .map(|l| l.local_addr().unwrap().to_string())
        .collect();
    let mut nodes = BTreeMap::new();
    for (i, l) in listeners.into_iter().enumerate() {
        let id = i as NodeId + 1;
        nodes.insert(id, start(id, l, dir.path()).await);
    }
    let members: BTreeMap<NodeId, BasicNode> = addrs
        .iter()
        .enumerate()
        .map(|(i, a)| (i as NodeId + 1, BasicNode::new(a)))
        .collect();
    nodes[&1].raft.initialize(members).await.unwrap();

    let leader = leader_of(&nodes).await;
    let create = Command::CreateEvent(CreateEvent {
        event_id: EventId::new("gig").unwrap(),
        name: "Gig".into(),
        starts_at_ms: T0,
        layout: generate("Club", 1, 2, 10),
        limits: Limits::default(),
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
    let _ = dead.stop.take().unwrap().send(true);
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
        let _ = n.stop.take().unwrap().send(true);
    }
}
