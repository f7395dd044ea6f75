//! gzip on every core. The input is cut into blocks that are compressed side by side, each a
//! complete gzip member, and written in their order. A run of members is one gzip file to every
//! reader (`gzip -d`, Go's `compress/gzip` that podman reads archives with, flate2's
//! `MultiGzDecoder`), as the output of pigz and pgzip is. Incompressible runs inside a block
//! are stored rather than deflated (see [`compress`]).

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

/// A gzip member's header: no name, no time, "fastest" (XFL 4), unknown OS.
const GZIP_HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 4, 255];

/// Input is judged a piece at a time: tar's 512-byte blocks, so that a memory page is judged
/// whole or nearly wherever the stream cuts it.
const PIECE: usize = 512;
/// Random or already compressed bytes show about 221 of the 256 byte values in 512 bytes; text
/// shows a few dozen, machine code rarely 180, a page of repeated words a handful.
const INCOMPRESSIBLE_DISTINCT: u32 = 200;
/// Fewer byte values than this in a piece's first 128 bytes settle that it compresses.
const COMPRESSIBLE_EARLY: u32 = 64;
/// Runs of incompressible pieces shorter than a page stay in the deflate stream: each run stored
/// costs a flush there.
const MIN_STORED_RUN: usize = 8;
/// Deflate's longest stored block.
const MAX_STORED_BLOCK: usize = 65_535;

/// One gzip member for `block`. Deflate at level 1 gains nothing on incompressible bytes (random
/// data, encrypted or compressed memory) and runs ten times slower on them than on the rest, so
/// runs of such pieces go in as stored blocks, as zram keeps a page that does not compress as it
/// is. The deflate stream is flushed in full before each such run, which also forgets its
/// history, so that no later match reaches back across bytes it did not see.
fn compress(block: &[u8]) -> Compressed {
    let mut out = Vec::with_capacity(block.len() / 2 + 64);
    out.extend_from_slice(&GZIP_HEADER);
    let mut deflate = flate2::Compress::new(flate2::Compression::fast(), false);
    let mut deflated_since_flush = false;
    for (stored, range) in runs(block) {
        let bytes = &block[range];
        if stored {
            if deflated_since_flush {
                deflate_into(&mut deflate, &[], flate2::FlushCompress::Full, &mut out)?;
                deflated_since_flush = false;
            }
            for part in bytes.chunks(MAX_STORED_BLOCK) {
                // Byte-aligned here: BFINAL 0, BTYPE 00, then LEN and its complement.
                out.push(0);
                out.extend_from_slice(&(part.len() as u16).to_le_bytes());
                out.extend_from_slice(&(!(part.len() as u16)).to_le_bytes());
                out.extend_from_slice(part);
            }
        } else {
            deflate_into(&mut deflate, bytes, flate2::FlushCompress::None, &mut out)?;
            deflated_since_flush = true;
        }
    }
    deflate_into(&mut deflate, &[], flate2::FlushCompress::Finish, &mut out)?;
    let mut crc = flate2::Crc::new();
    crc.update(block);
    out.extend_from_slice(&crc.sum().to_le_bytes());
    out.extend_from_slice(&(block.len() as u32).to_le_bytes());
    Ok(out)
}

/// Feeds `input` to `deflate` with `flush`, growing `out` as the output needs.
fn deflate_into(
    deflate: &mut flate2::Compress,
    mut input: &[u8],
    flush: flate2::FlushCompress,
    out: &mut Vec<u8>,
) -> io::Result<()> {
    loop {
        out.reserve(input.len() + input.len() / 8 + 1024);
        let before = deflate.total_in();
        let status = deflate.compress_vec(input, out, flush).map_err(io::Error::other)?;
        input = &input[(deflate.total_in() - before) as usize..];
        let room_left = out.len() < out.capacity();
        match status {
            flate2::Status::StreamEnd => return Ok(()),
            _ if input.is_empty() && room_left && flush != flate2::FlushCompress::Finish => return Ok(()),
            _ => {}
        }
    }
}

