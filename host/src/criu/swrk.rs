//! A dump through CRIU's RPC (`criu swrk`), the way runc asks for one, without runc's own
//! start-up or the CRIU process it starts only to learn CRIU's version.
//!
//! The request is written in protobuf's wire format by hand from `images/rpc.proto`'s field
//! numbers: one message with a few dozen scalar fields does not need generated code.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::proto::{Value, decode_message, put_varint};

/// `criu_req_type` in rpc.proto.
const REQ_DUMP: u64 = 1;
const REQ_NOTIFY: u64 = 6;

/// The descriptor `criu swrk` is told to talk on.
const SWRK_FD: i32 = 3;

/// CRIU's answers are a few hundred bytes; runc reads them into 40 KiB.
const RESPONSE_BUFFER: usize = 40 * 1024;

/// Everything a dump asks of CRIU. Each field is one of `criu_opts`, named as there.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DumpRequest {
    pub images_dir: PathBuf,
    pub work_dir: PathBuf,
    /// CRIU's log, in `work_dir`.
    pub log_file: String,
    pub pid: i32,
    /// The container's root filesystem, where CRIU finds its mounts' roots.
    pub root: PathBuf,
    pub leave_running: bool,
    pub tcp_established: bool,
    pub file_locks: bool,
    /// Mounts that CRIU records by key and the restore binds again (`ext_mnt`: key, value).
    pub ext_mounts: Vec<(String, String)>,
    /// Namespaces CRIU leaves to the restore (`external`: `net[inode]:key`).
    pub external: Vec<String>,
    /// Namespaces CRIU dumps empty (a `CLONE_NEW*` mask).
    pub empty_ns: u32,
    /// The freezer cgroup CRIU freezes the processes with.
    pub freeze_cgroup: Option<String>,
    /// A CRIU configuration file read after the request, which overrides it.
    pub config_file: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum SwrkError {
    #[error("could not start criu swrk: {0}")]
    Spawn(std::io::Error),
    #[error("criu swrk: {0}")]
    Talk(std::io::Error),
    #[error("criu swrk ended without answering the dump ({0})")]
    NoAnswer(String),
    #[error("criu swrk answered something that is not a CRIU response ({0} bytes)")]
    Garbled(usize),
    /// `detail` is CRIU's errno, where it gave one.
    #[error("criu dump failed{detail}")]
    Failed { detail: String },
    #[error("criu swrk exited with {0} after its answer")]
    Exit(String),
}

impl DumpRequest {
    /// The `criu_req` of a dump, with CRIU reaching its directories through this process's
    /// descriptors `images_fd` and `work_fd` (CRIU opens `/proc/<peer>/fd/<n>`).
    fn encode(&self, images_fd: i32, work_fd: i32) -> Vec<u8> {
        let mut opts = Vec::new();
        put_int(&mut opts, 1, images_fd as u64);
        put_int(&mut opts, 2, self.pid as u64);
        put_int(&mut opts, 3, self.leave_running.into());
        put_int(&mut opts, 4, 0); // ext_unix_sk
        put_int(&mut opts, 5, self.tcp_established.into());
        put_int(&mut opts, 7, 0); // shell_job
        put_int(&mut opts, 8, self.file_locks.into());
        put_int(&mut opts, 9, 4); // log_level: debug, as runc asks, for the errors' context
        put_bytes(&mut opts, 10, self.log_file.as_bytes());
        // Notifications are answered but acted on by no one: runc's only act on a dump that
        // leaves the container running is a marker file that nothing reads.
        put_int(&mut opts, 12, 1); // notify_scripts
        put_bytes(&mut opts, 13, self.root.as_os_str().as_encoded_bytes());
        put_int(&mut opts, 16, 0); // auto_dedup
        put_int(&mut opts, 17, work_fd as u64);
        for (key, value) in &self.ext_mounts {
            let mut entry = Vec::new();
            put_bytes(&mut entry, 1, key.as_bytes());
            put_bytes(&mut entry, 2, value.as_bytes());
            put_bytes(&mut opts, 23, &entry);
        }
        put_int(&mut opts, 24, 1); // manage_cgroups
        for external in &self.external {
            put_bytes(&mut opts, 37, external.as_bytes());
        }
        put_int(&mut opts, 38, self.empty_ns.into());
        if let Some(cgroup) = &self.freeze_cgroup {
            put_bytes(&mut opts, 44, cgroup.as_bytes());
        }
        put_int(&mut opts, 48, 0); // lazy_pages
        put_int(&mut opts, 50, 1); // orphan_pts_master
        if let Some(config) = &self.config_file {
            put_bytes(&mut opts, 51, config.as_bytes());
        }
        let mut req = Vec::new();
        put_int(&mut req, 1, REQ_DUMP);
        put_bytes(&mut req, 2, &opts);
        req
    }
}

