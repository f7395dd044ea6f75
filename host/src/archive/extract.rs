//! A strict tar extractor for input ckpt does not trust (imported checkpoints, image layers,
//! the rootfs and volume tars inside an archive).
//!
//! Everything is written through [`crate::safefs::Beneath`]: no symlink is ever followed, modes,
//! owners and times are set through descriptors, a member may not turn an earlier member of the
//! same archive into something of another type, and the output is bounded, because tar readers
//! have had escape and bomb bugs again and again.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::fcntl::OFlag;
use nix::sys::stat::{Mode, SFlag};
use tar::EntryType;

use super::deferred::DeferredMember;
use super::{ArchiveError, CHUNK};
pub use crate::safefs::clean_relative;
use crate::safefs::{self, Beneath, Kind, ResolveError};

/// What an extraction leaves free on the destination's filesystem, so that the store can still
/// write its records: 64 MiB, or a twentieth of a smaller filesystem.
pub fn free_space_reserve(filesystem_bytes: Option<u64>) -> u64 {
    filesystem_bytes.map_or(64 << 20, |size| (size / 20).min(64 << 20))
}

#[derive(Debug, Clone, Copy)]
pub struct ExtractLimits {
    pub max_total_bytes: u64,
    pub max_entries: u64,
    pub max_path_len: usize,
    /// All member names together: what the extractor has to remember.
    pub max_name_bytes: u64,
}

impl Default for ExtractLimits {
    fn default() -> Self {
        ExtractLimits {
            max_total_bytes: 64 << 30,
            max_entries: 1_000_000,
            max_path_len: 4096,
            max_name_bytes: 256 << 20,
        }
    }
}

/// Which symlink members may be created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Symlinks {
    /// None at all: an OCI layout or the outer checkpoint archive of a podman export.
    #[default]
    None,
    /// Only CRIU's `parent` link from an images directory to an earlier pre-dump.
    CriuParents,
    /// Any target: a container's own filesystem, where links are data. They are created as
    /// they are and never followed by ckpt.
    Any,
}

#[derive(Debug, Clone, Default)]
pub struct ExtractOptions {
    pub limits: ExtractLimits,
    /// Image layers: `.wh.` members delete what lower layers put there.
    pub whiteouts: bool,
    /// Image layers may carry device nodes and FIFOs; checkpoint members never may.
    pub allow_devices: bool,
    /// Restore owners from the archive (container content); otherwise everything is root's.
    pub preserve_owners: bool,
    /// Keep setuid, setgid and sticky bits (container content, inside the 0700 store).
    pub special_bits: bool,
    pub symlinks: Symlinks,
    /// The archive must end as tar writers end one, with two zero blocks after its last member.
    /// A tar reader takes the end of the input at a member's boundary for the end of the
    /// archive, so a checkpoint cut short there would pass for a whole one with fewer members.
    /// Image layers need not: their digests say whether they are whole.
    pub end_of_archive: bool,
}

impl ExtractOptions {
    /// The members of a checkpoint archive or checkpoint image: plain files and directories,
    /// CRIU's parent links, no special bits, owned by root.
    pub fn checkpoint() -> ExtractOptions {
        ExtractOptions { symlinks: Symlinks::CriuParents, end_of_archive: true, ..Default::default() }
    }

    /// A container's files (`rootfs-diff.tar`, `volumes/*.tar`): owners, modes and links as
    /// they were, no device nodes.
    pub fn container_files() -> ExtractOptions {
        ExtractOptions { preserve_owners: true, special_bits: true, symlinks: Symlinks::Any, ..Default::default() }
    }

    /// An OCI image layer: container files plus whiteouts and device nodes.
    pub fn image_layer() -> ExtractOptions {
        ExtractOptions { whiteouts: true, allow_devices: true, ..ExtractOptions::container_files() }
    }
}

/// What a member was, for the rule that a later member may not change its type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Written {
    Dir,
    File,
    Symlink,
    Node,
}

