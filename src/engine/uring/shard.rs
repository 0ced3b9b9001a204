//! One shard on io_uring: a thread with its own ring, its own SO_REUSEPORT
//! listeners (multishot accept), a slab of (socket, `Conn`), the timer heap
//! and the worker pool's completion channel, woken through an eventfd the
//! ring keeps a read on. The completion pump: it moves bytes between the
//! ring and the I/O-free `Conn`, the same `Conn` the epoll shard drives.
//!
//! Per connection at most one recv and one send are in flight
//! (`inflight::Socket`). A closed connection's `Conn` is dropped at once
//! (which releases its mailbox lock); its socket stays in the slab, parked,
//! until the cancelled operations complete, and only then is its descriptor
//! closed (through the ring) and its slot freed.

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use slab::Slab;

use super::inflight::{Kind, Op, Socket, UserData};
use super::ops::{Cqe, Io, SendBuf};
use super::sys::{EventFd, adopt_fd};
use crate::engine::conn::{Conn, Context, Env, Settings, Status};
use crate::engine::shard::{Accepted, Shared};
use crate::engine::timer::Timers;
use crate::engine::waker::Waker;
use crate::engine::worker::{ConnRef, Done, Job};

/// After EMFILE/ENFILE, wait this long before accepting again.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);
/// How long the shard waits at exit for cancelled operations to complete.
const DRAIN_LIMIT: Duration = Duration::from_secs(2);

/// A connection's socket and, while it is open, its `Conn`.
struct Entry {
    socket: Socket,
    /// `None` once closed: the socket is parked until its ops complete.
    conn: Option<Conn>,
    /// Holds a per-address slot in the guard.
    counted: bool,
}

/// One listener and its multishot accept.
struct Listener {
    socket: std::net::TcpListener,
    /// Implicit TLS (RFC 8314).
    tls: bool,
    /// The accept in flight; the listener is closed only when it is `None`.
    accept: Option<UserData>,
}

/// An io_uring shard, created on its own thread (SINGLE_ISSUER: the thread
/// that creates the ring is the one that submits).
pub struct Shard {
    id: usize,
    io: Io,
    listeners: Vec<Option<Listener>>,
    waker: Arc<Waker>,
    done_rx: Receiver<Done>,
    env: Env,
    entries: Slab<Entry>,
    timers: Timers,
    next_id: u64,
    accept_paused_until: Option<Instant>,
    shutdown_deadline: Option<Instant>,
    cqes: Vec<Cqe>,
}

impl Shard {
    /// A ring, its buffers, an accept per listener and a read on the waker.
    pub fn new(
        id: usize,
        listeners: crate::engine::listen::ShardListeners,
        jobs: Sender<Job>,
        settings: Settings,
        shared: Arc<Shared>,
    ) -> std::io::Result<Shard> {
        let io = Io::new()?;
        let waker = Arc::new(Waker::Uring(EventFd::new()?));
        let (env, done_rx) = Env::new(jobs, settings, shared, Arc::clone(&waker));
        let mut shard = Shard {
            id,
            io,
            listeners: listeners
                .into_iter()
                .map(|(socket, tls)| {
                    Some(Listener {
                        socket,
                        tls,
                        accept: None,
                    })
                })
                .collect(),
            waker,
            done_rx,
            env,
            entries: Slab::new(),
            timers: Timers::default(),
            next_id: 0,
            accept_paused_until: None,
            shutdown_deadline: None,
            cqes: Vec::with_capacity(256),
        };
        shard.arm_accepts();
        shard.arm_wake(Box::new([0; 8]));
        Ok(shard)
    }

    /// Wakes the shard's ring (used by the signal thread).
    pub fn waker(&self) -> Arc<Waker> {
        Arc::clone(&self.waker)
    }

    fn arm_wake(&mut self, buf: Box<[u8; 8]>) {
        let Waker::Uring(eventfd) = &*self.waker else {
            unreachable!("an io_uring shard has an eventfd waker");
        };
        self.io.wake_read(eventfd.raw(), buf);
    }

    fn arm_accepts(&mut self) {
        for (i, l) in self.listeners.iter_mut().enumerate() {
            if let Some(l) = l
                && l.accept.is_none()
            {
                l.accept = Some(self.io.accept(i, l.socket.as_raw_fd()));
            }
        }
    }

