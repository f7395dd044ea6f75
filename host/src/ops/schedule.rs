//! `ckpt schedule`: schedules that ask for checkpoints (the planner decides whether, how and
//! where), and one run of a schedule, which `schedule run` and the daemon share.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Instant;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::Context;
use super::audit::AuditEvent;
use super::checkpoint::{self, CheckpointRequest};
use crate::error::{Error, Result};
use crate::policy::bindings::{ClusterFacts, ScheduleFacts};
use crate::policy::{self, Retention};
use crate::store::schedules::{self, Schedule, ScheduleState, Schedules, Selector, When};

impl Context {
    pub fn schedules(&self) -> Schedules {
        Schedules::new(self.roots.schedules_dir())
    }
}

/// Checks a new schedule (its timing, export template and policies, each loaded as the role it
/// plays) and saves it; nothing is saved when anything is wrong.
pub fn add(ctx: &Context, mut schedule: Schedule) -> Result<()> {
    schedules::check_name(&schedule.name)?;
    // The daemon runs elsewhere than the command that added it: a policy file is kept by its
    // absolute path, never resolved against the daemon's working directory.
    let specs = schedule.policy.iter_mut().chain(schedule.gates.iter_mut()).chain(schedule.retainer.iter_mut());
    for spec in specs {
        let path = std::path::Path::new(&spec.source);
        if !super::policy::is_pinned(&spec.source) && path.is_relative() && path.exists() {
            spec.source = std::fs::canonicalize(path).map_err(Error::io("resolve", path))?.display().to_string();
        }
    }
    if let Selector::Containers(names) = &schedule.selector {
        for name in names.iter().filter(|n| n.starts_with(crate::kubelet::PREFIX)) {
            crate::kubelet::PodContainer::parse(name)?;
        }
    }
    if ctx.schedules().exists(&schedule.name) {
        return Err(Error::invalid(format!(
            "schedule {:?} already exists; 'ckpt schedule rm {}' it first",
            schedule.name, schedule.name
        )));
    }
    match &schedule.when {
        When::Every(text) => match crate::util::parse_duration(text) {
            Some(d) if d >= std::time::Duration::from_secs(1) => {}
            _ => {
                return Err(Error::invalid(format!(
                    "--every {text:?} is not a duration of a second or more, such as 30s, 5m or 1h"
                )));
            }
        },
        When::Cron(expr) => {
            schedules::parse_cron(expr)
                .map_err(|e| Error::invalid(format!("--cron {expr:?} is not a cron expression: {e}")))?;
        }
    }
    if let Some(jitter) = &schedule.jitter
        && crate::util::parse_duration(jitter).is_none()
    {
        return Err(Error::invalid(format!("--jitter {jitter:?} is not a duration, such as 10s")));
    }
    if let Some(template) = &schedule.export {
        let sample = expand(template, "name", &"0".repeat(64), Utc::now());
        check_export(&sample).map_err(|e| Error::invalid(format!("--export {template:?}: {e}")))?;
    }
    let request = request(&schedule, (&"0".repeat(64), "name"), None, Utc::now());
    checkpoint::validate_options(&request, true)?;
    // Loading checks each component's world and its settings now, not at 3 a.m.
    load_policies(ctx, &schedule)?;
    ctx.schedules().save(&schedule)?;
    ctx.audit(AuditEvent::ScheduleAdd { schedule: schedule.name.clone(), definition: schedule.clone() });
    Ok(())
}

fn load_policies(ctx: &Context, schedule: &Schedule) -> Result<Retention> {
    let component = |spec: &schedules::PolicySpec| super::policy::component(ctx, &spec.source, spec.settings.clone());
    let planner = match &schedule.policy {
        Some(spec) => component(spec)?,
        None => {
            policy::Component { read: policy::read_component(policy::DEFAULT_POLICY_SOURCE)?, settings: String::new() }
        }
    };
    let gates = schedule.gates.iter().map(component).collect::<Result<Vec<_>>>()?;
    policy::Policies::load_components(&ctx.policy_cache(), planner, gates)?;
    retention(ctx, schedule)
}

