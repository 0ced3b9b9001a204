//! RFC 2449 LOGIN-DELAY and EXPIRE against the real server, with Python's
//! poplib as the client: the delay across logins, restarts and two server
//! processes on one Maildir store; expiry at the end of a later session,
//! never before QUIT and never on a dropped connection; EXPIRE 0; a
//! user's own values from passwd-file extra fields.

#[macro_use]
mod common;

use std::fs;
use std::path::Path;

use common::{Engine, Opts, Server, Tree, python};

const RETRIEVED_FILE: &str = "shardpop-pop3-retrieved";
const LOGIN_FILE: &str = "shardpop-pop3-login";

/// Python helpers every script starts with: `login` retries while the
/// mailbox is still held by a session the server has not yet seen drop.
const PRELUDE: &str = r#"
import os, poplib, sys, time
def login(port, user, pw):
    for _ in range(100):
        c = poplib.POP3("127.0.0.1", port, timeout=20)
        c.user(user)
        try:
            c.pass_(pw)
            return c, None
        except poplib.error_proto as e:
            text = e.args[0].decode()
            c.quit()
            if "[IN-USE]" in text:
                time.sleep(0.1)
                continue
            return None, text
    raise SystemExit("mailbox stayed in use")
def capa(port, user=None, pw=None):
    if user is None:
        c = poplib.POP3("127.0.0.1", port, timeout=20)
    else:
        c, err = login(port, user, pw)
        assert c is not None, err
    caps = c.capa()
    c.quit()
    return caps
"#;

fn run(script: &str) -> String {
    python(&format!("{PRELUDE}\n{script}"))
}

fn start(tree: &Tree, engine: Engine, pop3: &str) -> Server {
    let mut opts = Opts::new(engine);
    opts.toml = format!("[pop3]\n{pop3}\n");
    Server::start_with(tree, opts)
}

/// A tree with alice (three messages) and bob (one).
fn tree() -> Tree {
    let mut tree = Tree::new();
    tree.user("alice", "pw");
    tree.user("bob", "pw");
    for n in 1..=3 {
        tree.deliver("alice", n, format!("Subject: {n}\n\nbody {n}\n").as_bytes());
    }
    tree.deliver("bob", 1, b"Subject: b\n\nbob\n");
    tree
}

/// Sets every first-retrieval time in the user's state file `days` back.
fn age_retrievals(maildir: &Path, days: u64) {
    let path = maildir.join(RETRIEVED_FILE);
    let text = fs::read_to_string(&path).unwrap();
    let mut lines = text.lines();
    let mut aged = format!("{}\n", lines.next().unwrap());
    for line in lines {
        let (secs, name) = line.split_once(' ').unwrap();
        let secs: u64 = secs.parse().unwrap();
        aged.push_str(&format!("{} {name}\n", secs - days * 86_400));
    }
    fs::write(&path, aged).unwrap();
}

engine_test!(a_login_too_soon_gets_login_delay_after_authentication);
fn a_login_too_soon_gets_login_delay_after_authentication(engine: Engine) {
    let tree = tree();
    let server = start(&tree, engine, "login_delay_secs = 600");
    let port = server.addr.port();
    let out = run(&format!(
        r#"
print("before", capa({port})["LOGIN-DELAY"])
print("after", capa({port}, "alice", "pw")["LOGIN-DELAY"])
c, err = login({port}, "alice", "pw")
print("again", err)
c, err = login({port}, "alice", "wrong")
print("wrong", err)
c, err = login({port}, "bob", "pw")
print("bob", err)
c.quit()
"#
    ));
    assert!(out.contains("before ['600', 'USER']"), "{out}");
    assert!(out.contains("after ['600']"), "{out}");
    assert!(out.contains("again -ERR [LOGIN-DELAY]"), "{out}");
    // A wrong password learns nothing about the delay.
    assert!(out.contains("wrong -ERR [AUTH]"), "{out}");
    assert!(out.contains("bob None"), "{out}");
    assert!(tree.maildir("alice").join(LOGIN_FILE).is_file());
}

