use std::io::Write;
use std::path::PathBuf;

use clap::Args;

use crate::error::{Error, Result};
use crate::ops::{Context, container, lifecycle};
use crate::runtime::RestoreOptions;
use crate::supervisor::{self, Launch};

/// Run a command in a new container.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Run in the background and print the container ID.
    #[arg(short, long)]
    pub detach: bool,
    /// The container's name.
    #[arg(long)]
    pub name: Option<String>,
    /// SRC:DST[:ro|rw]; SRC is a host path or a volume name.
    #[arg(short, long = "volume")]
    pub volume: Vec<String>,
    /// KEY=VALUE to set in the container's environment.
    #[arg(short, long = "env")]
    pub env: Vec<String>,
    /// KEY=VALUE to label the container with.
    #[arg(short, long = "label")]
    pub label: Vec<String>,
    /// Remove the container when it exits.
    #[arg(long)]
    pub rm: bool,
    pub image: String,
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

/// Start one or more stopped containers.
#[derive(Debug, Args)]
pub struct StartArgs {
    #[arg(required = true)]
    pub containers: Vec<String>,
}

/// Stop one or more running containers.
#[derive(Debug, Args)]
pub struct StopArgs {
    /// Seconds to wait after SIGTERM before SIGKILL.
    #[arg(short = 't', long = "time", default_value_t = 10)]
    pub time: u64,
    #[arg(required = true)]
    pub containers: Vec<String>,
}

/// Remove one or more containers.
#[derive(Debug, Args)]
pub struct RmArgs {
    /// Stop running containers first.
    #[arg(short, long)]
    pub force: bool,
    #[arg(required = true)]
    pub containers: Vec<String>,
}

/// List containers.
#[derive(Debug, Args)]
pub struct PsArgs {
    /// Show all containers, not only running ones.
    #[arg(short, long)]
    pub all: bool,
    #[command(flatten)]
    pub list: super::ListArgs,
}

/// Show a container's output.
#[derive(Debug, Args)]
pub struct LogsArgs {
    /// Keep following the log until the container exits.
    #[arg(short, long)]
    pub follow: bool,
    pub container: String,
}

/// Run a command in a running container.
#[derive(Debug, Args)]
pub struct ExecArgs {
    #[arg(short, long = "env")]
    pub env: Vec<String>,
    #[arg(short, long)]
    pub tty: bool,
    #[arg(short, long)]
    pub interactive: bool,
    pub container: String,
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
    pub command: Vec<String>,
}

/// Show containers as a JSON array.
#[derive(Debug, Args)]
pub struct InspectArgs {
    #[arg(required = true)]
    pub containers: Vec<String>,
}

/// List changes to a container's root filesystem.
#[derive(Debug, Args)]
pub struct DiffArgs {
    pub container: String,
}

#[derive(Debug, Args)]
pub struct SuperviseArgs {
    #[arg(long)]
    pub id: String,
    #[arg(long)]
    pub token: String,
    #[arg(long)]
    pub restore: bool,
    #[arg(long)]
    pub image_path: Option<PathBuf>,
    #[arg(long)]
    pub work_path: Option<PathBuf>,
    #[arg(long)]
    pub tcp_established: bool,
    #[arg(long)]
    pub file_locks: bool,
}

pub fn run(ctx: &Context, args: RunArgs) -> Result<i32> {
    let options = lifecycle::RunOptions {
        name: args.name,
        volumes: args.volume,
        env: args.env,
        labels: args.label,
        auto_remove: args.rm,
        image: args.image,
        command: args.command,
    };
    let record = lifecycle::create(ctx, &options)?;
    let record = match lifecycle::start(ctx, &record) {
        Ok(r) => r,
        Err(e) => {
            // A container that never started is not kept, so a retry can use the same name.
            let _ = lifecycle::remove_files(ctx, &record);
            return Err(e);
        }
    };
    if args.detach {
        println!("{}", record.id);
        return Ok(0);
    }
    let mut out = std::io::stdout();
    let mut err = std::io::stderr();
    container::logs(ctx, &record, &mut out, &mut err, true)?;
    lifecycle::wait_for_supervisor(ctx, &record.id, std::time::Duration::from_secs(30));
    Ok(ctx.containers.load(&record.id).ok().and_then(|r| r.state.exit_code).unwrap_or(0))
}

