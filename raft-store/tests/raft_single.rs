//! A real openraft node on the RocksDB store: it elects itself, applies client
//! batches, snapshots and purges its log by policy, and after a restart resumes with
//! the same state.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{create, ev, hold_req, T0};
use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::storage::RaftLogStorage;
use openraft::{BasicNode, Raft, ServerState};
use raft_store::raft::{raft_config, LogPolicy, NodeId, RaftTiming, TypeConfig};
use raft_store::storage::Store;
use raft_store::{Batch, Command, Limits, Reply};

/// A one-node cluster never sends an RPC; if it did, this says so.
struct NoPeers;

fn no_peer<E: std::error::Error>() -> RPCError<NodeId, BasicNode, E> {
    RPCError::Network(NetworkError::new(&std::io::Error::other(
        "single-node test has no peers",
    )))
}

impl RaftNetworkFactory<TypeConfig> for NoPeers {
    type Network = NoPeers;
    async fn new_client(&mut self, _target: NodeId, _node: &BasicNode) -> NoPeers {
        NoPeers
    }
}

impl RaftNetwork<TypeConfig> for NoPeers {
    async fn append_entries(
        &mut self,
        _rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        Err(no_peer())
    }

    async fn install_snapshot(
        &mut self,
        _rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        Err(no_peer())
    }

    async fn vote(
        &mut self,
        _rpc: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        Err(no_peer())
    }
}

const POLICY: LogPolicy = LogPolicy {
    logs_since_snapshot: 50,
    logs_kept_after_snapshot: 10,
};

async fn start(
    store: &Store,
) -> (
    Raft<TypeConfig>,
    raft_store::storage::MachineReader,
    raft_store::storage::LogStore,
) {
    let (log, sm) = store.group(1).unwrap();
    let reader = sm.reader();
    let config = raft_config("test", POLICY, RaftTiming::default()).unwrap();
    let raft = Raft::new(1, config, NoPeers, log.clone(), sm)
        .await
        .unwrap();
    (raft, reader, log)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_applies_snapshots_purges_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let (raft, reader, mut log) = start(&store).await;
    raft.initialize(BTreeMap::from([(1, BasicNode::new("127.0.0.1:0"))]))
        .await
        .unwrap();
    raft.wait(Some(Duration::from_secs(10)))
        .state(ServerState::Leader, "leader")
        .await
        .unwrap();

    let created = raft
        .client_write(
            Batch {
                ts_ms: T0,
                commands: vec![create("show", 1, 10, 10, Limits::default())],
            }
            .into(),
        )
        .await
        .unwrap();
    assert!(matches!(created.data[0], Ok(Reply::EventCreated { .. })));
    for i in 0..100u64 {
        let seat = format!(
            "{}-{}",
            raft_store::layout::row_label((i / 10) as usize),
            i % 10 + 1
        );
        let out = raft
            .client_write(
                Batch {
                    ts_ms: T0 + i,
                    commands: vec![Command::Hold(hold_req(
                        "show",
                        &format!("u{i}"),
                        "r",
                        &[&seat],
                    ))],
                }
                .into(),
            )
            .await
            .unwrap();
        assert!(matches!(out.data[0], Ok(Reply::Held(_))), "{:?}", out.data);
    }
    let last = raft.metrics().borrow().last_applied.unwrap().index;
    // The policy snapshots every 50 entries and keeps 10 behind the snapshot.
    let m = raft
        .wait(Some(Duration::from_secs(10)))
        .metrics(
            |m| m.snapshot.is_some_and(|s| s.index >= 50) && m.purged.is_some(),
            "snapshot and purge",
        )
        .await
        .unwrap();
    let snapshot = m.snapshot.unwrap().index;
    let purged = log
        .get_log_state()
        .await
        .unwrap()
        .last_purged_log_id
        .unwrap()
        .index;
    assert!(
        purged + POLICY.logs_kept_after_snapshot <= snapshot + 1,
        "purged {purged}, snapshot {snapshot}"
    );
    let digest = reader.read(|m| m.digest());
    let held = reader.read(|m| m.seat_map(&ev("show")).unwrap().sections[0].held);
    assert_eq!(held, 100);
    raft.shutdown().await.unwrap();
    drop((raft, reader, log));

    // Restart on the same directory: the state is there before any re-election.
    let (raft, reader, _) = start(&store).await;
    assert_eq!(reader.read(|m| m.digest()), digest);
    raft.wait(Some(Duration::from_secs(10)))
        .state(ServerState::Leader, "leader again")
        .await
        .unwrap();
    // A new leader term appends a blank entry, so wait for "at least", not "equal".
    raft.wait(Some(Duration::from_secs(10)))
        .metrics(
            |m| m.last_applied.is_some_and(|l| l.index >= last),
            "applied",
        )
        .await
        .unwrap();
    let out = raft
        .client_write(
            Batch {
                ts_ms: T0 + 1_000,
                commands: vec![Command::Hold(hold_req("show", "late", "r", &["A-1"]))],
            }
            .into(),
        )
        .await
        .unwrap();
    assert!(
        matches!(&out.data[0], Err(raft_store::Refusal::Conflict { seats }) if seats.len() == 1 && &*seats[0] == "A-1")
    );
    raft.shutdown().await.unwrap();
}
