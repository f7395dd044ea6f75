//! Networks: `ckpt network create|ls|inspect|rm|prune`, the network options of `run`, and a
//! container's attachment to its networks at each start or restore.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, TcpListener, UdpSocket};
use std::path::Path;

use super::Context;
use crate::error::{Error, Result};
use crate::network::definition::CreateRequest;
use crate::network::netavark::NetworkStatus;
use crate::network::{
    Lease, NetavarkBinary, NetworkDef, NetworkError, NetworkOptions, Networks, PerNetworkOptions, PortMapping,
    StatusBlock,
};
use crate::store::{ContainerNetwork, ContainerRecord, NetworkAttachment, NetworkMode, PublishedPort};

impl Context {
    /// The host's networks, where the host config keeps them.
    pub fn networks(&self) -> Networks {
        let rules = &self.config.network;
        let netavark = self.netavark_override.clone().or_else(|| {
            let path = crate::network::helper("netavark")?;
            Some(std::sync::Arc::new(NetavarkBinary {
                path,
                config_dir: rules.state.join("netavark"),
                aardvark: crate::network::helper("aardvark-dns"),
            }) as std::sync::Arc<dyn crate::network::Netavark>)
        });
        Networks::new(&rules.definitions, &rules.state, netavark)
    }
}

/// The network options of `run` and `create`, as typed.
#[derive(Debug, Clone, Default)]
pub struct NetworkFlags {
    /// `--network NAME[,NAME…]`, `none`, or nothing for the host config's default.
    pub network: Option<String>,
    pub ip: Option<String>,
    pub mac_address: Option<String>,
    /// `--network-alias`: more names the container answers to on each of its networks.
    pub aliases: Vec<String>,
    pub publish: Vec<String>,
    pub hostname: Option<String>,
    pub dns: Vec<String>,
    pub add_host: Vec<String>,
}

/// Checks the flags against the host's networks and turns them into the container's settings.
pub fn settings_from_flags(ctx: &Context, flags: &NetworkFlags) -> Result<ContainerNetwork> {
    let networks = ctx.networks();
    let named = flags.network.clone().unwrap_or_else(|| ctx.config.network.default_network.clone());
    let mut settings = ContainerNetwork { hostname: flags.hostname.clone(), ..ContainerNetwork::default() };
    if let Some(hostname) = &flags.hostname
        && !is_hostname(hostname)
    {
        return Err(Error::invalid(format!("--hostname {hostname:?} is not a valid host name")));
    }
    for value in &flags.add_host {
        let (host, ip) = value
            .rsplit_once(':')
            .filter(|(host, ip)| !host.is_empty() && ip.parse::<std::net::IpAddr>().is_ok())
            .ok_or_else(|| Error::invalid(format!("--add-host {value:?} is not of the form HOST:IP")))?;
        settings.hosts_add.push((host.to_string(), ip.to_string()));
    }
    for value in &flags.dns {
        settings
            .dns
            .push(value.parse().map_err(|_| Error::invalid(format!("--dns {value:?} is not an IPv4 address")))?);
    }
    match named.as_str() {
        "none" => {
            if flags.ip.is_some() || flags.mac_address.is_some() || !flags.publish.is_empty() {
                return Err(Error::invalid(
                    "--ip, --mac-address and --publish need a network; --network none gives loopback only",
                ));
            }
            return Ok(settings);
        }
        "host" => {
            return Err(Error::invalid(
                "--network host is not supported: a container in the host's network namespace holds the host's sockets, which no checkpoint can carry to a restore; publish ports with -p instead",
            ));
        }
        _ => {}
    }
    settings.mode = NetworkMode::Bridge;
    for NetworkChoice { name, options } in network_list(&named)? {
        let definition = networks.definitions.get(&name)?;
        if settings.networks.iter().any(|(n, _)| *n == name) {
            return Err(Error::invalid(format!("--network names {name:?} twice")));
        }
        let mut attachment = NetworkAttachment { aliases: flags.aliases.clone(), ..NetworkAttachment::default() };
        for (key, value) in options {
            match key.as_str() {
                "ip" => attachment.static_ip = Some(static_ip(&definition, "--network ...:ip=", &value)?),
                "mac" => attachment.static_mac = Some(static_mac("--network ...:mac=", &value)?),
                "alias" => attachment.aliases.push(value),
                other => {
                    return Err(Error::invalid(format!(
                        "--network {name}:{other}={value}: option {other:?} is not supported; use ip=, mac= or alias="
                    )));
                }
            }
        }
        settings.networks.push((definition.name, attachment));
    }
    if let Some(ip) = &flags.ip {
        let (name, attachment) = single_network(&mut settings, "--ip")?;
        attachment.static_ip = Some(static_ip(&networks.definitions.get(&name)?, "--ip", ip)?);
    }
    if let Some(mac) = &flags.mac_address {
        single_network(&mut settings, "--mac-address")?.1.static_mac = Some(static_mac("--mac-address", mac)?);
    }
    settings.ports = published_ports(ctx, &flags.publish)?;
    Ok(settings)
}

