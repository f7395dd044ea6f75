//! `ckpt restore`: bring containers back from their local checkpoint, from an exported archive
//! (`--import`), or from a checkpoint image. Imports are untrusted input: the archive is
//! extracted strictly into a private staging directory, checked against its manifest, and the
//! new container is built from ckpt's own record format, never from the archive's OCI spec.

use super::network::{self, Wanted};
use crate::image::ImageError;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use super::Context;
use super::audit::AuditEvent;
use super::lifecycle::{self, status};
use crate::archive::checkpoint as layout;
use crate::archive::deferred::ImagesInFlight;
use crate::archive::staged::StagedCheckpoint;
use crate::archive::summary::ConfigDump;
use crate::archive::{self, ExtractOptions};
use crate::config::ConsumePages;
use crate::criu::hold::Hold;
use crate::criu::{self, RestoreStats};
use crate::error::{Error, Result};
use crate::metadata;
use crate::runtime::RestoreOptions;
use crate::safefs::Beneath;
use crate::store::{ContainerLock, ContainerRecord, ContainerStatus, MountKind, MountSpec, StateFlags, StoreLock};
use crate::supervisor::Launch;
use crate::util::{create_dir_all, tempdir_in, validate_object_name};
use std::os::unix::fs::OpenOptionsExt;

mod podman;

#[derive(Debug, Clone, Default)]
pub struct RestoreRequest {
    pub targets: Vec<String>,
    pub all: bool,
    pub latest: bool,
    pub import: Option<PathBuf>,
    pub import_previous: Option<PathBuf>,
    pub name: Option<String>,
    pub keep: bool,
    pub tcp_established: bool,
    pub file_locks: bool,
    pub ignore_rootfs: bool,
    pub ignore_volumes: bool,
    pub print_stats: bool,
    /// Post-copy: the Unix socket, forwarded by ssh to the source's page server, through which
    /// the memory comes (`ckpt migrate`).
    pub lazy_pages_from: Option<String>,
    /// How many local checkpoints are restored at once (`--parallel`; one per core by default).
    pub parallel: Option<usize>,
    /// A new address and MAC rather than the checkpoint's (podman's `--ignore-static-ip` and
    /// `--ignore-static-mac`); `--name` implies both.
    pub ignore_static_ip: bool,
    pub ignore_static_mac: bool,
    /// `-p`: new published ports for an imported container, in place of the archive's.
    pub publish: Vec<String>,
    /// A migration's far side: the user networks the archive carries and this host lacks are
    /// made, under the same names and subnets.
    pub create_networks: bool,
    /// `--identity`: age identities or SSH private keys that open a sealed archive.
    pub identities: Vec<PathBuf>,
    /// Unpack an imported checkpoint into private memory, never onto a disk (always so for a
    /// sealed archive, and under `[exports] encrypt = "always"`).
    pub private_memory: bool,
    /// What runs the restored container: ckpt, or podman (`--engine podman`), which is handed
    /// the checkpoint through its API once ckpt has checked and opened it.
    pub engine: super::Engine,
}

/// The addresses the restored container asks its networks for: the checkpoint's, unless the
/// user said otherwise or gave it a new name (and so a new identity).
fn wanted_addresses(req: &RestoreRequest, paths: &crate::store::ContainerPaths) -> Wanted {
    let renamed = req.name.is_some();
    network::wanted_from_status(
        &paths.network_status(),
        req.ignore_static_ip || renamed,
        req.ignore_static_mac || renamed,
    )
}

#[derive(Debug, Clone, Serialize)]
pub struct ContainerStats {
    #[serde(rename = "Id")]
    pub id: String,
    pub runtime_restore_duration: u64,
    pub criu_statistics: RestoreStats,
}

#[derive(Debug, Clone)]
pub struct Restored {
    pub printed_name: String,
    pub stats: ContainerStats,
}

/// `--import -` reads the archive from standard input, as `ckpt migrate` sends it over ssh.
pub(crate) const STDIN: &str = "-";

enum Source {
    Local(Box<ContainerRecord>, String),
    /// A podman container, restored by podman from the checkpoint it kept (`podman:NAME`).
    Podman(String),
    Archive(PathBuf),
    /// An archive on standard input.
    Stream,
    Image(String),
}

