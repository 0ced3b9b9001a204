//! SQL and LDAP user databases end to end: real PostgreSQL, MariaDB and
//! slapd (tests/common/dbservers.rs), the real server binary, real POP3
//! logins. One database server of each kind is shared by the tests of this
//! binary (each test uses its own table or subtree); the outage tests start
//! their own, since they stop it.

#[macro_use]
mod common;
#[path = "common/dbservers.rs"]
#[allow(dead_code)]
mod dbservers;

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::{Engine, Opts, Server, Tree};
use dbservers::{DB_PASSWORD, LDAP_ADMIN, LDAP_BASE, Mariadb, Postgres, Slapd};
use shardpop::auth::{Scheme, hash_password};

const AUTH_FAILED: &str = "-ERR [AUTH] Authentication failed.";
const SYS_TEMP: &str = "-ERR [SYS/TEMP] Temporary server failure, try again later.";

/// Loopback is trusted so the many failed logins here add no penalty
/// (the outage tests set their own `[auth]`).
const AUTH_TRUSTED: &str = "[auth]\nfailure_delay_ms = 0\ntrusted_networks = [\"127.0.0.0/8\"]\n";

/// The reply to PASS after USER, on a fresh connection.
fn login(server: &Server, user: &str, password: &str) -> String {
    let mut client = server.connect();
    let reply = client.cmd(&format!("USER {user}"));
    assert_eq!(reply, "+OK", "USER {user}");
    let reply = client.cmd(&format!("PASS {password}"));
    if reply.starts_with("+OK") {
        assert!(client.cmd("QUIT").starts_with("+OK"));
    }
    reply
}

fn assert_login(server: &Server, user: &str, password: &str) {
    let reply = login(server, user, password);
    assert!(
        reply.starts_with("+OK"),
        "{user}: {reply}\n{}",
        server.log()
    );
}

fn assert_refused(server: &Server, user: &str, password: &str) {
    assert_eq!(login(server, user, password), AUTH_FAILED, "{user}");
}

/// A password hash as a database would hold it.
fn hash(scheme: Scheme, password: &str) -> String {
    hash_password(scheme, password.as_bytes())
}

/// Users and their stored passwords in several schemes, and the names
/// that would break a query built by pasting text. Every user's password
/// is `<name>-pw`.
fn users() -> Vec<(&'static str, String)> {
    let crypt = hash(Scheme::Sha512Crypt, "bob-pw");
    vec![
        ("alice", "{PLAIN}alice-pw".to_owned()),
        // A crypt string without a {SCHEME} prefix, as many databases hold.
        ("bob", crypt.trim_start_matches("{SHA512-CRYPT}").to_owned()),
        ("carol", hash(Scheme::Ssha256, "carol-pw")),
        ("dave", hash(Scheme::BlfCrypt, "dave-pw")),
        ("erin", hash(Scheme::ScramSha256, "erin-pw")),
        (
            "frank@example.com",
            hash(Scheme::Sha256Crypt, "frank@example.com-pw"),
        ),
        ("o'brien", "{PLAIN}o'brien-pw".to_owned()),
        ("back\\slash", "{PLAIN}back\\slash-pw".to_owned()),
        ("st*r", "{PLAIN}st*r-pw".to_owned()),
        ("pa)(ren", "{PLAIN}pa)(ren-pw".to_owned()),
        ("jos\u{e9}", "{PLAIN}jos\u{e9}-pw".to_owned()),
    ]
}

/// Logins no real user has: pasted into a query or filter they would
/// match someone.
const INJECTIONS: [&str; 6] = [
    "'OR'1'='1",
    "alice'--",
    "x'or''='",
    "*",
    "al*",
    "alice)(uid=*",
];

fn tree_for(users: &[(&str, String)]) -> Tree {
    let mut tree = Tree::new();
    for (name, _) in users {
        let maildir = tree.maildir(name);
        for sub in ["cur", "new", "tmp"] {
            std::fs::create_dir_all(maildir.join(sub)).unwrap();
        }
    }
    tree.users.clear();
    tree
}

