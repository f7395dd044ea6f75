//! Registries, through skopeo behind a trait as runc and CRIU are: skopeo streams blobs in both
//! directions, never holding one in memory, and reads the containers and docker auth files as
//! podman does.

use std::path::{Path, PathBuf};
use std::process::Command;

/// How to reach a registry, with podman's flags.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Access {
    /// `false` for `--tls-verify=false` or a registry the host config lists as insecure.
    pub tls_verify: bool,
    /// `--creds USER[:PASS]`.
    pub creds: Option<String>,
    /// `--authfile`; skopeo's defaults (the containers auth file, then docker's) otherwise.
    pub authfile: Option<PathBuf>,
    pub signatures: Signatures,
}

/// Container images' own "simple signing" (GPG), as podman and skopeo sign and verify it: the
/// signatures live beside the registry, where `registries.d` says (a lookaside store).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Signatures {
    /// The GPG key (fingerprint or user ID) a push signs with, as `podman push --sign-by`.
    pub sign_by: Option<String>,
    /// The GnuPG home that key is in; GnuPG's own default otherwise.
    pub gnupg_home: Option<PathBuf>,
    /// The `registries.d` directory that says where signatures are stored; containers' default
    /// (`/etc/containers/registries.d`, else `/var/lib/containers/sigstore`) otherwise.
    pub registries_d: Option<PathBuf>,
    /// A GPG public keyring: a pull is refused unless the image is signed by a key in it.
    pub trusted_keyring: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("skopeo is not installed ({0}); run scripts/setup")]
    NoSkopeo(String),
    #[error("{action} {reference:?} failed ({status}): {stderr}")]
    Failed { action: &'static str, reference: String, status: String, stderr: String },
    #[error("{0:?} is not a registry reference: give HOST[:PORT]/NAME[:TAG], for example localhost:5000/ckpt/web:1")]
    BadReference(String),
    #[error("cannot write --creds into a private auth file for skopeo: {0}")]
    Creds(String),
    #[error(
        "{reference:?} is not signed by a key in {keyring:?} ([signatures] image-keys), so it was not pulled: {stderr}"
    )]
    Unverified { reference: String, keyring: PathBuf, stderr: String },
    #[error("cannot write the signature policy for skopeo: {0}")]
    Policy(String),
}

/// Copies images between a local OCI layout and a registry.
pub trait Registry {
    /// Pushes the image `name` of the layout at `layout` to `destination` (`host/name:tag`).
    fn push(&self, layout: &Path, name: &str, destination: &str, access: &Access) -> Result<(), RegistryError>;
    /// Pulls `source` (`host/name:tag`) into the layout at `layout` under `name`.
    fn pull(&self, source: &str, layout: &Path, name: &str, access: &Access) -> Result<(), RegistryError>;
    /// The bytes a pull of `source` brings (its manifest's config and layers), as the registry
    /// declares them; `None` for a manifest list, whose platform is chosen in the pull.
    fn declared_size(&self, source: &str, access: &Access) -> Result<Option<u64>, RegistryError>;
}

/// The one image's digest, when a registry's raw manifest is an index of exactly one image.
fn index_of_one(raw: &[u8]) -> Option<String> {
    let doc: serde_json::Value = serde_json::from_slice(raw).ok()?;
    match doc.get("manifests")?.as_array()?.as_slice() {
        [one] => one.get("digest")?.as_str().map(str::to_string),
        _ => None,
    }
}

/// The config and layer sizes an image manifest (OCI or Docker v2) declares; `None` for a list.
pub fn manifest_size(manifest: &[u8]) -> Option<u64> {
    let doc: serde_json::Value = serde_json::from_slice(manifest).ok()?;
    let layers = doc.get("layers")?.as_array()?;
    let sizes = layers.iter().chain(doc.get("config")).map(|d| d.get("size").and_then(serde_json::Value::as_u64));
    sizes.sum()
}

