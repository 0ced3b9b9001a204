//! SASL mechanisms (RFC 4422) as sans-IO state machines, one file per
//! mechanism. A mechanism takes the client's decoded messages and gives the
//! server's messages back; it never reads the passdb, a socket or a clock,
//! and takes its randomness from the caller. The blocking part (looking the
//! user's credentials up, PBKDF2 for plaintext passwords) is
//! [`Passdb::scram_credentials`](super::Passdb::scram_credentials), which runs
//! on the worker pool; the steps here are a few HMACs and may run anywhere.
//!
//! Framing is not here: base64 over POP3 `AUTH` (RFC 5034), `*` to cancel
//! and the final `+OK` belong to `protocol::Session`. SASL PLAIN needs no
//! state machine and is parsed there; nor do OAUTHBEARER and XOAUTH2, whose
//! one client message is parsed by [`oauth`] for the session, and whose token
//! the pool checks ([`crate::auth::Passdb::verify_bearer`]).

mod exchange;
pub mod oauth;
mod scram;

pub use exchange::{ScramExchange, ScramNext};
pub use oauth::{BearerError, BearerMechanism, BearerResponse};
pub use scram::{SERVER_NONCE_BYTES_MIN, ScramCredentials, ScramError, ScramServer};
