//! Schedules: what to checkpoint and when (`<root>/schedules/NAME.json`, written by the
//! user's commands), and where each stands (`NAME.state.json`, written by whoever runs it), so
//! that a restarted daemon keeps its place.

use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::base_error::{BaseError as Error, BaseResult as Result};
use crate::util::FileStamp;

/// Which containers a run checkpoints, resolved when it runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Selector {
    Containers(Vec<String>),
    Label(String),
    All,
    /// podman's running containers with the label, found through its API when the run starts.
    PodmanLabel(String),
    /// Every running container of podman's.
    PodmanAll,
}

impl std::fmt::Display for Selector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Selector::Containers(names) => f.write_str(&names.join(",")),
            Selector::Label(label) => write!(f, "label={label}"),
            Selector::All => f.write_str("all"),
            Selector::PodmanLabel(label) => write!(f, "podman:label={label}"),
            Selector::PodmanAll => f.write_str("podman:all"),
        }
    }
}

/// When: every fixed interval from the schedule's creation, or a five-field cron expression
/// (UTC).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum When {
    Every(String),
    Cron(String),
}

impl std::fmt::Display for When {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            When::Every(d) => write!(f, "every {d}"),
            When::Cron(c) => write!(f, "cron {c}"),
        }
    }
}

/// The checkpoint flags of a schedule, as `ckpt checkpoint` takes them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", default)]
pub struct ScheduleFlags {
    pub leave_running: bool,
    pub tcp_established: bool,
    pub file_locks: bool,
    pub keep: bool,
    pub ignore_rootfs: bool,
    pub ignore_volumes: bool,
    pub compress: Option<String>,
}

/// A component and its settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct PolicySpec {
    pub source: String,
    pub settings: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Schedule {
    pub name: String,
    pub when: When,
    pub selector: Selector,
    /// `{name}`, `{id}` and `{time}` expand; an absolute path is an archive, anything else an
    /// image name.
    pub export: Option<String>,
    pub flags: ScheduleFlags,
    pub policy: Option<PolicySpec>,
    pub gates: Vec<PolicySpec>,
    pub retainer: Option<PolicySpec>,
    pub jitter: Option<String>,
    pub paused: bool,
    pub created: DateTime<Utc>,
}

/// Where a schedule stands.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", default)]
pub struct ScheduleState {
    /// The slot of the last run: the time it was due, not when it started.
    pub last_run: Option<DateTime<Utc>>,
    pub last_result: Option<String>,
    pub runs: u64,
    pub missed: u64,
}

impl Schedule {
    pub fn interval(&self) -> Option<Duration> {
        match &self.when {
            When::Every(text) => crate::util::parse_duration(text),
            When::Cron(_) => None,
        }
    }

