//! Publishing a file so that the target path only ever holds a complete file: written to a
//! temporary file beside it (0600 from creation), synced, renamed, and the directory synced.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// A temporary file that disappears unless it is published.
pub struct PendingFile {
    pub temp_path: PathBuf,
    pub target: PathBuf,
    pub writer: BufWriter<WriteBehind>,
    published: bool,
    /// The note that names `temp_path` for `ckpt system check`, should ckpt be killed.
    journal: Option<PathBuf>,
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
            return Err(Error::invalid(format!(
                "export target {:?} is a directory; give a file name",
                target.display().to_string()
            )));
        }
        let file_name = target.file_name().and_then(|n| n.to_str()).unwrap_or("archive");
        let temp_path = dir.join(format!(".{file_name}.ckpt-{}", &crate::util::random_id()[..12]));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_NOFOLLOW)
            .mode(0o600)
            .open(&temp_path)
            .map_err(Error::io("create a temporary file for", target))?;
        Ok(PendingFile {
            temp_path,
            target: target.to_path_buf(),
            writer: BufWriter::with_capacity(1 << 20, WriteBehind::new(file)),
            published: false,
            journal: None,
        })
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
        self.writer.flush().map_err(Error::io("write", &target))?;
        self.writer.get_ref().file.sync_all().map_err(Error::io("sync", &target))?;
        fs::rename(&self.temp_path, &target).map_err(Error::io("publish", &target))?;
        self.published = true;
        if let Some(journal) = self.journal.take() {
            let _ = fs::remove_file(journal);
        }
        if let Some(dir) = target.parent().filter(|p| !p.as_os_str().is_empty())
            && let Ok(d) = File::open(dir)
        {
            let _ = d.sync_all();
        }
        Ok(())
    }
}

impl Drop for PendingFile {
    fn drop(&mut self) {
        if !self.published {
            let _ = fs::remove_file(&self.temp_path);
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
    write(&mut pending.writer).map_err(Error::io("write", output))?;
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
