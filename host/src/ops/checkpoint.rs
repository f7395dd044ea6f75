//! `ckpt checkpoint`: dump running containers with the runtime and CRIU, then export them as an
//! archive or a checkpoint image. A failure at any step leaves the container running.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{Value, json};

use super::Context;
use super::lifecycle::{self, status};
use crate::archive::Compression;
use crate::archive::checkpoint::{self as layout, ArchiveWriter, Compressor};
use crate::archive::publish::PendingFile;
use crate::criu::{self, DumpStats};
use crate::error::{Error, Result};
use crate::rootfs::ChangeKind;
use crate::runtime::{CheckpointOptions, OciRuntime};
use crate::store::{ContainerLock, ContainerRecord};
use crate::supervisor::Launch;
use crate::util::{remove_dir_all, remove_file_if_exists};

/// The checkpoint options of the command line, before validation.
#[derive(Debug, Clone, Default)]
pub struct CheckpointRequest {
    pub containers: Vec<String>,
    pub all: bool,
    pub latest: bool,
    pub keep: bool,
    pub leave_running: bool,
    pub tcp_established: bool,
    pub file_locks: bool,
    pub export: Option<PathBuf>,
    /// As typed; `None` when the flag was not given.
    pub compress: Option<String>,
    pub ignore_rootfs: bool,
    pub ignore_volumes: bool,
    pub pre_checkpoint: bool,
    pub with_previous: bool,
    pub create_image: Option<String>,
    pub print_stats: bool,
}

/// `container_statistics[]` of `--print-stats`.
#[derive(Debug, Clone, Serialize)]
pub struct ContainerStats {
    #[serde(rename = "Id")]
    pub id: String,
    pub runtime_checkpoint_duration: u64,
    pub criu_statistics: DumpStats,
}

/// One container's outcome: what to print for it.
#[derive(Debug, Clone)]
pub struct Checkpointed {
    pub printed_name: String,
    pub stats: ContainerStats,
}

/// Checks the option combinations podman rejects, in podman's order, before anything changes.
pub fn validate(ctx: &Context, req: &CheckpointRequest) -> Result<Compression> {
    if req.all && req.latest {
        return Err(Error::invalid("--all and --latest cannot be used together"));
    }
    if req.all && !req.containers.is_empty() {
        return Err(Error::invalid("no arguments are needed with --all"));
    }
    if req.latest && !req.containers.is_empty() {
        return Err(Error::invalid("--latest and containers cannot be used together"));
    }
    if !req.all && !req.latest && req.containers.is_empty() {
        return Err(Error::invalid("you must provide at least one name or id"));
    }
    let compression = match &req.compress {
        Some(_) if req.export.is_none() => return Err(Error::invalid("--compress can only be used with --export")),
        Some(value) => Compression::parse(value)?,
        None => Compression::Zstd,
    };
    if !nix::unistd::geteuid().is_root() {
        return Err(Error::invalid("checkpointing a container requires root"));
    }
    if req.ignore_rootfs && req.export.is_none() {
        return Err(Error::invalid("--ignore-rootfs can only be used with --export"));
    }
    if req.ignore_volumes && req.export.is_none() {
        return Err(Error::invalid("--ignore-volumes can only be used with --export"));
    }
    if req.with_previous && req.pre_checkpoint {
        return Err(Error::invalid("--with-previous can not be used with --pre-checkpoint"));
    }
    if req.with_previous || req.pre_checkpoint {
        ctx.criu()?.memory_tracking()?;
    }
    Ok(compression)
}

/// Resolves `--all`, `--latest` or names to containers; an unknown name aborts everything.
fn select(ctx: &Context, req: &CheckpointRequest) -> Result<Vec<(ContainerRecord, String)>> {
    if req.all {
        let mut out = Vec::new();
        for record in ctx.containers.list()? {
            if status(ctx, &record)?.running() {
                let id = record.id.clone();
                out.push((record, id));
            }
        }
        return Ok(out);
    }
    if req.latest {
        let record = ctx.containers.latest()?.ok_or_else(|| Error::invalid("no containers to checkpoint"))?;
        let id = record.id.clone();
        return Ok(vec![(record, id)]);
    }
    req.containers
        .iter()
        .map(|name| Ok((ctx.containers.lookup(name)?, name.trim_start_matches('/').to_string())))
        .collect()
}

