//! ckpt's on-disk state: where everything lives, container and volume records, and their locks.
//!
//! ckpt keeps to its own roots (`/var/lib/ckpt`, `/run/ckpt` by default) and gives the OCI
//! runtime a state root of its own below the run root, so it never sees containers that podman
//! or containerd manage.

pub mod audit;
pub mod catalog;
mod containers;
pub mod discard;
mod lock;
mod paths;
pub mod schedules;
mod volumes;

pub use containers::{
    CONTAINER_ROOT_MODE, ContainerNetwork, ContainerRecord, ContainerStatus, ContainerStore, MountKind, MountSpec,
    NetworkAttachment, NetworkMode, PublishedPort, StateFlags, is_full_id,
};
pub use lock::{ContainerLock, StoreLock, is_locked, wait_unlocked};
pub use paths::{ContainerPaths, Roots};
pub use volumes::{VolumeRecord, VolumeStore};

/// Makes ckpt's roots private: 0700 whatever the umask or an earlier version left, so that no
/// other user reaches checkpoint memory, decisions, set-id files a container made in its upper
/// layer, or device nodes of an unpacked image. A store from before this rule gets its checkpoint
/// data and decision logs made 0600 as well.
pub fn secure_roots(roots: &Roots) -> crate::base_error::BaseResult<()> {
    use std::os::unix::fs::PermissionsExt;
    let was_open = std::fs::symlink_metadata(&roots.root).is_ok_and(|m| m.permissions().mode() & 0o077 != 0);
    for dir in [&roots.root, &roots.runroot] {
        crate::safefs::ensure_private_dir(dir, 0o700).map_err(|e| {
            crate::base_error::BaseError::invalid(format!(
                "cannot make {:?} a private (0700) directory: {e}; give --root/--runroot a directory ckpt owns",
                dir.display().to_string()
            ))
        })?;
    }
    if was_open {
        make_files_private(&roots.images_dir().join("oci/blobs/sha256"));
        make_files_private(&roots.root);
        if let Ok(entries) = std::fs::read_dir(roots.containers_dir()) {
            for entry in entries.flatten() {
                let bundle = entry.path().join("userdata");
                for name in ["checkpoint", "pre-checkpoint"] {
                    make_files_private(&bundle.join(name));
                }
            }
        }
    }
    Ok(())
}

/// Removes group and other access from the regular files directly in `dir`.
fn make_files_private(dir: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        if let Ok(meta) = entry.path().symlink_metadata()
            && meta.is_file()
            && meta.permissions().mode() & 0o077 != 0
        {
            let _ = std::fs::set_permissions(
                entry.path(),
                std::fs::Permissions::from_mode(meta.permissions().mode() & 0o700),
            );
        }
    }
}

/// Removes everything ckpt holds for a container except its named volumes: the rootfs mount,
/// the network namespace, the record (first, so that a half-removed container is never listed),
/// and its directories.
pub fn teardown(roots: &Roots, paths: &ContainerPaths) -> crate::base_error::BaseResult<()> {
    crate::rootfs::unmount(&paths.merged())?;
    crate::netns::remove(&paths.netns())?;
    crate::util::remove_file_if_exists(&paths.record())?;
    // Page images are most of a checkpointed container's bytes: they go in the background.
    let images = [paths.checkpoint_dir(), paths.pre_checkpoint_dir()];
    let aside = images.iter().map(|dir| discard::aside_path(dir));
    discard::discard(roots, &images.iter().cloned().chain(aside).collect::<Vec<_>>())?;
    crate::util::remove_dir_all(&paths.dir)?;
    crate::util::remove_dir_all(&paths.run_dir)
}
