//! Tools for policy authors: inspect a component, capture facts, evaluate one decision, and run
//! table-driven cases against a policy in any language.

use std::path::Path;

use serde::Deserialize;
use serde_json::{Value, json};

use super::Context;
use crate::error::{Error, Result};
use crate::policy::bindings::*;
use crate::policy::decision::{self, Answer, Kind, Outcome, Question};
use crate::policy::{self, LoadedPolicy, PolicyEngine, Trace, Wait, json};
use crate::registry::Registry;

fn engine(ctx: &Context) -> Result<PolicyEngine> {
    Ok(PolicyEngine::new(&ctx.policy_cache())?)
}

/// A policy's source and bytes. `HOST/NAME@sha256:DIGEST` is a wasm OCI artifact in a registry,
/// pinned by its manifest's digest, and always that: never a file of that relative name. It is
/// fetched once into the policy cache, checked against the pin whenever it is read from there,
/// and named by its reference in decision records. Anything else is a file, or `default`.
pub fn fetch_component(ctx: &Context, spec: &str) -> Result<(String, Vec<u8>)> {
    let reference = crate::registry::check_reference(spec).is_ok();
    if !is_pinned(spec) && (!reference || Path::new(spec).exists()) {
        let (_, bytes) = policy::read_component(spec)?;
        return Ok((spec.to_string(), bytes));
    }
    Ok((spec.to_string(), fetch_pinned(ctx, spec)?))
}

/// The component `spec` names (as [`fetch_component`] reads it), with its settings.
pub fn component(ctx: &Context, spec: &str, settings: String) -> Result<policy::Component> {
    Ok(policy::Component { read: fetch_component(ctx, spec)?, settings })
}

/// A planner (the built-in default when none is named) and gates, each with its settings.
pub fn planner_and_gates(
    ctx: &Context,
    (planner, planner_settings): (Option<&str>, Option<&str>),
    gates: &[(String, String)],
) -> Result<(policy::Component, Vec<policy::Component>)> {
    let planner = planner.unwrap_or(policy::DEFAULT_POLICY_SOURCE);
    let planner = component(ctx, planner, policy::read_settings(planner_settings)?)?;
    let gates = gates.iter().map(|(spec, settings)| component(ctx, spec, settings.clone()));
    Ok((planner, gates.collect::<Result<Vec<_>>>()?))
}

/// Whether `spec` is a registry reference pinned by digest, which is never taken for a file.
pub fn is_pinned(spec: &str) -> bool {
    spec.contains("@sha256:") && crate::registry::check_reference(spec).is_ok()
}

fn fetch_pinned(ctx: &Context, spec: &str) -> Result<Vec<u8>> {
    let pin = spec.rsplit_once("@sha256:").map(|(_, hex)| hex).unwrap_or_default();
    let pinned: oci_spec::image::Digest = format!("sha256:{pin}").parse().map_err(|_| {
        Error::invalid(format!(
            "policy {spec:?}: a policy from a registry is pinned by its digest: give HOST/NAME@sha256:DIGEST, as 'ckpt policy push' prints it"
        ))
    })?;
    let cached = ctx.policy_cache().join("oci").join(format!("{pin}.wasm"));
    let cached_manifest = cached.with_extension("manifest");
    if let (Ok(manifest), Ok(wasm)) = (std::fs::read(&cached_manifest), std::fs::read(&cached)) {
        match crate::image::artifact::verify_wasm_artifact(spec, &pinned, &manifest, &wasm) {
            Ok(()) => return Ok(wasm),
            // Fetched again below, over what is there.
            Err(e) => tracing::warn!("the policy cache's copy of {spec:?} is refused ({e}); fetching it again"),
        }
    }
    let staging = crate::util::tempdir_in(&ctx.roots.staging_dir(), "policy-pull")?;
    let layout = staging.path.join("oci");
    let access = super::images::registry_access(ctx, spec, &super::images::RegistryFlags::default());
    let registry = crate::registry::Skopeo::find()?;
    super::images::check_room_for_pull(ctx, &registry, spec, &access)?;
    registry.pull(spec, &layout, "policy", &access)?;
    let (manifest, wasm) =
        crate::image::artifact::read_wasm_artifact(&layout, spec, &pinned, crate::policy::limits::MAX_COMPONENT_BYTES)?;
    crate::util::create_dir_with_mode(cached.parent().expect("the cache file has a directory"), 0o700)?;
    crate::util::write_atomic(&cached_manifest, &manifest, 0o600)?;
    crate::util::write_atomic(&cached, &wasm, 0o600)?;
    Ok(wasm)
}

