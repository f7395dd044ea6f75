//! Hostile checkpoint archives: each is refused, leaves no container record and no staging files,
//! and touches nothing outside ckpt's roots.

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::support::{Ckpt, files_below};

/// A raw tar member: the name is written as given, without the checks a tar builder makes.
struct Member {
    name: String,
    kind: tar::EntryType,
    data: Vec<u8>,
    link: Option<String>,
    size_override: Option<u64>,
}

fn file(name: &str, data: &[u8]) -> Member {
    Member { name: name.into(), kind: tar::EntryType::Regular, data: data.to_vec(), link: None, size_override: None }
}

fn write_raw(path: &Path, members: &[Member]) {
    let mut builder = tar::Builder::new(std::fs::File::create(path).unwrap());
    for m in members {
        let mut header = tar::Header::new_gnu();
        let bytes = header.as_mut_bytes();
        bytes[..m.name.len()].copy_from_slice(m.name.as_bytes());
        header.set_entry_type(m.kind);
        header.set_mode(0o644);
        header.set_size(m.size_override.unwrap_or(m.data.len() as u64));
        if let Some(link) = &m.link {
            header.as_mut_bytes()[157..157 + link.len()].copy_from_slice(link.as_bytes());
        }
        if m.kind == tar::EntryType::Char {
            header.set_device_major(1).unwrap();
            header.set_device_minor(3).unwrap();
        }
        header.set_cksum();
        builder.append(&header, &m.data[..]).unwrap();
    }
    builder.into_inner().unwrap();
}

/// Copies a real archive, letting `edit` drop or replace members, and appends `extra`.
fn rewrite(src: &Path, dst: &Path, mut edit: impl FnMut(&str, Vec<u8>) -> Option<Vec<u8>>, extra: Vec<Member>) {
    let mut archive = tar::Archive::new(std::fs::File::open(src).unwrap());
    let mut builder = tar::Builder::new(std::fs::File::create(dst).unwrap());
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let name = entry.path().unwrap().to_string_lossy().into_owned();
        let mut header = entry.header().clone();
        let mut data = Vec::new();
        entry.read_to_end(&mut data).unwrap();
        if let Some(data) = edit(&name, data) {
            header.set_size(data.len() as u64);
            header.set_cksum();
            builder.append(&header, &data[..]).unwrap();
        }
    }
    for m in extra {
        let mut header = tar::Header::new_gnu();
        header.set_path(&m.name).unwrap();
        header.set_size(m.data.len() as u64);
        header.set_mode(0o600);
        header.set_cksum();
        builder.append(&header, &m.data[..]).unwrap();
    }
    builder.into_inner().unwrap();
}

fn assert_refused(ckpt: &Ckpt, archive: &Path, expected: &str) {
    let stderr = ckpt.fails(&["restore", "-i", archive.to_str().unwrap(), "-n", "victim"]);
    assert!(stderr.contains(expected), "{}: expected {expected:?} in {stderr}", archive.display());
    assert!(ckpt.container_ids().iter().all(|id| !ckpt.inspect(id)["Name"].as_str().unwrap().starts_with("victim")));
    ckpt.wait_for_discards();
    assert!(
        files_below(&ckpt.root.join("tmp")).is_empty(),
        "staging is cleaned up: {:?}",
        files_below(&ckpt.root.join("tmp"))
    );
}

/// A real export of a small container, uncompressed so that it can be edited.
fn real_archive(ckpt: &Ckpt) -> PathBuf {
    ckpt.ok(&["run", "-d", "--name", "src", "busybox", "sh", "-c", "echo x > /x; exec sleep 1000"]);
    std::thread::sleep(std::time::Duration::from_millis(300));
    let archive = ckpt.path("real.tar");
    ckpt.ok(&["checkpoint", "-R", "-c", "none", "-e", archive.to_str().unwrap(), "src"]);
    archive
}

