//! The host's own rules, from `/etc/ckpt/ckpt.toml` (or `--config`): what a policy may do that
//! the user did not type, and how a restore may use the host. A policy chooses export targets;
//! the admin chooses where they may go.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::base_error::{BaseError as Error, BaseResult as Result};

pub const DEFAULT_PATH: &str = "/etc/ckpt/ckpt.toml";
/// The network `run` uses unless told otherwise, as podman's `podman` is.
pub const DEFAULT_NETWORK: &str = "ckpt";

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostConfig {
    #[serde(default)]
    pub exports: ExportRules,
    #[serde(default)]
    pub registries: RegistryRules,
    #[serde(default)]
    pub migration: MigrationRules,
    #[serde(default)]
    pub restore: RestoreRules,
    #[serde(default)]
    pub network: NetworkRules,
    #[serde(default)]
    pub signatures: SignatureRules,
    #[serde(default)]
    pub engines: EngineRules,
    #[serde(default)]
    pub checkpoint: CheckpointRules,
    /// The file this came from; `None` when there was none and the defaults apply.
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

/// Where policies may send checkpoints. Targets typed on the command line are always allowed.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ExportRules {
    /// Directories a policy may write archives into (directly or below).
    #[serde(default)]
    pub directories: Vec<PathBuf>,
    /// Prefixes of the checkpoint image names a policy may create, such as `localhost/ckpt/`.
    #[serde(default)]
    pub image_prefixes: Vec<String>,
    /// Prefixes of the registry references a policy may push checkpoint images to, such as
    /// `registry.example.com/ckpt/`.
    #[serde(default)]
    pub registries: Vec<String>,
    /// Whether every export is sealed (`always`), or only those asked for (`when-asked`).
    #[serde(default)]
    pub encrypt: EncryptRule,
    /// Recipients every sealed export is also sealed to (age `age1…` or SSH public keys): an
    /// escrow that `--encrypt-to` adds to and never replaces.
    #[serde(default)]
    pub recipients: Vec<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EncryptRule {
    #[default]
    WhenAsked,
    Always,
}

/// Who signs archives, and whose signatures a restore trusts.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct SignatureRules {
    /// The SSH private key every exported archive is signed with, beside `--sign-with`'s.
    #[serde(default)]
    pub sign_with: Option<PathBuf>,
    /// SSH public keys (`ssh-ed25519 AAAA… [comment]`) whose signatures a restore accepts.
    #[serde(default)]
    pub trusted: Vec<String>,
    /// Refuse to restore an archive without a trusted signature, and a checkpoint image that
    /// was neither made here nor pulled with a signature from `image-keys`.
    #[serde(default)]
    pub require: bool,
    /// The GPG key (fingerprint or user ID) every pushed image is signed with ("simple
    /// signing", which podman and skopeo verify), beside `push --sign-by`'s.
    #[serde(default)]
    pub sign_by: Option<String>,
    /// The GnuPG home that key is in.
    #[serde(default)]
    pub gnupg_home: Option<PathBuf>,
    /// A GPG public keyring: every pull must be signed by one of its keys.
    #[serde(default)]
    pub image_keys: Option<PathBuf>,
    /// The `registries.d` directory that says where image signatures are stored.
    #[serde(default)]
    pub registries_d: Option<PathBuf>,
}

/// How a checkpoint's dump is started.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct CheckpointRules {
    /// Who asks CRIU for a dump that leaves the container running.
    #[serde(default)]
    pub dump_through: DumpThrough,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DumpThrough {
    /// ckpt, through CRIU's RPC, with what runc knows read from runc 1.1's state: one CRIU
    /// process and no runc. Anything else goes through the runtime.
    #[default]
    Criu,
    /// The runtime's `checkpoint`, which starts CRIU twice (its version, then the dump).
    Runtime,
}