/// `ckpt policy push FILE HOST/NAME[:TAG]`: publishes a component as a wasm OCI artifact;
/// returns the reference pinned by digest, which `--policy` takes.
pub fn push(ctx: &Context, file: &str, destination: &str, flags: &super::images::RegistryFlags) -> Result<String> {
    crate::registry::check_reference(destination)?;
    let (source, wasm) = policy::read_component(file)?;
    // What is published must load as a policy here: a component of the ckpt:policy world.
    engine(ctx)?.describe(&source, &wasm)?;
    let staging = crate::util::tempdir_in(&ctx.roots.staging_dir(), "policy-push")?;
    let layout = staging.path.join("oci");
    let digest = crate::image::artifact::write_wasm_artifact(&layout, "policy", &wasm)?;
    let access = super::images::registry_access(ctx, destination, flags);
    crate::registry::Skopeo::find()?.push(&layout, "policy", destination, &access)?;
    let repository = destination.rsplit_once(':').filter(|(_, tag)| !tag.contains('/')).map_or(destination, |(r, _)| r);
    Ok(format!("{repository}@{digest}"))
}

fn load(ctx: &Context, file: &str, settings: Option<&str>) -> Result<(PolicyEngine, LoadedPolicy)> {
    let engine = engine(ctx)?;
    let (source, bytes) = fetch_component(ctx, file)?;
    let settings = policy::read_settings(settings)?;
    let loaded = engine.load(&source, &bytes, &settings)?;
    Ok((engine, loaded))
}

/// `ckpt policy inspect`: what the policy says about itself, its imports, its digest, and
/// whether this host can run it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PolicyDescription {
    pub source: String,
    pub digest: String,
    pub size_bytes: usize,
    pub runs_here: bool,
    /// The world it exports, such as `ckpt:policy/planner@0.3.0`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub world: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decisions: Option<Vec<DecisionKind>>,
    /// The JSON Schema as JSON when it parses, else as the text the policy gave.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub settings_schema: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub imports: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub precompiled_in_cache: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

pub fn inspect(ctx: &Context, file: &str) -> Result<PolicyDescription> {
    let engine = engine(ctx)?;
    let (source, bytes) = fetch_component(ctx, file)?;
    let described = engine.describe(&source, &bytes);
    let mut description = PolicyDescription {
        source,
        // Hashed once: `describe` has the digest when it loaded the component.
        digest: described.as_ref().map_or_else(|_| policy::component_digest(&bytes), |p| p.digest.clone()),
        size_bytes: bytes.len(),
        runs_here: described.is_ok(),
        world: None,
        name: None,
        version: None,
        decisions: None,
        settings_schema: None,
        imports: None,
        precompiled_in_cache: None,
        error: None,
    };
    match described {
        Ok(p) => {
            description.settings_schema = Some(
                serde_json::from_str::<Value>(&p.info.settings_schema)
                    .unwrap_or(Value::String(p.info.settings_schema.clone())),
            );
            description.world = Some(p.world().to_string());
            description.name = Some(p.info.name);
            description.version = Some(p.info.version);
            description.decisions = Some(p.info.decisions);
            description.imports = Some(p.imports);
            description.precompiled_in_cache = Some(p.cached);
        }
        Err(e) => description.error = Some(e.to_string()),
    }
    Ok(description)
}

/// `ckpt policy facts`: the facts a planner would receive for this container, as a fixture.
pub fn facts(ctx: &Context, name: &str) -> Result<Value> {
    let record = ctx.containers.lookup(name)?;
    let plain = super::checkpoint::CheckpointRequest::default();
    let (options, exports) = super::checkpoint::requested(&plain, crate::archive::Compression::Zstd);
    Ok(json::to_json(&super::facts::checkpoint(ctx, &record, None, options, exports, "cli", None)))
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path, what: &str) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(Error::io("read", path))?;
    serde_json::from_str(&text)
        .map_err(|e| Error::invalid(format!("{what} {:?} is not valid: {e}", path.display().to_string())))
}

