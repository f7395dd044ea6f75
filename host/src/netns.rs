//! Each container's network namespace, made by ckpt (as podman does) rather than by the runtime.
//!
//! runc skips dumping a network namespace that holds only loopback and, on restore, gives the
//! container a fresh one whose loopback is still down, so CRIU cannot reconnect established TCP
//! sockets. A namespace that ckpt creates with loopback up, pinned by a bind mount and named in
//! the spec by path, is treated as external by runc and CRIU and restores cleanly.

use std::fs::File;
use std::path::Path;

use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;

use crate::base_error::{BaseError as Error, BaseResult as Result};

/// Creates a network namespace with loopback up and pins it at `path`.
pub fn create(path: &Path) -> Result<()> {
    if let Some(dir) = path.parent() {
        crate::util::create_dir_all(dir)?;
    }
    if crate::rootfs::is_mountpoint(path) {
        return Ok(());
    }
    File::create(path).map_err(Error::io("create", path))?;
    let target = path.to_path_buf();
    // A thread of its own: unshare changes only the calling thread's network namespace.
    let made = std::thread::spawn(move || -> std::io::Result<()> {
        nix::sched::unshare(CloneFlags::CLONE_NEWNET)?;
        nix::mount::mount(Some("/proc/thread-self/ns/net"), &target, None::<&str>, MsFlags::MS_BIND, None::<&str>)?;
        loopback_up()
    })
    .join()
    .map_err(|_| Error::io("create network namespace at", path)(std::io::Error::other("thread panicked")))?;
    made.map_err(|e| {
        let _ = remove(path);
        Error::io("create network namespace at", path)(e)
    })
}

fn loopback_up() -> std::io::Result<()> {
    // SAFETY: plain socket and ioctl calls on a zeroed ifreq that outlives them.
    unsafe {
        let sock = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if sock < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut req: libc::ifreq = std::mem::zeroed();
        for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
            *dst = *src as libc::c_char;
        }
        let mut result = libc::ioctl(sock, libc::SIOCGIFFLAGS, &mut req);
        if result == 0 {
            req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            result = libc::ioctl(sock, libc::SIOCSIFFLAGS, &mut req);
        }
        let err = std::io::Error::last_os_error();
        libc::close(sock);
        if result < 0 { Err(err) } else { Ok(()) }
    }
}

/// Releases the namespace pinned at `path`; a missing one is not an error.
pub fn remove(path: &Path) -> Result<()> {
    if crate::rootfs::is_mountpoint(path) {
        nix::mount::umount2(path, MntFlags::MNT_DETACH)
            .map_err(|e| Error::io("unmount network namespace", path)(e.into()))?;
    }
    crate::util::remove_file_if_exists(path)
}
