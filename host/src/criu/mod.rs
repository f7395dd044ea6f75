//! CRIU: the version and feature probes, and its statistics images.

pub mod hold;
pub mod images;
mod proto;
pub mod sockets;
mod stats;
pub mod swrk;

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

#[cfg(test)]
pub use stats::encode_dump_stats;
pub use stats::{DumpStats, RestoreStats, parse_dump_stats, read_dump_stats, read_restore_stats};

/// The oldest CRIU that podman accepts (3.11).
pub const MIN_CRIU_VERSION: u32 = 31100;

#[derive(Debug, thiserror::Error)]
pub enum CriuError {
    #[error("criu not found in $PATH; run scripts/setup to install CRIU 4.2 or newer")]
    NotFound,
    #[error("failed to check for criu version: {0}")]
    Version(String),
    #[error("checkpoint/restore requires at least CRIU {MIN_CRIU_VERSION}, current version is {0}")]
    TooOld(u32),
    #[error(
        "system (architecture/kernel/CRIU) does not support memory tracking: 'criu check --feature mem_dirty_track' says: {0}"
    )]
    NoMemTrack(String),
    #[error("this host cannot restore lazily (post-copy): 'criu check --feature uffd-noncoop' says: {0}")]
    NoLazyPages(String),
    #[error("this host cannot dump lazily (post-copy): {0}")]
    NoLazyPageServer(String),
    #[error("criu lazy-pages could not start: {0}")]
    LazyPagesDaemon(String),
    #[error("CRIU statistics file {path:?} is unreadable: {detail}")]
    Stats { path: PathBuf, detail: String },
    #[error("CRIU image {path:?} is unreadable: {detail}")]
    Image { path: PathBuf, detail: String },
    #[error(
        "CRIU image {image:?} would give process {process:?} capabilities that the container does not have ({capabilities}): a checkpoint cannot grant its processes more than the container's own set"
    )]
    CapabilitiesBeyondContainer { image: PathBuf, process: String, capabilities: String },
}

pub trait Criu: Send + Sync {
    /// major*10000 + minor*100 + sublevel, as go-criu and podman compute it.
    fn version(&self) -> Result<u32, CriuError>;
    /// Whether pre-dumps can track dirty memory on this host.
    fn memory_tracking(&self) -> Result<(), CriuError>;
    /// Whether this host can restore lazily (post-copy): `criu check --feature uffd-noncoop`.
    fn lazy_pages(&self) -> Result<(), CriuError> {
        Err(CriuError::NoLazyPages("not probed".into()))
    }
    /// Whether a lazy dump's page server can serve pages here (see [`lazy_tee_pipe_fits`]).
    fn lazy_page_server(&self) -> Result<(), CriuError> {
        Err(CriuError::NoLazyPageServer("not probed".into()))
    }
    /// Whether CRIU can lock a container's network with nftables (`criu check --feature
    /// network_lock_nftables`): one netlink transaction in CRIU's own process, where its
    /// default, iptables, starts `iptables-restore` processes to lock and unlock (about 65 ms of
    /// a small container's 210 ms dump here). The lock is the same either way: packets to the
    /// container are dropped from its freeze until its restore.
    fn nftables_lock(&self) -> bool {
        false
    }
    /// Whether CRIU takes `--skip-nf-ct` (the patch scripts/setup applies): a dump that keeps no
    /// TCP connection then leaves out the conntrack entries, which CRIU finds by walking the
    /// host's whole table (about 19 ms of CPU, with the container frozen, here).
    fn skips_conntrack(&self) -> bool {
        false
    }
    /// Whether CRIU looks at a freezing cgroup again within milliseconds rather than every 100 ms
    /// (the patch scripts/setup applies beside `--skip-nf-ct`, by which the build is told).
    fn polls_freezer_soon(&self) -> bool {
        self.skips_conntrack()
    }
    /// Starts `criu lazy-pages`, which fetches pages through `page_socket`, connected to the
    /// source's page server, for the restore about to run from `images` (its socket goes in
    /// `work`). It runs on its own, and ends once every page has been fetched.
    fn serve_lazy_pages(&self, images: &Path, work: &Path, page_socket: OwnedFd) -> Result<(), CriuError> {
        let _ = (images, work, page_socket);
        Err(CriuError::NoLazyPages("not available".into()))
    }
}

/// capability(7)'s number for CAP_SYS_RESOURCE.
const CAP_SYS_RESOURCE: u32 = 24;

/// How large a pipe CRIU 4.2.1's page server asks for when it tees a lazy dump's pages: it grows
/// one to PIPE_MAX_SIZE pages, about 3.2 MiB.
const LAZY_TEE_PIPE_BYTES: u64 = 4 << 20;

