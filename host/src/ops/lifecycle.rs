//! run, start, stop and rm: a container's life under the OCI runtime.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::Context;
use super::network::{self, Wanted};
use crate::error::{Error, Result};
use crate::rootfs::Overlay;
use crate::spec::{self, HostMount};
use crate::store::{
    ContainerLock, ContainerRecord, ContainerStatus, MountKind, MountSpec, StateFlags, StoreLock, wait_unlocked,
};
use crate::supervisor::{self, Launch};
use crate::util::{create_dir_all, random_id, remove_dir_all, validate_object_name, write_atomic, write_json};

/// `ckpt run` options, as typed, before validation.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub name: Option<String>,
    pub volumes: Vec<String>,
    pub env: Vec<String>,
    pub labels: Vec<String>,
    pub auto_remove: bool,
    pub workdir: Option<String>,
    pub image: String,
    pub command: Vec<String>,
    pub network: super::network::NetworkFlags,
}

/// A container's status as inspect and ps show it, and its init's PID while it has one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub status: ContainerStatus,
    pub pid: i32,
}

impl Status {
    /// Running or paused: the container's processes exist (docker's and podman's `Running`).
    pub fn running(&self) -> bool {
        self.status.is_alive()
    }
}

pub fn status(ctx: &Context, record: &ContainerRecord) -> Result<Status> {
    let runtime = ctx.runtime_named(&record.runtime)?;
    Ok(status_of(record, runtime.state(&record.id)?))
}

/// The statuses of many containers, asked of each runtime at once
/// (see [`crate::runtime::OciRuntime::states`]).
pub fn statuses(ctx: &Context, records: &[ContainerRecord]) -> Result<Vec<Status>> {
    let mut by_runtime: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for record in records {
        by_runtime.entry(&record.runtime).or_default().push(&record.id);
    }
    let mut states = std::collections::HashMap::new();
    for (runtime, ids) in by_runtime {
        states.extend(ctx.runtime_named(runtime)?.states(&ids)?);
    }
    Ok(records.iter().map(|record| status_of(record, states.remove(&record.id))).collect())
}

fn status_of(record: &ContainerRecord, state: Option<crate::runtime::RuntimeState>) -> Status {
    if let Some(state) = state
        && state.is_running()
    {
        // Frozen by someone, perhaps a CRIU that died mid-dump: shown as such, never as "Up".
        let status = if state.is_paused() { ContainerStatus::Paused } else { ContainerStatus::Running };
        return Status { status, pid: state.pid };
    }
    let status = if record.state.started_at.is_some() || record.state.checkpointed {
        ContainerStatus::Exited
    } else {
        ContainerStatus::Created
    };
    Status { status, pid: 0 }
}

pub fn parse_key_values(values: &[String], flag: &str) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for value in values {
        match value.split_once('=') {
            Some((key, v)) if !key.is_empty() => {
                out.insert(key.to_string(), v.to_string());
            }
            _ => return Err(Error::invalid(format!("{flag} {value:?} is not of the form KEY=VALUE"))),
        }
    }
    Ok(out)
}

/// `-v SRC:DST[:ro|rw]`; a SRC without `/` names a volume.
pub fn parse_volume(value: &str) -> Result<MountSpec> {
    let parts: Vec<&str> = value.split(':').collect();
    let (source, destination, mode) = match parts.as_slice() {
        [s, d] => (*s, *d, None),
        [s, d, m] => (*s, *d, Some(*m)),
        _ => return Err(Error::invalid(format!("volume {value:?} is not of the form SRC:DST[:ro|rw]"))),
    };
    let read_only = match mode {
        None | Some("rw") => false,
        Some("ro") => true,
        Some(other) => {
            return Err(Error::invalid(format!("volume {value:?}: option {other:?} is not supported; use ro or rw")));
        }
    };
    if !destination.starts_with('/') || destination.split('/').any(|c| c == "..") {
        return Err(Error::invalid(format!(
            "volume {value:?}: the destination {destination:?} must be an absolute path without '..'"
        )));
    }
    let kind = if source.starts_with('/') {
        if !Path::new(source).exists() {
            return Err(Error::invalid(format!("volume {value:?}: the host path {source:?} does not exist")));
        }
        MountKind::Bind
    } else {
        validate_object_name("volume", source)?;
        MountKind::Volume
    };
    Ok(MountSpec { kind, source: source.to_string(), destination: destination.to_string(), read_only })
}

