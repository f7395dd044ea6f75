//! Crafted tars against the extractor: every case asserts what it refuses and that nothing
//! outside the destination changed. None of this needs root.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use super::*;

#[derive(Clone, Debug)]
enum M {
    Dir(&'static str, u32),
    File(&'static str, u32, &'static [u8]),
    Symlink(&'static str, &'static str),
    Hardlink(&'static str, &'static str),
    Fifo(&'static str),
    /// A PAX record giving the size, and a ustar header that says 0 (TARmageddon's desync).
    PaxSized(&'static str, &'static [u8]),
}

/// Raw ustar bytes, so that names tar-rs's builder would refuse (`..`, `/etc`) can be written.
fn raw_tar(members: &[M]) -> Vec<u8> {
    let mut out = Vec::new();
    for member in members {
        let (name, kind, mode, data, link): (&str, u8, u32, &[u8], &str) = match member {
            M::Dir(n, m) => (n, b'5', *m, b"", ""),
            M::File(n, m, d) => (n, b'0', *m, d, ""),
            M::Symlink(n, l) => (n, b'2', 0o777, b"", l),
            M::Hardlink(n, l) => (n, b'1', 0o644, b"", l),
            M::Fifo(n) => (n, b'6', 0o644, b"", ""),
            M::PaxSized(n, d) => {
                let record = format!("size={}\n", d.len());
                let record = format!("{} {record}", record.len() + 1 + (record.len() + 3).to_string().len());
                out.extend(header("pax", b'x', 0o644, record.len() as u64, ""));
                out.extend_from_slice(record.as_bytes());
                out.resize(out.len().div_ceil(512) * 512, 0);
                out.extend(header(n, b'0', 0o644, 0, ""));
                out.extend_from_slice(d);
                out.resize(out.len().div_ceil(512) * 512, 0);
                continue;
            }
        };
        out.extend(header(name, kind, mode, data.len() as u64, link));
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.resize(out.len() + 1024, 0);
    out
}

fn header(name: &str, kind: u8, mode: u32, size: u64, link: &str) -> [u8; 512] {
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    h[100..108].copy_from_slice(format!("{mode:07o}\0").as_bytes());
    h[108..116].copy_from_slice(b"0000000\0");
    h[116..124].copy_from_slice(b"0000000\0");
    if size < 0o77777777777 {
        h[124..136].copy_from_slice(format!("{size:011o}\0").as_bytes());
    } else {
        // GNU base-256, for sizes octal cannot hold.
        h[124] = 0x80;
        h[128..136].copy_from_slice(&size.to_be_bytes());
    }
    h[136..148].copy_from_slice(b"00000000000\0");
    h[156] = kind;
    h[157..157 + link.len()].copy_from_slice(link.as_bytes());
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    h
}

/// A destination beside an `outside` tree that must never change, with a link into it already
/// in the destination (as an image's lower layer may have).
struct Scene {
    base: tempfile::TempDir,
}

impl Scene {
    fn new() -> Scene {
        let base = tempfile::tempdir().unwrap();
        let outside = base.path().join("outside");
        std::fs::create_dir_all(outside.join("victim")).unwrap();
        std::fs::write(outside.join("secret"), b"secret").unwrap();
        std::fs::set_permissions(outside.join("secret"), PermissionsExt::from_mode(0o600)).unwrap();
        std::fs::set_permissions(outside.join("victim"), PermissionsExt::from_mode(0o755)).unwrap();
        std::fs::create_dir(base.path().join("dest")).unwrap();
        std::os::unix::fs::symlink(&outside, base.path().join("dest/pre")).unwrap();
        Scene { base }
    }

    fn dest(&self) -> std::path::PathBuf {
        self.base.path().join("dest")
    }

    /// Every entry outside the destination: type, mode, size, content and link target.
    fn outside(&self) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        walk(self.base.path(), self.base.path(), &mut out);
        out
    }

    fn extract(&self, members: &[M], options: &ExtractOptions) -> Result<Vec<std::path::PathBuf>, ArchiveError> {
        extract(&raw_tar(members)[..], &self.dest(), "test.tar", options)
    }
}

fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    entries.sort();
    for path in entries {
        if path == base.join("dest") {
            continue;
        }
        let meta = std::fs::symlink_metadata(&path).unwrap();
        let detail = if meta.file_type().is_symlink() {
            format!("link {:?}", std::fs::read_link(&path).unwrap())
        } else if meta.is_file() {
            format!("file {:o} {:?}", meta.mode(), std::fs::read(&path).unwrap())
        } else {
            format!("{:o} {}", meta.mode(), meta.nlink())
        };
        out.insert(path.strip_prefix(base).unwrap().display().to_string(), detail);
        if meta.is_dir() {
            walk(base, &path, out);
        }
    }
    let meta = std::fs::metadata(base).unwrap();
    out.insert(".".into(), format!("{:o}", meta.mode()));
}

fn all_options() -> Vec<ExtractOptions> {
    vec![
        ExtractOptions::default(),
        ExtractOptions::checkpoint(),
        ExtractOptions { preserve_owners: false, ..ExtractOptions::container_files() },
        ExtractOptions { preserve_owners: false, ..ExtractOptions::image_layer() },
    ]
}

/// (case, members, the refusal expected with every option set, or `None` for "may succeed")
fn cases() -> Vec<(&'static str, Vec<M>, Option<&'static str>)> {
    use M::*;
    vec![
        ("dotdot", vec![File("../escape", 0o644, b"x")], Some("'..'")),
        ("absolute", vec![File("/tmp/ckpt-unit-absolute", 0o644, b"x")], Some("absolute")),
        (
            "dir then symlink over it (chmod through the link)",
            vec![Dir("d", 0o777), Symlink("d", "../outside/victim")],
            Some("another type"),
        ),
        ("symlink then dir over it", vec![Symlink("d", "../outside"), Dir("d", 0o777)], Some("")),
        ("file under a planted link", vec![Symlink("l", "../outside"), File("l/new", 0o644, b"x")], Some("")),
        ("file under a pre-existing link", vec![File("pre/secret", 0o666, b"owned")], Some("symlink")),
        ("dir under a pre-existing link", vec![Dir("pre/victim", 0o777)], Some("symlink")),
        ("relative link then descend", vec![Symlink("l", ".."), File("l/outside/secret", 0o644, b"x")], Some("")),
        ("hard link to outside", vec![Hardlink("h", "../outside/secret")], Some("'..'")),
        ("hard link through a pre-existing link", vec![Hardlink("h", "pre/secret")], Some("earlier")),
        ("hard link to a link", vec![Symlink("l", "../outside/secret"), Hardlink("h", "l")], Some("")),
        ("file replaced by a dir", vec![File("x", 0o644, b"x"), Dir("x", 0o777)], Some("")),
        ("fifo", vec![Fifo("p")], None),
        ("duplicate files", vec![File("x", 0o644, b"one"), File("x", 0o600, b"two")], None),
        ("read-only dir with members", vec![Dir("ro", 0o500), File("ro/f", 0o644, b"x")], None),
        ("setuid file", vec![File("su", 0o4755, b"x")], None),
    ]
}

#[test]
fn crafted_tars_change_nothing_outside_the_destination() {
    for (case, members, expected) in cases() {
        for options in all_options() {
            let scene = Scene::new();
            let before = scene.outside();
            let result = scene.extract(&members, &options);
            assert_eq!(before, scene.outside(), "case {case:?} with {options:?} changed something outside");
            if let Some(expected) = expected {
                let err = result.expect_err(&format!("case {case:?} with {options:?} should be refused"));
                assert!(err.to_string().contains(expected), "case {case:?}: {err}");
            }
        }
    }
}

#[test]
fn whiteouts_stay_inside_the_destination() {
    let options = ExtractOptions { preserve_owners: false, ..ExtractOptions::image_layer() };
    for name in [".wh...", ".wh..", ".wh.", "a/.wh...", "pre/.wh.secret", "pre/.wh..wh..opq"] {
        let scene = Scene::new();
        std::fs::create_dir(scene.dest().join("a")).unwrap();
        let before = scene.outside();
        let result = scene.extract(&[M::File(name, 0o644, b"")], &options);
        assert!(result.is_err(), "whiteout {name:?} should be refused");
        assert_eq!(before, scene.outside(), "whiteout {name:?} changed something outside");
        assert!(scene.dest().join("a").is_dir(), "whiteout {name:?} removed a sibling");
    }
    let scene = Scene::new();
    std::fs::create_dir_all(scene.dest().join("d/lower")).unwrap();
    scene
        .extract(
            &[M::File("d/new", 0o644, b"x"), M::File("d/.wh..wh..opq", 0o644, b""), M::File(".wh.pre", 0o644, b"")],
            &options,
        )
        .unwrap();
    assert!(scene.dest().join("d/new").exists(), "an opaque whiteout keeps what its own layer wrote");
    assert!(!scene.dest().join("d/lower").exists(), "an opaque whiteout hides the lower layer");
    assert!(std::fs::symlink_metadata(scene.dest().join("pre")).is_err(), "a whiteout removes a link, not its target");
    assert!(scene.base.path().join("outside/secret").exists());
}

#[test]
fn modes_are_set_through_descriptors_and_special_bits_only_where_allowed() {
    let members = [M::Dir("ro", 0o555), M::File("ro/f", 0o4755, b"data"), M::File("plain", 0o640, b"")];
    let scene = Scene::new();
    scene.extract(&members, &ExtractOptions::checkpoint()).unwrap();
    let mode = |p: &str| std::fs::symlink_metadata(scene.dest().join(p)).unwrap().mode() & 0o7777;
    assert_eq!(mode("ro"), 0o555);
    assert_eq!(mode("ro/f"), 0o755, "checkpoint members never keep set-id bits");
    assert_eq!(mode("plain"), 0o640);
    let scene = Scene::new();
    scene.extract(&members, &ExtractOptions { preserve_owners: false, ..ExtractOptions::container_files() }).unwrap();
    assert_eq!(std::fs::symlink_metadata(scene.dest().join("ro/f")).unwrap().mode() & 0o7777, 0o4755);
}

#[test]
fn only_criu_parent_links_pass_in_a_checkpoint() {
    let scene = Scene::new();
    let ok =
        [M::Dir("pre-dump-1", 0o700), M::Dir("checkpoint", 0o700), M::Symlink("checkpoint/parent", "../pre-dump-1")];
    scene.extract(&ok, &ExtractOptions::checkpoint()).unwrap();
    for bad in [
        vec![M::Symlink("checkpoint", "../outside")],
        vec![M::Symlink("checkpoint/parent", "/etc")],
        vec![M::Symlink("checkpoint/parent", "../../outside")],
        vec![M::Symlink("ctr.log", "/etc/shadow")],
        vec![M::Symlink("rootfs-diff.tar", "../outside/secret")],
    ] {
        let scene = Scene::new();
        let err = scene.extract(&bad, &ExtractOptions::checkpoint()).unwrap_err();
        assert!(err.to_string().contains("symlink"), "{bad:?}: {err}");
    }
}

#[test]
fn pax_sizes_are_the_sizes_that_count() {
    let scene = Scene::new();
    scene
        .extract(&[M::PaxSized("p", b"0123456789"), M::File("after", 0o644, b"a")], &ExtractOptions::default())
        .unwrap();
    assert_eq!(std::fs::read(scene.dest().join("p")).unwrap(), b"0123456789", "the PAX size, not the ustar 0");
    assert_eq!(std::fs::read(scene.dest().join("after")).unwrap(), b"a");
    let options =
        ExtractOptions { limits: ExtractLimits { max_total_bytes: 5, ..Default::default() }, ..Default::default() };
    let err = Scene::new().extract(&[M::PaxSized("p", b"0123456789")], &options).unwrap_err();
    assert!(err.to_string().contains("bytes of content"), "{err}");
}

#[test]
fn an_archive_larger_than_the_free_space_is_refused_before_it_fills_the_disk() {
    let scene = Scene::new();
    // Declares a terabyte; the refusal comes before a byte of it is written.
    let mut tar = header("huge", b'0', 0o644, 1 << 40, "").to_vec();
    tar.resize(tar.len() + 4096, 0);
    let options = ExtractOptions {
        limits: ExtractLimits { max_total_bytes: u64::MAX, ..Default::default() },
        ..Default::default()
    };
    let err = extract(&tar[..], &scene.dest(), "bomb.tar", &options).unwrap_err();
    assert!(err.to_string().contains("free at"), "{err}");
    assert!(std::fs::symlink_metadata(scene.dest().join("huge")).is_err());
}

#[test]
fn bounds_are_enforced() {
    let scene = Scene::new();
    let options =
        ExtractOptions { limits: ExtractLimits { max_entries: 2, ..Default::default() }, ..Default::default() };
    let err = scene.extract(&[M::Dir("a", 0o755), M::Dir("b", 0o755), M::Dir("c", 0o755)], &options).unwrap_err();
    assert!(err.to_string().contains("more than 2 members"), "{err}");
    let options =
        ExtractOptions { limits: ExtractLimits { max_total_bytes: 3, ..Default::default() }, ..Default::default() };
    let err = scene.extract(&[M::File("big", 0o644, b"four")], &options).unwrap_err();
    assert!(err.to_string().contains("bytes of content"), "{err}");
    let mut truncated = raw_tar(&[M::File("t", 0o644, &[7u8; 2000])]);
    truncated.truncate(1024);
    let err = extract(&truncated[..], &scene.dest(), "cut.tar", &ExtractOptions::default()).unwrap_err();
    assert!(err.to_string().contains("truncated") || err.to_string().contains("valid"), "{err}");
}

/// A small deterministic generator: the same sequences on every run, no extra crate.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[(self.next() % items.len() as u64) as usize]
    }
}

