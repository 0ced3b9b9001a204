//! One client connection, without its socket: buffers, the protocol session,
//! the mailbox and the body being streamed. `Conn` does no I/O; the shard
//! core drives it and a backend moves its bytes, through a small contract
//! that suits a readiness loop and a completion ring alike:
//!
//! - input (`io.rs`): [`Conn::input_space`] → the backend writes received
//!   bytes there → [`Conn::on_input`] (or [`Conn::on_eof`]);
//! - work: [`Conn::process`] answers what can be answered (`effects.rs`
//!   dispatches what the session asks for) and fills the body (`stream.rs`);
//! - output (`io.rs`): [`Conn::take_output`] hands over an [`Outgoing`]
//!   (owned bytes, plus raw mmap ranges that keep their map alive), the
//!   backend sends it and gives it back with [`Conn::output_done`].
//!   Ownership moves with the bytes, so a completion backend can keep them
//!   while the kernel reads.
//! - lifecycle (here): [`Conn::status`] says whether to keep going, shut
//!   down the write side and linger, or drop the connection; timers.
//!
//! Memory per connection is bounded: the receive buffer is fixed, and output
//! (replies plus the body window) stops growing at `output_buffer_bytes`;
//! a body is transformed from the mmap chunk by chunk only as output drains.
#![forbid(unsafe_code)]

mod effects;
mod io;
mod stream;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::body::BodyStream;
use super::buffer::InBuf;
use super::context::{Cx, Settings};
use super::error::ConnError;
use crate::auth::ScramExchange;
use crate::protocol::{Completion, Session};
use crate::store::Mailbox;
use crate::tls::TlsLayer;

pub use io::Outgoing;
use io::Tls;

/// How long a closing connection keeps reading (and discarding) what the
/// client still sends, so the kernel ends it with FIN rather than RST and the
/// client reads our last line (a lingering close, as web servers do).
pub const LINGER: Duration = Duration::from_secs(2);

/// What the shard should do with the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Keep it; move bytes when the socket allows.
    Open,
    /// Everything is said: shut down the write side, then call
    /// [`Conn::start_linger`] and discard input until EOF or the timer.
    Linger,
    /// Drop it (which releases the mailbox lock).
    Close,
}

/// One client connection.
pub struct Conn {
    /// Unique per shard.
    pub id: u64,
    /// The client's address.
    pub peer: SocketAddr,
    session: Session,
    recv: InBuf,
    /// New output (replies, transformed body), after `unsent`.
    out: Vec<u8>,
    /// Output handed out earlier and not all sent: goes first.
    unsent: Option<(Vec<u8>, usize)>,
    /// A cleared buffer to reuse.
    spare: Vec<u8>,
    /// An `Outgoing` is with the backend (a completion backend's send in
    /// flight).
    out_with_backend: bool,
    body: Option<BodyStream>,
    mailbox: Option<Mailbox>,
    user: Option<String>,
    /// A failed login's answer, held back until the failure delay passes.
    held: Option<(Instant, Completion)>,
    /// Close once the queued output is written.
    closing: bool,
    /// The client closed its sending side.
    peer_eof: bool,
    /// TLS, when on or starting (STLS answered): input and output pass
    /// through it.
    tls: Option<Box<Tls>>,
    /// A SCRAM-SHA-256 exchange in progress.
    scram: Option<Box<ScramExchange>>,
    /// Our side is shut down; discarding input until EOF or this instant.
    linger_until: Option<Instant>,
    last_activity: Instant,
    /// Bumped whenever a timer entry is pushed, so stale entries are ignored.
    pub timer_gen: u64,
    /// When the live timer entry fires; `None` while none is queued.
    pub armed_at: Option<Instant>,
    bytes_sent: u64,
    /// A trusted proxy's connection before its PROXY header: nothing is
    /// said and nothing is a command until the header is whole, by this
    /// deadline.
    proxy_deadline: Option<Instant>,
    /// The header, parsed, until the shard admits the client it names.
    proxy_header: Option<crate::protocol::proxy::Header>,
    /// The first input of a client not behind a proxy has been looked at
    /// (a PROXY header there is refused).
    first_input_seen: bool,
    /// When the login being answered started (PASS, or SASL's last step).
    login_started: Option<Instant>,
    /// The RETR/TOP being sent: when it was asked for, and the bytes sent
    /// or queued before its reply.
    retr_started: Option<(Instant, u64)>,
    /// Messages the QUIT being committed removes.
    commit_marked: usize,
}

