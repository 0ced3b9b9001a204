//! Tests of the wire layer. RFC 1939 §3 edge cases are a table checked
//! against an independent whole-message model and every tier; then every tier
//! is checked against the reference over chunk splits, block alignments, all
//! 256 byte values and random inputs (proptest).

use proptest::prelude::*;

use super::*;

/// A second, independent statement of the rules: whole message, split into
/// lines first. The reference (byte at a time, streaming) must agree with it.
fn model(message: &[u8], extent: Extent) -> Vec<u8> {
    let lines: Vec<&[u8]> = message.split_inclusive(|&b| b == b'\n').collect();
    let kept = match extent {
        Extent::Whole => lines.len(),
        Extent::Top { body_lines } => {
            match lines
                .iter()
                .position(|line| *line == b"\n" || *line == b"\r\n")
            {
                None => lines.len(),
                Some(blank) => {
                    let body = usize::try_from(body_lines).unwrap_or(usize::MAX);
                    (blank + 1).saturating_add(body).min(lines.len())
                }
            }
        }
    };
    let mut out = Vec::new();
    for line in &lines[..kept] {
        if line.starts_with(b".") {
            out.push(b'.');
        }
        match line.strip_suffix(b"\n") {
            Some(content) => {
                out.extend_from_slice(content);
                if !content.ends_with(b"\r") {
                    out.push(b'\r');
                }
                out.push(b'\n');
            }
            None => out.extend_from_slice(line),
        }
    }
    let at_line_start = kept == 0 || lines[kept - 1].ends_with(b"\n");
    out.extend_from_slice(if at_line_start {
        b".\r\n"
    } else {
        b"\r\n.\r\n"
    });
    out
}

/// Feeds `message` to `tier` in chunks of `chunk_sizes` bytes (cycled) into
/// output windows of `out_sizes` bytes (cycled), checking the progress
/// contract on every call; returns the whole output with the terminator.
fn stream(
    tier: Tier,
    message: &[u8],
    extent: Extent,
    chunk_sizes: &[usize],
    out_sizes: &[usize],
) -> Vec<u8> {
    let mut stuffer = Stuffer::with_tier(extent, tier).expect("tier is available");
    let mut wire = Vec::new();
    let mut buffer = vec![0u8; out_sizes.iter().copied().max().unwrap_or(0)];
    let (mut consumed, mut call) = (0, 0);
    while consumed < message.len() && !stuffer.is_input_done() {
        let chunk_end = message
            .len()
            .min(consumed + chunk_sizes[call % chunk_sizes.len()]);
        let out = &mut buffer[..out_sizes[call % out_sizes.len()]];
        let (c, w) = stuffer.transform(&message[consumed..chunk_end], out);
        assert!(c <= chunk_end - consumed && w <= out.len());
        if out.len() >= Stuffer::OUT_MIN && chunk_end > consumed {
            assert!(
                c > 0,
                "{tier:?}: no progress with {} bytes of output",
                out.len()
            );
        }
        wire.extend_from_slice(&out[..w]);
        consumed += c;
        call += 1;
    }
    let rest = &message[consumed..];
    assert_eq!(
        stuffer.transform(rest, &mut [0; 8]),
        (rest.len(), 0),
        "done skips the rest"
    );
    let mut terminator = [0u8; TERMINATOR_MAX];
    let n = stuffer.finish(&mut terminator);
    wire.extend_from_slice(&terminator[..n]);
    assert_eq!(
        stuffer.finish(&mut terminator),
        0,
        "a second finish writes nothing"
    );
    wire
}

