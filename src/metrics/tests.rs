use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use super::http::{CONNECTIONS_MAX, REQUEST_BYTES_MAX, Route, route};
use super::*;

/// The value of the one sample line that starts with `series ` exactly.
fn sample(text: &str, series: &str) -> f64 {
    let prefix = format!("{series} ");
    let lines: Vec<&str> = text.lines().filter(|l| l.starts_with(&prefix)).collect();
    assert_eq!(lines.len(), 1, "{series} in\n{text}");
    lines[0][prefix.len()..].parse().unwrap()
}

fn traffic() -> Arc<Metrics> {
    let m = Metrics::new(2, "epoll");
    let (a, b) = (m.shard(0), m.shard(1));
    for _ in 0..3 {
        a.connection_accepted();
    }
    a.connection_closed();
    b.connection_accepted();
    a.login(LoginResult::Ok, Duration::from_millis(3));
    b.login(LoginResult::Ok, Duration::from_millis(7));
    b.login(LoginResult::Failed, Duration::from_secs(2));
    b.login(LoginResult::InUse, Duration::from_micros(100));
    a.retr(1000, Duration::from_millis(1));
    a.retr(24, Duration::from_millis(20));
    b.retr(5, Duration::from_secs(30));
    b.deleted(4);
    b.auth_penalty();
    a.tls_handshake(TlsResult::Ok);
    a.tls_handshake(TlsResult::Failed);
    m.watch_worker_queue(|| 17);
    m
}

#[test]
fn counters_render_per_shard() {
    let text = traffic().render();
    assert_eq!(
        sample(&text, "shardpop_connections_accepted_total{shard=\"0\"}"),
        3.0
    );
    assert_eq!(
        sample(&text, "shardpop_connections_accepted_total{shard=\"1\"}"),
        1.0
    );
    assert_eq!(sample(&text, "shardpop_connections_open{shard=\"0\"}"), 2.0);
    assert_eq!(sample(&text, "shardpop_connections_open{shard=\"1\"}"), 1.0);
    let logins = |shard: u32, result: &str| {
        sample(
            &text,
            &format!("shardpop_logins_total{{shard=\"{shard}\",result=\"{result}\"}}"),
        )
    };
    assert_eq!(logins(0, "ok"), 1.0);
    assert_eq!(logins(1, "ok"), 1.0);
    assert_eq!(logins(1, "failed"), 1.0);
    assert_eq!(logins(1, "in_use"), 1.0);
    assert_eq!(logins(0, "rejected"), 0.0);
    assert_eq!(logins(1, "temp_fail"), 0.0);
    assert_eq!(
        sample(&text, "shardpop_retr_messages_total{shard=\"0\"}"),
        2.0
    );
    assert_eq!(
        sample(&text, "shardpop_retr_bytes_total{shard=\"0\"}"),
        1024.0
    );
    assert_eq!(sample(&text, "shardpop_retr_bytes_total{shard=\"1\"}"), 5.0);
    assert_eq!(
        sample(&text, "shardpop_deleted_messages_total{shard=\"1\"}"),
        4.0
    );
    assert_eq!(
        sample(&text, "shardpop_auth_penalties_total{shard=\"1\"}"),
        1.0
    );
    assert_eq!(
        sample(
            &text,
            "shardpop_tls_handshakes_total{shard=\"0\",result=\"failed\"}"
        ),
        1.0
    );
    assert_eq!(sample(&text, "shardpop_worker_queue_depth"), 17.0);
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        sample(
            &text,
            &format!("shardpop_build_info{{version=\"{version}\",engine=\"epoll\"}}")
        ),
        1.0
    );
}

#[test]
fn histograms_are_summed_over_shards_and_cumulative() {
    let text = traffic().render();
    let login = |le: &str| {
        sample(
            &text,
            &format!("shardpop_login_duration_seconds_bucket{{le=\"{le}\"}}"),
        )
    };
    assert_eq!(login("0.0005"), 1.0); // the 100 µs IN-USE
    assert_eq!(login("0.005"), 2.0); // + 3 ms
    assert_eq!(login("0.01"), 3.0); // + 7 ms
    assert_eq!(login("1"), 3.0);
    assert_eq!(login("2.5"), 4.0); // + the 2 s failure
    assert_eq!(login("+Inf"), 4.0);
    assert_eq!(sample(&text, "shardpop_login_duration_seconds_count"), 4.0);
    let sum = sample(&text, "shardpop_login_duration_seconds_sum");
    assert!((sum - 2.0101).abs() < 1e-9, "{sum}");
    assert_eq!(
        sample(&text, "shardpop_retr_duration_seconds_bucket{le=\"10\"}"),
        2.0
    );
    assert_eq!(
        sample(&text, "shardpop_retr_duration_seconds_bucket{le=\"+Inf\"}"),
        3.0
    );
    assert_eq!(sample(&text, "shardpop_retr_duration_seconds_count"), 3.0);
}

