//! The io_uring backend: one ring per shard, moving bytes for the shard
//! core under the `engine::backend` contract, with no protocol logic or
//! policy of its own.
//!
//! - `backend.rs`: the completion pump (multishot accept, recv, send/sendmsg,
//!   close, the waker's read; completions become the core's events;
//!   shutdown(2) called directly, see `inflight::Socket`).
//! - `ops.rs`: the ring and every SQE the backend pushes, each with the
//!   `// SAFETY:` that names the owner of what the kernel touches.
//! - `inflight.rs`: the owners, keyed by `user_data`, until the completion
//!   (no I/O; unit-tested).
//! - `bufring.rs`: the provided-buffer ring recvs draw from.
//! - `probe.rs`: can this kernel and process use io_uring as we do?
//! - `sys.rs`: the eventfd waker and the few raw calls.
//!
//! Buffer ownership, in one line each: a recv buffer is the kernel's from
//! its publication in the buffer ring until a completion names it, and ours
//! until we publish it again (its bytes are copied into `Conn::input_space`
//! in between); a send's bytes (`Outgoing`: owned replies plus an
//! `Arc<MessageMap>` for raw body ranges) and its iovec/msghdr live boxed in
//! the in-flight table until the send's completion; a descriptor is closed
//! only when no operation names it. See docs/architecture.md.
#![allow(unsafe_code)]

mod backend;
mod bufring;
mod inflight;
mod ops;
mod probe;
mod sys;

pub use backend::Uring;
pub use probe::{FORCE_FAIL_ENV, Refused, probe};
