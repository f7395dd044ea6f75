//! ckpt's policies over podman's containers: `ckpt checkpoint podman:NAME` through podman's own
//! REST API (a real `podman system service` on a socket of the test's), with a planner, a gate,
//! sealing, the catalog and the audit log; podman's own state stays consistent.

use std::time::Duration;

use crate::support::{Ckpt, Podman, PodmanService, eventually, last_count};

#[test]
fn a_podman_container_is_checkpointed_under_ckpts_policies_and_podman_restores_it() {
    let Some(ckpt) = Ckpt::available() else { return };
    let podman = Podman::cleaning(&["ckpt-engine-web"], &[], &[]);
    let api = PodmanService::start(&podman, ckpt.path("podman.sock"));
    api.serve(&ckpt);
    let image = ckpt.path("busybox.tar");
    ckpt.ok(&["save", "-o", image.to_str().unwrap(), "busybox"]);
    let loaded = podman.ok(&["load", "-i", image.to_str().unwrap()]);
    let busybox = loaded.trim().rsplit(' ').next().unwrap().to_string();
    let counter = "i=0; while true; do echo count $i; i=$((i+1)); sleep 0.1; done";
    podman.ok(&[
        "run",
        "-d",
        "--name",
        "ckpt-engine-web",
        "--label",
        "data-class=secret",
        &busybox,
        "sh",
        "-c",
        counter,
    ]);
    let count = || last_count(&podman.ok(&["logs", "ckpt-engine-web"]));
    let state = || podman.ok(&["inspect", "--format", "{{.State.Status}}", "ckpt-engine-web"]).trim().to_string();
    assert!(eventually(Duration::from_secs(5), || count() >= 3));
    podman.ok(&["exec", "ckpt-engine-web", "sh", "-c", "echo mine > /notes"]);

    // Unknown names and what podman cannot do are refused before anything changes.
    let missing = ckpt.fails(&["checkpoint", "podman:ckpt-engine-nothing"]);
    assert!(missing.contains("no such container \"ckpt-engine-nothing\" in podman"), "{missing}");
    let image_target = ckpt.fails(&["checkpoint", "--create-image", "localhost/x", "podman:ckpt-engine-web"]);
    assert!(image_target.contains("which ckpt cannot ask of podman"), "{image_target}");
    assert_eq!(state(), "running");

    // A gate that wants this class sealed denies a plaintext export; podman's container is
    // brought back and runs on.
    let compliance = crate::support::policy("compliance");
    let gate = r#"{"classes": {"secret": {"targets": ["/"], "sealed": true}}}"#;
    let plain = ckpt.path("plain.tar.zst");
    let args = ["checkpoint", "--gate", &compliance, "--gate-config", gate, "-e", plain.to_str().unwrap()];
    let denied = ckpt.run(&[&args[..], &["podman:ckpt-engine-web"]].concat());
    assert_eq!(denied.code, 125, "{}", denied.stderr);
    assert!(denied.stderr.contains("in the clear") && denied.stderr.contains("restored"), "{}", denied.stderr);
    assert!(!plain.exists(), "a denied export leaves nothing");
    assert_eq!(state(), "running", "exactly one copy runs: podman's, brought back");
    let before = count();
    assert!(eventually(Duration::from_secs(5), || count() > before + 3), "and it counts on");

    // Sealed, the gate lets it through, narrowed: the archive is ckpt's (zstd, sealed) without
    // the container's file changes, podman stopped its container, and podman restores it from
    // the checkpoint it keeps.
    let key = ckpt.path("key.txt");
    let recipient = ckpt.ok(&["key", "generate", "-o", key.to_str().unwrap()]).trim().to_string();
    let sealed = ckpt.path("web.tar.zst.age");
    let narrowing = r#"{"classes": {"secret": {"targets": ["/"], "sealed": true, "rootfs": false}}}"#;
    let args = ["checkpoint", "--gate", &compliance, "--gate-config", narrowing, "-e", sealed.to_str().unwrap()];
    ckpt.ok(&[&args[..], &["--encrypt-to", &recipient, "podman:ckpt-engine-web"]].concat());
    assert!(std::fs::read(&sealed).unwrap().starts_with(b"age-encryption.org/v1\n"));
    let listed = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("age -d -i {} {} | zstd -dc | tar -t", key.display(), sealed.display()))
        .output()
        .unwrap();
    let members = String::from_utf8_lossy(&listed.stdout);
    assert!(members.contains("checkpoint/") && !members.contains("rootfs-diff.tar"), "narrowed: {members}");
    assert_eq!(state(), "exited");
    let at_checkpoint = count();
    podman.ok(&["container", "restore", "ckpt-engine-web"]);
    assert!(eventually(Duration::from_secs(5), || count() > at_checkpoint + 3), "podman restored its container");

    // The catalog and the audit log recorded it as podman's.
    let entries: serde_json::Value = serde_json::from_str(&ckpt.ok(&["catalog", "ls", "--format", "json"])).unwrap();
    let entry = entries.as_array().unwrap().iter().find(|e| e["location"] == sealed.to_str().unwrap()).unwrap();
    assert_eq!(entry["container-name"], "podman:ckpt-engine-web", "{entry}");
    assert_eq!(entry["sealed-to"], serde_json::json!([recipient]));
    let audit = std::fs::read_to_string(ckpt.root.join("audit.log")).unwrap();
    assert!(audit.contains("\"podman:ckpt-engine-web\""), "{audit}");
    assert!(ckpt.ok(&["audit", "verify"]).contains("intact"));

    // Left running, in the clear: podman imports ckpt's archive of its container as a new one.
    let copy = ckpt.path("copy.tar.zst");
    ckpt.ok(&["checkpoint", "-R", "-e", copy.to_str().unwrap(), "podman:ckpt-engine-web"]);
    assert_eq!(state(), "running");
    let listed =
        std::process::Command::new("sh").arg("-c").arg(format!("zstd -dc {} | tar -t", copy.display())).output();
    let members = String::from_utf8_lossy(&listed.unwrap().stdout).into_owned();
    assert!(members.contains("rootfs-diff.tar"), "without a gate, the file changes go too: {members}");
    let _copy = Podman::cleaning(&["ckpt-engine-copy"], &[], &[]);
    podman.ok(&["container", "restore", "--import", copy.to_str().unwrap(), "--name", "ckpt-engine-copy"]);
    let copied = || last_count(&podman.ok(&["logs", "ckpt-engine-copy"]));
    let from = copied();
    assert!(eventually(Duration::from_secs(5), || copied() > from + 3), "the copy runs in podman");

    // On a schedule: the run checkpoints podman's container and the catalog keeps the entry
    // under podman's ID, where retention finds it.
    let template = format!("{}/{{name}}-{{time}}.tar.zst", ckpt.path("").display());
    let retainer = r#"{"keep-last": 1}"#;
    let add = ["schedule", "add", "podman-hourly", "--every", "1h", "--container", "podman:ckpt-engine-web", "-R"];
    ckpt.ok(&[&add[..], &["--export", &template, "--retainer-config", retainer]].concat());
    let id = podman.ok(&["inspect", "--format", "{{.Id}}", "ckpt-engine-web"]).trim().to_string();
    for _ in 0..2 {
        let ran = ckpt.ok(&["schedule", "run", "podman-hourly"]);
        assert!(ran.contains("ok"), "{ran}");
    }
    let entries: serde_json::Value = serde_json::from_str(&ckpt.ok(&["catalog", "ls", "--format", "json"])).unwrap();
    let scheduled: Vec<_> = entries.as_array().unwrap().iter().filter(|e| e["schedule"] == "podman-hourly").collect();
    assert_eq!(scheduled.len(), 1, "keep-last 1 kept the newest: {scheduled:#?}");
    assert_eq!(scheduled[0]["container-id"], id.as_str());
    assert!(scheduled[0]["location"].as_str().unwrap().contains("/ckpt-engine-web-"), "{}", scheduled[0]);
    assert_eq!(state(), "running");
}