struct Extractor<'a> {
    name: &'a str,
    options: &'a ExtractOptions,
    beneath: Beneath,
    seen: HashMap<PathBuf, Written>,
    name_bytes: u64,
    dirs: Vec<DirMeta>,
    /// The size and BLAKE3 of each regular file as it was written, when asked for.
    digests: Option<&'a mut FileDigests>,
    /// The archive's file, when large members can be copied from it directly.
    copy_source: Option<from_file::CopySource>,
    /// Where page images go that are left in the archive file for later (`archive::deferred`).
    deferred: Option<&'a mut Vec<DeferredMember>>,
}

/// Each regular file an extraction wrote, by its path in the archive: its size and BLAKE3,
/// taken from the bytes as they went to disk, so that a manifest is checked without reading
/// them back.
pub type FileDigests = HashMap<PathBuf, (u64, blake3::Hash)>;

/// A directory's metadata, set once all its members are in.
struct DirMeta {
    rel: PathBuf,
    mode: u32,
    owner: Option<(u32, u32)>,
    mtime: u64,
}

/// Extracts `reader` into `dest`, which must exist. Returns the member paths written.
pub fn extract(
    reader: impl Read,
    dest: &Path,
    name: &str,
    options: &ExtractOptions,
) -> Result<Vec<PathBuf>, ArchiveError> {
    extract_into(reader, dest, name, options, None)
}

/// [`extract`], with each regular file hashed as it is written into `digests`. A member that
/// lands on a path drops the digest an earlier member or extraction left there, so that layers
/// extracted one over another leave the digests of what is on disk.
pub fn extract_hashing(
    reader: impl Read,
    dest: &Path,
    name: &str,
    options: &ExtractOptions,
    digests: &mut FileDigests,
) -> Result<(), ArchiveError> {
    extract_into(reader, dest, name, options, Some(digests)).map(drop)
}

/// [`extract_hashing`] of an uncompressed archive in a regular file, which `reader` reads from
/// its start: large members are copied file to file at their offsets (see `from_file`). Given
/// `deferred`, page images are not copied but left there, as unnamed files in their directories,
/// for [`crate::archive::deferred`] to copy.
pub fn extract_file_hashing(
    reader: io::BufReader<std::fs::File>,
    progress: crate::progress::Progress,
    dest: &Path,
    name: &str,
    options: &ExtractOptions,
    digests: &mut FileDigests,
    deferred: Option<&mut Vec<DeferredMember>>,
) -> Result<(), ArchiveError> {
    let archive = reader.get_ref().try_clone().map_err(|source| ArchiveError::Io {
        archive: name.to_string(),
        action: "open",
        path: PathBuf::from(name),
        source,
    })?;
    let progress = std::rc::Rc::new(std::cell::RefCell::new(progress));
    let mut extractor = Extractor::new(dest, name, options, Some(digests))?;
    extractor.copy_source = Some(from_file::CopySource { archive, progress: progress.clone() });
    extractor.deferred = deferred;
    let mut archive = tar::Archive::new(Watched::new(from_file::ArchiveFile::new(reader, progress)));
    let entries = archive.entries_with_seek().map_err(|e| malformed(name, e))?;
    extractor.extract_entries(entries, dest)?;
    if options.end_of_archive {
        archive.into_inner().check_end(name)?;
    }
    Ok(())
}

fn malformed(name: &str, e: io::Error) -> ArchiveError {
    ArchiveError::Malformed { archive: name.to_string(), detail: e.to_string() }
}

fn extract_into(
    reader: impl Read,
    dest: &Path,
    name: &str,
    options: &ExtractOptions,
    digests: Option<&mut FileDigests>,
) -> Result<Vec<PathBuf>, ArchiveError> {
    let extractor = Extractor::new(dest, name, options, digests)?;
    let mut archive = tar::Archive::new(Watched::new(reader));
    let entries = archive.entries().map_err(|e| malformed(name, e))?;
    let written = extractor.extract_entries(entries, dest)?;
    if options.end_of_archive {
        archive.into_inner().check_end(name)?;
    }
    Ok(written)
}

