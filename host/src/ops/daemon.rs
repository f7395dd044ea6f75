//! `ckpt daemon`: runs the schedules in the foreground, one structured line (JSON) per event on
//! standard output, until SIGTERM or Ctrl-C. Schedules are read again whenever their directory
//! changes, so `ckpt schedule add|rm|pause|resume` take effect without a restart; each
//! schedule's place is on disk, so a restart carries on where the last daemon stopped and
//! reports the runs it missed.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use chrono::Utc;
use serde_json::{Value, json};

use super::Context;
use super::audit::AuditEvent;
use super::schedule::{self, ContainerOutcome, Limits};
use crate::error::{Error, Result};
use crate::store::schedules::StoredSchedule;

/// A lock whose holder panicked: what it guards (counters, a set of names) is still whole.
fn locked<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Takes a schedule off the running set when its run ends, even by a panic.
struct RunningGuard<'a> {
    running: &'a Mutex<HashSet<String>>,
    name: String,
}

impl Drop for RunningGuard<'_> {
    fn drop(&mut self) {
        locked(self.running).remove(&self.name);
    }
}

/// How often the daemon looks for due schedules.
const TICK: Duration = Duration::from_millis(100);
/// The schedules are read again at least this often, whatever the directory's time says.
const RELOAD_AT_LEAST: Duration = Duration::from_secs(10);

/// The schedules and their places, as last read. Every write to their directory (a schedule
/// added, changed or removed, a run's place saved) is an atomic rename, which changes the
/// directory's modification time: only then are the files read again, not at every tick.
struct Snapshot {
    stamp: Option<std::time::SystemTime>,
    read_at: Option<std::time::Instant>,
    entries: Vec<Listed>,
}

/// A schedule as last read, with the first slot its place allows then: until that slot, the
/// tick passes it over without working out its slots again.
struct Listed {
    stored: crate::store::schedules::StoredSchedule,
    first_slot: Option<chrono::DateTime<Utc>>,
}

impl Snapshot {
    fn refresh(&mut self, ctx: &Context) {
        let store = ctx.schedules();
        let stamp = store.modified();
        let fresh = self.read_at.is_some_and(|at| at.elapsed() < RELOAD_AT_LEAST);
        if fresh && stamp.is_some() && stamp == self.stamp {
            return;
        }
        // Every run saves its schedule's place, so the directory changes every few seconds on a
        // busy node: only the files that changed are read again.
        let previous = std::mem::take(&mut self.entries).into_iter().map(|listed| listed.stored).collect();
        let schedules = store.list_stored(previous).unwrap_or_else(|e| {
            log("error", json!({"error": e.to_string()}));
            Vec::new()
        });
        let now = Utc::now();
        self.entries = schedules
            .into_iter()
            .map(|stored| Listed { first_slot: stored.schedule.first_slot(&stored.state, now), stored })
            .collect();
        self.stamp = stamp;
        self.read_at = Some(std::time::Instant::now());
    }
}

#[derive(Debug, Clone)]
pub struct DaemonOptions {
    pub max_parallel: usize,
    pub metrics: Option<SocketAddr>,
}

/// Prints one event as a line of JSON.
fn log(event: &str, fields: Value) {
    let mut line = serde_json::Map::new();
    line.insert("time".into(), Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true).into());
    line.insert("event".into(), event.into());
    if let Value::Object(fields) = fields {
        line.extend(fields);
    }
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}", Value::Object(line));
    let _ = out.flush();
}

/// Counters for `--metrics`, in Prometheus' text format.
#[derive(Default)]
struct Metrics {
    runs: BTreeMap<(String, String), u64>,
    checkpoints: BTreeMap<String, u64>,
    checkpoint_seconds: f64,
    lag_seconds_max: f64,
    lag_seconds_last: f64,
    missed: u64,
}

