//! The OCI runtime (runc, crun) behind a trait, so that orchestration can be tested with a
//! recording fake while integration tests drive the real binary.

mod cli;
#[cfg(test)]
pub(crate) mod fake;
mod freezer;
mod runc_state;

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

pub use cli::CliRuntime;

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("OCI runtime {name:?} not found: {detail}; install it or choose another with --runtime")]
    NotFound { name: String, detail: String },
    #[error("{runtime} {action} of container {id:?} failed ({status}): {stderr}")]
    Failed { runtime: String, action: &'static str, id: String, status: String, stderr: String },
    /// The runtime does not know the container, or its process has already exited.
    #[error("{runtime} {action}: container {id:?} is not running or does not exist: {stderr}")]
    Gone { runtime: String, action: &'static str, id: String, stderr: String },
    #[error("could not run {runtime} {action}: {source}")]
    Spawn { runtime: String, action: &'static str, source: std::io::Error },
    #[error("could not {action} container {id:?} through its cgroup freezer: {source}")]
    Freezer { action: &'static str, id: String, source: std::io::Error },
    #[error("{runtime} state of container {id:?} is not valid JSON: {detail}")]
    BadState { runtime: String, id: String, detail: String },
}

/// What `runtime state` says about a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeState {
    pub status: String,
    pub pid: i32,
}

impl RuntimeState {
    pub fn is_running(&self) -> bool {
        self.status == "running" || self.is_paused()
    }

    pub fn is_paused(&self) -> bool {
        self.status == "paused"
    }
}

/// The container's standard streams, handed to the runtime so that the container inherits them.
pub struct ContainerStdio {
    pub stdin: OwnedFd,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckpointOptions {
    pub image_path: PathBuf,
    pub work_path: PathBuf,
    pub leave_running: bool,
    pub tcp_established: bool,
    pub file_locks: bool,
    pub pre_dump: bool,
    /// Relative to `image_path`, as CRIU wants it.
    pub parent_path: Option<PathBuf>,
    /// CRIU locks the container's network with nftables rather than with iptables' processes
    /// (see `Criu::nftables_lock`). The restore locks the same way: CRIU keeps the method in
    /// the images' inventory.
    pub nftables_lock: bool,
    /// CRIU can leave the network namespace's conntrack entries out (`--skip-nf-ct`), and does
    /// for a dump that keeps no TCP connection (no `tcp_established`), whose entries they are for.
    pub skip_conntrack: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RestoreOptions {
    pub image_path: PathBuf,
    pub work_path: PathBuf,
    pub tcp_established: bool,
    pub file_locks: bool,
    /// Post-copy: memory comes from CRIU's lazy-pages daemon, already serving in `work_path`.
    pub lazy_pages: bool,
    /// CRIU's `--auto-dedup`: each run of page images is punched out of its file once it is in
    /// the process. The page cache it held is freed as the process's memory grows, so a restore
    /// needs about the memory of the container, not twice that. Only for images that are a
    /// scratch copy: a failed restore leaves them unusable.
    pub consume_page_images: bool,
    /// A CRIU configuration file for this restore (the hold of `criu::hold`), given to CRIU
    /// through the runtime's `org.criu.config` annotation.
    pub criu_config: Option<PathBuf>,
}

/// A post-copy dump under way: CRIU has written every image but the memory, and serves each
/// page from here the first time the restored container touches it.
pub trait LazyDump: Send {
    /// Waits until the page server listens and the images are complete; an error (with CRIU's
    /// log) if the dump failed, in which case the container keeps running here.
    fn ready(&mut self) -> Result<(), RuntimeError>;
    /// Waits until every page has been fetched and the dump has ended.
    fn finish(self: Box<Self>) -> Result<(), RuntimeError>;
    /// Stops serving before anyone restored from it: CRIU goes, and the container's processes,
    /// which it held frozen, carry on here.
    fn abort(self: Box<Self>);
}

/// How `exec` attaches the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecMode {
    /// ckpt's stdio, without a terminal.
    Attached,
    /// ckpt's stdio as the process's controlling terminal (`-t`).
    Terminal,
    /// No stdio; ckpt returns once the process runs (`-d`).
    Detached,
}

/// [`OciRuntime::states`] as one `state` per container.
pub fn states_one_by_one<R: OciRuntime + ?Sized>(
    runtime: &R,
    ids: &[&str],
) -> Result<HashMap<String, RuntimeState>, RuntimeError> {
    let mut states = HashMap::new();
    for id in ids {
        if let Some(state) = runtime.state(id)? {
            states.insert(id.to_string(), state);
        }
    }
    Ok(states)
}

pub trait OciRuntime: Send + Sync {
    /// The short name (`runc`, `crun`), used for the state root and in archives.
    fn name(&self) -> &str;
    fn path(&self) -> &Path;
    /// The full `--version` output.
    fn version(&self) -> Result<String, RuntimeError>;
    /// Whether `<runtime> checkpoint --help` succeeds, podman's probe.
    fn supports_checkpoint(&self) -> bool;
    /// Whether a restore's `RestoreOptions::criu_config` reaches CRIU.
    fn passes_criu_config(&self) -> bool;
    /// `run --detach`: creates and starts the container; returns once its init runs.
    fn run_detached(&self, id: &str, bundle: &Path, pid_file: &Path, stdio: ContainerStdio)
    -> Result<(), RuntimeError>;
    /// `restore --detach`: recreates the container from CRIU images.
    fn restore_detached(
        &self,
        id: &str,
        bundle: &Path,
        pid_file: &Path,
        options: &RestoreOptions,
        stdio: ContainerStdio,
    ) -> Result<(), RuntimeError>;
    /// `None` when the runtime does not know the container.
    fn state(&self, id: &str) -> Result<Option<RuntimeState>, RuntimeError>;
    /// The states of many containers, by id; those the runtime does not know are left out.
    /// One `state` each, unless the runtime can list them all at once.
    fn states(&self, ids: &[&str]) -> Result<HashMap<String, RuntimeState>, RuntimeError> {
        states_one_by_one(self, ids)
    }
    fn kill(&self, id: &str, signal: &str) -> Result<(), RuntimeError>;
    fn delete(&self, id: &str, force: bool) -> Result<(), RuntimeError>;
    /// Freezes the container's processes (its cgroup freezer).
    fn pause(&self, id: &str) -> Result<(), RuntimeError>;
    /// Thaws a paused (frozen) container.
    fn resume(&self, id: &str) -> Result<(), RuntimeError>;
    /// Runs a process in the container with ckpt's own stdio and returns its exit code; or,
    /// detached, starts it with no stdio and returns 0 once it runs (an error, with the
    /// runtime's log, when it cannot start).
    fn exec(&self, id: &str, args: &[String], env: &[String], exec: ExecMode) -> Result<i32, RuntimeError>;
    fn checkpoint(&self, id: &str, options: &CheckpointOptions) -> Result<(), RuntimeError>;
    /// `checkpoint --lazy-pages`, with CRIU's page server talking on `page_socket` (CRIU's
    /// `ps-socket`), never on a port of its own: returns once the dump has started; see
    /// [`LazyDump`]. Runtimes without it say so.
    fn checkpoint_lazy(
        &self,
        id: &str,
        options: &CheckpointOptions,
        page_socket: std::os::fd::OwnedFd,
    ) -> Result<Box<dyn LazyDump>, RuntimeError> {
        let _ = (options, page_socket);
        Err(RuntimeError::Failed {
            runtime: self.name().to_string(),
            action: "checkpoint --lazy-pages",
            id: id.to_string(),
            status: "not supported".into(),
            stderr: format!("{} cannot dump lazily; post-copy needs runc", self.name()),
        })
    }
}
