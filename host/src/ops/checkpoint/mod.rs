//! `ckpt checkpoint`: ask the planner policy how, pre-dump and dump running containers with the
//! runtime and CRIU, then export them as archives or checkpoint images past the export gates.
//! A denial or failure at any step leaves the container running and publishes nothing.

mod dump;
pub mod export;
pub(crate) mod podman;
pub mod predump;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{Value, json};

use super::Context;
use super::audit::{AuditEvent, CheckpointSubject, PolicyIdentity};
use super::lifecycle::{self, status};
use crate::archive::Compression;
use crate::archive::checkpoint as layout;
use crate::archive::publish::PendingFile;
use crate::criu::{self, Criu, DumpStats};
use crate::error::{Error, Result};
use crate::policy::bindings::{self as wit, CheckpointFacts, ExportFacts, ExportTarget, PreDumpPlan, TargetKind};
use crate::policy::{self, GateVerdict, Policies};
use crate::runtime::{CheckpointOptions, OciRuntime};
use crate::store::catalog::{Entry, EntryKind, EntryPolicy};
use crate::store::{ContainerLock, ContainerRecord};
use crate::supervisor::Launch;
use crate::util::{remove_dir_all, remove_file_if_exists};
use export::Content;

/// The checkpoint options of the command line, before validation.
#[derive(Debug, Clone, Default)]
pub struct CheckpointRequest {
    pub containers: Vec<String>,
    pub all: bool,
    pub latest: bool,
    pub keep: bool,
    pub leave_running: bool,
    pub tcp_established: bool,
    pub file_locks: bool,
    pub export: Option<PathBuf>,
    /// As typed; `None` when the flag was not given.
    pub compress: Option<String>,
    pub ignore_rootfs: bool,
    pub ignore_volumes: bool,
    pub pre_checkpoint: bool,
    pub with_previous: bool,
    pub create_image: Option<String>,
    /// A registry reference to push the checkpoint image to (`ckpt migrate --via`).
    pub registry: Option<String>,
    /// How many containers are checkpointed at once (`--parallel`; one per core by default).
    pub parallel: Option<usize>,
    pub print_stats: bool,
    /// The planner: a component file, or the built-in default when `None`.
    pub policy: Option<String>,
    pub policy_config: Option<String>,
    /// Export gates, each with its settings (`{}` when not given).
    pub gates: Vec<(String, String)>,
    pub dry_run: bool,
    /// What asked for this checkpoint: `cli` unless a scheduler says otherwise.
    pub trigger: String,
    /// The schedule that asked, with its last run and missed runs.
    pub schedule: Option<wit::ScheduleFacts>,
    /// `--encrypt-to`: recipients the exported archive is sealed to, beside the host config's.
    pub encrypt_to: Vec<String>,
    /// `--sign-with`: the SSH private key the exported archive is signed with.
    pub sign_with: Option<PathBuf>,
}

/// `container_statistics[]` of `--print-stats`.
#[derive(Debug, Clone, Serialize)]
pub struct ContainerStats {
    #[serde(rename = "Id")]
    pub id: String,
    pub runtime_checkpoint_duration: u64,
    pub criu_statistics: DumpStats,
}

/// One container's outcome: what to print for it.
#[derive(Debug, Clone)]
pub struct Checkpointed {
    pub printed_name: String,
    pub stats: ContainerStats,
    /// With `--dry-run`: the plan, and nothing was done.
    pub plan: Option<Value>,
    /// The planner skipped it, saying why: nothing was done, and that is not an error.
    pub skipped: Option<String>,
    /// The catalog entries it made.
    pub entries: Vec<Entry>,
}

/// Checks the option combinations podman rejects, in podman's order, before anything changes;
/// then whether this host can pre-dump, if asked to.
pub fn validate(ctx: &Context, req: &CheckpointRequest) -> Result<Compression> {
    let compression = validate_options(req, nix::unistd::geteuid().is_root())?;
    if req.with_previous || req.pre_checkpoint {
        ctx.criu()?.memory_tracking()?;
    }
    Ok(compression)
}

/// The option rules alone, with podman's messages in podman's order.
pub fn validate_options(req: &CheckpointRequest, is_root: bool) -> Result<Compression> {
    if req.all && req.latest {
        return Err(Error::invalid("--all and --latest cannot be used together"));
    }
    if req.all && !req.containers.is_empty() {
        return Err(Error::invalid("no arguments are needed with --all"));
    }
    if req.latest && !req.containers.is_empty() {
        return Err(Error::invalid("--latest and containers cannot be used together"));
    }
    if !req.all && !req.latest && req.containers.is_empty() {
        return Err(Error::invalid("you must provide at least one name or id"));
    }
    let compression = match &req.compress {
        Some(_) if req.export.is_none() => return Err(Error::invalid("--compress can only be used with --export")),
        Some(value) => Compression::parse(value)?,
        None => Compression::Zstd,
    };
    if !is_root {
        return Err(Error::invalid("checkpointing a container requires root"));
    }
    if req.ignore_rootfs && req.export.is_none() {
        return Err(Error::invalid("--ignore-rootfs can only be used with --export"));
    }
    if req.ignore_volumes && req.export.is_none() {
        return Err(Error::invalid("--ignore-volumes can only be used with --export"));
    }
    if req.with_previous && req.pre_checkpoint {
        return Err(Error::invalid("--with-previous can not be used with --pre-checkpoint"));
    }
    if !req.encrypt_to.is_empty() && req.export.is_none() && req.create_image.is_none() && req.registry.is_none() {
        return Err(Error::invalid("--encrypt-to can only be used with --export or --create-image"));
    }
    if req.sign_with.is_some() && req.export.is_none() {
        return Err(Error::invalid("--sign-with can only be used with --export"));
    }
    Ok(compression)
}

/// A container to checkpoint, as the command line named it.
struct Selected {
    record: ContainerRecord,
    printed: String,
    /// Its status when `--all` chose it, which its facts can start from; it is asked again once
    /// the container is locked.
    status: Option<lifecycle::Status>,
}

/// Resolves `--all`, `--latest` or names to containers; an unknown name aborts everything.
fn select(ctx: &Context, req: &CheckpointRequest) -> Result<Vec<Selected>> {
    if req.all {
        let records = ctx.containers.list()?;
        let statuses = lifecycle::statuses(ctx, &records)?;
        let running = records.into_iter().zip(statuses).filter(|(_, status)| status.running());
        return Ok(running
            .map(|(record, status)| Selected { printed: record.id.clone(), record, status: Some(status) })
            .collect());
    }
    if req.latest {
        let record = ctx.containers.latest()?.ok_or_else(|| Error::invalid("no containers to checkpoint"))?;
        return Ok(vec![Selected { printed: record.id.clone(), record, status: None }]);
    }
    req.containers
        .iter()
        .map(|name| {
            let record = ctx.containers.lookup(name)?;
            Ok(Selected { record, printed: name.trim_start_matches('/').to_string(), status: None })
        })
        .collect()
}

/// What the user asked for, in the policy contract's terms.
pub(crate) fn requested(
    req: &CheckpointRequest,
    compression: Compression,
) -> (wit::CheckpointOptions, Vec<ExportTarget>) {
    let options = wit::CheckpointOptions {
        leave_running: req.leave_running,
        tcp_established: req.tcp_established,
        file_locks: req.file_locks,
        keep: req.keep,
        ignore_rootfs: req.ignore_rootfs,
        ignore_volumes: req.ignore_volumes,
        print_stats: req.print_stats,
        pre_checkpoint: req.pre_checkpoint,
        with_previous: req.with_previous,
    };
    let compression = wit::Compression::from(compression);
    let target = |kind: TargetKind, location: String, compression: wit::Compression| ExportTarget {
        kind,
        location,
        compression,
        sealed_to: req.encrypt_to.clone(),
        signed: kind == TargetKind::Archive && req.sign_with.is_some(),
    };
    // As podman: with both --export and --create-image, only the archive is written.
    let exports = match (&req.export, &req.create_image) {
        (Some(path), _) => vec![target(TargetKind::Archive, path.display().to_string(), compression)],
        (None, Some(image)) => vec![target(TargetKind::Image, image.clone(), compression)],
        (None, None) => vec![],
    };
    let zstd = wit::Compression::from(Compression::Zstd);
    let pushed = req.registry.iter().map(|reference| target(TargetKind::Registry, reference.clone(), zstd));
    (options, exports.into_iter().chain(pushed).collect())
}

/// A plan that passed the host's own rules.
#[derive(Debug, Clone)]
struct Planned {
    options: wit::CheckpointOptions,
    pre_dump: PreDumpPlan,
    /// Each with whom it is sealed to and whether it is signed, once the host has added its own.
    exports: Vec<ExportTarget>,
    /// The SSH private key the archives are signed with.
    sign_with: Option<PathBuf>,
    /// The dump goes into private memory, never to a disk.
    in_memory: bool,
    /// The plan lets a sealed dump too big for memory go to a disk in the clear.
    plaintext_spill: bool,
}