    /// The first slot after `after`.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match &self.when {
            When::Every(_) => {
                let every = chrono::Duration::from_std(self.interval()?).ok()?;
                if every <= chrono::Duration::zero() {
                    return None;
                }
                let since = after.signed_duration_since(self.created);
                let done = if since < chrono::Duration::zero() {
                    -1
                } else {
                    since.num_milliseconds() / every.num_milliseconds()
                };
                Some(self.created + every * (done as i32 + 1))
            }
            When::Cron(expr) => parse_cron(expr).ok()?.find_next_occurrence(&after, false).ok(),
        }
    }

    /// The slot that is due at `now`, if any, and how many earlier due slots it passes over.
    /// Only the latest due slot runs: after any downtime the schedule skips to it, never runs
    /// back to back. A last run in the future (saved while the clock had jumped ahead) is not
    /// believed: the latest due slot runs once, so that a clock set right again does not stall
    /// the schedule, and no run is counted as missed.
    pub fn due(&self, state: &ScheduleState, now: DateTime<Utc>) -> Option<(DateTime<Utc>, u32)> {
        let believed = state.last_run.filter(|last| *last <= now);
        let first = self.first_slot(state, now)?;
        if first > now {
            return None;
        }
        let latest = self.latest_due(first, now);
        // Counted for the record only, and bounded, for a daemon down a year on a 1 s schedule.
        let mut missed = 0u32;
        let mut slot = first;
        while slot < latest && missed < 100_000 {
            match self.next_after(slot) {
                Some(next) => slot = next,
                None => break,
            }
            missed += 1;
        }
        let clock_jumped = state.last_run.is_some() && believed.is_none();
        Some((latest, if clock_jumped { 0 } else { missed }))
    }

    /// The first slot after the last run believed at `now` (see [`Schedule::due`]); nothing is
    /// due before it, and it never comes earlier for a later last run or a later `now`.
    pub fn first_slot(&self, state: &ScheduleState, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let believed = state.last_run.filter(|last| *last <= now);
        self.next_after(believed.unwrap_or(self.created))
    }

    /// The last slot at or before `now`, given that `first` is one: found by looking back from
    /// `now` over a window that doubles until it holds a slot, then forward within it.
    fn latest_due(&self, first: DateTime<Utc>, now: DateTime<Utc>) -> DateTime<Utc> {
        let mut back = chrono::Duration::seconds(1);
        let mut slot = loop {
            let from = now - back;
            if from <= first {
                break first;
            }
            match self.next_after(from) {
                Some(found) if found <= now => break found,
                _ => back = back * 2,
            }
        };
        while let Some(next) = self.next_after(slot).filter(|next| *next <= now) {
            slot = next;
        }
        slot
    }

    /// A delay in `[0, jitter)` that depends only on the schedule and the slot.
    pub fn jitter_for(&self, slot: DateTime<Utc>) -> Duration {
        let Some(jitter) = self.jitter.as_deref().and_then(crate::util::parse_duration) else {
            return Duration::ZERO;
        };
        if jitter.is_zero() {
            return Duration::ZERO;
        }
        let hash = blake3::hash(format!("{}@{}", self.name, slot.timestamp_millis()).as_bytes());
        let n = u64::from_le_bytes(hash.as_bytes()[..8].try_into().expect("8 bytes"));
        Duration::from_millis(n % (jitter.as_millis() as u64).max(1))
    }
}

pub fn parse_cron(expr: &str) -> std::result::Result<croner::Cron, String> {
    croner::Cron::new(expr).parse().map_err(|e| e.to_string())
}

/// A schedule name: it names files, so letters, digits, `_`, `.`, `-`, starting with a letter
/// or digit.
pub fn check_name(name: &str) -> Result<()> {
    let mut chars = name.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
        && name.len() <= 128;
    match ok {
        true => Ok(()),
        false => Err(Error::invalid(format!(
            "schedule name {name:?} is not valid: use letters, digits, '_', '.' and '-', starting with a letter or digit"
        ))),
    }
}

/// A schedule and its place as read from the store, with what its two files were then.
#[derive(Debug, Clone)]
pub struct StoredSchedule {
    pub schedule: Schedule,
    pub state: ScheduleState,
    stamps: [Option<FileStamp>; 2],
}

pub struct Schedules {
    dir: PathBuf,
}

impl Schedules {
    pub fn new(dir: PathBuf) -> Schedules {
        Schedules { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.json"))
    }

    fn state_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.state.json"))
    }

    pub fn save(&self, schedule: &Schedule) -> Result<()> {
        crate::util::create_dir_with_mode(&self.dir, 0o700)?;
        crate::util::write_atomic(
            &self.path(&schedule.name),
            &serde_json::to_vec_pretty(schedule).expect("json"),
            0o600,
        )
    }

    pub fn exists(&self, name: &str) -> bool {
        self.path(name).is_file()
    }

