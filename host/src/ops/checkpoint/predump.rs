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

/// The round directories of a checkpoint in progress, oldest first. They go when this is
/// dropped, unless the dump that uses them as parents succeeded and [`PreDumpRounds::keep`] was
/// called.
#[derive(Debug)]
pub struct PreDumpRounds {
    bundle: PathBuf,
    dirs: Vec<String>,
}

impl PreDumpRounds {
    fn new(bundle: PathBuf) -> PreDumpRounds {
        PreDumpRounds { bundle, dirs: Vec::new() }
    }

    /// The directory the next dump names as its parent.
    pub fn last(&self) -> Option<&String> {
        self.dirs.last()
    }

    /// The rounds stay: the dump on top of them succeeded.
    pub fn keep(mut self) -> Vec<String> {
        std::mem::take(&mut self.dirs)
    }
}

impl Drop for PreDumpRounds {
    fn drop(&mut self) {
        for dir in &self.dirs {
            let _ = remove_dir_all(&self.bundle.join(dir));
        }
    }
}

/// Runs the planned rounds; returns their directories, oldest first, for the final dump to use
/// the last one as its parent. On any error the rounds made so far are removed.
pub fn run_rounds(
    runtime: &dyn OciRuntime,
    policies: &mut Policies,
    facts: &CheckpointFacts,
    paths: &ContainerPaths,
    plan: &PreDumpPlan,
    base: &CheckpointOptions,
) -> Result<PreDumpRounds> {
    let bundle = paths.bundle();
    let mut dirs = PreDumpRounds::new(bundle.clone());
    let (limit, ask_policy) = match plan {
        PreDumpPlan::None | PreDumpPlan::Rounds(0) => return Ok(dirs),
        PreDumpPlan::Rounds(n) => (*n, false),
        PreDumpPlan::Converge(c) => (c.max_rounds, true),
    };
    let limit = limit.clamp(1, MAX_ROUNDS);
    let mut rounds: Vec<RoundStats> = Vec::new();
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
        // Claimed before CRIU writes into it, so that a failed round is removed with the rest.
        dirs.dirs.push(dir);
        runtime.checkpoint(&facts.container.id, &options)?;
        let stats = criu::read_dump_stats(&bundle.join(crate::archive::checkpoint::STATS_DUMP))?;
        rounds.push(RoundStats {
            round,
            pages_scanned: stats.pages_scanned,
            pages_written: stats.pages_written,
            frozen_time_us: stats.frozen_time,
            duration_us: started.elapsed().as_micros() as u64,
        });
        if !ask_policy {
            continue;
        }
        let decision = policies.after_round(facts, &rounds)?;
        match decision.action {
            RoundAction::AnotherRound => continue,
            RoundAction::DumpNow => break,
            RoundAction::Abort => {
                return Err(Error::Policy(format!(
                    "policy {:?} aborted the checkpoint of container {:?} after pre-dump round {round}: {}; the container keeps running",
                    policies.planner.info.name, facts.container.name, decision.reason
                )));
            }
        }
    }
    Ok(dirs)
}

#[cfg(test)]
mod tests;