fn validate(ctx: &Context, req: &RestoreRequest) -> Result<Vec<Source>> {
    if req.all && req.latest {
        return Err(Error::invalid("--all and --latest cannot be used together"));
    }
    if !nix::unistd::geteuid().is_root() {
        return Err(Error::invalid("restoring a container requires root"));
    }
    // Containers first (podman #15055): a name shared by a container and an image is the container.
    let mut sources = Vec::new();
    for target in &req.targets {
        if let Some(name) = target.strip_prefix(crate::podman::PREFIX) {
            sources.push(Source::Podman(name.to_string()));
            continue;
        }
        match ctx.containers.lookup(target) {
            Ok(_) if req.engine == super::Engine::Podman => {
                return Err(Error::invalid(format!(
                    "{target:?} is one of ckpt's own containers, and --engine podman restores archives and checkpoint images into podman; drop --engine, or restore podman's own with podman:NAME"
                )));
            }
            Ok(record) => sources.push(Source::Local(Box::new(record), target.trim_start_matches('/').to_string())),
            Err(crate::error::BaseError::NoSuchContainer(_)) => match resolve_or_pull(ctx, target) {
                Ok((local, info)) if info.annotations.contains_key(metadata::CHECKPOINT_IMAGE_KEY) => {
                    sources.push(Source::Image(local))
                }
                Ok((_, info)) => return Err(Error::invalid(format!("image is not a checkpoint: {}", info.id))),
                Err(Error::Image(ImageError::NoSuchImage(_))) => {
                    return Err(Error::NoSuchContainerOrImage(target.clone()));
                }
                Err(e) => return Err(e),
            },
            Err(e) => return Err(e.into()),
        }
    }
    let not_import = req.import.is_none() && !sources.iter().any(|s| matches!(s, Source::Image(_)));
    for (set, flag) in [
        (req.import_previous.is_some(), "--import-previous"),
        (req.ignore_rootfs, "--ignore-rootfs"),
        (req.ignore_volumes, "--ignore-volumes"),
        (req.name.is_some(), "--name"),
        (req.lazy_pages_from.is_some(), "--lazy-pages-from"),
        (!req.publish.is_empty(), "--publish"),
    ] {
        if set && not_import {
            return Err(Error::invalid(format!("{flag} can only be used with image or --import")));
        }
    }
    if req.name.is_some() && req.tcp_established {
        return Err(Error::invalid("--tcp-established cannot be used with --name"));
    }
    if req.import.is_some() && (req.all || req.latest) {
        return Err(Error::invalid("cannot use --import with --all or --latest"));
    }
    if req.import.is_some() && !req.targets.is_empty() {
        return Err(Error::invalid("cannot use --import with positional arguments"));
    }
    if (req.all || req.latest) && !req.targets.is_empty() {
        return Err(Error::invalid("--all or --latest and containers cannot be used together"));
    }
    if req.targets.is_empty() && !req.all && !req.latest && req.import.is_none() {
        return Err(Error::invalid("you must provide at least one name or id"));
    }
    if req.name.is_some() && req.targets.len() > 1 {
        return Err(Error::invalid("--name can only be used with one checkpoint image"));
    }
    if let Some(name) = &req.name {
        validate_object_name("container", name)?;
    }
    if req.engine == super::Engine::Podman || sources.iter().any(|s| matches!(s, Source::Podman(_))) {
        podman::refuse_what_podman_cannot(req)?;
    }
    if req.import.as_deref() == Some(Path::new(STDIN)) {
        if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
            return Err(Error::invalid(
                "--import - reads a checkpoint archive from standard input, which is a terminal; pipe the archive in",
            ));
        }
        sources.push(Source::Stream);
    } else if let Some(import) = &req.import {
        if !import.is_file() {
            return Err(Error::invalid(format!(
                "checkpoint archive {:?} does not exist or is not a file",
                import.display().to_string()
            )));
        }
        sources.push(Source::Archive(import.clone()));
    }
    if req.all {
        // Only checkpointed ones: podman also picks exited containers that have no checkpoint,
        // and then fails on each of them.
        let records = ctx.containers.list()?;
        let statuses = super::lifecycle::statuses(ctx, &records)?;
        for (record, status) in records.into_iter().zip(statuses) {
            if status.status.can_restore(record.state.checkpointed) {
                let id = record.id.clone();
                sources.push(Source::Local(Box::new(record), id));
            }
        }
    }
    if req.latest {
        let record = ctx.containers.latest()?.ok_or_else(|| Error::invalid("no containers to restore"))?;
        let id = record.id.clone();
        sources.push(Source::Local(Box::new(record), id));
    }
    Ok(sources)
}

pub fn restore(ctx: &Context, req: &RestoreRequest) -> (Vec<Restored>, Result<()>) {
    let sources = match validate(ctx, req) {
        Ok(s) => s,
        Err(e) => return (Vec::new(), Err(e)),
    };
    // Local checkpoints restore side by side (`restore -a`); an import is one at a time.
    let workers = req.parallel.unwrap_or_else(crate::ops::default_parallel);
    if workers > 1 && sources.len() > 1 && sources.iter().all(|s| matches!(s, Source::Local(..))) {
        return crate::ops::each_parallel(&sources, workers, || Ok(()), |(), source| restore_one(ctx, req, source));
    }
    let mut done = Vec::new();
    let result = crate::ops::each(&sources, |source| {
        done.push(restore_one(ctx, req, source)?);
        Ok(())
    });
    (done, result)
}

/// Restores from one source, and records it in the audit log either way.
fn restore_one(ctx: &Context, req: &RestoreRequest, source: &Source) -> Result<Restored> {
    let (from, restored) = match source {
        Source::Local(record, printed) => ("local", restore_local(ctx, req, record, printed)),
        Source::Podman(name) => ("podman", podman::restore_kept(ctx, req, name)),
        Source::Archive(path) => ("archive", stage_archive(ctx, req, path).and_then(|staged| import(ctx, req, staged))),
        Source::Stream if ctx.config.signatures.require => {
            ("stream", Err(unsigned_source("a stream on standard input")))
        }
        Source::Image(name) if ctx.config.signatures.require && !trusted_image(ctx, name) => {
            ("image", Err(untrusted_image(name)))
        }
        Source::Stream => ("stream", stage_stdin(ctx, req).and_then(|staged| import(ctx, req, staged))),
        Source::Image(name) => (
            "image",
            stage_image(ctx, req, name)
                .and_then(|staged| import(ctx, req, staged))
                .map_err(|e| Error::ImageImport { name: name.clone(), cause: Box::new(e) }),
        ),
    };
    let location = match source {
        Source::Local(record, _) => record.name.clone(),
        Source::Podman(name) => format!("{}{name}", crate::podman::PREFIX),
        Source::Archive(path) => path.display().to_string(),
        Source::Stream => "standard input".to_string(),
        Source::Image(name) => name.clone(),
    };
    ctx.audit(match &restored {
        Ok(r) => {
            AuditEvent::Restore { from, location, container: r.printed_name.clone(), container_id: r.stats.id.clone() }
        }
        Err(e) => AuditEvent::RestoreFailed { from, location, error: e.to_string() },
    });
    restored
}

/// An imported checkpoint, checked and unpacked, restored by the engine the request names.
fn import(ctx: &Context, req: &RestoreRequest, staged: StagedCheckpoint) -> Result<Restored> {
    match req.engine {
        super::Engine::Ckpt => restore_import(ctx, req, staged),
        super::Engine::Podman => podman::import(ctx, req, staged),
    }
}

/// Where a restore's page images came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Images {
    /// The container's own checkpoint: a failed restore must leave it restorable.
    Local,
    /// Unpacked for this restore alone: a failed import removes them with the container, and
    /// the archive or image they came from is still there to try again. `consume`: CRIU punches
    /// them out of their files as it reads them.
    Imported { consume: bool },
}

/// Whether page images of `page_bytes` are worth punching out of their files as CRIU reads them,
/// with `available` bytes of memory to be had (`[restore] consume-imported-pages = "auto"`):
/// punching pays only once page cache and restored memory together press on the host (the
/// measurements are in bench/README.md). Unknown memory counts as short.
fn worth_consuming(page_bytes: u64, available: Option<u64>) -> bool {
    available.is_none_or(|available| page_bytes >= available / 8)
}

