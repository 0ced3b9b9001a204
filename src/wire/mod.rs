//! The wire layer: a stored message → its POP3 multi-line form (RFC 1939 §3).
//!
//! Owns LF → CRLF, dot-stuffing, the final `.CRLF`, TOP's header/body cut, and
//! the one-pass [`scan`] whose facts the store caches. It allocates nothing and
//! never sees a socket or a file: it reads the caller's input slice (usually a
//! window of the mmap) and writes into the caller's output buffer, chunk by
//! chunk, so a body is produced as the socket drains.
//!
//! Files:
//! - `mod.rs` (this file): the safe API, the streaming state ([`Stuffer`]) and
//!   the choice of [`Tier`], detected once and cached.
//! - `reference.rs`: the byte-at-a-time oracle every other tier is tested
//!   against; also the benchmark baseline.
//! - `portable.rs`: the fallback on every target: a line at a time with
//!   `memchr`, safe code only.
//! - `x86_64.rs`: SSE2, AVX2 and AVX-512 block loops (`std::arch`); the only
//!   file of this layer with `unsafe`.
//!
//! `cfg(shardpop_force_scalar)` and `cfg(miri)` compile the vector tiers out,
//! so the server runs the portable tier (Miri then checks the safe code).
//!
//! Semantics, for every tier: an LF gets a CR before it unless the byte before
//! it is already CR (a CR is never doubled); a lone CR is passed through as is;
//! a line that begins with `.` gets one more `.`; [`Stuffer::finish`] writes
//! the terminator `.CRLF`, preceded by CRLF when the output is not at a line
//! start. A line starts at the first byte of the message and after every LF.
// Only `x86_64.rs` opts out; everything else in the layer stays safe.
#![deny(unsafe_code)]

#[cfg(not(any(shardpop_force_scalar, miri)))]
#[cfg(target_arch = "x86_64")]
mod x86_64;

mod portable;
mod reference;

#[cfg(test)]
mod tests;

use std::sync::atomic::{AtomicU8, Ordering};

/// How much of a message RETR or TOP sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Extent {
    /// RETR: the whole message.
    Whole,
    /// TOP n m: the headers, the blank line after them, then at most
    /// `body_lines` lines of the body. A message with no blank line is all
    /// headers. The last line of the body counts even without a final LF.
    Top { body_lines: u64 },
}

/// Bytes [`Stuffer::finish`] may write: CRLF, then `.CRLF`.
pub const TERMINATOR_MAX: usize = 5;

/// Where the transform is in the message. Shared by every tier so that a
/// `Stuffer` means the same thing whichever tier drives it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    /// TOP, still in the headers. `cr_only`: the current line so far is one
    /// CR, so an LF now ends the blank line (CRLF form). `body_lines` is TOP's m.
    Headers { cr_only: bool, body_lines: u64 },
    /// In the body (RETR: the whole message is "body"). At most `lines_left`
    /// more LFs are sent; `u64::MAX` means no limit (no message has that many
    /// lines, so it never runs out).
    Body { lines_left: u64 },
    /// TOP's line budget is spent; the rest of the input is skipped.
    Done,
    /// [`Stuffer::finish`] has written the terminator.
    Finished,
}

/// The streaming state carried across chunks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Flow {
    /// The next input byte begins a line: no byte consumed yet, or the last
    /// consumed byte was LF. Output is then also at a line start.
    pub(crate) line_start: bool,
    /// The last consumed byte was CR, so an LF now already has its CR on the
    /// wire. (The CR itself was written when it was consumed: a lone CR is
    /// passed through, so it never has to wait for the next byte.)
    pub(crate) prev_cr: bool,
    pub(crate) phase: Phase,
}

/// No limit on body lines (see [`Phase::Body`]).
pub(crate) const LINES_UNLIMITED: u64 = u64::MAX;