fn generated_name(id: &str) -> String {
    const ADJECTIVES: &[&str] =
        &["brave", "calm", "eager", "gentle", "happy", "keen", "lucid", "nimble", "quiet", "swift"];
    const NOUNS: &[&str] = &["otter", "heron", "lynx", "marten", "osprey", "puffin", "raven", "stoat", "tern", "wren"];
    let byte = |i: usize| usize::from_str_radix(&id[i..i + 2], 16).unwrap_or(0);
    format!("{}_{}_{}", ADJECTIVES[byte(0) % ADJECTIVES.len()], NOUNS[byte(2) % NOUNS.len()], &id[4..8])
}

/// Validates everything, then records a new container. Nothing is left behind on failure.
pub fn create(ctx: &Context, options: &RunOptions) -> Result<ContainerRecord> {
    let env = options.env.clone();
    parse_key_values(&env, "--env")?;
    let labels = parse_key_values(&options.labels, "--label")?;
    let mounts = options.volumes.iter().map(|v| parse_volume(v)).collect::<Result<Vec<_>>>()?;
    if let Some(name) = &options.name {
        validate_object_name("container", name)?;
    }
    let network = super::network::settings_from_flags(ctx, &options.network)?;
    let runtime = ctx.runtime_named(&ctx.runtime)?;
    let image = ctx.images.resolve(&options.image)?;
    let command =
        if options.command.is_empty() { ctx.images.default_command(&image)? } else { options.command.clone() };
    if command.is_empty() {
        return Err(Error::invalid(format!(
            "image {:?} has no default command; give one after the image name",
            options.image
        )));
    }
    let workdir = match &options.workdir {
        Some(dir) => Some(dir.clone()),
        None => ctx.images.config(&image)?.config().as_ref().and_then(|c| c.working_dir().clone()),
    };
    let workdir = workdir.filter(|dir| !dir.is_empty() && dir != "/");
    if let Some(dir) = &workdir
        && (!dir.starts_with('/') || dir.split('/').any(|c| c == ".."))
    {
        return Err(Error::invalid(format!("--workdir {dir:?}: give an absolute path without '..'")));
    }
    let _store_lock = StoreLock::acquire(&ctx.roots.locks_dir())?;
    let id = random_id();
    let name = options.name.clone().unwrap_or_else(|| generated_name(&id));
    if ctx.containers.name_in_use(&name)? {
        return Err(Error::NameInUse(name));
    }
    let record = ContainerRecord {
        id,
        name,
        image_name: options.image.clone(),
        image_ref: image.reference.clone(),
        image_id: image.id.clone(),
        command,
        env,
        labels,
        mounts,
        workdir,
        auto_remove: options.auto_remove,
        created_at: crate::util::now(),
        runtime: runtime.name().to_string(),
        root_mode: Some(crate::store::CONTAINER_ROOT_MODE),
        podman_mounts: false,
        network,
        state: StateFlags::default(),
    };
    let made = (|| {
        for volume in record.named_volumes() {
            if !ctx.volumes.exists(&volume.source) {
                ctx.volumes.create(&volume.source, BTreeMap::new())?;
            }
        }
        let paths = ctx.containers.paths(&record.id);
        // The upper layer's root is the container's `/`.
        crate::util::create_dir_with_mode(&paths.upper(), record.root_mode())?;
        create_dir_all(&paths.bundle())?;
        ctx.containers.save(&record).map_err(Error::from)
    })();
    if let Err(e) = made {
        remove_dir_all(&ctx.roots.container_dir(&record.id))?;
        return Err(e);
    }
    Ok(record)
}

