//! Password schemes: Dovecot's `{SCHEME}encoded` strings, parsed once when
//! the passwd-file is loaded and verified later on the worker pool.
//!
//! Dovecot's rules, followed here:
//! - A password without `{SCHEME}` uses the default scheme, CRYPT: the
//!   crypt(3) prefix (`$1$`, `$5$`, `$6$`, `$2y$`, ...) picks the algorithm.
//!   As an extension, `$argon2i$` / `$argon2id$` strings are accepted too.
//! - Scheme names are case-insensitive; `.HEX`, `.B64` and `.BASE64`
//!   suffixes pick the encoding (`{SHA256.HEX}`). Any other suffix makes the
//!   scheme unknown.
//! - Digests are base64 by default (PLAIN-MD5: hex). For fixed-length
//!   digests without a suffix the encoding is guessed from the length, as
//!   Dovecot does: twice the digest length means hex, anything else base64.
//! - Salted digests are `digest(password || salt) || salt`.
//!
//! This module owns hashing and comparison; it knows nothing of users or
//! files.

mod argon;
mod blf_crypt;
mod crypt;
mod digest;
pub(crate) mod scram;

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ring::rand::{SecureRandom, SystemRandom};

pub(crate) use self::digest::md5;

use self::crypt::{CryptAlg, CryptHash};
use self::digest::DigestAlg;
use self::scram::ScramKeys;
use super::AuthError;

/// A password scheme this server can verify and generate, by its Dovecot name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scheme {
    /// `{PLAIN}`, also `{CLEAR}` and `{CLEARTEXT}`: the password itself.
    Plain,
    /// `{PLAIN-MD5}` (hex) and `{LDAP-MD5}` (base64): unsalted MD5. Legacy.
    PlainMd5,
    /// `{SHA}` / `{SHA1}`: unsalted SHA-1. Legacy.
    Sha1,
    /// `{SSHA}`: salted SHA-1. Legacy.
    Ssha,
    /// `{SMD5}`: salted MD5. Legacy.
    Smd5,
    /// `{SHA256}`: unsalted SHA-256.
    Sha256,
    /// `{SSHA256}`: salted SHA-256.
    Ssha256,
    /// `{SHA512}`: unsalted SHA-512.
    Sha512,
    /// `{SSHA512}`: salted SHA-512.
    Ssha512,
    /// `{MD5-CRYPT}` / `{MD5}`: crypt(3) `$1$`.
    Md5Crypt,
    /// `{SHA256-CRYPT}`: crypt(3) `$5$`.
    Sha256Crypt,
    /// `{SHA512-CRYPT}`: crypt(3) `$6$`.
    Sha512Crypt,
    /// `{BLF-CRYPT}`: bcrypt, crypt(3) `$2y$`.
    BlfCrypt,
    /// `{ARGON2I}`: `$argon2i$` PHC string.
    Argon2i,
    /// `{ARGON2ID}`: `$argon2id$` PHC string.
    Argon2id,
    /// `{SCRAM-SHA-256}`: RFC 7677 keys, `iterations,salt,StoredKey,ServerKey`.
    /// Verifies USER/PASS and serves the SCRAM-SHA-256 SASL mechanism.
    ScramSha256,
}

impl Scheme {
    /// Every scheme, in the order of the enum.
    pub const ALL: [Scheme; 16] = [
        Scheme::Plain,
        Scheme::PlainMd5,
        Scheme::Sha1,
        Scheme::Ssha,
        Scheme::Smd5,
        Scheme::Sha256,
        Scheme::Ssha256,
        Scheme::Sha512,
        Scheme::Ssha512,
        Scheme::Md5Crypt,
        Scheme::Sha256Crypt,
        Scheme::Sha512Crypt,
        Scheme::BlfCrypt,
        Scheme::Argon2i,
        Scheme::Argon2id,
        Scheme::ScramSha256,
    ];

