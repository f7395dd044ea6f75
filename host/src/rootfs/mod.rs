//! The container's root filesystem: an overlay of the image (lower) and the container's own
//! upper layer, and the list of changes in that upper layer, as `podman diff` shows it.

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};

use crate::base_error::{BaseError as Error, BaseResult as Result};
use crate::util::create_dir_all;

pub mod memory;

/// Paths the runtime or ckpt itself manages, left out of diffs and archives as podman does.
const MANAGED_PATHS: &[&str] =
    &["/dev", "/etc/hostname", "/etc/hosts", "/etc/resolv.conf", "/proc", "/run", "/sys", "/etc/mtab"];

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ChangeKind {
    Added,
    Changed,
    Deleted,
}

impl ChangeKind {
    pub fn letter(self) -> char {
        match self {
            ChangeKind::Added => 'A',
            ChangeKind::Changed => 'C',
            ChangeKind::Deleted => 'D',
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub kind: ChangeKind,
    /// Absolute inside the container, for example `/etc/motd`.
    pub path: String,
}

pub struct Overlay<'a> {
    pub lower: &'a Path,
    pub upper: &'a Path,
    pub work: &'a Path,
    pub merged: &'a Path,
}

impl Overlay<'_> {
    pub fn mount(&self) -> Result<()> {
        for dir in [self.upper, self.work, self.merged] {
            create_dir_all(dir)?;
        }
        if is_mountpoint(self.merged) {
            return Ok(());
        }
        let options = format!(
            "lowerdir={},upperdir={},workdir={}",
            self.lower.display(),
            self.upper.display(),
            self.work.display()
        );
        nix::mount::mount(Some("overlay"), self.merged, Some("overlay"), MsFlags::empty(), Some(options.as_str()))
            .map_err(|e| Error::io("mount overlay on", self.merged)(e.into()))
    }
}

/// The processes whose root directory is `merged`: a container's, whether or not its runtime
/// still knows about it.
pub fn processes_in(merged: &Path) -> Vec<nix::unistd::Pid> {
    // A container's root is another mount namespace's view of the same overlay: the same
    // device and inode, though its path reads as `/` from here.
    let Ok(root) = fs::metadata(merged) else { return Vec::new() };
    if !is_mountpoint(merged) {
        return Vec::new();
    }
    let Ok(entries) = fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()))
        .filter(|pid| {
            fs::metadata(format!("/proc/{pid}/root/")).is_ok_and(|m| m.dev() == root.dev() && m.ino() == root.ino())
        })
        .map(nix::unistd::Pid::from_raw)
        .collect()
}

