//! A recording runtime for unit tests of orchestration. It does what these machines cannot
//! (pre-dump with memory dirty tracking) by writing the files a real runtime would leave.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::{CheckpointOptions, ContainerStdio, OciRuntime, RestoreOptions, RuntimeError, RuntimeState};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    Run { id: String },
    Restore { id: String, options: RestoreOptions },
    State { id: String },
    Kill { id: String, signal: String },
    Delete { id: String, force: bool },
    Pause { id: String },
    Resume { id: String },
    Exec { id: String, args: Vec<String> },
    Checkpoint { id: String, options: CheckpointOptions },
}

/// What a checkpoint or pre-dump call leaves in its work path, like CRIU's `stats-dump`.
pub type DumpEffect = Box<dyn Fn(&CheckpointOptions) -> Result<(), RuntimeError> + Send + Sync>;

pub struct RecordingRuntime {
    pub calls: Mutex<Vec<Call>>,
    pub state: Mutex<Option<RuntimeState>>,
    /// Effects of successive checkpoint calls, consumed in order; none left means success.
    pub dump_effects: Mutex<VecDeque<DumpEffect>>,
    path: PathBuf,
}

impl Default for RecordingRuntime {
    fn default() -> Self {
        RecordingRuntime {
            calls: Mutex::new(Vec::new()),
            state: Mutex::new(Some(RuntimeState { status: "running".into(), pid: 4242 })),
            dump_effects: Mutex::new(VecDeque::new()),
            path: PathBuf::from("/fake/runc"),
        }
    }
}

impl RecordingRuntime {
    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    pub fn push_dump_effect(&self, effect: DumpEffect) {
        self.dump_effects.lock().unwrap().push_back(effect);
    }

    fn record(&self, call: Call) {
        self.calls.lock().unwrap().push(call);
    }
}

impl OciRuntime for RecordingRuntime {
    fn name(&self) -> &str {
        "fake-runc"
    }
    fn path(&self) -> &Path {
        &self.path
    }
    fn version(&self) -> Result<String, RuntimeError> {
        Ok("fake-runc version 1.0.0".into())
    }
    fn supports_checkpoint(&self) -> bool {
        true
    }
    fn passes_criu_config(&self) -> bool {
        false
    }
    fn run_detached(&self, id: &str, _: &Path, _: &Path, _: ContainerStdio) -> Result<(), RuntimeError> {
        self.record(Call::Run { id: id.into() });
        Ok(())
    }
    fn restore_detached(
        &self,
        id: &str,
        _: &Path,
        _: &Path,
        options: &RestoreOptions,
        _: ContainerStdio,
    ) -> Result<(), RuntimeError> {
        self.record(Call::Restore { id: id.into(), options: options.clone() });
        Ok(())
    }
    fn state(&self, id: &str) -> Result<Option<RuntimeState>, RuntimeError> {
        self.record(Call::State { id: id.into() });
        Ok(self.state.lock().unwrap().clone())
    }
    fn kill(&self, id: &str, signal: &str) -> Result<(), RuntimeError> {
        self.record(Call::Kill { id: id.into(), signal: signal.into() });
        Ok(())
    }
    fn delete(&self, id: &str, force: bool) -> Result<(), RuntimeError> {
        self.record(Call::Delete { id: id.into(), force });
        Ok(())
    }
    fn pause(&self, id: &str) -> Result<(), RuntimeError> {
        self.record(Call::Pause { id: id.into() });
        if let Some(state) = self.state.lock().unwrap().as_mut() {
            state.status = "paused".into();
        }
        Ok(())
    }
    fn resume(&self, id: &str) -> Result<(), RuntimeError> {
        self.record(Call::Resume { id: id.into() });
        if let Some(state) = self.state.lock().unwrap().as_mut() {
            state.status = "running".into();
        }
        Ok(())
    }
    fn exec(&self, id: &str, args: &[String], _: &[String], _: super::ExecMode) -> Result<i32, RuntimeError> {
        self.record(Call::Exec { id: id.into(), args: args.to_vec() });
        Ok(0)
    }
    fn checkpoint(&self, id: &str, options: &CheckpointOptions) -> Result<(), RuntimeError> {
        self.record(Call::Checkpoint { id: id.into(), options: options.clone() });
        std::fs::create_dir_all(&options.image_path).ok();
        let effect = self.dump_effects.lock().unwrap().pop_front();
        match effect {
            Some(effect) => effect(options),
            None => Ok(()),
        }
    }
}
