//! Publishing a file so that the target path only ever holds a complete file: written to a
//! temporary file beside it (0600 from creation), synced, renamed, and the directory synced.

use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use super::ArchiveError;
use crate::base_error::BaseError;

type Result<T> = std::result::Result<T, ArchiveError>;

/// A temporary file that disappears unless it is published. Its directory is opened once and
/// every later step (create, publish, remove) works relative to that descriptor, so that a
/// directory swapped for a link after the target was checked cannot redirect the archive.
pub struct PendingFile {
    pub temp_path: PathBuf,
    pub target: PathBuf,
    pub writer: BufWriter<WriteBehind>,
    published: bool,
    /// The note that names `temp_path` for `ckpt system check`, should ckpt be killed.
    journal: Option<PathBuf>,
    dir: std::os::fd::OwnedFd,
    temp_name: std::ffi::OsString,
    file_name: std::ffi::OsString,
}

/// A file whose pages the kernel starts writing to disk as soon as each few MiB are written,
/// instead of all at the `fsync` that publishes it: written back while the rest of the archive
/// is still being compressed, a large export's final sync has little left to wait for.
pub struct WriteBehind {
    file: File,
    written: u64,
    started_to: u64,
}

/// How much is written before its write-back is started.
const WRITE_BEHIND_WINDOW: u64 = 8 << 20;

impl WriteBehind {
    fn new(file: File) -> WriteBehind {
        WriteBehind { file, written: 0, started_to: 0 }
    }
}

impl Write for WriteBehind {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(&buf[..buf.len().min(super::WRITE_PIECE)])?;
        self.written += n as u64;
        if self.written - self.started_to >= WRITE_BEHIND_WINDOW {
            // Only starts the write-back and does not wait for it; the sync at publication is
            // still what makes the file durable, so a failure here changes nothing.
            // SAFETY: a plain syscall on a descriptor this struct owns; it touches no memory.
            unsafe {
                libc::sync_file_range(
                    self.file.as_raw_fd(),
                    self.started_to as libc::off64_t,
                    (self.written - self.started_to) as libc::off64_t,
                    libc::SYNC_FILE_RANGE_WRITE,
                );
            }
            self.started_to = self.written;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// What an in-flight export leaves in the journal directory while it is written.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct InFlight {
    pub pid: i32,
    pub temp_path: PathBuf,
    pub target: PathBuf,
}

impl PendingFile {
    /// Fails before anything is written when the target's directory is missing or read-only.
    pub fn create(target: &Path) -> Result<PendingFile> {
        let dir = match target.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if target.is_dir() {
            return Err(ArchiveError::BadTarget {
                target: target.to_path_buf(),
                problem: "is a directory; give a file name",
            });
        }
        let Some(file_name) = target.file_name() else {
            return Err(ArchiveError::BadTarget { target: target.to_path_buf(), problem: "names no file" });
        };
        use nix::fcntl::OFlag;
        use nix::sys::stat::Mode;
        let dir_fd = nix::fcntl::open(&dir, OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC, Mode::empty())
            .map_err(|e| BaseError::io("open the directory of", target)(e.into()))?;
        let temp_name = std::ffi::OsString::from(format!(
            ".{}.ckpt-{}",
            file_name.to_string_lossy(),
            &crate::util::random_id()[..12]
        ));
        let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let file = nix::fcntl::openat(&dir_fd, temp_name.as_os_str(), flags, Mode::from_bits_truncate(0o600))
            .map(File::from)
            .map_err(|e| BaseError::io("create a temporary file for", target)(e.into()))?;
        Ok(PendingFile {
            temp_path: dir.join(&temp_name),
            target: target.to_path_buf(),
            writer: BufWriter::with_capacity(1 << 20, WriteBehind::new(file)),
            published: false,
            journal: None,
            dir: dir_fd,
            temp_name,
            file_name: file_name.to_os_string(),
        })
    }