/// Good, wrong and unknown logins for every user, the same reply for a
/// wrong password and an unknown user, and no injection gets in.
fn check_users(server: &Server, users: &[(&str, String)]) {
    for (name, _) in users {
        assert_login(server, name, &format!("{name}-pw"));
        assert_refused(server, name, "wrong");
        assert_refused(server, name, &format!("{name}-PW"));
    }
    assert_refused(server, "nobody", "alice-pw");
    for name in INJECTIONS {
        assert_refused(server, name, "alice-pw");
    }
    // An upper-case login is looked up lower-cased, as Dovecot's %Lu.
    assert_login(server, "ALICE", "alice-pw");
}

// ---- PostgreSQL ----------------------------------------------------------

/// The issue's smallest configuration, with the test database's port.
fn smallest_pgsql(pg: &Postgres) -> String {
    format!(
        "[passdb]\n\
         driver = \"pgsql\"\n\
         connect = \"{}\"\n\
         password_query = \"SELECT username AS user, password FROM users WHERE username = '%u'\"\n\
         \n\
         [userdb]\n\
         driver = \"static\"\n\
         \n\
         [mail]\n\
         location = \"maildir:/srv/mail/%u\"\n",
        pg.connect_string()
    )
}

fn pg_users_table() -> &'static Postgres {
    static LOADED: OnceLock<()> = OnceLock::new();
    let pg = Postgres::shared();
    LOADED.get_or_init(|| {
        let mut db = pg.client();
        db.batch_execute("CREATE TABLE users (username text PRIMARY KEY, password text)")
            .unwrap();
        for (name, stored) in users() {
            db.execute(
                "INSERT INTO users (username, password) VALUES ($1, $2)",
                &[&name, &stored],
            )
            .unwrap();
        }
    });
    pg
}

engine_test!(pgsql_smallest_config);
fn pgsql_smallest_config(engine: Engine) {
    let pg = pg_users_table();
    let users = users();
    let tree = tree_for(&users);
    let mut opts = Opts::new(engine);
    opts.toml = format!("{AUTH_TRUSTED}\n{}", smallest_pgsql(pg));
    let server = Server::start_with(&tree, opts);
    check_users(&server, &users);
    // The `user` column names the user: the mailbox is the database's name.
    assert_login(&server, "Jos\u{e9}", "jos\u{e9}-pw");
    // SASL SCRAM-SHA-256 from stored keys and from a {PLAIN} password; a
    // crypt hash cannot do SCRAM and fails like a wrong password.
    assert!(scram_login(&server, "erin", "erin-pw"));
    assert!(scram_login(&server, "alice", "alice-pw"));
    assert!(!scram_login(&server, "erin", "wrong"));
    assert!(!scram_login(&server, "bob", "bob-pw"));
    assert!(!scram_login(&server, "nobody", "x"));
}

