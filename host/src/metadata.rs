//! The names that CRIU, podman, CRI-O and containerd give to the parts of a checkpoint, kept in
//! one place as CRI-O keeps them in checkpointctl's `metadata` package: files in CRIU's images
//! directory, members of podman's archive layout, and the annotation keys of a checkpoint image.

// CRIU's images directory.

/// Written last by a dump: a directory without it is no complete checkpoint.
pub const CRIU_INVENTORY: &str = "inventory.img";
pub const CRIU_DUMP_LOG: &str = "dump.log";
pub const CRIU_RESTORE_LOG: &str = "restore.log";
pub const CRIU_STATS_DUMP: &str = "stats-dump";
pub const CRIU_STATS_RESTORE: &str = "stats-restore";

/// Whether `name` is a memory page image's file name (`pages-1.img`).
pub fn is_page_image_name(name: &str) -> bool {
    numbered(name, "pages-")
}

/// Whether `name` is a thread's core image (`core-42.img`): its registers and credentials.
pub fn is_core_image_name(name: &str) -> bool {
    numbered(name, "core-")
}

fn numbered(name: &str, prefix: &str) -> bool {
    name.strip_prefix(prefix)
        .and_then(|n| n.strip_suffix(".img"))
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

// podman's checkpoint archive (`podman container checkpoint --export`).

pub const CHECKPOINT_DIR: &str = "checkpoint";
pub const PRE_CHECKPOINT_DIR: &str = "pre-checkpoint";
pub const CONFIG_DUMP: &str = "config.dump";
pub const SPEC_DUMP: &str = "spec.dump";
pub const ROOTFS_DIFF: &str = "rootfs-diff.tar";
pub const DELETED_FILES: &str = "deleted.files";
pub const VOLUMES_DIR: &str = "volumes";
pub const CONTAINER_LOG: &str = "ctr.log";
/// What the container's networks gave it at the checkpoint: per network, its interface's MAC
/// and addresses (podman's `network.status`).
pub const NETWORK_STATUS: &str = "network.status";
/// podman's copy of its `/dev/shm` bind mount; ckpt's own `/dev/shm` is a tmpfs CRIU dumps.
pub const DEVSHM: &str = "devshm-checkpoint.tar";

// The annotations of a checkpoint image, one family per engine.

/// podman's (`podman container checkpoint --create-image`).
pub const PODMAN_ANNOTATION_PREFIX: &str = "io.podman.annotations.checkpoint.";
/// CRI-O's.
pub const CRIO_ANNOTATION_PREFIX: &str = "io.kubernetes.cri-o.annotations.checkpoint.";
/// The engine-neutral family that containerd and checkpointctl read.
pub const CRIU_ANNOTATION_PREFIX: &str = "org.criu.checkpoint.";
/// The annotation whose presence makes an image a checkpoint image for podman.
/// On a sealed checkpoint image's manifest: the public keys it is sealed to, one per line.
pub const SEALED_TO_ANNOTATION: &str = "io.ckpt.checkpoint.sealed-to";
pub const CHECKPOINT_IMAGE_KEY: &str = "io.podman.annotations.checkpoint.runtime.name";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_file_names_are_told_apart_by_their_whole_name() {
        assert!(is_page_image_name("pages-1.img") && is_core_image_name("core-42.img"));
        for not in ["pages-.img", "pages-1.img.bak", "pagemap-1.img", "pages-x.img", "core-1.img"] {
            assert!(!is_page_image_name(not), "{not}");
        }
        assert!(!is_core_image_name("core-.img") && !is_core_image_name("pages-1.img"));
        assert!(CHECKPOINT_IMAGE_KEY.starts_with(PODMAN_ANNOTATION_PREFIX));
    }
}