#[test]
fn members_that_escape_are_refused() {
    let Some(ckpt) = Ckpt::available() else { return };
    let outside = ckpt.path("outside");
    std::fs::create_dir_all(&outside).unwrap();
    let cases: Vec<(&str, Vec<Member>, &str)> = vec![
        ("dotdot", vec![file("../../escaped", b"x")], "contains '..'"),
        ("absolute", vec![file("/tmp/ckpt-absolute-escape", b"x")], "absolute"),
        (
            "symlink-parent",
            vec![
                Member {
                    name: "link".into(),
                    kind: tar::EntryType::Symlink,
                    data: vec![],
                    link: Some(outside.to_string_lossy().into_owned()),
                    size_override: None,
                },
                file("link/planted", b"x"),
            ],
            "symlink",
        ),
        (
            "hardlink-out",
            vec![Member {
                name: "passwd".into(),
                kind: tar::EntryType::Link,
                data: vec![],
                link: Some("/etc/passwd".into()),
                size_override: None,
            }],
            "hard link target",
        ),
        (
            "hardlink-dotdot",
            vec![Member {
                name: "h".into(),
                kind: tar::EntryType::Link,
                data: vec![],
                link: Some("../../etc/passwd".into()),
                size_override: None,
            }],
            "hard link target",
        ),
        (
            "device",
            vec![Member {
                name: "null".into(),
                kind: tar::EntryType::Char,
                data: vec![],
                link: None,
                size_override: None,
            }],
            "device",
        ),
        (
            "huge",
            vec![Member {
                name: "big".into(),
                kind: tar::EntryType::Regular,
                data: vec![],
                link: None,
                size_override: Some(1 << 40),
            }],
            "too large",
        ),
    ];
    for (name, members, expected) in cases {
        let archive = ckpt.path(&format!("{name}.tar"));
        write_raw(&archive, &members);
        assert_refused(&ckpt, &archive, expected);
    }
    assert!(files_below(&outside).is_empty(), "nothing was planted outside");
    assert!(!Path::new("/tmp/ckpt-absolute-escape").exists());
}

#[test]
fn tampered_and_dishonest_archives_are_refused() {
    let Some(ckpt) = Ckpt::available() else { return };
    let real = real_archive(&ckpt);

    // A changed member no longer matches the manifest.
    let tampered = ckpt.path("tampered.tar");
    rewrite(
        &real,
        &tampered,
        |name, mut data| {
            if name == "checkpoint/inventory.img" {
                data[0] ^= 0xff;
            }
            Some(data)
        },
        vec![],
    );
    assert_refused(&ckpt, &tampered, "BLAKE3 digest does not match");

    // An extra member that the manifest does not list.
    let extra = ckpt.path("extra.tar");
    rewrite(&real, &extra, |_, data| Some(data), vec![file("checkpoint/smuggled.img", b"x")]);
    assert_refused(&ckpt, &extra, "not in its manifest");

    // The manifest has no key: whoever edits an archive can write a matching one. config.dump
    // is checked on its own terms.
    let unmanifested = |edit: &dyn Fn(&mut serde_json::Value)| {
        let path = ckpt.path(&format!("edited-{}.tar", rand_suffix()));
        rewrite(
            &real,
            &path,
            |name, data| match name {
                "ckpt-manifest.json" => None,
                "config.dump" => {
                    let mut config: serde_json::Value = serde_json::from_slice(&data).unwrap();
                    edit(&mut config);
                    Some(serde_json::to_vec(&config).unwrap())
                }
                _ => Some(data),
            },
            vec![],
        );
        remanifest(&path);
        path
    };
    let bind = unmanifested(&|c| {
        c["ckpt"]["mounts"] =
            serde_json::json!([{"kind": "bind", "source": "/etc", "destination": "/host-etc", "read_only": false}]);
    });
    assert_refused(&ckpt, &bind, "does not take host mounts from an archive");
    let bad_volume = unmanifested(&|c| {
        c["ckpt"]["mounts"] =
            serde_json::json!([{"kind": "volume", "source": "../../etc", "destination": "/v", "read_only": false}]);
    });
    assert_refused(&ckpt, &bad_volume, "volume name");

    // deleted.files may only remove paths inside the container's rootfs.
    let victim = ckpt.path("victim-file");
    std::fs::write(&victim, "keep me").unwrap();
    let deleted = ckpt.path("deleted.tar");
    let relative = format!("/../../../../../../..{}", victim.display());
    rewrite(
        &real,
        &deleted,
        |name, data| (name != "ckpt-manifest.json").then_some(data),
        vec![file("deleted.files", serde_json::to_string(&[relative]).unwrap().as_bytes())],
    );
    remanifest(&deleted);
    assert_refused(&ckpt, &deleted, "contains '..'");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep me");
}

