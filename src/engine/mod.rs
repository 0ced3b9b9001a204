//! The engine moves bytes and runs blocking work; it holds no protocol rules.
//!
//! - `shard.rs`: the shard core, one per thread: connections, timers,
//!   admission, pool completions, expiry and graceful shutdown, written once
//!   over the [`backend::Backend`] contract (`backend.rs`).
//! - `epoll.rs` (mio) and `uring/` (io_uring): the two backends; they only
//!   move bytes and import the core's contract, never each other.
//! - `conn/`: the one `Conn` both backends serve, split by concern
//!   (byte plumbing and TLS, effect dispatch, body streaming).
//! - `context.rs`: one context per lifetime (process, shard, call).
//! - `worker.rs`: the bounded worker pool for hashing, scans and unlinks;
//!   results come back on the shard's bounded channel and wake it.
//! - `listen.rs`: binding the SO_REUSEPORT listeners with socket2.
//! - `waker.rs`: the one wake trait both backends implement.
//! - `error.rs`: why a connection ends, typed so the log level follows.
//!
//! The backend is chosen once at startup (`server.engine`, `--engine`):
//! `auto` probes io_uring and falls back to epoll with one log line.
//!
//! Cross-shard state is touched only at login and logout (the mailbox lock
//! table in `store::lock`).
// `deny`, not `forbid`: `uring/` opts out; every other file forbids it.
#![deny(unsafe_code)]

pub mod backend;
pub mod body;
pub mod buffer;
pub mod conn;
pub mod context;
pub mod epoll;
pub mod error;
pub mod guard;
pub mod listen;
pub mod log_batch;
pub mod pool;
pub mod privilege;
mod reload;
pub mod shard;
pub mod timer;
pub mod uring;
pub mod waker;
pub mod worker;

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::thread;

use crate::auth::{AuthError, Passdb};
use crate::config::{Config, ConfigError, Engine};
use crate::store::{FormatError, LocationError, MailLocation};
use crate::tls::TlsError;
use context::{Local, Process};

/// Why the server could not start; each cause keeps its source.
#[derive(Debug)]
pub enum StartError {
    /// The configuration does not validate.
    Config(ConfigError),
    /// The passdb could not be loaded.
    Passdb(AuthError),
    /// The SCRAM secret file could not be read.
    ScramSecret {
        /// The file.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// The SCRAM secret file holds fewer than 16 bytes.
    ScramSecretShort(PathBuf),
    /// The mail location is not usable.
    Location(LocationError),
    /// The UIDL format is not usable.
    UidlFormat(FormatError),
    /// The TLS certificate or key is not usable.
    Tls(TlsError),
    /// A listener could not be bound.
    Bind(std::net::SocketAddr, std::io::Error),
    /// Root privileges could not be dropped as configured.
    Privilege(privilege::PrivilegeError),
    /// The OS refused a poll, ring, thread or signal handler.
    Os(std::io::Error),
    /// `--engine uring` was asked for and the kernel refuses io_uring.
    Uring(uring::Refused),
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartError::Config(e) => write!(f, "{e}"),
            StartError::Passdb(e) => write!(f, "{e}"),
            StartError::ScramSecret { path, source } => {
                write!(f, "cannot read {}: {source}", path.display())
            }
            StartError::ScramSecretShort(path) => write!(
                f,
                "{}: a SCRAM secret needs at least 16 bytes",
                path.display()
            ),
            StartError::Location(e) => write!(f, "{e}"),
            StartError::UidlFormat(e) => write!(f, "{e}"),
            StartError::Tls(e) => write!(f, "{e}"),
            StartError::Bind(addr, e) => write!(f, "cannot listen on {addr}: {e}"),
            StartError::Privilege(e) => write!(f, "{e}"),
            StartError::Os(e) => write!(f, "{e}"),
            StartError::Uring(why) => write!(
                f,
                "--engine uring: io_uring is not usable: {why} (use --engine auto or epoll)"
            ),
        }
    }
}

