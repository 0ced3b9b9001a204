//! The command line as operators and scripts use it: `passwd`, `demo`, and
//! logins by every mechanism a real client uses (USER/PASS, APOP, SASL PLAIN).

#[macro_use]
mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Engine, Opts, Server, Tree};

fn shardpop() -> Command {
    Command::new(env!("CARGO_BIN_EXE_shardpop"))
}

engine_test!(passwd_hashes_log_in_for_every_scheme);
fn passwd_hashes_log_in_for_every_scheme(engine: Engine) {
    let mut tree = Tree::new();
    let schemes = [
        "SHA512-CRYPT",
        "SHA256-CRYPT",
        "SSHA256",
        "SSHA512",
        "SHA256",
        "SHA512",
        "PLAIN",
        "ARGON2ID",
    ];
    for (i, scheme) in schemes.iter().enumerate() {
        let out = shardpop()
            .args(["passwd", "-s", scheme, "-p", "pa ss"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{scheme}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let hash = String::from_utf8(out.stdout).unwrap().trim().to_string();
        assert!(hash.starts_with(&format!("{{{scheme}}}")), "{hash}");
        tree.user_with_hash(&format!("user{i}"), &hash);
    }
    // The password can also come on standard input, as from a script.
    let mut child = shardpop()
        .args(["passwd", "-s", "SSHA256"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), b"from stdin\n").unwrap();
    let out = child.wait_with_output().unwrap();
    tree.user_with_hash("piped", String::from_utf8(out.stdout).unwrap().trim());
    let server = Server::start(&tree, engine);
    for (i, scheme) in schemes.iter().enumerate() {
        let mut c = server.connect();
        c.login(&format!("user{i}"), "pa ss");
        let mut c = server.connect();
        c.cmd(&format!("USER user{i}"));
        assert_eq!(
            c.cmd("PASS pa sS"),
            "-ERR [AUTH] Authentication failed.",
            "{scheme}"
        );
    }
    server.connect().login("piped", "from stdin");
    assert!(
        !shardpop()
            .args(["passwd", "-s", "NOPE", "-p", "x"])
            .status()
            .unwrap()
            .success()
    );
}

#[test]
fn demo_creates_a_tree_serves_it_and_prints_how_to_connect() {
    let dir = tempfile::tempdir().unwrap();
    let demo_dir = dir.path().join("demo");
    let mut child = shardpop()
        .args(["demo", "--listen", "127.0.0.1:0", "--shards", "1", "--dir"])
        .arg(&demo_dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let curl_line = loop {
        let line = lines
            .next()
            .expect("demo printed its instructions")
            .unwrap();
        if line.trim_start().starts_with("curl ") && line.contains("# LIST") {
            break line;
        }
    };
    let url = curl_line.split_whitespace().nth(1).unwrap().to_string();
    assert!(
        !url.ends_with(":0/"),
        "the printed address must be the bound one: {url}"
    );
    let out = Command::new("curl")
        .args(["-s", "--max-time", "20", &url, "--user", "alice:wonderland"])
        .output()
        .unwrap();
    let list = String::from_utf8(out.stdout).unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(list.lines().count(), 6, "{list}");
    let dots = std::fs::read_dir(demo_dir.join("home/alice/Maildir/new"))
        .unwrap()
        .count()
        + std::fs::read_dir(demo_dir.join("home/alice/Maildir/cur"))
            .unwrap()
            .count();
    assert_eq!(dots, 6);
    // A directory that is not a demo tree is never replaced.
    let foreign = dir.path().join("foreign");
    std::fs::create_dir(&foreign).unwrap();
    let out = shardpop()
        .args(["demo", "--listen", "127.0.0.1:0", "--dir"])
        .arg(&foreign)
        .output()
        .unwrap();
    assert!(!out.status.success());
}

engine_test!(apop_login_with_python_poplib);
fn apop_login_with_python_poplib(engine: Engine) {
    let mut tree = Tree::new();
    tree.user("mrose", "tanstaaf");
    tree.deliver("mrose", 1, b"Subject: x\n\nbody\n");
    let server = Server::start_with(
        &tree,
        Opts {
            toml: "[auth]\nfailure_delay_ms = 0\napop = true\n".into(),
            ..Opts::new(engine)
        },
    );
    let script = format!(
        "import poplib\np = poplib.POP3('127.0.0.1', {port})\nassert b'<' in p.getwelcome()\n\
         print(p.apop('mrose', 'tanstaaf'))\nprint(p.stat())\np.quit()\n\
         q = poplib.POP3('127.0.0.1', {port})\n\
         try:\n    q.apop('mrose', 'wrong')\n    print('accepted')\nexcept poplib.error_proto as e:\n    print('refused', e)\n",
        port = server.addr.port()
    );
    let out = Command::new("python3")
        .args(["-c", &script])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("b'+OK Logged in.'"), "{stdout}");
    assert!(stdout.contains("(1, 20)"), "{stdout}");
    assert!(
        stdout.contains("refused b'-ERR [AUTH] Authentication failed.'"),
        "{stdout}"
    );
}

engine_test!(sasl_plain_login_with_and_without_initial_response);
fn sasl_plain_login_with_and_without_initial_response(engine: Engine) {
    let mut tree = Tree::new();
    tree.user("alice", "pw");
    let server = Server::start(&tree, engine);
    // base64("\0alice\0pw")
    let mut c = server.connect();
    assert_eq!(c.cmd("AUTH PLAIN AGFsaWNlAHB3"), "+OK Logged in.");
    let mut c2 = server.connect();
    assert_eq!(c2.cmd("AUTH PLAIN"), "+ ");
    assert_eq!(
        c2.cmd("AGFsaWNlAHB3"),
        "-ERR [IN-USE] Mailbox is locked by another POP3 session."
    );
    assert_eq!(c2.cmd("AUTH PLAIN"), "+ ");
    assert_eq!(c2.cmd("*"), "-ERR Authentication cancelled.");
}

engine_test!(autologout_ends_an_idle_session_and_deletes_nothing);
fn autologout_ends_an_idle_session_and_deletes_nothing(engine: Engine) {
    let mut tree = Tree::new();
    tree.user("u", "p");
    tree.deliver("u", 1, b"a\n");
    tree.deliver("u", 2, b"b\n");
    let before = tree.files("u");
    let server = Server::start_with(
        &tree,
        Opts {
            shards: 1,
            toml: "[limits]\nautologout_ms = 400\n".into(),
            ..Opts::new(engine)
        },
    );
    let mut c = server.connect();
    c.login("u", "p");
    assert_eq!(c.cmd("DELE 1"), "+OK Marked to be deleted.");
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(c.cmd("NOOP"), "+OK", "activity resets the idle timer");
    assert_eq!(c.line(), "-ERR Disconnected for inactivity.");
    assert!(c.is_closed());
    assert_eq!(tree.files("u"), before);
    server.wait_log("below the 10 minutes RFC 1939 requires");
}

/// The variable that makes the io_uring probe fail as a refusing kernel would.
const FORCE_FAIL: &str = "SHARDPOP_URING_FORCE_FAIL";

#[test]
fn auto_falls_back_to_epoll_when_io_uring_is_refused() {
    let mut tree = Tree::new();
    tree.user("u", "p");
    tree.deliver("u", 1, b"Subject: s\n\nbody\n");
    let server = Server::start_with(
        &tree,
        Opts {
            env: vec![(FORCE_FAIL, "1")],
            ..Opts::new(Engine::Auto)
        },
    );
    let log = server.log();
    assert!(
        log.contains(
            "engine: epoll (auto: io_uring refused: forced off by SHARDPOP_URING_FORCE_FAIL)"
        ),
        "{log}"
    );
    let choices = log.matches("engine: epoll").count() + log.matches("engine: io_uring").count();
    assert_eq!(choices, 1, "one line says which and why:\n{log}");
    let mut c = server.connect();
    c.login("u", "p");
    assert_eq!(c.cmd("RETR 1"), "+OK 20 octets");
    assert_eq!(c.multiline().0, b"Subject: s\r\n\r\nbody\r\n");
    assert!(c.cmd("QUIT").starts_with("+OK"));
}

#[test]
fn auto_picks_io_uring_when_the_kernel_allows_it() {
    let mut tree = Tree::new();
    tree.user("u", "p");
    let server = Server::start(&tree, Engine::Auto);
    server.wait_log("engine: io_uring (auto: the kernel supports every operation used)");
    server.connect().login("u", "p");
}

#[test]
fn engine_uring_fails_startup_with_a_clear_error_when_io_uring_is_refused() {
    let mut tree = Tree::new();
    tree.user("u", "p");
    let out = shardpop()
        .args(["serve", "--listen", "127.0.0.1:0", "--engine", "uring"])
        .arg("--passwd-file")
        .arg(tree.passwd())
        .arg("--mail-location")
        .arg(tree.location())
        .env(FORCE_FAIL, "1")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "shardpop: --engine uring: io_uring is not usable: forced off by SHARDPOP_URING_FORCE_FAIL (use --engine auto or epoll)"
        ),
        "{stderr}"
    );
    assert!(!stderr.contains("listening"), "nothing was bound: {stderr}");
}

