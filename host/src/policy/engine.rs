//! The sandbox: one wasmtime engine, components compiled once and cached by digest, and a fresh
//! store with fuel, epoch deadline, memory and stack limits for every decision.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde::Serialize;
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{Config, Engine, Store};
use wasmtime_wasi::p2::DynPollable;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{HostMonotonicClock, HostWallClock, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::PolicyError;
use super::bindings::{
    self, Gate, GatePre, Level, MigrationPlanner, MigrationPlannerPre, Planner, PlannerPre, Retainer, RetainerPre, v1,
};
use super::limits::{self, TotalMemoryLimiter};

/// One line a policy logged.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct LogLine {
    pub level: String,
    pub message: String,
}

/// Everything a decision's store holds. Nothing in it reaches the host: no files, no
/// environment, no sockets, a frozen clock and a seeded random source.
pub struct State {
    wasi: WasiCtx,
    table: ResourceTable,
    limiter: TotalMemoryLimiter,
    logs: Vec<LogLine>,
    log_bytes: usize,
    dropped_logs: usize,
    stdout: MemoryOutputPipe,
    stderr: MemoryOutputPipe,
}

impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl State {
    fn new(wasi: WasiCtx, stdout: MemoryOutputPipe, stderr: MemoryOutputPipe) -> State {
        State {
            wasi,
            table: ResourceTable::new(),
            limiter: TotalMemoryLimiter::default(),
            logs: Vec::new(),
            log_bytes: 0,
            dropped_logs: 0,
            stdout,
            stderr,
        }
    }
}

impl bindings::types_interface::Host for State {}
impl v1::ckpt::policy::types::Host for State {}

impl v1::ckpt::policy::log::Host for State {
    fn log(&mut self, level: v1::ckpt::policy::log::Level, message: String) {
        use v1::ckpt::policy::log::Level as V1;
        let level = match level {
            V1::Debug => Level::Debug,
            V1::Info => Level::Info,
            V1::Warn => Level::Warn,
            V1::Error => Level::Error,
        };
        bindings::log_interface::Host::log(self, level, message)
    }
}

impl bindings::log_interface::Host for State {
    fn log(&mut self, level: Level, message: String) {
        // Bounded by cutting, never by trapping: a chatty policy still gets its decision made.
        if self.logs.len() >= limits::MAX_LOG_LINES || self.log_bytes >= limits::MAX_LOG_BYTES {
            self.dropped_logs += 1;
            return;
        }
        let mut message = message;
        if message.len() > limits::MAX_TEXT_BYTES {
            let mut cut = limits::MAX_TEXT_BYTES;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            message.push('…');
        }
        self.log_bytes += message.len();
        let level = match level {
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
        };
        self.logs.push(LogLine { level: level.to_string(), message });
    }
}

struct FrozenWallClock(Duration);

impl HostWallClock for FrozenWallClock {
    fn resolution(&self) -> Duration {
        Duration::from_millis(1)
    }
    fn now(&self) -> Duration {
        self.0
    }
}

struct FrozenMonotonicClock;

impl HostMonotonicClock for FrozenMonotonicClock {
    fn resolution(&self) -> u64 {
        1_000_000
    }
    fn now(&self) -> u64 {
        0
    }
}

/// `wasi:clocks/monotonic-clock` with the frozen clock's time and timers that are always due.
struct NoWaitClocks;

impl wasmtime::component::HasData for NoWaitClocks {
    type Data<'a> = NoWait<'a>;
}

struct NoWait<'a>(wasmtime_wasi::clocks::WasiClocksCtxView<'a>);

impl wasmtime_wasi::p2::bindings::clocks::monotonic_clock::Host for NoWait<'_> {
    fn now(&mut self) -> wasmtime::Result<u64> {
        wasmtime_wasi::p2::bindings::clocks::monotonic_clock::Host::now(&mut self.0)
    }

    fn resolution(&mut self) -> wasmtime::Result<u64> {
        wasmtime_wasi::p2::bindings::clocks::monotonic_clock::Host::resolution(&mut self.0)
    }

    fn subscribe_instant(&mut self, _when: u64) -> wasmtime::Result<wasmtime::component::Resource<DynPollable>> {
        wasmtime_wasi::p2::bindings::clocks::monotonic_clock::Host::subscribe_duration(&mut self.0, 0)
    }

    fn subscribe_duration(&mut self, _duration: u64) -> wasmtime::Result<wasmtime::component::Resource<DynPollable>> {
        wasmtime_wasi::p2::bindings::clocks::monotonic_clock::Host::subscribe_duration(&mut self.0, 0)
    }
}

