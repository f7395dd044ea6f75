//! What runc knows of a running container, read from its `state.json` rather than asked of a
//! runc process: enough to ask CRIU for the very dump that runc 1.1's `checkpoint
//! --leave-running` asks for (`Checkpoint` in libcontainer/container_linux.go), so that a dump
//! that keeps the container running starts one CRIU and no runc.
//!
//! runc stays the owner of the container: nothing here writes to its state, and a dump that
//! stops the container, a pre-dump or a post-copy dump still goes through runc.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use std::os::unix::fs::DirBuilderExt;

use serde::Deserialize;

use super::CheckpointOptions;
use crate::criu::swrk::DumpRequest;
use crate::metadata::CRIU_DUMP_LOG;

/// The file runc restores the container's standard streams from, written beside CRIU's images.
const DESCRIPTORS_FILE: &str = "descriptors.json";

/// The CRIU configuration runc names when the container has no `org.criu.config` annotation.
const RUNC_CRIU_CONFIG: &str = "/etc/criu/runc.conf";

#[derive(Deserialize)]
struct State {
    init_process_pid: i32,
    init_process_start: u64,
    config: Config,
    #[serde(default)]
    cgroup_paths: Option<HashMap<String, String>>,
    #[serde(default)]
    external_descriptors: Option<Vec<String>>,
}

#[derive(Deserialize)]
struct Config {
    rootfs: PathBuf,
    #[serde(default)]
    mounts: Option<Vec<Mount>>,
    #[serde(default)]
    devices: Option<Vec<Device>>,
    #[serde(default)]
    namespaces: Option<Vec<Namespace>>,
    #[serde(default)]
    mask_paths: Option<Vec<String>>,
    /// The spec's annotations as `key=value`, beside runc's own `bundle=`.
    #[serde(default)]
    labels: Option<Vec<String>>,
}

#[derive(Deserialize)]
struct Mount {
    device: String,
    destination: PathBuf,
}

#[derive(Deserialize)]
struct Device {
    path: PathBuf,
}

#[derive(Deserialize)]
struct Namespace {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    path: String,
}

/// The dump request of a `checkpoint --leave-running` of the container whose runc state is in
/// `state_dir`, and `descriptors.json` written into the images directory as runc writes it.
/// `Err` says why the container's state cannot be read this way; the caller then asks runc.
pub fn leave_running_dump(
    state_dir: &Path,
    options: &CheckpointOptions,
    cgroup_v2: bool,
) -> Result<DumpRequest, String> {
    let state_file = state_dir.join("state.json");
    let bytes = fs::read(&state_file).map_err(|e| format!("{}: {e}", state_file.display()))?;
    let state: State = serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", state_file.display()))?;
    let pid = state.init_process_pid;
    // runc's own test that the PID is still its container's init.
    if process_start(pid) != Some(state.init_process_start) {
        return Err(format!("process {pid} is not the container's init any more"));
    }
    let config = state.config;
    let namespaces = config.namespaces.unwrap_or_default();
    let rootfs =
        crate::safefs::Beneath::open(&config.rootfs).map_err(|e| format!("rootfs {}: {e}", config.rootfs.display()))?;
    let resolve = |dest: &Path| -> Result<String, String> {
        rootfs
            .resolve_in_root(dest)
            .map(|p| p.display().to_string())
            .map_err(|e| format!("mount destination {}: {e}", dest.display()))
    };
    let mut ext_mounts = Vec::new();
    let has_cgroup_ns = namespaces.iter().any(|ns| ns.kind == "NEWCGROUP");
    for mount in config.mounts.unwrap_or_default() {
        match mount.device.as_str() {
            "bind" => {
                let dest = resolve(&mount.destination)?;
                ext_mounts.push((dest.clone(), dest));
            }
            // cgroup v1 without a cgroup namespace: runc binds each hierarchy the host mounts.
            "cgroup" if !cgroup_v2 && !has_cgroup_ns => {
                for dest in cgroup_v1_binds(pid, Path::new(&resolve(&mount.destination)?))? {
                    ext_mounts.push((dest.clone(), dest));
                }
            }
            _ => {}
        }
    }
    for masked in config.mask_paths.unwrap_or_default() {
        // A masked file is the container's /dev/null bound over it; a masked directory is a
        // tmpfs, which CRIU dumps itself.
        match fs::metadata(format!("/proc/{pid}/root/{masked}")) {
            Ok(meta) if !meta.is_dir() => ext_mounts.push((masked, "/dev/null".to_string())),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("masked path {masked}: {e}")),
        }
    }
    for device in config.devices.unwrap_or_default() {
        let dest = resolve(&device.path)?;
        ext_mounts.push((dest.clone(), dest));
    }
    let mut external = Vec::new();
    for (kind, name, key) in [("NEWNET", "net", "extRootNetNS"), ("NEWPID", "pid", "extRootPidNS")] {
        if let Some(ns) = namespaces.iter().find(|ns| ns.kind == kind && !ns.path.is_empty()) {
            let inode = std::os::unix::fs::MetadataExt::ino(
                &fs::metadata(&ns.path).map_err(|e| format!("namespace {}: {e}", ns.path))?,
            );
            external.push(format!("{name}[{inode}]:{key}"));
        }
    }
    let cgroups = state.cgroup_paths.unwrap_or_default();
    let freeze_cgroup = cgroups.get(if cgroup_v2 { "" } else { "freezer" }).cloned();
    let config_file = criu_config_file(&config.labels.unwrap_or_default());

    // runc makes both directories, private, when they are not there.
    for dir in [&options.image_path, &options.work_path] {
        match fs::DirBuilder::new().mode(0o700).create(dir) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(format!("{}: {e}", dir.display())),
            _ => {}
        }
    }
    let descriptors =
        serde_json::to_vec(&state.external_descriptors.unwrap_or_default()).map_err(|e| format!("descriptors: {e}"))?;
    let descriptors_file = options.image_path.join(DESCRIPTORS_FILE);
    // Written as runc writes it, without write_atomic's fsyncs: CRIU's own images are not
    // synced either, and a dump cut short is removed whole.
    write_private(&descriptors_file, &descriptors).map_err(|e| format!("{}: {e}", descriptors_file.display()))?;

    Ok(DumpRequest {
        images_dir: options.image_path.clone(),
        work_dir: options.work_path.clone(),
        log_file: CRIU_DUMP_LOG.to_string(),
        pid,
        root: config.rootfs,
        leave_running: true,
        tcp_established: options.tcp_established,
        file_locks: options.file_locks,
        ext_mounts,
        external,
        empty_ns: libc::CLONE_NEWNET as u32,
        freeze_cgroup,
        config_file,
    })
}