impl std::error::Error for StartError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StartError::Config(e) => Some(e),
            StartError::Passdb(e) => Some(e),
            StartError::ScramSecret { source, .. } => Some(source),
            StartError::Location(e) => Some(e),
            StartError::UidlFormat(e) => Some(e),
            StartError::Tls(e) => Some(e),
            StartError::Bind(_, e) | StartError::Os(e) => Some(e),
            StartError::Privilege(e) => Some(e),
            StartError::ScramSecretShort(_) | StartError::Uring(_) => None,
        }
    }
}

/// Runs the server until SIGTERM or SIGINT, then shuts down gracefully.
pub fn serve(config: &Config) -> Result<(), StartError> {
    serve_with(config, |_| {})
}

/// Loads the passdb (with the operator's SCRAM secret, if any).
fn load_passdb(config: &Config) -> Result<Passdb, StartError> {
    let mut passdb = Passdb::from_config(config).map_err(StartError::Passdb)?;
    if let Some(path) = &config.auth.scram_secret_file {
        let secret = std::fs::read(path).map_err(|source| StartError::ScramSecret {
            path: path.clone(),
            source,
        })?;
        if secret.len() < 16 {
            return Err(StartError::ScramSecretShort(path.clone()));
        }
        passdb = passdb.with_scram_secret(&secret);
    }
    if config.auth.apop && !passdb.has_plaintext() {
        tracing::warn!("APOP is enabled but no user has a plaintext password: nobody can use it");
    }
    Ok(passdb)
}

/// Called once every listener is bound, with the bound addresses.
pub type ReadyHook<'a> = Box<dyn FnOnce(&[listen::Bound]) + 'a>;
/// Reads the configuration again (SIGHUP).
pub type ReloadHook = Box<dyn Fn() -> Result<Config, String> + Send>;
/// Applies a log filter (SIGHUP).
pub type LogLevelHook = Box<dyn Fn(&str) -> Result<(), String> + Send>;

/// What a caller of [`serve_hooked`] plugs in.
pub struct Hooks<'a> {
    /// Every listener is bound (port 0 resolved).
    pub ready: ReadyHook<'a>,
    /// SIGHUP: the configuration as it reads now (the file, flags over it),
    /// validated; `None`: SIGHUP reloads the TLS files only.
    pub reload: Option<ReloadHook>,
    /// Applies a changed `log.level` (SIGHUP).
    pub log_level: Option<LogLevelHook>,
    /// Shutdown has started (SIGTERM/SIGINT): e.g. systemd's STOPPING=1.
    pub stopping: Option<Box<dyn FnOnce() + Send>>,
}

/// [`serve`], calling `ready` with the bound addresses (port 0 resolved)
/// once every listener is up.
pub fn serve_with(config: &Config, ready: impl FnOnce(&[listen::Bound])) -> Result<(), StartError> {
    serve_hooked(
        config,
        Hooks {
            ready: Box::new(ready),
            reload: None,
            log_level: None,
            stopping: None,
        },
    )
}

/// What the workers need: the passdb, the mail location, the UIDL format.
fn login_context(config: &Config) -> Result<worker::LoginContext, StartError> {
    let passdb = load_passdb(config)?;
    let location = MailLocation::parse(config.mail.location.as_deref().expect("validated"))
        .map_err(StartError::Location)?;
    let uidl_format = crate::store::UidlFormat::parse(&config.mail.pop3_uidl_format)
        .map_err(StartError::UidlFormat)?;
    Ok(worker::LoginContext {
        passdb,
        location,
        uidl_format,
        policy: config.pop3.policy(),
        on_shard: config.server.login_on_shard,
    })
}

