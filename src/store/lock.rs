//! One session per mailbox: a process-wide table (all shards) plus an
//! exclusive `flock` on a file in the Maildir (other processes, e.g. a second
//! shardpop during a rolling restart). The guard releases both when it is
//! dropped, so a dropped connection frees its mailbox at once, and a crashed
//! process frees it because the kernel drops its flocks.
//!
//! A Maildir the server may not write (read-only mount, or owned by someone
//! else) is locked through a read-only descriptor (flock needs no write
//! access): the lock file if it exists, else the Maildir directory itself.
#![forbid(unsafe_code)]

use std::collections::HashSet;
use std::fs::{File, OpenOptions, TryLockError};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;

use parking_lot::Mutex;

use super::root::Root;

/// The lock file's name inside the Maildir. A dot file, so Maildir readers
/// (ours included) never take it for mail.
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
    // Held for its flock; closing the file releases it.
    _file: File,
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
        let file = match open_lock_file(root) {
            Ok(f) => f,
            Err(e) => {
                release();
                return Err(LockError::Io(e));
            }
        };
        match file.try_lock() {
            Ok(()) => Ok(MailboxLock {
                dir: key,
                _file: file,
            }),
            Err(TryLockError::WouldBlock) => {
                release();
                Err(LockError::InUse)
            }
            Err(TryLockError::Error(e)) => {
                release();
                Err(LockError::Io(e))
            }
        }
    }
}

/// The file to flock: the lock file, created when missing; in a Maildir we
/// may not write, the existing lock file or the directory, read-only.
fn open_lock_file(root: &Root<'_>) -> io::Result<File> {
    if root.is_now() {
        // A caller that must not wait creates nothing and takes no other
        // way in: any failure sends the login to the pool, which does.
        return root.open_file(LOCK_FILE, true);
    }
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

    #[test]
    fn flock_held_by_another_open_file_is_in_use() {
        let tmp = tempfile::tempdir().unwrap();
        // Another process would hold it through its own open file description.
        let other = File::create(tmp.path().join(LOCK_FILE)).unwrap();
        other.lock().unwrap();
        assert!(matches!(
            MailboxLock::acquire(tmp.path()),
            Err(LockError::InUse)
        ));
        other.unlock().unwrap();
        assert!(MailboxLock::acquire(tmp.path()).is_ok());
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