/// How ckpt reaches the engines whose containers it checkpoints besides its own.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct EngineRules {
    /// podman's API socket (`podman system service`, or the `podman.socket` unit's).
    #[serde(default = "default_podman_socket")]
    pub podman_socket: PathBuf,
    /// The kubelet's API, for schedules of `k8s:NAMESPACE/POD/CONTAINER`.
    #[serde(default = "default_kubelet_address")]
    pub kubelet_address: String,
    /// The client certificate and key the kubelet accepts (`--client-ca-file`), as the
    /// checkpoint-restore-operator uses them; RBAC must grant `nodes/checkpoint` `create`.
    #[serde(default)]
    pub kubelet_client_cert: Option<PathBuf>,
    #[serde(default)]
    pub kubelet_client_key: Option<PathBuf>,
    /// The CA that signed the kubelet's serving certificate.
    #[serde(default)]
    pub kubelet_ca: Option<PathBuf>,
}

impl Default for EngineRules {
    fn default() -> EngineRules {
        EngineRules {
            podman_socket: default_podman_socket(),
            kubelet_address: default_kubelet_address(),
            kubelet_client_cert: None,
            kubelet_client_key: None,
            kubelet_ca: None,
        }
    }
}

fn default_kubelet_address() -> String {
    "https://127.0.0.1:10250".into()
}

fn default_podman_socket() -> PathBuf {
    PathBuf::from("/run/podman/podman.sock")
}

/// How ckpt reaches registries.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RegistryRules {
    /// Registries (`host[:port]`) reached without TLS verification, as containers' registries.conf
    /// `insecure = true` does.
    #[serde(default)]
    pub insecure: Vec<String>,
}

/// What `ckpt migrate` may do on this host.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct MigrationRules {
    /// Whether post-copy (CRIU's lazy pages) may be chosen: `"auto"` (the default) where it is
    /// known to work, `true` wherever CRIU can restore lazily, `false` never.
    #[serde(default)]
    pub post_copy: PostCopy,
}

/// `[migration] post-copy`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PostCopy {
    /// Where CRIU restores lazily and its page server can serve pages: where CRIU's page server
    /// fails mid-transfer, a restore waits on memory that never comes.
    #[default]
    Auto,
    On,
    Off,
}

impl<'de> Deserialize<'de> for PostCopy {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> std::result::Result<PostCopy, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Written {
            Switch(bool),
            Word(String),
        }
        match Written::deserialize(deserializer)? {
            Written::Switch(true) => Ok(PostCopy::On),
            Written::Switch(false) => Ok(PostCopy::Off),
            Written::Word(word) if word == "auto" => Ok(PostCopy::Auto),
            Written::Word(word) => {
                Err(serde::de::Error::custom(format!("post-copy {word:?} is not true, false or \"auto\"")))
            }
        }
    }
}

/// Where the host's networks are kept, and what containers get unless told otherwise.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct NetworkRules {
    /// Network definitions, in netavark's JSON (podman keeps its own in /etc/containers/networks).
    #[serde(default = "NetworkRules::default_definitions")]
    pub definitions: PathBuf,
    /// Address allocations and aardvark-dns's state; gone at reboot, with the containers.
    #[serde(default = "NetworkRules::default_state")]
    pub state: PathBuf,
    /// The network of a container created without `--network`: a network's name, or `none`
    /// for loopback only.
    #[serde(default = "NetworkRules::default_network")]
    pub default_network: String,
    /// The host addresses a port published without one (`-p 8080:80`) binds to, as podman's
    /// `default_host_ips`; empty means every address.
    #[serde(default)]
    pub default_host_ips: Vec<std::net::Ipv4Addr>,
}

impl NetworkRules {
    fn default_definitions() -> PathBuf {
        PathBuf::from("/etc/ckpt/networks")
    }
    fn default_state() -> PathBuf {
        PathBuf::from("/run/ckpt/networks")
    }
    fn default_network() -> String {
        DEFAULT_NETWORK.to_string()
    }
}

impl Default for NetworkRules {
    fn default() -> NetworkRules {
        NetworkRules {
            definitions: NetworkRules::default_definitions(),
            state: NetworkRules::default_state(),
            default_network: NetworkRules::default_network(),
            default_host_ips: Vec::new(),
        }
    }
}

