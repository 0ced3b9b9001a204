//! The engine moves bytes and runs blocking work; it holds no protocol rules.
//!
//! - `shard.rs`: one thread per core, each with its own mio `Poll` (epoll),
//!   its own SO_REUSEPORT listener per address, a slab of connections and a
//!   timer heap.
//! - `conn.rs`: the one `Conn` type, which pumps bytes between a socket and
//!   a `protocol::Session` and streams bodies from the mmap.
//! - `worker.rs`: the crossbeam worker pool for hashing, scans and unlinks;
//!   results come back on the shard's channel and wake it through its Waker.
//! - `listen.rs`: binding the SO_REUSEPORT listeners with socket2.
//!
//! Cross-shard state is touched only at login and logout (the mailbox lock
//! table in `store::lock`).
#![forbid(unsafe_code)]

pub mod conn;
pub mod listen;
pub mod shard;
pub mod worker;

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use crate::auth::Passdb;
use crate::config::Config;
use crate::protocol::Limits;
use crate::store::MailLocation;

/// Why the server could not start.
#[derive(Debug)]
pub enum StartError {
    /// The configuration is unusable.
    Config(String),
    /// A listener could not be bound.
    Bind(std::net::SocketAddr, std::io::Error),
    /// The OS refused a poll, thread or signal handler.
    Os(std::io::Error),
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartError::Config(s) => f.write_str(s),
            StartError::Bind(addr, e) => write!(f, "cannot listen on {addr}: {e}"),
            StartError::Os(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for StartError {}

/// Runs the server until SIGTERM or SIGINT, then shuts down gracefully.
pub fn serve(config: &Config) -> Result<(), StartError> {
    config
        .validate()
        .map_err(|e| StartError::Config(e.to_string()))?;
    let passwd_file = config.auth.passwd_file.as_deref().expect("validated");
    let passdb = Passdb::open(passwd_file).map_err(|e| StartError::Config(e.to_string()))?;
    let location = MailLocation::parse(config.mail.location.as_deref().expect("validated"))
        .map_err(|e| StartError::Config(e.to_string()))?;
    if config.auth.apop && !passdb.has_plaintext() {
        tracing::warn!("APOP is enabled but no user has a plaintext password: nobody can use it");
    }

    let shards = config.shards();
    let (bound, listeners) = listen::bind_all(&config.server.listen, shards)?;
    for addr in &bound {
        tracing::info!(%addr, shards, "listening");
    }

    let ctx = Arc::new(worker::LoginContext { passdb, location });
    let (jobs, workers) = worker::start(config.workers(), ctx);
    let shared = Arc::new(shard::Shared {
        shutdown: AtomicBool::new(false),
        shutdown_grace: Duration::from_millis(config.limits.shutdown_grace_ms),
        limits: Limits {
            line_bytes_max: config.limits.line_bytes_max,
            bad_commands_max: config.limits.bad_commands_max,
            output_high_water_bytes: config.limits.output_buffer_bytes,
        },
        apop: config.auth.apop,
        hostname: hostname(),
    });

    let mut wakers = Vec::with_capacity(shards);
    let mut threads = Vec::with_capacity(shards);
    for (id, own) in listeners.into_iter().enumerate() {
        let settings = conn::Settings {
            shard: id,
            login_timeout: config.login_timeout(),
            autologout: config.autologout(),
            failure_delay: Duration::from_millis(config.auth.failure_delay_ms),
            output_buffer_bytes: config.limits.output_buffer_bytes,
            recv_buffer_bytes: config.limits.recv_buffer_bytes,
        };
        let shard = shard::Shard::new(id, own, jobs.clone(), settings, Arc::clone(&shared))
            .map_err(StartError::Os)?;
        wakers.push(shard.waker());
        let handle = thread::Builder::new()
            .name(format!("shard-{id}"))
            .spawn(move || shard.run())
            .map_err(StartError::Os)?;
        threads.push(handle);
    }
    drop(jobs);

    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
    ])
    .map_err(StartError::Os)?;
    let signal_handle = signals.handle();
    let watcher = thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if let Some(signal) = signals.forever().next() {
                tracing::info!(signal, "shutdown requested");
                shared.shutdown.store(true, Ordering::Relaxed);
                for w in &wakers {
                    let _ = w.wake();
                }
            }
        })
        .map_err(StartError::Os)?;

    for t in threads {
        let _ = t.join();
    }
    // Every shard has exited, so every job sender is gone: workers finish
    // what they hold (a QUIT's deletions included) and stop.
    for w in workers {
        let _ = w.join();
    }
    signal_handle.close();
    let _ = watcher.join();
    tracing::info!("stopped");
    Ok(())
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}
