//! RFC 7628 OAUTHBEARER, XOAUTH2 and RFC 6856 UTF8 / LANG as in-memory
//! transcripts against `Session`, no socket.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use super::*;

struct Empty;

impl Maildrop for Empty {
    fn count(&self) -> usize {
        0
    }
    fn octets(&self, _: usize) -> u64 {
        0
    }
    fn uidl(&self, _: usize) -> &[u8] {
        b""
    }
}

fn offer(oauth: bool) -> Offer {
    Offer {
        plaintext_auth: true,
        stls: false,
        oauth,
    }
}

fn session(oauth: bool) -> Session {
    Session::new(Limits::default(), offer(oauth), None)
}

fn feed(s: &mut Session, input: &[u8]) -> (String, Option<Effect>) {
    let mut out = Vec::new();
    let step = s.handle_input(input, &mut out);
    assert_eq!(step.consumed, input.len(), "input left over");
    (String::from_utf8(out).unwrap(), step.effect)
}

fn say(s: &mut Session, input: &str) -> String {
    let (out, effect) = feed(s, input.as_bytes());
    assert!(effect.is_none(), "{effect:?} for {input:?}");
    out
}

fn complete(s: &mut Session, c: Completion) -> String {
    let mut out = Vec::new();
    assert!(s.complete(c, &mut out).is_none());
    String::from_utf8(out).unwrap()
}

fn oauthbearer(authzid: &str, token: &str) -> String {
    let a = if authzid.is_empty() {
        String::new()
    } else {
        format!("a={authzid}")
    };
    STANDARD.encode(format!(
        "n,{a},\x01host=pop.example.net\x01port=110\x01auth=Bearer {token}\x01\x01"
    ))
}

fn expect_bearer_login(effect: Option<Effect>, user: &str, token: &str) {
    match effect {
        Some(Effect::Login {
            user: u,
            credential: Credential::Bearer(t),
        }) => assert_eq!(
            (u.as_slice(), t.as_slice()),
            (user.as_bytes(), token.as_bytes())
        ),
        other => panic!("{other:?}"),
    }
}

#[test]
fn capa_lists_oauth_only_when_configured_and_only_before_login() {
    let mut s = session(false);
    let capa = say(&mut s, "CAPA\r\n");
    assert!(capa.contains("\r\nSASL PLAIN SCRAM-SHA-256\r\n"), "{capa}");
    assert!(capa.contains("\r\nUTF8 USER\r\n") && capa.contains("\r\nLANG\r\n"));
    let auth = say(&mut s, "AUTH\r\n");
    assert_eq!(auth, "+OK\r\nPLAIN\r\nSCRAM-SHA-256\r\n.\r\n");
    assert_eq!(
        say(&mut s, "AUTH OAUTHBEARER\r\n"),
        "-ERR Unsupported authentication mechanism.\r\n"
    );

    let mut s = session(true);
    let capa = say(&mut s, "CAPA\r\n");
    assert!(
        capa.contains("\r\nSASL PLAIN SCRAM-SHA-256 OAUTHBEARER XOAUTH2\r\n"),
        "{capa}"
    );
    assert_eq!(
        say(&mut s, "AUTH\r\n"),
        "+OK\r\nPLAIN\r\nSCRAM-SHA-256\r\nOAUTHBEARER\r\nXOAUTH2\r\n.\r\n"
    );
    let (_, effect) = feed(
        &mut s,
        format!("AUTH OAUTHBEARER {}\r\n", oauthbearer("", "t")).as_bytes(),
    );
    expect_bearer_login(effect, "", "t");
    assert_eq!(
        complete(&mut s, Completion::LoggedIn(Box::new(Empty))),
        "+OK Logged in.\r\n"
    );
    let capa = say(&mut s, "CAPA\r\n");
    assert!(!capa.contains("SASL") && !capa.contains("OAUTH"), "{capa}");
    assert!(capa.contains("\r\nUTF8\r\n") && capa.contains("\r\nLANG\r\n"));
}

