//! Address allocation, one file per network, as podman keeps a bucket per network in its
//! `ipam.db`: addresses are handed out in turn after the last one given, skipping the network,
//! gateway and broadcast addresses, and a static request fails if the address is taken. Each
//! change is made under the network's lock and written whole, so a crash leaves the old file or
//! the new one; a lease whose container is gone is what `ckpt system check` releases.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{NetworkDef, NetworkError, Result};

/// Who holds an address: a container of one store (its root directory).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub container: String,
    pub store: PathBuf,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Allocations {
    last: Option<Ipv4Addr>,
    leases: BTreeMap<Ipv4Addr, Lease>,
}

pub struct Ipam {
    dir: PathBuf,
}

impl Ipam {
    pub fn new(dir: &Path) -> Ipam {
        Ipam { dir: dir.to_path_buf() }
    }

    fn path(&self, network: &str) -> PathBuf {
        self.dir.join(format!("{network}.json"))
    }

    /// Runs `change` on the network's allocations under its lock, and saves them if it succeeds.
    fn change<T>(&self, network: &str, change: impl FnOnce(&mut Allocations) -> Result<T>) -> Result<T> {
        crate::util::create_dir_all(&self.dir)?;
        let _lock = crate::store::StoreLock::named(&self.dir, &format!(".{network}"))?;
        let mut allocations = self.read(network)?;
        let outcome = change(&mut allocations)?;
        let text = serde_json::to_vec_pretty(&allocations).expect("allocations serialise");
        crate::util::write_atomic(&self.path(network), &text, 0o600)?;
        Ok(outcome)
    }

    fn read(&self, network: &str) -> Result<Allocations> {
        Ok(crate::util::read_json_if_exists(&self.path(network), "address allocations")?.unwrap_or_default())
    }

    /// An address on `network` for `lease`: `wanted` if given (and free, or already this
    /// container's), else the next free one.
    pub fn allocate(&self, network: &NetworkDef, lease: &Lease, wanted: Option<Ipv4Addr>) -> Result<Ipv4Addr> {
        let subnet = network.subnet().subnet;
        let gateway = network.gateway();
        let usable = |ip: Ipv4Addr| {
            subnet.contains(&ip) && ip != subnet.network() && ip != subnet.broadcast() && Some(ip) != gateway
        };
        self.change(&network.name, |allocations| {
            if let Some(ip) = wanted {
                if !usable(ip) {
                    return Err(NetworkError::Invalid {
                        name: network.name.clone(),
                        detail: format!(
                            "address {ip} cannot be given to a container: it is not a host address of {subnet} other than its gateway"
                        ),
                    });
                }
                match allocations.leases.get(&ip) {
                    Some(holder) if holder != lease => {
                        return Err(NetworkError::AddressInUse {
                            network: network.name.clone(),
                            address: ip,
                            holder: holder.container.clone(),
                        });
                    }
                    _ => {}
                }
                allocations.leases.insert(ip, lease.clone());
                return Ok(ip);
            }
            let first = u32::from(subnet.network()) + 1;
            let last = u32::from(subnet.broadcast()) - 1;
            let start = allocations.last.map_or(first, |ip| u32::from(ip) + 1);
            let span = last - first + 1;
            let found = (0..span)
                .map(|offset| Ipv4Addr::from(first + (start.saturating_sub(first) + offset) % span))
                .find(|ip| usable(*ip) && !allocations.leases.contains_key(ip))
                .ok_or_else(|| NetworkError::Exhausted { network: network.name.clone(), subnet: subnet.to_string() })?;
            allocations.leases.insert(found, lease.clone());
            allocations.last = Some(found);
            Ok(found)
        })
    }

    /// Releases every address the container holds on `network`; none is not an error.
    pub fn release(&self, network: &str, container: &str, store: &Path) -> Result<()> {
        if !self.path(network).exists() {
            return Ok(());
        }
        self.change(network, |allocations| {
            allocations.leases.retain(|_, lease| !(lease.container == container && lease.store == store));
            Ok(())
        })
    }

