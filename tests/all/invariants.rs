//! The invariant matrix: every answer a policy may give (plan, skip, deny, ignore the rootfs or
//! the volumes, redirect the export, narrow it at a gate, trap) put to every operation
//! (checkpoint, `-R -e`, `--create-image`, `migrate` streamed and `--via`, `schedule run` with
//! retention), with real runc, CRIU, sshd and a registry. After each cell, whatever the answer
//! and whether the command succeeded:
//! - exactly one copy of the container runs (a local checkpoint is restored first), its memory
//!   carries on, and its files and its named volume are whole;
//! - no partial archive or temporary file is left, and `system check` finds nothing;
//! - the audit log verifies and its last entry for the container says what happened;
//! - a backup the user made by hand is still there.

use std::time::Duration;

use crate::support::servers::Sides;
use crate::support::{Ckpt, eventually, last_count, policy};

#[derive(Debug, Clone, Copy, PartialEq)]
enum Op {
    Checkpoint,
    ExportLeaveRunning,
    ImageLeaveRunning,
    Migrate,
    MigrateVia,
    ScheduleRun,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Answer {
    Plan,
    Skip,
    Deny,
    IgnoreRootfs,
    IgnoreVolumes,
    Redirect,
    Narrow,
    Trap,
}

const ANSWERS: [Answer; 8] = [
    Answer::Plan,
    Answer::Skip,
    Answer::Deny,
    Answer::IgnoreRootfs,
    Answer::IgnoreVolumes,
    Answer::Redirect,
    Answer::Narrow,
    Answer::Trap,
];

/// The policy flags that make a checkpoint get `answer`.
fn policy_flags(answer: Answer, redirect_to: &str) -> Vec<String> {
    let scripted = |name: &str| {
        let settings = serde_json::json!({"answer": name, "redirect-to": redirect_to}).to_string();
        vec!["--policy".to_string(), policy("scripted"), "--policy-config".to_string(), settings]
    };
    match answer {
        Answer::Plan => scripted("plan"),
        Answer::Skip => scripted("skip"),
        Answer::Deny => scripted("deny"),
        Answer::IgnoreRootfs => scripted("ignore-rootfs"),
        Answer::IgnoreVolumes => scripted("ignore-volumes"),
        Answer::Redirect => scripted("redirect"),
        Answer::Trap => scripted("trap"),
        Answer::Narrow => {
            let settings = r#"{"classes": {"pii": {"targets": ["/", "image:", "registry:"], "rootfs": false, "volumes": false}}, "unlabelled": "pii"}"#;
            vec!["--gate".into(), policy("compliance"), "--gate-config".into(), settings.into()]
        }
    }
}

/// `Some(status)` of a container, `None` when the store has no such container.
pub(crate) fn status_of(ckpt: &Ckpt, name: &str) -> Option<String> {
    let r = ckpt.run(&["inspect", "--format", "{{.State.Status}}", name]);
    (r.code == 0).then(|| r.stdout.trim().to_string())
}

pub(crate) fn checkpointed(ckpt: &Ckpt, name: &str) -> bool {
    let r = ckpt.run(&["inspect", "--format", "{{.State.Checkpointed}}", name]);
    r.code == 0 && r.stdout.trim() == "true"
}

/// The audit log's entries about the container `name`, oldest first.
fn audit_of(ckpt: &Ckpt, name: &str) -> Vec<serde_json::Value> {
    let entries = ckpt.ok(&["audit", "ls"]);
    entries
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["container"] == name)
        .collect()
}