pub fn checkpoint(ctx: &Context, req: &CheckpointRequest) -> (Vec<Checkpointed>, Result<()>) {
    let compression = match validate(ctx, req) {
        Ok(c) => c,
        Err(e) => return (Vec::new(), Err(e)),
    };
    let selected = match select(ctx, req) {
        Ok(s) => s,
        Err(e) => return (Vec::new(), Err(e)),
    };
    let mut done = Vec::new();
    let result = crate::cli::for_each(&selected, |(record, printed)| {
        let stats = checkpoint_one(ctx, req, compression, record)?;
        done.push(Checkpointed { printed_name: printed.clone(), stats });
        Ok(())
    });
    (done, result)
}

fn checkpoint_one(
    ctx: &Context,
    req: &CheckpointRequest,
    compression: Compression,
    record: &ContainerRecord,
) -> Result<ContainerStats> {
    let lock = ContainerLock::try_acquire(&ctx.roots.locks_dir(), &record.id, &record.name)?;
    let record = ctx.containers.load(&record.id)?;
    let st = status(ctx, &record)?;
    if !st.running() {
        return Err(Error::ContainerState {
            name: record.name.clone(),
            state: st.status.to_string(),
            action: "cannot checkpoint: it is not running".into(),
        });
    }
    if record.auto_remove && req.export.is_none() {
        return Err(Error::invalid(format!(
            "cannot checkpoint container {:?}: it was started with --rm, so only --export can keep its checkpoint",
            record.name
        )));
    }
    let paths = ctx.containers.paths(&record.id);
    if req.with_previous && !paths.pre_checkpoint_dir().join("inventory.img").exists() {
        return Err(Error::invalid(format!(
            "container {:?} has no pre-checkpoint at {}; run 'ckpt checkpoint --pre-checkpoint' first",
            record.name,
            paths.pre_checkpoint_dir().display()
        )));
    }
    let runtime = ctx.runtime_named(&record.runtime)?;
    if !runtime.supports_checkpoint() {
        return Err(Error::Unsupported(format!(
            "OCI runtime {:?} ({}) was built without checkpoint support; use runc",
            runtime.name(),
            runtime.path().display()
        )));
    }
    criu::check_version(ctx.criu()?.as_ref())?;
    // The export target is claimed before the dump, so a bad path fails with nothing changed.
    let pending = req.export.as_deref().map(PendingFile::create).transpose()?;

    let image_dir = if req.pre_checkpoint { paths.pre_checkpoint_dir() } else { paths.checkpoint_dir() };
    remove_dir_all(&image_dir)?;
    let options = CheckpointOptions {
        image_path: image_dir.clone(),
        work_path: paths.bundle(),
        leave_running: req.leave_running || req.pre_checkpoint,
        tcp_established: req.tcp_established,
        file_locks: req.file_locks,
        pre_dump: req.pre_checkpoint,
        parent_path: req.with_previous.then(|| PathBuf::from("../").join(layout::PRE_CHECKPOINT_DIR)),
    };
    let started = Instant::now();
    if let Err(e) = runtime.checkpoint(&record.id, &options) {
        // CRIU resumed the container; a partial image directory must not look restorable.
        remove_dir_all(&image_dir)?;
        return Err(e.into());
    }
    let runtime_duration = started.elapsed().as_micros() as u64;
    let stats_path = paths.in_bundle(layout::STATS_DUMP);
    let criu_statistics = if req.print_stats {
        criu::read_dump_stats(&stats_path)
            .map_err(|e| Error::invalid(format!("displaying checkpointing statistics not possible: {e}")))
    } else {
        Ok(DumpStats::default())
    };
    let container_stopped = !options.leave_running;
    let exported = criu_statistics.and_then(|stats| {
        if let Some(pending) = pending {
            write_archive(ctx, &record, req, compression, pending)?;
        } else if let Some(image) = &req.create_image {
            create_image(ctx, runtime.as_ref(), &record, req, image)?;
        }
        Ok(stats)
    });
    let criu_statistics = match exported {
        Ok(stats) => stats,
        Err(e) if container_stopped => return Err(roll_back(ctx, lock, &record, e)),
        Err(e) => return Err(e),
    };
    if container_stopped {
        let mut record = ctx.containers.load(&record.id)?;
        record.state.checkpointed = true;
        record.state.checkpointed_at = Some(crate::util::now());
        record.state.restored = false;
        record.state.checkpoint_path = Some(image_dir);
        record.state.finished_at = record.state.checkpointed_at;
        ctx.containers.save(&record)?;
    }
    if !req.keep && !req.pre_checkpoint {
        remove_file_if_exists(&paths.in_bundle("dump.log"))?;
        remove_file_if_exists(&stats_path)?;
    }
    // The supervisor records the exit in the background; whatever starts the container again
    // waits for it first (see `lifecycle::launch`).
    drop(lock);
    Ok(ContainerStats { id: record.id.clone(), runtime_checkpoint_duration: runtime_duration, criu_statistics })
}

