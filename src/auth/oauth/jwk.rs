//! JWKS (RFC 7517) parsing into keys `ring` can verify with. Each key
//! implies exactly one JWS algorithm (RFC 7518 §3, RFC 8037):
//! `RSA` → RS256 (2048 to 8192 bits), `EC` on `P-256` → ES256, `OKP` on
//! `Ed25519` → EdDSA. Keys of other kinds (`oct` secrets, other curves,
//! encryption keys) are skipped, so a provider's full set loads; a set with
//! no key we can use is an error.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::signature::{self, RsaPublicKeyComponents, UnparsedPublicKey};
use serde::Deserialize;

/// The largest JWKS file read (providers publish a few keys, a few KiB).
pub const JWKS_BYTES_MAX: usize = 1 << 20;
/// The most keys kept from one set; a token without `kid` is tried against
/// each key of its algorithm, so this bounds the work of one login.
pub const KEYS_MAX: usize = 64;
/// Longest `kid` kept.
const KID_BYTES_MAX: usize = 256;

/// A JWS algorithm we verify.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Alg {
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    Rs256,
    /// ECDSA on P-256 with SHA-256, the fixed r‖s signature of RFC 7518.
    Es256,
    /// Ed25519 (RFC 8037).
    EdDsa,
}

impl Alg {
    /// The JWS `alg` name.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Alg::Rs256 => "RS256",
            Alg::Es256 => "ES256",
            Alg::EdDsa => "EdDSA",
        }
    }

    pub(crate) fn from_name(name: &str) -> Option<Alg> {
        [Alg::Rs256, Alg::Es256, Alg::EdDsa]
            .into_iter()
            .find(|a| a.name() == name)
    }
}

/// One public key.
pub(crate) struct Key {
    pub(crate) kid: Option<String>,
    pub(crate) alg: Alg,
    material: Material,
}

enum Material {
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
    },
    /// SEC1 uncompressed point for ECDSA, the raw 32 bytes for Ed25519.
    Raw(Vec<u8>),
}

impl Key {
    /// Whether `signature` signs `message` under this key.
    pub(crate) fn verifies(&self, message: &[u8], sig: &[u8]) -> bool {
        match (&self.material, self.alg) {
            (Material::Rsa { n, e }, Alg::Rs256) => RsaPublicKeyComponents { n, e }
                .verify(&signature::RSA_PKCS1_2048_8192_SHA256, message, sig)
                .is_ok(),
            (Material::Raw(point), Alg::Es256) => {
                UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point)
                    .verify(message, sig)
                    .is_ok()
            }
            (Material::Raw(x), Alg::EdDsa) => UnparsedPublicKey::new(&signature::ED25519, x)
                .verify(message, sig)
                .is_ok(),
            _ => false,
        }
    }
}

/// The provider's verification keys.
pub struct KeySet {
    pub(crate) keys: Vec<Key>,
}

impl fmt::Debug for KeySet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.keys.iter().map(|k| (k.kid.as_deref(), k.alg)))
            .finish()
    }
}

/// Why a JWKS is not usable.
#[derive(Debug, PartialEq, Eq)]
pub enum JwksError {
    /// Larger than [`JWKS_BYTES_MAX`].
    TooLarge,
    /// Not JSON of the shape `{"keys":[...]}`.
    Syntax(String),
    /// A key of a kind we use is broken (bad base64, wrong length).
    BadKey {
        /// Its position in `keys`.
        index: usize,
        /// What is wrong.
        why: &'static str,
    },
    /// No key in the set is one we can verify with.
    NoUsableKey,
    /// More than [`KEYS_MAX`] usable keys.
    TooManyKeys,
}

impl fmt::Display for JwksError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JwksError::TooLarge => write!(f, "larger than {JWKS_BYTES_MAX} bytes"),
            JwksError::Syntax(why) => write!(f, "not a JWKS: {why}"),
            JwksError::BadKey { index, why } => write!(f, "keys[{index}]: {why}"),
            JwksError::NoUsableKey => f.write_str(
                "no RS256 (RSA), ES256 (EC P-256) or EdDSA (OKP Ed25519) signing key in the set",
            ),
            JwksError::TooManyKeys => write!(f, "more than {KEYS_MAX} usable keys"),
        }
    }
}

