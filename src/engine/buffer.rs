//! A fixed receive buffer: bytes arrive at the end, are consumed from the
//! front, and the unconsumed rest moves to the front only when the end is
//! reached. Used for plaintext commands and for TLS ciphertext alike.
#![forbid(unsafe_code)]

/// A fixed-size byte queue.
#[derive(Debug)]
pub struct InBuf {
    bytes: Box<[u8]>,
    start: usize,
    end: usize,
}

impl InBuf {
    /// An empty buffer of `capacity` bytes.
    pub fn new(capacity: usize) -> InBuf {
        InBuf {
            bytes: vec![0; capacity].into_boxed_slice(),
            start: 0,
            end: 0,
        }
    }

    /// The bytes received and not yet consumed.
    pub fn filled(&self) -> &[u8] {
        &self.bytes[self.start..self.end]
    }

    /// True when nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// Room to receive into, made as large as it can be (the waiting bytes
    /// move to the front when the end is reached). Empty when full.
    pub fn space(&mut self) -> &mut [u8] {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.start > 0 && self.end == self.bytes.len() {
            self.bytes.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        &mut self.bytes[self.end..]
    }

    /// True when [`InBuf::space`] would offer at least one byte.
    pub fn has_room(&self) -> bool {
        self.end < self.bytes.len() || self.start > 0
    }

    /// `n` bytes were written into [`InBuf::space`].
    pub fn commit(&mut self, n: usize) {
        assert!(
            self.end + n <= self.bytes.len(),
            "committed more than the space offered"
        );
        self.end += n;
    }

    /// Drops `n` bytes from the front.
    pub fn consume(&mut self, n: usize) {
        assert!(self.start + n <= self.end, "consumed more than was filled");
        self.start += n;
    }

    /// Drops everything waiting.
    pub fn clear(&mut self) {
        self.start = 0;
        self.end = 0;
    }

    /// The whole buffer, for discarding input (its contents are not kept).
    pub fn scratch(&mut self) -> &mut [u8] {
        self.clear();
        &mut self.bytes
    }

    /// Capacity in bytes.
    pub fn capacity(&self) -> usize {
        self.bytes.len()
    }
}

/// A shard's idle receive buffers, so a new connection does not allocate
/// and zero one (a 4 KiB `calloc` was 6 % of a login's user-space
/// instructions, `scripts/bench-instructions`). A buffer keeps the bytes of
/// the connection before, but only what [`InBuf::commit`] covers is ever
/// read.
#[derive(Debug, Default)]
pub struct InBufPool {
    free: Vec<Box<[u8]>>,
}

/// Idle buffers a shard keeps at most (1 MiB at the default 4 KiB).
const POOLED_MAX: usize = 256;

impl InBufPool {
    /// An empty buffer of `capacity` bytes, from the pool when it has one.
    pub fn take(&mut self, capacity: usize) -> InBuf {
        while let Some(bytes) = self.free.pop() {
            // A reload may have changed the size; older buffers go.
            if bytes.len() == capacity {
                return InBuf {
                    bytes,
                    start: 0,
                    end: 0,
                };
            }
        }
        InBuf::new(capacity)
    }

    /// Keeps `buf` for a later [`InBufPool::take`] if there is room.
    pub fn give(&mut self, buf: InBuf) {
        if self.free.len() < POOLED_MAX && !buf.bytes.is_empty() {
            self.free.push(buf.bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fills_consumes_and_compacts_only_at_the_end() {
        let mut b = InBuf::new(8);
        b.space()[..5].copy_from_slice(b"abcde");
        b.commit(5);
        b.consume(2);
        assert_eq!(b.filled(), b"cde");
        assert_eq!(b.space().len(), 3, "no move while there is room at the end");
        b.space()[..3].copy_from_slice(b"fgh");
        b.commit(3);
        assert_eq!(b.filled(), b"cdefgh");
        assert_eq!(
            b.space().len(),
            2,
            "full at the end: the rest moved to the front"
        );
        assert_eq!(b.filled(), b"cdefgh");
        b.consume(6);
        assert!(b.is_empty());
        assert_eq!(b.space().len(), 8);
    }

    #[test]
    fn pooled_buffers_come_back_empty_and_of_the_asked_size() {
        let mut pool = InBufPool::default();
        let mut b = pool.take(8);
        b.space()[..3].copy_from_slice(b"abc");
        b.commit(3);
        let first = b.bytes.as_ptr();
        pool.give(b);
        let again = pool.take(8);
        assert_eq!(again.bytes.as_ptr(), first, "the same memory, reused");
        assert!(again.is_empty());
        assert_eq!(again.capacity(), 8);
        pool.give(again);
        assert_eq!(pool.take(16).capacity(), 16, "another size: a new buffer");
        assert!(pool.free.is_empty(), "the 8-byte buffer was dropped");
        for _ in 0..POOLED_MAX + 10 {
            pool.give(InBuf::new(8));
        }
        assert_eq!(pool.free.len(), POOLED_MAX);
    }

    #[test]
    fn a_full_buffer_offers_no_room() {
        let mut b = InBuf::new(4);
        b.commit(4);
        assert!(!b.has_room());
        assert!(b.space().is_empty());
        b.consume(1);
        assert!(b.has_room());
        assert_eq!(b.space().len(), 1);
    }
}
