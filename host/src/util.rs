//! Small helpers shared by the store, the archive writer and the operations.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::base_error::{BaseError as Error, BaseResult as Result};

/// A 64-character hexadecimal ID, as podman gives containers.
pub fn random_id() -> String {
    let mut bytes = [0u8; 32];
    File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes)).expect("/dev/urandom is readable");
    hex::encode(bytes)
}

/// Writes `bytes` to `path` so that readers see either the old or the new content, never a mix.
/// The temporary file is created exclusively (never through a planted link), gets exactly `mode`
/// whatever the umask, and the directory is synced after the rename.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let tmp = dir.join(format!(
        ".{}.tmp-{}-{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        std::process::id(),
        &random_id()[..12]
    ));
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .mode(0o600)
        .open(&tmp)
        .map_err(Error::io("create", &tmp))?;
    let written = (|| {
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        file.write_all(bytes)?;
        file.sync_all()
    })();
    if let Err(e) = written.and_then(|()| fs::rename(&tmp, path)) {
        let _ = fs::remove_file(&tmp);
        return Err(Error::io("write", path)(e));
    }
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let mut bytes = serde_json::to_vec_pretty(value).expect("serializable state");
    bytes.push(b'\n');
    write_atomic(path, &bytes, 0o600)
}

pub fn read_json<T: DeserializeOwned>(path: &Path, what: &'static str) -> Result<T> {
    let bytes = fs::read(path).map_err(Error::io("read", path))?;
    serde_json::from_slice(&bytes).map_err(|e| Error::Corrupt { what, path: path.to_path_buf(), detail: e.to_string() })
}

/// [`read_json`], with `None` for a file that does not exist.
pub fn read_json_if_exists<T: DeserializeOwned>(path: &Path, what: &'static str) -> Result<Option<T>> {
    match fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| Error::Corrupt {
            what,
            path: path.to_path_buf(),
            detail: e.to_string(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io("read", path)(e)),
    }
}

pub fn create_dir_all(path: &Path) -> Result<()> {
    fs::create_dir_all(path).map_err(Error::io("create directory", path))
}

/// Creates `path` (and its parents, private) and gives it exactly `mode`: for the directories a
/// container sees as its own (its root, a volume), which ckpt's private umask would make 0700.
pub fn create_dir_with_mode(path: &Path, mode: u32) -> Result<()> {
    create_dir_all(path)?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(Error::io("chmod", path))
}

/// Removes a directory tree; a tree that is already gone is not an error.
pub fn remove_dir_all(path: &Path) -> Result<()> {
    match fs::remove_dir_all(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io("remove", path)(e)),
        _ => Ok(()),
    }
}

pub fn remove_file_if_exists(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io("remove", path)(e)),
        _ => Ok(()),
    }
}

/// Timestamps in the RFC 3339 form with nanoseconds that podman prints.
pub fn now() -> chrono::DateTime<chrono::Utc> {
    chrono::Utc::now()
}

/// Podman's rule for container and volume names: `[a-zA-Z0-9][a-zA-Z0-9_.-]*`.
pub fn validate_object_name(kind: &str, name: &str) -> Result<()> {
    let mut chars = name.chars();
    let valid = chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
    if valid {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "{kind} name {name:?} is invalid: use letters, digits, '_', '.' and '-', starting with a letter or digit"
        )))
    }
}

/// A private directory (tempfile's), removed with its content when dropped.
pub struct TempDir {
    pub path: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl TempDir {
    /// Removes the directory on another thread, beside what the caller does next; the returned
    /// guard waits for it. A staged archive of many MiB takes milliseconds to free, which the
    /// catalog and the audit log need not wait for.
    pub fn remove_in_background(self) -> Removing {
        Removing(Some(std::thread::spawn(move || drop(self))))
    }
}

/// A [`TempDir`] being removed; dropping this waits until it is gone.
pub struct Removing(Option<std::thread::JoinHandle<()>>);

impl Drop for Removing {
    fn drop(&mut self) {
        if let Some(removal) = self.0.take() {
            let _ = removal.join();
        }
    }
}

/// A fresh private directory under `parent` (ckpt's own roots, never a shared /tmp), named
/// `.PREFIX-PID-RANDOM`: the owner's PID lets `ckpt system check` tell a crash's leftovers from
/// work in progress.
pub fn tempdir_in(parent: &Path, prefix: &str) -> Result<TempDir> {
    create_dir_all(parent)?;
    let dir = tempfile::Builder::new()
        .prefix(&format!(".{prefix}-{}-", std::process::id()))
        .rand_bytes(TEMP_NAME_RANDOM_CHARS)
        .permissions(fs::Permissions::from_mode(0o700))
        .tempdir_in(parent)
        .map_err(Error::io("create a private directory in", parent))?;
    Ok(TempDir { path: dir.path().to_path_buf(), _dir: dir })
}

/// How many random characters follow the PID in a temporary name.
pub const TEMP_NAME_RANDOM_CHARS: usize = 16;

/// What a file is now, to tell whether it changed since: another inode (a write by atomic
/// rename, a reinstall), size or modification time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileStamp {
    ino: u64,
    size: u64,
    mtime: i64,
    mtime_nsec: i64,
}

