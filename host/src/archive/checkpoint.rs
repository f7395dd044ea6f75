//! The checkpoint archive in podman's layout, written in one streaming pass with a manifest of
//! every member's size and BLAKE3 digest at the end, and read back into a private staging directory.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{ArchiveError, Compression, ExtractOptions};

pub const CHECKPOINT_DIR: &str = "checkpoint";
pub const PRE_CHECKPOINT_DIR: &str = "pre-checkpoint";
pub const CONFIG_DUMP: &str = "config.dump";
pub const SPEC_DUMP: &str = "spec.dump";
pub const ROOTFS_DIFF: &str = "rootfs-diff.tar";
pub const DELETED_FILES: &str = "deleted.files";
pub const VOLUMES_DIR: &str = "volumes";
pub const STATS_DUMP: &str = "stats-dump";
pub const CONTAINER_LOG: &str = "ctr.log";
/// ckpt's own addition: size and BLAKE3 digest of every other member. BLAKE3 rather than
/// SHA-256 because hashing every memory page is on the export's critical path, and BLAKE3 is
/// several times faster on the same core.
pub const MANIFEST: &str = "ckpt-manifest.json";

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

/// The compressed stream under the tar builder.
pub enum Compressor<W: Write> {
    Zstd(zstd::Encoder<'static, W>),
    Gzip(flate2::write::GzEncoder<W>),
    None(W),
}

impl<W: Write> Compressor<W> {
    pub fn new(inner: W, compression: Compression) -> io::Result<Compressor<W>> {
        Ok(match compression {
            Compression::Zstd => {
                // Level 1: on two cores the export is bound by compression, and level 3 costs half again
                // as much time for a few percent of size on memory pages.
                let mut encoder = zstd::Encoder::new(inner, 1)?;
                let threads = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
                // Multi-threaded zstd is what makes the export faster than podman's.
                encoder.multithread(threads)?;
                Compressor::Zstd(encoder)
            }
            Compression::Gzip => Compressor::Gzip(flate2::write::GzEncoder::new(inner, flate2::Compression::fast())),
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

/// Reads the chunks another thread sends.
struct ChannelReader {
    receiver: std::sync::mpsc::Receiver<io::Result<Vec<u8>>>,
    current: Vec<u8>,
    offset: usize,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.offset == self.current.len() {
            match self.receiver.recv() {
                Ok(chunk) => {
                    self.current = chunk?;
                    self.offset = 0;
                }
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len() - self.offset);
        buf[..n].copy_from_slice(&self.current[self.offset..self.offset + n]);
        self.offset += n;
        Ok(n)
    }
}

/// Writes archive members and remembers their digests for the manifest.
pub struct ArchiveWriter<W: Write> {
    builder: tar::Builder<W>,
    members: Vec<ManifestEntry>,
}

impl<W: Write> ArchiveWriter<W> {
    pub fn new(inner: W) -> ArchiveWriter<W> {
        let mut builder = tar::Builder::new(inner);
        builder.follow_symlinks(false);
        ArchiveWriter { builder, members: Vec::new() }
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
            header.set_size(meta.len());
            // A file that grows meanwhile (the log of a container left running) is archived as
            // it was when it was looked at; one that shrinks cannot be.
            let (read, digest) = self.append_hashed(&mut header, name, path, meta.len())?;
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
    /// compression instead of adding to it.
    fn append_hashed(
        &mut self,
        header: &mut tar::Header,
        name: &str,
        path: &Path,
        size: u64,
    ) -> io::Result<(u64, String)> {
        let mut file = File::open(path)?.take(size);
        let (sender, receiver) = std::sync::mpsc::sync_channel::<io::Result<Vec<u8>>>(4);
        std::thread::scope(|scope| {
            let hasher = scope.spawn(move || {
                let mut hasher = blake3::Hasher::new();
                let mut total = 0u64;
                loop {
                    let mut chunk = vec![0u8; 1 << 20];
                    match file.read(&mut chunk) {
                        Ok(0) => break,
                        Ok(n) => {
                            chunk.truncate(n);
                            hasher.update(&chunk);
                            total += n as u64;
                            if sender.send(Ok(chunk)).is_err() {
                                break;
                            }
                        }
                        Err(e) => {
                            let _ = sender.send(Err(e));
                            break;
                        }
                    }
                }
                (total, hasher.finalize().to_hex().to_string())
            });
            let mut reader = ChannelReader { receiver, current: Vec::new(), offset: 0 };
            let appended = self.builder.append_data(header, name, &mut reader);
            drop(reader);
            let digest = hasher.join().map_err(|_| io::Error::other("hashing thread panicked"))?;
            appended.map(|()| digest)
        })
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

/// Builds an uncompressed inner tar (rootfs-diff.tar, volumes/<name>.tar) of `entries`, which are
/// paths relative to `base`, as podman's entries are relative to `/`.
pub fn write_inner_tar(output: &Path, base: &Path, entries: &[PathBuf]) -> io::Result<()> {
    let file = File::create(output)?;
    let mut builder = tar::Builder::new(io::BufWriter::new(file));
    builder.follow_symlinks(false);
    for rel in entries {
        let path = base.join(rel);
        let meta = fs::symlink_metadata(&path)?;
        if meta.file_type().is_socket() {
            continue;
        }
        let mut header = tar::Header::new_gnu();
        header.set_metadata_in_mode(&meta, tar::HeaderMode::Complete);
        if meta.is_file() {
            builder.append_data(&mut header, rel, File::open(&path)?)?;
        } else if meta.file_type().is_symlink() {
            builder.append_link(&mut header, rel, fs::read_link(&path)?)?;
        } else {
            header.set_size(0);
            let name = if meta.is_dir() { rel.join("") } else { rel.clone() };
            builder.append_data(&mut header, name, io::empty())?;
        }
    }
    builder.into_inner()?.flush()
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

/// Extracts an archive into `staging` and checks it against its manifest, if it has one
/// (podman's archives have none).
pub fn extract_checkpoint(archive: &Path, staging: &Path, options: &ExtractOptions) -> Result<bool, ArchiveError> {
    let reader = super::open_decompressed(archive)?;
    let name = archive.display().to_string();
    super::extract(reader, staging, &name, options)?;
    verify_manifest(staging, &name)
}

/// Returns whether a manifest was present; any mismatch, extra or missing member is an error.
pub fn verify_manifest(staging: &Path, name: &str) -> Result<bool, ArchiveError> {
    let manifest_path = staging.join(MANIFEST);
    let corrupt = |member: &str, detail: String| ArchiveError::CorruptMember {
        archive: name.into(),
        member: member.into(),
        detail,
    };
    let bytes = match fs::read(&manifest_path) {
        Ok(b) => b,
        Err(_) => return Ok(false),
    };
    let manifest: Manifest = serde_json::from_slice(&bytes).map_err(|e| corrupt(MANIFEST, e.to_string()))?;
    if manifest.format != MANIFEST_FORMAT {
        return Err(corrupt(MANIFEST, format!("unknown format {:?}", manifest.format)));
    }
    let mut listed = std::collections::HashSet::new();
    for entry in &manifest.members {
        let Some(rel) = super::extract::clean_relative(Path::new(&entry.name)) else {
            return Err(corrupt(&entry.name, "the manifest names a path outside the archive".into()));
        };
        let path = staging.join(&rel);
        let meta = fs::symlink_metadata(&path)
            .map_err(|_| corrupt(&entry.name, "listed in the manifest but missing".into()))?;
        if !meta.is_file() || meta.len() != entry.size {
            return Err(corrupt(
                &entry.name,
                format!("size {} does not match the manifest's {}", meta.len(), entry.size),
            ));
        }
        let mut hasher = blake3::Hasher::new();
        hasher.update_mmap(&path).map_err(|e| corrupt(&entry.name, e.to_string()))?;
        if hasher.finalize().to_hex().as_str() != entry.blake3 {
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
    Ok(true)
}
