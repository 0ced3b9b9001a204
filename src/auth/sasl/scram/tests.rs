//! SCRAM-SHA-256 against RFC 7677's test vector, against a client written
//! here from RFC 5802 (ring primitives only, none of the server's helpers),
//! and against a passwd-file through `Passdb::scram_credentials`.

use std::num::NonZeroU32;
use std::path::PathBuf;

use ring::{digest, hmac, pbkdf2};

use super::*;
use crate::auth::Passdb;

/// RFC 7677 §3.
const RFC_CLIENT_FIRST: &str = "n,,n=user,r=rOprNGfwEbeRWgbNEkqO";
const RFC_SERVER_NONCE: &str = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
const RFC_SALT: &str = "W22ZaJ0SNY7soEsUEjb6gQ==";
const RFC_SERVER_FIRST: &str =
    "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
const RFC_CLIENT_FINAL: &str = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
const RFC_SERVER_FINAL: &str = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";
/// The RFC's keys in Dovecot's form (checked with `doveadm pw -t`).
const RFC_STORED: &str = "{SCRAM-SHA-256}4096,W22ZaJ0SNY7soEsUEjb6gQ==,WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=,wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU=";

/// `doveadm pw -s SCRAM-SHA-256 -p 'correct horse'` (Dovecot 2.3.19).
const DOVEADM_SCRAM: &str = "{SCRAM-SHA-256}4096,r7IzsmctMuAbbIBgGtAU4Q==,xFoBssg+XsvpVwTPefRxbd3b7Iom/xUtseaDqeEmnp8=,nZ0xP1p/G/ixggraNPcSOgKlEiqJXYiIVsdREcS5U3U=";
/// `doveadm pw -s SHA512-CRYPT -p 'correct horse'`.
const DOVEADM_CRYPT: &str = "{SHA512-CRYPT}$6$8g0WO6M1HHMV2gH3$VeZNPPksMG2ci1HJOZfc47.yYRipTs//zXOP4pVPmLu3/gkv3LPocTYwsyHI2uDA/mKkpAO6iOJYaPGid8v2u1";
const PASSWORD: &[u8] = b"correct horse";

const NONCE_BYTES: [u8; 18] = *b"0123456789abcdefgh";

fn users() -> String {
    format!(
        "user:{RFC_STORED}\n\
         scram:{DOVEADM_SCRAM}::::/home/scram::userdb_mail=maildir:~/Maildir\n\
         plain:{{PLAIN}}correct horse::::/home/plain\n\
         crypt:{DOVEADM_CRYPT}\n\
         digest:{{SHA256}}QQTTb42iwlQ0n4WDZ5Pr4CngyVcGOjTJHC6SAxh7VjE=\n\
         nologin:{{PLAIN}}correct horse::::::nologin\n\
         failed:{DOVEADM_SCRAM}::::::fail\n\
         anyone:::::::nopassword\n\
         locked\n"
    )
}

use crate::auth::test_fixture::Fixture;

fn entry(name: &str) -> UserEntry {
    UserEntry {
        user: name.to_owned(),
        home: None,
        extra: Vec::new(),
    }
}

/// A SCRAM-SHA-256 client, from RFC 5802 §3 and §7.
struct Client {
    gs2_header: String,
    client_first_bare: String,
    nonce: String,
    password: Vec<u8>,
}

/// The client's answer to a server-first message.
struct Answer {
    /// `c=...,r=...`
    without_proof: String,
    proof: Vec<u8>,
    /// What a server that knows the password signs.
    server_final: String,
}

impl Answer {
    fn message(&self) -> String {
        format!("{},p={}", self.without_proof, STANDARD.encode(&self.proof))
    }
}

impl Client {
    /// `escaped_user` goes on the wire as it is.
    fn new(escaped_user: &str, password: &[u8], nonce: &str) -> Client {
        Client {
            gs2_header: "n,,".to_owned(),
            client_first_bare: format!("n={escaped_user},r={nonce}"),
            nonce: nonce.to_owned(),
            password: password.to_vec(),
        }
    }