/// [`serve`] with every hook.
pub fn serve_hooked(config: &Config, hooks: Hooks<'_>) -> Result<(), StartError> {
    config.validate().map_err(StartError::Config)?;
    let logins = worker::Logins::new(login_context(config)?);

    let backend = choose(config.server.engine)?;
    let shards = config.shards();
    let tls = crate::tls::TlsReloader::from_config(&config.tls)
        .map_err(StartError::Tls)?
        .map(Arc::new);
    let addrs: Vec<listen::Bound> = config
        .server
        .listen
        .iter()
        .map(|&a| (a, false))
        .chain(config.tls.listen.iter().map(|&a| (a, true)))
        .collect();
    let (bound, listeners) = listen::bind_all_with(&addrs, shards, config.server.takeover)?;
    for (addr, implicit_tls) in &bound {
        tracing::info!(%addr, tls = implicit_tls, shards, "listening");
    }
    // Before any thread starts: every thread inherits the new identity.
    match privilege::drop_to(
        config.server.user.as_deref(),
        config.server.group.as_deref(),
    ) {
        Ok(Some(identity)) => tracing::info!(%identity, "dropped root privileges"),
        Ok(None) => {}
        Err(e) => return Err(StartError::Privilege(e)),
    }

    let (jobs, job_rx) = worker::Jobs::bounded(config.limits.worker_queue_max);
    let workers = worker::start(config.workers(), job_rx.clone(), Arc::clone(&logins));
    let guard = guard::Guard::new(guard::GuardConfig::new(
        &config.auth,
        config.limits.connections_per_address_max,
    ));
    let metrics = crate::metrics::Metrics::new(
        shards,
        match backend {
            Kind::Epoll => "epoll",
            Kind::Uring => "uring",
        },
    );
    // The receiving end: a sender here would keep the workers from ever
    // seeing the queue close at shutdown.
    let queue = job_rx.clone();
    metrics.watch_worker_queue(move || queue.len());
    let _metrics_server = match config.metrics.listen {
        Some(addr) => {
            let server = crate::metrics::http::serve(addr, Arc::clone(&metrics))
                .map_err(|e| StartError::Bind(addr, e))?;
            tracing::info!(addr = %server.local_addr(), "metrics listening");
            Some(server)
        }
        None => None,
    };
    let process = Arc::new(Process::new(
        config,
        guard,
        tls.clone(),
        jobs,
        Arc::clone(&logins),
        metrics,
    ));

    // Before the shards start and readiness is announced: a server that
    // cannot take signals (its pipe needs two descriptors) fails to start
    // instead of failing once it is serving.
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals =
        signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP]).map_err(StartError::Os)?;
    let (wakers, threads) = start_shards(backend, listeners, &process)?;
    (hooks.ready)(&bound);

    let signal_handle = signals.handle();
    let signal_process = Arc::clone(&process);
    let mut running = config.clone();
    let (reload, log_level, stopping) = (hooks.reload, hooks.log_level, hooks.stopping);
    let watcher = thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                if signal == SIGHUP {
                    match &reload {
                        Some(read) => {
                            let reloaded = reload::apply(
                                read,
                                log_level.as_ref(),
                                &running,
                                &signal_process,
                                &logins,
                            );
                            if let Some(config) = reloaded {
                                running = config;
                            }
                        }
                        None => reload::tls(signal_process.tls.as_deref()),
                    }
                    continue;
                }
                tracing::info!(signal, "shutdown requested");
                if let Some(stopping) = stopping {
                    stopping();
                }
                signal_process.request_shutdown();
                for w in &wakers {
                    let _ = w.wake();
                }
                break;
            }
        })
        .map_err(StartError::Os)?;

    for t in threads {
        let _ = t.join();
    }
    // Every shard has exited; dropping the last job queue handle lets the
    // workers finish what they hold (a QUIT's deletions included) and stop.
    drop(process);
    for w in workers {
        let _ = w.join();
    }
    signal_handle.close();
    let _ = watcher.join();
    tracing::info!("stopped");
    Ok(())
}

