//! Decision records: what each policy decided, from which facts and settings, at what cost.
//! They go into the checkpoint archive and into ckpt's local log (`<root>/decisions.jsonl`).

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::PolicyError;
use super::bindings::{ContainerFacts, RetainFacts};
use super::decision::Kind;
use super::engine::{LoadedPolicy, Trace};
use super::host::LogLine;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PolicyRef {
    pub source: String,
    pub name: String,
    pub version: String,
    pub digest: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DecisionRecord {
    pub at: String,
    pub kind: Kind,
    pub container_id: String,
    pub container_name: String,
    pub policy: PolicyRef,
    pub settings_digest: String,
    pub facts_digest: String,
    /// The decision as the policy gave it, or null when it failed.
    pub decision: Value,
    /// Why the decision failed (and so became a denial).
    pub error: Option<String>,
    pub logs: Vec<LogLine>,
    pub dropped_logs: usize,
    pub fuel_used: u64,
    pub duration_us: u64,
    pub peak_memory_bytes: usize,
    /// For a gate: the export it judged, which the container's history is made of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub export: Option<ExportRef>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExportRef {
    pub target: String,
    pub size_bytes: u64,
}

impl DecisionRecord {
    pub fn new(
        kind: Kind,
        policy: &LoadedPolicy,
        container: &ContainerFacts,
        facts: &(impl Serialize + ?Sized),
        decision: Result<Value, &PolicyError>,
        trace: Trace,
    ) -> DecisionRecord {
        DecisionRecord::about((&container.id, &container.name), kind, policy, facts, decision, trace)
    }

    /// The record of a retention decision about one container's catalog entries.
    pub fn for_retention(
        policy: &LoadedPolicy,
        facts: &RetainFacts,
        decision: Result<Value, &PolicyError>,
        trace: Trace,
    ) -> DecisionRecord {
        DecisionRecord::about(
            (&facts.container_id, &facts.container_name),
            Kind::Retain,
            policy,
            facts,
            decision,
            trace,
        )
    }

    fn about(
        (container_id, container_name): (&str, &str),
        kind: Kind,
        policy: &LoadedPolicy,
        facts: &(impl Serialize + ?Sized),
        decision: Result<Value, &PolicyError>,
        trace: Trace,
    ) -> DecisionRecord {
        let facts_json = serde_json::to_vec(facts).unwrap_or_default();
        let (decision, error) = match decision {
            Ok(value) => (value, None),
            Err(e) => (Value::Null, Some(e.to_string())),
        };
        DecisionRecord {
            at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            kind,
            container_id: container_id.to_string(),
            container_name: container_name.to_string(),
            policy: PolicyRef {
                source: policy.source.clone(),
                name: policy.info.name.clone(),
                version: policy.info.version.clone(),
                digest: policy.digest.clone(),
            },
            settings_digest: policy.settings_digest.clone(),
            facts_digest: format!("blake3:{}", blake3::hash(&facts_json).to_hex()),
            decision,
            error,
            logs: trace.logs,
            dropped_logs: trace.dropped_logs,
            fuel_used: trace.fuel_used,
            duration_us: trace.duration_us,
            peak_memory_bytes: trace.peak_memory_bytes,
            export: None,
        }
    }
}

/// The decision log is rotated past this size, keeping [`LOG_GENERATIONS`] older files.
pub const MAX_LOG_BYTES: u64 = 16 << 20;
pub const LOG_GENERATIONS: usize = 3;
/// A record larger than this loses its policy logs: one chatty policy must not fill the disk.
const MAX_RECORD_BYTES: usize = 256 << 10;
/// How far back from the end [`history`] reads.
const MAX_HISTORY_SCAN_BYTES: u64 = 8 << 20;

/// Appends records to the local log, one JSON document a line, private (0600) whatever the
/// umask; rotates it first when it has grown past [`MAX_LOG_BYTES`].
pub fn append(log: &Path, records: &[DecisionRecord]) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    if records.is_empty() {
        return Ok(());
    }
    // Held across the rotation and the append: two processes rotating at once would lose a
    // generation, and history-reading gates would see less.
    let lock_path = PathBuf::from(format!("{}.lock", log.display()));
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&lock_path)?;
    lock.lock()?;
    if std::fs::symlink_metadata(log).is_ok_and(|m| m.len() > MAX_LOG_BYTES) {
        rotate(log)?;
    }
    let mut file =
        std::fs::OpenOptions::new().create(true).append(true).mode(0o600).custom_flags(libc::O_NOFOLLOW).open(log)?;
    if file.metadata()?.permissions().mode() & 0o077 != 0 {
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    let mut buffer = Vec::new();
    for record in records {
        let mut line = serde_json::to_vec(record).map_err(std::io::Error::other)?;
        if line.len() > MAX_RECORD_BYTES {
            let mut smaller = record.clone();
            smaller.dropped_logs += smaller.logs.len();
            smaller.logs.clear();
            line = serde_json::to_vec(&smaller).map_err(std::io::Error::other)?;
        }
        buffer.extend_from_slice(&line);
        buffer.push(b'\n');
    }
    file.write_all(&buffer)
}

