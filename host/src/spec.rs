//! The OCI runtime spec (`config.json`) ckpt writes for each container.
//!
//! It is rebuilt from ckpt's own record every time, never read back from an archive, so that a
//! hostile checkpoint cannot smuggle mounts, devices or annotations into a restore.

use std::path::Path;

use serde_json::{Value, json};

use crate::store::ContainerRecord;

/// The capabilities podman grants by default.
const DEFAULT_CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_NET_BIND_SERVICE",
    "CAP_SETFCAP",
    "CAP_SETGID",
    "CAP_SETPCAP",
    "CAP_SETUID",
    "CAP_SYS_CHROOT",
];

const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A mount that ckpt resolved to a host path.
pub struct HostMount<'a> {
    pub source: &'a Path,
    pub destination: &'a str,
    pub read_only: bool,
}

pub fn build(record: &ContainerRecord, rootfs: &Path, bundle: &Path, netns: &Path, mounts: &[HostMount]) -> Value {
    let mut env: Vec<String> = vec![DEFAULT_PATH.to_string(), "TERM=xterm".to_string()];
    env.push(format!("HOSTNAME={}", hostname(record)));
    for e in &record.env {
        let key = e.split('=').next().unwrap_or_default();
        env.retain(|existing| existing.split('=').next() != Some(key));
        env.push(e.clone());
    }
    let mut all_mounts = default_mounts();
    for (file, destination) in [("hosts", "/etc/hosts"), ("hostname", "/etc/hostname")] {
        all_mounts.push(json!({
            "destination": destination, "type": "bind",
            "source": bundle.join(file), "options": ["bind", "rprivate"]
        }));
    }
    for m in mounts {
        let mut options = vec!["rbind", "rprivate"];
        if m.read_only {
            options.push("ro");
        }
        all_mounts.push(json!({
            "destination": m.destination, "type": "bind", "source": m.source, "options": options
        }));
    }
    let caps: Vec<&str> = DEFAULT_CAPABILITIES.to_vec();
    json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            // ckpt itself runs with umask 077; the container gets the usual one.
            "user": {"uid": 0, "gid": 0, "umask": 0o022},
            "args": record.command,
            "env": env,
            "cwd": "/",
            "capabilities": {
                "bounding": caps, "effective": caps, "permitted": caps
            },
            "noNewPrivileges": false
        },
        "root": {"path": rootfs, "readonly": false},
        "hostname": hostname(record),
        "mounts": all_mounts,
        "annotations": {
            "io.container.manager": "ckpt",
            "io.ckpt.container.name": record.name,
        },
        "linux": {
            "cgroupsPath": cgroup_path(&record.id),
            "namespaces": [
                {"type": "pid"}, {"type": "network", "path": netns}, {"type": "ipc"},
                {"type": "uts"}, {"type": "mount"}
            ],
            "maskedPaths": [
                "/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug",
                "/proc/scsi", "/sys/firmware", "/sys/dev/block"
            ],
            "readonlyPaths": [
                "/proc/asound", "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys",
                "/proc/sysrq-trigger"
            ]
        }
    })
}

/// The first 12 characters of the ID, as podman uses for the hostname.
pub fn hostname(record: &ContainerRecord) -> &str {
    &record.id[..12.min(record.id.len())]
}

fn default_mounts() -> Vec<Value> {
    vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc"}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
               "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts",
               "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]}),
        // A tmpfs inside the container's mount namespace: CRIU dumps its content itself, so
        // nothing like podman's devshm-checkpoint.tar is needed.
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
               "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
               "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs",
               "options": ["nosuid", "noexec", "nodev", "ro"]}),
        json!({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
               "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}),
    ]
}

/// The container's cgroup, below each controller's root (v1) or the unified root (v2).
pub fn cgroup_path(id: &str) -> String {
    format!("/ckpt/{id}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spec_holds_the_record_and_nothing_else_from_outside() {
        let record: ContainerRecord = serde_json::from_value(json!({
            "id": "ab".repeat(32), "name": "web", "image_name": "busybox", "image_ref": "busybox:latest",
            "image_id": "c".repeat(64), "command": ["sh", "-c", "true"], "env": ["PATH=/custom", "A=1"],
            "labels": {}, "mounts": [], "auto_remove": false, "created_at": "2026-01-01T00:00:00Z",
            "runtime": "runc", "state": crate::store::StateFlags::default()
        }))
        .unwrap();
        let data = Path::new("/var/lib/ckpt/volumes/data/_data");
        let mounts = [HostMount { source: data, destination: "/data", read_only: true }];
        let spec = build(&record, Path::new("/r"), Path::new("/b"), Path::new("/run/ckpt/netns"), &mounts);
        assert_eq!(spec["hostname"], "abababababab");
        let env: Vec<&str> = spec["process"]["env"].as_array().unwrap().iter().map(|e| e.as_str().unwrap()).collect();
        assert!(env.contains(&"PATH=/custom") && !env.iter().any(|e| e.starts_with("PATH=/usr")), "{env:?}");
        assert_eq!(spec["process"]["user"]["umask"], 0o022);
        assert_eq!(spec["linux"]["namespaces"][1]["path"], "/run/ckpt/netns");
        let binds: Vec<&Value> = spec["mounts"].as_array().unwrap().iter().filter(|m| m["type"] == "bind").collect();
        let sources: Vec<&str> = binds.iter().map(|m| m["source"].as_str().unwrap()).collect();
        assert_eq!(sources, ["/b/hosts", "/b/hostname", "/var/lib/ckpt/volumes/data/_data"]);
        assert!(binds[2]["options"].as_array().unwrap().contains(&json!("ro")));
        assert!(spec["annotations"].get("org.criu.config").is_none());
    }
}
