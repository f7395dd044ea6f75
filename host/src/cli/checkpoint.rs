use std::path::PathBuf;
use std::time::Instant;

use clap::Args;

use crate::error::Result;
use crate::ops::Context;
use crate::ops::checkpoint::{self, CheckpointRequest};
use crate::ops::restore::{self, RestoreRequest};

/// Checkpoint one or more running containers.
#[derive(Debug, Args)]
pub struct CheckpointArgs {
    /// Checkpoint all running containers.
    #[arg(short, long)]
    pub all: bool,
    /// Act on the latest container ckpt knows about.
    #[arg(short, long)]
    pub latest: bool,
    #[command(flatten)]
    pub dump: DumpFlags,
    /// Export the checkpoint to a tar archive.
    #[arg(short, long)]
    pub export: Option<PathBuf>,
    /// Dump the container's memory only, leaving it running (needs memory dirty tracking).
    #[arg(short = 'P', long)]
    pub pre_checkpoint: bool,
    /// Dump the container using the pre-checkpoint dump as parent.
    #[arg(long)]
    pub with_previous: bool,
    /// Create a checkpoint image with this name.
    #[arg(long)]
    pub create_image: Option<String>,
    /// Seal the exported archive or checkpoint image to RECIPIENT (an age recipient, age1…, or an
    /// SSH public key), as age's -r does; repeatable. The host config's recipients are always added.
    #[arg(long, value_name = "RECIPIENT")]
    pub encrypt_to: Vec<String>,
    /// Sign the exported archive with this SSH private key: ARCHIVE.sig beside it, which
    /// `ssh-keygen -Y verify -n ckpt-archive` checks.
    #[arg(long, value_name = "KEYFILE")]
    pub sign_with: Option<PathBuf>,
    /// Print statistics about the checkpoint as JSON.
    #[arg(long)]
    pub print_stats: bool,
    #[command(flatten)]
    pub policies: PolicyFlags,
    /// Print the planner's decision and checkpoint nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// How many containers to checkpoint at once (default: one per core).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub parallel: Option<u16>,
    /// What asked for this checkpoint, as the policy sees it (default: cli).
    #[arg(long, default_value = "cli")]
    pub trigger: String,
    pub containers: Vec<String>,
}

/// The dump and export flags that `checkpoint` and `schedule add` share.
#[derive(Debug, Args)]
pub struct DumpFlags {
    /// Keep all temporary checkpoint files.
    #[arg(short, long)]
    pub keep: bool,
    /// Leave the container running after writing the checkpoint.
    #[arg(short = 'R', long)]
    pub leave_running: bool,
    /// Checkpoint a container with established TCP connections.
    #[arg(long)]
    pub tcp_established: bool,
    /// Checkpoint a container with file locks.
    #[arg(long)]
    pub file_locks: bool,
    /// Compression of the exported archive: zstd (default), gzip or none.
    #[arg(short, long)]
    pub compress: Option<String>,
    /// Leave the root filesystem changes out of the exported archive.
    #[arg(long)]
    pub ignore_rootfs: bool,
    /// Leave the named volumes out of the exported archive.
    #[arg(long)]
    pub ignore_volumes: bool,
}

/// The planner and the gates, with their settings.
#[derive(Debug, Args)]
pub struct PolicyFlags {
    /// The planner policy: a component file or a pinned registry reference (default: the
    /// built-in default policy).
    #[arg(long, value_name = "FILE.wasm")]
    pub policy: Option<String>,
    /// Settings for the planner: JSON, or @FILE.
    #[arg(long, value_name = "JSON|@FILE")]
    pub policy_config: Option<String>,
    #[command(flatten)]
    pub gate_flags: GateFlags,
}

impl PolicyFlags {
    /// Each gate with its settings (`{}` when not given).
    pub fn gates(&self) -> Result<Vec<(String, String)>> {
        self.gate_flags.gates()
    }
}

/// The gates, with their settings.
#[derive(Debug, Args)]
pub struct GateFlags {
    /// An export gate policy; give it several times, any deny wins.
    #[arg(long, value_name = "FILE.wasm")]
    pub gate: Vec<String>,
    /// Settings for the gates, in the order of --gate: JSON, or @FILE.
    #[arg(long, value_name = "JSON|@FILE")]
    pub gate_config: Vec<String>,
}

impl GateFlags {
    /// Each gate with its settings (`{}` when not given).
    pub fn gates(&self) -> Result<Vec<(String, String)>> {
        if self.gate_config.len() > self.gate.len() {
            return Err(crate::Error::invalid(
                "more --gate-config than --gate: each setting goes with the --gate in the same position",
            ));
        }
        self.gate
            .iter()
            .enumerate()
            .map(|(i, gate)| {
                Ok((gate.clone(), crate::policy::read_settings(self.gate_config.get(i).map(String::as_str))?))
            })
            .collect()
    }
}

