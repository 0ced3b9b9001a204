//! Message bodies as read-only memory maps (memmap2), so RETR streams from
//! the page cache without copying the file into the heap, and the guard that
//! keeps a truncated file from killing the process.
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

use std::cell::Cell;
use std::fs::File;
use std::io;
use std::path::Path;
use std::sync::Once;
use std::sync::atomic::{AtomicUsize, Ordering};

use memmap2::Mmap;

/// A whole message file, mapped read-only.
#[derive(Debug)]
pub struct MessageMap {
    /// `None` for an empty file (a zero-length mapping is not allowed).
    map: Option<Mmap>,
}

/// The file shrank while it was being read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Truncated;

impl MessageMap {
    /// Opens and maps `path`.
    pub fn open(path: &Path) -> io::Result<MessageMap> {
        install_sigbus_guard();
        let file = File::open(path)?;
        let len = file.metadata()?.len();
        if len == 0 {
            return Ok(MessageMap { map: None });
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
        Ok(MessageMap { map: Some(map) })
    }

    /// The mapping's length in bytes.
    pub fn len(&self) -> usize {
        self.map.as_ref().map_or(0, |m| m.len())
    }

    /// True for an empty file.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The mapped bytes, for handing to the kernel (writev) only: user-space
    /// reads of a mapping must go through [`MessageMap::read_guarded`].
    pub fn raw(&self) -> &[u8] {
        self.map.as_deref().unwrap_or(&[])
    }

    /// Runs `read` over the mapped bytes with the SIGBUS guard armed. If the
    /// file was truncated meanwhile, the bytes past its end read as zeros and
    /// the result is `Err(Truncated)`; the caller must drop what it produced.
    pub fn read_guarded<R>(&self, read: impl FnOnce(&[u8]) -> R) -> Result<R, Truncated> {
        let bytes = self.raw();
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
    fn empty_files_map_to_an_empty_slice() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("e");
        std::fs::write(&path, b"").unwrap();
        let map = MessageMap::open(&path).unwrap();
        assert!(map.is_empty());
        assert_eq!(map.read_guarded(|b| b.len()), Ok(0));
    }
}
