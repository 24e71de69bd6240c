//! `seatctl` as a user runs it, with no cluster: its help, and the exit code and JSON
//! error it gives when nothing answers. (Its contract against a running cluster is
//! tested in `coordinator/tests/cli.rs`, which runs the binary this test builds.)

use std::process::Command;

fn seatctl() -> Command {
    Command::new(env!("CARGO_BIN_EXE_seatctl"))
}

#[test]
fn help_lists_the_commands() {
    let out = seatctl().arg("--help").output().expect("seatctl runs");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for command in ["hold", "commit", "seatmap", "status"] {
        assert!(text.contains(command), "{command} missing from:\n{text}");
    }
}

#[test]
fn nothing_answering_is_unavailable_with_exit_code_7() {
    // A port bound and let go: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a loopback port")
        .port();
    let out = seatctl()
        .args(["--endpoint", &format!("http://127.0.0.1:{port}")])
        .args(["--json", "--timeout", "1s", "status"])
        .output()
        .expect("seatctl runs");
    assert_eq!(out.status.code(), Some(7), "{out:?}");
    let doc: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("a JSON document on stdout");
    assert_eq!(doc["error"]["code"], "unavailable", "{doc}");
}