impl FileStamp {
    pub fn of(path: &Path) -> Option<FileStamp> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(path).ok()?;
        Some(FileStamp { ino: meta.ino(), size: meta.size(), mtime: meta.mtime(), mtime_nsec: meta.mtime_nsec() })
    }
}

/// Where [`cached_probe`] also keeps its answers, for the next ckpt process: the first context's
/// run root (a tmpfs, so the answers go with a reboot).
static PROBE_ANSWERS: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// From now on, probe answers are also kept in `dir`; only the first call counts.
pub fn keep_probe_answers_in(dir: PathBuf) {
    let _ = PROBE_ANSWERS.set(dir);
}

/// The answer of `probe` about the executable `binary` (its version, say), kept for the life of
/// the process, and in [`keep_probe_answers_in`]'s directory for later ones, and asked again only
/// when the file changes (another inode, size or modification time) or the kernel does. A daemon
/// checkpointing every minute should not run `criu --version` every minute, and a single
/// checkpoint should not start `runc` three times to learn what the last one learnt.
/// Failures are never kept.
pub fn cached_probe<T, E>(
    binary: &Path,
    what: &'static str,
    probe: impl FnOnce() -> std::result::Result<T, E>,
) -> std::result::Result<T, E>
where
    T: Clone + Send + serde::Serialize + serde::de::DeserializeOwned + 'static,
{
    use std::any::Any;
    use std::collections::HashMap;
    use std::sync::Mutex;
    type Key = (PathBuf, &'static str, FileStamp);
    static CACHE: Mutex<Option<HashMap<Key, Box<dyn Any + Send>>>> = Mutex::new(None);
    let key = FileStamp::of(binary).map(|stamp| (binary.to_path_buf(), what, stamp));
    if let Some(key) = &key
        && let Some(found) = CACHE.lock().expect("probe cache").get_or_insert_default().get(key)
        && let Some(value) = found.downcast_ref::<T>()
    {
        return Ok(value.clone());
    }
    let kept = key.as_ref().and_then(|key| {
        let dir = PROBE_ANSWERS.get()?;
        let (path, what, FileStamp { ino, size, mtime, mtime_nsec }) = key;
        let key = format!("{} {what} {ino} {size} {mtime}.{mtime_nsec} {}", path.display(), crate::hostinfo::kernel());
        Some((dir.join(format!("{}.json", &blake3::hash(key.as_bytes()).to_hex()[..32])), key))
    });
    let value = match &kept {
        Some((file, key)) => kept_answer(file, key, probe)?,
        None => probe()?,
    };
    if let Some(key) = key {
        CACHE.lock().expect("probe cache").get_or_insert_default().insert(key, Box::new(value.clone()));
    }
    Ok(value)
}

/// The answer kept in `file` for `key`, or else `probe`'s, kept there if it is not a failure.
fn kept_answer<T, E>(
    file: &Path,
    key: &str,
    probe: impl FnOnce() -> std::result::Result<T, E>,
) -> std::result::Result<T, E>
where
    T: serde::Serialize + serde::de::DeserializeOwned,
{
    let kept = fs::read(file).ok().and_then(|bytes| serde_json::from_slice::<(String, T)>(&bytes).ok());
    if let Some((kept_key, value)) = kept
        && kept_key == key
    {
        return Ok(value);
    }
    let value = probe()?;
    if let Ok(bytes) = serde_json::to_vec(&(key, &value))
        && create_dir_all(file.parent().unwrap_or(Path::new("."))).is_ok()
    {
        let _ = write_atomic(file, &bytes, 0o600);
    }
    Ok(value)
}

/// What a [`HashingWriter`] feeds with the bytes that pass: a hasher, or `()` to only count.
pub trait Absorb {
    fn absorb(&mut self, bytes: &[u8]);
}

impl Absorb for blake3::Hasher {
    fn absorb(&mut self, bytes: &[u8]) {
        self.update(bytes);
    }
}

impl Absorb for sha2::Sha256 {
    fn absorb(&mut self, bytes: &[u8]) {
        sha2::Digest::update(self, bytes);
    }
}

impl Absorb for () {
    fn absorb(&mut self, _: &[u8]) {}
}

/// Hashes and counts what is written through it to `inner`.
pub struct HashingWriter<W, H> {
    pub inner: W,
    pub hasher: H,
    pub written: u64,
}

impl<W, H> HashingWriter<W, H> {
    pub fn new(inner: W, hasher: H) -> Self {
        HashingWriter { inner, hasher, written: 0 }
    }
}

impl<W: Write, H: Absorb> Write for HashingWriter<W, H> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.absorb(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// The bytes of the regular files below `dir`; what cannot be read counts as nothing.
pub fn dir_size(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|entry| match entry.metadata() {
            Ok(meta) if meta.is_dir() => dir_size(&entry.path()),
            Ok(meta) if meta.is_file() => meta.len(),
            _ => 0,
        })
        .sum()
}

/// `blake3:<hex>` of a file's content.
pub fn file_digest(path: &Path) -> Result<String> {
    let mut hasher = blake3::Hasher::new();
    hasher.update_mmap(path).map_err(Error::io("hash", path))?;
    Ok(format!("blake3:{}", hasher.finalize().to_hex()))
}

/// Text from a policy, an archive, a label or a log, made safe for a terminal: control
/// characters (C0 but newline and tab, DEL, C1) are shown as `\x1b`-style escapes, as `ls` and
/// git do, so that no escape sequence clears a screen, sets a title or writes the clipboard; so
/// are the invisible format characters (bidi overrides such as U+202E, zero-width ones, line
/// separators, tags), so that no text reads otherwise than it is.
pub fn escape_controls(text: &str) -> std::borrow::Cow<'_, str> {
    let is_format = |c: char| {
        matches!(c as u32,
            0xad | 0x61c | 0x180e | 0x200b..=0x200f | 0x2028..=0x202e | 0x2060..=0x2064 | 0x2066..=0x206f
            | 0xfeff | 0xfff9..=0xfffb | 0xe0001 | 0xe0020..=0xe007f)
    };
    let is_control = |c: char| (c.is_control() && c != '\n' && c != '\t') || c == '\u{7f}' || is_format(c);
    if !text.chars().any(is_control) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if is_control(c) {
            if (c as u32) < 0x100 {
                out.push_str(&format!("\\x{:02x}", c as u32));
            } else {
                out.push_str(&format!("\\u{{{:x}}}", c as u32));
            }
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// The first 12 characters of an ID, as podman prints them; all of a shorter one.
pub fn short_id(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

/// A Go duration: `90s`, `10m`, `1h30m`, `1.5h`, `250ms`. `None` for anything else.
pub fn parse_duration(text: &str) -> Option<std::time::Duration> {
    let mut rest = text;
    let mut total = 0f64;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let number_end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).filter(|&i| i > 0)?;
        let value: f64 = rest[..number_end].parse().ok()?;
        rest = &rest[number_end..];
        let unit_end = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let seconds = match &rest[..unit_end] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        total += value * seconds;
        rest = &rest[unit_end..];
    }
    std::time::Duration::try_from_secs_f64(total).ok()
}

/// A size as podman prints it: decimal units, three significant digits (`1.18 MB`).
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "kB", "MB", "GB", "TB", "PB"];
    let mut size = bytes as f64;
    let mut unit = 0;
    while size >= 999.5 && unit < UNITS.len() - 1 {
        size /= 1000.0;
        unit += 1;
    }
    let integer_digits = if size < 1.0 { 1 } else { size.log10().floor() as usize + 1 };
    let text = format!("{size:.*}", 3usize.saturating_sub(integer_digits));
    let text = if text.contains('.') { text.trim_end_matches('0').trim_end_matches('.') } else { &text };
    format!("{text} {}", UNITS[unit])
}

