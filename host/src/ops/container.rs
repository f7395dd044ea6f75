//! ps, inspect, logs, exec and diff: looking at and into containers.

use std::collections::BTreeMap;
use std::io::{Read, Write};

use std::path::PathBuf;

use serde::Serialize;

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
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Inspect {
    pub id: String,
    pub created: String,
    pub path: Option<String>,
    pub args: Vec<String>,
    pub state: InspectState,
    pub image: String,
    pub image_name: String,
    pub name: String,
    pub log_path: PathBuf,
    #[serde(rename = "OCIRuntime")]
    pub oci_runtime: String,
    pub mounts: Vec<InspectMount>,
    pub config: InspectConfig,
    pub host_config: InspectHostConfig,
    pub network_settings: InspectNetworkSettings,
}

/// podman's `NetworkSettings`: the addresses are shown while the container runs.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct InspectNetworkSettings {
    /// The first network's, as podman shows them at this level too.
    #[serde(flatten)]
    pub address: InspectAddress,
    pub ports: BTreeMap<String, Vec<InspectPortBinding>>,
    pub sandbox_key: String,
    pub networks: BTreeMap<String, InspectNetwork>,
}

/// The container's address on one network.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct InspectAddress {
    #[serde(rename = "IPAddress")]
    pub ip_address: String,
    #[serde(rename = "IPPrefixLen")]
    pub ip_prefix_len: u8,
    pub gateway: String,
    pub mac_address: String,
}

#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct InspectNetwork {
    #[serde(flatten)]
    pub address: InspectAddress,
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    pub aliases: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct InspectPortBinding {
    pub host_ip: String,
    pub host_port: String,
}

/// `80/tcp` → its host bindings, one per port of each range, as podman lists them.
fn port_bindings(ports: &[crate::store::PublishedPort]) -> BTreeMap<String, Vec<InspectPortBinding>> {
    let mut bindings: BTreeMap<String, Vec<InspectPortBinding>> = BTreeMap::new();
    for port in ports {
        for offset in 0..port.range {
            bindings.entry(format!("{}/{}", port.container_port + offset, port.protocol)).or_default().push(
                InspectPortBinding { host_ip: port.host_ip.clone(), host_port: (port.host_port + offset).to_string() },
            );
        }
    }
    bindings
}

