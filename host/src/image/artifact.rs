//! Policies as OCI artifacts, as Kubewarden publishes them: one manifest whose config has the
//! media type `application/vnd.wasm.config.v0+json` and whose one layer is the component,
//! `application/wasm`.

use std::path::Path;

use super::ImageError;
use super::layout::{canonical_json, digest_of, empty_index, index_entry, layout_marker};
use oci_spec::image::{Descriptor, Digest, ImageManifest, ImageManifestBuilder, MediaType, SCHEMA_VERSION};

pub const WASM_CONFIG_TYPE: &str = "application/vnd.wasm.config.v0+json";
pub const WASM_LAYER_TYPE: &str = "application/wasm";

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
        let digest = digest_of(bytes);
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
    let manifest_bytes = canonical_json(&manifest);
    let manifest_digest = put(&manifest_bytes)?;
    let mut index = empty_index();
    index.set_manifests(vec![index_entry(manifest_digest.clone(), manifest_bytes.len() as u64, name)]);
    std::fs::write(layout.join("index.json"), canonical_json(&index)).map_err(io)?;
    std::fs::write(layout.join("oci-layout"), canonical_json(&layout_marker())).map_err(io)?;
    Ok(manifest_digest)
}

/// Reads the component of the artifact in the layout at `layout`, checking every digest
/// against the content and the manifest against `pinned`; returns the manifest's bytes and the
/// component's, which [`verify_wasm_artifact`] checks again wherever they are kept.
pub fn read_wasm_artifact(
    layout: &Path,
    artifact: &str,
    pinned: &Digest,
    max_bytes: u64,
) -> Result<(Vec<u8>, Vec<u8>), ImageError> {
    let blob = |digest: &Digest, limit: u64| -> Result<Vec<u8>, ImageError> {
        let path = layout.join("blobs/sha256").join(digest.digest());
        let meta = std::fs::symlink_metadata(&path).map_err(|e| invalid(artifact, format!("blob {digest}: {e}")))?;
        if !meta.is_file() || meta.len() > limit {
            return Err(invalid(artifact, format!("blob {digest} is not a file of at most {limit} bytes")));
        }
        let bytes = std::fs::read(&path).map_err(|e| invalid(artifact, format!("blob {digest}: {e}")))?;
        if digest_of(&bytes) != *digest {
            return Err(invalid(artifact, format!("blob {digest} does not have that digest")));
        }
        Ok(bytes)
    };
    let manifest_bytes = blob(pinned, 1 << 20)?;
    let wasm = blob(&policy_layer(artifact, &manifest_bytes)?, max_bytes)?;
    Ok((manifest_bytes, wasm))
}

/// Checks a manifest and component kept apart from their layout (the policy cache) against the
/// pin, as [`read_wasm_artifact`] checked them: whoever could write where they are kept cannot
/// make another component pass for the pinned one.
pub fn verify_wasm_artifact(artifact: &str, pinned: &Digest, manifest: &[u8], wasm: &[u8]) -> Result<(), ImageError> {
    if digest_of(manifest) != *pinned {
        return Err(invalid(artifact, format!("the kept manifest does not have the pinned digest {pinned}")));
    }
    let layer = policy_layer(artifact, manifest)?;
    if digest_of(wasm) != layer {
        return Err(invalid(artifact, format!("the kept component does not have its layer's digest {layer}")));
    }
    Ok(())
}

/// The digest of the one wasm layer of a policy artifact's manifest.
fn policy_layer(artifact: &str, manifest_bytes: &[u8]) -> Result<Digest, ImageError> {
    let manifest: ImageManifest = serde_json::from_slice(manifest_bytes)
        .map_err(|e| invalid(artifact, format!("the manifest is not an OCI manifest: {e}")))?;
    let config_type = manifest.config().media_type().to_string();
    match manifest.layers().as_slice() {
        [layer] if config_type == WASM_CONFIG_TYPE && layer.media_type().to_string() == WASM_LAYER_TYPE => {
            Ok(layer.digest().clone())
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
        let (manifest, read) = read_wasm_artifact(dir.path(), "p", &pinned, 1 << 20).unwrap();
        assert_eq!(read, wasm);
        verify_wasm_artifact("p", &pinned, &manifest, wasm).unwrap();
        let err = verify_wasm_artifact("p", &pinned, &manifest, b"\0asm planted").unwrap_err().to_string();
        assert!(err.contains("does not have its layer's digest"), "{err}");
        let err = verify_wasm_artifact("p", &digest_of(b"x"), &manifest, wasm).unwrap_err().to_string();
        assert!(err.contains("pinned digest"), "{err}");
        let other = digest_of(b"another manifest");
        assert!(read_wasm_artifact(dir.path(), "p", &other, 1 << 20).is_err());
        let err = read_wasm_artifact(dir.path(), "p", &pinned, 4).unwrap_err().to_string();
        assert!(err.contains("at most 4 bytes"), "{err}");
        // A layer whose bytes changed no longer has its digest.
        let layer = digest_of(wasm);
        std::fs::write(dir.path().join("blobs/sha256").join(layer.digest()), b"tampered").unwrap();
        let err = read_wasm_artifact(dir.path(), "p", &pinned, 1 << 20).unwrap_err().to_string();
        assert!(err.contains("does not have that digest"), "{err}");
    }
}
