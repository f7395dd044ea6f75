//! The one place where the WIT worlds become Rust: every generated type lives here.
//!
//! ckpt speaks `ckpt:policy@0.3.0` (`wit/policy.wit`): its types are the host's own, and a
//! component exports one of its worlds, `planner` (or `migration-planner`), `gate` or
//! `retainer`. Components of 0.2.0 (`wit/v0.2.0`) and of `ckpt:policy/policy@0.1.0`
//! (`wit/v0.1.0`) keep loading: their facts and answers are the same records less what later
//! versions added, so they are carried across by name (see [`by_name`] and `json::from_older`).

/// `ckpt:policy/planner@0.3.0`, and with it the shared `types` and `log` interfaces.
mod planner {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "planner",
        additional_derives: [serde::Serialize, serde::Deserialize, PartialEq],
    });
}

/// `ckpt:policy/migration-planner@0.3.0`: a planner that also chooses migration strategies, and
/// with it the `migration` interface.
mod migration_planner {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "migration-planner",
        with: {
            "ckpt:policy/types": super::planner::ckpt::policy::types,
            "ckpt:policy/log": super::planner::ckpt::policy::log,
        },
        additional_derives: [serde::Serialize, serde::Deserialize, PartialEq],
    });
}

mod gate {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "gate",
        with: {
            "ckpt:policy/types": super::planner::ckpt::policy::types,
            "ckpt:policy/log": super::planner::ckpt::policy::log,
        },
    });
}

mod retainer {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "retainer",
        with: {
            "ckpt:policy/types": super::planner::ckpt::policy::types,
            "ckpt:policy/log": super::planner::ckpt::policy::log,
        },
    });
}

/// `ckpt:policy/cluster-retainer@0.3.0`: a retainer also told what the cluster says, and with
/// it the `cluster` interface.
mod cluster_retainer {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "cluster-retainer",
        with: {
            "ckpt:policy/types": super::planner::ckpt::policy::types,
            "ckpt:policy/log": super::planner::ckpt::policy::log,
        },
        additional_derives: [serde::Serialize, serde::Deserialize, PartialEq],
    });
}

/// The four worlds of `ckpt:policy@0.2.0`.
pub mod v2 {
    pub mod planner {
        wasmtime::component::bindgen!({
            path: "../wit/v0.2.0",
            world: "planner",
            additional_derives: [serde::Serialize, serde::Deserialize, PartialEq],
        });
    }

    pub mod migration_planner {
        wasmtime::component::bindgen!({
            path: "../wit/v0.2.0",
            world: "migration-planner",
            with: {
                "ckpt:policy/types": super::planner::ckpt::policy::types,
                "ckpt:policy/log": super::planner::ckpt::policy::log,
            },
            additional_derives: [serde::Serialize, serde::Deserialize, PartialEq],
        });
    }

    pub mod gate {
        wasmtime::component::bindgen!({
            path: "../wit/v0.2.0",
            world: "gate",
            with: {
                "ckpt:policy/types": super::planner::ckpt::policy::types,
                "ckpt:policy/log": super::planner::ckpt::policy::log,
            },
        });
    }

    pub mod retainer {
        wasmtime::component::bindgen!({
            path: "../wit/v0.2.0",
            world: "retainer",
            with: {
                "ckpt:policy/types": super::planner::ckpt::policy::types,
                "ckpt:policy/log": super::planner::ckpt::policy::log,
            },
        });
    }

    pub use self::planner::ckpt::policy::types::*;
    pub use self::planner::ckpt::policy::{log as log_interface, types as types_interface};
}

/// `ckpt:policy/policy@0.1.0`, planner and gate in one world.
pub mod v1 {
    wasmtime::component::bindgen!({
        path: "../wit/v0.1.0",
        world: "policy",
        additional_derives: [serde::Serialize, serde::Deserialize, PartialEq],
    });
}

pub use self::cluster_retainer::ckpt::policy::cluster::{ClusterFacts, Level as ClusterLevel};
pub use self::cluster_retainer::{ClusterRetainer, ClusterRetainerPre};
pub use self::gate::{Gate, GatePre};
pub use self::migration_planner::ckpt::policy::migration::{
    MigrationFacts, Strategy, StrategyChoice, StrategyDecision,
};
pub use self::migration_planner::{MigrationPlanner, MigrationPlannerPre};
pub use self::planner::ckpt::policy::log::Level;
pub use self::planner::ckpt::policy::types::*;
pub use self::planner::ckpt::policy::{log as log_interface, types as types_interface};
pub use self::planner::{Planner, PlannerPre};
pub use self::retainer::{Retainer, RetainerPre};

/// Carries a value to its twin in another version of the contract, by the names both share:
/// fields the twin does not have are dropped. An older answer that lacks what a later version
/// added goes through `json::from_older` instead, which gives those fields their old meaning.
pub fn by_name<From: serde::Serialize, To: serde::de::DeserializeOwned>(value: &From) -> wasmtime::Result<To> {
    let json = serde_json::to_value(value)?;
    serde_json::from_value(json)
        .map_err(|e| wasmtime::Error::msg(format!("no form of this value in the other version: {e}")))
}

impl From<crate::archive::Compression> for Compression {
    fn from(c: crate::archive::Compression) -> Compression {
        match c {
            crate::archive::Compression::Zstd => Compression::Zstd,
            crate::archive::Compression::Gzip => Compression::Gzip,
            crate::archive::Compression::None => Compression::None,
        }
    }
}

impl From<Compression> for crate::archive::Compression {
    fn from(c: Compression) -> crate::archive::Compression {
        match c {
            Compression::Zstd => crate::archive::Compression::Zstd,
            Compression::Gzip => crate::archive::Compression::Gzip,
            Compression::None => crate::archive::Compression::None,
        }
    }
}

impl ClusterFacts {
    /// What a retainer is told where there is no cluster to ask: about a container, unknown.
    pub fn no_cluster() -> ClusterFacts {
        ClusterFacts { level: ClusterLevel::Container, exists: None }
    }
}

impl StrategyChoice {
    /// The decision that made this choice, as records and `--dry-run` show it.
    pub fn strategy_decision(&self) -> StrategyDecision {
        StrategyDecision::Choose(self.clone())
    }
}

impl CheckpointOptions {
    /// Every option off: what a plain `ckpt checkpoint NAME` asks for.
    #[cfg(test)]
    pub fn none() -> CheckpointOptions {
        CheckpointOptions {
            leave_running: false,
            tcp_established: false,
            file_locks: false,
            keep: false,
            ignore_rootfs: false,
            ignore_volumes: false,
            print_stats: false,
            pre_checkpoint: false,
            with_previous: false,
        }
    }
}