fn retention(ctx: &Context, schedule: &Schedule) -> Result<Retention> {
    let retainer = match &schedule.retainer {
        Some(spec) => super::policy::component(ctx, &spec.source, spec.settings.clone())?,
        None => policy::Component {
            read: policy::read_component(policy::DEFAULT_RETAINER_SOURCE)?,
            settings: String::new(),
        },
    };
    Ok(Retention::load(&ctx.policy_cache(), retainer)?)
}

fn check_export(location: &str) -> Result<()> {
    if location.starts_with('/') {
        return Ok(());
    }
    crate::image::validate_reference(location).map_err(Error::from)
}

/// Expands `{name}`, `{id}` (short) and `{time}` (UTC, `YYYYMMDDTHHMMSSZ`) in an export template.
pub fn expand(template: &str, name: &str, id: &str, at: DateTime<Utc>) -> String {
    template
        .replace("{name}", name)
        .replace("{id}", &id[..id.len().min(12)])
        .replace("{time}", &at.format("%Y%m%dT%H%M%S%3fZ").to_string())
}

/// The checkpoint request of one run, for one container.
fn request(
    schedule: &Schedule,
    (id, name): (&str, &str),
    facts: Option<ScheduleFacts>,
    at: DateTime<Utc>,
) -> CheckpointRequest {
    let flags = &schedule.flags;
    let on_podman = name.starts_with(crate::podman::PREFIX);
    let (export, create_image) = match &schedule.export {
        Some(template) => {
            let location = expand(template, name.trim_start_matches(crate::podman::PREFIX), id, at);
            match location.starts_with('/') {
                true => (Some(location.into()), None),
                false => (None, Some(location)),
            }
        }
        None => (None, None),
    };
    CheckpointRequest {
        containers: vec![if on_podman { name.to_string() } else { id.to_string() }],
        keep: flags.keep,
        leave_running: flags.leave_running,
        tcp_established: flags.tcp_established,
        file_locks: flags.file_locks,
        compress: flags.compress.clone().filter(|_| export.is_some()),
        export,
        create_image,
        ignore_rootfs: flags.ignore_rootfs,
        ignore_volumes: flags.ignore_volumes,
        policy: schedule.policy.as_ref().map(|p| p.source.clone()),
        policy_config: schedule.policy.as_ref().map(|p| p.settings.clone()).filter(|s| !s.is_empty()),
        gates: schedule.gates.iter().map(|g| (g.source.clone(), g.settings.clone())).collect(),
        trigger: "schedule".into(),
        schedule: facts,
        ..Default::default()
    }
}

/// A row of `schedule ls`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Listed {
    #[serde(flatten)]
    pub schedule: Schedule,
    pub next_run: Option<DateTime<Utc>>,
    #[serde(flatten)]
    pub state: ScheduleState,
}

pub fn list(ctx: &Context) -> Result<Vec<Listed>> {
    let store = ctx.schedules();
    Ok(store
        .list()?
        .into_iter()
        .map(|schedule| {
            let state = store.state(&schedule.name);
            let next_run = match schedule.paused {
                true => None,
                // A last run in the future (a clock that jumped) is not believed, as in `due`.
                false => schedule.next_after(state.last_run.filter(|t| *t <= Utc::now()).unwrap_or(schedule.created)),
            };
            Listed { schedule, next_run, state }
        })
        .collect())
}

pub fn remove(ctx: &Context, name: &str) -> Result<()> {
    ctx.schedules().remove(name)?;
    ctx.audit(AuditEvent::ScheduleRm { schedule: name.to_string() });
    Ok(())
}

pub fn set_paused(ctx: &Context, name: &str, paused: bool) -> Result<()> {
    let _lock = crate::store::StoreLock::named(&ctx.roots.locks_dir(), "schedules")?;
    let mut schedule = ctx.schedules().get(name)?;
    schedule.paused = paused;
    ctx.schedules().save(&schedule)?;
    let schedule = name.to_string();
    ctx.audit(if paused { AuditEvent::SchedulePause { schedule } } else { AuditEvent::ScheduleResume { schedule } });
    Ok(())
}

