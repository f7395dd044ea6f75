//! Container networks through netavark, podman's own network stack: network definitions in
//! netavark's JSON (the files podman keeps in `/etc/containers/networks`), an address allocator
//! per network (netavark 1.4 allocates none; podman does its own, and so does ckpt), and the
//! setup and teardown of a container's namespace by `netavark setup|teardown`.
//!
//! Networks are the host's, not one store's: bridges and firewall rules are shared by every
//! store on the machine, so the definitions (`/etc/ckpt/networks`) and the allocations
//! (`/run/ckpt/networks`) are too, and each lease names the store whose container holds it.

pub mod conntrack;
pub mod definition;
pub mod files;
pub mod ipam;
pub mod netavark;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use definition::{DefinitionStore, NetworkDef};
pub use ipam::{Ipam, Lease};
pub use netavark::{
    Netavark, NetavarkBinary, NetworkOptions, PerNetworkOptions, PortMapping, StatusBlock, read_status,
};

use crate::base_error::BaseError;

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("network {0:?} not found; create it with 'ckpt network create {0}' or list them with 'ckpt network ls'")]
    NoSuchNetwork(String),
    #[error("network {0:?} already exists; choose another name or remove it first with 'ckpt network rm {0}'")]
    Exists(String),
    #[error("network {name:?}: subnet {subnet} overlaps {other}; choose another with --subnet")]
    SubnetOverlap { name: String, subnet: String, other: String },
    #[error("network {network:?}: address {address} is already in use by container {holder:?}")]
    AddressInUse { network: String, address: Ipv4Addr, holder: String },
    #[error("network {network:?} has no free address left in {subnet}")]
    Exhausted { network: String, subnet: String },
    #[error("network {name:?} is in use by container {container:?}; remove the container first or use --force")]
    InUse { name: String, container: String },
    #[error("network {name:?}: {detail}")]
    Invalid { name: String, detail: String },
    #[error("netavark {action} of container {container:?} failed: {detail}")]
    Netavark { action: &'static str, container: String, detail: String },
    #[error(
        "conntrack could not record connection {connection} of container {container:?}, so a client outside this host may see it reset: {detail}"
    )]
    Conntrack { container: String, connection: String, detail: String },
    #[error("netavark is not installed (looked for {looked}); run scripts/setup, which installs Debian's netavark")]
    NoNetavark { looked: String },
    #[error(transparent)]
    Base(#[from] BaseError),
}

pub type Result<T, E = NetworkError> = std::result::Result<T, E>;

/// Where netavark and aardvark-dns live on Debian (`/usr/lib/podman`) and upstream
/// (`/usr/libexec/podman`).
const HELPER_DIRS: [&str; 2] = ["/usr/lib/podman", "/usr/libexec/podman"];

/// A helper binary of podman's network stack, where the distribution put it.
pub fn helper(name: &str) -> Option<PathBuf> {
    HELPER_DIRS.iter().map(|dir| Path::new(dir).join(name)).find(|path| path.is_file())
}

/// The host's networks: their definitions, their allocations and netavark.
pub struct Networks {
    pub definitions: DefinitionStore,
    pub ipam: Ipam,
    netavark: Option<Arc<dyn Netavark>>,
}

impl Networks {
    pub fn new(definitions_dir: &Path, state_dir: &Path, netavark: Option<Arc<dyn Netavark>>) -> Networks {
        Networks {
            definitions: DefinitionStore::new(definitions_dir),
            ipam: Ipam::new(&state_dir.join("ipam")),
            netavark,
        }
    }

    pub fn netavark(&self) -> Result<&dyn Netavark> {
        self.netavark.as_deref().ok_or_else(|| NetworkError::NoNetavark {
            looked: HELPER_DIRS.iter().map(|d| format!("{d}/netavark")).collect::<Vec<_>>().join(", "),
        })
    }

    /// Sets up the container's namespace as `options` say. The options are saved at `saved`
    /// first, so that a teardown after a crash at any later point knows what to undo.
    pub fn setup(&self, netns: &Path, options: &NetworkOptions, saved: &Path) -> Result<StatusBlock> {
        let netavark = self.netavark()?;
        crate::util::write_json(saved, options)?;
        match netavark.setup(netns, options) {
            Ok(status) => Ok(status),
            Err(e) => {
                // netavark leaves what it made before it failed (an interface, a rule).
                let _ = netavark.teardown(netns, options);
                let _ = crate::util::remove_file_if_exists(saved);
                Err(e)
            }
        }
    }

    /// Undoes [`Networks::setup`] from the options saved there, and releases the container's
    /// addresses; nothing saved means nothing to undo. A namespace already gone (a reboot) only
    /// needs its addresses released.
    pub fn teardown(&self, netns: &Path, saved: &Path, store: &Path) -> Result<()> {
        let Some(options) = crate::util::read_json_if_exists::<NetworkOptions>(saved, "network options")? else {
            return Ok(());
        };
        // netavark stops at the first thing already gone (a veth the kernel removed with its
        // namespace) and says so; what it could remove is removed, and the addresses go anyway,
        // as podman goes on after a failed teardown.
        if crate::rootfs::is_mountpoint(netns)
            && let Err(e) = self.netavark()?.teardown(netns, &options)
        {
            tracing::warn!("{}", crate::util::escape_controls(&e.to_string()));
        }
        for network in options.networks.keys() {
            self.ipam.release(network, &options.container_id, store)?;
        }
        crate::util::remove_file_if_exists(saved)?;
        Ok(())
    }
}
