//! The pre-dump orchestration, round by round, with a recording runtime standing in for runc:
//! these machines have no memory dirty tracking, so CRIU's pre-dump cannot run here. The policy
//! deciding after each round is the real migration component.

use std::sync::Arc;

use crate::criu::{Criu, CriuError, DumpStats, encode_dump_stats};
use crate::ops::Context;
use crate::ops::checkpoint::predump;
use crate::policy::Policies;
use crate::policy::bindings::{CheckpointFacts, Convergence, PreDumpPlan};
use crate::runtime::fake::{Call, RecordingRuntime};
use crate::runtime::{CheckpointOptions, RuntimeError};
use crate::store::Roots;

struct TrackingCriu;

impl Criu for TrackingCriu {
    fn version(&self) -> Result<u32, CriuError> {
        Ok(40201)
    }
    fn memory_tracking(&self) -> Result<(), CriuError> {
        Ok(())
    }
}

/// The built component, or `None` (the test is skipped) when scripts/build-policies has not run
/// and CKPT_REQUIRE_INTEGRATION does not demand it.
fn policy_path(name: &str) -> Option<String> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/policies").join(format!("{name}.wasm"));
    if path.is_file() {
        return Some(path.to_string_lossy().into_owned());
    }
    let missing = format!("{} is missing: run scripts/build-policies", path.display());
    assert!(std::env::var_os("CKPT_REQUIRE_INTEGRATION").is_none_or(|v| v != "1"), "{missing}");
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "skipped: the pre-dump tests need {missing}");
    None
}

struct Setup {
    _dir: tempfile::TempDir,
    ctx: Context,
    runtime: Arc<RecordingRuntime>,
    facts: CheckpointFacts,
}

/// A fake runtime whose successive pre-dumps write CRIU statistics with these page counts.
fn setup(pages_written: &[u64]) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let mut ctx = Context::new(Roots::new(dir.path().join("root"), dir.path().join("run")), "runc".into());
    let runtime = Arc::new(RecordingRuntime::default());
    for &pages in pages_written {
        runtime.push_dump_effect(Box::new(move |options: &CheckpointOptions| {
            let stats =
                DumpStats { frozen_time: 800, pages_scanned: 131072, pages_written: pages, ..Default::default() };
            std::fs::write(options.work_path.join("stats-dump"), encode_dump_stats(&stats))
                .map_err(|e| RuntimeError::Spawn { runtime: "fake".into(), action: "pre-dump", source: e })
        }));
    }
    ctx.runtime_override = Some(runtime.clone());
    ctx.criu_override = Some(Arc::new(TrackingCriu));
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/facts.json");
    let text = std::fs::read_to_string(fixture).unwrap();
    let mut facts: CheckpointFacts = crate::policy::json::from_json(&serde_json::from_str(&text).unwrap()).unwrap();
    facts.host.memory_tracking = true;
    std::fs::create_dir_all(ctx.containers.paths(&facts.container.id).bundle()).unwrap();
    Setup { _dir: dir, ctx, runtime, facts }
}

fn migration(ctx: &Context) -> Option<Policies> {
    let settings = r#"{"target": "/var/tmp/{name}.tar.zst", "stop-below-pages": 100, "max-rounds": 8}"#;
    Some(Policies::load(&ctx.roots.root.join("policy-cache"), (&policy_path("migration")?, settings), &[]).unwrap())
}

fn pre_dumps(runtime: &RecordingRuntime) -> Vec<CheckpointOptions> {
    runtime
        .calls()
        .into_iter()
        .filter_map(|c| match c {
            Call::Checkpoint { options, .. } => Some(options),
            _ => None,
        })
        .collect()
}