/// A reference ckpt sends to a registry: a host (with a dot or a port, or `localhost`), then a
/// path, and a tag or digest.
pub fn check_reference(reference: &str) -> Result<(), RegistryError> {
    let bad = || RegistryError::BadReference(reference.to_string());
    let (host, path) = reference.split_once('/').ok_or_else(bad)?;
    let host_chars = host.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':'));
    let host_like = host_chars
        && host.starts_with(|c: char| c.is_ascii_alphanumeric())
        && (host == "localhost" || host.contains('.') || host.contains(':'));
    let clean = |s: &str| !s.is_empty() && !s.chars().any(|c| c.is_whitespace() || c.is_control());
    if !host_like || !clean(host) || !clean(path) || path.contains("..") || reference.starts_with('-') {
        return Err(bad());
    }
    Ok(())
}

pub struct Skopeo {
    path: PathBuf,
}

impl Skopeo {
    /// Whether `source` is an index of one image, as a checkpoint image is.
    fn is_index_of_one(&self, source: &str, access: &Access) -> Result<bool, RegistryError> {
        let args = ["--raw".to_string(), format!("docker://{source}")];
        let raw = self.skopeo(("inspect", "inspection of"), source, ("", access), &args)?;
        Ok(index_of_one(&raw).is_some())
    }

    pub fn find() -> Result<Skopeo, RegistryError> {
        crate::util::find_in_path("skopeo")
            .map(|path| Skopeo { path })
            .ok_or_else(|| RegistryError::NoSkopeo("not in $PATH".into()))
    }

    /// `skopeo SUBCOMMAND` with `access`'s flags (named with `prefix`: `src-`, `dest-`, or none
    /// for a subcommand that reaches one registry), then `args`; returns its standard output.
    fn skopeo(
        &self,
        (subcommand, action): (&str, &'static str),
        reference: &str,
        (prefix, access): (&str, &Access),
        args: &[String],
    ) -> Result<Vec<u8>, RegistryError> {
        let creds = access.creds.as_deref().map(|creds| CredsFile::write(reference, creds)).transpose()?;
        let mut cmd = Command::new(&self.path);
        if let Some(dir) = &access.signatures.registries_d {
            cmd.arg("--registries.d").arg(dir);
        }
        if let Some(home) = &access.signatures.gnupg_home {
            cmd.env("GNUPGHOME", home);
        }
        cmd.arg(subcommand).args(access_args(prefix, access, creds.as_ref())).args(args);
        tracing::debug!(?cmd, "{action}");
        let output = cmd.output().map_err(|e| RegistryError::NoSkopeo(e.to_string()))?;
        if output.status.success() {
            return Ok(output.stdout);
        }
        Err(RegistryError::Failed {
            action,
            reference: reference.to_string(),
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        })
    }
}

/// A `policy.json` that accepts an image only when a key of `keyring` signed it, for one pull.
/// Removed on drop.
struct SignedByPolicy(tempfile::NamedTempFile);

impl SignedByPolicy {
    fn write(keyring: &Path) -> Result<SignedByPolicy, RegistryError> {
        let keyring = std::fs::canonicalize(keyring)
            .map_err(|e| RegistryError::Policy(format!("the keyring {keyring:?} ([signatures] image-keys): {e}")))?;
        let requirement = serde_json::json!({"type": "signedBy", "keyType": "GPGKeys", "keyPath": keyring});
        let document = serde_json::json!({"default": [requirement]});
        private_json("ckpt-policy-", &document).map(SignedByPolicy).map_err(|e| RegistryError::Policy(e.to_string()))
    }
}

/// `document` in a temporary file private to root (tempfile makes it 0600), for one skopeo run.
fn private_json(prefix: &str, document: &serde_json::Value) -> std::io::Result<tempfile::NamedTempFile> {
    use std::io::Write;
    let mut file = tempfile::Builder::new().prefix(prefix).suffix(".json").tempfile()?;
    file.write_all(document.to_string().as_bytes())?;
    file.flush()?;
    Ok(file)
}

/// `--creds USER:PASS` as an auth file of its own, private to root, for one copy: never on
/// skopeo's command line, which every local user reads in `/proc/PID/cmdline`. Removed on drop.
struct CredsFile(tempfile::NamedTempFile);

impl CredsFile {
    fn write(reference: &str, creds: &str) -> Result<CredsFile, RegistryError> {
        use base64::Engine;
        let host = reference.split_once('/').map_or(reference, |(host, _)| host);
        let auth = base64::engine::general_purpose::STANDARD.encode(creds);
        let document = serde_json::json!({"auths": {host: {"auth": auth}}});
        private_json("ckpt-auth-", &document).map(CredsFile).map_err(|e| RegistryError::Creds(e.to_string()))
    }
}

/// skopeo's flags for reaching a registry, each named with `prefix` (`src-` or `dest-` for a
/// side of a copy); `--creds` go in `creds`, which takes the place of any `--authfile`.
fn access_args(prefix: &str, access: &Access, creds: Option<&CredsFile>) -> Vec<String> {
    let mut args = vec![format!("--{prefix}tls-verify={}", access.tls_verify)];
    let authfile = creds.map(|c| c.0.path()).or(access.authfile.as_deref());
    if let Some(authfile) = authfile {
        args.push(format!("--{prefix}authfile={}", authfile.display()));
    }
    args
}

fn oci(layout: &Path, name: &str) -> String {
    format!("oci:{}:{name}", layout.display())
}

impl Registry for Skopeo {
    fn push(&self, layout: &Path, name: &str, destination: &str, access: &Access) -> Result<(), RegistryError> {
        check_reference(destination)?;
        // Digests are kept, so a pushed checkpoint image is the same image on the other side,
        // index and all (`--all`: a checkpoint image's index holds its one image; a signature
        // then signs both).
        let mut args = vec!["--quiet".to_string(), "--preserve-digests".into(), "--all".into()];
        if let Some(key) = &access.signatures.sign_by {
            args.extend(["--sign-by".to_string(), key.clone()]);
        }
        args.extend([oci(layout, name), format!("docker://{destination}")]);
        self.skopeo(("copy", "push to"), destination, ("dest-", access), &args).map(drop)
    }

