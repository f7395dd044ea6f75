//! A `ckpt:policy/planner@0.3.0` component that gives whatever answer its settings name, so that
//! the invariant matrix can put every answer a planner may give to every operation:
//! `{"answer": "plan" | "skip" | "deny" | "ignore-rootfs" | "ignore-volumes" | "redirect" |
//! "trap", "redirect-to": "/path/archive.tar.zst"}`.

use ckpt_guest_sdk::export_planner;
use ckpt_guest_sdk::types::{CheckpointFacts, Compression, ExportTarget, Plan, PlanDecision, PreDumpPlan, TargetKind};
use ckpt_guest_sdk::{Describe, Planner};

#[derive(Debug, Default, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct Settings {
    /// The answer to give.
    pub answer: String,
    /// With `redirect`: the archive every export is sent to instead.
    pub redirect_to: String,
}

pub struct Scripted;

impl Describe for Scripted {
    type Settings = Settings;
    const NAME: &'static str = "scripted";
    const VERSION: &'static str = "0.2.0";

    fn validate(settings: &Settings) -> Result<(), String> {
        const ANSWERS: [&str; 7] = ["plan", "skip", "deny", "ignore-rootfs", "ignore-volumes", "redirect", "trap"];
        if !ANSWERS.contains(&settings.answer.as_str()) {
            return Err(format!("answer {:?} is not one of {ANSWERS:?}", settings.answer));
        }
        if settings.answer == "redirect" && !settings.redirect_to.starts_with('/') {
            return Err("redirect needs redirect-to, an absolute path".into());
        }
        Ok(())
    }
}

impl Planner for Scripted {
    fn plan(settings: &Settings, facts: CheckpointFacts) -> PlanDecision {
        let mut plan = Plan {
            options: facts.request.options,
            pre_dump: PreDumpPlan::None,
            exports: facts.request.exports.clone(),
            plaintext_spill: false,
            reasons: vec![format!("scripted: {}", settings.answer)],
        };
        match settings.answer.as_str() {
            "skip" => return PlanDecision::Skip("scripted to skip".into()),
            "deny" => return PlanDecision::Deny(vec!["scripted to deny".into()]),
            "trap" => panic!("scripted to trap"),
            "ignore-rootfs" => plan.options.ignore_rootfs = true,
            "ignore-volumes" => plan.options.ignore_volumes = true,
            "redirect" => {
                plan.exports = vec![ExportTarget {
                    kind: TargetKind::Archive,
                    location: settings.redirect_to.clone(),
                    compression: Compression::Zstd,
                    sealed_to: vec![],
                    signed: false,
                }]
            }
            _ => {}
        }
        PlanDecision::Plan(plan)
    }
}

export_planner!(Scripted);
