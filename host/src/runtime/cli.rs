//! runc and crun share one command line, so one implementation drives both.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use super::freezer::Freezer;
use crate::metadata::{CRIU_DUMP_LOG, CRIU_RESTORE_LOG};

use super::{
    CheckpointOptions, ContainerStdio, ExecMode, LazyDump, OciRuntime, RestoreOptions, RuntimeError, RuntimeState,
};

#[derive(Clone)]
pub struct CliRuntime {
    name: String,
    path: PathBuf,
    state_root: PathBuf,
    log_file: Option<PathBuf>,
    /// Whether a dump that leaves the container running asks CRIU itself (see `runc_state`).
    dumps_through_criu: bool,
}

impl CliRuntime {
    /// Resolves `--runtime NAME|PATH` and gives the runtime ckpt's own state root.
    pub fn resolve(name_or_path: &str, state_root_base: &Path) -> Result<CliRuntime, RuntimeError> {
        let path = if name_or_path.contains('/') {
            PathBuf::from(name_or_path)
        } else {
            crate::util::find_in_path(name_or_path).ok_or_else(|| RuntimeError::NotFound {
                name: name_or_path.to_string(),
                detail: "it is not in $PATH".to_string(),
            })?
        };
        if !path.is_file() {
            return Err(RuntimeError::NotFound {
                name: name_or_path.to_string(),
                detail: format!("{} is not a file", path.display()),
            });
        }
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        Ok(CliRuntime {
            state_root: state_root_base.join(&name),
            name,
            path,
            log_file: None,
            dumps_through_criu: false,
        })
    }

    /// Sends the runtime's own log (JSON lines) to `path`, so that its errors can be reported
    /// even when its stderr is the container's.
    pub fn with_log_file(mut self, path: PathBuf) -> CliRuntime {
        self.log_file = Some(path);
        self
    }

    /// Lets a dump that leaves the container running go to CRIU's RPC directly, with what runc
    /// knows read from its state, where this is runc 1.1 (whose request `runc_state` repeats).
    pub fn dumping_through_criu(mut self, allowed: bool) -> CliRuntime {
        self.dumps_through_criu = allowed;
        self
    }

    /// The request runc would make of CRIU for this dump, when ckpt may make it itself: `None`
    /// means runc is asked.
    fn direct_dump(&self, id: &str, options: &CheckpointOptions) -> Option<crate::criu::swrk::DumpRequest> {
        let eligible = self.dumps_through_criu
            && self.name == "runc"
            && options.leave_running
            && !options.pre_dump
            && options.parent_path.is_none()
            && self.version().is_ok_and(|v| v.starts_with("runc version 1.1."));
        if !eligible {
            return None;
        }
        super::runc_state::leave_running_dump(&self.state_root.join(id), options, crate::hostinfo::cgroup_v2())
            .inspect_err(|why| tracing::debug!(id, why, "dumping through runc"))
            .ok()
    }

    /// Dumps as `request` says through `criu swrk`, with the same configuration file in CRIU's
    /// environment as a dump through runc.
    fn dump_through_criu(
        &self,
        id: &str,
        options: &CheckpointOptions,
        request: &crate::criu::swrk::DumpRequest,
    ) -> Result<(), RuntimeError> {
        let action = "checkpoint";
        let spawn = |source| RuntimeError::Spawn { runtime: "criu".into(), action, source };
        let criu = crate::util::find_in_path("criu")
            .ok_or_else(|| spawn(std::io::Error::new(std::io::ErrorKind::NotFound, "criu is not in $PATH")))?;
        let config = write_criu_config(&options.work_path, DUMP_CONFIG, dump_config_lines(options)).map_err(spawn)?;
        tracing::debug!(action, log = %options.work_path.join(CRIU_DUMP_LOG).display(), "criu swrk");
        crate::criu::swrk::dump(&criu, request, config.as_deref()).map_err(|failure| {
            let failed = RuntimeError::Failed {
                runtime: "criu".into(),
                action,
                id: id.to_string(),
                status: "swrk".into(),
                stderr: failure.to_string(),
            };
            with_criu_log(failed, &options.work_path, CRIU_DUMP_LOG)
        })
    }