/// One network named by `--network`, with its options as typed.
struct NetworkChoice {
    name: String,
    options: Vec<(String, String)>,
}

/// `--network` as podman reads it: `NAME[:OPTION=VALUE,…]`, and several networks separated by
/// commas; a part with `=` and no name before it is one more option of the network before.
fn network_list(value: &str) -> Result<Vec<NetworkChoice>> {
    let mut networks: Vec<NetworkChoice> = Vec::new();
    for part in value.split(',') {
        // A MAC holds colons too: a part is an option when its `=` comes before any colon.
        let is_option = part.find('=').is_some_and(|eq| !part[..eq].contains(':'));
        let (name, option) = match part.split_once(':') {
            _ if is_option => (None, Some(part)),
            Some((name, option)) => (Some(name), Some(option)),
            None => (Some(part), None),
        };
        if let Some(name) = name {
            networks.push(NetworkChoice { name: name.to_string(), options: Vec::new() });
        }
        let Some(option) = option else { continue };
        let (key, value) = option.split_once('=').filter(|(k, v)| !k.is_empty() && !v.is_empty()).ok_or_else(|| {
            Error::invalid(format!(
                "--network {value:?}: {option:?} is not of the form OPTION=VALUE (ip=, mac=, alias=)"
            ))
        })?;
        let Some(network) = networks.last_mut() else {
            return Err(Error::invalid(format!("--network {value:?}: {option:?} follows no network name")));
        };
        network.options.push((key.to_string(), value.to_string()));
    }
    Ok(networks)
}

fn static_ip(definition: &crate::network::NetworkDef, flag: &str, value: &str) -> Result<Ipv4Addr> {
    let ip: Ipv4Addr = value.parse().map_err(|_| Error::invalid(format!("{flag} {value:?} is not an IPv4 address")))?;
    let subnet = definition.subnet().subnet;
    if !subnet.contains(&ip) {
        return Err(Error::invalid(format!("{flag} {ip} is not in network {:?}'s subnet {subnet}", definition.name)));
    }
    Ok(ip)
}

/// A host name `--hostname` takes: letters, digits, '-' and '.', 64 at most.
fn is_hostname(name: &str) -> bool {
    !name.is_empty() && name.len() <= 64 && name.chars().all(|c| c.is_ascii_alphanumeric() || "-.".contains(c))
}

fn is_mac(mac: &str) -> bool {
    mac.len() == 17 && mac.split(':').all(|b| b.len() == 2 && u8::from_str_radix(b, 16).is_ok())
}

fn static_mac(flag: &str, mac: &str) -> Result<String> {
    if !is_mac(mac) {
        return Err(Error::invalid(format!("{flag} {mac:?} is not of the form aa:bb:cc:dd:ee:ff")));
    }
    Ok(mac.to_ascii_lowercase())
}

fn single_network<'a>(settings: &'a mut ContainerNetwork, flag: &str) -> Result<(String, &'a mut NetworkAttachment)> {
    match settings.networks.as_mut_slice() {
        [(name, attachment)] => Ok((name.clone(), attachment)),
        _ => Err(Error::invalid(format!("{flag} needs exactly one network; the container would have several"))),
    }
}

/// `-p [[IP:][HOST]:]CTR[-CTR][/PROTO]`, as podman reads it. A missing host port is the
/// container's (podman picks a free one; ckpt keeps the container's, so that it does not move
/// across a restore).
pub fn parse_publish(value: &str) -> Result<Vec<PublishedPort>> {
    let bad = |why: &str| Error::invalid(format!("--publish {value:?}: {why}; use [[IP:][HOST]:]CONTAINER[/tcp|udp]"));
    let (spec, protocol) = match value.rsplit_once('/') {
        Some((spec, protocol @ ("tcp" | "udp" | "sctp"))) => (spec, protocol),
        Some(_) => return Err(bad("the protocol is not tcp, udp or sctp")),
        None => (value, "tcp"),
    };
    let parts: Vec<&str> = spec.split(':').collect();
    let (host_ip, host, container) = match parts.as_slice() {
        [container] => ("", "", *container),
        [host, container] => ("", *host, *container),
        [ip, host, container] => (*ip, *host, *container),
        _ => return Err(bad("too many ':'")),
    };
    if !host_ip.is_empty() && host_ip.parse::<Ipv4Addr>().is_err() {
        return Err(bad("the host address is not an IPv4 address"));
    }
    let range = |text: &str| -> Result<(u16, u16)> {
        let (first, last) = text.split_once('-').unwrap_or((text, text));
        let first: u16 = first.parse().map_err(|_| bad("a port is not a number from 1 to 65535"))?;
        let last: u16 = last.parse().map_err(|_| bad("a port is not a number from 1 to 65535"))?;
        if first == 0 || last < first {
            return Err(bad("a port range runs backwards or starts at 0"));
        }
        Ok((first, last - first + 1))
    };
    let (container_port, count) = range(container)?;
    let (host_port, host_count) = if host.is_empty() { (container_port, count) } else { range(host)? };
    if host_count != count {
        return Err(bad("the host and container ranges differ in length"));
    }
    Ok(vec![PublishedPort {
        host_ip: host_ip.to_string(),
        host_port,
        container_port,
        range: count,
        protocol: protocol.to_string(),
    }])
}

