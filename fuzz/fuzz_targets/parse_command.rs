//! `protocol::parse` on arbitrary bytes and line limits: it never panics,
//! what it consumes lies within the buffer (and is never nothing on an
//! error), it frames at LF, and a command re-parses the same from its own line.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shardpop::protocol::{Status, parse};

fuzz_target!(|data: &[u8]| {
    let Some((&limit, buf)) = data.split_first() else {
        return;
    };
    // 1..=1021, around the 16..=8192 the config allows and below it.
    let limit = 1 + usize::from(limit) * 4;
    match parse(buf, limit) {
        Ok(Status::Partial) => {
            assert!(buf.len() < limit, "partial at or past the limit");
            assert!(!buf.contains(&b'\n'), "partial with a line end");
        }
        Ok(Status::Complete((command, consumed))) => {
            assert!(consumed > 0 && consumed <= buf.len().min(limit));
            assert_eq!(buf[consumed - 1], b'\n');
            assert!(!buf[..consumed - 1].contains(&b'\n'));
            let line = &buf[..consumed];
            // Alone, and with the limit exactly at the line's length.
            for limit in [limit, consumed] {
                match parse(line, limit) {
                    Ok(Status::Complete((again, n))) => {
                        assert_eq!(again, command);
                        assert_eq!(n, consumed);
                    }
                    other => panic!("{command:?} from {line:?} re-parsed as {other:?}"),
                }
            }
        }
        Err(error) => {
            assert!(error.consumed > 0 && error.consumed <= buf.len());
            let dropped = &buf[..error.consumed];
            if error.resync {
                // Nothing of the line end seen yet: all of it is dropped.
                assert_eq!(error.consumed, buf.len());
                assert!(!dropped.contains(&b'\n'));
            } else {
                assert_eq!(dropped.last(), Some(&b'\n'));
                assert!(!dropped[..dropped.len() - 1].contains(&b'\n'));
            }
        }
    }
});
