//! Names in a Maildir looked up relative to it. A login touches up to seven
//! names in the Maildir (the lock file, `new/`, `cur/`, `dovecot-uidlist`,
//! Courier's two files, the index); by absolute path each costs a walk of
//! every component from `/`, and the dentry lookups of those walks were a
//! fifth of a worker's CPU per login (perf on the worker thread, 1 shard, 1
//! worker, loadtest login c=64; docs/benchmarks.md, third session). A login
//! opens the Maildir once (`O_PATH`: no permission to read it needed,
//! nothing to read) and looks the names up in it: one walk, then one
//! component each.
#![forbid(unsafe_code)]

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::Mode;

use super::index::Identity;

/// Where names are looked up: relative to an open Maildir, or by path when
/// it could not be opened (then every call behaves as the path calls do).
pub struct Root<'a> {
    dir: &'a Path,
    fd: Option<OwnedFd>,
}

fn io_error(e: nix::Error) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

impl<'a> Root<'a> {
    /// Opens `dir` for lookups; a Maildir that does not exist gives
    /// `NotFound` (the caller creates it).
    pub fn open(dir: &'a Path) -> io::Result<Root<'a>> {
        let flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
        let fd = nix::fcntl::open(dir, flags, Mode::empty()).map_err(io_error)?;
        Ok(Root { dir, fd: Some(fd) })
    }

    /// Lookups by path (no descriptor).
    pub fn by_path(dir: &'a Path) -> Root<'a> {
        Root { dir, fd: None }
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

    /// Opens `name` to read and write (no create, no truncate).
    pub fn open_file_rw(&self, name: &str) -> io::Result<File> {
        self.open_as(name, true, true)
    }

    fn open_as(&self, name: &str, read: bool, write: bool) -> io::Result<File> {
        let Some(fd) = &self.fd else {
            return std::fs::OpenOptions::new()
                .read(read)
                .write(write)
                .open(self.dir.join(name));
        };
        let access = match (read, write) {
            (true, true) => OFlag::O_RDWR,
            (false, true) => OFlag::O_WRONLY,
            _ => OFlag::O_RDONLY,
        };
        let file = nix::fcntl::openat(fd.as_fd(), name, access | OFlag::O_CLOEXEC, Mode::empty())
            .map_err(io_error)?;
        Ok(File::from(file))
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
        for root in [&open, &by_path] {
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
