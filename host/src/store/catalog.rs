//! The catalog: one record per checkpoint ckpt made, whether it stayed local (in the
//! container's bundle), became an archive, or became a checkpoint image. Each is a file of its
//! own (`<root>/catalog/<id>.json`), so that the daemon's workers and a user's commands never
//! rewrite each other's entries.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::base_error::{BaseError as Error, BaseResult as Result};
use crate::util::FileStamp;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EntryKind {
    Local,
    Archive,
    Image,
}

impl std::fmt::Display for EntryKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            EntryKind::Local => "local",
            EntryKind::Archive => "archive",
            EntryKind::Image => "image",
        })
    }
}

/// The planner that planned a checkpoint.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct EntryPolicy {
    pub source: String,
    pub digest: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Entry {
    pub id: String,
    pub container_id: String,
    pub container_name: String,
    pub kind: EntryKind,
    /// A path for `local` and `archive`, an image name (or registry reference) for `image`.
    pub location: String,
    pub size_bytes: u64,
    /// `blake3:<hex>` of an archive, `sha256:<hex>` of an image's manifest; none for `local`.
    pub digest: Option<String>,
    pub created: chrono::DateTime<chrono::Utc>,
    /// `cli` or `schedule`.
    pub trigger: String,
    pub schedule: Option<String>,
    pub policy: EntryPolicy,
    /// The plan the policy made, as recorded in the decision log.
    pub plan: serde_json::Value,
    pub pinned: bool,
    /// The public keys a sealed export is sealed to; empty: it is in the clear.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sealed_to: Vec<String>,
    /// The signature beside an archive (`ARCHIVE.sig`), when it was signed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
}

/// Whether what an entry names is still there, and still what was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Presence {
    Present,
    Missing,
    /// Its digest no longer matches.
    Changed,
}

impl std::fmt::Display for Presence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Presence::Present => "present",
            Presence::Missing => "missing",
            Presence::Changed => "changed",
        })
    }
}

pub struct Catalog {
    dir: PathBuf,
}

impl Catalog {
    pub fn new(dir: PathBuf) -> Catalog {
        Catalog { dir }
    }

    fn path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    pub fn add(&self, entry: &Entry) -> Result<()> {
        crate::util::create_dir_with_mode(&self.dir, 0o700)?;
        crate::util::write_atomic(&self.path(&entry.id), &serde_json::to_vec_pretty(entry).expect("json"), 0o600)
    }

    /// Every entry, newest first; a damaged file is skipped with a warning, never fatal. A file
    /// this process has read before and that has not changed since (inode, size, time) is not
    /// read again: a daemon's every run lists the catalog, which holds a few entries for each
    /// container on the node.
    pub fn list(&self) -> Result<Vec<Entry>> {
        use std::collections::HashMap;
        use std::sync::Mutex;
        type Parsed = HashMap<PathBuf, (FileStamp, Entry)>;
        static READ_BEFORE: Mutex<Option<HashMap<PathBuf, Parsed>>> = Mutex::new(None);
        let dir = match std::fs::read_dir(&self.dir) {
            Ok(dir) => dir,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io("read", &self.dir)(e)),
        };
        let mut read_before = READ_BEFORE.lock().unwrap_or_else(|e| e.into_inner());
        let mut before = read_before.get_or_insert_default().remove(&self.dir).unwrap_or_default();
        let mut now = Parsed::new();
        for file in dir.flatten() {
            let path = file.path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            // Taken before the file is read: a write in between is read again next time.
            let Some(stamp) = FileStamp::of(&path) else { continue }; // removed meanwhile
            if let Some((kept, entry)) = before.remove(&path)
                && kept == stamp
            {
                now.insert(path, (stamp, entry));
                continue;
            }
            match std::fs::read(&path).map(|b| serde_json::from_slice::<Entry>(&b)) {
                Ok(Ok(entry)) => {
                    now.insert(path, (stamp, entry));
                }
                Ok(Err(e)) => tracing::warn!("catalog entry {} is damaged ({e}); skipped", path.display()),
                Err(_) => {} // removed meanwhile
            }
        }
        let mut entries: Vec<Entry> = now.values().map(|(_, entry)| entry.clone()).collect();
        read_before.get_or_insert_default().insert(self.dir.clone(), now);
        entries.sort_by(|a, b| b.created.cmp(&a.created).then_with(|| b.id.cmp(&a.id)));
        Ok(entries)
    }

    /// The entry whose ID is `id` or starts with it (as container IDs do).
    pub fn get(&self, id: &str) -> Result<Entry> {
        let not_found = || Error::invalid(format!("no catalog entry {id:?}; 'ckpt catalog ls' lists them"));
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(not_found());
        }
        // A whole ID (what retention and the daemon pass) is its own file.
        if id.len() == ID_LEN
            && let Ok(bytes) = std::fs::read(self.path(id))
            && let Ok(entry) = serde_json::from_slice::<Entry>(&bytes)
        {
            return Ok(entry);
        }
        let matches: Vec<Entry> = self.list()?.into_iter().filter(|e| e.id.starts_with(id)).collect();
        match matches.len() {
            0 => Err(not_found()),
            1 => Ok(matches.into_iter().next().expect("one")),
            n => Err(Error::invalid(format!("catalog entry ID {id:?} is ambiguous: {n} entries start with it"))),
        }
    }

    pub fn set_pinned(&self, id: &str, pinned: bool) -> Result<Entry> {
        let mut entry = self.get(id)?;
        entry.pinned = pinned;
        self.add(&entry)?;
        Ok(entry)
    }

    /// Forgets an entry (what it names is the caller's to delete first).
    pub fn forget(&self, id: &str) -> Result<()> {
        crate::util::remove_file_if_exists(&self.path(id))
    }
}