/// Streams `message` through two stuffers of `tier` in lockstep: one with
/// `transform` into windows of `rooms` bytes (cycled), one with
/// `transform_append` onto a Vec that already holds a reply and whose spare
/// capacity is dirtied before every call. Each call must consume and write
/// the same bytes, and the reply before them must stay. Returns the
/// appended output with the terminator.
fn stream_append(
    tier: Tier,
    message: &[u8],
    extent: Extent,
    chunk_sizes: &[usize],
    rooms: &[usize],
) -> Vec<u8> {
    const REPLY: &[u8] = b"+OK 120 octets\r\n";
    let mut windowed = Stuffer::with_tier(extent, tier).expect("tier is available");
    let mut appending = windowed.clone();
    let mut window = vec![0u8; rooms.iter().copied().max().unwrap_or(0)];
    let mut out = REPLY.to_vec();
    let (mut consumed, mut call) = (0, 0);
    while consumed < message.len() && !appending.is_input_done() {
        let chunk_end = message
            .len()
            .min(consumed + chunk_sizes[call % chunk_sizes.len()]);
        let input = &message[consumed..chunk_end];
        let room = rooms[call % rooms.len()];
        // Whatever a zeroing implementation would have found there, it is
        // not zero now.
        out.reserve(room);
        for byte in out.spare_capacity_mut() {
            byte.write(b'#');
        }
        let (c, w) = windowed.transform(input, &mut window[..room]);
        let before = out.len();
        let taken = appending.transform_append(input, &mut out, room);
        assert_eq!(taken, c, "{tier:?}: consumed, call {call}");
        assert_eq!(
            &out[before..],
            &window[..w],
            "{tier:?}: written, call {call}"
        );
        consumed += c;
        call += 1;
    }
    assert_eq!(
        appending.transform_append(&message[consumed..], &mut out, 8),
        message.len() - consumed,
        "done skips the rest"
    );
    let mut terminator = [0u8; TERMINATOR_MAX];
    let n = appending.finish(&mut terminator);
    out.extend_from_slice(&terminator[..n]);
    assert!(
        out.starts_with(REPLY),
        "{tier:?}: the reply before the body"
    );
    out.split_off(REPLY.len())
}

/// The whole message in one call with ample output.
fn stuff(tier: Tier, message: &[u8], extent: Extent) -> Vec<u8> {
    stream(
        tier,
        message,
        extent,
        &[message.len().max(1)],
        &[message.len() * 2 + 1],
    )
}

const TOP0: Extent = Extent::Top { body_lines: 0 };
const TOP1: Extent = Extent::Top { body_lines: 1 };
const TOP2: Extent = Extent::Top { body_lines: 2 };
const TOP_MANY: Extent = Extent::Top { body_lines: 1000 };

/// (name, message, extent, expected wire form).
const CASES: &[(&str, &[u8], Extent, &[u8])] = &[
    ("empty", b"", Extent::Whole, b".\r\n"),
    ("lone dot", b".", Extent::Whole, b"..\r\n.\r\n"),
    ("two dots", b"..", Extent::Whole, b"...\r\n.\r\n"),
    ("dot line LF", b".\n", Extent::Whole, b"..\r\n.\r\n"),
    (
        "terminator-like body",
        b"\r\n.\r\n",
        Extent::Whole,
        b"\r\n..\r\n.\r\n",
    ),
    ("dot mid line", b"a.b\n", Extent::Whole, b"a.b\r\n.\r\n"),
    (
        "dot after lone CR",
        b"a\r.b\n",
        Extent::Whole,
        b"a\r.b\r\n.\r\n",
    ),
    ("bare LF", b"a\nb\n", Extent::Whole, b"a\r\nb\r\n.\r\n"),
    (
        "CRLF kept",
        b"a\r\nb\r\n",
        Extent::Whole,
        b"a\r\nb\r\n.\r\n",
    ),
    (
        "mixed endings",
        b"a\r\nb\nc\r\n",
        Extent::Whole,
        b"a\r\nb\r\nc\r\n.\r\n",
    ),
    ("lone CR passes", b"a\rb\n", Extent::Whole, b"a\rb\r\n.\r\n"),
    ("CR CR LF", b"a\r\r\n", Extent::Whole, b"a\r\r\n.\r\n"),
    ("CR at end", b"a\r", Extent::Whole, b"a\r\r\n.\r\n"),
    (
        "no final newline",
        b"a\nb",
        Extent::Whole,
        b"a\r\nb\r\n.\r\n",
    ),
    ("only LF", b"\n", Extent::Whole, b"\r\n.\r\n"),
    (
        "blank lines",
        b"\n\n\n",
        Extent::Whole,
        b"\r\n\r\n\r\n.\r\n",
    ),
    (
        "dot lines in a row",
        b".\n.\n..\n",
        Extent::Whole,
        b"..\r\n..\r\n...\r\n.\r\n",
    ),
    (
        "TOP 0",
        b"A: 1\nB: 2\n\nbody\nmore\n",
        TOP0,
        b"A: 1\r\nB: 2\r\n\r\n.\r\n",
    ),
    (
        "TOP 1",
        b"A: 1\n\nbody\nmore\n",
        TOP1,
        b"A: 1\r\n\r\nbody\r\n.\r\n",
    ),
    (
        "TOP 2 stuffs",
        b"A: 1\n\n.x\n.y\n.z\n",
        TOP2,
        b"A: 1\r\n\r\n..x\r\n..y\r\n.\r\n",
    ),
    (
        "TOP beyond end",
        b"A: 1\n\nbody\n",
        TOP_MANY,
        b"A: 1\r\n\r\nbody\r\n.\r\n",
    ),
    (
        "TOP partial last line",
        b"A: 1\n\nbody",
        TOP_MANY,
        b"A: 1\r\n\r\nbody\r\n.\r\n",
    ),
    (
        "TOP partial line counts",
        b"A: 1\n\nx\ny",
        TOP2,
        b"A: 1\r\n\r\nx\r\ny\r\n.\r\n",
    ),
    (
        "TOP headers only",
        b"A: 1\nB: 2\n",
        TOP1,
        b"A: 1\r\nB: 2\r\n.\r\n",
    ),
    ("TOP headers no newline", b"A: 1", TOP1, b"A: 1\r\n.\r\n"),
    (
        "TOP CRLF headers",
        b"A: 1\r\n\r\nx\r\ny\r\n",
        TOP1,
        b"A: 1\r\n\r\nx\r\n.\r\n",
    ),
    (
        "TOP CRLF blank, LF body",
        b"A: 1\r\n\r\nx\ny\n",
        TOP1,
        b"A: 1\r\n\r\nx\r\n.\r\n",
    ),
    ("TOP empty message", b"", TOP1, b".\r\n"),
    ("TOP starts blank", b"\nx\ny\n", TOP1, b"\r\nx\r\n.\r\n"),
    (
        "TOP CR CR LF not blank",
        b"A\n\r\r\nx\n\ny\nz\n",
        TOP1,
        b"A\r\n\r\r\nx\r\n\r\ny\r\n.\r\n",
    ),
    (
        "TOP CR x not blank",
        b"A\n\rx\n\ny\nz\n",
        TOP0,
        b"A\r\n\rx\r\n\r\n.\r\n",
    ),
    ("TOP dot header", b".A\n\n.b\n", TOP0, b"..A\r\n\r\n.\r\n"),
    ("TOP blank at end", b"A\n\n", TOP1, b"A\r\n\r\n.\r\n"),
];

