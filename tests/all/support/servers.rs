//! Real servers on loopback for the tests that cross machines: Debian's docker-registry and
//! OpenSSH's sshd, each on a free port with throwaway state under the test's directory.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{Ckpt, eventually};

/// A registry on a free loopback port, storing under the test's directory; stopped on drop.
pub struct LocalRegistry {
    child: Child,
    pub host: String,
}

impl LocalRegistry {
    pub fn start(ckpt: &Ckpt) -> LocalRegistry {
        let port = free_port();
        let config = ckpt.path("registry.yml");
        let storage = ckpt.path("registry-data");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
                storage.display()
            ),
        )
        .unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("scripts/setup installs docker-registry");
        let host = format!("localhost:{port}");
        let up = eventually(Duration::from_secs(10), || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
        assert!(up, "docker-registry did not listen on {host}");
        LocalRegistry { child, host }
    }
}

impl Drop for LocalRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Free loopback port: bound, then released for the server to take.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Another host, as far as networks go: a network namespace of its own, joined to this one by
/// a veth pair (`10.252.N.1` here, `10.252.N.2` there), with its own bridges and firewall.
pub struct FarHost {
    pub netns: String,
    pub address: String,
    pub near_address: String,
}

impl FarHost {
    pub fn new() -> FarHost {
        let n = std::process::id() % 200 + 20;
        let netns = format!("ckptfar{}", std::process::id());
        let (near, far) = (format!("vnear{n}"), format!("vfar{n}"));
        let ip = |args: &str| {
            let out = Command::new("sh").arg("-c").arg(format!("ip {args}")).output().unwrap();
            assert!(out.status.success(), "ip {args}: {}", String::from_utf8_lossy(&out.stderr));
        };
        let _ = Command::new("ip").args(["netns", "del", &netns]).output();
        ip(&format!("netns add {netns}"));
        ip(&format!("link add {near} type veth peer name {far} netns {netns}"));
        ip(&format!("addr add 10.252.{n}.1/30 dev {near}"));
        ip(&format!("link set {near} up"));
        ip(&format!("-n {netns} addr add 10.252.{n}.2/30 dev {far}"));
        ip(&format!("-n {netns} link set {far} up"));
        ip(&format!("-n {netns} link set lo up"));
        ip(&format!("-n {netns} route add default via 10.252.{n}.1"));
        FarHost { netns, address: format!("10.252.{n}.2"), near_address: format!("10.252.{n}.1") }
    }
}

impl Drop for FarHost {
    fn drop(&mut self) {
        // Whatever ckpt left there (bridges, veths, rules) goes with the namespace.
        let _ = Command::new("ip").args(["netns", "pids", &self.netns]).output().map(|out| {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = Command::new("kill").args(["-9", pid]).output();
            }
        });
        let _ = Command::new("ip").args(["netns", "del", &self.netns]).output();
    }
}

/// sshd on a free loopback port (or on a far host's address, inside its namespace), letting
/// root in with a throwaway key; stopped on drop.
pub struct Sshd {
    child: Child,
    pub port: u16,
    pub key: PathBuf,
    pub address: String,
}

impl Sshd {
    /// The listening sshd's PID: each login's session is its child.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn start(ckpt: &Ckpt) -> Sshd {
        Sshd::start_on(ckpt, None)
    }

    /// sshd inside `far`'s namespace, on its address: what it runs, a ckpt included, sees that
    /// host's network.
    pub fn start_on(ckpt: &Ckpt, far: Option<&FarHost>) -> Sshd {
        let dir = ckpt.path("sshd");
        std::fs::create_dir_all(&dir).unwrap();
        let keygen = |name: &str| {
            let out = Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(dir.join(name))
                .output()
                .expect("scripts/setup installs openssh-client");
            assert!(out.status.success(), "ssh-keygen: {}", String::from_utf8_lossy(&out.stderr));
        };
        keygen("host_key");
        keygen("user_key");
        std::fs::copy(dir.join("user_key.pub"), dir.join("authorized_keys")).unwrap();
        let port = free_port();
        let address = far.map_or("127.0.0.1".to_string(), |f| f.address.clone());
        let config = format!(
            "Port {port}\nListenAddress {address}\nHostKey {dir}/host_key\nAuthorizedKeysFile {dir}/authorized_keys\n\
             PermitRootLogin prohibit-password\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
             UsePAM no\nStrictModes no\nPidFile {dir}/sshd.pid\n",
            dir = dir.display()
        );
        std::fs::write(dir.join("sshd_config"), config).unwrap();
        // sshd's privilege separation directory, which its package makes only under systemd.
        std::fs::create_dir_all("/run/sshd").unwrap();
        let mut command = match far {
            Some(far) => {
                // nsenter, not `ip netns exec`: that also mounts a sysfs of its own, without the
                // cgroup mounts that runc looks for.
                let mut command = Command::new("nsenter");
                command.arg(format!("--net=/run/netns/{}", far.netns)).arg("/usr/sbin/sshd");
                command
            }
            None => Command::new("/usr/sbin/sshd"),
        };
        let child = command
            .args(["-D", "-e", "-f"])
            .arg(dir.join("sshd_config"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("sshd.log")).unwrap())
            .spawn()
            .expect("scripts/setup installs openssh-server");
        let up = eventually(Duration::from_secs(10), || std::net::TcpStream::connect((address.as_str(), port)).is_ok());
        assert!(up, "sshd did not listen on {address}:{port}");
        Sshd { child, port, key: dir.join("user_key"), address }
    }

    /// `ssh://root@ADDRESS:PORT/ROOT` for the store of `to`.
    pub fn url(&self, to: &Ckpt) -> String {
        format!("ssh://root@{}:{}{}", self.address, self.port, to.root.display())
    }

    /// The flags that reach `to` through this sshd: the key, no host key prompt, and ckpt with
    /// `to`'s run root, host config and the shared policy cache.
    pub fn flags(&self, to: &Ckpt) -> Vec<String> {
        let remote = format!(
            "env CKPT_CONFIG={} CKPT_AUDIT_ANCHOR={} CKPT_POLICY_CACHE=/var/tmp/ckpt-test-policy-cache {} --runroot {}",
            to.dir.path().join("ckpt.toml").display(),
            to.dir.path().join("audit-anchor").display(),
            env!("CARGO_BIN_EXE_ckpt"),
            to.runroot.display()
        );
        [
            "--identity",
            self.key.to_str().unwrap(),
            "--ssh-option",
            "StrictHostKeyChecking=no",
            "--ssh-option",
            "UserKnownHostsFile=/dev/null",
            "--ssh-option",
            "LogLevel=ERROR",
            "--remote-ckpt",
            &remote,
        ]
        .map(String::from)
        .to_vec()
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Two stores, an sshd that reaches the second from the first, and a registry both reach; each
/// store lets policies export into its own directory.
pub struct Sides {
    pub source: Ckpt,
    pub dest: Ckpt,
    pub sshd: Sshd,
    pub registry: LocalRegistry,
}

impl Sides {
    pub fn new() -> Option<Sides> {
        let source = Ckpt::available()?;
        let dest = Ckpt::available()?;
        let sshd = Sshd::start(&source);
        let registry = LocalRegistry::start(&source);
        for side in [&source, &dest] {
            let config = format!(
                "[exports]\ndirectories = [{:?}]\n[registries]\ninsecure = [{:?}]\n",
                side.dir.path(),
                registry.host
            );
            std::fs::write(side.dir.path().join("ckpt.toml"), config).unwrap();
        }
        Some(Sides { source, dest, sshd, registry })
    }
}
