//! Checkpoints that move between ckpt and podman 4.3.1, both on runc, as a user would move them:
//! `ckpt image save` + `podman load` for the image, then the archive.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::support::{Ckpt, eventually, last_count};

/// podman on the host's default store: a ckpt archive names its volumes where podman keeps them
/// by default, as podman's own archives name its graph root. What a test makes there goes when
/// the test ends.
struct Podman {
    containers: Vec<&'static str>,
    volumes: Vec<&'static str>,
}

impl Podman {
    fn run(&self, args: &[&str]) -> std::process::Output {
        Command::new("podman").args(["--runtime", "runc"]).args(args).output().expect("podman runs")
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(out.status.success(), "podman {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        for name in &self.containers {
            let _ = self.run(&["rm", "-f", "-t", "0", name]);
        }
        for name in &self.volumes {
            let _ = self.run(&["volume", "rm", "-f", name]);
        }
    }
}

#[test]
fn podman_restores_a_ckpt_archive_and_the_container_carries_on() {
    let Some(ckpt) = Ckpt::available() else { return };
    assert!(Path::new("/usr/bin/podman").exists(), "scripts/setup installs podman");
    let podman = Podman { containers: vec!["ckpt-moving"], volumes: vec!["ckpt-movingdata"] };
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
        "i=0; while true; do echo count $i; echo $i > /data/n; i=$((i+1)); sleep 0.1; done",
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
}
