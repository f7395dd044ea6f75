//! The facts a policy receives, as a pure mapping from what `ops` gathered (the container's
//! record and cgroup sample, the host, the request and the decision log): no I/O here, so every
//! rule of the mapping is a unit test.

use super::bindings::*;
use super::record::DecisionRecord;
use crate::hostinfo::HostInfo;
use crate::store::ContainerRecord;

/// What was measured of a running container.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerSample {
    /// `running`, `paused`, `exited`, `created`, or `unknown`.
    pub status: String,
    pub memory_bytes: u64,
    pub process_count: u32,
    pub tcp_established: u32,
    pub file_locks: u32,
    pub rootfs_change_bytes: u64,
}

/// The checkpoint tools this host has.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tools {
    pub criu_version: u32,
    pub runtime_name: String,
    pub runtime_version: String,
    pub memory_tracking: bool,
}

fn pairs(map: &std::collections::BTreeMap<String, String>) -> Vec<KeyValue> {
    map.iter().map(|(k, v)| KeyValue { key: k.clone(), value: v.clone() }).collect()
}

pub fn container(record: &ContainerRecord, sample: ContainerSample) -> ContainerFacts {
    ContainerFacts {
        id: record.id.clone(),
        name: record.name.clone(),
        image: record.image_ref.clone(),
        labels: pairs(&record.labels),
        annotations: vec![KeyValue { key: "io.container.manager".into(), value: "ckpt".into() }],
        state: sample.status,
        memory_bytes: sample.memory_bytes,
        process_count: sample.process_count,
        tcp_established: sample.tcp_established,
        file_locks: sample.file_locks,
        volumes: record.named_volumes().map(|m| m.source.clone()).collect(),
        rootfs_change_bytes: sample.rootfs_change_bytes,
    }
}

pub fn host(info: &HostInfo, tools: Tools) -> HostFacts {
    HostFacts {
        criu_version: tools.criu_version,
        runtime_name: tools.runtime_name,
        runtime_version: tools.runtime_version,
        kernel: info.kernel.clone(),
        arch: info.arch.to_string(),
        memory_tracking: tools.memory_tracking,
        free_disk_bytes: info.free_disk_bytes,
        memory_available_bytes: crate::hostinfo::memory_available().unwrap_or(0),
    }
}

/// The container's earlier exports that gates judged and let through (allowed or narrowed).
pub fn history(records: Vec<DecisionRecord>) -> Vec<HistoryEntry> {
    records
        .into_iter()
        .filter(|r| r.kind == super::Kind::Gate && r.error.is_none())
        .filter_map(|r| {
            let export = r.export?;
            Some(HistoryEntry { at: r.at, exported_to: Some(export.target), size_bytes: export.size_bytes })
        })
        .collect()
}

/// A deterministic seed: the same container at the same instant gives the same seed.
pub fn seed(id: &str, now_unix_ms: u64) -> u64 {
    let hash = blake3::hash(format!("{id}@{now_unix_ms}").as_bytes());
    u64::from_le_bytes(hash.as_bytes()[..8].try_into().expect("8 bytes"))
}

/// The request, at `now`, for the container `id`.
pub fn request(
    id: &str,
    options: CheckpointOptions,
    exports: Vec<ExportTarget>,
    trigger: &str,
    schedule: Option<ScheduleFacts>,
    now: chrono::DateTime<chrono::Utc>,
) -> RequestFacts {
    let now_unix_ms = now.timestamp_millis().max(0) as u64;
    RequestFacts {
        options,
        exports,
        trigger: trigger.to_string(),
        schedule,
        now: now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        now_unix_ms,
        seed: seed(id, now_unix_ms),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> ContainerRecord {
        serde_json::from_value(serde_json::json!({
            "id": "a".repeat(64), "name": "web", "image_name": "busybox", "image_ref": "localhost/busybox:latest",
            "image_id": "b".repeat(64), "command": ["sh"], "env": [], "labels": {"tier": "db"},
            "mounts": [
                {"kind": "volume", "source": "data", "destination": "/data", "read_only": false},
                {"kind": "bind", "source": "/etc", "destination": "/host", "read_only": true}
            ],
            "auto_remove": false, "created_at": "2026-01-01T00:00:00Z", "runtime": "runc",
            "state": crate::store::StateFlags::default()
        }))
        .unwrap()
    }

    #[test]
    fn container_facts_map_the_record_and_the_sample() {
        let sample =
            ContainerSample { status: "running".into(), memory_bytes: 7, process_count: 2, ..Default::default() };
        let facts = container(&record(), sample);
        assert_eq!(facts.name, "web");
        assert_eq!(facts.state, "running");
        assert_eq!(facts.labels[0].key, "tier");
        assert_eq!(facts.volumes, vec!["data".to_string()], "named volumes only, never bind mounts");
        assert_eq!((facts.memory_bytes, facts.process_count), (7, 2));
    }

    #[test]
    fn history_is_the_gate_records_that_let_an_export_through() {
        let gate = |error: Option<&str>, export: bool| -> DecisionRecord {
            serde_json::from_value(serde_json::json!({
                "at": "2026-01-01T00:00:00Z", "kind": "gate", "container_id": "x", "container_name": "web",
                "policy": {"source": "s", "name": "n", "version": "v", "digest": "d"},
                "settings_digest": "", "facts_digest": "", "decision": null, "error": error,
                "logs": [], "dropped_logs": 0, "fuel_used": 0, "duration_us": 0, "peak_memory_bytes": 0,
                "export": if export { serde_json::json!({"target": "/srv/a.tar", "size_bytes": 9}) } else { serde_json::Value::Null },
            }))
            .unwrap()
        };
        let entries = history(vec![gate(None, true), gate(Some("denied"), true), gate(None, false)]);
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].exported_to.as_deref(), Some("/srv/a.tar"));
        assert_eq!(entries[0].size_bytes, 9);
    }

    #[test]
    fn the_seed_depends_only_on_the_container_and_the_instant() {
        assert_eq!(seed("a", 1), seed("a", 1));
        assert_ne!(seed("a", 1), seed("a", 2));
        assert_ne!(seed("a", 1), seed("b", 1));
        let now = chrono::DateTime::parse_from_rfc3339("2026-11-28T10:00:00.5Z").unwrap().to_utc();
        let options = CheckpointOptions::none();
        let facts = request("a", options, vec![], "cli", None, now);
        assert_eq!(facts.now, "2026-11-28T10:00:00.500Z");
        assert_eq!(facts.seed, seed("a", facts.now_unix_ms));
    }
}
