//! Builds the default policy (`policies/default`) for wasm32-wasip2 and hands it to the host,
//! which embeds it: the default path of every checkpoint goes through WebAssembly too.

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let workspace = manifest_dir.parent().expect("host/ sits in the workspace").to_path_buf();
    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    for watched in ["policies/default", "guest-sdk/src", "guest-sdk/Cargo.toml", "wit"] {
        println!("cargo:rerun-if-changed={}", workspace.join(watched).display());
    }
    // A target directory of its own, so that this nested build never waits on the outer one.
    let target_dir = workspace.join("target").join("policy-build");
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
        "building the default policy for wasm32-wasip2 failed; run scripts/setup (it adds the target)"
    );
    let built = target_dir.join("wasm32-wasip2/release/ckpt_policy_default.wasm");
    std::fs::copy(&built, out_dir.join("default.wasm")).unwrap_or_else(|e| panic!("copy {}: {e}", built.display()));
}
