//! The shard core: every rule about a shard's connections, written once for
//! both backends. It owns the connections, their timers, admission (the
//! per-address guard, implicit TLS, the greeting), the worker pool's
//! completions, idle expiry and graceful shutdown; a [`Backend`] only moves
//! bytes (see `backend.rs` for the contract).
//!
//! Queues and their bounds:
//! - accepted connections waiting to be admitted: at most
//!   [`ACCEPTS_PER_TURN`] are admitted per loop turn, so a connection flood
//!   cannot starve established sessions of loop turns; the rest wait in the
//!   shard's accept queue. When that queue holds [`PENDING_ACCEPTS_MAX`], the
//!   shard stops accepting (new clients wait in the kernel's listen backlog)
//!   until it has drained to half. A completion backend may report what the
//!   kernel had already accepted when it was told to stop: the queue can
//!   exceed its bound by at most one wait's completions.
//! - completions from the pool: drained whole every turn (the channel's own
//!   bound is in `worker.rs`).
#![forbid(unsafe_code)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use slab::Slab;

use super::backend::{Backend, Closed, Event, Received};
use super::buffer::InBufPool;
use super::conn::{Conn, Status};
use super::context::{Cx, Local, Process, Settings};
use super::error::ConnError;
use super::guard::Admission;
use super::timer::Timers;
use super::worker::{ConnRef, Done};
use crate::protocol::Session;
use crate::protocol::proxy::Header;
use crate::tls::TlsLayer;

/// New connections admitted per loop turn at most.
pub const ACCEPTS_PER_TURN: usize = 64;
/// Accepted connections a shard holds before it stops accepting.
pub const PENDING_ACCEPTS_MAX: usize = 1024;
/// After EMFILE/ENFILE, wait this long before accepting again (the backlog
/// keeps the clients).
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// A connection slot: the connection while it is open, and whether it holds
/// a per-address slot in the guard. `conn` is `None` while the backend
/// still holds the closed connection's socket.
struct Slot {
    conn: Option<Conn>,
    counted: bool,
    /// Accepted on an implicit-TLS listener (for a client admitted after
    /// its proxy's header).
    implicit_tls: bool,
}

/// One shard's connections and the rules they live by.
pub struct ShardCore {
    local: Local,
    process: Arc<Process>,
    /// The settings new connections get, and their generation: refreshed
    /// from the process once per loop turn when SIGHUP changed them.
    settings: Arc<Settings>,
    settings_generation: u64,
    done_rx: Receiver<Done>,
    /// Per listener index: implicit TLS (RFC 8314).
    listener_tls: Vec<bool>,
    slots: Slab<Slot>,
    recv_pool: InBufPool,
    timers: Timers,
    next_id: u64,
    /// Accepted, not yet admitted: (listener, socket, client address when
    /// the accept said it).
    pending: VecDeque<(usize, OwnedFd, Option<SocketAddr>)>,
    /// The backend is taking new connections.
    accepting: bool,
    accept_paused_until: Option<Instant>,
    shutdown_deadline: Option<Instant>,
}

impl ShardCore {
    /// A shard's core; `done_rx` is its end of the pool's completions.
    pub fn new(
        local: Local,
        process: Arc<Process>,
        done_rx: Receiver<Done>,
        listener_tls: Vec<bool>,
    ) -> ShardCore {
        let (settings, settings_generation) = process.settings();
        ShardCore {
            local,
            process,
            settings,
            settings_generation,
            done_rx,
            listener_tls,
            slots: Slab::new(),
            timers: Timers::default(),
            recv_pool: InBufPool::default(),
            next_id: 0,
            pending: VecDeque::new(),
            accepting: true,
            accept_paused_until: None,
            shutdown_deadline: None,
        }
    }

