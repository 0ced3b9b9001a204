//! One client connection, without its socket: buffers, the protocol session,
//! the mailbox and the body being streamed. `Conn` does no I/O; a backend
//! (the pump: `shard.rs` on epoll, `uring/shard.rs` on io_uring) moves bytes
//! in and out through a small contract, the same for a readiness loop and a
//! completion ring:
//!
//! - input: [`Conn::input_space`] → the pump writes received bytes there →
//!   [`Conn::on_input`] (or [`Conn::on_eof`]);
//! - work: [`Conn::process`] answers what can be answered and fills the body;
//! - output: [`Conn::take_output`] hands over an [`Outgoing`] (owned bytes,
//!   plus raw mmap ranges that keep their map alive), the pump sends it and
//!   gives it back with [`Conn::output_done`]. Ownership moves with the
//!   bytes, so a completion backend can keep them while the kernel reads.
//! - lifecycle: [`Conn::status`] says whether to keep going, shut down the
//!   write side and linger, or drop the connection.
//!
//! Memory per connection is bounded: the receive buffer is fixed, and output
//! (replies plus the body window) stops growing at `output_buffer_bytes`;
//! a body is transformed from the mmap chunk by chunk only as output drains.
#![forbid(unsafe_code)]

use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::body::{BodyStream, RawPlan};
use super::buffer::InBuf;
use super::guard::Guard;
use super::worker::{ConnRef, Done, Job, Outcome, Reply};
use crate::auth::ScramServer;
use crate::config::PlaintextAuth;
use crate::protocol::{BodyError, Completion, Effect, LoginFailure, Offer, Session};
use crate::store::Mailbox;
use crate::store::body::MessageMap;
use crate::tls::{TlsLayer, TlsReloader};
use crate::wire::Extent;

/// How long a closing connection keeps reading (and discarding) what the
/// client still sends, so the kernel ends it with FIN rather than RST and the
/// client reads our last line (a lingering close, as web servers do).
pub const LINGER: Duration = Duration::from_secs(2);

/// A send buffer larger than this is not kept for reuse.
const SPARE_BYTES_MAX: usize = 16 * 1024;

/// What the pump should do with the connection.
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

/// Everything a connection needs from its shard.
pub struct Context<'a> {
    /// The pool's job queue.
    pub jobs: &'a crossbeam_channel::Sender<Job>,
    /// Where the pool answers (this shard's channel and waker).
    pub reply: &'a Reply,
    /// Per-shard settings.
    pub settings: &'a Settings,
    /// Now, read once per event batch.
    pub now: Instant,
    /// The connection's slab key.
    pub slot: usize,
    /// Per-address defences.
    pub guard: &'a Guard,
}

/// What every connection of a shard uses from it: one field of each pump, so
/// a [`Context`] can be made while a connection is borrowed from the slab.
pub struct Env {
    /// The pool's job queue.
    pub jobs: crossbeam_channel::Sender<Job>,
    /// This shard's reply channel and waker.
    pub reply: Reply,
    /// Per-shard settings.
    pub settings: Settings,
    /// What the shards share (limits, guard, shutdown flag).
    pub shared: Arc<super::shard::Shared>,
}

impl Env {
    /// A shard's environment, and the receiving end of its completion
    /// channel (the pool answers on `reply.to` and wakes `waker`).
    pub fn new(
        jobs: crossbeam_channel::Sender<Job>,
        settings: Settings,
        shared: Arc<super::shard::Shared>,
        waker: Arc<super::waker::Waker>,
    ) -> (Env, crossbeam_channel::Receiver<super::worker::Done>) {
        let (to, done_rx) = crossbeam_channel::unbounded();
        let unset = SocketAddr::from(([0, 0, 0, 0], 0));
        let reply = Reply {
            to,
            waker,
            conn: ConnRef { slot: 0, id: 0 },
            peer: unset,
        };
        (
            Env {
                jobs,
                reply,
                settings,
                shared,
            },
            done_rx,
        )
    }