impl Metrics {
    fn render(&self, in_flight: usize) -> String {
        let mut out = String::new();
        out.push_str("# HELP ckpt_schedule_runs_total Schedule runs, by schedule and result.\n");
        out.push_str("# TYPE ckpt_schedule_runs_total counter\n");
        for ((schedule, result), n) in &self.runs {
            out.push_str(&format!(
                "ckpt_schedule_runs_total{{schedule=\"{}\",result=\"{result}\"}} {n}\n",
                escape(schedule)
            ));
        }
        out.push_str("# HELP ckpt_checkpoints_total Scheduled container checkpoints, by result.\n");
        out.push_str("# TYPE ckpt_checkpoints_total counter\n");
        for (result, n) in &self.checkpoints {
            out.push_str(&format!("ckpt_checkpoints_total{{result=\"{result}\"}} {n}\n"));
        }
        out.push_str("# TYPE ckpt_checkpoint_seconds_total counter\n");
        out.push_str(&format!("ckpt_checkpoint_seconds_total {:.3}\n", self.checkpoint_seconds));
        out.push_str("# HELP ckpt_schedule_lag_seconds From a slot to the start of a checkpoint.\n");
        out.push_str("# TYPE ckpt_schedule_lag_seconds gauge\n");
        out.push_str(&format!("ckpt_schedule_lag_seconds{{stat=\"last\"}} {:.3}\n", self.lag_seconds_last));
        out.push_str(&format!("ckpt_schedule_lag_seconds{{stat=\"max\"}} {:.3}\n", self.lag_seconds_max));
        out.push_str("# TYPE ckpt_schedule_missed_runs_total counter\n");
        out.push_str(&format!("ckpt_schedule_missed_runs_total {}\n", self.missed));
        out.push_str("# TYPE ckpt_checkpoints_in_flight gauge\n");
        out.push_str(&format!("ckpt_checkpoints_in_flight {in_flight}\n"));
        out
    }
}