    /// A runtime command that makes a container or a process in one: ckpt itself runs with
    /// umask 077 so that its store stays private, and what the runtime creates inside the
    /// container (mount points, /dev, an exec'd process's files) gets the usual 022.
    fn container_command(&self) -> Command {
        let mut cmd = self.command();
        // SAFETY: umask is async-signal-safe and touches no memory.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                libc::umask(0o022);
                Ok(())
            });
        }
        cmd
    }

    /// A runtime command that creates nothing inside a container (state, pause, checkpoint…).
    /// With no code to run between fork and exec, the standard library starts it with
    /// `posix_spawn`, which does not copy ckpt's page tables as a fork does.
    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.path);
        cmd.arg("--root").arg(&self.state_root);
        if let Some(log) = &self.log_file {
            cmd.arg("--log").arg(log).arg("--log-format").arg("json");
        }
        cmd
    }

    fn run_captured(&self, mut cmd: Command, action: &'static str, id: &str) -> Result<Output, RuntimeError> {
        trace_invocation(&cmd, action, self.log_file.as_deref());
        let output = cmd.stdin(Stdio::null()).output().map_err(|source| RuntimeError::Spawn {
            runtime: self.name.clone(),
            action,
            source,
        })?;
        if output.status.success() {
            Ok(output)
        } else {
            Err(self.failure(action, id, &output.status, String::from_utf8_lossy(&output.stderr).trim()))
        }
    }

    fn failure(&self, action: &'static str, id: &str, status: &std::process::ExitStatus, stderr: &str) -> RuntimeError {
        // Only where an absent container is an answer; a dump that fails is a failure whatever it says.
        if matches!(action, "state" | "kill" | "delete" | "resume") && is_gone(stderr) {
            return RuntimeError::Gone {
                runtime: self.name.clone(),
                action,
                id: id.to_string(),
                stderr: stderr.into(),
            };
        }
        let mut detail = stderr.to_string();
        if detail.is_empty() {
            detail = self.log_errors();
        }
        RuntimeError::Failed {
            runtime: self.name.clone(),
            action,
            id: id.to_string(),
            status: status.to_string(),
            stderr: detail,
        }
    }

    /// The error lines of the runtime's JSON log, or an empty string.
    fn log_errors(&self) -> String {
        let Some(log) = &self.log_file else { return String::new() };
        let text = fs::read_to_string(log).unwrap_or_default();
        text.lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .filter(|v| matches!(v["level"].as_str(), Some("error" | "fatal")))
            .filter_map(|v| v["msg"].as_str().map(str::to_string))
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn run_with_stdio(
        &self,
        mut cmd: Command,
        action: &'static str,
        id: &str,
        stdio: ContainerStdio,
    ) -> Result<(), RuntimeError> {
        if let Some(log) = &self.log_file {
            let _ = fs::remove_file(log);
        }
        trace_invocation(&cmd, action, self.log_file.as_deref());
        let status = cmd
            .stdin(Stdio::from(stdio.stdin))
            .stdout(Stdio::from(stdio.stdout))
            .stderr(Stdio::from(stdio.stderr))
            .status()
            .map_err(|source| RuntimeError::Spawn { runtime: self.name.clone(), action, source })?;
        if status.success() { Ok(()) } else { Err(self.failure(action, id, &status, "")) }
    }
}

/// A container's state in `state`'s or `list --format json`'s output.
fn state_of(container: &serde_json::Value) -> RuntimeState {
    RuntimeState {
        status: container["status"].as_str().unwrap_or("unknown").to_string(),
        pid: container["pid"].as_i64().unwrap_or(0) as i32,
    }
}

/// The states of `ids` in `list --format json`'s output (`null` when there are none); `None`
/// when the output is not such a list.
fn listed_states(stdout: &[u8], ids: &[&str]) -> Option<HashMap<String, RuntimeState>> {
    let listed: Option<Vec<serde_json::Value>> = serde_json::from_slice(stdout).ok()?;
    let mut states = HashMap::new();
    for container in listed.unwrap_or_default() {
        let Some(id) = container["id"].as_str().filter(|id| ids.contains(id)) else { continue };
        states.insert(id.to_string(), state_of(&container));
    }
    Some(states)
}