/// Loads the busybox `ckpt` saves (once) into `podman`'s store; returns the image's name there,
/// the same in every store loaded from the same `ckpt`.
fn busybox_in(ckpt: &Ckpt, podman: &Podman) -> String {
    let image = ckpt.path("busybox.tar");
    if !image.exists() {
        ckpt.ok(&["save", "-o", image.to_str().unwrap(), "busybox"]);
    }
    let loaded = podman.ok(&["load", "-i", image.to_str().unwrap()]);
    // By name, the same in both stores: podman's import looks the image up by the name the
    // container was made from, and cannot by a bare ID.
    let name = "localhost/ckpt-test/busybox:latest";
    podman.ok(&["tag", loaded.trim().rsplit(' ').next().unwrap(), name]);
    name.to_string()
}

#[test]
fn podmans_containers_are_picked_by_label_recovered_after_a_kill_and_migrated_to_a_second_podman_store() {
    let Some(here) = Ckpt::available() else { return };
    let Some(there) = Ckpt::available() else { return };
    let podman = Podman::cleaning(&["ckpt-engine-mover"], &[], &[]);
    let api = PodmanService::start(&podman, here.path("podman.sock"));
    api.serve(&here);
    let far_podman = Podman::private_store(&there.path("podman"));
    let far_api = PodmanService::start(&far_podman, there.path("podman.sock"));
    far_api.serve(&there);
    let busybox = busybox_in(&here, &podman);
    let counter = "i=0; while true; do echo count $i; i=$((i+1)); sleep 0.1; done";
    let run = ["run", "-d", "--name", "ckpt-engine-mover", "--label", "tier=batch", &busybox, "sh", "-c", counter];
    podman.ok(&run);
    let count = || last_count(&podman.ok(&["logs", "ckpt-engine-mover"]));
    let state = || podman.ok(&["inspect", "--format", "{{.State.Status}}", "ckpt-engine-mover"]).trim().to_string();
    assert!(eventually(Duration::from_secs(5), || count() >= 3));
    // ckpt's inspect shows podman's own document.
    let shown =
        here.ok(&["inspect", "--format", "{{.State.Status}} {{.Config.Labels.tier}}", "podman:ckpt-engine-mover"]);
    assert_eq!(shown.trim(), "running batch");

    // A schedule over podman's containers by label: podman's, not ckpt's own with the label.
    here.counter("ckpt-own-batch", &["--label", "tier=batch"]);
    let template = format!("{}/{{name}}-{{time}}.tar.zst", here.path("").display());
    let add = ["schedule", "add", "batch", "--every", "1h", "--engine", "podman", "--label", "tier=batch", "-R"];
    here.ok(&[&add[..], &["--export", &template]].concat());
    assert!(here.ok(&["schedule", "ls"]).contains("podman:label=tier=batch"));
    let ran = here.ok(&["schedule", "run", "batch"]);
    assert!(ran.contains("podman:ckpt-engine-mover") && ran.contains("ok"), "{ran}");
    assert!(!ran.contains("ckpt-own-batch"), "{ran}");
    let entries: serde_json::Value = serde_json::from_str(&here.ok(&["catalog", "ls", "--format", "json"])).unwrap();
    let by_label: Vec<_> = entries.as_array().unwrap().iter().filter(|e| e["schedule"] == "batch").collect();
    assert_eq!(by_label.len(), 1, "{by_label:#?}");
    assert_eq!(by_label[0]["container-name"], "podman:ckpt-engine-mover");
    assert_eq!(state(), "running");

    // Killed between podman's dump and the export's publication: podman's container is left
    // stopped with its checkpoint; 'system check --repair' has podman restore it.
    let exports = here.path("exports");
    std::fs::create_dir_all(&exports).unwrap();
    let probe = exports.join("probe.tar.zst");
    let log = here.path("renames.log");
    let trace = ["-o".to_string(), log.display().to_string(), "-e".into(), "trace=rename,renameat,renameat2".into()];
    // Twice: the first run also fills caches (compiled policies, tool probes) with renames.
    for _ in 0..2 {
        let _ = std::fs::remove_file(&probe);
        let args = ["checkpoint", "-R", "-e", probe.to_str().unwrap(), "podman:ckpt-engine-mover"];
        let probed = crate::faults::traced(&here, &trace, &args);
        assert!(probed.status.success(), "{}", String::from_utf8_lossy(&probed.stderr));
    }
    let renames = std::fs::read_to_string(&log).unwrap();
    let renames: Vec<&str> = renames.lines().filter(|l| l.starts_with("rename")).collect();
    let publish = renames.iter().position(|l| l.contains("probe.tar.zst\"")).expect("the publish is a rename");
    // strace counts each system call on its own.
    let call = renames[publish].split('(').next().unwrap();
    let nth = renames[..=publish].iter().filter(|l| l.starts_with(&format!("{call}("))).count();
    std::fs::remove_file(&probe).unwrap();
    let kill = ["-o".into(), "/dev/null".into(), "-e".into(), format!("inject={call}:signal=KILL:when={nth}")];
    let killed =
        crate::faults::traced(&here, &kill, &["checkpoint", "-e", probe.to_str().unwrap(), "podman:ckpt-engine-mover"]);
    assert!(!killed.status.success());
    assert_eq!(state(), "exited", "podman's dump stopped it");
    let found = here.run(&["system", "check"]);
    assert_eq!(found.code, 1, "{}{}", found.stdout, found.stderr);
    assert!(found.stdout.contains("interrupted-podman-checkpoint"), "{}", found.stdout);
    let at_kill = count();
    here.ok(&["system", "check", "--repair"]);
    assert_eq!(state(), "running", "podman restored it from its checkpoint");
    assert!(eventually(Duration::from_secs(5), || count() > at_kill + 3), "and it counts on");
    assert_eq!(here.run(&["system", "check"]).code, 0, "nothing left to repair");
    assert!(std::fs::read_dir(&exports).unwrap().next().is_none(), "no partial archive");

    // Migration: what podman's API cannot do is refused while nothing changes.
    let sshd = crate::support::servers::Sshd::start(&here);
    let migrate = |extra: &[&str]| {
        let mut args = vec!["migrate".to_string(), "--json".to_string()];
        args.extend(sshd.flags(&there));
        args.extend(extra.iter().map(|s| s.to_string()));
        args.extend(["podman:ckpt-engine-mover".to_string(), sshd.url(&there)]);
        here.run(&args.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let post = migrate(&["--strategy", "post-copy"]);
    assert!(post.code != 0 && post.stderr.contains("not possible for a podman container"), "{}", post.stderr);
    let via = migrate(&["--via", "localhost:1/x:1"]);
    assert!(via.code != 0 && via.stderr.contains("drop --via"), "{}", via.stderr);
    assert_eq!(state(), "running");

    // The far store lacks the image, and cannot pull it here: its restore fails after the
    // freeze, and the container comes back on this side.
    let failed = migrate(&[]);
    assert_eq!(failed.code, 125, "{}", failed.stderr);
    assert!(failed.stderr.contains("restored"), "{}", failed.stderr);
    assert_eq!(state(), "running", "exactly one copy runs: this one");
    assert!(far_podman.ok(&["ps", "-a", "-q"]).trim().is_empty(), "nothing is left there");

    // With the image there, it moves: podman's state on both sides says so, and it counts on.
    busybox_in(&here, &far_podman);
    let before = count();
    let moved = migrate(&[]);
    assert_eq!(moved.code, 0, "{}{}", moved.stderr, moved.stdout);
    let outcome: serde_json::Value = serde_json::from_str(&moved.stdout).unwrap();
    assert_eq!(
        (outcome["container"].as_str(), outcome["source"].as_str()),
        (Some("podman:ckpt-engine-mover"), Some("removed"))
    );
    assert!(!podman.run(&["container", "exists", "ckpt-engine-mover"]).status.success(), "the source is gone");
    let far_count = || last_count(&far_podman.ok(&["logs", "ckpt-engine-mover"]));
    assert!(eventually(Duration::from_secs(5), || far_count() > before + 3), "it carries on there");
    let far_state = there.ok(&["inspect", "--format", "{{.State.Status}}", "podman:ckpt-engine-mover"]);
    assert_eq!(far_state.trim(), "running");
    let audit = std::fs::read_to_string(here.root.join("audit.log")).unwrap();
    assert!(audit.contains("\"migrate\"") && audit.contains("podman:ckpt-engine-mover"), "{audit}");
    let far_audit = std::fs::read_to_string(there.root.join("audit.log")).unwrap();
    assert!(far_audit.contains("podman:ckpt-engine-mover"), "{far_audit}");
    assert!(here.ok(&["audit", "verify"]).contains("intact") && there.ok(&["audit", "verify"]).contains("intact"));
}

/// The layouts the kubelet's CRI runtimes write a checkpoint in.
#[derive(Clone, Copy)]
enum Kubelet {
    CriO,
    Containerd,
}

/// What the kubelet writes for `POST /checkpoint/NAMESPACE/POD/CONTAINER` under `runtime`,
/// made from ckpt's uncompressed archive of a real dump: CRI-O's layout (its annotations,
/// `bind.mounts`, the log under `io.kubernetes.cri-o.LogPath`, no `network.status`) or
/// containerd's (`io.kubernetes.cri.*`, `status`, `container.log`).
fn kubelet_archive(
    ckpt: &Ckpt,
    plain: &std::path::Path,
    runtime: Kubelet,
    (ns, pod, ctr): (&str, &str, &str),
    labels: serde_json::Value,
) -> Vec<u8> {
    let dir = tempfile::tempdir_in(ckpt.path("")).unwrap();
    let run = |cmd: &mut std::process::Command| assert!(cmd.status().unwrap().success(), "{cmd:?}");
    run(std::process::Command::new("tar").arg("-xf").arg(plain).arg("-C").arg(dir.path()));
    let spec_path = dir.path().join("spec.dump");
    let mut spec: serde_json::Value = serde_json::from_slice(&std::fs::read(&spec_path).unwrap()).unwrap();
    let annotations = spec["annotations"].as_object_mut().unwrap();
    // ckpt's own members (its manifest, its decisions) are no CRI runtime's.
    for entry in std::fs::read_dir(dir.path()).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("ckpt-") || name == "network.status" {
            std::fs::remove_file(entry.path()).unwrap();
        }
    }
    match runtime {
        Kubelet::CriO => {
            annotations.insert("io.container.manager".into(), "cri-o".into());
            annotations.insert("io.kubernetes.pod.namespace".into(), ns.into());
            annotations.insert("io.kubernetes.pod.name".into(), pod.into());
            annotations.insert("io.kubernetes.container.name".into(), ctr.into());
            annotations.insert("io.kubernetes.cri-o.Labels".into(), labels.to_string().into());
            std::fs::write(dir.path().join("bind.mounts"), "[]").unwrap();
            std::fs::write(dir.path().join("io.kubernetes.cri-o.LogPath"), "count 1\n").unwrap();
        }
        Kubelet::Containerd => {
            annotations.remove("io.container.manager");
            annotations.insert("io.kubernetes.cri.sandbox-namespace".into(), ns.into());
            annotations.insert("io.kubernetes.cri.sandbox-name".into(), pod.into());
            annotations.insert("io.kubernetes.cri.container-name".into(), ctr.into());
            std::fs::write(dir.path().join("status"), r#"{"ExitCode":0,"Pid":42}"#).unwrap();
            std::fs::write(dir.path().join("container.log"), "count 1\n").unwrap();
        }
    }
    std::fs::write(&spec_path, serde_json::to_vec(&spec).unwrap()).unwrap();
    let out = dir.path().with_extension("tar");
    run(std::process::Command::new("tar").arg("-C").arg(dir.path()).arg("-cf").arg(&out).arg("."));
    std::fs::read(&out).unwrap()
}

/// `image`, saved by ckpt as an OCI archive and unpacked: the directory, the image's manifest and
/// the path of its one layer's blob.
fn saved_image(ckpt: &Ckpt, image: &str) -> (tempfile::TempDir, serde_json::Value, std::path::PathBuf) {
    let saved = ckpt.path("saved-image.tar");
    ckpt.ok(&["image", "save", "-o", saved.to_str().unwrap(), image]);
    let oci = tempfile::tempdir_in(ckpt.path("")).unwrap();
    let untar = std::process::Command::new("tar").arg("-xf").arg(&saved).arg("-C").arg(oci.path()).status();
    assert!(untar.unwrap().success());
    let blob = |digest: &str| oci.path().join("blobs/sha256").join(digest.trim_start_matches("sha256:"));
    let json =
        |path: std::path::PathBuf| serde_json::from_slice::<serde_json::Value>(&std::fs::read(path).unwrap()).unwrap();
    let index = json(oci.path().join("index.json"));
    // A checkpoint image is named through an index of its own, which carries its annotations
    // for containerd, over its one manifest.
    let checkpoint_index = json(blob(index["manifests"][0]["digest"].as_str().unwrap()));
    assert_eq!(checkpoint_index["mediaType"], "application/vnd.oci.image.index.v1+json", "{checkpoint_index}");
    let manifest = json(blob(checkpoint_index["manifests"][0]["digest"].as_str().unwrap()));
    assert_eq!(checkpoint_index["annotations"], manifest["annotations"], "the same annotations on both");
    let layer = blob(manifest["layers"][0]["digest"].as_str().unwrap());
    (oci, manifest, layer)
}

#[test]
fn the_node_agent_turns_the_kubelets_archives_of_both_layouts_into_checkpoint_images() {
    let Some(ckpt) = Ckpt::available() else { return };
    ckpt.counter("kube-web", &[]);
    ckpt.exec("kube-web", "echo mine > /notes");
    assert!(eventually(Duration::from_secs(5), || last_count(&ckpt.logs("kube-web")) >= 3));
    let plain = ckpt.path("web.tar");
    ckpt.ok(&["checkpoint", "-R", "--compress", "none", "-e", plain.to_str().unwrap(), "kube-web"]);
    let dir = ckpt.path("checkpoints");
    std::fs::create_dir_all(&dir).unwrap();
    let none = serde_json::json!({});
    let crio = kubelet_archive(&ckpt, &plain, Kubelet::CriO, ("default", "web-7d4f", "web"), none.clone());
    std::fs::write(dir.join("checkpoint-web-7d4f_default-web-2026-12-07T04:00:00Z.tar"), &crio).unwrap();
    let containerd = kubelet_archive(&ckpt, &plain, Kubelet::Containerd, ("shop", "api-0", "api"), none);
    std::fs::write(dir.join("checkpoint-api-0_shop-api-2026-12-07T04:00:01Z.tar"), &containerd).unwrap();
    // Cut short, as a kubelet that died while writing leaves it.
    let truncated = "checkpoint-bad-1_default-bad-2026-12-07T04:00:02Z.tar";
    std::fs::write(dir.join(truncated), &crio[..crio.len() / 2]).unwrap();
    // A pod whose data may not leave in any image.
    let pii = serde_json::json!({"data-class": "pii", "app": "payroll"});
    let payroll = kubelet_archive(&ckpt, &plain, Kubelet::CriO, ("hr", "payroll-0", "payroll"), pii);
    let denied_name = "checkpoint-payroll-0_hr-payroll-2026-12-07T04:00:03Z.tar";
    std::fs::write(dir.join(denied_name), &payroll).unwrap();
    let compliance = crate::support::policy("compliance");
    let classes = r#"{"classes": {"public": {"targets": ["image:localhost/kube/"], "rootfs": false}, "pii": {"targets": []}}, "unlabelled": "public"}"#;

    let agent = |extra: &[&str]| {
        let args = ["node-agent", "--once", "--checkpoint-dir", dir.to_str().unwrap()];
        let image = ["--image", "localhost/kube/{namespace}-{pod}-{container}:1"];
        let gate = ["--gate", compliance.as_str(), "--gate-config", classes];
        let out = ckpt.ok(&[&args[..], &image[..], &gate[..], extra].concat());
        out.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()).collect::<Vec<_>>()
    };
    let taken = agent(&[]);
    assert_eq!(taken.len(), 4, "{taken:#?}");
    let by_container =
        |name: &str| taken.iter().find(|t| t["container"] == name).unwrap_or_else(|| panic!("{taken:#?}"));
    let web = by_container("k8s:default/web-7d4f/web");
    assert_eq!((web["result"].as_str(), web["layout"].as_str()), (Some("imaged"), Some("cri-o")));
    assert!(web["detail"].as_str().unwrap().contains("narrowed by a gate"), "{web}");
    let payroll = by_container("k8s:hr/payroll-0/payroll");
    assert_eq!(payroll["result"], "denied", "{payroll}");
    assert!(payroll["detail"].as_str().unwrap().contains("pii"), "{payroll}");
    assert!(dir.join(denied_name).exists(), "a denied archive stays the kubelet's");
    let api = by_container("k8s:shop/api-0/api");
    assert_eq!((api["result"].as_str(), api["layout"].as_str()), (Some("imaged"), Some("containerd")));
    let bad = taken.iter().find(|t| t["result"] == "refused").unwrap();
    assert!(bad["detail"].as_str().unwrap().contains("kept at"), "{bad}");
    assert!(!dir.join(truncated).exists() && dir.join("refused").join(truncated).exists(), "moved aside, not deleted");

    // Images with what CRI-O and containerd look for, in the catalog and the audit log.
    let images: serde_json::Value = serde_json::from_str(&ckpt.ok(&["image", "ls", "--format", "json"])).unwrap();
    let text = images.to_string();
    assert!(
        text.contains("org.criu.checkpoint.container.name")
            && text.contains("io.kubernetes.cri-o.annotations.checkpoint.name"),
        "{text}"
    );
    assert!(
        text.contains("localhost/kube/shop-api-0-api:1") && text.contains("localhost/kube/default-web-7d4f-web:1"),
        "{text}"
    );
    // The narrowed image's layer is the kubelet's archive without the container's file changes.
    let (_saved, manifest, layer) = saved_image(&ckpt, "localhost/kube/default-web-7d4f-web:1");
    assert_eq!(manifest["annotations"]["org.criu.checkpoint.pod.namespace"], "default", "{manifest}");
    let listed = std::process::Command::new("tar").arg("-tf").arg(&layer).output().unwrap();
    let members = String::from_utf8_lossy(&listed.stdout).into_owned();
    assert!(members.contains("checkpoint/") && members.contains("bind.mounts"), "{members}");
    assert!(!members.contains("rootfs-diff.tar"), "the gate took the file changes away: {members}");
    let original = std::process::Command::new("tar").arg("-tf").arg(&plain).output().unwrap();
    assert!(String::from_utf8_lossy(&original.stdout).contains("rootfs-diff.tar"), "the kubelet's archive had them");
    let entries: serde_json::Value = serde_json::from_str(&ckpt.ok(&["catalog", "ls", "--format", "json"])).unwrap();
    let kube: Vec<_> = entries.as_array().unwrap().iter().filter(|e| e["trigger"] == "kubelet").collect();
    assert_eq!(kube.len(), 2, "{kube:#?}");
    let audit = std::fs::read_to_string(ckpt.root.join("audit.log")).unwrap();
    assert!(audit.contains("\"kubelet-checkpoint\"") && audit.contains("\"kubelet-checkpoint-refused\""), "{audit}");
    assert!(audit.contains("\"denial\"") && audit.contains("k8s:hr/payroll-0/payroll"), "{audit}");
    let decisions = std::fs::read_to_string(ckpt.root.join("decisions.jsonl")).unwrap();
    assert!(decisions.contains("k8s:hr/payroll-0/payroll"), "the gate's decisions are logged");
    assert!(ckpt.ok(&["audit", "verify"]).contains("intact"));

    // Restarted, it carries on: what it took is not taken again, a new archive is.
    assert!(agent(&[]).is_empty());
    std::fs::write(dir.join("checkpoint-web-7d4f_default-web-2026-12-07T04:05:00Z.tar"), &crio).unwrap();
    // Sealed: the image's one layer is age ciphertext of the (narrowed) archive, which Debian's
    // age opens with the identity.
    let key = ckpt.path("key.txt");
    let recipient = ckpt.ok(&["key", "generate", "-o", key.to_str().unwrap()]).trim().to_string();
    let again = agent(&["--image", "localhost/kube/{namespace}-{pod}-{container}:2", "--encrypt-to", &recipient]);
    assert_eq!(again.len(), 1, "{again:#?}");
    assert_eq!(again[0]["image"], "localhost/kube/default-web-7d4f-web:2");
    let (_saved, manifest, layer) = saved_image(&ckpt, "localhost/kube/default-web-7d4f-web:2");
    assert_eq!(manifest["layers"][0]["mediaType"], "application/vnd.ckpt.checkpoint.layer.v1.tar+zstd+age");
    assert_eq!(manifest["annotations"]["io.ckpt.checkpoint.sealed-to"], recipient.as_str());
    assert!(std::fs::read(&layer).unwrap().starts_with(b"age-encryption.org/v1\n"));
    let opened = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("age -d -i {} {} | zstd -dc | tar -t", key.display(), layer.display()))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&opened.stdout).contains("checkpoint/"), "{opened:?}");
}

