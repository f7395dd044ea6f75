//! Sealed checkpoints: archives encrypted with age, whose memory never reaches a disk in the
//! clear. A canary, a random string held by a running process and never written to a file, is
//! searched for on the disks after each step; the same search finds it in a plaintext export,
//! so it is known to look in the right places.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::SystemTime;

use crate::support::Ckpt;

/// A container whose PID 1 holds a fresh random canary in its environment (in memory only),
/// and the canary, read from `/proc/1/environ`.
fn canary_container(ckpt: &Ckpt, name: &str) -> String {
    let script = "exec env SECRET=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n') sleep 100000";
    ckpt.ok(&["run", "-d", "--name", name, "--network", "none", "busybox", "sh", "-c", script]);
    let read = || ckpt.run(&["exec", name, "cat", "/proc/1/environ"]).stdout;
    assert!(crate::support::eventually(std::time::Duration::from_secs(5), || read().contains("SECRET=")));
    let environ = read();
    let canary = environ.split('\0').find_map(|v| v.strip_prefix("SECRET=")).unwrap().to_string();
    assert_eq!(canary.len(), 32, "{environ:?}");
    canary
}

/// Every file on the disks below ckpt's store, its run root, /tmp and /var/tmp written since
/// `since` that holds `canary`. Other file systems mounted below them (private memory among
/// them) are not disks and are not searched.
fn on_disk(ckpt: &Ckpt, canary: &str, since: SystemTime) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for start in [ckpt.root.as_path(), ckpt.runroot.as_path(), Path::new("/tmp"), Path::new("/var/tmp")] {
        let Ok(device) = std::fs::metadata(start).map(|m| std::os::unix::fs::MetadataExt::dev(&m)) else { continue };
        let mut stack = vec![start.to_path_buf()];
        while let Some(dir) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else { continue };
            for entry in entries.flatten() {
                let path = entry.path();
                let Ok(meta) = std::fs::symlink_metadata(&path) else { continue };
                if std::os::unix::fs::MetadataExt::dev(&meta) != device {
                    continue;
                }
                if meta.is_dir() {
                    stack.push(path);
                } else if meta.is_file()
                    && meta.modified().is_ok_and(|m| m >= since)
                    && std::fs::read(&path)
                        .is_ok_and(|bytes| bytes.windows(canary.len()).any(|w| w == canary.as_bytes()))
                {
                    found.push(path);
                }
            }
        }
    }
    found
}

