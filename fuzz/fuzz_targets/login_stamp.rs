//! `store::policy::parse_login` (the LOGIN-DELAY stamp file) on arbitrary
//! bytes: it never panics, what it accepts encodes back to the same stamp,
//! and the delay rule over any stamp, delay and clock never panics and
//! never asks for a wait longer than the delay.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shardpop::store::policy::{LoginCheck, encode_login, login_check, parse_login};

fuzz_target!(|data: &[u8]| {
    if let Ok(stamp) = parse_login(data) {
        assert_eq!(parse_login(encode_login(stamp).as_bytes()), Ok(stamp));
    }
    if data.len() >= 20 {
        let last = u64::from_le_bytes(data[..8].try_into().unwrap());
        let now = u64::from_le_bytes(data[8..16].try_into().unwrap());
        let delay = u32::from_le_bytes(data[16..20].try_into().unwrap());
        match login_check(Some(last), delay, now) {
            LoginCheck::Allowed => {}
            LoginCheck::TooSoon { wait_secs } => {
                assert!(wait_secs >= 1 && wait_secs <= u64::from(delay));
            }
        }
    }
});
