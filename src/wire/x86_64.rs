//! The x86_64 tiers: the transform, the scan and the dot search over 64-byte
//! blocks held in four SSE2 registers (every x86_64 CPU), two AVX2 registers
//! or one AVX-512 register (AVX2 and AVX-512BW/VBMI2 detected at run time).
//! The only file of the wire layer with `unsafe`: vector loads and stores
//! through raw pointers, and calls into `#[target_feature]` functions, which
//! are sound only behind the [`Avx2`] / [`Avx512`] proofs.
//!
//! The algorithm is written once, generic over [`Block`], and inlined into
//! one function per ISA (as memchr does): the `#[inline(always)]` trait
//! methods take the target features of the function they are inlined into.
//!
//! Per block, the transform finds the bytes that need a byte inserted before
//! them (a CR before a bare LF, a `.` before a line-start `.`), comparing the
//! block with the byte before it. It then stores the block with the first
//! insertion made, without a branch: SSE2/AVX2 store the block whole, write
//! the inserted byte and store the rest again one byte on; AVX-512 does it
//! in one `vpexpandb`. A 64-byte block of mail has at most one insertion
//! nearly always (lines are ~80 bytes), so only the rare others loop. TOP's
//! headers and the tails shorter than two blocks go to the portable tier.
#![allow(unsafe_code)]

use core::arch::x86_64::{
    __m128i, __m256i, __m512i, _mm_cmpeq_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_set1_epi8,
    _mm_storeu_si128, _mm256_cmpeq_epi8, _mm256_loadu_si256, _mm256_movemask_epi8,
    _mm256_set1_epi8, _mm256_storeu_si256, _mm512_cmpeq_epi8_mask, _mm512_loadu_si512,
    _mm512_mask_blend_epi8, _mm512_mask_cmpeq_epi8_mask, _mm512_mask_cmpneq_epi8_mask,
    _mm512_mask_expand_epi8, _mm512_set1_epi8, _mm512_storeu_si512,
};

use super::{Flow, LINES_UNLIMITED, Phase, Scan, append_zeroed, portable};

/// Bytes per block: one bit per byte in a `u64` mask.
const BLOCK: usize = 64;

/// 64 bytes in vector registers, the only thing the block loops need.
trait Block: Copy {
    /// # Safety
    /// `src` is valid for `BLOCK` reads, and the CPU has the block's features.
    unsafe fn load(src: *const u8) -> Self;

    /// # Safety
    /// `dst` is valid for `BLOCK` writes, and the CPU has the block's features.
    unsafe fn store(self, dst: *mut u8);

    /// Bit i is set when byte i equals `byte`.
    ///
    /// # Safety
    /// The CPU has the block's features.
    unsafe fn eq_mask(self, byte: u8) -> u64;

    /// Where this block needs insertions: `(inserts, bare_lf)`, the bytes
    /// that get a byte before them and those of them that are bare LFs (the
    /// others are line-start dots). `carry` holds the previous block's CR and
    /// LF masks (only bit 63 matters) and is updated to this block's.
    ///
    /// # Safety
    /// The CPU has the block's features.
    #[inline(always)]
    unsafe fn marks(self, carry: &mut (u64, u64)) -> (u64, u64) {
        // SAFETY: the caller guarantees the features.
        let (lf, cr, dot) =
            unsafe { (self.eq_mask(b'\n'), self.eq_mask(b'\r'), self.eq_mask(b'.')) };
        let bare_lf = lf & !((cr << 1) | carry.0 >> 63);
        let stuffed_dot = dot & ((lf << 1) | carry.1 >> 63);
        *carry = (cr, lf);
        (bare_lf | stuffed_dot, bare_lf)
    }

    /// [`marks`](Block::marks) for a block that is not the first of the
    /// input: the byte before it is read from `src - 1`.
    ///
    /// # Safety
    /// `src - 1` is readable, and the CPU has the block's features.
    #[inline(always)]
    unsafe fn marks_after(self, src: *const u8) -> (u64, u64) {
        // SAFETY: the caller guarantees src - 1 is readable.
        let before = unsafe { src.sub(1).read() };
        let mut carry = (
            u64::from(before == b'\r') << 63,
            u64::from(before == b'\n') << 63,
        );
        // SAFETY: the caller guarantees the features.
        unsafe { self.marks(&mut carry) }
    }