/// One decision of any kind, with its trace.
pub struct Evaluated {
    /// The answer as JSON, or why there is none (which counts as a denial).
    pub decision: std::result::Result<Value, String>,
    pub outcome: Outcome,
    pub trace: Trace,
}

/// A retain question's facts: `retain-facts`, or `{"retain": retain-facts, "cluster":
/// cluster-facts}` for a `cluster-retainer` told what the cluster says.
fn retain_facts(facts: &Value) -> std::result::Result<(RetainFacts, ClusterFacts), String> {
    match (facts.get("retain"), facts.get("cluster")) {
        (Some(retain), Some(cluster)) => Ok((json::from_json(retain)?, json::from_json(cluster)?)),
        _ => Ok((json::from_json(facts)?, ClusterFacts::no_cluster())),
    }
}

/// Parses `facts` for the question `kind` and asks it through the same path a checkpoint does.
fn evaluate(
    engine: &PolicyEngine,
    policy: &LoadedPolicy,
    kind: Kind,
    facts: &Value,
    rounds: &[RoundStats],
) -> Result<Evaluated> {
    let bad = |e: String| Error::invalid(format!("the {kind} facts do not fit the contract: {e}"));
    let (answer, trace) = match kind {
        Kind::Plan | Kind::Round => {
            let facts: CheckpointFacts = json::from_json(facts).map_err(bad)?;
            let question = if kind == Kind::Plan { Question::Plan(&facts) } else { Question::Round(&facts, rounds) };
            decision::decide(engine, policy, question)
        }
        Kind::Gate => decision::decide(engine, policy, Question::Gate(&json::from_json(facts).map_err(bad)?)),
        Kind::Retain => {
            let (facts, cluster) = retain_facts(facts).map_err(bad)?;
            decision::decide(engine, policy, Question::Retain(&facts, &cluster))
        }
        Kind::Strategy => {
            let part = |key: &str| {
                facts.get(key).ok_or_else(|| {
                    bad(format!("a strategy question takes {{\"checkpoint\": checkpoint-facts, \"migration\": migration-facts}}; {key:?} is missing"))
                })
            };
            let checkpoint: CheckpointFacts = json::from_json(part("checkpoint")?).map_err(bad)?;
            let migration: MigrationFacts = json::from_json(part("migration")?).map_err(bad)?;
            decision::decide(engine, policy, Question::Strategy(&checkpoint, &migration))
        }
    };
    Ok(Evaluated {
        // A failure is a denial: fail closed, here as in a checkpoint.
        outcome: answer.as_ref().map_or(Outcome::Deny, Answer::outcome),
        decision: answer.map(|a| a.to_json()).map_err(|e| e.to_string()),
        trace,
    })
}

