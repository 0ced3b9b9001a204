//! The ring and every operation the io_uring backend submits. This is the
//! only file that pushes SQEs: each push names, in its `// SAFETY:` comment,
//! who owns what the kernel will touch until the completion, and the owner
//! is put in the in-flight table (or is the shard itself) before the push.
//!
//! Setup: SINGLE_ISSUER | DEFER_TASKRUN (the shard thread is the only one
//! that submits, and completions are run only when it waits, so no IPI
//! interrupts it), a CQ four times the SQ, and a backlog for when the SQ is
//! full, so pushing never fails and order is kept.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::os::fd::{IntoRawFd, OwnedFd, RawFd};
use std::time::Duration;

use io_uring::types::{Fd, SubmitArgs, Timespec};
use io_uring::{IoUring, cqueue, opcode, squeue};

use super::bufring::BufRing;
use super::inflight::{Kind, Op, Socket, Table, UserData};
use crate::engine::body::IOVECS_MAX;
use crate::engine::conn::Outgoing;

/// SQ entries per shard (the CQ gets four times as many).
pub const SQ_ENTRIES: u32 = 1024;
/// Receive buffers in the shard's provided-buffer ring. A buffer is held only
/// from the kernel filling it until its bytes are copied into the connection,
/// within one loop turn, so this bounds the receives completing in one turn,
/// not the connections; running out is ENOBUFS and a re-armed recv. 256 × 4 KiB
/// is 1 MiB per shard (1024 made idle memory look like 16 KiB a connection at
/// 1,000 connections on two shards).
pub const RECV_BUFFERS: u16 = 256;
/// Bytes per receive buffer: a recv takes at most this much, and never more
/// than the connection's free input space.
pub const RECV_BUFFER_BYTES: usize = 4096;
/// The buffer group id of the receive buffers.
const BGID: u16 = 0;
/// Send buffers kept for reuse.
const SPARE_SENDS_MAX: usize = 256;

/// The ring flags every shard uses; the probe builds a ring with the same.
pub fn builder() -> io_uring::Builder {
    let mut b = IoUring::builder();
    b.setup_single_issuer()
        .setup_defer_taskrun()
        .setup_cqsize(SQ_ENTRIES * 4)
        .setup_submit_all();
    b
}

/// What a send owns while the kernel reads it.
pub struct SendBuf {
    /// INVARIANT: while this is in the in-flight table, `iov[..count]` and
    /// `msg` point into `outgoing` (its `Vec`'s heap and its raw plan's
    /// mmap, which its `Arc<MessageMap>` keeps mapped), and `outgoing` is
    /// neither changed nor dropped until the completion.
    outgoing: Option<Outgoing>,
    iov: [libc::iovec; IOVECS_MAX],
    msg: libc::msghdr,
}

impl SendBuf {
    fn new() -> Box<SendBuf> {
        Box::new(SendBuf {
            outgoing: None,
            iov: [libc::iovec {
                iov_base: std::ptr::null_mut(),
                iov_len: 0,
            }; IOVECS_MAX],
            // SAFETY: msghdr is plain data (pointers and integers); all
            // zeroes is a valid, empty message header.
            msg: unsafe { std::mem::zeroed() },
        })
    }
}

/// EINTR (a signal), EAGAIN or EBUSY (the CQ must be reaped first): the
/// caller reaps and tries again on its next turn.
fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EINTR | libc::EAGAIN | libc::EBUSY)
    )
}

/// One completion, copied out of the CQ.
#[derive(Clone, Copy, Debug)]
pub struct Cqe {
    /// The operation.
    pub user_data: UserData,
    /// Bytes, a descriptor, or `-errno`.
    pub result: i32,
    /// `IORING_CQE_F_*`.
    pub flags: u32,
}

impl Cqe {
    /// More completions follow for this (multishot) operation.
    pub fn more(&self) -> bool {
        cqueue::more(self.flags)
    }