engine_test!(the_delay_holds_across_a_restart);
fn the_delay_holds_across_a_restart(engine: Engine) {
    let tree = tree();
    let server = start(&tree, engine, "login_delay_secs = 600");
    let port = server.addr.port();
    run(&format!(
        "c, err = login({port}, 'alice', 'pw')\nassert err is None, err\nc.quit()\n"
    ));
    assert!(server.terminate().success());
    let server = start(&tree, engine, "login_delay_secs = 600");
    let port = server.addr.port();
    let out = run(&format!(
        "c, err = login({port}, 'alice', 'pw')\nprint('after restart', err)\n"
    ));
    assert!(out.contains("after restart -ERR [LOGIN-DELAY]"), "{out}");
}

engine_test!(two_servers_on_one_store_see_each_others_logins);
fn two_servers_on_one_store_see_each_others_logins(engine: Engine) {
    let tree = tree();
    let a = start(&tree, engine, "login_delay_secs = 2");
    let b = start(&tree, engine, "login_delay_secs = 2");
    let (pa, pb) = (a.addr.port(), b.addr.port());
    let out = run(&format!(
        r#"
c, err = login({pa}, "alice", "pw")
assert err is None, err
c.quit()
c, err = login({pb}, "alice", "pw")
print("on b", err)
time.sleep(2.2)
c, err = login({pb}, "alice", "pw")
print("on b later", err)
c.quit()
c, err = login({pa}, "alice", "pw")
print("back on a", err)
"#
    ));
    assert!(out.contains("on b -ERR [LOGIN-DELAY]"), "{out}");
    assert!(out.contains("on b later None"), "{out}");
    assert!(out.contains("back on a -ERR [LOGIN-DELAY]"), "{out}");
}

engine_test!(expire_removes_old_retrievals_at_quit_of_a_later_session_only);
fn expire_removes_old_retrievals_at_quit_of_a_later_session_only(engine: Engine) {
    let tree = tree();
    let server = start(&tree, engine, "expire_days = 3");
    let port = server.addr.port();
    let maildir = tree.maildir("alice");
    // Session 1 retrieves message 1 (and only looks at 2 with TOP).
    let out = run(&format!(
        r#"
print("capa", capa({port}, "alice", "pw")["EXPIRE"])
c, err = login({port}, "alice", "pw")
c.retr(1)
c.top(2, 0)
c.quit()
"#
    ));
    assert!(out.contains("capa ['3']"), "{out}");
    assert_eq!(tree.files("alice").len(), 3);
    let state = fs::read_to_string(maildir.join(RETRIEVED_FILE)).unwrap();
    assert_eq!(state.lines().count(), 2, "{state}");
    assert!(state.contains(".M1.test"), "{state}");
    // Retrieved four days ago, as far as the store knows.
    age_retrievals(&maildir, 4);
    // Session 2 drops its connection: nothing is deleted.
    let dir = maildir.display();
    let out = run(&format!(
        r#"
c, err = login({port}, "alice", "pw")
print("stat", c.stat()[0])
c.close()
"#
    ));
    assert!(out.contains("stat 3"), "{out}");
    assert_eq!(tree.files("alice").len(), 3);
    // Session 3: still there until QUIT, gone after it.
    let out = run(&format!(
        r#"
c, err = login({port}, "alice", "pw")
print("stat", c.stat()[0])
print("before quit", len(os.listdir("{dir}/cur")))
print(c.quit().decode())
"#
    ));
    assert!(out.contains("stat 3"), "{out}");
    assert!(out.contains("before quit 3"), "{out}");
    assert!(out.contains("+OK Logging out."), "{out}");
    let left = tree.files("alice");
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(left.iter().all(|f| !f.contains(".M1.")), "{left:?}");
    assert!(!maildir.join(RETRIEVED_FILE).exists());
}

engine_test!(expire_zero_deletes_what_the_session_retrieved_at_quit);
fn expire_zero_deletes_what_the_session_retrieved_at_quit(engine: Engine) {
    let tree = tree();
    let server = start(&tree, engine, "expire_days = 0");
    let port = server.addr.port();
    let out = run(&format!(
        r#"
print("capa", capa({port})["EXPIRE"])
c, err = login({port}, "alice", "pw")
c.retr(2)
c.close()
c, err = login({port}, "alice", "pw")
print("after drop", c.stat()[0])
c.retr(2)
c.retr(3)
c.quit()
"#
    ));
    assert!(out.contains("capa ['0', 'USER']"), "{out}");
    // The dropped session deleted nothing.
    assert!(out.contains("after drop 3"), "{out}");
    let left = tree.files("alice");
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(left[0].contains(".M1."), "{left:?}");
}

