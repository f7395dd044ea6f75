//! Checkpoint and restore with real runc and CRIU: every option, the rejected combinations,
//! the failure paths (the container keeps running, nothing is published) and hostile archives.

use std::time::Duration;

use crate::support::{Ckpt, SmallFs, eventually, last_count};

#[test]
fn checkpoint_then_restore_carries_memory_state_on() {
    let Some(ckpt) = Ckpt::available() else { return };
    ckpt.counter("web", &[]);
    assert!(eventually(Duration::from_secs(5), || last_count(&ckpt.logs("web")) >= 3));
    assert_eq!(ckpt.ok(&["checkpoint", "web"]), "web\n");
    let info = ckpt.inspect("web");
    assert_eq!(info["State"]["Status"], "exited");
    assert_eq!(info["State"]["Checkpointed"], true);
    let at_checkpoint = last_count(&ckpt.logs("web"));
    let images = ckpt.root.join("containers").join(info["Id"].as_str().unwrap()).join("userdata/checkpoint");
    assert!(images.join("inventory.img").exists());
    assert_eq!(ckpt.ok(&["restore", "web"]), "web\n");
    assert!(!images.exists(), "the images are out of the bundle when restore returns");
    ckpt.wait_for_discards();
    let info = ckpt.inspect("web");
    assert_eq!(info["State"]["Status"], "running");
    assert_eq!(info["State"]["Restored"], true);
    assert_eq!(info["State"]["Checkpointed"], false);
    assert!(eventually(Duration::from_secs(5), || last_count(&ckpt.logs("web")) > at_checkpoint + 2));
    let logs = ckpt.logs("web");
    let counts: Vec<u64> = logs.lines().filter_map(|l| l.strip_prefix("count ")?.parse().ok()).collect();
    assert!(counts.windows(2).all(|w| w[1] == w[0] + 1), "the counter went on from where it was: {counts:?}");
    let again = ckpt.fails(&["restore", "web"]);
    assert!(again.contains("is running"), "{again}");
}

#[test]
fn export_and_import_under_a_new_name_carry_rootfs_volumes_and_logs() {
    let Some(ckpt) = Ckpt::available() else { return };
    ckpt.counter("src", &["-v", "vol:/data"]);
    ckpt.exec("src", "echo added > /added; echo more >> /etc/passwd; rm /etc/motd; echo in-volume > /data/v");
    assert!(eventually(Duration::from_secs(5), || last_count(&ckpt.logs("src")) >= 2));
    let archive = ckpt.path("src.tar.zst");
    let archive_s = archive.to_str().unwrap();
    assert_eq!(ckpt.ok(&["checkpoint", "-e", archive_s, "src"]), "src\n");
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&archive).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "the archive is private");
    let head = std::fs::read(&archive).unwrap();
    assert_eq!(&head[..4], &[0x28, 0xb5, 0x2f, 0xfd], "zstd is the default");

    // The layout is podman's, plus ckpt's manifest.
    let listing = std::process::Command::new("tar").arg("-tf").arg(&archive).output().unwrap();
    let members = String::from_utf8_lossy(&listing.stdout).into_owned();
    for member in [
        "checkpoint/inventory.img",
        "checkpoint/descriptors.json",
        "config.dump",
        "spec.dump",
        "rootfs-diff.tar",
        "deleted.files",
        "volumes/vol.tar",
        "stats-dump",
        "ctr.log",
        "ckpt-manifest.json",
    ] {
        assert!(members.lines().any(|l| l == member), "archive lacks {member}:\n{members}");
    }
    let shown: serde_json::Value =
        serde_json::from_str(&ckpt.ok(&["inspect-checkpoint", "--format", "json", archive_s])).unwrap();
    assert_eq!(shown["container"], "src");
    assert_eq!(shown["image"], "busybox:latest");
    assert_eq!(shown["runtime"], "runc");
    assert_eq!(shown["compression"], "zstd");
    assert!(shown["checkpoint_size"].as_u64().unwrap() > 0);
    assert!(shown["rootfs_diff_size"].as_u64().unwrap() > 0);
    assert!(ckpt.ok(&["inspect-checkpoint", archive_s]).contains("Container          src"));

    // Importing while the volume still exists is refused, and leaves nothing behind.
    let refused = ckpt.fails(&["restore", "-i", archive_s, "-n", "copy"]);
    assert!(refused.contains("volume with name vol already exists"), "{refused}");
    assert!(ckpt.run(&["inspect", "copy"]).code == 125);
    ckpt.ok(&["rm", "src"]);
    ckpt.ok(&["volume", "rm", "vol"]);

    let at_checkpoint = 2;
    let id = ckpt.ok(&["restore", "-i", archive_s, "-n", "copy"]);
    assert_eq!(id.trim().len(), 64, "restore --import prints the new full ID");
    assert_eq!(ckpt.exec("copy", "cat /added /data/v"), "added\nin-volume\n");
    assert!(ckpt.exec("copy", "tail -n 1 /etc/passwd").contains("more"));
    assert!(ckpt.run(&["exec", "copy", "test", "-e", "/etc/motd"]).code == 1, "deleted files stay deleted");
    let diff = ckpt.ok(&["diff", "copy"]);
    for line in ["A /added", "C /etc", "C /etc/passwd", "D /etc/motd"] {
        assert!(diff.lines().any(|l| l == line), "diff after import lacks {line:?}:\n{diff}");
    }
    // Old logs come along, and the log keeps growing after the restore.
    assert!(eventually(Duration::from_secs(5), || last_count(&ckpt.logs("copy")) > at_checkpoint + 2));
    assert!(ckpt.logs("copy").starts_with("count 0\n"));

    // Again, as a second copy, without the rootfs changes and with the volume already there.
    let id2 = ckpt.ok(&["restore", "-i", archive_s, "-n", "bare", "--ignore-rootfs", "--ignore-volumes"]);
    assert_ne!(id2, id);
    assert!(ckpt.run(&["exec", "bare", "test", "-e", "/added"]).code == 1, "--ignore-rootfs leaves the changes out");
    assert_eq!(ckpt.exec("bare", "cat /etc/motd | head -c 7"), "Welcome");
}