/// Gives the child `cmd` starts each descriptor at the number beside it, open across its exec
/// (CRIU's `--status-fd` and `--ps-socket` name them by number). This process's copies close
/// with `cmd`.
pub fn pass_fds(cmd: &mut std::process::Command, fds: Vec<(std::os::fd::OwnedFd, i32)>) -> std::io::Result<()> {
    use std::os::fd::{AsRawFd, FromRawFd};
    // Moved above every target first, so that placing one never closes another still to place.
    let lifted = fds
        .into_iter()
        .map(|(fd, target)| {
            // SAFETY: fcntl on a descriptor this function owns; the new one is owned at once.
            let high = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 64) };
            if high < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // SAFETY: `high` is a fresh descriptor that nothing else owns.
            Ok((unsafe { std::os::fd::OwnedFd::from_raw_fd(high) }, target))
        })
        .collect::<std::io::Result<Vec<_>>>()?;
    // SAFETY: dup2 is async-signal-safe and touches no memory; dup2 clears the copy's CLOEXEC.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(cmd, move || {
            for (fd, target) in &lifted {
                if libc::dup2(fd.as_raw_fd(), *target) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    Ok(())
}

/// The first `name` in `$PATH`.
pub fn find_in_path(name: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(name)).find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kept_probe_answer_is_reused_for_its_key_only_and_failures_are_not_kept() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("probes").join("runc.json");
        let probes = std::cell::Cell::new(0);
        let probe = |answer: Result<String, String>| {
            let probes = &probes;
            move || {
                probes.set(probes.get() + 1);
                answer
            }
        };
        assert_eq!(kept_answer(&file, "runc 1", probe(Err("no".into()))), Err::<String, _>("no".to_string()));
        assert!(!file.exists(), "a failure is not kept");
        assert_eq!(kept_answer(&file, "runc 1", probe(Ok("1.1.5".into()))).unwrap(), "1.1.5");
        assert_eq!(kept_answer(&file, "runc 1", probe(Ok("other".into()))).unwrap(), "1.1.5");
        assert_eq!(probes.get(), 2, "the kept answer stood in for the third probe");
        assert_eq!(kept_answer(&file, "runc 2", probe(Ok("1.2.0".into()))).unwrap(), "1.2.0", "a changed binary");
        std::fs::write(&file, b"not json").unwrap();
        assert_eq!(kept_answer(&file, "runc 2", probe(Ok("1.2.0".into()))).unwrap(), "1.2.0");
        assert_eq!(probes.get(), 4, "a corrupt answer is probed again");
    }

    #[test]
    fn control_characters_are_escaped_and_text_is_kept() {
        assert_eq!(escape_controls("plain\ttext\n"), "plain\ttext\n");
        assert_eq!(escape_controls("\x1b[2J\x1b]0;title\x07"), "\\x1b[2J\\x1b]0;title\\x07");
        assert_eq!(escape_controls("c1 \u{9b}31m del \u{7f} é"), "c1 \\x9b31m del \\x7f é");
        assert_eq!(escape_controls("allow\u{202e}yned\u{200b}"), "allow\\u{202e}yned\\u{200b}", "bidi and zero width");
        assert_eq!(escape_controls("données 数据"), "données 数据", "letters of any script stay");
    }

    #[test]
    fn atomic_writes_get_their_mode_whatever_the_umask_and_leave_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
        write_atomic(&path, b"one", 0o644).unwrap();
        nix::sys::stat::umask(old);
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o644);
        write_atomic(&path, b"two", 0o600).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1, "no temporary file is left");
    }

    #[test]
    fn go_durations_parse() {
        let secs = |text: &str| parse_duration(text).map(|d| d.as_secs_f64());
        assert_eq!(secs("90s"), Some(90.0));
        assert_eq!(secs("1h30m"), Some(5400.0));
        assert_eq!(secs("1.5h"), Some(5400.0));
        assert_eq!(secs("250ms"), Some(0.25));
        for bad in ["", "10", "m", "5 m", "1d", "-5s"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
    }

    #[test]
    fn sizes_read_as_podman_prints_them() {
        let cases = [
            (0, "0 B"),
            (999, "999 B"),
            (1000, "1 kB"),
            (21873, "21.9 kB"),
            (1183212, "1.18 MB"),
            (5 << 30, "5.37 GB"),
        ];
        for (bytes, text) in cases {
            assert_eq!(human_size(bytes), text, "{bytes}");
        }
    }
}
