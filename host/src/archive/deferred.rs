//! Page images copied out of an uncompressed archive after the rest of it, while the restore
//! they belong to gets going.
//!
//! CRIU reads memory pages only once it has made the container's namespaces and mounts. Under
//! runc that takes about as long as copying 512 MiB of pages out of an archive: 180 ms from
//! runc's start to CRIU's `post-setup-namespaces`, against 200 ms for the copy, on this project's
//! 2-core VM. An import that extracts everything else, then copies the page images on a thread of
//! its own while the container is built and the runtime starts, does both at once. A CRIU action
//! script (`criu::hold`) keeps CRIU from reading a page before they are in.
//!
//! Each image is copied into an unnamed file (`O_TMPFILE`) in its images directory, checked
//! against the manifest, and only then linked under its name: CRIU can never open a page image
//! that is partly there or does not match, and a copy that fails or is given up leaves nothing.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;

use super::ArchiveError;

/// A page image found in the archive and not yet copied: an unnamed file in the directory it goes
/// to, and where its bytes are in the archive.
pub struct DeferredMember {
    /// Its path in the archive.
    pub rel: PathBuf,
    pub(crate) dir: OwnedFd,
    pub(crate) name: OsString,
    pub(crate) file: File,
    pub(crate) offset: u64,
    pub size: u64,
    pub(crate) mode: u32,
    pub(crate) mtime: u64,
}

/// Whether `rel` is a memory page image in one of a checkpoint's images directories
/// (`checkpoint/pages-1.img`): the bulk of an archive, and read by CRIU only late in a restore.
pub fn is_page_image(rel: &Path) -> bool {
    let mut parts = rel.iter();
    let (Some(dir), Some(file), None) = (parts.next(), parts.next(), parts.next()) else { return false };
    super::extract::is_images_dir_name(dir) && file.to_str().is_some_and(is_page_image_name)
}

pub use crate::metadata::is_page_image_name;

/// The page images of an extracted archive, still to be copied out of it.
pub struct DeferredImages {
    pub(crate) archive_name: String,
    pub(crate) archive: File,
    pub(crate) members: Vec<DeferredMember>,
    /// The BLAKE3 (hex) the manifest lists for each; `None` for an archive without a manifest
    /// (podman's), whose members are not checked.
    pub(crate) expected: Option<HashMap<PathBuf, String>>,
}

/// What is told of the copies' outcome once they end: `Err` holds the reason, for a person.
pub type Report = Box<dyn FnOnce(Result<(), String>) + Send>;

impl DeferredImages {
    pub fn bytes(&self) -> u64 {
        self.members.iter().map(|m| m.size).sum()
    }

