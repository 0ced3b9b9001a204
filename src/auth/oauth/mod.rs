//! OAuth 2.0 access tokens checked locally (RFC 7628 OAUTHBEARER, Google's
//! XOAUTH2): a token is a JWT (RFC 7519) signed with JWS (RFC 7515) by the
//! identity provider, and is good when its signature verifies under one of
//! the provider's public keys (a JWKS file, RFC 7517) and its claims name
//! our issuer, our audience, a time window that holds now, and a user.
//!
//! No network: the provider is never asked (no RFC 7662 introspection), so
//! a revoked token stays good until it expires; providers keep access
//! tokens short-lived for that reason.
//!
//! Why not the `jsonwebtoken` crate: its current releases do their crypto
//! through aws-lc-rs or RustCrypto, which would bring a second crypto stack
//! next to `ring` (which rustls already uses here). What a JWT needs beyond
//! `ring` is base64url and a JSON parser, so the two files here are JWS
//! framing and claim checks over `ring`'s verifiers, with the security
//! rules written where they are enforced:
//! - the algorithm comes from the key, never from the token: a token's
//!   `alg` must equal the one its key implies, so `none`, `HS256` signed
//!   with a public key, or an RSA key used as ECDSA cannot pass;
//! - `crit` headers are refused (we understand no extension);
//! - every size is bounded before anything is decoded.
//!
//! Blocking work (a file read at load; a signature check per login, tens of
//! microseconds) runs where the caller runs: at startup, on SIGHUP, on the
//! worker pool.

mod jwk;
mod jwt;

use std::fmt;
use std::path::{Path, PathBuf};

pub use jwk::{JWKS_BYTES_MAX, JwksError, KEYS_MAX, KeySet};
pub use jwt::{CLOCK_SKEW_SECS, Claims, TOKEN_BYTES_MAX, TokenError};

/// A configured OAuth validator: the provider's keys and what a token must
/// say. Immutable; SIGHUP builds a new one.
pub struct OAuth {
    keys: KeySet,
    claims: Claims,
    jwks_file: PathBuf,
}

/// Why the OAuth settings cannot be used.
#[derive(Debug)]
pub enum OAuthError {
    /// The JWKS file could not be read.
    Io {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// The JWKS file is not a usable key set.
    Jwks {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        why: JwksError,
    },
}

impl fmt::Display for OAuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OAuthError::Io { path, source } => {
                write!(f, "auth.oauth.jwks_file {}: {source}", path.display())
            }
            OAuthError::Jwks { path, why } => {
                write!(f, "auth.oauth.jwks_file {}: {why}", path.display())
            }
        }
    }
}

impl std::error::Error for OAuthError {}

impl OAuth {
    /// Reads the JWKS file of `config`. A missing, oversized or unusable
    /// file (no key we can verify with) is an error.
    pub fn load(config: &crate::config::OAuth) -> Result<OAuth, OAuthError> {
        let jwks = read_bounded(&config.jwks_file).map_err(|source| OAuthError::Io {
            path: config.jwks_file.clone(),
            source,
        })?;
        let keys = KeySet::parse(&jwks).map_err(|why| OAuthError::Jwks {
            path: config.jwks_file.clone(),
            why,
        })?;
        tracing::info!(
            jwks_file = %config.jwks_file.display(),
            keys = keys.len(),
            "OAuth keys loaded"
        );
        Ok(OAuth {
            keys,
            claims: Claims {
                issuer: config.issuer.clone(),
                audience: config.audience.clone(),
                username_claim: config.username_claim.clone(),
            },
            jwks_file: config.jwks_file.clone(),
        })
    }

    /// A validator over keys already parsed (tests, fuzzing).
    pub fn new(keys: KeySet, claims: Claims) -> OAuth {
        OAuth {
            keys,
            claims,
            jwks_file: PathBuf::new(),
        }
    }

    /// The user a token names, if the token is good at `now_secs` (seconds
    /// since the Unix epoch). The error says why not, for the log; it never
    /// holds the token.
    pub fn verify(&self, token: &[u8], now_secs: u64) -> Result<String, TokenError> {
        jwt::verify(token, &self.keys, &self.claims, now_secs)
    }

    /// The JWKS file this validator was loaded from.
    pub fn jwks_file(&self) -> &Path {
        &self.jwks_file
    }
}

impl fmt::Debug for OAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OAuth")
            .field("jwks_file", &self.jwks_file)
            .field("keys", &self.keys.len())
            .field("issuer", &self.claims.issuer)
            .field("audience", &self.claims.audience)
            .finish()
    }
}

/// Reads a file of at most [`JWKS_BYTES_MAX`] bytes.
fn read_bounded(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read as _;
    let file = std::fs::File::open(path)?;
    let mut bytes = Vec::new();
    file.take(JWKS_BYTES_MAX as u64 + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() > JWKS_BYTES_MAX {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("larger than {JWKS_BYTES_MAX} bytes"),
        ));
    }
    Ok(bytes)
}

/// Fuzzing entry: parses `data` as a JWKS, as a token checked against a
/// fixed key (RFC 8037's example), and as a claims payload. Never panics.
#[doc(hidden)]
pub fn fuzz_jwks_and_token(data: &[u8]) {
    let _ = KeySet::parse(data);
    let claims = Claims {
        issuer: "https://issuer.example".into(),
        audience: "pop3".into(),
        username_claim: "sub".into(),
    };
    if let Ok(keys) = KeySet::parse(
        br#"{"keys":[{"kty":"OKP","crv":"Ed25519","kid":"k","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}"#,
    ) {
        let _ = jwt::verify(data, &keys, &claims, 1_700_000_000);
    }
    let _ = jwt::check_payload(data, &claims, 1_700_000_000);
}

#[cfg(test)]
pub(crate) mod test_keys;
#[cfg(test)]
mod tests;