/// What a restore asks of the networks: the addresses and MACs the checkpoint had, per network.
pub type Wanted = BTreeMap<String, (Option<Ipv4Addr>, Option<String>)>;

/// What is wrong with network settings that came in an archive (a record, podman's keys, its
/// `network.status`), which netavark would otherwise be the first to judge; `None` when they
/// are all well formed.
pub fn fault_in_carried(settings: &ContainerNetwork, wanted: &Wanted) -> Option<String> {
    let well_named = |name: &str| {
        !name.is_empty() && name.len() <= 253 && name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    };
    for (network, attachment) in &settings.networks {
        if !well_named(network) {
            return Some(format!("network name {network:?} is not valid"));
        }
        if let Some(mac) = &attachment.static_mac
            && !is_mac(mac)
        {
            return Some(format!("MAC {mac:?} on network {network:?} is not of the form aa:bb:cc:dd:ee:ff"));
        }
        if let Some(alias) = attachment.aliases.iter().find(|a| !well_named(a)) {
            return Some(format!("alias {alias:?} on network {network:?} is not a valid name"));
        }
    }
    for (network, (_, mac)) in wanted {
        if let Some(mac) = mac
            && !is_mac(mac)
        {
            return Some(format!(
                "network.status gives MAC {mac:?} on network {network:?}, not of the form aa:bb:cc:dd:ee:ff"
            ));
        }
    }
    for port in &settings.ports {
        let described = format!("published port {}:{}/{}", port.host_port, port.container_port, port.protocol);
        if !["tcp", "udp", "sctp"].contains(&port.protocol.as_str()) {
            return Some(format!("{described}: protocol {:?} is not tcp, udp or sctp", port.protocol));
        }
        if !port.host_ip.is_empty() && port.host_ip.parse::<Ipv4Addr>().is_err() {
            return Some(format!("{described}: host address {:?} is not IPv4", port.host_ip));
        }
        let fits = |first: u16| port.range >= 1 && u32::from(first) + u32::from(port.range) <= 65536;
        if port.host_port == 0 || port.container_port == 0 || !fits(port.host_port) || !fits(port.container_port) {
            return Some(format!("{described}: ports and range {} leave 1-65535", port.range));
        }
    }
    if let Some(hostname) = &settings.hostname
        && !is_hostname(hostname)
    {
        return Some(format!("host name {hostname:?} is not valid"));
    }
    None
}

/// The addresses in a `network.status` (podman's and ckpt's), minus what `ignore_ip` and
/// `ignore_mac` leave out.
pub fn wanted_from_status(path: &Path, ignore_ip: bool, ignore_mac: bool) -> Wanted {
    wanted_from_block(&crate::network::read_status(path), ignore_ip, ignore_mac)
}

pub fn wanted_from_block(status: &crate::network::StatusBlock, ignore_ip: bool, ignore_mac: bool) -> Wanted {
    status
        .iter()
        .filter_map(|(network, status)| {
            let (mac, ip, _, _) = status.first_address()?;
            Some((network.clone(), ((!ignore_ip).then_some(ip), (!ignore_mac).then_some(mac))))
        })
        .collect()
}