engine_test!(pgsql_extras_userdb_and_cache);
fn pgsql_extras_userdb_and_cache(engine: Engine) {
    let pg = Postgres::shared();
    let table = format!("extras_{}", engine_name(engine));
    let mut db = pg.client();
    db.batch_execute(&format!(
        "CREATE TABLE {table} (name text PRIMARY KEY, pw text, blocked boolean, why text, \
         maildir text, open_door boolean)"
    ))
    .unwrap();
    let tree = Tree::new();
    let elsewhere = tree.root().join("elsewhere");
    for sub in ["cur", "new", "tmp"] {
        std::fs::create_dir_all(elsewhere.join(sub)).unwrap();
        std::fs::create_dir_all(tree.maildir("greta").join(sub)).unwrap();
        std::fs::create_dir_all(tree.maildir("hugo").join(sub)).unwrap();
        std::fs::create_dir_all(tree.maildir("ivan").join(sub)).unwrap();
    }
    std::fs::write(elsewhere.join("cur/1.M1.x:2,"), "Subject: hi\n\nbody\n").unwrap();
    let maildir = format!("maildir:{}", elsewhere.display());
    let insert = format!("INSERT INTO {table} VALUES ($1, $2, $3, $4, $5, $6)");
    // name, pw, blocked, why, maildir, open_door
    type Row<'a> = (
        &'a str,
        Option<&'a str>,
        bool,
        Option<&'a str>,
        Option<&'a str>,
        bool,
    );
    let rows: [Row<'_>; 3] = [
        (
            "greta",
            Some("greta-pw"),
            false,
            None,
            Some(maildir.as_str()),
            false,
        ),
        (
            "hugo",
            Some("hugo-pw"),
            true,
            Some("account suspended"),
            None,
            false,
        ),
        ("ivan", None, false, None, None, true),
    ];
    for (name, pw, blocked, why, mail, open) in &rows {
        db.execute(&insert, &[name, pw, blocked, why, mail, open])
            .unwrap();
    }
    let mut opts = Opts::new(engine);
    opts.toml = format!(
        "[auth]\nfailure_delay_ms = 0\ntrusted_networks = [\"127.0.0.0/8\"]\n\
         cache_size = 1000\ncache_ttl_ms = 2000\ncache_negative_ttl_ms = 2000\n\
         [passdb]\ndriver = \"pgsql\"\nconnect = \"{}\"\ndefault_pass_scheme = \"PLAIN\"\n\
         password_query = \"SELECT name AS user, pw AS password, blocked AS nologin, why AS reason, \
         open_door AS nopassword FROM {table} WHERE name = '%{{user}}'\"\n\
         [userdb]\ndriver = \"pgsql\"\n\
         user_query = \"SELECT maildir AS mail FROM {table} WHERE name = %u\"\n",
        pg.connect_string()
    );
    let server = Server::start_with(&tree, opts);
    // default_pass_scheme: the stored password has no prefix.
    assert_login(&server, "greta", "greta-pw");
    // The userdb's mail column is the mailbox.
    let mut c = server.connect();
    c.login("greta", "greta-pw");
    assert!(c.cmd("STAT").starts_with("+OK 1 "));
    c.cmd("QUIT");
    // nologin: the right password is refused all the same.
    assert_refused(&server, "hugo", "hugo-pw");
    // nopassword: any password.
    assert_login(&server, "ivan", "anything");

    // The cache: a changed password works at once (the mismatch is checked
    // against the database), the old one until the TTL.
    let update = format!("UPDATE {table} SET pw = $1 WHERE name = $2");
    db.execute(&update, &[&"greta-new", &"greta"]).unwrap();
    assert_login(&server, "greta", "greta-new");
    let deleted_at = Instant::now();
    db.execute(&format!("DELETE FROM {table} WHERE name = 'greta'"), &[])
        .unwrap();
    // Cached: still in for up to the TTL, then out.
    assert_login(&server, "greta", "greta-new");
    while deleted_at.elapsed() < Duration::from_millis(2100) {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_refused(&server, "greta", "greta-new");
    // A negative answer is cached too: a user added now waits for it.
    db.execute(
        &insert,
        &[
            &"greta",
            &Some("back"),
            &false,
            &None::<&str>,
            &Some(maildir.as_str()),
            &false,
        ],
    )
    .unwrap();
    assert_refused(&server, "greta", "back");
    std::thread::sleep(Duration::from_millis(2100));
    assert_login(&server, "greta", "back");
}