fn run(program: &str, args: &[&str]) -> std::process::Output {
    let out = Command::new(program).args(args).output().unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(out.status.success(), "{program} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    out
}

#[test]
fn a_sealed_export_keeps_memory_off_the_disks_and_opens_with_age_and_ckpt() {
    let Some(ckpt) = Ckpt::available() else { return };
    let since = SystemTime::now() - std::time::Duration::from_secs(1);
    let key = ckpt.path("key.txt");
    let recipient = ckpt.ok(&["key", "generate", "-o", key.to_str().unwrap()]).trim().to_string();
    assert!(recipient.starts_with("age1"), "{recipient}");
    let ssh_key = ckpt.path("id_ed25519");
    run("ssh-keygen", &["-q", "-t", "ed25519", "-N", "", "-C", "ops", "-f", ssh_key.to_str().unwrap()]);
    let ssh_recipient = std::fs::read_to_string(ssh_key.with_extension("pub")).unwrap().trim().to_string();

    let canary = canary_container(&ckpt, "s");
    assert_eq!(on_disk(&ckpt, &canary, since), Vec::<PathBuf>::new(), "running and exec leave nothing");

    let sealed = ckpt.path("s.tar.zst.age");
    let sealed_arg = sealed.to_str().unwrap();
    ckpt.ok(&["checkpoint", "-e", sealed_arg, "--encrypt-to", &recipient, "--encrypt-to", &ssh_recipient, "s"]);
    assert_eq!(on_disk(&ckpt, &canary, since), Vec::<PathBuf>::new(), "sealed: nowhere on the disks");
    let id = ckpt.inspect("s")["Id"].as_str().unwrap().to_string();
    let images = ckpt.root.join("containers").join(&id).join("userdata/checkpoint");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(mounts.contains(images.to_str().unwrap()), "the local images are in private memory");

    // Debian's age opens it with the identity: the canary is inside.
    let plain = Command::new("sh")
        .arg("-c")
        .arg(format!("age -d -i {} {sealed_arg} | zstd -dc | grep -ac {canary}", key.display()))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&plain.stdout).trim(), "1", "{}", String::from_utf8_lossy(&plain.stderr));
    let shown = ckpt.ok(&["inspect-checkpoint", sealed_arg]);
    assert!(shown.contains(&recipient) && shown.contains("ssh-ed25519"), "whom, without the identity: {shown}");

    // ckpt restores it with the SSH key alone, in private memory; without one it says whom to ask.
    ckpt.ok(&["rm", "-f", "s"]);
    assert!(!std::fs::read_to_string("/proc/self/mountinfo").unwrap().contains(&id), "rm gives the memory back");
    let refused = ckpt.fails(&["restore", "-i", sealed_arg]);
    assert!(
        refused.contains("is sealed") && refused.contains(&recipient) && refused.contains("--identity"),
        "{refused}"
    );
    let other = ckpt.path("other.txt");
    ckpt.ok(&["key", "generate", "-o", other.to_str().unwrap()]);
    let wrong = ckpt.fails(&["restore", "-i", sealed_arg, "--identity", other.to_str().unwrap()]);
    assert!(wrong.contains("none of the identities given"), "{wrong}");
    assert!(ckpt.container_ids().is_empty(), "a refused restore changes nothing");
    ckpt.ok(&["restore", "-i", sealed_arg, "--identity", ssh_key.to_str().unwrap()]);
    assert!(ckpt.exec("s", "cat /proc/1/environ").contains(&canary), "the same process, with its memory");
    assert_eq!(on_disk(&ckpt, &canary, since), Vec::<PathBuf>::new(), "restored: still nowhere on the disks");
    // This store's private memory is gone (other tests' may be mounted at this moment).
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let ours = mounts.lines().filter(|l| l.contains("ckpt-private ") && l.contains(ckpt.dir.path().to_str().unwrap()));
    assert_eq!(ours.count(), 0, "{mounts}");

    // The host config can ask for every export to be sealed: an export without --encrypt-to
    // is sealed to its recipients, and what cannot be sealed yet is refused, changing nothing.
    let config = std::fs::read_to_string(ckpt.path("ckpt.toml")).unwrap();
    let always =
        config.replace("[exports]\n", &format!("[exports]\nencrypt = \"always\"\nrecipients = [{recipient:?}]\n"));
    std::fs::write(ckpt.path("ckpt.toml"), always).unwrap();
    ckpt.ok(&["checkpoint", "-R", "--create-image", "localhost/sealed", "s"]);
    assert_eq!(ckpt.status("s"), "running");
    assert_eq!(on_disk(&ckpt, &canary, since), Vec::<PathBuf>::new(), "a sealed image: nowhere on the disks");
    let escrowed = ckpt.path("escrowed.tar");
    ckpt.ok(&["checkpoint", "-R", "-e", escrowed.to_str().unwrap(), "--compress", "none", "s"]);
    let header = std::fs::read(&escrowed).unwrap();
    assert!(header.starts_with(b"age-encryption.org/v1\n"), "sealed by the host config");
    assert_eq!(on_disk(&ckpt, &canary, since), Vec::<PathBuf>::new(), "escrowed: nowhere on the disks");
    std::fs::write(ckpt.path("ckpt.toml"), config).unwrap();

    // The control: a plaintext export, uncompressed, puts the canary where the search looks.
    let plain_archive = ckpt.path("plain.tar");
    ckpt.ok(&["checkpoint", "-e", plain_archive.to_str().unwrap(), "--compress", "none", "s"]);
    let found = on_disk(&ckpt, &canary, since);
    assert!(found.contains(&plain_archive), "the search finds a plaintext export: {found:?}");
    assert!(found.iter().any(|p| p.ends_with("checkpoint/pages-1.img")), "and the local images: {found:?}");
    ckpt.ok(&["rm", "-f", "s"]);
}