#[test]
fn ignore_rootfs_and_ignore_volumes_leave_members_out_of_the_export() {
    let Some(ckpt) = Ckpt::available() else { return };
    ckpt.counter("c", &["-v", "v:/data"]);
    ckpt.exec("c", "echo x > /x; echo y > /data/y");
    let archive = ckpt.path("c.tar");
    ckpt.ok(&[
        "checkpoint",
        "-R",
        "-c",
        "none",
        "--ignore-rootfs",
        "--ignore-volumes",
        "-e",
        archive.to_str().unwrap(),
        "c",
    ]);
    let listing = std::process::Command::new("tar").arg("-tf").arg(&archive).output().unwrap();
    let members = String::from_utf8_lossy(&listing.stdout).into_owned();
    assert!(members.contains("checkpoint/inventory.img"));
    assert!(!members.contains("rootfs-diff.tar") && !members.contains("volumes/"), "{members}");
    assert_eq!(ckpt.status("c"), "running", "--leave-running");
    assert_eq!(ckpt.inspect("c")["State"]["Checkpointed"], false);

    let gz = ckpt.path("c.tar.gz");
    ckpt.ok(&["checkpoint", "-R", "--compress", "GZIP", "-e", gz.to_str().unwrap(), "c"]);
    assert_eq!(&std::fs::read(&gz).unwrap()[..2], &[0x1f, 0x8b]);
    assert_eq!(ckpt.status("c"), "running");
}

#[test]
fn rejected_combinations_change_nothing() {
    let Some(ckpt) = Ckpt::available() else { return };
    ckpt.counter("c", &[]);
    let e = ckpt.path("x.tar");
    let e = e.to_str().unwrap();
    for (args, message) in [
        (vec!["checkpoint", "--all", "--latest"], "--all and --latest cannot be used together"),
        (vec!["checkpoint", "--all", "c"], "no arguments are needed with --all"),
        (vec!["checkpoint", "--latest", "c"], "--latest and containers cannot be used together"),
        (vec!["checkpoint"], "you must provide at least one name or id"),
        (vec!["checkpoint", "--compress", "gzip", "c"], "--compress can only be used with --export"),
        (
            vec!["checkpoint", "--compress", "lz4", "-e", e, "c"],
            "selected compression algorithm (\"lz4\") not supported",
        ),
        (vec!["checkpoint", "--ignore-rootfs", "c"], "--ignore-rootfs can only be used with --export"),
        (vec!["checkpoint", "--ignore-volumes", "c"], "--ignore-volumes can only be used with --export"),
        (
            vec!["checkpoint", "--with-previous", "--pre-checkpoint", "c"],
            "--with-previous can not be used with --pre-checkpoint",
        ),
        (vec!["checkpoint", "nope"], "no such container \"nope\""),
        (vec!["restore", "--all", "--latest"], "--all and --latest cannot be used together"),
        (vec!["restore", "--name", "n", "c"], "--name can only be used with image or --import"),
        (vec!["restore", "--ignore-rootfs", "c"], "--ignore-rootfs can only be used with image or --import"),
        (vec!["restore", "--ignore-volumes", "c"], "--ignore-volumes can only be used with image or --import"),
        (vec!["restore", "--import-previous", e, "c"], "--import-previous can only be used with image or --import"),
        (vec!["restore", "-i", e, "-n", "n", "--tcp-established"], "--tcp-established cannot be used with --name"),
        (vec!["restore", "-i", e, "--all"], "cannot use --import with --all or --latest"),
        (vec!["restore", "-i", e, "c"], "cannot use --import with positional arguments"),
        (vec!["restore", "--all", "c"], "--all or --latest and containers cannot be used together"),
        (vec!["restore"], "you must provide at least one name or id"),
        (vec!["restore", "nope"], "no such container or image \"nope\""),
        (vec!["restore", "c"], "cannot restore"),
    ] {
        let stderr = ckpt.fails(&args);
        assert!(stderr.contains(message), "{args:?}: expected {message:?}, got {stderr}");
    }
    assert_eq!(ckpt.status("c"), "running");
    assert!(!std::path::Path::new(e).exists());
    let rm = ckpt.ok(&["run", "-d", "--rm", "--name", "autorm", "busybox", "sleep", "1000"]);
    assert!(!rm.is_empty());
    let refused = ckpt.fails(&["checkpoint", "autorm"]);
    assert!(refused.contains("--rm"), "{refused}");
    assert_eq!(ckpt.status("autorm"), "running");
}

#[test]
fn pre_checkpoint_needs_memory_tracking() {
    let Some(ckpt) = Ckpt::available() else { return };
    ckpt.counter("c", &[]);
    let tracking = std::process::Command::new("criu")
        .args(["check", "--feature", "mem_dirty_track"])
        .output()
        .unwrap()
        .status
        .success();
    let r = ckpt.run(&["checkpoint", "-P", "c"]);
    if tracking {
        assert_eq!(r.code, 0, "{}", r.stderr);
        ckpt.ok(&["checkpoint", "--with-previous", "c"]);
        ckpt.ok(&["restore", "c"]);
    } else {
        assert_eq!(r.code, 125);
        assert!(r.stderr.contains("does not support memory tracking"), "{}", r.stderr);
        assert!(ckpt.fails(&["checkpoint", "--with-previous", "c"]).contains("memory tracking"));
    }
    assert_eq!(ckpt.status("c"), "running");
}