    /// The Dovecot name, as written between the braces.
    pub fn name(self) -> &'static str {
        match self {
            Scheme::Plain => "PLAIN",
            Scheme::PlainMd5 => "PLAIN-MD5",
            Scheme::Sha1 => "SHA1",
            Scheme::Ssha => "SSHA",
            Scheme::Smd5 => "SMD5",
            Scheme::Sha256 => "SHA256",
            Scheme::Ssha256 => "SSHA256",
            Scheme::Sha512 => "SHA512",
            Scheme::Ssha512 => "SSHA512",
            Scheme::Md5Crypt => "MD5-CRYPT",
            Scheme::Sha256Crypt => "SHA256-CRYPT",
            Scheme::Sha512Crypt => "SHA512-CRYPT",
            Scheme::BlfCrypt => "BLF-CRYPT",
            Scheme::Argon2i => "ARGON2I",
            Scheme::Argon2id => "ARGON2ID",
            Scheme::ScramSha256 => "SCRAM-SHA-256",
        }
    }
}

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Scheme {
    type Err = AuthError;

    /// Dovecot names and aliases, case-insensitive. The umbrella `CRYPT` and
    /// names with an encoding suffix are not a single scheme and are refused.
    fn from_str(name: &str) -> Result<Scheme, AuthError> {
        let scheme = match name.to_ascii_uppercase().as_str() {
            "PLAIN" | "CLEAR" | "CLEARTEXT" => Scheme::Plain,
            "PLAIN-MD5" | "LDAP-MD5" => Scheme::PlainMd5,
            "SHA" | "SHA1" => Scheme::Sha1,
            "SSHA" => Scheme::Ssha,
            "SMD5" => Scheme::Smd5,
            "SHA256" => Scheme::Sha256,
            "SSHA256" => Scheme::Ssha256,
            "SHA512" => Scheme::Sha512,
            "SSHA512" => Scheme::Ssha512,
            "MD5" | "MD5-CRYPT" => Scheme::Md5Crypt,
            "SHA256-CRYPT" => Scheme::Sha256Crypt,
            "SHA512-CRYPT" => Scheme::Sha512Crypt,
            "BLF-CRYPT" => Scheme::BlfCrypt,
            "ARGON2I" => Scheme::Argon2i,
            "ARGON2ID" => Scheme::Argon2id,
            "SCRAM-SHA-256" => Scheme::ScramSha256,
            _ => {
                return Err(AuthError::UnknownScheme {
                    name: name.to_owned(),
                });
            }
        };
        Ok(scheme)
    }
}

/// How the bytes after `{SCHEME}` are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Encoding {
    /// As they are (PLAIN, crypt strings).
    Raw,
    Hex,
    Base64,
}

/// What a Dovecot scheme name means to the verifier.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Family {
    Plain,
    Digest(DigestAlg),
    Salted(DigestAlg),
    /// Dovecot's `MD5`: an MD5-crypt string, or else a PLAIN-MD5 digest.
    Md5,
    /// Any crypt(3) string; the prefix picks the algorithm.
    Crypt,
    Argon2,
    /// `SCRAM-SHA-256`: stored RFC 7677 keys.
    Scram,
    /// A Dovecot scheme this server does not implement.
    Unsupported,
}

