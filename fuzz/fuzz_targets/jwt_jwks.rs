//! A JWKS document and a JWT access token from outside: the bytes are
//! parsed as a key set and checked as a token against a fixed key. Never
//! panics; nothing unsigned is accepted.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    shardpop::auth::oauth::fuzz_jwks_and_token(data);
});