engine_test!(pgsql_outage_is_temporary_and_recovers);
fn pgsql_outage_is_temporary_and_recovers(engine: Engine) {
    let pg = Postgres::start();
    let mut db = pg.client();
    db.batch_execute(
        "CREATE TABLE users (username text PRIMARY KEY, password text); \
         INSERT INTO users VALUES ('alice', '{PLAIN}alice-pw'), ('bob', '{PLAIN}bob-pw');",
    )
    .unwrap();
    drop(db);
    let users = vec![("alice", String::new()), ("bob", String::new())];
    let tree = tree_for(&users);
    let mut opts = Opts::new(engine);
    // No trusted network, and a block after two failures: a database
    // outage must not count as failures.
    opts.toml = format!(
        "[auth]\nfailure_delay_ms = 0\npenalty_failures_before_block = 2\ncache_size = 0\n\n{}",
        smallest_pgsql(&pg)
    );
    let server = Server::start_with(&tree, opts);
    assert_login(&server, "alice", "alice-pw");
    assert!(scram_login(&server, "alice", "alice-pw"));
    pg.stop();
    for _ in 0..5 {
        assert_eq!(login(&server, "alice", "alice-pw"), SYS_TEMP);
        assert_eq!(login(&server, "bob", "wrong"), SYS_TEMP);
        // SASL SCRAM-SHA-256 too: its credentials lookup fails the same way.
        let mut c = server.connect();
        assert_eq!(
            c.cmd(&format!("AUTH SCRAM-SHA-256 {SCRAM_FIRST_ALICE}")),
            SYS_TEMP
        );
    }
    pg.resume();
    wait_login(&server, "alice", "alice-pw");
    assert_login(&server, "bob", "bob-pw");
    assert!(scram_login(&server, "alice", "alice-pw"));
    assert!(!scram_login(&server, "alice", "wrong"));
    let log = server.log();
    assert_eq!(
        log.matches("user database unavailable").count(),
        1,
        "one line per outage:\n{log}"
    );
    assert!(log.contains("user database is back"), "{log}");
    assert!(!log.contains("passdb lookup failed"), "{log}");
}

/// `n,,n=alice,r=abcdefghijklmnop`: a SCRAM client-first message.
const SCRAM_FIRST_ALICE: &str = "biwsbj1hbGljZSxyPWFiY2RlZmdoaWprbG1ub3A=";

/// A whole SCRAM-SHA-256 login with tests/clients/scram_login.py.
fn scram_login(server: &Server, user: &str, password: &str) -> bool {
    let out = std::process::Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/clients/scram_login.py"
        ))
        .arg(server.addr.ip().to_string())
        .arg(server.addr.port().to_string())
        .args([user, password])
        .output()
        .unwrap();
    out.status.success()
}

/// Retries a login until it succeeds (the pool retries a database that
/// was down after its backoff, at most a few seconds).
fn wait_login(server: &Server, user: &str, password: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let reply = login(server, user, password);
        if reply.starts_with("+OK") {
            return;
        }
        assert_eq!(reply, SYS_TEMP);
        assert!(
            Instant::now() < deadline,
            "never came back:\n{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn engine_name(engine: Engine) -> &'static str {
    engine.arg()
}

// ---- MariaDB -------------------------------------------------------------

fn mysql_users_table() -> &'static Mariadb {
    static LOADED: OnceLock<()> = OnceLock::new();
    let my = Mariadb::shared();
    LOADED.get_or_init(|| {
        use mysql::prelude::Queryable;
        let mut db = my.client();
        db.query_drop(
            "CREATE TABLE users (username VARCHAR(255) PRIMARY KEY, password VARCHAR(255)) \
             CHARACTER SET utf8mb4 COLLATE utf8mb4_bin",
        )
        .unwrap();
        for (name, stored) in users() {
            db.exec_drop(
                "INSERT INTO users (username, password) VALUES (?, ?)",
                (name, stored),
            )
            .unwrap();
        }
    });
    my
}

fn smallest_mysql(my: &Mariadb) -> String {
    format!(
        "[passdb]\n\
         driver = \"mysql\"\n\
         connect = \"{}\"\n\
         password_query = \"SELECT username AS user, password FROM users WHERE username = '%u'\"\n\
         \n\
         [userdb]\n\
         driver = \"static\"\n\
         \n\
         [mail]\n\
         location = \"maildir:/srv/mail/%u\"\n",
        my.connect_string()
    )
}