    fn first(&self) -> String {
        format!("{}{}", self.gs2_header, self.client_first_bare)
    }

    fn answer(&self, server_first: &[u8]) -> Answer {
        let server_first = std::str::from_utf8(server_first).unwrap();
        let fields: Vec<&str> = server_first.split(',').collect();
        assert_eq!(fields.len(), 3, "{server_first}");
        let nonce = fields[0].strip_prefix("r=").unwrap();
        assert!(nonce.starts_with(&self.nonce) && nonce.len() > self.nonce.len());
        let salt = STANDARD
            .decode(fields[1].strip_prefix("s=").unwrap())
            .unwrap();
        let iterations: u32 = fields[2].strip_prefix("i=").unwrap().parse().unwrap();
        let mut salted = [0u8; 32];
        pbkdf2::derive(
            pbkdf2::PBKDF2_HMAC_SHA256,
            NonZeroU32::new(iterations).unwrap(),
            &salt,
            &self.password,
            &mut salted,
        );
        let salted = hmac::Key::new(hmac::HMAC_SHA256, &salted);
        let client_key = hmac::sign(&salted, b"Client Key");
        let stored_key = digest::digest(&digest::SHA256, client_key.as_ref());
        let without_proof = format!(
            "c={},r={nonce}",
            STANDARD.encode(self.gs2_header.as_bytes())
        );
        let auth_message = format!("{},{server_first},{without_proof}", self.client_first_bare);
        let stored_key = hmac::Key::new(hmac::HMAC_SHA256, stored_key.as_ref());
        let client_signature = hmac::sign(&stored_key, auth_message.as_bytes());
        let proof = client_key
            .as_ref()
            .iter()
            .zip(client_signature.as_ref())
            .map(|(k, s)| k ^ s)
            .collect();
        let server_key = hmac::sign(&salted, b"Server Key");
        let server_key = hmac::Key::new(hmac::HMAC_SHA256, server_key.as_ref());
        let server_signature = hmac::sign(&server_key, auth_message.as_bytes());
        Answer {
            without_proof,
            proof,
            server_final: format!("v={}", STANDARD.encode(server_signature.as_ref())),
        }
    }
}

/// client-first, credentials from `passdb`, server-first: the exchange
/// waiting for client-final, with the server-first message.
fn start(passdb: &Passdb, client: &Client) -> (ScramServer, Vec<u8>) {
    let (mut server, user) = ScramServer::client_first(client.first().as_bytes()).unwrap();
    let credentials = passdb
        .scram_credentials(&user)
        .unwrap()
        .unwrap_or_else(|| panic!("{user} has no SCRAM credentials"));
    let server_first = server.server_first(credentials, &NONCE_BYTES);
    (server, server_first)
}

/// The whole exchange; the server's result.
fn exchange(passdb: &Passdb, user: &str, password: &[u8]) -> Result<ScramServer, ScramError> {
    let client = Client::new(user, password, "fyko+d2lbbFgONRv9qkxdawL");
    let (mut server, server_first) = start(passdb, &client);
    let answer = client.answer(&server_first);
    let server_final = server.client_final(answer.message().as_bytes())?;
    assert_eq!(
        String::from_utf8(server_final).unwrap(),
        answer.server_final
    );
    Ok(server)
}

#[test]
fn rfc7677_test_vector_end_to_end() {
    let (mut server, user) = ScramServer::client_first(RFC_CLIENT_FIRST.as_bytes()).unwrap();
    assert_eq!(user, "user");
    let salt = STANDARD.decode(RFC_SALT).unwrap();
    let keys = ScramKeys::derive(b"pencil", &salt, 4096);
    let credentials = ScramCredentials::new(keys, Some(entry("user")));
    let server_first = server.server_first_with_nonce(credentials, RFC_SERVER_NONCE);
    assert_eq!(String::from_utf8(server_first).unwrap(), RFC_SERVER_FIRST);
    assert!(server.user().is_none());
    let server_final = server.client_final(RFC_CLIENT_FINAL.as_bytes()).unwrap();
    assert_eq!(String::from_utf8(server_final).unwrap(), RFC_SERVER_FINAL);
    assert_eq!(server.user().unwrap().user, "user");
    assert_eq!(server.into_user().unwrap().user, "user");
}

