//! Private memory: a tmpfs of its own for what must never reach a disk in the clear (the CRIU
//! images of a sealed checkpoint, and those of a sealed archive being restored). It lives as
//! long as its mount: unmounted, its pages are gone, and a reboot forgets it.

use std::path::Path;

use nix::mount::{MntFlags, MsFlags};

use crate::base_error::{BaseError as Error, BaseResult as Result};

/// Mounts a private tmpfs at `dir` (made, mode 0700, if missing), holding at most `limit` bytes.
pub fn mount(dir: &Path, limit: u64) -> Result<()> {
    crate::util::create_dir_with_mode(dir, 0o700)?;
    let options = format!("size={limit},mode=0700");
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    nix::mount::mount(Some("ckpt-private"), dir, Some("tmpfs"), flags, Some(options.as_str()))
        .map_err(|e| Error::io("mount private memory on", dir)(e.into()))?;
    // Nothing mounted here shows in another mount namespace, nor anything from there here.
    nix::mount::mount(None::<&str>, dir, None::<&str>, MsFlags::MS_PRIVATE, None::<&str>)
        .map_err(|e| Error::io("make private the memory at", dir)(e.into()))
}

/// Private memory mounted for as long as this lives.
pub struct Held {
    dir: std::path::PathBuf,
}

impl Held {
    pub fn mount(dir: &Path, limit: u64) -> Result<Held> {
        mount(dir, limit)?;
        Ok(Held { dir: dir.to_path_buf() })
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let _ = release(&self.dir);
    }
}

/// Shows `source` (a directory in private memory) at `dest` too, so that the memory outlives
/// the mount `source` is on for as long as `dest` is mounted.
pub fn bind(source: &Path, dest: &Path) -> Result<()> {
    crate::util::create_dir_with_mode(dest, 0o700)?;
    nix::mount::mount(Some(source), dest, None::<&str>, MsFlags::MS_BIND, None::<&str>)
        .map_err(|e| Error::io("show private memory at", dest)(e.into()))
}

/// Whether `dir` is private memory: a tmpfs mounted there (or a directory of one shown there).
pub fn holds(dir: &Path) -> bool {
    super::is_mountpoint(dir)
}

/// Gives the memory at `dir` back, if any is mounted there; what it held is gone. The
/// directory itself stays, empty.
pub fn release(dir: &Path) -> Result<()> {
    if !holds(dir) {
        return Ok(());
    }
    nix::mount::umount2(dir, MntFlags::MNT_DETACH)
        .map_err(|e| Error::io("release the private memory at", dir)(e.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_memory_holds_files_until_released() {
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let memory = dir.path().join("images");
        mount(&memory, 1 << 20).unwrap();
        assert!(holds(&memory));
        std::fs::write(memory.join("pages-1.img"), b"secret").unwrap();
        let shown = dir.path().join("shown");
        bind(&memory, &shown).unwrap();
        release(&memory).unwrap();
        assert_eq!(std::fs::read(shown.join("pages-1.img")).unwrap(), b"secret", "kept by the other mount");
        assert!(std::fs::write(memory.join("x"), vec![0; 2 << 20]).is_ok(), "the directory is plain again");
        release(&shown).unwrap();
        assert!(!shown.join("pages-1.img").exists(), "gone with its last mount");
        assert!(std::fs::write(dir.path().join("fits"), b"").is_ok());
        let full = dir.path().join("small");
        mount(&full, 64 << 10).unwrap();
        assert!(std::fs::write(full.join("big"), vec![0; 1 << 20]).is_err(), "no more than its limit");
        release(&full).unwrap();
    }
}
