//! TLS with real clients: STLS (RFC 2595) and implicit TLS (RFC 8314) with
//! `openssl s_client`, curl and Python's poplib; certificate reload on SIGHUP;
//! the STARTTLS injection class; RETR over TLS byte-exact.

#[macro_use]
mod common;
#[path = "common/tls_fixture.rs"]
mod tls_fixture;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Engine, Opts, Server, Tree, crlf, python};
use tls_fixture::TestCa;

struct Setup {
    tree: Tree,
    ca: TestCa,
    leaf: tls_fixture::Leaf,
    server: Server,
    big: Vec<u8>,
}

fn setup(engine: Engine, extra_toml: &str) -> Setup {
    let mut tree = Tree::new();
    tree.user("alice", "pw");
    tree.deliver("alice", 1, b"Subject: hi\n\n.dot\nbody\n");
    let big: Vec<u8> = (0..60_000)
        .flat_map(|i| format!("{}{i:077}\n", if i % 9 == 0 { "." } else { "x" }).into_bytes())
        .collect();
    tree.deliver("alice", 2, &big);
    let ca = TestCa::new(tree.root());
    let leaf = ca.issue(tree.root(), "server");
    let args: Vec<String> = vec![
        "--tls-listen".into(),
        "127.0.0.1:0".into(),
        "--tls-cert".into(),
        leaf.cert.display().to_string(),
        "--tls-key".into(),
        leaf.key.display().to_string(),
    ];
    let toml = format!("[auth]\nfailure_delay_ms = 0\n{extra_toml}");
    let server = Server::start_with(
        &tree,
        Opts {
            shards: 2,
            toml,
            args,
            ..Opts::new(engine)
        },
    );
    Setup {
        tree,
        ca,
        leaf,
        server,
        big,
    }
}

engine_test!(poplib_stls_and_pop3_ssl_fetch_byte_exact);
fn poplib_stls_and_pop3_ssl_fetch_byte_exact(engine: Engine) {
    let s = setup(engine, "");
    let script = format!(
        r#"
import poplib, ssl
ctx = ssl.create_default_context(cafile="{ca}")
p = poplib.POP3("127.0.0.1", {port})
caps = p.capa()
assert "STLS" in caps, caps
p.stls(context=ctx)
caps = p.capa()
assert "STLS" not in caps and "USER" in caps, caps
p.user("alice"); p.pass_("pw")
lines = p.retr(2)[1]
open("{out}", "wb").write(b"".join(l + b"\r\n" for l in lines))
p.quit()
q = poplib.POP3_SSL("localhost", {tls_port}, context=ctx)
q.user("alice"); q.pass_("pw")
print(q.stat())
print(q.retr(1)[1])
q.quit()
"#,
        ca = s.ca.ca_pem.display(),
        port = s.server.addr.port(),
        tls_port = s.server.tls_addr().port(),
        out = s.tree.root().join("got").display(),
    );
    let out = python(&script);
    assert!(
        out.contains("[b'Subject: hi', b'', b'.dot', b'body']"),
        "{out}"
    );
    let got = std::fs::read(s.tree.root().join("got")).unwrap();
    assert!(got == crlf(&s.big), "RETR over STLS differs");
    let log = s.server.wait_log("tls=TLSv1.3");
    assert!(
        log.matches("pop3 login: user=<alice>").count() >= 2,
        "{log}"
    );
}

