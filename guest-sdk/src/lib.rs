//! The crate policy authors use to write ckpt policies in Rust: the `ckpt:policy@0.3.0` contract,
//! one small world per role, with typed settings.
//!
//! Implement [`Planner`], [`Gate`], [`Retainer`] or [`ClusterRetainer`] and export it with
//! [`export_planner!`], [`export_gate!`], [`export_retainer!`] or [`export_cluster_retainer!`].
//! The settings are a serde type: the SDK parses them (unknown keys are errors when the type
//! says `deny_unknown_fields`) and generates their JSON Schema for `describe` with schemars.
//! A policy's logic can be unit-tested natively, with plain `cargo test`. The 0.1.0 contract is
//! in [`v1`], deprecated.

use schemars::JsonSchema;
use serde::de::DeserializeOwned;

/// `ckpt:policy/retainer@0.3.0`, and the `types` and `log` interfaces the three worlds share.
/// The generated lifting of a catalog entry takes one argument per field.
#[allow(clippy::too_many_arguments)]
pub mod retainer {
    wit_bindgen::generate!({
        path: "../wit",
        world: "retainer",
        pub_export_macro: true,
        export_macro_name: "export_retainer_world",
        default_bindings_module: "ckpt_guest_sdk::retainer",
        additional_derives: [PartialEq],
    });
}

/// `ckpt:policy/planner@0.3.0`.
pub mod planner {
    wit_bindgen::generate!({
        path: "../wit",
        world: "planner",
        pub_export_macro: true,
        export_macro_name: "export_planner_world",
        default_bindings_module: "ckpt_guest_sdk::planner",
        with: {
            "ckpt:policy/types@0.3.0": crate::retainer::ckpt::policy::types,
            "ckpt:policy/log@0.3.0": crate::retainer::ckpt::policy::log,
        },
    });
}

/// `ckpt:policy/migration-planner@0.3.0`, and with it the `migration` interface.
pub mod migration_planner {
    wit_bindgen::generate!({
        path: "../wit",
        world: "migration-planner",
        pub_export_macro: true,
        export_macro_name: "export_migration_planner_world",
        default_bindings_module: "ckpt_guest_sdk::migration_planner",
        with: {
            "ckpt:policy/types@0.3.0": crate::retainer::ckpt::policy::types,
            "ckpt:policy/log@0.3.0": crate::retainer::ckpt::policy::log,
        },
        additional_derives: [PartialEq],
    });
}

/// `ckpt:policy/gate@0.3.0`.
pub mod gate {
    wit_bindgen::generate!({
        path: "../wit",
        world: "gate",
        pub_export_macro: true,
        export_macro_name: "export_gate_world",
        default_bindings_module: "ckpt_guest_sdk::gate",
        with: {
            "ckpt:policy/types@0.3.0": crate::retainer::ckpt::policy::types,
            "ckpt:policy/log@0.3.0": crate::retainer::ckpt::policy::log,
        },
    });
}

/// `ckpt:policy/cluster-retainer@0.3.0`, and with it the `cluster` interface. Its `retain` takes
/// the facts' lifted fields as arguments, one each.
#[allow(clippy::too_many_arguments)]
pub mod cluster_retainer {
    wit_bindgen::generate!({
        path: "../wit",
        world: "cluster-retainer",
        pub_export_macro: true,
        export_macro_name: "export_cluster_retainer_world",
        default_bindings_module: "ckpt_guest_sdk::cluster_retainer",
        with: {
            "ckpt:policy/types@0.3.0": crate::retainer::ckpt::policy::types,
            "ckpt:policy/log@0.3.0": crate::retainer::ckpt::policy::log,
        },
        additional_derives: [PartialEq],
    });
}

pub use cluster_retainer::ckpt::policy::cluster;
pub use migration_planner::ckpt::policy::migration;
pub use retainer::ckpt::policy::log::Level;
pub use retainer::ckpt::policy::types;
use types::*;

pub use serde_json;

