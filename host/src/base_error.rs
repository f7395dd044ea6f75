//! The error the foundations (store, rootfs, netns, spec, util, safefs, config, interrupt)
//! return: what can go wrong below the operations, in words that name no system above them.
//! The aggregate `error::Error` wraps it whole.

use std::io;
use std::path::PathBuf;

pub type BaseResult<T, E = BaseError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum BaseError {
    #[error("no such container {0:?}")]
    NoSuchContainer(String),
    #[error("no such volume {0:?}")]
    NoSuchVolume(String),
    #[error("volume {0:?} already exists")]
    VolumeExists(String),
    #[error("container {0:?} is busy: another ckpt operation holds its lock; try again when it has finished")]
    ContainerBusy(String),
    #[error("{action} {path:?}: {source}")]
    Io { action: &'static str, path: PathBuf, source: io::Error },
    #[error("{what} {path:?} is corrupt: {detail}")]
    Corrupt { what: &'static str, path: PathBuf, detail: String },
    #[error("interrupted by {0}")]
    Interrupted(String),
    /// Something the user named or asked for that the store cannot give: an unknown or
    /// ambiguous entry, a name that does not fit, a place with too little room.
    #[error("{0}")]
    Invalid(String),
}

impl BaseError {
    pub fn io(action: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> BaseError {
        let path = path.into();
        move |source| BaseError::Io { action, path, source }
    }

    pub fn invalid(message: impl Into<String>) -> BaseError {
        BaseError::Invalid(message.into())
    }
}
