//! One shard on epoll (mio): a thread with its own `Poll`, its own
//! SO_REUSEPORT listeners, a slab of (socket, `Conn`), a timer heap and a
//! completion channel that the worker pool fills and wakes through a mio
//! `Waker`. Nothing here is shared with other shards except the job queue and
//! the shutdown flag. This file is the readiness pump: it moves bytes between
//! sockets and the I/O-free `Conn`.
#![forbid(unsafe_code)]

use std::io::{self, IoSlice, Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use slab::Slab;

use super::body::IOVECS_MAX;
use super::conn::{Conn, Context, Env, Settings, Status};
use super::guard::{Admission, Guard};
use super::timer::Timers;
use super::waker::Waker;
use super::worker::{ConnRef, Done, Job};
use crate::config::PlaintextAuth;
use crate::protocol::{Limits, Offer, Session};

const WAKER: Token = Token(usize::MAX);
const LISTENER_BASE: usize = usize::MAX - 1;
/// After EMFILE/ENFILE, wait this long before accepting again (the backlog
/// keeps the clients; the listener is edge-triggered, so the timer retries).
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// What a shard shares with the rest of the process.
pub struct Shared {
    /// Set by the signal handler.
    pub shutdown: AtomicBool,
    /// How long sessions may finish after shutdown starts.
    pub shutdown_grace: Duration,
    /// Protocol limits for every session.
    pub limits: Limits,
    /// Whether APOP challenges go in the greeting.
    pub apop: bool,
    /// Host name for APOP challenges.
    pub hostname: String,
    /// Where plaintext logins are allowed.
    pub plaintext_auth: PlaintextAuth,
    /// Per-address defences, shared by every shard.
    pub guard: Guard,
}

impl Shared {
    /// A new session for a connection accepted by `shard` as its `id`th.
    pub fn session(
        &self,
        shard: usize,
        id: u64,
        peer: std::net::SocketAddr,
        tls: bool,
        stls: bool,
    ) -> Session {
        let challenge = self.apop.then(|| {
            format!("<{}.{shard}.{id}@{}>", std::process::id(), self.hostname).into_boxed_str()
        });
        let offer = Offer {
            plaintext_auth: self.plaintext_auth.allows(tls, peer.ip()),
            stls,
        };
        Session::new(self.limits, offer, challenge)
    }
}

/// What to do with a client that was just accepted; the same for both pumps.
pub enum Accepted {
    /// Serve it. `counted`: it holds a per-address slot in the guard,
    /// released with [`Shared::release`] when it closes.
    Serve {
        /// The connection, greeting queued.
        conn: Box<Conn>,
        /// Holds a guard slot.
        counted: bool,
    },
    /// Send this line (if the socket takes it at once) and close.
    Refuse(&'static [u8]),
}

impl Shared {
    /// Admits a client accepted by `shard` (guard, TLS, session) and builds
    /// its connection.
    pub fn accept(
        &self,
        shard: usize,
        id: u64,
        peer: SocketAddr,
        implicit_tls: bool,
        settings: &Settings,
        now: Instant,
    ) -> Accepted {
        let counted = match self.guard.admit(peer.ip(), now) {
            Admission::Admit { counted } => counted,
            refused => {
                tracing::info!("pop3 connection refused ({refused:?}): rip={}", peer.ip());
                return Accepted::Refuse(match refused {
                    Admission::TooManyConnections => b"-ERR [SYS/TEMP] Too many connections from your address.\r\n",
                    _ => b"-ERR [AUTH] Too many failed logins from your address, try again later.\r\n",
                });
            }
        };
        let tls = match (implicit_tls, &settings.tls) {
            (true, Some(reloader)) => match crate::tls::TlsLayer::new(reloader.current()) {
                Ok(layer) => Some(layer),
                Err(e) => {
                    tracing::error!(error = %e, "cannot start TLS for a new connection");
                    if counted {
                        self.guard.release(peer.ip());
                    }
                    return Accepted::Refuse(b"");
                }
            },
            _ => None,
        };
        let stls = tls.is_none() && settings.tls.is_some();
        let session = self.session(shard, id, peer, tls.is_some(), stls);
        Accepted::Serve {
            conn: Box::new(Conn::new(id, peer, session, settings, now, tls)),
            counted,
        }
    }

    /// A connection that held a guard slot closed.
    pub fn release(&self, peer: SocketAddr, counted: bool) {
        if counted {
            self.guard.release(peer.ip());
        }
    }
}

/// A socket and its connection.
struct Entry {
    socket: TcpStream,
    conn: Conn,
    /// Holds a per-address connection slot in the guard.
    counted: bool,
}

/// A shard before its thread starts: created on the main thread so that a
/// bind or poll error stops startup with a clear message.
pub struct Shard {
    id: usize,
    poll: Poll,
    /// Each with its implicit-TLS flag.
    listeners: Vec<(TcpListener, bool)>,
    waker: Arc<Waker>,
    done_rx: Receiver<Done>,
    env: Env,
    entries: Slab<Entry>,
    timers: Timers,
    next_id: u64,
    accept_paused_until: Option<Instant>,
    shutdown_deadline: Option<Instant>,
}

impl Shard {
    /// Registers `listeners` with a new poll.
    pub fn new(
        id: usize,
        listeners: Vec<(std::net::TcpListener, bool)>,
        jobs: Sender<Job>,
        settings: Settings,
        shared: Arc<Shared>,
    ) -> io::Result<Shard> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::Mio(mio::Waker::new(poll.registry(), WAKER)?));
        let mut mio_listeners = Vec::with_capacity(listeners.len());
        for (i, (l, tls)) in listeners.into_iter().enumerate() {
            let mut l = TcpListener::from_std(l);
            poll.registry()
                .register(&mut l, Token(LISTENER_BASE - i), Interest::READABLE)?;
            mio_listeners.push((l, tls));
        }
        let (env, done_rx) = Env::new(jobs, settings, shared, Arc::clone(&waker));
        Ok(Shard {
            id,
            poll,
            listeners: mio_listeners,
            waker,
            done_rx,
            env,
            entries: Slab::new(),
            timers: Timers::default(),
            next_id: 0,
            accept_paused_until: None,
            shutdown_deadline: None,
        })
    }

    /// Wakes the shard's poll (used by the signal thread).
    pub fn waker(&self) -> Arc<Waker> {
        Arc::clone(&self.waker)
    }

    /// Runs the event loop until shutdown has finished.
    pub fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        loop {
            let timeout = self.timeout(Instant::now());
            if let Err(e) = self.poll.poll(&mut events, timeout)
                && e.kind() != io::ErrorKind::Interrupted
            {
                tracing::error!(shard = self.id, error = %e, "poll failed; shard stops");
                return;
            }
            let now = Instant::now();
            for event in events.iter() {
                match event.token() {
                    WAKER => {}
                    Token(t) if t > LISTENER_BASE - self.listeners.len() && t <= LISTENER_BASE => {
                        self.accept(LISTENER_BASE - t, now);
                    }
                    Token(slot) => self.drive(slot, now),
                }
            }
            self.completions(now);
            self.expire(now);
            if self.env.shared.shutdown.load(Ordering::Relaxed) && self.shutting_down(now) {
                return;
            }
        }
    }

    fn timeout(&self, now: Instant) -> Option<Duration> {
        crate::engine::timer::wait_for(
            now,
            [
                self.timers.next(),
                self.accept_paused_until,
                self.shutdown_deadline,
            ],
        )
    }

    fn accept(&mut self, index: usize, now: Instant) {
        if self.accept_paused_until.is_some_and(|t| t > now) || self.shutdown_deadline.is_some() {
            return;
        }
        self.accept_paused_until = None;
        loop {
            let (listener, implicit_tls) = &self.listeners[index];
            let implicit_tls = *implicit_tls;
            let (mut socket, peer) = match listener.accept() {
                Ok(pair) => pair,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => continue,
                Err(e) => {
                    // EMFILE and friends: the clients wait in the backlog; retry soon.
                    tracing::warn!(shard = self.id, error = %e, "accept failed; pausing accepts");
                    self.accept_paused_until = Some(now + ACCEPT_RETRY);
                    return;
                }
            };
            self.next_id += 1;
            let (conn, counted) = match self.env.shared.accept(
                self.id,
                self.next_id,
                peer,
                implicit_tls,
                &self.env.settings,
                now,
            ) {
                Accepted::Serve { conn, counted } => (conn, counted),
                Accepted::Refuse(line) => {
                    let _ = socket.write(line);
                    continue;
                }
            };
            let slot = self.entries.vacant_key();
            let interest = Interest::READABLE | Interest::WRITABLE;
            if let Err(e) = self
                .poll
                .registry()
                .register(&mut socket, Token(slot), interest)
            {
                tracing::warn!(shard = self.id, error = %e, "cannot register a connection");
                self.env.shared.release(peer, counted);
                continue;
            }
            self.entries.insert(Entry {
                socket,
                conn: *conn,
                counted,
            });
            self.drive(slot, now);
        }
    }

    /// Moves bytes for one connection until nothing more can move, then
    /// closes it or re-arms its timer.
    fn drive(&mut self, slot: usize, now: Instant) {
        let Some(entry) = self.entries.get_mut(slot) else {
            return;
        };
        let cx = self.env.cx(slot, now);
        let status = pump(entry, &cx);
        self.settle(slot, status);
    }

    fn completions(&mut self, now: Instant) {
        while let Ok(done) = self.done_rx.try_recv() {
            let ConnRef { slot, id } = done.conn;
            // The connection may have gone (and its slot been reused) meanwhile;
            // dropping the result drops any mailbox lock it carried.
            let Some(entry) = self.entries.get_mut(slot).filter(|e| e.conn.id == id) else {
                continue;
            };
            let cx = self.env.cx(slot, now);
            entry.conn.on_done(done, &cx);
            self.drive(slot, now);
        }
    }

    fn expire(&mut self, now: Instant) {
        while let Some((slot, id, generation)) = self.timers.pop_due(now) {
            let Some(entry) = self.entries.get_mut(slot) else {
                continue;
            };
            if entry.conn.id != id || entry.conn.timer_gen != generation {
                continue;
            }
            entry.conn.armed_at = None;
            let cx = self.env.cx(slot, now);
            match entry.conn.on_timer(&cx) {
                Status::Close => {
                    // One attempt to deliver the last line, then drop it.
                    let _ = write_out(entry, now);
                    self.close(slot);
                }
                _ => self.drive(slot, now),
            }
        }
        if self.accept_paused_until.is_some_and(|t| t <= now) {
            for i in 0..self.listeners.len() {
                self.accept(i, now);
            }
        }
    }

    /// Returns true when the shard may exit.
    fn shutting_down(&mut self, now: Instant) -> bool {
        let deadline = match self.shutdown_deadline {
            Some(d) => d,
            None => {
                for (l, _) in &mut self.listeners {
                    let _ = self.poll.registry().deregister(l);
                }
                self.listeners.clear();
                let d = now + self.env.shared.shutdown_grace;
                self.shutdown_deadline = Some(d);
                tracing::info!(
                    shard = self.id,
                    sessions = self.entries.len(),
                    "shutting down"
                );
                d
            }
        };
        if now >= deadline {
            let slots: Vec<usize> = self.entries.iter().map(|(k, _)| k).collect();
            for slot in slots {
                let entry = &mut self.entries[slot];
                entry
                    .conn
                    .abort(crate::protocol::reply::text::SHUTTING_DOWN);
                let _ = write_out(entry, now);
                self.close(slot);
            }
        }
        self.entries.is_empty()
    }

    /// Closes the connection, or makes sure the timer heap holds an entry no
    /// later than its next wakeup. Pushing only when the wakeup moved earlier
    /// keeps heap work off the per-command path.
    fn settle(&mut self, slot: usize, status: Status) {
        if status == Status::Close {
            self.close(slot);
            return;
        }
        let conn = &mut self.entries[slot].conn;
        let want = conn.next_wakeup(&self.env.settings);
        if conn.armed_at.is_none_or(|at| want < at) {
            conn.timer_gen += 1;
            conn.armed_at = Some(want);
            self.timers.push(want, slot, conn.id, conn.timer_gen);
        }
    }

    fn close(&mut self, slot: usize) {
        let mut entry = self.entries.remove(slot);
        let _ = self.poll.registry().deregister(&mut entry.socket);
        entry.conn.log_end(self.id);
        self.env.shared.release(entry.conn.peer, entry.counted);
        // Dropping `entry` closes the socket and releases the mailbox lock.
    }
}

