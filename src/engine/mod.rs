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
//! - `uring/`: the io_uring shard, a completion pump around the same `Conn`
//!   (the only place in the engine with `unsafe`).
//! - `waker.rs`: how the pool and the signal thread wake either kind of shard.
//!
//! The backend is chosen once at startup (`server.engine`, `--engine`):
//! `auto` probes io_uring and falls back to epoll with one log line.
//!
//! Cross-shard state is touched only at login and logout (the mailbox lock
//! table in `store::lock`).
// `deny`, not `forbid`: `uring/` opts out; every other file forbids it.
#![deny(unsafe_code)]

pub mod body;
pub mod buffer;
pub mod conn;
pub mod guard;
pub mod listen;
pub mod privilege;
pub mod shard;
pub mod timer;
pub mod uring;
pub mod waker;
pub mod worker;

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use crate::auth::Passdb;
use crate::config::{Config, Engine};
use crate::protocol::Limits;
use crate::store::MailLocation;

/// Why the server could not start.
#[derive(Debug)]
pub enum StartError {
    /// The configuration is unusable.
    Config(String),
    /// A listener could not be bound.
    Bind(std::net::SocketAddr, std::io::Error),
    /// The OS refused a poll, ring, thread or signal handler.
    Os(std::io::Error),
    /// `--engine uring` was asked for and the kernel refuses io_uring.
    Uring(uring::Refused),
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartError::Config(s) => f.write_str(s),
            StartError::Bind(addr, e) => write!(f, "cannot listen on {addr}: {e}"),
            StartError::Os(e) => write!(f, "{e}"),
            StartError::Uring(why) => write!(
                f,
                "--engine uring: io_uring is not usable: {why} (use --engine auto or epoll)"
            ),
        }
    }
}

impl std::error::Error for StartError {}

/// Runs the server until SIGTERM or SIGINT, then shuts down gracefully.
pub fn serve(config: &Config) -> Result<(), StartError> {
    serve_with(config, |_| {})
}

/// [`serve`], calling `ready` with the bound addresses (port 0 resolved)
/// once every listener is up.
pub fn serve_with(config: &Config, ready: impl FnOnce(&[listen::Bound])) -> Result<(), StartError> {
    config
        .validate()
        .map_err(|e| StartError::Config(e.to_string()))?;
    let mut passdb = Passdb::from_config(config).map_err(|e| StartError::Config(e.to_string()))?;
    if let Some(path) = &config.auth.scram_secret_file {
        let secret = std::fs::read(path)
            .map_err(|e| StartError::Config(format!("cannot read {}: {e}", path.display())))?;
        if secret.len() < 16 {
            return Err(StartError::Config(format!(
                "{}: a SCRAM secret needs at least 16 bytes",
                path.display()
            )));
        }
        passdb = passdb.with_scram_secret(&secret);
    }
    let location = MailLocation::parse(config.mail.location.as_deref().expect("validated"))
        .map_err(|e| StartError::Config(e.to_string()))?;
    if config.auth.apop && !passdb.has_plaintext() {
        tracing::warn!("APOP is enabled but no user has a plaintext password: nobody can use it");
    }

    let backend = choose(config.server.engine)?;
    let shards = config.shards();
    let tls = match (&config.tls.cert, &config.tls.key) {
        (Some(cert), Some(key)) => {
            let files = crate::tls::TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
            };
            Some(Arc::new(
                crate::tls::TlsReloader::new(files)
                    .map_err(|e| StartError::Config(e.to_string()))?,
            ))
        }
        _ => None,
    };
    let addrs: Vec<listen::Bound> = config
        .server
        .listen
        .iter()
        .map(|&a| (a, false))
        .chain(config.tls.listen.iter().map(|&a| (a, true)))
        .collect();
    let (bound, listeners) = listen::bind_all(&addrs, shards)?;
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
        Err(e) => return Err(StartError::Config(e)),
    }

    let uidl_format = crate::store::UidlFormat::parse(&config.mail.pop3_uidl_format)
        .map_err(|e| StartError::Config(e.to_string()))?;
    let ctx = Arc::new(worker::LoginContext {
        passdb,
        location,
        uidl_format,
    });
    let (jobs, workers) = worker::start(config.workers(), ctx);
    let shared = Arc::new(shard::Shared {
        shutdown: AtomicBool::new(false),
        shutdown_grace: Duration::from_millis(config.limits.shutdown_grace_ms),
        limits: Limits {
            line_bytes_max: config.limits.line_bytes_max,
            bad_commands_max: config.limits.bad_commands_max,
            commands_before_login_max: config.limits.commands_before_login_max,
            output_high_water_bytes: config.limits.output_buffer_bytes,
        },
        apop: config.auth.apop,
        hostname: hostname(),
        plaintext_auth: config.auth.plaintext_auth,
        guard: guard::Guard::new(guard::GuardConfig::new(
            &config.auth,
            config.limits.connections_per_address_max,
        )),
    });

    let (wakers, threads) = start_shards(backend, listeners, config, tls.clone(), &jobs, &shared)?;
    drop(jobs);
    ready(&bound);

    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals =
        signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP]).map_err(StartError::Os)?;
    let signal_handle = signals.handle();
    let watcher = thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                if signal == SIGHUP {
                    // New certificates for new connections; sessions keep theirs.
                    match &tls {
                        Some(reloader) => match reloader.reload() {
                            Ok(()) => tracing::info!("SIGHUP: TLS certificate reloaded"),
                            Err(e) => tracing::error!(error = %e, "SIGHUP: TLS reload failed; keeping the old certificate"),
                        },
                        None => tracing::info!("SIGHUP: no TLS certificate configured; nothing to reload"),
                    }
                    continue;
                }
                tracing::info!(signal, "shutdown requested");
                shared.shutdown.store(true, Ordering::Relaxed);
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

