//! Removing a large directory after the command that no longer needs it has returned, and
//! keeping an earlier checkpoint's images until a new dump has replaced them.
//!
//! Unlinking a page image drops its pages from the page cache and frees its blocks: 89 ms for a
//! 512 MiB image on this project's VM (ext4), at the end of every restore. So the directories
//! are moved aside at once (a rename, within ckpt's root) into the staging directory, under a
//! name that carries the PID of a detached `ckpt __discard`, which removes them. Should that
//! process die first, its directory is a leftover of a dead PID, which the next command sweeps.

use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::Roots;
use crate::base_error::{BaseError as Error, BaseResult as Result};
use crate::util::remove_dir_all;

/// Directories holding no more than this many bytes in all are removed at once.
const REMOVE_HERE_UP_TO: u64 = 8 << 20;

/// What the staging entry of a discard is called, for the process with `pid`.
fn prefix(pid: u32) -> String {
    format!(".discard-{pid}-")
}

/// Takes `dirs` (those that exist) out of their places now and removes them in the background;
/// removes them here when that cannot be arranged.
pub fn discard(roots: &Roots, dirs: &[PathBuf]) -> Result<()> {
    // Images in private memory (a sealed checkpoint's) are given back, not moved: a mount
    // cannot be renamed, and its pages go with it.
    for dir in dirs {
        crate::rootfs::memory::release(dir)?;
    }
    let present: Vec<&PathBuf> = dirs.iter().filter(|d| d.symlink_metadata().is_ok()).collect();
    if present.is_empty() {
        return Ok(());
    }
    // Starting the remover costs about 3 ms of CPU, more than removing 8 MiB of images here
    // (about 1.4 ms at the rate above): a small container's checkpoint (a few hundred KiB) goes
    // at once.
    if present.iter().map(|dir| crate::util::dir_size(dir)).sum::<u64>() <= REMOVE_HERE_UP_TO {
        return remove_now(&present);
    }
    let Some(mut remover) = spawn_remover(roots) else { return remove_now(&present) };
    let staging = roots.staging_dir();
    let trash = staging.join(format!("{}{}", prefix(remover.id()), &crate::util::random_id()[..16]));
    let mut stdin = remover.stdin.take().expect("piped");
    // Reaped when it ends, so that a long-lived ckpt (a daemon) keeps no zombies. Should its
    // standard input close with nothing written, it ends at once.
    std::thread::spawn(move || remover.wait());
    let made = crate::util::create_dir_all(&staging)
        .and_then(|()| std::fs::create_dir(&trash).map_err(Error::io("create directory", &trash)));
    if made.is_err() {
        return remove_now(&present);
    }
    // A directory elsewhere than the root's file system (a bundle on a mount of its own) cannot
    // be renamed into the trash: it is removed here, once the rest is handed over.
    let stayed: Vec<&PathBuf> = present
        .into_iter()
        .enumerate()
        .filter(|(index, dir)| std::fs::rename(dir, trash.join(index.to_string())).is_err())
        .map(|(_, dir)| dir)
        .collect();
    if stdin.write_all(&[trash.as_os_str().as_bytes(), b"\n"].concat()).is_err() {
        remove_dir_all(&trash)?;
    }
    drop(stdin);
    remove_now(&stayed)
}

/// Where the images an earlier checkpoint left in `place` wait while a new dump writes there.
pub fn aside_path(place: &Path) -> PathBuf {
    let mut name = place.file_name().unwrap_or_default().to_os_string();
    name.push(".earlier");
    place.with_file_name(name)
}

/// The images an earlier checkpoint left where a new dump writes (one made with
/// `--leave-running`, or kept by `restore --keep`), set aside under [`aside_path`] until the dump
/// has written its own. A dump that fails, or an error before it, puts them back on drop: a
/// failed checkpoint leaves the earlier one as it was.
pub struct EarlierImages<'a> {
    roots: &'a Roots,
    place: PathBuf,
    aside: Option<PathBuf>,
}

