//! One seeded run: start a cluster, create the events, let the buyers loose, inject
//! one kind of fault on a schedule fixed by the seed, heal everything, read the final
//! state from every replica, and check the history.
//!
//! The seed fixes the fault schedule (when, for how long, which node when there is a
//! choice) and every buyer's choices; the cluster's own timing is not reproducible, so
//! a replay runs the same schedule and workload, not the same interleaving. A failed
//! run keeps its history (JSON lines) and prints the command that replays it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use seatd_client::{pb, Client, Options};

use crate::checker::{check, FinalHold, FinalState, Report};
use crate::cluster::Cluster;
use crate::history::{write_jsonl, Recorder};
use crate::target::{bearing, leaders, node_client, wait_converged, wait_ready, Target};
use crate::workload::{map_value, Buyer, ROWS, SEATS_PER_ROW};

/// The faults a scenario can inject.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Cut every link of the leader of a busy shard.
    IsolateLeader,
    /// Split the nodes into a majority and a minority.
    Halves,
    /// Two halves that only one node (the bridge) sees both of.
    Bridge,
    /// Each node sees only its two neighbours.
    Ring,
    /// 150 ms added to every link.
    SlowLinks,
    /// Every chunk on every link delayed by 75-300 ms at random, around openraft's
    /// per-call append deadline (the heartbeat, 150 ms): calls time out after their
    /// request left and before its reply came, again and again.
    SlowAppends,
    /// SIGKILL the leader, restart it a few seconds later.
    KillLeader,
    /// SIGSTOP the leader for a few seconds.
    Pause,
    /// Kill a node, delete its data, restart it empty.
    Wipe,
    /// Restart the leader with its clock a minute ahead or behind.
    ClockSkew,
    /// Take the leader off the network (a container: `docker network disconnect`).
    Disconnect,
    /// Kill every node and start them all again.
    RestartAll,
}

impl Fault {
    /// Container faults (`docker` kill/start, pause/unpause, network disconnect and
    /// connect, restart of every container).
    pub const DOCKER: [Fault; 4] = [
        Fault::KillLeader,
        Fault::Pause,
        Fault::Disconnect,
        Fault::RestartAll,
    ];

    /// One of each fault the process harness injects.
    pub const ALL: [Fault; 10] = [
        Fault::IsolateLeader,
        Fault::Halves,
        Fault::Bridge,
        Fault::Ring,
        Fault::SlowLinks,
        Fault::SlowAppends,
        Fault::KillLeader,
        Fault::Pause,
        Fault::Wipe,
        Fault::ClockSkew,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Fault::IsolateLeader => "isolate-leader",
            Fault::Halves => "halves",
            Fault::Bridge => "bridge",
            Fault::Ring => "ring",
            Fault::SlowLinks => "slow-links",
            Fault::SlowAppends => "slow-appends",
            Fault::KillLeader => "kill-leader",
            Fault::Pause => "pause",
            Fault::Wipe => "wipe",
            Fault::ClockSkew => "clock-skew",
            Fault::Disconnect => "disconnect",
            Fault::RestartAll => "restart-all",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .chain(Self::DOCKER)
            .find(|f| f.name() == s)
    }

    /// Nodes the fault needs at least.
    pub fn nodes_min(self) -> u64 {
        match self {
            Fault::Bridge | Fault::Ring => 5,
            _ => 3,
        }
    }
}

pub struct Scenario {
    pub fault: Fault,
    pub seed: u64,
    pub nodes: u64,
    pub clients: u32,
    pub duration: Duration,
    /// Where a failed run's history is kept.
    pub keep_dir: PathBuf,
}

pub struct Outcome {
    pub report: Report,
    pub faults: Vec<String>,
    pub history: Option<PathBuf>,
}

