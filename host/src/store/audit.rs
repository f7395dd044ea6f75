//! `<root>/audit.log`: an append-only, hash-chained log. Each line is
//! `{"hash": H, "entry": E}` where `E` holds its sequence number and the hash of the line before,
//! and `H` is a BLAKE3 MAC of `E`'s bytes exactly as written, keyed with the host's audit key.
//!
//! The key and the chain's head are kept in the anchor directory, outside the store and private
//! to root (`/etc/ckpt/audit` unless `CKPT_AUDIT_ANCHOR` says otherwise), so that whoever can
//! write the store cannot rewrite the chain (no key), cut its tail or its start (the anchor says
//! where it ends and starts), or hide either. An edited, removed or reordered line breaks the
//! chain at that line. A crash between appending a line and recording the head leaves the log
//! one sealed line ahead of it, and a crash within a line leaves a torn last line; both are told
//! apart from tampering, and the next append carries on (cutting a torn line, and saying so in
//! the entry it writes). Lines written before the host had a key (`blake3:`, unkeyed) still
//! verify; every line after the first keyed one must be keyed. Rotation moves the log aside whole
//! and the chain carries on in the new file.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

use crate::base_error::{BaseError as Error, BaseResult as Result};
use crate::store::StoreLock;

/// The log is rotated past this size; this many older generations are kept.
pub const MAX_LOG_BYTES: u64 = 16 << 20;
pub const GENERATIONS: usize = 8;
/// The `prev` of the very first entry.
const GENESIS: &str = "blake3:genesis";
/// Where the key and the heads are kept unless `CKPT_AUDIT_ANCHOR` names another directory.
pub const DEFAULT_ANCHOR_DIR: &str = "/etc/ckpt/audit";
const KEYED: &str = "blake3-keyed:";
const UNKEYED: &str = "blake3:";

/// The head of one store's chain, as the anchor keeps it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
struct Head {
    seq: u64,
    hash: String,
    /// The sequence number of the oldest entry kept (after rotation dropped older ones).
    #[serde(default = "one")]
    first_seq: u64,
    /// Entries from this one on must carry the keyed hash.
    #[serde(default = "one")]
    keyed_from: u64,
}

fn one() -> u64 {
    1
}

#[derive(Debug, Deserialize)]
struct Line<'a> {
    hash: String,
    #[serde(borrow)]
    entry: &'a RawValue,
}

#[derive(Debug, Deserialize)]
struct Chained {
    seq: u64,
    prev: String,
}

/// The key and heads kept outside the store.
#[derive(Debug, Clone)]
pub struct Anchor {
    dir: PathBuf,
}

impl Anchor {
    /// `CKPT_AUDIT_ANCHOR`, or [`DEFAULT_ANCHOR_DIR`].
    pub fn from_env() -> Anchor {
        let dir = std::env::var_os("CKPT_AUDIT_ANCHOR").map(PathBuf::from);
        Anchor::new(dir.unwrap_or_else(|| PathBuf::from(DEFAULT_ANCHOR_DIR)))
    }

    pub fn new(dir: PathBuf) -> Anchor {
        Anchor { dir }
    }

    fn key_path(&self) -> PathBuf {
        self.dir.join("key")
    }

    /// The host's audit key, made on first use when `create`; `None` when there is none yet.
    fn key(&self, create: bool) -> Result<Option<[u8; 32]>> {
        let path = self.key_path();
        match std::fs::symlink_metadata(&path) {
            Ok(meta) => {
                let own = nix::unistd::geteuid().as_raw();
                if !meta.is_file() || meta.uid() != own || meta.mode() & 0o077 != 0 {
                    return Err(Error::invalid(format!(
                        "the audit key {} must be a file owned by this user with mode 0600; fix it or move it away (a new key then starts a new seal)",
                        path.display()
                    )));
                }
                let text = std::fs::read_to_string(&path).map_err(Error::io("read", &path))?;
                let key = decode_key(text.trim()).ok_or_else(|| Error::Corrupt {
                    what: "audit key",
                    path: path.clone(),
                    detail: "it is not 64 hex digits".into(),
                })?;
                Ok(Some(key))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
                crate::util::create_dir_with_mode(&self.dir, 0o700)?;
                // 32 random bytes, in hex: the key file's own format.
                let hex = crate::util::random_id();
                let made = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&path)
                    .and_then(|mut f| f.write_all(hex.as_bytes()).and_then(|()| f.sync_all()));
                match made {
                    Ok(()) => Ok(Some(decode_key(&hex).expect("random_id is 64 hex digits"))),
                    // Another ckpt made it first: use that one.
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => self.key(false),
                    Err(e) => Err(Error::io("create", &path)(e)),
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io("read", &path)(e)),
        }
    }