/// Dovecot's scheme names (`doveadm pw -l`), with their default encoding.
const NAMES: &[(&str, Family, Encoding)] = &[
    ("PLAIN", Family::Plain, Encoding::Raw),
    ("CLEAR", Family::Plain, Encoding::Raw),
    ("CLEARTEXT", Family::Plain, Encoding::Raw),
    ("PLAIN-MD5", Family::Digest(DigestAlg::Md5), Encoding::Hex),
    ("LDAP-MD5", Family::Digest(DigestAlg::Md5), Encoding::Base64),
    ("SHA", Family::Digest(DigestAlg::Sha1), Encoding::Base64),
    ("SHA1", Family::Digest(DigestAlg::Sha1), Encoding::Base64),
    (
        "SHA256",
        Family::Digest(DigestAlg::Sha256),
        Encoding::Base64,
    ),
    (
        "SHA512",
        Family::Digest(DigestAlg::Sha512),
        Encoding::Base64,
    ),
    ("SMD5", Family::Salted(DigestAlg::Md5), Encoding::Base64),
    ("SSHA", Family::Salted(DigestAlg::Sha1), Encoding::Base64),
    (
        "SSHA256",
        Family::Salted(DigestAlg::Sha256),
        Encoding::Base64,
    ),
    (
        "SSHA512",
        Family::Salted(DigestAlg::Sha512),
        Encoding::Base64,
    ),
    ("MD5", Family::Md5, Encoding::Raw),
    ("MD5-CRYPT", Family::Crypt, Encoding::Raw),
    ("SHA256-CRYPT", Family::Crypt, Encoding::Raw),
    ("SHA512-CRYPT", Family::Crypt, Encoding::Raw),
    ("BLF-CRYPT", Family::Crypt, Encoding::Raw),
    ("DES-CRYPT", Family::Crypt, Encoding::Raw),
    ("CRYPT", Family::Crypt, Encoding::Raw),
    ("ARGON2", Family::Argon2, Encoding::Raw),
    ("ARGON2I", Family::Argon2, Encoding::Raw),
    ("ARGON2ID", Family::Argon2, Encoding::Raw),
    ("PLAIN-TRUNC", Family::Unsupported, Encoding::Raw),
    ("PLAIN-MD4", Family::Unsupported, Encoding::Raw),
    ("CRAM-MD5", Family::Unsupported, Encoding::Raw),
    ("HMAC-MD5", Family::Unsupported, Encoding::Raw),
    ("DIGEST-MD5", Family::Unsupported, Encoding::Raw),
    ("SCRAM-SHA-1", Family::Unsupported, Encoding::Raw),
    ("SCRAM-SHA-256", Family::Scram, Encoding::Raw),
    ("PBKDF2", Family::Unsupported, Encoding::Raw),
    ("LANMAN", Family::Unsupported, Encoding::Raw),
    ("NTLM", Family::Unsupported, Encoding::Raw),
    ("OTP", Family::Unsupported, Encoding::Raw),
    ("SKEY", Family::Unsupported, Encoding::Raw),
    ("RPA", Family::Unsupported, Encoding::Raw),
];

/// Why a stored password cannot be used. It never holds any part of the
/// password field itself, only static text, so it is safe to log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum SchemeProblem {
    /// The `{NAME}` is not a Dovecot scheme (or has an unknown suffix).
    UnknownScheme,
    /// A Dovecot scheme or crypt(3) format this server does not implement.
    Unsupported(&'static str),
    /// The encoded bytes are not valid hex / base64.
    BadEncoding(&'static str),
    /// The decoded value has the wrong shape for its scheme.
    Malformed(&'static str, &'static str),
}

impl fmt::Display for SchemeProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SchemeProblem::UnknownScheme => f.write_str("unknown password scheme"),
            SchemeProblem::Unsupported(what) => {
                write!(f, "password scheme {what} is not supported")
            }
            SchemeProblem::BadEncoding(scheme) => {
                write!(f, "{scheme} password is not valid hex/base64")
            }
            SchemeProblem::Malformed(scheme, why) => write!(f, "{scheme} password: {why}"),
        }
    }
}

/// A password as stored in the passwd-file, decoded and checked. Its `Debug`
/// shows the scheme only.
#[derive(Clone)]
pub(crate) struct StoredPassword {
    scheme: Scheme,
    kind: Kind,
}

#[derive(Clone)]
enum Kind {
    /// `sha256` is compared, so the time taken does not depend on the
    /// length of the stored password; `plaintext` is kept for APOP.
    Plain {
        plaintext: Vec<u8>,
        sha256: Vec<u8>,
    },
    Digest {
        alg: DigestAlg,
        digest: Vec<u8>,
    },
    Salted {
        alg: DigestAlg,
        digest: Vec<u8>,
        salt: Vec<u8>,
    },
    Crypt(CryptHash),
    Bcrypt {
        stored: String,
        cost: u32,
    },
    Argon2(Box<argon::Parsed>),
    Scram(Box<ScramKeys>),
}

