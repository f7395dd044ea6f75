//! The one way ckpt writes beneath a directory on behalf of untrusted input (archive members,
//! image layers, `deleted.files`): the directory is opened once, every path is resolved beneath
//! that descriptor with no symlink followed anywhere (`openat2` with `RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS`, or `O_NOFOLLOW` one component at a time), and modes, owners and times
//! are set through descriptors, never through a path a later member could have turned into a link.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{FileStat, Mode, SFlag};
use nix::unistd::UnlinkatFlags;

fn errno(e: Errno) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

/// `a/./b/` → `a/b`; `None` for absolute paths and any `..`.
pub fn clean_relative(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// What is at a path, looked at without following it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File,
    Symlink,
    Other,
}

impl Kind {
    pub fn of(stat: &FileStat) -> Kind {
        match SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT {
            SFlag::S_IFDIR => Kind::Dir,
            SFlag::S_IFREG => Kind::File,
            SFlag::S_IFLNK => Kind::Symlink,
            _ => Kind::Other,
        }
    }
}

/// Why a path could not be resolved beneath the root.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("a parent directory is a symlink or not a directory")]
    ParentNotDir,
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// A directory opened once; everything below it is reached through its descriptor.
#[derive(Debug)]
pub struct Beneath {
    root: OwnedFd,
    path: PathBuf,
}

/// An opened directory and the name of one entry in it.
pub struct Entry<'a> {
    pub dir: OwnedFd,
    pub name: &'a OsStr,
}

impl Beneath {
    /// Opens `path`, which must be a directory and not a symlink.
    pub fn open(path: &Path) -> io::Result<Beneath> {
        let root = nix::fcntl::open(path, OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC, Mode::empty())
            .map_err(errno)?;
        Ok(Beneath { root, path: path.to_path_buf() })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.root.as_fd()
    }

    /// `path` as the kernel resolves it with this directory as `/` (symlinks included, none
    /// leading out), as runc's securejoin does for a mount's destination: the path beneath it,
    /// absolute. A path that is not there is returned as given.
    pub fn resolve_in_root(&self, path: &Path) -> io::Result<PathBuf> {
        let rel = path.strip_prefix("/").unwrap_or(path);
        let rel = if rel.as_os_str().is_empty() { Path::new(".") } else { rel };
        let how = OpenHow::new()
            .flags(OFlag::O_PATH | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
        let fd = match nix::fcntl::openat2(self.root.as_fd(), rel, how) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => return Ok(path.to_path_buf()),
            Err(e) => return Err(errno(e)),
        };
        let fd_path = |fd: BorrowedFd<'_>| std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()));
        let (found, root) = (fd_path(fd.as_fd())?, fd_path(self.root.as_fd())?);
        match found.strip_prefix(&root) {
            Ok(beneath) => Ok(Path::new("/").join(beneath)),
            Err(_) => Err(io::Error::other(format!("{} resolved outside {}", path.display(), root.display()))),
        }
    }

    /// Opens `rel` (already clean) with `flags`, following no symlink in any component.
    pub fn open_at(&self, rel: &Path, flags: OFlag) -> io::Result<OwnedFd> {
        open_beneath(self.root.as_fd(), rel, flags)
    }

    /// Opens the regular file `rel` for reading; a symlink or anything else is an error.
    pub fn open_file(&self, rel: &Path) -> io::Result<File> {
        let fd = self.open_at(rel, OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)?;
        let stat = nix::sys::stat::fstat(&fd).map_err(errno)?;
        if Kind::of(&stat) != Kind::File {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a regular file"));
        }
        let file = File::from(fd);
        // O_NONBLOCK only kept a FIFO from blocking the open; a regular file does not need it.
        nix::fcntl::fcntl(&file, nix::fcntl::FcntlArg::F_SETFL(OFlag::empty())).map_err(errno)?;
        Ok(file)
    }

    /// What is at `rel`, without following it; `None` when nothing is there or a parent is
    /// missing.
    pub fn kind(&self, rel: &Path) -> Result<Option<Kind>, ResolveError> {
        let Some(entry) = self.parent(rel, false)? else { return Ok(None) };
        stat_at(entry.dir.as_fd(), entry.name).map(|s| s.map(|s| Kind::of(&s))).map_err(ResolveError::Io)
    }

