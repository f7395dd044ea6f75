//! One module per operation. Orchestration only: the work is done by `store`, `runtime`,
//! `criu`, `archive`, `image`, `rootfs` and `supervisor`.

pub mod catalog;
pub mod checkpoint;
pub mod container;
pub mod daemon;
pub mod facts;
pub mod images;
pub mod info;
pub mod lifecycle;
pub mod migrate;
pub mod policy;
pub mod restore;
pub mod schedule;
pub mod system;
pub mod volumes;

use std::path::PathBuf;
use std::sync::Arc;

use crate::config::HostConfig;
use crate::criu::{Criu, CriuBinary};
use crate::error::Result;
use crate::image::ImageStore;
use crate::runtime::{CliRuntime, OciRuntime};
use crate::store::{ContainerStore, Roots, VolumeStore};

/// Everything an operation needs: the roots and the stores in them, and the runtime choice.
pub struct Context {
    pub roots: Roots,
    /// `--runtime` as given: a name or a path.
    pub runtime: String,
    pub containers: ContainerStore,
    pub volumes: VolumeStore,
    pub images: ImageStore,
    /// The admin's rules (`/etc/ckpt/ckpt.toml`).
    pub config: HostConfig,
    /// Unit tests put a recording runtime here; otherwise the named binary is used.
    pub runtime_override: Option<Arc<dyn OciRuntime>>,
    /// Unit tests put a CRIU stand-in here; otherwise `criu` from $PATH is used.
    pub criu_override: Option<Arc<dyn Criu>>,
}

impl Context {
    pub fn new(roots: Roots, runtime: String) -> Context {
        Context {
            containers: ContainerStore::new(&roots),
            volumes: VolumeStore::new(&roots),
            images: ImageStore::new(&roots),
            config: HostConfig::default(),
            roots,
            runtime,
            runtime_override: None,
            criu_override: None,
        }
    }

    /// The runtime named `name_or_path` (a container's own runtime, usually).
    pub fn runtime_named(&self, name_or_path: &str) -> Result<Arc<dyn OciRuntime>> {
        if let Some(r) = &self.runtime_override {
            return Ok(Arc::clone(r));
        }
        Ok(Arc::new(CliRuntime::resolve(name_or_path, &self.roots.runtime_states_dir())?))
    }

    pub fn runtime_with_log(&self, name_or_path: &str, log: PathBuf) -> Result<Arc<dyn OciRuntime>> {
        if let Some(r) = &self.runtime_override {
            return Ok(Arc::clone(r));
        }
        Ok(Arc::new(CliRuntime::resolve(name_or_path, &self.roots.runtime_states_dir())?.with_log_file(log)))
    }

    /// Where compiled policies are cached: `<root>/policy-cache`, or `$CKPT_POLICY_CACHE`.
    pub fn policy_cache(&self) -> PathBuf {
        std::env::var_os("CKPT_POLICY_CACHE").map(PathBuf::from).unwrap_or_else(|| self.roots.root.join("policy-cache"))
    }

    pub fn catalog(&self) -> crate::store::catalog::Catalog {
        crate::store::catalog::Catalog::new(self.roots.catalog_dir())
    }

    pub fn audit_log(&self) -> crate::store::audit::AuditLog {
        crate::store::audit::AuditLog::new(self.roots.audit_log(), self.roots.locks_dir())
    }

    /// Appends to the audit log. The operation it records has happened: a log that cannot be
    /// written is reported, and the operation stands.
    pub fn audit(&self, event: &str, fields: serde_json::Value) {
        if let Err(e) = self.audit_log().append(event, fields) {
            eprintln!(
                "Error: cannot write the audit log {}: {}",
                self.roots.audit_log().display(),
                crate::util::escape_controls(&e.to_string())
            );
        }
    }

    pub fn criu(&self) -> Result<Arc<dyn Criu>> {
        if let Some(c) = &self.criu_override {
            return Ok(Arc::clone(c));
        }
        Ok(Arc::new(CriuBinary::find()?.with_probe_cache(self.roots.runroot.join("criu-memory-tracking"))))
    }
}

/// Runs `each` for every item, printing all errors but the last, which is returned, as podman
/// does for several containers.
pub fn each<T>(items: &[T], mut each: impl FnMut(&T) -> Result<()>) -> Result<()> {
    let mut last = None;
    for item in items {
        if let Err(e) = each(item)
            && let Some(previous) = last.replace(e)
        {
            eprintln!("Error: {}", crate::util::escape_controls(&previous.to_string()));
        }
    }
    match last {
        Some(e) => Err(e),
        None => Ok(()),
    }
}
