//! The final dump of one container, and the start of a post-copy one, frozen by the runtime
//! before CRIU starts where CRIU's own freezing would keep it frozen longer.
//!
//! On cgroup v1, CRIU freezes the container's cgroup itself, but an unpatched CRIU looks at the
//! freezer again only every 100 ms (`freeze_processes` in criu/seize.c). A container that freezes
//! at once still costs its dump those 100 ms, about a third of a small container's checkpoint and
//! half of a post-copy migration's pause; the runtime's freezer looks again within a
//! millisecond. CRIU finds the cgroup frozen and seizes the processes at once. It
//! leaves the cgroup as it found it, frozen, unless it killed the processes: a container that
//! keeps running, or whose dump failed, is thawed here.
//!
//! Each restore of such a dump goes through a runtime that made the container's cgroup before
//! CRIU runs, so CRIU's record of a frozen cgroup (kept only on v1) is never applied.

use crate::criu::Criu;
use crate::error::{Error, Result};
use crate::runtime::{CheckpointOptions, LazyDump, OciRuntime};

/// Whether the runtime freezes the container before CRIU does: not where CRIU looks at its freezer
/// again within milliseconds (the CRIU scripts/setup builds), which then freezes the container
/// later, once runc and CRIU have started. On cgroup v2 CRIU is left to do it: v2's freezer
/// reports its state differently, and these machines cannot test it.
pub fn freeze_first(criu: &dyn Criu) -> bool {
    !crate::hostinfo::cgroup_v2() && !criu.polls_freezer_soon()
}

/// Dumps container `id` (called `name`) with `options`: frozen first when `freeze_first`, and
/// thawed again unless CRIU ended its processes.
pub fn dump(
    runtime: &dyn OciRuntime,
    id: &str,
    name: &str,
    options: &CheckpointOptions,
    freeze_first: bool,
) -> Result<()> {
    if !freeze_first || options.pre_dump {
        return Ok(runtime.checkpoint(id, options)?);
    }
    // A runtime that cannot freeze it leaves the freezing to CRIU, as without this step.
    if runtime.pause(id).is_err() {
        return Ok(runtime.checkpoint(id, options)?);
    }
    match runtime.checkpoint(id, options) {
        Err(cause) => Err(thaw_after_failure(runtime, id, name, cause.into())),
        Ok(()) if !options.leave_running => Ok(()),
        // CRIU froze it again, as it found it.
        Ok(()) => runtime.resume(id).map_err(|thaw| Error::StaysFrozen {
            name: name.to_string(),
            cause: None,
            thaw: Box::new(thaw.into()),
        }),
    }
}

/// What a dump that failed after the runtime froze the container returns: CRIU put the cgroup
/// back as it found it, frozen, so it is thawed here; one that stays frozen says so beside the
/// dump's own error.
fn thaw_after_failure(runtime: &dyn OciRuntime, id: &str, name: &str, cause: Error) -> Error {
    match thaw_if_frozen(runtime, id) {
        Ok(_) => cause,
        Err(thaw) => Error::StaysFrozen { name: name.to_string(), cause: Some(Box::new(cause)), thaw: Box::new(thaw) },
    }
}

/// Starts a post-copy dump of container `id` whose page server talks on `page_socket`: frozen
/// first when `freeze_first`, as [`dump`] does, since the application's pause begins with the
/// freeze. Returns once CRIU serves pages; a dump that fails before that thaws the container.
pub fn dump_lazy(
    runtime: &dyn OciRuntime,
    id: &str,
    name: &str,
    options: &CheckpointOptions,
    page_socket: std::os::fd::OwnedFd,
    freeze_first: bool,
) -> Result<Box<dyn LazyDump>> {
    let frozen = freeze_first && runtime.pause(id).is_ok();
    let started = runtime.checkpoint_lazy(id, options, page_socket).and_then(|mut dump| {
        dump.ready()?;
        Ok(dump)
    });
    match started {
        Ok(dump) => Ok(dump),
        Err(cause) if frozen => Err(thaw_after_failure(runtime, id, name, cause.into())),
        Err(cause) => Err(cause.into()),
    }
}

