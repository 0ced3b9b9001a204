//! `{SCRAM-SHA-256}`: the keys of RFC 5802 / RFC 7677 as Dovecot stores them,
//! `<iterations>,<salt base64>,<StoredKey base64>,<ServerKey base64>`, and
//! the key derivation the SASL mechanism (`auth::sasl`) shares with it.
//!
//! Dovecot's rules (2.3, `password-scheme-scram.c`), followed here:
//! - Exactly four comma-separated fields; the iteration count is a plain
//!   decimal in `4096..=i32::MAX`; both keys are base64 of 32 bytes.
//! - The password is hashed as the bytes it is, without SASLprep (Dovecot's
//!   "FIXME: credentials should be SASLprepped"), so an ASCII password and
//!   any password a client sends unchanged interoperate.
//! - `doveadm pw -s SCRAM-SHA-256` writes 4096 iterations and a 16-byte salt.
//!
//! Verifying a USER/PASS login against these keys recomputes the StoredKey
//! (one PBKDF2 of the stored iteration count) and compares it in constant
//! time; the ServerKey is not needed for that, as in Dovecot.

use std::num::NonZeroU32;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ring::{digest, hmac, pbkdf2};

/// SHA-256 output, the size of every SCRAM-SHA-256 key.
pub(crate) const KEY_BYTES: usize = 32;

/// Dovecot's lower bound on the stored iteration count (RFC 7677 §4: at least 4096).
pub(crate) const ITERATIONS_MIN: u32 = 4096;

/// Dovecot's upper bound (`INT_MAX`).
pub(crate) const ITERATIONS_MAX: u32 = i32::MAX as u32;

/// What `hash_password` writes: Dovecot's default, and the RFC's minimum.
pub(crate) const ITERATIONS_DEFAULT: u32 = 4096;

/// Salt length `hash_password` writes, as `doveadm pw` does.
pub(crate) const SALT_BYTES: usize = 16;

/// One user's SCRAM-SHA-256 keys: what the server needs to run the exchange
/// without knowing the password. `Debug` shows the iteration count only.
#[derive(Clone)]
pub(crate) struct ScramKeys {
    /// PBKDF2 iterations, `ITERATIONS_MIN..=ITERATIONS_MAX`.
    pub(crate) iterations: u32,
    pub(crate) salt: Vec<u8>,
    /// `H(HMAC(SaltedPassword, "Client Key"))`.
    pub(crate) stored_key: [u8; KEY_BYTES],
    /// `HMAC(SaltedPassword, "Server Key")`.
    pub(crate) server_key: [u8; KEY_BYTES],
}

impl std::fmt::Debug for ScramKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScramKeys")
            .field("iterations", &self.iterations)
            .finish_non_exhaustive()
    }
}

impl ScramKeys {
    /// RFC 5802 §3: SaltedPassword = Hi(password, salt, i), then the
    /// StoredKey and ServerKey from it.
    ///
    /// # Panics
    /// If `iterations` is 0; callers pass parsed or constant counts.
    pub(crate) fn derive(password: &[u8], salt: &[u8], iterations: u32) -> ScramKeys {
        let rounds = NonZeroU32::new(iterations).expect("SCRAM iteration count is at least 1");
        let mut salted = [0u8; KEY_BYTES];
        pbkdf2::derive(
            pbkdf2::PBKDF2_HMAC_SHA256,
            rounds,
            salt,
            password,
            &mut salted,
        );
        let salted_key = hmac::Key::new(hmac::HMAC_SHA256, &salted);
        let client_key = hmac_sha256_with(&salted_key, &[b"Client Key"]);
        ScramKeys {
            iterations,
            salt: salt.to_vec(),
            stored_key: sha256(&client_key),
            server_key: hmac_sha256_with(&salted_key, &[b"Server Key"]),
        }
    }

    /// Parses what follows `{SCRAM-SHA-256}`. The error is static text that
    /// never holds any part of the field.
    pub(crate) fn parse(body: &str) -> Result<ScramKeys, &'static str> {
        let fields: Vec<&str> = body.split(',').collect();
        let [iterations, salt, stored_key, server_key] = fields[..] else {
            return Err("not iterations,salt,StoredKey,ServerKey");
        };
        let iterations = parse_iterations(iterations)?;
        let salt = STANDARD
            .decode(salt)
            .map_err(|_| "salt is not valid base64")?;
        if salt.is_empty() {
            return Err("salt is empty");
        }
        Ok(ScramKeys {
            iterations,
            salt,
            stored_key: decode_key(stored_key).ok_or("StoredKey is not base64 of 32 bytes")?,
            server_key: decode_key(server_key).ok_or("ServerKey is not base64 of 32 bytes")?,
        })
    }

    /// The stored form, without the `{SCRAM-SHA-256}` prefix.
    pub(crate) fn encode(&self) -> String {
        format!(
            "{},{},{},{}",
            self.iterations,
            STANDARD.encode(&self.salt),
            STANDARD.encode(self.stored_key),
            STANDARD.encode(self.server_key)
        )
    }

    /// Whether `password` gives this StoredKey (a USER/PASS login).
    pub(crate) fn verify(&self, password: &[u8]) -> bool {
        let derived = ScramKeys::derive(password, &self.salt, self.iterations);
        super::ct_eq(&derived.stored_key, &self.stored_key)
    }
}

