use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::paths::Roots;
use crate::base_error::{BaseError as Error, BaseResult as Result};
use crate::util::{read_json, remove_dir_all, validate_object_name, write_json};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VolumeRecord {
    pub name: String,
    pub created_at: DateTime<Utc>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

pub struct VolumeStore {
    dir: PathBuf,
}

impl VolumeStore {
    pub fn new(roots: &Roots) -> VolumeStore {
        VolumeStore { dir: roots.volumes_dir() }
    }

    fn record_path(&self, name: &str) -> PathBuf {
        self.dir.join(name).join("volume.json")
    }

    /// Where the volume's content lives, as podman's `_data`.
    pub fn mountpoint(&self, name: &str) -> PathBuf {
        self.dir.join(name).join("_data")
    }

    pub fn exists(&self, name: &str) -> bool {
        self.record_path(name).exists()
    }

    pub fn get(&self, name: &str) -> Result<VolumeRecord> {
        if !self.exists(name) {
            return Err(Error::NoSuchVolume(name.to_string()));
        }
        read_json(&self.record_path(name), "volume record")
    }

    pub fn create(&self, name: &str, labels: BTreeMap<String, String>) -> Result<VolumeRecord> {
        validate_object_name("volume", name)?;
        if self.exists(name) {
            return Err(Error::VolumeExists(name.to_string()));
        }
        crate::util::create_dir_with_mode(&self.mountpoint(name), 0o755)?;
        let record = VolumeRecord { name: name.to_string(), created_at: Utc::now(), labels };
        write_json(&self.record_path(name), &record)?;
        Ok(record)
    }

    pub fn list(&self) -> Result<Vec<VolumeRecord>> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io("list", &self.dir)(e)),
        };
        let mut volumes = Vec::new();
        for entry in entries {
            let entry = entry.map_err(Error::io("list", &self.dir))?;
            let record = entry.path().join("volume.json");
            if record.exists() {
                volumes.push(read_json(&record, "volume record")?);
            }
        }
        volumes.sort_by(|a: &VolumeRecord, b| a.name.cmp(&b.name));
        Ok(volumes)
    }

    pub fn remove(&self, name: &str) -> Result<()> {
        if !self.exists(name) {
            return Err(Error::NoSuchVolume(name.to_string()));
        }
        // The record goes first so that a half-removed volume is never listed.
        fs::remove_file(self.record_path(name)).map_err(Error::io("remove", self.record_path(name)))?;
        remove_dir_all(&self.dir.join(name))
    }
}