#[test]
fn rfc7677_test_vector_through_the_passdb() {
    let fixture = Fixture::new(&users());
    let passdb = fixture.open();
    let (mut server, user) = ScramServer::client_first(RFC_CLIENT_FIRST.as_bytes()).unwrap();
    let credentials = passdb.scram_credentials(&user).unwrap().unwrap();
    let server_first = server.server_first_with_nonce(credentials, RFC_SERVER_NONCE);
    assert_eq!(String::from_utf8(server_first).unwrap(), RFC_SERVER_FIRST);
    let server_final = server.client_final(RFC_CLIENT_FINAL.as_bytes()).unwrap();
    assert_eq!(String::from_utf8(server_final).unwrap(), RFC_SERVER_FINAL);
}

#[test]
fn the_test_client_reproduces_the_rfc7677_messages() {
    let client = Client::new("user", b"pencil", "rOprNGfwEbeRWgbNEkqO");
    assert_eq!(client.first(), RFC_CLIENT_FIRST);
    let answer = client.answer(RFC_SERVER_FIRST.as_bytes());
    assert_eq!(answer.message(), RFC_CLIENT_FINAL);
    assert_eq!(answer.server_final, RFC_SERVER_FINAL);
}

#[test]
fn full_exchange_for_a_stored_scram_user() {
    let fixture = Fixture::new(&users());
    let server = exchange(&fixture.open(), "scram", PASSWORD).expect("scram logs in");
    let user = server.into_user().unwrap();
    assert_eq!(user.user, "scram");
    assert_eq!(user.home, Some(PathBuf::from("/home/scram")));
    assert_eq!(user.extra("userdb_mail"), Some("maildir:~/Maildir"));
}

#[test]
fn full_exchange_for_a_plain_user() {
    let fixture = Fixture::new(&users());
    let passdb = fixture.open();
    let server = exchange(&passdb, "plain", PASSWORD).expect("plain logs in");
    assert_eq!(server.user().unwrap().user, "plain");
    // Logins are lower-cased, as for USER/PASS.
    let server = exchange(&passdb, "PLAIN", PASSWORD).expect("PLAIN logs in");
    assert_eq!(server.user().unwrap().user, "plain");
}

#[test]
fn plain_users_get_a_stable_salt_per_secret() {
    let fixture = Fixture::new(&users());
    let salt_of = |passdb: &Passdb, user: &str| {
        let credentials = passdb.scram_credentials(user).unwrap().unwrap();
        assert_eq!(
            credentials.iterations(),
            crate::auth::SCRAM_PLAIN_ITERATIONS
        );
        credentials.salt().to_vec()
    };
    let random = fixture.open();
    assert_eq!(salt_of(&random, "plain"), salt_of(&random, "plain"));
    assert_eq!(salt_of(&random, "plain"), salt_of(&random, "Plain"));
    assert_eq!(salt_of(&random, "plain").len(), 16);
    assert_ne!(salt_of(&random, "plain"), salt_of(&random, "nologin"));
    let shared_a = fixture.open().with_scram_secret(b"sixteen+ byte secret");
    let shared_b = fixture.open().with_scram_secret(b"sixteen+ byte secret");
    let other = fixture.open().with_scram_secret(b"another secret, 16+");
    assert_eq!(salt_of(&shared_a, "plain"), salt_of(&shared_b, "plain"));
    assert_ne!(salt_of(&shared_a, "plain"), salt_of(&other, "plain"));
    assert_ne!(salt_of(&shared_a, "plain"), salt_of(&random, "plain"));
    // A stored salt does not depend on the secret.
    let stored = |passdb: &Passdb| passdb.scram_credentials("scram").unwrap().unwrap();
    assert_eq!(stored(&shared_a).salt(), stored(&other).salt());
}