/// What tar has read, seen from below: whether its last read of a header found a zero block (the
/// end of the archive) or the end of the input.
struct Watched<R> {
    inner: R,
    position: u64,
    zeros_at_end: u64,
    reached_end: bool,
}

impl<R> Watched<R> {
    fn new(inner: R) -> Watched<R> {
        Watched { inner, position: 0, zeros_at_end: 0, reached_end: false }
    }
}

impl<R: Read> Watched<R> {
    /// tar stops at the first zero block or at the end of the input; only the first is an end
    /// of archive, and a second zero block must follow it.
    fn check_end(mut self, name: &str) -> Result<(), ArchiveError> {
        let cut = |detail: String| ArchiveError::CutShort { archive: name.to_string(), detail };
        if self.reached_end || self.zeros_at_end < 512 {
            return Err(cut(format!(
                "it ends after {} bytes without tar's end-of-archive blocks after its last member",
                self.position
            )));
        }
        let mut second = [0u8; 512];
        if self.inner.read_exact(&mut second).is_err() || second.iter().any(|&b| b != 0) {
            return Err(cut(format!("its end-of-archive blocks at byte {} are not whole", self.position - 512)));
        }
        Ok(())
    }
}

impl<R: Read> Read for Watched<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && !buf.is_empty() {
            self.reached_end = true;
        }
        let read = &buf[..n];
        self.zeros_at_end = match read.iter().rposition(|&b| b != 0) {
            Some(last) => (n - last - 1) as u64,
            None => self.zeros_at_end + n as u64,
        };
        self.position += n as u64;
        Ok(n)
    }
}

impl<R: io::Seek> io::Seek for Watched<R> {
    fn seek(&mut self, pos: io::SeekFrom) -> io::Result<u64> {
        let at = self.inner.seek(pos)?;
        if at != self.position {
            self.zeros_at_end = 0;
        }
        self.position = at;
        Ok(at)
    }
}

impl<'a> Extractor<'a> {
    fn new(
        dest: &Path,
        name: &'a str,
        options: &'a ExtractOptions,
        digests: Option<&'a mut FileDigests>,
    ) -> Result<Extractor<'a>, ArchiveError> {
        let beneath = Beneath::open(dest).map_err(|source| ArchiveError::Io {
            archive: name.to_string(),
            action: "open the destination",
            path: dest.to_path_buf(),
            source,
        })?;
        Ok(Extractor {
            name,
            options,
            beneath,
            seen: HashMap::new(),
            name_bytes: 0,
            dirs: Vec::new(),
            digests,
            copy_source: None,
            deferred: None,
        })
    }

    /// Writes every member into `dest`, within the limits; returns the member paths written.
    fn extract_entries<R: Read>(
        mut self,
        entries: tar::Entries<'_, R>,
        dest: &Path,
    ) -> Result<Vec<PathBuf>, ArchiveError> {
        let name = self.name;
        let options = self.options;
        let malformed = |e: io::Error| malformed(name, e);
        // A bomb stops at the free space of the destination (less a reserve), not at the disk's end.
        let free = crate::hostinfo::free_bytes(dest);
        let reserve = free_space_reserve(crate::hostinfo::filesystem_bytes(dest));
        let budget = options.limits.max_total_bytes.min(free.unwrap_or(u64::MAX).saturating_sub(reserve));
        let mut total: u64 = 0;
        let mut count: u64 = 0;
        let mut written = Vec::new();
        for entry in entries {
            let mut entry = entry.map_err(malformed)?;
            count += 1;
            if count > options.limits.max_entries {
                return Err(self.too_large(format!("more than {} members", options.limits.max_entries)));
            }
            let raw_path = entry.path().map_err(malformed)?.into_owned();
            if raw_path.as_os_str().len() > options.limits.max_path_len {
                return Err(self.refuse(&raw_path, "path is too long"));
            }
            let Some(rel) = safefs::clean_relative(&raw_path) else {
                return Err(self.refuse(&raw_path, "path is absolute or contains '..'"));
            };
            if rel.as_os_str().is_empty() {
                continue; // the archive's own root, "./"
            }
            let kind = entry.header().entry_type();
            if matches!(
                kind,
                EntryType::XHeader | EntryType::XGlobalHeader | EntryType::GNULongName | EntryType::GNULongLink
            ) {
                continue;
            }
            if options.whiteouts && self.whiteout(&rel)? {
                continue;
            }
            // The PAX size where there is one: the bytes tar-rs really hands out for this member.
            let size = entry.size();
            total = total.saturating_add(size);
            if total > options.limits.max_total_bytes {
                return Err(self.too_large(format!("more than {} bytes of content", options.limits.max_total_bytes)));
            }
            if total > budget {
                return Err(self.too_large(format!(
                    "its content needs more than the {} bytes free at {:?} less the {reserve} bytes kept free for the store's own records; free some space there",
                    free.unwrap_or(0),
                    dest.display().to_string()
                )));
            }
            self.member(&mut entry, &rel, kind, size)?;
            written.push(rel);
        }
        self.finish_dirs()?;
        Ok(written)
    }
}

