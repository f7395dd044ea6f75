//! netavark's JSON interface: `netavark [--config DIR] --rootless=false setup|teardown NETNS`
//! with the options on stdin. It answers one JSON object on stdout: the status per network on
//! success, `{"error": …}` with exit code 1 on failure.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::{Deserialize, Serialize};

use super::{NetworkDef, NetworkError, Result};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkOptions {
    pub container_id: String,
    pub container_name: String,
    pub networks: BTreeMap<String, PerNetworkOptions>,
    pub network_info: BTreeMap<String, NetworkDef>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub port_mappings: Vec<PortMapping>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns_servers: Vec<Ipv4Addr>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PerNetworkOptions {
    pub interface_name: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub static_ips: Vec<Ipv4Addr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub static_mac: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
}

/// A published port, in netavark's and podman's `newPortMappings` shape.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PortMapping {
    /// `""` for every address of the host.
    pub host_ip: String,
    pub container_port: u16,
    pub host_port: u16,
    /// How many ports from `host_port` and `container_port` on; 1 for one.
    pub range: u16,
    /// `tcp`, `udp` or `sctp`.
    pub protocol: String,
}

/// What netavark set up on one network: the interface it made, with its MAC and addresses.
pub type StatusBlock = BTreeMap<String, NetworkStatus>;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkStatus {
    #[serde(default)]
    pub interfaces: BTreeMap<String, InterfaceStatus>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns_server_ips: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns_search_domains: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InterfaceStatus {
    pub mac_address: String,
    #[serde(default)]
    pub subnets: Vec<AddressStatus>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddressStatus {
    /// `IP/prefix`.
    pub ipnet: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
}

/// The status saved at the last setup (`network.status`); none when it is missing or unreadable,
/// as in a checkpoint from before networks.
pub fn read_status(path: &Path) -> StatusBlock {
    crate::util::read_json_if_exists(path, "network status").ok().flatten().unwrap_or_default()
}

impl NetworkStatus {
    /// The first interface's MAC and IPv4 address with its prefix length and gateway.
    pub fn first_address(&self) -> Option<(String, Ipv4Addr, u8, Option<String>)> {
        let interface = self.interfaces.values().next()?;
        let subnet = interface.subnets.first()?;
        let net: ipnet::Ipv4Net = subnet.ipnet.parse().ok()?;
        Some((interface.mac_address.clone(), net.addr(), net.prefix_len(), subnet.gateway.clone()))
    }
}

pub trait Netavark: Send + Sync {
    fn setup(&self, netns: &Path, options: &NetworkOptions) -> Result<StatusBlock>;
    fn teardown(&self, netns: &Path, options: &NetworkOptions) -> Result<()>;
}

/// The real netavark binary.
pub struct NetavarkBinary {
    pub path: PathBuf,
    /// `--config`: where aardvark-dns keeps its state.
    pub config_dir: PathBuf,
    pub aardvark: Option<PathBuf>,
}

impl NetavarkBinary {
    fn run(&self, action: &'static str, netns: &Path, options: &NetworkOptions) -> Result<Vec<u8>> {
        let failed =
            |detail: String| NetworkError::Netavark { action, container: options.container_name.clone(), detail };
        // One netavark at a time on the host, as podman's netavark.lock keeps them: two at once
        // race on the shared bridge (one deleting it as its last container goes, one adding to
        // it) and on the firewall chains. Taking the lock also makes the config directory,
        // which netavark needs and does not make (only aardvark-dns's directory inside it).
        let _lock = crate::store::StoreLock::named(&self.config_dir, "netavark")?;
        let mut command = Command::new(&self.path);
        command.arg("--config").arg(&self.config_dir).arg("--rootless=false");
        if let Some(aardvark) = &self.aardvark {
            command.arg("--aardvark-binary").arg(aardvark);
        }
        command.arg(action).arg(netns);
        // netavark logs at warn level to a syslog it cannot reach here; its answer is on stdout.
        command.env("RUST_LOG", "error");
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| failed(format!("cannot run {}: {e}", self.path.display())))?;
        let input = serde_json::to_vec(options).expect("options serialise");
        child.stdin.take().expect("piped").write_all(&input).map_err(|e| failed(format!("write options: {e}")))?;
        let output = child.wait_with_output().map_err(|e| failed(format!("wait: {e}")))?;
        if output.status.success() {
            return Ok(output.stdout);
        }
        #[derive(Deserialize)]
        struct Refusal {
            error: String,
        }
        let detail = match serde_json::from_slice::<Refusal>(&output.stdout) {
            Ok(refusal) => refusal.error,
            Err(_) => format!(
                "{}: {}{}",
                output.status,
                String::from_utf8_lossy(&output.stdout).trim(),
                String::from_utf8_lossy(&output.stderr).trim()
            ),
        };
        Err(failed(detail))
    }
}

impl Netavark for NetavarkBinary {
    fn setup(&self, netns: &Path, options: &NetworkOptions) -> Result<StatusBlock> {
        let answer = self.run("setup", netns, options)?;
        serde_json::from_slice(&answer).map_err(|e| NetworkError::Netavark {
            action: "setup",
            container: options.container_name.clone(),
            detail: format!("its answer is not a status: {e}: {}", String::from_utf8_lossy(&answer)),
        })
    }

    fn teardown(&self, netns: &Path, options: &NetworkOptions) -> Result<()> {
        self.run("teardown", netns, options).map(drop)
    }
}

/// Records each call and answers as netavark would, for unit tests.
#[cfg(test)]
#[derive(Default)]
pub struct RecordingNetavark {
    pub calls: std::sync::Mutex<Vec<String>>,
    pub fail_setup: bool,
}

#[cfg(test)]
impl Netavark for RecordingNetavark {
    fn setup(&self, netns: &Path, options: &NetworkOptions) -> Result<StatusBlock> {
        self.calls.lock().unwrap().push(format!("setup {} {}", netns.display(), options.container_name));
        if self.fail_setup {
            return Err(NetworkError::Netavark {
                action: "setup",
                container: options.container_name.clone(),
                detail: "refused".into(),
            });
        }
        Ok(options
            .networks
            .iter()
            .map(|(name, per)| {
                let subnet = options.network_info[name].subnet();
                let ip = per.static_ips.first().copied().unwrap_or(Ipv4Addr::UNSPECIFIED);
                let interface = InterfaceStatus {
                    mac_address: per.static_mac.clone().unwrap_or_else(|| "02:00:00:00:00:01".into()),
                    subnets: vec![AddressStatus {
                        ipnet: format!("{ip}/{}", subnet.subnet.prefix_len()),
                        gateway: subnet.gateway.map(|g| g.to_string()),
                    }],
                };
                let status = NetworkStatus {
                    interfaces: BTreeMap::from([(per.interface_name.clone(), interface)]),
                    ..NetworkStatus::default()
                };
                (name.clone(), status)
            })
            .collect())
    }

    fn teardown(&self, netns: &Path, options: &NetworkOptions) -> Result<()> {
        self.calls.lock().unwrap().push(format!("teardown {} {}", netns.display(), options.container_name));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_reads_as_netavark_writes_it() {
        let answer = r#"{"ckptprobe":{"dns_search_domains":["dns.podman"],"dns_server_ips":["10.213.7.1"],
            "interfaces":{"eth0":{"mac_address":"1e:81:00:00:00:01","subnets":[{"gateway":"10.213.7.1","ipnet":"10.213.7.5/24"}]}}}}"#;
        let status: StatusBlock = serde_json::from_str(answer).unwrap();
        let (mac, ip, prefix, gateway) = status["ckptprobe"].first_address().unwrap();
        assert_eq!((mac.as_str(), ip.to_string(), prefix), ("1e:81:00:00:00:01", "10.213.7.5".to_string(), 24));
        assert_eq!(gateway.as_deref(), Some("10.213.7.1"));
    }

    #[test]
    fn options_carry_only_what_netavark_1_4_reads() {
        let options = NetworkOptions {
            container_id: "ab".repeat(32),
            container_name: "web".into(),
            networks: BTreeMap::from([(
                "ckpt".to_string(),
                PerNetworkOptions {
                    interface_name: "eth0".into(),
                    static_ips: vec!["10.90.0.2".parse().unwrap()],
                    static_mac: None,
                    aliases: vec![],
                },
            )]),
            network_info: BTreeMap::from([("ckpt".to_string(), crate::network::DefinitionStore::default_network())]),
            port_mappings: vec![PortMapping {
                host_ip: String::new(),
                container_port: 80,
                host_port: 8080,
                range: 1,
                protocol: "tcp".into(),
            }],
            dns_servers: vec![],
        };
        let json = serde_json::to_value(&options).unwrap();
        assert_eq!(
            json["networks"]["ckpt"],
            serde_json::json!({"interface_name": "eth0", "static_ips": ["10.90.0.2"]})
        );
        assert_eq!(json["port_mappings"][0]["range"], 1);
        assert!(json.get("dns_servers").is_none());
    }
}