#[test]
fn wrong_password_is_bad_proof() {
    let fixture = Fixture::new(&users());
    let passdb = fixture.open();
    for user in ["scram", "plain", "user"] {
        let client = Client::new(user, b"correct horsf", "abc");
        let (mut server, server_first) = start(&passdb, &client);
        let answer = client.answer(&server_first);
        assert_eq!(
            server.client_final(answer.message().as_bytes()),
            Err(ScramError::BadProof),
            "{user}"
        );
        assert!(server.user().is_none());
        // The exchange is over.
        assert_eq!(
            server.client_final(answer.message().as_bytes()),
            Err(ScramError::OutOfOrder)
        );
    }
}

#[test]
fn tampered_client_final_is_refused() {
    let fixture = Fixture::new(&users());
    let passdb = fixture.open();
    let client = Client::new("scram", PASSWORD, "clientnonce");
    type Tamper = fn(&Answer) -> String;
    let cases: [(&str, Tamper, ScramError); 6] = [
        (
            "server half of the nonce changed",
            |a| format!("{}X,p={}", a.without_proof, STANDARD.encode(&a.proof)),
            ScramError::NonceMismatch,
        ),
        (
            "client nonce only",
            |a| {
                let (c, _) = a.without_proof.split_once(",r=").unwrap();
                format!("{c},r=clientnonce,p={}", STANDARD.encode(&a.proof))
            },
            ScramError::NonceMismatch,
        ),
        (
            "one proof bit flipped",
            |a| {
                let mut proof = a.proof.clone();
                proof[31] ^= 1;
                format!("{},p={}", a.without_proof, STANDARD.encode(proof))
            },
            ScramError::BadProof,
        ),
        (
            "extension added after signing",
            |a| format!("{},x=1,p={}", a.without_proof, STANDARD.encode(&a.proof)),
            ScramError::BadProof,
        ),
        (
            "GS2 header y,, instead of n,,",
            |a| {
                let rest = a.without_proof.strip_prefix("c=biws").unwrap();
                format!("c=eSws{rest},p={}", STANDARD.encode(&a.proof))
            },
            ScramError::ChannelBindingMismatch,
        ),
        (
            "channel binding data appended",
            |a| {
                let rest = a.without_proof.strip_prefix("c=biws").unwrap();
                let cbind = STANDARD.encode(b"n,,tls-unique-data");
                format!("c={cbind}{rest},p={}", STANDARD.encode(&a.proof))
            },
            ScramError::ChannelBindingMismatch,
        ),
    ];
    for (what, tamper, want) in cases {
        let (mut server, server_first) = start(&passdb, &client);
        let answer = client.answer(&server_first);
        let message = tamper(&answer);
        assert_eq!(server.client_final(message.as_bytes()), Err(want), "{what}");
        assert!(server.user().is_none(), "{what}");
    }
    // And untampered, the same exchange succeeds.
    let (mut server, server_first) = start(&passdb, &client);
    let answer = client.answer(&server_first);
    assert!(server.client_final(answer.message().as_bytes()).is_ok());
}