impl OciRuntime for CliRuntime {
    fn name(&self) -> &str {
        &self.name
    }

    fn path(&self) -> &Path {
        &self.path
    }

    fn version(&self) -> Result<String, RuntimeError> {
        crate::util::cached_probe(&self.path, "version", || {
            let mut cmd = Command::new(&self.path);
            cmd.arg("--version");
            let output = self.run_captured(cmd, "--version", "")?;
            Ok(String::from_utf8_lossy(&output.stdout).trim_end().to_string())
        })
    }

    fn supports_checkpoint(&self) -> bool {
        crate::util::cached_probe(&self.path, "checkpoint", || {
            Ok::<bool, ()>(
                Command::new(&self.path)
                    .args(["checkpoint", "--help"])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success()),
            )
        })
        .unwrap_or(false)
    }

    /// runc gives CRIU the file its `org.criu.config` annotation names; crun's handling of it
    /// has not been tried here.
    fn passes_criu_config(&self) -> bool {
        self.name == "runc"
    }

    fn run_detached(
        &self,
        id: &str,
        bundle: &Path,
        pid_file: &Path,
        stdio: ContainerStdio,
    ) -> Result<(), RuntimeError> {
        let mut cmd = self.container_command();
        cmd.args(["run", "--detach", "--bundle"]).arg(bundle).arg("--pid-file").arg(pid_file).arg(id);
        self.run_with_stdio(cmd, "run", id, stdio)
    }

    fn restore_detached(
        &self,
        id: &str,
        bundle: &Path,
        pid_file: &Path,
        options: &RestoreOptions,
        stdio: ContainerStdio,
    ) -> Result<(), RuntimeError> {
        let mut cmd = self.container_command();
        cmd.args(["restore", "--detach", "--bundle"]).arg(bundle).arg("--pid-file").arg(pid_file);
        cmd.arg("--image-path").arg(&options.image_path).arg("--work-path").arg(&options.work_path);
        if options.tcp_established {
            cmd.arg("--tcp-established");
        }
        if options.file_locks {
            cmd.arg("--file-locks");
        }
        if options.lazy_pages {
            cmd.arg("--lazy-pages");
        }
        if options.consume_page_images {
            cmd.arg("--auto-dedup");
        }
        if let Some(config) = &options.criu_config {
            annotate_criu_config(&bundle.join("config.json"), config).map_err(|source| RuntimeError::Spawn {
                runtime: self.name.clone(),
                action: "restore",
                source,
            })?;
        }
        cmd.arg(id);
        tracing::debug!(
            action = "restore",
            log = %options.work_path.join(CRIU_RESTORE_LOG).display(),
            config = ?options.criu_config,
            "criu"
        );
        self.run_with_stdio(cmd, "restore", id, stdio)
            .map_err(|e| with_criu_log(e, &options.work_path, CRIU_RESTORE_LOG))
    }

    fn state(&self, id: &str) -> Result<Option<RuntimeState>, RuntimeError> {
        let output = self
            .command()
            .args(["state", id])
            .stdin(Stdio::null())
            .output()
            .map_err(|source| RuntimeError::Spawn { runtime: self.name.clone(), action: "state", source })?;
        if !output.status.success() {
            return match self.failure("state", id, &output.status, String::from_utf8_lossy(&output.stderr).trim()) {
                RuntimeError::Gone { .. } => Ok(None),
                other => Err(other),
            };
        }
        let value: serde_json::Value = serde_json::from_slice(&output.stdout).map_err(|e| RuntimeError::BadState {
            runtime: self.name.clone(),
            id: id.to_string(),
            detail: e.to_string(),
        })?;
        Ok(Some(state_of(&value)))
    }

    /// `list --format json`: one process for every container, where `checkpoint -a` would start
    /// one `state` per container before it starts any work. A runtime whose `list` fails or says
    /// something else is asked one container at a time.
    fn states(&self, ids: &[&str]) -> Result<HashMap<String, RuntimeState>, RuntimeError> {
        if ids.len() < 2 {
            return super::states_one_by_one(self, ids);
        }
        let listed = self
            .command()
            .args(["list", "--format", "json"])
            .stdin(Stdio::null())
            .output()
            .ok()
            .filter(|output| output.status.success())
            .and_then(|output| listed_states(&output.stdout, ids));
        listed.map_or_else(|| super::states_one_by_one(self, ids), Ok)
    }

    fn kill(&self, id: &str, signal: &str) -> Result<(), RuntimeError> {
        let mut cmd = self.command();
        cmd.args(["kill", id, signal]);
        self.run_captured(cmd, "kill", id).map(drop)
    }

    fn delete(&self, id: &str, force: bool) -> Result<(), RuntimeError> {
        let mut cmd = self.command();
        cmd.arg("delete");
        if force {
            cmd.arg("--force");
        }
        cmd.arg(id);
        self.run_captured(cmd, "delete", id).map(drop)
    }

    fn resume(&self, id: &str) -> Result<(), RuntimeError> {
        if let Some(freezer) = Freezer::of(id) {
            tracing::debug!(action = "resume", id, "cgroup freezer");
            return freezer.thaw().map_err(|source| RuntimeError::Freezer { action: "resume", id: id.into(), source });
        }
        let mut cmd = self.command();
        cmd.args(["resume", id]);
        self.run_captured(cmd, "resume", id).map(drop)
    }

    fn pause(&self, id: &str) -> Result<(), RuntimeError> {
        if let Some(freezer) = Freezer::of(id) {
            tracing::debug!(action = "pause", id, "cgroup freezer");
            return freezer.freeze().map_err(|source| RuntimeError::Freezer { action: "pause", id: id.into(), source });
        }
        let mut cmd = self.command();
        cmd.args(["pause", id]);
        self.run_captured(cmd, "pause", id).map(drop)
    }

    fn exec(&self, id: &str, args: &[String], env: &[String], mode: ExecMode) -> Result<i32, RuntimeError> {
        let mut cmd = self.container_command();
        cmd.arg("exec");
        match mode {
            ExecMode::Attached => {}
            ExecMode::Terminal => drop(cmd.arg("--tty")),
            ExecMode::Detached => {
                // The process keeps no descriptor of ckpt's: its stdio is the null device.
                cmd.arg("--detach").stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
            }
        }
        for e in env {
            cmd.arg("--env").arg(e);
        }
        cmd.arg(id).args(args);
        let status = cmd.status().map_err(|source| RuntimeError::Spawn {
            runtime: self.name.clone(),
            action: "exec",
            source,
        })?;
        // A detached process that could not start leaves its reason only in the runtime's log.
        if mode == ExecMode::Detached && !status.success() {
            return Err(self.failure("exec", id, &status, ""));
        }
        Ok(exit_code_of(status))
    }

    fn checkpoint(&self, id: &str, options: &CheckpointOptions) -> Result<(), RuntimeError> {
        if let Some(request) = self.direct_dump(id, options) {
            return self.dump_through_criu(id, options, &request);
        }
        let mut cmd = self.checkpoint_command(options);
        cmd.arg(id);
        let action = if options.pre_dump { "pre-dump" } else { "checkpoint" };
        pass_criu_config(&mut cmd, &options.work_path, DUMP_CONFIG, dump_config_lines(options))
            .map_err(|source| RuntimeError::Spawn { runtime: self.name.clone(), action, source })?;
        tracing::debug!(action, log = %options.work_path.join(CRIU_DUMP_LOG).display(), "criu");
        self.run_captured(cmd, action, id).map(drop).map_err(|e| with_criu_log(e, &options.work_path, CRIU_DUMP_LOG))
    }

    fn checkpoint_lazy(
        &self,
        id: &str,
        options: &CheckpointOptions,
        page_socket: std::os::fd::OwnedFd,
    ) -> Result<Box<dyn LazyDump>, RuntimeError> {
        let action = "checkpoint --lazy-pages";
        let spawn_err = |source| RuntimeError::Spawn { runtime: self.name.clone(), action, source };
        let (ready_read, ready_write) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| spawn_err(std::io::Error::from(e)))?;
        let mut cmd = self.checkpoint_command(options);
        // CRIU writes one byte to this descriptor once it serves pages: fd 3 in runc.
        cmd.args(["--lazy-pages", "--status-fd", "3"]).arg(id);
        // runc has no flag for a page server socket, but CRIU reads a configuration file named in
        // its environment, and runc starts it with its own environment and every descriptor it
        // inherited: fd 10 reaches CRIU as it is (Go moves only fds 0-3 for its child).
        let mut lines = dump_config_lines(options);
        lines.push(format!("ps-socket {LAZY_PAGE_SOCKET_FD}"));
        pass_criu_config(&mut cmd, &options.work_path, "criu-page-socket.conf", lines).map_err(spawn_err)?;
        crate::util::pass_fds(&mut cmd, vec![(ready_write, 3), (page_socket, LAZY_PAGE_SOCKET_FD)])
            .map_err(spawn_err)?;
        trace_invocation(&cmd, action, self.log_file.as_deref());
        let spawned = cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn();
        // This process's copies of the socket and the status pipe close here: the page channel
        // ends, and the status pipe reads end-of-file, when CRIU is done with them.
        drop(cmd);
        let mut child = spawned.map_err(spawn_err)?;
        let stderr = child.stderr.take().map(|mut pipe| {
            std::thread::spawn(move || {
                let mut text = String::new();
                let _ = std::io::Read::read_to_string(&mut pipe, &mut text);
                text
            })
        });
        Ok(Box::new(CliLazyDump {
            runtime: self.clone(),
            id: id.to_string(),
            work_path: options.work_path.clone(),
            child,
            ready: Some(fs::File::from(ready_read)),
            stderr,
        }))
    }
}

