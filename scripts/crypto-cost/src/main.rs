//! What one TLS server handshake's private-key work and one record's
//! encryption cost on this CPU, with ring (shardpop's provider) and aws-lc-rs
//! (rustls' default provider), side by side in one process. Compare with
//! `openssl speed rsa2048 ecdhx25519` for Dovecot's OpenSSL.
//!
//! `cargo run --release --manifest-path scripts/crypto-cost/Cargo.toml`
//! prints microseconds per operation, the median of five rounds.

use std::time::Instant;

/// Microseconds per call of `op`, after a tenth as many calls to warm up.
fn per_call(calls: u32, mut op: impl FnMut()) -> f64 {
    for _ in 0..calls / 10 {
        op();
    }
    let start = Instant::now();
    for _ in 0..calls {
        op();
    }
    start.elapsed().as_secs_f64() * 1e6 / f64::from(calls)
}

fn main() {
    const ROUNDS: usize = 5;
    let mut rows: Vec<(&str, Vec<f64>)> = Vec::new();
    let mut record = |name: &'static str, us: f64| match rows.iter_mut().find(|r| r.0 == name) {
        Some(row) => row.1.push(us),
        None => rows.push((name, vec![us])),
    };
    let message = b"a TLS 1.3 CertificateVerify signs a hash of the transcript";
    let rsa = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).expect("RSA key");
    let rsa_der = aws_lc_rs::encoding::AsDer::as_der(&rsa).expect("PKCS#8");
    let ring_rsa =
        ring::signature::RsaKeyPair::from_pkcs8(rsa_der.as_ref()).expect("same key in ring");
    for _ in 0..ROUNDS {
        {
            use ring::agreement::{self, EphemeralPrivateKey, UnparsedPublicKey, X25519};
            let rng = ring::rand::SystemRandom::new();
            let peer = EphemeralPrivateKey::generate(&X25519, &rng).unwrap();
            let peer = peer.compute_public_key().unwrap();
            record(
                "X25519 key share + agreement, ring",
                per_call(2000, || {
                    let key = EphemeralPrivateKey::generate(&X25519, &rng).unwrap();
                    let _share = key.compute_public_key().unwrap();
                    let peer = UnparsedPublicKey::new(&X25519, peer.as_ref());
                    agreement::agree_ephemeral(key, &peer, |secret| secret[0]).unwrap();
                }),
            );
        }
        {
            use aws_lc_rs::agreement::{self, EphemeralPrivateKey, UnparsedPublicKey, X25519};
            let rng = aws_lc_rs::rand::SystemRandom::new();
            let peer = EphemeralPrivateKey::generate(&X25519, &rng).unwrap();
            let peer = peer.compute_public_key().unwrap();
            record(
                "X25519 key share + agreement, aws-lc-rs",
                per_call(2000, || {
                    let key = EphemeralPrivateKey::generate(&X25519, &rng).unwrap();
                    let _share = key.compute_public_key().unwrap();
                    let peer = UnparsedPublicKey::new(&X25519, peer.as_ref());
                    agreement::agree_ephemeral(
                        key,
                        &peer,
                        aws_lc_rs::error::Unspecified,
                        |secret| Ok(secret[0]),
                    )
                    .unwrap();
                }),
            );
        }
        {
            use ring::signature::{ECDSA_P256_SHA256_ASN1_SIGNING as ALG, EcdsaKeyPair};
            let rng = ring::rand::SystemRandom::new();
            let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ALG, &rng).unwrap();
            let key = EcdsaKeyPair::from_pkcs8(&ALG, pkcs8.as_ref(), &rng).unwrap();
            record(
                "ECDSA P-256 sign, ring",
                per_call(2000, || {
                    key.sign(&rng, message).unwrap();
                }),
            );
        }
        {
            use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1_SIGNING as ALG, EcdsaKeyPair};
            let rng = aws_lc_rs::rand::SystemRandom::new();
            let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ALG, &rng).unwrap();
            let key = EcdsaKeyPair::from_pkcs8(&ALG, pkcs8.as_ref()).unwrap();
            record(
                "ECDSA P-256 sign, aws-lc-rs",
                per_call(2000, || {
                    key.sign(&rng, message).unwrap();
                }),
            );
        }
        {
            let mut signature = vec![0u8; ring_rsa.public().modulus_len()];
            let rng = ring::rand::SystemRandom::new();
            record(
                "RSA-2048 PSS sign, ring",
                per_call(200, || {
                    ring_rsa
                        .sign(
                            &ring::signature::RSA_PSS_SHA256,
                            &rng,
                            message,
                            &mut signature,
                        )
                        .unwrap();
                }),
            );
            let rng = aws_lc_rs::rand::SystemRandom::new();
            record(
                "RSA-2048 PSS sign, aws-lc-rs",
                per_call(200, || {
                    rsa.sign(
                        &aws_lc_rs::signature::RSA_PSS_SHA256,
                        &rng,
                        message,
                        &mut signature,
                    )
                    .unwrap();
                }),
            );
        }
        {
            let key = [7u8; 32];
            let mut record_body = vec![0u8; 16 * 1024];
            let ring_key = ring::aead::LessSafeKey::new(
                ring::aead::UnboundKey::new(&ring::aead::AES_256_GCM, &key).unwrap(),
            );
            record(
                "AES-256-GCM seal of a 16 KiB record, ring",
                per_call(20_000, || {
                    let nonce = ring::aead::Nonce::assume_unique_for_key([0; 12]);
                    let _tag = ring_key
                        .seal_in_place_separate_tag(
                            nonce,
                            ring::aead::Aad::empty(),
                            &mut record_body,
                        )
                        .unwrap();
                }),
            );
            let aws_key = aws_lc_rs::aead::LessSafeKey::new(
                aws_lc_rs::aead::UnboundKey::new(&aws_lc_rs::aead::AES_256_GCM, &key).unwrap(),
            );
            record(
                "AES-256-GCM seal of a 16 KiB record, aws-lc-rs",
                per_call(20_000, || {
                    let nonce = aws_lc_rs::aead::Nonce::assume_unique_for_key([0; 12]);
                    let _tag = aws_key
                        .seal_in_place_separate_tag(
                            nonce,
                            aws_lc_rs::aead::Aad::empty(),
                            &mut record_body,
                        )
                        .unwrap();
                }),
            );
        }
    }
    println!("{:48} {:>10}  rounds", "operation", "median µs");
    for (name, mut values) in rows {
        let rounds = values
            .iter()
            .map(|v| format!("{v:.1}"))
            .collect::<Vec<_>>()
            .join(", ");
        values.sort_by(f64::total_cmp);
        println!("{name:48} {:>10.1}  {rounds}", values[values.len() / 2]);
    }
}
