//! Migration: pre-dump until the dirty pages converge (where the host tracks dirty memory),
//! keep established TCP connections, and export to the target named in the settings.

use ckpt_guest_sdk::export_migration_planner;
use ckpt_guest_sdk::migration::{MigrationFacts, Strategy, StrategyChoice, StrategyDecision};
use ckpt_guest_sdk::types::*;
use ckpt_guest_sdk::{Describe, Level, Migrator, Planner, log, plan_from_request, requested_strategy};
use serde::Deserialize;

/// The settings, in kebab-case as every ckpt document is. The snake_case names of the first
/// release are still read, so settings saved in schedules keep working.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Settings {
    /// Archive path; `{name}` and `{id}` are replaced with the container's.
    target: String,
    #[serde(default)]
    compression: CompressionSetting,
    #[serde(default = "default_max_rounds", alias = "max_rounds")]
    #[schemars(range(min = 1, max = 16))]
    max_rounds: u32,
    #[serde(default = "default_stop_below", alias = "stop_below_pages")]
    stop_below_pages: u64,
    /// A round that writes more than this percentage of the previous one is not converging.
    #[serde(default = "default_shrink", alias = "min_shrink_percent")]
    #[schemars(range(min = 1, max = 100))]
    min_shrink_percent: u32,
    /// Deny instead of falling back to a single dump when the host cannot pre-dump.
    #[serde(default, alias = "require_pre_dump")]
    require_pre_dump: bool,
    /// `ckpt migrate`: containers with more memory than this move post-copy where the host
    /// can, so their downtime does not grow with their memory.
    #[serde(default = "default_post_copy_above", alias = "post_copy_above_bytes")]
    post_copy_above_bytes: u64,
    /// `ckpt migrate`: containers whose memory would take longer than this to cross the link,
    /// at the rate ckpt measured on it before the move, move post-copy where the host can,
    /// whatever their size: stop-and-copy would freeze them that long.
    #[serde(default = "default_max_stop_copy_ms")]
    max_stop_copy_ms: u64,
    /// `ckpt migrate`: refuse to move a container while clients hold connections to its
    /// published ports, which cannot follow it to another host (its address is that host's).
    #[serde(default)]
    keep_connections: bool,
    /// Seal the archive to these recipients (age `age1…` or SSH public keys); the host adds
    /// its own and never fewer.
    #[serde(default)]
    seal_to: Vec<String>,
    /// Sign the archive with the host's key.
    #[serde(default)]
    sign: bool,
    /// When a sealed dump does not fit in memory: let it go to a disk in the clear.
    #[serde(default)]
    plaintext_spill: bool,
}

/// The connections clients hold to the container's published ports, from the facts' `ext`
/// (`network.connections.PORT/PROTO`).
fn client_connections(facts: &CheckpointFacts) -> u64 {
    facts
        .ext
        .iter()
        .filter(|kv| kv.key.starts_with("network.connections."))
        .filter_map(|kv| kv.value.parse::<u64>().ok())
        .sum()
}

#[derive(Debug, Clone, Copy, Default, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
enum CompressionSetting {
    #[default]
    Zstd,
    Gzip,
    None,
}

impl From<CompressionSetting> for Compression {
    fn from(setting: CompressionSetting) -> Compression {
        match setting {
            CompressionSetting::Zstd => Compression::Zstd,
            CompressionSetting::Gzip => Compression::Gzip,
            CompressionSetting::None => Compression::None,
        }
    }
}

fn default_post_copy_above() -> u64 {
    1 << 30
}
fn default_max_stop_copy_ms() -> u64 {
    1000
}
fn default_max_rounds() -> u32 {
    5
}
fn default_stop_below() -> u64 {
    256
}
fn default_shrink() -> u32 {
    80
}

pub struct Migration;

impl Describe for Migration {
    type Settings = Settings;
    const NAME: &'static str = "migration";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");

    fn validate(s: &Settings) -> Result<(), String> {
        if s.target.trim().is_empty() {
            return Err("settings: \"target\" must name an archive path".into());
        }
        if !(1..=16).contains(&s.max_rounds) {
            return Err(format!("settings: \"max-rounds\" must be 1 to 16, got {}", s.max_rounds));
        }
        if !(1..=100).contains(&s.min_shrink_percent) {
            return Err(format!("settings: \"min-shrink-percent\" must be 1 to 100, got {}", s.min_shrink_percent));
        }
        Ok(())
    }
}

