//! The command line: clap definitions, one file per command group, and the dispatch.

mod checkpoint;
mod container;
mod image;
mod man_pages;
mod migrate;
mod network;
mod policy;
mod schedule;
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
    // As Go's flag package does for podman: a flag given twice takes its last value.
    args_override_self = true,
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
    /// The subcommand as typed, `ckpt container ps`, for messages; set by `parse_args`.
    #[arg(skip)]
    pub words: String,
}

impl Cli {
    /// Parses the process's arguments, keeping the subcommand's words as clap matched them.
    pub fn parse_args() -> std::result::Result<Cli, clap::Error> {
        let matches = <Cli as clap::CommandFactory>::command().try_get_matches()?;
        let mut cli = <Cli as clap::FromArgMatches>::from_arg_matches(&matches)?;
        let mut words = vec!["ckpt"];
        let mut level = &matches;
        while let Some((name, sub)) = level.subcommand() {
            words.push(name);
            level = sub;
        }
        cli.words = words.join(" ");
        Ok(cli)
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    #[command(flatten)]
    Containers(ContainerCommand),
    /// Show what a checkpoint archive holds, as checkpointctl's show does.
    InspectCheckpoint {
        /// `json` for a JSON document, or a Go template.
        #[arg(long, value_parser = format_arg)]
        format: Option<Format>,
        /// An age identity or SSH private key that opens a sealed archive; without one, only
        /// whom it is sealed to is shown.
        #[arg(long = "identity", value_name = "FILE")]
        identities: Vec<PathBuf>,
        archive: PathBuf,
    },
    /// Keys for sealed checkpoints.
    #[command(subcommand)]
    Key(KeyCommand),
    /// The container commands, as `podman container ...` spells them.
    #[command(subcommand)]
    Container(ContainerCommand),
    #[command(subcommand)]
    Image(image::ImageCommand),
    /// List images (`image ls`).
    Images(image::ImageListArgs),
    /// Remove images (`image rm`).
    Rmi {
        #[arg(short, long)]
        force: bool,
        #[arg(required = true)]
        images: Vec<String>,
    },
    /// Push an image, a checkpoint image for example, to a registry.
    Push {
        #[command(flatten)]
        registry: RegistryArgs,
        /// Sign the image with this GPG key (fingerprint or user ID), as podman push --sign-by;
        /// the signature goes where registries.d says ([signatures] registries-d).
        #[arg(long, value_name = "KEY")]
        sign_by: Option<String>,
        image: String,
        /// Where to: HOST[:PORT]/NAME[:TAG]; the image's own name when it names a registry.
        destination: Option<String>,
    },
    /// Pull an image from a registry into ckpt's store.
    Pull {
        #[command(flatten)]
        registry: RegistryArgs,
        /// HOST[:PORT]/NAME[:TAG]
        reference: String,
    },
    /// Load images from an OCI archive or layout (`image load`).
    Load(image::LoadArgs),
    /// Write an image as an OCI archive (`image save`).
    Save(image::SaveArgs),
    #[command(subcommand)]
    Volume(volume::VolumeCommand),
    #[command(subcommand)]
    Network(network::NetworkCommand),
    #[command(subcommand)]
    Policy(policy::PolicyCommand),
    #[command(subcommand)]
    System(SystemCommand),
    #[command(subcommand)]
    Schedule(schedule::ScheduleCommand),
    /// Run the schedules in the foreground, one JSON line per event, until SIGTERM.
    Daemon(schedule::DaemonArgs),
    /// Turn each checkpoint the kubelet writes into a checkpoint image, catalogued and audited;
    /// one JSON line per archive.
    NodeAgent(schedule::NodeAgentArgs),
    Migrate(migrate::MigrateArgs),
    #[command(subcommand)]
    Catalog(schedule::CatalogCommand),
    #[command(subcommand)]
    Audit(schedule::AuditCommand),
    /// Show the host, the OCI runtime, CRIU and the store, in podman's shape.
    Info {
        /// `json` (the default), or a Go template (`{{.Host.OCIRuntime.Name}}`).
        #[arg(short, long, value_parser = format_arg)]
        format: Option<Format>,
    },
    /// Print a shell completion script: `source <(ckpt completion bash)`.
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
        /// Write it to this file instead of stdout.
        #[arg(short, long)]
        file: Option<PathBuf>,
    },
    /// Write a man page for ckpt and each of its commands into DIR (ckpt.1, ckpt-checkpoint.1, ...).
    #[command(name = "generate-man", hide = true)]
    GenerateMan {
        dir: PathBuf,
    },
    #[command(name = "__supervise", hide = true)]
    Supervise(container::SuperviseArgs),
    /// Removes the staging directories named on standard input (see `store::discard`).
    #[command(name = "__discard", hide = true)]
    Discard,
    /// CRIU's action script during an import: holds the restore until ckpt process OWNER says
    /// in STATUS that the page images are in (see `criu::hold`).
    #[command(name = "__await-page-images", hide = true)]
    AwaitPageImages {
        status: PathBuf,
        owner: i32,
        timeout_secs: u64,
    },
    /// The far side of a migration's link probe: reads its input to the end and says how many
    /// bytes came after the first read, and in how long (see `ssh::measure_link`).
    #[command(name = "__link-probe", hide = true)]
    LinkProbe,
}

