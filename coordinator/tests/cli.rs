//! The `seatctl` contract, end to end: every command, every JSON key scripts rely on,
//! every error code and exit code; against `seatd dev` (a real process, stopped and
//! started again) and against a multi-process cluster behind two frontends, where a
//! frontend and a node are killed mid-run and the client library's retries still
//! finish every operation exactly once.
//!
//! `seatctl` is the client crate's binary; it is found next to `seatd` in the target
//! directory, where the README's test command (`cargo test --workspace`) builds both.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{TestCluster, SERIAL};

fn seatctl_path() -> PathBuf {
    let p = std::path::Path::new(env!("CARGO_BIN_EXE_seatd")).with_file_name("seatctl");
    assert!(
        p.exists(),
        "{} is missing: run the workspace's tests (cargo test --workspace), which build it",
        p.display()
    );
    p
}

/// Runs `seatctl --json ARGS` against `endpoints`: (exit code, the JSON document).
/// An entry of `endpoints` that starts with `--` is a flag for every call instead
/// (`--token=...`, `--dev-dir=...`).
fn seatctl(endpoints: &[String], args: &[&str]) -> (i32, Value) {
    let mut cmd = Command::new(seatctl_path());
    for e in endpoints {
        if e.starts_with("--") {
            cmd.arg(e);
        } else {
            cmd.args(["--endpoint", e]);
        }
    }
    let out = cmd
        .arg("--json")
        .args(["--timeout", "20s"])
        .args(args)
        .output()
        .expect("run seatctl");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let doc: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "seatctl {args:?} printed no JSON ({e}): {stdout:?} / {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap_or(-1), doc)
}

fn ok(endpoints: &[String], args: &[&str]) -> Value {
    let (code, doc) = seatctl(endpoints, args);
    assert_eq!(code, 0, "seatctl {args:?}: {doc}");
    doc
}

