//! Images, stored as one OCI image layout that skopeo and podman can read
//! (`oci:<root>/images/oci:<name>`), plus an unpacked root filesystem per image for the overlay.

pub mod artifact;
mod busybox;
mod layout;

use crate::base_error::BaseError;
pub use layout::{
    ImageInfo, ImageStore, LayerBlob, SEALED_LAYER_TYPE, normalize_reference, repository_of, validate_reference,
};

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("image {image:?}: {detail}")]
    Invalid { image: String, detail: String },
    #[error("image layout {path:?}: blob {digest:?} {detail}")]
    BadBlob { path: String, digest: String, detail: String },
    #[error("{0:?} is neither an OCI image layout directory nor an OCI archive")]
    NotOci(String),
    #[error("the built-in busybox image needs the host's static busybox at {path:?}: {detail}; run scripts/setup")]
    NoBusybox { path: String, detail: String },
    #[error("no such image {0:?}")]
    NoSuchImage(String),
    #[error(transparent)]
    Archive(#[from] crate::archive::ArchiveError),
    #[error(transparent)]
    Base(#[from] BaseError),
}
