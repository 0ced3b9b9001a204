use std::io::Write;

use super::*;
use crate::auth::Scheme;

/// `doveadm pw -s SHA512-CRYPT -r 1000 -p secret` and `-p other`.
const CRYPT_SECRET: &str = "{SHA512-CRYPT}$6$rounds=1000$MiZ9Sgv9Bp7jMSBm$k5d.Ag/wuuqMqRnJ.LQG7Sc6Q.jC4nFL7zYCoQItQPUXJbHswhC3NpZS6mVaXsHYnTBCU4lQ/6KSIzMGRv9Lm.";
const CRYPT_OTHER: &str = "{SHA512-CRYPT}$6$rounds=1000$1BNxQ.9vL6RARy/w$kZIofWjApB6wWvqDHHxHT.q4vfG2b3PnkNnhRTpRdQ7l.dU3AxYkWDssr6Fp8Q9es8M/MRdfUY4ZjpEm5OXGu.";
/// `doveadm pw -s SHA512-CRYPT -p 'correct horse'` (5000 rounds).
const CRYPT_DEFAULT_ROUNDS: &str = "{SHA512-CRYPT}$6$8g0WO6M1HHMV2gH3$VeZNPPksMG2ci1HJOZfc47.yYRipTs//zXOP4pVPmLu3/gkv3LPocTYwsyHI2uDA/mKkpAO6iOJYaPGid8v2u1";
/// `doveadm pw -s SSHA256 -p secret`.
const SSHA256_SECRET: &str = "{SSHA256}q4xGlg00t2xe4MFDpLhKIjS1QRFw8Ipe38NxKXz85G7MjHVG";

use crate::auth::test_fixture::Fixture;

fn users() -> String {
    format!(
        "# test users\n\
         alice:{CRYPT_SECRET}:1000:1000::/home/alice::userdb_mail=maildir:~/Maildir userdb_quota_rule=*:storage=1G\n\
         bob:{CRYPT_OTHER}\n\
         dave:{CRYPT_SECRET}\n\
         erin:{CRYPT_OTHER}\n\
         carol@example.com:{SSHA256_SECRET}::::/var/vmail/example.com/carol::userdb_mail=maildir:/var/vmail/%d/%n\n\
         plain:{{PLAIN}}tanstaaf\n\
         nologin:{{PLAIN}}secret::::::nologin reason=moved\n\
         failed:{{PLAIN}}secret::::::fail\n\
         anyone:::::::nopassword\n\
         locked\n\
         empty:\n"
    )
}

#[test]
fn passdb_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<FileDb>();
    assert_send_sync::<Arc<FileDb>>();
}

#[test]
fn open_missing_file_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("absent");
    match FileDb::open(&path) {
        Err(AuthError::Io { path: p, source }) => {
            assert_eq!(p, path);
            assert_eq!(source.kind(), io::ErrorKind::NotFound);
        }
        other => panic!("expected Io error, got {other:?}"),
    }
}

#[test]
fn open_directory_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    assert!(matches!(
        FileDb::open(dir.path()),
        Err(AuthError::Io { .. })
    ));
}

#[test]
fn open_too_large_file_is_refused_without_reading_it() {
    let fixture = Fixture::new("");
    File::options()
        .write(true)
        .open(&fixture.path)
        .unwrap()
        .set_len(PASSWD_FILE_BYTES_MAX + 1)
        .unwrap();
    match FileDb::open(&fixture.path) {
        Err(AuthError::TooLarge { bytes, .. }) => assert_eq!(bytes, PASSWD_FILE_BYTES_MAX + 1),
        other => panic!("expected TooLarge, got {other:?}"),
    }
}

#[test]
fn good_password_gives_the_user() {
    let fixture = Fixture::new(&users());
    let passdb = fixture.open();
    let alice = passdb
        .verify_plain("alice", b"secret")
        .unwrap()
        .expect("alice logs in");
    assert_eq!(alice.user, "alice");
    assert_eq!(alice.home, Some(PathBuf::from("/home/alice")));
    assert_eq!(alice.extra("userdb_mail"), Some("maildir:~/Maildir"));
    assert_eq!(alice.extra("userdb_quota_rule"), Some("*:storage=1G"));
    let carol = passdb
        .verify_plain("carol@example.com", b"secret")
        .unwrap()
        .expect("carol");
    assert_eq!(
        carol.extra("userdb_mail"),
        Some("maildir:/var/vmail/example.com/carol")
    );
    assert!(passdb.verify_plain("bob", b"other").unwrap().is_some());
    assert!(passdb.verify_plain("plain", b"tanstaaf").unwrap().is_some());
}

