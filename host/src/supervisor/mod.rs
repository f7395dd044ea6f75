//! The supervisor: a small process per running container that holds the container's stdio
//! pipes and writes its log, as conmon does for podman.
//!
//! CRIU cannot dump a process whose descriptors point at host files, so the container's
//! stdin, stdout and stderr are pipes whose other ends live here. The supervisor is the
//! container's subreaper, so it learns the exit status, and it cleans up after the exit.

mod log;

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::OwnedFd;
use std::process::{Command, Stdio};
use std::sync::Arc;

use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid};
use serde::{Deserialize, Serialize};

pub use log::{LogLine, LogWriter, read_log};

use crate::base_error::BaseError;
use crate::network::Networks;
use crate::runtime::{ContainerStdio, OciRuntime, RestoreOptions, RuntimeError};
use crate::store::{ContainerRecord, ContainerStore};

pub type Result<T, E = SupervisorError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error("supervisor of container {id:?} failed: {detail}")]
    Failed { id: String, detail: String },
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error(transparent)]
    Network(#[from] crate::network::NetworkError),
    #[error(transparent)]
    Base(#[from] BaseError),
}

/// How the supervisor brings the container up: given to `ckpt __supervise` as one JSON
/// argument, written and read by the same type.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Launch {
    Run,
    Restore(RestoreOptions),
}

/// What the supervisor tells the ckpt process that started it, as one JSON line.
#[derive(Debug, Serialize, Deserialize)]
struct Started {
    pid: Option<i32>,
    error: Option<String>,
}

/// Starts a supervisor for `record` and waits until the container runs or has failed to start.
pub fn spawn(containers: &ContainerStore, record: &ContainerRecord, token: &str, launch: &Launch) -> Result<i32> {
    let paths = containers.paths(&record.id);
    let roots = containers.roots();
    crate::util::create_dir_all(&paths.run_dir)?;
    let exe = std::env::current_exe().map_err(BaseError::io("find own executable", "/proc/self/exe"))?;
    let supervisor_log = paths.supervisor_log();
    let stderr = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&supervisor_log)
        .map_err(BaseError::io("open", &supervisor_log))?;
    let mut cmd = Command::new(exe);
    cmd.arg("--root").arg(&roots.root).arg("--runroot").arg(&roots.runroot);
    cmd.arg("--runtime").arg(&record.runtime);
    cmd.args(["__supervise", "--id", &record.id, "--token", token]);
    cmd.arg("--launch").arg(serde_json::to_string(launch).expect("launch options serialise"));
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(stderr))
        .spawn()
        .map_err(|e| SupervisorError::Failed { id: record.id.clone(), detail: format!("could not start: {e}") })?;
    let mut report = String::new();
    child.stdout.take().expect("piped").read_to_string(&mut report).ok();
    // The first process only forks the real supervisor off and exits.
    let _ = child.wait();
    let started: Started = serde_json::from_str(report.trim()).map_err(|_| SupervisorError::Failed {
        id: record.id.clone(),
        detail: format!(
            "it exited without reporting; see {}: {}",
            supervisor_log.display(),
            std::fs::read_to_string(&supervisor_log).unwrap_or_default().lines().last().unwrap_or("")
        ),
    })?;
    match (started.pid, started.error) {
        (Some(pid), _) => Ok(pid),
        (None, Some(error)) => Err(SupervisorError::Failed { id: record.id.clone(), detail: error }),
        (None, None) => Err(SupervisorError::Failed { id: record.id.clone(), detail: "no pid reported".into() }),
    }
}

/// The runtime a supervisor drives, made for the container it supervises (its log goes to the
/// container's run directory). Its error is only reported, so any displayable error will do.
pub type RuntimeFor<'a, E> = &'a dyn Fn(&ContainerRecord) -> Result<Arc<dyn OciRuntime>, E>;

