//! The 0.1.0 contract (`ckpt:policy/policy@0.1.0`), kept so that policies written for it still
//! build; ckpt still loads their components unchanged. New policies use the crate root (0.2.0).
//!
//! It carries the bindings of the 0.1.0 world, helpers for plans and reasons, the
//! [`export_policy!`] macro, and a log that works natively too, so that a policy's logic can be
//! unit-tested with plain `cargo test`, without WebAssembly:
//!
//! ```ignore
//! use ckpt_guest_sdk::v1::{Guest, export_policy, types::*};
//! struct MyPolicy;
//! impl Guest for MyPolicy { /* describe, validate_settings, plan, after_round, gate */ }
//! export_policy!(MyPolicy);
//! ```

/// The generated bindings, in a module of their own: with `pub_export_macro` the export macros
/// live at the crate root, and generating at the root would define them twice.
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit/v0.1.0",
        world: "policy",
        pub_export_macro: true,
        default_bindings_module: "ckpt_guest_sdk::v1::bindings",
        additional_derives: [PartialEq],
    });
}

pub use bindings::Guest;
pub use bindings::ckpt::policy::log::Level;
pub use bindings::ckpt::policy::types;
/// Exports a type that implements [`Guest`] as the policy component.
pub use bindings::export as export_policy;
pub use serde_json;

use types::*;

/// Logs through the host (bounded there); natively, into a buffer that [`take_logs`] returns.
pub fn log(level: Level, message: &str) {
    #[cfg(target_family = "wasm")]
    bindings::ckpt::policy::log::log(level, message);
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

/// Parses the settings document; an empty one is `{}`.
pub fn settings<T: serde::de::DeserializeOwned>(settings: &str) -> Result<T, String> {
    crate::parse_settings(settings)
}

/// The plan that does exactly what the user asked for on the command line.
pub fn plan_from_request(facts: &CheckpointFacts) -> Plan {
    Plan {
        options: facts.request.options,
        pre_dump: PreDumpPlan::None,
        exports: facts.request.exports.clone(),
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

/// A `describe` answer.
pub fn info(name: &str, version: &str, decisions: &[DecisionKind], settings_schema: &str) -> PolicyInfo {
    PolicyInfo {
        name: name.to_string(),
        version: version.to_string(),
        decisions: decisions.to_vec(),
        settings_schema: settings_schema.to_string(),
    }
}

/// Facts for native unit tests: a running container and an empty request.
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
        },
        request: RequestFacts {
            options,
            exports: vec![],
            trigger: "cli".to_string(),
            now: "2026-11-27T00:00:00Z".to_string(),
            now_unix_ms: 1_795_737_600_000,
            seed: 1,
        },
        history: vec![],
        ext: vec![],
    }
}
