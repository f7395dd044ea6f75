//! Checkpoint images through a real registry (Debian's docker-registry on loopback), pushed and
//! pulled by ckpt and recognised by podman.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::servers::LocalRegistry;
use crate::support::{Ckpt, Podman, eventually, last_count};

#[test]
fn checkpoint_images_go_through_a_registry_and_come_back_running() {
    let Some(ckpt) = Ckpt::available() else { return };
    let registry = LocalRegistry::start(&ckpt);
    let image = format!("{}/ckpt/web:1", registry.host);
    ckpt.counter("web", &[]);
    assert!(eventually(Duration::from_secs(5), || last_count(&ckpt.logs("web")) >= 5));
    ckpt.ok(&["checkpoint", "--create-image", &image, "web"]);
    let at_checkpoint = last_count(&ckpt.logs("web"));

    // TLS is verified unless the flag or the host config says otherwise.
    let refused = ckpt.fails(&["push", &image]);
    assert!(refused.contains("push to") && refused.contains(&image), "{refused}");
    assert_eq!(ckpt.ok(&["push", "--tls-verify=false", &image]).trim(), image);
    ckpt.ok(&["rm", "-f", "web"]);
    ckpt.ok(&["rmi", &image]);

    // restore REF pulls first, as podman's restore does; the host config lists the registry.
    let config = ckpt.path("with-registry.toml");
    std::fs::write(&config, format!("[registries]\ninsecure = [{:?}]\n", registry.host)).unwrap();
    let config = config.to_str().unwrap();
    ckpt.ok(&["--config", config, "restore", &image, "-n", "web2"]);
    assert!(eventually(Duration::from_secs(5), || last_count(&ckpt.logs("web2")) > at_checkpoint + 3));
    assert_eq!(ckpt.ok(&["images", "--format", "{{.Repository}}:{{.Tag}}"]).lines().filter(|l| *l == image).count(), 1);
    // By digest alone, as `migrate --via` restores: kept under a tag of its digest, `:1` untouched.
    let listed = ckpt.ok(&["images", "--format", "{{.Repository}}:{{.Tag}} {{.Digest}}"]);
    let digest = listed.lines().find_map(|l| l.strip_prefix(&format!("{image} "))).unwrap().trim().to_string();
    let pinned = format!("{}/ckpt/web@{digest}", registry.host);
    ckpt.ok(&["--config", config, "restore", &pinned, "-n", "web3"]);
    assert!(eventually(Duration::from_secs(5), || last_count(&ckpt.logs("web3")) > at_checkpoint + 3));
    let by_digest = format!("{}/ckpt/web:sha256-{}", registry.host, digest.trim_start_matches("sha256:"));
    assert!(ckpt.ok(&["images", "--format", "{{.Repository}}:{{.Tag}}"]).lines().any(|l| l == by_digest), "{listed}");
    ckpt.ok(&["rm", "-f", "web3"]);

    // A pull that fails says what and where, and leaves nothing behind.
    let before = crate::support::files_below(&ckpt.root);
    let missing = format!("{}/ckpt/nothing:1", registry.host);
    let err = ckpt.fails(&["--config", config, "pull", &missing]);
    assert!(err.contains(&missing), "{err}");
    assert_eq!(crate::support::files_below(&ckpt.root), before, "a failed pull leaves nothing");
    assert!(ckpt.fails(&["pull", "web"]).contains("is not a registry reference"));

    // A store without room for what the registry serves refuses before skopeo writes anything.
    let Some(mut tight) = Ckpt::available() else { return };
    let small_dir = tight.path("small");
    std::fs::create_dir_all(&small_dir).unwrap();
    let small = crate::support::SmallFs::over(&small_dir, "4m");
    tight.root = small_dir.join("root");
    tight.ok(&["ps"]);
    small.fill_leaving(256 << 10);
    let before = crate::support::files_below(&tight.root);
    let full = tight.fails(&["--config", config, "pull", &image]);
    assert!(full.contains("needs") && full.contains("free some space"), "{full}");
    assert_eq!(crate::support::files_below(&tight.root), before, "a refused pull leaves nothing");

    // podman recognises the checkpoint image and restores it.
    let podman = Podman::cleaning(&["ckpt-registry-web"], &[], &[&image]);
    let saved = ckpt.path("busybox.tar");
    ckpt.ok(&["save", "-o", saved.to_str().unwrap(), "busybox"]);
    podman.ok(&["load", "-q", "-i", saved.to_str().unwrap()]);
    podman.ok(&["pull", "-q", "--tls-verify=false", &image]);
    podman.ok(&["container", "restore", "-n", "ckpt-registry-web", &image]);
    let carried_on = || last_count(&podman.ok(&["logs", "ckpt-registry-web"])) > at_checkpoint + 3;
    assert!(eventually(Duration::from_secs(5), carried_on), "podman restored {image} but it did not carry on");
}

