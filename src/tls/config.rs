//! PEM files to a rustls `ServerConfig`: one or more certificates (one per
//! key type, picked per client by [`super::resolve::ByKeyType`]) and the
//! resumption state. Blocking file reads: startup and reload only.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::server::{ProducesTickets, ServerSessionMemoryCache};
use rustls::sign::CertifiedKey;
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

/// TLS 1.3 tickets sent after each handshake; a client uses a ticket once.
/// Two, as rustls and OpenSSL (Dovecot) send by default: a mail client that
/// checks several accounts on one server opens their connections at once,
/// and with one ticket per handshake all but one of them did full
/// handshakes (`two_parallel_connections_both_resume_after_one_handshake`).
/// A ticket costs an encryption and ~200 bytes on the wire.
pub const TLS13_TICKETS_PER_HANDSHAKE: usize = 2;

/// Most certificates configured at once. One per key type is the intended
/// use (RSA and ECDSA, perhaps Ed25519); the bound keeps the per-handshake
/// search trivially short.
pub const CERTIFICATES_MAX: usize = 8;

/// Where the certificates and their keys live: PEM files, paired by
/// position (`cert[i]` goes with `key[i]`). A pair may be one file (chain
/// and key in one PEM). With several pairs, each client gets the first
/// certificate its signature algorithms allow, ECDSA and EdDSA before RSA
/// (see [`super::resolve::ByKeyType`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// Certificate chains: the end-entity certificate first, then any
    /// intermediates.
    pub cert: Vec<PathBuf>,
    /// The private keys: PKCS#8 (`PRIVATE KEY`), PKCS#1 (`RSA PRIVATE KEY`)
    /// or SEC1 (`EC PRIVATE KEY`).
    pub key: Vec<PathBuf>,
}

impl TlsFiles {
    /// One certificate chain and its key.
    pub fn single(cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> TlsFiles {
        TlsFiles {
            cert: vec![cert.into()],
            key: vec![key.into()],
        }
    }

    /// The (certificate, key) pairs; an error unless there are as many keys
    /// as certificates, at least one and at most [`CERTIFICATES_MAX`].
    pub fn pairs(&self) -> Result<impl Iterator<Item = (&Path, &Path)>, TlsError> {
        let (certs, keys) = (self.cert.len(), self.key.len());
        if certs != keys || certs == 0 || certs > CERTIFICATES_MAX {
            return Err(TlsError::Unpaired { certs, keys });
        }
        Ok(self
            .cert
            .iter()
            .zip(&self.key)
            .map(|(c, k)| (c.as_path(), k.as_path())))
    }
}

/// Resumption state: the ticket keys and the session-id cache.
/// [`super::TlsReloader`] keeps one across reloads so that a certificate
/// renewal does not turn every client's next connection into a full
/// handshake, and shares it between all shards: a ticket from one shard
/// resumes on any other.
///
/// The ticket keys are either the process's own (rustls' ring ticketer:
/// random at startup, rotated every 6 hours, tickets live 12) or a key file
/// shared by a cluster ([`super::ticket::FileTicketer`]).
pub(super) struct Resumption {
    pub(super) ticketer: Arc<dyn ProducesTickets>,
    cache: Arc<ServerSessionMemoryCache>,
}

impl Resumption {
    /// Random ticket keys of this process, and a fresh cache.
    pub(super) fn new() -> Result<Resumption, TlsError> {
        let ticketer = rustls::crypto::ring::Ticketer::new().map_err(TlsError::Rustls)?;
        Ok(Resumption::with_ticketer(ticketer))
    }

    /// `ticketer` and a fresh cache.
    pub(super) fn with_ticketer(ticketer: Arc<dyn ProducesTickets>) -> Resumption {
        Resumption {
            ticketer,
            cache: ServerSessionMemoryCache::new(SESSION_CACHE_ENTRIES_MAX),
        }
    }

    /// The same cache with other ticket keys (a reload of the key file).
    pub(super) fn rekeyed(&self, ticketer: Arc<dyn ProducesTickets>) -> Resumption {
        Resumption {
            ticketer,
            cache: self.cache.clone(),
        }
    }
}

/// Reads `files` and builds a config: TLS 1.2 and 1.3 with the ring
/// provider's suites in the server's order ([`preferred_suites`]) and its
/// default groups, no client certificates, no ALPN,
/// fresh resumption state. Every error names the file at fault.
pub fn load_server_config(files: &TlsFiles) -> Result<Arc<ServerConfig>, TlsError> {
    build(files, &Resumption::new()?)
}

/// [`load_server_config`] with resumption state that outlives this config.
pub(super) fn build(
    files: &TlsFiles,
    resumption: &Resumption,
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(CryptoProvider {
        cipher_suites: preferred_suites(),
        ..rustls::crypto::ring::default_provider()
    });
    let mut certified = Vec::with_capacity(files.cert.len());
    for (cert, key) in files.pairs()? {
        certified.push(certified_key(cert, key, &provider)?);
    }
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(TlsError::Rustls)?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(super::resolve::ByKeyType::new(certified)));
    config.session_storage = resumption.cache.clone();
    config.ticketer = resumption.ticketer.clone();
    config.send_tls13_tickets = TLS13_TICKETS_PER_HANDSHAKE;
    config.ignore_client_order = true;
    // POP3 speaks first: the greeting leaves with the server's handshake
    // flight (TLS 1.3 "0.5-RTT" data) instead of waiting a round trip for
    // the client's Finished, so a session of an implicit-TLS listener costs
    // one write, one read and one wakeup fewer on each side. The greeting is
    // what any client that connects gets; no client certificates are asked
    // for, so nothing is told to a peer less authenticated than it would be
    // after Finished. (rustls ignores this for TLS 1.2.)
    config.send_half_rtt_data = true;
    Ok(Arc::new(config))
}

/// The suites in the server's order of preference, which the server follows
/// rather than the client's: AES-128-GCM first, then AES-256-GCM, then
/// ChaCha20-Poly1305. Why: AES-128 has 128-bit security like X25519 and
/// P-256 (what the keys give anyway), encrypts in 10 rounds instead of 14,
/// and its SHA-256 key schedule runs on the SHA extensions of current x86
/// CPUs, while ring computes SHA-384 in software: a handshake then spends
/// several percent of its CPU in SHA-512 blocks. Mozilla's "modern" and
/// "intermediate" profiles list the suites in this order. ChaCha20 stays for
/// clients without AES (they offer nothing else).
fn preferred_suites() -> Vec<rustls::SupportedCipherSuite> {
    use rustls::crypto::ring::cipher_suite as suite;
    vec![
        suite::TLS13_AES_128_GCM_SHA256,
        suite::TLS13_AES_256_GCM_SHA384,
        suite::TLS13_CHACHA20_POLY1305_SHA256,
        suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        suite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        suite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        suite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        suite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        suite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    ]
}

/// One chain and its key, checked to belong together.
fn certified_key(
    cert: &Path,
    key: &Path,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, TlsError> {
    let chain = read_certificates(cert)?;
    let private_key = read_key(key)?;
    CertifiedKey::from_der(chain, private_key, provider).map_err(|source| TlsError::Rejected {
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
        source,
    })
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
pub(super) fn read_bounded(path: &Path) -> Result<Vec<u8>, TlsError> {
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