#[test]
fn all_and_latest_select_containers_and_print_full_ids() {
    let Some(ckpt) = Ckpt::available() else { return };
    let a = ckpt.counter("a", &[]);
    let b = ckpt.counter("b", &[]);
    ckpt.ok(&["run", "--name", "done", "busybox", "true"]);
    let out = ckpt.ok(&["checkpoint", "--all"]);
    let mut printed: Vec<&str> = out.lines().collect();
    printed.sort();
    let mut expected = vec![a.as_str(), b.as_str()];
    expected.sort();
    assert_eq!(printed, expected, "--all checkpoints the running containers and prints full IDs");
    let restored = ckpt.ok(&["restore", "--all"]);
    assert!(restored.contains(&a) && restored.contains(&b), "{restored}");
    assert_eq!(ckpt.status("a"), "running");
    assert_eq!(ckpt.status("b"), "running");
    // Two at once (the default on two cores) above, one at a time here: the same result.
    let out = ckpt.ok(&["checkpoint", "--all", "--parallel", "1"]);
    let mut printed: Vec<&str> = out.lines().collect();
    printed.sort();
    assert_eq!(printed, expected);
    assert!(ckpt.fails(&["checkpoint", "--all", "--parallel", "0"]).contains("--parallel"));
    ckpt.ok(&["restore", "--all"]);
    let latest = ckpt.counter("latest", &[]);
    assert_eq!(ckpt.ok(&["checkpoint", "-l"]).trim(), latest);
    assert_eq!(ckpt.ok(&["restore", "--latest"]).trim(), latest);
}

#[test]
fn print_stats_prints_podman_schema_only() {
    let Some(ckpt) = Ckpt::available() else { return };
    let id = ckpt.counter("c", &[]);
    let out = ckpt.ok(&["checkpoint", "--print-stats", "c"]);
    let doc: serde_json::Value = serde_json::from_str(&out).expect("only JSON is printed");
    let total = doc["ckpt_checkpoint_duration"].as_u64().unwrap();
    let stats = &doc["container_statistics"][0];
    assert_eq!(stats["Id"], id);
    let runtime = stats["runtime_checkpoint_duration"].as_u64().unwrap();
    let criu = &stats["criu_statistics"];
    assert!(total > runtime, "{doc}");
    assert!(runtime > criu["frozen_time"].as_u64().unwrap(), "{doc}");
    for key in ["freezing_time", "frozen_time", "memdump_time", "memwrite_time", "pages_scanned", "pages_written"] {
        assert!(criu[key].as_u64().unwrap() > 0, "{key} missing: {doc}");
    }
    assert!(out.contains("\n    \"container_statistics\""), "four-space indent, as podman");
    let out = ckpt.ok(&["restore", "--print-stats", "c"]);
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(
        doc["ckpt_restore_duration"].as_u64().unwrap()
            > doc["container_statistics"][0]["runtime_restore_duration"].as_u64().unwrap()
    );
    assert!(doc["container_statistics"][0]["criu_statistics"]["restore_time"].as_u64().unwrap() > 0, "{doc}");
}

#[test]
fn create_image_then_restore_several_times_under_new_names() {
    let Some(ckpt) = Ckpt::available() else { return };
    ckpt.counter("src", &[]);
    ckpt.exec("src", "echo from-image > /marker");
    assert!(eventually(Duration::from_secs(5), || last_count(&ckpt.logs("src")) >= 3));
    assert_eq!(ckpt.ok(&["checkpoint", "--create-image", "src-ckpt", "-R", "src"]), "src\n");
    let images: Vec<serde_json::Value> = serde_json::from_str(&ckpt.ok(&["image", "ls", "--format", "json"])).unwrap();
    let image = images.iter().find(|i| i["Names"][0] == "src-ckpt:latest").expect("checkpoint image listed");
    let annotations = &image["Annotations"];
    assert_eq!(annotations["io.podman.annotations.checkpoint.name"], "src");
    assert_eq!(annotations["io.podman.annotations.checkpoint.runtime.name"], "runc");
    assert!(
        annotations["io.podman.annotations.checkpoint.criu.version"].as_str().unwrap().parse::<u32>().unwrap() >= 40200
    );
    assert!(annotations["io.podman.annotations.checkpoint.runtime.version"].as_str().unwrap().contains("runc version"));
    assert_eq!(annotations["io.podman.annotations.checkpoint.host.arch"], "amd64");
    assert_eq!(annotations["io.podman.annotations.checkpoint.distribution.name"], "debian");
    // CRI-O's key and the one containerd and checkpointctl read name the container too.
    assert_eq!(annotations["io.kubernetes.cri-o.annotations.checkpoint.name"], "src");
    assert_eq!(annotations["org.criu.checkpoint.container.name"], "src");
    for key in
        ["host.kernel", "cgroups.version", "distribution.version", "rootfsImageID", "rootfsImageName", "rawImageName"]
    {
        assert!(
            !annotations[format!("io.podman.annotations.checkpoint.{key}")].as_str().unwrap_or_default().is_empty(),
            "{key}"
        );
    }
    for name in ["copy1", "copy2", "copy3"] {
        let id = ckpt.ok(&["restore", "src-ckpt", "-n", name]);
        assert_eq!(id.trim().len(), 64);
        assert_eq!(ckpt.exec(name, "cat /marker"), "from-image\n");
        assert_eq!(ckpt.status(name), "running");
    }
    let saved = ckpt.path("image.tar");
    ckpt.ok(&["image", "save", "-o", saved.to_str().unwrap(), "src-ckpt"]);
    assert!(std::fs::metadata(&saved).unwrap().len() > 0);
    assert!(ckpt.fails(&["restore", "busybox", "-n", "x"]).contains("image is not a checkpoint"));
}

