//! The OCI runtime spec (`config.json`) ckpt writes for each container, built with oci-spec's
//! types so that a misspelt key is a compile error, not a runtime that ignores it.
//!
//! It is rebuilt from ckpt's own record every time, never read back from an archive, so that a
//! hostile checkpoint cannot smuggle mounts, devices or annotations into a restore.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use oci_spec::OciSpecError;
use oci_spec::runtime::{
    Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxNamespaceBuilder, LinuxNamespaceType, Mount, MountBuilder,
    ProcessBuilder, RootBuilder, Spec, SpecBuilder, UserBuilder,
};

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

/// The capabilities every ckpt container has, as a mask by number: all that a checkpoint of
/// one can carry.
pub fn capability_mask() -> u64 {
    mask_of(DEFAULT_CAPABILITIES).expect("the table names every default capability")
}

/// The capabilities by number, as `linux/capability.h` names them.
const CAPABILITY_NAMES: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// The set of capabilities `names` (`CAP_…`) make, one bit each by number; `None` for a name
/// this table does not know.
fn mask_of(names: &[&str]) -> Option<u64> {
    names.iter().try_fold(0u64, |mask, name| Some(mask | 1 << CAPABILITY_NAMES.iter().position(|n| n == name)?))
}

/// The names of the capabilities in `mask`.
pub fn capability_names(mask: u64) -> Vec<String> {
    (0..64)
        .filter(|bit| mask & (1 << bit) != 0)
        .map(|bit| CAPABILITY_NAMES.get(bit).map_or_else(|| format!("capability {bit}"), |n| n.to_string()))
        .collect()
}

const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A mount that ckpt resolved to a host path.
pub struct HostMount<'a> {
    pub source: &'a Path,
    pub destination: &'a str,
    pub read_only: bool,
}

fn mount(destination: &str, kind: &str, source: impl AsRef<Path>, options: &[&str]) -> Result<Mount, OciSpecError> {
    let builder = MountBuilder::default().destination(destination).typ(kind).source(source.as_ref());
    if options.is_empty() {
        builder.build()
    } else {
        builder.options(options.iter().map(|o| o.to_string()).collect::<Vec<_>>()).build()
    }
}

