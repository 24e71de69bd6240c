//! Payment keys, end to end through one in-process node (8 shards) whose payment
//! gateway the test scripts and watches: a client's idempotency key reused with another
//! hold never reaches the first hold's charge, and a refund only ever gives back the
//! charge of its own checkout attempt.
//!
//! The reviewer's scenario: Alice pays for a hold under key K; Bob commits a hold of
//! another event under the same K with a card that will be declined. Before the keys
//! were scoped, the gateway answered Bob with Alice's charge, Bob got an order carrying
//! her payment reference, and a later timeout refunded her charge while her order
//! stayed.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use coordinator::clock::Clock;
use coordinator::error::{error_reason, REASON_KEY_REUSED};
use coordinator::node::{NodeConfig, NodeHandle};
use coordinator::payment::{
    charge_key, refund_key, ChargeRequest, PaymentError, PaymentFuture, PaymentGateway,
    RefundRequest,
};
use coordinator::placement::Cluster;
use coordinator::process::Settings;
use raft_store::raft::{LogPolicy, RaftTiming};
use raft_store::HoldId;
use seatd_proto::v1 as pb;
use seatd_proto::v1::seats_client::SeatsClient;
use support::{create, hold, layout, pay};
use tokio::sync::Notify;
use tonic::transport::Channel;
use tonic::Code;

const T0: u64 = 1_800_000_000_000;
const SHARDS: u32 = 8;
/// A test token: the charge succeeds, but only once the test lets it answer.
const TOKEN_LATE: &str = "tok_late";

/// A clock the test moves by hand (entries are stamped with it).
/// A clock the test moves: wall-clock milliseconds and a monotonic count, moved
/// together as real time would move them.
struct HandClock(AtomicU64, AtomicU64);

impl HandClock {
    fn pass(&self, ms: u64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
        self.1.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for HandClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }

    fn monotonic(&self) -> Duration {
        Duration::from_millis(self.1.load(Ordering::SeqCst))
    }
}

/// A card processor's test mode that keeps every request it gets. Idempotent by key,
/// as processors are: the same key gets the first answer, whatever the token.
#[derive(Default)]
struct Recorder {
    charges: Mutex<Vec<ChargeRequest>>,
    refunds: Mutex<Vec<RefundRequest>>,
    answers: Mutex<HashMap<String, Result<String, PaymentError>>>,
    release_late: Notify,
}

impl Recorder {
    fn charge_keys(&self) -> Vec<String> {
        let charges = self.charges.lock().unwrap();
        charges.iter().map(|c| c.idempotency_key.clone()).collect()
    }

    fn refunds(&self) -> Vec<RefundRequest> {
        self.refunds.lock().unwrap().clone()
    }
}

/// The gateway the node holds: a handle on the shared [`Recorder`].
struct Gateway(Arc<Recorder>);

impl PaymentGateway for Gateway {
    fn charge(&self, request: ChargeRequest) -> PaymentFuture<String> {
        let rec = self.0.clone();
        rec.charges.lock().unwrap().push(request.clone());
        Box::pin(async move {
            if let Some(first) = rec.answers.lock().unwrap().get(&request.idempotency_key) {
                return first.clone();
            }
            let answer = match request.token.as_str() {
                "tok_visa" => Ok(()),
                TOKEN_LATE => {
                    rec.release_late.notified().await;
                    Ok(())
                }
                _ => Err(PaymentError::Declined("card declined".into())),
            };
            let mut answers = rec.answers.lock().unwrap();
            let n = answers.len();
            let answer = answer.map(|()| format!("ch_{n}"));
            answers
                .entry(request.idempotency_key)
                .or_insert(answer)
                .clone()
        })
    }

    fn refund(&self, request: RefundRequest) -> PaymentFuture<()> {
        self.0.refunds.lock().unwrap().push(request);
        Box::pin(std::future::ready(Ok(())))
    }
}

struct OneNode {
    node: NodeHandle,
    client: SeatsClient<Channel>,
    clock: Arc<HandClock>,
    gateway: Arc<Recorder>,
}