    /// Runs the event loop until shutdown has finished.
    pub fn run(mut self) {
        loop {
            let timeout = self.timeout(Instant::now());
            if let Err(e) = self.io.wait(timeout) {
                tracing::error!(shard = self.id, error = %e, "io_uring wait failed; shard stops");
                // The kernel may still hold buffers: leak rather than free.
                std::mem::forget(self.io);
                return;
            }
            let now = Instant::now();
            let mut cqes = std::mem::take(&mut self.cqes);
            self.io.reap(&mut cqes);
            for cqe in cqes.drain(..) {
                self.complete(cqe, now);
            }
            self.cqes = cqes;
            self.completions(now);
            self.expire(now);
            if self.env.shared.shutdown.load(Ordering::Relaxed) && self.shutting_down(now) {
                break;
            }
        }
        self.exit();
    }

    /// Cancels the waker's read, waits for every completion, then lets the
    /// ring and buffers drop.
    fn exit(mut self) {
        let drained = self.io.drain(DRAIN_LIMIT, |io, cqe| {
            if let Some(op) = io.table.get(cqe.user_data)
                && !(matches!(op, Op::Accept { .. }) && cqe.more())
            {
                match io.table.remove(cqe.user_data) {
                    Op::Recv { .. } => {
                        if let Some(bid) = cqe.buffer() {
                            io.bufs.recycle(bid);
                        }
                    }
                    Op::Send { buf, .. } => drop(io.send_done(buf)),
                    _ => {}
                }
            }
        });
        if !drained {
            tracing::error!(
                shard = self.id,
                in_flight = self.io.table.len(),
                "io_uring operations did not complete at exit; leaking their buffers"
            );
            std::mem::forget(self.io);
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

    /// Dispatches one completion to its owner.
    fn complete(&mut self, cqe: Cqe, now: Instant) {
        if let Some(Op::Accept { listener }) = self.io.table.get(cqe.user_data) {
            let listener = *listener;
            if !cqe.more() {
                self.io.table.remove(cqe.user_data);
                if let Some(l) = &mut self.listeners[listener] {
                    l.accept = None;
                }
            }
            self.accepted(listener, &cqe, now);
            return;
        }
        match self.io.table.remove(cqe.user_data) {
            Op::Recv { slot } => self.received(slot, &cqe, now),
            Op::Send { slot, buf } => self.sent(slot, buf, &cqe, now),
            // Pool results are drained every loop; keep the next wake armed.
            Op::Wake { buf } => self.arm_wake(buf),
            Op::Close | Op::Cancel => {}
            Op::Accept { .. } => unreachable!("handled above"),
        }
    }

    fn accepted(&mut self, listener: usize, cqe: &Cqe, now: Instant) {
        match cqe.error() {
            None => {
                // SAFETY: a non-negative accept result is a new descriptor
                // that nothing else owns.
                let fd = unsafe { adopt_fd(cqe.result) };
                if self.shutdown_deadline.is_some() {
                    return; // dropping `fd` closes it
                }
                let tls = self.listeners[listener].as_ref().is_some_and(|l| l.tls);
                self.open(fd, tls, now);
            }
            Some(e) if e.raw_os_error() == Some(libc::ECANCELED) => {}
            Some(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ECONNABORTED | libc::EINTR | libc::EAGAIN)
                ) => {}
            Some(e) => {
                // EMFILE and friends: the clients wait in the backlog; retry soon.
                tracing::warn!(shard = self.id, error = %e, "accept failed; pausing accepts");
                self.accept_paused_until = Some(now + ACCEPT_RETRY);
                if cqe.more()
                    && let Some(Some(l)) = self.listeners.get(listener)
                    && let Some(ud) = l.accept
                {
                    self.io.cancel(ud);
                }
            }
        }
        if !cqe.more() {
            if self.shutdown_deadline.is_some() {
                // Its last completion: now the listener may close.
                self.listeners[listener] = None;
            } else if self.accept_paused_until.is_none() {
                self.arm_accepts();
            }
        }
    }

    fn open(&mut self, fd: OwnedFd, implicit_tls: bool, now: Instant) {
        let peer = match socket2::SockRef::from(&fd).peer_addr() {
            Ok(addr) => match addr.as_socket() {
                Some(addr) => addr,
                None => return,
            },
            // The client is already gone.
            Err(_) => return,
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
                // A fresh socket's buffer takes one short line at once.
                let _ = socket2::SockRef::from(&fd).send(line);
                return;
            }
        };
        let slot = self.entries.insert(Entry {
            socket: Socket::new(fd),
            conn: Some(*conn),
            counted,
        });
        self.drive(slot, now);
    }