#[test]
fn logins_are_lower_cased() {
    let fixture = Fixture::new(&users());
    let passdb = fixture.open();
    let carol = passdb
        .verify_plain("Carol@Example.COM", b"secret")
        .unwrap()
        .expect("carol");
    assert_eq!(carol.user, "carol@example.com");
}

#[test]
fn unknown_user_and_wrong_password_look_the_same() {
    let fixture = Fixture::new(&users());
    let passdb = fixture.open_file();
    let wrong = passdb.verify_plain("alice", b"wrong").unwrap();
    let unknown = passdb.verify_plain("mallory", b"wrong").unwrap();
    let unknown_right = passdb.verify_plain("mallory", b"secret").unwrap();
    assert!(wrong.is_none() && unknown.is_none() && unknown_right.is_none());
    // The miss is paid for with a dummy of the cost most users have.
    let table = passdb.table().unwrap();
    let majority = StoredPassword::parse(CRYPT_SECRET).unwrap().cost();
    assert_eq!(table.dummy.cost(), majority);
}

#[test]
fn refused_users_get_nothing() {
    let fixture = Fixture::new(&users());
    let passdb = fixture.open();
    let table = [
        ("nologin", &b"secret"[..]),
        ("failed", b"secret"),
        ("locked", b""),
        ("locked", b"x"),
        ("empty", b""),
        ("../alice", b"secret"),
        (".alice", b"secret"),
        ("alice ", b"secret"),
        ("", b"secret"),
        ("alice\n", b"secret"),
    ];
    for (user, password) in table {
        assert!(
            passdb.verify_plain(user, password).unwrap().is_none(),
            "{user:?}"
        );
    }
}

#[test]
fn nopassword_accepts_anything() {
    let fixture = Fixture::new(&users());
    let passdb = fixture.open();
    assert!(
        passdb
            .verify_plain("anyone", b"whatever")
            .unwrap()
            .is_some()
    );
    assert!(passdb.verify_plain("anyone", b"").unwrap().is_some());
}

#[test]
fn overlong_passwords_are_refused_unhashed() {
    let long = "x".repeat(PASSWORD_BYTES_MAX + 1);
    let fixture = Fixture::new(&format!(
        "long:{{PLAIN}}{long}\nok:{{PLAIN}}{}\n",
        &long[1..]
    ));
    let passdb = fixture.open();
    assert!(
        passdb
            .verify_plain("long", long.as_bytes())
            .unwrap()
            .is_none()
    );
    assert!(
        passdb
            .verify_plain("ok", &long.as_bytes()[1..])
            .unwrap()
            .is_some()
    );
}

#[test]
fn apop_rfc1939_example() {
    let fixture = Fixture::new(&users());
    let passdb = fixture.open();
    let challenge = b"<1896.697170952@dbc.mtview.ca.us>";
    let digest = b"c4c9334bac560ecc979e58001b3e22fb";
    let user = passdb
        .verify_apop("plain", challenge, digest)
        .unwrap()
        .expect("APOP login");
    assert_eq!(user.user, "plain");
    assert!(
        passdb
            .verify_apop("PLAIN", challenge, digest)
            .unwrap()
            .is_some()
    );
    assert!(
        passdb
            .verify_apop("plain", b"<other@x>", digest)
            .unwrap()
            .is_none()
    );
    assert!(
        passdb
            .verify_apop("plain", challenge, b"c4c9334bac560ecc979e58001b3e22fc")
            .unwrap()
            .is_none()
    );
    assert!(
        passdb
            .verify_apop("plain", challenge, b"not hex")
            .unwrap()
            .is_none()
    );
    assert!(passdb.verify_apop("plain", b"", digest).unwrap().is_none());
    assert!(
        passdb
            .verify_apop("mallory", challenge, digest)
            .unwrap()
            .is_none()
    );
}

#[test]
fn apop_needs_a_plaintext_password() {
    let fixture = Fixture::new(&users());
    let passdb = fixture.open();
    let challenge = b"<1.2@host>";
    let digest_of = |password: &[u8]| {
        crate::auth::scheme::hex_encode(&crate::auth::scheme::md5(&[challenge, password]))
    };
    // Right password, but only a hash is stored: APOP cannot check it.
    assert!(
        passdb
            .verify_apop("alice", challenge, digest_of(b"secret").as_bytes())
            .unwrap()
            .is_none()
    );
    assert!(
        passdb
            .verify_apop("anyone", challenge, digest_of(b"").as_bytes())
            .unwrap()
            .is_none()
    );
    assert!(
        passdb
            .verify_apop("nologin", challenge, digest_of(b"secret").as_bytes())
            .unwrap()
            .is_none()
    );
    assert!(
        passdb
            .verify_apop("failed", challenge, digest_of(b"secret").as_bytes())
            .unwrap()
            .is_none()
    );
    assert!(
        passdb
            .verify_apop("plain", challenge, digest_of(b"tanstaaf").as_bytes())
            .unwrap()
            .is_some()
    );
}

