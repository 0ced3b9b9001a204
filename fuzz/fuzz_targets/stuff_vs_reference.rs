//! Every wire tier against the reference: the transform (fed in the chunk
//! and output sizes the input asks for, into windows and appended onto a
//! Vec), the scan and the dot search.
//!
//! Input: `[mode, chunk, room, message @ ..]`. `mode` bit 0 picks RETR or
//! TOP, the other bits are TOP's line count; `chunk` and `room` size the
//! input chunks and output windows, alternating with sizes large enough for
//! the vector blocks.

#![no_main]

use libfuzzer_sys::fuzz_target;
use shardpop::wire::{Extent, Stuffer, TERMINATOR_MAX, Tier};

fuzz_target!(|data: &[u8]| {
    let [mode, chunk, room, ref message @ ..] = *data else {
        return;
    };
    let extent = match mode & 1 {
        0 => Extent::Whole,
        _ => Extent::Top {
            body_lines: u64::from(mode >> 1),
        },
    };
    let chunks = [usize::from(chunk) + 1, 4 * usize::from(chunk) + 128];
    let rooms = [
        usize::from(room) % 64 + Stuffer::OUT_MIN,
        4 * usize::from(room) + 192,
    ];
    let whole = [message.len() + 1];
    let ample = [2 * message.len() + 1];
    let expected = stream(
        Tier::Reference,
        message,
        extent,
        &whole,
        &ample,
        Output::Window,
    );
    let facts = Tier::Reference.scan(message);
    for tier in Tier::available() {
        assert_eq!(
            stream(tier, message, extent, &whole, &ample, Output::Window),
            expected,
            "{tier:?} whole"
        );
        assert_eq!(
            stream(tier, message, extent, &chunks, &rooms, Output::Window),
            expected,
            "{tier:?} chunked"
        );
        assert_eq!(
            stream(tier, message, extent, &chunks, &rooms, Output::Vec),
            expected,
            "{tier:?} appended"
        );
        assert_eq!(tier.scan(message), facts, "{tier:?} scan");
        let from = usize::from(room) * message.len() / 256;
        let want = Tier::Reference.find_dot_line(message, from);
        assert_eq!(
            tier.find_dot_line(message, from),
            want,
            "{tier:?} find_dot_line"
        );
    }
});

/// Where the transform writes.
#[derive(Clone, Copy)]
enum Output {
    /// `transform` into a window of the room's size.
    Window,
    /// `transform_append` onto a Vec that already holds a reply and whose
    /// spare capacity holds old bytes.
    Vec,
}

/// Streams `message` through `tier` with cycled chunk and room sizes;
/// returns the wire form with the terminator.
fn stream(
    tier: Tier,
    message: &[u8],
    extent: Extent,
    chunks: &[usize],
    rooms: &[usize],
    output: Output,
) -> Vec<u8> {
    const REPLY: &[u8] = b"+OK\r\n";
    let mut stuffer = Stuffer::with_tier(extent, tier).expect("available tier");
    let mut window = vec![0u8; rooms.iter().copied().max().unwrap_or(0)];
    let mut wire = REPLY.to_vec();
    let (mut consumed, mut call) = (0, 0);
    while consumed < message.len() && !stuffer.is_input_done() {
        let input = &message[consumed..message.len().min(consumed + chunks[call % chunks.len()])];
        let room = rooms[call % rooms.len()];
        let before = wire.len();
        let c = match output {
            Output::Window => {
                let (c, w) = stuffer.transform(input, &mut window[..room]);
                wire.extend_from_slice(&window[..w]);
                c
            }
            Output::Vec => {
                wire.reserve(room);
                for byte in wire.spare_capacity_mut() {
                    byte.write(b'#');
                }
                stuffer.transform_append(input, &mut wire, room)
            }
        };
        assert!(c > 0, "{tier:?}: no progress");
        assert!(wire.len() - before <= room, "{tier:?}: past the room");
        consumed += c;
        call += 1;
    }
    let mut terminator = [0u8; TERMINATOR_MAX];
    let n = stuffer.finish(&mut terminator);
    wire.extend_from_slice(&terminator[..n]);
    assert!(
        wire.starts_with(REPLY),
        "{tier:?}: the reply before the body"
    );
    wire.split_off(REPLY.len())
}