/// Which verifications cost the same: a scheme and its work factors.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Cost {
    scheme: Scheme,
    work: (u32, u32, u32),
}

impl fmt::Debug for StoredPassword {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredPassword")
            .field("scheme", &self.scheme)
            .finish_non_exhaustive()
    }
}

impl StoredPassword {
    /// Parses a non-empty passwd-file password field.
    pub(crate) fn parse(field: &str) -> Result<StoredPassword, SchemeProblem> {
        let Some((name, body)) = split_scheme(field) else {
            return parse_crypt(dovecot_md5_crypt_cut(field));
        };
        let (base, suffix) = match name.split_once('.') {
            Some((base, suffix)) => (base, Some(suffix)),
            None => (name, None),
        };
        let (canonical, family, default) = NAMES
            .iter()
            .find(|(known, _, _)| known.eq_ignore_ascii_case(base))
            .copied()
            .ok_or(SchemeProblem::UnknownScheme)?;
        let explicit = match suffix {
            None => None,
            Some(s) if s.eq_ignore_ascii_case("b64") || s.eq_ignore_ascii_case("base64") => {
                Some(Encoding::Base64)
            }
            Some(s) if s.eq_ignore_ascii_case("hex") => Some(Encoding::Hex),
            Some(_) => return Err(SchemeProblem::UnknownScheme),
        };
        let (family, default) = match family {
            Family::Md5 if body.starts_with("$1$") => (Family::Crypt, Encoding::Raw),
            Family::Md5 => (Family::Digest(DigestAlg::Md5), Encoding::Hex),
            other => (other, default),
        };
        let fixed_len = match family {
            Family::Digest(alg) => Some(alg.len()),
            _ => None,
        };
        let raw = decode(body, fixed_len, explicit, default)
            .ok_or(SchemeProblem::BadEncoding(canonical))?;
        from_raw(canonical, family, raw)
    }

    pub(crate) fn scheme(&self) -> Scheme {
        self.scheme
    }

    /// The stored plaintext, when the scheme keeps it (for APOP).
    pub(crate) fn plaintext(&self) -> Option<&[u8]> {
        match &self.kind {
            Kind::Plain { plaintext, .. } => Some(plaintext),
            _ => None,
        }
    }

    /// The stored SCRAM-SHA-256 keys, when the scheme is `{SCRAM-SHA-256}`.
    pub(crate) fn scram_keys(&self) -> Option<&ScramKeys> {
        match &self.kind {
            Kind::Scram(keys) => Some(keys),
            _ => None,
        }
    }

    /// Whether `password` matches. Comparisons are constant-time.
    pub(crate) fn verify(&self, password: &[u8]) -> bool {
        match &self.kind {
            Kind::Plain { sha256, .. } => ct_eq(&DigestAlg::Sha256.digest(&[password]), sha256),
            Kind::Digest { alg, digest } => digest::verify(*alg, digest, password),
            Kind::Salted { alg, digest, salt } => {
                digest::verify_salted(*alg, digest, salt, password)
            }
            Kind::Crypt(hash) => hash.verify(password),
            Kind::Bcrypt { stored, .. } => blf_crypt::verify(stored, password),
            Kind::Argon2(parsed) => argon::verify(&parsed.hash, password),
            Kind::Scram(keys) => keys.verify(password),
        }
    }

    /// Verified with one digest (no work factor): cheap enough for a shard
    /// thread (a few µs), where a CRYPT, bcrypt, Argon2 or SCRAM check is not.
    pub(crate) fn is_cheap(&self) -> bool {
        matches!(
            self.kind,
            Kind::Plain { .. } | Kind::Digest { .. } | Kind::Salted { .. }
        )
    }