/// What happened to one container in a run.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct ContainerOutcome {
    pub container: String,
    /// `ok`, `skipped`, `denied` or `failed`.
    pub result: &'static str,
    pub detail: String,
    pub entries: Vec<String>,
    /// From the slot (plus its jitter) to the start of this container's checkpoint.
    pub lag_ms: u64,
    pub duration_ms: u64,
    pub deleted: Vec<String>,
}

/// A whole run.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct RunOutcome {
    pub schedule: String,
    pub slot: DateTime<Utc>,
    pub missed: u32,
    pub result: String,
    pub containers: Vec<ContainerOutcome>,
}

/// What the runs of one process share: a bound on concurrent checkpoints, and the containers
/// being checkpointed now (one container is never checkpointed twice at once).
pub struct Limits {
    pub max_parallel: usize,
    running: Mutex<(usize, HashSet<String>)>,
    freed: Condvar,
}

impl Limits {
    pub fn new(max_parallel: usize) -> Limits {
        Limits { max_parallel: max_parallel.max(1), running: Mutex::new((0, HashSet::new())), freed: Condvar::new() }
    }

    pub fn in_flight(&self) -> usize {
        self.running.lock().expect("limits").0
    }

    /// Waits for a free slot; `None` if the container is being checkpointed already.
    fn enter(&self, id: &str) -> Option<Slot<'_>> {
        let mut running = self.running.lock().expect("limits");
        if running.1.contains(id) {
            return None;
        }
        while running.0 >= self.max_parallel {
            running = self.freed.wait(running).expect("limits");
        }
        if !running.1.insert(id.to_string()) {
            return None;
        }
        running.0 += 1;
        Some(Slot { limits: self, id: id.to_string() })
    }
}

struct Slot<'a> {
    limits: &'a Limits,
    id: String,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let mut running = self.limits.running.lock().expect("limits");
        running.0 -= 1;
        running.1.remove(&self.id);
        self.limits.freed.notify_all();
    }
}

/// The containers a run covers, resolved now: named ones (a missing one is reported), those with
/// the label, or every running one.
/// A container a run covers: its ID and name.
type Target = (String, String);

fn targets(ctx: &Context, selector: &Selector) -> Result<(Vec<Target>, Vec<ContainerOutcome>)> {
    let mut out = Vec::new();
    let mut missing = Vec::new();
    let running = |record: &crate::store::ContainerRecord| {
        super::lifecycle::status(ctx, record).is_ok_and(|s| s.status.can_checkpoint())
    };
    match selector {
        Selector::Containers(names) => {
            for name in names {
                if name.starts_with(crate::kubelet::PREFIX) {
                    // The kubelet knows its pods: it is asked when the run comes to this one.
                    out.push((name.clone(), name.clone()));
                    continue;
                }
                if let Some(podman_name) = name.strip_prefix(crate::podman::PREFIX) {
                    // podman's container, by podman's ID: the catalog keeps its entries under it.
                    match crate::podman::PodmanApi::inspect(&ctx.podman(), podman_name) {
                        Ok(container) => out.push((container.id, name.clone())),
                        Err(e) => missing.push(outcome(name, "skipped", format!("{e}"))),
                    }
                    continue;
                }
                match ctx.containers.lookup(name) {
                    Ok(record) => out.push((record.id, record.name)),
                    Err(e) => missing.push(outcome(name, "skipped", format!("{e}"))),
                }
            }
        }
        Selector::Label(label) => {
            let (key, value) = label.split_once('=').unwrap_or((label.as_str(), ""));
            for record in ctx.containers.list()? {
                if record.labels.get(key).is_some_and(|v| value.is_empty() || v == value) && running(&record) {
                    out.push((record.id, record.name));
                }
            }
        }
        Selector::All => {
            for record in ctx.containers.list()? {
                if running(&record) {
                    out.push((record.id, record.name));
                }
            }
        }
        Selector::PodmanLabel(_) | Selector::PodmanAll => {
            let labels = match selector {
                Selector::PodmanLabel(label) => vec![label.clone()],
                _ => vec![],
            };
            for container in crate::podman::PodmanApi::running_with_labels(&ctx.podman(), &labels)? {
                out.push((container.id, format!("{}{}", crate::podman::PREFIX, container.name)));
            }
        }
    }
    Ok((out, missing))
}

