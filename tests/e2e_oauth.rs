//! OAUTHBEARER and XOAUTH2 (RFC 7628) with real clients, Python's poplib
//! and curl's `--oauth2-bearer`, against the real binary on both engines:
//! good and bad tokens, the JWKS file rotated by SIGHUP, tokens never in
//! the log; UTF8 and LANG (RFC 6856) through poplib; `check-config` on the
//! `[auth.oauth]` section. Keys are made by `ring` at test time.

#[macro_use]
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _};
use serde_json::{Value, json};

use common::{Client, Engine, Opts, Server, Tree, python};

const USER: &str = "alice@example.net";
const ISSUER: &str = "https://id.example.test";
const AUDIENCE: &str = "pop3.example.test";

/// A signing key made now, and its public JWK.
enum Key {
    Ed(Ed25519KeyPair, &'static str),
    Ec(EcdsaKeyPair, &'static str),
}

impl Key {
    fn ed25519(kid: &'static str) -> Key {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        Key::Ed(Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap(), kid)
    }

    fn p256(kid: &'static str) -> Key {
        let alg = &signature::ECDSA_P256_SHA256_FIXED_SIGNING;
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, &rng).unwrap();
        Key::Ec(
            EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).unwrap(),
            kid,
        )
    }

    fn jwk(&self) -> Value {
        match self {
            Key::Ed(key, kid) => json!({"kty": "OKP", "crv": "Ed25519", "kid": kid,
                "x": URL_SAFE_NO_PAD.encode(key.public_key())}),
            Key::Ec(key, kid) => {
                let p = key.public_key().as_ref();
                json!({"kty": "EC", "crv": "P-256", "kid": kid,
                    "x": URL_SAFE_NO_PAD.encode(&p[1..33]), "y": URL_SAFE_NO_PAD.encode(&p[33..])})
            }
        }
    }

    /// A token for `user`, valid for an hour from now.
    fn token(&self, user: &str) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let (alg, kid) = match self {
            Key::Ed(_, kid) => ("EdDSA", kid),
            Key::Ec(_, kid) => ("ES256", kid),
        };
        let header = json!({"alg": alg, "kid": kid, "typ": "JWT"});
        let claims = json!({"iss": ISSUER, "aud": AUDIENCE, "sub": "u-1", "email": user,
            "iat": now, "nbf": now, "exp": now + 3600});
        let signed = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let sig = match self {
            Key::Ed(key, _) => key.sign(signed.as_bytes()).as_ref().to_vec(),
            Key::Ec(key, _) => key
                .sign(&SystemRandom::new(), signed.as_bytes())
                .unwrap()
                .as_ref()
                .to_vec(),
        };
        format!("{signed}.{}", URL_SAFE_NO_PAD.encode(sig))
    }
}

