//! The `/metrics` endpoint's real output, fetched over HTTP, passes
//! Prometheus's own linter (`promtool check metrics`, Debian's `prometheus`).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use shardpop::metrics::{LoginResult, Metrics, TlsResult, serve};

fn scrape(addr: std::net::SocketAddr) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: shardpop\r\nAccept: text/plain\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    body.to_string()
}

#[test]
fn promtool_accepts_the_exposition() {
    let metrics = Metrics::new(3, "epoll");
    for shard in 0..3 {
        let c = metrics.shard(shard);
        c.connection_accepted();
        c.login(LoginResult::Ok, Duration::from_millis(4));
        c.login(LoginResult::Failed, Duration::from_secs(2));
        c.retr(12_345, Duration::from_millis(3));
        c.deleted(1);
        c.auth_penalty();
        c.tls_handshake(TlsResult::Ok);
    }
    metrics.watch_worker_queue(|| 2);
    let server = serve("127.0.0.1:0".parse().unwrap(), metrics).unwrap();
    let body = scrape(server.local_addr());
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus; .ci/run installs it)");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // promtool exits non-zero on errors and prints lint problems (naming,
    // units, missing HELP) without failing: accept neither.
    assert!(out.status.success(), "{report}\n{body}");
    assert!(report.trim().is_empty(), "{report}\n{body}");
    assert!(body.contains("shardpop_retr_bytes_total{shard=\"2\"} 12345"));
}
