//! One decision path. A real checkpoint and `ckpt policy eval|test|bench` ask the same question
//! through [`decide`], which calls the export in a fresh store and checks the answer against the
//! host's limits, so a policy that passes its tests is never refused in production for its answer.

use serde::Serialize;

use super::bindings::{by_name, v1, v2, *};
use super::engine::{self, LoadedPolicy, PolicyEngine, Trace};
use super::host::Determinism;
use super::{PolicyError, json, limits};

/// The decisions of the contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Plan,
    Round,
    Gate,
    Retain,
    Strategy,
}

impl Kind {
    /// The export that answers it, as the WIT names it.
    pub fn export(self) -> &'static str {
        match self {
            Kind::Plan => "plan",
            Kind::Round => "after-round",
            Kind::Gate => "gate",
            Kind::Retain => "retain",
            Kind::Strategy => "strategy",
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Kind::Plan => "plan",
            Kind::Round => "round",
            Kind::Gate => "gate",
            Kind::Retain => "retain",
            Kind::Strategy => "strategy",
        })
    }
}

/// What a policy is asked, with the facts it is asked about.
#[derive(Debug, Clone, Copy)]
pub enum Question<'a> {
    Plan(&'a CheckpointFacts),
    Round(&'a CheckpointFacts, &'a [RoundStats]),
    Gate(&'a ExportFacts),
    /// With what the cluster says, which only a `cluster-retainer` is told.
    Retain(&'a RetainFacts, &'a ClusterFacts),
    Strategy(&'a CheckpointFacts, &'a MigrationFacts),
}

impl Question<'_> {
    pub fn kind(&self) -> Kind {
        match self {
            Question::Plan(_) => Kind::Plan,
            Question::Round(..) => Kind::Round,
            Question::Gate(_) => Kind::Gate,
            Question::Retain(..) => Kind::Retain,
            Question::Strategy(..) => Kind::Strategy,
        }
    }

    /// The instant and seed the policy's clock and randomness start from.
    fn determinism(&self) -> Determinism {
        match self {
            Question::Plan(facts) | Question::Round(facts, _) | Question::Strategy(facts, _) => {
                Determinism { now_unix_ms: facts.request.now_unix_ms, seed: facts.request.seed }
            }
            Question::Gate(facts) => Determinism {
                now_unix_ms: chrono::DateTime::parse_from_rfc3339(&facts.now)
                    .map(|t| t.timestamp_millis().max(0) as u64)
                    .unwrap_or(0),
                seed: 0,
            },
            Question::Retain(facts, _) => Determinism { now_unix_ms: facts.now_unix_ms, seed: 0 },
        }
    }
}

/// A policy's answer, checked.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Answer {
    Plan(PlanDecision),
    Round(RoundDecision),
    Gate(GateDecision),
    Retain(Vec<Deletion>),
    Strategy(StrategyDecision),
}

/// The short name of an answer, as cases files expect it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    Plan,
    Deny,
    Skip,
    Allow,
    Narrow,
    AnotherRound,
    DumpNow,
    Abort,
    /// A retainer named entries to delete.
    Delete,
    /// A retainer kept every entry.
    Keep,
    StopAndCopy,
    PreCopy,
    PostCopy,
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Outcome::Plan => "plan",
            Outcome::Deny => "deny",
            Outcome::Skip => "skip",
            Outcome::Allow => "allow",
            Outcome::Narrow => "narrow",
            Outcome::AnotherRound => "another-round",
            Outcome::DumpNow => "dump-now",
            Outcome::Abort => "abort",
            Outcome::Delete => "delete",
            Outcome::Keep => "keep",
            Outcome::StopAndCopy => "stop-and-copy",
            Outcome::PreCopy => "pre-copy",
            Outcome::PostCopy => "post-copy",
        })
    }
}

