//! The config every shard shares, swapped on SIGHUP for new connections.

use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use rustls::ServerConfig;

use super::TlsError;
use super::config::{Resumption, TlsFiles, build};

/// Shared by every shard (`Send + Sync`). A connection takes
/// [`TlsReloader::current`] when it starts TLS and keeps that `Arc` for its
/// life, so [`TlsReloader::reload`] changes what new connections get and
/// never touches a running session. A failed reload keeps the old config.
///
/// Resumption state (ticket key, session cache) is kept across reloads: a
/// client resumes a session it made under the old certificate. To invalidate
/// every session (a compromised key), restart the server.
pub struct TlsReloader {
    files: TlsFiles,
    resumption: Resumption,
    /// Read by every new TLS connection: one uncontended read lock and an
    /// `Arc` clone. Written only by a successful reload.
    config: RwLock<Arc<ServerConfig>>,
    /// Serialises reloads, so two SIGHUPs in a row cannot install the older
    /// read last. Never taken by `current()`.
    reloading: Mutex<()>,
}

impl TlsReloader {
    /// Reads the files once; an error here should stop startup.
    pub fn new(files: TlsFiles) -> Result<TlsReloader, TlsError> {
        let resumption = Resumption::new()?;
        let config = build(&files, &resumption)?;
        Ok(TlsReloader {
            files,
            resumption,
            config: RwLock::new(config),
            reloading: Mutex::new(()),
        })
    }

    /// The config for a connection starting TLS now.
    pub fn current(&self) -> Arc<ServerConfig> {
        self.config.read().clone()
    }

    /// Reads the same paths again. On success new connections get the new
    /// certificate; on error nothing changes and the error names the file.
    /// Blocking file I/O: call it from the signal-handling thread, not a
    /// shard.
    pub fn reload(&self) -> Result<(), TlsError> {
        let _one_at_a_time = self.reloading.lock();
        let config = build(&self.files, &self.resumption)?;
        *self.config.write() = config;
        Ok(())
    }

    /// The paths this reloader reads.
    pub fn files(&self) -> &TlsFiles {
        &self.files
    }
}
