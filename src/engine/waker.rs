//! How the worker pool and the signal thread wake a shard. Each backend
//! brings its own wake primitive (a mio `Waker` on epoll, an eventfd the
//! ring keeps a read on for io_uring) behind this one trait, so nothing
//! outside a backend names either. Both coalesce: many wakes before the
//! shard looks count as one.
#![forbid(unsafe_code)]

use std::io;

/// Wakes one shard's event loop from another thread.
pub trait Wake: Send + Sync {
    /// Makes the shard's wait return (soon, if it is not waiting now).
    fn wake(&self) -> io::Result<()>;
}

/// A shared handle to a shard's wake primitive.
pub type Waker = std::sync::Arc<dyn Wake>;
