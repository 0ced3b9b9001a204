//! loadtest: a POP3 load generator that speaks POP3 over TCP to any server
//! (shardpop, Dovecot, …) and never links a server's code.
//!
//! ```text
//!  cli (main.rs) ─► engine::run ─► T threads, each a mio loop
//!                                   │  Conn = TcpStream + carry buffer
//!                                   ▼
//!                                   │  (+ tls::TlsConn: rustls client, --tls / --stls)
//!                            session::Session (sans-IO script per scenario)
//!                             │ status lines: reply      │ bodies: unstuff ─► verify::BodyCheck
//!                             │                          │   expected bytes: corpus (UIDL → file)
//!                             ▼                          ▼
//!                       stats::Stats (HDR histograms) ─► Report (JSON line), plot (SVG)
//! ```
//!
//! Layers: `reply`, `unstuff`, `template`, `verify` and `session` do no I/O and
//! are tested from bytes; `corpus` reads the Maildir; `engine` moves bytes.
#![forbid(unsafe_code)]

pub mod corpus;
pub mod engine;
pub mod loopback;
pub mod plot;
pub mod reply;
pub mod session;
pub mod stats;
pub mod template;
pub mod tls;
pub mod unstuff;
pub mod verify;