/// Restore one or more containers from a checkpoint.
#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// Restore all checkpointed containers.
    #[arg(short, long)]
    pub all: bool,
    /// Act on the latest container ckpt knows about.
    #[arg(short, long)]
    pub latest: bool,
    /// Keep all temporary checkpoint files.
    #[arg(short, long)]
    pub keep: bool,
    /// Restore a container with established TCP connections.
    #[arg(long)]
    pub tcp_established: bool,
    /// Restore a container with file locks.
    #[arg(long)]
    pub file_locks: bool,
    /// Restore from an exported checkpoint archive.
    #[arg(short, long)]
    pub import: Option<PathBuf>,
    /// Restore from an exported pre-checkpoint archive too.
    #[arg(long)]
    pub import_previous: Option<PathBuf>,
    /// The restored container's name (gives it a new ID).
    #[arg(short, long)]
    pub name: Option<String>,
    /// Do not apply root filesystem changes from the archive.
    #[arg(long)]
    pub ignore_rootfs: bool,
    /// Do not restore named volumes' content from the archive.
    #[arg(long)]
    pub ignore_volumes: bool,
    /// Print statistics about the restore as JSON.
    #[arg(long)]
    pub print_stats: bool,
    /// How many containers to restore at once (default: one per core).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub parallel: Option<u16>,
    /// Give the container a new IP address rather than the one it had at the checkpoint.
    #[arg(long)]
    pub ignore_static_ip: bool,
    /// Give the container a new MAC address rather than the one it had at the checkpoint.
    #[arg(long)]
    pub ignore_static_mac: bool,
    /// With --import: [[IP:][HOST]:]CONTAINER[/tcp|udp] to publish in place of the archive's ports.
    #[arg(short = 'p', long = "publish")]
    pub publish: Vec<String>,
    /// An age identity file or SSH private key that opens a sealed archive, as age's -i;
    /// repeatable.
    #[arg(long = "identity", value_name = "FILE")]
    pub identities: Vec<PathBuf>,
    /// `ckpt migrate`: unpack the checkpoint into private memory, never onto a disk.
    #[arg(long, hide = true)]
    pub private_memory: bool,
    /// `ckpt migrate`: make the user networks the archive carries and this host lacks.
    #[arg(long, hide = true)]
    pub create_networks: bool,
    /// Post-copy (`ckpt migrate`): fetch the memory through the Unix socket at PATH, which ssh
    /// forwards to the source's page server.
    #[arg(long, value_name = "PATH", hide = true)]
    pub lazy_pages_from: Option<String>,
    /// What runs the restored container: ckpt, or podman, handed the checked archive or
    /// checkpoint image through its API ([engines] podman-socket).
    #[arg(long, value_name = "ENGINE", value_parser = ["ckpt", "podman"], default_value = "ckpt")]
    pub engine: String,
    pub targets: Vec<String>,
}

pub fn checkpoint(ctx: &Context, args: CheckpointArgs) -> Result<i32> {
    let started = Instant::now();
    let gates = args.policies.gates()?;
    let req = CheckpointRequest {
        containers: args.containers,
        all: args.all,
        latest: args.latest,
        keep: args.dump.keep,
        leave_running: args.dump.leave_running,
        tcp_established: args.dump.tcp_established,
        file_locks: args.dump.file_locks,
        export: args.export,
        compress: args.dump.compress,
        ignore_rootfs: args.dump.ignore_rootfs,
        ignore_volumes: args.dump.ignore_volumes,
        pre_checkpoint: args.pre_checkpoint,
        with_previous: args.with_previous,
        create_image: args.create_image,
        registry: None,
        parallel: args.parallel.map(usize::from),
        print_stats: args.print_stats,
        policy: args.policies.policy,
        policy_config: args.policies.policy_config,
        gates,
        dry_run: args.dry_run,
        trigger: args.trigger,
        schedule: None,
        encrypt_to: args.encrypt_to,
        sign_with: args.sign_with,
    };
    let (done, result) = checkpoint::checkpoint(ctx, &req);
    if req.dry_run {
        let plans: Vec<_> = done.iter().filter_map(|d| d.plan.clone()).collect();
        println!("{}", serde_json::to_string_pretty(&plans).expect("json"));
    } else if req.print_stats {
        let stats: Vec<_> = done.iter().map(|d| d.stats.clone()).collect();
        println!("{}", checkpoint::stats_document(started.elapsed(), &stats));
    } else {
        for d in &done {
            match &d.skipped {
                Some(reason) => eprintln!(
                    "container {:?} was not checkpointed: the policy skipped it: {}",
                    d.printed_name,
                    crate::util::escape_controls(reason)
                ),
                None => println!("{}", d.printed_name),
            }
        }
    }
    result.map(|()| 0)
}

pub fn restore(ctx: &Context, args: RestoreArgs) -> Result<i32> {
    let started = Instant::now();
    let req = RestoreRequest {
        targets: args.targets,
        all: args.all,
        latest: args.latest,
        import: args.import,
        import_previous: args.import_previous,
        name: args.name,
        keep: args.keep,
        tcp_established: args.tcp_established,
        file_locks: args.file_locks,
        ignore_rootfs: args.ignore_rootfs,
        ignore_volumes: args.ignore_volumes,
        print_stats: args.print_stats,
        lazy_pages_from: args.lazy_pages_from,
        parallel: args.parallel.map(usize::from),
        ignore_static_ip: args.ignore_static_ip,
        ignore_static_mac: args.ignore_static_mac,
        publish: args.publish,
        identities: args.identities,
        private_memory: args.private_memory,
        create_networks: args.create_networks,
        engine: crate::ops::Engine::parse(&args.engine)?,
    };
    let (done, result) = restore::restore(ctx, &req);
    if req.print_stats {
        let stats: Vec<_> = done.iter().map(|d| d.stats.clone()).collect();
        println!("{}", restore::stats_document(started.elapsed(), &stats));
    } else {
        done.iter().for_each(|d| println!("{}", d.printed_name));
    }
    result.map(|()| 0)
}
