//! Gathering the facts a policy decides on: the container's cgroup, /proc and upper layer, the
//! host, the tools and the decision log. `policy::facts` turns what is gathered here into the
//! contract's records.

use std::fs;

use super::Context;
use super::lifecycle::{Status, status};
use crate::policy::bindings::{CheckpointFacts, CheckpointOptions, ExportTarget};
use crate::policy::facts::{self, ContainerSample, Tools};
use crate::store::ContainerRecord;

/// The file `v1` (cgroup v1, under `controller`) or `v2` of the cgroup at `cgroup`.
fn cgroup_file_at(controller: &str, cgroup: &str, v1: &str, v2: &str) -> Option<String> {
    let cgroup = cgroup.trim_start_matches('/');
    let path = if crate::hostinfo::cgroup_v2() {
        format!("/sys/fs/cgroup/{cgroup}/{v2}")
    } else {
        format!("/sys/fs/cgroup/{controller}/{cgroup}/{v1}")
    };
    fs::read_to_string(path).ok()
}

/// `/sys/fs/cgroup/<controller>/ckpt/<id>` on cgroup v1, `/sys/fs/cgroup/ckpt/<id>` on v2.
fn cgroup_file(controller: &str, id: &str, v1: &str, v2: &str) -> Option<String> {
    cgroup_file_at(controller, &crate::spec::cgroup_path(id), v1, v2)
}

/// The memory a cgroup's file reports in use.
fn memory_in(usage: Option<String>) -> u64 {
    usage.and_then(|t| t.trim().parse().ok()).unwrap_or(0)
}

/// The process IDs a `cgroup.procs` lists.
fn pids_in(procs: Option<String>) -> Vec<u32> {
    procs.map(|t| t.lines().filter_map(|l| l.trim().parse().ok()).collect()).unwrap_or_default()
}

fn container_pids(id: &str) -> Vec<u32> {
    pids_in(
        cgroup_file("pids", id, "cgroup.procs", "cgroup.procs")
            .or_else(|| cgroup_file("memory", id, "cgroup.procs", "cgroup.procs")),
    )
}

/// Established TCP connections in the container's network namespace: its `CurrEstab` counter
/// (ESTABLISHED and CLOSE-WAIT, both of which need `--tcp-established`). Reading
/// `/proc/PID/net/tcp` instead walks the host's whole connection table, every time.
fn tcp_established(pid: u32) -> u32 {
    let snmp = fs::read_to_string(format!("/proc/{pid}/net/snmp")).unwrap_or_default();
    let mut tcp = snmp.lines().filter(|l| l.starts_with("Tcp:"));
    let (Some(names), Some(values)) = (tcp.next(), tcp.next()) else { return 0 };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(name, _)| *name == "CurrEstab")
        .and_then(|(_, value)| value.parse().ok())
        .unwrap_or(0)
}

/// The file locks the processes hold: the `lock:` lines of their descriptors' fdinfo, each lock
/// once however many processes share its descriptor. `/proc/locks` lists the same, but opening it
/// takes the kernel's lock table for writing, which waits for an RCU grace period: 5 to 20 ms
/// here, and every lock operation on the host waits with it.
fn file_locks(pids: &[u32]) -> u32 {
    let mut locks = std::collections::BTreeSet::new();
    for pid in pids {
        let Ok(descriptors) = fs::read_dir(format!("/proc/{pid}/fdinfo")) else { continue };
        for descriptor in descriptors.flatten() {
            let Ok(info) = fs::read_to_string(descriptor.path()) else { continue };
            locks.extend(info.lines().filter_map(|l| l.strip_prefix("lock:")).map(|l| l.trim().to_string()));
        }
    }
    locks.len() as u32
}

