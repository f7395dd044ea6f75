//! Tar archives: compression, the strict extractor for untrusted input, and the checkpoint
//! archive in podman's layout.

pub mod assemble;
pub mod checkpoint;
pub mod deferred;
pub mod extract;
pub mod follow;
pub mod pargzip;
pub mod publish;
pub mod staged;
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
    #[error("archive {archive:?} is cut short: {detail}; it was not written whole, so copy or make it again")]
    CutShort { archive: String, detail: String },
    #[error("archive {archive:?}: {action} {path:?}: {source}")]
    Io { archive: String, action: &'static str, path: PathBuf, source: io::Error },
    #[error("selected compression algorithm ({0:?}) not supported. Please select one from: gzip, none, zstd")]
    UnknownCompression(String),
    #[error("archive {archive:?} is missing {member:?}; is it a ckpt or podman checkpoint archive?")]
    Missing { archive: String, member: String },
    #[error("archive {archive:?}: {member:?} is corrupt: {detail}")]
    CorruptMember { archive: String, member: String, detail: String },
    #[error("export target {target:?} {problem}")]
    BadTarget { target: PathBuf, problem: &'static str },
    #[error(transparent)]
    Base(#[from] crate::base_error::BaseError),
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

/// Decompression runs on a thread of its own, some chunks ahead of its reader, so that it
/// overlaps with the writes and hashing that consume what it produces.
pub fn decompress<R: BufRead + Send + 'static>(mut reader: R, name: &str) -> Result<Box<dyn Read>, ArchiveError> {
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
            Ok(read_ahead(Box::new(decoder)))
        }
        Compression::Gzip => Ok(read_ahead(Box::new(flate2::bufread::MultiGzDecoder::new(reader)))),
        Compression::None => Ok(Box::new(reader)),
    }
}

/// The most handed to one `write(2)` of a file. Chunks of 1 MiB are read and hashed whole, but
/// written in pieces: on this machine (Linux 6.18, ext4, a VM that hands freed memory back to its
/// host), `dd` wrote 512 MiB into a new file in 1.0 s with 1 MiB writes and in 0.21 s with
/// 256 KiB ones, side by side; every size from 32 to 256 KiB took 0.2 to 0.3 s.
pub const WRITE_PIECE: usize = 256 << 10;

/// A writer whose writes are cut into [`WRITE_PIECE`]s.
pub struct PieceWriter<W: io::Write>(pub W);

impl<W: io::Write> io::Write for PieceWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(&buf[..buf.len().min(WRITE_PIECE)])
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

/// Chunks of a stream another thread reads, at most this many waiting.
const CHUNKS_AHEAD: usize = 4;
/// Every chunk a [`send_chunks`] pair can hold at once: those waiting, the one being filled and
/// the one being read.
const CHUNKS_IN_FLIGHT: usize = CHUNKS_AHEAD + 2;
/// Large reads and writes: a page image of gigabytes in 8 KiB steps costs a syscall pair per step.
const CHUNK: usize = 1 << 20;

/// Runs `reader` on a thread of its own, up to [`CHUNKS_AHEAD`] chunks ahead. The thread ends
/// when the stream does or when the returned reader is dropped; if no thread can be started,
/// `reader` is read in place.
pub(crate) fn read_ahead(reader: Box<dyn Read + Send>) -> Box<dyn Read + Send> {
    let (sender, receiver) = std::sync::mpsc::sync_channel::<io::Result<Vec<u8>>>(CHUNKS_AHEAD);
    let (recycle, recycled) = std::sync::mpsc::channel::<Vec<u8>>();
    let (handoff, take_back) = std::sync::mpsc::channel::<Box<dyn Read + Send>>();
    let spawned = std::thread::Builder::new().name("decompress".into()).spawn(move || {
        let Ok(mut reader) = take_back.recv() else { return };
        send_chunks(&mut *reader, &sender, &mut ChunkPool::new(recycled, CHUNKS_IN_FLIGHT), &|| Ok(()), &mut |_| ());
    });
    if spawned.is_err() {
        return reader;
    }
    if let Err(unsent) = handoff.send(reader) {
        return unsent.0;
    }
    Box::new(ChannelReader::new(receiver, recycle))
}

/// Chunk buffers that go round between two threads. At most `limit` are ever allocated; once
/// all are out, the next one is waited for. A fresh buffer costs a page fault and a zeroed page
/// for every 4 KiB, and on a virtual machine that hands freed memory back to its host, more.
pub(crate) struct ChunkPool {
    returned: std::sync::mpsc::Receiver<Vec<u8>>,
    allocated: usize,
    limit: usize,
}

