//! The one place where the WIT world becomes Rust: every generated type lives here.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "policy",
    additional_derives: [serde::Serialize, serde::Deserialize, PartialEq],
});

pub use self::ckpt::policy::log::Level;
pub use self::ckpt::policy::types::*;

impl From<crate::archive::Compression> for Compression {
    fn from(c: crate::archive::Compression) -> Compression {
        match c {
            crate::archive::Compression::Zstd => Compression::Zstd,
            crate::archive::Compression::Gzip => Compression::Gzip,
            crate::archive::Compression::None => Compression::None,
        }
    }
}

impl From<Compression> for crate::archive::Compression {
    fn from(c: Compression) -> crate::archive::Compression {
        match c {
            Compression::Zstd => crate::archive::Compression::Zstd,
            Compression::Gzip => crate::archive::Compression::Gzip,
            Compression::None => crate::archive::Compression::None,
        }
    }
}

impl CheckpointOptions {
    /// Every option off: what a plain `ckpt checkpoint NAME` asks for.
    #[cfg(test)]
    pub fn none() -> CheckpointOptions {
        CheckpointOptions {
            leave_running: false,
            tcp_established: false,
            file_locks: false,
            keep: false,
            ignore_rootfs: false,
            ignore_volumes: false,
            print_stats: false,
            pre_checkpoint: false,
            with_previous: false,
        }
    }
}
