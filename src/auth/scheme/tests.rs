use super::*;

const PASSWORD: &[u8] = b"correct horse";

/// Written by Dovecot 2.3.19's `doveadm pw -s <scheme> -p 'correct horse'`
/// (and `-r` for the rounds), each with the scheme we read it as. doveadm
/// ignores `-r` for SCRAM-SHA-256, so its 10000-iteration line was computed
/// elsewhere and checked with `doveadm pw -t`.
const DOVEADM: &[(&str, Scheme)] = &[
    ("{SHA1}L55TUjtiq8FBorTWAZ0jy6g129A=", Scheme::Sha1),
    ("{SHA}L55TUjtiq8FBorTWAZ0jy6g129A=", Scheme::Sha1),
    ("{SSHA}qeJhfxGwbhMplLef3BGtxDGccUwhnfNW", Scheme::Ssha),
    ("{SMD5}xXXarn/u517jAhr4qVdXG3Eo4Ko=", Scheme::Smd5),
    (
        "{PLAIN-MD5}3cb4e732631f47e6eb961f34554b7cde",
        Scheme::PlainMd5,
    ),
    ("{LDAP-MD5}PLTnMmMfR+brlh80VUt83g==", Scheme::PlainMd5),
    (
        "{SHA256}QQTTb42iwlQ0n4WDZ5Pr4CngyVcGOjTJHC6SAxh7VjE=",
        Scheme::Sha256,
    ),
    (
        "{SHA256.HEX}4104d36f8da2c254349f85836793ebe029e0c957063a34c91c2e9203187b5631",
        Scheme::Sha256,
    ),
    (
        "{SSHA256}CQoqd2c1B9lXAmEjE+H3nOZJgCpOCwM4k3ILZSR8uLOClMo5",
        Scheme::Ssha256,
    ),
    (
        "{SSHA256.HEX}faf275eda1cfb3ee22b7b3aafc23ea54651d5b2abfb1814e83191e59fa5f5b9c9399414f",
        Scheme::Ssha256,
    ),
    (
        "{SHA512}VraY3v7bWkNbY0r+MyC7rz/c2SC2xQOkRvx7endrKY1HnRumqLYXgI6wv1ec6aldZoNHvKtxSQhayTyyeZUZew==",
        Scheme::Sha512,
    ),
    (
        "{SSHA512}4Gj1vEOcRKYmaKFFK0uilC3nf3XLZT2J3h6QuESJVLOos5PtE9o2ow3s1pFpGvF3iPniLat2U9ynZ8J+XzXEcIfLZ3Q=",
        Scheme::Ssha512,
    ),
    (
        "{SSHA512.B64}8qxtXG/ORN4mSArMIl60MDK1mwF4t/cnK6RGyqA8lQgpiJ37Br0p0ZE2DHgipuqSbVDeSYRFcx33hfOTdoE5BArnPag=",
        Scheme::Ssha512,
    ),
    (
        "{MD5-CRYPT}$1$MQg.RUCX$Hh7nEwqPKT/qkZ/jI8mhv0",
        Scheme::Md5Crypt,
    ),
    ("{MD5}$1$F10da0Qp$7j3t.wxbovcI95ECruGi3/", Scheme::Md5Crypt),
    ("{MD5}3cb4e732631f47e6eb961f34554b7cde", Scheme::PlainMd5),
    (
        "{SHA256-CRYPT}$5$9T9ApUp.T8o9xCwM$sNqdrylpbCRqPZ.4q5x7bYbHS/6IBCYwr96m7apoAR0",
        Scheme::Sha256Crypt,
    ),
    (
        "{SHA256-CRYPT}$5$rounds=20000$ausAFfN5UwWWxYPx$1R2VRYbMVKd6d7TDvZpIBDyID4WEt1OVxMAgb/PmI48",
        Scheme::Sha256Crypt,
    ),
    (
        "{SHA512-CRYPT}$6$8g0WO6M1HHMV2gH3$VeZNPPksMG2ci1HJOZfc47.yYRipTs//zXOP4pVPmLu3/gkv3LPocTYwsyHI2uDA/mKkpAO6iOJYaPGid8v2u1",
        Scheme::Sha512Crypt,
    ),
    (
        "{SHA512-CRYPT}$6$rounds=1000$utzDGzjNsZFh2w1w$ii.7TXDzuQLjo2TrA10Wg51Vg3XQifqGxTrp/D9NyjoU/HtoydhfcMnkuCZMQ.zY5qYfmfzuBKjXcPy4FS/VV0",
        Scheme::Sha512Crypt,
    ),
    ("{PLAIN.B64}Y29ycmVjdCBob3JzZQ==", Scheme::Plain),
    ("{PLAIN.HEX}636f727265637420686f727365", Scheme::Plain),
    ("{CLEARTEXT}correct horse", Scheme::Plain),
    ("{PLAIN}correct horse", Scheme::Plain),
    (
        "{SCRAM-SHA-256}4096,r7IzsmctMuAbbIBgGtAU4Q==,xFoBssg+XsvpVwTPefRxbd3b7Iom/xUtseaDqeEmnp8=,nZ0xP1p/G/ixggraNPcSOgKlEiqJXYiIVsdREcS5U3U=",
        Scheme::ScramSha256,
    ),
    (
        "{SCRAM-SHA-256}10000,lJbZu+11PkrOLNh3CnwfHQ==,BXVj+Y9b+UYd/AjsI8Ot2QsP5TduHPM4HgSWxR7Y1bQ=,zxRhMUvaKgbtHHmtqg/IEu8yUdQifOQ5Ijodz1pOzMk=",
        Scheme::ScramSha256,
    ),
];

