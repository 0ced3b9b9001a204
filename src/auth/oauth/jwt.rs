//! A JWS compact-serialised JWT: `base64url(header).base64url(claims).
//! base64url(signature)`, checked in the order that costs least for a bad
//! token: sizes, framing, header, key choice, signature, then claims. The
//! claims are only read once the signature holds, so nothing unsigned
//! decides anything.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;
use serde_json::Value;

use super::jwk::{Alg, KeySet};

/// The longest token accepted (real access tokens are 1–2 KiB; a 4096-bit
/// RSA signature alone is 683 characters).
pub const TOKEN_BYTES_MAX: usize = 8192;
/// Clock difference tolerated on `exp` and `nbf` between the provider and
/// this server.
pub const CLOCK_SKEW_SECS: u64 = 60;

/// What a token's claims must say.
#[derive(Clone, Debug)]
pub struct Claims {
    /// `iss`, exactly.
    pub issuer: String,
    /// A value `aud` must hold.
    pub audience: String,
    /// The claim naming the user.
    pub username_claim: String,
}

/// Why a token was refused. Says nothing of the token itself, so it can be
/// logged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenError {
    /// Longer than [`TOKEN_BYTES_MAX`].
    TooLong,
    /// Not three base64url parts, or a part is not JSON of the right shape.
    Malformed,
    /// `alg` is not RS256, ES256 or EdDSA (`none` and HMAC included).
    Algorithm,
    /// The header has `crit`: an extension we would have to understand.
    Critical,
    /// No key of the set has the token's `kid` and algorithm.
    UnknownKey,
    /// The signature does not verify.
    Signature,
    /// `iss` is missing or another issuer's.
    Issuer,
    /// `aud` is missing or does not hold our audience.
    Audience,
    /// `exp` is missing or passed.
    Expired,
    /// `nbf` is still in the future.
    NotYetValid,
    /// The user claim is missing, not a string, or empty.
    NoUser,
}

impl fmt::Display for TokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TokenError::TooLong => "token too long",
            TokenError::Malformed => "not a well-formed JWT",
            TokenError::Algorithm => "algorithm not accepted",
            TokenError::Critical => "critical header extension",
            TokenError::UnknownKey => "no matching key in the JWKS",
            TokenError::Signature => "bad signature",
            TokenError::Issuer => "wrong issuer",
            TokenError::Audience => "wrong audience",
            TokenError::Expired => "expired",
            TokenError::NotYetValid => "not valid yet (nbf)",
            TokenError::NoUser => "no user claim",
        })
    }
}

impl std::error::Error for TokenError {}

#[derive(Deserialize)]
struct Header {
    alg: String,
    kid: Option<String>,
    crit: Option<Value>,
}

/// Checks `token` and gives the user it names.
pub(crate) fn verify(
    token: &[u8],
    keys: &KeySet,
    claims: &Claims,
    now_secs: u64,
) -> Result<String, TokenError> {
    if token.len() > TOKEN_BYTES_MAX {
        return Err(TokenError::TooLong);
    }
    let mut parts = token.split(|&b| b == b'.');
    let (Some(header64), Some(payload64), Some(sig64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed);
    };
    let header: Header = json(header64)?;
    if header.crit.is_some() {
        return Err(TokenError::Critical);
    }
    let alg = Alg::from_name(&header.alg).ok_or(TokenError::Algorithm)?;
    let signature = URL_SAFE_NO_PAD
        .decode(sig64)
        .map_err(|_| TokenError::Malformed)?;
    let signed = &token[..header64.len() + 1 + payload64.len()];
    let mut candidates = keys
        .keys
        .iter()
        .filter(|k| k.alg == alg)
        .filter(|k| header.kid.is_none() || k.kid == header.kid)
        .peekable();
    if candidates.peek().is_none() {
        return Err(TokenError::UnknownKey);
    }
    if !candidates.any(|k| k.verifies(signed, &signature)) {
        return Err(TokenError::Signature);
    }
    let payload: serde_json::Map<String, Value> = json(payload64)?;
    check_claims(&payload, claims, now_secs)
}

fn json<T: for<'de> Deserialize<'de>>(part64: &[u8]) -> Result<T, TokenError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part64)
        .map_err(|_| TokenError::Malformed)?;
    serde_json::from_slice(&bytes).map_err(|_| TokenError::Malformed)
}

/// The claim checks alone, on a payload as bytes (fuzzing: a fuzzer cannot
/// sign, so it reaches them only through here).
pub(crate) fn check_payload(
    payload: &[u8],
    claims: &Claims,
    now_secs: u64,
) -> Result<String, TokenError> {
    let payload: serde_json::Map<String, Value> =
        serde_json::from_slice(payload).map_err(|_| TokenError::Malformed)?;
    check_claims(&payload, claims, now_secs)
}

fn check_claims(
    payload: &serde_json::Map<String, Value>,
    claims: &Claims,
    now: u64,
) -> Result<String, TokenError> {
    if payload.get("iss").and_then(Value::as_str) != Some(claims.issuer.as_str()) {
        return Err(TokenError::Issuer);
    }
    let audience_ok = match payload.get("aud") {
        Some(Value::String(aud)) => *aud == claims.audience,
        Some(Value::Array(auds)) => auds
            .iter()
            .any(|a| a.as_str() == Some(claims.audience.as_str())),
        _ => false,
    };
    if !audience_ok {
        return Err(TokenError::Audience);
    }
    // RFC 7519 NumericDate: seconds, possibly fractional. A negative or
    // absent `exp` is refused: a token that never expires is not accepted.
    let exp = payload
        .get("exp")
        .and_then(Value::as_f64)
        .ok_or(TokenError::Expired)?;
    if exp + (CLOCK_SKEW_SECS as f64) <= now as f64 {
        return Err(TokenError::Expired);
    }
    match payload.get("nbf") {
        None => {}
        Some(nbf) => match nbf.as_f64() {
            Some(nbf) if nbf <= (now + CLOCK_SKEW_SECS) as f64 => {}
            _ => return Err(TokenError::NotYetValid),
        },
    }
    match payload.get(&claims.username_claim).and_then(Value::as_str) {
        Some(user) if !user.is_empty() => Ok(user.to_owned()),
        _ => Err(TokenError::NoUser),
    }
}
