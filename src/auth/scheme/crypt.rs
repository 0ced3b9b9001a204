//! crypt(3) strings in the Modular Crypt Format: MD5-crypt (`$1$`),
//! SHA256-crypt (`$5$`) and SHA512-crypt (`$6$`).
//!
//! Dovecot verifies these with `strcmp(crypt(password, stored), stored)`, so
//! we do the same: rebuild the whole string glibc's crypt(3) would return for
//! the stored setting (prefix, optional `rounds=`, salt) and compare it with
//! the stored one in constant time. That keeps glibc's corner cases: rounds
//! clamped to 1000..=999999999 and echoed only when given, the salt cut at 16
//! characters (8 for MD5) or at the first `$`.

use md5::{Digest, Md5};
use sha_crypt::{Params, sha256_crypt, sha512_crypt};

/// The crypt(3) alphabet, used for salts and for the encoded hash.
pub(super) const ALPHABET: &[u8; 64] =
    b"./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

const SHA_ROUNDS_DEFAULT: u32 = 5_000;
const SHA_ROUNDS_MIN: u64 = 1_000;
const SHA_ROUNDS_MAX: u64 = 999_999_999;
const SHA_SALT_CHARS_MAX: usize = 16;
const MD5_SALT_CHARS_MAX: usize = 8;
const MD5_ROUNDS: usize = 1_000;

/// Which crypt(3) algorithm a string names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum CryptAlg {
    Md5,
    Sha256,
    Sha512,
}

impl CryptAlg {
    fn prefix(self) -> &'static str {
        match self {
            CryptAlg::Md5 => "$1$",
            CryptAlg::Sha256 => "$5$",
            CryptAlg::Sha512 => "$6$",
        }
    }

    /// Length of the encoded hash after the last `$`.
    fn hash_chars(self) -> usize {
        match self {
            CryptAlg::Md5 => 22,
            CryptAlg::Sha256 => 43,
            CryptAlg::Sha512 => 86,
        }
    }
}

/// A stored crypt(3) string, split into the setting crypt(3) reads from it.
#[derive(Clone)]
pub(super) struct CryptHash {
    alg: CryptAlg,
    /// `Some` when the string carried `rounds=N$` (already clamped).
    rounds: Option<u32>,
    salt: String,
    stored: String,
}

impl CryptHash {
    /// Parses `text` (starting with `$1$`, `$5$` or `$6$`). Refuses strings
    /// that crypt(3) could never reproduce, so they are reported at load
    /// time rather than failing every login in silence.
    pub(super) fn parse(alg: CryptAlg, text: &str) -> Result<CryptHash, &'static str> {
        let rest = text
            .strip_prefix(alg.prefix())
            .ok_or("wrong crypt prefix")?;
        let (rounds, rest) = match alg {
            CryptAlg::Md5 => (None, rest),
            CryptAlg::Sha256 | CryptAlg::Sha512 => split_rounds(rest),
        };
        let salt_max = match alg {
            CryptAlg::Md5 => MD5_SALT_CHARS_MAX,
            CryptAlg::Sha256 | CryptAlg::Sha512 => SHA_SALT_CHARS_MAX,
        };
        let salt_end = rest.find('$').unwrap_or(rest.len()).min(salt_max);
        let salt = rest.get(..salt_end).ok_or("salt is not valid text")?;
        let hash = CryptHash {
            alg,
            rounds,
            salt: salt.to_owned(),
            stored: text.to_owned(),
        };
        let expected_len = hash.setting().len() + 1 + alg.hash_chars();
        let encoded = text.get(hash.setting().len() + 1..).unwrap_or("");
        let shape_ok = text.len() == expected_len
            && text.as_bytes()[hash.setting().len()] == b'$'
            && encoded.bytes().all(|b| ALPHABET.contains(&b));
        if !shape_ok {
            return Err("malformed crypt string (bad rounds, salt or hash length)");
        }
        Ok(hash)
    }

    /// The work factor, for picking a dummy of the same cost.
    pub(super) fn rounds(&self) -> u32 {
        match self.alg {
            CryptAlg::Md5 => MD5_ROUNDS as u32,
            CryptAlg::Sha256 | CryptAlg::Sha512 => self.rounds.unwrap_or(SHA_ROUNDS_DEFAULT),
        }
    }

    /// Whether crypt(3) of `password` with this setting gives the stored string.
    pub(super) fn verify(&self, password: &[u8]) -> bool {
        let computed = self.compute(password);
        super::ct_eq(computed.as_bytes(), self.stored.as_bytes())
    }

    /// What crypt(3) prints before the encoded hash: `$6$rounds=N$salt`.
    fn setting(&self) -> String {
        match self.rounds {
            Some(rounds) => format!("{}rounds={rounds}${}", self.alg.prefix(), self.salt),
            None => format!("{}{}", self.alg.prefix(), self.salt),
        }
    }

    fn compute(&self, password: &[u8]) -> String {
        let salt = self.salt.as_bytes();
        let rounds = self.rounds.unwrap_or(SHA_ROUNDS_DEFAULT);
        let encoded = match self.alg {
            CryptAlg::Md5 => encode(&md5_crypt_raw(password, salt), MD5_ORDER),
            CryptAlg::Sha256 => encode(&sha256_crypt(password, salt, params(rounds)), SHA256_ORDER),
            CryptAlg::Sha512 => encode(&sha512_crypt(password, salt, params(rounds)), SHA512_ORDER),
        };
        format!("{}${encoded}", self.setting())
    }
}