#[test]
fn oauth_is_not_offered_where_plaintext_logins_are_not() {
    let mut s = Session::new(
        Limits::default(),
        Offer {
            plaintext_auth: false,
            stls: true,
            oauth: true,
        },
        None,
    );
    let capa = say(&mut s, "CAPA\r\n");
    assert!(capa.contains("\r\nSASL SCRAM-SHA-256\r\n") && capa.contains("\r\nUTF8\r\n"));
    for mech in ["OAUTHBEARER", "xoauth2"] {
        assert_eq!(
            say(&mut s, &format!("AUTH {mech}\r\n")),
            "-ERR [AUTH] Plaintext authentication disallowed on non-secure connections.\r\n"
        );
    }
}

#[test]
fn oauthbearer_success_with_a_continuation() {
    let mut s = session(true);
    assert_eq!(say(&mut s, "AUTH OAUTHBEARER\r\n"), "+ \r\n");
    let response = oauthbearer("alice@example.net", "eyJ.eyJ.sig");
    let (out, effect) = feed(&mut s, format!("{response}\r\n").as_bytes());
    assert_eq!(out, "");
    expect_bearer_login(effect, "alice@example.net", "eyJ.eyJ.sig");
    assert!(s.is_waiting());
    assert_eq!(
        complete(&mut s, Completion::LoggedIn(Box::new(Empty))),
        "+OK Logged in.\r\n"
    );
    assert!(s.is_authorized());
}

#[test]
fn a_refused_token_gets_the_error_challenge_then_err() {
    let cases = [
        (
            "OAUTHBEARER",
            oauthbearer("alice", "bad"),
            r#"{"status":"invalid_token","schemes":"bearer"}"#,
            "AQ==",
        ),
        (
            "XOAUTH2",
            STANDARD.encode("user=alice\x01auth=Bearer bad\x01\x01"),
            r#"{"status":"401","schemes":"bearer"}"#,
            "",
        ),
    ];
    for (mech, response, json, dummy) in cases {
        let mut s = session(true);
        let (_, effect) = feed(&mut s, format!("AUTH {mech} {response}\r\n").as_bytes());
        expect_bearer_login(effect, "alice", "bad");
        let challenge = complete(
            &mut s,
            Completion::LoginFailed(LoginFailure::BadCredentials),
        );
        let b64 = challenge
            .strip_prefix("+ ")
            .and_then(|c| c.strip_suffix("\r\n"))
            .unwrap_or_else(|| panic!("{challenge:?}"));
        assert_eq!(STANDARD.decode(b64).unwrap(), json.as_bytes(), "{mech}");
        assert!(!s.is_waiting());
        assert_eq!(
            say(&mut s, &format!("{dummy}\r\n")),
            "-ERR [AUTH] Authentication failed.\r\n"
        );
        // The exchange is over: the next line is a command again.
        assert!(say(&mut s, "CAPA\r\n").starts_with("+OK Capability list follows"));
    }
}

#[test]
fn malformed_responses_get_the_challenge_and_temporary_failures_do_not() {
    let mut s = session(true);
    let junk = STANDARD.encode("n,,\x01auth=Basic abc\x01\x01");
    let out = say(&mut s, &format!("AUTH OAUTHBEARER {junk}\r\n"));
    assert!(out.starts_with("+ eyJ"), "{out}");
    assert_eq!(
        say(&mut s, "*\r\n"),
        "-ERR [AUTH] Authentication failed.\r\n"
    );
    assert_eq!(
        say(&mut s, "AUTH XOAUTH2 !!!\r\n"),
        "-ERR Invalid base64 data.\r\n"
    );

    let (_, effect) = feed(
        &mut s,
        format!("AUTH OAUTHBEARER {}\r\n", oauthbearer("bob", "t")).as_bytes(),
    );
    expect_bearer_login(effect, "bob", "t");
    assert_eq!(
        complete(&mut s, Completion::LoginFailed(LoginFailure::Temporary)),
        "-ERR [SYS/TEMP] Temporary server failure, try again later.\r\n"
    );
    // Cancelling before the response.
    assert_eq!(say(&mut s, "AUTH XOAUTH2\r\n"), "+ \r\n");
    assert_eq!(say(&mut s, "*\r\n"), "-ERR Authentication cancelled.\r\n");
}

