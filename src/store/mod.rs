//! The mail store: Maildir scanning, message order, sizes, UIDLs, memory maps,
//! mailbox locks, deletions at QUIT and the RFC 2449 policy state
//! ([`policy`]: last logins, retrieval times). It knows nothing of sockets.
//!
//! Snapshot semantics: a session sees the mailbox as it was at login; mail
//! delivered later shows up in the next session. A login reads the mailbox
//! index ([`index`]) and the directories' identity, not the directories,
//! unless they changed. Every function here that
//! touches the disk is blocking and runs on the worker pool, except
//! [`Mailbox::open_message`], which the shard calls for RETR (an open by
//! name in a directory the login just looked at, and a read or mmap), and
//! [`Mailbox::open_now`], which a shard tries first for a login and which
//! gives up rather than wait.
// Only `body.rs` opts out; everything else in the store stays safe.
#![deny(unsafe_code)]

pub mod body;
pub mod commit;
pub mod courier;
pub mod index;
pub mod location;
pub mod lock;
pub mod maildir;
pub mod policy;
pub mod root;
pub mod uidlist;

use std::io;
use std::path::Path;
use std::sync::Arc;

pub use location::{IndexDir, LocationError, MailLocation, MailPaths};
pub use lock::{LockError, MailboxLock};
pub use maildir::{Message, Snapshot};
use root::Root;
pub use uidlist::{FormatError, UidlFormat};

/// A mailbox held by one session: its snapshot and its lock.
#[derive(Debug)]
pub struct Mailbox {
    /// What the session sees (shared with the protocol layer as its maildrop).
    pub snapshot: Arc<Snapshot>,
    _lock: MailboxLock,
    /// `cur/` and `new/`, opened at the first RETR that needs each, so a
    /// message is opened by its name alone.
    dirs: [std::cell::OnceCell<std::fs::File>; 2],
}