impl Planner for Migration {
    fn plan(s: &Settings, facts: CheckpointFacts) -> PlanDecision {
        let mut plan = plan_from_request(&facts);
        plan.reasons.clear();
        if facts.container.tcp_established > 0 {
            plan.options.tcp_established = true;
            plan.reasons
                .push(format!("{} established TCP connections: --tcp-established", facts.container.tcp_established));
        }
        if facts.container.file_locks > 0 {
            plan.options.file_locks = true;
            plan.reasons.push(format!("{} file locks held: --file-locks", facts.container.file_locks));
        }
        if facts.host.memory_tracking || s.require_pre_dump {
            plan.pre_dump = PreDumpPlan::Converge(Convergence {
                max_rounds: s.max_rounds,
                stop_below_pages: s.stop_below_pages,
                min_shrink_percent: s.min_shrink_percent,
            });
            plan.reasons.push(format!(
                "pre-dump until fewer than {} dirty pages, at most {} rounds",
                s.stop_below_pages, s.max_rounds
            ));
        } else {
            log(Level::Warn, "this host has no memory dirty tracking: one final dump, no pre-dump rounds");
            plan.reasons.push("no memory dirty tracking on this host: a single dump".into());
        }
        let location = s.target.replace("{name}", &facts.container.name).replace("{id}", &facts.container.id);
        let compression = s.compression.into();
        plan.reasons.push(format!("export to {location}"));
        if !s.seal_to.is_empty() {
            plan.reasons.push(format!("sealed to {} recipient(s)", s.seal_to.len()));
        }
        plan.plaintext_spill = s.plaintext_spill;
        plan.exports = vec![ExportTarget {
            kind: TargetKind::Archive,
            location,
            compression,
            sealed_to: s.seal_to.clone(),
            signed: s.sign,
        }];
        PlanDecision::Plan(plan)
    }

    fn after_round(s: &Settings, _facts: CheckpointFacts, rounds: Vec<RoundStats>) -> RoundDecision {
        let Some(last) = rounds.last() else {
            return RoundDecision { action: RoundAction::AnotherRound, reason: "no round yet".into() };
        };
        if last.pages_written < s.stop_below_pages {
            return RoundDecision {
                action: RoundAction::DumpNow,
                reason: format!("converged: round {} wrote {} pages", last.round, last.pages_written),
            };
        }
        if rounds.len() as u32 >= s.max_rounds {
            return RoundDecision { action: RoundAction::DumpNow, reason: format!("reached {} rounds", s.max_rounds) };
        }
        if let [.., previous, _] = rounds.as_slice()
            && last.pages_written * 100 > previous.pages_written * u64::from(s.min_shrink_percent)
        {
            return RoundDecision {
                action: RoundAction::DumpNow,
                reason: format!("not converging: {} pages after {}", last.pages_written, previous.pages_written),
            };
        }
        RoundDecision {
            action: RoundAction::AnotherRound,
            reason: format!("round {} wrote {} pages", last.round, last.pages_written),
        }
    }
}

/// The user's `--strategy` stands when the host can do it. Otherwise a container whose memory
/// is large moves post-copy (downtime flat in memory size), else pre-copy (a short final dump),
/// else stop-and-copy.
impl Migrator for Migration {
    fn strategy(s: &Settings, facts: CheckpointFacts, migration: MigrationFacts) -> StrategyDecision {
        let connections = client_connections(&facts);
        if s.keep_connections && connections > 0 {
            let reason = format!(
                "clients hold {connections} connection(s) to its published ports, which cannot follow it to {} (keep-connections)",
                migration.destination
            );
            log(Level::Info, &reason);
            return StrategyDecision::Deny(vec![reason]);
        }
        if migration.requested.is_some() {
            return requested_strategy(&migration);
        }
        let can = |strategy| migration.possible.contains(&strategy);
        let memory = facts.container.memory_bytes;
        // How long the memory takes to cross the link ckpt measured, if it did.
        let copy_ms = link_rate(&facts).map(|rate| memory.saturating_mul(1000) / rate.max(1));
        let (strategy, reason) = if memory > s.post_copy_above_bytes && can(Strategy::PostCopy) {
            (Strategy::PostCopy, format!("{memory} bytes of memory, above {}: post-copy", s.post_copy_above_bytes))
        } else if let Some(ms) = copy_ms.filter(|ms| *ms > s.max_stop_copy_ms && can(Strategy::PostCopy)) {
            let rate = link_rate(&facts).unwrap_or_default();
            let reason = format!(
                "{memory} bytes of memory take about {ms} ms at the link's {rate} bytes/s, above {} ms: post-copy",
                s.max_stop_copy_ms
            );
            (Strategy::PostCopy, reason)
        } else if can(Strategy::PreCopy) {
            (Strategy::PreCopy, "the host tracks dirty memory: pre-copy rounds, then a short dump".to_string())
        } else {
            (Strategy::StopAndCopy, "neither post-copy nor pre-copy is possible here".to_string())
        };
        log(Level::Info, &reason);
        StrategyDecision::Choose(StrategyChoice { strategy, reason })
    }
}