impl std::error::Error for JwksError {}

#[derive(Deserialize)]
struct Document {
    keys: Vec<Jwk>,
}

/// The JWK members we read; others are ignored (RFC 7517 §4).
#[derive(Deserialize)]
struct Jwk {
    kty: String,
    #[serde(rename = "use")]
    use_: Option<String>,
    alg: Option<String>,
    kid: Option<String>,
    crv: Option<String>,
    n: Option<String>,
    e: Option<String>,
    x: Option<String>,
    y: Option<String>,
    key_ops: Option<Vec<String>>,
}

impl KeySet {
    /// Parses a JWKS document.
    pub fn parse(bytes: &[u8]) -> Result<KeySet, JwksError> {
        if bytes.len() > JWKS_BYTES_MAX {
            return Err(JwksError::TooLarge);
        }
        let doc: Document =
            serde_json::from_slice(bytes).map_err(|e| JwksError::Syntax(e.to_string()))?;
        let mut keys = Vec::new();
        for (index, jwk) in doc.keys.iter().enumerate() {
            match key(jwk) {
                Ok(Some(key)) => keys.push(key),
                Ok(None) => {}
                Err(why) => return Err(JwksError::BadKey { index, why }),
            }
            if keys.len() > KEYS_MAX {
                return Err(JwksError::TooManyKeys);
            }
        }
        if keys.is_empty() {
            return Err(JwksError::NoUsableKey);
        }
        Ok(KeySet { keys })
    }

    /// Usable keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Never true for a parsed set.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// The key a JWK describes, `None` when it is not a signing key we use.
fn key(jwk: &Jwk) -> Result<Option<Key>, &'static str> {
    let signing = jwk.use_.as_deref().is_none_or(|u| u == "sig")
        && jwk
            .key_ops
            .as_ref()
            .is_none_or(|ops| ops.iter().any(|op| op == "verify"));
    let alg = match (jwk.kty.as_str(), jwk.crv.as_deref()) {
        ("RSA", _) => Alg::Rs256,
        ("EC", Some("P-256")) => Alg::Es256,
        ("OKP", Some("Ed25519")) => Alg::EdDsa,
        _ => return Ok(None),
    };
    // A key bound to another algorithm (RS384, PS256, ...) is not ours to
    // use with this one.
    if !signing || jwk.alg.as_deref().is_some_and(|a| a != alg.name()) {
        return Ok(None);
    }
    let kid = match &jwk.kid {
        Some(kid) if kid.len() > KID_BYTES_MAX => return Err("kid too long"),
        kid => kid.clone(),
    };
    let material = match alg {
        Alg::Rs256 => {
            let n = b64(jwk.n.as_deref(), "RSA key without a valid n")?;
            let e = b64(jwk.e.as_deref(), "RSA key without a valid e")?;
            let bits = (n.len() - n.iter().take_while(|&&b| b == 0).count()) * 8;
            if !(2048..=8192).contains(&bits) || e.is_empty() || e.len() > 8 {
                return Err("RSA key must have 2048 to 8192 bits and a small exponent");
            }
            Material::Rsa { n, e }
        }
        Alg::Es256 => {
            let x = b64(jwk.x.as_deref(), "EC key without a valid x")?;
            let y = b64(jwk.y.as_deref(), "EC key without a valid y")?;
            if x.len() != 32 || y.len() != 32 {
                return Err("P-256 coordinates must be 32 bytes");
            }
            let mut point = Vec::with_capacity(65);
            point.push(4);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            Material::Raw(point)
        }
        Alg::EdDsa => {
            let x = b64(jwk.x.as_deref(), "Ed25519 key without a valid x")?;
            if x.len() != 32 {
                return Err("Ed25519 x must be 32 bytes");
            }
            Material::Raw(x)
        }
    };
    Ok(Some(Key { kid, alg, material }))
}

fn b64(field: Option<&str>, why: &'static str) -> Result<Vec<u8>, &'static str> {
    let text = field.ok_or(why)?;
    // Some publishers pad; RFC 7515 §2 says they must not. Accept both.
    URL_SAFE_NO_PAD
        .decode(text.trim_end_matches('='))
        .ok()
        .filter(|bytes| !bytes.is_empty())
        .ok_or(why)
}