    /// Runs the event loop on `io` until shutdown has finished.
    pub fn run<B: Backend>(mut self, mut io: B) {
        let mut events = Vec::with_capacity(256);
        super::log_batch::batch_this_thread();
        loop {
            let room = PENDING_ACCEPTS_MAX.saturating_sub(self.pending.len());
            super::log_batch::flush();
            let mut timeout = self.timeout(Instant::now());
            let port = &self.local.port;
            if timeout != Some(Duration::ZERO) && !port.enter_wait(&self.done_rx) {
                timeout = Some(Duration::ZERO);
            }
            let waited = io.wait(timeout, room, &mut events);
            port.leave_wait();
            if let Err(e) = waited {
                tracing::error!(shard = self.local.shard, error = %e, "wait failed; shard stops");
                break;
            }
            let now = Instant::now();
            if self.process.generation() != self.settings_generation {
                (self.settings, self.settings_generation) = self.process.settings();
            }
            for event in events.drain(..) {
                self.event(&mut io, event, now);
            }
            self.admit(&mut io, now);
            self.completions(&mut io, now);
            self.expire(&mut io, now);
            if self.process.shutting_down() && self.shutting_down(&mut io, now) {
                break;
            }
        }
        io.exit();
        super::log_batch::flush();
    }

    fn timeout(&self, now: Instant) -> Option<Duration> {
        if !self.pending.is_empty() {
            return Some(Duration::ZERO);
        }
        super::timer::wait_for(
            now,
            [
                self.timers.next(),
                self.accept_paused_until,
                self.shutdown_deadline,
            ],
        )
    }

    fn event<B: Backend>(&mut self, io: &mut B, event: Event<B::Buf, B::Sent>, now: Instant) {
        match event {
            Event::Accepted { listener, fd, peer } => {
                if self.shutdown_deadline.is_some() {
                    return; // dropping `fd` closes it
                }
                self.pending.push_back((listener, fd, peer));
                if self.pending.len() >= PENDING_ACCEPTS_MAX {
                    self.set_accepting(io, false);
                }
            }
            Event::AcceptFailed(e) => {
                tracing::warn!(shard = self.local.shard, error = %e, "accept failed; pausing accepts");
                self.accept_paused_until = Some(now + ACCEPT_RETRY);
                self.set_accepting(io, false);
            }
            Event::Ready(slot) => self.drive(io, slot, now),
            Event::Received { slot, result } => self.received(io, slot, result, now),
            Event::Sent { slot, sent, result } => {
                let outgoing = io.outgoing(sent);
                let Some(conn) = self.open_conn(slot) else {
                    return;
                };
                match result {
                    Ok(n) => {
                        conn.output_done(outgoing, n, now);
                        self.drive(io, slot, now);
                    }
                    Err(e) => {
                        conn.output_done(outgoing, 0, now);
                        conn.fail(&ConnError::from(e));
                        self.close(io, slot);
                    }
                }
            }
            Event::Released(slot) => {
                debug_assert!(self.slots.get(slot).is_some_and(|s| s.conn.is_none()));
                self.slots.try_remove(slot);
            }
        }
    }

    fn open_conn(&mut self, slot: usize) -> Option<&mut Conn> {
        self.slots.get_mut(slot).and_then(|s| s.conn.as_mut())
    }

    fn received<B: Backend>(
        &mut self,
        io: &mut B,
        slot: usize,
        result: Received<B::Buf>,
        now: Instant,
    ) {
        let Some(conn) = self.slots.get_mut(slot).and_then(|s| s.conn.as_mut()) else {
            if let Received::Data { buf, .. } = result {
                io.copy_received(buf, 0, &mut []);
            }
            return;
        };
        match result {
            Received::Data { buf, len } => {
                let space = conn.input_space();
                // A receive asks for at most the free space, which only
                // grows while it is in flight.
                assert!(len <= space.len(), "a receive overran the input space");
                io.copy_received(buf, len, &mut space[..len]);
                conn.on_input(len, now);
            }
            Received::Eof => conn.on_eof(),
            Received::Again => {}
            Received::Failed(e) => {
                conn.fail(&ConnError::from(e));
                return self.close(io, slot);
            }
        }
        self.drive(io, slot, now);
    }