fn scram(server: &Server, user: &str, password: &str, initial: bool) -> (bool, String) {
    let mut cmd = Command::new("python3");
    cmd.arg(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/clients/scram_login.py"
    ))
    .arg(server.addr.ip().to_string())
    .arg(server.addr.port().to_string())
    .args([user, password]);
    if initial {
        cmd.arg("initial");
    }
    let out = cmd.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

engine_test!(scram_sha_256_logins_with_stored_keys_and_plain_passwords);
fn scram_sha_256_logins_with_stored_keys_and_plain_passwords(engine: Engine) {
    let mut tree = Tree::new();
    tree.user("plainuser", "pencil");
    tree.deliver("plainuser", 1, b"x\n");
    let out = shardpop()
        .args(["passwd", "-s", "SCRAM-SHA-256", "-p", "s3cr3t"])
        .output()
        .unwrap();
    let hash = String::from_utf8(out.stdout).unwrap();
    assert!(hash.starts_with("{SCRAM-SHA-256}4096,"), "{hash}");
    tree.user_with_hash("scramuser", hash.trim());
    let server = Server::start(&tree, engine);
    for initial in [false, true] {
        let (ok, text) = scram(&server, "plainuser", "pencil", initial);
        assert!(
            ok && text.contains("server verified") && text.contains("+OK 1 3"),
            "{text}"
        );
        let (ok, text) = scram(&server, "scramuser", "s3cr3t", initial);
        assert!(ok && text.contains("+OK Logged in."), "{text}");
    }
    for (user, password) in [("scramuser", "wrong"), ("nobody", "pencil")] {
        let (ok, text) = scram(&server, user, password, false);
        assert!(!ok, "{text}");
        assert!(
            text.contains("refused at client-final: -ERR [AUTH] Authentication failed."),
            "{user}: {text}"
        );
    }
    server.wait_log("pop3 login failed (BadCredentials): user=<nobody>");
}

