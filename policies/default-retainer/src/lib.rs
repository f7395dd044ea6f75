//! ckpt's default retainer: keep each container's newest `keep-last` checkpoints, within
//! `max-total-bytes`, and never a pinned one. It is embedded in the ckpt binary, so retention
//! is a policy decision made in WebAssembly too.

use ckpt_guest_sdk::export_retainer;
use ckpt_guest_sdk::types::{Deletion, RetainFacts};
use ckpt_guest_sdk::{Describe, Retainer};

/// The retention settings of a schedule.
#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct Settings {
    /// How many of a container's newest checkpoints to keep, pinned ones not counted.
    pub keep_last: u32,
    /// At most this many bytes of a container's checkpoints, pinned ones not counted.
    pub max_total_bytes: Option<u64>,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings { keep_last: 10, max_total_bytes: None }
    }
}

pub struct DefaultRetainer;

impl Describe for DefaultRetainer {
    type Settings = Settings;
    const NAME: &'static str = "default-retainer";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
}

impl Retainer for DefaultRetainer {
    fn retain(settings: &Settings, facts: RetainFacts) -> Vec<Deletion> {
        let mut kept = 0u32;
        let mut kept_bytes = 0u64;
        let mut deletions = Vec::new();
        // Newest first, as the host gives them: the oldest go first.
        for entry in facts.entries.iter().filter(|e| !e.pinned) {
            let reason = if kept >= settings.keep_last {
                Some(format!("older than the newest {} (keep-last)", settings.keep_last))
            } else {
                settings.max_total_bytes.filter(|max| kept_bytes + entry.size_bytes > *max).map(|max| {
                    format!(
                        "keeping it would pass {max} bytes for container {:?} (max-total-bytes)",
                        facts.container_name
                    )
                })
            };
            match reason {
                Some(reason) => deletions.push(Deletion { id: entry.id.clone(), reason }),
                None => {
                    kept += 1;
                    kept_bytes += entry.size_bytes;
                }
            }
        }
        deletions
    }
}

export_retainer!(DefaultRetainer);

#[cfg(test)]
mod tests {
    use super::*;
    use ckpt_guest_sdk::types::{CatalogEntry, EntryKind};

    fn entry(id: &str, size: u64, pinned: bool) -> CatalogEntry {
        CatalogEntry {
            id: id.into(),
            kind: EntryKind::Archive,
            location: format!("/srv/{id}.tar.zst"),
            size_bytes: size,
            created: "2026-11-28T00:00:00Z".into(),
            created_unix_ms: 0,
            trigger: "schedule".into(),
            schedule: Some("nightly".into()),
            pinned,
            policy_digest: "blake3:0".into(),
        }
    }

    fn facts(entries: Vec<CatalogEntry>) -> RetainFacts {
        RetainFacts {
            container_id: "0".repeat(64),
            container_name: "web".into(),
            entries,
            now: "2026-11-28T00:00:00Z".into(),
            now_unix_ms: 0,
        }
    }

    fn deleted(settings: &Settings, entries: Vec<CatalogEntry>) -> Vec<String> {
        DefaultRetainer::retain(settings, facts(entries)).into_iter().map(|d| d.id).collect()
    }

    #[test]
    fn keeps_the_newest_and_never_a_pinned_one() {
        let two = Settings { keep_last: 2, max_total_bytes: None };
        let entries = vec![
            entry("e", 1, false),
            entry("d", 1, true),
            entry("c", 1, false),
            entry("b", 1, false),
            entry("a", 1, true),
        ];
        assert_eq!(deleted(&two, entries), vec!["b"]);
    }

    #[test]
    fn keeps_within_the_byte_budget() {
        let budget = Settings { keep_last: 10, max_total_bytes: Some(250) };
        let entries = vec![entry("c", 100, false), entry("b", 100, false), entry("a", 100, false)];
        assert_eq!(deleted(&budget, entries), vec!["a"]);
    }

    #[test]
    fn settings_are_kebab_case_and_checked() {
        let parsed: Settings = ckpt_guest_sdk::parse_settings(r#"{"keep-last": 3}"#).unwrap();
        assert_eq!(parsed.keep_last, 3);
        assert!(ckpt_guest_sdk::parse_settings::<Settings>(r#"{"keep_last": 3}"#).is_err());
        assert!(ckpt_guest_sdk::settings_schema::<Settings>().contains("keep-last"));
    }
}
