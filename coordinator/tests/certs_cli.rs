//! `seatd certs` and the node's use of its files, run as an operator would: the
//! command line is a contract (`seatd certs --out DIR --nodes 1,2,3` writes
//! `DIR/ca.pem` and `DIR/node-N.pem`, `DIR/node-N.key`, keeping existing files).

use std::process::{Command, Output};

fn seatd(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_seatd"))
        .args(args)
        .output()
        .expect("seatd runs")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn certs_are_written_once_and_kept_after() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("certs");
    let d = out_dir.to_str().unwrap();
    let first = seatd(&["certs", "--out", d, "--nodes", "1,2,3"]);
    assert!(first.status.success(), "{}", text(&first));
    for f in [
        "ca.pem",
        "ca.key",
        "node-1.pem",
        "node-1.key",
        "node-3.pem",
        "node-3.key",
    ] {
        assert!(out_dir.join(f).is_file(), "{f} missing");
    }
    let ca = std::fs::read(out_dir.join("ca.pem")).unwrap();
    let node2 = std::fs::read(out_dir.join("node-2.key")).unwrap();
    // Again with one more node: the others are kept byte for byte.
    let second = seatd(&["certs", "--out", d, "--nodes", "1,2,3,4"]);
    assert!(second.status.success(), "{}", text(&second));
    assert!(text(&second).contains("kept"), "{}", text(&second));
    assert_eq!(std::fs::read(out_dir.join("ca.pem")).unwrap(), ca);
    assert_eq!(std::fs::read(out_dir.join("node-2.key")).unwrap(), node2);
    assert!(out_dir.join("node-4.pem").is_file());
    // Nonsense is refused with a reason.
    let bad = seatd(&["certs", "--out", d, "--nodes", "0"]);
    assert_eq!(bad.status.code(), Some(2), "{}", text(&bad));
}

#[test]
fn a_node_refuses_another_nodes_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let c = certs.to_str().unwrap();
    assert!(seatd(&["certs", "--out", c, "--nodes", "1,2"])
        .status
        .success());
    // Node 1 given node 2's certificate under its own name.
    std::fs::copy(certs.join("node-2.pem"), certs.join("node-1.pem")).unwrap();
    std::fs::copy(certs.join("node-2.key"), certs.join("node-1.key")).unwrap();
    let data = dir.path().join("data");
    let out = seatd(&[
        "node",
        "--id",
        "1",
        "--listen",
        "127.0.0.1:0",
        "--peer-listen",
        "127.0.0.1:0",
        "--data-dir",
        data.to_str().unwrap(),
        "--certs",
        c,
        "--peers",
        "1=127.0.0.1:1,2=127.0.0.1:2",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("not node 1's certificate"),
        "{}",
        text(&out)
    );
    // Without --certs the node does not start at all.
    let out = seatd(&[
        "node",
        "--id",
        "1",
        "--listen",
        "127.0.0.1:0",
        "--peer-listen",
        "127.0.0.1:0",
        "--data-dir",
        data.to_str().unwrap(),
        "--peers",
        "1=127.0.0.1:1",
    ]);
    assert!(!out.status.success());
}
