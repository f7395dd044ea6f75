use std::io::Write;

use crate::ops::network::NetworkFlags;
use clap::Args;

use crate::error::{Error, Result};
use crate::ops::{Context, container, lifecycle};
use crate::supervisor::{self, Launch};

/// Run a command in a new container.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Run in the background and print the container ID.
    #[arg(short, long)]
    pub detach: bool,
    #[command(flatten)]
    pub container: ContainerArgs,
}

/// Create a container without starting it; `ckpt start` starts it.
#[derive(Debug, Args)]
pub struct CreateArgs {
    #[command(flatten)]
    pub container: ContainerArgs,
}

/// What `run` and `create` share: the container's definition.
#[derive(Debug, Args)]
pub struct ContainerArgs {
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
    /// The networks to connect it to (NAME[:ip=IP,mac=MAC,alias=NAME][,NAME…], or the flag
    /// again), or `none` for loopback only; the host config's default network (`ckpt`) if not given.
    #[arg(long = "network", visible_alias = "net")]
    pub network: Vec<String>,
    /// Another name the container answers to on its networks' DNS.
    #[arg(long = "network-alias")]
    pub network_alias: Vec<String>,
    /// A fixed IPv4 address on its one network; it keeps it across restarts.
    #[arg(long)]
    pub ip: Option<String>,
    /// A fixed MAC address on its one network.
    #[arg(long = "mac-address")]
    pub mac_address: Option<String>,
    /// [[IP:][HOST]:]CONTAINER[/tcp|udp]: publish a container port on the host.
    #[arg(short = 'p', long = "publish")]
    pub publish: Vec<String>,
    /// The container's host name (the first 12 characters of its ID unless given).
    #[arg(long)]
    pub hostname: Option<String>,
    /// A nameserver for the container's /etc/resolv.conf, in place of the network's and the host's.
    #[arg(long)]
    pub dns: Vec<String>,
    /// HOST:IP to add to the container's /etc/hosts.
    #[arg(long = "add-host")]
    pub add_host: Vec<String>,
    /// The working directory of the command (the image's `WorkingDir`, else `/`, if not given).
    #[arg(short, long)]
    pub workdir: Option<String>,
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

/// Stop one or more running containers (`restart`: and start them again).
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
    /// With --force: seconds to wait after SIGTERM before SIGKILL.
    #[arg(short = 't', long = "time", default_value_t = 0)]
    pub time: u64,
    /// Every container.
    #[arg(short, long)]
    pub all: bool,
    /// A container that does not exist is not an error.
    #[arg(short, long)]
    pub ignore: bool,
    #[arg(required_unless_present = "all")]
    pub containers: Vec<String>,
}

/// Pause or unpause containers, or wait for them to exit.
#[derive(Debug, Args)]
pub struct ContainersArgs {
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
    /// KEY=VALUE: id, name, label, status or ancestor; several must all match.
    #[arg(short, long = "filter")]
    pub filter: Vec<String>,
    /// The latest container only.
    #[arg(short, long)]
    pub latest: bool,
    /// Containers of other tools too, as podman's flag for buildah's; ckpt sees only its own.
    #[arg(long)]
    pub external: bool,
}

/// Show a container's output.
#[derive(Debug, Args)]
pub struct LogsArgs {
    /// Keep following the log until the container exits.
    #[arg(short, long)]
    pub follow: bool,
    /// Only lines written since this time: RFC 3339, a date, Unix seconds, or a duration ago (10m).
    #[arg(long)]
    pub since: Option<String>,
    /// Only lines written before this time, in the same forms as --since.
    #[arg(long)]
    pub until: Option<String>,
    /// Only the last N lines (-1: all).
    #[arg(long, default_value_t = -1, allow_negative_numbers = true)]
    pub tail: i64,
    pub container: String,
}

/// Run a command in a running container.
#[derive(Debug, Args)]
pub struct ExecArgs {
    /// Start the command and return at once, with no stdio.
    #[arg(short, long)]
    pub detach: bool,
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
    /// `json`, or a Go template applied to each container (`{{.State.Status}}`).
    #[arg(short, long, value_parser = super::format_arg)]
    pub format: Option<super::Format>,
    /// ckpt's containers by name or ID; podman:NAME shows podman's own document of its container.
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
    /// How to bring the container up: `supervisor::Launch` as JSON.
    #[arg(long)]
    pub launch: String,
}

