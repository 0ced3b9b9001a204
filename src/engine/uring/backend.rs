//! The io_uring backend: a completion pump. It owns the shard's ring, its
//! SO_REUSEPORT listeners (multishot accept), the connections' sockets and
//! everything the kernel holds for them; it turns completions into the
//! core's [`Event`]s and submits what the core asks for. It makes no
//! decision about a connection.
//!
//! Per connection at most one recv and one send are in flight
//! (`inflight::Socket`). When the core closes a connection, its socket stays
//! here, parked, until the cancelled operations complete; only then is the
//! descriptor closed (through the ring) and [`Event::Released`] frees the
//! core's slot. A closing socket's completions never reach the core.

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::inflight::{Kind, Op, Socket, UserData};
use super::ops::{Cqe, Io, SendBuf};
use super::sys::{EventFd, adopt_fd};
use crate::engine::backend::{Backend, Closed, Event, Received};
use crate::engine::conn::{Conn, Outgoing};
use crate::engine::error::ConnError;
use crate::engine::waker::Waker;

/// How long the shard waits at exit for cancelled operations to complete.
const DRAIN_LIMIT: Duration = Duration::from_secs(2);

/// One listener and its multishot accept.
struct Listener {
    socket: std::net::TcpListener,
    /// The accept in flight; the listener is closed only when it is `None`.
    accept: Option<UserData>,
}

/// An io_uring shard's backend, created on its own thread (SINGLE_ISSUER:
/// the thread that creates the ring is the one that submits).
pub struct Uring {
    io: Io,
    /// `None` once closed (after its accept's last completion).
    listeners: Vec<Option<Listener>>,
    accepting: bool,
    stopping: bool,
    sockets: Vec<Option<Socket>>,
    /// Kept until the ring is drained: the waker's read names it.
    eventfd: Arc<EventFd>,
    cqes: Vec<Cqe>,
}

impl Uring {
    /// A ring, its buffers, an accept per listener and a read on the
    /// waker; returns the backend and the shard's waker.
    pub fn new(listeners: Vec<std::net::TcpListener>) -> std::io::Result<(Uring, Waker)> {
        let io = Io::new()?;
        let eventfd = Arc::new(EventFd::new()?);
        let mut uring = Uring {
            io,
            listeners: listeners
                .into_iter()
                .map(|socket| {
                    Some(Listener {
                        socket,
                        accept: None,
                    })
                })
                .collect(),
            accepting: true,
            stopping: false,
            sockets: Vec::new(),
            eventfd: Arc::clone(&eventfd),
            cqes: Vec::with_capacity(256),
        };
        uring.arm_accepts();
        uring.arm_wake(Box::new([0; 8]));
        Ok((uring, eventfd))
    }

