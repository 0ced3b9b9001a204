//! auth: who may log in. Owns the passdb (Dovecot's passwd-file format,
//! PostgreSQL, MySQL / MariaDB, LDAP) and the userdb behind one [`Passdb`],
//! the auth cache in front of the databases, the password schemes, APOP, the
//! SASL mechanisms that need state (SCRAM-SHA-256, in [`sasl`]), and the
//! user-name check.
//!
//! Everything here that hashes, reads the passwd-file or asks a database is
//! blocking work: it runs on the worker pool, never on a shard thread. The
//! one exception is [`Passdb::has_plaintext`], a lock-free flag read the
//! shard may use when it writes the greeting. This layer must not know about
//! sockets, sessions or Maildir: it answers "is this the user, and what does
//! the user database say about them" and nothing else.
//!
//! Layout: `db.rs` is [`Passdb`], the dispatch; `passdb.rs` the passwd-file
//! passdb; `remote.rs` the SQL/LDAP passdb over `sql.rs` and `ldap.rs`, with
//! `pool.rs` (connections, failover, backoff) and `cache.rs`;
//! `static_userdb.rs` the userdbs; `template.rs` the %-variables.
//!
//! The contract with the engine:
//! - [`Passdb::from_config`] at startup (or [`Passdb::open`] for a bare
//!   passwd-file); a missing or unreadable file is an error, a database
//!   that is down is not (it is asked on the first login).
//! - [`Passdb::flush`] on SIGHUP: empties the SQL/LDAP cache.
//! - [`Passdb::verify_plain`] / [`Passdb::verify_apop`] on the pool. Unknown
//!   user and wrong password give the same `Ok(None)` at the same cost, so
//!   the timing of a failed login does not tell which one it was.
//! - SCRAM-SHA-256: [`ScramServer::client_first`] on the client's first
//!   message gives the user name; [`Passdb::scram_credentials`] on the pool
//!   gives the credentials (made-up ones for unknown users);
//!   [`ScramServer::server_first`] and [`ScramServer::client_final`] finish
//!   the exchange, and [`ScramServer::user`] is the user on success.
//! - OAUTHBEARER / XOAUTH2: [`Passdb::verify_bearer`] on the pool checks the
//!   token against the `[auth.oauth]` JWKS (loaded by [`Passdb::from_config`],
//!   so a SIGHUP that rebuilds the passdb reloads the keys, and a bad file
//!   refuses the reload) and then looks the user up like a password login.
//! - `Err` means an operating error (the passwd-file could not be re-read,
//!   a database is down or slow: [`AuthError::Unavailable`]): answer
//!   `-ERR [SYS/TEMP]`, no penalty. `Unavailable` is logged here once per
//!   outage ([`AuthError::logged`]); the engine need not log it per login.
//! - On success, [`UserEntry`] carries the home and the extra fields
//!   (`userdb_mail`, ...). The passdb does not see the peer address, so the
//!   engine must check [`UserEntry::allows_peer`] (Dovecot's `allow_nets`).

#![forbid(unsafe_code)]

mod apop;
mod cache;
mod db;
mod ldap;
pub mod oauth;
mod passdb;
mod passwd_file;
mod pool;
mod remote;
pub mod sasl;
pub mod saslprep;
mod scheme;
mod sql;
mod static_userdb;
mod template;
#[cfg(test)]
pub(crate) mod test_fixture;
mod user;
mod username;

use std::fmt;
use std::io;
use std::path::PathBuf;

pub use db::{Passdb, check_passdb_config, check_userdb_config};
pub use oauth::OAuth;
pub use passdb::SCRAM_PLAIN_ITERATIONS;
#[doc(hidden)]
pub use remote::fuzz_userdb_row;
pub use sasl::{ScramCredentials, ScramError, ScramExchange, ScramNext, ScramServer};
pub use scheme::{Scheme, hash_password};
pub use user::UserEntry;
pub use username::valid_username;

/// Why the auth layer could not answer. Bad credentials are never an error:
/// they are `Ok(None)`.
#[derive(Debug)]
pub enum AuthError {
    /// The passwd-file could not be opened, stat'ed or read. At startup this
    /// is fatal; after startup the last good copy is kept in memory and the
    /// file is retried on the next check, but lookups fail until then.
    Io {
        /// The passwd-file.
        path: PathBuf,
        /// What the operating system said.
        source: io::Error,
    },
    /// The passwd-file is larger than [`PASSWD_FILE_BYTES_MAX`]; it is
    /// refused whole rather than read into memory.
    TooLarge {
        /// The passwd-file.
        path: PathBuf,
        /// Its size when it was checked.
        bytes: u64,
    },
    /// A scheme name that Dovecot does not define, or that this server does
    /// not implement (for `Scheme::from_str`).
    UnknownScheme {
        /// The name as given.
        name: String,
    },
    /// A SQL or LDAP database is down, slow, out of connections, or refused
    /// the query. Temporary: the engine answers `-ERR [SYS/TEMP]` and adds
    /// no penalty. The auth layer has logged it (once per outage).
    Unavailable {
        /// Which database (`pgsql passdb`, `ldap userdb`, ...).
        database: String,
        /// What went wrong, for the log.
        why: String,
    },
    /// The `[passdb]` / `[userdb]` settings cannot work (at startup).
    Config {
        /// What is wrong.
        why: String,
    },
}

impl AuthError {
    /// Whether the auth layer has already logged this error (once per
    /// outage), so the caller should not log it per login.
    pub fn logged(&self) -> bool {
        matches!(self, AuthError::Unavailable { .. })
    }
}

impl fmt::Display for AuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuthError::Io { path, source } => {
                write!(f, "passwd-file {}: {source}", path.display())
            }
            AuthError::TooLarge { path, bytes } => write!(
                f,
                "passwd-file {}: {bytes} bytes is more than the limit of {PASSWD_FILE_BYTES_MAX}",
                path.display()
            ),
            AuthError::UnknownScheme { name } => write!(f, "unknown password scheme {name:?}"),
            AuthError::Unavailable { database, why } => {
                write!(f, "user database {database} unavailable: {why}")
            }
            AuthError::Config { why } => f.write_str(why),
        }
    }
}

impl std::error::Error for AuthError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            AuthError::Io { source, .. } => Some(source),
            AuthError::TooLarge { .. }
            | AuthError::UnknownScheme { .. }
            | AuthError::Unavailable { .. }
            | AuthError::Config { .. } => None,
        }
    }
}

/// The largest passwd-file we read: about ten million users with long
/// hashes and extra fields. A bigger file is a mistake, not a passdb.
pub const PASSWD_FILE_BYTES_MAX: u64 = 2 << 30;

/// The longest password we hash. SHA-crypt costs grow with the square of the
/// password length, so an unbounded password is a denial of service; no
/// POP3 client sends a kilobyte of password.
pub const PASSWORD_BYTES_MAX: usize = 1024;