/// The host's rules for any plan, whoever made it; checked before anything changes.
fn check_plan(plan: &wit::Plan, facts: &CheckpointFacts, policy_name: &str) -> Result<Planned> {
    let o = &plan.options;
    let refuse =
        |what: &str| Error::Policy(format!("policy {policy_name:?} planned {what}; refused before anything changed"));
    if o.with_previous && o.pre_checkpoint {
        return Err(refuse("--with-previous together with --pre-checkpoint"));
    }
    if (o.ignore_rootfs || o.ignore_volumes) && plan.exports.is_empty() {
        return Err(refuse("--ignore-rootfs or --ignore-volumes without an export"));
    }
    if o.pre_checkpoint && plan.exports.iter().any(|t| t.kind != TargetKind::Archive) {
        return Err(refuse("a checkpoint image of a pre-checkpoint"));
    }
    let rounds = !matches!(plan.pre_dump, PreDumpPlan::None);
    if (rounds || o.pre_checkpoint || o.with_previous) && !facts.host.memory_tracking {
        return Err(Error::Unsupported(format!(
            "policy {policy_name:?} planned pre-dumps, but this system (architecture/kernel/CRIU) does not support memory tracking ('criu check --feature mem_dirty_track' fails); nothing was changed"
        )));
    }
    if rounds && (o.pre_checkpoint || o.with_previous) {
        return Err(refuse("pre-dump rounds together with --pre-checkpoint or --with-previous"));
    }
    Ok(Planned {
        options: *o,
        pre_dump: plan.pre_dump,
        exports: plan.exports.clone(),
        sign_with: None,
        in_memory: false,
        plaintext_spill: plan.plaintext_spill,
    })
}

/// A migration moves the whole container or nothing: its source is removed once the destination
/// runs it, so a plan that leaves it running here, drops its files or volumes, or does not send
/// the `--via` image the destination restores from is refused before anything changes.
fn check_whole_move(planned: &Planned, handoff: &dyn Handoff, policy_name: &str) -> Result<()> {
    let o = &planned.options;
    let refuse = |what: &str| {
        Err(Error::Policy(format!(
            "policy {policy_name:?} planned {what} for a migration; refused before anything changed, and the container keeps running here"
        )))
    };
    if o.leave_running || o.pre_checkpoint {
        return refuse("--leave-running or --pre-checkpoint, which would leave the container running on both sides");
    }
    if o.ignore_rootfs || o.ignore_volumes {
        return refuse(
            "--ignore-rootfs or --ignore-volumes, which would lose the container's files at the destination",
        );
    }
    if let Some(via) = handoff.carrier()
        && !planned.exports.iter().any(|t| t.kind == TargetKind::Registry && t.location == via)
    {
        return refuse(&format!("no export to {via:?}, the --via image the destination restores from"));
    }
    Ok(())
}

/// Whether the user typed `target` on the command line: always allowed, wherever it is.
fn typed(requested: &[ExportTarget], target: &ExportTarget) -> bool {
    requested.iter().any(|r| r.kind == target.kind && r.location == target.location)
}

/// A policy's export targets stay where the admin allows (`[exports]` in the host config);
/// what the user typed is always allowed.
fn confine_exports(ctx: &Context, planned: &Planned, requested: &[ExportTarget], policy_name: &str) -> Result<()> {
    let forbidden = [ctx.roots.root.as_path(), ctx.roots.runroot.as_path()];
    for target in &planned.exports {
        if typed(requested, target) {
            continue;
        }
        let verdict = match target.kind {
            TargetKind::Archive => ctx.config.allows_archive(Path::new(&target.location), &forbidden),
            TargetKind::Image => {
                crate::image::validate_reference(&target.location)?;
                ctx.config.allows_image(&crate::image::normalize_reference(&target.location))
            }
            TargetKind::Registry => {
                crate::registry::check_reference(&target.location)?;
                ctx.config.allows_registry(&crate::image::normalize_reference(&target.location))
            }
        };
        verdict.map_err(|why| {
            Error::Policy(format!(
                "policy {policy_name:?} chose to export to {:?}, which is not allowed: {why}; nothing was changed",
                target.location
            ))
        })?;
    }
    Ok(())
}

/// A policy's archive is checked again where its directory was opened: a directory swapped for
/// a link since [`confine_exports`] looked must not take the archive elsewhere.
fn confine_opened_archive(
    ctx: &Context,
    file: &PendingFile,
    target: &ExportTarget,
    requested: &[ExportTarget],
) -> Result<()> {
    if typed(requested, target) {
        return Ok(());
    }
    let real = file.real_target()?;
    let forbidden = [ctx.roots.root.as_path(), ctx.roots.runroot.as_path()];
    ctx.config.allows_archive(&real, &forbidden).map_err(|why| {
        Error::Policy(format!(
            "the export to {:?} was opened at {:?}, which is not allowed: {why}; nothing was changed",
            target.location,
            real.display().to_string()
        ))
    })
}

/// An export replaces only an earlier checkpoint archive or checkpoint image, never another file
/// (a policy's typo must not turn /etc/passwd into a tar) or an ordinary image such as busybox.
/// A registry export is staged as a local image of the same name, held to the same rule.
fn refuse_replacing(ctx: &Context, target: &ExportTarget) -> Result<()> {
    match target.kind {
        TargetKind::Archive => {
            let path = Path::new(&target.location);
            match std::fs::symlink_metadata(path) {
                Err(_) => Ok(()),
                Ok(meta) if meta.is_file() && layout::looks_like_archive(path) => Ok(()),
                Ok(_) => Err(Error::invalid(format!(
                    "export target {:?} exists and is not a checkpoint archive; remove it or choose another path",
                    target.location
                ))),
            }
        }
        TargetKind::Image | TargetKind::Registry => match ctx.images.resolve(&target.location) {
            Ok(info) if !info.annotations.contains_key(crate::metadata::CHECKPOINT_IMAGE_KEY) => {
                Err(Error::invalid(format!(
                    "image {:?} exists and is not a checkpoint image; choose another name for the checkpoint image",
                    target.location
                )))
            }
            _ => Ok(()),
        },
    }
}

/// What becomes of a stopped container's dump before the checkpoint counts as done. `ckpt
/// migrate` hands it to the destination here, after every export and the last safe point, and
/// inside the checkpoint's rollback: a failed handoff brings the container back on this side.
pub trait Handoff {
    /// What the planner's strategy question is asked with.
    fn migration(&self) -> wit::MigrationFacts;
    /// The strategy chosen, before the plan.
    fn chose(&self, choice: &wit::StrategyChoice);
    /// Facts about the way to the destination, for the strategy question's `ext`.
    fn link_facts(&self) -> Vec<wit::KeyValue> {
        Vec::new()
    }
    /// Post-copy: the socket CRIU's page server talks on, whose other end reaches the
    /// destination, which fetches the memory through it. The dump then writes every image but
    /// the memory.
    fn page_server(&self) -> Result<Option<std::os::fd::OwnedFd>>;
    /// The registry reference the destination restores from (`--via`), which the plan must
    /// export unchanged and no gate may narrow; `None` when the dump streams to it.
    fn carrier(&self) -> Option<&str>;
    /// Ok once the container runs elsewhere. [`Error::HandoffUnconfirmed`] when nobody can tell:
    /// the dump then stays here, checkpointed, for the caller to say so.
    fn deliver(&self, ctx: &Context, outgoing: Outgoing<'_>, options: &wit::CheckpointOptions) -> Result<()>;
}

/// A stopped container's dump, as a handoff sends it on.
pub enum Outgoing<'a> {
    /// One of ckpt's: its record, and what its archive holds.
    Own { record: &'a ContainerRecord, content: &'a Content },
    /// podman's: its name there, and the archive podman made of it.
    Podman { name: &'a str, archive: &'a Path },
}

/// Pre-copy without rounds in the plan: until the dirty pages converge, as the migration
/// example does by default.
const PRE_COPY_DEFAULT: wit::Convergence =
    wit::Convergence { max_rounds: 5, stop_below_pages: 1024, min_shrink_percent: 50 };

pub fn checkpoint(ctx: &Context, req: &CheckpointRequest) -> (Vec<Checkpointed>, Result<()>) {
    checkpoint_handing_off(ctx, req, None)
}