    /// The context for the connection in `slot` at `now`.
    pub fn cx(&self, slot: usize, now: Instant) -> Context<'_> {
        Context {
            jobs: &self.jobs,
            reply: &self.reply,
            settings: &self.settings,
            now,
            slot,
            guard: &self.shared.guard,
        }
    }
}

/// Settings every connection of a shard shares.
#[derive(Clone)]
pub struct Settings {
    /// Shard number, for logs.
    pub shard: usize,
    /// Idle time before login.
    pub login_timeout: Duration,
    /// Idle time after login.
    pub autologout: Duration,
    /// Output bound per connection.
    pub output_buffer_bytes: usize,
    /// Receive buffer size.
    pub recv_buffer_bytes: usize,
    /// Certificates for STLS and implicit TLS; `None` when none is configured.
    pub tls: Option<Arc<TlsReloader>>,
    /// Where plaintext logins are allowed (decides the offer after STLS).
    pub plaintext_auth: PlaintextAuth,
}

/// TLS on a connection: the layer and the ciphertext not yet fed to it.
struct Tls {
    layer: TlsLayer,
    cipher_in: InBuf,
}

/// Bytes handed to the pump to send: queued replies (or transformed body),
/// then possibly raw mmap ranges. The pump owns it until it gives it back.
#[derive(Debug)]
pub struct Outgoing {
    buf: Vec<u8>,
    pos: usize,
    raw: Option<RawPlan>,
}

impl Outgoing {
    /// Fills `iov` (at least `IOVECS_MAX` long) with the slices to write, in
    /// order; returns how many.
    pub fn slices<'a>(&'a self, iov: &mut [IoSlice<'a>]) -> usize {
        let mut count = 0;
        if self.pos < self.buf.len() {
            iov[0] = IoSlice::new(&self.buf[self.pos..]);
            count = 1;
        }
        if let Some(raw) = &self.raw {
            count += raw.slices(&mut iov[count..]);
        }
        count
    }

    /// Bytes to write in all.
    pub fn len(&self) -> usize {
        self.buf.len() - self.pos + self.raw.as_ref().map_or(0, RawPlan::len)
    }

    /// True when there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Tls {
    fn new(layer: TlsLayer, bytes: usize) -> Tls {
        Tls {
            layer,
            cipher_in: InBuf::new(bytes),
        }
    }
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
    /// An `Outgoing` is with the pump (a completion backend's send in flight).
    out_with_pump: bool,
    body: Option<BodyStream>,
    mailbox: Option<Mailbox>,
    user: Option<String>,
    /// A failed login's answer, held back until the failure delay passes.
    held: Option<(Instant, Completion)>,
    /// Close once the queued output is written.
    closing: bool,
    /// The client closed its sending side.
    peer_eof: bool,
    /// TLS, when on: input and output pass through it.
    tls: Option<Box<Tls>>,
    /// A SCRAM-SHA-256 exchange in progress, with the name it started with.
    scram: Option<(Box<ScramServer>, String)>,
    /// STLS was accepted: TLS starts with this layer once the `+OK` is out.
    stls_pending: Option<(TlsLayer, Offer)>,
    /// Our side is shut down; discarding input until EOF or this instant.
    linger_until: Option<Instant>,
    last_activity: Instant,
    /// Bumped whenever a timer entry is pushed, so stale entries are ignored.
    pub timer_gen: u64,
    /// When the live timer entry fires; `None` while none is queued.
    pub armed_at: Option<Instant>,
    bytes_sent: u64,
}

