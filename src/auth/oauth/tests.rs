use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};

use super::test_keys::{Signer, jwks};
use super::*;

const NOW: u64 = 1_800_000_000;

fn claims() -> Claims {
    Claims {
        issuer: "https://id.example.net".into(),
        audience: "pop3.example.net".into(),
        username_claim: "email".into(),
    }
}

fn good_claims() -> Value {
    json!({
        "iss": "https://id.example.net",
        "aud": ["other", "pop3.example.net"],
        "sub": "8f2c1a",
        "email": "alice@example.net",
        "iat": NOW - 10,
        "nbf": NOW - 10,
        "exp": NOW + 3600,
    })
}

fn validator(signers: &[&Signer]) -> OAuth {
    OAuth::new(KeySet::parse(jwks(signers).as_bytes()).unwrap(), claims())
}

fn with(mut claims: Value, key: &str, value: Value) -> Value {
    claims[key] = value;
    claims
}

#[test]
fn good_tokens_of_each_algorithm_name_their_user() {
    let (ed, ec, rsa) = (
        Signer::ed25519("ed"),
        Signer::p256("ec"),
        Signer::rsa("rsa"),
    );
    let oauth = validator(&[&ed, &ec, &rsa]);
    for signer in [&ed, &ec, &rsa] {
        let token = signer.token(&good_claims());
        assert_eq!(
            oauth.verify(token.as_bytes(), NOW).as_deref(),
            Ok("alice@example.net"),
            "{}",
            signer.alg()
        );
        // Without kid, every key of the algorithm is tried.
        let header = json!({"alg": signer.alg()});
        let token = signer.token_with(&header, &good_claims());
        assert!(oauth.verify(token.as_bytes(), NOW).is_ok());
    }
    // A single audience string, and `sub` as the user claim.
    let mut c = claims();
    c.username_claim = "sub".into();
    let oauth = OAuth::new(KeySet::parse(jwks(&[&ed]).as_bytes()).unwrap(), c);
    let token = ed.token(&with(good_claims(), "aud", json!("pop3.example.net")));
    assert_eq!(oauth.verify(token.as_bytes(), NOW).as_deref(), Ok("8f2c1a"));
}

#[test]
fn claims_are_checked() {
    let ed = Signer::ed25519("ed");
    let oauth = validator(&[&ed]);
    let table: &[(Value, u64, TokenError)] = &[
        (
            with(good_claims(), "iss", json!("https://evil.example")),
            NOW,
            TokenError::Issuer,
        ),
        (good_claims(), NOW + 3600 + 60, TokenError::Expired),
        (good_claims(), NOW + 10_000, TokenError::Expired),
        (
            with(good_claims(), "exp", json!("tomorrow")),
            NOW,
            TokenError::Expired,
        ),
        (
            with(good_claims(), "nbf", json!(NOW + 61)),
            NOW,
            TokenError::NotYetValid,
        ),
        (
            with(good_claims(), "aud", json!("someone-else")),
            NOW,
            TokenError::Audience,
        ),
        (
            with(good_claims(), "aud", json!(["a", "b"])),
            NOW,
            TokenError::Audience,
        ),
        (
            with(good_claims(), "email", json!("")),
            NOW,
            TokenError::NoUser,
        ),
        (
            with(good_claims(), "email", json!(42)),
            NOW,
            TokenError::NoUser,
        ),
    ];
    for (claims, now, want) in table {
        let token = ed.token(claims);
        assert_eq!(oauth.verify(token.as_bytes(), *now), Err(*want), "{claims}");
    }
    // Missing claims.
    for missing in ["iss", "aud", "exp", "email"] {
        let mut c = good_claims();
        c.as_object_mut().unwrap().remove(missing);
        assert!(
            oauth.verify(ed.token(&c).as_bytes(), NOW).is_err(),
            "{missing}"
        );
    }
    // The skew: just inside both edges passes.
    let token = ed.token(&good_claims());
    assert!(oauth.verify(token.as_bytes(), NOW + 3600 + 59).is_ok());
    let token = ed.token(&with(good_claims(), "nbf", json!(NOW + 60)));
    assert!(oauth.verify(token.as_bytes(), NOW).is_ok());
}

