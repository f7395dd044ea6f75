//! A podman container's checkpoint (`ckpt checkpoint podman:NAME`). podman dumps it, through its
//! own API, as `podman container checkpoint --export` would; ckpt does the rest as for its own
//! containers: the planner decides, ckpt compresses, seals and signs the archive, the gates judge
//! it, and the catalog and the audit log record it. podman keeps owning the container: ckpt never
//! reads or writes podman's storage, and `podman container restore NAME` brings it back.

use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::export::{self, Included};
use super::{
    CheckpointRequest, Checkpointed, Compression, ContainerStats, Handoff, Made, Outgoing, PreDumpPlan, TargetKind,
    catalog_entries, check_plan, check_whole_move, claim_targets, confine_exports, export_facts, gated_archive,
    requested, sealing, signing, strategy_and_plan, trigger_of, wit,
};
use crate::archive::publish::PendingFile;
use crate::error::{Error, Result};
use crate::ops::Context;
use crate::podman::{PREFIX, PodmanApi, PodmanContainer};
use crate::policy::{GateVerdict, Policies};

/// Checkpoints the podman container `name`, and records it: its decisions, its audit entry.
pub(super) fn podman_container(
    ctx: &Context,
    req: &CheckpointRequest,
    compression: Compression,
    name: &str,
    policies: &mut Policies,
    handoff: Option<&dyn Handoff>,
) -> Result<Checkpointed> {
    let api = ctx.podman();
    let container = api.inspect(name)?;
    let outcome = plan_and_checkpoint(ctx, req, compression, &api, &container, policies, handoff);
    let shown = format!("{PREFIX}{}", container.name);
    super::finish_one(ctx, req, policies, (&shown, &container.id), format!("{PREFIX}{name}"), outcome)
}

/// The facts a policy decides on, from podman's inspect and the container's first process.
fn facts(
    ctx: &Context,
    container: &PodmanContainer,
    options: wit::CheckpointOptions,
    exports: Vec<wit::ExportTarget>,
    req: &CheckpointRequest,
) -> wit::CheckpointFacts {
    let host = crate::hostinfo::HostInfo::probe(&ctx.roots.root);
    let sample = crate::ops::facts::sample_process(u32::try_from(container.pid).unwrap_or(0), &container.state);
    let labels = container.labels.iter().map(|(key, value)| wit::KeyValue { key: key.clone(), value: value.clone() });
    wit::CheckpointFacts {
        container: wit::ContainerFacts {
            id: container.id.clone(),
            name: container.name.clone(),
            image: container.image.clone(),
            labels: labels.collect(),
            annotations: vec![wit::KeyValue { key: "io.container.manager".into(), value: "libpod".into() }],
            state: sample.status,
            memory_bytes: sample.memory_bytes,
            process_count: sample.process_count,
            tcp_established: sample.tcp_established,
            file_locks: sample.file_locks,
            volumes: vec![],
            rootfs_change_bytes: 0,
        },
        host: crate::policy::facts::host(&host, crate::ops::facts::tools(ctx, "runc")),
        request: crate::policy::facts::request(
            &container.id,
            options,
            exports,
            trigger_of(req),
            req.schedule.clone(),
            chrono::Utc::now(),
        ),
        history: crate::policy::facts::history(crate::policy::record::history(
            &ctx.roots.policy_log(),
            &container.id,
            64,
        )),
        ext: vec![wit::KeyValue { key: "engine".into(), value: "podman".into() }],
    }
}

