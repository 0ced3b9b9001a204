//! tls: rustls (ring provider) for STLS (RFC 2595) and implicit TLS (RFC 8314).
//!
//! Owns these things and nothing else:
//! - [`load_server_config`]: certificate chains and keys from PEM files to a
//!   rustls `ServerConfig` (TLS 1.2 and 1.3, no client auth, no ALPN, session
//!   resumption by tickets with a bounded stateful cache for TLS 1.2 clients
//!   that do not take tickets). Several certificates (one per key type) are
//!   served per client by [`ByKeyType`]: ECDSA to clients that take it, RSA
//!   to the others.
//! - [`TlsReloader`]: the config every shard shares, with one set of ticket
//!   keys per process (or from a key file a cluster shares,
//!   [`FileTicketer`]); `reload()` (SIGHUP) swaps the certificates and the
//!   ticket keys for new connections only.
//! - [`TlsLayer`]: one connection's TLS state, sans-IO. Ciphertext goes in and
//!   out as byte slices, plaintext likewise; no sockets, no clock, no threads.
//!
//! This layer must not touch sockets or know POP3: the engine moves the bytes
//! and decides when STLS starts, the protocol layer decides what is allowed
//! on a TLS connection. Reading the PEM files is blocking file I/O: do it at
//! startup and on reload, off the shard's hot path.
//!
//! Errors keep the causes apart: a bad certificate or key file is the
//! operator's ([`TlsError::is_peer_fault`] is false, log it loudly); a failed
//! session is the peer's (log it quietly and close); misuse by the caller is
//! [`TlsError::Closed`].

#![forbid(unsafe_code)]

mod config;
mod layer;
mod reload;
mod resolve;
mod ticket;

#[cfg(test)]
mod tests;

use std::fmt;
use std::io;
use std::path::PathBuf;

pub use config::{
    CERTIFICATES_MAX, PEM_FILE_BYTES_MAX, SESSION_CACHE_ENTRIES_MAX, TLS13_TICKETS_PER_HANDSHAKE,
    TlsFiles, load_server_config,
};
pub use layer::{Answer, CostlyAnswer, PLAINTEXT_BUFFERED_BYTES_MAX, TlsLayer};
pub use reload::TlsReloader;
pub use resolve::ByKeyType;
pub use ticket::{
    FileTicketer, TICKET_KEY_BYTES, TICKET_KEYS_MAX, TICKET_LIFETIME_S, TicketKey,
    parse_ticket_keys, read_ticket_keys,
};

/// Why TLS could not be set up, or why a session failed.
#[derive(Debug)]
pub enum TlsError {
    /// A certificate or key file could not be opened or read. Config fault.
    Read {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        source: io::Error,
    },
    /// A certificate or key file is larger than [`PEM_FILE_BYTES_MAX`]: it is
    /// refused rather than read into memory (a wrong path such as a log file
    /// or a device). Config fault.
    TooLarge {
        /// The file.
        path: PathBuf,
    },
    /// A file has a malformed PEM section (no END line, bad base64). Config
    /// fault.
    Pem {
        /// The file.
        path: PathBuf,
        /// What the PEM parser said (never key material).
        source: rustls_pki_types::pem::Error,
    },
    /// The certificate file holds no `CERTIFICATE` section. Config fault.
    NoCertificate(PathBuf),
    /// The key file holds no private key section (PKCS#8, PKCS#1 or SEC1).
    /// Config fault.
    NoKey(PathBuf),
    /// rustls refused the certificate chain and key together: the key does
    /// not match the certificate, or the key type is not supported. Config
    /// fault.
    Rejected {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// What rustls said.
        source: rustls::Error,
    },
    /// Certificates and keys are paired by position: there must be as many
    /// keys as certificates, at least one and at most [`CERTIFICATES_MAX`].
    /// Config fault.
    Unpaired {
        /// How many certificate files were given.
        certs: usize,
        /// How many key files were given.
        keys: usize,
    },
    /// The ticket key file is malformed. Config fault.
    TicketKeys {
        /// The file.
        path: PathBuf,
        /// The 1-based line at fault; 0 for the file as a whole.
        line: usize,
        /// What is wrong (never key material).
        reason: &'static str,
    },
    /// rustls refused to build a config or a connection for a reason that
    /// is neither the files nor the peer (e.g. no random bytes for the
    /// ticket key). Our fault.
    Rustls(rustls::Error),
    /// The session failed on what the peer sent: not TLS, a bad record, a
    /// version or cipher suite we do not share, an alert from the peer. An
    /// alert may be queued: send [`TlsLayer::write_ciphertext`], then close.
    Peer(rustls::Error),
    /// rustls refused more ciphertext although no plaintext was waiting to
    /// be read (its record buffer was full). rustls does not let well-formed
    /// input get here; treat it like [`TlsError::Peer`] and close.
    Refused(io::Error),
    /// Application data after `close_notify` was sent or after the session
    /// failed. The caller's fault: the connection is closing.
    Closed,
}

impl TlsError {
    /// Whether the peer caused this (log quietly, close the connection) as
    /// opposed to the operator's files or this server.
    pub fn is_peer_fault(&self) -> bool {
        matches!(self, TlsError::Peer(_) | TlsError::Refused(_))
    }
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsError::Read { path, source } => write!(f, "TLS file {}: {source}", path.display()),
            TlsError::TooLarge { path } => write!(
                f,
                "TLS file {}: larger than {PEM_FILE_BYTES_MAX} bytes, not a PEM certificate or key",
                path.display()
            ),
            TlsError::Pem { path, source } => {
                write!(f, "TLS file {}: bad PEM: {source}", path.display())
            }
            TlsError::NoCertificate(path) => {
                write!(f, "TLS file {}: no CERTIFICATE in it", path.display())
            }
            TlsError::NoKey(path) => write!(f, "TLS file {}: no PRIVATE KEY in it", path.display()),
            TlsError::Rejected { cert, key, source } => write!(
                f,
                "TLS certificate {} with key {}: {source}",
                cert.display(),
                key.display()
            ),
            TlsError::Unpaired { certs, keys } => write!(
                f,
                "TLS: {certs} certificate(s) and {keys} key(s): give one key per certificate \
                 (--tls-cert and --tls-key in the same order), at least 1 and at most \
                 {CERTIFICATES_MAX}"
            ),
            TlsError::TicketKeys { path, line, reason } if *line == 0 => {
                write!(f, "TLS ticket key file {}: {reason}", path.display())
            }
            TlsError::TicketKeys { path, line, reason } => write!(
                f,
                "TLS ticket key file {} line {line}: {reason}",
                path.display()
            ),
            TlsError::Rustls(source) => write!(f, "TLS setup: {source}"),
            TlsError::Peer(source) => write!(f, "TLS session: {source}"),
            TlsError::Refused(source) => write!(f, "TLS session: ciphertext refused: {source}"),
            TlsError::Closed => f.write_str("TLS session: data after close"),
        }
    }
}

impl std::error::Error for TlsError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TlsError::Read { source, .. } | TlsError::Refused(source) => Some(source),
            TlsError::Pem { source, .. } => Some(source),
            TlsError::Rejected { source, .. }
            | TlsError::Rustls(source)
            | TlsError::Peer(source) => Some(source),
            TlsError::TooLarge { .. }
            | TlsError::Unpaired { .. }
            | TlsError::TicketKeys { .. }
            | TlsError::NoCertificate(_)
            | TlsError::NoKey(_)
            | TlsError::Closed => None,
        }
    }
}
