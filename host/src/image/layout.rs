use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use oci_spec::image::{
    Config, Descriptor, Digest, DigestAlgorithm, HistoryBuilder, ImageConfiguration, ImageConfigurationBuilder,
    ImageIndex, ImageIndexBuilder, ImageManifest, ImageManifestBuilder, MediaType, OciLayout, OciLayoutBuilder,
    PlatformBuilder, RootFsBuilder, SCHEMA_VERSION, Sha256Digest,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::{Digest as _, Sha256};

use super::{ImageError, busybox};
use crate::archive::{self, ExtractOptions};
use crate::base_error::BaseError;

type Result<T, E = ImageError> = std::result::Result<T, E>;
use crate::hostinfo::oci_arch;
use crate::store::Roots;
use crate::util::{HashingWriter, create_dir_all, remove_dir_all, tempdir_in, write_atomic};

const REF_NAME: &str = "org.opencontainers.image.ref.name";
const CREATED: &str = "org.opencontainers.image.created";
const LAYOUT_VERSION: &str = "1.0.0";
/// On an index entry: why a restore under `[signatures] require` may trust the image
/// (`signed-by KEYRING` for a verified pull, `made-here` for a checkpoint of this host). Only
/// ckpt writes the index; a pull or load replaces the entry, and with it the mark.
const TRUST: &str = "io.ckpt.trust";

#[derive(Debug, Clone)]
pub struct ImageInfo {
    /// For example `busybox:latest`.
    pub reference: String,
    /// The config digest's hex, as podman's image ID.
    pub id: String,
    /// What the name points at, and a registry names it by: the image's manifest, or an index
    /// over it (a checkpoint image's, which carries its annotations for containerd).
    pub manifest_digest: Digest,
    /// The image manifest itself, whose config and layers make the image.
    pub image_manifest: Digest,
    pub created: Option<String>,
    pub size: u64,
    pub annotations: BTreeMap<String, String>,
    /// Why it may be trusted (see [`ImageStore::set_trust`]); `None`: nobody vouched for it.
    pub trust: Option<String>,
}

/// A layer written to the blob store.
#[derive(Debug, Clone)]
pub struct LayerBlob {
    pub digest: Digest,
    pub diff_id: Digest,
    pub size: u64,
    pub media_type: MediaType,
}

impl LayerBlob {
    fn descriptor(&self) -> Descriptor {
        Descriptor::new(self.media_type.clone(), self.size, self.digest.clone())
    }
}

/// The media type of a sealed checkpoint image's one layer: an age file whose plaintext is a
/// zstd checkpoint archive. Not a tar an engine could unpack, so not a `tar` layer type.
pub const SEALED_LAYER_TYPE: &str = "application/vnd.ckpt.checkpoint.layer.v1.tar+zstd+age";

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
        return Err(ImageError::Invalid { image: name.to_string(), detail: "is not a valid image name".into() });
    }
    Ok(())
}

/// The digest of bytes held in memory.
pub(super) fn digest_of(bytes: &[u8]) -> Digest {
    sha256_digest(Sha256::new_with_prefix(bytes))
}

fn sha256_digest(hasher: Sha256) -> Digest {
    let hex = hex::encode(hasher.finalize());
    Sha256Digest::from_str(&hex).expect("a sha256 hash is 64 lowercase hex digits").into()
}

/// `name` less its tag and digest: the repository (`HOST/PATH` of `HOST/PATH:TAG@sha256:D`).
pub fn repository_of(name: &str) -> &str {
    let named = name.split_once('@').map_or(name, |(named, _)| named);
    named.rsplit_once(':').filter(|(_, tag)| !tag.contains('/')).map_or(named, |(repository, _)| repository)
}

/// Only sha256 digests name blobs here; oci-spec has already checked their hex, so a digest can
/// never become a path trick.
fn sha256_hex(digest: &Digest) -> Option<&str> {
    (*digest.algorithm() == DigestAlgorithm::Sha256).then(|| digest.digest())
}

/// The image's name, from the index entry's annotations.
fn ref_name(entry: &Descriptor) -> Option<&str> {
    entry.annotations().as_ref()?.get(REF_NAME).map(String::as_str)
}

