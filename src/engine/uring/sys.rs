//! The few raw system calls the io_uring backend makes outside the ring:
//! the eventfd that wakes a shard, and adopting a descriptor the kernel
//! returned in a completion. Every libc call goes through [`syscall!`].

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Calls a libc function, turning `-1` into `io::Error::last_os_error()`.
macro_rules! syscall {
    ($fn:ident ( $($arg:expr),* $(,)? )) => {{
        // SAFETY: the caller of the macro states why the arguments are valid
        // for this call; the macro only checks the return value.
        let res = unsafe { libc::$fn($($arg),*) };
        if res == -1 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(res)
        }
    }};
}
pub(crate) use syscall;

/// An eventfd: other threads `wake` it, the shard's ring keeps an 8-byte
/// read of it in flight and so returns from its wait.
#[derive(Debug)]
pub struct EventFd {
    file: File,
}

impl EventFd {
    /// A new non-blocking, close-on-exec eventfd with a zero count.
    pub fn new() -> io::Result<EventFd> {
        // eventfd(2) takes no pointers; the flags are valid constants.
        let fd = syscall!(eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK))?;
        Ok(EventFd {
            // SAFETY: eventfd(2) returned a new descriptor that nothing else
            // owns; the File closes it exactly once.
            file: File::from(unsafe { OwnedFd::from_raw_fd(fd) }),
        })
    }

    /// Adds one to the count, which completes the shard's pending read.
    pub fn wake(&self) -> io::Result<()> {
        match (&self.file).write(&1u64.to_ne_bytes()) {
            Ok(_) => Ok(()),
            // The count is at its maximum: the shard is already woken.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The descriptor, for the ring's read. Valid while `self` lives.
    pub fn raw(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

impl crate::engine::waker::Wake for EventFd {
    fn wake(&self) -> io::Result<()> {
        EventFd::wake(self)
    }
}

/// Takes ownership of a descriptor that a completion returned (an accepted
/// connection).
///
/// # Safety
///
/// `fd` must be a descriptor the kernel has just created for this process
/// (a non-negative accept result) and that nothing else owns or will close.
pub unsafe fn adopt_fd(fd: RawFd) -> OwnedFd {
    assert!(fd >= 0, "adopting an error code as a descriptor");
    // SAFETY: by this function's contract the descriptor is new and unowned.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn wakes_coalesce_into_one_count() {
        let fd = EventFd::new().unwrap();
        fd.wake().unwrap();
        fd.wake().unwrap();
        let mut buf = [0u8; 8];
        (&fd.file).read_exact(&mut buf).unwrap();
        assert_eq!(u64::from_ne_bytes(buf), 2);
        let again = (&fd.file).read(&mut buf).unwrap_err();
        assert_eq!(again.kind(), io::ErrorKind::WouldBlock);
    }
}
