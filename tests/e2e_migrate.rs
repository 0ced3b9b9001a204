//! Migration end to end: `shardpop migrate verify` against a real Dovecot
//! (Debian's dovecot-pop3d, tests/common/dovecot.rs) and the real shardpop
//! binary serving the same Maildir tree; and a tree Courier left behind
//! (`courierpop3dsizelist`, `courierimapuiddb`) served with Courier's UIDLs.

#[macro_use]
mod common;
#[path = "common/dovecot.rs"]
mod dovecot;
#[path = "common/tls_fixture.rs"]
mod tls_fixture;

use std::fs;
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Command, Output};

use common::{Engine, Opts, Server, Tree};
use dovecot::Dovecot;
use tls_fixture::TestCa;

/// Runs `shardpop migrate verify` with these flags.
fn verify(old: SocketAddr, new: SocketAddr, users: &Path, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_shardpop"))
        .args(["migrate", "verify", "--old"])
        .arg(old.to_string())
        .arg("--new")
        .arg(new.to_string())
        .arg("--users")
        .arg(users)
        .args(["--rate", "0", "--timeout-secs", "10"])
        .args(extra)
        .output()
        .expect("run migrate verify")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Two users with mail in cur/ and new/, one with a dot-led line, and a
/// users file for them.
fn tree() -> (Tree, tempfile::NamedTempFile) {
    let mut tree = Tree::new();
    tree.user("alice", "pw-a");
    tree.user("bob", "pw-b");
    tree.deliver("alice", 1, b"Subject: one\n\nhello\n");
    tree.deliver("alice", 2, b"Subject: two\r\n\r\n.dot\r\nline\r\n");
    fs::write(
        tree.maildir("alice").join("new/1700000003.M3.test"),
        b"Subject: three\n\nnew mail\n",
    )
    .unwrap();
    tree.deliver("bob", 1, b"Subject: b\n\nbob\n");
    let users = tempfile::NamedTempFile::new().unwrap();
    fs::write(users.path(), "# verify users\nalice pw-a\n\nbob pw-b\n").unwrap();
    (tree, users)
}

engine_test!(dovecot_and_shardpop_on_one_tree_verify_identical_then_differences_are_named);
fn dovecot_and_shardpop_on_one_tree_verify_identical_then_differences_are_named(engine: Engine) {
    let (tree, users) = tree();
    let dovecot = Dovecot::start(&tree.root().join("mail"), &tree.users);
    let server = Server::start(&tree, engine);
    let out = verify(dovecot.addr, server.addr, users.path(), &[]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}\n{}", dovecot.log());
    assert!(text.contains("alice: identical (3 messages,"), "{text}");
    assert!(text.contains("bob: identical (1 messages,"), "{text}");
    assert!(
        text.contains("summary: 2 users, 2 identical, 0 with differences"),
        "{text}"
    );
    // Dovecot numbered the mail; shardpop gave its UIDLs, not base names.
    assert!(tree.maildir("alice").join("dovecot-uidlist").exists());

    // An operator who forgot pop3_uidl_format: every UIDL differs.
    let mut opts = Opts::new(engine);
    opts.toml = "[mail]\npop3_uidl_format = \"%f\"\n".into();
    let by_name = Server::start_with(&tree, opts);
    let out = verify(dovecot.addr, by_name.addr, users.path(), &["--retr"]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("alice: DIFFERENT: 3 UIDL(s) only on old:"),
        "{text}"
    );
    assert!(
        text.contains("3 UIDL(s) only on new: 1700000001.M1.test"),
        "{text}"
    );
    assert!(
        text.contains("summary: 2 users, 0 identical, 2 with differences"),
        "{text}"
    );
    assert!(text.contains("\n  only-new: 2 user(s)"), "{text}");
}

/// `user` (password `pw-` and its first letter) with `messages` messages
/// and a `dovecot-uidlist` of these `records`, and a users file for verify.
fn one_user_with_uidlist(
    user: &str,
    messages: u32,
    records: &str,
) -> (Tree, tempfile::NamedTempFile) {
    let mut tree = Tree::new();
    let password = format!("pw-{}", &user[..1]);
    tree.user(user, &password);
    for n in 1..=messages {
        tree.deliver(user, n, format!("Subject: {n}\n\nbody {n}\n").as_bytes());
    }
    fs::write(
        tree.maildir(user).join("dovecot-uidlist"),
        format!("3 V1655390361 N{messages} G3085f01b7f11094c501100008c4a11c1\n{records}"),
    )
    .unwrap();
    let users = tempfile::NamedTempFile::new().unwrap();
    fs::write(users.path(), format!("{user} {password}\n")).unwrap();
    (tree, users)
}

engine_test!(saved_uidls_in_dovecot_uidlist_are_read_as_dovecot_reads_them);
/// A `dovecot-uidlist` as Dovecot's dsync leaves it after a migration: a
/// saved UIDL (`P`) that is the base file name is written bare, others in
/// full; some records have a saved order (`O`), one has none, and one
/// message is in no record. A real Dovecot and shardpop serve the tree, and
/// `migrate verify` finds every user identical (same order, sizes and
/// UIDLs): the record without `O` comes after those with one, whatever its
/// UID.
fn saved_uidls_in_dovecot_uidlist_are_read_as_dovecot_reads_them(engine: Engine) {
    let (tree, users) = one_user_with_uidlist(
        "dave",
        4,
        "1 P O5 :1700000001.M1.test\n\
         2 P :1700000002.M2.test\n\
         3 Pold-three O1 :1700000003.M3.test\n",
    );
    let dovecot = Dovecot::start(&tree.root().join("mail"), &tree.users);
    let server = Server::start(&tree, engine);
    let out = verify(dovecot.addr, server.addr, users.path(), &[]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}\n{}", dovecot.log());
    assert!(text.contains("dave: identical (4 messages,"), "{text}");
    // And what both say is the base names for the bare records.
    let mut c = server.connect();
    c.login("dave", "pw-d");
    assert!(c.cmd("UIDL").starts_with("+OK"));
    let (uidls, _) = c.multiline();
    let uidls = String::from_utf8(uidls).unwrap();
    let lines: Vec<&str> = uidls.lines().collect();
    assert_eq!(
        lines[..3],
        [
            "1 old-three",
            "2 1700000001.M1.test",
            "3 1700000002.M2.test"
        ],
        "{uidls}"
    );
}

engine_test!(a_guid_uidl_format_matches_dovecots);
/// `pop3_uidl_format = %g` (stable across dsync migrations): the GUID
/// dsync kept in `dovecot-uidlist` (`G`), else the base file name. A real
/// Dovecot and shardpop with that format agree on every UIDL.
fn a_guid_uidl_format_matches_dovecots(engine: Engine) {
    let (tree, users) = one_user_with_uidlist(
        "erin",
        3,
        "1 G9f2c4e1a7b3d5f60718293a4b5c6d7e8 :1700000001.M1.test\n\
         2 :1700000002.M2.test\n",
    );
    let dovecot = Dovecot::start_with(&tree.root().join("mail"), &tree.users, "%g", "");
    let mut opts = Opts::new(engine);
    opts.toml = "[mail]\npop3_uidl_format = \"%g\"\n".into();
    let server = Server::start_with(&tree, opts);
    let out = verify(dovecot.addr, server.addr, users.path(), &[]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}\n{}", dovecot.log());
    assert!(text.contains("erin: identical (3 messages,"), "{text}");
    let mut c = server.connect();
    c.login("erin", "pw-e");
    assert!(
        c.cmd("UIDL 1")
            .ends_with(" 9f2c4e1a7b3d5f60718293a4b5c6d7e8")
    );
    assert!(c.cmd("UIDL 3").ends_with(" 1700000003.M3.test"));
}

/// Storage (KiB) and messages of `user`'s quota, as `doveadm quota get`
/// reports them.
fn dovecot_quota(dovecot: &Dovecot, user: &str) -> (u64, u64) {
    let text = dovecot.doveadm(&["quota", "get", "-u", user]);
    let value = |kind: &str| -> u64 {
        let line = text
            .lines()
            .find(|l| l.split_whitespace().nth(2) == Some(kind))
            .unwrap_or_else(|| panic!("no {kind} in {text}"));
        line.split_whitespace().nth(3).unwrap().parse().unwrap()
    };
    (value("STORAGE"), value("MESSAGE"))
}

engine_test!(deletions_come_off_a_maildir_quota_as_dovecot_counts_it);
/// Dovecot's `quota = maildir` (Maildir++ `maildirsize`): mail a POP3
/// client deletes through shardpop comes off the quota Dovecot reads, and
/// Dovecot's own recount agrees, so deliveries do not bounce for mail that
/// is gone.
fn deletions_come_off_a_maildir_quota_as_dovecot_counts_it(engine: Engine) {
    let mut tree = Tree::new();
    tree.user("fay", "pw-f");
    for n in 1..=3u32 {
        let body = format!("Subject: {n}\n\n{}\n", "q".repeat(3000));
        let name = format!("{}.M{n}.test,S={}:2,", 1_700_000_000 + n, body.len());
        fs::write(tree.maildir("fay").join("cur").join(name), body).unwrap();
    }
    let quota = "mail_plugins = quota\n\
                 plugin {\n  quota = maildir:User quota\n  quota_rule = *:storage=10M\n}\n";
    let dovecot = Dovecot::start_with(&tree.root().join("mail"), &tree.users, "%08Xu%08Xv", quota);
    dovecot.doveadm(&["quota", "recalc", "-u", "fay"]);
    let (storage, messages) = dovecot_quota(&dovecot, "fay");
    assert_eq!(messages, 3);
    let server = Server::start(&tree, engine);
    let mut c = server.connect();
    c.login("fay", "pw-f");
    assert!(c.cmd("DELE 1").starts_with("+OK"));
    assert!(c.cmd("DELE 3").starts_with("+OK"));
    assert!(c.cmd("QUIT").starts_with("+OK"));
    let after = dovecot_quota(&dovecot, "fay");
    assert_eq!(
        after.1,
        1,
        "{:?}",
        fs::read_to_string(tree.maildir("fay").join("maildirsize"))
    );
    assert!(after.0 < storage, "{after:?} against {storage}");
    dovecot.doveadm(&["quota", "recalc", "-u", "fay"]);
    assert_eq!(dovecot_quota(&dovecot, "fay"), after);
}

/// A tree with one user and five messages, flags as an IMAP client left
/// them: 3 read, 5 replied and trashed.
fn flagged_tree() -> Tree {
    let mut tree = Tree::new();
    tree.user("gus", "pw-g");
    for (n, flags) in [(1, ""), (2, ""), (3, "S"), (4, ""), (5, "RT")] {
        let name = format!("{}.M{n}.test:2,{flags}", 1_700_000_000 + n);
        let body = format!("Subject: {n}\n\nbody {n}\n");
        fs::write(tree.maildir("gus").join("cur").join(name), body).unwrap();
    }
    tree
}

/// RETR 1, TOP 2, RETR 3, RETR 4 and DELE 4, RETR 5, QUIT.
fn fetch_some(addr: std::net::SocketAddr) {
    let mut c = common::Client::connect(addr);
    c.login("gus", "pw-g");
    for cmd in ["RETR 1", "TOP 2 0", "RETR 3", "RETR 4", "RETR 5"] {
        assert!(c.cmd(cmd).starts_with("+OK"), "{cmd}");
        c.multiline();
    }
    assert!(c.cmd("DELE 4").starts_with("+OK"));
    assert!(c.cmd("QUIT").starts_with("+OK"));
}

engine_test!(retrieved_mail_is_flagged_seen_as_dovecot_flags_it);
/// Dovecot gives mail a POP3 client fetched with RETR the \Seen flag at
/// QUIT (`pop3_no_flag_updates = no`, its default), so webmail shows it as
/// read. The same session against Dovecot and against shardpop, each on
/// its own copy of one tree, leaves the same file names; with
/// `no_flag_updates` shardpop renames nothing.
fn retrieved_mail_is_flagged_seen_as_dovecot_flags_it(engine: Engine) {
    let theirs = flagged_tree();
    let dovecot = Dovecot::start(&theirs.root().join("mail"), &theirs.users);
    fetch_some(dovecot.addr);
    let ours = flagged_tree();
    let server = Server::start(&ours, engine);
    fetch_some(server.addr);
    let expected = [
        "1700000001.M1.test:2,S",
        "1700000002.M2.test:2,",
        "1700000003.M3.test:2,S",
        "1700000005.M5.test:2,RST",
    ];
    assert_eq!(theirs.files("gus"), expected, "Dovecot's own result");
    assert_eq!(ours.files("gus"), expected);

    let unflagged = flagged_tree();
    let mut opts = Opts::new(engine);
    opts.toml = "[pop3]\nno_flag_updates = true\n".into();
    let server = Server::start_with(&unflagged, opts);
    fetch_some(server.addr);
    assert_eq!(
        unflagged.files("gus"),
        [
            "1700000001.M1.test:2,",
            "1700000002.M2.test:2,",
            "1700000003.M3.test:2,S",
            "1700000005.M5.test:2,RT"
        ]
    );
}

engine_test!(verify_reports_failures_resumes_and_never_deletes);
fn verify_reports_failures_resumes_and_never_deletes(engine: Engine) {
    let (tree, users) = tree();
    let dovecot = Dovecot::start(&tree.root().join("mail"), &tree.users);
    let server = Server::start(&tree, engine);
    let before: Vec<Vec<String>> = ["alice", "bob"].iter().map(|u| tree.files(u)).collect();
    // A user the new side refuses, and one nobody knows.
    let mixed = tempfile::NamedTempFile::new().unwrap();
    fs::write(mixed.path(), "alice pw-a\nbob wrong\n").unwrap();
    let out = verify(
        dovecot.addr,
        server.addr,
        mixed.path(),
        &["--concurrency", "2"],
    );
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("alice: identical"), "{text}");
    assert!(
        text.contains("bob: DIFFERENT: old server: PASS refused"),
        "{text}"
    );
    assert!(text.contains("new server: PASS refused"), "{text}");
    // An unreachable new server is a difference, not a crash.
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let out = verify(dovecot.addr, closed, users.path(), &[]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("alice: DIFFERENT: new server: cannot connect"),
        "{text}"
    );
    assert!(text.contains("\n  new-failed: 2 user(s)"), "{text}");
    // Resumable: a second run with the same state file checks nobody again.
    let state = tempfile::NamedTempFile::new().unwrap();
    let flag = ["--state", state.path().to_str().unwrap()];
    let first = verify(dovecot.addr, server.addr, users.path(), &flag);
    assert_eq!(first.status.code(), Some(0), "{}", stdout(&first));
    let again = verify(dovecot.addr, server.addr, users.path(), &flag);
    let text = stdout(&again);
    assert_eq!(again.status.code(), Some(0), "{text}");
    assert!(!text.contains("alice:"), "{text}");
    assert!(
        text.contains("summary: 2 users, 2 identical, 0 with differences (2 from the state file)"),
        "{text}"
    );
    // Usage errors exit 2.
    let bad = verify(
        dovecot.addr,
        server.addr,
        Path::new("/nonexistent/users"),
        &[],
    );
    assert_eq!(bad.status.code(), Some(2));
    // Nothing was deleted on either side (new mail only moved to cur/).
    let base = |names: &[String]| -> Vec<String> {
        let mut b: Vec<String> = names
            .iter()
            .map(|n| n.split(':').next().unwrap().to_string())
            .collect();
        b.sort();
        b
    };
    for (user, was) in ["alice", "bob"].iter().zip(&before) {
        assert_eq!(base(&tree.files(user)), base(was), "{user}");
    }
}

