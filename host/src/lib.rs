//! ckpt: checkpoint and restore Linux containers on an OCI runtime with CRIU.
//!
//! The library is organised as the path a checkpoint takes:
//! - `ops/`: one module per user-facing operation; orchestration only.
//! - `store/`: on-disk state (containers, images, volumes) and its locks.
//! - `runtime/`, `criu/`, `network/`: the external binaries (runc, CRIU, netavark), each
//!   behind a trait.
//! - `archive/`, `image/`, `rootfs/`: formats and filesystems ckpt builds itself; `seal`:
//!   age encryption of archives.
//! - `safefs`: the one way to write beneath a directory from untrusted input.
//! - `supervisor/`: the conmon-like process that holds a container's stdio.

pub(crate) mod archive;
pub mod base_error;
pub mod cli;
pub(crate) mod config;
pub(crate) mod criu;
pub mod error;
pub(crate) mod hostinfo;
pub(crate) mod image;
pub(crate) mod interrupt;
pub(crate) mod kubelet;
pub(crate) mod kubernetes;
#[cfg(test)]
mod layering;
pub(crate) mod metadata;
pub(crate) mod netns;
pub(crate) mod network;
pub(crate) mod ops;
pub(crate) mod podman;
pub(crate) mod policy;
pub(crate) mod progress;
pub(crate) mod registry;
pub(crate) mod rootfs;
pub(crate) mod runtime;
pub(crate) mod safefs;
pub(crate) mod seal;
pub(crate) mod signature;
pub(crate) mod spec;
pub(crate) mod ssh;
pub(crate) mod store;
pub(crate) mod supervisor;
pub mod util;

pub use error::{Error, Result};