#[test]
fn malformed_client_first_table() {
    let long_nonce = format!("n,,n=user,r={}", "x".repeat(MESSAGE_BYTES_MAX));
    let table: &[(&[u8], ScramError)] = &[
        (b"", ScramError::Malformed),
        (b"n", ScramError::Malformed),
        (b"n,", ScramError::Malformed),
        (b"n,,", ScramError::Malformed),
        (b"n,,n=user", ScramError::Malformed),
        (b"n,,n=user,", ScramError::Malformed),
        (b"n,,n=user,r=", ScramError::Malformed),
        (b"n,,n=user,nonce", ScramError::Malformed),
        (b"n,,r=abc,n=user", ScramError::Malformed),
        (b"n,,n=,r=abc", ScramError::Malformed),
        (b"n,,user,r=abc", ScramError::Malformed),
        (b"x,,n=user,r=abc", ScramError::Malformed),
        (b"nn,,n=user,r=abc", ScramError::Malformed),
        (b"N,,n=user,r=abc", ScramError::Malformed),
        (b"n,user,n=user,r=abc", ScramError::Malformed),
        (b"n,a=,n=user,r=abc", ScramError::Malformed),
        (b"n,,n=user,r=a b", ScramError::Malformed),
        (b"n,,n=user,r=ab\x7f", ScramError::Malformed),
        (b"n,,n=user,r=abc,", ScramError::Malformed),
        (b"n,,n=user,r=abc,1=x", ScramError::Malformed),
        (b"n,,n=user,r=abc,x=", ScramError::Malformed),
        (b"n,,n=user,r=abc,x", ScramError::Malformed),
        (b"n,,n=us\0er,r=abc", ScramError::Malformed),
        (b"n,,n=us\xffer,r=abc", ScramError::Malformed),
        (long_nonce.as_bytes(), ScramError::Malformed),
        (
            b"p=tls-unique,,n=user,r=abc",
            ScramError::ChannelBindingUnsupported,
        ),
        (
            b"p=tls-server-end-point,,n=user,r=abc",
            ScramError::ChannelBindingUnsupported,
        ),
        (b"n,,m=ext,n=user,r=abc", ScramError::ExtensionUnsupported),
        (b"n,,n=us=er,r=abc", ScramError::InvalidUsername),
        (b"n,,n=user=2,r=abc", ScramError::InvalidUsername),
        (b"n,,n=user=2c,r=abc", ScramError::InvalidUsername),
        (b"n,,n=us\ter,r=abc", ScramError::InvalidUsername),
        (
            "n,,n=us\u{85}er,r=abc".as_bytes(),
            ScramError::InvalidUsername,
        ),
        (b"n,a=bad=,n=user,r=abc", ScramError::InvalidUsername),
        (b"n,a=admin,n=user,r=abc", ScramError::AuthzidNotAllowed),
        (b"n,a=User,n=user,r=abc", ScramError::AuthzidNotAllowed),
    ];
    for (msg, want) in table {
        let got = ScramServer::client_first(msg).map(|(_, user)| user);
        assert_eq!(got, Err(*want), "{:?}", String::from_utf8_lossy(msg));
    }
}

#[test]
fn client_first_accepts_what_rfc5802_allows() {
    let table: &[(&str, &str)] = &[
        ("n,,n=user,r=abc", "user"),
        ("y,,n=user,r=abc", "user"),
        ("n,a=user,n=user,r=abc", "user"),
        ("n,,n=a=2Cb=3Dc,r=abc", "a,b=c"),
        ("n,a=a=2Cb,n=a=2Cb,r=abc", "a,b"),
        (
            "n,,n=alice@example.com,r=abc,x=ignored,y=also=ignored",
            "alice@example.com",
        ),
        ("n,,n=jos\u{e9},r=!\"#$%&'()*+-./~", "jos\u{e9}"),
    ];
    for (msg, want) in table {
        let (_, user) =
            ScramServer::client_first(msg.as_bytes()).unwrap_or_else(|e| panic!("{msg:?}: {e}"));
        assert_eq!(user, *want, "{msg:?}");
    }
}

#[test]
fn y_flag_and_authzid_carry_into_the_channel_binding() {
    let fixture = Fixture::new(&users());
    let passdb = fixture.open();
    for gs2_header in ["y,,", "n,a=scram,"] {
        let mut client = Client::new("scram", PASSWORD, "nonce");
        client.gs2_header = gs2_header.to_owned();
        let (mut server, server_first) = start(&passdb, &client);
        let answer = client.answer(&server_first);
        let server_final = server.client_final(answer.message().as_bytes());
        assert_eq!(
            server_final.map(String::from_utf8),
            Ok(Ok(answer.server_final)),
            "{gs2_header}"
        );
    }
}