/// [`checkpoint`], with the dump of each container handed off before it counts as done.
pub fn checkpoint_handing_off(
    ctx: &Context,
    req: &CheckpointRequest,
    handoff: Option<&dyn Handoff>,
) -> (Vec<Checkpointed>, Result<()>) {
    let (on_podman, own): (Vec<&String>, Vec<&String>) =
        req.containers.iter().partition(|name| name.starts_with(crate::podman::PREFIX));
    if !on_podman.is_empty() {
        if !own.is_empty() || req.all || req.latest {
            let err = "podman:NAME cannot be checkpointed together with ckpt's own containers, --all or --latest; give podman's containers alone";
            return (Vec::new(), Err(Error::invalid(err)));
        }
        return checkpoint_on_podman(ctx, req, &on_podman, handoff);
    }
    let prepared = validate(ctx, req).and_then(|compression| {
        let selected = select(ctx, req)?;
        // One path cannot hold several archives: each would replace the last.
        if selected.len() > 1 && (req.export.is_some() || req.create_image.is_some()) {
            return Err(Error::invalid(format!(
                "--export and --create-image name one archive or image, but {} containers were selected; checkpoint them one at a time",
                selected.len()
            )));
        }
        let (planner, gates) = components(ctx, req)?;
        Ok((compression, selected, planner, gates))
    });
    let (compression, selected, planner, gates) = match prepared {
        Ok(p) => p,
        Err(e) => return (Vec::new(), Err(e)),
    };
    let workers = req.parallel.unwrap_or_else(crate::ops::default_parallel).clamp(1, selected.len().max(1));
    if handoff.is_some() || workers == 1 {
        let mut policies = match Policies::load_components(&ctx.policy_cache(), planner, gates) {
            Ok(p) => p,
            Err(e) => return (Vec::new(), Err(e.into())),
        };
        let mut done = Vec::new();
        let result = crate::ops::each(&selected, |one| {
            done.push(one_container(ctx, req, compression, one, &mut policies, handoff)?);
            Ok(())
        });
        return (done, result);
    }
    // Several at once: each worker has its own policies, compiled once, from the cache.
    let copy = |c: &policy::Component| policy::Component { read: c.read.clone(), settings: c.settings.clone() };
    crate::ops::each_parallel(
        &selected,
        workers,
        || Ok(Policies::load_components(&ctx.policy_cache(), copy(&planner), gates.iter().map(copy).collect())?),
        |policies, one| one_container(ctx, req, compression, one, policies, None),
    )
}

/// The planner and the gates a checkpoint names, read and with their settings.
fn components(ctx: &Context, req: &CheckpointRequest) -> Result<(policy::Component, Vec<policy::Component>)> {
    crate::ops::policy::planner_and_gates(ctx, (req.policy.as_deref(), req.policy_config.as_deref()), &req.gates)
}

/// `ckpt checkpoint podman:NAME…`: podman's containers, one at a time.
fn checkpoint_on_podman(
    ctx: &Context,
    req: &CheckpointRequest,
    names: &[&String],
    handoff: Option<&dyn Handoff>,
) -> (Vec<Checkpointed>, Result<()>) {
    let prepared = validate(ctx, req).and_then(|compression| {
        if names.len() > 1 && req.export.is_some() {
            return Err(Error::invalid("--export names one archive: checkpoint podman's containers one at a time"));
        }
        let (planner, gates) = components(ctx, req)?;
        Ok((compression, Policies::load_components(&ctx.policy_cache(), planner, gates)?))
    });
    let (compression, mut policies) = match prepared {
        Ok(p) => p,
        Err(e) => return (Vec::new(), Err(e)),
    };
    let mut done = Vec::new();
    let result = crate::ops::each(names, |name| {
        let name = name.strip_prefix(crate::podman::PREFIX).unwrap_or(name);
        done.push(podman::podman_container(ctx, req, compression, name, &mut policies, handoff)?);
        Ok(())
    });
    (done, result)
}

/// Plans, checkpoints and records one container: its decision records, its audit entry.
fn one_container(
    ctx: &Context,
    req: &CheckpointRequest,
    compression: Compression,
    selected: &Selected,
    policies: &mut Policies,
    handoff: Option<&dyn Handoff>,
) -> Result<Checkpointed> {
    let record = &selected.record;
    let outcome = plan_and_checkpoint(ctx, req, compression, selected, policies, handoff);
    finish_one(ctx, req, policies, (&record.name, &record.id), selected.printed.clone(), outcome)
}

/// Records what one container's checkpoint came to, whichever engine runs it: the decisions in
/// the decision log, the outcome in the audit log.
fn finish_one(
    ctx: &Context,
    req: &CheckpointRequest,
    policies: &mut Policies,
    (name, id): (&str, &str),
    printed: String,
    outcome: Result<(Made, Option<Value>)>,
) -> Result<Checkpointed> {
    let records = std::mem::take(&mut policies.records);
    if let Err(e) = policy::record::append(&ctx.roots.policy_log(), &records) {
        tracing::error!(
            "cannot write the decision log {}: {}",
            ctx.roots.policy_log().display(),
            crate::util::escape_controls(&e.to_string())
        );
    }
    let about = CheckpointSubject {
        container: name.to_string(),
        container_id: id.to_string(),
        trigger: trigger_of(req).to_string(),
        schedule: req.schedule.as_ref().map(|s| s.name.clone()),
        policy: PolicyIdentity { source: policies.planner.source.clone(), digest: policies.planner.digest.clone() },
    };
    match outcome {
        Err(Error::PolicyEngine(policy::PolicyError::Skipped { reason, .. })) => {
            if !req.dry_run {
                ctx.audit(AuditEvent::Skip { about, reason: reason.clone() });
            }
            let stats = ContainerStats::none(id);
            Ok(Checkpointed { printed_name: printed, stats, plan: None, skipped: Some(reason), entries: vec![] })
        }
        Ok((_, Some(plan))) => {
            let stats = ContainerStats::none(id);
            Ok(Checkpointed { printed_name: printed, stats, plan: Some(plan), skipped: None, entries: vec![] })
        }
        Ok((done, None)) => {
            let ids = done.entries.iter().map(|e| e.id.clone()).collect();
            let targets = done.entries.iter().map(|e| e.location.clone()).collect();
            ctx.audit(AuditEvent::Checkpoint { about, entries: ids, locations: targets });
            Ok(Checkpointed {
                printed_name: printed,
                stats: done.stats,
                plan: None,
                skipped: None,
                entries: done.entries,
            })
        }
        Err(e) => {
            if !req.dry_run {
                let error = e.to_string();
                ctx.audit(if e.is_denial() {
                    AuditEvent::Denial { about, error }
                } else {
                    AuditEvent::CheckpointFailed { about, error }
                });
            }
            Err(e)
        }
    }
}

fn trigger_of(req: &CheckpointRequest) -> &str {
    if req.trigger.is_empty() { "cli" } else { req.trigger.as_str() }
}

/// `base` with the keys of `more` added.
/// What one checkpoint produced: its statistics, and where it went.
struct Made {
    stats: ContainerStats,
    entries: Vec<Entry>,
    /// Staging still being removed, waited for once the checkpoint is recorded.
    _staging: Option<crate::util::Removing>,
}

impl ContainerStats {
    fn none(id: &str) -> ContainerStats {
        ContainerStats { id: id.to_string(), runtime_checkpoint_duration: 0, criu_statistics: DumpStats::default() }
    }
}

fn plan_and_checkpoint(
    ctx: &Context,
    req: &CheckpointRequest,
    compression: Compression,
    selected: &Selected,
    policies: &mut Policies,
    handoff: Option<&dyn Handoff>,
) -> Result<(Made, Option<Value>)> {
    // Locked before the policy is asked, so that one look at the runtime's state serves the
    // facts and the checks under the lock (a dry run changes nothing and takes no lock).
    let locked = if req.dry_run { None } else { Some(lock_container(ctx, &selected.record)?) };
    let (record, status) = match &locked {
        Some(locked) => (&locked.record, Some(locked.status.clone())),
        None => (&selected.record, selected.status.clone()),
    };
    let (options, exports) = requested(req, compression);
    let trigger = trigger_of(req);
    let facts = crate::ops::facts::checkpoint(ctx, record, status, options, exports, trigger, req.schedule.clone());
    let (strategy, plan) = strategy_and_plan(policies, &facts, handoff)?;
    let mut planned = check_plan(&plan, &facts, &policies.planner.info.name)?;
    if let Some(handoff) = handoff {
        check_whole_move(&planned, handoff, &policies.planner.info.name)?;
    }
    let name = &policies.planner.info.name;
    match strategy {
        Some(wit::Strategy::PreCopy) if matches!(planned.pre_dump, PreDumpPlan::None) => {
            planned.pre_dump = PreDumpPlan::Converge(PRE_COPY_DEFAULT);
        }
        Some(wit::Strategy::PostCopy)
            if !planned.exports.is_empty() || !matches!(planned.pre_dump, PreDumpPlan::None) =>
        {
            return Err(Error::Policy(format!(
                "policy {name:?} planned exports or pre-dump rounds for a post-copy migration, whose memory never reaches the disk here; refused before anything changed"
            )));
        }
        _ => {}
    }
    confine_exports(ctx, &planned, &facts.request.exports, &policies.planner.info.name)?;
    sealing(ctx, req, &mut planned, &facts, handoff.is_some())?;
    signing(ctx, req, &mut planned, &policies.planner.info.name)?;
    let Some(locked) = locked else {
        return Ok(dry_run((&record.id, &record.name), policies, &plan, &planned));
    };
    let record = &locked.record.clone();
    let (stats, digests) = checkpoint_one(locked, &facts, &planned, policies, handoff)?;
    let paths = ctx.containers.paths(&record.id);
    let local = if planned.options.pre_checkpoint { paths.pre_checkpoint_dir() } else { paths.checkpoint_dir() };
    let entries = catalog_entries(ctx, (&record.id, &record.name), Some(&local), &facts, &planned, policies, &digests);
    Ok((Made { stats, entries, _staging: None }, None))
}