/// The bytes of memory pages (`pages-*.img`) in a CRIU images directory.
fn page_images_size(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .filter(|e| e.file_name().to_str().is_some_and(metadata::is_page_image_name))
        .filter_map(|e| e.metadata().ok().filter(|m| m.is_file()))
        .map(|m| m.len())
        .sum()
}

fn restore_options(
    req: &RestoreRequest,
    bundle: &Path,
    images: Images,
    criu_config: Option<PathBuf>,
) -> RestoreOptions {
    RestoreOptions {
        image_path: bundle.join(layout::CHECKPOINT_DIR),
        work_path: bundle.to_path_buf(),
        tcp_established: req.tcp_established,
        file_locks: req.file_locks,
        lazy_pages: req.lazy_pages_from.is_some(),
        consume_page_images: images == Images::Imported { consume: true } && !req.keep && req.lazy_pages_from.is_none(),
        criu_config,
    }
}

/// As podman does, a fixed address the user says to ignore leaves the container's settings for
/// good: a restart after the restore gets a new one too.
fn forget_ignored_addresses(req: &RestoreRequest, network: &mut crate::store::ContainerNetwork) {
    for (_, attachment) in &mut network.networks {
        if req.ignore_static_ip {
            attachment.static_ip = None;
        }
        if req.ignore_static_mac {
            attachment.static_mac = None;
        }
    }
}

/// Launches the runtime restore and records the outcome; the caller holds the container lock.
fn run_restore(
    ctx: &Context,
    req: &RestoreRequest,
    record: &mut ContainerRecord,
    printed: String,
    images: Images,
    criu_config: Option<PathBuf>,
) -> Result<Restored> {
    let paths = ctx.containers.paths(&record.id);
    let bundle = paths.bundle();
    if !paths.checkpoint_dir().join(metadata::CRIU_INVENTORY).exists() {
        return Err(Error::NotCheckpointed {
            name: record.name.clone(),
            missing: paths.checkpoint_dir().join(metadata::CRIU_INVENTORY),
        });
    }
    criu::check_version(ctx.criu()?.as_ref())?;
    let previous = record.state.clone();
    let previous_network = record.network.clone();
    forget_ignored_addresses(req, &mut record.network);
    let now = crate::util::now();
    record.state.started_at = Some(now);
    if let Some(socket) = &req.lazy_pages_from {
        let pages = connect_to_page_server(Path::new(socket))?;
        ctx.criu()?.serve_lazy_pages(&paths.checkpoint_dir(), &bundle, pages.into())?;
    }
    if req.tcp_established && !record.network.networks.is_empty() {
        track_inbound_connections(record, &paths.checkpoint_dir());
    }
    let started = Instant::now();
    let wanted = wanted_addresses(req, &paths);
    lifecycle::launch(ctx, record, &Launch::Restore(restore_options(req, &bundle, images, criu_config)), &wanted)
        .inspect_err(|_| {
            record.state = previous.clone();
            record.network = previous_network.clone();
            let _ = ctx.containers.save(record);
        })?;
    let duration = started.elapsed().as_micros() as u64;
    // The container runs from here on: nothing below may fail the restore, or a caller would
    // undo what runs. What cannot be done is said.
    record.state = StateFlags {
        started_at: Some(now),
        restored: true,
        restored_at: Some(now),
        checkpoint_path: if req.keep { Some(paths.checkpoint_dir()) } else { None },
        run_token: record.state.run_token.clone(),
        ..StateFlags::default()
    };
    if let Err(e) = ctx.containers.save(record) {
        tracing::warn!(
            "container {:?} runs, but its record could not be saved ({e}); 'ckpt inspect' shows its state from before the restore until it is saved again",
            record.name
        );
    }
    let stats_path = bundle.join(metadata::CRIU_STATS_RESTORE);
    let criu_statistics = if req.print_stats {
        criu::read_restore_stats(&stats_path).unwrap_or_else(|e| {
            tracing::warn!("container {:?} runs, but displaying restore statistics is not possible: {e}", record.name);
            RestoreStats::default()
        })
    } else {
        RestoreStats::default()
    };
    // A lazy restore's memory is still arriving through the images directory's daemon; the next
    // checkpoint replaces the directory.
    if !req.keep
        && req.lazy_pages_from.is_none()
        && let Err(e) = discard_used_images(ctx, &paths)
    {
        tracing::warn!("container {:?} runs, but its used page images stay in {} ({e})", record.name, bundle.display());
    }
    Ok(Restored {
        printed_name: printed,
        stats: ContainerStats { id: record.id.clone(), runtime_restore_duration: duration, criu_statistics },
    })
}

/// Tells the host's connection tracking which side opened each connection the container held,
/// before CRIU brings them back. Without it a restore on another host keeps the sockets, and
/// the network's masquerade rule breaks the connections; so what cannot be done is said, and the
/// restore goes on.
fn track_inbound_connections(record: &ContainerRecord, images: &Path) {
    match criu::sockets::inbound_tcp(images) {
        Ok(connections) => {
            for failed in crate::network::conntrack::record_inbound(&record.name, &connections) {
                tracing::warn!("{failed}");
            }
        }
        Err(e) => {
            tracing::warn!("the connections of container {:?} are not known to this host's firewall: {e}", record.name)
        }
    }
}

/// Hands the page images a restore has used to the background discard, and removes its logs.
fn discard_used_images(ctx: &Context, paths: &crate::store::ContainerPaths) -> Result<()> {
    let bundle = paths.bundle();
    // The pre-dump rounds the dump was based on hold memory pages too.
    let mut images = vec![paths.checkpoint_dir(), paths.pre_checkpoint_dir()];
    for entry in std::fs::read_dir(&bundle).map_err(Error::io("list", &bundle))?.flatten() {
        if entry.file_name().to_str().is_some_and(|n| n.starts_with("pre-dump-"))
            && archive::extract::is_images_dir_name(&entry.file_name())
        {
            images.push(entry.path());
        }
    }
    crate::store::discard::discard(&ctx.roots, &images)?;
    for file in
        [metadata::CRIU_RESTORE_LOG, metadata::CRIU_DUMP_LOG, metadata::CRIU_STATS_DUMP, metadata::CRIU_STATS_RESTORE]
    {
        crate::util::remove_file_if_exists(&bundle.join(file))?;
    }
    Ok(())
}

