//! ckpt's policies over podman's containers: `ckpt checkpoint podman:NAME` through podman's own
//! REST API (a real `podman system service` on a socket of the test's), with a planner, a gate,
//! sealing, the catalog and the audit log; podman's own state stays consistent.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::support::{Ckpt, Podman, eventually, last_count};

/// `podman system service` on a socket under the test's directory; stopped on drop.
struct PodmanApi {
    child: Child,
    socket: std::path::PathBuf,
}

impl PodmanApi {
    fn start(ckpt: &Ckpt) -> PodmanApi {
        let socket = ckpt.path("podman.sock");
        let child = Command::new("podman")
            .args(["--runtime", "runc", "system", "service", "--time", "0"])
            .arg(format!("unix://{}", socket.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("podman runs");
        let up = eventually(Duration::from_secs(15), || std::os::unix::net::UnixStream::connect(&socket).is_ok());
        assert!(up, "podman system service did not listen on {}", socket.display());
        PodmanApi { child, socket }
    }
}

impl Drop for PodmanApi {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_podman_container_is_checkpointed_under_ckpts_policies_and_podman_restores_it() {
    let Some(ckpt) = Ckpt::available() else { return };
    let podman = Podman::cleaning(&["ckpt-engine-web"], &[], &[]);
    let api = PodmanApi::start(&ckpt);
    let config = std::fs::read_to_string(ckpt.path("ckpt.toml")).unwrap();
    std::fs::write(ckpt.path("ckpt.toml"), format!("{config}[engines]\npodman-socket = {:?}\n", api.socket)).unwrap();
    let image = ckpt.path("busybox.tar");
    ckpt.ok(&["save", "-o", image.to_str().unwrap(), "busybox"]);
    let loaded = podman.ok(&["load", "-i", image.to_str().unwrap()]);
    let busybox = loaded.trim().rsplit(' ').next().unwrap().to_string();
    let counter = "i=0; while true; do echo count $i; i=$((i+1)); sleep 0.1; done";
    podman.ok(&[
        "run",
        "-d",
        "--name",
        "ckpt-engine-web",
        "--label",
        "data-class=secret",
        &busybox,
        "sh",
        "-c",
        counter,
    ]);
    let count = || last_count(&podman.ok(&["logs", "ckpt-engine-web"]));
    let state = || podman.ok(&["inspect", "--format", "{{.State.Status}}", "ckpt-engine-web"]).trim().to_string();
    assert!(eventually(Duration::from_secs(5), || count() >= 3));

    // Unknown names and what podman cannot do are refused before anything changes.
    let missing = ckpt.fails(&["checkpoint", "podman:ckpt-engine-nothing"]);
    assert!(missing.contains("podman has no container \"ckpt-engine-nothing\""), "{missing}");
    let image_target = ckpt.fails(&["checkpoint", "--create-image", "localhost/x", "podman:ckpt-engine-web"]);
    assert!(image_target.contains("which ckpt cannot ask of podman"), "{image_target}");
    assert_eq!(state(), "running");

    // A gate that wants this class sealed denies a plaintext export; podman's container is
    // brought back and runs on.
    let compliance = crate::support::policy("compliance");
    let gate = r#"{"classes": {"secret": {"targets": ["/"], "sealed": true}}}"#;
    let plain = ckpt.path("plain.tar.zst");
    let args = ["checkpoint", "--gate", &compliance, "--gate-config", gate, "-e", plain.to_str().unwrap()];
    let denied = ckpt.run(&[&args[..], &["podman:ckpt-engine-web"]].concat());
    assert_eq!(denied.code, 125, "{}", denied.stderr);
    assert!(denied.stderr.contains("in the clear") && denied.stderr.contains("restored"), "{}", denied.stderr);
    assert!(!plain.exists(), "a denied export leaves nothing");
    assert_eq!(state(), "running", "exactly one copy runs: podman's, brought back");
    let before = count();
    assert!(eventually(Duration::from_secs(5), || count() > before + 3), "and it counts on");

    // Sealed, the gate lets it through: the archive is ckpt's (zstd, sealed), podman stopped
    // its container, and podman restores it from the checkpoint it keeps.
    let key = ckpt.path("key.txt");
    let recipient = ckpt.ok(&["key", "generate", "-o", key.to_str().unwrap()]).trim().to_string();
    let sealed = ckpt.path("web.tar.zst.age");
    let args = ["checkpoint", "--gate", &compliance, "--gate-config", gate, "-e", sealed.to_str().unwrap()];
    ckpt.ok(&[&args[..], &["--encrypt-to", &recipient, "podman:ckpt-engine-web"]].concat());
    assert!(std::fs::read(&sealed).unwrap().starts_with(b"age-encryption.org/v1\n"));
    assert_eq!(state(), "exited");
    let at_checkpoint = count();
    podman.ok(&["container", "restore", "ckpt-engine-web"]);
    assert!(eventually(Duration::from_secs(5), || count() > at_checkpoint + 3), "podman restored its container");

    // The catalog and the audit log recorded it as podman's.
    let entries: serde_json::Value = serde_json::from_str(&ckpt.ok(&["catalog", "ls", "--format", "json"])).unwrap();
    let entry = entries.as_array().unwrap().iter().find(|e| e["location"] == sealed.to_str().unwrap()).unwrap();
    assert_eq!(entry["container-name"], "podman:ckpt-engine-web", "{entry}");
    assert_eq!(entry["sealed-to"], serde_json::json!([recipient]));
    let audit = std::fs::read_to_string(ckpt.root.join("audit.log")).unwrap();
    assert!(audit.contains("\"podman:ckpt-engine-web\""), "{audit}");
    assert!(ckpt.ok(&["audit", "verify"]).contains("intact"));

    // Left running, in the clear: podman imports ckpt's archive of its container as a new one.
    let copy = ckpt.path("copy.tar.zst");
    ckpt.ok(&["checkpoint", "-R", "-e", copy.to_str().unwrap(), "podman:ckpt-engine-web"]);
    assert_eq!(state(), "running");
    let _copy = Podman::cleaning(&["ckpt-engine-copy"], &[], &[]);
    podman.ok(&["container", "restore", "--import", copy.to_str().unwrap(), "--name", "ckpt-engine-copy"]);
    let copied = || last_count(&podman.ok(&["logs", "ckpt-engine-copy"]));
    let from = copied();
    assert!(eventually(Duration::from_secs(5), || copied() > from + 3), "the copy runs in podman");

    // On a schedule: the run checkpoints podman's container and the catalog keeps the entry
    // under podman's ID, where retention finds it.
    let template = format!("{}/{{name}}-{{time}}.tar.zst", ckpt.path("").display());
    let retainer = r#"{"keep-last": 1}"#;
    let add = ["schedule", "add", "podman-hourly", "--every", "1h", "--container", "podman:ckpt-engine-web", "-R"];
    ckpt.ok(&[&add[..], &["--export", &template, "--retainer-config", retainer]].concat());
    let id = podman.ok(&["inspect", "--format", "{{.Id}}", "ckpt-engine-web"]).trim().to_string();
    for _ in 0..2 {
        let ran = ckpt.ok(&["schedule", "run", "podman-hourly"]);
        assert!(ran.contains("ok"), "{ran}");
    }
    let entries: serde_json::Value = serde_json::from_str(&ckpt.ok(&["catalog", "ls", "--format", "json"])).unwrap();
    let scheduled: Vec<_> = entries.as_array().unwrap().iter().filter(|e| e["schedule"] == "podman-hourly").collect();
    assert_eq!(scheduled.len(), 1, "keep-last 1 kept the newest: {scheduled:#?}");
    assert_eq!(scheduled[0]["container-id"], id.as_str());
    assert!(scheduled[0]["location"].as_str().unwrap().contains("/ckpt-engine-web-"), "{}", scheduled[0]);
    assert_eq!(state(), "running");
}