    /// The parent directory of `rel`, opened, and the last component. With `create`, missing
    /// parents are made (mode 0755); without it, a missing parent gives `None`.
    pub fn parent<'a>(&self, rel: &'a Path, create: bool) -> Result<Option<Entry<'a>>, ResolveError> {
        let name = rel.file_name().ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "empty path"))?;
        let parent = rel.parent().unwrap_or(Path::new(""));
        let dir_flags = OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_RDONLY;
        if parent.as_os_str().is_empty() {
            let dir = self.root.try_clone()?;
            return Ok(Some(Entry { dir, name }));
        }
        // The common case, every parent exists: one system call.
        match open_beneath(self.root.as_fd(), parent, dir_flags) {
            Ok(dir) => return Ok(Some(Entry { dir, name })),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) if is_not_dir(&e) => return Err(ResolveError::ParentNotDir),
            Err(e) => return Err(e.into()),
        }
        let mut dir = self.root.try_clone()?;
        for part in parent.components() {
            let Component::Normal(part) = part else {
                return Err(io::Error::new(io::ErrorKind::InvalidInput, "path is not clean").into());
            };
            dir = match nix::fcntl::openat(&dir, part, dir_flags, Mode::empty()) {
                Ok(next) => next,
                Err(Errno::ENOENT) if create => {
                    match nix::sys::stat::mkdirat(&dir, part, Mode::from_bits_truncate(0o755)) {
                        Ok(()) | Err(Errno::EEXIST) => {}
                        Err(e) => return Err(errno(e).into()),
                    }
                    let next = nix::fcntl::openat(&dir, part, dir_flags, Mode::empty()).map_err(errno)?;
                    // Not the umask's choice: a parent the archive did not list is 0755, as tar makes it.
                    nix::sys::stat::fchmod(&next, Mode::from_bits_truncate(0o755)).map_err(errno)?;
                    next
                }
                Err(Errno::ENOENT) => return Ok(None),
                Err(Errno::ELOOP | Errno::ENOTDIR) => return Err(ResolveError::ParentNotDir),
                Err(e) => return Err(errno(e).into()),
            };
        }
        Ok(Some(Entry { dir, name }))
    }

    /// Removes whatever is at `rel` (a directory with its content), following no symlink. A
    /// path that is not there is not an error.
    pub fn remove(&self, rel: &Path) -> Result<(), ResolveError> {
        match self.parent(rel, false)? {
            Some(entry) => remove_entry(entry.dir.as_fd(), entry.name).map_err(ResolveError::Io),
            None => Ok(()),
        }
    }
}

/// Whether opening a path failed because a component is a symlink, not a directory, or on
/// another mount: what [`open_beneath`] refuses to pass.
pub fn is_not_dir(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ELOOP | libc::ENOTDIR | libc::EXDEV))
}

/// `openat2` beneath `dir` with no symlink resolution at all.
pub fn open_beneath(dir: BorrowedFd<'_>, rel: &Path, flags: OFlag) -> io::Result<OwnedFd> {
    let how = OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    let rel = if rel.as_os_str().is_empty() { Path::new(".") } else { rel };
    nix::fcntl::openat2(dir, rel, how).map_err(errno)
}

/// `fstatat` without following the last component; `None` when it is not there.
pub fn stat_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<Option<FileStat>> {
    match nix::sys::stat::fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(stat) => Ok(Some(stat)),
        Err(Errno::ENOENT) => Ok(None),
        Err(e) => Err(errno(e)),
    }
}

/// Removes `name` in `dir`; a directory is emptied through descriptors first.
pub fn remove_entry(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    match stat_at(dir, name)? {
        None => Ok(()),
        Some(stat) if Kind::of(&stat) == Kind::Dir => {
            let child = nix::fcntl::openat(
                dir,
                name,
                OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_RDONLY,
                Mode::empty(),
            )
            .map_err(errno)?;
            clear_dir(child.as_fd(), |_| false)?;
            nix::unistd::unlinkat(dir, name, UnlinkatFlags::RemoveDir).map_err(errno)
        }
        Some(_) => nix::unistd::unlinkat(dir, name, UnlinkatFlags::NoRemoveDir).map_err(errno),
    }
}

