//! `ckpt inspect-checkpoint`: what checkpointctl's `show` tells about an archive, read in one
//! streaming pass without extracting anything.

use std::io::Read;
use std::path::Path;

use serde_json::{Value, json};

use crate::archive::checkpoint as layout;
use crate::archive::{self, ArchiveError};
use crate::error::{Error, Result};

/// Largest JSON member read into memory.
const MAX_JSON_MEMBER: u64 = 16 << 20;

pub fn inspect_checkpoint(path: &Path) -> Result<Value> {
    let name = path.display().to_string();
    let malformed = |e: std::io::Error| ArchiveError::Malformed { archive: name.clone(), detail: e.to_string() };
    let archive_size = std::fs::metadata(path).map_err(Error::io("stat", path))?.len();
    let compression = {
        let mut magic = [0u8; 4];
        let n = std::fs::File::open(path).and_then(|mut f| f.read(&mut magic)).map_err(Error::io("read", path))?;
        match &magic[..n] {
            [0x28, 0xb5, 0x2f, 0xfd] => "zstd",
            [0x1f, 0x8b, ..] => "gzip",
            _ => "none",
        }
    };
    let mut tar = tar::Archive::new(archive::open_decompressed(path)?);
    let (mut config, mut spec, mut stats_bytes) = (Value::Null, Value::Null, None);
    let (mut checkpoint_size, mut rootfs_diff_size, mut volumes, mut has_manifest, mut pre_checkpoint) =
        (0u64, None, Vec::new(), false, false);
    for entry in tar.entries().map_err(malformed)? {
        let mut entry = entry.map_err(malformed)?;
        let member = entry.path().map_err(malformed)?.to_string_lossy().trim_start_matches("./").to_string();
        let size = entry.header().size().unwrap_or(0);
        let read_small = |entry: &mut tar::Entry<'_, _>| -> Result<Vec<u8>> {
            let mut bytes = Vec::new();
            entry.take(MAX_JSON_MEMBER).read_to_end(&mut bytes).map_err(malformed)?;
            Ok(bytes)
        };
        match member.as_str() {
            layout::CONFIG_DUMP => config = serde_json::from_slice(&read_small(&mut entry)?).unwrap_or(Value::Null),
            layout::SPEC_DUMP => spec = serde_json::from_slice(&read_small(&mut entry)?).unwrap_or(Value::Null),
            layout::STATS_DUMP => stats_bytes = Some(read_small(&mut entry)?),
            layout::ROOTFS_DIFF => rootfs_diff_size = Some(size),
            layout::MANIFEST => has_manifest = true,
            m if m.starts_with(&format!("{}/", layout::CHECKPOINT_DIR)) => checkpoint_size += size,
            m if m.starts_with(&format!("{}/", layout::PRE_CHECKPOINT_DIR)) => {
                pre_checkpoint = true;
                checkpoint_size += size;
            }
            m if m.starts_with(&format!("{}/", layout::VOLUMES_DIR)) && m.ends_with(".tar") => {
                volumes.push(json!({"name": m.trim_start_matches("volumes/").trim_end_matches(".tar"), "size": size}));
            }
            _ => {}
        }
    }
    if config.is_null() {
        return Err(ArchiveError::Missing { archive: name, member: layout::CONFIG_DUMP.into() }.into());
    }
    let criu_statistics =
        stats_bytes.and_then(|bytes| crate::criu::parse_dump_stats(&bytes, Path::new(layout::STATS_DUMP)).ok());
    Ok(json!({
        "container": config["name"],
        "id": config["id"],
        "image": config["rootfsImageName"],
        "image_id": config["rootfsImageID"],
        "runtime": config["runtime"],
        "created": config["createdTime"],
        "engine": match spec["annotations"]["io.container.manager"].as_str() { Some("libpod") => "podman", Some(other) => other, None => "unknown" },
        "pre_checkpoint": pre_checkpoint,
        "checkpoint_size": checkpoint_size,
        "rootfs_diff_size": rootfs_diff_size,
        "volumes": volumes,
        "archive_size": archive_size,
        "compression": compression,
        "manifest": has_manifest,
        "annotations": spec["annotations"],
        "criu_statistics": criu_statistics,
    }))
}

/// A human-readable view, one `KEY: value` line each, like checkpointctl's table.
pub fn render(value: &Value) -> String {
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    };
    let mut out = String::new();
    for (label, key) in [
        ("Container", "container"),
        ("ID", "id"),
        ("Image", "image"),
        ("Runtime", "runtime"),
        ("Created", "created"),
        ("Engine", "engine"),
        ("Checkpoint size", "checkpoint_size"),
        ("Root FS diff size", "rootfs_diff_size"),
        ("Archive size", "archive_size"),
        ("Compression", "compression"),
        ("Manifest", "manifest"),
    ] {
        out.push_str(&format!("{label:<18} {}\n", text(&value[key])));
    }
    for volume in value["volumes"].as_array().into_iter().flatten() {
        out.push_str(&format!("{:<18} {} ({} bytes)\n", "Volume", text(&volume["name"]), volume["size"]));
    }
    for (key, v) in value["annotations"].as_object().into_iter().flatten() {
        out.push_str(&format!("{:<18} {key}={}\n", "Annotation", text(v)));
    }
    out
}
