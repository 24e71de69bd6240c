//! A real seatd cluster under the harness's control: `seatd node` processes on
//! loopback whose every node-to-node connection runs through a [`Proxy`] owned by the
//! harness, plus frontends that reach the nodes directly.
//!
//! Node i lists node j's peer port at the address of proxy (i→j) in its `--peers`, so
//! cutting that proxy cuts exactly the link from i to j (Raft messages and forwarded
//! client calls alike; the proxies carry the mutual TLS unopened). Clients and frontends are not behind proxies: a partition separates
//! nodes, and clients still reach every side, as in a real deployment where the
//! client network differs from the replication links.
//!
//! Process faults: SIGKILL and restart, SIGSTOP / SIGCONT, restart with an empty data
//! dir, restart with a skewed clock. Every process is killed when the cluster drops.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use crate::proxy::Proxy;
use crate::run::Fault;
use crate::target::Target;
use seatd_proto::raft::raft_client::RaftClient;

/// The seatd binary the harness runs: `$SEATD_BIN`, else this crate's own copy of the
/// seatd command line (`seatd-under-test`, built with these tests).
pub fn seatd_bin() -> PathBuf {
    if let Ok(p) = std::env::var("SEATD_BIN") {
        return p.into();
    }
    let exe = std::env::current_exe().expect("current exe");
    let mut dir = exe.parent().expect("exe dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir.join("seatd-under-test")
}

pub struct Node {
    pub id: u64,
    /// The client port.
    pub addr: SocketAddr,
    /// The peer port, which the proxies forward to.
    pub peer_addr: SocketAddr,
    pub dir: PathBuf,
    pub log: PathBuf,
    child: Mutex<Option<Child>>,
    /// Extra flags for the next start (a skewed clock).
    extra: Mutex<Vec<String>>,
}

pub struct Cluster {
    pub root: tempfile::TempDir,
    pub nodes: BTreeMap<u64, Node>,
    /// (from, to) → the proxy carrying that link.
    pub links: BTreeMap<(u64, u64), Proxy>,
    pub frontends: Vec<(SocketAddr, Mutex<Option<Child>>)>,
    /// The public key every node and frontend checks tokens with.
    pub auth_keys: std::path::PathBuf,
    /// An operator's token (the run acts for buyers of every name).
    pub operator: String,
    pub shards: u32,
}

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
}

impl Cluster {
    /// Starts `n` nodes (and `frontends` frontends) with every link proxied.
    pub async fn start(n: u64, shards: u32, frontends: usize) -> std::io::Result<Self> {
        let root = tempfile::tempdir()?;
        let mut nodes = BTreeMap::new();
        // The nodes' ports stay bound until every proxy has its own port, so the OS
        // cannot hand a node's port to a proxy; they are released just before the
        // nodes start.
        let mut reserved = Vec::new();
        let ids: Vec<u64> = (1..=n).collect();
        coordinator::tls::write_certs(&root.path().join("certs"), &ids)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        // Tokens are checked, as in production: every node and frontend reads the
        // public key, the run acts as an operator.
        let (signing, public) = coordinator::auth::issue::keygen(&root.path().join("auth"))
            .map_err(std::io::Error::other)?;
        let private = std::fs::read_to_string(&signing)?;
        let operator = coordinator::auth::issue::token(
            &private,
            "fault-suite",
            coordinator::auth::Role::Operator,
            std::time::Duration::from_secs(24 * 3_600),
        )
        .map_err(std::io::Error::other)?;
        for id in 1..=n {
            let probe = std::net::TcpListener::bind("127.0.0.1:0")?;
            let addr = probe.local_addr()?;
            let peer_probe = std::net::TcpListener::bind("127.0.0.1:0")?;
            let peer_addr = peer_probe.local_addr()?;
            reserved.push(probe);
            reserved.push(peer_probe);
            nodes.insert(
                id,
                Node {
                    id,
                    addr,
                    peer_addr,
                    dir: root.path().join(format!("node{id}")),
                    log: root.path().join(format!("node{id}.log")),
                    child: Mutex::new(None),
                    extra: Mutex::default(),
                },
            );
        }
        let mut links = BTreeMap::new();
        for from in 1..=n {
            for to in (1..=n).filter(|&t| t != from) {
                links.insert((from, to), Proxy::start(nodes[&to].peer_addr).await?);
            }
        }
        let mut c = Self {
            root,
            nodes,
            links,
            frontends: Vec::new(),
            shards,
            auth_keys: public,
            operator,
        };
        drop(reserved);
        for id in 1..=n {
            c.spawn(id);
        }
        for _ in 0..frontends {
            let addr = free_addr();
            let list: Vec<String> = c
                .nodes
                .values()
                .map(|n| format!("{}={}", n.id, n.addr))
                .collect();
            let log =
                std::fs::File::create(c.root.path().join(format!("frontend-{}.log", addr.port())))?;
            let child = Command::new(seatd_bin())
                .args(["frontend", "--listen", &addr.to_string()])
                .args(["--nodes", &list.join(",")])
                .args(["--holds-per-user-per-s", "0"])
                .arg("--auth-keys")
                .arg(&c.auth_keys)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()?;
            c.frontends.push((addr, Mutex::new(Some(child))));
        }
        Ok(c)
    }