engine_test!(mysql_smallest_config);
fn mysql_smallest_config(engine: Engine) {
    let my = mysql_users_table();
    let users = users();
    let tree = tree_for(&users);
    let mut opts = Opts::new(engine);
    opts.toml = format!("{AUTH_TRUSTED}\n{}", smallest_mysql(my));
    let server = Server::start_with(&tree, opts);
    check_users(&server, &users);
}

engine_test!(mysql_outage_is_temporary_and_recovers);
fn mysql_outage_is_temporary_and_recovers(engine: Engine) {
    use mysql::prelude::Queryable;
    let my = Mariadb::start();
    let mut db = my.client();
    db.query_drop(
        "CREATE TABLE users (username VARCHAR(255) PRIMARY KEY, password VARCHAR(255)); \
         INSERT INTO users VALUES ('alice', '{PLAIN}alice-pw');",
    )
    .unwrap();
    drop(db);
    let tree = tree_for(&[("alice", String::new())]);
    let mut opts = Opts::new(engine);
    opts.toml = format!(
        "[auth]\nfailure_delay_ms = 0\npenalty_failures_before_block = 2\n\n{}",
        smallest_mysql(&my)
    );
    let server = Server::start_with(&tree, opts);
    assert_login(&server, "alice", "alice-pw");
    my.stop();
    for _ in 0..4 {
        assert_eq!(login(&server, "alice", "wrong"), SYS_TEMP);
    }
    my.resume();
    wait_login(&server, "alice", "alice-pw");
    let log = server.log();
    assert_eq!(log.matches("user database unavailable").count(), 1, "{log}");
}

// ---- LDAP ----------------------------------------------------------------

