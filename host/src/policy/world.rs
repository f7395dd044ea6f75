//! The worlds a component can export, the roles they serve, and a component's exports checked
//! against its world's types.

use serde::Serialize;
use wasmtime::Store;

use super::bindings::{
    self, ClusterRetainer, ClusterRetainerPre, Gate, GatePre, MigrationPlanner, MigrationPlannerPre, Planner,
    PlannerPre, Retainer, RetainerPre, v1, v2,
};
use super::host::State;

/// The world a component exports, which says what it can decide.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum World {
    #[serde(rename = "ckpt:policy/policy@0.1.0")]
    PolicyV1,
    #[serde(rename = "ckpt:policy/planner@0.2.0")]
    PlannerV2,
    #[serde(rename = "ckpt:policy/migration-planner@0.2.0")]
    MigrationPlannerV2,
    #[serde(rename = "ckpt:policy/gate@0.2.0")]
    GateV2,
    #[serde(rename = "ckpt:policy/retainer@0.2.0")]
    RetainerV2,
    #[serde(rename = "ckpt:policy/planner@0.3.0")]
    Planner,
    #[serde(rename = "ckpt:policy/migration-planner@0.3.0")]
    MigrationPlanner,
    #[serde(rename = "ckpt:policy/gate@0.3.0")]
    Gate,
    #[serde(rename = "ckpt:policy/retainer@0.3.0")]
    Retainer,
    #[serde(rename = "ckpt:policy/cluster-retainer@0.3.0")]
    ClusterRetainer,
}

impl World {
    pub const ALL: [World; 10] = [
        World::Planner,
        World::MigrationPlanner,
        World::Gate,
        World::Retainer,
        World::ClusterRetainer,
        World::PlannerV2,
        World::MigrationPlannerV2,
        World::GateV2,
        World::RetainerV2,
        World::PolicyV1,
    ];

    pub fn name(self) -> &'static str {
        match self {
            World::PolicyV1 => "ckpt:policy/policy@0.1.0",
            World::PlannerV2 => "ckpt:policy/planner@0.2.0",
            World::MigrationPlannerV2 => "ckpt:policy/migration-planner@0.2.0",
            World::GateV2 => "ckpt:policy/gate@0.2.0",
            World::RetainerV2 => "ckpt:policy/retainer@0.2.0",
            World::Planner => "ckpt:policy/planner@0.3.0",
            World::MigrationPlanner => "ckpt:policy/migration-planner@0.3.0",
            World::Gate => "ckpt:policy/gate@0.3.0",
            World::Retainer => "ckpt:policy/retainer@0.3.0",
            World::ClusterRetainer => "ckpt:policy/cluster-retainer@0.3.0",
        }
    }

    /// The role a component plays: a 0.1.0 policy plans and gates.
    pub fn serves(self, role: Role) -> bool {
        use World::*;
        matches!(
            (self, role),
            (PolicyV1 | Planner | MigrationPlanner | PlannerV2 | MigrationPlannerV2, Role::Planner)
                | (PolicyV1 | Gate | GateV2, Role::Gate)
                | (Retainer | ClusterRetainer | RetainerV2, Role::Retainer)
        )
    }
}

impl std::fmt::Display for World {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What a component is loaded as: `--policy`, `--gate`, or a schedule's `--retainer`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Planner,
    Gate,
    Retainer,
}

impl Role {
    /// The worlds that serve it, as an error names them.
    pub fn worlds(self) -> String {
        let worlds: Vec<&str> = World::ALL.iter().filter(|w| w.serves(self)).map(|w| w.name()).collect();
        worlds.join(" or ")
    }

    pub fn flag(self) -> &'static str {
        match self {
            Role::Planner => "--policy",
            Role::Gate => "--gate",
            Role::Retainer => "--retainer",
        }
    }
}

/// A component's exports, checked against its world's types once, at load.
#[derive(Clone)]
pub(super) enum Exports {
    PolicyV1(v1::PolicyPre<State>),
    PlannerV2(v2::planner::PlannerPre<State>),
    MigrationPlannerV2(v2::migration_planner::MigrationPlannerPre<State>),
    GateV2(v2::gate::GatePre<State>),
    RetainerV2(v2::retainer::RetainerPre<State>),
    Planner(PlannerPre<State>),
    MigrationPlanner(MigrationPlannerPre<State>),
    Gate(GatePre<State>),
    Retainer(RetainerPre<State>),
    ClusterRetainer(ClusterRetainerPre<State>),
}

/// A component instantiated in a fresh store for one call.
pub enum Instance {
    PolicyV1(v1::Policy),
    PlannerV2(v2::planner::Planner),
    MigrationPlannerV2(v2::migration_planner::MigrationPlanner),
    GateV2(v2::gate::Gate),
    RetainerV2(v2::retainer::Retainer),
    Planner(Planner),
    MigrationPlanner(MigrationPlanner),
    Gate(Gate),
    Retainer(Retainer),
    ClusterRetainer(ClusterRetainer),
}

impl Exports {
    pub(super) fn world(&self) -> World {
        match self {
            Exports::PolicyV1(_) => World::PolicyV1,
            Exports::PlannerV2(_) => World::PlannerV2,
            Exports::MigrationPlannerV2(_) => World::MigrationPlannerV2,
            Exports::GateV2(_) => World::GateV2,
            Exports::RetainerV2(_) => World::RetainerV2,
            Exports::Planner(_) => World::Planner,
            Exports::MigrationPlanner(_) => World::MigrationPlanner,
            Exports::Gate(_) => World::Gate,
            Exports::Retainer(_) => World::Retainer,
            Exports::ClusterRetainer(_) => World::ClusterRetainer,
        }
    }