/// Kills every process still running in the container's rootfs, so that removing the
/// container never leaves one writing into an unlinked upper layer. Returns those that survive.
pub fn kill_processes_in(merged: &Path) -> Vec<nix::unistd::Pid> {
    for _ in 0..50 {
        let pids = processes_in(merged);
        if pids.is_empty() {
            return pids;
        }
        for pid in pids {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    processes_in(merged)
}

pub fn unmount(merged: &Path) -> Result<()> {
    if !is_mountpoint(merged) {
        return Ok(());
    }
    nix::mount::umount2(merged, MntFlags::MNT_DETACH).map_err(|e| Error::io("unmount", merged)(e.into()))
}

pub fn is_mountpoint(path: &Path) -> bool {
    let Ok(mountinfo) = fs::read_to_string("/proc/self/mountinfo") else { return false };
    let wanted = path.to_string_lossy();
    mountinfo.lines().any(|line| line.split(' ').nth(4).is_some_and(|mp| unescape_mountinfo(mp) == wanted))
}

/// A mountinfo path field as the path it names (the kernel escapes space, tab, newline and `\\`).
pub fn unescape_mountinfo(field: &str) -> String {
    field.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")
}

fn is_whiteout(meta: &fs::Metadata) -> bool {
    meta.file_type().is_char_device() && meta.rdev() == 0
}

fn is_opaque(dir: &Path) -> bool {
    let Ok(c_path) = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()) else { return false };
    let mut value = [0u8; 4];
    // SAFETY: both pointers are valid for the given lengths for the duration of the call.
    let n = unsafe {
        libc::lgetxattr(c_path.as_ptr(), c"trusted.overlay.opaque".as_ptr(), value.as_mut_ptr().cast(), value.len())
    };
    n == 1 && value[0] == b'y'
}

fn is_managed(path: &str) -> bool {
    MANAGED_PATHS.iter().any(|m| path == *m || path.strip_prefix(m).is_some_and(|rest| rest.starts_with('/')))
}

/// Lists what the upper layer adds, changes and deletes relative to the image, sorted by path.
pub fn changes(lower: &Path, upper: &Path) -> Result<Vec<Change>> {
    let mut out = Vec::new();
    walk_upper(lower, upper, Path::new("/"), false, &mut out)?;
    out.retain(|c| !is_managed(&c.path));
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

fn walk_upper(lower: &Path, upper: &Path, rel: &Path, parent_added: bool, out: &mut Vec<Change>) -> Result<()> {
    let dir = join_rel(upper, rel);
    let mut entries: Vec<_> = fs::read_dir(&dir)
        .map_err(Error::io("read directory", &dir))?
        .collect::<std::io::Result<_>>()
        .map_err(Error::io("read directory", &dir))?;
    entries.sort_by_key(|e| e.file_name());
    let mut present = std::collections::BTreeSet::new();
    for entry in entries {
        let child_rel = rel.join(entry.file_name());
        present.insert(entry.file_name());
        let meta = entry.metadata().map_err(Error::io("stat", entry.path()))?;
        let path = child_rel.to_string_lossy().into_owned();
        if is_whiteout(&meta) {
            out.push(Change { kind: ChangeKind::Deleted, path });
            continue;
        }
        let in_lower = !parent_added && fs::symlink_metadata(join_rel(lower, &child_rel)).is_ok();
        let kind = if in_lower { ChangeKind::Changed } else { ChangeKind::Added };
        out.push(Change { kind, path });
        if meta.is_dir() {
            walk_upper(lower, upper, &child_rel, !in_lower, out)?;
        }
    }
    // An opaque directory hides everything of the lower layer that the upper does not have.
    if !parent_added
        && rel != Path::new("/")
        && is_opaque(&dir)
        && let Ok(lower_entries) = fs::read_dir(join_rel(lower, rel))
    {
        for entry in lower_entries.flatten() {
            if !present.contains(&entry.file_name()) {
                let path = rel.join(entry.file_name()).to_string_lossy().into_owned();
                out.push(Change { kind: ChangeKind::Deleted, path });
            }
        }
    }
    Ok(())
}

pub fn join_rel(base: &Path, rel: &Path) -> PathBuf {
    base.join(rel.strip_prefix("/").unwrap_or(rel))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(changes: &[Change]) -> Vec<(char, &str)> {
        changes.iter().map(|c| (c.kind.letter(), c.path.as_str())).collect()
    }

    #[test]
    fn the_upper_layer_reads_as_added_and_changed_against_the_image() {
        let dir = tempfile::tempdir().unwrap();
        let (lower, upper) = (dir.path().join("lower"), dir.path().join("upper"));
        fs::create_dir_all(lower.join("etc")).unwrap();
        fs::write(lower.join("etc/motd"), "old").unwrap();
        fs::create_dir_all(upper.join("etc")).unwrap();
        fs::write(upper.join("etc/motd"), "new").unwrap();
        fs::create_dir_all(upper.join("data/sub")).unwrap();
        fs::write(upper.join("data/sub/f"), "x").unwrap();
        fs::write(upper.join("etc/hostname"), "managed").unwrap();
        let changes = changes(&lower, &upper).unwrap();
        assert_eq!(
            kinds(&changes),
            vec![('A', "/data"), ('A', "/data/sub"), ('A', "/data/sub/f"), ('C', "/etc"), ('C', "/etc/motd")],
            "files the runtime manages (/etc/hostname) are left out"
        );
    }

    #[test]
    fn whiteouts_read_as_deleted() {
        if !nix::unistd::geteuid().is_root() {
            return; // a whiteout is a 0:0 character device, which only root can make
        }
        let dir = tempfile::tempdir().unwrap();
        let (lower, upper) = (dir.path().join("lower"), dir.path().join("upper"));
        fs::create_dir_all(lower.join("bin")).unwrap();
        fs::write(lower.join("bin/gone"), "x").unwrap();
        fs::create_dir_all(upper.join("bin")).unwrap();
        nix::sys::stat::mknod(
            &upper.join("bin/gone"),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::from_bits_truncate(0o600),
            0,
        )
        .unwrap();
        assert_eq!(kinds(&changes(&lower, &upper).unwrap()), vec![('C', "/bin"), ('D', "/bin/gone")]);
    }

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape_mountinfo("/var/lib/a\\040b\\011c"), "/var/lib/a b\tc");
        assert!(is_mountpoint(Path::new("/")) || !Path::new("/proc/self/mountinfo").exists());
    }
}
