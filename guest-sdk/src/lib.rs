//! The crate policy authors use to write ckpt policies (see the WIT contract in `wit/`).