#[test]
fn every_family_has_help_and_type_once() {
    let text = Metrics::new(1, "uring").render();
    for (family, kind) in [
        ("shardpop_connections_accepted_total", "counter"),
        ("shardpop_connections_open", "gauge"),
        ("shardpop_logins_total", "counter"),
        ("shardpop_login_duration_seconds", "histogram"),
        ("shardpop_retr_messages_total", "counter"),
        ("shardpop_retr_bytes_total", "counter"),
        ("shardpop_retr_duration_seconds", "histogram"),
        ("shardpop_deleted_messages_total", "counter"),
        ("shardpop_auth_penalties_total", "counter"),
        ("shardpop_logins_on_shard_total", "counter"),
        ("shardpop_worker_queue_depth", "gauge"),
        ("shardpop_tls_handshakes_total", "counter"),
        ("shardpop_build_info", "gauge"),
    ] {
        let type_line = format!("# TYPE {family} {kind}\n");
        assert_eq!(text.matches(&type_line).count(), 1, "{type_line}");
        assert_eq!(
            text.matches(&format!("# HELP {family} ")).count(),
            1,
            "{family}"
        );
    }
    // No probe: the queue reads 0 rather than vanishing.
    assert_eq!(sample(&text, "shardpop_worker_queue_depth"), 0.0);
    assert!(text.ends_with('\n'));
}

#[test]
fn label_values_are_escaped() {
    assert_eq!(
        render::escape_for_test("a\"b\\c\nd"),
        "a\\\"b\\\\c\\nd".to_string()
    );
}

#[test]
fn a_scrape_racing_the_shards_stays_consistent() {
    let m = Metrics::new(1, "epoll");
    let writer = {
        let m = m.clone();
        std::thread::spawn(move || {
            for i in 0..20_000u64 {
                let c = m.shard(0);
                c.connection_accepted();
                c.login(LoginResult::Ok, Duration::from_micros(i % 5000));
                c.connection_closed();
            }
        })
    };
    while !writer.is_finished() {
        let text = m.render();
        let inf = sample(&text, "shardpop_login_duration_seconds_bucket{le=\"+Inf\"}");
        assert_eq!(inf, sample(&text, "shardpop_login_duration_seconds_count"));
        assert!(sample(&text, "shardpop_connections_open{shard=\"0\"}") <= 1.0);
    }
    writer.join().unwrap();
    let text = m.render();
    assert_eq!(
        sample(&text, "shardpop_login_duration_seconds_count"),
        20_000.0
    );
    assert_eq!(sample(&text, "shardpop_connections_open{shard=\"0\"}"), 0.0);
}

#[test]
fn cells_of_different_shards_do_not_share_a_cache_line() {
    let m = Metrics::new(2, "epoll");
    let a = m.shard(0) as *const ShardCells as usize;
    let b = m.shard(1) as *const ShardCells as usize;
    assert!(b.abs_diff(a) >= std::mem::size_of::<ShardCells>());
    assert_eq!(a % 64, 0);
    assert_eq!(b % 64, 0);
}

