//! The sandbox: one wasmtime engine, components compiled once and cached by digest, and a fresh
//! store with fuel, epoch deadline, memory and stack limits for every decision.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use serde::Serialize;
use wasmtime::component::{HasSelf, Linker};
use wasmtime::{Engine, Store};

use super::PolicyError;
use super::bindings::{self, Planner, v1};
use super::cache::{ComponentCache, component_digest};
use super::host::{Determinism, LogLine, NoWait, NoWaitClocks, State, wasi_for};
use super::limits;
use super::pool::{Premade, Spare, Wait, drop_later, helper, make_spare, premake, take_spare};
use super::ticker::{Ticking, shared_engine};
use super::world::{Exports, Instance, Role, World, exports_of};

/// A compiled, validated policy, ready for decisions.
pub struct LoadedPolicy {
    /// The file it came from, or `builtin:default`.
    pub source: String,
    /// `blake3:<hex>` of the component bytes.
    pub digest: String,
    pub info: bindings::PolicyInfo,
    pub settings: String,
    pub settings_digest: String,
    pub imports: Vec<String>,
    pub cached: bool,
    pub(super) exports: Exports,
    pub(super) spare: Arc<Spare>,
}

impl LoadedPolicy {
    pub fn world(&self) -> World {
        self.exports.world()
    }

    /// Waits until the next decision's instance is made and the last decision's store is
    /// dropped, as they are when the host has done other work since the last decision; what
    /// `policy bench` times is then the decision alone.
    pub fn wait_for_spare(&self, wait: Wait) {
        if let Some(helper) = helper() {
            helper.finish_queued(wait);
        }
        drop(self.spare.settled());
    }

    /// Whether decisions use instances made ahead of them (the default) or make their own.
    pub fn set_premade(&self, premade: bool) {
        self.spare.disabled.store(!premade, Ordering::Relaxed);
    }
}

/// What one decision produced besides its answer.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Trace {
    pub logs: Vec<LogLine>,
    pub dropped_logs: usize,
    pub fuel_used: u64,
    pub duration_us: u64,
    pub peak_memory_bytes: usize,
}

pub struct PolicyEngine {
    engine: Engine,
    linker: Linker<State>,
    cache: ComponentCache,
}

impl PolicyEngine {
    pub fn new(cache_dir: &Path) -> Result<PolicyEngine, PolicyError> {
        let engine_err = |cause| PolicyError::Engine { cause };
        let engine = shared_engine()?;
        let mut linker = Linker::new(&engine);
        // WASI is linked only as empty, deterministic stand-ins (see `State`): Python and
        // JavaScript runtimes import it even when a policy never touches a file.
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(engine_err)?;
        // Timers that are due at once replace the real ones: a sleep or a poll on a timer would
        // otherwise block inside the host, where neither fuel nor the epoch deadline can stop it.
        linker.allow_shadowing(true);
        wasmtime_wasi::p2::bindings::clocks::monotonic_clock::add_to_linker::<State, NoWaitClocks>(
            &mut linker,
            |state| NoWait(wasmtime_wasi::clocks::WasiClocksView::clocks(state)),
        )
        .map_err(engine_err)?;
        linker.allow_shadowing(false);
        v1::Policy::add_to_linker::<State, HasSelf<State>>(&mut linker, |state| state).map_err(engine_err)?;
        super::bindings::v2::planner::Planner::add_to_linker::<State, HasSelf<State>>(&mut linker, |state| state)
            .map_err(engine_err)?;
        // The gate and retainer worlds import the same `log` and `types` as the planner's.
        Planner::add_to_linker::<State, HasSelf<State>>(&mut linker, |state| state).map_err(engine_err)?;
        Ok(PolicyEngine { engine, linker, cache: ComponentCache::new(cache_dir) })
    }

