//! Defences per remote address, shared by all shards (Dovecot's anvil is the
//! model): a failed-login delay that doubles with each failure, a temporary
//! refusal of an address past a failure budget (escalating on repeat), and an
//! optional cap on concurrent connections per address. Trusted networks are
//! exempt from all of it.
//!
//! Cross-shard state touched only at accept (when something is blocked or a
//! connection cap is set), at a failed login and at close; the table is split
//! into independently locked parts so shards rarely meet on a lock.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::config::Auth;

const PARTS: usize = 32;
/// A part holding more addresses than this drops the ones with nothing to
/// remember (bounds memory under a spray of source addresses).
const PART_ENTRIES_SWEEP: usize = 4096;

/// Limits and the trusted list, from `[auth]` and `[limits]`.
#[derive(Clone, Debug)]
pub struct GuardConfig {
    /// First failed-login delay; each further failure doubles it.
    pub delay_base: Duration,
    /// Cap on the delay.
    pub delay_max: Duration,
    /// Failures before the address is refused.
    pub failures_before_block: u32,
    /// First refusal; doubles on repeat.
    pub block: Duration,
    /// Cap on a refusal.
    pub block_max: Duration,
    /// Failures older than this are forgotten.
    pub window: Duration,
    /// Concurrent connections per address; 0 = no cap.
    pub connections_max: u32,
    /// Exempt networks.
    pub trusted: Vec<ipnet::IpNet>,
}

impl GuardConfig {
    /// From the configuration sections.
    pub fn new(auth: &Auth, connections_max: u32) -> GuardConfig {
        GuardConfig {
            delay_base: Duration::from_millis(auth.failure_delay_ms),
            delay_max: Duration::from_millis(auth.penalty_delay_max_ms),
            failures_before_block: auth.penalty_failures_before_block.max(1),
            block: Duration::from_millis(auth.penalty_block_ms),
            block_max: Duration::from_millis(auth.penalty_block_max_ms),
            window: Duration::from_millis(auth.penalty_window_ms),
            connections_max,
            trusted: auth.trusted_networks.clone(),
        }
    }
}

#[derive(Default)]
struct Address {
    failures: u32,
    last_failure: Option<Instant>,
    blocked_until: Option<Instant>,
    /// Refusals so far, for the escalation.
    blocks: u32,
    connections: u32,
}

impl Address {
    /// Drops what is too old to matter; returns true when this ended a block.
    fn forget_old(&mut self, now: Instant, window: Duration) -> bool {
        if self
            .last_failure
            .is_some_and(|t| now.duration_since(t) >= window)
        {
            self.failures = 0;
            self.last_failure = None;
            if self.blocked_until.is_none_or(|until| until <= now) {
                self.blocks = 0;
            }
        }
        if self.blocked_until.is_some_and(|until| until <= now) {
            self.blocked_until = None;
            return true;
        }
        false
    }

    fn is_idle(&self) -> bool {
        self.failures == 0
            && self.blocked_until.is_none()
            && self.connections == 0
            && self.blocks == 0
    }
}

/// Whether a new connection may proceed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Serve it. `counted`: it holds a slot of the per-address cap and must
    /// be released with [`Guard::release`].
    Admit {
        /// Holds a per-address slot.
        counted: bool,
    },
    /// The address is refused until the given instant.
    Blocked,
    /// The address already has `connections_max` connections.
    TooManyConnections,
}

/// The per-address table.
pub struct Guard {
    /// Read per accept and per failed login; written by SIGHUP.
    config: parking_lot::RwLock<Arc<GuardConfig>>,
    parts: Vec<Mutex<HashMap<IpAddr, Address>>>,
    hasher: RandomState,
    /// Addresses currently refused; when 0, accepts skip the table.
    blocked: AtomicUsize,
}

impl Guard {
    /// An empty table.
    pub fn new(config: GuardConfig) -> Guard {
        Guard {
            config: parking_lot::RwLock::new(Arc::new(config)),
            parts: (0..PARTS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
            blocked: AtomicUsize::new(0),
        }
    }

    /// New limits for what happens next (SIGHUP); the addresses' counts
    /// and blocks so far stay.
    pub fn reconfigure(&self, config: GuardConfig) {
        *self.config.write() = Arc::new(config);
    }

    fn config(&self) -> Arc<GuardConfig> {
        Arc::clone(&self.config.read())
    }

    fn part(&self, ip: &IpAddr) -> &Mutex<HashMap<IpAddr, Address>> {
        &self.parts[self.hasher.hash_one(ip) as usize % PARTS]
    }

    /// Whether `ip` is in a trusted network.
    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.config
            .read()
            .trusted
            .iter()
            .any(|net| net.contains(&ip))
    }

    /// Called at accept.
    pub fn admit(&self, ip: IpAddr, now: Instant) -> Admission {
        let ip = ip.to_canonical();
        let config = self.config();
        let capped = config.connections_max > 0;
        if (!capped && self.blocked.load(Ordering::Relaxed) == 0) || self.is_trusted(ip) {
            return Admission::Admit { counted: false };
        }
        let mut part = self.part(&ip).lock();
        let entry = part.entry(ip).or_default();
        if entry.forget_old(now, config.window) {
            self.blocked.fetch_sub(1, Ordering::Relaxed);
        }
        if entry.blocked_until.is_some() {
            return Admission::Blocked;
        }
        if capped {
            if entry.connections >= config.connections_max {
                return Admission::TooManyConnections;
            }
            entry.connections += 1;
            return Admission::Admit { counted: true };
        }
        if entry.is_idle() {
            part.remove(&ip);
        }
        Admission::Admit { counted: false }
    }

