//! The 0.2.0 contract: the generated bindings of its three worlds, sharing one set of types, and
//! the typed traits a policy implements.

use schemars::JsonSchema;
use serde::de::DeserializeOwned;

/// `ckpt:policy/retainer@0.2.0`, and the `types` and `log` interfaces the three worlds share.
/// The generated lifting of a catalog entry takes one argument per field.
#[allow(clippy::too_many_arguments)]
pub mod retainer {
    wit_bindgen::generate!({
        path: "../wit",
        world: "retainer",
        pub_export_macro: true,
        export_macro_name: "export_retainer_world",
        default_bindings_module: "ckpt_guest_sdk::v2::retainer",
        additional_derives: [PartialEq],
    });
}

/// `ckpt:policy/planner@0.2.0`.
pub mod planner {
    wit_bindgen::generate!({
        path: "../wit",
        world: "planner",
        pub_export_macro: true,
        export_macro_name: "export_planner_world",
        default_bindings_module: "ckpt_guest_sdk::v2::planner",
        with: {
            "ckpt:policy/types@0.2.0": crate::v2::retainer::ckpt::policy::types,
            "ckpt:policy/log@0.2.0": crate::v2::retainer::ckpt::policy::log,
        },
    });
}

/// `ckpt:policy/gate@0.2.0`.
pub mod gate {
    wit_bindgen::generate!({
        path: "../wit",
        world: "gate",
        pub_export_macro: true,
        export_macro_name: "export_gate_world",
        default_bindings_module: "ckpt_guest_sdk::v2::gate",
        with: {
            "ckpt:policy/types@0.2.0": crate::v2::retainer::ckpt::policy::types,
            "ckpt:policy/log@0.2.0": crate::v2::retainer::ckpt::policy::log,
        },
    });
}

pub use retainer::ckpt::policy::log::Level;
pub use retainer::ckpt::policy::types;
use types::*;

/// Logs through the host (bounded there); natively, into the buffer [`crate::take_logs`] reads.
pub fn log(level: Level, message: &str) {
    #[cfg(target_family = "wasm")]
    retainer::ckpt::policy::log::log(level, message);
    #[cfg(not(target_family = "wasm"))]
    {
        let level = match level {
            Level::Debug => crate::Level::Debug,
            Level::Info => crate::Level::Info,
            Level::Warn => crate::Level::Warn,
            Level::Error => crate::Level::Error,
        };
        crate::log(level, message);
    }
}

/// What every policy says about itself.
pub trait Describe {
    /// Its settings document; `{}` or no settings at all give `Settings::default()`.
    type Settings: DeserializeOwned + JsonSchema + Default;
    const NAME: &'static str;
    const VERSION: &'static str;
}

/// Decides how a container is checkpointed, and whether pre-dump rounds go on.
pub trait Planner: Describe {
    fn plan(settings: &Self::Settings, facts: CheckpointFacts) -> PlanDecision;

    /// After each pre-dump round; only a plan with pre-dump rounds asks. Dumps now unless
    /// overridden.
    fn after_round(_settings: &Self::Settings, _facts: CheckpointFacts, _rounds: Vec<RoundStats>) -> RoundDecision {
        RoundDecision { action: RoundAction::DumpNow, reason: "no more rounds planned".to_string() }
    }
}

/// Decides whether a finished export may be published, and how narrowed.
pub trait Gate: Describe {
    fn gate(settings: &Self::Settings, facts: ExportFacts) -> GateDecision;
}

/// Decides which of one container's catalog entries to delete.
pub trait Retainer: Describe {
    fn retain(settings: &Self::Settings, facts: RetainFacts) -> Vec<Deletion>;
}

/// Parses a settings document; empty means `{}`.
pub fn parse_settings<S: DeserializeOwned>(settings: &str) -> Result<S, String> {
    crate::settings(settings)
}

/// The JSON Schema of `S`, generated.
pub fn settings_schema<S: JsonSchema>() -> String {
    serde_json::to_string(&schemars::schema_for!(S)).unwrap_or_else(|_| "{}".to_string())
}

