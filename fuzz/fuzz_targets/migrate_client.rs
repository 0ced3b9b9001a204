//! `migrate verify`'s POP3 client against arbitrary server bytes: a whole
//! read-only session (greeting, USER, PASS, STAT, LIST, UIDL, RETR of every
//! message, QUIT) either reads a maildrop whose LIST and UIDL agree or
//! fails with an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shardpop::migrate::client::script;

fuzz_target!(|data: &[u8]| {
    if let Ok(drop) = script(data) {
        for m in &drop.messages {
            assert!(!m.uidl.is_empty());
            assert!(m.body_sha256.is_some());
        }
    }
});