/// `--push` sends each image to a registry, signed as `ckpt push` signs (GPG simple signing, the
/// signature in the lookaside store that registries.d names): skopeo, requiring the key, copies
/// it, and the catalog names the registry's image.
#[test]
fn the_node_agent_pushes_signed_images_that_skopeo_verifies() {
    let Some(ckpt) = Ckpt::available() else { return };
    let registry = crate::support::servers::LocalRegistry::start(&ckpt);
    let key = crate::support::servers::GpgKey::generate(&ckpt, "node");
    let registries_d = ckpt.path("registries.d");
    std::fs::create_dir(&registries_d).unwrap();
    let lookaside = format!("file://{}", ckpt.path("signatures").display());
    std::fs::write(
        registries_d.join("ckpt.yaml"),
        format!("docker:\n  {}:\n    lookaside: {lookaside}\n", registry.host),
    )
    .unwrap();
    let config = ckpt.path("node.toml");
    std::fs::write(
        &config,
        format!(
            "[registries]\ninsecure = [{:?}]\n[signatures]\nsign-by = {:?}\ngnupg-home = {:?}\nregistries-d = {registries_d:?}\n",
            registry.host, key.fingerprint, key.home
        ),
    )
    .unwrap();
    ckpt.ok(&["run", "-d", "--name", "kube-db", "--network", "none", "busybox", "sleep", "1000"]);
    let plain = ckpt.path("db.tar");
    ckpt.ok(&["checkpoint", "--compress", "none", "-e", plain.to_str().unwrap(), "kube-db"]);
    let dir = ckpt.path("checkpoints");
    std::fs::create_dir_all(&dir).unwrap();
    let archive = kubelet_archive(&ckpt, &plain, Kubelet::CriO, ("data", "db-0", "db"), serde_json::json!({}));
    std::fs::write(dir.join("checkpoint-db-0_data-db-2026-12-07T07:00:00Z.tar"), &archive).unwrap();

    let image = format!("{}/kube/{{namespace}}-{{pod}}-{{container}}:1", registry.host);
    let out = ckpt.ok(&[
        "--config",
        config.to_str().unwrap(),
        "node-agent",
        "--once",
        "--checkpoint-dir",
        dir.to_str().unwrap(),
        "--image",
        &image,
        "--push",
    ]);
    let taken: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let pushed = format!("{}/kube/data-db-0-db:1", registry.host);
    assert_eq!((taken["result"].as_str(), taken["image"].as_str()), (Some("imaged"), Some(pushed.as_str())), "{taken}");

    key.assert_skopeo_verifies(&ckpt, &registries_d, &pushed);
    let manifest = std::process::Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false", &format!("docker://{pushed}")])
        .output()
        .unwrap();
    let manifest: serde_json::Value = serde_json::from_slice(&manifest.stdout).unwrap();
    assert_eq!(manifest["annotations"]["io.kubernetes.cri-o.annotations.checkpoint.name"], "db", "{manifest}");
    let entries = ckpt.ok(&["catalog", "ls", "--format", "json"]);
    assert!(entries.contains(&pushed), "{entries}");
    assert!(std::fs::read_to_string(ckpt.root.join("audit.log")).unwrap().contains(&pushed));
}

