//! What an export holds: the archive in podman's layout and the one-layer checkpoint image.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use crate::archive::Compression;
use crate::archive::assemble::{self, Sources};
use crate::archive::checkpoint::{ArchiveWriter, Compressor};
use crate::archive::publish::PendingFile;
use crate::archive::summary::ConfigDump;
use crate::error::{Error, Result};
use crate::ops::Context;
use crate::progress::{Progress, ProgressWriter};
use crate::runtime::OciRuntime;
use crate::store::ContainerRecord;
use crate::util::HashingWriter;

pub use crate::archive::assemble::{Content, Included};

/// An archive as written: what it holds, and the BLAKE3 digest and size of its bytes.
pub struct Written {
    pub included: Included,
    /// `blake3:<hex>`.
    pub digest: String,
    pub size: u64,
}

/// Writes the archive into `pending` (not yet published): one streaming pass over the CRIU
/// images, compressed on all cores, sealed to `sealed_to` when it names anyone, and hashed on
/// the way out (the digest is of the bytes on disk), so nothing reads it back.
pub fn write_archive(
    ctx: &Context,
    record: &ContainerRecord,
    content: &Content,
    compression: Compression,
    sealed_to: &[String],
    pending: &mut PendingFile,
) -> Result<Written> {
    let target = pending.target.clone();
    let mut hashed = HashingWriter::new(&mut pending.writer, blake3::Hasher::new());
    let (included, size) = if sealed_to.is_empty() {
        stream_archive(ctx, record, content, compression, &mut hashed, &target)?
    } else {
        let recipients = crate::seal::Recipients::parse(sealed_to)?;
        let included = write_sealed(recipients, &mut hashed, &target, |out| {
            stream_archive(ctx, record, content, compression, out, &target).map(|(included, _)| included)
        })?;
        (included, hashed.written)
    };
    Ok(Written { included, digest: format!("blake3:{}", hashed.hasher.finalize().to_hex()), size })
}

/// Runs `write` into a stream sealed to `recipients` on its way to `out`: the encryption runs
/// on a thread of its own, a few chunks behind, so that it overlaps with the compression.
pub(super) fn write_sealed<W: Write + Send, T>(
    recipients: crate::seal::Recipients,
    out: W,
    target: &Path,
    write: impl FnOnce(&mut ChunkSender) -> Result<T>,
) -> Result<T> {
    let io_err = |e: std::io::Error| Error::io("write sealed checkpoint archive", target)(e);
    std::thread::scope(|scope| {
        let (chunks, received) = std::sync::mpsc::sync_channel::<Vec<u8>>(CHUNKS_BEHIND);
        let sealer = scope.spawn(move || -> std::io::Result<()> {
            let mut sealed = crate::seal::seal(out, &recipients)?;
            for chunk in received {
                sealed.write_all(&chunk)?;
            }
            sealed.finish().map(drop)
        });
        let mut sender = ChunkSender { chunks: Some(chunks), filling: Vec::with_capacity(CHUNK) };
        let written = write(&mut sender).and_then(|value| sender.finish().map(|()| value).map_err(io_err));
        drop(sender);
        let sealed = sealer.join().unwrap_or_else(|_| Err(std::io::Error::other("the sealing thread panicked")));
        // The sealer's own failure (a full disk, say) explains a writer's broken channel.
        sealed.map_err(io_err)?;
        written
    })
}

/// Chunks of this size go to the sealing thread; this many wait at most.
const CHUNK: usize = 1 << 20;
const CHUNKS_BEHIND: usize = 4;

/// A writer that hands what it is given to another thread in chunks.
pub(super) struct ChunkSender {
    chunks: Option<std::sync::mpsc::SyncSender<Vec<u8>>>,
    filling: Vec<u8>,
}

impl ChunkSender {
    fn send(&mut self) -> std::io::Result<()> {
        let chunk = std::mem::replace(&mut self.filling, Vec::with_capacity(CHUNK));
        let gone = || std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the sealing thread stopped");
        self.chunks.as_ref().ok_or_else(gone)?.send(chunk).map_err(|_| gone())
    }

    /// Sends what is left; nothing more may be written.
    fn finish(&mut self) -> std::io::Result<()> {
        if !self.filling.is_empty() {
            self.send()?;
        }
        self.chunks = None;
        Ok(())
    }
}

