//! Message bodies: small ones read into memory, large ones as read-only
//! memory maps (memmap2), so RETR streams them from the page cache without
//! copying the file into the heap, and the guard that keeps a truncated
//! mapped file from killing the process.
//!
//! This is one of the few modules allowed `unsafe`. Mapping a file is unsafe
//! because another process could change it underneath us. Maildir files are
//! written once in `tmp/` and never modified after delivery, and an unlink
//! keeps our mapping valid; truncation is the remaining hazard: touching a
//! page past the new end raises SIGBUS, which by default kills the server and
//! every session with it.
//!
//! Two paths read a mapping:
//! - the kernel, when raw CRLF ranges are handed to `writev`: a vanished page
//!   makes the syscall fail with EFAULT, an ordinary error for one session;
//! - our own code (the LF→CRLF transform, the size scan), which must run
//!   inside [`MessageMap::read_guarded`]. While it runs, the thread's guarded
//!   range is set; the SIGBUS handler, seeing a fault inside it, maps a zero
//!   page over the faulting page and flags the thread, so the read finishes
//!   with zeros and `read_guarded` reports [`Truncated`]. A SIGBUS anywhere
//!   else is not ours and still kills the process, as it should.
#![allow(unsafe_code)]

use std::cell::Cell;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::Path;
use std::sync::Once;
use std::sync::atomic::{AtomicUsize, Ordering};

use memmap2::Mmap;

/// Messages at most this long are read into memory instead of mapped.
/// Mapping costs a fixed price per message that reading does not: mmap,
/// madvise, page faults, and an munmap whose TLB shootdown interrupts every
/// core the process runs on. `scripts/profile-server download` (epoll,
/// c=16, a corpus of mostly 2-10 KB messages) put page faults, munmap and
/// madvise at 14% of the server's CPU with every message mapped, 8% with
/// only those over this bound mapped; reading costs one copy, which the
/// LF→CRLF pass (or the kernel's own send copy) dwarfs at these sizes.
pub const READ_BYTES_MAX: u64 = 256 * 1024;

/// A whole message file: read into memory when small, else mapped
/// read-only.
#[derive(Debug)]
pub struct MessageMap {
    bytes: Bytes,
}

#[derive(Debug)]
enum Bytes {
    /// An empty file (a zero-length mapping is not allowed).
    Empty,
    Read(Vec<u8>),
    Mapped(Mmap),
}

/// The file shrank while it was being read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Truncated;

impl MessageMap {
    /// Opens and maps `path`.
    pub fn open(path: &Path) -> io::Result<MessageMap> {
        Self::map(File::open(path)?)
    }

    /// Opens `path`, whose length is at most `at_most` bytes (a message's
    /// RFC 1939 size bounds its file's length): reads it when that is at
    /// most [`READ_BYTES_MAX`], else maps it. A file longer than promised is
    /// mapped, never read whole into memory.
    pub fn open_sized(path: &Path, at_most: u64) -> io::Result<MessageMap> {
        Self::read_or_map(File::open(path)?, at_most)
    }

    /// [`MessageMap::open_sized`] for the file `name` in the directory
    /// `dir`: the kernel looks up one name instead of walking the whole path
    /// from the root (`scripts/profile-server download`: the path walk was
    /// about a quarter of `openat`'s 6% of plaintext RETR CPU). `name` is
    /// one path component (no `/`, no NUL).
    pub fn open_in(dir: &File, name: &str, at_most: u64) -> io::Result<MessageMap> {
        Self::read_or_map(open_at(dir, name)?, at_most)
    }

    fn read_or_map(file: File, at_most: u64) -> io::Result<MessageMap> {
        if at_most > READ_BYTES_MAX {
            return Self::map(file);
        }
        let mut buf = Vec::with_capacity(at_most as usize + 1);
        // Reads into the spare capacity without zeroing it first.
        (&file).take(READ_BYTES_MAX + 1).read_to_end(&mut buf)?;
        if buf.len() as u64 > READ_BYTES_MAX {
            return Self::map(file);
        }
        let bytes = if buf.is_empty() {
            Bytes::Empty
        } else {
            Bytes::Read(buf)
        };
        Ok(MessageMap { bytes })
    }