#[test]
fn the_node_agent_keeps_what_the_operators_retention_says_over_a_hundred_archives() {
    let Some(ckpt) = Ckpt::available() else { return };
    ckpt.counter("kube-job", &[]);
    assert!(eventually(Duration::from_secs(5), || last_count(&ckpt.logs("kube-job")) >= 1));
    let plain = ckpt.path("job.tar");
    ckpt.ok(&["checkpoint", "-R", "--compress", "none", "-e", plain.to_str().unwrap(), "kube-job"]);
    let archive = kubelet_archive(&ckpt, &plain, Kubelet::CriO, ("batch", "job-0", "job"), serde_json::json!({}));
    let dir = ckpt.path("checkpoints");
    std::fs::create_dir_all(&dir).unwrap();
    let name = |i: u32| format!("checkpoint-job-0_batch-job-2026-12-07T{:02}:{:02}:00Z.tar", i / 60, i % 60);
    for i in 0..100 {
        std::fs::write(dir.join(name(i)), &archive).unwrap();
    }
    // The oldest is pinned as the operator pins one: it counts towards every limit and stays.
    std::fs::write(dir.join(format!("{}.keep", name(0))), "").unwrap();
    // A second container in the pod, and a second pod in the namespace: the operator's pod and
    // namespace levels. Their archives are imaged after the first container's; the second pod's
    // are the oldest checkpoints all the same, by the times in their names.
    let sidecar = kubelet_archive(&ckpt, &plain, Kubelet::CriO, ("batch", "job-0", "log"), serde_json::json!({}));
    let second = kubelet_archive(&ckpt, &plain, Kubelet::CriO, ("batch", "job-1", "job"), serde_json::json!({}));
    for i in 0..5 {
        std::fs::write(dir.join(format!("checkpoint-job-0_batch-log-2026-12-07T03:0{i}:00Z.tar")), &sidecar).unwrap();
    }
    for i in 0..3 {
        std::fs::write(dir.join(format!("checkpoint-job-1_batch-job-2026-12-06T23:5{i}:00Z.tar")), &second).unwrap();
    }
    let retainer = crate::support::policy("kubelet_retainer");
    let args = ["node-agent", "--once", "--checkpoint-dir", dir.to_str().unwrap(), "--retainer", &retainer];
    let settings = r#"{"maxCheckpointsPerContainer": 10, "maxTotalSizePerContainer": "10Gi",
        "maxCheckpointsPerPod": 12, "maxCheckpointsPerNamespace": 14}"#;
    let image = ["--image", "localhost/kube/{namespace}-{pod}-{container}:{time}", "--retainer-config", settings];
    let out = ckpt.ok(&[&args[..], &image[..]].concat());
    let lines: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let count = |result: &str| lines.iter().filter(|l| l["result"] == result).count();
    // 89 of the first container's (keeping 10 and the pinned one); then 3 more of the pod's 16
    // (keeping 12 and the pinned one); then the 2 oldest of the namespace's 16 (keeping 14),
    // the second pod's.
    assert_eq!((count("imaged"), count("deleted"), count("failed")), (108, 94, 0), "{out}");
    let reasons: Vec<&str> =
        lines.iter().filter(|l| l["result"] == "deleted").map(|l| l["detail"].as_str().unwrap()).collect();
    for (limit, times) in
        [("maxCheckpointsPerContainer", 89), ("maxCheckpointsPerPod", 3), ("maxCheckpointsPerNamespace", 2)]
    {
        assert_eq!(reasons.iter().filter(|r| r.contains(limit)).count(), times, "{limit}: {reasons:#?}");
    }

    // The newest are left: the kubelet's archives, ckpt's images and the catalog agree.
    let left: Vec<String> =
        std::fs::read_dir(&dir).unwrap().flatten().map(|e| e.file_name().into_string().unwrap()).collect();
    let mut left: Vec<&String> = left.iter().filter(|n| n.contains("job-0_batch-job") && n.ends_with(".tar")).collect();
    left.sort();
    let newest: Vec<String> = std::iter::once(0).chain(93..100).map(name).collect();
    assert_eq!(left, newest.iter().collect::<Vec<_>>());
    let entries: serde_json::Value = serde_json::from_str(&ckpt.ok(&["catalog", "ls", "--format", "json"])).unwrap();
    let kept =
        |container: &str| entries.as_array().unwrap().iter().filter(|e| e["container-name"] == container).count();
    assert_eq!((kept("k8s:batch/job-0/job"), kept("k8s:batch/job-0/log"), kept("k8s:batch/job-1/job")), (8, 5, 1));
    assert!(!dir.join("checkpoint-job-1_batch-job-2026-12-06T23:51:00Z.tar").exists());
    let pinned: Vec<_> = entries.as_array().unwrap().iter().filter(|e| e["pinned"] == true).collect();
    assert_eq!(pinned.len(), 1, "{pinned:#?}");
    let images = ckpt.ok(&["image", "ls", "--format", "{{.Repository}}"]);
    assert_eq!(images.lines().filter(|l| l.contains("localhost/kube/batch-job-0-job")).count(), 8, "{images}");
    let audit = std::fs::read_to_string(ckpt.root.join("audit.log")).unwrap();
    assert_eq!(audit.matches("\"retention-delete\"").count(), 94);
    assert_eq!(audit.matches("\"pin\"").count(), 1, "{audit}");

    // Its .keep gone, the oldest is unpinned, and the pod's limit takes it with the next pass.
    std::fs::remove_file(dir.join(format!("{}.keep", name(0)))).unwrap();
    std::fs::write(dir.join(name(100)), &archive).unwrap();
    let out = ckpt.ok(&[&args[..], &image[..]].concat());
    let deleted: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|l: &serde_json::Value| l["result"] == "deleted")
        .collect();
    let gone: Vec<&str> = deleted.iter().map(|l| l["archive"].as_str().unwrap()).collect();
    assert_eq!(gone.len(), 2, "{out}");
    assert!(gone.iter().any(|a| a.ends_with(&name(0))) && gone.iter().any(|a| a.ends_with(&name(93))), "{gone:?}");
    let audit = std::fs::read_to_string(ckpt.root.join("audit.log")).unwrap();
    assert_eq!(audit.matches("\"unpin\"").count(), 1, "{audit}");
    assert!(ckpt.ok(&["audit", "verify"]).contains("intact"));
}