fn entries_except(index: &ImageIndex, reference: &str) -> Vec<Descriptor> {
    index.manifests().iter().filter(|entry| ref_name(entry) != Some(reference)).cloned().collect()
}

pub(super) fn index_entry(manifest: Digest, size: u64, reference: &str) -> Descriptor {
    named_entry(MediaType::ImageManifest, manifest, size, reference)
}

fn named_entry(media_type: MediaType, manifest: Digest, size: u64, reference: &str) -> Descriptor {
    let mut entry = Descriptor::new(media_type, size, manifest);
    entry.set_annotations(Some(HashMap::from([(REF_NAME.to_string(), reference.to_string())])));
    entry
}

/// oci-spec keeps annotations in hash maps; going through `serde_json::Value` sorts every object's
/// keys, so the same image always has the same bytes and the same digest.
pub(super) fn canonical_json(document: &impl Serialize) -> Vec<u8> {
    let value = serde_json::to_value(document).expect("OCI documents serialise");
    serde_json::to_vec(&value).expect("a JSON value serialises")
}

pub(super) fn empty_index() -> ImageIndex {
    let mut index = ImageIndex::default();
    index.set_media_type(Some(MediaType::ImageIndex));
    index
}

pub(super) fn layout_marker() -> OciLayout {
    OciLayoutBuilder::default().image_layout_version(LAYOUT_VERSION).build().expect("the version is set")
}

impl ImageStore {
    pub fn new(roots: &Roots) -> ImageStore {
        let dir = roots.images_dir();
        ImageStore { layout: dir.join("oci"), rootfs_root: dir.join("rootfs"), lock_path: dir.join("images.lock") }
    }

    /// The OCI image layout directory, which skopeo reads and writes as `oci:<dir>:<name>`.
    pub fn layout(&self) -> &Path {
        &self.layout
    }

    fn lock(&self) -> Result<File> {
        create_dir_all(self.lock_path.parent().expect("lock has a parent"))?;
        let file = File::create(&self.lock_path).map_err(BaseError::io("open lock", &self.lock_path))?;
        file.lock().map_err(BaseError::io("lock", &self.lock_path))?;
        Ok(file)
    }

    fn init_layout(&self) -> Result<()> {
        create_dir_all(&self.layout.join("blobs/sha256"))?;
        let marker = self.layout.join("oci-layout");
        if !marker.exists() {
            write_atomic(&marker, &canonical_json(&layout_marker()), 0o644)?;
        }
        let index = self.layout.join("index.json");
        if !index.exists() {
            write_atomic(&index, &canonical_json(&empty_index()), 0o644)?;
        }
        Ok(())
    }

    /// The index, parsed as an OCI image index, so that no later step can trip over a hand-edited
    /// or truncated file.
    fn read_index(&self) -> Result<ImageIndex> {
        let path = self.layout.join("index.json");
        match fs::read(&path) {
            Ok(bytes) => parse_document("image index", &path, &bytes),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(empty_index()),
            Err(e) => Err(BaseError::io("read", &path)(e).into()),
        }
    }

    fn write_index(&self, index: &ImageIndex) -> Result<()> {
        write_atomic(&self.layout.join("index.json"), &canonical_json(index), 0o644).map_err(ImageError::from)
    }

    /// Names `reference` in the index, replacing the image that had that name before.
    fn tag(&self, reference: &str, (media_type, manifest, manifest_size): (MediaType, Digest, u64)) -> Result<()> {
        let mut index = self.read_index()?;
        let mut entries = entries_except(&index, reference);
        entries.push(named_entry(media_type, manifest, manifest_size, reference));
        index.set_manifests(entries);
        self.write_index(&index)
    }

    /// Marks the image `reference` as trusted, and why.
    pub fn set_trust(&self, reference: &str, why: &str) -> Result<()> {
        let _lock = self.lock()?;
        let mut index = self.read_index()?;
        let mut entries = index.manifests().clone();
        let entry = entries
            .iter_mut()
            .find(|entry| ref_name(entry) == Some(reference))
            .ok_or_else(|| ImageError::NoSuchImage(reference.to_string()))?;
        let mut annotations = entry.annotations().clone().unwrap_or_default();
        annotations.insert(TRUST.to_string(), why.to_string());
        entry.set_annotations(Some(annotations));
        index.set_manifests(entries);
        self.write_index(&index)
    }