impl Answer {
    pub fn outcome(&self) -> Outcome {
        match self {
            Answer::Plan(PlanDecision::Plan(_)) => Outcome::Plan,
            Answer::Plan(PlanDecision::Deny(_))
            | Answer::Gate(GateDecision::Deny(_))
            | Answer::Strategy(StrategyDecision::Deny(_)) => Outcome::Deny,
            Answer::Strategy(StrategyDecision::Choose(c)) => match c.strategy {
                Strategy::StopAndCopy => Outcome::StopAndCopy,
                Strategy::PreCopy => Outcome::PreCopy,
                Strategy::PostCopy => Outcome::PostCopy,
            },
            Answer::Plan(PlanDecision::Skip(_)) => Outcome::Skip,
            Answer::Retain(deletions) if deletions.is_empty() => Outcome::Keep,
            Answer::Retain(_) => Outcome::Delete,
            Answer::Gate(GateDecision::Allow) => Outcome::Allow,
            Answer::Gate(GateDecision::Narrow(_)) => Outcome::Narrow,
            Answer::Round(d) => match d.action {
                RoundAction::AnotherRound => Outcome::AnotherRound,
                RoundAction::DumpNow => Outcome::DumpNow,
                RoundAction::Abort => Outcome::Abort,
            },
        }
    }

    /// The answer in the contract's JSON names.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Answer::Plan(d) => json::to_json(d),
            Answer::Round(d) => json::to_json(d),
            Answer::Gate(d) => json::to_json(d),
            Answer::Retain(d) => json::list_to_json(d),
            Answer::Strategy(d) => json::to_json(d),
        }
    }
}

/// An older version's plan, with what 0.3.0 added in its old meaning.
fn upgrade(older: &impl serde::Serialize) -> wasmtime::Result<PlanDecision> {
    super::json::from_older(older).map_err(|e| wasmtime::Error::msg(format!("no 0.3.0 form of this plan: {e}")))
}

/// Asks `policy` the question in a fresh store and checks what it answers.
pub fn decide(
    engine: &PolicyEngine,
    policy: &LoadedPolicy,
    question: Question<'_>,
) -> (Result<Answer, PolicyError>, Trace) {
    let settings = policy.settings.as_str();
    let kind = question.kind();
    let (answer, trace) = engine.call(policy, question.determinism(), kind.export(), |instance, store| {
        use super::world::Instance as I;
        Ok(match (question, instance) {
            (Question::Plan(facts), I::Planner(p)) => Answer::Plan(p.call_plan(store, settings, facts)?),
            (Question::Plan(facts), I::MigrationPlanner(p)) => Answer::Plan(p.call_plan(store, settings, facts)?),
            (Question::Round(facts, rounds), I::MigrationPlanner(p)) => {
                Answer::Round(p.call_after_round(store, settings, facts, rounds)?)
            }
            (Question::Strategy(facts, migration), I::MigrationPlanner(p)) => {
                Answer::Strategy(p.call_strategy(store, settings, facts, migration)?)
            }
            (Question::Plan(facts), I::PolicyV1(p)) => {
                Answer::Plan(upgrade(&p.call_plan(store, settings, &by_name(facts)?)?)?)
            }
            (Question::Plan(facts), I::PlannerV2(p)) => {
                Answer::Plan(upgrade(&p.call_plan(store, settings, &by_name(facts)?)?)?)
            }
            (Question::Plan(facts), I::MigrationPlannerV2(p)) => {
                Answer::Plan(upgrade(&p.call_plan(store, settings, &by_name(facts)?)?)?)
            }
            (Question::Round(facts, rounds), I::PlannerV2(p)) => {
                let rounds: Vec<v2::RoundStats> = by_name(&rounds)?;
                Answer::Round(by_name(&p.call_after_round(store, settings, &by_name(facts)?, &rounds)?)?)
            }
            (Question::Round(facts, rounds), I::MigrationPlannerV2(p)) => {
                let rounds: Vec<v2::RoundStats> = by_name(&rounds)?;
                Answer::Round(by_name(&p.call_after_round(store, settings, &by_name(facts)?, &rounds)?)?)
            }
            (Question::Strategy(facts, migration), I::MigrationPlannerV2(p)) => {
                let migration: v2::migration_planner::ckpt::policy::migration::MigrationFacts = by_name(migration)?;
                Answer::Strategy(by_name(&p.call_strategy(store, settings, &by_name(facts)?, &migration)?)?)
            }
            (Question::Gate(facts), I::GateV2(p)) => {
                Answer::Gate(by_name(&p.call_gate(store, settings, &by_name(facts)?)?)?)
            }
            (Question::Retain(facts, _), I::RetainerV2(p)) => {
                Answer::Retain(by_name(&p.call_retain(store, settings, &by_name(facts)?)?)?)
            }
            (Question::Round(facts, rounds), I::Planner(p)) => {
                Answer::Round(p.call_after_round(store, settings, facts, rounds)?)
            }
            (Question::Round(facts, rounds), I::PolicyV1(p)) => {
                let rounds: Vec<v1::RoundStats> = by_name(&rounds)?;
                Answer::Round(by_name(&p.call_after_round(store, settings, &by_name(facts)?, &rounds)?)?)
            }
            (Question::Gate(facts), I::Gate(p)) => Answer::Gate(p.call_gate(store, settings, facts)?),
            (Question::Gate(facts), I::PolicyV1(p)) => {
                Answer::Gate(by_name(&p.call_gate(store, settings, &by_name(facts)?)?)?)
            }
            (Question::Retain(facts, _), I::Retainer(p)) => Answer::Retain(p.call_retain(store, settings, facts)?),
            (Question::Retain(facts, cluster), I::ClusterRetainer(p)) => {
                Answer::Retain(p.call_retain(store, settings, facts, *cluster)?)
            }
            _ => {
                return Err(wasmtime::Error::msg(format!(
                    "it exports {}, which makes no {kind} decision",
                    policy.world()
                )));
            }
        })
    });
    (answer.and_then(|a| check(&label(policy), &a).map(|()| a)), trace)
}