    /// Where the file really goes: the directory opened at creation, whatever its path names now.
    pub fn real_target(&self) -> Result<PathBuf> {
        let link = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&self.dir));
        let dir = fs::read_link(&link).map_err(BaseError::io("resolve the directory of", &self.target))?;
        Ok(dir.join(&self.file_name))
    }

    /// [`PendingFile::create`], noting the temporary file in `journal_dir` first, so that a
    /// later `ckpt system check` finds it if this process dies before it is published or removed.
    pub fn create_journaled(target: &Path, journal_dir: &Path) -> Result<PendingFile> {
        crate::util::create_dir_all(journal_dir)?;
        let journal = journal_dir.join(format!("{}-{}.json", std::process::id(), &crate::util::random_id()[..12]));
        let mut pending = PendingFile::create(target)?;
        let note = InFlight {
            pid: std::process::id() as i32,
            temp_path: pending.temp_path.clone(),
            target: target.to_path_buf(),
        };
        crate::util::write_json(&journal, &note)?;
        pending.journal = Some(journal);
        Ok(pending)
    }

    pub fn publish(mut self) -> Result<()> {
        if self.published {
            return Ok(());
        }
        let target = self.target.clone();
        self.writer.flush().map_err(BaseError::io("write", &target))?;
        self.writer.get_ref().file.sync_all().map_err(BaseError::io("sync", &target))?;
        nix::fcntl::renameat(&self.dir, self.temp_name.as_os_str(), &self.dir, self.file_name.as_os_str())
            .map_err(|e| BaseError::io("publish", &target)(e.into()))?;
        self.published = true;
        if let Some(journal) = self.journal.take() {
            let _ = fs::remove_file(journal);
        }
        let _ = nix::unistd::fsync(&self.dir);
        Ok(())
    }
}

impl Drop for PendingFile {
    fn drop(&mut self) {
        if !self.published {
            let _ =
                nix::unistd::unlinkat(&self.dir, self.temp_name.as_os_str(), nix::unistd::UnlinkatFlags::NoRemoveDir);
        }
        if let Some(journal) = self.journal.take() {
            let _ = fs::remove_file(journal);
        }
    }
}

/// Writes `output` through `write` and publishes it only if `write` succeeds.
pub fn publish_file<F>(output: &Path, write: F) -> Result<()>
where
    F: FnOnce(&mut BufWriter<WriteBehind>) -> io::Result<()>,
{
    let mut pending = PendingFile::create(output)?;
    write(&mut pending.writer).map_err(BaseError::io("write", output))?;
    pending.publish()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Past several write-behind windows, in writes of odd sizes, the file is what was written.
    #[test]
    fn a_large_file_written_behind_is_whole() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("big.tar");
        let data: Vec<u8> = (0..(WRITE_BEHIND_WINDOW * 3 + 12345) as usize).map(|i| (i % 253) as u8).collect();
        let mut pending = PendingFile::create(&target).unwrap();
        for piece in data.chunks(3 << 20 | 17) {
            pending.writer.write_all(piece).unwrap();
        }
        assert!(pending.writer.get_ref().started_to >= WRITE_BEHIND_WINDOW * 2, "write-back was started along the way");
        pending.publish().unwrap();
        assert!(std::fs::read(&target).unwrap() == data);
    }

    #[test]
    fn a_directory_swapped_after_creation_does_not_redirect_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let (checked, elsewhere, link) =
            (dir.path().join("checked"), dir.path().join("elsewhere"), dir.path().join("l"));
        std::fs::create_dir(&checked).unwrap();
        std::fs::create_dir(&elsewhere).unwrap();
        std::os::unix::fs::symlink(&checked, &link).unwrap();
        let mut pending = PendingFile::create(&link.join("out.tar")).unwrap();
        std::fs::remove_file(&link).unwrap();
        std::os::unix::fs::symlink(&elsewhere, &link).unwrap();
        assert_eq!(pending.real_target().unwrap(), checked.join("out.tar"));
        pending.writer.write_all(b"whole").unwrap();
        pending.publish().unwrap();
        assert_eq!(std::fs::read(checked.join("out.tar")).unwrap(), b"whole");
        assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0, "nothing went through the swapped link");
    }

    #[test]
    fn a_dropped_export_leaves_nothing_and_a_published_one_is_whole_and_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let journal = dir.path().join("inflight");
        let target = dir.path().join("out.tar");
        {
            let mut pending = PendingFile::create_journaled(&target, &journal).unwrap();
            pending.writer.write_all(b"half").unwrap();
            assert_eq!(std::fs::read_dir(&journal).unwrap().count(), 1, "the journal names the temporary file");
        }
        assert!(!target.exists());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "only the journal directory is left");
        assert_eq!(std::fs::read_dir(&journal).unwrap().count(), 0);
        let mut pending = PendingFile::create_journaled(&target, &journal).unwrap();
        pending.writer.write_all(b"whole").unwrap();
        pending.publish().unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"whole");
        assert_eq!(std::fs::metadata(&target).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::read_dir(&journal).unwrap().count(), 0);
        assert!(PendingFile::create(dir.path()).err().unwrap().to_string().contains("is a directory"));
    }
}