#[test]
fn policies_come_from_a_registry_pinned_by_digest() {
    let Some(ckpt) = Ckpt::available() else { return };
    let registry = LocalRegistry::start(&ckpt);
    let config = ckpt.path("with-registry.toml");
    std::fs::write(&config, format!("[registries]\ninsecure = [{:?}]\n", registry.host)).unwrap();
    let config = config.to_str().unwrap();
    let destination = format!("{}/ckpt/policies/default:1", registry.host);
    let pinned = ckpt.ok(&["--config", config, "policy", "push", &crate::support::policy("default"), &destination]);
    let pinned = pinned.trim();
    assert!(pinned.starts_with(&format!("{}/ckpt/policies/default@sha256:", registry.host)), "{pinned}");

    let described: serde_json::Value =
        serde_json::from_str(&ckpt.ok(&["--config", config, "policy", "inspect", pinned])).unwrap();
    assert_eq!(described["name"], "default");
    assert_eq!(described["source"], pinned);
    ckpt.counter("p", &[]);
    ckpt.ok(&["--config", config, "checkpoint", "--policy", pinned, "p"]);
    let decisions = std::fs::read_to_string(ckpt.root.join("decisions.jsonl")).unwrap();
    assert!(decisions.contains(pinned), "the decision record names the policy by its pinned reference");

    // A pin is never a file of that relative name, nor whatever sits in the cache under it.
    let planted = ckpt.dir.path().join(pinned);
    std::fs::create_dir_all(planted.parent().unwrap()).unwrap();
    std::fs::copy(crate::support::policy("hostile"), &planted).unwrap();
    let (_, hex) = pinned.split_once("@sha256:").unwrap();
    std::fs::copy(crate::support::policy("hostile"), format!("/var/tmp/ckpt-test-policy-cache/oci/{hex}.wasm"))
        .unwrap();
    let inspected = ckpt
        .command()
        .current_dir(ckpt.dir.path())
        .args(["--config", config, "policy", "inspect", pinned])
        .output()
        .unwrap();
    assert!(inspected.status.success(), "{}", String::from_utf8_lossy(&inspected.stderr));
    let described: serde_json::Value = serde_json::from_slice(&inspected.stdout).unwrap();
    assert_eq!(described["name"], "default", "the pinned policy, not the planted one");

    // Only a digest pins a policy, and a digest the registry does not have is an error.
    let tag = ckpt.fails(&["--config", config, "policy", "inspect", &destination]);
    assert!(tag.contains("pinned by its digest"), "{tag}");
    let unknown = format!("{}/ckpt/policies/default@sha256:{}", registry.host, "0".repeat(64));
    assert!(ckpt.fails(&["--config", config, "policy", "inspect", &unknown]).contains("manifest unknown"));
    // An image is not a policy.
    let image = format!("{}/ckpt/busybox:1", registry.host);
    let pushed = ckpt.run(&["--config", config, "push", "busybox", &image]);
    assert_eq!(pushed.code, 0, "{}", pushed.stderr);
    let manifest = Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false", &format!("docker://{image}")])
        .output()
        .unwrap();
    let digest = format!("sha256:{}", sha256_hex(&manifest.stdout));
    let not_policy =
        ckpt.fails(&["--config", config, "policy", "inspect", &format!("{}/ckpt/busybox@{digest}", registry.host)]);
    assert!(not_policy.contains("it is not a policy"), "{not_policy}");
}

fn sha256_hex(bytes: &[u8]) -> String {
    let out = Command::new("sha256sum").stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().and_then(|mut child| {
        use std::io::Write;
        child.stdin.take().unwrap().write_all(bytes)?;
        child.wait_with_output()
    });
    String::from_utf8_lossy(&out.unwrap().stdout).split_whitespace().next().unwrap().to_string()
}
