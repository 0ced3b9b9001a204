//! One connection's TLS state, sans-IO: the engine hands in ciphertext it
//! read and takes out ciphertext to write; the session reads and writes
//! plaintext. No socket, no clock.

use std::io::{Read, Write};
use std::sync::Arc;

use rustls::server::{Accepted, AcceptedAlert, Acceptor};
use rustls::{ProtocolVersion, ServerConfig, ServerConnection, SignatureScheme};

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
/// 2. when [`take_costly_answer`](Self::take_costly_answer) gives a
///    [`CostlyAnswer`], run it where a slow computation harms nobody (the
///    worker pool) and hand its result to [`answered`](Self::answered);
///    until then `receive` takes nothing;
/// 3. [`read_plaintext`](Self::read_plaintext) into the session's input
///    while [`has_plaintext`](Self::has_plaintext);
/// 4. replies → [`send_plaintext`](Self::send_plaintext);
/// 5. [`write_ciphertext`](Self::write_ciphertext) into the send buffer
///    whenever [`wants_write`](Self::wants_write) (handshake messages,
///    records, alerts), and write that to the socket.
///
/// On `Err` from `receive` or `answered`, write out what `write_ciphertext`
/// gives (the alert) and close.
pub struct TlsLayer {
    state: State,
    /// Plaintext sent before the connection exists (the greeting of an
    /// implicit-TLS listener); handed to rustls, which holds it until the
    /// handshake ends, as soon as the connection does exist.
    early_plaintext: Vec<u8>,
    /// An alert for a ClientHello that was refused.
    alert: Vec<u8>,
    /// Decrypted bytes rustls holds for us: set from rustls' own count after
    /// every `process_new_packets`, lowered by `read_plaintext`. Invariant:
    /// equal to the length of rustls' received-plaintext buffer.
    plaintext_bytes: usize,
    /// The peer's close_notify arrived; input after it is ignored.
    peer_closed: bool,
    /// close_notify queued or the session failed: no more application data.
    closed: bool,
}

/// Where the handshake is. Answering a ClientHello is where a server signs
/// (TLS 1.3 CertificateVerify, TLS 1.2 ServerKeyExchange): the only step
/// that may cost more than a few tens of microseconds.
enum State {
    /// Reading the ClientHello.
    Hello {
        acceptor: Box<Acceptor>,
        config: Arc<ServerConfig>,
    },
    /// The ClientHello is whole and its answer needs a costly signature:
    /// waiting for the caller to take it.
    Costly(Box<CostlyAnswer>),
    /// The caller is computing the answer.
    Answering,
    /// The ClientHello is answered: the rest is rustls'.
    Connected(Box<ServerConnection>),
    /// The ClientHello was refused; only the alert is left to send.
    Refused,
}

/// A ClientHello whose answer signs with a costly key (RSA, or ECDSA over
/// a curve larger than P-256). [`run`](Self::run) it off the shard thread;
/// it is `Send`.
pub struct CostlyAnswer {
    accepted: Accepted,
    config: Arc<ServerConfig>,
}

/// What [`CostlyAnswer::run`] produced, for [`TlsLayer::answered`].
pub struct Answer(Result<ServerConnection, (rustls::Error, Vec<u8>)>);

impl CostlyAnswer {
    /// Answers the ClientHello: key exchange and signature.
    pub fn run(self) -> Answer {
        Answer(
            self.accepted
                .into_connection(self.config)
                .map_err(|(error, alert)| (error, alert_bytes(alert))),
        )
    }
}

fn alert_bytes(mut alert: AcceptedAlert) -> Vec<u8> {
    let mut bytes = Vec::new();
    // Writing into a Vec cannot fail.
    let _ = alert.write_all(&mut bytes);
    bytes
}

/// Whether signing for this ClientHello with the key `config` would pick
/// costs more than a few tens of microseconds: RSA (~0.8 ms for 2048 bits
/// with ring), or ECDSA over P-384 or P-521. Ed25519 and P-256 do not.
fn costly(config: &ServerConfig, accepted: &Accepted) -> bool {
    // `resolve` takes the hello by value; a second view is free (borrows).
    let Some(key) = config.cert_resolver.resolve(accepted.client_hello()) else {
        // No certificate fits: the handshake fails at once, cheaply.
        return false;
    };
    let hello = accepted.client_hello();
    let Some(signer) = key.key.choose_scheme(hello.signature_schemes()) else {
        return false;
    };
    !matches!(
        signer.scheme(),
        SignatureScheme::ED25519 | SignatureScheme::ECDSA_NISTP256_SHA256
    )
}

