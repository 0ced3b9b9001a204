//! The x86_64 tiers: the transform, the scan and the dot search over 16-byte
//! (SSE2, every x86_64 CPU) or 32-byte (AVX2, detected at run time) blocks.
//! The only file of the wire layer with `unsafe`: vector loads and stores
//! through raw pointers, and calls into `#[target_feature(enable = "avx2")]`
//! functions, which are sound only behind the [`Avx2`] proof.
//!
//! The algorithm is written once, generic over [`Vector`], and inlined into
//! one function per ISA (as memchr does): the `#[inline(always)]` trait
//! methods take the target features of the function they are inlined into.
//!
//! The transform copies each block to the output whole, then fixes up the few
//! places where a byte must be inserted (a CR before a bare LF, a `.` before a
//! line-start `.`): it writes the inserted byte and stores the rest of the
//! block again, one byte further on. Most blocks of mail have no insertion at
//! all, and a block with k insertions costs k extra loads and stores. TOP's
//! headers and the tails shorter than two blocks go to the portable tier.

use core::arch::x86_64::{
    __m128i, __m256i, _mm_cmpeq_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_set1_epi8,
    _mm_storeu_si128, _mm256_cmpeq_epi8, _mm256_loadu_si256, _mm256_movemask_epi8,
    _mm256_set1_epi8, _mm256_storeu_si256,
};

use super::{Flow, LINES_UNLIMITED, Phase, Scan, portable};

/// A vector of `BYTES` lanes, the only thing the block loops need.
trait Vector: Copy {
    const BYTES: usize;

    /// # Safety
    /// `src` is valid for `BYTES` reads, and the CPU has the vector's feature.
    unsafe fn load(src: *const u8) -> Self;

    /// # Safety
    /// `dst` is valid for `BYTES` writes, and the CPU has the vector's feature.
    unsafe fn store(self, dst: *mut u8);

    /// Bit i is set when lane i equals `byte`; bits from `BYTES` up are 0.
    ///
    /// # Safety
    /// The CPU has the vector's feature.
    unsafe fn eq_mask(self, byte: u8) -> u64;
}

#[derive(Clone, Copy)]
struct Sse2(__m128i);

impl Vector for Sse2 {
    const BYTES: usize = 16;

    #[inline(always)]
    unsafe fn load(src: *const u8) -> Sse2 {
        // SAFETY: the caller guarantees 16 readable bytes; loadu needs no alignment.
        Sse2(unsafe { _mm_loadu_si128(src.cast()) })
    }

    #[inline(always)]
    unsafe fn store(self, dst: *mut u8) {
        // SAFETY: the caller guarantees 16 writable bytes; storeu needs no alignment.
        unsafe { _mm_storeu_si128(dst.cast(), self.0) }
    }

    #[inline(always)]
    unsafe fn eq_mask(self, byte: u8) -> u64 {
        // SAFETY: SSE2 is part of the x86_64 baseline.
        let mask = unsafe { _mm_movemask_epi8(_mm_cmpeq_epi8(self.0, _mm_set1_epi8(byte as i8))) };
        u64::from(mask as u16)
    }
}

#[derive(Clone, Copy)]
struct Avx2Vector(__m256i);

impl Vector for Avx2Vector {
    const BYTES: usize = 32;

    #[inline(always)]
    unsafe fn load(src: *const u8) -> Avx2Vector {
        // SAFETY: the caller guarantees 32 readable bytes and AVX2.
        Avx2Vector(unsafe { _mm256_loadu_si256(src.cast()) })
    }

    #[inline(always)]
    unsafe fn store(self, dst: *mut u8) {
        // SAFETY: the caller guarantees 32 writable bytes and AVX2.
        unsafe { _mm256_storeu_si256(dst.cast(), self.0) }
    }

    #[inline(always)]
    unsafe fn eq_mask(self, byte: u8) -> u64 {
        // SAFETY: the caller guarantees AVX2.
        let mask = unsafe {
            _mm256_movemask_epi8(_mm256_cmpeq_epi8(self.0, _mm256_set1_epi8(byte as i8)))
        };
        u64::from(mask as u32)
    }
}

/// Proof that the CPU has AVX2: only [`Avx2::new`] builds one, after the
/// (cached) CPUID check. Holding one makes the AVX2 functions sound to call.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Avx2(());

impl Avx2 {
    pub(crate) fn new() -> Option<Avx2> {
        // std caches the CPUID result in an atomic, so this is one load after the first call.
        std::is_x86_feature_detected!("avx2").then_some(Avx2(()))
    }

    pub(crate) fn transform(self, flow: &mut Flow, input: &[u8], out: &mut [u8]) -> (usize, usize) {
        // SAFETY: `self` exists, so the CPU has AVX2.
        unsafe { transform_avx2(flow, input, out) }
    }