    /// Forgets a removed network's allocations; refused while any address on it is held.
    pub fn forget(&self, network: &str) -> Result<()> {
        if let Some((ip, lease)) = self.read(network)?.leases.into_iter().next() {
            return Err(NetworkError::AddressInUse { network: network.into(), address: ip, holder: lease.container });
        }
        crate::util::remove_file_if_exists(&self.path(network))?;
        Ok(())
    }

    /// Every lease, by network and address.
    pub fn leases(&self) -> Result<Vec<(String, Ipv4Addr, Lease)>> {
        let mut found = Vec::new();
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return Ok(found) };
        for entry in entries.flatten() {
            let file = entry.file_name().to_string_lossy().into_owned();
            let Some(network) = file.strip_suffix(".json") else { continue };
            for (ip, lease) in self.read(network)?.leases {
                found.push((network.to_string(), ip, lease));
            }
        }
        found.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::DefinitionStore;

    fn small_network() -> NetworkDef {
        let mut network = DefinitionStore::default_network();
        network.name = "small".into();
        network.subnets[0].subnet = "10.9.9.0/29".parse().unwrap();
        network.subnets[0].gateway = Some("10.9.9.1".parse().unwrap());
        network
    }

    fn lease(container: &str) -> Lease {
        Lease { container: container.into(), store: "/var/lib/ckpt".into() }
    }

    #[test]
    fn addresses_go_in_turn_skip_the_gateway_and_run_out_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let ipam = Ipam::new(dir.path());
        let network = small_network();
        let got: Vec<String> =
            ["a", "b", "c"].iter().map(|c| ipam.allocate(&network, &lease(c), None).unwrap().to_string()).collect();
        assert_eq!(got, ["10.9.9.2", "10.9.9.3", "10.9.9.4"]);
        ipam.release("small", "b", Path::new("/var/lib/ckpt")).unwrap();
        // In turn after the last one given, not the lowest free: a released address is not
        // handed to the next container at once.
        assert_eq!(ipam.allocate(&network, &lease("d"), None).unwrap().to_string(), "10.9.9.5");
        assert_eq!(ipam.allocate(&network, &lease("e"), None).unwrap().to_string(), "10.9.9.6");
        assert_eq!(ipam.allocate(&network, &lease("f"), None).unwrap().to_string(), "10.9.9.3");
        let full = ipam.allocate(&network, &lease("g"), None).unwrap_err().to_string();
        assert!(full.contains("no free address left in 10.9.9.0/29"), "{full}");
    }

    #[test]
    fn a_static_address_is_given_once_and_only_inside_the_subnet() {
        let dir = tempfile::tempdir().unwrap();
        let ipam = Ipam::new(dir.path());
        let network = small_network();
        let wanted = Some("10.9.9.5".parse().unwrap());
        assert_eq!(ipam.allocate(&network, &lease("a"), wanted).unwrap().to_string(), "10.9.9.5");
        assert_eq!(ipam.allocate(&network, &lease("a"), wanted).unwrap().to_string(), "10.9.9.5", "its own again");
        let taken = ipam.allocate(&network, &lease("b"), wanted).unwrap_err().to_string();
        assert!(taken.contains("10.9.9.5 is already in use by container \"a\""), "{taken}");
        let other_store = Lease { container: "a".into(), store: "/srv/other".into() };
        assert!(ipam.allocate(&network, &other_store, wanted).is_err(), "the same ID in another store");
        for bad in ["10.9.9.1", "10.9.9.0", "10.9.9.7", "10.9.8.2"] {
            assert!(ipam.allocate(&network, &lease("c"), Some(bad.parse().unwrap())).is_err(), "{bad}");
        }
        assert_eq!(ipam.leases().unwrap().len(), 1);
    }
}
