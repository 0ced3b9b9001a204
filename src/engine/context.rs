//! The contexts a connection is served in, one per lifetime:
//! - [`Process`]: what lives as long as the process and every shard reads
//!   (limits, the per-address guard, the TLS certificates, the worker pool's
//!   queue, the shutdown flag);
//! - [`Local`]: a shard's own part (its number, its return address);
//! - the connection itself (`conn/`), with [`Cx`] bundling the two above
//!   and the time for one call.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use parking_lot::RwLock;
use std::time::{Duration, Instant};

use super::guard::Guard;
use super::worker::{Jobs, ShardPort};
use crate::config::{Config, PlaintextAuth};
use crate::metrics::{Metrics, ShardCells};
use crate::protocol::{Limits, Offer, Session};
use crate::tls::TlsReloader;

/// What SIGHUP may change for new connections and sessions (a running
/// session keeps the limits it started with).
#[derive(Clone, Debug)]
pub struct Settings {
    /// Protocol limits for every session.
    pub limits: Limits,
    /// Whether APOP challenges go in the greeting.
    pub apop: bool,
    /// Where plaintext logins are allowed.
    pub plaintext_auth: PlaintextAuth,
    /// Idle time before login.
    pub login_timeout: Duration,
    /// Idle time after login.
    pub autologout: Duration,
    /// Output bound per connection.
    pub output_buffer_bytes: usize,
    /// Receive buffer per connection.
    pub recv_buffer_bytes: usize,
    /// How long sessions may finish after shutdown starts.
    pub shutdown_grace: Duration,
    /// Peers that must begin with a PROXY protocol header.
    pub proxy_from: Vec<ipnet::IpNet>,
    /// A client that spoke TLS to the proxy (PP2_TYPE_SSL) counts as TLS
    /// for the plaintext-auth policy.
    pub proxy_ssl_counts_as_tls: bool,
    /// How long a proxy may take to send its whole header.
    pub proxy_header_timeout: Duration,
    /// `[auth.oauth]` is set: OAUTHBEARER and XOAUTH2 are offered.
    pub oauth: bool,
}

impl Settings {
    /// The settings of `config` (already validated).
    pub fn new(config: &Config) -> Settings {
        Settings {
            limits: Limits {
                line_bytes_max: config.limits.line_bytes_max,
                bad_commands_max: config.limits.bad_commands_max,
                commands_before_login_max: config.limits.commands_before_login_max,
                output_high_water_bytes: config.limits.output_buffer_bytes,
                policy: config.pop3.policy(),
                // A SASL response may fill the receive buffer, no more.
                sasl_line_bytes_max: config.limits.recv_buffer_bytes,
                seen_on_retr: !config.pop3.no_flag_updates,
            },
            apop: config.auth.apop,
            plaintext_auth: config.auth.plaintext_auth,
            login_timeout: config.login_timeout(),
            autologout: config.autologout(),
            output_buffer_bytes: config.limits.output_buffer_bytes,
            recv_buffer_bytes: config.limits.recv_buffer_bytes,
            shutdown_grace: Duration::from_millis(config.limits.shutdown_grace_ms),
            proxy_from: config.server.proxy_from.clone(),
            proxy_ssl_counts_as_tls: config.server.proxy_ssl_counts_as_tls,
            proxy_header_timeout: Duration::from_millis(config.limits.proxy_header_timeout_ms),
            oauth: config.auth.oauth.is_some(),
        }
    }

    /// Whether a peer must begin with a PROXY header (an IPv4 peer on an
    /// IPv6 socket counts by its IPv4 address).
    pub fn is_proxy(&self, peer: std::net::IpAddr) -> bool {
        let peer = peer.to_canonical();
        self.proxy_from.iter().any(|net| net.contains(&peer))
    }

    /// What a connection from `peer` is offered: plaintext logins where the
    /// policy allows them (`tls`: TLS to us; `proxy_tls`: TLS to the proxy,
    /// when the operator counts it), STLS where a certificate exists
    /// (`certificate`) and TLS is not on.
    pub fn offer(&self, peer: SocketAddr, tls: bool, proxy_tls: bool, certificate: bool) -> Offer {
        let secured = tls || (proxy_tls && self.proxy_ssl_counts_as_tls);
        Offer {
            plaintext_auth: self.plaintext_auth.allows(secured, peer.ip()),
            stls: !tls && certificate,
            oauth: self.oauth,
        }
    }
}

