//! The shard's provided-buffer ring (IORING_REGISTER_PBUF_RING): receive
//! buffers the kernel picks when data arrives, so an idle connection holds
//! no buffer while its recv waits.
//!
//! Ownership: a buffer is the kernel's from the moment its entry is
//! published at the ring's tail until a completion names its buffer id; then
//! it is ours until [`BufRing::recycle`] publishes it again. [`BufRing::get`]
//! borrows `&self` and `recycle` takes `&mut self`, so no slice of a buffer
//! survives its return to the kernel. Both mappings live until the `BufRing`
//! drops, and the shard unregisters the group (or drops the ring) first.

use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::types::BufRingEntry;

use super::sys::syscall;

/// One buffer group: the ring of entries and the buffers they point at.
pub struct BufRing {
    /// INVARIANT: `entries` 16-byte `io_uring_buf` slots, page aligned (an
    /// anonymous mapping), shared with the kernel once registered.
    ring: NonNull<BufRingEntry>,
    /// INVARIANT: `entries * buf_bytes` bytes, an anonymous mapping. Only
    /// reached through raw pointers: the kernel writes into buffers it holds
    /// while we read others, so no Rust reference ever covers the whole.
    bufs: NonNull<u8>,
    entries: u16,
    buf_bytes: usize,
    /// Our copy of the tail (the kernel reads the shared one).
    tail: u16,
    /// The group id recvs name in `buf_group`.
    pub bgid: u16,
}

impl BufRing {
    /// `entries` buffers of `buf_bytes` each (`entries` a power of two,
    /// at most 32768), all published to the kernel.
    pub fn new(entries: u16, buf_bytes: usize, bgid: u16) -> io::Result<BufRing> {
        assert!(entries.is_power_of_two() && entries <= 1 << 15);
        assert!(buf_bytes > 0 && buf_bytes <= u32::MAX as usize);
        let ring = map(usize::from(entries) * size_of::<BufRingEntry>())?.cast::<BufRingEntry>();
        let bufs = match map(usize::from(entries) * buf_bytes) {
            Ok(b) => b,
            Err(e) => {
                unmap(
                    ring.cast(),
                    usize::from(entries) * size_of::<BufRingEntry>(),
                );
                return Err(e);
            }
        };
        let mut br = BufRing {
            ring,
            bufs,
            entries,
            buf_bytes,
            tail: 0,
            bgid,
        };
        for bid in 0..entries {
            br.publish(bid);
        }
        br.store_tail();
        Ok(br)
    }

    /// Registers the group with `ring`.
    ///
    /// # Safety
    ///
    /// `self` must outlive the registration: the caller unregisters the
    /// group or drops the `IoUring` before dropping `self`.
    pub unsafe fn register(&self, submitter: &io_uring::Submitter<'_>) -> io::Result<()> {
        // SAFETY: the ring mapping is page aligned, `entries` slots long, and
        // by this function's contract lives until the registration ends.
        unsafe {
            submitter.register_buf_ring_with_flags(
                self.ring.as_ptr() as u64,
                self.entries,
                self.bgid,
                0,
            )
        }
    }

    /// The largest receive a buffer takes.
    pub fn buf_bytes(&self) -> usize {
        self.buf_bytes
    }

    /// The first `len` bytes of buffer `bid`, which a completion just handed
    /// back to us with `len` bytes received.
    pub fn get(&self, bid: u16, len: usize) -> &[u8] {
        assert!(bid < self.entries && len <= self.buf_bytes);
        // SAFETY: buffer `bid` lies inside the `bufs` mapping; a completion
        // named it, so the kernel has finished writing it and will not touch
        // it again until `recycle(bid)`, which needs `&mut self` and so
        // cannot run while this slice lives.
        unsafe {
            std::slice::from_raw_parts(
                self.bufs.as_ptr().add(usize::from(bid) * self.buf_bytes),
                len,
            )
        }
    }

    /// Gives buffer `bid` back to the kernel.
    pub fn recycle(&mut self, bid: u16) {
        assert!(bid < self.entries);
        self.publish(bid);
        self.store_tail();
    }

    /// Writes the entry for `bid` at our tail and advances our tail.
    fn publish(&mut self, bid: u16) {
        let index = usize::from(self.tail & (self.entries - 1));
        // SAFETY: `index < entries`, inside the ring mapping. The kernel
        // only reads entries between its head and the published tail; this
        // slot is past the published tail, so nothing reads it concurrently.
        // The setters leave `resv` (the shared tail in slot 0) untouched.
        let entry = unsafe { &mut *self.ring.as_ptr().add(index) };
        // SAFETY: `bid < entries`, so the offset stays inside `bufs`.
        let addr = unsafe { self.bufs.as_ptr().add(usize::from(bid) * self.buf_bytes) };
        entry.set_addr(addr as u64);
        entry.set_len(self.buf_bytes as u32);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    /// Publishes our tail: the entries before it become the kernel's.
    fn store_tail(&self) {
        // SAFETY: the ring base is valid and page aligned; the tail is the
        // `resv` u16 of slot 0, 2-byte aligned, and the kernel reads it with
        // an acquire load, so a release store through an atomic pairs with it.
        unsafe {
            let tail = BufRingEntry::tail(self.ring.as_ptr()).cast_mut();
            AtomicU16::from_ptr(tail).store(self.tail, Ordering::Release);
        }
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        unmap(
            self.ring.cast(),
            usize::from(self.entries) * size_of::<BufRingEntry>(),
        );
        unmap(self.bufs, usize::from(self.entries) * self.buf_bytes);
    }
}

/// A private anonymous read-write mapping of `bytes` (page aligned).
fn map(bytes: usize) -> io::Result<NonNull<u8>> {
    // SAFETY: mmap(2) with a null hint, no fd and no fixed address creates a
    // fresh mapping and references no memory of ours.
    let addr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            bytes,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if addr == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    Ok(NonNull::new(addr.cast::<u8>()).expect("mmap never returns null on success"))
}

fn unmap(addr: NonNull<u8>, bytes: usize) {
    // The mapping was created by `map` with this length and is no longer
    // referenced (the owner is being dropped).
    let _ = syscall!(munmap(addr.as_ptr().cast(), bytes));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_buffer_is_published_and_recycling_advances_the_tail() {
        let mut br = BufRing::new(8, 64, 0).unwrap();
        // SAFETY: reading the shared tail of our own live ring.
        let shared_tail = || unsafe { *BufRingEntry::tail(br.ring.as_ptr()) };
        assert_eq!(shared_tail(), 8);
        assert_eq!(br.get(3, 64).len(), 64);
        br.recycle(3);
        // SAFETY: as above.
        assert_eq!(unsafe { *BufRingEntry::tail(br.ring.as_ptr()) }, 9);
        // Slot 0 (8 & 7) now names buffer 3 again.
        // SAFETY: slot 0 is inside the ring mapping.
        let slot0 = unsafe { &*br.ring.as_ptr() };
        assert_eq!(slot0.bid(), 3);
        assert_eq!(slot0.len(), 64);
    }
}
