use std::io::Write;

use clap::Subcommand;

use crate::error::Result;
use crate::ops::{Context, volumes};

/// Manage named volumes.
#[derive(Debug, Subcommand)]
pub enum VolumeCommand {
    /// Create a volume.
    Create {
        #[arg(short, long = "label")]
        label: Vec<String>,
        name: String,
    },
    /// List volumes.
    #[command(alias = "list")]
    Ls(super::ListArgs),
    /// Remove volumes.
    Rm {
        /// Remove the containers that use them too.
        #[arg(short, long)]
        force: bool,
        /// Every volume.
        #[arg(short, long)]
        all: bool,
        #[arg(required_unless_present = "all")]
        names: Vec<String>,
    },
    /// Show volumes as a JSON array.
    Inspect {
        #[arg(required = true)]
        names: Vec<String>,
    },
}

pub fn run(ctx: &Context, command: VolumeCommand) -> Result<i32> {
    match command {
        VolumeCommand::Create { label, name } => println!("{}", volumes::create(ctx, &name, &label)?.name),
        VolumeCommand::Ls(super::ListArgs { quiet, format, noheading }) => {
            let list = ctx.volumes.list()?;
            let mut out = std::io::stdout().lock();
            match format {
                Some(format) => {
                    let values = list.iter().map(|v| volumes::inspect(ctx, &v.name)).collect::<Result<Vec<_>>>()?;
                    super::print_listing(&format, &values, &values, &[("Name", "VOLUME NAME")], noheading)?;
                }
                None => {
                    if !quiet && !noheading {
                        writeln!(out, "DRIVER      VOLUME NAME").ok();
                    }
                    for v in &list {
                        if quiet {
                            writeln!(out, "{}", v.name).ok()
                        } else {
                            writeln!(out, "local       {}", v.name).ok()
                        };
                    }
                }
            }
        }
        VolumeCommand::Rm { force, all, names } => {
            let names = if all { ctx.volumes.list()?.into_iter().map(|v| v.name).collect() } else { names };
            crate::ops::each(&names, |name| {
                volumes::remove(ctx, name, force)?;
                println!("{name}");
                Ok(())
            })?
        }
        VolumeCommand::Inspect { names } => {
            let mut values = Vec::new();
            let result = crate::ops::each(&names, |name| {
                values.push(volumes::inspect(ctx, name)?);
                Ok(())
            });
            println!("{}", serde_json::to_string_pretty(&values).expect("json"));
            result?;
        }
    }
    Ok(0)
}
