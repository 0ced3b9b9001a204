//! POP3 itself, sans-IO: the command parser, the session state machine, reply
//! text and CAPA. This layer touches no socket, file, thread or clock; it
//! takes bytes and completions and gives replies and effects, so every RFC
//! rule is tested here without a socket. It imports nothing from `engine`,
//! `store` or `tls`.
#![forbid(unsafe_code)]

pub mod capa;
pub mod command;
pub mod proxy;
pub mod reply;
pub mod session;

pub use capa::{Expire, Offer, SitePolicy};
pub use command::{Command, ErrorKind, ParseError, Status, parse};
pub use session::{
    BodyError, Completion, Credential, Effect, Limits, LoginFailure, Maildrop, Session, Step,
    Summary, Update,
};
