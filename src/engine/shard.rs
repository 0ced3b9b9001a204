//! One shard: a thread with its own mio `Poll`, its own SO_REUSEPORT
//! listeners, its connection slab, a timer heap and a completion channel that
//! the worker pool fills and wakes through a mio `Waker`. Nothing here is
//! shared with other shards except the job queue and the shutdown flag.
#![forbid(unsafe_code)]

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token};
use slab::Slab;

use super::conn::{Conn, Context, Settings, Verdict};
use super::worker::{ConnRef, Done, Job, Reply};
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
}

/// A shard before its thread starts: created on the main thread so that a
/// bind or poll error stops startup with a clear message.
pub struct Shard {
    id: usize,
    poll: Poll,
    listeners: Vec<TcpListener>,
    waker: Arc<mio::Waker>,
    done_tx: Sender<Done>,
    done_rx: Receiver<Done>,
    jobs: Sender<Job>,
    settings: Settings,
    shared: Arc<Shared>,
}

impl Shard {
    /// Registers `listeners` with a new poll.
    pub fn new(
        id: usize,
        listeners: Vec<std::net::TcpListener>,
        jobs: Sender<Job>,
        settings: Settings,
        shared: Arc<Shared>,
    ) -> io::Result<Shard> {
        let poll = Poll::new()?;
        let waker = Arc::new(mio::Waker::new(poll.registry(), WAKER)?);
        let mut mio_listeners = Vec::with_capacity(listeners.len());
        for (i, l) in listeners.into_iter().enumerate() {
            let mut l = TcpListener::from_std(l);
            poll.registry()
                .register(&mut l, Token(LISTENER_BASE - i), Interest::READABLE)?;
            mio_listeners.push(l);
        }
        let (done_tx, done_rx) = crossbeam_channel::unbounded();
        Ok(Shard {
            id,
            poll,
            listeners: mio_listeners,
            waker,
            done_tx,
            done_rx,
            jobs,
            settings,
            shared,
        })
    }

    /// Wakes the shard's poll (used by the signal thread).
    pub fn waker(&self) -> Arc<mio::Waker> {
        Arc::clone(&self.waker)
    }

    /// Runs the event loop until shutdown has finished.
    pub fn run(self) {
        let mut state = Loop {
            conns: Slab::new(),
            timers: BinaryHeap::new(),
            next_id: 0,
            accept_paused_until: None,
            shutdown_deadline: None,
        };
        let mut events = Events::with_capacity(1024);
        let mut shard = self;
        loop {
            let timeout = state.timeout(Instant::now());
            if let Err(e) = shard.poll.poll(&mut events, timeout)
                && e.kind() != io::ErrorKind::Interrupted
            {
                tracing::error!(shard = shard.id, error = %e, "poll failed; shard stops");
                return;
            }
            let now = Instant::now();
            for event in events.iter() {
                match event.token() {
                    WAKER => {}
                    Token(t) if t > LISTENER_BASE - shard.listeners.len() && t <= LISTENER_BASE => {
                        shard.accept(&mut state, LISTENER_BASE - t, now);
                    }
                    Token(slot) => shard.conn_event(&mut state, slot, now),
                }
            }
            shard.completions(&mut state, now);
            shard.expire(&mut state, now);
            if shard.shared.shutdown.load(Ordering::Relaxed) && shard.shutting_down(&mut state, now)
            {
                return;
            }
        }
    }

