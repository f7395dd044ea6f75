use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::{ImageError, busybox};
use crate::archive::{self, ExtractOptions};
use crate::error::{Error, Result};
use crate::store::Roots;
use crate::util::{create_dir_all, remove_dir_all, tempdir_in, write_atomic};

const REF_NAME: &str = "org.opencontainers.image.ref.name";
const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
const INDEX_TYPE: &str = "application/vnd.oci.image.index.v1+json";
const CONFIG_TYPE: &str = "application/vnd.oci.image.config.v1+json";
pub const LAYER_GZIP_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

#[derive(Debug, Clone)]
pub struct ImageInfo {
    /// For example `busybox:latest`.
    pub reference: String,
    /// The config digest's hex, as podman's image ID.
    pub id: String,
    pub manifest_digest: String,
    pub created: Option<String>,
    pub size: u64,
    pub annotations: BTreeMap<String, String>,
}

/// A layer written to the blob store.
#[derive(Debug, Clone)]
pub struct LayerBlob {
    pub digest: String,
    pub diff_id: String,
    pub size: u64,
    pub media_type: &'static str,
}

pub struct ImageStore {
    layout: PathBuf,
    rootfs_root: PathBuf,
    lock_path: PathBuf,
}

/// `busybox` → `busybox:latest`; a digest or a tag is kept.
pub fn normalize_reference(name: &str) -> String {
    let last = name.rsplit('/').next().unwrap_or(name);
    if last.contains(':') || last.contains('@') { name.to_string() } else { format!("{name}:latest") }
}

/// An image name ckpt can store: not empty, no white space or control characters, no `..`.
pub fn validate_reference(name: &str) -> Result<()> {
    let bad = name.is_empty()
        || name.len() > 255
        || name.chars().any(|c| c.is_whitespace() || c.is_control())
        || name.contains("..");
    if bad {
        return Err(ImageError::Invalid { image: name.to_string(), detail: "is not a valid image name".into() }.into());
    }
    Ok(())
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Accepts only `sha256:<64 hex>`, so that a digest can never become a path trick.
fn digest_hex(digest: &str) -> Option<&str> {
    let hex = digest.strip_prefix("sha256:")?;
    (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())).then_some(hex)
}

struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    written: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl ImageStore {
    pub fn new(roots: &Roots) -> ImageStore {
        let dir = roots.images_dir();
        ImageStore { layout: dir.join("oci"), rootfs_root: dir.join("rootfs"), lock_path: dir.join("images.lock") }
    }

    pub fn layout_dir(&self) -> &Path {
        &self.layout
    }

    fn lock(&self) -> Result<File> {
        create_dir_all(self.lock_path.parent().expect("lock has a parent"))?;
        let file = File::create(&self.lock_path).map_err(Error::io("open lock", &self.lock_path))?;
        file.lock().map_err(Error::io("lock", &self.lock_path))?;
        Ok(file)
    }

    fn init_layout(&self) -> Result<()> {
        create_dir_all(&self.layout.join("blobs/sha256"))?;
        let marker = self.layout.join("oci-layout");
        if !marker.exists() {
            write_atomic(&marker, br#"{"imageLayoutVersion":"1.0.0"}"#, 0o644)?;
        }
        let index = self.layout.join("index.json");
        if !index.exists() {
            let empty = json!({"schemaVersion": 2, "mediaType": INDEX_TYPE, "manifests": []});
            write_atomic(&index, empty.to_string().as_bytes(), 0o644)?;
        }
        Ok(())
    }

    /// The index, checked to be an object with a `manifests` list, so that no later step can
    /// trip over a hand-edited or truncated file.
    fn read_index(&self) -> Result<Value> {
        let path = self.layout.join("index.json");
        let index: Value = match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| Error::Corrupt {
                what: "image index",
                path: path.clone(),
                detail: e.to_string(),
            })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => json!({"schemaVersion": 2, "manifests": []}),
            Err(e) => return Err(Error::io("read", &path)(e)),
        };
        if !index.get("manifests").is_some_and(Value::is_array) {
            return Err(Error::Corrupt { what: "image index", path, detail: "it has no \"manifests\" list".into() });
        }
        Ok(index)
    }

    fn manifests_mut(index: &mut Value) -> &mut Vec<Value> {
        match index.get_mut("manifests") {
            Some(Value::Array(list)) => list,
            _ => unreachable!("read_index checked the manifests list"),
        }
    }

    fn write_index(&self, index: &Value) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(index).expect("json");
        write_atomic(&self.layout.join("index.json"), &bytes, 0o644)
    }

    fn blob_path_in(layout: &Path, digest: &str) -> Result<PathBuf> {
        let hex = digest_hex(digest).ok_or_else(|| ImageError::BadBlob {
            path: layout.display().to_string(),
            digest: digest.to_string(),
            detail: "is not a sha256 digest".into(),
        })?;
        Ok(layout.join("blobs/sha256").join(hex))
    }

    pub fn blob_path(&self, digest: &str) -> Result<PathBuf> {
        Self::blob_path_in(&self.layout, digest)
    }

    pub fn write_blob(&self, bytes: &[u8]) -> Result<String> {
        self.init_layout()?;
        let digest = format!("sha256:{}", sha256_hex(bytes));
        let path = self.blob_path(&digest)?;
        if !path.exists() {
            // Blobs of checkpoint images hold memory pages: private, as everything in the store.
            write_atomic(&path, bytes, 0o600)?;
        }
        Ok(digest)
    }

    pub fn read_blob(&self, digest: &str) -> Result<Vec<u8>> {
        let path = self.blob_path(digest)?;
        fs::read(&path).map_err(Error::io("read blob", &path))
    }

    /// Streams a tar (any compression) into a gzip layer blob, computing digest and diff ID.
    pub fn write_layer_from_tar(&self, tar_stream: impl Read) -> Result<LayerBlob> {
        self.init_layout()?;
        let tmp = self.layout.join(format!("blobs/sha256/.incoming-{}", std::process::id()));
        let file = File::create(&tmp).map_err(Error::io("create", &tmp))?;
        let compressed = HashingWriter { inner: io::BufWriter::new(file), hasher: Sha256::new(), written: 0 };
        let gz = flate2::write::GzEncoder::new(compressed, flate2::Compression::fast());
        let mut uncompressed = HashingWriter { inner: gz, hasher: Sha256::new(), written: 0 };
        let mut reader = tar_stream;
        io::copy(&mut reader, &mut uncompressed).map_err(Error::io("write layer", &tmp))?;
        let diff_id = format!("sha256:{}", hex::encode(uncompressed.hasher.finalize()));
        let mut compressed = uncompressed.inner.finish().map_err(Error::io("write layer", &tmp))?;
        compressed.flush().map_err(Error::io("write layer", &tmp))?;
        let digest = format!("sha256:{}", hex::encode(compressed.hasher.finalize()));
        let size = compressed.written;
        compressed.inner.into_inner().map_err(|e| Error::io("write layer", &tmp)(e.into_error()))?.sync_all().ok();
        fs::rename(&tmp, self.blob_path(&digest)?).map_err(Error::io("store layer", &tmp))?;
        Ok(LayerBlob { digest, diff_id, size, media_type: LAYER_GZIP_TYPE })
    }

    /// Records an image made of `layers` under `reference`, replacing any image of that name.
    pub fn add_image(
        &self,
        reference: &str,
        layers: &[LayerBlob],
        config_extra: Value,
        annotations: BTreeMap<String, String>,
    ) -> Result<ImageInfo> {
        let _lock = self.lock()?;
        self.init_layout()?;
        let created = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
        let mut config = json!({
            "created": created,
            "architecture": oci_arch(),
            "os": "linux",
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|l| &l.diff_id).collect::<Vec<_>>()},
            "history": [{"created": created, "created_by": "ckpt"}],
        });
        if let (Some(obj), Value::Object(extra)) = (config.as_object_mut(), config_extra) {
            obj.extend(extra);
        }
        let config_bytes = serde_json::to_vec(&config).expect("json");
        let config_digest = self.write_blob(&config_bytes)?;
        let mut manifest = json!({
            "schemaVersion": 2,
            "mediaType": MANIFEST_TYPE,
            "config": {"mediaType": CONFIG_TYPE, "digest": config_digest, "size": config_bytes.len()},
            "layers": layers.iter().map(|l| json!({"mediaType": l.media_type, "digest": l.digest, "size": l.size})).collect::<Vec<_>>(),
        });
        let mut annotations = annotations;
        annotations.insert("org.opencontainers.image.created".into(), created);
        manifest["annotations"] = json!(annotations);
        let manifest_bytes = serde_json::to_vec(&manifest).expect("json");
        let manifest_digest = self.write_blob(&manifest_bytes)?;
        let mut index = self.read_index()?;
        let manifests = Self::manifests_mut(&mut index);
        manifests.retain(|m| m["annotations"][REF_NAME].as_str() != Some(reference));
        manifests.push(json!({
            "mediaType": MANIFEST_TYPE,
            "digest": manifest_digest,
            "size": manifest_bytes.len(),
            "annotations": {REF_NAME: reference},
        }));
        self.write_index(&index)?;
        self.info_for(reference, &manifest_digest)
    }

    fn info_for(&self, reference: &str, manifest_digest: &str) -> Result<ImageInfo> {
        let manifest = self.manifest_by_digest(manifest_digest)?;
        let config_digest = manifest["config"]["digest"].as_str().unwrap_or_default().to_string();
        let config: Value = serde_json::from_slice(&self.read_blob(&config_digest)?).unwrap_or(Value::Null);
        let size =
            manifest["layers"].as_array().map(|ls| ls.iter().filter_map(|l| l["size"].as_u64()).sum()).unwrap_or(0);
        let annotations = manifest["annotations"]
            .as_object()
            .map(|o| o.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string()))).collect())
            .unwrap_or_default();
        Ok(ImageInfo {
            reference: reference.to_string(),
            id: digest_hex(&config_digest).unwrap_or_default().to_string(),
            manifest_digest: manifest_digest.to_string(),
            created: config["created"].as_str().map(str::to_string),
            size,
            annotations,
        })
    }

    pub fn manifest_by_digest(&self, digest: &str) -> Result<Value> {
        let bytes = self.read_blob(digest)?;
        serde_json::from_slice(&bytes).map_err(|e| Error::Corrupt {
            what: "image manifest",
            path: self.blob_path(digest).unwrap_or_default(),
            detail: e.to_string(),
        })
    }

    pub fn list(&self) -> Result<Vec<ImageInfo>> {
        let index = self.read_index()?;
        let mut out = Vec::new();
        for m in index["manifests"].as_array().into_iter().flatten() {
            if let (Some(reference), Some(digest)) = (m["annotations"][REF_NAME].as_str(), m["digest"].as_str()) {
                out.push(self.info_for(reference, digest)?);
            }
        }
        Ok(out)
    }

    /// Finds an image by name (with or without tag) or by ID prefix. The built-in busybox image
    /// is assembled on first use.
    pub fn resolve(&self, name: &str) -> Result<ImageInfo> {
        let reference = normalize_reference(name);
        let images = self.list()?;
        if let Some(found) = images.iter().find(|i| i.reference == reference || i.reference == name) {
            return Ok(found.clone());
        }
        let id = name.strip_prefix("sha256:").unwrap_or(name);
        if id.len() >= 4
            && id.bytes().all(|b| b.is_ascii_hexdigit())
            && let Some(found) = images.iter().find(|i| i.id.starts_with(id))
        {
            return Ok(found.clone());
        }
        if reference == busybox::BUILTIN_BUSYBOX || reference == format!("localhost/{}", busybox::BUILTIN_BUSYBOX) {
            let layer_bytes = busybox::build_layer()?;
            let layer = self.write_layer_from_tar(flate2::read::GzDecoder::new(&layer_bytes[..]))?;
            let config = json!({"config": {"Cmd": ["sh"], "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]}});
            return self.add_image(busybox::BUILTIN_BUSYBOX, &[layer], config, BTreeMap::new());
        }
        Err(Error::NoSuchImage(name.to_string()))
    }

    /// The default command of an image's config.
    pub fn default_command(&self, info: &ImageInfo) -> Result<Vec<String>> {
        let config = self.config(info)?;
        let strings = |v: &Value| -> Vec<String> {
            v.as_array().map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_string)).collect()).unwrap_or_default()
        };
        let mut command = strings(&config["config"]["Entrypoint"]);
        command.extend(strings(&config["config"]["Cmd"]));
        Ok(command)
    }

    pub fn config(&self, info: &ImageInfo) -> Result<Value> {
        let manifest = self.manifest_by_digest(&info.manifest_digest)?;
        let digest = manifest["config"]["digest"].as_str().unwrap_or_default();
        serde_json::from_slice(&self.read_blob(digest)?).map_err(|e| Error::Corrupt {
            what: "image config",
            path: self.blob_path(digest).unwrap_or_default(),
            detail: e.to_string(),
        })
    }

    /// The unpacked root filesystem of an image, the lower layer of its containers' overlays.
    pub fn rootfs(&self, info: &ImageInfo) -> Result<PathBuf> {
        let dir = self.rootfs_root.join(&info.id);
        if dir.exists() {
            return Ok(dir);
        }
        let _lock = self.lock()?;
        if dir.exists() {
            return Ok(dir);
        }
        let staging = self.rootfs_root.join(format!(".unpack-{}-{}", info.id, std::process::id()));
        remove_dir_all(&staging)?;
        crate::util::create_dir_with_mode(&staging, 0o755)?;
        let manifest = self.manifest_by_digest(&info.manifest_digest)?;
        let options = ExtractOptions::image_layer();
        for layer in manifest["layers"].as_array().into_iter().flatten() {
            let digest = layer["digest"].as_str().unwrap_or_default();
            let path = self.blob_path(digest)?;
            let reader = archive::open_decompressed(&path)?;
            if let Err(e) = archive::extract(reader, &staging, &path.display().to_string(), &options) {
                remove_dir_all(&staging)?;
                return Err(e.into());
            }
        }
        fs::rename(&staging, &dir).map_err(Error::io("store rootfs", &dir))?;
        Ok(dir)
    }

    /// `ckpt image import`: a root filesystem tarball becomes a one-layer image.
    pub fn import_rootfs(&self, tarball: &Path, name: &str) -> Result<ImageInfo> {
        let reader = archive::open_decompressed(tarball)?;
        // Validate before storing: the layer must at least be a readable tar archive.
        let layer = self.write_layer_from_tar(reader)?;
        let check = archive::open_decompressed(&self.blob_path(&layer.digest)?)?;
        let mut entries = tar::Archive::new(check);
        let count =
            entries.entries().and_then(|es| es.collect::<io::Result<Vec<_>>>().map(|v| v.len())).map_err(|e| {
                ImageError::Invalid { image: tarball.display().to_string(), detail: format!("not a tar archive: {e}") }
            })?;
        if count == 0 {
            return Err(ImageError::Invalid {
                image: tarball.display().to_string(),
                detail: "the tarball is empty".into(),
            }
            .into());
        }
        self.add_image(&normalize_reference(name), &[layer], json!({}), BTreeMap::new())
    }

    /// `ckpt image load`: copies the images of an OCI layout directory or OCI archive.
    pub fn load(&self, source: &Path, name: Option<&str>) -> Result<Vec<String>> {
        let staging;
        let layout = if source.join("oci-layout").is_file() {
            source.to_path_buf()
        } else if source.is_file() {
            create_dir_all(&self.rootfs_root)?;
            staging = tempdir_in(&self.rootfs_root, "load")?;
            let reader = archive::open_decompressed(source)?;
            // Links are kept as data and never followed: blobs are opened beneath the layout.
            let options = ExtractOptions { symlinks: archive::Symlinks::Any, ..ExtractOptions::default() };
            archive::extract(reader, &staging.path, &source.display().to_string(), &options)?;
            if !staging.path.join("oci-layout").is_file() {
                return Err(ImageError::NotOci(source.display().to_string()).into());
            }
            staging.path.clone()
        } else {
            return Err(ImageError::NotOci(source.display().to_string()).into());
        };
        let index: Value = serde_json::from_slice(
            &fs::read(layout.join("index.json")).map_err(Error::io("read", layout.join("index.json")))?,
        )
        .map_err(|e| ImageError::Invalid { image: source.display().to_string(), detail: format!("index.json: {e}") })?;
        let mut loaded = Vec::new();
        for m in index["manifests"].as_array().into_iter().flatten() {
            let digest = m["digest"].as_str().unwrap_or_default();
            let reference = match (name, m["annotations"][REF_NAME].as_str()) {
                (Some(n), _) => normalize_reference(n),
                (None, Some(r)) if r.contains(':') || r.contains('/') => normalize_reference(r),
                (None, Some(r)) => normalize_reference(&format!("localhost/{r}")),
                (None, None) => {
                    return Err(ImageError::Invalid {
                        image: source.display().to_string(),
                        detail: "the manifest has no name (org.opencontainers.image.ref.name); give one".into(),
                    }
                    .into());
                }
            };
            let manifest_bytes = self.copy_verified_blob(&layout, digest)?;
            let manifest: Value = serde_json::from_slice(&manifest_bytes)
                .map_err(|e| ImageError::Invalid { image: reference.clone(), detail: format!("manifest: {e}") })?;
            if manifest["mediaType"].as_str().is_some_and(|t| t != MANIFEST_TYPE) {
                return Err(ImageError::Invalid {
                    image: reference,
                    detail: "only single-platform OCI image manifests can be loaded".into(),
                }
                .into());
            }
            self.copy_verified_blob(&layout, manifest["config"]["digest"].as_str().unwrap_or_default())?;
            for layer in manifest["layers"].as_array().into_iter().flatten() {
                self.copy_verified_blob(&layout, layer["digest"].as_str().unwrap_or_default())?;
            }
            let _lock = self.lock()?;
            let mut ours = self.read_index()?;
            let list = Self::manifests_mut(&mut ours);
            list.retain(|e| e["annotations"][REF_NAME].as_str() != Some(reference.as_str()));
            list.push(json!({"mediaType": MANIFEST_TYPE, "digest": digest, "size": manifest_bytes.len(), "annotations": {REF_NAME: reference}}));
            self.write_index(&ours)?;
            loaded.push(reference);
        }
        Ok(loaded)
    }

    fn copy_verified_blob(&self, layout: &Path, digest: &str) -> Result<Vec<u8>> {
        self.init_layout()?;
        let source = Self::blob_path_in(layout, digest)?;
        let target = self.blob_path(digest)?;
        // Beneath the layout with no link followed: a blob linked to a host file is refused.
        let rel = source.strip_prefix(layout).unwrap_or(&source);
        let blob = crate::safefs::Beneath::open(layout)
            .and_then(|beneath| beneath.open_file(rel))
            .map_err(Error::io("open blob", &source))?;
        let mut reader = BufReader::new(blob);
        let tmp = target.with_extension(format!("incoming-{}", std::process::id()));
        let mut writer = HashingWriter {
            inner: File::create(&tmp).map_err(Error::io("create", &tmp))?,
            hasher: Sha256::new(),
            written: 0,
        };
        io::copy(&mut reader, &mut writer).map_err(Error::io("copy blob", &source))?;
        let actual = format!("sha256:{}", hex::encode(writer.hasher.finalize()));
        if actual != digest {
            let _ = fs::remove_file(&tmp);
            return Err(ImageError::BadBlob {
                path: layout.display().to_string(),
                digest: digest.into(),
                detail: format!("has content with digest {actual}"),
            }
            .into());
        }
        fs::rename(&tmp, &target).map_err(Error::io("store blob", &target))?;
        if writer.written < (4 << 20) { fs::read(&target).map_err(Error::io("read", &target)) } else { Ok(Vec::new()) }
    }

    /// `ckpt image save`: writes one image as an OCI archive (a tar of an image layout).
    pub fn save(&self, name: &str, output: &Path) -> Result<()> {
        let info = self.resolve(name)?;
        let manifest = self.manifest_by_digest(&info.manifest_digest)?;
        let mut digests =
            vec![info.manifest_digest.clone(), manifest["config"]["digest"].as_str().unwrap_or_default().to_string()];
        digests.extend(
            manifest["layers"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|l| l["digest"].as_str().map(str::to_string)),
        );
        let manifest_size = self.read_blob(&info.manifest_digest)?.len();
        let index = json!({"schemaVersion": 2, "mediaType": INDEX_TYPE, "manifests": [{
            "mediaType": MANIFEST_TYPE, "digest": info.manifest_digest, "size": manifest_size,
            "annotations": {REF_NAME: info.reference}}]});
        crate::archive::publish::publish_file(output, |file| {
            let mut builder = tar::Builder::new(file);
            let mut add = |path: &str, data: &[u8]| -> io::Result<()> {
                let mut h = tar::Header::new_gnu();
                h.set_size(data.len() as u64);
                h.set_mode(0o644);
                h.set_mtime(0);
                h.set_entry_type(tar::EntryType::Regular);
                builder.append_data(&mut h, path, data)
            };
            add("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
            add("index.json", &serde_json::to_vec(&index).expect("json"))?;
            for digest in &digests {
                let path = self.blob_path(digest).map_err(io::Error::other)?;
                let mut file = File::open(&path)?;
                builder.append_file(format!("blobs/sha256/{}", digest_hex(digest).unwrap_or_default()), &mut file)?;
            }
            builder.into_inner()?.flush()
        })
    }

    pub fn remove(&self, name: &str) -> Result<ImageInfo> {
        let info = self.resolve(name)?;
        let _lock = self.lock()?;
        let mut index = self.read_index()?;
        Self::manifests_mut(&mut index)
            .retain(|m| m["annotations"][REF_NAME].as_str() != Some(info.reference.as_str()));
        self.write_index(&index)?;
        // Blobs can be shared with other images; the unpacked rootfs goes when no name uses it.
        if !self.list()?.iter().any(|i| i.id == info.id) {
            remove_dir_all(&self.rootfs_root.join(&info.id))?;
        }
        Ok(info)
    }
}

