//! The config every shard shares, swapped on SIGHUP for new connections.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use rustls::ServerConfig;

use super::TlsError;
use super::config::{Resumption, TlsFiles, build};
use super::ticket::{FileTicketer, read_ticket_keys};

/// Shared by every shard (`Send + Sync`). A connection takes
/// [`TlsReloader::current`] when it starts TLS and keeps that `Arc` for its
/// life, so [`TlsReloader::reload`] changes what new connections get and
/// never touches a running session. A failed reload keeps the old config.
///
/// Resumption state (ticket keys, session cache) is one per process, kept
/// across reloads: a ticket from any shard resumes on any other, and a
/// client resumes a session it made under the old certificate. Without a
/// ticket key file the keys are random per process (rustls rotates them
/// every 6 hours); to invalidate every session (a compromised key), restart
/// the server. With a ticket key file, a reload reads it again and the key
/// that encrypted until then keeps decrypting (see `ticket.rs`).
pub struct TlsReloader {
    files: TlsFiles,
    ticket_key_file: Option<PathBuf>,
    /// Read by every new TLS connection: one uncontended read lock and an
    /// `Arc` clone. Written only by a successful reload.
    config: RwLock<Arc<ServerConfig>>,
    /// Serialises reloads, so two SIGHUPs in a row cannot install the older
    /// read last, and holds what they build on. Never taken by `current()`.
    reloading: Mutex<Keys>,
}

/// The resumption state a reload starts from.
struct Keys {
    resumption: Resumption,
    /// The ticketer from the key file, if one is configured.
    from_file: Option<Arc<FileTicketer>>,
}

impl TlsReloader {
    /// Reads the files once, with random ticket keys for this process; an
    /// error here should stop startup.
    pub fn new(files: TlsFiles) -> Result<TlsReloader, TlsError> {
        TlsReloader::with_ticket_key_file(files, None)
    }

    /// [`TlsReloader::new`], with the ticket keys read from
    /// `ticket_key_file` if given (a cluster shares it).
    pub fn with_ticket_key_file(
        files: TlsFiles,
        ticket_key_file: Option<PathBuf>,
    ) -> Result<TlsReloader, TlsError> {
        let (resumption, from_file) = match &ticket_key_file {
            None => (Resumption::new()?, None),
            Some(path) => {
                let ticketer = Arc::new(FileTicketer::new(read_ticket_keys(path)?));
                (Resumption::with_ticketer(ticketer.clone()), Some(ticketer))
            }
        };
        let config = build(&files, &resumption)?;
        Ok(TlsReloader {
            files,
            ticket_key_file,
            config: RwLock::new(config),
            reloading: Mutex::new(Keys {
                resumption,
                from_file,
            }),
        })
    }

    /// The reloader for the `[tls]` section, `None` when it configures no
    /// certificate (no STLS, no implicit TLS).
    pub fn from_config(tls: &crate::config::Tls) -> Result<Option<TlsReloader>, TlsError> {
        let (Some(cert), Some(key)) = (&tls.cert, &tls.key) else {
            return Ok(None);
        };
        let files = TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
        };
        TlsReloader::with_ticket_key_file(files, tls.ticket_key_file.clone()).map(Some)
    }

    /// The config for a connection starting TLS now.
    pub fn current(&self) -> Arc<ServerConfig> {
        self.config.read().clone()
    }

    /// Reads the same paths again (certificates, keys, the ticket key
    /// file). On success new connections get the new certificates and
    /// ticket keys; on error nothing changes and the error names the file.
    /// Blocking file I/O: call it from the signal-handling thread, not a
    /// shard.
    pub fn reload(&self) -> Result<(), TlsError> {
        let mut keys = self.reloading.lock();
        let rotated = match (&self.ticket_key_file, &keys.from_file) {
            (Some(path), Some(current)) => Some(Arc::new(current.rotated(read_ticket_keys(path)?))),
            _ => None,
        };
        let resumption = match &rotated {
            Some(ticketer) => keys.resumption.rekeyed(ticketer.clone()),
            None => keys.resumption.rekeyed(keys.resumption.ticketer.clone()),
        };
        let config = build(&self.files, &resumption)?;
        *self.config.write() = config;
        keys.resumption = resumption;
        if rotated.is_some() {
            keys.from_file = rotated;
        }
        Ok(())
    }

    /// The paths this reloader reads.
    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// The ticket key file, if the ticket keys come from one.
    pub fn ticket_key_file(&self) -> Option<&Path> {
        self.ticket_key_file.as_deref()
    }
}