/// The readiness pump for one connection: read until the socket is drained
/// (edge-triggered) or the buffer is full, let the connection work, write
/// until the socket is full, and repeat while anything moved.
fn pump(entry: &mut Entry, cx: &Context<'_>) -> Status {
    // Once a read comes back short (or would block), the socket is drained:
    // edge-triggered epoll reports any later data as a new event, so this
    // call does not read again, saving an EAGAIN round trip per turn.
    let mut drained = false;
    loop {
        let read = match read_in(entry, cx.now, &mut drained) {
            Ok(n) => n,
            Err(e) => {
                entry.conn.fail(&e);
                return Status::Close;
            }
        };
        if let Err(e) = entry.conn.process(cx) {
            entry.conn.fail(&e);
            return Status::Close;
        }
        let written = match write_out(entry, cx.now) {
            Ok(n) => n,
            Err(e) => {
                entry.conn.fail(&e);
                return Status::Close;
            }
        };
        match entry.conn.status() {
            Status::Close => return Status::Close,
            Status::Linger => {
                if entry.socket.shutdown(std::net::Shutdown::Write).is_err() {
                    return Status::Close;
                }
                entry.conn.start_linger(cx.now);
            }
            Status::Open if read == 0 && written == 0 => return Status::Open,
            Status::Open => {}
        }
    }
}