/// Loads `users` into `ou=<ou>`, once per binary for each `ou`.
fn ldap_people(ou: &str, users: fn() -> Vec<(&'static str, String)>) -> &'static Slapd {
    static LOADED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let ldap = Slapd::shared();
    let mut loaded = LOADED.lock().unwrap();
    if !loaded.iter().any(|o| o == ou) {
        for (name, stored) in users() {
            ldap.add_user(ou, name, Some(&stored));
        }
        loaded.push(ou.to_owned());
    }
    ldap
}

/// [`users`] with passwords slapd itself can check on a bind: cleartext,
/// `{CRYPT}` and `{SSHA}`.
fn bind_users() -> Vec<(&'static str, String)> {
    users()
        .into_iter()
        .map(|(name, _)| {
            let password = format!("{name}-pw");
            let stored = match name {
                "bob" => hash(Scheme::Sha512Crypt, &password).replace("{SHA512-CRYPT}", "{CRYPT}"),
                "carol" => hash(Scheme::Ssha, &password),
                _ => password,
            };
            (name, stored)
        })
        .collect()
}

fn smallest_ldap(ldap: &Slapd, ou: &str, extra: &str) -> String {
    format!(
        "[passdb]\n\
         driver = \"ldap\"\n\
         uris = \"{}\"\n\
         base = \"ou={ou},{LDAP_BASE}\"\n\
         {extra}\n\
         [userdb]\n\
         driver = \"static\"\n\
         \n\
         [mail]\n\
         location = \"maildir:/srv/mail/%u\"\n",
        ldap.uri()
    )
}

engine_test!(ldap_password_attribute);
fn ldap_password_attribute(engine: Engine) {
    let ldap = ldap_people("attr", users);
    let users = users();
    let tree = tree_for(&users);
    let mut opts = Opts::new(engine);
    // userPassword is readable only by cn=reader: bind as it for lookups.
    let bind = format!("dn = \"cn=reader,{LDAP_BASE}\"\ndnpass = \"{DB_PASSWORD}\"\n");
    opts.toml = format!("{AUTH_TRUSTED}\n{}", smallest_ldap(ldap, "attr", &bind));
    let server = Server::start_with(&tree, opts);
    check_users(&server, &users);
}

engine_test!(ldap_anonymous_cannot_read_passwords);
fn ldap_anonymous_cannot_read_passwords(engine: Engine) {
    let ldap = ldap_people("attr", users);
    let tree = tree_for(&[("alice", String::new())]);
    let mut opts = Opts::new(engine);
    opts.toml = format!("{AUTH_TRUSTED}\n{}", smallest_ldap(ldap, "attr", ""));
    let server = Server::start_with(&tree, opts);
    // The entry is found but has no password the server may read.
    assert_refused(&server, "alice", "alice-pw");
}

engine_test!(ldap_auth_bind);
fn ldap_auth_bind(engine: Engine) {
    // Its own subtree per engine: this test changes a password.
    let ou = format!("bind-{}", engine_name(engine));
    let ldap = ldap_people(&ou, bind_users);
    let users = bind_users();
    let tree = tree_for(&users);
    let mut opts = Opts::new(engine);
    opts.toml = format!(
        "[auth]\nfailure_delay_ms = 0\ntrusted_networks = [\"127.0.0.0/8\"]\ncache_size = 100\n\n{}",
        smallest_ldap(ldap, &ou, "auth_bind = true\n")
    );
    let server = Server::start_with(&tree, opts);
    check_users(&server, &users);
    // An empty password is an anonymous bind, which LDAP accepts: refused.
    let mut c = server.connect();
    assert_eq!(c.cmd("USER alice"), "+OK");
    assert!(c.cmd("PASS ").starts_with("-ERR"));
    // A changed password: the new one binds at once even though the old
    // one is cached.
    ldap.set_password(&ou, "carol", "carol-new");
    assert_login(&server, "carol", "carol-new");
}

engine_test!(ldap_outage_is_temporary_and_recovers);
fn ldap_outage_is_temporary_and_recovers(engine: Engine) {
    let ldap = Slapd::start();
    ldap.add_user("people", "alice", Some("{PLAIN}alice-pw"));
    let tree = tree_for(&[("alice", String::new())]);
    let mut opts = Opts::new(engine);
    let bind = format!("dn = \"{LDAP_ADMIN}\"\ndnpass = \"{DB_PASSWORD}\"\n");
    opts.toml = format!(
        "[auth]\nfailure_delay_ms = 0\npenalty_failures_before_block = 2\ncache_size = 0\n\n{}",
        smallest_ldap(&ldap, "people", &bind)
    );
    let server = Server::start_with(&tree, opts);
    assert_login(&server, "alice", "alice-pw");
    ldap.stop();
    for _ in 0..4 {
        assert_eq!(login(&server, "alice", "alice-pw"), SYS_TEMP);
    }
    ldap.resume();
    wait_login(&server, "alice", "alice-pw");
    let log = server.log();
    assert_eq!(log.matches("user database unavailable").count(), 1, "{log}");
}

// ---- Failover and the LDAP userdb ------------------------------------------

engine_test!(failover_to_the_second_host);
/// 127.0.0.2 is loopback but nothing listens there: every first host below
/// refuses, and the second one answers.
fn failover_to_the_second_host(engine: Engine) {
    let users = vec![("alice", String::new())];
    let tree = tree_for(&users);
    let pg = pg_users_table();
    let my = mysql_users_table();
    let ldap = ldap_people("attr", self::users);
    let dead = dbservers::free_port();
    let configs = [
        format!(
            "[passdb]\ndriver = \"pgsql\"\nconnect = \"host=127.0.0.2,127.0.0.1 port={} dbname=mail \
             user=mail password={DB_PASSWORD}\"\n\
             password_query = \"SELECT username AS user, password FROM users WHERE username = '%u'\"\n",
            pg.port
        ),
        format!(
            "[passdb]\ndriver = \"mysql\"\nconnect = \"host=127.0.0.2 host=127.0.0.1 port={} dbname=mail \
             user=mail password={DB_PASSWORD}\"\n\
             password_query = \"SELECT username AS user, password FROM users WHERE username = '%u'\"\n",
            my.port
        ),
        format!(
            "[passdb]\ndriver = \"ldap\"\nuris = \"ldap://127.0.0.1:{dead} {}\"\n\
             base = \"ou=attr,{LDAP_BASE}\"\ndn = \"cn=reader,{LDAP_BASE}\"\ndnpass = \"{DB_PASSWORD}\"\n",
            ldap.uri()
        ),
    ];
    for config in configs {
        let mut opts = Opts::new(engine);
        opts.toml = format!("{AUTH_TRUSTED}\n{config}");
        let server = Server::start_with(&tree, opts);
        assert_login(&server, "alice", "alice-pw");
        assert_refused(&server, "alice", "wrong");
    }
}

engine_test!(ldap_userdb_gives_the_mail_location);
fn ldap_userdb_gives_the_mail_location(engine: Engine) {
    let ldap = Slapd::shared();
    let ou = format!("userdb-{}", engine_name(engine));
    ldap.add_user(&ou, "nina", Some("{PLAIN}nina-pw"));
    let tree = tree_for(&[("nina", String::new())]);
    let elsewhere = tree.root().join("elsewhere");
    for sub in ["cur", "new", "tmp"] {
        std::fs::create_dir_all(elsewhere.join(sub)).unwrap();
    }
    std::fs::write(elsewhere.join("cur/1.M1.x:2,"), "Subject: hi\n\nbody\n").unwrap();
    let dn = format!("uid=nina,ou={ou},{LDAP_BASE}");
    let location = format!("maildir:{}", elsewhere.display());
    ldap.admin()
        .modify(
            &dn,
            vec![ldap3::Mod::Add(
                "description",
                [location.as_str()].into_iter().collect(),
            )],
        )
        .unwrap()
        .success()
        .unwrap();
    let mut opts = Opts::new(engine);
    opts.toml = format!(
        "{AUTH_TRUSTED}\n[passdb]\ndriver = \"ldap\"\nuris = \"{}\"\nbase = \"ou={ou},{LDAP_BASE}\"\n\
         dn = \"{LDAP_ADMIN}\"\ndnpass = \"{DB_PASSWORD}\"\n\
         [userdb]\ndriver = \"ldap\"\nuser_attrs = \"description=mail\"\n",
        ldap.uri()
    );
    let server = Server::start_with(&tree, opts);
    let mut c = server.connect();
    c.login("nina", "nina-pw");
    assert!(c.cmd("STAT").starts_with("+OK 1 "));
    c.cmd("QUIT");
}

engine_test!(pgsql_slow_query_times_out_without_stalling);
fn pgsql_slow_query_times_out_without_stalling(engine: Engine) {
    let pg = pg_users_table();
    let tree = tree_for(&users());
    let mut opts = Opts::new(engine);
    // The lookup of `carol` takes 5 s; the query timeout is 1 s.
    opts.toml = format!(
        "{AUTH_TRUSTED}\n[passdb]\ndriver = \"pgsql\"\nconnect = \"{}\"\nquery_timeout_ms = 1000\n\
         password_query = \"SELECT username AS user, password FROM users, \
         pg_sleep(CASE WHEN $$carol$$ = '%u' THEN 5 ELSE 0 END) WHERE username = '%u'\"\n",
        pg.connect_string()
    );
    let server = Server::start_with(&tree, opts);
    let started = Instant::now();
    let slow = std::thread::spawn({
        let addr = server.addr;
        move || {
            let mut c = common::Client::connect(addr);
            assert_eq!(c.cmd("USER carol"), "+OK");
            c.cmd("PASS carol-pw")
        }
    });
    // Meanwhile the shards and the other worker keep serving.
    std::thread::sleep(Duration::from_millis(200));
    let mut other = server.connect();
    assert!(other.cmd("CAPA").starts_with("+OK"));
    assert_login(&server, "alice", "alice-pw");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(slow.join().unwrap(), SYS_TEMP);
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    assert_login(&server, "alice", "alice-pw");
    let log = server.log();
    assert!(log.contains("statement timeout"), "{log}");
}
