//! x86_64 tiers (placeholder: delegates to the portable tier until the SSE2
//! and AVX2 block loops land).

use super::{Flow, Scan, portable};

/// Proof that the CPU has AVX2: only [`Avx2::new`] builds one.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Avx2(());

impl Avx2 {
    pub(crate) fn new() -> Option<Avx2> {
        std::is_x86_feature_detected!("avx2").then_some(Avx2(()))
    }

    pub(crate) fn transform(self, flow: &mut Flow, input: &[u8], out: &mut [u8]) -> (usize, usize) {
        portable::transform(flow, input, out, portable::Until::End)
    }

    pub(crate) fn scan(self, message: &[u8]) -> Scan {
        portable::scan(message)
    }

    pub(crate) fn find_dot_line(self, message: &[u8], from: usize) -> Option<usize> {
        portable::find_dot_line(message, from)
    }
}

pub(crate) fn transform_sse2(flow: &mut Flow, input: &[u8], out: &mut [u8]) -> (usize, usize) {
    portable::transform(flow, input, out, portable::Until::End)
}

pub(crate) fn scan_sse2(message: &[u8]) -> Scan {
    portable::scan(message)
}

pub(crate) fn find_dot_line_sse2(message: &[u8], from: usize) -> Option<usize> {
    portable::find_dot_line(message, from)
}
