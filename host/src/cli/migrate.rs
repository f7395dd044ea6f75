use std::path::PathBuf;

use clap::Args;

use super::checkpoint::PolicyFlags;
use crate::error::Result;
use crate::ops::Context;
use crate::ops::migrate::{self, MigrateRequest};
use crate::policy::bindings::Strategy;
use crate::ssh::SshOptions;

fn parse_strategy(text: &str) -> std::result::Result<Strategy, String> {
    match text {
        "stop-and-copy" => Ok(Strategy::StopAndCopy),
        "pre-copy" => Ok(Strategy::PreCopy),
        "post-copy" => Ok(Strategy::PostCopy),
        _ => Err("the strategies are stop-and-copy, pre-copy and post-copy".into()),
    }
}

/// Move a running container to ckpt on another machine, over ssh.
#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// Leave the source container checkpointed (not running) instead of removing it.
    #[arg(long)]
    pub keep_source: bool,
    /// Ask for a strategy: stop-and-copy, pre-copy or post-copy (the planner has the last word).
    #[arg(long, value_parser = parse_strategy)]
    pub strategy: Option<Strategy>,
    /// Go through this registry reference (HOST[:PORT]/NAME[:TAG]) instead of streaming over ssh.
    #[arg(long, value_name = "REF")]
    pub via: Option<String>,
    /// Compression of the stream: zstd (default), gzip or none.
    #[arg(short, long)]
    pub compress: Option<String>,
    /// Migrate established TCP connections too.
    #[arg(long)]
    pub tcp_established: bool,
    /// Migrate held file locks too.
    #[arg(long)]
    pub file_locks: bool,
    #[command(flatten)]
    pub policies: PolicyFlags,
    /// ssh's identity file (-i), as podman's --identity.
    #[arg(long, value_name = "FILE")]
    pub identity: Option<PathBuf>,
    /// An ssh option (-o), for example StrictHostKeyChecking=accept-new; give it several times.
    #[arg(long = "ssh-option", value_name = "OPTION")]
    pub ssh_options: Vec<String>,
    /// The command that runs ckpt on the destination, as shell words (default: ckpt).
    #[arg(long, value_name = "COMMAND")]
    pub remote_ckpt: Option<String>,
    /// Print the outcome as JSON.
    #[arg(long)]
    pub json: bool,
    /// The container to move.
    pub container: String,
    /// ssh://[USER@]HOST[:PORT][/ROOT]: ckpt on the destination, with its store's root.
    pub destination: String,
}

pub fn run(ctx: &Context, args: MigrateArgs) -> Result<i32> {
    let gates = args.policies.gates()?;
    let req = MigrateRequest {
        container: args.container,
        destination: args.destination,
        via: args.via,
        keep_source: args.keep_source,
        strategy: args.strategy,
        compress: args.compress,
        tcp_established: args.tcp_established,
        file_locks: args.file_locks,
        policy: args.policies.policy,
        policy_config: args.policies.policy_config,
        gates,
        ssh: SshOptions { identity: args.identity, options: args.ssh_options, remote_ckpt: args.remote_ckpt },
    };
    let migrated = migrate::migrate(ctx, &req)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&migrated).expect("json"));
    } else {
        println!(
            "{} runs on {} ({}, {} ms down, source {}): {}",
            migrated.id,
            migrated.destination,
            migrated.strategy,
            migrated.downtime_ms,
            migrated.source,
            crate::util::escape_controls(&migrated.strategy_reason)
        );
    }
    Ok(0)
}
