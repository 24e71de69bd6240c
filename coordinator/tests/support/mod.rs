//! A cluster of real `seatd node` processes on loopback, for multi-process tests.
//!
//! Ports are probed free (bind port 0, read it, release it) before the nodes start,
//! since every node must know every address up front. Each node logs to a file in the
//! cluster's temporary directory; when a test panics, the tail of every log is printed.
//! Every process is killed when the cluster is dropped. Every wait is bounded.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use seatd_proto::raft::raft_client::RaftClient;
use seatd_proto::raft::LocalStatusRequest;
use seatd_proto::v1 as pb;
use seatd_proto::v1::seats_client::SeatsClient;
use tonic::transport::Channel;

pub struct Proc {
    /// The client port.
    pub addr: String,
    /// The peer port (mutual TLS): what `--peers` lists.
    pub peer_addr: String,
    pub dir: PathBuf,
    pub log: PathBuf,
    pub child: Mutex<Option<Child>>,
}

pub struct TestCluster {
    pub root: tempfile::TempDir,
    pub nodes: BTreeMap<u64, Proc>,
    pub shards: u32,
    pub extra: Vec<String>,
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind port 0");
    l.local_addr().unwrap().port()
}

/// Serialises the cluster tests of one binary: several clusters at once on a 2-core
/// machine would make elections flap and the tests measure the machine.
pub static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