/// How `restore --import` treats the page images it unpacked.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RestoreRules {
    /// Whether CRIU punches the page images out of their files as it reads them
    /// (`--auto-dedup`), so that the restore needs the container's memory once, not twice.
    #[serde(default)]
    pub consume_imported_pages: ConsumePages,
    /// This host's own age identities or SSH private keys: every restore tries them on a sealed
    /// checkpoint, after `--identity`'s, so a migration's destination opens what was sealed to it.
    #[serde(default)]
    pub identities: Vec<PathBuf>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ConsumePages {
    /// When the images are large beside the memory available.
    #[default]
    Auto,
    Always,
    Never,
}

impl RegistryRules {
    /// Whether `reference`'s registry is listed as insecure.
    pub fn is_insecure(&self, reference: &str) -> bool {
        let host = reference.split('/').next().unwrap_or_default();
        self.insecure.iter().any(|r| r == host)
    }
}

impl HostConfig {
    /// Reads `path`, or the default file when `path` is `None` (a missing default file means
    /// the defaults: policies may export nowhere the user did not name).
    pub fn load(path: Option<&Path>) -> Result<HostConfig> {
        let (path, explicit) = match path {
            Some(p) => (p.to_path_buf(), true),
            None => (PathBuf::from(DEFAULT_PATH), false),
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => return Ok(HostConfig::default()),
            Err(e) => return Err(Error::io("read the host config", &path)(e)),
        };
        let mut config: HostConfig = toml::from_str(&text).map_err(|e| Error::Corrupt {
            what: "host config",
            path: path.clone(),
            detail: e.to_string().trim_end().replace('\n', " "),
        })?;
        for dir in &config.exports.directories {
            if !dir.is_absolute() {
                return Err(Error::invalid(format!(
                    "host config {:?}: [exports] directories entry {:?} is not an absolute path",
                    path.display().to_string(),
                    dir.display().to_string()
                )));
            }
        }
        config.source = Some(path);
        Ok(config)
    }

    fn describe_source(&self) -> String {
        match &self.source {
            Some(path) => path.display().to_string(),
            None => format!("{DEFAULT_PATH}, which does not exist"),
        }
    }

    /// Whether a policy may write an archive at `target`; the error says which setting to change.
    pub fn allows_archive(&self, target: &Path, forbidden: &[&Path]) -> std::result::Result<(), String> {
        let refuse = |why: &str| {
            format!(
                "{why}; policies may export only into the directories listed under [exports] directories in {} ({})",
                self.describe_source(),
                list(self.exports.directories.iter().map(|d| d.display().to_string()))
            )
        };
        if !target.is_absolute() || target.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
            return Err(refuse("it is not a clean absolute path"));
        }
        let (Some(parent), Some(_)) = (target.parent(), target.file_name()) else {
            return Err(refuse("it names no file"));
        };
        let parent = parent.canonicalize().map_err(|e| refuse(&format!("its directory cannot be resolved ({e})")))?;
        let inside = |dir: &Path| dir.canonicalize().is_ok_and(|d| parent.starts_with(d));
        if forbidden.iter().any(|dir| inside(dir)) {
            return Err(refuse("it is inside ckpt's own store"));
        }
        if self.exports.directories.iter().any(|dir| inside(dir)) {
            Ok(())
        } else {
            Err(refuse("it is outside every allowed directory"))
        }
    }

    /// Whether a policy may create the checkpoint image `name` (already normalised).
    pub fn allows_image(&self, name: &str) -> std::result::Result<(), String> {
        if self.exports.image_prefixes.iter().any(|prefix| reference_within(prefix, name)) {
            return Ok(());
        }
        Err(format!(
            "policies may create only images whose names start with a prefix listed under [exports] image-prefixes in {} ({})",
            self.describe_source(),
            list(self.exports.image_prefixes.iter().cloned())
        ))
    }
}

impl HostConfig {
    /// Whether a policy may push a checkpoint image to `reference` (already normalised).
    pub fn allows_registry(&self, reference: &str) -> std::result::Result<(), String> {
        if self.exports.registries.iter().any(|prefix| reference_within(prefix, reference)) {
            return Ok(());
        }
        Err(format!(
            "policies may push only to references that start with a prefix listed under [exports] registries in {} ({})",
            self.describe_source(),
            list(self.exports.registries.iter().cloned())
        ))
    }
}