#[test]
fn sealing_options_are_checked_before_anything_changes() {
    let Some(ckpt) = Ckpt::available() else { return };
    ckpt.ok(&["run", "-d", "--name", "c", "--network", "none", "busybox", "sleep", "1000"]);
    let alone = ckpt.fails(&["checkpoint", "--encrypt-to", "age1x", "c"]);
    assert!(alone.contains("--encrypt-to can only be used with --export"), "{alone}");
    let archive = ckpt.path("c.tar.zst.age");
    let bad = ckpt.fails(&["checkpoint", "-e", archive.to_str().unwrap(), "--encrypt-to", "age1nope", "c"]);
    assert!(bad.contains("recipient \"age1nope\""), "{bad}");
    assert_eq!(ckpt.status("c"), "running");
    assert!(!archive.exists());
    let key = ckpt.path("k");
    ckpt.ok(&["key", "generate", "-o", key.to_str().unwrap()]);
    let again = ckpt.fails(&["key", "generate", "-o", key.to_str().unwrap()]);
    assert!(again.contains("cannot be written"), "never over a key: {again}");
}

#[test]
fn a_signed_archive_is_checked_before_anything_is_restored() {
    let Some(ckpt) = Ckpt::available() else { return };
    let keygen = |name: &str| {
        let key = ckpt.path(name);
        run("ssh-keygen", &["-q", "-t", "ed25519", "-N", "", "-C", name, "-f", key.to_str().unwrap()]);
        (key.clone(), std::fs::read_to_string(key.with_extension("pub")).unwrap().trim().to_string())
    };
    // ckpt makes the signing key; ssh-keygen, the stranger's.
    let signer = ckpt.path("signer");
    let signer_public = ckpt.ok(&["key", "generate", "--signing", "-o", signer.to_str().unwrap()]).trim().to_string();
    assert!(signer_public.starts_with("ssh-ed25519 "), "{signer_public}");
    assert!(
        ckpt.fails(&["key", "generate", "--signing", "-o", signer.to_str().unwrap()]).contains("never writes over")
    );
    let (stranger, _) = keygen("stranger");
    ckpt.ok(&["run", "-d", "--name", "c", "--network", "none", "busybox", "sleep", "1000"]);
    let archive = ckpt.path("c.tar.zst");
    let archive_arg = archive.to_str().unwrap();
    ckpt.ok(&["checkpoint", "-e", archive_arg, "--sign-with", signer.to_str().unwrap(), "c"]);
    let signature = ckpt.path("c.tar.zst.sig");
    // OpenSSH checks it on its own.
    let allowed = ckpt.path("allowed_signers");
    std::fs::write(&allowed, format!("ops {signer_public}\n")).unwrap();
    let verified = Command::new("ssh-keygen")
        .args(["-Y", "verify", "-n", "ckpt-archive", "-I", "ops", "-f", allowed.to_str().unwrap(), "-s"])
        .arg(&signature)
        .stdin(std::fs::File::open(&archive).unwrap())
        .output()
        .unwrap();
    assert!(verified.status.success(), "{}", String::from_utf8_lossy(&verified.stderr));
    let shown = ckpt.ok(&["inspect-checkpoint", archive_arg]);
    let key_only = signer_public.split_whitespace().take(2).collect::<Vec<_>>().join(" ");
    assert!(shown.contains("Signed by") && shown.contains(&key_only), "the signer, without checking: {shown}");
    ckpt.ok(&["rm", "-f", "c"]);

    let config = std::fs::read_to_string(ckpt.path("ckpt.toml")).unwrap();
    let trusting = format!("{config}[signatures]\ntrusted = [{signer_public:?}]\nrequire = true\n");
    std::fs::write(ckpt.path("ckpt.toml"), trusting).unwrap();
    let copy = |name: &str, edit: &dyn Fn(&mut Vec<u8>)| {
        let path = ckpt.path(name);
        let mut bytes = std::fs::read(&archive).unwrap();
        edit(&mut bytes);
        std::fs::write(&path, bytes).unwrap();
        path
    };
    // One byte changed, under the original signature.
    let tampered = copy("tampered.tar.zst", &|bytes| {
        let middle = bytes.len() / 2;
        bytes[middle] ^= 1;
    });
    std::fs::copy(&signature, ckpt.path("tampered.tar.zst.sig")).unwrap();
    let refused = ckpt.fails(&["restore", "-i", tampered.to_str().unwrap()]);
    assert!(refused.contains("does not verify"), "{refused}");
    // A valid signature by a key this host does not trust.
    let foreign = copy("foreign.tar.zst", &|_| {});
    run(
        "ssh-keygen",
        &["-q", "-Y", "sign", "-n", "ckpt-archive", "-f", stranger.to_str().unwrap(), foreign.to_str().unwrap()],
    );
    let untrusted = ckpt.fails(&["restore", "-i", foreign.to_str().unwrap()]);
    assert!(untrusted.contains("does not verify"), "{untrusted}");
    let unsigned = copy("unsigned.tar.zst", &|_| {});
    let missing = ckpt.fails(&["restore", "-i", unsigned.to_str().unwrap()]);
    assert!(missing.contains("has no signature"), "{missing}");
    assert!(ckpt.container_ids().is_empty(), "nothing was restored");
    ckpt.ok(&["restore", "-i", archive_arg]);
    assert_eq!(ckpt.status("c"), "running");
    ckpt.ok(&["rm", "-f", "c"]);
}