    fn received(&mut self, slot: usize, cqe: &Cqe, now: Instant) {
        let entry = &mut self.entries[slot];
        entry.socket.finished(Kind::Recv);
        let Some(conn) = &mut entry.conn else {
            if let Some(bid) = cqe.buffer() {
                self.io.bufs.recycle(bid);
            }
            self.release(slot);
            return;
        };
        if cqe.result > 0 {
            let bid = cqe.buffer().expect("a recv with data names its buffer");
            let n = cqe.result as usize;
            let space = conn.input_space();
            // The recv asked for at most the free space, which only grows
            // while it is in flight.
            assert!(n <= space.len(), "recv overran the input space");
            space[..n].copy_from_slice(self.io.bufs.get(bid, n));
            self.io.bufs.recycle(bid);
            conn.on_input(n, now);
        } else {
            if let Some(bid) = cqe.buffer() {
                self.io.bufs.recycle(bid);
            }
            match cqe.error() {
                None => conn.on_eof(),
                // Out of ring buffers for a moment, or interrupted: re-armed
                // by `drive` below (the buffers of this batch are back).
                Some(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::ENOBUFS | libc::EINTR | libc::EAGAIN)
                    ) => {}
                Some(e) => {
                    conn.fail(&e);
                    self.close(slot);
                    return;
                }
            }
        }
        self.drive(slot, now);
    }

    fn sent(&mut self, slot: usize, buf: Box<SendBuf>, cqe: &Cqe, now: Instant) {
        // The kernel is done reading: the bytes (and any mmap they point
        // into) may be dropped or reused from here on.
        let outgoing = self.io.send_done(buf);
        let entry = &mut self.entries[slot];
        entry.socket.finished(Kind::Send);
        let Some(conn) = &mut entry.conn else {
            drop(outgoing);
            self.release(slot);
            return;
        };
        match cqe.error() {
            None => {
                conn.output_done(outgoing, cqe.result as usize, now);
                self.drive(slot, now);
            }
            Some(e) if matches!(e.raw_os_error(), Some(libc::EINTR | libc::EAGAIN)) => {
                conn.output_done(outgoing, 0, now);
                self.drive(slot, now);
            }
            Some(e) => {
                conn.output_done(outgoing, 0, now);
                conn.fail(&e);
                self.close(slot);
            }
        }
    }

    /// Lets the connection work and submits what it needs next, then closes
    /// it or re-arms its timer.
    fn drive(&mut self, slot: usize, now: Instant) {
        let Some(entry) = self.entries.get_mut(slot) else {
            return;
        };
        let Some(conn) = &mut entry.conn else {
            return;
        };
        let cx = self.env.cx(slot, now);
        let status = pump(&mut self.io, slot, &mut entry.socket, conn, &cx);
        self.settle(slot, status);
    }

    fn completions(&mut self, now: Instant) {
        while let Ok(done) = self.done_rx.try_recv() {
            let ConnRef { slot, id } = done.conn;
            // Gone, parked, or its slot reused: dropping the result drops any
            // mailbox lock it carried.
            let Some(conn) = self
                .entries
                .get_mut(slot)
                .and_then(|e| e.conn.as_mut())
                .filter(|c| c.id == id)
            else {
                continue;
            };
            let cx = self.env.cx(slot, now);
            conn.on_done(done, &cx);
            self.drive(slot, now);
        }
    }

    fn expire(&mut self, now: Instant) {
        while let Some((slot, id, generation)) = self.timers.pop_due(now) {
            let Some(conn) = self.entries.get_mut(slot).and_then(|e| e.conn.as_mut()) else {
                continue;
            };
            if conn.id != id || conn.timer_gen != generation {
                continue;
            }
            conn.armed_at = None;
            let cx = self.env.cx(slot, now);
            match conn.on_timer(&cx) {
                Status::Close => self.last_words(slot),
                _ => self.drive(slot, now),
            }
        }
        if self.accept_paused_until.is_some_and(|t| t <= now) {
            self.accept_paused_until = None;
            if self.shutdown_deadline.is_none() {
                self.arm_accepts();
            }
        }
    }

    /// One attempt to deliver a last line (MSG_DONTWAIT: a full socket
    /// fails at once instead of waiting), then the connection is closed.
    fn last_words(&mut self, slot: usize) {
        let entry = &mut self.entries[slot];
        if let Some(conn) = &mut entry.conn
            && !entry.socket.in_flight(Kind::Send)
            && let Ok(Some(outgoing)) = conn.take_output()
        {
            self.io
                .send(slot, &mut entry.socket, outgoing, libc::MSG_DONTWAIT);
        }
        self.close(slot);
    }

    /// Returns true when the shard may exit.
    fn shutting_down(&mut self, now: Instant) -> bool {
        let deadline = match self.shutdown_deadline {
            Some(d) => d,
            None => {
                for l in &mut self.listeners {
                    match l.as_ref().and_then(|l| l.accept) {
                        // Closed at the accept's last completion.
                        Some(ud) => self.io.cancel(ud),
                        None => *l = None,
                    }
                }
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
            let open: Vec<usize> = self
                .entries
                .iter()
                .filter(|(_, e)| e.conn.is_some())
                .map(|(k, _)| k)
                .collect();
            for slot in open {
                if let Some(conn) = &mut self.entries[slot].conn {
                    conn.abort(crate::protocol::reply::text::SHUTTING_DOWN);
                }
                self.last_words(slot);
            }
        }
        self.entries.is_empty() && self.listeners.iter().all(Option::is_none)
    }

    /// Closes the connection, or makes sure the timer heap holds an entry no
    /// later than its next wakeup (as the epoll shard does).
    fn settle(&mut self, slot: usize, status: Status) {
        if status == Status::Close {
            self.close(slot);
            return;
        }
        let Some(conn) = &mut self.entries[slot].conn else {
            return;
        };
        let want = conn.next_wakeup(&self.env.settings);
        if conn.armed_at.is_none_or(|at| want < at) {
            conn.timer_gen += 1;
            conn.armed_at = Some(want);
            self.timers.push(want, slot, conn.id, conn.timer_gen);
        }
    }

    /// Drops the `Conn` (releasing its mailbox lock), cancels its operations
    /// and parks the socket until they complete.
    fn close(&mut self, slot: usize) {
        let entry = &mut self.entries[slot];
        if entry.socket.is_closing() {
            return;
        }
        if let Some(conn) = entry.conn.take() {
            conn.log_end(self.id);
            self.env.shared.release(conn.peer, entry.counted);
        }
        for ud in entry.socket.close() {
            self.io.cancel(ud);
        }
        self.release(slot);
    }

    /// Frees the slot once its socket has no operation left; the descriptor
    /// is closed through the ring.
    fn release(&mut self, slot: usize) {
        if let Some(fd) = self.entries[slot].socket.release() {
            self.io.close(fd);
            self.entries.remove(slot);
        }
    }
}