fn read_in(entry: &mut Entry, now: Instant, drained: &mut bool) -> io::Result<usize> {
    let mut total = 0;
    while !*drained && entry.conn.wants_input() {
        let space = entry.conn.input_space();
        if space.is_empty() {
            break;
        }
        let offered = space.len();
        match entry.socket.read(space) {
            Ok(0) => {
                entry.conn.on_eof();
                *drained = true;
            }
            Ok(n) => {
                entry.conn.on_input(n, now);
                total += n;
                *drained = n < offered;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                *drained = true;
                break;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(total)
}

fn write_out(entry: &mut Entry, now: Instant) -> io::Result<usize> {
    let mut total = 0;
    while let Some(outgoing) = entry.conn.take_output()? {
        let result = {
            let mut iov = [IoSlice::new(&[]); IOVECS_MAX];
            let count = outgoing.slices(&mut iov);
            loop {
                match entry.socket.write_vectored(&iov[..count]) {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    other => break other,
                }
            }
        };
        let len = outgoing.len();
        match result {
            Ok(n) => {
                entry.conn.output_done(outgoing, n, now);
                total += n;
                if n < len {
                    break;
                }
            }
            Err(e) => {
                entry.conn.output_done(outgoing, 0, now);
                if e.kind() == io::ErrorKind::WouldBlock {
                    break;
                }
                return Err(e);
            }
        }
    }
    Ok(total)
}
