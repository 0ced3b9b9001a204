//! Two shardpop nodes on one mail store behind the real front ends an ISP
//! runs, from Debian's packages, started here on loopback: HAProxy in TCP
//! mode (`send-proxy-v2` and `send-proxy`) and nginx's mail proxy
//! (`proxy_protocol on`, with an `auth_http` responder written for the
//! test). Clients connect from their own loopback addresses (127.0.0.9,
//! ...), so the address the node logs can only have come from the header.

#[macro_use]
mod common;
#[path = "common/tls_fixture.rs"]
mod tls_fixture;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Client, Engine, Opts, Server, Tree, crlf, python};

/// A child process killed and reaped however the test ends.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until something accepts on `port`; `Err` if the child exited
/// first (it could not bind: see [`start_on_free_ports`]).
fn wait_listening(port: u16, what: &str, child: &mut Child) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(15);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("{what} exited at start: {status}"));
        }
        assert!(Instant::now() < deadline, "{what} did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Starts a server on ports [`free_port`] picked, trying again with other
/// ports when it exits at start. A port is free when picked, but the
/// server binds it a moment later, and meanwhile another test's load run,
/// opening thousands of connections, can take it as an outgoing
/// connection's local port.
fn start_on_free_ports<T>(what: &str, mut start: impl FnMut() -> Result<T, String>) -> T {
    let mut failures = Vec::new();
    for _ in 0..5 {
        match start() {
            Ok(started) => return started,
            Err(why) => failures.push(why),
        }
    }
    panic!("{what} did not start: {failures:?}");
}

/// A POP3 connection from the loopback address `from` (so the node can
/// only learn it from the proxy's header), greeting read and checked.
fn connect_from(from: [u8; 4], to: u16) -> Client {
    let mut c = connect_from_silent(from, to);
    let greeting = c.line();
    assert!(greeting.starts_with("+OK"), "{greeting}");
    c
}

fn connect_from_silent(from: [u8; 4], to: u16) -> Client {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.bind(&SocketAddr::from((from, 0)).into()).unwrap();
    socket
        .connect(&SocketAddr::from(([127, 0, 0, 1], to)).into())
        .unwrap();
    Client::from_stream(socket.into())
}

/// A mail tree with `users` users (password "pw") and a few messages each.
fn tree(users: usize) -> Tree {
    let mut tree = Tree::new();
    for i in 0..users {
        let name = format!("u{i}");
        tree.user(&name, "pw");
        for n in 1..=3 {
            tree.deliver(
                &name,
                n,
                format!("Subject: {n}\n\n.dot\nmessage {n} of {name}\n").as_bytes(),
            );
        }
    }
    tree
}

/// Two nodes on the same tree, trusting loopback proxies.
fn two_nodes(tree: &Tree, engine: Engine, toml: &str) -> (Server, Server) {
    let opts = || Opts {
        toml: format!("[server]\nproxy_from = [\"127.0.0.1/32\"]\n{toml}"),
        ..Opts::new(engine)
    };
    (
        Server::start_with(tree, opts()),
        Server::start_with(tree, opts()),
    )
}

/// HAProxy with three frontends: one that balances over both nodes (round
/// robin), and one per node, so a test can pick the node deterministically.
struct Haproxy {
    _process: Reaped,
    both: u16,
    to_a: u16,
    to_b: u16,
}

fn haproxy(dir: &Path, nodes: [&Server; 2], send_proxy: &str) -> Haproxy {
    haproxy_to(dir, [nodes[0].addr, nodes[1].addr], send_proxy)
}

/// [`haproxy`] in front of the given node ports (e.g. implicit-TLS ones).
fn haproxy_to(dir: &Path, nodes: [SocketAddr; 2], send_proxy: &str) -> Haproxy {
    start_on_free_ports("haproxy", || try_haproxy(dir, nodes, send_proxy))
}

fn try_haproxy(dir: &Path, nodes: [SocketAddr; 2], send_proxy: &str) -> Result<Haproxy, String> {
    let (both, to_a, to_b) = (free_port(), free_port(), free_port());
    let cfg = dir.join(format!("haproxy-{both}.cfg"));
    let backend = |name: &str, servers: &[(&str, SocketAddr)]| {
        let mut b = format!(
            "backend {name}\n    balance roundrobin\n    default-server check inter 300ms check-send-proxy {send_proxy}\n"
        );
        for (id, node) in servers {
            b += &format!("    server {id} {node}\n");
        }
        b
    };
    let text = format!(
        "global\n    maxconn 2000\n\
         defaults\n    mode tcp\n    timeout connect 5s\n    timeout client 60s\n    timeout server 60s\n\
         frontend both\n    bind 127.0.0.1:{both}\n    default_backend nodes\n\
         frontend to_a\n    bind 127.0.0.1:{to_a}\n    default_backend node_a\n\
         frontend to_b\n    bind 127.0.0.1:{to_b}\n    default_backend node_b\n\
         {}{}{}",
        backend("nodes", &[("a", nodes[0]), ("b", nodes[1])]),
        backend("node_a", &[("a", nodes[0])]),
        backend("node_b", &[("b", nodes[1])]),
    );
    std::fs::write(&cfg, text).unwrap();
    let child = Command::new("haproxy")
        .args(["-db", "-f"])
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("haproxy (Debian's haproxy package) is installed");
    let mut child = Reaped(child);
    for port in [both, to_a, to_b] {
        wait_listening(port, "haproxy", &mut child.0)?;
    }
    Ok(Haproxy {
        _process: child,
        both,
        to_a,
        to_b,
    })
}

fn both_logs(a: &Server, b: &Server) -> String {
    a.log() + &b.log()
}

fn wait_both(a: &Server, b: &Server, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !both_logs(a, b).contains(needle) {
        assert!(
            Instant::now() < deadline,
            "no {needle:?} in\n{}",
            both_logs(a, b)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

engine_test!(haproxy_passes_the_client_address_and_the_lock_spans_nodes);
fn haproxy_passes_the_client_address_and_the_lock_spans_nodes(engine: Engine) {
    let tree = tree(4);
    let (a, b) = two_nodes(
        &tree,
        engine,
        "[auth]\nplaintext_auth = \"always\"\nfailure_delay_ms = 0\npenalty_failures_before_block = 2\npenalty_block_ms = 60000\n",
    );
    for send_proxy in ["send-proxy-v2", "send-proxy"] {
        let h = haproxy(tree.root(), [&a, &b], send_proxy);
        // The client's own address reaches each node's log.
        for (port, node) in [(h.to_a, &a), (h.to_b, &b)] {
            let mut c = connect_from([127, 0, 0, 9], port);
            c.login("u0", "pw");
            assert!(c.cmd("QUIT").starts_with("+OK"));
            node.wait_log("pop3 login: user=<u0>, rip=127.0.0.9");
        }
        // A login on node A makes a simultaneous one on node B answer
        // [IN-USE]: the lock spans processes.
        let mut first = connect_from([127, 0, 0, 9], h.to_a);
        first.login("u1", "pw");
        let mut second = connect_from([127, 0, 0, 9], h.to_b);
        second.cmd("USER u1");
        let answer = second.cmd("PASS pw");
        assert!(
            answer.starts_with("-ERR [IN-USE]"),
            "{send_proxy}: {answer}"
        );
        assert!(first.cmd("QUIT").starts_with("+OK"));
        // Once A is done, B serves it.
        let mut again = connect_from([127, 0, 0, 9], h.to_b);
        again.login("u1", "pw");
        assert!(again.cmd("QUIT").starts_with("+OK"));
    }
    // HAProxy's health checks carry a header too (v2 LOCAL / v1 UNKNOWN):
    // no node waited for one in vain.
    assert!(
        !both_logs(&a, &b).contains("PROXY header"),
        "{}",
        both_logs(&a, &b)
    );
    // Penalties hit the client, not the proxy: 127.0.0.10 fails on each
    // node until each refuses it; 127.0.0.11 through the same HAProxy is
    // served.
    let h = haproxy(tree.root(), [&a, &b], "send-proxy-v2");
    for port in [h.to_a, h.to_a, h.to_b, h.to_b] {
        let mut c = connect_from([127, 0, 0, 10], port);
        c.cmd("USER u2");
        assert!(c.cmd("PASS wrong").starts_with("-ERR [AUTH]"));
    }
    for port in [h.to_a, h.to_b, h.both] {
        let mut s = connect_from_silent([127, 0, 0, 10], port);
        let greeting = s.line();
        assert!(greeting.contains("Too many failed logins"), "{greeting}");
    }
    let mut ok = connect_from([127, 0, 0, 11], h.both);
    ok.login("u2", "pw");
    wait_both(
        &a,
        &b,
        "login failed (BadCredentials): user=<u2>, rip=127.0.0.10",
    );
}

engine_test!(a_load_run_through_haproxy_has_no_error);
fn a_load_run_through_haproxy_has_no_error(engine: Engine) {
    let tree = tree(16);
    let (a, b) = two_nodes(&tree, engine, "[auth]\nfailure_delay_ms = 0\n");
    let h = haproxy(tree.root(), [&a, &b], "send-proxy-v2");
    let port = h.both;
    let users = tree.root().join("users.txt");
    let list: String = (0..16).map(|i| format!("u{i} pw\n")).collect();
    std::fs::write(&users, list).unwrap();
    for scenario in ["login", "download"] {
        let run = loadtest(&tree, &users, port, &[scenario, "--concurrency", "8"]);
        assert_eq!(run["errors"], 0, "{scenario}: {run}");
        assert_eq!(run["mismatches"], 0, "{scenario}: {run}");
        assert_ne!(run["sessions"], 0, "{scenario}: {run}");
    }
}

/// Runs `loadtest` (2 s, one thread) against 127.0.0.1:`port` with the
/// users in `users` and the extra `args` (the scenario first); returns its
/// JSON line.
fn loadtest(tree: &Tree, users: &Path, port: u16, args: &[&str]) -> serde_json::Value {
    let out = Command::new(loadtest_binary())
        .args(args)
        .args(["--addr", &format!("127.0.0.1:{port}")])
        .arg("--users")
        .arg(users)
        .args(["--mail-location", &tree.location()])
        .args(["--duration", "2", "--warmup", "0"])
        .args(["--threads", "1", "--no-progress"])
        .output()
        .unwrap();
    let json = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{json}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(json.lines().last().unwrap()).unwrap()
}

fn loadtest_binary() -> PathBuf {
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_shardpop"));
    let path = exe.with_file_name("loadtest");
    assert!(
        path.exists(),
        "{} is built by `cargo test --workspace` (or `cargo build -p loadtest`)",
        path.display()
    );
    path
}

/// nginx's `auth_http` protocol: a small HTTP responder that sends every
/// user to `node` after checking the password, and remembers what nginx
/// said the client's address was.
fn auth_http(dir: &Path, node: SocketAddr) -> (Reaped, u16) {
    start_on_free_ports("auth_http responder", || try_auth_http(dir, node))
}

fn try_auth_http(dir: &Path, node: SocketAddr) -> Result<(Reaped, u16), String> {
    let port = free_port();
    let script = format!(
        r#"
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        user = self.headers.get("Auth-User", "")
        ok = self.headers.get("Auth-Pass", "") == "pw"
        with open("{dir}/auth_http.log", "a") as f:
            f.write("user=%s client=%s ok=%s\n" % (user, self.headers.get("Client-IP"), ok))
        self.send_response(200)
        if ok:
            self.send_header("Auth-Status", "OK")
            self.send_header("Auth-Server", "{ip}")
            self.send_header("Auth-Port", "{port_b}")
        else:
            self.send_header("Auth-Status", "Invalid login or password")
            self.send_header("Auth-Wait", "0")
        self.end_headers()
    def log_message(self, *a):
        pass
http.server.HTTPServer(("127.0.0.1", {port}), H).serve_forever()
"#,
        dir = dir.display(),
        ip = node.ip(),
        port_b = node.port(),
    );
    let mut child = Reaped(
        Command::new("python3")
            .args(["-c", &script])
            .spawn()
            .unwrap(),
    );
    wait_listening(port, "auth_http responder", &mut child.0)?;
    Ok((child, port))
}

fn nginx(dir: &Path, auth_port: u16) -> (Reaped, u16) {
    start_on_free_ports("nginx", || try_nginx(dir, auth_port))
}

fn try_nginx(dir: &Path, auth_port: u16) -> Result<(Reaped, u16), String> {
    let port = free_port();
    let conf = dir.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "load_module /usr/lib/nginx/modules/ngx_mail_module.so;\n\
             daemon off;\nmaster_process off;\n\
             error_log {dir}/nginx-error.log info;\npid {dir}/nginx.pid;\n\
             events {{ worker_connections 256; }}\n\
             mail {{\n\
             \x20   server_name shardpop-test;\n\
             \x20   auth_http 127.0.0.1:{auth_port}/auth;\n\
             \x20   proxy_pass_error_message on;\n\
             \x20   server {{\n\
             \x20       listen 127.0.0.1:{port};\n\
             \x20       protocol pop3;\n\
             \x20       pop3_auth plain;\n\
             \x20       proxy_protocol on;\n\
             \x20   }}\n\
             }}\n",
            dir = dir.display()
        ),
    )
    .unwrap();
    let mut child = Reaped(
        Command::new("nginx")
            .arg("-p")
            .arg(dir)
            .arg("-e")
            .arg(dir.join("nginx-error.log"))
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nginx with libnginx-mod-mail is installed"),
    );
    wait_listening(port, "nginx", &mut child.0)?;
    Ok((child, port))
}

engine_test!(nginx_mail_proxy_reads_mail_byte_exact_and_passes_the_address);
fn nginx_mail_proxy_reads_mail_byte_exact_and_passes_the_address(engine: Engine) {
    let tree = tree(2);
    let big: Vec<u8> = (0..20_000)
        .flat_map(|i| format!("{}line {i}\n", if i % 7 == 0 { "." } else { "" }).into_bytes())
        .collect();
    tree.deliver("u1", 9, &big);
    let (a, _b) = two_nodes(
        &tree,
        engine,
        "[auth]\nplaintext_auth = \"always\"\nfailure_delay_ms = 0\n",
    );
    let (_auth, auth_port) = auth_http(tree.root(), a.addr);
    let (_nginx, port) = nginx(tree.root(), auth_port);
    // A real client through nginx: every message byte-exact.
    let out = python(&format!(
        r#"
import poplib
p = poplib.POP3("127.0.0.1", {port}, timeout=20)
p.user("u1"); p.pass_("pw")
count, _ = p.stat()
for i in range(1, count + 1):
    resp, lines, octets = p.retr(i)
    body = b"\r\n".join(lines) + b"\r\n"
    open("{dir}/got-%d" % i, "wb").write(body)
print(count)
p.quit()
"#,
        dir = tree.root().display()
    ));
    assert_eq!(out.trim(), "4");
    let mut files: Vec<PathBuf> = std::fs::read_dir(tree.maildir("u1").join("cur"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    for (i, file) in files.iter().enumerate() {
        let got = std::fs::read(tree.root().join(format!("got-{}", i + 1))).unwrap();
        assert!(
            got == crlf(&std::fs::read(file).unwrap()),
            "message {} differs",
            i + 1
        );
    }
    // The node sees the client's address, not nginx's.
    let mut c = connect_from([127, 0, 0, 12], port);
    c.cmd("USER u0");
    assert!(c.cmd("PASS pw").starts_with("+OK"));
    assert!(c.cmd("QUIT").starts_with("+OK"));
    a.wait_log("pop3 login: user=<u0>, rip=127.0.0.12");
    let said = std::fs::read_to_string(tree.root().join("auth_http.log")).unwrap();
    assert!(said.contains("user=u0 client=127.0.0.12 ok=True"), "{said}");
    // A wrong password is refused by the auth responder; the node never
    // hears of it.
    let mut bad = connect_from([127, 0, 0, 13], port);
    bad.cmd("USER u0");
    assert!(bad.cmd("PASS nope").starts_with("-ERR"));
}

engine_test!(nodes_taking_turns_on_one_mailbox_agree_on_every_message);
fn nodes_taking_turns_on_one_mailbox_agree_on_every_message(engine: Engine) {
    let tree = tree(1);
    // Clients straight to the nodes (no proxy in between).
    let (a, b) = (Server::start(&tree, engine), Server::start(&tree, engine));
    let mut deleted_uidls: Vec<String> = Vec::new();
    for turn in 0..40 {
        let next = 100 + turn;
        // Another program delivers between sessions, into new/.
        let name = format!("{}.M{next}.delivery", 1_700_000_000 + next);
        std::fs::write(
            tree.maildir("u0").join("new").join(&name),
            format!("Subject: {next}\n\nbody {next}\n"),
        )
        .unwrap();
        let node = if turn % 2 == 0 { &a } else { &b };
        let mut c = node.connect();
        c.login("u0", "pw");
        let stat = c.cmd("STAT");
        let count: usize = stat.split(' ').nth(1).unwrap().parse().unwrap();
        let on_disk = tree.files("u0").len();
        assert_eq!(count, on_disk, "turn {turn}: {stat}");
        assert!(c.cmd("UIDL").starts_with("+OK"));
        let (listing, _) = c.multiline();
        let uidls: Vec<String> = String::from_utf8(listing)
            .unwrap()
            .lines()
            .map(|l| l.split(' ').nth(1).unwrap().to_string())
            .collect();
        let unique: std::collections::HashSet<_> = uidls.iter().collect();
        assert_eq!(unique.len(), uidls.len(), "turn {turn}: a UIDL twice");
        for gone in &deleted_uidls {
            assert!(!uidls.contains(gone), "turn {turn}: {gone} came back");
        }
        // Every third turn deletes the oldest message.
        if turn % 3 == 0 {
            assert!(c.cmd("DELE 1").starts_with("+OK"));
            deleted_uidls.push(uidls[0].clone());
        }
        assert!(c.cmd("QUIT").starts_with("+OK"));
    }
}

engine_test!(tls_sessions_resume_on_either_node_behind_haproxy);
/// Issue 14's cluster case: two nodes sharing a ticket key file behind
/// HAProxy's round robin, so a client's next connection lands on the other
/// node; a real load generator that keeps its sessions resumes (nearly)
/// every one of them wherever it lands.
fn tls_sessions_resume_on_either_node_behind_haproxy(engine: Engine) {
    let tree = tree(8);
    let ca = tls_fixture::TestCa::new(tree.root());
    let leaf = ca.issue(tree.root(), "node");
    let keys = tree.root().join("tickets.key");
    std::fs::write(&keys, format!("{}\n", "5a".repeat(64))).unwrap();
    let opts = || Opts {
        toml: format!(
            "[server]\nproxy_from = [\"127.0.0.1/32\"]\n[auth]\nfailure_delay_ms = 0\n\
             [tls]\nticket_key_file = \"{}\"\n",
            keys.display()
        ),
        args: leaf.serve_args(true),
        ..Opts::new(engine)
    };
    let (a, b) = (
        Server::start_with(&tree, opts()),
        Server::start_with(&tree, opts()),
    );
    let h = haproxy_to(tree.root(), [a.tls_addr(), b.tls_addr()], "send-proxy-v2");
    let users = tree.root().join("users.txt");
    let list: String = (0..8).map(|i| format!("u{i} pw\n")).collect();
    std::fs::write(&users, list).unwrap();
    let ca_pem = ca.ca_pem.display().to_string();
    let args = [
        "login",
        "--concurrency",
        "4",
        "--tls",
        "--tls-resume",
        "--tls-ca",
        &ca_pem,
    ];
    let run = loadtest(&tree, &users, h.both, &args);
    assert_eq!(run["errors"], 0, "{run}");
    let full = run["handshakes"]["full"].as_u64().unwrap();
    let resumed = run["handshakes"]["resumed"].as_u64().unwrap();
    assert!(full >= 1 && full + resumed >= 20, "{run}");
    assert!(
        resumed * 100 >= 95 * (full + resumed),
        "only {resumed} of {} handshakes resumed: {run}",
        full + resumed
    );
    // Both nodes served logins: the sessions did cross between them.
    for node in [&a, &b] {
        assert!(node.log().contains("pop3 login: user=<u"), "{}", node.log());
    }
}
