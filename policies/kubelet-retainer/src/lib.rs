//! The checkpoint-restore-operator's retention, as a retainer: `ckpt node-agent --retainer`
//! asks it about each container's checkpoints of a Kubernetes node, newest first, with the
//! operator's own field names and defaults. Pinned checkpoints (the operator's `.keep`) count
//! towards the limits but are never deleted.

use ckpt_guest_sdk::export_retainer;
use ckpt_guest_sdk::types::{Deletion, RetainFacts};
use ckpt_guest_sdk::{Describe, Retainer};

/// A size as Kubernetes writes a `resource.Quantity` for bytes: `500Mi`, `2Gi`, `1G`, or a
/// plain number of bytes.
#[derive(Debug, Clone, serde::Deserialize, schemars::JsonSchema)]
#[serde(untagged)]
pub enum Quantity {
    Bytes(u64),
    Text(String),
}

impl Quantity {
    fn bytes(&self) -> Option<u64> {
        let text = match self {
            Quantity::Bytes(n) => return Some(*n),
            Quantity::Text(text) => text.trim(),
        };
        let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
        let (number, suffix) = text.split_at(split);
        let unit: u64 = match suffix {
            "" => 1,
            "k" => 1_000,
            "M" => 1_000_000,
            "G" => 1_000_000_000,
            "T" => 1_000_000_000_000,
            "Ki" => 1 << 10,
            "Mi" => 1 << 20,
            "Gi" => 1 << 30,
            "Ti" => 1 << 40,
            _ => return None,
        };
        number.parse::<u64>().ok()?.checked_mul(unit)
    }
}

/// The operator's per-container policy (`containerPolicies`, or `globalPolicy`'s per-container
/// fields), with its defaults.
#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Settings {
    /// At most this many checkpoints of a container, the newest kept.
    pub max_checkpoints_per_container: u32,
    /// A checkpoint bigger than this is deleted.
    pub max_checkpoint_size: Quantity,
    /// At most this many bytes of a container's checkpoints, the newest kept.
    pub max_total_size_per_container: Quantity,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            max_checkpoints_per_container: 10,
            max_checkpoint_size: Quantity::Text("100Gi".into()),
            max_total_size_per_container: Quantity::Text("100Gi".into()),
        }
    }
}

pub struct KubeletRetainer;

impl Describe for KubeletRetainer {
    type Settings = Settings;
    const NAME: &'static str = "kubelet-retainer";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
}

impl Retainer for KubeletRetainer {
    fn retain(settings: &Settings, facts: RetainFacts) -> Vec<Deletion> {
        // A size the settings cannot say keeps everything: retention deletes only what it is
        // sure of.
        let (Some(max_size), Some(max_total)) =
            (settings.max_checkpoint_size.bytes(), settings.max_total_size_per_container.bytes())
        else {
            return Vec::new();
        };
        let (mut kept, mut kept_bytes) = (0u32, 0u64);
        let mut deletions = Vec::new();
        for entry in &facts.entries {
            let reason = if entry.size_bytes > max_size {
                Some(format!("{} bytes, over maxCheckpointSize ({max_size} bytes)", entry.size_bytes))
            } else if kept >= settings.max_checkpoints_per_container {
                Some(format!(
                    "older than the newest {} (maxCheckpointsPerContainer)",
                    settings.max_checkpoints_per_container
                ))
            } else if kept_bytes + entry.size_bytes > max_total {
                Some(format!("keeping it would pass maxTotalSizePerContainer ({max_total} bytes)"))
            } else {
                None
            };
            match reason {
                Some(reason) if !entry.pinned => deletions.push(Deletion { id: entry.id.clone(), reason }),
                _ => {
                    kept += 1;
                    kept_bytes += entry.size_bytes;
                }
            }
        }
        deletions
    }
}

export_retainer!(KubeletRetainer);

#[cfg(test)]
mod tests {
    use super::*;
    use ckpt_guest_sdk::types::{CatalogEntry, EntryKind};

    fn entry(id: &str, size: u64, pinned: bool) -> CatalogEntry {
        CatalogEntry {
            id: id.into(),
            kind: EntryKind::Image,
            location: format!("localhost/checkpoints/{id}:1"),
            size_bytes: size,
            created: "2026-12-07T00:00:00Z".into(),
            created_unix_ms: 0,
            trigger: "kubelet".into(),
            schedule: None,
            pinned,
            policy_digest: String::new(),
        }
    }

    fn deleted(settings: &str, entries: Vec<CatalogEntry>) -> Vec<String> {
        let settings: Settings = ckpt_guest_sdk::parse_settings(settings).unwrap();
        let facts = RetainFacts {
            container_id: "k8s:default/web-0/web".into(),
            container_name: "k8s:default/web-0/web".into(),
            entries,
            now: "2026-12-07T00:00:00Z".into(),
            now_unix_ms: 0,
        };
        KubeletRetainer::retain(&settings, facts).into_iter().map(|d| d.id).collect()
    }

    #[test]
    fn keeps_the_newest_by_count_and_pinned_ones_count_but_stay() {
        let entries = vec![entry("d", 1, false), entry("c", 1, true), entry("b", 1, false), entry("a", 1, false)];
        assert_eq!(deleted(r#"{"maxCheckpointsPerContainer": 2}"#, entries), vec!["b", "a"]);
    }

    #[test]
    fn sizes_are_kubernetes_quantities() {
        let entries = vec![entry("c", 3 << 20, false), entry("b", 600 << 10, false), entry("a", 600 << 10, false)];
        assert_eq!(deleted(r#"{"maxCheckpointSize": "2Mi"}"#, entries.clone()), vec!["c"]);
        assert_eq!(deleted(r#"{"maxTotalSizePerContainer": "4000000"}"#, entries.clone()), vec!["a"]);
        assert!(deleted(r#"{"maxCheckpointSize": "2 furlongs"}"#, entries).is_empty(), "unsure: delete nothing");
        assert!(ckpt_guest_sdk::parse_settings::<Settings>(r#"{"max-checkpoints": 3}"#).is_err());
    }
}