/// The completion pump for one connection: let it work, hand its next
/// output to a send (one at a time), shut down the write side when it is
/// done, and keep one recv in flight while it wants input.
fn pump(
    io: &mut Io,
    slot: usize,
    socket: &mut Socket,
    conn: &mut Conn,
    cx: &Context<'_>,
) -> Status {
    if let Err(e) = conn.process(cx) {
        conn.fail(&e);
        return Status::Close;
    }
    if !socket.in_flight(Kind::Send) {
        match conn.take_output() {
            Ok(Some(outgoing)) => io.send(slot, socket, outgoing, 0),
            Ok(None) => {}
            Err(e) => {
                conn.fail(&e);
                return Status::Close;
            }
        }
    }
    match conn.status() {
        Status::Close => return Status::Close,
        Status::Linger => {
            // Directly, not through the ring (see `inflight::Socket`); the
            // last send has completed, so the FIN follows every byte.
            let fd = socket.fd();
            if socket2::SockRef::from(&fd)
                .shutdown(std::net::Shutdown::Write)
                .is_err()
            {
                return Status::Close;
            }
            conn.start_linger(cx.now);
        }
        Status::Open => {}
    }
    if !socket.in_flight(Kind::Recv) && conn.wants_input() {
        let space = conn.input_space().len();
        if space > 0 {
            io.recv(slot, socket, space);
        }
    }
    Status::Open
}