/// Members at least this big are hashed on a thread of their own while the next chunk is read
/// and written (or, from an uncompressed archive file, copied from its offset): a checkpoint's page
/// images are most of its bytes, and the other cores are idle until CRIU runs.
const HASH_ALONGSIDE_FROM: u64 = 4 << 20;

/// Copies `size` bytes of a member into `file`, with their BLAKE3 when `hash` is set. Returns
/// fewer bytes than `size` only when the archive ends early.
fn copy_member(
    reader: &mut dyn Read,
    file: &mut std::fs::File,
    size: u64,
    hash: bool,
) -> io::Result<(u64, Option<blake3::Hash>)> {
    if !hash || size < HASH_ALONGSIDE_FROM {
        let mut hasher = hash.then(blake3::Hasher::new);
        let copied = copy_in_chunks(reader, file, size, &mut |chunk| {
            if let Some(hasher) = &mut hasher {
                hasher.update(&chunk);
            }
            Ok(Some(chunk))
        })?;
        return Ok((copied, hasher.map(|h| h.finalize())));
    }
    let (to_hasher, chunks) = std::sync::mpsc::sync_channel::<Vec<u8>>(2);
    let (give_back, returned) = std::sync::mpsc::channel::<Vec<u8>>();
    std::thread::scope(|scope| {
        let hashing = scope.spawn(move || {
            let mut hasher = blake3::Hasher::new();
            for chunk in chunks {
                hasher.update(&chunk);
                let _ = give_back.send(chunk);
            }
            hasher.finalize()
        });
        // Besides the first chunk, which `copy_in_chunks` makes: two waiting, one being hashed and
        // one being filled.
        let mut pool = super::ChunkPool::new(returned, 4);
        let copied = copy_in_chunks(reader, file, size, &mut |chunk| {
            to_hasher.send(chunk).map_err(|_| io::Error::other("the hashing thread ended early"))?;
            Ok(pool.take())
        });
        drop(to_hasher);
        let digest = hashing.join().map_err(|_| io::Error::other("the hashing thread panicked"))?;
        copied.map(|copied| (copied, Some(digest)))
    })
}

