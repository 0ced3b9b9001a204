//! PEM files to a rustls `ServerConfig`. Blocking file reads: startup and
//! reload only.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ServerConfig;
use rustls::server::{ProducesTickets, ServerSessionMemoryCache};
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::TlsError;

/// Largest certificate or key file read. A chain with intermediates is a few
/// KiB; 1 MiB leaves room for a CA bundle pasted in by mistake and still
/// refuses a wrong path such as a log file.
pub const PEM_FILE_BYTES_MAX: u64 = 1024 * 1024;

/// Sessions kept for TLS 1.2 clients that resume by session id instead of a
/// ticket. Tickets (TLS 1.3, and TLS 1.2 clients that ask) are stateless and
/// need no entry. An entry is a few hundred bytes, so this is a few MiB at
/// most; the oldest entries go first. The cache is one mutex shared by all
/// shards, touched at most once per handshake, never per record.
pub const SESSION_CACHE_ENTRIES_MAX: usize = 16 * 1024;

/// TLS 1.3 tickets sent after each handshake. rustls sends 2 by default
/// (for clients that open parallel connections); a POP3 client opens one at
/// a time, and each ticket costs an encryption and ~200 bytes on the wire.
pub const TLS13_TICKETS_PER_HANDSHAKE: usize = 1;

/// Where the certificate chain and its key live: PEM files. They may be the
/// same file (chain and key in one PEM).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// The end-entity certificate first, then any intermediates.
    pub cert: PathBuf,
    /// The private key: PKCS#8 (`PRIVATE KEY`), PKCS#1 (`RSA PRIVATE KEY`)
    /// or SEC1 (`EC PRIVATE KEY`).
    pub key: PathBuf,
}

/// Resumption state: the ticket key (rotated by rustls every 6 hours,
/// tickets live 12) and the session-id cache. [`super::TlsReloader`] keeps
/// one across reloads so that a certificate renewal does not turn every
/// client's next connection into a full handshake.
pub(super) struct Resumption {
    ticketer: Arc<dyn ProducesTickets>,
    cache: Arc<ServerSessionMemoryCache>,
}

impl Resumption {
    pub(super) fn new() -> Result<Resumption, TlsError> {
        Ok(Resumption {
            ticketer: rustls::crypto::ring::Ticketer::new().map_err(TlsError::Rustls)?,
            cache: ServerSessionMemoryCache::new(SESSION_CACHE_ENTRIES_MAX),
        })
    }
}

/// Reads `files` and builds a config: TLS 1.2 and 1.3 with the ring
/// provider's default suites and groups, no client certificates, no ALPN,
/// fresh resumption state. Every error names the file at fault.
pub fn load_server_config(files: &TlsFiles) -> Result<Arc<ServerConfig>, TlsError> {
    build(files, &Resumption::new()?)
}

/// [`load_server_config`] with resumption state that outlives this config.
pub(super) fn build(
    files: &TlsFiles,
    resumption: &Resumption,
) -> Result<Arc<ServerConfig>, TlsError> {
    let chain = read_certificates(&files.cert)?;
    let key = read_key(&files.key)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(TlsError::Rustls)?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|source| TlsError::Rejected {
            cert: files.cert.clone(),
            key: files.key.clone(),
            source,
        })?;
    config.session_storage = resumption.cache.clone();
    config.ticketer = resumption.ticketer.clone();
    config.send_tls13_tickets = TLS13_TICKETS_PER_HANDSHAKE;
    Ok(Arc::new(config))
}

/// Every `CERTIFICATE` section of the file, in order; other sections (a key
/// in the same file) are skipped.
fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem_bytes = read_bounded(path)?;
    let chain = CertificateDer::pem_slice_iter(&pem_bytes)
        .collect::<Result<Vec<_>, pem::Error>>()
        .map_err(|source| pem_error(path, source))?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate(path.to_path_buf()));
    }
    Ok(chain)
}

/// The first private key section of the file. The PEM text is wiped once
/// parsed (best effort; the DER copy is zeroized by rustls when dropped).
fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let mut pem_bytes = read_bounded(path)?;
    let key = PrivateKeyDer::from_pem_slice(&pem_bytes);
    pem_bytes.fill(0);
    std::hint::black_box(&pem_bytes);
    match key {
        Ok(key) => Ok(key),
        Err(pem::Error::NoItemsFound) => Err(TlsError::NoKey(path.to_path_buf())),
        Err(source) => Err(pem_error(path, source)),
    }
}

fn pem_error(path: &Path, source: pem::Error) -> TlsError {
    TlsError::Pem {
        path: path.to_path_buf(),
        source,
    }
}

/// The whole file, refusing one over [`PEM_FILE_BYTES_MAX`] without reading
/// past the limit (the length is checked while reading, not by `stat`, so a
/// FIFO or device cannot get around it).
fn read_bounded(path: &Path) -> Result<Vec<u8>, TlsError> {
    let read_error = |source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(read_error)?;
    let mut bytes = Vec::new();
    file.take(PEM_FILE_BYTES_MAX + 1)
        .read_to_end(&mut bytes)
        .map_err(read_error)?;
    if bytes.len() as u64 > PEM_FILE_BYTES_MAX {
        return Err(TlsError::TooLarge {
            path: path.to_path_buf(),
        });
    }
    Ok(bytes)
}