/// The body of `ckpt __supervise`. Never returns to the caller's command handling.
pub fn run<E: std::fmt::Display>(
    containers: &ContainerStore,
    networks: &Networks,
    runtime_for: RuntimeFor<'_, E>,
    id: &str,
    token: &str,
    launch: Launch,
) -> Result<i32> {
    // Detach: the ckpt that started us waits only for this first process.
    // SAFETY: no other thread exists yet in this process.
    match unsafe { nix::unistd::fork() }
        .map_err(|e| SupervisorError::Failed { id: id.into(), detail: format!("fork: {e}") })?
    {
        ForkResult::Parent { .. } => return Ok(0),
        ForkResult::Child => {}
    }
    let _ = nix::unistd::setsid();
    let record = containers.load(id)?;
    let paths = containers.paths(id);
    let lock_path = paths.supervisor_lock();
    let lifetime_lock = File::create(&lock_path).map_err(BaseError::io("create", &lock_path))?;
    lifetime_lock.lock().map_err(BaseError::io("lock", &lock_path))?;
    let _ = nix::sys::prctl::set_child_subreaper(true);

    let report = |started: &Started| {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{}", serde_json::to_string(started).expect("json"));
        let _ = out.flush();
    };
    let (stdin_r, stdin_w) = pipe()?;
    let (stdout_r, stdout_w) = pipe()?;
    let (stderr_r, stderr_w) = pipe()?;
    let runtime = match runtime_for(&record) {
        Ok(r) => r,
        Err(e) => {
            report(&Started { pid: None, error: Some(e.to_string()) });
            return Ok(1);
        }
    };
    let stdio = ContainerStdio { stdin: stdin_r, stdout: stdout_w, stderr: stderr_w };
    // The log exists before the container does: whoever follows it from the moment `start`
    // returns (a foreground `run --rm`) must find it, even if the container is gone by then.
    let log = match LogWriter::open(&paths.log()) {
        Ok(log) => Arc::new(log),
        Err(e) => {
            report(&Started { pid: None, error: Some(e.to_string()) });
            return Ok(1);
        }
    };
    let pid_file = paths.pid_file();
    let _ = std::fs::remove_file(&pid_file);
    let launched = match &launch {
        Launch::Run => runtime.run_detached(id, &paths.bundle(), &pid_file, stdio),
        Launch::Restore(options) => runtime.restore_detached(id, &paths.bundle(), &pid_file, options, stdio),
    };
    let init_pid = launched.map_err(SupervisorError::from).and_then(|()| {
        let text = std::fs::read_to_string(&pid_file).map_err(BaseError::io("read", &pid_file))?;
        text.trim().parse::<i32>().map_err(|_| {
            SupervisorError::Base(BaseError::Corrupt { what: "pid file", path: pid_file.clone(), detail: text })
        })
    });
    let init_pid = match init_pid {
        Ok(pid) => pid,
        Err(e) => {
            let _ = runtime.delete(id, true);
            report(&Started { pid: None, error: Some(e.to_string()) });
            return Ok(1);
        }
    };
    report(&Started { pid: Some(init_pid), error: None });
    // Let go of the report pipe so that the starting ckpt sees EOF.
    if let Ok(devnull) = File::open("/dev/null") {
        let _ = nix::unistd::dup2_stdout(&devnull);
    }

    let readers: Vec<_> = [(stdout_r, "stdout"), (stderr_r, "stderr")]
        .into_iter()
        .map(|(fd, stream)| {
            let log = Arc::clone(&log);
            std::thread::spawn(move || copy_to_log(fd, stream, &log))
        })
        .collect();
    let status = wait_for(Pid::from_raw(init_pid));
    for reader in readers {
        let _ = reader.join();
    }
    drop(stdin_w);
    cleanup_after_exit(containers, networks, runtime.as_ref(), id, token, status)?;
    drop(lifetime_lock);
    Ok(0)
}

fn pipe() -> Result<(OwnedFd, OwnedFd), BaseError> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| BaseError::io("create pipe", "pipe")(e.into()))
}

fn copy_to_log(fd: OwnedFd, stream: &'static str, log: &LogWriter) {
    let mut reader = BufReader::with_capacity(64 << 10, File::from(fd));
    let mut line = Vec::with_capacity(1024);
    loop {
        line.clear();
        match (&mut reader).take(16 << 10).read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => log.write(stream, &line),
        }
    }
}

/// Reaps children until the container's init exits; returns its exit code as a shell shows it.
fn wait_for(init: Pid) -> i32 {
    loop {
        match waitpid(None, None) {
            Ok(WaitStatus::Exited(pid, code)) if pid == init => return code,
            Ok(WaitStatus::Signaled(pid, signal, _)) if pid == init => return 128 + signal as i32,
            Ok(_) => continue,
            // ECHILD: init was never our child (it should be, as we are its subreaper).
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return wait_by_polling(init),
        }
    }
}

fn wait_by_polling(init: Pid) -> i32 {
    while nix::sys::signal::kill(init, None).is_ok() {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    0
}

/// What conmon's exit command does for podman: record the exit, release the runtime's state and
/// the rootfs mount, and remove `--rm` containers. Skipped if a later run owns the container.
fn cleanup_after_exit(
    containers: &ContainerStore,
    networks: &Networks,
    runtime: &dyn OciRuntime,
    id: &str,
    token: &str,
    exit_code: i32,
) -> Result<()> {
    let _lock = crate::store::ContainerLock::acquire(&containers.roots().locks_dir(), id)?;
    let Ok(mut record) = containers.load(id) else { return Ok(()) };
    if record.state.run_token.as_deref() != Some(token) {
        return Ok(());
    }
    if let Ok(Some(state)) = runtime.state(id) {
        if state.is_running() {
            // The init we watched is gone, yet the runtime reports a live container: leave it.
            return Ok(());
        }
        let _ = runtime.delete(id, true);
    }
    let paths = containers.paths(id);
    crate::rootfs::unmount(&paths.merged())?;
    if !record.state.holds_network() {
        networks.teardown(&paths.netns(), &paths.network_options(), &containers.roots().root)?;
        crate::netns::remove(&paths.netns())?;
    }
    record.state.run_token = None;
    record.state.finished_at = Some(crate::util::now());
    // Podman reports 0 for a container that CRIU stopped.
    record.state.exit_code = Some(if record.state.checkpointed { 0 } else { exit_code });
    if record.auto_remove && !record.state.checkpoint_in_progress {
        return crate::store::teardown(containers.roots(), &paths).map_err(SupervisorError::from);
    }
    containers.save(&record).map_err(SupervisorError::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn launch_options_go_to_the_supervisor_and_come_back_the_same() {
        let restore = Launch::Restore(RestoreOptions {
            image_path: "/b/checkpoint".into(),
            work_path: "/b".into(),
            tcp_established: true,
            lazy_pages: true,
            criu_config: Some("/b/criu.conf".into()),
            ..RestoreOptions::default()
        });
        for launch in [Launch::Run, restore] {
            let sent = serde_json::to_string(&launch).unwrap();
            let got: Launch = serde_json::from_str(&sent).unwrap();
            assert_eq!(format!("{got:?}"), format!("{launch:?}"), "{sent}");
        }
    }
}