#[test]
fn has_plaintext_follows_the_file() {
    let fixture = Fixture::new(&users());
    let passdb = fixture.open();
    assert!(passdb.has_plaintext());
    fixture.replace(&format!("alice:{CRYPT_SECRET}\n"));
    assert!(passdb.verify_plain("alice", b"secret").unwrap().is_some());
    assert!(!passdb.has_plaintext());
    fixture.replace("p:{PLAIN.B64}cHc=\n");
    assert!(passdb.verify_plain("p", b"pw").unwrap().is_some());
    assert!(passdb.has_plaintext());
}

#[test]
fn reload_on_rename_and_on_rewrite() {
    let fixture = Fixture::new("alice:{PLAIN}one\n");
    let passdb = fixture.open();
    assert!(passdb.verify_plain("dave", b"two").unwrap().is_none());
    fixture.replace("alice:{PLAIN}one\ndave:{PLAIN}two\n");
    assert!(passdb.verify_plain("dave", b"two").unwrap().is_some());
    // Rewritten in place, same size: the mtime tells.
    let mut file = File::options()
        .write(true)
        .truncate(true)
        .open(&fixture.path)
        .unwrap();
    file.write_all(b"alice:{PLAIN}one\ndave:{PLAIN}TWO\n")
        .unwrap();
    file.set_modified(std::time::SystemTime::now() + Duration::from_secs(5))
        .unwrap();
    drop(file);
    assert!(passdb.verify_plain("dave", b"two").unwrap().is_none());
    assert!(passdb.verify_plain("dave", b"TWO").unwrap().is_some());
}

#[test]
fn reload_waits_for_the_check_interval() {
    let fixture = Fixture::new("alice:{PLAIN}one\n");
    let passdb = FileDb::open_with_interval(&fixture.path, Duration::from_secs(3600)).unwrap();
    fixture.replace("alice:{PLAIN}two\n");
    assert!(
        passdb.verify_plain("alice", b"one").unwrap().is_some(),
        "checked too early"
    );
    assert!(passdb.verify_plain("alice", b"two").unwrap().is_none());
}

#[test]
fn reload_skips_bad_lines_and_keeps_good_ones() {
    let fixture = Fixture::new("alice:{PLAIN}one\n");
    let passdb = fixture.open();
    fixture.replace("bad name:{PLAIN}x\nalice:{NOSUCH}one\nbob:{PLAIN}two\n");
    assert!(passdb.verify_plain("bob", b"two").unwrap().is_some());
    assert!(passdb.verify_plain("alice", b"one").unwrap().is_none());
}

#[test]
fn unreadable_file_after_startup_fails_then_recovers() {
    let fixture = Fixture::new("alice:{PLAIN}one\n");
    let passdb = fixture.open();
    fs::remove_file(&fixture.path).unwrap();
    for user in ["alice", "mallory"] {
        match passdb.verify_plain(user, b"one") {
            Err(AuthError::Io { source, .. }) => assert_eq!(source.kind(), io::ErrorKind::NotFound),
            other => panic!("expected Io error, got {other:?}"),
        }
    }
    assert!(passdb.has_plaintext(), "the last good table is kept");
    fixture.replace("alice:{PLAIN}one\n");
    assert!(passdb.verify_plain("alice", b"one").unwrap().is_some());
}

#[test]
fn lookups_from_many_threads_during_reloads() {
    let fixture = Fixture::new("alice:{PLAIN}one\n");
    let passdb = Arc::new(fixture.open());
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let passdb = Arc::clone(&passdb);
            std::thread::spawn(move || {
                for _ in 0..200 {
                    let user = passdb.verify_plain("alice", b"one").unwrap();
                    assert_eq!(user.map(|u| u.user).as_deref(), Some("alice"));
                }
            })
        })
        .collect();
    for round in 0..20 {
        fixture.replace(&format!("alice:{{PLAIN}}one\nu{round}:{{PLAIN}}x\n"));
    }
    for worker in workers {
        worker.join().unwrap();
    }
    assert!(passdb.verify_plain("u19", b"x").unwrap().is_some());
}