    fn blob_path_in(layout: &Path, digest: &Digest) -> Result<PathBuf> {
        let hex = sha256_hex(digest).ok_or_else(|| ImageError::BadBlob {
            path: layout.display().to_string(),
            digest: digest.to_string(),
            detail: "is not a sha256 digest".into(),
        })?;
        Ok(layout.join("blobs/sha256").join(hex))
    }

    pub fn blob_path(&self, digest: &Digest) -> Result<PathBuf> {
        Self::blob_path_in(&self.layout, digest)
    }

    pub fn write_blob(&self, bytes: &[u8]) -> Result<Digest> {
        self.init_layout()?;
        let digest = digest_of(bytes);
        let path = self.blob_path(&digest)?;
        if !path.exists() {
            // Blobs of checkpoint images hold memory pages: private, as everything in the store.
            write_atomic(&path, bytes, 0o600)?;
        }
        Ok(digest)
    }

    pub fn read_blob(&self, digest: &Digest) -> Result<Vec<u8>> {
        let path = self.blob_path(digest)?;
        Ok(fs::read(&path).map_err(BaseError::io("read blob", &path))?)
    }

    fn read_document<T: DeserializeOwned>(&self, what: &'static str, digest: &Digest) -> Result<T> {
        parse_document(what, &self.blob_path(digest)?, &self.read_blob(digest)?)
    }

    /// Streams a tar (any compression) into a gzip layer blob, computing digest and diff ID.
    pub fn write_layer_from_tar(&self, tar_stream: impl Read) -> Result<LayerBlob> {
        self.init_layout()?;
        let tmp = self.layout.join(format!("blobs/sha256/.incoming-{}", std::process::id()));
        let file = File::create(&tmp).map_err(BaseError::io("create", &tmp))?;
        let compressed = HashingWriter::new(io::BufWriter::new(file), Sha256::new());
        let gz = flate2::write::GzEncoder::new(compressed, flate2::Compression::fast());
        let mut uncompressed = HashingWriter::new(gz, Sha256::new());
        let mut reader = tar_stream;
        io::copy(&mut reader, &mut uncompressed).map_err(BaseError::io("write layer", &tmp))?;
        let diff_id = sha256_digest(uncompressed.hasher);
        let mut compressed = uncompressed.inner.finish().map_err(BaseError::io("write layer", &tmp))?;
        compressed.flush().map_err(BaseError::io("write layer", &tmp))?;
        let digest = sha256_digest(compressed.hasher);
        let size = compressed.written;
        compressed.inner.into_inner().map_err(|e| BaseError::io("write layer", &tmp)(e.into_error()))?.sync_all().ok();
        fs::rename(&tmp, self.blob_path(&digest)?).map_err(BaseError::io("store layer", &tmp))?;
        Ok(LayerBlob { digest, diff_id, size, media_type: MediaType::ImageLayerGzip })
    }

    /// Stores the file at `path` as it is, a layer of `media_type`: its digest is its diff ID,
    /// as for any layer that is not a tar.
    pub fn write_layer_from_file(&self, path: &Path, media_type: &str) -> Result<LayerBlob> {
        self.init_layout()?;
        let tmp = self.layout.join(format!("blobs/sha256/.incoming-{}", std::process::id()));
        let mut source = File::open(path).map_err(BaseError::io("open", path))?;
        let mut copied = HashingWriter::new(File::create(&tmp).map_err(BaseError::io("create", &tmp))?, Sha256::new());
        let stored = io::copy(&mut source, &mut copied).and_then(|_| copied.inner.sync_all());
        if let Err(e) = stored {
            let _ = fs::remove_file(&tmp);
            return Err(BaseError::io("write layer", &tmp)(e).into());
        }
        let digest = sha256_digest(copied.hasher);
        fs::rename(&tmp, self.blob_path(&digest)?).map_err(BaseError::io("store layer", &tmp))?;
        let media_type = MediaType::Other(media_type.to_string());
        Ok(LayerBlob { diff_id: digest.clone(), digest, size: copied.written, media_type })
    }