engine_test!(a_users_passwd_file_fields_override_the_site_policy);
fn a_users_passwd_file_fields_override_the_site_policy(engine: Engine) {
    let mut tree = tree();
    tree.user("carol", "unused");
    let mut passwd = fs::read_to_string(tree.passwd()).unwrap();
    passwd = passwd.replace(
        "carol:{PLAIN}unused:1000:1000::::\n",
        "carol:{PLAIN}pw:1000:1000::::userdb_pop3_expire_days=0 pop3_login_delay_secs=0\n",
    );
    fs::write(tree.passwd(), passwd).unwrap();
    tree.deliver("carol", 1, b"Subject: c\n\ncarol\n");
    tree.deliver("carol", 2, b"Subject: c2\n\ncarol 2\n");
    let server = start(
        &tree,
        engine,
        "login_delay_secs = 600\nexpire_days = \"never\"",
    );
    let port = server.addr.port();
    let out = run(&format!(
        r#"
print("site", capa({port})["EXPIRE"], capa({port})["LOGIN-DELAY"])
caps = capa({port}, "carol", "pw")
print("carol", caps["EXPIRE"], "LOGIN-DELAY" in caps)
c, err = login({port}, "carol", "pw")
print("carol again", err)
c.retr(1)
c.quit()
caps = capa({port}, "alice", "pw")
print("alice", caps["EXPIRE"], caps["LOGIN-DELAY"])
c, err = login({port}, "alice", "pw")
print("alice again", err)
"#
    ));
    assert!(
        out.contains("site ['NEVER', 'USER'] ['600', 'USER']"),
        "{out}"
    );
    assert!(out.contains("carol ['0'] False"), "{out}");
    assert!(out.contains("carol again None"), "{out}");
    assert!(out.contains("alice ['NEVER'] ['600']"), "{out}");
    assert!(out.contains("alice again -ERR [LOGIN-DELAY]"), "{out}");
    let left = tree.files("carol");
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(left[0].contains(".M2."), "{left:?}");
    assert_eq!(tree.files("alice").len(), 3);
}

fn check_config(tree: &Tree, pop3: &str) -> (bool, String, String) {
    let path = tree.root().join("check.toml");
    fs::write(
        &path,
        format!(
            "[auth]\npasswd_file = {:?}\n[mail]\nlocation = {:?}\n[pop3]\n{pop3}\n",
            tree.passwd().to_str().unwrap(),
            tree.location()
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_shardpop"))
        .args(["check-config", "--listen", "127.0.0.1:1110", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_config_validates_the_pop3_keys() {
    let tree = tree();
    let (ok, stdout, stderr) =
        check_config(&tree, "login_delay_secs = 300\nexpire_days = \"never\"");
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("[pop3]\nlogin_delay_secs = 300\nexpire_days = \"never\""),
        "{stdout}"
    );
    let (ok, stdout, _) = check_config(&tree, "expire_days = 30");
    assert!(ok && stdout.contains("expire_days = 30"), "{stdout}");
    for (pop3, line, reason) in [
        (
            "expire_days = \"nevr\"",
            6,
            "expire_days \"nevr\": expected a whole number of days",
        ),
        (
            "expire_days = -3",
            6,
            "expire_days \"-3\": expected a whole number of days",
        ),
        (
            "login_delay_secs = 90000",
            6,
            "pop3.login_delay_secs must be at most 86400",
        ),
        ("login_delay = 60", 6, "unknown field"),
    ] {
        let (ok, stdout, stderr) = check_config(&tree, pop3);
        assert!(!ok && stdout.is_empty(), "{pop3}: {stdout}");
        assert!(
            stderr.contains(&format!("check.toml:{line}:")),
            "{pop3}: {stderr}"
        );
        assert!(stderr.contains(reason), "{pop3}: {stderr}");
    }
}