impl Flow {
    fn new(extent: Extent) -> Flow {
        let phase = match extent {
            Extent::Whole => Phase::Body {
                lines_left: LINES_UNLIMITED,
            },
            Extent::Top { body_lines } => Phase::Headers {
                cr_only: false,
                body_lines,
            },
        };
        Flow {
            line_start: true,
            prev_cr: false,
            phase,
        }
    }

    /// Output bytes that consuming `byte` produces: the byte, a CR before a
    /// bare LF, a '.' before a line-start '.'.
    #[inline]
    pub(crate) fn output_len(&self, byte: u8) -> usize {
        1 + usize::from(byte == b'\n' && !self.prev_cr)
            + usize::from(byte == b'.' && self.line_start)
    }

    /// Advances the state over one consumed byte (its output already written).
    #[inline]
    pub(crate) fn step(&mut self, byte: u8) {
        match self.phase {
            Phase::Headers {
                cr_only,
                body_lines,
            } => {
                if byte == b'\n' {
                    if self.line_start || cr_only {
                        self.phase = Flow::body(body_lines);
                    } else {
                        self.phase = Phase::Headers {
                            cr_only: false,
                            body_lines,
                        };
                    }
                } else {
                    let cr_only = self.line_start && byte == b'\r';
                    self.phase = Phase::Headers {
                        cr_only,
                        body_lines,
                    };
                }
            }
            Phase::Body { lines_left } if byte == b'\n' && lines_left != LINES_UNLIMITED => {
                self.phase = Flow::body(lines_left - 1);
            }
            Phase::Body { .. } | Phase::Done | Phase::Finished => {}
        }
        self.prev_cr = byte == b'\r';
        self.line_start = byte == b'\n';
    }

    /// The phase for a body with `lines_left` lines still to send.
    pub(crate) fn body(lines_left: u64) -> Phase {
        if lines_left == 0 {
            Phase::Done
        } else {
            Phase::Body { lines_left }
        }
    }
}

/// An implementation of the transform. Servers use the detected one through
/// [`Stuffer::new`], [`scan`] and [`find_dot_line`]; tests, benchmarks and
/// the fuzz target pick tiers by hand to compare them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tier {
    /// `reference.rs`: one byte at a time, the oracle.
    Reference,
    /// `portable.rs`: a line at a time with `memchr`; every target.
    Portable,
    /// `x86_64.rs`, 64-byte blocks in four SSE2 registers.
    Sse2,
    /// `x86_64.rs`, 64-byte blocks in two AVX2 registers.
    Avx2,
    /// `x86_64.rs`, 64-byte blocks in one AVX-512 register (AVX-512BW).
    Avx512,
}

/// The detected tier: 0 until detection has run, else `1 + index in Tier::ALL`.
static DETECTED: AtomicU8 = AtomicU8::new(0);

impl Tier {
    /// Every tier, slowest first.
    pub const ALL: [Tier; 5] = [
        Tier::Reference,
        Tier::Portable,
        Tier::Sse2,
        Tier::Avx2,
        Tier::Avx512,
    ];