/// What `--dry-run` prints of a container's checkpoint, whichever engine runs it: the plan, and
/// what the host makes of it (the recipients and signatures it adds).
fn dry_run(
    (id, name): (&str, &str),
    policies: &Policies,
    plan: &wit::Plan,
    planned: &Planned,
) -> (Made, Option<Value>) {
    let value = json!({
        "Id": id,
        "Name": name,
        "policy": {"name": policies.planner.info.name, "source": policies.planner.source, "digest": policies.planner.digest},
        "plan": crate::policy::json::to_json(plan),
        "exports": crate::policy::json::list_to_json(&planned.exports),
        "gates": policies.gates.iter().map(|g| &g.info.name).collect::<Vec<_>>(),
    });
    (Made { stats: ContainerStats::none(id), entries: vec![], _staging: None }, Some(value))
}

/// For a migration, the strategy the planner chooses, asked before the plan; then the plan.
fn strategy_and_plan(
    policies: &mut Policies,
    facts: &CheckpointFacts,
    handoff: Option<&dyn Handoff>,
) -> Result<(Option<wit::Strategy>, wit::Plan)> {
    let strategy = match handoff {
        Some(handoff) => {
            let mut asked = facts.clone();
            asked.ext.extend(handoff.link_facts());
            let choice = policies.strategy(&asked, &handoff.migration())?;
            handoff.chose(&choice);
            Some(choice.strategy)
        }
        None => None,
    };
    let plan = match policies.plan(facts) {
        // A skip is no error for a checkpoint, but a migration that moves nothing must not
        // look done: the caller would remove the source.
        Err(policy::PolicyError::Skipped { policy, container, reason }) if handoff.is_some() => {
            return Err(Error::Policy(format!(
                "policy {policy} skipped the migration of container {container:?} ({reason}); nothing was sent, and the container keeps running here"
            )));
        }
        plan => plan?,
    };
    Ok((strategy, plan))
}

/// Whom something sealing was asked for is sealed to: the host config's recipients and each of
/// `asked`, checked and without repeats; refused when that is nobody.
pub(crate) fn seal_recipients(ctx: &Context, asked: &[&[String]]) -> Result<Vec<String>> {
    let mut recipients = crate::seal::Recipients::parse(&ctx.config.exports.recipients)?;
    for list in asked {
        recipients.extend(crate::seal::Recipients::parse(list)?);
    }
    if recipients.is_empty() {
        return Err(Error::SealWithoutRecipient);
    }
    Ok(recipients.names().to_vec())
}

/// How the plan's checkpoint is sealed: each export to the recipients the plan names for it,
/// the host config's and `--encrypt-to`'s, when the plan, the user or the host config
/// (`[exports] encrypt = "always"`) asks for sealing; the dump is kept in private memory then, as
/// it is for a migration under that config (whose stream goes through ssh, to a destination
/// that unpacks it into memory). A plan adds recipients and never removes one. What a sealed
/// checkpoint cannot do is refused before anything changes.
fn sealing(
    ctx: &Context,
    req: &CheckpointRequest,
    planned: &mut Planned,
    facts: &CheckpointFacts,
    migrating: bool,
) -> Result<()> {
    let rules = &ctx.config.exports;
    let always = rules.encrypt == crate::config::EncryptRule::Always;
    let mut any_sealed = false;
    for target in &mut planned.exports {
        if !(always || !req.encrypt_to.is_empty() || !target.sealed_to.is_empty()) {
            continue;
        }
        target.sealed_to = seal_recipients(ctx, &[&target.sealed_to, &req.encrypt_to])?;
        any_sealed = true;
    }
    if !(any_sealed || (always && migrating)) {
        return Ok(());
    }
    let refuse = |what: &str| Error::SealRefused { what: what.to_string() };
    if !matches!(planned.pre_dump, PreDumpPlan::None) || planned.options.pre_checkpoint || planned.options.with_previous
    {
        return Err(refuse("pre-dump rounds (their images would reach the disk in the clear)"));
    }
    planned.in_memory = true;
    if planned.plaintext_spill && !fits_in_memory(facts.container.memory_bytes) {
        // The plan's own answer, kept in its decision record.
        tracing::warn!(
            "{} does not fit in the memory available; its images go to a disk in the clear, as the plan allows",
            facts.container.name
        );
        planned.in_memory = false;
    }
    Ok(())
}

/// Who signs each export, and with what: an archive with `--sign-with`'s SSH key, else the host
/// config's (which signs every archive); a pushed image with the host's GPG key ([signatures]
/// sign-by), as podman signs. A plan can ask for a signature, never name a key: an export it
/// wants signed that no key of the host can sign is refused before anything changes.
fn signing(ctx: &Context, req: &CheckpointRequest, planned: &mut Planned, policy_name: &str) -> Result<()> {
    let key = req.sign_with.clone().or_else(|| ctx.config.signatures.sign_with.clone());
    let image_key = ctx.config.signatures.sign_by.is_some();
    let unsigned = |target: &ExportTarget, why: &str| {
        Error::Policy(format!(
            "policy {policy_name:?} asked for a signed export to {:?}, but {why}; refused before anything changed",
            target.location
        ))
    };
    for target in &mut planned.exports {
        match target.kind {
            TargetKind::Archive if key.is_none() && target.signed => {
                return Err(unsigned(target, "this host has no signing key ([signatures] sign-with, or --sign-with)"));
            }
            TargetKind::Archive => target.signed = key.is_some(),
            TargetKind::Registry if !image_key && target.signed => {
                return Err(unsigned(target, "this host has no image signing key ([signatures] sign-by)"));
            }
            TargetKind::Registry => target.signed = image_key,
            TargetKind::Image if target.signed => {
                return Err(unsigned(
                    target,
                    "an image in the local store is signed when it is pushed (ckpt push --sign-by)",
                ));
            }
            TargetKind::Image => {}
        }
    }
    let Some(key) = key.filter(|_| planned.exports.iter().any(|t| t.kind == TargetKind::Archive)) else {
        return Ok(());
    };
    if !key.is_file() {
        return Err(Error::invalid(format!("signing key {key:?} does not exist or is not a file")));
    }
    planned.sign_with = Some(key);
    Ok(())
}

/// Publishes an archive, its signature beside it first when `sign_with` names a key: a crash
/// between the two leaves a signature that matches no archive (which a restore refuses), never
/// an archive that looks unsigned. An unsigned archive takes away the signature of the file it
/// replaces.
fn publish_archive(mut pending: PendingFile, sign_with: Option<&Path>) -> Result<()> {
    let signature = crate::signature::signature_path(&pending.target);
    match sign_with {
        Some(key) => {
            std::io::Write::flush(&mut pending.writer).map_err(Error::io("write", &pending.target))?;
            let made = crate::signature::sign(&pending.temp_path, key)?;
            std::fs::rename(&made, &signature).map_err(|e| {
                let _ = std::fs::remove_file(&made);
                Error::io("publish the signature", &signature)(e)
            })?;
        }
        None => remove_file_if_exists(&signature)?,
    }
    Ok(pending.publish()?)
}