impl Conn {
    /// A new connection; queues the greeting. `tls` is set for implicit TLS
    /// (the greeting then waits for the handshake).
    pub fn new(
        id: u64,
        peer: SocketAddr,
        session: Session,
        s: &Settings,
        now: Instant,
        tls: Option<TlsLayer>,
    ) -> Conn {
        let mut out = Vec::with_capacity(256);
        session.greet(&mut out);
        let tls = tls.map(|layer| Box::new(Tls::new(layer, s.recv_buffer_bytes)));
        Conn {
            id,
            peer,
            session,
            recv: InBuf::new(s.recv_buffer_bytes),
            out,
            unsent: None,
            spare: Vec::new(),
            out_with_pump: false,
            body: None,
            mailbox: None,
            user: None,
            held: None,
            closing: false,
            peer_eof: false,
            tls,
            stls_pending: None,
            scram: None,
            linger_until: None,
            last_activity: now,
            timer_gen: 0,
            armed_at: None,
            bytes_sent: 0,
        }
    }

    // ---- input ----

    /// True when the connection can take more input now.
    pub fn wants_input(&self) -> bool {
        let buffer = match &self.tls {
            Some(tls) => &tls.cipher_in,
            None => &self.recv,
        };
        !self.peer_eof && (self.linger_until.is_some() || buffer.has_room())
    }

    /// Where the pump puts received bytes (empty when the buffer is full).
    /// While lingering, input is discarded, so the whole buffer is offered.
    pub fn input_space(&mut self) -> &mut [u8] {
        if self.linger_until.is_some() {
            return self.recv.scratch();
        }
        match &mut self.tls {
            Some(tls) => tls.cipher_in.space(),
            None => self.recv.space(),
        }
    }

    /// `n` bytes were written into [`Conn::input_space`].
    pub fn on_input(&mut self, n: usize, now: Instant) {
        if self.linger_until.is_some() {
            return;
        }
        match &mut self.tls {
            Some(tls) => tls.cipher_in.commit(n),
            None => self.recv.commit(n),
        }
        self.last_activity = now;
    }

    /// The client closed its sending side.
    pub fn on_eof(&mut self) {
        self.peer_eof = true;
    }

    // ---- work ----

    /// Answers buffered commands and fills the body until nothing more can
    /// happen without I/O. An error ends this session only (the cause is
    /// logged by [`Conn::fail`]).
    pub fn process(&mut self, cx: &Context<'_>) -> io::Result<()> {
        if self.linger_until.is_some() {
            return Ok(());
        }
        loop {
            let decrypted = self.tls_input()?;
            let answered = self.run_session(cx);
            let filled = self.fill_body(cx)?;
            if !decrypted && !answered && !filled {
                return Ok(());
            }
        }
    }

    /// Feeds buffered ciphertext to TLS and moves the plaintext it yields into
    /// the receive buffer, as far as that has room. Returns whether bytes moved.
    fn tls_input(&mut self) -> io::Result<bool> {
        let Some(tls) = &mut self.tls else {
            return Ok(false);
        };
        let mut moved = false;
        loop {
            if !tls.cipher_in.is_empty() {
                let taken = tls
                    .layer
                    .receive(tls.cipher_in.filled())
                    .map_err(io::Error::other)?;
                tls.cipher_in.consume(taken);
                moved |= taken > 0;
            }
            let got = tls.layer.read_plaintext(self.recv.space());
            self.recv.commit(got);
            moved |= got > 0;
            if got == 0 || tls.cipher_in.is_empty() {
                break;
            }
        }
        if tls.layer.peer_closed() {
            // close_notify: a clean end of input.
            self.peer_eof = true;
        }
        Ok(moved)
    }

    fn queued_bytes(&self) -> usize {
        self.out.len() + self.unsent.as_ref().map_or(0, |(b, p)| b.len() - p)
    }

    /// True while pool work, a held answer or a body is outstanding.
    fn busy(&self) -> bool {
        self.session.is_waiting() || self.held.is_some() || self.body.is_some()
    }

