//! Who may do what, over real loopback gRPC against an in-process cluster with tokens
//! checked (`coordinator::local`: three nodes, two shards, a frontend): calls without a
//! valid token are UNAUTHENTICATED, a buyer cannot run events (PERMISSION_DENIED),
//! and a buyer cannot see or touch another buyer's hold or order (NOT_FOUND) however
//! the call comes (through the frontend passed on as bytes, or straight to a node),
//! and nothing changes when a call is refused. Hold and order ids cannot be walked,
//! every change records who made it, and calls without a valid token are limited per
//! client address.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use coordinator::auth::issue::{new_key_pair, token};
use coordinator::auth::{Claims, Role, Verifier, DEFAULT_AUDIENCE, DEFAULT_ISSUER};
use coordinator::local::{LocalCluster, LocalConfig};
use coordinator::process::Settings;
use raft_store::raft::RaftTiming;
use seatd_client::{pb, Client, Error, Options};

const READY: Duration = Duration::from_secs(30);

struct Setup {
    cluster: LocalCluster,
    endpoints: Vec<String>,
    private: String,
    _dir: tempfile::TempDir,
}

async fn setup() -> Setup {
    setup_with(Settings::default()).await
}

async fn setup_with(settings: Settings) -> Setup {
    let dir = tempfile::tempdir().expect("a temp dir");
    let (private, public) = new_key_pair().expect("a key pair");
    let keys = dir.path().join("auth-keys.pem");
    std::fs::write(&keys, public).expect("write keys");
    let verifier = Verifier::from_file(&keys, DEFAULT_ISSUER, DEFAULT_AUDIENCE).expect("keys");
    let settings = Settings {
        route_wait: Duration::from_secs(5),
        exit_on_group_failure: false,
        ..settings
    };
    let mut cluster = LocalCluster::start(LocalConfig {
        data_dir: dir.path().join("data"),
        nodes: 3,
        shards: 2,
        settings,
        timing: RaftTiming::default(),
        auth: Some(Arc::new(verifier)),
        tls: None,
    })
    .await
    .expect("nodes start");
    let frontend = cluster
        .ready_with_frontend(settings, READY)
        .await
        .expect("leaders and a frontend");
    let mut endpoints = vec![format!("http://{frontend}")];
    endpoints.extend(
        cluster
            .nodes()
            .values()
            .map(|n| format!("http://{}", n.addr)),
    );
    Setup {
        cluster,
        endpoints,
        private,
        _dir: dir,
    }
}

impl Setup {
    /// A client of endpoint `at` (0: the frontend, 1..=3: the nodes) with `token`.
    fn client(&self, at: usize, token: Option<&str>) -> Client {
        let options = Options {
            retry_budget: Duration::from_secs(10),
            ..Options::default()
        };
        Client::with_token([&self.endpoints[at]], options, token).expect("a client")
    }

    fn token(&self, sub: &str, role: Role) -> String {
        token(&self.private, sub, role, Duration::from_secs(600)).expect("a token")
    }
}

fn event(id: &str) -> pb::CreateEventRequest {
    let layout = raft_store::layout::generate("Hall", 1, 2, 10);
    pb::CreateEventRequest {
        event_id: id.into(),
        name: format!("Show {id}"),
        layout: Some(seatd_wire::layout_to_pb(&layout)),
        ..Default::default()
    }
}

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
}

/// A token with every claim given, signed with `private`.
fn signed(private: &str, claims: &Claims) -> String {
    let key = jsonwebtoken::EncodingKey::from_ed_pem(private.as_bytes()).expect("a key");
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA),
        claims,
        &key,
    )
    .expect("signed")
}