/// Records what a checkpoint made in the catalog: each export, or the local checkpoint (in
/// `local`, for a container of ckpt's own) when it made none. A local checkpoint replaces the
/// container's last one, so its entry does too.
fn catalog_entries(
    ctx: &Context,
    (id, name): (&str, &str),
    local: Option<&Path>,
    facts: &CheckpointFacts,
    planned: &Planned,
    policies: &Policies,
    digests: &[Option<String>],
) -> Vec<Entry> {
    let base = Entry {
        id: String::new(),
        container_id: id.to_string(),
        container_name: name.to_string(),
        kind: EntryKind::Local,
        location: String::new(),
        size_bytes: 0,
        digest: None,
        created: crate::util::now(),
        trigger: facts.request.trigger.clone(),
        schedule: facts.request.schedule.as_ref().map(|s| s.name.clone()),
        policy: EntryPolicy { source: policies.planner.source.clone(), digest: policies.planner.digest.clone() },
        plan: {
            use crate::policy::json::{list_to_json, to_json};
            json!({"options": to_json(&planned.options), "pre-dump": to_json(&planned.pre_dump), "exports": list_to_json(&planned.exports)})
        },
        pinned: false,
        sealed_to: Vec::new(),
        signature: None,
    };
    let mut entries = Vec::new();
    for (i, target) in planned.exports.iter().enumerate() {
        let mut entry = Entry {
            id: crate::store::catalog::new_id(),
            location: target.location.clone(),
            sealed_to: target.sealed_to.clone(),
            ..base.clone()
        };
        match target.kind {
            TargetKind::Archive => {
                let path = Path::new(&target.location);
                entry.kind = EntryKind::Archive;
                if target.signed {
                    entry.signature = Some(crate::signature::signature_path(path).display().to_string());
                }
                entry.size_bytes = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
                // Taken as the archive was written; read back only if it was not.
                entry.digest = match digests.get(i).cloned().flatten() {
                    Some(digest) => Some(digest),
                    None => crate::util::file_digest(path).ok(),
                };
            }
            TargetKind::Image | TargetKind::Registry => {
                entry.kind = EntryKind::Image;
                if let Ok(info) = ctx.images.resolve(&target.location) {
                    entry.location = info.reference;
                    entry.size_bytes = info.size;
                    entry.digest = Some(info.manifest_digest.to_string());
                }
            }
        }
        entries.push(entry);
    }
    if let Some(dir) = local.filter(|_| planned.exports.is_empty()) {
        let location = dir.display().to_string();
        let catalog = ctx.catalog();
        for earlier in catalog.list().unwrap_or_default() {
            if earlier.kind == EntryKind::Local && earlier.container_id == id && earlier.location == location {
                let _ = catalog.forget(&earlier.id);
            }
        }
        let size_bytes = crate::util::dir_size(dir);
        entries.push(Entry { id: crate::store::catalog::new_id(), location, size_bytes, ..base });
    }
    for entry in &entries {
        if let Err(e) = ctx.catalog().add(entry) {
            tracing::error!("cannot record checkpoint {} in the catalog: {e}", entry.id);
        }
    }
    entries
}

fn runtime_options(paths_bundle: &Path, image_dir: &Path, planned: &Planned, criu: &dyn Criu) -> CheckpointOptions {
    let o = &planned.options;
    CheckpointOptions {
        nftables_lock: criu.nftables_lock(),
        skip_conntrack: criu.skips_conntrack(),
        image_path: image_dir.to_path_buf(),
        work_path: paths_bundle.to_path_buf(),
        leave_running: o.leave_running || o.pre_checkpoint,
        tcp_established: o.tcp_established,
        file_locks: o.file_locks,
        pre_dump: o.pre_checkpoint,
        parent_path: o.with_previous.then(|| PathBuf::from("..").join(layout::PRE_CHECKPOINT_DIR)),
    }
}

/// The most memory a container may hold for its page images to be hashed while CRIU dumps it:
/// above it, the reads behind CRIU kept it frozen longer (bench/README.md).
const FOLLOW_UP_TO: u64 = 1 << 30;

/// The least: below it the page images take well under a millisecond to hash after the dump,
/// less than the thread and its polls behind CRIU cost.
const FOLLOW_FROM: u64 = 8 << 20;

/// One container's checkpoint: claim it and its targets, dump it, export and hand it off, then
/// publish or roll back.
fn checkpoint_one(
    locked: Locked<'_>,
    facts: &CheckpointFacts,
    planned: &Planned,
    policies: &mut Policies,
    handoff: Option<&dyn Handoff>,
) -> Result<(ContainerStats, Vec<Option<String>>)> {
    let ctx = locked.txn.ctx;
    let (mut txn, record, runtime) = claim_container(locked, planned, handoff)?;
    let pending = claim_targets(ctx, planned, facts)?;
    // Post-copy's page channel is set up (a socket forwarded through ssh) while nothing has changed.
    let page_server = match handoff {
        Some(handoff) => handoff.page_server()?,
        None => None,
    };
    // What is exported reads the page images again: for a small container they are hashed behind
    // CRIU, on the core its dump leaves idle (see `archive::follow`).
    let exporting = !planned.exports.is_empty() || handoff.is_some();
    let small = (FOLLOW_FROM..=FOLLOW_UP_TO).contains(&facts.container.memory_bytes);
    let follow = exporting && small && page_server.is_none();
    let leaving = handoff.is_some();
    let one = One { ctx, runtime: runtime.as_ref(), record: &record, facts, planned, leaving };
    let mut dumped = dump_container(&one, &mut txn, policies, page_server, follow)?;
    let mut digests = Vec::new();
    let exported = export_and_hand_off(&one, policies, handoff, pending, &mut dumped, &mut digests);
    let criu_statistics = match dumped.lazy {
        Some(lazy) => finish_post_copy(&mut txn, runtime.as_ref(), &record, lazy, exported, &dumped.image_dir)?,
        None => {
            let stopped = !dumped.options.leave_running;
            finish_dump(ctx, txn, &record, planned, stopped, exported, &dumped.image_dir)?
        }
    };
    let stats =
        ContainerStats { id: record.id.clone(), runtime_checkpoint_duration: dumped.runtime_duration, criu_statistics };
    Ok((stats, digests))
}

/// A container claimed for a checkpoint: its lock, and whether its record says a checkpoint is
/// in progress (so that `system check` can tell a dump whose ckpt was killed from a container
/// that just exited). Dropped without a verdict, it clears that mark: the dump did not happen
/// and the container runs on.
struct DumpTxn<'a> {
    ctx: &'a Context,
    id: String,
    lock: Option<ContainerLock>,
    marked: bool,
}

impl DumpTxn<'_> {
    fn mark_in_progress(&mut self, hold_network: bool) -> Result<()> {
        let mut record = self.ctx.containers.load(&self.id)?;
        record.state.checkpoint_in_progress = true;
        record.state.network_held = hold_network;
        self.ctx.containers.save(&record)?;
        self.marked = true;
        Ok(())
    }

    /// Published: the record says checkpointed, with its images in `image_dir`. Should that
    /// save fail, the mark stays for `system check`, as the images are all there is.
    fn commit(&mut self, image_dir: &Path) -> Result<()> {
        self.marked = false;
        mark_checkpointed(self.ctx, &self.id, image_dir.to_path_buf())
    }

    /// The images are the only copy and the container did not come back: the mark stays.
    fn keep_mark(&mut self) {
        self.marked = false;
    }

    /// Hands the lock to a roll back, which settles the mark itself.
    fn into_roll_back(mut self) -> ContainerLock {
        self.marked = false;
        self.lock.take().expect("held until the verdict")
    }
}

impl Drop for DumpTxn<'_> {
    fn drop(&mut self) {
        if self.marked {
            let _ = set_in_progress(self.ctx, &self.id, false);
        }
    }
}

/// A container locked for a checkpoint: its record and its status, both read under the lock.
struct Locked<'a> {
    txn: DumpTxn<'a>,
    record: ContainerRecord,
    status: lifecycle::Status,
}

fn lock_container<'a>(ctx: &'a Context, record: &ContainerRecord) -> Result<Locked<'a>> {
    let lock = ContainerLock::try_acquire(&ctx.roots.locks_dir(), &record.id, &record.name)?;
    let txn = DumpTxn { ctx, id: record.id.clone(), lock: Some(lock), marked: false };
    let record = ctx.containers.load(&record.id)?;
    let status = status(ctx, &record)?;
    Ok(Locked { txn, record, status })
}

/// Checks, under the lock, that the container can be checkpointed as planned.
fn claim_container<'a>(
    locked: Locked<'a>,
    planned: &Planned,
    handoff: Option<&dyn Handoff>,
) -> Result<(DumpTxn<'a>, ContainerRecord, std::sync::Arc<dyn OciRuntime>)> {
    let Locked { txn, record, status: st } = locked;
    let ctx = txn.ctx;
    if !st.status.can_checkpoint() {
        return Err(Error::ContainerState {
            name: record.name.clone(),
            state: st.status.to_string(),
            action: if st.status == crate::store::ContainerStatus::Paused {
                "cannot checkpoint: it is paused, as podman refuses too; 'ckpt unpause' it first ('ckpt system check --repair' thaws one that a crashed dump left frozen)".into()
            } else {
                "cannot checkpoint: it is not running".into()
            },
        });
    }
    let o = &planned.options;
    if record.auto_remove && handoff.is_none() && !planned.exports.iter().any(|t| t.kind == TargetKind::Archive) {
        return Err(Error::invalid(format!(
            "cannot checkpoint container {:?}: it was started with --rm, so only --export can keep its checkpoint",
            record.name
        )));
    }
    let paths = ctx.containers.paths(&record.id);
    if o.with_previous && !paths.pre_checkpoint_dir().join(crate::metadata::CRIU_INVENTORY).exists() {
        return Err(Error::NoPreCheckpoint { name: record.name.clone(), dir: paths.pre_checkpoint_dir() });
    }
    let runtime = ctx.runtime_named(&record.runtime)?;
    if !runtime.supports_checkpoint() {
        return Err(Error::Unsupported(format!(
            "OCI runtime {:?} ({}) was built without checkpoint support; use runc",
            runtime.name(),
            runtime.path().display()
        )));
    }
    criu::check_version(ctx.criu()?.as_ref())?;
    Ok((txn, record, runtime))
}

