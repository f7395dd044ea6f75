//! The architecture as a test: dependencies point one way, from the command line down to the
//! store. A `use crate::…` that points up a layer, or a cycle inside one, fails here with the
//! file and line, before it fails a reviewer.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Top to bottom. A module may use its own layer (without cycles) and the layers below it.
const LAYERS: &[(&str, &[&str])] = &[
    ("the command line", &["cli"]),
    // The aggregate error names the error of every system below it, so it lives with the
    // operations that return it.
    ("the operations", &["ops", "error"]),
    (
        "the external systems and formats",
        &[
            "policy",
            "archive",
            "image",
            "registry",
            "podman",
            "kubelet",
            "kubernetes",
            "ssh",
            "runtime",
            "criu",
            "network",
            "supervisor",
            "seal",
            "signature",
        ],
    ),
    (
        "the foundations",
        &[
            "store",
            "rootfs",
            "netns",
            "spec",
            "util",
            "base_error",
            "metadata",
            "safefs",
            "config",
            "interrupt",
            "hostinfo",
            "progress",
        ],
    ),
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|(_, modules)| modules.contains(&module))
}

/// `(module, used module, file:line)` for every `crate::x` in the non-comment source of `src`.
fn edges(src: &Path) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path.strip_prefix(src).unwrap();
            let module = rel.iter().next().unwrap().to_string_lossy().trim_end_matches(".rs").to_string();
            if module == "lib" || module == "main" || module == "layering" {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            for (n, line) in text.lines().enumerate() {
                if line.trim_start().starts_with("//") {
                    continue;
                }
                for (i, _) in line.match_indices("crate::") {
                    let rest = &line[i + 7..];
                    // `crate::{a, b::c}` names several modules at once.
                    let names: Vec<&str> = match rest.strip_prefix('{') {
                        Some(group) => group.split('}').next().unwrap_or("").split(',').collect(),
                        None => vec![rest],
                    };
                    for name in names {
                        let name: String =
                            name.trim().chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                        let used = match name.as_str() {
                            "Error" | "Result" => "error".to_string(),
                            _ => name,
                        };
                        if !used.is_empty() && used != module {
                            out.push((module.clone(), used, format!("{}:{}", rel.display(), n + 1)));
                        }
                    }
                }
            }
        }
    }
    out
}

/// Below the operations each module returns an error of its own (the foundations share
/// `base_error`): the aggregate names every system, and a module that returned it would
/// depend on them all.
fn returns_the_aggregate(from: &str, to: &str) -> bool {
    to == "error" && layer_of(from) > layer_of("error")
}

/// What is wrong with `edges`: an edge up a layer, a foundation that returns the aggregate
/// error, or a cycle inside a layer.
fn problems(edges: Vec<(String, String, String)>) -> Vec<String> {
    let mut problems = Vec::new();
    let mut same_layer: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (from, to, place) in edges {
        let (Some(from_layer), Some(to_layer)) = (layer_of(&from), layer_of(&to)) else {
            problems.push(format!("{place}: module {from:?} or {to:?} is in no layer; add it to LAYERS"));
            continue;
        };
        if returns_the_aggregate(&from, &to) {
            problems.push(format!(
                "{place}: {from} ({}) uses the aggregate error; return an error of its own",
                LAYERS[from_layer].0
            ));
            continue;
        }
        if to_layer < from_layer {
            problems.push(format!(
                "{place}: {from} ({}) uses {to} ({}), a layer above it",
                LAYERS[from_layer].0, LAYERS[to_layer].0
            ));
        } else if to_layer == from_layer {
            same_layer.entry(from).or_default().insert(to);
        }
    }
    // Inside a layer: no cycle.
    for start in same_layer.keys() {
        let mut seen = BTreeSet::new();
        let mut stack: Vec<&String> = same_layer[start].iter().collect();
        while let Some(next) = stack.pop() {
            if next == start {
                problems.push(format!("{start} depends on itself through modules of its own layer"));
                break;
            }
            if seen.insert(next.clone()) {
                stack.extend(same_layer.get(next).into_iter().flatten());
            }
        }
    }
    problems
}

#[test]
fn dependencies_point_down_the_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let problems = problems(edges(&src));
    assert!(problems.is_empty(), "the layers are broken:\n{}", problems.join("\n"));
}

#[test]
fn an_upward_edge_is_caught() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("store")).unwrap();
    std::fs::write(
        dir.path().join("store/mod.rs"),
        "use crate::ops::Context;\n// crate::cli in a comment is fine\nuse crate::{util, policy::Policies};\n",
    )
    .unwrap();
    let found = edges(dir.path());
    let edge = |to: &str, line: usize| ("store".to_string(), to.to_string(), format!("store/mod.rs:{line}"));
    assert_eq!(found, vec![edge("ops", 1), edge("util", 3), edge("policy", 3)]);
    assert!(layer_of("ops").unwrap() < layer_of("store").unwrap());

    std::fs::write(dir.path().join("store/mod.rs"), "use crate::error::{Error, Result};\n").unwrap();
    let found = problems(edges(dir.path()));
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].contains("store/mod.rs:1: store (the foundations) uses the aggregate error"), "{found:?}");

    std::fs::create_dir(dir.path().join("criu")).unwrap();
    std::fs::write(dir.path().join("criu/hold.rs"), "use crate::{base_error::BaseError, error::Error};\n").unwrap();
    let found = problems(edges(dir.path()));
    assert!(
        found.iter().any(|p| p.contains("criu/hold.rs:1: criu (the external systems and formats) uses the aggregate")),
        "{found:?}"
    );
}

#[test]
fn the_readme_names_every_module() {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(manifest.join("../README.md")).unwrap();
    let start = readme.find("## Architecture").expect("README has an architecture section");
    let tree = &readme[start..];
    let mut missing = Vec::new();
    for entry in std::fs::read_dir(manifest.join("src")).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        // insta's snapshots/ directories hold test data, not modules.
        if name == "layering.rs" || name == "snapshots" {
            continue;
        }
        let shown = if entry.path().is_dir() { format!("  {name}/") } else { format!("  {name}") };
        if !tree.contains(&format!("\n{shown} ")) {
            missing.push(shown.trim().to_string());
        }
    }
    for (_, modules) in LAYERS {
        for module in *modules {
            let placed = tree.contains(&format!("\n  {module}/ ")) || tree.contains(&format!("\n  {module}.rs "));
            if !placed {
                missing.push(format!("{module} (in LAYERS)"));
            }
        }
    }
    assert!(missing.is_empty(), "README's architecture tree does not name: {missing:?}");
}
