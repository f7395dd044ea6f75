//! The pool of instances made ahead of decisions: each policy's next store and instance is
//! made on one helper thread between decisions, and used stores are dropped there too.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::Duration;

use wasmtime::{Engine, Store};

use super::engine::LoadedPolicy;
use super::host::{Determinism, State, wasi_for};
use super::limits;
use super::ticker::Ticking;
use super::world::{Exports, Instance};

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
pub(super) struct Spare {
    pub(super) slot: Mutex<SpareSlot>,
    pub(super) ready: Condvar,
    pub(super) disabled: AtomicBool,
    /// Whether the policy has decided before in this process. Its first decision makes no
    /// spare: most commands ask each policy once, and a spare made for nothing would compete
    /// with the command's own work for two cores and hold up its exit; a fresh instance costs
    /// tens of microseconds.
    pub(super) decided_before: AtomicBool,
}

impl Spare {
    /// The slot, once no spare is being made in it.
    pub(super) fn settled(&self) -> std::sync::MutexGuard<'_, SpareSlot> {
        let mut slot = self.slot.lock().unwrap_or_else(|e| e.into_inner());
        while matches!(*slot, SpareSlot::Making) {
            slot = self.ready.wait(slot).unwrap_or_else(|e| e.into_inner());
        }
        slot
    }
}

#[derive(Default)]
pub(super) enum SpareSlot {
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
pub(super) struct Premade {
    pub(super) store: Store<State>,
    pub(super) instance: Instance,
    /// Counted among the process's spares until it is used or dropped.
    pub(super) _counted: Option<SpareCount>,
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

pub(super) struct SpareCount;

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

/// A fresh store with its limits, and the component instantiated in it. Its WASI is replaced
/// by the decision's own before any export runs.
pub(super) fn premake(engine: &Engine, exports: &Exports, counted: Option<SpareCount>) -> wasmtime::Result<Premade> {
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
pub(super) fn take_spare(spare: &Spare) -> Option<wasmtime::Result<Premade>> {
    match std::mem::take(&mut *spare.settled()) {
        SpareSlot::Ready(premade) => Some(Ok(premade)),
        SpareSlot::Failed(error) => Some(Err(error)),
        _ => None,
    }
}

/// Starts making the policy's next instance on the helper thread, unless one is there
/// already, spares are off, this is the policy's first decision, or the process holds its
/// share of them.
pub(super) fn make_spare(engine: &Engine, policy: &LoadedPolicy) {
    if policy.spare.disabled.load(Ordering::Relaxed) || !policy.spare.decided_before.swap(true, Ordering::Relaxed) {
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
pub(super) const MAX_PENDING_DROPS: usize = 4;
static PENDING_DROPS: AtomicUsize = AtomicUsize::new(0);

/// Drops a used store on the helper: resetting its memory for the pool is no part of the
/// decision. Past the bound, it is dropped here.
pub(super) fn drop_later(store: Store<State>) {
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
pub(super) fn on_helper(job: Job) {
    match helper() {
        Some(helper) => helper.push(job, false),
        None => job(),
    }
}

/// One thread for the process, started on first use.
pub(super) fn helper() -> Option<&'static Helper> {
    static HELPER: OnceLock<Option<Arc<Helper>>> = OnceLock::new();
    let helper = HELPER.get_or_init(|| {
        let helper = Arc::new(Helper::new(HELPER_POLL, HELPER_POLLS_BEFORE_SLEEP));
        let serving = Arc::clone(&helper);
        let started = std::thread::Builder::new().name("policy-helper".into()).spawn(move || serving.serve());
        started.ok().map(|_| helper)
    });
    helper.as_deref()
}

pub(super) type Job = Box<dyn FnOnce() + Send>;

/// Waking a sleeping thread costs a decision a large share of its time (bench/README.md), so
/// after its last job the helper looks at its queue every epoch tick for a quarter of a second,
/// as long as the ticker ticks: decisions close together hand it work with no wake. A shorter poll would itself interrupt decisions.
pub(super) const HELPER_POLL: Duration = limits::EPOCH_TICK;
pub(super) const HELPER_POLLS_BEFORE_SLEEP: u32 = 25;

pub(super) struct Helper {
    queue: Mutex<HelperQueue>,
    wake: Condvar,
    poll: Duration,
    polls_before_sleep: u32,
}

#[derive(Default)]
pub(super) struct HelperQueue {
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
    pub(super) fn finish_queued(&self, wait: Wait) {
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

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    fn state(spare: &Spare) -> &'static str {
        match &*spare.slot.lock().unwrap() {
            SpareSlot::Empty => "empty",
            SpareSlot::Requested => "requested",
            SpareSlot::Making => "making",
            SpareSlot::Ready(_) => "ready",
            SpareSlot::Failed(_) => "failed",
        }
    }

    /// The slot's states, each as a decision finds it: nothing to take, a request called off, a
    /// spare being made waited for, a made one taken once, a failure reported once.
    #[test]
    fn a_decision_takes_a_ready_spare_once_waits_for_one_being_made_and_calls_off_a_request() {
        let cache = tempfile::tempdir().unwrap();
        let engine = super::super::PolicyEngine::new(cache.path()).unwrap();
        let policy = engine.load("builtin:default", super::super::DEFAULT_POLICY, "").unwrap();
        let wasm = super::super::ticker::shared_engine().unwrap();
        let spare = Spare::default();
        assert!(take_spare(&spare).is_none(), "an empty slot has nothing");

        *spare.slot.lock().unwrap() = SpareSlot::Requested;
        assert!(take_spare(&spare).is_none(), "a request the helper has not started is called off");
        assert_eq!(state(&spare), "empty");

        *spare.slot.lock().unwrap() = SpareSlot::Ready(premake(&wasm, &policy.exports, None).unwrap());
        assert!(matches!(take_spare(&spare), Some(Ok(_))));
        assert_eq!(state(&spare), "empty", "a spare serves one decision");

        *spare.slot.lock().unwrap() = SpareSlot::Failed(wasmtime::Error::msg("no room"));
        assert!(matches!(take_spare(&spare), Some(Err(e)) if e.to_string() == "no room"));
        assert!(take_spare(&spare).is_none(), "a failure is reported once");

        // One being made is waited for, not made a second time.
        let spare = Arc::new(Spare::default());
        *spare.slot.lock().unwrap() = SpareSlot::Making;
        let maker = {
            let (spare, made) = (Arc::clone(&spare), premake(&wasm, &policy.exports, None).unwrap());
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(50));
                *spare.slot.lock().unwrap() = SpareSlot::Ready(made);
                spare.ready.notify_all();
            })
        };
        assert!(matches!(take_spare(&spare), Some(Ok(_))), "the decision waited for the spare being made");
        maker.join().unwrap();

        // Spares off: a decision leaves no request behind.
        policy.set_premade(false);
        *policy.spare.slot.lock().unwrap() = SpareSlot::Empty;
        make_spare(&wasm, &policy);
        assert_eq!(state(&policy.spare), "empty");
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
}