#[test]
fn wrong_keys_and_kids_are_refused() {
    let (ed, other) = (Signer::ed25519("ed"), Signer::ed25519("ed"));
    let oauth = validator(&[&ed]);
    // Same kid, other key: the signature fails.
    let token = other.token(&good_claims());
    assert_eq!(
        oauth.verify(token.as_bytes(), NOW),
        Err(TokenError::Signature)
    );
    // An unknown kid.
    let stranger = Signer::ed25519("nobody");
    assert_eq!(
        oauth.verify(stranger.token(&good_claims()).as_bytes(), NOW),
        Err(TokenError::UnknownKey)
    );
    // A kid that exists, but for another algorithm.
    let ec = Signer::p256("ed");
    assert_eq!(
        oauth.verify(ec.token(&good_claims()).as_bytes(), NOW),
        Err(TokenError::UnknownKey)
    );
    // Claims changed after signing.
    let token = ed.token(&good_claims());
    let mut parts: Vec<&str> = token.split('.').collect();
    let forged = URL_SAFE_NO_PAD.encode(
        with(good_claims(), "email", json!("root@example.net"))
            .to_string()
            .as_bytes(),
    );
    parts[1] = &forged;
    assert_eq!(
        oauth.verify(parts.join(".").as_bytes(), NOW),
        Err(TokenError::Signature)
    );
}