    fn set_accepting<B: Backend>(&mut self, io: &mut B, on: bool) {
        if self.accepting != on {
            self.accepting = on;
            io.set_accepting(on);
        }
    }

    /// Admits up to [`ACCEPTS_PER_TURN`] waiting connections.
    fn admit<B: Backend>(&mut self, io: &mut B, now: Instant) {
        for _ in 0..ACCEPTS_PER_TURN {
            let Some((listener, fd, peer)) = self.pending.pop_front() else {
                break;
            };
            self.admit_one(io, listener, fd, peer, now);
        }
        if !self.accepting
            && self.accept_paused_until.is_none()
            && self.shutdown_deadline.is_none()
            && self.pending.len() <= PENDING_ACCEPTS_MAX / 2
        {
            self.set_accepting(io, true);
        }
    }

    fn admit_one<B: Backend>(
        &mut self,
        io: &mut B,
        listener: usize,
        fd: OwnedFd,
        peer: Option<SocketAddr>,
        now: Instant,
    ) {
        let peer = peer.or_else(|| {
            socket2::SockRef::from(&fd)
                .peer_addr()
                .ok()
                .and_then(|a| a.as_socket())
        });
        let Some(peer) = peer else {
            return; // the client is already gone
        };
        let cells = self.local.cells(&self.process);
        cells.connection_accepted();
        let implicit_tls = self.listener_tls.get(listener).copied().unwrap_or(false);
        self.next_id += 1;
        let id = self.next_id;
        let (conn, counted) = if self.settings.is_proxy(peer.ip()) {
            // The client is known only once the header is in: admission
            // waits for it (`admit_proxied`).
            let offer = self.settings.offer(peer, false, false, false);
            let session = self
                .process
                .session(&self.settings, self.local.shard, id, offer);
            let deadline = now + self.settings.proxy_header_timeout;
            let recv = self.recv_pool.take(self.settings.recv_buffer_bytes);
            let conn = Conn::awaiting_proxy(id, peer, session, recv, now, deadline);
            (conn, false)
        } else {
            match self.admission(id, peer, implicit_tls, false, now) {
                Ok((session, tls, counted)) => {
                    let recv = self.recv_pool.take(self.settings.recv_buffer_bytes);
                    (Conn::new(id, peer, session, recv, now, tls), counted)
                }
                Err(line) => {
                    // A fresh socket's buffer takes one short line at once.
                    let flags = libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL;
                    let _ = socket2::SockRef::from(&fd).send_with_flags(line, flags);
                    cells.connection_closed();
                    return;
                }
            }
        };
        let slot = self.slots.vacant_key();
        if let Err(e) = io.open(slot, fd) {
            tracing::warn!(shard = self.local.shard, error = %e, "cannot take a connection");
            if counted {
                self.process.guard.release(peer.ip());
            }
            cells.connection_closed();
            return;
        }
        self.slots.insert(Slot {
            conn: Some(conn),
            counted,
            implicit_tls,
        });
        self.drive(io, slot, now);
    }