    fn pull(&self, source: &str, layout: &Path, name: &str, access: &Access) -> Result<(), RegistryError> {
        check_reference(source)?;
        // An OCI layout has no place for signatures: they are checked, then left behind.
        let mut args = vec!["--quiet".to_string(), "--preserve-digests".into(), "--remove-signatures".into()];
        // An index of one image (a checkpoint image's) comes whole, so that its digest is the
        // one pushed; of several platforms' images, only this platform's comes.
        if self.is_index_of_one(source, access)? {
            args.push("--all".into());
        }
        let policy = access.signatures.trusted_keyring.as_deref().map(SignedByPolicy::write).transpose()?;
        if let Some(policy) = &policy {
            args.extend(["--policy".to_string(), policy.0.path().display().to_string()]);
        }
        args.extend([format!("docker://{source}"), oci(layout, name)]);
        match self.skopeo(("copy", "pull of"), source, ("src-", access), &args) {
            Err(RegistryError::Failed { stderr, .. })
                if policy.is_some() && stderr.contains("Source image rejected") =>
            {
                let keyring = access.signatures.trusted_keyring.clone().unwrap_or_default();
                Err(RegistryError::Unverified { reference: source.to_string(), keyring, stderr })
            }
            other => other.map(drop),
        }
    }

    fn declared_size(&self, source: &str, access: &Access) -> Result<Option<u64>, RegistryError> {
        check_reference(source)?;
        let args = ["--raw".to_string(), format!("docker://{source}")];
        let manifest = self.skopeo(("inspect", "inspection of"), source, ("", access), &args)?;
        // A checkpoint image's index holds one image: its size is that image's.
        let Some(image) = index_of_one(&manifest) else { return Ok(manifest_size(&manifest)) };
        let instance = format!("{}@{image}", crate::image::repository_of(source));
        let args = ["--raw".to_string(), format!("docker://{instance}")];
        let image = self.skopeo(("inspect", "inspection of"), &instance, ("", access), &args)?;
        Ok(manifest_size(&image).map(|size| size + manifest.len() as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_index_of_one_image_names_it_in_its_repository() {
        let one =
            br#"{"mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [{"digest": "sha256:ab"}]}"#;
        assert_eq!(index_of_one(one).as_deref(), Some("sha256:ab"));
        let two = br#"{"manifests": [{"digest": "sha256:ab"}, {"digest": "sha256:cd"}]}"#;
        assert_eq!(index_of_one(two), None);
        assert_eq!(index_of_one(br#"{"layers": []}"#), None);
        let repository_of = crate::image::repository_of;
        assert_eq!(repository_of("localhost:5000/ckpt/web:1"), "localhost:5000/ckpt/web");
        assert_eq!(repository_of("localhost:5000/ckpt/web"), "localhost:5000/ckpt/web");
        assert_eq!(repository_of("localhost:5000/ckpt/web:1@sha256:ab"), "localhost:5000/ckpt/web");
        assert_eq!(repository_of("localhost:5000/ckpt/web@sha256:ab"), "localhost:5000/ckpt/web");
    }

    #[test]
    fn references_need_a_registry_host() {
        for good in ["localhost:5000/ckpt/web:1", "registry.example.com/a/b@sha256:00", "localhost/web"] {
            check_reference(good).unwrap();
        }
        for bad in [
            "web",
            "ckpt/web:1",
            "localhost:5000/",
            "-x/y",
            "localhost:5000/a b",
            "localhost/../x",
            "../p.wasm",
            "./p.wasm",
        ] {
            assert!(check_reference(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_manifest_declares_the_size_of_its_blobs() {
        let manifest = br#"{"config": {"size": 10}, "layers": [{"size": 100}, {"size": 1000}]}"#;
        assert_eq!(manifest_size(manifest), Some(1110));
        assert_eq!(manifest_size(br#"{"manifests": [{"size": 5}]}"#), None, "a list");
        assert_eq!(manifest_size(br#"{"layers": [{"digest": "x"}]}"#), None, "no size");
    }

    #[test]
    fn access_becomes_skopeos_flags_and_creds_never_reach_its_command_line() {
        let access = Access { tls_verify: false, authfile: Some("/a.json".into()), ..Default::default() };
        assert_eq!(access_args("dest-", &access, None), ["--dest-tls-verify=false", "--dest-authfile=/a.json"]);
        let plain = Access { tls_verify: true, ..Default::default() };
        assert_eq!(access_args("src-", &plain, None), ["--src-tls-verify=true"]);
        assert_eq!(access_args("", &plain, None), ["--tls-verify=true"], "inspect reaches one registry");

        let creds = CredsFile::write("localhost:5000/ckpt/web:1", "alice:s3cret").unwrap();
        let with_creds = Access { creds: Some("alice:s3cret".into()), ..access };
        let args = access_args("src-", &with_creds, Some(&creds));
        assert!(args.iter().all(|a| !a.contains("s3cret")), "{args:?}");
        assert_eq!(args[1], format!("--src-authfile={}", creds.0.path().display()));
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(creds.0.path()).unwrap().permissions().mode() & 0o777, 0o600);
        let written: serde_json::Value = serde_json::from_slice(&std::fs::read(creds.0.path()).unwrap()).unwrap();
        assert_eq!(written["auths"]["localhost:5000"]["auth"], "YWxpY2U6czNjcmV0", "base64 of alice:s3cret");
        let path = creds.0.path().to_path_buf();
        drop(creds);
        assert!(!path.exists(), "removed after the copy");
    }
}
