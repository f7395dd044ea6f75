//! Pre-dump rounds: dump memory while the container runs, round after round, each against the
//! last, until the planner says the dirty pages have converged; the final dump then only writes
//! what changed since the last round, so the container is frozen for less time.

use std::path::PathBuf;
use std::time::Instant;

use crate::criu;
use crate::error::{Error, Result};
use crate::policy::Policies;
use crate::policy::bindings::{CheckpointFacts, PreDumpPlan, RoundAction, RoundStats};
use crate::runtime::{CheckpointOptions, OciRuntime};
use crate::store::ContainerPaths;
use crate::util::remove_dir_all;

/// Host's own bound, whatever a policy asks for.
pub const MAX_ROUNDS: u32 = 16;

pub fn round_dir(round: u32) -> String {
    format!("pre-dump-{round}")
}

/// Runs the planned rounds; returns the directories of the rounds, oldest first, for the final
/// dump to use the last one as its parent.
pub fn run_rounds(
    runtime: &dyn OciRuntime,
    policies: &mut Policies,
    facts: &CheckpointFacts,
    paths: &ContainerPaths,
    plan: &PreDumpPlan,
    base: &CheckpointOptions,
) -> Result<Vec<String>> {
    let (limit, ask_policy) = match plan {
        PreDumpPlan::None => return Ok(Vec::new()),
        PreDumpPlan::Rounds(n) => (*n, false),
        PreDumpPlan::Converge(c) => (c.max_rounds, true),
    };
    let limit = limit.clamp(1, MAX_ROUNDS);
    let bundle = paths.bundle();
    let mut rounds: Vec<RoundStats> = Vec::new();
    let mut dirs: Vec<String> = Vec::new();
    for round in 1..=limit {
        let dir = round_dir(round);
        remove_dir_all(&bundle.join(&dir))?;
        let options = CheckpointOptions {
            image_path: bundle.join(&dir),
            work_path: bundle.clone(),
            leave_running: true,
            pre_dump: true,
            parent_path: dirs.last().map(|previous| PathBuf::from("..").join(previous)),
            ..base.clone()
        };
        let started = Instant::now();
        if let Err(e) = runtime.checkpoint(&facts.container.id, &options) {
            clean(paths, &dirs);
            remove_dir_all(&bundle.join(&dir))?;
            return Err(e.into());
        }
        let stats = criu::read_dump_stats(&bundle.join("stats-dump"))?;
        rounds.push(RoundStats {
            round,
            pages_scanned: stats.pages_scanned,
            pages_written: stats.pages_written,
            frozen_time_us: stats.frozen_time,
            duration_us: started.elapsed().as_micros() as u64,
        });
        dirs.push(dir);
        if !ask_policy {
            continue;
        }
        let decision = policies.after_round(facts, &rounds).inspect_err(|_| clean(paths, &dirs))?;
        match decision.action {
            RoundAction::AnotherRound => continue,
            RoundAction::DumpNow => break,
            RoundAction::Abort => {
                clean(paths, &dirs);
                return Err(Error::Policy(format!(
                    "policy {:?} aborted the checkpoint of container {:?} after pre-dump round {round}: {}; the container keeps running",
                    policies.planner.info.name, facts.container.name, decision.reason
                )));
            }
        }
    }
    Ok(dirs)
}

/// Removes the round directories of an abandoned checkpoint.
pub fn clean(paths: &ContainerPaths, dirs: &[String]) {
    for dir in dirs {
        let _ = remove_dir_all(&paths.bundle().join(dir));
    }
}