impl ContainerArgs {
    fn options(self) -> lifecycle::RunOptions {
        lifecycle::RunOptions {
            name: self.name,
            volumes: self.volume,
            env: self.env,
            labels: self.label,
            auto_remove: self.rm,
            workdir: self.workdir,
            image: self.image,
            command: self.command,
            network: NetworkFlags {
                network: (!self.network.is_empty()).then(|| self.network.join(",")),
                aliases: self.network_alias,
                ip: self.ip,
                mac_address: self.mac_address,
                publish: self.publish,
                hostname: self.hostname,
                dns: self.dns,
                add_host: self.add_host,
            },
        }
    }
}

pub fn create(ctx: &Context, args: CreateArgs) -> Result<i32> {
    println!("{}", lifecycle::create(ctx, &args.container.options())?.id);
    Ok(0)
}

pub fn run(ctx: &Context, args: RunArgs) -> Result<i32> {
    let record = lifecycle::create(ctx, &args.container.options())?;
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
    let follow = container::LogSelection { follow: true, ..Default::default() };
    container::logs(ctx, &record, &mut out, &mut err, &follow)?;
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

pub fn restart(ctx: &Context, args: StopArgs) -> Result<i32> {
    crate::ops::each(&args.containers, |name| {
        lifecycle::restart(ctx, &ctx.containers.lookup(name)?, args.time)?;
        println!("{name}");
        Ok(())
    })?;
    Ok(0)
}

pub fn pause(ctx: &Context, args: ContainersArgs, freeze: bool) -> Result<i32> {
    crate::ops::each(&args.containers, |name| {
        let record = ctx.containers.lookup(name)?;
        if freeze {
            lifecycle::pause(ctx, &record)?
        } else {
            lifecycle::unpause(ctx, &record)?
        }
        println!("{name}");
        Ok(())
    })?;
    Ok(0)
}

/// Prints each container's exit code once it has exited, as podman's wait does.
pub fn wait(ctx: &Context, args: ContainersArgs) -> Result<i32> {
    crate::ops::each(&args.containers, |name| {
        let code = lifecycle::wait(ctx, &ctx.containers.lookup(name)?, std::time::Duration::from_millis(100))?;
        println!("{code}");
        Ok(())
    })?;
    Ok(0)
}

pub fn rm(ctx: &Context, args: RmArgs) -> Result<i32> {
    let names =
        if args.all { ctx.containers.list()?.into_iter().map(|r| r.id).collect() } else { args.containers.clone() };
    crate::ops::each(&names, |name| {
        let record = match ctx.containers.lookup(name) {
            Err(crate::error::BaseError::NoSuchContainer(_)) if args.ignore => return Ok(()),
            other => other?,
        };
        lifecycle::remove(ctx, &record, args.force, args.time)?;
        println!("{}", record.id);
        Ok(())
    })?;
    Ok(0)
}

pub fn ps(ctx: &Context, args: PsArgs) -> Result<i32> {
    let filters = args.filter.iter().map(|f| container::PsFilter::parse(f)).collect::<Result<Vec<_>>>()?;
    let records = if args.latest { ctx.containers.latest()?.into_iter().collect() } else { ctx.containers.list()? };
    let mut entries = Vec::new();
    for record in records {
        let entry = container::ps_entry(ctx, &record)?;
        // A filter names what it wants to see, so it widens past running containers.
        let shown = if filters.is_empty() { args.all || args.latest || entry.state.is_alive() } else { true };
        if shown && filters.iter().all(|f| f.matches(&entry)) {
            entries.push(entry);
        }
    }
    let mut out = std::io::stdout().lock();
    if let Some(format) = &args.list.format {
        let rows: Vec<PsTemplateRow> = entries.iter().map(PsTemplateRow::from).collect();
        super::print_listing(format, &entries, &rows, PS_HEADINGS, args.list.noheading)?;
    } else if args.list.quiet {
        for e in &entries {
            writeln!(out, "{}", crate::util::short_id(&e.id)).ok();
        }
    } else {
        write!(out, "{}", super::without_heading(container::ps_table(&entries), args.list.noheading)).ok();
    }
    Ok(0)
}

pub fn logs(ctx: &Context, args: LogsArgs) -> Result<i32> {
    let record = ctx.containers.lookup(&args.container)?;
    let now = chrono::Utc::now();
    let time =
        |value: &Option<String>, flag| value.as_deref().map(|v| container::parse_log_time(v, flag, now)).transpose();
    let selection = container::LogSelection {
        follow: args.follow,
        since: time(&args.since, "--since")?,
        until: time(&args.until, "--until")?,
        tail: usize::try_from(args.tail).ok(),
    };
    container::logs(ctx, &record, &mut std::io::stdout(), &mut std::io::stderr(), &selection)?;
    Ok(0)
}

pub fn exec(ctx: &Context, args: ExecArgs) -> Result<i32> {
    let record = ctx.containers.lookup(&args.container)?;
    let mode = match (args.detach, args.tty) {
        (true, _) => crate::runtime::ExecMode::Detached,
        (false, true) => crate::runtime::ExecMode::Terminal,
        (false, false) => crate::runtime::ExecMode::Attached,
    };
    container::exec(ctx, &record, &args.command, &args.env, mode)
}

pub fn inspect(ctx: &Context, args: InspectArgs) -> Result<i32> {
    let mut values = Vec::new();
    let result = crate::ops::each(&args.containers, |name| {
        // podman's container: podman's own document, as `podman inspect` prints it.
        let value = match name.strip_prefix(crate::podman::PREFIX) {
            Some(podman_name) => crate::podman::PodmanApi::inspect_document(&ctx.podman(), podman_name)?,
            None => serde_json::to_value(container::inspect(ctx, &ctx.containers.lookup(name)?)?)
                .expect("an inspect document serialises"),
        };
        values.push(value);
        Ok(())
    });
    super::print_documents(args.format.as_ref().unwrap_or(&super::Format::Json), &values)?;
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
    let launch: Launch = serde_json::from_str(&args.launch)
        .map_err(|e| Error::invalid(format!("__supervise --launch {:?} is not a launch: {e}", args.launch)))?;
    let runtime_for = |record: &crate::store::ContainerRecord| {
        ctx.runtime_with_log(&record.runtime, ctx.containers.paths(&record.id).runtime_log())
    };
    Ok(supervisor::run(&ctx.containers, &ctx.networks(), &runtime_for, &args.id, &args.token, launch)?)
}

/// The fields of `ps --format '{{...}}'`, as podman's ps template names them (they differ from
/// its JSON: `.ID` is short, `.Names` and `.Command` are strings).
#[derive(serde::Serialize)]
#[serde(rename_all = "PascalCase")]
struct PsTemplateRow<'a> {
    #[serde(rename = "ID")]
    id: &'a str,
    names: String,
    image: &'a str,
    #[serde(rename = "ImageID")]
    image_id: &'a str,
    command: String,
    created_at: &'a str,
    status: &'a str,
    state: &'a str,
    pid: i32,
    labels: &'a std::collections::BTreeMap<String, String>,
    mounts: &'a [String],
    auto_remove: bool,
    ports: &'static str,
}

const PS_HEADINGS: &[(&str, &str)] = &[("ID", "CONTAINER ID"), ("CreatedAt", "CREATED")];

impl<'a> From<&'a container::PsEntry> for PsTemplateRow<'a> {
    fn from(entry: &'a container::PsEntry) -> Self {
        PsTemplateRow {
            id: crate::util::short_id(&entry.id),
            names: entry.names.join(","),
            image: &entry.image,
            image_id: &entry.image_id,
            command: entry.command.join(" "),
            created_at: &entry.created_at,
            status: &entry.status,
            state: entry.state.as_str(),
            pid: entry.pid,
            labels: &entry.labels,
            mounts: &entry.mounts,
            auto_remove: entry.auto_remove,
            ports: "",
        }
    }
}
