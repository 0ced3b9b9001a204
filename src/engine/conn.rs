//! One client connection: its socket, buffers, protocol session, mailbox and
//! the body being streamed. The event loop calls [`Conn::drive`] whenever the
//! socket is ready or pool work completes; `drive` moves bytes until nothing
//! more can move, and holds no protocol rules of its own.
//!
//! Memory per connection is bounded: the receive buffer is fixed, and output
//! (replies plus the body window) stops growing at `output_buffer_bytes`;
//! a body is transformed from the mmap chunk by chunk only as the socket drains.
#![forbid(unsafe_code)]

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::TcpStream;

use super::worker::{ConnRef, Done, Job, Outcome, Reply};
use crate::protocol::{BodyError, Completion, Effect, LoginFailure, Session};
use crate::store::Mailbox;
use crate::store::body::MessageMap;
use crate::wire::{Extent, Stuffer, TERMINATOR_MAX};

/// How long a closing connection keeps reading (and discarding) what the
/// client still sends, so the kernel ends it with FIN rather than RST and the
/// client reads our last line (a lingering close, as web servers do).
const LINGER: Duration = Duration::from_secs(2);

/// Bytes of body transformed per step: large enough for few syscalls per
/// message, small enough to stay in L2 while it is written out.
const BODY_CHUNK_BYTES: usize = 16 * 1024;

/// What the event loop should do with the connection after `drive`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Keep it.
    Keep,
    /// Deregister and drop it (which releases the mailbox lock).
    Close,
}

/// Everything `drive` needs from its shard.
pub struct Context<'a> {
    /// The pool's job queue.
    pub jobs: &'a crossbeam_channel::Sender<Job>,
    /// The template of replies to this shard.
    pub reply: Reply,
    /// Per-shard settings.
    pub settings: &'a Settings,
    /// Now, read once per event batch.
    pub now: Instant,
}

/// Settings every connection of a shard shares.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Shard number, for logs.
    pub shard: usize,
    /// Idle time before login.
    pub login_timeout: Duration,
    /// Idle time after login.
    pub autologout: Duration,
    /// Wait before a failed login's answer.
    pub failure_delay: Duration,
    /// Output bound per connection.
    pub output_buffer_bytes: usize,
    /// Receive buffer size.
    pub recv_buffer_bytes: usize,
}

/// A body on its way out.
struct BodyStream {
    map: MessageMap,
    pos: usize,
    stuffer: Stuffer,
}