engine_test!(openssl_s_client_starttls_and_implicit);
fn openssl_s_client_starttls_and_implicit(engine: Engine) {
    let s = setup(engine, "");
    for (mode, port) in [
        ("starttls", s.server.addr.port()),
        ("implicit", s.server.tls_addr().port()),
    ] {
        let mut cmd = Command::new("openssl");
        cmd.args(["s_client", "-quiet", "-verify_return_error", "-CAfile"])
            .arg(&s.ca.ca_pem);
        cmd.args([
            "-connect",
            &format!("127.0.0.1:{port}"),
            "-servername",
            "localhost",
        ]);
        if mode == "starttls" {
            cmd.args(["-starttls", "pop3"]);
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        {
            let stdin = child.stdin.as_mut().unwrap();
            stdin
                .write_all(b"USER alice\r\nPASS pw\r\nSTAT\r\nQUIT\r\n")
                .unwrap();
        }
        let out = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.contains("+OK Logged in.") && stdout.contains("+OK 2 "),
            "{mode}: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

engine_test!(curl_pop3s_and_ssl_reqd);
fn curl_pop3s_and_ssl_reqd(engine: Engine) {
    let s = setup(engine, "");
    let run = |url: String, extra: &[&str]| {
        let out = Command::new("curl")
            .args(["--silent", "--show-error", "--max-time", "20", "--cacert"])
            .arg(&s.ca.ca_pem)
            .args(["--user", "alice:pw"])
            .args(extra)
            .arg(url)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    let list = run(
        format!("pop3s://localhost:{}/", s.server.tls_addr().port()),
        &[],
    );
    assert_eq!(String::from_utf8(list).unwrap().lines().count(), 2);
    let body = run(
        format!("pop3://localhost:{}/2", s.server.addr.port()),
        &["--ssl-reqd"],
    );
    assert!(body == crlf(&s.big), "curl --ssl-reqd RETR differs");
}

engine_test!(bytes_pipelined_after_stls_are_discarded);
fn bytes_pipelined_after_stls_are_discarded(engine: Engine) {
    let s = setup(engine, "");
    // The attack: "STLS\r\nUSER evil\r\n" in one packet; the USER must not
    // be honoured inside the TLS session.
    let script = format!(
        r#"
import socket, ssl
ctx = ssl.create_default_context(cafile="{ca}")
raw = socket.create_connection(("127.0.0.1", {port}))
f = raw.makefile("rb")
f.readline()
raw.sendall(b"STLS\r\nUSER evil\r\n")
print(f.readline())
t = ctx.wrap_socket(raw, server_hostname="localhost")
t.sendall(b"PASS pw\r\n")
print(t.recv(1000))
t.sendall(b"CAPA\r\n")
print(t.recv(1000))
"#,
        ca = s.ca.ca_pem.display(),
        port = s.server.addr.port()
    );
    let out = python(&script);
    assert!(out.contains("+OK Begin TLS negotiation now."), "{out}");
    assert!(
        out.contains("-ERR No username given."),
        "the injected USER was honoured: {out}"
    );
    assert!(
        out.contains("USER") && !out.contains("STLS\\r\\n."),
        "{out}"
    );
}

engine_test!(sighup_reloads_the_certificate_for_new_connections_only);
fn sighup_reloads_the_certificate_for_new_connections_only(engine: Engine) {
    let s = setup(engine, "");
    let fingerprint = |port: u16| {
        let out = Command::new("bash")
            .arg("-c")
            .arg(format!(
                "openssl s_client -connect 127.0.0.1:{port} -servername localhost </dev/null 2>/dev/null | openssl x509 -noout -fingerprint -sha256"
            ))
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap()
    };
    let tls_port = s.server.tls_addr().port();
    let before = fingerprint(tls_port);
    assert!(before.contains("Fingerprint"), "{before}");
    // A session that is open across the reload keeps working.
    let script_start = format!(
        r#"
import poplib, ssl, sys, time
ctx = ssl.create_default_context(cafile="{ca}")
q = poplib.POP3_SSL("localhost", {tls_port}, context=ctx)
q.user("alice"); q.pass_("pw")
print("open", flush=True)
sys.stdin.readline()
print(q.stat())
q.quit()
"#,
        ca = s.ca.ca_pem.display()
    );
    let mut long = Command::new("python3")
        .args(["-c", &script_start])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut reader = std::io::BufReader::new(long.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut reader, &mut line).unwrap();
    assert_eq!(line.trim(), "open");
    let (cert, key) = (s.leaf.cert.clone(), s.leaf.key.clone());
    s.ca.issue_over(&cert, &key);
    s.server.signal(libc::SIGHUP);
    s.server.wait_log("SIGHUP: TLS certificate reloaded");
    let after = fingerprint(tls_port);
    assert!(
        after.contains("Fingerprint") && after != before,
        "{before} / {after}"
    );
    long.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
    let out = long.wait_with_output().unwrap();
    let mut rest = line;
    std::io::Read::read_to_string(&mut reader, &mut rest).unwrap();
    assert!(out.status.success(), "{rest}");
    assert!(rest.contains("(2, "), "{rest}");
    // A broken certificate on reload keeps the good one.
    std::fs::write(&cert, b"garbage").unwrap();
    s.server.signal(libc::SIGHUP);
    s.server
        .wait_log("TLS reload failed; keeping the old certificate");
    assert_eq!(fingerprint(tls_port), after);
}

engine_test!(tls_is_required_by_policy_then_allowed_after_stls);
fn tls_is_required_by_policy_then_allowed_after_stls(engine: Engine) {
    let s = setup(engine, "plaintext_auth = \"tls\"\n");
    let mut c = s.server.connect();
    assert!(
        c.cmd("USER alice")
            .starts_with("-ERR [AUTH] Plaintext authentication disallowed")
    );
    let script = format!(
        r#"
import poplib, ssl
ctx = ssl.create_default_context(cafile="{ca}")
p = poplib.POP3("127.0.0.1", {port})
p.stls(context=ctx)
p.user("alice"); print(p.pass_("pw")); p.quit()
"#,
        ca = s.ca.ca_pem.display(),
        port = s.server.addr.port()
    );
    assert!(python(&script).contains("+OK Logged in."));
    std::thread::sleep(Duration::from_millis(10));
}