#[test]
fn established_tcp_needs_tcp_established() {
    let Some(ckpt) = Ckpt::available() else { return };
    let script = "nc -l -p 9000 -e cat & sleep 0.5; (while :; do echo ping; sleep 0.2; done) | nc 127.0.0.1 9000";
    ckpt.ok(&["run", "-d", "--name", "tcp", "busybox", "sh", "-c", script]);
    assert!(eventually(Duration::from_secs(5), || ckpt.logs("tcp").contains("ping")));
    let refused = ckpt.fails(&["checkpoint", "tcp"]);
    assert!(refused.contains("tcp-established") || refused.contains("TCP"), "{refused}");
    assert_eq!(ckpt.status("tcp"), "running", "a refused dump leaves the container running");
    let archive = ckpt.path("tcp.tar.zst");
    assert!(!archive.exists());
    ckpt.ok(&["checkpoint", "--tcp-established", "tcp"]);
    let before = ckpt.logs("tcp").matches("ping").count();
    ckpt.ok(&["restore", "--tcp-established", "tcp"]);
    assert!(
        eventually(Duration::from_secs(5), || ckpt.logs("tcp").matches("ping").count() > before + 2),
        "the connection carries on"
    );
    // An export that fails after the dump rolls back with the dump's --tcp-established, so the
    // connection survives the rollback too.
    let small = ckpt.path("small");
    std::fs::create_dir_all(&small).unwrap();
    nix::mount::mount(Some("tmpfs"), &small, Some("tmpfs"), nix::mount::MsFlags::empty(), Some("size=16k")).unwrap();
    let target = small.join("tcp.tar");
    let r = ckpt.run(&["checkpoint", "--tcp-established", "-c", "none", "-e", target.to_str().unwrap(), "tcp"]);
    nix::mount::umount(&small).unwrap();
    assert!(r.stderr.contains("restored and keeps running"), "{}", r.stderr);
    assert_eq!(ckpt.status("tcp"), "running");
    let before = ckpt.logs("tcp").matches("ping").count();
    assert!(
        eventually(Duration::from_secs(5), || ckpt.logs("tcp").matches("ping").count() > before + 2),
        "the connection carries on after the rollback"
    );
}

#[test]
fn held_file_lock_needs_file_locks() {
    let Some(ckpt) = Ckpt::available() else { return };
    crate::support::import_flock_image(&ckpt);
    ckpt.ok(&["run", "-d", "--name", "locker", "flock", "/usr/bin/flock", "/tmp/lock", "/bin/sleep", "1000"]);
    assert!(eventually(Duration::from_secs(5), || ckpt.status("locker") == "running"));
    std::thread::sleep(Duration::from_millis(300));
    // An earlier checkpoint that left it running survives a later one that fails.
    ckpt.ok(&["checkpoint", "-R", "--file-locks", "locker"]);
    let id = ckpt.inspect("locker")["Id"].as_str().unwrap().to_string();
    let images = ckpt.root.join("containers").join(id).join("userdata/checkpoint");
    let inventory = std::fs::read(images.join("inventory.img")).unwrap();
    let refused = ckpt.fails(&["checkpoint", "locker"]);
    assert!(refused.contains("checkpoint"), "{refused}");
    assert_eq!(ckpt.status("locker"), "running");
    assert_eq!(std::fs::read(images.join("inventory.img")).unwrap(), inventory, "the earlier images are back");
    assert!(!images.with_file_name("checkpoint.earlier").exists());
    assert_eq!(ckpt.ok(&["system", "check"]), "nothing to repair\n");
    ckpt.ok(&["checkpoint", "--file-locks", "locker"]);
    ckpt.ok(&["restore", "--file-locks", "locker"]);
    assert_eq!(ckpt.status("locker"), "running");
}

#[test]
fn failed_exports_leave_the_container_running_and_publish_nothing() {
    let Some(ckpt) = Ckpt::available() else { return };
    ckpt.counter("c", &[]);
    // A target whose directory does not exist fails before the dump.
    let bad = ckpt.path("missing-dir/out.tar.zst");
    ckpt.fails(&["checkpoint", "-e", bad.to_str().unwrap(), "c"]);
    assert_eq!(ckpt.status("c"), "running");
    assert_eq!(ckpt.inspect("c")["State"]["Checkpointed"], false);
    // A full disk fails after the dump: ckpt restores the container from its local images.
    let small = ckpt.path("small");
    std::fs::create_dir_all(&small).unwrap();
    nix::mount::mount(Some("tmpfs"), &small, Some("tmpfs"), nix::mount::MsFlags::empty(), Some("size=16k")).unwrap();
    let target = small.join("out.tar");
    let r = ckpt.run(&["checkpoint", "-c", "none", "-e", target.to_str().unwrap(), "c"]);
    assert_eq!(r.code, 125);
    assert!(r.stderr.contains("restored and keeps running"), "{}", r.stderr);
    let leftovers: Vec<_> = std::fs::read_dir(&small).unwrap().collect();
    assert!(leftovers.is_empty(), "no partial archive: {leftovers:?}");
    assert_eq!(ckpt.status("c"), "running");
    let before = last_count(&ckpt.logs("c"));
    assert!(eventually(Duration::from_secs(5), || last_count(&ckpt.logs("c")) > before + 2));
    nix::mount::umount(&small).unwrap();
}

