//! Which members a checkpoint archive (or the layer of a checkpoint image) holds, in podman's
//! layout, written in one pass: the CRIU images and the pre-dump rounds they build on,
//! `config.dump`, `spec.dump`, the statistics, the log, the decision records, the rootfs changes
//! as `rootfs-diff.tar` plus `deleted.files`, and one tar a named volume.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::ArchiveError;
use super::checkpoint::{self as layout, ArchiveWriter};
use super::follow::KnownDigests;
use super::summary::ConfigDump;
use crate::rootfs::{Change, ChangeKind};

pub const DECISIONS: &str = "ckpt-decisions.json";
/// The definitions (netavark's JSON) of the user networks the container is on, so that a
/// migration's far side can make them.
pub const NETWORK_DEFINITIONS: &str = "ckpt-networks.json";

/// What goes into one export.
#[derive(Debug, Clone, Default)]
pub struct Content {
    /// `pre-checkpoint` for a pre-checkpoint export, else `checkpoint`.
    pub images_dir: &'static str,
    /// Earlier pre-dump rounds the dump refers to as its parents.
    pub parents: Vec<String>,
    pub ignore_rootfs: bool,
    pub ignore_volumes: bool,
    /// `ckpt-decisions.json`: the decision records so far.
    pub decisions: Vec<u8>,
    /// Digests of page images taken as CRIU wrote them.
    pub known_digests: KnownDigests,
    /// `ckpt-networks.json`, empty when the container is on no user network.
    pub network_definitions: Vec<u8>,
}

/// What an export turned out to hold, for the gates.
#[derive(Debug, Clone, Copy, Default)]
pub struct Included {
    pub rootfs: bool,
    pub volumes: bool,
}

/// Where the members come from, on this host.
#[derive(Debug)]
pub struct Sources<'a> {
    /// The OCI bundle: `config.json`, the images directories, `stats-dump`.
    pub bundle: &'a Path,
    pub log: &'a Path,
    /// The container's upper layer and its changes against the image (unused when the rootfs
    /// is left out).
    pub upper: &'a Path,
    pub changes: &'a [Change],
    pub config: &'a ConfigDump,
    /// Each named volume and its directory.
    pub volumes: Vec<(String, PathBuf)>,
    /// A private directory for the inner tars.
    pub scratch: &'a Path,
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ArchiveError + use<> {
    let path = path.to_path_buf();
    move |source| ArchiveError::Io { archive: "checkpoint archive".into(), action, path, source }
}

pub fn add_members<W: Write>(
    writer: &mut ArchiveWriter<W>,
    content: &Content,
    sources: &Sources<'_>,
) -> Result<Included, ArchiveError> {
    let bundle = sources.bundle;
    let mut included = Included::default();
    writer.know_digests(content.known_digests.clone());
    for dir in content.parents.iter().map(String::as_str).chain([content.images_dir]) {
        writer.add_tree(dir, &bundle.join(dir)).map_err(io("archive", &bundle.join(dir)))?;
    }
    let config = serde_json::to_vec_pretty(sources.config).expect("a ConfigDump serialises");
    writer.add_bytes(layout::CONFIG_DUMP, &config).map_err(io("archive", bundle))?;
    let spec_path = bundle.join("config.json");
    let spec = oci_spec::runtime::Spec::load(&spec_path).map_err(|e| ArchiveError::Io {
        archive: "checkpoint archive".into(),
        action: "read",
        path: spec_path.clone(),
        source: std::io::Error::other(e.to_string()),
    })?;
    let record = sources.config.ckpt.as_ref();
    let spec = match record {
        Some(record) => crate::spec::portable(spec, record),
        None => spec,
    };
    let spec = serde_json::to_vec_pretty(&spec).expect("a runtime spec serialises");
    writer.add_bytes(layout::SPEC_DUMP, &spec).map_err(io("archive", bundle))?;
    let stats = bundle.join(layout::STATS_DUMP);
    if std::fs::metadata(&stats).is_ok_and(|m| m.is_file()) {
        writer.add_path(layout::STATS_DUMP, &stats).map_err(io("archive", &stats))?;
    }
    let network_status = bundle.join(layout::NETWORK_STATUS);
    if std::fs::metadata(&network_status).is_ok_and(|m| m.is_file()) {
        writer.add_path(layout::NETWORK_STATUS, &network_status).map_err(io("archive", &network_status))?;
    }
    if sources.log.exists() {
        writer.add_path(layout::CONTAINER_LOG, sources.log).map_err(io("archive", sources.log))?;
    }
    if !content.decisions.is_empty() {
        writer.add_bytes(DECISIONS, &content.decisions).map_err(io("archive", bundle))?;
    }
    if !content.network_definitions.is_empty() {
        writer.add_bytes(NETWORK_DEFINITIONS, &content.network_definitions).map_err(io("archive", bundle))?;
    }
    if !content.ignore_rootfs {
        let kept: Vec<PathBuf> = sources
            .changes
            .iter()
            .filter(|c| c.kind != ChangeKind::Deleted)
            .map(|c| PathBuf::from(c.path.trim_start_matches('/')))
            .collect();
        let deleted: Vec<&str> =
            sources.changes.iter().filter(|c| c.kind == ChangeKind::Deleted).map(|c| c.path.as_str()).collect();
        if !kept.is_empty() {
            let diff_tar = sources.scratch.join(layout::ROOTFS_DIFF);
            layout::write_inner_tar(&diff_tar, sources.upper, &kept).map_err(io("write", &diff_tar))?;
            writer.add_path(layout::ROOTFS_DIFF, &diff_tar).map_err(io("archive", &diff_tar))?;
        }
        if !deleted.is_empty() {
            let list = serde_json::to_vec(&deleted).expect("paths serialise");
            writer.add_bytes(layout::DELETED_FILES, &list).map_err(io("archive", bundle))?;
        }
        included.rootfs = !sources.changes.is_empty();
    }
    if !content.ignore_volumes {
        for (name, mountpoint) in &sources.volumes {
            let tar_path = sources.scratch.join(format!("{name}.tar"));
            let entries = layout::tree_entries(mountpoint).map_err(io("read volume", mountpoint))?;
            layout::write_inner_tar(&tar_path, mountpoint, &entries).map_err(io("write", &tar_path))?;
            let member = format!("{}/{name}.tar", layout::VOLUMES_DIR);
            writer.add_path(&member, &tar_path).map_err(io("archive", &tar_path))?;
            included.volumes = true;
        }
    }
    Ok(included)
}