    fn context(&self, slot: usize, now: Instant) -> Context<'_> {
        Context {
            jobs: &self.jobs,
            reply: Reply {
                to: self.done_tx.clone(),
                waker: Arc::clone(&self.waker),
                conn: ConnRef { slot, id: 0 },
                peer: std::net::SocketAddr::from(([0, 0, 0, 0], 0)),
            },
            settings: &self.settings,
            now,
        }
    }

    fn accept(&mut self, state: &mut Loop, index: usize, now: Instant) {
        if state.accept_paused_until.is_some_and(|t| t > now) || state.shutdown_deadline.is_some() {
            return;
        }
        state.accept_paused_until = None;
        loop {
            let (mut socket, peer) = match self.listeners[index].accept() {
                Ok(pair) => pair,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => continue,
                Err(e) => {
                    // EMFILE and friends: the clients wait in the backlog; retry soon.
                    tracing::warn!(shard = self.id, error = %e, "accept failed; pausing accepts");
                    state.accept_paused_until = Some(now + ACCEPT_RETRY);
                    return;
                }
            };
            let _ = socket.set_nodelay(true);
            let entry = state.conns.vacant_entry();
            let slot = entry.key();
            if let Err(e) = self.poll.registry().register(
                &mut socket,
                Token(slot),
                Interest::READABLE | Interest::WRITABLE,
            ) {
                tracing::warn!(shard = self.id, error = %e, "cannot register a connection");
                continue;
            }
            state.next_id += 1;
            let id = state.next_id;
            let challenge = self.shared.apop.then(|| {
                format!(
                    "<{}.{}.{}@{}>",
                    std::process::id(),
                    self.id,
                    id,
                    self.shared.hostname
                )
                .into_boxed_str()
            });
            let offer = Offer {
                plaintext_auth: true,
                stls: false,
            };
            let session = Session::new(self.shared.limits, offer, challenge);
            let conn = entry.insert(Conn::new(id, socket, peer, session, &self.settings, now));
            let mut cx = self.context(slot, now);
            cx.reply.peer = peer;
            let verdict = conn.drive(&mut cx);
            self.settle(state, slot, verdict);
        }
    }

    fn conn_event(&mut self, state: &mut Loop, slot: usize, now: Instant) {
        let Some(conn) = state.conns.get_mut(slot) else {
            return;
        };
        let mut cx = self.context(slot, now);
        cx.reply.peer = conn.peer;
        let verdict = conn.drive(&mut cx);
        self.settle(state, slot, verdict);
    }

    fn completions(&mut self, state: &mut Loop, now: Instant) {
        while let Ok(done) = self.done_rx.try_recv() {
            let ConnRef { slot, id } = done.conn;
            // The connection may have gone (and its slot been reused) meanwhile;
            // dropping the result drops any mailbox lock it carried.
            let Some(conn) = state.conns.get_mut(slot).filter(|c| c.id == id) else {
                continue;
            };
            let mut cx = self.context(slot, now);
            cx.reply.peer = conn.peer;
            let verdict = conn.on_done(done, &mut cx);
            self.settle(state, slot, verdict);
        }
    }

    fn expire(&mut self, state: &mut Loop, now: Instant) {
        while let Some(Reverse((when, slot, id, generation))) = state.timers.peek().copied() {
            if when > now {
                break;
            }
            state.timers.pop();
            let Some(conn) = state
                .conns
                .get_mut(slot)
                .filter(|c| c.id == id && c.timer_gen == generation)
            else {
                continue;
            };
            conn.armed_at = None;
            let mut cx = self.context(slot, now);
            cx.reply.peer = conn.peer;
            let verdict = conn.on_timer(&mut cx);
            // Activity moved the deadline (no heap work per command): re-arm.
            self.settle(state, slot, verdict);
        }
        if state.accept_paused_until.is_some_and(|t| t <= now) {
            for i in 0..self.listeners.len() {
                self.accept(state, i, now);
            }
        }
    }

    /// Returns true when the shard may exit.
    fn shutting_down(&mut self, state: &mut Loop, now: Instant) -> bool {
        let deadline = match state.shutdown_deadline {
            Some(d) => d,
            None => {
                for l in &mut self.listeners {
                    let _ = self.poll.registry().deregister(l);
                }
                self.listeners.clear();
                let d = now + self.shared.shutdown_grace;
                state.shutdown_deadline = Some(d);
                tracing::info!(
                    shard = self.id,
                    sessions = state.conns.len(),
                    "shutting down"
                );
                d
            }
        };
        if now >= deadline {
            let slots: Vec<usize> = state.conns.iter().map(|(k, _)| k).collect();
            for slot in slots {
                state.conns[slot].abort(crate::protocol::reply::text::SHUTTING_DOWN);
                self.close(state, slot);
            }
        }
        state.conns.is_empty()
    }

    /// Closes the connection, or makes sure the timer heap holds an entry no
    /// later than its next wakeup. Pushing only when the wakeup moved earlier
    /// keeps heap work off the per-command path.
    fn settle(&mut self, state: &mut Loop, slot: usize, verdict: Verdict) {
        if verdict == Verdict::Close {
            self.close(state, slot);
            return;
        }
        let conn = &mut state.conns[slot];
        let want = conn.next_wakeup(&self.settings);
        if conn.armed_at.is_none_or(|at| want < at) {
            conn.timer_gen += 1;
            conn.armed_at = Some(want);
            state
                .timers
                .push(Reverse((want, slot, conn.id, conn.timer_gen)));
        }
    }

    fn close(&mut self, state: &mut Loop, slot: usize) {
        let mut conn = state.conns.remove(slot);
        let _ = self.poll.registry().deregister(&mut conn.socket);
        conn.log_end(self.id);
        // Dropping `conn` closes the socket and releases the mailbox lock.
    }
}

/// The event loop's mutable state.
struct Loop {
    conns: Slab<Conn>,
    /// (when, slot, conn id, timer generation), earliest first.
    timers: BinaryHeap<Reverse<(Instant, usize, u64, u64)>>,
    next_id: u64,
    accept_paused_until: Option<Instant>,
    shutdown_deadline: Option<Instant>,
}

impl Loop {
    fn timeout(&self, now: Instant) -> Option<Duration> {
        let mut next = self.timers.peek().map(|Reverse((when, ..))| *when);
        for extra in [self.accept_paused_until, self.shutdown_deadline]
            .into_iter()
            .flatten()
        {
            next = Some(next.map_or(extra, |n| n.min(extra)));
        }
        next.map(|when| when.saturating_duration_since(now))
    }
}