#[test]
fn malformed_client_final_table() {
    let fixture = Fixture::new(&users());
    let passdb = fixture.open();
    let client = Client::new("scram", PASSWORD, "nonce");
    let (_, server_first) = start(&passdb, &client);
    let answer = client.answer(&server_first);
    let (c, r) = (
        "c=biws",
        answer.without_proof.strip_prefix("c=biws,").unwrap(),
    );
    let proof = STANDARD.encode(&answer.proof);
    let short = STANDARD.encode(&answer.proof[..31]);
    let table: Vec<String> = vec![
        String::new(),
        format!("{c},{r}"),
        format!("{c},{r},p="),
        format!("{c},{r},p=%%%"),
        format!("{c},{r},p={short}"),
        format!("{c},{r},p={}", &proof[..proof.len() - 1]),
        format!("{r},{c},p={proof}"),
        format!("c=,{r},p={proof}"),
        format!("c=biws!,{r},p={proof}"),
        format!("{c},p={proof}"),
        format!("{c},r=,p={proof}"),
        format!("{c},{r},1=x,p={proof}"),
        format!("{c},{r},p={proof},x=1"),
        format!("{c},{r},p={proof}\0"),
        format!("{c},{r} ,p={proof}"),
    ];
    for message in table {
        let (mut server, _) = start(&passdb, &client);
        let got = server.client_final(message.as_bytes());
        let want = if message.starts_with("c=,") {
            // An empty c= decodes, but is not the GS2 header.
            ScramError::ChannelBindingMismatch
        } else {
            ScramError::Malformed
        };
        assert_eq!(got, Err(want), "{message:?}");
        assert_eq!(
            server.client_final(answer.message().as_bytes()),
            Err(ScramError::OutOfOrder),
            "a failed exchange stays failed"
        );
    }
}

#[test]
fn unknown_user_gets_a_server_first_of_the_same_shape_then_fails() {
    let fixture = Fixture::new(&users());
    let passdb = fixture.open();
    let shape = |user: &str| {
        let client = Client::new(user, PASSWORD, "nonce");
        let (_, server_first) = start(&passdb, &client);
        let text = String::from_utf8(server_first).unwrap();
        let fields: Vec<String> = text.split(',').map(str::to_owned).collect();
        assert_eq!(fields.len(), 3, "{text}");
        assert_eq!(
            fields[0],
            format!("r=nonce{}", STANDARD.encode(NONCE_BYTES))
        );
        let salt = STANDARD
            .decode(fields[1].strip_prefix("s=").unwrap())
            .unwrap();
        (salt, fields[2].clone())
    };
    let (real_salt, real_iterations) = shape("scram");
    for unknown in [
        "mallory",
        "x@example.com",
        "../etc",
        ".hidden",
        &"a".repeat(300),
    ] {
        let (salt, iterations) = shape(unknown);
        assert_eq!(salt.len(), real_salt.len(), "{unknown}");
        assert_eq!(iterations, real_iterations, "{unknown}");
        assert_ne!(salt, real_salt, "{unknown}");
        // Asked again, the same salt, as for a real user.
        assert_eq!(shape(unknown).0, salt, "{unknown}");
        let server = exchange(&passdb, unknown, PASSWORD).err();
        assert_eq!(server, Some(ScramError::BadProof), "{unknown}");
    }
    // Users without a password look unknown too.
    assert_eq!(shape("locked").1, real_iterations);
    assert_eq!(
        exchange(&passdb, "locked", b"").err(),
        Some(ScramError::BadProof)
    );
}

#[test]
fn unknown_users_copy_the_most_common_iteration_count() {
    let scram = |name: &str| {
        let salt = format!("salt of {name}");
        let keys = ScramKeys::derive(PASSWORD, salt.as_bytes(), 10_000);
        format!("{name}:{{SCRAM-SHA-256}}{}\n", keys.encode())
    };
    let text = [scram("a"), scram("b"), "c:{PLAIN}x\n".to_owned()].concat();
    let fixture = Fixture::new(&text);
    let passdb = fixture.open();
    let unknown = passdb.scram_credentials("nobody").unwrap().unwrap();
    assert_eq!(unknown.iterations(), 10_000);
    assert_eq!(unknown.salt().len(), 16);
    // With most users on {PLAIN}, an unknown user costs (and shows) a derivation.
    let text = ["a:{PLAIN}x\n", "b:{PLAIN}y\n", &scram("c")].concat();
    let fixture = Fixture::new(&text);
    let passdb = fixture.open();
    let unknown = passdb.scram_credentials("nobody").unwrap().unwrap();
    assert_eq!(unknown.iterations(), crate::auth::SCRAM_PLAIN_ITERATIONS);
    assert_eq!(
        exchange(&passdb, "nobody", b"x").err(),
        Some(ScramError::BadProof)
    );
    assert!(exchange(&passdb, "c", PASSWORD).is_ok());
}