    /// The scheme and work factors, to find a dummy of the same cost.
    pub(crate) fn cost(&self) -> Cost {
        let work = match &self.kind {
            Kind::Crypt(hash) => (hash.rounds(), 0, 0),
            Kind::Bcrypt { cost, .. } => (*cost, 0, 0),
            Kind::Argon2(parsed) => parsed.costs,
            Kind::Scram(keys) => (keys.iterations, 0, 0),
            Kind::Plain { .. } | Kind::Digest { .. } | Kind::Salted { .. } => (0, 0, 0),
        };
        Cost {
            scheme: self.scheme,
            work,
        }
    }
}

/// Splits `{NAME}body`; `None` when there is no complete `{...}` prefix.
fn split_scheme(field: &str) -> Option<(&str, &str)> {
    let rest = field.strip_prefix('{')?;
    let end = rest.find('}')?;
    Some((&rest[..end], &rest[end + 1..]))
}

/// Dovecot reads a bare `$1$salt$hash$ignored` as MD5-CRYPT and drops what
/// follows the hash.
fn dovecot_md5_crypt_cut(field: &str) -> &str {
    if !field.starts_with("$1$") {
        return field;
    }
    match field.match_indices('$').nth(3) {
        Some((cut, _)) => &field[..cut],
        None => field,
    }
}

fn decode(
    body: &str,
    fixed_len: Option<usize>,
    explicit: Option<Encoding>,
    default: Encoding,
) -> Option<Vec<u8>> {
    match (explicit, default, fixed_len) {
        (Some(Encoding::Hex), _, _) => hex_decode(body),
        (Some(Encoding::Base64), _, _) => base64_decode(body),
        (Some(Encoding::Raw), _, _) | (None, Encoding::Raw, _) => Some(body.as_bytes().to_vec()),
        // Dovecot guesses: a fixed-length digest written at twice its length
        // is hex, anything else base64.
        (None, _, Some(len)) if body.len() == 2 * len => {
            hex_decode(body).or_else(|| base64_decode(body))
        }
        (None, _, Some(_)) => base64_decode(body),
        (None, Encoding::Hex, None) => hex_decode(body),
        (None, Encoding::Base64, None) => base64_decode(body),
    }
}

fn from_raw(
    canonical: &'static str,
    family: Family,
    raw: Vec<u8>,
) -> Result<StoredPassword, SchemeProblem> {
    let malformed = |why| Err(SchemeProblem::Malformed(canonical, why));
    let (scheme, kind) = match family {
        Family::Plain => {
            let sha256 = DigestAlg::Sha256.digest(&[&raw]);
            (
                Scheme::Plain,
                Kind::Plain {
                    plaintext: raw,
                    sha256,
                },
            )
        }
        Family::Digest(alg) if raw.len() == alg.len() => {
            (digest_scheme(alg), Kind::Digest { alg, digest: raw })
        }
        Family::Digest(_) => return malformed("digest has the wrong length"),
        Family::Salted(alg) if raw.len() > alg.len() => {
            let (digest, salt) = raw.split_at(alg.len());
            let kind = Kind::Salted {
                alg,
                digest: digest.to_vec(),
                salt: salt.to_vec(),
            };
            (salted_scheme(alg), kind)
        }
        Family::Salted(_) => return malformed("salted digest is too short"),
        Family::Crypt | Family::Md5 => return parse_crypt(text(canonical, &raw)?),
        Family::Argon2 => return parse_argon2(text(canonical, &raw)?),
        Family::Scram => {
            let keys = ScramKeys::parse(text(canonical, &raw)?)
                .map_err(|why| SchemeProblem::Malformed(canonical, why))?;
            (Scheme::ScramSha256, Kind::Scram(Box::new(keys)))
        }
        Family::Unsupported => return Err(SchemeProblem::Unsupported(canonical)),
    };
    Ok(StoredPassword { scheme, kind })
}

fn text<'a>(canonical: &'static str, raw: &'a [u8]) -> Result<&'a str, SchemeProblem> {
    std::str::from_utf8(raw).map_err(|_| SchemeProblem::Malformed(canonical, "not text"))
}

