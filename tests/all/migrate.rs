//! `ckpt migrate` between two ckpt stores on this machine, through a real sshd on loopback (and
//! a real registry for `--via`): the container carries on at the destination, established TCP
//! connections survive, and a failure leaves it running on exactly one side.

use std::time::Duration;

use crate::support::servers::{Sides, Sshd};
use crate::support::{Ckpt, eventually, last_count};

fn migrate(from: &Ckpt, sshd: &Sshd, to: &Ckpt, extra: &[&str], name: &str) -> crate::support::Run {
    migrate_with(from, sshd.flags(to), extra, name, &sshd.url(to))
}

/// `ckpt migrate --json FLAGS EXTRA NAME URL` on `from`.
fn migrate_with(from: &Ckpt, flags: Vec<String>, extra: &[&str], name: &str, url: &str) -> crate::support::Run {
    let mut args: Vec<String> = vec!["migrate".into(), "--json".into()];
    args.extend(flags);
    args.extend(extra.iter().map(|s| s.to_string()));
    args.push(name.into());
    args.push(url.into());
    from.run(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

#[test]
fn a_counting_container_moves_over_ssh_carries_on_and_comes_back() {
    let Some(source) = Ckpt::available() else { return };
    let Some(dest) = Ckpt::available() else { return };
    let sshd = Sshd::start(&source);
    let id = source.counter("web", &["-v", "webdata:/data"]);
    source.exec("web", "echo kept > /data/note");
    assert!(eventually(Duration::from_secs(5), || last_count(&source.logs("web")) >= 5));
    let address = |ckpt: &Ckpt| {
        let settings = ckpt.inspect("web")["NetworkSettings"].clone();
        (settings["IPAddress"].as_str().unwrap().to_string(), settings["MacAddress"].as_str().unwrap().to_string())
    };
    let before = address(&source);

    let moved = migrate(&source, &sshd, &dest, &[], "web");
    assert_eq!(moved.code, 0, "migrate failed: {}{}", moved.stderr, moved.stdout);
    let outcome: serde_json::Value = serde_json::from_str(&moved.stdout).unwrap();
    let at_move = last_count(&dest.logs("web"));
    assert_eq!(outcome["transport"], "ssh");
    assert_eq!(outcome["strategy"], "stop-and-copy");
    assert_eq!(outcome["source"], "removed");
    assert!(outcome["bytes-sent"].as_u64().unwrap() > 0, "{outcome}");
    assert!(outcome["downtime-ms"].as_u64().unwrap() > 0, "{outcome}");
    assert!(source.container_ids().is_empty(), "the source is removed once the destination runs it");
    assert_eq!(dest.inspect("web")["Id"], id, "the container keeps its ID");
    assert_eq!(address(&dest), before, "and its address and MAC on the default network");
    assert!(at_move >= 5, "the destination's log carries the count from before");
    assert!(eventually(Duration::from_secs(5), || last_count(&dest.logs("web")) > at_move + 3), "no carrying on");
    assert_eq!(dest.exec("web", "cat /data/note").trim(), "kept", "the named volume came along");
    let audit = source.ok(&["audit", "ls"]);
    assert!(audit.contains("\"migrate\"") && audit.contains("checkpoint"), "{audit}");

    // Back again, keeping the source: it waits there, checkpointed, and runs here.
    let back = migrate(&dest, &sshd, &source, &["--keep-source"], "web");
    assert_eq!(back.code, 0, "migrate back failed: {}{}", back.stderr, back.stdout);
    assert_eq!(source.status("web"), "running");
    assert_eq!(dest.status("web"), "exited");
    assert_eq!(dest.inspect("web")["State"]["Checkpointed"], true);
    let here = last_count(&source.logs("web"));
    assert!(eventually(Duration::from_secs(5), || last_count(&source.logs("web")) > here + 3));
    // The destination's name is taken now: refused before anything changes.
    let refused = migrate(&source, &sshd, &dest, &[], "web");
    assert_eq!(refused.code, 125);
    assert!(refused.stderr.contains("already has a container named \"web\""), "{}", refused.stderr);
    assert_eq!(source.status("web"), "running");
    source.ok(&["rm", "-f", "web"]);
    dest.ok(&["rm", "-f", "web"]);
}

#[test]
fn an_established_tcp_connection_survives_migration() {
    let Some(source) = Ckpt::available() else { return };
    let Some(dest) = Ckpt::available() else { return };
    let sshd = Sshd::start(&source);
    let script = "nc -l -p 9000 -e cat & sleep 0.5; (while :; do echo ping; sleep 0.2; done) | nc 127.0.0.1 9000";
    source.ok(&["run", "-d", "--name", "tcp", "busybox", "sh", "-c", script]);
    assert!(eventually(Duration::from_secs(5), || source.logs("tcp").contains("ping")));
    let moved = migrate(&source, &sshd, &dest, &["--tcp-established"], "tcp");
    assert_eq!(moved.code, 0, "migrate failed: {}{}", moved.stderr, moved.stdout);
    let before = dest.logs("tcp").matches("ping").count();
    let echoing = eventually(Duration::from_secs(5), || dest.logs("tcp").matches("ping").count() > before + 3);
    assert!(echoing, "the connection did not carry on at the destination");
    dest.ok(&["rm", "-f", "tcp"]);
}

#[test]
fn a_failure_leaves_the_container_running_on_exactly_one_side() {
    let Some(source) = Ckpt::available() else { return };
    let Some(dest) = Ckpt::available() else { return };
    let sshd = Sshd::start(&source);
    source.counter("web", &[]);
    assert!(eventually(Duration::from_secs(5), || last_count(&source.logs("web")) >= 3));

    // Nobody listens: refused before the freeze.
    let nobody = format!("ssh://root@127.0.0.1:1{}", dest.root.display());
    let unreachable = migrate_with(&source, sshd.flags(&dest), &[], "web", &nobody);
    assert_eq!(unreachable.code, 125, "{}", unreachable.stderr);
    assert!(unreachable.stderr.contains("nothing was changed"), "{}", unreachable.stderr);
    assert!(source.fails(&["migrate", "web", "box"]).contains("ssh://[USER@]HOST[:PORT][/ROOT]"));
    assert_eq!(source.status("web"), "running");

    // The destination refuses the checkpoint after the freeze: the container comes back here.
    let failing = format!(
        "sh -c 'case \" $* \" in *\" restore \"*) echo \"disk full at the destination\" >&2; exit 3;; esac; exec \"$0\" \"$@\"' {}",
        sshd.flags(&dest).last().unwrap()
    );
    let mut flags = sshd.flags(&dest);
    *flags.last_mut().unwrap() = failing;
    let before = last_count(&source.logs("web"));
    let failed = migrate_with(&source, flags, &[], "web", &sshd.url(&dest));
    assert_eq!(failed.code, 125, "{}{}", failed.stderr, failed.stdout);
    assert!(failed.stderr.contains("disk full at the destination"), "{}", failed.stderr);
    assert!(failed.stderr.contains("restored and keeps running"), "{}", failed.stderr);
    assert_eq!(source.status("web"), "running");
    assert!(eventually(Duration::from_secs(5), || last_count(&source.logs("web")) > before + 3));
    assert!(dest.container_ids().is_empty(), "nothing is left at the destination");
    source.ok(&["rm", "-f", "web"]);

    // The handoff is done, but the source cannot be removed (a mount inside its volume): the
    // error says where the container runs, so that nobody restores it here too.
    source.counter("web", &["-v", "webdata:/data"]);
    assert!(eventually(Duration::from_secs(5), || last_count(&source.logs("web")) >= 3));
    let volumes: serde_json::Value = serde_json::from_str(&source.ok(&["volume", "inspect", "webdata"])).unwrap();
    let busy = std::path::Path::new(volumes[0]["Mountpoint"].as_str().unwrap()).join("busy");
    std::fs::create_dir(&busy).unwrap();
    let mounted = std::process::Command::new("mount").args(["-t", "tmpfs", "tmpfs"]).arg(&busy).status().unwrap();
    assert!(mounted.success());
    let half = migrate(&source, &sshd, &dest, &[], "web");
    let unmounted = std::process::Command::new("umount").arg(&busy).status().unwrap();
    assert_eq!(half.code, 125, "{}{}", half.stderr, half.stdout);
    assert!(half.stderr.contains(&format!("runs at {} now", sshd.url(&dest))), "{}", half.stderr);
    assert!(half.stderr.contains("do not restore it here"), "{}", half.stderr);
    assert!(unmounted.success());
    assert_eq!(dest.status("web"), "running");
    dest.ok(&["rm", "-f", "web"]);
}

#[test]
fn a_migration_can_go_through_a_registry() {
    let Some(Sides { source, dest, sshd, registry }) = Sides::new() else { return };
    source.counter("web", &[]);
    assert!(eventually(Duration::from_secs(5), || last_count(&source.logs("web")) >= 3));
    let reference = format!("{}/ckpt/web:moving", registry.host);
    let moved = migrate(&source, &sshd, &dest, &["--via", &reference], "web");
    assert_eq!(moved.code, 0, "migrate failed: {}{}", moved.stderr, moved.stdout);
    let outcome: serde_json::Value = serde_json::from_str(&moved.stdout).unwrap();
    assert_eq!(outcome["transport"], "registry");
    let at_move = last_count(&dest.logs("web"));
    assert!(eventually(Duration::from_secs(5), || last_count(&dest.logs("web")) > at_move + 3));
    assert!(source.container_ids().is_empty());

    // Back over ssh, and through the same reference again later: the destination still holds the
    // first trip's image of that name, and must restore the one just sent (by digest), not go
    // back in time to it.
    let back = migrate(&dest, &sshd, &source, &[], "web");
    assert_eq!(back.code, 0, "migrate back failed: {}{}", back.stderr, back.stdout);
    let returned = last_count(&source.logs("web"));
    assert!(eventually(Duration::from_secs(8), || last_count(&source.logs("web")) > returned + 5));
    let counted = last_count(&source.logs("web"));
    let again = migrate(&source, &sshd, &dest, &["--via", &reference], "web");
    assert_eq!(again.code, 0, "migrate again failed: {}{}", again.stderr, again.stdout);
    assert!(
        eventually(Duration::from_secs(5), || last_count(&dest.logs("web")) > counted),
        "the destination restored a stale image: it counts from {} after the source reached {counted}",
        last_count(&dest.logs("web"))
    );
    dest.ok(&["rm", "-f", "web"]);
}

#[test]
fn a_migration_that_would_move_less_than_the_whole_container_keeps_the_source() {
    let Some(Sides { source, dest, sshd, registry }) = Sides::new() else { return };
    source.counter("web", &["--label", "checkpoint.skip=yes", "-v", "precious:/data"]);
    source.exec("web", "echo kept > /data/note; echo mine > /notes");
    assert!(eventually(Duration::from_secs(5), || last_count(&source.logs("web")) >= 3));
    let kept = |what: &str| {
        assert_eq!(source.status("web"), "running", "{what}: the source must keep running");
        assert_eq!(source.exec("web", "cat /data/note /notes"), "kept\nmine\n", "{what}");
        assert!(dest.container_ids().is_empty(), "{what}: nothing may run at the destination");
        let before = last_count(&source.logs("web"));
        assert!(eventually(Duration::from_secs(5), || last_count(&source.logs("web")) > before), "{what}");
    };

    // A planner that skips: nothing is sent, so nothing is removed.
    let skipper = crate::support::policy("skipper");
    let skipped =
        migrate(&source, &sshd, &dest, &["--policy", &skipper, "--policy-config", r#"{"any-trigger": true}"#], "web");
    assert_eq!(skipped.code, 125, "{}{}", skipped.stderr, skipped.stdout);
    assert!(skipped.stderr.contains("skipped the migration"), "{}", skipped.stderr);
    kept("a skip");

    // A gate that narrows the image the destination restores from: refused, brought back here.
    let reference = format!("{}/ckpt/web:moving", registry.host);
    let compliance = crate::support::policy("compliance");
    let narrowing = r#"{"classes": {"pii": {"targets": ["registry:"], "rootfs": false}}, "unlabelled": "pii"}"#;
    let narrowed = migrate(
        &source,
        &sshd,
        &dest,
        &["--via", &reference, "--gate", &compliance, "--gate-config", narrowing],
        "web",
    );
    assert_eq!(narrowed.code, 125, "{}{}", narrowed.stderr, narrowed.stdout);
    assert!(narrowed.stderr.contains("moves the whole container or nothing"), "{}", narrowed.stderr);
    kept("a narrowing gate");
    let audit = source.ok(&["audit", "ls"]);
    assert!(!audit.contains(r#""event":"migrate""#), "no migration is recorded as done: {audit}");
    assert_eq!(audit.matches(r#""event":"denial""#).count(), 2, "both refusals are recorded: {audit}");
    source.ok(&["rm", "-f", "web"]);
}

#[test]
fn the_planner_chooses_the_strategy_within_what_the_host_can_do() {
    let Some(source) = Ckpt::available() else { return };
    let Some(dest) = Ckpt::available() else { return };
    let sshd = Sshd::start(&source);
    source.counter("web", &[]);
    assert!(eventually(Duration::from_secs(5), || last_count(&source.logs("web")) >= 3));

    // What this host cannot do, or its admin has turned off, is refused before the freeze,
    // saying why.
    let config = std::fs::read_to_string(source.path("ckpt.toml")).unwrap();
    std::fs::write(source.path("ckpt.toml"), format!("{config}[migration]\npost-copy = false\n")).unwrap();
    let pre = migrate(&source, &sshd, &dest, &["--strategy", "pre-copy"], "web");
    assert_eq!(pre.code, 125, "{}", pre.stderr);
    assert!(pre.stderr.contains("mem_dirty_track"), "{}", pre.stderr);
    let post = migrate(&source, &sshd, &dest, &["--strategy", "post-copy"], "web");
    assert_eq!(post.code, 125, "{}", post.stderr);
    assert!(post.stderr.contains("[migration] post-copy = false"), "{}", post.stderr);
    let via = migrate(&source, &sshd, &dest, &["--strategy", "post-copy", "--via", "localhost:1/x:1"], "web");
    assert!(via.stderr.contains("not a registry"), "{}", via.stderr);
    assert_eq!(source.status("web"), "running");

    // The migration example chooses, and the decision is recorded with its reason.
    let settings = format!(r#"{{"target": "{}"}}"#, source.path("web-{name}.tar.zst").display());
    let migration = crate::support::policy("migration");
    let asked = ["--log-level", "info", "--policy", &migration, "--policy-config", &settings];
    let moved = migrate(&source, &sshd, &dest, &asked, "web");
    assert_eq!(moved.code, 0, "{}{}", moved.stderr, moved.stdout);
    // The link was measured through the channel before the freeze, for the planner's facts.
    assert!(moved.stderr.contains("bytes/s") && !moved.stderr.contains("not measured"), "{}", moved.stderr);
    let outcome: serde_json::Value = serde_json::from_str(&moved.stdout).unwrap();
    assert_eq!(outcome["strategy"], "stop-and-copy");
    assert!(outcome["strategy-reason"].as_str().unwrap().contains("neither post-copy nor pre-copy"), "{outcome}");
    assert!(source.path("web-web.tar.zst").is_file(), "the plan's own export was written too");
    let log = std::fs::read_to_string(source.root.join("decisions.jsonl")).unwrap();
    let strategy = log.lines().find(|l| l.contains(r#""kind":"strategy""#)).expect("the strategy decision is recorded");
    assert!(strategy.contains("stop-and-copy") && strategy.contains("neither post-copy"), "{strategy}");
    dest.ok(&["rm", "-f", "web"]);
}

/// Every TCP listener on this machine that CRIU, or a session of `sshd`, holds: `ss` lines.
fn page_listeners(sshd_pid: u32) -> Vec<String> {
    let out = std::process::Command::new("ss").args(["-Hltnp"]).output().expect("iproute2 has ss");
    let session_of_sshd = |pid: &str| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|stat| stat.rsplit(')').next()?.split_whitespace().nth(1).map(str::to_string))
            .is_some_and(|parent| parent == sshd_pid.to_string())
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|line| {
            line.contains("((\"criu\"")
                || line.split("pid=").skip(1).any(|rest| session_of_sshd(rest.split(',').next().unwrap_or_default()))
        })
        .map(str::to_string)
        .collect()
}

#[test]
fn a_post_copy_migration_fetches_memory_through_ssh_without_a_listening_port() {
    let Some(source) = Ckpt::available() else { return };
    let Some(dest) = Ckpt::available() else { return };
    // No [migration] post-copy in either host config: "auto" offers it here, where userfaultfd
    // works and CRIU is the one scripts/setup builds.
    let sshd = Sshd::start(&source);
    // About 47 MB, each page different, that the destination fetches page by page while the
    // container runs there; every 20th round the shell checks it against its first digest.
    let script = "m=$(seq 1 6000000); s=$(echo \"$m\" | md5sum); \
                  i=0; while true; do echo count $i; i=$((i+1)); sleep 0.1; \
                  [ $((i % 20)) = 0 ] && if [ \"$(echo \"$m\" | md5sum)\" = \"$s\" ]; then echo whole $i; else echo lost; fi; \
                  done";
    source.ok(&["run", "-d", "--name", "web", "busybox", "sh", "-c", script]);
    assert!(eventually(Duration::from_secs(20), || last_count(&source.logs("web")) >= 3));

    // Whoever else is on either host could connect to a port that CRIU's page server or an
    // ssh forward listened on, and read the container's memory: none may appear.
    let migrating = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let watcher = {
        let (migrating, sshd_pid) = (migrating.clone(), sshd.pid());
        std::thread::spawn(move || {
            let mut seen = std::collections::BTreeSet::new();
            while migrating.load(std::sync::atomic::Ordering::Relaxed) {
                seen.extend(page_listeners(sshd_pid));
            }
            seen
        })
    };
    let moved = migrate(&source, &sshd, &dest, &["--strategy", "post-copy"], "web");
    migrating.store(false, std::sync::atomic::Ordering::Relaxed);
    let listeners = watcher.join().unwrap();
    assert_eq!(moved.code, 0, "{}{}", moved.stderr, moved.stdout);
    let outcome: serde_json::Value = serde_json::from_str(&moved.stdout).unwrap();
    assert_eq!(outcome["strategy"], "post-copy", "{outcome}");
    assert_eq!(outcome["source"], "removed", "{outcome}");
    assert!(listeners.is_empty(), "the pages went through a listening port: {listeners:?}");
    let at_move = last_count(&dest.logs("web"));
    assert!(eventually(Duration::from_secs(10), || last_count(&dest.logs("web")) > at_move + 3), "no carrying on");
    // A digest taken after the move reads every page, fetched from the source or not.
    let checked_after_move = || {
        dest.logs("web").lines().filter_map(|l| l.strip_prefix("whole ")).any(|n| n.parse::<u64>().unwrap() > at_move)
    };
    assert!(eventually(Duration::from_secs(20), checked_after_move), "{}", dest.logs("web"));
    assert!(!dest.logs("web").contains("lost"), "the memory came whole");
    assert!(source.container_ids().is_empty());
    dest.ok(&["rm", "-f", "web"]);
}

#[test]
fn a_killed_migration_leaves_no_connection_and_a_restorable_checkpoint() {
    let Some(mut source) = Ckpt::available() else { return };
    let Some(dest) = Ckpt::available() else { return };
    // Longer than a socket path may be: the shared connection's socket goes elsewhere.
    source.runroot = source.path(&format!("run-{}", "long".repeat(24)));
    let sshd = Sshd::start(&source);
    source.counter("web", &[]);
    assert!(eventually(Duration::from_secs(5), || last_count(&source.logs("web")) >= 3));

    // The destination takes its time with the stream, and ckpt is killed while it sends.
    let receiving = source.path("receiving");
    let slow = format!(
        "sh -c 'case \" $* \" in *\" restore \"*) touch {}; sleep 20; exit 1;; esac; exec \"$0\" \"$@\"' {}",
        receiving.display(),
        sshd.flags(&dest).last().unwrap()
    );
    let mut args: Vec<String> = vec!["migrate".into()];
    args.extend(sshd.flags(&dest));
    *args.last_mut().unwrap() = slow;
    args.extend(["web".to_string(), sshd.url(&dest)]);
    let mut migrating = source.command().args(&args).stderr(std::process::Stdio::null()).spawn().unwrap();
    let pid = migrating.id();
    assert!(eventually(Duration::from_secs(20), || receiving.exists()), "the stream never started");
    migrating.kill().unwrap();
    migrating.wait().unwrap();

    let socket = format!("ssh-{pid}.sock");
    let lingering = || {
        std::fs::read_dir("/proc").unwrap().flatten().any(|p| {
            std::fs::read(p.path().join("cmdline")).is_ok_and(|c| String::from_utf8_lossy(&c).contains(&socket))
        })
    };
    assert!(eventually(Duration::from_secs(5), || !lingering()), "an ssh process outlived the killed migration");
    // The supervisor records the exit under the container's lock, and `system check` passes over
    // a locked container.
    let found = || {
        let check = source.run(&["system", "check"]);
        check.stdout.contains("interrupted-checkpoint") && check.stdout.contains("ckpt restore")
    };
    assert!(eventually(Duration::from_secs(10), found), "{}", source.run(&["system", "check"]).stdout);
    source.ok(&["system", "check", "--repair"]);
    assert_eq!(source.inspect("web")["State"]["Checkpointed"], true);
    let before = last_count(&source.logs("web"));
    source.ok(&["restore", "web"]);
    assert!(eventually(Duration::from_secs(5), || last_count(&source.logs("web")) > before + 3), "no carrying on");
    assert!(dest.container_ids().is_empty(), "nothing arrived at the destination");
    source.ok(&["rm", "-f", "web"]);
}
