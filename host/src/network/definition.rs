//! Network definitions in netavark's JSON, the shape podman writes to
//! `/etc/containers/networks/NAME.json` and sends to netavark as `network_info`.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use super::{NetworkError, Result};
use crate::base_error::BaseError;

/// The default network is not stored: it always exists. Its subnet is not podman's
/// 10.88.0.0/16, which podman's own bridge holds on a host that runs both; like podman's
/// default, it has no DNS.
pub use crate::config::DEFAULT_NETWORK;
const DEFAULT_SUBNET: &str = "10.90.0.0/16";
const DEFAULT_BRIDGE: &str = "ckpt0";
/// Fixed, as podman's default network's ID is, so that every host gives it the same one.
const DEFAULT_ID: &str = "c4a7c0a1d9f1e5b3a2c8e7f6d5b4a3928170f6e5d4c3b2a1908f7e6d5c4b3a29";
/// User networks take the first free /24 from here, as podman takes them from 10.89.0.0/16.
const FIRST_USER_SUBNET: [u8; 2] = [10, 91];
/// Names that mean something else to `--network`.
const RESERVED: [&str; 6] = ["none", "host", "bridge", "private", "container", "ns"];

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subnet {
    pub subnet: Ipv4Net,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<Ipv4Addr>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkDef {
    pub name: String,
    pub id: String,
    pub driver: String,
    pub network_interface: String,
    pub created: String,
    pub subnets: Vec<Subnet>,
    pub ipv6_enabled: bool,
    pub internal: bool,
    pub dns_enabled: bool,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub options: BTreeMap<String, String>,
    pub ipam_options: BTreeMap<String, String>,
}

impl NetworkDef {
    pub fn subnet(&self) -> &Subnet {
        &self.subnets[0]
    }

    pub fn gateway(&self) -> Option<Ipv4Addr> {
        self.subnet().gateway
    }

    pub fn is_default(&self) -> bool {
        self.name == DEFAULT_NETWORK
    }
}

/// What `network create` asks for.
#[derive(Debug, Clone, Default)]
pub struct CreateRequest {
    pub name: String,
    pub subnet: Option<Ipv4Net>,
    pub gateway: Option<Ipv4Addr>,
    pub internal: bool,
    pub labels: BTreeMap<String, String>,
    /// Whether aardvark-dns serves names on it (podman's default when aardvark is installed).
    pub dns: bool,
}

pub struct DefinitionStore {
    dir: PathBuf,
}

impl DefinitionStore {
    pub fn new(dir: &Path) -> DefinitionStore {
        DefinitionStore { dir: dir.to_path_buf() }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.json"))
    }

    pub fn default_network() -> NetworkDef {
        let subnet: Ipv4Net = DEFAULT_SUBNET.parse().expect("a valid subnet");
        NetworkDef {
            name: DEFAULT_NETWORK.into(),
            id: DEFAULT_ID.into(),
            driver: "bridge".into(),
            network_interface: DEFAULT_BRIDGE.into(),
            created: "2026-12-06T00:00:00Z".into(),
            subnets: vec![Subnet { subnet, gateway: Some(first_host(&subnet)) }],
            ipv6_enabled: false,
            internal: false,
            dns_enabled: false,
            labels: BTreeMap::new(),
            options: BTreeMap::new(),
            ipam_options: BTreeMap::from([("driver".to_string(), "host-local".to_string())]),
        }
    }

    pub fn get(&self, name: &str) -> Result<NetworkDef> {
        if name == DEFAULT_NETWORK {
            return Ok(DefinitionStore::default_network());
        }
        if crate::util::validate_object_name("network", name).is_err() {
            return Err(NetworkError::NoSuchNetwork(name.to_string()));
        }
        crate::util::read_json_if_exists(&self.path(name), "network definition")?
            .ok_or_else(|| NetworkError::NoSuchNetwork(name.to_string()))
    }

    /// Every network, the default first, then by name.
    pub fn list(&self) -> Result<Vec<NetworkDef>> {
        let mut found = Vec::new();
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![DefinitionStore::default_network()]),
            Err(e) => return Err(BaseError::io("read", &self.dir)(e).into()),
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(name) = name.strip_suffix(".json")
                && !name.starts_with('.')
            {
                found.push(self.get(name)?);
            }
        }
        found.sort_by(|a, b| a.name.cmp(&b.name));
        found.insert(0, DefinitionStore::default_network());
        Ok(found)
    }

    /// Writes a new definition: a subnet of its own (the first free /24 unless given), a
    /// gateway in it, and a bridge name no other network or host interface has.
    pub fn create(&self, request: &CreateRequest, host_routes: &[Ipv4Net]) -> Result<NetworkDef> {
        let name = &request.name;
        let invalid = |detail: String| NetworkError::Invalid { name: name.clone(), detail };
        crate::util::validate_object_name("network", name)?;
        if RESERVED.contains(&name.as_str()) || name == DEFAULT_NETWORK {
            return Err(if name == DEFAULT_NETWORK {
                NetworkError::Exists(name.clone())
            } else {
                invalid(format!("the name {name:?} means something else to --network; choose another"))
            });
        }
        crate::util::create_dir_all(&self.dir)?;
        let _lock = self.lock()?;
        if self.path(name).exists() {
            return Err(NetworkError::Exists(name.clone()));
        }
        let existing = self.list()?;
        let taken: Vec<(String, Ipv4Net)> = existing
            .iter()
            .map(|n| (format!("network {:?}", n.name), n.subnet().subnet))
            .chain(host_routes.iter().map(|r| (format!("the host's route to {r}"), *r)))
            .collect();
        let overlapping = |candidate: &Ipv4Net| {
            taken.iter().find(|(_, other)| other.contains(&candidate.network()) || candidate.contains(&other.network()))
        };
        let subnet = match request.subnet {
            Some(subnet) => {
                if subnet.prefix_len() > 30 {
                    return Err(invalid(format!("subnet {subnet} is too small: it holds no address for a container")));
                }
                let subnet = subnet.trunc();
                if let Some((other, _)) = overlapping(&subnet) {
                    return Err(NetworkError::SubnetOverlap {
                        name: name.clone(),
                        subnet: subnet.to_string(),
                        other: other.clone(),
                    });
                }
                subnet
            }
            None => (0..=255u8)
                .map(|third| {
                    let [a, b] = FIRST_USER_SUBNET;
                    Ipv4Net::new(Ipv4Addr::new(a, b, third, 0), 24).expect("a /24")
                })
                .find(|candidate| overlapping(candidate).is_none())
                .ok_or_else(|| invalid("no free /24 is left in 10.91.0.0/16; give one with --subnet".into()))?,
        };
        let gateway = match request.gateway {
            Some(gateway) if !subnet.contains(&gateway) => {
                return Err(invalid(format!("gateway {gateway} is not in subnet {subnet}")));
            }
            Some(gateway) if gateway == subnet.network() || gateway == subnet.broadcast() => {
                return Err(invalid(format!("gateway {gateway} is the network or broadcast address of {subnet}")));
            }
            Some(gateway) => gateway,
            None => first_host(&subnet),
        };
        let used: Vec<&str> = existing.iter().map(|n| n.network_interface.as_str()).collect();
        let bridge = (1..)
            .map(|n| format!("ckpt{n}"))
            .find(|b| !used.contains(&b.as_str()) && !Path::new("/sys/class/net").join(b).exists())
            .expect("an unused bridge name");
        let definition = NetworkDef {
            name: name.clone(),
            id: crate::util::random_id(),
            driver: "bridge".into(),
            network_interface: bridge,
            created: crate::util::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
            subnets: vec![Subnet { subnet, gateway: Some(gateway) }],
            ipv6_enabled: false,
            internal: request.internal,
            dns_enabled: request.dns,
            labels: request.labels.clone(),
            options: BTreeMap::new(),
            ipam_options: BTreeMap::from([("driver".to_string(), "host-local".to_string())]),
        };
        let text = serde_json::to_vec_pretty(&definition).expect("a definition serialises");
        crate::util::write_atomic(&self.path(name), &text, 0o644)?;
        Ok(definition)
    }

    pub fn remove(&self, name: &str) -> Result<()> {
        if name == DEFAULT_NETWORK {
            return Err(NetworkError::Invalid {
                name: name.into(),
                detail: "is the default network; it cannot be removed".into(),
            });
        }
        self.get(name)?;
        let _lock = self.lock()?;
        crate::util::remove_file_if_exists(&self.path(name))?;
        Ok(())
    }

    fn lock(&self) -> Result<crate::store::StoreLock> {
        Ok(crate::store::StoreLock::named(&self.dir, "definitions")?)
    }
}