#[test]
fn model_matches_the_table() {
    for &(name, message, extent, expected) in CASES {
        assert_eq!(model(message, extent), expected, "{name}");
    }
}

#[test]
fn every_tier_matches_the_table() {
    for tier in Tier::available() {
        for &(name, message, extent, expected) in CASES {
            assert_eq!(stuff(tier, message, extent), expected, "{tier:?} {name}");
        }
    }
}

#[test]
fn every_split_point_and_small_output() {
    for tier in Tier::available() {
        for &(name, message, extent, expected) in CASES {
            for split in 0..=message.len() {
                let sizes = [split.max(1), message.len()];
                assert_eq!(
                    stream(tier, message, extent, &sizes, &[64]),
                    expected,
                    "{tier:?} {name} @{split}"
                );
            }
            for out in [Stuffer::OUT_MIN, 3, 5] {
                assert_eq!(
                    stream(tier, message, extent, &[1, 2, 3], &[out]),
                    expected,
                    "{tier:?} {name} out {out}"
                );
            }
        }
    }
}

#[test]
fn top_done_skips_input_and_finishes_at_line_start() {
    for tier in Tier::available() {
        let mut stuffer = Stuffer::with_tier(TOP0, tier).expect("available");
        let mut out = [0u8; 64];
        let message = b"A: 1\n\nnever read\n";
        assert_eq!(stuffer.transform(&message[..4], &mut out), (4, 4));
        assert!(!stuffer.is_input_done());
        assert_eq!(
            stuffer.transform(&message[4..], &mut out),
            (message.len() - 4, 4)
        );
        assert!(stuffer.is_input_done());
        assert_eq!(&out[..4], b"\r\n\r\n");
        assert_eq!(stuffer.transform(b"more", &mut out), (4, 0));
        assert_eq!(stuffer.finish(&mut out), 3);
        assert_eq!(&out[..3], b".\r\n");
    }
}

#[test]
fn retr_is_never_done() {
    let mut stuffer = Stuffer::new(Extent::Whole);
    let mut out = [0u8; 64];
    assert_eq!(stuffer.transform(b"\n\n\n", &mut out), (3, 6));
    assert!(!stuffer.is_input_done());
}

#[test]
#[should_panic(expected = "transform after finish")]
fn transform_after_finish_is_a_caller_bug() {
    let mut stuffer = Stuffer::new(Extent::Whole);
    stuffer.finish(&mut [0; TERMINATOR_MAX]);
    stuffer.transform(b"x", &mut [0; 8]);
}

