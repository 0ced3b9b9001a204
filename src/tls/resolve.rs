//! Which certificate a client gets when several are configured: the first
//! whose key can sign with a scheme the client offered, in the order
//! ECDSA/EdDSA first, then RSA, then configuration order.
//!
//! Why that order: an ECDSA P-256 signature costs the server a small
//! fraction of an RSA-2048 one, and every client of the last decade offers
//! ECDSA. Clients that offer only RSA schemes (old Outlook, embedded mail
//! readers) still get the RSA certificate.

use std::sync::Arc;

use rustls::SignatureAlgorithm;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// A rustls certificate resolver over one certificate per key type (or
/// several: the first usable wins). Built once per config; `resolve` runs
/// once per full handshake and only compares scheme lists.
#[derive(Debug)]
pub struct ByKeyType {
    /// Never empty. In preference order: cheaper signatures first, then
    /// the order the operator gave.
    keys: Vec<Arc<CertifiedKey>>,
}

impl ByKeyType {
    /// Orders `keys` by preference. Panics on an empty list: the loader
    /// refuses a config without a certificate before getting here.
    pub fn new(keys: Vec<CertifiedKey>) -> ByKeyType {
        assert!(!keys.is_empty(), "a TLS config needs a certificate");
        let mut keys: Vec<Arc<CertifiedKey>> = keys.into_iter().map(Arc::new).collect();
        // Stable: equal ranks keep the operator's order.
        keys.sort_by_key(|k| rank(k.key.algorithm()));
        ByKeyType { keys }
    }

    /// The algorithms of the certificates, in preference order (for the log
    /// line at startup and for tests).
    pub fn algorithms(&self) -> Vec<SignatureAlgorithm> {
        self.keys.iter().map(|k| k.key.algorithm()).collect()
    }
}

/// Lower is preferred: fast signatures first.
fn rank(algorithm: SignatureAlgorithm) -> u8 {
    match algorithm {
        SignatureAlgorithm::ED25519 | SignatureAlgorithm::ECDSA => 0,
        SignatureAlgorithm::RSA => 1,
        _ => 2,
    }
}

impl ResolvesServerCert for ByKeyType {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let offered = hello.signature_schemes();
        // `choose_scheme` knows the details (an ECDSA key signs only with
        // its own curve's scheme, RSA with PSS or PKCS#1 as offered). With
        // no usable certificate the handshake fails with an alert, as it
        // would with one certificate the client cannot verify.
        self.keys
            .iter()
            .find(|k| k.key.choose_scheme(offered).is_some())
            .cloned()
    }
}