/// The subnet's first address after the network address: the gateway unless one is given.
pub fn first_host(subnet: &Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(subnet.network()) + 1)
}

/// The host's IPv4 routes (`/proc/net/route`), so that a new network takes no subnet the host
/// already reaches another way. The default route is left out.
pub fn host_routes() -> Vec<Ipv4Net> {
    let text = std::fs::read_to_string("/proc/net/route").unwrap_or_default();
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let destination = u32::from_str_radix(fields.get(1)?, 16).ok()?;
            let mask = u32::from_str_radix(fields.get(7)?, 16).ok()?;
            // The kernel writes these in host byte order of a little-endian word.
            let (destination, mask) = (Ipv4Addr::from(destination.swap_bytes()), Ipv4Addr::from(mask.swap_bytes()));
            let net = Ipv4Net::with_netmask(destination, mask).ok()?;
            (net.prefix_len() > 0).then_some(net)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn create(store: &DefinitionStore, name: &str, subnet: Option<&str>) -> Result<NetworkDef> {
        let request =
            CreateRequest { name: name.into(), subnet: subnet.map(|s| s.parse().unwrap()), ..CreateRequest::default() };
        store.create(&request, &["192.0.2.0/24".parse().unwrap()])
    }

    #[test]
    fn networks_take_free_subnets_and_bridges_and_refuse_overlaps() {
        let dir = tempfile::tempdir().unwrap();
        let store = DefinitionStore::new(dir.path());
        assert_eq!(store.list().unwrap().len(), 1, "the default network always exists");
        let first = create(&store, "first", None).unwrap();
        assert_eq!(first.subnet().subnet.to_string(), "10.91.0.0/24");
        assert_eq!(first.gateway(), Some(Ipv4Addr::new(10, 91, 0, 1)));
        let second = create(&store, "second", None).unwrap();
        assert_eq!(second.subnet().subnet.to_string(), "10.91.1.0/24");
        assert_ne!(first.network_interface, second.network_interface);
        let names: Vec<String> = store.list().unwrap().into_iter().map(|n| n.name).collect();
        assert_eq!(names, ["ckpt", "first", "second"]);

        let overlap = create(&store, "third", Some("10.91.1.128/25")).unwrap_err().to_string();
        assert!(overlap.contains("overlaps network \"second\""), "{overlap}");
        let host = create(&store, "third", Some("192.0.2.0/25")).unwrap_err().to_string();
        assert!(host.contains("the host's route to 192.0.2.0/24"), "{host}");
        let default = create(&store, "third", Some("10.90.7.0/24")).unwrap_err().to_string();
        assert!(default.contains("network \"ckpt\""), "{default}");
        assert!(matches!(create(&store, "first", None), Err(NetworkError::Exists(_))));
        assert!(create(&store, "none", None).is_err());
        assert!(create(&store, "bad/name", None).is_err());
        assert_eq!(store.list().unwrap().len(), 3, "nothing was written by a refusal");

        store.remove("first").unwrap();
        assert!(matches!(store.get("first"), Err(NetworkError::NoSuchNetwork(_))));
        assert!(store.remove("ckpt").is_err());
    }

    #[test]
    fn definitions_read_as_netavark_and_podman_write_them() {
        let podman = r#"{"name":"ckptprobe","id":"5f2b","driver":"bridge","network_interface":"podman1",
            "created":"2026-12-01T10:00:00.123456789Z","subnets":[{"subnet":"10.213.7.0/24","gateway":"10.213.7.1"}],
            "ipv6_enabled":false,"internal":false,"dns_enabled":true,"ipam_options":{"driver":"host-local"}}"#;
        let def: NetworkDef = serde_json::from_str(podman).unwrap();
        assert_eq!(def.gateway(), Some(Ipv4Addr::new(10, 213, 7, 1)));
        let back = serde_json::to_value(&def).unwrap();
        assert_eq!(back["subnets"][0]["subnet"], "10.213.7.0/24");
        assert!(back.get("labels").is_none());
    }

    #[test]
    fn host_routes_leave_out_the_default_route() {
        for route in host_routes() {
            assert!(route.prefix_len() > 0);
        }
    }
}