pub(super) fn label(policy: &LoadedPolicy) -> String {
    format!("{:?} ({})", policy.info.name, policy.source)
}

fn bad(policy: &str, detail: String) -> PolicyError {
    PolicyError::BadAnswer { policy: policy.to_string(), detail }
}

fn check_reason(policy: &str, reason: &str) -> Result<(), PolicyError> {
    engine::check_text(policy, "a reason", reason)
}

fn check_reasons(policy: &str, reasons: &[String]) -> Result<(), PolicyError> {
    if reasons.len() > limits::MAX_REASONS {
        return Err(bad(policy, format!("{} reasons, more than {}", reasons.len(), limits::MAX_REASONS)));
    }
    reasons.iter().try_for_each(|r| check_reason(policy, r))
}

/// The host's limits on any answer, whoever asked; `policy` names it in the error.
pub fn check(policy: &str, answer: &Answer) -> Result<(), PolicyError> {
    match answer {
        Answer::Plan(PlanDecision::Plan(plan)) => check_plan(policy, plan),
        Answer::Plan(PlanDecision::Deny(reasons)) => check_reasons(policy, reasons),
        Answer::Plan(PlanDecision::Skip(reason)) => check_reason(policy, reason),
        Answer::Retain(deletions) => {
            if deletions.len() > limits::MAX_DELETIONS {
                return Err(bad(policy, format!("{} deletions, more than {}", deletions.len(), limits::MAX_DELETIONS)));
            }
            deletions.iter().try_for_each(|d| check_reason(policy, &d.reason))
        }
        Answer::Round(decision) => check_reason(policy, &decision.reason),
        Answer::Gate(GateDecision::Deny(reason)) => check_reason(policy, reason),
        Answer::Gate(GateDecision::Narrow(narrow)) => check_reason(policy, &narrow.reason),
        Answer::Gate(GateDecision::Allow) => Ok(()),
        Answer::Strategy(StrategyDecision::Choose(choice)) => check_reason(policy, &choice.reason),
        Answer::Strategy(StrategyDecision::Deny(reasons)) => check_reasons(policy, reasons),
    }
}

