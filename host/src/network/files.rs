//! `/etc/resolv.conf` and `/etc/hosts` for a container on a network, made as podman makes
//! them (containers/common `libnetwork/resolvconf` and `libnetwork/etchosts`).

use std::net::Ipv4Addr;

/// What podman falls back to when the host names no nameserver a container can reach.
const FALLBACK_NAMESERVERS: [&str; 2] = ["8.8.8.8", "8.8.4.4"];

/// The container's resolv.conf: `--dns` servers if given; else aardvark's (the gateways of
/// networks with DNS) with their search domains, then the host's nameservers that are not on
/// the host's loopback (which the container cannot reach).
pub fn resolv_conf(host: &str, dns: &[Ipv4Addr], aardvark: &[String], search: &[String]) -> String {
    let mut servers: Vec<String> = Vec::new();
    let mut searches: Vec<String> = search.to_vec();
    let mut options: Vec<String> = Vec::new();
    for line in host.lines() {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("nameserver") => {
                if let Some(server) = words.next().filter(|s| !s.starts_with("127.") && *s != "::1") {
                    servers.push(server.to_string());
                }
            }
            Some("search") => searches.extend(words.map(String::from)),
            Some("options") => options.extend(words.map(String::from)),
            _ => {}
        }
    }
    let servers: Vec<String> = if !dns.is_empty() {
        dns.iter().map(Ipv4Addr::to_string).collect()
    } else {
        let mut all = aardvark.to_vec();
        all.extend(servers);
        if all.is_empty() {
            all = FALLBACK_NAMESERVERS.map(String::from).to_vec();
        }
        all
    };
    let mut text = String::new();
    if !searches.is_empty() {
        text.push_str(&format!("search {}\n", searches.join(" ")));
    }
    for server in servers {
        text.push_str(&format!("nameserver {server}\n"));
    }
    if !options.is_empty() {
        text.push_str(&format!("options {}\n", options.join(" ")));
    }
    text
}

/// The container's hosts file: `--add-host` entries first, localhost, the container's own
/// addresses under its hostname and name, and `host.containers.internal` for the host.
pub fn hosts(
    added: &[(String, String)],
    own: &[Ipv4Addr],
    hostname: &str,
    name: &str,
    host_address: Option<Ipv4Addr>,
) -> String {
    let mut text = String::new();
    for (host, ip) in added {
        text.push_str(&format!("{ip}\t{host}\n"));
    }
    text.push_str("127.0.0.1\tlocalhost localhost.localdomain localhost4 localhost4.localdomain4\n");
    text.push_str("::1\tlocalhost localhost.localdomain localhost6 localhost6.localdomain6\n");
    if own.is_empty() {
        text.push_str(&format!("127.0.1.1\t{hostname} {name}\n"));
    }
    for ip in own {
        text.push_str(&format!("{ip}\t{hostname} {name}\n"));
    }
    if let Some(host) = host_address {
        text.push_str(&format!("{host}\thost.containers.internal\n"));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST: &str =
        "# made by dhclient\nsearch example.org\nnameserver 127.0.0.53\nnameserver 192.0.2.53\noptions edns0\n";

    #[test]
    fn resolv_conf_puts_aardvark_first_and_leaves_out_the_hosts_loopback() {
        let text = resolv_conf(HOST, &[], &["10.91.0.1".into()], &["dns.podman".into()]);
        assert_eq!(text, "search dns.podman example.org\nnameserver 10.91.0.1\nnameserver 192.0.2.53\noptions edns0\n");
        let given = resolv_conf(HOST, &["1.1.1.1".parse().unwrap()], &["10.91.0.1".into()], &[]);
        assert!(given.contains("nameserver 1.1.1.1\n") && !given.contains("10.91.0.1"), "{given}");
        let loopback_only = resolv_conf("nameserver 127.0.0.53\n", &[], &[], &[]);
        assert_eq!(loopback_only, "nameserver 8.8.8.8\nnameserver 8.8.4.4\n");
    }

    #[test]
    fn hosts_name_the_container_at_its_address() {
        let text = hosts(
            &[("db.local".into(), "192.0.2.7".into())],
            &["10.90.0.2".parse().unwrap()],
            "abcdef012345",
            "web",
            Some("10.90.0.1".parse().unwrap()),
        );
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "192.0.2.7\tdb.local");
        assert!(lines.contains(&"10.90.0.2\tabcdef012345 web"));
        assert_eq!(lines.last(), Some(&"10.90.0.1\thost.containers.internal"));
        assert!(hosts(&[], &[], "h", "n", None).contains("127.0.1.1\th n"));
    }
}
