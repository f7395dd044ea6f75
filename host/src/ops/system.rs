//! `ckpt system check [--repair]`: finds what an interrupted command left behind (a killed
//! ckpt, a crashed CRIU or supervisor) and repairs it. Every command sweeps the leftovers that
//! are safe to remove on its own (temporary exports and staging of dead processes); the
//! container-level findings are reported here.

use std::path::Path;

use serde::Serialize;

use super::Context;
use crate::archive::publish::InFlight;
use crate::error::Result;
use crate::store::{ContainerLock, ContainerRecord, is_locked};

/// One thing found, and whether it was repaired.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Finding {
    pub kind: &'static str,
    pub object: String,
    pub detail: String,
    pub repaired: bool,
}

/// Whether process `pid` exists (EPERM means it does, just not ours).
fn alive(pid: i32) -> bool {
    pid > 0 && !matches!(nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None), Err(nix::errno::Errno::ESRCH))
}

/// The PID ckpt put in a temporary name: `.import-<pid>-<16 hex>`, `.unpack-<id>-<pid>`,
/// `.incoming-<pid>`.
pub fn owner_pid(name: &str) -> Option<i32> {
    let parts: Vec<&str> = name.rsplit('-').take(2).collect();
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    match parts.as_slice() {
        [last, ..] if digits(last) => last.parse().ok(),
        [last, before]
            if last.len() == crate::util::TEMP_NAME_RANDOM_CHARS
                && last.bytes().all(|b| b.is_ascii_alphanumeric())
                && digits(before) =>
        {
            before.parse().ok()
        }
        _ => None,
    }
}

/// Temporary exports, staging directories and partial blobs whose owner is dead; removed when
/// `repair` (every command passes true: nobody else can finish them).
pub fn sweep_leftovers(ctx: &Context, repair: bool) -> Vec<Finding> {
    let mut found = Vec::new();
    if let Ok(entries) = std::fs::read_dir(ctx.roots.inflight_dir()) {
        for entry in entries.flatten() {
            let note_path = entry.path();
            let Ok(note) = crate::util::read_json::<InFlight>(&note_path, "in-flight note") else { continue };
            if alive(note.pid) {
                continue;
            }
            let is_ours = note
                .temp_path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with('.') && n.contains(".ckpt-"));
            let present = std::fs::symlink_metadata(&note.temp_path).is_ok_and(|m| m.is_file());
            let repaired = repair
                && (!present || !is_ours || std::fs::remove_file(&note.temp_path).is_ok())
                && std::fs::remove_file(&note_path).is_ok();
            found.push(Finding {
                kind: "interrupted-export",
                object: note.target.display().to_string(),
                detail: format!("ckpt (PID {}) died while writing {}", note.pid, note.temp_path.display()),
                repaired,
            });
        }
    }
    let images = ctx.roots.images_dir();
    for dir in [ctx.roots.staging_dir(), images.join("rootfs"), images.join("oci/blobs/sha256")] {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let temporary = name.starts_with('.') || name.contains(".incoming-");
            let Some(pid) = owner_pid(&name).filter(|_| temporary) else { continue };
            if alive(pid) {
                continue;
            }
            let path = entry.path();
            let repaired = repair && remove_any(&path);
            found.push(Finding {
                kind: "staging-leftover",
                object: path.display().to_string(),
                detail: format!("left by ckpt (PID {pid}), which is gone"),
                repaired,
            });
        }
    }
    found
}

fn remove_any(path: &Path) -> bool {
    match std::fs::symlink_metadata(path) {
        // A dead import's private memory goes with it.
        Ok(meta) if meta.is_dir() => {
            crate::rootfs::memory::release(path).is_ok() && std::fs::remove_dir_all(path).is_ok()
        }
        Ok(_) => std::fs::remove_file(path).is_ok(),
        Err(_) => true,
    }
}

/// How long `system check` waits for a container's lock before leaving it to whoever holds it.
const SUPERVISOR_MOMENT: std::time::Duration = std::time::Duration::from_secs(2);