    /// Writes the block at `dst` with one byte inserted before the input
    /// byte whose bit is `first` (zero: no insertion) and the rest moved one
    /// byte on: 65 bytes, the last one garbage if `first` is zero. The byte
    /// is CR if `first` is in `bare_lf`, else '.'. `src` is where `self` was
    /// loaded.
    ///
    /// # Safety
    /// `src` is valid for `2 * BLOCK` reads, `dst` for `3 * BLOCK` writes,
    /// `first` has at most one bit set, and the CPU has the block's features.
    #[inline(always)]
    unsafe fn store_inserting(self, src: *const u8, dst: *mut u8, first: u64, bare_lf: u64) {
        let at = first.trailing_zeros() as usize;
        let byte = if first & bare_lf != 0 { b'\r' } else { b'.' };
        // SAFETY: at <= 64: the byte lands below dst + 65, the block load ends
        // at most at src + 128 and the stores at dst + 129.
        unsafe {
            self.store(dst);
            dst.add(at).write(byte);
            Self::load(src.add(at)).store(dst.add(at + 1));
        }
    }
}

/// Four SSE2 registers.
#[derive(Clone, Copy)]
struct Sse2Block([__m128i; 4]);

impl Block for Sse2Block {
    #[inline(always)]
    unsafe fn load(src: *const u8) -> Sse2Block {
        // SAFETY: the caller guarantees 64 readable bytes; loadu needs no
        // alignment; SSE2 is part of the x86_64 baseline.
        Sse2Block(std::array::from_fn(|i| unsafe {
            _mm_loadu_si128(src.add(16 * i).cast())
        }))
    }

    #[inline(always)]
    unsafe fn store(self, dst: *mut u8) {
        for (i, part) in self.0.into_iter().enumerate() {
            // SAFETY: the caller guarantees 64 writable bytes; storeu needs no alignment.
            unsafe { _mm_storeu_si128(dst.add(16 * i).cast(), part) }
        }
    }

    #[inline(always)]
    unsafe fn eq_mask(self, byte: u8) -> u64 {
        let mut mask = 0;
        for (i, part) in self.0.into_iter().enumerate() {
            // SAFETY: SSE2 is part of the x86_64 baseline.
            let bits =
                unsafe { _mm_movemask_epi8(_mm_cmpeq_epi8(part, _mm_set1_epi8(byte as i8))) };
            mask |= u64::from(bits as u16) << (16 * i);
        }
        mask
    }
}

/// Two AVX2 registers.
#[derive(Clone, Copy)]
struct Avx2Block([__m256i; 2]);

impl Block for Avx2Block {
    #[inline(always)]
    unsafe fn load(src: *const u8) -> Avx2Block {
        // SAFETY: the caller guarantees 64 readable bytes and AVX2.
        unsafe {
            Avx2Block([
                _mm256_loadu_si256(src.cast()),
                _mm256_loadu_si256(src.add(32).cast()),
            ])
        }
    }

    #[inline(always)]
    unsafe fn store(self, dst: *mut u8) {
        // SAFETY: the caller guarantees 64 writable bytes and AVX2.
        unsafe {
            _mm256_storeu_si256(dst.cast(), self.0[0]);
            _mm256_storeu_si256(dst.add(32).cast(), self.0[1]);
        }
    }

    #[inline(always)]
    unsafe fn eq_mask(self, byte: u8) -> u64 {
        // SAFETY: the caller guarantees AVX2.
        let (low, high) = unsafe {
            let needle = _mm256_set1_epi8(byte as i8);
            (
                _mm256_movemask_epi8(_mm256_cmpeq_epi8(self.0[0], needle)),
                _mm256_movemask_epi8(_mm256_cmpeq_epi8(self.0[1], needle)),
            )
        };
        u64::from(low as u32) | u64::from(high as u32) << 32
    }
}

/// One AVX-512 register: compares give the mask directly (AVX-512BW), and
/// an insertion is one `vpexpandb` (AVX-512 VBMI2).
#[derive(Clone, Copy)]
struct Avx512Block(__m512i);

impl Block for Avx512Block {
    #[inline(always)]
    unsafe fn load(src: *const u8) -> Avx512Block {
        // SAFETY: the caller guarantees 64 readable bytes and AVX-512F.
        Avx512Block(unsafe { _mm512_loadu_si512(src.cast()) })
    }

    #[inline(always)]
    unsafe fn store(self, dst: *mut u8) {
        // SAFETY: the caller guarantees 64 writable bytes and AVX-512F.
        unsafe { _mm512_storeu_si512(dst.cast(), self.0) }
    }