fn restore_local(ctx: &Context, req: &RestoreRequest, record: &ContainerRecord, printed: &str) -> Result<Restored> {
    lifecycle::settle(ctx, record)?;
    let _lock = ContainerLock::try_acquire(&ctx.roots.locks_dir(), &record.id, &record.name)?;
    let mut record = ctx.containers.load(&record.id)?;
    let st = status(ctx, &record)?;
    if st.status != ContainerStatus::Exited {
        return Err(Error::ContainerState {
            name: record.name.clone(),
            state: st.status.to_string(),
            action: "cannot restore: only an exited, checkpointed container can be restored".into(),
        });
    }
    run_restore(ctx, req, &mut record, printed.to_string(), Images::Local, None)
}

/// Whether an import is unpacked into private memory: asked for, or the host config seals everything.
fn in_private_memory(ctx: &Context, req: &RestoreRequest) -> bool {
    req.private_memory || ctx.config.exports.encrypt == crate::config::EncryptRule::Always
}

/// A checkpoint streamed on standard input (a migration's), unpacked into staging.
fn stage_stdin(ctx: &Context, req: &RestoreRequest) -> Result<StagedCheckpoint> {
    if !in_private_memory(ctx, req) {
        return Ok(StagedCheckpoint::from_stdin(&ctx.roots.staging_dir())?);
    }
    let stdin = std::io::BufReader::with_capacity(1 << 20, std::io::stdin());
    let limit = crate::hostinfo::memory_available().unwrap_or(0);
    let origin = "standard input".to_string();
    Ok(StagedCheckpoint::from_stream_in_memory(&ctx.roots.staging_dir(), stdin, origin, limit)?)
}

/// What a host that requires signatures says of a checkpoint that cannot carry one yet.
fn unsigned_source(what: &str) -> Error {
    Error::CheckpointRefused {
        origin: what.to_string(),
        reason: " cannot be signed yet, and the host config requires a signature ([signatures] require = true); restore from a signed archive file".into(),
    }
}

/// Whether a checkpoint image was made here, or pulled with a signature the host checked.
fn trusted_image(ctx: &Context, name: &str) -> bool {
    ctx.images.resolve(name).is_ok_and(|info| info.trust.is_some())
}

fn untrusted_image(name: &str) -> Error {
    Error::CheckpointRefused {
        origin: format!("image {name:?}"),
        reason: " was neither made on this host nor pulled with a signature from a trusted key, and the host config requires one ([signatures] require = true); set [signatures] image-keys and pull it again".into(),
    }
}

/// An archive file unpacked into staging; a sealed one is opened with `--identity` and
/// unpacked into private memory, so that its plaintext never reaches a disk.
fn stage_archive(ctx: &Context, req: &RestoreRequest, path: &Path) -> Result<StagedCheckpoint> {
    // Before a single member is read: the signature covers the file as it is on disk.
    let rules = &ctx.config.signatures;
    if rules.require || crate::signature::signature_path(path).exists() {
        let scratch = tempdir_in(&ctx.roots.staging_dir(), "verify")?;
        crate::signature::verify(path, &rules.trusted, rules.require, &scratch.path)?;
    }
    let header = crate::seal::file_header(path).map_err(Error::io("read", path))?;
    let sealed = crate::seal::is_sealed(&header);
    if !sealed && !in_private_memory(ctx, req) {
        return Ok(StagedCheckpoint::from_archive(&ctx.roots.staging_dir(), path)?);
    }
    let plain: Box<dyn std::io::Read + Send> = if sealed {
        // Decrypted on a thread of its own, ahead of the decompression and the writes.
        crate::archive::read_ahead(Box::new(crate::seal::open_file(path, &identities(ctx, req))?))
    } else {
        Box::new(std::fs::File::open(path).map_err(Error::io("open", path))?)
    };
    stage_in_memory(ctx, plain, path.display().to_string())
}

/// What may open a sealed checkpoint: `--identity`'s, then the host's own.
fn identities(ctx: &Context, req: &RestoreRequest) -> Vec<PathBuf> {
    req.identities.iter().chain(&ctx.config.restore.identities).cloned().collect()
}

/// A checkpoint archive's plaintext unpacked into private memory, never onto a disk.
fn stage_in_memory(ctx: &Context, plain: Box<dyn std::io::Read + Send>, origin: String) -> Result<StagedCheckpoint> {
    let limit = crate::hostinfo::memory_available().unwrap_or(0);
    let stream = std::io::BufReader::with_capacity(1 << 20, plain);
    Ok(StagedCheckpoint::from_stream_in_memory(&ctx.roots.staging_dir(), stream, origin, limit)?)
}

/// A local checkpoint image, its layers unpacked into staging; a sealed image's one layer is
/// opened with `--identity` and unpacked into private memory, as a sealed archive is.
fn stage_image(ctx: &Context, req: &RestoreRequest, name: &str) -> Result<StagedCheckpoint> {
    let info = ctx.images.resolve(name)?;
    let manifest = ctx.images.manifest_by_digest(&info.image_manifest)?;
    let sealed =
        |layer: &oci_spec::image::Descriptor| layer.media_type().to_string() == crate::image::SEALED_LAYER_TYPE;
    let layers =
        manifest.layers().iter().map(|layer| ctx.images.blob_path(layer.digest())).collect::<Result<Vec<_>, _>>()?;
    match (manifest.layers().as_slice(), layers.as_slice()) {
        ([layer], [blob]) if sealed(layer) => {
            let plain = crate::archive::read_ahead(Box::new(crate::seal::open_file(blob, &identities(ctx, req))?));
            stage_in_memory(ctx, plain, format!("image {name}"))
        }
        (all, _) if all.iter().any(sealed) => Err(Error::invalid(format!(
            "checkpoint image {name:?} mixes a sealed layer with others; ckpt writes a sealed image as one layer, so this one was not made by ckpt"
        ))),
        ([_], [blob]) if in_private_memory(ctx, req) => {
            let file = std::fs::File::open(blob).map_err(Error::io("open", blob))?;
            stage_in_memory(ctx, Box::new(file), format!("image {name}"))
        }
        _ => Ok(StagedCheckpoint::from_image_layers(&ctx.roots.staging_dir(), name, &layers)?),
    }
}