    /// Where the head of the log at `log` is kept: named by the log's path, so that every store
    /// on the host has its own.
    fn head_path(&self, log: &Path) -> PathBuf {
        let at = std::fs::canonicalize(log.parent().unwrap_or(log)).unwrap_or_else(|_| log.to_path_buf());
        let name = blake3::hash(at.join(log.file_name().unwrap_or_default()).as_os_str().as_encoded_bytes());
        self.dir.join(format!("{}.head", &name.to_hex()[..32]))
    }
}

fn decode_key(hex: &str) -> Option<[u8; 32]> {
    hex::decode(hex).ok()?.try_into().ok()
}

pub struct AuditLog {
    path: PathBuf,
    locks_dir: PathBuf,
    anchor: Anchor,
}

/// The first entry whose chain is broken, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broken {
    pub file: PathBuf,
    pub line: usize,
    pub detail: String,
}

impl std::fmt::Display for Broken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} line {}: {}", self.file.display(), self.line, self.detail)
    }
}

/// What `verify` found in a whole chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub entries: u64,
    pub first_seq: u64,
    pub last_seq: u64,
    /// The oldest kept entry follows one rotated away, so its `prev` cannot be checked.
    pub anchored_after_rotation: bool,
    /// What a crash left, which is not tampering: a torn last line, or a last line the head does
    /// not record yet. The next append repairs it.
    pub crash: Option<String>,
}

fn unkeyed_hash(entry: &str) -> String {
    format!("{UNKEYED}{}", blake3::hash(entry.as_bytes()).to_hex())
}

fn keyed_hash(key: &[u8; 32], entry: &str) -> String {
    format!("{KEYED}{}", blake3::keyed_hash(key, entry.as_bytes()).to_hex())
}

/// One complete line of a log file, parsed.
struct Parsed {
    seq: u64,
    prev: String,
    hash: String,
}

/// Checks one line's seal; `Err` says why it is not an untouched entry.
fn parse_line(text: &str, key: Option<&[u8; 32]>, keyed_from: u64) -> std::result::Result<Parsed, String> {
    let line: Line = serde_json::from_str(text).map_err(|e| format!("not an audit entry ({e})"))?;
    let chained: Chained = serde_json::from_str(line.entry.get()).map_err(|e| format!("not an audit entry ({e})"))?;
    let sealed = if line.hash.starts_with(KEYED) {
        let key = key.ok_or("sealed with a key, but this host has no audit key")?;
        keyed_hash(key, line.entry.get()) == line.hash
    } else {
        if chained.seq >= keyed_from {
            return Err(format!(
                "entry {} is not sealed with the host's audit key, as every entry from {keyed_from} on is: it was rewritten",
                chained.seq
            ));
        }
        unkeyed_hash(line.entry.get()) == line.hash
    };
    if !sealed {
        return Err("edited: its hash does not match its content".into());
    }
    Ok(Parsed { seq: chained.seq, prev: chained.prev, hash: line.hash })
}

/// A file's complete lines, and the bytes of a torn last line (no newline) if there is one.
fn split_lines(bytes: &[u8]) -> (Vec<&str>, Option<usize>) {
    let Some(last_newline) = bytes.iter().rposition(|&b| b == b'\n') else {
        return (Vec::new(), (!bytes.is_empty()).then_some(bytes.len()));
    };
    let torn = (last_newline + 1 < bytes.len()).then_some(bytes.len() - last_newline - 1);
    // A line that is not UTF-8 is not an entry, and fails as one.
    let lines = bytes[..last_newline].split(|&b| b == b'\n').map(|l| std::str::from_utf8(l).unwrap_or("\u{fffd}"));
    (lines.collect(), torn)
}

/// How much of a log's end an append reads: far more than any entry.
const TAIL_BYTES: u64 = 1 << 20;

/// The end of the file at `path`, from the start of a line: its last [`TAIL_BYTES`], less the
/// partial line they begin with, or the whole file when it is smaller.
fn tail(path: &Path) -> Option<Vec<u8>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = std::fs::File::open(path).ok()?;
    let len = file.metadata().ok()?.len();
    let from = len.saturating_sub(TAIL_BYTES);
    file.seek(SeekFrom::Start(from)).ok()?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).ok()?;
    if from > 0 {
        let first_newline = bytes.iter().position(|&b| b == b'\n')?;
        bytes.drain(..=first_newline);
    }
    Some(bytes)
}

