//! The command line: clap definitions, one file per command group, and the dispatch.

mod checkpoint;
mod container;
mod image;
mod policy;
mod volume;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::error::Result;
use crate::ops::Context;
use crate::store::Roots;

#[derive(Debug, Parser)]
#[command(
    name = "ckpt",
    version,
    about = "Checkpoint and restore Linux containers, with decisions made by WebAssembly policies"
)]
pub struct Cli {
    /// Where ckpt keeps containers, images and volumes.
    #[arg(long, global = true, default_value = "/var/lib/ckpt", env = "CKPT_ROOT")]
    pub root: PathBuf,
    /// Where ckpt keeps run-time state, including the OCI runtime's own state root.
    #[arg(long, global = true, default_value = "/run/ckpt", env = "CKPT_RUNROOT")]
    pub runroot: PathBuf,
    /// The OCI runtime for new containers: a name in $PATH or a path.
    #[arg(long, global = true, default_value = "runc", env = "CKPT_RUNTIME")]
    pub runtime: String,
    /// How much ckpt says on stderr about what it does: error, warn, info, debug (each runtime
    /// and CRIU invocation, with its log file) or trace.
    #[arg(long, global = true, value_enum, default_value_t = LogLevel::Warn, env = "CKPT_LOG_LEVEL")]
    pub log_level: LogLevel,
    /// The host config: where policies may export (default /etc/ckpt/ckpt.toml).
    #[arg(long = "config", global = true, env = "CKPT_CONFIG")]
    pub host_config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    Run(container::RunArgs),
    Checkpoint(checkpoint::CheckpointArgs),
    Restore(checkpoint::RestoreArgs),
    /// Show what a checkpoint archive holds, as checkpointctl's show does.
    InspectCheckpoint {
        /// `json` for a JSON document.
        #[arg(long)]
        format: Option<OutputFormat>,
        archive: PathBuf,
    },
    Start(container::StartArgs),
    Stop(container::StopArgs),
    Rm(container::RmArgs),
    Ps(container::PsArgs),
    Logs(container::LogsArgs),
    Exec(container::ExecArgs),
    Inspect(container::InspectArgs),
    Diff(container::DiffArgs),
    #[command(subcommand)]
    Image(image::ImageCommand),
    #[command(subcommand)]
    Volume(volume::VolumeCommand),
    #[command(subcommand)]
    Policy(policy::PolicyCommand),
    #[command(subcommand)]
    System(SystemCommand),
    #[command(name = "__supervise", hide = true)]
    Supervise(container::SuperviseArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl From<LogLevel> for tracing::Level {
    fn from(level: LogLevel) -> tracing::Level {
        match level {
            LogLevel::Error => tracing::Level::ERROR,
            LogLevel::Warn => tracing::Level::WARN,
            LogLevel::Info => tracing::Level::INFO,
            LogLevel::Debug => tracing::Level::DEBUG,
            LogLevel::Trace => tracing::Level::TRACE,
        }
    }
}

/// `--format`: a JSON document instead of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    Json,
}

/// The flags every listing command (`ps`, `image ls`, `volume ls`) shares.
#[derive(Debug, Clone, clap::Args)]
pub struct ListArgs {
    /// Print IDs (or names) only.
    #[arg(short, long)]
    pub quiet: bool,
    /// `json` for a JSON array.
    #[arg(long)]
    pub format: Option<OutputFormat>,
}

/// Looking after ckpt's own state.
#[derive(Debug, Subcommand)]
pub enum SystemCommand {
    /// Find what interrupted commands left (temporary exports, staging, frozen containers,
    /// records that disagree with the runtime); exits 1 if anything is left unrepaired.
    Check {
        /// Repair what was found.
        #[arg(long)]
        repair: bool,
        /// `json` for a JSON document.
        #[arg(long)]
        format: Option<OutputFormat>,
    },
}

/// Runs a parsed command line; returns the process exit code.
pub fn run(cli: Cli) -> Result<i32> {
    let _ = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::from(cli.log_level))
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
    // Everything ckpt writes is private unless it says otherwise (see `util::create_dir_with_mode`).
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    let roots = Roots::new(&cli.root, &cli.runroot);
    let is_root = nix::unistd::geteuid().is_root();
    if is_root {
        crate::store::secure_roots(&roots)?;
    }
    let mut ctx = Context::new(roots, cli.runtime);
    ctx.config = crate::config::HostConfig::load(cli.host_config.as_deref())?;
    if matches!(cli.command, Command::Checkpoint(_) | Command::Restore(_)) {
        crate::interrupt::install();
    }
    // What a killed ckpt left and nobody else can finish goes first; the rest is reported by
    // `ckpt system check`.
    if is_root && !matches!(cli.command, Command::Supervise(_) | Command::System(_)) {
        for finding in crate::ops::system::sweep_leftovers(&ctx, true) {
            eprintln!(
                "ckpt: removed {} ({})",
                crate::util::escape_controls(&finding.object),
                crate::util::escape_controls(&finding.detail)
            );
        }
    }
    match cli.command {
        Command::Run(args) => container::run(&ctx, args),
        Command::Checkpoint(args) => checkpoint::checkpoint(&ctx, args),
        Command::Restore(args) => checkpoint::restore(&ctx, args),
        Command::InspectCheckpoint { format, archive } => {
            let summary = crate::archive::summary::summarize(&archive)?;
            match format {
                Some(OutputFormat::Json) => println!("{}", serde_json::to_string_pretty(&summary).expect("json")),
                None => print!("{}", crate::util::escape_controls(&crate::archive::summary::render(&summary))),
            }
            Ok(0)
        }
        Command::Start(args) => container::start(&ctx, args),
        Command::Stop(args) => container::stop(&ctx, args),
        Command::Rm(args) => container::rm(&ctx, args),
        Command::Ps(args) => container::ps(&ctx, args),
        Command::Logs(args) => container::logs(&ctx, args),
        Command::Exec(args) => container::exec(&ctx, args),
        Command::Inspect(args) => container::inspect(&ctx, args),
        Command::Diff(args) => container::diff(&ctx, args),
        Command::Image(cmd) => image::run(&ctx, cmd),
        Command::Volume(cmd) => volume::run(&ctx, cmd),
        Command::Policy(cmd) => policy::run(&ctx, cmd),
        Command::Supervise(args) => container::supervise(&ctx, args),
        Command::System(SystemCommand::Check { repair, format }) => {
            let findings = crate::ops::system::check(&ctx, repair)?;
            match format {
                Some(OutputFormat::Json) => println!("{}", serde_json::to_string_pretty(&findings).expect("json")),
                None => print!("{}", crate::util::escape_controls(&crate::ops::system::render(&findings))),
            }
            Ok(if findings.iter().all(|f| f.repaired) { 0 } else { 1 })
        }
    }
}