fn digest_scheme(alg: DigestAlg) -> Scheme {
    match alg {
        DigestAlg::Md5 => Scheme::PlainMd5,
        DigestAlg::Sha1 => Scheme::Sha1,
        DigestAlg::Sha256 => Scheme::Sha256,
        DigestAlg::Sha512 => Scheme::Sha512,
    }
}

fn salted_scheme(alg: DigestAlg) -> Scheme {
    match alg {
        DigestAlg::Md5 => Scheme::Smd5,
        DigestAlg::Sha1 => Scheme::Ssha,
        DigestAlg::Sha256 => Scheme::Ssha256,
        DigestAlg::Sha512 => Scheme::Ssha512,
    }
}

/// Dovecot's CRYPT: the crypt(3) prefix picks the algorithm.
fn parse_crypt(text: &str) -> Result<StoredPassword, SchemeProblem> {
    let crypt = |alg, scheme, name| {
        let hash =
            CryptHash::parse(alg, text).map_err(|why| SchemeProblem::Malformed(name, why))?;
        Ok(StoredPassword {
            scheme,
            kind: Kind::Crypt(hash),
        })
    };
    if text.starts_with("$1$") {
        crypt(CryptAlg::Md5, Scheme::Md5Crypt, "MD5-CRYPT")
    } else if text.starts_with("$5$") {
        crypt(CryptAlg::Sha256, Scheme::Sha256Crypt, "SHA256-CRYPT")
    } else if text.starts_with("$6$") {
        crypt(CryptAlg::Sha512, Scheme::Sha512Crypt, "SHA512-CRYPT")
    } else if ["$2a$", "$2b$", "$2x$", "$2y$"]
        .iter()
        .any(|p| text.starts_with(p))
    {
        let cost =
            blf_crypt::parse(text).map_err(|why| SchemeProblem::Malformed("BLF-CRYPT", why))?;
        Ok(StoredPassword {
            scheme: Scheme::BlfCrypt,
            kind: Kind::Bcrypt {
                stored: text.to_owned(),
                cost,
            },
        })
    } else if text.starts_with("$argon2") {
        parse_argon2(text)
    } else {
        Err(SchemeProblem::Unsupported(crypt_format_name(text)))
    }
}

fn parse_argon2(text: &str) -> Result<StoredPassword, SchemeProblem> {
    let parsed = argon::parse(text).map_err(|why| SchemeProblem::Malformed("ARGON2", why))?;
    let scheme = match parsed.variant {
        argon::Variant::I => Scheme::Argon2i,
        argon::Variant::Id => Scheme::Argon2id,
    };
    Ok(StoredPassword {
        scheme,
        kind: Kind::Argon2(Box::new(parsed)),
    })
}

/// A name for a crypt(3) format we do not verify, for the load-time warning.
fn crypt_format_name(text: &str) -> &'static str {
    let known = [
        ("$y$", "yescrypt ($y$)"),
        ("$gy$", "gost-yescrypt ($gy$)"),
        ("$7$", "scrypt ($7$)"),
        ("$sha1$", "sha1crypt ($sha1$)"),
        ("$md5", "SunMD5 ($md5$)"),
        ("_", "BSDi DES crypt (_)"),
    ];
    if let Some((_, name)) = known.iter().find(|(prefix, _)| text.starts_with(prefix)) {
        return name;
    }
    if text.len() == 13 && !text.starts_with('$') {
        return "DES-CRYPT";
    }
    "CRYPT (unrecognised crypt(3) format)"
}