/// Rebuilds a container record from `config.dump`, keeping only what ckpt can check.
fn record_from_archive(ctx: &Context, req: &RestoreRequest, staged: &StagedCheckpoint) -> Result<ContainerRecord> {
    let config_path = staged.dir.path.join(layout::CONFIG_DUMP);
    let missing = || archive::ArchiveError::Missing {
        archive: staged.origin.clone(),
        member: format!("{} or {}/inventory.img", layout::CONFIG_DUMP, layout::CHECKPOINT_DIR),
    };
    let inventory = format!("{}/inventory.img", layout::CHECKPOINT_DIR);
    if !staged.has_dir(layout::CHECKPOINT_DIR)? || staged.open_member(&inventory)?.is_none() {
        return Err(missing().into());
    }
    let config: ConfigDump = staged.read_member_json(layout::CONFIG_DUMP)?.ok_or_else(missing)?;
    let mut record = match config.ckpt.clone() {
        Some(record) if staged.verified => record,
        // A ckpt archive always ends with its manifest: without one it was cut short or altered.
        Some(_) => {
            return Err(archive::ArchiveError::Missing {
                archive: staged.origin.clone(),
                member: format!("{} (a ckpt archive without it was truncated or altered)", layout::MANIFEST),
            }
            .into());
        }
        None => {
            tracing::warn!(
                "{} is a podman checkpoint: it has no ckpt manifest, so its members are not checked against digests; every other check applies",
                crate::util::escape_controls(&staged.origin)
            );
            let spec: oci_spec::runtime::Spec = staged.read_member_json(layout::SPEC_DUMP)?.ok_or_else(|| {
                archive::ArchiveError::Missing { archive: staged.origin.clone(), member: layout::SPEC_DUMP.into() }
            })?;
            record_from_podman(&config, &spec, &config_path)?
        }
    };
    for mount in &record.mounts {
        if mount.kind == MountKind::Bind {
            return Err(Error::CheckpointRefused {
                origin: staged.origin.clone(),
                reason: format!(
                    " bind-mounts host path {:?} at {:?}; ckpt does not take host mounts from an archive",
                    mount.source, mount.destination
                ),
            });
        }
        validate_object_name("volume", &mount.source)?;
        if !mount.destination.starts_with('/') || mount.destination.split('/').any(|c| c == "..") {
            return Err(Error::CheckpointRefused {
                origin: staged.origin.clone(),
                reason: format!(": volume destination {:?} is not a clean absolute path", mount.destination),
            });
        }
    }
    validate_object_name("container", &record.name)?;
    if let Some(dir) = &record.workdir
        && (!dir.starts_with('/') || dir.split('/').any(|c| c == ".."))
    {
        return Err(Error::CheckpointRefused {
            origin: staged.origin.clone(),
            reason: format!(": working directory {dir:?} is not a clean absolute path"),
        });
    }
    if !crate::store::is_full_id(&record.id) {
        return Err(Error::CheckpointRefused {
            origin: staged.origin.clone(),
            reason: format!(": container ID {:?} is not valid", record.id),
        });
    }
    if let Some(name) = &req.name {
        record.name = name.clone();
        record.id = crate::util::random_id();
    }
    if !req.publish.is_empty() {
        record.network.ports = network::published_ports(ctx, &req.publish)?;
    }
    forget_ignored_addresses(req, &mut record.network);
    let status = staged.read_member_json(metadata::NETWORK_STATUS).ok().flatten().unwrap_or_default();
    let wanted = network::wanted_from_block(&status, req.ignore_static_ip, req.ignore_static_mac);
    if let Some(fault) = network::fault_in_carried(&record.network, &wanted) {
        return Err(Error::CheckpointRefused { origin: staged.origin.clone(), reason: format!(": {fault}") });
    }
    // The networks it was on must exist here, as podman's restore requires (the default always
    // does), unless a migration brings their definitions along.
    let carried = carried_networks(req, staged)?;
    for (name, _) in &record.network.networks {
        match ctx.networks().definitions.get(name) {
            Err(crate::network::NetworkError::NoSuchNetwork(_)) if carried.iter().any(|d| &d.name == name) => {}
            other => drop(other?),
        }
    }
    let runtime = ctx.runtime_named(&ctx.runtime)?;
    record.runtime = runtime.name().to_string();
    record.auto_remove = false;
    record.state = StateFlags::default();
    record.created_at = crate::util::now();
    ctx.images.resolve(&record.image_id).or_else(|_| ctx.images.resolve(&record.image_ref)).map_err(|_| {
        Error::CheckpointImageMissing { image: record.image_ref.clone(), origin: staged.origin.clone() }
    })?;
    Ok(record)
}

/// A checkpoint image by name or ID, with the local name it has; one that names a registry and
/// is not here yet is pulled first, as podman's restore does. A reference pinned by digest
/// (`NAME@sha256:HEX`, as `ckpt migrate --via` sends it) is only ever that image: a local image
/// of NAME with another digest (an earlier migration's) is replaced by a pull of the pinned one.
fn resolve_or_pull(ctx: &Context, target: &str) -> Result<(String, crate::image::ImageInfo)> {
    let flags = super::images::RegistryFlags::default();
    if let Some((name, hex)) = target.split_once("@sha256:") {
        // Kept under its tag, or under one named by its digest: a pull by digest alone must not
        // move the image's `latest` here.
        let tagged = name.rsplit('/').next().is_some_and(|last| last.contains(':'));
        let local = if tagged { name.to_string() } else { format!("{name}:sha256-{hex}") };
        let pinned = format!("sha256:{hex}");
        if let Ok(info) = ctx.images.resolve(&local)
            && info.manifest_digest.to_string() == pinned
        {
            return Ok((local, info));
        }
        // skopeo takes a tag or a digest, not both.
        let repository = match name.rsplit_once('/') {
            Some((path, last)) => format!("{path}/{}", last.split(':').next().unwrap_or(last)),
            None => name.to_string(),
        };
        let info = super::images::pull_as(ctx, &format!("{repository}@{pinned}"), &local, &flags)?;
        if info.manifest_digest.to_string() != pinned {
            return Err(Error::DigestMismatch {
                image: local,
                got: info.manifest_digest.to_string(),
                wanted: pinned.to_string(),
            });
        }
        return Ok((local, info));
    }
    match ctx.images.resolve(target) {
        Err(ImageError::NoSuchImage(_)) if crate::registry::check_reference(target).is_ok() => {
            super::images::pull(ctx, target, &flags).map(|info| (crate::image::normalize_reference(target), info))
        }
        other => other.map(|info| (target.to_string(), info)).map_err(Error::from),
    }
}

