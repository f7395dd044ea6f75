//! The one place where the WIT world becomes Rust: every generated type lives here.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "policy",
    additional_derives: [serde::Serialize, serde::Deserialize, PartialEq],
});

pub use self::ckpt::policy::log::Level;
pub use self::ckpt::policy::types::*;