/// One client connection.
pub struct Conn {
    /// Unique per shard.
    pub id: u64,
    /// The socket.
    pub socket: TcpStream,
    /// The client's address.
    pub peer: SocketAddr,
    session: Session,
    recv: Box<[u8]>,
    recv_start: usize,
    recv_end: usize,
    out: Vec<u8>,
    out_pos: usize,
    body: Option<BodyStream>,
    mailbox: Option<Mailbox>,
    user: Option<String>,
    /// A failed login's answer, held back until the failure delay passes.
    held: Option<(Instant, Completion)>,
    /// Close once the queued output is written.
    closing: bool,
    /// The client closed its sending side.
    peer_eof: bool,
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
    /// A new connection; writes the greeting into its output.
    pub fn new(
        id: u64,
        socket: TcpStream,
        peer: SocketAddr,
        session: Session,
        s: &Settings,
        now: Instant,
    ) -> Conn {
        let mut out = Vec::with_capacity(128);
        session.greet(&mut out);
        Conn {
            id,
            socket,
            peer,
            session,
            recv: vec![0; s.recv_buffer_bytes].into_boxed_slice(),
            recv_start: 0,
            recv_end: 0,
            out,
            out_pos: 0,
            body: None,
            mailbox: None,
            user: None,
            held: None,
            closing: false,
            peer_eof: false,
            linger_until: None,
            last_activity: now,
            timer_gen: 0,
            armed_at: None,
            bytes_sent: 0,
        }
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

    /// Called by the timer: delivers a held answer or ends an idle session.
    pub fn on_timer(&mut self, cx: &mut Context<'_>) -> Verdict {
        if self.linger_until.is_some_and(|until| until <= cx.now) {
            return Verdict::Close;
        }
        if let Some((due, _)) = &self.held
            && *due <= cx.now
        {
            let (_, completion) = self.held.take().expect("checked above");
            let effect = self.session.complete(completion, &mut self.out);
            if let Some(effect) = effect {
                self.apply(effect, cx);
            }
            return self.drive(cx);
        }
        if self.next_wakeup(cx.settings) <= cx.now {
            tracing::info!(peer = %self.peer, user = self.user.as_deref().unwrap_or(""), "disconnected for inactivity");
            self.abort(crate::protocol::reply::text::TIMEOUT);
            return Verdict::Close;
        }
        Verdict::Keep
    }

    /// Ends the session with a last line, written if the socket takes it now.
    pub fn abort(&mut self, why: &str) {
        self.body = None;
        self.session.abort(&mut self.out, why);
        let _ = self.write_out();
    }

    /// Pool work for this connection finished.
    pub fn on_done(&mut self, done: Done, cx: &mut Context<'_>) -> Verdict {
        let completion = match done.outcome {
            Outcome::LoggedIn { user, mailbox } => {
                tracing::info!(
                    "pop3 login: user=<{user}>, rip={}, shard={}, messages={}",
                    self.peer.ip(),
                    cx.settings.shard,
                    mailbox.snapshot.messages.len()
                );
                let maildrop = Box::new(Arc::clone(&mailbox.snapshot));
                self.mailbox = Some(mailbox);
                self.user = Some(user);
                Completion::LoggedIn(maildrop)
            }
            Outcome::LoginFailed { why, user } => {
                // One line per failure, in a shape fail2ban's dovecot filter
                // style can match: user=<...>, rip=ADDR.
                tracing::warn!(
                    "pop3 login failed ({why:?}): user=<{}>, rip={}, shard={}",
                    user.escape_debug(),
                    self.peer.ip(),
                    cx.settings.shard
                );
                if why == LoginFailure::BadCredentials && !cx.settings.failure_delay.is_zero() {
                    self.held = Some((
                        cx.now + cx.settings.failure_delay,
                        Completion::LoginFailed(why),
                    ));
                    return Verdict::Keep;
                }
                Completion::LoginFailed(why)
            }
            Outcome::Committed { failed } => Completion::Committed(failed == 0),
        };
        if let Some(effect) = self.session.complete(completion, &mut self.out) {
            self.apply(effect, cx);
        }
        self.drive(cx)
    }

    /// Moves bytes until nothing more can move.
    pub fn drive(&mut self, cx: &mut Context<'_>) -> Verdict {
        if self.linger_until.is_some() {
            return self.linger(cx);
        }
        loop {
            let mut progress = false;
            match self.read_in() {
                Ok(n) => progress |= n > 0,
                Err(_) => return Verdict::Close,
            }
            progress |= self.run_session(cx);
            progress |= self.fill_body(cx);
            match self.write_out() {
                Ok(n) => progress |= n > 0,
                Err(_) => return Verdict::Close,
            }
            if progress {
                self.last_activity = cx.now;
            }
            if self.closing && self.pending_out() == 0 && self.body.is_none() {
                return self.linger(cx);
            }
            if self.peer_eof && !progress && !self.busy() {
                // The client is gone and nothing it sent is left to answer.
                // A dropped session deletes nothing.
                return Verdict::Close;
            }
            if !progress {
                return Verdict::Keep;
            }
        }
    }

    /// Everything is said: shut down our side and discard input until the
    /// client closes too (or `LINGER` passes).
    fn linger(&mut self, cx: &Context<'_>) -> Verdict {
        if self.peer_eof {
            return Verdict::Close;
        }
        if self.linger_until.is_none() {
            if self.socket.shutdown(std::net::Shutdown::Write).is_err() {
                return Verdict::Close;
            }
            self.linger_until = Some(cx.now + LINGER);
        }
        loop {
            match self.socket.read(&mut self.recv) {
                Ok(0) => return Verdict::Close,
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Verdict::Keep,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return Verdict::Close,
            }
        }
    }

    /// True while pool work, a held answer or a body is outstanding.
    fn busy(&self) -> bool {
        self.session.is_waiting() || self.held.is_some() || self.body.is_some()
    }

    fn pending_out(&self) -> usize {
        self.out.len() - self.out_pos
    }

    /// Reads until the socket is drained (edge-triggered) or the buffer is full.
    fn read_in(&mut self) -> io::Result<usize> {
        if self.recv_start == self.recv_end {
            self.recv_start = 0;
            self.recv_end = 0;
        } else if self.recv_end == self.recv.len() && self.recv_start > 0 {
            self.recv.copy_within(self.recv_start..self.recv_end, 0);
            self.recv_end -= self.recv_start;
            self.recv_start = 0;
        }
        let mut total = 0;
        while !self.peer_eof && self.recv_end < self.recv.len() {
            match self.socket.read(&mut self.recv[self.recv_end..]) {
                Ok(0) => self.peer_eof = true,
                Ok(n) => {
                    self.recv_end += n;
                    total += n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(total)
    }

    /// Lets the session answer what is buffered. Returns whether it did anything.
    fn run_session(&mut self, cx: &mut Context<'_>) -> bool {
        if self.busy() || self.closing || self.pending_out() >= cx.settings.output_buffer_bytes {
            return false;
        }
        self.compact_out();
        let before = self.out.len();
        if self.session.has_pending_output() {
            self.session.continue_output(&mut self.out);
        }
        let step = self
            .session
            .handle_input(&self.recv[self.recv_start..self.recv_end], &mut self.out);
        self.recv_start += step.consumed;
        let acted = step.effect.is_some();
        if let Some(effect) = step.effect {
            self.apply(effect, cx);
        }
        acted || step.consumed > 0 || self.out.len() != before
    }

    fn apply(&mut self, effect: Effect, cx: &mut Context<'_>) {
        let reply = Reply {
            conn: ConnRef {
                slot: cx.reply.conn.slot,
                id: self.id,
            },
            ..cx.reply.clone()
        };
        match effect {
            Effect::Login { user, credential } => {
                let job = Job::Login {
                    reply,
                    user,
                    credential,
                };
                if cx.jobs.send(job).is_err() {
                    self.session.complete(
                        Completion::LoginFailed(LoginFailure::Temporary),
                        &mut self.out,
                    );
                }
            }
            Effect::SendBody { index, top_lines } => self.open_body(index, top_lines),
            Effect::Commit(deleted) => {
                let snapshot = match &self.mailbox {
                    Some(m) => Arc::clone(&m.snapshot),
                    None => {
                        debug_assert!(false, "commit without a mailbox");
                        self.session
                            .complete(Completion::Committed(false), &mut self.out);
                        self.closing = true;
                        return;
                    }
                };
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
            Effect::Close => self.closing = true,
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
        match MessageMap::open(&path) {
            Ok(map) => {
                let extent = match top_lines {
                    None => Extent::Whole,
                    Some(body_lines) => Extent::Top { body_lines },
                };
                self.body = Some(BodyStream {
                    map,
                    pos: 0,
                    stuffer: Stuffer::new(extent),
                });
                self.session.body_ready(Ok(()), &mut self.out);
            }
            Err(e) => {
                let why = if e.kind() == io::ErrorKind::NotFound {
                    BodyError::Vanished
                } else {
                    tracing::error!(file = %path.display(), error = %e, "cannot open message");
                    BodyError::Temporary
                };
                self.session.body_ready(Err(why), &mut self.out);
            }
        }
    }

    /// Transforms more of the body while the output is below its bound.
    fn fill_body(&mut self, cx: &Context<'_>) -> bool {
        let Some(body) = &mut self.body else {
            return false;
        };
        let low_water = cx.settings.output_buffer_bytes / 2;
        if self.out.len() - self.out_pos >= low_water {
            return false;
        }
        if self.out_pos > 0 {
            self.out.drain(..self.out_pos);
            self.out_pos = 0;
        }
        let input = &body.map.as_slice()[body.pos..];
        let len = self.out.len();
        if input.is_empty() || body.stuffer.is_input_done() {
            self.out.resize(len + TERMINATOR_MAX, 0);
            let written = body.stuffer.finish(&mut self.out[len..]);
            self.out.truncate(len + written);
            self.body = None;
            self.session.body_sent();
            return true;
        }
        while self.out.len() < low_water + BODY_CHUNK_BYTES && body.pos < body.map.as_slice().len()
        {
            let input = &body.map.as_slice()[body.pos..];
            let take = input.len().min(BODY_CHUNK_BYTES / 2);
            let len = self.out.len();
            self.out.resize(len + BODY_CHUNK_BYTES, 0);
            let (consumed, written) = body.stuffer.transform(&input[..take], &mut self.out[len..]);
            self.out.truncate(len + written);
            body.pos += consumed;
            if body.stuffer.is_input_done() {
                break;
            }
        }
        true
    }

    /// Drops written output so appends do not grow the buffer without bound.
    fn compact_out(&mut self) {
        if self.out_pos == self.out.len() {
            self.out.clear();
            self.out_pos = 0;
        }
    }

    /// Writes queued output until the socket would block.
    fn write_out(&mut self) -> io::Result<usize> {
        let mut total = 0;
        while self.out_pos < self.out.len() {
            match self.socket.write(&self.out[self.out_pos..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.out_pos += n;
                    total += n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        self.bytes_sent += total as u64;
        if self.out_pos == self.out.len() {
            self.out.clear();
            self.out_pos = 0;
            // An idle connection keeps no large buffer.
            if self.out.capacity() > 4096 && self.body.is_none() {
                self.out.shrink_to(1024);
            }
        }
        Ok(total)
    }

    /// The logout line's facts, logged when the connection is dropped.
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