    /// A short lowercase name, for benchmark ids and logs.
    pub fn name(self) -> &'static str {
        match self {
            Tier::Reference => "reference",
            Tier::Portable => "portable",
            Tier::Sse2 => "sse2",
            Tier::Avx2 => "avx2",
            Tier::Avx512 => "avx512",
        }
    }

    /// Whether this build and this CPU can run the tier.
    pub fn is_available(self) -> bool {
        match self {
            Tier::Reference | Tier::Portable => true,
            #[cfg(all(target_arch = "x86_64", not(any(shardpop_force_scalar, miri))))]
            Tier::Sse2 => true,
            #[cfg(all(target_arch = "x86_64", not(any(shardpop_force_scalar, miri))))]
            Tier::Avx2 => x86_64::Avx2::new().is_some(),
            #[cfg(all(target_arch = "x86_64", not(any(shardpop_force_scalar, miri))))]
            Tier::Avx512 => x86_64::Avx512::new().is_some(),
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }

    /// The available tiers, slowest first.
    pub fn available() -> impl Iterator<Item = Tier> {
        Tier::ALL.into_iter().filter(|tier| tier.is_available())
    }

    /// The fastest available tier. The CPU is probed on the first call only.
    pub fn detected() -> Tier {
        let cached = DETECTED.load(Ordering::Relaxed);
        if cached != 0 {
            return Tier::ALL[usize::from(cached - 1)];
        }
        let tier = Tier::available().last().unwrap_or(Tier::Portable);
        let index = Tier::ALL.iter().position(|&t| t == tier).unwrap_or(1);
        DETECTED.store(index as u8 + 1, Ordering::Relaxed);
        tracing::debug!(?tier, "wire: transform tier detected");
        tier
    }

    /// [`scan`] with this tier. Panics if the tier is not available.
    pub fn scan(self, message: &[u8]) -> Scan {
        match self.backend() {
            Backend::Reference => reference::scan(message),
            Backend::Portable => portable::scan(message),
            #[cfg(all(target_arch = "x86_64", not(any(shardpop_force_scalar, miri))))]
            Backend::Sse2 => x86_64::scan_sse2(message),
            #[cfg(all(target_arch = "x86_64", not(any(shardpop_force_scalar, miri))))]
            Backend::Avx2(avx2) => avx2.scan(message),
            #[cfg(all(target_arch = "x86_64", not(any(shardpop_force_scalar, miri))))]
            Backend::Avx512(avx512) => avx512.scan(message),
        }
    }

    /// [`find_dot_line`] with this tier. Panics if the tier is not available.
    pub fn find_dot_line(self, message: &[u8], from: usize) -> Option<usize> {
        match self.backend() {
            Backend::Reference => reference::find_dot_line(message, from),
            Backend::Portable => portable::find_dot_line(message, from),
            #[cfg(all(target_arch = "x86_64", not(any(shardpop_force_scalar, miri))))]
            Backend::Sse2 => x86_64::find_dot_line_sse2(message, from),
            #[cfg(all(target_arch = "x86_64", not(any(shardpop_force_scalar, miri))))]
            Backend::Avx2(avx2) => avx2.find_dot_line(message, from),
            #[cfg(all(target_arch = "x86_64", not(any(shardpop_force_scalar, miri))))]
            Backend::Avx512(avx512) => avx512.find_dot_line(message, from),
        }
    }

    fn backend(self) -> Backend {
        match self {
            Tier::Reference => Backend::Reference,
            Tier::Portable => Backend::Portable,
            #[cfg(all(target_arch = "x86_64", not(any(shardpop_force_scalar, miri))))]
            Tier::Sse2 => Backend::Sse2,
            #[cfg(all(target_arch = "x86_64", not(any(shardpop_force_scalar, miri))))]
            Tier::Avx2 => match x86_64::Avx2::new() {
                Some(avx2) => Backend::Avx2(avx2),
                None => panic!("wire: tier {self:?} is not available on this CPU"),
            },
            #[cfg(all(target_arch = "x86_64", not(any(shardpop_force_scalar, miri))))]
            Tier::Avx512 => match x86_64::Avx512::new() {
                Some(avx512) => Backend::Avx512(avx512),
                None => panic!("wire: tier {self:?} is not available on this CPU"),
            },
            #[allow(unreachable_patterns)]
            _ => panic!("wire: tier {self:?} is not available in this build"),
        }
    }
}

/// A tier that is known to run here. `Avx2` and `Avx512` hold the proof that
/// the CPU has the features, so calling through them needs no check and no
/// `unsafe` here.
#[derive(Clone, Copy, Debug)]
enum Backend {
    Reference,
    Portable,
    #[cfg(all(target_arch = "x86_64", not(any(shardpop_force_scalar, miri))))]
    Sse2,
    #[cfg(all(target_arch = "x86_64", not(any(shardpop_force_scalar, miri))))]
    Avx2(x86_64::Avx2),
    #[cfg(all(target_arch = "x86_64", not(any(shardpop_force_scalar, miri))))]
    Avx512(x86_64::Avx512),
}