impl CliRuntime {
    /// `checkpoint` with the options' flags, before the container's ID.
    fn checkpoint_command(&self, options: &CheckpointOptions) -> Command {
        let mut cmd = self.command();
        cmd.arg("checkpoint");
        cmd.arg("--image-path").arg(&options.image_path).arg("--work-path").arg(&options.work_path);
        if options.leave_running {
            cmd.arg("--leave-running");
        }
        if options.tcp_established {
            cmd.arg("--tcp-established");
        }
        if options.file_locks {
            cmd.arg("--file-locks");
        }
        if options.pre_dump {
            cmd.arg("--pre-dump");
        }
        if let Some(parent) = &options.parent_path {
            cmd.arg("--parent-path").arg(parent);
        }
        // Its own process group: Ctrl-C on the terminal reaches ckpt, which rolls back at a safe
        // point, and never CRIU in the middle of a dump (a frozen container would be left).
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        cmd
    }
}

/// The configuration file of a dump's CRIU, in its work path.
const DUMP_CONFIG: &str = "criu-dump.conf";

/// What a dump's CRIU is told beyond runc's request, which has no field for it.
fn dump_config_lines(options: &CheckpointOptions) -> Vec<String> {
    let mut lines = Vec::new();
    if options.nftables_lock {
        lines.push("network-lock nftables".to_string());
    }
    if options.skip_conntrack && !options.tcp_established {
        lines.push("skip-nf-ct".to_string());
    }
    lines
}