/// A sealed checkpoint image is ciphertext in the store, on its way to the registry, in the
/// registry's storage and in the store that pulls it; it opens with the identity alone.
#[test]
fn a_sealed_checkpoint_image_goes_through_a_registry_as_ciphertext() {
    let Some(ckpt) = Ckpt::available() else { return };
    let Some(second) = Ckpt::available() else { return };
    let since = SystemTime::now() - std::time::Duration::from_secs(1);
    let registry = crate::support::servers::LocalRegistry::start(&ckpt);
    let key = ckpt.path("key.txt");
    let recipient = ckpt.ok(&["key", "generate", "-o", key.to_str().unwrap()]).trim().to_string();
    let canary = canary_container(&ckpt, "s");
    let image = format!("{}/ckpt/sealed:1", registry.host);
    ckpt.ok(&["checkpoint", "--create-image", &image, "--encrypt-to", &recipient, "s"]);
    ckpt.ok(&["push", "--tls-verify=false", &image]);
    let raw = |reference: &str| {
        let raw = run("skopeo", &["inspect", "--raw", "--tls-verify=false", &format!("docker://{reference}")]).stdout;
        serde_json::from_slice::<serde_json::Value>(&raw).unwrap()
    };
    // Named through an index that carries the annotations too, over its one manifest.
    let index = raw(&image);
    assert_eq!(index["annotations"]["io.ckpt.checkpoint.sealed-to"], recipient.as_str());
    let repository = image.rsplit_once(':').unwrap().0;
    let manifest = raw(&format!("{repository}@{}", index["manifests"][0]["digest"].as_str().unwrap()));
    assert_eq!(manifest["layers"][0]["mediaType"], "application/vnd.ckpt.checkpoint.layer.v1.tar+zstd+age");
    assert_eq!(manifest["annotations"]["io.ckpt.checkpoint.sealed-to"], recipient.as_str());

    let insecure = second.path("insecure.toml");
    std::fs::write(&insecure, format!("[registries]\ninsecure = [{:?}]\n", registry.host)).unwrap();
    let insecure = insecure.to_str().unwrap();
    second.ok(&["--config", insecure, "pull", &image]);
    let refused = second.fails(&["--config", insecure, "restore", &image]);
    assert!(refused.contains("is sealed") && refused.contains(&recipient), "{refused}");
    assert!(second.container_ids().is_empty(), "a refused restore changes nothing");
    second.ok(&["--config", insecure, "restore", "--identity", key.to_str().unwrap(), &image]);
    assert!(second.exec("s", "cat /proc/1/environ").contains(&canary), "the same process, with its memory");
    for (store, step) in [(&ckpt, "checkpoint and push"), (&second, "pull and restore")] {
        assert_eq!(on_disk(store, &canary, since), Vec::<PathBuf>::new(), "{step}: nowhere on the disks");
    }
    second.ok(&["rm", "-f", "s"]);
    ckpt.ok(&["rm", "-f", "s"]);
}