/// The process-wide context, shared by every shard behind an `Arc`.
pub struct Process {
    /// Host name for APOP challenges.
    pub hostname: String,
    /// Per-address defences.
    pub guard: Guard,
    /// Certificates for STLS and implicit TLS; `None` when none is configured.
    pub tls: Option<Arc<TlsReloader>>,
    /// The worker pool's bounded queue.
    pub jobs: Jobs,
    /// What logins check against (the workers' context), for the logins a
    /// shard answers itself ([`super::worker::login_now`]).
    pub logins: Arc<super::worker::Logins>,
    /// Per-shard counters, summed on scrape.
    pub metrics: Arc<Metrics>,
    /// The reloadable settings and their generation (bumped by SIGHUP);
    /// each shard keeps its own `Arc` and looks at the generation once per
    /// loop turn, so no lock is taken per connection.
    settings: RwLock<Arc<Settings>>,
    generation: AtomicU64,
    /// Set by the signal thread.
    shutdown: AtomicBool,
}

impl Process {
    /// The context for `config` (already validated), its guard and pool.
    pub fn new(
        config: &Config,
        guard: Guard,
        tls: Option<Arc<TlsReloader>>,
        jobs: Jobs,
        logins: Arc<super::worker::Logins>,
        metrics: Arc<Metrics>,
    ) -> Process {
        Process {
            hostname: hostname(),
            guard,
            tls,
            jobs,
            logins,
            metrics,
            settings: RwLock::new(Arc::new(Settings::new(config))),
            generation: AtomicU64::new(0),
            shutdown: AtomicBool::new(false),
        }
    }

    /// The current settings and their generation.
    pub fn settings(&self) -> (Arc<Settings>, u64) {
        let settings = self.settings.read();
        (
            Arc::clone(&settings),
            self.generation.load(Ordering::Acquire),
        )
    }

    /// The generation of the current settings (one relaxed-cost load).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// New settings for new connections (SIGHUP).
    pub fn replace_settings(&self, settings: Settings) {
        let mut current = self.settings.write();
        *current = Arc::new(settings);
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// Asks every shard to shut down (they also need a wake).
    pub fn request_shutdown(&self) {
        self.shutdown.store(true, Ordering::Relaxed);
    }

    /// True once shutdown was requested.
    pub fn shutting_down(&self) -> bool {
        self.shutdown.load(Ordering::Relaxed)
    }

    /// A new session for connection `id` of `shard`.
    pub fn session(&self, settings: &Settings, shard: usize, id: u64, offer: Offer) -> Session {
        let challenge = settings.apop.then(|| {
            format!("<{}.{shard}.{id}@{}>", std::process::id(), self.hostname).into_boxed_str()
        });
        Session::new(settings.limits, offer, challenge)
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

/// What a shard's connections share: its number and its return address for
/// pool results. Lives as long as the shard.
pub struct Local {
    /// The shard's number, for logs and APOP challenges.
    pub shard: usize,
    /// Where the pool answers this shard.
    pub port: Arc<ShardPort>,
}

/// Everything a connection call needs besides the connection itself: made
/// per call from the two longer-lived contexts, so a connection can be
/// borrowed from the shard's slab at the same time.
pub struct Cx<'a> {
    /// Process-wide guard, pool, TLS, metrics.
    pub process: &'a Process,
    /// The settings this shard runs with now.
    pub settings: &'a Settings,
    /// The shard's own part.
    pub local: &'a Local,
    /// Now, read once per event batch.
    pub now: Instant,
    /// The connection's slot in the shard.
    pub slot: usize,
}

impl Local {
    /// This shard's metric cells.
    pub fn cells<'a>(&self, process: &'a Process) -> &'a ShardCells {
        process.metrics.shard(self.shard)
    }
}

impl<'a> Cx<'a> {
    /// This shard's metric cells.
    pub fn cells(&self) -> &'a ShardCells {
        self.process.metrics.shard(self.local.shard)
    }

    /// The context for a call on the connection in `slot` at `now`.
    pub fn new(
        process: &'a Process,
        settings: &'a Settings,
        local: &'a Local,
        now: Instant,
        slot: usize,
    ) -> Cx<'a> {
        Cx {
            process,
            settings,
            local,
            now,
            slot,
        }
    }
}
