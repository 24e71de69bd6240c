//! Limits before the log, against a real one-node cluster (issue 18, finding 4).
//!
//! What they show: a request over one of the caps is refused where it enters, as
//! INVALID_ARGUMENT naming the limit in a `LimitExceeded` detail, and nothing is
//! proposed (the shard's log does not grow); the largest event allowed is created and
//! its seat map read whole, by section and in pages that each fit gRPC's default
//! 4 MiB message limit.

mod support;

use std::time::{Duration, Instant};

use coordinator::error::limit_exceeded;
use coordinator::limits::SEAT_MAP_PAGE_SEATS_MAX;
use prost::Message;
use raft_store::limits::{COMMAND_BYTES_MAX, SEATS_PER_EVENT_MAX};
use seatd_proto::v1 as pb;
use support::{create, hold, layout, pay, TestCluster, SERIAL};
use tonic::Code;

const READY: Duration = Duration::from_secs(30);

/// The limit a refusal names; fails unless it is INVALID_ARGUMENT with the detail.
fn limit_of(status: &tonic::Status) -> String {
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let detail = limit_exceeded(status)
        .unwrap_or_else(|| panic!("no LimitExceeded detail: {}", status.message()));
    assert!(detail.actual > detail.max, "{detail:?}");
    assert!(status.message().contains(&detail.limit), "{status:?}");
    detail.limit
}

/// The last log index of every shard this node hosts.
async fn log_indexes(c: &TestCluster) -> Vec<u64> {
    let s = c.local_status(1).await.expect("node answers");
    s.shards.iter().map(|s| s.last_log_index).collect()
}

