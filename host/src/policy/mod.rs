//! The policy engine: WebAssembly components decide how each container is checkpointed,
//! whether pre-dump rounds go on, and whether and where an export may go. Any failure of a
//! policy is a denial (fail closed), reported with the policy's name and what it did.

pub mod bindings;
mod cache;
pub mod decision;
mod engine;
pub mod facts;
mod host;
pub mod json;
pub(crate) mod limits;
mod pool;
pub mod record;
mod ticker;
mod world;

use std::path::Path;

pub use cache::component_digest;
pub use decision::{Answer, Kind, Question};
pub use engine::{LoadedPolicy, PolicyEngine, Trace};
pub use pool::Wait;
pub use record::DecisionRecord;
pub use world::{Role, World};

use bindings::*;

/// The default policy, built from `policies/default` for wasm32-wasip2 by the build script.
pub const DEFAULT_POLICY: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/default.wasm"));
pub const DEFAULT_POLICY_SOURCE: &str = "builtin:default";

/// The default retainer, built from `policies/default-retainer`: the newest `keep-last`
/// entries (10 unless its settings say otherwise), within `max-total-bytes`.
pub const DEFAULT_RETAINER: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/default-retainer.wasm"));
pub const DEFAULT_RETAINER_SOURCE: &str = "builtin:default-retainer";

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The process's one engine, whose failure to start is kept as text for every later caller.
    #[error("policy engine: {0}")]
    EngineUnavailable(String),
    #[error("policy engine: {cause:#}")]
    Engine {
        #[source]
        cause: wasmtime::Error,
    },
    #[error("policy {policy:?} cannot be loaded: {detail}")]
    Load { policy: String, detail: String },
    /// wasmtime could not compile the component or link it; `hint` says what ckpt allows.
    #[error("policy {policy:?} cannot be loaded: {cause:#}{hint}")]
    Compile {
        policy: String,
        hint: &'static str,
        #[source]
        cause: wasmtime::Error,
    },
    #[error("policy {policy:?} refused its settings: {detail}")]
    Settings { policy: String, detail: String },
    #[error("policy {policy} {detail} in {decision}; the checkpoint is denied")]
    Failed {
        policy: String,
        decision: String,
        detail: String,
        /// What wasmtime reported; `detail` names it in words.
        #[source]
        cause: Option<wasmtime::Error>,
    },
    #[error("policy {policy} gave an answer ckpt cannot accept: {detail}; the checkpoint is denied")]
    BadAnswer { policy: String, detail: String },
    #[error("policy {policy} denied the checkpoint of container {container:?}: {reasons}")]
    Denied { policy: String, container: String, reasons: String },
    #[error("policy {policy} skipped the checkpoint of container {container:?}: {reason}")]
    Skipped { policy: String, container: String, reason: String },
    #[error("settings {origin:?} are not valid JSON: {detail}")]
    SettingsSyntax { origin: String, detail: String },
    #[error("cannot read policy {path:?}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error(
        "cannot read policy {path:?}: it is larger than {limit_mib} MiB, more than any policy needs (a Python one is about 20 MiB)"
    )]
    TooLarge { path: String, limit_mib: u64 },
}

/// Reads `--policy`/`--gate` FILE, or the built-in default.
/// A component to load: its source (as records name it) and bytes, and its settings.
pub struct Component {
    pub read: (String, Vec<u8>),
    pub settings: String,
}

/// Whether `spec` names the built-in retainer, as `--retainer` takes it.
pub fn is_default_retainer(spec: &str) -> bool {
    spec == DEFAULT_RETAINER_SOURCE || spec == "default-retainer"
}

