//! Real servers on loopback for the tests that cross machines: Debian's docker-registry and
//! OpenSSH's sshd, each on a free port with throwaway state under the test's directory; and
//! GnuPG keys of a test's own, which sign what goes to the registry.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{Ckpt, eventually};

/// A server's process, killed and reaped when whoever started it is dropped.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A registry on a free loopback port, storing under the test's directory; stopped on drop.
pub struct LocalRegistry {
    child: Server,
    pub host: String,
}

impl LocalRegistry {
    pub fn start(ckpt: &Ckpt) -> LocalRegistry {
        LocalRegistry::listening(ckpt, "127.0.0.1", "localhost")
    }

    /// One that containers reach too: on every address, named by `address` (a network's
    /// gateway, say).
    pub fn reachable_at(ckpt: &Ckpt, address: &str) -> LocalRegistry {
        LocalRegistry::listening(ckpt, "0.0.0.0", address)
    }

    fn listening(ckpt: &Ckpt, bind: &str, address: &str) -> LocalRegistry {
        let port = free_port();
        let config = ckpt.path("registry.yml");
        let storage = ckpt.path("registry-data");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {bind}:{port}\n",
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
        let host = format!("{address}:{port}");
        let up = eventually(Duration::from_secs(10), || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
        assert!(up, "docker-registry did not listen on {host}");
        LocalRegistry { child: Server(child), host }
    }
}

/// Free loopback port: bound, then released for the server to take.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Runs `ip ARGS` and fails the test with its stderr if it fails.
fn ip(args: &str) {
    let out = Command::new("sh").arg("-c").arg(format!("ip {args}")).output().unwrap();
    assert!(out.status.success(), "ip {args}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A network namespace for as long as the test holds it; whatever runs in it (sshd, ckpt's
/// bridges, veths and rules) goes with it.
struct Namespace(String);

impl Namespace {
    fn new(name: String) -> Namespace {
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        ip(&format!("netns add {name}"));
        ip(&format!("-n {name} link set lo up"));
        Namespace(name)
    }

    /// A veth pair from `near` (a namespace, or the host's for `None`) to this one, with
    /// `PREFIX.1/30` on the near end and `PREFIX.2/30` here.
    fn join(&self, near: Option<&str>, near_link: &str, link: &str, prefix: &str) {
        let at = near.map(|n| format!("-n {n} ")).unwrap_or_default();
        ip(&format!("{at}link add {near_link} type veth peer name {link} netns {}", self.0));
        ip(&format!("{at}addr add {prefix}.1/30 dev {near_link}"));
        ip(&format!("{at}link set {near_link} up"));
        ip(&format!("-n {} addr add {prefix}.2/30 dev {link}", self.0));
        ip(&format!("-n {} link set {link} up", self.0));
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "pids", &self.0]).output().map(|out| {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = Command::new("kill").args(["-9", pid]).output();
            }
        });
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

/// Another host, as far as networks go: a network namespace of its own, joined to this one by
/// a veth pair (`10.252.N.1` here, `10.252.N.2` there), with its own bridges and firewall.
pub struct FarHost {
    namespace: Namespace,
    pub address: String,
}

impl FarHost {
    pub fn new() -> FarHost {
        let n = std::process::id() % 200 + 20;
        let namespace = Namespace::new(format!("ckptfar{}", std::process::id()));
        namespace.join(None, &format!("vnear{n}"), &format!("vfar{n}"), &format!("10.252.{n}"));
        ip(&format!("-n {} route add default via 10.252.{n}.1", namespace.0));
        FarHost { namespace, address: format!("10.252.{n}.2") }
    }
}

/// A client outside both hosts: a namespace with a link to this host (`10.253.N.1` is this
/// host's end) and one to the far host (`10.254.N.1`), reaching a container's subnet through
/// whichever of them `route_to` names, as a fabric that moves an address would.
pub struct ClientHost {
    namespace: Namespace,
}

impl ClientHost {
    pub fn new(far: &FarHost) -> ClientHost {
        let n = std::process::id() % 200 + 20;
        let namespace = Namespace::new(format!("ckptcli{}", std::process::id()));
        namespace.join(None, &format!("cnear{n}"), &format!("cli{n}"), &format!("10.253.{n}"));
        namespace.join(Some(&far.namespace.0), &format!("cfar{n}"), &format!("clf{n}"), &format!("10.254.{n}"));
        ClientHost { namespace }
    }

    /// Sends the client's packets for `subnet` to this host, or to the far one.
    pub fn route_to(&self, subnet: &str, far: bool) {
        let n = std::process::id() % 200 + 20;
        let via = if far { format!("10.254.{n}.1") } else { format!("10.253.{n}.1") };
        ip(&format!("-n {} route replace {subnet} via {via}", self.namespace.0));
    }

    /// A TCP connection made from inside the client's namespace: the socket stays there.
    pub fn connect(&self, address: &str, port: u16) -> std::io::Result<std::net::TcpStream> {
        let path = format!("/run/netns/{}", self.namespace.0);
        let address: std::net::SocketAddr = format!("{address}:{port}").parse().unwrap();
        // setns moves only the calling thread, so a thread of its own enters the namespace.
        std::thread::spawn(move || {
            let netns = std::fs::File::open(&path)?;
            nix::sched::setns(netns, nix::sched::CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)?;
            std::net::TcpStream::connect_timeout(&address, Duration::from_secs(2))
        })
        .join()
        .unwrap()
    }
}

/// sshd on a free loopback port (or on a far host's address, inside its namespace), letting
/// root in with a throwaway key; stopped on drop.
pub struct Sshd {
    child: Server,
    pub port: u16,
    pub key: PathBuf,
    pub address: String,
}

impl Sshd {
    /// The listening sshd's PID: each login's session is its child.
    pub fn pid(&self) -> u32 {
        self.child.0.id()
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
                command.arg(format!("--net=/run/netns/{}", far.namespace.0)).arg("/usr/sbin/sshd");
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
        Sshd { child: Server(child), port, key: dir.join("user_key"), address }
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

/// Starts `tests/fixtures/SCRIPT` (a Python stand-in) on a free loopback port, serving TLS with
/// the server certificate in `certs`, with `args` besides and its stderr in `log`; returns it
/// once it listens, and its port.
fn tls_fixture(
    script: &str,
    certs: &Path,
    log: &Path,
    args: impl IntoIterator<Item = std::ffi::OsString>,
) -> (Server, u16) {
    let port = free_port();
    let child = Command::new("python3")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures").join(script))
        .args(["--port", &port.to_string()])
        .arg("--cert")
        .arg(certs.join("server.crt"))
        .arg("--key")
        .arg(certs.join("server.key"))
        .args(args)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .expect("scripts/setup installs python3");
    let up = eventually(Duration::from_secs(10), || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
    assert!(up, "{script} did not listen on {port}");
    (Server(child), port)
}

/// The stand-in for a kubelet (`tests/fixtures/fake-kubelet.py`): KEP-2008's checkpoint API on
/// loopback over TLS, for client certificates its CA signed; stopped on drop.
pub struct FakeKubelet {
    child: Server,
    pub address: String,
    /// The CA that signed its serving certificate and the client certificates it accepts.
    pub ca: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// Where it writes archives, as `<--root-dir>/checkpoints`.
    pub checkpoints: PathBuf,
}

/// A CA, and certificates it signed: `server` for 127.0.0.1 and `client` (openssl, EC keys).
pub fn certificates(dir: &Path) {
    let script = r#"set -e
        ec="-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes"
        openssl req -x509 $ec -keyout ca.key -out ca.crt -days 1 -subj /CN=test-ca 2>/dev/null
        openssl req $ec -keyout server.key -out server.csr -subj /CN=kubelet 2>/dev/null
        printf 'subjectAltName=IP:127.0.0.1\n' > server.ext
        openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out server.crt -days 1 -extfile server.ext 2>/dev/null
        openssl req $ec -keyout client.key -out client.csr -subj "/O=ckpt/CN=system:ckpt" 2>/dev/null
        openssl x509 -req -in client.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out client.crt -days 1 2>/dev/null
    "#;
    std::fs::create_dir_all(dir).unwrap();
    let out =
        Command::new("sh").arg("-c").arg(script).current_dir(dir).output().expect("scripts/setup installs openssl");
    assert!(out.status.success(), "openssl: {}", String::from_utf8_lossy(&out.stderr));
}

impl FakeKubelet {
    /// Serves `pods` ("namespace/pod/container" → a CRI runtime's archive of it) with its root
    /// directory and certificates under `dir`.
    pub fn start(dir: &Path, pods: &[(&str, &Path)]) -> FakeKubelet {
        let certs = dir.join("pki");
        certificates(&certs);
        let map: serde_json::Map<String, serde_json::Value> =
            pods.iter().map(|(name, path)| (name.to_string(), path.display().to_string().into())).collect();
        let pods_file = dir.join("pods.json");
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(&pods_file, serde_json::Value::Object(map).to_string()).unwrap();
        let (child, port) = tls_fixture(
            "fake-kubelet.py",
            &certs,
            &dir.join("fake-kubelet.log"),
            ["--client-ca".into(), certs.join("ca.crt").into(), "--root-dir".into(), dir.join("kubelet").into()]
                .into_iter()
                .chain(["--pods".into(), pods_file.into()]),
        );
        FakeKubelet {
            child,
            address: format!("https://127.0.0.1:{port}"),
            ca: certs.join("ca.crt"),
            client_cert: certs.join("client.crt"),
            client_key: certs.join("client.key"),
            checkpoints: dir.join("kubelet/checkpoints"),
        }
    }

    /// The host config lines that reach it with `cert` and `key`.
    pub fn config(&self, cert: &Path, key: &Path) -> String {
        format!(
            "[engines]\nkubelet-address = {:?}\nkubelet-client-cert = {:?}\nkubelet-client-key = {:?}\nkubelet-ca = {:?}\n",
            self.address, cert, key, self.ca
        )
    }
}

/// The stand-in for the Kubernetes API server (`tests/fixtures/fake-apiserver.py`): the
/// requests the node agent makes, over TLS, for a bearer token; stopped on drop. Its objects
/// are in `objects`, read again for each request.
pub struct FakeApiServer {
    child: Server,
    pub objects: PathBuf,
    /// A kubeconfig that reaches it, as a pod's service account would.
    pub kubeconfig: PathBuf,
    pub log: PathBuf,
}

impl FakeApiServer {
    pub fn start(dir: &Path, objects: &serde_json::Value) -> FakeApiServer {
        let certs = dir.join("apiserver-pki");
        certificates(&certs);
        let objects_file = dir.join("cluster.json");
        std::fs::write(&objects_file, objects.to_string()).unwrap();
        let token = "ckpt-node-agent-token";
        let log = dir.join("fake-apiserver.log");
        let (child, port) = tls_fixture(
            "fake-apiserver.py",
            &certs,
            &log,
            ["--token".into(), token.into(), "--objects".into(), objects_file.clone().into()],
        );
        let kubeconfig = dir.join("kubeconfig");
        let ca = certs.join("ca.crt");
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: https://127.0.0.1:{port}\n    certificate-authority: {}\nusers:\n- name: agent\n  user:\n    token: {token}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: agent\ncurrent-context: fake\n",
                ca.display()
            ),
        )
        .unwrap();
        FakeApiServer { child, objects: objects_file, kubeconfig, log }
    }

    /// The cluster from now on.
    pub fn set(&self, objects: &serde_json::Value) {
        std::fs::write(&self.objects, objects.to_string()).unwrap();
    }
}

/// A GPG key of its own for one test, in a GnuPG home under the test's directory: its
/// fingerprint, and its public key exported as a keyring. The agent goes when the test ends.
pub struct GpgKey {
    pub home: PathBuf,
    pub fingerprint: String,
    pub keyring: PathBuf,
}

impl GpgKey {
    pub fn generate(ckpt: &Ckpt, name: &str) -> GpgKey {
        let home = ckpt.path(&format!("gnupg-{name}"));
        std::fs::create_dir(&home).unwrap();
        std::fs::set_permissions(&home, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
        let gpg = |args: &[&str]| {
            let out = Command::new("gpg").env("GNUPGHOME", &home).args(["--batch"]).args(args).output().unwrap();
            assert!(out.status.success(), "gpg {args:?}: {}", String::from_utf8_lossy(&out.stderr));
            out.stdout
        };
        gpg(&["--passphrase", "", "--quick-gen-key", "ckpt test <ckpt@localhost>", "ed25519", "sign", "never"]);
        let listed = String::from_utf8(gpg(&["--with-colons", "--list-secret-keys"])).unwrap();
        let fingerprint = listed.lines().find_map(|l| l.strip_prefix("fpr:")).unwrap().trim_matches(':').to_string();
        let keyring = ckpt.path(&format!("{name}.gpg"));
        std::fs::write(&keyring, gpg(&["--export", &fingerprint])).unwrap();
        GpgKey { home, fingerprint, keyring }
    }
}

impl GpgKey {
    /// Asserts that skopeo, under a policy that requires this key's signature, copies `image`
    /// from its registry (plain HTTP), the signature found where `registries_d` says.
    pub fn assert_skopeo_verifies(&self, ckpt: &Ckpt, registries_d: &Path, image: &str) {
        let policy = ckpt.path("verify-policy.json");
        let requirement = serde_json::json!({"type": "signedBy", "keyType": "GPGKeys", "keyPath": self.keyring});
        std::fs::write(&policy, serde_json::json!({"default": [requirement]}).to_string()).unwrap();
        let copied = Command::new("skopeo")
            .args(["--registries.d", registries_d.to_str().unwrap(), "--policy", policy.to_str().unwrap()])
            .args(["copy", "--remove-signatures", "--src-tls-verify=false", &format!("docker://{image}")])
            .arg(format!("oci:{}:x", ckpt.path("verified-copy").display()))
            .output()
            .unwrap();
        assert!(copied.status.success(), "skopeo copy {image}: {}", String::from_utf8_lossy(&copied.stderr));
    }
}

impl Drop for GpgKey {
    fn drop(&mut self) {
        let _ = Command::new("gpgconf").env("GNUPGHOME", &self.home).args(["--kill", "gpg-agent"]).status();
    }
}
