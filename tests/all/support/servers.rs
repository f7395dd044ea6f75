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

/// sshd on a free loopback port, letting root in with a throwaway key; stopped on drop.
pub struct Sshd {
    child: Child,
    pub port: u16,
    pub key: PathBuf,
}

impl Sshd {
    /// The listening sshd's PID: each login's session is its child.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn start(ckpt: &Ckpt) -> Sshd {
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
        let config = format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {dir}/host_key\nAuthorizedKeysFile {dir}/authorized_keys\n\
             PermitRootLogin prohibit-password\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
             UsePAM no\nStrictModes no\nPidFile {dir}/sshd.pid\n",
            dir = dir.display()
        );
        std::fs::write(dir.join("sshd_config"), config).unwrap();
        // sshd's privilege separation directory, which its package makes only under systemd.
        std::fs::create_dir_all("/run/sshd").unwrap();
        let child = Command::new("/usr/sbin/sshd")
            .args(["-D", "-e", "-f"])
            .arg(dir.join("sshd_config"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("sshd.log")).unwrap())
            .spawn()
            .expect("scripts/setup installs openssh-server");
        let up = eventually(Duration::from_secs(10), || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
        assert!(up, "sshd did not listen on 127.0.0.1:{port}");
        Sshd { child, port, key: dir.join("user_key") }
    }

    /// `ssh://root@127.0.0.1:PORT/ROOT` for the store of `to`.
    pub fn url(&self, to: &Ckpt) -> String {
        format!("ssh://root@127.0.0.1:{}{}", self.port, to.root.display())
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
