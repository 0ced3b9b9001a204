//! Operating shardpop: the fail2ban filter and jail against log lines a real
//! server wrote, the systemd notify protocol of `serve`, the unit file, and
//! `check-config`.

#[macro_use]
mod common;

use std::io::Write;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use base64::Engine as _;
use common::{Client, Engine, Opts, Server, Tree};

const FILTER: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/dist/fail2ban/filter.d/shardpop.conf"
);

fn run(command: &mut Command) -> Output {
    command.output().unwrap_or_else(|e| {
        panic!("cannot run {command:?}: {e} (.ci/run installs the Debian packages)")
    })
}

/// Failed logins of three kinds, one success, and a user name that tries to
/// smuggle another address into the line; returns how many failed.
fn failures_and_a_success(server: &Server) -> usize {
    let mut c = server.connect();
    assert_eq!(c.cmd("USER alice"), "+OK");
    assert!(c.cmd("PASS wrong").starts_with("-ERR"));
    assert_eq!(c.cmd("USER nobody"), "+OK");
    assert!(c.cmd("PASS whatever").starts_with("-ERR"));
    let sneaky =
        base64::engine::general_purpose::STANDARD.encode(b"\0x>, rip=6.6.6.6, shard=0\0pw");
    assert!(c.cmd(&format!("AUTH PLAIN {sneaky}")).starts_with("-ERR"));
    c.login("alice", "secret");
    assert!(c.cmd("QUIT").starts_with("+OK"));
    server.wait_log("pop3 logout: user=<alice>");
    3
}

fn check_fail2ban(log: &str, failures: usize) {
    let failed_lines = log
        .lines()
        .filter(|l| l.contains("pop3 login failed (BadCredentials)"))
        .count();
    assert_eq!(failed_lines, failures, "{log}");
    assert!(log.contains("pop3 login: user=<alice>"), "{log}");
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(log.as_bytes()).unwrap();
    let path = file.path();
    let summary = run(Command::new("fail2ban-regex").arg(path).arg(FILTER));
    let text = String::from_utf8_lossy(&summary.stdout);
    assert!(summary.status.success(), "{text}");
    let lines = log.lines().count();
    assert!(
        text.contains(&format!(
            "Lines: {lines} lines, 0 ignored, {failures} matched"
        )),
        "{text}\n{log}"
    );
    // The address fail2ban would ban, once per failure: always the real
    // one, never the one inside the user name.
    let ips = run(Command::new("fail2ban-regex")
        .args(["-o", "ip"])
        .arg(path)
        .arg(FILTER));
    let ips = String::from_utf8_lossy(&ips.stdout);
    let ips: Vec<&str> = ips.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(ips, vec!["127.0.0.1"; failures], "{log}");
}

fn tree() -> Tree {
    let mut tree = Tree::new();
    tree.user("alice", "secret");
    tree
}

fn fail2ban_matches_every_failure_and_no_success(engine: Engine) {
    let tree = tree();
    let server = Server::start(&tree, engine);
    let failures = failures_and_a_success(&server);
    check_fail2ban(&server.log(), failures);
}
engine_test!(fail2ban_matches_every_failure_and_no_success);

fn fail2ban_matches_json_logs_too(engine: Engine) {
    let tree = tree();
    let mut opts = Opts::new(engine);
    opts.args = vec!["--log-format".into(), "json".into()];
    let server = Server::start_with(&tree, opts);
    let failures = failures_and_a_success(&server);
    let log = server.log();
    for line in log.lines() {
        assert!(
            line.starts_with('{') && line.ends_with('}'),
            "not JSON: {line}"
        );
    }
    // The login and logout lines say the same as in text, as `message`.
    for text in [
        "\"message\":\"pop3 login: user=<alice>, rip=127.0.0.1, shard=",
        "\"message\":\"pop3 logout: user=<alice>, rip=127.0.0.1, shard=",
        "\"message\":\"pop3 login failed (BadCredentials): user=<alice>, rip=127.0.0.1, shard=",
    ] {
        assert!(log.contains(text), "{text}\n{log}");
    }
    check_fail2ban(&log, failures);
}
engine_test!(fail2ban_matches_json_logs_too);

