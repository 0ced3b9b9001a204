//! shardpop: a POP3 server for operators who serve millions of mailboxes.
//!
//! The path of one session:
//!
//! ```text
//!  client ──TCP──► shard N (SO_REUSEPORT listener, one per core)
//!                   │ engine: mio (epoll) or io_uring — only moves bytes
//!                   ▼
//!                  Conn ── recv buffer ──► protocol::parse (zero-copy Command<'_>)
//!                   │                          │
//!                   │                    protocol::Session (sans-IO state machine)
//!                   │                          │ replies ──────────► send buffer
//!                   │                          │ effects (login, body, commit)
//!                   │                          ▼
//!                   │                    worker pool (crossbeam): password hashing,
//!                   │                          │ Maildir scan, unlink on QUIT
//!                   │◄── completion (channel + Waker: mio or eventfd)
//!                   ▼
//!  RETR/TOP: the send side holds a Body over the mmapped file; wire::Stuffer turns
//!            LF→CRLF and dot-stuffs chunk by chunk as the socket drains.
//! ```
//!
//! Layers (see `docs/architecture.md`): [`protocol`] knows POP3 and nothing else;
//! [`wire`] is the body transform; [`store`] is Maildir; [`auth`] is the passdb;
//! [`engine`] moves bytes and runs blocking work on the pool; [`tls`] is rustls
//! as a sans-IO layer between the socket bytes and the session.

pub mod auth;
pub mod config;
pub mod demo;
pub mod engine;
pub mod log_format;
pub mod metrics;
pub mod migrate;
pub mod notify;
pub mod protocol;
pub mod store;
pub mod tls;
pub mod wire;
