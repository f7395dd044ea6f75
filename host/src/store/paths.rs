use std::path::PathBuf;

/// The two roots ckpt owns: persistent state and run-time state.
#[derive(Debug, Clone)]
pub struct Roots {
    pub root: PathBuf,
    pub runroot: PathBuf,
}

impl Roots {
    pub fn new(root: impl Into<PathBuf>, runroot: impl Into<PathBuf>) -> Roots {
        Roots { root: root.into(), runroot: runroot.into() }
    }

    pub fn containers_dir(&self) -> PathBuf {
        self.root.join("containers")
    }

    /// Everything that outlives a reboot: record, upper layer, log, bundle, checkpoints.
    pub fn container_dir(&self, id: &str) -> PathBuf {
        self.containers_dir().join(id)
    }

    /// Run-time files: pid file, supervisor lock, runtime log.
    pub fn container_run_dir(&self, id: &str) -> PathBuf {
        self.runroot.join("containers").join(id)
    }

    pub fn locks_dir(&self) -> PathBuf {
        self.runroot.join("locks")
    }

    /// Locks that guard the store itself whatever run root a command uses: the audit chain and
    /// the one daemon that runs its schedules.
    pub fn store_locks_dir(&self) -> PathBuf {
        self.root.join("locks")
    }

    pub fn volumes_dir(&self) -> PathBuf {
        self.root.join("volumes")
    }

    pub fn images_dir(&self) -> PathBuf {
        self.root.join("images")
    }

    /// Where each OCI runtime keeps its state (`runc --root <this>/runc`).
    pub fn runtime_states_dir(&self) -> PathBuf {
        self.runroot.join("runtime")
    }

    /// Notes of exports being written, for `ckpt system check` after a crash.
    pub fn inflight_dir(&self) -> PathBuf {
        self.root.join("inflight")
    }

    /// Private staging: imports, exports and image layers being built.
    pub fn staging_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    pub fn policy_log(&self) -> PathBuf {
        self.root.join("decisions.jsonl")
    }

    /// The hash-chained log of everything that checkpointed, restored, exported, denied,
    /// skipped, deleted or changed a schedule.
    pub fn audit_log(&self) -> PathBuf {
        self.root.join("audit.log")
    }

    /// One file per checkpoint ckpt made: `<id>.json`.
    pub fn catalog_dir(&self) -> PathBuf {
        self.root.join("catalog")
    }

    /// One directory per schedule: its definition and its state.
    pub fn schedules_dir(&self) -> PathBuf {
        self.root.join("schedules")
    }
}

/// Paths inside one container's directory.
#[derive(Debug, Clone)]
pub struct ContainerPaths {
    pub dir: PathBuf,
    pub run_dir: PathBuf,
}

impl ContainerPaths {
    pub fn new(roots: &Roots, id: &str) -> ContainerPaths {
        ContainerPaths { dir: roots.container_dir(id), run_dir: roots.container_run_dir(id) }
    }
    pub fn record(&self) -> PathBuf {
        self.dir.join("container.json")
    }
    /// The OCI bundle: `config.json` plus the files ckpt bind-mounts into the container.
    pub fn bundle(&self) -> PathBuf {
        self.dir.join("userdata")
    }
    pub fn upper(&self) -> PathBuf {
        self.dir.join("diff")
    }
    pub fn overlay_work(&self) -> PathBuf {
        self.dir.join("work")
    }
    pub fn merged(&self) -> PathBuf {
        self.dir.join("merged")
    }
    pub fn log(&self) -> PathBuf {
        self.dir.join("ctr.log")
    }
    pub fn checkpoint_dir(&self) -> PathBuf {
        self.bundle().join("checkpoint")
    }
    pub fn pre_checkpoint_dir(&self) -> PathBuf {
        self.bundle().join("pre-checkpoint")
    }
    pub fn pid_file(&self) -> PathBuf {
        self.run_dir.join("pidfile")
    }
    pub fn supervisor_lock(&self) -> PathBuf {
        self.run_dir.join("supervisor.lock")
    }
    pub fn supervisor_log(&self) -> PathBuf {
        self.run_dir.join("supervisor.log")
    }
    /// The options netavark was given for the container's current run: what its teardown needs.
    pub fn network_options(&self) -> PathBuf {
        self.run_dir.join("network.json")
    }
    /// What netavark set up, per network, in podman's `network.status` shape. It stays after
    /// the run, so that a restore asks for the same addresses.
    pub fn network_status(&self) -> PathBuf {
        self.bundle().join(crate::metadata::NETWORK_STATUS)
    }
    /// The container's network namespace, pinned by a bind mount.
    pub fn netns(&self) -> PathBuf {
        self.run_dir.join("netns")
    }
    pub fn runtime_log(&self) -> PathBuf {
        self.run_dir.join("runtime.log")
    }
    pub fn in_bundle(&self, name: &str) -> PathBuf {
        self.bundle().join(name)
    }
}