impl AuditLog {
    pub fn new(path: PathBuf, locks_dir: PathBuf, anchor: Anchor) -> AuditLog {
        AuditLog { path, locks_dir, anchor }
    }

    /// The head a log from before the anchor kept beside itself.
    fn legacy_head_path(&self) -> PathBuf {
        self.path.with_extension("head")
    }

    fn generation(&self, n: usize) -> PathBuf {
        PathBuf::from(format!("{}.{n}", self.path.display()))
    }

    fn anchored_head(&self) -> Result<Option<Head>> {
        let path = self.anchor.head_path(&self.path);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| Error::Corrupt {
                what: "audit head",
                path,
                detail: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io("read", &path)(e)),
        }
    }

    /// The last complete line of the newest file that has one, from that file's tail (`log`
    /// for the current file, read already).
    fn last_line(&self, log: Option<&[u8]>, key: Option<&[u8; 32]>) -> Option<Parsed> {
        let files = self.files();
        let tails = files.iter().rev().map(|file| match file == &self.path {
            true => log.map(<[u8]>::to_vec),
            false => tail(file),
        });
        tails.flatten().find_map(|bytes| split_lines(&bytes).0.last().and_then(|l| parse_line(l, key, u64::MAX).ok()))
    }

    /// Appends one event: `event` names it, `fields` (a JSON object) says what it was about.
    pub fn append(&self, event: &str, fields: Value) -> Result<()> {
        let _lock = StoreLock::named(&self.locks_dir, "audit")?;
        let key = self.anchor.key(true)?.expect("made on first use");
        let mut repaired = None;
        // Only the log's end: an append must not read the whole log.
        let mut log = tail(&self.path);
        if let Some(bytes) = &mut log
            && let (_, Some(torn)) = split_lines(bytes)
        {
            let len = std::fs::metadata(&self.path).map_err(Error::io("read", &self.path))?.len();
            let file = OpenOptions::new().write(true).open(&self.path).map_err(Error::io("open", &self.path))?;
            file.set_len(len - torn as u64).map_err(Error::io("cut the torn line of", &self.path))?;
            bytes.truncate(bytes.len() - torn);
            repaired = Some(format!("a torn last line of {torn} bytes, left by a crash while appending, was cut"));
        }
        let last = self.last_line(log.as_deref(), Some(&key));
        let mut head = match (self.anchored_head()?, last) {
            // The line was written but the head was not: the crash F8 describes. The line is
            // sealed, so it is the chain's.
            (Some(head), Some(last)) if last.seq == head.seq + 1 && last.prev == head.hash => {
                Head { seq: last.seq, hash: last.hash, ..head }
            }
            // Otherwise the anchor is the truth: a log that disagrees was tampered with, which
            // `verify` reports at the place.
            (Some(head), _) => head,
            // A log from before the anchor: it carries on from its own last line, keyed from here.
            (None, Some(last)) => Head { seq: last.seq, hash: last.hash, first_seq: 1, keyed_from: last.seq + 1 },
            (None, None) => Head { seq: 0, hash: GENESIS.into(), first_seq: 1, keyed_from: 1 },
        };
        if std::fs::metadata(&self.path).is_ok_and(|m| m.len() >= MAX_LOG_BYTES) {
            self.rotate()?;
            head.first_seq = self.first_kept_seq().unwrap_or(head.first_seq);
        }
        let seq = head.seq + 1;
        let mut entry = serde_json::Map::new();
        entry.insert("seq".into(), seq.into());
        entry.insert("prev".into(), head.hash.clone().into());
        entry.insert("at".into(), crate::util::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true).into());
        entry.insert("event".into(), event.into());
        if let Some(repaired) = repaired {
            entry.insert("log-repaired".into(), repaired.into());
        }
        if let Value::Object(fields) = fields {
            for (key, value) in fields {
                entry.entry(key).or_insert(value);
            }
        }
        let entry = serde_json::to_string(&entry).expect("json");
        let hash = keyed_hash(&key, &entry);
        let line = format!("{{\"hash\":{},\"entry\":{entry}}}\n", serde_json::to_string(&hash).expect("json"));
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&self.path)
            .map_err(Error::io("open", &self.path))?;
        file.write_all(line.as_bytes()).map_err(Error::io("append to", &self.path))?;
        file.sync_data().map_err(Error::io("sync", &self.path))?;
        let head = Head { seq, hash, ..head };
        let bytes = serde_json::to_vec(&head).expect("json");
        crate::util::write_atomic(&self.anchor.head_path(&self.path), &bytes, 0o600)?;
        // Only the anchor's head counts now; an old one beside the log would only mislead.
        let _ = std::fs::remove_file(self.legacy_head_path());
        Ok(())
    }

    fn first_kept_seq(&self) -> Option<u64> {
        use std::io::BufRead;
        self.files().iter().find_map(|file| {
            let first = std::io::BufReader::new(std::fs::File::open(file).ok()?).lines().next()?.ok()?;
            seq_of(&first).map(|p| p.seq)
        })
    }

    fn rotate(&self) -> Result<()> {
        let _ = std::fs::remove_file(self.generation(GENERATIONS));
        for n in (1..GENERATIONS).rev() {
            let from = self.generation(n);
            if from.exists() {
                std::fs::rename(&from, self.generation(n + 1)).map_err(Error::io("rotate", &from))?;
            }
        }
        std::fs::rename(&self.path, self.generation(1)).map_err(Error::io("rotate", &self.path))
    }

    /// The files of the chain, oldest first.
    fn files(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> =
            (1..=GENERATIONS).rev().map(|n| self.generation(n)).filter(|p| p.exists()).collect();
        files.push(self.path.clone());
        files
    }

    /// Every entry, oldest first, for `ckpt audit ls`.
    pub fn entries(&self) -> Result<Vec<Value>> {
        let mut out = Vec::new();
        for file in self.files() {
            let Ok(bytes) = std::fs::read(&file) else { continue };
            for line in split_lines(&bytes).0 {
                if let Ok(line) = serde_json::from_str::<Line>(line) {
                    out.push(serde_json::from_str(line.entry.get()).unwrap_or(Value::Null));
                }
            }
        }
        Ok(out)
    }

    /// Checks the whole chain: every line's seal, its link to the line before, its sequence
    /// number, and that it starts and ends where the anchor says.
    pub fn verify(&self) -> Result<std::result::Result<Verified, Broken>> {
        let anchored = self.anchored_head()?;
        let key = self.anchor.key(false)?;
        let keyed_from = anchored.as_ref().map_or(u64::MAX, |h| h.keyed_from);
        let mut previous: Option<(u64, String)> = None;
        let mut verified =
            Verified { entries: 0, first_seq: 0, last_seq: 0, anchored_after_rotation: false, crash: None };
        let mut saw_keyed = false;
        let files = self.files();
        for (n, file) in files.iter().enumerate() {
            let bytes = match std::fs::read(file) {
                Ok(bytes) => bytes,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io("read", file)(e)),
            };
            let (lines, torn) = split_lines(&bytes);
            if let Some(torn) = torn {
                if n + 1 < files.len() {
                    let broken = Broken { file: file.clone(), line: lines.len() + 1, detail: "cut short".into() };
                    return Ok(Err(broken));
                }
                verified.crash = Some(format!(
                    "its last line is torn ({torn} bytes): a crash while appending; the next append cuts it"
                ));
            }
            for (index, text) in lines.iter().enumerate() {
                let broken = |detail: String| Broken { file: file.clone(), line: index + 1, detail };
                let parsed = match parse_line(text, key.as_ref(), keyed_from) {
                    Ok(parsed) => parsed,
                    Err(detail) => return Ok(Err(broken(detail))),
                };
                match &previous {
                    None if parsed.prev == GENESIS && parsed.seq == 1 => {}
                    None => match &anchored {
                        Some(head) if parsed.seq != head.first_seq => {
                            return Ok(Err(broken(format!(
                                "the log starts at entry {}, but the anchor records that it starts at entry {}: entries were removed from the start",
                                parsed.seq, head.first_seq
                            ))));
                        }
                        _ => verified.anchored_after_rotation = true,
                    },
                    Some((seq, hash)) => {
                        if parsed.prev != *hash || parsed.seq != seq + 1 {
                            return Ok(Err(broken(format!(
                                "entry {} does not follow entry {seq}: an entry before it was removed, or entries were reordered",
                                parsed.seq
                            ))));
                        }
                    }
                }
                if previous.is_none() {
                    verified.first_seq = parsed.seq;
                }
                saw_keyed |= parsed.hash.starts_with(KEYED);
                verified.entries += 1;
                verified.last_seq = parsed.seq;
                previous = Some((parsed.seq, parsed.hash));
            }
        }
        let ends = |detail: String| Ok(Err(Broken { file: self.path.clone(), line: 0, detail }));
        let head = match anchored {
            Some(head) => head,
            None if saw_keyed => {
                return ends(format!(
                    "its entries are sealed with this host's key, but the anchor {} that records where the chain ends is missing",
                    self.anchor.head_path(&self.path).display()
                ));
            }
            // A log from before the anchor: its own head, kept beside it, if any.
            None => {
                match std::fs::read(self.legacy_head_path()).ok().and_then(|b| serde_json::from_slice::<Head>(&b).ok())
                {
                    Some(head) => head,
                    None => return Ok(Ok(verified)),
                }
            }
        };
        match previous {
            Some((seq, hash)) if seq == head.seq && hash == head.hash => Ok(Ok(verified)),
            Some((seq, _)) if seq == head.seq + 1 => {
                verified.crash.get_or_insert_with(|| {
                    "its last entry is not recorded in the head yet: a crash between the two writes; the next append records it".into()
                });
                Ok(Ok(verified))
            }
            Some((seq, _)) => ends(format!(
                "the log ends at entry {seq}, but the anchor {} records entry {}: entries were removed from the end",
                self.anchor.head_path(&self.path).display(),
                head.seq
            )),
            None => ends(format!(
                "the log is empty, but the anchor {} records entry {}",
                self.anchor.head_path(&self.path).display(),
                head.seq
            )),
        }
    }
}