fn parse(text: &str) -> StoredPassword {
    StoredPassword::parse(text).unwrap_or_else(|problem| panic!("{text}: {problem}"))
}

fn assert_verifies(text: &str, scheme: Scheme, password: &[u8]) {
    let stored = parse(text);
    assert_eq!(stored.scheme(), scheme, "{text}");
    assert!(stored.verify(password), "{text} should verify");
    let mut wrong = password.to_vec();
    wrong.push(b'!');
    assert!(!stored.verify(&wrong), "{text} accepted a wrong password");
    assert!(!stored.verify(b""), "{text} accepted an empty password");
}

#[test]
fn doveadm_vectors_verify() {
    for (text, scheme) in DOVEADM {
        assert_verifies(text, *scheme, PASSWORD);
    }
}

#[test]
fn doveadm_slow_vectors_verify() {
    // `doveadm pw -s BLF-CRYPT|ARGON2ID|ARGON2I -p secret`.
    let table = [
        (
            "{BLF-CRYPT}$2y$05$ROvahDiyS4QrtyILPWIysO4XCuX17bUQGVp./DQZlSnuEeIP6Q.kS",
            Scheme::BlfCrypt,
        ),
        (
            "{ARGON2ID}$argon2id$v=19$m=65536,t=3,p=1$V4QrhNaip2GEKzw6WMxpYg$zP3cf2zIXX8qD4yhtmkodguwyIwQLLLJwX7RPyK+ZMQ",
            Scheme::Argon2id,
        ),
        (
            "{ARGON2I}$argon2i$v=19$m=32768,t=4,p=1$ydYw3lp1339gPJGe0ckTNA$l64p/hcMeALV7w0Y6/L+Hln9VvIWcHbFcgT0WDTnQkw",
            Scheme::Argon2i,
        ),
    ];
    for (text, scheme) in table {
        assert_verifies(text, scheme, b"secret");
    }
}

