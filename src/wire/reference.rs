//! The oracle: the transform, the scan and the dot search one byte at a time,
//! written to be obviously right rather than fast. Every other tier is tested
//! against this file (unit tests, proptest, `fuzz/stuff_vs_reference`), and the
//! benchmark uses it as the scalar baseline. Owns no state of its own: it
//! drives the shared [`Flow`].
#![forbid(unsafe_code)]

use super::{Flow, Phase, Scan};

/// One byte at a time: write what the byte needs, then advance the state.
pub(crate) fn transform(flow: &mut Flow, input: &[u8], out: &mut [u8]) -> (usize, usize) {
    let mut written = 0;
    for (consumed, &byte) in input.iter().enumerate() {
        if flow.phase == Phase::Done {
            return (input.len(), written);
        }
        if out.len() - written < flow.output_len(byte) {
            return (consumed, written);
        }
        if byte == b'.' && flow.line_start {
            out[written] = b'.';
            written += 1;
        }
        if byte == b'\n' && !flow.prev_cr {
            out[written] = b'\r';
            written += 1;
        }
        out[written] = byte;
        written += 1;
        flow.step(byte);
    }
    (input.len(), written)
}

pub(crate) fn scan(message: &[u8]) -> Scan {
    let mut facts = Scan::default();
    let mut previous = b'\n'; // the message starts a line
    for &byte in message {
        if byte == b'\n' && previous != b'\r' {
            facts.bare_lf += 1;
        }
        if byte == b'.' && previous == b'\n' {
            facts.dot_lines += 1;
        }
        previous = byte;
    }
    facts.crlf_octets = message.len() as u64 + facts.bare_lf;
    facts.ends_with_lf = message.last() == Some(&b'\n');
    facts
}

pub(crate) fn find_dot_line(message: &[u8], from: usize) -> Option<usize> {
    (from..message.len()).find(|&p| message[p] == b'.' && (p == 0 || message[p - 1] == b'\n'))
}