/// Turns one message into its RETR or TOP wire form, chunk by chunk.
///
/// ```
/// use shardpop::wire::{Extent, Stuffer, TERMINATOR_MAX};
/// let message = b"Subject: hi\n\n.dot\nbye";
/// let mut out = [0u8; 64];
/// let mut stuffer = Stuffer::new(Extent::Whole);
/// let (consumed, mut written) = stuffer.transform(message, &mut out);
/// assert_eq!(consumed, message.len());
/// written += stuffer.finish(&mut out[written..]);
/// assert_eq!(&out[..written], b"Subject: hi\r\n\r\n..dot\r\nbye\r\n.\r\n");
/// ```
#[derive(Clone, Debug)]
pub struct Stuffer {
    backend: Backend,
    flow: Flow,
}

impl Stuffer {
    /// Output space that guarantees [`transform`](Stuffer::transform) makes
    /// progress on non-empty input: one input byte yields at most two output
    /// bytes (CR LF for a bare LF, `..` for a line-start dot).
    pub const OUT_MIN: usize = 2;

    /// A stuffer on the detected (fastest) tier.
    pub fn new(extent: Extent) -> Stuffer {
        Stuffer {
            backend: Tier::detected().backend(),
            flow: Flow::new(extent),
        }
    }

    /// A stuffer on a chosen tier, or `None` if the tier is not available.
    pub fn with_tier(extent: Extent, tier: Tier) -> Option<Stuffer> {
        tier.is_available().then(|| Stuffer {
            backend: tier.backend(),
            flow: Flow::new(extent),
        })
    }

    /// Transforms a prefix of `input` into `out`; returns `(consumed, written)`.
    ///
    /// Resumable: feed the message in chunks of any size, split anywhere (even
    /// between CR and LF), passing each time the input from the first byte not
    /// yet consumed; the concatenated output is the same for every split.
    /// With `out.len() >= OUT_MIN` and non-empty input, `consumed > 0`.
    ///
    /// Once [`is_input_done`](Stuffer::is_input_done) (TOP's budget spent), it
    /// returns `(input.len(), 0)`: the rest of the message is skipped without
    /// being read, so a caller that keeps feeding still ends.
    ///
    /// Panics if called after [`finish`](Stuffer::finish) (a caller bug).
    pub fn transform(&mut self, input: &[u8], out: &mut [u8]) -> (usize, usize) {
        assert!(
            self.flow.phase != Phase::Finished,
            "wire: transform after finish"
        );
        if self.flow.phase == Phase::Done {
            return (input.len(), 0);
        }
        match self.backend {
            Backend::Reference => reference::transform(&mut self.flow, input, out),
            Backend::Portable => {
                portable::transform(&mut self.flow, input, out, portable::Until::End)
            }
            #[cfg(all(target_arch = "x86_64", not(any(shardpop_force_scalar, miri))))]
            Backend::Sse2 => x86_64::transform_sse2(&mut self.flow, input, out),
            #[cfg(all(target_arch = "x86_64", not(any(shardpop_force_scalar, miri))))]
            Backend::Avx2(avx2) => avx2.transform(&mut self.flow, input, out),
            #[cfg(all(target_arch = "x86_64", not(any(shardpop_force_scalar, miri))))]
            Backend::Avx512(avx512) => avx512.transform(&mut self.flow, input, out),
        }
    }