#[test]
fn algorithm_attacks_fail() {
    let rsa = Signer::rsa("rsa");
    let oauth = validator(&[&rsa]);
    let payload = URL_SAFE_NO_PAD.encode(good_claims().to_string());
    // alg none, with and without a signature part.
    for alg in ["none", "None", "NONE"] {
        let header = URL_SAFE_NO_PAD.encode(json!({"alg": alg, "kid": "rsa"}).to_string());
        for token in [
            format!("{header}.{payload}."),
            format!("{header}.{payload}"),
        ] {
            assert!(oauth.verify(token.as_bytes(), NOW).is_err(), "{token}");
        }
    }
    // HS256 keyed with the RSA public key as the verifier would see it
    // (the JWK text and the raw modulus): the classic confusion.
    let header = URL_SAFE_NO_PAD.encode(json!({"alg": "HS256", "kid": "rsa"}).to_string());
    let signed = format!("{header}.{payload}");
    let jwk = rsa.jwk().to_string();
    let n = URL_SAFE_NO_PAD
        .decode(rsa.jwk()["n"].as_str().unwrap())
        .unwrap();
    for secret in [jwk.as_bytes(), &n[..]] {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
        let tag = ring::hmac::sign(&key, signed.as_bytes());
        let token = format!("{signed}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()));
        assert_eq!(
            oauth.verify(token.as_bytes(), NOW),
            Err(TokenError::Algorithm)
        );
    }
    // An RSA signature presented as ES256 / EdDSA finds no key.
    for alg in ["ES256", "EdDSA", "RS384", "PS256"] {
        let header = json!({"alg": alg, "kid": "rsa"});
        let token = rsa.token_with(&header, &good_claims());
        assert!(oauth.verify(token.as_bytes(), NOW).is_err(), "{alg}");
    }
    // crit is refused even with a good signature.
    let header = json!({"alg": "RS256", "kid": "rsa", "crit": ["exp"], "exp": 1});
    let token = rsa.token_with(&header, &good_claims());
    assert_eq!(
        oauth.verify(token.as_bytes(), NOW),
        Err(TokenError::Critical)
    );
}

#[test]
fn malformed_and_huge_tokens_are_refused_without_panic() {
    let ed = Signer::ed25519("ed");
    let oauth = validator(&[&ed]);
    let good = ed.token(&good_claims());
    let parts: Vec<&str> = good.split('.').collect();
    let not_json = URL_SAFE_NO_PAD.encode("{not json");
    let cases: Vec<String> = vec![
        String::new(),
        ".".into(),
        "..".into(),
        "a.b.c".into(),
        format!("{}.{}", parts[0], parts[1]),
        format!("{good}.extra"),
        format!("{}!.{}.{}", parts[0], parts[1], parts[2]),
        format!("{}.{}.{}=", parts[0], parts[1], parts[2]),
        format!("{not_json}.{}.{}", parts[1], parts[2]),
        format!("{}.{not_json}.{}", parts[0], parts[2]),
        format!("{}.{}.{}", parts[0], URL_SAFE_NO_PAD.encode("[]"), parts[2]),
        "\u{0}\u{ff}.\n.\r".into(),
    ];
    for token in &cases {
        assert!(oauth.verify(token.as_bytes(), NOW).is_err(), "{token:?}");
    }
    // A payload JSON array signed properly is still malformed.
    let token = ed.token_with(&json!({"alg": "EdDSA"}), &json!(["alice"]));
    assert_eq!(
        oauth.verify(token.as_bytes(), NOW),
        Err(TokenError::Malformed)
    );
    let huge = format!("{}.{}.{}", parts[0], "A".repeat(TOKEN_BYTES_MAX), parts[2]);
    assert_eq!(oauth.verify(huge.as_bytes(), NOW), Err(TokenError::TooLong));
    let bytes: Vec<u8> = (0..=255).collect();
    assert!(oauth.verify(&bytes, NOW).is_err());
}

#[test]
fn jwks_parsing() {
    let (ed, ec, rsa) = (
        Signer::ed25519("ed"),
        Signer::p256("ec"),
        Signer::rsa("rsa"),
    );
    let set = KeySet::parse(jwks(&[&ed, &ec, &rsa]).as_bytes()).unwrap();
    assert_eq!(set.len(), 3);
    // Keys we do not use are skipped: a symmetric key, an encryption key,
    // another curve, a key bound to another algorithm.
    let mixed = json!({"keys": [
        {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"},
        {"kty": "RSA", "use": "enc", "n": "AQAB", "e": "AQAB"},
        {"kty": "EC", "crv": "P-384", "x": "AA", "y": "AA"},
        {"kty": "RSA", "alg": "RS512", "n": "AQAB", "e": "AQAB"},
        ed.jwk(),
    ]});
    assert_eq!(
        KeySet::parse(mixed.to_string().as_bytes()).unwrap().len(),
        1
    );
    type Check = fn(&JwksError) -> bool;
    let bad: &[(&str, Check)] = &[
        ("", |e| matches!(e, JwksError::Syntax(_))),
        ("{}", |e| matches!(e, JwksError::Syntax(_))),
        ("{\"keys\":{}}", |e| matches!(e, JwksError::Syntax(_))),
        ("{\"keys\":[]}", |e| *e == JwksError::NoUsableKey),
        (r#"{"keys":[{"kty":"oct","k":"AA"}]}"#, |e| {
            *e == JwksError::NoUsableKey
        }),
        (
            r#"{"keys":[{"kty":"OKP","crv":"Ed25519","x":"AAAA"}]}"#,
            |e| matches!(e, JwksError::BadKey { index: 0, .. }),
        ),
        (
            r#"{"keys":[{"kty":"OKP","crv":"Ed25519","x":"!!"}]}"#,
            |e| matches!(e, JwksError::BadKey { .. }),
        ),
        // A 512-bit RSA modulus is too small.
        (
            r#"{"keys":[{"kty":"RSA","n":"ALxXKWkLQ8lFzBkVk9lu4p1R1N8Jgo5hRz2EYGk5s3Hq2NRVbkV8yJ3Cp8XQZY3N3j8YlVrpQbqq7iZc7mW3kR0","e":"AQAB"}]}"#,
            |e| matches!(e, JwksError::BadKey { .. }),
        ),
    ];
    for (text, ok) in bad {
        let err = KeySet::parse(text.as_bytes()).unwrap_err();
        assert!(ok(&err), "{text}: {err}");
    }
    let many: Vec<Value> = (0..=KEYS_MAX).map(|_| ed.jwk()).collect();
    assert_eq!(
        KeySet::parse(json!({ "keys": many }).to_string().as_bytes()).unwrap_err(),
        JwksError::TooManyKeys
    );
    assert_eq!(
        KeySet::parse(&vec![b' '; JWKS_BYTES_MAX + 1]).unwrap_err(),
        JwksError::TooLarge
    );
}

#[test]
fn load_reads_the_file_and_reports_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jwks.json");
    let ed = Signer::ed25519("ed");
    std::fs::write(&path, jwks(&[&ed])).unwrap();
    let config = crate::config::OAuth {
        jwks_file: path.clone(),
        issuer: "https://id.example.net".into(),
        audience: "pop3.example.net".into(),
        username_claim: "email".into(),
    };
    let oauth = OAuth::load(&config).unwrap();
    assert_eq!(oauth.jwks_file(), path);
    let token = ed.token(&good_claims());
    assert!(oauth.verify(token.as_bytes(), NOW).is_ok());
    // The Debug form names the file, never a key.
    assert!(!format!("{oauth:?}").contains(ed.jwk()["x"].as_str().unwrap()));

    std::fs::write(&path, "{\"keys\": [").unwrap();
    let err = OAuth::load(&config).unwrap_err().to_string();
    assert!(
        err.contains("jwks.json") && err.contains("not a JWKS"),
        "{err}"
    );
    std::fs::remove_file(&path).unwrap();
    assert!(matches!(OAuth::load(&config), Err(OAuthError::Io { .. })));
}