/// The CRIU configuration file runc names: the `org.criu.config` annotation's (none when it is
/// empty), or runc's own.
fn criu_config_file(labels: &[String]) -> Option<String> {
    match labels.iter().find_map(|label| label.strip_prefix("org.criu.config=")) {
        Some("") => None,
        Some(path) => Some(path.to_string()),
        None => Some(RUNC_CRIU_CONFIG.to_string()),
    }
}

/// The cgroup v1 hierarchies bound beneath `cgroup_dest` in the container (runc binds one per
/// hierarchy the host mounts), as the container sees them.
fn cgroup_v1_binds(pid: i32, cgroup_dest: &Path) -> Result<Vec<String>, String> {
    let mountinfo = format!("/proc/{pid}/mountinfo");
    let text = fs::read_to_string(&mountinfo).map_err(|e| format!("{mountinfo}: {e}"))?;
    Ok(text
        .lines()
        .filter_map(|line| {
            let (mount, fs) = line.split_once(" - ")?;
            let mount_point = PathBuf::from(crate::rootfs::unescape_mountinfo(mount.split(' ').nth(4)?));
            (fs.split(' ').next() == Some("cgroup") && mount_point.parent() == Some(cgroup_dest))
                .then(|| mount_point.display().to_string())
        })
        .collect())
}

/// When process `pid` started, in clock ticks since boot (`/proc/<pid>/stat`'s 22nd field).
fn process_start(pid: i32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name, in parentheses, may hold spaces; the fields after it do not.
    stat.rsplit_once(") ")?.1.split(' ').nth(19)?.parse().ok()
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?.write_all(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_criu_configuration_is_runc_s_unless_an_annotation_names_one() {
        assert_eq!(criu_config_file(&["bundle=/b".into()]).as_deref(), Some(RUNC_CRIU_CONFIG));
        assert_eq!(criu_config_file(&["org.criu.config=/c.conf".into()]).as_deref(), Some("/c.conf"));
        assert_eq!(criu_config_file(&["org.criu.config=".into()]), None);
    }

    #[test]
    fn this_process_start_is_read_past_its_name() {
        let started = process_start(std::process::id() as i32);
        assert!(started.is_some_and(|ticks| ticks > 0));
        assert_eq!(process_start(-1), None);
    }
}