/// The deterministic inputs of one decision: the instant and the seed of the facts.
#[derive(Debug, Clone, Copy, Default)]
pub struct Determinism {
    pub now_unix_ms: u64,
    pub seed: u64,
}

/// The world a component exports, which says what it can decide.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum World {
    #[serde(rename = "ckpt:policy/policy@0.1.0")]
    PolicyV1,
    #[serde(rename = "ckpt:policy/planner@0.2.0")]
    Planner,
    #[serde(rename = "ckpt:policy/migration-planner@0.2.0")]
    MigrationPlanner,
    #[serde(rename = "ckpt:policy/gate@0.2.0")]
    Gate,
    #[serde(rename = "ckpt:policy/retainer@0.2.0")]
    Retainer,
}

impl World {
    pub const ALL: [World; 5] =
        [World::Planner, World::MigrationPlanner, World::Gate, World::Retainer, World::PolicyV1];

    pub fn name(self) -> &'static str {
        match self {
            World::PolicyV1 => "ckpt:policy/policy@0.1.0",
            World::Planner => "ckpt:policy/planner@0.2.0",
            World::MigrationPlanner => "ckpt:policy/migration-planner@0.2.0",
            World::Gate => "ckpt:policy/gate@0.2.0",
            World::Retainer => "ckpt:policy/retainer@0.2.0",
        }
    }

    /// The role a component plays: a 0.1.0 policy plans and gates.
    pub fn serves(self, role: Role) -> bool {
        matches!(
            (self, role),
            (World::PolicyV1 | World::Planner | World::MigrationPlanner, Role::Planner)
                | (World::PolicyV1 | World::Gate, Role::Gate)
                | (World::Retainer, Role::Retainer)
        )
    }
}

impl std::fmt::Display for World {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What a component is loaded as: `--policy`, `--gate`, or a schedule's `--retainer`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Planner,
    Gate,
    Retainer,
}

impl Role {
    /// The worlds that serve it, as an error names them.
    pub fn worlds(self) -> String {
        let worlds: Vec<&str> = World::ALL.iter().filter(|w| w.serves(self)).map(|w| w.name()).collect();
        worlds.join(" or ")
    }

    pub fn flag(self) -> &'static str {
        match self {
            Role::Planner => "--policy",
            Role::Gate => "--gate",
            Role::Retainer => "--retainer",
        }
    }
}

/// A component's exports, checked against its world's types once, at load.
#[derive(Clone)]
enum Exports {
    PolicyV1(v1::PolicyPre<State>),
    Planner(PlannerPre<State>),
    MigrationPlanner(MigrationPlannerPre<State>),
    Gate(GatePre<State>),
    Retainer(RetainerPre<State>),
}

/// A component instantiated in a fresh store for one call.
pub enum Instance {
    PolicyV1(v1::Policy),
    Planner(Planner),
    MigrationPlanner(MigrationPlanner),
    Gate(Gate),
    Retainer(Retainer),
}

impl Exports {
    fn world(&self) -> World {
        match self {
            Exports::PolicyV1(_) => World::PolicyV1,
            Exports::Planner(_) => World::Planner,
            Exports::MigrationPlanner(_) => World::MigrationPlanner,
            Exports::Gate(_) => World::Gate,
            Exports::Retainer(_) => World::Retainer,
        }
    }

    fn instantiate(&self, store: &mut Store<State>) -> wasmtime::Result<Instance> {
        Ok(match self {
            Exports::PolicyV1(pre) => Instance::PolicyV1(pre.instantiate(store)?),
            Exports::Planner(pre) => Instance::Planner(pre.instantiate(store)?),
            Exports::MigrationPlanner(pre) => Instance::MigrationPlanner(pre.instantiate(store)?),
            Exports::Gate(pre) => Instance::Gate(pre.instantiate(store)?),
            Exports::Retainer(pre) => Instance::Retainer(pre.instantiate(store)?),
        })
    }
}

impl Instance {
    fn describe(&self, store: &mut Store<State>) -> wasmtime::Result<bindings::PolicyInfo> {
        match self {
            Instance::PolicyV1(p) => bindings::to_v1(&p.call_describe(store)?),
            Instance::Planner(p) => p.call_describe(store),
            Instance::MigrationPlanner(p) => p.call_describe(store),
            Instance::Gate(p) => p.call_describe(store),
            Instance::Retainer(p) => p.call_describe(store),
        }
    }

