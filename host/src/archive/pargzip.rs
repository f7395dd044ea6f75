//! gzip on every core. The input is cut into blocks that are compressed side by side, each a
//! complete gzip member, and written in their order. A run of members is one gzip file to every
//! reader (`gzip -d`, Go's `compress/gzip` that podman reads archives with, flate2's
//! `MultiGzDecoder`), as the output of pigz and pgzip is.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;

/// What each worker compresses at a time: large enough that a member's header and trailer
/// (18 bytes) and the lost history at its start cost nothing measurable.
const BLOCK: usize = 1 << 20;

type Compressed = io::Result<Vec<u8>>;
type Job = (Vec<u8>, mpsc::SyncSender<Compressed>);

pub struct ParGzEncoder<W: Write> {
    /// Taken back by `finish`.
    inner: Option<W>,
    block: Vec<u8>,
    /// The members being compressed, oldest first: written in this order.
    in_flight: VecDeque<mpsc::Receiver<Compressed>>,
    jobs: Option<mpsc::Sender<Job>>,
    workers: Vec<JoinHandle<()>>,
    /// Bounds the memory held: twice the workers, one block each.
    max_in_flight: usize,
    members: u64,
}

impl<W: Write> ParGzEncoder<W> {
    pub fn new(inner: W, threads: usize) -> ParGzEncoder<W> {
        let threads = threads.max(1);
        let (jobs, queue) = mpsc::channel::<Job>();
        let queue = Arc::new(Mutex::new(queue));
        let workers = (0..threads)
            .map(|_| {
                let queue = Arc::clone(&queue);
                std::thread::spawn(move || {
                    loop {
                        let job = queue.lock().map(|q| q.recv());
                        let Ok(Ok((block, done))) = job else { return };
                        let _ = done.send(compress(&block));
                    }
                })
            })
            .collect();
        ParGzEncoder {
            inner: Some(inner),
            block: Vec::with_capacity(BLOCK),
            in_flight: VecDeque::new(),
            jobs: Some(jobs),
            workers,
            max_in_flight: threads * 2,
            members: 0,
        }
    }

    /// Hands the current block to a worker, writing out the oldest members while too many wait.
    fn submit(&mut self) -> io::Result<()> {
        let block = std::mem::replace(&mut self.block, Vec::with_capacity(BLOCK));
        let (done, result) = mpsc::sync_channel(1);
        let jobs = self.jobs.as_ref().ok_or_else(finished)?;
        jobs.send((block, done)).map_err(|_| io::Error::other("gzip workers stopped"))?;
        self.in_flight.push_back(result);
        self.members += 1;
        while self.in_flight.len() > self.max_in_flight {
            self.write_oldest()?;
        }
        Ok(())
    }

    fn write_oldest(&mut self) -> io::Result<()> {
        let Some(oldest) = self.in_flight.pop_front() else { return Ok(()) };
        let member = oldest.recv().map_err(|_| io::Error::other("a gzip worker stopped"))??;
        self.writer()?.write_all(&member)
    }

    fn drain(&mut self) -> io::Result<()> {
        while !self.in_flight.is_empty() {
            self.write_oldest()?;
        }
        Ok(())
    }

    /// Compresses what is left (one empty member for an empty input, so the output is gzip)
    /// and returns the writer.
    pub fn finish(mut self) -> io::Result<W> {
        if !self.block.is_empty() || self.members == 0 {
            self.submit()?;
        }
        self.drain()?;
        self.stop_workers();
        self.inner.take().ok_or_else(finished)
    }

    fn writer(&mut self) -> io::Result<&mut W> {
        self.inner.as_mut().ok_or_else(finished)
    }

    fn stop_workers(&mut self) {
        self.jobs = None;
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
    }
}

fn finished() -> io::Error {
    io::Error::other("the gzip encoder has finished")
}

fn compress(block: &[u8]) -> Compressed {
    let mut encoder =
        flate2::write::GzEncoder::new(Vec::with_capacity(block.len() / 2 + 64), flate2::Compression::fast());
    encoder.write_all(block)?;
    encoder.finish()
}

impl<W: Write> Write for ParGzEncoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let room = BLOCK - self.block.len();
        let taken = room.min(buf.len());
        self.block.extend_from_slice(&buf[..taken]);
        if self.block.len() == BLOCK {
            self.submit()?;
        }
        Ok(taken)
    }

    fn flush(&mut self) -> io::Result<()> {
        if !self.block.is_empty() {
            self.submit()?;
        }
        self.drain()?;
        self.writer()?.flush()
    }
}

impl<W: Write> Drop for ParGzEncoder<W> {
    fn drop(&mut self) {
        self.stop_workers();
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    #[test]
    fn members_in_order_read_back_as_one_gzip_stream() {
        let input: Vec<u8> = (0..(3 * BLOCK + 12345)).map(|i| (i % 251) as u8 ^ (i >> 13) as u8).collect();
        let mut encoder = ParGzEncoder::new(Vec::new(), 3);
        for chunk in input.chunks(70_000) {
            encoder.write_all(chunk).unwrap();
        }
        let compressed = encoder.finish().unwrap();
        let mut output = Vec::new();
        flate2::read::MultiGzDecoder::new(&compressed[..]).read_to_end(&mut output).unwrap();
        assert_eq!(output, input);
        // gzip(1) reads it too, as podman's Go reader does: members, one after the other.
        let mut child = std::process::Command::new("gzip")
            .arg("-dc")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let feeder = std::thread::spawn(move || stdin.write_all(&compressed));
        let out = child.wait_with_output().unwrap();
        feeder.join().unwrap().unwrap();
        assert!(out.status.success());
        assert_eq!(out.stdout, input);

        let empty = ParGzEncoder::new(Vec::new(), 2).finish().unwrap();
        let mut nothing = Vec::new();
        flate2::read::MultiGzDecoder::new(&empty[..]).read_to_end(&mut nothing).unwrap();
        assert!(nothing.is_empty(), "an empty input is still a gzip file");
    }
}
