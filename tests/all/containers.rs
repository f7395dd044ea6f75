//! Containers that ckpt runs itself: run, logs, exec, diff, stop, start, rm, volumes, images and
//! the error cases, against real runc.

use std::time::Duration;

use crate::support::{Ckpt, eventually, files_below};

#[test]
fn run_logs_exec_diff_stop_start_rm() {
    let Some(ckpt) = Ckpt::available() else { return };
    let id = ckpt.ok(&[
        "run",
        "-d",
        "--name",
        "web",
        "-e",
        "GREETING=hello",
        "--label",
        "tier=web",
        "busybox",
        "sh",
        "-c",
        "echo $GREETING; echo oops >&2; exec sleep 1000",
    ]);
    let id = id.trim();
    assert_eq!(id.len(), 64, "run -d prints the full ID: {id:?}");
    // stdout and stderr reach the log through pipes of their own, in either order.
    let both_logged = || {
        let logs = ckpt.run(&["logs", "web"]);
        logs.stdout.contains("hello") && logs.stderr.contains("oops")
    };
    assert!(eventually(Duration::from_secs(5), both_logged));
    let logs = ckpt.run(&["logs", "web"]);
    assert_eq!(logs.stdout, "hello\n");
    assert_eq!(logs.stderr, "oops\n");

    let info = ckpt.inspect("web");
    assert_eq!(info["Id"], id);
    assert_eq!(info["Name"], "web");
    assert_eq!(info["Config"]["Labels"]["tier"], "web");
    assert_eq!(info["State"]["Status"], "running");
    assert_eq!(info["State"]["Running"], true);
    assert!(info["State"]["Pid"].as_i64().unwrap() > 0);
    assert_eq!(info["State"]["Checkpointed"], false);

    assert_eq!(ckpt.exec("web", "echo $GREETING from exec"), "hello from exec\n");
    let failed = ckpt.run(&["exec", "web", "sh", "-c", "exit 3"]);
    assert_eq!(failed.code, 3, "exec passes the command's exit code through");
    ckpt.exec("web", "echo new > /added; echo changed >> /etc/passwd; rm /etc/motd; mkdir -p /srv/a; touch /srv/a/b");
    let diff = ckpt.ok(&["diff", "web"]);
    for line in ["A /added", "C /etc", "C /etc/passwd", "D /etc/motd", "A /srv", "A /srv/a", "A /srv/a/b"] {
        assert!(diff.lines().any(|l| l == line), "diff lacks {line:?}:\n{diff}");
    }
    assert!(!diff.contains("/etc/hosts"), "runtime-managed files are not listed:\n{diff}");

    ckpt.ok(&["stop", "-t", "1", "web"]);
    assert_eq!(ckpt.status("web"), "exited");
    assert!(ckpt.ok(&["ps"]).lines().count() == 1, "ps without -a shows only running containers");
    assert!(ckpt.ok(&["ps", "-a"]).contains("web"));

    ckpt.ok(&["start", "web"]);
    assert_eq!(ckpt.status("web"), "running");
    assert!(ckpt.ok(&["diff", "web"]).contains("A /added"), "the upper layer survives a restart");
    assert!(eventually(Duration::from_secs(5), || ckpt.logs("web").matches("hello").count() == 2));

    let refused = ckpt.fails(&["rm", "web"]);
    assert!(refused.contains("container \"web\" is running"), "{refused}");
    assert_eq!(ckpt.status("web"), "running");
    ckpt.ok(&["rm", "-f", "web"]);
    assert!(ckpt.container_ids().is_empty());
    assert!(files_below(&ckpt.root.join("containers")).is_empty(), "rm leaves nothing behind");
}

#[test]
fn foreground_run_prints_output_and_returns_the_exit_code() {
    let Some(ckpt) = Ckpt::available() else { return };
    let r = ckpt.run(&["run", "--name", "once", "busybox", "sh", "-c", "echo out; echo err >&2; exit 7"]);
    assert_eq!(r.code, 7);
    assert_eq!(r.stdout, "out\n");
    assert_eq!(r.stderr, "err\n");
    assert_eq!(ckpt.status("once"), "exited");
    assert_eq!(ckpt.inspect("once")["State"]["ExitCode"], 7);
}