#[test]
fn random_member_sequences_never_touch_the_outside() {
    const NAMES: &[&str] = &[
        "a",
        "b",
        "a/b",
        "a/b/c",
        "b/a",
        "pre",
        "pre/x",
        "pre/victim",
        "l",
        "l/x",
        "l/victim",
        ".wh.a",
        "a/.wh.b",
        "a/.wh..wh..opq",
        ".wh...",
        "x",
    ];
    const TARGETS: &[&str] = &["..", "../outside", "../outside/victim", "/", "a", "a/b", "pre", "../../", "x"];
    const MODES: &[u32] = &[0o777, 0o7777, 0o000, 0o755, 0o4755];
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let options = all_options();
    for round in 0..3000 {
        let count = 1 + rng.next() % 6;
        let members: Vec<M> = (0..count)
            .map(|_| {
                let name = rng.pick(NAMES);
                match rng.next() % 5 {
                    0 => M::Dir(name, rng.pick(MODES)),
                    1 => M::File(name, rng.pick(MODES), b"data"),
                    2 => M::Symlink(name, rng.pick(TARGETS)),
                    3 => M::Hardlink(name, rng.pick(TARGETS)),
                    _ => M::Fifo(name),
                }
            })
            .collect();
        let options = &options[round % options.len()];
        let scene = Scene::new();
        let before = scene.outside();
        let _ = scene.extract(&members, options);
        assert_eq!(before, scene.outside(), "round {round}: {members:?} with {options:?} changed the outside");
    }
}