/// A running shard's thread.
type ShardThread = thread::JoinHandle<()>;

/// One shard thread per listener set, on `backend`; returns their wakers
/// (for the signal thread) and join handles.
fn start_shards(
    backend: Kind,
    listeners: Vec<listen::ShardListeners>,
    process: &Arc<Process>,
) -> Result<(Vec<waker::Waker>, Vec<ShardThread>), StartError> {
    let mut wakers = Vec::with_capacity(listeners.len());
    let mut threads = Vec::with_capacity(listeners.len());
    for (id, own) in listeners.into_iter().enumerate() {
        let (waker, handle) = start_shard(backend, id, own, Arc::clone(process))?;
        wakers.push(waker);
        threads.push(handle);
    }
    Ok((wakers, threads))
}

/// The pump the shards run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Epoll,
    Uring,
}

/// Resolves `server.engine`, probing io_uring when it may be used, and logs
/// the choice once with its reason.
fn choose(engine: Engine) -> Result<Kind, StartError> {
    match engine {
        Engine::Epoll => {
            tracing::info!("engine: epoll (configured)");
            Ok(Kind::Epoll)
        }
        Engine::Uring => match uring::probe() {
            Ok(()) => {
                tracing::info!(
                    "engine: io_uring (configured; the kernel supports every operation used)"
                );
                Ok(Kind::Uring)
            }
            Err(why) => Err(StartError::Uring(why)),
        },
        Engine::Auto => match uring::probe() {
            Ok(()) => {
                tracing::info!("engine: io_uring (auto: the kernel supports every operation used)");
                Ok(Kind::Uring)
            }
            Err(why) => {
                tracing::warn!("engine: epoll (auto: io_uring refused: {why})");
                Ok(Kind::Epoll)
            }
        },
    }
}

/// Runs a shard on the backend `made` (reporting its waker, or why it
/// could not be made, to the starting thread) until it exits.
fn run_shard<B: backend::Backend>(
    made: std::io::Result<(B, waker::Waker)>,
    core: impl FnOnce(&waker::Waker) -> shard::ShardCore,
    started: &std::sync::mpsc::SyncSender<std::io::Result<waker::Waker>>,
) {
    match made {
        Ok((io, waker)) => {
            let core = core(&waker);
            let _ = started.send(Ok(waker));
            core.run(io);
        }
        Err(e) => drop(started.send(Err(e))),
    }
}

/// Starts shard `id` on its own thread. The backend is created there (an
/// io_uring ring is SINGLE_ISSUER: tied to the thread that creates it), and
/// the thread reports back before `serve` goes on, so a failure still stops
/// startup.
fn start_shard(
    kind: Kind,
    id: usize,
    own: listen::ShardListeners,
    process: Arc<Process>,
) -> Result<(waker::Waker, ShardThread), StartError> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    let handle = thread::Builder::new()
        .name(format!("shard-{id}"))
        .spawn(move || {
            let (sockets, listener_tls): (Vec<_>, Vec<_>) = own.into_iter().unzip();
            let core = |waker: &waker::Waker| {
                let (port, done_rx) = worker::ShardPort::new(Arc::clone(waker));
                let local = Local { shard: id, port };
                shard::ShardCore::new(local, process, done_rx, listener_tls)
            };
            match kind {
                Kind::Epoll => run_shard(epoll::Epoll::new(sockets), core, &tx),
                Kind::Uring => run_shard(uring::Uring::new(sockets), core, &tx),
            }
        })
        .map_err(StartError::Os)?;
    match rx.recv() {
        Ok(Ok(waker)) => Ok((waker, handle)),
        Ok(Err(e)) => Err(StartError::Os(std::io::Error::new(
            e.kind(),
            format!("shard {id}: {e}"),
        ))),
        Err(_) => Err(StartError::Os(std::io::Error::other(
            "a shard thread died while starting",
        ))),
    }
}