fn put_int(out: &mut Vec<u8>, field: u64, value: u64) {
    put_varint(out, field << 3);
    put_varint(out, value);
}

fn put_bytes(out: &mut Vec<u8>, field: u64, bytes: &[u8]) {
    put_varint(out, (field << 3) | 2);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// What a `criu_resp` says, as far as a dump needs.
#[derive(Debug, PartialEq, Eq)]
enum Response {
    /// A notification (an action script's moment) that waits for an answer.
    Notify(String),
    Done {
        success: bool,
        errno: i32,
    },
}

fn decode_response(bytes: &[u8]) -> Option<Response> {
    let (mut kind, mut success, mut errno, mut script) = (None, false, 0, None);
    for (field, value) in decode_message(bytes)? {
        match (field, value) {
            (1, Value::Varint(v)) => kind = Some(v),
            (2, Value::Varint(v)) => success = v != 0,
            (5, Value::Bytes(notify)) => {
                script = decode_message(notify)?.into_iter().find_map(|(field, value)| match (field, value) {
                    (1, Value::Bytes(name)) => Some(String::from_utf8_lossy(name).into_owned()),
                    _ => None,
                });
            }
            (7, Value::Varint(v)) => errno = v as i32,
            _ => {}
        }
    }
    match kind? {
        REQ_NOTIFY if success => Some(Response::Notify(script.unwrap_or_default())),
        _ => Some(Response::Done { success, errno }),
    }
}

/// Dumps with `criu` (its path) as `request` says, with `env_config` (a CRIU configuration file
/// read before the request, for what rpc.proto has no field for) in CRIU's environment. CRIU runs
/// in its own process group, so that Ctrl-C reaches ckpt, which rolls back at a safe point,
/// never CRIU in the middle of a dump.
pub fn dump(criu: &Path, request: &DumpRequest, env_config: Option<&Path>) -> Result<(), SwrkError> {
    let images = File::open(&request.images_dir).map_err(SwrkError::Spawn)?;
    let work = File::open(&request.work_dir).map_err(SwrkError::Spawn)?;
    let (client, server) = seqpacket_pair().map_err(SwrkError::Spawn)?;
    let mut cmd = Command::new(criu);
    cmd.arg("swrk").arg(SWRK_FD.to_string());
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).process_group(0);
    if let Some(config) = env_config {
        cmd.env("CRIU_CONFIG_FILE", config);
    }
    crate::util::pass_fds(&mut cmd, vec![(server, SWRK_FD)]).map_err(SwrkError::Spawn)?;
    tracing::debug!(criu = %criu.display(), pid = request.pid, "criu swrk dump");
    let spawned = cmd.spawn();
    // This process's copy of CRIU's end closes here, so a CRIU that dies reads as end-of-file.
    drop(cmd);
    let mut child = spawned.map_err(SwrkError::Spawn)?;
    let mut socket = File::from(client);
    let answer = converse(&mut socket, &request.encode(images.as_raw_fd(), work.as_raw_fd()));
    // CRIU ends once the request's socket closes (runc closes its write side likewise).
    drop(socket);
    let status = child.wait().map_err(SwrkError::Talk)?;
    match answer? {
        Some(Response::Done { success: true, .. }) if status.success() => Ok(()),
        Some(Response::Done { success: true, .. }) => Err(SwrkError::Exit(status.to_string())),
        // CRIU's own message (`cr_errmsg`) is the first error it logged, which may be one it
        // lived with (its rlimit, here): the caller shows the log's last errors instead.
        Some(Response::Done { errno: 0, .. }) => Err(SwrkError::Failed { detail: String::new() }),
        Some(Response::Done { errno, .. }) => {
            Err(SwrkError::Failed { detail: format!(" ({})", std::io::Error::from_raw_os_error(errno)) })
        }
        Some(Response::Notify(_)) | None => Err(SwrkError::NoAnswer(status.to_string())),
    }
}

/// Sends `request` and answers CRIU's notifications until its final answer (`None` when CRIU
/// closed the socket without one).
fn converse(socket: &mut File, request: &[u8]) -> Result<Option<Response>, SwrkError> {
    socket.write_all(request).map_err(SwrkError::Talk)?;
    let mut buf = vec![0u8; RESPONSE_BUFFER];
    loop {
        let n = socket.read(&mut buf).map_err(SwrkError::Talk)?;
        if n == 0 {
            return Ok(None);
        }
        match decode_response(&buf[..n]).ok_or(SwrkError::Garbled(n))? {
            Response::Notify(script) => {
                tracing::trace!(script, "criu notification");
                let mut ack = Vec::new();
                put_int(&mut ack, 1, REQ_NOTIFY);
                put_int(&mut ack, 3, 1); // notify_success
                socket.write_all(&ack).map_err(SwrkError::Talk)?;
            }
            done => return Ok(Some(done)),
        }
    }
}