#[test]
fn digests_taken_while_extracting_match_what_is_on_disk_across_layers() {
    let scene = Scene::new();
    // Big enough to be hashed on its own thread, and not a whole number of chunks.
    let big: Vec<u8> = (0..(HASH_ALONGSIDE_FROM as usize + CHUNK / 3)).map(|i| (i * 7 % 251) as u8).collect();
    let big: &'static [u8] = big.leak();
    let mut digests = FileDigests::new();
    let lower = raw_tar(&[M::File("big", 0o600, big), M::File("small", 0o600, b"small"), M::File("kept", 0o600, b"k")]);
    extract_hashing(&lower[..], &scene.dest(), "lower.tar", &ExtractOptions::default(), &mut digests).unwrap();
    assert_eq!(digests[Path::new("big")], (big.len() as u64, blake3::hash(big)));
    assert_eq!(std::fs::read(scene.dest().join("big")).unwrap(), big);
    assert_eq!(digests[Path::new("small")], (5, blake3::hash(b"small")));

    // An upper layer that puts a directory where a file was drops that file's digest, and one that
    // rewrites a file leaves the new digest.
    let upper = raw_tar(&[M::Dir("small", 0o755), M::File("big", 0o600, b"rewritten")]);
    extract_hashing(&upper[..], &scene.dest(), "upper.tar", &ExtractOptions::default(), &mut digests).unwrap();
    assert!(!digests.contains_key(Path::new("small")), "{digests:?}");
    assert_eq!(digests[Path::new("big")], (9, blake3::hash(b"rewritten")));
    assert_eq!(digests[Path::new("kept")], (1, blake3::hash(b"k")));
}