    /// Records an image made of `layers` under `reference`, replacing any image of that name.
    pub fn add_image(
        &self,
        reference: &str,
        layers: &[LayerBlob],
        run_config: Option<Config>,
        annotations: BTreeMap<String, String>,
    ) -> Result<ImageInfo> {
        let _lock = self.lock()?;
        self.init_layout()?;
        let created = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
        let rootfs = RootFsBuilder::default()
            .diff_ids(layers.iter().map(|l| l.diff_id.to_string()).collect::<Vec<_>>())
            .build()
            .map_err(build_error("image rootfs"))?;
        let history = HistoryBuilder::default()
            .created(&created)
            .created_by("ckpt")
            .build()
            .map_err(build_error("image history"))?;
        let mut config = ImageConfigurationBuilder::default()
            .created(&created)
            .architecture(oci_arch())
            .os("linux")
            .rootfs(rootfs)
            .history(vec![history])
            .build()
            .map_err(build_error("image config"))?;
        config.set_config(Some(run_config.unwrap_or_default()));
        let config_bytes = canonical_json(&config);
        let config_digest = self.write_blob(&config_bytes)?;
        let mut annotations: HashMap<String, String> = annotations.into_iter().collect();
        annotations.insert(CREATED.into(), created);
        let manifest = ImageManifestBuilder::default()
            .schema_version(SCHEMA_VERSION)
            .media_type(MediaType::ImageManifest)
            .config(Descriptor::new(MediaType::ImageConfig, config_bytes.len() as u64, config_digest))
            .layers(layers.iter().map(LayerBlob::descriptor).collect::<Vec<_>>())
            .annotations(annotations.clone())
            .build()
            .map_err(build_error("image manifest"))?;
        let manifest_bytes = canonical_json(&manifest);
        let manifest_digest = self.write_blob(&manifest_bytes)?;
        let mut named = (MediaType::ImageManifest, manifest_digest, manifest_bytes.len() as u64);
        // A checkpoint image is named through an index that carries its annotations too: where
        // containerd looks for them (CRI-O and podman read the manifest's).
        if annotations.keys().any(|key| key.starts_with(crate::metadata::CRIU_ANNOTATION_PREFIX)) {
            let platform = PlatformBuilder::default()
                .architecture(oci_arch())
                .os("linux")
                .build()
                .map_err(build_error("image platform"))?;
            let mut entry = Descriptor::new(named.0, named.2, named.1);
            entry.set_platform(Some(platform));
            let index = ImageIndexBuilder::default()
                .schema_version(SCHEMA_VERSION)
                .media_type(MediaType::ImageIndex)
                .manifests(vec![entry])
                .annotations(annotations)
                .build()
                .map_err(build_error("image index"))?;
            let index_bytes = canonical_json(&index);
            named = (MediaType::ImageIndex, self.write_blob(&index_bytes)?, index_bytes.len() as u64);
        }
        let top = named.1.clone();
        self.tag(reference, named)?;
        self.info_for(reference, &top)
    }

    /// The image manifest `digest` names: itself, or, when it is an index, the one manifest in
    /// it for this platform.
    fn image_manifest(&self, digest: &Digest) -> Result<(Digest, ImageManifest)> {
        let path = self.blob_path(digest)?;
        let bytes = fs::read(&path).map_err(BaseError::io("read", &path))?;
        let document: serde_json::Value = parse_document("image manifest", &path, &bytes)?;
        if document.get("manifests").is_none() {
            return Ok((digest.clone(), parse_document("image manifest", &path, &bytes)?));
        }
        let index: ImageIndex = parse_document("image index", &path, &bytes)?;
        let ours = |entry: &&Descriptor| {
            entry
                .platform()
                .as_ref()
                .is_none_or(|p| p.os().to_string() == "linux" && p.architecture().to_string() == oci_arch())
        };
        let entry = index.manifests().iter().find(ours).ok_or_else(|| ImageError::Invalid {
            image: digest.to_string(),
            detail: format!("its index has no image for linux/{}", oci_arch()),
        })?;
        Ok((entry.digest().clone(), self.manifest_by_digest(entry.digest())?))
    }