/// After a successful dump the export failed: bring the container back from its local images,
/// so that nothing is lost, and report both.
fn roll_back(ctx: &Context, lock: ContainerLock, record: &ContainerRecord, cause: Error) -> Error {
    drop(lock);
    lifecycle::wait_for_supervisor(ctx, &record.id, lifecycle::SUPERVISOR_CLEANUP);
    let paths = ctx.containers.paths(&record.id);
    let restore = crate::runtime::RestoreOptions {
        image_path: paths.checkpoint_dir(),
        work_path: paths.bundle(),
        ..Default::default()
    };
    let result = (|| {
        let _lock = ContainerLock::acquire(&ctx.roots.locks_dir(), &record.id)?;
        let mut fresh = ctx.containers.load(&record.id)?;
        lifecycle::launch(ctx, &mut fresh, &Launch::Restore(restore))?;
        remove_dir_all(&paths.checkpoint_dir())
    })();
    match result {
        Ok(()) => Error::invalid(format!(
            "checkpoint of container {:?} was not exported, and the container was restored and keeps running: {cause}",
            record.name
        )),
        Err(e) => Error::invalid(format!(
            "checkpoint of container {:?} was not exported ({cause}), and restoring it failed too ({e}); its checkpoint stays in {} for 'ckpt restore'",
            record.name,
            paths.checkpoint_dir().display()
        )),
    }
}

/// podman's `config.dump` keys that checkpointctl reads, plus ckpt's own record.
fn config_dump(record: &ContainerRecord, runtime_name: &str) -> Value {
    let volumes: Vec<Value> = record.named_volumes().map(|m| json!({"Name": m.source, "Dest": m.destination, "Options": if m.read_only { vec!["ro"] } else { vec![] }})).collect();
    json!({
        "id": record.id,
        "name": record.name,
        "rootfsImageID": record.image_id,
        "rootfsImageName": record.image_ref,
        "rawImageName": record.image_name,
        "runtime": runtime_name,
        "createdTime": record.created_at.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
        "namedVolumes": volumes,
        "labels": record.labels,
        "ckpt": record,
    })
}

/// Streams the archive: one pass over the CRIU images, compressed on all cores.
fn write_archive(
    ctx: &Context,
    record: &ContainerRecord,
    req: &CheckpointRequest,
    compression: Compression,
    mut pending: PendingFile,
) -> Result<()> {
    let target = pending.target.clone();
    let io_err = |e: std::io::Error| Error::io("write checkpoint archive", &target)(e);
    let compressor = Compressor::new(&mut pending.writer, compression).map_err(io_err)?;
    let mut writer = ArchiveWriter::new(compressor);
    add_members(ctx, record, req, &mut writer)?;
    writer.finish().and_then(Compressor::finish).map_err(io_err)?;
    pending.publish()
}