impl Write for ChunkSender {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let room = CHUNK - self.filling.len();
        let taken = buf.len().min(room);
        self.filling.extend_from_slice(&buf[..taken]);
        if self.filling.len() == CHUNK {
            self.send()?;
        }
        Ok(taken)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The same archive, into any stream (`target` names it in errors): an ssh channel to a
/// migration's destination, say. Returns what it holds and how many bytes were written.
pub fn stream_archive<W: Write>(
    ctx: &Context,
    record: &ContainerRecord,
    content: &Content,
    compression: Compression,
    out: W,
    target: &Path,
) -> Result<(Included, u64)> {
    let io_err = |e: std::io::Error| Error::io("write checkpoint archive", target)(e);
    let compressor = Compressor::new(HashingWriter::new(out, ()), compression).map_err(io_err)?;
    // Walking the images, the upper layer and the volumes costs I/O: only for a terminal.
    let progress = Progress::on_terminal("export", || Some(estimated_size(ctx, record, content)));
    let mut writer = ArchiveWriter::new(ProgressWriter::new(compressor, progress));
    let included = add_members(ctx, record, content, &mut writer)?;
    let mut counted = writer.finish().and_then(|w| w.inner.finish()).map_err(io_err)?;
    counted.flush().map_err(io_err)?;
    Ok((included, counted.written))
}

/// About what an archive holds before compression, for the time left on a terminal: the CRIU
/// images, the container's upper layer and its volumes.
fn estimated_size(ctx: &Context, record: &ContainerRecord, content: &Content) -> u64 {
    let paths = ctx.containers.paths(&record.id);
    let mut size = crate::util::dir_size(&paths.in_bundle(content.images_dir));
    size += content.parents.iter().map(|p| crate::util::dir_size(&paths.in_bundle(p))).sum::<u64>();
    if !content.ignore_rootfs {
        size += crate::util::dir_size(&paths.upper());
    }
    if !content.ignore_volumes {
        size += record.named_volumes().map(|v| crate::util::dir_size(&ctx.volumes.mountpoint(&v.source))).sum::<u64>();
    }
    size
}

/// Gathers where the members come from (the rootfs changes only when they go in) and writes them.
fn add_members<W: Write>(
    ctx: &Context,
    record: &ContainerRecord,
    content: &Content,
    writer: &mut ArchiveWriter<W>,
) -> Result<Included> {
    let paths = ctx.containers.paths(&record.id);
    let changes = if content.ignore_rootfs { Vec::new() } else { crate::ops::container::diff(ctx, record)? };
    let runtime_name = record.runtime.rsplit('/').next().unwrap_or(&record.runtime);
    let config = ConfigDump::from_record(record, runtime_name);
    let scratch = crate::util::tempdir_in(&ctx.roots.staging_dir(), "export")?;
    let sources = Sources {
        bundle: &paths.bundle(),
        log: &paths.log(),
        upper: &paths.upper(),
        changes: &changes,
        config: &config,
        volumes: record.named_volumes().map(|v| (v.source.clone(), ctx.volumes.mountpoint(&v.source))).collect(),
        scratch: &scratch.path,
    };
    Ok(assemble::add_members(writer, content, &sources)?)
}

/// The annotations that mark a checkpoint image for each engine, with this host's true values:
/// podman's `io.podman.annotations.checkpoint.*`, CRI-O's
/// `io.kubernetes.cri-o.annotations.checkpoint.*` and the `org.criu.checkpoint.*` that
/// containerd and checkpointctl read.
fn image_annotations(
    record: &ContainerRecord,
    runtime: &dyn OciRuntime,
    criu_version: u32,
) -> BTreeMap<String, String> {
    use crate::metadata::{CRIO_ANNOTATION_PREFIX, CRIU_ANNOTATION_PREFIX, PODMAN_ANNOTATION_PREFIX};
    let key = |k: &str| format!("{PODMAN_ANNOTATION_PREFIX}{k}");
    let cri_o = |k: &str| format!("{CRIO_ANNOTATION_PREFIX}{k}");
    let criu = |k: &str| format!("{CRIU_ANNOTATION_PREFIX}{k}");
    let host = crate::hostinfo::HostInfo::probe(Path::new("/"));
    let mut annotations = BTreeMap::from([
        (cri_o("name"), record.name.clone()),
        (cri_o("rawImageName"), record.image_name.clone()),
        (cri_o("rootfsImageID"), record.image_id.clone()),
        (cri_o("rootfsImageName"), record.image_ref.clone()),
        (cri_o("criu.version"), criu_version.to_string()),
        (criu("container.name"), record.name.clone()),
        (criu("engine.name"), "ckpt".to_string()),
        (criu("engine.version"), env!("CARGO_PKG_VERSION").to_string()),
        (criu("rootfsImageName"), record.image_ref.clone()),
    ]);
    annotations.extend([
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
    ]);
    annotations
}

/// The one layer of a checkpoint image, its filesystem the export's content, written to private
/// scratch and not yet in the image store: the gates judge it there, as they judge an archive
/// before it is published. Dropped unpublished, it leaves nothing.
pub struct StagedLayer {
    scratch: crate::util::TempDir,
    pub size: u64,
    pub included: Included,
    /// Whom it is sealed to: an age file of a zstd archive, written encrypted. None: a tar.
    sealed_to: Vec<String>,
}

impl StagedLayer {
    fn file(&self) -> std::path::PathBuf {
        self.scratch.path.join(if self.sealed_to.is_empty() { "layer.tar" } else { "layer.age" })
    }

