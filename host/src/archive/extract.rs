//! A strict tar extractor for input ckpt does not trust (imported checkpoints, image layers).
//!
//! Every member path is checked component by component, no existing symlink is ever followed,
//! and the output is bounded, because tar readers have had escape and bomb bugs again and again.

use std::collections::HashSet;
use std::fs::{self, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use tar::EntryType;

use super::ArchiveError;

#[derive(Debug, Clone, Copy)]
pub struct ExtractLimits {
    pub max_total_bytes: u64,
    pub max_entries: u64,
    pub max_path_len: usize,
}

impl Default for ExtractLimits {
    fn default() -> Self {
        ExtractLimits { max_total_bytes: 64 << 30, max_entries: 1_000_000, max_path_len: 4096 }
    }
}

#[derive(Debug, Clone, Default)]
pub struct ExtractOptions {
    pub limits: ExtractLimits,
    /// Image layers: `.wh.` members delete what lower layers put there.
    pub whiteouts: bool,
    /// Image layers may carry device nodes; checkpoint members never may.
    pub allow_devices: bool,
    /// Restore owners and modes from the archive.
    pub preserve_owners: bool,
}

/// Extracts `reader` into `dest`, which must exist. Returns the member paths written.
pub fn extract(
    reader: impl Read,
    dest: &Path,
    name: &str,
    options: &ExtractOptions,
) -> Result<Vec<PathBuf>, ArchiveError> {
    let mut archive = tar::Archive::new(reader);
    let refuse = |member: &Path, reason: &str| ArchiveError::Refused {
        archive: name.to_string(),
        member: member.display().to_string(),
        reason: reason.to_string(),
    };
    let io_err = |action: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source: io::Error| ArchiveError::Io { archive: name.to_string(), action, path, source }
    };
    let mut total: u64 = 0;
    let mut count: u64 = 0;
    let mut written = Vec::new();
    let mut dirs_with_modes = Vec::new();
    let mut seen = HashSet::new();
    let entries =
        archive.entries().map_err(|e| ArchiveError::Malformed { archive: name.to_string(), detail: e.to_string() })?;
    for entry in entries {
        let mut entry =
            entry.map_err(|e| ArchiveError::Malformed { archive: name.to_string(), detail: e.to_string() })?;
        count += 1;
        if count > options.limits.max_entries {
            return Err(ArchiveError::TooLarge {
                archive: name.to_string(),
                reason: format!("more than {} members", options.limits.max_entries),
            });
        }
        let raw_path = entry
            .path()
            .map_err(|e| ArchiveError::Malformed { archive: name.to_string(), detail: e.to_string() })?
            .into_owned();
        if raw_path.as_os_str().len() > options.limits.max_path_len {
            return Err(refuse(&raw_path, "path is too long"));
        }
        let Some(rel) = clean_relative(&raw_path) else {
            return Err(refuse(&raw_path, "path is absolute or contains '..'"));
        };
        if rel.as_os_str().is_empty() {
            continue; // the archive's own root, "./"
        }
        let kind = entry.header().entry_type();
        if options.whiteouts
            && let Some(file_name) = rel.file_name().and_then(|n| n.to_str())
            && let Some(hidden) = file_name.strip_prefix(".wh.")
        {
            let parent = ensure_parent(dest, &rel, &refuse, &io_err)?;
            if hidden == ".wh..opq" {
                clear_dir(&parent).map_err(io_err("clear", &parent))?;
            } else {
                remove_any(&parent.join(hidden)).map_err(io_err("remove", &parent))?;
            }
            continue;
        }
        let size = entry.header().size().unwrap_or(0);
        total = total.saturating_add(size);
        if total > options.limits.max_total_bytes {
            return Err(ArchiveError::TooLarge {
                archive: name.to_string(),
                reason: format!("more than {} bytes of content", options.limits.max_total_bytes),
            });
        }
        let parent = ensure_parent(dest, &rel, &refuse, &io_err)?;
        let target = parent.join(rel.file_name().expect("a cleaned path has a last component"));
        let mode = entry.header().mode().unwrap_or(0o644) & 0o7777;
        match kind {
            EntryType::Directory => {
                match fs::symlink_metadata(&target) {
                    Ok(meta) if meta.is_dir() => {}
                    Ok(_) => {
                        remove_any(&target).map_err(io_err("replace", &target))?;
                        fs::create_dir(&target).map_err(io_err("create directory", &target))?;
                    }
                    Err(_) => fs::create_dir(&target).map_err(io_err("create directory", &target))?,
                }
                dirs_with_modes.push((target.clone(), mode));
            }
            EntryType::Regular | EntryType::Continuous => {
                remove_non_dir(&target).map_err(io_err("replace", &target))?;
                let mut file = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .custom_flags(libc::O_NOFOLLOW)
                    .mode(0o600)
                    .open(&target)
                    .map_err(io_err("create", &target))?;
                let copied = io::copy(&mut (&mut entry).take(size), &mut file).map_err(io_err("write", &target))?;
                if copied != size {
                    return Err(ArchiveError::Malformed {
                        archive: name.to_string(),
                        detail: format!("member {:?} is truncated", rel.display()),
                    });
                }
                fs::set_permissions(&target, fs::Permissions::from_mode(mode)).map_err(io_err("chmod", &target))?;
            }
            EntryType::Symlink => {
                let link = entry
                    .link_name()
                    .map_err(|e| ArchiveError::Malformed { archive: name.to_string(), detail: e.to_string() })?
                    .ok_or_else(|| refuse(&rel, "symlink without a target"))?;
                remove_non_dir(&target).map_err(io_err("replace", &target))?;
                // The link is created as it is, but never followed by ckpt: every later member
                // is resolved with lstat, component by component.
                std::os::unix::fs::symlink(&link, &target).map_err(io_err("create symlink", &target))?;
            }
            EntryType::Link => {
                let link = entry
                    .link_name()
                    .map_err(|e| ArchiveError::Malformed { archive: name.to_string(), detail: e.to_string() })?
                    .ok_or_else(|| refuse(&rel, "hard link without a target"))?;
                let Some(link_rel) = clean_relative(&link) else {
                    return Err(refuse(&rel, "hard link target is absolute or contains '..'"));
                };
                let link_parent = ensure_parent_existing(dest, &link_rel).ok_or_else(|| {
                    refuse(&rel, "hard link target is outside the archive or passes through a symlink")
                })?;
                let source = link_parent.join(link_rel.file_name().unwrap_or_default());
                if !seen.contains(&link_rel) {
                    return Err(refuse(&rel, "hard link target is not an earlier member of the archive"));
                }
                remove_non_dir(&target).map_err(io_err("replace", &target))?;
                fs::hard_link(&source, &target).map_err(io_err("create hard link", &target))?;
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo if options.allow_devices => {
                remove_non_dir(&target).map_err(io_err("replace", &target))?;
                let dev_kind = match kind {
                    EntryType::Char => nix::sys::stat::SFlag::S_IFCHR,
                    EntryType::Block => nix::sys::stat::SFlag::S_IFBLK,
                    _ => nix::sys::stat::SFlag::S_IFIFO,
                };
                let major = entry.header().device_major().ok().flatten().unwrap_or(0) as u64;
                let minor = entry.header().device_minor().ok().flatten().unwrap_or(0) as u64;
                nix::sys::stat::mknod(
                    &target,
                    dev_kind,
                    nix::sys::stat::Mode::from_bits_truncate(mode),
                    nix::sys::stat::makedev(major, minor),
                )
                .map_err(|e| io_err("create device", &target)(e.into()))?;
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                return Err(refuse(&rel, "device and FIFO members are not allowed here"));
            }
            EntryType::XHeader | EntryType::XGlobalHeader | EntryType::GNULongName | EntryType::GNULongLink => continue,
            other => return Err(refuse(&rel, &format!("member type {other:?} is not supported"))),
        }
        if options.preserve_owners {
            let uid = entry.header().uid().unwrap_or(0) as u32;
            let gid = entry.header().gid().unwrap_or(0) as u32;
            std::os::unix::fs::lchown(&target, Some(uid), Some(gid)).map_err(io_err("chown", &target))?;
        }
        seen.insert(rel.clone());
        written.push(rel);
    }
    // Directory modes last, so that a read-only directory does not stop its own members.
    for (dir, mode) in dirs_with_modes.into_iter().rev() {
        fs::set_permissions(&dir, fs::Permissions::from_mode(mode)).map_err(io_err("chmod", &dir))?;
    }
    Ok(written)
}

/// `a/./b/` → `a/b`; `None` for absolute paths and any `..`.
pub fn clean_relative(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// Creates the parent directories of `rel` under `dest`, refusing to pass through any symlink.
fn ensure_parent<F, G, H>(dest: &Path, rel: &Path, refuse: &F, io_err: &G) -> Result<PathBuf, ArchiveError>
where
    F: Fn(&Path, &str) -> ArchiveError,
    G: Fn(&'static str, &Path) -> H,
    H: FnOnce(io::Error) -> ArchiveError,
{
    let mut current = dest.to_path_buf();
    let Some(parent) = rel.parent() else { return Ok(current) };
    for part in parent.components() {
        current.push(part);
        match fs::symlink_metadata(&current) {
            Ok(meta) if meta.is_dir() => {}
            Ok(meta) if meta.file_type().is_symlink() => {
                return Err(refuse(rel, "a parent directory is a symlink"));
            }
            Ok(_) => return Err(refuse(rel, "a parent path is not a directory")),
            Err(_) => fs::create_dir(&current).map_err(io_err("create directory", &current))?,
        }
    }
    Ok(current)
}

/// Like `ensure_parent`, but only for directories that exist already.
fn ensure_parent_existing(dest: &Path, rel: &Path) -> Option<PathBuf> {
    let mut current = dest.to_path_buf();
    for part in rel.parent()?.components() {
        current.push(part);
        if !fs::symlink_metadata(&current).ok()?.is_dir() {
            return None;
        }
    }
    Some(current)
}

fn remove_non_dir(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(_) => Ok(()),
    }
}

fn remove_any(path: &Path) -> io::Result<()> {
    remove_non_dir(path)
}

fn clear_dir(dir: &Path) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        remove_any(&entry?.path())?;
    }
    Ok(())
}
