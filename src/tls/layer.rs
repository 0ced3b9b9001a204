//! One connection's TLS state, sans-IO: the engine hands in ciphertext it
//! read and takes out ciphertext to write; the session reads and writes
//! plaintext. No socket, no clock.

use std::io::{Read, Write};
use std::sync::Arc;

use rustls::{ProtocolVersion, ServerConfig, ServerConnection};

use super::TlsError;

/// Most decrypted bytes a [`TlsLayer`] holds before [`TlsLayer::receive`]
/// stops taking ciphertext: rustls takes no input once more than 16 KiB of
/// plaintext waits, and the input it took last is at most one full record
/// buffer (a 16 KiB record plus 2 KiB of expansion and a 5-byte header),
/// which decrypts to fewer bytes than that.
pub const PLAINTEXT_BUFFERED_BYTES_MAX: usize = 16 * 1024 + (16 * 1024 + 2048 + 5);

/// One connection's TLS state. Drive it like this:
///
/// 1. bytes read from the socket → [`receive`](Self::receive), which returns
///    how many it took; keep the rest and offer it again later;
/// 2. [`read_plaintext`](Self::read_plaintext) into the session's input
///    while [`has_plaintext`](Self::has_plaintext);
/// 3. replies → [`send_plaintext`](Self::send_plaintext);
/// 4. [`write_ciphertext`](Self::write_ciphertext) into the send buffer
///    whenever [`wants_write`](Self::wants_write) (handshake messages,
///    records, alerts), and write that to the socket.
///
/// On `Err` from `receive`, write out what `write_ciphertext` gives (the
/// alert) and close.
pub struct TlsLayer {
    conn: ServerConnection,
    /// Decrypted bytes rustls holds for us: set from rustls' own count after
    /// every `process_new_packets`, lowered by `read_plaintext`. Invariant:
    /// equal to the length of rustls' received-plaintext buffer.
    plaintext_bytes: usize,
    /// The peer's close_notify arrived; input after it is ignored.
    peer_closed: bool,
    /// close_notify queued or the session failed: no more application data.
    closed: bool,
}

impl TlsLayer {
    /// A server session with `config` (from [`super::TlsReloader::current`]).
    /// Its send side is unbounded: rustls keeps all it is given, and the
    /// caller bounds what it passes to `send_plaintext` and drains
    /// `write_ciphertext` into its own bounded send buffer.
    pub fn new(config: Arc<ServerConfig>) -> Result<TlsLayer, TlsError> {
        let mut conn = ServerConnection::new(config).map_err(TlsError::Rustls)?;
        conn.set_buffer_limit(None);
        Ok(TlsLayer {
            conn,
            plaintext_bytes: 0,
            peer_closed: false,
            closed: false,
        })
    }

    /// Feeds received ciphertext and processes every complete record.
    /// Returns how many bytes were taken: all of `ciphertext` unless more
    /// than 16 KiB of decrypted bytes wait unread, at which point rustls
    /// takes no more (backpressure). The caller keeps the rest in its
    /// receive buffer, stops reading the socket while it is full, and
    /// offers the rest again after [`read_plaintext`](Self::read_plaintext).
    /// Called with nothing buffered ([`has_plaintext`](Self::has_plaintext)
    /// false) and non-empty input, it takes at least one byte, so a caller
    /// that drains plaintext between calls always makes progress.
    ///
    /// After the peer's close_notify, input is taken and ignored (RFC 8446
    /// 6.1). An empty slice does nothing (it is not EOF: the caller sees the
    /// socket's EOF and knows whether [`peer_closed`](Self::peer_closed)).
    ///
    /// `Err` is fatal: an alert may now wait in
    /// [`write_ciphertext`](Self::write_ciphertext); send it, then close.
    pub fn receive(&mut self, ciphertext: &[u8]) -> Result<usize, TlsError> {
        let mut rest = ciphertext;
        while !rest.is_empty() && !self.peer_closed {
            match self.conn.read_tls(&mut rest) {
                Ok(0) => break,
                Ok(_) => {}
                // rustls' received plaintext is full: the caller must read.
                Err(_) if self.plaintext_bytes > 0 => break,
                Err(refused) => {
                    self.closed = true;
                    return Err(TlsError::Refused(refused));
                }
            }
            let state = self.conn.process_new_packets().map_err(|error| {
                self.closed = true;
                TlsError::Peer(error)
            })?;
            self.plaintext_bytes = state.plaintext_bytes_to_read();
            self.peer_closed = state.peer_has_closed();
        }
        if self.peer_closed {
            return Ok(ciphertext.len());
        }
        Ok(ciphertext.len() - rest.len())
    }