/// Export targets are claimed before the dump, so a bad path fails with nothing changed: an
/// archive's file is made (journaled) and confined, a reference is checked.
fn claim_targets(ctx: &Context, planned: &Planned, facts: &CheckpointFacts) -> Result<Vec<Option<PendingFile>>> {
    for target in &planned.exports {
        refuse_replacing(ctx, target)?;
    }
    let mut pending = Vec::new();
    for target in &planned.exports {
        match target.kind {
            TargetKind::Archive => {
                let file = PendingFile::create_journaled(Path::new(&target.location), &ctx.roots.inflight_dir())?;
                confine_opened_archive(ctx, &file, target, &facts.request.exports)?;
                pending.push(Some(file));
            }
            TargetKind::Image => {
                crate::image::validate_reference(&target.location)?;
                pending.push(None);
            }
            TargetKind::Registry => {
                crate::registry::check_reference(&target.location)?;
                pending.push(None);
            }
        }
    }
    Ok(pending)
}

/// What a dump left: its images and the options it ran with, the pre-dump rounds it refers to,
/// the page images hashed as CRIU wrote them, and, for post-copy, the dump still serving pages.
struct Dumped {
    options: CheckpointOptions,
    image_dir: PathBuf,
    parents: Vec<String>,
    known_digests: crate::archive::follow::KnownDigests,
    lazy: Option<Box<dyn crate::runtime::LazyDump>>,
    runtime_duration: u64,
}

/// One container's checkpoint, as its steps share it.
struct One<'a> {
    ctx: &'a Context,
    runtime: &'a dyn OciRuntime,
    record: &'a ContainerRecord,
    facts: &'a CheckpointFacts,
    planned: &'a Planned,
    /// Handed to another host (a migration): nothing of it stays here.
    leaving: bool,
}

/// The pre-dump rounds, then the dump. A failed dump leaves the container running and no
/// partial image directory.
fn dump_container(
    one: &One,
    txn: &mut DumpTxn,
    policies: &mut Policies,
    page_server: Option<std::os::fd::OwnedFd>,
    follow: bool,
) -> Result<Dumped> {
    let One { ctx, runtime, record, facts, planned, leaving } = *one;
    let o = &planned.options;
    let paths = ctx.containers.paths(&record.id);
    let bundle = paths.bundle();
    let image_dir = if o.pre_checkpoint { paths.pre_checkpoint_dir() } else { paths.checkpoint_dir() };
    let criu = ctx.criu()?;
    let base = runtime_options(&bundle, &image_dir, planned, criu.as_ref());
    let freeze_first = dump::freeze_first(criu.as_ref());
    let parents = predump::run_rounds(runtime, policies, facts, &paths, &planned.pre_dump, &base)?;
    let mut options = base.clone();
    if let Some(last) = parents.last() {
        options.parent_path = Some(PathBuf::from("..").join(last));
    }
    // An earlier checkpoint's images (one made with --leave-running, say) wait aside until this
    // dump has written its own, and come back should it fail.
    let earlier = crate::store::discard::EarlierImages::set_aside(&ctx.roots, &image_dir)?;
    // A `--rm` container's supervisor also keeps its files while the mark is set.
    if !options.leave_running {
        // Connections through published ports carry on only if the host keeps tracking them,
        // which it stops doing when the network's bridge goes; a migration's source leaves.
        let hold_network = options.tcp_established && !record.auto_remove && !leaving;
        txn.mark_in_progress(hold_network)?;
    }
    if planned.in_memory {
        hold_in_memory(record, facts.container.memory_bytes, &image_dir)?;
    }
    let followed = follow.then(|| crate::archive::follow::follow(&image_dir));
    let started = Instant::now();
    let mut lazy = None;
    let dumped = match page_server {
        Some(server) => dump::dump_lazy(runtime, &record.id, &record.name, &options, server, freeze_first)
            .map(|dump| lazy = Some(dump)),
        None => dump::dump(runtime, &record.id, &record.name, &options, freeze_first),
    };
    if let Err(e) = dumped {
        // The container runs on (CRIU let it go, and `dump` thawed it); a partial image
        // directory must not look restorable (and the pre-dump rounds go with `parents`).
        crate::rootfs::memory::release(&image_dir)?;
        remove_dir_all(&image_dir)?;
        return Err(e);
    }
    let runtime_duration = started.elapsed().as_micros() as u64;
    earlier.replaced();
    let known_digests = followed.map(crate::archive::follow::FollowedImages::finish).unwrap_or_default();
    tracing::debug!(images = known_digests.len(), "page images hashed as CRIU wrote them");
    // The dump refers to them: they stay with it, in the bundle and in every export.
    Ok(Dumped { options, image_dir, parents: parents.keep(), known_digests, lazy, runtime_duration })
}

const MIB: u64 = 1 << 20;

/// What a container's images take in memory: about its memory, and some metadata of CRIU's.
fn memory_needed(memory_bytes: u64) -> u64 {
    memory_bytes + 64 * MIB
}

fn fits_in_memory(memory_bytes: u64) -> bool {
    memory_needed(memory_bytes) <= crate::hostinfo::memory_available().unwrap_or(0)
}

/// Mounts private memory where CRIU writes a sealed checkpoint's images, so that the
/// container's memory never reaches a disk in the clear; refused when the host has too little.
fn hold_in_memory(record: &ContainerRecord, memory_bytes: u64, dir: &Path) -> Result<()> {
    let available = crate::hostinfo::memory_available().unwrap_or(0);
    let needed = memory_needed(memory_bytes);
    if needed > available {
        return Err(Error::SealNeedsMemory {
            name: record.name.clone(),
            needed_mib: needed / MIB,
            available_mib: available / MIB,
        });
    }
    crate::rootfs::memory::mount(dir, available).map_err(Error::from)
}

/// Writes every export and asks its gates, then hands the checkpoint to a migration's
/// destination: the statistics CRIU kept, or why the checkpoint cannot be published. The
/// digest of each export goes into `digests` as it is made.
fn export_and_hand_off(
    one: &One,
    policies: &mut Policies,
    handoff: Option<&dyn Handoff>,
    pending: Vec<Option<PendingFile>>,
    dumped: &mut Dumped,
    digests: &mut Vec<Option<String>>,
) -> Result<DumpStats> {
    let One { ctx, runtime, record, facts, planned, .. } = *one;
    let o = &planned.options;
    crate::interrupt::check()?;
    let stats = if o.print_stats {
        let stats_path = ctx.containers.paths(&record.id).in_bundle(layout::STATS_DUMP);
        criu::read_dump_stats(&stats_path).map_err(Error::StatsUnreadable)?
    } else {
        DumpStats::default()
    };
    let content = Content {
        images_dir: if o.pre_checkpoint { layout::PRE_CHECKPOINT_DIR } else { layout::CHECKPOINT_DIR },
        parents: dumped.parents.clone(),
        ignore_rootfs: o.ignore_rootfs,
        ignore_volumes: o.ignore_volumes,
        decisions: serde_json::to_vec_pretty(&policies.records).expect("json"),
        known_digests: std::mem::take(&mut dumped.known_digests),
        network_definitions: super::network::definitions_of(ctx, record)?,
    };
    let carrier = handoff.and_then(|h| h.carrier());
    for (target, pending) in planned.exports.iter().zip(pending) {
        let carried = target.kind == TargetKind::Registry && carrier == Some(target.location.as_str());
        let export =
            Export { target, pending, carried, sign_with: planned.sign_with.as_deref().filter(|_| target.signed) };
        digests.push(export_to(ctx, runtime, record, facts, policies, export, &content)?);
    }
    // The last safe point: past it the checkpoint is published.
    crate::interrupt::check()?;
    if let Some(handoff) = handoff {
        // The address goes with the container: the destination may share this host's networks
        // (another store on this machine), and asks for the address the checkpoint had. Should
        // the handoff fail, the roll back here asks for it again.
        if !o.leave_running
            && let Err(e) = super::network::detach(ctx, record)
        {
            tracing::warn!("{}", crate::util::escape_controls(&e.to_string()));
        }
        handoff.deliver(ctx, Outgoing::Own { record, content: &content }, o)?;
    }
    Ok(stats)
}

/// Post-copy: the destination runs the container and has all its memory once CRIU here has
/// served it; anything before that brings the container back here.
fn finish_post_copy(
    txn: &mut DumpTxn,
    runtime: &dyn OciRuntime,
    record: &ContainerRecord,
    lazy: Box<dyn crate::runtime::LazyDump>,
    exported: Result<DumpStats>,
    image_dir: &Path,
) -> Result<DumpStats> {
    let stats = match exported {
        Ok(stats) => stats,
        Err(e) => {
            lazy.abort();
            let e = resume_after_lazy_dump(runtime, record, e);
            if !matches!(e, Error::RolledBack { .. }) {
                txn.keep_mark();
            }
            return Err(e);
        }
    };
    if let Err(e) = lazy.finish() {
        txn.keep_mark();
        return Err(Error::PostCopyBroken { name: record.name.clone(), cause: Box::new(e.into()) });
    }
    txn.commit(image_dir)?;
    Ok(stats)
}