    /// [`transform`](Stuffer::transform) onto the end of `out`: appends at
    /// most `room` bytes and returns how many input bytes it consumed. The
    /// same bytes as `transform` into a window of `room` bytes, under the
    /// same contract. On the vector tiers the body is stored straight into
    /// `out`'s spare capacity, which is never zeroed first: RETR's chunks
    /// are written once, not zeroed and then written.
    pub fn transform_append(&mut self, input: &[u8], out: &mut Vec<u8>, room: usize) -> usize {
        assert!(
            self.flow.phase != Phase::Finished,
            "wire: transform after finish"
        );
        if self.flow.phase == Phase::Done {
            return input.len();
        }
        match self.backend {
            Backend::Reference | Backend::Portable => {
                append_zeroed(input, out, room, |input, window| {
                    self.transform(input, window)
                })
            }
            #[cfg(all(target_arch = "x86_64", not(any(shardpop_force_scalar, miri))))]
            Backend::Sse2 => x86_64::transform_append_sse2(&mut self.flow, input, out, room),
            #[cfg(all(target_arch = "x86_64", not(any(shardpop_force_scalar, miri))))]
            Backend::Avx2(avx2) => avx2.transform_append(&mut self.flow, input, out, room),
            #[cfg(all(target_arch = "x86_64", not(any(shardpop_force_scalar, miri))))]
            Backend::Avx512(avx512) => avx512.transform_append(&mut self.flow, input, out, room),
        }
    }

    /// TOP only: true once the line budget is spent, so no more input is
    /// needed; call [`finish`](Stuffer::finish) next. Always false for RETR.
    pub fn is_input_done(&self) -> bool {
        self.flow.phase == Phase::Done
    }

    /// After the last input (or once [`is_input_done`](Stuffer::is_input_done)):
    /// writes CRLF if the output is not at a line start, then `.CRLF`.
    /// Returns the bytes written. A second call writes nothing.
    ///
    /// Panics if `out.len() < TERMINATOR_MAX` (a caller bug).
    pub fn finish(&mut self, out: &mut [u8]) -> usize {
        assert!(
            out.len() >= TERMINATOR_MAX,
            "wire: finish needs TERMINATOR_MAX bytes"
        );
        if self.flow.phase == Phase::Finished {
            return 0;
        }
        let terminator: &[u8] = if self.flow.line_start {
            b".\r\n"
        } else {
            b"\r\n.\r\n"
        };
        out[..terminator.len()].copy_from_slice(terminator);
        self.flow.phase = Phase::Finished;
        self.flow.line_start = true;
        self.flow.prev_cr = false;
        terminator.len()
    }
}

/// Runs `transform` on a zeroed window at the end of `out` and keeps what it
/// wrote; returns what it consumed. The window is `room`, or less where
/// `input` cannot fill it (one input byte makes at most two), which changes
/// nothing in the output and zeroes no more than can be written.
fn append_zeroed(
    input: &[u8],
    out: &mut Vec<u8>,
    room: usize,
    transform: impl FnOnce(&[u8], &mut [u8]) -> (usize, usize),
) -> usize {
    let len = out.len();
    out.resize(len + room.min(2 * input.len()), 0);
    let (consumed, written) = transform(input, &mut out[len..]);
    out.truncate(len + written);
    consumed
}

/// Facts one pass finds, cached by the store so a second RETR does not rescan.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Scan {
    /// RFC 1939 size: the length with each bare LF counted as 2 (no stuffing,
    /// no terminator).
    pub crlf_octets: u64,
    /// LFs without a CR right before them. Zero: the message is already CRLF
    /// and can be sent from the mmap as it is, with [`find_dot_line`].
    pub bare_lf: u64,
    /// Lines beginning with `.`: each costs one stuffed byte on the wire.
    pub dot_lines: u64,
    /// The last byte is LF (so the terminator needs no CRLF before it).
    pub ends_with_lf: bool,
}

/// Scans a whole message once, on the detected tier.
pub fn scan(message: &[u8]) -> Scan {
    Tier::detected().scan(message)
}

/// CRLF fast path for messages with `bare_lf == 0`: the smallest `p >= from`
/// with `message[p] == b'.'` and `p == 0 || message[p - 1] == b'\n'`.
///
/// The sender writes message ranges from the mmap as they are (writev) and
/// inserts one `.` before each such `p`, then searches again from `p + 1`.
pub fn find_dot_line(message: &[u8], from: usize) -> Option<usize> {
    Tier::detected().find_dot_line(message, from)
}