/// With every export sealed by the host config, a migration keeps the container's memory off
/// the disks on both sides: the source dumps into private memory and streams it through ssh,
/// and the destination unpacks it into private memory.
#[test]
fn a_migration_under_sealing_keeps_memory_off_the_disks_on_both_sides() {
    let Some(source) = Ckpt::available() else { return };
    let Some(dest) = Ckpt::available() else { return };
    let since = SystemTime::now() - std::time::Duration::from_secs(1);
    let registry = crate::support::servers::LocalRegistry::start(&source);
    let key = source.path("key.txt");
    let recipient = source.ok(&["key", "generate", "-o", key.to_str().unwrap()]).trim().to_string();
    for side in [&source, &dest] {
        // Each side opens what is sealed to it with its own identity (here, the same one).
        let config = std::fs::read_to_string(side.path("ckpt.toml")).unwrap();
        let sealed = format!(
            "[registries]\ninsecure = [{:?}]\n[restore]\nidentities = [{key:?}]\n[exports]\nencrypt = \"always\"\nrecipients = [{recipient:?}]\n",
            registry.host
        );
        std::fs::write(side.path("ckpt.toml"), config.replace("[exports]\n", &sealed)).unwrap();
    }
    let sshd = crate::support::servers::Sshd::start(&source);
    let canary = canary_container(&source, "m");
    let migrate = |from: &Ckpt, to: &Ckpt, extra: &[&str]| {
        let mut args: Vec<String> = vec!["migrate".into()];
        args.extend(sshd.flags(to));
        args.extend(extra.iter().map(|a| a.to_string()));
        args.extend(["m".into(), sshd.url(to)]);
        let moved = from.run(&args.iter().map(String::as_str).collect::<Vec<_>>());
        assert_eq!(moved.code, 0, "migrate {extra:?} failed: {}{}", moved.stderr, moved.stdout);
    };
    migrate(&source, &dest, &[]);
    assert!(dest.exec("m", "cat /proc/1/environ").contains(&canary), "the process moved with its memory");
    assert_eq!(on_disk(&source, &canary, since), Vec::<PathBuf>::new(), "nowhere on the disks of either side");
    // Back through the registry: a sealed image, pushed and pulled as ciphertext.
    let via = format!("{}/ckpt/m:moving", registry.host);
    migrate(&dest, &source, &["--via", &via]);
    assert!(source.exec("m", "cat /proc/1/environ").contains(&canary), "back through the registry");
    for side in [&source, &dest] {
        assert_eq!(on_disk(side, &canary, since), Vec::<PathBuf>::new(), "nowhere, the registry's storage included");
    }
    source.ok(&["rm", "-f", "m"]);
}

