//! Moving users from another POP3 server: `shardpop migrate verify` proves,
//! before the switch, that every client will see the same messages, sizes
//! and UIDLs on shardpop as on the old server (see docs/migration.md).
//! Reading the old servers' UIDL files is the store's job
//! ([`crate::store::uidlist`], [`crate::store::courier`]).
//!
//! - [`client`]: a blocking, bounded POP3 client (plaintext, implicit TLS,
//!   STLS) that never deletes.
//! - [`verify`]: the comparison, the report, the state file for resuming.
#![forbid(unsafe_code)]

pub mod client;
pub mod verify;