    pub(super) fn instantiate(&self, store: &mut Store<State>) -> wasmtime::Result<Instance> {
        Ok(match self {
            Exports::PolicyV1(pre) => Instance::PolicyV1(pre.instantiate(store)?),
            Exports::PlannerV2(pre) => Instance::PlannerV2(pre.instantiate(store)?),
            Exports::MigrationPlannerV2(pre) => Instance::MigrationPlannerV2(pre.instantiate(store)?),
            Exports::GateV2(pre) => Instance::GateV2(pre.instantiate(store)?),
            Exports::RetainerV2(pre) => Instance::RetainerV2(pre.instantiate(store)?),
            Exports::Planner(pre) => Instance::Planner(pre.instantiate(store)?),
            Exports::MigrationPlanner(pre) => Instance::MigrationPlanner(pre.instantiate(store)?),
            Exports::Gate(pre) => Instance::Gate(pre.instantiate(store)?),
            Exports::Retainer(pre) => Instance::Retainer(pre.instantiate(store)?),
            Exports::ClusterRetainer(pre) => Instance::ClusterRetainer(pre.instantiate(store)?),
        })
    }
}

impl Instance {
    pub(super) fn describe(&self, store: &mut Store<State>) -> wasmtime::Result<bindings::PolicyInfo> {
        match self {
            Instance::PolicyV1(p) => bindings::by_name(&p.call_describe(store)?),
            Instance::PlannerV2(p) => bindings::by_name(&p.call_describe(store)?),
            Instance::MigrationPlannerV2(p) => bindings::by_name(&p.call_describe(store)?),
            Instance::GateV2(p) => bindings::by_name(&p.call_describe(store)?),
            Instance::RetainerV2(p) => bindings::by_name(&p.call_describe(store)?),
            Instance::Planner(p) => p.call_describe(store),
            Instance::MigrationPlanner(p) => p.call_describe(store),
            Instance::Gate(p) => p.call_describe(store),
            Instance::Retainer(p) => p.call_describe(store),
            Instance::ClusterRetainer(p) => p.call_describe(store),
        }
    }

    pub(super) fn validate_settings(
        &self,
        store: &mut Store<State>,
        settings: &str,
    ) -> wasmtime::Result<Result<(), String>> {
        match self {
            Instance::PolicyV1(p) => p.call_validate_settings(store, settings),
            Instance::PlannerV2(p) => p.call_validate_settings(store, settings),
            Instance::MigrationPlannerV2(p) => p.call_validate_settings(store, settings),
            Instance::GateV2(p) => p.call_validate_settings(store, settings),
            Instance::RetainerV2(p) => p.call_validate_settings(store, settings),
            Instance::Planner(p) => p.call_validate_settings(store, settings),
            Instance::MigrationPlanner(p) => p.call_validate_settings(store, settings),
            Instance::Gate(p) => p.call_validate_settings(store, settings),
            Instance::Retainer(p) => p.call_validate_settings(store, settings),
            Instance::ClusterRetainer(p) => p.call_validate_settings(store, settings),
        }
    }
}

/// Finds the world a component exports: the first whose exports its types match. One that
/// matches none is refused with the names of the worlds and why the closest did not fit.
pub(super) fn exports_of(pre: wasmtime::component::InstancePre<State>) -> Result<Exports, String> {
    // Before the planner, whose exports it holds and more.
    if let Ok(p) = MigrationPlannerPre::new(pre.clone()) {
        return Ok(Exports::MigrationPlanner(p));
    }
    let planner = match PlannerPre::new(pre.clone()) {
        Ok(p) => return Ok(Exports::Planner(p)),
        Err(e) => e,
    };
    if let Ok(p) = GatePre::new(pre.clone()) {
        return Ok(Exports::Gate(p));
    }
    if let Ok(p) = RetainerPre::new(pre.clone()) {
        return Ok(Exports::Retainer(p));
    }
    if let Ok(p) = ClusterRetainerPre::new(pre.clone()) {
        return Ok(Exports::ClusterRetainer(p));
    }
    if let Ok(p) = v2::migration_planner::MigrationPlannerPre::new(pre.clone()) {
        return Ok(Exports::MigrationPlannerV2(p));
    }
    let planner_v2 = match v2::planner::PlannerPre::new(pre.clone()) {
        Ok(p) => return Ok(Exports::PlannerV2(p)),
        Err(e) => e,
    };
    if let Ok(p) = v2::gate::GatePre::new(pre.clone()) {
        return Ok(Exports::GateV2(p));
    }
    if let Ok(p) = v2::retainer::RetainerPre::new(pre.clone()) {
        return Ok(Exports::RetainerV2(p));
    }
    let v1 = match v1::PolicyPre::new(pre) {
        Ok(p) => return Ok(Exports::PolicyV1(p)),
        Err(e) => e,
    };
    let names: Vec<&str> = World::ALL.iter().map(|w| w.name()).collect();
    // A component that imports an older version was written for it: its mismatch says the most.
    let closest = if format!("{v1:#}").contains("@0.1.0") {
        v1
    } else if format!("{planner_v2:#}").contains("@0.2.0") {
        planner_v2
    } else {
        planner
    };
    Err(format!("it exports none of the worlds ckpt loads ({}): {closest:#}", names.join(", ")))
}
