//! A RETR/TOP body on its way out, streamed from the mmap as the socket
//! drains; the connection never holds more than its output bound of it.
//!
//! Two modes:
//! - **Transform** (bare LFs in the file, or TOP): `wire::Stuffer` turns
//!   LF→CRLF and dot-stuffs chunk by chunk into the connection's output
//!   buffer, under the SIGBUS guard.
//! - **Raw** (the file already has CRLF line ends, e.g. Dovecot's
//!   `mail_save_crlf`): ranges of the mmap go to `writev` as they are, with a
//!   one-byte "." slice before each line that begins with '.'; nothing is
//!   copied in user space.
#![forbid(unsafe_code)]

use std::io::IoSlice;
use std::sync::Arc;

use crate::store::body::{MessageMap, Truncated};
use crate::wire::{self, Extent, Stuffer, TERMINATOR_MAX};

/// Input bytes transformed per step: large enough for few syscalls per
/// message, small enough that input and output stay in L2.
const CHUNK_BYTES: usize = 16 * 1024;
/// Slices per writev in raw mode (well under IOV_MAX), the queued replies
/// included.
pub const IOVECS_MAX: usize = 64;
/// Bytes offered per writev in raw mode: about what a socket buffer takes.
const RAW_BYTES_MAX: usize = 256 * 1024;

/// The streaming state of one body.
pub struct BodyStream {
    /// Shared with in-flight sends, which may outlive the stream (a send the
    /// kernel still holds keeps the map alive).
    map: Arc<MessageMap>,
    /// Input consumed (transform) or sent (raw).
    pos: usize,
    mode: Mode,
    done: bool,
}

enum Mode {
    Transform(Stuffer),
    /// `next_dot`: the next line start at or after `pos` that begins with
    /// '.' and whose extra '.' has not been sent yet.
    Raw {
        next_dot: Option<usize>,
    },
}

/// One piece of a raw writev.
#[derive(Clone, Copy, Debug)]
enum Segment {
    /// A stuffed '.'; `after` is the next dot line once it is sent.
    Dot { after: Option<usize> },
    /// Bytes of the file.
    Range { start: usize, end: usize },
}

impl BodyStream {
    /// Starts a body. `crlf` says the file is known to have no bare LF (its
    /// length equals its RFC 1939 size); TOP always transforms, since it
    /// sends a small prefix and must count lines.
    pub fn new(map: MessageMap, extent: Extent, crlf: bool) -> Result<BodyStream, Truncated> {
        let mode = if crlf && extent == Extent::Whole {
            Mode::Raw {
                next_dot: map.read_guarded(|bytes| wire::find_dot_line(bytes, 0))?,
            }
        } else {
            Mode::Transform(Stuffer::new(extent))
        };
        Ok(BodyStream {
            map: Arc::new(map),
            pos: 0,
            mode,
            done: false,
        })
    }

    /// True once the terminator is queued: the body is complete.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Raw mode: true while file ranges remain to be sent.
    pub fn has_raw_left(&self) -> bool {
        matches!(self.mode, Mode::Raw { .. }) && self.pos < self.map.len()
    }

    /// Appends more of the body to `out` while it is shorter than `limit`;
    /// appends the terminator at the end. Returns whether anything was added.
    /// In raw mode only the terminator is appended, once every range is sent.
    pub fn fill(&mut self, out: &mut Vec<u8>, limit: usize) -> Result<bool, Truncated> {
        if self.done || out.len() >= limit {
            return Ok(false);
        }
        match &mut self.mode {
            Mode::Raw { .. } => {
                if self.pos < self.map.len() {
                    return Ok(false);
                }
                let ends_line = self
                    .map
                    .read_guarded(|bytes| bytes.is_empty() || bytes.ends_with(b"\n"))?;
                out.extend_from_slice(if ends_line { b".\r\n" } else { b"\r\n.\r\n" });
                self.done = true;
                Ok(true)
            }
            Mode::Transform(stuffer) => {
                let pos = &mut self.pos;
                let done = &mut self.done;
                self.map
                    .read_guarded(|bytes| transform(stuffer, bytes, pos, out, limit, done))?;
                Ok(true)
            }
        }
    }