#[test]
fn detection_is_stable_and_available() {
    let tier = Tier::detected();
    assert!(tier.is_available());
    assert_eq!(Tier::detected(), tier);
    assert_eq!(Tier::available().last(), Some(tier));
    #[cfg(all(target_arch = "x86_64", not(any(shardpop_force_scalar, miri))))]
    assert!(Tier::Sse2.is_available(), "SSE2 is x86_64 baseline");
}

#[test]
fn scan_table() {
    let cases: &[(&[u8], Scan)] = &[
        (
            b"",
            Scan {
                crlf_octets: 0,
                bare_lf: 0,
                dot_lines: 0,
                ends_with_lf: false,
            },
        ),
        (
            b".",
            Scan {
                crlf_octets: 1,
                bare_lf: 0,
                dot_lines: 1,
                ends_with_lf: false,
            },
        ),
        (
            b"\n",
            Scan {
                crlf_octets: 2,
                bare_lf: 1,
                dot_lines: 0,
                ends_with_lf: true,
            },
        ),
        (
            b"a\r\n.b\n.\r\n",
            Scan {
                crlf_octets: 10,
                bare_lf: 1,
                dot_lines: 2,
                ends_with_lf: true,
            },
        ),
        (
            b"\r\r\n\r.\n",
            Scan {
                crlf_octets: 7,
                bare_lf: 1,
                dot_lines: 0,
                ends_with_lf: true,
            },
        ),
        (
            b"a.\n..",
            Scan {
                crlf_octets: 6,
                bare_lf: 1,
                dot_lines: 1,
                ends_with_lf: false,
            },
        ),
    ];
    for tier in Tier::available() {
        for &(message, expected) in cases {
            assert_eq!(tier.scan(message), expected, "{tier:?} {message:?}");
        }
    }
}

#[test]
fn find_dot_line_table() {
    let message = b".a\n.b\r\n..\nx.\n\n.";
    let expected_starts = [0, 3, 7, 14];
    for tier in Tier::available() {
        let mut found = Vec::new();
        let mut from = 0;
        while let Some(p) = tier.find_dot_line(message, from) {
            found.push(p);
            from = p + 1;
        }
        assert_eq!(found, expected_starts, "{tier:?}");
        assert_eq!(tier.find_dot_line(message, message.len()), None);
        assert_eq!(tier.find_dot_line(message, message.len() + 5), None);
        assert_eq!(tier.find_dot_line(b"", 0), None);
    }
}

/// Checks every tier against the reference on one message: the transform
/// (whole and in small steps), the scan and the dot search from every offset.
fn check_tiers(message: &[u8], extent: Extent) {
    let expected = stuff(Tier::Reference, message, extent);
    let scanned = Tier::Reference.scan(message);
    // The reference's answer for every `from`, in one backward pass.
    let mut next_dot = vec![None; message.len() + 1];
    for from in (0..message.len()).rev() {
        let here = message[from] == b'.' && (from == 0 || message[from - 1] == b'\n');
        next_dot[from] = if here { Some(from) } else { next_dot[from + 1] };
    }
    assert_eq!(next_dot[0], Tier::Reference.find_dot_line(message, 0));
    for tier in Tier::available().skip(1) {
        assert_eq!(
            stuff(tier, message, extent),
            expected,
            "{tier:?} {extent:?} {message:?}"
        );
        let ample = [message.len() * 2 + 1];
        assert_eq!(
            stream_append(tier, message, extent, &[message.len().max(1)], &ample),
            expected,
            "{tier:?} {extent:?} {message:?} appended"
        );
        assert_eq!(tier.scan(message), scanned, "{tier:?} scan {message:?}");
        for (from, &want) in next_dot.iter().enumerate() {
            assert_eq!(
                tier.find_dot_line(message, from),
                want,
                "{tier:?} from {from} {message:?}"
            );
        }
    }
}

/// Short messages whose special bytes are padded to every alignment around
/// the vector widths (memchr's `Seed::generate`).
#[test]
fn seeds_at_every_alignment() {
    let seeds: &[&[u8]] = &[
        b".",
        b"\n.",
        b"\r\n.",
        b"\n",
        b"\r\n",
        b"\r",
        b"\r.\n",
        b"\n\n.",
        b".\r\n\r\n.x\n",
        b"\n\r\n\n",
    ];
    let pad_max = if cfg!(miri) { 6 } else { 70 };
    for seed in seeds {
        for before in 0..=pad_max {
            for after in [0, 1, 15, 16, 17, 31, 32, 33, 63, 64, 65, pad_max] {
                let mut message = vec![b'x'; before];
                message.extend_from_slice(seed);
                message.extend(std::iter::repeat_n(b'y', after));
                // The same again, so the second copy sits in a later block.
                let twice = [message.as_slice(), message.as_slice()].concat();
                for extent in [Extent::Whole, TOP1] {
                    check_tiers(&message, extent);
                    check_tiers(&twice, extent);
                }
            }
        }
    }
}

