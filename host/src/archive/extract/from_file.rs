//! Extraction from an uncompressed archive in a regular file. tar reads headers and small
//! members through a buffer as from any stream; a large member (a page image) is read from the
//! archive file at the member's offset, 256 KiB at a time, and written to its destination, and
//! tar then seeks past it. Its BLAKE3 is taken on a second thread from the destination, through
//! a mapping, as the copy lands.
//!
//! Reads at the offset and 256 KiB writes beat both tar's stream and the kernel's
//! `copy_file_range` here (bench/README.md has the measurements).

use std::cell::RefCell;
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::rc::Rc;

use crate::progress::Progress;

/// The archive as tar reads it: buffered, counted, and able to skip forward without reading,
/// keeping its buffer when the skip falls inside it.
pub(super) struct ArchiveFile {
    reader: BufReader<File>,
    position: u64,
    progress: Rc<RefCell<Progress>>,
}

impl ArchiveFile {
    pub(super) fn new(reader: BufReader<File>, progress: Rc<RefCell<Progress>>) -> ArchiveFile {
        ArchiveFile { reader, position: 0, progress }
    }
}

impl Read for ArchiveFile {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.reader.read(buf)?;
        self.position += n as u64;
        self.progress.borrow_mut().add(n as u64);
        Ok(n)
    }
}

impl Seek for ArchiveFile {
    /// tar only ever skips forward from where it is: past a member it did not read, or past the
    /// padding after one. The bytes skipped were counted by whoever copied them.
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        let SeekFrom::Current(forward @ 0..) = pos else {
            return Err(io::Error::new(io::ErrorKind::Unsupported, "an archive is only read forward"));
        };
        self.reader.seek_relative(forward)?;
        self.position += forward as u64;
        Ok(self.position)
    }
}

/// What a member can be copied from: the archive file (a descriptor of its own, only ever read
/// at explicit offsets) and the progress its copies count towards.
pub(super) struct CopySource {
    pub(super) archive: File,
    pub(super) progress: Rc<RefCell<Progress>>,
}

impl CopySource {
    /// Copies `size` bytes at `offset` in the archive into `file` (opened for reading too), with
    /// their BLAKE3 when `hash` is set, counted as progress. Returns fewer bytes than `size` only
    /// when the archive ends early.
    pub(super) fn copy_member(
        &self,
        offset: u64,
        file: &File,
        size: u64,
        hash: bool,
    ) -> io::Result<(u64, Option<blake3::Hash>)> {
        copy_at(&self.archive, offset, file, size, hash, &mut |n| {
            self.progress.borrow_mut().add(n);
            Ok(())
        })
    }
}

/// Copies `size` bytes at `offset` in `archive` into `file` (opened for reading too), with their
/// BLAKE3 when `hash` is set, taken on another thread from what landed in `file`, a piece behind
/// the copy; `counted` hears of each piece, and may stop the copy with an error. Returns fewer
/// bytes than `size` only when the archive ends early.
pub(crate) fn copy_at(
    archive: &File,
    offset: u64,
    file: &File,
    size: u64,
    hash: bool,
    counted: &mut dyn FnMut(u64) -> io::Result<()>,
) -> io::Result<(u64, Option<blake3::Hash>)> {
    let (copied_to, landed) = std::sync::mpsc::channel::<u64>();
    std::thread::scope(|scope| {
        let hashing = hash.then(|| scope.spawn(move || hash_as_it_lands(file, size, &landed)));
        let copied = copy_range(archive, offset, file, size, &mut |copied, piece| {
            let _ = copied_to.send(copied);
            counted(piece)
        });
        drop(copied_to);
        let digest = match hashing {
            Some(thread) => Some(thread.join().map_err(|_| io::Error::other("the hashing thread panicked"))??),
            None => None,
        };
        copied.map(|copied| (copied, digest))
    })
}

/// Reads the archive at an offset (its descriptor may share tar's position) into a buffer and
/// writes `file` where it stands, one write piece at a time; tells `landed` how far the copy has
/// got and how much the last piece was, and stops when it says so.
fn copy_range(
    archive: &File,
    offset: u64,
    file: &File,
    size: u64,
    landed: &mut dyn FnMut(u64, u64) -> io::Result<()>,
) -> io::Result<u64> {
    use std::os::unix::fs::FileExt;
    let mut copied = 0u64;
    let mut buffer = vec![0u8; crate::archive::WRITE_PIECE];
    while copied < size {
        crate::interrupt::check_io()?;
        let step = (size - copied).min(buffer.len() as u64) as usize;
        let n = match archive.read_at(&mut buffer[..step], offset + copied) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if n == 0 {
            break; // the archive ends inside the member
        }
        (&*file).write_all(&buffer[..n])?;
        copied += n as u64;
        landed(copied, n as u64)?;
    }
    Ok(copied)
}

/// Hashes `file` from its start, up to each length `landed` reports. It reads the file through a
/// mapping: the bytes are hashed where they lie in the page cache, with no copy.
fn hash_as_it_lands(file: &File, size: u64, landed: &std::sync::mpsc::Receiver<u64>) -> io::Result<blake3::Hash> {
    let mut hasher = blake3::Hasher::new();
    if size == 0 {
        return Ok(hasher.finalize());
    }
    // SAFETY: the file is this extraction's own, created with O_EXCL in a private staging
    // directory and never truncated; only the part already copied into it is read.
    let mapped = unsafe { memmap2::MmapOptions::new().len(size as usize).map(file)? };
    let mut hashed = 0u64;
    for until in landed {
        hasher.update(&mapped[hashed as usize..until as usize]);
        hashed = until;
    }
    Ok(hasher.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A copy gives the member's bytes and their BLAKE3, counts them as progress, and stops
    /// short where the archive ends.
    #[test]
    fn a_member_is_copied_and_hashed_as_it_lands() {
        let dir = tempfile::tempdir().unwrap();
        let size = 3 * crate::archive::WRITE_PIECE + super::super::CHUNK + 777;
        let member: Vec<u8> = (0..size).map(|i| (i * 31 % 253) as u8).collect();
        let mut archive = vec![7u8; 1536];
        archive.extend_from_slice(&member);
        let archive_path = dir.path().join("archive.tar");
        std::fs::write(&archive_path, &archive).unwrap();
        let progress = Rc::new(RefCell::new(Progress::on_terminal("import", || None)));
        let source = CopySource { archive: File::open(&archive_path).unwrap(), progress: progress.clone() };
        let out_path = dir.path().join("member");
        let out = File::options().read(true).write(true).create_new(true).open(&out_path).unwrap();
        let (copied, digest) = source.copy_member(1536, &out, member.len() as u64, true).unwrap();
        assert_eq!(copied, member.len() as u64);
        assert_eq!(digest, Some(blake3::hash(&member)));
        assert_eq!(std::fs::read(&out_path).unwrap(), member);
        assert_eq!(progress.borrow().done(), member.len() as u64);

        let short = File::options().read(true).write(true).create_new(true).open(dir.path().join("short")).unwrap();
        let (copied, _) = source.copy_member(1536 + 1000, &short, member.len() as u64, false).unwrap();
        assert_eq!(copied, member.len() as u64 - 1000, "the archive ends 1000 bytes early");
    }
}
