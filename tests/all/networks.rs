//! Containers on real networks: netavark's bridges, ckpt's own address allocation, published
//! ports, and addresses that survive a checkpoint and a restore. The behaviours of podman's
//! `test/system/520-checkpoint.bats` ("--export, with volumes", "ip and mac handling") in
//! ckpt's own words.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use crate::support::servers::{ClientHost, FarHost, Sshd};
use crate::support::{Ckpt, eventually};

/// A host port nobody holds right now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The body of `GET /` at 127.0.0.1:`port`, or `None` if nothing answers.
fn http_get(port: u16) -> Option<String> {
    http_get_at("127.0.0.1", port)
}

fn http_get_at(host: &str, port: u16) -> Option<String> {
    let address = std::net::SocketAddr::new(host.parse().unwrap(), port);
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    stream.write_all(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    answer.split_once("\r\n\r\n").map(|(_, body)| body.to_string())
}

/// Sends text on a connection to an echo server and reads back as much: what came back, or why
/// nothing did (a reset, a timeout).
fn echo_over(client: &mut TcpStream) -> impl FnMut(&[u8]) -> std::io::Result<Vec<u8>> + '_ {
    client.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    |text: &[u8]| {
        client.write_all(text)?;
        let mut got = vec![0; text.len()];
        client.read_exact(&mut got).map(|()| got)
    }
}

/// A busybox httpd on port 80 of the container, serving `text`, published on `port`.
fn web_server(ckpt: &Ckpt, name: &str, port: u16, text: &str, extra: &[&str]) -> String {
    let publish = format!("{port}:80");
    let script = format!("mkdir -p /www && echo {text} > /www/index.html && exec httpd -f -p 80 -h /www");
    let mut args = vec!["run", "-d", "--name", name, "-p", &publish];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["busybox", "sh", "-c", &script]);
    let id = ckpt.ok(&args).trim().to_string();
    assert!(eventually(Duration::from_secs(5), || http_get(port).is_some()), "{name} never answered on {port}");
    id
}

/// Removes a network when the test ends, passed or not: networks are the host's.
struct RemovedAtEnd<'a>(&'a Ckpt, String);

impl Drop for RemovedAtEnd<'_> {
    fn drop(&mut self) {
        let _ = self.0.run(&["network", "rm", "-f", &self.1]);
    }
}

fn address(ckpt: &Ckpt, name: &str) -> (String, String) {
    let settings = &ckpt.inspect(name)["NetworkSettings"];
    (settings["IPAddress"].as_str().unwrap().to_string(), settings["MacAddress"].as_str().unwrap().to_string())
}