/// Every byte value at every position of a few blocks, next to an LF, a CR
/// and a dot, so no classifier confuses a byte with '\n', '\r' or '.'.
#[test]
fn all_256_bytes() {
    for byte in 0..=255u8 {
        for at in 0..70 {
            let mut plain = vec![b'x'; 140];
            plain[at] = byte;
            let mut context = plain.clone();
            context[at + 1] = byte;
            context[at + 2] = b'.';
            context[at + 3] = b'\r';
            context[at + 4] = byte;
            if at > 0 {
                context[at - 1] = b'\n';
            }
            for message in [&plain, &context] {
                check_tiers(message, Extent::Whole);
            }
            check_tiers(&context, TOP1);
        }
    }
}

/// Bytes biased toward the ones the transform cares about.
fn mail_byte() -> impl Strategy<Value = u8> {
    prop_oneof![
        4 => Just(b'.'),
        4 => Just(b'\r'),
        6 => Just(b'\n'),
        8 => Just(b'a'),
        1 => any::<u8>(),
    ]
}

fn extent() -> impl Strategy<Value = Extent> {
    prop_oneof![
        2 => Just(Extent::Whole),
        2 => (0u64..8).prop_map(|body_lines| Extent::Top { body_lines }),
        1 => (0u64..200).prop_map(|body_lines| Extent::Top { body_lines }),
    ]
}

/// Mail-like text: runs of ordinary bytes between the special ones, so the
/// vector tiers see blocks both with and without insertions.
fn message() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        3 => prop::collection::vec(mail_byte(), 0..8),
        1 => (0usize..90).prop_map(|n| vec![b'z'; n]),
    ];
    prop::collection::vec(piece, 0..40).prop_map(|pieces| pieces.concat())
}

/// Mail-sized messages: lines of 0..100 bytes, some starting with '.',
/// ending in LF, CRLF, a lone CR or nothing, so the block loops run for many
/// iterations and across the chunk boundaries of a streamed body.
fn long_message() -> impl Strategy<Value = Vec<u8>> {
    let line = (any::<bool>(), 0usize..100, 0u8..4).prop_map(|(dot, len, end)| {
        let mut line = if dot { b".".to_vec() } else { Vec::new() };
        line.extend(std::iter::repeat_n(b'q', len));
        line.extend_from_slice([&b"\n"[..], b"\r\n", b"\r", b""][usize::from(end)]);
        line
    });
    prop::collection::vec(line, 0..300).prop_map(|lines| lines.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn long_messages_chunked(
        message in long_message(),
        extent in extent(),
        chunk_sizes in prop::collection::vec(1usize..5000, 1..4),
        out_sizes in prop::collection::vec(Stuffer::OUT_MIN..9000, 1..4),
    ) {
        let expected = model(&message, extent);
        for tier in Tier::available() {
            prop_assert_eq!(&stuff(tier, &message, extent), &expected, "{:?} whole", tier);
            prop_assert_eq!(&stream(tier, &message, extent, &chunk_sizes, &out_sizes), &expected, "{:?}", tier);
            prop_assert_eq!(&stream_append(tier, &message, extent, &chunk_sizes, &out_sizes), &expected, "{:?} appended", tier);
        }
    }
}

proptest! {
    #[test]
    fn reference_matches_model(message in message(), extent in extent()) {
        prop_assert_eq!(stuff(Tier::Reference, &message, extent), model(&message, extent));
    }

    #[test]
    fn tiers_match_reference(message in message(), extent in extent()) {
        check_tiers(&message, extent);
    }

    #[test]
    fn chunked_matches_whole(
        message in message(),
        extent in extent(),
        chunk_sizes in prop::collection::vec(1usize..100, 1..6),
        out_sizes in prop::collection::vec(Stuffer::OUT_MIN..300, 1..6),
    ) {
        let expected = stuff(Tier::Reference, &message, extent);
        for tier in Tier::available() {
            prop_assert_eq!(&stream(tier, &message, extent, &chunk_sizes, &out_sizes), &expected, "{:?}", tier);
            prop_assert_eq!(&stream_append(tier, &message, extent, &chunk_sizes, &out_sizes), &expected, "{:?} appended", tier);
        }
    }

    #[test]
    fn random_bytes(message in prop::collection::vec(any::<u8>(), 0..300), extent in extent()) {
        check_tiers(&message, extent);
    }
}