/// Runs one cell and asserts every invariant after it.
fn cell(sides: &Sides, op: Op, answer: Answer, n: usize) {
    let (source, dest) = (&sides.source, &sides.dest);
    let name = format!("m{n}");
    let volume = format!("mv{n}");
    let what = format!("{op:?} × {answer:?}");
    let exports = source.path(&format!("exports-{n}"));
    std::fs::create_dir_all(&exports).unwrap();
    source.counter(&name, &["-v", &format!("{volume}:/data")]);
    source.exec(&name, "echo kept > /data/note; echo mine > /notes");
    assert!(eventually(Duration::from_secs(5), || last_count(&source.logs(&name)) >= 3), "{what}: no count");
    let by_hand = exports.join("by-hand.tar.zst");
    source.ok(&["checkpoint", "-R", "-e", by_hand.to_str().unwrap(), &name]);
    let before = last_count(&source.logs(&name));

    let redirect_to = exports.join("redirected.tar.zst");
    let mut args: Vec<String> = Vec::new();
    let reference = format!("{}/ckpt/{name}:1", sides.registry.host);
    match op {
        Op::Checkpoint => args.extend(["checkpoint".into()]),
        Op::ExportLeaveRunning => {
            let target = exports.join("asked.tar.zst");
            args.extend(["checkpoint".into(), "-R".into(), "-e".into(), target.display().to_string()]);
        }
        Op::ImageLeaveRunning => {
            args.extend(["checkpoint".into(), "-R".into(), "--create-image".into(), format!("localhost/m/{name}:1")])
        }
        Op::Migrate | Op::MigrateVia => {
            args.extend(["migrate".into()]);
            args.extend(sides.sshd.flags(dest));
            if op == Op::MigrateVia {
                args.extend(["--via".into(), reference.clone()]);
            }
        }
        Op::ScheduleRun => {
            let template = exports.join("{name}-{time}.tar.zst").display().to_string();
            let mut add: Vec<String> =
                ["schedule", "add", &name, "--every", "1h", "--container", &name, "-R"].map(String::from).to_vec();
            add.extend(["--export".into(), template]);
            add.extend(policy_flags(answer, redirect_to.to_str().unwrap()));
            source.ok(&add.iter().map(String::as_str).collect::<Vec<_>>());
            args.extend(["schedule".into(), "run".into()]);
        }
    }
    if op != Op::ScheduleRun {
        args.extend(policy_flags(answer, redirect_to.to_str().unwrap()));
    }
    args.push(name.clone());
    if matches!(op, Op::Migrate | Op::MigrateVia) {
        args.push(sides.sshd.url(dest));
    }
    let audited_before = audit_of(source, &name).len();
    let result = source.run(&args.iter().map(String::as_str).collect::<Vec<_>>());
    // `schedule run` exits 1 for a run that checkpointed nothing.
    let refused = match result.code {
        0 => false,
        125 => true,
        1 if op == Op::ScheduleRun => true,
        code => panic!("{what}: exit {code}: {}", result.stderr),
    };
    // What the log says of the operation, before anything else is done to the container.
    let audited: Vec<serde_json::Value> = audit_of(source, &name).split_off(audited_before);

    // A local checkpoint is brought back first: the one copy the user asked for.
    if status_of(source, &name).as_deref() == Some("exited") && checkpointed(source, &name) {
        source.ok(&["restore", &name]);
    }
    let here = status_of(source, &name).as_deref() == Some("running");
    let there = status_of(dest, &name).as_deref() == Some("running");
    assert!(here ^ there, "{what}: it runs here {here}, there {there} ({}{})", result.stderr, result.stdout);
    let side = if here { source } else { dest };
    let carries_on = eventually(Duration::from_secs(5), || last_count(&side.logs(&name)) > before);
    assert!(carries_on, "{what}: its memory did not carry on from {before}");
    assert_eq!(side.exec(&name, "cat /data/note /notes"), "kept\nmine\n", "{what}: its files or volume");
    if there {
        assert!(!refused, "{what}: moved, so migrate says so: {}", result.stderr);
        assert!(status_of(source, &name).is_none(), "{what}: the source goes once the destination runs it");
    }

    // Nothing partial, nothing to repair, and a log that says what happened.
    for entry in std::fs::read_dir(&exports).unwrap().flatten() {
        let file = entry.file_name().to_string_lossy().into_owned();
        assert!(!file.starts_with('.'), "{what}: a temporary file is left: {file}");
        source.ok(&["inspect-checkpoint", entry.path().to_str().unwrap()]);
    }
    assert!(by_hand.is_file(), "{what}: the backup made by hand is gone");
    for ckpt in [source, dest] {
        let check = ckpt.run(&["system", "check"]);
        assert_eq!(check.code, 0, "{what}: system check: {}{}", check.stdout, check.stderr);
        assert!(ckpt.ok(&["audit", "verify"]).contains("intact"), "{what}");
    }
    let events: Vec<&str> = audited.iter().filter_map(|e| e["event"].as_str()).collect();
    let fitting: &[&str] = match (refused, there) {
        (false, true) => &["migrate"],
        (false, false) => &["checkpoint", "skip", "denial", "checkpoint-failed"],
        (true, _) => &["denial", "checkpoint-failed", "skip"],
    };
    match events.iter().rev().find(|e| !matches!(**e, "schedule-add" | "schedule-run" | "retention-delete")) {
        Some(event) => assert!(fitting.contains(event), "{what}: exit {} but the log says {events:?}", result.code),
        // Refused as a command line before anything was done: nothing to record.
        None => assert!(refused && result.stderr.contains("Error:"), "{what}: nothing audited: {}", result.stderr),
    }

    for ckpt in [source, dest] {
        let _ = ckpt.run(&["rm", "-f", &name]);
        let _ = ckpt.run(&["volume", "rm", &volume]);
    }
    let _ = source.run(&["schedule", "rm", &name]);
}

fn row(op: Op) {
    let Some(sides) = Sides::new() else { return };
    for (n, answer) in ANSWERS.into_iter().enumerate() {
        cell(&sides, op, answer, n);
    }
}

#[test]
fn every_answer_to_a_checkpoint_keeps_one_whole_copy() {
    row(Op::Checkpoint);
}

#[test]
fn every_answer_to_an_export_keeps_one_whole_copy() {
    row(Op::ExportLeaveRunning);
}

#[test]
fn every_answer_to_a_checkpoint_image_keeps_one_whole_copy() {
    row(Op::ImageLeaveRunning);
}

#[test]
fn every_answer_to_a_streamed_migration_keeps_one_whole_copy() {
    row(Op::Migrate);
}

#[test]
fn every_answer_to_a_migration_through_a_registry_keeps_one_whole_copy() {
    row(Op::MigrateVia);
}

#[test]
fn every_answer_to_a_scheduled_run_keeps_one_whole_copy_and_the_backups() {
    row(Op::ScheduleRun);
}
