//! Small helpers shared by the store, the archive writer and the operations.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};

/// A 64-character hexadecimal ID, as podman gives containers.
pub fn random_id() -> String {
    let mut bytes = [0u8; 32];
    File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes)).expect("/dev/urandom is readable");
    hex::encode(bytes)
}

/// Writes `bytes` to `path` so that readers see either the old or the new content, never a mix.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        std::process::id()
    ));
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(Error::io("create", &tmp))?;
    file.write_all(bytes).map_err(Error::io("write", &tmp))?;
    file.sync_all().map_err(Error::io("sync", &tmp))?;
    fs::rename(&tmp, path).map_err(Error::io("rename into place", path))?;
    Ok(())
}

pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let mut bytes = serde_json::to_vec_pretty(value).expect("serializable state");
    bytes.push(b'\n');
    write_atomic(path, &bytes, 0o600)
}

pub fn read_json<T: DeserializeOwned>(path: &Path, what: &'static str) -> Result<T> {
    let bytes = fs::read(path).map_err(Error::io("read", path))?;
    serde_json::from_slice(&bytes).map_err(|e| Error::Corrupt { what, path: path.to_path_buf(), detail: e.to_string() })
}

pub fn create_dir_all(path: &Path) -> Result<()> {
    fs::create_dir_all(path).map_err(Error::io("create directory", path))
}

/// Removes a directory tree; a tree that is already gone is not an error.
pub fn remove_dir_all(path: &Path) -> Result<()> {
    match fs::remove_dir_all(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io("remove", path)(e)),
        _ => Ok(()),
    }
}

pub fn remove_file_if_exists(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io("remove", path)(e)),
        _ => Ok(()),
    }
}

/// Timestamps in the RFC 3339 form with nanoseconds that podman prints.
pub fn now() -> chrono::DateTime<chrono::Utc> {
    chrono::Utc::now()
}

/// Podman's rule for container and volume names: `[a-zA-Z0-9][a-zA-Z0-9_.-]*`.
pub fn validate_object_name(kind: &str, name: &str) -> Result<()> {
    let mut chars = name.chars();
    let valid = chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
    if valid {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "{kind} name {name:?} is invalid: use letters, digits, '_', '.' and '-', starting with a letter or digit"
        )))
    }
}

/// A directory removed with its content when dropped.
pub struct TempDir {
    pub path: std::path::PathBuf,
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// A fresh private directory under `parent` (ckpt's own roots, never a shared /tmp).
pub fn tempdir_in(parent: &Path, prefix: &str) -> Result<TempDir> {
    create_dir_all(parent)?;
    let path = parent.join(format!(".{prefix}-{}", &random_id()[..16]));
    fs::create_dir(&path).map_err(Error::io("create directory", &path))?;
    fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .map_err(Error::io("chmod", &path))?;
    Ok(TempDir { path })
}

/// `blake3:<hex>` of a file's content.
pub fn file_digest(path: &Path) -> Result<String> {
    let mut hasher = blake3::Hasher::new();
    hasher.update_mmap(path).map_err(Error::io("hash", path))?;
    Ok(format!("blake3:{}", hasher.finalize().to_hex()))
}