/// The link's rate in bytes a second, as `ckpt migrate` measured it (`ext`'s
/// `link-bytes-per-second`); none over a registry, or where the far side could not say.
fn link_rate(facts: &CheckpointFacts) -> Option<u64> {
    facts.ext.iter().find(|kv| kv.key == "link-bytes-per-second").and_then(|kv| kv.value.parse().ok())
}

export_migration_planner!(Migration);

#[cfg(test)]
mod tests {
    use super::*;
    use ckpt_guest_sdk::{sample_facts, settings_of};

    fn settings() -> Settings {
        settings_of::<Migration>(SETTINGS).unwrap()
    }

    fn round(round: u32, pages_written: u64) -> RoundStats {
        RoundStats { round, pages_scanned: 131072, pages_written, frozen_time_us: 1000, duration_us: 50000 }
    }

    const SETTINGS: &str = r#"{"target": "/var/tmp/{name}.tar.zst", "stop-below-pages": 100}"#;

    #[test]
    fn big_containers_move_post_copy_where_the_host_can() {
        let migration = |possible: Vec<Strategy>, requested| MigrationFacts {
            destination: "ssh://far".into(),
            transport: "ssh".into(),
            possible,
            requested,
        };
        let chosen = |memory: u64, m: MigrationFacts| {
            let mut facts = sample_facts("db");
            facts.container.memory_bytes = memory;
            match Migration::strategy(&settings(), facts, m) {
                StrategyDecision::Choose(c) => Some(c.strategy),
                StrategyDecision::Deny(_) => None,
            }
        };
        let all = vec![Strategy::StopAndCopy, Strategy::PreCopy, Strategy::PostCopy];
        assert_eq!(chosen(2 << 30, migration(all.clone(), None)), Some(Strategy::PostCopy));
        assert_eq!(chosen(64 << 20, migration(all.clone(), None)), Some(Strategy::PreCopy));
        assert_eq!(chosen(2 << 30, migration(vec![Strategy::StopAndCopy], None)), Some(Strategy::StopAndCopy));
        assert_eq!(chosen(2 << 30, migration(all, Some(Strategy::StopAndCopy))), Some(Strategy::StopAndCopy));
        assert_eq!(chosen(1, migration(vec![Strategy::StopAndCopy], Some(Strategy::PostCopy))), None);
    }

    #[test]
    fn a_slow_link_moves_even_a_small_container_post_copy() {
        let migration = MigrationFacts {
            destination: "ssh://far".into(),
            transport: "ssh".into(),
            possible: vec![Strategy::StopAndCopy, Strategy::PostCopy],
            requested: None,
        };
        let chosen = |rate: Option<&str>| {
            let mut facts = sample_facts("db");
            facts.container.memory_bytes = 256 << 20;
            if let Some(rate) = rate {
                facts.ext.push(KeyValue { key: "link-bytes-per-second".into(), value: rate.into() });
            }
            match Migration::strategy(&settings(), facts, migration.clone()) {
                StrategyDecision::Choose(c) => (c.strategy, c.reason),
                StrategyDecision::Deny(reasons) => panic!("{reasons:?}"),
            }
        };
        // 256 MiB at 10 MB/s: 26 s of stop-and-copy.
        let (strategy, reason) = chosen(Some("10000000"));
        assert_eq!(strategy, Strategy::PostCopy);
        assert!(reason.contains("26843 ms") && reason.contains("above 1000 ms"), "{reason}");
        // At 1 GB/s, or unmeasured, it is small enough to stop and copy.
        assert_eq!(chosen(Some("1000000000")).0, Strategy::StopAndCopy);
        assert_eq!(chosen(None).0, Strategy::StopAndCopy);
        assert_eq!(chosen(Some("fast")).0, Strategy::StopAndCopy, "a rate it cannot read is no rate");
    }