    pub fn get(&self, name: &str) -> Result<Schedule> {
        check_name(name)?;
        let bytes = std::fs::read(self.path(name)).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => {
                Error::invalid(format!("no schedule {name:?}; 'ckpt schedule ls' lists them"))
            }
            _ => Error::io("read", self.path(name))(e),
        })?;
        serde_json::from_slice(&bytes).map_err(|e| Error::Corrupt {
            what: "schedule",
            path: self.path(name),
            detail: e.to_string(),
        })
    }

    /// Every schedule, by name; a damaged one is reported and left out.
    pub fn list(&self) -> Result<Vec<Schedule>> {
        let mut out = Vec::new();
        for name in self.names()? {
            match self.get(&name) {
                Ok(schedule) => out.push(schedule),
                Err(e) => tracing::warn!("{e}"),
            }
        }
        Ok(out)
    }

    /// Every schedule with its place, by name, as [`Schedules::list`] reads them, but taking what
    /// `previous` holds for a schedule whose two files have not changed since it was read.
    pub fn list_stored(&self, previous: Vec<StoredSchedule>) -> Result<Vec<StoredSchedule>> {
        let mut previous: std::collections::HashMap<String, StoredSchedule> =
            previous.into_iter().map(|stored| (stored.schedule.name.clone(), stored)).collect();
        let mut out = Vec::new();
        for name in self.names()? {
            // Taken before the files are read: a write in between is read again next time.
            let stamps = [FileStamp::of(&self.path(&name)), FileStamp::of(&self.state_path(&name))];
            match previous.remove(&name) {
                Some(kept) if stamps[0].is_some() && kept.stamps == stamps => out.push(kept),
                _ => match self.get(&name) {
                    Ok(schedule) => out.push(StoredSchedule { state: self.state(&name), schedule, stamps }),
                    Err(e) => tracing::warn!("{e}"),
                },
            }
        }
        Ok(out)
    }

    /// The names of the schedules there, sorted.
    fn names(&self) -> Result<Vec<String>> {
        let dir = match std::fs::read_dir(&self.dir) {
            Ok(dir) => dir,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io("read", &self.dir)(e)),
        };
        let mut names: Vec<String> = dir
            .flatten()
            .filter_map(|entry| {
                let file = entry.file_name().to_string_lossy().into_owned();
                file.strip_suffix(".json").filter(|n| !n.ends_with(".state")).map(str::to_string)
            })
            .collect();
        names.sort();
        Ok(names)
    }

    /// When the directory last changed: every write there is an atomic rename.
    pub fn modified(&self) -> Option<std::time::SystemTime> {
        std::fs::metadata(&self.dir).and_then(|m| m.modified()).ok()
    }

    pub fn state(&self, name: &str) -> ScheduleState {
        std::fs::read(self.state_path(name)).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default()
    }

    pub fn save_state(&self, name: &str, state: &ScheduleState) -> Result<()> {
        crate::util::create_dir_with_mode(&self.dir, 0o700)?;
        crate::util::write_atomic(&self.state_path(name), &serde_json::to_vec_pretty(state).expect("json"), 0o600)
    }

    pub fn remove(&self, name: &str) -> Result<()> {
        self.get(name)?;
        crate::util::remove_file_if_exists(&self.path(name))?;
        crate::util::remove_file_if_exists(&self.state_path(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + seconds, 0).unwrap()
    }

    fn schedule(when: When) -> Schedule {
        Schedule {
            name: "s".into(),
            when,
            selector: Selector::All,
            export: None,
            flags: ScheduleFlags::default(),
            policy: None,
            gates: vec![],
            retainer: None,
            jitter: None,
            paused: false,
            created: at(0),
        }
    }

    #[test]
    fn interval_slots_count_from_creation_and_missed_ones_are_counted() {
        let s = schedule(When::Every("10s".into()));
        let fresh = ScheduleState::default();
        assert_eq!(s.due(&fresh, at(9)), None);
        assert_eq!(s.due(&fresh, at(10)), Some((at(10), 0)));
        assert_eq!(s.due(&fresh, at(35)), Some((at(30), 2)), "a daemon down for 25 s missed 10 and 20");
        let ran = ScheduleState { last_run: Some(at(30)), ..Default::default() };
        assert_eq!(s.due(&ran, at(39)), None);
        assert_eq!(s.due(&ran, at(40)), Some((at(40), 0)));
        // A last run saved while the clock was a day ahead does not stall the schedule.
        let ahead = ScheduleState { last_run: Some(at(86_400)), ..ScheduleState::default() };
        assert_eq!(s.due(&ahead, at(45)), Some((at(40), 0)));
        // Three days down on a 10 s schedule: straight to the latest slot, the rest missed.
        assert_eq!(s.due(&ran, at(3 * 86_400 + 5)), Some((at(3 * 86_400), (3 * 86_400 - 40) / 10)));
    }

    #[test]
    fn nothing_is_due_before_the_first_slot_which_a_later_run_only_moves_on() {
        let s = schedule(When::Every("10s".into()));
        let fresh = ScheduleState::default();
        assert_eq!(s.first_slot(&fresh, at(3)), Some(at(10)));
        for now in 0..10 {
            assert_eq!(s.due(&fresh, at(now)), None);
        }
        let ran = ScheduleState { last_run: Some(at(30)), ..Default::default() };
        assert_eq!(s.first_slot(&ran, at(31)), Some(at(40)));
        assert_eq!(s.first_slot(&ran, at(29)), Some(at(10)), "a last run not yet believed");
    }

    #[test]
    fn cron_slots_follow_the_expression() {
        let s = schedule(When::Cron("*/5 * * * *".into()));
        let next = s.next_after(at(0)).unwrap();
        assert_eq!(next.timestamp() % 300, 0);
        assert!(parse_cron("61 * * * *").is_err());
    }

    #[test]
    fn jitter_is_bounded_and_the_same_for_the_same_slot() {
        let mut s = schedule(When::Every("1m".into()));
        s.jitter = Some("5s".into());
        let j = s.jitter_for(at(60));
        assert!(j < Duration::from_secs(5));
        assert_eq!(j, s.jitter_for(at(60)));
    }

    #[test]
    fn a_listing_reads_again_only_the_schedules_whose_files_changed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Schedules::new(dir.path().join("schedules"));
        for name in ["a", "b"] {
            store.save(&Schedule { name: name.into(), ..schedule(When::Every("1m".into())) }).unwrap();
        }
        let first = store.list_stored(Vec::new()).unwrap();
        assert_eq!(first.iter().map(|s| s.schedule.name.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        // What a kept entry holds is what the listing gives back while its files stay as they were.
        let mut kept = first.clone();
        kept[0].state.runs = 7;
        store.save_state("b", &ScheduleState { runs: 3, ..Default::default() }).unwrap();
        store.remove("a").ok();
        store.save(&Schedule { name: "a".into(), paused: true, ..schedule(When::Every("1m".into())) }).unwrap();
        store.save(&Schedule { name: "c".into(), ..schedule(When::Every("1m".into())) }).unwrap();
        let second = store.list_stored(kept.clone()).unwrap();
        let by_name = |name: &str| second.iter().find(|s| s.schedule.name == name).unwrap().clone();
        assert!(by_name("a").schedule.paused && by_name("a").state.runs == 0, "a schedule rewritten is read again");
        assert_eq!(by_name("b").state.runs, 3, "a place saved is read again");
        assert!(second.iter().any(|s| s.schedule.name == "c"));
        let third = store
            .list_stored(
                second
                    .clone()
                    .into_iter()
                    .map(|mut s| {
                        s.state.runs += 100;
                        s
                    })
                    .collect(),
            )
            .unwrap();
        assert!(third.iter().all(|s| s.state.runs >= 100), "nothing changed, nothing read");
    }

    #[test]
    fn names_are_checked_and_schedules_round_trip() {
        assert!(check_name("nightly-db.1").is_ok());
        for bad in ["", "../x", "-x", "a/b"] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
        let dir = tempfile::tempdir().unwrap();
        let store = Schedules::new(dir.path().join("schedules"));
        let s = schedule(When::Every("2s".into()));
        store.save(&s).unwrap();
        store.save_state("s", &ScheduleState { runs: 3, ..Default::default() }).unwrap();
        assert_eq!(store.list().unwrap(), vec![s.clone()]);
        assert_eq!(store.state("s").runs, 3);
        store.remove("s").unwrap();
        assert!(store.get("s").unwrap_err().to_string().contains("no schedule \"s\""));
    }
}
