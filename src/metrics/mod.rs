//! Operational metrics: per-shard counters and latency histograms, summed
//! when Prometheus scrapes `/metrics` (see [`http`]).
//!
//! The hot path shares nothing: each shard owns one [`ShardCells`], padded to
//! its own cache lines, and is its only writer, so a count is a relaxed load
//! and store on a line no other core writes (no `lock`-prefixed instruction,
//! no lock, no contention). The scrape thread only reads. Counters that a
//! shard bumps are monotonic; gauges are derived from two counters (open =
//! accepted − closed) so that no cell ever goes down.
//!
//! Histograms are fixed-bucket (see [`histogram`]) rather than hdrhistogram
//! behind a mutex: Prometheus exposes fixed `le` buckets anyway, and a
//! record is a bucket search plus two relaxed stores with no lock to take.
#![forbid(unsafe_code)]

pub mod histogram;
pub mod http;
mod render;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crossbeam_utils::CachePadded;

pub use histogram::Histogram;
pub use http::{MetricsServer, serve};

/// A monotonic counter with a single writer.
///
/// INVARIANT: only one thread (the owning shard) calls [`Counter::add`]; any
/// thread may [`Counter::get`]. Two writers would lose counts (never memory
/// safety), which is why `add` is a load and a store, not a `fetch_add`.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds `n`. Owning shard only.
    #[inline]
    pub fn add(&self, n: u64) {
        let v = self.0.load(Ordering::Relaxed);
        self.0.store(v.wrapping_add(n), Ordering::Relaxed);
    }

    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// How a login attempt ended (`shardpop_logins_total{result}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoginResult {
    /// Logged in: the maildrop is open.
    Ok,
    /// Wrong user or password.
    Failed,
    /// The credentials were right but the mailbox is held (`[IN-USE]`).
    InUse,
    /// Refused by the user's LOGIN-DELAY (RFC 2449) after the password was
    /// judged. Refusals before any login is tried (plaintext not allowed,
    /// an address blocked by penalties) are not login attempts.
    Rejected,
    /// The passdb or the store failed (`[SYS/TEMP]`).
    TempFail,
}

impl LoginResult {
    /// Every result, in the order they are rendered.
    pub const ALL: [LoginResult; 5] = [
        LoginResult::Ok,
        LoginResult::Failed,
        LoginResult::InUse,
        LoginResult::Rejected,
        LoginResult::TempFail,
    ];

    /// The `result` label value.
    pub fn label(self) -> &'static str {
        match self {
            LoginResult::Ok => "ok",
            LoginResult::Failed => "failed",
            LoginResult::InUse => "in_use",
            LoginResult::Rejected => "rejected",
            LoginResult::TempFail => "temp_fail",
        }
    }
}

/// How a TLS handshake ended (`shardpop_tls_handshakes_total{result}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsResult {
    /// The handshake completed.
    Ok,
    /// The peer sent something rustls refused, or closed mid-handshake.
    Failed,
}

impl TlsResult {
    /// Every result, in the order they are rendered.
    pub const ALL: [TlsResult; 2] = [TlsResult::Ok, TlsResult::Failed];

    /// The `result` label value.
    pub fn label(self) -> &'static str {
        match self {
            TlsResult::Ok => "ok",
            TlsResult::Failed => "failed",
        }
    }
}

/// One shard's cells. Written by that shard only (see [`Counter`]).
#[derive(Debug, Default)]
pub struct ShardCells {
    connections_accepted: Counter,
    connections_closed: Counter,
    logins: [Counter; LoginResult::ALL.len()],
    login_duration: Histogram,
    retr_messages: Counter,
    retr_octets: Counter,
    retr_duration: Histogram,
    deleted_messages: Counter,
    auth_penalties: Counter,
    tls_handshakes: [Counter; TlsResult::ALL.len()],
    tls_offloaded: Counter,
    logins_on_shard: Counter,
}

impl ShardCells {
    /// A connection was accepted (counted once, before any PROXY header or
    /// TLS handshake).
    pub fn connection_accepted(&self) {
        self.connections_accepted.add(1);
    }

    /// A connection that [`Self::connection_accepted`] counted is closed,
    /// however it ended.
    pub fn connection_closed(&self) {
        self.connections_closed.add(1);
    }

    /// A login attempt got its reply: USER/PASS, APOP, or the last SASL
    /// step, `elapsed` from the command to the reply (failure delay
    /// included, which is what the client waits).
    pub fn login(&self, result: LoginResult, elapsed: Duration) {
        self.logins[result as usize].add(1);
        self.login_duration.record(elapsed);
    }

    /// A RETR (or TOP) finished sending: `octets` on the wire (stuffed, with
    /// CRLFs and the final `.CRLF`), `elapsed` from the command to the last
    /// byte handed to the socket.
    pub fn retr(&self, octets: u64, elapsed: Duration) {
        self.retr_messages.add(1);
        self.retr_octets.add(octets);
        self.retr_duration.record(elapsed);
    }

    /// QUIT in TRANSACTION removed `n` messages from the store.
    pub fn deleted(&self, n: u64) {
        self.deleted_messages.add(n);
    }

    /// A failed login from an address brought it a penalty (a longer delay
    /// or a block).
    pub fn auth_penalty(&self) {
        self.auth_penalties.add(1);
    }

    /// A TLS handshake (implicit TLS or STLS) ended.
    pub fn tls_handshake(&self, result: TlsResult) {
        self.tls_handshakes[result as usize].add(1);
    }

    /// A ClientHello's answer (its costly signature) went to the worker
    /// pool instead of running on the shard.
    pub fn tls_offloaded(&self) {
        self.tls_offloaded.add(1);
    }

    /// A login was answered on its shard (`server.login_on_shard`), not
    /// by the worker pool.
    pub fn login_on_shard(&self) {
        self.logins_on_shard.add(1);
    }
}

/// Every shard's cells, and what the scrape reads besides them.
pub struct Metrics {
    shards: Box<[CachePadded<ShardCells>]>,
    engine: String,
    worker_queue: OnceLock<Box<dyn Fn() -> usize + Send + Sync>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("shards", &self.shards.len())
            .field("engine", &self.engine)
            .finish_non_exhaustive()
    }
}

impl Metrics {
    /// Cells for `shards` shards; `engine` is the backend actually running
    /// (`epoll` or `uring`), for `shardpop_build_info`.
    pub fn new(shards: usize, engine: &str) -> Arc<Metrics> {
        Arc::new(Metrics {
            shards: (0..shards).map(|_| CachePadded::default()).collect(),
            engine: engine.to_string(),
            worker_queue: OnceLock::new(),
        })
    }

    /// Shard `i`'s cells. Panics if `i` is not a shard: a programming error.
    pub fn shard(&self, i: usize) -> &ShardCells {
        &self.shards[i]
    }

    /// How many shards there are.
    pub fn shards(&self) -> usize {
        self.shards.len()
    }

    /// Tells the scrape how to read the worker pool's queue depth (e.g. the
    /// channel's `len()`). Called once at startup; later calls are ignored.
    pub fn watch_worker_queue(&self, depth: impl Fn() -> usize + Send + Sync + 'static) {
        // A second probe would mean two pools; the first one stays.
        let _ = self.worker_queue.set(Box::new(depth));
    }

    /// The whole exposition, in the Prometheus text format 0.0.4.
    pub fn render(&self) -> String {
        render::render(self)
    }
}

#[cfg(test)]
mod tests;