/// Logs through the host (bounded there); natively, into a buffer that [`take_logs`] returns, so
/// that a policy's logic can be tested with plain `cargo test`.
pub fn log(level: Level, message: &str) {
    #[cfg(target_family = "wasm")]
    retainer::ckpt::policy::log::log(level, message);
    #[cfg(not(target_family = "wasm"))]
    NATIVE_LOGS.with(|logs| logs.borrow_mut().push((level, message.to_string())));
}

#[cfg(not(target_family = "wasm"))]
thread_local! {
    static NATIVE_LOGS: std::cell::RefCell<Vec<(Level, String)>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The lines logged so far in a native test.
#[cfg(not(target_family = "wasm"))]
pub fn take_logs() -> Vec<(Level, String)> {
    NATIVE_LOGS.with(|logs| std::mem::take(&mut *logs.borrow_mut()))
}

/// What every policy says about itself, and its settings.
pub trait Describe {
    /// Its settings document, parsed with serde (no settings at all read as `{}`); its JSON
    /// Schema is generated for `describe`.
    type Settings: DeserializeOwned + JsonSchema;
    const NAME: &'static str;
    const VERSION: &'static str;

    /// Checks beyond the type's own (ranges, say); called when the policy is loaded.
    fn validate(_settings: &Self::Settings) -> Result<(), String> {
        Ok(())
    }
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

/// A planner that also chooses how each container migrates (`ckpt migrate`).
pub trait Migrator: Planner {
    /// One of `migration.possible`; unless overridden, what the user asked for, else
    /// stop-and-copy (see [`requested_strategy`]).
    fn strategy(
        _settings: &Self::Settings,
        _facts: CheckpointFacts,
        migration: migration::MigrationFacts,
    ) -> migration::StrategyDecision {
        requested_strategy(&migration)
    }
}

/// What the user asked for, if this host can do it; stop-and-copy when nothing was asked.
pub fn requested_strategy(facts: &migration::MigrationFacts) -> migration::StrategyDecision {
    use migration::{Strategy, StrategyChoice, StrategyDecision};
    match facts.requested {
        Some(asked) if facts.possible.contains(&asked) => {
            StrategyDecision::Choose(StrategyChoice { strategy: asked, reason: "as requested".to_string() })
        }
        Some(asked) => {
            let name = match asked {
                Strategy::StopAndCopy => "stop-and-copy",
                Strategy::PreCopy => "pre-copy",
                Strategy::PostCopy => "post-copy",
            };
            StrategyDecision::Deny(vec![format!("{name} was requested, but this host cannot do it")])
        }
        None => StrategyDecision::Choose(StrategyChoice {
            strategy: Strategy::StopAndCopy,
            reason: "the default: freeze, dump, copy, restore".to_string(),
        }),
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

/// A [`Retainer`] that also weighs what the cluster says: whether the Kubernetes container, pod
/// or namespace it is asked about still exists.
pub trait ClusterRetainer: Describe {
    fn retain(settings: &Self::Settings, facts: RetainFacts, cluster: cluster::ClusterFacts) -> Vec<Deletion>;
}

/// Parses a settings document; empty means `{}`.
pub fn parse_settings<S: DeserializeOwned>(settings: &str) -> Result<S, String> {
    let text = if settings.trim().is_empty() { "{}" } else { settings };
    serde_json::from_str(text).map_err(|e| format!("invalid settings: {e}"))
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

/// Parses and checks settings, as `validate-settings` and every call do.
pub fn settings_of<P: Describe>(settings: &str) -> Result<P::Settings, String> {
    let parsed = parse_settings(settings)?;
    P::validate(&parsed)?;
    Ok(parsed)
}

/// The plan that does exactly what the request says.
pub fn plan_from_request(facts: &CheckpointFacts) -> Plan {
    Plan {
        options: facts.request.options,
        pre_dump: PreDumpPlan::None,
        exports: facts.request.exports.clone(),
        plaintext_spill: false,
        reasons: vec!["as requested".to_string()],
    }
}

pub fn deny(reason: impl Into<String>) -> PlanDecision {
    PlanDecision::Deny(vec![reason.into()])
}

/// The value of a container label.
pub fn label<'a>(container: &'a ContainerFacts, key: &str) -> Option<&'a str> {
    container.labels.iter().find(|kv| kv.key == key).map(|kv| kv.value.as_str())
}

/// Facts for native unit tests: a running container and an empty request from the command line.
pub fn sample_facts(name: &str) -> CheckpointFacts {
    let options = CheckpointOptions {
        leave_running: false,
        tcp_established: false,
        file_locks: false,
        keep: false,
        ignore_rootfs: false,
        ignore_volumes: false,
        print_stats: false,
        pre_checkpoint: false,
        with_previous: false,
    };
    CheckpointFacts {
        container: ContainerFacts {
            id: "0".repeat(64),
            name: name.to_string(),
            image: "busybox:latest".to_string(),
            labels: vec![],
            annotations: vec![],
            state: "running".to_string(),
            memory_bytes: 64 << 20,
            process_count: 1,
            tcp_established: 0,
            file_locks: 0,
            volumes: vec![],
            rootfs_change_bytes: 0,
        },
        host: HostFacts {
            criu_version: 40201,
            runtime_name: "runc".to_string(),
            runtime_version: "runc version 1.1.5".to_string(),
            kernel: "6.18.0".to_string(),
            arch: "amd64".to_string(),
            memory_tracking: false,
            free_disk_bytes: 80 << 30,
            memory_available_bytes: 16 << 30,
        },
        request: RequestFacts {
            options,
            exports: vec![],
            trigger: "cli".to_string(),
            schedule: None,
            now: "2026-11-27T00:00:00Z".to_string(),
            now_unix_ms: 1_795_737_600_000,
            seed: 1,
        },
        history: vec![],
        ext: vec![],
    }
}

/// Export facts for native unit tests: an archive of `name` going to `location`.
pub fn sample_export_facts(name: &str, location: &str) -> ExportFacts {
    ExportFacts {
        container: sample_facts(name).container,
        target: ExportTarget {
            kind: TargetKind::Archive,
            location: location.to_string(),
            compression: Compression::Zstd,
            sealed_to: vec![],
            signed: false,
        },
        size_bytes: 1 << 20,
        has_rootfs: true,
        has_volumes: false,
        digest: format!("blake3:{}", "0".repeat(64)),
        now: "2026-11-27T12:00:00.000Z".to_string(),
    }
}

/// The exports a planner world and a migration-planner world share.
#[doc(hidden)]
#[macro_export]
macro_rules! __planner_exports {
    ($policy:ty) => {
        fn describe() -> $crate::types::PolicyInfo {
            $crate::describe::<$policy>(&[$crate::types::DecisionKind::Plan, $crate::types::DecisionKind::Round])
        }
        fn validate_settings(settings: String) -> Result<(), String> {
            $crate::settings_of::<$policy>(&settings).map(drop)
        }
        fn plan(settings: String, facts: $crate::types::CheckpointFacts) -> $crate::types::PlanDecision {
            match $crate::settings_of::<$policy>(&settings) {
                Ok(settings) => <$policy as $crate::Planner>::plan(&settings, facts),
                Err(e) => $crate::types::PlanDecision::Deny(vec![e]),
            }
        }
        fn after_round(
            settings: String,
            facts: $crate::types::CheckpointFacts,
            rounds: Vec<$crate::types::RoundStats>,
        ) -> $crate::types::RoundDecision {
            match $crate::settings_of::<$policy>(&settings) {
                Ok(settings) => <$policy as $crate::Planner>::after_round(&settings, facts, rounds),
                Err(e) => $crate::types::RoundDecision { action: $crate::types::RoundAction::Abort, reason: e },
            }
        }
    };
}

/// Exports a [`Planner`] as the component's `planner` world.
#[macro_export]
macro_rules! export_planner {
    ($policy:ty) => {
        struct __CkptPlanner;
        impl $crate::planner::Guest for __CkptPlanner {
            $crate::__planner_exports!($policy);
        }
        $crate::planner::export_planner_world!(__CkptPlanner with_types_in $crate::planner);
    };
}

/// Exports a [`Migrator`] as the component's `migration-planner` world.
#[macro_export]
macro_rules! export_migration_planner {
    ($policy:ty) => {
        struct __CkptMigrationPlanner;
        impl $crate::migration_planner::Guest for __CkptMigrationPlanner {
            $crate::__planner_exports!($policy);
            fn strategy(
                settings: String,
                facts: $crate::types::CheckpointFacts,
                migration: $crate::migration::MigrationFacts,
            ) -> $crate::migration::StrategyDecision {
                match $crate::settings_of::<$policy>(&settings) {
                    Ok(settings) => <$policy as $crate::Migrator>::strategy(&settings, facts, migration),
                    Err(e) => $crate::migration::StrategyDecision::Deny(vec![e]),
                }
            }
        }
        $crate::migration_planner::export_migration_planner_world!(
            __CkptMigrationPlanner with_types_in $crate::migration_planner
        );
    };
}

/// Exports a [`Gate`] as the component's `gate` world.
#[macro_export]
macro_rules! export_gate {
    ($policy:ty) => {
        struct __CkptGate;
        impl $crate::gate::Guest for __CkptGate {
            fn describe() -> $crate::types::PolicyInfo {
                $crate::describe::<$policy>(&[$crate::types::DecisionKind::Gate])
            }
            fn validate_settings(settings: String) -> Result<(), String> {
                $crate::settings_of::<$policy>(&settings).map(drop)
            }
            fn gate(settings: String, facts: $crate::types::ExportFacts) -> $crate::types::GateDecision {
                match $crate::settings_of::<$policy>(&settings) {
                    Ok(settings) => <$policy as $crate::Gate>::gate(&settings, facts),
                    Err(e) => $crate::types::GateDecision::Deny(e),
                }
            }
        }
        $crate::gate::export_gate_world!(__CkptGate with_types_in $crate::gate);
    };
}

/// Exports a [`Retainer`] as the component's `retainer` world.
#[macro_export]
macro_rules! export_retainer {
    ($policy:ty) => {
        struct __CkptRetainer;
        impl $crate::retainer::Guest for __CkptRetainer {
            fn describe() -> $crate::types::PolicyInfo {
                $crate::describe::<$policy>(&[$crate::types::DecisionKind::Retain])
            }
            fn validate_settings(settings: String) -> Result<(), String> {
                $crate::settings_of::<$policy>(&settings).map(drop)
            }
            fn retain(settings: String, facts: $crate::types::RetainFacts) -> Vec<$crate::types::Deletion> {
                // Settings that no longer parse delete nothing.
                match $crate::settings_of::<$policy>(&settings) {
                    Ok(settings) => <$policy as $crate::Retainer>::retain(&settings, facts),
                    Err(_) => Vec::new(),
                }
            }
        }
        $crate::retainer::export_retainer_world!(__CkptRetainer with_types_in $crate::retainer);
    };
}

/// Exports a [`ClusterRetainer`] as the component's `cluster-retainer` world.
#[macro_export]
macro_rules! export_cluster_retainer {
    ($policy:ty) => {
        struct __CkptClusterRetainer;
        impl $crate::cluster_retainer::Guest for __CkptClusterRetainer {
            fn describe() -> $crate::types::PolicyInfo {
                $crate::describe::<$policy>(&[$crate::types::DecisionKind::Retain])
            }
            fn validate_settings(settings: String) -> Result<(), String> {
                $crate::settings_of::<$policy>(&settings).map(drop)
            }
            fn retain(
                settings: String,
                facts: $crate::types::RetainFacts,
                cluster: $crate::cluster::ClusterFacts,
            ) -> Vec<$crate::types::Deletion> {
                // Settings that no longer parse delete nothing.
                match $crate::settings_of::<$policy>(&settings) {
                    Ok(settings) => <$policy as $crate::ClusterRetainer>::retain(&settings, facts, cluster),
                    Err(_) => Vec::new(),
                }
            }
        }
        $crate::cluster_retainer::export_cluster_retainer_world!(
            __CkptClusterRetainer with_types_in $crate::cluster_retainer
        );
    };
}

/// The 0.1.0 contract, for policies written against it.
#[deprecated(note = "ckpt:policy@0.1.0: write new policies against the crate root (0.2.0)")]
pub mod v1;