    /// Lets the session answer what is buffered. Returns whether it did anything.
    fn run_session(&mut self, cx: &Context<'_>) -> bool {
        if self.busy() || self.closing || self.queued_bytes() >= cx.settings.output_buffer_bytes {
            return false;
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

    fn apply(&mut self, effect: Effect, cx: &Context<'_>) {
        let reply = Reply {
            conn: ConnRef {
                slot: cx.slot,
                id: self.id,
            },
            peer: self.peer,
            ..cx.reply.clone()
        };
        match effect {
            Effect::Login { user, credential } => {
                if cx
                    .jobs
                    .send(Job::Login {
                        reply,
                        user,
                        credential,
                    })
                    .is_err()
                {
                    self.session.complete(
                        Completion::LoginFailed(LoginFailure::Temporary),
                        &mut self.out,
                    );
                }
            }
            Effect::SendBody { index, top_lines } => self.open_body(index, top_lines),
            Effect::Commit(deleted) => {
                let Some(mailbox) = &self.mailbox else {
                    debug_assert!(false, "commit without a mailbox");
                    self.session
                        .complete(Completion::Committed(false), &mut self.out);
                    return;
                };
                let snapshot = Arc::clone(&mailbox.snapshot);
                if cx
                    .jobs
                    .send(Job::Commit {
                        reply,
                        snapshot,
                        deleted,
                    })
                    .is_err()
                {
                    self.session
                        .complete(Completion::Committed(false), &mut self.out);
                }
            }
            Effect::Sasl { first, data } => self.scram_step(first, &data, reply, cx),
            Effect::StartTls => {
                // Anything the client pipelined after STLS is plaintext it must
                // not have sent (the STARTTLS injection class of bugs): drop it.
                self.recv.clear();
                let Some(reloader) = &cx.settings.tls else {
                    debug_assert!(false, "STLS offered without a certificate");
                    self.closing = true;
                    return;
                };
                match TlsLayer::new(reloader.current()) {
                    Ok(layer) => {
                        let offer = Offer {
                            plaintext_auth: cx.settings.plaintext_auth.allows(true, self.peer.ip()),
                            stls: false,
                        };
                        self.stls_pending = Some((layer, offer));
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "cannot start TLS");
                        self.closing = true;
                    }
                }
            }
            Effect::Close => {
                self.closing = true;
                // The session is over (QUIT answered, deletions committed):
                // free the mailbox before the reply reaches the client, so
                // its next login never meets its own lock.
                self.mailbox = None;
            }
        }
    }

    /// Maps the message file for RETR/TOP. The open and mmap run on the
    /// shard: the login scan just read this directory, so the dentry is hot,
    /// and it saves a round trip through the pool per message.
    fn open_body(&mut self, index: usize, top_lines: Option<u64>) {
        let Some(mailbox) = &self.mailbox else {
            self.session
                .body_ready(Err(BodyError::Temporary), &mut self.out);
            return;
        };
        let path = mailbox.snapshot.path(index);
        let map = match MessageMap::open(&path) {
            Ok(map) => map,
            Err(e) => {
                let why = if e.kind() == io::ErrorKind::NotFound {
                    BodyError::Vanished
                } else {
                    tracing::error!(file = %path.display(), error = %e, "cannot open message");
                    BodyError::Temporary
                };
                self.session.body_ready(Err(why), &mut self.out);
                return;
            }
        };
        let extent = match top_lines {
            None => Extent::Whole,
            Some(body_lines) => Extent::Top { body_lines },
        };
        // A file as long as its CRLF size has no bare LF: send it raw.
        // Over TLS every byte is encrypted anyway: always transform.
        let crlf =
            map.len() as u64 == mailbox.snapshot.messages[index].octets && self.tls.is_none();
        match BodyStream::new(map, extent, crlf) {
            Ok(body) => {
                self.body = Some(body);
                self.session.body_ready(Ok(()), &mut self.out);
            }
            Err(_) => {
                tracing::warn!(file = %path.display(), "message file truncated before it was sent");
                self.session
                    .body_ready(Err(BodyError::Temporary), &mut self.out);
            }
        }
    }

    /// Produces more of the body while less than half the output bound is queued.
    fn fill_body(&mut self, cx: &Context<'_>) -> io::Result<bool> {
        let Some(body) = &mut self.body else {
            return Ok(false);
        };
        let low_water = cx.settings.output_buffer_bytes / 2;
        let queued = self.out.len() + self.unsent.as_ref().map_or(0, |(b, p)| b.len() - p);
        if queued >= low_water {
            return Ok(false);
        }
        let limit = self.out.len() + (low_water - queued);
        let progress = body
            .fill(&mut self.out, limit)
            .map_err(|_| io::Error::other("message file truncated while it was sent"))?;
        if body.is_done() {
            self.body = None;
            self.session.body_sent();
            return Ok(true);
        }
        Ok(progress)
    }

    // ---- output ----

    /// True when bytes are waiting to be sent (or a raw range is due).
    pub fn has_output(&self) -> bool {
        self.unsent.is_some()
            || !self.out.is_empty()
            || self.raw_due()
            || self.tls.as_ref().is_some_and(|t| t.layer.wants_write())
    }

    fn raw_due(&self) -> bool {
        self.body.as_ref().is_some_and(BodyStream::has_raw_left)
    }

    /// Hands the next bytes to send to the pump, or `None` when nothing is
    /// due or an earlier `Outgoing` is still with the pump.
    pub fn take_output(&mut self) -> io::Result<Option<Outgoing>> {
        if self.out_with_pump {
            return Ok(None);
        }
        let outgoing = if let Some((buf, pos)) = self.unsent.take() {
            Outgoing {
                buf,
                pos,
                raw: None,
            }
        } else if let Some(tls) = &mut self.tls {
            if !self.out.is_empty() {
                tls.layer
                    .send_plaintext(&self.out)
                    .map_err(io::Error::other)?;
                self.out.clear();
            }
            let mut buf = std::mem::take(&mut self.spare);
            if tls.layer.write_ciphertext(&mut buf) == 0 {
                self.spare = buf;
                return Ok(None);
            }
            Outgoing {
                buf,
                pos: 0,
                raw: None,
            }
        } else {
            let raw = match &self.body {
                Some(body) => body
                    .plan_raw(self.out.len())
                    .map_err(|_| io::Error::other("message file truncated while it was sent"))?,
                None => None,
            };
            if self.out.is_empty() && raw.is_none() {
                return Ok(None);
            }
            let buf = std::mem::replace(&mut self.out, std::mem::take(&mut self.spare));
            Outgoing { buf, pos: 0, raw }
        };
        self.out_with_pump = true;
        Ok(Some(outgoing))
    }

    /// The pump sent `sent` bytes of `outgoing` (0 when the socket was full)
    /// and gives it back.
    pub fn output_done(&mut self, mut outgoing: Outgoing, sent: usize, now: Instant) {
        self.out_with_pump = false;
        if sent > 0 {
            self.last_activity = now;
            self.bytes_sent += sent as u64;
        }
        let buffered = outgoing.buf.len() - outgoing.pos;
        if sent < buffered {
            outgoing.pos += sent;
            self.unsent = Some((outgoing.buf, outgoing.pos));
            return;
        }
        if let (Some(plan), Some(body)) = (&outgoing.raw, &mut self.body) {
            body.advance_raw(plan, sent - buffered);
        }
        let mut buf = outgoing.buf;
        buf.clear();
        if buf.capacity() <= SPARE_BYTES_MAX {
            self.spare = buf;
        }
        // STLS: the +OK has left in plaintext; everything from here is TLS.
        if self.out.is_empty()
            && let Some((layer, offer)) = self.stls_pending.take()
        {
            self.recv.clear();
            self.tls = Some(Box::new(Tls::new(layer, self.recv.capacity())));
            self.session.tls_started(offer);
        }
    }

    // ---- lifecycle ----

    /// What the pump should do next. Call after input, processing and output.
    pub fn status(&self) -> Status {
        if self.linger_until.is_some() {
            return if self.peer_eof {
                Status::Close
            } else {
                Status::Open
            };
        }
        let flushed = !self.has_output() && !self.out_with_pump;
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

    /// The pump shut down the write side: discard input until EOF or `LINGER`.
    pub fn start_linger(&mut self, now: Instant) {
        self.linger_until = Some(now + LINGER);
        // The session is over: free the mailbox now, not when the client
        // finally closes its side.
        self.mailbox = None;
    }

    /// When the connection next needs the timer: its idle deadline, or
    /// earlier when a held answer is due.
    pub fn next_wakeup(&self, s: &Settings) -> Instant {
        if let Some(until) = self.linger_until {
            return until;
        }
        let idle = if self.session.is_authorized() {
            s.autologout
        } else {
            s.login_timeout
        };
        let deadline = self.last_activity + idle;
        match &self.held {
            Some((due, _)) => deadline.min(*due),
            None => deadline,
        }
    }

    /// Called by the timer: delivers a held answer, or ends an idle session
    /// (returns `Close` after queueing a last line for one write attempt).
    pub fn on_timer(&mut self, cx: &Context<'_>) -> Status {
        if self.linger_until.is_some_and(|until| until <= cx.now) {
            return Status::Close;
        }
        if let Some((due, _)) = &self.held
            && *due <= cx.now
        {
            let (_, completion) = self.held.take().expect("checked above");
            if let Some(effect) = self.session.complete(completion, &mut self.out) {
                self.apply(effect, cx);
            }
            return Status::Open;
        }
        if self.linger_until.is_none() && self.next_wakeup(cx.settings) <= cx.now {
            tracing::info!(peer = %self.peer, user = self.user.as_deref().unwrap_or(""), "disconnected for inactivity");
            self.abort(crate::protocol::reply::text::TIMEOUT);
            return Status::Close;
        }
        Status::Open
    }

    /// Ends the session with a last line; the pump makes one attempt to send
    /// it and then drops the connection.
    pub fn abort(&mut self, why: &str) {
        self.body = None;
        self.unsent = None;
        self.session.abort(&mut self.out, why);
    }

    /// Pool work for this connection finished.
    pub fn on_done(&mut self, done: Done, cx: &Context<'_>) {
        let completion = match done.outcome {
            Outcome::LoggedIn { user, mailbox } => {
                let tls = self.tls.as_ref().and_then(|t| t.layer.describe());
                tracing::info!(
                    "pop3 login: user=<{user}>, rip={}, shard={}, messages={}, tls={}",
                    self.peer.ip(),
                    cx.settings.shard,
                    mailbox.snapshot.messages.len(),
                    tls.as_deref().unwrap_or("no")
                );
                let maildrop = Box::new(Arc::clone(&mailbox.snapshot));
                self.mailbox = Some(mailbox);
                self.user = Some(user);
                Completion::LoggedIn(maildrop)
            }
            Outcome::LoginFailed { why, user } => return self.login_failed(why, &user, cx),
            Outcome::ScramCredentials { credentials, nonce } => {
                match (self.scram.as_mut(), credentials) {
                    (Some((server, _)), Some(credentials)) => {
                        Completion::SaslChallenge(server.server_first(credentials, &nonce))
                    }
                    _ => {
                        let user = self.scram.take().map(|(_, u)| u).unwrap_or_default();
                        return self.login_failed(LoginFailure::BadCredentials, &user, cx);
                    }
                }
            }
            Outcome::Committed { failed } => Completion::Committed(failed == 0),
        };
        if let Some(effect) = self.session.complete(completion, &mut self.out) {
            self.apply(effect, cx);
        }
    }

    /// Logs a failed login and answers it, after the address's penalty delay
    /// for bad credentials.
    fn login_failed(&mut self, why: LoginFailure, user: &str, cx: &Context<'_>) {
        self.scram = None;
        // One line per failure, in a shape fail2ban can match:
        // user=<...>, rip=ADDR.
        tracing::warn!(
            "pop3 login failed ({why:?}): user=<{}>, rip={}, shard={}",
            user.escape_debug(),
            self.peer.ip(),
            cx.settings.shard
        );
        if why == LoginFailure::BadCredentials {
            // The delay grows with the address's recent failures.
            let delay = cx.guard.login_failed(self.peer.ip(), cx.now);
            if !delay.is_zero() {
                self.held = Some((cx.now + delay, Completion::LoginFailed(why)));
                return;
            }
        }
        if let Some(effect) = self
            .session
            .complete(Completion::LoginFailed(why), &mut self.out)
        {
            self.apply(effect, cx);
        }
    }

    /// One step of SCRAM-SHA-256. client-first needs the passdb (pool);
    /// client-final is a few HMACs, done here; the empty response after
    /// server-final opens the mailbox (pool).
    fn scram_step(&mut self, first: bool, data: &[u8], reply: Reply, cx: &Context<'_>) {
        if first {
            match ScramServer::client_first(data) {
                Ok((server, user)) => {
                    self.scram = Some((Box::new(server), user.clone()));
                    if cx.jobs.send(Job::ScramLookup { reply, user }).is_err() {
                        self.login_failed(LoginFailure::Temporary, "", cx);
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "bad SCRAM client-first");
                    self.login_failed(LoginFailure::BadCredentials, "", cx);
                }
            }
            return;
        }
        let Some((server, user)) = &mut self.scram else {
            return self.login_failed(LoginFailure::BadCredentials, "", cx);
        };
        if server.user().is_some() {
            // The client's empty answer to server-final: the exchange is over.
            let (server, user) = self.scram.take().expect("checked above");
            match server.into_user() {
                Some(entry) if data.is_empty() => {
                    if cx.jobs.send(Job::Open { reply, entry }).is_err() {
                        self.login_failed(LoginFailure::Temporary, &user, cx);
                    }
                }
                _ => self.login_failed(LoginFailure::BadCredentials, &user, cx),
            }
            return;
        }
        match server.client_final(data) {
            Ok(server_final) => {
                if let Some(effect) = self
                    .session
                    .complete(Completion::SaslChallenge(server_final), &mut self.out)
                {
                    self.apply(effect, cx);
                }
            }
            Err(e) => {
                let user = user.clone();
                tracing::debug!(error = %e, "SCRAM exchange failed");
                self.login_failed(LoginFailure::BadCredentials, &user, cx);
            }
        }
    }

    /// Logs why a session ends on an error; the pump then drops it.
    pub fn fail(&self, e: &io::Error) {
        match e.raw_os_error() {
            // The kernel hit a hole in a mapped file during writev.
            Some(libc::EFAULT) => {
                tracing::warn!(peer = %self.peer, "message file truncated while it was sent; closing the session");
            }
            _ if e.kind() == io::ErrorKind::Other => {
                tracing::warn!(peer = %self.peer, error = %e, "closing the session");
            }
            _ => tracing::debug!(peer = %self.peer, error = %e, "connection error"),
        }
    }

    /// The logout line, logged when the connection is dropped.
    pub fn log_end(&self, shard: usize) {
        let Some(user) = &self.user else { return };
        let s = self.session.summary();
        tracing::info!(
            "pop3 logout: user=<{user}>, rip={}, shard={shard}, messages={}, retr={}, bytes={}, deleted={}",
            self.peer.ip(),
            s.messages,
            s.bodies_sent,
            self.bytes_sent,
            s.deleted
        );
    }
}