/// Publishes a dump that went everywhere it had to, or rolls the container back. A handoff
/// the destination never confirmed leaves the checkpoint here, published, and says so.
fn finish_dump(
    ctx: &Context,
    mut txn: DumpTxn,
    record: &ContainerRecord,
    planned: &Planned,
    container_stopped: bool,
    exported: Result<DumpStats>,
    image_dir: &Path,
) -> Result<DumpStats> {
    let o = &planned.options;
    let (stats, unconfirmed) = match exported {
        Ok(stats) => (stats, None),
        Err(e @ Error::HandoffUnconfirmed { .. }) => (DumpStats::default(), Some(e)),
        Err(e) if container_stopped => return Err(roll_back(ctx, txn.into_roll_back(), record, o, e)),
        Err(e) => return Err(e),
    };
    if container_stopped {
        txn.commit(image_dir)?;
        // The address and ports go now, as podman's checkpoint gives them up, rather than in
        // the supervisor's cleanup, which a restore right after this would wait for.
        let held = ctx.containers.load(&record.id).is_ok_and(|r| r.state.holds_network());
        if !held && let Err(e) = super::network::detach(ctx, record) {
            tracing::warn!("{}", crate::util::escape_controls(&e.to_string()));
        }
    }
    if !o.keep && !o.pre_checkpoint {
        let paths = ctx.containers.paths(&record.id);
        remove_file_if_exists(&paths.in_bundle(crate::metadata::CRIU_DUMP_LOG))?;
        remove_file_if_exists(&paths.in_bundle(layout::STATS_DUMP))?;
    }
    // The supervisor records the exit in the background; whatever starts the container again
    // waits for it first (see `lifecycle::settle`).
    drop(txn);
    unconfirmed.map_or(Ok(stats), Err)
}
/// The container's record after a dump that stopped it.
fn mark_checkpointed(ctx: &Context, id: &str, image_dir: PathBuf) -> Result<()> {
    let mut record = ctx.containers.load(id)?;
    record.state.checkpointed = true;
    record.state.checkpointed_at = Some(crate::util::now());
    record.state.restored = false;
    record.state.checkpoint_path = Some(image_dir);
    record.state.finished_at = record.state.checkpointed_at;
    // Published: a `--rm` container may go now, as podman's does after its export.
    record.state.checkpoint_in_progress = false;
    ctx.containers.save(&record).map_err(Error::from)
}

/// A post-copy handoff failed before anyone restored from the page server: CRIU is gone, and
/// the processes it held carry on here (thawed, if its freeze outlived it).
fn resume_after_lazy_dump(runtime: &dyn OciRuntime, record: &ContainerRecord, cause: Error) -> Error {
    let resumed = match dump::thaw_if_frozen(runtime, &record.id) {
        Ok(true) => Ok(()),
        Ok(false) => Err(Error::RuntimeForgot(record.name.clone())),
        Err(e) => Err(e),
    };
    match resumed {
        Ok(()) => Error::RolledBack { name: record.name.clone(), cause: Box::new(cause) },
        Err(e) => Error::RollbackFailed {
            name: record.name.clone(),
            cause: Box::new(cause),
            restore: Box::new(e),
            images: PathBuf::from("(post-copy: the memory was never written)"),
        },
    }
}

/// One export target, with the file claimed for an archive.
struct Export<'a> {
    target: &'a ExportTarget,
    pending: Option<PendingFile>,
    /// What a migration's destination restores from: a gate may deny it, never narrow it.
    carried: bool,
    sign_with: Option<&'a Path>,
}

/// Writes one export, asks the gates, and publishes it, narrowed if a gate says so; returns an
/// archive's digest, taken as it was written.
fn export_to(
    ctx: &Context,
    runtime: &dyn OciRuntime,
    record: &ContainerRecord,
    facts: &CheckpointFacts,
    policies: &mut Policies,
    export: Export<'_>,
    content: &Content,
) -> Result<Option<String>> {
    let Export { target, pending, carried, sign_with } = export;
    let sealed_to = target.sealed_to.as_slice();
    let compression = Compression::from(target.compression);
    let gated = !policies.gates.is_empty();
    // Asked only when there are gates: with none, an export is allowed as it is.
    let mut ask = |size: u64, digest: &str, included: export::Included| -> Result<GateVerdict> {
        match policies.gate(&export_facts(facts, target, size, digest, included))? {
            GateVerdict::Narrow { reasons, .. } if carried => Err(Error::Policy(format!(
                "a gate narrowed the export to {:?} ({}), which the migration's destination restores from; a migration moves the whole container or nothing",
                target.location,
                reasons.join("; ")
            ))),
            verdict => Ok(verdict),
        }
    };
    let narrowed = |drop_rootfs: bool, drop_volumes: bool| Content {
        ignore_rootfs: content.ignore_rootfs || drop_rootfs,
        ignore_volumes: content.ignore_volumes || drop_volumes,
        ..content.clone()
    };
    match (target.kind, pending) {
        (TargetKind::Archive, Some(pending)) => {
            let mut write = |file: &mut PendingFile, drop_rootfs: bool, drop_volumes: bool| {
                let narrower;
                let content = match drop_rootfs || drop_volumes {
                    true => {
                        narrower = narrowed(drop_rootfs, drop_volumes);
                        &narrower
                    }
                    false => content,
                };
                export::write_archive(ctx, record, content, compression, sealed_to, file)
            };
            let mut judge = |written: &export::Written| match gated {
                true => ask(written.size, &written.digest, written.included),
                false => Ok(GateVerdict::Allow),
            };
            gated_archive(ctx, pending, sign_with, &mut write, &mut judge).map(Some)
        }
        (TargetKind::Image | TargetKind::Registry, _) => {
            // Stage, judge, publish: the same shape as an archive's.
            let staged = export::stage_image_layer(ctx, record, content, sealed_to)?;
            let verdict =
                if gated { ask(staged.size, &staged.digest()?, staged.included)? } else { GateVerdict::Allow };
            let staged = match verdict {
                GateVerdict::Allow => staged,
                GateVerdict::Narrow { drop_rootfs, drop_volumes, .. } => {
                    drop(staged);
                    export::stage_image_layer(ctx, record, &narrowed(drop_rootfs, drop_volumes), sealed_to)?
                }
            };
            export::publish_image(ctx, runtime, record, staged, &target.location)?;
            if target.kind == TargetKind::Registry {
                // The gates saw the image; what they let through is what is pushed.
                crate::interrupt::check()?;
                crate::ops::images::push(ctx, &target.location, None, &Default::default())?;
            }
            Ok(None)
        }
        (TargetKind::Archive, None) => unreachable!("every archive target has a pending file"),
    }
}

/// Writes an archive into `pending` (`write` leaves out the rootfs changes or the volumes when
/// told to), asks the gates with `judge` and publishes it; when a gate narrows it, it is written
/// again, narrower, in a fresh file. Returns the digest of what was published.
fn gated_archive(
    ctx: &Context,
    mut pending: PendingFile,
    sign_with: Option<&Path>,
    write: &mut dyn FnMut(&mut PendingFile, bool, bool) -> Result<export::Written>,
    judge: &mut dyn FnMut(&export::Written) -> Result<GateVerdict>,
) -> Result<String> {
    let written = write(&mut pending, false, false)?;
    match judge(&written)? {
        GateVerdict::Allow => publish_archive(pending, sign_with).map(|()| written.digest),
        GateVerdict::Narrow { drop_rootfs, drop_volumes, .. } => {
            let target_path = pending.target.clone();
            drop(pending);
            let mut again = PendingFile::create_journaled(&target_path, &ctx.roots.inflight_dir())?;
            let written = write(&mut again, drop_rootfs, drop_volumes)?;
            publish_archive(again, sign_with).map(|()| written.digest)
        }
    }
}

/// What a gate is told of a finished export of the container `facts` describe.
fn export_facts(
    facts: &CheckpointFacts,
    target: &ExportTarget,
    size_bytes: u64,
    digest: &str,
    included: export::Included,
) -> ExportFacts {
    ExportFacts {
        container: facts.container.clone(),
        target: target.clone(),
        size_bytes,
        has_rootfs: included.rootfs,
        has_volumes: included.volumes,
        digest: digest.to_string(),
        now: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    }
}