/// What the container is doing now; `known` is its status if the caller has just asked for it.
pub fn sample(ctx: &Context, record: &ContainerRecord, known: Option<Status>) -> ContainerSample {
    let status = known.or_else(|| status(ctx, record).ok());
    let pids = container_pids(&record.id);
    let init = status.as_ref().map(|s| s.pid).filter(|p| *p > 0).map(|p| p as u32);
    ContainerSample {
        status: status.map(|s| s.status.to_string()).unwrap_or_else(|| "unknown".into()),
        memory_bytes: memory_in(cgroup_file("memory", &record.id, "memory.usage_in_bytes", "memory.current")),
        process_count: pids.len() as u32,
        tcp_established: init.map(tcp_established).unwrap_or(0),
        file_locks: file_locks(&pids),
        rootfs_change_bytes: crate::util::dir_size(&ctx.containers.paths(&record.id).upper()),
    }
}

/// What a container of another engine is doing now, from its first process `pid` (0: none):
/// its cgroup's memory and processes, its namespace's connections, its processes' locks.
pub fn sample_process(pid: u32, state: &str) -> ContainerSample {
    // Its memory cgroup (v1) or its one cgroup (v2), from /proc/PID/cgroup's `N:CONTROLLERS:PATH`.
    let cgroups = fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
    let cgroup = cgroups.lines().find_map(|line| {
        let mut fields = line.splitn(3, ':');
        let (_, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
        let wanted = match crate::hostinfo::cgroup_v2() {
            true => controllers.is_empty(),
            false => controllers.split(',').any(|c| c == "memory"),
        };
        wanted.then(|| path.to_string())
    });
    let file = |v1: &str, v2: &str| cgroup.as_deref().and_then(|c| cgroup_file_at("memory", c, v1, v2));
    let pids = pids_in(file("cgroup.procs", "cgroup.procs"));
    ContainerSample {
        status: state.to_string(),
        memory_bytes: memory_in(file("memory.usage_in_bytes", "memory.current")),
        process_count: pids.len() as u32,
        tcp_established: if pid > 0 { tcp_established(pid) } else { 0 },
        file_locks: file_locks(&pids),
        rootfs_change_bytes: 0,
    }
}

/// Established TCP connections per listening port of the container, from its own namespace's
/// tables (`/proc/PID/net/tcp` and `tcp6`, as a dual-stack listener's connections are there:
/// state 01, local port in hex).
fn connections_per_port(pid: u32, ports: &[u16]) -> Vec<(u16, u32)> {
    let table = ["tcp", "tcp6"]
        .map(|file| fs::read_to_string(format!("/proc/{pid}/net/{file}")).unwrap_or_default())
        .join("\n");
    ports
        .iter()
        .map(|port| {
            let local = format!(":{port:04X} ");
            let count = table
                .lines()
                .filter(|line| {
                    let fields: Vec<&str> = line.split_whitespace().collect();
                    fields.get(3) == Some(&"01") && fields.get(1).is_some_and(|l| format!("{l} ").ends_with(&local))
                })
                .count();
            (*port, count as u32)
        })
        .collect()
}

/// The container's networks for a policy, through the contract's `ext` until a minor version
/// gives them records: `network.mode`, `network.NAME.address` and `.mac` (while it runs),
/// `network.ports` as `ps` shows them, and `network.connections.PORT/PROTO`, the connections
/// clients hold to each published port.
pub fn network(ctx: &Context, record: &ContainerRecord, init: Option<u32>) -> Vec<(String, String)> {
    use crate::store::NetworkMode;
    let settings = &record.network;
    let mut ext = vec![(
        "network.mode".to_string(),
        match settings.mode {
            NetworkMode::Bridge => "bridge",
            NetworkMode::None => "none",
        }
        .to_string(),
    )];
    if settings.mode == NetworkMode::None {
        return ext;
    }
    let status = match init {
        Some(_) => crate::network::read_status(&ctx.containers.paths(&record.id).network_status()),
        None => crate::network::StatusBlock::default(),
    };
    for (name, _) in &settings.networks {
        if let Some((mac, ip, _, _)) = status.get(name).and_then(|s| s.first_address()) {
            ext.push((format!("network.{name}.address"), ip.to_string()));
            ext.push((format!("network.{name}.mac"), mac));
        }
    }
    if settings.ports.is_empty() {
        return ext;
    }
    let shown: Vec<String> = settings
        .ports
        .iter()
        .map(|p| format!("{}:{}->{}/{}", p.host_ip, p.host_port, p.container_port, p.protocol))
        .collect();
    ext.push(("network.ports".into(), shown.join(",")));
    let tcp: Vec<u16> = settings
        .ports
        .iter()
        .filter(|p| p.protocol == "tcp")
        .flat_map(|p| p.container_port..p.container_port + p.range)
        .collect();
    if let Some(pid) = init {
        for (port, count) in connections_per_port(pid, &tcp) {
            ext.push((format!("network.connections.{port}/tcp"), count.to_string()));
        }
    }
    ext
}

pub fn tools(ctx: &Context, runtime_name: &str) -> Tools {
    let criu = ctx.criu().ok();
    let runtime = ctx.runtime_named(runtime_name).ok();
    Tools {
        criu_version: criu.as_ref().and_then(|c| c.version().ok()).unwrap_or(0),
        runtime_name: runtime.as_ref().map(|r| r.name().to_string()).unwrap_or_default(),
        runtime_version: runtime.as_ref().and_then(|r| r.version().ok()).unwrap_or_default(),
        memory_tracking: criu.as_ref().is_some_and(|c| c.memory_tracking().is_ok()),
    }
}

pub fn checkpoint(
    ctx: &Context,
    record: &ContainerRecord,
    status: Option<Status>,
    options: CheckpointOptions,
    exports: Vec<ExportTarget>,
    trigger: &str,
    schedule: Option<crate::policy::bindings::ScheduleFacts>,
) -> CheckpointFacts {
    let host = crate::hostinfo::HostInfo::probe(&ctx.roots.root);
    let status = status.or_else(|| super::lifecycle::status(ctx, record).ok());
    let init = status.as_ref().map(|s| s.pid).filter(|p| *p > 0).map(|p| p as u32);
    let ext = network(ctx, record, init)
        .into_iter()
        .map(|(key, value)| crate::policy::bindings::KeyValue { key, value })
        .collect();
    CheckpointFacts {
        container: facts::container(record, sample(ctx, record, status)),
        host: facts::host(&host, tools(ctx, &record.runtime)),
        request: facts::request(&record.id, options, exports, trigger, schedule, chrono::Utc::now()),
        history: facts::history(crate::policy::record::history(&ctx.roots.policy_log(), &record.id, 64)),
        ext,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_is_sampled_through_its_own_cgroup() {
        let sample = sample_process(std::process::id(), "running");
        assert_eq!(sample.status, "running");
        assert!(sample.process_count >= 1, "this test's own cgroup holds it: {sample:?}");
        assert_eq!(sample_process(0, "exited").process_count, 0, "no process, no cgroup");
    }

    /// flock(1) takes the lock and runs `sleep` with the descriptor: two processes, one lock.
    #[test]
    fn a_lock_shared_by_two_processes_counts_once() {
        let dir = std::env::temp_dir().join(format!("ckpt-locks-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let ready = dir.join("ready");
        let mut holder = std::process::Command::new("flock")
            .arg(dir.join("lock"))
            .args(["sh", "-c", &format!("touch {}; exec sleep 30", ready.display())])
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !ready.exists() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let flock = holder.id();
        let children = fs::read_to_string(format!("/proc/{flock}/task/{flock}/children")).unwrap();
        let sleeper: u32 = children.split_whitespace().next().unwrap().parse().unwrap();
        let counted = (file_locks(&[flock]), file_locks(&[sleeper]), file_locks(&[flock, sleeper]));
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(sleeper as i32), nix::sys::signal::SIGKILL);
        holder.wait().unwrap();
        fs::remove_dir_all(&dir).unwrap();
        assert_eq!(counted, (1, 1, 1));
        assert_eq!(file_locks(&[flock]), 0, "a process that is gone holds none");
    }
}
