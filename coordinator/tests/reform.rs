//! `seatd reform`, the way out when a majority of a shard's replicas lost their disks
//! (issue 18), with real `seatd node` processes.
//!
//! Two of three replicas come back empty. Neither may vote: each lost what it
//! acknowledged, and the other's answer proves nothing, so the shard elects no leader
//! by itself (it must not: an entry committed by the two lost replicas alone would
//! silently vanish). The operator re-forms the shard on the stopped survivor, which
//! then leads alone; the two empty replicas join as learners, catch up, are promoted,
//! and every hold acknowledged before is there.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use support::{create, hold, layout, TestCluster, SERIAL};

const READY: Duration = Duration::from_secs(60);

fn reform(c: &TestCluster, id: u64, yes: bool) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_seatd"));
    cmd.arg("reform")
        .arg("--data-dir")
        .arg(c.data_dir(id))
        .args(["--shard", "0"]);
    if yes {
        cmd.arg("--yes");
    }
    cmd.output().expect("run seatd reform")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_whose_majority_lost_its_disks_is_re_formed_from_the_survivor() {
    let _serial = SERIAL.lock().await;
    let c = TestCluster::start(3, 1, &[]);
    c.wait_ready(READY).await;
    let leader = c.leaders().await[&0];
    // The survivor is a follower: a leader restarted with its vote resumes its own
    // term (openraft), so the lost replicas would only be caught up by it.
    let survivor = (1..=3).find(|id| *id != leader).unwrap();
    let mut client = c.client(leader).await;
    client
        .create_event(create("gig", layout(1, 2, 10), None))
        .await
        .unwrap();
    let mut acknowledged = Vec::new();
    for i in 0..10 {
        let seat = format!("A-{}", i + 1);
        let h = client
            .hold(hold("gig", &format!("u{i}"), &[&seat], &format!("r{i}")))
            .await
            .unwrap()
            .into_inner();
        acknowledged.push(h.hold_id);
    }
    c.wait_converged(READY).await;
    let lost: Vec<u64> = (1..=3).filter(|id| *id != survivor).collect();
    for id in 1..=3 {
        assert_eq!(c.terminate(id), Some(0));
    }
    for &id in &lost {
        c.wipe(id);
    }
    for id in 1..=3 {
        c.spawn(id);
    }
    // By itself the shard elects nobody: the empty replicas do not vote.
    let quiet_until = Instant::now() + Duration::from_secs(6);
    while Instant::now() < quiet_until {
        for id in 1..=3 {
            if let Some(s) = c.local_status(id).await {
                let v = s.shards.iter().find(|s| s.shard == 0).unwrap();
                assert_ne!(v.role, "leader", "node {id} leads: {v:?}");
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Not on a running node (its store is locked), and not without --yes.
    let out = reform(&c, survivor, true);
    assert!(!out.status.success(), "re-formed a running node");
    assert_eq!(c.terminate(survivor), Some(0));
    let out = reform(&c, survivor, false);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--yes"));
    // The operator re-forms the shard on the survivor, and is told loudly.
    let out = reform(&c, survivor, true);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains("WARNING") && said.contains("only voter"),
        "{said}"
    );
    c.spawn(survivor);

    // The survivor leads, the others catch up and are voters again.
    c.wait_ready(READY).await;
    let deadline = Instant::now() + READY;
    for &id in &lost {
        while c
            .local_status(id)
            .await
            .and_then(|s| s.shards.into_iter().find(|s| s.shard == 0))
            .is_none_or(|v| v.rejoining)
        {
            assert!(Instant::now() < deadline, "node {id} never caught up");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let mut client = c.client(lost[0]).await;
    support::assert_active(&mut client, &acknowledged).await;
    c.wait_converged(READY).await;
}
