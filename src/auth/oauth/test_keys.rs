//! Test signers: keys made at test time (Ed25519 and P-256 by `ring`, RSA
//! by `openssl genpkey`, once per test process), their JWKs, and tokens
//! signed with them. No private key is stored in the tree.

use std::sync::OnceLock;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _, RsaKeyPair};
use serde_json::{Value, json};

/// One private key and the `kid` its JWK gets.
pub(crate) enum Signer {
    Ed25519(Ed25519KeyPair, String),
    P256(EcdsaKeyPair, String),
    Rsa(&'static RsaKeyPair, String),
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A 2048-bit RSA key from `openssl genpkey`, shared by the tests.
fn rsa_key() -> &'static RsaKeyPair {
    static KEY: OnceLock<RsaKeyPair> = OnceLock::new();
    KEY.get_or_init(|| {
        let out = std::process::Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-outform",
                "DER",
            ])
            .output()
            .expect("openssl genpkey (the RSA test key) must run");
        assert!(out.status.success(), "openssl genpkey failed");
        // OpenSSL 3 writes DER keys as PKCS#1, older ones as PKCS#8.
        RsaKeyPair::from_der(&out.stdout)
            .or_else(|_| RsaKeyPair::from_pkcs8(&out.stdout))
            .expect("an RSA private key in DER")
    })
}

impl Signer {
    pub(crate) fn ed25519(kid: &str) -> Signer {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        Signer::Ed25519(
            Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap(),
            kid.into(),
        )
    }

    pub(crate) fn p256(kid: &str) -> Signer {
        let alg = &signature::ECDSA_P256_SHA256_FIXED_SIGNING;
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, &rng).unwrap();
        Signer::P256(
            EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).unwrap(),
            kid.into(),
        )
    }

    pub(crate) fn rsa(kid: &str) -> Signer {
        Signer::Rsa(rsa_key(), kid.into())
    }

    pub(crate) fn alg(&self) -> &'static str {
        match self {
            Signer::Ed25519(..) => "EdDSA",
            Signer::P256(..) => "ES256",
            Signer::Rsa(..) => "RS256",
        }
    }

    pub(crate) fn kid(&self) -> &str {
        match self {
            Signer::Ed25519(_, kid) | Signer::P256(_, kid) | Signer::Rsa(_, kid) => kid,
        }
    }

    /// The public JWK.
    pub(crate) fn jwk(&self) -> Value {
        match self {
            Signer::Ed25519(key, kid) => json!({
                "kty": "OKP", "crv": "Ed25519", "kid": kid, "use": "sig",
                "x": b64(key.public_key().as_ref()),
            }),
            Signer::P256(key, kid) => {
                let point = key.public_key().as_ref();
                json!({
                    "kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256",
                    "x": b64(&point[1..33]), "y": b64(&point[33..65]),
                })
            }
            Signer::Rsa(key, kid) => {
                let public = ring::rsa::PublicKeyComponents::<Vec<u8>>::from(key.public());
                json!({
                    "kty": "RSA", "kid": kid, "alg": "RS256", "use": "sig",
                    "n": b64(&public.n), "e": b64(&public.e),
                })
            }
        }
    }

    /// The raw signature of `message`.
    pub(crate) fn signature(&self, message: &[u8]) -> Vec<u8> {
        let rng = SystemRandom::new();
        match self {
            Signer::Ed25519(key, _) => key.sign(message).as_ref().to_vec(),
            Signer::P256(key, _) => key.sign(&rng, message).unwrap().as_ref().to_vec(),
            Signer::Rsa(key, _) => {
                let mut sig = vec![0; key.public().modulus_len()];
                key.sign(&signature::RSA_PKCS1_SHA256, &rng, message, &mut sig)
                    .unwrap();
                sig
            }
        }
    }

    /// A compact JWT of `header` and `claims`, signed.
    pub(crate) fn token_with(&self, header: &Value, claims: &Value) -> String {
        let signed = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let sig = self.signature(signed.as_bytes());
        format!("{signed}.{}", b64(&sig))
    }

    /// A token with the usual header (`alg`, `kid`, `typ`).
    pub(crate) fn token(&self, claims: &Value) -> String {
        let header = json!({"alg": self.alg(), "kid": self.kid(), "typ": "JWT"});
        self.token_with(&header, claims)
    }
}

/// `{"keys":[...]}` of these signers.
pub(crate) fn jwks(signers: &[&Signer]) -> String {
    json!({"keys": signers.iter().map(|s| s.jwk()).collect::<Vec<_>>()}).to_string()
}
