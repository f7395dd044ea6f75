//! ckpt's default policy: exactly what the command-line flags say, as podman behaves. It is
//! embedded in the ckpt binary, so the default path goes through WebAssembly too.

// Written against the 0.1.0 contract on purpose: ckpt must keep loading such components.
#![allow(deprecated)]

use ckpt_guest_sdk::v1::types::*;
use ckpt_guest_sdk::v1::{Guest, export_policy, info, plan_from_request};

pub struct DefaultPolicy;

impl Guest for DefaultPolicy {
    fn describe() -> PolicyInfo {
        info(
            "default",
            env!("CARGO_PKG_VERSION"),
            &[DecisionKind::Plan, DecisionKind::Round, DecisionKind::Gate],
            r#"{"type":"object","additionalProperties":false}"#,
        )
    }

    fn validate_settings(settings: String) -> Result<(), String> {
        match settings.trim() {
            "" | "{}" => Ok(()),
            other => Err(format!("the default policy takes no settings, got {other}")),
        }
    }

    fn plan(_settings: String, facts: CheckpointFacts) -> PlanDecision {
        PlanDecision::Plan(plan_from_request(&facts))
    }

    fn after_round(_settings: String, _facts: CheckpointFacts, _rounds: Vec<RoundStats>) -> RoundDecision {
        RoundDecision { action: RoundAction::DumpNow, reason: "the default policy plans no pre-dump rounds".into() }
    }

    fn gate(_settings: String, _facts: ExportFacts) -> GateDecision {
        GateDecision::Allow
    }
}

export_policy!(DefaultPolicy);

#[cfg(test)]
mod tests {
    use super::*;
    use ckpt_guest_sdk::v1::sample_facts;

    #[test]
    fn plans_what_the_request_says() {
        let mut facts = sample_facts("web");
        facts.request.options.leave_running = true;
        facts.request.exports.push(ExportTarget {
            kind: TargetKind::Archive,
            location: "/tmp/x.tar".into(),
            compression: Compression::Gzip,
        });
        let PlanDecision::Plan(plan) = DefaultPolicy::plan(String::new(), facts.clone()) else { panic!("denied") };
        assert!(plan.options.leave_running);
        assert_eq!(plan.exports, facts.request.exports);
        assert!(matches!(plan.pre_dump, PreDumpPlan::None));
        assert!(DefaultPolicy::validate_settings("{\"x\":1}".into()).is_err());
    }
}