impl Conn {
    /// A new connection; queues the greeting. `tls` is set for implicit TLS
    /// (the greeting then waits for the handshake).
    pub fn new(
        id: u64,
        peer: SocketAddr,
        session: Session,
        recv: InBuf,
        now: Instant,
        tls: Option<TlsLayer>,
    ) -> Conn {
        let mut conn = Conn::awaiting_proxy(id, peer, session, recv, now, now);
        conn.admit(peer, None, tls);
        conn
    }

    /// A connection from a trusted proxy: it says nothing until the PROXY
    /// header has arrived (by `deadline`) and the shard has admitted the
    /// client it names ([`Conn::admit`]).
    pub fn awaiting_proxy(
        id: u64,
        peer: SocketAddr,
        session: Session,
        recv: InBuf,
        now: Instant,
        deadline: Instant,
    ) -> Conn {
        Conn {
            id,
            peer,
            session,
            recv,
            out: Vec::with_capacity(256),
            unsent: None,
            spare: Vec::new(),
            out_with_backend: false,
            body: None,
            mailbox: None,
            user: None,
            held: None,
            closing: false,
            peer_eof: false,
            tls: None,
            scram: None,
            linger_until: None,
            last_activity: now,
            timer_gen: 0,
            armed_at: None,
            bytes_sent: 0,
            proxy_deadline: Some(deadline),
            proxy_header: None,
            first_input_seen: false,
            login_started: None,
            retr_started: None,
            commit_marked: 0,
        }
    }

    /// Admits the client: its address (from a PROXY header, or the socket's),
    /// its session when it changed, TLS for an implicit-TLS listener, and
    /// the greeting. Bytes that followed a PROXY header stay: on an
    /// implicit-TLS listener they are the start of the handshake.
    pub fn admit(&mut self, peer: SocketAddr, session: Option<Session>, tls: Option<TlsLayer>) {
        self.peer = peer;
        self.proxy_deadline = None;
        if let Some(session) = session {
            self.session = session;
        }
        self.session.greet(&mut self.out);
        if let Some(layer) = tls {
            let mut tls = Box::new(Tls::on(layer, self.recv.capacity()));
            tls.take_early(&mut self.recv);
            self.tls = Some(tls);
        }
    }

    /// Refuses the client with one last line (admission said no).
    pub fn refuse(&mut self, line: &[u8]) {
        self.proxy_deadline = None;
        self.out.extend_from_slice(line);
        self.closing = true;
    }

    /// The parsed PROXY header, once, for the shard to admit its client.
    pub fn take_proxy_header(&mut self) -> Option<crate::protocol::proxy::Header> {
        self.proxy_header.take()
    }

    /// Answers buffered commands and fills the body until nothing more can
    /// happen without I/O. An error ends this session only.
    pub fn process(&mut self, cx: &Cx<'_>) -> Result<(), ConnError> {
        if self.linger_until.is_some() {
            return Ok(());
        }
        if self.proxy_deadline.is_some() {
            return self.read_proxy_header();
        }
        loop {
            let decrypted = self.tls_input(cx.cells())?;
            self.offload_tls_answer(cx);
            let answered = self.run_session(cx);
            let filled = self.fill_body(cx)?;
            if !decrypted && !answered && !filled {
                return Ok(());
            }
        }
    }

    /// Parses the PROXY header from what has arrived; a whole one waits in
    /// `proxy_header` for the shard, a bad one ends the connection.
    fn read_proxy_header(&mut self) -> Result<(), ConnError> {
        use crate::protocol::proxy::{self, ProxyError, Status as Parsed};
        if self.proxy_header.is_some() {
            return Ok(());
        }
        match proxy::parse(self.recv.filled()) {
            Ok(Parsed::Complete((header, used))) => {
                self.recv.consume(used);
                self.proxy_header = Some(header);
                Ok(())
            }
            Ok(Parsed::Partial) if self.peer_eof => Err(ConnError::Proxy(ProxyError::Missing)),
            Ok(Parsed::Partial) => Ok(()),
            Err(e) => Err(ConnError::Proxy(e)),
        }
    }

    /// True while pool work, a held answer, a body or the admission of a
    /// parsed PROXY header is outstanding. The last keeps a connection
    /// whose end of file came with its header open until the greeting and
    /// the answers to the commands after the header are out.
    fn busy(&self) -> bool {
        self.session.is_waiting()
            || self.held.is_some()
            || self.body.is_some()
            || self.proxy_header.is_some()
    }