    fn map(file: File) -> io::Result<MessageMap> {
        install_sigbus_guard();
        let len = file.metadata()?.len();
        if len == 0 {
            return Ok(MessageMap {
                bytes: Bytes::Empty,
            });
        }
        // SAFETY: the mapping is read-only and private to this process. Maildir
        // files are immutable once delivered (writers create them in tmp/ and
        // rename them in), and an unlink does not invalidate a live mapping.
        // A concurrent truncation makes pages past the new end fault instead of
        // giving torn data: user-space reads happen only in `read_guarded`,
        // whose SIGBUS guard turns the fault into `Truncated`, and kernel reads
        // (writev) fail with EFAULT.
        let map = unsafe { Mmap::map(&file)? };
        // Reading pages ahead is what RETR does next; tell the kernel.
        let _ = map.advise(memmap2::Advice::Sequential);
        Ok(MessageMap {
            bytes: Bytes::Mapped(map),
        })
    }

    /// The message's length in bytes.
    pub fn len(&self) -> usize {
        self.raw().len()
    }

    /// True for an empty file.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes, for handing to the kernel (writev) only: user-space reads
    /// of a mapping must go through [`MessageMap::read_guarded`].
    pub fn raw(&self) -> &[u8] {
        match &self.bytes {
            Bytes::Empty => &[],
            Bytes::Read(buf) => buf,
            Bytes::Mapped(map) => map,
        }
    }

    /// Runs `read` over the mapped bytes with the SIGBUS guard armed. If the
    /// file was truncated meanwhile, the bytes past its end read as zeros and
    /// the result is `Err(Truncated)`; the caller must drop what it produced.
    pub fn read_guarded<R>(&self, read: impl FnOnce(&[u8]) -> R) -> Result<R, Truncated> {
        let Bytes::Mapped(map) = &self.bytes else {
            // Bytes in memory cannot fault.
            return Ok(read(self.raw()));
        };
        let bytes: &[u8] = map;
        GUARD.with(|g| g.set((bytes.as_ptr() as usize, bytes.len())));
        FAULTED.with(|f| f.set(false));
        let result = read(bytes);
        GUARD.with(|g| g.set((0, 0)));
        if FAULTED.with(|f| f.replace(false)) {
            Err(Truncated)
        } else {
            Ok(result)
        }
    }
}

/// openat(2) of one name in `dir`, read-only.
fn open_at(dir: &File, name: &str) -> io::Result<File> {
    if name.is_empty() || name.contains('/') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a file name",
        ));
    }
    let name = std::ffi::CString::new(name)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in a file name"))?;
    // SAFETY: `dir` is an open descriptor for the duration of the call and
    // `name` a NUL-terminated string that outlives it; openat does not keep
    // either.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: openat just returned this descriptor, and nothing else owns it.
    Ok(unsafe { File::from_raw_fd(fd) })
}

thread_local! {
    /// The mapping this thread is reading: (start address, length).
    static GUARD: Cell<(usize, usize)> = const { Cell::new((0, 0)) };
    /// Set by the handler when it patched a page inside `GUARD`.
    static FAULTED: Cell<bool> = const { Cell::new(false) };
}

static PAGE_BYTES: AtomicUsize = AtomicUsize::new(4096);

fn install_sigbus_guard() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        if page > 0 {
            PAGE_BYTES.store(page as usize, Ordering::Relaxed);
        }
        // SAFETY: a zeroed sigaction is a valid "no flags, empty mask" value;
        // the handler has the SA_SIGINFO signature, and installing it once
        // before any guarded read is all the ordering it needs.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_sigbus as *const () as usize;
            action.sa_flags = libc::SA_SIGINFO;
            libc::sigemptyset(&mut action.sa_mask);
            if libc::sigaction(libc::SIGBUS, &action, std::ptr::null_mut()) != 0 {
                tracing::error!(error = %io::Error::last_os_error(), "cannot install the SIGBUS guard");
            }
        }
    });
}

