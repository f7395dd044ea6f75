//! Checkpoints that move between ckpt and podman 4.3.1, both on runc, as a user would move them:
//! `ckpt image save` + `podman load` for the image, then the archive.

use std::path::Path;
use std::time::Duration;

use crate::support::{Ckpt, Podman, eventually, last_count};

#[test]
fn podman_restores_a_ckpt_archive_and_the_container_carries_on() {
    let Some(ckpt) = Ckpt::available() else { return };
    assert!(Path::new("/usr/bin/podman").exists(), "scripts/setup installs podman");
    let podman = Podman::cleaning(&["ckpt-moving"], &["ckpt-movingdata"], &[]);
    ckpt.ok(&[
        "run",
        "-d",
        "--name",
        "ckpt-moving",
        "-v",
        "ckpt-movingdata:/data",
        "busybox",
        "sh",
        "-c",
        // The random blob goes into the gzip archive as stored blocks, which podman reads too.
        // The count is renamed into place: `>` truncates first, so a reader could see it empty.
        "head -c 65536 /dev/urandom > /data/blob; i=0; while true; do echo count $i; echo $i > /data/n.new; mv /data/n.new /data/n; i=$((i+1)); sleep 0.1; done",
    ]);
    assert!(eventually(Duration::from_secs(5), || last_count(&ckpt.logs("ckpt-moving")) >= 5));
    let archive = ckpt.path("moving.tar.zst");
    let image = ckpt.path("busybox.tar");
    ckpt.ok(&["checkpoint", "-e", archive.to_str().unwrap(), "ckpt-moving"]);
    let at_checkpoint = last_count(&ckpt.logs("ckpt-moving"));
    ckpt.ok(&["save", "-o", image.to_str().unwrap(), "busybox"]);
    podman.ok(&["load", "-i", image.to_str().unwrap()]);

    let restored = podman.ok(&["container", "restore", "--import", archive.to_str().unwrap()]);
    assert_eq!(restored.trim(), ckpt.inspect("ckpt-moving")["Id"], "podman keeps the container's ID");
    let count = || {
        let logs = podman.ok(&["logs", "ckpt-moving"]);
        last_count(&logs)
    };
    assert!(eventually(Duration::from_secs(5), || count() > at_checkpoint + 3), "it counts on from {at_checkpoint}");
    let in_volume: u64 = podman.ok(&["exec", "ckpt-moving", "cat", "/data/n"]).trim().parse().unwrap();
    assert!(in_volume > at_checkpoint, "the volume came along and is written to");
    assert_eq!(podman.ok(&["inspect", "--format", "{{.State.Status}}", "ckpt-moving"]).trim(), "running");

    // ckpt's gzip is written on every core as a run of gzip members; podman's reader takes it.
    podman.ok(&["rm", "-f", "-t", "0", "ckpt-moving"]);
    ckpt.ok(&["restore", "ckpt-moving"]);
    let gzipped = ckpt.path("moving.tar.gz");
    ckpt.ok(&["checkpoint", "-c", "gzip", "-e", gzipped.to_str().unwrap(), "ckpt-moving"]);
    let at_checkpoint = last_count(&ckpt.logs("ckpt-moving"));
    podman.ok(&["container", "restore", "--ignore-volumes", "--import", gzipped.to_str().unwrap()]);
    assert!(eventually(Duration::from_secs(5), || count() > at_checkpoint + 3), "it counts on from {at_checkpoint}");
}

