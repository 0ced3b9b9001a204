//! The client side of RFC 1939 multi-line framing: removes the stuffed `.` at the
//! start of lines and finds the terminating `.CRLF`, streaming, chunk by chunk.
//!
//! The output is the message exactly as the server holds it with CRLF line ends:
//! the CRLF that ends the last line belongs to the body, the `.CRLF` after it
//! does not. Bodies can be megabytes, so nothing is buffered: each call hands
//! runs of the input to `emit`, and long runs without a `\n.` go out in one piece.

use memchr::memmem::Finder;
use std::sync::LazyLock;

/// `LF` followed by `.`: the only place where framing can happen mid-chunk.
static LINE_DOT: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\n."));

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// At the first byte of a line.
    LineStart,
    /// Read a `.` at the start of a line.
    Dot,
    /// Read `.` `CR` at the start of a line.
    DotCr,
    /// Inside a line.
    Mid,
    /// Read the terminating `.CRLF`.
    Done,
}

/// What one `feed` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Input bytes consumed; after `done`, the rest belongs to the next reply.
    pub consumed: usize,
    /// The terminator was read.
    pub done: bool,
}

/// Streaming un-stuffer for one multi-line reply (the part after the status line).
#[derive(Debug, Clone)]
pub struct Unstuffer {
    state: State,
}

impl Default for Unstuffer {
    fn default() -> Self {
        Self::new()
    }
}

impl Unstuffer {
    /// A decoder positioned at the first line of the body.
    pub fn new() -> Self {
        Unstuffer {
            state: State::LineStart,
        }
    }

    /// Decodes as much of `input` as belongs to this reply, handing body bytes to
    /// `emit` in order. Stops right after the terminator.
    pub fn feed(&mut self, input: &[u8], mut emit: impl FnMut(&[u8])) -> Progress {
        let mut at = 0;
        while at < input.len() {
            match self.state {
                State::Done => break,
                State::Mid => at = self.feed_mid(input, at, &mut emit),
                State::LineStart if input[at] == b'.' => {
                    self.state = State::Dot;
                    at += 1;
                }
                State::LineStart => self.state = State::Mid,
                State::Dot if input[at] == b'\r' => {
                    self.state = State::DotCr;
                    at += 1;
                }
                // The dot was stuffing: drop it, the byte after it is data.
                State::Dot => self.state = State::Mid,
                State::DotCr if input[at] == b'\n' => {
                    self.state = State::Done;
                    at += 1;
                }
                // `.CR` then not LF: the dot was stuffing, the CR is data.
                State::DotCr => {
                    emit(b"\r");
                    self.state = State::Mid;
                }
            }
        }
        Progress {
            consumed: at,
            done: self.state == State::Done,
        }
    }

    /// Emits data up to the next `LF .` (or the end of input); returns the new offset.
    fn feed_mid(&mut self, input: &[u8], at: usize, emit: &mut impl FnMut(&[u8])) -> usize {
        let rest = &input[at..];
        match LINE_DOT.find(rest) {
            Some(lf) => {
                emit(&rest[..=lf]);
                self.state = State::Dot;
                at + lf + 2
            }
            None => {
                emit(rest);
                if rest.last() == Some(&b'\n') {
                    self.state = State::LineStart;
                }
                input.len()
            }
        }
    }
}

/// Dot-stuffs `body` and appends the terminator: what a server sends for a message
/// already in CRLF form. The reference for tests and the fake server in them.
pub fn stuff(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + body.len() / 64 + 8);
    let mut line_start = true;
    for &b in body {
        if line_start && b == b'.' {
            out.push(b'.');
        }
        out.push(b);
        line_start = b == b'\n';
    }
    if !line_start && !body.is_empty() {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `wire` split into chunks of `chunk` bytes; returns (body, consumed).
    fn decode(wire: &[u8], chunk: usize) -> (Vec<u8>, usize) {
        let mut un = Unstuffer::new();
        let mut body = Vec::new();
        let mut used = 0;
        for piece in wire.chunks(chunk.max(1)) {
            let p = un.feed(piece, |b| body.extend_from_slice(b));
            used += p.consumed;
            if p.done {
                return (body, used);
            }
            assert_eq!(p.consumed, piece.len());
        }
        panic!("no terminator in {wire:?}");
    }

    const BODIES: &[&[u8]] = &[
        b"",
        b"hello\r\n",
        b".\r\n",
        b"..\r\n",
        b". leading dot\r\n.\r\n..x\r\n",
        b"a\r\n.\rb\r\n",
        b"line\r\n\r\n.\r\nafter\r\n",
        b"no dots here at all, just one long line of text\r\n",
        b".x",
    ];

    #[test]
    fn round_trip_at_every_chunk_size() {
        for body in BODIES {
            let mut wire = stuff(body);
            wire.extend_from_slice(b"+OK next reply\r\n");
            let mut expected = body.to_vec();
            if !expected.is_empty() && !expected.ends_with(b"\n") {
                expected.extend_from_slice(b"\r\n");
            }
            for chunk in 1..=wire.len() {
                let (got, used) = decode(&wire, chunk);
                assert_eq!(got, expected, "body {body:?} chunk {chunk}");
                assert_eq!(&wire[used..], b"+OK next reply\r\n", "body {body:?}");
            }
        }
    }

    #[test]
    fn terminator_only() {
        let (got, used) = decode(b".\r\n", 3);
        assert!(got.is_empty());
        assert_eq!(used, 3);
    }

    #[test]
    fn stuff_doubles_leading_dots_only() {
        assert_eq!(stuff(b".a\r\nb.c\r\n"), b"..a\r\nb.c\r\n.\r\n");
        assert_eq!(stuff(b""), b".\r\n");
    }
}
