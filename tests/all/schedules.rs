//! Scheduled checkpoints with the real daemon, runc and CRIU: archives on a two-second schedule,
//! retention and pins, a planner that skips, a restart that keeps its place, SIGTERM in the
//! middle of a run, and the audit log that catches an edited line.

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::Duration;

use crate::support::{Ckpt, SmallFs, eventually, policy};

/// A running `ckpt daemon`, its events in a file.
struct Daemon {
    child: Child,
    log: std::path::PathBuf,
}

impl Daemon {
    fn start(ckpt: &Ckpt, log_name: &str) -> Daemon {
        let log = ckpt.path(log_name);
        let child = ckpt
            .command()
            .arg("daemon")
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the daemon starts");
        Daemon { child, log }
    }

    fn events(&self) -> Vec<serde_json::Value> {
        events_in(&self.log)
    }

    fn count(&self, event: &str) -> usize {
        self.events().iter().filter(|e| e["event"] == event).count()
    }

    /// SIGTERM, then the exit code.
    fn stop(mut self) -> i32 {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), nix::sys::signal::SIGTERM).unwrap();
        let status = self.child.wait().unwrap();
        status.code().unwrap_or(-1)
    }
}

fn events_in(log: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

fn catalog(ckpt: &Ckpt) -> Vec<serde_json::Value> {
    serde_json::from_str(&ckpt.ok(&["catalog", "ls", "--format", "json"])).unwrap()
}

fn archives(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        std::fs::read_dir(dir).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

#[test]
fn a_two_second_schedule_exports_archives_and_retention_keeps_the_newest_and_the_pinned() {
    let Some(ckpt) = Ckpt::available() else { return };
    ckpt.counter("sched", &[]);
    let out = ckpt.path("out");
    std::fs::create_dir(&out).unwrap();
    let template = format!("{}/{{name}}-{{time}}.tar.zst", out.display());
    // A backup made by hand is not the schedule's to delete.
    let backup = ckpt.path("before-upgrade.tar.zst");
    ckpt.ok(&["checkpoint", "-R", "-e", backup.to_str().unwrap(), "sched"]);
    ckpt.ok(&[
        "schedule",
        "add",
        "every2",
        "--every",
        "2s",
        "--container",
        "sched",
        "-R",
        "--export",
        &template,
        "--retainer-config",
        r#"{"keep-last": 2}"#,
    ]);
    let daemon = Daemon::start(&ckpt, "daemon.log");
    let scheduled =
        || -> Vec<serde_json::Value> { catalog(&ckpt).into_iter().filter(|e| e["schedule"] == "every2").collect() };
    assert!(eventually(Duration::from_secs(20), || !scheduled().is_empty()), "a first archive: {:?}", daemon.events());
    let first = scheduled()[0]["id"].as_str().unwrap().to_string();
    ckpt.ok(&["catalog", "pin", &first]);
    assert!(eventually(Duration::from_secs(40), || daemon.count("run-end") >= 5), "five runs: {:?}", daemon.events());
    assert_eq!(daemon.stop(), 0, "SIGTERM stops the daemon cleanly");

    let by_hand: Vec<_> = catalog(&ckpt).into_iter().filter(|e| e["trigger"] == "cli").collect();
    assert_eq!(by_hand.len(), 1, "the hand-made backup keeps its entry");
    assert!(backup.is_file(), "and its archive");
    let entries = scheduled();
    let pinned: Vec<_> = entries.iter().filter(|e| e["pinned"] == true).collect();
    assert_eq!(pinned.len(), 1);
    assert_eq!(pinned[0]["id"], first.as_str());
    assert_eq!(entries.len(), 3, "keep-last 2, plus the pinned one: {entries:#?}");
    assert!(
        entries.iter().all(|e| e["presence"] == "present" && e["trigger"] == "schedule" && e["schedule"] == "every2")
    );
    let mut listed: Vec<String> = entries
        .iter()
        .map(|e| Path::new(e["location"].as_str().unwrap()).file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    listed.sort();
    assert_eq!(archives(&out), listed, "retention deleted the archives of the entries it deleted, and only those");
    assert_eq!(ckpt.status("sched"), "running", "-R leaves it running");
    let state: Vec<serde_json::Value> =
        serde_json::from_str(&ckpt.ok(&["schedule", "ls", "--format", "json"])).unwrap();
    assert_eq!(state[0]["last-result"], "ok");
    assert!(state[0]["runs"].as_u64().unwrap() >= 5);

    // The pin holds against a user too; unpinned, the entry and its archive go.
    assert!(ckpt.fails(&["catalog", "rm", &first]).contains("is pinned"));
    ckpt.ok(&["catalog", "unpin", &first]);
    ckpt.ok(&["catalog", "rm", &first]);
    assert_eq!(archives(&out).len(), 2);

    // A file the catalog names that changed shows as such, and is not deleted.
    let newest = scheduled()[0].clone();
    std::fs::write(newest["location"].as_str().unwrap(), b"not what ckpt wrote").unwrap();
    assert_eq!(scheduled()[0]["presence"], "changed");
    assert!(ckpt.fails(&["catalog", "rm", newest["id"].as_str().unwrap()]).contains("changed since ckpt made it"));

    // The audit log has it all, and catches an edit.
    let verified = ckpt.ok(&["audit", "verify"]);
    assert!(verified.contains("the chain is intact"), "{verified}");
    let audit = ckpt.root.join("audit.log");
    let text = std::fs::read_to_string(&audit).unwrap();
    for event in ["schedule-add", "checkpoint", "retention-delete", "pin", "unpin", "catalog-rm", "schedule-run"] {
        assert!(text.contains(&format!("\"event\":\"{event}\"")), "{event} is audited");
    }
    let edited: Vec<String> = text
        .lines()
        .enumerate()
        .map(|(i, l)| if i == 2 { l.replacen("\"schedule\"", "\"schedulf\"", 1) } else { l.to_string() })
        .collect();
    std::fs::write(&audit, edited.join("\n") + "\n").unwrap();
    let r = ckpt.run(&["audit", "verify"]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("audit.log line 3: edited"), "{}", r.stderr);
}

#[test]
fn a_planner_skips_missed_runs_and_a_restart_keeps_the_schedules_place() {
    let Some(ckpt) = Ckpt::available() else { return };
    ckpt.counter("skipme", &[]);
    // Named relative to where `schedule add` ran, which is not where the daemon runs.
    std::fs::copy(policy("skipper"), ckpt.dir.path().join("skipper.wasm")).unwrap();
    let added = ckpt
        .command()
        .current_dir(ckpt.dir.path())
        .args(["schedule", "add", "every1", "--every", "1s", "--container", "skipme", "-R", "--policy", "skipper.wasm"])
        .output()
        .unwrap();
    assert!(added.status.success(), "{}", String::from_utf8_lossy(&added.stderr));
    let daemon = Daemon::start(&ckpt, "first.log");
    assert!(eventually(Duration::from_secs(20), || daemon.count("run-end") >= 1), "{:?}", daemon.events());
    assert_eq!(daemon.stop(), 0);
    let before: Vec<serde_json::Value> =
        serde_json::from_str(&ckpt.ok(&["schedule", "ls", "--format", "json"])).unwrap();
    let last_run = before[0]["last-run"].clone();
    assert!(last_run.is_string());
    std::thread::sleep(Duration::from_millis(3500));

    let daemon = Daemon::start(&ckpt, "second.log");
    assert!(eventually(Duration::from_secs(20), || daemon.count("run-start") >= 1), "{:?}", daemon.events());
    // One daemon a store, whatever run root another command names; and no schedule runs beside it.
    let second = std::process::Command::new(env!("CARGO_BIN_EXE_ckpt"))
        .arg("--root")
        .arg(&ckpt.root)
        .arg("--runroot")
        .arg(ckpt.path("another-runroot"))
        .env("CKPT_CONFIG", ckpt.dir.path().join("ckpt.toml"))
        .env("CKPT_AUDIT_ANCHOR", ckpt.dir.path().join("audit-anchor"))
        .arg("daemon")
        .output()
        .unwrap();
    assert_eq!(second.status.code(), Some(125), "{}", String::from_utf8_lossy(&second.stderr));
    assert!(String::from_utf8_lossy(&second.stderr).contains("another ckpt daemon"));
    assert!(ckpt.fails(&["schedule", "run", "every1"]).contains("a ckpt daemon runs the schedules"));
    assert!(eventually(Duration::from_secs(20), || daemon.count("run-end") >= 2), "{:?}", daemon.events());
    assert_eq!(daemon.stop(), 0);
    let events = events_in(&ckpt.path("second.log"));
    let first_run = events.iter().find(|e| e["event"] == "run-start").unwrap();
    assert!(first_run["missed-runs"].as_u64().unwrap() >= 2, "the restart saw the runs it missed: {first_run}");
    let first_checkpoint = events.iter().find(|e| e["event"] == "checkpoint").unwrap();
    assert_eq!(first_checkpoint["outcome"]["result"], "skipped", "{first_checkpoint}");
    assert!(first_checkpoint["outcome"]["detail"].as_str().unwrap().contains("not catching up"));
    let later = events.iter().filter(|e| e["event"] == "checkpoint").nth(1).unwrap();
    assert_eq!(later["outcome"]["result"], "ok", "the next run is on time and goes ahead: {later}");
    let audit = std::fs::read_to_string(ckpt.root.join("audit.log")).unwrap();
    assert!(audit.contains("\"event\":\"skip\"") && audit.contains("not catching up"), "the skip is recorded");
    assert!(ckpt.ok(&["audit", "verify"]).contains("intact"));
}

#[test]
fn sigterm_in_the_middle_of_a_run_loses_nothing() {
    let Some(ckpt) = Ckpt::available() else { return };
    ckpt.counter("term", &[]);
    let out = ckpt.path("out");
    std::fs::create_dir(&out).unwrap();
    let template = format!("{}/{{name}}-{{time}}.tar.zst", out.display());
    ckpt.ok(&["schedule", "add", "t", "--every", "1s", "--container", "term", "--export", &template]);
    let daemon = Daemon::start(&ckpt, "daemon.log");
    assert!(eventually(Duration::from_secs(20), || daemon.count("run-start") >= 1), "{:?}", daemon.events());
    assert_eq!(daemon.stop(), 0, "SIGTERM mid-run still exits 0");
    // The checkpoint in flight either finished (an archive, a catalog entry, the container
    // checkpointed) or rolled back (the container running, no archive); nothing in between.
    let entries = catalog(&ckpt);
    let files = archives(&out);
    assert!(files.iter().all(|f| f.ends_with(".tar.zst")), "no temporary file is left: {files:?}");
    assert_eq!(files.len(), entries.len(), "every archive is in the catalog, and every entry has its archive");
    let status = ckpt.status("term");
    match entries.len() {
        0 => assert_eq!(status, "running", "rolled back"),
        _ => assert!(status == "exited" || status == "running", "{status}"),
    }
    if status == "exited" {
        ckpt.ok(&["restore", "term"]);
    }
    assert!(ckpt.ok(&["audit", "verify"]).contains("intact"));
}

#[test]
fn a_schedule_whose_place_cannot_be_saved_runs_each_slot_once() {
    let Some(ckpt) = Ckpt::available() else { return };
    ckpt.ok(&["schedule", "add", "full", "--every", "1s", "--label", "selects=nothing"]);
    let small = SmallFs::over(&ckpt.root.join("schedules"), "256k");
    small.fill();
    let daemon = Daemon::start(&ckpt, "daemon.log");
    std::thread::sleep(Duration::from_secs(4));
    let runs = daemon.count("run-start");
    let errors = daemon.count("error");
    assert_eq!(daemon.stop(), 0);
    assert!(errors >= 1, "the failed save is reported");
    // One run a slot (four or five in four seconds), not one a tick (forty).
    assert!((1..=6).contains(&runs), "{runs} runs in 4 s on a 1 s schedule whose place cannot be saved");
}

#[test]
fn idle_connections_do_not_stall_the_metrics_endpoint() {
    let Some(ckpt) = Ckpt::available() else { return };
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut daemon = ckpt
        .command()
        .args(["daemon", "--metrics", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    assert!(eventually(Duration::from_secs(10), || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()));
    let _idle: Vec<_> = (0..4).map(|_| std::net::TcpStream::connect(("127.0.0.1", port)).unwrap()).collect();
    let started = std::time::Instant::now();
    let mut scrape = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    use std::io::{Read, Write};
    scrape.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut answer = String::new();
    scrape.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.0 200 OK"), "{answer}");
    // Four idle connections held it 2 s each before.
    assert!(started.elapsed() < Duration::from_secs(3), "answered after {:?}", started.elapsed());
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(daemon.id() as i32), nix::sys::signal::SIGTERM).unwrap();
    assert_eq!(daemon.wait().unwrap().code(), Some(0));
}