/// Mounts the rootfs, connects the network namespace (asking for the `wanted` addresses) and
/// writes the bundle: everything the runtime needs to run or restore.
pub fn prepare_bundle(ctx: &Context, record: &ContainerRecord, wanted: &Wanted) -> Result<()> {
    let paths = ctx.containers.paths(&record.id);
    // By ID first: a tag moved since (a load, an import, a --create-image) must not swap the
    // lower layer under the container's upper one.
    let image = ctx.images.resolve(&record.image_id).or_else(|_| ctx.images.resolve(&record.image_ref))?;
    let lower = ctx.images.rootfs(&image)?;
    Overlay { lower: &lower, upper: &paths.upper(), work: &paths.overlay_work(), merged: &paths.merged() }.mount()?;
    let bundle = paths.bundle();
    create_dir_all(&bundle)?;
    let hostname = spec::hostname(record);
    write_atomic(&bundle.join("hostname"), format!("{hostname}\n").as_bytes(), 0o644)?;
    if record.podman_mounts {
        // What podman bound into the container, made again so that CRIU finds every mount.
        let resolv = std::fs::read("/etc/resolv.conf").unwrap_or_default();
        write_atomic(&bundle.join("resolv.conf"), &resolv, 0o644)?;
        write_atomic(&bundle.join(".containerenv"), b"engine=\"ckpt\"\n", 0o644)?;
        crate::util::create_dir_with_mode(&bundle.join(spec::PODMAN_SHM_DIR), 0o1777)?;
    }
    let sources: Vec<PathBuf> = record
        .mounts
        .iter()
        .map(|m| match m.kind {
            MountKind::Volume => ctx.volumes.mountpoint(&m.source),
            MountKind::Bind => PathBuf::from(&m.source),
        })
        .collect();
    for (m, source) in record.mounts.iter().zip(&sources) {
        if !source.exists() {
            return Err(Error::MountSourceMissing {
                name: record.name.clone(),
                destination: m.destination.clone(),
                host_path: source.clone(),
            });
        }
    }
    let mounts: Vec<HostMount> = record
        .mounts
        .iter()
        .zip(&sources)
        .map(|(m, source)| HostMount { source, destination: &m.destination, read_only: m.read_only })
        .collect();
    crate::netns::create(&paths.netns())?;
    connect(ctx, record, wanted)?;
    let config = spec::build(record, &paths.merged(), &bundle, &paths.netns(), &mounts)
        .map_err(|e| Error::SpecUnbuildable { name: record.name.clone(), detail: e.to_string() })?;
    write_json(&bundle.join("config.json"), &config).map_err(Error::from)
}

/// Attaches the namespace to the container's networks, unless it is attached already (a restore
/// prepares its bundle before it launches). Options saved for a namespace that is gone (a
/// reboot, a crash) are released first.
fn connect(ctx: &Context, record: &ContainerRecord, wanted: &Wanted) -> Result<()> {
    let paths = ctx.containers.paths(&record.id);
    if paths.network_options().exists() {
        if crate::rootfs::is_mountpoint(&paths.netns()) {
            return Ok(());
        }
        network::detach(ctx, record)?;
    }
    network::attach(ctx, record, wanted)
}

/// Releases what [`prepare_bundle`] took for a run: the network, the namespace, the rootfs.
pub fn release_bundle(ctx: &Context, record: &ContainerRecord) -> Result<()> {
    let paths = ctx.containers.paths(&record.id);
    network::detach(ctx, record)?;
    crate::netns::remove(&paths.netns())?;
    crate::rootfs::unmount(&paths.merged())?;
    Ok(())
}

/// Starts the container's supervisor for `launch`; on failure the rootfs is released again.
pub fn launch(ctx: &Context, record: &mut ContainerRecord, launch: &Launch, wanted: &Wanted) -> Result<i32> {
    if let Err(e) = prepare_bundle(ctx, record, wanted) {
        let _ = release_bundle(ctx, record);
        return Err(e);
    }
    let token = random_id();
    let previous = record.state.clone();
    record.state.run_token = Some(token.clone());
    ctx.containers.save(record)?;
    match supervisor::spawn(&ctx.containers, record, &token, launch) {
        Ok(pid) => Ok(pid),
        Err(e) => {
            record.state = previous;
            let _ = release_bundle(ctx, record);
            ctx.containers.save(record)?;
            Err(e.into())
        }
    }
}

pub fn start(ctx: &Context, record: &ContainerRecord) -> Result<ContainerRecord> {
    settle(ctx, record)?;
    let _lock = ContainerLock::acquire(&ctx.roots.locks_dir(), &record.id)?;
    let mut record = ctx.containers.load(&record.id)?;
    if status(ctx, &record)?.running() {
        return Ok(record);
    }
    // A fresh start forgets an earlier checkpoint, as podman's init does.
    let previous = record.state.clone();
    record.state = StateFlags { started_at: Some(crate::util::now()), ..StateFlags::default() };
    if let Err(e) = launch(ctx, &mut record, &Launch::Run, &Wanted::new()) {
        record.state = previous;
        ctx.containers.save(&record)?;
        return Err(e);
    }
    Ok(record)
}