/// How many hex digits an entry ID has, as a short container ID.
const ID_LEN: usize = 12;

/// A new entry ID.
pub fn new_id() -> String {
    crate::util::random_id()[..ID_LEN].to_string()
}

/// The presence of an archive file: there, gone, or no longer what was written.
pub fn archive_presence(path: &Path, digest: Option<&str>) -> Presence {
    if !path.is_file() {
        return Presence::Missing;
    }
    match (digest, crate::util::file_digest(path)) {
        (Some(expected), Ok(actual)) if expected == actual => Presence::Present,
        (None, Ok(_)) => Presence::Present,
        _ => Presence::Changed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str, minutes: i64) -> Entry {
        Entry {
            id: id.into(),
            container_id: "c".repeat(64),
            container_name: "web".into(),
            kind: EntryKind::Archive,
            location: format!("/srv/{id}.tar.zst"),
            size_bytes: 1,
            digest: None,
            created: chrono::DateTime::from_timestamp(1_800_000_000 + minutes * 60, 0).unwrap(),
            trigger: "cli".into(),
            schedule: None,
            policy: EntryPolicy::default(),
            plan: serde_json::Value::Null,
            pinned: false,
            sealed_to: Vec::new(),
            signature: None,
        }
    }

    #[test]
    fn entries_list_newest_first_and_resolve_by_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = Catalog::new(dir.path().join("catalog"));
        assert!(catalog.list().unwrap().is_empty());
        for (id, at) in [("aaa111", 1), ("aab222", 3), ("bbb333", 2)] {
            catalog.add(&entry(id, at)).unwrap();
        }
        let ids: Vec<String> = catalog.list().unwrap().into_iter().map(|e| e.id).collect();
        assert_eq!(ids, ["aab222", "bbb333", "aaa111"]);
        assert_eq!(catalog.get("bb").unwrap().id, "bbb333");
        assert!(catalog.get("aa").unwrap_err().to_string().contains("ambiguous"));
        assert!(catalog.get("../x").unwrap_err().to_string().contains("no catalog entry"));
        assert!(catalog.set_pinned("aab", true).unwrap().pinned);
        assert!(catalog.get("aab222").unwrap().pinned);
        catalog.forget("aab222").unwrap();
        assert_eq!(catalog.list().unwrap().len(), 2);
    }

    #[test]
    fn a_listing_sees_every_change_since_the_last_one() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = Catalog::new(dir.path().join("catalog"));
        let (first, second) = (new_id(), new_id());
        catalog.add(&entry(&first, 1)).unwrap();
        catalog.add(&entry(&second, 2)).unwrap();
        assert_eq!(catalog.list().unwrap().len(), 2);
        // Rewritten, removed and damaged since: each shows in the next listing.
        catalog.set_pinned(&first, true).unwrap();
        catalog.forget(&second).unwrap();
        std::fs::write(catalog.path(&new_id()), "{").unwrap();
        let listed = catalog.list().unwrap();
        assert_eq!(listed.len(), 1);
        assert!(listed[0].pinned && listed[0].id == first);
        // A whole ID is read from its file.
        assert!(catalog.get(&first).unwrap().pinned);
        assert!(catalog.get(&second).unwrap_err().to_string().contains("no catalog entry"));
    }

    #[test]
    fn an_archive_that_changed_or_went_shows_as_such() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.tar");
        std::fs::write(&path, b"checkpoint").unwrap();
        let digest = crate::util::file_digest(&path).unwrap();
        assert_eq!(archive_presence(&path, Some(&digest)), Presence::Present);
        std::fs::write(&path, b"tampered!!").unwrap();
        assert_eq!(archive_presence(&path, Some(&digest)), Presence::Changed);
        std::fs::remove_file(&path).unwrap();
        assert_eq!(archive_presence(&path, Some(&digest)), Presence::Missing);
    }
}