    /// Node `id`'s `--peers`: itself directly, every other node through its proxy.
    fn peers_of(&self, id: u64) -> String {
        self.nodes
            .values()
            .map(|n| {
                let addr = if n.id == id {
                    n.peer_addr
                } else {
                    self.links[&(id, n.id)].addr
                };
                format!("{}={addr}", n.id)
            })
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn spawn(&self, id: u64) {
        let node = &self.nodes[&id];
        let mut slot = node.child.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_some() {
            return;
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .expect("node log");
        let extra = node.extra.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let child = Command::new(seatd_bin())
            .args([
                "node",
                "--id",
                &id.to_string(),
                "--listen",
                &node.addr.to_string(),
                "--peer-listen",
                &node.peer_addr.to_string(),
            ])
            .arg("--data-dir")
            .arg(&node.dir)
            .arg("--certs")
            .arg(self.root.path().join("certs"))
            .args([
                "--peers",
                &self.peers_of(id),
                "--shards",
                &self.shards.to_string(),
            ])
            .args(["--holds-per-user-per-s", "0", "--route-wait-ms", "3000"])
            .args(["--snapshot-logs", "500", "--keep-logs", "50"])
            .arg("--auth-keys")
            .arg(&self.auth_keys)
            .args(&extra)
            .env("RUST_LOG", "info,openraft=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", seatd_bin().display()));
        *slot = Some(child);
    }

    pub fn is_running(&self, id: u64) -> bool {
        self.nodes[&id]
            .child
            .lock()
            .map(|c| c.is_some())
            .unwrap_or(false)
    }

    pub fn kill(&self, id: u64) {
        let taken = self.nodes[&id].child.lock().ok().and_then(|mut c| c.take());
        if let Some(mut c) = taken {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn signal(&self, id: u64, sig: &str) {
        let pid = self.nodes[&id]
            .child
            .lock()
            .ok()
            .and_then(|c| c.as_ref().map(|c| c.id()));
        if let Some(pid) = pid {
            let _ = Command::new("kill").args([sig, &pid.to_string()]).status();
        }
    }

    pub fn pause(&self, id: u64) {
        self.signal(id, "-STOP");
    }

    pub fn resume(&self, id: u64) {
        self.signal(id, "-CONT");
    }

    /// Kills a node and deletes its data: the next start is an empty replica.
    pub fn wipe(&self, id: u64) {
        self.kill(id);
        let _ = std::fs::remove_dir_all(&self.nodes[&id].dir);
    }

    /// The next start of `id` stamps entries as if its clock were off by `skew_ms`.
    pub fn set_clock_skew(&self, id: u64, skew_ms: i64) {
        let mut extra = self.nodes[&id]
            .extra
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        *extra = if skew_ms == 0 {
            Vec::new()
        } else {
            vec![format!("--clock-skew-ms={skew_ms}")]
        };
    }

    /// Cuts every link between a node of `a` and a node of `b`, both ways.
    pub fn cut_between(&self, a: &BTreeSet<u64>, b: &BTreeSet<u64>) {
        for ((from, to), p) in &self.links {
            if (a.contains(from) && b.contains(to)) || (b.contains(from) && a.contains(to)) {
                p.cut();
            }
        }
    }

    pub fn cut(&self, from: u64, to: u64) {
        self.links[&(from, to)].cut();
    }

    pub fn slow_all(&self, delay: Duration) {
        for p in self.links.values() {
            p.slow(delay);
        }
    }

    /// Delays every chunk on every link by `delay` plus up to `jitter` at random.
    pub fn slow_all_jittered(&self, delay: Duration, jitter: Duration) {
        for p in self.links.values() {
            p.slow_jittered(delay, jitter);
        }
    }

    pub fn heal(&self) {
        for p in self.links.values() {
            p.heal();
        }
    }

    /// Every endpoint a client may use: the frontends, then the nodes.
    pub fn endpoints(&self) -> Vec<String> {
        self.frontends
            .iter()
            .map(|(a, _)| format!("http://{a}"))
            .chain(self.nodes.values().map(|n| format!("http://{}", n.addr)))
            .collect()
    }

    fn tails(&self, lines: usize) -> String {
        let mut out = String::new();
        for n in self.nodes.values() {
            let text = std::fs::read_to_string(&n.log).unwrap_or_default();
            let all: Vec<&str> = text.lines().collect();
            out.push_str(&format!("----- node {} -----\n", n.id));
            for l in &all[all.len().saturating_sub(lines)..] {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in self.nodes.values() {
            // A paused process must be resumed to die promptly.
            self.signal(n.id, "-CONT");
            self.kill(n.id);
        }
        for (_, f) in &self.frontends {
            if let Some(mut c) = f.lock().ok().and_then(|mut c| c.take()) {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

impl Target for Cluster {
    fn node_ids(&self) -> Vec<u64> {
        self.nodes.keys().copied().collect()
    }

    fn endpoints(&self) -> Vec<String> {
        self.endpoints()
    }

    fn node_endpoint(&self, id: u64) -> String {
        format!("http://{}", self.nodes[&id].addr)
    }

    fn operator_token(&self) -> Option<String> {
        Some(self.operator.clone())
    }

    fn peer_status_client(&self, id: u64) -> Option<RaftClient<tonic::transport::Channel>> {
        crate::target::peer_client(
            &self.root.path().join("certs"),
            id,
            &self.nodes[&id].peer_addr.to_string(),
        )
    }

    fn shards(&self) -> u32 {
        self.shards
    }

    fn supports(&self, _fault: Fault) -> bool {
        true // a disconnected node is an isolated one here
    }

    async fn inject(&self, fault: Fault, leader: u64, rng: &mut fastrand::Rng) -> String {
        let ids = self.node_ids();
        match fault {
            Fault::IsolateLeader | Fault::Disconnect => {
                let rest: BTreeSet<u64> = ids.iter().copied().filter(|&i| i != leader).collect();
                self.cut_between(&BTreeSet::from([leader]), &rest);
                format!("isolated node {leader}")
            }
            Fault::Halves => {
                let mut shuffled = ids.clone();
                rng.shuffle(&mut shuffled);
                let (minority, majority) = shuffled.split_at(ids.len() / 2);
                let a: BTreeSet<u64> = minority.iter().copied().collect();
                let b: BTreeSet<u64> = majority.iter().copied().collect();
                self.cut_between(&a, &b);
                format!("split {a:?} | {b:?}")
            }
            Fault::Bridge => {
                let mut shuffled = ids.clone();
                rng.shuffle(&mut shuffled);
                let bridge = shuffled[0];
                let half = (shuffled.len() - 1) / 2;
                let a: BTreeSet<u64> = shuffled[1..=half].iter().copied().collect();
                let b: BTreeSet<u64> = shuffled[half + 1..].iter().copied().collect();
                self.cut_between(&a, &b);
                format!("bridge {bridge} between {a:?} and {b:?}")
            }
            Fault::Ring => {
                let mut ring = ids.clone();
                rng.shuffle(&mut ring);
                let n = ring.len();
                for (i, &from) in ring.iter().enumerate() {
                    let neighbours = [ring[(i + 1) % n], ring[(i + n - 1) % n]];
                    for &to in ids
                        .iter()
                        .filter(|&&t| t != from && !neighbours.contains(&t))
                    {
                        self.cut(from, to);
                    }
                }
                format!("ring {ring:?}")
            }
            Fault::SlowLinks => {
                self.slow_all(Duration::from_millis(150));
                "150 ms on every link".to_string()
            }
            Fault::SlowAppends => {
                self.slow_all_jittered(Duration::from_millis(75), Duration::from_millis(225));
                "75-300 ms on every chunk of every link".to_string()
            }
            Fault::KillLeader => {
                self.kill(leader);
                format!("killed node {leader}")
            }
            Fault::Pause => {
                self.pause(leader);
                format!("paused node {leader}")
            }
            Fault::Wipe => {
                let victim = ids[rng.usize(0..ids.len())];
                self.wipe(victim);
                format!("wiped node {victim}")
            }
            Fault::ClockSkew => {
                let skew: i64 = if rng.bool() { 60_000 } else { -60_000 };
                self.kill(leader);
                self.set_clock_skew(leader, skew);
                self.spawn(leader);
                format!("restarted node {leader} with its clock {skew} ms off")
            }
            Fault::RestartAll => {
                for id in &ids {
                    self.kill(*id);
                }
                for id in &ids {
                    self.spawn(*id);
                }
                "killed and restarted every node".to_string()
            }
        }
    }

    async fn heal(&self) {
        Cluster::heal(self);
        for id in self.node_ids() {
            self.resume(id);
            self.set_clock_skew(id, 0);
            if !self.is_running(id) {
                self.spawn(id);
            }
        }
    }

    fn log_tails(&self, lines: usize) -> String {
        self.tails(lines)
    }
}