fn write_jwks(path: &Path, keys: &[&Key]) {
    let doc = json!({"keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>()});
    std::fs::write(path, doc.to_string()).unwrap();
}

fn oauth_toml(jwks: &Path) -> String {
    format!(
        "[auth]\nfailure_delay_ms = 0\n[auth.oauth]\njwks_file = {:?}\nissuer = {ISSUER:?}\n\
         audience = {AUDIENCE:?}\nusername_claim = \"email\"\n",
        jwks.to_str().unwrap()
    )
}

fn tree() -> Tree {
    let mut tree = Tree::new();
    tree.user(USER, "password-not-used");
    tree.deliver(USER, 1, b"Subject: hi\n\nhello\n");
    tree
}

fn start(tree: &Tree, engine: Engine, jwks: &Path) -> Server {
    Server::start_with(
        tree,
        Opts {
            toml: oauth_toml(jwks),
            // Debug level: the token must not leak even there.
            env: vec![("RUST_LOG", "debug")],
            ..Opts::new(engine)
        },
    )
}

/// poplib: AUTH <mech>, the response on its own line, then STAT; prints
/// `ok <messages>` or `refused <challenge JSON> <final -ERR>`.
fn poplib_auth(server: &Server, mechanism: &str, response: &[u8]) -> String {
    let script = format!(
        r#"
import base64, json, poplib
p = poplib.POP3({host:?}, {port})
assert p._shortcmd("AUTH {mechanism}").startswith(b"+")
resp = p._shortcmd({response:?})
if resp.startswith(b"+OK"):
    print("ok", p.stat()[0])
    p.quit()
else:
    challenge = json.loads(base64.b64decode(resp[2:]))
    try:
        p._shortcmd({dummy:?})
        print("no error")
    except poplib.error_proto as e:
        print("refused", challenge["status"], e.args[0].decode())
"#,
        host = server.addr.ip().to_string(),
        port = server.addr.port(),
        response = STANDARD.encode(response),
        dummy = if mechanism == "OAUTHBEARER" {
            "AQ=="
        } else {
            ""
        },
    );
    python(&script).trim().to_string()
}

/// An OAUTHBEARER client response; an empty `user` sends no authzid.
fn oauthbearer(user: &str, token: &str) -> Vec<u8> {
    let authzid = if user.is_empty() {
        String::new()
    } else {
        format!("a={user}")
    };
    format!("n,{authzid},\x01host=localhost\x01port=110\x01auth=Bearer {token}\x01\x01")
        .into_bytes()
}

fn xoauth2(user: &str, token: &str) -> Vec<u8> {
    format!("user={user}\x01auth=Bearer {token}\x01\x01").into_bytes()
}

/// curl's pop3 LIST with a bearer token; `None` when curl failed.
fn curl(server: &Server, token: &str, mechanism: &str) -> Option<String> {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "20"])
        .arg(format!("pop3://{}/", server.addr))
        .args(["--user", &format!("{USER}:")])
        .args(["--oauth2-bearer", token])
        .args(["--login-options", &format!("AUTH={mechanism}")])
        .output()
        .expect("curl must be installed");
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn wait_for(server: &Server, needle: &str, nth: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.log().matches(needle).count() < nth {
        assert!(
            Instant::now() < deadline,
            "no {needle:?} #{nth} in\n{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn assert_no_token_in_log(server: &Server, tokens: &[&str]) {
    let log = server.log();
    for token in tokens {
        // Any of the three parts would leak the token (the signature most).
        for part in token.split('.') {
            assert!(!log.contains(part), "token part in the log:\n{log}");
        }
        let b64 = STANDARD.encode(oauthbearer(USER, token));
        assert!(!log.contains(&b64[..40]), "a SASL response in the log");
    }
}

engine_test!(oauth_logins_with_poplib_and_curl);
fn oauth_logins_with_poplib_and_curl(engine: Engine) {
    let tree = tree();
    let jwks: PathBuf = tree.root().join("jwks.json");
    let key = Key::ed25519("k1");
    write_jwks(&jwks, &[&key]);
    let server = start(&tree, engine, &jwks);

    let mut c = Client::connect(server.addr);
    c.send(b"CAPA\r\n");
    let (capa, _) = c.multiline();
    let capa = String::from_utf8(capa).unwrap();
    assert!(
        capa.contains("SASL PLAIN SCRAM-SHA-256 OAUTHBEARER XOAUTH2\r\n"),
        "{capa}"
    );

    let good = key.token(USER);
    let stranger = Key::ed25519("k1").token(USER);
    let other_user = key.token("bob@example.net");
    // poplib, both mechanisms; the authzid may be left out.
    assert_eq!(
        poplib_auth(&server, "OAUTHBEARER", &oauthbearer(USER, &good)),
        "ok 1"
    );
    assert_eq!(
        poplib_auth(&server, "OAUTHBEARER", &oauthbearer("", &good)),
        "ok 1"
    );
    assert_eq!(
        poplib_auth(&server, "XOAUTH2", &xoauth2(USER, &good)),
        "ok 1"
    );
    // Refused: a key not in the JWKS, an authzid that is not the token's
    // user, a user the passdb does not know.
    let refused = "refused invalid_token -ERR [AUTH] Authentication failed.";
    assert_eq!(
        poplib_auth(&server, "OAUTHBEARER", &oauthbearer(USER, &stranger)),
        refused
    );
    assert_eq!(
        poplib_auth(
            &server,
            "OAUTHBEARER",
            &oauthbearer("bob@example.net", &good)
        ),
        refused
    );
    assert_eq!(
        poplib_auth(&server, "OAUTHBEARER", &oauthbearer("", &other_user)),
        refused
    );
    assert_eq!(
        poplib_auth(&server, "XOAUTH2", &xoauth2(USER, &stranger)),
        "refused 401 -ERR [AUTH] Authentication failed."
    );

    // curl --oauth2-bearer, both mechanisms.
    for mechanism in ["OAUTHBEARER", "XOAUTH2"] {
        let list = curl(&server, &good, mechanism)
            .unwrap_or_else(|| panic!("curl {mechanism} failed; log:\n{}", server.log()));
        assert!(list.starts_with("1 "), "{list}");
        assert!(curl(&server, &stranger, mechanism).is_none(), "{mechanism}");
    }

    // A token for a user the passdb lacks is refused by the lookup, not logged here.
    wait_for(&server, "OAuth token refused", 5);
    assert!(server.log().contains(&format!("pop3 login: user=<{USER}>")));
    assert_no_token_in_log(&server, &[&good, &stranger, &other_user]);
}

engine_test!(jwks_rotation_by_sighup);
fn jwks_rotation_by_sighup(engine: Engine) {
    let tree = tree();
    let jwks = tree.root().join("jwks.json");
    let (old, new) = (Key::ed25519("2025"), Key::p256("2026"));
    write_jwks(&jwks, &[&old]);
    let server = start(&tree, engine, &jwks);
    let (old_token, new_token) = (old.token(USER), new.token(USER));
    let login = |token: &str| poplib_auth(&server, "XOAUTH2", &xoauth2(USER, token));
    assert_eq!(login(&old_token), "ok 1");
    assert!(login(&new_token).starts_with("refused 401"));

    // The provider rotates: only the new key is published.
    write_jwks(&jwks, &[&new]);
    server.signal(libc::SIGHUP);
    wait_for(&server, "SIGHUP: configuration reloaded", 1);
    assert_eq!(login(&new_token), "ok 1");
    assert!(login(&old_token).starts_with("refused 401"));

    // A broken file: the reload is refused and the keys in use stay.
    std::fs::write(&jwks, "{\"keys\": [{\"kty\": \"OKP\"").unwrap();
    server.signal(libc::SIGHUP);
    wait_for(
        &server,
        "SIGHUP: configuration refused, the running one stays",
        1,
    );
    assert!(server.log().contains("jwks.json"), "{}", server.log());
    assert_eq!(login(&new_token), "ok 1");
    assert_no_token_in_log(&server, &[&old_token, &new_token]);
}

engine_test!(utf8_and_lang_with_poplib);
fn utf8_and_lang_with_poplib(engine: Engine) {
    let mut tree = Tree::new();
    tree.user("j\u{f6}rg", "p\u{e4}ssw\u{f6}rd");
    tree.deliver("j\u{f6}rg", 1, b"Subject: hi\n\nhello\n");
    let server = Server::start(&tree, engine);
    let script = format!(
        r#"
import poplib
p = poplib.POP3({host:?}, {port})
capa = p.capa()
print("capa", capa.get("UTF8"), "LANG" in capa)
print(p.utf8().decode())
resp, langs, _ = p._longcmd("LANG")
print("langs", [l.decode() for l in langs])
print(p._shortcmd("LANG *").decode())
print(p._shortcmd("LANG en-US").decode())
try:
    p._shortcmd("LANG fr")
except poplib.error_proto as e:
    print(e.args[0].decode())
p.user("j\u00f6rg")
# The password decomposed (NFD): SASLprep makes it the stored form.
p.pass_("pa\u0308sswo\u0308rd")
print("stat", p.stat()[0])
try:
    p._shortcmd("UTF8")
except poplib.error_proto as e:
    print("after login:", e.args[0].decode())
p.quit()
"#,
        host = server.addr.ip().to_string(),
        port = server.addr.port()
    );
    let out = python(&script);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines,
        [
            "capa ['USER'] True",
            "+OK UTF8 enabled.",
            "langs ['en English']",
            "+OK en Language is English.",
            "+OK en Language is English.",
            "-ERR en Unknown language; only en is available.",
            "stat 1",
            "after login: -ERR Command not valid in this state.",
        ],
        "{out}\n{}",
        server.log()
    );
}

#[test]
fn check_config_loads_the_jwks() {
    let tree = tree();
    let jwks = tree.root().join("jwks.json");
    let config = tree.root().join("shardpop.toml");
    let run = || {
        Command::new(env!("CARGO_BIN_EXE_shardpop"))
            .args(["check-config", "--listen", "127.0.0.1:1110"])
            .arg("--passwd-file")
            .arg(tree.passwd())
            .arg("--mail-location")
            .arg(tree.location())
            .arg("-c")
            .arg(&config)
            .output()
            .unwrap()
    };
    std::fs::write(&config, oauth_toml(&jwks)).unwrap();
    write_jwks(&jwks, &[&Key::ed25519("k")]);
    let out = run();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("[auth.oauth]") && stdout.contains("username_claim = \"email\""));

    // No usable key, a missing file, an empty issuer: refused, with the cause.
    std::fs::write(&jwks, r#"{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}"#).unwrap();
    let err = String::from_utf8_lossy(&run().stderr).into_owned();
    assert!(err.contains("no RS256"), "{err}");
    std::fs::remove_file(&jwks).unwrap();
    assert!(!run().status.success());
    write_jwks(&jwks, &[&Key::ed25519("k")]);
    std::fs::write(&config, oauth_toml(&jwks).replace(ISSUER, "")).unwrap();
    let err = String::from_utf8_lossy(&run().stderr).into_owned();
    assert!(err.contains("auth.oauth.issuer"), "{err}");
}
