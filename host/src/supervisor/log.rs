//! The container log in podman's k8s-file format: `<RFC 3339 time> <stream> <F|P> <text>`.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Mutex;

use crate::base_error::{BaseError, BaseResult};

pub struct LogWriter {
    file: Mutex<File>,
}

impl LogWriter {
    pub fn open(path: &Path) -> BaseResult<LogWriter> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)
            .map_err(BaseError::io("open log", path))?;
        Ok(LogWriter { file: Mutex::new(file) })
    }

    /// Writes one chunk: a full line (`F`) or a partial one (`P`) when it has no newline.
    pub fn write(&self, stream: &str, chunk: &[u8]) {
        let (text, tag) = match chunk.strip_suffix(b"\n") {
            Some(text) => (text, 'F'),
            None => (chunk, 'P'),
        };
        let time = chrono::Local::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, false);
        let mut record = Vec::with_capacity(text.len() + 48);
        record.extend_from_slice(format!("{time} {stream} {tag} ").as_bytes());
        record.extend_from_slice(text);
        record.push(b'\n');
        if let Ok(mut file) = self.file.lock() {
            let _ = file.write_all(&record);
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    pub time: String,
    pub stream: String,
    /// The text with its newline when the line was complete.
    pub text: Vec<u8>,
}

/// Parses a log file; partial records are joined to the line they belong to.
pub fn read_log(bytes: &[u8]) -> Vec<LogLine> {
    let mut out: Vec<LogLine> = Vec::new();
    let mut pending: Option<LogLine> = None;
    for record in bytes.split(|&b| b == b'\n').filter(|r| !r.is_empty()) {
        let mut parts = record.splitn(4, |&b| b == b' ');
        let (Some(time), Some(stream), Some(tag)) = (parts.next(), parts.next(), parts.next()) else { continue };
        let text = parts.next().unwrap_or_default();
        let line = pending.get_or_insert_with(|| LogLine {
            time: String::from_utf8_lossy(time).into_owned(),
            stream: String::from_utf8_lossy(stream).into_owned(),
            text: Vec::new(),
        });
        line.text.extend_from_slice(text);
        if tag == b"F" {
            line.text.push(b'\n');
            out.push(pending.take().expect("pending line"));
        }
    }
    out.extend(pending);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joins_partial_records() {
        let log = b"t1 stdout P abc\nt2 stdout F def\nt3 stderr F oops\nt4 stdout P tail\n";
        let lines = read_log(log);
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0].text, b"abcdef\n");
        assert_eq!(lines[1].stream, "stderr");
        assert_eq!(lines[2].text, b"tail");
    }
}
