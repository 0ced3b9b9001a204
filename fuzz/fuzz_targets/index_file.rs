//! `store::index::parse` on arbitrary bytes: it never panics; what it
//! accepts can be read through every accessor without a panic, holds only
//! valid UIDLs, and encodes to a file that parses to the same mailbox.
//! The first byte picks whether the CRC is fixed up first, so the fuzzer
//! also reaches the checks behind the checksum.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use shardpop::store::index::{encode, parse};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, bytes)) = data.split_first() else {
        return;
    };
    let mut bytes = bytes.to_vec();
    if mode & 1 == 1 && bytes.len() >= 16 {
        let crc = crc32fast::hash(&bytes[16..]);
        bytes[12..16].copy_from_slice(&crc.to_le_bytes());
    }
    let Ok(parsed) = parse(&bytes) else {
        return;
    };
    let (header, snapshot) = parsed.into_snapshot(Path::new("/m"));
    let mut total = 0u64;
    for i in 0..snapshot.messages.len() {
        assert!(snapshot.file_name(i).starts_with(snapshot.base_name(i)));
        let uidl = snapshot.uidl(i);
        assert!((1..=70).contains(&uidl.len()));
        assert!(uidl.iter().all(|b| (0x21..=0x7e).contains(b)));
        let _ = (snapshot.path(i), snapshot.is_crlf(i), snapshot.in_new(i));
        total += snapshot.messages[i].octets;
    }
    assert_eq!(total, snapshot.total_octets());
    let again = parse(&encode(&header, &snapshot)).expect("an encoded index parses");
    let (header2, snapshot2) = again.into_snapshot(Path::new("/m"));
    assert_eq!(header, header2);
    assert_eq!(snapshot.messages, snapshot2.messages);
    for i in 0..snapshot.messages.len() {
        assert_eq!(snapshot.file_name(i), snapshot2.file_name(i));
        assert_eq!(snapshot.uidl(i), snapshot2.uidl(i));
    }
});
