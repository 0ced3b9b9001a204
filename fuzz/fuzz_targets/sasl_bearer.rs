//! An OAUTHBEARER (RFC 7628 GS2 header and key/value pairs) or XOAUTH2
//! client response, as the client sends it after base64: never panics, a
//! parsed response always has a token and a bounded user name.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    shardpop::auth::sasl::oauth::fuzz_bearer_responses(data);
});