/// What podman's checkpoint API cannot do that a plan may ask for: refused before anything
/// changes, naming it.
fn refuse_what_podman_cannot(planned: &super::Planned, policy_name: &str, migrating: bool) -> Result<()> {
    let refuse = |what: &str| {
        Err(Error::Policy(format!(
            "policy {policy_name:?} planned {what}, which ckpt cannot ask of podman; refused before anything changed"
        )))
    };
    if !matches!(planned.pre_dump, PreDumpPlan::None) {
        return refuse("pre-dump rounds");
    }
    if migrating && !planned.exports.is_empty() {
        // Each export is published as it is made, and a migration that fails after one would
        // leave a checkpoint of a container that runs here again.
        return refuse("exports beside the migration of a podman container");
    }
    if let Some(target) = planned.exports.iter().find(|t| t.kind != TargetKind::Archive) {
        return refuse(&format!(
            "a checkpoint image ({:?}); a podman container's checkpoint goes to an archive (-e), or to podman's own image with 'podman container checkpoint --create-image'",
            target.location
        ));
    }
    Ok(())
}

fn plan_and_checkpoint(
    ctx: &Context,
    req: &CheckpointRequest,
    compression: Compression,
    api: &dyn PodmanApi,
    container: &PodmanContainer,
    policies: &mut Policies,
    handoff: Option<&dyn Handoff>,
) -> Result<(Made, Option<Value>)> {
    if container.state != "running" {
        return Err(Error::ContainerState {
            name: format!("{PREFIX}{}", container.name),
            state: container.state.clone(),
            action: "and only a running container can be checkpointed".into(),
        });
    }
    let (options, exports) = requested(req, compression);
    let facts = facts(ctx, container, options, exports, req);
    let (_, plan) = strategy_and_plan(policies, &facts, handoff)?;
    let policy_name = policies.planner.info.name.clone();
    let mut planned = check_plan(&plan, &facts, &policy_name)?;
    if let Some(handoff) = handoff {
        check_whole_move(&planned, handoff, &policy_name)?;
    }
    refuse_what_podman_cannot(&planned, &policy_name, handoff.is_some())?;
    confine_exports(ctx, &planned, &facts.request.exports, &policy_name)?;
    sealing(ctx, req, &mut planned, &facts, handoff.is_some())?;
    signing(ctx, req, &mut planned, &policy_name)?;
    if req.dry_run {
        return Ok(super::dry_run((&container.id, &format!("{PREFIX}{}", container.name)), policies, &plan, &planned));
    }
    if planned.exports.iter().any(|t| !t.sealed_to.is_empty()) {
        tracing::warn!(
            "podman keeps its own copy of the dump of {:?} in its storage, in the clear, until the container is restored or removed; ckpt seals only the archive it makes",
            container.name
        );
    }
    let pending = claim_targets(ctx, &planned, &facts)?;
    // podman's archive waits in private staging (private memory for a sealed export) while
    // ckpt makes each export from it.
    let made = crate::util::tempdir_in(&ctx.roots.staging_dir(), "podman")?;
    let (staged_in, dumped) = (made.path.clone(), made.path.join("podman.tar"));
    // Declared before the memory mount, so that on any way out the mount goes first.
    let (mut staging, mut removing) = (Some(made), None);
    let memory = if planned.in_memory {
        let limit = crate::hostinfo::memory_available().unwrap_or(0);
        Some(crate::rootfs::memory::Held::mount(&staged_in, limit)?)
    } else {
        None
    };
    let o = &planned.options;
    let podman_options = crate::podman::CheckpointOptions {
        leave_running: o.leave_running,
        tcp_established: o.tcp_established,
        file_locks: o.file_locks,
        ignore_rootfs: o.ignore_rootfs,
        keep: o.keep,
    };
    let mut note = InFlight {
        pid: std::process::id() as i32,
        id: container.id.clone(),
        name: container.name.clone(),
        targets: planned.exports.iter().map(|t| t.location.clone().into()).collect(),
        destination: handoff.map(|h| h.migration().destination),
        tcp_established: planned.options.tcp_established,
    }
    .write(ctx)?;
    let started = std::time::Instant::now();
    let mut pending = pending;
    let mut runtime_duration = 0;
    // On disk, the staged archive is freed once the last export no longer needs it, while that
    // export is synced and the checkpoint recorded; a migration still sends it, and private
    // memory is unmounted before its directory goes, as always.
    let mut release_staging = || {
        if memory.is_none() && handoff.is_none() {
            removing = staging.take().map(crate::util::TempDir::remove_in_background);
        }
    };
    let published = dump_and_export_first(api, &container.name, &podman_options, &planned, &mut pending, &dumped)
        .and_then(|first| {
            runtime_duration = started.elapsed().as_micros() as u64;
            export_all(ctx, (&facts, &planned), policies, pending, (&dumped, &mut release_staging), first)
        })
        .and_then(|digests| {
            crate::interrupt::check()?;
            if let Some(handoff) = handoff {
                handoff.deliver(ctx, Outgoing::Podman { name: &container.name, archive: &dumped }, o)?;
            }
            Ok(digests)
        });
    let digests = match published {
        Ok(digests) => digests,
        Err(cause) if o.leave_running => return Err(cause),
        // Nobody can tell whether the destination runs it: podman keeps its checkpoint, and
        // the error, and `system check` after it, say how to bring it back here.
        Err(cause @ Error::HandoffUnconfirmed { .. }) => {
            note.keep();
            return Err(cause);
        }
        Err(cause) => return Err(bring_back(api, container, o.tcp_established, cause, &mut note)),
    };
    // podman keeps its local checkpoint itself: only the exports are ckpt's to catalogue.
    let shown = format!("{PREFIX}{}", container.name);
    let entries = catalog_entries(ctx, (&container.id, &shown), None, &facts, &planned, policies, &digests);
    let stats = ContainerStats {
        id: container.id.clone(),
        runtime_checkpoint_duration: runtime_duration,
        criu_statistics: Default::default(),
    };
    Ok((Made { stats, entries, _staging: removing }, None))
}