/// Checkpoint images are signed as podman's are ("simple signing" with GPG, the signature in a
/// lookaside store that registries.d names): skopeo and podman verify them with their own
/// policy.json, and a store that trusts the key pulls only what it signed.
#[test]
fn a_signed_checkpoint_image_is_verified_by_skopeo_podman_and_ckpt() {
    let Some(ckpt) = Ckpt::available() else { return };
    let Some(second) = Ckpt::available() else { return };
    let registry = crate::support::servers::LocalRegistry::start(&ckpt);
    let key = crate::support::servers::GpgKey::generate(&ckpt, "signer");
    let stranger = crate::support::servers::GpgKey::generate(&ckpt, "stranger");
    let registries_d = ckpt.path("registries.d");
    std::fs::create_dir(&registries_d).unwrap();
    let lookaside = format!("file://{}", ckpt.path("signatures").display());
    let scope = format!("docker:\n  {}:\n    lookaside: {lookaside}\n", registry.host);
    std::fs::write(registries_d.join("ckpt.yaml"), &scope).unwrap();
    let signing = ckpt.path("signing.toml");
    let insecure = format!("[registries]\ninsecure = [{:?}]\n", registry.host);
    std::fs::write(
        &signing,
        format!(
            "{insecure}[signatures]\nsign-by = {:?}\ngnupg-home = {:?}\nregistries-d = {registries_d:?}\n",
            key.fingerprint, key.home
        ),
    )
    .unwrap();
    let signing = signing.to_str().unwrap();
    ckpt.ok(&["run", "-d", "--name", "c", "--network", "none", "busybox", "sleep", "1000"]);
    let signed = format!("{}/ckpt/signed:1", registry.host);
    let unsigned = format!("{}/ckpt/unsigned:1", registry.host);
    ckpt.ok(&["checkpoint", "-R", "--create-image", &signed, "c"]);
    ckpt.ok(&["--config", signing, "push", &signed]);
    // The same image signed by a key nobody trusts.
    let foreign = format!("{}/ckpt/foreign:1", registry.host);
    let by_stranger = ckpt.path("stranger.toml");
    std::fs::write(
        &by_stranger,
        format!("{insecure}[signatures]\ngnupg-home = {:?}\nregistries-d = {registries_d:?}\n", stranger.home),
    )
    .unwrap();
    ckpt.ok(&[
        "--config",
        by_stranger.to_str().unwrap(),
        "push",
        "--sign-by",
        &stranger.fingerprint,
        &signed,
        &foreign,
    ]);
    ckpt.ok(&["checkpoint", "--create-image", &unsigned, "c"]);
    ckpt.ok(&["push", "--tls-verify=false", &unsigned]);

    // skopeo and podman, with a policy.json that requires the key.
    let policy = ckpt.path("policy.json");
    let requirement = serde_json::json!({"type": "signedBy", "keyType": "GPGKeys", "keyPath": key.keyring});
    std::fs::write(&policy, serde_json::json!({"default": [requirement]}).to_string()).unwrap();
    let skopeo = |image: &str| {
        Command::new("skopeo")
            .args(["--registries.d", registries_d.to_str().unwrap(), "--policy", policy.to_str().unwrap()])
            .args(["copy", "--remove-signatures", "--src-tls-verify=false", &format!("docker://{image}")])
            .arg(format!("oci:{}:x", ckpt.path(&format!("copy-{}", image.len())).display()))
            .output()
            .unwrap()
    };
    assert!(skopeo(&signed).status.success(), "{}", String::from_utf8_lossy(&skopeo(&signed).stderr));
    let refused = String::from_utf8_lossy(&skopeo(&unsigned).stderr).into_owned();
    assert!(refused.contains("A signature was required, but no signature exists"), "{refused}");
    let _podman = crate::support::Podman::cleaning(&[], &[], &[&signed, &unsigned]);
    let home = ckpt.path("podman-home");
    std::fs::create_dir_all(home.join(".config/containers/registries.d")).unwrap();
    std::fs::write(home.join(".config/containers/registries.d/ckpt.yaml"), &scope).unwrap();
    let podman_pull = |image: &str| {
        Command::new("podman")
            .env("HOME", &home)
            .args(["pull", "-q", "--tls-verify=false", "--signature-policy", policy.to_str().unwrap(), image])
            .output()
            .unwrap()
    };
    let pulled = podman_pull(&signed);
    assert!(pulled.status.success(), "podman pull {signed}: {}", String::from_utf8_lossy(&pulled.stderr));
    let refused = podman_pull(&unsigned);
    assert!(!refused.status.success(), "podman pulled an unsigned image under a policy that requires a signature");
    assert!(String::from_utf8_lossy(&refused.stderr).contains("no signature exists"));

    // ckpt, trusting the key and requiring signatures: the unsigned image is refused and leaves
    // nothing; the signed one is pulled, verified and restored.
    let verifying = second.path("verifying.toml");
    std::fs::write(
        &verifying,
        format!(
            "{insecure}[signatures]\nrequire = true\nimage-keys = {:?}\nregistries-d = {registries_d:?}\n",
            key.keyring
        ),
    )
    .unwrap();
    let verifying = verifying.to_str().unwrap();
    second.ok(&["ps"]);
    let before = crate::support::files_below(&second.root);
    let refused = second.fails(&["--config", verifying, "restore", &unsigned]);
    assert!(refused.contains("is not signed by a key in") && refused.contains("no signature exists"), "{refused}");
    let untrusted = second.fails(&["--config", verifying, "restore", &foreign]);
    assert!(untrusted.contains("is not signed by a key in"), "{untrusted}");
    assert_eq!(crate::support::files_below(&second.root), before, "a refused pull leaves nothing");
    second.ok(&["--config", verifying, "restore", &signed]);
    assert_eq!(second.status("c"), "running");
    second.ok(&["rm", "-f", "c"]);
    // An image nobody vouched for (pulled without a check) is refused under `require`.
    let unchecking = second.path("unchecking.toml");
    std::fs::write(&unchecking, &insecure).unwrap();
    second.ok(&["--config", unchecking.to_str().unwrap(), "pull", &unsigned]);
    let untrusted = second.fails(&["--config", verifying, "restore", &unsigned]);
    assert!(untrusted.contains("neither made on this host nor pulled with a signature"), "{untrusted}");
    assert!(second.container_ids().is_empty());
    ckpt.ok(&["rm", "-f", "c"]);
}

