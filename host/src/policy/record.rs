//! Decision records: what each policy decided, from which facts and settings, at what cost.
//! They go into the checkpoint archive and into ckpt's local log (`<root>/decisions.jsonl`).

use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::PolicyError;
use super::bindings::ContainerFacts;
use super::engine::{LoadedPolicy, LogLine, Trace};

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
    pub kind: String,
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
        kind: &str,
        policy: &LoadedPolicy,
        container: &ContainerFacts,
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
            kind: kind.to_string(),
            container_id: container.id.clone(),
            container_name: container.name.clone(),
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

/// Appends records to the local log, one JSON document a line.
pub fn append(log: &Path, records: &[DecisionRecord]) -> std::io::Result<()> {
    if records.is_empty() {
        return Ok(());
    }
    let mut file = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
    let mut buffer = Vec::new();
    for record in records {
        serde_json::to_writer(&mut buffer, record).map_err(std::io::Error::other)?;
        buffer.push(b'\n');
    }
    file.write_all(&buffer)
}

/// The records of one container, newest last, as far back as `limit`.
pub fn history(log: &Path, container_id: &str, limit: usize) -> Vec<DecisionRecord> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let mut out: Vec<DecisionRecord> = text
        .lines()
        .filter(|l| l.contains(container_id))
        .filter_map(|l| serde_json::from_str::<DecisionRecord>(l).ok())
        .filter(|r| r.container_id == container_id)
        .collect();
    let skip = out.len().saturating_sub(limit);
    out.drain(..skip);
    out
}