/// Everything `ckpt system check` looks at.
pub fn check(ctx: &Context, repair: bool) -> Result<Vec<Finding>> {
    let mut found = sweep_leftovers(ctx, repair);
    for record in ctx.containers.list()? {
        // A container another ckpt command is working on is that command's business; a
        // supervisor recording an exit holds the lock only for a moment, so it is waited for.
        let locked = || ContainerLock::try_acquire(&ctx.roots.locks_dir(), &record.id, &record.name).ok();
        let deadline = std::time::Instant::now() + SUPERVISOR_MOMENT;
        let lock = loop {
            match locked() {
                Some(lock) => break Some(lock),
                None if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(20))
                }
                None => break None,
            }
        };
        if lock.is_some() {
            found.extend(check_container(ctx, &record, repair)?);
        }
    }
    found.extend(leaked_addresses(ctx, repair)?);
    found.extend(interrupted_on_podman(ctx, repair));
    Ok(found)
}

/// podman's containers that a `ckpt checkpoint podman:NAME` or `ckpt migrate podman:NAME` left
/// stopped by podman's dump when it died before the export was published (or, for a
/// migration, before the destination said it runs the container). podman keeps the
/// checkpoint; `repair` has podman restore a checkpoint's, and leaves a migration's to the
/// user, who alone can look at the destination.
fn interrupted_on_podman(ctx: &Context, repair: bool) -> Vec<Finding> {
    use crate::ops::checkpoint::podman::InFlight;
    use crate::podman::{PREFIX, PodmanApi, PodmanError};
    let Ok(entries) = std::fs::read_dir(InFlight::dir(ctx)) else { return Vec::new() };
    let api = ctx.podman();
    let mut found = Vec::new();
    for path in entries.flatten().map(|e| e.path()) {
        let forget = || repair && std::fs::remove_file(&path).is_ok();
        let Ok(note) = crate::util::read_json::<InFlight>(&path, "podman in-flight note") else {
            // Torn as it was written, before podman was asked anything.
            forget();
            continue;
        };
        if alive(note.pid) {
            continue;
        }
        let object = format!("{PREFIX}{}", note.name);
        let mut finding =
            |kind, detail: String, repaired| found.push(Finding { kind, object: object.clone(), detail, repaired });
        let now = match api.inspect(&note.id) {
            Ok(now) => now,
            Err(PodmanError::NoSuchContainer(_)) => {
                forget();
                continue;
            }
            Err(e) => {
                finding(
                    "podman-unreachable",
                    format!("an interrupted checkpoint of it cannot be looked at: {e}"),
                    false,
                );
                continue;
            }
        };
        let finished = !note.targets.is_empty() && note.targets.iter().all(|t| t.exists());
        if now.state == "running" || !now.checkpointed || (finished && note.destination.is_none()) {
            // Never stopped, brought back since, or checkpointed as asked.
            forget();
            continue;
        }
        match &note.destination {
            Some(destination) => finding(
                "unconfirmed-podman-migration",
                format!(
                    "ckpt (PID {}) died migrating it to {destination}; if it does not run there, bring it back here with 'ckpt restore {object}', else remove it with 'podman rm {}'",
                    note.pid, note.name
                ),
                false,
            ),
            None => {
                let repaired = repair && api.restore(&note.name, note.tcp_established).is_ok() && forget();
                finding(
                    "interrupted-podman-checkpoint",
                    format!(
                        "ckpt (PID {}) died between podman's dump and the export; podman keeps the checkpoint, and the container is stopped",
                        note.pid
                    ),
                    repaired,
                );
            }
        }
    }
    found
}