/// A running shard's thread.
type ShardThread = thread::JoinHandle<()>;

/// One shard thread per listener set, on `backend`; returns their wakers
/// (for the signal thread) and join handles.
fn start_shards(
    backend: Backend,
    listeners: Vec<listen::ShardListeners>,
    config: &Config,
    tls: Option<Arc<crate::tls::TlsReloader>>,
    jobs: &crossbeam_channel::Sender<worker::Job>,
    shared: &Arc<shard::Shared>,
) -> Result<(Vec<Arc<waker::Waker>>, Vec<ShardThread>), StartError> {
    let shards = listeners.len();
    let mut wakers = Vec::with_capacity(shards);
    let mut threads = Vec::with_capacity(shards);
    for (id, own) in listeners.into_iter().enumerate() {
        let settings = conn::Settings {
            shard: id,
            login_timeout: config.login_timeout(),
            autologout: config.autologout(),
            output_buffer_bytes: config.limits.output_buffer_bytes,
            recv_buffer_bytes: config.limits.recv_buffer_bytes,
            tls: tls.clone(),
            plaintext_auth: config.auth.plaintext_auth,
        };
        let (waker, handle) = match backend {
            Backend::Epoll => {
                let shard = shard::Shard::new(id, own, jobs.clone(), settings, Arc::clone(shared))
                    .map_err(StartError::Os)?;
                let waker = shard.waker();
                let handle = thread::Builder::new()
                    .name(format!("shard-{id}"))
                    .spawn(move || shard.run())
                    .map_err(StartError::Os)?;
                (waker, handle)
            }
            Backend::Uring => start_uring(id, own, jobs.clone(), settings, Arc::clone(shared))?,
        };
        wakers.push(waker);
        threads.push(handle);
    }
    Ok((wakers, threads))
}

/// The pump the shards run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Backend {
    Epoll,
    Uring,
}

/// Resolves `server.engine`, probing io_uring when it may be used, and logs
/// the choice once with its reason.
fn choose(engine: Engine) -> Result<Backend, StartError> {
    match engine {
        Engine::Epoll => {
            tracing::info!("engine: epoll (configured)");
            Ok(Backend::Epoll)
        }
        Engine::Uring => match uring::probe() {
            Ok(()) => {
                tracing::info!(
                    "engine: io_uring (configured; the kernel supports every operation used)"
                );
                Ok(Backend::Uring)
            }
            Err(why) => Err(StartError::Uring(why)),
        },
        Engine::Auto => match uring::probe() {
            Ok(()) => {
                tracing::info!("engine: io_uring (auto: the kernel supports every operation used)");
                Ok(Backend::Uring)
            }
            Err(why) => {
                tracing::warn!("engine: epoll (auto: io_uring refused: {why})");
                Ok(Backend::Epoll)
            }
        },
    }
}

/// Starts an io_uring shard on its own thread: the ring is created there
/// (SINGLE_ISSUER ties it to the creating thread), and the thread reports
/// back before `serve` goes on, so a failure still stops startup.
fn start_uring(
    id: usize,
    own: listen::ShardListeners,
    jobs: crossbeam_channel::Sender<worker::Job>,
    settings: conn::Settings,
    shared: Arc<shard::Shared>,
) -> Result<(Arc<waker::Waker>, ShardThread), StartError> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    let handle = thread::Builder::new()
        .name(format!("shard-{id}"))
        .spawn(
            move || match uring::Shard::new(id, own, jobs, settings, shared) {
                Ok(shard) => {
                    let _ = tx.send(Ok(shard.waker()));
                    shard.run();
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                }
            },
        )
        .map_err(StartError::Os)?;
    match rx.recv() {
        Ok(Ok(waker)) => Ok((waker, handle)),
        Ok(Err(e)) => Err(StartError::Os(std::io::Error::new(
            e.kind(),
            format!("io_uring shard {id}: {e}"),
        ))),
        Err(_) => Err(StartError::Os(std::io::Error::other(
            "an io_uring shard thread died while starting",
        ))),
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}