/// Each of these was checked with `doveadm pw -t`: Dovecot verifies them.
#[test]
fn dovecot_reading_rules() {
    let sha512_crypt = "$6$8g0WO6M1HHMV2gH3$VeZNPPksMG2ci1HJOZfc47.yYRipTs//zXOP4pVPmLu3/gkv3LPocTYwsyHI2uDA/mKkpAO6iOJYaPGid8v2u1";
    let sha512_crypt_b64 = format!("{{SHA512-CRYPT.B64}}{}", STANDARD.encode(sha512_crypt));
    let table: Vec<(String, Scheme)> = vec![
        // Scheme names and suffixes are case-insensitive.
        (
            "{sha256}QQTTb42iwlQ0n4WDZ5Pr4CngyVcGOjTJHC6SAxh7VjE=".into(),
            Scheme::Sha256,
        ),
        (
            "{Sha256.b64}QQTTb42iwlQ0n4WDZ5Pr4CngyVcGOjTJHC6SAxh7VjE=".into(),
            Scheme::Sha256,
        ),
        (
            "{SHA256.BASE64}QQTTb42iwlQ0n4WDZ5Pr4CngyVcGOjTJHC6SAxh7VjE=".into(),
            Scheme::Sha256,
        ),
        (
            "{SHA256.hex}4104d36f8da2c254349f85836793ebe029e0c957063a34c91c2e9203187b5631".into(),
            Scheme::Sha256,
        ),
        // Hex without a suffix is recognised by its length, in either case.
        (
            "{SHA256}4104d36f8da2c254349f85836793ebe029e0c957063a34c91c2e9203187b5631".into(),
            Scheme::Sha256,
        ),
        (
            "{SHA256}4104D36F8DA2C254349F85836793EBE029E0C957063A34C91C2E9203187B5631".into(),
            Scheme::Sha256,
        ),
        ("{cleartext}correct horse".into(), Scheme::Plain),
        ("{CLEAR}correct horse".into(), Scheme::Plain),
        // The CRYPT family is told apart by the crypt(3) prefix, whatever
        // the name says, because Dovecot hands them all to crypt(3).
        (format!("{{CRYPT}}{sha512_crypt}"), Scheme::Sha512Crypt),
        (
            format!("{{SHA256-CRYPT}}{sha512_crypt}"),
            Scheme::Sha512Crypt,
        ),
        (sha512_crypt_b64, Scheme::Sha512Crypt),
        // A bare $1$ string is MD5-CRYPT and Dovecot drops a trailing $part.
        (
            "$1$MQg.RUCX$Hh7nEwqPKT/qkZ/jI8mhv0$junk".into(),
            Scheme::Md5Crypt,
        ),
    ];
    for (text, scheme) in &table {
        assert_verifies(text, *scheme, PASSWORD);
    }
}

#[test]
fn no_prefix_is_the_crypt_default() {
    let table = [
        (
            "$1$saltsalt$9xy1btjgzLYfb7hivXtC//",
            Scheme::Md5Crypt,
            &b"secret"[..],
        ),
        (
            "$5$saltstring$5B8vYYiY.CVt1RlTTf8KbXBH3hsxY/GNooZaBBGWEc5",
            Scheme::Sha256Crypt,
            b"Hello world!",
        ),
        (
            "$6$saltsalt$TVLlQcbpFVof5W3Yz4DTP6gRstiNuHwwTt6GLc1E5n0U0aDehy0S5knV8wiOQSpT0Y77vwPZN.Pq.H91p5hVO1",
            Scheme::Sha512Crypt,
            b"secret",
        ),
        (
            "$2y$04$jLfFhVRmpk5Q7s39xLoEiuvdXyNUM4wkcsg1Ixhxa7TfBPQchJPBm",
            Scheme::BlfCrypt,
            b"secret",
        ),
        // An extension: Dovecot's CRYPT (libxcrypt) does not know Argon2.
        (
            "$argon2id$v=19$m=65536,t=3,p=1$V4QrhNaip2GEKzw6WMxpYg$zP3cf2zIXX8qD4yhtmkodguwyIwQLLLJwX7RPyK+ZMQ",
            Scheme::Argon2id,
            b"secret",
        ),
    ];
    for (text, scheme, password) in table {
        assert_verifies(text, scheme, password);
    }
}