    fn arm_wake(&mut self, buf: Box<[u8; 8]>) {
        self.io.wake_read(self.eventfd.raw(), buf);
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

    fn cancel_accepts(&mut self) {
        for l in self.listeners.iter().flatten() {
            if let Some(ud) = l.accept {
                self.io.cancel(ud);
            }
        }
    }

    fn socket(&mut self, slot: usize) -> &mut Socket {
        self.sockets[slot]
            .as_mut()
            .expect("the core names open slots only")
    }

    /// Dispatches one completion.
    fn complete(&mut self, cqe: Cqe, events: &mut Vec<Event<u16, Box<SendBuf>>>) {
        if let Some(Op::Accept { listener }) = self.io.table.get(cqe.user_data) {
            let listener = *listener;
            return self.accepted(listener, &cqe, events);
        }
        match self.io.table.remove(cqe.user_data) {
            Op::Recv { slot } => self.received(slot, &cqe, events),
            Op::Send { slot, buf } => {
                // The kernel is done reading: the bytes (and any mmap they
                // point into) may be dropped or reused from here on.
                let socket = self.socket(slot);
                socket.finished(Kind::Send);
                if socket.is_closing() {
                    drop(self.io.send_done(buf));
                    return self.try_release(slot, events);
                }
                let result = match cqe.error() {
                    None => Ok(cqe.result as usize),
                    Some(e) if matches!(e.raw_os_error(), Some(libc::EINTR | libc::EAGAIN)) => {
                        Ok(0)
                    }
                    Some(e) => Err(e),
                };
                events.push(Event::Sent {
                    slot,
                    sent: buf,
                    result,
                });
            }
            // Pool results are drained every loop; keep the next wake armed.
            Op::Wake { buf } => self.arm_wake(buf),
            Op::Close | Op::Cancel => {}
            Op::Accept { .. } => unreachable!("handled above"),
        }
    }

    fn accepted(&mut self, listener: usize, cqe: &Cqe, events: &mut Vec<Event<u16, Box<SendBuf>>>) {
        let more = cqe.more();
        if !more {
            self.io.table.remove(cqe.user_data);
            if let Some(l) = &mut self.listeners[listener] {
                l.accept = None;
            }
        }
        match cqe.error() {
            None => {
                // SAFETY: a non-negative accept result is a new descriptor
                // that nothing else owns.
                let fd = unsafe { adopt_fd(cqe.result) };
                if !self.stopping {
                    events.push(Event::Accepted {
                        listener,
                        fd,
                        peer: None,
                    });
                } // else dropping `fd` closes it
            }
            Some(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ECANCELED | libc::ECONNABORTED | libc::EINTR | libc::EAGAIN)
                ) => {}
            Some(e) => {
                if more {
                    self.io.cancel(cqe.user_data);
                }
                events.push(Event::AcceptFailed(e));
            }
        }
        // Whatever the last completion carried, the listener's accept is
        // over: close it when stopping, re-arm it when accepting.
        if !more {
            if self.stopping {
                self.listeners[listener] = None;
            } else if self.accepting {
                self.arm_accepts();
            }
        }
    }

    fn received(&mut self, slot: usize, cqe: &Cqe, events: &mut Vec<Event<u16, Box<SendBuf>>>) {
        let socket = self.socket(slot);
        socket.finished(Kind::Recv);
        if socket.is_closing() {
            if let Some(bid) = cqe.buffer() {
                self.io.bufs.recycle(bid);
            }
            return self.try_release(slot, events);
        }
        let result = if cqe.result > 0 {
            Received::Data {
                buf: cqe.buffer().expect("a recv with data names its buffer"),
                len: cqe.result as usize,
            }
        } else {
            if let Some(bid) = cqe.buffer() {
                self.io.bufs.recycle(bid);
            }
            match cqe.error() {
                None => Received::Eof,
                // Out of ring buffers for a moment, or interrupted: re-armed
                // when the core drives the connection.
                Some(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::ENOBUFS | libc::EINTR | libc::EAGAIN)
                    ) =>
                {
                    Received::Again
                }
                Some(e) => Received::Failed(e),
            }
        };
        events.push(Event::Received { slot, result });
    }

    /// Frees a closing socket whose last operation completed: its
    /// descriptor is closed through the ring and the core's slot freed.
    fn try_release(&mut self, slot: usize, events: &mut Vec<Event<u16, Box<SendBuf>>>) {
        if let Some(fd) = self.socket(slot).release() {
            self.io.close(fd);
            self.sockets[slot] = None;
            events.push(Event::Released(slot));
        }
    }
}

impl Backend for Uring {
    type Buf = u16;
    type Sent = Box<SendBuf>;

    /// `accept_room` is not enforced here: a multishot accept reports what
    /// the kernel accepted; the core stops accepting through
    /// [`Backend::set_accepting`] and takes what was already in flight.
    fn wait(
        &mut self,
        timeout: Option<Duration>,
        _accept_room: usize,
        events: &mut Vec<Event<u16, Box<SendBuf>>>,
    ) -> std::io::Result<()> {
        self.io.wait(timeout)?;
        let mut cqes = std::mem::take(&mut self.cqes);
        self.io.reap(&mut cqes);
        for cqe in cqes.drain(..) {
            self.complete(cqe, events);
        }
        self.cqes = cqes;
        Ok(())
    }