/// What a container's tmpfs mounts hold, made to cover what CRIU archives itself (a small tree of
/// directories, links, device nodes, FIFOs and empty files, in /dev, where runc made the nodes)
/// and what it leaves to tar (a file with data, in /dev/shm).
const TMPFS_CONTENT: &str = "mkdir -p /dev/made/deeper && mkfifo /dev/made/fifo && ln -s /proc/self/fd /dev/made/link \
    && touch /dev/made/deeper/empty && chown 1000:1001 /dev/made/deeper/empty && chmod 0640 /dev/made/deeper/empty \
    && chmod 0711 /dev/made && touch -d '2020-02-02 02:02:02' /dev/made/fifo && echo data > /dev/shm/file";
const TMPFS_LISTING: &str = "cd /dev && find ./made ./null ./fd ./ptmx ./shm/file | sort | while read -r f; do stat -c '%n %f %u %g %Y %t %T %N' \"$f\"; done; cat /dev/shm/file";

#[test]
fn what_tmpfs_mounts_hold_comes_back_with_a_restore() {
    let Some(ckpt) = Ckpt::available() else { return };
    ckpt.counter("tmpfs", &[]);
    ckpt.exec("tmpfs", TMPFS_CONTENT);
    let before = ckpt.exec("tmpfs", TMPFS_LISTING);
    assert!(before.contains("./made/deeper/empty 81a0 1000 1001"), "{before}");
    ckpt.ok(&["checkpoint", "tmpfs"]);
    // CRIU wrote the image of every tmpfs but /dev/shm itself (a gzip of one stored block), and
    // left /dev/shm, which holds a file with data, to tar (whose gzip compresses).
    let id = ckpt.inspect("tmpfs")["Id"].as_str().unwrap().to_string();
    let images = ckpt.root.join("containers").join(id).join("userdata/checkpoint");
    let (mut stored, mut compressed) = (0, 0);
    for entry in std::fs::read_dir(&images).unwrap().flatten() {
        if entry.file_name().to_string_lossy().starts_with("tmpfs-dev-") {
            let bytes = std::fs::read(entry.path()).unwrap();
            if bytes[10] == 0x01 { stored += 1 } else { compressed += 1 }
        }
    }
    assert_eq!((stored >= 3, compressed), (true, 1), "{stored} tmpfs images written by CRIU, {compressed} by tar");
    ckpt.ok(&["restore", "tmpfs"]);
    assert_eq!(ckpt.exec("tmpfs", TMPFS_LISTING), before);
    let archive = ckpt.path("tmpfs.tar");
    ckpt.ok(&["checkpoint", "-c", "none", "-e", archive.to_str().unwrap(), "tmpfs"]);
    ckpt.ok(&["rm", "tmpfs"]);
    ckpt.ok(&["restore", "-i", archive.to_str().unwrap()]);
    assert_eq!(ckpt.exec("tmpfs", TMPFS_LISTING), before, "through an archive");
}

/// A checkpoint that keeps the container running asks CRIU itself (`criu swrk`), with what runc
/// knows read from runc's state, and starts no runc. CRIU writes the same images as when runc
/// asks it, but for what differs between any two dumps.
#[test]
fn a_dump_through_criu_writes_the_images_a_dump_through_runc_writes() {
    let Some(ckpt) = Ckpt::available() else { return };
    ckpt.ok(&["run", "-d", "--name", "same", "-v", "samedata:/data", "busybox", "sleep", "100000"]);
    let id = ckpt.inspect("same")["Id"].as_str().unwrap().to_string();
    let images = ckpt.root.join("containers").join(&id).join("userdata/checkpoint");
    let dump = |through: &str| {
        let config = ckpt.path(&format!("{through}.toml"));
        std::fs::write(&config, format!("[checkpoint]\ndump-through = {through:?}\n")).unwrap();
        let config = config.to_str().unwrap().to_string();
        let out = ckpt
            .command()
            .env("CKPT_LOG_LEVEL", "debug")
            .args(["--config", &config, "checkpoint", "-R", "same"])
            .output()
            .unwrap();
        let log = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{through}: {log}");
        let runc_dumped = log.lines().any(|l| l.contains("runc checkpoint") || l.contains(" checkpoint --image-path"));
        assert_eq!(runc_dumped, through == "runtime", "{through}: {log}");
        assert_eq!(log.contains("criu swrk dump"), through == "criu", "{through}: {log}");
        let mut files = std::collections::BTreeMap::new();
        for entry in std::fs::read_dir(&images).unwrap().flatten() {
            files.insert(entry.file_name().to_string_lossy().into_owned(), std::fs::read(entry.path()).unwrap());
        }
        files
    };
    let (through_runc, direct) = (dump("runtime"), dump("criu"));
    assert_eq!(direct.keys().collect::<Vec<_>>(), through_runc.keys().collect::<Vec<_>>());
    assert!(direct.contains_key("descriptors.json") && direct.keys().any(|k| k.starts_with("mountpoints-")));
    for (name, bytes) in &direct {
        // What differs between any two dumps: the dump's UUID, the clocks' offsets, the memory
        // of a process that ran between them, and the modes CRIU leaves unset (whatever its
        // allocator held) on the freezer.state it records. Their names are compared above.
        let varies =
            ["inventory.img", "timens-0.img", "cgroup.img"].contains(&name.as_str()) || name.starts_with("pages-");
        assert!(varies || bytes == &through_runc[name], "{name} differs between the two dumps");
    }
    // The direct dump's images restore, with the volume and the container's network.
    ckpt.ok(&["stop", "-t", "0", "same"]);
    ckpt.ok(&["restore", "same"]);
    assert_eq!(ckpt.status("same"), "running");
}