    /// `blake3:<hex>` of the layer, as a gate sees it.
    pub fn digest(&self) -> Result<String> {
        Ok(crate::util::file_digest(&self.file())?)
    }
}

/// Stages the layer of a checkpoint image of `content`; sealed to `sealed_to` when it names
/// anyone, in which case nothing but ciphertext is written.
pub fn stage_image_layer(
    ctx: &Context,
    record: &ContainerRecord,
    content: &Content,
    sealed_to: &[String],
) -> Result<StagedLayer> {
    let scratch = crate::util::tempdir_in(&ctx.roots.staging_dir(), "image")?;
    let sealed = !sealed_to.is_empty();
    let path = scratch.path.join(if sealed { "layer.age" } else { "layer.tar" });
    let file = std::fs::File::create(&path).map_err(Error::io("create", &path))?;
    let mut out = std::io::BufWriter::new(crate::archive::PieceWriter(file));
    let included = if sealed {
        let recipients = crate::seal::Recipients::parse(sealed_to)?;
        write_sealed(recipients, &mut out, &path, |sealing| {
            stream_archive(ctx, record, content, Compression::Zstd, sealing, &path).map(|(included, _)| included)
        })?
    } else {
        let mut writer = ArchiveWriter::new(&mut out);
        let included = add_members(ctx, record, content, &mut writer)?;
        writer.finish().map_err(Error::io("write", &path))?;
        included
    };
    out.flush().map_err(Error::io("write", &path))?;
    drop(out);
    let size = std::fs::metadata(&path).map_err(Error::io("stat", &path))?.len();
    Ok(StagedLayer { scratch, size, included, sealed_to: sealed_to.to_vec() })
}

/// Puts the layer file at `path` into the image store: a tar as the tar it is, one sealed to
/// `sealed_to` as an opaque blob of the sealed layer type, whose recipients `annotations` gain.
pub(crate) fn store_layer(
    ctx: &Context,
    path: &Path,
    sealed_to: &[String],
    annotations: &mut BTreeMap<String, String>,
) -> Result<crate::image::LayerBlob> {
    if sealed_to.is_empty() {
        let file = std::fs::File::open(path).map_err(Error::io("open", path))?;
        return Ok(ctx.images.write_layer_from_tar(std::io::BufReader::with_capacity(1 << 20, file))?);
    }
    // Public keys only, as the age header's own stanzas: who can open it, without opening it.
    annotations.insert(crate::metadata::SEALED_TO_ANNOTATION.to_string(), sealed_to.join("\n"));
    Ok(ctx.images.write_layer_from_file(path, crate::image::SEALED_LAYER_TYPE)?)
}

/// Publishes a staged layer as the one-layer checkpoint image `name`, with the annotations
/// podman, CRI-O and containerd read.
pub fn publish_image(
    ctx: &Context,
    runtime: &dyn OciRuntime,
    record: &ContainerRecord,
    staged: StagedLayer,
    name: &str,
) -> Result<()> {
    let mut annotations = image_annotations(record, runtime, ctx.criu()?.version()?);
    let layer = store_layer(ctx, &staged.file(), &staged.sealed_to, &mut annotations)?;
    let reference = crate::image::normalize_reference(name);
    ctx.images.add_image(&reference, &[layer], None, annotations)?;
    Ok(ctx.images.set_trust(&reference, "made-here")?)
}
