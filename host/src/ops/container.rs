//! ps, inspect, logs, exec and diff: looking at and into containers.

use std::io::{Read, Write};

use serde_json::{Value, json};

use super::Context;
use super::lifecycle::status;
use crate::error::{Error, Result};
use crate::rootfs::{self, Change};
use crate::store::{ContainerRecord, ContainerStatus, MountKind};
use crate::supervisor::read_log;

fn time(t: &Option<chrono::DateTime<chrono::Utc>>) -> String {
    t.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)).unwrap_or_else(|| "0001-01-01T00:00:00Z".into())
}

/// One element of `ckpt inspect`, in podman's shape.
pub fn inspect(ctx: &Context, record: &ContainerRecord) -> Result<Value> {
    let st = status(ctx, record)?;
    let paths = ctx.containers.paths(&record.id);
    let mounts: Vec<Value> = record
        .mounts
        .iter()
        .map(|m| match m.kind {
            MountKind::Volume => json!({
                "Type": "volume", "Name": m.source, "Source": ctx.volumes.mountpoint(&m.source),
                "Destination": m.destination, "Driver": "local", "RW": !m.read_only
            }),
            MountKind::Bind => json!({
                "Type": "bind", "Source": m.source, "Destination": m.destination, "RW": !m.read_only
            }),
        })
        .collect();
    let s = &record.state;
    Ok(json!({
        "Id": record.id,
        "Created": record.created_at.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
        "Path": record.command.first(),
        "Args": record.command.get(1..).unwrap_or_default(),
        "State": {
            "Status": st.status,
            "Running": st.running(),
            "Paused": st.status == ContainerStatus::Paused,
            "Pid": st.pid,
            "ExitCode": if st.running() { 0 } else { s.exit_code.unwrap_or(0) },
            "StartedAt": time(&s.started_at),
            "FinishedAt": time(&s.finished_at),
            "Checkpointed": s.checkpointed,
            "CheckpointedAt": time(&s.checkpointed_at),
            "Restored": s.restored,
            "RestoredAt": time(&s.restored_at),
            "CheckpointPath": s.checkpoint_path,
        },
        "Image": record.image_id,
        "ImageName": record.image_ref,
        "Name": record.name,
        "LogPath": paths.log(),
        "OCIRuntime": record.runtime,
        "Mounts": mounts,
        "Config": {
            "Image": record.image_name,
            "Cmd": record.command,
            "Env": record.env,
            "Labels": record.labels,
            "Hostname": crate::spec::hostname(record),
        },
        "HostConfig": {"AutoRemove": record.auto_remove},
    }))
}

/// A line of `ckpt ps --format json`, in podman's shape.
pub fn ps_entry(ctx: &Context, record: &ContainerRecord) -> Result<Value> {
    let st = status(ctx, record)?;
    Ok(json!({
        "Id": record.id,
        "Names": [record.name],
        "Image": record.image_ref,
        "ImageID": record.image_id,
        "Command": record.command,
        "Created": record.created_at.timestamp(),
        "CreatedAt": record.created_at.to_rfc3339(),
        "State": st.status,
        "Status": match st.status {
            ContainerStatus::Running => "Up".to_string(),
            ContainerStatus::Paused => "Up (Paused)".to_string(),
            ContainerStatus::Exited => format!("Exited ({})", record.state.exit_code.unwrap_or(0)),
            ContainerStatus::Created => "Created".to_string(),
        },
        "Pid": st.pid,
        "Labels": record.labels,
        "AutoRemove": record.auto_remove,
        "Mounts": record.mounts.iter().map(|m| &m.destination).collect::<Vec<_>>(),
    }))
}

/// Prints the container's log: stdout lines to `out`, stderr lines to `err`.
///
/// The log is read through one open handle, so a `--rm` container that is removed while it is
/// followed still shows everything it wrote.
pub fn logs(
    ctx: &Context,
    record: &ContainerRecord,
    out: &mut dyn Write,
    err: &mut dyn Write,
    follow: bool,
) -> Result<()> {
    let path = ctx.containers.paths(&record.id).log();
    let mut file = match std::fs::File::open(&path) {
        Ok(f) => Some(f),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(Error::io("read log", &path)(e)),
    };
    let mut pending = Vec::new();
    loop {
        let alive = follow && is_alive(ctx, record)?;
        if file.is_none() {
            file = std::fs::File::open(&path).ok();
        }
        if let Some(f) = file.as_mut() {
            f.read_to_end(&mut pending).map_err(Error::io("read log", &path))?;
        }
        // Only complete records are shown, so a line is never printed in halves.
        let complete = pending.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        for line in read_log(&pending[..complete]) {
            let sink: &mut dyn Write = if line.stream == "stderr" { err } else { out };
            sink.write_all(&line.text).map_err(Error::io("write", "stdout"))?;
        }
        pending.drain(..complete);
        out.flush().ok();
        if !alive {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// Whether the container may still write to its log: running, or its supervisor still at work.
fn is_alive(ctx: &Context, record: &ContainerRecord) -> Result<bool> {
    let Ok(fresh) = ctx.containers.load(&record.id) else { return Ok(false) };
    Ok(status(ctx, &fresh)?.running() || crate::store::is_locked(&ctx.containers.paths(&record.id).supervisor_lock()))
}

pub fn exec(ctx: &Context, record: &ContainerRecord, command: &[String], env: &[String], tty: bool) -> Result<i32> {
    if command.is_empty() {
        return Err(Error::invalid("exec needs a command to run in the container"));
    }
    super::lifecycle::parse_key_values(env, "--env")?;
    if !status(ctx, record)?.running() {
        return Err(Error::ContainerState {
            name: record.name.clone(),
            state: status(ctx, record)?.status.to_string(),
            action: "cannot exec in a container that is not running; start it first".into(),
        });
    }
    let runtime = ctx.runtime_named(&record.runtime)?;
    Ok(runtime.exec(&record.id, command, env, tty)?)
}

/// The changes to the container's root filesystem, as `podman diff` lists them.
pub fn diff(ctx: &Context, record: &ContainerRecord) -> Result<Vec<Change>> {
    let image = ctx.images.resolve(&record.image_id).or_else(|_| ctx.images.resolve(&record.image_ref))?;
    let lower = ctx.images.rootfs(&image)?;
    rootfs::changes(&lower, &ctx.containers.paths(&record.id).upper())
}