    fn info_for(&self, reference: &str, manifest_digest: &Digest) -> Result<ImageInfo> {
        let (image_manifest, manifest) = self.image_manifest(manifest_digest)?;
        let config: ImageConfiguration = self.read_document("image config", manifest.config().digest())?;
        Ok(ImageInfo {
            reference: reference.to_string(),
            id: sha256_hex(manifest.config().digest()).unwrap_or_default().to_string(),
            manifest_digest: manifest_digest.clone(),
            image_manifest,
            created: config.created().clone(),
            size: manifest.layers().iter().map(Descriptor::size).sum(),
            annotations: manifest.annotations().clone().unwrap_or_default().into_iter().collect(),
            trust: None,
        })
    }

    pub fn manifest_by_digest(&self, digest: &Digest) -> Result<ImageManifest> {
        self.read_document("image manifest", digest)
    }

    pub fn list(&self) -> Result<Vec<ImageInfo>> {
        let index = self.read_index()?;
        index
            .manifests()
            .iter()
            .filter_map(|entry| Some((ref_name(entry)?, entry)))
            .map(|(reference, entry)| {
                let mut info = self.info_for(reference, entry.digest())?;
                info.trust = entry.annotations().as_ref().and_then(|a| a.get(TRUST)).cloned();
                Ok(info)
            })
            .collect()
    }

