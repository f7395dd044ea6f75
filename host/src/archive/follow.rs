//! Page images hashed as CRIU writes them, so that an export need not hash them again.
//!
//! CRIU dumps on one core with the container frozen, and on this project's 2-core VM the other
//! core is idle meanwhile (`bench/profiles/export-zstd-512.txt`: idle 26% of the export, nearly
//! all of it during the dump). After the dump, compressing and hashing the images keep both
//! cores busy, and the BLAKE3 of the manifest was a fifth of that work at 512 MiB. A thread reads
//! each `pages-*.img` behind CRIU instead and hashes it on the idle core.
//!
//! CRIU writes a page image once, from its start to its end (`splice` at the file's position, in
//! `write_pages_loc` of criu/page-xfer.c), so the bytes below the size seen are final. A digest
//! is used only for the file it was taken from (same device and inode) at the size it was taken
//! at; anything else is hashed again while it is archived.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use super::deferred::is_page_image_name;

/// A digest taken from one file at one size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownDigest {
    pub size: u64,
    pub dev: u64,
    pub ino: u64,
    /// BLAKE3, hex.
    pub blake3: String,
}

impl KnownDigest {
    /// Whether it is the digest of the file `meta` describes now.
    pub fn describes(&self, meta: &std::fs::Metadata) -> bool {
        meta.len() == self.size && meta.dev() == self.dev && meta.ino() == self.ino
    }
}

/// Digests by file path.
pub type KnownDigests = HashMap<PathBuf, KnownDigest>;

/// Page images being hashed behind CRIU.
pub struct FollowedImages {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<io::Result<KnownDigests>>>,
}

/// Starts hashing the page images CRIU writes into `images_dir` (which it may not have made yet).
pub fn follow(images_dir: &Path) -> FollowedImages {
    let stop = Arc::new(AtomicBool::new(false));
    let stopping = stop.clone();
    let dir = images_dir.to_path_buf();
    let thread = std::thread::Builder::new()
        .name("follow-images".into())
        .spawn(move || {
            // Behind CRIU, never ahead of it: the dump's core is the one that matters.
            // SAFETY: setpriority on this thread's own id touches no memory.
            unsafe {
                libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 10);
            }
            hash_behind(&dir, &stopping)
        })
        .ok();
    FollowedImages { stop, thread }
}

impl FollowedImages {
    /// Once CRIU has written every image: hashes what is left of them and returns the digests.
    /// Whatever went wrong leaves a digest out, for the archive to take itself.
    pub fn finish(mut self) -> KnownDigests {
        self.stop.store(true, Ordering::Release);
        let Some(thread) = self.thread.take() else { return KnownDigests::new() };
        thread.join().ok().and_then(Result::ok).unwrap_or_default()
    }
}

impl Drop for FollowedImages {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

struct Followed {
    path: PathBuf,
    file: File,
    hasher: blake3::Hasher,
    hashed: u64,
}

fn hash_behind(dir: &Path, stop: &AtomicBool) -> io::Result<KnownDigests> {
    let mut followed: Vec<Followed> = Vec::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        // Read before the pass: a stop seen here means CRIU had ended before the pass began, so
        // the pass reads every image to its end.
        let last = stop.load(Ordering::Acquire);
        if let Ok(entries) = std::fs::read_dir(dir) {
            for entry in entries.flatten() {
                let path = entry.path();
                let is_new = !followed.iter().any(|f| f.path == path);
                if is_new && entry.file_name().to_str().is_some_and(is_page_image_name) {
                    let file = File::open(&path)?;
                    followed.push(Followed { path, file, hasher: blake3::Hasher::new(), hashed: 0 });
                }
            }
        }
        let mut progressed = false;
        for image in &mut followed {
            loop {
                let n = image.file.read_at(&mut buffer, image.hashed)?;
                image.hasher.update(&buffer[..n]);
                image.hashed += n as u64;
                progressed |= n > 0;
                if n < buffer.len() {
                    break;
                }
            }
        }
        if last {
            break;
        }
        if !progressed {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    let mut digests = KnownDigests::new();
    for image in followed {
        let meta = image.file.metadata()?;
        let now = std::fs::symlink_metadata(&image.path)?;
        let digest = KnownDigest {
            size: image.hashed,
            dev: meta.dev(),
            ino: meta.ino(),
            blake3: image.hasher.finalize().to_hex().to_string(),
        };
        if digest.describes(&meta) && digest.describes(&now) {
            digests.insert(image.path, digest);
        }
    }
    Ok(digests)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A page image written in pieces while it is followed, and one that appears late, are
    /// hashed whole; other files are not.
    #[test]
    fn images_written_while_followed_are_hashed_whole() {
        let dir = tempfile::tempdir().unwrap();
        let images = dir.path().join("checkpoint");
        let following = follow(&images);
        std::thread::sleep(Duration::from_millis(5));
        std::fs::create_dir(&images).unwrap();
        let mut pages = File::create(images.join("pages-1.img")).unwrap();
        let mut written = Vec::new();
        for i in 0..40u32 {
            let piece: Vec<u8> = (0..(100_000 + i)).map(|b| (b % 251) as u8 ^ i as u8).collect();
            pages.write_all(&piece).unwrap();
            written.extend_from_slice(&piece);
            if i % 8 == 0 {
                std::thread::sleep(Duration::from_millis(3));
            }
        }
        std::fs::write(images.join("pages-2.img"), b"late").unwrap();
        std::fs::write(images.join("pagemap-1.img"), b"not a page image").unwrap();
        let digests = following.finish();
        let first = &digests[&images.join("pages-1.img")];
        assert_eq!(first.size, written.len() as u64);
        assert_eq!(first.blake3, blake3::hash(&written).to_hex().to_string());
        assert_eq!(digests[&images.join("pages-2.img")].blake3, blake3::hash(b"late").to_hex().to_string());
        assert_eq!(digests.len(), 2);
        assert!(first.describes(&std::fs::metadata(images.join("pages-1.img")).unwrap()));
        pages.write_all(b"more").unwrap();
        assert!(!first.describes(&std::fs::metadata(images.join("pages-1.img")).unwrap()), "grown since");
    }
}