    /// Raw mode: the next file ranges and stuffed dots to send after
    /// `prefix_bytes` of queued replies. `None` when no raw range is due.
    /// Boxed: a plan is ~1.5 KiB, and the `Outgoing` that carries it moves
    /// between the connection and the backend several times per write.
    pub fn plan_raw(&self, prefix_bytes: usize) -> Result<Option<Box<RawPlan>>, Truncated> {
        let Mode::Raw { next_dot } = self.mode else {
            return Ok(None);
        };
        if self.pos >= self.map.len() {
            return Ok(None);
        }
        let mut raw = Box::new(RawPlan {
            map: Arc::clone(&self.map),
            segments: [Segment::Range { start: 0, end: 0 }; IOVECS_MAX - 1],
            count: 0,
        });
        // Finding dot lines reads the mapping in user space: guarded.
        raw.count = self.map.read_guarded(|bytes| {
            plan(bytes, self.pos, next_dot, prefix_bytes, &mut raw.segments)
        })?;
        Ok(Some(raw))
    }

    /// Raw mode: `sent` bytes of `plan` reached the socket.
    pub fn advance_raw(&mut self, plan: &RawPlan, sent: usize) {
        let Mode::Raw { next_dot } = &mut self.mode else {
            return;
        };
        let mut left = sent;
        for segment in &plan.segments[..plan.count] {
            match *segment {
                Segment::Dot { after } if left >= 1 => {
                    left -= 1;
                    *next_dot = after;
                }
                Segment::Range { start, end } if left > 0 => {
                    let took = left.min(end - start);
                    self.pos = start + took;
                    left -= took;
                }
                _ => break,
            }
        }
    }
}

/// File ranges and stuffed dots for one writev; holds the map alive for as
/// long as a send of it is in flight.
#[derive(Debug)]
pub struct RawPlan {
    map: Arc<MessageMap>,
    segments: [Segment; IOVECS_MAX - 1],
    count: usize,
}

impl RawPlan {
    /// Writes the plan's slices into `iov` (at least `IOVECS_MAX - 1` long);
    /// returns how many.
    pub fn slices<'a>(&'a self, iov: &mut [IoSlice<'a>]) -> usize {
        let bytes = self.map.raw();
        for (slot, segment) in iov.iter_mut().zip(&self.segments[..self.count]) {
            *slot = IoSlice::new(match *segment {
                Segment::Dot { .. } => b".",
                Segment::Range { start, end } => &bytes[start..end],
            });
        }
        self.count
    }

    /// Bytes the plan covers.
    pub fn len(&self) -> usize {
        self.segments[..self.count]
            .iter()
            .map(|s| match *s {
                Segment::Dot { .. } => 1,
                Segment::Range { start, end } => end - start,
            })
            .sum()
    }

    /// True when the plan covers nothing.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
}

/// Fills `segments` with the next file ranges and stuffed dots, starting at
/// `at` with `dot` the next dot line not yet stuffed. Returns the count.
fn plan(
    bytes: &[u8],
    mut at: usize,
    mut dot: Option<usize>,
    prefix: usize,
    segments: &mut [Segment],
) -> usize {
    let mut count = 0;
    let mut offered = prefix;
    while count + 2 <= segments.len() && at < bytes.len() && offered < RAW_BYTES_MAX {
        if dot == Some(at) {
            let after = wire::find_dot_line(bytes, at + 1);
            segments[count] = Segment::Dot { after };
            count += 1;
            dot = after;
        }
        let end = dot.unwrap_or(bytes.len()).min(at + RAW_BYTES_MAX);
        segments[count] = Segment::Range { start: at, end };
        count += 1;
        offered += end - at;
        at = end;
    }
    count
}