/// Removes every entry of `dir` except those `keep` names.
pub fn clear_dir(dir: BorrowedFd<'_>, keep: impl Fn(&OsStr) -> bool) -> io::Result<()> {
    for name in list_dir(dir)? {
        if !keep(&name) {
            remove_entry(dir, &name)?;
        }
    }
    Ok(())
}

/// The names in `dir`, without `.` and `..`.
pub fn list_dir(dir: BorrowedFd<'_>) -> io::Result<Vec<OsString>> {
    let fd = nix::fcntl::openat(dir, ".", OFlag::O_DIRECTORY | OFlag::O_CLOEXEC | OFlag::O_RDONLY, Mode::empty())
        .map_err(errno)?;
    let mut listing = nix::dir::Dir::from_fd(fd).map_err(errno)?;
    let mut names = Vec::new();
    for entry in listing.iter() {
        let entry = entry.map_err(errno)?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            names.push(OsStr::from_bytes(name).to_os_string());
        }
    }
    Ok(names)
}

/// Sets the mode of whatever `fd` is; `O_PATH` descriptors (device nodes, FIFOs) go through
/// `/proc/self/fd`, which names the opened inode and cannot be redirected.
pub fn chmod_fd(fd: BorrowedFd<'_>, mode: u32) -> io::Result<()> {
    match nix::sys::stat::fchmod(fd, Mode::from_bits_truncate(mode)) {
        Err(Errno::EBADF) => nix::sys::stat::fchmodat(
            nix::fcntl::AT_FDCWD,
            format!("/proc/self/fd/{}", fd.as_raw_fd()).as_str(),
            Mode::from_bits_truncate(mode),
            nix::sys::stat::FchmodatFlags::FollowSymlink,
        )
        .map_err(errno),
        other => other.map_err(errno),
    }
}

/// Makes `path` a directory with exactly `mode`, whatever the umask and whatever was there: a
/// symlink in its place is refused, never followed.
pub fn ensure_private_dir(path: &Path, mode: u32) -> io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_symlink() => {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "is a symlink; ckpt never follows one here"));
        }
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => std::fs::create_dir_all(path)?,
        Err(e) => return Err(e),
    }
    let fd = nix::fcntl::open(path, OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC, Mode::empty())
        .map_err(errno)?;
    let stat = nix::sys::stat::fstat(&fd).map_err(errno)?;
    if stat.st_mode & 0o7777 != mode {
        nix::sys::stat::fchmod(&fd, Mode::from_bits_truncate(mode)).map_err(errno)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_relative_refuses_escapes() {
        assert_eq!(clean_relative(Path::new("./a/./b/")), Some(PathBuf::from("a/b")));
        assert_eq!(clean_relative(Path::new("a/../b")), None);
        assert_eq!(clean_relative(Path::new("/etc")), None);
    }

    #[test]
    fn nothing_resolves_through_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("real")).unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("link")).unwrap();
        std::fs::write(outside.path().join("secret"), b"x").unwrap();
        let beneath = Beneath::open(dir.path()).unwrap();
        assert!(matches!(beneath.parent(Path::new("link/new"), true), Err(ResolveError::ParentNotDir)));
        assert!(beneath.open_file(Path::new("link/secret")).is_err());
        assert_eq!(beneath.kind(Path::new("link")).unwrap(), Some(Kind::Symlink));
        beneath.remove(Path::new("link")).unwrap();
        assert!(outside.path().join("secret").exists(), "removing a link leaves its target alone");
        assert!(beneath.parent(Path::new("real/a/b/c"), true).unwrap().is_some());
        assert!(dir.path().join("real/a/b").is_dir());
        beneath.remove(Path::new("real")).unwrap();
        assert!(!dir.path().join("real").exists());
    }

    #[test]
    fn private_dirs_get_their_mode_whatever_was_there() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store");
        std::fs::create_dir(&path).unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
        ensure_private_dir(&path, 0o700).unwrap();
        let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&path).unwrap().permissions());
        assert_eq!(mode & 0o7777, 0o700);
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        assert!(ensure_private_dir(&link, 0o700).is_err());
    }
}