/// A record for a container checkpointed by podman, from its `config.dump` and `spec.dump`.
/// Only named volumes come along; a bind mount of a host path is refused, as from ckpt archives.
fn record_from_podman(config: &ConfigDump, spec: &oci_spec::runtime::Spec, path: &Path) -> Result<ContainerRecord> {
    let corrupt = |detail: String| {
        Error::Base(crate::error::BaseError::Corrupt { what: "spec.dump", path: path.to_path_buf(), detail })
    };
    let process = spec.process().as_ref().ok_or_else(|| corrupt("it has no process".into()))?;
    let command = process.args().clone().unwrap_or_default();
    if command.is_empty() {
        return Err(corrupt("its process has no arguments".into()));
    }
    let mut mounts: Vec<MountSpec> = config
        .named_volumes
        .iter()
        .map(|v| MountSpec {
            kind: MountKind::Volume,
            source: v.name.clone(),
            destination: v.dest.clone(),
            read_only: v.options.iter().any(|o| o == "ro"),
        })
        .collect();
    for mount in spec.mounts().iter().flatten().filter(|m| m.typ().as_deref() == Some("bind")) {
        let destination = mount.destination().to_string_lossy().into_owned();
        let known = crate::spec::engine_bind(&destination) || mounts.iter().any(|m| m.destination == destination);
        if !known {
            let source = mount.source().as_ref().map(|s| s.display().to_string()).unwrap_or_default();
            mounts.push(MountSpec { kind: MountKind::Bind, source, destination, read_only: false });
        }
    }
    Ok(ContainerRecord {
        id: config.id.clone(),
        name: config.name.clone(),
        image_name: if config.raw_image_name.is_empty() {
            config.rootfs_image_name.clone()
        } else {
            config.raw_image_name.clone()
        },
        image_ref: config.rootfs_image_name.clone(),
        image_id: config.rootfs_image_id.clone(),
        command,
        env: process.env().clone().unwrap_or_default(),
        labels: config.labels.clone(),
        mounts,
        workdir: Some(process.cwd().display().to_string()).filter(|dir| dir != "/"),
        auto_remove: false,
        created_at: crate::util::now(),
        runtime: config.runtime.clone(),
        root_mode: Some(crate::store::CONTAINER_ROOT_MODE),
        podman_mounts: true,
        network: network_from_podman(config),
        state: StateFlags::default(),
    })
}

/// The networks of a podman container, by ckpt's names for them: podman's default network is
/// ckpt's. Without a network mode (older podman, or `none`) it has loopback only.
fn network_from_podman(config: &ConfigDump) -> crate::store::ContainerNetwork {
    use crate::store::{ContainerNetwork, NetworkAttachment, NetworkMode};
    if config.network_mode != "bridge" || config.new_networks.is_empty() {
        return ContainerNetwork::default();
    }
    let mut by_interface: Vec<(&String, &crate::network::PerNetworkOptions)> = config.new_networks.iter().collect();
    by_interface.sort_by(|a, b| a.1.interface_name.cmp(&b.1.interface_name));
    let networks = by_interface
        .into_iter()
        .map(|(name, options)| {
            let default = name == crate::archive::summary::PODMAN_DEFAULT_NETWORK;
            let ckpts = if default { crate::config::DEFAULT_NETWORK.to_string() } else { name.clone() };
            let attachment = NetworkAttachment {
                static_ip: if default { None } else { options.static_ips.first().copied() },
                static_mac: options.static_mac.clone(),
                aliases: options.aliases.clone(),
            };
            (ckpts, attachment)
        })
        .collect();
    ContainerNetwork {
        mode: NetworkMode::Bridge,
        networks,
        ports: config.new_port_mappings.clone(),
        ..Default::default()
    }
}

/// The network definitions a migration's archive carries, when the far side may make them.
fn carried_networks(req: &RestoreRequest, staged: &StagedCheckpoint) -> Result<Vec<crate::network::NetworkDef>> {
    if !req.create_networks {
        return Ok(Vec::new());
    }
    Ok(staged.read_member_json(crate::archive::assemble::NETWORK_DEFINITIONS)?.unwrap_or_default())
}