    #[inline(always)]
    unsafe fn eq_mask(self, byte: u8) -> u64 {
        // SAFETY: the caller guarantees AVX-512F and AVX-512BW.
        unsafe { _mm512_cmpeq_epi8_mask(self.0, _mm512_set1_epi8(byte as i8)) }
    }

    /// Compares the block and the block one byte earlier, so the byte
    /// before each lane is at hand and the masks combine in masked compares
    /// (only `inserts` and the first insertion cross to general registers).
    #[inline(always)]
    unsafe fn marks_after(self, src: *const u8) -> (u64, u64) {
        // SAFETY: the caller guarantees src - 1 is readable (so 64 bytes from
        // it are: the block at src is), and AVX-512F/BW.
        unsafe {
            let before = _mm512_loadu_si512(src.sub(1).cast());
            let lf = _mm512_cmpeq_epi8_mask(self.0, _mm512_set1_epi8(b'\n' as i8));
            let bare_lf = _mm512_mask_cmpneq_epi8_mask(lf, before, _mm512_set1_epi8(b'\r' as i8));
            let line_start = _mm512_cmpeq_epi8_mask(before, _mm512_set1_epi8(b'\n' as i8));
            let stuffed_dot =
                _mm512_mask_cmpeq_epi8_mask(line_start, self.0, _mm512_set1_epi8(b'.' as i8));
            (bare_lf | stuffed_dot, bare_lf)
        }
    }

    /// One store: `vpexpandb` spreads the block over every lane but the one
    /// of `first`, which takes the byte to insert for that input lane (CR
    /// where `bare_lf`, else '.'); the byte pushed out of the register goes
    /// after it.
    #[inline(always)]
    unsafe fn store_inserting(self, src: *const u8, dst: *mut u8, first: u64, bare_lf: u64) {
        // SAFETY: the caller guarantees AVX-512F/BW/VBMI2, 128 readable bytes
        // at src and 192 writable ones at dst (65 are written).
        unsafe {
            let fill = _mm512_mask_blend_epi8(
                bare_lf,
                _mm512_set1_epi8(b'.' as i8),
                _mm512_set1_epi8(b'\r' as i8),
            );
            let spread = _mm512_mask_expand_epi8(fill, !first, self.0);
            _mm512_storeu_si512(dst.cast(), spread);
            dst.add(BLOCK).write(src.add(BLOCK - 1).read());
        }
    }
}

/// Defines a proof type for an ISA extension and its entry points: only
/// `new` builds the proof, after the (cached) CPUID check, and holding one is
/// what makes the `#[target_feature]` functions sound to call.
macro_rules! detected_tier {
    ($proof:ident, $block:ty, [$($feature:tt),+], $transform:ident, $transform_append:ident, $scan:ident, $find:ident) => {
        #[derive(Clone, Copy, Debug)]
        pub(crate) struct $proof(());

        impl $proof {
            pub(crate) fn new() -> Option<$proof> {
                // std caches CPUID in an atomic: one load after the first call.
                ($(std::is_x86_feature_detected!($feature))&&+).then_some($proof(()))
            }

            pub(crate) fn transform(self, flow: &mut Flow, input: &[u8], out: &mut [u8]) -> (usize, usize) {
                // SAFETY: `self` exists, so the CPU has the features.
                unsafe { $transform(flow, input, out) }
            }

            pub(crate) fn transform_append(
                self,
                flow: &mut Flow,
                input: &[u8],
                out: &mut Vec<u8>,
                room: usize,
            ) -> usize {
                // SAFETY: `self` exists, so the CPU has the features.
                unsafe { $transform_append(flow, input, out, room) }
            }

            pub(crate) fn scan(self, message: &[u8]) -> Scan {
                // SAFETY: `self` exists, so the CPU has the features.
                unsafe { $scan(message) }
            }

            pub(crate) fn find_dot_line(self, message: &[u8], from: usize) -> Option<usize> {
                // SAFETY: `self` exists, so the CPU has the features.
                unsafe { $find(message, from) }
            }
        }

        /// # Safety
        /// The CPU has the features.
        #[target_feature($(enable = $feature),+)]
        unsafe fn $transform(flow: &mut Flow, input: &[u8], out: &mut [u8]) -> (usize, usize) {
            // SAFETY: the caller guarantees the block's features.
            unsafe { transform_with::<$block>(flow, input, out) }
        }

        /// # Safety
        /// The CPU has the features.
        #[target_feature($(enable = $feature),+)]
        unsafe fn $transform_append(
            flow: &mut Flow,
            input: &[u8],
            out: &mut Vec<u8>,
            room: usize,
        ) -> usize {
            // SAFETY: the caller guarantees the block's features.
            unsafe { transform_append_with::<$block>(flow, input, out, room) }
        }

        /// # Safety
        /// The CPU has the features.
        #[target_feature($(enable = $feature),+)]
        unsafe fn $scan(message: &[u8]) -> Scan {
            // SAFETY: the caller guarantees the block's features.
            unsafe { scan_with::<$block>(message) }
        }

        /// # Safety
        /// The CPU has the features.
        #[target_feature($(enable = $feature),+)]
        unsafe fn $find(message: &[u8], from: usize) -> Option<usize> {
            // SAFETY: the caller guarantees the block's features.
            unsafe { find_dot_line_with::<$block>(message, from) }
        }
    };
}

