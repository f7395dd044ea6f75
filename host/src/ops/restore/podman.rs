//! Restores into podman (`ckpt restore --engine podman`, `ckpt restore podman:NAME`). ckpt
//! checks and opens the checkpoint as for its own restores (the signature, the seal, the strict
//! extraction), then hands podman the plain archive through its API, as `podman container
//! restore --import` would read it. podman owns the container from then on.

use std::io::Write;
use std::path::Path;

use super::{ContainerStats, RestoreRequest, Restored};
use crate::archive::deferred::ImagesInFlight;
use crate::archive::staged::StagedCheckpoint;
use crate::error::{Error, Result};
use crate::ops::Context;
use crate::podman::{ImportOptions, PREFIX, PodmanApi};

/// What podman's restore cannot do that the request asks for: refused before anything changes.
pub(super) fn refuse_what_podman_cannot(req: &RestoreRequest) -> Result<()> {
    let refused = [
        (
            req.all || req.latest,
            "--all and --latest",
            "they pick ckpt's own containers; podman's are named podman:NAME",
        ),
        (req.keep, "--keep", "podman keeps nothing of an import but the container"),
        (req.import_previous.is_some(), "--import-previous", "podman's API takes one archive"),
        (req.lazy_pages_from.is_some(), "--lazy-pages-from", "podman's API has no lazy pages"),
        (req.create_networks, "--create-networks", "podman's networks are podman's to make"),
    ];
    match refused.iter().find(|(set, ..)| *set) {
        Some((_, flag, why)) => {
            Err(Error::invalid(format!("{flag} cannot be used for a restore into podman: {why}; nothing was changed")))
        }
        None => Ok(()),
    }
}

/// `ckpt restore podman:NAME`: podman restores its container from the checkpoint it kept.
pub(super) fn restore_kept(ctx: &Context, req: &RestoreRequest, name: &str) -> Result<Restored> {
    let api = ctx.podman();
    let started = std::time::Instant::now();
    api.restore(name, req.tcp_established)?;
    let container = api.inspect(name)?;
    Ok(restored(&container, started))
}

/// An imported checkpoint, checked and unpacked by ckpt, restored by podman.
pub(super) fn import(ctx: &Context, req: &RestoreRequest, mut staged: StagedCheckpoint) -> Result<Restored> {
    let started = std::time::Instant::now();
    staged.page_images.take().map_or(Ok(()), ImagesInFlight::wait)?;
    if super::in_private_memory(ctx, req) {
        tracing::warn!(
            "podman writes the archive it is handed to a temporary file and unpacks it into its storage, in the clear; ckpt kept {} in private memory until then",
            staged.origin
        );
    }
    let options = ImportOptions {
        name: req.name.clone(),
        tcp_established: req.tcp_established,
        file_locks: req.file_locks,
        ignore_rootfs: req.ignore_rootfs,
        ignore_volumes: req.ignore_volumes,
        ignore_static_ip: req.ignore_static_ip || req.name.is_some(),
        ignore_static_mac: req.ignore_static_mac || req.name.is_some(),
        publish_ports: req.publish.clone(),
    };
    let api = ctx.podman();
    let id = api.restore_import(&options, &mut |out| write_tar(&staged.dir.path, out))?;
    Ok(restored(&api.inspect(&id)?, started))
}

fn restored(container: &crate::podman::PodmanContainer, started: std::time::Instant) -> Restored {
    Restored {
        printed_name: format!("{PREFIX}{}", container.name),
        stats: ContainerStats {
            id: container.id.clone(),
            runtime_restore_duration: started.elapsed().as_micros() as u64,
            criu_statistics: Default::default(),
        },
    }
}

/// The unpacked checkpoint as an uncompressed tar, as podman reads an export: its members
/// relative to the top, links stored as links, never followed.
fn write_tar(dir: &Path, out: &mut dyn Write) -> std::io::Result<()> {
    let mut builder = tar::Builder::new(out);
    builder.follow_symlinks(false);
    builder.mode(tar::HeaderMode::Complete);
    let mut names: Vec<_> = std::fs::read_dir(dir)?.map(|e| e.map(|e| e.file_name())).collect::<Result<_, _>>()?;
    names.sort();
    for name in names {
        let path = dir.join(&name);
        if path.symlink_metadata()?.is_dir() {
            builder.append_dir_all(&name, &path)?;
        } else {
            builder.append_path_with_name(&path, &name)?;
        }
    }
    builder.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unpacked_checkpoint_goes_to_podman_as_the_tar_it_came_from() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("checkpoint")).unwrap();
        std::fs::write(dir.path().join("checkpoint/pages-1.img"), b"pages").unwrap();
        std::fs::write(dir.path().join("config.dump"), b"{}").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("checkpoint/link")).unwrap();
        let mut tar_bytes = Vec::new();
        write_tar(dir.path(), &mut tar_bytes).unwrap();
        let mut archive = tar::Archive::new(&tar_bytes[..]);
        let mut seen: Vec<(String, tar::EntryType)> = archive
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (e.path().unwrap().display().to_string(), e.header().entry_type())
            })
            .collect();
        seen.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            seen,
            vec![
                ("checkpoint/".into(), tar::EntryType::Directory),
                ("checkpoint/link".into(), tar::EntryType::Symlink),
                ("checkpoint/pages-1.img".into(), tar::EntryType::Regular),
                ("config.dump".into(), tar::EntryType::Regular),
            ]
        );
    }

    #[test]
    fn what_podman_cannot_do_is_refused_by_name() {
        let req = RestoreRequest { keep: true, ..Default::default() };
        let err = refuse_what_podman_cannot(&req).unwrap_err().to_string();
        assert!(err.contains("--keep cannot be used for a restore into podman"), "{err}");
        refuse_what_podman_cannot(&RestoreRequest::default()).unwrap();
    }
}
