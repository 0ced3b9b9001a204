//! Names in a Maildir looked up relative to it. A login touches up to seven
//! names in the Maildir (a lock file, `new/`, `cur/`, `dovecot-uidlist`,
//! Courier's two files, the index); by absolute path each costs a walk of
//! every component from `/`, and the dentry lookups of those walks were a
//! fifth of a worker's CPU per login (perf on the worker thread, 1 shard, 1
//! worker, loadtest login c=64; docs/benchmarks.md, third session). A login
//! opens the Maildir once and looks the names up in it: one walk, then one
//! component each. It is opened to read (not `O_PATH`) because on a local
//! file system the same descriptor carries the session lock
//! ([`Root::local_dir`]), which saves the lock file's open and close.
//!
//! A Root opened with [`Root::open_now`] is for a login answered on a shard
//! thread, which must not wait on a disk or a file server. The Maildir must
//! be on a local file system (an NFS lock or lookup is a network round
//! trip); it and every file opened in it are resolved through cached
//! directory entries only (`RESOLVE_CACHED`); a read takes only what the
//! page cache holds (`RWF_NOWAIT`); nothing is written. Where that cannot
//! hold, a call fails with [`io::ErrorKind::WouldBlock`] and the login goes
//! to the worker pool. The one lookup that is not forced through the cache
//! is [`Root::stat`] (`new/`, `cur/`): an O_PATH open and close for each
//! cost as much as the hand-off to the pool saves (docs/benchmarks.md), and
//! these entries are used by every login and delivery, as the Maildir
//! and index are, so they are cached whenever those are. Were they evicted
//! alone, the stat would read one block of the Maildir's directory from a
//! local disk, the same kind of wait as a RETR's page fault.
#![forbid(unsafe_code)]

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;

use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::Mode;

use super::index::{Identity, Times};

/// Where names are looked up: relative to an open Maildir, or by path when
/// it could not be opened (then every call behaves as the path calls do).
pub struct Root<'a> {
    dir: &'a Path,
    /// Shared with the session lock when the Maildir carries it
    /// ([`Root::local_dir`]).
    fd: Option<Arc<OwnedFd>>,
    /// Opened by [`Root::open_now`]: nothing may wait.
    now: bool,
    /// Who stamped the Maildir's times.
    times: Times,
}

/// File systems whose lookups, stats and locks are answered from memory
/// once cached, and whose times this kernel's clock stamps (`statfs(2)`
/// magic numbers): ext2/3/4, XFS, Btrfs, tmpfs, F2FS, ZFS, overlayfs.
/// Network, cluster and FUSE file systems are not here.
const LOCAL_FILE_SYSTEMS: [u64; 7] = [
    0xEF53,
    0x5846_5342,
    0x9123_683E,
    0x0102_1994,
    0xF2F5_2010,
    0x2FC1_2FC1,
    0x794C_7630,
];

/// `f_type` names a file system in [`LOCAL_FILE_SYSTEMS`].
fn is_local(f_type: impl TryInto<u64>) -> bool {
    f_type
        .try_into()
        .is_ok_and(|kind| LOCAL_FILE_SYSTEMS.contains(&kind))
}

/// The error of every call that would have to wait.
fn would_block() -> io::Error {
    io::Error::from(io::ErrorKind::WouldBlock)
}

/// A rustix error as `io::Error`, `EAGAIN` as [`io::ErrorKind::WouldBlock`].
pub(crate) fn rustix_error(e: rustix::io::Errno) -> io::Error {
    if e == rustix::io::Errno::AGAIN {
        return would_block();
    }
    io::Error::from_raw_os_error(e.raw_os_error())
}

fn io_error(e: nix::Error) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

