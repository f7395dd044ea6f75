//! What an archive holds, read in one streaming pass without extracting anything: the
//! `config.dump` both podman and ckpt write, and the summary `ckpt inspect-checkpoint` shows (as
//! checkpointctl's `show` does).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::ArchiveError;
use super::checkpoint as layout;
use crate::network::PerNetworkOptions;
use crate::store::{ContainerRecord, NetworkMode, PublishedPort};

/// Each engine's default network, which a checkpoint moving between them lands on: another
/// subnet, so a new address.
pub const PODMAN_DEFAULT_NETWORK: &str = "podman";

/// Largest JSON member read into memory.
const MAX_JSON_MEMBER: u64 = 16 << 20;

/// podman's `config.dump` keys that checkpointctl reads, plus ckpt's own record. One type for
/// the writer, the inspector and the importer.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfigDump {
    #[serde(default)]
    pub id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default, rename = "rootfsImageID")]
    pub rootfs_image_id: String,
    #[serde(default)]
    pub rootfs_image_name: String,
    #[serde(default, rename = "RawImageName", alias = "rawImageName")]
    pub raw_image_name: String,
    #[serde(default)]
    pub runtime: String,
    #[serde(default)]
    pub created_time: String,
    #[serde(default)]
    pub named_volumes: Vec<NamedVolume>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// podman makes a network namespace for the restored container when this is set; without
    /// it, it would hand the runtime the path of the exporting side's namespace.
    #[serde(default, rename = "createNetNS")]
    pub create_net_ns: bool,
    /// podman's network mode: `bridge` for a container on networks, `none` for loopback only.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub network_mode: String,
    /// The networks, by podman's name for them: the default network is podman's `podman`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub new_networks: BTreeMap<String, PerNetworkOptions>,
    /// The published ports, in podman's (and netavark's) shape.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub new_port_mappings: Vec<PublishedPort>,
    /// ckpt's own record; podman's archives have none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ckpt: Option<ContainerRecord>,
}

/// An entry of `namedVolumes`, with podman's keys (ckpt before 0.1 wrote them capitalised).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct NamedVolume {
    #[serde(rename = "volumeName", alias = "Name")]
    pub name: String,
    #[serde(alias = "Dest")]
    pub dest: String,
    #[serde(default, alias = "Options")]
    pub options: Vec<String>,
}

