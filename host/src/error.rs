//! The error type every library operation returns, and its podman-compatible exit codes.

use std::io;
use std::path::PathBuf;

use crate::archive::ArchiveError;
pub use crate::base_error::BaseError;
use crate::criu::CriuError;
use crate::image::ImageError;
use crate::network::NetworkError;
use crate::policy::PolicyError;
use crate::registry::RegistryError;
use crate::runtime::RuntimeError;
use crate::seal::SealError;
use crate::signature::SignatureError;
use crate::ssh::SshError;
use crate::supervisor::SupervisorError;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Exit code for errors of ckpt itself, as podman uses it.
pub const EXIT_CKPT_ERROR: i32 = 125;
/// A command stopped by Ctrl-C or SIGTERM exits as a shell reports it: 128 + the signal.
const EXIT_SIGNAL_BASE: i32 = 128;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "ckpt needs root: '{command}' works on the store at {root:?} and runs containers through the OCI runtime and CRIU, which only root may do; run it as root"
    )]
    NeedsRoot { command: String, root: PathBuf },
    #[error("no such container or image {0:?}")]
    NoSuchContainerOrImage(String),
    #[error("the container name {0:?} is already in use; choose another with --name or remove that container first")]
    NameInUse(String),
    #[error("volume {name:?} is in use by container {container:?}; remove the container first or use --force")]
    VolumeInUse { name: String, container: String },
    #[error("image {name:?} is in use by container {container:?}; remove the container first or use --force")]
    ImageInUse { name: String, container: String },
    #[error("container {0:?} is running; stop it first or use --force")]
    ContainerRunning(String),
    #[error("container {name:?} is {state}, {action}")]
    ContainerState { name: String, state: String, action: String },
    #[error("{0}")]
    InvalidArgument(String),
    #[error("checkpoint/restore is not available: {0}")]
    Unsupported(String),
    #[error("{0}")]
    Policy(String),
    #[error(transparent)]
    Base(#[from] BaseError),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Podman(#[from] crate::podman::PodmanError),
    #[error(transparent)]
    Kubelet(#[from] crate::kubelet::KubeletError),
    #[error(transparent)]
    Criu(#[from] CriuError),
    #[error(transparent)]
    Ssh(#[from] SshError),
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Network(#[from] NetworkError),
    #[error(transparent)]
    PolicyEngine(#[from] PolicyError),
    #[error(transparent)]
    Supervisor(#[from] SupervisorError),
    #[error(transparent)]
    Seal(#[from] SealError),
    #[error(transparent)]
    Signature(#[from] SignatureError),
    /// A sealed checkpoint was asked for something it cannot do yet; nothing changed.
    #[error("sealed checkpoints do not cover {what} yet; nothing was checkpointed")]
    SealRefused { what: String },
    #[error(
        "the host config says every export is sealed ([exports] encrypt = \"always\") but names no recipient; add [exports] recipients, or give --encrypt-to; nothing was checkpointed"
    )]
    SealWithoutRecipient,
    /// A sealed checkpoint keeps its dump in memory, and there is not enough of it.
    #[error(
        "container {name:?} uses {needed_mib} MiB of memory and this host has {available_mib} MiB available: a sealed checkpoint keeps the dump in memory, never on disk, so it cannot be made now; free memory, or export without sealing"
    )]
    SealNeedsMemory { name: String, needed_mib: u64, available_mib: u64 },
    #[error(
        "a complete checkpoint for container {name:?} cannot be found, cannot restore: {} does not exist",
        missing.display()
    )]
    NotCheckpointed { name: String, missing: PathBuf },
    /// The export failed after the dump, and the container was brought back from its images.
    #[error(
        "checkpoint of container {name:?} was not exported, and the container was restored and keeps running: {cause}"
    )]
    RolledBack { name: String, cause: Box<Error> },
    /// A migration lost touch with its destination after sending the checkpoint: the container
    /// may run there, so it is not brought back here; its checkpoint is kept.
    #[error(
        "migration of container {name:?} to {destination} cannot be confirmed ({cause}); it was not restored here, so that it runs on one side at most: check {destination} ('ckpt ps'), and if it does not run there, 'ckpt restore {name}' here"
    )]
    HandoffUnconfirmed { name: String, destination: String, cause: Box<Error> },
    /// Post-copy: the container runs at the destination, but serving its memory from here
    /// broke off; a page it had not fetched yet is lost there.
    #[error(
        "post-copy migration of container {name:?} started it at the destination, but its memory stopped arriving ({cause}); it may fail there when it touches a page that did not arrive"
    )]
    PostCopyBroken { name: String, cause: Box<Error> },
    /// A migration that the destination never confirmed: the source is kept, running or
    /// checkpointed as the checkpoint left it.
    #[error(
        "migration of container {name:?} to {destination} did not happen: the destination never confirmed that it runs the checkpoint; the source was kept"
    )]
    MigrationNotConfirmed { name: String, destination: String },
    /// The destination runs the container, but removing the source failed: restoring it here
    /// too would run it twice.
    #[error(
        "container {name:?} runs at {destination} now, but removing it here failed ({cause}); do not restore it here: remove it with 'ckpt rm -f {name}'"
    )]
    SourceNotRemoved { name: String, destination: String, cause: Box<Error> },
    /// A checkpoint (an archive, an image, the far side of a migration) asks for something
    /// ckpt does not take from outside: refused before anything is restored.
    #[error("checkpoint {origin}{reason}")]
    CheckpointRefused { origin: String, reason: String },
    /// Restoring from a checkpoint image failed; podman words it so.
    #[error("unable to import checkpoint from image: {name:?}: {cause}")]
    ImageImport { name: String, cause: Box<Error> },
    #[error("the image {image:?} of checkpoint {origin} is not in the local store; load it first")]
    CheckpointImageMissing { image: String, origin: String },
    #[error("the registry gave image {image:?} with digest {got}, not the {wanted} that was asked for")]
    DigestMismatch { image: String, got: String, wanted: String },
    #[error("a container with ID {0:?} already exists; restore with --name to get a new ID")]
    IdInUse(String),
    /// podman's words for a restore that would overwrite a volume.
    #[error("volume with name {0} already exists. Use --ignore-volumes to not restore content of volumes")]
    RestoredVolumeExists(String),
    #[error("mount {destination:?} of container {name:?}: {} does not exist", host_path.display())]
    MountSourceMissing { name: String, destination: String, host_path: PathBuf },
    #[error("the OCI runtime spec of container {name:?} cannot be built: {detail}")]
    SpecUnbuildable { name: String, detail: String },
    #[error("container {name:?} has no pre-checkpoint at {}; run 'ckpt checkpoint --pre-checkpoint' first", dir.display())]
    NoPreCheckpoint { name: String, dir: PathBuf },
    /// podman's words for `--print-stats` without readable statistics.
    #[error("displaying checkpointing statistics not possible: {0}")]
    StatsUnreadable(#[source] CriuError),
    #[error("container {0:?} is gone: the runtime no longer knows it")]
    RuntimeForgot(String),
    /// Nothing changed here: the destination could not be reached or asked.
    #[error("cannot use {destination} as a migration destination: {cause}; nothing was changed")]
    DestinationUnusable { destination: String, cause: Box<Error> },
    #[error(
        "{destination} already has a container named {name:?}; remove it there or rename this one first; nothing was changed"
    )]
    NameTakenAtDestination { destination: String, name: String },
    #[error("catalog entry {0} was pinned meanwhile")]
    EntryPinned(String),
    /// A `ckpt daemon` holds the store's schedules.
    #[error("{0}")]
    DaemonRunning(String),
    /// The export failed, and so did bringing the container back; its images are kept.
    #[error(
        "checkpoint of container {name:?} was not exported ({cause}), and restoring it failed too ({restore}); its checkpoint stays in {} for 'ckpt restore'",
        images.display()
    )]
    RollbackFailed { name: String, cause: Box<Error>, restore: Box<Error>, images: PathBuf },
    /// Frozen for its dump, the container could not be thawed: after a dump that left it
    /// running, or (with `cause`) after one that failed.
    #[error(
        "container {name:?} stays frozen after its dump{}: thawing it failed ({thaw}); run 'ckpt unpause {name}'",
        cause.as_ref().map(|c| format!(" failed ({c})")).unwrap_or_default()
    )]
    StaysFrozen { name: String, cause: Option<Box<Error>>, thaw: Box<Error> },
}

