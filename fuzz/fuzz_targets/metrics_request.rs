//! `metrics::http::route` on arbitrary request bytes: it never panics, a
//! verdict on a prefix stands once given (the endpoint decides as bytes
//! arrive), and it never waits past the size cap.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shardpop::metrics::http::{REQUEST_BYTES_MAX, Route, route};

fuzz_target!(|data: &[u8]| {
    let data = &data[..data.len().min(REQUEST_BYTES_MAX + 64)];
    let full = route(data);
    if data.len() >= REQUEST_BYTES_MAX {
        assert_ne!(full, Route::Partial);
    }
    let cut = data.first().map_or(0, |&b| usize::from(b)).min(data.len());
    let prefix = route(&data[..cut]);
    if prefix != Route::Partial && prefix != Route::TooLarge {
        assert_eq!(prefix, full);
    }
});