#[test]
fn a_second_concurrent_checkpoint_is_refused() {
    let Some(ckpt) = Ckpt::available() else { return };
    ckpt.counter("c", &[]);
    let lock = ckpt.runroot.join("locks");
    let id = ckpt.inspect("c")["Id"].as_str().unwrap().to_string();
    // Hold the container's lock, as a running checkpoint does.
    std::fs::create_dir_all(&lock).unwrap();
    let file = std::fs::File::create(lock.join(format!("{id}.lock"))).unwrap();
    file.lock().unwrap();
    let refused = ckpt.fails(&["checkpoint", "c"]);
    assert!(refused.contains("is busy"), "{refused}");
    drop(file);
    ckpt.ok(&["checkpoint", "c"]);
}

/// The rounds a memcheck container has logged, and whether any found its memory changed.
fn memcheck_rounds(ckpt: &Ckpt, name: &str) -> (u64, bool) {
    let logs = ckpt.logs(name);
    let last = logs.lines().filter_map(|l| l.strip_prefix("intact ")?.parse().ok()).max().unwrap_or(0);
    (last, logs.contains("changed"))
}

/// The runtime command lines a container's supervisor logged at debug level.
fn supervisor_log(ckpt: &Ckpt, name: &str) -> String {
    let id = ckpt.inspect(name)["Id"].as_str().unwrap().to_string();
    std::fs::read_to_string(ckpt.runroot.join("containers").join(id).join("supervisor.log")).unwrap_or_default()
}

/// An import's page images are a scratch copy, so CRIU may punch each run out of its file once
/// it is in the process (`--auto-dedup`, 128 MiB at a time; by default only for images large
/// beside the memory available, here always); a local checkpoint's are never touched. Memory of
/// several such runs comes back whole either way, through an export that hashed the page image
/// behind CRIU and an import that copied it while runc started.
#[test]
fn an_import_consumes_its_page_images_and_memory_comes_back_whole() {
    let Some(ckpt) = Ckpt::available() else { return };
    let config = ckpt.dir.path().join("ckpt.toml");
    let mut rules = std::fs::read_to_string(&config).unwrap();
    rules.push_str("\n[restore]\nconsume-imported-pages = \"always\"\n");
    std::fs::write(&config, rules).unwrap();
    crate::support::import_memcheck_image(&ckpt);
    ckpt.ok(&["run", "-d", "--name", "mem", "memcheck", "/bin/memcheck", "320"]);
    assert!(eventually(Duration::from_secs(20), || memcheck_rounds(&ckpt, "mem").0 >= 1));
    let archive = ckpt.path("mem.tar");
    let exported = ckpt
        .command()
        .env("CKPT_LOG_LEVEL", "debug")
        .args(["checkpoint", "-c", "none", "-e", archive.to_str().unwrap(), "mem"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&exported.stderr);
    assert!(exported.status.success(), "{stderr}");
    // Its manifest's digest of the page image was taken behind CRIU (archive::follow), and the
    // import below checks it.
    assert!(stderr.contains("page images hashed as CRIU wrote them images=1"), "{stderr}");
    let before = memcheck_rounds(&ckpt, "mem").0;

    let imported = ckpt
        .command()
        .env("CKPT_LOG_LEVEL", "debug")
        .args(["restore", "-i", archive.to_str().unwrap(), "-n", "mem2"])
        .output()
        .unwrap();
    assert!(imported.status.success(), "{}", String::from_utf8_lossy(&imported.stderr));
    assert!(eventually(Duration::from_secs(10), || memcheck_rounds(&ckpt, "mem2").0 > before + 2));
    assert!(!memcheck_rounds(&ckpt, "mem2").1, "memory changed across the import: {}", ckpt.logs("mem2"));
    let log = supervisor_log(&ckpt, "mem2");
    assert!(log.contains("--auto-dedup"), "{log}");
    // The page images came in while runc started, CRIU held until they had (criu::hold).
    assert!(log.contains("criu-restore.conf"), "{log}");
    let id = ckpt.inspect("mem2")["Id"].as_str().unwrap().to_string();
    let bundle = ckpt.root.join("containers").join(id).join("userdata");
    assert!(!bundle.join("await-page-images").exists(), "the hold is taken away once the restore is over");
    assert!(std::fs::metadata(&archive).unwrap().len() > 320 << 20, "the archive itself is untouched");

    let local = ckpt.command().env("CKPT_LOG_LEVEL", "debug").args(["restore", "mem"]).output().unwrap();
    assert!(local.status.success(), "{}", String::from_utf8_lossy(&local.stderr));
    assert!(eventually(Duration::from_secs(10), || memcheck_rounds(&ckpt, "mem").0 > before + 2));
    assert!(!memcheck_rounds(&ckpt, "mem").1, "memory changed across the restore: {}", ckpt.logs("mem"));
    let log = supervisor_log(&ckpt, "mem");
    assert!(log.contains("restore") && !log.contains("--auto-dedup"), "{log}");
}

/// A container whose dump takes a while: 192 MiB of random data in its /dev/shm.
fn big_counter(ckpt: &Ckpt, name: &str) {
    let script = "dd if=/dev/urandom of=/dev/shm/blob bs=1M count=192 2>/dev/null; i=0; while true; do echo count $i; i=$((i+1)); sleep 0.1; done";
    ckpt.ok(&["run", "-d", "--name", name, "busybox", "sh", "-c", script]);
    assert!(eventually(Duration::from_secs(20), || ckpt.logs(name).contains("count 1")));
}

/// Leftovers of an export beside its target, or of staging in the store, once the page images
/// a command handed to a background `ckpt __discard` are gone.
fn leftovers(ckpt: &Ckpt) -> Vec<std::path::PathBuf> {
    ckpt.wait_for_discards();
    let mut found: Vec<_> = crate::support::files_below(ckpt.dir.path())
        .into_iter()
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.contains(".ckpt-")))
        .collect();
    found.extend(crate::support::files_below(&ckpt.root.join("tmp")));
    found.extend(crate::support::files_below(&ckpt.root.join("inflight")));
    found
}

