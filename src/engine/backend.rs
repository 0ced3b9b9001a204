//! The contract between the shard core (`shard.rs`) and a backend (`epoll.rs`,
//! `uring/`). A backend only moves bytes: it owns the sockets and the
//! kernel's view of them, reports what happened as [`Event`]s, and does what
//! the core asks. Every decision (who is admitted, what a connection says,
//! when it times out, when it closes, how shutdown goes) is the core's.
//!
//! Both kinds of backend fit one contract because each call has a readiness
//! form and a completion form:
//!
//! | call | epoll (readiness) | io_uring (completion) |
//! |---|---|---|
//! | [`Backend::pull`] | read what the socket has into the connection now | nothing: data arrives as [`Event::Received`] |
//! | [`Backend::push`] | write until the socket is full | submit one send if none is in flight; [`Event::Sent`] later |
//! | [`Backend::arm`] | nothing: epoll reports readiness | keep one receive in flight |
//! | [`Backend::close`] | deregister and close now | cancel, park, close when the last op completes ([`Event::Released`]) |
//!
//! Slots are the core's: it picks a free slot for every accepted connection
//! and hands it to [`Backend::open`], and frees it when `close` says so or a
//! later [`Event::Released`] names it.
#![forbid(unsafe_code)]

use std::io;
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use super::conn::{Conn, Outgoing};
use super::error::ConnError;

/// What a backend reports from one wait. Kept small (no `Outgoing` by
/// value): events are moved into and out of a Vec every turn, and a large
/// variant made every event a `memcpy` (3 % more instructions per login).
pub enum Event<R, S> {
    /// Listener `listener` accepted a connection.
    Accepted {
        /// Index of the listener (the core knows which are implicit TLS).
        listener: usize,
        /// The new connection.
        fd: OwnedFd,
        /// The client's address when the accept reported it (saves a
        /// `getpeername` per connection).
        peer: Option<std::net::SocketAddr>,
    },
    /// An accept failed for lack of resources (EMFILE, ENFILE, ENOMEM): the
    /// core pauses accepting for a moment; the clients wait in the backlog.
    AcceptFailed(io::Error),
    /// Readiness: the connection in `slot` may read or write.
    Ready(usize),
    /// Completion: a receive for `slot` finished.
    Received {
        /// The connection.
        slot: usize,
        /// What it brought.
        result: Received<R>,
    },
    /// Completion: a send for `slot` finished; the bytes come back through
    /// [`Backend::outgoing`].
    Sent {
        /// The connection.
        slot: usize,
        /// The backend's record of the send, holding what
        /// [`Conn::take_output`] handed out.
        sent: S,
        /// Bytes sent (0: the socket took none for now), or the error.
        result: io::Result<usize>,
    },
    /// A closed connection's socket has no operation left: its slot is free.
    Released(usize),
}

/// What a completed receive brought.
pub enum Received<R> {
    /// `len` bytes in the backend's buffer `buf`: copy them with
    /// [`Backend::copy_received`].
    Data {
        /// The backend's buffer.
        buf: R,
        /// Bytes in it.
        len: usize,
    },
    /// The client closed its side.
    Eof,
    /// Nothing this time (out of buffers, interrupted): arm again.
    Again,
    /// The receive failed.
    Failed(io::Error),
}

/// Whether a closed connection's slot is free at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Closed {
    /// Free now.
    Now,
    /// The socket is parked until its operations complete; an
    /// [`Event::Released`] frees the slot.
    Later,
}

/// One shard's I/O.
pub trait Backend {
    /// A received buffer, as [`Received::Data`] names it.
    type Buf;
    /// A finished send, as [`Event::Sent`] names it.
    type Sent;

    /// Waits at most `timeout` (`None`: until something happens) and
    /// appends what happened to `events`. At most `accept_room` new
    /// connections are reported (the core's bound on admissions waiting).
    fn wait(
        &mut self,
        timeout: Option<Duration>,
        accept_room: usize,
        events: &mut Vec<Event<Self::Buf, Self::Sent>>,
    ) -> io::Result<()>;

    /// Takes a newly accepted connection into `slot`.
    fn open(&mut self, slot: usize, fd: OwnedFd) -> io::Result<()>;

    /// The bytes of a finished send, back for [`Conn::output_done`].
    fn outgoing(&mut self, sent: Self::Sent) -> Outgoing;

    /// Copies a received buffer's `len` bytes into `into` and recycles it.
    fn copy_received(&mut self, buf: Self::Buf, len: usize, into: &mut [u8]);

    /// Reads what is available for `slot` into `conn` now; returns bytes read.
    fn pull(&mut self, slot: usize, conn: &mut Conn, now: Instant) -> Result<usize, ConnError>;

    /// Sends `conn`'s output (or starts to); returns bytes sent now.
    fn push(&mut self, slot: usize, conn: &mut Conn, now: Instant) -> Result<usize, ConnError>;

    /// Makes sure input for `slot` will be reported (after the core has let
    /// the connection work).
    fn arm(&mut self, slot: usize, conn: &mut Conn);

    /// Shuts down the write side (a FIN after every byte sent so far).
    fn shutdown_write(&mut self, slot: usize) -> io::Result<()>;

    /// True when the last read of `slot` emptied the kernel's receive
    /// queue, so closing now ends the connection with FIN, not RST. A
    /// backend that cannot tell says false (the core then lingers).
    fn input_drained(&self, _slot: usize) -> bool {
        false
    }

    /// One attempt to send `conn`'s last line without waiting; the core
    /// closes the connection right after.
    fn last_words(&mut self, slot: usize, conn: &mut Conn, now: Instant);

    /// Closes the connection in `slot`.
    fn close(&mut self, slot: usize) -> Closed;

    /// Stops (`false`) or restarts (`true`) taking new connections for now.
    fn set_accepting(&mut self, on: bool);

    /// Stops taking new connections for good and starts closing listeners.
    fn stop_listening(&mut self);

    /// True once every listener is closed.
    fn listeners_closed(&self) -> bool;

    /// The shard is done: release what the kernel still holds.
    fn exit(self);
}