/// After a successful dump the export failed or was denied: bring the container back from its
/// local images, so that nothing is lost, and report both.
fn roll_back(
    ctx: &Context,
    lock: ContainerLock,
    record: &ContainerRecord,
    options: &wit::CheckpointOptions,
    cause: Error,
) -> Error {
    drop(lock);
    lifecycle::wait_for_supervisor(ctx, &record.id, lifecycle::SUPERVISOR_CLEANUP);
    let paths = ctx.containers.paths(&record.id);
    // The same options as the dump: CRIU restores established connections and held locks
    // only when asked to.
    let restore = crate::runtime::RestoreOptions {
        image_path: paths.checkpoint_dir(),
        work_path: paths.bundle(),
        tcp_established: options.tcp_established,
        file_locks: options.file_locks,
        lazy_pages: false,
        consume_page_images: false,
        criu_config: None,
    };
    let result = (|| {
        let _lock = ContainerLock::acquire(&ctx.roots.locks_dir(), &record.id)?;
        let mut fresh = ctx.containers.load(&record.id)?;
        let wanted = super::network::wanted_from_status(&paths.network_status(), false, false);
        lifecycle::launch(ctx, &mut fresh, &Launch::Restore(restore), &wanted)?;
        set_in_progress(ctx, &record.id, false)?;
        crate::rootfs::memory::release(&paths.checkpoint_dir())?;
        remove_dir_all(&paths.checkpoint_dir()).map_err(Error::from)
    })();
    match result {
        Ok(()) => Error::RolledBack { name: record.name.clone(), cause: Box::new(cause) },
        Err(e) => Error::RollbackFailed {
            name: record.name.clone(),
            cause: Box::new(cause),
            restore: Box::new(e),
            images: paths.checkpoint_dir(),
        },
    }
}

/// Marks (or clears) a checkpoint in progress in the container's record; the caller holds its lock.
fn set_in_progress(ctx: &Context, id: &str, value: bool) -> Result<()> {
    let mut record = ctx.containers.load(id)?;
    record.state.checkpoint_in_progress = value;
    record.state.network_held &= value;
    ctx.containers.save(&record).map_err(Error::from)
}

/// podman's `--print-stats` document, with ckpt's name for the total.
pub fn stats_document(total: Duration, stats: &[ContainerStats]) -> String {
    let doc = json!({"ckpt_checkpoint_duration": total.as_micros() as u64, "container_statistics": stats});
    to_four_space_json(&doc)
}

pub fn to_four_space_json(value: &Value) -> String {
    let mut out = Vec::new();
    let formatter = serde_json::ser::PrettyFormatter::with_indent(b"    ");
    let mut ser = serde_json::Serializer::with_formatter(&mut out, formatter);
    value.serialize(&mut ser).expect("json");
    String::from_utf8(out).expect("utf-8")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(edit: impl FnOnce(&mut CheckpointRequest)) -> CheckpointRequest {
        let mut req = CheckpointRequest { containers: vec!["c".into()], ..Default::default() };
        edit(&mut req);
        req
    }

    #[test]
    fn podmans_rejected_combinations_are_rejected_with_podmans_words() {
        let cases: Vec<(CheckpointRequest, &str)> = vec![
            (request(|r| (r.all, r.latest) = (true, true)), "--all and --latest cannot be used together"),
            (request(|r| r.all = true), "no arguments are needed with --all"),
            (request(|r| r.latest = true), "--latest and containers cannot be used together"),
            (request(|r| r.containers.clear()), "you must provide at least one name or id"),
            (request(|r| r.compress = Some("zstd".into())), "--compress can only be used with --export"),
            (
                request(|r| (r.export, r.compress) = (Some("/a".into()), Some("lz4".into()))),
                "selected compression algorithm (\"lz4\") not supported",
            ),
            (request(|r| r.ignore_rootfs = true), "--ignore-rootfs can only be used with --export"),
            (request(|r| r.ignore_volumes = true), "--ignore-volumes can only be used with --export"),
            (
                request(|r| (r.with_previous, r.pre_checkpoint) = (true, true)),
                "--with-previous can not be used with --pre-checkpoint",
            ),
        ];
        for (req, expected) in cases {
            let err = validate_options(&req, true).unwrap_err().to_string();
            assert!(err.contains(expected), "{req:?}: {err}");
        }
    }

    #[test]
    fn root_is_checked_after_the_flags_as_podman_does() {
        let err = validate_options(&request(|r| r.compress = Some("zstd".into())), false).unwrap_err();
        assert!(err.to_string().contains("--compress can only be used with --export"));
        let err = validate_options(&request(|_| {}), false).unwrap_err();
        assert!(err.to_string().contains("requires root"));
    }

    #[test]
    fn valid_requests_name_their_compression() {
        assert_eq!(validate_options(&request(|_| {}), true).unwrap(), Compression::Zstd);
        let gzip = request(|r| (r.export, r.compress) = (Some("/a".into()), Some("GZIP".into())));
        assert_eq!(validate_options(&gzip, true).unwrap(), Compression::Gzip);
    }

    fn facts(memory_tracking: bool) -> CheckpointFacts {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/facts.json");
        let text = std::fs::read_to_string(path).unwrap();
        let mut facts: CheckpointFacts = crate::policy::json::from_json(&serde_json::from_str(&text).unwrap()).unwrap();
        facts.host.memory_tracking = memory_tracking;
        facts
    }

    fn plan(edit: impl FnOnce(&mut wit::Plan)) -> wit::Plan {
        let facts = facts(false);
        let mut plan = wit::Plan {
            options: facts.request.options,
            pre_dump: PreDumpPlan::None,
            exports: facts.request.exports.clone(),
            plaintext_spill: false,
            reasons: vec![],
        };
        edit(&mut plan);
        plan
    }

    #[test]
    fn plans_that_break_the_hosts_rules_are_refused_before_anything_changes() {
        let image = ExportTarget {
            kind: TargetKind::Image,
            location: "i".into(),
            compression: wit::Compression::Zstd,
            sealed_to: vec![],
            signed: false,
        };
        let refused = [
            plan(|p| (p.options.with_previous, p.options.pre_checkpoint) = (true, true)),
            plan(|p| (p.options.ignore_rootfs, p.exports) = (true, vec![])),
            plan(|p| (p.options.pre_checkpoint, p.exports) = (true, vec![image])),
        ];
        for p in refused {
            let err = check_plan(&p, &facts(true), "p").unwrap_err().to_string();
            assert!(err.contains("refused before anything changed"), "{err}");
        }
        let rounds = plan(|p| p.pre_dump = PreDumpPlan::Rounds(2));
        let err = check_plan(&rounds, &facts(false), "p").unwrap_err().to_string();
        assert!(err.contains("mem_dirty_track"), "{err}");
        assert!(check_plan(&rounds, &facts(true), "p").is_ok());
        let mixed = plan(|p| (p.pre_dump, p.options.pre_checkpoint) = (PreDumpPlan::Rounds(2), true));
        assert!(check_plan(&mixed, &facts(true), "p").is_err());
    }

    /// A migration through `via`, or streamed; only what the plan checks is asked of it.
    struct Moving(Option<&'static str>);

    impl Handoff for Moving {
        fn migration(&self) -> wit::MigrationFacts {
            unreachable!()
        }
        fn chose(&self, _: &wit::StrategyChoice) {}
        fn page_server(&self) -> Result<Option<std::os::fd::OwnedFd>> {
            unreachable!()
        }
        fn carrier(&self) -> Option<&str> {
            self.0
        }
        fn deliver(&self, _: &Context, _: Outgoing<'_>, _: &wit::CheckpointOptions) -> Result<()> {
            unreachable!()
        }
    }

    #[test]
    fn a_migration_plan_that_would_move_less_than_the_whole_container_is_refused() {
        let via = "localhost:5000/ckpt/web:1";
        let pushed = ExportTarget {
            kind: TargetKind::Registry,
            location: via.into(),
            compression: wit::Compression::Zstd,
            sealed_to: vec![],
            signed: false,
        };
        let planned = |edit: fn(&mut wit::Plan)| {
            let mut p = plan(|p| p.exports = vec![pushed.clone()]);
            edit(&mut p);
            check_plan(&p, &facts(false), "p").unwrap()
        };
        check_whole_move(&planned(|_| {}), &Moving(Some(via)), "p").unwrap();
        check_whole_move(&planned(|p| p.exports.clear()), &Moving(None), "p").unwrap();
        type Edit = fn(&mut wit::Plan);
        let refused: [(Edit, &str); 5] = [
            (|p| p.options.ignore_rootfs = true, "--ignore-rootfs"),
            (|p| p.options.ignore_volumes = true, "--ignore-volumes"),
            (|p| p.options.leave_running = true, "--leave-running"),
            (|p| p.exports.clear(), "no export to"),
            (|p| p.exports[0].location = "localhost:5000/elsewhere:1".into(), "no export to"),
        ];
        for (edit, expected) in refused {
            let err = check_whole_move(&planned(edit), &Moving(Some(via)), "p").unwrap_err().to_string();
            assert!(err.contains(expected) && err.contains("keeps running here"), "{err}");
        }
    }
}