/// Waits until the log stops growing (the leader's first entries are in).
async fn settled_log(c: &TestCluster) -> Vec<u64> {
    let mut last = log_indexes(c).await;
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = log_indexes(c).await;
        if now == last {
            return now;
        }
        last = now;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_over_a_limit_are_refused_before_they_are_proposed() {
    let _serial = SERIAL.lock().await;
    let c = TestCluster::start(1, 1, &[]);
    c.wait_ready(READY).await;
    let mut client = c.client(1).await;
    client
        .create_event(create("small", layout(1, 2, 20), None))
        .await
        .unwrap();
    let before = settled_log(&c).await;

    // A hold naming 500,000 seats (a 5 MB request): before, it went into the log and
    // the state machine refused it there.
    let many: Vec<String> = (1..=500_000).map(|n| format!("A-{n}")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    let huge_hold = hold("small", "u", &many, "huge");
    let err = client.hold(huge_hold.clone()).await.unwrap_err();
    assert_eq!(limit_of(&err), "SEATS_PER_HOLD_CAP");
    // The same inside HoldMany: that hold fails alone, naming the limit.
    let answer = client
        .hold_many(pb::HoldManyRequest {
            holds: vec![huge_hold, hold("small", "u", &["A-1"], &"r".repeat(200))],
        })
        .await
        .unwrap()
        .into_inner();
    let limits: Vec<String> = answer
        .results
        .iter()
        .map(|r| match &r.result {
            Some(pb::hold_result::Result::Failure(f)) => {
                assert_eq!(f.code, Code::InvalidArgument as i32, "{f:?}");
                f.limit_exceeded
                    .as_ref()
                    .expect("limit named")
                    .limit
                    .clone()
            }
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(limits, ["SEATS_PER_HOLD_CAP", "TOKEN_BYTES_MAX"]);

    // Ids over their lengths.
    let long_seat = "A-".to_string() + &"1".repeat(40);
    let err = client
        .hold(hold("small", "u", &[&long_seat], "r1"))
        .await
        .unwrap_err();
    assert_eq!(limit_of(&err), "SEAT_ID_BYTES_MAX");
    let err = client
        .hold(hold("small", &"u".repeat(129), &["A-1"], "r2"))
        .await
        .unwrap_err();
    assert_eq!(limit_of(&err), "TOKEN_BYTES_MAX");
    let err = client
        .release(pb::ReleaseRequest {
            hold_id: "small.h1-0123456789abcdef".into(),
            user_id: "u".repeat(1 << 20),
        })
        .await
        .unwrap_err();
    assert_eq!(limit_of(&err), "TOKEN_BYTES_MAX");
    let err = client
        .commit(pay(
            "small.h1-0123456789abcdef",
            "tok_visa",
            "k".repeat(129),
        ))
        .await
        .unwrap_err();
    assert_eq!(limit_of(&err), "TOKEN_BYTES_MAX");

    // An event one seat over the limit: before, it was created (up to 2,000,000).
    assert_eq!(
        SEATS_PER_EVENT_MAX, 1_000_000,
        "the layouts below assume it"
    );
    let over = create("over", layout(1, 1, SEATS_PER_EVENT_MAX as u32 + 1), None);
    let err = client.create_event(over).await.unwrap_err();
    assert_eq!(limit_of(&err), "SEATS_PER_EVENT_MAX");
    let err = client
        .create_event(create("sections", layout(1_001, 1, 1), None))
        .await
        .unwrap_err();
    assert_eq!(limit_of(&err), "SECTIONS_PER_EVENT_MAX");
    // Within the seat limit but over the command's bytes: 150,000 seats named with
    // 30-byte ids encode to about 4.7 MB (the request, 5 MB, is within the 16 MiB
    // the port accepts).
    let named = pb::Layout {
        venue: "Named".into(),
        sections: vec![pb::Section {
            id: "S".into(),
            rows: (0..150)
                .map(|r| pb::Row {
                    id: format!("R{r}"),
                    seat_ids: (0..1_000).map(|n| format!("{r:0>14}-{n:0>15}")).collect(),
                    ..Default::default()
                })
                .collect(),
        }],
    };
    let err = client
        .create_event(create("named", named, None))
        .await
        .unwrap_err();
    assert_eq!(limit_of(&err), "COMMAND_BYTES_MAX");
    let detail = limit_exceeded(&err).unwrap();
    assert_eq!(detail.max, COMMAND_BYTES_MAX as u64);

    // Nothing reached the log, and the shard still works.
    assert_eq!(
        log_indexes(&c).await,
        before,
        "a refused request was proposed"
    );
    client
        .hold(hold("small", "u", &["A-1"], "fine"))
        .await
        .unwrap();
}

/// What a reader sees of each seat of a map (or page): id, row, section, state,
/// version.
fn flat(m: &pb::SeatMap) -> Vec<(String, String, u32, i32, u64)> {
    m.seats
        .iter()
        .map(|s| {
            let row = &m.rows[s.row as usize];
            (
                s.id.clone(),
                row.id.clone(),
                row.section,
                s.state,
                s.version,
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_largest_event_allowed_is_created_and_its_seat_map_read_in_pages() {
    let _serial = SERIAL.lock().await;
    let c = TestCluster::start(1, 1, &[]);
    c.wait_ready(READY).await;
    let mut client = c.client(1).await;
    // 40 sections of 500 rows of 50 seats: exactly SEATS_PER_EVENT_MAX.
    let started = Instant::now();
    let event = client
        .create_event(create("largest", layout(40, 500, 50), None))
        .await
        .unwrap()
        .into_inner();
    println!(
        "created a {}-seat event in {:?}",
        event.capacity,
        started.elapsed()
    );
    assert_eq!(event.capacity as usize, SEATS_PER_EVENT_MAX);
    client
        .hold(hold("largest", "u", &["A-1", "A-2"], "r"))
        .await
        .unwrap();

    let read = |section: Option<&str>, page_size: u32, page_token: String, stale_ok: bool| {
        let mut client = client.clone();
        let section = section.map(String::from);
        async move {
            client
                .get_seat_map(pb::GetSeatMapRequest {
                    event_id: "largest".into(),
                    stale_ok,
                    section,
                    page_size,
                    page_token,
                })
                .await
                .map(|r| r.into_inner())
        }
    };
    // Whole, as callers that do not page have always read it.
    let whole = read(None, 0, String::new(), false).await.unwrap();
    assert_eq!(whole.seats.len(), SEATS_PER_EVENT_MAX);
    assert!(whole.next_page_token.is_empty());
    println!("whole map: {} bytes", whole.encoded_len());
    let all = flat(&whole);
    let held = |id: &str| {
        (
            id.to_string(),
            "A".to_string(),
            0,
            pb::SeatState::Held as i32,
            1,
        )
    };
    assert_eq!(all[..2].to_vec(), vec![held("A-1"), held("A-2")]);

    // In pages: a page size above the cap is capped, each page fits 4 MiB, and the
    // pages together are the whole map (stale reads page the same way).
    for stale_ok in [false, true] {
        let (mut seen, mut token, mut pages) = (Vec::new(), String::new(), 0);
        loop {
            let page = read(None, 1_000_000, token, stale_ok).await.unwrap();
            assert!(page.seats.len() <= SEAT_MAP_PAGE_SEATS_MAX as usize);
            assert!(
                page.encoded_len() <= 4 << 20,
                "{} bytes",
                page.encoded_len()
            );
            assert_eq!(page.sections.len(), 40);
            seen.extend(flat(&page));
            pages += 1;
            if page.next_page_token.is_empty() {
                break;
            }
            token = page.next_page_token;
        }
        assert_eq!(
            pages,
            SEATS_PER_EVENT_MAX / SEAT_MAP_PAGE_SEATS_MAX as usize
        );
        assert!(
            seen == all,
            "pages differ from the whole map (stale_ok {stale_ok})"
        );
    }

    // By section: section S8 is seats 175,000..200,000 in layout order, whole or in
    // two pages.
    let s8 = read(Some("S8"), 0, String::new(), false).await.unwrap();
    assert_eq!(flat(&s8), all[175_000..200_000]);
    let first = read(Some("S8"), 1_000_000, String::new(), false)
        .await
        .unwrap();
    let rest = read(Some("S8"), 1_000_000, first.next_page_token.clone(), false)
        .await
        .unwrap();
    assert!(rest.next_page_token.is_empty());
    assert_eq!((first.seats.len(), rest.seats.len()), (20_000, 5_000));
    assert_eq!([flat(&first), flat(&rest)].concat(), flat(&s8));

    let err = read(Some("S99"), 0, String::new(), false)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    for bad in ["garbage", "p1000000"] {
        let err = read(None, 10, bad.into(), false).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{bad}: {err:?}");
    }
}