/// The commands on containers, at the top level and, as podman spells them, under `container`.
#[derive(Debug, Subcommand)]
pub enum ContainerCommand {
    Run(container::RunArgs),
    Create(container::CreateArgs),
    Start(container::StartArgs),
    Stop(container::StopArgs),
    /// Stop containers and start them again.
    Restart(container::StopArgs),
    /// Freeze containers' processes through the runtime.
    Pause(container::ContainersArgs),
    /// Thaw paused containers.
    Unpause(container::ContainersArgs),
    /// Wait for containers to exit and print their exit codes.
    Wait(container::ContainersArgs),
    Rm(container::RmArgs),
    #[command(alias = "ls", alias = "list")]
    Ps(container::PsArgs),
    Logs(container::LogsArgs),
    Exec(container::ExecArgs),
    Inspect(container::InspectArgs),
    Diff(container::DiffArgs),
    Checkpoint(checkpoint::CheckpointArgs),
    Restore(checkpoint::RestoreArgs),
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

pub use gotemplate::Format;

/// clap's parser for `--format`: `json`, or a Go template that must parse.
fn format_arg(text: &str) -> std::result::Result<Format, gotemplate::TemplateError> {
    Format::parse(text)
}

fn template_error(error: gotemplate::TemplateError) -> crate::Error {
    crate::Error::invalid(error.to_string())
}

/// One document per item, as `inspect` prints them: one JSON array, or the template once per
/// item, each followed by a newline.
fn print_documents<T: serde::Serialize>(format: &Format, items: &[T]) -> Result<()> {
    let mut out = String::new();
    match format {
        Format::Json => out = serde_json::to_string_pretty(items).expect("documents serialise") + "\n",
        Format::Template(template) => {
            for item in items {
                let value = serde_json::to_value(item).expect("documents serialise");
                out.push_str(&template.render(&value).map_err(template_error)?);
                out.push('\n');
            }
        }
    }
    print!("{}", crate::util::escape_controls(&out));
    Ok(())
}

/// The rows of a listing: a JSON array of `json_rows`, or the template over `template_rows`
/// (podman's template fields differ from its JSON fields). A `table` template gets a header,
/// with podman's heading where `headings` has one, and aligned columns.
fn print_rows<J: serde::Serialize, R: serde::Serialize>(
    format: &Format,
    json_rows: &[J],
    template_rows: &[R],
    headings: &[(&str, &str)],
) -> Result<()> {
    print_listing(format, json_rows, template_rows, headings, false)
}

/// [`print_rows`] for a listing command, whose `--noheading` drops a table's header.
fn print_listing<J: serde::Serialize, R: serde::Serialize>(
    format: &Format,
    json_rows: &[J],
    template_rows: &[R],
    headings: &[(&str, &str)],
    noheading: bool,
) -> Result<()> {
    let Format::Template(template) = format else {
        println!("{}", serde_json::to_string_pretty(json_rows).expect("rows serialise"));
        return Ok(());
    };
    let mut lines = Vec::new();
    if template.is_table() && !noheading {
        lines.push(template.header(headings));
    }
    for row in template_rows {
        let value = serde_json::to_value(row).expect("rows serialise");
        lines.push(template.render(&value).map_err(template_error)?);
    }
    let text = if template.is_table() {
        gotemplate::align_columns(&lines)
    } else {
        lines.iter().map(|line| format!("{line}\n")).collect()
    };
    print!("{}", crate::util::escape_controls(&text));
    Ok(())
}

/// podman's registry flags for `push` and `pull`.
#[derive(Debug, Clone, clap::Args)]
pub struct RegistryArgs {
    /// Verify the registry's TLS certificate (`--tls-verify=false` to skip). Unset: verify,
    /// unless the host config lists the registry under `[registries] insecure`.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub tls_verify: Option<bool>,
    /// USER[:PASS] for the registry.
    #[arg(long)]
    pub creds: Option<String>,
    /// The auth file (default: the containers auth file, then docker's, as podman reads them).
    #[arg(long)]
    pub authfile: Option<PathBuf>,
}

impl From<RegistryArgs> for crate::ops::images::RegistryFlags {
    fn from(args: RegistryArgs) -> Self {
        crate::ops::images::RegistryFlags {
            tls_verify: args.tls_verify,
            creds: args.creds,
            authfile: args.authfile,
            sign_by: None,
        }
    }
}

/// The flags every listing command (`ps`, `image ls`, `volume ls`) shares.
#[derive(Debug, Clone, clap::Args)]
pub struct ListArgs {
    /// Print IDs (or names) only.
    #[arg(short, long)]
    pub quiet: bool,
    /// `json` for a JSON array, or a Go template applied to each row (`table ...` adds a header).
    #[arg(long, value_parser = format_arg)]
    pub format: Option<Format>,
    /// Print no header line.
    #[arg(long)]
    pub noheading: bool,
}

/// A table's text without its header line when `noheading` says so.
fn without_heading(table: String, noheading: bool) -> String {
    match table.split_once('\n') {
        Some((_, rows)) if noheading => rows.to_string(),
        _ => table,
    }
}

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Write a new age identity (mode 0600) to FILE, as age-keygen does, and print its
    /// recipient (age1…) for `checkpoint --encrypt-to` and the host config's `[exports] recipients`.
    ///
    /// With --signing, an Ed25519 SSH signing key instead (FILE and FILE.pub, by ssh-keygen), for
    /// `checkpoint --sign-with` and `[signatures] sign-with`; it prints the public key line that
    /// other hosts list under `[signatures] trusted`.
    Generate {
        #[arg(short, long, value_name = "FILE")]
        output: PathBuf,
        #[arg(long)]
        signing: bool,
    },
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
        /// `json` for a JSON document, or a Go template applied to each finding.
        #[arg(long, value_parser = format_arg)]
        format: Option<Format>,
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
    let command = cli.command.unnested();
    // Run by CRIU in the middle of a restore: it touches no store.
    if let Command::AwaitPageImages { status, owner, timeout_secs } = &command {
        let timeout = std::time::Duration::from_secs(*timeout_secs);
        return Ok(crate::criu::hold::await_page_images(status, *owner, timeout));
    }
    // It touches no store either: it only times what it reads.
    if let Command::LinkProbe = &command {
        let probe = crate::ssh::answer_link_probe(std::io::stdin().lock())
            .map_err(|e| crate::Error::invalid(format!("cannot read the link probe: {e}")))?;
        println!("{}", serde_json::to_string(&probe).expect("json"));
        return Ok(0);
    }
    if !is_root && command.needs_root() {
        return Err(crate::Error::NeedsRoot { command: cli.words.clone(), root: cli.root.clone() });
    }
    if is_root {
        crate::store::secure_roots(&roots)?;
    }
    let mut ctx = Context::new(roots, cli.runtime);
    ctx.config = crate::config::HostConfig::load(cli.host_config.as_deref())?;
    if matches!(
        command,
        Command::Containers(ContainerCommand::Checkpoint(_) | ContainerCommand::Restore(_))
            | Command::Pull { .. }
            | Command::Daemon(_)
            | Command::NodeAgent(_)
            | Command::Migrate(_)
            | Command::Schedule(schedule::ScheduleCommand::Run { .. })
    ) {
        crate::interrupt::install();
    }
    // What a killed ckpt left and nobody else can finish goes first; the rest is reported by
    // `ckpt system check`.
    if is_root && !matches!(command, Command::Supervise(_) | Command::Discard | Command::System(_)) {
        for finding in crate::ops::system::sweep_leftovers(&ctx, true) {
            eprintln!(
                "ckpt: removed {} ({})",
                crate::util::escape_controls(&finding.object),
                crate::util::escape_controls(&finding.detail)
            );
        }
    }
    dispatch(&ctx, command)
}