engine_test!(a_courier_tree_is_served_with_courier_uidls);
fn a_courier_tree_is_served_with_courier_uidls(engine: Engine) {
    let mut tree = Tree::new();
    tree.user("carol", "pw-c");
    let md = tree.maildir("carol");
    // As Courier 4/5 leaves a Maildir: pop3d's list (version 3) and IMAP's
    // UID database; one message is newer than both.
    fs::write(
        md.join("cur/1690000001.1234_0.mx:2,S"),
        b"Subject: 1\n\none\n",
    )
    .unwrap();
    fs::write(
        md.join("cur/1690000002.1234_1.mx:2,"),
        b"Subject: 2\n\ntwo\n",
    )
    .unwrap();
    fs::write(
        md.join("cur/1690000003.99_0.mx:2,S"),
        b"Subject: 3\n\nimap\n",
    )
    .unwrap();
    fs::write(md.join("new/1700000000.5_0.mx"), b"Subject: 4\n\nafter\n").unwrap();
    fs::write(
        md.join("courierpop3dsizelist"),
        "/3 3 1690000000\n\
         1690000001.1234_0.mx:2,S 19 1:1690000000:0\n\
         1690000002.1234_1.mx:2, 19 2:1690000000:0\n",
    )
    .unwrap();
    fs::write(
        md.join("courierimapuiddb"),
        "1 1680000000 12\n10 1690000001.1234_0.mx\n11 1690000003.99_0.mx\n",
    )
    .unwrap();
    let server = Server::start(&tree, engine);
    for _ in 0..2 {
        // Twice: the second login comes from the index.
        let mut c = server.connect();
        c.login("carol", "pw-c");
        assert_eq!(c.cmd("UIDL"), "+OK");
        let (list, _) = c.multiline();
        assert_eq!(
            String::from_utf8(list).unwrap(),
            // Courier's UIDLs; then IMAP UID 11 in pop3_uidl_format's
            // default (%08Xu%08Xv: 0xb, 1680000000 = 0x6422c400); then the
            // new message by its name.
            "1 UID1-1690000000\r\n2 UID2-1690000000\r\n\
             3 0000000b6422c400\r\n4 1700000000.5_0.mx\r\n"
        );
        assert_eq!(c.cmd("QUIT"), "+OK Logging out.");
    }
}