/// crypt(3) of `password` with a fresh `salt` (already in [`ALPHABET`]) and
/// the default cost: what `doveadm pw` writes after the `{SCHEME}`.
pub(super) fn generate(alg: CryptAlg, password: &[u8], salt: &str) -> String {
    let hash = CryptHash {
        alg,
        rounds: None,
        salt: salt.to_owned(),
        stored: String::new(),
    };
    hash.compute(password)
}

/// Splits glibc's optional `rounds=N$` off a SHA-crypt setting. As in glibc,
/// a `rounds=` not followed by digits and `$` is part of the salt.
fn split_rounds(rest: &str) -> (Option<u32>, &str) {
    let Some(after) = rest.strip_prefix("rounds=") else {
        return (None, rest);
    };
    let digits = after.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 || after.as_bytes().get(digits) != Some(&b'$') {
        return (None, rest);
    }
    // strtoul saturates; then glibc clamps into its range.
    let requested = after[..digits].parse::<u64>().unwrap_or(u64::MAX);
    let clamped = requested.clamp(SHA_ROUNDS_MIN, SHA_ROUNDS_MAX);
    (Some(clamped as u32), &after[digits + 1..])
}

fn params(rounds: u32) -> Params {
    // Only called with rounds already clamped into sha-crypt's range.
    Params::new(rounds).expect("rounds clamped to 1000..=999999999")
}

/// MD5-crypt (Poul-Henning Kamp's algorithm), the raw 16-byte result.
fn md5_crypt_raw(password: &[u8], salt: &[u8]) -> [u8; 16] {
    let alternate: [u8; 16] = Md5::new()
        .chain_update(password)
        .chain_update(salt)
        .chain_update(password)
        .finalize()
        .into();
    let mut context = Md5::new()
        .chain_update(password)
        .chain_update(b"$1$")
        .chain_update(salt);
    for chunk in password.chunks(16) {
        context.update(&alternate[..chunk.len()]);
    }
    let mut bits = password.len();
    while bits > 0 {
        if bits & 1 == 1 {
            context.update([0u8]);
        } else {
            context.update(&password[..1]);
        }
        bits >>= 1;
    }
    let mut result: [u8; 16] = context.finalize().into();
    for round in 0..MD5_ROUNDS {
        let mut context = Md5::new();
        if round & 1 == 1 {
            context.update(password);
        } else {
            context.update(result);
        }
        if round % 3 != 0 {
            context.update(salt);
        }
        if round % 7 != 0 {
            context.update(password);
        }
        if round & 1 == 1 {
            context.update(result);
        } else {
            context.update(password);
        }
        result = context.finalize().into();
    }
    result
}

/// How each crypt variant feeds its raw bytes, three at a time (high byte
/// first), into the crypt alphabet; the last group is shorter.
type Order = (&'static [[usize; 3]], &'static [usize]);

const MD5_ORDER: Order = (
    &[[0, 6, 12], [1, 7, 13], [2, 8, 14], [3, 9, 15], [4, 10, 5]],
    &[11],
);

const SHA256_ORDER: Order = (
    &[
        [0, 10, 20],
        [21, 1, 11],
        [12, 22, 2],
        [3, 13, 23],
        [24, 4, 14],
        [15, 25, 5],
        [6, 16, 26],
        [27, 7, 17],
        [18, 28, 8],
        [9, 19, 29],
    ],
    &[31, 30],
);

const SHA512_ORDER: Order = (
    &[
        [0, 21, 42],
        [22, 43, 1],
        [44, 2, 23],
        [3, 24, 45],
        [25, 46, 4],
        [47, 5, 26],
        [6, 27, 48],
        [28, 49, 7],
        [50, 8, 29],
        [9, 30, 51],
        [31, 52, 10],
        [53, 11, 32],
        [12, 33, 54],
        [34, 55, 13],
        [56, 14, 35],
        [15, 36, 57],
        [37, 58, 16],
        [59, 17, 38],
        [18, 39, 60],
        [40, 61, 19],
        [62, 20, 41],
    ],
    &[63],
);

/// crypt(3)'s base-64: each group of bytes becomes a little-endian run of
/// 6-bit digits (4 for three bytes, 3 for two, 2 for one).
fn encode(raw: &[u8], order: Order) -> String {
    let (groups, tail) = order;
    let mut out = String::with_capacity(groups.len() * 4 + 3);
    for group in groups {
        let word = (u32::from(raw[group[0]]) << 16)
            | (u32::from(raw[group[1]]) << 8)
            | u32::from(raw[group[2]]);
        push_digits(&mut out, word, 4);
    }
    let word = tail
        .iter()
        .fold(0u32, |word, &index| (word << 8) | u32::from(raw[index]));
    push_digits(&mut out, word, tail.len() + 1);
    out
}