impl<'a> Root<'a> {
    /// Opens `dir` for lookups; a Maildir that does not exist gives
    /// `NotFound` (the caller creates it). A failed `statfs` is an error
    /// too, not a guess: the lock target ([`Root::local_dir`]) must depend
    /// on the file system alone.
    pub fn open(dir: &'a Path) -> io::Result<Root<'a>> {
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
        let fd = nix::fcntl::open(dir, flags, Mode::empty()).map_err(io_error)?;
        let kind = rustix::fs::fstatfs(&fd).map_err(rustix_error)?.f_type;
        let times = if is_local(kind) {
            Times::Local
        } else {
            Times::Other
        };
        Ok(Root {
            dir,
            fd: Some(Arc::new(fd)),
            now: false,
            times,
        })
    }

    /// [`Root::open`] for a caller that must not wait (see the module
    /// comment): `WouldBlock` when `dir` is not in the directory cache or
    /// not on a local file system.
    pub fn open_now(dir: &'a Path) -> io::Result<Root<'a>> {
        use rustix::fs::{OFlags, ResolveFlags};
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let fd = rustix::fs::openat2(
            rustix::fs::CWD,
            dir,
            flags,
            rustix::fs::Mode::empty(),
            ResolveFlags::CACHED,
        )
        .map_err(rustix_error)?;
        let kind = rustix::fs::fstatfs(&fd).map_err(rustix_error)?.f_type;
        if !is_local(kind) {
            return Err(would_block());
        }
        Ok(Root {
            dir,
            fd: Some(Arc::new(fd)),
            now: true,
            times: Times::Local,
        })
    }

    /// Lookups by path (no descriptor).
    pub fn by_path(dir: &'a Path) -> Root<'a> {
        Root {
            dir,
            fd: None,
            now: false,
            times: Times::Other,
        }
    }

    /// Who stamped the Maildir's times: [`Times::Local`] only when it was
    /// opened and found on a local file system.
    pub fn times(&self) -> Times {
        self.times
    }

    /// The Maildir itself, open, when it is on a local file system: there
    /// its own `flock` is the session lock ([`super::lock`]). `None`
    /// elsewhere (NFS, cluster and FUSE file systems), where the lock is a
    /// file in it. The answer depends on the file system alone, never on
    /// how this Root was opened, so every process takes the same lock: a
    /// Root by path opens the Maildir as [`Root::open`] does, and fails
    /// where that fails. Shares this Root's descriptor (no system call)
    /// when it has one.
    pub fn local_dir(&self) -> io::Result<Option<Arc<OwnedFd>>> {
        match &self.fd {
            Some(fd) if self.times == Times::Local => Ok(Some(Arc::clone(fd))),
            Some(_) => Ok(None),
            None => Root::open(self.dir)?.local_dir(),
        }
    }

    /// Opened by [`Root::open_now`]: every call fails rather than wait.
    pub fn is_now(&self) -> bool {
        self.now
    }

    /// The Maildir.
    pub fn dir(&self) -> &'a Path {
        self.dir
    }

    /// The identity of the Maildir itself (no lookup when it is open).
    pub fn identity(&self) -> io::Result<Identity> {
        #[cfg(test)]
        IDENTITIES.with(|n| n.set(n.get() + 1));
        let Some(fd) = &self.fd else {
            return Identity::stat(self.dir);
        };
        let st = nix::sys::stat::fstat(fd.as_fd()).map_err(io_error)?;
        Ok(Identity::of(&st))
    }

    /// The identity of `name` (which must exist).
    pub fn stat(&self, name: &str) -> io::Result<Identity> {
        #[cfg(test)]
        STATS.with(|n| n.set(n.get() + 1));
        let Some(fd) = &self.fd else {
            return Identity::stat(&self.dir.join(name));
        };
        let st = nix::sys::stat::fstatat(fd.as_fd(), name, AtFlags::empty()).map_err(io_error)?;
        Ok(Identity::of(&st))
    }

    /// The identity of `name`, or [`Identity::ABSENT`] when there is none.
    pub fn stat_optional(&self, name: &str) -> io::Result<Identity> {
        match self.stat(name) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Identity::ABSENT),
            other => other,
        }
    }

    /// Opens `name` read-only, or write-only (no create, no truncate).
    pub fn open_file(&self, name: &str, write: bool) -> io::Result<File> {
        self.open_as(name, !write, write)
    }

    /// Opens `name` to read and write (no create, no truncate). A Root
    /// that must not wait writes nothing: `WouldBlock`.
    pub fn open_file_rw(&self, name: &str) -> io::Result<File> {
        if self.now {
            return Err(would_block());
        }
        self.open_as(name, true, true)
    }