/// What the host's firewall and interfaces hold for a container: its DNAT rules.
fn dnat_rules_for(id: &str) -> usize {
    let out = std::process::Command::new("iptables").args(["-t", "nat", "-S"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.contains(id)).count()
}

#[test]
fn a_published_web_server_answers_after_checkpoint_restore_and_import_with_its_address() {
    let Some(ckpt) = Ckpt::available() else { return };
    let port = free_port();
    let id = web_server(&ckpt, "web", port, "hello-from-ckpt", &[]);
    assert_eq!(http_get(port).unwrap().trim(), "hello-from-ckpt");
    let (ip, mac) = address(&ckpt, "web");
    assert!(ip.starts_with("10.90."), "on the default network: {ip}");
    let inspected = ckpt.inspect("web");
    assert_eq!(inspected["HostConfig"]["PortBindings"]["80/tcp"][0]["HostPort"], port.to_string());
    assert_eq!(inspected["NetworkSettings"]["Networks"]["ckpt"]["IPAddress"], ip.as_str());
    assert!(ckpt.ok(&["ps"]).contains(&format!("0.0.0.0:{port}->80/tcp")));

    ckpt.ok(&["checkpoint", "web"]);
    assert!(eventually(Duration::from_secs(5), || http_get(port).is_none()), "nothing answers while checkpointed");
    assert!(eventually(Duration::from_secs(5), || dnat_rules_for(&id) == 0), "the port is released");
    ckpt.ok(&["restore", "web"]);
    assert!(eventually(Duration::from_secs(5), || http_get(port).is_some()));
    assert_eq!(http_get(port).unwrap().trim(), "hello-from-ckpt");
    assert_eq!(address(&ckpt, "web"), (ip.clone(), mac.clone()), "the same IP and MAC after a restore");

    // A restart is a new start: a new address, as podman gives one.
    ckpt.ok(&["restart", "-t", "0", "web"]);
    let (new_ip, new_mac) = address(&ckpt, "web");
    assert!(new_ip != ip && new_mac != mac, "restart gives a new address: {new_ip} {new_mac}");
    assert!(eventually(Duration::from_secs(5), || http_get(port).is_some()));

    // podman's "--export, with volumes": exported, removed, imported in a second store.
    let archive = ckpt.path("web.tar.zst");
    ckpt.ok(&["checkpoint", "-e", archive.to_str().unwrap(), "web"]);
    let members = crate::support::members(&archive);
    assert!(members.iter().any(|m| m == "network.status"), "{members:?}");
    ckpt.ok(&["rm", "web"]);
    assert_eq!(dnat_rules_for(&id), 0);
    let other = Ckpt::available().unwrap();
    other.ok(&["restore", "--import", archive.to_str().unwrap()]);
    assert!(eventually(Duration::from_secs(5), || http_get(port).is_some()), "the import publishes the port again");
    assert_eq!(http_get(port).unwrap().trim(), "hello-from-ckpt");
    assert_eq!(address(&other, "web"), (new_ip, new_mac), "the import asks for the archive's address");

    // With --name, a new container: a new address; --publish moves its port.
    let moved = free_port();
    let publish = format!("{moved}:80");
    other.ok(&["restore", "--import", archive.to_str().unwrap(), "--name", "web2", "-p", &publish]);
    assert!(eventually(Duration::from_secs(5), || http_get(moved).is_some()));
    assert_ne!(address(&other, "web2").0, address(&other, "web").0);
}

#[test]
fn a_client_keeps_its_connection_through_a_published_port_across_checkpoint_and_restore() {
    let Some(ckpt) = Ckpt::available() else { return };
    let port = free_port();
    let publish = format!("{port}:7");
    ckpt.ok(&["run", "-d", "--name", "echo", "-p", &publish, "busybox", "sh", "-c", "nc -ll -p 7 -e cat"]);
    let connect = || TcpStream::connect(("127.0.0.1", port));
    assert!(eventually(Duration::from_secs(5), || connect().is_ok()));
    let mut client = connect().unwrap();
    let mut echo = echo_over(&mut client);
    assert_eq!(echo(b"before\n").unwrap(), b"before\n");
    ckpt.ok(&["checkpoint", "--tcp-established", "echo"]);
    assert_eq!(ckpt.status("echo"), "exited");
    ckpt.ok(&["restore", "--tcp-established", "echo"]);
    assert_eq!(echo(b"after\n").expect("the connection carries on"), b"after\n");
}

#[test]
fn containers_on_a_user_network_reach_each_other_by_name_and_leave_nothing() {
    let Some(ckpt) = Ckpt::available() else { return };
    let network = format!("net{}", std::process::id() % 100000);
    let _removed = RemovedAtEnd(&ckpt, network.clone());
    let created = ckpt.ok(&["network", "create", &network]);
    assert_eq!(created.trim(), network);
    let inspected: serde_json::Value = serde_json::from_str(&ckpt.ok(&["network", "inspect", &network])).unwrap();
    let subnet = inspected[0]["subnets"][0]["subnet"].as_str().unwrap().to_string();
    assert!(inspected[0]["dns_enabled"].as_bool().unwrap());
    assert!(ckpt.ok(&["network", "ls", "--format", "{{.Name}}"]).lines().any(|l| l == network));

    let listed = ckpt.ok(&["network", "ls", "--noheading"]);
    assert!(!listed.contains("NETWORK ID") && listed.contains(&network), "{listed}");

    let port = free_port();
    let id = web_server(&ckpt, "server", port, "by-name", &["--network", &network, "--network-alias", "www"]);
    // podman's per-network options: a fixed address and MAC on this network.
    let fixed_ip = format!("{}.77", subnet.trim_end_matches(".0/24"));
    let fixed = format!("{network}:ip={fixed_ip},mac=92:d0:c6:0a:29:38");
    ckpt.ok(&["run", "-d", "--name", "client", "--network", &fixed, "busybox", "sleep", "1000"]);
    assert_eq!(address(&ckpt, "client"), (fixed_ip.clone(), "92:d0:c6:0a:29:38".to_string()));
    // Debian's static busybox wget crashes in this image, so the request goes through nc.
    let fetch_from = |host: &str| {
        let script = format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {host} 80 | tail -n 1");
        ckpt.run(&["exec", "client", "sh", "-c", &script])
    };
    let fetch = || fetch_from("server");
    assert!(eventually(Duration::from_secs(10), || fetch().stdout.trim() == "by-name"), "{}", fetch().stderr);
    assert_eq!(fetch_from("www").stdout.trim(), "by-name", "and by its alias");
    let hosts = ckpt.exec("client", "cat /etc/hosts /etc/resolv.conf");
    assert!(hosts.contains("host.containers.internal") && hosts.contains("search dns.podman"), "{hosts}");

    // Still by name after both were checkpointed and restored. Told to ignore its fixed
    // address and MAC, the client gets new ones, and keeps new ones across a restart.
    ckpt.ok(&["checkpoint", "server", "client"]);
    ckpt.ok(&["restore", "server"]);
    ckpt.ok(&["restore", "--ignore-static-ip", "--ignore-static-mac", "client"]);
    let (ip, mac) = address(&ckpt, "client");
    assert!(ip != fixed_ip && mac != "92:d0:c6:0a:29:38", "{ip} {mac}");
    assert!(eventually(Duration::from_secs(10), || fetch().stdout.trim() == "by-name"), "{}", fetch().stderr);
    ckpt.ok(&["restart", "-t", "0", "client"]);
    assert_ne!(address(&ckpt, "client").0, fixed_ip, "the fixed address is gone from its settings");
    assert!(ckpt.ok(&["ps", "--filter", "status=unknown", "--noheading"]).is_empty());

    let refused = ckpt.fails(&["network", "rm", &network]);
    assert!(refused.contains(&format!("network {network:?} is in use by container")), "{refused}");
    ckpt.ok(&["network", "rm", "-f", &network]);
    assert!(ckpt.container_ids().is_empty(), "--force removed its containers");
    assert_eq!(dnat_rules_for(&id), 0);
    let leases = std::fs::read_to_string(format!("/run/ckpt/networks/ipam/{network}.json"));
    assert!(leases.is_err(), "the network's allocations went with it: {leases:?}");
    assert!(!ckpt.ok(&["network", "ls"]).contains(&network));
    let links = std::process::Command::new("ip").args(["-br", "addr"]).output().unwrap();
    let prefix = subnet.trim_end_matches(".0/24");
    assert!(!String::from_utf8_lossy(&links.stdout).contains(prefix), "its bridge is gone");
}

#[test]
fn bad_network_input_is_refused_by_name_and_changes_nothing() {
    let Some(ckpt) = Ckpt::available() else { return };
    let network = format!("bad{}", std::process::id() % 100000);
    let _removed = RemovedAtEnd(&ckpt, network.clone());
    ckpt.ok(&["network", "create", "--subnet", "10.91.240.0/24", &network]);
    let overlap = ckpt.fails(&["network", "create", "--subnet", "10.91.240.128/25", "other"]);
    assert!(overlap.contains(&format!("overlaps network {network:?}")), "{overlap}");
    let outside = ckpt.fails(&["network", "create", "--subnet", "10.91.241.0/24", "--gateway", "10.9.9.1", "other"]);
    assert!(outside.contains("gateway 10.9.9.1 is not in subnet 10.91.241.0/24"), "{outside}");
    assert!(!ckpt.ok(&["network", "ls"]).contains("other"));

    ckpt.ok(&[
        "run",
        "-d",
        "--name",
        "first",
        "--network",
        &network,
        "--ip",
        "10.91.240.9",
        "busybox",
        "sleep",
        "1000",
    ]);
    let taken =
        ckpt.fails(&["run", "-d", "--name", "second", "--network", &network, "--ip", "10.91.240.9", "busybox", "true"]);
    assert!(taken.contains("address 10.91.240.9 is already in use by container"), "{taken}");
    let port = free_port();
    let publish = format!("{port}:80");
    ckpt.ok(&["run", "-d", "--name", "third", "-p", &publish, "busybox", "sleep", "1000"]);
    let twice = ckpt.fails(&["run", "-d", "--name", "fourth", "-p", &publish, "busybox", "true"]);
    assert!(twice.contains(&format!("port {port}/tcp is already published by container \"third\"")), "{twice}");
    let held = TcpListener::bind("0.0.0.0:0").unwrap();
    let held_port = held.local_addr().unwrap().port();
    let busy = ckpt.fails(&["run", "-d", "--name", "fifth", "-p", &format!("{held_port}:80"), "busybox", "true"]);
    assert!(busy.contains("in use by a process of the host"), "{busy}");
    let unknown = ckpt.fails(&["run", "--name", "sixth", "--network", "nosuch", "busybox", "true"]);
    assert!(unknown.contains("network \"nosuch\" not found"), "{unknown}");
    let host = ckpt.fails(&["run", "--name", "seventh", "--network", "host", "busybox", "true"]);
    assert!(host.contains("--network host is not supported"), "{host}");
    let outside =
        ckpt.fails(&["run", "--name", "eighth", "--network", &network, "--ip", "10.1.1.1", "busybox", "true"]);
    assert!(outside.contains("is not in network"), "{outside}");
    let names: Vec<String> = ckpt.ok(&["ps", "-a", "--format", "{{.Names}}"]).lines().map(String::from).collect();
    assert_eq!(names.len(), 2, "only the two that ran exist: {names:?}");

    let none = ckpt.ok(&["run", "--rm", "--network", "none", "busybox", "ip", "-o", "link"]);
    assert_eq!(none.lines().count(), 1, "loopback only: {none}");
    let check = ckpt.ok(&["system", "check"]);
    assert_eq!(check.trim(), "nothing to repair", "{check}");
    ckpt.ok(&["rm", "-f", "first", "third"]);
    ckpt.ok(&["network", "rm", &network]);
}

/// A published web server on a user network migrates to another host (a network namespace of
/// its own, with its own sshd, bridges and firewall, so that the address really moves): the far
/// side makes the network it lacks, under the same subnet, gives the container the address it
/// had, and serves on the published port there. A client on a third host, connected to the
/// container's address, keeps its connection once the fabric routes that address to the far
/// host (here the test moves the route, as a routing protocol would).
#[test]
fn a_published_web_server_migrates_to_another_host_with_its_network_and_serves_there() {
    let Some(source) = Ckpt::available() else { return };
    let Some(dest) = Ckpt::available() else { return };
    let far = FarHost::new();
    let client_host = ClientHost::new(&far);
    // The far host keeps its networks where only it sees them.
    let config = format!(
        "[network]\ndefinitions = {:?}\nstate = {:?}\n",
        dest.path("networks").display().to_string(),
        dest.path("netstate").display().to_string()
    );
    std::fs::write(dest.path("ckpt.toml"), config).unwrap();
    let sshd = Sshd::start_on(&source, Some(&far));
    let network = format!("mig{}", std::process::id() % 100000);
    let subnet = "10.91.231.0/24";
    let _removed = RemovedAtEnd(&source, network.clone());
    source.ok(&["network", "create", "--subnet", subnet, &network]);
    let port = free_port();
    let script = "mkdir -p /www && echo served-far > /www/index.html && httpd -p 80 -h /www && exec nc -ll -p 7 -e cat";
    let publish = format!("{port}:80");
    source.ok(&["run", "-d", "--name", "web", "--network", &network, "-p", &publish, "busybox", "sh", "-c", script]);
    assert!(eventually(Duration::from_secs(5), || http_get(port).is_some()), "web never answered on {port}");
    let before = address(&source, "web");

    client_host.route_to(subnet, false);
    let connect = || client_host.connect(&before.0, 7);
    assert!(eventually(Duration::from_secs(5), || connect().is_ok()), "the client never reached {}", before.0);
    let mut client = connect().unwrap();
    let mut echo = echo_over(&mut client);
    assert_eq!(echo(b"here\n").unwrap(), b"here\n");

    let mut args: Vec<String> = vec!["migrate".into(), "--tcp-established".into()];
    args.extend(sshd.flags(&dest));
    args.extend(["web".into(), sshd.url(&dest)]);
    let moved = source.run(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(moved.code, 0, "migrate failed: {}{}", moved.stderr, moved.stdout);
    assert!(source.container_ids().is_empty());
    assert!(eventually(Duration::from_secs(5), || http_get_at(&far.address, port).is_some()), "nothing serves there");
    assert_eq!(http_get_at(&far.address, port).unwrap().trim(), "served-far");
    assert!(http_get(port).is_none(), "and nothing here");
    let made: serde_json::Value = serde_json::from_str(&dest.ok(&["network", "inspect", &network])).unwrap();
    assert_eq!(made[0]["subnets"][0]["subnet"], subnet, "the far side made the network");
    assert_eq!(address(&dest, "web"), before, "with the container's address and MAC");

    client_host.route_to(subnet, true);
    assert_eq!(echo(b"there\n").expect("the client's connection carries on at the far host"), b"there\n");
    source.ok(&["network", "rm", &network]);
}

/// The addresses this store's containers hold on the default network.
fn leases_of(ckpt: &Ckpt) -> usize {
    let Ok(text) = std::fs::read_to_string("/run/ckpt/networks/ipam/ckpt.json") else { return 0 };
    let allocations: serde_json::Value = serde_json::from_str(&text).unwrap();
    let root = ckpt.root.to_str().unwrap();
    allocations["leases"].as_object().unwrap().values().filter(|lease| lease["store"] == root).count()
}

/// `run` SIGKILLed at each of its renames (a record, the network's saved options, its status,
/// the container's files): after `system check --repair` only a running container holds an
/// address, nothing is left to repair, and once it is removed no address or forwarded port is.
#[test]
fn a_run_killed_at_any_step_leaves_no_address_once_repaired() {
    let Some(ckpt) = Ckpt::available() else { return };
    let port = free_port();
    let publish = format!("{port}:80");
    let args = ["run", "-d", "--name", "killed", "-p", &publish, "busybox", "sleep", "1000"];
    let renames = "rename,renameat,renameat2";
    let most = crate::faults::most_calls(&ckpt, renames, &args);
    ckpt.ok(&["rm", "-f", "killed"]);
    let forwarded = || {
        let out = std::process::Command::new("iptables").args(["-t", "nat", "-S"]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.contains(&format!("--dport {port} "))).count()
    };
    for n in 1..=most {
        let what = format!("SIGKILL at rename {n} of {most}");
        let inject = format!("inject={renames}:signal=KILL:when={n}");
        crate::faults::traced(&ckpt, &["-o".into(), "/dev/null".into(), "-e".into(), inject], &args);
        ckpt.run(&["system", "check", "--repair"]);
        let running = ckpt.ok(&["ps", "-q"]).lines().count();
        assert_eq!(leases_of(&ckpt), running, "{what}: only a running container holds an address");
        let check = ckpt.run(&["system", "check"]);
        assert_eq!(check.code, 0, "{what}: left after --repair: {}", check.stdout);
        let _ = ckpt.run(&["rm", "-f", "killed"]);
        assert_eq!(leases_of(&ckpt), 0, "{what}: an address outlived the container");
        assert_eq!(forwarded(), 0, "{what}: port {port} is still forwarded");
    }
}

/// A policy sees the container's networks (through the contract's `ext` until a minor version
/// gives them records): its address, its published ports and the connections clients hold to
/// them. The migration policy with `keep-connections` refuses to move it while one is held,
/// and nothing changes: it runs here, and the client's connection carries on.
#[test]
fn a_policy_sees_the_network_and_keeps_a_connected_container_where_it_is() {
    let Some(source) = Ckpt::available() else { return };
    let Some(dest) = Ckpt::available() else { return };
    let sshd = Sshd::start(&source);
    let port = free_port();
    let publish = format!("{port}:7");
    source.ok(&["run", "-d", "--name", "echo", "-p", &publish, "busybox", "sh", "-c", "nc -ll -p 7 -e cat"]);
    assert!(eventually(Duration::from_secs(5), || TcpStream::connect(("127.0.0.1", port)).is_ok()));
    let mut client = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut echo = echo_over(&mut client);
    assert_eq!(echo(b"one\n").unwrap(), b"one\n");

    let facts: serde_json::Value = serde_json::from_str(&source.ok(&["policy", "facts", "echo"])).unwrap();
    let ext: std::collections::BTreeMap<String, String> = facts["ext"]
        .as_array()
        .unwrap()
        .iter()
        .map(|kv| (kv["key"].as_str().unwrap().to_string(), kv["value"].as_str().unwrap().to_string()))
        .collect();
    assert_eq!(ext["network.mode"], "bridge");
    assert_eq!(ext["network.ckpt.address"], address(&source, "echo").0);
    assert_eq!(ext["network.ports"], format!(":{port}->7/tcp"));
    assert!(eventually(Duration::from_secs(5), || {
        let facts: serde_json::Value = serde_json::from_str(&source.ok(&["policy", "facts", "echo"])).unwrap();
        facts["ext"].as_array().unwrap().iter().any(|kv| kv["key"] == "network.connections.7/tcp" && kv["value"] == "1")
    }));

    let migration = crate::support::policy("migration");
    let settings = format!(r#"{{"target": "{}/{{name}}.tar", "keep-connections": true}}"#, source.dir.path().display());
    let mut args: Vec<String> =
        vec!["migrate".into(), "--policy".into(), migration, "--policy-config".into(), settings];
    args.extend(sshd.flags(&dest));
    args.extend(["echo".into(), sshd.url(&dest)]);
    let refused = source.run(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(refused.code, 125, "{}{}", refused.stderr, refused.stdout);
    assert!(refused.stderr.contains("1 connection(s) to its published ports"), "{}", refused.stderr);
    assert_eq!(source.status("echo"), "running");
    assert!(dest.container_ids().is_empty());
    assert_eq!(echo(b"two\n").expect("the client's connection carries on"), b"two\n");
}
