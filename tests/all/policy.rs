//! The policy engine end to end: real WebAssembly components in Rust, Python and JavaScript
//! deciding real checkpoints with real runc and CRIU, and the sandbox holding against policies
//! that misbehave.

use crate::support::{Ckpt, fixture, member, members, policy};

#[test]
fn the_default_path_goes_through_the_builtin_component() {
    let Some(ckpt) = Ckpt::available() else { return };
    ckpt.counter("c", &[]);
    let out = ckpt.ok(&["checkpoint", "--dry-run", "-R", "c"]);
    let plans: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(plans[0]["policy"]["name"], "default");
    assert_eq!(plans[0]["policy"]["source"], "builtin:default");
    assert_eq!(plans[0]["plan"]["options"]["leave-running"], true);
    assert_eq!(ckpt.status("c"), "running", "a dry run changes nothing");
    let archive = ckpt.path("c.tar.zst");
    ckpt.ok(&["checkpoint", "-e", archive.to_str().unwrap(), "c"]);
    // The decision record is in the archive and in the local log.
    let records: serde_json::Value = serde_json::from_str(&member(&archive, "ckpt-decisions.json")).unwrap();
    assert_eq!(records[0]["kind"], "plan");
    assert_eq!(records[0]["policy"]["name"], "default");
    for key in ["settings_digest", "facts_digest"] {
        assert!(records[0][key].as_str().unwrap().starts_with("blake3:"), "{key}");
    }
    assert!(records[0]["policy"]["digest"].as_str().unwrap().starts_with("blake3:"));
    assert!(records[0]["fuel_used"].as_u64().unwrap() > 0);
    let log = std::fs::read_to_string(ckpt.root.join("decisions.jsonl")).unwrap();
    assert!(log.lines().any(|l| l.contains("\"kind\":\"plan\"")));
    // A policy already seen pays no compile cost.
    let inspected: serde_json::Value =
        serde_json::from_str(&ckpt.ok(&["policy", "inspect", "builtin:default"])).unwrap();
    assert_eq!(inspected["precompiled_in_cache"], true);
}

#[test]
fn migration_plans_tcp_and_exports_to_its_target() {
    let Some(ckpt) = Ckpt::available() else { return };
    let script = "nc -l -p 9000 -e cat & sleep 0.5; (while :; do echo ping; sleep 0.2; done) | nc 127.0.0.1 9000";
    ckpt.ok(&["run", "-d", "--name", "db", "busybox", "sh", "-c", script]);
    assert!(crate::support::eventually(std::time::Duration::from_secs(5), || ckpt.logs("db").contains("ping")));
    let target = ckpt.path("{name}.tar.zst");
    let settings = serde_json::json!({"target": target.to_str().unwrap()}).to_string();
    let migration = policy("migration");
    let tracking = std::process::Command::new("criu")
        .args(["check", "--feature", "mem_dirty_track"])
        .output()
        .unwrap()
        .status
        .success();
    let out = ckpt.ok(&["checkpoint", "--policy", &migration, "--policy-config", &settings, "db"]);
    assert_eq!(out, "db\n");
    let archive = ckpt.path("db.tar.zst");
    assert!(archive.is_file(), "exported where the settings say");
    let records: serde_json::Value = serde_json::from_str(&member(&archive, "ckpt-decisions.json")).unwrap();
    let plan = &records[0]["decision"];
    assert_eq!(plan["options"]["tcp-established"], true, "established connections were seen: {plan}");
    if !tracking {
        assert_eq!(plan["pre-dump"], "none");
        assert!(records[0]["logs"].to_string().contains("no memory dirty tracking"));
    }
    ckpt.ok(&["restore", "--tcp-established", "db"]);
    assert_eq!(ckpt.status("db"), "running");
    // Asking for pre-dumps where the host cannot do them is refused before anything changes.
    if !tracking {
        let strict = serde_json::json!({"target": target.to_str().unwrap(), "require-pre-dump": true}).to_string();
        let refused = ckpt.fails(&["checkpoint", "--policy", &migration, "--policy-config", &strict, "db"]);
        assert!(refused.contains("does not support memory tracking"), "{refused}");
        assert_eq!(ckpt.status("db"), "running");
    }
}