#[test]
fn the_fuzz_entry_takes_any_bytes() {
    for data in [&b""[..], b"{\"keys\":[]}", b"a.b.c", &[0xff; 64]] {
        fuzz_jwks_and_token(data);
    }
}

#[test]
fn passdb_verify_bearer_looks_the_token_user_up() {
    let fixture = crate::auth::test_fixture::Fixture::new(
        "alice@example.net:{PLAIN}pw::::/home/alice::userdb_mail=maildir:/m/alice\n\
         carol@example.net:{PLAIN}pw::::/home/carol::nologin\n",
    );
    let ed = Signer::ed25519("ed");
    let passdb = fixture.open().with_oauth(validator(&[&ed]));
    assert!(passdb.has_oauth());
    let token = |user: &str| ed.token(&with(good_claims(), "email", json!(user)));
    let alice = token("alice@example.net");
    let entry = passdb
        .verify_bearer_at("", alice.as_bytes(), NOW)
        .unwrap()
        .expect("a good token for a known user");
    assert_eq!(entry.user, "alice@example.net");
    assert_eq!(entry.extra("userdb_mail"), Some("maildir:/m/alice"));
    // The claimed name must be the token's user (ASCII case aside).
    assert!(
        passdb
            .verify_bearer_at("ALICE@example.net", alice.as_bytes(), NOW)
            .unwrap()
            .is_some()
    );
    let refused = [
        ("bob@example.net", alice.clone(), NOW),
        ("", token("nobody@example.net"), NOW),
        ("", token("carol@example.net"), NOW),
        ("", token("../etc"), NOW),
        ("", alice.clone(), NOW + 7200),
        ("", "not-a-token".into(), NOW),
    ];
    for (claimed, token, now) in refused {
        assert!(
            passdb
                .verify_bearer_at(claimed, token.as_bytes(), now)
                .unwrap()
                .is_none(),
            "{claimed} {now}"
        );
    }
    // Without [auth.oauth] every token is refused.
    assert!(
        fixture
            .open()
            .verify_bearer_at("", alice.as_bytes(), NOW)
            .unwrap()
            .is_none()
    );
}

#[test]
fn passdb_prepares_utf8_names_and_passwords() {
    let fixture = crate::auth::test_fixture::Fixture::new(
        "j\u{f6}rg:{PLAIN}p\u{e4}ss w\u{f6}rd::::/home/j::\nix:{PLAIN}IX::::/home/ix::\n",
    );
    let passdb = fixture.open();
    // Decomposed letters and a NO-BREAK SPACE are prepared to the stored form.
    let user = "jo\u{308}rg";
    let password = "pa\u{308}ss\u{a0}wo\u{308}rd";
    assert!(
        passdb
            .verify_plain(user, password.as_bytes())
            .unwrap()
            .is_some()
    );
    // ROMAN NUMERAL NINE prepares to "IX".
    assert!(
        passdb
            .verify_plain("ix", "\u{2168}".as_bytes())
            .unwrap()
            .is_some()
    );
    assert!(passdb.verify_plain("ix", b"ix").unwrap().is_none());
}