/// A page image is copied out of an uncompressed archive while the restore starts (see
/// `archive::deferred`). One changed byte in it still fails the import, with the manifest's
/// words, and CRIU never reads a page of it.
#[test]
fn a_changed_page_image_fails_an_import_that_copies_it_while_the_restore_starts() {
    let Some(ckpt) = Ckpt::available() else { return };
    crate::support::import_memcheck_image(&ckpt);
    ckpt.ok(&["run", "-d", "--name", "mem", "memcheck", "/bin/memcheck", "16"]);
    assert!(crate::support::eventually(std::time::Duration::from_secs(20), || ckpt.logs("mem").contains("intact")));
    let real = ckpt.path("mem.tar");
    ckpt.ok(&["checkpoint", "-c", "none", "-e", real.to_str().unwrap(), "mem"]);
    let changed = ckpt.path("changed-pages.tar");
    rewrite(
        &real,
        &changed,
        |name, mut data| {
            if name == "checkpoint/pages-1.img" {
                assert!(data.len() > 8 << 20, "large enough to be copied while the restore starts");
                let middle = data.len() / 2;
                data[middle] ^= 0xff;
            }
            Some(data)
        },
        vec![],
    );
    assert_refused(&ckpt, &changed, "checkpoint/pages-1.img\" is corrupt: its BLAKE3 digest does not match");
}

#[test]
fn archive_spec_and_annotations_are_not_trusted() {
    let Some(ckpt) = Ckpt::available() else { return };
    let real = real_archive(&ckpt);
    // A spec that asks CRIU for a config file and bind-mounts the host: ckpt rebuilds the spec.
    let evil = ckpt.path("evil-spec.tar");
    rewrite(
        &real,
        &evil,
        |name, data| match name {
            "ckpt-manifest.json" => None,
            "spec.dump" => {
                let mut spec: serde_json::Value = serde_json::from_slice(&data).unwrap();
                spec["annotations"]["org.criu.config"] = "/etc/evil.conf".into();
                spec["mounts"].as_array_mut().unwrap().push(
                    serde_json::json!({"destination": "/host", "type": "bind", "source": "/", "options": ["rbind"]}),
                );
                Some(serde_json::to_vec(&spec).unwrap())
            }
            _ => Some(data),
        },
        vec![],
    );
    remanifest(&evil);
    let id = ckpt.ok(&["restore", "-i", evil.to_str().unwrap(), "-n", "clean"]);
    let config =
        std::fs::read_to_string(ckpt.root.join("containers").join(id.trim()).join("userdata/config.json")).unwrap();
    assert!(!config.contains("org.criu.config") && !config.contains("\"/host\""), "{config}");
    assert_eq!(ckpt.exec("clean", "cat /x"), "x\n");
}

/// Replaces an archive's manifest with one that matches its members, as anyone can.
fn remanifest(path: &Path) {
    let original = path.with_extension("orig");
    std::fs::rename(path, &original).unwrap();
    let mut members = Vec::new();
    let mut archive = tar::Archive::new(std::fs::File::open(&original).unwrap());
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let name = entry.path().unwrap().to_string_lossy().into_owned();
        if entry.header().entry_type().is_file() && name != "ckpt-manifest.json" {
            let mut data = Vec::new();
            entry.read_to_end(&mut data).unwrap();
            members.push(serde_json::json!({"name": name, "size": data.len(), "blake3": blake3::hash(&data).to_hex().to_string()}));
        }
    }
    let manifest = serde_json::json!({"format": "ckpt-checkpoint/1 (blake3)", "members": members});
    rewrite(
        &original,
        path,
        |name, data| (name != "ckpt-manifest.json").then_some(data),
        vec![file("ckpt-manifest.json", &serde_json::to_vec(&manifest).unwrap())],
    );
    std::fs::remove_file(original).unwrap();
}

fn rand_suffix() -> String {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    N.fetch_add(1, Ordering::Relaxed).to_string()
}

fn member(name: &str, kind: tar::EntryType, link: Option<&str>) -> Member {
    Member { name: name.into(), kind, data: vec![], link: link.map(str::to_string), size_override: None }
}