/// Has podman dump the container, staging its archive at `dumped` and, as it arrives, writing
/// the first export from it on another thread: that export is done when podman's answer is, and
/// the staged archive serves the others and a narrower one. Returns the first export, written.
fn dump_and_export_first(
    api: &dyn PodmanApi,
    name: &str,
    options: &crate::podman::CheckpointOptions,
    planned: &super::Planned,
    pending: &mut [Option<PendingFile>],
    dumped: &Path,
) -> Result<Option<export::Written>> {
    let file = std::fs::File::create(dumped).map_err(Error::io("create", dumped))?;
    let mut staged = BufWriter::with_capacity(1 << 20, file);
    let (Some(target), Some(slot)) = (planned.exports.first(), pending.first_mut()) else {
        api.checkpoint(name, options, &mut staged)?;
        return staged.flush().map_err(Error::io("write", dumped)).map(|()| None);
    };
    let Some(mut first) = slot.take() else { unreachable!("every archive target has a pending file") };
    let (sender, receiver) = std::sync::mpsc::sync_channel::<Vec<u8>>(8);
    let (compression, sealed_to) = (Compression::from(target.compression), target.sealed_to.clone());
    let dropped = (planned.options.ignore_rootfs, planned.options.ignore_volumes);
    let writer = std::thread::spawn(move || {
        let received = Received { receiver, chunk: Vec::new(), at: 0 };
        let origin = PathBuf::from("podman's answer to the checkpoint");
        let mut source = Dumped { reader: Box::new(received), origin };
        let written = write_from(&mut source, dropped, compression, &sealed_to, &mut first);
        (first, written)
    });
    // Whole megabytes to the staged file and to the writer, whatever size podman's chunks are.
    let mut tee = BufWriter::with_capacity(1 << 20, Tee { staged: &mut staged, sender: Some(sender) });
    let answered = match api.checkpoint(name, options, &mut tee) {
        Ok(()) => tee.flush().map_err(Error::io("write", dumped)),
        Err(e) => Err(e.into()),
    };
    // The end of the stream for the writer.
    drop(tee);
    let (first, written) = writer.join().expect("the export writer does not panic");
    *slot = Some(first);
    answered?;
    staged.flush().map_err(Error::io("write", dumped))?;
    written.map(Some)
}