pub fn read_component(spec: &str) -> Result<(String, Vec<u8>), PolicyError> {
    if spec == DEFAULT_POLICY_SOURCE || spec == "default" {
        return Ok((DEFAULT_POLICY_SOURCE.to_string(), DEFAULT_POLICY.to_vec()));
    }
    if is_default_retainer(spec) {
        return Ok((DEFAULT_RETAINER_SOURCE.to_string(), DEFAULT_RETAINER.to_vec()));
    }
    let read_err = |source| PolicyError::Read { path: spec.to_string(), source };
    let file = std::fs::File::open(spec).map_err(read_err)?;
    // Sized once from the file's length: grown from nothing, a 20 MiB component would be read
    // in doubling pieces and copied at every growth.
    let expected = file.metadata().map(|m| m.len().min(limits::MAX_COMPONENT_BYTES + 1)).unwrap_or(0);
    let mut bytes = Vec::with_capacity(expected as usize + 1);
    std::io::Read::read_to_end(&mut std::io::Read::take(file, limits::MAX_COMPONENT_BYTES + 1), &mut bytes)
        .map_err(read_err)?;
    if bytes.len() as u64 > limits::MAX_COMPONENT_BYTES {
        return Err(PolicyError::TooLarge { path: spec.to_string(), limit_mib: limits::MAX_COMPONENT_BYTES >> 20 });
    }
    Ok((spec.to_string(), bytes))
}

/// `--policy-config JSON|@FILE`; the text must at least be JSON.
pub fn read_settings(arg: Option<&str>) -> Result<String, PolicyError> {
    let Some(arg) = arg else { return Ok(String::new()) };
    let (origin, text) = match arg.strip_prefix('@') {
        Some(path) => (
            path.to_string(),
            std::fs::read_to_string(path).map_err(|source| PolicyError::Read { path: path.to_string(), source })?,
        ),
        None => ("--policy-config".to_string(), arg.to_string()),
    };
    serde_json::from_str::<serde_json::Value>(&text)
        .map_err(|e| PolicyError::SettingsSyntax { origin, detail: e.to_string() })?;
    Ok(text)
}

/// The planner, the gates, and the records of what they decided.
pub struct Policies {
    pub engine: PolicyEngine,
    pub planner: LoadedPolicy,
    pub gates: Vec<LoadedPolicy>,
    pub records: Vec<DecisionRecord>,
}

/// The combined answer of all gates for one export.
#[derive(Debug, Clone, PartialEq)]
pub enum GateVerdict {
    Allow,
    Narrow { drop_rootfs: bool, drop_volumes: bool, reasons: Vec<String> },
}

impl Policies {
    #[cfg(test)]
    pub fn load(cache_dir: &Path, planner: (&str, &str), gates: &[(String, String)]) -> Result<Policies, PolicyError> {
        let gates = gates
            .iter()
            .map(|(spec, settings)| Ok(Component { read: read_component(spec)?, settings: settings.clone() }))
            .collect::<Result<Vec<_>, PolicyError>>()?;
        let planner = Component { read: read_component(planner.0)?, settings: planner.1.to_string() };
        Policies::load_components(cache_dir, planner, gates)
    }