    /// Starts the copies on a thread of their own.
    pub fn start(self) -> Result<ImagesInFlight, ArchiveError> {
        let bytes = self.bytes();
        let name = self.archive_name.clone();
        let cancel = Arc::new(AtomicBool::new(false));
        let (report, reports) = mpsc::channel::<Report>();
        let cancelled = cancel.clone();
        let thread = std::thread::Builder::new()
            .name("page-images".into())
            .spawn(move || {
                let copied = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.copy_all(&cancelled)))
                    .unwrap_or_else(|_| Err(copy_panicked(&self.archive_name)));
                if let Ok(report) = reports.recv() {
                    report(copied.as_ref().map(drop).map_err(ToString::to_string));
                }
                copied
            })
            .map_err(|source| ArchiveError::Io {
                archive: name.clone(),
                action: "start a thread to copy page images from",
                path: PathBuf::from(&name),
                source,
            })?;
        Ok(ImagesInFlight { name, bytes, cancel, report: Some(report), thread: Some(thread) })
    }

    fn copy_all(&self, cancel: &AtomicBool) -> Result<(), ArchiveError> {
        for member in &self.members {
            self.copy_one(member, cancel)?;
        }
        Ok(())
    }

    fn copy_one(&self, member: &DeferredMember, cancel: &AtomicBool) -> Result<(), ArchiveError> {
        let io = |action: &'static str| {
            let archive = self.archive_name.clone();
            let path = member.rel.clone();
            move |source: std::io::Error| ArchiveError::Io { archive, action, path, source }
        };
        let (copied, digest) = super::extract::copy_at(
            &self.archive,
            member.offset,
            &member.file,
            member.size,
            self.expected.is_some(),
            &mut |_| {
                if cancel.load(Ordering::Relaxed) {
                    return Err(std::io::Error::new(std::io::ErrorKind::Interrupted, "the restore was given up"));
                }
                Ok(())
            },
        )
        .map_err(io("write"))?;
        if copied != member.size {
            return Err(ArchiveError::Malformed {
                archive: self.archive_name.clone(),
                detail: format!("member {:?} is truncated", member.rel.display()),
            });
        }
        if let Some(expected) = &self.expected {
            let matches = digest.zip(expected.get(&member.rel)).is_some_and(|(d, e)| d.to_hex().as_str() == e);
            if !matches {
                return Err(ArchiveError::CorruptMember {
                    archive: self.archive_name.clone(),
                    member: member.rel.display().to_string(),
                    detail: "its BLAKE3 digest does not match the manifest".into(),
                });
            }
        }
        crate::safefs::chmod_fd(member.file.as_fd(), member.mode).map_err(io("chmod"))?;
        let time = nix::sys::time::TimeSpec::new(member.mtime.min(i64::MAX as u64) as i64, 0);
        nix::sys::stat::futimens(member.file.as_fd(), &time, &time).map_err(|e| io("set the time of")(e.into()))?;
        // Linking an unnamed file through /proc needs no capability that linking by descriptor
        // (AT_EMPTY_PATH) would.
        let proc_path = format!("/proc/self/fd/{}", member.file.as_raw_fd());
        nix::unistd::linkat(
            nix::fcntl::AT_FDCWD,
            proc_path.as_str(),
            &member.dir,
            member.name.as_os_str(),
            nix::fcntl::AtFlags::AT_SYMLINK_FOLLOW,
        )
        .map_err(|e| io("link")(e.into()))
    }
}

/// Page images being copied. Dropped unfinished, it gives the copies up and waits for them to stop.
pub struct ImagesInFlight {
    /// The archive's, for errors.
    name: String,
    bytes: u64,
    cancel: Arc<AtomicBool>,
    report: Option<mpsc::Sender<Report>>,
    thread: Option<std::thread::JoinHandle<Result<(), ArchiveError>>>,
}

impl ImagesInFlight {
    /// How many bytes of page images there are.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Has `report` told the outcome once the copies end, or at once if they have.
    pub fn report_to(&mut self, report: Report) {
        if let Some(sender) = &self.report {
            let _ = sender.send(report);
        }
    }

    /// Waits for the copies to end.
    pub fn wait(mut self) -> Result<(), ArchiveError> {
        self.report.take();
        let thread = self.thread.take().expect("joined once");
        thread.join().unwrap_or_else(|_| Err(copy_panicked(&self.name)))
    }
}

impl Drop for ImagesInFlight {
    fn drop(&mut self) {
        self.cancel.store(true, Ordering::Relaxed);
        self.report.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn copy_panicked(archive: &str) -> ArchiveError {
    ArchiveError::Io {
        archive: archive.to_string(),
        action: "copy page images from",
        path: PathBuf::from(archive),
        source: std::io::Error::other("the copying thread panicked"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_memory_pages_in_an_images_directory_are_page_images() {
        for yes in ["checkpoint/pages-1.img", "pre-dump-2/pages-13.img", "pre-checkpoint/pages-1.img"] {
            assert!(is_page_image(Path::new(yes)), "{yes}");
        }
        for no in [
            "checkpoint/pagemap-1.img",
            "checkpoint/pages-.img",
            "checkpoint/pages-1.img.x",
            "pages-1.img",
            "volumes/pages-1.img",
            "checkpoint/sub/pages-1.img",
        ] {
            assert!(!is_page_image(Path::new(no)), "{no}");
        }
    }
}
