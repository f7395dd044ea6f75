//! `ckpt schedule`, `ckpt daemon`, `ckpt catalog` and `ckpt audit`: scheduled checkpoints, what
//! they made, and the log of it all.

use std::io::Write;
use std::net::SocketAddr;

use clap::{Args, Subcommand};

use crate::error::Result;
use crate::ops::{Context, catalog, daemon, schedule};
use crate::store::schedules::{PolicySpec, Schedule, ScheduleFlags, Selector, When};
use gotemplate::Format;

/// Manage checkpoint schedules; `ckpt daemon` runs them.
#[derive(Debug, Subcommand)]
pub enum ScheduleCommand {
    /// Add a schedule: when, which containers, and how (the checkpoint flags and policies).
    Add(Box<AddArgs>),
    /// List schedules with their next run, last run and last result.
    #[command(alias = "list")]
    Ls {
        /// `json`, or a Go template.
        #[arg(long, value_parser = super::format_arg)]
        format: Option<Format>,
    },
    /// Remove schedules (the checkpoints they made stay in the catalog).
    Rm {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Stop running a schedule until it is resumed.
    Pause {
        name: String,
    },
    Resume {
        name: String,
    },
    /// Run a schedule once now, in the foreground; refused while `ckpt daemon` runs the store's
    /// schedules, which would run it again.
    Run {
        name: String,
        /// How many containers to checkpoint at once.
        #[arg(long, default_value_t = 2)]
        max_parallel: usize,
    },
}

#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("when").required(true).args(["every", "cron"]))]
#[command(group = clap::ArgGroup::new("which").required(true).args(["container", "label", "all"]))]
pub struct AddArgs {
    pub name: String,
    /// Run every DURATION (30s, 5m, 1h) from now on.
    #[arg(long)]
    pub every: Option<String>,
    /// Run at the times of a five-field cron expression, in UTC (`*/15 * * * *`).
    #[arg(long)]
    pub cron: Option<String>,
    /// A container to checkpoint (repeat for more); podman:NAME for one of podman's.
    #[arg(long)]
    pub container: Vec<String>,
    /// Every running container with this label (K or K=V).
    #[arg(long)]
    pub label: Option<String>,
    /// Every running container.
    #[arg(long)]
    pub all: bool,
    /// Whose containers --label and --all pick, and --container names: ckpt's own, or podman's
    /// (through its API, [engines] podman-socket).
    #[arg(long, value_name = "ENGINE", value_parser = ["ckpt", "podman"], default_value = "ckpt")]
    pub engine: String,
    /// Export each checkpoint: an archive path (`/srv/ckpt/{name}-{time}.tar.zst`) or an image
    /// name; `{name}`, `{id}` and `{time}` expand.
    #[arg(short, long, value_name = "TEMPLATE")]
    pub export: Option<String>,
    #[command(flatten)]
    pub dump: super::checkpoint::DumpFlags,
    #[command(flatten)]
    pub policies: super::checkpoint::PolicyFlags,
    /// Which entries to delete after each run; the built-in one keeps the newest `keep-last`
    /// (10) within `max-total-bytes`.
    #[arg(long, value_name = "FILE.wasm")]
    pub retainer: Option<String>,
    /// Settings of the retainer, built-in or not: `{"keep-last": 3}`.
    #[arg(long, value_name = "JSON|@FILE")]
    pub retainer_config: Option<String>,
    /// Start each run up to this much later, the same delay for the same slot.
    #[arg(long)]
    pub jitter: Option<String>,
}

/// The checkpoints ckpt made, and what is left of them.
#[derive(Debug, Subcommand)]
pub enum CatalogCommand {
    /// List entries, newest first: all, or one container's.
    #[command(alias = "list")]
    Ls {
        #[arg(long, value_parser = super::format_arg)]
        format: Option<Format>,
        container: Option<String>,
    },
    /// Delete what entries name (archive, image or local checkpoint), and the entries.
    Rm {
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Keep an entry whatever retention says.
    Pin {
        id: String,
    },
    Unpin {
        id: String,
    },
}

/// The hash-chained audit log.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check the whole chain; exit 1 naming the first entry that was edited, removed or moved.
    Verify,
    /// Print the entries, oldest first, as JSON lines.
    Ls,
}

#[derive(Debug, Args)]
pub struct DaemonArgs {
    /// How many checkpoints run at once, across all schedules.
    #[arg(long, default_value_t = 2)]
    pub max_parallel: usize,
    /// Serve metrics in Prometheus' text format on ADDR (`127.0.0.1:9464`).
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<SocketAddr>,
}

fn spec(source: Option<String>, config: Option<&str>) -> Result<Option<PolicySpec>> {
    Ok(match source {
        Some(source) => Some(PolicySpec { source, settings: crate::policy::read_settings(config)? }),
        None => None,
    })
}

pub fn run_schedule(ctx: &Context, command: ScheduleCommand) -> Result<i32> {
    match command {
        ScheduleCommand::Add(args) => {
            let args = *args;
            let on_podman = crate::ops::Engine::parse(&args.engine)? == crate::ops::Engine::Podman;
            let podman_name = |name: String| match name.starts_with(crate::podman::PREFIX) {
                true => name,
                false => format!("{}{name}", crate::podman::PREFIX),
            };
            let selector = match (args.container.is_empty(), args.label, on_podman) {
                (false, _, true) => Selector::Containers(args.container.into_iter().map(podman_name).collect()),
                (false, _, false) => Selector::Containers(args.container),
                (true, Some(label), false) => Selector::Label(label),
                (true, Some(label), true) => Selector::PodmanLabel(label),
                (true, None, false) => Selector::All,
                (true, None, true) => Selector::PodmanAll,
            };
            let gates =
                args.policies.gates()?.into_iter().map(|(source, settings)| PolicySpec { source, settings }).collect();
            let retainer = match (args.retainer, &args.retainer_config) {
                (None, None) => None,
                (source, config) => spec(
                    Some(source.unwrap_or_else(|| crate::policy::DEFAULT_RETAINER_SOURCE.to_string())),
                    config.as_deref(),
                )?,
            };
            let schedule = Schedule {
                name: args.name.clone(),
                when: match (args.every, args.cron) {
                    (Some(every), _) => When::Every(every),
                    (None, Some(cron)) => When::Cron(cron),
                    (None, None) => unreachable!("clap requires --every or --cron"),
                },
                selector,
                export: args.export,
                flags: ScheduleFlags {
                    leave_running: args.dump.leave_running,
                    tcp_established: args.dump.tcp_established,
                    file_locks: args.dump.file_locks,
                    keep: args.dump.keep,
                    ignore_rootfs: args.dump.ignore_rootfs,
                    ignore_volumes: args.dump.ignore_volumes,
                    compress: args.dump.compress,
                },
                policy: spec(args.policies.policy, args.policies.policy_config.as_deref())?,
                gates,
                retainer,
                jitter: args.jitter,
                paused: false,
                created: crate::util::now(),
            };
            schedule::add(ctx, schedule)?;
            println!("{}", args.name);
        }
        ScheduleCommand::Ls { format } => {
            let rows = schedule::list(ctx)?;
            match format {
                Some(format) => super::print_rows(&format, &rows, &rows, &[])?,
                None => {
                    let mut lines = vec!["NAME\tWHEN\tCONTAINERS\tNEXT RUN\tLAST RUN\tLAST RESULT".to_string()];
                    let time = |t: Option<chrono::DateTime<chrono::Utc>>| {
                        t.map_or("-".to_string(), |t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                    };
                    for row in &rows {
                        lines.push(format!(
                            "{}\t{}\t{}\t{}\t{}\t{}",
                            row.schedule.name,
                            row.schedule.when,
                            row.schedule.selector,
                            if row.schedule.paused { "paused".to_string() } else { time(row.next_run) },
                            time(row.state.last_run),
                            row.state.last_result.as_deref().unwrap_or("-"),
                        ));
                    }
                    print!("{}", crate::util::escape_controls(&gotemplate::align_columns(&lines)));
                }
            }
        }
        ScheduleCommand::Rm { names } => crate::ops::each(&names, |name| {
            schedule::remove(ctx, name)?;
            println!("{name}");
            Ok(())
        })?,
        ScheduleCommand::Pause { name } => {
            schedule::set_paused(ctx, &name, true)?;
            println!("{name}");
        }
        ScheduleCommand::Resume { name } => {
            schedule::set_paused(ctx, &name, false)?;
            println!("{name}");
        }
        ScheduleCommand::Run { name, max_parallel } => {
            let outcome = schedule::run_now(ctx, &name, max_parallel)?;
            println!("{}", serde_json::to_string_pretty(&outcome).expect("json"));
            return Ok(if matches!(outcome.result.as_str(), "ok" | "skipped") { 0 } else { 1 });
        }
    }
    Ok(0)
}

/// The kubelet's checkpoints: each archive it writes becomes a checkpoint image.
#[derive(Debug, Args)]
pub struct NodeAgentArgs {
    /// Where the kubelet writes checkpoint archives (`<--root-dir>/checkpoints`).
    #[arg(long, value_name = "DIR", default_value = crate::ops::node_agent::DEFAULT_CHECKPOINT_DIR)]
    pub checkpoint_dir: std::path::PathBuf,
    /// The image each archive becomes; {namespace}, {pod}, {container} and {time} expand.
    #[arg(long, value_name = "TEMPLATE", default_value = "localhost/checkpoints/{namespace}-{pod}-{container}:{time}")]
    pub image: String,
    /// Push each image to the registry its name names (signed as `push` signs).
    #[arg(long)]
    pub push: bool,
    /// One pass over the directory, then exit.
    #[arg(long)]
    pub once: bool,
    /// How often to look for new archives (5s, 1m).
    #[arg(long, value_name = "DURATION", default_value = "5s")]
    pub interval: String,
    #[command(flatten)]
    pub registry: super::RegistryArgs,
    #[command(flatten)]
    pub gates: super::checkpoint::GateFlags,
    /// The retainer asked after a pass about each container's checkpoints, then each pod's and
    /// each namespace's (the checkpoint-restore-operator's vocabulary:
    /// target/policies/kubelet_retainer.wasm).
    #[arg(long, value_name = "FILE.wasm")]
    pub retainer: Option<String>,
    /// Seal each image to RECIPIENT (an age recipient or an SSH public key); repeatable.
    #[arg(long, value_name = "RECIPIENT")]
    pub encrypt_to: Vec<String>,
    /// Settings for the retainer: JSON, or @FILE (`{"maxCheckpointsPerContainer": 10}`).
    #[arg(long, value_name = "JSON|@FILE", requires = "retainer")]
    pub retainer_config: Option<String>,
    /// Read the retainer's settings on each pass from the cluster's CheckpointRetention NAME
    /// (ckpt.io/v1alpha1, the operator's fields), through the pod's service account or KUBECONFIG.
    #[arg(long, value_name = "NAME", requires = "retainer", conflicts_with = "retainer_config")]
    pub cluster_retention: Option<String>,
    /// On each pass, ask the kubelet for the checkpoints the cluster's CheckpointSchedules
    /// (ckpt.io/v1alpha1) call for, of the running pods on NODE (its spec.nodeName).
    #[arg(long, value_name = "NODE")]
    pub schedules_on_node: Option<String>,
    /// Print the CustomResourceDefinitions of CheckpointRetention and CheckpointSchedule, then
    /// exit.
    #[arg(long)]
    pub print_crds: bool,
}

pub fn run_node_agent(ctx: &Context, args: NodeAgentArgs) -> Result<i32> {
    if args.print_crds {
        print!("{}", crate::kubernetes::crd::definitions());
        return Ok(0);
    }
    let interval = crate::util::parse_duration(&args.interval).ok_or_else(|| {
        crate::error::Error::invalid(format!("--interval {:?} is not a duration (5s, 1m)", args.interval))
    })?;
    let req = crate::ops::node_agent::NodeAgentRequest {
        checkpoint_dir: args.checkpoint_dir,
        image: args.image,
        push: args.push,
        registry: args.registry.into(),
        once: args.once,
        interval,
        gates: args.gates.gates()?,
        encrypt_to: args.encrypt_to,
        retainer: match args.retainer {
            Some(source) => Some((source, crate::policy::read_settings(args.retainer_config.as_deref())?)),
            None => None,
        },
        cluster_retention: args.cluster_retention,
        schedules_on_node: args.schedules_on_node,
    };
    let mut out = std::io::stdout();
    crate::ops::node_agent::run(ctx, &req, &mut |taken| {
        let _ = writeln!(out, "{}", serde_json::to_string(taken).expect("json"));
        let _ = out.flush();
    })?;
    Ok(0)
}

pub fn run_daemon(ctx: &Context, args: DaemonArgs) -> Result<i32> {
    daemon::run(ctx, &daemon::DaemonOptions { max_parallel: args.max_parallel, metrics: args.metrics })?;
    Ok(0)
}

pub fn run_catalog(ctx: &Context, command: CatalogCommand) -> Result<i32> {
    match command {
        CatalogCommand::Ls { format, container } => {
            let rows = catalog::list(ctx, container.as_deref())?;
            match format {
                Some(format) => super::print_rows(&format, &rows, &rows, &[])?,
                None => {
                    let mut lines =
                        vec!["ID\tCONTAINER\tKIND\tCREATED\tSIZE\tTRIGGER\tPINNED\tSTATUS\tLOCATION".to_string()];
                    for row in &rows {
                        let e = &row.entry;
                        lines.push(format!(
                            "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
                            e.id,
                            e.container_name,
                            e.kind,
                            e.created.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                            crate::util::human_size(e.size_bytes),
                            e.schedule.as_ref().map_or(e.trigger.clone(), |s| format!("schedule:{s}")),
                            if e.pinned { "yes" } else { "no" },
                            row.presence,
                            e.location,
                        ));
                    }
                    print!("{}", crate::util::escape_controls(&gotemplate::align_columns(&lines)));
                }
            }
        }
        CatalogCommand::Rm { ids } => crate::ops::each(&ids, |id| {
            println!("{}", catalog::remove(ctx, id)?.id);
            Ok(())
        })?,
        CatalogCommand::Pin { id } => println!("{}", catalog::pin(ctx, &id, true)?.id),
        CatalogCommand::Unpin { id } => println!("{}", catalog::pin(ctx, &id, false)?.id),
    }
    Ok(0)
}

pub fn run_audit(ctx: &Context, command: AuditCommand) -> Result<i32> {
    let log = ctx.audit_log();
    match command {
        AuditCommand::Verify => match log.verify()? {
            Ok(verified) => {
                println!(
                    "{}: {} entries, {} to {}, the chain is intact{}",
                    ctx.roots.audit_log().display(),
                    verified.entries,
                    verified.first_seq,
                    verified.last_seq,
                    if verified.anchored_after_rotation {
                        " (it starts after generations that were rotated away)"
                    } else {
                        ""
                    }
                );
                if let Some(crash) = verified.crash {
                    println!("note: {crash}");
                }
                Ok(0)
            }
            Err(broken) => {
                eprintln!("Error: the audit log was tampered with: {broken}");
                Ok(1)
            }
        },
        AuditCommand::Ls => {
            let mut out = std::io::stdout().lock();
            for entry in log.entries()? {
                writeln!(out, "{}", crate::util::escape_controls(&entry.to_string())).ok();
            }
            Ok(0)
        }
    }
}