    /// Compiles (or takes from the cache) the planner and the gates, already read.
    pub fn load_components(
        cache_dir: &Path,
        planner: Component,
        gates: Vec<Component>,
    ) -> Result<Policies, PolicyError> {
        let engine = PolicyEngine::new(cache_dir)?;
        let planner = engine.load_as(Role::Planner, &planner.read.0, &planner.read.1, &planner.settings)?;
        let gates = gates
            .into_iter()
            .map(|gate| engine.load_as(Role::Gate, &gate.read.0, &gate.read.1, &gate.settings))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Policies { engine, planner, gates, records: Vec::new() })
    }

    pub fn plan(&mut self, facts: &CheckpointFacts) -> Result<Plan, PolicyError> {
        let (answer, trace) = decision::decide(&self.engine, &self.planner, Question::Plan(facts));
        let plan = answer.and_then(|answer| match answer {
            Answer::Plan(PlanDecision::Plan(plan)) => Ok(plan),
            Answer::Plan(PlanDecision::Deny(reasons)) => Err(PolicyError::Denied {
                policy: decision::label(&self.planner),
                container: facts.container.name.clone(),
                reasons: reasons.join("; "),
            }),
            Answer::Plan(PlanDecision::Skip(reason)) => Err(PolicyError::Skipped {
                policy: decision::label(&self.planner),
                container: facts.container.name.clone(),
                reason,
            }),
            other => unreachable!("a plan question has a plan answer, not {other:?}"),
        });
        // The record holds the plan, or the denial as its error.
        let value = plan.as_ref().map(json::to_json);
        self.records.push(DecisionRecord::new(Kind::Plan, &self.planner, &facts.container, facts, value, trace));
        plan
    }

    pub fn after_round(
        &mut self,
        facts: &CheckpointFacts,
        rounds: &[RoundStats],
    ) -> Result<RoundDecision, PolicyError> {
        let (answer, trace) = decision::decide(&self.engine, &self.planner, Question::Round(facts, rounds));
        let value = answer.as_ref().map(Answer::to_json);
        self.records.push(DecisionRecord::new(Kind::Round, &self.planner, &facts.container, rounds, value, trace));
        match answer? {
            Answer::Round(decision) => Ok(decision),
            other => unreachable!("a round question has a round answer, not {other:?}"),
        }
    }

    /// How a container migrates. A migration planner chooses among what is `possible` (a choice
    /// outside it is a bad answer, so a denial); any other planner leaves it to the user:
    /// `requested`, or stop-and-copy.
    pub fn strategy(
        &mut self,
        facts: &CheckpointFacts,
        migration: &MigrationFacts,
    ) -> Result<StrategyChoice, PolicyError> {
        if self.planner.world() != World::MigrationPlanner {
            let strategy = migration.requested.unwrap_or(Strategy::StopAndCopy);
            let why = if migration.requested.is_some() { "as asked" } else { "the default" };
            let reason = format!(
                "planner {:?} does not choose strategies ({}): {why}",
                self.planner.info.name,
                self.planner.world()
            );
            return Ok(StrategyChoice { strategy, reason });
        }
        let label = decision::label(&self.planner);
        let (answer, trace) = decision::decide(&self.engine, &self.planner, Question::Strategy(facts, migration));
        let choice = answer.and_then(|answer| match answer {
            Answer::Strategy(StrategyDecision::Choose(choice)) if migration.possible.contains(&choice.strategy) => {
                Ok(choice)
            }
            Answer::Strategy(StrategyDecision::Choose(choice)) => Err(PolicyError::BadAnswer {
                policy: label.clone(),
                detail: format!(
                    "it chose {}, which is not possible here (possible: {})",
                    json::strategy_name(choice.strategy),
                    migration.possible.iter().map(|s| json::strategy_name(*s)).collect::<Vec<_>>().join(", ")
                ),
            }),
            Answer::Strategy(StrategyDecision::Deny(reasons)) => Err(PolicyError::Denied {
                policy: label.clone(),
                container: facts.container.name.clone(),
                reasons: reasons.join("; "),
            }),
            other => unreachable!("a strategy question has a strategy answer, not {other:?}"),
        });
        let value = choice.as_ref().map(|c| json::to_json(&c.strategy_decision()));
        let asked = serde_json::json!({"checkpoint": json::to_json(facts), "migration": json::to_json(migration)});
        self.records.push(DecisionRecord::new(Kind::Strategy, &self.planner, &facts.container, &asked, value, trace));
        choice
    }

    /// Asks every gate; any deny wins, narrowings add up, and nothing can widen the plan.
    pub fn gate(&mut self, facts: &ExportFacts) -> Result<GateVerdict, PolicyError> {
        let mut verdict = Ok(GateVerdict::Allow);
        for gate in &self.gates {
            let (answer, trace) = decision::decide(&self.engine, gate, Question::Gate(facts));
            // A denial is the record's error, so the history (made of gate records without one)
            // holds only exports that were let through.
            let decision = answer.and_then(|a| match a {
                Answer::Gate(GateDecision::Deny(reason)) => Err(denied(&decision::label(gate), facts, &reason)),
                Answer::Gate(d) => Ok(d),
                other => unreachable!("a gate question has a gate answer, not {other:?}"),
            });
            let value = decision.as_ref().map(json::to_json);
            let mut record = DecisionRecord::new(Kind::Gate, gate, &facts.container, facts, value, trace);
            record.export =
                Some(record::ExportRef { target: facts.target.location.clone(), size_bytes: facts.size_bytes });
            self.records.push(record);
            verdict = combine(verdict, (&gate.info.name, &decision::label(gate)), facts, decision);
        }
        verdict
    }
}

