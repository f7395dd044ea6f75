//! Faults at every write: each operation runs under strace with ENOSPC or EIO injected into
//! ckpt's Nth write-side call (`write`, `rename`, `fsync` and their kin), or with SIGKILL at its
//! Nth rename, as CRIU's ZDTM `--fault` does for CRIU. Then `system check --repair`, and the invariants: the container runs
//! (or waits in its checkpoint, restorable) with its memory, files and volume whole, no partial
//! archive, image or record is left, and the audit log verifies.
//!
//! Here N is sampled (the first call, one in the middle and the last); `scripts/fault-sweep`
//! sets `CKPT_FAULT_SWEEP=all` for every N.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::invariants::{checkpointed, status_of};
use crate::support::{Ckpt, eventually, last_count};

#[derive(Debug, Clone, Copy, PartialEq)]
enum Op {
    Export,
    Checkpoint,
    Restore,
    Import,
    Image,
}

/// The calls a fault is injected into, and what it does there.
const FAULTS: [(&str, &str); 4] = [
    ("write,pwrite64,writev", "error=ENOSPC"),
    ("rename,renameat,renameat2", "error=ENOSPC"),
    ("fsync,fdatasync", "error=EIO"),
    ("rename,renameat,renameat2", "signal=KILL"),
];

/// `ckpt ARGS` as `ckpt.command()` would run it, under strace with `strace_args` first.
pub(crate) fn traced(ckpt: &Ckpt, strace_args: &[String], args: &[&str]) -> std::process::Output {
    let ckpt_cmd = {
        let mut c = ckpt.command();
        c.args(args);
        c
    };
    let mut cmd = Command::new("strace");
    // ckpt's own process alone: CRIU cannot work under a tracer that follows it (it ptraces
    // itself), and runc's and CRIU's failures are theirs to report, which ckpt already handles.
    cmd.arg("-qq").args(strace_args).arg("--").arg(ckpt_cmd.get_program()).args(ckpt_cmd.get_args());
    for (key, value) in ckpt_cmd.get_envs() {
        match value {
            Some(value) => cmd.env(key, value),
            None => cmd.env_remove(key),
        };
    }
    cmd.stdin(std::process::Stdio::null()).output().expect("scripts/setup installs strace")
}

/// How many of `calls` ckpt makes in `ckpt ARGS`: the faults' range.
pub(crate) fn most_calls(ckpt: &Ckpt, calls: &str, args: &[&str]) -> usize {
    let log = ckpt.path("strace.log");
    let out = traced(ckpt, &["-o".into(), log.display().to_string(), "-e".into(), format!("trace={calls}")], args);
    assert!(out.status.success(), "the run without a fault failed: {}", String::from_utf8_lossy(&out.stderr));
    let text = std::fs::read_to_string(&log).unwrap();
    text.lines().filter(|l| !l.starts_with("+++") && !l.starts_with("---")).count()
}

fn samples(most: usize) -> Vec<usize> {
    if std::env::var("CKPT_FAULT_SWEEP").is_ok_and(|v| v == "all") {
        return (1..=most).collect();
    }
    let mut n = vec![1, most.div_ceil(2), most];
    n.retain(|&n| n >= 1);
    n.dedup();
    n
}

/// A fresh counting container with a file and a named volume, and the operation's setup done.
fn prepare(ckpt: &Ckpt, op: Op, name: &str, archive: &Path) -> u64 {
    ckpt.counter(name, &["-v", &format!("{name}-data:/data")]);
    ckpt.exec(name, "echo kept > /data/note; echo mine > /notes");
    assert!(eventually(Duration::from_secs(5), || last_count(&ckpt.logs(name)) >= 3));
    match op {
        Op::Restore => drop(ckpt.ok(&["checkpoint", name])),
        Op::Import => drop(ckpt.ok(&["checkpoint", "-R", "-e", archive.to_str().unwrap(), name])),
        _ => {}
    }
    last_count(&ckpt.logs(name))
}

fn args_of(op: Op, name: &str, archive: &Path) -> Vec<String> {
    let archive = archive.display().to_string();
    let words: Vec<&str> = match op {
        Op::Export => vec!["checkpoint", "-R", "-e", &archive, name],
        Op::Checkpoint => vec!["checkpoint", name],
        Op::Restore => vec!["restore", name],
        // The volume is the original's, which stays.
        Op::Import => vec!["restore", "-i", &archive, "-n", "copy", "--ignore-volumes"],
        Op::Image => vec!["checkpoint", "-R", "--create-image", "localhost/faults/img:1", name],
    };
    words.into_iter().map(String::from).collect()
}

