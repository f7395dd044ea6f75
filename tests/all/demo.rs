//! `scripts/demo`, the README's first command, run with the binary under test so that it cannot
//! rot: every step must do what it says, and it must leave nothing behind.

use std::process::Command;

#[test]
fn the_demo_shows_every_step_and_leaves_nothing_behind() {
    if !crate::support::can_run("the demo") {
        return;
    }
    let demos = || {
        std::fs::read_dir("/var/tmp")
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("ckpt-demo-"))
            .count()
    };
    let before = demos();
    let out = Command::new("bash")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/demo"))
        .env("CKPT_DEMO_BIN", env!("CARGO_BIN_EXE_ckpt"))
        .env("CKPT_POLICY_CACHE", "/var/tmp/ckpt-test-policy-cache")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "the demo failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    for shown in [
        "1. Two containers",
        "policies/migration: ",
        "payroll: refused: ",
        "narrowed by the gate",
        "a planner in Python",
        "a gate in JavaScript",
        "retention deleted",
        "the chain is intact",
        "carries on there",
    ] {
        assert!(stdout.contains(shown), "the demo did not show {shown:?}:\n{stdout}");
    }
    assert_eq!(demos(), before, "the demo left its directory behind");
    let daemons = Command::new("pgrep").args(["-f", "ckpt-demo-.*sshd_config"]).output().unwrap();
    assert!(daemons.stdout.is_empty(), "the demo left its sshd running");
}
