//! A hold on a restore: CRIU is kept from reading a single memory page until ckpt has copied
//! the page images in and checked them (see `archive::deferred`).
//!
//! runc hands CRIU the configuration file that the container's `org.criu.config` annotation
//! names (`/etc/criu/runc.conf` when it has none). CRIU runs each `action-script` of that file at
//! every step, with the step in `CRTOOLS_SCRIPT_ACTION`, and gives the restore up if a script
//! fails. It reads memory pages only after `post-setup-namespaces`: the script waits there for
//! the outcome of the copies, which ckpt writes into a status file.

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::base_error::{BaseError, BaseResult};

/// What runc gives CRIU when a container has no annotation.
const RUNC_DEFAULT_CONFIG: &str = "/etc/criu/runc.conf";
const CONFIG: &str = "criu-restore.conf";
const SCRIPT: &str = "await-page-images";
const STATUS: &str = "page-images.status";
/// The step before which CRIU reads no memory page.
const HOLD_AT: &str = "post-setup-namespaces";
/// The subcommand the script runs.
pub const AWAIT_COMMAND: &str = "__await-page-images";
const OK: &str = "ok";

/// The script, configuration and status of one restore's hold, in its bundle.
pub struct Hold {
    config: PathBuf,
    script: PathBuf,
    status: PathBuf,
}

impl Hold {
    /// Writes the hold into `bundle`, for the runtime to give CRIU [`Hold::config`]. The script
    /// gives up after `timeout` or once this process is gone. `None` when a path has a character
    /// the script or CRIU's configuration could not hold as it is; the caller then waits for its
    /// page images before the restore starts.
    pub fn place(bundle: &Path, timeout: Duration) -> BaseResult<Option<Hold>> {
        let exe = std::env::current_exe().map_err(BaseError::io("find own executable", "/proc/self/exe"))?;
        let hold = Hold { config: bundle.join(CONFIG), script: bundle.join(SCRIPT), status: bundle.join(STATUS) };
        if ![&exe, &hold.script, &hold.status].iter().all(|p| plain_path(p)) {
            return Ok(None);
        }
        let script = format!(
            "#!/bin/sh\n\
             # Written by ckpt for one restore. CRIU runs it at every step of the restore; before it\n\
             # reads memory pages, it waits until ckpt has copied and checked the page images.\n\
             [ \"$CRTOOLS_SCRIPT_ACTION\" = {HOLD_AT} ] || exit 0\n\
             exec {} {AWAIT_COMMAND} {} {} {}\n",
            exe.display(),
            hold.status.display(),
            std::process::id(),
            timeout.as_secs().max(1),
        );
        crate::util::write_atomic(&hold.script, script.as_bytes(), 0o700)?;
        // What runc would have given CRIU stays in force, with the script added.
        let mut config = std::fs::read_to_string(RUNC_DEFAULT_CONFIG).unwrap_or_default();
        if !config.is_empty() && !config.ends_with('\n') {
            config.push('\n');
        }
        config.push_str(&format!("action-script {}\n", hold.script.display()));
        crate::util::write_atomic(&hold.config, config.as_bytes(), 0o600)?;
        Ok(Some(hold))
    }

    /// CRIU's configuration for the restore.
    pub fn config(&self) -> &Path {
        &self.config
    }

    /// Where the outcome goes.
    pub fn status(&self) -> &Path {
        &self.status
    }

    /// Writes the outcome of the copies for the script: `Err` holds the reason.
    pub fn report(status: &Path, outcome: Result<(), String>) -> io::Result<()> {
        let text = match outcome {
            Ok(()) => format!("{OK}\n"),
            Err(reason) => format!("failed\n{reason}\n"),
        };
        let partial = status.with_extension("partial");
        std::fs::write(&partial, text)?;
        std::fs::rename(&partial, status)
    }