/// Whether CRIU's page server can tee a lazy dump's pages here. Without CAP_SYS_RESOURCE the
/// kernel refuses a pipe above `fs.pipe-max-size` (1 MiB by default); CRIU 4.2.1 then fails its
/// first transfer (`page-pipe: splice: -1: Bad file descriptor`) and the restore there waits on
/// memory that never comes. The CRIU that scripts/setup builds (`patched`) sizes its pipe within
/// the limit.
pub fn lazy_tee_pipe_fits(cap_sys_resource: bool, pipe_max_size: Option<u64>, patched: bool) -> Result<(), String> {
    if cap_sys_resource || patched || pipe_max_size.is_some_and(|max| max >= LAZY_TEE_PIPE_BYTES) {
        return Ok(());
    }
    Err(format!(
        "CRIU's page server would need a {LAZY_TEE_PIPE_BYTES}-byte pipe and, without CAP_SYS_RESOURCE, fs.pipe-max-size ({}) is the limit: install the CRIU that scripts/setup builds, raise fs.pipe-max-size, or set [migration] post-copy = true to use this CRIU anyway",
        pipe_max_size.map_or("unreadable".to_string(), |max| format!("{max} bytes"))
    ))
}

pub struct CriuBinary {
    path: PathBuf,
}

impl CriuBinary {
    pub fn find() -> Result<CriuBinary, CriuError> {
        crate::util::find_in_path("criu").map(|path| CriuBinary { path }).ok_or(CriuError::NotFound)
    }

    /// Whether CRIU run with `args` succeeds, asked once per CRIU build and kernel (`what` names
    /// the answer among the kept probes).
    fn passes(&self, what: &'static str, args: &[&str]) -> bool {
        crate::util::cached_probe(&self.path, what, || {
            tracing::debug!(criu = %self.path.display(), ?args, "criu probe");
            let passes = Command::new(&self.path)
                .args(args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|status| status.success());
            Ok::<_, std::convert::Infallible>(passes)
        })
        .unwrap_or(false)
    }

    /// CRIU's answer: yes, or what it said for no.
    fn probe_memory_tracking(&self) -> Result<(), String> {
        tracing::debug!(criu = %self.path.display(), "criu check --feature mem_dirty_track");
        let output = Command::new(&self.path)
            .args(["check", "--feature", "mem_dirty_track"])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| e.to_string())?;
        if output.status.success() {
            Ok(())
        } else {
            let said =
                format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
            Err(said.trim().to_string())
        }
    }
}

impl Criu for CriuBinary {
    fn version(&self) -> Result<u32, CriuError> {
        crate::util::cached_probe(&self.path, "version", || {
            let output = Command::new(&self.path)
                .arg("--version")
                .stdin(Stdio::null())
                .output()
                .map_err(|e| CriuError::Version(e.to_string()))?;
            let text = String::from_utf8_lossy(&output.stdout);
            parse_version(&text)
                .ok_or_else(|| CriuError::Version(format!("unexpected 'criu --version' output {:?}", text.trim())))
        })
    }

    fn lazy_pages(&self) -> Result<(), CriuError> {
        crate::util::cached_probe(&self.path, "uffd-noncoop", || {
            let output = Command::new(&self.path)
                .args(["check", "--feature", "uffd-noncoop"])
                .stdin(Stdio::null())
                .output()
                .map_err(|e| CriuError::NoLazyPages(e.to_string()))?;
            if output.status.success() {
                return Ok(());
            }
            let said =
                format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
            Err(CriuError::NoLazyPages(said.trim().to_string()))
        })
    }

    fn nftables_lock(&self) -> bool {
        self.passes("network_lock_nftables", &["check", "--feature", "network_lock_nftables"])
    }

    fn skips_conntrack(&self) -> bool {
        // An option CRIU does not know stops it before `-V` prints its version.
        self.passes("skip-nf-ct", &["--skip-nf-ct", "-V"])
    }

    fn lazy_page_server(&self) -> Result<(), CriuError> {
        // scripts/setup installs CRIU under a prefix with its patches' stamp in share/ckpt.
        let stamp =
            self.path.parent().and_then(Path::parent).map(|prefix| prefix.join("share/ckpt/criu-patches.sha256"));
        let patched = stamp.is_some_and(|stamp| stamp.is_file());
        let pipe_max_size =
            std::fs::read_to_string("/proc/sys/fs/pipe-max-size").ok().and_then(|s| s.trim().parse().ok());
        lazy_tee_pipe_fits(crate::hostinfo::has_capability(CAP_SYS_RESOURCE), pipe_max_size, patched)
            .map_err(CriuError::NoLazyPageServer)
    }