fn restore_import(ctx: &Context, req: &RestoreRequest, mut staged: StagedCheckpoint) -> Result<Restored> {
    let record = record_from_archive(ctx, req, &staged)?;
    let _store_lock = StoreLock::acquire(&ctx.roots.locks_dir())?;
    refuse_conflicts(ctx, req, &record, &mut staged)?;
    // Declared after the store lock, so that a failed import is undone before the lock goes.
    let mut txn =
        ImportTxn { ctx, record: &record, created_volumes: Vec::new(), created_networks: Vec::new(), committed: false };
    txn.created_networks = network::create_missing(ctx, &record, &carried_networks(req, &staged)?)?;
    // Declared after the transaction, so that copies still under way are given up before a failed
    // import removes the container's files.
    let mut page_images = staged.page_images.take();
    let paths = ctx.containers.paths(&record.id);
    // CRIU finds `/` as it was dumped, or refuses.
    crate::util::create_dir_with_mode(&paths.upper(), record.root_mode())?;
    create_dir_all(&paths.bundle())?;
    let mut importing = record.clone();
    importing.state.importing = true;
    ctx.containers.save(&importing)?;
    import_volumes(ctx, req, &record, &mut staged, &mut txn)?;
    // The dump and every pre-dump it refers to: CRIU reads their pages through `parent`.
    let chain = staged.images_chain(layout::CHECKPOINT_DIR)?;
    for dir in &chain {
        staged.move_dir_into(dir, &paths.bundle().join(dir))?;
    }
    let consume = match ctx.config.restore.consume_imported_pages {
        ConsumePages::Always => true,
        ConsumePages::Never => false,
        ConsumePages::Auto => {
            let in_flight = page_images.as_ref().map_or(0, ImagesInFlight::bytes);
            let page_bytes =
                chain.iter().map(|dir| page_images_size(&paths.bundle().join(dir))).sum::<u64>() + in_flight;
            worth_consuming(page_bytes, crate::hostinfo::memory_available())
        }
    };
    if let Some(previous) = &req.import_previous {
        let pre = tempdir_in(&ctx.roots.staging_dir(), "import-previous")?;
        let pre = StagedCheckpoint::new(pre, previous.display().to_string())?;
        layout::extract_checkpoint(previous, &pre.dir.path, &ExtractOptions::checkpoint())?;
        if !pre.has_dir(layout::PRE_CHECKPOINT_DIR)? {
            return Err(archive::ArchiveError::Missing {
                archive: pre.origin.clone(),
                member: layout::PRE_CHECKPOINT_DIR.into(),
            }
            .into());
        }
        pre.move_dir_into(layout::PRE_CHECKPOINT_DIR, &paths.pre_checkpoint_dir())?;
    }
    if let Some(mut log) = staged.open_member(layout::CONTAINER_LOG)? {
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_NOFOLLOW)
            .mode(0o600)
            .open(paths.log())
            .map_err(Error::io("create", paths.log()))?;
        std::io::copy(&mut log, &mut out).map_err(Error::io("copy log to", paths.log()))?;
    }
    // The sender's images are its word, and CRIU restores whatever credentials they name.
    crate::criu::images::refuse_capabilities_beyond(&paths.checkpoint_dir(), crate::spec::capability_mask())?;
    if let Some(mut status) = staged.open_member(layout::NETWORK_STATUS)? {
        let mut text = Vec::new();
        std::io::Read::read_to_end(&mut std::io::Read::take(&mut status, 1 << 20), &mut text)
            .map_err(Error::io("read", layout::NETWORK_STATUS))?;
        crate::util::write_atomic(&paths.network_status(), &text, 0o644)?;
    }
    lifecycle::prepare_bundle(ctx, &record, &wanted_addresses(req, &paths))?;
    if let Some(shm) = staged.open_member(layout::DEVSHM)?.filter(|_| record.podman_mounts) {
        let dir = paths.bundle().join(crate::spec::PODMAN_SHM_DIR);
        archive::extract(std::io::BufReader::new(shm), &dir, layout::DEVSHM, &ExtractOptions::container_files())?;
    }
    if !req.ignore_rootfs {
        apply_rootfs_diff(&staged, &paths.merged())?;
    }
    let hold = hold_for_page_images(ctx, req, &record, &paths.bundle(), &mut page_images)?;
    let _lock = ContainerLock::acquire(&ctx.roots.locks_dir(), &record.id)?;
    let mut restored = record.clone();
    let printed = restored.id.clone();
    let criu_config = hold.as_ref().map(|hold| hold.config().to_path_buf());
    let done = run_restore(ctx, req, &mut restored, printed, Images::Imported { consume }, criu_config);
    // What runs is kept, whatever comes after.
    txn.committed = done.is_ok();
    let copied = page_images.map_or(Ok(()), ImagesInFlight::wait);
    if let Some(hold) = hold {
        hold.release();
    }
    match (done, copied) {
        (Ok(done), Err(e)) => {
            tracing::warn!("container {:?} runs, but copying its page images reported: {e}", record.name);
            Ok(done)
        }
        // A failed copy is why the restore failed: CRIU was held until it ended.
        (Err(_), Err(e)) => Err(e.into()),
        (done, Ok(())) => done,
    }
}

/// Every conflict is found before anything is created: a name or an ID in use, a named volume
/// that exists here, or one the archive lacks.
fn refuse_conflicts(
    ctx: &Context,
    req: &RestoreRequest,
    record: &ContainerRecord,
    staged: &mut StagedCheckpoint,
) -> Result<()> {
    if ctx.containers.name_in_use(&record.name)? {
        return Err(Error::NameInUse(record.name.clone()));
    }
    if ctx.roots.container_dir(&record.id).exists() {
        return Err(Error::IdInUse(record.id.clone()));
    }
    for volume in record.named_volumes() {
        if !req.ignore_volumes {
            if ctx.volumes.exists(&volume.source) {
                return Err(Error::RestoredVolumeExists(volume.source.clone()));
            }
            let member = format!("{}/{}.tar", layout::VOLUMES_DIR, volume.source);
            if staged.open_member(&member)?.is_none() {
                return Err(archive::ArchiveError::Missing { archive: staged.origin.clone(), member }.into());
            }
        }
    }
    Ok(())
}

/// Creates the container's named volumes that do not exist here (each one noted in `txn`, so
/// that a failed import removes it), with the archive's content unless `--ignore-volumes`.
fn import_volumes(
    ctx: &Context,
    req: &RestoreRequest,
    record: &ContainerRecord,
    staged: &mut StagedCheckpoint,
    txn: &mut ImportTxn,
) -> Result<()> {
    for volume in record.named_volumes() {
        if ctx.volumes.exists(&volume.source) {
            continue;
        }
        ctx.volumes.create(&volume.source, BTreeMap::new())?;
        txn.created_volumes.push(volume.source.clone());
        if !req.ignore_volumes {
            let member = format!("{}/{}.tar", layout::VOLUMES_DIR, volume.source);
            let file = staged.open_member(&member)?.ok_or_else(|| staged.refuse(&member, "it is gone"))?;
            archive::extract(
                std::io::BufReader::new(file),
                &ctx.volumes.mountpoint(&volume.source),
                &member,
                &ExtractOptions::container_files(),
            )?;
        }
    }
    Ok(())
}

/// Connects to the socket through which post-copy's memory comes, and removes its name so that
/// nobody else can connect. Only a socket that this user holds is believed: anyone else's could
/// feed the container pages of their own.
fn connect_to_page_server(socket: &Path) -> Result<std::os::unix::net::UnixStream> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let shown = || format!("--lazy-pages-from {:?}", socket.display().to_string());
    let meta = std::fs::symlink_metadata(socket).map_err(Error::io("inspect", socket))?;
    if !meta.file_type().is_socket() || meta.uid() != nix::unistd::geteuid().as_raw() || meta.mode() & 0o077 != 0 {
        return Err(Error::invalid(format!(
            "{}: not a socket that only this user (uid {}) can use; ckpt migrate makes it through ssh",
            shown(),
            nix::unistd::geteuid()
        )));
    }
    let stream = std::os::unix::net::UnixStream::connect(socket).map_err(Error::io("connect to", socket))?;
    std::fs::remove_file(socket).map_err(Error::io("remove", socket))?;
    Ok(stream)
}

