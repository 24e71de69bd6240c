//! TLS on the client ports: an in-process cluster (three nodes, a frontend) whose
//! every client port serves TLS with a certificate for 127.0.0.1 signed by a test CA,
//! the frontend dialling the nodes over TLS too. A client given the CA books a seat
//! through the frontend and straight at a node; a client that speaks plaintext, or
//! trusts another CA, gets nothing.

use std::time::Duration;

use coordinator::local::{LocalCluster, LocalConfig, LocalTls};
use coordinator::process::Settings;
use raft_store::raft::RaftTiming;
use seatd_client::{pb, Access, Client, Error, Options};

const READY: Duration = Duration::from_secs(30);

/// A CA, and a certificate for 127.0.0.1 and localhost it signed: (CA PEM, cert PEM,
/// key PEM).
fn test_pki() -> (String, String, String) {
    let ca_key = rcgen::KeyPair::generate().expect("a CA key");
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).expect("a CA");
    let issuer = rcgen::Issuer::new(ca, &ca_key);
    let key = rcgen::KeyPair::generate().expect("a key");
    let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])
        .expect("params")
        .signed_by(&key, &issuer)
        .expect("a certificate");
    (ca_cert.pem(), leaf.pem(), key.serialize_pem())
}

fn options() -> Options {
    Options {
        retry_budget: Duration::from_secs(5),
        ..Options::default()
    }
}

/// For calls that must fail: no point retrying long.
fn impatient() -> Options {
    Options {
        retry_budget: Duration::from_millis(500),
        ..Options::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_book_over_tls_and_plaintext_gets_nothing() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let (ca, cert, key) = test_pki();
    let (cert_file, key_file, ca_file) = (
        dir.path().join("cert.pem"),
        dir.path().join("key.pem"),
        dir.path().join("ca.pem"),
    );
    std::fs::write(&cert_file, &cert).expect("write");
    std::fs::write(&key_file, &key).expect("write");
    std::fs::write(&ca_file, &ca).expect("write");
    let tls = LocalTls {
        server: coordinator::tls::client_port_server(&cert_file, &key_file).expect("server TLS"),
        nodes_ca: coordinator::tls::client_port_dialer(&ca_file).expect("dialer TLS"),
    };
    let settings = Settings {
        exit_on_group_failure: false,
        ..Settings::default()
    };
    let mut cluster = LocalCluster::start(LocalConfig {
        data_dir: dir.path().join("data"),
        nodes: 3,
        shards: 2,
        settings,
        timing: RaftTiming::default(),
        auth: None,
        tls: Some(tls),
    })
    .await
    .expect("nodes start");
    let frontend = cluster
        .ready_with_frontend(settings, READY)
        .await
        .expect("leaders, and a frontend that reaches the nodes over TLS");
    let node = cluster.nodes().values().next().expect("a node").addr;
    let trusted = Access {
        token: None,
        ca_pem: Some(ca.into_bytes()),
    };
    let endpoints = [format!("https://{frontend}"), format!("https://{node}")];
    for (i, endpoint) in endpoints.iter().enumerate() {
        let client = Client::connect([endpoint], options(), &trusted).expect("a client");
        let layout = raft_store::layout::generate("Hall", 1, 1, 4);
        let id = format!("tls{i}");
        client
            .create_event(pb::CreateEventRequest {
                event_id: id.clone(),
                name: "Over TLS".into(),
                layout: Some(seatd_wire::layout_to_pb(&layout)),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("{endpoint}: {e}"));
        let hold = client
            .hold(&id, "ann", &["A-1"], None, None)
            .await
            .expect("held over TLS");
        client
            .commit(&hold.hold_id, "tok_visa", None)
            .await
            .expect("paid over TLS");
        // Plaintext to a TLS port, and TLS trusting another CA: no answer.
        let plain = Client::with_options([format!("http://{}", &endpoint[8..])], impatient())
            .expect("a client");
        let got = plain.event(&id).await;
        assert!(matches!(got, Err(Error::Unavailable(_))), "{got:?}");
        let (other_ca, _, _) = test_pki();
        let stranger = Access {
            token: None,
            ca_pem: Some(other_ca.into_bytes()),
        };
        let wrong = Client::connect([endpoint], impatient(), &stranger).expect("a client");
        let got = wrong.event(&id).await;
        assert!(matches!(got, Err(Error::Unavailable(_))), "{got:?}");
    }
    cluster.shutdown().await.expect("clean shutdown");
}
