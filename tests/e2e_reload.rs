//! SIGHUP reloads the whole configuration file for new connections and
//! logins, on both engines: limits, the passdb source, the log level; a
//! broken file changes nothing; restart-only settings are named; sessions
//! in progress keep going.

#[macro_use]
mod common;

use std::fs;

use common::{Engine, Opts, Server, Tree};

/// The server's config file with `body` (its first lines, as written by
/// the test harness, are kept).
fn rewrite(server: &Server, body: &str) {
    fs::write(server.config_path(), body).unwrap();
}

fn hup_and_wait(server: &Server, nth: usize, needle: &str) {
    server.signal(libc::SIGHUP);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while server.log().matches(needle).count() < nth {
        assert!(
            std::time::Instant::now() < deadline,
            "no {needle:?} #{nth} in\n{}",
            server.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

engine_test!(sighup_applies_limits_passdb_and_log_level_to_new_sessions_only);
fn sighup_applies_limits_passdb_and_log_level_to_new_sessions_only(engine: Engine) {
    let mut tree = Tree::new();
    tree.user("alice", "pw");
    tree.deliver("alice", 1, b"Subject: hi\n\nhello\n");
    let other = tree.root().join("other-users");
    fs::write(&other, "alice:{PLAIN}new:1000:1000::::\n").unwrap();
    let base = |passwd: &std::path::Path, extra: &str| {
        format!(
            "[passdb]\ndriver = \"passwd-file\"\nargs = \"{}\"\n[auth]\nfailure_delay_ms = 0\n[log]\nlevel = \"info\"\n{extra}",
            passwd.display()
        )
    };
    let server = Server::start_with(
        &tree,
        Opts {
            toml: base(&tree.passwd(), "[limits]\ncommands_before_login_max = 30\n"),
            ..Opts::new(engine)
        },
    );
    // A session that started before the reload.
    let mut early = server.connect();
    early.login("alice", "pw");
    let mut before = server.connect();

    // Fewer commands before login, another passwd-file, a quieter log, and
    // a queue size that needs a restart.
    rewrite(
        &server,
        &base(
            &other,
            "[limits]\ncommands_before_login_max = 2\nworker_queue_max = 7\n",
        )
        .replace("level = \"info\"", "level = \"warn\""),
    );
    hup_and_wait(&server, 1, "SIGHUP: configuration reloaded");
    assert!(
        server.log().contains(
            "SIGHUP: limits.worker_queue_max changed; it takes effect at the next restart"
        )
    );

    // The session in progress keeps going (and its mailbox).
    assert!(early.cmd("STAT").starts_with("+OK 1 "));
    assert!(early.cmd("QUIT").starts_with("+OK"));
    // A connection accepted before the reload keeps its limits.
    for _ in 0..4 {
        assert!(before.cmd("NOOP").starts_with("-ERR"));
    }
    // New connections get the new limit...
    let mut c = server.connect();
    c.cmd("NOOP");
    c.cmd("NOOP");
    assert!(c.cmd("NOOP").contains("Too many"), "{}", server.log());
    // ...and the new passdb: the old password fails, the new one works.
    let mut c = server.connect();
    c.cmd("USER alice");
    assert!(c.cmd("PASS pw").starts_with("-ERR [AUTH]"));
    let mut c = server.connect();
    c.login("alice", "new");
    assert!(c.cmd("QUIT").starts_with("+OK"));
    // log.level = "warn": the failure is logged, the new success is not.
    std::thread::sleep(std::time::Duration::from_millis(200));
    let log = server.log();
    assert!(log.contains("login failed (BadCredentials)"), "{log}");
    let after = &log[log.find("SIGHUP: configuration reloaded").unwrap()..];
    assert!(!after.contains("pop3 login: user=<alice>"), "{after}");

    // A broken file: one line, nothing changes (the new password still
    // works, the old limit of 2 stays).
    rewrite(&server, "[limits\nthis is not toml");
    hup_and_wait(
        &server,
        1,
        "SIGHUP: configuration refused, the running one stays",
    );
    let mut c = server.connect();
    c.login("alice", "new");
    assert!(c.cmd("QUIT").starts_with("+OK"));
    // A file that parses but does not validate.
    rewrite(&server, &base(&other, "[limits]\nline_bytes_max = 1\n"));
    hup_and_wait(
        &server,
        2,
        "SIGHUP: configuration refused, the running one stays",
    );
    let mut c = server.connect();
    c.cmd("NOOP");
    c.cmd("NOOP");
    assert!(c.cmd("NOOP").contains("Too many"));
}
