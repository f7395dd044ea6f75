//! The checkpoint archive in podman's layout, written in one streaming pass with a manifest of
//! every member's size and BLAKE3 digest at the end, and read back into a private staging directory.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, BufRead, Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::deferred::DeferredImages;
use super::follow::KnownDigests;
use super::{ArchiveError, Compression, ExtractOptions};

pub use crate::metadata::{
    CHECKPOINT_DIR, CONFIG_DUMP, CONTAINER_LOG, CRIU_STATS_DUMP as STATS_DUMP, DELETED_FILES, DEVSHM, NETWORK_STATUS,
    PRE_CHECKPOINT_DIR, ROOTFS_DIFF, SPEC_DUMP, VOLUMES_DIR,
};
/// ckpt's own addition: size and BLAKE3 digest of every other member. BLAKE3 rather than
/// SHA-256 because hashing every memory page is on the export's critical path, and BLAKE3 is
/// several times faster on the same core.
pub const MANIFEST: &str = "ckpt-manifest.json";
/// A manifest lists every member in a line or so; more than this is not one.
const MAX_MANIFEST_BYTES: u64 = 256 << 20;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ManifestEntry {
    pub name: String,
    pub size: u64,
    pub blake3: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub members: Vec<ManifestEntry>,
}

const MANIFEST_FORMAT: &str = "ckpt-checkpoint/1 (blake3)";

fn threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The compressed stream under the tar builder.
pub enum Compressor<W: Write> {
    Zstd(zstd::Encoder<'static, W>),
    Gzip(super::pargzip::ParGzEncoder<W>),
    None(W),
}

impl<W: Write> Compressor<W> {
    pub fn new(inner: W, compression: Compression) -> io::Result<Compressor<W>> {
        Ok(match compression {
            Compression::Zstd => {
                // Level 1: on two cores the export is bound by compression, and level 3 costs half again
                // as much time for a few percent of size on memory pages.
                let mut encoder = zstd::Encoder::new(inner, 1)?;
                // Multi-threaded zstd is what makes the export faster than podman's.
                encoder.multithread(threads() as u32)?;
                Compressor::Zstd(encoder)
            }
            // gzip is single-threaded by nature: blocks as members, on every core.
            Compression::Gzip => Compressor::Gzip(super::pargzip::ParGzEncoder::new(inner, threads())),
            Compression::None => Compressor::None(inner),
        })
    }

    pub fn finish(self) -> io::Result<W> {
        match self {
            Compressor::Zstd(e) => e.finish(),
            Compressor::Gzip(e) => e.finish(),
            Compressor::None(w) => Ok(w),
        }
    }
}

impl<W: Write> Write for Compressor<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Compressor::Zstd(e) => e.write(buf),
            Compressor::Gzip(e) => e.write(buf),
            Compressor::None(w) => w.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Compressor::Zstd(e) => e.flush(),
            Compressor::Gzip(e) => e.flush(),
            Compressor::None(w) => w.flush(),
        }
    }
}

/// Writes archive members and remembers their digests for the manifest.
pub struct ArchiveWriter<W: Write> {
    builder: tar::Builder<W>,
    members: Vec<ManifestEntry>,
    /// Digests already taken (page images hashed behind CRIU), used for the files they describe.
    known: KnownDigests,
}

impl<W: Write> ArchiveWriter<W> {
    pub fn new(inner: W) -> ArchiveWriter<W> {
        let mut builder = tar::Builder::new(inner);
        builder.follow_symlinks(false);
        ArchiveWriter { builder, members: Vec::new(), known: KnownDigests::new() }
    }

    /// Files whose digests are known: each is still read into the archive, but not hashed again
    /// if it is the file, at the size, its digest was taken from.
    pub fn know_digests(&mut self, known: KnownDigests) {
        self.known = known;
    }