engine_test!(verify_speaks_implicit_tls_and_stls_and_checks_certificates);
fn verify_speaks_implicit_tls_and_stls_and_checks_certificates(engine: Engine) {
    let (tree, users) = tree();
    let ca = TestCa::new(tree.root());
    let leaf = ca.issue(tree.root(), "server");
    let start = || {
        let mut opts = Opts::new(engine);
        opts.args = leaf.serve_args(true);
        Server::start_with(&tree, opts)
    };
    let (a, b) = (start(), start());
    let ca_pem = ca.ca_pem.to_str().unwrap();
    let out = verify(
        a.tls_addr(),
        b.tls_addr(),
        users.path(),
        &["--tls", "--tls-ca", ca_pem],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert!(stdout(&out).contains("summary: 2 users, 2 identical"));
    let out = verify(
        a.addr,
        b.addr,
        users.path(),
        &["--stls", "--tls-ca", ca_pem],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    // A certificate from another CA is a failed TLS handshake for that user.
    let other = tempfile::tempdir().unwrap();
    let other_ca = TestCa::new(other.path());
    let out = verify(
        a.tls_addr(),
        b.tls_addr(),
        users.path(),
        &["--tls", "--tls-ca", other_ca.ca_pem.to_str().unwrap()],
    );
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("alice: DIFFERENT: old server: protocol error: TLS handshake:"),
        "{text}"
    );
}