/// Like `doveadm pw -s SCHEME -p PASSWORD`: `{SCHEME}encoded`, with a fresh
/// random salt from the system RNG where the scheme has one. Costs are
/// Dovecot's defaults (SCRAM-SHA-256: 4096 iterations, a 16-byte salt),
/// except BLF-CRYPT (cost 10 rather than 5). A PLAIN
/// password that could not sit on a passwd-file line (not UTF-8, or holding
/// `:`, CR, LF or NUL) is written as `{PLAIN.B64}`.
///
/// # Panics
/// If the operating system's random number generator fails.
pub fn hash_password(scheme: Scheme, password: &[u8]) -> String {
    let encoded = match scheme {
        Scheme::Plain => return plain_field(password),
        Scheme::PlainMd5 => hex_encode(&DigestAlg::Md5.digest(&[password])),
        Scheme::Sha1 => STANDARD.encode(DigestAlg::Sha1.digest(&[password])),
        Scheme::Sha256 => STANDARD.encode(DigestAlg::Sha256.digest(&[password])),
        Scheme::Sha512 => STANDARD.encode(DigestAlg::Sha512.digest(&[password])),
        Scheme::Smd5 => salted(DigestAlg::Md5, password),
        Scheme::Ssha => salted(DigestAlg::Sha1, password),
        Scheme::Ssha256 => salted(DigestAlg::Sha256, password),
        Scheme::Ssha512 => salted(DigestAlg::Sha512, password),
        Scheme::Md5Crypt => crypt::generate(CryptAlg::Md5, password, &crypt_salt(8)),
        Scheme::Sha256Crypt => crypt::generate(CryptAlg::Sha256, password, &crypt_salt(16)),
        Scheme::Sha512Crypt => crypt::generate(CryptAlg::Sha512, password, &crypt_salt(16)),
        Scheme::BlfCrypt => blf_crypt::generate(password, random_bytes()),
        Scheme::Argon2i => argon::generate(argon::Variant::I, password, &random_bytes::<16>()),
        Scheme::Argon2id => argon::generate(argon::Variant::Id, password, &random_bytes::<16>()),
        Scheme::ScramSha256 => ScramKeys::derive(
            password,
            &random_bytes::<{ scram::SALT_BYTES }>(),
            scram::ITERATIONS_DEFAULT,
        )
        .encode(),
    };
    format!("{{{}}}{encoded}", scheme.name())
}

fn plain_field(password: &[u8]) -> String {
    match std::str::from_utf8(password) {
        Ok(text) if !text.contains([':', '\r', '\n', '\0']) => format!("{{PLAIN}}{text}"),
        _ => format!("{{PLAIN.B64}}{}", STANDARD.encode(password)),
    }
}

/// Salt length for salted digests. Dovecot writes 4 bytes and reads any.
const DIGEST_SALT_BYTES: usize = 16;

fn salted(alg: DigestAlg, password: &[u8]) -> String {
    let salt = random_bytes::<DIGEST_SALT_BYTES>();
    let mut raw = alg.digest(&[password, &salt]);
    raw.extend_from_slice(&salt);
    STANDARD.encode(raw)
}

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    SystemRandom::new()
        .fill(&mut bytes)
        .expect("system random number generator failed");
    bytes
}

/// `chars` random characters of the crypt(3) alphabet (64 divides 256, so
/// masking a random byte is unbiased).
fn crypt_salt(chars: usize) -> String {
    let bytes = random_bytes::<16>();
    bytes[..chars]
        .iter()
        .map(|b| char::from(crypt::ALPHABET[usize::from(b & 0x3f)]))
        .collect()
}

/// Constant-time equality. Lengths are not secret here: digests have fixed
/// lengths and crypt strings are compared against their own recomputation.
pub(crate) fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.ct_eq(b).into()
}

pub(crate) fn hex_encode(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

/// Hex, either case; `None` on odd length or a non-hex digit.
pub(crate) fn hex_decode(text: &str) -> Option<Vec<u8>> {
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    }
    let bytes = text.as_bytes();
    if !bytes.len().is_multiple_of(2) {
        return None;
    }
    bytes
        .chunks(2)
        .map(|pair| Some(nibble(pair[0])? << 4 | nibble(pair[1])?))
        .collect()
}

/// Standard base64 with its padding: Dovecot refuses it unpadded, so do we.
fn base64_decode(text: &str) -> Option<Vec<u8>> {
    STANDARD.decode(text).ok()
}

#[cfg(test)]
mod tests;