/// `block` cut into runs, each to be stored (`true`) or deflated, in order.
fn runs(block: &[u8]) -> Vec<(bool, std::ops::Range<usize>)> {
    let mut runs = Vec::new();
    let mut start = 0;
    let mut stored_from = None;
    let incompressible = block.chunks(PIECE).map(|piece| piece.len() == PIECE && looks_incompressible(piece));
    // A compressible mark past the end closes a stored run that reaches the end.
    for (index, incompressible) in incompressible.chain([false]).enumerate() {
        let offset = (index * PIECE).min(block.len());
        if incompressible {
            stored_from.get_or_insert(offset);
            continue;
        }
        if let Some(from) = stored_from.take()
            && offset - from >= MIN_STORED_RUN * PIECE
        {
            if from > start {
                runs.push((false, start..from));
            }
            runs.push((true, from..offset));
            start = offset;
        }
    }
    if start < block.len() {
        runs.push((false, start..block.len()));
    }
    runs
}

/// Whether a piece shows as many byte values as random data does.
fn looks_incompressible(piece: &[u8]) -> bool {
    let mut seen = [0u64; 4];
    let distinct = |seen: &[u64; 4]| seen.iter().map(|w| w.count_ones()).sum::<u32>();
    for (index, &byte) in piece.iter().enumerate() {
        seen[usize::from(byte >> 6)] |= 1 << (byte & 63);
        if index == 127 && distinct(&seen) < COMPRESSIBLE_EARLY {
            return false;
        }
    }
    distinct(&seen) >= INCOMPRESSIBLE_DISTINCT
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
        assert_eq!(gunzip(&compressed), input);

        let empty = ParGzEncoder::new(Vec::new(), 2).finish().unwrap();
        let mut nothing = Vec::new();
        flate2::read::MultiGzDecoder::new(&empty[..]).read_to_end(&mut nothing).unwrap();
        assert!(nothing.is_empty(), "an empty input is still a gzip file");
    }

    /// What gzip(1) makes of `compressed`.
    fn gunzip(compressed: &[u8]) -> Vec<u8> {
        let mut child = std::process::Command::new("gzip")
            .arg("-dc")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let compressed = compressed.to_vec();
        let feeder = std::thread::spawn(move || stdin.write_all(&compressed));
        let out = child.wait_with_output().unwrap();
        feeder.join().unwrap().unwrap();
        assert!(out.status.success());
        out.stdout
    }

    /// Pages as `bench/memhog.c` fills them: random and repeated words by turns.
    fn pages(count: usize) -> Vec<u8> {
        let mut state = 88172645463325252u64;
        let mut out = Vec::with_capacity(count * 4096);
        for page in 0..count {
            for _ in 0..512 {
                if page % 2 == 0 {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    out.extend_from_slice(&state.to_le_bytes());
                } else {
                    out.extend_from_slice(b"ckptckpt");
                }
            }
        }
        out
    }

    #[test]
    fn incompressible_runs_are_stored_and_every_reader_reads_them_back() {
        // A tar header's worth in front, as a page image's pages sit in an archive stream.
        let mut input = vec![b'h'; 512];
        input.extend(pages(2 * BLOCK / 4096 + 3));
        input.extend_from_slice(b"tail that is not a whole piece");
        let mut encoder = ParGzEncoder::new(Vec::new(), 2);
        encoder.write_all(&input).unwrap();
        let compressed = encoder.finish().unwrap();
        let mut output = Vec::new();
        flate2::read::MultiGzDecoder::new(&compressed[..]).read_to_end(&mut output).unwrap();
        assert!(output == input, "flate2 reads back what went in");
        assert!(gunzip(&compressed) == input, "gzip(1) too");
        // The random half goes in as it is, the repeated half in almost nothing.
        let ratio = compressed.len() as f64 / input.len() as f64;
        assert!((0.5..0.53).contains(&ratio), "{ratio}");

        for input in [pages(1)[..4096].to_vec(), vec![0u8; 100_000], pages(40)[..4096 * 39 + 100].to_vec()] {
            let member = compress(&input).unwrap();
            assert!(gunzip(&member) == input);
        }
    }

    #[test]
    fn only_runs_of_a_page_or_more_are_stored() {
        let random = &pages(1)[..4096];
        let text = vec![b'a'; 4096];
        assert!(looks_incompressible(&random[..PIECE]) && !looks_incompressible(&text[..PIECE]));
        let block = [&text[..], random, &text[..], &random[..PIECE * 7], &text[..]].concat();
        let runs = runs(&block);
        assert_eq!(runs, vec![(false, 0..4096), (true, 4096..8192), (false, 8192..block.len())]);
        assert_eq!(super::runs(random), vec![(true, 0..4096)]);
    }
}