    pub fn add_bytes(&mut self, name: &str, bytes: &[u8]) -> io::Result<()> {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Regular);
        header.set_size(bytes.len() as u64);
        header.set_mode(0o600);
        header.set_mtime(chrono::Utc::now().timestamp().max(0) as u64);
        self.members.push(ManifestEntry {
            name: name.to_string(),
            size: bytes.len() as u64,
            blake3: blake3::hash(bytes).to_hex().to_string(),
        });
        self.builder.append_data(&mut header, name, bytes)
    }

    /// Adds one file system object without following symlinks; regular files are hashed.
    pub fn add_path(&mut self, name: &str, path: &Path) -> io::Result<()> {
        let meta = fs::symlink_metadata(path)?;
        let mut header = tar::Header::new_gnu();
        header.set_metadata_in_mode(&meta, tar::HeaderMode::Complete);
        let file_type = meta.file_type();
        if file_type.is_file() {
            // A file that grows meanwhile (the log of a container left running) is archived as
            // it was when it was looked at; one that shrinks cannot be.
            let known = self.known.get(path).filter(|k| k.describes(&meta)).map(|k| k.blake3.clone());
            let (read, digest) = self.append_hashed(&mut header, name, path, meta.len(), known)?;
            if read != meta.len() {
                return Err(io::Error::other(format!("{} shrank while it was archived", path.display())));
            }
            self.members.push(ManifestEntry { name: name.to_string(), size: read, blake3: digest });
            Ok(())
        } else if file_type.is_dir() {
            header.set_size(0);
            self.builder.append_data(&mut header, format!("{name}/"), io::empty())
        } else if file_type.is_symlink() {
            let target = fs::read_link(path)?;
            header.set_size(0);
            self.builder.append_link(&mut header, name, target)
        } else if file_type.is_socket() {
            Ok(()) // sockets cannot be archived; the process that owns one recreates it
        } else {
            header.set_size(0);
            if file_type.is_char_device() || file_type.is_block_device() {
                let rdev = meta.rdev();
                header.set_device_major(nix::sys::stat::major(rdev) as u32)?;
                header.set_device_minor(nix::sys::stat::minor(rdev) as u32)?;
            }
            self.builder.append_data(&mut header, name, io::empty())
        }
    }

    /// Appends a file while another thread reads and hashes it, so that hashing overlaps with
    /// compression instead of adding to it; a `known` digest is not taken again.
    ///
    /// The chunks go to the stream whole: through `tar::Builder::append_data` they would go in
    /// `io::copy`'s 8 KiB steps, each a trip down the writer stack, and the archive's own BLAKE3
    /// would see them one 8 KiB piece at a time, 512 bytes off its chunk boundaries.
    fn append_hashed(
        &mut self,
        header: &mut tar::Header,
        name: &str,
        path: &Path,
        size: u64,
        known: Option<String>,
    ) -> io::Result<(u64, String)> {
        let mut file = File::open(path)?.take(size);
        let hash = known.is_none();
        let (sender, receiver) = std::sync::mpsc::sync_channel::<io::Result<Vec<u8>>>(super::CHUNKS_AHEAD);
        let (recycle, recycled) = std::sync::mpsc::channel::<Vec<u8>>();
        std::thread::scope(|scope| {
            let hasher = scope.spawn(move || {
                let mut hasher = blake3::Hasher::new();
                let mut pool = super::ChunkPool::new(recycled, super::CHUNKS_IN_FLIGHT);
                let total =
                    super::send_chunks(&mut file, &sender, &mut pool, &crate::interrupt::check_io, &mut |chunk| {
                        if hash {
                            hasher.update(chunk);
                        }
                    });
                (total, known.unwrap_or_else(|| hasher.finalize().to_hex().to_string()))
            });
            let appended = self.append_chunks(header, name, size, &receiver, &recycle);
            drop(receiver);
            let (_, digest) = hasher.join().map_err(|_| io::Error::other("hashing thread panicked"))?;
            appended.map(|written| (written, digest))
        })
    }

    /// Writes a member of `size` bytes whose data arrives in chunks on `receiver`: the header
    /// (with any long-name entry the tar crate adds), the chunks, then the padding. Returns the
    /// bytes written: fewer than `size` leave the member cut short, for the caller to refuse.
    fn append_chunks(
        &mut self,
        header: &mut tar::Header,
        name: &str,
        size: u64,
        receiver: &std::sync::mpsc::Receiver<io::Result<Vec<u8>>>,
        recycle: &std::sync::mpsc::Sender<Vec<u8>>,
    ) -> io::Result<u64> {
        header.set_size(size);
        // The tar crate writes the header and then copies the reader, which is empty here: the
        // data follows below, exactly as many bytes as the header says.
        self.builder.append_data(header, name, io::empty())?;
        let out = self.builder.get_mut();
        let mut written = 0u64;
        while written < size {
            let Ok(chunk) = receiver.recv() else { break };
            let chunk = chunk?;
            let take = chunk.len().min((size - written) as usize);
            out.write_all(&chunk[..take])?;
            written += take as u64;
            let _ = recycle.send(chunk);
        }
        if written == size {
            pad(out, size)?;
        }
        Ok(written)
    }

    /// Adds a directory tree under `name`, sorted, never following symlinks.
    pub fn add_tree(&mut self, name: &str, dir: &Path) -> io::Result<()> {
        self.add_path(name, dir)?;
        let mut entries: Vec<_> = fs::read_dir(dir)?.collect::<io::Result<_>>()?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let child_name = format!("{name}/{}", entry.file_name().to_string_lossy());
            if entry.file_type()?.is_dir() {
                self.add_tree(&child_name, &entry.path())?;
            } else {
                self.add_path(&child_name, &entry.path())?;
            }
        }
        Ok(())
    }

    /// Appends the manifest and returns the underlying writer.
    pub fn finish(mut self) -> io::Result<W> {
        let manifest = Manifest { format: MANIFEST_FORMAT.into(), members: std::mem::take(&mut self.members) };
        let bytes = serde_json::to_vec_pretty(&manifest).expect("json");
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Regular);
        header.set_size(bytes.len() as u64);
        header.set_mode(0o600);
        header.set_mtime(chrono::Utc::now().timestamp().max(0) as u64);
        self.builder.append_data(&mut header, MANIFEST, &bytes[..])?;
        self.builder.into_inner()
    }
}