#[test]
fn a_schedule_has_the_kubelet_checkpoint_a_pods_container_and_the_node_agent_images_it() {
    use crate::support::servers::{FakeKubelet, certificates};
    let Some(ckpt) = Ckpt::available() else { return };
    ckpt.counter("kube-api", &[]);
    assert!(eventually(Duration::from_secs(5), || last_count(&ckpt.logs("kube-api")) >= 1));
    let plain = ckpt.path("api.tar");
    ckpt.ok(&["checkpoint", "-R", "--compress", "none", "-e", plain.to_str().unwrap(), "kube-api"]);
    let pod = ckpt.path("pod-api.tar");
    let archive = kubelet_archive(&ckpt, &plain, Kubelet::CriO, ("shop", "api-0", "api"), serde_json::json!({}));
    std::fs::write(&pod, archive).unwrap();
    let kubelet = FakeKubelet::start(&ckpt.path("node"), &[("shop/api-0/api", &pod)]);
    let config = std::fs::read_to_string(ckpt.path("ckpt.toml")).unwrap();
    let with = |cert: &std::path::Path, key: &std::path::Path| {
        std::fs::write(ckpt.path("ckpt.toml"), format!("{config}{}", kubelet.config(cert, key))).unwrap();
    };
    with(&kubelet.client_cert, &kubelet.client_key);

    // A pod's container is named as the kubelet's path takes it.
    let bad = ckpt.fails(&["schedule", "add", "bad", "--every", "1h", "--container", "k8s:Shop/api-0"]);
    assert!(bad.contains("k8s:NAMESPACE/POD/CONTAINER"), "{bad}");
    ckpt.ok(&["schedule", "add", "api", "--every", "1h", "--container", "k8s:shop/api-0/api"]);
    let ran = ckpt.ok(&["schedule", "run", "api"]);
    assert!(ran.contains("k8s:shop/api-0/api") && ran.contains("ok"), "{ran}");
    let written: Vec<_> = std::fs::read_dir(&kubelet.checkpoints).unwrap().flatten().map(|e| e.file_name()).collect();
    assert_eq!(written.len(), 1, "{written:?}");
    let file = written[0].to_string_lossy().into_owned();
    assert!(file.starts_with("checkpoint-api-0_shop-api-") && file.ends_with("Z.tar"), "KEP-2008's name: {file}");
    let audit = std::fs::read_to_string(ckpt.root.join("audit.log")).unwrap();
    assert!(audit.contains("\"kubelet-checkpoint-requested\""), "{audit}");

    // The node agent takes the archive the kubelet wrote.
    let dir = kubelet.checkpoints.to_str().unwrap();
    let taken = ckpt.ok(&["node-agent", "--once", "--checkpoint-dir", dir]);
    let taken: serde_json::Value = serde_json::from_str(taken.trim()).unwrap();
    assert_eq!((taken["result"].as_str(), taken["container"].as_str()), (Some("imaged"), Some("k8s:shop/api-0/api")));

    // A pod the kubelet does not run, and a client certificate its CA did not sign, fail the
    // run with what the kubelet said.
    ckpt.ok(&["schedule", "add", "gone", "--every", "1h", "--container", "k8s:shop/gone-0/api"]);
    let gone = ckpt.run(&["schedule", "run", "gone"]);
    assert!(gone.stdout.contains("failed") && gone.stdout.contains("HTTP 404"), "{}{}", gone.stdout, gone.stderr);
    let stranger = ckpt.path("stranger");
    certificates(&stranger);
    with(&stranger.join("client.crt"), &stranger.join("client.key"));
    let refused = ckpt.run(&["schedule", "run", "api"]);
    assert!(refused.stdout.contains("does not answer"), "{}{}", refused.stdout, refused.stderr);
    assert_eq!(std::fs::read_dir(&kubelet.checkpoints).unwrap().count(), 1, "nothing more was written");
}

