//! The policy engine: WebAssembly components decide how each container is checkpointed,
//! whether pre-dump rounds go on, and whether and where an export may go. Any failure of a
//! policy is a denial (fail closed), reported with the policy's name and what it did.

pub mod bindings;
mod engine;
pub mod facts;
mod limits;
pub mod record;

use std::path::Path;

pub use engine::{Determinism, LoadedPolicy, LogLine, PolicyEngine, Trace};
pub use record::DecisionRecord;

use bindings::*;

/// The default policy, built from `policies/default` for wasm32-wasip2 by the build script.
pub const DEFAULT_POLICY: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/default.wasm"));
pub const DEFAULT_POLICY_SOURCE: &str = "builtin:default";

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("policy engine: {0}")]
    Engine(String),
    #[error("policy {policy:?} cannot be loaded: {detail}")]
    Load { policy: String, detail: String },
    #[error("policy {policy:?} refused its settings: {detail}")]
    Settings { policy: String, detail: String },
    #[error("policy {policy} {detail} in {decision}; the checkpoint is denied")]
    Failed { policy: String, decision: String, detail: String },
    #[error("policy {policy} gave an answer ckpt cannot accept: {detail}; the checkpoint is denied")]
    BadAnswer { policy: String, detail: String },
    #[error("policy {policy} denied the checkpoint of container {container:?}: {reasons}")]
    Denied { policy: String, container: String, reasons: String },
    #[error("settings {origin:?} are not valid JSON: {detail}")]
    SettingsSyntax { origin: String, detail: String },
    #[error("cannot read policy {path:?}: {detail}")]
    Read { path: String, detail: String },
}

/// Reads `--policy`/`--gate` FILE, or the built-in default.
pub fn read_component(spec: &str) -> Result<(String, Vec<u8>), PolicyError> {
    if spec == DEFAULT_POLICY_SOURCE || spec == "default" {
        return Ok((DEFAULT_POLICY_SOURCE.to_string(), DEFAULT_POLICY.to_vec()));
    }
    let read_err = |detail: String| PolicyError::Read { path: spec.to_string(), detail };
    let file = std::fs::File::open(spec).map_err(|e| read_err(e.to_string()))?;
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut std::io::Read::take(file, limits::MAX_COMPONENT_BYTES + 1), &mut bytes)
        .map_err(|e| read_err(e.to_string()))?;
    if bytes.len() as u64 > limits::MAX_COMPONENT_BYTES {
        return Err(read_err(format!(
            "it is larger than {} MiB, more than any policy needs (a Python one is about 20 MiB)",
            limits::MAX_COMPONENT_BYTES >> 20
        )));
    }
    Ok((spec.to_string(), bytes))
}

/// `--policy-config JSON|@FILE`; the text must at least be JSON.
pub fn read_settings(arg: Option<&str>) -> Result<String, PolicyError> {
    let Some(arg) = arg else { return Ok(String::new()) };
    let (origin, text) = match arg.strip_prefix('@') {
        Some(path) => (
            path.to_string(),
            std::fs::read_to_string(path)
                .map_err(|e| PolicyError::Read { path: path.to_string(), detail: e.to_string() })?,
        ),
        None => ("--policy-config".to_string(), arg.to_string()),
    };
    serde_json::from_str::<serde_json::Value>(&text)
        .map_err(|e| PolicyError::SettingsSyntax { origin, detail: e.to_string() })?;
    Ok(text)
}

fn policy_label(policy: &LoadedPolicy) -> String {
    format!("{:?} ({})", policy.info.name, policy.source)
}

fn check_reasons(policy: &LoadedPolicy, reasons: &[String]) -> Result<(), PolicyError> {
    if reasons.len() > limits::MAX_REASONS {
        return Err(PolicyError::BadAnswer {
            policy: policy_label(policy),
            detail: format!("{} reasons, more than {}", reasons.len(), limits::MAX_REASONS),
        });
    }
    reasons.iter().try_for_each(|r| engine::check_text(&policy_label(policy), "a reason", r))
}

