//! The docker compose deployment (`docker/compose.yaml`) as a fault target: the same
//! workload and checker, with container faults: kill the leader's container and
//! start it again, `docker pause` / `unpause`, `docker network disconnect` /
//! `connect`, restart every container.
//!
//! Each run is its own compose project (unique name, its own network and volumes,
//! frontends on free loopback ports), and dropping the cluster runs `down -v`, so
//! containers, networks and volumes are removed also when a test fails. The harness
//! reads replicas at the containers' addresses on the project's network, which the
//! host reaches directly; only the frontends publish ports.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use crate::run::Fault;
use crate::target::Target;

/// The compose command: `docker compose` (v2) when present, else `docker-compose`.
fn compose_cmd() -> Option<Vec<String>> {
    let v2 = Command::new("docker").args(["compose", "version"]).output();
    if v2.is_ok_and(|o| o.status.success()) {
        return Some(vec!["docker".into(), "compose".into()]);
    }
    let v1 = Command::new("docker-compose").arg("version").output();
    v1.is_ok_and(|o| o.status.success())
        .then(|| vec!["docker-compose".into()])
}

/// Why container tests cannot run here, if they cannot.
pub fn unavailable(image: &str) -> Option<String> {
    let engine = Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .output();
    if !engine.is_ok_and(|o| o.status.success()) {
        return Some("no Docker engine answers".into());
    }
    if compose_cmd().is_none() {
        return Some("neither `docker compose` nor `docker-compose` is installed".into());
    }
    let img = Command::new("docker")
        .args(["image", "inspect", image])
        .output();
    if !img.is_ok_and(|o| o.status.success()) {
        return Some(format!(
            "the image {image} is not built (bash docker/build.sh)"
        ));
    }
    None
}

fn run(cmd: &mut Command) -> Result<Output, String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(out)
}

pub struct ComposeCluster {
    project: String,
    file: PathBuf,
    compose: Vec<String>,
    frontend_ports: [u16; 2],
    /// Node id → container id.
    containers: BTreeMap<u64, String>,
    network: String,
    /// The cluster's certificates, copied out of the `certs` volume, so the harness
    /// can read digests over the nodes' peer ports.
    certs: tempfile::TempDir,
    /// An operator's token, signed with the key the `keys` service made (the run acts
    /// for buyers of every name).
    operator: String,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

impl ComposeCluster {
    /// `docker compose up` of `file` as a new project.
    pub fn up(file: &Path, project: &str) -> Result<Self, String> {
        let compose = compose_cmd().ok_or("no compose command")?;
        let mut c = Self {
            project: project.to_string(),
            file: file.to_path_buf(),
            compose,
            frontend_ports: [free_port(), free_port()],
            containers: BTreeMap::new(),
            network: format!("{project}_seatd"),
            certs: tempfile::tempdir().map_err(|e| e.to_string())?,
            operator: String::new(),
        };
        c.compose(&["up", "-d"])?;
        let out = c.compose(&["ps", "-a", "-q", "certs"])?;
        let certs_cid = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let into = c.certs.path().join("certs");
        c.docker(&[
            "cp",
            &format!("{certs_cid}:/certs"),
            &into.display().to_string(),
        ])?;
        let out = c.compose(&["ps", "-a", "-q", "keys"])?;
        let keys_cid = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let key = c.certs.path().join("signing-key.pem");
        c.docker(&[
            "cp",
            &format!("{keys_cid}:/signing/signing-key.pem"),
            &key.display().to_string(),
        ])?;
        let private = std::fs::read_to_string(&key).map_err(|e| e.to_string())?;
        c.operator = coordinator::auth::issue::token(
            &private,
            "fault-suite",
            coordinator::auth::Role::Operator,
            std::time::Duration::from_secs(24 * 3_600),
        )?;
        for id in 1..=3u64 {
            let out = c.compose(&["ps", "-q", &format!("node{id}")])?;
            let cid = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if cid.is_empty() {
                return Err(format!("no container for node{id}"));
            }
            c.containers.insert(id, cid);
        }
        Ok(c)
    }

    fn compose(&self, args: &[&str]) -> Result<Output, String> {
        let mut cmd = Command::new(&self.compose[0]);
        cmd.args(&self.compose[1..])
            .args(["-p", &self.project, "-f"])
            .arg(&self.file)
            .args(args)
            .env("SEATD_FRONTEND1_PORT", self.frontend_ports[0].to_string())
            .env("SEATD_FRONTEND2_PORT", self.frontend_ports[1].to_string());
        run(&mut cmd)
    }

    fn docker(&self, args: &[&str]) -> Result<Output, String> {
        run(Command::new("docker").args(args))
    }

