//! `loadtest loopback`: how many bytes per second this machine moves over one or
//! more loopback TCP connections, measured in the same run as the servers so a
//! RETR rate can be read as a share of it. A plain socket pump: one sender and
//! one receiver thread per stream, large writes, no protocol, no copies beyond
//! the kernel's.

use serde::Serialize;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Bytes per `write`/`read` call.
const CHUNK_BYTES: usize = 256 << 10;

/// The loopback result line.
#[derive(Debug, Clone, Serialize)]
pub struct LoopbackReport {
    pub scenario: &'static str,
    pub streams: usize,
    pub duration_s: f64,
    pub bytes: u64,
    pub mb_per_s: f64,
}

/// Pumps bytes through `streams` loopback connections for `duration`.
pub fn measure(streams: usize, duration: Duration) -> std::io::Result<LoopbackReport> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let stop = Arc::new(AtomicBool::new(false));
    let received = Arc::new(AtomicU64::new(0));
    let mut threads = Vec::new();
    for _ in 0..streams.max(1) {
        let mut sender = TcpStream::connect(addr)?;
        let (mut receiver, _) = listener.accept()?;
        let stop_tx = stop.clone();
        threads.push(std::thread::spawn(move || {
            let data = vec![b'x'; CHUNK_BYTES];
            while !stop_tx.load(Ordering::Relaxed) {
                if sender.write_all(&data).is_err() {
                    break;
                }
            }
        }));
        let counter = received.clone();
        threads.push(std::thread::spawn(move || {
            let mut buf = vec![0u8; CHUNK_BYTES];
            while let Ok(n) = receiver.read(&mut buf) {
                if n == 0 {
                    break;
                }
                counter.fetch_add(n as u64, Ordering::Relaxed);
            }
        }));
    }
    // Let the streams reach steady state, then count over the window only.
    std::thread::sleep(Duration::from_millis(200));
    let start = Instant::now();
    let before = received.load(Ordering::Relaxed);
    std::thread::sleep(duration);
    let bytes = received.load(Ordering::Relaxed) - before;
    let elapsed = start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    Ok(LoopbackReport {
        scenario: "loopback",
        streams: streams.max(1),
        duration_s: (elapsed * 100.0).round() / 100.0,
        bytes,
        mb_per_s: (bytes as f64 / elapsed / 1e6 * 100.0).round() / 100.0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moves_bytes() {
        let r = measure(1, Duration::from_millis(100)).unwrap();
        assert!(r.bytes > 0);
        assert!(r.mb_per_s > 0.0);
        assert_eq!(r.streams, 1);
    }
}
