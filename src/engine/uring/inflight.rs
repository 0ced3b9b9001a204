//! The in-flight table: everything the kernel may still read, write or use
//! for a submitted operation, owned here and keyed by the operation's
//! `user_data` until its last completion arrives. This module does no I/O
//! and holds no raw pointers, so its rules are tested without a ring.
//!
//! - [`Table`] owns each operation's memory ([`Op`]): the send payload
//!   (the connection's `Outgoing` plus the iovec/msghdr the kernel reads),
//!   the waker's 8-byte read buffer. Entries may move inside the table when
//!   it grows; what the kernel points at is behind a `Box` or an `Arc`, so
//!   it never moves. An entry leaves only through [`Table::remove`], called
//!   for an operation's final completion.
//! - [`Socket`] is one connection's descriptor and the operations using it.
//!   Closing a connection cancels those operations and parks the descriptor;
//!   [`Socket::release`] gives it up (to be closed) only once no operation
//!   that names it is left, so a descriptor number is never reused while an
//!   operation could still act on it.
//!
//! `user_data` = generation (high 32 bits) | slab key (low 32 bits): a key is
//! reused after its operation completes, the generation is not, so an
//! `AsyncCancel` aimed at a finished operation cannot hit its successor.
#![forbid(unsafe_code)]

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

use slab::Slab;

/// The key of a submitted operation, carried by its SQE and CQEs.
pub type UserData = u64;

/// One submitted operation and what it owns while the kernel holds it.
#[derive(Debug)]
pub enum Op<S> {
    /// Multishot accept on the shard's listener `listener` (the listener is
    /// kept open by the shard until this op's final completion).
    Accept {
        /// Index into the shard's listeners.
        listener: usize,
    },
    /// A recv for connection `slot` into a buffer the kernel picks from the
    /// shard's provided-buffer ring (the `BufRing` owns the memory).
    Recv {
        /// The connection's slab key.
        slot: usize,
    },
    /// A send for `slot`; the kernel reads `buf` until the completion.
    Send {
        /// The connection's slab key.
        slot: usize,
        /// The bytes and the iovec/msghdr describing them.
        buf: S,
    },
    /// close(2) of a released descriptor (the kernel owns the fd now).
    Close,
    /// An AsyncCancel aimed at another operation.
    Cancel,
    /// A read of the shard's eventfd into `buf`.
    Wake {
        /// The kernel writes the eventfd count here.
        buf: Box<[u8; 8]>,
    },
}

/// The shard's operations in flight.
#[derive(Debug)]
pub struct Table<S> {
    /// (generation, op) by slab key.
    ops: Slab<(u32, Op<S>)>,
    generation: u32,
}

impl<S> Default for Table<S> {
    fn default() -> Self {
        Table {
            ops: Slab::new(),
            generation: 0,
        }
    }
}

impl<S> Table<S> {
    /// Takes ownership of `op` before its SQE is pushed; returns its key.
    pub fn insert(&mut self, op: Op<S>) -> UserData {
        self.generation = self.generation.wrapping_add(1);
        let key = self.ops.insert((self.generation, op));
        assert!(
            key <= u32::MAX as usize,
            "more than 2^32 operations in flight"
        );
        (u64::from(self.generation) << 32) | key as u64
    }

    /// The operation `user_data` names, if it is still in flight.
    pub fn get(&self, user_data: UserData) -> Option<&Op<S>> {
        let (key, generation) = split(user_data);
        match self.ops.get(key) {
            Some((g, op)) if *g == generation => Some(op),
            _ => None,
        }
    }

    /// Mutable access, for pointing an SQE into what the op owns.
    pub fn get_mut(&mut self, user_data: UserData) -> Option<&mut Op<S>> {
        let (key, generation) = split(user_data);
        match self.ops.get_mut(key) {
            Some((g, op)) if *g == generation => Some(op),
            _ => None,
        }
    }

