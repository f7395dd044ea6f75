//! A checkpoint from outside (an archive file, a stream, an image's layers) unpacked into
//! private staging and checked, not yet used. Its members are only ever opened beneath the
//! staging directory, with no symlink followed: whoever made it is not trusted.

use std::path::{Path, PathBuf};

use super::checkpoint as layout;
use super::deferred::ImagesInFlight;
use super::extract::ExtractOptions;
use super::{ArchiveError, FileDigests, extract_hashing, open_decompressed};
use crate::safefs::{self, Beneath};
use crate::util::{TempDir, tempdir_in};

/// A checkpoint unpacked into private staging, checked, not yet used. Its members are only ever
/// opened beneath the staging directory with no symlink followed.
pub struct StagedCheckpoint {
    /// The private memory the staging directory is, for a sealed checkpoint: released first, so
    /// that the directory under it can go.
    memory: Option<crate::rootfs::memory::Held>,
    pub dir: TempDir,
    beneath: Beneath,
    /// What it came from, as errors name it: a path, `standard input`, `image NAME`.
    pub origin: String,
    /// Whether a ckpt manifest listed and matched every member.
    pub verified: bool,
    /// Page images still being copied out of the archive, and checked, as the restore starts.
    pub page_images: Option<ImagesInFlight>,
}

/// How deep a chain of pre-dumps an imported checkpoint may have.
const MAX_PARENT_CHAIN: usize = 64;

impl StagedCheckpoint {
    /// An empty staging directory, `dir`, for what `origin` holds.
    pub fn new(dir: TempDir, origin: String) -> Result<StagedCheckpoint, ArchiveError> {
        let beneath = Beneath::open(&dir.path).map_err(|source| ArchiveError::Io {
            archive: origin.clone(),
            action: "open the staging directory",
            path: dir.path.clone(),
            source,
        })?;
        Ok(StagedCheckpoint { memory: None, dir, beneath, origin, verified: false, page_images: None })
    }

    /// An archive file, unpacked in `staging`; its page images go on being copied (see
    /// `page_images`).
    pub fn from_archive(staging: &Path, path: &Path) -> Result<StagedCheckpoint, ArchiveError> {
        let mut staged = StagedCheckpoint::new(tempdir_in(staging, "import")?, path.display().to_string())?;
        let extracted =
            layout::extract_checkpoint_leaving_pages(path, &staged.dir.path, &ExtractOptions::checkpoint(), true)?;
        staged.verified = extracted.verified;
        staged.page_images = extracted.page_images.map(|images| images.start()).transpose()?;
        Ok(staged)
    }

    /// An archive streamed on standard input, unpacked in `staging`.
    pub fn from_stdin(staging: &Path) -> Result<StagedCheckpoint, ArchiveError> {
        let mut staged = StagedCheckpoint::new(tempdir_in(staging, "import")?, "standard input".into())?;
        let stdin = std::io::BufReader::with_capacity(1 << 20, std::io::stdin());
        staged.verified = layout::extract_checkpoint_stream(
            stdin,
            "standard input",
            &staged.dir.path,
            &ExtractOptions::checkpoint(),
        )?;
        Ok(staged)
    }

