//! The portable tier: a line at a time. `memchr` finds the next LF, the run
//! before it is copied in one `copy_from_slice`, and only the LF and a
//! line-start `.` go through the per-byte rule. Safe code on every target;
//! the vector tiers also use it for TOP's headers and for tails too short for
//! a block.
#![forbid(unsafe_code)]

use std::sync::OnceLock;

use memchr::memmem;

use super::{Flow, Phase, Scan};

/// Where [`transform`] stops early.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Until {
    /// Run until the input or the output is used up.
    End,
    /// Also stop as soon as TOP's headers are over (the vector tiers take
    /// the body from there).
    Body,
}

pub(crate) fn transform(
    flow: &mut Flow,
    input: &[u8],
    out: &mut [u8],
    until: Until,
) -> (usize, usize) {
    let (mut consumed, mut written) = (0, 0);
    while consumed < input.len() {
        if flow.phase == Phase::Done {
            return (input.len(), written);
        }
        if until == Until::Body && !matches!(flow.phase, Phase::Headers { .. }) {
            break;
        }
        let room = out.len() - written;
        let byte = input[consumed];
        if byte == b'\n' || (byte == b'.' && flow.line_start) {
            if room < flow.output_len(byte) {
                break;
            }
            written += special(flow, byte, &mut out[written..]);
            consumed += 1;
            continue;
        }
        // A run of ordinary bytes: up to the next LF, as much as fits. The
        // search is bounded by the room so a small output never rescans far.
        let window = &input[consumed..consumed + room.min(input.len() - consumed)];
        let run = memchr::memchr(b'\n', window).unwrap_or(window.len());
        if run == 0 {
            break;
        }
        out[written..written + run].copy_from_slice(&window[..run]);
        if let Phase::Headers { body_lines, .. } = flow.phase {
            // The line is one CR so far only if this run is its first byte.
            let cr_only = flow.line_start && run == 1 && window[0] == b'\r';
            flow.phase = Phase::Headers {
                cr_only,
                body_lines,
            };
        }
        flow.prev_cr = window[run - 1] == b'\r';
        flow.line_start = false;
        consumed += run;
        written += run;
    }
    (consumed, written)
}

/// Writes an LF or a line-start dot with what it needs before it; `out` has
/// room for it (checked by the caller).
#[inline]
fn special(flow: &mut Flow, byte: u8, out: &mut [u8]) -> usize {
    let mut written = 0;
    if byte == b'.' {
        out[0] = b'.';
        written = 1;
    } else if !flow.prev_cr {
        out[0] = b'\r';
        written = 1;
    }
    out[written] = byte;
    flow.step(byte);
    written + 1
}

pub(crate) fn scan(message: &[u8]) -> Scan {
    let mut facts = Scan {
        dot_lines: u64::from(message.first() == Some(&b'.')),
        ..Scan::default()
    };
    for p in memchr::memchr_iter(b'\n', message) {
        if p == 0 || message[p - 1] != b'\r' {
            facts.bare_lf += 1;
        }
        if message.get(p + 1) == Some(&b'.') {
            facts.dot_lines += 1;
        }
    }
    facts.crlf_octets = message.len() as u64 + facts.bare_lf;
    facts.ends_with_lf = message.last() == Some(&b'\n');
    facts
}

/// The searcher for "\n.", built once: `memmem` checks both bytes of the
/// pair in its vector prefilter, so LFs without a dot cost nothing extra.
fn dot_after_lf() -> &'static memmem::Finder<'static> {
    static FINDER: OnceLock<memmem::Finder<'static>> = OnceLock::new();
    FINDER.get_or_init(|| memmem::Finder::new(b"\n."))
}

pub(crate) fn find_dot_line(message: &[u8], from: usize) -> Option<usize> {
    if from >= message.len() {
        return None;
    }
    if from == 0 && message[0] == b'.' {
        return Some(0);
    }
    // A dot at p >= from follows an LF at p - 1 >= from - 1.
    let start = from.saturating_sub(1);
    dot_after_lf()
        .find(&message[start..])
        .map(|k| start + k + 1)
}