#[test]
fn routes() {
    let cases: &[(&[u8], Route)] = &[
        (b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", Route::Metrics),
        (b"GET /metrics HTTP/1.0\r\n\r\n", Route::Metrics),
        (b"GET /metrics?x=1 HTTP/1.1\r\n\r\n", Route::Metrics),
        (b"GET / HTTP/1.1\r\n\r\n", Route::NotFound),
        (b"GET /metrics/ HTTP/1.1\r\n\r\n", Route::NotFound),
        (b"GET /Metrics HTTP/1.1\r\n\r\n", Route::NotFound),
        (b"POST /metrics HTTP/1.1\r\n\r\n", Route::NotFound),
        (b"HEAD /metrics HTTP/1.1\r\n\r\n", Route::NotFound),
        (b"GET /metrics HTTP/1.1\r\n", Route::Partial),
        (b"GET /met", Route::Partial),
        (b"", Route::Partial),
        (b"\x16\x03\x01\x00\xa5", Route::BadRequest),
        (b"GET /metrics SMTP/1.0\r\n\r\n", Route::BadRequest),
        (b"USER alice\r\n", Route::BadRequest),
    ];
    for &(input, expected) in cases {
        assert_eq!(
            route(input),
            expected,
            "{:?}",
            String::from_utf8_lossy(input)
        );
    }
    let mut many = b"GET /metrics HTTP/1.1\r\n".to_vec();
    for i in 0..40 {
        many.extend_from_slice(format!("X-{i}: y\r\n").as_bytes());
    }
    many.extend_from_slice(b"\r\n");
    assert_eq!(route(&many), Route::TooLarge);
    let mut huge = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
    huge.resize(REQUEST_BYTES_MAX, b'a');
    assert_eq!(route(&huge), Route::TooLarge);
}

fn endpoint() -> (MetricsServer, Arc<Metrics>) {
    let m = traffic();
    let server = serve("127.0.0.1:0".parse().unwrap(), m.clone()).unwrap();
    (server, m)
}

/// Sends `request`, returns the whole response (the server closes).
fn exchange(server: &MetricsServer, request: &[u8]) -> String {
    let mut s = TcpStream::connect(server.local_addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn endpoint_serves_metrics_and_404s_the_rest() {
    let (server, _m) = endpoint();
    let ok = exchange(&server, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
    assert!(ok.contains("\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"));
    let (head, body) = ok.split_once("\r\n\r\n").unwrap();
    assert!(head.contains(&format!("Content-Length: {}\r\n", body.len())));
    assert_eq!(sample(body, "shardpop_worker_queue_depth"), 17.0);
    for request in [
        &b"GET / HTTP/1.1\r\n\r\n"[..],
        b"POST /metrics HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc",
        b"GET /favicon.ico HTTP/1.0\r\n\r\n",
    ] {
        let reply = exchange(&server, request);
        assert!(reply.starts_with("HTTP/1.1 404 Not Found\r\n"), "{reply}");
    }
    let garbage = exchange(&server, b"\x00\x01\x02 hello\r\n\r\n");
    assert!(garbage.starts_with("HTTP/1.1 400 "), "{garbage}");
    let mut huge = b"GET /metrics HTTP/1.1\r\nX-Big: ".to_vec();
    huge.resize(REQUEST_BYTES_MAX * 4, b'a');
    let mut s = TcpStream::connect(server.local_addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // The server answers once it has its cap and closes; the rest of our
    // write may then fail, which is fine.
    let _ = s.write_all(&huge);
    let mut reply = String::new();
    let _ = s.read_to_string(&mut reply);
    assert!(reply.starts_with("HTTP/1.1 431 "), "{reply}");
}

#[test]
fn slow_and_idle_clients_cannot_hold_the_endpoint() {
    let (server, _m) = endpoint();
    // Fill every slot with clients that never finish their request, one of
    // them trickling a byte at a time (slowloris).
    let mut idle: Vec<TcpStream> = (0..CONNECTIONS_MAX - 1)
        .map(|_| TcpStream::connect(server.local_addr()).unwrap())
        .collect();
    let mut trickle = TcpStream::connect(server.local_addr()).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    // Over the limit: closed unanswered, immediately.
    let mut extra = TcpStream::connect(server.local_addr()).unwrap();
    extra
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let _ = extra.write_all(b"GET /metrics HTTP/1.1\r\n\r\n");
    let mut buf = Vec::new();
    let _ = extra.read_to_end(&mut buf);
    assert!(buf.is_empty(), "{:?}", String::from_utf8_lossy(&buf));
    // The slowloris is cut at the deadline although it never pauses for a
    // whole read timeout.
    let started = Instant::now();
    trickle
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let mut answer = Vec::new();
    for &byte in b"GET /metrics HTTP/1.1\r\nX: "
        .iter()
        .chain([b'a'; 200].iter())
    {
        if trickle.write_all(&[byte]).is_err() {
            break;
        }
        let mut chunk = [0u8; 256];
        match trickle.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&chunk[..n]),
            Err(_) => {}
        }
        if started.elapsed() > Duration::from_secs(15) {
            break;
        }
    }
    let elapsed = started.elapsed();
    assert!(
        String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 408 "),
        "{:?}",
        String::from_utf8_lossy(&answer)
    );
    assert!(elapsed < Duration::from_secs(8), "{elapsed:?}");
    // The idle ones are timed out too, and the endpoint serves again.
    for s in &mut idle {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut reply = String::new();
        let _ = s.read_to_string(&mut reply);
        assert!(reply.starts_with("HTTP/1.1 408 "), "{reply}");
    }
    let ok = exchange(&server, b"GET /metrics HTTP/1.1\r\n\r\n");
    assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
}

#[test]
fn dropping_the_server_frees_its_port() {
    let (server, _m) = endpoint();
    let addr = server.local_addr();
    drop(server);
    std::net::TcpListener::bind(addr).unwrap();
}
