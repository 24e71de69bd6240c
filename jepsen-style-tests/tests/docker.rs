//! The fault suite against the docker compose deployment: the same workload and
//! checker, with container faults (kill and start the leader's container, pause and
//! unpause it, disconnect it from the network and reconnect it, restart every
//! container). Then every container is stopped with SIGTERM and must exit 0.
//!
//! Needs a Docker engine, compose and the image (`bash docker/build.sh`). Without
//! them the test says why and passes, unless `SEATD_DOCKER_TESTS=1` (set by
//! `.ci/run` after it built the image) demands that it runs. Every project it
//! creates is removed afterwards (`down -v`), also when it fails.

use std::time::Duration;

use seatd_jepsen::compose::{unavailable, ComposeCluster};
use seatd_jepsen::run::{run_on, seed_from_env, Fault, Scenario};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_faults_leave_the_checker_clean() {
    let image = std::env::var("SEATD_IMAGE").unwrap_or_else(|_| "seatd:latest".into());
    if let Some(why) = unavailable(&image) {
        if std::env::var("SEATD_DOCKER_TESTS").as_deref() == Ok("1") {
            panic!("SEATD_DOCKER_TESTS=1 but the container suite cannot run: {why}");
        }
        eprintln!("skipped: {why}");
        return;
    }
    let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docker/compose.yaml");
    let seed = seed_from_env();
    for (i, fault) in Fault::DOCKER.into_iter().enumerate() {
        let project = format!("seatdjepsen{}x{i}", std::process::id());
        let cluster = ComposeCluster::up(&file, &project).expect("compose up");
        let s = Scenario {
            fault,
            seed,
            nodes: 3,
            clients: 30,
            duration: Duration::from_secs(8),
            keep_dir: std::env::temp_dir().join("seatd-jepsen"),
        };
        let outcome = run_on(&cluster, &s)
            .await
            .unwrap_or_else(|e| panic!("{} (seed {seed}) could not run: {e}", fault.name()));
        outcome.assert_clean(&s);
        if i == 0 {
            // SIGTERM: every container (3 nodes, 2 frontends, and the one-shot
            // certs and keys services, long done) stops cleanly.
            let codes = cluster.stop_all().expect("compose stop");
            assert_eq!(codes.len(), 7, "containers after stop: {codes:?}");
            assert!(codes.iter().all(|(_, c)| *c == 0), "exit codes {codes:?}");
        }
    }
}
