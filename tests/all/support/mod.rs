//! The harness every integration test uses: a private ckpt root and run root, the real `ckpt`
//! binary, real runc and real CRIU. Where they cannot run (no root, no runc, no CRIU) a test is
//! skipped and says so, unless `CKPT_REQUIRE_INTEGRATION=1` makes that a failure.

#![allow(dead_code)]

pub mod servers;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

pub struct Ckpt {
    pub dir: tempfile::TempDir,
    pub root: PathBuf,
    pub runroot: PathBuf,
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

fn installed(tool: &str) -> bool {
    let found = Command::new("sh").arg("-c").arg(format!("command -v {tool}")).output().map(|o| o.status.success());
    found.unwrap_or(false)
}

/// Whether this machine can run the integration tests; why not, when it cannot. With
/// `CKPT_REQUIRE_INTEGRATION=1`, a machine that cannot fails the test instead.
pub fn can_run(needs: &str) -> bool {
    let missing = if !nix::unistd::geteuid().is_root() {
        Some("root (CRIU and runc need it)".to_string())
    } else {
        ["runc", "criu"].into_iter().find(|t| !installed(t)).map(|t| format!("{t} (run scripts/setup)"))
    };
    let Some(missing) = missing else { return true };
    if std::env::var_os("CKPT_REQUIRE_INTEGRATION").is_some_and(|v| v == "1") {
        panic!("{needs} needs {missing}, and CKPT_REQUIRE_INTEGRATION=1 forbids skipping");
    }
    // Straight to the terminal: libtest captures eprintln!, and a skip must be seen.
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "skipped: {needs} needs {missing}");
    false
}

impl Ckpt {
    /// A private ckpt for one test, or `None` (the test is skipped) where it cannot run.
    pub fn available() -> Option<Ckpt> {
        let caller = std::thread::current().name().unwrap_or("an integration test").to_string();
        can_run(&caller).then(Ckpt::new)
    }

    fn new() -> Ckpt {
        let base = std::env::var_os("CKPT_TEST_DIR").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/var/tmp"));
        std::fs::create_dir_all(&base).unwrap();
        let dir = tempfile::Builder::new().prefix("ckpt-test-").tempdir_in(base).unwrap();
        let root = dir.path().join("root");
        let runroot = dir.path().join("run");
        // Policies in these tests export into the test's own directory, as an admin would allow.
        let config =
            format!("[exports]\ndirectories = [{:?}]\nimage-prefixes = [\"localhost/allowed/\"]\n", dir.path());
        std::fs::write(dir.path().join("ckpt.toml"), config).unwrap();
        Ckpt { dir, root, runroot }
    }

    pub fn command(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ckpt"));
        // One compile cache for all tests: Python and JavaScript components take seconds to
        // compile, and what is under test is that a cached one is not compiled again.
        cmd.env("CKPT_POLICY_CACHE", "/var/tmp/ckpt-test-policy-cache");
        cmd.arg("--root").arg(&self.root).arg("--runroot").arg(&self.runroot);
        // The audit key and head live outside the store; each test has its own.
        cmd.env("CKPT_AUDIT_ANCHOR", self.dir.path().join("audit-anchor"));
        cmd.env("CKPT_CONFIG", self.dir.path().join("ckpt.toml"));
        cmd.stdin(Stdio::null());
        cmd
    }

    pub fn run(&self, args: &[&str]) -> Run {
        let output: Output = self.command().args(args).output().expect("ckpt runs");
        Run {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// Runs ckpt and asserts success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let r = self.run(args);
        assert_eq!(r.code, 0, "ckpt {args:?} failed ({}): {}{}", r.code, r.stderr, r.stdout);
        r.stdout
    }

    /// Runs ckpt and asserts it fails with 125; returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let r = self.run(args);
        assert_eq!(r.code, 125, "ckpt {args:?} should fail with 125, got {}: {}{}", r.code, r.stderr, r.stdout);
        assert!(r.stderr.starts_with("Error: ") || r.stderr.contains("error:"), "no error message: {}", r.stderr);
        r.stderr
    }

    pub fn inspect(&self, name: &str) -> serde_json::Value {
        let out = self.ok(&["inspect", name]);
        let mut list: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
        list.remove(0)
    }

