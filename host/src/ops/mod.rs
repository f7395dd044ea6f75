//! One module per operation. Orchestration only: the work is done by `store`, `runtime`,
//! `criu`, `archive`, `image`, `rootfs` and `supervisor`.

pub mod audit;
pub mod catalog;
pub mod checkpoint;
pub mod container;
pub mod daemon;
pub mod facts;
pub mod images;
pub mod info;
pub mod lifecycle;
pub mod migrate;
pub mod network;
pub mod node_agent;
pub mod policy;
pub mod restore;
pub mod schedule;
pub mod system;
pub mod volumes;

use std::path::PathBuf;
use std::sync::Arc;

use crate::config::{DumpThrough, HostConfig};
use crate::criu::{Criu, CriuBinary};
use crate::error::{Error, Result};
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
    /// Unit tests put a recording netavark here; otherwise podman's netavark is used.
    pub netavark_override: Option<Arc<dyn crate::network::Netavark>>,
}

impl Context {
    pub fn new(roots: Roots, runtime: String) -> Context {
        crate::util::keep_probe_answers_in(roots.runroot.join("probes"));
        Context {
            containers: ContainerStore::new(&roots),
            volumes: VolumeStore::new(&roots),
            images: ImageStore::new(&roots),
            config: HostConfig::default(),
            roots,
            runtime,
            runtime_override: None,
            criu_override: None,
            netavark_override: None,
        }
    }

    /// The runtime named `name_or_path` (a container's own runtime, usually).
    pub fn runtime_named(&self, name_or_path: &str) -> Result<Arc<dyn OciRuntime>> {
        if let Some(r) = &self.runtime_override {
            return Ok(Arc::clone(r));
        }
        Ok(Arc::new(self.cli_runtime(name_or_path)?))
    }

    pub fn runtime_with_log(&self, name_or_path: &str, log: PathBuf) -> Result<Arc<dyn OciRuntime>> {
        if let Some(r) = &self.runtime_override {
            return Ok(Arc::clone(r));
        }
        Ok(Arc::new(self.cli_runtime(name_or_path)?.with_log_file(log)))
    }

    /// The runtime binary `name_or_path`, with ckpt's state root and the host config's say.
    fn cli_runtime(&self, name_or_path: &str) -> Result<CliRuntime> {
        Ok(CliRuntime::resolve(name_or_path, &self.roots.runtime_states_dir())?
            .dumping_through_criu(self.config.checkpoint.dump_through == DumpThrough::Criu))
    }

    /// Where compiled policies are cached: `<root>/policy-cache`, or `$CKPT_POLICY_CACHE`.
    pub fn policy_cache(&self) -> PathBuf {
        std::env::var_os("CKPT_POLICY_CACHE").map(PathBuf::from).unwrap_or_else(|| self.roots.root.join("policy-cache"))
    }

    pub fn catalog(&self) -> crate::store::catalog::Catalog {
        crate::store::catalog::Catalog::new(self.roots.catalog_dir())
    }

    pub fn audit_log(&self) -> crate::store::audit::AuditLog {
        crate::store::audit::AuditLog::new(
            self.roots.audit_log(),
            self.roots.store_locks_dir(),
            crate::store::audit::Anchor::from_env(),
        )
    }

    /// Appends to the audit log. The operation it records has happened: a log that cannot be
    /// written is reported, and the operation stands.
    pub fn audit(&self, event: audit::AuditEvent) {
        let (event, fields) = event.into_parts();
        if let Err(e) = self.audit_log().append(&event, fields) {
            tracing::error!(
                "cannot write the audit log {}: {}",
                self.roots.audit_log().display(),
                crate::util::escape_controls(&e.to_string())
            );
        }
    }

    /// podman's API, on the socket the host config names.
    pub fn podman(&self) -> crate::podman::PodmanService {
        crate::podman::PodmanService::new(&self.config.engines.podman_socket)
    }

    pub fn criu(&self) -> Result<Arc<dyn Criu>> {
        if let Some(c) = &self.criu_override {
            return Ok(Arc::clone(c));
        }
        Ok(Arc::new(CriuBinary::find()?))
    }
}

/// Which engine runs a container: ckpt itself, or podman through its own API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Engine {
    #[default]
    Ckpt,
    Podman,
}

impl Engine {
    pub fn parse(value: &str) -> Result<Engine> {
        match value {
            "ckpt" => Ok(Engine::Ckpt),
            "podman" => Ok(Engine::Podman),
            other => Err(Error::invalid(format!("--engine {other:?} is not an engine ckpt knows: use ckpt or podman"))),
        }
    }
}

/// Runs `each` for every item, printing all errors but the last, which is returned, as podman
/// does for several containers.
pub fn each<T>(items: &[T], mut each: impl FnMut(&T) -> Result<()>) -> Result<()> {
    let mut last = None;
    for item in items {
        if let Err(e) = each(item) {
            keep_last(&mut last, e);
        }
    }
    last.map_or(Ok(()), Err)
}

/// Keeps `e` as the error to return, printing the one it replaces.
fn keep_last(last: &mut Option<crate::Error>, e: crate::Error) {
    if let Some(previous) = last.replace(e) {
        eprintln!("Error: {}", crate::util::escape_controls(&previous.to_string()));
    }
}

/// [`each`], on up to `workers` threads: each thread makes its own state with `init` (policies,
/// say) and takes the next item. Results keep the items' order; as with [`each`], every error
/// but the last is printed, and the last is returned. After Ctrl-C or SIGTERM, the items not yet
/// begun are left alone.
pub fn each_parallel<T: Sync, S, R: Send>(
    items: &[T],
    workers: usize,
    init: impl Fn() -> Result<S> + Sync,
    each: impl Fn(&mut S, &T) -> Result<R> + Sync,
) -> (Vec<R>, Result<()>) {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let outcomes = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..workers.clamp(1, items.len().max(1)) {
            scope.spawn(|| {
                let mut state = init();
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let Some(item) = items.get(i) else { return };
                    let outcome = crate::interrupt::check().map_err(crate::Error::from).and_then(|()| {
                        if state.is_err() {
                            // The item takes the failure itself, and the next one a fresh try.
                            return Err(std::mem::replace(&mut state, init()).err().expect("failed"));
                        }
                        each(state.as_mut().expect("made"), item)
                    });
                    outcomes.lock().expect("outcomes").push((i, outcome));
                }
            });
        }
    });
    let mut outcomes = outcomes.into_inner().expect("outcomes");
    outcomes.sort_by_key(|(i, _)| *i);
    let mut done = Vec::new();
    let mut last: Option<crate::Error> = None;
    for (_, outcome) in outcomes {
        match outcome {
            Ok(result) => done.push(result),
            Err(e) => keep_last(&mut last, e),
        }
    }
    (done, last.map_or(Ok(()), Err))
}

/// `--parallel` unless given: one at a time per core.
pub fn default_parallel() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A worker whose state could not be made gives each item it takes that failure, whole and
    /// typed, and tries again for the next item.
    #[test]
    fn a_worker_that_cannot_start_fails_its_item_with_the_real_error_and_tries_again() {
        let tries = std::sync::atomic::AtomicUsize::new(0);
        let init = || match tries.fetch_add(1, std::sync::atomic::Ordering::SeqCst) {
            0 => Err(crate::Error::NameInUse("first".into())),
            _ => Ok(10),
        };
        let (done, outcome) = each_parallel(&[1, 2, 3], 1, init, |base, item| Ok(*base + item));
        assert_eq!(done, vec![12, 13]);
        assert!(matches!(outcome, Err(crate::Error::NameInUse(name)) if name == "first"));
    }
}
