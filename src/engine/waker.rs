//! How the worker pool and the signal thread wake a shard: a mio `Waker` for
//! the epoll shard, an eventfd that the ring reads for the io_uring shard.
//! Both coalesce: many wakes before the shard looks count as one.
#![forbid(unsafe_code)]

use std::io;

use super::uring::EventFd;

/// Wakes one shard's event loop from another thread.
pub enum Waker {
    /// The epoll shard's mio waker (itself an eventfd registered with epoll).
    Mio(mio::Waker),
    /// The io_uring shard's eventfd; the shard keeps a read of it in flight.
    Uring(EventFd),
}

impl Waker {
    /// Makes the shard's wait return (soon, if it is not waiting now).
    pub fn wake(&self) -> io::Result<()> {
        match self {
            Waker::Mio(w) => w.wake(),
            Waker::Uring(fd) => fd.wake(),
        }
    }
}