fn add_members<W: std::io::Write>(
    ctx: &Context,
    record: &ContainerRecord,
    req: &CheckpointRequest,
    writer: &mut ArchiveWriter<W>,
) -> Result<()> {
    let paths = ctx.containers.paths(&record.id);
    let bundle = paths.bundle();
    let werr = |what: &'static str, path: &Path| Error::io(what, path.to_path_buf());
    let images = if req.pre_checkpoint { layout::PRE_CHECKPOINT_DIR } else { layout::CHECKPOINT_DIR };
    writer.add_tree(images, &bundle.join(images)).map_err(werr("archive", &bundle.join(images)))?;
    let runtime_name = record.runtime.rsplit('/').next().unwrap_or(&record.runtime);
    writer
        .add_bytes(layout::CONFIG_DUMP, &serde_json::to_vec_pretty(&config_dump(record, runtime_name)).expect("json"))
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
    let scratch = crate::util::tempdir_in(&ctx.roots.root.join("tmp"), "export")?;
    if !req.ignore_rootfs {
        let changes = super::container::diff(ctx, record)?;
        let included: Vec<PathBuf> = changes
            .iter()
            .filter(|c| c.kind != ChangeKind::Deleted)
            .map(|c| PathBuf::from(c.path.trim_start_matches('/')))
            .collect();
        let deleted: Vec<&str> =
            changes.iter().filter(|c| c.kind == ChangeKind::Deleted).map(|c| c.path.as_str()).collect();
        if !included.is_empty() {
            let diff_tar = scratch.path.join(layout::ROOTFS_DIFF);
            layout::write_inner_tar(&diff_tar, &paths.upper(), &included).map_err(werr("write", &diff_tar))?;
            writer.add_path(layout::ROOTFS_DIFF, &diff_tar).map_err(werr("archive", &diff_tar))?;
        }
        if !deleted.is_empty() {
            writer
                .add_bytes(layout::DELETED_FILES, &serde_json::to_vec(&deleted).expect("json"))
                .map_err(werr("archive", &bundle))?;
        }
    }
    if !req.ignore_volumes {
        for volume in record.named_volumes() {
            let mountpoint = ctx.volumes.mountpoint(&volume.source);
            let tar_path = scratch.path.join(format!("{}.tar", volume.source));
            let entries = layout::tree_entries(&mountpoint).map_err(werr("read volume", &mountpoint))?;
            layout::write_inner_tar(&tar_path, &mountpoint, &entries).map_err(werr("write", &tar_path))?;
            let name = format!("{}/{}.tar", layout::VOLUMES_DIR, volume.source);
            writer.add_path(&name, &tar_path).map_err(werr("archive", &tar_path))?;
        }
    }
    Ok(())
}

/// The `io.podman.annotations.checkpoint.*` annotations, with this host's true values.
fn image_annotations(
    record: &ContainerRecord,
    runtime: &dyn OciRuntime,
    criu_version: u32,
) -> BTreeMap<String, String> {
    let key = |k: &str| format!("io.podman.annotations.checkpoint.{k}");
    let os_release = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    let os_field = |name: &str| {
        os_release
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}=")))
            .map(|v| v.trim_matches('"').to_string())
            .unwrap_or_else(|| "unknown".into())
    };
    let cgroups = if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() { "v2" } else { "v1" };
    let kernel = nix::sys::utsname::uname().map(|u| u.release().to_string_lossy().into_owned()).unwrap_or_default();
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
        (key("host.arch"), crate::image::oci_arch().to_string()),
        (key("host.kernel"), kernel),
        (key("cgroups.version"), cgroups.to_string()),
        (key("distribution.version"), os_field("VERSION_ID")),
        (key("distribution.name"), os_field("ID")),
    ])
}

/// `--create-image`: a one-layer OCI image whose filesystem is the export's content.
fn create_image(
    ctx: &Context,
    runtime: &dyn OciRuntime,
    record: &ContainerRecord,
    req: &CheckpointRequest,
    name: &str,
) -> Result<()> {
    let scratch = crate::util::tempdir_in(&ctx.roots.root.join("tmp"), "image")?;
    let tar_path = scratch.path.join("layer.tar");
    {
        let file = std::fs::File::create(&tar_path).map_err(Error::io("create", &tar_path))?;
        let mut writer = ArchiveWriter::new(std::io::BufWriter::new(file));
        add_members(ctx, record, req, &mut writer)?;
        writer.finish().and_then(|mut w| std::io::Write::flush(&mut w)).map_err(Error::io("write", &tar_path))?;
    }
    let file = std::fs::File::open(&tar_path).map_err(Error::io("open", &tar_path))?;
    let layer = ctx.images.write_layer_from_tar(std::io::BufReader::new(file))?;
    let annotations = image_annotations(record, runtime, ctx.criu()?.version()?);
    ctx.images.add_image(&crate::image::normalize_reference(name), &[layer], json!({}), annotations)?;
    Ok(())
}

/// podman's `--print-stats` document, with ckpt's name for the total.
pub fn stats_document(total: Duration, stats: &[ContainerStats]) -> String {
    let doc = json!({"ckpt_checkpoint_duration": total.as_micros() as u64, "container_statistics": stats});
    to_four_space_json(&doc)
}

pub fn to_four_space_json(value: &Value) -> String {
    let mut out = Vec::new();
    let formatter = serde_json::ser::PrettyFormatter::with_indent(b"    ");
    let mut ser = serde_json::Serializer::with_formatter(&mut out, formatter);
    value.serialize(&mut ser).expect("json");
    String::from_utf8(out).expect("utf-8")
}
