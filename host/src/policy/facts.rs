//! The facts a policy receives: the container (from its record, its cgroup and /proc), the
//! host, the request and the container's earlier checkpoints.

use std::fs;
use std::path::Path;

use super::bindings::*;
use crate::ops::Context;
use crate::store::ContainerRecord;

/// `/sys/fs/cgroup/<controller>/ckpt/<id>` on cgroup v1, `/sys/fs/cgroup/ckpt/<id>` on v2.
fn cgroup_file(controller: &str, id: &str, v1: &str, v2: &str) -> Option<String> {
    let unified = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    let path = if unified {
        format!("/sys/fs/cgroup/ckpt/{id}/{v2}")
    } else {
        format!("/sys/fs/cgroup/{controller}/ckpt/{id}/{v1}")
    };
    fs::read_to_string(path).ok()
}

fn container_pids(id: &str) -> Vec<u32> {
    cgroup_file("pids", id, "cgroup.procs", "cgroup.procs")
        .or_else(|| cgroup_file("memory", id, "cgroup.procs", "cgroup.procs"))
        .map(|t| t.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

/// Established TCP sockets in the container's network namespace (state 01 in /proc/net/tcp*).
fn tcp_established(pid: u32) -> u32 {
    ["tcp", "tcp6"]
        .iter()
        .filter_map(|t| fs::read_to_string(format!("/proc/{pid}/net/{t}")).ok())
        .map(|text| text.lines().skip(1).filter(|l| l.split_whitespace().nth(3) == Some("01")).count() as u32)
        .sum()
}

fn file_locks(pids: &[u32]) -> u32 {
    let locks = fs::read_to_string("/proc/locks").unwrap_or_default();
    locks
        .lines()
        .filter(|l| l.split_whitespace().nth(4).and_then(|p| p.parse::<u32>().ok()).is_some_and(|p| pids.contains(&p)))
        .count() as u32
}

fn tree_bytes(dir: &Path) -> u64 {
    let Ok(entries) = fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => tree_bytes(&e.path()),
            Ok(_) => e.metadata().map(|m| m.len()).unwrap_or(0),
            Err(_) => 0,
        })
        .sum()
}

fn pairs(map: &std::collections::BTreeMap<String, String>) -> Vec<KeyValue> {
    map.iter().map(|(k, v)| KeyValue { key: k.clone(), value: v.clone() }).collect()
}

pub fn container(ctx: &Context, record: &ContainerRecord) -> ContainerFacts {
    let status = crate::ops::lifecycle::status(ctx, record).ok();
    let pids = container_pids(&record.id);
    let init = status.as_ref().map(|s| s.pid).filter(|p| *p > 0).map(|p| p as u32);
    let memory_bytes = cgroup_file("memory", &record.id, "memory.usage_in_bytes", "memory.current")
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(0);
    ContainerFacts {
        id: record.id.clone(),
        name: record.name.clone(),
        image: record.image_ref.clone(),
        labels: pairs(&record.labels),
        annotations: vec![KeyValue { key: "io.container.manager".into(), value: "ckpt".into() }],
        state: status.map(|s| s.status.to_string()).unwrap_or_else(|| "unknown".into()),
        memory_bytes,
        process_count: pids.len() as u32,
        tcp_established: init.map(tcp_established).unwrap_or(0),
        file_locks: file_locks(&pids),
        volumes: record.named_volumes().map(|m| m.source.clone()).collect(),
        rootfs_change_bytes: tree_bytes(&ctx.containers.paths(&record.id).upper()),
    }
}

pub fn host(ctx: &Context, runtime_name: &str) -> HostFacts {
    let criu = ctx.criu().ok();
    let runtime = ctx.runtime_named(runtime_name).ok();
    let free_disk_bytes = nix::sys::statvfs::statvfs(&ctx.roots.root)
        .or_else(|_| nix::sys::statvfs::statvfs("/"))
        .map(|s| s.blocks_available() * s.fragment_size())
        .unwrap_or(0);
    HostFacts {
        criu_version: criu.as_ref().and_then(|c| c.version().ok()).unwrap_or(0),
        runtime_name: runtime.as_ref().map(|r| r.name().to_string()).unwrap_or_default(),
        runtime_version: runtime.as_ref().and_then(|r| r.version().ok()).unwrap_or_default(),
        kernel: nix::sys::utsname::uname().map(|u| u.release().to_string_lossy().into_owned()).unwrap_or_default(),
        arch: crate::image::oci_arch().to_string(),
        memory_tracking: criu.as_ref().is_some_and(|c| c.memory_tracking().is_ok()),
        free_disk_bytes,
    }
}

/// The container's earlier exports that gates judged and let through (allowed or narrowed),
/// from the decision log.
pub fn history(ctx: &Context, record: &ContainerRecord) -> Vec<HistoryEntry> {
    super::record::history(&ctx.roots.policy_log(), &record.id, 64)
        .into_iter()
        .filter(|r| r.kind == "gate" && r.error.is_none())
        .filter_map(|r| {
            let export = r.export?;
            Some(HistoryEntry { at: r.at, exported_to: Some(export.target), size_bytes: export.size_bytes })
        })
        .collect()
}

/// A deterministic seed: the same container at the same instant gives the same seed.
pub fn seed(id: &str, now_unix_ms: u64) -> u64 {
    let hash = blake3::hash(format!("{id}@{now_unix_ms}").as_bytes());
    u64::from_le_bytes(hash.as_bytes()[..8].try_into().expect("8 bytes"))
}

pub fn checkpoint(
    ctx: &Context,
    record: &ContainerRecord,
    options: CheckpointOptions,
    exports: Vec<ExportTarget>,
    trigger: &str,
) -> CheckpointFacts {
    let now = chrono::Utc::now();
    let now_unix_ms = now.timestamp_millis().max(0) as u64;
    CheckpointFacts {
        container: container(ctx, record),
        host: host(ctx, &record.runtime),
        request: RequestFacts {
            options,
            exports,
            trigger: trigger.to_string(),
            now: now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            now_unix_ms,
            seed: seed(&record.id, now_unix_ms),
        },
        history: history(ctx, record),
        ext: vec![],
    }
}