/// A retainer, loaded on its own: retention runs after a schedule's checkpoints, apart from them.
pub struct Retention {
    pub engine: PolicyEngine,
    pub retainer: LoadedPolicy,
}

impl Retention {
    pub fn load(cache_dir: &Path, retainer: Component) -> Result<Retention, PolicyError> {
        let engine = PolicyEngine::new(cache_dir)?;
        let retainer = engine.load_as(Role::Retainer, &retainer.read.0, &retainer.read.1, &retainer.settings)?;
        Ok(Retention { engine, retainer })
    }

    /// Whether the retainer weighs what the cluster says (a `cluster-retainer`), and so is worth
    /// asking the API server for.
    pub fn weighs_the_cluster(&self) -> bool {
        self.retainer.world() == World::ClusterRetainer
    }

    /// Asks which entries to delete; `cluster` is told only to a `cluster-retainer`. The answer
    /// may name only entries it was shown and never a pinned one; any other answer, like any
    /// failure, deletes nothing (fail closed).
    pub fn retain(
        &self,
        facts: &RetainFacts,
        cluster: &ClusterFacts,
    ) -> (Result<Vec<Deletion>, PolicyError>, DecisionRecord) {
        let (answer, trace) = decision::decide(&self.engine, &self.retainer, Question::Retain(facts, cluster));
        let label = decision::label(&self.retainer);
        let deletions = answer.map(|answer| match answer {
            Answer::Retain(deletions) => deletions,
            other => unreachable!("a retain question has a retain answer, not {other:?}"),
        });
        let deletions = deletions.and_then(|deletions| {
            for deletion in &deletions {
                match facts.entries.iter().find(|e| e.id == deletion.id) {
                    None => {
                        return Err(PolicyError::BadAnswer {
                            policy: label.clone(),
                            detail: format!("it named {:?}, which is not one of the entries it was shown", deletion.id),
                        });
                    }
                    Some(entry) if entry.pinned => {
                        return Err(PolicyError::BadAnswer {
                            policy: label.clone(),
                            detail: format!("it named {:?}, which is pinned", deletion.id),
                        });
                    }
                    Some(_) => {}
                }
            }
            Ok(deletions)
        });
        let value = deletions.as_ref().map(|d| json::list_to_json(d));
        let record = DecisionRecord::for_retention(&self.retainer, facts, value, trace);
        (deletions, record)
    }
}

fn denied(gate_label: &str, facts: &ExportFacts, reason: &str) -> PolicyError {
    PolicyError::Denied {
        policy: gate_label.to_string(),
        container: facts.container.name.clone(),
        reasons: format!("export to {}: {reason}", facts.target.location),
    }
}