/// A plain decimal in Dovecot's range; no sign, no spaces.
fn parse_iterations(text: &str) -> Result<u32, &'static str> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err("iteration count is not a number");
    }
    match text.parse::<u64>() {
        Ok(n) if (u64::from(ITERATIONS_MIN)..=u64::from(ITERATIONS_MAX)).contains(&n) => {
            Ok(n as u32)
        }
        _ => Err("iteration count is out of range 4096..=2147483647"),
    }
}

fn decode_key(text: &str) -> Option<[u8; KEY_BYTES]> {
    STANDARD.decode(text).ok()?.try_into().ok()
}

/// SHA-256 of `data`.
pub(crate) fn sha256(data: &[u8]) -> [u8; KEY_BYTES] {
    let mut out = [0u8; KEY_BYTES];
    out.copy_from_slice(digest::digest(&digest::SHA256, data).as_ref());
    out
}

/// HMAC-SHA-256 under `key` of the concatenation of `parts`.
pub(crate) fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; KEY_BYTES] {
    hmac_sha256_with(&hmac::Key::new(hmac::HMAC_SHA256, key), parts)
}

fn hmac_sha256_with(key: &hmac::Key, parts: &[&[u8]]) -> [u8; KEY_BYTES] {
    let mut context = hmac::Context::with_key(key);
    for part in parts {
        context.update(part);
    }
    let mut out = [0u8; KEY_BYTES];
    out.copy_from_slice(context.sign().as_ref());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7677 §3: "pencil", salt W22ZaJ0SNY7soEsUEjb6gQ==, 4096 iterations.
    /// Dovecot 2.3.19's `doveadm pw -t` verifies this line with "pencil".
    const RFC7677: &str = "4096,W22ZaJ0SNY7soEsUEjb6gQ==,WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=,wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU=";

    #[test]
    fn derive_matches_the_rfc7677_keys() {
        let stored = ScramKeys::parse(RFC7677).unwrap();
        let derived = ScramKeys::derive(b"pencil", &stored.salt, 4096);
        assert_eq!(derived.stored_key, stored.stored_key);
        assert_eq!(derived.server_key, stored.server_key);
        assert_eq!(derived.encode(), RFC7677);
        assert!(stored.verify(b"pencil"));
        assert!(!stored.verify(b"pencil "));
    }

    #[test]
    fn malformed_fields_are_refused() {
        let key = "WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=";
        let short_key = "WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4g==";
        let table: Vec<(String, &str)> = vec![
            (String::new(), "not iterations,salt,StoredKey,ServerKey"),
            (
                format!("4096,c2FsdA==,{key}"),
                "not iterations,salt,StoredKey,ServerKey",
            ),
            (
                format!("4096,c2FsdA==,{key},{key},x"),
                "not iterations,salt,StoredKey,ServerKey",
            ),
            (
                format!("4095,c2FsdA==,{key},{key}"),
                "iteration count is out of range 4096..=2147483647",
            ),
            (
                format!("2147483648,c2FsdA==,{key},{key}"),
                "iteration count is out of range 4096..=2147483647",
            ),
            (
                format!("99999999999999999999999,c2FsdA==,{key},{key}"),
                "iteration count is out of range 4096..=2147483647",
            ),
            (
                format!("+4096,c2FsdA==,{key},{key}"),
                "iteration count is not a number",
            ),
            (
                format!(",c2FsdA==,{key},{key}"),
                "iteration count is not a number",
            ),
            (format!("4096,,{key},{key}"), "salt is empty"),
            (
                format!("4096,c2FsdA,{key},{key}"),
                "salt is not valid base64",
            ),
            (
                format!("4096,c2FsdA==,{short_key},{key}"),
                "StoredKey is not base64 of 32 bytes",
            ),
            (
                format!("4096,c2FsdA==,{key},not*base64"),
                "ServerKey is not base64 of 32 bytes",
            ),
        ];
        for (body, want) in table {
            assert_eq!(ScramKeys::parse(&body).unwrap_err(), want, "{body}");
        }
        let max = format!("2147483647,c2FsdA==,{key},{key}");
        assert_eq!(ScramKeys::parse(&max).unwrap().iterations, ITERATIONS_MAX);
    }

    #[test]
    fn debug_shows_no_key_material() {
        let shown = format!("{:?}", ScramKeys::parse(RFC7677).unwrap());
        assert_eq!(shown, "ScramKeys { iterations: 4096, .. }");
    }
}