fn claims(sub: &str) -> Claims {
    Claims {
        sub: sub.into(),
        role: Role::Operator,
        iss: DEFAULT_ISSUER.into(),
        aud: DEFAULT_AUDIENCE.into(),
        exp: now_s() + 600,
        nbf: None,
        iat: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_without_a_valid_token_are_unauthenticated_and_change_nothing() {
    let s = setup().await;
    let (stranger, _) = new_key_pair().expect("a key");
    let mut expired = claims("op");
    expired.exp = now_s() - 600;
    let mut wrong_aud = claims("op");
    wrong_aud.aud = "another-service".into();
    let bad = [
        None,
        Some(signed(&s.private, &expired)),
        Some(signed(&s.private, &wrong_aud)),
        Some(signed(&stranger, &claims("op"))),
        Some("not.a.jwt".to_string()),
    ];
    for at in 0..s.endpoints.len() {
        for (i, t) in bad.iter().enumerate() {
            let c = s.client(at, t.as_deref());
            let got = c.create_event(event(&format!("e{at}x{i}"))).await;
            assert!(
                matches!(got, Err(Error::Unauthenticated(_))),
                "endpoint {at}, token {i}: {got:?}"
            );
            let got = c.hold("e", "op", &["A-1"], None, Some("r")).await;
            assert!(matches!(got, Err(Error::Unauthenticated(_))), "{got:?}");
        }
    }
    // Nothing was created: an operator finds none of those events.
    let op = s.client(0, Some(&s.token("op", Role::Operator)));
    let list = op
        .list_events(pb::ListEventsRequest::default())
        .await
        .expect("listed");
    assert!(list.events.is_empty(), "{:?}", list.events);
    // The cluster's status (topology only) needs no token: frontends route by it.
    s.client(1, None).status().await.expect("status");
    s.cluster.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buyers_cannot_run_events_or_touch_each_others_holds() {
    let s = setup().await;
    let op = s.client(0, Some(&s.token("op", Role::Operator)));
    op.create_event(event("show"))
        .await
        .expect("an operator creates");
    let ann_token = s.token("ann", Role::Buyer);
    let bob_token = s.token("bob", Role::Buyer);
    for at in 0..s.endpoints.len() {
        let ann = s.client(at, Some(&ann_token));
        let bob = s.client(at, Some(&bob_token));
        let got = ann.create_event(event(&format!("mine{at}"))).await;
        assert!(matches!(got, Err(Error::PermissionDenied(_))), "{got:?}");
        let got = ann.set_sale("show", pb::SaleState::Stopped).await;
        assert!(matches!(got, Err(Error::PermissionDenied(_))), "{got:?}");
        // The hold is ann's: the token's subject, whatever the request left out.
        let seat = format!("A-{}", at + 1);
        let held = ann
            .hold("show", "", &[&seat], None, Some(&format!("ann-{at}")))
            .await
            .expect("held");
        assert_eq!(held.user_id, "ann");
        // Acting as someone else is refused outright.
        let got = bob
            .hold("show", "ann", &["B-1"], None, Some(&format!("b{at}")))
            .await;
        assert!(matches!(got, Err(Error::PermissionDenied(_))), "{got:?}");
        // Another buyer's hold does not exist for bob, whichever way he asks.
        let got = bob.hold_status(&held.hold_id).await;
        assert!(matches!(got, Err(Error::NotFound(_))), "{got:?}");
        let got = bob.release(&held.hold_id, "").await;
        assert!(matches!(got, Err(Error::NotFound(_))), "{got:?}");
        let got = bob.commit(&held.hold_id, "tok_visa", None).await;
        assert!(matches!(got, Err(Error::NotFound(_))), "{got:?}");
        // Untouched: still ann's and held; she pays for it, and bob cannot read the
        // order; an operator reads both.
        let still = ann.hold_status(&held.hold_id).await.expect("hers");
        assert_eq!(still.state, pb::HoldState::Active as i32);
        let order = ann
            .commit(&held.hold_id, "tok_visa", None)
            .await
            .expect("paid");
        assert_eq!(order.user_id, "ann");
        let got = bob.order(&order.order_id).await;
        assert!(matches!(got, Err(Error::NotFound(_))), "{got:?}");
        ann.order(&order.order_id).await.expect("her order");
        op.order(&order.order_id)
            .await
            .expect("an operator reads any");
        op.hold_status(&held.hold_id)
            .await
            .expect("an operator reads any");
    }
    s.cluster.shutdown().await.expect("clean shutdown");
}

fn actor(subject: &str, role: &str) -> Option<pb::Actor> {
    Some(pb::Actor {
        subject: subject.into(),
        role: role.into(),
    })
}

/// An id with a wrong tag names nothing (for its owner and an operator alike), an id
/// without one does not parse, and every change carries who made it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_cannot_be_walked_and_every_change_records_who_made_it() {
    let s = setup().await;
    let op = s.client(0, Some(&s.token("op", Role::Operator)));
    let created = op.create_event(event("audit")).await.expect("created");
    assert_eq!(created.created_by, actor("op", "operator"));
    let ann = s.client(0, Some(&s.token("ann", Role::Buyer)));
    let held = ann
        .hold("audit", "", &["A-1"], None, Some("a1"))
        .await
        .expect("held");
    let (walkable, tag) = held.hold_id.split_once('-').expect("a tagged id");
    assert_eq!(walkable, "audit.h1");
    assert_eq!(tag.len(), 16);
    // The next number with this tag, and this number with another tag: not found.
    let flipped = format!("{walkable}-{}", if &tag[..1] == "0" { "1" } else { "0" });
    let forged = [format!("audit.h2-{tag}"), format!("{flipped}{}", &tag[1..])];
    for id in &forged {
        for who in [&ann, &op] {
            let got = who.hold_status(id).await;
            assert!(matches!(got, Err(Error::NotFound(_))), "{id}: {got:?}");
        }
        let got = op.release(id, "ann").await;
        assert!(matches!(got, Err(Error::NotFound(_))), "{id}: {got:?}");
        let got = ann.commit(id, "tok_visa", None).await;
        assert!(matches!(got, Err(Error::NotFound(_))), "{id}: {got:?}");
    }
    let got = ann.hold_status(walkable).await;
    assert!(matches!(got, Err(Error::Invalid(_))), "{got:?}");
    // An operator gives ann's seats back (a box office): recorded on the hold.
    let released = op.release(&held.hold_id, "ann").await.expect("released");
    assert_eq!(released.by, actor("op", "operator"));
    assert_eq!(
        ann.hold_status(&held.hold_id).await.expect("hers").by,
        actor("op", "operator")
    );
    // Ann pays for a hold: recorded on the order.
    let second = ann
        .hold("audit", "", &["A-2"], None, Some("a2"))
        .await
        .expect("held");
    let order = ann
        .commit(&second.hold_id, "tok_visa", None)
        .await
        .expect("paid");
    assert_eq!(order.by, actor("ann", "buyer"));
    assert!(
        order.order_id.starts_with("audit.o1-"),
        "{}",
        order.order_id
    );
    // An operator stops the sale: recorded on the event.
    let stopped = op
        .set_sale("audit", pb::SaleState::Stopped)
        .await
        .expect("stopped");
    assert_eq!(stopped.sale_changed_by, actor("op", "operator"));
    s.cluster.shutdown().await.expect("clean shutdown");
}

/// Calls that carry no valid token spend their address's budget (here 5 a second);
/// calls with a valid token from the same address do not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_without_a_valid_token_are_limited_per_address() {
    let s = setup_with(Settings {
        anonymous_calls_per_address_per_s: 5,
        ..Settings::default()
    })
    .await;
    let mut raw = pb::seats_client::SeatsClient::connect(s.endpoints[0].clone())
        .await
        .expect("connected");
    let mut limited = 0;
    for _ in 0..30 {
        if let Err(status) = raw
            .get_event(pb::GetEventRequest {
                event_id: "x".into(),
            })
            .await
        {
            match status.code() {
                tonic::Code::Unauthenticated => {}
                tonic::Code::ResourceExhausted => limited += 1,
                other => panic!("{other:?}: {}", status.message()),
            }
        }
    }
    assert!(limited >= 20, "only {limited} of 30 limited");
    let op = s.client(0, Some(&s.token("op", Role::Operator)));
    op.create_event(event("fine"))
        .await
        .expect("a valid token is not limited");
    s.cluster.shutdown().await.expect("clean shutdown");
}