/// Names a configuration file of `lines` in CRIU's environment, where CRIU reads it before
/// runc's request (which overrides only what it sets): runc starts CRIU with its own
/// environment. Nothing is written for no lines.
fn pass_criu_config(cmd: &mut Command, work_path: &Path, name: &str, lines: Vec<String>) -> std::io::Result<()> {
    if let Some(config) = write_criu_config(work_path, name, lines)? {
        cmd.env("CRIU_CONFIG_FILE", &config);
    }
    Ok(())
}

/// Writes a CRIU configuration file of `lines` named `name` in `work_path`; `None` for no lines.
fn write_criu_config(work_path: &Path, name: &str, lines: Vec<String>) -> std::io::Result<Option<PathBuf>> {
    if lines.is_empty() {
        return Ok(None);
    }
    let config = work_path.join(name);
    fs::write(&config, lines.join("\n") + "\n")?;
    Ok(Some(config))
}

/// The descriptor a lazy dump's CRIU serves pages on (`ps-socket`).
const LAZY_PAGE_SOCKET_FD: i32 = 10;

/// `runc checkpoint --lazy-pages` running in the background.
struct CliLazyDump {
    runtime: CliRuntime,
    id: String,
    work_path: PathBuf,
    child: std::process::Child,
    ready: Option<fs::File>,
    stderr: Option<std::thread::JoinHandle<String>>,
}