    pub(crate) fn scan(self, message: &[u8]) -> Scan {
        // SAFETY: `self` exists, so the CPU has AVX2.
        unsafe { scan_avx2(message) }
    }

    pub(crate) fn find_dot_line(self, message: &[u8], from: usize) -> Option<usize> {
        // SAFETY: `self` exists, so the CPU has AVX2.
        unsafe { find_dot_line_avx2(message, from) }
    }
}

/// # Safety
/// The CPU has AVX2.
#[target_feature(enable = "avx2")]
unsafe fn transform_avx2(flow: &mut Flow, input: &[u8], out: &mut [u8]) -> (usize, usize) {
    // SAFETY: the caller guarantees AVX2, the feature of `Avx2Vector`.
    unsafe { transform_with::<Avx2Vector>(flow, input, out) }
}

/// # Safety
/// The CPU has AVX2.
#[target_feature(enable = "avx2")]
unsafe fn scan_avx2(message: &[u8]) -> Scan {
    // SAFETY: the caller guarantees AVX2, the feature of `Avx2Vector`.
    unsafe { scan_with::<Avx2Vector>(message) }
}

/// # Safety
/// The CPU has AVX2.
#[target_feature(enable = "avx2")]
unsafe fn find_dot_line_avx2(message: &[u8], from: usize) -> Option<usize> {
    // SAFETY: the caller guarantees AVX2, the feature of `Avx2Vector`.
    unsafe { find_dot_line_with::<Avx2Vector>(message, from) }
}

pub(crate) fn transform_sse2(flow: &mut Flow, input: &[u8], out: &mut [u8]) -> (usize, usize) {
    // SAFETY: SSE2 is part of the x86_64 baseline.
    unsafe { transform_with::<Sse2>(flow, input, out) }
}

pub(crate) fn scan_sse2(message: &[u8]) -> Scan {
    // SAFETY: SSE2 is part of the x86_64 baseline.
    unsafe { scan_with::<Sse2>(message) }
}

pub(crate) fn find_dot_line_sse2(message: &[u8], from: usize) -> Option<usize> {
    // SAFETY: SSE2 is part of the x86_64 baseline.
    unsafe { find_dot_line_with::<Sse2>(message, from) }
}

/// TOP's headers on the portable tier, the body in blocks, the tail on the
/// portable tier again.
///
/// # Safety
/// The CPU has `V`'s feature.
#[inline(always)]
unsafe fn transform_with<V: Vector>(
    flow: &mut Flow,
    input: &[u8],
    out: &mut [u8],
) -> (usize, usize) {
    let (mut consumed, mut written) = (0, 0);
    if matches!(flow.phase, Phase::Headers { .. }) {
        (consumed, written) = portable::transform(flow, input, out, portable::Until::Body);
    }
    if let Phase::Body { .. } = flow.phase {
        // SAFETY: the caller guarantees `V`'s feature.
        let (c, w) = unsafe { body_blocks::<V>(flow, &input[consumed..], &mut out[written..]) };
        consumed += c;
        written += w;
    }
    let (c, w) = portable::transform(
        flow,
        &input[consumed..],
        &mut out[written..],
        portable::Until::End,
    );
    (consumed + c, written + w)
}

/// Bits `0..n` set, for `n <= 64`.
#[inline(always)]
fn low_bits(n: usize) -> u64 {
    if n >= 64 { u64::MAX } else { (1 << n) - 1 }
}