detected_tier!(
    Avx2,
    Avx2Block,
    ["avx2"],
    transform_avx2,
    transform_append_avx2,
    scan_avx2,
    find_dot_line_avx2
);
detected_tier!(
    Avx512,
    Avx512Block,
    ["avx512f", "avx512bw", "avx512vbmi2", "bmi1", "popcnt"],
    transform_avx512,
    transform_append_avx512,
    scan_avx512,
    find_dot_line_avx512
);

pub(crate) fn transform_sse2(flow: &mut Flow, input: &[u8], out: &mut [u8]) -> (usize, usize) {
    // SAFETY: SSE2 is part of the x86_64 baseline.
    unsafe { transform_with::<Sse2Block>(flow, input, out) }
}

pub(crate) fn transform_append_sse2(
    flow: &mut Flow,
    input: &[u8],
    out: &mut Vec<u8>,
    room: usize,
) -> usize {
    // SAFETY: SSE2 is part of the x86_64 baseline.
    unsafe { transform_append_with::<Sse2Block>(flow, input, out, room) }
}

pub(crate) fn scan_sse2(message: &[u8]) -> Scan {
    // SAFETY: SSE2 is part of the x86_64 baseline.
    unsafe { scan_with::<Sse2Block>(message) }
}

pub(crate) fn find_dot_line_sse2(message: &[u8], from: usize) -> Option<usize> {
    // SAFETY: SSE2 is part of the x86_64 baseline.
    unsafe { find_dot_line_with::<Sse2Block>(message, from) }
}