fn serve_notifies_systemd(engine: Engine) {
    let tree = tree();
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut opts = Opts::new(engine);
    let path: &'static str = Box::leak(socket_path.to_str().unwrap().to_string().into_boxed_str());
    opts.env = vec![("NOTIFY_SOCKET", path)];
    let server = Server::start_with(&tree, opts);
    let mut buf = [0u8; 512];
    let n = socket.recv(&mut buf).unwrap();
    let ready = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(ready.starts_with("READY=1\n"), "{ready}");
    assert!(
        ready.contains(&format!("MAINPID={}\n", server.pid())),
        "{ready}"
    );
    // READY comes after the listeners are bound: a client gets in.
    let mut c = Client::connect(server.addr);
    assert!(c.cmd("QUIT").starts_with("+OK"));
    let status = server.terminate();
    assert!(status.success(), "{status:?}");
    let n = socket.recv(&mut buf).unwrap();
    let stopping = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(stopping.starts_with("STOPPING=1\n"), "{stopping}");
}
engine_test!(serve_notifies_systemd);

#[test]
fn the_unit_file_verifies() {
    // systemd-analyze checks every directive; point ExecStart at the binary
    // under test so the executables exist.
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/dist/shardpop.service"
    ))
    .unwrap();
    assert!(unit.contains("\nType=notify\n"));
    let unit = unit.replace("/usr/local/bin/shardpop", env!("CARGO_BIN_EXE_shardpop"));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shardpop.service");
    std::fs::write(&path, unit).unwrap();
    let out = run(Command::new("systemd-analyze").arg("verify").arg(&path));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // Nothing about our unit (complaints about the host's own units, if
    // any, are not ours to fix).
    assert!(!stderr.contains("shardpop.service"), "{stderr}");
}

fn check_config(args: &[&str]) -> Output {
    run(Command::new(env!("CARGO_BIN_EXE_shardpop"))
        .arg("check-config")
        .args(args))
}

fn config_file(dir: &Path, text: &str) -> String {
    let path = dir.join("shardpop.toml");
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}