pub fn start(ctx: &Context, args: StartArgs) -> Result<i32> {
    crate::ops::each(&args.containers, |name| {
        let record = ctx.containers.lookup(name)?;
        lifecycle::start(ctx, &record)?;
        println!("{name}");
        Ok(())
    })?;
    Ok(0)
}

pub fn stop(ctx: &Context, args: StopArgs) -> Result<i32> {
    crate::ops::each(&args.containers, |name| {
        let record = ctx.containers.lookup(name)?;
        lifecycle::stop(ctx, &record, args.time)?;
        println!("{name}");
        Ok(())
    })?;
    Ok(0)
}

pub fn rm(ctx: &Context, args: RmArgs) -> Result<i32> {
    crate::ops::each(&args.containers, |name| {
        let record = ctx.containers.lookup(name)?;
        lifecycle::remove(ctx, &record, args.force)?;
        println!("{}", record.id);
        Ok(())
    })?;
    Ok(0)
}

pub fn ps(ctx: &Context, args: PsArgs) -> Result<i32> {
    let mut entries = Vec::new();
    for record in ctx.containers.list()? {
        let entry = container::ps_entry(ctx, &record)?;
        if args.all || entry.state.is_alive() {
            entries.push(entry);
        }
    }
    let mut out = std::io::stdout().lock();
    if args.list.format.is_some() {
        writeln!(out, "{}", serde_json::to_string_pretty(&entries).expect("json")).ok();
    } else if args.list.quiet {
        for e in &entries {
            writeln!(out, "{}", crate::util::short_id(&e.id)).ok();
        }
    } else {
        write!(out, "{}", container::ps_table(&entries)).ok();
    }
    Ok(0)
}

pub fn logs(ctx: &Context, args: LogsArgs) -> Result<i32> {
    let record = ctx.containers.lookup(&args.container)?;
    container::logs(ctx, &record, &mut std::io::stdout(), &mut std::io::stderr(), args.follow)?;
    Ok(0)
}

pub fn exec(ctx: &Context, args: ExecArgs) -> Result<i32> {
    let record = ctx.containers.lookup(&args.container)?;
    container::exec(ctx, &record, &args.command, &args.env, args.tty)
}

pub fn inspect(ctx: &Context, args: InspectArgs) -> Result<i32> {
    let mut values = Vec::new();
    let result = crate::ops::each(&args.containers, |name| {
        values.push(container::inspect(ctx, &ctx.containers.lookup(name)?)?);
        Ok(())
    });
    println!("{}", serde_json::to_string_pretty(&values).expect("json"));
    result.map(|()| 0)
}

pub fn diff(ctx: &Context, args: DiffArgs) -> Result<i32> {
    let record = ctx.containers.lookup(&args.container)?;
    let mut out = std::io::stdout().lock();
    for change in container::diff(ctx, &record)? {
        writeln!(out, "{} {}", change.kind.letter(), crate::util::escape_controls(&change.path)).ok();
    }
    Ok(0)
}

pub fn supervise(ctx: &Context, args: SuperviseArgs) -> Result<i32> {
    let launch = if args.restore {
        let (Some(image_path), Some(work_path)) = (args.image_path, args.work_path) else {
            return Err(Error::invalid("__supervise --restore needs --image-path and --work-path"));
        };
        Launch::Restore(RestoreOptions {
            image_path,
            work_path,
            tcp_established: args.tcp_established,
            file_locks: args.file_locks,
        })
    } else {
        Launch::Run
    };
    let runtime_for = |record: &crate::store::ContainerRecord| {
        ctx.runtime_with_log(&record.runtime, ctx.containers.paths(&record.id).runtime_log())
    };
    supervisor::run(&ctx.containers, &runtime_for, &args.id, &args.token, launch)
}
