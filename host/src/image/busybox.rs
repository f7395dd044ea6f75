//! The built-in `busybox` image, assembled from the host's busybox-static so that the main job
//! needs nothing from the network.

use std::path::Path;
use std::process::Command;

use super::ImageError;

pub const BUILTIN_BUSYBOX: &str = "busybox:latest";
const HOST_BUSYBOX: &str = "/bin/busybox";

/// A gzip-compressed tar of the rootfs: `/bin/busybox`, one symlink per applet, and the few
/// files every container expects.
pub fn build_layer() -> Result<Vec<u8>, ImageError> {
    let no_busybox = |detail: String| ImageError::NoBusybox { path: HOST_BUSYBOX.into(), detail };
    let binary = std::fs::read(HOST_BUSYBOX).map_err(|e| no_busybox(e.to_string()))?;
    let list = Command::new(HOST_BUSYBOX).arg("--list").output().map_err(|e| no_busybox(e.to_string()))?;
    if !list.status.success() {
        return Err(no_busybox(format!("'busybox --list' failed: {}", list.status)));
    }
    let applets = String::from_utf8_lossy(&list.stdout).into_owned();
    let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default()));
    let add_dir = |b: &mut tar::Builder<_>, path: &str, mode: u32| {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Directory);
        header.set_mode(mode);
        header.set_size(0);
        header.set_mtime(0);
        b.append_data(&mut header, path, std::io::empty())
    };
    let io = |e: std::io::Error| no_busybox(e.to_string());
    for (dir, mode) in [
        ("bin", 0o755),
        ("dev", 0o755),
        ("etc", 0o755),
        ("home", 0o755),
        ("proc", 0o555),
        ("root", 0o700),
        ("run", 0o755),
        ("sys", 0o555),
        ("tmp", 0o1777),
        ("usr", 0o755),
        ("usr/bin", 0o755),
        ("var", 0o755),
        ("var/log", 0o755),
    ] {
        add_dir(&mut builder, dir, mode).map_err(io)?;
    }
    append_file(&mut builder, "bin/busybox", &binary, 0o755).map_err(io)?;
    for applet in applets.lines().map(str::trim).filter(|a| !a.is_empty()) {
        // Linking `busybox` to itself would replace the binary with a loop.
        if applet == "busybox" || applet.contains('/') {
            continue;
        }
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Symlink);
        header.set_mode(0o777);
        header.set_size(0);
        header.set_mtime(0);
        builder.append_link(&mut header, Path::new("bin").join(applet), "busybox").map_err(io)?;
    }
    append_file(
        &mut builder,
        "etc/passwd",
        b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/home:/bin/false\n",
        0o644,
    )
    .map_err(io)?;
    append_file(&mut builder, "etc/group", b"root:x:0:\nnogroup:x:65534:\n", 0o644).map_err(io)?;
    append_file(&mut builder, "etc/motd", b"Welcome to the ckpt built-in busybox image.\n", 0o644).map_err(io)?;
    let encoder = builder.into_inner().map_err(io)?;
    encoder.finish().map_err(io)
}

fn append_file<W: std::io::Write>(
    builder: &mut tar::Builder<W>,
    path: &str,
    data: &[u8],
    mode: u32,
) -> std::io::Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Regular);
    header.set_mode(mode);
    header.set_size(data.len() as u64);
    header.set_mtime(0);
    builder.append_data(&mut header, path, data)
}