    /// Lets the session answer what is buffered. Returns whether it did anything.
    fn run_session(&mut self, cx: &Cx<'_>) -> bool {
        if self.busy() || self.closing || self.queued_bytes() >= cx.settings.output_buffer_bytes {
            return false;
        }
        if !self.first_input_seen && !self.recv.is_empty() {
            self.first_input_seen = true;
            if crate::protocol::proxy::looks_like_header(self.recv.filled()) {
                tracing::warn!(
                    "pop3 PROXY header from a peer not in server.proxy_from; closing: rip={}",
                    self.peer.ip()
                );
                self.recv.clear();
                self.closing = true;
                return true;
            }
        }
        let before = self.out.len();
        if self.session.has_pending_output() {
            self.session.continue_output(&mut self.out);
        }
        let step = self.session.handle_input(self.recv.filled(), &mut self.out);
        self.recv.consume(step.consumed);
        let acted = step.effect.is_some();
        if let Some(effect) = step.effect {
            self.apply(effect, cx);
        }
        acted || step.consumed > 0 || self.out.len() != before
    }

    // ---- lifecycle ----

    /// What the shard should do next. Call after input, processing and output.
    pub fn status(&self) -> Status {
        if self.linger_until.is_some() {
            return if self.peer_eof {
                Status::Close
            } else {
                Status::Open
            };
        }
        let flushed = !self.has_output() && !self.out_with_backend;
        if self.closing && flushed && self.body.is_none() {
            return if self.peer_eof {
                Status::Close
            } else {
                Status::Linger
            };
        }
        if self.peer_eof && !self.busy() && flushed {
            // The client is gone and nothing it sent is left to answer.
            // A dropped session deletes nothing.
            return Status::Close;
        }
        Status::Open
    }

    /// QUIT was answered on a plaintext connection and nothing the client
    /// sent is left unread in our buffer (TLS has its close_notify to read).
    pub fn quit_answered_and_idle(&self) -> bool {
        self.session.quit_answered() && self.tls.is_none() && self.recv.is_empty()
    }

    /// The write side is shut down: discard input until EOF or `LINGER`.
    pub fn start_linger(&mut self, now: Instant) {
        self.linger_until = Some(now + LINGER);
        // The session is over: free the mailbox now, not when the client
        // finally closes its side.
        self.mailbox = None;
    }

    /// When the connection next needs the timer: its idle deadline, or
    /// earlier when a held answer is due.
    pub fn next_wakeup(&self, settings: &Settings) -> Instant {
        if let Some(until) = self.linger_until.or(self.proxy_deadline) {
            return until;
        }
        let idle = if self.session.is_authorized() {
            settings.autologout
        } else {
            settings.login_timeout
        };
        let deadline = self.last_activity + idle;
        match &self.held {
            Some((due, _)) => deadline.min(*due),
            None => deadline,
        }
    }

    /// Called by the timer: delivers a held answer, or ends an idle session
    /// (returns `Close` after queueing a last line for one write attempt).
    pub fn on_timer(&mut self, cx: &Cx<'_>) -> Status {
        if self.linger_until.is_some_and(|until| until <= cx.now) {
            return Status::Close;
        }
        if self.proxy_deadline.is_some_and(|until| until <= cx.now) {
            // A proxy that never finishes its header gets no greeting.
            tracing::warn!("pop3 PROXY header timeout; closing: rip={}", self.peer.ip());
            return Status::Close;
        }
        if let Some((due, _)) = &self.held
            && *due <= cx.now
        {
            let (_, completion) = self.held.take().expect("checked above");
            self.complete(completion, cx);
            return Status::Open;
        }
        if self.linger_until.is_none() && self.next_wakeup(cx.settings) <= cx.now {
            tracing::info!(peer = %self.peer, user = self.user.as_deref().unwrap_or(""), "disconnected for inactivity");
            self.abort(crate::protocol::reply::text::TIMEOUT);
            return Status::Close;
        }
        Status::Open
    }

    /// Ends the session with a last line; the shard makes one attempt to
    /// send it and then drops the connection.
    pub fn abort(&mut self, why: &str) {
        self.body = None;
        self.unsent = None;
        self.session.abort(&mut self.out, why);
    }

    /// Logs why a session ends on an error; the shard then drops it.
    pub fn fail(&self, e: &ConnError) {
        e.log(self.peer);
    }

    /// The receive buffer, for the shard's pool once the connection is gone.
    pub fn take_recv(&mut self) -> InBuf {
        std::mem::replace(&mut self.recv, InBuf::new(0))
    }

    /// The logout line, logged when the connection is dropped.
    pub fn log_end(&self, shard: usize) {
        let Some(user) = &self.user else { return };
        let s = self.session.summary();
        tracing::info!(
            "pop3 logout: user=<{user}>, rip={}, shard={shard}, messages={}, retr={}, bytes={}, deleted={}",
            crate::log_format::Rip(self.peer.ip()),
            s.messages,
            s.bodies_sent,
            self.bytes_sent,
            s.deleted
        );
    }
}