impl<'a> EarlierImages<'a> {
    /// Moves what is in `place` aside; what cannot be renamed (images held in private memory,
    /// a mount) is discarded as before.
    pub fn set_aside(roots: &'a Roots, place: &Path) -> Result<EarlierImages<'a>> {
        settle(roots, place)?;
        let mut earlier = EarlierImages { roots, place: place.to_path_buf(), aside: None };
        if place.symlink_metadata().is_err() {
            return Ok(earlier);
        }
        let aside = aside_path(place);
        match std::fs::rename(place, &aside) {
            Ok(()) => earlier.aside = Some(aside),
            Err(_) => discard(roots, &[place.to_path_buf()])?,
        }
        Ok(earlier)
    }

    /// The new dump wrote its images: the earlier ones go, in the background if they are large.
    /// That cannot fail the dump: what stays is settled at the next one, or with the container.
    pub fn replaced(mut self) {
        if let Some(aside) = self.aside.take()
            && let Err(e) = discard(self.roots, std::slice::from_ref(&aside))
        {
            tracing::warn!(aside = %aside.display(), "the earlier checkpoint's images stay for now: {e}");
        }
    }
}

impl Drop for EarlierImages<'_> {
    fn drop(&mut self) {
        // The failed dump's partial directory is gone by now; should it not be, `settle` puts
        // the earlier images back at the next dump or `system check --repair`.
        if let Some(aside) = self.aside.take()
            && self.place.symlink_metadata().is_err()
        {
            let _ = std::fs::rename(&aside, &self.place);
        }
    }
}

/// After ckpt died during a dump: the images an earlier checkpoint set aside from `place` go
/// back, unless that dump wrote its own (CRIU writes the inventory last), in which case they go.
/// Whether there was anything to settle.
pub fn settle(roots: &Roots, place: &Path) -> Result<bool> {
    let aside = aside_path(place);
    if aside.symlink_metadata().is_err() {
        return Ok(false);
    }
    if place.join(crate::metadata::CRIU_INVENTORY).is_file() {
        discard(roots, &[aside])?;
    } else {
        crate::rootfs::memory::release(place)?;
        remove_dir_all(place)?;
        std::fs::rename(&aside, place).map_err(Error::io("put back the earlier checkpoint's images", &aside))?;
    }
    Ok(true)
}

fn remove_now(dirs: &[&PathBuf]) -> Result<()> {
    dirs.iter().try_for_each(|dir| remove_dir_all(dir))
}

/// `ckpt __discard`, detached from the terminal's signals and output; `None` when it cannot start.
fn spawn_remover(roots: &Roots) -> Option<std::process::Child> {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe().ok()?;
    Command::new(exe)
        .arg("--root")
        .arg(&roots.root)
        .arg("--runroot")
        .arg(&roots.runroot)
        .arg("__discard")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .ok()
}

