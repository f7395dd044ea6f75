//! The host side of a decision's store: what a policy may import (its log, and WASI as
//! empty, deterministic stand-ins) and the state each store holds.

use std::time::Duration;

use serde::Serialize;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::p2::DynPollable;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{HostMonotonicClock, HostWallClock, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::bindings::{self, Level, v1};
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
    pub(super) wasi: WasiCtx,
    pub(super) table: ResourceTable,
    pub(super) limiter: TotalMemoryLimiter,
    pub(super) logs: Vec<LogLine>,
    pub(super) log_bytes: usize,
    pub(super) dropped_logs: usize,
    pub(super) stdout: MemoryOutputPipe,
    pub(super) stderr: MemoryOutputPipe,
}

impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl State {
    pub(super) fn new(wasi: WasiCtx, stdout: MemoryOutputPipe, stderr: MemoryOutputPipe) -> State {
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
impl bindings::v2::types_interface::Host for State {}
impl v1::ckpt::policy::types::Host for State {}

impl bindings::v2::log_interface::Host for State {
    fn log(&mut self, level: bindings::v2::log_interface::Level, message: String) {
        use bindings::v2::log_interface::Level as V2;
        let level = match level {
            V2::Debug => Level::Debug,
            V2::Info => Level::Info,
            V2::Warn => Level::Warn,
            V2::Error => Level::Error,
        };
        bindings::log_interface::Host::log(self, level, message)
    }
}

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
        let message = limits::cut(message);
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

pub(super) struct FrozenWallClock(Duration);

impl HostWallClock for FrozenWallClock {
    fn resolution(&self) -> Duration {
        Duration::from_millis(1)
    }
    fn now(&self) -> Duration {
        self.0
    }
}

pub(super) struct FrozenMonotonicClock;

impl HostMonotonicClock for FrozenMonotonicClock {
    fn resolution(&self) -> u64 {
        1_000_000
    }
    fn now(&self) -> u64 {
        0
    }
}

/// `wasi:clocks/monotonic-clock` with the frozen clock's time and timers that are always due.
pub(super) struct NoWaitClocks;

impl wasmtime::component::HasData for NoWaitClocks {
    type Data<'a> = NoWait<'a>;
}

pub(super) struct NoWait<'a>(pub(super) wasmtime_wasi::clocks::WasiClocksCtxView<'a>);

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

/// The WASI a decision sees: its frozen clock, its seeded random source, and pipes for its
/// stdout and stderr.
pub(super) fn wasi_for(determinism: Determinism) -> (WasiCtx, MemoryOutputPipe, MemoryOutputPipe) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use bindings::log_interface::Host as _;

    fn state() -> State {
        State::new(WasiCtxBuilder::new().build(), MemoryOutputPipe::new(16), MemoryOutputPipe::new(16))
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