pub use crate::hostinfo::oci_arch;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_get_latest_unless_they_name_a_tag_or_digest() {
        assert_eq!(normalize_reference("busybox"), "busybox:latest");
        assert_eq!(normalize_reference("localhost:5000/web"), "localhost:5000/web:latest");
        assert_eq!(normalize_reference("web:v1"), "web:v1");
        assert_eq!(normalize_reference("web@sha256:abc"), "web@sha256:abc");
    }

    #[test]
    fn image_names_with_spaces_controls_or_dotdot_are_refused() {
        for bad in ["", "a b", "a\u{1b}b", "../etc", &"x".repeat(256)] {
            assert!(validate_reference(bad).is_err(), "{bad:?}");
        }
        validate_reference("localhost/checkpoints/web:2026-11-28").unwrap();
    }

    #[test]
    fn a_corrupt_index_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::new(&Roots::new(dir.path().join("root"), dir.path().join("run")));
        std::fs::create_dir_all(store.layout_dir()).unwrap();
        for text in ["[]", "{\"manifests\": 3}", "{}", "not json"] {
            std::fs::write(store.layout_dir().join("index.json"), text).unwrap();
            let err = store.list().unwrap_err().to_string();
            assert!(err.contains("image index"), "{text}: {err}");
        }
    }

    #[test]
    fn blobs_are_private_and_addressed_by_their_digest() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::new(&Roots::new(dir.path().join("root"), dir.path().join("run")));
        store.init_layout().unwrap();
        let digest = store.write_blob(b"memory pages").unwrap();
        assert_eq!(digest, format!("sha256:{}", sha256_hex(b"memory pages")));
        let path = store.blob_path(&digest).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(store.read_blob(&digest).unwrap(), b"memory pages");
        assert!(store.blob_path("md5:abc").is_err());
    }
}
