//! Progress of long exports and imports on a terminal: bytes, rate and time left, on one line of
//! standard error that rewrites itself. Nothing at all when standard error is not a terminal, so
//! scripts and logs see only what they saw before.

use std::io::{self, BufRead, IsTerminal, Read, Write};
use std::time::{Duration, Instant};

/// How often the line is drawn again.
const EVERY: Duration = Duration::from_millis(250);
/// Short jobs draw nothing: the line would only flicker.
const QUIET_FOR: Duration = Duration::from_secs(1);

pub struct Progress {
    label: &'static str,
    total: Option<u64>,
    done: u64,
    started: Instant,
    drawn: Option<Instant>,
    enabled: bool,
}

impl Progress {
    /// Draws on standard error only when it is a terminal; only then is `total` worked out.
    pub fn on_terminal(label: &'static str, total: impl FnOnce() -> Option<u64>) -> Progress {
        let enabled = io::stderr().is_terminal();
        Progress::new(label, if enabled { total() } else { None }, enabled)
    }

    fn new(label: &'static str, total: Option<u64>, enabled: bool) -> Progress {
        Progress { label, total, done: 0, started: Instant::now(), drawn: None, enabled }
    }

    /// The bytes counted so far.
    #[cfg(test)]
    pub(crate) fn done(&self) -> u64 {
        self.done
    }

    pub fn add(&mut self, bytes: u64) {
        self.done += bytes;
        if !self.enabled {
            return;
        }
        let elapsed = self.started.elapsed();
        if elapsed < QUIET_FOR || self.drawn.is_some_and(|at| at.elapsed() < EVERY) {
            return;
        }
        self.drawn = Some(Instant::now());
        let line = render(self.label, self.done, self.total, elapsed);
        let _ = write!(io::stderr(), "\r{line}\x1b[K");
    }

    fn finish(&mut self) {
        if self.enabled && self.drawn.is_some() {
            let line = render(self.label, self.done, None, self.started.elapsed());
            let _ = writeln!(io::stderr(), "\r{line}\x1b[K");
            self.drawn = None;
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

/// `export: 412.0 MiB of 1024.0 MiB, 88.1 MiB/s, 7 s left`.
fn render(label: &str, done: u64, total: Option<u64>, elapsed: Duration) -> String {
    let rate = done as f64 / elapsed.as_secs_f64().max(0.001);
    let mut line = format!("{label}: {:.1} MiB", mib(done));
    if let Some(total) = total.filter(|&t| t >= done && t > 0) {
        line.push_str(&format!(" of {:.1} MiB", mib(total)));
        if rate > 0.0 {
            line.push_str(&format!(", {:.1} MiB/s, {:.0} s left", mib(rate as u64), (total - done) as f64 / rate));
            return line;
        }
    }
    line.push_str(&format!(", {:.1} MiB/s", mib(rate as u64)));
    line
}

/// Counts what is written through it.
pub struct ProgressWriter<W: Write> {
    pub inner: W,
    progress: Progress,
}

impl<W: Write> ProgressWriter<W> {
    pub fn new(inner: W, progress: Progress) -> ProgressWriter<W> {
        ProgressWriter { inner, progress }
    }
}

impl<W: Write> Write for ProgressWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.progress.add(n as u64);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Counts what is read through it.
pub struct ProgressReader<R: BufRead> {
    inner: R,
    progress: Progress,
}

impl<R: BufRead> ProgressReader<R> {
    pub fn new(inner: R, progress: Progress) -> ProgressReader<R> {
        ProgressReader { inner, progress }
    }
}

impl<R: BufRead> Read for ProgressReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.progress.add(n as u64);
        Ok(n)
    }
}

impl<R: BufRead> BufRead for ProgressReader<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        self.inner.fill_buf()
    }

    fn consume(&mut self, amount: usize) {
        self.inner.consume(amount);
        self.progress.add(amount as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_has_bytes_rate_and_time_left() {
        let line = render("export", 256 << 20, Some(1 << 30), Duration::from_secs(2));
        assert_eq!(line, "export: 256.0 MiB of 1024.0 MiB, 128.0 MiB/s, 6 s left");
        assert_eq!(render("import", 3 << 20, None, Duration::from_secs(1)), "import: 3.0 MiB, 3.0 MiB/s");
        // An estimate that fell short shows no time left rather than a negative one.
        assert_eq!(render("export", 2 << 20, Some(1 << 20), Duration::from_secs(1)), "export: 2.0 MiB, 2.0 MiB/s");
    }

    #[test]
    fn nothing_is_drawn_off_a_terminal() {
        let mut progress = Progress::new("export", Some(10), false);
        progress.add(5);
        assert!(progress.drawn.is_none());
        let mut writer = ProgressWriter::new(Vec::new(), Progress::new("export", None, false));
        writer.write_all(b"abc").unwrap();
        assert_eq!(writer.progress.done, 3);
    }
}