/// Waits for the supervisor of an exited container to finish its cleanup; returns at once for a
/// running container, whose supervisor stays. Call it before taking the container lock: the
/// supervisor needs that lock for its cleanup.
pub fn settle(ctx: &Context, record: &ContainerRecord) -> Result<()> {
    // No supervisor alive, nothing to wait for: the runtime need not be asked (a restore of a
    // checkpointed container saves a `runc state` this way).
    if !crate::store::is_locked(&ctx.containers.paths(&record.id).supervisor_lock()) {
        return Ok(());
    }
    if !status(ctx, record)?.running() {
        wait_for_supervisor(ctx, &record.id, SUPERVISOR_CLEANUP);
    }
    Ok(())
}

/// How long the supervisor of an exited container may take to record the exit and clean up.
pub const SUPERVISOR_CLEANUP: Duration = Duration::from_secs(30);

/// Waits until the supervisor of the container's last run has finished its cleanup.
pub fn wait_for_supervisor(ctx: &Context, id: &str, timeout: Duration) -> bool {
    wait_unlocked(&ctx.containers.paths(id).supervisor_lock(), timeout)
}

pub fn stop(ctx: &Context, record: &ContainerRecord, timeout_secs: u64) -> Result<()> {
    let runtime = ctx.runtime_named(&record.runtime)?;
    if !status(ctx, record)?.running() {
        wait_for_supervisor(ctx, &record.id, SUPERVISOR_CLEANUP);
        return Ok(());
    }
    if timeout_secs > 0 {
        ignore_gone(runtime.kill(&record.id, "TERM"))?;
        if wait_for_supervisor(ctx, &record.id, Duration::from_secs(timeout_secs)) {
            return Ok(());
        }
    }
    ignore_gone(runtime.kill(&record.id, "KILL"))?;
    if !wait_for_supervisor(ctx, &record.id, SUPERVISOR_CLEANUP) {
        return Err(crate::supervisor::SupervisorError::Failed {
            id: record.id.clone(),
            detail: "the container did not exit 30 s after SIGKILL".into(),
        }
        .into());
    }
    Ok(())
}

/// A kill of a container that exited meanwhile is not an error.
fn ignore_gone(result: std::result::Result<(), crate::runtime::RuntimeError>) -> Result<()> {
    match result {
        Err(crate::runtime::RuntimeError::Gone { .. }) => Ok(()),
        other => other.map_err(Error::from),
    }
}

/// `podman pause`: freezes a running container through the runtime.
pub fn pause(ctx: &Context, record: &ContainerRecord) -> Result<()> {
    let _lock = ContainerLock::try_acquire(&ctx.roots.locks_dir(), &record.id, &record.name)?;
    let current = status(ctx, record)?.status;
    if current != ContainerStatus::Running {
        return Err(improper(record, current, "can't pause"));
    }
    ctx.runtime_named(&record.runtime)?.pause(&record.id)?;
    mark_paused(ctx, &record.id, true)
}

/// Records whether the user has the container paused; the caller holds its lock.
fn mark_paused(ctx: &Context, id: &str, paused: bool) -> Result<()> {
    let mut record = ctx.containers.load(id)?;
    record.state.paused = paused;
    ctx.containers.save(&record).map_err(Error::from)
}

/// `podman unpause`: thaws a paused container.
pub fn unpause(ctx: &Context, record: &ContainerRecord) -> Result<()> {
    let _lock = ContainerLock::try_acquire(&ctx.roots.locks_dir(), &record.id, &record.name)?;
    let current = status(ctx, record)?.status;
    if current != ContainerStatus::Paused {
        return Err(Error::ContainerState {
            name: record.name.clone(),
            state: current.to_string(),
            action: "can't unpause: it is not paused".into(),
        });
    }
    ctx.runtime_named(&record.runtime)?.resume(&record.id)?;
    mark_paused(ctx, &record.id, false)
}

fn improper(record: &ContainerRecord, state: ContainerStatus, action: &str) -> Error {
    Error::ContainerState {
        name: record.name.clone(),
        state: state.to_string(),
        action: format!("{action}: it is not running"),
    }
}

/// `podman wait`: blocks until the container is not running (a checkpoint counts) and its
/// supervisor has recorded the exit; returns the exit code.
pub fn wait(ctx: &Context, record: &ContainerRecord, poll: Duration) -> Result<i32> {
    while status(ctx, record)?.running() {
        std::thread::sleep(poll);
    }
    settle(ctx, record)?;
    let record = ctx.containers.load(&record.id)?;
    Ok(record.state.exit_code.unwrap_or(0))
}

