//! Compiled components, kept twice: in this process by digest, and on disk as artifacts that
//! only ckpt wrote (private, sealed with their digest, named with the engine's compatibility).

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use wasmtime::Engine;
use wasmtime::component::Component;

/// Where compiled artifacts are kept.
pub struct ComponentCache {
    dir: PathBuf,
}

impl ComponentCache {
    pub fn new(dir: &Path) -> ComponentCache {
        ComponentCache { dir: dir.to_path_buf() }
    }

    /// The compiled component for `bytes` (of `digest`), and whether it was compiled before.
    pub fn component(&self, engine: &Engine, bytes: &[u8], digest: &str) -> wasmtime::Result<(Component, bool)> {
        let compat = {
            use std::hash::{Hash, Hasher};
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            engine.precompile_compatibility_hash().hash(&mut hasher);
            hasher.finish()
        };
        if let Some(component) = remembered(digest) {
            return Ok((component, true));
        }
        let hex = digest.trim_start_matches("blake3:");
        let artifact = self.dir.join(format!("{hex}-{compat:016x}.cwasm"));
        let seal = artifact.with_extension("seal");
        if let Some(component) = self.load_cached(engine, &artifact, &seal) {
            remember(digest, &component);
            return Ok((component, true));
        }
        let component = Component::new(engine, bytes)?;
        // The cache is an optimisation: failing to write it is not an error.
        let _ = self.store_cached(&component, &artifact, &seal);
        remember(digest, &component);
        Ok((component, false))
    }

    /// Loads an artifact only if ckpt wrote it: root-owned, private, and matching the seal
    /// (its digest) that ckpt wrote beside it.
    fn load_cached(&self, engine: &Engine, artifact: &Path, seal: &Path) -> Option<Component> {
        let dir_meta = fs::metadata(&self.dir).ok()?;
        let meta = fs::symlink_metadata(artifact).ok()?;
        let own = nix::unistd::geteuid().as_raw();
        if !meta.is_file()
            || meta.uid() != own
            || dir_meta.uid() != own
            || meta.mode() & 0o077 != 0
            || dir_meta.mode() & 0o077 != 0
        {
            return None;
        }
        let expected = fs::read_to_string(seal).ok()?;
        let actual = blake3::Hasher::new().update_mmap_rayon(artifact).ok()?.finalize().to_hex();
        if expected.trim() != actual.as_str() {
            return None;
        }
        // SAFETY: the artifact was produced by `Component::serialize` of this same engine
        // configuration (the compatibility hash is in its name), is owned by us, private, and
        // matches the digest we recorded when we wrote it.
        unsafe { Component::deserialize_file(engine, artifact) }.ok()
    }

    fn store_cached(&self, component: &Component, artifact: &Path, seal: &Path) -> std::io::Result<()> {
        fs::create_dir_all(&self.dir)?;
        fs::set_permissions(&self.dir, fs::Permissions::from_mode(0o700))?;
        let bytes = component.serialize().map_err(|e| std::io::Error::other(format!("{e:#}")))?;
        crate::util::write_atomic(artifact, &bytes, 0o600).map_err(std::io::Error::other)?;
        crate::util::write_atomic(seal, digest_of(&bytes).to_hex().as_bytes(), 0o600).map_err(std::io::Error::other)
    }
}

/// A Python or JavaScript component is tens of MiB, and so is its compiled code, which is
/// hashed again at every load: on every core, that takes half the time it takes on one.
pub(super) fn digest_of(bytes: &[u8]) -> blake3::Hash {
    let mut hasher = blake3::Hasher::new();
    if bytes.len() >= 1 << 20 {
        hasher.update_rayon(bytes);
    } else {
        hasher.update(bytes);
    }
    hasher.finalize()
}

/// `blake3:<hex>` of a component's bytes, as decision records and `policy inspect` name it.
pub fn component_digest(bytes: &[u8]) -> String {
    format!("blake3:{}", digest_of(bytes).to_hex())
}

/// Components this process has compiled or loaded, by digest: a daemon loads a schedule's
/// policies for every run, and a Python or JavaScript component's compiled code is tens of MiB
/// to read back. Bounded; the oldest goes first.
pub(super) const REMEMBERED_COMPONENTS: usize = 16;
static COMPONENTS: Mutex<Vec<(String, Component)>> = Mutex::new(Vec::new());

pub(super) fn remembered(digest: &str) -> Option<Component> {
    let known = COMPONENTS.lock().unwrap_or_else(|e| e.into_inner());
    known.iter().find(|(d, _)| d == digest).map(|(_, c)| c.clone())
}

pub(super) fn remember(digest: &str, component: &Component) {
    let mut known = COMPONENTS.lock().unwrap_or_else(|e| e.into_inner());
    if known.iter().any(|(d, _)| d == digest) {
        return;
    }
    if known.len() == REMEMBERED_COMPONENTS {
        known.remove(0);
    }
    known.push((digest.to_string(), component.clone()));
}