/// Modes, owners and content of a host directory tree that no import may touch.
fn snapshot(dir: &Path) -> Vec<(PathBuf, u32, Vec<u8>)> {
    use std::os::unix::fs::MetadataExt;
    let mut out: Vec<_> = files_below(dir)
        .into_iter()
        .chain([dir.to_path_buf(), dir.join("sub")])
        .map(|p| {
            let meta = std::fs::symlink_metadata(&p).unwrap();
            let data = if meta.is_file() { std::fs::read(&p).unwrap() } else { vec![] };
            (p, meta.mode(), data)
        })
        .collect();
    out.sort();
    out
}

#[test]
fn archives_cannot_reach_host_files_through_links() {
    let Some(ckpt) = Ckpt::available() else { return };
    let victim = ckpt.path("host-dir");
    std::fs::create_dir_all(victim.join("sub")).unwrap();
    std::fs::write(victim.join("secret"), b"host secret").unwrap();
    let before = snapshot(&victim);
    let victim_str = victim.to_str().unwrap();
    let secret = victim.join("secret");
    let secret_str = secret.to_str().unwrap();
    let mut dir_member = member("d", tar::EntryType::Directory, None);
    dir_member.name = "d/".into();
    let cases: Vec<(&str, Vec<Member>, &str)> = vec![
        // The deferred chmod of `d` once followed the link that replaced it.
        ("dir-then-symlink", vec![dir_member, member("d", tar::EntryType::Symlink, Some(victim_str))], "symlink"),
        ("ctr.log-link", vec![member("ctr.log", tar::EntryType::Symlink, Some(secret_str))], "symlink"),
        ("rootfs-diff-link", vec![member("rootfs-diff.tar", tar::EntryType::Symlink, Some(secret_str))], "symlink"),
        ("checkpoint-link", vec![member("checkpoint", tar::EntryType::Symlink, Some(victim_str))], "symlink"),
        ("parent-link-out", vec![member("checkpoint/parent", tar::EntryType::Symlink, Some(victim_str))], "symlink"),
    ];
    for (case, members, expected) in cases {
        let archive = ckpt.path(&format!("{case}.tar"));
        write_raw(&archive, &members);
        assert_refused(&ckpt, &archive, expected);
        assert_eq!(before, snapshot(&victim), "{case} changed a host directory");
    }
}

#[test]
fn a_ckpt_archive_cut_short_is_refused() {
    let Some(ckpt) = Ckpt::available() else { return };
    let archive = real_archive(&ckpt);
    // Cut at a member boundary: without the manifest the archive would read as complete.
    let cut = ckpt.path("cut.tar");
    rewrite(&archive, &cut, |name, data| (name != "ckpt-manifest.json").then_some(data), vec![]);
    assert_refused(&ckpt, &cut, "ckpt-manifest.json");
}

#[test]
fn the_store_is_private_whatever_the_umask() {
    use std::os::unix::fs::PermissionsExt;
    let Some(ckpt) = Ckpt::available() else { return };
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::empty());
    ckpt.ok(&[
        "run",
        "-d",
        "--name",
        "p",
        "-v",
        "pdata:/data",
        "busybox",
        "sh",
        "-c",
        "echo hi > /data/f; exec sleep 1000",
    ]);
    std::thread::sleep(std::time::Duration::from_millis(300));
    let archive = ckpt.path("p.tar.zst");
    ckpt.ok(&["checkpoint", "-R", "-e", archive.to_str().unwrap(), "p"]);
    ckpt.ok(&["checkpoint", "--create-image", "localhost/p-ckpt", "p"]);
    nix::sys::stat::umask(old);
    let mode = |p: &Path| std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode(&ckpt.root), 0o700, "the store root");
    assert_eq!(mode(&ckpt.runroot), 0o700, "the run root");
    assert_eq!(mode(&archive), 0o600, "the exported archive");
    assert_eq!(mode(&ckpt.root.join("decisions.jsonl")), 0o600, "the decision log");
    for blob in files_below(&ckpt.root.join("images/oci/blobs")) {
        assert_eq!(mode(&blob) & 0o077, 0, "{} holds image data and must be private", blob.display());
    }
    // What the container sees as its own keeps podman's modes: `/` is 0555, a volume 0755.
    assert_eq!(ckpt.exec_after_restore("p"), "555 755\n");
    // A store made by an older, careless ckpt is fixed on first use.
    std::fs::set_permissions(&ckpt.root, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(ckpt.root.join("decisions.jsonl"), std::fs::Permissions::from_mode(0o644)).unwrap();
    ckpt.ok(&["ps", "-a"]);
    assert_eq!(mode(&ckpt.root), 0o700);
    assert_eq!(mode(&ckpt.root.join("decisions.jsonl")), 0o600);
}