    /// Compiles (or takes from the cache) a component, checks its imports and asks it to
    /// describe itself. Its settings are not validated: see [`PolicyEngine::load`].
    pub fn describe(&self, source: &str, bytes: &[u8]) -> Result<LoadedPolicy, PolicyError> {
        let digest = component_digest(bytes);
        let load_err = |detail: String| PolicyError::Load { policy: source.to_string(), detail };
        if !bytes.starts_with(b"\0asm") {
            return Err(load_err("not a WebAssembly component (precompiled artifacts are never accepted)".into()));
        }
        let (component, cached) = self
            .cache
            .component(&self.engine, bytes, &digest)
            .map_err(|cause| PolicyError::Compile { policy: source.to_string(), hint: "", cause })?;
        let imports: Vec<String> =
            component.component_type().imports(&self.engine).map(|(name, _)| name.to_string()).collect();
        let instance_pre = self.linker.instantiate_pre(&component).map_err(|cause| PolicyError::Compile {
            policy: source.to_string(),
            hint: "; a policy may import only ckpt:policy/log and WASI",
            cause,
        })?;
        let exports = exports_of(instance_pre).map_err(load_err)?;
        let mut policy = LoadedPolicy {
            source: source.to_string(),
            digest,
            info: bindings::PolicyInfo {
                name: String::new(),
                version: String::new(),
                decisions: vec![],
                settings_schema: String::new(),
            },
            settings: String::new(),
            settings_digest: format!("blake3:{}", blake3::hash(b"").to_hex()),
            imports,
            cached,
            exports,
            spare: Arc::default(),
        };
        let (info, _) = self.call(&policy, Determinism::default(), "describe", |p, s| p.describe(s));
        policy.info = info?;
        check_text(source, "name", &policy.info.name)?;
        check_text(source, "version", &policy.info.version)?;
        if policy.info.settings_schema.len() > limits::MAX_SCHEMA_BYTES || policy.info.decisions.len() > 16 {
            return Err(PolicyError::BadAnswer {
                policy: source.to_string(),
                detail: format!(
                    "describe returned a settings schema over {} bytes or more than 16 decisions",
                    limits::MAX_SCHEMA_BYTES
                ),
            });
        }
        Ok(policy)
    }

    /// [`PolicyEngine::describe`], then validates `settings`: bad settings are refused here,
    /// when the policy is loaded, never in the middle of a checkpoint.
    pub fn load(&self, source: &str, bytes: &[u8], settings: &str) -> Result<LoadedPolicy, PolicyError> {
        self.validate(self.describe(source, bytes)?, settings)
    }

    fn validate(&self, mut policy: LoadedPolicy, settings: &str) -> Result<LoadedPolicy, PolicyError> {
        let (valid, _) =
            self.call(&policy, Determinism::default(), "validate-settings", |p, s| p.validate_settings(s, settings));
        valid?.map_err(|detail| PolicyError::Settings {
            policy: policy.info.name.clone(),
            detail: limits::cut(detail),
        })?;
        policy.settings = settings.to_string();
        policy.settings_digest = format!("blake3:{}", blake3::hash(settings.as_bytes()).to_hex());
        Ok(policy)
    }

    /// [`PolicyEngine::load`] for a role: a component of a world that does not serve it is
    /// refused with the names of the worlds that do.
    pub fn load_as(&self, role: Role, source: &str, bytes: &[u8], settings: &str) -> Result<LoadedPolicy, PolicyError> {
        let policy = self.describe(source, bytes)?;
        if !policy.world().serves(role) {
            return Err(PolicyError::Load {
                policy: source.to_string(),
                detail: format!(
                    "it is a {} component, but {} takes a {} component",
                    policy.world(),
                    role.flag(),
                    role.worlds()
                ),
            });
        }
        self.validate(policy, settings)
    }