/// Connects the container's namespace to its networks: addresses allocated (the `wanted` ones
/// first, then the record's static ones), netavark's setup, and the status, `/etc/hosts` and
/// `/etc/resolv.conf` written to the bundle. On failure nothing stays allocated or set up.
pub fn attach(ctx: &Context, record: &ContainerRecord, wanted: &Wanted) -> Result<()> {
    let paths = ctx.containers.paths(&record.id);
    let bundle = paths.bundle();
    let hostname = crate::spec::hostname(record).to_string();
    let settings = &record.network;
    if settings.mode == NetworkMode::None {
        let hosts = crate::network::files::hosts(&settings.hosts_add, &[], &hostname, &record.name, None);
        crate::util::write_atomic(&bundle.join("hosts"), hosts.as_bytes(), 0o644)?;
        return Ok(());
    }
    let networks = ctx.networks();
    let lease = Lease { container: record.id.clone(), store: ctx.roots.root.clone() };
    let mut options = NetworkOptions {
        container_id: record.id.clone(),
        container_name: record.name.clone(),
        networks: BTreeMap::new(),
        network_info: BTreeMap::new(),
        port_mappings: port_mappings(&settings.ports),
        dns_servers: settings.dns.clone(),
    };
    let allocated = (|| -> Result<()> {
        refuse_taken_ports(ctx, record, &options.port_mappings)?;
        for (index, (name, attachment)) in settings.networks.iter().enumerate() {
            let definition = networks.definitions.get(name)?;
            let (wanted_ip, wanted_mac) = wanted.get(name).cloned().unwrap_or_default();
            let ip = networks.ipam.allocate(&definition, &lease, wanted_ip.or(attachment.static_ip))?;
            let mut aliases = attachment.aliases.clone();
            if definition.dns_enabled {
                aliases.push(record.id[..12].to_string());
            }
            options.networks.insert(
                name.clone(),
                PerNetworkOptions {
                    interface_name: format!("eth{index}"),
                    static_ips: vec![ip],
                    static_mac: wanted_mac.or_else(|| attachment.static_mac.clone()),
                    aliases,
                },
            );
            options.network_info.insert(name.clone(), definition);
        }
        Ok(())
    })();
    let status = allocated
        .and_then(|()| networks.setup(&paths.netns(), &options, &paths.network_options()).map_err(Error::from));
    let status = match status {
        Ok(status) => status,
        Err(e) => {
            for name in options.network_info.keys() {
                let _ = networks.ipam.release(name, &record.id, &ctx.roots.root);
            }
            return Err(e);
        }
    };
    let written = write_network_files(ctx, record, &options, &status);
    if let Err(e) = written {
        let _ = detach(ctx, record);
        return Err(e);
    }
    Ok(())
}

fn write_network_files(
    ctx: &Context,
    record: &ContainerRecord,
    options: &NetworkOptions,
    status: &StatusBlock,
) -> Result<()> {
    let paths = ctx.containers.paths(&record.id);
    let bundle = paths.bundle();
    crate::util::write_atomic(
        &paths.network_status(),
        &serde_json::to_vec_pretty(status).expect("a status serialises"),
        0o644,
    )?;
    let own: Vec<Ipv4Addr> = status.values().filter_map(NetworkStatus::first_address).map(|(_, ip, _, _)| ip).collect();
    let gateway = options.network_info.values().find_map(NetworkDef::gateway);
    let hostname = crate::spec::hostname(record);
    let hosts = crate::network::files::hosts(&record.network.hosts_add, &own, hostname, &record.name, gateway);
    crate::util::write_atomic(&bundle.join("hosts"), hosts.as_bytes(), 0o644)?;
    let aardvark: Vec<String> = status.values().flat_map(|s| s.dns_server_ips.iter().cloned()).collect();
    let search: Vec<String> = status.values().flat_map(|s| s.dns_search_domains.iter().cloned()).collect();
    let host = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let resolv = crate::network::files::resolv_conf(&host, &record.network.dns, &aardvark, &search);
    crate::util::write_atomic(&bundle.join("resolv.conf"), resolv.as_bytes(), 0o644)?;
    Ok(())
}

/// Undoes [`attach`]: netavark's teardown and the addresses released. Safe to call again, and
/// for a container that was never attached.
pub fn detach(ctx: &Context, record: &ContainerRecord) -> Result<()> {
    let paths = ctx.containers.paths(&record.id);
    ctx.networks().teardown(&paths.netns(), &paths.network_options(), &ctx.roots.root).map_err(Error::from)
}

/// `--publish` values as the container keeps them: a port published on no particular address
/// binds to each of the host config's `default-host-ips`, decided when the container is made,
/// as podman decides it from `default_host_ips`.
pub fn published_ports(ctx: &Context, values: &[String]) -> Result<Vec<PublishedPort>> {
    let defaults: Vec<String> = ctx.config.network.default_host_ips.iter().map(Ipv4Addr::to_string).collect();
    let mut ports = Vec::new();
    for value in values {
        for port in parse_publish(value)? {
            if port.host_ip.is_empty() && !defaults.is_empty() {
                ports.extend(defaults.iter().map(|ip| PublishedPort { host_ip: ip.clone(), ..port.clone() }));
            } else {
                ports.push(port);
            }
        }
    }
    Ok(ports)
}

