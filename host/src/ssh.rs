//! The far side of a migration: ckpt on another machine, run through the system's ssh client as
//! podman's remote mode runs podman. The destination is `ssh://[USER@]HOST[:PORT][/ROOT]`; the
//! checkpoint archive goes down the channel's standard input, so nothing is written to disk
//! in between.

use std::io::{Read, Write};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// ssh's own exit code for a failed connection (a remote command's code is passed through).
const SSH_CONNECTION_FAILED: i32 = 255;

#[derive(Debug, thiserror::Error)]
pub enum SshError {
    #[error(
        "{0:?} is not a migration destination: give ssh://[USER@]HOST[:PORT][/ROOT], for example ssh://root@10.0.0.2/var/lib/ckpt"
    )]
    BadDestination(String),
    #[error("ssh is not installed ({0}); run scripts/setup")]
    NoSsh(String),
    #[error("cannot reach {destination}: {stderr}")]
    Unreachable { destination: String, stderr: String },
    #[error("'ckpt {command}' on {destination} failed ({status}): {stderr}")]
    Failed { destination: String, command: String, status: String, stderr: String },
    #[error("{action} through ssh to {destination}: {source}")]
    Io { action: &'static str, destination: String, source: std::io::Error },
}

impl SshError {
    /// Whether the far side may have done what it was asked: the channel broke, so nobody knows.
    pub fn is_unknown_outcome(&self) -> bool {
        matches!(self, SshError::Unreachable { .. } | SshError::Io { .. })
    }
}

/// `ssh://[USER@]HOST[:PORT][/ROOT]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Destination {
    pub user: Option<String>,
    pub host: String,
    pub port: Option<u16>,
    /// The destination's `--root`; its default store when absent.
    pub root: Option<PathBuf>,
}

impl Destination {
    pub fn parse(url: &str) -> Result<Destination, SshError> {
        let bad = || SshError::BadDestination(url.to_string());
        let rest = url.strip_prefix("ssh://").ok_or_else(bad)?;
        let (authority, root) = match rest.find('/') {
            Some(i) => (&rest[..i], Some(PathBuf::from(&rest[i..]))),
            None => (rest, None),
        };
        let (user, host_port) = match authority.rsplit_once('@') {
            Some((user, host)) => (Some(user.to_string()), host),
            None => (None, authority),
        };
        let (host, port) = match host_port.rsplit_once(':') {
            Some((host, port)) if !host.contains(':') || host.starts_with('[') => {
                (host, Some(port.parse::<u16>().map_err(|_| bad())?))
            }
            _ => (host_port, None),
        };
        let word = |s: &str| {
            !s.is_empty() && !s.starts_with('-') && s.chars().all(|c| c.is_ascii_alphanumeric() || "._-[]:".contains(c))
        };
        if !word(host) || user.as_deref().is_some_and(|u| !word(u)) || root.as_ref().is_some_and(|r| r == "/") {
            return Err(bad());
        }
        Ok(Destination { user, host: host.to_string(), port, root })
    }
}

impl std::fmt::Display for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ssh://")?;
        if let Some(user) = &self.user {
            write!(f, "{user}@")?;
        }
        write!(f, "{}", self.host)?;
        if let Some(port) = self.port {
            write!(f, ":{port}")?;
        }
        if let Some(root) = &self.root {
            write!(f, "{}", root.display())?;
        }
        Ok(())
    }
}

/// How to reach the destination, beyond its address.
#[derive(Debug, Clone, Default)]
pub struct SshOptions {
    /// `-i FILE`, as podman's `--identity`.
    pub identity: Option<PathBuf>,
    /// `-o OPTION` for each, as ssh takes them (`StrictHostKeyChecking=accept-new`, ...).
    pub options: Vec<String>,
    /// The command that runs ckpt there, as shell words (`ckpt` unless given).
    pub remote_ckpt: Option<String>,
}

/// Writes what the far side reads on its standard input.
pub type Upload<'a> = &'a mut dyn FnMut(&mut dyn Write) -> std::io::Result<()>;