/// The transform over whole blocks while the body phase lasts. Stops when
/// fewer than two blocks of input or three blocks of output are left (the
/// fix-up stores reach that far), or when TOP's budget is spent.
///
/// # Safety
/// The CPU has `V`'s feature, and `flow.phase` is `Body`.
#[inline(always)]
unsafe fn body_blocks<V: Vector>(flow: &mut Flow, input: &[u8], out: &mut [u8]) -> (usize, usize) {
    let Phase::Body { mut lines_left } = flow.phase else {
        return (0, 0);
    };
    let limited = lines_left != LINES_UNLIMITED;
    let (mut consumed, mut written) = (0, 0);
    // Carries from the previous block: its last byte was CR / LF.
    let mut prev_cr = u64::from(flow.prev_cr);
    let mut line_start = u64::from(flow.line_start);
    while input.len() - consumed >= 2 * V::BYTES && out.len() - written >= 3 * V::BYTES {
        // SAFETY: consumed + 2 * BYTES <= input.len() and written + 3 * BYTES
        // <= out.len() (loop condition), so both pointers stay in bounds.
        let (src, dst) = unsafe { (input.as_ptr().add(consumed), out.as_mut_ptr().add(written)) };
        // SAFETY: src has BYTES readable bytes; the caller guarantees the feature.
        let block = unsafe { V::load(src) };
        // SAFETY: the caller guarantees the feature.
        let (lf, cr, dot) = unsafe {
            (
                block.eq_mask(b'\n'),
                block.eq_mask(b'\r'),
                block.eq_mask(b'.'),
            )
        };
        let mut take = V::BYTES;
        if limited && u64::from(lf.count_ones()) >= lines_left {
            // The budget ends in this block: keep up to its lines_left-th LF.
            let mut lfs = lf;
            for _ in 1..lines_left {
                lfs &= lfs - 1;
            }
            take = lfs.trailing_zeros() as usize + 1;
        }
        let keep = low_bits(take);
        let bare_lf = lf & !((cr << 1) | prev_cr) & keep;
        let stuffed_dot = dot & ((lf << 1) | line_start) & keep;
        let mut inserts = bare_lf | stuffed_dot;
        // SAFETY: dst has 3 * BYTES writable bytes; the caller guarantees the feature.
        unsafe { block.store(dst) };
        let mut shift = 0;
        while inserts != 0 {
            let at = inserts.trailing_zeros() as usize;
            let byte = if bare_lf >> at & 1 == 1 { b'\r' } else { b'.' };
            // SAFETY: at < BYTES and shift < BYTES, so the byte store is below
            // dst + 2 * BYTES, the vector store ends below dst + 3 * BYTES and
            // the load ends below src + 2 * BYTES: all in bounds (see above).
            unsafe {
                dst.add(at + shift).write(byte);
                V::load(src.add(at)).store(dst.add(at + shift + 1));
            }
            shift += 1;
            inserts &= inserts - 1;
        }
        consumed += take;
        written += take + shift;
        prev_cr = cr >> (take - 1) & 1;
        line_start = lf >> (take - 1) & 1;
        if limited {
            lines_left -= u64::from((lf & keep).count_ones());
            if lines_left == 0 {
                break;
            }
        }
    }
    flow.prev_cr = prev_cr == 1;
    flow.line_start = line_start == 1;
    if limited {
        flow.phase = Flow::body(lines_left);
    }
    (consumed, written)
}

/// # Safety
/// The CPU has `V`'s feature.
#[inline(always)]
unsafe fn scan_with<V: Vector>(message: &[u8]) -> Scan {
    let mut facts = Scan {
        bare_lf: u64::from(message.first() == Some(&b'\n')),
        dot_lines: u64::from(message.first() == Some(&b'.')),
        ..Scan::default()
    };
    // Each block at p is compared with the block at p - 1, so the byte before
    // every lane is at hand without carries.
    let mut p = 1;
    while p + V::BYTES <= message.len() {
        // SAFETY: p >= 1 and p + BYTES <= len: both blocks are in bounds; the
        // caller guarantees the feature.
        let (this, before) = unsafe {
            (
                V::load(message.as_ptr().add(p)),
                V::load(message.as_ptr().add(p - 1)),
            )
        };
        // SAFETY: the caller guarantees the feature.
        let (lf, dot, cr_before, lf_before) = unsafe {
            (
                this.eq_mask(b'\n'),
                this.eq_mask(b'.'),
                before.eq_mask(b'\r'),
                before.eq_mask(b'\n'),
            )
        };
        facts.bare_lf += u64::from((lf & !cr_before).count_ones());
        facts.dot_lines += u64::from((dot & lf_before).count_ones());
        p += V::BYTES;
    }
    for p in p..message.len() {
        let before = message[p - 1];
        facts.bare_lf += u64::from(message[p] == b'\n' && before != b'\r');
        facts.dot_lines += u64::from(message[p] == b'.' && before == b'\n');
    }
    facts.crlf_octets = message.len() as u64 + facts.bare_lf;
    facts.ends_with_lf = message.last() == Some(&b'\n');
    facts
}

/// # Safety
/// The CPU has `V`'s feature.
#[inline(always)]
unsafe fn find_dot_line_with<V: Vector>(message: &[u8], from: usize) -> Option<usize> {
    if from >= message.len() {
        return None;
    }
    if from == 0 && message[0] == b'.' {
        return Some(0);
    }
    let mut p = from.max(1);
    while p + V::BYTES <= message.len() {
        // SAFETY: p >= 1 and p + BYTES <= len: both blocks are in bounds; the
        // caller guarantees the feature.
        let hits = unsafe {
            let this = V::load(message.as_ptr().add(p));
            let before = V::load(message.as_ptr().add(p - 1));
            this.eq_mask(b'.') & before.eq_mask(b'\n')
        };
        if hits != 0 {
            return Some(p + hits.trailing_zeros() as usize);
        }
        p += V::BYTES;
    }
    (p..message.len()).find(|&p| message[p] == b'.' && message[p - 1] == b'\n')
}