/// The record's ports for netavark.
fn port_mappings(ports: &[PublishedPort]) -> Vec<PortMapping> {
    ports
        .iter()
        .map(|port| PortMapping {
            host_ip: port.host_ip.clone(),
            container_port: port.container_port,
            host_port: port.host_port,
            range: port.range,
            protocol: port.protocol.clone(),
        })
        .collect()
}

/// A host port that another running ckpt container publishes, or that a host process holds,
/// is refused before anything is set up: netavark would forward it silently over the other.
fn refuse_taken_ports(ctx: &Context, record: &ContainerRecord, mappings: &[PortMapping]) -> Result<()> {
    // Every start and restore comes here: one that publishes nothing reads no other record.
    if mappings.is_empty() {
        return Ok(());
    }
    for other in ctx.containers.list()? {
        if other.id == record.id || !ctx.containers.paths(&other.id).network_options().exists() {
            continue;
        }
        for theirs in &other.network.ports {
            for mine in mappings {
                let overlap = mine.protocol == theirs.protocol
                    && mine.host_port < theirs.host_port + theirs.range
                    && theirs.host_port < mine.host_port + mine.range;
                if overlap {
                    return Err(Error::invalid(format!(
                        "port {}/{} is already published by container {:?}; choose another host port with -p",
                        mine.host_port, mine.protocol, other.name
                    )));
                }
            }
        }
    }
    for mapping in mappings {
        let ip: Ipv4Addr = mapping.host_ip.parse().unwrap_or(Ipv4Addr::UNSPECIFIED);
        for port in mapping.host_port..mapping.host_port + mapping.range {
            let free = match mapping.protocol.as_str() {
                "udp" => UdpSocket::bind((ip, port)).is_ok(),
                _ => TcpListener::bind((ip, port)).is_ok(),
            };
            if !free {
                return Err(Error::invalid(format!(
                    "port {port}/{} on {} is in use by a process of the host; choose another host port with -p",
                    mapping.protocol,
                    if mapping.host_ip.is_empty() { "every address" } else { &mapping.host_ip }
                )));
            }
        }
    }
    Ok(())
}

/// The definitions of the user networks `record` is on, as `ckpt-networks.json` carries them;
/// empty for none.
pub fn definitions_of(ctx: &Context, record: &ContainerRecord) -> Result<Vec<u8>> {
    let networks = ctx.networks();
    let mut definitions = Vec::new();
    for (name, _) in record.network.networks.iter().filter(|(name, _)| name != crate::config::DEFAULT_NETWORK) {
        definitions.push(networks.definitions.get(name)?);
    }
    if definitions.is_empty() {
        return Ok(Vec::new());
    }
    Ok(serde_json::to_vec_pretty(&definitions).expect("definitions serialise"))
}

/// The networks a migration's far side makes for the container it receives: those in
/// `carried` that it lacks, under the same names, subnets and gateways. A subnet taken there
/// is refused by name, as `network create` refuses it. Returns the names it made.
pub fn create_missing(ctx: &Context, record: &ContainerRecord, carried: &[NetworkDef]) -> Result<Vec<String>> {
    let networks = ctx.networks();
    let mut made = Vec::new();
    for (name, _) in &record.network.networks {
        match networks.definitions.get(name) {
            Err(NetworkError::NoSuchNetwork(_)) => {}
            other => {
                other?;
                continue;
            }
        }
        let Some(definition) = carried.iter().find(|d| &d.name == name) else { continue };
        let request = CreateRequest {
            name: name.clone(),
            subnet: Some(definition.subnet().subnet),
            gateway: definition.gateway(),
            internal: definition.internal,
            labels: definition.labels.clone(),
            dns: definition.dns_enabled,
        };
        create(ctx, &request)?;
        made.push(name.clone());
    }
    Ok(made)
}

/// `network create`.
pub fn create(ctx: &Context, request: &CreateRequest) -> Result<NetworkDef> {
    let mut request = request.clone();
    request.dns = request.dns && crate::network::helper("aardvark-dns").is_some();
    let routes = crate::network::definition::host_routes();
    // Bridges of ckpt's own networks are routes too: they are the networks themselves.
    Ok(ctx.networks().definitions.create(&request, &routes)?)
}

/// The containers of this store on `name`, and whether any store holds an address on it.
fn users(ctx: &Context, name: &str) -> Result<(Vec<ContainerRecord>, Option<String>)> {
    let containers: Vec<ContainerRecord> =
        ctx.containers.list()?.into_iter().filter(|c| c.network.networks.iter().any(|(n, _)| n == name)).collect();
    let leased = ctx.networks().ipam.leases()?.into_iter().find(|(network, _, _)| network == name);
    Ok((containers, leased.map(|(_, _, lease)| lease.container)))
}

