//! The epoch ticker: one thread that advances the engine's epoch while guest code runs, so that
//! deadlines hold, and sleeps when no guest has run for a quarter of a second.

use std::sync::{Condvar, Mutex, OnceLock};

use wasmtime::{Config, Engine};

use super::PolicyError;
use super::limits;

/// Stores running guest code now, across the process, and whether the ticker sleeps.
pub(super) struct Guests {
    running: usize,
    ticker_asleep: bool,
}

static GUESTS: Mutex<Guests> = Mutex::new(Guests { running: 0, ticker_asleep: false });
static WAKE: Condvar = Condvar::new();

/// The ticker keeps ticking this long after guest code last ran (a quarter of a second): the
/// decisions of one checkpoint, and decisions in a row, never wait for it to wake, and a daemon
/// whose checkpoints come a second apart is not woken a hundred times a second between them
/// (a second's window cost two or three milliseconds of CPU per scheduled checkpoint).
pub(super) const IDLE_TICKS_BEFORE_SLEEP: u32 = 25;

/// Held while guest code may run; a deadline counts ticks from when it is set.
pub(super) struct Ticking;

impl Ticking {
    pub(super) fn start() -> Ticking {
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
pub(super) fn shared_engine() -> Result<Engine, PolicyError> {
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
    engine.clone().map_err(PolicyError::EngineUnavailable)
}
