//! One session per mailbox: a process-wide table (all shards) plus an
//! exclusive `flock` (other processes, e.g. a second shardpop during a
//! rolling restart, or another node on shared storage). The guard releases
//! both when it is dropped, so a dropped connection frees its mailbox at
//! once, and a crashed process frees it because the kernel drops its flocks.
//!
//! What is flocked depends only on the Maildir's file system, so every
//! process agrees:
//! - on a local file system ([`Root::local_dir`]), the Maildir directory
//!   itself, through the descriptor the login already opened it with: no
//!   lock file to open and close (25.1 → 22.9 system calls per login
//!   session; docs/benchmarks.md, ninth session);
//! - elsewhere (NFS, cluster file systems), the lock file
//!   [`LOCK_FILE`]: a directory cannot carry an NFSv4 lock, a regular file
//!   can, which is what makes `[IN-USE]` hold across nodes. A Maildir the
//!   server may not write (read-only mount, or owned by someone else) is
//!   locked through a read-only descriptor (flock needs no write access):
//!   the lock file if it exists, else the Maildir directory itself.
#![forbid(unsafe_code)]

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;

use parking_lot::Mutex;
use rustix::fs::FlockOperation;

use super::root::Root;

/// The lock file's name inside a Maildir that is not on a local file
/// system. A dot file, so Maildir readers (ours included) never take it for
/// mail.
pub const LOCK_FILE: &str = ".shardpop-pop3.lock";

/// Keyed by the path's bytes: hashing a `Path` hashes it component by
/// component, several times the cost. The paths come from one template
/// expansion, so the same Maildir is spelled the same way.
static HELD: Mutex<Option<HashSet<Arc<[u8]>>>> = Mutex::new(None);

/// Why the mailbox could not be locked.
#[derive(Debug)]
pub enum LockError {
    /// Another session holds it.
    InUse,
    /// The lock file could not be opened or locked.
    Io(io::Error),
}

/// Holds a mailbox for one session.
#[derive(Debug)]
pub struct MailboxLock {
    /// The table's key, shared with the table (one copy of the path).
    dir: Arc<[u8]>,
    // Held for its flock; closing the last descriptor of its open file
    // releases it. Shared with the login's Root while that lives.
    _file: Arc<OwnedFd>,
}

impl MailboxLock {
    /// Takes the mailbox at `dir` (an existing Maildir), or says who has it.
    pub fn acquire(dir: &Path) -> Result<MailboxLock, LockError> {
        MailboxLock::acquire_in(&Root::by_path(dir))
    }

    /// [`MailboxLock::acquire`] with the lock file looked up in `root`.
    pub fn acquire_in(root: &Root<'_>) -> Result<MailboxLock, LockError> {
        let dir = root.dir();
        let key: Arc<[u8]> = Arc::from(dir.as_os_str().as_bytes());
        {
            let mut held = HELD.lock();
            if !held
                .get_or_insert_with(HashSet::new)
                .insert(Arc::clone(&key))
            {
                return Err(LockError::InUse);
            }
        }
        // From here on the table entry is ours; release it on every failure.
        let release = || {
            if let Some(held) = HELD.lock().as_mut() {
                held.remove(dir.as_os_str().as_bytes());
            }
        };
        let file = match open_lock_target(root) {
            Ok(f) => f,
            Err(e) => {
                release();
                return Err(LockError::Io(e));
            }
        };
        match rustix::fs::flock(&*file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => Ok(MailboxLock {
                dir: key,
                _file: file,
            }),
            Err(e) => {
                release();
                Err(if e == rustix::io::Errno::WOULDBLOCK {
                    LockError::InUse
                } else {
                    LockError::Io(io::Error::from(e))
                })
            }
        }
    }
}

/// The file to flock: the Maildir on a local file system; elsewhere
/// [`open_lock_file`].
fn open_lock_target(root: &Root<'_>) -> io::Result<Arc<OwnedFd>> {
    if let Some(dir) = root.local_dir()? {
        return Ok(dir);
    }
    // A Root that must not wait is on a local file system by construction
    // (`Root::open_now`); were it not, it may create and wait for nothing.
    if root.is_now() {
        return Err(io::ErrorKind::WouldBlock.into());
    }
    Ok(Arc::new(OwnedFd::from(open_lock_file(root)?)))
}

/// The lock file, created when missing; in a Maildir we may not write, the
/// existing lock file or the directory, read-only.
fn open_lock_file(root: &Root<'_>) -> io::Result<File> {
    let dir = root.dir();
    let path = || dir.join(LOCK_FILE);
    // The file almost always exists: an open without O_CREAT looks it up
    // without taking the directory's lock.
    let opened = match root.open_file(LOCK_FILE, true) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path()),
        other => other,
    };
    match opened {
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem
            ) =>
        {
            match File::open(path()) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => File::open(dir),
                other => other,
            }
        }
        other => other,
    }
}

impl Drop for MailboxLock {
    fn drop(&mut self) {
        if let Some(held) = HELD.lock().as_mut() {
            held.remove(&self.dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::TryLockError;

    #[test]
    fn second_lock_is_refused_until_the_first_drops() {
        let tmp = tempfile::tempdir().unwrap();
        let a = MailboxLock::acquire(tmp.path()).unwrap();
        assert!(matches!(
            MailboxLock::acquire(tmp.path()),
            Err(LockError::InUse)
        ));
        drop(a);
        let _b = MailboxLock::acquire(tmp.path()).unwrap();
    }

    /// Whether `dir` is on a file system whose Maildirs are locked
    /// through themselves.
    fn local(dir: &Path) -> bool {
        Root::by_path(dir).local_dir().unwrap().is_some()
    }

    #[test]
    fn flock_held_by_another_open_file_is_in_use() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(local(tmp.path()), "the tests' temporary directory is local");
        // Another process would hold it through its own open file
        // description, however it opened the directory.
        for root in [Root::open(tmp.path()).unwrap(), Root::by_path(tmp.path())] {
            let other = File::open(tmp.path()).unwrap();
            other.lock().unwrap();
            assert!(matches!(
                MailboxLock::acquire_in(&root),
                Err(LockError::InUse)
            ));
            other.unlock().unwrap();
            let held = MailboxLock::acquire_in(&root).unwrap();
            assert!(matches!(
                File::open(tmp.path()).unwrap().try_lock(),
                Err(TryLockError::WouldBlock)
            ));
            drop(held);
        }
        assert!(
            !tmp.path().join(LOCK_FILE).exists(),
            "no lock file on a local file system"
        );
    }

    #[test]
    fn a_maildir_elsewhere_is_locked_through_the_lock_file() {
        // What a Maildir on NFS takes (a local one stands in for it here).
        let tmp = tempfile::tempdir().unwrap();
        let held = open_lock_file(&Root::by_path(tmp.path())).unwrap();
        held.lock().unwrap();
        assert!(tmp.path().join(LOCK_FILE).is_file(), "created");
        let again = open_lock_file(&Root::open(tmp.path()).unwrap()).unwrap();
        assert!(matches!(again.try_lock(), Err(TryLockError::WouldBlock)));
        drop(held);
        again.try_lock().unwrap();
    }

    #[test]
    fn missing_directory_is_an_error_not_a_lock() {
        let tmp = tempfile::tempdir().unwrap();
        let gone = tmp.path().join("nope");
        assert!(matches!(MailboxLock::acquire(&gone), Err(LockError::Io(_))));
        std::fs::create_dir(&gone).unwrap();
        assert!(
            MailboxLock::acquire(&gone).is_ok(),
            "a failed attempt leaves no entry behind"
        );
    }
}