/// What a plan may hold: bounded text, a bounded number of clean export targets, a bounded
/// number of pre-dump rounds.
fn check_plan(policy: &str, plan: &Plan) -> Result<(), PolicyError> {
    check_reasons(policy, &plan.reasons)?;
    if plan.exports.len() > limits::MAX_EXPORTS {
        return Err(bad(policy, format!("{} export targets, more than {}", plan.exports.len(), limits::MAX_EXPORTS)));
    }
    for target in &plan.exports {
        engine::check_text(policy, "an export location", &target.location)?;
        if target.location.trim().is_empty() {
            return Err(bad(policy, "an export target has an empty location".into()));
        }
    }
    let rounds = match plan.pre_dump {
        PreDumpPlan::Rounds(n) => n,
        PreDumpPlan::Converge(c) => c.max_rounds,
        PreDumpPlan::None => 0,
    };
    if rounds > limits::MAX_PRE_DUMP_ROUNDS {
        return Err(bad(policy, format!("{rounds} pre-dump rounds, more than {}", limits::MAX_PRE_DUMP_ROUNDS)));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(reasons: Vec<String>, exports: Vec<ExportTarget>, pre_dump: PreDumpPlan) -> Answer {
        let options = CheckpointOptions::none();
        Answer::Plan(PlanDecision::Plan(Plan { options, pre_dump, exports, plaintext_spill: false, reasons }))
    }

    fn archive(location: &str) -> ExportTarget {
        ExportTarget {
            kind: TargetKind::Archive,
            location: location.into(),
            compression: Compression::Zstd,
            sealed_to: vec![],
            signed: false,
        }
    }

    #[test]
    fn every_answer_is_held_to_the_same_limits() {
        let long = "x".repeat(limits::MAX_TEXT_BYTES + 1);
        let refused = [
            plan(vec![long.clone()], vec![], PreDumpPlan::None),
            plan(vec!["r".into(); limits::MAX_REASONS + 1], vec![], PreDumpPlan::None),
            plan(vec![], vec![archive("")], PreDumpPlan::None),
            plan(vec![], vec![archive("a\0b")], PreDumpPlan::None),
            plan(vec![], vec![archive("/a"); limits::MAX_EXPORTS + 1], PreDumpPlan::None),
            plan(vec![], vec![], PreDumpPlan::Rounds(limits::MAX_PRE_DUMP_ROUNDS + 1)),
            Answer::Plan(PlanDecision::Deny(vec![long.clone()])),
            Answer::Round(RoundDecision { action: RoundAction::DumpNow, reason: long.clone() }),
            Answer::Gate(GateDecision::Deny(long.clone())),
            Answer::Gate(GateDecision::Narrow(Narrowing { drop_rootfs: true, drop_volumes: false, reason: long })),
        ];
        for answer in refused {
            let err = check("\"p\" (p.wasm)", &answer).unwrap_err();
            assert!(err.to_string().contains("\"p\" (p.wasm)"), "{err}");
        }
        assert!(check("p", &plan(vec!["ok".into()], vec![archive("/srv/a.tar")], PreDumpPlan::Rounds(3))).is_ok());
        assert!(check("p", &Answer::Gate(GateDecision::Allow)).is_ok());
    }

    #[test]
    fn outcomes_have_the_names_cases_files_use() {
        let round = |action| Answer::Round(RoundDecision { action, reason: String::new() });
        assert_eq!(plan(vec![], vec![], PreDumpPlan::None).outcome().to_string(), "plan");
        assert_eq!(Answer::Plan(PlanDecision::Deny(vec![])).outcome().to_string(), "deny");
        assert_eq!(round(RoundAction::AnotherRound).outcome().to_string(), "another-round");
        assert_eq!(round(RoundAction::DumpNow).outcome().to_string(), "dump-now");
        assert_eq!(round(RoundAction::Abort).outcome().to_string(), "abort");
        assert_eq!(Answer::Gate(GateDecision::Allow).outcome().to_string(), "allow");
        assert_eq!(serde_json::to_value(Outcome::AnotherRound).unwrap(), "another-round");
        assert_eq!(Kind::Round.export(), "after-round");
    }
}
