//! What an export holds: the archive in podman's layout and the one-layer checkpoint image.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::json;

use crate::archive::Compression;
use crate::archive::checkpoint::{self as layout, ArchiveWriter, Compressor};
use crate::archive::publish::PendingFile;
use crate::error::{Error, Result};
use crate::ops::Context;
use crate::policy::GateVerdict;
use crate::rootfs::ChangeKind;
use crate::runtime::OciRuntime;
use crate::store::ContainerRecord;

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
}

/// What an export turned out to hold, for the gates.
#[derive(Debug, Clone, Copy, Default)]
pub struct Included {
    pub rootfs: bool,
    pub volumes: bool,
}

pub const DECISIONS: &str = "ckpt-decisions.json";

/// Writes the archive into `pending` (not yet published): one streaming pass over the CRIU
/// images, compressed on all cores.
pub fn write_archive(
    ctx: &Context,
    record: &ContainerRecord,
    content: &Content,
    compression: Compression,
    pending: &mut PendingFile,
) -> Result<Included> {
    let target = pending.target.clone();
    let io_err = |e: std::io::Error| Error::io("write checkpoint archive", &target)(e);
    let compressor = Compressor::new(&mut pending.writer, compression).map_err(io_err)?;
    let mut writer = ArchiveWriter::new(compressor);
    let included = add_members(ctx, record, content, &mut writer)?;
    writer.finish().and_then(Compressor::finish).and_then(|w| w.flush()).map_err(io_err)?;
    Ok(included)
}

fn add_members<W: Write>(
    ctx: &Context,
    record: &ContainerRecord,
    content: &Content,
    writer: &mut ArchiveWriter<W>,
) -> Result<Included> {
    let paths = ctx.containers.paths(&record.id);
    let bundle = paths.bundle();
    let werr = |what: &'static str, path: &Path| Error::io(what, path.to_path_buf());
    let mut included = Included::default();
    for dir in content.parents.iter().map(String::as_str).chain([content.images_dir]) {
        writer.add_tree(dir, &bundle.join(dir)).map_err(werr("archive", &bundle.join(dir)))?;
    }
    let runtime_name = record.runtime.rsplit('/').next().unwrap_or(&record.runtime);
    writer
        .add_bytes(
            layout::CONFIG_DUMP,
            &serde_json::to_vec_pretty(&crate::archive::summary::ConfigDump::from_record(record, runtime_name))
                .expect("json"),
        )
        .map_err(werr("archive", &bundle))?;
    let spec = std::fs::read(bundle.join("config.json")).map_err(werr("read", &bundle.join("config.json")))?;
    writer.add_bytes(layout::SPEC_DUMP, &spec).map_err(werr("archive", &bundle))?;
    if let Ok(meta) = std::fs::metadata(bundle.join(layout::STATS_DUMP))
        && meta.is_file()
    {
        writer.add_path(layout::STATS_DUMP, &bundle.join(layout::STATS_DUMP)).map_err(werr("archive", &bundle))?;
    }
    if paths.log().exists() {
        writer.add_path(layout::CONTAINER_LOG, &paths.log()).map_err(werr("archive", &paths.log()))?;
    }
    if !content.decisions.is_empty() {
        writer.add_bytes(DECISIONS, &content.decisions).map_err(werr("archive", &bundle))?;
    }
    let scratch = crate::util::tempdir_in(&ctx.roots.root.join("tmp"), "export")?;
    if !content.ignore_rootfs {
        let changes = crate::ops::container::diff(ctx, record)?;
        let kept: Vec<PathBuf> = changes
            .iter()
            .filter(|c| c.kind != ChangeKind::Deleted)
            .map(|c| PathBuf::from(c.path.trim_start_matches('/')))
            .collect();
        let deleted: Vec<&str> =
            changes.iter().filter(|c| c.kind == ChangeKind::Deleted).map(|c| c.path.as_str()).collect();
        if !kept.is_empty() {
            let diff_tar = scratch.path.join(layout::ROOTFS_DIFF);
            layout::write_inner_tar(&diff_tar, &paths.upper(), &kept).map_err(werr("write", &diff_tar))?;
            writer.add_path(layout::ROOTFS_DIFF, &diff_tar).map_err(werr("archive", &diff_tar))?;
        }
        if !deleted.is_empty() {
            writer
                .add_bytes(layout::DELETED_FILES, &serde_json::to_vec(&deleted).expect("json"))
                .map_err(werr("archive", &bundle))?;
        }
        included.rootfs = !changes.is_empty();
    }
    if !content.ignore_volumes {
        for volume in record.named_volumes() {
            let mountpoint = ctx.volumes.mountpoint(&volume.source);
            let tar_path = scratch.path.join(format!("{}.tar", volume.source));
            let entries = layout::tree_entries(&mountpoint).map_err(werr("read volume", &mountpoint))?;
            layout::write_inner_tar(&tar_path, &mountpoint, &entries).map_err(werr("write", &tar_path))?;
            let name = format!("{}/{}.tar", layout::VOLUMES_DIR, volume.source);
            writer.add_path(&name, &tar_path).map_err(werr("archive", &tar_path))?;
            included.volumes = true;
        }
    }
    Ok(included)
}