fn outcome(container: &str, result: &'static str, detail: String) -> ContainerOutcome {
    ContainerOutcome {
        container: container.to_string(),
        result,
        detail,
        entries: vec![],
        lag_ms: 0,
        duration_ms: 0,
        deleted: vec![],
    }
}

/// Runs `schedule` for `slot`: checkpoints its containers (up to `limits.max_parallel` at once),
/// then retention for each container it checkpointed, and records where the schedule stands.
/// `event` is told of each container as it finishes.
pub fn run(
    ctx: &Context,
    schedule: &Schedule,
    slot: DateTime<Utc>,
    missed: u32,
    limits: &Limits,
    event: &(dyn Fn(&ContainerOutcome) + Sync),
) -> Result<RunOutcome> {
    let store = ctx.schedules();
    let previous = store.state(&schedule.name);
    let facts = ScheduleFacts {
        name: schedule.name.clone(),
        last_run: previous.last_run.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
        last_result: previous.last_result.clone(),
        missed_runs: missed,
    };
    let due = slot + chrono::Duration::from_std(schedule.jitter_for(slot)).unwrap_or_default();
    let (targets, mut outcomes) = targets(ctx, &schedule.selector)?;
    let retention = retention(ctx, schedule);
    let next = AtomicUsize::new(0);
    let results = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..limits.max_parallel.min(targets.len()) {
            scope.spawn(|| {
                while let Some(target) = targets.get(next.fetch_add(1, Ordering::SeqCst)) {
                    if crate::interrupt::received().is_some() {
                        break;
                    }
                    let done = one(ctx, schedule, target, &facts, due, limits, retention.as_ref().ok());
                    event(&done);
                    results.lock().expect("results").push(done);
                }
            });
        }
    });
    outcomes.extend(results.into_inner().expect("results"));
    if let Err(e) = &retention {
        ctx.audit(AuditEvent::RetentionFailed {
            container_id: None,
            schedule: Some(schedule.name.clone()),
            error: e.to_string(),
        });
    }
    let result = summary(&outcomes);
    let state = ScheduleState {
        last_run: Some(slot),
        last_result: Some(result.clone()),
        runs: previous.runs + 1,
        missed: previous.missed + u64::from(missed),
    };
    store.save_state(&schedule.name, &state)?;
    Ok(RunOutcome { schedule: schedule.name.clone(), slot, missed, result, containers: outcomes })
}

fn one(
    ctx: &Context,
    schedule: &Schedule,
    (id, name): &Target,
    facts: &ScheduleFacts,
    due: DateTime<Utc>,
    limits: &Limits,
    retention: Option<&Retention>,
) -> ContainerOutcome {
    let Some(_slot) = limits.enter(id) else {
        return outcome(name, "skipped", "a checkpoint of it is already in progress".into());
    };
    let started = Instant::now();
    let lag_ms = (Utc::now() - due).num_milliseconds().max(0) as u64;
    if name.starts_with(crate::kubelet::PREFIX) {
        let mut out = through_the_kubelet(ctx, schedule, name);
        out.lag_ms = lag_ms;
        out.duration_ms = started.elapsed().as_millis() as u64;
        return out;
    }
    let req = request(schedule, (id, name), Some(facts.clone()), Utc::now());
    let (done, result) = checkpoint::checkpoint(ctx, &req);
    let mut out = match (result, done.first()) {
        (Ok(()), Some(done)) if done.skipped.is_some() => {
            outcome(name, "skipped", done.skipped.clone().unwrap_or_default())
        }
        (Ok(()), Some(done)) => ContainerOutcome {
            entries: done.entries.iter().map(|e| e.id.clone()).collect(),
            ..outcome(name, "ok", done.entries.iter().map(|e| e.location.as_str()).collect::<Vec<_>>().join(" "))
        },
        (Ok(()), None) => outcome(name, "skipped", "nothing was selected".into()),
        (Err(e), _) if e.is_denial() => outcome(name, "denied", e.to_string()),
        (Err(e @ Error::Base(crate::error::BaseError::ContainerBusy(_))), _) => outcome(name, "skipped", e.to_string()),
        (Err(e), _) => outcome(name, "failed", e.to_string()),
    };
    out.lag_ms = lag_ms;
    out.duration_ms = started.elapsed().as_millis() as u64;
    if out.result == "ok"
        && let Some(retention) = retention
    {
        let scope = match &schedule.retainer {
            Some(spec) if !policy::is_default_retainer(&spec.source) => super::catalog::Scope::Container,
            _ => super::catalog::Scope::Schedule(&schedule.name),
        };
        match super::catalog::retain(ctx, retention, (id, scope), &ClusterFacts::no_cluster()) {
            Ok(deleted) => out.deleted = deleted.into_iter().filter(|d| d.error.is_none()).map(|d| d.entry).collect(),
            Err(e) => out.detail.push_str(&format!("; retention deleted nothing: {e}")),
        }
    }
    out
}

