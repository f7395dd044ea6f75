//! Migration: pre-dump until the dirty pages converge (where the host tracks dirty memory),
//! keep established TCP connections, and export to the target named in the settings.

// Written against the 0.1.0 contract on purpose: ckpt must keep loading such components.
#![allow(deprecated)]

use ckpt_guest_sdk::v1::types::*;
use ckpt_guest_sdk::v1::{Guest, Level, export_policy, info, log, plan_from_request, settings};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    /// Archive path; `{name}` and `{id}` are replaced with the container's.
    target: String,
    #[serde(default = "default_compression")]
    compression: String,
    #[serde(default = "default_max_rounds")]
    max_rounds: u32,
    #[serde(default = "default_stop_below")]
    stop_below_pages: u64,
    /// A round that writes more than this percentage of the previous one is not converging.
    #[serde(default = "default_shrink")]
    min_shrink_percent: u32,
    /// Deny instead of falling back to a single dump when the host cannot pre-dump.
    #[serde(default)]
    require_pre_dump: bool,
}

fn default_compression() -> String {
    "zstd".into()
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

const SCHEMA: &str = r#"{"type":"object","required":["target"],"additionalProperties":false,"properties":{
"target":{"type":"string"},"compression":{"enum":["zstd","gzip","none"]},"max_rounds":{"type":"integer","minimum":1,"maximum":16},
"stop_below_pages":{"type":"integer","minimum":0},"min_shrink_percent":{"type":"integer","minimum":1,"maximum":100},"require_pre_dump":{"type":"boolean"}}}"#;

fn parse(text: &str) -> Result<Settings, String> {
    let s: Settings = settings(text)?;
    if s.target.trim().is_empty() {
        return Err("settings: \"target\" must name an archive path".into());
    }
    if !(1..=16).contains(&s.max_rounds) {
        return Err(format!("settings: \"max_rounds\" must be 1 to 16, got {}", s.max_rounds));
    }
    if !(1..=100).contains(&s.min_shrink_percent) {
        return Err(format!("settings: \"min_shrink_percent\" must be 1 to 100, got {}", s.min_shrink_percent));
    }
    compression(&s.compression)?;
    Ok(s)
}

fn compression(name: &str) -> Result<Compression, String> {
    match name {
        "zstd" => Ok(Compression::Zstd),
        "gzip" => Ok(Compression::Gzip),
        "none" => Ok(Compression::None),
        other => Err(format!("settings: unknown compression {other:?}; use zstd, gzip or none")),
    }
}

pub struct Migration;

impl Guest for Migration {
    fn describe() -> PolicyInfo {
        info("migration", env!("CARGO_PKG_VERSION"), &[DecisionKind::Plan, DecisionKind::Round], SCHEMA)
    }

    fn validate_settings(settings: String) -> Result<(), String> {
        parse(&settings).map(drop)
    }

    fn plan(settings: String, facts: CheckpointFacts) -> PlanDecision {
        let s = match parse(&settings) {
            Ok(s) => s,
            Err(e) => return PlanDecision::Deny(vec![e]),
        };
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
        let compression = compression(&s.compression).expect("validated");
        plan.reasons.push(format!("export to {location}"));
        plan.exports = vec![ExportTarget { kind: TargetKind::Archive, location, compression }];
        PlanDecision::Plan(plan)
    }

    fn after_round(settings: String, _facts: CheckpointFacts, rounds: Vec<RoundStats>) -> RoundDecision {
        let Ok(s) = parse(&settings) else {
            return RoundDecision { action: RoundAction::Abort, reason: "settings became invalid".into() };
        };
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

    fn gate(_settings: String, _facts: ExportFacts) -> GateDecision {
        GateDecision::Allow
    }
}

export_policy!(Migration);

#[cfg(test)]
mod tests {
    use super::*;
    use ckpt_guest_sdk::v1::sample_facts;

    fn round(round: u32, pages_written: u64) -> RoundStats {
        RoundStats { round, pages_scanned: 131072, pages_written, frozen_time_us: 1000, duration_us: 50000 }
    }

    const SETTINGS: &str = r#"{"target": "/var/tmp/{name}.tar.zst", "stop_below_pages": 100}"#;

    #[test]
    fn converges_then_dumps() {
        let facts = sample_facts("db");
        let next = |rounds: Vec<RoundStats>| Migration::after_round(SETTINGS.into(), facts.clone(), rounds).action;
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
        let PlanDecision::Plan(plan) = Migration::plan(SETTINGS.into(), facts.clone()) else { panic!("denied") };
        assert!(plan.options.tcp_established);
        assert!(matches!(plan.pre_dump, PreDumpPlan::Converge(_)));
        assert_eq!(plan.exports[0].location, "/var/tmp/db.tar.zst");
        facts.host.memory_tracking = false;
        let PlanDecision::Plan(plan) = Migration::plan(SETTINGS.into(), facts) else { panic!("denied") };
        assert!(matches!(plan.pre_dump, PreDumpPlan::None));
        assert!(ckpt_guest_sdk::v1::take_logs().iter().any(|(_, m)| m.contains("no memory dirty tracking")));
    }

    #[test]
    fn rejects_bad_settings() {
        assert!(Migration::validate_settings("{}".into()).unwrap_err().contains("target"));
        assert!(Migration::validate_settings(r#"{"target":"/x","max_rounds":0}"#.into()).is_err());
        assert!(Migration::validate_settings(r#"{"target":"/x","bogus":1}"#.into()).is_err());
    }
}