/// Async-signal-safe: reads two const-initialised thread-locals (no lazy
/// initialisation, no destructor), calls mmap(2), or restores the default
/// action and re-raises.
extern "C" fn on_sigbus(
    signal: libc::c_int,
    info: *mut libc::siginfo_t,
    _context: *mut libc::c_void,
) {
    // SAFETY: the kernel passes a valid siginfo for an SA_SIGINFO handler, and
    // for SIGBUS the fault address field is the one that is set.
    let addr = unsafe { (*info).si_addr() } as usize;
    let (start, len) = GUARD.with(|g| g.get());
    if len != 0 && addr >= start && addr < start + len {
        let page = PAGE_BYTES.load(Ordering::Relaxed);
        let page_start = addr & !(page - 1);
        // SAFETY: the page lies inside a mapping this thread owns and is only
        // reading (checked above); replacing it with an anonymous zero page of
        // the same protection keeps the address range valid, and munmap of the
        // whole mapping later removes it with the rest.
        let patched = unsafe {
            libc::mmap(
                page_start as *mut libc::c_void,
                page,
                libc::PROT_READ,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                -1,
                0,
            )
        };
        if patched != libc::MAP_FAILED {
            FAULTED.with(|f| f.set(true));
            return;
        }
    }
    // Not a guarded read: die as the default action would.
    // SAFETY: signal(2) and raise(3) are async-signal-safe.
    unsafe {
        libc::signal(signal, libc::SIG_DFL);
        libc::raise(signal);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_truncated_under_a_guarded_read_is_reported_not_fatal() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("m");
        std::fs::write(&path, vec![b'x'; 64 * 1024]).unwrap();
        let map = MessageMap::open(&path).unwrap();
        assert_eq!(
            map.read_guarded(|b| b.iter().filter(|&&c| c == b'x').count()),
            Ok(64 * 1024)
        );
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(100)
            .unwrap();
        let result = map.read_guarded(|b| b.iter().map(|&c| c as u64).sum::<u64>());
        assert_eq!(result, Err(Truncated));
        // The guard is cleared: the next guarded read of a healthy file works.
        let path2 = tmp.path().join("n");
        std::fs::write(&path2, b"abc").unwrap();
        let map2 = MessageMap::open(&path2).unwrap();
        assert_eq!(map2.read_guarded(|b| b.to_vec()), Ok(b"abc".to_vec()));
    }

    #[test]
    fn small_messages_are_read_and_large_or_longer_than_promised_ones_mapped() {
        let tmp = tempfile::tempdir().unwrap();
        let small = tmp.path().join("small");
        std::fs::write(&small, b"Subject: x\n\nbody\n").unwrap();
        let read = MessageMap::open_sized(&small, 40).unwrap();
        assert!(matches!(read.bytes, Bytes::Read(_)));
        assert_eq!(read.raw(), b"Subject: x\n\nbody\n");
        assert_eq!(read.read_guarded(|b| b.len()), Ok(17));

        let large = tmp.path().join("large");
        let body = vec![b'y'; READ_BYTES_MAX as usize + 10];
        std::fs::write(&large, &body).unwrap();
        let mapped = MessageMap::open_sized(&large, body.len() as u64 * 2).unwrap();
        assert!(matches!(mapped.bytes, Bytes::Mapped(_)));
        assert_eq!(mapped.len(), body.len());
        // A size that lies (a wrong S= in the name) is not trusted: the
        // file is mapped, whole, not read past the bound.
        let lied = MessageMap::open_sized(&large, 100).unwrap();
        assert!(matches!(lied.bytes, Bytes::Mapped(_)));
        assert_eq!(lied.read_guarded(|b| b == &body[..]), Ok(true));

        // One name in a directory, as the shard opens messages.
        let dir = File::open(tmp.path()).unwrap();
        let read = MessageMap::open_in(&dir, "small", 40).unwrap();
        assert_eq!(read.raw(), b"Subject: x\n\nbody\n");
        let mapped = MessageMap::open_in(&dir, "large", body.len() as u64).unwrap();
        assert!(matches!(mapped.bytes, Bytes::Mapped(_)));
        for bad in ["", "../small", "a/b", "nul\0"] {
            let e = MessageMap::open_in(&dir, bad, 10).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{bad:?}");
        }
        assert_eq!(
            MessageMap::open_in(&dir, "gone", 10).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );

        let empty = tmp.path().join("empty");
        std::fs::write(&empty, b"").unwrap();
        assert!(MessageMap::open_sized(&empty, 0).unwrap().is_empty());
        assert_eq!(
            MessageMap::open_sized(&tmp.path().join("gone"), 10)
                .unwrap_err()
                .kind(),
            io::ErrorKind::NotFound
        );
    }

    #[test]
    fn empty_files_map_to_an_empty_slice() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("e");
        std::fs::write(&path, b"").unwrap();
        let map = MessageMap::open(&path).unwrap();
        assert!(map.is_empty());
        assert_eq!(map.read_guarded(|b| b.len()), Ok(0));
    }
}