    /// The final completion of `user_data` arrived: the kernel is done with
    /// what the op owns, which goes back to the caller.
    pub fn remove(&mut self, user_data: UserData) -> Op<S> {
        let (key, generation) = split(user_data);
        match self.ops.get(key) {
            Some((g, _)) if *g == generation => self.ops.remove(key).1,
            _ => panic!("completion for an operation not in flight: {user_data:#x}"),
        }
    }

    /// Operations in flight.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// True when the kernel holds nothing of ours.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Every operation in flight (for cancelling all of them at exit).
    pub fn keys(&self) -> impl Iterator<Item = UserData> + '_ {
        self.ops
            .iter()
            .map(|(key, (g, _))| (u64::from(*g) << 32) | key as u64)
    }
}

fn split(user_data: UserData) -> (usize, u32) {
    ((user_data & 0xffff_ffff) as usize, (user_data >> 32) as u32)
}

/// Which of a connection's operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Its recv.
    Recv,
    /// Its send.
    Send,
}

/// One connection's descriptor and its operations in flight (at most one
/// of each kind: the `Conn` hands out one `Outgoing` at a time, and one
/// recv at a time keeps input in order). shutdown(2) is a direct call, not
/// an op: IORING_OP_SHUTDOWN always runs on an io-wq thread, which costs a
/// context switch per session for a call that never blocks.
#[derive(Debug)]
pub struct Socket {
    /// `None` once released for closing.
    fd: Option<OwnedFd>,
    recv: Option<UserData>,
    send: Option<UserData>,
    closing: bool,
}

impl Socket {
    /// A freshly accepted connection.
    pub fn new(fd: OwnedFd) -> Socket {
        Socket {
            fd: Some(fd),
            recv: None,
            send: None,
            closing: false,
        }
    }

    /// The descriptor for a new SQE. Panics once the connection is closing:
    /// nothing new may be submitted on a parked descriptor.
    pub fn raw(&self) -> RawFd {
        self.fd().as_raw_fd()
    }