    /// Finds an image by name (with or without tag) or by ID prefix. The built-in busybox image
    /// is assembled on first use.
    pub fn resolve(&self, name: &str) -> Result<ImageInfo> {
        let reference = normalize_reference(name);
        let images = self.list()?;
        if let Some(found) = images.iter().find(|i| i.reference == reference || i.reference == name) {
            return Ok(found.clone());
        }
        // `REPOSITORY[:TAG]@sha256:DIGEST`, as podman takes it (and Kubernetes manifests pin
        // images): the repository's image with that manifest digest, whatever its tag.
        if let Some((_, hex)) = name.rsplit_once("@sha256:") {
            let repository = repository_of(name);
            let pinned = format!("sha256:{hex}");
            let found = images.iter().find(|i| {
                i.manifest_digest.to_string() == pinned
                    && i.reference.strip_prefix(repository).is_some_and(|tag| tag.starts_with(':'))
            });
            return found.cloned().ok_or_else(|| ImageError::NoSuchImage(name.to_string()));
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
            let mut run_config = Config::default();
            run_config.set_cmd(Some(vec!["sh".into()]));
            run_config.set_env(Some(vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()]));
            return self.add_image(busybox::BUILTIN_BUSYBOX, &[layer], Some(run_config), BTreeMap::new());
        }
        Err(ImageError::NoSuchImage(name.to_string()))
    }

    /// The default command of an image's config: its entrypoint, then its command.
    pub fn default_command(&self, info: &ImageInfo) -> Result<Vec<String>> {
        let config = self.config(info)?;
        let Some(run) = config.config() else { return Ok(Vec::new()) };
        Ok(run.entrypoint().iter().chain(run.cmd()).flatten().cloned().collect())
    }

    pub fn config(&self, info: &ImageInfo) -> Result<ImageConfiguration> {
        let manifest = self.manifest_by_digest(&info.image_manifest)?;
        self.read_document("image config", manifest.config().digest())
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
        let manifest = self.manifest_by_digest(&info.image_manifest)?;
        let options = ExtractOptions::image_layer();
        for layer in manifest.layers() {
            let path = self.blob_path(layer.digest())?;
            let reader = archive::open_decompressed(&path)?;
            if let Err(e) = archive::extract(reader, &staging, &path.display().to_string(), &options) {
                remove_dir_all(&staging)?;
                return Err(e.into());
            }
        }
        fs::rename(&staging, &dir).map_err(BaseError::io("store rootfs", &dir))?;
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
            });
        }
        self.add_image(&normalize_reference(name), &[layer], None, BTreeMap::new())
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
                return Err(ImageError::NotOci(source.display().to_string()));
            }
            staging.path.clone()
        } else {
            return Err(ImageError::NotOci(source.display().to_string()));
        };
        let invalid =
            |image: &str, detail: String| -> ImageError { ImageError::Invalid { image: image.to_string(), detail } };
        let index_path = layout.join("index.json");
        let index: ImageIndex =
            serde_json::from_slice(&fs::read(&index_path).map_err(BaseError::io("read", &index_path))?)
                .map_err(|e| invalid(&source.display().to_string(), format!("index.json: {e}")))?;
        let mut loaded = Vec::new();
        for entry in index.manifests() {
            let reference = match (name, ref_name(entry)) {
                (Some(n), _) => normalize_reference(n),
                (None, Some(r)) if r.contains(':') || r.contains('/') => normalize_reference(r),
                (None, Some(r)) => normalize_reference(&format!("localhost/{r}")),
                (None, None) => {
                    return Err(invalid(
                        &source.display().to_string(),
                        "the manifest has no name (org.opencontainers.image.ref.name); give one".into(),
                    ));
                }
            };
            let top_bytes = match entry.media_type() {
                MediaType::ImageManifest | MediaType::ImageIndex => self.copy_verified_blob(&layout, entry.digest())?,
                _ => return Err(invalid(&reference, "only OCI image manifests and indexes can be loaded".into())),
            };
            // An index is loaded when it holds one image (a checkpoint image's does): several
            // platforms' would need every one of them copied.
            let manifest_digest = match entry.media_type() {
                MediaType::ImageIndex => {
                    let index: ImageIndex = serde_json::from_slice(&top_bytes)
                        .map_err(|e| invalid(&reference, format!("image index: {e}")))?;
                    match index.manifests().as_slice() {
                        [one] if *one.media_type() == MediaType::ImageManifest => one.digest().clone(),
                        _ => {
                            return Err(invalid(
                                &reference,
                                "its index holds several images, or no image manifest; only an index of one image can be loaded".into(),
                            ));
                        }
                    }
                }
                _ => entry.digest().clone(),
            };
            let manifest_bytes = match manifest_digest == *entry.digest() {
                true => top_bytes.clone(),
                false => self.copy_verified_blob(&layout, &manifest_digest)?,
            };
            let manifest: ImageManifest =
                serde_json::from_slice(&manifest_bytes).map_err(|e| invalid(&reference, format!("manifest: {e}")))?;
            self.copy_verified_blob(&layout, manifest.config().digest())?;
            for layer in manifest.layers() {
                self.copy_verified_blob(&layout, layer.digest())?;
            }
            let _lock = self.lock()?;
            self.tag(&reference, (entry.media_type().clone(), entry.digest().clone(), top_bytes.len() as u64))?;
            loaded.push(reference);
        }
        Ok(loaded)
    }

    fn copy_verified_blob(&self, layout: &Path, digest: &Digest) -> Result<Vec<u8>> {
        self.init_layout()?;
        let source = Self::blob_path_in(layout, digest)?;
        let target = self.blob_path(digest)?;
        // Beneath the layout with no link followed: a blob linked to a host file is refused.
        let rel = source.strip_prefix(layout).unwrap_or(&source);
        let blob = crate::safefs::Beneath::open(layout)
            .and_then(|beneath| beneath.open_file(rel))
            .map_err(BaseError::io("open blob", &source))?;
        let mut reader = BufReader::new(blob);
        let tmp = target.with_extension(format!("incoming-{}", std::process::id()));
        let mut writer = HashingWriter::new(File::create(&tmp).map_err(BaseError::io("create", &tmp))?, Sha256::new());
        io::copy(&mut reader, &mut writer).map_err(BaseError::io("copy blob", &source))?;
        let actual = sha256_digest(writer.hasher);
        if actual != *digest {
            let _ = fs::remove_file(&tmp);
            return Err(ImageError::BadBlob {
                path: layout.display().to_string(),
                digest: digest.to_string(),
                detail: format!("has content with digest {actual}"),
            });
        }
        fs::rename(&tmp, &target).map_err(BaseError::io("store blob", &target))?;
        if writer.written < (4 << 20) {
            Ok(fs::read(&target).map_err(BaseError::io("read", &target))?)
        } else {
            Ok(Vec::new())
        }
    }

    /// `ckpt image save`: writes one image as an OCI archive (a tar of an image layout).
    pub fn save(&self, name: &str, output: &Path) -> Result<()> {
        let info = self.resolve(name)?;
        let manifest = self.manifest_by_digest(&info.image_manifest)?;
        let through_index = info.manifest_digest != info.image_manifest;
        let mut digests = vec![info.manifest_digest.clone()];
        if through_index {
            digests.push(info.image_manifest.clone());
        }
        digests.push(manifest.config().digest().clone());
        digests.extend(manifest.layers().iter().map(|layer| layer.digest().clone()));
        let top_size = self.read_blob(&info.manifest_digest)?.len() as u64;
        let media_type = if through_index { MediaType::ImageIndex } else { MediaType::ImageManifest };
        let mut index = empty_index();
        index.set_manifests(vec![named_entry(media_type, info.manifest_digest.clone(), top_size, &info.reference)]);
        Ok(crate::archive::publish::publish_file(output, |file| {
            let mut builder = tar::Builder::new(file);
            let mut add = |path: &str, data: &[u8]| -> io::Result<()> {
                let mut h = tar::Header::new_gnu();
                h.set_size(data.len() as u64);
                h.set_mode(0o644);
                h.set_mtime(0);
                h.set_entry_type(tar::EntryType::Regular);
                builder.append_data(&mut h, path, data)
            };
            add("oci-layout", &canonical_json(&layout_marker()))?;
            add("index.json", &canonical_json(&index))?;
            for digest in &digests {
                let path = self.blob_path(digest).map_err(io::Error::other)?;
                let mut file = File::open(&path)?;
                builder.append_file(format!("blobs/sha256/{}", digest.digest()), &mut file)?;
            }
            builder.into_inner()?.flush()
        })?)
    }

    pub fn remove(&self, name: &str) -> Result<ImageInfo> {
        let info = self.resolve(name)?;
        let _lock = self.lock()?;
        let mut index = self.read_index()?;
        index.set_manifests(entries_except(&index, &info.reference));
        self.write_index(&index)?;
        // Blobs can be shared with other images; the unpacked rootfs goes when no name uses it.
        if !self.list()?.iter().any(|i| i.id == info.id) {
            remove_dir_all(&self.rootfs_root.join(&info.id))?;
        }
        Ok(info)
    }
}