    /// The container's address on the project's network (empty while it is off it).
    fn ip(&self, id: u64) -> String {
        let out = self.docker(&[
            "inspect",
            "-f",
            "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
            &self.containers[&id],
        ]);
        out.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    }

    fn state(&self, id: u64) -> String {
        self.docker(&["inspect", "-f", "{{.State.Status}}", &self.containers[&id]])
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    }

    fn connected(&self, id: u64) -> bool {
        self.docker(&[
            "inspect",
            "-f",
            "{{range $k, $v := .NetworkSettings.Networks}}{{$k}} {{end}}",
            &self.containers[&id],
        ])
        .map(|o| String::from_utf8_lossy(&o.stdout).contains(&self.network))
        .unwrap_or(false)
    }

    /// Stops every container (SIGTERM) and reports their exit codes.
    pub fn stop_all(&self) -> Result<Vec<(String, i64)>, String> {
        self.compose(&["stop"])?;
        let mut codes = Vec::new();
        // `-a`: stopped containers too (compose v2 lists only running ones by default).
        let out = self.compose(&["ps", "-a", "-q"])?;
        for cid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            let code = self.docker(&["inspect", "-f", "{{.Name}} {{.State.ExitCode}}", cid])?;
            let text = String::from_utf8_lossy(&code.stdout).trim().to_string();
            let (name, code) = text.rsplit_once(' ').unwrap_or((&text, "-1"));
            codes.push((name.to_string(), code.parse().unwrap_or(-1)));
        }
        Ok(codes)
    }

    pub fn start_all(&self) -> Result<(), String> {
        self.compose(&["start"]).map(|_| ())
    }
}

impl Drop for ComposeCluster {
    fn drop(&mut self) {
        for id in self.containers.keys() {
            let _ = self.docker(&["unpause", &self.containers[id]]);
        }
        let _ = self.compose(&["down", "-v", "--remove-orphans", "-t", "5"]);
    }
}

impl Target for ComposeCluster {
    fn node_ids(&self) -> Vec<u64> {
        self.containers.keys().copied().collect()
    }

    fn operator_token(&self) -> Option<String> {
        Some(self.operator.clone())
    }

    fn endpoints(&self) -> Vec<String> {
        self.frontend_ports
            .iter()
            .map(|p| format!("http://127.0.0.1:{p}"))
            .collect()
    }

    fn node_endpoint(&self, id: u64) -> String {
        format!("http://{}:7400", self.ip(id))
    }

    fn peer_status_client(
        &self,
        id: u64,
    ) -> Option<seatd_proto::raft::raft_client::RaftClient<tonic::transport::Channel>> {
        let ip = self.ip(id);
        if ip.is_empty() {
            return None;
        }
        crate::target::peer_client(&self.certs.path().join("certs"), id, &format!("{ip}:7500"))
    }

    fn shards(&self) -> u32 {
        8
    }

    fn supports(&self, fault: Fault) -> bool {
        Fault::DOCKER.contains(&fault)
    }

    async fn inject(&self, fault: Fault, leader: u64, _rng: &mut fastrand::Rng) -> String {
        let cid = &self.containers[&leader];
        let result = match fault {
            Fault::KillLeader => self.docker(&["kill", cid]).map(|_| "killed"),
            Fault::Pause => self.docker(&["pause", cid]).map(|_| "paused"),
            Fault::Disconnect => self
                .docker(&["network", "disconnect", &self.network, cid])
                .map(|_| "disconnected"),
            Fault::RestartAll => self
                .compose(&["restart", "-t", "10"])
                .map(|_| "restarted every container of"),
            other => return format!("{} is not a container fault", other.name()),
        };
        match result {
            Ok(what) => format!("{what} node{leader}'s container"),
            Err(e) => format!("could not inject {}: {e}", fault.name()),
        }
    }

    async fn heal(&self) {
        for id in self.node_ids() {
            let cid = &self.containers[&id];
            match self.state(id).as_str() {
                "paused" => {
                    let _ = self.docker(&["unpause", cid]);
                }
                "exited" | "created" => {
                    let _ = self.docker(&["start", cid]);
                }
                _ => {}
            }
            if !self.connected(id) {
                let alias = format!("node{id}");
                let _ = self.docker(&["network", "connect", "--alias", &alias, &self.network, cid]);
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    fn log_tails(&self, lines: usize) -> String {
        let mut out = String::new();
        for (id, cid) in &self.containers {
            let logs = Command::new("docker")
                .args(["logs", "--tail", &lines.to_string(), cid])
                .output();
            out.push_str(&format!("----- node{id} -----\n"));
            if let Ok(o) = logs {
                out.push_str(&String::from_utf8_lossy(&o.stderr));
            }
        }
        out
    }
}