    /// Waits until the page images commands handed to a background `ckpt __discard` are gone,
    /// so that what is left in staging is what a command left.
    pub fn wait_for_discards(&self) {
        let discarding = || {
            std::fs::read_dir(self.root.join("tmp"))
                .into_iter()
                .flatten()
                .flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with(".discard-"))
        };
        assert!(eventually(Duration::from_secs(10), || !discarding()), "a discard never ended");
    }

    pub fn status(&self, name: &str) -> String {
        self.inspect(name)["State"]["Status"].as_str().unwrap().to_string()
    }

    pub fn exec(&self, name: &str, script: &str) -> String {
        self.ok(&["exec", name, "sh", "-c", script])
    }

    pub fn logs(&self, name: &str) -> String {
        self.ok(&["logs", name])
    }

    /// A container that prints and counts once every 100 ms, keeping its count in memory.
    pub fn counter(&self, name: &str, extra: &[&str]) -> String {
        let mut args = vec!["run", "-d", "--name", name];
        args.extend_from_slice(extra);
        args.extend_from_slice(&[
            "busybox",
            "sh",
            "-c",
            "i=0; while true; do echo count $i; i=$((i+1)); sleep 0.1; done",
        ]);
        self.ok(&args).trim().to_string()
    }

    pub fn container_ids(&self) -> Vec<String> {
        self.ok(&["ps", "-a", "-q"]).lines().map(str::to_string).collect()
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

impl Drop for Ckpt {
    fn drop(&mut self) {
        if let Ok(out) = self.command().args(["ps", "-a", "--format", "json"]).output()
            && let Ok(list) = serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout)
        {
            for c in list {
                let id = c["Id"].as_str().unwrap_or_default().to_string();
                let _ = self.command().args(["rm", "-f", &id]).output();
            }
        }
        // Anything still mounted below the test root (a failed test) is released too.
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let root = self.dir.path().to_string_lossy().into_owned();
        for mp in mountinfo.lines().filter_map(|l| l.split(' ').nth(4)).filter(|mp| mp.starts_with(&root)) {
            let _ = nix::mount::umount2(Path::new(mp), nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

/// Polls `check` until it holds or `timeout` passes.
pub fn eventually(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if check() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The last `count N` the counter container printed.
pub fn last_count(logs: &str) -> u64 {
    logs.lines().filter_map(|l| l.strip_prefix("count ")).filter_map(|n| n.trim().parse().ok()).next_back().unwrap_or(0)
}

/// Files below `dir`, recursively (to prove that nothing was left behind).
pub fn files_below(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = entry.path();
            if p.is_dir() && !p.is_symlink() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// Imports an image with busybox plus the host's `flock` and the libraries it needs, for the
/// file-lock tests (busybox has no flock applet).
pub fn import_flock_image(ckpt: &Ckpt) {
    let rootfs = ckpt.path("flock-rootfs");
    for dir in ["bin", "usr/bin", "lib/x86_64-linux-gnu", "lib64", "tmp", "proc", "sys", "dev", "etc"] {
        std::fs::create_dir_all(rootfs.join(dir)).unwrap();
    }
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
    std::os::unix::fs::symlink("busybox", rootfs.join("bin/sh")).unwrap();
    for applet in ["sleep", "rm"] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
    }
    std::fs::copy("/usr/bin/flock", rootfs.join("usr/bin/flock")).unwrap();
    let ldd = Command::new("ldd").arg("/usr/bin/flock").output().unwrap();
    for lib in String::from_utf8_lossy(&ldd.stdout).split_whitespace().filter(|w| w.starts_with('/')) {
        let target = rootfs.join(lib.trim_start_matches('/'));
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::copy(lib, target).unwrap();
    }
    import_rootfs(ckpt, &rootfs, "flock");
}

/// Packs `rootfs` into a tarball beside it and imports that as image `name`.
fn import_rootfs(ckpt: &Ckpt, rootfs: &Path, name: &str) {
    let tarball = rootfs.with_extension("tar");
    let status = Command::new("tar").arg("-cf").arg(&tarball).arg("-C").arg(rootfs).arg(".").status().unwrap();
    assert!(status.success());
    ckpt.ok(&["image", "import", tarball.to_str().unwrap(), name]);
}

/// Imports an image `memcheck` whose `/bin/memcheck N` holds N MiB and checks it every 100 ms
/// (tests/fixtures/memcheck.c, built static here: scripts/setup installs the compiler).
pub fn import_memcheck_image(ckpt: &Ckpt) {
    let rootfs = ckpt.path("memcheck-rootfs");
    std::fs::create_dir_all(rootfs.join("bin")).unwrap();
    let source = fixture("memcheck.c");
    let status = Command::new("cc")
        .args(["-O2", "-static", "-o"])
        .arg(rootfs.join("bin/memcheck"))
        .arg(&source)
        .status()
        .expect("cc runs");
    assert!(status.success(), "cc could not build {source}");
    import_rootfs(ckpt, &rootfs, "memcheck");
}

/// A policy component built by scripts/build-policies.
pub fn policy(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/policies").join(format!("{name}.wasm"));
    assert!(path.is_file(), "{} is missing: run scripts/build-policies (scripts/test does)", path.display());
    path.to_string_lossy().into_owned()
}

pub fn fixture(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures").join(name).to_string_lossy().into_owned()
}

/// The names of the members of an archive.
pub fn members(archive: &Path) -> Vec<String> {
    let out = Command::new("tar").arg("-tf").arg(archive).output().expect("tar runs");
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect()
}

/// One member of an archive, as text.
pub fn member(archive: &Path, name: &str) -> String {
    let out = Command::new("tar").arg("-xOf").arg(archive).arg(name).output().expect("tar runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl Ckpt {
    /// Restores a checkpointed container and prints the modes of its `/` and `/data`.
    pub fn exec_after_restore(&self, name: &str) -> String {
        self.ok(&["restore", name]);
        self.exec(name, "stat -c %a / /data | tr '\\n' ' ' | sed 's/ $//'; echo")
    }
}

/// podman on the host's default store: a ckpt archive names its volumes where podman keeps them
/// by default, as podman's own archives name its graph root. The containers, volumes and images
/// a test names go when the test ends.
pub struct Podman {
    containers: Vec<String>,
    volumes: Vec<String>,
    images: Vec<String>,
    /// A store of the test's own, in place of the host's.
    store: Option<PathBuf>,
}

impl Podman {
    pub fn cleaning(containers: &[&str], volumes: &[&str], images: &[&str]) -> Podman {
        let owned = |names: &[&str]| names.iter().map(|n| n.to_string()).collect();
        Podman { containers: owned(containers), volumes: owned(volumes), images: owned(images), store: None }
    }

    /// podman on a second store of its own under `dir`: its own graph root, run root and
    /// temporary directory, and file locks (the host's store keeps the shared-memory ones).
    /// Everything in it is removed on drop.
    pub fn private_store(dir: &Path) -> Podman {
        std::fs::create_dir_all(dir).unwrap();
        // CONTAINERS_CONF is the only file podman reads then: the host's settings go in too.
        let conf = "[containers]\ndefault_ulimits = []\n[engine]\nlock_type = \"file\"\n";
        std::fs::write(dir.join("containers.conf"), conf).unwrap();
        Podman { containers: vec![], volumes: vec![], images: vec![], store: Some(dir.to_path_buf()) }
    }

    pub fn command(&self) -> Command {
        let mut command = Command::new("podman");
        if let Some(dir) = &self.store {
            command.env("CONTAINERS_CONF", dir.join("containers.conf"));
            command.arg("--root").arg(dir.join("root")).arg("--runroot").arg(dir.join("run"));
            command.arg("--tmpdir").arg(dir.join("tmp"));
        }
        command.args(["--runtime", "runc"]);
        command
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.command().args(args).output().expect("podman runs")
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(out.status.success(), "podman {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        for name in &self.containers {
            let _ = self.run(&["rm", "-f", "-t", "0", name]);
        }
        for name in &self.volumes {
            let _ = self.run(&["volume", "rm", "-f", name]);
        }
        for name in &self.images {
            let _ = self.run(&["rmi", "-f", name]);
        }
        if self.store.is_some() {
            let _ = self.run(&["rm", "-a", "-f", "-t", "0"]);
            let _ = self.run(&["system", "reset", "--force"]);
        }
    }
}

/// `podman system service` on `socket`, for `podman`'s store; stopped on drop.
pub struct PodmanService {
    child: std::process::Child,
    pub socket: PathBuf,
}

impl PodmanService {
    pub fn start(podman: &Podman, socket: PathBuf) -> PodmanService {
        let child = podman
            .command()
            .args(["system", "service", "--time", "0"])
            .arg(format!("unix://{}", socket.display()))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("podman runs");
        let up = eventually(Duration::from_secs(15), || std::os::unix::net::UnixStream::connect(&socket).is_ok());
        assert!(up, "podman system service did not listen on {}", socket.display());
        PodmanService { child, socket }
    }

    /// `ckpt`'s host config names this socket as podman's.
    pub fn serve(&self, ckpt: &Ckpt) {
        let config = std::fs::read_to_string(ckpt.path("ckpt.toml")).unwrap();
        let config = format!("{config}[engines]\npodman-socket = {:?}\n", self.socket);
        std::fs::write(ckpt.path("ckpt.toml"), config).unwrap();
    }
}

impl Drop for PodmanService {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A small tmpfs over a directory, its files copied in; unmounted on drop.
pub struct SmallFs(PathBuf);

impl SmallFs {
    pub fn over(dir: &Path, size: &str) -> SmallFs {
        let files: Vec<(std::ffi::OsString, Vec<u8>)> = std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| (e.file_name(), std::fs::read(e.path()).unwrap()))
            .collect();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700"), "tmpfs"])
            .arg(dir)
            .status()
            .unwrap();
        assert!(mounted.success(), "mount a tmpfs on {}", dir.display());
        for (name, bytes) in files {
            std::fs::write(dir.join(name), bytes).unwrap();
        }
        SmallFs(dir.to_path_buf())
    }

    /// Fills it, so that the next write fails with ENOSPC.
    pub fn fill(&self) {
        self.fill_leaving(0);
    }

    /// Fills it until no more than `leave` bytes are free.
    pub fn fill_leaving(&self, leave: u64) {
        use std::io::Write;
        let free = || {
            let s = nix::sys::statvfs::statvfs(&self.0).unwrap();
            s.blocks_available() * s.fragment_size()
        };
        let mut filler = std::fs::OpenOptions::new().create(true).append(true).open(self.filler()).unwrap();
        while free() > leave && filler.write_all(&[0u8; 4096]).is_ok() {}
        let _ = filler.sync_all();
    }

    /// Frees what `fill` took.
    pub fn unfill(&self) {
        let _ = std::fs::remove_file(self.filler());
    }

    fn filler(&self) -> PathBuf {
        self.0.join("filler")
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}