/// The `io.podman.annotations.checkpoint.*` annotations, with this host's true values.
fn image_annotations(
    record: &ContainerRecord,
    runtime: &dyn OciRuntime,
    criu_version: u32,
) -> BTreeMap<String, String> {
    let key = |k: &str| format!("io.podman.annotations.checkpoint.{k}");
    let host = crate::hostinfo::HostInfo::probe(Path::new("/"));
    BTreeMap::from([
        (key("name"), record.name.clone()),
        (key("rawImageName"), record.image_name.clone()),
        (key("rootfsImageID"), record.image_id.clone()),
        (key("rootfsImageName"), record.image_ref.clone()),
        (key("podman.version"), format!("ckpt {}", env!("CARGO_PKG_VERSION"))),
        (key("criu.version"), criu_version.to_string()),
        (key("runtime.name"), runtime.name().to_string()),
        (key("runtime.version"), runtime.version().unwrap_or_default()),
        (key("conmon.version"), format!("ckpt supervisor {}", env!("CARGO_PKG_VERSION"))),
        (key("host.arch"), host.arch.to_string()),
        (key("cgroups.version"), host.cgroups_version().to_string()),
        (key("distribution.version"), host.distribution_version),
        (key("distribution.name"), host.distribution),
        (key("host.kernel"), host.kernel),
    ])
}

/// A one-layer OCI image whose filesystem is the export's content. It is written to the store
/// only if `gates` allow it as it is; a narrowing verdict is returned unpublished, for the caller
/// to build the narrower image.
pub fn create_image(
    ctx: &Context,
    runtime: &dyn OciRuntime,
    record: &ContainerRecord,
    content: &Content,
    name: &str,
    gates: &mut dyn FnMut(u64, &str, Included) -> Result<GateVerdict>,
) -> Result<GateVerdict> {
    let scratch = crate::util::tempdir_in(&ctx.roots.root.join("tmp"), "image")?;
    let tar_path = scratch.path.join("layer.tar");
    let included = {
        let file = std::fs::File::create(&tar_path).map_err(Error::io("create", &tar_path))?;
        let mut writer = ArchiveWriter::new(std::io::BufWriter::new(file));
        let included = add_members(ctx, record, content, &mut writer)?;
        writer.finish().and_then(|mut w| w.flush()).map_err(Error::io("write", &tar_path))?;
        included
    };
    let size = std::fs::metadata(&tar_path).map_err(Error::io("stat", &tar_path))?.len();
    let verdict = gates(size, &crate::util::file_digest(&tar_path)?, included)?;
    if verdict != GateVerdict::Allow {
        return Ok(verdict);
    }
    let file = std::fs::File::open(&tar_path).map_err(Error::io("open", &tar_path))?;
    let layer = ctx.images.write_layer_from_tar(std::io::BufReader::new(file))?;
    let annotations = image_annotations(record, runtime, ctx.criu()?.version()?);
    ctx.images.add_image(&crate::image::normalize_reference(name), &[layer], json!({}), annotations)?;
    Ok(GateVerdict::Allow)
}