fn network_settings(
    record: &ContainerRecord,
    paths: &crate::store::ContainerPaths,
    running: bool,
) -> InspectNetworkSettings {
    let mut settings =
        InspectNetworkSettings { ports: port_bindings(&record.network.ports), ..InspectNetworkSettings::default() };
    let status = if running { crate::network::read_status(&paths.network_status()) } else { Default::default() };
    if running {
        settings.sandbox_key = paths.netns().display().to_string();
    }
    for (name, attachment) in &record.network.networks {
        let mut shown = InspectNetwork {
            network_id: name.clone(),
            aliases: attachment.aliases.clone(),
            ..InspectNetwork::default()
        };
        if let Some((mac, ip, prefix, gateway)) = status.get(name).and_then(|s| s.first_address()) {
            shown.address = InspectAddress {
                ip_address: ip.to_string(),
                ip_prefix_len: prefix,
                gateway: gateway.unwrap_or_default(),
                mac_address: mac,
            };
        }
        if settings.address.ip_address.is_empty() {
            settings.address = shown.address.clone();
        }
        settings.networks.insert(name.clone(), shown);
    }
    settings
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct InspectState {
    pub status: ContainerStatus,
    pub running: bool,
    pub paused: bool,
    pub pid: i32,
    pub exit_code: i32,
    pub started_at: String,
    pub finished_at: String,
    pub checkpointed: bool,
    pub checkpointed_at: String,
    pub restored: bool,
    pub restored_at: String,
    pub checkpoint_path: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct InspectMount {
    #[serde(rename = "Type")]
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub source: PathBuf,
    pub destination: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub driver: Option<&'static str>,
    #[serde(rename = "RW")]
    pub rw: bool,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct InspectConfig {
    pub image: String,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub labels: std::collections::BTreeMap<String, String>,
    pub hostname: String,
    pub working_dir: String,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct InspectHostConfig {
    pub auto_remove: bool,
    /// `bridge` or `none`, as podman names them.
    pub network_mode: &'static str,
    pub port_bindings: BTreeMap<String, Vec<InspectPortBinding>>,
}

pub fn inspect(ctx: &Context, record: &ContainerRecord) -> Result<Inspect> {
    let st = status(ctx, record)?;
    let paths = ctx.containers.paths(&record.id);
    let mounts = record
        .mounts
        .iter()
        .map(|m| match m.kind {
            MountKind::Volume => InspectMount {
                kind: "volume",
                name: Some(m.source.clone()),
                source: ctx.volumes.mountpoint(&m.source),
                destination: m.destination.clone(),
                driver: Some("local"),
                rw: !m.read_only,
            },
            MountKind::Bind => InspectMount {
                kind: "bind",
                name: None,
                source: PathBuf::from(&m.source),
                destination: m.destination.clone(),
                driver: None,
                rw: !m.read_only,
            },
        })
        .collect();
    let s = &record.state;
    Ok(Inspect {
        id: record.id.clone(),
        created: record.created_at.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
        path: record.command.first().cloned(),
        args: record.command.get(1..).unwrap_or_default().to_vec(),
        state: InspectState {
            status: st.status,
            running: st.running(),
            paused: st.status == ContainerStatus::Paused,
            pid: st.pid,
            exit_code: if st.running() { 0 } else { s.exit_code.unwrap_or(0) },
            started_at: time(&s.started_at),
            finished_at: time(&s.finished_at),
            checkpointed: s.checkpointed,
            checkpointed_at: time(&s.checkpointed_at),
            restored: s.restored,
            restored_at: time(&s.restored_at),
            checkpoint_path: s.checkpoint_path.clone(),
        },
        image: record.image_id.clone(),
        image_name: record.image_ref.clone(),
        name: record.name.clone(),
        log_path: paths.log(),
        oci_runtime: record.runtime.clone(),
        mounts,
        config: InspectConfig {
            image: record.image_name.clone(),
            cmd: record.command.clone(),
            env: record.env.clone(),
            labels: record.labels.clone(),
            hostname: crate::spec::hostname(record).to_string(),
            working_dir: record.workdir().to_string(),
        },
        host_config: InspectHostConfig {
            auto_remove: record.auto_remove,
            network_mode: match record.network.mode {
                crate::store::NetworkMode::Bridge => "bridge",
                crate::store::NetworkMode::None => "none",
            },
            port_bindings: port_bindings(&record.network.ports),
        },
        network_settings: network_settings(record, &paths, st.running()),
    })
}

/// One element of `ckpt ps --format json`, in podman's shape.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct PsEntry {
    pub id: String,
    pub names: Vec<String>,
    pub image: String,
    #[serde(rename = "ImageID")]
    pub image_id: String,
    pub command: Vec<String>,
    pub created: i64,
    pub created_at: String,
    pub state: ContainerStatus,
    pub status: String,
    pub pid: i32,
    pub labels: std::collections::BTreeMap<String, String>,
    pub auto_remove: bool,
    pub mounts: Vec<String>,
    /// The published ports, in netavark's shape, as podman's `ps --format json` shows them.
    pub ports: Vec<crate::store::PublishedPort>,
}

/// One `ps --filter KEY=VALUE`, as podman takes them.
#[derive(Debug, Clone, PartialEq)]
pub enum PsFilter {
    /// An ID prefix.
    Id(String),
    /// A part of the name; `^` and `$` anchor it, as in podman's regular expressions.
    Name(String),
    /// `label=KEY` or `label=KEY=VALUE`.
    Label(String, Option<String>),
    Status(ContainerStatus),
    /// The image, by name or ID prefix.
    Ancestor(String),
    /// podman's status of a container whose runtime lost it; ckpt shows none so (its state is
    /// the runtime's, and `system check` repairs what is left), so it matches nothing.
    UnknownStatus,
}

impl PsFilter {
    pub fn parse(text: &str) -> Result<PsFilter> {
        let invalid = |detail: &str| Error::invalid(format!("ps --filter {text:?}: {detail}"));
        let (key, value) = text.split_once('=').ok_or_else(|| invalid("give KEY=VALUE"))?;
        Ok(match key {
            "id" => PsFilter::Id(value.to_string()),
            "name" => PsFilter::Name(value.to_string()),
            "label" => match value.split_once('=') {
                Some((k, v)) => PsFilter::Label(k.to_string(), Some(v.to_string())),
                None => PsFilter::Label(value.to_string(), None),
            },
            "status" => PsFilter::Status(match value {
                "created" => ContainerStatus::Created,
                "running" => ContainerStatus::Running,
                "paused" => ContainerStatus::Paused,
                "exited" | "stopped" => ContainerStatus::Exited,
                "unknown" => return Ok(PsFilter::UnknownStatus),
                _ => return Err(invalid("the status is one of created, running, paused, exited, unknown")),
            }),
            "ancestor" => PsFilter::Ancestor(value.to_string()),
            _ => return Err(invalid("the keys are id, name, label, status and ancestor")),
        })
    }

    pub fn matches(&self, entry: &PsEntry) -> bool {
        match self {
            PsFilter::Id(prefix) => entry.id.starts_with(prefix.as_str()),
            PsFilter::Name(pattern) => entry.names.iter().any(|name| name_matches(pattern, name)),
            PsFilter::Label(key, value) => {
                entry.labels.get(key).is_some_and(|v| value.as_ref().is_none_or(|want| want == v))
            }
            PsFilter::Status(status) => entry.state == *status,
            PsFilter::UnknownStatus => false,
            PsFilter::Ancestor(image) => {
                entry.image == *image
                    || entry.image == crate::image::normalize_reference(image)
                    || (image.len() >= 4 && entry.image_id.starts_with(image.as_str()))
            }
        }
    }
}

fn name_matches(pattern: &str, name: &str) -> bool {
    match (pattern.strip_prefix('^'), pattern.strip_suffix('$')) {
        (Some(rest), _) if rest.ends_with('$') => name == &rest[..rest.len() - 1],
        (Some(rest), _) => name.starts_with(rest),
        (None, Some(rest)) => name.ends_with(rest),
        (None, None) => name.contains(pattern),
    }
}

/// `ckpt ps` as a table, in podman's columns.
pub fn ps_table(entries: &[PsEntry]) -> String {
    let mut table = format!(
        "{:<12}  {:<24}  {:<24}  {:<14}  {:<24}  NAMES\n",
        "CONTAINER ID", "IMAGE", "COMMAND", "STATUS", "PORTS"
    );
    for entry in entries {
        table.push_str(&crate::util::escape_controls(&entry.row()));
        table.push('\n');
    }
    table
}

impl PsEntry {
    /// The row of the `ps` table.
    fn row(&self) -> String {
        format!(
            "{:<12}  {:<24}  {:<24.24}  {:<14}  {:<24}  {}",
            crate::util::short_id(&self.id),
            self.image,
            self.command.join(" "),
            self.status,
            ports_text(&self.ports),
            self.names.first().map(String::as_str).unwrap_or_default()
        )
    }
}

/// `0.0.0.0:8080->80/tcp`, as podman's PORTS column shows a port (a range as `8080-8081->80-81/tcp`).
fn ports_text(ports: &[crate::store::PublishedPort]) -> String {
    let shown: Vec<String> = ports
        .iter()
        .map(|p| {
            let ip = if p.host_ip.is_empty() { "0.0.0.0" } else { &p.host_ip };
            let range = |first: u16| {
                if p.range > 1 { format!("{first}-{}", first + p.range - 1) } else { first.to_string() }
            };
            format!("{ip}:{}->{}/{}", range(p.host_port), range(p.container_port), p.protocol)
        })
        .collect();
    shown.join(", ")
}

pub fn ps_entry(ctx: &Context, record: &ContainerRecord) -> Result<PsEntry> {
    let st = status(ctx, record)?;
    Ok(PsEntry {
        id: record.id.clone(),
        names: vec![record.name.clone()],
        image: record.image_ref.clone(),
        image_id: record.image_id.clone(),
        command: record.command.clone(),
        created: record.created_at.timestamp(),
        created_at: record.created_at.to_rfc3339(),
        state: st.status,
        status: match st.status {
            ContainerStatus::Running => "Up".to_string(),
            ContainerStatus::Paused => "Up (Paused)".to_string(),
            ContainerStatus::Exited => format!("Exited ({})", record.state.exit_code.unwrap_or(0)),
            ContainerStatus::Created => "Created".to_string(),
        },
        pid: st.pid,
        labels: record.labels.clone(),
        auto_remove: record.auto_remove,
        mounts: record.mounts.iter().map(|m| m.destination.clone()).collect(),
        ports: record.network.ports.clone(),
    })
}

/// Prints the container's log: stdout lines to `out`, stderr lines to `err`.
///
/// The log is read through one open handle, so a `--rm` container that is removed while it is
/// followed still shows everything it wrote.
/// Which lines `logs` shows, as podman's `--since`, `--until` and `--tail` choose them.
#[derive(Debug, Clone, Default)]
pub struct LogSelection {
    pub follow: bool,
    /// Lines written at or after this time.
    pub since: Option<chrono::DateTime<chrono::Utc>>,
    /// Lines written before this time.
    pub until: Option<chrono::DateTime<chrono::Utc>>,
    /// Only the last N lines of what was written so far (following then shows new ones).
    pub tail: Option<usize>,
}

impl LogSelection {
    fn keeps(&self, line: &crate::supervisor::LogLine) -> bool {
        let Ok(time) = chrono::DateTime::parse_from_rfc3339(&line.time) else { return true };
        self.since.is_none_or(|since| time >= since) && self.until.is_none_or(|until| time < until)
    }
}

/// `--since` and `--until` as podman takes them: an RFC 3339 time, a date, Unix seconds, or a
/// Go duration before `now` (`10m`, `1h30m`, `90s`).
pub fn parse_log_time(
    text: &str,
    flag: &str,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<chrono::DateTime<chrono::Utc>> {
    use chrono::{DateTime, NaiveDate, TimeZone, Utc};
    if let Ok(time) = DateTime::parse_from_rfc3339(text) {
        return Ok(time.with_timezone(&Utc));
    }
    if let Ok(date) = NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        return Ok(Utc.from_utc_datetime(&date.and_hms_opt(0, 0, 0).expect("midnight exists")));
    }
    if let Ok(seconds) = text.parse::<f64>() {
        let whole = seconds.trunc() as i64;
        let nanos = (seconds.fract() * 1e9) as u32;
        if let Some(time) = DateTime::from_timestamp(whole, nanos) {
            return Ok(time);
        }
    }
    if let Some(ago) = crate::util::parse_duration(text) {
        return Ok(now - chrono::Duration::from_std(ago).unwrap_or(chrono::Duration::MAX));
    }
    Err(Error::invalid(format!(
        "{flag} {text:?} is neither a time (2026-11-28T10:00:00Z, 2026-11-28, Unix seconds) nor a duration (10m, 1h30m)"
    )))
}

pub fn logs(
    ctx: &Context,
    record: &ContainerRecord,
    out: &mut dyn Write,
    err: &mut dyn Write,
    selection: &LogSelection,
) -> Result<()> {
    let follow = selection.follow;
    let path = ctx.containers.paths(&record.id).log();
    let mut file = match std::fs::File::open(&path) {
        Ok(f) => Some(f),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(Error::io("read log", &path)(e)),
    };
    let mut pending = Vec::new();
    let mut first = true;
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
        let mut lines: Vec<_> = read_log(&pending[..complete]).into_iter().filter(|l| selection.keeps(l)).collect();
        if let Some(tail) = selection.tail.filter(|_| first) {
            lines.drain(..lines.len().saturating_sub(tail));
        }
        first = false;
        for line in lines {
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

pub fn exec(
    ctx: &Context,
    record: &ContainerRecord,
    command: &[String],
    env: &[String],
    mode: crate::runtime::ExecMode,
) -> Result<i32> {
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
    let runtime = match mode {
        crate::runtime::ExecMode::Detached => {
            let log = ctx.containers.paths(&record.id).bundle().join("exec-detached.log");
            let _ = std::fs::remove_file(&log);
            ctx.runtime_with_log(&record.runtime, log)?
        }
        _ => ctx.runtime_named(&record.runtime)?,
    };
    Ok(runtime.exec(&record.id, command, env, mode)?)
}

/// The changes to the container's root filesystem, as `podman diff` lists them.
pub fn diff(ctx: &Context, record: &ContainerRecord) -> Result<Vec<Change>> {
    let image = ctx.images.resolve(&record.image_id).or_else(|_| ctx.images.resolve(&record.image_ref))?;
    let lower = ctx.images.rootfs(&image)?;
    rootfs::changes(&lower, &ctx.containers.paths(&record.id).upper()).map_err(Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: char, name: &str, command: &str, state: ContainerStatus, status: &str) -> PsEntry {
        PsEntry {
            id: id.to_string().repeat(64),
            names: vec![name.into()],
            image: "busybox:latest".into(),
            image_id: "c".repeat(64),
            command: command.split(' ').map(str::to_string).collect(),
            created: 0,
            created_at: "2026-11-28T00:00:00+00:00".into(),
            state,
            status: status.into(),
            pid: 0,
            labels: Default::default(),
            auto_remove: false,
            mounts: vec![],
            ports: vec![],
        }
    }

    #[test]
    fn the_ps_table_has_podmans_columns_and_escapes_names() {
        let entries = [
            entry('a', "web", "sh -c while true; do echo tick; sleep 1; done", ContainerStatus::Running, "Up"),
            entry('b', "db", "sleep 1000", ContainerStatus::Paused, "Up (Paused)"),
            entry('c', "evil\u{1b}[2J", "true", ContainerStatus::Exited, "Exited (0)"),
        ];
        insta::assert_snapshot!("ps_table", ps_table(&entries));
    }

    #[test]
    fn ps_filters_read_as_podmans() {
        let web = entry('a', "web", "top", ContainerStatus::Running, "Up");
        let mut db = entry('b', "db-1", "sleep 1", ContainerStatus::Exited, "Exited (0)");
        db.labels.insert("tier".into(), "back".into());
        let keep = |filter: &str| -> Vec<String> {
            let filter = PsFilter::parse(filter).unwrap();
            [&web, &db].into_iter().filter(|e| filter.matches(e)).map(|e| e.names[0].clone()).collect()
        };
        assert_eq!(keep("status=running"), ["web"]);
        assert_eq!(keep("status=exited"), ["db-1"]);
        assert_eq!(keep("name=db"), ["db-1"]);
        assert_eq!(keep("name=^web$"), ["web"]);
        assert!(keep("name=^we$").is_empty());
        assert_eq!(keep("id=bbbb"), ["db-1"]);
        assert_eq!(keep("label=tier"), ["db-1"]);
        assert!(keep("label=tier=front").is_empty());
        assert_eq!(keep("ancestor=busybox").len(), 2);
        for bad in ["status=sleeping", "colour=red", "name"] {
            let err = PsFilter::parse(bad).unwrap_err().to_string();
            assert!(err.contains(bad), "{err}");
        }
    }

    #[test]
    fn log_times_read_as_podman_takes_them() {
        let now = chrono::DateTime::parse_from_rfc3339("2026-11-28T10:00:00Z").unwrap().with_timezone(&chrono::Utc);
        let at = |text: &str| parse_log_time(text, "--since", now).unwrap().to_rfc3339();
        assert_eq!(at("2026-11-28T09:00:00+01:00"), "2026-11-28T08:00:00+00:00");
        assert_eq!(at("2026-11-27"), "2026-11-27T00:00:00+00:00");
        assert_eq!(at("1795860000"), "2026-11-28T10:00:00+00:00");
        assert_eq!(at("10m"), "2026-11-28T09:50:00+00:00");
        assert_eq!(at("1h30m"), "2026-11-28T08:30:00+00:00");
        let err = parse_log_time("yesterday", "--since", now).unwrap_err().to_string();
        assert!(err.contains("--since \"yesterday\""), "{err}");
    }
}