/// TOP's headers on the portable tier, the body in blocks, the tail on the
/// portable tier again.
///
/// # Safety
/// The CPU has `B`'s features.
#[inline(always)]
unsafe fn transform_with<B: Block>(
    flow: &mut Flow,
    input: &[u8],
    out: &mut [u8],
) -> (usize, usize) {
    let (mut consumed, mut written) = (0, 0);
    if matches!(flow.phase, Phase::Headers { .. }) {
        (consumed, written) = portable::transform(flow, input, out, portable::Until::Body);
    }
    if let Phase::Body { .. } = flow.phase {
        let rest = &mut out[written..];
        // SAFETY: the caller guarantees `B`'s features; `rest` is valid for
        // its length in writes.
        let (c, w) =
            unsafe { body_blocks::<B>(flow, &input[consumed..], rest.as_mut_ptr(), rest.len()) };
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

/// [`transform_with`] appending at most `room` bytes to `out`. The blocks
/// are stored straight into `out`'s spare capacity, so that room is never
/// zeroed first (zeroing it was 2.7% of the server's CPU in
/// `scripts/profile-server download` on 1-5 MB messages); TOP's headers
/// and the tail go through
/// [`append_zeroed`], over no more room than they can fill.
///
/// # Safety
/// The CPU has `B`'s features.
#[inline(always)]
unsafe fn transform_append_with<B: Block>(
    flow: &mut Flow,
    input: &[u8],
    out: &mut Vec<u8>,
    mut room: usize,
) -> usize {
    let mut consumed = 0;
    if let Phase::Body { .. } = flow.phase {
        out.reserve(room);
        let spare = &mut out.spare_capacity_mut()[..room];
        // SAFETY: the caller guarantees the features; `spare` is valid for
        // `room` writes, and `body_blocks` never reads it.
        let (c, w) = unsafe { body_blocks::<B>(flow, input, spare.as_mut_ptr().cast(), room) };
        // SAFETY: `blocks` wrote every byte of spare[..w], and w <= room fits
        // in the capacity reserved above.
        unsafe { out.set_len(out.len() + w) };
        consumed = c;
        room -= w;
    }
    consumed
        + append_zeroed(&input[consumed..], out, room, |rest, window| {
            // SAFETY: the caller guarantees the features.
            unsafe { transform_with::<B>(flow, rest, window) }
        })
}

/// The transform over whole blocks while the body phase lasts: RETR's loop
/// has no line accounting at all, TOP's counts LFs.
///
/// Writes through `dst` only (never reads it), so `dst` may be memory not
/// yet initialized; see [`blocks`] for what it leaves written.
///
/// # Safety
/// The CPU has `B`'s features, and `dst` is valid for `room` writes.
#[inline(always)]
unsafe fn body_blocks<B: Block>(
    flow: &mut Flow,
    input: &[u8],
    dst: *mut u8,
    room: usize,
) -> (usize, usize) {
    let Phase::Body { lines_left } = flow.phase else {
        return (0, 0);
    };
    if lines_left == LINES_UNLIMITED {
        // SAFETY: the caller guarantees the features and `dst`; the phase is Body.
        unsafe { blocks::<B, false>(flow, input, dst, room) }
    } else {
        // SAFETY: the caller guarantees the features and `dst`; the phase is Body.
        unsafe { blocks::<B, true>(flow, input, dst, room) }
    }
}

/// Stops when fewer than two blocks of input or three blocks of output are
/// left (the fix-up loads and stores reach that far), or, if `LIMITED`, when
/// TOP's budget is spent. Returns `(consumed, written)`: every byte of
/// `out[..written]` has been written, since each step stores its whole
/// output from where the last one ended (and may store garbage past it,
/// within `room`).
///
/// # Safety
/// The CPU has `B`'s features, `flow.phase` is `Body`, and `out` is valid
/// for `room` writes.
#[inline(always)]
unsafe fn blocks<B: Block, const LIMITED: bool>(
    flow: &mut Flow,
    input: &[u8],
    out: *mut u8,
    room: usize,
) -> (usize, usize) {
    let Phase::Body { mut lines_left } = flow.phase else {
        return (0, 0);
    };
    let (mut consumed, mut written) = (0, 0);
    // Carries from the previous block, in bit 63: its last byte was CR / LF.
    let mut carry = (
        u64::from(flow.prev_cr) << 63,
        u64::from(flow.line_start) << 63,
    );
    while input.len() - consumed >= 2 * BLOCK && room - written >= 3 * BLOCK {
        // SAFETY: consumed + 2 * BLOCK <= input.len() and written + 3 * BLOCK
        // <= room (loop condition), so both pointers stay in bounds.
        let (src, dst) = unsafe { (input.as_ptr().add(consumed), out.add(written)) };
        // SAFETY: src has BLOCK readable bytes; the caller guarantees the features.
        let block = unsafe { B::load(src) };
        if !LIMITED {
            // SAFETY: the caller guarantees the features; dst has 3 * BLOCK
            // writable bytes, src 2 * BLOCK readable ones.
            let inserted = unsafe {
                let (inserts, bare_lf) = match consumed {
                    0 => block.marks(&mut carry),
                    _ => block.marks_after(src),
                };
                insert(block, src, dst, inserts, bare_lf)
            };
            consumed += BLOCK;
            written += BLOCK + inserted;
            continue;
        }
        // SAFETY: the caller guarantees the features.
        let (lf, cr, dot) = unsafe {
            (
                block.eq_mask(b'\n'),
                block.eq_mask(b'\r'),
                block.eq_mask(b'.'),
            )
        };
        let (mut keep, mut take) = (u64::MAX, BLOCK);
        if u64::from(lf.count_ones()) >= lines_left {
            keep = through_nth_lf(lf, lines_left);
            take = keep.count_ones() as usize;
        }
        let bare_lf = lf & !((cr << 1) | carry.0 >> 63) & keep;
        let stuffed_dot = dot & ((lf << 1) | carry.1 >> 63) & keep;
        // SAFETY: as above.
        let inserted = unsafe { insert(block, src, dst, bare_lf | stuffed_dot, bare_lf) };
        consumed += take;
        written += take + inserted;
        // The byte at take - 1 moves to bit 63.
        carry = (cr << (BLOCK - take), lf << (BLOCK - take));
        lines_left -= u64::from((lf & keep).count_ones());
        if lines_left == 0 {
            break;
        }
    }
    if consumed > 0 {
        // The loop above may not have kept `carry` up to date.
        flow.prev_cr = input[consumed - 1] == b'\r';
        flow.line_start = input[consumed - 1] == b'\n';
    }
    flow.phase = Flow::body(lines_left);
    (consumed, written)
}

/// The bits up to and including the `n`-th set bit of `lf` (`1 <= n <=
/// lf.count_ones()`): the part of the block within TOP's budget.
#[inline(always)]
fn through_nth_lf(lf: u64, n: u64) -> u64 {
    let mut lfs = lf;
    for _ in 1..n {
        lfs &= lfs - 1;
    }
    let last = lfs.trailing_zeros();
    if last == 63 {
        u64::MAX
    } else {
        (1 << (last + 1)) - 1
    }
}

/// Writes a block at `dst`, inserting before each input byte
/// whose bit is set in `inserts`, inserts CR (if its bit is set in `bare_lf`)
/// or '.', and moves the rest of the block one byte on. Returns the number of
/// bytes inserted.
///
/// The first insertion is done without a branch, because most blocks of mail
/// have at most one: with none, the extra writes land past this
/// block's output, where the next block's store overwrites them.
///
/// # Safety
/// `src` is valid for `2 * BLOCK` reads and `dst` for `3 * BLOCK` writes, and
/// the CPU has `B`'s features.
#[inline(always)]
unsafe fn insert<B: Block>(
    block: B,
    src: *const u8,
    dst: *mut u8,
    inserts: u64,
    bare_lf: u64,
) -> usize {
    let first = inserts & inserts.wrapping_neg();
    // SAFETY: `first` has at most one bit; the caller passes on its bounds
    // and features.
    unsafe { block.store_inserting(src, dst, first, bare_lf) };
    let mut rest = inserts & inserts.wrapping_sub(1);
    let mut shift = 1;
    while rest != 0 {
        let at = rest.trailing_zeros() as usize;
        let byte = if bare_lf >> at & 1 == 1 { b'\r' } else { b'.' };
        // SAFETY: at < 64 and shift < 64 (one per earlier insertion), so the
        // byte lands below dst + 127, the store ends below dst + 191 and the
        // load below src + 127: in bounds.
        unsafe {
            dst.add(at + shift).write(byte);
            B::load(src.add(at)).store(dst.add(at + shift + 1));
        }
        shift += 1;
        rest &= rest - 1;
    }
    // `shift` counts the insertions after the first; add the first, if any.
    shift - usize::from(inserts == 0)
}

/// # Safety
/// The CPU has `B`'s features.
#[inline(always)]
unsafe fn scan_with<B: Block>(message: &[u8]) -> Scan {
    let mut facts = Scan {
        bare_lf: u64::from(message.first() == Some(&b'\n')),
        dot_lines: u64::from(message.first() == Some(&b'.')),
        ..Scan::default()
    };
    // Each block at p is compared with the block at p - 1, so the byte before
    // every lane is at hand without carries.
    let mut p = 1;
    while p + BLOCK <= message.len() {
        // SAFETY: p >= 1 and p + BLOCK <= len: both blocks are in bounds; the
        // caller guarantees the features.
        let (lf, dot, cr_before, lf_before) = unsafe {
            let this = B::load(message.as_ptr().add(p));
            let before = B::load(message.as_ptr().add(p - 1));
            (
                this.eq_mask(b'\n'),
                this.eq_mask(b'.'),
                before.eq_mask(b'\r'),
                before.eq_mask(b'\n'),
            )
        };
        facts.bare_lf += u64::from((lf & !cr_before).count_ones());
        facts.dot_lines += u64::from((dot & lf_before).count_ones());
        p += BLOCK;
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
/// The CPU has `B`'s features.
#[inline(always)]
unsafe fn find_dot_line_with<B: Block>(message: &[u8], from: usize) -> Option<usize> {
    if from >= message.len() {
        return None;
    }
    if from == 0 && message[0] == b'.' {
        return Some(0);
    }
    let mut p = from.max(1);
    while p + BLOCK <= message.len() {
        // SAFETY: p >= 1 and p + BLOCK <= len: both blocks are in bounds; the
        // caller guarantees the features.
        let hits = unsafe {
            let this = B::load(message.as_ptr().add(p));
            let before = B::load(message.as_ptr().add(p - 1));
            this.eq_mask(b'.') & before.eq_mask(b'\n')
        };
        if hits != 0 {
            return Some(p + hits.trailing_zeros() as usize);
        }
        p += BLOCK;
    }
    (p..message.len()).find(|&p| message[p] == b'.' && message[p - 1] == b'\n')
}
