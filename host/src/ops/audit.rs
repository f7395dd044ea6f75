//! Every event the audit log records, with the fields each carries: the one place that says
//! what an entry can be. `Context::audit` writes them; `store::audit` chains and keys the lines
//! without knowing their kinds.

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::migrate::Migrated;
use super::system::Finding;
use crate::store::catalog::EntryKind;
use crate::store::schedules::Schedule;

/// One event, serialised as the entry's `event` name beside its fields (kebab-case).
#[derive(Debug, Serialize)]
#[serde(tag = "event", rename_all = "kebab-case", rename_all_fields = "kebab-case")]
pub enum AuditEvent {
    /// A checkpoint was made and went where the plan said.
    Checkpoint {
        #[serde(flatten)]
        about: CheckpointSubject,
        entries: Vec<String>,
        locations: Vec<String>,
    },
    /// The planner skipped the container.
    Skip {
        #[serde(flatten)]
        about: CheckpointSubject,
        reason: String,
    },
    /// A policy denied the checkpoint.
    Denial {
        #[serde(flatten)]
        about: CheckpointSubject,
        error: String,
    },
    CheckpointFailed {
        #[serde(flatten)]
        about: CheckpointSubject,
        error: String,
    },
    Restore {
        from: &'static str,
        location: String,
        container: String,
        container_id: String,
    },
    RestoreFailed {
        from: &'static str,
        location: String,
        error: String,
    },
    Migrate(Migrated),
    /// `ckpt node-agent` made a checkpoint image of an archive the kubelet wrote.
    KubeletCheckpoint {
        archive: String,
        /// `cri-o` or `containerd`.
        layout: &'static str,
        /// `k8s:NAMESPACE/POD/CONTAINER`.
        container: String,
        container_id: String,
        image: String,
        entry: String,
    },
    /// A schedule asked the kubelet to checkpoint a pod's container.
    KubeletCheckpointRequested {
        container: String,
        schedule: String,
        /// The archives the kubelet wrote.
        archives: Vec<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// `ckpt node-agent` could not read an archive the kubelet wrote, and moved it aside.
    KubeletCheckpointRefused {
        archive: String,
        error: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        kept_at: Option<String>,
    },
    Pin {
        entry: String,
        location: String,
    },
    Unpin {
        entry: String,
        location: String,
    },
    CatalogRm {
        entry: String,
        kind: EntryKind,
        location: String,
    },
    RetentionDelete {
        entry: String,
        container: String,
        location: String,
        reason: String,
        policy: String,
        error: Option<String>,
    },
    /// Retention could not run: for one container (`container-id`) or one schedule.
    RetentionFailed {
        #[serde(skip_serializing_if = "Option::is_none")]
        container_id: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        schedule: Option<String>,
        error: String,
    },
    ScheduleAdd {
        schedule: String,
        definition: Schedule,
    },
    ScheduleRm {
        schedule: String,
    },
    SchedulePause {
        schedule: String,
    },
    ScheduleResume {
        schedule: String,
    },
    /// A schedule ran: from the daemon (its slot and the runs it missed) or by hand.
    ScheduleRun {
        schedule: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        slot: Option<DateTime<Utc>>,
        #[serde(skip_serializing_if = "Option::is_none")]
        missed_runs: Option<u32>,
        result: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        trigger: Option<&'static str>,
    },
    /// `system check --repair` mended something; `by` says who ran it.
    SystemRepair {
        finding: Finding,
        by: &'static str,
    },
}

/// Which container a checkpoint event is about, what started it and which planner decided.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct CheckpointSubject {
    pub container: String,
    pub container_id: String,
    pub trigger: String,
    pub schedule: Option<String>,
    pub policy: PolicyIdentity,
}

#[derive(Debug, Clone, Serialize)]
pub struct PolicyIdentity {
    pub source: String,
    pub digest: String,
}