fn dispatch_container(ctx: &Context, command: ContainerCommand) -> Result<i32> {
    match command {
        ContainerCommand::Run(args) => container::run(ctx, args),
        ContainerCommand::Create(args) => container::create(ctx, args),
        ContainerCommand::Restart(args) => container::restart(ctx, args),
        ContainerCommand::Pause(args) => container::pause(ctx, args, true),
        ContainerCommand::Unpause(args) => container::pause(ctx, args, false),
        ContainerCommand::Wait(args) => container::wait(ctx, args),
        ContainerCommand::Checkpoint(args) => checkpoint::checkpoint(ctx, args),
        ContainerCommand::Restore(args) => checkpoint::restore(ctx, args),
        ContainerCommand::Start(args) => container::start(ctx, args),
        ContainerCommand::Stop(args) => container::stop(ctx, args),
        ContainerCommand::Rm(args) => container::rm(ctx, args),
        ContainerCommand::Ps(args) => container::ps(ctx, args),
        ContainerCommand::Logs(args) => container::logs(ctx, args),
        ContainerCommand::Exec(args) => container::exec(ctx, args),
        ContainerCommand::Inspect(args) => container::inspect(ctx, args),
        ContainerCommand::Diff(args) => container::diff(ctx, args),
    }
}

impl Command {
    /// `container checkpoint` is `checkpoint`.
    fn unnested(self) -> Command {
        match self {
            Command::Container(inner) => Command::Containers(inner),
            other => other,
        }
    }

