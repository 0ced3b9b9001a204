//! Session tickets are attacker-controlled bytes: `FileTicketer::decrypt` on
//! arbitrary input never panics and opens nothing it did not seal; what it
//! seals opens to the same bytes; a key file of arbitrary text parses or
//! fails without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rustls::server::ProducesTickets;
use shardpop::tls::{FileTicketer, parse_ticket_keys};

const KEYS: &[u8] = b"# fuzz\n\
    0101010101010101010101010101010101010101010101010101010101010101\
    0202020202020202020202020202020202020202020202020202020202020202\n";

fuzz_target!(|data: &[u8]| {
    let _ = parse_ticket_keys(data);
    let ticketer = FileTicketer::new(parse_ticket_keys(KEYS).expect("fixed keys parse"));
    assert_eq!(ticketer.decrypt(data), None, "forged ticket opened");
    let sealed = ticketer.encrypt(data).expect("sealing never fails");
    assert_eq!(ticketer.decrypt(&sealed).as_deref(), Some(data));
});
