//! The verbs podman users script checkpoints with, and a podman checkpoint workflow run
//! unchanged through a `podman` that is ckpt.

use std::time::Duration;

use crate::support::{Ckpt, eventually, last_count};

#[test]
fn create_start_pause_unpause_restart_wait_and_rm_with_a_timeout() {
    let Some(ckpt) = Ckpt::available() else { return };
    let state = "{{.State.Status}}:{{.State.Running}}:{{.State.Paused}}:{{.State.Checkpointed}}";
    let id = ckpt.ok(&[
        "create",
        "--name",
        "c",
        "busybox",
        "sh",
        "-c",
        "i=0; while :; do echo count $i; i=$((i+1)); sleep 0.1; done",
    ]);
    assert_eq!(id.trim().len(), 64);
    assert_eq!(ckpt.ok(&["inspect", "-f", state, "c"]), "created:false:false:false\n");
    assert_eq!(ckpt.ok(&["ps", "-a", "--format", "{{.Names}} {{.State}}"]), "c created\n");
    ckpt.ok(&["start", "c"]);
    assert!(eventually(Duration::from_secs(5), || ckpt.logs("c").contains("count 3")));

    assert_eq!(ckpt.ok(&["pause", "c"]), "c\n");
    assert_eq!(ckpt.ok(&["inspect", "-f", state, "c"]), "paused:true:true:false\n");
    let frozen = last_count(&ckpt.logs("c"));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(last_count(&ckpt.logs("c")), frozen, "a paused container does not run");
    let refused = ckpt.fails(&["checkpoint", "c"]);
    assert!(refused.contains("paused") && refused.contains("ckpt unpause"), "{refused}");
    let check = ckpt.run(&["system", "check", "--repair"]);
    assert!(!check.stdout.contains("frozen"), "a pause the user asked for is no dump's leftover: {}", check.stdout);
    assert_eq!(ckpt.status("c"), "paused");
    assert!(ckpt.fails(&["pause", "c"]).contains("not running"));
    assert_eq!(ckpt.ok(&["unpause", "c"]), "c\n");
    assert!(ckpt.fails(&["unpause", "c"]).contains("not paused"));
    assert!(eventually(Duration::from_secs(5), || last_count(&ckpt.logs("c")) > frozen));

    let before = ckpt.inspect("c")["State"]["StartedAt"].clone();
    assert_eq!(ckpt.ok(&["restart", "-t", "1", "c"]), "c\n");
    assert_eq!(ckpt.ok(&["inspect", "-f", "{{.State.Status}}", "c"]), "running\n");
    assert_ne!(ckpt.inspect("c")["State"]["StartedAt"], before, "restart starts it again");

    ckpt.ok(&[
        "run",
        "-d",
        "--name",
        "w",
        "-w",
        "/work/dir",
        "busybox",
        "sh",
        "-c",
        "pwd; touch /go; while [ -e /go ]; do sleep 0.1; done; exit 7",
    ]);
    assert_eq!(ckpt.inspect("w")["Config"]["WorkingDir"], "/work/dir");
    assert_eq!(ckpt.inspect("c")["Config"]["WorkingDir"], "/", "the image's, which has none");
    assert_eq!(ckpt.ok(&["exec", "-d", "w", "rm", "/go"]), "", "exec -d returns at once and prints nothing");
    assert_eq!(ckpt.ok(&["wait", "w"]), "7\n");
    assert_eq!(ckpt.logs("w").trim(), "/work/dir", "the command runs in --workdir, made when missing");
    assert_eq!(ckpt.ok(&["wait", "w"]), "7\n", "waiting on an exited container returns at once");

    ckpt.ok(&["rm", "-t", "0", "-f", "c", "w"]);
    assert!(ckpt.ok(&["ps", "-a", "-q"]).is_empty());
    ckpt.ok(&["rm", "--ignore", "gone"]);
    assert!(ckpt.fails(&["rm", "gone"]).contains("no such container"));
}

#[test]
fn logs_since_until_and_tail() {
    let Some(ckpt) = Ckpt::available() else { return };
    ckpt.ok(&[
        "run",
        "-d",
        "--name",
        "l",
        "busybox",
        "sh",
        "-c",
        "for i in 1 2 3 4 5; do echo line $i; done; sleep 2; echo late; sleep 1000",
    ]);
    assert!(eventually(Duration::from_secs(10), || ckpt.logs("l").contains("late")));
    assert_eq!(ckpt.ok(&["logs", "--tail", "2", "l"]), "line 5\nlate\n");
    assert_eq!(ckpt.ok(&["logs", "--tail", "0", "l"]), "");
    assert_eq!(ckpt.ok(&["logs", "--since", "1s", "l"]), "late\n");
    let until = ckpt.ok(&["logs", "--until", "1s", "l"]);
    assert_eq!(until.lines().count(), 5, "{until}");
    let far = ckpt.ok(&["logs", "--since", "2000-01-01", "--tail", "-1", "l"]);
    assert_eq!(far.lines().count(), 6);
    assert!(ckpt.fails(&["logs", "--since", "yesterday", "l"]).contains("--since \"yesterday\""));
    ckpt.ok(&["rm", "-f", "l"]);
}

