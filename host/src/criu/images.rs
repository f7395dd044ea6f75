//! What an imported checkpoint's CRIU images would let its processes do. CRIU runs as root and
//! restores whatever credentials the images name (images/core.proto: `core_entry.thread_core`,
//! whose `creds` are images/creds.proto), so a checkpoint from another host could give its
//! processes every capability. Each thread's sets are read here, before CRIU sees them.

use std::path::Path;

use super::CriuError;
use super::proto::{IMG_COMMON_MAGIC, Value, decode_message};

const CORE_MAGIC: u32 = 0x5505_3847;
/// Far above any real core entry; a larger length means a corrupt or hostile file.
const MAX_CORE_ENTRY_LEN: usize = 16 << 20;

/// `core_entry` → `thread_core` → `creds`, and what `creds` and `thread_core` hold.
const CORE_TASK_CORE: u64 = 3;
const CORE_THREAD_CORE: u64 = 5;
/// `task_core_entry`'s `task_state` and `comm`; CRIU's `TASK_DEAD`, the state of a zombie.
const TASK_CORE_STATE: u64 = 1;
const TASK_CORE_COMM: u64 = 6;
const TASK_DEAD: u64 = 2;
const THREAD_CORE_CREDS: u64 = 10;
const THREAD_CORE_COMM: u64 = 13;
/// The inheritable, permitted, effective, bounding and ambient sets: 32-bit words, lowest first.
const CREDS_CAPABILITY_SETS: [u64; 5] = [9, 10, 11, 12, 19];

