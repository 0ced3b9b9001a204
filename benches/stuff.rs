//! The wire transform on a realistic message, against memcpy and the scalar
//! reference in the same group (`Throughput::Bytes` = input bytes).
//!
//! Every variant streams the message the way the engine does: from one slice
//! (the mmap) into a 64 KiB output buffer that is reused, so the output stays
//! in cache exactly as a send buffer would. `memcpy` copies the same input
//! bytes into the same buffer in 64 KiB pieces. Each variant's result is
//! checked against the reference before it is timed.
//!
//! Groups:
//! - `stuff_lf`: RETR of a message stored with bare LF (the usual Maildir case).
//! - `stuff_crlf`: the same message stored with CRLF. Besides the transform,
//!   `find_dot_line` (the sender's per-RETR work when it writes the mmap
//!   ranges as they are) and `scan` (done once per message, then cached).
//! - `stuff_top`: TOP n 20 of the LF message (headers on the portable tier);
//!   throughput counts the bytes up to TOP's cut, the ones actually read.
//! - `stuff_lf_cold`, `stuff_crlf_sender_cold`: the same on a 64 MiB
//!   message, larger than the last-level cache: every variant, memcpy
//!   included, then reads from DRAM, as a RETR of a page-cache file does.
//!
//! `cargo bench --bench stuff -- --warm-up-time 1 --measurement-time 3`
//!
//! The clock is this thread's CPU time (`ThreadCpu`), not wall time: on a
//! small shared machine the wall clock mostly measures the other tenants'
//! load. `SHARDPOP_BENCH_CLOCK=wall` switches back to criterion's wall clock.

use std::hint::black_box;

use criterion::measurement::{Measurement, ValueFormatter, WallTime};
use criterion::{Criterion, Throughput};
use shardpop::wire::{Extent, Stuffer, TERMINATOR_MAX, Tier};

/// The engine's output bound per connection.
const OUT_BYTES: usize = 64 * 1024;
/// Size of the generated message: a large mail with an attachment, read
/// from a warm cache.
const MESSAGE_BYTES: usize = 1024 * 1024;
/// Size of the cold message: larger than the last-level cache, so every
/// variant reads from DRAM as a RETR of a page-cache file does.
const COLD_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// A deterministic xorshift generator, so every run measures the same bytes.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Headers, a text part with 60–80 character lines (about 1 in 25 beginning
/// with '.', some blank), then a base64 attachment in 76-character lines,
/// with bare LF line ends.
fn lf_corpus(bytes: usize) -> Vec<u8> {
    let mut rng = Rng(0x5eed_cafe_f00d_d00d);
    let mut message = Vec::with_capacity(bytes + 4096);
    for hop in 0..8 {
        message.extend_from_slice(
            format!("Received: from mx{hop}.example.net (mx{hop}.example.net [192.0.2.{hop}])\n\tby pop.example.org (shardpop) with ESMTPS id 4Xy{hop}Zk; Tue, 3 Jun 2025 10:0{hop}:00 +0000\n")
                .as_bytes(),
        );
    }
    message.extend_from_slice(
        b"From: Alice Example <alice@example.net>\nTo: bob@example.org\nSubject: the quarterly figures, as promised\nDate: Tue, 3 Jun 2025 10:07:12 +0000\nMessage-ID: <20250603100712.4242@example.net>\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=\"b1_0123456789\"\n\n--b1_0123456789\nContent-Type: text/plain; charset=utf-8\n\n",
    );
    let words: &[&[u8]] = &[
        b"the", b"figures", b"quarter", b"and", b"of", b"revenue", b"shard", b"mail", b"a", b"per",
        b"core",
    ];
    for _ in 0..400 {
        let width = 60 + rng.below(21) as usize;
        if rng.below(25) == 0 {
            message.extend_from_slice(b".");
        }
        let start = message.len();
        while message.len() - start < width {
            message.extend_from_slice(words[rng.below(words.len() as u64) as usize]);
            message.push(b' ');
        }
        message.push(b'\n');
        if rng.below(12) == 0 {
            message.push(b'\n');
        }
    }
    message.extend_from_slice(
        b"\n--b1_0123456789\nContent-Type: application/pdf; name=\"q2.pdf\"\nContent-Transfer-Encoding: base64\n\n",
    );
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    while message.len() < bytes {
        for _ in 0..76 {
            message.push(alphabet[rng.below(64) as usize]);
        }
        message.push(b'\n');
    }
    message.extend_from_slice(b"--b1_0123456789--\n");
    message
}