#[test]
fn compliance_gate_denies_and_narrows() {
    let Some(ckpt) = Ckpt::available() else { return };
    ckpt.counter("pii", &["--label", "data-class=pii", "-v", "secrets:/data"]);
    ckpt.exec("pii", "echo s3cret > /data/key");
    let allowed = ckpt.path("secure");
    std::fs::create_dir_all(&allowed).unwrap();
    let settings = serde_json::json!({
        "classes": {"pii": {"targets": [format!("{}/", allowed.display())], "volumes": false}},
        "unlabelled": "deny"
    })
    .to_string();
    let gate = policy("compliance");
    // A target the class does not allow: denied, the container keeps running, nothing written.
    let elsewhere = ckpt.path("elsewhere.tar.zst");
    let denied = ckpt.fails(&[
        "checkpoint",
        "--gate",
        &gate,
        "--gate-config",
        &settings,
        "-e",
        elsewhere.to_str().unwrap(),
        "pii",
    ]);
    assert!(denied.contains("may not be exported to"), "{denied}");
    assert!(denied.contains("restored and keeps running"), "{denied}");
    assert_eq!(ckpt.status("pii"), "running");
    assert!(!elsewhere.exists());
    // An allowed target: the export goes, narrowed to leave the volume behind.
    let archive = allowed.join("pii.tar.zst");
    ckpt.ok(&["checkpoint", "-R", "--gate", &gate, "--gate-config", &settings, "-e", archive.to_str().unwrap(), "pii"]);
    let names = members(&archive);
    assert!(names.iter().any(|m| m == "checkpoint/inventory.img"));
    assert!(!names.iter().any(|m| m.starts_with("volumes/")), "the gate dropped the volume: {names:?}");
    let log = std::fs::read_to_string(ckpt.root.join("decisions.jsonl")).unwrap();
    assert!(log.contains("forbids exporting volumes"));
    // The judged export is the container's history in the facts of its next decision.
    let facts: serde_json::Value = serde_json::from_str(&ckpt.ok(&["policy", "facts", "pii"])).unwrap();
    let history = facts["history"].as_array().unwrap();
    assert!(history.iter().any(|h| h["exported-to"] == archive.to_str().unwrap()), "{history:?}");
    // An unlabelled container is denied, as the settings say.
    ckpt.counter("plain", &[]);
    let unlabelled = ckpt.fails(&[
        "checkpoint",
        "-R",
        "--gate",
        &gate,
        "--gate-config",
        &settings,
        "-e",
        archive.to_str().unwrap(),
        "plain",
    ]);
    assert!(unlabelled.contains("has no \"data-class\" label"), "{unlabelled}");
}

#[test]
fn python_planner_and_javascript_gate_decide_real_checkpoints() {
    let Some(ckpt) = Ckpt::available() else { return };
    ckpt.counter("skip", &["--label", "checkpoint.skip=true"]);
    ckpt.counter("gz", &["--label", "checkpoint.compress=gzip", "-v", "big:/data"]);
    let python = policy("python_labels");
    let refused = ckpt.fails(&["checkpoint", "--policy", &python, "skip"]);
    assert!(refused.contains("checkpoint.skip=true"), "{refused}");
    assert_eq!(ckpt.status("skip"), "running", "a deny leaves the container running");
    let archive = ckpt.path("gz.tar");
    ckpt.ok(&["checkpoint", "-R", "--policy", &python, "-e", archive.to_str().unwrap(), "gz"]);
    assert_eq!(&std::fs::read(&archive).unwrap()[..2], &[0x1f, 0x8b], "the label chose gzip");

    ckpt.exec("gz", "dd if=/dev/zero of=/data/blob bs=1M count=4 2>/dev/null");
    let js = policy("js_hours");
    let settings = r#"{"hours": [0, 24], "max_size_bytes": 2097152}"#;
    let narrowed = ckpt.path("narrowed.tar");
    ckpt.ok(&[
        "checkpoint",
        "-R",
        "-c",
        "none",
        "--gate",
        &js,
        "--gate-config",
        settings,
        "-e",
        narrowed.to_str().unwrap(),
        "gz",
    ]);
    assert!(!members(&narrowed).iter().any(|m| m.starts_with("volumes/")), "the JS gate dropped the volume");
    let closed = r#"{"hours": [0, 1], "max_size_bytes": 1}"#;
    let too_big = ckpt.fails(&[
        "checkpoint",
        "-R",
        "-c",
        "none",
        "--ignore-volumes",
        "--gate",
        &js,
        "--gate-config",
        closed,
        "-e",
        narrowed.to_str().unwrap(),
        "gz",
    ]);
    assert!(too_big.contains("js-hours"), "{too_big}");
    assert_eq!(ckpt.status("gz"), "running");
}