/// The salt a SCRAM server-first names for `user` (the exchange is then
/// abandoned).
fn scram_salt(server: &Server, user: &str) -> String {
    use std::io::{BufRead, BufReader, Write};
    let stream = std::net::TcpStream::connect(server.addr).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    // client-first "n,,n=USER,r=abcdefgh", base64 by python to keep it readable.
    let out = Command::new("python3")
        .args([
            "-c",
            &format!("import base64;print(base64.b64encode(b'n,,n={user},r=abcdefgh').decode())"),
        ])
        .output()
        .unwrap();
    let b64 = String::from_utf8(out.stdout).unwrap();
    writer
        .write_all(format!("AUTH SCRAM-SHA-256 {}\r\n", b64.trim()).as_bytes())
        .unwrap();
    line.clear();
    reader.read_line(&mut line).unwrap();
    let out = Command::new("python3")
        .args([
            "-c",
            &format!(
                "import base64;print(base64.b64decode('{}').decode())",
                line.trim_start_matches("+ ").trim()
            ),
        ])
        .output()
        .unwrap();
    let server_first = String::from_utf8(out.stdout).unwrap();
    server_first
        .split(',')
        .find_map(|kv| kv.strip_prefix("s="))
        .expect("a salt")
        .trim()
        .to_string()
}

engine_test!(a_shared_scram_secret_keeps_salts_across_servers);
fn a_shared_scram_secret_keeps_salts_across_servers(engine: Engine) {
    let mut tree = Tree::new();
    tree.user("plainuser", "pencil");
    std::fs::write(
        tree.root().join("scram.secret"),
        b"0123456789abcdef0123456789abcdef",
    )
    .unwrap();
    let toml = format!(
        "[auth]\nfailure_delay_ms = 0\nscram_secret_file = \"{}\"\n",
        tree.root().join("scram.secret").display()
    );
    let first = Server::start_with(
        &tree,
        Opts {
            toml: toml.clone(),
            ..Opts::new(engine)
        },
    );
    let second = Server::start_with(
        &tree,
        Opts {
            toml,
            ..Opts::new(engine)
        },
    );
    for user in ["plainuser", "nosuchuser"] {
        assert_eq!(
            scram_salt(&first, user),
            scram_salt(&second, user),
            "{user}"
        );
    }
    // Without the file each process picks its own secret.
    let third = Server::start(&tree, engine);
    assert_ne!(
        scram_salt(&first, "plainuser"),
        scram_salt(&third, "plainuser")
    );
    // A short secret stops startup.
    std::fs::write(tree.root().join("short.secret"), b"short").unwrap();
    let out = shardpop()
        .args(["serve", "--listen", "127.0.0.1:0", "--engine", "epoll"])
        .arg("--passwd-file")
        .arg(tree.passwd())
        .arg("--mail-location")
        .arg(tree.location())
        .arg("--config")
        .arg({
            let p = tree.root().join("short.toml");
            std::fs::write(
                &p,
                format!(
                    "[auth]\nscram_secret_file = \"{}\"\n",
                    tree.root().join("short.secret").display()
                ),
            )
            .unwrap();
            p
        })
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("a SCRAM secret needs at least 16 bytes")
    );
}