#[test]
fn auto_remove_deletes_the_container_when_it_exits() {
    let Some(ckpt) = Ckpt::available() else { return };
    let r = ckpt.run(&["run", "--rm", "--name", "gone", "busybox", "echo", "bye"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout, "bye\n");
    assert!(eventually(Duration::from_secs(5), || ckpt.container_ids().is_empty()));
    ckpt.ok(&["run", "-d", "--rm", "--name", "gone2", "busybox", "sleep", "0.2"]);
    assert!(eventually(Duration::from_secs(10), || ckpt.container_ids().is_empty()));
    // The record goes first, then the directories: give the supervisor the moment it needs.
    assert!(eventually(Duration::from_secs(5), || files_below(&ckpt.root.join("containers")).is_empty()));
}

#[test]
fn volumes_keep_their_content_across_containers() {
    let Some(ckpt) = Ckpt::available() else { return };
    ckpt.ok(&["volume", "create", "--label", "kind=test", "shared"]);
    let host_dir = ckpt.path("host-dir");
    std::fs::create_dir_all(&host_dir).unwrap();
    std::fs::write(host_dir.join("from-host"), "host\n").unwrap();
    let bind = format!("{}:/host:ro", host_dir.display());
    let r = ckpt.run(&[
        "run",
        "--name",
        "writer",
        "-v",
        "shared:/data",
        "-v",
        &bind,
        "busybox",
        "sh",
        "-c",
        "echo kept > /data/file; cat /host/from-host; touch /host/x 2>/dev/null || echo read-only",
    ]);
    assert_eq!(r.stdout, "host\nread-only\n", "{}", r.stderr);
    let r = ckpt.run(&["run", "--name", "reader", "-v", "shared:/mnt", "busybox", "cat", "/mnt/file"]);
    assert_eq!(r.stdout, "kept\n");
    // A volume named by a container that does not exist yet is created on the fly, as podman does.
    ckpt.ok(&["run", "--name", "auto", "-v", "fresh:/f", "busybox", "true"]);
    let list = ckpt.ok(&["volume", "ls", "-q"]);
    assert_eq!(list.lines().collect::<Vec<_>>(), vec!["fresh", "shared"]);
    let inspect: serde_json::Value = serde_json::from_str(&ckpt.ok(&["volume", "inspect", "shared"])).unwrap();
    assert_eq!(inspect[0]["Labels"]["kind"], "test");
    let mounts = &ckpt.inspect("reader")["Mounts"];
    assert_eq!(mounts[0]["Type"], "volume");
    assert_eq!(mounts[0]["Name"], "shared");
    assert_eq!(mounts[0]["Destination"], "/mnt");

    let in_use = ckpt.fails(&["volume", "rm", "shared"]);
    assert!(in_use.contains("volume \"shared\" is in use"), "{in_use}");
    ckpt.ok(&["volume", "rm", "-f", "shared"]);
    assert!(!ckpt.ok(&["volume", "ls", "-q"]).contains("shared"));
    assert!(ckpt.run(&["inspect", "writer"]).code == 125, "volume rm -f removes its users");
}

#[test]
fn two_containers_run_at_once_with_their_own_network() {
    let Some(ckpt) = Ckpt::available() else { return };
    for name in ["one", "two"] {
        ckpt.ok(&[
            "run",
            "-d",
            "--name",
            name,
            "busybox",
            "sh",
            "-c",
            "nc -l -p 8080 -e echo $HOSTNAME & exec sleep 1000",
        ]);
    }
    let mut addresses = Vec::new();
    for name in ["one", "two"] {
        let lo = ckpt.exec(name, "ip -o addr show lo");
        assert!(lo.contains("127.0.0.1"), "loopback is up: {lo}");
        let links = ckpt.exec(name, "ip -o link | wc -l");
        assert_eq!(links.trim(), "2", "loopback and eth0 on the default network, in its own namespace");
        addresses.push(ckpt.inspect(name)["NetworkSettings"]["IPAddress"].as_str().unwrap().to_string());
    }
    assert_ne!(addresses[0], addresses[1]);
    // One reaches the other across the default network's bridge.
    let hostname_one = ckpt.inspect("one")["Config"]["Hostname"].as_str().unwrap().to_string();
    let across = format!("nc -w 3 {} 8080 </dev/null", addresses[0]);
    assert!(eventually(Duration::from_secs(5), || ckpt
        .run(&["exec", "two", "sh", "-c", &across])
        .stdout
        .contains(&hostname_one)));
    // The same port is free in each namespace.
    let hostname = ckpt.inspect("two")["Config"]["Hostname"].as_str().unwrap().to_string();
    assert!(eventually(Duration::from_secs(5), || ckpt
        .run(&["exec", "two", "sh", "-c", "nc 127.0.0.1 8080 </dev/null"])
        .stdout
        .contains(&hostname)));
    let ps = ckpt.ok(&["ps", "--format", "json"]);
    let list: Vec<serde_json::Value> = serde_json::from_str(&ps).unwrap();
    assert_eq!(list.len(), 2);
    assert!(list.iter().all(|c| c["State"] == "running"));
}

#[test]
fn errors_name_the_object_exit_125_and_change_nothing() {
    let Some(ckpt) = Ckpt::available() else { return };
    assert!(ckpt.fails(&["inspect", "nope"]).contains("no such container \"nope\""));
    assert!(ckpt.fails(&["logs", "nope"]).contains("no such container \"nope\""));
    assert!(ckpt.fails(&["stop", "nope"]).contains("no such container \"nope\""));
    assert!(ckpt.fails(&["rm", "nope"]).contains("no such container \"nope\""));
    assert!(ckpt.fails(&["run", "no-such-image", "true"]).contains("no such image \"no-such-image\""));
    assert!(ckpt.fails(&["volume", "rm", "nope"]).contains("no such volume \"nope\""));
    assert!(ckpt.fails(&["volume", "inspect", "nope"]).contains("no such volume \"nope\""));
    assert!(ckpt.fails(&["image", "rm", "nope"]).contains("no such image \"nope\""));

    ckpt.ok(&["run", "-d", "--name", "taken", "busybox", "sleep", "1000"]);
    assert!(
        ckpt.fails(&["run", "-d", "--name", "taken", "busybox", "true"]).contains("name \"taken\" is already in use")
    );
    ckpt.ok(&["volume", "create", "v1"]);
    assert!(ckpt.fails(&["volume", "create", "v1"]).contains("volume \"v1\" already exists"));

    // Bad flags are refused before anything is created.
    let before = files_below(&ckpt.root);
    for bad in [
        vec!["run", "-d", "--name", "x", "-v", "nocolon", "busybox", "true"],
        vec!["run", "-d", "--name", "x", "-v", "/does/not/exist:/d", "busybox", "true"],
        vec!["run", "-d", "--name", "x", "-v", "vol:relative", "busybox", "true"],
        vec!["run", "-d", "--name", "x", "-v", "vol:/d:bogus", "busybox", "true"],
        vec!["run", "-d", "--name", "x", "-e", "=novalue", "busybox", "true"],
        vec!["run", "-d", "--name", "x", "--label", "nokey", "busybox", "true"],
        vec!["run", "-d", "--name", "bad/name", "busybox", "true"],
        vec!["run", "-d", "--bogus-flag", "busybox", "true"],
        vec!["ps", "--format", "{{.Names"],
        vec!["ps", "--format", "{{.NoSuchField}}", "-a"],
        vec!["stop"],
    ] {
        let r = ckpt.run(&bad);
        assert_eq!(r.code, 125, "{bad:?} should be refused: {}", r.stderr);
    }
    assert_eq!(files_below(&ckpt.root), before, "refused commands leave no files behind");
    assert_eq!(ckpt.container_ids().len(), 1);
    assert!(ckpt.ok(&["volume", "ls", "-q"]).trim() == "v1");
}

#[test]
fn images_import_load_save_list_and_remove() {
    let Some(ckpt) = Ckpt::available() else { return };
    // A rootfs tarball made by the host's tar, imported as an image.
    let rootfs = ckpt.path("rootfs");
    std::fs::create_dir_all(rootfs.join("bin")).unwrap();
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
    std::os::unix::fs::symlink("busybox", rootfs.join("bin/sh")).unwrap();
    std::fs::write(rootfs.join("hello.txt"), "imported\n").unwrap();
    let tarball = ckpt.path("rootfs.tar.gz");
    let status =
        std::process::Command::new("tar").arg("-czf").arg(&tarball).arg("-C").arg(&rootfs).arg(".").status().unwrap();
    assert!(status.success());
    let id = ckpt.ok(&["image", "import", tarball.to_str().unwrap(), "mine"]);
    assert_eq!(id.trim().len(), 64);
    let r = ckpt.run(&["run", "--rm", "mine:latest", "/bin/sh", "-c", "cat /hello.txt"]);
    assert_eq!(r.stdout, "imported\n", "{}", r.stderr);

    // The store is an OCI layout that skopeo reads.
    let layout = ckpt.root.join("images/oci");
    let skopeo = std::process::Command::new("skopeo")
        .arg("inspect")
        .arg(format!("oci:{}:mine:latest", layout.display()))
        .output()
        .unwrap();
    assert!(skopeo.status.success(), "skopeo reads the store: {}", String::from_utf8_lossy(&skopeo.stderr));

    let archive = ckpt.path("mine.tar");
    ckpt.ok(&["image", "save", "-o", archive.to_str().unwrap(), "mine"]);
    ckpt.ok(&["image", "rm", "mine"]);
    assert!(ckpt.fails(&["run", "mine", "true"]).contains("no such image"));
    let loaded = ckpt.ok(&["image", "load", "-i", archive.to_str().unwrap()]);
    assert!(loaded.contains("mine:latest"), "{loaded}");
    let list: Vec<serde_json::Value> = serde_json::from_str(&ckpt.ok(&["image", "ls", "--format", "json"])).unwrap();
    assert!(list.iter().any(|i| i["Names"][0] == "mine:latest" && i["Id"] == id.trim()));

    // skopeo's own OCI archive loads too.
    let copied = ckpt.path("copied.tar");
    let out = std::process::Command::new("skopeo")
        .arg("copy")
        .arg(format!("oci:{}:mine:latest", layout.display()))
        .arg(format!("oci-archive:{}:other:v1", copied.display()))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(ckpt.ok(&["image", "load", copied.to_str().unwrap()]).contains("other:v1"));

    ckpt.ok(&["run", "-d", "--name", "user", "mine", "/bin/sh", "-c", "sleep 1000"]);
    assert!(ckpt.fails(&["image", "rm", "mine"]).contains("in use by container \"user\""));
    assert!(ckpt.fails(&["image", "load", "-i", tarball.to_str().unwrap()]).contains("neither an OCI image layout"));
}

#[test]
fn go_templates_on_inspect_ps_images_volumes_and_checkpoints() {
    let Some(ckpt) = Ckpt::available() else { return };
    ckpt.ok(&["run", "-d", "--name", "tpl", "--label", "app=web", "busybox", "sleep", "1000"]);
    ckpt.ok(&["run", "--name", "done", "busybox", "true"]);
    let state = "{{.State.Status}}:{{.State.Running}}:{{.State.Paused}}:{{.State.Checkpointed}}";
    assert_eq!(
        ckpt.ok(&["inspect", "--format", state, "tpl", "done"]),
        "running:true:false:false\nexited:false:false:false\n"
    );
    assert_eq!(
        ckpt.ok(&["inspect", "-f", r#"{{index .Config.Labels "app"}} {{json .Config.Cmd}}"#, "tpl"]),
        "web [\"sleep\",\"1000\"]\n"
    );

    let table = ckpt.ok(&["ps", "-a", "--format", r"table {{.ID}}\t{{.Names}}\t{{.State}}"]);
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("CONTAINER ID  NAMES"), "{table}");
    assert!(lines.iter().any(|l| l.contains("  tpl  ") && l.ends_with("running")), "{table}");
    assert_eq!(ckpt.ok(&["ps", "--filter", "status=exited", "--format", "{{.Names}}"]), "done\n");
    assert_eq!(
        ckpt.ok(&["ps", "-a", "--filter", "label=app=web", "--format", "{{.Names}} {{.Labels}}"]),
        "tpl map[app:web]\n"
    );
    assert_eq!(ckpt.ok(&["image", "ls", "--format", "{{.Repository}}:{{.Tag}}"]), "busybox:latest\n");
    ckpt.ok(&["volume", "create", "tv"]);
    assert_eq!(ckpt.ok(&["volume", "ls", "--format", "{{.Name}} {{.Driver}}"]), "tv local\n");

    let archive = ckpt.path("tpl.tar");
    ckpt.ok(&["checkpoint", "-R", "-e", archive.to_str().unwrap(), "tpl"]);
    let shown = ckpt.ok(&["inspect-checkpoint", "--format", "{{.container}} {{.runtime}}", archive.to_str().unwrap()]);
    assert_eq!(shown, "tpl runc\n");

    // A bad field is named, the exit code is podman's 125, and nothing is printed to stdout.
    let bad = ckpt.run(&["inspect", "--format", "{{.State.Bogus}}", "tpl"]);
    assert_eq!(bad.code, 125);
    assert!(bad.stderr.contains(r#"no field "Bogus" in .State"#), "{}", bad.stderr);
    assert!(bad.stdout.is_empty());
    let unclosed = ckpt.run(&["ps", "--format", "{{.Names"]);
    assert_eq!(unclosed.code, 125);
    assert!(unclosed.stderr.contains("no closing }}"), "{}", unclosed.stderr);
    let filter = ckpt.fails(&["ps", "--filter", "colour=red"]);
    assert!(filter.contains("colour=red") && filter.contains("ancestor"), "{filter}");
}

#[test]
fn a_reader_that_closes_stdout_early_ends_ckpt_quietly() {
    let Some(ckpt) = Ckpt::available() else { return };
    for _ in 0..3 {
        let mut child = ckpt
            .command()
            .args(["info"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}
