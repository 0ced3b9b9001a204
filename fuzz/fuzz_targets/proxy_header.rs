//! `protocol::proxy::parse` on arbitrary bytes: it never panics, a Complete
//! header lies within the buffer and the cap, and the verdict on a prefix is
//! never contradicted by more bytes (the engine parses as bytes arrive).
#![no_main]

use libfuzzer_sys::fuzz_target;
use shardpop::protocol::proxy::{HEADER_BYTES_MAX, Status, parse};

fuzz_target!(|data: &[u8]| {
    let full = parse(data);
    if let Ok(Status::Complete((header, consumed))) = &full {
        assert!(*consumed > 0 && *consumed <= data.len().min(HEADER_BYTES_MAX));
        // The header alone parses to the same thing.
        match parse(&data[..*consumed]) {
            Ok(Status::Complete((again, n))) => {
                assert_eq!(&again, header);
                assert_eq!(n, *consumed);
            }
            other => panic!("{header:?} re-parsed as {other:?}"),
        }
    }
    // Split at a point chosen by the input: the prefix is Partial or agrees.
    let cut = data.first().map_or(0, |&b| usize::from(b)).min(data.len());
    match parse(&data[..cut]) {
        Ok(Status::Partial) => {}
        verdict => assert_eq!(verdict, full),
    }
});
