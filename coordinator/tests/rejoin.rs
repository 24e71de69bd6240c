//! A replica that lost its disk rejoins without voting until it holds everything that
//! was committed when it came back (issue 18, finding 3), with real `seatd node`
//! processes.
//!
//! The reviewer's scenario: follower B lags while A and R commit more; R's disk is
//! replaced; A dies. Before, R's gate opened as soon as R had applied any entry, was
//! recomputed (open) on a restart, and R could then help elect B, which lacks the
//! entries A and R had committed. Here R stays closed while any other member is
//! unreachable, through restarts, so B cannot lead; when A is back, R catches up,
//! opens, and every acknowledged hold is there.

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_replica_does_not_vote_until_it_holds_every_committed_entry() {
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
    // R's disk is replaced while B is still down: R cannot hear from every other
    // member, so it rejoins closed, even once A caught it up.
    c.kill(r);
    c.wipe(r);
    c.spawn(r);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let v = view(&c, r).await;
        if v.as_ref().is_some_and(|v| v.applied_index > 0) {
            assert!(v.unwrap().rejoining, "R votes again before B answered");
            break;
        }
        assert!(Instant::now() < deadline, "R was not caught up by A");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A restart keeps R closed: its store has the shard now, the gate file says why
    // that is not enough.
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
    // A dies, B returns: B and R are a majority by count, but R neither votes nor
    // stands, so nobody leads and nothing A and R committed can be overwritten.
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
    for id in &acknowledged {
        let h = client
            .get_hold(pb::GetHoldRequest {
                hold_id: id.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(h.state, pb::HoldState::Active as i32, "{id}");
    }
    c.wait_converged(READY).await;
}