    fn open(&mut self, slot: usize, fd: OwnedFd) -> std::io::Result<()> {
        if self.sockets.len() <= slot {
            self.sockets.resize_with(slot + 1, || None);
        }
        debug_assert!(self.sockets[slot].is_none(), "slot {slot} still parked");
        self.sockets[slot] = Some(Socket::new(fd));
        Ok(())
    }

    fn outgoing(&mut self, sent: Box<SendBuf>) -> Outgoing {
        self.io.send_done(sent)
    }

    fn copy_received(&mut self, bid: u16, len: usize, into: &mut [u8]) {
        into[..len].copy_from_slice(self.io.bufs.get(bid, len));
        self.io.bufs.recycle(bid);
    }

    fn pull(&mut self, _: usize, _: &mut Conn, _: Instant) -> Result<usize, ConnError> {
        Ok(0)
    }

    fn push(&mut self, slot: usize, conn: &mut Conn, _: Instant) -> Result<usize, ConnError> {
        let socket = self.sockets[slot].as_mut().expect("open slot");
        if !socket.in_flight(Kind::Send)
            && let Some(outgoing) = conn.take_output()?
        {
            self.io.send(slot, socket, outgoing, 0);
        }
        Ok(0)
    }

    fn arm(&mut self, slot: usize, conn: &mut Conn) {
        let socket = self.sockets[slot].as_mut().expect("open slot");
        if !socket.in_flight(Kind::Recv) && conn.wants_input() {
            let space = conn.input_space().len();
            if space > 0 {
                self.io.recv(slot, socket, space);
            }
        }
    }

    /// Directly, not through the ring (see `inflight::Socket`); the core asks
    /// only once the last send has completed, so the FIN follows every byte.
    fn shutdown_write(&mut self, slot: usize) -> std::io::Result<()> {
        let fd = self.socket(slot).fd();
        socket2::SockRef::from(&fd).shutdown(std::net::Shutdown::Write)
    }

    /// A receive in flight means the kernel's queue was empty when it was
    /// armed, and anything that came since completed it (its data out of
    /// the queue, whether or not its completion was read yet).
    fn input_drained(&self, slot: usize) -> bool {
        self.sockets
            .get(slot)
            .and_then(Option::as_ref)
            .is_some_and(|s| s.in_flight(Kind::Recv))
    }

    /// MSG_DONTWAIT: a full socket fails at once instead of waiting.
    fn last_words(&mut self, slot: usize, conn: &mut Conn, _: Instant) {
        let socket = self.sockets[slot].as_mut().expect("open slot");
        if !socket.in_flight(Kind::Send)
            && let Ok(Some(outgoing)) = conn.take_output()
        {
            self.io.send(slot, socket, outgoing, libc::MSG_DONTWAIT);
        }
    }

    fn close(&mut self, slot: usize) -> Closed {
        let socket = self.sockets[slot].as_mut().expect("open slot");
        for ud in socket.close() {
            self.io.cancel(ud);
        }
        match socket.release() {
            Some(fd) => {
                self.io.close(fd);
                self.sockets[slot] = None;
                Closed::Now
            }
            None => Closed::Later,
        }
    }

    fn set_accepting(&mut self, on: bool) {
        self.accepting = on;
        if on {
            self.arm_accepts();
        } else {
            self.cancel_accepts();
        }
    }

    fn stop_listening(&mut self) {
        self.stopping = true;
        self.accepting = false;
        for l in &mut self.listeners {
            match l.as_ref().and_then(|l| l.accept) {
                // Closed at the accept's last completion.
                Some(ud) => self.io.cancel(ud),
                None => *l = None,
            }
        }
    }

    fn listeners_closed(&self) -> bool {
        self.listeners.iter().all(Option::is_none)
    }

    /// Cancels the waker's read and whatever else is in flight, waits for
    /// every completion, then lets the ring and buffers drop.
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
                in_flight = self.io.table.len(),
                "io_uring operations did not complete at exit; leaking their buffers"
            );
            std::mem::forget(self.io);
        }
    }
}