/// `network rm [-f]`: `--force` removes this store's containers on it first, as podman does.
pub fn remove(ctx: &Context, name: &str, force: bool) -> Result<()> {
    let networks = ctx.networks();
    networks.definitions.get(name)?;
    let (containers, _) = users(ctx, name)?;
    if let Some(container) = containers.first() {
        if !force {
            return Err(NetworkError::InUse { name: name.into(), container: container.name.clone() }.into());
        }
        for container in &containers {
            super::lifecycle::remove(ctx, container, true, 0)?;
        }
    }
    if let (_, Some(holder)) = users(ctx, name)? {
        return Err(NetworkError::InUse { name: name.into(), container: holder }.into());
    }
    networks.definitions.remove(name)?;
    networks.ipam.forget(name)?;
    Ok(())
}

/// `network prune`: every network but the default that no container uses; their names.
pub fn prune(ctx: &Context) -> Result<Vec<String>> {
    let networks = ctx.networks();
    let mut removed = Vec::new();
    for network in networks.definitions.list()? {
        if network.is_default() {
            continue;
        }
        let (containers, holder) = users(ctx, &network.name)?;
        if containers.is_empty() && holder.is_none() {
            networks.definitions.remove(&network.name)?;
            networks.ipam.forget(&network.name)?;
            removed.push(network.name);
        }
    }
    Ok(removed)
}

/// An address held for a container of this store that is gone, or whose network is not set
/// up, or set up for a container that neither runs nor holds it for its checkpoint: what a
/// SIGKILLed ckpt can leave.
pub struct LeakedLease {
    pub network: String,
    pub address: Ipv4Addr,
    pub container: String,
    pub container_exists: bool,
}

/// Whether the container's network is set up for a reason: it runs, or its checkpoint keeps it.
fn attached_for_a_reason(ctx: &Context, record: &ContainerRecord) -> bool {
    ctx.containers.paths(&record.id).network_options().exists()
        && (record.state.holds_network() || super::lifecycle::status(ctx, record).is_ok_and(|s| s.running()))
}