/// podman's answer, written to the staged archive and handed, a copy of each write, to the
/// first export's writer; once that writer has stopped (it failed), to the staged file alone.
struct Tee<'a, W> {
    staged: &'a mut W,
    sender: Option<std::sync::mpsc::SyncSender<Vec<u8>>>,
}

impl<W: Write> Write for Tee<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.staged.write(buf)?;
        if let Some(sender) = &self.sender
            && sender.send(buf[..n].to_vec()).is_err()
        {
            self.sender = None;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.staged.flush()
    }
}

/// What the [`Tee`] hands over, read back as a stream that ends when the tee is dropped.
struct Received {
    receiver: std::sync::mpsc::Receiver<Vec<u8>>,
    chunk: Vec<u8>,
    at: usize,
}

impl Read for Received {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.at == self.chunk.len() {
            match self.receiver.recv() {
                Ok(chunk) => (self.chunk, self.at) = (chunk, 0),
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len() - self.at);
        buf[..n].copy_from_slice(&self.chunk[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// After a failure past podman's dump: podman restores its container from the checkpoint it
/// keeps, so that exactly one copy runs. One podman never stopped (its dump failed early) is
/// left as it is.
fn bring_back(
    api: &dyn PodmanApi,
    container: &PodmanContainer,
    tcp_established: bool,
    cause: Error,
    note: &mut Noted,
) -> Error {
    let name = format!("{PREFIX}{}", container.name);
    if api.inspect(&container.name).is_ok_and(|now| now.state == "running") {
        return cause;
    }
    match api.restore(&container.name, tcp_established) {
        Ok(()) => Error::RolledBack { name, cause: Box::new(cause) },
        Err(restore) => {
            note.keep();
            Error::RollbackFailed {
                name,
                cause: Box::new(cause),
                restore: Box::new(restore.into()),
                images: "podman's storage".into(),
            }
        }
    }
}

/// What ckpt notes before podman dumps a container, and removes once the checkpoint is
/// published or the container is back: `ckpt system check` finds an interrupted one by it.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) struct InFlight {
    pub pid: i32,
    pub id: String,
    pub name: String,
    /// The archives the checkpoint publishes: all of them there means it got that far.
    pub targets: Vec<PathBuf>,
    /// A migration's destination, which alone can say whether the container runs there.
    pub destination: Option<String>,
    /// How podman restores it: as it was dumped.
    pub tcp_established: bool,
}

impl InFlight {
    pub(crate) fn dir(ctx: &Context) -> PathBuf {
        ctx.roots.inflight_dir().join("podman")
    }

    fn write(self, ctx: &Context) -> Result<Noted> {
        let dir = InFlight::dir(ctx);
        crate::util::create_dir_all(&dir)?;
        let path = dir.join(format!("{}.json", self.id));
        crate::util::write_json(&path, &self)?;
        Ok(Noted { path, keep: false })
    }
}

/// A written [`InFlight`] note, removed on drop unless kept for `system check`.
struct Noted {
    path: PathBuf,
    keep: bool,
}

impl Noted {
    fn keep(&mut self) {
        self.keep = true;
    }
}

impl Drop for Noted {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Makes each export from podman's archive, asks the gates and publishes it; returns each
/// archive's digest. `release_staging` is called once the archive is needed no more: the last
/// export is written and its gates allowed it whole.
fn export_all(
    ctx: &Context,
    (facts, planned): (&wit::CheckpointFacts, &super::Planned),
    policies: &mut Policies,
    pending: Vec<Option<PendingFile>>,
    (dumped, release_staging): (&Path, &mut dyn FnMut()),
    mut first: Option<export::Written>,
) -> Result<Vec<Option<String>>> {
    let mut digests = Vec::new();
    let last = planned.exports.len().saturating_sub(1);
    for (i, (target, pending)) in planned.exports.iter().zip(pending).enumerate() {
        let Some(pending) = pending else { unreachable!("every archive target has a pending file") };
        let o = &planned.options;
        let compression = Compression::from(target.compression);
        let sign_with = planned.sign_with.as_deref().filter(|_| target.signed);
        let mut write = |file: &mut PendingFile, drop_rootfs: bool, drop_volumes: bool| {
            // The first export was written as podman's answer arrived; a narrower one is
            // written again from the staged archive.
            if let Some(written) = first.take().filter(|_| !drop_rootfs && !drop_volumes) {
                return Ok(written);
            }
            let dropped = (o.ignore_rootfs || drop_rootfs, o.ignore_volumes || drop_volumes);
            write_from(&mut Dumped::open(dumped)?, dropped, compression, &target.sealed_to, file)
        };
        let mut judge = |written: &export::Written| {
            let verdict = match policies.gates.is_empty() {
                true => GateVerdict::Allow,
                false => {
                    policies.gate(&export_facts(facts, target, written.size, &written.digest, written.included))?
                }
            };
            if i == last && matches!(verdict, GateVerdict::Allow) {
                release_staging();
            }
            Ok(verdict)
        };
        let digest = gated_archive(ctx, pending, sign_with, &mut write, &mut judge)?;
        tracing::debug!("exported {:?} of podman container {:?}", target.location, facts.container.name);
        digests.push(Some(digest));
    }
    Ok(digests)
}

/// Whether an archive member of podman's is the container's file changes or its volumes.
fn member_kind(path: &str) -> (bool, bool) {
    let path = path.trim_start_matches("./");
    let rootfs = matches!(path, "rootfs-diff.tar" | "deleted.files");
    let volumes = path == "volumes" || path.starts_with("volumes/");
    (rootfs, volumes)
}

/// Writes an export of podman's archive `dumped` into `pending`: its members, less the file
/// changes and the volumes when they are dropped, compressed and sealed as the target says,
/// hashed on the way out.
fn write_from(
    dumped: &mut Dumped,
    (drop_rootfs, drop_volumes): (bool, bool),
    compression: Compression,
    sealed_to: &[String],
    pending: &mut PendingFile,
) -> Result<export::Written> {
    let target = pending.target.clone();
    let mut hashed = crate::util::HashingWriter::new(&mut pending.writer, blake3::Hasher::new());
    let dropped = (drop_rootfs, drop_volumes);
    let included = if sealed_to.is_empty() {
        copy_members(dumped, dropped, compression, &mut hashed, &target)?
    } else {
        let recipients = crate::seal::Recipients::parse(sealed_to)?;
        export::write_sealed(recipients, &mut hashed, &target, |sealing| {
            copy_members(dumped, dropped, compression, sealing, &target)
        })?
    };
    let size = hashed.written;
    Ok(export::Written { included, digest: format!("blake3:{}", hashed.hasher.finalize().to_hex()), size })
}

/// podman's archive `dumped`, compressed as asked, into `out` (a migration's stream); returns the
/// bytes written.
pub(crate) fn stream_archive(
    dumped: &Path,
    compression: Compression,
    out: &mut dyn Write,
    target: &Path,
) -> Result<u64> {
    let mut counted = crate::util::HashingWriter::new(out, ());
    copy_members(&mut Dumped::open(dumped)?, (false, false), compression, &mut counted, target)?;
    Ok(counted.written)
}

/// podman's archive as a copy reads it: the staged file, or the API's answer as it arrives.
struct Dumped {
    reader: Box<dyn Read + Send>,
    /// What errors name.
    origin: PathBuf,
}

impl Dumped {
    fn open(path: &Path) -> Result<Dumped> {
        let file = std::fs::File::open(path).map_err(Error::io("open", path))?;
        Ok(Dumped { reader: Box::new(std::io::BufReader::with_capacity(1 << 20, file)), origin: path.to_path_buf() })
    }
}

/// A checkpoint archive in podman's or a CRI runtime's layout, copied into `out` less its file
/// changes and its volumes when they are dropped (a gate's narrowing): uncompressed, or, sealed
/// to `sealed_to`, compressed with zstd and then sealed, as a sealed checkpoint image's layer is.
pub(crate) fn copy_archive(
    from: &Path,
    dropped: (bool, bool),
    sealed_to: &[String],
    out: &mut (dyn Write + Send),
    target: &Path,
) -> Result<Included> {
    if sealed_to.is_empty() {
        return copy_members(&mut Dumped::open(from)?, dropped, Compression::None, out, target);
    }
    let recipients = crate::seal::Recipients::parse(sealed_to)?;
    export::write_sealed(recipients, out, target, |sealing| {
        copy_members(&mut Dumped::open(from)?, dropped, Compression::Zstd, sealing, target)
    })
}

/// Copies the members of podman's archive `dumped` into `out`, compressed, less the file
/// changes and the volumes when they are dropped.
fn copy_members(
    dumped: &mut Dumped,
    (drop_rootfs, drop_volumes): (bool, bool),
    compression: Compression,
    out: &mut dyn Write,
    target: &Path,
) -> Result<Included> {
    let io_err = |e: std::io::Error| Error::io("write checkpoint archive", target)(e);
    let origin = dumped.origin.clone();
    let mut archive = tar::Archive::new(&mut dumped.reader);
    let dumped = origin.as_path();
    let compressor = crate::archive::checkpoint::Compressor::new(out, compression).map_err(io_err)?;
    let mut builder = tar::Builder::new(compressor);
    let mut included = Included::default();
    let entries = archive.entries().map_err(|e| podman_archive(dumped, e))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| podman_archive(dumped, e))?;
        let path = entry.path().map_err(|e| podman_archive(dumped, e))?.to_string_lossy().into_owned();
        let (rootfs, volumes) = member_kind(&path);
        if (rootfs && drop_rootfs) || (volumes && drop_volumes) {
            continue;
        }
        included.rootfs |= rootfs;
        included.volumes |= volumes;
        let mut header = entry.header().clone();
        // append_data writes the long-name records a path past 100 bytes needs.
        builder.append_data(&mut header, &path, &mut entry).map_err(io_err)?;
    }
    let compressor = builder.into_inner().map_err(io_err)?;
    compressor.finish().map_err(io_err)?.flush().map_err(io_err)?;
    Ok(included)
}

fn podman_archive(path: &Path, e: std::io::Error) -> Error {
    Error::invalid(format!("podman's checkpoint archive {:?} cannot be read: {e}", path.display().to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tee_hands_the_writer_what_the_staged_file_gets_and_outlives_a_writer_that_stopped() {
        let (sender, receiver) = std::sync::mpsc::sync_channel::<Vec<u8>>(2);
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            Received { receiver, chunk: Vec::new(), at: 0 }.read_to_end(&mut got).unwrap();
            got
        });
        let mut staged = Vec::new();
        let mut tee = Tee { staged: &mut staged, sender: Some(sender) };
        let data: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
        for chunk in data.chunks(7919) {
            tee.write_all(chunk).unwrap();
        }
        drop(tee);
        assert_eq!(reader.join().unwrap(), data);
        assert_eq!(staged, data);

        let (sender, receiver) = std::sync::mpsc::sync_channel::<Vec<u8>>(1);
        drop(receiver);
        let mut staged = Vec::new();
        let mut tee = Tee { staged: &mut staged, sender: Some(sender) };
        tee.write_all(b"still staged").unwrap();
        assert_eq!(staged, b"still staged");
    }

    #[test]
    fn podmans_file_changes_and_volumes_are_known_by_name() {
        assert_eq!(member_kind("rootfs-diff.tar"), (true, false));
        assert_eq!(member_kind("./deleted.files"), (true, false));
        assert_eq!(member_kind("volumes/data.tar"), (false, true));
        assert_eq!(member_kind("checkpoint/pages-1.img"), (false, false));
        assert_eq!(member_kind("volumes-not"), (false, false));
    }
}