/// Fills a member of `size` bytes up to the next 512-byte block.
fn pad(out: &mut impl Write, size: u64) -> io::Result<()> {
    let padding = (512 - size % 512) % 512;
    out.write_all(&[0u8; 512][..padding as usize])
}

/// Builds an uncompressed inner tar (rootfs-diff.tar, volumes/<name>.tar) of `entries`, which are
/// paths relative to `base`, as podman's entries are relative to `/`.
///
/// The files may belong to a container that is still running (`-R`): each entry is opened
/// beneath `base` with no symlink followed, its header comes from that descriptor, and its member
/// holds exactly the bytes the header promises (a file that grows is cut at the size it had, one
/// that shrinks is padded with zeros), so the tar stays well-formed whatever the container does.
pub fn write_inner_tar(output: &Path, base: &Path, entries: &[PathBuf]) -> io::Result<()> {
    use nix::fcntl::OFlag;
    let beneath = crate::safefs::Beneath::open(base)?;
    let file = File::create(output)?;
    let mut builder = tar::Builder::new(io::BufWriter::new(file));
    builder.follow_symlinks(false);
    for rel in entries {
        crate::interrupt::check_io()?;
        let handle = match beneath.open_at(rel, OFlag::O_PATH | OFlag::O_NOFOLLOW) {
            Ok(fd) => File::from(fd),
            // Deleted since the listing: the archive holds what is there now.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", base.join(rel).display()))),
        };
        let meta = handle.metadata()?;
        let file_type = meta.file_type();
        if file_type.is_socket() {
            continue;
        }
        let mut header = tar::Header::new_gnu();
        if file_type.is_file() {
            let reader = File::from(beneath.open_at(rel, OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK)?);
            let meta = reader.metadata()?;
            if !meta.is_file() {
                return Err(io::Error::other(format!(
                    "{} changed type while it was archived",
                    base.join(rel).display()
                )));
            }
            header.set_metadata_in_mode(&meta, tar::HeaderMode::Complete);
            let size = meta.len();
            builder.append_data(&mut header, rel, ExactSize { inner: reader.take(size), remaining: size })?;
        } else if file_type.is_symlink() {
            header.set_metadata_in_mode(&meta, tar::HeaderMode::Complete);
            let target = nix::fcntl::readlinkat(&handle, "").map_err(|e| io::Error::from_raw_os_error(e as i32))?;
            builder.append_link(&mut header, rel, PathBuf::from(target))?;
        } else {
            header.set_metadata_in_mode(&meta, tar::HeaderMode::Complete);
            header.set_size(0);
            let name = if meta.is_dir() { rel.join("") } else { rel.clone() };
            builder.append_data(&mut header, name, io::empty())?;
        }
    }
    builder.into_inner()?.flush()
}

/// Yields exactly `remaining` bytes: the inner reader's, then zeros if it ends early.
struct ExactSize<R> {
    inner: R,
    remaining: u64,
}

impl<R: Read> Read for ExactSize<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 {
            return Ok(0);
        }
        let want = buf.len().min(self.remaining.min(usize::MAX as u64) as usize);
        let mut n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            buf[..want].fill(0);
            n = want;
        }
        self.remaining -= n as u64;
        Ok(n)
    }
}

/// Every path below `dir`, relative to it, parents before children, starting with `.`.
pub fn tree_entries(dir: &Path) -> io::Result<Vec<PathBuf>> {
    fn walk(base: &Path, rel: &Path, out: &mut Vec<PathBuf>) -> io::Result<()> {
        let mut entries: Vec<_> = fs::read_dir(base.join(rel))?.collect::<io::Result<_>>()?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let child = rel.join(entry.file_name());
            out.push(child.clone());
            if entry.file_type()?.is_dir() {
                walk(base, &child, out)?;
            }
        }
        Ok(())
    }
    let mut out = vec![PathBuf::from(".")];
    walk(dir, Path::new("."), &mut out)?;
    Ok(out)
}

