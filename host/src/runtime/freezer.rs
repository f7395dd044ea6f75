//! A container's cgroup v1 freezer, written directly: what `runc pause` and `runc resume` do to
//! the container's cgroup, without starting runc for it (the two cost about 14 ms of CPU here, a
//! tenth of a small container's checkpoint). runc tells a paused container from a running one by
//! this same file, so its `state` says the same either way.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where cgroup v1 mounts its freezer hierarchy.
const V1_ROOT: &str = "/sys/fs/cgroup/freezer";
/// How many times freezing is asked for before it is given up; a task that never stops (one in a
/// `vfork`, say) keeps the cgroup FREEZING.
const ATTEMPTS: u32 = 1000;

pub struct Freezer {
    state: PathBuf,
}

impl Freezer {
    /// The freezer of container `id`'s cgroup, when this host has a cgroup v1 freezer and the
    /// cgroup is there.
    pub fn of(id: &str) -> Option<Freezer> {
        Freezer::at(Path::new(V1_ROOT), id)
    }

    fn at(root: &Path, id: &str) -> Option<Freezer> {
        let state = root.join(crate::spec::cgroup_path(id).trim_start_matches('/')).join("freezer.state");
        state.is_file().then_some(Freezer { state })
    }

    /// Freezes every task of the cgroup; a cgroup that stays FREEZING is thawed again and refused,
    /// as runc leaves it.
    pub fn freeze(&self) -> io::Result<()> {
        for attempt in 0..ATTEMPTS {
            // A task can keep a freeze from completing until it runs again: now and then the
            // cgroup is let go for a moment, as runc does.
            if attempt % 50 == 49 {
                self.write("THAWED")?;
                std::thread::sleep(Duration::from_millis(10));
            }
            self.write("FROZEN")?;
            match self.read()?.as_str() {
                "FROZEN" => return Ok(()),
                "FREEZING" => std::thread::sleep(Duration::from_micros(if attempt < 10 { 100 } else { 1000 })),
                other => return Err(self.unexpected(other)),
            }
        }
        self.write("THAWED")?;
        Err(io::Error::other(format!("{} stayed FREEZING after {ATTEMPTS} attempts", self.state.display())))
    }

    /// Lets every task of the cgroup run again.
    pub fn thaw(&self) -> io::Result<()> {
        self.write("THAWED")?;
        match self.read()?.as_str() {
            "THAWED" => Ok(()),
            other => Err(self.unexpected(other)),
        }
    }

    fn write(&self, state: &str) -> io::Result<()> {
        fs::write(&self.state, state).map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", self.state.display())))
    }

    fn read(&self) -> io::Result<String> {
        fs::read_to_string(&self.state)
            .map(|s| s.trim().to_string())
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", self.state.display())))
    }

    fn unexpected(&self, state: &str) -> io::Error {
        io::Error::other(format!("{} says {state:?}", self.state.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_container_s_freezer_is_found_below_ckpt_s_cgroup_parent_only_when_it_is_there() {
        let root = tempfile::tempdir().unwrap();
        assert!(Freezer::at(root.path(), "abc").is_none());
        let dir = root.path().join(crate::spec::cgroup_path("abc").trim_start_matches('/'));
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("freezer.state"), "THAWED\n").unwrap();
        let freezer = Freezer::at(root.path(), "abc").unwrap();
        // A plain file holds what was last written, as a freezer that freezes at once would say.
        freezer.freeze().unwrap();
        assert_eq!(fs::read_to_string(dir.join("freezer.state")).unwrap(), "FROZEN");
        freezer.thaw().unwrap();
        assert_eq!(fs::read_to_string(dir.join("freezer.state")).unwrap(), "THAWED");
    }
}