#[test]
fn ctrl_c_during_an_export_rolls_back() {
    let Some(ckpt) = Ckpt::available() else { return };
    big_counter(&ckpt, "c");
    let archive = ckpt.path("c.tar.zst");
    let child = ckpt
        .command()
        .args(["checkpoint", "-e", archive.to_str().unwrap(), "c"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(400));
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGINT).unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.success() {
        // The signal came after the last safe point: the checkpoint is whole and published.
        assert!(archive.is_file());
        ckpt.ok(&["restore", "c"]);
    } else {
        assert!(stderr.contains("interrupted by SIGINT") && stderr.contains("keeps running"), "{stderr}");
        assert!(!archive.exists(), "nothing is published");
    }
    assert!(leftovers(&ckpt).is_empty(), "{:?}", leftovers(&ckpt));
    assert_eq!(ckpt.status("c"), "running");
}

#[test]
fn a_killed_checkpoint_is_found_and_repaired() {
    let Some(ckpt) = Ckpt::available() else { return };
    big_counter(&ckpt, "k");
    let archive = ckpt.path("k.tar.zst");
    for delay in [300, 900] {
        let mut child = ckpt.command().args(["checkpoint", "-e", archive.to_str().unwrap(), "k"]).spawn().unwrap();
        std::thread::sleep(Duration::from_millis(delay));
        let _ = child.kill();
        let _ = child.wait();
        // CRIU runs in its own process group and finishes the dump it started; on a loaded
        // machine that takes a while.
        let id = ckpt.inspect("k")["Id"].as_str().unwrap().to_string();
        assert!(
            eventually(Duration::from_secs(60), || !runc_checkpoint_running(&id)),
            "{delay} ms: the dump never ended"
        );
        let check = ckpt.run(&["system", "check", "--repair"]);
        assert!(check.code == 0, "{delay} ms: {}{}", check.stdout, check.stderr);
        assert!(leftovers(&ckpt).is_empty(), "{delay} ms: {:?}", leftovers(&ckpt));
        assert!(!archive.exists() || archive.is_file());
        if ckpt.status("k") != "running" {
            // Killed after the dump: the local checkpoint is whole and restores.
            ckpt.ok(&["restore", "k"]);
        }
        assert_eq!(ckpt.status("k"), "running", "{delay} ms");
        let _ = std::fs::remove_file(&archive);
    }
    assert_eq!(ckpt.ok(&["system", "check"]), "nothing to repair\n");
}

/// Whether a `runc checkpoint` of the container is still at work.
fn runc_checkpoint_running(id: &str) -> bool {
    std::fs::read_dir("/proc").unwrap().flatten().any(|entry| {
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let words: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
        words.contains(&&b"checkpoint"[..]) && words.contains(&id.as_bytes())
    })
}

fn runc(ckpt: &Ckpt, args: &[&str]) {
    let status = std::process::Command::new("runc")
        .arg("--root")
        .arg(ckpt.runroot.join("runtime/runc"))
        .args(args)
        .status()
        .unwrap();
    assert!(status.success(), "runc {args:?}");
}

#[test]
fn a_frozen_container_shows_as_paused_and_repair_thaws_it() {
    let Some(ckpt) = Ckpt::available() else { return };
    let id = ckpt.counter("f", &[]);
    // What a CRIU killed after its freeze leaves: a frozen cgroup and nobody working on it.
    runc(&ckpt, &["pause", &id]);
    assert_eq!(ckpt.status("f"), "paused");
    assert_eq!(ckpt.inspect("f")["State"]["Paused"], true);
    assert!(ckpt.ok(&["ps"]).contains("Up (Paused)"));
    let refused = ckpt.fails(&["checkpoint", "f"]);
    assert!(refused.contains("paused") && refused.contains("system check --repair"), "{refused}");
    let check = ckpt.run(&["system", "check"]);
    assert_eq!(check.code, 1, "{}", check.stdout);
    assert!(check.stdout.contains("frozen") && check.stdout.contains("f:"), "{}", check.stdout);
    ckpt.ok(&["system", "check", "--repair"]);
    assert_eq!(ckpt.status("f"), "running");
    let before = last_count(&ckpt.logs("f"));
    assert!(eventually(Duration::from_secs(5), || last_count(&ckpt.logs("f")) > before), "it counts again");
    ckpt.ok(&["checkpoint", "-R", "f"]);
}