    /// Takes the hold away once the restore is over. runc keeps the annotation for the running
    /// container's checkpoints, so the configuration becomes a link to runc's default.
    pub fn release(self) {
        let _ = std::fs::remove_file(&self.script);
        let _ = std::fs::remove_file(&self.status);
        let _ = std::fs::remove_file(&self.config);
        let _ = std::os::unix::fs::symlink(RUNC_DEFAULT_CONFIG, &self.config);
    }
}

/// Only characters that need no quoting in a shell word, and no space, which ends a value in
/// CRIU's configuration.
fn plain_path(path: &Path) -> bool {
    path.to_str()
        .is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric() || b"/._-+@:,=".contains(&b)))
}

/// The script's side: waits at `post-setup-namespaces` until `status` says how the copies ended,
/// `owner` (the ckpt that copies them) is gone, or `timeout` passes. Returns the exit code: 0
/// lets CRIU go on, anything else makes it give the restore up.
pub fn await_page_images(status: &Path, owner: i32, timeout: Duration) -> i32 {
    let deadline = Instant::now() + timeout;
    loop {
        match std::fs::read_to_string(status) {
            Ok(text) if text.lines().next() == Some(OK) => return 0,
            Ok(text) => {
                let reason = text.lines().skip(1).collect::<Vec<_>>().join(" ");
                eprintln!("ckpt: the page images did not come in: {reason}");
                return 1;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                eprintln!("ckpt: read {}: {e}", status.display());
                return 1;
            }
        }
        if nix::sys::signal::kill(nix::unistd::Pid::from_raw(owner), None) == Err(nix::errno::Errno::ESRCH) {
            eprintln!("ckpt: the ckpt process {owner} that copies the page images is gone");
            return 1;
        }
        if Instant::now() >= deadline {
            eprintln!("ckpt: the page images did not come in within {} s", timeout.as_secs());
            return 1;
        }
        // Copies take hundreds of milliseconds; a millisecond's wait is lost in them.
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hold_names_its_script_in_criu_s_configuration() {
        let bundle = tempfile::tempdir().unwrap();
        let hold = Hold::place(bundle.path(), Duration::from_secs(60)).unwrap().expect("plain paths");
        assert_eq!(hold.config(), bundle.path().join(CONFIG));
        let config = std::fs::read_to_string(bundle.path().join(CONFIG)).unwrap();
        assert!(config.ends_with(&format!("action-script {}\n", bundle.path().join(SCRIPT).display())), "{config}");
        let script = std::fs::read_to_string(bundle.path().join(SCRIPT)).unwrap();
        assert!(script.contains(&format!("{AWAIT_COMMAND} {} {} 60", hold.status().display(), std::process::id())));
        hold.release();
        assert!(!bundle.path().join(SCRIPT).exists());
        assert_eq!(std::fs::read_link(bundle.path().join(CONFIG)).unwrap(), Path::new(RUNC_DEFAULT_CONFIG));
    }

    #[test]
    fn a_path_that_would_need_quoting_gets_no_hold() {
        let dir = tempfile::tempdir().unwrap();
        let bundle = dir.path().join("a b");
        std::fs::create_dir(&bundle).unwrap();
        assert!(Hold::place(&bundle, Duration::from_secs(1)).unwrap().is_none());
        assert!(!bundle.join(CONFIG).exists());
    }

    #[test]
    fn the_script_s_side_lets_criu_go_on_only_when_the_copies_succeeded() {
        let dir = tempfile::tempdir().unwrap();
        let status = dir.path().join(STATUS);
        let me = std::process::id() as i32;
        Hold::report(&status, Ok(())).unwrap();
        assert_eq!(await_page_images(&status, me, Duration::from_secs(5)), 0);
        Hold::report(&status, Err("digest mismatch".into())).unwrap();
        assert_eq!(await_page_images(&status, me, Duration::from_secs(5)), 1);
        std::fs::remove_file(&status).unwrap();
        assert_eq!(await_page_images(&status, me, Duration::from_millis(20)), 1, "timed out");
        // A process that has ended: a child reaped.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let gone = child.id() as i32;
        child.wait().unwrap();
        assert_eq!(await_page_images(&status, gone, Duration::from_secs(5)), 1);
    }
}
