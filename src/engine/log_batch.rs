//! Log lines written to stderr in batches on shard threads: a login session
//! logs two lines, and one `write(2)` per line was ~4 % of a login's server
//! CPU (`scripts/profile-server login`, docs/benchmarks.md). A shard gathers its lines during a loop turn and writes them before
//! it waits again (so a line is late by one turn at most); other threads
//! write each line at once.
//!
//! Batches end at line boundaries and stay within `PIPE_BUF`, so lines from
//! several threads never interleave inside a line, on a pipe (journald's
//! stdout stream) as on a file.
#![forbid(unsafe_code)]

use std::cell::RefCell;
use std::io::{self, Write};

/// `PIPE_BUF` on Linux: a write of at most this much to a pipe is atomic.
const BATCH_BYTES_MAX: usize = 4096;

/// A thread's pending lines; written when dropped too, so a thread that
/// ends (or unwinds) loses none.
struct Batch(Vec<u8>);

impl Drop for Batch {
    fn drop(&mut self) {
        write_out(&mut self.0);
    }
}

thread_local! {
    static BATCH: RefCell<Option<Batch>> = const { RefCell::new(None) };
}

fn write_out(pending: &mut Vec<u8>) {
    if !pending.is_empty() {
        // Nowhere to report a failing stderr; tracing drops the line too.
        let _ = io::stderr().lock().write_all(pending);
        pending.clear();
    }
}

/// From now on, this thread's log lines wait for [`flush`].
pub fn batch_this_thread() {
    BATCH.with(|b| {
        b.borrow_mut()
            .get_or_insert_with(|| Batch(Vec::with_capacity(BATCH_BYTES_MAX)));
    });
}

/// Writes this thread's pending lines.
pub fn flush() {
    BATCH.with(|b| {
        if let Some(batch) = b.borrow_mut().as_mut() {
            write_out(&mut batch.0);
        }
    });
}

/// The writer for `tracing_subscriber::fmt().with_writer(..)`: it receives
/// one whole formatted event per `write`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Stderr;

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Stderr {
    type Writer = Stderr;

    fn make_writer(&'a self) -> Stderr {
        Stderr
    }
}

impl Write for Stderr {
    fn write(&mut self, line: &[u8]) -> io::Result<usize> {
        let batched = BATCH.with(|b| {
            let Ok(mut guard) = b.try_borrow_mut() else {
                return false; // logging from inside a flush: write directly
            };
            let Some(batch) = guard.as_mut() else {
                return false;
            };
            if batch.0.len() + line.len() > BATCH_BYTES_MAX {
                write_out(&mut batch.0);
            }
            if line.len() > BATCH_BYTES_MAX {
                return false;
            }
            batch.0.extend_from_slice(line);
            true
        });
        if !batched {
            io::stderr().lock().write_all(line)?;
        }
        Ok(line.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending() -> usize {
        BATCH.with(|b| b.borrow().as_ref().map_or(0, |batch| batch.0.len()))
    }

    #[test]
    fn lines_wait_for_the_flush_and_batches_stay_under_pipe_buf() {
        std::thread::spawn(|| {
            let mut w = Stderr;
            // Not batched yet: written at once.
            w.write_all(b"direct line\n").unwrap();
            assert_eq!(pending(), 0);
            batch_this_thread();
            w.write_all(b"first\n").unwrap();
            w.write_all(b"second\n").unwrap();
            assert_eq!(pending(), 13);
            flush();
            assert_eq!(pending(), 0);
            let line = [b'x'; 1000];
            for _ in 0..5 {
                w.write_all(&line).unwrap();
                assert!(pending() <= BATCH_BYTES_MAX);
            }
            assert_eq!(pending(), 1000, "the fifth line started a new batch");
            // A line longer than a batch goes out alone, after what waited.
            w.write_all(&[b'y'; BATCH_BYTES_MAX + 1]).unwrap();
            assert_eq!(pending(), 0);
        })
        .join()
        .unwrap();
    }
}
