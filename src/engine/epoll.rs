//! The epoll backend (mio): a readiness pump. It owns the shard's `Poll`,
//! its SO_REUSEPORT listeners and the connections' sockets; it reports
//! readiness and accepted sockets to the shard core and reads and writes
//! when the core asks. It makes no decision about a connection.
#![forbid(unsafe_code)]

use std::io::{self, IoSlice, Read, Write};
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};

use super::backend::{Backend, Closed, Event};
use super::body::IOVECS_MAX;
use super::conn::{Conn, Outgoing};
use super::error::ConnError;
use super::waker::{Wake, Waker};

const WAKER: Token = Token(usize::MAX);
const LISTENER_BASE: usize = usize::MAX - 1;

/// mio's waker (an eventfd registered with the poll) as the shard's waker.
struct MioWaker(mio::Waker);

impl Wake for MioWaker {
    fn wake(&self) -> io::Result<()> {
        self.0.wake()
    }
}

/// A connection's socket.
struct Socket {
    stream: TcpStream,
    /// A read came back short or would block since the last readiness
    /// event: edge-triggered epoll reports any later data as a new event,
    /// so reading again now would only cost an EAGAIN.
    drained: bool,
    /// An event said the peer closed its side (`EPOLLRDHUP`). A short read
    /// then does not mean drained: when the last data and the FIN arrive
    /// before one event, the read that returns the data stops short of
    /// the end of file, and no later event would report it.
    peer_closed: bool,
}

/// A listener and whether it may have connections waiting that were not
/// taken yet (edge-triggered: no new event comes for those).
struct Listener {
    socket: TcpListener,
    ready: bool,
}

/// One shard's epoll backend.
pub struct Epoll {
    poll: Poll,
    events: Events,
    listeners: Vec<Listener>,
    accepting: bool,
    sockets: Vec<Option<Socket>>,
}

impl Epoll {
    /// Registers `listeners` with a new poll; returns the backend and the
    /// shard's waker.
    pub fn new(listeners: Vec<std::net::TcpListener>) -> io::Result<(Epoll, Waker)> {
        let poll = Poll::new()?;
        let waker: Waker = std::sync::Arc::new(MioWaker(mio::Waker::new(poll.registry(), WAKER)?));
        let mut own = Vec::with_capacity(listeners.len());
        for (i, l) in listeners.into_iter().enumerate() {
            let mut socket = TcpListener::from_std(l);
            poll.registry()
                .register(&mut socket, Token(LISTENER_BASE - i), Interest::READABLE)?;
            own.push(Listener {
                socket,
                ready: true,
            });
        }
        let epoll = Epoll {
            poll,
            events: Events::with_capacity(1024),
            listeners: own,
            accepting: true,
            sockets: Vec::new(),
        };
        Ok((epoll, waker))
    }

    fn socket(&mut self, slot: usize) -> &mut Socket {
        self.sockets[slot]
            .as_mut()
            .expect("the core names open slots only")
    }

    /// Accepts from ready listeners, at most `room` connections.
    fn accept(&mut self, mut room: usize, events: &mut Vec<Event<(), ()>>) {
        for (index, l) in self.listeners.iter_mut().enumerate() {
            while l.ready && room > 0 {
                match l.socket.accept() {
                    Ok((stream, peer)) => {
                        room -= 1;
                        let fd = OwnedFd::from(stream);
                        events.push(Event::Accepted {
                            listener: index,
                            fd,
                            peer: Some(peer),
                        });
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => l.ready = false,
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
                        ) => {}
                    Err(e) => {
                        // The listener stays ready: retried when the core
                        // turns accepting back on.
                        events.push(Event::AcceptFailed(e));
                        return;
                    }
                }
            }
        }
    }
}

impl Backend for Epoll {
    type Buf = ();
    type Sent = ();