    fn serve_lazy_pages(&self, images: &Path, work: &Path, page_socket: OwnedFd) -> Result<(), CriuError> {
        const PAGE_SOCKET_FD: i32 = 10;
        let mut cmd = Command::new(&self.path);
        cmd.args(["lazy-pages", "--page-server", "--ps-socket", &PAGE_SOCKET_FD.to_string()]);
        crate::util::pass_fds(&mut cmd, vec![(page_socket, PAGE_SOCKET_FD)])
            .map_err(|e| CriuError::LazyPagesDaemon(e.to_string()))?;
        cmd.arg("--images-dir").arg(images).arg("--work-dir").arg(work);
        cmd.args(["--log-file", "lazy-pages.log", "-v4"]);
        // Its own session: it outlives the ckpt that started it, and an ssh channel's end.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        tracing::debug!(?cmd, "criu lazy-pages");
        let spawned = cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn();
        // The daemon holds the page socket now; this process's copy goes with `cmd`.
        drop(cmd);
        let daemon = spawned.map_err(|e| CriuError::LazyPagesDaemon(e.to_string()))?;
        // Reaped by init once ckpt exits; until then a thread waits for it.
        std::thread::spawn(move || {
            let mut daemon = daemon;
            let _ = daemon.wait();
        });
        // The restore connects to its socket, which appears once it listens.
        let socket = work.join("lazy-pages.socket");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !socket.exists() {
            if std::time::Instant::now() > deadline {
                let log = std::fs::read_to_string(work.join("lazy-pages.log")).unwrap_or_default();
                let errors: Vec<&str> = log.lines().filter(|l| l.contains("Error")).collect();
                return Err(CriuError::LazyPagesDaemon(format!(
                    "no socket {} after 10 s: {}",
                    socket.display(),
                    errors.join("; ")
                )));
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        Ok(())
    }

    fn memory_tracking(&self) -> Result<(), CriuError> {
        // The probe costs about 0.1 s, and its answer, no as much as yes, stands until CRIU or the
        // kernel changes: both are kept.
        let answer = crate::util::cached_probe(&self.path, "mem_dirty_track", || {
            Ok::<_, std::convert::Infallible>(self.probe_memory_tracking())
        })
        .unwrap_or_else(|never| match never {});
        answer.map_err(CriuError::NoMemTrack)
    }
}

/// `Version: 4.2.1` (and `GitID:` for a git build, which bumps the minor as go-criu does).
pub fn parse_version(text: &str) -> Option<u32> {
    let version = text.lines().find_map(|l| l.strip_prefix("Version:"))?.trim();
    let mut parts = version.split('.').map(|p| p.parse::<u32>().ok());
    let major = parts.next()??;
    let mut minor = parts.next().flatten().unwrap_or(0);
    let sublevel = parts.next().flatten().unwrap_or(0);
    if text.lines().any(|l| l.starts_with("GitID:")) {
        minor += 1;
    }
    Some(major * 10000 + minor * 100 + sublevel)
}

pub fn check_version(criu: &dyn Criu) -> Result<u32, CriuError> {
    let version = criu.version()?;
    if version < MIN_CRIU_VERSION {
        return Err(CriuError::TooOld(version));
    }
    Ok(version)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_release_and_git_versions() {
        assert_eq!(parse_version("Version: 4.2.1\n"), Some(40201));
        assert_eq!(parse_version("Version: 3.17\n"), Some(31700));
        assert_eq!(parse_version("Version: 4.1\nGitID: v4.1-12\n"), Some(40200));
        assert_eq!(parse_version("garbage"), None);
    }

    #[test]
    fn a_lazy_dump_is_offered_only_where_its_page_server_gets_its_pipe() {
        let one_mib = Some(1 << 20);
        assert!(lazy_tee_pipe_fits(true, one_mib, false).is_ok(), "CAP_SYS_RESOURCE passes the limit");
        assert!(lazy_tee_pipe_fits(false, one_mib, true).is_ok(), "scripts/setup's CRIU keeps within it");
        assert!(lazy_tee_pipe_fits(false, Some(4 << 20), false).is_ok(), "a raised fs.pipe-max-size");
        let refused = lazy_tee_pipe_fits(false, one_mib, false).unwrap_err();
        assert!(
            refused.contains("fs.pipe-max-size (1048576 bytes)") && refused.contains("post-copy = true"),
            "{refused}"
        );
    }
}