#[test]
fn a_member_cut_short_is_refused_whether_hashed_alongside_or_not() {
    let big: &'static [u8] = vec![1u8; HASH_ALONGSIDE_FROM as usize * 2].leak();
    for hashed in [false, true] {
        let scene = Scene::new();
        let mut tar = raw_tar(&[M::File("big", 0o600, big)]);
        tar.truncate(512 + HASH_ALONGSIDE_FROM as usize + 100);
        let err = if hashed {
            extract_hashing(&tar[..], &scene.dest(), "cut.tar", &ExtractOptions::default(), &mut FileDigests::new())
                .unwrap_err()
        } else {
            extract(&tar[..], &scene.dest(), "cut.tar", &ExtractOptions::default()).unwrap_err()
        };
        assert!(err.to_string().contains("cut.tar"), "{err}");
    }
}

#[test]
fn compressed_streams_read_ahead_give_the_same_bytes() {
    let data: Vec<u8> = (0..(3 * CHUNK + 17)).map(|i| (i % 13) as u8).collect();
    let zstd = zstd::encode_all(&data[..], 1).unwrap();
    let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gzip, &data).unwrap();
    let gzip = gzip.finish().unwrap();
    for compressed in [zstd, gzip] {
        let mut out = Vec::new();
        crate::archive::decompress(std::io::Cursor::new(compressed), "t").unwrap().read_to_end(&mut out).unwrap();
        assert_eq!(out, data);
    }
    let mut corrupt = zstd::encode_all(&data[..], 1).unwrap();
    let middle = corrupt.len() / 2;
    corrupt[middle] ^= 0xff;
    let mut out = Vec::new();
    let read = crate::archive::decompress(std::io::Cursor::new(corrupt), "t").unwrap().read_to_end(&mut out);
    assert!(read.is_err() || out != data, "a corrupt stream never reads back as the original");
}

