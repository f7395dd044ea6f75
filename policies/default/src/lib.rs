//! ckpt's default planner: exactly what the command-line flags say, as podman behaves, and for
//! `ckpt migrate` the strategy the user asked for. It is embedded in the ckpt binary, so the
//! default path goes through WebAssembly too.

use ckpt_guest_sdk::export_migration_planner;
use ckpt_guest_sdk::types::{CheckpointFacts, PlanDecision};
use ckpt_guest_sdk::{Describe, Migrator, Planner, plan_from_request};

/// The default policy takes no settings: `{}` or nothing.
#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NoSettings {}

pub struct DefaultPolicy;

impl Describe for DefaultPolicy {
    type Settings = NoSettings;
    const NAME: &'static str = "default";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
}

impl Planner for DefaultPolicy {
    fn plan(_settings: &NoSettings, facts: CheckpointFacts) -> PlanDecision {
        PlanDecision::Plan(plan_from_request(&facts))
    }
}

/// A migration goes as the user asked (`--strategy`), stop-and-copy by default.
impl Migrator for DefaultPolicy {}

export_migration_planner!(DefaultPolicy);

#[cfg(test)]
mod tests {
    use super::*;
    use ckpt_guest_sdk::types::{Compression, ExportTarget, PreDumpPlan, TargetKind};
    use ckpt_guest_sdk::{parse_settings, sample_facts};

    #[test]
    fn plans_what_the_request_says() {
        let mut facts = sample_facts("web");
        facts.request.options.leave_running = true;
        facts.request.exports.push(ExportTarget {
            kind: TargetKind::Archive,
            location: "/tmp/x.tar".into(),
            compression: Compression::Gzip,
            sealed_to: vec!["age1example".into()],
            signed: true,
        });
        let PlanDecision::Plan(plan) = DefaultPolicy::plan(&NoSettings {}, facts.clone()) else { panic!("denied") };
        assert!(plan.options.leave_running);
        assert_eq!(plan.exports, facts.request.exports);
        assert!(matches!(plan.pre_dump, PreDumpPlan::None));
        assert!(parse_settings::<NoSettings>("{\"x\":1}").is_err());
        assert!(parse_settings::<NoSettings>("").is_ok());
    }
}
