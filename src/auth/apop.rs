//! APOP (RFC 1939, section 7): the client sends `MD5(challenge || password)`
//! in hex, where the challenge is the timestamp from our greeting. Only a
//! plaintext password can be checked this way.

use super::scheme::{ct_eq, hex_decode, md5};

/// An MD5 digest is 16 bytes, 32 hex digits.
const DIGEST_BYTES: usize = 16;

/// The client's digest, from 32 hex digits (either case, as Dovecot takes
/// it); `None` when it is not that.
pub(crate) fn parse_digest(digest_hex: &[u8]) -> Option<[u8; DIGEST_BYTES]> {
    if digest_hex.len() != 2 * DIGEST_BYTES {
        return None;
    }
    let text = std::str::from_utf8(digest_hex).ok()?;
    hex_decode(text)?.try_into().ok()
}

/// Whether `given` is MD5(`challenge` || `password`), compared in
/// constant time.
pub(crate) fn digest_matches(
    challenge: &[u8],
    password: &[u8],
    given: &[u8; DIGEST_BYTES],
) -> bool {
    ct_eq(&md5(&[challenge, password]), given)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHALLENGE: &[u8] = b"<1896.697170952@dbc.mtview.ca.us>";

    #[test]
    fn rfc1939_example() {
        let given = parse_digest(b"c4c9334bac560ecc979e58001b3e22fb").unwrap();
        assert!(digest_matches(CHALLENGE, b"tanstaaf", &given));
        assert!(!digest_matches(CHALLENGE, b"tanstaaF", &given));
        assert!(!digest_matches(
            b"<1897.697170952@dbc.mtview.ca.us>",
            b"tanstaaf",
            &given
        ));
        let upper = parse_digest(b"C4C9334BAC560ECC979E58001B3E22FB").unwrap();
        assert!(digest_matches(CHALLENGE, b"tanstaaf", &upper));
    }

    #[test]
    fn malformed_digests() {
        for bad in [
            &b""[..],
            b"c4c9334bac560ecc979e58001b3e22f",
            b"c4c9334bac560ecc979e58001b3e22fbb",
            b"c4c9334bac560ecc979e58001b3e22fg",
            b"c4c9334bac560ecc979e58001b3e22\xc3\xa9",
        ] {
            assert_eq!(parse_digest(bad), None, "{bad:?}");
        }
    }
}
