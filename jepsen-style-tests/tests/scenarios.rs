//! One short seeded run per fault kind against a real cluster (3 nodes, or 5 for the
//! bridge and the ring), each checked by the checker. `SEATD_JEPSEN_SEED` replays a
//! run's fault schedule and workload; a failure prints the seed, the summary and the
//! command that replays it, and keeps the history under the system temp directory.

use std::time::Duration;

use seatd_jepsen::run::{run, seed_from_env, Fault, Scenario};

/// Runs serially: several clusters at once on 2 cores would measure the machine.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn scenario(fault: Fault) {
    let _serial = SERIAL.lock().await;
    let seed = seed_from_env();
    let s = Scenario {
        fault,
        seed,
        nodes: fault.nodes_min(),
        clients: 30,
        duration: Duration::from_secs(10),
        keep_dir: std::env::temp_dir().join("seatd-jepsen"),
    };
    let outcome = run(&s)
        .await
        .unwrap_or_else(|e| panic!("scenario {} (seed {seed}) could not run: {e}", fault.name()));
    outcome.assert_clean(&s);
}

macro_rules! scenarios {
    ($($name:ident => $fault:expr),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                scenario($fault).await;
            }
        )*
    };
}

scenarios! {
    isolate_leader => Fault::IsolateLeader,
    majority_minority => Fault::Halves,
    bridge => Fault::Bridge,
    ring => Fault::Ring,
    slow_links => Fault::SlowLinks,
    slow_appends => Fault::SlowAppends,
    kill_leader => Fault::KillLeader,
    pause_leader => Fault::Pause,
    wipe_a_node => Fault::Wipe,
    clock_skew => Fault::ClockSkew,
}
