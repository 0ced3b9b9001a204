//! Plain digests (`{SHA256}`, `{PLAIN-MD5}`, ...) and salted digests
//! (`{SSHA256}`, `{SMD5}`, ...). Dovecot stores a salted digest as
//! `digest(password || salt) || salt`, so the salt is whatever follows the
//! digest. SHA-1 and MD5 are here only to read old passwd-files.

use ring::digest;

/// A digest algorithm Dovecot's digest schemes use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) enum DigestAlg {
    Md5,
    Sha1,
    Sha256,
    Sha512,
}

impl DigestAlg {
    /// Output length in bytes.
    pub(super) fn len(self) -> usize {
        match self {
            DigestAlg::Md5 => 16,
            DigestAlg::Sha1 => 20,
            DigestAlg::Sha256 => 32,
            DigestAlg::Sha512 => 64,
        }
    }

    /// The digest of the concatenation of `parts`.
    pub(super) fn digest(self, parts: &[&[u8]]) -> Vec<u8> {
        let ring_alg = match self {
            DigestAlg::Md5 => return md5(parts).to_vec(),
            DigestAlg::Sha1 => &digest::SHA1_FOR_LEGACY_USE_ONLY,
            DigestAlg::Sha256 => &digest::SHA256,
            DigestAlg::Sha512 => &digest::SHA512,
        };
        let mut context = digest::Context::new(ring_alg);
        for part in parts {
            context.update(part);
        }
        context.finish().as_ref().to_vec()
    }
}

/// MD5 of the concatenation of `parts` (ring has no MD5).
pub(crate) fn md5(parts: &[&[u8]]) -> [u8; 16] {
    use md5::{Digest, Md5};
    let mut hasher = Md5::new();
    for part in parts {
        hasher.update(part);
    }
    hasher.finalize().into()
}

/// Whether `password` hashes to `expected` (an unsalted digest).
pub(super) fn verify(alg: DigestAlg, expected: &[u8], password: &[u8]) -> bool {
    super::ct_eq(&alg.digest(&[password]), expected)
}

/// Whether `password` matches `expected` under `salt` (a salted digest).
pub(super) fn verify_salted(alg: DigestAlg, expected: &[u8], salt: &[u8], password: &[u8]) -> bool {
    super::ct_eq(&alg.digest(&[password, salt]), expected)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn digests_match_known_answers() {
        // Known answers for "abc" (FIPS 180, RFC 1321).
        let table = [
            (DigestAlg::Md5, "900150983cd24fb0d6963f7d28e17f72"),
            (DigestAlg::Sha1, "a9993e364706816aba3e25717850c26c9cd0d89d"),
            (
                DigestAlg::Sha256,
                "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
            ),
            (
                DigestAlg::Sha512,
                "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a\
                 2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f",
            ),
        ];
        for (alg, want) in table {
            let got = alg.digest(&[b"a", b"bc"]);
            assert_eq!(got.len(), alg.len());
            assert_eq!(hex(&got), want, "{alg:?}");
        }
    }
}
