//! `<root>/audit.log`: an append-only, hash-chained log. Each line is
//! `{"hash": H, "entry": E}` where `E` holds its sequence number and the hash of the line before,
//! and `H` is the BLAKE3 of `E`'s bytes exactly as written. An edited, removed or reordered line
//! breaks the chain at that line; a cut tail no longer reaches the head recorded beside the log
//! (`audit.head`). Rotation moves the log aside whole and the chain carries on in the new file.

use std::fs::OpenOptions;
use std::io::{BufRead, Write};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

use crate::error::{Error, Result};
use crate::store::StoreLock;

/// The log is rotated past this size; this many older generations are kept.
pub const MAX_LOG_BYTES: u64 = 16 << 20;
pub const GENERATIONS: usize = 8;
/// The `prev` of the very first entry.
const GENESIS: &str = "blake3:genesis";

#[derive(Debug, Serialize, Deserialize)]
struct Head {
    seq: u64,
    hash: String,
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

pub struct AuditLog {
    path: PathBuf,
    locks_dir: PathBuf,
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
}

fn hash_of(entry: &str) -> String {
    format!("blake3:{}", blake3::hash(entry.as_bytes()).to_hex())
}

impl AuditLog {
    pub fn new(path: PathBuf, locks_dir: PathBuf) -> AuditLog {
        AuditLog { path, locks_dir }
    }

    fn head_path(&self) -> PathBuf {
        self.path.with_extension("head")
    }

    fn generation(&self, n: usize) -> PathBuf {
        PathBuf::from(format!("{}.{n}", self.path.display()))
    }

    /// Appends one event: `event` names it, `fields` (a JSON object) says what it was about.
    pub fn append(&self, event: &str, fields: Value) -> Result<()> {
        let _lock = StoreLock::named(&self.locks_dir, "audit")?;
        let head = self.head()?;
        if std::fs::metadata(&self.path).is_ok_and(|m| m.len() >= MAX_LOG_BYTES) {
            self.rotate()?;
        }
        let (seq, prev) = match head {
            Some(head) => (head.seq + 1, head.hash),
            None => (1, GENESIS.to_string()),
        };
        let mut entry = serde_json::Map::new();
        entry.insert("seq".into(), seq.into());
        entry.insert("prev".into(), prev.into());
        entry.insert("at".into(), crate::util::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true).into());
        entry.insert("event".into(), event.into());
        if let Value::Object(fields) = fields {
            for (key, value) in fields {
                entry.entry(key).or_insert(value);
            }
        }
        let entry = serde_json::to_string(&entry).expect("json");
        let hash = hash_of(&entry);
        let line = format!("{{\"hash\":{},\"entry\":{entry}}}\n", serde_json::to_string(&hash).expect("json"));
        let mut file =
            OpenOptions::new().create(true).append(true).open(&self.path).map_err(Error::io("open", &self.path))?;
        file.write_all(line.as_bytes()).map_err(Error::io("append to", &self.path))?;
        file.sync_data().map_err(Error::io("sync", &self.path))?;
        let head = serde_json::to_vec(&Head { seq, hash }).expect("json");
        crate::util::write_atomic(&self.head_path(), &head, 0o600)
    }

    /// The head recorded beside the log; without one (a log from before, or none yet), the last
    /// line of the log.
    fn head(&self) -> Result<Option<Head>> {
        match std::fs::read(self.head_path()) {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                Error::invalid(format!(
                    "the audit head {} is damaged ({e}); run 'ckpt audit verify' to see where the chain breaks",
                    self.head_path().display()
                ))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let Ok(text) = std::fs::read_to_string(&self.path) else { return Ok(None) };
                let Some(last) = text.lines().last() else { return Ok(None) };
                let line: Line = serde_json::from_str(last).map_err(|e| Error::invalid(format!("{e}")))?;
                let chained: Chained =
                    serde_json::from_str(line.entry.get()).map_err(|e| Error::invalid(format!("{e}")))?;
                Ok(Some(Head { seq: chained.seq, hash: line.hash }))
            }
            Err(e) => Err(Error::io("read", &self.head_path())(e)),
        }
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
            let Ok(text) = std::fs::read_to_string(&file) else { continue };
            for line in text.lines() {
                if let Ok(line) = serde_json::from_str::<Line>(line) {
                    out.push(serde_json::from_str(line.entry.get()).unwrap_or(Value::Null));
                }
            }
        }
        Ok(out)
    }

    /// Checks the whole chain: every line's hash, its link to the line before, its sequence
    /// number, and that the last line is the recorded head.
    pub fn verify(&self) -> Result<std::result::Result<Verified, Broken>> {
        let mut previous: Option<(u64, String)> = None;
        let mut verified = Verified { entries: 0, first_seq: 0, last_seq: 0, anchored_after_rotation: false };
        for file in self.files() {
            let reader = match std::fs::File::open(&file) {
                Ok(f) => std::io::BufReader::new(f),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io("read", &file)(e)),
            };
            for (index, text) in reader.lines().enumerate() {
                let text = text.map_err(Error::io("read", &file))?;
                let broken = |detail: String| Broken { file: file.clone(), line: index + 1, detail };
                let line: Line = match serde_json::from_str(&text) {
                    Ok(line) => line,
                    Err(e) => return Ok(Err(broken(format!("not an audit entry ({e})")))),
                };
                if hash_of(line.entry.get()) != line.hash {
                    return Ok(Err(broken("edited: its hash does not match its content".into())));
                }
                let chained: Chained = match serde_json::from_str(line.entry.get()) {
                    Ok(c) => c,
                    Err(e) => return Ok(Err(broken(format!("not an audit entry ({e})")))),
                };
                match &previous {
                    None if chained.prev == GENESIS && chained.seq == 1 => {}
                    None => verified.anchored_after_rotation = true,
                    Some((seq, hash)) => {
                        if chained.prev != *hash || chained.seq != seq + 1 {
                            return Ok(Err(broken(format!(
                                "entry {} does not follow entry {seq}: an entry before it was removed, or entries were reordered",
                                chained.seq
                            ))));
                        }
                    }
                }
                if previous.is_none() {
                    verified.first_seq = chained.seq;
                }
                verified.entries += 1;
                verified.last_seq = chained.seq;
                previous = Some((chained.seq, line.hash));
            }
        }
        let head: Option<Head> = std::fs::read(self.head_path()).ok().and_then(|b| serde_json::from_slice(&b).ok());
        match (head, previous) {
            (Some(head), Some((seq, hash))) if head.seq != seq || head.hash != hash => Ok(Err(Broken {
                file: self.path.clone(),
                line: 0,
                detail: format!(
                    "the log ends at entry {seq}, but {} records entry {}: entries were removed from the end",
                    self.head_path().display(),
                    head.seq
                ),
            })),
            (Some(head), None) => Ok(Err(Broken {
                file: self.path.clone(),
                line: 0,
                detail: format!("the log is empty, but {} records entry {}", self.head_path().display(), head.seq),
            })),
            _ => Ok(Ok(verified)),
        }
    }
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
        AuditLog::new(log_path(dir), dir.join("locks"))
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