/// A connected pair of message sockets, each closed on exec: CRIU's `swrk` reads one request per
/// message, as runc sends them.
fn seqpacket_pair() -> std::io::Result<(OwnedFd, OwnedFd)> {
    use std::os::fd::FromRawFd;
    let mut fds = [0; 2];
    // SAFETY: socketpair writes two descriptors into the array it is given.
    if unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0, fds.as_mut_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both descriptors are fresh and owned by nothing else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(bytes: &[u8]) -> Vec<(u64, String)> {
        decode_message(bytes)
            .unwrap()
            .into_iter()
            .map(|(field, value)| match value {
                Value::Varint(v) => (field, v.to_string()),
                Value::Bytes(b) => (field, String::from_utf8_lossy(b).into_owned()),
            })
            .collect()
    }

    #[test]
    fn a_dump_request_carries_runc_s_options_in_rpc_proto_s_fields() {
        let request = DumpRequest {
            log_file: "dump.log".into(),
            pid: 4242,
            root: "/r/merged".into(),
            leave_running: true,
            tcp_established: false,
            file_locks: true,
            ext_mounts: vec![("/etc/hosts".into(), "/etc/hosts".into()), ("/proc/kcore".into(), "/dev/null".into())],
            external: vec!["net[4026532000]:extRootNetNS".into()],
            empty_ns: libc::CLONE_NEWNET as u32,
            freeze_cgroup: Some("/sys/fs/cgroup/freezer/ckpt/x".into()),
            config_file: Some("/etc/criu/runc.conf".into()),
            ..DumpRequest::default()
        };
        let encoded = request.encode(7, 8);
        let req = decode_message(&encoded).unwrap();
        assert!(matches!(req[0], (1, Value::Varint(REQ_DUMP))));
        let Value::Bytes(opts) = req[1].1 else { panic!("opts is a message") };
        let opts = fields(opts);
        let get = |n: u64| opts.iter().filter(|(f, _)| *f == n).map(|(_, v)| v.as_str()).collect::<Vec<_>>();
        assert_eq!((get(1), get(17)), (vec!["7"], vec!["8"]));
        assert_eq!((get(2), get(3), get(5), get(8)), (vec!["4242"], vec!["1"], vec!["0"], vec!["1"]));
        assert_eq!((get(9), get(10), get(13)), (vec!["4"], vec!["dump.log"], vec!["/r/merged"]));
        assert_eq!((get(12), get(24), get(50), get(48)), (vec!["1"], vec!["1"], vec!["1"], vec!["0"]));
        assert_eq!(get(38), vec![(libc::CLONE_NEWNET as u32).to_string()]);
        assert_eq!(get(37), vec!["net[4026532000]:extRootNetNS"]);
        assert_eq!((get(44), get(51)), (vec!["/sys/fs/cgroup/freezer/ckpt/x"], vec!["/etc/criu/runc.conf"]));
        let mounts: Vec<_> = decode_message(opts.iter().find(|(f, _)| *f == 23).unwrap().1.as_bytes())
            .unwrap()
            .into_iter()
            .map(|(f, v)| (f, matches!(v, Value::Bytes(b"/etc/hosts"))))
            .collect();
        assert_eq!(mounts, [(1, true), (2, true)]);
        assert_eq!(get(23).len(), 2, "one ext_mnt message per mount");
    }

    #[test]
    fn responses_are_told_apart() {
        let mut notify = Vec::new();
        put_int(&mut notify, 1, REQ_NOTIFY);
        put_int(&mut notify, 2, 1);
        let mut script = Vec::new();
        put_bytes(&mut script, 1, b"post-dump");
        put_bytes(&mut notify, 5, &script);
        assert_eq!(decode_response(&notify), Some(Response::Notify("post-dump".into())));

        let mut failed = Vec::new();
        put_int(&mut failed, 1, REQ_DUMP);
        put_int(&mut failed, 2, 0);
        put_int(&mut failed, 7, 2);
        put_bytes(&mut failed, 9, b"no such process");
        assert_eq!(decode_response(&failed), Some(Response::Done { success: false, errno: 2 }));
        assert_eq!(decode_response(&[0xff]), None);
    }
}
