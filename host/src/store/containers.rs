use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::paths::{ContainerPaths, Roots};
use crate::base_error::{BaseError as Error, BaseResult as Result};
use crate::util::{read_json, write_json};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MountKind {
    Bind,
    Volume,
}

/// One `-v` of the container, resolved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountSpec {
    pub kind: MountKind,
    /// The volume's name for a named volume, or the host path for a bind mount.
    pub source: String,
    pub destination: String,
    pub read_only: bool,
}

/// Where a container is in its life, as podman names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ContainerStatus {
    Created,
    Running,
    /// Frozen: by the runtime's pause, or by a CRIU that died mid-dump.
    Paused,
    Exited,
}

impl ContainerStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ContainerStatus::Created => "created",
            ContainerStatus::Running => "running",
            ContainerStatus::Paused => "paused",
            ContainerStatus::Exited => "exited",
        }
    }

    /// Its processes exist (docker's and podman's `Running`, true when paused too).
    pub fn is_alive(self) -> bool {
        matches!(self, ContainerStatus::Running | ContainerStatus::Paused)
    }

    pub fn can_checkpoint(self) -> bool {
        self == ContainerStatus::Running
    }

    pub fn can_restore(self, checkpointed: bool) -> bool {
        self == ContainerStatus::Exited && checkpointed
    }
}

impl std::fmt::Display for ContainerStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The checkpoint-related state that inspect shows under `State`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StateFlags {
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub exit_code: Option<i32>,
    pub checkpointed: bool,
    pub checkpointed_at: Option<DateTime<Utc>>,
    pub restored: bool,
    pub restored_at: Option<DateTime<Utc>>,
    pub checkpoint_path: Option<PathBuf>,
    /// Identifies the supervisor of the current run; a supervisor whose token no longer matches
    /// must not clean up a later run of the same container.
    pub run_token: Option<String>,
    /// Set while a checkpoint that stops the container is being exported: the supervisor must
    /// not remove a `--rm` container whose only copy is its local checkpoint.
    #[serde(default)]
    pub checkpoint_in_progress: bool,
    /// Set from the moment an import creates the record until its restore succeeds: a record
    /// still marked after a crash is a half-restored container.
    #[serde(default)]
    pub importing: bool,
    /// Set by `ckpt pause` until `ckpt unpause`: a frozen cgroup the user asked for, which
    /// `system check --repair` leaves alone (it thaws only what an interrupted dump left).
    #[serde(default)]
    pub paused: bool,
    /// Set by a checkpoint with `--tcp-established` that stops the container here: its network
    /// namespace stays set up (address, veth, published ports) until it is restored or removed,
    /// so that the host's connection tracking of its clients' connections survives the gap.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub network_held: bool,
}

impl StateFlags {
    /// Whether the container's network stays set up after its processes are gone: only for
    /// the checkpoint that asked for it.
    pub fn holds_network(&self) -> bool {
        self.network_held && (self.checkpointed || self.checkpoint_in_progress)
    }
}

/// How a container is networked: `none` (loopback only, as every container was before networks)
/// or `bridge` (the networks it names, through netavark).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    #[default]
    None,
    Bridge,
}

/// The container on one network: what the user fixed (`--ip`, `--mac-address`); the rest is
/// given at each start.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkAttachment {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub static_ip: Option<std::net::Ipv4Addr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub static_mac: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
}

/// One `-p`: `host_ip` empty for every address of the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishedPort {
    pub host_ip: String,
    pub host_port: u16,
    pub container_port: u16,
    /// How many consecutive ports from both; 1 for one.
    pub range: u16,
    pub protocol: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerNetwork {
    pub mode: NetworkMode,
    /// By network name, in the order the interfaces get (`eth0`, `eth1`, …).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub networks: Vec<(String, NetworkAttachment)>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PublishedPort>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns: Vec<std::net::Ipv4Addr>,
    /// `--add-host HOST:IP`, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts_add: Vec<(String, String)>,
}

/// What ckpt knows about one container; `container.json` in its directory.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerRecord {
    pub id: String,
    pub name: String,
    /// The image as the user typed it.
    pub image_name: String,
    /// The resolved reference, for example `busybox:latest`.
    pub image_ref: String,
    pub image_id: String,
    pub command: Vec<String>,
    pub env: Vec<String>,
    pub labels: BTreeMap<String, String>,
    pub mounts: Vec<MountSpec>,
    /// The command's working directory (`--workdir`, else the image's `WorkingDir`); `/` when
    /// absent, as in records from before it was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    pub auto_remove: bool,
    pub created_at: DateTime<Utc>,
    /// The OCI runtime's name or path, as chosen at creation.
    pub runtime: String,
    /// The mode of the container's `/`. CRIU checks it on restore, so an import recreates it;
    /// absent in records from before it was kept, which all had 0755.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_mode: Option<u32>,
    /// Restored from podman's checkpoint: CRIU expects the bind mounts podman gave it
    /// (`/etc/resolv.conf`, `/run/.containerenv`, `/dev/shm`) to be there again.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub podman_mounts: bool,
    /// Absent in records from before networks, whose containers all had loopback only.
    #[serde(default, skip_serializing_if = "is_unnetworked")]
    pub network: ContainerNetwork,
    #[serde(default)]
    pub state: StateFlags,
}

