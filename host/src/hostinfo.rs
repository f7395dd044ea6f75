//! What this host is, probed in one place: kernel, architecture, cgroup version, distribution
//! and free disk. The policy facts, the checkpoint image annotations and CRIU's probe cache all
//! read it from here.

use std::path::Path;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostInfo {
    /// `uname -r`.
    pub kernel: String,
    /// The OCI name: `amd64`, `arm64`, ...
    pub arch: &'static str,
    pub cgroup_v2: bool,
    /// `ID` and `VERSION_ID` of /etc/os-release, `unknown` when missing.
    pub distribution: String,
    pub distribution_version: String,
    /// Free bytes for ckpt on the filesystem of its root.
    pub free_disk_bytes: u64,
}

impl HostInfo {
    pub fn probe(root: &Path) -> HostInfo {
        let os_release = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
        HostInfo {
            kernel: kernel(),
            arch: oci_arch(),
            cgroup_v2: cgroup_v2(),
            distribution: os_release_field(&os_release, "ID"),
            distribution_version: os_release_field(&os_release, "VERSION_ID"),
            free_disk_bytes: free_disk_bytes(root),
        }
    }

    pub fn cgroups_version(&self) -> &'static str {
        if self.cgroup_v2 { "v2" } else { "v1" }
    }
}

pub fn kernel() -> String {
    nix::sys::utsname::uname().map(|u| u.release().to_string_lossy().into_owned()).unwrap_or_default()
}

pub fn cgroup_v2() -> bool {
    Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
}

pub fn oci_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// Free bytes on `path`'s filesystem for an unprivileged writer; `None` when it cannot be asked.
pub fn free_bytes(path: &Path) -> Option<u64> {
    nix::sys::statvfs::statvfs(path).ok().map(|s| s.blocks_available().saturating_mul(s.fragment_size()))
}

/// The size of `path`'s filesystem.
pub fn filesystem_bytes(path: &Path) -> Option<u64> {
    nix::sys::statvfs::statvfs(path).ok().map(|s| s.blocks().saturating_mul(s.fragment_size()))
}

/// Free bytes on `path`'s filesystem, or on `/` when `path` is not there yet.
pub fn free_disk_bytes(path: &Path) -> u64 {
    free_bytes(path).or_else(|| free_bytes(Path::new("/"))).unwrap_or(0)
}

/// Whether this process holds capability number `cap` in its effective set (`CapEff` in
/// /proc/self/status).
pub fn has_capability(cap: u32) -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|effective| cap < 64 && effective & (1 << cap) != 0)
}

/// The kernel's estimate of the memory that can be had without swapping (`MemAvailable`).
pub fn memory_available() -> Option<u64> {
    meminfo_bytes(&std::fs::read_to_string("/proc/meminfo").ok()?, "MemAvailable")
}

fn meminfo_bytes(text: &str, name: &str) -> Option<u64> {
    let line = text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))?;
    let kib: u64 = line.trim().strip_suffix("kB")?.trim().parse().ok()?;
    Some(kib << 10)
}

fn os_release_field(text: &str, name: &str) -> String {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix('=')))
        .map(|v| v.trim_matches('"').to_string())
        .unwrap_or_else(|| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_is_read_in_bytes() {
        let text = "MemTotal:       24683520 kB\nMemFree:         7775760 kB\nMemAvailable:   18728516 kB\n";
        assert_eq!(meminfo_bytes(text, "MemAvailable"), Some(18728516 << 10));
        assert_eq!(meminfo_bytes(text, "Mem"), None);
        assert_eq!(meminfo_bytes(text, "SwapTotal"), None);
    }

    #[test]
    fn os_release_fields_are_read_without_quotes() {
        let text = "PRETTY_NAME=\"Debian GNU/Linux 12\"\nVERSION_ID=\"12\"\nID=debian\n";
        assert_eq!(os_release_field(text, "ID"), "debian");
        assert_eq!(os_release_field(text, "VERSION_ID"), "12");
        assert_eq!(os_release_field(text, "VERSION_CODENAME"), "unknown");
    }

    #[test]
    fn the_probe_answers_on_any_linux() {
        let info = HostInfo::probe(Path::new("/"));
        assert!(!info.kernel.is_empty() && !info.arch.is_empty());
        assert!(info.free_disk_bytes > 0);
    }
}