pub fn build(
    record: &ContainerRecord,
    rootfs: &Path,
    bundle: &Path,
    netns: &Path,
    mounts: &[HostMount],
) -> Result<Spec, OciSpecError> {
    let mut env: Vec<String> = vec![DEFAULT_PATH.to_string(), "TERM=xterm".to_string()];
    env.push(format!("HOSTNAME={}", hostname(record)));
    for e in &record.env {
        let key = e.split('=').next().unwrap_or_default();
        env.retain(|existing| existing.split('=').next() != Some(key));
        env.push(e.clone());
    }
    let mut all_mounts = default_mounts()?;
    let mut files = OWN_FILES.to_vec();
    if record.network.mode == crate::store::NetworkMode::Bridge && !record.podman_mounts {
        files.push(RESOLV_CONF);
    }
    if record.podman_mounts {
        files.extend(PODMAN_FILES);
        all_mounts.retain(|m| m.destination() != Path::new("/dev/shm"));
        let options = ["bind", "rprivate", "nosuid", "noexec", "nodev"];
        all_mounts.push(mount("/dev/shm", "bind", bundle.join(PODMAN_SHM_DIR), &options)?);
    }
    for (file, destination) in files {
        all_mounts.push(mount(destination, "bind", bundle.join(file), &["bind", "rprivate"])?);
    }
    for m in mounts {
        let options: &[&str] = if m.read_only { &["rbind", "rprivate", "ro"] } else { &["rbind", "rprivate"] };
        all_mounts.push(mount(m.destination, "bind", m.source, options)?);
    }
    // By the names the spec's JSON uses, the names podman's list has.
    let caps = DEFAULT_CAPABILITIES
        .iter()
        .map(|c| serde_json::from_value::<Capability>(serde_json::Value::from(*c)))
        .collect::<Result<HashSet<Capability>, _>>()
        .map_err(|e| OciSpecError::Other(format!("capability: {e}")))?;
    let mut capabilities =
        LinuxCapabilitiesBuilder::default().bounding(caps.clone()).effective(caps.clone()).permitted(caps).build()?;
    // Only what podman grants: nothing inheritable, nothing ambient.
    capabilities.set_inheritable(None).set_ambient(None);
    let mut process = ProcessBuilder::default()
        .terminal(false)
        // ckpt itself runs with umask 077; the container gets the usual one.
        .user(UserBuilder::default().uid(0u32).gid(0u32).umask(0o022u32).build()?)
        .args(record.command.clone())
        .env(env)
        .cwd(record.workdir())
        .capabilities(capabilities)
        .no_new_privileges(false)
        .build()?;
    // No rlimits: ckpt may not raise any (no CAP_SYS_RESOURCE here), so it asks for none.
    process.set_rlimits(None);
    let namespace = |typ: LinuxNamespaceType| LinuxNamespaceBuilder::default().typ(typ).build();
    let mut linux = LinuxBuilder::default()
        .cgroups_path(cgroup_path(&record.id))
        .namespaces(vec![
            namespace(LinuxNamespaceType::Pid)?,
            LinuxNamespaceBuilder::default().typ(LinuxNamespaceType::Network).path(netns).build()?,
            namespace(LinuxNamespaceType::Ipc)?,
            namespace(LinuxNamespaceType::Uts)?,
            namespace(LinuxNamespaceType::Mount)?,
        ])
        .masked_paths(
            [
                "/proc/acpi",
                "/proc/kcore",
                "/proc/keys",
                "/proc/latency_stats",
                "/proc/timer_list",
                "/proc/timer_stats",
                "/proc/sched_debug",
                "/proc/scsi",
                "/sys/firmware",
                "/sys/dev/block",
            ]
            .map(String::from)
            .to_vec(),
        )
        .readonly_paths(
            ["/proc/asound", "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
                .map(String::from)
                .to_vec(),
        )
        .build()?;
    // The runtime's own device rules apply; ckpt adds none.
    linux.set_resources(None);
    if record.network.mode == crate::store::NetworkMode::Bridge {
        // podman's default_sysctls: ping works without CAP_NET_RAW, which no container has.
        linux.set_sysctl(Some(HashMap::from([("net.ipv4.ping_group_range".to_string(), "0 0".to_string())])));
    }
    SpecBuilder::default()
        .version("1.0.2")
        .process(process)
        .root(RootBuilder::default().path(rootfs).readonly(false).build()?)
        .hostname(hostname(record))
        .mounts(all_mounts)
        .annotations(HashMap::from([
            (MANAGER_ANNOTATION.to_string(), "ckpt".to_string()),
            ("io.ckpt.container.name".to_string(), record.name.clone()),
        ]))
        .linux(linux)
        .build()
}

/// `--hostname`, or the first 12 characters of the ID, as podman uses.
pub fn hostname(record: &ContainerRecord) -> &str {
    match &record.network.hostname {
        Some(hostname) => hostname,
        None => &record.id[..12.min(record.id.len())],
    }
}

fn default_mounts() -> Result<Vec<Mount>, OciSpecError> {
    Ok(vec![
        mount("/proc", "proc", "proc", &[])?,
        mount("/dev", "tmpfs", "tmpfs", &["nosuid", "strictatime", "mode=755", "size=65536k"])?,
        mount("/dev/pts", "devpts", "devpts", &["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"])?,
        // A tmpfs inside the container's mount namespace: CRIU dumps its content itself, so
        // nothing like podman's devshm-checkpoint.tar is needed.
        mount("/dev/shm", "tmpfs", "shm", &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"])?,
        mount("/dev/mqueue", "mqueue", "mqueue", &["nosuid", "noexec", "nodev"])?,
        mount("/sys", "sysfs", "sysfs", &["nosuid", "noexec", "nodev", "ro"])?,
        mount("/sys/fs/cgroup", "cgroup", "cgroup", &["nosuid", "noexec", "nodev", "relatime", "ro"])?,
    ])
}

/// The bundle files ckpt binds into every container, and their destinations.
const OWN_FILES: [(&str, &str); 2] = [("hosts", "/etc/hosts"), ("hostname", "/etc/hostname")];
/// The resolver configuration ckpt binds into a container on a network, made from its networks'.
const RESOLV_CONF: (&str, &str) = ("resolv.conf", "/etc/resolv.conf");
/// The bundle files ckpt also binds into a container restored from podman, which bound them.
const PODMAN_FILES: [(&str, &str); 2] = [RESOLV_CONF, (".containerenv", "/run/.containerenv")];
/// The bundle directory bound at `/dev/shm` for a container restored from podman, whose
/// `/dev/shm` was a bind mount there too.
pub const PODMAN_SHM_DIR: &str = "shm";

/// Whether the engine binds `destination` itself (ckpt, or podman before it), so that a
/// checkpoint carries no such bind of its own.
pub fn engine_bind(destination: &str) -> bool {
    destination == "/dev/shm" || OWN_FILES.iter().chain(&PODMAN_FILES).any(|(_, d)| *d == destination)
}

/// Where podman keeps a named volume's data, under its default graph root.
const PODMAN_VOLUMES: &str = "/var/lib/containers/storage/volumes";

/// Which engine's layout a container's files follow, as CRI-O, podman and checkpointctl read it.
pub const MANAGER_ANNOTATION: &str = "io.container.manager";
/// The engine that made an archive in podman's layout.
pub const ENGINE_ANNOTATION: &str = "io.ckpt.engine";

/// The spec as `spec.dump` carries it to another engine. ckpt itself never reads it back; podman
/// makes it the restored container's spec, so nothing in it may name a path that exists only
/// here: `/etc/hosts` and `/etc/hostname` go (the destination binds its own), the network
/// namespace loses its path (the destination makes one), and named volumes point where podman
/// recreates them from the archive. The archive's layout is podman's, and its manager says so:
/// tools that tell engines apart by `io.container.manager` (checkpointctl takes anything but
/// `libpod` and `cri-o` for containerd's) read it as the podman archive it is, and
/// `io.ckpt.engine` says ckpt made it.
pub fn portable(mut spec: Spec, record: &ContainerRecord) -> Spec {
    let mut annotations = spec.annotations().clone().unwrap_or_default();
    annotations.insert(MANAGER_ANNOTATION.to_string(), "libpod".to_string());
    annotations.insert(ENGINE_ANNOTATION.to_string(), "ckpt".to_string());
    spec.set_annotations(Some(annotations));
    let volumes: HashMap<&str, &str> =
        record.named_volumes().map(|v| (v.destination.as_str(), v.source.as_str())).collect();
    let mounts = spec.mounts().clone().unwrap_or_default().into_iter().filter_map(|mut m| {
        let destination = m.destination().to_string_lossy().into_owned();
        if OWN_FILES.iter().any(|(_, d)| *d == destination) {
            return None;
        }
        if let Some(name) = volumes.get(destination.as_str()) {
            m.set_source(Some(Path::new(PODMAN_VOLUMES).join(name).join("_data")));
        }
        Some(m)
    });
    spec.set_mounts(Some(mounts.collect()));
    if let Some(namespaces) = spec.linux_mut().as_mut().and_then(|linux| linux.namespaces_mut().as_mut()) {
        for namespace in namespaces.iter_mut().filter(|n| n.typ() == LinuxNamespaceType::Network) {
            namespace.set_path(None);
        }
    }
    spec
}

/// The container's cgroup, below each controller's root (v1) or the unified root (v2).
pub fn cgroup_path(id: &str) -> String {
    format!("/ckpt/{id}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_capabilities_are_podmans_eleven_by_number() {
        // CHOWN 0, DAC_OVERRIDE 1, FOWNER 3, FSETID 4, KILL 5, SETGID 6, SETUID 7, SETPCAP 8,
        // NET_BIND_SERVICE 10, SYS_CHROOT 18, SETFCAP 31.
        assert_eq!(capability_mask(), 0b1000_0000_0000_0100_0000_0101_1111_1011);
        assert_eq!(capability_names(1 << 21 | 1 << 40), ["CAP_SYS_ADMIN", "CAP_CHECKPOINT_RESTORE"]);
        assert_eq!(capability_names(1 << 63), ["capability 63"]);
    }
    use serde_json::{Value, json};

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
        let spec = build(&record, Path::new("/r"), Path::new("/b"), Path::new("/run/ckpt/netns"), &mounts).unwrap();
        let spec = serde_json::to_value(&spec).unwrap();
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
        let caps = spec["process"]["capabilities"]["bounding"].as_array().unwrap();
        assert_eq!(caps.len(), DEFAULT_CAPABILITIES.len(), "{caps:?}");
        assert!(spec["process"]["capabilities"].get("ambient").is_none());
        assert!(spec["process"].get("rlimits").is_none() && spec["linux"].get("resources").is_none());
        // oci-spec keeps capabilities in hash sets, so their order in the JSON varies.
        let mut spec = spec;
        for set in spec["process"]["capabilities"].as_object_mut().unwrap().values_mut() {
            set.as_array_mut().unwrap().sort_by(|a, b| a.as_str().cmp(&b.as_str()));
        }
        insta::assert_json_snapshot!("runtime_spec", spec);
    }

    #[test]
    fn the_portable_spec_names_no_path_of_this_host() {
        let record: ContainerRecord = serde_json::from_value(json!({
            "id": "ab".repeat(32), "name": "web", "image_name": "busybox", "image_ref": "busybox:latest",
            "image_id": "c".repeat(64), "command": ["sh"], "env": [], "labels": {},
            "mounts": [{"kind": "volume", "source": "data", "destination": "/data", "read_only": false}],
            "auto_remove": false, "created_at": "2026-01-01T00:00:00Z", "runtime": "runc"
        }))
        .unwrap();
        let data = Path::new("/var/lib/ckpt/volumes/data/_data");
        let mounts = [HostMount { source: data, destination: "/data", read_only: false }];
        let spec = build(&record, Path::new("/r"), Path::new("/b"), Path::new("/run/ckpt/netns"), &mounts).unwrap();
        let spec = serde_json::to_value(portable(spec, &record)).unwrap();
        let binds: Vec<(&str, &str)> = spec["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["type"] == "bind")
            .map(|m| (m["destination"].as_str().unwrap(), m["source"].as_str().unwrap()))
            .collect();
        assert_eq!(binds, [("/data", "/var/lib/containers/storage/volumes/data/_data")]);
        let network = spec["linux"]["namespaces"].as_array().unwrap().iter().find(|n| n["type"] == "network").unwrap();
        assert!(network.get("path").is_none(), "{network}");
        // checkpointctl's rule: `libpod` is podman's layout, `cri-o` CRI-O's, anything else
        // containerd's.
        assert_eq!(spec["annotations"][MANAGER_ANNOTATION], "libpod");
        assert_eq!(spec["annotations"][ENGINE_ANNOTATION], "ckpt");
    }
}
