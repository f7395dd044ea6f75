//! ckpt: checkpoint and restore Linux containers on an OCI runtime with CRIU.
//!
//! The library is organised as the path a checkpoint takes:
//! - `ops/`: one module per user-facing operation; orchestration only.
//! - `store/`: on-disk state (containers, images, volumes) and its locks.
//! - `runtime/`, `criu/`: the external binaries, each behind a trait.
//! - `archive/`, `image/`, `rootfs/`: formats and filesystems ckpt builds itself.
//! - `safefs`: the one way to write beneath a directory from untrusted input.
//! - `supervisor/`: the conmon-like process that holds a container's stdio.

pub mod archive;
pub mod cli;
pub mod config;
pub mod criu;
pub mod error;
pub mod hostinfo;
pub mod image;
pub mod interrupt;
#[cfg(test)]
mod layering;
pub mod netns;
pub mod ops;
pub mod policy;
pub mod rootfs;
pub mod runtime;
pub mod safefs;
pub mod spec;
pub mod store;
pub mod supervisor;
pub mod util;

pub use error::{Error, Result};
