//! Policies as OCI artifacts, as Kubewarden publishes them: one manifest whose config has the
//! media type `application/vnd.wasm.config.v0+json` and whose one layer is the component,
//! `application/wasm`.

use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;

use oci_spec::image::{Descriptor, Digest, ImageIndex, ImageManifest, ImageManifestBuilder, MediaType, SCHEMA_VERSION};
use sha2::{Digest as _, Sha256};

use super::ImageError;

pub const WASM_CONFIG_TYPE: &str = "application/vnd.wasm.config.v0+json";
pub const WASM_LAYER_TYPE: &str = "application/wasm";
const REF_NAME: &str = "org.opencontainers.image.ref.name";

fn sha256(bytes: &[u8]) -> Digest {
    let hex = hex::encode(Sha256::digest(bytes));
    oci_spec::image::Sha256Digest::from_str(&hex).expect("a sha256 hash is 64 lowercase hex digits").into()
}

fn invalid(artifact: &str, detail: impl Into<String>) -> ImageError {
    ImageError::Invalid { image: artifact.to_string(), detail: detail.into() }
}

/// Writes `wasm` as an OCI layout at `layout` with one artifact named `name`; returns the
/// manifest's digest, which pins it.
pub fn write_wasm_artifact(layout: &Path, name: &str, wasm: &[u8]) -> Result<Digest, ImageError> {
    let io = |e: std::io::Error| invalid(name, format!("writing the layout at {}: {e}", layout.display()));
    let blobs = layout.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).map_err(io)?;
    let put = |bytes: &[u8]| -> Result<Digest, ImageError> {
        let digest = sha256(bytes);
        std::fs::write(blobs.join(digest.digest()), bytes).map_err(io)?;
        Ok(digest)
    };
    let config = b"{}";
    let config_descriptor =
        Descriptor::new(MediaType::Other(WASM_CONFIG_TYPE.into()), config.len() as u64, put(config)?);
    let layer = Descriptor::new(MediaType::Other(WASM_LAYER_TYPE.into()), wasm.len() as u64, put(wasm)?);
    let manifest = ImageManifestBuilder::default()
        .schema_version(SCHEMA_VERSION)
        .media_type(MediaType::ImageManifest)
        .config(config_descriptor)
        .layers(vec![layer])
        .build()
        .map_err(|e| invalid(name, e.to_string()))?;
    let manifest_bytes = serde_json::to_vec(&manifest).expect("a manifest serialises");
    let manifest_digest = put(&manifest_bytes)?;
    let mut entry = Descriptor::new(MediaType::ImageManifest, manifest_bytes.len() as u64, manifest_digest.clone());
    entry.set_annotations(Some(HashMap::from([(REF_NAME.to_string(), name.to_string())])));
    let mut index = ImageIndex::default();
    index.set_manifests(vec![entry]);
    std::fs::write(layout.join("index.json"), serde_json::to_vec(&index).expect("an index serialises")).map_err(io)?;
    std::fs::write(layout.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).map_err(io)?;
    Ok(manifest_digest)
}

/// Reads the component of the artifact in the layout at `layout`, checking every digest
/// against the content and the manifest against `pinned`.
pub fn read_wasm_artifact(
    layout: &Path,
    artifact: &str,
    pinned: &Digest,
    max_bytes: u64,
) -> Result<Vec<u8>, ImageError> {
    let blob = |digest: &Digest, limit: u64| -> Result<Vec<u8>, ImageError> {
        let path = layout.join("blobs/sha256").join(digest.digest());
        let meta = std::fs::symlink_metadata(&path).map_err(|e| invalid(artifact, format!("blob {digest}: {e}")))?;
        if !meta.is_file() || meta.len() > limit {
            return Err(invalid(artifact, format!("blob {digest} is not a file of at most {limit} bytes")));
        }
        let bytes = std::fs::read(&path).map_err(|e| invalid(artifact, format!("blob {digest}: {e}")))?;
        if sha256(&bytes) != *digest {
            return Err(invalid(artifact, format!("blob {digest} does not have that digest")));
        }
        Ok(bytes)
    };
    let manifest: ImageManifest = serde_json::from_slice(&blob(pinned, 1 << 20)?)
        .map_err(|e| invalid(artifact, format!("the manifest is not an OCI manifest: {e}")))?;
    let config_type = manifest.config().media_type().to_string();
    match manifest.layers().as_slice() {
        [layer] if config_type == WASM_CONFIG_TYPE && layer.media_type().to_string() == WASM_LAYER_TYPE => {
            blob(layer.digest(), max_bytes)
        }
        _ => Err(invalid(
            artifact,
            format!(
                "it is not a policy: a policy artifact has a {WASM_CONFIG_TYPE} config and one {WASM_LAYER_TYPE} layer"
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_written_artifact_reads_back_and_a_wrong_pin_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let wasm = b"\0asm\x0d\0\x01\0component bytes";
        let pinned = write_wasm_artifact(dir.path(), "policy", wasm).unwrap();
        assert_eq!(read_wasm_artifact(dir.path(), "p", &pinned, 1 << 20).unwrap(), wasm);
        let other = sha256(b"another manifest");
        assert!(read_wasm_artifact(dir.path(), "p", &other, 1 << 20).is_err());
        let err = read_wasm_artifact(dir.path(), "p", &pinned, 4).unwrap_err().to_string();
        assert!(err.contains("at most 4 bytes"), "{err}");
        // A layer whose bytes changed no longer has its digest.
        let layer = sha256(wasm);
        std::fs::write(dir.path().join("blobs/sha256").join(layer.digest()), b"tampered").unwrap();
        let err = read_wasm_artifact(dir.path(), "p", &pinned, 1 << 20).unwrap_err().to_string();
        assert!(err.contains("does not have that digest"), "{err}");
    }
}
