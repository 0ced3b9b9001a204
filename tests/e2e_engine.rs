//! The shard core's rules, end to end on both backends: TLS-starting takes
//! no input, the worker queue's bound, the accept cap under a connection
//! flood, and graceful shutdown under load.

#[macro_use]
mod common;
#[path = "common/tls_fixture.rs"]
mod tls_fixture;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{Engine, Opts, Server, Tree, python};
use tls_fixture::TestCa;

/// SHA512-CRYPT at 1,000,000 rounds of "pw": most of a second per check,
/// so one worker stays busy while the test fills its queue.
const SLOW_HASH: &str = "$6$rounds=1000000$slowslowslow$g27EtJNZVMJAhUmP1Q6P9KqgQbDpcX55tIbS8yO6Ka6Bq7WtIf5KAQ2K8JGAlNMS11KsWjlofjk/aA6/SW2Fo0";

engine_test!(plaintext_sent_after_stls_in_its_own_packet_is_never_a_command);
fn plaintext_sent_after_stls_in_its_own_packet_is_never_a_command(engine: Engine) {
    let mut tree = Tree::new();
    tree.user("alice", "pw");
    let ca = TestCa::new(tree.root());
    let leaf = ca.issue(tree.root(), "server");
    let server = Server::start_with(
        &tree,
        Opts {
            toml: "[auth]\nfailure_delay_ms = 0\n".into(),
            args: leaf.serve_args(false),
            ..Opts::new(engine)
        },
    );
    // "USER evil" goes in a packet of its own after STLS, before (delay 0)
    // or while the +OK is on its way, so on io_uring its receive can
    // complete before the +OK's send does. Whatever the order, the server
    // must never answer it in plaintext, and a TLS session that does start
    // must not remember it.
    let script = format!(
        r#"
import socket, ssl, time
ctx = ssl.create_default_context(cafile="{ca}")
def readline(s):
    line = b""
    while not line.endswith(b"\n"):
        c = s.recv(1)
        if not c:
            break
        line += c
    return line
for delay in [0, 0, 0, 0.0005, 0.001, 0.002, 0.005, 0, 0, 0]:
    raw = socket.create_connection(("127.0.0.1", {port}))
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    readline(raw)
    raw.sendall(b"STLS\r\n")
    if delay:
        time.sleep(delay)
    raw.sendall(b"USER evil\r\n")
    ok = readline(raw)
    assert ok.startswith(b"+OK Begin TLS"), ok
    raw.settimeout(0.3)
    try:
        extra = raw.recv(100, socket.MSG_PEEK)
    except socket.timeout:
        extra = b""
    raw.settimeout(10)
    # Anything in plaintext after the +OK would be an answer to USER.
    assert not extra.startswith(b"+OK") and not extra.startswith(b"-ERR"), extra
    try:
        t = ctx.wrap_socket(raw, server_hostname="localhost")
    except (ssl.SSLError, OSError) as e:
        print("handshake refused", type(e).__name__)
        continue
    t.sendall(b"PASS pw\r\n")
    answer = t.recv(1000)
    assert answer.startswith(b"-ERR"), answer
    print("tls on, USER forgotten")
    t.close()
"#,
        ca = ca.ca_pem.display(),
        port = server.addr.port()
    );
    let out = python(&script);
    assert_eq!(out.lines().count(), 10, "{out}");
    // The server still serves others.
    let mut c = server.connect();
    c.login("alice", "pw");
    assert!(c.cmd("STAT").starts_with("+OK 0 0"));
}

