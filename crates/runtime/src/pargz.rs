//! gzip across cores: the stream is cut into fixed 1 MiB blocks, each compressed on a worker
//! into its own gzip member, and the members are written in order. Concatenated members are
//! one valid gzip stream (RFC 1952; Go's reader, used by docker and containerd, reads them).
//!
//! The bytes depend only on the input and the level, never on the number of threads, so
//! digests stay reproducible. Input smaller than one block is a single member compressed on
//! the caller's thread, identical to a plain gzip stream. At most `threads + 1` blocks are in
//! flight, which bounds memory (about 2 MiB each, input and output).

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;

pub const BLOCK: usize = 1 << 20;

type Job = (Vec<u8>, mpsc::SyncSender<io::Result<Vec<u8>>>);

pub struct ParGz<W: Write> {
    out: W,
    level: flate2::Compression,
    threads: usize,
    buf: Vec<u8>,
    jobs: Option<mpsc::SyncSender<Job>>,
    workers: Vec<JoinHandle<()>>,
    pending: VecDeque<mpsc::Receiver<io::Result<Vec<u8>>>>,
}

pub fn member(data: &[u8], level: flate2::Compression) -> io::Result<Vec<u8>> {
    let mut enc = flate2::GzBuilder::new()
        .mtime(0)
        .write(Vec::with_capacity(data.len() / 2 + 64), level);
    enc.write_all(data)?;
    enc.finish()
}

impl<W: Write> ParGz<W> {
    pub fn new(out: W, level: flate2::Compression, threads: usize) -> Self {
        ParGz {
            out,
            level,
            threads: threads.max(1),
            buf: Vec::with_capacity(BLOCK),
            jobs: None,
            workers: Vec::new(),
            pending: VecDeque::new(),
        }
    }

    fn start_workers(&mut self) {
        let (tx, rx) = mpsc::sync_channel::<Job>(1);
        let rx = Arc::new(Mutex::new(rx));
        for _ in 0..self.threads {
            let rx = rx.clone();
            let level = self.level;
            self.workers.push(std::thread::spawn(move || loop {
                let job = match rx.lock() {
                    Ok(r) => r.recv(),
                    Err(_) => return,
                };
                let Ok((data, reply)) = job else { return };
                let _ = reply.send(member(&data, level));
            }));
        }
        self.jobs = Some(tx);
    }

    fn submit(&mut self, block: Vec<u8>) -> io::Result<()> {
        if self.jobs.is_none() {
            self.start_workers();
        }
        let (rtx, rrx) = mpsc::sync_channel(1);
        let sent = self.jobs.as_ref().map(|j| j.send((block, rtx)));
        if !matches!(sent, Some(Ok(()))) {
            return Err(io::Error::other("the gzip workers stopped"));
        }
        self.pending.push_back(rrx);
        while self.pending.len() > self.threads + 1 {
            self.drain_one()?;
        }
        Ok(())
    }

    fn drain_one(&mut self) -> io::Result<()> {
        if let Some(rx) = self.pending.pop_front() {
            let bytes = rx
                .recv()
                .map_err(|_| io::Error::other("a gzip worker died"))??;
            self.out.write_all(&bytes)?;
        }
        Ok(())
    }

    /// Compresses what is left, writes every member in order and returns the writer.
    pub fn finish(mut self) -> io::Result<W> {
        let rest = std::mem::take(&mut self.buf);
        if self.jobs.is_none() {
            // Never reached a whole block: one member, here.
            let m = member(&rest, self.level)?;
            self.out.write_all(&m)?;
        } else {
            if !rest.is_empty() {
                self.submit(rest)?;
            }
            while !self.pending.is_empty() {
                self.drain_one()?;
            }
        }
        self.jobs = None;
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
        Ok(self.out)
    }
}

impl<W: Write> Write for ParGz<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let mut rest = data;
        while !rest.is_empty() {
            let room = BLOCK - self.buf.len();
            let take = room.min(rest.len());
            self.buf.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if self.buf.len() == BLOCK {
                let block = std::mem::replace(&mut self.buf, Vec::with_capacity(BLOCK));
                self.submit(block)?;
            }
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        // Blocks are cut by size only, so flushing must not end a member early.
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn data(n: usize) -> Vec<u8> {
        let mut x: u32 = 1;
        (0..n)
            .map(|i| {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                if i % 7 == 0 {
                    (x >> 24) as u8
                } else {
                    b'a' + (i % 13) as u8
                }
            })
            .collect()
    }

    #[test]
    fn same_bytes_whatever_the_threads_and_write_sizes_and_it_decodes() {
        let input = data(3 * BLOCK + 12345);
        let level = flate2::Compression::new(6);
        let mut outs = Vec::new();
        for (threads, chunk) in [(1, 1000), (2, 65536), (4, 7)] {
            let mut z = ParGz::new(Vec::new(), level, threads);
            for c in input.chunks(chunk) {
                z.write_all(c).unwrap();
            }
            outs.push(z.finish().unwrap());
        }
        assert!(outs.iter().all(|o| o == &outs[0]));
        let mut back = Vec::new();
        flate2::read::MultiGzDecoder::new(&outs[0][..])
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, input);
    }

    #[test]
    fn small_input_is_one_plain_gzip_stream() {
        let input = data(1000);
        let level = flate2::Compression::new(6);
        let mut z = ParGz::new(Vec::new(), level, 4);
        z.write_all(&input).unwrap();
        assert_eq!(z.finish().unwrap(), member(&input, level).unwrap());
    }
}
