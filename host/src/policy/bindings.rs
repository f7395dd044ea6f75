//! The one place where the WIT world becomes Rust: every generated type lives here.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "policy",
    additional_derives: [serde::Serialize, serde::Deserialize, PartialEq],
});

pub use ckpt::policy::log::Level;
pub use ckpt::policy::types::*;