    #[test]
    fn clients_connected_to_published_ports_keep_the_container_when_asked() {
        let migration = MigrationFacts {
            destination: "ssh://far".into(),
            transport: "ssh".into(),
            possible: vec![Strategy::StopAndCopy],
            requested: None,
        };
        let mut facts = sample_facts("web");
        facts.ext.push(KeyValue { key: "network.connections.80/tcp".into(), value: "2".into() });
        let keep = settings_of::<Migration>(r#"{"target": "/x", "keep-connections": true}"#).unwrap();
        let StrategyDecision::Deny(reasons) = Migration::strategy(&keep, facts.clone(), migration.clone()) else {
            panic!("moved while clients were connected")
        };
        assert!(reasons[0].contains("2 connection(s)"), "{reasons:?}");
        assert!(matches!(Migration::strategy(&settings(), facts, migration), StrategyDecision::Choose(_)));
    }

    #[test]
    fn converges_then_dumps() {
        let facts = sample_facts("db");
        let next = |rounds: Vec<RoundStats>| Migration::after_round(&settings(), facts.clone(), rounds).action;
        assert_eq!(next(vec![round(1, 100000)]), RoundAction::AnotherRound);
        assert_eq!(next(vec![round(1, 100000), round(2, 20000)]), RoundAction::AnotherRound);
        assert_eq!(next(vec![round(1, 100000), round(2, 20000), round(3, 50)]), RoundAction::DumpNow);
        assert_eq!(next(vec![round(1, 100000), round(2, 95000)]), RoundAction::DumpNow, "not converging");
    }

    #[test]
    fn plans_tcp_pre_dump_and_export() {
        let mut facts = sample_facts("db");
        facts.container.tcp_established = 2;
        facts.host.memory_tracking = true;
        let PlanDecision::Plan(plan) = Migration::plan(&settings(), facts.clone()) else { panic!("denied") };
        assert!(plan.options.tcp_established);
        assert!(matches!(plan.pre_dump, PreDumpPlan::Converge(_)));
        assert_eq!(plan.exports[0].location, "/var/tmp/db.tar.zst");
        facts.host.memory_tracking = false;
        let PlanDecision::Plan(plan) = Migration::plan(&settings(), facts) else { panic!("denied") };
        assert!(matches!(plan.pre_dump, PreDumpPlan::None));
        assert!(ckpt_guest_sdk::take_logs().iter().any(|(_, m)| m.contains("no memory dirty tracking")));
    }

    #[test]
    fn rejects_bad_settings() {
        assert!(settings_of::<Migration>("{}").unwrap_err().contains("target"));
        assert!(settings_of::<Migration>(r#"{"target":"/x","max-rounds":0}"#).is_err());
        assert!(settings_of::<Migration>(r#"{"target":"/x","bogus":1}"#).is_err());
        assert!(settings_of::<Migration>(r#"{"target":"/x","compression":"lz4"}"#).unwrap_err().contains("zstd"));
    }

    /// Settings saved with the first release's snake_case names still read the same.
    #[test]
    fn reads_the_first_releases_names_too() {
        let old = settings_of::<Migration>(r#"{"target":"/x","max_rounds":3,"stop_below_pages":7}"#).unwrap();
        let new = settings_of::<Migration>(r#"{"target":"/x","max-rounds":3,"stop-below-pages":7}"#).unwrap();
        assert_eq!(format!("{old:?}"), format!("{new:?}"));
    }

    /// The schema tells an editor what the host checks: the names, the compressions, the ranges.
    #[test]
    fn the_schema_carries_names_enums_and_ranges() {
        let schema: serde_json::Value = serde_json::from_str(&ckpt_guest_sdk::settings_schema::<Settings>()).unwrap();
        let properties = &schema["properties"];
        assert_eq!(properties["max-rounds"]["minimum"], 1);
        assert_eq!(properties["max-rounds"]["maximum"], 16);
        assert_eq!(properties["min-shrink-percent"]["maximum"], 100);
        let text = schema.to_string();
        assert!(text.contains("\"gzip\"") && text.contains("post-copy-above-bytes"), "{text}");
    }
}