/// The seed from `SEATD_JEPSEN_SEED`, or a random one (printed with every run).
pub fn seed_from_env() -> u64 {
    std::env::var("SEATD_JEPSEN_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..))
}

impl Outcome {
    /// Panics unless the run is one a test may pass on: no violation, at least one
    /// fault actually injected (none refused), and a workload that really ran.
    pub fn assert_clean(&self, s: &Scenario) {
        let summary = self.summary(s);
        eprintln!("{summary}");
        let seed = s.seed;
        assert!(
            self.report.is_valid(),
            "violations found (seed {seed}):\n{summary}"
        );
        assert!(!self.faults.is_empty(), "no fault was injected:\n{summary}");
        assert!(
            !self.faults.iter().any(|f| f.contains("could not inject")),
            "a fault could not be injected:\n{summary}"
        );
        let ok_ops: usize = self
            .report
            .ops
            .iter()
            .filter(|(k, _)| k.ends_with(":ok"))
            .map(|(_, n)| n)
            .sum();
        assert!(
            ok_ops > 50,
            "the workload barely ran: {:?}",
            self.report.ops
        );
    }

    pub fn summary(&self, s: &Scenario) -> String {
        let mut out = format!(
            "scenario {} (seed {}, {} nodes, {} clients, {:?})\nfaults injected:\n",
            s.fault.name(),
            s.seed,
            s.nodes,
            s.clients,
            s.duration
        );
        for f in &self.faults {
            out.push_str(&format!("  {f}\n"));
        }
        out.push_str(&self.report.summary());
        if let Some(h) = &self.history {
            out.push_str(&format!(
                "history kept in {}\nreplay: SEATD_JEPSEN_SEED={} cargo run -p seatd-jepsen --bin seatd-jepsen -- \
                 --fault {} --nodes {} --secs {}\n",
                h.display(),
                s.seed,
                s.fault.name(),
                s.nodes,
                s.duration.as_secs()
            ));
        }
        out
    }
}

const SHARDS: u32 = 4;
/// Quiet time after the workload, longer than any hold TTL (4 s) and payment window
/// (3 s), so every hold has ended and replicas stop changing before the final read.
pub const QUIESCE_MS: u64 = 5_000;
const EVENTS: usize = 2;
/// Pages of 1,000 holds the final read lists per event, at most (ten million holds).
const FINAL_HOLD_PAGES_MAX: usize = 10_000;

fn layout() -> pb::Layout {
    pb::Layout {
        venue: "Jepsen Hall".into(),
        sections: vec![pb::Section {
            id: "S".into(),
            rows: ROWS
                .iter()
                .map(|r| pb::Row {
                    id: r.to_string(),
                    seats: SEATS_PER_ROW,
                    first: None,
                    seat_ids: vec![],
                })
                .collect(),
        }],
    }
}

/// One scenario on a fresh cluster of processes behind proxies.
pub async fn run(s: &Scenario) -> Result<Outcome, String> {
    if s.nodes < s.fault.nodes_min() {
        return Err(format!(
            "{} needs {} nodes",
            s.fault.name(),
            s.fault.nodes_min()
        ));
    }
    let cluster = Cluster::start(s.nodes, SHARDS, 2)
        .await
        .map_err(|e| format!("cannot start the cluster: {e}"))?;
    run_on(&cluster, s).await
}

/// One scenario on `cluster`: workload, faults, healing, final state, verdict.
pub async fn run_on(cluster: &impl Target, s: &Scenario) -> Result<Outcome, String> {
    if !cluster.supports(s.fault) {
        return Err(format!("this cluster cannot inject {}", s.fault.name()));
    }
    if !wait_ready(cluster, Duration::from_secs(60)).await {
        return Err(format!("cluster not ready\n{}", cluster.log_tails(20)));
    }
    let options = Options {
        attempt_timeout: Duration::from_secs(2),
        retry_budget: Duration::from_secs(6),
        backoff_min: Duration::from_millis(20),
        backoff_max: Duration::from_millis(500),
        batch_holds: true,
        route_to_leaders: true,
    };
    // As an operator where tokens are checked: buyers of every name, and the final
    // listing of holds.
    let token = cluster.operator_token();
    let client = Arc::new(
        Client::with_token(cluster.endpoints(), options, token.as_deref())
            .map_err(|e| e.to_string())?,
    );
    let mut shards = BTreeSet::new();
    for i in 0..EVENTS {
        shards.insert(create_event(&client, i).await?);
    }
    let on_sale = Arc::new(RwLock::new((0..EVENTS).map(event_name).collect::<Vec<_>>()));
    let recorder = Arc::new(Recorder::default());
    let until = Instant::now() + s.duration;
    let mut buyers = tokio::task::JoinSet::new();
    for b in 0..s.clients {
        let buyer = Buyer::new(b, s.seed, on_sale.clone(), client.clone(), recorder.clone());
        buyers.spawn(buyer.run(until));
    }
    // Long runs would sell out and leave only conflicts: a new event goes on sale
    // every `EVENT_ROTATION_MS`, replacing the oldest one on sale.
    let rotation = tokio::spawn(rotate_events(client.clone(), on_sale.clone(), until));
    let busy_shard = *shards.iter().next().expect("an event");
    let faults = inject(cluster, s, busy_shard, until).await;
    while buyers.join_next().await.is_some() {}
    let created = rotation.await.map_err(|e| e.to_string())?;
    let events: Vec<String> = (0..created).map(event_name).collect();

    // Heal everything, then read the final state from every replica.
    cluster.heal().await;
    if !wait_ready(cluster, Duration::from_secs(60)).await {
        return Err(format!(
            "cluster did not recover\n{}",
            cluster.log_tails(30)
        ));
    }
    tokio::time::sleep(Duration::from_millis(QUIESCE_MS)).await;
    let end = final_state(cluster, &client, &events).await?;
    let records = recorder.records();
    let report = check(&records, &end);
    let history = if report.is_valid() {
        None
    } else {
        std::fs::create_dir_all(&s.keep_dir).map_err(|e| e.to_string())?;
        let path = s
            .keep_dir
            .join(format!("{}-{}.jsonl", s.fault.name(), s.seed));
        let file = std::fs::File::create(&path).map_err(|e| e.to_string())?;
        write_jsonl(&records, std::io::BufWriter::new(file)).map_err(|e| e.to_string())?;
        std::fs::write(path.with_extension("logs"), cluster.log_tails(200))
            .map_err(|e| e.to_string())?;
        Some(path)
    };
    Ok(Outcome {
        report,
        faults,
        history,
    })
}

fn event_name(i: usize) -> String {
    format!("ev{i}")
}

async fn create_event(client: &Client, i: usize) -> Result<u32, String> {
    let e = event_name(i);
    let created = client
        .create_event(pb::CreateEventRequest {
            event_id: e.clone(),
            name: format!("Jepsen {e}"),
            starts_at_ms: 1 + i as u64,
            layout: Some(layout()),
            limits: Some(pb::Limits {
                hold_ttl_ms_min: 500,
                checkout_ttl_ms: 3_000,
                ..Default::default()
            }),
        })
        .await
        .map_err(|err| format!("create event {e}: {err}"))?;
    Ok(created.shard)
}

/// How often a fresh event replaces the oldest on sale.
pub const EVENT_ROTATION_MS: u64 = 20_000;

/// Puts a new event on sale every `EVENT_ROTATION_MS` until `until`; returns how many
/// events the run created in all. A creation that fails (the cluster is faulted) is
/// tried again at the next turn with the same id.
async fn rotate_events(
    client: Arc<Client>,
    on_sale: Arc<RwLock<Vec<String>>>,
    until: Instant,
) -> usize {
    let mut next = EVENTS;
    let mut created = EVENTS;
    loop {
        let turn = Instant::now() + Duration::from_millis(EVENT_ROTATION_MS);
        if turn + Duration::from_secs(5) > until {
            return created;
        }
        tokio::time::sleep_until(turn.into()).await;
        // The id counts as created (and is read in the end) once asked for: an
        // unknown outcome may still have created it.
        created = created.max(next + 1);
        if create_event(&client, next).await.is_ok() {
            if let Ok(mut list) = on_sale.write() {
                list.remove(0);
                list.push(event_name(next));
            }
            next += 1;
        }
    }
}

/// Injects `s.fault` in rounds (fault on for 2–4 s, healed for 1–3 s) until `until`;
/// returns what it did, with times.
async fn inject(cluster: &impl Target, s: &Scenario, shard: u32, until: Instant) -> Vec<String> {
    let mut rng = fastrand::Rng::with_seed(s.seed);
    let started = Instant::now();
    let mut log = Vec::new();
    let ids = cluster.node_ids();
    tokio::time::sleep(Duration::from_millis(rng.u64(500..1_500))).await;
    while Instant::now() + Duration::from_secs(3) < until {
        let leader = leaders(cluster)
            .await
            .get(&shard)
            .copied()
            .unwrap_or(ids[rng.usize(0..ids.len())]);
        let on = Duration::from_millis(rng.u64(2_000..4_000));
        let at = started.elapsed().as_millis();
        let what = cluster.inject(s.fault, leader, &mut rng).await;
        log.push(format!("{at:>6} ms  {what} for {} ms", on.as_millis()));
        tokio::time::sleep(on.min(until.saturating_duration_since(Instant::now()))).await;
        cluster.heal().await;
        log.push(format!("{:>6} ms  healed", started.elapsed().as_millis()));
        let off = Duration::from_millis(rng.u64(1_000..3_000));
        tokio::time::sleep(off.min(until.saturating_duration_since(Instant::now()))).await;
    }
    log
}

/// Every replica's seat maps, every hold, and whether replicas converged.
async fn final_state(
    cluster: &impl Target,
    client: &Client,
    events: &[String],
) -> Result<FinalState, String> {
    let mut end = FinalState {
        divergent: wait_converged(cluster, Duration::from_secs(30)).await,
        ..Default::default()
    };
    for event in events {
        let consistent = match client.seat_map(event, false).await {
            Ok(m) => m,
            // An event whose creation was asked for under a fault but never happened.
            Err(seatd_client::Error::NotFound(_)) => continue,
            Err(e) => return Err(format!("final read of {event}: {e}")),
        };
        end.counts.insert(
            event.clone(),
            consistent
                .sections
                .iter()
                .map(|s| (s.capacity, s.available, s.held, s.sold))
                .collect(),
        );
        let mut replicas = BTreeMap::new();
        for id in cluster.node_ids() {
            let mut node = node_client(cluster, id);
            let request = pb::GetSeatMapRequest {
                event_id: event.clone(),
                stale_ok: true,
                ..Default::default()
            };
            let map = node
                .get_seat_map(bearing(request, cluster.operator_token().as_deref()))
                .await
                .map_err(|e| format!("final read of {event} on node {id}: {e}"))?
                .into_inner();
            if let crate::history::Value::Map { seats, .. } = map_value(&map) {
                replicas.insert(id, seats);
            }
        }
        end.maps.insert(event.clone(), replicas);
        // Every hold the event granted, answered or not (ids cannot be guessed, so
        // they are listed, as an operator), page by page; bounded.
        let mut after = 0;
        for _page in 0..FINAL_HOLD_PAGES_MAX {
            let page = client
                .list_holds(event, after, 1_000)
                .await
                .map_err(|e| format!("final list of {event}'s holds after {after}: {e}"))?;
            for h in page.holds {
                let state = seatd_client::hold_state_name(h.state);
                end.holds.insert(
                    h.hold_id.clone(),
                    FinalHold {
                        event: event.clone(),
                        rid: h.client_reservation_id,
                        state: state.into(),
                        seats: h
                            .seats
                            .into_iter()
                            .map(|s| (s.seat_id, s.version))
                            .collect(),
                    },
                );
            }
            match page.next_after {
                Some(next) => after = next,
                None => break,
            }
        }
    }
    Ok(end)
}
