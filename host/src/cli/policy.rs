use std::path::PathBuf;

use clap::Subcommand;

use crate::error::Result;
use crate::ops::{Context, policy};

/// Tools for policy authors: write, build, test, use.
#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// What a policy says about itself, its imports, its digest, and whether it runs here.
    Inspect { file: String },
    /// The facts a policy would receive for a container, as JSON (a ready fixture).
    Facts { container: String },
    /// The JSON Schema of facts and decisions as JSON (`wit/policy.schema.json`).
    Schema,
    /// One decision: `plan` (default), `round`, `gate` or `retain`, with its reasons, logs and
    /// fuel.
    Eval {
        file: String,
        #[arg(long)]
        facts: PathBuf,
        /// Settings: JSON, or @FILE (as `checkpoint --policy-config`).
        #[arg(long = "policy-config")]
        config: Option<String>,
        #[arg(long, value_enum, default_value_t = crate::policy::Kind::Plan)]
        decision: crate::policy::Kind,
        /// The rounds so far (JSON list), for a `round` decision.
        #[arg(long)]
        rounds: Option<PathBuf>,
    },
    /// Table-driven cases: facts plus the expected decision, for a policy in any language.
    Test { file: String, cases: PathBuf },
    /// Publish a policy component to a registry as a wasm OCI artifact; prints
    /// HOST/NAME@sha256:DIGEST, which `--policy` and `--gate` take.
    Push {
        #[command(flatten)]
        registry: super::RegistryArgs,
        file: String,
        /// HOST[:PORT]/NAME[:TAG]
        destination: String,
    },
    /// Load cost and per-decision latency as percentiles: warm (on an instance made ahead, as between a checkpoint's decisions, with the core kept awake between them), warm after a sleep (`woken_*`), and with a fresh instance made inside each decision.
    Bench {
        file: String,
        #[arg(long)]
        facts: PathBuf,
        /// Settings: JSON, or @FILE (as `checkpoint --policy-config`).
        #[arg(long = "policy-config")]
        config: Option<String>,
        /// `plan`, `round`, `gate` or `retain`; what the component decides by default.
        #[arg(long, value_enum)]
        decision: Option<crate::policy::Kind>,
        #[arg(long, default_value_t = 1000)]
        iterations: usize,
    },
}

pub fn run(ctx: &Context, command: PolicyCommand) -> Result<i32> {
    match command {
        PolicyCommand::Push { registry, file, destination } => {
            println!("{}", policy::push(ctx, &file, &destination, &registry.into())?);
            Ok(0)
        }
        PolicyCommand::Inspect { file } => {
            let value = policy::inspect(ctx, &file)?;
            println!("{}", serde_json::to_string_pretty(&value).expect("json"));
            Ok(if value.runs_here { 0 } else { 1 })
        }
        PolicyCommand::Schema => {
            println!("{}", serde_json::to_string_pretty(&crate::policy::json::schema()).expect("json"));
            Ok(0)
        }
        PolicyCommand::Facts { container } => {
            println!("{}", serde_json::to_string_pretty(&policy::facts(ctx, &container)?).expect("json"));
            Ok(0)
        }
        PolicyCommand::Eval { file, facts, config, decision, rounds } => {
            let value = policy::eval(ctx, &file, &facts, config.as_deref(), decision, rounds.as_deref())?;
            println!("{}", serde_json::to_string_pretty(&value).expect("json"));
            Ok(0)
        }
        PolicyCommand::Bench { file, facts, config, decision, iterations } => {
            let value = policy::bench(ctx, &file, &facts, config.as_deref(), decision, iterations)?;
            println!("{}", serde_json::to_string(&value).expect("json"));
            Ok(0)
        }
        PolicyCommand::Test { file, cases } => {
            let (lines, all_passed) = policy::test(ctx, &file, &cases)?;
            lines.iter().for_each(|l| println!("{}", crate::util::escape_controls(l)));
            Ok(if all_passed { 0 } else { 1 })
        }
    }
}