    fn wait(
        &mut self,
        timeout: Option<Duration>,
        accept_room: usize,
        events: &mut Vec<Event<(), ()>>,
    ) -> io::Result<()> {
        let backlogged =
            self.accepting && accept_room > 0 && self.listeners.iter().any(|l| l.ready);
        let timeout = if backlogged {
            Some(Duration::ZERO)
        } else {
            timeout
        };
        match self.poll.poll(&mut self.events, timeout) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(()),
            other => other?,
        }
        for event in self.events.iter() {
            match event.token() {
                WAKER => {}
                Token(t) if t > LISTENER_BASE - self.listeners.len() && t <= LISTENER_BASE => {
                    self.listeners[LISTENER_BASE - t].ready = true;
                }
                Token(slot) => {
                    if let Some(Some(socket)) = self.sockets.get_mut(slot) {
                        // Room to write says nothing about input: reading
                        // on it would only cost an EAGAIN.
                        if event.is_readable() || event.is_read_closed() || event.is_error() {
                            socket.drained = false;
                        }
                        socket.peer_closed |= event.is_read_closed();
                        events.push(Event::Ready(slot));
                    }
                }
            }
        }
        if self.accepting {
            self.accept(accept_room, events);
        }
        Ok(())
    }

    fn open(&mut self, slot: usize, fd: OwnedFd) -> io::Result<()> {
        let mut stream = TcpStream::from_std(std::net::TcpStream::from(fd));
        self.poll.registry().register(
            &mut stream,
            Token(slot),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        if self.sockets.len() <= slot {
            self.sockets.resize_with(slot + 1, || None);
        }
        // Registering reports input that is already there as an event, so
        // a new socket needs no read before its first one.
        self.sockets[slot] = Some(Socket {
            stream,
            drained: true,
            peer_closed: false,
        });
        Ok(())
    }

    fn outgoing(&mut self, _: ()) -> Outgoing {
        unreachable!("epoll writes in push and never reports sends");
    }

    fn copy_received(&mut self, _: (), _: usize, _: &mut [u8]) {
        unreachable!("epoll reads in pull and never reports received buffers");
    }

    fn pull(&mut self, slot: usize, conn: &mut Conn, now: Instant) -> Result<usize, ConnError> {
        let socket = self.socket(slot);
        let mut total = 0;
        while !socket.drained && conn.wants_input() {
            let space = conn.input_space();
            if space.is_empty() {
                break;
            }
            let offered = space.len();
            match socket.stream.read(space) {
                Ok(0) => {
                    conn.on_eof();
                    socket.drained = true;
                }
                Ok(n) => {
                    conn.on_input(n, now);
                    total += n;
                    socket.drained = n < offered && !socket.peer_closed;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => socket.drained = true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(total)
    }

    fn push(&mut self, slot: usize, conn: &mut Conn, now: Instant) -> Result<usize, ConnError> {
        let stream = &mut self.socket(slot).stream;
        let mut total = 0;
        while let Some(outgoing) = conn.take_output()? {
            let result = loop {
                let written = match outgoing.contiguous() {
                    Some(bytes) => stream.write(bytes),
                    None => {
                        let mut iov = [IoSlice::new(&[]); IOVECS_MAX];
                        let count = outgoing.slices(&mut iov);
                        stream.write_vectored(&iov[..count])
                    }
                };
                match written {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    other => break other,
                }
            };
            let len = outgoing.len();
            match result {
                Ok(n) => {
                    conn.output_done(outgoing, n, now);
                    total += n;
                    if n < len {
                        break;
                    }
                }
                Err(e) => {
                    conn.output_done(outgoing, 0, now);
                    if e.kind() == io::ErrorKind::WouldBlock {
                        break;
                    }
                    return Err(e.into());
                }
            }
        }
        Ok(total)
    }

    fn arm(&mut self, _: usize, _: &mut Conn) {}

    fn shutdown_write(&mut self, slot: usize) -> io::Result<()> {
        self.socket(slot).stream.shutdown(std::net::Shutdown::Write)
    }

    fn input_drained(&self, slot: usize) -> bool {
        self.sockets
            .get(slot)
            .and_then(Option::as_ref)
            .is_some_and(|s| s.drained)
    }

    fn last_words(&mut self, slot: usize, conn: &mut Conn, now: Instant) {
        let _ = self.push(slot, conn, now);
    }

    fn close(&mut self, slot: usize) -> Closed {
        // Closing the only descriptor of a socket takes it out of the epoll
        // set: no EPOLL_CTL_DEL first.
        drop(self.sockets.get_mut(slot).and_then(Option::take));
        Closed::Now
    }

    fn set_accepting(&mut self, on: bool) {
        self.accepting = on;
        if on {
            // Edge-triggered: clients that arrived while paused raise no
            // new event; look at every listener.
            for l in &mut self.listeners {
                l.ready = true;
            }
        }
    }

    fn stop_listening(&mut self) {
        for l in &mut self.listeners {
            let _ = self.poll.registry().deregister(&mut l.socket);
        }
        self.listeners.clear();
        self.accepting = false;
    }

    fn listeners_closed(&self) -> bool {
        self.listeners.is_empty()
    }

    fn exit(self) {}
}
