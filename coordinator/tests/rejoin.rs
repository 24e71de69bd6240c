//! A replica that lost its disk, or had it restored from an old backup, rejoins
//! without voting until it holds everything that was committed when it came back
//! (issue 18, finding 3), with real `seatd node` processes.
//!
//! The reviewer's scenario: follower B lags while A and R commit more; R loses what
//! it acknowledged (its disk is replaced, or its data dir is restored from a backup
//! taken before); A dies. Before, R's gate opened as soon as R had applied any entry,
//! was recomputed (open) on a restart, and a restored data dir was not noticed at all,
//! so R could help elect B, which lacks the entries A and R had committed. Here R
//! stays closed while any other member is unreachable, through restarts, so B cannot
//! lead; when A is back, R catches up, opens, and every acknowledged hold is there.

mod support;

use std::time::{Duration, Instant};

use seatd_proto::v1 as pb;
use support::{create, hold, layout, TestCluster, SERIAL};

const READY: Duration = Duration::from_secs(30);

/// Shard 0's view from node `id`, if it answers.
async fn view(c: &TestCluster, id: u64) -> Option<pb::ShardStatus> {
    let s = c.local_status(id).await?;
    s.shards.into_iter().find(|s| s.shard == 0)
}

/// How R loses what it acknowledged.
#[derive(Clone, Copy, PartialEq)]
enum Loss {
    /// An empty data dir (a replaced disk).
    Wiped,
    /// The data dir as it was before the holds (a restored backup): R has state, so
    /// only comparing with the other members shows it went back in time.
    RestoredBackup,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_replica_does_not_vote_until_it_holds_every_committed_entry() {
    reviewers_scenario(Loss::Wiped).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_restored_from_a_backup_does_not_vote_until_it_holds_every_committed_entry() {
    reviewers_scenario(Loss::RestoredBackup).await;
}

async fn reviewers_scenario(loss: Loss) {
    let _serial = SERIAL.lock().await;
    let c = TestCluster::start(3, 1, &[]);
    c.wait_ready(READY).await;
    let a = c.leaders().await[&0];
    let mut followers = (1..=3).filter(|id| *id != a);
    let (b, r) = (followers.next().unwrap(), followers.next().unwrap());
    let mut client = c.client(a).await;
    client
        .create_event(create("gig", layout(1, 4, 10), None))
        .await
        .unwrap();
    if loss == Loss::RestoredBackup {
        // The backup: R stopped cleanly, copied, started again.
        c.wait_converged(READY).await;
        assert_eq!(c.terminate(r), Some(0));
        c.backup(r);
        c.spawn(r);
        c.wait_ready(READY).await;
    }
    // B falls behind: everything from here is committed by A and R alone.
    assert_eq!(c.terminate(b), Some(0));
    let mut acknowledged = Vec::new();
    for i in 0..20 {
        let seat = format!("{}-{}", ["A", "B", "C", "D"][i / 10], i % 10 + 1);
        let h = client
            .hold(hold("gig", &format!("u{i}"), &[&seat], &format!("r{i}")))
            .await
            .unwrap()
            .into_inner();
        acknowledged.push(h.hold_id);
    }
    let committed = view(&c, a).await.unwrap().applied_index;
    // R loses its state while B is still down: R cannot hear from every other
    // member, so it rejoins closed, even once A caught it up.
    c.kill(r);
    match loss {
        Loss::Wiped => c.wipe(r),
        Loss::RestoredBackup => c.restore(r),
    }
    c.spawn(r);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let v = view(&c, r).await;
        if v.as_ref().is_some_and(|v| v.applied_index >= committed) {
            assert!(v.unwrap().rejoining, "R votes again before B answered");
            break;
        }
        if let Some(v) = v {
            assert!(
                v.rejoining,
                "R votes before it heard from every member: {v:?}"
            );
        }
        assert!(Instant::now() < deadline, "R was not caught up by A");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A restart keeps R closed: its store has the shard now, and it can neither
    // read its gate as open nor compare its log with B's.
    c.kill(r);
    c.spawn(r);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(v) = view(&c, r).await {
            assert!(v.rejoining, "a restart opened R's gate");
            break;
        }
        assert!(Instant::now() < deadline, "R did not come back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A dies, B returns: B and R are a majority by count, but R neither votes for B
    // nor stands, so nobody leads and nothing A and R committed can be overwritten.
    c.kill(a);
    c.spawn(b);
    let quiet_until = Instant::now() + Duration::from_secs(6);
    while Instant::now() < quiet_until {
        for id in [b, r] {
            if let Some(v) = view(&c, id).await {
                assert_ne!(v.role, "leader", "node {id} leads without A: {v:?}");
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A is back: a leader is elected, R catches up and opens, and every
    // acknowledged hold is there.
    c.spawn(a);
    c.wait_ready(READY).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while view(&c, r).await.is_none_or(|v| v.rejoining) {
        assert!(Instant::now() < deadline, "R never reopened");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut client = c.client(r).await;
    support::assert_active(&mut client, &acknowledged).await;
    c.wait_converged(READY).await;
}