fn escape(label: &str) -> String {
    label.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Answers every request on `listener` with the metrics; GET only, no keep-alive.
/// Connections the metrics endpoint serves at once; more are closed unanswered, so that idle
/// clients hold threads, never the endpoint.
const METRICS_CONNECTIONS: usize = 16;

fn serve_metrics(listener: TcpListener, metrics: &Mutex<Metrics>, limits: &Limits) {
    listener.set_nonblocking(true).ok();
    let open = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|scope| {
        while crate::interrupt::received().is_none() {
            let Ok((mut stream, _)) = listener.accept() else {
                std::thread::sleep(TICK);
                continue;
            };
            if open.fetch_add(1, std::sync::atomic::Ordering::SeqCst) >= METRICS_CONNECTIONS {
                open.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                continue;
            }
            let open = &open;
            scope.spawn(move || {
                stream.set_nonblocking(false).ok();
                stream.set_read_timeout(Some(Duration::from_secs(2))).ok();
                let mut request = [0u8; 1024];
                let _ = stream.read(&mut request);
                let body = locked(metrics).render(limits.in_flight());
                let _ = write!(
                    stream,
                    "HTTP/1.0 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                open.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            });
        }
    });
}

/// Runs until SIGTERM or Ctrl-C; a checkpoint in flight then finishes or rolls back (it stops at
/// its next safe point), the runs in flight record where they stand, and the daemon returns.
pub fn run(ctx: &Context, options: &DaemonOptions) -> Result<()> {
    let _only = crate::store::StoreLock::try_named(&ctx.roots.store_locks_dir(), "daemon")?.ok_or_else(|| {
        Error::DaemonRunning(format!("another ckpt daemon is running on the store {}", ctx.roots.root.display()))
    })?;
    let listener = match options.metrics {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .map_err(|e| Error::invalid(format!("--metrics {addr}: cannot listen there: {e}")))?,
        ),
        None => None,
    };
    repair_at_start(ctx);
    let limits = Limits::new(options.max_parallel);
    // The slot each schedule last ran in this daemon: a place that could not be saved (a full
    // disk) must not make the same slot due again at the next tick.
    let ran: Mutex<HashMap<String, chrono::DateTime<Utc>>> = Mutex::new(HashMap::new());
    let metrics = Mutex::new(Metrics::default());
    let running: Mutex<HashSet<String>> = Mutex::new(HashSet::new());
    log(
        "daemon-start",
        json!({"pid": std::process::id(), "max-parallel": limits.max_parallel,
        "metrics": options.metrics.map(|a| a.to_string()), "root": ctx.roots.root}),
    );
    std::thread::scope(|scope| {
        if let Some(listener) = listener {
            scope.spawn(|| serve_metrics(listener, &metrics, &limits));
        }
        let mut snapshot = Snapshot { stamp: None, read_at: None, entries: Vec::new() };
        while crate::interrupt::received().is_none() {
            snapshot.refresh(ctx);
            let now = Utc::now();
            for Listed { stored: StoredSchedule { schedule, state, .. }, first_slot } in &snapshot.entries {
                // A later place (a run since) or a later `now` only moves the first slot on.
                if first_slot.is_none_or(|first| now < first) {
                    continue;
                }
                if schedule.paused || locked(&running).contains(&schedule.name) {
                    continue;
                }
                let ran_here = locked(&ran).get(&schedule.name).copied();
                let known = |mut state: crate::store::schedules::ScheduleState| {
                    state.last_run = state.last_run.max(ran_here);
                    state
                };
                let jittered =
                    |slot| now < slot + chrono::Duration::from_std(schedule.jitter_for(slot)).unwrap_or_default();
                // A slot waits out its jitter (up to a minute) on the place last read, not on its
                // file read again at every tick of that wait.
                match schedule.due(&known(state.clone()), now) {
                    Some((slot, _)) if !jittered(slot) => {}
                    _ => continue,
                }
                // Due as last read: its place is read again, as a run that just ended saved it.
                let state = known(ctx.schedules().state(&schedule.name));
                let Some((slot, missed)) = schedule.due(&state, now) else { continue };
                if jittered(slot) {
                    continue;
                }
                locked(&running).insert(schedule.name.clone());
                locked(&ran).insert(schedule.name.clone(), slot);
                let schedule = schedule.clone();
                let (limits, metrics, running) = (&limits, &metrics, &running);
                scope.spawn(move || {
                    let _running = RunningGuard { running, name: schedule.name.clone() };
                    run_due(ctx, &schedule, slot, missed, limits, metrics);
                });
            }
            std::thread::sleep(TICK);
        }
        log(
            "daemon-stopping",
            json!({"signal": crate::interrupt::received().map(|s| s.to_string()),
            "runs-in-flight": locked(&running).len()}),
        );
    });
    log("daemon-stop", json!({}));
    Ok(())
}

/// What a predecessor killed mid-dump left (a frozen container, one stopped with its images
/// kept) is repaired before any schedule runs, and said.
fn repair_at_start(ctx: &Context) {
    match super::system::check(ctx, true) {
        Ok(findings) => {
            for finding in findings {
                log("repair", json!({"finding": finding}));
                ctx.audit(AuditEvent::SystemRepair { finding, by: "daemon-start" });
            }
        }
        Err(e) => log("error", json!({"error": format!("system check at start: {e}")})),
    }
}

/// One due run of a schedule, logged, audited and counted.
fn run_due(
    ctx: &Context,
    schedule: &crate::store::schedules::Schedule,
    slot: chrono::DateTime<Utc>,
    missed: u32,
    limits: &Limits,
    metrics: &Mutex<Metrics>,
) {
    log("run-start", json!({"schedule": schedule.name, "slot": slot, "missed-runs": missed}));
    let on_container = |o: &ContainerOutcome| {
        log("checkpoint", json!({"schedule": schedule.name, "outcome": o}));
        let mut m = locked(metrics);
        *m.checkpoints.entry(o.result.to_string()).or_default() += 1;
        if o.result == "ok" {
            m.checkpoint_seconds += o.duration_ms as f64 / 1000.0;
            m.lag_seconds_last = o.lag_ms as f64 / 1000.0;
            m.lag_seconds_max = m.lag_seconds_max.max(m.lag_seconds_last);
        }
    };
    let result = match schedule::run(ctx, schedule, slot, missed, limits, &on_container) {
        Ok(outcome) => outcome.result,
        Err(e) => {
            log("error", json!({"schedule": schedule.name, "error": e.to_string()}));
            "failed".to_string()
        }
    };
    ctx.audit(AuditEvent::ScheduleRun {
        schedule: schedule.name.clone(),
        slot: Some(slot),
        missed_runs: Some(missed),
        result: result.clone(),
        trigger: None,
    });
    log("run-end", json!({"schedule": schedule.name, "slot": slot, "result": result}));
    let mut m = locked(metrics);
    *m.runs.entry((schedule.name.clone(), result)).or_default() += 1;
    m.missed += u64::from(missed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_that_panics_leaves_the_running_set_and_its_counters_usable() {
        let running = Mutex::new(HashSet::from(["s".to_string()]));
        let counters = Mutex::new(0u32);
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _running = RunningGuard { running: &running, name: "s".into() };
            let _held = counters.lock().unwrap();
            panic!("a run that panics");
        }));
        assert!(panicked.is_err());
        assert!(locked(&running).is_empty(), "the schedule can run again");
        *locked(&counters) += 1;
        assert_eq!(*locked(&counters), 1, "a poisoned lock still counts");
    }
}
