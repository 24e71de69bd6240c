//! Multi-process cluster tests: real `seatd node` processes on loopback, 3 replicas,
//! talking to each other over gRPC, driven through their client API.
//!
//! What they show: any node serves any call (forwarding to the shard leader); holds,
//! commits, releases and expiry work through every node; replicas converge to
//! identical state; a killed leader is replaced and loses nothing acknowledged; a
//! lagging follower catches up from the log and, after the log was purged, from a
//! snapshot (also with an empty data dir); a full restart keeps everything; bad input
//! gets the right error and changes nothing; a leader whose wall clock is an hour fast
//! expires no hold early.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use seatd_proto::v1 as pb;
use support::{create, hold, layout, pay, seat_states, TestCluster, SERIAL};
use tonic::Code;

const READY: Duration = Duration::from_secs(30);
const CONVERGE: Duration = Duration::from_secs(30);

fn state_of(h: &pb::Hold) -> pb::HoldState {
    pb::HoldState::try_from(h.state).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holds_commits_releases_and_expiry_work_through_every_node() {
    let _serial = SERIAL.lock().await;
    let c = TestCluster::start(3, 8, &["--payment-timeout-ms", "300"]);
    c.wait_ready(READY).await;
    let nodes = [1u64, 2, 3];
    let limits = pb::Limits {
        hold_ttl_ms_min: 500,
        ..Default::default()
    };
    let events = ["ev-a", "ev-b", "ev-c", "ev-d"];
    for (i, e) in events.iter().enumerate() {
        let mut client = c.client(nodes[i % 3]).await;
        let ev = client
            .create_event(create(e, layout(1, 4, 10), Some(limits)))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(ev.capacity, 40);
        assert_eq!(ev.event_id, *e);
        // Creating it again through another node is a no-op that succeeds.
        let again = c
            .client(nodes[(i + 1) % 3])
            .await
            .create_event(create(e, layout(1, 4, 10), Some(limits)))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(again, ev);
    }

    for (i, e) in events.iter().enumerate() {
        let (n0, n1, n2) = (nodes[i % 3], nodes[(i + 1) % 3], nodes[(i + 2) % 3]);
        let (mut c0, mut c1, mut c2) = (c.client(n0).await, c.client(n1).await, c.client(n2).await);

        // Hold through one node, commit through the next.
        let h = c0
            .hold(hold(e, "alice", &["A-1", "A-2"], "r1"))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(state_of(&h), pb::HoldState::Active);
        assert!(h.hold_id.starts_with(&format!("{e}.h")));
        // A retry with the same reservation id, through a third node: the same hold.
        let retry = c2
            .hold(hold(e, "alice", &["A-1", "A-2"], "r1"))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(retry.hold_id, h.hold_id);
        // Somebody else wants A-2: conflict, naming it.
        let taken = c1
            .hold(hold(e, "bob", &["A-2", "A-3"], "r2"))
            .await
            .unwrap_err();
        assert_eq!(taken.code(), Code::Aborted);
        assert_eq!(
            coordinator::error::conflict_seats(&taken).unwrap(),
            vec!["A-2"]
        );
        let order = c1
            .commit(pay(h.hold_id.clone(), "tok_visa", format!("{e}-k1")))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(order.seat_ids, vec!["A-1", "A-2"]);
        assert!(order.payment_ref.starts_with("ch_test_"));
        // Committing again with the key, elsewhere: the same order.
        let again = c2
            .commit(pay(h.hold_id.clone(), "tok_visa", format!("{e}-k1")))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(again, order);
        let fetched = c0
            .get_order(pb::GetOrderRequest {
                order_id: order.order_id.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(fetched, order);

        // Declined: the hold is active again.
        let h2 = c1
            .hold(hold(e, "carol", &["B-1"], "r3"))
            .await
            .unwrap()
            .into_inner();
        let declined = c2
            .commit(pay(
                h2.hold_id.clone(),
                "tok_chargeDeclined",
                format!("{e}-k2"),
            ))
            .await
            .unwrap_err();
        assert_eq!(declined.code(), Code::FailedPrecondition);
        assert!(declined.message().contains("declined"), "{declined:?}");
        let h2 = c0
            .get_hold(pb::GetHoldRequest {
                hold_id: h2.hold_id,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(state_of(&h2), pb::HoldState::Active);

        // The gateway times out: the outcome is unknown, the checkout stays open.
        let h3 = c0
            .hold(hold(e, "dave", &["B-2"], "r4"))
            .await
            .unwrap()
            .into_inner();
        let timeout = c1
            .commit(pay(h3.hold_id.clone(), "tok_timeout", format!("{e}-k3")))
            .await
            .unwrap_err();
        assert_eq!(timeout.code(), Code::Unavailable, "{timeout:?}");
        let h3 = c2
            .get_hold(pb::GetHoldRequest {
                hold_id: h3.hold_id,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(state_of(&h3), pb::HoldState::CheckingOut);

        // Release through a third node.
        let h4 = c2
            .hold(hold(e, "erin", &["C-1"], "r5"))
            .await
            .unwrap()
            .into_inner();
        let released = c0
            .release(pb::ReleaseRequest {
                hold_id: h4.hold_id.clone(),
                user_id: "erin".into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(state_of(&released), pb::HoldState::Released);

        // A short hold that nobody touches again.
        let mut short = hold(e, "frank", &["D-1", "D-2"], "r6");
        short.ttl_ms = Some(600);
        c1.hold(short).await.unwrap();
    }

    // Expiry: nothing reads or writes these events, yet the seats come back.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    for (i, e) in events.iter().enumerate() {
        let mut client = c.client(nodes[i % 3]).await;
        let map = client
            .get_seat_map(pb::GetSeatMapRequest {
                event_id: e.to_string(),
                stale_ok: false,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let s = seat_states(&map);
        let sold = pb::SeatState::Sold as i32;
        let held = pb::SeatState::Held as i32;
        let free = pb::SeatState::Available as i32;
        assert_eq!(s["A-1"].0, sold);
        assert_eq!(s["A-2"].0, sold);
        assert_eq!(s["B-1"].0, held);
        assert_eq!(s["B-2"].0, held);
        assert_eq!(s["C-1"].0, free);
        assert_eq!(s["D-1"].0, free, "expired seat D-1 not freed");
        assert_eq!(s["D-2"].0, free);
        let counts = &map.sections[0];
        assert_eq!((counts.sold, counts.held, counts.available), (2, 2, 36));
    }

    // Every node lists every event; the text filter works.
    for n in nodes {
        let mut client = c.client(n).await;
        let all = client
            .list_events(pb::ListEventsRequest::default())
            .await
            .unwrap()
            .into_inner();
        let ids: Vec<&str> = all.events.iter().map(|e| e.event_id.as_str()).collect();
        assert_eq!(ids, events);
        let one = client
            .list_events(pb::ListEventsRequest {
                q: "SHOW EV-C".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(one.events.len(), 1);
    }

    let converged = c.wait_converged(CONVERGE).await;
    // Stale reads from every replica, once converged, match the consistent read.
    for e in events {
        let mut maps = Vec::new();
        for n in nodes {
            let map = c
                .client(n)
                .await
                .get_seat_map(pb::GetSeatMapRequest {
                    event_id: e.into(),
                    stale_ok: true,
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            assert_eq!(map.applied_index, converged[&map.shard].0);
            maps.push(map);
        }
        assert!(maps.windows(2).all(|w| w[0] == w[1]));
    }

    // Cluster status through any node names every shard's leader.
    let status = c
        .client(2)
        .await
        .cluster_status(pb::ClusterStatusRequest {
            local: false,
            digest: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.nodes.len(), 3);
    assert!(status.nodes.iter().all(|n| n.reachable));
    assert_eq!(status.shards.len(), 8);
    assert!(status
        .shards
        .iter()
        .all(|s| s.leader.is_some() && s.members.len() == 3));
}

/// Outcome of one client's attempt at a hold, as the client saw it.
#[derive(Debug)]
enum Seen {
    Held(pb::Hold),
    Conflict,
    Unknown,
}

/// Holds a seat through the given nodes, retrying UNAVAILABLE with the same
/// reservation id, as the client library does.
async fn hold_with_retries(c: &TestCluster, via: &[u64], req: pb::HoldRequest) -> Seen {
    for attempt in 0..20 {
        let mut client = c.client(via[attempt % via.len()]).await;
        match client.hold(req.clone()).await {
            Ok(h) => return Seen::Held(h.into_inner()),
            Err(s) if s.code() == Code::Aborted => return Seen::Conflict,
            Err(s)
                if matches!(
                    s.code(),
                    Code::Unavailable | Code::Cancelled | Code::Unknown
                ) =>
            {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(s) => panic!("unexpected hold error: {s:?}"),
        }
    }
    Seen::Unknown
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_of_a_busy_shard_loses_nothing_acknowledged() {
    let _serial = SERIAL.lock().await;
    let c = TestCluster::start(3, 8, &[]);
    c.wait_ready(READY).await;
    let event = "busy";
    let created = c
        .client(1)
        .await
        .create_event(create(event, layout(1, 4, 50), None))
        .await
        .unwrap()
        .into_inner();
    let shard = created.shard;
    let leaders = c.leaders().await;
    let victim = leaders[&shard];
    let survivors: Vec<u64> = [1, 2, 3].into_iter().filter(|&n| n != victim).collect();

    // 16 buyers, each trying single seats in its own stride of the 200 seats, through
    // the nodes that will survive.
    let c = Arc::new(c);
    let stop_at = Instant::now() + Duration::from_secs(4);
    let mut buyers = tokio::task::JoinSet::new();
    for b in 0..16u32 {
        let c = c.clone();
        let via = survivors.clone();
        buyers.spawn(async move {
            let mut seen = Vec::new();
            let mut i = 0u32;
            while Instant::now() < stop_at && i < 200 {
                let seat_no = (b + 16 * i) % 200;
                let seat = format!(
                    "{}-{}",
                    raft_store::layout::row_label((seat_no / 50) as usize),
                    seat_no % 50 + 1
                );
                let rid = format!("b{b}-{i}");
                let req = hold(event, &format!("buyer{b}-{i}"), &[&seat], &rid);
                seen.push((req.clone(), hold_with_retries(&c, &via, req).await));
                i += 1;
            }
            seen
        });
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    c.kill(victim);
    let killed_at = Instant::now();
    // A new leader takes over (the survivors agree on it).
    let new_leader = loop {
        if let Some(&l) = c.leaders().await.get(&shard) {
            break l;
        }
        assert!(
            killed_at.elapsed() < Duration::from_secs(15),
            "no new leader"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let failover = killed_at.elapsed();
    eprintln!(
        "leader {victim} of shard {shard} killed; node {new_leader} took over in {failover:?}"
    );
    assert_ne!(new_leader, victim);

    let mut seen = Vec::new();
    while let Some(r) = buyers.join_next().await {
        seen.extend(r.unwrap());
    }
    // Calls whose outcome the buyer never learned: ask again with the same id. The
    // answer is their first outcome if they were applied.
    for (req, s) in seen.iter_mut() {
        if matches!(s, Seen::Unknown) {
            *s = hold_with_retries(&c, &survivors, req.clone()).await;
        }
        assert!(!matches!(s, Seen::Unknown), "still unknown: {req:?}");
    }
    let acked: Vec<&pb::Hold> = seen
        .iter()
        .filter_map(|(_, s)| match s {
            Seen::Held(h) => Some(h),
            _ => None,
        })
        .collect();
    assert!(acked.len() > 50, "too few holds granted: {}", acked.len());

    // Every acknowledged hold is in the final state, seat for seat.
    let mut client = c.client(new_leader).await;
    let map = client
        .get_seat_map(pb::GetSeatMapRequest {
            event_id: event.into(),
            stale_ok: false,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let states = seat_states(&map);
    let mut held_seats = BTreeSet::new();
    for h in &acked {
        let now = client
            .get_hold(pb::GetHoldRequest {
                hold_id: h.hold_id.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(now.seats, h.seats, "hold {} changed", h.hold_id);
        assert_eq!(state_of(&now), pb::HoldState::Active);
        for s in &h.seats {
            assert_eq!(states[&s.seat_id].0, pb::SeatState::Held as i32);
            assert!(
                held_seats.insert(s.seat_id.clone()),
                "{} in two holds",
                s.seat_id
            );
        }
    }
    // Nothing else is held, and nothing was applied twice: every hold that exists
    // belongs to exactly one reservation id, one that a buyer was told about.
    let held_in_map = states
        .values()
        .filter(|(st, _)| *st == pb::SeatState::Held as i32)
        .count();
    assert_eq!(held_in_map, held_seats.len());
    let acked_ids: BTreeMap<&str, &str> = acked
        .iter()
        .map(|h| (h.client_reservation_id.as_str(), h.hold_id.as_str()))
        .collect();
    assert_eq!(
        acked_ids.len(),
        acked.len(),
        "one reservation id got two holds"
    );
    // Every hold the shard granted (ids cannot be walked: they are listed, a page at a
    // time), each one acknowledged, under the id it was acknowledged with.
    let (mut existing, mut after) = (0, 0);
    for page in 0.. {
        assert!(page < 100, "more pages than holds");
        let listed = client
            .list_holds(pb::ListHoldsRequest {
                event_id: event.to_string(),
                after,
                limit: 1_000,
            })
            .await
            .expect("listed")
            .into_inner();
        for h in listed.holds {
            assert_eq!(
                acked_ids.get(h.client_reservation_id.as_str()),
                Some(&h.hold_id.as_str())
            );
            existing += 1;
        }
        match listed.next_after {
            Some(next) => after = next,
            None => break,
        }
    }
    assert_eq!(existing, acked.len());

    // The old leader comes back and catches up.
    c.spawn(victim);
    c.wait_converged(CONVERGE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_follower_catches_up_from_the_log_and_from_a_snapshot() {
    let _serial = SERIAL.lock().await;
    let c = TestCluster::start(3, 2, &["--snapshot-logs", "40", "--keep-logs", "5"]);
    c.wait_ready(READY).await;
    let event = "lag";
    let created = c
        .client(1)
        .await
        .create_event(create(event, layout(2, 10, 50), None))
        .await
        .unwrap()
        .into_inner();
    let shard = created.shard;
    let leader = c.leaders().await[&shard];
    let follower = [1, 2, 3].into_iter().find(|&n| n != leader).unwrap();
    let other = [1, 2, 3]
        .into_iter()
        .find(|&n| n != leader && n != follower)
        .unwrap();

    // A clean stop: SIGTERM, exit 0.
    assert_eq!(c.terminate(follower), Some(0));
    let mut seat = 0u32;

    // Writes, one entry each, until the leader purged past what the follower has.
    async fn hold_one(c: &TestCluster, via: u64, event: &str, n: u32) {
        let seat = format!(
            "{}-{}",
            raft_store::layout::row_label((n / 50) as usize),
            n % 50 + 1
        );
        c.client(via)
            .await
            .hold(hold(event, &format!("u{n}"), &[&seat], &format!("r{n}")))
            .await
            .unwrap();
    }
    async fn purged(c: &TestCluster, node: u64, shard: u32) -> u64 {
        let s = c.local_status(node).await.unwrap();
        s.shards
            .iter()
            .find(|s| s.shard == shard)
            .unwrap()
            .purged_index
    }
    let before = c.local_status(leader).await.unwrap();
    let start_index = before
        .shards
        .iter()
        .find(|s| s.shard == shard)
        .unwrap()
        .last_log_index;
    while purged(&c, leader, shard).await <= start_index + 1 {
        hold_one(&c, other, event, seat).await;
        seat += 1;
        assert!(seat < 500, "the leader never purged its log");
    }
    // Back with its data: caught up (by snapshot, as its next entry is gone).
    c.spawn(follower);
    c.wait_converged(CONVERGE).await;

    // Again with an empty data dir: a fresh replica, caught up by snapshot.
    assert_eq!(c.terminate(follower), Some(0));
    for _ in 0..60 {
        hold_one(&c, other, event, seat).await;
        seat += 1;
    }
    c.wipe(follower);
    c.spawn(follower);
    let converged = c.wait_converged(CONVERGE).await;
    let s = c.local_status(follower).await.unwrap();
    let mine = s.shards.iter().find(|s| s.shard == shard).unwrap();
    assert_eq!(mine.applied_index, converged[&shard].0);
    assert_eq!(mine.digest, converged[&shard].1);
    // And it serves reads of what it never saw written.
    let map = c
        .client(follower)
        .await
        .get_seat_map(pb::GetSeatMapRequest {
            event_id: event.into(),
            stale_ok: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let held = map.sections.iter().map(|s| s.held).sum::<u32>();
    assert_eq!(held, seat);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_and_restarting_every_node_keeps_everything_acknowledged() {
    let _serial = SERIAL.lock().await;
    let mut c = TestCluster::start(3, 8, &[]);
    c.wait_ready(READY).await;
    let mut orders = Vec::new();
    let mut holds = Vec::new();
    for (i, e) in ["r1", "r2", "r3"].iter().enumerate() {
        let mut client = c.client(i as u64 + 1).await;
        client
            .create_event(create(e, layout(1, 2, 10), None))
            .await
            .unwrap();
        let h = client
            .hold(hold(e, "ann", &["A-1", "A-2"], "x"))
            .await
            .unwrap()
            .into_inner();
        let o = client
            .commit(pay(h.hold_id, "tok_visa", format!("{e}-pay")))
            .await
            .unwrap()
            .into_inner();
        orders.push(o);
        holds.push(
            client
                .hold(hold(e, "ben", &["B-1"], "y"))
                .await
                .unwrap()
                .into_inner(),
        );
    }
    let before = c.wait_converged(CONVERGE).await;
    for n in [1, 2, 3] {
        assert_eq!(c.terminate(n), Some(0), "node {n} did not exit cleanly");
    }
    // Every node comes back on a new port: the --peers list, not the addresses Raft
    // remembered, says where they are.
    for n in [1, 2, 3] {
        c.move_node(n);
    }
    for n in [1, 2, 3] {
        c.spawn(n);
    }
    c.wait_ready(READY).await;
    for (o, h) in orders.iter().zip(&holds) {
        let mut client = c.client(2).await;
        let again = client
            .get_order(pb::GetOrderRequest {
                order_id: o.order_id.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(&again, o);
        let again = client
            .get_hold(pb::GetHoldRequest {
                hold_id: h.hold_id.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(&again, h);
    }
    // Every replica still holds the same state it had (new entries may only be the
    // new leaders' blank entries).
    let after = c.wait_converged(CONVERGE).await;
    for (shard, (index, _)) in &after {
        assert!(*index >= before[shard].0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_the_right_error_and_changes_nothing() {
    let _serial = SERIAL.lock().await;
    let c = TestCluster::start(3, 4, &[]);
    c.wait_ready(READY).await;
    let mut client = c.client(3).await;
    let event = "strict";
    client
        .create_event(create(event, layout(1, 2, 20), None))
        .await
        .unwrap();
    let read_map = || async {
        c.client(1)
            .await
            .get_seat_map(pb::GetSeatMapRequest {
                event_id: event.into(),
                stale_ok: false,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
    };
    let map_before = read_map().await;

    let all_seats: Vec<String> = (1..=11).map(|n| format!("A-{n}")).collect();
    let seats: Vec<&str> = all_seats.iter().map(String::as_str).collect();
    let cases: Vec<(pb::HoldRequest, Code)> = vec![
        (hold(event, "u", &seats, "too-many"), Code::InvalidArgument),
        (hold("nope", "u", &["A-1"], "r"), Code::NotFound),
        (hold("bad id!", "u", &["A-1"], "r"), Code::InvalidArgument),
        (hold(event, "u", &["Z-99"], "r"), Code::InvalidArgument),
        (hold(event, "", &["A-1"], "r"), Code::InvalidArgument),
        (hold(event, "u", &[], "r"), Code::InvalidArgument),
        (
            pb::HoldRequest {
                ttl_ms: Some(10),
                ..hold(event, "u", &["A-1"], "short")
            },
            Code::InvalidArgument,
        ),
        (
            pb::HoldRequest {
                expected_versions: vec![1, 2],
                ..hold(event, "u", &["A-1"], "cas")
            },
            Code::InvalidArgument,
        ),
    ];
    for (req, code) in cases {
        let err = client.hold(req.clone()).await.unwrap_err();
        assert_eq!(err.code(), code, "{req:?}: {err:?}");
        assert!(!err.message().is_empty());
    }
    for (id, code) in [
        ("garbage", Code::InvalidArgument),
        ("strict.h999-0123456789abcdef", Code::NotFound),
        ("nope.h1-0123456789abcdef", Code::NotFound),
    ] {
        let err = client
            .get_hold(pb::GetHoldRequest { hold_id: id.into() })
            .await
            .unwrap_err();
        assert_eq!(err.code(), code, "{id}: {err:?}");
        let err = client.commit(pay(id, "tok_visa", "k")).await.unwrap_err();
        assert_eq!(err.code(), code, "{id}: {err:?}");
    }
    let err = client
        .create_event(pb::CreateEventRequest {
            layout: None,
            ..create("nolayout", layout(1, 1, 1), None)
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = client
        .set_sale(pb::SetSaleRequest {
            event_id: event.into(),
            sale: 42,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    // Oversized: a 20 MB name.
    let err = client
        .create_event(pb::CreateEventRequest {
            name: "x".repeat(20 << 20),
            ..create("huge", layout(1, 1, 1), None)
        })
        .await
        .unwrap_err();
    assert!(
        matches!(
            err.code(),
            Code::OutOfRange | Code::ResourceExhausted | Code::InvalidArgument
        ),
        "{err:?}"
    );

    // Garbage on both ports: raw bytes on the client port and on the peer port (no
    // TLS handshake), then well-formed calls with nonsense.
    for addr in [&c.nodes[&1].addr, &c.nodes[&1].peer_addr] {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"\x00\x01 this is not HTTP/2 \xff\xfe")
            .await
            .unwrap();
        let mut buf = [0u8; 256];
        let _ = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await;
    }
    // The client port answers no Raft call, however well-formed.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", c.nodes[&2].addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut on_client_port = seatd_proto::raft::raft_client::RaftClient::new(channel);
    let forged = seatd_proto::raft::RaftRequest {
        shard: 0,
        from: 1,
        payload: vec![0xde, 0xad, 0xbe, 0xef, 7, 7, 7],
        seq: 1,
    };
    let err = on_client_port
        .append_entries(forged.clone())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented, "{err:?}");
    let err = on_client_port.vote(forged.clone()).await.unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented, "{err:?}");
    let err = on_client_port
        .local_status(seatd_proto::raft::LocalStatusRequest { digest: true })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented, "{err:?}");
    // A digest asked of the client port is not given.
    let local = client
        .cluster_status(pb::ClusterStatusRequest {
            local: true,
            digest: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(local.shards.iter().all(|s| s.digest.is_empty()));
    // Over the peer port, as node 2 itself: nonsense gets a refusal naming its seq.
    let mut raft = c.peer_client(2);
    for shard in [0u32, 99] {
        let reply = raft
            .append_entries(seatd_proto::raft::RaftRequest {
                shard,
                from: 2,
                payload: vec![0xde, 0xad, 0xbe, 0xef, 7, 7, 7],
                seq: 5,
            })
            .await
            .unwrap()
            .into_inner();
        assert!(!reply.error.is_empty(), "garbage accepted on shard {shard}");
        assert_eq!(reply.seq, 5);
        let reply = raft
            .vote(seatd_proto::raft::RaftRequest {
                shard,
                from: 2,
                payload: vec![],
                seq: 6,
            })
            .await
            .unwrap()
            .into_inner();
        assert!(!reply.error.is_empty());
        assert_eq!(reply.seq, 6);
    }
    // The same nonsense down an append pipe: each message gets its own refusal, in
    // order, and the pipe stays open for the next.
    {
        let nonsense = |shard: u32, payload: Vec<u8>, seq: u64| seatd_proto::raft::RaftRequest {
            shard,
            from: 2,
            payload,
            seq,
        };
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tx.send(nonsense(0, vec![0xde, 0xad], 1)).await.unwrap();
        let mut replies = raft
            .append_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        let first = replies.message().await.unwrap().unwrap();
        assert!(
            first.error.contains("undecodable") && first.seq == 1,
            "pipe: {first:?}"
        );
        tx.send(nonsense(99, vec![], 2)).await.unwrap();
        let second = replies.message().await.unwrap().unwrap();
        assert!(
            second.error.contains("shard 99") && second.seq == 2,
            "pipe: {second:?}"
        );
        // In another node's name: refused before it is even decoded.
        let mut forged = nonsense(0, vec![], 3);
        forged.from = 3;
        tx.send(forged).await.unwrap();
        let third = replies.message().await.unwrap().unwrap();
        assert!(third.error.contains("from node 3"), "pipe: {third:?}");
        drop(tx);
        assert!(
            replies.message().await.unwrap().is_none(),
            "pipe not closed"
        );
    }

    // Nothing changed: the seats are as they were, every replica agrees, and the
    // cluster still works.
    let map_after = read_map().await;
    assert_eq!(seat_states(&map_before), seat_states(&map_after));
    c.wait_converged(CONVERGE).await;
    client
        .hold(hold(event, "u", &["A-1"], "fine"))
        .await
        .unwrap();

    // HoldMany: each item decided and answered on its own, in request order, across
    // shards; a retried item gets its first answer.
    client
        .create_event(create("other", layout(1, 1, 5), None))
        .await
        .unwrap();
    let items = vec![
        hold(event, "v", &["A-2", "A-3"], "m1"),
        hold(event, "w", &["A-3"], "m2"),
        hold(event, "x", &["Z-9"], "m3"),
        hold("nope", "y", &["A-1"], "m4"),
        hold("other", "z", &["A-1"], "m5"),
        hold(event, "v", &["A-2", "A-3"], "m1"),
    ];
    let answers = hold_many(&mut client, items).await;
    use pb::hold_result::Result as R;
    let kinds: Vec<String> = answers
        .iter()
        .map(|r| match &r.result {
            Some(R::Hold(h)) => format!("hold {}", h.seats.len()),
            Some(R::Failure(f)) => format!("{:?} {:?}", Code::from_i32(f.code), f.seat_ids),
            None => "none".into(),
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "hold 2",
            "Aborted [\"A-3\"]",
            "InvalidArgument []",
            "NotFound []",
            "hold 1",
            "hold 2"
        ],
        "{answers:?}"
    );
    let (Some(R::Hold(first)), Some(R::Hold(again))) = (&answers[0].result, &answers[5].result)
    else {
        unreachable!()
    };
    assert_eq!(first.hold_id, again.hold_id);
}

/// Calls `HoldMany` with `items`; its answers, in order.
async fn hold_many(
    client: &mut seatd_proto::v1::seats_client::SeatsClient<tonic::transport::Channel>,
    items: Vec<pb::HoldRequest>,
) -> Vec<pb::HoldResult> {
    client
        .hold_many(pb::HoldManyRequest { holds: items })
        .await
        .unwrap()
        .into_inner()
        .results
}

/// What a `HoldMany` answer says, item by item, in a form tests compare.
fn hold_many_kinds(answers: &[pb::HoldResult]) -> Vec<String> {
    use pb::hold_result::Result as R;
    answers
        .iter()
        .map(|r| match &r.result {
            Some(R::Hold(h)) => format!(
                "hold {:?}",
                h.seats
                    .iter()
                    .map(|s| s.seat_id.as_str())
                    .collect::<Vec<_>>()
            ),
            Some(R::Failure(f)) => format!("{:?} {:?}", Code::from_i32(f.code), f.seat_ids),
            None => "none".into(),
        })
        .collect()
}

/// A node that does not lead the shard passes a one-shard `HoldMany` through as bytes
/// (`coordinator::holds`); the leader decodes it. Both must give the same answers,
/// and the rate limit must count each hold once either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hold_many_answers_the_same_on_the_leader_and_passed_through() {
    let _serial = SERIAL.lock().await;
    let c = TestCluster::start(3, 2, &[]);
    c.wait_ready(READY).await;
    let event = "pass";
    c.client(1)
        .await
        .create_event(create(event, layout(1, 2, 20), None))
        .await
        .unwrap();
    for via in 1..=3u64 {
        let mut client = c.client(via).await;
        let (a, b) = (format!("A-{}", 2 * via - 1), format!("A-{}", 2 * via));
        let items = vec![
            hold(event, &format!("u{via}"), &[&a], &format!("first-{via}")),
            hold(
                event,
                &format!("v{via}"),
                &[&a, &b],
                &format!("clash-{via}"),
            ),
            hold(event, &format!("v{via}"), &[&b], &format!("second-{via}")),
            hold(event, &format!("u{via}"), &[&a], &format!("first-{via}")),
        ];
        let answers = hold_many(&mut client, items).await;
        assert_eq!(
            hold_many_kinds(&answers),
            [
                format!("hold [{a:?}]"),
                format!("Aborted [{a:?}]"),
                format!("hold [{b:?}]"),
                format!("hold [{a:?}]"),
            ],
            "via node {via}"
        );
        use pb::hold_result::Result as R;
        let (Some(R::Hold(first)), Some(R::Hold(again))) = (&answers[0].result, &answers[3].result)
        else {
            unreachable!()
        };
        assert_eq!(
            first.hold_id, again.hold_id,
            "a retry gets its first answer"
        );

        // One user asking for 10 holds, then 15: the leader's burst of 20 admits the
        // 10 and 10 of the 15 (each then refused by the seat being taken); 5 are rate
        // limited, whichever node the call came through (a node that does not lead
        // passes it through undecoded). Asking the limit twice per hold anywhere would
        // limit at least 14.
        let user = format!("eager{via}");
        let mut limited = Vec::new();
        for (from, n) in [(0, 10), (10, 15)] {
            let items = (from..from + n)
                .map(|i| hold(event, &user, &[&a], &format!("eager-{via}-{i}")))
                .collect();
            let answers = hold_many(&mut client, items).await;
            let kinds = hold_many_kinds(&answers);
            let taken = kinds.iter().filter(|k| k.starts_with("Aborted")).count();
            let n_limited = kinds
                .iter()
                .filter(|k| k.starts_with("ResourceExhausted"))
                .count();
            assert_eq!(taken + n_limited, n, "via node {via}: {kinds:?}");
            limited.push(n_limited);
        }
        // The burst refills at 20/s, so a slow run may see a token or two more.
        assert!(
            limited[0] == 0 && (3..=5).contains(&limited[1]),
            "via node {via}: rate limited {limited:?}"
        );
    }
    c.wait_converged(CONVERGE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_serves_health_and_reflection() {
    let _serial = SERIAL.lock().await;
    let c = TestCluster::start(1, 2, &[]);
    c.wait_ready(READY).await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", c.nodes[&1].addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    for service in ["", "seatd.v1.Seats"] {
        let r = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            r.status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32
        );
    }
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let mut reflection = ServerReflectionClient::new(channel.clone());
    let req = tonic_reflection::pb::v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = reflection
        .server_reflection_info(tokio_stream::iter([req]))
        .await
        .unwrap()
        .into_inner();
    let first = answers.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = first.message_response else {
        panic!("unexpected reflection answer");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(names.contains(&"seatd.v1.Seats".to_string()), "{names:?}");
    assert!(
        names.contains(&"seatd.raft.v1.Raft".to_string()),
        "{names:?}"
    );
    // The older protocol too, which older grpcurl, Python's client and Evans speak.
    use tonic_reflection::pb::v1alpha as alpha;
    let mut reflection = alpha::server_reflection_client::ServerReflectionClient::new(channel);
    let req = alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            alpha::server_reflection_request::MessageRequest::ListServices(String::new()),
        ),
    };
    let mut answers = reflection
        .server_reflection_info(tokio_stream::iter([req]))
        .await
        .expect("v1alpha reflection is served")
        .into_inner();
    let first = answers.message().await.unwrap().unwrap();
    let Some(alpha::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        first.message_response
    else {
        panic!("unexpected v1alpha reflection answer");
    };
    assert!(list.service.iter().any(|s| s.name == "seatd.v1.Seats"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_added_by_rolling_restart_takes_its_share_of_the_shards() {
    let _serial = SERIAL.lock().await;
    let mut c = TestCluster::start(3, 4, &[]);
    c.wait_ready(READY).await;
    let mut holds = Vec::new();
    for i in 0..6 {
        let e = format!("grow{i}");
        let mut client = c.client(1).await;
        client
            .create_event(create(&e, layout(1, 2, 10), None))
            .await
            .unwrap();
        holds.push(
            client
                .hold(hold(&e, "gil", &["A-1", "B-2"], "g"))
                .await
                .unwrap()
                .into_inner(),
        );
    }
    let new = c.add_node();
    c.spawn(new);
    // Rolling restart. A node still on the old list may briefly disagree (a shard
    // moved away from it that it does not know about yet), so the cluster is only
    // required to settle at the end.
    for n in [1, 2, 3] {
        assert_eq!(c.terminate(n), Some(0));
        c.spawn(n);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Every shard ends up on the nodes the 4-node placement names.
    let peers = coordinator::placement::Cluster::parse_peers(&c.peers()).unwrap();
    let placement = coordinator::placement::Cluster::new(peers, 4).unwrap();
    let want: BTreeMap<u32, Vec<u64>> = (0..4).map(|s| (s, placement.members(s))).collect();
    assert!(want.values().any(|m| m.contains(&new)));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got = c.members(new).await;
        if got == want {
            break;
        }
        assert!(Instant::now() < deadline, "members {got:?}, want {want:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    c.wait_ready(READY).await;
    c.wait_converged(CONVERGE).await;
    // Nothing was lost on the way, and the new node serves it.
    let mut client = c.client(new).await;
    for h in &holds {
        let again = client
            .get_hold(pb::GetHoldRequest {
                hold_id: h.hold_id.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(&again, h);
    }
}

/// Finding 7 of issue 18: a leader whose wall clock was an hour fast stamped its
/// entries an hour ahead, so its first entry expired every hold and checkout. Log time
/// now follows the leader's monotonic clock from the applied stamp (see `clock`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_an_hour_fast_expires_no_hold_early() {
    const HOUR_MS: u64 = 3_600_000;
    let _serial = SERIAL.lock().await;
    let c = TestCluster::start(3, 1, &[]);
    c.wait_ready(READY).await;
    let mut client = c.client(1).await;
    client
        .create_event(create("skew", layout(1, 2, 10), None))
        .await
        .unwrap();
    // Both followers come back with their wall clocks an hour fast.
    let first_leader = c.leaders().await[&0];
    for n in [1, 2, 3].into_iter().filter(|&n| n != first_leader) {
        assert_eq!(c.terminate(n), Some(0));
        c.spawn_with(n, &[&format!("--clock-skew-ms={HOUR_MS}")]);
        c.wait_ready(READY).await;
        c.wait_converged(CONVERGE).await;
    }
    assert_eq!(c.leaders().await[&0], first_leader, "leadership moved");
    // A hold for a minute, granted by the leader with the right time.
    let mut via = c.client(first_leader).await;
    let mut minute = hold("skew", "ann", &["A-1"], "r1");
    minute.ttl_ms = Some(60_000);
    let held = via.hold(minute).await.unwrap().into_inner();
    let real_ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
    };
    assert!(held.expires_at_ms <= real_ms() + 60_000);
    // Its leader dies: a node whose clock is an hour fast leads and stamps entries
    // (holds on the same event, and its expiry ticker every second).
    c.kill(first_leader);
    c.wait_ready(READY).await;
    let fast_leader = c.leaders().await[&0];
    assert_ne!(fast_leader, first_leader);
    let mut via = c.client(fast_leader).await;
    for (i, seat) in ["A-2", "A-3", "B-1"].iter().enumerate() {
        let later = via
            .hold(hold("skew", &format!("u{i}"), &[seat], "r"))
            .await
            .unwrap()
            .into_inner();
        // Stamped in log time, near real time, not an hour ahead.
        assert!(
            later.created_at_ms < real_ms() + 5_000,
            "stamped {} ms ahead",
            later.created_at_ms.saturating_sub(real_ms())
        );
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let still = via
        .get_hold(pb::GetHoldRequest {
            hold_id: held.hold_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(real_ms() < held.expires_at_ms, "the test took too long");
    assert_eq!(
        state_of(&still),
        pb::HoldState::Active,
        "a 60 s hold expired early under a leader an hour fast"
    );
}