/// The transform loop, run under the SIGBUS guard.
fn transform(
    stuffer: &mut Stuffer,
    bytes: &[u8],
    pos: &mut usize,
    out: &mut Vec<u8>,
    limit: usize,
    done: &mut bool,
) {
    // The whole fill in one allocation. Growing by doubling would copy what
    // the earlier chunks wrote: that `memmove` was 1.4% of a RETR's CPU on
    // epoll and 2.8% on io_uring, where the buffer in flight also keeps the
    // allocator from growing the next one in place (`scripts/profile-server
    // download`, 1-5 MB messages).
    let left = bytes.len().saturating_sub(*pos);
    out.reserve(
        room_for(left).min(limit.saturating_sub(out.len()) + room_for(CHUNK_BYTES))
            + TERMINATOR_MAX,
    );
    while out.len() < limit {
        if *pos >= bytes.len() || stuffer.is_input_done() {
            let len = out.len();
            out.resize(len + TERMINATOR_MAX, 0);
            let written = stuffer.finish(&mut out[len..]);
            out.truncate(len + written);
            *done = true;
            return;
        }
        let input = &bytes[*pos..(*pos + CHUNK_BYTES).min(bytes.len())];
        // Appended into the spare capacity: the room is not zeroed first.
        *pos += stuffer.transform_append(input, out, room_for(input.len()));
    }
}