fn crlf_corpus(lf: &[u8]) -> Vec<u8> {
    let mut crlf = Vec::with_capacity(lf.len() + lf.len() / 32);
    for &byte in lf {
        if byte == b'\n' {
            crlf.push(b'\r');
        }
        crlf.push(byte);
    }
    crlf
}

/// Streams `message` through a stuffer into `out`, as the engine does; calls
/// `sink` with each filled window. Returns the bytes of input consumed.
fn stream(
    mut stuffer: Stuffer,
    message: &[u8],
    out: &mut [u8],
    mut sink: impl FnMut(&[u8]),
) -> usize {
    let mut consumed = 0;
    while consumed < message.len() && !stuffer.is_input_done() {
        let (c, w) = stuffer.transform(&message[consumed..], out);
        sink(&out[..w]);
        consumed += c;
    }
    let n = stuffer.finish(&mut out[..TERMINATOR_MAX]);
    sink(&out[..n]);
    consumed
}

/// The input bytes the transform reads: up to TOP's cut (found one byte at a
/// time with the reference), else the whole message.
fn bytes_read(message: &[u8], extent: Extent) -> usize {
    let mut stuffer = Stuffer::with_tier(extent, Tier::Reference).expect("reference");
    let mut out = [0u8; Stuffer::OUT_MIN];
    let mut read = 0;
    while read < message.len() && !stuffer.is_input_done() {
        read += stuffer.transform(&message[read..read + 1], &mut out).0;
    }
    read
}

/// The whole wire output of `tier`, for the check before timing.
fn wire(tier: Tier, message: &[u8], extent: Extent) -> (Vec<u8>, usize) {
    let stuffer = Stuffer::with_tier(extent, tier).expect("available tier");
    let mut out = vec![0u8; OUT_BYTES];
    let mut wire = Vec::new();
    let consumed = stream(stuffer, message, &mut out, |window| {
        wire.extend_from_slice(window)
    });
    (wire, consumed)
}

fn memcpy(message: &[u8], out: &mut [u8]) {
    for chunk in message.chunks(out.len()) {
        out[..chunk.len()].copy_from_slice(chunk);
        black_box(&mut out[..chunk.len()]);
    }
}

/// memcpy and every available tier on one message and extent.
fn transform_group<M: Measurement>(
    c: &mut Criterion<M>,
    name: &str,
    message: &[u8],
    extent: Extent,
) {
    let (expected, consumed) = wire(Tier::Reference, message, extent);
    let read = bytes_read(message, extent);
    for tier in Tier::available() {
        assert!(
            wire(tier, message, extent) == (expected.clone(), consumed),
            "{tier:?} differs from the reference"
        );
    }
    let mut group = c.benchmark_group(name);
    group.throughput(Throughput::Bytes(read as u64));
    if message.len() > MESSAGE_BYTES {
        group.sample_size(10);
    }
    let mut out = vec![0u8; OUT_BYTES];
    group.bench_function("memcpy", |b| {
        b.iter(|| memcpy(black_box(&message[..read]), &mut out))
    });
    for tier in Tier::available() {
        group.bench_function(tier.name(), |b| {
            b.iter(|| {
                let stuffer = Stuffer::with_tier(extent, tier).expect("available tier");
                stream(stuffer, black_box(message), &mut out, |window| {
                    black_box(window);
                })
            })
        });
    }
    group.finish();
}

/// The sender's work on a CRLF message: the dot search over the whole
/// message, and the one-off scan.
fn sender_group<M: Measurement>(c: &mut Criterion<M>, name: &str, message: &[u8]) {
    let facts = Tier::Reference.scan(message);
    assert_eq!(facts.bare_lf, 0, "the CRLF corpus has no bare LF");
    assert!(facts.dot_lines > 0, "the corpus has dot lines");
    let dot_walk = |tier: Tier, message: &[u8]| {
        let (mut count, mut from) = (0u64, 0);
        while let Some(p) = tier.find_dot_line(message, from) {
            count += 1;
            from = p + 1;
        }
        count
    };
    for tier in Tier::available() {
        assert_eq!(tier.scan(message), facts, "{tier:?} scan");
        assert_eq!(
            dot_walk(tier, message),
            facts.dot_lines,
            "{tier:?} find_dot_line"
        );
    }
    let mut group = c.benchmark_group(name);
    group.throughput(Throughput::Bytes(message.len() as u64));
    if message.len() > MESSAGE_BYTES {
        group.sample_size(10);
    }
    let mut out = vec![0u8; OUT_BYTES];
    group.bench_function("memcpy", |b| {
        b.iter(|| memcpy(black_box(message), &mut out))
    });
    for tier in Tier::available() {
        let name = tier.name();
        group.bench_function(format!("find_dot_line/{name}"), |b| {
            b.iter(|| dot_walk(tier, black_box(message)))
        });
        group.bench_function(format!("scan/{name}"), |b| {
            b.iter(|| tier.scan(black_box(message)))
        });
    }
    group.finish();
}