fn check_container(ctx: &Context, record: &ContainerRecord, repair: bool) -> Result<Vec<Finding>> {
    let mut found = Vec::new();
    let runtime = ctx.runtime_named(&record.runtime)?;
    let paths = ctx.containers.paths(&record.id);
    let state = runtime.state(&record.id)?;
    let supervised = is_locked(&paths.supervisor_lock());
    let finding = |kind, detail: String, repaired| Finding { kind, object: record.name.clone(), detail, repaired };
    if let Some(state) = &state
        && state.status == "paused"
        && !record.state.paused
    {
        // Besides `ckpt pause`, ckpt freezes a container only for its dump: frozen with no ckpt
        // command holding it, it is what a dump killed midway leaves.
        let repaired = repair && runtime.resume(&record.id).is_ok();
        found.push(finding("frozen", "its cgroup is frozen but no ckpt command is working on it".into(), repaired));
    }
    for place in [paths.checkpoint_dir(), paths.pre_checkpoint_dir()] {
        let aside = crate::store::discard::aside_path(&place);
        if aside.symlink_metadata().is_ok() {
            let repaired = repair && crate::store::discard::settle(&ctx.roots, &place).is_ok();
            found.push(finding(
                "earlier-images-aside",
                format!(
                    "a dump died while an earlier checkpoint's images waited aside in {}; they go back unless the dump wrote its own",
                    aside.display()
                ),
                repaired,
            ));
        }
    }
    let gone = state.as_ref().is_none_or(|s| !s.is_running());
    if record.state.run_token.is_some() && gone && !supervised {
        let repaired = repair && release_run(ctx, record, runtime.as_ref(), state.is_some()).is_ok();
        found.push(finding(
            "supervisor-gone",
            "its record says it runs, but its processes and its supervisor are gone".into(),
            repaired,
        ));
    } else if record.state.run_token.is_none() && state.is_some() && gone && !supervised {
        let repaired = repair && runtime.delete(&record.id, true).is_ok();
        found.push(finding("stale-runtime-state", format!("{} still keeps state for it", runtime.name()), repaired));
    }
    if record.state.importing && !supervised && gone {
        // A half-restored container has nothing to keep: its archive is still where it was.
        let repaired = repair && crate::rootfs::kill_processes_in(&paths.merged()).is_empty() && {
            if state.is_some() {
                let _ = runtime.delete(&record.id, true);
            }
            crate::ops::lifecycle::remove_files(ctx, record).is_ok()
        };
        found.push(finding(
            "interrupted-import",
            "an import of this container was interrupted before it ran; restore it again from its archive".into(),
            repaired,
        ));
        return Ok(found);
    }
    if record.state.checkpoint_in_progress && !gone {
        // A dump that failed while the disk was full let the container run on, but could not
        // clear the flag: nothing was interrupted, and a repair clears it quietly.
        if repair {
            let mut fresh = ctx.containers.load(&record.id)?;
            fresh.state.checkpoint_in_progress = false;
            let _ = ctx.containers.save(&fresh);
        }
    } else if record.state.checkpoint_in_progress {
        let images = paths.checkpoint_dir();
        let restorable = images.join(crate::metadata::CRIU_INVENTORY).is_file();
        let repaired = repair && {
            let mut fresh = ctx.containers.load(&record.id)?;
            fresh.state.checkpoint_in_progress = false;
            fresh.state.checkpointed = restorable;
            ctx.containers.save(&fresh).is_ok()
        };
        let detail = if restorable {
            format!(
                "a checkpoint of this container was interrupted after CRIU wrote its images; they are kept in {} for 'ckpt restore' (if it was being migrated, look at the destination first: it may run there)",
                images.display()
            )
        } else {
            "a checkpoint of this container was interrupted before CRIU wrote its images".into()
        };
        found.push(finding("interrupted-checkpoint", detail, repaired));
    }
    Ok(found)
}

/// Addresses still allocated to containers that are gone or no longer set up.
fn leaked_addresses(ctx: &Context, repair: bool) -> Result<Vec<Finding>> {
    Ok(super::network::leaked_leases(ctx, repair)?
        .into_iter()
        .map(|leak| Finding {
            kind: "leaked-address",
            object: format!("{} on network {}", leak.address, leak.network),
            detail: format!(
                "allocated to container {}, which {}",
                leak.container,
                if leak.container_exists { "is not connected to it" } else { "no longer exists" }
            ),
            repaired: repair,
        })
        .collect())
}