pub fn describe<P: Describe>(decisions: &[DecisionKind]) -> PolicyInfo {
    PolicyInfo {
        name: P::NAME.to_string(),
        version: P::VERSION.to_string(),
        decisions: decisions.to_vec(),
        settings_schema: settings_schema::<P::Settings>(),
    }
}

/// The settings of a call: validated when the policy was loaded, so a failure here is the
/// host's, and the defaults stand in.
pub fn settings_of<P: Describe>(settings: &str) -> P::Settings {
    parse_settings(settings).unwrap_or_default()
}

/// Exports a [`Planner`] as the component's `planner` world.
#[macro_export]
macro_rules! export_planner {
    ($policy:ty) => {
        struct __CkptPlanner;
        impl $crate::v2::planner::Guest for __CkptPlanner {
            fn describe() -> $crate::v2::types::PolicyInfo {
                $crate::v2::describe::<$policy>(&[$crate::v2::types::DecisionKind::Plan, $crate::v2::types::DecisionKind::Round])
            }
            fn validate_settings(settings: String) -> Result<(), String> {
                $crate::v2::parse_settings::<<$policy as $crate::v2::Describe>::Settings>(&settings).map(drop)
            }
            fn plan(settings: String, facts: $crate::v2::types::CheckpointFacts) -> $crate::v2::types::PlanDecision {
                <$policy as $crate::v2::Planner>::plan(&$crate::v2::settings_of::<$policy>(&settings), facts)
            }
            fn after_round(
                settings: String,
                facts: $crate::v2::types::CheckpointFacts,
                rounds: Vec<$crate::v2::types::RoundStats>,
            ) -> $crate::v2::types::RoundDecision {
                <$policy as $crate::v2::Planner>::after_round(&$crate::v2::settings_of::<$policy>(&settings), facts, rounds)
            }
        }
        $crate::v2::planner::export_planner_world!(__CkptPlanner with_types_in $crate::v2::planner);
    };
}

/// Exports a [`Gate`] as the component's `gate` world.
#[macro_export]
macro_rules! export_gate {
    ($policy:ty) => {
        struct __CkptGate;
        impl $crate::v2::gate::Guest for __CkptGate {
            fn describe() -> $crate::v2::types::PolicyInfo {
                $crate::v2::describe::<$policy>(&[$crate::v2::types::DecisionKind::Gate])
            }
            fn validate_settings(settings: String) -> Result<(), String> {
                $crate::v2::parse_settings::<<$policy as $crate::v2::Describe>::Settings>(&settings).map(drop)
            }
            fn gate(settings: String, facts: $crate::v2::types::ExportFacts) -> $crate::v2::types::GateDecision {
                <$policy as $crate::v2::Gate>::gate(&$crate::v2::settings_of::<$policy>(&settings), facts)
            }
        }
        $crate::v2::gate::export_gate_world!(__CkptGate with_types_in $crate::v2::gate);
    };
}

/// Exports a [`Retainer`] as the component's `retainer` world.
#[macro_export]
macro_rules! export_retainer {
    ($policy:ty) => {
        struct __CkptRetainer;
        impl $crate::v2::retainer::Guest for __CkptRetainer {
            fn describe() -> $crate::v2::types::PolicyInfo {
                $crate::v2::describe::<$policy>(&[$crate::v2::types::DecisionKind::Retain])
            }
            fn validate_settings(settings: String) -> Result<(), String> {
                $crate::v2::parse_settings::<<$policy as $crate::v2::Describe>::Settings>(&settings).map(drop)
            }
            fn retain(settings: String, facts: $crate::v2::types::RetainFacts) -> Vec<$crate::v2::types::Deletion> {
                <$policy as $crate::v2::Retainer>::retain(&$crate::v2::settings_of::<$policy>(&settings), facts)
            }
        }
        $crate::v2::retainer::export_retainer_world!(__CkptRetainer with_types_in $crate::v2::retainer);
    };
}