    /// The provided buffer this completion hands back, if any.
    pub fn buffer(&self) -> Option<u16> {
        cqueue::buffer_select(self.flags)
    }

    /// The error, when `result` is negative.
    pub fn error(&self) -> Option<io::Error> {
        (self.result < 0).then(|| io::Error::from_raw_os_error(-self.result))
    }
}

/// A shard's ring, its in-flight table and its receive buffers.
///
/// Field order is drop order: the ring goes first, so the kernel lets go of
/// the table's buffers and the buffer ring before they are freed (and the
/// shard drains the table before dropping anything; see `Io::drain`).
pub struct Io {
    ring: IoUring,
    backlog: VecDeque<squeue::Entry>,
    /// Owners of everything in flight, by `user_data`.
    pub table: Table<Box<SendBuf>>,
    /// Receive buffers the kernel picks from.
    pub bufs: BufRing,
    /// Boxes kept for reuse: the box, not just its contents, is what the
    /// kernel's pointers were taken from, so it is recycled whole.
    #[allow(clippy::vec_box)]
    spare: Vec<Box<SendBuf>>,
}

impl Io {
    /// A ring with its receive buffer group registered.
    pub fn new() -> io::Result<Io> {
        let ring = builder().build(SQ_ENTRIES)?;
        let bufs = BufRing::new(RECV_BUFFERS, RECV_BUFFER_BYTES, BGID)?;
        // SAFETY: `bufs` is a field of the `Io` that also owns `ring`, and
        // `ring` is declared first, so it is dropped (ending the
        // registration) before `bufs` is.
        unsafe { bufs.register(&ring.submitter())? };
        Ok(Io {
            ring,
            backlog: VecDeque::new(),
            table: Table::default(),
            bufs,
            spare: Vec::new(),
        })
    }

    /// Queues `entry` for the next submit, in order.
    ///
    /// # Safety
    ///
    /// Everything `entry` points at (buffers, iovecs, msghdr, descriptors)
    /// must stay valid and unmoved until its final completion is reaped.
    unsafe fn push(&mut self, entry: squeue::Entry) {
        if self.backlog.is_empty() {
            let mut sq = self.ring.submission();
            // SAFETY: forwarded from this function's contract.
            if unsafe { sq.push(&entry) }.is_ok() {
                return;
            }
        }
        self.backlog.push_back(entry);
    }