fn push_digits(out: &mut String, mut word: u32, count: usize) {
    for _ in 0..count {
        out.push(char::from(ALPHABET[(word & 0x3f) as usize]));
        word >>= 6;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(alg: CryptAlg, stored: &str, password: &[u8]) {
        let hash = CryptHash::parse(alg, stored).expect(stored);
        assert!(hash.verify(password), "{stored} should verify");
        assert!(!hash.verify(b"wrong"), "{stored} accepted a wrong password");
    }

    #[test]
    fn sha512_crypt_known_answers() {
        // From `openssl passwd -6 -salt saltsalt secret` and libxcrypt's
        // crypt(3) (the vectors of Drepper's SHA-crypt specification).
        check(
            CryptAlg::Sha512,
            "$6$saltsalt$TVLlQcbpFVof5W3Yz4DTP6gRstiNuHwwTt6GLc1E5n0U0aDehy0S5knV8wiOQSpT0Y77vwPZN.Pq.H91p5hVO1",
            b"secret",
        );
        check(
            CryptAlg::Sha512,
            "$6$saltstring$svn8UoSVapNtMuq1ukKS4tPQd8iKwSMHWjl/O817G3uBnIFNjnQJuesI68u4OTLiBFdcbYEdFCoEOfaS35inz1",
            b"Hello world!",
        );
        check(
            CryptAlg::Sha512,
            "$6$rounds=10000$saltstringsaltst$OW1/O6BYHV6BcXZu8QVeXbDWra3Oeqh0sbHbbMCVNSnCM/UrjmM0Dp8vOuZeHBy/YTBmSK6H9qs/y3RnOaw5v.",
            b"Hello world!",
        );
    }

    #[test]
    fn sha256_crypt_known_answers() {
        // From `openssl passwd -5 -salt saltstring` and libxcrypt's crypt(3).
        check(
            CryptAlg::Sha256,
            "$5$saltstring$5B8vYYiY.CVt1RlTTf8KbXBH3hsxY/GNooZaBBGWEc5",
            b"Hello world!",
        );
        check(
            CryptAlg::Sha256,
            "$5$rounds=10000$saltstringsaltst$3xv.VbSHBb41AL9AvLeujZkZRBAwqFMz2.opqey6IcA",
            b"Hello world!",
        );
    }

    #[test]
    fn md5_crypt_known_answers() {
        // From `openssl passwd -1 -salt saltsalt secret`.
        check(
            CryptAlg::Md5,
            "$1$saltsalt$9xy1btjgzLYfb7hivXtC//",
            b"secret",
        );
    }

    #[test]
    fn rounds_below_minimum_clamp_like_glibc() {
        // glibc clamps rounds=10 to 1000 and prints the clamped value, and
        // libxcrypt refuses it ("*0"): either way such a string never
        // matches, so it is refused when the passwd-file is loaded.
        let (rounds, rest) = split_rounds("rounds=10$salt$x");
        assert_eq!(rounds, Some(1000));
        assert_eq!(rest, "salt$x");
        assert!(CryptHash::parse(CryptAlg::Sha512, "$6$rounds=10$salt$x").is_err());
    }

    #[test]
    fn rounds_without_dollar_is_salt() {
        assert_eq!(split_rounds("rounds=abc$x"), (None, "rounds=abc$x"));
        assert_eq!(split_rounds("rounds=$x"), (None, "rounds=$x"));
    }

    #[test]
    fn malformed_strings_are_refused() {
        let good = "$6$saltsalt$TVLlQcbpFVof5W3Yz4DTP6gRstiNuHwwTt6GLc1E5n0U0aDehy0S5knV8wiOQSpT0Y77vwPZN.Pq.H91p5hVO1";
        let table = [
            &good[..good.len() - 1],
            "$6$saltsalt",
            "$6$",
            "$6$saltsaltsaltsaltsalt$TVLlQcbpFVof5W3Yz4DTP6gRstiNuHwwTt6GLc1E5n0U0aDehy0S5knV8wiOQSpT0Y77vwPZN.Pq.H91p5hVO1",
        ];
        for text in table {
            assert!(CryptHash::parse(CryptAlg::Sha512, text).is_err(), "{text}");
        }
        let bad_char = good.replace("TVLlQ", "TV!lQ");
        assert!(CryptHash::parse(CryptAlg::Sha512, &bad_char).is_err());
    }

    #[test]
    fn generate_round_trips() {
        for alg in [CryptAlg::Md5, CryptAlg::Sha256, CryptAlg::Sha512] {
            let text = generate(alg, b"p\xc3\xa4ss", "abcdefgh");
            let hash = CryptHash::parse(alg, &text).expect(&text);
            assert!(hash.verify(b"p\xc3\xa4ss"));
            assert!(!hash.verify(b"pass"));
        }
    }
}