/// Thaws the container if it is frozen; whether its processes run.
pub fn thaw_if_frozen(runtime: &dyn OciRuntime, id: &str) -> Result<bool> {
    match runtime.state(id)? {
        Some(state) if state.is_paused() => runtime.resume(id).map(|()| true).map_err(Error::from),
        Some(state) => Ok(state.is_running()),
        None => Ok(false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::RuntimeError;
    use crate::runtime::fake::{Call, RecordingRuntime};

    fn kinds(runtime: &RecordingRuntime) -> Vec<&'static str> {
        runtime
            .calls()
            .iter()
            .map(|c| match c {
                Call::Pause { .. } => "pause",
                Call::Resume { .. } => "resume",
                Call::State { .. } => "state",
                Call::Checkpoint { .. } => "checkpoint",
                _ => "other",
            })
            .collect()
    }

    fn failing_dump(runtime: &RecordingRuntime) {
        runtime.push_dump_effect(Box::new(|_: &CheckpointOptions| {
            Err(RuntimeError::Failed {
                runtime: "fake".into(),
                action: "checkpoint",
                id: "c1".into(),
                status: "exit status: 1".into(),
                stderr: "criu failed".into(),
            })
        }));
    }

    #[test]
    fn a_container_is_frozen_before_its_dump_and_thawed_only_if_it_keeps_running() {
        let runtime = RecordingRuntime::default();
        dump(&runtime, "c1", "web", &CheckpointOptions::default(), true).unwrap();
        assert_eq!(kinds(&runtime), ["pause", "checkpoint"], "CRIU ends a container it does not leave running");

        let runtime = RecordingRuntime::default();
        let leave_running = CheckpointOptions { leave_running: true, ..Default::default() };
        dump(&runtime, "c1", "web", &leave_running, true).unwrap();
        assert_eq!(kinds(&runtime), ["pause", "checkpoint", "resume"]);
        assert!(!runtime.state.lock().unwrap().as_ref().unwrap().is_paused());
    }

    #[test]
    fn a_failed_dump_thaws_the_container_and_keeps_criu_s_error() {
        let runtime = RecordingRuntime::default();
        failing_dump(&runtime);
        let err = dump(&runtime, "c1", "web", &CheckpointOptions::default(), true).unwrap_err();
        assert!(err.to_string().contains("criu failed"), "{err}");
        assert!(!matches!(err, Error::StaysFrozen { .. }), "{err}");
        assert_eq!(kinds(&runtime), ["pause", "checkpoint", "state", "resume"]);
        assert_eq!(runtime.state.lock().unwrap().as_ref().unwrap().status, "running");
    }

    #[test]
    fn a_post_copy_dump_is_frozen_first_and_thawed_when_it_cannot_start() {
        let runtime = RecordingRuntime::default();
        let (socket, _far) = std::os::unix::net::UnixStream::pair().unwrap();
        // The recording runtime has no lazy dump: it fails as a runtime without one does.
        assert!(dump_lazy(&runtime, "c1", "web", &CheckpointOptions::default(), socket.into(), true).is_err());
        assert_eq!(kinds(&runtime), ["pause", "state", "resume"]);
        assert_eq!(runtime.state.lock().unwrap().as_ref().unwrap().status, "running");
    }

    #[test]
    fn pre_dumps_and_cgroup_v2_leave_the_freezing_to_criu() {
        let runtime = RecordingRuntime::default();
        let pre_dump = CheckpointOptions { pre_dump: true, leave_running: true, ..Default::default() };
        dump(&runtime, "c1", "web", &pre_dump, true).unwrap();
        dump(&runtime, "c1", "web", &CheckpointOptions::default(), false).unwrap();
        assert_eq!(kinds(&runtime), ["checkpoint", "checkpoint"]);
    }
}