    fn open_as(&self, name: &str, read: bool, write: bool) -> io::Result<File> {
        use rustix::fs::{Mode, OFlags, ResolveFlags};
        let Some(fd) = &self.fd else {
            return std::fs::OpenOptions::new()
                .read(read)
                .write(write)
                .open(self.dir.join(name));
        };
        let flags = OFlags::CLOEXEC
            | match (read, write) {
                (true, true) => OFlags::RDWR,
                (false, true) => OFlags::WRONLY,
                _ => OFlags::RDONLY,
            };
        let opened = if self.now {
            rustix::fs::openat2(fd, name, flags, Mode::empty(), ResolveFlags::CACHED)
        } else {
            rustix::fs::openat(fd, name, flags, Mode::empty())
        };
        Ok(File::from(opened.map_err(rustix_error)?))
    }
}

#[cfg(test)]
thread_local! {
    static STATS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    static IDENTITIES: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Times this thread has taken the Maildir's own identity (tests).
#[cfg(test)]
pub(crate) fn identity_count() -> u64 {
    IDENTITIES.with(std::cell::Cell::get)
}

/// Names this thread has looked up with [`Root::stat`] (tests).
#[cfg(test)]
pub(crate) fn stat_count() -> u64 {
    STATS.with(std::cell::Cell::get)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn relative_and_path_lookups_agree() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        std::fs::create_dir(dir.join("cur")).unwrap();
        std::fs::write(dir.join("file"), b"abc").unwrap();
        let open = Root::open(dir).unwrap();
        let by_path = Root::by_path(dir);
        // What the lookups of the others just cached, a root that must not
        // wait finds too.
        let now = Root::open_now(dir).unwrap();
        for root in [&open, &by_path, &now] {
            assert_eq!(
                root.stat("cur").unwrap(),
                Identity::stat(&dir.join("cur")).unwrap()
            );
            assert_eq!(root.stat("file").unwrap().size, 3);
            assert_eq!(root.stat_optional("gone").unwrap(), Identity::ABSENT);
            assert_eq!(
                root.stat("gone").unwrap_err().kind(),
                io::ErrorKind::NotFound
            );
            let mut s = String::new();
            root.open_file("file", false)
                .unwrap()
                .read_to_string(&mut s)
                .unwrap();
            assert_eq!(s, "abc");
            assert_eq!(
                root.open_file("gone", true).unwrap_err().kind(),
                io::ErrorKind::NotFound
            );
        }
        open.open_file("file", true)
            .unwrap()
            .write_all(b"x")
            .unwrap();
        assert_eq!(
            std::fs::read(dir.join("file")).unwrap(),
            b"xbc",
            "no truncation"
        );
        assert_eq!(
            Root::open(&dir.join("missing")).err().unwrap().kind(),
            io::ErrorKind::NotFound
        );
    }

    #[test]
    fn a_root_that_must_not_wait_refuses_what_is_not_local_and_cached() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        std::fs::write(dir.join("file"), b"abc").unwrap();
        let root = Root::open_now(dir).unwrap();
        assert!(root.is_now());
        // Its lookups, reads and refusals as the others' are checked in
        // `relative_and_path_lookups_agree`. It writes nothing.
        assert_eq!(
            root.open_file_rw("file").unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        // A file system that is not a local disk's (procfs stands in for
        // NFS here) is the pool's.
        assert_eq!(
            Root::open_now(Path::new("/proc/self"))
                .err()
                .unwrap()
                .kind(),
            io::ErrorKind::WouldBlock
        );
        // A name never looked up is not in the cache: finding out needs the
        // disk. Once a lookup has cached its absence, it is known.
        let missing = dir.join("missing");
        assert_eq!(
            Root::open_now(&missing).err().unwrap().kind(),
            io::ErrorKind::WouldBlock
        );
        assert!(std::fs::metadata(&missing).is_err());
        assert_eq!(
            Root::open_now(&missing).err().unwrap().kind(),
            io::ErrorKind::NotFound
        );
    }

    #[test]
    fn names_stay_inside_the_maildir_even_after_it_is_renamed() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("Maildir");
        std::fs::create_dir_all(dir.join("new")).unwrap();
        let root = Root::open(&dir).unwrap();
        std::fs::rename(&dir, tmp.path().join("moved")).unwrap();
        // The descriptor follows the directory, not the path.
        assert_ne!(root.stat("new").unwrap(), Identity::ABSENT);
    }
}