/// The node agent's cluster side with the real binary: kube-rs reads ckpt's custom resources and
/// the node's pods from a stand-in API server (`tests/fixtures/fake-apiserver.py`: TLS, a bearer
/// token from a kubeconfig, the API server's paths, lists, selectors and Status errors). A
/// `CheckpointSchedule` has the stand-in kubelet checkpoint the selected container on this
/// node, the agent images that archive, and the `CheckpointRetention` decides what goes.
#[test]
fn the_node_agent_runs_the_clusters_schedules_and_retention_through_a_stand_in_api_server() {
    use crate::support::servers::{FakeApiServer, FakeKubelet};
    let Some(ckpt) = Ckpt::available() else { return };
    ckpt.ok(&["run", "-d", "--name", "kube-web", "--network", "none", "busybox", "sleep", "1000"]);
    let plain = ckpt.path("web.tar");
    ckpt.ok(&["checkpoint", "--compress", "none", "-e", plain.to_str().unwrap(), "kube-web"]);
    let pod_archive = ckpt.path("pod-web.tar");
    let archive = kubelet_archive(&ckpt, &plain, Kubelet::CriO, ("shop", "web-0", "web"), serde_json::json!({}));
    std::fs::write(&pod_archive, &archive).unwrap();
    let kubelet = FakeKubelet::start(&ckpt.path("node"), &[("shop/web-0/web", &pod_archive)]);
    let config = std::fs::read_to_string(ckpt.path("ckpt.toml")).unwrap();
    std::fs::write(
        ckpt.path("ckpt.toml"),
        format!("{config}{}", kubelet.config(&kubelet.client_cert, &kubelet.client_key)),
    )
    .unwrap();
    // An older checkpoint of the same container, which the retention's one-per-container limit
    // leaves no room for once the schedule's is taken.
    std::fs::create_dir_all(&kubelet.checkpoints).unwrap();
    let older = kubelet.checkpoints.join("checkpoint-web-0_shop-web-2026-12-01T00:00:00Z.tar");
    std::fs::write(&older, &archive).unwrap();

    let two_hours_ago =
        (chrono::Utc::now() - chrono::Duration::hours(2)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let pod = |name: &str, app: &str, node: &str| {
        serde_json::json!({"metadata": {"name": name, "namespace": "shop", "labels": {"app": app}},
            "spec": {"nodeName": node, "containers": [{"name": "web"}, {"name": "log"}]}, "status": {"phase": "Running"}})
    };
    let cluster = |global_policy: serde_json::Value| {
        serde_json::json!({
            "retentions": {"default": {"apiVersion": "ckpt.io/v1alpha1", "kind": "CheckpointRetention",
                "metadata": {"name": "default"},
                "spec": {"globalPolicy": global_policy}}},
            "schedules": [{"apiVersion": "ckpt.io/v1alpha1", "kind": "CheckpointSchedule",
                "metadata": {"name": "web-hourly", "uid": "5f0c", "creationTimestamp": two_hours_ago},
                "spec": {"namespace": "shop", "selector": {"matchLabels": {"app": "web"}},
                         "containerNames": ["web"], "triggers": {"interval": "1h"}}}],
            "pods": [pod("web-0", "web", "node-1"), pod("web-1", "web", "node-2"), pod("db-0", "db", "node-1")],
        })
    };
    let api = FakeApiServer::start(
        &ckpt.path("cluster"),
        &cluster(serde_json::json!({"maxCheckpointsPerContainer": 1, "retainOrphan": true})),
    );
    let retainer = crate::support::policy("kubelet_retainer");
    let agent = || {
        let out = ckpt
            .command()
            .env("KUBECONFIG", &api.kubeconfig)
            .args(["node-agent", "--once", "--checkpoint-dir", kubelet.checkpoints.to_str().unwrap()])
            .args(["--retainer", &retainer, "--cluster-retention", "default", "--schedules-on-node", "node-1"])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "node-agent: {stderr}{stdout}");
        let lines: Vec<serde_json::Value> = stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        (lines, stderr)
    };

    let (lines, _) = agent();
    let results: Vec<(&str, &str)> =
        lines.iter().map(|l| (l["result"].as_str().unwrap(), l["container"].as_str().unwrap_or_default())).collect();
    assert_eq!(
        results,
        [
            ("requested", "k8s:shop/web-0/web"),
            ("imaged", "k8s:shop/web-0/web"),
            ("imaged", "k8s:shop/web-0/web"),
            ("deleted", "k8s:shop/web-0/web"),
        ],
        "only web-0's web container is on node-1 and picked: {lines:#?}"
    );
    assert!(lines[3]["detail"].as_str().unwrap().contains("maxCheckpointsPerContainer"), "{lines:#?}");
    assert!(!older.exists(), "the older checkpoint went");
    assert_eq!(
        std::fs::read_dir(&kubelet.checkpoints).unwrap().flatten().filter(|e| e.path().extension().is_some()).count(),
        1
    );
    let asked = std::fs::read_to_string(&api.log).unwrap();
    assert!(asked.contains("GET /apis/ckpt.io/v1alpha1/checkpointretentions/default"), "{asked}");
    assert!(asked.contains("labelSelector=app%3Dweb") && asked.contains("spec.nodeName%3Dnode-1"), "{asked}");
    let audit = std::fs::read_to_string(ckpt.root.join("audit.log")).unwrap();
    assert!(audit.contains("\"kubelet-checkpoint-requested\"") && audit.contains("web-hourly"), "{audit}");

    // Within the same interval nothing is asked again. Orphans are not kept now, but web-0 is
    // still there: its checkpoint stays.
    let orphans_go = serde_json::json!({"maxCheckpointsPerContainer": 1, "retainOrphan": false});
    api.set(&cluster(orphans_go.clone()));
    let (lines, _) = agent();
    assert!(lines.is_empty(), "{lines:#?}");
    // Once web-0 is gone from the API server, so is its checkpoint, though no archive came.
    let mut without_web_0 = cluster(orphans_go);
    without_web_0["pods"].as_array_mut().unwrap().retain(|p| p["metadata"]["name"] != "web-0");
    api.set(&without_web_0);
    let (lines, _) = agent();
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert_eq!(
        (lines[0]["result"].as_str(), lines[0]["container"].as_str()),
        (Some("deleted"), Some("k8s:shop/web-0/web"))
    );
    let detail = lines[0]["detail"].as_str().unwrap();
    assert!(detail.contains("k8s:shop/web-0/web is gone from the cluster, and retainOrphan is false"), "{detail}");
    assert_eq!(std::fs::read_dir(&kubelet.checkpoints).unwrap().flatten().filter(|e| e.path().is_file()).count(), 0);
    let asked = std::fs::read_to_string(&api.log).unwrap();
    assert!(
        asked.contains("GET /api/v1/namespaces/shop/pods/web-0 ") && asked.contains("GET /api/v1/namespaces/shop "),
        "{asked}"
    );
    // Nor does one whose sizes the retainer cannot read: the agent goes on.
    without_web_0["retentions"]["default"]["spec"]["globalPolicy"] =
        serde_json::json!({"maxCheckpointSize": "2 furlongs"});
    api.set(&without_web_0);
    let (lines, stderr) = agent();
    assert!(lines.is_empty(), "{lines:#?}");
    assert!(stderr.contains("2 furlongs") && stderr.contains("is not a Kubernetes quantity"), "{stderr}");
}