/// ckpt on the far side of a migration.
pub trait RemoteCkpt {
    fn destination(&self) -> String;
    /// Runs `ckpt ARGS` there; with `input`, what it writes is the command's standard input.
    /// Returns the command's standard output.
    fn run(&self, args: &[String], input: Option<Upload<'_>>) -> Result<String, SshError>;
    /// Makes a Unix socket at `remote_socket` on the far side whose connections come, through
    /// the channel, to the listener returned here. Both sockets are the user's alone (sshd binds
    /// with mode 0600, and so does ckpt), so nobody else on either host can connect.
    fn forward_to_here(&self, remote_socket: &str) -> Result<std::os::unix::net::UnixListener, SshError>;
}

/// One connection to the destination for the whole migration: every command after the first
/// goes through it (ssh's connection sharing), so none pays for a handshake while the container
/// is down, and forwards can be added to it. Closed on drop.
pub struct Ssh {
    path: PathBuf,
    destination: Destination,
    options: SshOptions,
    control: PathBuf,
    /// Made for `control` when the run root's path is too long for a socket.
    private_dir: Option<PathBuf>,
    master: Option<std::process::Child>,
}

/// The longest control socket path ssh takes (`sun_path` is 108 bytes; ssh adds a suffix to a
/// temporary name before it renames the socket into place).
const LONGEST_CONTROL_PATH: usize = 80;

/// How long the master may take to connect and log in before ckpt gives up on it.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

impl Ssh {
    /// Connects, with the shared connection's socket in `control_dir` (or, when that path is too
    /// long for a socket, in a private directory under the system's temporary directory).
    pub fn connect(destination: Destination, options: SshOptions, control_dir: &Path) -> Result<Ssh, SshError> {
        let path = crate::util::find_in_path("ssh").ok_or_else(|| SshError::NoSsh("not on $PATH".into()))?;
        let shown = destination.to_string();
        let io = |action| {
            let destination = shown.clone();
            move |source| SshError::Io { action, destination, source }
        };
        let socket_name = format!("ssh-{}.sock", std::process::id());
        let (control, private_dir) = if control_dir.join(&socket_name).as_os_str().len() <= LONGEST_CONTROL_PATH {
            (control_dir.join(&socket_name), None)
        } else {
            let dir = nix::unistd::mkdtemp(&std::env::temp_dir().join("ckpt-ssh-XXXXXX"))
                .map_err(|e| io("make a directory for the ssh socket")(e.into()))?;
            (dir.join(&socket_name), Some(dir))
        };
        // A socket left by a killed ckpt of the same PID would make ssh run without sharing.
        let _ = std::fs::remove_file(&control);
        let log = control.with_extension("log");
        let mut ssh = Ssh { path, destination, options, control, private_dir, master: None };
        let mut master = ssh.base_command();
        // The master stays this process's child, and dies with it: a killed ckpt leaves no
        // connection behind.
        master.args(["-M", "-N", "-o", "ConnectTimeout=30"]).arg("--").arg(ssh.login());
        // SAFETY: prctl is async-signal-safe and touches no memory.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut master, || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        tracing::debug!(cmd = ?master, "ssh");
        let stderr = std::fs::File::create(&log).map_err(io("log ssh"))?;
        let child =
            master.stdin(Stdio::null()).stdout(Stdio::null()).stderr(stderr).spawn().map_err(io("start ssh"))?;
        ssh.master = Some(child);
        let ready = ssh.wait_for_master(&log);
        let _ = std::fs::remove_file(&log);
        ready.map(|()| ssh)
    }