/// Output room for `input` bytes: mail's usual growth (a CR per line of 16
/// bytes or more), not the worst case of two bytes per byte, so the buffer
/// grows no larger than a chunk needs. Input with more growth than this is
/// simply taken over more steps (the stuffer consumes what fits).
fn room_for(input: usize) -> usize {
    input + input / 16 + 64 + Stuffer::OUT_MIN
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{self, Write};
    use std::path::Path;

    /// A writer that takes at most `cap` bytes per call, like a busy socket.
    struct Trickle {
        got: Vec<u8>,
        cap: usize,
    }

    impl Write for Trickle {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let n = buf.len().min(self.cap);
            self.got.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            let mut total = 0;
            for b in bufs {
                let n = b.len().min(self.cap - total);
                self.got.extend_from_slice(&b[..n]);
                total += n;
                if total == self.cap {
                    break;
                }
            }
            Ok(total)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn map_of(dir: &Path, bytes: &[u8]) -> MessageMap {
        let path = dir.join("m");
        std::fs::write(&path, bytes).unwrap();
        MessageMap::open(&path).unwrap()
    }

    /// The whole wire form by the reference transform.
    fn reference(bytes: &[u8], extent: Extent) -> Vec<u8> {
        let mut s = Stuffer::new(extent);
        let mut out = vec![0; 2 * bytes.len() + 16];
        let (c, mut w) = s.transform(bytes, &mut out);
        assert_eq!(c, bytes.len());
        w += s.finish(&mut out[w..]);
        out.truncate(w);
        out
    }

    fn stream(body: &mut BodyStream, cap: usize, limit: usize) -> Vec<u8> {
        let mut sock = Trickle {
            got: Vec::new(),
            cap,
        };
        let mut out = Vec::new();
        while !body.is_done() || !out.is_empty() {
            match body.plan_raw(out.len()).unwrap() {
                Some(plan) => {
                    let mut iov = [IoSlice::new(&[]); IOVECS_MAX];
                    iov[0] = IoSlice::new(&out);
                    let count = 1 + plan.slices(&mut iov[1..]);
                    let n = sock.write_vectored(&iov[..count]).unwrap();
                    let from_out = n.min(out.len());
                    out.drain(..from_out);
                    body.advance_raw(&plan, n - from_out);
                }
                None => {
                    body.fill(&mut out, limit).unwrap();
                    let n = sock.write(&out).unwrap();
                    out.drain(..n);
                }
            }
        }
        sock.got
    }

    #[test]
    fn raw_and_transform_give_the_reference_wire_form() {
        let tmp = tempfile::tempdir().unwrap();
        let crlf_bodies: [&[u8]; 6] = [
            b"",
            b".\r\n",
            b"a\r\n.b\r\n..c\r\n.\r\nend",
            b".start\r\n\r\n.\r\n.",
            b"x\ry\r\n.z\r\n",
            &b"line\r\n.dot\r\n".repeat(5000),
        ];
        for body in crlf_bodies {
            for cap in [1, 3, 7, 64, 1 << 20] {
                let want = reference(body, Extent::Whole);
                let mut raw =
                    BodyStream::new(map_of(tmp.path(), body), Extent::Whole, true).unwrap();
                assert_eq!(
                    stream(&mut raw, cap, 4096),
                    want,
                    "raw cap {cap} {:?}",
                    String::from_utf8_lossy(body)
                );
                let mut tr =
                    BodyStream::new(map_of(tmp.path(), body), Extent::Whole, false).unwrap();
                assert_eq!(stream(&mut tr, cap, 4096), want, "transform cap {cap}");
            }
        }
    }

    #[test]
    fn bodies_that_grow_most_still_give_the_reference_wire_form() {
        // Every byte doubles (bare LFs, dot lines): more growth than one
        // step's room, so each chunk takes several steps.
        let tmp = tempfile::tempdir().unwrap();
        let bodies = [
            b"\n".repeat(70_000),
            b".\n".repeat(40_000),
            b"a\n..\n\n.".repeat(9_000),
        ];
        for body in bodies {
            let want = reference(&body, Extent::Whole);
            for limit in [1, 4096, 1 << 20] {
                let path = tmp.path().join("m");
                std::fs::write(&path, &body).unwrap();
                let octets = 2 * body.len() as u64;
                let map = MessageMap::open_sized(&path, octets).unwrap();
                let mut tr = BodyStream::new(map, Extent::Whole, false).unwrap();
                assert_eq!(stream(&mut tr, 1 << 20, limit), want, "limit {limit}");
            }
        }
    }

    #[test]
    fn transform_output_stays_bounded() {
        let tmp = tempfile::tempdir().unwrap();
        let body = b".x\n".repeat(100_000);
        let mut s = BodyStream::new(map_of(tmp.path(), &body), Extent::Whole, false).unwrap();
        let mut out = Vec::new();
        s.fill(&mut out, 8192).unwrap();
        assert!(out.len() < 8192 + 2 * CHUNK_BYTES + 16, "{}", out.len());
        assert!(!s.is_done());
    }

    /// A fill of many chunks takes its whole room before the first chunk.
    /// Grown chunk by chunk instead, the buffer would double and copy the
    /// chunks written before, and end with the capacity of two chunks, not
    /// of the whole fill.
    #[test]
    fn a_fill_takes_its_room_at_once() {
        let tmp = tempfile::tempdir().unwrap();
        let body = b"an ordinary line of mail, LF only\n".repeat(30_000);
        let limit = 32 * 1024;
        let mut s = BodyStream::new(map_of(tmp.path(), &body), Extent::Whole, false).unwrap();
        let mut out = Vec::new();
        s.fill(&mut out, limit).unwrap();
        assert!(out.len() >= limit, "{}", out.len());
        let whole_fill = limit + room_for(CHUNK_BYTES);
        assert!(
            (whole_fill..=whole_fill + TERMINATOR_MAX).contains(&out.capacity()),
            "capacity {} for {} bytes",
            out.capacity(),
            out.len()
        );
        // A small message takes what it needs, not a whole fill's room.
        let mut small = BodyStream::new(map_of(tmp.path(), b"hi\n"), Extent::Whole, false).unwrap();
        let mut out = Vec::new();
        small.fill(&mut out, limit).unwrap();
        assert_eq!(out, b"hi\r\n.\r\n");
        assert!(
            out.capacity() <= room_for(3) + TERMINATOR_MAX,
            "{}",
            out.capacity()
        );
    }

    #[test]
    fn top_transforms_even_crlf_files() {
        let tmp = tempfile::tempdir().unwrap();
        let body = b"H: 1\r\n\r\nb1\r\n.b2\r\nb3\r\n";
        let mut s = BodyStream::new(
            map_of(tmp.path(), body),
            Extent::Top { body_lines: 2 },
            true,
        )
        .unwrap();
        assert!(s.plan_raw(0).unwrap().is_none());
        assert_eq!(stream(&mut s, 5, 4096), b"H: 1\r\n\r\nb1\r\n..b2\r\n.\r\n");
    }
}