/// What the supervisor would have done at exit: release the runtime's state and the mounts,
/// and record the exit.
fn release_run(
    ctx: &Context,
    record: &ContainerRecord,
    runtime: &dyn crate::runtime::OciRuntime,
    has_state: bool,
) -> Result<()> {
    if has_state {
        runtime.delete(&record.id, true)?;
    }
    let paths = ctx.containers.paths(&record.id);
    // Its processes went with the supervisor's watch; any left would write into a detached rootfs.
    crate::rootfs::kill_processes_in(&paths.merged());
    crate::rootfs::unmount(&paths.merged())?;
    super::network::detach(ctx, record)?;
    crate::netns::remove(&paths.netns())?;
    let mut fresh = ctx.containers.load(&record.id)?;
    fresh.state.run_token = None;
    fresh.state.finished_at.get_or_insert_with(crate::util::now);
    ctx.containers.save(&fresh).map_err(crate::Error::from)
}

/// The text `system check` prints, one line a finding.
pub fn render(findings: &[Finding]) -> String {
    if findings.is_empty() {
        return "nothing to repair\n".into();
    }
    findings
        .iter()
        .map(|f| {
            let state = if f.repaired { "repaired" } else { "found" };
            format!("{state:<9} {:<22} {}: {}\n", f.kind, f.object, f.detail)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_pids_come_from_ckpt_temporary_names() {
        assert_eq!(owner_pid(".import-4242-0123456789abcdef"), Some(4242));
        assert_eq!(owner_pid(".unpack-3f2a-77"), Some(77));
        assert_eq!(owner_pid(".incoming-9"), Some(9));
        assert_eq!(owner_pid("sha256abc.incoming-12"), Some(12));
        assert_eq!(owner_pid("layer.tar"), None);
        assert_eq!(owner_pid(".export-abc-0123456789abcdef"), None);
        let parent = tempfile::tempdir().unwrap();
        let made = crate::util::tempdir_in(parent.path(), "import").unwrap();
        let name = made.path.file_name().unwrap().to_str().unwrap();
        assert_eq!(owner_pid(name), Some(std::process::id() as i32), "{name}");
    }

    #[test]
    fn leftovers_of_dead_processes_are_swept_and_live_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let ctx =
            Context::new(crate::store::Roots::new(dir.path().join("root"), dir.path().join("run")), "runc".into());
        let staging = ctx.roots.staging_dir();
        // PID 2^22 + 1 is above Linux's maximum, so no process has it.
        let dead = format!(".import-{}-0123456789abcdef", (1 << 22) + 1);
        let live = format!(".import-{}-0123456789abcdef", std::process::id());
        std::fs::create_dir_all(staging.join(&dead)).unwrap();
        std::fs::create_dir_all(staging.join(&live)).unwrap();
        let exports = dir.path().join("exports");
        std::fs::create_dir_all(&exports).unwrap();
        let temp = exports.join(".c.tar.ckpt-0123456789ab");
        std::fs::write(&temp, b"partial").unwrap();
        std::fs::create_dir_all(ctx.roots.inflight_dir()).unwrap();
        let note = InFlight { pid: (1 << 22) + 1, temp_path: temp.clone(), target: exports.join("c.tar") };
        crate::util::write_json(&ctx.roots.inflight_dir().join("x.json"), &note).unwrap();
        let found = sweep_leftovers(&ctx, false);
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found.iter().all(|f| !f.repaired));
        let found = sweep_leftovers(&ctx, true);
        assert!(found.iter().all(|f| f.repaired), "{found:?}");
        assert!(!temp.exists() && !staging.join(&dead).exists());
        assert!(staging.join(&live).exists(), "work of a live process is left alone");
        assert!(sweep_leftovers(&ctx, true).is_empty());
    }

    #[test]
    fn findings_render_one_line_each() {
        assert_eq!(render(&[]), "nothing to repair\n");
        let findings = [
            Finding {
                kind: "frozen container",
                object: "web".into(),
                detail: "its cgroup is FROZEN".into(),
                repaired: true,
            },
            Finding {
                kind: "leftover staging",
                object: "/var/lib/ckpt/tmp/.import-77-0123456789abcdef".into(),
                detail: "process 77 is gone".into(),
                repaired: false,
            },
        ];
        insta::assert_snapshot!("system_check_text", render(&findings));
    }
}
