//! `dovecot-uidlist` and Maildir file names, as other programs leave them,
//! through the UIDL rules (`store::maildir::fuzz_uidls`): never a panic,
//! every UIDL a valid RFC 1939 unique-id, the same when made again, and a
//! bare saved `P` read as the base name, as Dovecot reads it.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    shardpop::store::maildir::fuzz_uidls(data);
});