#[test]
fn rounds_chain_until_the_policy_sees_convergence() {
    let s = setup(&[100_000, 30_000, 50, 10]);
    let Some(mut policies) = migration(&s.ctx) else { return };
    let plan = policies.plan(&s.facts).unwrap();
    let PreDumpPlan::Converge(convergence) = plan.pre_dump else { panic!("migration plans convergence: {plan:?}") };
    assert_eq!(convergence.stop_below_pages, 100);
    let paths = s.ctx.containers.paths(&s.facts.container.id);
    let base =
        CheckpointOptions { image_path: paths.checkpoint_dir(), work_path: paths.bundle(), ..Default::default() };
    let dirs =
        predump::run_rounds(s.runtime.as_ref(), &mut policies, &s.facts, &paths, &plan.pre_dump, &base).unwrap().keep();
    assert_eq!(dirs, vec!["pre-dump-1", "pre-dump-2", "pre-dump-3"], "stopped after the round under 100 pages");
    let calls = pre_dumps(&s.runtime);
    assert_eq!(calls.len(), 3);
    for (i, call) in calls.iter().enumerate() {
        assert!(call.pre_dump && call.leave_running, "round {i} is a pre-dump that leaves the container running");
        assert_eq!(call.image_path, paths.bundle().join(format!("pre-dump-{}", i + 1)));
        let parent = (i > 0).then(|| std::path::PathBuf::from(format!("../pre-dump-{i}")));
        assert_eq!(call.parent_path, parent, "each round is relative to the previous one");
    }
    let rounds: Vec<_> = policies.records.iter().filter(|r| r.kind == crate::policy::Kind::Round).collect();
    assert_eq!(rounds.len(), 3);
    assert_eq!(rounds[2].decision["action"], "dump-now");
    assert!(rounds[2].decision["reason"].as_str().unwrap().contains("converged"));
}

#[test]
fn a_round_that_stops_shrinking_ends_the_pre_dumps() {
    let s = setup(&[100_000, 95_000, 10]);
    let Some(mut policies) = migration(&s.ctx) else { return };
    let paths = s.ctx.containers.paths(&s.facts.container.id);
    let plan = PreDumpPlan::Converge(Convergence { max_rounds: 8, stop_below_pages: 100, min_shrink_percent: 80 });
    let dirs =
        predump::run_rounds(s.runtime.as_ref(), &mut policies, &s.facts, &paths, &plan, &CheckpointOptions::default())
            .unwrap()
            .keep();
    assert_eq!(dirs.len(), 2);
    assert!(policies.records.last().unwrap().decision["reason"].as_str().unwrap().contains("not converging"));
}

#[test]
fn a_fixed_number_of_rounds_needs_no_decision_and_a_failed_round_cleans_up() {
    let s = setup(&[100_000, 90_000]);
    let Some(mut policies) = migration(&s.ctx) else { return };
    let paths = s.ctx.containers.paths(&s.facts.container.id);
    let dirs = predump::run_rounds(
        s.runtime.as_ref(),
        &mut policies,
        &s.facts,
        &paths,
        &PreDumpPlan::Rounds(2),
        &CheckpointOptions::default(),
    )
    .unwrap()
    .keep();
    assert_eq!(dirs.len(), 2);
    assert!(policies.records.iter().all(|r| r.kind != crate::policy::Kind::Round));

    let s = setup(&[100_000]);
    s.runtime.push_dump_effect(Box::new(|_: &CheckpointOptions| {
        Err(RuntimeError::Failed {
            runtime: "fake".into(),
            action: "pre-dump",
            id: "x".into(),
            status: "exit status: 1".into(),
            stderr: "criu failed".into(),
        })
    }));
    let Some(mut policies) = migration(&s.ctx) else { return };
    let paths = s.ctx.containers.paths(&s.facts.container.id);
    let err = predump::run_rounds(
        s.runtime.as_ref(),
        &mut policies,
        &s.facts,
        &paths,
        &PreDumpPlan::Rounds(3),
        &CheckpointOptions::default(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("criu failed"), "{err}");
    assert!(
        !paths.bundle().join("pre-dump-1").exists() && !paths.bundle().join("pre-dump-2").exists(),
        "no round is left behind"
    );
}