    /// A sealed archive's plaintext, `stream`, unpacked into private memory (at most `limit`
    /// bytes) in `staging`: what it holds never reaches a disk in the clear.
    pub fn from_stream_in_memory<R: std::io::BufRead + Send + 'static>(
        staging: &Path,
        stream: R,
        origin: String,
        limit: u64,
    ) -> Result<StagedCheckpoint, ArchiveError> {
        let dir = tempdir_in(staging, "import")?;
        let memory = crate::rootfs::memory::Held::mount(&dir.path, limit).map_err(|e| ArchiveError::Io {
            archive: origin.clone(),
            action: "hold the checkpoint in private memory at",
            path: dir.path.clone(),
            source: std::io::Error::other(e.to_string()),
        })?;
        let mut staged = StagedCheckpoint::new(dir, origin)?;
        staged.memory = Some(memory);
        let origin = staged.origin.clone();
        staged.verified =
            layout::extract_checkpoint_stream(stream, &origin, &staged.dir.path, &ExtractOptions::checkpoint())?;
        Ok(staged)
    }

    /// A checkpoint image's layers (`layers`, its blobs in order), unpacked in `staging`.
    pub fn from_image_layers(staging: &Path, name: &str, layers: &[PathBuf]) -> Result<StagedCheckpoint, ArchiveError> {
        let origin = format!("image {name}");
        let mut staged = StagedCheckpoint::new(tempdir_in(staging, "import")?, origin)?;
        let mut written = FileDigests::new();
        for blob in layers {
            extract_hashing(
                open_decompressed(blob)?,
                &staged.dir.path,
                name,
                &ExtractOptions::checkpoint(),
                &mut written,
            )?;
        }
        staged.verified = layout::verify_manifest(&staged.dir.path, name, &written)?;
        Ok(staged)
    }

    /// The error for a member that cannot be taken, and why.
    pub fn refuse(&self, member: &str, reason: &str) -> ArchiveError {
        ArchiveError::Refused { archive: self.origin.clone(), member: member.to_string(), reason: reason.into() }
    }

    /// Opens a top-level member that must be a regular file; `None` when the archive has none.
    pub fn open_member(&self, name: &str) -> Result<Option<std::fs::File>, ArchiveError> {
        match self.beneath.open_file(Path::new(name)) {
            Ok(file) => Ok(Some(file)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.refuse(name, &format!("it is not a regular file ({e})"))),
        }
    }

    /// A top-level JSON member, parsed; `None` when the archive has none.
    pub fn read_member_json<T: serde::de::DeserializeOwned>(&self, name: &str) -> Result<Option<T>, ArchiveError> {
        let Some(file) = self.open_member(name)? else { return Ok(None) };
        serde_json::from_reader(std::io::BufReader::new(file)).map(Some).map_err(|e| ArchiveError::CorruptMember {
            archive: self.origin.clone(),
            member: name.to_string(),
            detail: e.to_string(),
        })
    }

    /// Whether `name` is a real directory in the staging (never a link to one).
    pub fn has_dir(&self, name: &str) -> Result<bool, ArchiveError> {
        match self.beneath.kind(Path::new(name)) {
            Ok(Some(safefs::Kind::Dir)) => Ok(true),
            Ok(None) => Ok(false),
            Ok(Some(_)) => Err(self.refuse(name, "it is not a directory")),
            Err(e) => Err(self.refuse(name, &e.to_string())),
        }
    }

    /// The images directory and the pre-dumps its `parent` links reach, nearest first.
    pub fn images_chain(&self, images_dir: &str) -> Result<Vec<String>, ArchiveError> {
        let mut chain = vec![images_dir.to_string()];
        let mut current = images_dir.to_string();
        loop {
            let dir = self
                .beneath
                .open_at(Path::new(&current), nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_RDONLY)
                .map_err(|source| ArchiveError::Io {
                    archive: self.origin.clone(),
                    action: "open",
                    path: self.dir.path.join(&current),
                    source,
                })?;
            let link = match nix::fcntl::readlinkat(&dir, "parent") {
                Ok(link) => PathBuf::from(link),
                Err(nix::errno::Errno::ENOENT) => return Ok(chain),
                Err(e) => return Err(self.refuse(&format!("{current}/parent"), &format!("unreadable link ({e})"))),
            };
            let parent = link.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
            if !super::extract::is_criu_parent_link(&Path::new(&current).join("parent"), &link)
                || chain.contains(&parent)
                || chain.len() > MAX_PARENT_CHAIN
            {
                return Err(self.refuse(&format!("{current}/parent"), "it is not a link to an earlier pre-dump"));
            }
            if !self.has_dir(&parent)? {
                return Err(ArchiveError::Missing { archive: self.origin.clone(), member: parent });
            }
            chain.push(parent.clone());
            current = parent;
        }
    }

    /// Moves a staged images directory into the bundle; one in private memory is shown there
    /// instead (a mount cannot be moved across), and its memory lives as long as that does.
    pub fn move_dir_into(&self, name: &str, dest: &Path) -> Result<(), ArchiveError> {
        if self.memory.is_some() {
            let source = self.dir.path.join(name);
            return crate::rootfs::memory::bind(&source, dest).map_err(|e| ArchiveError::Io {
                archive: self.origin.clone(),
                action: "show checkpoint images from private memory at",
                path: dest.to_path_buf(),
                source: std::io::Error::other(e.to_string()),
            });
        }
        nix::fcntl::renameat(self.beneath.fd(), name, nix::fcntl::AT_FDCWD, dest).map_err(|e| ArchiveError::Io {
            archive: self.origin.clone(),
            action: "move checkpoint images into",
            path: dest.to_path_buf(),
            source: e.into(),
        })
    }
}