    /// A counted connection closed.
    pub fn release(&self, ip: IpAddr) {
        let ip = ip.to_canonical();
        let mut part = self.part(&ip).lock();
        if let Some(entry) = part.get_mut(&ip) {
            entry.connections = entry.connections.saturating_sub(1);
            if entry.is_idle() {
                part.remove(&ip);
            }
        }
    }

    /// Records a failed login; returns how long to hold its answer. May put
    /// the address on the refused list (logged).
    pub fn login_failed(&self, ip: IpAddr, now: Instant) -> Duration {
        let ip = ip.to_canonical();
        let config = self.config();
        if self.is_trusted(ip) {
            return config.delay_base;
        }
        let mut part = self.part(&ip).lock();
        if part.len() > PART_ENTRIES_SWEEP {
            let window = config.window;
            part.retain(|_, a| {
                if a.forget_old(now, window) {
                    self.blocked.fetch_sub(1, Ordering::Relaxed);
                }
                !a.is_idle()
            });
        }
        let entry = part.entry(ip).or_default();
        if entry.forget_old(now, config.window) {
            self.blocked.fetch_sub(1, Ordering::Relaxed);
        }
        entry.failures += 1;
        entry.last_failure = Some(now);
        let doublings = (entry.failures - 1).min(16);
        let delay = config
            .delay_base
            .saturating_mul(1 << doublings)
            .min(config.delay_max);
        if entry.failures >= config.failures_before_block && entry.blocked_until.is_none() {
            let block = config
                .block
                .saturating_mul(1 << entry.blocks.min(16))
                .min(config.block_max);
            entry.blocked_until = Some(now + block);
            entry.blocks += 1;
            entry.failures = 0;
            self.blocked.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                "pop3 address blocked: rip={ip}, seconds={}, times={}",
                block.as_secs(),
                entry.blocks
            );
        }
        delay
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> GuardConfig {
        GuardConfig {
            delay_base: Duration::from_millis(100),
            delay_max: Duration::from_millis(700),
            failures_before_block: 4,
            block: Duration::from_secs(10),
            block_max: Duration::from_secs(25),
            window: Duration::from_secs(60),
            connections_max: 0,
            trusted: vec!["10.0.0.0/8".parse().unwrap()],
        }
    }

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 2));

    #[test]
    fn delays_double_up_to_the_cap_per_address() {
        let g = Guard::new(GuardConfig {
            failures_before_block: 100,
            ..config()
        });
        let t = Instant::now();
        let delays: Vec<u64> = (0..5)
            .map(|_| g.login_failed(A, t).as_millis() as u64)
            .collect();
        assert_eq!(delays, [100, 200, 400, 700, 700]);
        assert_eq!(
            g.login_failed(B, t),
            Duration::from_millis(100),
            "other addresses are unaffected"
        );
        // After the window, the address starts afresh.
        assert_eq!(
            g.login_failed(A, t + Duration::from_secs(61)),
            Duration::from_millis(100)
        );
    }

    #[test]
    fn budget_blocks_then_escalates_then_expires() {
        let g = Guard::new(config());
        let t = Instant::now();
        assert_eq!(g.admit(A, t), Admission::Admit { counted: false });
        for _ in 0..4 {
            g.login_failed(A, t);
        }
        assert_eq!(g.admit(A, t), Admission::Blocked);
        assert_eq!(g.admit(B, t), Admission::Admit { counted: false });
        let after_first = t + Duration::from_secs(11);
        assert_eq!(g.admit(A, after_first), Admission::Admit { counted: false });
        for _ in 0..4 {
            g.login_failed(A, after_first);
        }
        // Second block: 20 s.
        assert_eq!(
            g.admit(A, after_first + Duration::from_secs(19)),
            Admission::Blocked
        );
        assert_eq!(
            g.admit(A, after_first + Duration::from_secs(21)),
            Admission::Admit { counted: false }
        );
        assert_eq!(g.blocked.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn trusted_networks_are_never_blocked() {
        let g = Guard::new(config());
        let t = Instant::now();
        let proxy: IpAddr = "10.1.2.3".parse().unwrap();
        for _ in 0..50 {
            assert_eq!(g.login_failed(proxy, t), Duration::from_millis(100));
        }
        assert_eq!(g.admit(proxy, t), Admission::Admit { counted: false });
        let mapped: IpAddr = "::ffff:10.9.9.9".parse().unwrap();
        assert!(g.is_trusted(mapped));
    }

    #[test]
    fn connection_cap_counts_and_releases() {
        let g = Guard::new(GuardConfig {
            connections_max: 2,
            ..config()
        });
        let t = Instant::now();
        assert_eq!(g.admit(A, t), Admission::Admit { counted: true });
        assert_eq!(g.admit(A, t), Admission::Admit { counted: true });
        assert_eq!(g.admit(A, t), Admission::TooManyConnections);
        assert_eq!(g.admit(B, t), Admission::Admit { counted: true });
        g.release(A);
        assert_eq!(g.admit(A, t), Admission::Admit { counted: true });
        let proxy: IpAddr = "10.0.0.7".parse().unwrap();
        for _ in 0..5 {
            assert_eq!(g.admit(proxy, t), Admission::Admit { counted: false });
        }
    }
}