    /// Everything but the policy author's tools and reading an archive works on the store and
    /// the runtime, which need root. Checkpoint and restore check it themselves, after their
    /// flags, with podman's words.
    fn needs_root(&self) -> bool {
        !matches!(
            self,
            Command::Policy(_)
                | Command::InspectCheckpoint { .. }
                | Command::Key(_)
                | Command::Containers(ContainerCommand::Checkpoint(_) | ContainerCommand::Restore(_))
                | Command::Completion { .. }
                | Command::GenerateMan { .. }
                // Started by a command that did not need root either; it removes only its own.
                | Command::Discard
        )
    }
}

fn dispatch(ctx: &Context, command: Command) -> Result<i32> {
    match command {
        Command::Containers(command) | Command::Container(command) => dispatch_container(ctx, command),
        Command::Info { format } => {
            let info = crate::ops::info::info(ctx)?;
            match format {
                Some(template @ Format::Template(_)) => print_documents(&template, std::slice::from_ref(&info))?,
                _ => println!("{}", serde_json::to_string_pretty(&info).expect("info serialises")),
            }
            Ok(0)
        }
        Command::Completion { shell, file } => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut <Cli as clap::CommandFactory>::command(), "ckpt", &mut script);
            match file {
                Some(path) => crate::util::write_atomic(&path, &script, 0o644)?,
                None => std::io::Write::write_all(&mut std::io::stdout(), &script)
                    .map_err(crate::Error::io("write", "stdout"))?,
            }
            Ok(0)
        }
        Command::GenerateMan { dir } => {
            for page in man_pages::write_all(&dir)? {
                println!("{}", page.display());
            }
            Ok(0)
        }
        Command::Images(args) => image::run(ctx, image::ImageCommand::Ls(args)),
        Command::Rmi { force, images } => image::run(ctx, image::ImageCommand::Rm { force, images }),
        Command::Load(args) => image::run(ctx, image::ImageCommand::Load(args)),
        Command::Push { registry, sign_by, image, destination } => {
            let flags = crate::ops::images::RegistryFlags { sign_by, ..registry.into() };
            let to = crate::ops::images::push(ctx, &image, destination.as_deref(), &flags)?;
            println!("{to}");
            Ok(0)
        }
        Command::Pull { registry, reference } => {
            println!("{}", crate::ops::images::pull(ctx, &reference, &registry.into())?.id);
            Ok(0)
        }
        Command::Save(args) => image::run(ctx, image::ImageCommand::Save(args)),
        Command::InspectCheckpoint { format, identities, archive } => {
            let header = crate::seal::file_header(&archive).map_err(crate::Error::io("read", &archive))?;
            // Who claims to have signed it: a restore checks the claim, this only shows it.
            let signer = crate::signature::signer(&archive);
            let summary = if !crate::seal::is_sealed(&header) {
                crate::archive::summary::summarize(&archive)?
            } else if identities.is_empty() {
                let sealed_to = crate::seal::sealed_to(&header);
                match format {
                    Some(Format::Json) => {
                        let shown = serde_json::json!({"sealed_to": sealed_to, "signed_by": signer});
                        println!("{}", serde_json::to_string_pretty(&shown).expect("json"));
                    }
                    _ => {
                        let shown = archive.display().to_string();
                        let shown = crate::util::escape_controls(&shown);
                        println!("{shown} is sealed; give --identity FILE to see what it holds.");
                        for recipient in sealed_to {
                            println!("{:<18} {}", "Sealed to", crate::util::escape_controls(&recipient));
                        }
                        if let Some(signer) = &signer {
                            println!("{:<18} {} (not checked here)", "Signed by", crate::util::escape_controls(signer));
                        }
                    }
                }
                return Ok(0);
            } else {
                let plain = crate::seal::open_file(&archive, &identities)?;
                let sealed_to = crate::seal::sealed_to(&header);
                crate::archive::summary::summarize_sealed(&archive, std::io::BufReader::new(plain), sealed_to)?
            };
            match format {
                Some(Format::Json) => {
                    let mut shown = serde_json::to_value(&summary).expect("json");
                    shown["signed_by"] = serde_json::json!(signer);
                    println!("{}", serde_json::to_string_pretty(&shown).expect("json"));
                }
                Some(format) => print_documents(&format, std::slice::from_ref(&summary))?,
                None => {
                    print!("{}", crate::util::escape_controls(&crate::archive::summary::render(&summary)));
                    if let Some(signer) = &signer {
                        println!("{:<18} {} (not checked here)", "Signed by", crate::util::escape_controls(signer));
                    }
                }
            }
            Ok(0)
        }
        Command::Image(cmd) => image::run(ctx, cmd),
        Command::Volume(cmd) => volume::run(ctx, cmd),
        Command::Network(cmd) => network::run(ctx, cmd),
        Command::Schedule(cmd) => schedule::run_schedule(ctx, cmd),
        Command::Daemon(args) => schedule::run_daemon(ctx, args),
        Command::NodeAgent(args) => schedule::run_node_agent(ctx, args),
        Command::Migrate(args) => migrate::run(ctx, args),
        Command::Catalog(cmd) => schedule::run_catalog(ctx, cmd),
        Command::Audit(cmd) => schedule::run_audit(ctx, cmd),
        Command::Policy(cmd) => policy::run(ctx, cmd),
        Command::Key(KeyCommand::Generate { output, signing: false }) => {
            println!("{}", crate::seal::generate_identity(&output)?);
            Ok(0)
        }
        Command::Key(KeyCommand::Generate { output, signing: true }) => {
            println!("{}", crate::signature::generate_signing_key(&output)?);
            Ok(0)
        }
        Command::Supervise(args) => container::supervise(ctx, args),
        Command::Discard => crate::store::discard::remove_handed_over(&ctx.roots, &mut std::io::stdin())
            .map(|()| 0)
            .map_err(crate::Error::from),
        Command::AwaitPageImages { .. } | Command::LinkProbe => unreachable!("run before any store is opened"),
        Command::System(SystemCommand::Check { repair, format }) => {
            let findings = crate::ops::system::check(ctx, repair)?;
            match format {
                Some(format) => print_rows(&format, &findings, &findings, &[])?,
                None => print!("{}", crate::util::escape_controls(&crate::ops::system::render(&findings))),
            }
            Ok(if findings.iter().all(|f| f.repaired) { 0 } else { 1 })
        }
    }
}