fn benches<M: Measurement>(c: &mut Criterion<M>) {
    let lf = lf_corpus(MESSAGE_BYTES);
    let crlf = crlf_corpus(&lf);
    transform_group(c, "stuff_lf", &lf, Extent::Whole);
    transform_group(c, "stuff_crlf", &crlf, Extent::Whole);
    sender_group(c, "stuff_crlf_sender", &crlf);
    transform_group(c, "stuff_top", &lf, Extent::Top { body_lines: 20 });
    let cold_lf = lf_corpus(COLD_MESSAGE_BYTES);
    transform_group(c, "stuff_lf_cold", &cold_lf, Extent::Whole);
    drop(cold_lf);
    let cold_crlf = crlf_corpus(&lf_corpus(COLD_MESSAGE_BYTES));
    sender_group(c, "stuff_crlf_sender_cold", &cold_crlf);
}

/// Nanoseconds this thread has run on a CPU (`CLOCK_THREAD_CPUTIME_ID`):
/// time spent preempted by other tenants is not counted.
struct ThreadCpu;

impl ThreadCpu {
    fn now_ns() -> u64 {
        let mut now = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `now` is a valid, writable timespec for the call's duration.
        let status = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
        assert_eq!(status, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
        now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
    }
}

impl Measurement for ThreadCpu {
    type Intermediate = u64;
    type Value = u64;

    fn start(&self) -> u64 {
        ThreadCpu::now_ns()
    }

    fn end(&self, start: u64) -> u64 {
        ThreadCpu::now_ns() - start
    }

    fn add(&self, a: &u64, b: &u64) -> u64 {
        a + b
    }

    fn zero(&self) -> u64 {
        0
    }

    fn to_f64(&self, ns: &u64) -> f64 {
        *ns as f64
    }

    fn formatter(&self) -> &dyn ValueFormatter {
        &NanosFormatter
    }
}

/// Formats nanoseconds, and bytes per nanosecond as GiB/s.
struct NanosFormatter;

impl ValueFormatter for NanosFormatter {
    fn scale_values(&self, typical_ns: f64, values: &mut [f64]) -> &'static str {
        let (factor, unit) = match typical_ns {
            ns if ns < 1e3 => (1.0, "ns"),
            ns if ns < 1e6 => (1e-3, "µs"),
            ns if ns < 1e9 => (1e-6, "ms"),
            _ => (1e-9, "s"),
        };
        values.iter_mut().for_each(|value| *value *= factor);
        unit
    }

    fn scale_throughputs(
        &self,
        _typical_ns: f64,
        throughput: &Throughput,
        values: &mut [f64],
    ) -> &'static str {
        let (per_iteration, unit) = match *throughput {
            Throughput::Bytes(bytes) | Throughput::BytesDecimal(bytes) => {
                (bytes as f64 / (1u64 << 30) as f64, "GiB/s")
            }
            Throughput::Bits(n)
            | Throughput::Elements(n)
            | Throughput::ElementsAndBytes { elements: n, .. } => (n as f64 / 1e9, "G/s"),
        };
        values
            .iter_mut()
            .for_each(|ns| *ns = per_iteration * 1e9 / *ns);
        unit
    }

    fn scale_for_machines(&self, _values: &mut [f64]) -> &'static str {
        "ns"
    }
}

fn main() {
    if std::env::var("SHARDPOP_BENCH_CLOCK").as_deref() == Ok("wall") {
        let mut c = Criterion::default()
            .with_measurement(WallTime)
            .configure_from_args();
        benches(&mut c);
        c.final_summary();
    } else {
        let mut c = Criterion::default()
            .with_measurement(ThreadCpu)
            .configure_from_args();
        benches(&mut c);
        c.final_summary();
    }
}