/// Why a mailbox could not be opened.
#[derive(Debug)]
pub enum OpenError {
    /// Another session holds it: `-ERR [IN-USE]`.
    InUse,
    /// The disk said no: `-ERR [SYS/TEMP]`, cause logged.
    Io(io::Error),
    /// The owner logged in less than their LOGIN-DELAY ago:
    /// `-ERR [LOGIN-DELAY]`. Nothing was read or written.
    LoginDelay {
        /// Seconds until a login is allowed.
        wait_secs: u64,
    },
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
        Mailbox::open_inner(paths, format, None)
    }

    /// [`Mailbox::open_paths`] for a login under the owner's RFC 2449
    /// `policy` at `now` (Unix seconds): once the mailbox is locked, a
    /// login within the LOGIN-DELAY of the last one is refused before the
    /// maildrop is read (RFC 2449 §8.1.1: the server still saves the cost
    /// of opening it); an allowed one is stamped after the snapshot is
    /// taken, so a login that fails never counts. A stamp that cannot be
    /// written is logged once; the login goes on.
    pub fn open_for(
        paths: &MailPaths,
        format: &UidlFormat,
        policy: crate::protocol::SitePolicy,
        now: u64,
    ) -> Result<Mailbox, OpenError> {
        Mailbox::open_inner(paths, format, Some((policy, now)))
    }

    /// [`Mailbox::open_for`] for a shard thread, where nothing may wait
    /// ([`root::Root::open_now`]): `Ok(None)` when this login needs
    /// anything but cached lookups and a cached index that is current (a
    /// first login, a changed Maildir, an index kept elsewhere, a file to
    /// write, a LOGIN-DELAY to check, a network file system): then the
    /// worker pool opens it with [`Mailbox::open_for`]. `Err(InUse)` as
    /// there.
    pub fn open_now(
        paths: &MailPaths,
        format: &UidlFormat,
        policy: crate::protocol::SitePolicy,
    ) -> Result<Option<Mailbox>, OpenError> {
        Mailbox::open_now_at(paths, format, policy, index::Stamp::now())
    }

    /// [`Mailbox::open_now`] checking the directories as at `checked_at`.
    fn open_now_at(
        paths: &MailPaths,
        format: &UidlFormat,
        policy: crate::protocol::SitePolicy,
        checked_at: index::Stamp,
    ) -> Result<Option<Mailbox>, OpenError> {
        if policy.login_delay_secs > 0 {
            return Ok(None);
        }
        let Ok(root) = Root::open_now(&paths.maildir) else {
            return Ok(None);
        };
        let lock = match MailboxLock::acquire_in(&root) {
            Ok(lock) => lock,
            Err(LockError::InUse) => return Err(OpenError::InUse),
            Err(LockError::Io(_)) => return Ok(None),
        };
        let Ok(mut snapshot) = maildir::load_in_at(&root, &paths.index, format, checked_at) else {
            return Ok(None);
        };
        snapshot.policy = Some(policy);
        Ok(Some(Mailbox {
            snapshot: Arc::new(snapshot),
            _lock: lock,
            dirs: Default::default(),
        }))
    }

    fn open_inner(
        paths: &MailPaths,
        format: &UidlFormat,
        policy: Option<(crate::protocol::SitePolicy, u64)>,
    ) -> Result<Mailbox, OpenError> {
        let dir = paths.maildir.as_path();
        let lock_err = |e| match e {
            LockError::InUse => OpenError::InUse,
            LockError::Io(e) => OpenError::Io(e),
        };
        // The Maildir almost always exists: try first, create only on
        // NotFound (saves three mkdir calls per login).
        let root = match Root::open(dir) {
            Ok(root) => root,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                maildir::create(dir).map_err(OpenError::Io)?;
                Root::open(dir).unwrap_or_else(|_| Root::by_path(dir))
            }
            // Whatever it is, the calls by path meet it and report it.
            Err(_) => Root::by_path(dir),
        };
        let lock = match MailboxLock::acquire_in(&root) {
            Err(LockError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => {
                maildir::create(dir).map_err(OpenError::Io)?;
                MailboxLock::acquire(dir).map_err(lock_err)?
            }
            other => other.map_err(lock_err)?,
        };
        let delay_secs = policy.map_or(0, |(p, _)| p.login_delay_secs);
        if let Some((_, now)) = policy
            && let policy::LoginCheck::TooSoon { wait_secs } =
                policy::check_login(dir, delay_secs, now)
        {
            return Err(OpenError::LoginDelay { wait_secs });
        }
        let mut snapshot = match maildir::load_in(&root, &paths.index, format) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                maildir::create(dir).map_err(OpenError::Io)?;
                maildir::load(dir, &paths.index, format)
            }
            other => other,
        }
        .map_err(OpenError::Io)?;
        if let Some((user_policy, now)) = policy {
            if delay_secs > 0
                && let Err(e) = policy::record_login(dir, now)
            {
                index::warn_once(&dir.join(policy::LOGIN_FILE), "write", &e);
            }
            snapshot.policy = Some(user_policy);
        }
        Ok(Mailbox {
            snapshot: Arc::new(snapshot),
            _lock: lock,
            dirs: Default::default(),
        })
    }

    /// Reads or maps message `index` (0-based) for RETR/TOP: opened by name
    /// in its directory, read into memory when small
    /// ([`body::MessageMap::open_in`]). Runs on the shard (see the module
    /// comment).
    pub fn open_message(&self, index: usize) -> io::Result<body::MessageMap> {
        let snapshot = &self.snapshot;
        let (slot, sub) = if snapshot.in_new(index) {
            (1, "new")
        } else {
            (0, "cur")
        };
        let dir = match self.dirs[slot].get() {
            Some(dir) => dir,
            None => {
                let dir = std::fs::File::open(snapshot.dir.join(sub))?;
                self.dirs[slot].get_or_init(|| dir)
            }
        };
        // A file is never longer than its RFC 1939 size.
        let at_most = snapshot
            .file_bytes(index)
            .unwrap_or(snapshot.messages[index].octets);
        body::MessageMap::open_in(dir, snapshot.file_name(index), at_most)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::SitePolicy;

    fn later(secs: i64) -> index::Stamp {
        let now = index::Stamp::now();
        index::Stamp {
            sec: now.sec + secs,
            nsec: now.nsec,
        }
    }

    #[test]
    fn a_mailbox_opened_on_a_shard_is_locked_as_on_the_pool() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("Maildir");
        maildir::create(&dir).unwrap();
        std::fs::write(dir.join("cur/1700000001.M1.h:2,S"), b"a\n").unwrap();
        let paths = MailPaths {
            maildir: dir.clone(),
            index: IndexDir::Maildir,
        };
        let format = UidlFormat::default();
        let site = SitePolicy::default();
        // First login: no index yet, and none is made here.
        assert!(matches!(
            Mailbox::open_now_at(&paths, &format, site, later(3)),
            Ok(None)
        ));
        assert!(!dir.join(index::INDEX_FILE).exists());
        // The pool's logins make it, and it settles.
        drop(Mailbox::open_paths(&paths, &format).unwrap());
        for t in [6, 9, 12] {
            maildir::load_at(&dir, &IndexDir::Maildir, &format, later(t)).unwrap();
        }
        let held = Mailbox::open_now_at(&paths, &format, site, later(15))
            .unwrap()
            .expect("answered on the shard");
        assert_eq!(held.snapshot.messages.len(), 1);
        assert_eq!(held.snapshot.policy, Some(site));
        // One session per mailbox, whichever path opened it.
        assert!(matches!(
            Mailbox::open_now_at(&paths, &format, site, later(18)),
            Err(OpenError::InUse)
        ));
        assert!(matches!(
            Mailbox::open_paths(&paths, &format),
            Err(OpenError::InUse)
        ));
        drop(held);
        let pool = Mailbox::open_paths(&paths, &format).unwrap();
        assert!(matches!(
            Mailbox::open_now_at(&paths, &format, site, later(21)),
            Err(OpenError::InUse)
        ));
        drop(pool);
        // A LOGIN-DELAY reads and writes a file: the pool's.
        let delayed = SitePolicy {
            login_delay_secs: 60,
            ..site
        };
        for t in [24, 27, 30] {
            maildir::load_at(&dir, &IndexDir::Maildir, &format, later(t)).unwrap();
        }
        assert!(matches!(
            Mailbox::open_now_at(&paths, &format, delayed, later(33)),
            Ok(None)
        ));
        assert!(
            Mailbox::open_now_at(&paths, &format, site, later(33))
                .unwrap()
                .is_some()
        );
    }

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