#[test]
fn problems_are_reported_without_the_password() {
    let table: &[(&str, SchemeProblem)] = &[
        ("{NOSUCH}abc", SchemeProblem::UnknownScheme),
        (
            "{SHA256.xyz}4104d36f8da2c254349f85836793ebe029e0c957063a34c91c2e9203187b5631",
            SchemeProblem::UnknownScheme,
        ),
        // Dovecot refuses unpadded base64 too.
        (
            "{SHA256}QQTTb42iwlQ0n4WDZ5Pr4CngyVcGOjTJHC6SAxh7VjE",
            SchemeProblem::BadEncoding("SHA256"),
        ),
        ("{SHA256.HEX}zz", SchemeProblem::BadEncoding("SHA256")),
        (
            "{SHA256}",
            SchemeProblem::Malformed("SHA256", "digest has the wrong length"),
        ),
        (
            "{PLAIN-MD5}",
            SchemeProblem::Malformed("PLAIN-MD5", "digest has the wrong length"),
        ),
        (
            "{SSHA256}QQTTb42iwlQ0n4WDZ5Pr4CngyVcGOjTJHC6SAxh7VjE=",
            SchemeProblem::Malformed("SSHA256", "salted digest is too short"),
        ),
        ("{CRAM-MD5}abcd", SchemeProblem::Unsupported("CRAM-MD5")),
        (
            "{SCRAM-SHA-1}4096,c2FsdA==,AAAAAAAAAAAAAAAAAAAAAAAAAAA=,AAAAAAAAAAAAAAAAAAAAAAAAAAA=",
            SchemeProblem::Unsupported("SCRAM-SHA-1"),
        ),
        (
            "{SCRAM-SHA-256}1000,c2FsdA==,WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=,WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=",
            SchemeProblem::Malformed(
                "SCRAM-SHA-256",
                "iteration count is out of range 4096..=2147483647",
            ),
        ),
        (
            "{SCRAM-SHA-256}hunter2",
            SchemeProblem::Malformed("SCRAM-SHA-256", "not iterations,salt,StoredKey,ServerKey"),
        ),
        (
            "{DES-CRYPT}abJnggxhB/yWI",
            SchemeProblem::Unsupported("DES-CRYPT"),
        ),
        ("abJnggxhB/yWI", SchemeProblem::Unsupported("DES-CRYPT")),
        (
            "$y$j9T$salt$hash",
            SchemeProblem::Unsupported("yescrypt ($y$)"),
        ),
        (
            "hunter2",
            SchemeProblem::Unsupported("CRYPT (unrecognised crypt(3) format)"),
        ),
    ];
    for (text, want) in table {
        match StoredPassword::parse(text) {
            Ok(stored) => panic!("{text} parsed as {stored:?}"),
            Err(problem) => {
                assert_eq!(&problem, want, "{text}");
                assert!(!problem.to_string().contains("hunter2"));
            }
        }
    }
    assert!(matches!(
        StoredPassword::parse("{MD5-CRYPT}$1$MQg.RUCX$Hh7nEwqPKT/qkZ/jI8mhv0$junk"),
        Err(SchemeProblem::Malformed("MD5-CRYPT", _))
    ));
    assert!(matches!(
        StoredPassword::parse(
            "{ARGON2ID}$2y$04$jLfFhVRmpk5Q7s39xLoEiuvdXyNUM4wkcsg1Ixhxa7TfBPQchJPBm"
        ),
        Err(SchemeProblem::Malformed("ARGON2", _))
    ));
}

#[test]
fn hash_password_round_trips_every_scheme() {
    for scheme in Scheme::ALL {
        let password = "pa\u{df}word:1".as_bytes();
        let text = hash_password(scheme, password);
        let stored = parse(&text);
        assert_eq!(stored.scheme(), scheme, "{text}");
        assert!(stored.verify(password), "{text}");
        assert!(!stored.verify(b"password:1"), "{text}");
        if scheme != Scheme::Plain {
            assert!(
                text.starts_with(&format!("{{{}}}", scheme.name())),
                "{text}"
            );
        }
    }
}

#[test]
fn hash_password_salts_are_fresh() {
    for scheme in Scheme::ALL {
        let salted = !matches!(
            scheme,
            Scheme::Plain | Scheme::PlainMd5 | Scheme::Sha1 | Scheme::Sha256 | Scheme::Sha512
        );
        let (a, b) = (hash_password(scheme, b"x"), hash_password(scheme, b"x"));
        assert_eq!(a != b, salted, "{scheme}: {a} / {b}");
    }
}