/// The leaked leases of this store; with `repair`, released, and what netavark set up for them
/// torn down. A container that another command is working on (its lock held) may be between
/// its allocation and its setup: left.
pub fn leaked_leases(ctx: &Context, repair: bool) -> Result<Vec<LeakedLease>> {
    let networks = ctx.networks();
    let mut leaked = Vec::new();
    for (network, address, lease) in networks.ipam.leases()? {
        if lease.store != ctx.roots.root {
            continue;
        }
        let record = ctx.containers.load(&lease.container).ok();
        let container_exists = record.is_some();
        let locks = ctx.roots.locks_dir();
        let Ok(_lock) = crate::store::ContainerLock::try_acquire(&locks, &lease.container, &lease.container) else {
            continue;
        };
        if record.as_ref().is_some_and(|r| attached_for_a_reason(ctx, r)) {
            continue;
        }
        if repair {
            if let Some(record) = &record {
                detach(ctx, record)?;
                crate::netns::remove(&ctx.containers.paths(&record.id).netns())?;
            }
            networks.ipam.release(&network, &lease.container, &ctx.roots.root)?;
        }
        leaked.push(LeakedLease { network, address, container: lease.container, container_exists });
    }
    Ok(leaked)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::netavark::RecordingNetavark;
    use std::sync::Arc;

    fn context(netavark: Arc<RecordingNetavark>) -> (tempfile::TempDir, Context) {
        let dir = tempfile::tempdir().unwrap();
        let roots = crate::store::Roots::new(dir.path().join("root"), dir.path().join("run"));
        let mut ctx = Context::new(roots, "runc".into());
        ctx.config.network.definitions = dir.path().join("networks");
        ctx.config.network.state = dir.path().join("netstate");
        ctx.netavark_override = Some(netavark);
        (dir, ctx)
    }

    fn record(ctx: &Context, static_ip: Option<&str>) -> ContainerRecord {
        let mut record: ContainerRecord = serde_json::from_value(serde_json::json!({
            "id": "ab".repeat(32), "name": "web", "image_name": "busybox", "image_ref": "busybox:latest",
            "image_id": "cd".repeat(32), "command": ["sleep", "1"], "env": [], "labels": {}, "mounts": [],
            "auto_remove": false, "created_at": "2026-12-06T00:00:00Z", "runtime": "runc"
        }))
        .unwrap();
        let flags = NetworkFlags { ip: static_ip.map(String::from), ..NetworkFlags::default() };
        record.network = settings_from_flags(ctx, &flags).unwrap();
        std::fs::create_dir_all(ctx.containers.paths(&record.id).bundle()).unwrap();
        std::fs::create_dir_all(ctx.containers.paths(&record.id).run_dir).unwrap();
        record
    }

    #[test]
    fn an_attached_container_holds_an_address_until_it_is_detached() {
        let netavark = Arc::new(RecordingNetavark::default());
        let (_dir, ctx) = context(netavark.clone());
        let record = record(&ctx, Some("10.90.3.4"));
        assert_eq!(record.network.mode, NetworkMode::Bridge, "the default network, unless told otherwise");
        attach(&ctx, &record, &Wanted::new()).unwrap();
        let paths = ctx.containers.paths(&record.id);
        let saved: NetworkOptions = serde_json::from_slice(&std::fs::read(paths.network_options()).unwrap()).unwrap();
        assert_eq!(saved.networks["ckpt"].static_ips, ["10.90.3.4".parse::<Ipv4Addr>().unwrap()]);
        let hosts = std::fs::read_to_string(paths.bundle().join("hosts")).unwrap();
        assert!(hosts.contains("10.90.3.4\tabababababab web"), "{hosts}");
        assert!(paths.bundle().join("resolv.conf").exists() && paths.network_status().exists());
        assert_eq!(ctx.networks().ipam.leases().unwrap().len(), 1);
        detach(&ctx, &record).unwrap();
        detach(&ctx, &record).unwrap();
        assert!(ctx.networks().ipam.leases().unwrap().is_empty());
        assert!(!paths.network_options().exists());
        assert_eq!(netavark.calls.lock().unwrap().len(), 1, "no namespace to tear down: only the setup ran");
    }

    #[test]
    fn a_refused_setup_leaves_no_address_and_no_saved_options() {
        let netavark = Arc::new(RecordingNetavark { fail_setup: true, ..RecordingNetavark::default() });
        let (_dir, ctx) = context(netavark.clone());
        let record = record(&ctx, None);
        let err = attach(&ctx, &record, &Wanted::new()).unwrap_err().to_string();
        assert!(err.contains("netavark setup of container \"web\" failed: refused"), "{err}");
        assert!(ctx.networks().ipam.leases().unwrap().is_empty());
        assert!(!ctx.containers.paths(&record.id).network_options().exists());
        let calls = netavark.calls.lock().unwrap().clone();
        assert!(calls[1].starts_with("teardown"), "what netavark made before it failed is undone: {calls:?}");
    }

    /// podman's `default_host_ips`: a port published on no particular address binds to each of
    /// them; one published on an address keeps it.
    #[test]
    fn ports_on_no_address_take_the_default_host_ips() {
        let (_dir, mut ctx) = context(Arc::new(RecordingNetavark::default()));
        let values = ["8080:80".to_string(), "192.0.2.1:8081:81".to_string()];
        let host_ips = |ctx: &Context| -> Vec<String> {
            let ports = published_ports(ctx, &values).unwrap();
            port_mappings(&ports).into_iter().map(|m| m.host_ip).collect()
        };
        assert_eq!(host_ips(&ctx), ["", "192.0.2.1"]);
        ctx.config.network.default_host_ips = vec!["127.0.0.1".parse().unwrap(), "127.0.0.2".parse().unwrap()];
        assert_eq!(host_ips(&ctx), ["127.0.0.1", "127.0.0.2", "192.0.2.1"]);
    }

    #[test]
    fn network_flags_take_podmans_per_network_options() {
        let list = |v: &str| {
            let choices = network_list(v).map_err(|e| e.to_string())?;
            Ok::<_, String>(format!("{:?}", choices.into_iter().map(|c| (c.name, c.options)).collect::<Vec<_>>()))
        };
        assert_eq!(list("a").unwrap(), r#"[("a", [])]"#);
        assert_eq!(
            list("a:ip=10.0.0.2,mac=92:d0:c6:0a:29:38,b,c:alias=web").unwrap(),
            r#"[("a", [("ip", "10.0.0.2"), ("mac", "92:d0:c6:0a:29:38")]), ("b", []), ("c", [("alias", "web")])]"#
        );
        assert_eq!(list("a:mac=92:d0:c6:0a:29:38").unwrap(), r#"[("a", [("mac", "92:d0:c6:0a:29:38")])]"#);
        for bad in ["ip=10.0.0.2", "a:ip", "a:=x", "a:ip="] {
            assert!(list(bad).unwrap_err().contains("--network"), "{bad}");
        }
        let (_dir, ctx) = context(Arc::new(RecordingNetavark::default()));
        let flags = |network: &str| NetworkFlags { network: Some(network.into()), ..NetworkFlags::default() };
        let settings = settings_from_flags(&ctx, &flags("ckpt:ip=10.90.7.7,mac=92:D0:C6:0A:29:38")).unwrap();
        assert_eq!(settings.networks[0].1.static_ip, Some("10.90.7.7".parse().unwrap()));
        assert_eq!(settings.networks[0].1.static_mac.as_deref(), Some("92:d0:c6:0a:29:38"));
        let outside = settings_from_flags(&ctx, &flags("ckpt:ip=10.1.0.1")).unwrap_err().to_string();
        assert!(outside.contains("10.1.0.1") && outside.contains("subnet"), "{outside}");
        let unknown = settings_from_flags(&ctx, &flags("ckpt:interface_name=eth5")).unwrap_err().to_string();
        assert!(unknown.contains("\"interface_name\" is not supported"), "{unknown}");
    }

    #[test]
    fn network_settings_from_an_archive_are_judged_before_netavark_sees_them() {
        let (_dir, ctx) = context(Arc::new(RecordingNetavark::default()));
        let flags = NetworkFlags { publish: vec!["8080:80".into()], ..NetworkFlags::default() };
        let good = settings_from_flags(&ctx, &flags).unwrap();
        assert_eq!(fault_in_carried(&good, &Wanted::new()), None);
        let fault = |change: &dyn Fn(&mut ContainerNetwork, &mut Wanted)| {
            let (mut settings, mut wanted) = (good.clone(), Wanted::new());
            change(&mut settings, &mut wanted);
            fault_in_carried(&settings, &wanted).expect("a fault")
        };
        assert!(fault(&|s, _| s.ports[0].protocol = "icmp".into()).contains("protocol \"icmp\""));
        assert!(fault(&|s, _| s.ports[0].host_ip = "::1".into()).contains("not IPv4"));
        assert!(fault(&|s, _| s.ports[0].range = 0).contains("leave 1-65535"));
        assert!(fault(&|s, _| s.networks[0].1.static_mac = Some("zz".into())).contains("MAC \"zz\""));
        assert!(fault(&|s, _| s.networks[0].0 = "../etc".into()).contains("network name"));
        assert!(fault(&|s, _| s.hostname = Some("a b".into())).contains("host name"));
        let status_mac = fault(&|_, w| drop(w.insert("ckpt".into(), (None, Some("not-a-mac".into())))));
        assert!(status_mac.contains("network.status gives MAC \"not-a-mac\""), "{status_mac}");
    }

    #[test]
    fn published_ports_parse_as_podman_reads_them() {
        let one = |v: &str| {
            let p = parse_publish(v).unwrap().remove(0);
            (p.host_ip, p.host_port, p.container_port, p.range, p.protocol)
        };
        assert_eq!(one("8080:80"), (String::new(), 8080, 80, 1, "tcp".to_string()));
        assert_eq!(one("127.0.0.1:8080:80/udp"), ("127.0.0.1".into(), 8080, 80, 1, "udp".into()));
        assert_eq!(one("80"), (String::new(), 80, 80, 1, "tcp".into()));
        assert_eq!(one("127.0.0.1::80"), ("127.0.0.1".into(), 80, 80, 1, "tcp".into()));
        assert_eq!(one("8080-8081:80-81"), (String::new(), 8080, 80, 2, "tcp".into()));
        for bad in ["", "0:80", "x:80", "8080:80/icmp", "1:2:3:4", "8080-8082:80-81", "300.0.0.1:80:80", "81-80"] {
            let err = parse_publish(bad).unwrap_err().to_string();
            assert!(err.contains("--publish"), "{bad}: {err}");
        }
    }

    #[test]
    fn a_restore_asks_for_the_addresses_the_checkpoint_had_unless_told_not_to() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("network.status");
        std::fs::write(
            &path,
            r#"{"ckpt":{"interfaces":{"eth0":{"mac_address":"02:aa:bb:cc:dd:ee","subnets":[{"ipnet":"10.90.0.7/16","gateway":"10.90.0.1"}]}}}}"#,
        )
        .unwrap();
        let all = wanted_from_status(&path, false, false);
        assert_eq!(all["ckpt"], (Some("10.90.0.7".parse().unwrap()), Some("02:aa:bb:cc:dd:ee".into())));
        assert_eq!(wanted_from_status(&path, true, false)["ckpt"].0, None);
        assert_eq!(wanted_from_status(&path, false, true)["ckpt"].1, None);
        assert!(wanted_from_status(&dir.path().join("none"), false, false).is_empty());
    }
}