#[test]
fn podman_checkpoint_workflow_runs_unchanged_through_a_wrapper() {
    let Some(ckpt) = Ckpt::available() else { return };
    crate::support::import_flock_image(&ckpt);
    // `podman` on PATH is ckpt with this test's store, as a user's alias would make it.
    let bin = ckpt.path("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let wrapper = bin.join("podman");
    let command = ckpt.command();
    let args: Vec<String> = command.get_args().map(|a| format!("{:?}", a.to_string_lossy())).collect();
    let config = ckpt.path("ckpt.toml");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexport CKPT_CONFIG={:?} CKPT_POLICY_CACHE=/var/tmp/ckpt-test-policy-cache\nexec {:?} {} \"$@\"\n",
            config.display().to_string(),
            command.get_program().to_string_lossy(),
            args.join(" ")
        ),
    )
    .unwrap();
    std::fs::set_permissions(&wrapper, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/podman-workflow.sh");
    let output = std::process::Command::new("bash")
        .arg(&script)
        .env("PATH", format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default()))
        .env("WORKDIR", ckpt.path("work"))
        .env("FLOCK_IMAGE", "flock")
        .output()
        .unwrap();
    let log = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "the podman workflow failed:\n{log}");
    assert!(log.contains("workflow: all steps passed"), "{log}");
}

#[test]
fn completions_load_in_bash_and_man_pages_render() {
    let Some(ckpt) = Ckpt::available() else { return };
    let script = ckpt.path("ckpt.bash");
    ckpt.ok(&["completion", "bash", "--file", script.to_str().unwrap()]);
    let probe = format!(
        "source {:?} && COMP_WORDS=(ckpt container che) COMP_CWORD=2 COMP_LINE='ckpt container che' COMP_POINT=18 && _ckpt ckpt che container && echo \"${{COMPREPLY[@]}}\"",
        script
    );
    let completed = std::process::Command::new("bash").arg("-c").arg(&probe).output().unwrap();
    assert!(completed.status.success(), "{}", String::from_utf8_lossy(&completed.stderr));
    assert_eq!(String::from_utf8_lossy(&completed.stdout).trim(), "checkpoint");
    for shell in ["zsh", "fish"] {
        assert!(ckpt.ok(&["completion", shell]).contains("ckpt"), "{shell}");
    }

    let man = ckpt.path("man");
    let pages = ckpt.ok(&["generate-man", man.join("man1").to_str().unwrap()]);
    assert!(pages.lines().count() > 40, "{pages}");
    let rendered = std::process::Command::new("man")
        .arg("ckpt-checkpoint")
        .env("MANPATH", &man)
        .env("MANPAGER", "cat")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&rendered.stdout);
    assert!(text.contains("ckpt-checkpoint - Checkpoint") && text.contains("--leave-running"), "{text}");
}

#[test]
fn info_rmi_images_all_and_volume_rm_all_as_podmans_helpers_use_them() {
    let Some(ckpt) = Ckpt::available() else { return };
    let runtime = ckpt.ok(&["info", "--format", "{{ .Host.OCIRuntime.Name }}:{{.Store.GraphDriverName}}"]);
    assert_eq!(runtime, "runc:overlay\n");
    let info: serde_json::Value = serde_json::from_str(&ckpt.ok(&["info"])).unwrap();
    assert!(info["Host"]["CRIU"]["Version"].as_u64().unwrap() >= 40000, "{info}");
    ckpt.ok(&["run", "-d", "--name", "i", "busybox", "sleep", "1000"]);
    assert_eq!(ckpt.ok(&["info", "-f", "{{.Store.ContainerStore.Running}}"]), "1\n");
    assert_eq!(ckpt.ok(&["ps", "--all", "--external", "--format", "{{.Names}}"]), "i\n");
    assert_eq!(ckpt.ok(&["images", "--all", "--format", "{{.Repository}}:{{.Tag}}"]), "busybox:latest\n");
    // A flag given twice takes its last value, as podman's do.
    assert_eq!(ckpt.ok(&["ps", "--format", "{{.ID}}", "--format", "{{.Names}}"]), "i\n");
    ckpt.ok(&["volume", "create", "a"]);
    ckpt.ok(&["volume", "create", "b"]);
    ckpt.ok(&["volume", "rm", "-a"]);
    assert!(ckpt.ok(&["volume", "ls", "-q"]).is_empty());
    ckpt.ok(&["rm", "-f", "i"]);
    ckpt.ok(&["save", "-o", ckpt.path("bb.tar").to_str().unwrap(), "busybox"]);
    ckpt.ok(&["rmi", "busybox"]);
    assert!(ckpt.ok(&["images", "-q"]).is_empty());
    ckpt.ok(&["load", "-i", ckpt.path("bb.tar").to_str().unwrap()]);
    assert_eq!(ckpt.ok(&["images", "--format", "{{.Repository}}"]), "busybox\n");
}
