//! The mail store: Maildir scanning, message order, sizes, UIDLs, memory maps,
//! mailbox locks and deletions at QUIT. It knows nothing of sockets.
//!
//! Snapshot semantics: a session sees the mailbox as it was at login; mail
//! delivered later shows up in the next session. Every function here that
//! touches the disk is blocking and runs on the worker pool, except
//! [`body::MessageMap::open`], which the shard calls for RETR (an open and an
//! mmap of a file whose directory the login scan just read).

pub mod body;
pub mod commit;
pub mod location;
pub mod lock;
pub mod maildir;
pub mod uidlist;

use std::io;
use std::path::Path;
use std::sync::Arc;

pub use location::{LocationError, MailLocation};
pub use lock::{LockError, MailboxLock};
pub use maildir::{Message, Snapshot};
pub use uidlist::UidlFormat;

/// A mailbox held by one session: its snapshot and its lock.
#[derive(Debug)]
pub struct Mailbox {
    /// What the session sees (shared with the protocol layer as its maildrop).
    pub snapshot: Arc<Snapshot>,
    _lock: MailboxLock,
}

/// Why a mailbox could not be opened.
#[derive(Debug)]
pub enum OpenError {
    /// Another session holds it: `-ERR [IN-USE]`.
    InUse,
    /// The disk said no: `-ERR [SYS/TEMP]`, cause logged.
    Io(io::Error),
}

impl Mailbox {
    /// Creates the Maildir if needed, locks it, then takes the snapshot.
    pub fn open(dir: &Path, format: &UidlFormat) -> Result<Mailbox, OpenError> {
        maildir::create(dir).map_err(OpenError::Io)?;
        let lock = MailboxLock::acquire(dir).map_err(|e| match e {
            LockError::InUse => OpenError::InUse,
            LockError::Io(e) => OpenError::Io(e),
        })?;
        let snapshot = maildir::scan(dir, format).map_err(OpenError::Io)?;
        Ok(Mailbox {
            snapshot: Arc::new(snapshot),
            _lock: lock,
        })
    }
}
