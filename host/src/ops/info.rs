//! `ckpt info`: the host, runtime, CRIU and store, in podman's `info` shape so that
//! `--format '{{.Host.OCIRuntime.Name}}'` reads as it does with podman.

use serde::Serialize;

use super::Context;
use crate::error::Result;
use crate::store::ContainerStatus;

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Info {
    pub host: Host,
    pub store: Store,
    pub version: Version,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Host {
    pub arch: &'static str,
    pub kernel: String,
    pub cgroups_version: &'static str,
    pub distribution: Distribution,
    #[serde(rename = "OCIRuntime")]
    pub oci_runtime: Runtime,
    #[serde(rename = "CRIU")]
    pub criu: Criu,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Distribution {
    pub distribution: String,
    pub version: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Runtime {
    pub name: String,
    pub path: String,
    pub version: String,
    /// `<runtime> checkpoint --help` works, podman's probe.
    pub checkpoint: bool,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Criu {
    /// podman's number: major*10000 + minor*100 + sublevel; 0 when CRIU is missing.
    pub version: u32,
    /// Soft-dirty tracking, which pre-dump rounds need.
    pub memory_tracking: bool,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Store {
    /// Containers' root filesystems are overlays on the unpacked image.
    pub graph_driver_name: &'static str,
    pub graph_root: String,
    pub run_root: String,
    pub container_store: ContainerCounts,
    pub image_store: Count,
    pub volume_store: Count,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerCounts {
    pub number: usize,
    pub running: usize,
    pub paused: usize,
    pub stopped: usize,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Count {
    pub number: usize,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Version {
    pub version: &'static str,
    pub os_arch: String,
}

pub fn info(ctx: &Context) -> Result<Info> {
    let host = crate::hostinfo::HostInfo::probe(&ctx.roots.root);
    let runtime = ctx.runtime_named(&ctx.runtime)?;
    let criu = ctx.criu().ok();
    let mut counts = ContainerCounts { number: 0, running: 0, paused: 0, stopped: 0 };
    for record in ctx.containers.list()? {
        counts.number += 1;
        match super::lifecycle::status(ctx, &record)?.status {
            ContainerStatus::Running => counts.running += 1,
            ContainerStatus::Paused => counts.paused += 1,
            ContainerStatus::Exited | ContainerStatus::Created => counts.stopped += 1,
        }
    }
    Ok(Info {
        host: Host {
            arch: host.arch,
            kernel: host.kernel.clone(),
            cgroups_version: host.cgroups_version(),
            distribution: Distribution {
                distribution: host.distribution.clone(),
                version: host.distribution_version.clone(),
            },
            oci_runtime: Runtime {
                name: runtime.name().to_string(),
                path: runtime.path().display().to_string(),
                version: runtime.version().unwrap_or_default(),
                checkpoint: runtime.supports_checkpoint(),
            },
            criu: Criu {
                version: criu.as_ref().and_then(|c| c.version().ok()).unwrap_or(0),
                memory_tracking: criu.as_ref().is_some_and(|c| c.memory_tracking().is_ok()),
            },
        },
        store: Store {
            graph_driver_name: "overlay",
            graph_root: ctx.roots.root.display().to_string(),
            run_root: ctx.roots.runroot.display().to_string(),
            container_store: counts,
            image_store: Count { number: ctx.images.list()?.len() },
            volume_store: Count { number: ctx.volumes.list()?.len() },
        },
        version: Version { version: env!("CARGO_PKG_VERSION"), os_arch: format!("linux/{}", host.arch) },
    })
}