async fn one_node(dir: &std::path::Path) -> OneNode {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let peer_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let peer_addr = peer_listener.local_addr().unwrap().to_string();
    let certs = dir.join("certs");
    coordinator::tls::write_certs(&certs, &[1]).unwrap();
    let clock = Arc::new(HandClock(AtomicU64::new(T0), AtomicU64::new(0)));
    let gateway = Arc::new(Recorder::default());
    let node = NodeHandle::start(
        NodeConfig {
            id: 1,
            data_dir: dir.join("data"),
            cluster: Cluster::new(BTreeMap::from([(1, peer_addr)]), SHARDS).unwrap(),
            log_policy: LogPolicy::default(),
            timing: RaftTiming::default(),
            settings: Settings {
                payment_timeout: Duration::from_secs(20),
                holds_per_user_per_s: 0,
                ..Settings::default()
            },
            clock: clock.clone(),
            gateway: Arc::new(Gateway(gateway.clone())),
            tls: coordinator::tls::PeerTls::load(&certs, 1).unwrap(),
            advertise: None,
            auth: None,
            client_tls: None,
        },
        listener,
        peer_listener,
    )
    .await
    .unwrap();
    let started = Instant::now();
    while !node.inner.shards.values().all(|s| s.leader().1) {
        assert!(started.elapsed() < Duration::from_secs(30), "no leaders");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let client = SeatsClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    OneNode {
        node,
        client,
        clock,
        gateway,
    }
}

/// Two event ids in one shard, and one in another.
fn events() -> (String, String, String) {
    let shard = |e: &str| raft_store::ids::shard_of(e, SHARDS);
    let first = "show-0".to_string();
    let second = (1..)
        .map(|i| format!("show-{i}"))
        .find(|e| shard(e) == shard(&first))
        .unwrap();
    let elsewhere = (1..)
        .map(|i| format!("show-{i}"))
        .find(|e| shard(e) != shard(&first))
        .unwrap();
    (first, second, elsewhere)
}

async fn held(c: &mut SeatsClient<Channel>, event: &str, user: &str, seat: &str) -> String {
    let h = c.hold(hold(event, user, &[seat], "r1")).await.unwrap();
    h.into_inner().hold_id
}

fn id(hold_id: &str) -> HoldId {
    HoldId::parse(hold_id).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_key_never_reaches_another_buyers_charge() {
    let dir = tempfile::tempdir().unwrap();
    let OneNode {
        node,
        mut client,
        clock,
        gateway,
    } = one_node(dir.path()).await;
    let c = &mut client;
    let (show, same_shard, other_shard) = events();
    for e in [&show, &same_shard, &other_shard] {
        c.create_event(create(e, layout(1, 2, 5), None))
            .await
            .unwrap();
    }

    // Alice pays under K.
    let alice = held(c, &show, "alice", "A-1").await;
    let order = c
        .commit(pay(&alice, "tok_visa", "K"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(gateway.charge_keys(), vec![charge_key(&id(&alice), "K")]);

    // Bob, another event of the same shard, the same K, a card that will be declined:
    // refused as invalid, with a reason a program can read, before any charge.
    let bob = held(c, &same_shard, "bob", "A-1").await;
    for _ in 0..2 {
        let refused = c
            .commit(pay(&bob, "tok_chargeDeclined", "K"))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
        assert_eq!(
            error_reason(&refused).as_deref(),
            Some(REASON_KEY_REUSED),
            "{refused:?}"
        );
    }
    assert_eq!(
        gateway.charge_keys().len(),
        1,
        "Bob's commit reached the gateway"
    );
    let bobs = c
        .get_hold(pb::GetHoldRequest {
            hold_id: bob.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(bobs.state, pb::HoldState::Active as i32);

    // Carol, an event of another shard, the same K: that shard never saw K, but the
    // gateway key is her hold's own, so her card is declined on its own merits.
    let carol = held(c, &other_shard, "carol", "A-1").await;
    let declined = c
        .commit(pay(&carol, "tok_chargeDeclined", "K"))
        .await
        .unwrap_err();
    assert_eq!(declined.code(), Code::FailedPrecondition, "{declined:?}");
    assert!(declined.message().contains("declined"), "{declined:?}");
    assert_eq!(
        gateway.charge_keys()[1..],
        [charge_key(&id(&carol), "K")],
        "Carol's charge was not her own"
    );

    // Dave's charge answers only after his checkout's payment deadline (2 min): the
    // checkout is aborted, and the refund gives back Dave's charge, not Alice's.
    let dave = held(c, &show, "dave", "A-2").await;
    let mut dc = c.clone();
    let dave_commit = tokio::spawn({
        let dave = dave.clone();
        async move { dc.commit(pay(&dave, TOKEN_LATE, "D")).await }
    });
    let started = Instant::now();
    while gateway.charge_keys().len() < 3 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no charge for Dave"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    clock.pass(3 * 60_000);
    gateway.release_late.notify_one();
    let late = dave_commit.await.unwrap().unwrap_err();
    assert_eq!(late.code(), Code::FailedPrecondition, "{late:?}");
    let daves_charge = gateway.answers.lock().unwrap()[&charge_key(&id(&dave), "D")].clone();
    assert_eq!(
        gateway.refunds(),
        vec![RefundRequest {
            payment_ref: daves_charge.unwrap(),
            idempotency_key: refund_key(&id(&dave), "D"),
        }]
    );

    // Alice's order is untouched, and her charge was never given back.
    let now = c
        .get_order(pb::GetOrderRequest {
            order_id: order.order_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(now, order);
    assert!(gateway
        .refunds()
        .iter()
        .all(|r| r.payment_ref != order.payment_ref));
    // K still answers Alice's commit with her order.
    let again = c.commit(pay(&alice, "tok_visa", "K")).await.unwrap();
    assert_eq!(again.into_inner(), order);

    node.shutdown().await.unwrap();
}
