//! The mail store: Maildir scanning, message order, sizes, UIDLs, memory maps,
//! mailbox locks and deletions at QUIT. It knows nothing of sockets.
//!
//! Snapshot semantics: a session sees the mailbox as it was at login; mail
//! delivered later shows up in the next session. A login reads the mailbox
//! index ([`index`]) and the directories' identity, not the directories,
//! unless they changed. Every function here that
//! touches the disk is blocking and runs on the worker pool, except
//! [`body::MessageMap::open`], which the shard calls for RETR (an open and an
//! mmap of a file whose directory the login scan just read).

pub mod body;
pub mod commit;
pub mod courier;
pub mod index;
pub mod location;
pub mod lock;
pub mod maildir;
pub mod uidlist;

use std::io;
use std::path::Path;
use std::sync::Arc;

pub use location::{IndexDir, LocationError, MailLocation, MailPaths};
pub use lock::{LockError, MailboxLock};
pub use maildir::{Message, Snapshot};
pub use uidlist::{FormatError, UidlFormat};

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
    /// Creates the Maildir if needed, locks it, then takes the snapshot,
    /// with the index in the Maildir.
    pub fn open(dir: &Path, format: &UidlFormat) -> Result<Mailbox, OpenError> {
        Mailbox::open_paths(
            &MailPaths {
                maildir: dir.to_path_buf(),
                index: IndexDir::Maildir,
            },
            format,
        )
    }

    /// [`Mailbox::open`] with the index where `paths` says
    /// ([`MailLocation::expand_paths`], honouring `:INDEX=`).
    pub fn open_paths(paths: &MailPaths, format: &UidlFormat) -> Result<Mailbox, OpenError> {
        let dir = paths.maildir.as_path();
        let lock_err = |e| match e {
            LockError::InUse => OpenError::InUse,
            LockError::Io(e) => OpenError::Io(e),
        };
        // The Maildir almost always exists: try first, create only on
        // NotFound (saves three mkdir calls per login).
        let lock = match MailboxLock::acquire(dir) {
            Err(LockError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => {
                maildir::create(dir).map_err(OpenError::Io)?;
                MailboxLock::acquire(dir).map_err(lock_err)?
            }
            other => other.map_err(lock_err)?,
        };
        let snapshot = match maildir::load(dir, &paths.index, format) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                maildir::create(dir).map_err(OpenError::Io)?;
                maildir::load(dir, &paths.index, format)
            }
            other => other,
        }
        .map_err(OpenError::Io)?;
        Ok(Mailbox {
            snapshot: Arc::new(snapshot),
            _lock: lock,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_maildir_is_created_at_first_login() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("new-user/Maildir");
        let mailbox = Mailbox::open(&dir, &UidlFormat::default()).unwrap();
        assert!(mailbox.snapshot.messages.is_empty());
        for sub in ["cur", "new", "tmp"] {
            assert!(dir.join(sub).is_dir(), "{sub}");
        }
        drop(mailbox);
        // A Maildir whose cur/ went missing is repaired too.
        std::fs::remove_dir(dir.join("cur")).unwrap();
        assert!(Mailbox::open(&dir, &UidlFormat::default()).is_ok());
        assert!(dir.join("cur").is_dir());
    }
}
