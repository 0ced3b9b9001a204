//! Body verification: what a RETR body must be, and a streaming byte-exact check.
//!
//! A Maildir file is stored with LF line ends (sometimes already CRLF). On the wire
//! a POP3 server sends it with CRLF; un-stuffed, the body must equal the file with
//! every bare LF turned into CRLF. A file whose last line has no line end gets
//! one CRLF added, as RFC 1939 framing needs a line end before `.CRLF`.

use std::hash::Hasher;
use std::sync::Arc;

/// The file as a POP3 client must receive it (after un-stuffing).
pub fn to_crlf(raw: &[u8]) -> Vec<u8> {
    let lines = memchr::memchr_iter(b'\n', raw).count();
    let mut out = Vec::with_capacity(raw.len() + lines + 2);
    let mut start = 0;
    for lf in memchr::memchr_iter(b'\n', raw) {
        let line = &raw[start..lf];
        out.extend_from_slice(line.strip_suffix(b"\r").unwrap_or(line));
        out.extend_from_slice(b"\r\n");
        start = lf + 1;
    }
    if start < raw.len() {
        out.extend_from_slice(&raw[start..]);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// The verdict on one body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Byte-exact equal to the expected content.
    Match,
    /// Different in at least one byte or in length.
    Mismatch,
    /// Nothing to compare against (verification off).
    Unchecked,
}

/// Compares a body, chunk by chunk as it arrives, with the expected bytes, or
/// (content fallback) hashes it for `corpus::Corpus::content_hash`.
#[derive(Debug, Default)]
pub struct BodyCheck {
    expected: Option<Arc<[u8]>>,
    hasher: Option<std::collections::hash_map::DefaultHasher>,
    /// Body bytes seen so far (also the compare position).
    len: usize,
    /// No difference found yet.
    equal: bool,
}

impl BodyCheck {
    /// A check against `expected`, or a byte counter alone when `None`.
    pub fn new(expected: Option<Arc<[u8]>>) -> Self {
        BodyCheck {
            expected,
            hasher: None,
            len: 0,
            equal: true,
        }
    }

    /// A check that only hashes the body (verdict `Unchecked`; see `hash`).
    pub fn hashing() -> Self {
        BodyCheck {
            hasher: Some(crate::corpus::content_hasher()),
            ..BodyCheck::new(None)
        }
    }

    /// The body's content hash, in hashing mode.
    pub fn hash(&self) -> Option<u64> {
        self.hasher.as_ref().map(Hasher::finish)
    }

    /// Takes the next run of un-stuffed body bytes.
    pub fn feed(&mut self, chunk: &[u8]) {
        if let Some(hasher) = &mut self.hasher {
            hasher.write(chunk);
        }
        if let (Some(expected), true) = (&self.expected, self.equal) {
            let end = self.len + chunk.len();
            self.equal = expected.get(self.len..end) == Some(chunk);
        }
        self.len += chunk.len();
    }

    /// Body bytes received.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no byte arrived yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The verdict once the terminator was read.
    pub fn verdict(&self) -> Verdict {
        match &self.expected {
            None => Verdict::Unchecked,
            Some(e) if self.equal && e.len() == self.len => Verdict::Match,
            Some(_) => Verdict::Mismatch,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::unstuff::{Unstuffer, stuff};

    #[test]
    fn crlf_conversion() {
        assert_eq!(to_crlf(b"a\nb\n"), b"a\r\nb\r\n");
        assert_eq!(to_crlf(b"a\r\nb\n"), b"a\r\nb\r\n");
        assert_eq!(to_crlf(b"no end"), b"no end\r\n");
        assert_eq!(to_crlf(b""), b"");
        assert_eq!(to_crlf(b"\n\n"), b"\r\n\r\n");
    }

    fn check(expected: &[u8], got: &[u8], chunk: usize) -> Verdict {
        let mut c = BodyCheck::new(Some(Arc::from(expected)));
        for piece in got.chunks(chunk) {
            c.feed(piece);
        }
        c.verdict()
    }

    #[test]
    fn verdicts() {
        let e = b"Subject: x\r\n\r\n.dot\r\n";
        for chunk in 1..=e.len() {
            assert_eq!(check(e, e, chunk), Verdict::Match);
            assert_eq!(check(e, &e[..e.len() - 1], chunk), Verdict::Mismatch);
            let mut longer = e.to_vec();
            longer.push(b'x');
            assert_eq!(check(e, &longer, chunk), Verdict::Mismatch);
            let mut flipped = e.to_vec();
            flipped[5] ^= 1;
            assert_eq!(check(e, &flipped, chunk), Verdict::Mismatch);
        }
        let mut off = BodyCheck::new(None);
        off.feed(b"abc");
        assert_eq!((off.verdict(), off.len()), (Verdict::Unchecked, 3));
    }

    #[test]
    fn hashing_mode_is_chunking_independent() {
        let body = b"one\r\n.two\r\nthree\r\n";
        let mut whole = crate::corpus::content_hasher();
        whole.write(body);
        for chunk in 1..=body.len() {
            let mut c = BodyCheck::hashing();
            for piece in body.chunks(chunk) {
                c.feed(piece);
            }
            assert_eq!(c.hash(), Some(whole.finish()), "chunk {chunk}");
            assert_eq!(c.verdict(), Verdict::Unchecked);
        }
        assert_eq!(BodyCheck::new(None).hash(), None);
    }

    /// The whole path a RETR body takes: file → CRLF → stuffed on the wire →
    /// un-stuffed at every chunk size → compared.
    #[test]
    fn file_to_wire_to_verdict() {
        let file = b"From: a\n\n.\n..two\n.\r\nlast line without end";
        let expected: Arc<[u8]> = Arc::from(to_crlf(file));
        let wire = stuff(&expected);
        for chunk in 1..=wire.len() {
            let mut un = Unstuffer::new();
            let mut c = BodyCheck::new(Some(expected.clone()));
            let mut done = false;
            for piece in wire.chunks(chunk) {
                done = un.feed(piece, |b| c.feed(b)).done;
            }
            assert!(done);
            assert_eq!(c.verdict(), Verdict::Match, "chunk {chunk}");
        }
    }
}