/// Lets the restore start while `page_images` are still being copied, held by a CRIU action
/// script until they are in (`criu::hold`). That takes a runtime that passes CRIU the
/// configuration the hold is in, and a restore that reads its pages from the images directory
/// (not a lazy one, whose page server starts before the runtime). Otherwise the copies are
/// waited for here.
fn hold_for_page_images(
    ctx: &Context,
    req: &RestoreRequest,
    record: &ContainerRecord,
    bundle: &Path,
    page_images: &mut Option<ImagesInFlight>,
) -> Result<Option<Hold>> {
    let Some(images) = page_images else { return Ok(None) };
    if ctx.runtime_named(&record.runtime)?.passes_criu_config() && req.lazy_pages_from.is_none() {
        // Generous: ten minutes, and a minute more for each 256 MiB.
        let timeout = std::time::Duration::from_secs(600 + 60 * (images.bytes() >> 28));
        if let Some(hold) = Hold::place(bundle, timeout)? {
            let status = hold.status().to_path_buf();
            images.report_to(Box::new(move |outcome| {
                // Unwritten, the script gives up at its deadline, or when this process is gone.
                let _ = Hold::report(&status, outcome);
            }));
            return Ok(Some(hold));
        }
    }
    page_images.take().map_or(Ok(()), ImagesInFlight::wait)?;
    Ok(None)
}

/// An import under way: unless committed, dropping it removes the container and the volumes
/// it created, so that a refused or failed import leaves nothing behind.
struct ImportTxn<'a> {
    ctx: &'a Context,
    record: &'a ContainerRecord,
    created_volumes: Vec<String>,
    created_networks: Vec<String>,
    committed: bool,
}

impl Drop for ImportTxn<'_> {
    fn drop(&mut self) {
        if self.committed {
            return;
        }
        // A container the runtime runs is never torn down under its processes, whatever failed.
        let runs = self
            .ctx
            .runtime_named(&self.record.runtime)
            .and_then(|runtime| Ok(runtime.state(&self.record.id)?))
            .is_ok_and(|state| state.is_some_and(|s| s.is_running()));
        if runs {
            tracing::warn!("container {:?} runs although its import reported an error; it is kept", self.record.name);
            return;
        }
        let _ = lifecycle::remove_files(self.ctx, self.record);
        for name in &self.created_volumes {
            let _ = self.ctx.volumes.remove(name);
        }
        for name in &self.created_networks {
            let _ = network::remove(self.ctx, name, false);
        }
    }
}

/// Applies `rootfs-diff.tar` and `deleted.files` onto the mounted rootfs, strictly inside it.
fn apply_rootfs_diff(staged: &StagedCheckpoint, rootfs: &Path) -> Result<()> {
    if let Some(file) = staged.open_member(layout::ROOTFS_DIFF)? {
        archive::extract(
            std::io::BufReader::new(file),
            rootfs,
            layout::ROOTFS_DIFF,
            &ExtractOptions::container_files(),
        )?;
    }
    let Some(paths) = staged.read_member_json::<Vec<String>>(layout::DELETED_FILES)? else { return Ok(()) };
    let beneath = Beneath::open(rootfs).map_err(Error::io("open", rootfs))?;
    for path in paths {
        let member = format!("{}: {path:?}", layout::DELETED_FILES);
        let rel = archive::extract::clean_relative(Path::new(path.trim_start_matches('/')))
            .ok_or_else(|| staged.refuse(&member, "path contains '..'"))?;
        if rel.as_os_str().is_empty() {
            return Err(staged.refuse(&member, "the root itself cannot be deleted").into());
        }
        // Every parent must be a real directory inside the rootfs: a symlink is never followed.
        beneath.remove(&rel).map_err(|e| staged.refuse(&member, &e.to_string()))?;
    }
    Ok(())
}

pub fn stats_document(total: std::time::Duration, stats: &[ContainerStats]) -> String {
    let doc = serde_json::json!({"ckpt_restore_duration": total.as_micros() as u64, "container_statistics": stats});
    super::checkpoint::to_four_space_json(&doc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_import_that_keeps_nothing_consumes_its_page_images_when_asked() {
        let bundle = Path::new("/bundle");
        let consumes = |req: &RestoreRequest, images| restore_options(req, bundle, images, None).consume_page_images;
        let consume = Images::Imported { consume: true };
        let plain = RestoreRequest::default();
        assert!(consumes(&plain, consume));
        assert!(!consumes(&plain, Images::Imported { consume: false }));
        assert!(!consumes(&plain, Images::Local), "a failed local restore must leave its checkpoint");
        let keep = RestoreRequest { keep: true, ..RestoreRequest::default() };
        assert!(!consumes(&keep, consume), "--keep keeps the images restorable");
        let lazy = RestoreRequest { lazy_pages_from: Some("/run/ckpt-pages.sock".into()), ..RestoreRequest::default() };
        assert!(!consumes(&lazy, consume), "a lazy restore reads no page images");
    }

    #[test]
    fn images_are_worth_consuming_from_an_eighth_of_the_memory_available() {
        const GIB: u64 = 1 << 30;
        assert!(worth_consuming(4 * GIB, Some(20 * GIB)));
        assert!(!worth_consuming(GIB, Some(20 * GIB)));
        assert!(worth_consuming(GIB, Some(4 * GIB)), "a small host is short of memory sooner");
        assert!(worth_consuming(0, None), "unknown memory counts as short");
    }

    #[test]
    fn only_memory_pages_count_as_page_images() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pages-1.img"), vec![0u8; 4096]).unwrap();
        std::fs::write(dir.path().join("pages-2.img"), vec![0u8; 8192]).unwrap();
        std::fs::write(dir.path().join("pagemap-1.img"), vec![0u8; 100]).unwrap();
        std::fs::create_dir(dir.path().join("pages-3.img")).unwrap();
        assert_eq!(page_images_size(dir.path()), 12288);
        assert_eq!(page_images_size(&dir.path().join("missing")), 0);
    }
}