impl TlsLayer {
    /// A server session with `config` (from [`super::TlsReloader::current`]).
    /// Its send side is unbounded: rustls keeps all it is given, and the
    /// caller bounds what it passes to `send_plaintext` and drains
    /// `write_ciphertext` into its own bounded send buffer.
    pub fn new(config: Arc<ServerConfig>) -> Result<TlsLayer, TlsError> {
        Ok(TlsLayer {
            state: State::Hello {
                acceptor: Box::default(),
                config,
            },
            early_plaintext: Vec::new(),
            alert: Vec::new(),
            plaintext_bytes: 0,
            peer_closed: false,
            closed: false,
        })
    }

    /// Feeds received ciphertext and processes every complete record.
    /// Returns how many bytes were taken: all of `ciphertext` unless more
    /// than 16 KiB of decrypted bytes wait unread, at which point rustls
    /// takes no more (backpressure), or a costly answer to the ClientHello
    /// is outstanding. The caller keeps the rest in its receive buffer,
    /// stops reading the socket while it is full, and offers the rest again
    /// after [`read_plaintext`](Self::read_plaintext) or
    /// [`answered`](Self::answered). Called with nothing buffered
    /// ([`has_plaintext`](Self::has_plaintext) false), no answer
    /// outstanding and non-empty input, it takes at least one byte, so a
    /// caller that drains plaintext between calls always makes progress.
    ///
    /// After the peer's close_notify, input is taken and ignored (RFC 8446
    /// 6.1). An empty slice does nothing (it is not EOF: the caller sees the
    /// socket's EOF and knows whether [`peer_closed`](Self::peer_closed)).
    ///
    /// `Err` is fatal: an alert may now wait in
    /// [`write_ciphertext`](Self::write_ciphertext); send it, then close.
    pub fn receive(&mut self, ciphertext: &[u8]) -> Result<usize, TlsError> {
        let mut rest = ciphertext;
        match self.state {
            State::Hello { .. } => self.hello(&mut rest)?,
            // The failure sticks.
            State::Refused => return Err(TlsError::Closed),
            _ => {}
        }
        while !rest.is_empty() && !self.peer_closed {
            let State::Connected(conn) = &mut self.state else {
                break;
            };
            match conn.read_tls(&mut rest) {
                Ok(0) => break,
                Ok(_) => {}
                // rustls' received plaintext is full: the caller must read.
                Err(_) if self.plaintext_bytes > 0 => break,
                Err(refused) => {
                    self.closed = true;
                    return Err(TlsError::Refused(refused));
                }
            }
            self.process()?;
        }
        if self.peer_closed {
            return Ok(ciphertext.len());
        }
        Ok(ciphertext.len() - rest.len())
    }

    /// Reads the ClientHello from `rest`. Once it is whole, answers it
    /// here when that is cheap, or leaves a [`CostlyAnswer`] for the caller.
    fn hello(&mut self, rest: &mut &[u8]) -> Result<(), TlsError> {
        let State::Hello { acceptor, .. } = &mut self.state else {
            return Ok(());
        };
        let accepted = loop {
            if rest.is_empty() {
                return Ok(());
            }
            if let Err(refused) = acceptor.read_tls(rest) {
                self.state = State::Refused;
                self.closed = true;
                return Err(TlsError::Refused(refused));
            }
            match acceptor.accept() {
                Ok(None) => continue,
                Ok(Some(accepted)) => break accepted,
                Err((error, alert)) => {
                    self.alert = alert_bytes(alert);
                    self.state = State::Refused;
                    self.closed = true;
                    return Err(TlsError::Peer(error));
                }
            }
        };
        let State::Hello { config, .. } = std::mem::replace(&mut self.state, State::Answering)
        else {
            unreachable!("matched above");
        };
        let answer = CostlyAnswer { accepted, config };
        if costly(&answer.config, &answer.accepted) {
            self.state = State::Costly(Box::new(answer));
            return Ok(());
        }
        self.answered(answer.run())
    }

    /// A ClientHello whose answer is too costly for the caller's thread,
    /// once: run it elsewhere and give the result to
    /// [`answered`](Self::answered) (or run it in place if there is no
    /// elsewhere: it is correct anywhere, only slow).
    pub fn take_costly_answer(&mut self) -> Option<CostlyAnswer> {
        if !matches!(self.state, State::Costly(_)) {
            return None;
        }
        match std::mem::replace(&mut self.state, State::Answering) {
            State::Costly(answer) => Some(*answer),
            _ => unreachable!("matched above"),
        }
    }

    /// Whether an answer is being computed elsewhere (the caller has taken a
    /// [`CostlyAnswer`] and not yet handed back its result).
    pub fn is_answering(&self) -> bool {
        matches!(self.state, State::Answering | State::Costly(_))
    }