/// `podman restart`: stops a running container (SIGTERM, then SIGKILL after `timeout_secs`)
/// and starts it again; a stopped one is just started.
pub fn restart(ctx: &Context, record: &ContainerRecord, timeout_secs: u64) -> Result<ContainerRecord> {
    stop(ctx, record, timeout_secs)?;
    start(ctx, record)
}

/// Removes a container; with `force`, a running one is stopped first, waiting `stop_timeout`
/// seconds after SIGTERM (podman's `rm -f -t`, 0 by default: SIGKILL at once).
pub fn remove(ctx: &Context, record: &ContainerRecord, force: bool, stop_timeout: u64) -> Result<()> {
    if status(ctx, record)?.running() {
        if !force {
            return Err(Error::ContainerRunning(record.name.clone()));
        }
        stop(ctx, record, stop_timeout)?;
    }
    settle(ctx, record)?;
    let _lock = ContainerLock::acquire(&ctx.roots.locks_dir(), &record.id)?;
    let Ok(record) = ctx.containers.load(&record.id) else { return Ok(()) }; // --rm got there first
    let runtime = ctx.runtime_named(&record.runtime)?;
    if runtime.state(&record.id)?.is_some() {
        runtime.delete(&record.id, true)?;
    }
    // Processes the runtime has lost track of (a supervisor or runtime state gone) still run in
    // the rootfs: without --force they keep the container; with it they go.
    let merged = ctx.containers.paths(&record.id).merged();
    let survivors =
        if force { crate::rootfs::kill_processes_in(&merged) } else { crate::rootfs::processes_in(&merged) };
    if !survivors.is_empty() {
        return Err(Error::ContainerState {
            name: record.name.clone(),
            state: "running outside its runtime's knowledge".into(),
            action: format!(
                "processes {survivors:?} still run in its rootfs; {}",
                if force { "they could not be killed" } else { "use --force to kill them" }
            ),
        });
    }
    remove_files(ctx, &record)
}

/// Removes everything ckpt holds for the container except its named volumes.
pub fn remove_files(ctx: &Context, record: &ContainerRecord) -> Result<()> {
    network::detach(ctx, record)?;
    crate::store::teardown(&ctx.roots, &ctx.containers.paths(&record.id)).map_err(Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volumes_parse_as_podman_writes_them() {
        let named = parse_volume("data:/data").unwrap();
        assert_eq!((named.kind, named.source.as_str(), named.read_only), (MountKind::Volume, "data", false));
        let bind = parse_volume("/tmp:/host:ro").unwrap();
        assert_eq!((bind.kind, bind.read_only), (MountKind::Bind, true));
        for bad in
            ["data", "data:relative", "data:/d/../etc", "data:/d:bogus", "/does/not/exist:/d", "bad/name:/d", "a:b:c:d"]
        {
            assert!(parse_volume(bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn key_values_need_a_key() {
        let parsed = parse_key_values(&["a=1".into(), "b=".into(), "c=x=y".into()], "--label").unwrap();
        assert_eq!(parsed["a"], "1");
        assert_eq!(parsed["b"], "");
        assert_eq!(parsed["c"], "x=y");
        let err = parse_key_values(&["=novalue".into()], "--env").unwrap_err().to_string();
        assert!(err.contains("--env") && err.contains("KEY=VALUE"), "{err}");
        assert!(parse_key_values(&["nokey".into()], "--label").is_err());
    }

    #[test]
    fn generated_names_are_stable_and_podman_shaped() {
        let id = "0a1b2c3d".repeat(8);
        let name = generated_name(&id);
        assert_eq!(name, generated_name(&id));
        assert!(name.ends_with("_2c3d") && name.split('_').count() == 3, "{name}");
        validate_object_name("container", &name).unwrap();
    }

    #[test]
    fn gone_containers_are_not_errors_for_stop() {
        let gone = crate::runtime::RuntimeError::Gone {
            runtime: "runc".into(),
            action: "kill",
            id: "x".into(),
            stderr: "container not running".into(),
        };
        assert!(ignore_gone(Err(gone)).is_ok());
        let failed = crate::runtime::RuntimeError::Failed {
            runtime: "runc".into(),
            action: "kill",
            id: "x".into(),
            status: "exit status: 1".into(),
            stderr: "permission denied".into(),
        };
        assert!(ignore_gone(Err(failed)).is_err());
    }
}