    /// Moves backlogged entries into the SQ, submitting as it fills.
    fn flush_backlog(&mut self) -> io::Result<()> {
        while !self.backlog.is_empty() {
            {
                let mut sq = self.ring.submission();
                while let Some(entry) = self.backlog.front() {
                    // SAFETY: every backlogged entry was queued by `push`,
                    // whose callers guaranteed its memory until completion.
                    if unsafe { sq.push(entry) }.is_err() {
                        break;
                    }
                    self.backlog.pop_front();
                }
            }
            match self.ring.submit() {
                Ok(_) => {}
                // The CQ is full (EBUSY) or a signal came: reap, then go on
                // flushing on the next turn (`wait` does not sleep then).
                Err(e) if is_transient(&e) => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Submits what is queued and waits for at least one completion, or
    /// until `timeout` (a ring timeout: the wait's EXT_ARG timespec).
    pub fn wait(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        self.flush_backlog()?;
        let timeout = if self.backlog.is_empty() {
            timeout
        } else {
            Some(Duration::ZERO)
        };
        let result = match timeout {
            Some(d) => {
                let ts = Timespec::new().sec(d.as_secs()).nsec(d.subsec_nanos());
                let args = SubmitArgs::new().timespec(&ts);
                self.ring.submitter().submit_with_args(1, &args)
            }
            None => self.ring.submit_and_wait(1),
        };
        match result {
            Ok(_) => Ok(()),
            // ETIME: the timeout passed.
            Err(e) if e.raw_os_error() == Some(libc::ETIME) || is_transient(&e) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Copies every available completion into `out`.
    pub fn reap(&mut self, out: &mut Vec<Cqe>) {
        out.extend(self.ring.completion().map(|c| Cqe {
            user_data: c.user_data(),
            result: c.result(),
            flags: c.flags(),
        }));
    }

    /// A multishot accept on `listener` (descriptor `fd`).
    ///
    /// The listener must stay open until the op's final completion; the
    /// shard keeps it until then.
    pub fn accept(&mut self, listener: usize, fd: RawFd) -> UserData {
        let ud = self.table.insert(Op::Accept { listener });
        let entry = opcode::AcceptMulti::new(Fd(fd))
            .flags(libc::SOCK_CLOEXEC)
            .build()
            .user_data(ud);
        // SAFETY: no memory is referenced (multishot accept returns no
        // address); the listener descriptor is owned by the shard, which
        // closes it only after this op's final completion (`Op::Accept`).
        unsafe { self.push(entry) };
        ud
    }

    /// A recv of at most `len` bytes for connection `slot` into a buffer the
    /// kernel picks from the shard's buffer ring.
    pub fn recv(&mut self, slot: usize, socket: &mut Socket, len: usize) -> UserData {
        let len = len.min(self.bufs.buf_bytes()) as u32;
        let ud = self.table.insert(Op::Recv { slot });
        socket.started(Kind::Recv, ud);
        let entry = opcode::Recv::new(Fd(socket.raw()), std::ptr::null_mut(), len)
            .buf_group(self.bufs.bgid)
            .build()
            .flags(squeue::Flags::BUFFER_SELECT)
            .user_data(ud);
        // SAFETY: the data buffer comes from the buffer ring, owned by
        // `self.bufs` (registered for the ring's life); the kernel hands it
        // back in the completion. The descriptor is owned by `socket`, which
        // parks it until this op completes (`Kind::Recv`).
        unsafe { self.push(entry) };
        ud
    }

    /// A send of `outgoing` for connection `slot`. `flags` adds to
    /// MSG_NOSIGNAL (e.g. MSG_DONTWAIT for a last line before closing).
    pub fn send(&mut self, slot: usize, socket: &mut Socket, outgoing: Outgoing, flags: i32) {
        let mut sb = self.spare.pop().unwrap_or_else(SendBuf::new);
        let count = {
            let mut slices = [IoSlice::new(&[]); IOVECS_MAX];
            let count = outgoing.slices(&mut slices);
            for (iov, s) in sb.iov.iter_mut().zip(&slices[..count]) {
                *iov = libc::iovec {
                    iov_base: s.as_ptr().cast_mut().cast(),
                    iov_len: s.len(),
                };
            }
            count
        };
        assert!(count > 0, "an Outgoing always has bytes");
        sb.outgoing = Some(outgoing);
        sb.msg.msg_iov = sb.iov.as_mut_ptr();
        sb.msg.msg_iovlen = count;
        let flags = libc::MSG_NOSIGNAL | flags;
        let entry = if count == 1 {
            let len = u32::try_from(sb.iov[0].iov_len).expect("a send is bounded");
            opcode::Send::new(Fd(socket.raw()), sb.iov[0].iov_base.cast(), len)
                .flags(flags)
                .build()
        } else {
            opcode::SendMsg::new(Fd(socket.raw()), &sb.msg)
                .flags(flags as u32)
                .build()
        };
        let ud = self.table.insert(Op::Send { slot, buf: sb });
        socket.started(Kind::Send, ud);
        // SAFETY: the bytes, the iovec array and the msghdr all live in (or
        // are kept alive by) the boxed `SendBuf` now owned by the in-flight
        // table under `ud`; a Box's contents do not move when the table
        // does, and the box leaves the table only at this op's completion.
        // The descriptor is owned by `socket` and parked until then.
        unsafe { self.push(entry.user_data(ud)) };
    }

    /// The send's completion arrived: takes its `Outgoing` back and keeps
    /// the box for reuse.
    pub fn send_done(&mut self, mut sb: Box<SendBuf>) -> Outgoing {
        let outgoing = sb.outgoing.take().expect("a send in flight owns its bytes");
        sb.msg.msg_iov = std::ptr::null_mut();
        sb.msg.msg_iovlen = 0;
        if self.spare.len() < SPARE_SENDS_MAX {
            self.spare.push(sb);
        }
        outgoing
    }

    /// Closes a released descriptor through the ring.
    pub fn close(&mut self, fd: OwnedFd) {
        let ud = self.table.insert(Op::Close);
        let entry = opcode::Close::new(Fd(fd.into_raw_fd()))
            .build()
            .user_data(ud);
        // SAFETY: `Socket::release` gave this descriptor up only after every
        // op naming it completed; `into_raw_fd` hands ownership to the
        // kernel, which closes it exactly once. No memory is referenced.
        unsafe { self.push(entry) };
    }

    /// Asks the kernel to cancel `target` (its completion still comes, with
    /// ECANCELED or its real result; the owner stays parked until then).
    pub fn cancel(&mut self, target: UserData) {
        let ud = self.table.insert(Op::Cancel);
        let entry = opcode::AsyncCancel::new(target).build().user_data(ud);
        // SAFETY: a cancel references no memory or descriptor; `target` is a
        // key, and its generation makes a stale key match nothing.
        unsafe { self.push(entry) };
    }

    /// An 8-byte read of the shard's eventfd, into `buf`.
    ///
    /// The eventfd must stay open until the completion: the shard holds its
    /// `Arc<Waker>` until `drain` has emptied the table.
    pub fn wake_read(&mut self, eventfd: RawFd, buf: Box<[u8; 8]>) -> UserData {
        let ud = self.table.insert(Op::Wake { buf });
        let Some(Op::Wake { buf }) = self.table.get_mut(ud) else {
            unreachable!("just inserted");
        };
        let entry = opcode::Read::new(Fd(eventfd), buf.as_mut_ptr(), 8)
            .build()
            .user_data(ud);
        // SAFETY: the kernel writes 8 bytes into the boxed buffer owned by
        // the table under `ud` (a Box's contents do not move with the table);
        // the eventfd is kept open by the shard's `Arc<Waker>`.
        unsafe { self.push(entry) };
        ud
    }

    /// Cancels everything in flight and waits (at most `limit`) for the
    /// completions, handing each to `each`. Returns true when the table is
    /// empty; otherwise the caller must leak the `Io` (`std::mem::forget`),
    /// since the kernel may still use what the table owns.
    pub fn drain(&mut self, limit: Duration, mut each: impl FnMut(&mut Io, Cqe)) -> bool {
        let deadline = std::time::Instant::now() + limit;
        let targets: Vec<UserData> = self.table.keys().collect();
        for target in targets {
            if !matches!(self.table.get(target), Some(Op::Cancel | Op::Close)) {
                self.cancel(target);
            }
        }
        let mut cqes = Vec::new();
        while !self.table.is_empty() {
            let now = std::time::Instant::now();
            if now >= deadline || self.wait(Some(deadline - now)).is_err() {
                return false;
            }
            self.reap(&mut cqes);
            for cqe in cqes.drain(..) {
                each(self, cqe);
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::net::UnixStream;

    /// Waits until `n` completions have arrived (or panics after 5 s).
    fn completions(io: &mut Io, n: usize) -> Vec<Cqe> {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let mut cqes = Vec::new();
        while cqes.len() < n {
            assert!(std::time::Instant::now() < deadline, "{cqes:?}");
            io.wait(Some(Duration::from_millis(100))).unwrap();
            io.reap(&mut cqes);
        }
        cqes
    }

    #[test]
    fn a_recv_draws_a_ring_buffer_and_the_completion_names_it() {
        let mut io = Io::new().unwrap();
        let (a, mut b) = UnixStream::pair().unwrap();
        let mut socket = Socket::new(OwnedFd::from(a));
        let ud = io.recv(5, &mut socket, 100);
        b.write_all(b"USER alice\r\n").unwrap();
        let cqe = completions(&mut io, 1)[0];
        assert_eq!((cqe.user_data, cqe.result), (ud, 12));
        assert!(matches!(io.table.remove(ud), Op::Recv { slot: 5 }));
        socket.finished(Kind::Recv);
        let bid = cqe.buffer().expect("the kernel picked a buffer");
        assert_eq!(io.bufs.get(bid, 12), b"USER alice\r\n");
        io.bufs.recycle(bid);
        assert!(io.table.is_empty());
    }

    #[test]
    fn a_recv_asks_for_no_more_than_the_space_it_was_given() {
        let mut io = Io::new().unwrap();
        let (a, mut b) = UnixStream::pair().unwrap();
        let mut socket = Socket::new(OwnedFd::from(a));
        let ud = io.recv(0, &mut socket, 4);
        b.write_all(b"NOOP\r\nSTAT\r\n").unwrap();
        let cqe = completions(&mut io, 1)[0];
        assert_eq!(cqe.result, 4);
        io.table.remove(ud);
        io.bufs.recycle(cqe.buffer().unwrap());
    }

    #[test]
    fn a_closed_socket_keeps_its_fd_until_the_cancelled_recv_completes() {
        let mut io = Io::new().unwrap();
        let (a, b) = UnixStream::pair().unwrap();
        let mut socket = Socket::new(OwnedFd::from(a));
        let recv = io.recv(9, &mut socket, 64);
        // Nothing to read: the recv waits in the kernel.
        io.wait(Some(Duration::from_millis(20))).unwrap();
        let targets = socket.close();
        assert_eq!(targets, vec![recv]);
        for t in targets {
            io.cancel(t);
        }
        assert!(
            socket.release().is_none(),
            "parked while the recv is in flight"
        );
        let cqes = completions(&mut io, 2);
        let done = cqes.iter().find(|c| c.user_data == recv).unwrap();
        assert_eq!(done.result, -libc::ECANCELED);
        for c in &cqes {
            io.table.remove(c.user_data);
        }
        socket.finished(Kind::Recv);
        let fd = socket.release().expect("released after the completion");
        io.close(fd);
        let closed = completions(&mut io, 1)[0];
        assert_eq!(closed.result, 0);
        io.table.remove(closed.user_data);
        assert!(io.table.is_empty());
        drop(b);
    }

    #[test]
    fn more_entries_than_the_sq_holds_wait_in_the_backlog_in_order() {
        let mut io = Io::new().unwrap();
        let n = 3 * SQ_ENTRIES as usize;
        // Cancels of nothing: each completes at once with ENOENT.
        for _ in 0..n {
            io.cancel(0);
        }
        assert!(!io.backlog.is_empty());
        let cqes = completions(&mut io, n);
        assert!(io.backlog.is_empty());
        assert!(cqes.iter().all(|c| c.result == -libc::ENOENT));
        let order: Vec<UserData> = cqes.iter().map(|c| c.user_data).collect();
        let mut sorted = order.clone();
        sorted.sort_by_key(|ud| ud >> 32);
        assert_eq!(order, sorted, "submitted in the order pushed");
        for c in cqes {
            io.table.remove(c.user_data);
        }
    }

    #[test]
    fn drain_cancels_what_is_left_and_empties_the_table() {
        let mut io = Io::new().unwrap();
        let eventfd = super::super::sys::EventFd::new().unwrap();
        io.wake_read(eventfd.raw(), Box::new([0; 8]));
        let mut seen = 0;
        let drained = io.drain(Duration::from_secs(5), |io, cqe| {
            seen += 1;
            io.table.remove(cqe.user_data);
        });
        assert!(drained);
        assert_eq!(seen, 2, "the read and its cancel");
    }
}