/// Whether `reference` is under `prefix`: the same host exactly (`localhost:5000` does not admit
/// `localhost:50000`, nor `example.com` `example.com.evil.net`), then whole path components
/// (`ckpt/web` admits `ckpt/web:1` and `ckpt/web/x`, not `ckpt/webx`; a prefix ending in `/`
/// admits everything below it).
fn reference_within(prefix: &str, reference: &str) -> bool {
    if prefix.is_empty() {
        return false;
    }
    let (prefix_host, prefix_path) = prefix.split_once('/').unwrap_or((prefix, ""));
    let (host, path) = reference.split_once('/').unwrap_or((reference, ""));
    if prefix_host != host {
        return false;
    }
    if prefix_path.is_empty() || prefix_path.ends_with('/') {
        return path.starts_with(prefix_path);
    }
    path.strip_prefix(prefix_path).is_some_and(|rest| rest.is_empty() || rest.starts_with(['/', ':', '@']))
}

fn list(items: impl Iterator<Item = String>) -> String {
    let items: Vec<String> = items.map(|i| format!("{i:?}")).collect();
    if items.is_empty() { "none are".into() } else { format!("now: {}", items.join(", ")) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reference_is_within_a_prefix_by_exact_host_and_whole_path_components() {
        for (prefix, reference) in [
            ("localhost:5000", "localhost:5000/ckpt/web:1"),
            ("localhost:5000/", "localhost:5000/ckpt/web:1"),
            ("localhost/allowed/", "localhost/allowed/web:latest"),
            ("registry.example.com/ckpt", "registry.example.com/ckpt/web:1"),
            ("registry.example.com/ckpt/web", "registry.example.com/ckpt/web:1"),
            ("registry.example.com/ckpt/web", "registry.example.com/ckpt/web@sha256:00"),
        ] {
            assert!(reference_within(prefix, reference), "{prefix} admits {reference}");
        }
        for (prefix, reference) in [
            ("localhost:5000", "localhost:50000/ckpt/web:1"),
            ("registry.example.com", "registry.example.com.evil.net/ckpt/web:1"),
            ("localhost", "localhost:5000/ckpt/web:1"),
            ("registry.example.com/ckpt", "registry.example.com/ckptx/web:1"),
            ("", "localhost/x:1"),
        ] {
            assert!(!reference_within(prefix, reference), "{prefix} does not admit {reference}");
        }
    }

    #[test]
    fn post_copy_is_auto_unless_the_host_config_says_true_or_false() {
        let rules = |text: &str| toml::from_str::<MigrationRules>(text).map(|r| r.post_copy);
        assert_eq!(rules("").unwrap(), PostCopy::Auto);
        assert_eq!(rules("post-copy = \"auto\"").unwrap(), PostCopy::Auto);
        assert_eq!(rules("post-copy = true").unwrap(), PostCopy::On);
        assert_eq!(rules("post-copy = false").unwrap(), PostCopy::Off);
        let wrong = rules("post-copy = \"sometimes\"").unwrap_err().to_string();
        assert!(wrong.contains("\"sometimes\" is not true, false or \"auto\""), "{wrong}");
    }

    #[test]
    fn a_dump_goes_through_criu_unless_the_admin_says_the_runtime() {
        let rules = |text: &str| toml::from_str::<HostConfig>(text).map(|r| r.checkpoint.dump_through);
        assert_eq!(rules("").unwrap(), DumpThrough::Criu);
        assert_eq!(rules("[checkpoint]\ndump-through = \"runtime\"").unwrap(), DumpThrough::Runtime);
        assert!(rules("[checkpoint]\ndump-through = \"runc\"").unwrap_err().to_string().contains("runtime"));
    }

    fn config(dirs: &[&Path], prefixes: &[&str]) -> HostConfig {
        HostConfig {
            exports: ExportRules {
                directories: dirs.iter().map(|d| d.to_path_buf()).collect(),
                image_prefixes: prefixes.iter().map(|p| p.to_string()).collect(),
                registries: vec![],
                ..ExportRules::default()
            },
            registries: RegistryRules::default(),
            migration: MigrationRules::default(),
            restore: RestoreRules::default(),
            network: NetworkRules::default(),
            signatures: SignatureRules::default(),
            engines: EngineRules::default(),
            checkpoint: CheckpointRules::default(),
            source: Some(PathBuf::from("/etc/ckpt/ckpt.toml")),
        }
    }

    #[test]
    fn policies_export_only_into_allowed_directories() {
        let base = tempfile::tempdir().unwrap();
        let allowed = base.path().join("exports");
        let store = base.path().join("store");
        std::fs::create_dir_all(allowed.join("deep")).unwrap();
        std::fs::create_dir_all(&store).unwrap();
        std::os::unix::fs::symlink("/etc", allowed.join("etc")).unwrap();
        let rules = config(&[&allowed, &store], &[]);
        assert!(rules.allows_archive(&allowed.join("c.tar"), &[&store]).is_ok());
        assert!(rules.allows_archive(&allowed.join("deep/c.tar"), &[&store]).is_ok());
        for bad in [
            PathBuf::from("/etc/passwd"),
            allowed.join("../c.tar"),
            allowed.join("etc/passwd"),
            PathBuf::from("relative.tar"),
            store.join("c.tar"),
        ] {
            let err = rules.allows_archive(&bad, &[&store]).unwrap_err();
            assert!(err.contains("[exports] directories"), "{bad:?}: {err}");
        }
        let none = HostConfig::default();
        let err = none.allows_archive(&allowed.join("c.tar"), &[]).unwrap_err();
        assert!(err.contains("which does not exist") && err.contains("none are"), "{err}");
    }

    #[test]
    fn image_names_need_an_allowed_prefix() {
        let rules = config(&[], &["localhost/ckpt/"]);
        assert!(rules.allows_image("localhost/ckpt/web:latest").is_ok());
        assert!(rules.allows_image("localhost/busybox:latest").unwrap_err().contains("image-prefixes"));
    }

    #[test]
    fn unknown_keys_and_relative_directories_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ckpt.toml");
        std::fs::write(&path, "[exports]\ndirectory = [\"/srv\"]\n").unwrap();
        assert!(HostConfig::load(Some(&path)).unwrap_err().to_string().contains("directory"));
        std::fs::write(&path, "[exports]\ndirectories = [\"srv\"]\n").unwrap();
        assert!(HostConfig::load(Some(&path)).unwrap_err().to_string().contains("not an absolute path"));
        std::fs::write(&path, "[exports]\ndirectories = [\"/srv\"]\nimage-prefixes = [\"localhost/ckpt/\"]\n").unwrap();
        let loaded = HostConfig::load(Some(&path)).unwrap();
        assert_eq!(loaded.exports.directories, vec![PathBuf::from("/srv")]);
        assert!(HostConfig::load(Some(&dir.path().join("missing.toml"))).is_err(), "an explicit file must exist");
    }

    #[test]
    fn consuming_imported_pages_is_auto_unless_set() {
        assert_eq!(HostConfig::default().restore.consume_imported_pages, ConsumePages::Auto);
        let set: HostConfig = toml::from_str("[restore]\nconsume-imported-pages = \"never\"\n").unwrap();
        assert_eq!(set.restore.consume_imported_pages, ConsumePages::Never);
        assert!(toml::from_str::<HostConfig>("[restore]\nconsume-imported-pages = \"sometimes\"\n").is_err());
    }

    #[test]
    fn insecure_registries_are_named_by_host_and_port() {
        let rules: HostConfig = toml::from_str("[registries]\ninsecure = [\"localhost:5000\"]\n").unwrap();
        assert!(rules.registries.is_insecure("localhost:5000/ckpt/web:1"));
        assert!(!rules.registries.is_insecure("localhost:5001/ckpt/web:1"));
        assert!(!rules.registries.is_insecure("registry.example.com/localhost:5000"));
        assert!(toml::from_str::<HostConfig>("[registries]\nsecure = []\n").is_err(), "unknown keys are errors");
    }
}