/// The body of `ckpt __discard`: removes each directory named on `input`, one per line, that is
/// this process's own discard in `roots`' staging directory, and nothing else.
pub fn remove_handed_over(roots: &Roots, input: &mut dyn Read) -> Result<()> {
    let mut names = Vec::new();
    input.read_to_end(&mut names).map_err(Error::io("read", Path::new("standard input")))?;
    let staging = roots.staging_dir();
    let own = prefix(std::process::id());
    for line in names.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let path = Path::new(std::ffi::OsStr::from_bytes(line));
        let ours = path.parent() == Some(staging.as_path())
            && path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(&own));
        if !ours {
            return Err(Error::invalid(format!(
                "__discard removes only its own staging entries, not {:?}",
                path.display().to_string()
            )));
        }
        remove_dir_all(path)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roots(dir: &Path) -> Roots {
        Roots::new(dir.join("root"), dir.join("run"))
    }

    #[test]
    fn only_the_processes_own_staging_entries_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let roots = roots(dir.path());
        let staging = roots.staging_dir();
        let own = staging.join(format!("{}0123456789abcdef", prefix(std::process::id())));
        let other = staging.join(format!("{}0123456789abcdef", prefix(std::process::id() + 1)));
        for d in [&own, &other] {
            std::fs::create_dir_all(d.join("0")).unwrap();
            std::fs::write(d.join("0/pages-1.img"), b"pages").unwrap();
        }
        remove_handed_over(&roots, &mut format!("{}\n", own.display()).as_bytes()).unwrap();
        assert!(!own.exists());
        let refused = remove_handed_over(&roots, &mut format!("{}\n", other.display()).as_bytes());
        assert!(refused.is_err() && other.exists());
        let outside = dir.path().join("elsewhere");
        std::fs::create_dir(&outside).unwrap();
        assert!(remove_handed_over(&roots, &mut format!("{}\n", outside.display()).as_bytes()).is_err());
        assert!(outside.exists());
    }

    #[test]
    fn a_root_whose_name_is_not_utf8_is_handed_over_byte_for_byte() {
        let dir = tempfile::tempdir().unwrap();
        let roots = roots(&dir.path().join(std::ffi::OsStr::from_bytes(b"store-\xff")));
        let own = roots.staging_dir().join(format!("{}0123456789abcdef", prefix(std::process::id())));
        std::fs::create_dir_all(own.join("0")).unwrap();
        let input = [own.as_os_str().as_bytes(), b"\n"].concat();
        remove_handed_over(&roots, &mut &input[..]).unwrap();
        assert!(!own.exists());
    }

    #[test]
    fn a_small_directory_is_removed_at_once_and_starts_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let roots = roots(dir.path());
        let images = dir.path().join("checkpoint");
        std::fs::create_dir_all(&images).unwrap();
        std::fs::write(images.join("pages-1.img"), vec![0u8; 256 << 10]).unwrap();
        discard(&roots, std::slice::from_ref(&images)).unwrap();
        assert!(!images.exists());
        assert!(!roots.staging_dir().exists(), "no remover was handed anything");
    }

    #[test]
    fn earlier_images_come_back_when_the_dump_fails_and_go_when_it_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let roots = roots(dir.path());
        let place = dir.path().join("checkpoint");
        let earlier = |marker: &str| {
            std::fs::create_dir_all(&place).unwrap();
            std::fs::write(place.join(crate::metadata::CRIU_INVENTORY), marker).unwrap();
        };
        earlier("earlier");
        // A dump that fails: its partial directory is removed, and the earlier images return.
        let aside = EarlierImages::set_aside(&roots, &place).unwrap();
        assert!(!place.exists() && aside_path(&place).is_dir());
        std::fs::create_dir(&place).unwrap();
        std::fs::remove_dir(&place).unwrap();
        drop(aside);
        assert_eq!(std::fs::read_to_string(place.join(crate::metadata::CRIU_INVENTORY)).unwrap(), "earlier");
        // A dump that is written: the earlier images go.
        let aside = EarlierImages::set_aside(&roots, &place).unwrap();
        earlier("new");
        aside.replaced();
        assert!(!aside_path(&place).exists());
        assert_eq!(std::fs::read_to_string(place.join(crate::metadata::CRIU_INVENTORY)).unwrap(), "new");
    }

    #[test]
    fn after_a_crash_the_earlier_images_are_settled_by_whether_the_dump_wrote_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let roots = roots(dir.path());
        let place = dir.path().join("checkpoint");
        let aside = aside_path(&place);
        // Killed midway: a partial directory without an inventory, and the earlier images aside.
        std::fs::create_dir_all(&aside).unwrap();
        std::fs::write(aside.join(crate::metadata::CRIU_INVENTORY), "earlier").unwrap();
        std::fs::create_dir_all(&place).unwrap();
        std::fs::write(place.join("pages-1.img"), "partial").unwrap();
        assert!(settle(&roots, &place).unwrap());
        assert_eq!(std::fs::read_to_string(place.join(crate::metadata::CRIU_INVENTORY)).unwrap(), "earlier");
        assert!(!place.join("pages-1.img").exists() && !aside.exists());
        // Killed after CRIU had written everything: the new images stay.
        std::fs::create_dir_all(&aside).unwrap();
        std::fs::write(place.join(crate::metadata::CRIU_INVENTORY), "new").unwrap();
        assert!(settle(&roots, &place).unwrap());
        assert_eq!(std::fs::read_to_string(place.join(crate::metadata::CRIU_INVENTORY)).unwrap(), "new");
        assert!(!aside.exists());
        assert!(!settle(&roots, &place).unwrap(), "nothing left to settle");
    }

    #[test]
    fn nothing_to_discard_starts_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let roots = roots(dir.path());
        discard(&roots, &[dir.path().join("missing")]).unwrap();
        assert!(!roots.staging_dir().exists());
    }
}