#[test]
fn processes_the_runtime_lost_are_found_and_never_left_running() {
    let Some(ckpt) = Ckpt::available() else { return };
    let id = ckpt.counter("lost", &[]);
    let pid = nix::unistd::Pid::from_raw(ckpt.inspect("lost")["State"]["Pid"].as_i64().unwrap() as i32);
    // The supervisor dies and the runtime forgets the container; its process runs on.
    let supervisor = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()))
        .find(|p| {
            std::fs::read(format!("/proc/{p}/cmdline")).is_ok_and(|c| {
                String::from_utf8_lossy(&c).contains("__supervise") && String::from_utf8_lossy(&c).contains(&id)
            })
        })
        .expect("the supervisor runs");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(supervisor), nix::sys::signal::Signal::SIGKILL).unwrap();
    std::fs::remove_dir_all(ckpt.runroot.join("runtime/runc").join(&id)).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(nix::sys::signal::kill(pid, None).is_ok(), "the container's process still runs");
    let check = ckpt.run(&["system", "check"]);
    assert!(check.stdout.contains("supervisor-gone"), "{}", check.stdout);
    let refused = ckpt.fails(&["rm", "lost"]);
    assert!(refused.contains("--force"), "{refused}");
    ckpt.ok(&["rm", "-f", "lost"]);
    assert!(eventually(Duration::from_secs(5), || nix::sys::signal::kill(pid, None).is_err()), "rm -f left it running");
    assert!(ckpt.run(&["inspect", "lost"]).code != 0);
}

#[test]
fn parallel_checkpoints_of_one_container_leave_one_archive_and_a_running_container() {
    let Some(ckpt) = Ckpt::available() else { return };
    ckpt.counter("c", &[]);
    let children: Vec<_> = (0..6)
        .map(|n| {
            let archive = ckpt.path(&format!("c-{n}.tar.zst"));
            let child = ckpt
                .command()
                .args(["checkpoint", "-R", "-e", archive.to_str().unwrap(), "c"])
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            (archive, child)
        })
        .collect();
    let mut published = 0;
    for (archive, child) in children {
        let out = child.wait_with_output().unwrap();
        if out.status.success() {
            published += 1;
            assert!(archive.is_file());
        } else {
            assert!(
                String::from_utf8_lossy(&out.stderr).contains("is busy"),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(!archive.exists());
        }
    }
    assert!(published >= 1);
    assert!(leftovers(&ckpt).is_empty(), "{:?}", leftovers(&ckpt));
    assert_eq!(ckpt.status("c"), "running");
    // And one path cannot take several containers' archives.
    ckpt.counter("d", &[]);
    let refused = ckpt.fails(&["checkpoint", "-R", "-a", "-e", ckpt.path("all.tar").to_str().unwrap()]);
    assert!(refused.contains("one at a time"), "{refused}");
}

#[test]
fn a_killed_import_is_found_and_removed() {
    let Some(ckpt) = Ckpt::available() else { return };
    big_counter(&ckpt, "src");
    let archive = ckpt.path("src.tar.zst");
    ckpt.ok(&["checkpoint", "-R", "-e", archive.to_str().unwrap(), "src"]);
    for (n, delay) in [200, 700, 1500].into_iter().enumerate() {
        let name = format!("copy{n}");
        let mut child = ckpt.command().args(["restore", "-i", archive.to_str().unwrap(), "-n", &name]).spawn().unwrap();
        std::thread::sleep(Duration::from_millis(delay));
        let _ = child.kill();
        let _ = child.wait();
        std::thread::sleep(Duration::from_secs(2));
        let check = ckpt.run(&["system", "check", "--repair"]);
        assert_eq!(check.code, 0, "{delay} ms: {}{}", check.stdout, check.stderr);
        assert!(leftovers(&ckpt).is_empty(), "{delay} ms: {:?}", leftovers(&ckpt));
        // Either the import had finished and the copy runs, or nothing of it is left.
        let inspect = ckpt.run(&["inspect", &name]);
        if inspect.code == 0 {
            assert_eq!(ckpt.status(&name), "running", "{delay} ms");
        } else {
            ckpt.ok(&["restore", "-i", archive.to_str().unwrap(), "-n", &name]);
        }
        ckpt.ok(&["rm", "-f", &name]);
    }
    assert_eq!(ckpt.ok(&["system", "check"]), "nothing to repair\n");
}

#[test]
fn a_store_on_a_small_file_system_runs_containers_and_a_dump_that_runs_out_of_space_loses_nothing() {
    let Some(mut ckpt) = Ckpt::available() else { return };
    let small_dir = ckpt.path("small");
    std::fs::create_dir_all(&small_dir).unwrap();
    let small = SmallFs::over(&small_dir, "48m");
    ckpt.root = small_dir.join("root");
    // Less than 64 MiB free: the reserve scales with the file system.
    ckpt.counter("tight", &[]);
    assert!(eventually(Duration::from_secs(5), || last_count(&ckpt.logs("tight")) >= 3));

    small.fill_leaving(64 << 10);
    let failed = ckpt.run(&["checkpoint", "tight"]);
    assert_eq!(failed.code, 125, "{}{}", failed.stderr, failed.stdout);
    assert_eq!(ckpt.status("tight"), "running", "a dump with no room leaves the container running");
    let check = ckpt.run(&["system", "check"]);
    assert_eq!(check.code, 0, "nothing was interrupted: {}{}", check.stdout, check.stderr);
    assert!(check.stdout.contains("nothing to repair"), "{}", check.stdout);

    small.unfill();
    let before = last_count(&ckpt.logs("tight"));
    ckpt.ok(&["checkpoint", "tight"]);
    ckpt.ok(&["restore", "tight"]);
    assert!(eventually(Duration::from_secs(5), || last_count(&ckpt.logs("tight")) > before), "its memory is whole");
    ckpt.ok(&["rm", "-f", "tight"]);
}
