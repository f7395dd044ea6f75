use std::io::Write;

use clap::Subcommand;
use serde_json::json;

use crate::error::{Error, Result};
use crate::network::NetworkDef;
use crate::network::definition::CreateRequest;
use crate::ops::{Context, network};

/// Manage the host's networks (bridges, through podman's netavark).
#[derive(Debug, Subcommand)]
pub enum NetworkCommand {
    /// Create a bridge network.
    Create {
        /// CIDR of the network's addresses (the first free /24 of 10.91.0.0/16 if not given).
        #[arg(long)]
        subnet: Option<String>,
        /// The network's gateway (the subnet's first address if not given).
        #[arg(long)]
        gateway: Option<String>,
        /// Keep the network off the host's other networks: no masquerading, no route out.
        #[arg(long)]
        internal: bool,
        /// No name resolution between its containers (aardvark-dns).
        #[arg(long)]
        disable_dns: bool,
        #[arg(long = "label")]
        label: Vec<String>,
        name: String,
    },
    /// List networks.
    #[command(alias = "list")]
    Ls(super::ListArgs),
    /// Show networks as a JSON array, in netavark's (and podman's) format.
    Inspect {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Remove networks.
    #[command(alias = "remove")]
    Rm {
        /// Remove the containers on them first.
        #[arg(short, long)]
        force: bool,
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Remove every network no container uses.
    Prune {
        /// Do not ask for confirmation (ckpt never asks).
        #[arg(short, long)]
        force: bool,
    },
}

/// What a `--format` template sees of a network, by podman's field names.
fn template_row(network: &NetworkDef) -> serde_json::Value {
    json!({
        "Name": network.name,
        "ID": &network.id[..12.min(network.id.len())],
        "Driver": network.driver,
        "NetworkInterface": network.network_interface,
        "Created": network.created,
        "Subnets": network.subnets,
        "Internal": network.internal,
        "DNSEnabled": network.dns_enabled,
        "Labels": network.labels,
    })
}

pub fn run(ctx: &Context, command: NetworkCommand) -> Result<i32> {
    match command {
        NetworkCommand::Create { subnet, gateway, internal, disable_dns, label, name } => {
            let parse = |flag: &str, value: &str| Error::invalid(format!("{flag} {value:?} is not valid IPv4"));
            let request = CreateRequest {
                name,
                subnet: subnet.as_deref().map(|s| s.parse().map_err(|_| parse("--subnet", s))).transpose()?,
                gateway: gateway.as_deref().map(|g| g.parse().map_err(|_| parse("--gateway", g))).transpose()?,
                internal,
                labels: crate::ops::lifecycle::parse_key_values(&label, "--label")?,
                dns: !disable_dns,
            };
            println!("{}", network::create(ctx, &request)?.name);
        }
        NetworkCommand::Ls(super::ListArgs { quiet, format, noheading }) => {
            let list = ctx.networks().definitions.list()?;
            match format {
                Some(format) => {
                    let rows: Vec<_> = list.iter().map(template_row).collect();
                    let headings = [("ID", "NETWORK ID"), ("Name", "NAME"), ("Driver", "DRIVER")];
                    super::print_listing(&format, &list, &rows, &headings, noheading)?;
                }
                None => {
                    let mut out = std::io::stdout().lock();
                    if !quiet && !noheading {
                        writeln!(out, "NETWORK ID    NAME                    DRIVER").ok();
                    }
                    for n in &list {
                        if quiet {
                            writeln!(out, "{}", n.name).ok();
                        } else {
                            writeln!(out, "{:<14}{:<24}{}", &n.id[..12.min(n.id.len())], n.name, n.driver).ok();
                        }
                    }
                }
            }
        }
        NetworkCommand::Inspect { names } => {
            let mut values = Vec::new();
            let result = crate::ops::each(&names, |name| {
                values.push(ctx.networks().definitions.get(name)?);
                Ok(())
            });
            println!("{}", serde_json::to_string_pretty(&values).expect("json"));
            result?;
        }
        NetworkCommand::Rm { force, names } => crate::ops::each(&names, |name| {
            network::remove(ctx, name, force)?;
            println!("{name}");
            Ok(())
        })?,
        NetworkCommand::Prune { force: _ } => {
            for name in network::prune(ctx)? {
                println!("{name}");
            }
        }
    }
    Ok(0)
}