#[test]
fn dummy_is_the_most_common_cost_class() {
    let text =
        format!("a:{CRYPT_DEFAULT_ROUNDS}\nb:{CRYPT_SECRET}\nc:{CRYPT_OTHER}\nd:{{PLAIN}}x\n");
    let fixture = Fixture::new(&text);
    let passdb = fixture.open_file();
    let want = StoredPassword::parse(CRYPT_SECRET).unwrap().cost();
    assert_ne!(
        want,
        StoredPassword::parse(CRYPT_DEFAULT_ROUNDS).unwrap().cost()
    );
    assert_eq!(passdb.table().unwrap().dummy.cost(), want);
    // On a tie the earliest line wins, whatever the map's order.
    let fixture = Fixture::new(&format!("b:{{PLAIN}}x\na:{CRYPT_DEFAULT_ROUNDS}\n"));
    let passdb = fixture.open_file();
    assert_eq!(passdb.table().unwrap().dummy.scheme(), Scheme::Plain);
}

#[test]
fn dummy_without_any_password_is_sha512_crypt() {
    let fixture = Fixture::new("locked\nanyone:::::::nopassword\n");
    let passdb = fixture.open_file();
    let dummy = &passdb.table().unwrap().dummy;
    assert_eq!(dummy.scheme(), Scheme::Sha512Crypt);
    assert!(passdb.verify_plain("mallory", b"x").unwrap().is_none());
}

#[test]
fn debug_shows_no_secrets() {
    let fixture = Fixture::new(&users());
    let passdb = fixture.open();
    let shown = format!("{passdb:?}");
    assert!(shown.contains("users: 11"), "{shown}");
    assert!(
        !shown.contains("tanstaaf") && !shown.contains("$6$"),
        "{shown}"
    );
}

#[test]
fn a_shard_answers_only_one_digest_logins_and_answers_them_as_the_pool_does() {
    // Mostly one-digest schemes: unknown users are checked against one.
    let fixture = Fixture::new(&format!(
        "plain:{{PLAIN}}tanstaaf\ncarol:{SSHA256_SECRET}\nanne:{{PLAIN}}x\nalice:{CRYPT_SECRET}\n\
         nologin:{{PLAIN}}secret::::::nologin\n"
    ));
    let passdb = FileDb::open_with_interval(&fixture.path, Duration::from_secs(3600)).unwrap();
    for (user, password) in [
        ("plain", &b"tanstaaf"[..]),
        ("plain", b"wrong"),
        ("carol", b"secret"),
        ("carol", b"Secret"),
        ("nobody", b"x"),
        ("nologin", b"secret"),
        ("bad name", b"x"),
    ] {
        let now = passdb.verify_plain_now(user, password).expect(user);
        let pool = passdb.verify_plain(user, password).unwrap();
        assert_eq!(now.map(|e| e.user), pool.map(|e| e.user), "{user}");
    }
    assert!(
        passdb
            .verify_plain_now("plain", b"tanstaaf")
            .unwrap()
            .is_some()
    );
    // A work-factor hash is the pool's, right or wrong.
    assert!(passdb.verify_plain_now("alice", b"secret").is_none());
    assert!(passdb.verify_plain_now("alice", b"wrong").is_none());
}

#[test]
fn a_shard_leaves_logins_to_the_pool_when_unknown_users_cost_a_costly_hash() {
    // Mostly SHA512-CRYPT: the dummy for unknown names is one, so a name
    // answered at once would tell that it exists.
    let fixture = Fixture::new(&format!(
        "plain:{{PLAIN}}tanstaaf\nalice:{CRYPT_SECRET}\nbob:{CRYPT_OTHER}\n"
    ));
    let passdb = FileDb::open_with_interval(&fixture.path, Duration::from_secs(3600)).unwrap();
    assert!(passdb.verify_plain_now("plain", b"tanstaaf").is_none());
    assert!(passdb.verify_plain_now("nobody", b"x").is_none());
}

#[test]
fn a_shard_leaves_the_freshness_check_of_the_file_to_the_pool() {
    let fixture = Fixture::new("alice:{PLAIN}one\n");
    let passdb = FileDb::open_with_interval(&fixture.path, Duration::ZERO).unwrap();
    assert!(passdb.verify_plain_now("alice", b"one").is_none());
    fixture.replace("alice:{PLAIN}two\n");
    assert!(passdb.verify_plain("alice", b"two").unwrap().is_some());
}