impl Error {
    pub fn io(action: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Error {
        let base = BaseError::io(action, path);
        move |source| Error::Base(base(source))
    }

    pub fn invalid(message: impl Into<String>) -> Error {
        Error::InvalidArgument(message.into())
    }

    /// A policy said no (or failed, which counts as no), possibly after the dump was rolled back.
    pub fn is_denial(&self) -> bool {
        match self {
            Error::Policy(_)
            | Error::PolicyEngine(
                PolicyError::Denied { .. } | PolicyError::Failed { .. } | PolicyError::BadAnswer { .. },
            ) => true,
            Error::RolledBack { cause, .. } | Error::RollbackFailed { cause, .. } => cause.is_denial(),
            _ => false,
        }
    }

    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Base(BaseError::Interrupted(signal)) => match signal.as_str() {
                "SIGINT" => EXIT_SIGNAL_BASE + libc::SIGINT,
                "SIGTERM" => EXIT_SIGNAL_BASE + libc::SIGTERM,
                _ => EXIT_CKPT_ERROR,
            },
            Error::RolledBack { cause, .. } | Error::RollbackFailed { cause, .. } => cause.exit_code(),
            Error::StaysFrozen { cause: Some(cause), .. } => cause.exit_code(),
            _ => EXIT_CKPT_ERROR,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_podman_and_the_shell() {
        assert_eq!(Error::invalid("x").exit_code(), 125);
        let interrupted = |signal: &str| Error::Base(BaseError::Interrupted(signal.into()));
        assert_eq!(interrupted("SIGINT").exit_code(), 130);
        let rolled = Error::RolledBack { name: "c".into(), cause: Box::new(interrupted("SIGTERM")) };
        assert_eq!(rolled.exit_code(), 143);
        assert!(rolled.to_string().contains("restored and keeps running: interrupted by SIGTERM"));
    }
}