    /// Waits until the master has logged in and listens on its socket, or has given up.
    fn wait_for_master(&mut self, log: &Path) -> Result<(), SshError> {
        let started = std::time::Instant::now();
        let unreachable = |stderr: String| SshError::Unreachable {
            destination: self.destination.to_string(),
            stderr: stderr.trim().to_string(),
        };
        loop {
            let master = self.master.as_mut().expect("started");
            if let Ok(Some(_)) = master.try_wait() {
                self.master = None;
                return Err(unreachable(std::fs::read_to_string(log).unwrap_or_default()));
            }
            if std::fs::symlink_metadata(&self.control).is_ok_and(|m| m.file_type().is_socket()) {
                return Ok(());
            }
            if started.elapsed() > CONNECT_TIMEOUT {
                return Err(unreachable(format!("no login within {} s", CONNECT_TIMEOUT.as_secs())));
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    /// ssh with the options every use shares, before the login.
    fn base_command(&self) -> Command {
        let mut cmd = Command::new(&self.path);
        // No prompt can be answered: a password or an unknown host key fails at once.
        cmd.args(["-T", "-o", "BatchMode=yes", "-o", "ExitOnForwardFailure=yes"]);
        if let Some(port) = self.destination.port {
            cmd.arg("-p").arg(port.to_string());
        }
        if let Some(identity) = &self.options.identity {
            cmd.arg("-i").arg(identity);
        }
        for option in &self.options.options {
            cmd.arg("-o").arg(option);
        }
        // A link that goes silent is given up within half a minute, not held open while the
        // container stays down (ssh takes the first value given, so `--ssh-option` comes first).
        cmd.args(["-o", "ServerAliveInterval=10", "-o", "ServerAliveCountMax=3"]);
        cmd.arg("-S").arg(&self.control);
        // Its own process group: Ctrl-C reaches ckpt, which stops at its next safe point, and
        // never cuts the stream or the destination's restore off midway.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        cmd
    }

    fn login(&self) -> String {
        match &self.destination.user {
            Some(user) => format!("{user}@{}", self.destination.host),
            None => self.destination.host.clone(),
        }
    }

    fn command(&self, args: &[String]) -> Command {
        let mut cmd = self.base_command();
        cmd.arg("--").arg(self.login()).arg(self.remote_command(args));
        cmd
    }

    /// `ssh -O CONTROL`: a request to the shared connection.
    fn control_request(&self, request: &[&str]) -> Result<(), SshError> {
        let mut cmd = self.base_command();
        cmd.arg("-O").args(request).arg("--").arg(self.login());
        let output = cmd.stdin(Stdio::null()).output().map_err(|source| SshError::Io {
            action: "control ssh",
            destination: self.destination.to_string(),
            source,
        })?;
        if output.status.success() {
            return Ok(());
        }
        Err(SshError::Failed {
            destination: self.destination.to_string(),
            command: format!("ssh -O {}", request.join(" ")),
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        })
    }

    /// The shell line the destination runs: the remote ckpt, its root, then each argument quoted.
    fn remote_command(&self, args: &[String]) -> String {
        let mut line = self.options.remote_ckpt.clone().unwrap_or_else(|| "ckpt".into());
        if let Some(root) = &self.destination.root {
            line.push_str(" --root ");
            line.push_str(&shell_quote(&root.to_string_lossy()));
        }
        for arg in args {
            line.push(' ');
            line.push_str(&shell_quote(arg));
        }
        line
    }
}

impl Drop for Ssh {
    fn drop(&mut self) {
        if let Some(mut master) = self.master.take() {
            if self.control_request(&["exit"]).is_err() {
                let _ = master.kill();
            }
            let _ = master.wait();
            let _ = std::fs::remove_file(&self.control);
        }
        let _ = std::fs::remove_file(self.control.with_extension("pages.sock"));
        if let Some(dir) = &self.private_dir {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// Relays, in a thread of its own, between `relayed` and the first connection to `listener`
/// that comes from this user (ssh's forward), until both directions have ended. A connection
/// from anyone else is closed unread.
pub fn relay_first_connection(listener: std::os::unix::net::UnixListener, relayed: std::os::unix::net::UnixStream) {
    std::thread::spawn(move || {
        let own_uid = nix::unistd::geteuid().as_raw();
        let connection = loop {
            let Ok((connection, _)) = listener.accept() else { return };
            if peer_uid(&connection) == Some(own_uid) {
                break connection;
            }
            tracing::warn!("a connection to the post-copy page channel from another user was refused");
        };
        drop(listener);
        let pump = |mut from: std::os::unix::net::UnixStream, mut to: std::os::unix::net::UnixStream| {
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut from, &mut to);
                let _ = to.shutdown(std::net::Shutdown::Write);
            })
        };
        let (Ok(connection_out), Ok(relayed_out)) = (connection.try_clone(), relayed.try_clone()) else { return };
        let there = pump(connection, relayed_out);
        let back = pump(relayed, connection_out);
        let _ = (there.join(), back.join());
    });
}

/// The user on the other end of a Unix socket connection (`SO_PEERCRED`).
fn peer_uid(connection: &std::os::unix::net::UnixStream) -> Option<u32> {
    use std::os::fd::AsRawFd;
    let mut cred = libc::ucred { pid: 0, uid: 0, gid: 0 };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cred`, which is that large.
    let got = unsafe {
        libc::getsockopt(
            connection.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    (got == 0).then_some(cred.uid)
}

impl RemoteCkpt for Ssh {
    fn destination(&self) -> String {
        self.destination.to_string()
    }

    fn forward_to_here(&self, remote_socket: &str) -> Result<std::os::unix::net::UnixListener, SshError> {
        let io = |action| {
            let destination = self.destination.to_string();
            move |source| SshError::Io { action, destination, source }
        };
        // Beside the control socket, whose directory is private and whose path is short enough.
        let local = self.control.with_extension("pages.sock");
        let _ = std::fs::remove_file(&local);
        let listener = std::os::unix::net::UnixListener::bind(&local).map_err(io("listen for the page channel"))?;
        std::fs::set_permissions(&local, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .map_err(io("listen for the page channel"))?;
        let forwarded = self.control_request(&["forward", "-R", &format!("{remote_socket}:{}", local.display())]);
        if let Err(e) = forwarded {
            let _ = std::fs::remove_file(&local);
            return Err(e);
        }
        Ok(listener)
    }

    fn run(&self, args: &[String], input: Option<Upload<'_>>) -> Result<String, SshError> {
        let destination = self.destination.to_string();
        let io = |action| {
            let destination = destination.clone();
            move |source| SshError::Io { action, destination, source }
        };
        let mut cmd = self.command(args);
        cmd.stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() });
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        tracing::debug!(?cmd, "ssh");
        let mut child = cmd.spawn().map_err(io("start ssh"))?;
        // Both pipes drain on their own threads, so a chatty far side never stalls the upload;
        // what is kept of each is bounded, and the rest is read and dropped.
        let drain =
            |pipe: Option<Box<dyn Read + Send>>| std::thread::spawn(move || pipe.map(kept_output).unwrap_or_default());
        let stdout = drain(child.stdout.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
        let stderr = drain(child.stderr.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
        let sent = match (input, child.stdin.take()) {
            (Some(write), Some(stdin)) => {
                let mut stdin = std::io::BufWriter::with_capacity(1 << 20, stdin);
                write(&mut stdin).and_then(|()| stdin.flush())
            }
            _ => Ok(()),
        };
        let status = child.wait().map_err(io("wait for ssh"))?;
        let stdout = stdout.join().unwrap_or_default();
        let stderr = stderr.join().unwrap_or_default().trim().to_string();
        match status.code() {
            Some(0) => {
                sent.map_err(io("send the checkpoint"))?;
                Ok(stdout)
            }
            Some(SSH_CONNECTION_FAILED) | None => Err(SshError::Unreachable { destination, stderr }),
            Some(code) => Err(SshError::Failed {
                destination,
                command: args.join(" "),
                status: format!("exit status {code}"),
                stderr: if stderr.is_empty() { sent.err().map(|e| e.to_string()).unwrap_or_default() } else { stderr },
            }),
        }
    }
}

/// What a link probe sends: enough to fill the channel's windows several times over, little
/// enough to cost a migration tens of milliseconds on a fast link.
const LINK_PROBE_BYTES: usize = 8 << 20;

/// The rate `remote` takes data at through the channel, in bytes a second: `ckpt __link-probe`
/// there times the probe from its first byte to its last, so neither ssh's nor ckpt's start is
/// counted. The bytes are pseudo-random, so that a compressing channel cannot shrink them.
pub fn measure_link(remote: &dyn RemoteCkpt) -> Result<u64, SshError> {
    let mut noise = vec![0u8; 1 << 20];
    blake3::Hasher::new().update(b"ckpt link probe").finalize_xof().fill(&mut noise);
    let mut upload = |out: &mut dyn Write| (0..LINK_PROBE_BYTES / noise.len()).try_for_each(|_| out.write_all(&noise));
    let answer = remote.run(&["__link-probe".to_string()], Some(&mut upload))?;
    let failed = |detail: &str| SshError::Failed {
        destination: remote.destination(),
        command: "__link-probe".into(),
        status: "an answer ckpt cannot read".into(),
        stderr: format!("{detail}: {answer:?}"),
    };
    let probe: LinkProbe = serde_json::from_str(answer.trim()).map_err(|e| failed(&e.to_string()))?;
    if probe.micros == 0 || probe.timed_bytes == 0 {
        return Err(failed("too few bytes were timed"));
    }
    Ok(probe.timed_bytes.saturating_mul(1_000_000) / probe.micros)
}

/// What `ckpt __link-probe` answers: the bytes that came after the first read, and the time
/// from the first byte to the last.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct LinkProbe {
    pub timed_bytes: u64,
    pub micros: u64,
}

/// The far side of [`measure_link`]: reads `input` to its end and times it from the first byte.
pub fn answer_link_probe(mut input: impl Read) -> std::io::Result<LinkProbe> {
    let mut buffer = vec![0u8; 1 << 20];
    let first = input.read(&mut buffer)?;
    let started = std::time::Instant::now();
    let mut timed_bytes = 0u64;
    if first > 0 {
        loop {
            match input.read(&mut buffer)? {
                0 => break,
                n => timed_bytes += n as u64,
            }
        }
    }
    Ok(LinkProbe { timed_bytes, micros: started.elapsed().as_micros() as u64 })
}

/// How much of the far side's stdout and stderr is kept: its answers are a line or a JSON
/// document, and its errors a few lines.
const KEPT_OUTPUT_BYTES: u64 = 1 << 20;

/// The first [`KEPT_OUTPUT_BYTES`] of `pipe`, as text; the rest is read and dropped, so that the
/// far side never blocks on a full pipe.
fn kept_output(mut pipe: impl Read) -> String {
    let mut text = Vec::new();
    let _ = (&mut pipe).take(KEPT_OUTPUT_BYTES).read_to_end(&mut text);
    let _ = std::io::copy(&mut pipe, &mut std::io::sink());
    String::from_utf8_lossy(&text).into_owned()
}

/// One POSIX shell word: single-quoted unless it is plainly safe.
fn shell_quote(word: &str) -> String {
    if !word.is_empty() && word.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:,@%+".contains(c)) {
        return word.to_string();
    }
    format!("'{}'", word.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_link_probe_is_timed_from_its_first_byte_and_read_back_as_a_rate() {
        struct Chunks(Vec<Vec<u8>>);
        impl Read for Chunks {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                let Some(chunk) = self.0.first_mut() else { return Ok(0) };
                let n = chunk.len().min(buf.len());
                buf[..n].copy_from_slice(&chunk[..n]);
                chunk.drain(..n);
                if chunk.is_empty() {
                    self.0.remove(0);
                }
                Ok(n)
            }
        }
        let probe = answer_link_probe(Chunks(vec![vec![1; 1000], vec![2; 3000], vec![3; 500]])).unwrap();
        assert_eq!(probe.timed_bytes, 3500, "the first read starts the clock");
        assert_eq!(answer_link_probe(std::io::empty()).unwrap().timed_bytes, 0);

        struct Answers(&'static str);
        impl RemoteCkpt for Answers {
            fn destination(&self) -> String {
                "ssh://far".into()
            }
            fn run(&self, args: &[String], input: Option<Upload<'_>>) -> Result<String, SshError> {
                assert_eq!(args, ["__link-probe"]);
                let mut sent = Vec::new();
                input.expect("the probe sends bytes")(&mut sent).unwrap();
                assert_eq!(sent.len(), LINK_PROBE_BYTES);
                Ok(self.0.to_string())
            }
            fn forward_to_here(&self, _: &str) -> Result<std::os::unix::net::UnixListener, SshError> {
                unreachable!()
            }
        }
        assert_eq!(measure_link(&Answers(r#"{"timed-bytes": 8000000, "micros": 16000}"#)).unwrap(), 500_000_000);
        let unreadable = measure_link(&Answers("Error: unrecognized subcommand")).unwrap_err().to_string();
        assert!(unreadable.contains("__link-probe"), "{unreadable}");
        assert!(measure_link(&Answers(r#"{"timed-bytes": 0, "micros": 0}"#)).is_err());
    }

    use super::*;

    #[test]
    fn only_a_bounded_part_of_the_far_sides_output_is_kept_and_the_rest_is_drained() {
        let mut chatty = std::io::Cursor::new(vec![b'x'; 3 << 20]);
        assert_eq!(kept_output(&mut chatty).len() as u64, KEPT_OUTPUT_BYTES);
        assert_eq!(chatty.position(), 3 << 20, "read to the end");
    }

    #[test]
    fn a_silent_link_is_given_up_and_the_users_options_come_first() {
        let ssh = Ssh {
            path: "ssh".into(),
            destination: Destination::parse("ssh://root@far:2222").unwrap(),
            options: SshOptions { options: vec!["ServerAliveInterval=60".into()], ..Default::default() },
            control: "/run/ckpt/ssh-1.sock".into(),
            private_dir: None,
            master: None,
        };
        let args: Vec<String> = ssh.base_command().get_args().map(|a| a.to_string_lossy().into_owned()).collect();
        let at = |word: &str| args.iter().position(|a| a == word).unwrap_or_else(|| panic!("{word} in {args:?}"));
        assert!(at("BatchMode=yes") < at("ServerAliveInterval=60"), "ckpt's own safety options win");
        assert!(at("ServerAliveInterval=60") < at("ServerAliveInterval=10"), "the user's keepalive wins: {args:?}");
        assert!(args.contains(&"ServerAliveCountMax=3".to_string()));
    }

    #[test]
    fn ssh_runs_in_a_process_group_of_its_own_so_that_ctrl_c_reaches_only_ckpt() {
        let dir = tempfile::tempdir().unwrap();
        // In place of ssh: writes its PID and its process group (field 5 of /proc/self/stat).
        let fake = dir.path().join("ssh");
        let out = dir.path().join("out");
        std::fs::write(&fake, format!("#!/bin/sh\necho $$ $(cut -d' ' -f5 /proc/$$/stat) > {}\n", out.display()))
            .unwrap();
        std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let ssh = Ssh {
            path: fake,
            destination: Destination::parse("ssh://root@far").unwrap(),
            options: SshOptions::default(),
            control: dir.path().join("ssh-1.sock"),
            private_dir: None,
            master: None,
        };
        assert!(ssh.command(&["ps".to_string()]).status().unwrap().success());
        let text = std::fs::read_to_string(&out).unwrap();
        let (pid, group) = text.trim().split_once(' ').unwrap();
        assert_eq!(pid, group, "ssh leads a process group of its own");
        assert_ne!(group, nix::unistd::getpgrp().to_string(), "not ckpt's, which the terminal's Ctrl-C reaches");
    }

    #[test]
    fn destinations_read_as_podman_connections_do() {
        let d = Destination::parse("ssh://root@10.0.0.2:2222/var/lib/ckpt2").unwrap();
        assert_eq!(d.user.as_deref(), Some("root"));
        assert_eq!(d.host, "10.0.0.2");
        assert_eq!(d.port, Some(2222));
        assert_eq!(d.root, Some(PathBuf::from("/var/lib/ckpt2")));
        assert_eq!(d.to_string(), "ssh://root@10.0.0.2:2222/var/lib/ckpt2");
        let plain = Destination::parse("ssh://box").unwrap();
        assert_eq!((plain.user, plain.port, plain.root), (None, None, None));
        for bad in ["box", "ssh://", "ssh://-oProxyCommand=x", "ssh://a b", "ssh://h:port", "ssh://u;rm@h", "ssh://h/"]
        {
            let err = Destination::parse(bad).unwrap_err().to_string();
            assert!(err.contains("ssh://[USER@]HOST[:PORT][/ROOT]"), "{bad}: {err}");
        }
    }

    #[test]
    fn the_remote_line_quotes_every_argument() {
        let ssh = Ssh {
            path: "ssh".into(),
            control: "/run/ckpt/ssh.sock".into(),
            destination: Destination::parse("ssh://h/srv/my root").unwrap_or(Destination {
                user: None,
                host: "h".into(),
                port: None,
                root: Some("/srv/my root".into()),
            }),
            options: SshOptions { remote_ckpt: Some("/opt/ckpt --runroot /run/x".into()), ..Default::default() },
            private_dir: None,
            master: None,
        };
        let line = ssh.remote_command(&["restore".into(), "--import".into(), "-".into(), "it's".into()]);
        assert_eq!(line, r"/opt/ckpt --runroot /run/x --root '/srv/my root' restore --import - 'it'\''s'");
    }
}