    fn validate_settings(&self, store: &mut Store<State>, settings: &str) -> wasmtime::Result<Result<(), String>> {
        match self {
            Instance::PolicyV1(p) => p.call_validate_settings(store, settings),
            Instance::Planner(p) => p.call_validate_settings(store, settings),
            Instance::MigrationPlanner(p) => p.call_validate_settings(store, settings),
            Instance::Gate(p) => p.call_validate_settings(store, settings),
            Instance::Retainer(p) => p.call_validate_settings(store, settings),
        }
    }
}

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
    exports: Exports,
    spare: Arc<Spare>,
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

/// How a thread waits for the helper.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// Blocked: its core may go idle, and in a VM the hypervisor may then give the core away.
    Sleeping,
    /// Yielding in a loop: its core stays awake, as it does when the host has its own work
    /// between decisions, and the helper still gets the core if it shares it.
    Busy,
}

/// The store and instance for a policy's next decision, made on a helper thread between
/// decisions: instantiating is most of a small policy's cost, and the host is busy with CRIU
/// between a plan and a gate anyway. Each store still serves exactly one decision.
#[derive(Default)]
struct Spare {
    slot: Mutex<SpareSlot>,
    ready: Condvar,
    disabled: AtomicBool,
}

impl Spare {
    /// The slot, once no spare is being made in it.
    fn settled(&self) -> std::sync::MutexGuard<'_, SpareSlot> {
        let mut slot = self.slot.lock().unwrap_or_else(|e| e.into_inner());
        while matches!(*slot, SpareSlot::Making) {
            slot = self.ready.wait(slot).unwrap_or_else(|e| e.into_inner());
        }
        slot
    }
}

#[derive(Default)]
enum SpareSlot {
    #[default]
    Empty,
    /// Asked of the helper, which has not started on it: a decision that comes first makes
    /// its own instance rather than wait for the helper to get round to it.
    Requested,
    Making,
    Ready(Premade),
    /// Instantiating failed: the decision reports it rather than spending its deadline again.
    Failed(wasmtime::Error),
}

/// A store with the component instantiated in it, not yet used.
struct Premade {
    store: Store<State>,
    instance: Instance,
    /// Counted among the process's spares until it is used or dropped.
    _counted: Option<SpareCount>,
}

/// Spare instances held across the process. Each holds pool slots, so a daemon with many
/// loaded policies keeps only this many ready, and the pool always has room for decisions.
pub const MAX_SPARES: usize = 8;
static SPARES: AtomicUsize = AtomicUsize::new(0);

/// Spares made or being made across the process.
#[cfg(test)]
pub fn spares_held() -> usize {
    SPARES.load(Ordering::Acquire)
}

struct SpareCount;

impl SpareCount {
    fn take() -> Option<SpareCount> {
        SPARES.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < MAX_SPARES).then_some(n + 1)).ok()?;
        Some(SpareCount)
    }
}

impl Drop for SpareCount {
    fn drop(&mut self) {
        SPARES.fetch_sub(1, Ordering::AcqRel);
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
    cache_dir: PathBuf,
}

impl PolicyEngine {
    pub fn new(cache_dir: &Path) -> Result<PolicyEngine, PolicyError> {
        let engine_err = |e: wasmtime::Error| PolicyError::Engine(format!("{e:#}"));
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
        // The gate and retainer worlds import the same `log` and `types` as the planner's.
        Planner::add_to_linker::<State, HasSelf<State>>(&mut linker, |state| state).map_err(engine_err)?;
        Ok(PolicyEngine { engine, linker, cache_dir: cache_dir.to_path_buf() })
    }

