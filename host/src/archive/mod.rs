//! Tar archives: compression, the strict extractor for untrusted input, and the checkpoint
//! archive in podman's layout.

pub mod assemble;
pub mod checkpoint;
pub mod extract;
pub mod pargzip;
pub mod publish;
pub mod summary;

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

pub use extract::{ExtractOptions, FileDigests, Symlinks, extract, extract_hashing};

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("archive {archive:?}: member {member:?} is refused: {reason}")]
    Refused { archive: String, member: String, reason: String },
    #[error("archive {archive:?} is too large to extract: {reason}")]
    TooLarge { archive: String, reason: String },
    #[error("archive {archive:?} is not a valid tar archive: {detail}")]
    Malformed { archive: String, detail: String },
    #[error("archive {archive:?}: {action} {path:?}: {source}")]
    Io { archive: String, action: &'static str, path: PathBuf, source: io::Error },
    #[error("selected compression algorithm ({0:?}) not supported. Please select one from: gzip, none, zstd")]
    UnknownCompression(String),
    #[error("archive {archive:?} is missing {member:?}; is it a ckpt or podman checkpoint archive?")]
    Missing { archive: String, member: String },
    #[error("archive {archive:?}: {member:?} is corrupt: {detail}")]
    CorruptMember { archive: String, member: String, detail: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    #[default]
    Zstd,
    Gzip,
    None,
}

impl Compression {
    pub fn parse(value: &str) -> Result<Compression, ArchiveError> {
        match value.to_ascii_lowercase().as_str() {
            "zstd" => Ok(Compression::Zstd),
            "gzip" => Ok(Compression::Gzip),
            "none" => Ok(Compression::None),
            _ => Err(ArchiveError::UnknownCompression(value.to_string())),
        }
    }

    /// What the first bytes of a stream announce: zstd's or gzip's magic, or neither.
    pub fn sniff(magic: &[u8]) -> Compression {
        if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else if magic.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else {
            Compression::None
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Compression::Zstd => "zstd",
            Compression::Gzip => "gzip",
            Compression::None => "none",
        }
    }
}

/// Largest zstd window accepted from untrusted input (2^27 = 128 MiB, zstd's own default cap).
const ZSTD_WINDOW_LOG_MAX: u32 = 27;

/// Opens a possibly compressed file, detecting gzip or zstd by magic bytes, with in-process
/// decoders only (never an external binary).
pub fn open_decompressed(path: &Path) -> Result<Box<dyn Read>, ArchiveError> {
    let file = File::open(path).map_err(|source| ArchiveError::Io {
        archive: path.display().to_string(),
        action: "open",
        path: path.to_path_buf(),
        source,
    })?;
    decompress(BufReader::with_capacity(1 << 20, file), &path.display().to_string())
}

pub fn decompress<R: BufRead + 'static>(mut reader: R, name: &str) -> Result<Box<dyn Read>, ArchiveError> {
    let magic = reader
        .fill_buf()
        .map_err(|source| ArchiveError::Io {
            archive: name.to_string(),
            action: "read",
            path: PathBuf::from(name),
            source,
        })?
        .to_vec();
    match Compression::sniff(&magic) {
        Compression::Zstd => {
            let mut decoder = zstd::Decoder::with_buffer(reader)
                .map_err(|e| ArchiveError::Malformed { archive: name.to_string(), detail: e.to_string() })?;
            decoder
                .window_log_max(ZSTD_WINDOW_LOG_MAX)
                .map_err(|e| ArchiveError::Malformed { archive: name.to_string(), detail: e.to_string() })?;
            Ok(Box::new(decoder))
        }
        Compression::Gzip => Ok(Box::new(flate2::bufread::MultiGzDecoder::new(reader))),
        Compression::None => Ok(Box::new(reader)),
    }
}