/// The invariants after a run with a fault, once `system check --repair` has run.
fn assert_whole(ckpt: &Ckpt, op: Op, name: &str, before: u64, archive: &Path, what: &str) {
    let repaired = ckpt.run(&["system", "check", "--repair"]);
    assert!(repaired.code <= 1, "{what}: system check --repair: {}{}", repaired.stdout, repaired.stderr);
    // The one copy the user asked for: the container itself, brought back from its checkpoint.
    if status_of(ckpt, name).as_deref() == Some("exited") && checkpointed(ckpt, name) {
        let restored = ckpt.run(&["restore", name]);
        assert_eq!(restored.code, 0, "{what}: its checkpoint does not restore: {}", restored.stderr);
    }
    assert_eq!(status_of(ckpt, name).as_deref(), Some("running"), "{what}: the container does not run");
    let carries_on = eventually(Duration::from_secs(5), || last_count(&ckpt.logs(name)) > before);
    assert!(carries_on, "{what}: its memory did not carry on from {before}");
    assert_eq!(ckpt.exec(name, "cat /data/note /notes"), "kept\nmine\n", "{what}: its files or volume");
    // An import either made a whole copy or nothing.
    if op == Op::Import
        && let Some(status) = status_of(ckpt, "copy")
    {
        assert_eq!(status, "running", "{what}: a half-made copy is left");
        assert_eq!(ckpt.exec("copy", "cat /data/note /notes"), "kept\nmine\n", "{what}: the copy's files");
    }
    // No partial archive or temporary file; a published archive is whole.
    for entry in std::fs::read_dir(archive.parent().unwrap()).unwrap().flatten() {
        let file = entry.file_name().to_string_lossy().into_owned();
        assert!(!file.starts_with('.'), "{what}: a temporary file is left: {file}");
        if file.ends_with(".tar.zst") {
            ckpt.ok(&["inspect-checkpoint", entry.path().to_str().unwrap()]);
        }
    }
    let check = ckpt.run(&["system", "check"]);
    assert_eq!(check.code, 0, "{what}: left to repair after --repair: {}", check.stdout);
    let verified = ckpt.run(&["audit", "verify"]);
    assert_eq!(verified.code, 0, "{what}: audit verify: {}{}", verified.stdout, verified.stderr);
}

fn sweep(op: Op) {
    let Some(ckpt) = Ckpt::available() else { return };
    let exports = ckpt.path("exports");
    std::fs::create_dir_all(&exports).unwrap();
    let archive = exports.join("f.tar.zst");
    let mut run = 0;
    for (calls, fault) in FAULTS {
        let name = format!("f{run}");
        prepare(&ckpt, op, &name, &archive);
        let most = most_calls(&ckpt, calls, &words(&args_of(op, &name, &archive)));
        clean(&ckpt, &name, &archive);
        run += 1;
        for n in samples(most) {
            let name = format!("f{run}");
            run += 1;
            let what = format!("{op:?} with {fault} at call {n} of {calls}");
            let before = prepare(&ckpt, op, &name, &archive);
            let inject = format!("inject={calls}:{fault}:when={n}");
            let args = args_of(op, &name, &archive);
            traced(&ckpt, &["-o".into(), "/dev/null".into(), "-e".into(), inject], &words(&args));
            assert_whole(&ckpt, op, &name, before, &archive, &what);
            clean(&ckpt, &name, &archive);
        }
    }
}