fn is_unnetworked(network: &ContainerNetwork) -> bool {
    *network == ContainerNetwork::default()
}

/// The mode of `/` in new containers: podman's (containers/storage makes it 0555), so that a
/// checkpoint restores in either engine.
pub const CONTAINER_ROOT_MODE: u32 = 0o555;
/// The mode of `/` in containers whose record does not say.
const LEGACY_ROOT_MODE: u32 = 0o755;

impl ContainerRecord {
    pub fn workdir(&self) -> &str {
        self.workdir.as_deref().unwrap_or("/")
    }

    pub fn root_mode(&self) -> u32 {
        self.root_mode.unwrap_or(LEGACY_ROOT_MODE)
    }

    pub fn named_volumes(&self) -> impl Iterator<Item = &MountSpec> {
        self.mounts.iter().filter(|m| m.kind == MountKind::Volume)
    }
}

pub struct ContainerStore {
    roots: Roots,
}

/// Whether `id` has the form of a full container ID: 64 hexadecimal digits, so that it also
/// names a directory of the store and nothing outside it.
pub fn is_full_id(id: &str) -> bool {
    id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

impl ContainerStore {
    pub fn roots(&self) -> &Roots {
        &self.roots
    }

    pub fn new(roots: &Roots) -> ContainerStore {
        ContainerStore { roots: roots.clone() }
    }

    pub fn paths(&self, id: &str) -> ContainerPaths {
        ContainerPaths::new(&self.roots, id)
    }

    pub fn list(&self) -> Result<Vec<ContainerRecord>> {
        let dir = self.roots.containers_dir();
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io("list", &dir)(e)),
        };
        let mut records = Vec::new();
        for entry in entries {
            let entry = entry.map_err(Error::io("list", &dir))?;
            let record_path = entry.path().join("container.json");
            // A directory without a record is one being created or removed right now.
            if record_path.exists() {
                records.push(read_json(&record_path, "container record")?);
            }
        }
        records.sort_by_key(|r: &ContainerRecord| r.created_at);
        Ok(records)
    }

    /// Finds a container by full ID, unique ID prefix, or name (leading `/` ignored, as podman).
    pub fn lookup(&self, name_or_id: &str) -> Result<ContainerRecord> {
        let wanted = name_or_id.trim_start_matches('/');
        if wanted.is_empty() {
            return Err(Error::NoSuchContainer(name_or_id.to_string()));
        }
        // A full ID (what schedules and `--all` pass on) is read directly, not found by reading
        // every record: a daemon with many containers looks one up for every checkpoint.
        if is_full_id(wanted)
            && let Ok(record) = self.load(wanted)
        {
            return Ok(record);
        }
        let records = self.list()?;
        if let Some(r) = records.iter().find(|r| r.id == wanted || r.name == wanted) {
            return Ok(r.clone());
        }
        let mut by_prefix = records.iter().filter(|r| r.id.starts_with(wanted));
        match (by_prefix.next(), by_prefix.next()) {
            (Some(r), None) => Ok(r.clone()),
            (Some(_), Some(_)) => {
                Err(Error::invalid(format!("container ID prefix {wanted:?} is ambiguous; give more characters")))
            }
            _ => Err(Error::NoSuchContainer(wanted.to_string())),
        }
    }

    pub fn load(&self, id: &str) -> Result<ContainerRecord> {
        read_json(&self.paths(id).record(), "container record")
    }

    pub fn save(&self, record: &ContainerRecord) -> Result<()> {
        write_json(&self.paths(&record.id).record(), record)
    }

    pub fn name_in_use(&self, name: &str) -> Result<bool> {
        Ok(self.list()?.iter().any(|r| r.name == name))
    }

    pub fn latest(&self) -> Result<Option<ContainerRecord>> {
        Ok(self.list()?.into_iter().next_back())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_running_container_checkpoints_and_only_an_exited_checkpointed_one_restores() {
        use ContainerStatus::*;
        for status in [Created, Running, Paused, Exited] {
            assert_eq!(status.can_checkpoint(), status == Running, "{status}");
            assert_eq!(status.can_restore(true), status == Exited, "{status}");
            assert!(!status.can_restore(false), "{status}");
            assert_eq!(status.is_alive(), matches!(status, Running | Paused), "{status}");
            assert_eq!(serde_json::to_value(status).unwrap(), status.as_str());
        }
    }
}
