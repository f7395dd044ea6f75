//! Builds the default policy (`policies/default`) and the default retainer
//! (`policies/default-retainer`) for wasm32-wasip2 and hands them to the host, which embeds
//! them: the default path of every checkpoint, and of retention, goes through WebAssembly too.
//!
//! The component is kept under a digest of everything it is built from (its sources, the guest
//! SDK, the WIT, the lock file), so a touched file, a checkout or a `cargo check` after an
//! unrelated change copies the kept one instead of running a second cargo.

use std::env;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The names and contents of every file below `paths`, in a stable order.
fn inputs_digest(workspace: &Path, paths: &[&str]) -> u64 {
    fn walk(path: &Path, hasher: &mut std::collections::hash_map::DefaultHasher) {
        if path.is_dir() {
            let mut entries: Vec<PathBuf> =
                std::fs::read_dir(path).into_iter().flatten().flatten().map(|e| e.path()).collect();
            entries.sort();
            for entry in entries.iter().filter(|e| !e.ends_with("target")) {
                walk(entry, hasher);
            }
        } else if let Ok(bytes) = std::fs::read(path) {
            path.hash(hasher);
            bytes.hash(hasher);
        }
    }
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    env!("CARGO_PKG_VERSION").hash(&mut hasher);
    for path in paths {
        walk(&workspace.join(path), &mut hasher);
    }
    hasher.finish()
}

fn main() {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let workspace = manifest_dir.parent().expect("host/ sits in the workspace").to_path_buf();
    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let inputs =
        ["policies/default", "policies/default-retainer", "guest-sdk/src", "guest-sdk/Cargo.toml", "wit", "Cargo.lock"];
    for watched in inputs {
        println!("cargo:rerun-if-changed={}", workspace.join(watched).display());
    }
    // A target directory of its own, so that this nested build never waits on the outer one.
    let target_dir = workspace.join("target").join("policy-build");
    let digest = inputs_digest(&workspace, &inputs);
    let kept = |name: &str| target_dir.join(format!("{name}-{digest:016x}.wasm"));
    if EMBEDDED.iter().all(|(_, name)| kept(name).is_file()) {
        for (_, name) in EMBEDDED {
            let kept = kept(name);
            std::fs::copy(&kept, out_dir.join(format!("{name}.wasm")))
                .unwrap_or_else(|e| panic!("copy {}: {e}", kept.display()));
        }
        return;
    }
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .current_dir(&workspace)
        .args([
            "build",
            "--quiet",
            "--release",
            "--target",
            "wasm32-wasip2",
            "-p",
            "ckpt-policy-default",
            "-p",
            "ckpt-policy-default-retainer",
            "--target-dir",
        ])
        .arg(&target_dir);
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_MAKEFLAGS",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTC_WRAPPER",
    ] {
        command.env_remove(var);
    }
    // No debug info in the embedded component: smaller, and faster to compile at run time.
    command.env("CARGO_PROFILE_RELEASE_DEBUG", "0").env("CARGO_PROFILE_RELEASE_STRIP", "true");
    let status = command.status().expect("cargo runs");
    assert!(
        status.success(),
        "building the default policies for wasm32-wasip2 failed; run scripts/setup (it adds the target)"
    );
    for (krate, name) in EMBEDDED {
        let built = target_dir.join(format!("wasm32-wasip2/release/{krate}.wasm"));
        std::fs::copy(&built, out_dir.join(format!("{name}.wasm")))
            .unwrap_or_else(|e| panic!("copy {}: {e}", built.display()));
        let _ = std::fs::copy(&built, kept(name));
    }
}

/// The embedded components: the crate's artifact name, and the name the host includes.
const EMBEDDED: [(&str, &str); 2] =
    [("ckpt_policy_default", "default"), ("ckpt_policy_default_retainer", "default-retainer")];