/// A scheduled run under `encrypt = "always"` and a host signing key: the archive is sealed and
/// signed, the catalog records to whom and where the signature is, and deleting the entry takes
/// both files.
#[test]
fn a_scheduled_checkpoint_is_sealed_signed_and_catalogued() {
    let Some(ckpt) = Ckpt::available() else { return };
    let since = SystemTime::now() - std::time::Duration::from_secs(1);
    let key = ckpt.path("key.txt");
    let recipient = ckpt.ok(&["key", "generate", "-o", key.to_str().unwrap()]).trim().to_string();
    let signer = ckpt.path("signer");
    run("ssh-keygen", &["-q", "-t", "ed25519", "-N", "", "-C", "ops", "-f", signer.to_str().unwrap()]);
    let config = std::fs::read_to_string(ckpt.path("ckpt.toml")).unwrap();
    let sealed = format!("[exports]\nencrypt = \"always\"\nrecipients = [{recipient:?}]\n");
    let rules = format!("{}[signatures]\nsign-with = {signer:?}\n", config.replace("[exports]\n", &sealed));
    std::fs::write(ckpt.path("ckpt.toml"), rules).unwrap();
    let canary = canary_container(&ckpt, "s");
    let template = format!("{}/{{name}}-{{time}}.tar.zst.age", ckpt.path("").display());
    ckpt.ok(&["schedule", "add", "hourly", "--every", "1h", "--container", "s", "-R", "--export", &template]);
    ckpt.ok(&["schedule", "run", "hourly"]);
    let entries: Vec<serde_json::Value> =
        serde_json::from_str(&ckpt.ok(&["catalog", "ls", "--format", "json"])).unwrap();
    let entry = entries.iter().find(|e| e["schedule"] == "hourly").expect("a scheduled entry");
    assert_eq!(entry["sealed-to"], serde_json::json!([recipient]), "{entry}");
    let archive = PathBuf::from(entry["location"].as_str().unwrap());
    let signature = PathBuf::from(entry["signature"].as_str().unwrap());
    assert!(std::fs::read(&archive).unwrap().starts_with(b"age-encryption.org/v1\n"));
    assert!(signature.is_file(), "{entry}");
    assert_eq!(on_disk(&ckpt, &canary, since), Vec::<PathBuf>::new(), "a scheduled run: nowhere on the disks");
    ckpt.ok(&["catalog", "rm", entry["id"].as_str().unwrap()]);
    assert!(!archive.exists() && !signature.exists(), "the entry's archive and its signature both go");
    ckpt.ok(&["rm", "-f", "s"]);
}