#[test]
fn responses_may_be_longer_than_a_command_line_but_are_bounded() {
    let mut s = session(true);
    let token = "x".repeat(2500);
    assert_eq!(say(&mut s, "AUTH OAUTHBEARER\r\n"), "+ \r\n");
    let (_, effect) = feed(
        &mut s,
        format!("{}\r\n", oauthbearer("", &token)).as_bytes(),
    );
    expect_bearer_login(effect, "", &token);

    let mut s = session(true);
    assert_eq!(say(&mut s, "AUTH OAUTHBEARER\r\n"), "+ \r\n");
    let huge = "A".repeat(Limits::default().sasl_line_bytes_max + 10);
    let out = say(&mut s, &huge);
    assert_eq!(out, "-ERR Line too long.\r\n");
    // The rest of the line is dropped, then commands work again.
    assert!(say(&mut s, "AAAA\r\nNOOP\r\n").ends_with("-ERR Command not valid in this state.\r\n"));
}

#[test]
fn bearer_credentials_are_redacted() {
    let c = Credential::Bearer(b"eyJsecret".to_vec());
    assert_eq!(format!("{c:?}"), "Bearer(<redacted>)");
}

#[test]
fn utf8_is_an_authorization_command() {
    let mut s = session(false);
    assert!(!s.is_utf8());
    assert_eq!(say(&mut s, "UTF8\r\n"), "+OK UTF8 enabled.\r\n");
    assert!(s.is_utf8());
    // UTF-8 names and passwords go to the passdb as sent (it prepares them).
    assert_eq!(say(&mut s, "USER j\u{f6}rg\r\n"), "+OK\r\n");
    let (_, effect) = feed(&mut s, "PASS p\u{e4}ss w\u{f6}rd\r\n".as_bytes());
    match effect {
        Some(Effect::Login {
            user,
            credential: Credential::Password(p),
        }) => {
            assert_eq!(user, "j\u{f6}rg".as_bytes());
            assert_eq!(p, "p\u{e4}ss w\u{f6}rd".as_bytes());
        }
        other => panic!("{other:?}"),
    }
    complete(&mut s, Completion::LoggedIn(Box::new(Empty)));
    assert_eq!(
        say(&mut s, "UTF8\r\n"),
        "-ERR Command not valid in this state.\r\n"
    );
}

#[test]
fn lang_in_both_states() {
    let table = [
        (
            "LANG\r\n",
            "+OK Language listing follows:\r\nen English\r\n.\r\n",
        ),
        ("LANG en\r\n", "+OK en Language is English.\r\n"),
        ("lang EN\r\n", "+OK en Language is English.\r\n"),
        ("LANG en-GB\r\n", "+OK en Language is English.\r\n"),
        ("LANG *\r\n", "+OK en Language is English.\r\n"),
        (
            "LANG fr\r\n",
            "-ERR en Unknown language; only en is available.\r\n",
        ),
        (
            "LANG eng\r\n",
            "-ERR en Unknown language; only en is available.\r\n",
        ),
    ];
    let mut s = session(false);
    for (input, want) in table {
        assert_eq!(say(&mut s, input), want, "{input:?}");
    }
    assert_eq!(say(&mut s, "USER a\r\n"), "+OK\r\n");
    let (_, effect) = feed(&mut s, b"PASS b\r\n");
    assert!(effect.is_some());
    complete(&mut s, Completion::LoggedIn(Box::new(Empty)));
    for (input, want) in table {
        assert_eq!(say(&mut s, input), want, "{input:?} after login");
    }
}