/// A real archive plus a pre-dump round its dump names as its parent, with a fresh manifest.
fn with_pre_dump(real: &Path, out: &Path, pre_dump_is_dir: bool) {
    let staged = out.with_extension("staged");
    let mut archive = tar::Archive::new(std::fs::File::open(real).unwrap());
    let mut builder = tar::Builder::new(std::fs::File::create(&staged).unwrap());
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let header = entry.header().clone();
        let path = entry.path().unwrap().into_owned();
        let mut data = Vec::new();
        entry.read_to_end(&mut data).unwrap();
        builder.append_data(&mut header.clone(), path, &data[..]).unwrap();
    }
    let mut header = tar::Header::new_gnu();
    header.set_mode(0o700);
    if pre_dump_is_dir {
        header.set_entry_type(tar::EntryType::Directory);
        header.set_size(0);
        builder.append_data(&mut header.clone(), "pre-dump-1/", std::io::empty()).unwrap();
        header.set_entry_type(tar::EntryType::Regular);
        header.set_size(6);
        builder.append_data(&mut header.clone(), "pre-dump-1/marker.img", &b"marker"[..]).unwrap();
    } else {
        header.set_entry_type(tar::EntryType::Regular);
        header.set_size(6);
        builder.append_data(&mut header.clone(), "pre-dump-1", &b"marker"[..]).unwrap();
    }
    header.set_entry_type(tar::EntryType::Symlink);
    header.set_size(0);
    builder.append_link(&mut header, "checkpoint/parent", "../pre-dump-1").unwrap();
    builder.into_inner().unwrap();
    std::fs::rename(&staged, out).unwrap();
    remanifest(out);
}

#[test]
fn archives_with_pre_dump_rounds_import_with_their_chain() {
    let Some(ckpt) = Ckpt::available() else { return };
    let real = real_archive(&ckpt);
    let chained = ckpt.path("chained.tar");
    with_pre_dump(&real, &chained, true);
    let id = ckpt.ok(&["restore", "-i", chained.to_str().unwrap(), "-n", "chained", "--keep"]);
    let bundle = ckpt.root.join("containers").join(id.trim()).join("userdata");
    assert_eq!(std::fs::read(bundle.join("pre-dump-1/marker.img")).unwrap(), b"marker");
    assert_eq!(
        std::fs::read(bundle.join("checkpoint/parent/marker.img")).unwrap(),
        b"marker",
        "the parent link resolves"
    );
    assert_eq!(ckpt.exec("chained", "cat /x"), "x\n");
    // A parent that is not a directory of the archive is refused.
    let broken = ckpt.path("broken-chain.tar");
    with_pre_dump(&real, &broken, false);
    assert_refused(&ckpt, &broken, "pre-dump-1");
}

#[test]
fn truncated_and_garbled_compressed_archives_are_refused() {
    let Some(ckpt) = Ckpt::available() else { return };
    ckpt.ok(&["run", "-d", "--name", "z", "busybox", "sh", "-c", "exec sleep 1000"]);
    std::thread::sleep(std::time::Duration::from_millis(300));
    for compression in ["zstd", "gzip"] {
        let archive = ckpt.path(&format!("z.{compression}"));
        ckpt.ok(&["checkpoint", "-R", "-c", compression, "-e", archive.to_str().unwrap(), "z"]);
        let bytes = std::fs::read(&archive).unwrap();
        let cut = ckpt.path(&format!("cut.{compression}"));
        std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
        assert_refused(&ckpt, &cut, "");
        let mut garbled = bytes.clone();
        let middle = garbled.len() / 2;
        garbled[middle..middle + 64].fill(0x5a);
        let garbled_path = ckpt.path(&format!("garbled.{compression}"));
        std::fs::write(&garbled_path, &garbled).unwrap();
        assert_refused(&ckpt, &garbled_path, "");
        assert_eq!(std::fs::read(&archive).unwrap(), bytes, "the archive itself is untouched");
    }
}
