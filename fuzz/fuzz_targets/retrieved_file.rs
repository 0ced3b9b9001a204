//! `store::policy::parse_retrieved` (the EXPIRE retrieval-time file) on
//! arbitrary bytes: it never panics, and what it accepts encodes to a file
//! that parses to the same records; the expiry decision over them never
//! panics and only names messages that have a record.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shardpop::store::policy::{encode_retrieved, expired, parse_retrieved};

fuzz_target!(|data: &[u8]| {
    let Ok(times) = parse_retrieved(data) else {
        return;
    };
    let again = parse_retrieved(encode_retrieved(&times).as_bytes()).expect("an encoded file parses");
    assert_eq!(again, times);
    let names: Vec<&str> = times.keys().map(String::as_str).chain(["absent"]).collect();
    for keep in [0, 86_400, u64::MAX] {
        for index in expired(names.iter().copied(), &times, keep, 1_800_000_000) {
            assert!(times.contains_key(names[index]));
        }
    }
});