    /// Compiles (or takes from the cache) a component, checks its imports and asks it to
    /// describe itself. Its settings are not validated: see [`PolicyEngine::load`].
    pub fn describe(&self, source: &str, bytes: &[u8]) -> Result<LoadedPolicy, PolicyError> {
        let digest = component_digest(bytes);
        let load_err = |detail: String| PolicyError::Load { policy: source.to_string(), detail };
        if !bytes.starts_with(b"\0asm") {
            return Err(load_err("not a WebAssembly component (precompiled artifacts are never accepted)".into()));
        }
        let (component, cached) = self.component(bytes, &digest).map_err(|e| load_err(format!("{e:#}")))?;
        let imports: Vec<String> =
            component.component_type().imports(&self.engine).map(|(name, _)| name.to_string()).collect();
        let instance_pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(|e| load_err(format!("{e:#}; a policy may import only ckpt:policy/log and WASI")))?;
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
        valid?.map_err(|detail| PolicyError::Settings { policy: policy.info.name.clone(), detail: cut(detail) })?;
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

    fn component(&self, bytes: &[u8], digest: &str) -> wasmtime::Result<(Component, bool)> {
        let compat = {
            use std::hash::{Hash, Hasher};
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            self.engine.precompile_compatibility_hash().hash(&mut hasher);
            hasher.finish()
        };
        if let Some(component) = remembered(digest) {
            return Ok((component, true));
        }
        let hex = digest.trim_start_matches("blake3:");
        let artifact = self.cache_dir.join(format!("{hex}-{compat:016x}.cwasm"));
        let seal = artifact.with_extension("seal");
        if let Some(component) = self.load_cached(&artifact, &seal) {
            remember(digest, &component);
            return Ok((component, true));
        }
        let component = Component::new(&self.engine, bytes)?;
        // The cache is an optimisation: failing to write it is not an error.
        let _ = self.store_cached(&component, &artifact, &seal);
        remember(digest, &component);
        Ok((component, false))
    }

    /// Loads an artifact only if ckpt wrote it: root-owned, private, and matching the seal
    /// (its digest) that ckpt wrote beside it.
    fn load_cached(&self, artifact: &Path, seal: &Path) -> Option<Component> {
        let dir_meta = fs::metadata(&self.cache_dir).ok()?;
        let meta = fs::symlink_metadata(artifact).ok()?;
        let own = nix::unistd::geteuid().as_raw();
        if !meta.is_file()
            || meta.uid() != own
            || dir_meta.uid() != own
            || meta.mode() & 0o077 != 0
            || dir_meta.mode() & 0o077 != 0
        {
            return None;
        }
        let expected = fs::read_to_string(seal).ok()?;
        let actual = blake3::Hasher::new().update_mmap_rayon(artifact).ok()?.finalize().to_hex();
        if expected.trim() != actual.as_str() {
            return None;
        }
        // SAFETY: the artifact was produced by `Component::serialize` of this same engine
        // configuration (the compatibility hash is in its name), is owned by us, private, and
        // matches the digest we recorded when we wrote it.
        unsafe { Component::deserialize_file(&self.engine, artifact) }.ok()
    }

    fn store_cached(&self, component: &Component, artifact: &Path, seal: &Path) -> std::io::Result<()> {
        fs::create_dir_all(&self.cache_dir)?;
        fs::set_permissions(&self.cache_dir, fs::Permissions::from_mode(0o700))?;
        let bytes = component.serialize().map_err(|e| std::io::Error::other(format!("{e:#}")))?;
        crate::util::write_atomic(artifact, &bytes, 0o600).map_err(std::io::Error::other)?;
        crate::util::write_atomic(seal, digest_of(&bytes).to_hex().as_bytes(), 0o600).map_err(std::io::Error::other)
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
                trace.logs.push(LogLine { level: level.to_string(), message: cut(line.to_string()) });
            }
        }
        (result, trace)
    }
}

/// A Python or JavaScript component is tens of MiB, and so is its compiled code, which is
/// hashed again at every load: on every core, that takes half the time it takes on one.
fn digest_of(bytes: &[u8]) -> blake3::Hash {
    let mut hasher = blake3::Hasher::new();
    if bytes.len() >= 1 << 20 {
        hasher.update_rayon(bytes);
    } else {
        hasher.update(bytes);
    }
    hasher.finalize()
}

/// `blake3:<hex>` of a component's bytes, as decision records and `policy inspect` name it.
pub fn component_digest(bytes: &[u8]) -> String {
    format!("blake3:{}", digest_of(bytes).to_hex())
}