/// The workspace, where `deploy/` and the tools `scripts/test` installs are.
fn workspace() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// kubernetes-validate (PyPI), which `scripts/test` installs: the API server's schemas, offline,
/// `--strict` refusing fields they do not have.
fn kubernetes_validate(files: &[std::path::PathBuf]) {
    let tool = workspace().join(".tools/lint/bin/kubernetes-validate");
    assert!(tool.exists(), "{} is missing: scripts/test installs it", tool.display());
    let out = std::process::Command::new(tool).args(["--strict", "--quiet"]).args(files).output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "kubernetes-validate --strict: {said}");
}

/// A custom resource against the `openAPIV3Schema` of its definition in
/// `deploy/kubernetes/crds.yaml`, with the jsonschema that kubernetes-validate brings.
fn custom_resource_validate(path: &std::path::Path) {
    let resource = yaml_documents(path).remove(0);
    let definitions = yaml_documents(&workspace().join("deploy/kubernetes/crds.yaml"));
    let kind = resource["kind"].as_str().unwrap();
    let definition = definitions.iter().find(|d| d["spec"]["names"]["kind"] == kind).unwrap();
    let schema = &definition["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
    let python = workspace().join(".tools/lint/bin/python");
    let script = "import json, sys, jsonschema; jsonschema.validate(json.loads(sys.argv[1]), json.loads(sys.argv[2]))";
    let out = std::process::Command::new(python)
        .args(["-c", script, &resource.to_string(), &schema.to_string()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}: {}", path.display(), String::from_utf8_lossy(&out.stderr));
}

/// Each document of a YAML file as JSON, read by the PyYAML that kubernetes-validate brings.
fn yaml_documents(path: &std::path::Path) -> Vec<serde_json::Value> {
    let python = workspace().join(".tools/lint/bin/python");
    let script = "import json, sys, yaml; print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))";
    let out = std::process::Command::new(python).args(["-c", script]).arg(path).output().unwrap();
    assert!(out.status.success(), "{}: {}", path.display(), String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `deploy/kubernetes` as a node would run it, short of Kubernetes: the manifests pass
/// kubernetes-validate; `render` builds the agent's image from this machine's programs and pushes
/// it, with the retainer pinned by digest, to a real registry; then the DaemonSet's init
/// container and agent run in that image under `ckpt run`, each from the rendered pod spec (its
/// command, its args with the ConfigMap's values, its volumes and mounts). The agent takes a
/// kubelet archive, signs and pushes its image, and skopeo verifies the signature.
#[test]
fn the_kubernetes_deployment_renders_and_its_daemonset_runs_from_its_image() {
    let Some(ckpt) = Ckpt::available() else { return };
    let manifests: Vec<_> = ["namespace", "rbac", "configmap", "daemonset", "crds"]
        .iter()
        .map(|name| workspace().join(format!("deploy/kubernetes/{name}.yaml")))
        .collect();
    kubernetes_validate(&manifests);
    // The custom resources, against their definitions' schemas, as the API server checks them.
    for resource in ["retention", "schedule-example"] {
        custom_resource_validate(&workspace().join(format!("deploy/kubernetes/{resource}.yaml")));
    }

    // A container that brings the default network's bridge up, whose gateway the agent's
    // container reaches the registry at.
    ckpt.ok(&["run", "-d", "--name", "bridge-up", "busybox", "sleep", "1000"]);
    let network: serde_json::Value = serde_json::from_str(&ckpt.ok(&["network", "inspect", "ckpt"])).unwrap();
    let gateway = network[0]["subnets"][0]["gateway"].as_str().unwrap().to_string();
    let registry = crate::support::servers::LocalRegistry::reachable_at(&ckpt, &gateway);
    let config = ckpt.dir.path().join("ckpt.toml");
    let mut host_config = std::fs::read_to_string(&config).unwrap();
    host_config.push_str(&format!("[registries]\ninsecure = [{:?}]\n", registry.host));
    std::fs::write(&config, &host_config).unwrap();
    let key = crate::support::servers::GpgKey::generate(&ckpt, "node");

    let rendered = ckpt.path("rendered");
    let render = std::process::Command::new("bash")
        .arg(workspace().join("deploy/kubernetes/render"))
        .arg(format!("{}/ckpt", registry.host))
        .arg(&rendered)
        .arg(&key.fingerprint)
        .current_dir(workspace())
        .envs(ckpt.command().get_envs().filter_map(|(k, v)| Some((k.to_owned(), v?.to_owned()))))
        .env("CKPT", env!("CARGO_BIN_EXE_ckpt"))
        .env("CKPT_ROOT", &ckpt.root)
        .env("CKPT_RUNROOT", &ckpt.runroot)
        .output()
        .unwrap();
    assert!(render.status.success(), "render: {}", String::from_utf8_lossy(&render.stderr));
    kubernetes_validate(&manifests.iter().map(|m| rendered.join(m.file_name().unwrap())).collect::<Vec<_>>());
    let config_map = &yaml_documents(&rendered.join("configmap.yaml"))[0]["data"];
    let daemon_set = &yaml_documents(&rendered.join("daemonset.yaml"))[0];
    let pod = &daemon_set["spec"]["template"]["spec"];
    assert!(config_map["retainer"].as_str().unwrap().contains("@sha256:"), "{config_map}");

    // The node: the kubelet's directory with one archive, and a directory for each volume.
    ckpt.ok(&["run", "-d", "--name", "kube-db", "--network", "none", "busybox", "sleep", "1000"]);
    let plain = ckpt.path("db.tar");
    ckpt.ok(&["checkpoint", "--compress", "none", "-e", plain.to_str().unwrap(), "kube-db"]);
    let node = ckpt.path("node");
    let volume = |name: &str| node.join(name);
    for one in pod["volumes"].as_array().unwrap() {
        std::fs::create_dir_all(volume(one["name"].as_str().unwrap())).unwrap();
    }
    let archive = kubelet_archive(&ckpt, &plain, Kubelet::CriO, ("data", "db-0", "db"), serde_json::json!({}));
    std::fs::write(volume("checkpoints").join("checkpoint-db-0_data-db-2026-12-07T08:00:00Z.tar"), &archive).unwrap();
    // The ConfigMap's items, as the kubelet projects them; the registry has no TLS here, as an
    // admin's ConfigMap would say of such a registry.
    let config_items = pod["volumes"].as_array().unwrap().iter().find(|v| v["name"] == "config").unwrap();
    for item in config_items["configMap"]["items"].as_array().unwrap() {
        let path = volume("config").join(item["path"].as_str().unwrap());
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, config_map[item["key"].as_str().unwrap()].as_str().unwrap()).unwrap();
    }
    let agent_config = volume("config").join("ckpt.toml");
    let mut text = std::fs::read_to_string(&agent_config).unwrap();
    text.push_str(&format!("\n[registries]\ninsecure = [{:?}]\n", registry.host));
    std::fs::write(&agent_config, text).unwrap();
    let exported = std::process::Command::new("gpg")
        .env("GNUPGHOME", &key.home)
        .args(["--batch", "--armor", "--export-secret-keys", &key.fingerprint])
        .output()
        .unwrap();
    std::fs::write(volume("signing-key").join("key.asc"), &exported.stdout).unwrap();

    // Each container of the pod spec, run in its image as the kubelet would start it.
    let run_container = |container: &serde_json::Value, network: &str, extra: &[&str]| {
        let mut args: Vec<String> = vec!["run".into(), "--rm".into(), "--network".into(), network.into()];
        let mut env = std::collections::BTreeMap::new();
        for var in container["env"].as_array().into_iter().flatten() {
            let from = &var["valueFrom"];
            let value = match (var["value"].as_str(), from["fieldRef"]["fieldPath"].as_str()) {
                (Some(value), _) => value.to_string(),
                (None, Some("spec.nodeName")) => "node-1".to_string(),
                _ => config_map[from["configMapKeyRef"]["key"].as_str().unwrap()].as_str().unwrap().to_string(),
            };
            args.extend(["-e".into(), format!("{}={value}", var["name"].as_str().unwrap())]);
            env.insert(format!("$({})", var["name"].as_str().unwrap()), value);
        }
        for mount in container["volumeMounts"].as_array().unwrap() {
            let mut source = volume(mount["name"].as_str().unwrap());
            if let Some(sub) = mount["subPath"].as_str() {
                source = source.join(sub);
                std::fs::create_dir_all(&source).unwrap();
            }
            let mode = if mount["readOnly"] == true { "ro" } else { "rw" };
            args.extend(["-v".into(), format!("{}:{}:{mode}", source.display(), mount["mountPath"].as_str().unwrap())]);
        }
        args.push(container["image"].as_str().unwrap().to_string());
        let command =
            container["command"].as_array().unwrap().iter().chain(container["args"].as_array().into_iter().flatten());
        for word in command {
            let mut word = word.as_str().unwrap().to_string();
            for (name, value) in &env {
                word = word.replace(name, value);
            }
            args.push(word);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        ckpt.ok(&args.iter().map(String::as_str).collect::<Vec<_>>())
    };
    run_container(&pod["initContainers"][0], "none", &[]);
    let out = run_container(&pod["containers"][0], "ckpt", &["--once"]);
    let taken: serde_json::Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(taken["result"], "imaged", "{taken}");
    let pushed = taken["image"].as_str().unwrap().to_string();
    assert!(pushed.starts_with(&format!("{}/ckpt/checkpoints/data-db-0-db:", registry.host)), "{pushed}");

    // Signed by the key the init container imported: skopeo, requiring it, copies the image,
    // its signature read from the node's lookaside store.
    let registries_d = ckpt.path("verify.d");
    std::fs::create_dir(&registries_d).unwrap();
    let lookaside = format!("file://{}", volume("state").join("sigstore").display());
    std::fs::write(
        registries_d.join("ckpt.yaml"),
        format!("docker:\n  {}:\n    lookaside: {lookaside}\n", registry.host),
    )
    .unwrap();
    key.assert_skopeo_verifies(&ckpt, &registries_d, &pushed);
    ckpt.ok(&["rm", "-f", "bridge-up", "kube-db"]);
}