/// `ckpt policy eval`.
pub fn eval(
    ctx: &Context,
    file: &str,
    facts: &Path,
    config: Option<&str>,
    kind: Kind,
    rounds: Option<&Path>,
) -> Result<Value> {
    let (engine, policy) = load(ctx, file, config)?;
    let facts: Value = read_json(facts, "facts file")?;
    let rounds: Vec<RoundStats> = match rounds {
        Some(path) => json::list_from_json(&read_json::<Value>(path, "rounds file")?)
            .map_err(|e| Error::invalid(format!("rounds file {:?}: {e}", path.display().to_string())))?,
        None => Vec::new(),
    };
    let evaluated = evaluate(&engine, &policy, kind, &facts, &rounds)?;
    Ok(json!({
        "policy": {"name": policy.info.name, "digest": policy.digest},
        "decision": evaluated.decision.as_ref().ok(),
        "error": evaluated.decision.as_ref().err(),
        "outcome": evaluated.outcome,
        "logs": evaluated.trace.logs,
        "fuel_used": evaluated.trace.fuel_used,
        "duration_us": evaluated.trace.duration_us,
    }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Cases {
    #[serde(default)]
    config: Option<Value>,
    cases: Vec<Case>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    #[serde(default = "plan_kind")]
    decision: Kind,
    /// The facts, or the name of a JSON file beside the cases file.
    facts: Value,
    /// Merged into the facts (objects merge, anything else replaces), to vary a shared fixture.
    #[serde(default)]
    patch: Option<Value>,
    /// Pre-dump rounds for a `round` decision, in the contract's JSON.
    #[serde(default)]
    rounds: Option<Value>,
    #[serde(default)]
    config: Option<Value>,
    expect: Expect,
}

fn plan_kind() -> Kind {
    Kind::Plan
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Expect {
    outcome: String,
    /// A JSON value the decision must contain (objects by subset, everything else equal).
    #[serde(default)]
    contains: Option<Value>,
    /// Text that some reason or the error must contain.
    #[serde(default)]
    reason: Option<String>,
}

/// Merges `patch` into `target`; a patch key that names nothing in the facts is an error that
/// names it, since the case would silently test the unpatched facts.
fn merge(target: &mut Value, patch: &Value, path: &str) -> Result<()> {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                let here = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
                let known: Vec<String> = t.keys().cloned().collect();
                let Some(field) = t.get_mut(k) else {
                    let close = k.replace('_', "-");
                    let hint =
                        if known.contains(&close) { format!(" (did you mean {close:?}?)") } else { String::new() };
                    return Err(Error::invalid(format!(
                        "patch key {here:?} names no field of the facts{hint}; the fields there are {}",
                        known.join(", ")
                    )));
                };
                merge(field, v, &here)?;
            }
            Ok(())
        }
        (t, p) => {
            *t = p.clone();
            Ok(())
        }
    }
}

fn case_facts(case: &Case, cases_file: &Path) -> Result<Value> {
    let mut facts = match &case.facts {
        Value::String(file) => read_json(&cases_file.parent().unwrap_or(Path::new(".")).join(file), "facts file")?,
        other => other.clone(),
    };
    if let Some(patch) = &case.patch {
        merge(&mut facts, patch, "").map_err(|e| Error::invalid(format!("case {:?}: {e}", case.name)))?;
    }
    Ok(facts)
}

fn contains(actual: &Value, wanted: &Value) -> bool {
    match (actual, wanted) {
        (Value::Object(a), Value::Object(w)) => w.iter().all(|(k, v)| a.get(k).is_some_and(|av| contains(av, v))),
        (Value::Array(a), Value::Array(w)) => a.len() == w.len() && a.iter().zip(w).all(|(av, wv)| contains(av, wv)),
        (a, w) => a == w,
    }
}

/// `ckpt policy test`: runs every case; returns the report lines and whether all passed.
pub fn test(ctx: &Context, file: &str, cases_file: &Path) -> Result<(Vec<String>, bool)> {
    let cases: Cases = read_json(cases_file, "cases file")?;
    let engine = engine(ctx)?;
    let (source, bytes) = fetch_component(ctx, file)?;
    let mut lines = Vec::new();
    let (mut passed, mut failed) = (0, 0);
    for case in &cases.cases {
        let config = case.config.as_ref().or(cases.config.as_ref()).map(|c| c.to_string()).unwrap_or_default();
        let verdict = case_facts(case, cases_file).and_then(|facts| {
            let rounds: Vec<RoundStats> = match &case.rounds {
                Some(rounds) => json::list_from_json(rounds).map_err(|e| Error::invalid(format!("rounds: {e}")))?,
                None => Vec::new(),
            };
            let policy = engine.load(&source, &bytes, &config)?;
            evaluate(&engine, &policy, case.decision, &facts, &rounds)
        });
        let (ok, detail) = match verdict {
            Ok(evaluated) => {
                let got = evaluated.outcome.to_string();
                let text = match &evaluated.decision {
                    Ok(v) => v.to_string(),
                    Err(e) => e.clone(),
                };
                let mut problems = Vec::new();
                if got != case.expect.outcome {
                    problems.push(format!("outcome {got:?}, expected {:?}", case.expect.outcome));
                }
                if let (Some(wanted), Ok(actual)) = (&case.expect.contains, &evaluated.decision)
                    && !contains(actual, wanted)
                {
                    problems.push(format!("decision {actual} does not contain {wanted}"));
                }
                if let Some(reason) = &case.expect.reason
                    && !text.contains(reason.as_str())
                {
                    problems.push(format!("no reason mentions {reason:?} in {text}"));
                }
                (problems.is_empty(), problems.join("; "))
            }
            Err(e)
                if case.expect.outcome == "refused-settings"
                    && matches!(e, Error::PolicyEngine(policy::PolicyError::Settings { .. })) =>
            {
                (true, String::new())
            }
            Err(e) => (false, e.to_string()),
        };
        if ok {
            passed += 1;
            lines.push(format!("ok    {}", case.name));
        } else {
            failed += 1;
            lines.push(format!("FAIL  {}: {detail}", case.name));
        }
    }
    lines.push(format!("{passed} passed, {failed} failed"));
    Ok((lines, failed == 0))
}

/// `ckpt policy bench`: the cost of loading a policy (compile or cache) and of one decision
/// (fresh store, instantiate, call, drop), as percentiles over `iterations` decisions.
pub fn bench(
    ctx: &Context,
    file: &str,
    facts: &Path,
    config: Option<&str>,
    decision: Option<Kind>,
    iterations: usize,
) -> Result<Value> {
    let engine = engine(ctx)?;
    let (source, bytes) = fetch_component(ctx, file)?;
    let settings = policy::read_settings(config)?;
    let started = std::time::Instant::now();
    let loaded = engine.load(&source, &bytes, &settings)?;
    let load_us = started.elapsed().as_micros() as u64;
    // What the component decides, unless asked: a gate gates, a retainer retains.
    let kind = decision.unwrap_or(match loaded.world() {
        crate::policy::World::Gate => Kind::Gate,
        crate::policy::World::Retainer | crate::policy::World::ClusterRetainer => Kind::Retain,
        _ => Kind::Plan,
    });
    let value = read_json::<Value>(facts, "facts file")?;
    let bad = |e: String| Error::invalid(format!("facts file {:?}: {e}", facts.display().to_string()));
    // Parsed once, so that only the decision is timed.
    enum Parsed {
        Checkpoint(Box<CheckpointFacts>),
        Export(Box<ExportFacts>),
        Retain(RetainFacts, ClusterFacts),
    }
    let parsed = match kind {
        Kind::Plan | Kind::Round => Parsed::Checkpoint(Box::new(json::from_json(&value).map_err(bad)?)),
        Kind::Gate => Parsed::Export(Box::new(json::from_json(&value).map_err(bad)?)),
        Kind::Retain => {
            let (facts, cluster) = retain_facts(&value).map_err(bad)?;
            Parsed::Retain(facts, cluster)
        }
        Kind::Strategy => return Err(Error::invalid("policy bench measures plan, round, gate and retain decisions")),
    };
    let question = match &parsed {
        Parsed::Checkpoint(facts) if kind == Kind::Round => Question::Round(facts, &[]),
        Parsed::Checkpoint(facts) => Question::Plan(facts),
        Parsed::Export(facts) => Question::Gate(facts),
        Parsed::Retain(facts, cluster) => Question::Retain(facts, cluster),
    };
    let mut fuel = 0;
    // Warm, as in a checkpoint: the host's own work between decisions gives the next instance
    // time to be made, and keeps the deciding core awake. Then the same after the deciding
    // thread slept, and with each decision making its own instance, for comparison.
    let mut timed = |premade: bool, wait: Wait| -> Result<Vec<u64>> {
        loaded.set_premade(premade);
        let mut samples = Vec::with_capacity(iterations);
        for _ in 0..iterations.max(1) {
            loaded.wait_for_spare(wait);
            let started = std::time::Instant::now();
            let (result, trace) = decision::decide(&engine, &loaded, question);
            samples.push(started.elapsed().as_nanos() as u64);
            result?;
            fuel = trace.fuel_used;
        }
        samples.sort_unstable();
        Ok(samples)
    };
    let fresh = timed(false, Wait::Sleeping)?;
    let woken = timed(true, Wait::Sleeping)?;
    let samples = timed(true, Wait::Busy)?;
    let percentile = |samples: &[u64], q: f64| {
        samples[((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1] as f64 / 1000.0
    };
    let at = |q: f64| percentile(&samples, q);
    Ok(json!({
        "policy": loaded.info.name,
        "decision": kind,
        "size_bytes": bytes.len(),
        "load_us": load_us,
        "compiled_from_cache": loaded.cached,
        "decisions": samples.len(),
        "decision_p50_us": at(0.50),
        "decision_p99_us": at(0.99),
        "decision_max_us": at(1.0),
        "woken_p50_us": percentile(&woken, 0.50),
        "woken_p99_us": percentile(&woken, 0.99),
        "fresh_instance_p50_us": percentile(&fresh, 0.50),
        "fresh_instance_p99_us": percentile(&fresh, 0.99),
        "fuel_per_decision": fuel,
    }))
}