/// Reads up to `size` bytes in chunks, writes each to `file`, then hands it to `written`, which
/// may give back a chunk to fill next.
fn copy_in_chunks(
    reader: &mut dyn Read,
    file: &mut std::fs::File,
    size: u64,
    written: &mut dyn FnMut(Vec<u8>) -> io::Result<Option<Vec<u8>>>,
) -> io::Result<u64> {
    let mut copied = 0u64;
    let mut spare = None;
    while copied < size {
        crate::interrupt::check_io()?;
        let want = (size - copied).min(CHUNK as u64);
        // A chunk given back is filled to its length already: only a new one's bytes are zeroed,
        // once, where reading into spare capacity would zero every chunk on every fill.
        let mut chunk: Vec<u8> = spare.take().unwrap_or_default();
        chunk.resize(want as usize, 0);
        let filled = read_full(reader, &mut chunk)?;
        chunk.truncate(filled);
        if chunk.is_empty() {
            break;
        }
        super::PieceWriter(&mut *file).write_all(&chunk)?;
        copied += chunk.len() as u64;
        spare = written(chunk)?;
    }
    Ok(copied)
}

/// Reads until `buf` is full or the stream ends; returns how much it read.
pub(super) fn read_full(reader: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

impl Extractor<'_> {
    /// Whether a member is left in the archive file for later: a page image big enough to be
    /// worth it, owned by root as every checkpoint member is.
    fn may_defer(&self, rel: &Path, size: u64, owner: Option<(u32, u32)>) -> bool {
        self.deferred.is_some()
            && self.copy_source.is_some()
            && owner.is_none()
            && size >= HASH_ALONGSIDE_FROM
            && crate::archive::deferred::is_page_image(rel)
    }

    fn refuse(&self, member: &Path, reason: &str) -> ArchiveError {
        ArchiveError::Refused {
            archive: self.name.to_string(),
            member: member.display().to_string(),
            reason: reason.to_string(),
        }
    }

    fn too_large(&self, reason: String) -> ArchiveError {
        ArchiveError::TooLarge { archive: self.name.to_string(), reason }
    }

    fn io(&self, action: &'static str, rel: &Path) -> impl FnOnce(io::Error) -> ArchiveError + use<> {
        let archive = self.name.to_string();
        let path = self.beneath.path().join(rel);
        move |source| ArchiveError::Io { archive, action, path, source }
    }

    fn resolve_err(&self, rel: &Path, action: &'static str, e: ResolveError) -> ArchiveError {
        match e {
            ResolveError::ParentNotDir => self.refuse(rel, "a parent directory is a symlink or not a directory"),
            ResolveError::Io(source) => self.io(action, rel)(source),
        }
    }

    /// Handles a `.wh.` member; returns whether `rel` was one.
    fn whiteout(&mut self, rel: &Path) -> Result<bool, ArchiveError> {
        let Some(file_name) = rel.file_name().and_then(|n| n.to_str()) else { return Ok(false) };
        let Some(hidden) = file_name.strip_prefix(".wh.") else { return Ok(false) };
        let parent_rel = rel.parent().unwrap_or(Path::new("")).to_path_buf();
        if hidden == ".wh..opq" {
            // Opaque: hide what lower layers put here, keep what this layer wrote.
            let parent = self
                .beneath
                .open_at(&parent_rel, OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_RDONLY)
                .map_err(|e| if e.raw_os_error() == Some(libc::ENOENT) { None } else { Some(e) });
            match parent {
                Ok(dir) => {
                    let seen = &self.seen;
                    safefs::clear_dir(dir.as_fd(), |child| seen.contains_key(&parent_rel.join(child)))
                        .map_err(self.io("clear", &parent_rel))?;
                }
                Err(None) => {}
                Err(Some(e)) if safefs::is_not_dir(&e) => {
                    return Err(self.refuse(rel, "a parent directory is a symlink or not a directory"));
                }
                Err(Some(e)) => return Err(self.io("open", &parent_rel)(e)),
            }
            return Ok(true);
        }
        if hidden.is_empty() || hidden == "." || hidden == ".." || hidden.contains('/') {
            return Err(self.refuse(rel, "whiteout names no entry"));
        }
        let target = parent_rel.join(hidden);
        self.beneath.remove(&target).map_err(|e| self.resolve_err(rel, "remove", e))?;
        self.seen.remove(&target);
        Ok(true)
    }

    fn remember(&mut self, rel: &Path, what: Written) -> Result<(), ArchiveError> {
        if !self.seen.contains_key(rel) {
            self.name_bytes += rel.as_os_str().len() as u64 + 32;
            if self.name_bytes > self.options.limits.max_name_bytes {
                return Err(
                    self.too_large(format!("more than {} bytes of member names", self.options.limits.max_name_bytes))
                );
            }
        }
        self.seen.insert(rel.to_path_buf(), what);
        Ok(())
    }

    fn member<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        rel: &Path,
        kind: EntryType,
        size: u64,
    ) -> Result<(), ArchiveError> {
        // Whatever lands here replaces what was hashed here.
        if let Some(digests) = &mut self.digests {
            digests.remove(rel);
        }
        let what = match kind {
            EntryType::Directory => Written::Dir,
            EntryType::Regular | EntryType::Continuous => Written::File,
            EntryType::Symlink => Written::Symlink,
            EntryType::Link => Written::File,
            EntryType::Char | EntryType::Block | EntryType::Fifo if self.options.allow_devices => Written::Node,
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                return Err(self.refuse(rel, "device and FIFO members are not allowed here"));
            }
            other => return Err(self.refuse(rel, &format!("member type {other:?} is not supported"))),
        };
        if let Some(before) = self.seen.get(rel)
            && *before != what
        {
            return Err(self.refuse(rel, "it replaces an earlier member of another type"));
        }
        let header = entry.header();
        let mut mode = header.mode().unwrap_or(0o644) & 0o7777;
        if !self.options.special_bits {
            mode &= 0o777;
        }
        let owner =
            self.options.preserve_owners.then(|| (header.uid().unwrap_or(0) as u32, header.gid().unwrap_or(0) as u32));
        let mtime = header.mtime().unwrap_or(0);
        let parent = self.beneath.parent(rel, true).map_err(|e| self.resolve_err(rel, "create directory", e))?;
        let parent = parent.expect("created parents exist");
        let dir = parent.dir;
        let file_name = parent.name;
        let existing = safefs::stat_at(dir.as_fd(), file_name).map_err(self.io("stat", rel))?;
        let existing_kind = existing.as_ref().map(Kind::of);
        // Whatever is in the way goes, never followed; a directory that stays a directory stays.
        if existing_kind.is_some() && !(what == Written::Dir && existing_kind == Some(Kind::Dir)) {
            safefs::remove_entry(dir.as_fd(), file_name).map_err(self.io("replace", rel))?;
        }
        match kind {
            EntryType::Directory => {
                if existing_kind != Some(Kind::Dir) {
                    nix::sys::stat::mkdirat(&dir, file_name, Mode::from_bits_truncate(0o700))
                        .map_err(|e| self.io("create directory", rel)(e.into()))?;
                }
                // Modes last, so that a read-only directory does not stop its own members.
                self.dirs.push(DirMeta { rel: rel.to_path_buf(), mode, owner, mtime });
            }
            EntryType::Regular | EntryType::Continuous => {
                if self.may_defer(rel, size, owner) {
                    match nix::fcntl::openat(
                        &dir,
                        ".",
                        OFlag::O_TMPFILE | OFlag::O_RDWR | OFlag::O_CLOEXEC,
                        Mode::from_bits_truncate(0o600),
                    ) {
                        Ok(fd) => {
                            let member = DeferredMember {
                                rel: rel.to_path_buf(),
                                dir,
                                name: file_name.to_os_string(),
                                file: std::fs::File::from(fd),
                                offset: entry.raw_file_position(),
                                size,
                                mode,
                                mtime,
                            };
                            self.deferred.as_mut().expect("may_defer").push(member);
                            return self.remember(rel, what);
                        }
                        // A file system without unnamed files: the member is copied now.
                        Err(nix::errno::Errno::EOPNOTSUPP | nix::errno::Errno::EISDIR) => {}
                        Err(e) => return Err(self.io("create", rel)(e.into())),
                    }
                }
                let fd = nix::fcntl::openat(
                    &dir,
                    file_name,
                    // Readable too: a member copied from an archive file is hashed from what landed.
                    OFlag::O_RDWR | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                    Mode::from_bits_truncate(0o600),
                )
                .map_err(|e| self.io("create", rel)(e.into()))?;
                let mut file = std::fs::File::from(fd);
                let hash = self.digests.is_some();
                let (copied, digest) = match &self.copy_source {
                    Some(source) if size >= HASH_ALONGSIDE_FROM => {
                        source.copy_member(entry.raw_file_position(), &file, size, hash)
                    }
                    _ => copy_member(entry, &mut file, size, hash),
                }
                .map_err(self.io("write", rel))?;
                if let (Some(digests), Some(digest)) = (&mut self.digests, digest) {
                    digests.insert(rel.to_path_buf(), (copied, digest));
                }
                if copied != size {
                    return Err(ArchiveError::Malformed {
                        archive: self.name.to_string(),
                        detail: format!("member {:?} is truncated", rel.display()),
                    });
                }
                self.finish_fd(file.as_fd(), rel, mode, owner, mtime)?;
            }
            EntryType::Symlink => {
                let link = self.link_target(entry, rel, "symlink without a target")?;
                self.check_symlink(rel, &link)?;
                nix::unistd::symlinkat(link.as_path(), &dir, file_name)
                    .map_err(|e| self.io("create symlink", rel)(e.into()))?;
                self.chown_at(dir.as_fd(), file_name, owner, rel)?;
            }
            EntryType::Link => {
                let link = self.link_target(entry, rel, "hard link without a target")?;
                let Some(link_rel) = safefs::clean_relative(&link) else {
                    return Err(self.refuse(rel, "hard link target is absolute or contains '..'"));
                };
                if self.seen.get(&link_rel) != Some(&Written::File) {
                    return Err(self.refuse(rel, "hard link target is not an earlier file member of the archive"));
                }
                let source = self
                    .beneath
                    .parent(&link_rel, false)
                    .map_err(|e| self.resolve_err(rel, "resolve", e))?
                    .ok_or_else(|| self.refuse(rel, "hard link target is gone"))?;
                // linkat without AT_SYMLINK_FOLLOW links the entry itself, never a link's target.
                nix::unistd::linkat(&source.dir, source.name, &dir, file_name, nix::fcntl::AtFlags::empty())
                    .map_err(|e| self.io("create hard link", rel)(e.into()))?;
            }
            _ => {
                let dev_kind = match kind {
                    EntryType::Char => SFlag::S_IFCHR,
                    EntryType::Block => SFlag::S_IFBLK,
                    _ => SFlag::S_IFIFO,
                };
                let major = header.device_major().ok().flatten().unwrap_or(0) as u64;
                let minor = header.device_minor().ok().flatten().unwrap_or(0) as u64;
                nix::sys::stat::mknodat(
                    &dir,
                    file_name,
                    dev_kind,
                    Mode::from_bits_truncate(0o600),
                    nix::sys::stat::makedev(major, minor),
                )
                .map_err(|e| self.io("create device", rel)(e.into()))?;
                let node = nix::fcntl::openat(
                    &dir,
                    file_name,
                    OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                    Mode::empty(),
                )
                .map_err(|e| self.io("open", rel)(e.into()))?;
                self.chown_at(dir.as_fd(), file_name, owner, rel)?;
                safefs::chmod_fd(node.as_fd(), mode).map_err(self.io("chmod", rel))?;
            }
        }
        self.remember(rel, what)
    }

    fn link_target<R: Read>(
        &self,
        entry: &tar::Entry<'_, R>,
        rel: &Path,
        missing: &str,
    ) -> Result<PathBuf, ArchiveError> {
        entry
            .link_name()
            .map_err(|e| ArchiveError::Malformed { archive: self.name.to_string(), detail: e.to_string() })?
            .map(|l| l.into_owned())
            .ok_or_else(|| self.refuse(rel, missing))
    }

    /// Chowns `name` in `dir` without following it (links and device nodes have no usable fd).
    fn chown_at(
        &self,
        dir: std::os::fd::BorrowedFd<'_>,
        name: &OsStr,
        owner: Option<(u32, u32)>,
        rel: &Path,
    ) -> Result<(), ArchiveError> {
        let Some((uid, gid)) = owner else { return Ok(()) };
        nix::unistd::fchownat(dir, name, Some(uid.into()), Some(gid.into()), nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW)
            .map_err(|e| self.io("chown", rel)(e.into()))
    }

    /// Owner first, then mode (a chown clears set-id bits), then time; all through `fd`.
    fn finish_fd(
        &self,
        fd: std::os::fd::BorrowedFd<'_>,
        rel: &Path,
        mode: u32,
        owner: Option<(u32, u32)>,
        mtime: u64,
    ) -> Result<(), ArchiveError> {
        if let Some((uid, gid)) = owner {
            nix::unistd::fchown(fd, Some(uid.into()), Some(gid.into())).map_err(|e| self.io("chown", rel)(e.into()))?;
        }
        safefs::chmod_fd(fd, mode).map_err(self.io("chmod", rel))?;
        let time = nix::sys::time::TimeSpec::new(mtime.min(i64::MAX as u64) as i64, 0);
        nix::sys::stat::futimens(fd, &time, &time).map_err(|e| self.io("set the time of", rel)(e.into()))
    }

    fn check_symlink(&self, rel: &Path, link: &Path) -> Result<(), ArchiveError> {
        match self.options.symlinks {
            Symlinks::Any => Ok(()),
            Symlinks::None => Err(self.refuse(rel, "symlinks are not allowed in this archive")),
            Symlinks::CriuParents if is_criu_parent_link(rel, link) => Ok(()),
            Symlinks::CriuParents => Err(self.refuse(
                rel,
                "the only symlinks a checkpoint may hold are CRIU's parent links to ../pre-dump-N or ../pre-checkpoint",
            )),
        }
    }

    /// Directory modes, owners and times, deepest first, through descriptors opened beneath
    /// the root with no symlink followed.
    fn finish_dirs(&mut self) -> Result<(), ArchiveError> {
        let dirs = std::mem::take(&mut self.dirs);
        for DirMeta { rel, mode, owner, mtime } in dirs.into_iter().rev() {
            let fd: OwnedFd = match self.beneath.open_at(&rel, OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_RDONLY)
            {
                Ok(fd) => fd,
                // Removed by a later whiteout: nothing to set.
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
                Err(e) => return Err(self.io("open", &rel)(e)),
            };
            self.finish_fd(fd.as_fd(), &rel, mode, owner, mtime)?;
        }
        Ok(())
    }
}

/// `checkpoint/parent -> ../pre-dump-3`, as CRIU writes it for a dump on top of pre-dumps.
pub fn is_criu_parent_link(rel: &Path, link: &Path) -> bool {
    let mut parts = rel.iter();
    let (Some(dir), Some(file), None) = (parts.next(), parts.next(), parts.next()) else { return false };
    file == OsStr::new("parent")
        && is_images_dir_name(dir)
        && link.parent() == Some(Path::new(".."))
        && link.file_name().is_some_and(is_images_dir_name)
}

/// `checkpoint`, `pre-checkpoint` or `pre-dump-N`: the images directories an archive may hold.
pub fn is_images_dir_name(name: &OsStr) -> bool {
    let Some(name) = name.to_str() else { return false };
    name == crate::metadata::CHECKPOINT_DIR
        || name == crate::metadata::PRE_CHECKPOINT_DIR
        || name
            .strip_prefix("pre-dump-")
            .is_some_and(|n| !n.is_empty() && n.len() <= 9 && n.bytes().all(|b| b.is_ascii_digit()))
}

mod from_file;
pub(crate) use from_file::copy_at;
#[cfg(test)]
mod tests;