#[test]
fn hash_password_plain_stays_on_one_line() {
    assert_eq!(hash_password(Scheme::Plain, b"tanstaaf"), "{PLAIN}tanstaaf");
    for password in [&b"a:b"[..], b"a\nb", b"a\rb", b"a\0b", b"\xff\xfe"] {
        let text = hash_password(Scheme::Plain, password);
        assert!(text.starts_with("{PLAIN.B64}"), "{text}");
        assert_eq!(parse(&text).plaintext(), Some(password));
    }
}

#[test]
fn scheme_names_parse_case_insensitively() {
    for scheme in Scheme::ALL {
        assert_eq!(scheme.name().parse::<Scheme>().unwrap(), scheme);
        assert_eq!(
            scheme.name().to_lowercase().parse::<Scheme>().unwrap(),
            scheme
        );
        assert_eq!(scheme.to_string(), scheme.name());
    }
    let aliases = [
        ("cleartext", Scheme::Plain),
        ("CLEAR", Scheme::Plain),
        ("LDAP-MD5", Scheme::PlainMd5),
        ("SHA", Scheme::Sha1),
        ("md5", Scheme::Md5Crypt),
        ("Sha512-Crypt", Scheme::Sha512Crypt),
    ];
    for (name, scheme) in aliases {
        assert_eq!(name.parse::<Scheme>().unwrap(), scheme, "{name}");
    }
    for name in ["CRYPT", "SHA256.HEX", "CRAM-MD5", "", "DES-CRYPT"] {
        assert!(
            matches!(name.parse::<Scheme>(), Err(AuthError::UnknownScheme { .. })),
            "{name}"
        );
    }
}

#[test]
fn debug_redacts_the_password() {
    for (text, _) in DOVEADM {
        let shown = format!("{:?}", parse(text));
        assert!(shown.starts_with("StoredPassword { scheme: "), "{shown}");
        assert!(
            !shown.contains("correct") && !shown.contains('$') && !shown.contains('='),
            "{shown}"
        );
    }
}

#[test]
fn plaintext_only_for_plain() {
    for (text, scheme) in DOVEADM {
        let stored = parse(text);
        let want = (*scheme == Scheme::Plain).then_some(PASSWORD);
        assert_eq!(stored.plaintext(), want, "{text}");
    }
}

#[test]
fn cost_tells_work_factors_apart() {
    let default = parse(DOVEADM[18].0).cost();
    let cheap = parse(DOVEADM[19].0).cost();
    assert_eq!(parse(DOVEADM[18].0).scheme(), Scheme::Sha512Crypt);
    assert_ne!(default, cheap);
    assert_eq!(
        default,
        parse(&hash_password(Scheme::Sha512Crypt, b"x")).cost()
    );
    assert_eq!(parse(DOVEADM[6].0).cost(), parse(DOVEADM[7].0).cost());
}

#[test]
fn hex_helpers() {
    assert_eq!(hex_encode(&[0x00, 0xab, 0xff]), "00abff");
    assert_eq!(hex_decode("00ABff"), Some(vec![0x00, 0xab, 0xff]));
    assert_eq!(hex_decode("abc"), None);
    assert_eq!(hex_decode("zz"), None);
}

#[test]
fn scram_sha256_is_written_as_doveadm_writes_it() {
    let text = hash_password(Scheme::ScramSha256, PASSWORD);
    let body = text
        .strip_prefix("{SCRAM-SHA-256}")
        .unwrap_or_else(|| panic!("{text}"));
    let fields: Vec<&str> = body.split(',').collect();
    assert_eq!(fields.len(), 4, "{text}");
    assert_eq!(fields[0], "4096");
    assert_eq!(STANDARD.decode(fields[1]).unwrap().len(), 16);
    let stored = parse(&text);
    let keys = stored.scram_keys().expect("SCRAM keys");
    assert_eq!(keys.iterations, 4096);
    assert_eq!(stored.cost(), parse(DOVEADM[24].0).cost());
    assert_ne!(stored.cost(), parse(DOVEADM[25].0).cost());
    assert!(parse(DOVEADM[0].0).scram_keys().is_none());
}