fn fails(endpoints: &[String], args: &[&str], code: i32, kind: &str) -> Value {
    let (got, doc) = seatctl(endpoints, args);
    assert_eq!(got, code, "seatctl {args:?}: {doc}");
    assert_eq!(doc["error"]["code"], kind, "seatctl {args:?}: {doc}");
    assert!(doc["error"]["message"]
        .as_str()
        .is_some_and(|m| !m.is_empty()));
    doc
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A process this test started, killed when the test ends however it ends (a panic
/// included), so no server outlives its test.
struct Proc(Child);

impl std::ops::Deref for Proc {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Proc {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `seatd dev` as a process, until it prints its endpoint.
fn start_dev(dir: &std::path::Path, port: u16) -> (Proc, String) {
    let mut child = Proc(
        Command::new(env!("CARGO_BIN_EXE_seatd"))
            .args(["dev", "--listen", &format!("127.0.0.1:{port}")])
            .args(["--holds-per-user-per-s", "5"])
            .arg("--data-dir")
            .arg(dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let endpoint = loop {
        let line = lines
            .next()
            .expect("seatd dev ended before printing its endpoint")
            .unwrap();
        if let Some(e) = line.strip_prefix("endpoint: ") {
            break e.trim().to_string();
        }
    };
    // Keep draining stdout so the process never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    (child, endpoint)
}

fn terminate(child: &mut Child) -> Option<i32> {
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("process did not stop within 20 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Every command and every exit code, through `endpoints`.
fn exercise_contract(e: &[String]) {
    // event create: generated venue and layout file; event list.
    let ev = ok(
        e,
        &[
            "event",
            "create",
            "--sections",
            "2",
            "--rows",
            "3",
            "--seats-per-row",
            "10",
            "--name",
            "Contract night",
            "--id",
            "contract",
            "--starts-at",
            "2030-01-01T20:00:00Z",
        ],
    );
    assert_eq!(ev["event_id"], "contract");
    assert!(ev["shard"].is_u64());
    let layout = std::env::temp_dir().join(format!("seatctl-layout-{}.json", std::process::id()));
    std::fs::write(
        &layout,
        r#"{"venue":"Tiny","sections":[{"id":"S","rows":[{"id":"R","seats":4}]}]}"#,
    )
    .unwrap();
    let tiny = ok(
        e,
        &[
            "event",
            "create",
            "--layout",
            layout.to_str().unwrap(),
            "--name",
            "Tiny",
        ],
    );
    assert!(tiny["event_id"].as_str().is_some_and(|s| !s.is_empty()));
    let _ = std::fs::remove_file(&layout);
    let list = ok(e, &["event", "list", "--q", "contract"]);
    let events = list["events"].as_array().unwrap();
    assert_eq!(events.len(), 1);
    for key in ["event_id", "name", "starts_at", "shard"] {
        assert!(!events[0][key].is_null(), "event list lacks {key}: {list}");
    }
    assert_eq!(events[0]["starts_at"], "2030-01-01T20:00:00.000Z");
    let later = ok(e, &["event", "list", "--from", "2029-01-01T00:00:00Z"]);
    assert!(later["events"]
        .as_array()
        .unwrap()
        .iter()
        .any(|x| x["event_id"] == "contract"));

    // seatmap
    let map = ok(e, &["seatmap", "contract"]);
    assert_eq!(map["event_id"], "contract");
    assert!(map["shard"].is_u64() && map["index"].is_u64());
    let seats = map["seats"].as_array().unwrap();
    assert_eq!(seats.len(), 60);
    for key in ["id", "section", "row", "state", "version"] {
        assert!(!seats[0][key].is_null(), "seat lacks {key}");
    }
    assert_eq!(seats[0]["state"], "available");
    // One section's seats (rows D-F), with every section's counts.
    let s2 = ok(e, &["seatmap", "contract", "--section", "S2"]);
    let s2_seats = s2["seats"].as_array().unwrap();
    assert_eq!(s2_seats.len(), 30);
    assert_eq!(s2_seats[0]["id"], "D-1");
    assert!(s2_seats.iter().all(|s| s["section"] == "S2"));
    assert_eq!(s2["sections"].as_array().unwrap().len(), 2);
    fails(
        e,
        &["seatmap", "contract", "--section", "S9"],
        5,
        "not_found",
    );

    // hold, conflict, commit, release, hold-status, order
    let h = ok(
        e,
        &[
            "hold", "contract", "--user", "ann", "--seats", "A-1,A-2", "--ttl", "120s",
        ],
    );
    let hold_id = h["hold_id"].as_str().unwrap().to_string();
    assert_eq!(h["seats"], serde_json::json!(["A-1", "A-2"]));
    assert!(h["expires_at"].as_str().is_some());
    // The same request id answers the same hold.
    let again = ok(
        e,
        &[
            "hold",
            "contract",
            "--user",
            "ben",
            "--seats",
            "B-1",
            "--request-id",
            "rq-1",
        ],
    );
    let twice = ok(
        e,
        &[
            "hold",
            "contract",
            "--user",
            "ben",
            "--seats",
            "B-1",
            "--request-id",
            "rq-1",
        ],
    );
    assert_eq!(again["hold_id"], twice["hold_id"]);
    let conflict = fails(
        e,
        &["hold", "contract", "--user", "cy", "--seats", "A-2,A-3"],
        3,
        "conflict",
    );
    assert_eq!(conflict["error"]["seats"], serde_json::json!(["A-2"]));
    let order = ok(
        e,
        &[
            "commit",
            &hold_id,
            "--payment-token",
            "tok_visa",
            "--idempotency-key",
            "pay-1",
        ],
    );
    assert_eq!(order["hold_id"], hold_id.as_str());
    assert_eq!(order["seats"], serde_json::json!(["A-1", "A-2"]));
    let order_id = order["order_id"].as_str().unwrap().to_string();
    assert_eq!(ok(e, &["order", &order_id])["order_id"], order_id.as_str());
    assert_eq!(ok(e, &["hold-status", &hold_id])["state"], "committed");
    let released = ok(e, &["release", again["hold_id"].as_str().unwrap()]);
    assert_eq!(released["state"], "released");

    // invalid (2): bad input, declined card, bad flags
    fails(
        e,
        &["hold", "contract", "--user", "x", "--seats", "Z-99"],
        2,
        "invalid",
    );
    let declined = ok(e, &["hold", "contract", "--user", "dee", "--seats", "C-1"]);
    fails(
        e,
        &[
            "commit",
            declined["hold_id"].as_str().unwrap(),
            "--payment-token",
            "tok_chargeDeclined",
        ],
        2,
        "invalid",
    );
    // expired (4)
    let short = ok(
        e,
        &[
            "hold", "contract", "--user", "eve", "--seats", "C-2", "--ttl", "1s",
        ],
    );
    std::thread::sleep(Duration::from_millis(2_500));
    fails(
        e,
        &[
            "commit",
            short["hold_id"].as_str().unwrap(),
            "--payment-token",
            "tok_visa",
        ],
        4,
        "expired",
    );
    // not found (5)
    fails(
        e,
        &["hold-status", "contract.h999-0000000000000000"],
        5,
        "not_found",
    );
    fails(e, &["seatmap", "no-such-event"], 5, "not_found");
    // rate limited (6): one user asking for far more holds per second than allowed.
    let mut limited = false;
    for n in 1..=30 {
        let seat = format!("C-{}", n % 10 + 1);
        let (code, doc) = seatctl(e, &["hold", "contract", "--user", "bot", "--seats", &seat]);
        if code == 6 {
            assert_eq!(doc["error"]["code"], "rate_limited");
            limited = true;
            break;
        }
    }
    assert!(limited, "30 holds by one user were never rate limited");

    // status
    let status = ok(e, &["status"]);
    assert_eq!(status["nodes"].as_array().unwrap().len(), 3);
    let shards = status["shards"].as_array().unwrap();
    assert!(!shards.is_empty());
    for key in ["shard", "leader", "members", "applied"] {
        assert!(!shards[0][key].is_null(), "shard status lacks {key}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seatctl_contract_against_seatd_dev() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let (mut dev, endpoint) = start_dev(dir.path(), port);
    let dev_dir = format!("--dev-dir={}", dir.path().display());
    // The newcomer's path: seatctl finds the buyer token seatd dev left in its data
    // dir, and the demo event is there on first start.
    let e = vec![endpoint.clone(), dev_dir.clone()];
    let demo = ok(&e, &["seatmap", "demo"]);
    assert_eq!(demo["seats"].as_array().unwrap().len(), 100);
    let quiet = |args: &[&str]| {
        let out = Command::new(seatctl_path())
            .args(["--endpoint", &endpoint, &dev_dir])
            .args(args)
            .arg("-q")
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    let hold_id = quiet(&["hold", "demo", "--seats", "A-1,A-2"]);
    assert!(hold_id.starts_with("demo.h1-"), "{hold_id:?}");
    let order_id = quiet(&["commit", &hold_id, "--payment-token", "tok_visa"]);
    assert!(order_id.starts_with("demo.o1-"), "{order_id:?}");
    assert_eq!(ok(&e, &["hold-status", &hold_id])["user"], "me");
    // Without a token (no dev dir to find one in): unauthenticated (9); the buyer
    // acting as someone else: permission denied (10).
    let nowhere = format!("--dev-dir={}", dir.path().join("none").display());
    fails(
        &[endpoint.clone(), nowhere],
        &["hold", "demo", "--seats", "A-9"],
        9,
        "unauthenticated",
    );
    fails(
        &e,
        &["hold", "demo", "--user", "ann", "--seats", "A-9"],
        10,
        "permission_denied",
    );
    // `login --dev` prints the line that puts the token in a shell.
    let out = Command::new(seatctl_path())
        .args([dev_dir.as_str(), "login", "--dev", "--operator"])
        .output()
        .unwrap();
    let line = String::from_utf8(out.stdout).unwrap();
    let operator = line
        .trim()
        .strip_prefix("export SEATD_TOKEN=")
        .unwrap_or_else(|| panic!("{line:?}"))
        .to_string();
    // Everything else as an operator, who may act for any user (a box office).
    let e = vec![endpoint.clone(), format!("--token={operator}")];
    exercise_contract(&e);
    // unavailable (7): nothing listens there.
    let dead = [format!("http://127.0.0.1:{}", free_port())];
    let (code, doc) = {
        let mut cmd = Command::new(seatctl_path());
        let out = cmd
            .args([
                "--endpoint",
                &dead[0],
                "--json",
                "--timeout",
                "1s",
                "status",
            ])
            .output()
            .unwrap();
        let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
        (out.status.code().unwrap(), doc)
    };
    assert_eq!(
        (code, doc["error"]["code"].as_str()),
        (7, Some("unavailable"))
    );

    // The bench: a short flash sale with commits and releases, checked for oversell.
    let out = Command::new(seatctl_path())
        .args([
            "--endpoint",
            &e[0],
            &dev_dir,
            "bench",
            "--seats",
            "2000",
            "--clients",
            "8",
        ])
        .args([
            "--secs",
            "3",
            "--commit-ratio",
            "0.3",
            "--release-ratio",
            "0.2",
            "--events",
            "2",
            "--threads",
            "2",
        ])
        .output()
        .unwrap();
    let line = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "bench failed: {line} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let kv: BTreeMap<&str, &str> = line
        .split_whitespace()
        .filter_map(|p| p.split_once('='))
        .collect();
    for key in [
        "decisions_per_s",
        "holds_per_s",
        "conflicts",
        "commits_per_s",
        "p50_ms",
        "p99_ms",
        "p999_ms",
        "oversell",
    ] {
        assert!(kv.contains_key(key), "bench line lacks {key}: {line}");
    }
    assert_eq!(kv["oversell"], "0", "{line}");
    assert!(kv["holds"].parse::<u64>().unwrap() > 0, "{line}");
    // A load generator without a thread is refused before it starts.
    let out = Command::new(seatctl_path())
        .args(["--endpoint", &e[0], "bench", "--threads", "0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--threads"));

    // Ctrl-C (SIGTERM) stops it cleanly; the next start keeps the data.
    assert_eq!(terminate(&mut dev), Some(0));
    let (mut dev, endpoint) = start_dev(dir.path(), port);
    let e = vec![endpoint, dev_dir];
    let map = ok(&e, &["seatmap", "demo"]);
    let sold: Vec<&str> = map["seats"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["state"] == "sold")
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(sold, ["A-1", "A-2"]);
    assert_eq!(ok(&e, &["hold-status", &hold_id])["state"], "committed");
    assert_eq!(terminate(&mut dev), Some(0));
}

/// `seatd frontend` as a process.
fn start_frontend(nodes: &str) -> (Proc, String) {
    let addr = format!("127.0.0.1:{}", free_port());
    let child = Command::new(env!("CARGO_BIN_EXE_seatd"))
        .args(["frontend", "--listen", &addr, "--nodes", nodes])
        .args(["--holds-per-user-per-s", "5"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    (Proc(child), format!("http://{addr}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_behind_two_frontends_survives_losing_one_and_a_node() {
    let _serial = SERIAL.lock().await;
    let c = Arc::new(TestCluster::start(3, 8, &[]));
    c.wait_ready(Duration::from_secs(30)).await;
    let nodes: Vec<String> = c.nodes.values().map(|p| p.addr.clone()).collect();
    let (mut f1, e1) = start_frontend(&nodes.join(","));
    let (mut f2, e2) = start_frontend(&nodes[..1].join(","));
    let both = vec![e1.clone(), e2.clone()];
    // Frontends come up once they reach a node; the contract holds through either.
    let deadline = Instant::now() + Duration::from_secs(30);
    while seatctl(&both, &["status"]).0 != 0 {
        assert!(Instant::now() < deadline, "frontends never answered");
        std::thread::sleep(Duration::from_millis(200));
    }
    exercise_contract(std::slice::from_ref(&e2));

    // Buyers through the client library, on both frontends; mid-run one frontend
    // and one node die. Every buyer's hold and commit must finish exactly once.
    let client = Arc::new(
        seatd_client::Client::with_options(
            &both,
            seatd_client::Options {
                attempt_timeout: Duration::from_secs(3),
                retry_budget: Duration::from_secs(30),
                ..Default::default()
            },
        )
        .unwrap(),
    );
    let crowd = client
        .create_event(seatd_client::pb::CreateEventRequest {
            event_id: "crowd".into(),
            name: "Crowd".into(),
            starts_at_ms: 1,
            layout: Some(support::layout(1, 4, 25)),
            limits: None,
        })
        .await
        .unwrap();
    let victim = c.leaders().await[&crowd.shard];
    let mut buyers = tokio::task::JoinSet::new();
    for b in 0..20u32 {
        let client = client.clone();
        buyers.spawn(async move {
            let mut done = Vec::new();
            for i in 0..5u32 {
                let n = b * 5 + i;
                let seat = format!("{}-{}", ["A", "B", "C", "D"][(n / 25) as usize], n % 25 + 1);
                let user = format!("fan{n}");
                let hold = client
                    .hold("crowd", &user, &[&seat], None, None)
                    .await
                    .unwrap_or_else(|e| panic!("hold {seat}: {e}"));
                let order = client
                    .commit(&hold.hold_id, "tok_visa", None)
                    .await
                    .unwrap_or_else(|e| panic!("commit {}: {e}", hold.hold_id));
                done.push((seat, hold.hold_id, order.order_id));
            }
            done
        });
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    let _ = f1.kill();
    let _ = f1.wait();
    // The leader of the buyers' shard: the second frontend learned every node at
    // start, so losing the one it was pointed at costs it nothing.
    c.kill(victim);
    let mut done = Vec::new();
    while let Some(r) = buyers.join_next().await {
        done.extend(r.unwrap());
    }
    assert_eq!(done.len(), 100);
    // Exactly once: 100 orders, 100 distinct holds, every seat sold to its buyer.
    let holds: BTreeSet<&str> = done.iter().map(|d| d.1.as_str()).collect();
    let orders: BTreeSet<&str> = done.iter().map(|d| d.2.as_str()).collect();
    assert_eq!((holds.len(), orders.len()), (100, 100));
    let map = client.seat_map("crowd", false).await.unwrap();
    let sold: BTreeMap<&str, i32> = map.seats.iter().map(|s| (s.id.as_str(), s.state)).collect();
    assert!(sold
        .values()
        .all(|&s| s == seatd_client::pb::SeatState::Sold as i32));
    assert_eq!(map.sections[0].sold, 100);
    // No hold beyond the 100: the next hold number does not exist.
    let extra = client.hold_status("crowd.h101-0000000000000000").await;
    assert!(
        matches!(extra, Err(seatd_client::Error::NotFound(_))),
        "{extra:?}"
    );
    let _ = terminate(&mut f2);
}
