//! The `seatd layout` tools, run as a user would run them.

use std::process::Command;

fn seatd(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_seatd"))
        .args(args)
        .output()
        .expect("seatd runs")
}

#[test]
fn presets_generate_layouts_of_the_advertised_size() {
    let dir = tempfile::tempdir().unwrap();
    for (preset, seats) in [("arena", "20000 seats"), ("stadium", "100000 seats")] {
        let out = seatd(&["layout", "generate", "--preset", preset]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let file = dir.path().join(format!("{preset}.json"));
        std::fs::write(&file, &out.stdout).unwrap();
        let check = seatd(&["layout", "check", file.to_str().unwrap()]);
        let said = String::from_utf8_lossy(&check.stdout);
        assert!(check.status.success() && said.contains(seats), "{said}");
    }
}

#[test]
fn rectangular_venue_and_the_shipped_example() {
    let out = seatd(&[
        "layout",
        "generate",
        "--sections",
        "2",
        "--rows",
        "3",
        "--seats-per-row",
        "4",
    ]);
    let layout: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(layout["sections"].as_array().unwrap().len(), 2);
    let example = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../raft-store/layouts/small-hall.json"
    );
    let check = seatd(&["layout", "check", example]);
    assert!(String::from_utf8_lossy(&check.stdout).contains("65 seats"));
}

#[test]
fn bad_input_gets_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.json");
    std::fs::write(&file, r#"{"venue":"V","sections":[{"id":"S","rows":[{"id":"A","seats":2},{"id":"A","seats":2}]}]}"#).unwrap();
    let out = seatd(&["layout", "check", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.json") && err.contains("duplicate seat id \"A-1\""),
        "{err}"
    );
    let out = seatd(&["layout", "check", "/nonexistent/layout.json"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read /nonexistent/layout.json"));
    let out = seatd(&["layout", "generate", "--preset", "moon"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown preset"));
    let out = seatd(&["layout", "generate", "--seats-per-row", "0"]);
    assert_eq!(out.status.code(), Some(2));
}