/// A pod's container: the kubelet checkpoints it, into its checkpoint directory, where `ckpt
/// node-agent` takes the archive up (and its gates, images, catalog and retention with it).
fn through_the_kubelet(ctx: &Context, schedule: &Schedule, name: &str) -> ContainerOutcome {
    use crate::kubelet::{KubeletApi, KubeletClient, PodContainer};
    let asked = PodContainer::parse(name).map_err(Error::from).and_then(|target| {
        let client = KubeletClient::from_config(&ctx.config.engines)?;
        Ok(client.checkpoint(&target, None)?)
    });
    ctx.audit(AuditEvent::kubelet_requested(name, &schedule.name, &asked));
    match asked {
        Ok(archives) => outcome(name, "ok", archives.join(" ")),
        Err(e) => outcome(name, "failed", e.to_string()),
    }
}

/// One word for a run: `ok` when every container was checkpointed, `skipped` when none was and
/// none failed, `failed` or `denied` when all that were tried ended so, `partial` otherwise.
fn summary(outcomes: &[ContainerOutcome]) -> String {
    let count = |r: &str| outcomes.iter().filter(|o| o.result == r).count();
    let (ok, skipped, denied, failed) = (count("ok"), count("skipped"), count("denied"), count("failed"));
    match () {
        _ if outcomes.is_empty() => "skipped",
        _ if ok == outcomes.len() => "ok",
        _ if skipped == outcomes.len() => "skipped",
        _ if ok == 0 && failed == 0 && denied > 0 => "denied",
        _ if ok == 0 && failed > 0 => "failed",
        _ => "partial",
    }
    .to_string()
}

/// `ckpt schedule run NAME`: one run now, in the foreground.
pub fn run_now(ctx: &Context, name: &str, max_parallel: usize) -> Result<RunOutcome> {
    let schedule = ctx.schedules().get(name)?;
    // The daemon would run the same slot again, as its place moves under it.
    let Some(_no_daemon) = crate::store::StoreLock::try_named(&ctx.roots.store_locks_dir(), "daemon")? else {
        return Err(Error::DaemonRunning(format!(
            "a ckpt daemon runs the schedules of the store {}; let it run {name:?}, or stop it first",
            ctx.roots.root.display()
        )));
    };
    let limits = Limits::new(max_parallel);
    let outcome = run(ctx, &schedule, Utc::now(), 0, &limits, &|_| {})?;
    ctx.audit(AuditEvent::ScheduleRun {
        schedule: name.to_string(),
        slot: None,
        missed_runs: None,
        result: outcome.result.clone(),
        trigger: Some("manual"),
    });
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_expand_name_short_id_and_time() {
        let at = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let id = "0123456789abcdef".repeat(4);
        assert_eq!(
            expand("/srv/{name}-{id}-{time}.tar.zst", "web", &id, at),
            "/srv/web-0123456789ab-20270115T080000000Z.tar.zst"
        );
    }

    #[test]
    fn a_run_is_summed_up_in_one_word() {
        let o = |r| outcome("c", r, String::new());
        assert_eq!(summary(&[o("ok"), o("ok")]), "ok");
        assert_eq!(summary(&[o("skipped")]), "skipped");
        assert_eq!(summary(&[o("ok"), o("failed")]), "partial");
        assert_eq!(summary(&[o("denied"), o("skipped")]), "denied");
        assert_eq!(summary(&[o("failed"), o("denied")]), "failed");
        assert_eq!(summary(&[]), "skipped");
    }
}