/// The policy decides who can read a checkpoint: a planner seals its export to the recipients
/// its settings name, and a gate denies a plaintext export of a sensitive data class while it
/// lets the sealed one through. A plan that asks for a signature no host key can make is
/// refused before anything changes.
#[test]
fn a_planner_seals_and_a_gate_denies_plaintext_of_a_sensitive_class() {
    let Some(ckpt) = Ckpt::available() else { return };
    let key = ckpt.path("key.txt");
    let recipient = ckpt.ok(&["key", "generate", "-o", key.to_str().unwrap()]).trim().to_string();
    ckpt.ok(&[
        "run",
        "-d",
        "--name",
        "db",
        "--label",
        "data-class=secret",
        "--network",
        "none",
        "busybox",
        "sleep",
        "1000",
    ]);
    let compliance = crate::support::policy("compliance");
    let gate_settings = r#"{"classes": {"secret": {"targets": ["/"], "sealed": true}}}"#;
    let gated = |extra: &[&str]| {
        let mut args = vec!["checkpoint", "-R", "--gate", &compliance, "--gate-config", gate_settings];
        args.extend_from_slice(extra);
        args.push("db");
        ckpt.run(&args)
    };
    let plain = ckpt.path("plain.tar.zst");
    let denied = gated(&["-e", plain.to_str().unwrap()]);
    assert_eq!(denied.code, 125, "{}", denied.stderr);
    assert!(
        denied.stderr.contains("leaves only sealed") && denied.stderr.contains("in the clear"),
        "{}",
        denied.stderr
    );
    assert!(!plain.exists(), "a denied export leaves nothing");
    assert_eq!(ckpt.status("db"), "running");

    // The migration planner seals to the recipient its settings name; the gate sees it sealed.
    let target = ckpt.path("{name}.tar.zst.age");
    let planner = crate::support::policy("migration");
    let sealing = serde_json::json!({"target": target.to_str().unwrap(), "seal-to": [recipient]}).to_string();
    let dry: serde_json::Value = serde_json::from_str(&ckpt.ok(&[
        "checkpoint",
        "--dry-run",
        "--policy",
        &planner,
        "--policy-config",
        &sealing,
        "db",
    ]))
    .unwrap();
    assert_eq!(dry[0]["exports"][0]["sealed-to"], serde_json::json!([recipient]), "{dry}");
    let sealed = gated(&["--policy", &planner, "--policy-config", &sealing]);
    assert_eq!(sealed.code, 0, "{}", sealed.stderr);
    let archive = ckpt.path("db.tar.zst.age");
    assert!(std::fs::read(&archive).unwrap().starts_with(b"age-encryption.org/v1\n"), "sealed by the plan");
    // What the user types is sealed too, and the gate lets it through.
    let typed = ckpt.path("typed.tar.zst.age");
    let allowed = gated(&["-e", typed.to_str().unwrap(), "--encrypt-to", &recipient]);
    assert_eq!(allowed.code, 0, "{}", allowed.stderr);

    let signing = serde_json::json!({"target": target.to_str().unwrap(), "sign": true}).to_string();
    let unsigned = ckpt.fails(&["checkpoint", "-R", "--policy", &planner, "--policy-config", &signing, "db"]);
    assert!(unsigned.contains("asked for a signed export") && unsigned.contains("no signing key"), "{unsigned}");
    assert_eq!(ckpt.status("db"), "running");
    ckpt.ok(&["rm", "-f", "db"]);
}