impl AuditEvent {
    /// What the kubelet answered when `schedule` asked it to checkpoint `container`: the
    /// archives it wrote, or why there are none.
    pub fn kubelet_requested<E: std::fmt::Display>(
        container: &str,
        schedule: &str,
        answer: &std::result::Result<Vec<String>, E>,
    ) -> AuditEvent {
        AuditEvent::KubeletCheckpointRequested {
            container: container.to_string(),
            schedule: schedule.to_string(),
            archives: answer.as_ref().ok().cloned().unwrap_or_default(),
            error: answer.as_ref().err().map(ToString::to_string),
        }
    }

    /// The entry's `event` name and its other fields, as the log keeps them.
    pub fn into_parts(self) -> (String, serde_json::Value) {
        let mut value = serde_json::to_value(&self).expect("audit events serialise");
        let name = value
            .as_object_mut()
            .and_then(|fields| fields.remove("event"))
            .and_then(|name| name.as_str().map(str::to_string))
            .expect("every audit event has a name");
        (name, value)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn subject() -> CheckpointSubject {
        CheckpointSubject {
            container: "web".into(),
            container_id: "abc".into(),
            trigger: "manual".into(),
            schedule: None,
            policy: PolicyIdentity { source: "builtin:default".into(), digest: "sha256:1".into() },
        }
    }

    #[test]
    fn a_log_written_before_the_typed_events_verifies_and_carries_on_with_them() {
        use crate::store::audit::{Anchor, AuditLog};
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::new(
            dir.path().join("audit.jsonl"),
            dir.path().join("locks"),
            Anchor::new(dir.path().join("anchor")),
        );
        // As entries were written before: a name and untyped fields.
        log.append("checkpoint", json!({"container": "web", "container-id": "abc", "entries": ["e1"]})).unwrap();
        log.append("schedule-rm", json!({"schedule": "nightly"})).unwrap();
        let (name, fields) =
            AuditEvent::Checkpoint { about: subject(), entries: vec!["e2".into()], locations: vec![] }.into_parts();
        log.append(&name, fields).unwrap();
        let verified = log.verify().unwrap().expect("the chain holds across the old entries and the typed one");
        assert_eq!(verified.entries, 3);
        let events: Vec<String> =
            log.entries().unwrap().iter().map(|e| e["event"].as_str().unwrap_or_default().to_string()).collect();
        assert_eq!(events, ["checkpoint", "schedule-rm", "checkpoint"]);
    }

    #[test]
    fn events_keep_the_names_and_fields_that_logs_already_hold() {
        let (name, fields) =
            AuditEvent::Checkpoint { about: subject(), entries: vec!["e1".into()], locations: vec!["/x.tar".into()] }
                .into_parts();
        assert_eq!(name, "checkpoint");
        assert_eq!(
            fields,
            json!({"container": "web", "container-id": "abc", "trigger": "manual", "schedule": null,
                   "policy": {"source": "builtin:default", "digest": "sha256:1"},
                   "entries": ["e1"], "locations": ["/x.tar"]})
        );
        let (name, fields) = AuditEvent::CheckpointFailed { about: subject(), error: "e".into() }.into_parts();
        assert_eq!((name.as_str(), &fields["error"]), ("checkpoint-failed", &json!("e")));
        let (name, fields) =
            AuditEvent::RetentionFailed { container_id: Some("abc".into()), schedule: None, error: "e".into() }
                .into_parts();
        assert_eq!((name.as_str(), fields), ("retention-failed", json!({"container-id": "abc", "error": "e"})));
        let (name, fields) = AuditEvent::ScheduleRun {
            schedule: "s".into(),
            slot: None,
            missed_runs: None,
            result: "ok".into(),
            trigger: Some("manual"),
        }
        .into_parts();
        assert_eq!(
            (name.as_str(), fields),
            ("schedule-run", json!({"schedule": "s", "result": "ok", "trigger": "manual"}))
        );
        let (name, fields) = AuditEvent::SystemRepair {
            finding: Finding { kind: "frozen", object: "web".into(), detail: "d".into(), repaired: true },
            by: "daemon-start",
        }
        .into_parts();
        assert_eq!(name, "system-repair");
        assert_eq!(fields["finding"]["kind"], "frozen");
        assert_eq!(fields["by"], "daemon-start");
    }
}