/// What a plan may hold: bounded text, a bounded number of clean export targets.
pub fn validate_plan(policy: &LoadedPolicy, plan: &Plan) -> Result<(), PolicyError> {
    check_reasons(policy, &plan.reasons)?;
    if plan.exports.len() > limits::MAX_EXPORTS {
        return Err(PolicyError::BadAnswer {
            policy: policy_label(policy),
            detail: format!("{} export targets, more than {}", plan.exports.len(), limits::MAX_EXPORTS),
        });
    }
    for target in &plan.exports {
        engine::check_text(&policy_label(policy), "an export location", &target.location)?;
        if target.location.trim().is_empty() {
            return Err(PolicyError::BadAnswer {
                policy: policy_label(policy),
                detail: "an export target has an empty location".into(),
            });
        }
    }
    match plan.pre_dump {
        PreDumpPlan::Rounds(n) if n > 16 => Err(PolicyError::BadAnswer {
            policy: policy_label(policy),
            detail: format!("{n} pre-dump rounds, more than 16"),
        }),
        PreDumpPlan::Converge(c) if c.max_rounds > 16 => Err(PolicyError::BadAnswer {
            policy: policy_label(policy),
            detail: format!("up to {} pre-dump rounds, more than 16", c.max_rounds),
        }),
        _ => Ok(()),
    }
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
    pub fn load(cache_dir: &Path, planner: (&str, &str), gates: &[(String, String)]) -> Result<Policies, PolicyError> {
        let engine = PolicyEngine::new(cache_dir)?;
        let (source, bytes) = read_component(planner.0)?;
        let planner = engine.load(&source, &bytes, planner.1)?;
        let gates = gates
            .iter()
            .map(|(spec, settings)| {
                let (source, bytes) = read_component(spec)?;
                engine.load(&source, &bytes, settings)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Policies { engine, planner, gates, records: Vec::new() })
    }

    pub fn plan(&mut self, facts: &CheckpointFacts) -> Result<Plan, PolicyError> {
        let determinism = Determinism { now_unix_ms: facts.request.now_unix_ms, seed: facts.request.seed };
        let (result, trace) =
            self.engine.call(&self.planner, determinism, "plan", |p, s| p.call_plan(s, &self.planner.settings, facts));
        let checked = result.and_then(|decision| match decision {
            PlanDecision::Plan(plan) => validate_plan(&self.planner, &plan).map(|()| plan),
            PlanDecision::Deny(reasons) => {
                check_reasons(&self.planner, &reasons)?;
                Err(PolicyError::Denied {
                    policy: policy_label(&self.planner),
                    container: facts.container.name.clone(),
                    reasons: reasons.join("; "),
                })
            }
        });
        let value = checked.as_ref().map(|p| serde_json::to_value(p).unwrap_or_default());
        self.records.push(DecisionRecord::new("plan", &self.planner, &facts.container, facts, value, trace));
        checked
    }

    pub fn after_round(
        &mut self,
        facts: &CheckpointFacts,
        rounds: &[RoundStats],
    ) -> Result<RoundDecision, PolicyError> {
        let determinism = Determinism { now_unix_ms: facts.request.now_unix_ms, seed: facts.request.seed };
        let (result, trace) = self.engine.call(&self.planner, determinism, "after-round", |p, s| {
            p.call_after_round(s, &self.planner.settings, facts, rounds)
        });
        let checked =
            result.and_then(|d| engine::check_text(&policy_label(&self.planner), "a reason", &d.reason).map(|()| d));
        let value = checked.as_ref().map(|d| serde_json::to_value(d).unwrap_or_default());
        self.records.push(DecisionRecord::new("round", &self.planner, &facts.container, rounds, value, trace));
        checked
    }

    /// Asks every gate; any deny wins, narrowings add up, and nothing can widen the plan.
    pub fn gate(&mut self, facts: &ExportFacts) -> Result<GateVerdict, PolicyError> {
        let now_unix_ms =
            chrono::DateTime::parse_from_rfc3339(&facts.now).map(|t| t.timestamp_millis() as u64).unwrap_or(0);
        let mut verdict = GateVerdict::Allow;
        let mut denial = None;
        for gate in &self.gates {
            let (result, trace) = self
                .engine
                .call(gate, Determinism { now_unix_ms, seed: 0 }, "gate", |p, s| p.call_gate(s, &gate.settings, facts));
            let checked = result.and_then(|decision| match decision {
                GateDecision::Deny(reason) => {
                    engine::check_text(&policy_label(gate), "a reason", &reason)?;
                    Err(PolicyError::Denied {
                        policy: policy_label(gate),
                        container: facts.container.name.clone(),
                        reasons: format!("export to {}: {reason}", facts.target.location),
                    })
                }
                other => Ok(other),
            });
            let value = checked.as_ref().map(|d| serde_json::to_value(d).unwrap_or_default());
            let mut record = DecisionRecord::new("gate", gate, &facts.container, facts, value, trace);
            record.export =
                Some(record::ExportRef { target: facts.target.location.clone(), size_bytes: facts.size_bytes });
            self.records.push(record);
            match checked {
                Ok(GateDecision::Narrow(n)) => {
                    engine::check_text(&policy_label(gate), "a reason", &n.reason)?;
                    let (mut rootfs, mut volumes, mut reasons) = match verdict {
                        GateVerdict::Narrow { drop_rootfs, drop_volumes, reasons } => {
                            (drop_rootfs, drop_volumes, reasons)
                        }
                        GateVerdict::Allow => (false, false, Vec::new()),
                    };
                    rootfs |= n.drop_rootfs;
                    volumes |= n.drop_volumes;
                    reasons.push(format!("{}: {}", gate.info.name, n.reason));
                    verdict = GateVerdict::Narrow { drop_rootfs: rootfs, drop_volumes: volumes, reasons };
                }
                Ok(_) => {}
                Err(e) => {
                    denial.get_or_insert(e);
                }
            }
        }
        match denial {
            Some(e) => Err(e),
            None => Ok(verdict),
        }
    }
}
