//! Why a connection ends on an error, typed so that the log level follows
//! from whose fault it is (a client that vanished is not news; a message
//! file cut short under us is), never from matching an error's text.
#![forbid(unsafe_code)]

use std::fmt;
use std::io;
use std::net::SocketAddr;

use crate::tls::TlsError;

/// A connection error; the shard closes the connection and logs it once
/// through [`ConnError::log`].
#[derive(Debug)]
pub enum ConnError {
    /// The client went away: reset, broken pipe, aborted, timed out. Its
    /// business, logged at debug.
    PeerGone(io::Error),
    /// The message file being sent was truncated under us (a hole the
    /// guarded read or the kernel's writev hit). Another program's doing,
    /// worth a warning: the client got a body without its terminator.
    Truncated,
    /// TLS failed: on the peer's bytes (debug) or on our side (warning).
    Tls(TlsError),
    /// Any other socket error (warning).
    Io(io::Error),
    /// A peer in `server.proxy_from` sent a missing, malformed or oversized
    /// PROXY header: the connection is closed without a greeting (warning:
    /// a front end is misconfigured, or someone is probing).
    Proxy(crate::protocol::proxy::ProxyError),
}

impl From<io::Error> for ConnError {
    fn from(e: io::Error) -> ConnError {
        if e.raw_os_error() == Some(libc::EFAULT) {
            // The kernel hit a hole in a mapped file during writev.
            return ConnError::Truncated;
        }
        match e.kind() {
            io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::NotConnected
            | io::ErrorKind::TimedOut
            | io::ErrorKind::UnexpectedEof => ConnError::PeerGone(e),
            _ => ConnError::Io(e),
        }
    }
}

impl From<TlsError> for ConnError {
    fn from(e: TlsError) -> ConnError {
        ConnError::Tls(e)
    }
}

impl From<crate::store::body::Truncated> for ConnError {
    fn from(_: crate::store::body::Truncated) -> ConnError {
        ConnError::Truncated
    }
}

impl fmt::Display for ConnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnError::PeerGone(e) => write!(f, "the client went away: {e}"),
            ConnError::Truncated => f.write_str("message file truncated while it was sent"),
            ConnError::Tls(e) => write!(f, "TLS: {e}"),
            ConnError::Io(e) => write!(f, "{e}"),
            ConnError::Proxy(e) => write!(f, "PROXY header refused: {e}"),
        }
    }
}

impl std::error::Error for ConnError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ConnError::PeerGone(e) | ConnError::Io(e) => Some(e),
            ConnError::Tls(e) => Some(e),
            ConnError::Proxy(e) => Some(e),
            ConnError::Truncated => None,
        }
    }
}

/// How loudly an error is logged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    /// The client's doing.
    Debug,
    /// Ours or another program's: an operator may want to know.
    Warn,
}

impl ConnError {
    /// The level this error is logged at.
    pub fn level(&self) -> Level {
        match self {
            ConnError::PeerGone(_) => Level::Debug,
            ConnError::Tls(e) if e.is_peer_fault() => Level::Debug,
            ConnError::Truncated | ConnError::Tls(_) | ConnError::Io(_) | ConnError::Proxy(_) => {
                Level::Warn
            }
        }
    }

    /// Logs why the session with `peer` ends.
    pub fn log(&self, peer: SocketAddr) {
        if let ConnError::Proxy(e) = self {
            // One line that says why and from where, in the shape of the
            // other pop3 lines.
            tracing::warn!("pop3 PROXY header refused ({e}): rip={}", peer.ip());
            return;
        }
        match self.level() {
            Level::Debug => tracing::debug!(%peer, error = %self, "connection ended"),
            Level::Warn => tracing::warn!(%peer, error = %self, "closing the session"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_level_follows_the_cause_not_the_text() {
        let gone = |kind| ConnError::from(io::Error::from(kind));
        assert_eq!(gone(io::ErrorKind::ConnectionReset).level(), Level::Debug);
        assert_eq!(gone(io::ErrorKind::BrokenPipe).level(), Level::Debug);
        assert!(matches!(
            ConnError::from(io::Error::from_raw_os_error(libc::EFAULT)),
            ConnError::Truncated
        ));
        assert_eq!(ConnError::Truncated.level(), Level::Warn);
        assert_eq!(
            ConnError::from(io::Error::from_raw_os_error(libc::ENOMEM)).level(),
            Level::Warn
        );
        let peer_tls = ConnError::Tls(TlsError::Peer(rustls::Error::DecryptError));
        assert_eq!(peer_tls.level(), Level::Debug);
        assert_eq!(ConnError::Tls(TlsError::Closed).level(), Level::Warn);
    }
}