    /// Moves decrypted application bytes into `dst`; returns how many
    /// (0 = none available now). What does not fit stays buffered, at most
    /// [`PLAINTEXT_BUFFERED_BYTES_MAX`] in all.
    pub fn read_plaintext(&mut self, dst: &mut [u8]) -> usize {
        if dst.is_empty() || self.plaintext_bytes == 0 {
            return 0;
        }
        // With bytes buffered rustls' reader cannot fail: its errors
        // (WouldBlock, unexpected EOF) are for an empty buffer.
        let taken = self.conn.reader().read(dst).unwrap_or(0);
        debug_assert!(taken <= self.plaintext_bytes);
        self.plaintext_bytes = self.plaintext_bytes.saturating_sub(taken);
        taken
    }

    /// Whether decrypted bytes wait for [`read_plaintext`](Self::read_plaintext).
    pub fn has_plaintext(&self) -> bool {
        self.plaintext_bytes > 0
    }

    /// Encrypts all of `plaintext` into records waiting for
    /// [`write_ciphertext`](Self::write_ciphertext). Before the handshake
    /// completes, rustls keeps the plaintext and encrypts it when it can.
    /// Nothing here is bounded: the caller bounds what it passes.
    /// `Err(Closed)` after [`send_close_notify`](Self::send_close_notify) or
    /// a failed session.
    pub fn send_plaintext(&mut self, plaintext: &[u8]) -> Result<(), TlsError> {
        if self.closed {
            return Err(TlsError::Closed);
        }
        // With no buffer limit rustls takes everything; it errs only for a
        // session that already failed, which `closed` covers.
        self.conn
            .writer()
            .write_all(plaintext)
            .map_err(|_| TlsError::Closed)
    }

    /// Appends every byte waiting to go out (handshake, records, alerts) to
    /// `out`; returns how many.
    pub fn write_ciphertext(&mut self, out: &mut Vec<u8>) -> usize {
        let before = out.len();
        while self.conn.wants_write() {
            // Writing into a Vec cannot fail; stop rather than spin if it did.
            if self.conn.write_tls(out).is_err() {
                break;
            }
        }
        out.len() - before
    }

    /// Whether [`write_ciphertext`](Self::write_ciphertext) has bytes.
    pub fn wants_write(&self) -> bool {
        self.conn.wants_write()
    }

    /// Whether the handshake is still running (no application data yet).
    pub fn is_handshaking(&self) -> bool {
        self.conn.is_handshaking()
    }

    /// The peer sent close_notify: a clean TLS EOF. Plaintext sent before it
    /// may still be buffered.
    pub fn peer_closed(&self) -> bool {
        self.peer_closed
    }

    /// Queues close_notify for [`write_ciphertext`](Self::write_ciphertext).
    /// After it, [`send_plaintext`](Self::send_plaintext) is refused.
    pub fn send_close_notify(&mut self) {
        self.conn.send_close_notify();
        self.closed = true;
    }

    /// Negotiated version and cipher suite for the login log line, e.g.
    /// `"TLSv1.3 TLS13_AES_256_GCM_SHA384"`; `None` while handshaking.
    pub fn describe(&self) -> Option<String> {
        if self.conn.is_handshaking() {
            return None;
        }
        let version = match self.conn.protocol_version()? {
            ProtocolVersion::TLSv1_3 => "TLSv1.3",
            ProtocolVersion::TLSv1_2 => "TLSv1.2",
            _ => "TLS",
        };
        let suite = self.conn.negotiated_cipher_suite()?.suite();
        Some(format!("{version} {}", suite.as_str().unwrap_or("unknown")))
    }
}