#[test]
fn ckpt_restores_podman_archives_and_checkpoint_images() {
    let Some(ckpt) = Ckpt::available() else { return };
    let podman = Podman::cleaning(&["ckpt-from-podman", "ckpt-from-podman-image"], &["ckpt-podmandata"], &[]);
    let image = ckpt.path("busybox.tar");
    ckpt.ok(&["save", "-o", image.to_str().unwrap(), "busybox"]);
    let loaded = podman.ok(&["load", "-i", image.to_str().unwrap()]);
    let busybox = loaded.trim().rsplit(' ').next().unwrap().to_string();
    // Renamed into place, as above, so `cat /data/n` never sees the file just truncated.
    let counter =
        "i=0; while true; do echo count $i; echo $i > /data/n.new; mv /data/n.new /data/n; i=$((i+1)); sleep 0.1; done";
    let count = |name: &str| last_count(&ckpt.logs(name));

    // An exported archive, with a named volume.
    let id = podman.ok(&[
        "run",
        "-d",
        "--name",
        "ckpt-from-podman",
        "-v",
        "ckpt-podmandata:/data",
        &busybox,
        "sh",
        "-c",
        counter,
    ]);
    let podman_count = || last_count(&podman.ok(&["logs", "ckpt-from-podman"]));
    assert!(eventually(Duration::from_secs(5), || podman_count() >= 5));
    let archive = ckpt.path("from-podman.tar.zst");
    podman.ok(&["container", "checkpoint", "-e", archive.to_str().unwrap(), "ckpt-from-podman"]);
    let at_checkpoint = podman_count();
    let restored = ckpt.run(&["restore", "-i", archive.to_str().unwrap()]);
    assert_eq!(restored.code, 0, "{}", restored.stderr);
    assert_eq!(restored.stdout.trim(), id.trim(), "the container keeps podman's ID");
    assert!(restored.stderr.contains("is a podman checkpoint: it has no ckpt manifest"), "{}", restored.stderr);
    assert!(eventually(Duration::from_secs(5), || count("ckpt-from-podman") > at_checkpoint + 3));
    let in_volume: u64 = ckpt.exec("ckpt-from-podman", "cat /data/n").trim().parse().unwrap();
    assert!(in_volume > at_checkpoint, "the volume came along and is written to");
    // It checkpoints and restores again in ckpt, now as ckpt's.
    ckpt.ok(&["checkpoint", "ckpt-from-podman"]);
    ckpt.ok(&["restore", "ckpt-from-podman"]);
    assert_eq!(ckpt.status("ckpt-from-podman"), "running");

    // A checkpoint image, moved as an OCI archive.
    podman.ok(&[
        "run",
        "-d",
        "--name",
        "ckpt-from-podman-image",
        &busybox,
        "sh",
        "-c",
        "i=0; while true; do echo count $i; i=$((i+1)); sleep 0.1; done",
    ]);
    assert!(eventually(Duration::from_secs(5), || last_count(&podman.ok(&["logs", "ckpt-from-podman-image"])) >= 5));
    podman.ok(&[
        "container",
        "checkpoint",
        "--create-image",
        "localhost/ckpt-from-podman-ckpt",
        "ckpt-from-podman-image",
    ]);
    let image_archive = ckpt.path("podman-ckpt-image.tar");
    podman.ok(&[
        "save",
        "--format",
        "oci-archive",
        "-o",
        image_archive.to_str().unwrap(),
        "localhost/ckpt-from-podman-ckpt",
    ]);
    let _ = podman.run(&["rmi", "-f", "localhost/ckpt-from-podman-ckpt"]);
    ckpt.ok(&["load", "-i", image_archive.to_str().unwrap()]);
    ckpt.ok(&["restore", "localhost/ckpt-from-podman-ckpt"]);
    let at_image = count("ckpt-from-podman-image");
    assert!(at_image >= 5, "it carries on from the image's count, not from zero");
    assert!(eventually(Duration::from_secs(5), || count("ckpt-from-podman-image") > at_image + 3));
}

#[test]
fn an_archive_whose_processes_hold_more_than_a_ckpt_container_may_is_refused() {
    let Some(ckpt) = Ckpt::available() else { return };
    let podman = Podman::cleaning(&["ckpt-privileged"], &[], &[]);
    let image = ckpt.path("busybox.tar");
    ckpt.ok(&["save", "-o", image.to_str().unwrap(), "busybox"]);
    let loaded = podman.ok(&["load", "-i", image.to_str().unwrap()]);
    let busybox = loaded.trim().rsplit(' ').next().unwrap().to_string();
    // What a sender that is not to be trusted could send: processes with CAP_SYS_ADMIN, which
    // CRIU, as root, would restore as they are.
    podman.ok(&["run", "-d", "--name", "ckpt-privileged", "--cap-add", "SYS_ADMIN", &busybox, "sleep", "1000"]);
    let archive = ckpt.path("privileged.tar.zst");
    podman.ok(&["container", "checkpoint", "-e", archive.to_str().unwrap(), "ckpt-privileged"]);

    let refused = ckpt.run(&["restore", "-i", archive.to_str().unwrap()]);
    assert_eq!(refused.code, 125, "{}{}", refused.stderr, refused.stdout);
    assert!(refused.stderr.contains("CAP_SYS_ADMIN"), "{}", refused.stderr);
    assert!(refused.stderr.contains("\"sleep\""), "the process is named: {}", refused.stderr);
    assert!(ckpt.container_ids().is_empty(), "nothing is left of the import");
}

/// Removes a podman network and a ckpt network of the same name when the test ends.
struct Networks<'a>(&'a Ckpt, &'static str);