impl ConfigDump {
    pub fn from_record(record: &ContainerRecord, runtime_name: &str) -> ConfigDump {
        ConfigDump {
            id: record.id.clone(),
            name: record.name.clone(),
            rootfs_image_id: record.image_id.clone(),
            rootfs_image_name: record.image_ref.clone(),
            raw_image_name: record.image_name.clone(),
            runtime: runtime_name.to_string(),
            created_time: record.created_at.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
            named_volumes: record
                .named_volumes()
                .map(|m| NamedVolume {
                    name: m.source.clone(),
                    dest: m.destination.clone(),
                    options: if m.read_only { vec!["ro".into()] } else { vec![] },
                })
                .collect(),
            labels: record.labels.clone(),
            create_net_ns: true,
            network_mode: match record.network.mode {
                NetworkMode::Bridge => "bridge".into(),
                NetworkMode::None => "none".into(),
            },
            new_networks: record
                .network
                .networks
                .iter()
                .enumerate()
                .map(|(index, (name, attachment))| {
                    let mut options = PerNetworkOptions {
                        interface_name: format!("eth{index}"),
                        static_ips: attachment.static_ip.into_iter().collect(),
                        static_mac: attachment.static_mac.clone(),
                        aliases: attachment.aliases.clone(),
                    };
                    if name != crate::config::DEFAULT_NETWORK {
                        return (name.clone(), options);
                    }
                    // An address of ckpt's default subnet means nothing on podman's.
                    options.static_ips.clear();
                    (PODMAN_DEFAULT_NETWORK.to_string(), options)
                })
                .collect(),
            new_port_mappings: record.network.ports.clone(),
            ckpt: Some(record.clone()),
        }
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct VolumeSummary {
    pub name: String,
    pub size: u64,
}

/// `ckpt inspect-checkpoint --format json`.
#[derive(Debug, Clone, Serialize)]
pub struct ArchiveSummary {
    pub container: String,
    pub id: String,
    pub image: String,
    pub image_id: String,
    pub runtime: String,
    pub created: String,
    /// `podman`, `ckpt`, or what the spec's `io.container.manager` says.
    pub engine: String,
    pub pre_checkpoint: bool,
    pub checkpoint_size: u64,
    pub rootfs_diff_size: Option<u64>,
    pub volumes: Vec<VolumeSummary>,
    pub archive_size: u64,
    pub compression: &'static str,
    pub manifest: bool,
    pub annotations: BTreeMap<String, String>,
    pub criu_statistics: Option<crate::criu::DumpStats>,
    /// For a sealed archive, whom it is sealed to (checked by the header's MAC as it opened).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sealed_to: Option<Vec<String>>,
}

/// The compression a file's first bytes announce.
fn sniff_compression(path: &Path) -> std::io::Result<super::Compression> {
    let mut magic = [0u8; 4];
    let n = std::fs::File::open(path).and_then(|mut f| f.read(&mut magic))?;
    Ok(super::Compression::sniff(&magic[..n]))
}

pub fn summarize(path: &Path) -> Result<ArchiveSummary, ArchiveError> {
    let name = path.display().to_string();
    let io_err = |source| ArchiveError::Io { archive: name.clone(), action: "read", path: path.to_path_buf(), source };
    let compression = sniff_compression(path).map_err(io_err)?.name();
    summarize_from(path, super::open_decompressed(path)?, compression, None)
}

/// The summary of a sealed archive at `path`, from its plaintext: `plain`, as its identity opened it.
pub fn summarize_sealed<R: std::io::BufRead + Send + 'static>(
    path: &Path,
    mut plain: R,
    sealed_to: Vec<String>,
) -> Result<ArchiveSummary, ArchiveError> {
    let name = path.display().to_string();
    let io_err = |source| ArchiveError::Io { archive: name.clone(), action: "open", path: path.to_path_buf(), source };
    let compression = super::Compression::sniff(plain.fill_buf().map_err(io_err)?).name();
    summarize_from(path, super::decompress(plain, &name)?, compression, Some(sealed_to))
}

fn summarize_from(
    path: &Path,
    tar_stream: Box<dyn Read>,
    compression: &'static str,
    sealed_to: Option<Vec<String>>,
) -> Result<ArchiveSummary, ArchiveError> {
    let name = path.display().to_string();
    let io_err = |source| ArchiveError::Io { archive: name.clone(), action: "read", path: path.to_path_buf(), source };
    let malformed = |e: std::io::Error| ArchiveError::Malformed { archive: name.clone(), detail: e.to_string() };
    let archive_size = std::fs::metadata(path).map_err(io_err)?.len();
    let mut tar = tar::Archive::new(tar_stream);
    let (mut config, mut annotations, mut stats_bytes) = (None, BTreeMap::new(), None);
    let (mut checkpoint_size, mut rootfs_diff_size, mut volumes, mut manifest, mut pre_checkpoint) =
        (0u64, None, Vec::new(), false, false);
    let mut engine = None;
    for entry in tar.entries().map_err(malformed)? {
        let mut entry = entry.map_err(malformed)?;
        let member = entry.path().map_err(malformed)?.to_string_lossy().trim_start_matches("./").to_string();
        let size = entry.size();
        let mut read_small = || -> Result<Vec<u8>, ArchiveError> {
            let mut bytes = Vec::new();
            (&mut entry).take(MAX_JSON_MEMBER).read_to_end(&mut bytes).map_err(malformed)?;
            Ok(bytes)
        };
        match member.as_str() {
            layout::CONFIG_DUMP => config = serde_json::from_slice::<ConfigDump>(&read_small()?).ok(),
            layout::SPEC_DUMP => {
                #[derive(Deserialize, Default)]
                struct SpecAnnotations {
                    #[serde(default)]
                    annotations: BTreeMap<String, String>,
                }
                let spec: SpecAnnotations = serde_json::from_slice(&read_small()?).unwrap_or_default();
                // ckpt's own archives are in podman's layout, and name ckpt beside it.
                engine = spec
                    .annotations
                    .get(crate::spec::ENGINE_ANNOTATION)
                    .or_else(|| spec.annotations.get(crate::spec::MANAGER_ANNOTATION))
                    .cloned();
                annotations = spec.annotations;
            }
            layout::STATS_DUMP => stats_bytes = Some(read_small()?),
            layout::ROOTFS_DIFF => rootfs_diff_size = Some(size),
            layout::MANIFEST => manifest = true,
            m if m.starts_with(&format!("{}/", layout::CHECKPOINT_DIR)) => checkpoint_size += size,
            m if m.starts_with(&format!("{}/", layout::PRE_CHECKPOINT_DIR)) => {
                pre_checkpoint = true;
                checkpoint_size += size;
            }
            m if m.starts_with(&format!("{}/", layout::VOLUMES_DIR)) && m.ends_with(".tar") => {
                let volume = m.trim_start_matches("volumes/").trim_end_matches(".tar").to_string();
                volumes.push(VolumeSummary { name: volume, size });
            }
            _ => {}
        }
    }
    let config = config.ok_or_else(|| ArchiveError::Missing { archive: name, member: layout::CONFIG_DUMP.into() })?;
    let criu_statistics =
        stats_bytes.and_then(|bytes| crate::criu::parse_dump_stats(&bytes, Path::new(layout::STATS_DUMP)).ok());
    Ok(ArchiveSummary {
        container: config.name,
        id: config.id,
        image: config.rootfs_image_name,
        image_id: config.rootfs_image_id,
        runtime: config.runtime,
        created: config.created_time,
        engine: match engine.as_deref() {
            Some("libpod") => "podman".into(),
            Some(other) => other.into(),
            None => "unknown".into(),
        },
        pre_checkpoint,
        checkpoint_size,
        rootfs_diff_size,
        volumes,
        archive_size,
        compression,
        manifest,
        annotations,
        criu_statistics,
        sealed_to,
    })
}

/// A human-readable view, one `KEY value` line each, like checkpointctl's table.
pub fn render(summary: &ArchiveSummary) -> String {
    let or_dash = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
    let mut out = String::new();
    for (label, value) in [
        ("Container", summary.container.clone()),
        ("ID", summary.id.clone()),
        ("Image", summary.image.clone()),
        ("Runtime", summary.runtime.clone()),
        ("Created", summary.created.clone()),
        ("Engine", summary.engine.clone()),
        ("Checkpoint size", summary.checkpoint_size.to_string()),
        ("Root FS diff size", or_dash(summary.rootfs_diff_size)),
        ("Archive size", summary.archive_size.to_string()),
        ("Compression", summary.compression.to_string()),
        ("Manifest", summary.manifest.to_string()),
    ] {
        out.push_str(&format!("{label:<18} {value}\n"));
    }
    for recipient in summary.sealed_to.iter().flatten() {
        out.push_str(&format!("{:<18} {recipient}\n", "Sealed to"));
    }
    for volume in &summary.volumes {
        out.push_str(&format!("{:<18} {} ({} bytes)\n", "Volume", volume.name, volume.size));
    }
    for (key, value) in &summary.annotations {
        out.push_str(&format!("{:<18} {key}={value}\n", "Annotation"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_podman_config_dump_reads_without_a_ckpt_record() {
        let podman = r#"{"id":"abc","name":"web","rootfsImageID":"sha","rootfsImageName":"docker.io/library/nginx:latest",
            "rawImageName":"nginx","runtime":"runc","createdTime":"2026-01-01T00:00:00Z",
            "namedVolumes":[{"volumeName":"data","dest":"/data","options":["rw"]}],"createNetNS":true,"someOtherKey":1}"#;
        let config: ConfigDump = serde_json::from_str(podman).unwrap();
        assert_eq!(config.rootfs_image_id, "sha");
        assert_eq!(config.named_volumes[0].dest, "/data");
        assert!(config.create_net_ns);
        let older: NamedVolume = serde_json::from_str(r#"{"Name":"data","Dest":"/data","Options":["ro"]}"#).unwrap();
        assert_eq!((older.name.as_str(), older.options.as_slice()), ("data", &["ro".to_string()][..]));
        assert!(config.ckpt.is_none());
        let back = serde_json::to_value(&config).unwrap();
        assert_eq!(back["rootfsImageName"], "docker.io/library/nginx:latest");
        assert!(back.get("ckpt").is_none());
    }

    #[test]
    fn the_summary_of_an_archive_lists_its_parts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.tar");
        let mut builder = tar::Builder::new(std::fs::File::create(&path).unwrap());
        let mut add = |name: &str, data: &[u8]| {
            let mut header = tar::Header::new_gnu();
            header.set_size(data.len() as u64);
            header.set_mode(0o600);
            header.set_cksum();
            builder.append_data(&mut header, name, data).unwrap();
        };
        add("config.dump", br#"{"id":"i","name":"web","runtime":"runc"}"#);
        add("spec.dump", br#"{"annotations":{"io.container.manager":"libpod"}}"#);
        add("checkpoint/pages-1.img", &[0u8; 4096]);
        add("volumes/data.tar", &[0u8; 1024]);
        add("rootfs-diff.tar", &[0u8; 512]);
        builder.into_inner().unwrap();
        let summary = summarize(&path).unwrap();
        assert_eq!((summary.container.as_str(), summary.engine.as_str()), ("web", "podman"));
        assert_eq!(summary.checkpoint_size, 4096);
        assert_eq!(summary.rootfs_diff_size, Some(512));
        assert_eq!(summary.volumes, vec![VolumeSummary { name: "data".into(), size: 1024 }]);
        assert!(!summary.manifest);
        insta::assert_snapshot!("inspect_checkpoint_text", render(&summary));
    }
}