#[test]
fn nologin_and_fail_users_fail_with_the_right_password() {
    let fixture = Fixture::new(&users());
    let passdb = fixture.open();
    for user in ["nologin", "failed"] {
        assert_eq!(
            exchange(&passdb, user, PASSWORD).err(),
            Some(ScramError::BadProof),
            "{user}"
        );
    }
}

#[test]
fn users_whose_hash_cannot_do_scram_fail_like_a_wrong_password() {
    let fixture = Fixture::new(&users());
    let passdb = fixture.open();
    for user in ["crypt", "digest", "anyone"] {
        // Made-up keys: the exchange runs to the proof and fails there, so it
        // does not tell a client that the user exists.
        assert!(passdb.scram_credentials(user).unwrap().is_some(), "{user}");
        assert_eq!(
            exchange(&passdb, user, PASSWORD).err(),
            Some(ScramError::BadProof),
            "{user}"
        );
    }
    // The same users still log in with USER/PASS.
    assert!(passdb.verify_plain("crypt", PASSWORD).unwrap().is_some());
    assert!(passdb.verify_plain("scram", PASSWORD).unwrap().is_some());
    assert!(
        passdb
            .verify_plain("scram", b"correct horsf")
            .unwrap()
            .is_none()
    );
}

#[test]
fn steps_out_of_order() {
    let (mut server, _) = ScramServer::client_first(RFC_CLIENT_FIRST.as_bytes()).unwrap();
    assert_eq!(
        server.client_final(RFC_CLIENT_FINAL.as_bytes()),
        Err(ScramError::OutOfOrder)
    );
    assert!(server.into_user().is_none());
}

#[test]
#[cfg(debug_assertions)]
#[should_panic(expected = "server_first called out of order")]
fn server_first_twice_is_a_caller_bug() {
    let (mut server, _) = ScramServer::client_first(RFC_CLIENT_FIRST.as_bytes()).unwrap();
    let keys = || ScramKeys::derive(b"pencil", b"salt", 4096);
    server.server_first(ScramCredentials::new(keys(), None), &NONCE_BYTES);
    server.server_first(ScramCredentials::new(keys(), None), &NONCE_BYTES);
}

#[test]
#[should_panic(expected = "at least 16 random bytes")]
fn a_short_server_nonce_is_a_caller_bug() {
    let (mut server, _) = ScramServer::client_first(RFC_CLIENT_FIRST.as_bytes()).unwrap();
    let keys = ScramKeys::derive(b"pencil", b"salt", 4096);
    server.server_first(ScramCredentials::new(keys, None), &NONCE_BYTES[..15]);
}

#[test]
fn debug_shows_no_secrets() {
    let fixture = Fixture::new(&users());
    let passdb = fixture.open();
    let credentials = passdb.scram_credentials("plain").unwrap().unwrap();
    assert_eq!(
        format!("{credentials:?}"),
        "ScramCredentials { iterations: 4096, .. }"
    );
    let (mut server, _) = ScramServer::client_first(RFC_CLIENT_FIRST.as_bytes()).unwrap();
    assert_eq!(
        format!("{server:?}"),
        "ScramServer { step: \"ClientFirst\" }"
    );
    server.server_first(credentials, &NONCE_BYTES);
    assert_eq!(
        format!("{server:?}"),
        "ScramServer { step: \"ServerFirst\" }"
    );
    let _ = server.client_final(b"c=biws,r=x,p=AAAA");
    assert_eq!(format!("{server:?}"), "ScramServer { step: \"Failed\" }");
}