    /// The ClientHello's answer: the handshake goes on (call
    /// [`receive`](Self::receive) with what is left), or it failed (`Err`:
    /// send the alert, then close).
    pub fn answered(&mut self, answer: Answer) -> Result<(), TlsError> {
        match answer.0 {
            Ok(mut conn) => {
                conn.set_buffer_limit(None);
                if !self.early_plaintext.is_empty() && !self.closed {
                    // Unbounded buffer: rustls keeps it all until the
                    // handshake is done.
                    let _ = conn.writer().write_all(&self.early_plaintext);
                }
                self.early_plaintext = Vec::new();
                self.state = State::Connected(Box::new(conn));
                // Records that came with the ClientHello.
                self.process()
            }
            Err((error, alert)) => {
                self.alert = alert;
                self.state = State::Refused;
                self.closed = true;
                Err(TlsError::Peer(error))
            }
        }
    }

    fn process(&mut self) -> Result<(), TlsError> {
        let State::Connected(conn) = &mut self.state else {
            return Ok(());
        };
        let state = conn.process_new_packets().map_err(|error| {
            self.closed = true;
            TlsError::Peer(error)
        })?;
        self.plaintext_bytes = state.plaintext_bytes_to_read();
        self.peer_closed = state.peer_has_closed();
        Ok(())
    }

    /// Moves decrypted application bytes into `dst`; returns how many
    /// (0 = none available now). What does not fit stays buffered, at most
    /// [`PLAINTEXT_BUFFERED_BYTES_MAX`] in all.
    pub fn read_plaintext(&mut self, dst: &mut [u8]) -> usize {
        if dst.is_empty() || self.plaintext_bytes == 0 {
            return 0;
        }
        let State::Connected(conn) = &mut self.state else {
            return 0;
        };
        // With bytes buffered rustls' reader cannot fail: its errors
        // (WouldBlock, unexpected EOF) are for an empty buffer.
        let taken = conn.reader().read(dst).unwrap_or(0);
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
        let State::Connected(conn) = &mut self.state else {
            self.early_plaintext.extend_from_slice(plaintext);
            return Ok(());
        };
        // With no buffer limit rustls takes everything; it errs only for a
        // session that already failed, which `closed` covers.
        conn.writer()
            .write_all(plaintext)
            .map_err(|_| TlsError::Closed)
    }

    /// Appends every byte waiting to go out (handshake, records, alerts) to
    /// `out`; returns how many.
    pub fn write_ciphertext(&mut self, out: &mut Vec<u8>) -> usize {
        let before = out.len();
        out.append(&mut self.alert);
        if let State::Connected(conn) = &mut self.state {
            while conn.wants_write() {
                // Writing into a Vec cannot fail; stop rather than spin if it did.
                if conn.write_tls(out).is_err() {
                    break;
                }
            }
        }
        out.len() - before
    }

    /// Whether [`write_ciphertext`](Self::write_ciphertext) has bytes.
    pub fn wants_write(&self) -> bool {
        !self.alert.is_empty()
            || matches!(&self.state, State::Connected(conn) if conn.wants_write())
    }

    /// Whether the handshake is still running (no application data yet).
    pub fn is_handshaking(&self) -> bool {
        match &self.state {
            State::Connected(conn) => conn.is_handshaking(),
            _ => true,
        }
    }

    /// The peer sent close_notify: a clean TLS EOF. Plaintext sent before it
    /// may still be buffered.
    pub fn peer_closed(&self) -> bool {
        self.peer_closed
    }

    /// Queues close_notify for [`write_ciphertext`](Self::write_ciphertext).
    /// After it, [`send_plaintext`](Self::send_plaintext) is refused.
    pub fn send_close_notify(&mut self) {
        // Before the ClientHello is answered there is no session to close:
        // the caller just closes the socket.
        if let State::Connected(conn) = &mut self.state {
            conn.send_close_notify();
        }
        self.closed = true;
    }

    /// Negotiated version and cipher suite for the login log line, e.g.
    /// `"TLSv1.3 TLS13_AES_128_GCM_SHA256"`; `None` while handshaking.
    pub fn describe(&self) -> Option<String> {
        let State::Connected(conn) = &self.state else {
            return None;
        };
        if conn.is_handshaking() {
            return None;
        }
        let version = match conn.protocol_version()? {
            ProtocolVersion::TLSv1_3 => "TLSv1.3",
            ProtocolVersion::TLSv1_2 => "TLSv1.2",
            _ => "TLS",
        };
        let suite = conn.negotiated_cipher_suite()?.suite();
        Some(format!("{version} {}", suite.as_str().unwrap_or("unknown")))
    }
}