#[test]
fn check_config_prints_the_effective_configuration() {
    let tree = tree();
    let passwd = tree.passwd();
    let file = config_file(
        tree.root(),
        &format!(
            "[server]\nlisten = [\"127.0.0.1:1110\"]\nshards = 3\n\n[auth]\npasswd_file = {:?}\n\n[mail]\nlocation = {:?}\n",
            passwd.to_str().unwrap(),
            tree.location()
        ),
    );
    let out = check_config(&[
        "-c",
        &file,
        "--proxy-from",
        "10.20.0.0/16",
        "--proxy-from",
        "2001:db8::/32",
        "--metrics-listen",
        "127.0.0.1:9110",
        "--workers",
        "5",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("3 shard(s), 5 worker(s)"), "{stdout}");
    assert!(stdout.contains("listen = [\"127.0.0.1:1110\"]"), "{stdout}");
    assert!(
        stdout.contains("proxy_from = [\"10.20.0.0/16\", \"2001:db8::/32\"]"),
        "{stdout}"
    );
    assert!(
        stdout.contains("[metrics]\nlisten = \"127.0.0.1:9110\""),
        "{stdout}"
    );
    // Defaults are printed too.
    assert!(stdout.contains("line_bytes_max = 255"), "{stdout}");
    assert!(
        stdout.contains("proxy_header_timeout_ms = 5000"),
        "{stdout}"
    );
    // What it prints is itself a valid configuration.
    let again = config_file(tree.root(), stdout.as_ref());
    assert!(check_config(&["-c", &again]).status.success());
}

#[test]
fn check_config_names_file_line_and_reason() {
    let tree = tree();
    let base = format!(
        "[auth]\npasswd_file = {:?}\n[mail]\nlocation = {:?}\n",
        tree.passwd().to_str().unwrap(),
        tree.location()
    );
    let cases = [
        // Not TOML.
        (format!("{base}[limits]\nline_bytes_max = \n"), 6, "string"),
        // Unknown key.
        (
            format!("{base}[limits]\nline_bytez_max = 100\n"),
            6,
            "unknown field",
        ),
        // Wrong type.
        (
            format!("{base}[server]\nproxy_from = [\"10.0.0.0/99\"]\n"),
            6,
            "",
        ),
        // Parses, does not validate.
        (
            format!("{base}[limits]\n\nline_bytes_max = 9\n"),
            7,
            "line_bytes_max must be between",
        ),
        (
            format!("{base}[server]\nproxy_ssl_counts_as_tls = true\n"),
            6,
            "needs server.proxy_from",
        ),
    ];
    for (text, line, reason) in cases {
        let file = config_file(tree.root(), &text);
        let out = check_config(&["-c", &file]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{text}");
        assert!(out.stdout.is_empty(), "{text}");
        assert!(
            stderr.contains(&format!("{file}:{line}:")),
            "{text}\n{stderr}"
        );
        assert!(stderr.contains(reason), "{text}\n{stderr}");
    }
    // A missing passdb is caught as serve would catch it.
    let file = config_file(
        tree.root(),
        "[auth]\npasswd_file = \"/nonexistent/users\"\n[mail]\nlocation = \"maildir:~/Maildir\"\n",
    );
    let out = check_config(&["-c", &file]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/users"));
}

/// Kills a `serve` that was expected to fail, should it start after all.
struct Reap(std::process::Child);

impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A second `serve` on `addr` over the same tree (`extra` flags first),
/// stderr piped; reaped however the test ends.
fn second_serve(tree: &Tree, engine: Engine, addr: std::net::SocketAddr, extra: &[&str]) -> Reap {
    let child = Command::new(env!("CARGO_BIN_EXE_shardpop"))
        .args(["serve", "--engine", engine.arg()])
        .args(extra)
        .arg("--listen")
        .arg(addr.to_string())
        .arg("--passwd-file")
        .arg(tree.passwd())
        .arg("--mail-location")
        .arg(tree.location())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    Reap(child)
}

fn a_second_serve_on_the_same_address_fails(engine: Engine) {
    let tree = tree();
    let first = Server::start(&tree, engine);
    let mut second = second_serve(&tree, engine, first.addr, &[]);
    let deadline = std::time::Instant::now() + common::IO_TIMEOUT;
    let status = loop {
        if let Some(status) = second.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "a second serve on {} kept running",
            first.addr
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut second.0.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success());
    assert!(
        stderr.contains(&format!("cannot listen on {}", first.addr))
            && stderr.contains("another process already listens"),
        "{stderr}"
    );
    // The first one never noticed.
    let mut c = first.connect();
    assert!(c.cmd("QUIT").starts_with("+OK"));
}
engine_test!(a_second_serve_on_the_same_address_fails);

/// A zero-downtime restart: the new process binds beside the old one with
/// --takeover, the old one is told to stop and drains, and no client is
/// refused meanwhile.
fn takeover_restarts_without_refusing_a_client(engine: Engine) {
    let tree = tree();
    let old = Server::start(&tree, engine);
    let mut new = second_serve(&tree, engine, old.addr, &["--takeover"]);
    // Started: it accepts beside the old one (the kernel spreads new
    // connections over both).
    let deadline = std::time::Instant::now() + common::IO_TIMEOUT;
    let stderr = new.0.stderr.take().unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stderr));
    loop {
        assert!(
            std::time::Instant::now() < deadline,
            "the new server did not start"
        );
        match lines.next() {
            Some(Ok(line)) if line.contains("listening") => break,
            Some(_) => {}
            None => panic!("the new server exited: {:?}", new.0.try_wait()),
        }
    }
    // A session on the old process survives its SIGTERM (grace period).
    let mut in_progress = old.connect();
    in_progress.cmd("USER alice");
    old.signal(libc::SIGTERM);
    // Once the old process has closed its listeners, every new client is
    // served by the new one. (Clients the kernel had queued on the old
    // listeners at that instant are reset unless net.ipv4.tcp_migrate_req
    // is 1: docs/operations.md.)
    let deadline = std::time::Instant::now() + common::IO_TIMEOUT;
    while old.log().matches("shutting down").count() < 2 {
        assert!(std::time::Instant::now() < deadline, "{}", old.log());
        std::thread::sleep(Duration::from_millis(10));
    }
    // Both shards said so; io_uring closes a listener at its cancelled
    // accept's last completion, a moment later.
    std::thread::sleep(Duration::from_millis(300));
    let addr = old.addr;
    for _ in 0..50 {
        let mut c = common::Client::connect(addr);
        assert!(c.cmd("QUIT").starts_with("+OK"));
    }
    assert!(
        in_progress.cmd("PASS secret").starts_with("+OK"),
        "the old session was cut"
    );
    assert!(in_progress.cmd("QUIT").starts_with("+OK"));
    assert!(
        new.0.try_wait().unwrap().is_none(),
        "the new server stopped"
    );
}
engine_test!(takeover_restarts_without_refusing_a_client);