fn parse_document<T: DeserializeOwned>(what: &'static str, path: &Path, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes)
        .map_err(|e| ImageError::Base(BaseError::Corrupt { what, path: path.to_path_buf(), detail: e.to_string() }))
}

fn build_error(what: &'static str) -> impl FnOnce(oci_spec::OciSpecError) -> ImageError {
    move |e| ImageError::Invalid { image: what.to_string(), detail: e.to_string() }
}

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
        std::fs::create_dir_all(store.layout()).unwrap();
        for text in ["[]", "{\"manifests\": 3}", "{}", "not json"] {
            std::fs::write(store.layout().join("index.json"), text).unwrap();
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
        assert_eq!(digest.to_string(), format!("sha256:{}", hex::encode(Sha256::digest(b"memory pages"))));
        let path = store.blob_path(&digest).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(store.read_blob(&digest).unwrap(), b"memory pages");
        assert!(store.blob_path(&Digest::from_str(&format!("sha512:{}", "a".repeat(128))).unwrap()).is_err());
    }

    #[test]
    fn an_added_image_lists_with_its_annotations_layers_and_command() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::new(&Roots::new(dir.path().join("root"), dir.path().join("run")));
        let mut tar = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_size(5);
        header.set_mode(0o644);
        tar.append_data(&mut header, "etc/motd", &b"hello"[..]).unwrap();
        let layer = store.write_layer_from_tar(&tar.into_inner().unwrap()[..]).unwrap();
        let mut run = Config::default();
        run.set_entrypoint(Some(vec!["/bin/sh".into(), "-c".into()]));
        run.set_cmd(Some(vec!["sleep 1".into()]));
        let annotations = BTreeMap::from([("io.podman.annotations.checkpoint.name".to_string(), "web".to_string())]);
        let added = store.add_image("localhost/web:1", std::slice::from_ref(&layer), Some(run), annotations).unwrap();

        let listed = store.resolve("localhost/web:1").unwrap();
        assert_eq!(listed.manifest_digest, added.manifest_digest);
        assert_eq!(listed.size, layer.size);
        assert_eq!(listed.annotations["io.podman.annotations.checkpoint.name"], "web");
        assert!(listed.annotations.contains_key(CREATED));
        assert_eq!(store.default_command(&listed).unwrap(), ["/bin/sh", "-c", "sleep 1"]);
        assert_eq!(store.resolve(&listed.id[..12]).unwrap().reference, "localhost/web:1");
        // Pinned by its manifest digest, with a tag or without, as podman and Kubernetes take it.
        let pinned = listed.manifest_digest.to_string();
        for name in [
            format!("localhost/web:1@{pinned}"),
            format!("localhost/web:other@{pinned}"),
            format!("localhost/web@{pinned}"),
        ] {
            assert_eq!(store.resolve(&name).unwrap().reference, "localhost/web:1", "{name}");
        }
        let wrong = format!("localhost/web:1@sha256:{}", "0".repeat(64));
        assert!(matches!(store.resolve(&wrong), Err(ImageError::NoSuchImage(_))));
        assert!(store.resolve(&format!("localhost/other:1@{pinned}")).is_err(), "another repository's name");

        // The stored documents are the OCI types, with their keys sorted.
        let manifest_bytes = store.read_blob(&listed.manifest_digest).unwrap();
        let manifest: ImageManifest = serde_json::from_slice(&manifest_bytes).unwrap();
        assert_eq!(manifest.layers()[0].media_type(), &MediaType::ImageLayerGzip);
        assert_eq!(canonical_json(&manifest), manifest_bytes);
        let config = store.config(&listed).unwrap();
        assert_eq!(config.rootfs().diff_ids(), &[layer.diff_id.to_string()]);

        store.remove("localhost/web:1").unwrap();
        assert!(store.list().unwrap().is_empty());
    }

    #[test]
    fn a_checkpoint_image_is_named_through_an_index_with_its_annotations_and_saves_and_loads_whole() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::new(&Roots::new(dir.path().join("root"), dir.path().join("run")));
        let layer = store.write_layer_from_tar(&tar::Builder::new(Vec::new()).into_inner().unwrap()[..]).unwrap();
        let name = format!("{}container.name", crate::metadata::CRIU_ANNOTATION_PREFIX);
        let annotations = BTreeMap::from([(name.clone(), "web".to_string())]);
        let added = store.add_image("localhost/web:ckpt", std::slice::from_ref(&layer), None, annotations).unwrap();
        assert_ne!(added.manifest_digest, added.image_manifest, "named through an index");
        let index: ImageIndex = serde_json::from_slice(&store.read_blob(&added.manifest_digest).unwrap()).unwrap();
        assert_eq!(index.annotations().as_ref().unwrap()[&name], "web", "containerd reads them there");
        assert_eq!(index.manifests()[0].digest(), &added.image_manifest);
        assert_eq!(index.manifests()[0].platform().as_ref().unwrap().architecture().to_string(), oci_arch());
        let listed = store.resolve("localhost/web:ckpt").unwrap();
        assert_eq!(listed.annotations[&name], "web", "and CRI-O and podman on the manifest");
        assert_eq!(store.config(&listed).unwrap().rootfs().diff_ids(), &[layer.diff_id.to_string()]);

        let saved = dir.path().join("web.tar");
        store.save("localhost/web:ckpt", &saved).unwrap();
        let other = ImageStore::new(&Roots::new(dir.path().join("other"), dir.path().join("run2")));
        assert_eq!(other.load(&saved, None).unwrap(), ["localhost/web:ckpt"]);
        let loaded = other.resolve("localhost/web:ckpt").unwrap();
        assert_eq!((loaded.manifest_digest, loaded.image_manifest), (added.manifest_digest, added.image_manifest));
    }
}
