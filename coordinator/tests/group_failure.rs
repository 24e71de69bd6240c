//! A Raft group that stops by itself is not trusted again: the shard reports
//! NOT_SERVING in gRPC health and `failed` in status, its node no longer routes the
//! shard to itself (calls go to the new leader), and the rest of the node serves on.
//!
//! The bug this pins (issue 18, finding 5): after a RaftCore panic the group's last
//! metrics still said Leader, so its node kept routing the shard to itself and failed
//! every call, while health said SERVING. The group is stopped here from the outside
//! (`Raft::shutdown`) without the node asking, which the node must tell apart from
//! its own shutdown exactly as it does a panic.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use coordinator::clock::SystemClock;
use coordinator::node::{shard_health_name, NodeConfig, NodeHandle};
use coordinator::payment::TestGateway;
use coordinator::placement::Cluster;
use coordinator::process::Settings;
use coordinator::tls::{write_certs, PeerTls};
use raft_store::raft::{LogPolicy, RaftTiming};
use raft_store::EventId;
use seatd_proto::v1 as pb;
use tokio::net::TcpListener;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

const SHARDS: u32 = 2;

async fn start_cluster(dir: &std::path::Path) -> Vec<NodeHandle> {
    let certs = dir.join("certs");
    write_certs(&certs, &[1, 2, 3]).unwrap();
    let mut listeners = Vec::new();
    let mut peers = BTreeMap::new();
    for id in 1..=3u64 {
        let client = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let peer = TcpListener::bind("127.0.0.1:0").await.unwrap();
        peers.insert(id, peer.local_addr().unwrap().to_string());
        listeners.push((id, client, peer));
    }
    let cluster = Cluster::new(peers, SHARDS).unwrap();
    let mut nodes = Vec::new();
    for (id, client, peer) in listeners {
        let config = NodeConfig {
            id,
            data_dir: dir.join(format!("node{id}")),
            cluster: cluster.clone(),
            log_policy: LogPolicy::default(),
            timing: RaftTiming::default(),
            settings: Settings {
                exit_on_group_failure: false,
                ..Settings::default()
            },
            clock: Arc::new(SystemClock::default()),
            gateway: Arc::new(TestGateway::default()),
            tls: PeerTls::load(&certs, id).unwrap(),
            advertise: None,
            auth: None,
            client_tls: None,
        };
        nodes.push(NodeHandle::start(config, client, peer).await.unwrap());
    }
    nodes
}

/// The node leading `shard`, once one does (bounded wait).
async fn leader_of(nodes: &[NodeHandle], shard: u32) -> usize {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(i) = nodes
            .iter()
            .position(|n| n.inner.shards.get(&shard).is_some_and(|s| s.leader().1))
        {
            return i;
        }
        assert!(Instant::now() < deadline, "no leader for shard {shard}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn event_in(cluster: &Cluster, shard: u32) -> String {
    (0..1_000)
        .map(|i| format!("ev{i}"))
        .find(|e| cluster.shard_of(&EventId::new(e).unwrap()) == shard)
        .unwrap()
}

async fn health(addr: std::net::SocketAddr, service: &str) -> ServingStatus {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let r = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .unwrap()
        .into_inner();
    ServingStatus::try_from(r.status).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_group_is_reported_and_no_longer_routed_to() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = start_cluster(dir.path()).await;
    let shard = 0;
    // A new shard starts as a group of one and takes in the others as they catch up:
    // wait for three voters with open gates, so losing one still leaves a quorum.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let l = leader_of(&nodes, shard).await;
        let voters = nodes[l].inner.shards[&shard]
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .count();
        let gates_open = nodes.iter().all(|n| !n.inner.gates[&shard].is_closed());
        if voters == 3 && gates_open {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "shard {shard} never had 3 voters"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let l = leader_of(&nodes, shard).await;
    let victim = &nodes[l];
    let event = event_in(&victim.inner.cluster, shard);
    let mut client = pb::seats_client::SeatsClient::new(
        tonic::transport::Endpoint::from_shared(format!("http://{}", victim.addr))
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );
    client
        .create_event(pb::CreateEventRequest {
            event_id: event.clone(),
            name: "Gig".into(),
            starts_at_ms: 1_900_000_000_000,
            layout: Some(seatd_wire::layout_to_pb(&raft_store::layout::generate(
                "Club", 1, 1, 10,
            ))),
            limits: None,
        })
        .await
        .unwrap();
    assert_eq!(
        health(victim.addr, &shard_health_name(shard)).await,
        ServingStatus::Serving
    );

    // The group stops without the node asking.
    victim.inner.shards[&shard].raft.shutdown().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !victim.inner.shards[&shard].has_failed() {
        assert!(Instant::now() < deadline, "the failure was not noticed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(victim.inner.shards[&shard].leader(), (None, false));
    assert_eq!(
        health(victim.addr, &shard_health_name(shard)).await,
        ServingStatus::NotServing
    );
    assert_eq!(health(victim.addr, "").await, ServingStatus::NotServing);
    let other = (shard + 1) % SHARDS;
    if victim.inner.shards.contains_key(&other) {
        assert_eq!(
            health(victim.addr, &shard_health_name(other)).await,
            ServingStatus::Serving,
            "only the failed shard is reported"
        );
    }
    let status = client
        .cluster_status(pb::ClusterStatusRequest {
            local: true,
            digest: false,
        })
        .await
        .unwrap()
        .into_inner();
    let mine = status.shards.iter().find(|s| s.shard == shard).unwrap();
    assert_eq!(mine.role, "failed");

    // A call through the victim reaches the shard's new leader and succeeds.
    let held = client
        .hold(pb::HoldRequest {
            event_id: event.clone(),
            user_id: "u".into(),
            seat_ids: vec!["A-1".into()],
            client_reservation_id: "r1".into(),
            ttl_ms: None,
            expected_versions: vec![],
        })
        .await
        .expect("served by the new leader");
    assert_eq!(held.into_inner().seats.len(), 1);
    let new_leader = leader_of(&nodes, shard).await;
    assert_ne!(new_leader, l);

    for n in nodes {
        n.shutdown().await.unwrap();
    }
}