    /// The descriptor, for a direct call (getpeername, shutdown). Panics
    /// once the connection is closing, as [`Socket::raw`] does.
    pub fn fd(&self) -> BorrowedFd<'_> {
        assert!(!self.closing, "new operation on a closing connection");
        self.fd.as_ref().expect("descriptor present").as_fd()
    }

    fn field(&mut self, kind: Kind) -> &mut Option<UserData> {
        match kind {
            Kind::Recv => &mut self.recv,
            Kind::Send => &mut self.send,
        }
    }

    /// True while an operation of `kind` is in flight.
    pub fn in_flight(&self, kind: Kind) -> bool {
        match kind {
            Kind::Recv => self.recv.is_some(),
            Kind::Send => self.send.is_some(),
        }
    }

    /// An operation of `kind` was submitted as `user_data`.
    pub fn started(&mut self, kind: Kind, user_data: UserData) {
        assert!(!self.closing, "new operation on a closing connection");
        let slot = self.field(kind);
        assert!(slot.is_none(), "two {kind:?} operations in flight");
        *slot = Some(user_data);
    }

    /// The final completion of the `kind` operation arrived.
    pub fn finished(&mut self, kind: Kind) {
        let slot = self.field(kind);
        assert!(slot.is_some(), "{kind:?} completion with none in flight");
        *slot = None;
    }

    /// True once [`Socket::close`] was called.
    pub fn is_closing(&self) -> bool {
        self.closing
    }

    /// The connection is gone: returns the operations to cancel. The
    /// descriptor stays parked until they complete.
    pub fn close(&mut self) -> Vec<UserData> {
        self.closing = true;
        [self.recv, self.send].into_iter().flatten().collect()
    }

    /// The descriptor, once the connection is closing and no operation
    /// names it; `Some` exactly once.
    pub fn release(&mut self) -> Option<OwnedFd> {
        let idle = self.recv.is_none() && self.send.is_none();
        if self.closing && idle {
            self.fd.take()
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::rc::Rc;

    fn fd() -> OwnedFd {
        OwnedFd::from(std::fs::File::open("/dev/null").unwrap())
    }

    #[test]
    fn a_send_payload_lives_until_its_completion_removes_it() {
        let payload = Rc::new(());
        let mut t: Table<Rc<()>> = Table::default();
        let ud = t.insert(Op::Send {
            slot: 3,
            buf: Rc::clone(&payload),
        });
        assert_eq!(Rc::strong_count(&payload), 2, "the table holds it");
        assert!(matches!(t.get(ud), Some(Op::Send { slot: 3, .. })));
        match t.remove(ud) {
            Op::Send { buf, .. } => drop(buf),
            other => panic!("{other:?}"),
        }
        assert_eq!(Rc::strong_count(&payload), 1);
        assert!(t.is_empty());
    }

    #[test]
    fn a_reused_key_gets_a_new_user_data() {
        let mut t: Table<()> = Table::default();
        let first = t.insert(Op::Recv { slot: 1 });
        t.remove(first);
        let second = t.insert(Op::Recv { slot: 2 });
        assert_eq!(first & 0xffff_ffff, second & 0xffff_ffff, "same slab key");
        assert_ne!(first, second);
        assert!(t.get(first).is_none(), "a stale user_data finds nothing");
        assert!(matches!(t.get(second), Some(Op::Recv { slot: 2 })));
        assert_eq!(t.keys().collect::<Vec<_>>(), vec![second]);
    }

    #[test]
    #[should_panic(expected = "not in flight")]
    fn a_completion_for_an_unknown_operation_is_a_broken_invariant() {
        let mut t: Table<()> = Table::default();
        let ud = t.insert(Op::Cancel);
        t.remove(ud);
        t.remove(ud);
    }

    #[test]
    fn the_wake_buffer_does_not_move_when_the_table_grows() {
        let mut t: Table<()> = Table::default();
        let ud = t.insert(Op::Wake {
            buf: Box::new([0; 8]),
        });
        let before = match t.get(ud) {
            Some(Op::Wake { buf }) => buf.as_ptr(),
            _ => unreachable!(),
        };
        for slot in 0..1000 {
            t.insert(Op::Recv { slot });
        }
        let after = match t.get(ud) {
            Some(Op::Wake { buf }) => buf.as_ptr(),
            _ => unreachable!(),
        };
        assert_eq!(before, after);
    }

    #[test]
    fn closing_with_ops_in_flight_cancels_them_and_parks_the_fd() {
        let mut s = Socket::new(fd());
        s.started(Kind::Recv, 10);
        s.started(Kind::Send, 11);
        assert!(s.release().is_none(), "an open connection keeps its fd");
        let mut cancel = s.close();
        cancel.sort();
        assert_eq!(cancel, vec![10, 11]);
        assert!(s.is_closing());
        assert!(s.release().is_none(), "recv and send still name the fd");
        s.finished(Kind::Recv);
        assert!(s.release().is_none(), "the send still names the fd");
        s.finished(Kind::Send);
        assert!(s.release().is_some());
        assert!(s.release().is_none(), "released exactly once");
    }

    #[test]
    fn closing_an_idle_connection_releases_at_once() {
        let mut s = Socket::new(fd());
        assert!(s.close().is_empty());
        assert!(s.release().is_some());
    }

    #[test]
    #[should_panic(expected = "closing connection")]
    fn nothing_new_is_submitted_on_a_parked_fd() {
        let mut s = Socket::new(fd());
        s.started(Kind::Send, 1);
        s.close();
        s.started(Kind::Recv, 2);
    }

    #[test]
    #[should_panic(expected = "two Send operations")]
    fn one_send_at_a_time() {
        let mut s = Socket::new(fd());
        s.started(Kind::Send, 1);
        s.started(Kind::Send, 2);
    }
}