fn words(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// Removes what one run made, so that the next starts from nothing.
fn clean(ckpt: &Ckpt, name: &str, archive: &Path) {
    for container in [name, "copy"] {
        let _ = ckpt.run(&["rm", "-f", container]);
    }
    let _ = ckpt.run(&["volume", "rm", &format!("{name}-data")]);
    let _ = ckpt.run(&["rmi", "localhost/faults/img:1"]);
    let _ = std::fs::remove_file(archive);
}

#[test]
fn faults_in_an_export_lose_nothing() {
    sweep(Op::Export);
}

#[test]
fn faults_in_a_checkpoint_lose_nothing() {
    sweep(Op::Checkpoint);
}

#[test]
fn faults_in_a_restore_lose_nothing() {
    sweep(Op::Restore);
}

#[test]
fn faults_in_an_import_lose_nothing() {
    sweep(Op::Import);
}

#[test]
fn faults_in_a_checkpoint_image_lose_nothing() {
    sweep(Op::Image);
}

/// The renames of `ckpt ARGS`, in order, as strace shows them.
fn renames(ckpt: &Ckpt, args: &[&str]) -> Vec<String> {
    let log = ckpt.path("renames.log");
    let out = traced(
        ckpt,
        &["-o".into(), log.display().to_string(), "-e".into(), "trace=rename,renameat,renameat2".into()],
        args,
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    std::fs::read_to_string(&log).unwrap().lines().filter(|l| l.starts_with("rename")).map(String::from).collect()
}

#[test]
fn a_record_that_cannot_be_saved_after_criu_restored_an_import_keeps_what_runs() {
    let Some(ckpt) = Ckpt::available() else { return };
    let archive = ckpt.path("a.tar.zst");
    let name = "imported";
    prepare(&ckpt, Op::Import, name, &archive);
    let args = ["restore", "-i", archive.to_str().unwrap(), "-n", "copy", "--ignore-volumes"];
    // Where the record is saved after the restore, in a run like the one to come.
    ckpt.ok(&args);
    let _ = ckpt.run(&["rm", "-f", "copy"]);
    let calls = renames(&ckpt, &args);
    let n = 1 + calls.iter().rposition(|c| c.contains("container.json")).expect("the record is saved");
    let _ = ckpt.run(&["rm", "-f", "copy"]);
    let inject = format!("inject=rename,renameat,renameat2:error=ENOSPC:when={n}");
    let out = traced(&ckpt, &["-o".into(), "/dev/null".into(), "-e".into(), inject], &args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // CRIU restored it: it runs, ckpt knows it, and says what it could not record.
    assert_eq!(status_of(&ckpt, "copy").as_deref(), Some("running"), "exit {:?}: {stderr}", out.status.code());
    assert_eq!(ckpt.exec("copy", "cat /data/note /notes"), "kept\nmine\n");
    let check = ckpt.run(&["system", "check"]);
    assert_eq!(check.code, 0, "{}", check.stdout);
}

#[test]
fn the_daemon_repairs_what_a_killed_checkpoint_left_before_it_runs_anything() {
    let Some(ckpt) = Ckpt::available() else { return };
    // Killed at its last rename: after CRIU wrote the images, before the record says so; where
    // that is, a checkpoint of a container like it shows.
    let unused = ckpt.path("unused.tar.zst");
    prepare(&ckpt, Op::Checkpoint, "probe", &unused);
    ckpt.ok(&["checkpoint", "probe"]);
    ckpt.ok(&["restore", "probe"]);
    let calls = renames(&ckpt, &["checkpoint", "probe"]);
    let n = 1 + calls.iter().rposition(|c| c.contains("container.json")).expect("the record is saved");
    clean(&ckpt, "probe", &unused);
    let name = "killed";
    let before = prepare(&ckpt, Op::Checkpoint, name, &unused);
    let inject = format!("inject=rename,renameat,renameat2:signal=KILL:when={n}");
    traced(&ckpt, &["-o".into(), "/dev/null".into(), "-e".into(), inject], &["checkpoint", name]);
    let log = ckpt.path("daemon.log");
    let mut daemon = ckpt.command().arg("daemon").stdout(std::fs::File::create(&log).unwrap()).spawn().unwrap();
    let repaired = || std::fs::read_to_string(&log).unwrap_or_default().contains(r#""event":"repair""#);
    let seen = eventually(Duration::from_secs(10), repaired);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(daemon.id() as i32), nix::sys::signal::SIGTERM).unwrap();
    daemon.wait().unwrap();
    assert!(seen, "no repair at the daemon's start: {}", std::fs::read_to_string(&log).unwrap_or_default());
    assert!(ckpt.ok(&["audit", "ls"]).contains(r#""event":"system-repair""#));
    assert_whole(&ckpt, Op::Checkpoint, name, before, &unused, "a killed checkpoint");
}

#[test]
fn retention_or_a_user_cannot_delete_a_local_checkpoint_while_it_is_being_written() {
    let Some(ckpt) = Ckpt::available() else { return };
    let unused = ckpt.path("unused.tar.zst");
    let before = prepare(&ckpt, Op::Checkpoint, "busy", &unused);
    ckpt.ok(&["checkpoint", "-R", "busy"]);
    let entries: Vec<serde_json::Value> =
        serde_json::from_str(&ckpt.ok(&["catalog", "ls", "--format", "json"])).unwrap();
    let local =
        entries.iter().find(|e| e["kind"] == "local").expect("a local entry")["id"].as_str().unwrap().to_string();
    let log = ckpt.path("dump.strace");
    // A second dump, held up for 1.5 s at each rename: the one that saves its record is made
    // under the container's lock.
    let inject = "inject=rename,renameat,renameat2:delay_enter=1500000:when=1+";
    let ckpt_cmd = {
        let mut c = ckpt.command();
        c.args(["checkpoint", "busy"]);
        c
    };
    let mut dumping = Command::new("strace")
        // On stderr, which strace does not buffer as it does a file.
        .args(["-qq", "-e", "trace=flock,rename,renameat,renameat2", "-e", inject, "--"])
        .arg(ckpt_cmd.get_program())
        .args(ckpt_cmd.get_args())
        .envs(ckpt_cmd.get_envs().filter_map(|(k, v)| Some((k, v?))))
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    // Once the dump holds the container's lock, as strace shows its flock (a busy machine takes
    // its time to get there); the renames after it keep it holding the lock for seconds.
    let locked = || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        text.lines().any(|l| l.starts_with("flock(") && l.contains("LOCK_EX|LOCK_NB)") && l.ends_with("= 0"))
    };
    assert!(eventually(Duration::from_secs(20), locked), "the dump never took the container's lock");
    let refused = ckpt.fails(&["catalog", "rm", &local]);
    assert!(refused.contains("busy"), "{refused}");
    assert!(dumping.wait().unwrap().success());
    assert_whole(&ckpt, Op::Checkpoint, "busy", before, &unused, "a delete racing a dump");
}