/// Folds one gate's answer into the verdict so far: the first failure or denial stands, and
/// narrowings add up.
pub fn combine(
    so_far: Result<GateVerdict, PolicyError>,
    (gate_name, gate_label): (&str, &str),
    facts: &ExportFacts,
    decision: Result<GateDecision, PolicyError>,
) -> Result<GateVerdict, PolicyError> {
    let so_far = so_far?;
    match decision? {
        GateDecision::Allow => Ok(so_far),
        GateDecision::Deny(reason) => Err(denied(gate_label, facts, &reason)),
        GateDecision::Narrow(n) => {
            let (mut rootfs, mut volumes, mut reasons) = match so_far {
                GateVerdict::Narrow { drop_rootfs, drop_volumes, reasons } => (drop_rootfs, drop_volumes, reasons),
                GateVerdict::Allow => (false, false, Vec::new()),
            };
            rootfs |= n.drop_rootfs;
            volumes |= n.drop_volumes;
            reasons.push(format!("{gate_name}: {}", n.reason));
            Ok(GateVerdict::Narrow { drop_rootfs: rootfs, drop_volumes: volumes, reasons })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> ExportFacts {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/export-facts.json");
        json::from_json(&serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()).unwrap()
    }

    fn narrow(rootfs: bool, volumes: bool) -> Result<GateDecision, PolicyError> {
        Ok(GateDecision::Narrow(Narrowing { drop_rootfs: rootfs, drop_volumes: volumes, reason: "why".into() }))
    }

    fn fold(decisions: Vec<Result<GateDecision, PolicyError>>) -> Result<GateVerdict, PolicyError> {
        let facts = facts();
        let mut verdict = Ok(GateVerdict::Allow);
        for (n, decision) in decisions.into_iter().enumerate() {
            let name = format!("g{n}");
            verdict = combine(verdict, (&name, &format!("{name:?}")), &facts, decision);
        }
        verdict
    }

    fn entry(id: &str, pinned: bool) -> CatalogEntry {
        CatalogEntry {
            id: id.into(),
            kind: EntryKind::Archive,
            location: format!("/srv/{id}.tar.zst"),
            size_bytes: 10,
            created: "2026-11-28T00:00:00Z".into(),
            created_unix_ms: 0,
            trigger: "schedule".into(),
            schedule: None,
            pinned,
            policy_digest: String::new(),
        }
    }

    #[test]
    fn the_default_planner_migrates_as_asked_and_only_as_the_host_can() {
        let cache = tempfile::tempdir().unwrap();
        let planner = Component { read: read_component("default").unwrap(), settings: String::new() };
        let mut policies = Policies::load_components(cache.path(), planner, vec![]).unwrap();
        let facts: CheckpointFacts =
            json::from_json(&serde_json::from_str(include_str!("../../../tests/fixtures/facts.json")).unwrap())
                .unwrap();
        let migration = |requested| MigrationFacts {
            destination: "ssh://far".into(),
            transport: "ssh".into(),
            possible: vec![Strategy::StopAndCopy, Strategy::PostCopy],
            requested,
        };
        let chosen = policies.strategy(&facts, &migration(None)).unwrap();
        assert_eq!(chosen.strategy, Strategy::StopAndCopy);
        assert_eq!(
            policies.strategy(&facts, &migration(Some(Strategy::PostCopy))).unwrap().strategy,
            Strategy::PostCopy
        );
        let refused = policies.strategy(&facts, &migration(Some(Strategy::PreCopy))).unwrap_err().to_string();
        assert!(refused.contains("pre-copy was requested, but this host cannot do it"), "{refused}");
        assert_eq!(policies.records.len(), 3, "every strategy decision is recorded");
        assert_eq!(policies.records[0].kind, Kind::Strategy);
    }

    #[test]
    fn decisions_on_premade_instances_answer_as_fresh_ones_and_spares_stay_bounded() {
        let cache = tempfile::tempdir().unwrap();
        let facts: CheckpointFacts =
            json::from_json(&serde_json::from_str(include_str!("../../../tests/fixtures/facts.json")).unwrap())
                .unwrap();
        let planners: Vec<Policies> = (0..12)
            .map(|_| {
                let planner = Component { read: read_component("default").unwrap(), settings: String::new() };
                Policies::load_components(cache.path(), planner, vec![]).unwrap()
            })
            .collect();
        let answer = |policies: &Policies| {
            let (result, trace) =
                decision::decide(&policies.engine, &policies.planner, decision::Question::Plan(&facts));
            (format!("{:?}", result.unwrap()), trace.fuel_used)
        };
        let first = &planners[0];
        first.planner.set_premade(false);
        let fresh = answer(first);
        first.planner.set_premade(true);
        // More loaded policies than the process keeps spares for: each still decides, the same.
        for _ in 0..3 {
            for policies in &planners {
                policies.planner.wait_for_spare(Wait::Sleeping);
                assert_eq!(answer(policies), fresh);
            }
        }
        assert!(pool::spares_held() <= pool::MAX_SPARES);
    }

    #[test]
    fn each_role_takes_only_the_worlds_that_serve_it() {
        let cache = tempfile::tempdir().unwrap();
        let retainer = || Component { read: read_component("default-retainer").unwrap(), settings: String::new() };
        let planner = || Component { read: read_component("default").unwrap(), settings: String::new() };
        let as_gate = Policies::load_components(cache.path(), planner(), vec![retainer()]).err().unwrap().to_string();
        assert!(
            as_gate.contains("ckpt:policy/retainer@0.3.0 component, but --gate takes a ckpt:policy/gate@0.3.0 or ckpt:policy/gate@0.2.0 or ckpt:policy/policy@0.1.0 component"),
            "{as_gate}"
        );
        let as_retainer = Retention::load(cache.path(), planner()).err().unwrap().to_string();
        assert!(as_retainer.contains("is a ckpt:policy/migration-planner@0.3.0 component"), "{as_retainer}");

        let retention =
            Retention::load(cache.path(), Component { settings: r#"{"keep-last": 1}"#.into(), ..retainer() }).unwrap();
        let facts = RetainFacts {
            container_id: "0".repeat(64),
            container_name: "web".into(),
            entries: vec![entry("new", false), entry("pinned", true), entry("old", false)],
            now: "2026-11-28T00:00:00Z".into(),
            now_unix_ms: 0,
        };
        let (deletions, record) = retention.retain(&facts, &ClusterFacts::no_cluster());
        let ids: Vec<String> = deletions.unwrap().into_iter().map(|d| d.id).collect();
        assert_eq!(ids, vec!["old"]);
        assert_eq!(record.kind, Kind::Retain);
        let bad = Retention::load(cache.path(), Component { settings: r#"{"keep_last": 1}"#.into(), ..retainer() });
        assert!(bad.err().unwrap().to_string().contains("keep_last"), "unknown settings keys are refused at load");
    }

    #[test]
    fn gates_allow_together_narrow_cumulatively_and_any_denial_wins() {
        assert_eq!(fold(vec![Ok(GateDecision::Allow), Ok(GateDecision::Allow)]).unwrap(), GateVerdict::Allow);
        let narrowed = fold(vec![narrow(true, false), Ok(GateDecision::Allow), narrow(false, true)]).unwrap();
        assert_eq!(
            narrowed,
            GateVerdict::Narrow {
                drop_rootfs: true,
                drop_volumes: true,
                reasons: vec!["g0: why".into(), "g2: why".into()]
            }
        );
        let denied = fold(vec![narrow(true, false), Ok(GateDecision::Deny("no".into())), Ok(GateDecision::Allow)]);
        let text = denied.unwrap_err().to_string();
        assert!(text.contains("\"g1\"") && text.contains("no"), "{text}");
        let failed =
            fold(vec![Err(PolicyError::EngineUnavailable("trapped".into())), Ok(GateDecision::Deny("later".into()))]);
        assert!(failed.unwrap_err().to_string().contains("trapped"), "the first failure stands");
    }

    /// What wasmtime or the file system said stays attached, not only its words.
    #[test]
    fn a_policy_that_cannot_be_read_or_compiled_keeps_the_cause() {
        use std::error::Error as _;
        let missing = read_component("/nonexistent/policy.wasm").unwrap_err();
        let io = missing.source().and_then(|s| s.downcast_ref::<std::io::Error>()).expect("the io error");
        assert_eq!(io.kind(), std::io::ErrorKind::NotFound);

        let cache = tempfile::tempdir().unwrap();
        let engine = PolicyEngine::new(cache.path()).unwrap();
        let broken = engine.describe("broken.wasm", b"\0asm\x0d\x00\x01\x00garbage").err().expect("refused");
        assert!(matches!(broken, PolicyError::Compile { .. }), "{broken:?}");
        assert!(broken.source().is_some(), "{broken}");
        assert!(broken.to_string().starts_with("policy \"broken.wasm\" cannot be loaded: "), "{broken}");
    }
}