/// The WASI a decision sees: its frozen clock, its seeded random source, and pipes for its
/// stdout and stderr.
fn wasi_for(determinism: Determinism) -> (WasiCtx, MemoryOutputPipe, MemoryOutputPipe) {
    let stdout = MemoryOutputPipe::new(limits::MAX_CAPTURED_OUTPUT);
    let stderr = MemoryOutputPipe::new(limits::MAX_CAPTURED_OUTPUT);
    let mut seed = determinism.seed.to_le_bytes().to_vec();
    seed.extend_from_slice(&determinism.now_unix_ms.to_le_bytes());
    let wasi = WasiCtxBuilder::new()
        .stdout(stdout.clone())
        .stderr(stderr.clone())
        .wall_clock(FrozenWallClock(Duration::from_millis(determinism.now_unix_ms)))
        .monotonic_clock(FrozenMonotonicClock)
        .secure_random(wasmtime_wasi::Deterministic::new(seed.clone()))
        .insecure_random(wasmtime_wasi::Deterministic::new(seed))
        .insecure_random_seed(u128::from(determinism.seed))
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .build();
    (wasi, stdout, stderr)
}

/// A fresh store with its limits, and the component instantiated in it. Its WASI is replaced
/// by the decision's own before any export runs.
fn premake(engine: &Engine, exports: &Exports, counted: Option<SpareCount>) -> wasmtime::Result<Premade> {
    let (wasi, stdout, stderr) = wasi_for(Determinism::default());
    let mut store = Store::new(engine, State::new(wasi, stdout, stderr));
    store.limiter(|state| &mut state.limiter);
    store.set_hostcall_fuel(limits::HOSTCALL_BYTES);
    store.set_fuel(limits::FUEL)?;
    store.set_epoch_deadline(limits::deadline_ticks());
    store.epoch_deadline_trap();
    let instance = {
        let _ticking = Ticking::start();
        exports.instantiate(&mut store)?
    };
    Ok(Premade { store, instance, _counted: counted })
}

/// The spare, when one is made or being made (then it is waited for: making another would only
/// compete with it for the same cores). A spare only asked for is called off.
fn take_spare(spare: &Spare) -> Option<wasmtime::Result<Premade>> {
    match std::mem::take(&mut *spare.settled()) {
        SpareSlot::Ready(premade) => Some(Ok(premade)),
        SpareSlot::Failed(error) => Some(Err(error)),
        _ => None,
    }
}

/// Starts making the policy's next instance on the helper thread, unless one is there
/// already, spares are off, or the process holds its share of them.
fn make_spare(engine: &Engine, policy: &LoadedPolicy) {
    if policy.spare.disabled.load(Ordering::Relaxed) {
        return;
    }
    let mut slot = policy.spare.slot.lock().unwrap_or_else(|e| e.into_inner());
    if !matches!(*slot, SpareSlot::Empty) {
        return;
    }
    let Some(counted) = SpareCount::take() else { return };
    *slot = SpareSlot::Requested;
    drop(slot);
    let (engine, exports, spare) = (engine.clone(), policy.exports.clone(), Arc::clone(&policy.spare));
    on_helper(Box::new(move || {
        let mut slot = spare.slot.lock().unwrap_or_else(|e| e.into_inner());
        if !matches!(*slot, SpareSlot::Requested) {
            return;
        }
        *slot = SpareSlot::Making;
        drop(slot);
        let made = premake(&engine, &exports, Some(counted));
        let mut slot = spare.slot.lock().unwrap_or_else(|e| e.into_inner());
        *slot = match made {
            Ok(premade) => SpareSlot::Ready(premade),
            Err(error) => SpareSlot::Failed(error),
        };
        spare.ready.notify_all();
    }));
}

/// Used stores waiting for the helper to drop them. Bounded, so that decisions made faster than
/// the helper drops their stores cannot take the whole pool.
const MAX_PENDING_DROPS: usize = 4;
static PENDING_DROPS: AtomicUsize = AtomicUsize::new(0);

/// Drops a used store on the helper: resetting its memory for the pool is no part of the
/// decision. Past the bound, it is dropped here.
fn drop_later(store: Store<State>) {
    let queued =
        PENDING_DROPS.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < MAX_PENDING_DROPS).then_some(n + 1));
    if queued.is_err() {
        return drop(store);
    }
    on_helper(Box::new(move || {
        drop(store);
        PENDING_DROPS.fetch_sub(1, Ordering::AcqRel);
    }));
}

/// Work done off the decision's path: making spares, and dropping used stores (resetting
/// their pool slots). Where the helper cannot run, the work is done here and now.
fn on_helper(job: Job) {
    match helper() {
        Some(helper) => helper.push(job, false),
        None => job(),
    }
}

