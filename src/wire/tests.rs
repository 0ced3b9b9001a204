//! Tests of the wire layer: RFC edge cases, every tier against the reference.

use super::*;

/// Runs the whole message through `tier` in one call with a large buffer.
fn stuff(tier: Tier, message: &[u8], extent: Extent) -> Vec<u8> {
    let mut stuffer = Stuffer::with_tier(extent, tier).expect("tier available");
    let mut out = vec![0; message.len() * 2 + TERMINATOR_MAX];
    let (consumed, mut written) = stuffer.transform(message, &mut out);
    assert!(consumed == message.len() || stuffer.is_input_done());
    written += stuffer.finish(&mut out[written..]);
    out.truncate(written);
    out
}

#[test]
fn retr_examples() {
    for tier in Tier::available() {
        assert_eq!(
            stuff(tier, b"a\n.b\r\nc", Extent::Whole),
            b"a\r\n..b\r\nc\r\n.\r\n",
            "{tier:?}"
        );
    }
}
