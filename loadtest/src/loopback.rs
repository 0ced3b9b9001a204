//! `loadtest loopback`: how many bytes per second this machine moves over one or
//! more loopback TCP connections, measured in the same run as the servers so a
//! RETR rate can be read as a share of it. A plain socket pump: one sender and
//! one receiver thread per stream, writes of one size, no protocol, no copies
//! beyond the kernel's.
//!
//! It also reports what the socket alone costs the sending side per MB: the
//! floor under a server's CPU per MB of RETR on this machine. On loopback the
//! sender's thread also runs the delivery into the receiver's socket (the
//! softirq runs in its context), as a server's does.

use serde::Serialize;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Bytes per `write`/`read` call unless told otherwise.
pub const WRITE_BYTES_DEFAULT: usize = 256 << 10;

/// The loopback result line.
#[derive(Debug, Clone, Serialize)]
pub struct LoopbackReport {
    pub scenario: &'static str,
    pub streams: usize,
    pub duration_s: f64,
    pub bytes: u64,
    pub mb_per_s: f64,
    /// Bytes per `write` call.
    pub write_bytes: usize,
    /// CPU time of the sending threads per MB (10^6 bytes) they wrote, from
    /// their whole run; `None` where the kernel keeps no per-thread schedstat.
    pub sender_cpu_ms_per_mb: Option<f64>,
    /// The same for the receiving threads.
    pub receiver_cpu_ms_per_mb: Option<f64>,
}

/// CPU time of one thread's run and the bytes it moved.
#[derive(Default, Clone, Copy)]
struct ThreadCost {
    cpu_ns: u64,
    bytes: u64,
}

/// CPU nanoseconds the calling thread has run: the first field of
/// `/proc/thread-self/schedstat`. Per thread, so the sending and receiving
/// sides of one process are told apart (`stats::process_cpu_s` reads the
/// whole process), and nanosecond-exact where `/proc/self/stat` counts ticks.
fn thread_cpu_ns() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    text.split_whitespace().next()?.parse().ok()
}

/// Runs `work` on this thread (whether or not its CPU time can be read) and
/// returns its CPU time with the bytes it moved.
fn costed(work: impl FnOnce() -> u64) -> Option<ThreadCost> {
    let before = thread_cpu_ns();
    let bytes = work();
    Some(ThreadCost {
        cpu_ns: thread_cpu_ns()?.saturating_sub(before?),
        bytes,
    })
}

/// Milliseconds of CPU per MB over a set of threads.
fn ms_per_mb(costs: &[Option<ThreadCost>]) -> Option<f64> {
    let mut total = ThreadCost::default();
    for cost in costs {
        let cost = (*cost)?;
        total.cpu_ns += cost.cpu_ns;
        total.bytes += cost.bytes;
    }
    (total.bytes > 0).then(|| {
        let ms = total.cpu_ns as f64 / 1e6 / (total.bytes as f64 / 1e6);
        (ms * 1000.0).round() / 1000.0
    })
}

/// Pumps bytes through `streams` loopback connections for `duration`, in
/// writes of `write_bytes`.
pub fn measure(
    streams: usize,
    duration: Duration,
    write_bytes: usize,
) -> std::io::Result<LoopbackReport> {
    let write_bytes = write_bytes.max(1);
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let stop = Arc::new(AtomicBool::new(false));
    let received = Arc::new(AtomicU64::new(0));
    let mut senders = Vec::new();
    let mut receivers = Vec::new();
    for _ in 0..streams.max(1) {
        let mut sender = TcpStream::connect(addr)?;
        let (mut receiver, _) = listener.accept()?;
        let stop_tx = stop.clone();
        senders.push(std::thread::spawn(move || {
            costed(|| {
                let data = vec![b'x'; write_bytes];
                let mut sent = 0u64;
                while !stop_tx.load(Ordering::Relaxed) {
                    if sender.write_all(&data).is_err() {
                        break;
                    }
                    sent += data.len() as u64;
                }
                sent
            })
        }));
        let counter = received.clone();
        receivers.push(std::thread::spawn(move || {
            costed(|| {
                let mut buf = vec![0u8; write_bytes];
                let mut got = 0u64;
                while let Ok(n) = receiver.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    got += n as u64;
                    counter.fetch_add(n as u64, Ordering::Relaxed);
                }
                got
            })
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
    let join = |threads: Vec<std::thread::JoinHandle<Option<ThreadCost>>>| {
        threads
            .into_iter()
            .map(|t| t.join().ok().flatten())
            .collect::<Vec<_>>()
    };
    // Senders first: a receiver returns once its sender's socket closes.
    let sent = join(senders);
    let got = join(receivers);
    Ok(LoopbackReport {
        scenario: "loopback",
        streams: streams.max(1),
        duration_s: (elapsed * 100.0).round() / 100.0,
        bytes,
        mb_per_s: (bytes as f64 / elapsed / 1e6 * 100.0).round() / 100.0,
        write_bytes,
        sender_cpu_ms_per_mb: ms_per_mb(&sent),
        receiver_cpu_ms_per_mb: ms_per_mb(&got),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moves_bytes() {
        let r = measure(1, Duration::from_millis(100), 64 << 10).unwrap();
        assert!(r.bytes > 0);
        assert!(r.mb_per_s > 0.0);
        assert_eq!(r.streams, 1);
        assert_eq!(r.write_bytes, 64 << 10);
        // This kernel keeps schedstat; moving bytes costs some CPU, and no
        // machine moves a MB in under a microsecond of it.
        let sender = r.sender_cpu_ms_per_mb.expect("schedstat is readable");
        let receiver = r.receiver_cpu_ms_per_mb.expect("schedstat is readable");
        assert!(sender > 0.001 && sender < 1000.0, "{sender}");
        assert!(receiver > 0.001 && receiver < 1000.0, "{receiver}");
    }

    #[test]
    fn cost_sums_threads_and_needs_every_one() {
        let a = Some(ThreadCost {
            cpu_ns: 1_000_000,
            bytes: 1_000_000,
        });
        let b = Some(ThreadCost {
            cpu_ns: 3_000_000,
            bytes: 1_000_000,
        });
        assert_eq!(ms_per_mb(&[a, b]), Some(2.0));
        assert_eq!(ms_per_mb(&[a, None]), None);
        assert_eq!(ms_per_mb(&[]), None);
    }
}