/// One thread for the process, started on first use.
fn helper() -> Option<&'static Helper> {
    static HELPER: OnceLock<Option<Arc<Helper>>> = OnceLock::new();
    let helper = HELPER.get_or_init(|| {
        let helper = Arc::new(Helper::new(HELPER_POLL, HELPER_POLLS_BEFORE_SLEEP));
        let serving = Arc::clone(&helper);
        let started = std::thread::Builder::new().name("policy-helper".into()).spawn(move || serving.serve());
        started.ok().map(|_| helper)
    });
    helper.as_deref()
}

type Job = Box<dyn FnOnce() + Send>;

/// Waking a sleeping thread cost the waker 14 µs at p50 and 26 µs at p99 inside a decision
/// here (an interrupt sent through the hypervisor), a third of a built-in decision or more. So
/// after its last job the helper looks at its queue every epoch tick for a second, as long as the
/// epoch ticker keeps ticking: decisions close together hand it work with no wake, and only the
/// first after a quiet spell pays one. A shorter poll would itself interrupt decisions.
const HELPER_POLL: Duration = limits::EPOCH_TICK;
const HELPER_POLLS_BEFORE_SLEEP: u32 = 100;

struct Helper {
    queue: Mutex<HelperQueue>,
    wake: Condvar,
    poll: Duration,
    polls_before_sleep: u32,
}

#[derive(Default)]
struct HelperQueue {
    jobs: std::collections::VecDeque<Job>,
    asleep: bool,
}

impl Helper {
    fn new(poll: Duration, polls_before_sleep: u32) -> Helper {
        Helper { queue: Mutex::new(HelperQueue::default()), wake: Condvar::new(), poll, polls_before_sleep }
    }

    /// Queues `job`; wakes the helper only if it sleeps, or if `now`.
    fn push(&self, job: Job, now: bool) {
        let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        queue.jobs.push_back(job);
        if queue.asleep || now {
            self.wake.notify_one();
        }
    }

    /// Runs every job queued so far, and returns when they are done.
    fn finish_queued(&self, wait: Wait) {
        let (done, finished) = std::sync::mpsc::channel();
        // Jobs run in order: this one runs after every job queued before it.
        self.push(
            Box::new(move || {
                let _ = done.send(());
            }),
            true,
        );
        match wait {
            Wait::Sleeping => {
                let _ = finished.recv();
            }
            Wait::Busy => {
                while let Err(std::sync::mpsc::TryRecvError::Empty) = finished.try_recv() {
                    std::thread::yield_now();
                }
            }
        }
    }

    fn serve(&self) {
        let mut idle_polls = 0;
        let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(job) = queue.jobs.pop_front() {
                drop(queue);
                job();
                idle_polls = 0;
                queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
            } else if idle_polls < self.polls_before_sleep {
                queue = self.wake.wait_timeout(queue, self.poll).unwrap_or_else(|e| e.into_inner()).0;
                idle_polls += 1;
            } else {
                queue.asleep = true;
                while queue.jobs.is_empty() {
                    queue = self.wake.wait(queue).unwrap_or_else(|e| e.into_inner());
                }
                queue.asleep = false;
                idle_polls = 0;
            }
        }
    }
}

/// Components this process has compiled or loaded, by digest: a daemon loads a schedule's
/// policies for every run, and a Python or JavaScript component's compiled code is tens of MiB
/// to read back. Bounded; the oldest goes first.
const REMEMBERED_COMPONENTS: usize = 16;
static COMPONENTS: Mutex<Vec<(String, Component)>> = Mutex::new(Vec::new());

fn remembered(digest: &str) -> Option<Component> {
    let known = COMPONENTS.lock().unwrap_or_else(|e| e.into_inner());
    known.iter().find(|(d, _)| d == digest).map(|(_, c)| c.clone())
}

fn remember(digest: &str, component: &Component) {
    let mut known = COMPONENTS.lock().unwrap_or_else(|e| e.into_inner());
    if known.iter().any(|(d, _)| d == digest) {
        return;
    }
    if known.len() == REMEMBERED_COMPONENTS {
        known.remove(0);
    }
    known.push((digest.to_string(), component.clone()));
}

