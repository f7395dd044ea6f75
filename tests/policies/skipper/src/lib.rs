//! A `ckpt:policy/planner@0.3.0` component written with the SDK's typed `Planner`: it plans what
//! the request says, but skips a scheduled run that comes after missed ones (no catching up) or
//! whose container carries the `skip-label` (any checkpoint of it, with `any-trigger`).

use ckpt_guest_sdk::export_planner;
use ckpt_guest_sdk::types::{CheckpointFacts, Plan, PlanDecision, PreDumpPlan};
use ckpt_guest_sdk::{Describe, Level, Planner, log};

#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct Settings {
    /// A container with this label is never checkpointed by a schedule.
    pub skip_label: String,
    /// Skip a labelled container whatever asked for the checkpoint (a user, a migration), not
    /// only a schedule.
    pub any_trigger: bool,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings { skip_label: "checkpoint.skip".to_string(), any_trigger: false }
    }
}

pub struct Skipper;

impl Describe for Skipper {
    type Settings = Settings;
    const NAME: &'static str = "skipper";
    const VERSION: &'static str = "0.2.0";
}

impl Planner for Skipper {
    fn plan(settings: &Settings, facts: CheckpointFacts) -> PlanDecision {
        if let Some(schedule) = &facts.request.schedule
            && schedule.missed_runs > 0
        {
            log(Level::Info, &format!("schedule {} missed {} runs", schedule.name, schedule.missed_runs));
            return PlanDecision::Skip(format!("{} runs were missed; not catching up", schedule.missed_runs));
        }
        let scheduled = facts.request.schedule.is_some();
        if (scheduled || settings.any_trigger) && facts.container.labels.iter().any(|kv| kv.key == settings.skip_label)
        {
            return PlanDecision::Skip(format!("the container has the label {}", settings.skip_label));
        }
        PlanDecision::Plan(Plan {
            options: facts.request.options,
            pre_dump: PreDumpPlan::None,
            exports: facts.request.exports.clone(),
            plaintext_spill: false,
            reasons: vec!["as requested".to_string()],
        })
    }
}

export_planner!(Skipper);