    /// Runs one export in a fresh store: the spare made for it, or one made now. The store is
    /// dropped afterwards, whatever happened, and the next one is made in the background.
    pub fn call<T>(
        &self,
        policy: &LoadedPolicy,
        determinism: Determinism,
        decision: &'static str,
        body: impl FnOnce(&Instance, &mut Store<State>) -> wasmtime::Result<T>,
    ) -> (Result<T, PolicyError>, Trace) {
        let started = Instant::now();
        let (wasi, stdout, stderr) = wasi_for(determinism);
        let premade = take_spare(&policy.spare).unwrap_or_else(|| premake(&self.engine, &policy.exports, None));
        let result = premade.map(|Premade { mut store, instance, .. }| {
            let state = store.data_mut();
            (state.wasi, state.stdout, state.stderr) = (wasi, stdout.clone(), stderr.clone());
            // The budget is the decision's own, whatever instantiating took.
            let _ = store.set_fuel(limits::FUEL);
            store.set_epoch_deadline(limits::deadline_ticks());
            let answer = {
                let _ticking = Ticking::start();
                body(&instance, &mut store)
            };
            (answer, store)
        });
        make_spare(&self.engine, policy);
        let (result, store) = match result {
            Ok((answer, store)) => (answer, Some(store)),
            Err(e) => (Err(e), None),
        };
        let result = result.map_err(|e| {
            let said = String::from_utf8_lossy(&stderr.contents()).into_owned();
            classify(&policy.info.name, &policy.source, decision, e, &said)
        });
        let mut trace = Trace::default();
        if let Some(mut store) = store {
            trace.fuel_used = limits::FUEL - store.get_fuel().unwrap_or(0);
            trace.logs = std::mem::take(&mut store.data_mut().logs);
            trace.dropped_logs = store.data().dropped_logs;
            trace.peak_memory_bytes = store.data().limiter.peak;
            drop_later(store);
        }
        trace.duration_us = started.elapsed().as_micros() as u64;
        for (pipe, level) in [(&stdout, "stdout"), (&stderr, "stderr")] {
            let text = String::from_utf8_lossy(&pipe.contents()).into_owned();
            for line in text.lines().filter(|l| !l.trim().is_empty()).take(limits::MAX_LOG_LINES) {
                trace.logs.push(LogLine { level: level.to_string(), message: limits::cut(line.to_string()) });
            }
        }
        (result, trace)
    }
}

/// Names what the policy did: ran out of fuel or time, grew too much memory, overflowed its
/// stack, trapped, or failed in the host; with the last words it wrote to stderr (a panic
/// message, say).
pub(super) fn classify(name: &str, source: &str, decision: &str, error: wasmtime::Error, stderr: &str) -> PolicyError {
    let policy = if name.is_empty() { source.to_string() } else { format!("{name:?} ({source})") };
    let text = format!("{error:#}");
    let mut what = match error.downcast_ref::<wasmtime::Trap>() {
        Some(wasmtime::Trap::OutOfFuel) => format!("ran out of fuel ({} units)", limits::FUEL),
        Some(wasmtime::Trap::Interrupt) => format!("ran past its deadline of {:?}", limits::DEADLINE),
        Some(wasmtime::Trap::StackOverflow) => "overflowed its stack (recursion too deep)".to_string(),
        Some(trap) => format!("trapped ({trap})"),
        None => match error.downcast_ref::<limits::OverLimit>() {
            Some(limits::OverLimit::Memory { .. }) => {
                format!("exceeded its memory limit of {} MiB", limits::MEMORY_BYTES >> 20)
            }
            Some(over @ limits::OverLimit::Table { .. }) => format!("failed: {over}"),
            None => format!("failed: {}", text.lines().next().unwrap_or_default()),
        },
    };
    let last_words: Vec<&str> =
        stderr.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with("note:")).collect();
    if !last_words.is_empty() {
        what.push_str(&format!(", saying: {}", last_words[last_words.len().saturating_sub(2)..].join(" ")));
    }
    PolicyError::Failed { policy, decision: decision.to_string(), detail: limits::cut(what), cause: Some(error) }
}

pub fn check_text(policy: &str, what: &str, text: &str) -> Result<(), PolicyError> {
    if text.len() > limits::MAX_TEXT_BYTES || text.contains('\0') {
        return Err(PolicyError::BadAnswer {
            policy: policy.to_string(),
            detail: format!("{what} is longer than {} bytes or holds a NUL byte", limits::MAX_TEXT_BYTES),
        });
    }
    Ok(())
}