/// Finds the world a component exports: the first whose exports its types match. One that
/// matches none is refused with the names of the worlds and why the closest did not fit.
fn exports_of(pre: wasmtime::component::InstancePre<State>) -> Result<Exports, String> {
    // Before the planner, whose exports it holds and more.
    if let Ok(p) = MigrationPlannerPre::new(pre.clone()) {
        return Ok(Exports::MigrationPlanner(p));
    }
    let planner = match PlannerPre::new(pre.clone()) {
        Ok(p) => return Ok(Exports::Planner(p)),
        Err(e) => e,
    };
    if let Ok(p) = GatePre::new(pre.clone()) {
        return Ok(Exports::Gate(p));
    }
    if let Ok(p) = RetainerPre::new(pre.clone()) {
        return Ok(Exports::Retainer(p));
    }
    let v1 = match v1::PolicyPre::new(pre) {
        Ok(p) => return Ok(Exports::PolicyV1(p)),
        Err(e) => e,
    };
    let names: Vec<&str> = World::ALL.iter().map(|w| w.name()).collect();
    // A component that imports 0.1.0 was written for 0.1.0: its mismatch says the most.
    let closest = if format!("{v1:#}").contains("@0.1.0") { v1 } else { planner };
    Err(format!("it exports none of the worlds ckpt loads ({}): {closest:#}", names.join(", ")))
}

/// Stores running guest code now, across the process, and whether the ticker sleeps.
struct Guests {
    running: usize,
    ticker_asleep: bool,
}

static GUESTS: Mutex<Guests> = Mutex::new(Guests { running: 0, ticker_asleep: false });
static WAKE: Condvar = Condvar::new();

/// The ticker keeps ticking this long after guest code last ran (a second): decisions close
/// together never wait for it to wake, and an idle daemon is not woken a hundred times a second.
const IDLE_TICKS_BEFORE_SLEEP: u32 = 100;

/// Held while guest code may run; a deadline counts ticks from when it is set.
struct Ticking;

impl Ticking {
    fn start() -> Ticking {
        let mut guests = GUESTS.lock().unwrap_or_else(|e| e.into_inner());
        guests.running += 1;
        if guests.ticker_asleep {
            WAKE.notify_all();
        }
        Ticking
    }
}

impl Drop for Ticking {
    fn drop(&mut self) {
        GUESTS.lock().unwrap_or_else(|e| e.into_inner()).running -= 1;
    }
}

/// One engine for the whole process, with one thread ticking its epochs: a daemon that loads
/// policies for every run keeps the same engine (and its memory) rather than gathering engines.
fn shared_engine() -> Result<Engine, PolicyError> {
    static ENGINE: OnceLock<Result<Engine, String>> = OnceLock::new();
    let engine = ENGINE.get_or_init(|| {
        let mut config = Config::new();
        config.wasm_component_model(true);
        config.consume_fuel(true);
        config.epoch_interruption(true);
        config.max_wasm_stack(limits::WASM_STACK_BYTES);
        config.parallel_compilation(true);
        // Decisions take their memories, tables and instance records from pools made once, so
        // a fresh store costs a slot's reset rather than an mmap and page faults per decision.
        // Where the pools cannot be reserved (a tight address-space limit), slower on-demand
        // allocation decides just the same.
        let engine = Engine::new(config.clone().allocation_strategy(limits::pools()))
            .or_else(|pooled| {
                tracing::debug!("no pooling allocator ({pooled:#}); instances are allocated on demand");
                Engine::new(&config)
            })
            .map_err(|e| format!("{e:#}"))?;
        let ticking = engine.clone();
        std::thread::Builder::new()
            .name("policy-epoch".into())
            .spawn(move || {
                let mut idle_ticks = 0;
                loop {
                    let mut guests = GUESTS.lock().unwrap_or_else(|e| e.into_inner());
                    idle_ticks = if guests.running == 0 { idle_ticks + 1 } else { 0 };
                    if idle_ticks > IDLE_TICKS_BEFORE_SLEEP {
                        guests.ticker_asleep = true;
                        while guests.running == 0 {
                            guests = WAKE.wait(guests).unwrap_or_else(|e| e.into_inner());
                        }
                        guests.ticker_asleep = false;
                        idle_ticks = 0;
                    }
                    drop(guests);
                    std::thread::sleep(limits::EPOCH_TICK);
                    ticking.increment_epoch();
                }
            })
            .map_err(|e| format!("cannot start the epoch ticker: {e}"))?;
        Ok(engine)
    });
    engine.clone().map_err(PolicyError::Engine)
}