impl CliLazyDump {
    /// The dump's end, as an error with runc's words and CRIU's log when it failed.
    fn ended(&mut self) -> Result<(), RuntimeError> {
        let action = "checkpoint --lazy-pages";
        let status = self.child.wait().map_err(|source| RuntimeError::Spawn {
            runtime: self.runtime.name.clone(),
            action,
            source,
        })?;
        let stderr = self.stderr.take().and_then(|t| t.join().ok()).unwrap_or_default();
        if status.success() {
            return Ok(());
        }
        let failure = self.runtime.failure(action, &self.id, &status, stderr.trim());
        Err(with_criu_log(failure, &self.work_path, CRIU_DUMP_LOG))
    }
}

impl LazyDump for CliLazyDump {
    fn ready(&mut self) -> Result<(), RuntimeError> {
        let mut byte = [0u8; 1];
        let said = self.ready.take().map(|mut pipe| std::io::Read::read(&mut pipe, &mut byte));
        match said {
            Some(Ok(1)) => Ok(()),
            // The write end closed without a word: runc (and CRIU) ended.
            _ => match self.ended() {
                Ok(()) => Err(RuntimeError::Failed {
                    runtime: self.runtime.name.clone(),
                    action: "checkpoint --lazy-pages",
                    id: self.id.clone(),
                    status: "exit status 0".into(),
                    stderr: "the dump ended without serving pages".into(),
                }),
                Err(e) => Err(e),
            },
        }
    }

    fn finish(mut self: Box<Self>) -> Result<(), RuntimeError> {
        self.ended()
    }

    fn abort(mut self: Box<Self>) {
        // runc and CRIU share the process group runc leads.
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = self.child.wait();
    }
}

/// One line per runtime invocation at `--log-level debug`: the command and where its log goes.
fn trace_invocation(cmd: &Command, action: &str, log: Option<&Path>) {
    let args: Vec<String> = cmd.get_args().map(|a| a.to_string_lossy().into_owned()).collect();
    tracing::debug!(
        action,
        command = %format!("{} {}", cmd.get_program().to_string_lossy(), args.join(" ")),
        log = %log.map_or_else(|| "-".into(), |l| l.display().to_string()),
        "runtime"
    );
}

/// What runc and crun say when a container is unknown or its process has already exited.
fn is_gone(stderr: &str) -> bool {
    ["does not exist", "not found", "No such file", "not running", "process already finished"]
        .iter()
        .any(|phrase| stderr.contains(phrase))
}

/// Points runc's CRIU at `criu_config` through the bundle's `org.criu.config` annotation, which
/// runc reads instead of `/etc/criu/runc.conf`.
fn annotate_criu_config(config_json: &Path, criu_config: &Path) -> std::io::Result<()> {
    let invalid = |detail: String| std::io::Error::other(format!("{}: {detail}", config_json.display()));
    let mut spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(config_json)?).map_err(|e| invalid(e.to_string()))?;
    let object = spec.as_object_mut().ok_or_else(|| invalid("not a JSON object".into()))?;
    let annotations = object.entry("annotations").or_insert_with(|| serde_json::json!({}));
    let annotations = annotations.as_object_mut().ok_or_else(|| invalid("annotations are not an object".into()))?;
    annotations.insert("org.criu.config".into(), criu_config.display().to_string().into());
    let partial = config_json.with_extension("json.partial");
    std::fs::write(&partial, serde_json::to_vec_pretty(&spec).map_err(|e| invalid(e.to_string()))?)?;
    std::fs::rename(&partial, config_json)
}