/// The sequence number of a line whose seal cannot be checked (no key).
fn seq_of(text: &str) -> Option<Parsed> {
    let line: Line = serde_json::from_str(text).ok()?;
    let chained: Chained = serde_json::from_str(line.entry.get()).ok()?;
    Some(Parsed { seq: chained.seq, prev: chained.prev, hash: line.hash })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::path::Path;

    fn log_path(dir: &Path) -> PathBuf {
        dir.join("audit.log")
    }

    fn log(dir: &Path) -> AuditLog {
        AuditLog::new(log_path(dir), dir.join("locks"), Anchor::new(dir.join("anchor")))
    }

    fn filled(dir: &Path) -> AuditLog {
        let audit = log(dir);
        for n in 0..5 {
            audit.append("checkpoint", json!({"container": format!("c{n}")})).unwrap();
        }
        audit
    }

    fn edit(path: &Path, change: impl FnOnce(&mut Vec<String>)) {
        let mut lines: Vec<String> = std::fs::read_to_string(path).unwrap().lines().map(String::from).collect();
        change(&mut lines);
        std::fs::write(path, lines.join("\n") + "\n").unwrap();
    }

    #[test]
    fn an_untouched_chain_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let verified = filled(dir.path()).verify().unwrap().unwrap();
        assert_eq!((verified.entries, verified.first_seq, verified.last_seq), (5, 1, 5));
    }

    #[test]
    fn an_edited_a_removed_a_reordered_or_a_cut_entry_is_named() {
        type Edit = fn(&mut Vec<String>);
        let cases: [(&str, Edit); 4] = [
            ("line 3: edited", |l| l[2] = l[2].replace("c2", "cX")),
            ("line 3: entry 4 does not follow entry 2", |l| drop(l.remove(2))),
            ("line 2: entry 3 does not follow entry 1", |l| l.swap(1, 2)),
            ("entries were removed from the end", |l| drop(l.pop())),
        ];
        for (expected, change) in cases {
            let dir = tempfile::tempdir().unwrap();
            let audit = filled(dir.path());
            edit(&log_path(dir.path()), change);
            let broken = audit.verify().unwrap().unwrap_err().to_string();
            assert!(broken.contains(expected), "{expected}: {broken}");
        }
    }

    /// The log's lines with every hash and link made again without the key, as whoever can
    /// write the store could.
    fn rechain_unkeyed(path: &Path) {
        edit(path, |lines| {
            let mut prev = GENESIS.to_string();
            for line in lines.iter_mut() {
                let parsed: serde_json::Value = serde_json::from_str(line).unwrap();
                let mut entry = parsed["entry"].clone();
                entry["prev"] = prev.clone().into();
                let entry = serde_json::to_string(&entry).unwrap();
                prev = unkeyed_hash(&entry);
                *line = format!("{{\"hash\":{:?},\"entry\":{entry}}}", prev);
            }
        });
    }

    #[test]
    fn whoever_can_write_the_store_cannot_cut_or_rewrite_the_chain_unseen() {
        type Edit = fn(&Path);
        let cases: [(&str, Edit); 3] = [
            ("entries were removed from the start", |log| edit(log, |l| drop(l.drain(..3)))),
            ("entries were removed from the end", |log| {
                edit(log, |l| drop(l.pop()));
                let _ = std::fs::remove_file(log.with_extension("head"));
            }),
            ("not sealed with the host's audit key", |log| {
                edit(log, |l| l[2] = l[2].replace("c2", "cX"));
                rechain_unkeyed(log);
            }),
        ];
        for (expected, tamper) in cases {
            let dir = tempfile::tempdir().unwrap();
            let audit = filled(dir.path());
            tamper(&log_path(dir.path()));
            let broken = audit.verify().unwrap().unwrap_err().to_string();
            assert!(broken.contains(expected), "{expected}: {broken}");
        }
    }

    #[test]
    fn a_crash_while_appending_is_told_apart_from_tampering_and_the_next_append_carries_on() {
        // Between the line and the head: the log is one sealed line ahead.
        let dir = tempfile::tempdir().unwrap();
        let audit = filled(dir.path());
        let head = audit.anchor.head_path(&audit.path);
        let before = std::fs::read(&head).unwrap();
        audit.append("checkpoint", json!({"container": "c5"})).unwrap();
        std::fs::write(&head, before).unwrap();
        let verified = audit.verify().unwrap().unwrap();
        assert!(verified.crash.unwrap().contains("between the two writes"));
        audit.append("checkpoint", json!({"container": "c6"})).unwrap();
        let verified = audit.verify().unwrap().unwrap();
        assert_eq!((verified.last_seq, verified.crash), (7, None));

        // Within a line: a torn last line, cut by the next append, which says so.
        let mut file = OpenOptions::new().append(true).open(&audit.path).unwrap();
        file.write_all(b"{\"hash\":\"blake3-keyed:12").unwrap();
        let verified = audit.verify().unwrap().unwrap();
        assert!(verified.crash.unwrap().contains("torn"));
        audit.append("restore", json!({"container": "c0"})).unwrap();
        let verified = audit.verify().unwrap().unwrap();
        assert_eq!((verified.last_seq, verified.crash), (8, None));
        let last = audit.entries().unwrap().pop().unwrap();
        assert!(last["log-repaired"].as_str().unwrap().contains("torn last line"), "{last}");
    }

    #[test]
    fn a_log_longer_than_the_tail_an_append_reads_carries_on_and_a_torn_end_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let audit = log(dir.path());
        for n in 0..300 {
            audit.append("checkpoint", json!({"container": format!("c{n}"), "detail": "x".repeat(4096)})).unwrap();
        }
        assert!(std::fs::metadata(&audit.path).unwrap().len() > TAIL_BYTES);
        let mut file = OpenOptions::new().append(true).open(&audit.path).unwrap();
        file.write_all(b"{\"hash\":\"blake3-keyed:").unwrap();
        audit.append("restore", json!({"container": "c0"})).unwrap();
        let verified = audit.verify().unwrap().unwrap();
        assert_eq!((verified.last_seq, verified.crash), (301, None));
    }

    #[test]
    fn a_log_from_before_the_key_still_verifies_and_is_sealed_from_then_on() {
        let dir = tempfile::tempdir().unwrap();
        let audit = filled(dir.path());
        rechain_unkeyed(&audit.path);
        std::fs::remove_file(audit.anchor.head_path(&audit.path)).unwrap();
        assert_eq!(audit.verify().unwrap().unwrap().last_seq, 5, "an unkeyed log from before verifies");
        audit.append("restore", json!({"container": "c0"})).unwrap();
        assert_eq!(audit.verify().unwrap().unwrap().last_seq, 6);
        // Rewriting the new, keyed part without the key is caught.
        rechain_unkeyed(&audit.path);
        let broken = audit.verify().unwrap().unwrap_err().to_string();
        assert!(broken.contains("line 6") && broken.contains("not sealed"), "{broken}");
    }

    #[test]
    fn rotation_keeps_the_chain() {
        let dir = tempfile::tempdir().unwrap();
        let audit = filled(dir.path());
        audit.rotate().unwrap();
        audit.append("restore", json!({"container": "c0"})).unwrap();
        let verified = audit.verify().unwrap().unwrap();
        assert_eq!((verified.entries, verified.last_seq), (6, 6));
        edit(&audit.generation(1), |l| l[0] = l[0].replace("c0", "cX"));
        assert!(audit.verify().unwrap().unwrap_err().to_string().contains("audit.log.1 line 1: edited"));
    }
}