    /// The per-address guard, TLS and a session for a client at `peer`
    /// (`proxy_tls`: it spoke TLS to the proxy in front of us). `Err` is the
    /// line to refuse it with.
    fn admission(
        &self,
        id: u64,
        peer: SocketAddr,
        implicit_tls: bool,
        proxy_tls: bool,
        now: Instant,
    ) -> Result<(Session, Option<TlsLayer>, bool), &'static [u8]> {
        let guard = &self.process.guard;
        let counted = match guard.admit(peer.ip(), now) {
            Admission::Admit { counted } => counted,
            refused => {
                tracing::info!("pop3 connection refused ({refused:?}): rip={}", peer.ip());
                return Err(match refused {
                    Admission::TooManyConnections => {
                        b"-ERR [SYS/TEMP] Too many connections from your address.\r\n"
                    }
                    _ => b"-ERR [AUTH] Too many failed logins from your address, try again later.\r\n",
                });
            }
        };
        let tls = match (implicit_tls, &self.process.tls) {
            (true, Some(reloader)) => match TlsLayer::new(reloader.current()) {
                Ok(layer) => Some(layer),
                Err(e) => {
                    tracing::error!(error = %e, "cannot start TLS for a new connection");
                    if counted {
                        guard.release(peer.ip());
                    }
                    return Err(b"");
                }
            },
            _ => None,
        };
        let certificate = self.process.tls.is_some();
        let offer = self
            .settings
            .offer(peer, tls.is_some(), proxy_tls, certificate);
        let session = self
            .process
            .session(&self.settings, self.local.shard, id, offer);
        Ok((session, tls, counted))
    }

    /// A trusted proxy's header named the client: admit it as if it had
    /// connected itself. Returns false when it was refused.
    fn admit_proxied(&mut self, slot: usize, header: Header, now: Instant) -> bool {
        let Some(entry) = self.slots.get(slot) else {
            return false;
        };
        let Some(conn) = &entry.conn else {
            return false;
        };
        let (id, client) = (conn.id, header.client(conn.peer));
        let admitted = self.admission(id, client, entry.implicit_tls, header.client_tls, now);
        let entry = &mut self.slots[slot];
        let conn = entry.conn.as_mut().expect("checked above");
        match admitted {
            Ok((session, tls, counted)) => {
                entry.counted = counted;
                conn.admit(client, Some(session), tls);
                true
            }
            Err(line) => {
                conn.refuse(line);
                false
            }
        }
    }

    /// Moves bytes for one connection until nothing more can move, then
    /// closes it or re-arms its timer.
    fn drive<B: Backend>(&mut self, io: &mut B, slot: usize, now: Instant) {
        loop {
            let Some(conn) = self.slots.get_mut(slot).and_then(|s| s.conn.as_mut()) else {
                return;
            };
            let cx = Cx::new(&self.process, &self.settings, &self.local, now, slot);
            let status = pump(io, slot, conn, &cx);
            let header = match status {
                Status::Close => None,
                _ => conn.take_proxy_header(),
            };
            match header {
                // Admitted or refused, the connection now has its first
                // words to say: go round again.
                Some(header) => {
                    self.admit_proxied(slot, header, now);
                }
                None => return self.settle(io, slot, status),
            }
        }
    }

    fn completions<B: Backend>(&mut self, io: &mut B, now: Instant) {
        while let Ok(done) = self.done_rx.try_recv() {
            let ConnRef { slot, id } = done.conn;
            // The connection may have gone (and its slot been reused)
            // meanwhile; dropping the result drops any mailbox lock it held.
            let Some(conn) = self
                .slots
                .get_mut(slot)
                .and_then(|s| s.conn.as_mut())
                .filter(|c| c.id == id)
            else {
                continue;
            };
            let cx = Cx::new(&self.process, &self.settings, &self.local, now, slot);
            conn.on_done(done, &cx);
            self.drive(io, slot, now);
        }
    }

    fn expire<B: Backend>(&mut self, io: &mut B, now: Instant) {
        while let Some((slot, id, generation)) = self.timers.pop_due(now) {
            let Some(conn) = self
                .slots
                .get_mut(slot)
                .and_then(|s| s.conn.as_mut())
                .filter(|c| c.id == id && c.timer_gen == generation)
            else {
                continue;
            };
            conn.armed_at = None;
            let cx = Cx::new(&self.process, &self.settings, &self.local, now, slot);
            match conn.on_timer(&cx) {
                Status::Close => self.last_words(io, slot, now),
                _ => self.drive(io, slot, now),
            }
        }
        if self.accept_paused_until.is_some_and(|t| t <= now) {
            self.accept_paused_until = None;
            if self.shutdown_deadline.is_none() && self.pending.len() <= PENDING_ACCEPTS_MAX / 2 {
                self.set_accepting(io, true);
            }
        }
    }

    /// One attempt to deliver a last line, then the connection is closed.
    fn last_words<B: Backend>(&mut self, io: &mut B, slot: usize, now: Instant) {
        if let Some(conn) = self.open_conn(slot) {
            io.last_words(slot, conn, now);
        }
        self.close(io, slot);
    }

    /// Returns true when the shard may exit: no connection left and every
    /// listener closed.
    fn shutting_down<B: Backend>(&mut self, io: &mut B, now: Instant) -> bool {
        let deadline = match self.shutdown_deadline {
            Some(d) => d,
            None => {
                io.stop_listening();
                // Accepted but never greeted: closing them is all they get.
                self.pending.clear();
                let d = now + self.settings.shutdown_grace;
                self.shutdown_deadline = Some(d);
                tracing::info!(
                    shard = self.local.shard,
                    sessions = self.slots.len(),
                    "shutting down"
                );
                d
            }
        };
        if now >= deadline {
            let open: Vec<usize> = self
                .slots
                .iter()
                .filter(|(_, s)| s.conn.is_some())
                .map(|(k, _)| k)
                .collect();
            for slot in open {
                if let Some(conn) = self.open_conn(slot) {
                    conn.abort(crate::protocol::reply::text::SHUTTING_DOWN);
                }
                self.last_words(io, slot, now);
            }
        }
        self.slots.is_empty() && io.listeners_closed()
    }

    /// Closes the connection, or makes sure the timer heap holds an entry no
    /// later than its next wakeup. Pushing only when the wakeup moved earlier
    /// keeps heap work off the per-command path.
    fn settle<B: Backend>(&mut self, io: &mut B, slot: usize, status: Status) {
        if status == Status::Close {
            return self.close(io, slot);
        }
        let settings = &self.settings;
        let Some(conn) = self.slots.get_mut(slot).and_then(|s| s.conn.as_mut()) else {
            return;
        };
        let want = conn.next_wakeup(settings);
        if conn.armed_at.is_none_or(|at| want < at) {
            conn.timer_gen += 1;
            conn.armed_at = Some(want);
            self.timers.push(want, slot, conn.id, conn.timer_gen);
        }
    }

    /// Drops the connection (releasing its mailbox lock and guard slot) and
    /// has the backend close its socket.
    fn close<B: Backend>(&mut self, io: &mut B, slot: usize) {
        let Some(entry) = self.slots.get_mut(slot) else {
            return;
        };
        let Some(mut conn) = entry.conn.take() else {
            return; // already closed, parked in the backend
        };
        conn.log_end(self.local.shard);
        self.recv_pool.give(conn.take_recv());
        self.local.cells(&self.process).connection_closed();
        if entry.counted {
            self.process.guard.release(conn.peer.ip());
        }
        drop(conn);
        if io.close(slot) == Closed::Now {
            self.slots.remove(slot);
        }
    }
}

/// One connection's turn: read what can be read, let the connection work,
/// send what it has, and repeat while anything moved; then close, linger,
/// or wait for more input.
fn pump<B: Backend>(io: &mut B, slot: usize, conn: &mut Conn, cx: &Cx<'_>) -> Status {
    loop {
        let turn = io
            .pull(slot, conn, cx.now)
            .and_then(|read| conn.process(cx).map(|()| read))
            .and_then(|read| Ok((read, io.push(slot, conn, cx.now)?)));
        let (read, written) = match turn {
            Ok(moved) => moved,
            Err(e) => {
                conn.fail(&e);
                return Status::Close;
            }
        };
        match conn.status() {
            Status::Close => return Status::Close,
            Status::Linger => {
                // A client that said QUIT and sent nothing after it is done:
                // a close sends FIN after the reply, as the lingering would,
                // at two system calls and a wakeup less.
                if conn.quit_answered_and_idle() && io.input_drained(slot) {
                    return Status::Close;
                }
                if io.shutdown_write(slot).is_err() {
                    return Status::Close;
                }
                conn.start_linger(cx.now);
            }
            Status::Open if read == 0 && written == 0 => {
                io.arm(slot, conn);
                return Status::Open;
            }
            Status::Open => {}
        }
    }
}