#[test]
fn the_free_space_reserve_scales_with_a_small_filesystem() {
    assert_eq!(free_space_reserve(Some(64 << 20)), (64 << 20) / 20, "a 64 MiB store keeps 3.2 MiB");
    assert_eq!(free_space_reserve(Some(100 << 30)), 64 << 20, "a large one keeps 64 MiB");
    assert_eq!(free_space_reserve(None), 64 << 20);
}

#[test]
fn a_checkpoint_cut_short_anywhere_is_told_from_a_whole_one() {
    let members = [
        M::File("spec.dump", 0o600, &[7; 700]),
        M::File("checkpoint/pages-1.img", 0o600, &[0; 4096]),
        M::File("config.dump", 0o600, b"{}"),
    ];
    let whole = raw_tar(&members);
    let dir = tempfile::tempdir().unwrap();
    let extract_both_ways = |bytes: &[u8], case: &str| -> Vec<Result<(), ArchiveError>> {
        let archive = dir.path().join(format!("{case}.tar"));
        std::fs::write(&archive, bytes).unwrap();
        let (stream_dest, file_dest) = (dir.path().join(format!("{case}-s")), dir.path().join(format!("{case}-f")));
        std::fs::create_dir(&stream_dest).unwrap();
        std::fs::create_dir(&file_dest).unwrap();
        let options = ExtractOptions::checkpoint();
        let streamed = extract(bytes, &stream_dest, case, &options).map(drop);
        let reader = io::BufReader::new(std::fs::File::open(&archive).unwrap());
        let progress = crate::progress::Progress::on_terminal("test", || None);
        let from_file =
            extract_file_hashing(reader, progress, &file_dest, case, &options, &mut FileDigests::new(), None);
        vec![streamed, from_file]
    };
    for result in extract_both_ways(&whole, "whole") {
        result.unwrap();
    }
    // At a member's boundary (after spec.dump: header, 700 bytes, padding), after the last
    // member, inside the padding, inside a member, inside the end-of-archive blocks.
    let last_member_end = whole.len() - 1024;
    for cut in [512 + 1024, last_member_end, 512 + 800, 512 + 1024 + 512 + 100, whole.len() - 512] {
        for result in extract_both_ways(&whole[..cut], &format!("cut-{cut}")) {
            let err = result.unwrap_err().to_string();
            assert!(err.contains("cut short") || err.contains("not a valid tar"), "{cut}: {err}");
        }
    }
    // Image layers are checked by their digests and need no end blocks.
    let layer = dir.path().join("layer");
    std::fs::create_dir(&layer).unwrap();
    let options = ExtractOptions { preserve_owners: false, ..ExtractOptions::image_layer() };
    extract(&whole[..last_member_end], &layer, "layer", &options).unwrap();
}