/// Names what the policy did: ran out of fuel or time, grew too much memory, overflowed its
/// stack, trapped, or failed in the host; with the last words it wrote to stderr (a panic
/// message, say).
fn classify(name: &str, source: &str, decision: &str, error: wasmtime::Error, stderr: &str) -> PolicyError {
    let policy = if name.is_empty() { source.to_string() } else { format!("{name:?} ({source})") };
    let text = format!("{error:#}");
    let mut what = match error.downcast_ref::<wasmtime::Trap>() {
        Some(wasmtime::Trap::OutOfFuel) => format!("ran out of fuel ({} units)", limits::FUEL),
        Some(wasmtime::Trap::Interrupt) => format!("ran past its deadline of {:?}", limits::DEADLINE),
        Some(wasmtime::Trap::StackOverflow) => "overflowed its stack (recursion too deep)".to_string(),
        Some(trap) => format!("trapped ({trap})"),
        None if text.contains("grow its memory") => {
            format!("exceeded its memory limit of {} MiB", limits::MEMORY_BYTES >> 20)
        }
        None => format!("failed: {}", text.lines().next().unwrap_or_default()),
    };
    let last_words: Vec<&str> =
        stderr.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with("note:")).collect();
    if !last_words.is_empty() {
        what.push_str(&format!(", saying: {}", last_words[last_words.len().saturating_sub(2)..].join(" ")));
    }
    PolicyError::Failed { policy, decision: decision.to_string(), detail: cut(what) }
}

pub fn cut(mut text: String) -> String {
    if text.len() > limits::MAX_TEXT_BYTES {
        let mut end = limits::MAX_TEXT_BYTES;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
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

#[cfg(test)]
mod tests {
    use super::*;
    use bindings::log_interface::Host as _;

    fn state() -> State {
        State::new(WasiCtxBuilder::new().build(), MemoryOutputPipe::new(16), MemoryOutputPipe::new(16))
    }

    #[test]
    fn the_helper_runs_jobs_and_wakes_for_one_after_it_slept() {
        let helper = Arc::new(Helper::new(Duration::from_millis(1), 3));
        let serving = Arc::clone(&helper);
        std::thread::spawn(move || serving.serve());
        let ran = Arc::new(AtomicUsize::new(0));
        let push = |helper: &Helper| {
            let ran = Arc::clone(&ran);
            helper.push(
                Box::new(move || {
                    ran.fetch_add(1, Ordering::SeqCst);
                }),
                false,
            );
        };
        let ran_within_5s = |count: usize| {
            let started = Instant::now();
            while ran.load(Ordering::SeqCst) < count {
                assert!(started.elapsed() < Duration::from_secs(5), "the helper ran {ran:?} jobs, not {count}");
                std::thread::sleep(Duration::from_millis(1));
            }
        };
        push(&helper);
        ran_within_5s(1);
        push(&helper);
        ran_within_5s(2);
        // Past its polls it sleeps, and a job pushed then wakes it.
        let slept = Instant::now();
        while !helper.queue.lock().unwrap().asleep {
            assert!(slept.elapsed() < Duration::from_secs(5), "the helper never went to sleep");
            std::thread::sleep(Duration::from_millis(1));
        }
        push(&helper);
        ran_within_5s(3);
        // Waiting for the queue, either way, returns once every job queued before has run.
        for (wait, count) in [(Wait::Busy, 4), (Wait::Sleeping, 5)] {
            push(&helper);
            helper.finish_queued(wait);
            assert_eq!(ran.load(Ordering::SeqCst), count, "{wait:?}");
        }
    }

    /// The host side of the `log` import, called as a guest would, without a guest.
    #[test]
    fn the_log_import_cuts_long_messages_and_drops_lines_past_its_limits() {
        let mut s = state();
        s.log(Level::Warn, "é".repeat(limits::MAX_TEXT_BYTES));
        let first = &s.logs[0];
        assert_eq!(first.level, "warn");
        assert!(first.message.ends_with('…'), "a long message is cut and says so");
        assert!(first.message.len() <= limits::MAX_TEXT_BYTES + '…'.len_utf8());
        for i in 0..limits::MAX_LOG_LINES + 10 {
            s.log(Level::Info, format!("line {i}"));
        }
        assert_eq!(s.logs.len(), limits::MAX_LOG_LINES);
        assert_eq!(s.dropped_logs, 11, "the lines past the limit are counted, not kept");

        let mut s = state();
        let big = "x".repeat(limits::MAX_TEXT_BYTES);
        while s.dropped_logs == 0 {
            s.log(Level::Debug, big.clone());
        }
        assert!(s.log_bytes >= limits::MAX_LOG_BYTES && s.log_bytes < limits::MAX_LOG_BYTES + limits::MAX_TEXT_BYTES);
    }
}