engine_test!(a_full_worker_queue_answers_sys_temp_at_once);
fn a_full_worker_queue_answers_sys_temp_at_once(engine: Engine) {
    let mut tree = Tree::new();
    tree.user_with_hash("slow", SLOW_HASH);
    let server = Server::start_with(
        &tree,
        Opts {
            shards: 1,
            toml: "[server]\nworkers = 1\n[limits]\nworker_queue_max = 1\n[auth]\nfailure_delay_ms = 0\n"
                .into(),
            ..Opts::new(engine)
        },
    );
    let clients: Vec<_> = (0..12)
        .map(|_| {
            let mut c = server.connect();
            assert!(c.cmd("USER slow").starts_with("+OK"));
            c
        })
        .collect();
    let started = Instant::now();
    let mut clients: Vec<_> = clients
        .into_iter()
        .map(|mut c| {
            c.send(b"PASS pw\r\n");
            c
        })
        .collect();
    // While the one worker hashes, the shard still answers at once.
    let mut other = server.connect();
    assert!(other.cmd("CAPA").starts_with("+OK"));
    other.multiline();
    assert!(started.elapsed() < Duration::from_millis(500));
    let answers: Vec<String> = clients.iter_mut().map(|c| c.line()).collect();
    // The mailbox allows one session: a second login that got through the
    // queue meets the first one's lock.
    let ok = answers
        .iter()
        .filter(|a| a.starts_with("+OK") || a.starts_with("-ERR [IN-USE]"))
        .count();
    let busy = answers
        .iter()
        .filter(|a| a.starts_with("-ERR [SYS/TEMP]"))
        .count();
    // One running and one queued get through (a few more when a hash
    // finishes while the PASS lines are still arriving, on a loaded
    // machine); the rest are refused at once, and every login got an
    // answer.
    assert_eq!(ok + busy, 12, "{answers:?}");
    assert!(ok >= 1 && busy >= 6, "{answers:?}");
    assert!(server.log().contains("worker queue full"));
}

engine_test!(a_connection_flood_does_not_starve_an_established_session);
fn a_connection_flood_does_not_starve_an_established_session(engine: Engine) {
    let mut tree = Tree::new();
    tree.user("alice", "pw");
    let server = Server::start_with(
        &tree,
        Opts {
            shards: 1,
            nofile: Some(8192),
            ..Opts::new(engine)
        },
    );
    let mut session = server.connect();
    session.login("alice", "pw");
    let addr = server.addr;
    let flood = std::thread::spawn(move || {
        (0..3000)
            .filter_map(|_| TcpStream::connect(addr).ok())
            .collect::<Vec<_>>()
    });
    let mut slowest = Duration::ZERO;
    for _ in 0..200 {
        let t = Instant::now();
        assert!(session.cmd("NOOP").starts_with("+OK"));
        slowest = slowest.max(t.elapsed());
    }
    let flooders = flood.join().unwrap();
    assert!(
        slowest < Duration::from_secs(2),
        "a NOOP waited {slowest:?}"
    );
    // Every flooding connection is admitted and greeted in the end.
    for s in &flooders {
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).unwrap();
        assert!(line.starts_with("+OK"), "{line:?}");
    }
    assert!(flooders.len() >= 2900, "{}", flooders.len());
}

engine_test!(sigterm_during_a_login_load_exits_within_the_grace_period);
fn sigterm_during_a_login_load_exits_within_the_grace_period(engine: Engine) {
    let mut tree = Tree::new();
    tree.user("alice", "pw");
    tree.deliver("alice", 1, b"Subject: x\n\nbody\n");
    let grace = Duration::from_millis(300);
    for round in 0..20 {
        let server = Server::start_with(
            &tree,
            Opts {
                toml: format!(
                    "[limits]\nshutdown_grace_ms = {}\n[auth]\nfailure_delay_ms = 0\n",
                    grace.as_millis()
                ),
                ..Opts::new(engine)
            },
        );
        let stop = Arc::new(AtomicBool::new(false));
        let addr = server.addr;
        let load: Vec<_> = (0..6)
            .map(|i| {
                let stop = Arc::clone(&stop);
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let Ok(mut s) = TcpStream::connect(addr) else {
                            break;
                        };
                        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                        // Half the clients log in and stay (they must be
                        // closed at the deadline); half log in and quit.
                        let script: &[u8] = if i % 2 == 0 {
                            b"USER alice\r\nPASS pw\r\nSTAT\r\n"
                        } else {
                            b"USER alice\r\nPASS pw\r\nQUIT\r\n"
                        };
                        if s.write_all(script).is_err() {
                            break;
                        }
                        let mut r = BufReader::new(&s);
                        let mut line = String::new();
                        while r.read_line(&mut line).is_ok_and(|n| n > 0) {
                            line.clear();
                        }
                    }
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(150));
        let t = Instant::now();
        let log = server.log_handle();
        let status = server.terminate();
        let took = t.elapsed();
        stop.store(true, Ordering::Relaxed);
        for l in load {
            l.join().unwrap();
        }
        assert!(status.success(), "round {round}: {status:?}");
        assert!(
            took <= grace + Duration::from_secs(1),
            "round {round}: exit took {took:?}\n{}",
            log.lock().unwrap()
        );
    }
}
