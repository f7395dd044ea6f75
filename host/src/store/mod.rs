//! ckpt's on-disk state: where everything lives, container and volume records, and their locks.
//!
//! ckpt keeps to its own roots (`/var/lib/ckpt`, `/run/ckpt` by default) and gives the OCI
//! runtime a state root of its own below the run root, so it never sees containers that podman
//! or containerd manage.

mod containers;
mod lock;
mod paths;
mod volumes;

pub use containers::{ContainerRecord, ContainerStore, MountKind, MountSpec, StateFlags};
pub use lock::{ContainerLock, StoreLock, is_locked, wait_unlocked};
pub use paths::{ContainerPaths, Roots};
pub use volumes::{VolumeRecord, VolumeStore};