/// Adds CRIU's own error lines to a runtime failure: runc only says "criu failed".
fn with_criu_log(err: RuntimeError, work_path: &Path, log_name: &str) -> RuntimeError {
    let RuntimeError::Failed { runtime, action, id, status, mut stderr } = err else { return err };
    let log = work_path.join(log_name);
    if let Ok(text) = fs::read_to_string(&log) {
        let errors: Vec<&str> = text.lines().filter(|l| l.contains("Error") || l.contains("error")).collect();
        if !errors.is_empty() {
            let tail = &errors[errors.len().saturating_sub(4)..];
            stderr = format!("{stderr}\nCRIU ({}):\n  {}", log.display(), tail.join("\n  "));
        }
    }
    RuntimeError::Failed { runtime, action, id, status, stderr }
}

pub fn exit_code_of(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dump_s_criu_gets_in_its_environment_what_runc_has_no_flag_for() {
        let work = tempfile::tempdir().unwrap();
        let options = CheckpointOptions { nftables_lock: true, skip_conntrack: true, ..Default::default() };
        let mut cmd = Command::new("true");
        pass_criu_config(&mut cmd, work.path(), DUMP_CONFIG, dump_config_lines(&options)).unwrap();
        let config = work.path().join(DUMP_CONFIG);
        assert_eq!(fs::read_to_string(&config).unwrap(), "network-lock nftables\nskip-nf-ct\n");
        let named = cmd.get_envs().find(|(key, _)| *key == "CRIU_CONFIG_FILE").and_then(|(_, value)| value);
        assert_eq!(named, Some(config.as_os_str()));

        // The entries are what a dump that keeps TCP connections restores them with.
        let keeping = CheckpointOptions { tcp_established: true, ..options };
        assert_eq!(dump_config_lines(&keeping), ["network-lock nftables"]);
        // With nothing to say, CRIU is told nothing.
        let mut cmd = Command::new("true");
        pass_criu_config(&mut cmd, work.path(), "other.conf", dump_config_lines(&CheckpointOptions::default()))
            .unwrap();
        assert!(cmd.get_envs().next().is_none() && !work.path().join("other.conf").exists());
    }

    #[test]
    fn the_criu_configuration_is_named_beside_the_bundle_s_own_annotations() {
        let dir = tempfile::tempdir().unwrap();
        let config_json = dir.path().join("config.json");
        std::fs::write(&config_json, r#"{"ociVersion":"1.0.2","annotations":{"a":"b"}}"#).unwrap();
        annotate_criu_config(&config_json, Path::new("/b/criu-restore.conf")).unwrap();
        let spec: serde_json::Value = serde_json::from_slice(&std::fs::read(&config_json).unwrap()).unwrap();
        assert_eq!(spec["annotations"], serde_json::json!({"a": "b", "org.criu.config": "/b/criu-restore.conf"}));
        std::fs::write(&config_json, "[]").unwrap();
        let err = annotate_criu_config(&config_json, Path::new("/c")).unwrap_err().to_string();
        assert!(err.contains("not a JSON object"), "{err}");
    }

    #[test]
    fn a_listing_gives_the_states_asked_for_and_nothing_else() {
        let out = br#"[{"id":"a","pid":7,"status":"running","bundle":"/b"},{"id":"c","pid":0,"status":"stopped"}]"#;
        let states = listed_states(out, &["a", "b"]).unwrap();
        assert_eq!(states.len(), 1, "b is not listed and c was not asked for");
        assert_eq!((states["a"].status.as_str(), states["a"].pid), ("running", 7));
        assert!(listed_states(b"null", &["a", "b"]).unwrap().is_empty(), "runc lists no containers as null");
        assert!(listed_states(b"ID PID STATUS", &["a", "b"]).is_none(), "not JSON: asked one by one instead");
    }
}