/// Refuses the images in `dir` when any thread in them would hold, in any of its sets, a
/// capability outside `granted`: the container's own set, which is all a checkpoint of it can
/// legitimately carry.
pub fn refuse_capabilities_beyond(dir: &Path, granted: u64) -> Result<(), CriuError> {
    let entries = std::fs::read_dir(dir).map_err(|e| image_error(dir, &e.to_string()))?;
    let mut cores = 0;
    for entry in entries {
        let entry = entry.map_err(|e| image_error(dir, &e.to_string()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !crate::metadata::is_core_image_name(&name) {
            continue;
        }
        cores += 1;
        let path = entry.path();
        let bytes = std::fs::read(&path).map_err(|e| image_error(&path, &e.to_string()))?;
        let (comm, held) = thread_capabilities(&bytes).map_err(|detail| image_error(&path, detail))?;
        let beyond = held & !granted;
        if beyond != 0 {
            return Err(CriuError::CapabilitiesBeyondContainer {
                image: path,
                process: comm,
                capabilities: crate::spec::capability_names(beyond).join(", "),
            });
        }
    }
    if cores == 0 {
        return Err(image_error(dir, "no core-*.img: not a CRIU dump"));
    }
    Ok(())
}

fn image_error(path: &Path, detail: &str) -> CriuError {
    CriuError::Image { path: path.to_path_buf(), detail: detail.to_string() }
}

/// The thread's name and every capability in any of its sets.
fn thread_capabilities(bytes: &[u8]) -> Result<(String, u64), &'static str> {
    let entry = super::proto::single_entry(bytes, IMG_COMMON_MAGIC, CORE_MAGIC, MAX_CORE_ENTRY_LEN)
        .map_err(|why| if why.contains("magic") { "not a CRIU core image (magic numbers not found)" } else { why })?;
    let core = decode_message(entry).ok_or("malformed protobuf")?;
    let Some(thread_core) = nested(&core, CORE_THREAD_CORE) else {
        // A zombie is dumped with its task state alone, and CRIU restores it as a process that
        // only exits: it has no credentials to judge.
        let task_core = nested(&core, CORE_TASK_CORE).ok_or("no thread_core entry")?;
        let task_core = decode_message(task_core).ok_or("malformed task_core")?;
        let dead = task_core.iter().any(|(f, v)| *f == TASK_CORE_STATE && matches!(v, Value::Varint(TASK_DEAD)));
        if !dead {
            return Err("no thread_core entry in the core of a live task");
        }
        let comm = nested(&task_core, TASK_CORE_COMM).map(|c| String::from_utf8_lossy(c).into_owned());
        return Ok((comm.unwrap_or_default(), 0));
    };
    let thread_core = decode_message(thread_core).ok_or("malformed thread_core")?;
    let comm =
        nested(&thread_core, THREAD_CORE_COMM).map(|c| String::from_utf8_lossy(c).into_owned()).unwrap_or_default();
    // Without them CRIU would read credentials from elsewhere; they cannot be judged.
    let creds = nested(&thread_core, THREAD_CORE_CREDS).ok_or("no credentials in thread_core")?;
    let creds = decode_message(creds).ok_or("malformed creds")?;
    let mut held = 0u64;
    for set in CREDS_CAPABILITY_SETS {
        let mut words = Vec::new();
        for (field, value) in &creds {
            if *field != set {
                continue;
            }
            match value {
                Value::Varint(w) => words.push(*w),
                // A packed list of varints.
                Value::Bytes(packed) => {
                    let mut packed = *packed;
                    while !packed.is_empty() {
                        words.push(super::proto::varint(&mut packed).ok_or("malformed capability set")?);
                    }
                }
            }
        }
        for (index, word) in words.iter().enumerate() {
            let shift = 32 * index as u32;
            if shift >= 64 || *word > u64::from(u32::MAX) {
                return Err("a capability set longer than 64 bits");
            }
            held |= word << shift;
        }
    }
    Ok((comm, held))
}

/// The bytes of the first length-delimited `field`.
fn nested<'a>(fields: &[(u64, Value<'a>)], field: u64) -> Option<&'a [u8]> {
    fields.iter().find_map(|(f, v)| match v {
        Value::Bytes(b) if *f == field => Some(*b),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::super::proto::put_varint;
    use super::*;

    fn message(fields: &[(u64, Vec<u8>)], varints: &[(u64, u64)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (field, value) in varints {
            put_varint(&mut out, field << 3);
            put_varint(&mut out, *value);
        }
        for (field, bytes) in fields {
            put_varint(&mut out, (field << 3) | 2);
            put_varint(&mut out, bytes.len() as u64);
            out.extend(bytes);
        }
        out
    }

    /// A core image whose one thread holds `effective` and the container's bounding set.
    fn core_image(comm: &str, effective: u64, bounding: u64) -> Vec<u8> {
        let low_high = |field: u64, mask: u64| [(field, mask & 0xffff_ffff), (field, mask >> 32)];
        let mut varints = vec![(1, 0), (2, 0)];
        varints.extend(low_high(11, effective));
        varints.extend(low_high(10, effective));
        varints.extend(low_high(12, bounding));
        let creds = message(&[], &varints);
        let thread_core =
            message(&[(THREAD_CORE_CREDS, creds), (THREAD_CORE_COMM, comm.as_bytes().to_vec())], &[(1, 0)]);
        let core = message(&[(CORE_THREAD_CORE, thread_core)], &[(1, 1)]);
        super::super::proto::encode_image(IMG_COMMON_MAGIC, CORE_MAGIC, &core)
    }

    #[test]
    fn an_image_that_gives_a_process_more_than_the_container_has_is_refused() {
        // CAP_CHOWN, CAP_KILL and CAP_SETFCAP.
        let granted = 1 | 1 << 5 | 1 << 31;
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("core-1.img"), core_image("sh", 1 << 5, granted)).unwrap();
        std::fs::write(dir.path().join("pages-1.img"), b"not a core image").unwrap();
        refuse_capabilities_beyond(dir.path(), granted).unwrap();

        // A zombie's core has a task state and no thread: nothing to judge, and no refusal.
        let zombie_task = message(&[(TASK_CORE_COMM, b"httpd".to_vec())], &[(TASK_CORE_STATE, TASK_DEAD), (2, 0)]);
        let zombie = message(&[(CORE_TASK_CORE, zombie_task)], &[(1, 1)]);
        let zombie = super::super::proto::encode_image(IMG_COMMON_MAGIC, CORE_MAGIC, &zombie);
        std::fs::write(dir.path().join("core-9.img"), &zombie).unwrap();
        refuse_capabilities_beyond(dir.path(), granted).unwrap();
        // The same without the dead state is a live task whose credentials are missing.
        let alive_task = message(&[], &[(TASK_CORE_STATE, 1), (2, 0)]);
        let alive = message(&[(CORE_TASK_CORE, alive_task)], &[(1, 1)]);
        let alive = super::super::proto::encode_image(IMG_COMMON_MAGIC, CORE_MAGIC, &alive);
        std::fs::write(dir.path().join("core-9.img"), &alive).unwrap();
        let threadless = refuse_capabilities_beyond(dir.path(), granted).unwrap_err().to_string();
        assert!(threadless.contains("core-9.img") && threadless.contains("live task"), "{threadless}");
        std::fs::remove_file(dir.path().join("core-9.img")).unwrap();

        let admin_and_bpf = 1 << 21 | 1 << 39;
        std::fs::write(dir.path().join("core-7.img"), core_image("evil", admin_and_bpf, granted)).unwrap();
        let refused = refuse_capabilities_beyond(dir.path(), granted).unwrap_err().to_string();
        assert!(refused.contains("core-7.img") && refused.contains("\"evil\""), "{refused}");
        assert!(refused.contains("CAP_SYS_ADMIN, CAP_BPF"), "{refused}");

        std::fs::write(dir.path().join("core-7.img"), b"garbage").unwrap();
        let unreadable = refuse_capabilities_beyond(dir.path(), granted).unwrap_err().to_string();
        assert!(unreadable.contains("core-7.img") && unreadable.contains("magic"), "{unreadable}");
        let empty = tempfile::tempdir().unwrap();
        assert!(refuse_capabilities_beyond(empty.path(), granted).is_err(), "no core image is no dump");
    }
}