/// Whether `path` starts as a tar archive does, plain or compressed with zstd or gzip: what an
/// earlier export left there, and so what an export may replace.
pub fn looks_like_archive(path: &Path) -> bool {
    let Ok(mut reader) = super::open_decompressed(path) else { return false };
    let mut header = [0u8; 512];
    reader.read_exact(&mut header).is_ok() && header[257..262] == *b"ustar"
}

/// Extracts an archive into `staging` and checks it against its manifest, if it has one
/// (podman's archives have none). An uncompressed archive's large members are read from the file
/// itself at their offsets; a compressed one is read as a stream.
pub fn extract_checkpoint(archive: &Path, staging: &Path, options: &ExtractOptions) -> Result<bool, ArchiveError> {
    extract_checkpoint_leaving_pages(archive, staging, options, false).map(|extracted| extracted.verified)
}

/// What [`extract_checkpoint_leaving_pages`] did.
pub struct Extracted {
    /// Whether a manifest listed and matched every member copied (and listed the page images left).
    pub verified: bool,
    /// The page images left in the archive, to be copied and checked still.
    pub page_images: Option<DeferredImages>,
}

/// [`extract_checkpoint`], leaving the page images of an uncompressed archive in it when
/// `leave_pages` is set, for a restore to copy while it starts (see `archive::deferred`).
pub fn extract_checkpoint_leaving_pages(
    archive: &Path,
    staging: &Path,
    options: &ExtractOptions,
    leave_pages: bool,
) -> Result<Extracted, ArchiveError> {
    let name = archive.display().to_string();
    let io_err = |action: &'static str| {
        let name = name.clone();
        move |source| ArchiveError::Io { archive: name, action, path: archive.to_path_buf(), source }
    };
    let file = std::fs::File::open(archive).map_err(io_err("open"))?;
    let progress = crate::progress::Progress::on_terminal("import", || file.metadata().map(|m| m.len()).ok());
    let mut file = std::io::BufReader::with_capacity(1 << 20, file);
    let magic = file.fill_buf().map_err(io_err("read"))?;
    if Compression::sniff(magic) == Compression::None {
        let mut digests = super::FileDigests::new();
        let mut left = Vec::new();
        let pages_from = file.get_ref().try_clone().map_err(io_err("open"))?;
        let leaving = leave_pages.then_some(&mut left);
        super::extract::extract_file_hashing(file, progress, staging, &name, options, &mut digests, leaving)?;
        let pending: HashMap<PathBuf, u64> = left.iter().map(|m| (m.rel.clone(), m.size)).collect();
        let (verified, expected) = verify_manifest_pending(staging, &name, &digests, &pending)?;
        let page_images = (!left.is_empty()).then(|| DeferredImages {
            archive_name: name,
            archive: pages_from,
            members: left,
            expected: verified.then_some(expected),
        });
        return Ok(Extracted { verified, page_images });
    }
    let counted = crate::progress::ProgressReader::new(file, progress);
    let verified = extract_checkpoint_stream(counted, &name, staging, options)?;
    Ok(Extracted { verified, page_images: None })
}

/// The same, from a stream (a pipe, an ssh channel): nothing needs to seek, and each member is
/// checked as it lands.
pub fn extract_checkpoint_stream<R: std::io::BufRead + Send + 'static>(
    stream: R,
    name: &str,
    staging: &Path,
    options: &ExtractOptions,
) -> Result<bool, ArchiveError> {
    let reader = super::decompress(stream, name)?;
    let mut digests = super::FileDigests::new();
    super::extract_hashing(reader, staging, name, options, &mut digests)?;
    verify_manifest(staging, name, &digests)
}

/// Returns whether a manifest was present; any mismatch, extra or missing member is an error.
/// A member in `written` is checked against the digest taken as it was extracted; any other
/// is read back and hashed.
pub fn verify_manifest(staging: &Path, name: &str, written: &super::FileDigests) -> Result<bool, ArchiveError> {
    verify_manifest_pending(staging, name, written, &HashMap::new()).map(|(verified, _)| verified)
}

