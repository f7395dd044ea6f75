//! The error type every library operation returns, and its podman-compatible exit codes.

use std::io;
use std::path::PathBuf;

use crate::archive::ArchiveError;
use crate::criu::CriuError;
use crate::image::ImageError;
use crate::policy::PolicyError;
use crate::runtime::RuntimeError;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Exit code for errors of ckpt itself, as podman uses it.
pub const EXIT_CKPT_ERROR: i32 = 125;
/// Exit code when the command inside the container cannot be invoked.
pub const EXIT_CANNOT_INVOKE: i32 = 126;
/// Exit code when the command inside the container is not found.
pub const EXIT_NOT_FOUND: i32 = 127;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no such container {0:?}")]
    NoSuchContainer(String),
    #[error("no such image {0:?}")]
    NoSuchImage(String),
    #[error("no such volume {0:?}")]
    NoSuchVolume(String),
    #[error("no such container or image {0:?}")]
    NoSuchContainerOrImage(String),
    #[error("the container name {0:?} is already in use; choose another with --name or remove that container first")]
    NameInUse(String),
    #[error("volume {0:?} already exists")]
    VolumeExists(String),
    #[error("volume {name:?} is in use by container {container:?}; remove the container first or use --force")]
    VolumeInUse { name: String, container: String },
    #[error("image {name:?} is in use by container {container:?}; remove the container first or use --force")]
    ImageInUse { name: String, container: String },
    #[error("container {0:?} is running; stop it first or use --force")]
    ContainerRunning(String),
    #[error("container {name:?} is {state}, {action}")]
    ContainerState { name: String, state: String, action: String },
    #[error("container {0:?} is busy: another ckpt operation holds its lock; try again when it has finished")]
    ContainerBusy(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("checkpoint/restore is not available: {0}")]
    Unsupported(String),
    #[error("{0}")]
    Policy(String),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error(transparent)]
    Criu(#[from] CriuError),
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    PolicyEngine(#[from] PolicyError),
    #[error("{action} {path:?}: {source}")]
    Io { action: &'static str, path: PathBuf, source: io::Error },
    #[error("{what} {path:?} is corrupt: {detail}")]
    Corrupt { what: &'static str, path: PathBuf, detail: String },
    #[error("supervisor of container {id:?} failed: {detail}")]
    Supervisor { id: String, detail: String },
    #[error("interrupted by {0}")]
    Interrupted(String),
    /// Several containers failed; each message was already printed.
    #[error("{0}")]
    Many(String),
}

impl Error {
    pub fn io(action: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { action, path, source }
    }

    pub fn invalid(message: impl Into<String>) -> Error {
        Error::InvalidArgument(message.into())
    }

    pub fn exit_code(&self) -> i32 {
        EXIT_CKPT_ERROR
    }
}
