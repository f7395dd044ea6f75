//! CRIU's `stats-dump` and `stats-restore` images: two magic numbers, a length, and a protobuf
//! `stats_entry` (images/stats.proto). Decoded by hand: the message is small and flat.

use std::path::Path;

use serde::Serialize;

use super::CriuError;
#[cfg(test)]
use super::proto::put_varint;
use super::proto::{Value, decode_message};

const IMG_SERVICE_MAGIC: u32 = 0x5510_5940;
const STATS_MAGIC: u32 = 0x5709_3306;
/// Far above any real stats entry; a larger length means a corrupt or hostile file.
const MAX_ENTRY_LEN: usize = 4096;

/// podman's `criu_statistics` for a checkpoint; zero fields are left out as podman does.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DumpStats {
    #[serde(skip_serializing_if = "is_zero")]
    pub freezing_time: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub frozen_time: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub memdump_time: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub memwrite_time: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub pages_scanned: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub pages_written: u64,
    #[serde(skip)]
    pub pages_skipped_parent: u64,
}

/// podman's `criu_statistics` for a restore.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RestoreStats {
    #[serde(skip_serializing_if = "is_zero")]
    pub pages_compared: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub pages_skipped_cow: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub forking_time: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub restore_time: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub pages_restored: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

pub fn read_dump_stats(path: &Path) -> Result<DumpStats, CriuError> {
    let bytes =
        std::fs::read(path).map_err(|e| CriuError::Stats { path: path.to_path_buf(), detail: e.to_string() })?;
    parse_dump_stats(&bytes, path)
}

/// Parses a `stats-dump` image already in memory; `origin` names it in errors.
pub fn parse_dump_stats(bytes: &[u8], origin: &Path) -> Result<DumpStats, CriuError> {
    let fields = read_entry(bytes, origin, 1)?;
    let get = |n| fields.iter().find(|(f, _)| *f == n).map(|(_, v)| *v).unwrap_or(0);
    Ok(DumpStats {
        freezing_time: get(1),
        frozen_time: get(2),
        memdump_time: get(3),
        memwrite_time: get(4),
        pages_scanned: get(5),
        pages_skipped_parent: get(6),
        pages_written: get(7),
    })
}

pub fn read_restore_stats(path: &Path) -> Result<RestoreStats, CriuError> {
    let bytes =
        std::fs::read(path).map_err(|e| CriuError::Stats { path: path.to_path_buf(), detail: e.to_string() })?;
    let fields = read_entry(&bytes, path, 2)?;
    let get = |n| fields.iter().find(|(f, _)| *f == n).map(|(_, v)| *v).unwrap_or(0);
    Ok(RestoreStats {
        pages_compared: get(1),
        pages_skipped_cow: get(2),
        forking_time: get(3),
        restore_time: get(4),
        pages_restored: get(5),
    })
}

/// Returns the varint fields of the nested message `field` of `stats_entry`.
fn read_entry(bytes: &[u8], path: &Path, field: u64) -> Result<Vec<(u64, u64)>, CriuError> {
    let err = |detail: &str| CriuError::Stats { path: path.to_path_buf(), detail: detail.to_string() };
    let entry = super::proto::single_entry(bytes, IMG_SERVICE_MAGIC, STATS_MAGIC, MAX_ENTRY_LEN).map_err(err)?;
    let outer = decode_message(entry).ok_or_else(|| err("malformed protobuf"))?;
    let inner = outer
        .iter()
        .find_map(|(f, v)| match v {
            Value::Bytes(b) if *f == field => Some(*b),
            _ => None,
        })
        .ok_or_else(|| err(if field == 1 { "no dump statistics" } else { "no restore statistics" }))?;
    let fields = decode_message(inner).ok_or_else(|| err("malformed protobuf"))?;
    Ok(fields
        .into_iter()
        .filter_map(|(f, v)| match v {
            Value::Varint(n) => Some((f, n)),
            Value::Bytes(_) => None,
        })
        .collect())
}

/// Encodes a stats image, for test doubles that stand in for CRIU.
#[cfg(test)]
pub fn encode_dump_stats(stats: &DumpStats) -> Vec<u8> {
    let mut inner = Vec::new();
    for (field, value) in [
        (1, stats.freezing_time),
        (2, stats.frozen_time),
        (3, stats.memdump_time),
        (4, stats.memwrite_time),
        (5, stats.pages_scanned),
        (6, stats.pages_skipped_parent),
        (7, stats.pages_written),
        (9, 0),
    ] {
        put_varint(&mut inner, field << 3);
        put_varint(&mut inner, value);
    }
    let mut entry = Vec::new();
    put_varint(&mut entry, (1 << 3) | 2);
    put_varint(&mut entry, inner.len() as u64);
    entry.extend(inner);
    super::proto::encode_image(IMG_SERVICE_MAGIC, STATS_MAGIC, &entry)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_dump_stats_and_rejects_bad_magic() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stats-dump");
        let stats = DumpStats {
            freezing_time: 10,
            frozen_time: 2000,
            memdump_time: 300,
            memwrite_time: 400,
            pages_scanned: 70000,
            pages_written: 65000,
            pages_skipped_parent: 5,
        };
        std::fs::write(&path, encode_dump_stats(&stats)).unwrap();
        assert_eq!(read_dump_stats(&path).unwrap(), stats);
        std::fs::write(&path, [0u8; 16]).unwrap();
        assert!(read_dump_stats(&path).unwrap_err().to_string().contains("primary magic"));
        let mut huge = encode_dump_stats(&stats);
        huge[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        std::fs::write(&path, huge).unwrap();
        assert!(read_dump_stats(&path).unwrap_err().to_string().contains("out of bounds"));
    }
}