impl TestCluster {
    /// Starts `n` nodes with `shards` shards; `extra` is added to every node's flags.
    pub fn start(n: u64, shards: u32, extra: &[&str]) -> Self {
        let root = tempfile::tempdir().unwrap();
        let mut nodes = BTreeMap::new();
        for id in 1..=n {
            let dir = root.path().join(format!("node{id}"));
            nodes.insert(
                id,
                Proc {
                    addr: format!("127.0.0.1:{}", free_port()),
                    peer_addr: format!("127.0.0.1:{}", free_port()),
                    log: root.path().join(format!("node{id}.log")),
                    dir,
                    child: Mutex::new(None),
                },
            );
        }
        let ids: Vec<u64> = (1..=n).collect();
        coordinator::tls::write_certs(&root.path().join("certs"), &ids).unwrap();
        let c = Self {
            root,
            nodes,
            shards,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        for id in 1..=n {
            c.spawn(id);
        }
        c
    }

    /// Adds a node to the cluster (not started): later starts of any node name it.
    pub fn add_node(&mut self) -> u64 {
        let id = self.nodes.keys().max().copied().unwrap_or(0) + 1;
        coordinator::tls::write_certs(&self.certs(), &[id]).unwrap();
        self.nodes.insert(
            id,
            Proc {
                addr: format!("127.0.0.1:{}", free_port()),
                peer_addr: format!("127.0.0.1:{}", free_port()),
                log: self.root.path().join(format!("node{id}.log")),
                dir: self.root.path().join(format!("node{id}")),
                child: Mutex::new(None),
            },
        );
        id
    }

    /// Gives a stopped node a new address (a machine that moved); later starts of any
    /// node use it.
    pub fn move_node(&mut self, id: u64) {
        let p = self.nodes.get_mut(&id).unwrap();
        assert!(
            p.child.lock().unwrap().is_none(),
            "move a stopped node only"
        );
        p.addr = format!("127.0.0.1:{}", free_port());
        p.peer_addr = format!("127.0.0.1:{}", free_port());
    }

    /// The cluster's certificates directory (`seatd certs`).
    pub fn certs(&self) -> PathBuf {
        self.root.path().join("certs")
    }

    pub fn peers(&self) -> String {
        self.nodes
            .iter()
            .map(|(id, p)| format!("{id}={}", p.peer_addr))
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn spawn(&self, id: u64) {
        self.spawn_with(id, &[]);
    }

    /// Starts node `id` with `extra` flags after the cluster's own (a skewed clock).
    pub fn spawn_with(&self, id: u64, extra: &[&str]) {
        let peers = self.peers();
        let shards = self.shards.to_string();
        let p = &self.nodes[&id];
        let mut slot = p.child.lock().unwrap();
        assert!(slot.is_none(), "node {id} is already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&p.log)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_seatd"))
            .args(["node", "--id", &id.to_string(), "--listen", &p.addr])
            .args(["--peer-listen", &p.peer_addr])
            .arg("--data-dir")
            .arg(&p.dir)
            .arg("--certs")
            .arg(self.certs())
            .args(["--peers", &peers, "--shards", &shards])
            .args(&self.extra)
            .args(extra)
            .env(
                "RUST_LOG",
                std::env::var("SEATD_TEST_LOG").unwrap_or_else(|_| "info,openraft=warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start seatd node");
        *slot = Some(child);
    }

    /// SIGKILL: the process dies without any chance to clean up.
    pub fn kill(&self, id: u64) {
        if let Some(mut c) = self.nodes[&id].child.lock().unwrap().take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then waits (bounded) for the exit; returns the exit code.
    pub fn terminate(&self, id: u64) -> Option<i32> {
        let mut c = self.nodes[&id].child.lock().unwrap().take()?;
        let status = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(s) = c.try_wait().unwrap() {
                return s.code();
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                panic!("node {id} did not exit within 20 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Deletes a stopped node's data directory.
    pub fn wipe(&self, id: u64) {
        let p = &self.nodes[&id];
        assert!(
            p.child.lock().unwrap().is_none(),
            "wipe a stopped node only"
        );
        std::fs::remove_dir_all(&p.dir).unwrap();
    }

    /// Node `id`'s data directory.
    pub fn data_dir(&self, id: u64) -> PathBuf {
        self.nodes[&id].dir.clone()
    }

    /// Copies a stopped node's data directory aside (an operator's backup).
    pub fn backup(&self, id: u64) {
        let p = &self.nodes[&id];
        assert!(p.child.lock().unwrap().is_none(), "back up a stopped node");
        let copy = self.root.path().join(format!("backup-{id}"));
        let _ = std::fs::remove_dir_all(&copy);
        let ok = Command::new("cp")
            .arg("-a")
            .arg(&p.dir)
            .arg(&copy)
            .status()
            .expect("run cp");
        assert!(ok.success(), "cp -a failed");
    }

    /// Replaces a stopped node's data directory with its backup.
    pub fn restore(&self, id: u64) {
        self.wipe(id);
        let p = &self.nodes[&id];
        let ok = Command::new("cp")
            .arg("-a")
            .arg(self.root.path().join(format!("backup-{id}")))
            .arg(&p.dir)
            .status()
            .expect("run cp");
        assert!(ok.success(), "cp -a failed");
    }

    pub fn running(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .filter(|(_, p)| p.child.lock().unwrap().is_some())
            .map(|(id, _)| *id)
            .collect()
    }

    pub async fn client(&self, id: u64) -> SeatsClient<Channel> {
        let channel =
            tonic::transport::Endpoint::from_shared(format!("http://{}", self.nodes[&id].addr))
                .unwrap()
                .connect_timeout(Duration::from_secs(1))
                .timeout(Duration::from_secs(15))
                .connect_lazy();
        SeatsClient::new(channel).max_decoding_message_size(64 << 20)
    }

    /// A client of node `id`'s peer port, presenting node `id`'s own certificate.
    pub fn peer_client(&self, id: u64) -> RaftClient<Channel> {
        let tls = coordinator::tls::PeerTls::load(&self.certs(), id).unwrap();
        let channel = tonic::transport::Endpoint::from_shared(format!(
            "https://{}",
            self.nodes[&id].peer_addr
        ))
        .unwrap()
        .tls_config(tls.client(id))
        .unwrap()
        .connect_timeout(Duration::from_secs(1))
        .connect_lazy();
        RaftClient::new(channel).max_decoding_message_size(64 << 20)
    }

    /// Node `id`'s own view with its shards' digests (over the peer port: only
    /// peers may ask for digests).
    pub async fn local_status(&self, id: u64) -> Option<pb::ClusterStatus> {
        let mut c = self.peer_client(id);
        let r = tokio::time::timeout(
            Duration::from_secs(2),
            c.local_status(LocalStatusRequest { digest: true }),
        )
        .await;
        r.ok()?.ok().map(|r| r.into_inner())
    }

    /// Where the placement puts each shard, by the current `--peers` list.
    pub fn placement(&self) -> coordinator::placement::Cluster {
        let peers = coordinator::placement::Cluster::parse_peers(&self.peers()).unwrap();
        coordinator::placement::Cluster::new(peers, self.shards).unwrap()
    }

    /// Waits until every shard has a leader that every running member agrees on.
    pub async fn wait_ready(&self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            if self.leaders().await.len() == self.shards as usize {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "cluster not ready within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The leader of each shard, where every running member that hosts it agrees on
    /// one that is running and says it leads.
    pub async fn leaders(&self) -> BTreeMap<u32, u64> {
        let mut views: BTreeMap<u32, Vec<pb::ShardStatus>> = BTreeMap::new();
        for id in self.running() {
            if let Some(s) = self.local_status(id).await {
                for sh in s.shards.into_iter().filter(is_member) {
                    views.entry(sh.shard).or_default().push(sh);
                }
            } else {
                return BTreeMap::new();
            }
        }
        let running = self.running();
        let placement = self.placement();
        let mut out = BTreeMap::new();
        for (shard, v) in views {
            let leader = v[0].leader;
            let agreed = v.iter().all(|s| s.leader == leader);
            let Some(l) = leader else { continue };
            // A new shard starts as a group of one node and takes in the others as
            // they catch up: ready once its voters are the placement's.
            let leads = v.iter().any(|s| {
                s.reported_by == l
                    && s.role_kind == pb::ShardRole::Leader as i32
                    && sorted(&s.members) == sorted(&placement.members(shard))
            });
            if agreed && leads && running.contains(&l) {
                out.insert(shard, l);
            }
        }
        out
    }

    /// Waits until the running replicas of every shard applied the same index and
    /// have identical state; returns each shard's (applied index, digest).
    pub async fn wait_converged(&self, within: Duration) -> BTreeMap<u32, (u64, Vec<u8>)> {
        let deadline = Instant::now() + within;
        loop {
            // Per shard: (reporting node, applied index, digest) of member views, and
            // the members those views name.
            let mut views: BTreeMap<u32, Vec<(u64, u64, Vec<u8>)>> = BTreeMap::new();
            let mut members: BTreeMap<u32, BTreeSet<u64>> = BTreeMap::new();
            let mut all = true;
            let running = self.running();
            for &id in &running {
                match self.local_status(id).await {
                    Some(s) => {
                        for sh in s.shards.into_iter().filter(is_member) {
                            members.entry(sh.shard).or_default().extend(&sh.members);
                            views.entry(sh.shard).or_default().push((
                                sh.reported_by,
                                sh.applied_index,
                                sh.digest,
                            ));
                        }
                    }
                    None => all = false,
                }
            }
            if all && views.len() == self.shards as usize {
                // Every running member reported, and they all agree.
                let complete = views.iter().all(|(shard, v)| {
                    let reported: BTreeSet<u64> = v.iter().map(|x| x.0).collect();
                    members[shard]
                        .iter()
                        .filter(|m| running.contains(m))
                        .all(|m| reported.contains(m))
                });
                let same = views
                    .values()
                    .all(|v| v.windows(2).all(|w| (w[0].1, &w[0].2) == (w[1].1, &w[1].2)));
                if complete && same {
                    return views
                        .into_iter()
                        .map(|(k, v)| (k, (v[0].1, v[0].2.clone())))
                        .collect();
                }
            }
            if Instant::now() > deadline {
                panic!("replicas did not converge within {within:?}: {views:?}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Each shard's voters, as the cluster-wide status through `via` reports them.
    pub async fn members(&self, via: u64) -> BTreeMap<u32, Vec<u64>> {
        let s = self
            .client(via)
            .await
            .cluster_status(pb::ClusterStatusRequest {
                local: false,
                digest: false,
            })
            .await
            .unwrap()
            .into_inner();
        s.shards.into_iter().map(|s| (s.shard, s.members)).collect()
    }

    fn dump_logs(&self) {
        for (id, p) in &self.nodes {
            let text = std::fs::read_to_string(&p.log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            for l in lines.iter().filter(|l| l.contains("panicked at")).take(5) {
                eprintln!("node {id}: {l}");
            }
            let tail = &lines[lines.len().saturating_sub(40)..];
            eprintln!("----- node {id} log (last {} lines) -----", tail.len());
            for l in tail {
                eprintln!("{l}");
            }
        }
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump_logs();
        }
        for p in self.nodes.values() {
            let taken = p.child.lock().map(|mut c| c.take()).unwrap_or(None);
            if let Some(mut c) = taken {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

fn sorted(ids: &[u64]) -> Vec<u64> {
    let mut v = ids.to_vec();
    v.sort_unstable();
    v
}

/// Whether a replica's view comes from a member of the group: a node whose shard has
/// not been initialised yet, or that a shard moved away from, is not one.
fn is_member(s: &pb::ShardStatus) -> bool {
    s.members.contains(&s.reported_by)
}

/// A rectangular layout: `sections` sections of `rows` rows of `seats` seats.
/// Asserts that every hold in `ids` is still active, read through `client`.
pub async fn assert_active(client: &mut SeatsClient<Channel>, ids: &[String]) {
    for id in ids {
        let h = client
            .get_hold(pb::GetHoldRequest {
                hold_id: id.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(h.state, pb::HoldState::Active as i32, "{id}");
    }
}

pub fn layout(sections: u32, rows: u32, seats: u32) -> pb::Layout {
    let l = raft_store::layout::generate("Hall", sections, rows, seats);
    seatd_wire::layout_to_pb(&l)
}

pub fn create(
    event: &str,
    layout: pb::Layout,
    limits: Option<pb::Limits>,
) -> pb::CreateEventRequest {
    pb::CreateEventRequest {
        event_id: event.into(),
        name: format!("Show {event}"),
        starts_at_ms: 1_900_000_000_000,
        layout: Some(layout),
        limits,
    }
}

pub fn hold(event: &str, user: &str, seats: &[&str], rid: &str) -> pb::HoldRequest {
    pb::HoldRequest {
        event_id: event.into(),
        user_id: user.into(),
        seat_ids: seats.iter().map(|s| s.to_string()).collect(),
        client_reservation_id: rid.into(),
        ttl_ms: None,
        expected_versions: vec![],
    }
}

pub fn pay(hold_id: impl Into<String>, token: &str, key: impl Into<String>) -> pb::CommitRequest {
    pb::CommitRequest {
        hold_id: hold_id.into(),
        payment_token: token.into(),
        idempotency_key: key.into(),
    }
}

/// Seat id → (state, version) of an event's map.
pub fn seat_states(map: &pb::SeatMap) -> BTreeMap<String, (i32, u64)> {
    map.seats
        .iter()
        .map(|s| (s.id.clone(), (s.state, s.version)))
        .collect()
}