impl ChunkPool {
    /// `limit` must cover every chunk that can be in flight at once, or the pool waits forever.
    pub(crate) fn new(returned: std::sync::mpsc::Receiver<Vec<u8>>, limit: usize) -> ChunkPool {
        ChunkPool { returned, allocated: 0, limit }
    }

    /// A buffer to fill: one given back, a new one while fewer than `limit` exist, or else the
    /// next one given back. `None` once nobody can give one back.
    pub(crate) fn take(&mut self) -> Option<Vec<u8>> {
        if let Ok(chunk) = self.returned.try_recv() {
            return Some(chunk);
        }
        if self.allocated < self.limit {
            self.allocated += 1;
            return Some(Vec::new());
        }
        self.returned.recv().ok()
    }
}

/// Reads `reader` in chunks from `pool` and sends each on after `each` has seen it, until the
/// stream ends, a read or `check` fails (the error is sent on), or nobody receives. Returns the
/// bytes sent.
fn send_chunks(
    reader: &mut dyn Read,
    sender: &std::sync::mpsc::SyncSender<io::Result<Vec<u8>>>,
    pool: &mut ChunkPool,
    check: &dyn Fn() -> io::Result<()>,
    each: &mut dyn FnMut(&[u8]),
) -> u64 {
    let mut total = 0u64;
    while let Some(mut chunk) = pool.take() {
        chunk.resize(CHUNK, 0);
        // Full chunks only: age, for one, hands out 64 KiB a read, and a chunk sent mostly empty
        // is zeroed whole again before its next fill.
        let read = check().and_then(|()| extract::read_full(reader, &mut chunk));
        match read {
            Ok(0) => break,
            Ok(n) => {
                chunk.truncate(n);
                each(&chunk);
                total += n as u64;
                if sender.send(Ok(chunk)).is_err() {
                    break;
                }
            }
            Err(e) => {
                let _ = sender.send(Err(e));
                break;
            }
        }
    }
    total
}

/// Reads the chunks another thread sends, and sends each back, read, for its next fill: fresh
/// buffers would cost a page fault and a zeroed page for every 4 KiB that passes.
pub(crate) struct ChannelReader {
    receiver: std::sync::mpsc::Receiver<io::Result<Vec<u8>>>,
    recycle: std::sync::mpsc::Sender<Vec<u8>>,
    current: Vec<u8>,
    offset: usize,
}

impl ChannelReader {
    pub(crate) fn new(
        receiver: std::sync::mpsc::Receiver<io::Result<Vec<u8>>>,
        recycle: std::sync::mpsc::Sender<Vec<u8>>,
    ) -> ChannelReader {
        ChannelReader { receiver, recycle, current: Vec::new(), offset: 0 }
    }
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.offset == self.current.len() {
            match self.receiver.recv() {
                Ok(chunk) => {
                    let read = std::mem::replace(&mut self.current, chunk?);
                    let _ = self.recycle.send(read);
                    self.offset = 0;
                }
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len() - self.offset);
        buf[..n].copy_from_slice(&self.current[self.offset..self.offset + n]);
        self.offset += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_piece_writer_hands_on_at_most_a_piece_per_write() {
        struct Recording(Vec<usize>);
        impl io::Write for Recording {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                self.0.push(buf.len());
                Ok(buf.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut writer = PieceWriter(Recording(Vec::new()));
        io::Write::write_all(&mut writer, &vec![7u8; CHUNK + 5]).unwrap();
        assert_eq!(writer.0.0, [WRITE_PIECE, WRITE_PIECE, WRITE_PIECE, WRITE_PIECE, 5]);
    }

    #[test]
    fn a_chunk_pool_allocates_up_to_its_limit_then_waits_for_one_given_back() {
        let (give_back, returned) = std::sync::mpsc::channel::<Vec<u8>>();
        let mut pool = ChunkPool::new(returned, 2);
        let first = pool.take().unwrap();
        let _second = pool.take().unwrap();
        assert_eq!(pool.allocated, 2);
        let giver = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(50));
            give_back.send(first).unwrap();
        });
        assert!(pool.take().is_some(), "the third waits for the first to come back");
        assert_eq!(pool.allocated, 2, "and nothing more is allocated");
        giver.join().unwrap();
        assert!(pool.take().is_none(), "nobody is left to give one back");
    }
}