#[test]
fn misbehaving_policies_are_denied_and_the_next_checkpoint_works() {
    let Some(ckpt) = Ckpt::available() else { return };
    ckpt.counter("c", &[]);
    let hostile = policy("hostile");
    for (mode, expected) in [
        ("loop", "ran out of fuel"),
        ("alloc", "exceeded its memory limit"),
        ("recurse", "trapped"),
        ("read-file", "reading a host file"),
        ("connect", "opening a socket"),
        ("oversized", "too much data"),
        ("panic", "panics on purpose"),
    ] {
        let settings = format!("{{\"mode\": \"{mode}\"}}");
        let denied = ckpt.fails(&["checkpoint", "--policy", &hostile, "--policy-config", &settings, "c"]);
        assert!(denied.contains(expected) && denied.contains("hostile"), "{mode}: {denied}");
        assert_eq!(ckpt.status("c"), "running", "{mode}: the container keeps running");
        let gate_denied = ckpt.fails(&[
            "checkpoint",
            "-R",
            "--gate",
            &hostile,
            "--gate-config",
            &settings,
            "-e",
            ckpt.path("g.tar").to_str().unwrap(),
            "c",
        ]);
        assert!(gate_denied.contains("hostile"), "{mode} as a gate: {gate_denied}");
        assert!(!ckpt.path("g.tar").exists());
    }
    // A flood of log lines is cut, not fatal.
    ckpt.ok(&["checkpoint", "-R", "--policy", &hostile, "--policy-config", r#"{"mode": "log-flood"}"#, "c"]);
    let log = std::fs::read_to_string(ckpt.root.join("decisions.jsonl")).unwrap();
    let flood: serde_json::Value = serde_json::from_str(log.lines().last().unwrap()).unwrap();
    assert!(flood["logs"].as_array().unwrap().len() <= 256 && flood["dropped_logs"].as_u64().unwrap() > 0);
    // Bad settings are refused at load, before anything happens.
    let refused = ckpt.fails(&["checkpoint", "--policy", &hostile, "--policy-config", r#"{"mode": "bogus"}"#, "c"]);
    assert!(refused.contains("refused its settings"), "{refused}");
    let syntax = ckpt.fails(&["checkpoint", "--policy", &hostile, "--policy-config", "{not json", "c"]);
    assert!(syntax.contains("not valid JSON"), "{syntax}");
    // And after all that, an ordinary checkpoint works.
    ckpt.ok(&["checkpoint", "c"]);
    ckpt.ok(&["restore", "c"]);
    assert_eq!(ckpt.status("c"), "running");
}

#[test]
fn imports_beyond_wasi_and_non_components_are_refused() {
    let Some(ckpt) = Ckpt::available() else { return };
    ckpt.counter("c", &[]);
    let not_wasm = ckpt.path("x.wasm");
    std::fs::write(&not_wasm, b"\x7fELF not a component").unwrap();
    let refused = ckpt.fails(&["checkpoint", "--policy", not_wasm.to_str().unwrap(), "c"]);
    assert!(refused.contains("not a WebAssembly component"), "{refused}");
    let missing = ckpt.fails(&["checkpoint", "--policy", "/nonexistent.wasm", "c"]);
    assert!(missing.contains("/nonexistent.wasm"), "{missing}");
    let inspected = ckpt.run(&["policy", "inspect", not_wasm.to_str().unwrap()]);
    assert_eq!(inspected.code, 1);
    assert!(inspected.stdout.contains("\"runs_here\": false"));
}

#[test]
fn policy_tools_evaluate_and_test_fixtures() {
    let Some(ckpt) = Ckpt::available() else { return };
    ckpt.counter("web", &["--label", "checkpoint.compress=none"]);
    let facts: serde_json::Value = serde_json::from_str(&ckpt.ok(&["policy", "facts", "web"])).unwrap();
    assert_eq!(facts["container"]["name"], "web");
    assert!(facts["container"]["memory-bytes"].as_u64().unwrap() > 0, "the WIT's names: {facts}");
    assert_eq!(facts["container"]["process-count"], 2);
    assert!(facts["host"]["criu-version"].as_u64().unwrap() >= 40200);
    let facts_file = ckpt.path("facts.json");
    std::fs::write(&facts_file, facts.to_string()).unwrap();
    let eval: serde_json::Value = serde_json::from_str(&ckpt.ok(&[
        "policy",
        "eval",
        &policy("python_labels"),
        "--facts",
        facts_file.to_str().unwrap(),
    ]))
    .unwrap();
    assert_eq!(eval["outcome"], "plan");
    assert!(eval["fuel_used"].as_u64().unwrap() > 0);
    assert!(eval["logs"][0]["message"].as_str().unwrap().contains("planned web"));
    for (component, cases) in [
        ("python_labels", "python-labels.cases.json"),
        ("js_hours", "js-hours.cases.json"),
        ("compliance", "compliance.cases.json"),
        ("migration", "migration.cases.json"),
        ("kubelet_retainer", "kubelet-retainer.cases.json"),
    ] {
        let out = ckpt.ok(&["policy", "test", &policy(component), &fixture(cases)]);
        assert!(out.trim_end().ends_with(" 0 failed"), "{component}: {out}");
    }
    // A failing case fails the command.
    let wrong = ckpt.path("wrong.cases.json");
    std::fs::write(
        &wrong,
        serde_json::json!({"cases": [{"name": "wrong", "facts": facts, "expect": {"outcome": "deny"}}]}).to_string(),
    )
    .unwrap();
    let r = ckpt.run(&["policy", "test", &policy("python_labels"), wrong.to_str().unwrap()]);
    assert_eq!(r.code, 1);
    assert!(r.stdout.contains("FAIL  wrong"), "{}", r.stdout);

    // A key that names nothing is an error that names it, never silently dropped: in a patch,
    std::fs::write(
        &wrong,
        serde_json::json!({"cases": [{"name": "snake", "facts": facts, "patch": {"container": {"memory_bytes": 1}},
            "expect": {"outcome": "plan"}}]})
        .to_string(),
    )
    .unwrap();
    let r = ckpt.run(&["policy", "test", &policy("python_labels"), wrong.to_str().unwrap()]);
    assert_eq!(r.code, 1);
    assert!(
        r.stdout.contains(r#"patch key "container.memory_bytes" names no field"#)
            && r.stdout.contains(r#"did you mean "memory-bytes"?"#),
        "{}",
        r.stdout
    );
    // in a cases file,
    std::fs::write(&wrong, serde_json::json!({"cases": [{"name": "x", "facts": facts, "expectt": {}}]}).to_string())
        .unwrap();
    let err = ckpt.fails(&["policy", "test", &policy("python_labels"), wrong.to_str().unwrap()]);
    assert!(err.contains("unknown field `expectt`"), "{err}");
    // and in a facts fixture.
    let mut misspelt = facts.clone();
    misspelt["container"]["labelz"] = serde_json::json!({});
    std::fs::write(&facts_file, misspelt.to_string()).unwrap();
    let err = ckpt.fails(&["policy", "eval", &policy("python_labels"), "--facts", facts_file.to_str().unwrap()]);
    assert!(err.contains(r#""container.labelz""#) && err.contains("labels"), "{err}");
}

#[test]
fn policies_cannot_block_the_host() {
    let Some(ckpt) = Ckpt::available() else { return };
    let facts = fixture("facts.json");
    let export_facts = fixture("export-facts.json");
    let eval = |component: &str, config: &str, decision: &str| -> serde_json::Value {
        let facts = if decision == "gate" { &export_facts } else { &facts };
        let started = std::time::Instant::now();
        let out = ckpt.ok(&[
            "policy",
            "eval",
            &policy(component),
            "--facts",
            facts,
            "--policy-config",
            config,
            "--decision",
            decision,
        ]);
        // The deadline is 5 s; compiling a Python or JavaScript component the first time adds a few.
        assert!(
            started.elapsed() < std::time::Duration::from_secs(60),
            "{component} {config} took {:?}",
            started.elapsed()
        );
        serde_json::from_str(&out).unwrap()
    };
    let reasons = |value: &serde_json::Value| value["decision"].to_string();
    let stopped = |value: &serde_json::Value| {
        let error = value["error"].as_str().unwrap_or_default().to_string();
        value["outcome"] == "deny" && (error.contains("ran out of fuel") || error.contains("deadline"))
    };
    // An hour's sleep passes at once, in Rust and in Python.
    let rust = eval("hostile", r#"{"mode": "sleep"}"#, "plan");
    assert!(reasons(&rust).contains("woke up"), "{rust}");
    let python = eval("python_sleeper", "{}", "plan");
    assert!(reasons(&python).contains("woke up after time.sleep(3600)"), "{python}");
    // Reading stdin finds it closed instead of waiting.
    let stdin = eval("hostile", r#"{"mode": "read-stdin"}"#, "plan");
    assert!(reasons(&stdin).contains("Ok(0)"), "{stdin}");
    // Sleeping forever, or waiting for a frozen clock, is a loop that is stopped and denied.
    for (component, config, decision) in [
        ("hostile", r#"{"mode": "sleep-forever"}"#, "plan"),
        ("hostile", r#"{"mode": "sleep-forever"}"#, "gate"),
        ("python_sleeper", "{}", "gate"),
        ("js_sleeper", "{}", "plan"),
        ("js_sleeper", "{}", "gate"),
    ] {
        let value = eval(component, config, decision);
        assert!(stopped(&value), "{component} {decision}: {value}");
    }
    // And in a real checkpoint, a sleeping gate cannot keep the container stopped.
    ckpt.counter("c", &[]);
    let archive = ckpt.path("slept.tar");
    let denied = ckpt.fails(&["checkpoint", "--gate", &policy("python_sleeper"), "-e", archive.to_str().unwrap(), "c"]);
    assert!(denied.contains("python-sleeper"), "{denied}");
    assert!(!archive.exists());
    assert_eq!(ckpt.status("c"), "running");
}

#[test]
fn policies_export_only_where_the_admin_allows() {
    let Some(ckpt) = Ckpt::available() else { return };
    ckpt.counter("c", &[]);
    let migration = policy("migration");
    let elsewhere = tempfile::Builder::new().prefix("ckpt-not-allowed-").tempdir_in("/var/tmp").unwrap();
    let store_target = ckpt.root.join("{name}.tar.zst");
    for (target, expected) in [
        (elsewhere.path().join("{name}.tar.zst"), "outside every allowed directory"),
        (store_target.clone(), "inside ckpt's own store"),
        (std::path::PathBuf::from("relative/{name}.tar"), "not a clean absolute path"),
    ] {
        let settings = serde_json::json!({"target": target.to_str().unwrap()}).to_string();
        let denied = ckpt.fails(&["checkpoint", "--policy", &migration, "--policy-config", &settings, "c"]);
        assert!(denied.contains(expected) && denied.contains("[exports] directories"), "{target:?}: {denied}");
        assert!(denied.contains("ckpt.toml"), "the message names the config file: {denied}");
        assert_eq!(ckpt.status("c"), "running", "{target:?}: nothing changed");
    }
    assert!(crate::support::files_below(elsewhere.path()).is_empty());
    assert!(!ckpt.root.join("c.tar.zst").exists());
    // What the user typed is allowed anywhere, but never replaces a file that is not an archive.
    let notes = elsewhere.path().join("notes.txt");
    std::fs::write(&notes, "keep me").unwrap();
    let refused = ckpt.fails(&["checkpoint", "-R", "-e", notes.to_str().unwrap(), "c"]);
    assert!(refused.contains("is not a checkpoint archive"), "{refused}");
    assert_eq!(std::fs::read_to_string(&notes).unwrap(), "keep me");
    let archive = elsewhere.path().join("c.tar.zst");
    ckpt.ok(&["checkpoint", "-R", "-e", archive.to_str().unwrap(), "c"]);
    ckpt.ok(&["checkpoint", "-R", "-e", archive.to_str().unwrap(), "c"]);
    let refused = ckpt.fails(&["checkpoint", "-R", "--create-image", "busybox", "c"]);
    assert!(refused.contains("is not a checkpoint image"), "{refused}");
    // A link planted at the target is not an archive either; its target is untouched.
    let planted = elsewhere.path().join("planted.tar");
    std::os::unix::fs::symlink(&notes, &planted).unwrap();
    let refused = ckpt.fails(&["checkpoint", "-R", "-e", planted.to_str().unwrap(), "c"]);
    assert!(refused.contains("is not a checkpoint archive"), "{refused}");
    assert_eq!(std::fs::read_to_string(&notes).unwrap(), "keep me");
}

#[test]
fn a_rm_container_keeps_its_data_until_its_checkpoint_is_published() {
    let Some(ckpt) = Ckpt::available() else { return };
    ckpt.counter("r", &["--rm"]);
    std::thread::sleep(std::time::Duration::from_millis(500));
    let archive = ckpt.path("r.tar");
    let settings = r#"{"mode": "panic"}"#;
    let denied = ckpt.fails(&[
        "checkpoint",
        "--gate",
        &policy("hostile"),
        "--gate-config",
        settings,
        "-e",
        archive.to_str().unwrap(),
        "r",
    ]);
    assert!(denied.contains("restored and keeps running"), "{denied}");
    assert!(!archive.exists());
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_eq!(ckpt.status("r"), "running", "the --rm container was not deleted");
    // Once an export is published, the container goes, as podman's does.
    ckpt.ok(&["checkpoint", "-e", archive.to_str().unwrap(), "r"]);
    assert!(archive.is_file());
    assert!(crate::support::eventually(std::time::Duration::from_secs(10), || ckpt.run(&["inspect", "r"]).code != 0));
}

#[test]
fn text_from_policies_and_labels_reaches_the_terminal_escaped() {
    let Some(ckpt) = Ckpt::available() else { return };
    let hostile_label = "checkpoint.compress=\u{1b}]0;pwned\u{7}\u{1b}[2J";
    ckpt.counter("e", &["--label", hostile_label]);
    let archive = ckpt.path("e.tar");
    let r = ckpt.run(&["checkpoint", "--policy", &policy("python_labels"), "-R", "-e", archive.to_str().unwrap(), "e"]);
    assert_eq!(r.code, 125, "{}", r.stderr);
    assert!(
        !r.stderr.contains('\u{1b}') && !r.stderr.contains('\u{7}'),
        "raw escapes reached the terminal: {:?}",
        r.stderr
    );
    assert!(r.stderr.contains("\\x1b[2J") && r.stderr.contains("\\x07"), "{}", r.stderr);
    // JSON stays JSON: the label comes back exactly as it was set.
    assert_eq!(
        ckpt.inspect("e")["Config"]["Labels"]["checkpoint.compress"],
        &hostile_label["checkpoint.compress=".len()..]
    );
}

/// ckpt keeps loading `ckpt:policy/policy@0.1.0` components unchanged: the five examples as
/// they were written for 0.1.0 (`tests/policies/v0.1.0`) pass their cases and decide real
/// checkpoints, while the same examples rewritten for 0.2.0 serve as one world each.
#[test]
fn the_five_0_1_0_examples_still_load_and_decide() {
    let Some(ckpt) = Ckpt::available() else { return };
    for (component, cases) in [
        // The first release's settings names: its components and its schedules keep them.
        ("v010_python_labels", "python-labels.v0.1.0.cases.json"),
        ("v010_js_hours", "js-hours.cases.json"),
        ("v010_compliance", "compliance.cases.json"),
        ("v010_migration", "migration.v0.1.0.cases.json"),
        // Today's components read them too.
        ("python_labels", "python-labels.v0.1.0.cases.json"),
        ("migration", "migration.v0.1.0.cases.json"),
    ] {
        let out = ckpt.ok(&["policy", "test", &policy(component), &fixture(cases)]);
        assert!(out.trim_end().ends_with(" 0 failed"), "{component}: {out}");
    }
    for (component, world) in [
        ("v010_default", "ckpt:policy/policy@0.1.0"),
        ("default", "ckpt:policy/migration-planner@0.3.0"),
        ("python_labels", "ckpt:policy/planner@0.3.0"),
        ("js_hours", "ckpt:policy/gate@0.3.0"),
        ("v020_python_labels", "ckpt:policy/planner@0.2.0"),
    ] {
        let inspected: serde_json::Value =
            serde_json::from_str(&ckpt.ok(&["policy", "inspect", &policy(component)])).unwrap();
        assert_eq!(inspected["world"], world, "{component}");
    }
    // A gate is benchmarked on an export's facts, as it decides.
    let bench = ckpt.ok(&[
        "policy",
        "bench",
        &policy("js_hours"),
        "--facts",
        &fixture("export-facts.json"),
        "--iterations",
        "3",
    ]);
    let bench: serde_json::Value = serde_json::from_str(&bench).unwrap();
    assert_eq!((bench["decision"].as_str(), bench["decisions"].as_u64()), (Some("gate"), Some(3)), "{bench}");
    // A 0.1.0 planner and a 0.1.0 gate decide a real checkpoint together.
    ckpt.counter("old", &["--label", "data-class=public"]);
    let archive = ckpt.path("old.tar.zst");
    let gate_settings = r#"{"classes": {"public": {"targets": ["/"]}}}"#;
    ckpt.ok(&[
        "checkpoint",
        "-R",
        "--policy",
        &policy("v010_default"),
        "--gate",
        &policy("v010_compliance"),
        "--gate-config",
        gate_settings,
        "-e",
        archive.to_str().unwrap(),
        "old",
    ]);
    assert!(archive.is_file());
    // A 0.2.0 planner decides a real checkpoint beside a 0.3.0 gate.
    let archive = ckpt.path("old-v020.tar.zst");
    ckpt.ok(&[
        "checkpoint",
        "-R",
        "--policy",
        &policy("v020_python_labels"),
        "--gate",
        &policy("compliance"),
        "--gate-config",
        gate_settings,
        "-e",
        archive.to_str().unwrap(),
        "old",
    ]);
    assert!(archive.is_file());
    // A gate is not a planner, and the error names the worlds.
    let err = ckpt.fails(&["checkpoint", "--policy", &policy("js_hours"), "old"]);
    assert!(
        err.contains("it is a ckpt:policy/gate@0.3.0 component, but --policy takes a ckpt:policy/planner@0.3.0 or ckpt:policy/migration-planner@0.3.0 or ckpt:policy/planner@0.2.0 or ckpt:policy/migration-planner@0.2.0 or ckpt:policy/policy@0.1.0 component"),
        "{err}"
    );
}
