use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::base_error::{BaseError as Error, BaseResult as Result};
use crate::util::create_dir_all;

fn open_lock_file(path: &Path) -> Result<File> {
    if let Some(dir) = path.parent() {
        create_dir_all(dir)?;
    }
    OpenOptions::new().create(true).truncate(false).write(true).open(path).map_err(Error::io("open lock", path))
}

/// Serialises changes to the set of containers and volumes (names must stay unique).
pub struct StoreLock {
    _file: File,
}

impl StoreLock {
    pub fn acquire(locks_dir: &Path) -> Result<StoreLock> {
        StoreLock::named(locks_dir, "store")
    }

    /// A lock of its own for one shared file (the audit log, a schedule's state).
    pub fn named(locks_dir: &Path, name: &str) -> Result<StoreLock> {
        let path = locks_dir.join(format!("{name}.lock"));
        let file = open_lock_file(&path)?;
        file.lock().map_err(Error::io("lock", &path))?;
        Ok(StoreLock { _file: file })
    }
}

impl StoreLock {
    /// [`StoreLock::named`] without waiting: `None` while another process holds it.
    pub fn try_named(locks_dir: &Path, name: &str) -> Result<Option<StoreLock>> {
        let path = locks_dir.join(format!("{name}.lock"));
        let file = open_lock_file(&path)?;
        match file.try_lock() {
            Ok(()) => Ok(Some(StoreLock { _file: file })),
            Err(TryLockError::WouldBlock) => Ok(None),
            Err(TryLockError::Error(e)) => Err(Error::io("lock", &path)(e)),
        }
    }
}

/// Exclusive right to change one container. Released when dropped.
pub struct ContainerLock {
    _file: File,
}

impl ContainerLock {
    pub fn path_for(locks_dir: &Path, id: &str) -> PathBuf {
        locks_dir.join(format!("{id}.lock"))
    }

    /// Waits for the lock: ordinary operations queue behind one another.
    pub fn acquire(locks_dir: &Path, id: &str) -> Result<ContainerLock> {
        let path = Self::path_for(locks_dir, id);
        let file = open_lock_file(&path)?;
        file.lock().map_err(Error::io("lock", &path))?;
        Ok(ContainerLock { _file: file })
    }

    /// Fails at once when another operation holds the lock, as a second checkpoint must.
    pub fn try_acquire(locks_dir: &Path, id: &str, name: &str) -> Result<ContainerLock> {
        let path = Self::path_for(locks_dir, id);
        let file = open_lock_file(&path)?;
        match file.try_lock() {
            Ok(()) => Ok(ContainerLock { _file: file }),
            Err(TryLockError::WouldBlock) => Err(Error::ContainerBusy(name.to_string())),
            Err(TryLockError::Error(e)) => Err(Error::io("lock", &path)(e)),
        }
    }
}

/// Whether some process holds an exclusive lock on `path` (the supervisor holds its lock for life).
pub fn is_locked(path: &Path) -> bool {
    let Ok(file) = File::open(path) else { return false };
    matches!(file.try_lock_shared(), Err(TryLockError::WouldBlock))
}

/// Waits until nobody holds `path`, or `timeout` passes. Returns whether it was released.
pub fn wait_unlocked(path: &Path, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if !is_locked(path) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_container_lock_makes_a_second_try_busy_until_it_is_released() {
        let dir = tempfile::tempdir().unwrap();
        let held = ContainerLock::try_acquire(dir.path(), "id", "web").unwrap();
        assert!(is_locked(&ContainerLock::path_for(dir.path(), "id")));
        let busy = ContainerLock::try_acquire(dir.path(), "id", "web").err().unwrap();
        assert!(busy.to_string().contains("\"web\" is busy"), "{busy}");
        drop(held);
        assert!(!is_locked(&ContainerLock::path_for(dir.path(), "id")));
        assert!(ContainerLock::try_acquire(dir.path(), "id", "web").is_ok());
        assert!(wait_unlocked(&ContainerLock::path_for(dir.path(), "id"), Duration::from_millis(10)));
    }
}