impl Drop for Networks<'_> {
    fn drop(&mut self) {
        let _ = Podman::cleaning(&[], &[], &[]).run(&["network", "rm", "-f", self.1]);
        let _ = self.0.run(&["network", "rm", "-f", self.1]);
    }
}

/// A web server on a user network moves from ckpt to podman and back, keeping its address
/// (podman's restore reads `network.status` as ckpt's does) and its published port. Each side
/// has the network under the same name and subnet, as podman's own restore requires.
#[test]
fn a_networked_container_moves_between_ckpt_and_podman_with_its_address() {
    let Some(ckpt) = Ckpt::available() else { return };
    const NETWORK: &str = "ckpt-interop-net";
    const SUBNET: &str = "10.91.200.0/24";
    let podman = Podman::cleaning(&["ckpt-netmove"], &[], &[]);
    let _networks = Networks(&ckpt, NETWORK);
    let image = ckpt.path("busybox.tar");
    ckpt.ok(&["save", "-o", image.to_str().unwrap(), "busybox"]);
    podman.ok(&["load", "-i", image.to_str().unwrap()]);
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let publish = format!("{port}:80");
    let answers = || {
        let fetch = format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | busybox nc -w 3 127.0.0.1 {port} | tail -n 1");
        let out = std::process::Command::new("sh").arg("-c").arg(fetch).output().unwrap();
        String::from_utf8_lossy(&out.stdout).trim() == "moving-server"
    };

    ckpt.ok(&["network", "create", "--subnet", SUBNET, NETWORK]);
    let script = "mkdir -p /www && echo moving-server > /www/index.html && exec httpd -f -p 80 -h /www";
    ckpt.ok(&[
        "run",
        "-d",
        "--name",
        "ckpt-netmove",
        "--network",
        NETWORK,
        "-p",
        &publish,
        "busybox",
        "sh",
        "-c",
        script,
    ]);
    assert!(eventually(Duration::from_secs(5), answers));
    let address = ckpt.inspect("ckpt-netmove")["NetworkSettings"]["IPAddress"].as_str().unwrap().to_string();
    let archive = ckpt.path("netmove.tar.zst");
    ckpt.ok(&["checkpoint", "-e", archive.to_str().unwrap(), "ckpt-netmove"]);
    ckpt.ok(&["rm", "ckpt-netmove"]);
    ckpt.ok(&["network", "rm", NETWORK]);

    podman.ok(&["network", "create", "--subnet", SUBNET, NETWORK]);
    podman.ok(&["container", "restore", "--import", archive.to_str().unwrap()]);
    let in_podman = podman.ok(&[
        "inspect",
        "--format",
        &format!("{{{{(index .NetworkSettings.Networks \"{NETWORK}\").IPAddress}}}}"),
        "ckpt-netmove",
    ]);
    assert_eq!(in_podman.trim(), address, "podman restores it at the address it had in ckpt");
    assert!(eventually(Duration::from_secs(5), answers), "podman publishes its port again");

    // And a podman container, at a fixed address on that network, moves to ckpt. (Not the one
    // podman restored: podman cannot dump it again, as its stdin is then the host's /dev/null.)
    podman.ok(&["rm", "-f", "-t", "0", "ckpt-netmove"]);
    let fixed = "10.91.200.77";
    let loaded = podman.ok(&["images", "--format", "{{.Repository}}:{{.Tag}}"]);
    let busybox = loaded.lines().find(|l| l.contains("busybox")).unwrap().to_string();
    podman.ok(&[
        "run",
        "-d",
        "--name",
        "ckpt-netmove",
        "--network",
        NETWORK,
        "--ip",
        fixed,
        "-p",
        &publish,
        &busybox,
        "sh",
        "-c",
        script,
    ]);
    assert!(eventually(Duration::from_secs(5), answers));
    let back = ckpt.path("netmove-back.tar");
    podman.ok(&["container", "checkpoint", "-e", back.to_str().unwrap(), "ckpt-netmove"]);
    podman.ok(&["rm", "-f", "ckpt-netmove"]);
    podman.ok(&["network", "rm", NETWORK]);
    ckpt.ok(&["network", "create", "--subnet", SUBNET, NETWORK]);
    ckpt.ok(&["restore", "-i", back.to_str().unwrap()]);
    let settings = ckpt.inspect("ckpt-netmove")["NetworkSettings"].clone();
    assert_eq!(settings["Networks"][NETWORK]["IPAddress"], fixed, "ckpt restores podman's container at its address");
    assert!(eventually(Duration::from_secs(5), answers), "with its port");
    ckpt.ok(&["rm", "-f", "ckpt-netmove"]);
}
