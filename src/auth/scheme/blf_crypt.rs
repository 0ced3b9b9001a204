//! BLF-CRYPT: bcrypt strings (`$2y$`, `$2b$`, `$2a$`, `$2x$`). Dovecot 2.3's
//! `doveadm pw -s CRYPT` writes these, so passwd-files carry them often.
//! Passwords past 72 bytes are cut, as crypt_blowfish does.

use bcrypt::{HashParts, Version};

/// The cost `hash_password` uses (2^10 rounds; doveadm's default is 5,
/// which is too cheap today, and any cost verifies everywhere).
pub(super) const COST: u32 = 10;

const COST_MIN: u32 = 4;
const COST_MAX: u32 = 31;

/// Checks that `text` is a bcrypt string we can verify; returns its cost.
pub(super) fn parse(text: &str) -> Result<u32, &'static str> {
    let parts: HashParts = text.parse().map_err(|_| "malformed bcrypt string")?;
    let cost = parts.get_cost();
    if !(COST_MIN..=COST_MAX).contains(&cost) {
        return Err("bcrypt cost out of range 4..=31");
    }
    Ok(cost)
}

/// Whether `password` matches the bcrypt string `stored` (already parsed).
pub(super) fn verify(stored: &str, password: &[u8]) -> bool {
    // The bcrypt crate compares in constant time.
    bcrypt::verify(password, stored).unwrap_or(false)
}

/// A `$2y$` string for `password` with a fresh salt, as Dovecot writes it.
pub(super) fn generate(password: &[u8], salt: [u8; 16]) -> String {
    bcrypt::hash_with_salt(password, COST, salt)
        .expect("cost is in range and the password is cut at 72 bytes")
        .format_for_version(Version::TwoY)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doveadm_known_answers() {
        // From Dovecot 2.3.19's `doveadm pw -s BLF-CRYPT -p secret` (and -r 4).
        for stored in [
            "$2y$05$ROvahDiyS4QrtyILPWIysO4XCuX17bUQGVp./DQZlSnuEeIP6Q.kS",
            "$2y$04$jLfFhVRmpk5Q7s39xLoEiuvdXyNUM4wkcsg1Ixhxa7TfBPQchJPBm",
        ] {
            assert!(parse(stored).is_ok());
            assert!(verify(stored, b"secret"), "{stored}");
            assert!(!verify(stored, b"Secret"), "{stored}");
        }
    }

    #[test]
    fn malformed_is_refused() {
        for text in [
            "$2y$05$ROvahDiyS4QrtyILPWIysO4XCuX17bUQGVp./DQZlSnuEeIP6Q.k",
            "$2z$05$ROvahDiyS4QrtyILPWIysO4XCuX17bUQGVp./DQZlSnuEeIP6Q.kS",
            "$2y$03$ROvahDiyS4QrtyILPWIysO4XCuX17bUQGVp./DQZlSnuEeIP6Q.kS",
            "$2y$xx$ROvahDiyS4QrtyILPWIysO4XCuX17bUQGVp./DQZlSnuEeIP6Q.kS",
        ] {
            assert!(parse(text).is_err(), "{text}");
        }
    }
}