/// `decisions.jsonl` → `.1` → `.2` …, dropping the oldest.
fn rotate(log: &Path) -> std::io::Result<()> {
    let generation = |n: usize| PathBuf::from(format!("{}.{n}", log.display()));
    for n in (1..LOG_GENERATIONS).rev() {
        match std::fs::rename(generation(n), generation(n + 1)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    std::fs::rename(log, generation(1))
}

/// The records of one container, newest last, as far back as `limit`. Reads the log backwards
/// from its end, and never more than [`MAX_HISTORY_SCAN_BYTES`] of it; a torn or foreign line
/// is skipped, not fatal.
pub fn history(log: &Path, container_id: &str, limit: usize) -> Vec<DecisionRecord> {
    let mut newest_first = Vec::new();
    let _ = scan_backwards(log, MAX_HISTORY_SCAN_BYTES, |line| {
        if newest_first.len() >= limit {
            return false;
        }
        if let Ok(text) = std::str::from_utf8(line)
            && text.contains(container_id)
            && let Ok(record) = serde_json::from_str::<DecisionRecord>(text)
            && record.container_id == container_id
        {
            newest_first.push(record);
        }
        true
    });
    newest_first.reverse();
    newest_first
}

/// Calls `each` with the lines of `path`, last first, until it returns false or `budget` bytes
/// have been read.
fn scan_backwards(path: &Path, budget: u64, mut each: impl FnMut(&[u8]) -> bool) -> std::io::Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    const CHUNK: u64 = 64 << 10;
    let mut file = std::fs::File::open(path)?;
    let mut end = file.metadata()?.len();
    let floor = end.saturating_sub(budget);
    let mut carry: Vec<u8> = Vec::new();
    while end > floor {
        let start = end.saturating_sub(CHUNK).max(floor);
        let mut chunk = vec![0u8; (end - start) as usize];
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(&mut chunk)?;
        chunk.extend_from_slice(&carry);
        let mut lines: Vec<&[u8]> = chunk.split(|&b| b == b'\n').collect();
        // The first piece may be the tail of a line that starts in an earlier chunk.
        let first = if start > floor { lines.remove(0).to_vec() } else { Vec::new() };
        for line in lines.into_iter().rev().filter(|l| !l.is_empty()) {
            if !each(line) {
                return Ok(());
            }
        }
        carry = first;
        end = start;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(id: &str, n: usize) -> String {
        format!("{{\"id\":\"{id}\",\"n\":{n}}}\n")
    }

    #[test]
    fn backwards_scan_sees_every_line_once_across_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let mut text = String::new();
        for n in 0..20_000 {
            text.push_str(&line(if n % 3 == 0 { "a" } else { "b" }, n));
        }
        std::fs::write(&path, &text).unwrap();
        let mut seen = Vec::new();
        scan_backwards(&path, u64::MAX, |l| {
            seen.push(String::from_utf8(l.to_vec()).unwrap());
            true
        })
        .unwrap();
        seen.reverse();
        assert_eq!(seen.len(), 20_000);
        assert_eq!(seen.join("\n") + "\n", text);
        let mut few = 0;
        scan_backwards(&path, 100, |_| {
            few += 1;
            true
        })
        .unwrap();
        assert!(few <= 5, "the budget bounds the scan: {few}");
    }

    #[test]
    fn processes_that_append_at_once_rotate_the_log_once_and_lose_no_generation() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("decisions.jsonl");
        let generation = |n: usize| PathBuf::from(format!("{}.{n}", log.display()));
        let record: DecisionRecord = serde_json::from_value(serde_json::json!({
            "at": "2026-12-06T00:00:00Z", "kind": "plan", "container_id": "c", "container_name": "c",
            "policy": {"source": "builtin", "name": "builtin", "version": "1", "digest": "sha256:0"},
            "settings_digest": "", "facts_digest": "", "decision": null, "error": null, "logs": [],
            "dropped_logs": 0, "fuel_used": 0, "duration_us": 0, "peak_memory_bytes": 0,
        }))
        .unwrap();
        const WRITERS: usize = 8;
        for round in 0..5 {
            std::fs::write(&log, vec![b'x'; MAX_LOG_BYTES as usize + 1]).unwrap();
            for n in 1..=LOG_GENERATIONS {
                let _ = std::fs::remove_file(generation(n));
            }
            let start = std::sync::Arc::new(std::sync::Barrier::new(WRITERS));
            let writers: Vec<_> = (0..WRITERS)
                .map(|_| {
                    let (start, log, record) = (start.clone(), log.clone(), record.clone());
                    std::thread::spawn(move || {
                        start.wait();
                        append(&log, std::slice::from_ref(&record)).unwrap();
                    })
                })
                .collect();
            writers.into_iter().for_each(|w| w.join().unwrap());
            let rotated = std::fs::metadata(generation(1)).map(|m| m.len()).ok();
            assert_eq!(rotated, Some(MAX_LOG_BYTES + 1), "round {round}: the full log is the one generation made");
            assert!(!generation(2).exists(), "round {round}: the log was rotated more than once");
            let lines = std::fs::read_to_string(&log).unwrap().lines().count();
            assert_eq!(lines, WRITERS, "round {round}: every record is in the new log");
        }
    }

    #[test]
    fn rotation_keeps_a_bounded_number_of_generations() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("decisions.jsonl");
        for n in 0..5 {
            std::fs::write(&log, format!("{n}\n")).unwrap();
            rotate(&log).unwrap();
        }
        assert!(!log.exists());
        assert_eq!(std::fs::read_to_string(format!("{}.1", log.display())).unwrap(), "4\n");
        assert_eq!(std::fs::read_to_string(format!("{}.3", log.display())).unwrap(), "2\n");
        assert!(!PathBuf::from(format!("{}.4", log.display())).exists());
    }
}