/// [`verify_manifest`], but the members in `pending` (with their sizes) are not there yet: each
/// must be listed with its size, and the BLAKE3 listed for it is returned, to be checked once it is in.
fn verify_manifest_pending(
    staging: &Path,
    name: &str,
    written: &super::FileDigests,
    pending: &HashMap<PathBuf, u64>,
) -> Result<(bool, HashMap<PathBuf, String>), ArchiveError> {
    let corrupt = |member: &str, detail: String| ArchiveError::CorruptMember {
        archive: name.into(),
        member: member.into(),
        detail,
    };
    let beneath = crate::safefs::Beneath::open(staging).map_err(|e| corrupt(".", e.to_string()))?;
    let bytes = match beneath.open_file(Path::new(MANIFEST)) {
        Ok(file) => {
            let mut bytes = Vec::new();
            file.take(MAX_MANIFEST_BYTES).read_to_end(&mut bytes).map_err(|e| corrupt(MANIFEST, e.to_string()))?;
            bytes
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((false, HashMap::new())),
        Err(e) => return Err(corrupt(MANIFEST, e.to_string())),
    };
    let manifest: Manifest = serde_json::from_slice(&bytes).map_err(|e| corrupt(MANIFEST, e.to_string()))?;
    if manifest.format != MANIFEST_FORMAT {
        return Err(corrupt(MANIFEST, format!("unknown format {:?}", manifest.format)));
    }
    let mut listed = std::collections::HashSet::new();
    let mut expected = HashMap::new();
    for entry in &manifest.members {
        let Some(rel) = super::extract::clean_relative(Path::new(&entry.name)) else {
            return Err(corrupt(&entry.name, "the manifest names a path outside the archive".into()));
        };
        if let Some(&size) = pending.get(&rel) {
            if size != entry.size {
                return Err(corrupt(&entry.name, format!("size {size} does not match the manifest's {}", entry.size)));
            }
            expected.insert(rel.clone(), entry.blake3.clone());
            listed.insert(rel);
            continue;
        }
        // Opened beneath the staging with no link followed, so the bytes hashed are the member's.
        let file = beneath
            .open_file(&rel)
            .map_err(|e| corrupt(&entry.name, format!("listed in the manifest but missing or not a file ({e})")))?;
        let len = file.metadata().map_err(|e| corrupt(&entry.name, e.to_string()))?.len();
        if len != entry.size {
            return Err(corrupt(&entry.name, format!("size {len} does not match the manifest's {}", entry.size)));
        }
        let digest = match written.get(&rel) {
            Some((size, digest)) if *size == len => *digest,
            _ => {
                let mut hasher = blake3::Hasher::new();
                hasher.update_reader(file).map_err(|e| corrupt(&entry.name, e.to_string()))?;
                hasher.finalize()
            }
        };
        if digest.to_hex().as_str() != entry.blake3 {
            return Err(corrupt(&entry.name, "its BLAKE3 digest does not match the manifest".into()));
        }
        listed.insert(rel);
    }
    for rel in tree_entries(staging).map_err(|e| corrupt(".", e.to_string()))? {
        let rel = super::extract::clean_relative(&rel).unwrap_or_default();
        let path = staging.join(&rel);
        let is_file = fs::symlink_metadata(&path).map(|m| m.is_file()).unwrap_or(false);
        if is_file && rel != Path::new(MANIFEST) && !listed.contains(&rel) {
            return Err(corrupt(&rel.display().to_string(), "present in the archive but not in its manifest".into()));
        }
    }
    if let Some(unlisted) = pending.keys().find(|rel| !listed.contains(*rel)) {
        return Err(corrupt(&unlisted.display().to_string(), "present in the archive but not in its manifest".into()));
    }
    Ok((true, expected))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small archive written by ckpt's own writer, extracted into `staging`.
    fn staged_archive(staging: &Path) {
        let mut writer = ArchiveWriter::new(Vec::new());
        writer.add_bytes("config.dump", b"{}").unwrap();
        writer.add_bytes("checkpoint/inventory.img", b"inventory").unwrap();
        let bytes = writer.finish().unwrap();
        std::fs::create_dir_all(staging).unwrap();
        crate::archive::extract(&bytes[..], staging, "t", &ExtractOptions::checkpoint()).unwrap();
    }

    #[test]
    fn the_manifest_catches_changed_extra_and_missing_members() {
        let dir = tempfile::tempdir().unwrap();
        let staging = dir.path().join("ok");
        staged_archive(&staging);
        assert!(verify_manifest(&staging, "t", &Default::default()).unwrap());
        type Edit = fn(&Path);
        let cases: [(&str, Edit); 3] = [
            ("BLAKE3 digest does not match", |s| {
                std::fs::write(s.join("checkpoint/inventory.img"), b"invent0ry").unwrap()
            }),
            ("not in its manifest", |s| std::fs::write(s.join("checkpoint/extra.img"), b"x").unwrap()),
            ("missing", |s| std::fs::remove_file(s.join("config.dump")).unwrap()),
        ];
        for (n, (expected, edit)) in cases.into_iter().enumerate() {
            let staging = dir.path().join(format!("case-{n}"));
            staged_archive(&staging);
            edit(&staging);
            let err = verify_manifest(&staging, "t", &Default::default()).unwrap_err().to_string();
            assert!(err.contains(expected), "{expected}: {err}");
        }
        let podman = dir.path().join("podman");
        staged_archive(&podman);
        std::fs::remove_file(podman.join(MANIFEST)).unwrap();
        assert!(!verify_manifest(&podman, "t", &Default::default()).unwrap(), "no manifest is reported, not an error");
    }

    #[test]
    fn digests_taken_while_extracting_check_the_manifest_without_reading_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut writer = ArchiveWriter::new(Vec::new());
        writer.add_bytes("config.dump", b"{}").unwrap();
        writer.add_bytes("checkpoint/pages-1.img", b"pages").unwrap();
        let bytes = writer.finish().unwrap();
        // Extracts `bytes` into a fresh `staging`, with the digests taken on the way.
        let extract = |bytes: &[u8], staging: &Path| {
            std::fs::create_dir_all(staging).unwrap();
            let mut written = crate::archive::FileDigests::new();
            crate::archive::extract_hashing(bytes, staging, "t", &ExtractOptions::checkpoint(), &mut written).unwrap();
            written
        };
        let staging = dir.path().join("ok");
        let written = extract(&bytes, &staging);
        assert_eq!(written[Path::new("checkpoint/pages-1.img")], (5, blake3::hash(b"pages")));
        assert!(verify_manifest(&staging, "t", &written).unwrap());

        // A member that appears twice: the second replaces the first, and its digest is the one
        // checked. Here the manifest lists the first, so the archive is refused.
        let mut twice = tar::Builder::new(Vec::new());
        let mut append = |name: &str, data: &[u8]| {
            let mut header = tar::Header::new_ustar();
            header.set_size(data.len() as u64);
            header.set_mode(0o600);
            header.set_cksum();
            twice.append_data(&mut header, name, data).unwrap();
        };
        let mut original = tar::Archive::new(&bytes[..]);
        for entry in original.entries().unwrap() {
            let mut entry = entry.unwrap();
            let name = entry.path().unwrap().to_string_lossy().into_owned();
            let mut data = Vec::new();
            entry.read_to_end(&mut data).unwrap();
            append(&name, &data);
        }
        append("checkpoint/pages-1.img", b"PAGES");
        let bytes = twice.into_inner().unwrap();
        let staging = dir.path().join("twice");
        let written = extract(&bytes, &staging);
        assert_eq!(written[Path::new("checkpoint/pages-1.img")].1, blake3::hash(b"PAGES"));
        let err = verify_manifest(&staging, "t", &written).unwrap_err().to_string();
        assert!(err.contains("BLAKE3 digest does not match"), "{err}");
    }

    /// A page image of `size` bytes at `dir/pages-1.img`, and a member name for it too long for a
    /// plain tar header.
    fn page_image(dir: &Path, size: usize) -> (String, Vec<u8>, PathBuf) {
        let name = format!("checkpoint/{}/pages-1.img", "p".repeat(120));
        let data: Vec<u8> = (0..size).map(|i| (i * 13 % 251) as u8).collect();
        let path = dir.join("pages-1.img");
        std::fs::write(&path, &data).unwrap();
        (name, data, path)
    }

    /// `bytes` written as `dir/archive.tar`, and an empty staging directory `dir/case` for it.
    fn archive_and_staging(dir: &Path, bytes: &[u8], case: &str) -> (PathBuf, PathBuf) {
        let archive = dir.join("archive.tar");
        std::fs::write(&archive, bytes).unwrap();
        let staging = dir.join(case);
        std::fs::create_dir_all(&staging).unwrap();
        (archive, staging)
    }

    /// An uncompressed archive in a file: its large members are copied from their offsets
    /// (several copy steps, under a long name, not a whole number of blocks), the small
    /// ones around them read through tar, and all are checked against the manifest. A byte
    /// changed inside a copied member, or the file cut short inside one, is caught.
    #[test]
    fn large_members_of_an_uncompressed_archive_file_are_copied_checked_and_complete() {
        let dir = tempfile::tempdir().unwrap();
        let (long_name, data, pages) = page_image(dir.path(), (17 << 20) + 100);
        let mut writer = ArchiveWriter::new(Vec::new());
        writer.add_bytes("config.dump", b"{}").unwrap();
        writer.add_path(&long_name, &pages).unwrap();
        writer.add_bytes("checkpoint/inventory.img", b"inventory").unwrap();
        let bytes = writer.finish().unwrap();
        let extract = |bytes: &[u8], case: &str| {
            let (archive, staging) = archive_and_staging(dir.path(), bytes, case);
            extract_checkpoint(&archive, &staging, &ExtractOptions::checkpoint()).map(|verified| (verified, staging))
        };

        let (verified, staging) = extract(&bytes, "whole").unwrap();
        assert!(verified, "the manifest was there and matched");
        assert_eq!(std::fs::read(staging.join(&long_name)).unwrap(), data);
        assert_eq!(std::fs::read(staging.join("checkpoint/inventory.img")).unwrap(), b"inventory");

        let at = bytes.windows(64).position(|w| w == &data[..64]).unwrap() + (9 << 20);
        let mut changed = bytes.clone();
        changed[at] ^= 1;
        let err = extract(&changed, "changed").unwrap_err().to_string();
        assert!(err.contains("BLAKE3 digest does not match"), "{err}");

        let err = extract(&bytes[..at], "cut").unwrap_err().to_string();
        assert!(err.contains("truncated"), "{err}");
    }

    /// Page images left in an uncompressed archive appear only copied and checked: not before,
    /// and not when a byte in them changed. Whoever waits on them hears how the copies ended.
    #[test]
    fn page_images_left_in_the_archive_appear_only_copied_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..(9 << 20) + 7).map(|i| (i * 13 % 251) as u8).collect();
        let pages = dir.path().join("pages-1.img");
        std::fs::write(&pages, &data).unwrap();
        let mut writer = ArchiveWriter::new(Vec::new());
        writer.add_bytes("checkpoint/inventory.img", b"inventory").unwrap();
        writer.add_path("checkpoint/pages-1.img", &pages).unwrap();
        writer.add_bytes("checkpoint/pstree.img", b"pstree").unwrap();
        let bytes = writer.finish().unwrap();
        let extract = |bytes: &[u8], case: &str| {
            let (archive, staging) = archive_and_staging(dir.path(), bytes, case);
            let options = ExtractOptions::checkpoint();
            (extract_checkpoint_leaving_pages(&archive, &staging, &options, true).unwrap(), staging)
        };

        let (extracted, staging) = extract(&bytes, "whole");
        assert!(extracted.verified);
        let images = extracted.page_images.expect("the page image is left in the archive");
        assert_eq!(images.bytes(), data.len() as u64);
        assert!(!staging.join("checkpoint/pages-1.img").exists());
        assert_eq!(std::fs::read(staging.join("checkpoint/pstree.img")).unwrap(), b"pstree");
        let mut in_flight = images.start().unwrap();
        let (heard, outcome) = std::sync::mpsc::channel();
        in_flight.report_to(Box::new(move |result| heard.send(result).unwrap()));
        assert_eq!(outcome.recv().unwrap(), Ok(()));
        in_flight.wait().unwrap();
        assert_eq!(std::fs::read(staging.join("checkpoint/pages-1.img")).unwrap(), data);

        let at = bytes.windows(64).position(|w| w == &data[..64]).unwrap() + (5 << 20);
        let mut changed = bytes.clone();
        changed[at] ^= 1;
        let (extracted, staging) = extract(&changed, "changed");
        let err = extracted.page_images.unwrap().start().unwrap().wait().unwrap_err().to_string();
        assert!(err.contains("BLAKE3 digest does not match"), "{err}");
        assert!(!staging.join("checkpoint/pages-1.img").exists(), "a page image that does not match never appears");
    }

    #[test]
    fn a_page_image_left_for_later_must_be_in_the_manifest_at_its_size() {
        let dir = tempfile::tempdir().unwrap();
        let staging = dir.path().join("s");
        staged_archive(&staging);
        let pending = HashMap::from([(PathBuf::from("checkpoint/pages-1.img"), 5u64)]);
        let err = verify_manifest_pending(&staging, "t", &Default::default(), &pending).unwrap_err().to_string();
        assert!(err.contains("not in its manifest"), "{err}");
        let listed = HashMap::from([(PathBuf::from("checkpoint/inventory.img"), 4u64)]);
        let err = verify_manifest_pending(&staging, "t", &Default::default(), &listed).unwrap_err().to_string();
        assert!(err.contains("does not match the manifest's 9"), "{err}");
    }

    /// A digest taken earlier goes into the manifest for the file it was taken from, at its size;
    /// a file that changed since is hashed again.
    #[test]
    fn known_digests_stand_only_for_the_files_they_were_taken_from() {
        use crate::archive::follow::KnownDigest;
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let (same, grown) = (dir.path().join("pages-1.img"), dir.path().join("pages-2.img"));
        std::fs::write(&same, b"same").unwrap();
        std::fs::write(&grown, b"grown").unwrap();
        let known = |path: &Path, size: u64| {
            let meta = std::fs::metadata(path).unwrap();
            let digest = KnownDigest { size, dev: meta.dev(), ino: meta.ino(), blake3: "taken-before".into() };
            (path.to_path_buf(), digest)
        };
        let mut writer = ArchiveWriter::new(Vec::new());
        writer.know_digests(KnownDigests::from([known(&same, 4), known(&grown, 4)]));
        writer.add_path("checkpoint/pages-1.img", &same).unwrap();
        writer.add_path("checkpoint/pages-2.img", &grown).unwrap();
        let bytes = writer.finish().unwrap();
        let mut archive = tar::Archive::new(&bytes[..]);
        let mut manifest = Vec::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            if entry.path().unwrap() == Path::new(MANIFEST) {
                entry.read_to_end(&mut manifest).unwrap();
            }
        }
        let manifest: Manifest = serde_json::from_slice(&manifest).unwrap();
        assert_eq!(manifest.members[0].blake3, "taken-before");
        assert_eq!(manifest.members[1].blake3, blake3::hash(b"grown").to_hex().to_string());
    }

    /// A member larger than one chunk and not a whole number of blocks, under a name too long
    /// for a plain header, reads back whole, with its digest in the manifest.
    #[test]
    fn large_members_go_in_whole_chunks_and_read_back_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let (long_name, data, path) = page_image(dir.path(), (3 << 20) + 100);
        let mut writer = ArchiveWriter::new(Vec::new());
        writer.add_path(&long_name, &path).unwrap();
        writer.add_bytes("after", b"after").unwrap();
        let bytes = writer.finish().unwrap();
        let mut archive = tar::Archive::new(&bytes[..]);
        let mut members = Vec::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let mut content = Vec::new();
            entry.read_to_end(&mut content).unwrap();
            members.push((entry.path().unwrap().display().to_string(), content));
        }
        assert_eq!(members[0], (long_name.clone(), data.clone()));
        assert_eq!(members[1], ("after".to_string(), b"after".to_vec()));
        let manifest: Manifest = serde_json::from_slice(&members[2].1).unwrap();
        assert_eq!(manifest.members[0].name, long_name);
        assert_eq!(manifest.members[0].blake3, blake3::hash(&data).to_hex().to_string());
    }

    #[test]
    fn exact_size_cuts_a_grown_file_and_pads_a_shrunk_one() {
        let mut out = Vec::new();
        ExactSize { inner: &b"abcdef"[..], remaining: 4 }.read_to_end(&mut out).unwrap();
        assert_eq!(out, b"abcd");
        out.clear();
        ExactSize { inner: &b"ab"[..], remaining: 4 }.read_to_end(&mut out).unwrap();
        assert_eq!(out, b"ab\0\0");
    }

    /// A file that grows while it is archived (a live container's log) leaves a tar whose every
    /// member holds exactly the bytes its header promises.
    #[test]
    fn inner_tars_stay_well_formed_while_files_grow() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("upper");
        std::fs::create_dir(&base).unwrap();
        let growing = base.join("log");
        std::fs::write(&growing, vec![b'x'; 4 << 20]).unwrap();
        std::fs::write(base.join("after"), b"after").unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = {
            let stop = stop.clone();
            let growing = growing.clone();
            std::thread::spawn(move || {
                let mut file = std::fs::OpenOptions::new().append(true).open(growing).unwrap();
                for _ in 0..4096 {
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        break;
                    }
                    file.write_all(&[b'y'; 4096]).unwrap();
                    std::thread::yield_now();
                }
            })
        };
        let output = dir.path().join("inner.tar");
        for _ in 0..5 {
            write_inner_tar(&output, &base, &[PathBuf::from("log"), PathBuf::from("after")]).unwrap();
            let mut archive = tar::Archive::new(File::open(&output).unwrap());
            let mut names = Vec::new();
            for entry in archive.entries().unwrap() {
                let mut entry = entry.unwrap();
                let mut data = Vec::new();
                entry.read_to_end(&mut data).unwrap();
                assert_eq!(data.len() as u64, entry.header().size().unwrap());
                names.push(entry.path().unwrap().display().to_string());
            }
            assert_eq!(names, ["log", "after"]);
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        writer.join().unwrap();
    }

    #[test]
    fn inner_tars_never_follow_a_link_swapped_in() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("upper");
        std::fs::create_dir_all(base.join("sub")).unwrap();
        std::fs::write(dir.path().join("host-secret"), b"TOP-SECRET-CONTENT").unwrap();
        std::os::unix::fs::symlink(dir.path().join("host-secret"), base.join("link")).unwrap();
        std::os::unix::fs::symlink(dir.path(), base.join("dirlink")).unwrap();
        let output = dir.path().join("inner.tar");
        write_inner_tar(&output, &base, &[PathBuf::from("link"), PathBuf::from("dirlink/host-secret")]).unwrap_err();
        write_inner_tar(&output, &base, &[PathBuf::from("link")]).unwrap();
        let bytes = std::fs::read(&output).unwrap();
        assert!(!bytes.windows(18).any(|w| w == b"TOP-SECRET-CONTENT"), "a link is archived as a link");
    }
}
