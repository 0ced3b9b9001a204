//! Streaming RETR from the mmap: bounded memory for a slow reader, the raw
//! CRLF path, and files truncated while they are being sent.

#[macro_use]
mod common;

use std::fs::OpenOptions;
use std::io::Read;
use std::time::Duration;

use common::{Engine, Opts, Server, Tree, crlf};

fn rss_anon_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("RssAnon:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// `bytes` of 80-column text with LF (or CRLF) line ends and dot lines.
fn text(bytes: usize, line_end: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes + 100);
    let mut i = 0u64;
    while out.len() < bytes {
        let lead = if i.is_multiple_of(7) { "." } else { "x" };
        out.extend_from_slice(format!("{lead}{i:077}{line_end}").as_bytes());
        i += 1;
    }
    out
}

engine_test!(a_slow_reader_of_50_mb_does_not_grow_server_memory);
fn a_slow_reader_of_50_mb_does_not_grow_server_memory(engine: Engine) {
    let mut tree = Tree::new();
    tree.user("u", "p");
    let big = text(50 << 20, "\n");
    tree.deliver("u", 1, &big);
    let server = Server::start_with(
        &tree,
        Opts {
            shards: 1,
            ..Opts::new(engine)
        },
    );
    let mut c = server.connect();
    c.login("u", "p");
    let before = rss_anon_kib(server.pid());
    c.send(b"RETR 1\r\n");
    // The client reads nothing for a while: the server must stop at its bound.
    std::thread::sleep(Duration::from_millis(500));
    let during = rss_anon_kib(server.pid());
    assert!(
        during < before + 4096,
        "anonymous RSS grew from {before} KiB to {during} KiB"
    );
    assert!(c.line().starts_with("+OK"));
    let (got, _) = c.multiline();
    assert!(got == crlf(&big), "body differs");
    assert_eq!(c.cmd("NOOP"), "+OK");
}

engine_test!(crlf_files_go_out_raw_and_byte_exact);
fn crlf_files_go_out_raw_and_byte_exact(engine: Engine) {
    let mut tree = Tree::new();
    tree.user("u", "p");
    let stored = text(3 << 20, "\r\n");
    // Dovecot's names carry the sizes; a CRLF file has S == W.
    let md = tree.maildir("u");
    let name = format!("1700000001.M1.test,S={0},W={0}:2,", stored.len());
    std::fs::write(md.join("cur").join(name), &stored).unwrap();
    tree.deliver("u", 2, b"tail\r\n.\r\n");
    let server = Server::start(&tree, engine);
    let mut c = server.connect();
    c.login("u", "p");
    assert_eq!(c.cmd("RETR 1"), format!("+OK {} octets", stored.len()));
    let (got, raw) = c.multiline();
    assert!(got == stored);
    assert_eq!(
        raw.len(),
        stored.len() + stored.len() / 80 / 7 + 1 + 3,
        "one '.' per dot line"
    );
    assert_eq!(c.cmd("RETR 2"), "+OK 9 octets");
    assert_eq!(c.multiline().1, b"tail\r\n..\r\n.\r\n");
}

/// Starts a RETR of a big file, lets the server send a little, truncates the
/// file under it, and checks that only that session ends.
fn truncate_mid_retr(engine: Engine, line_end: &str) {
    let mut tree = Tree::new();
    tree.user("u", "p");
    tree.user("other", "p");
    tree.deliver("other", 1, b"hello\n");
    let big = text(32 << 20, line_end);
    let path = tree.deliver("u", 1, &big);
    let server = Server::start_with(
        &tree,
        Opts {
            shards: 1,
            ..Opts::new(engine)
        },
    );
    let mut c = server.connect();
    c.login("u", "p");
    c.send(b"RETR 1\r\n");
    assert!(c.line().starts_with("+OK"));
    let mut head = vec![0u8; 4096];
    c.reader.read_exact(&mut head).unwrap();
    OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(10_000)
        .unwrap();
    let mut rest = Vec::new();
    let _ = c.reader.read_to_end(&mut rest);
    assert!(
        rest.len() + 4096 < big.len(),
        "the server cannot have sent the whole body"
    );
    assert!(
        !rest.ends_with(b"\r\n.\r\n"),
        "a truncated body must not look complete"
    );
    server.wait_log("truncated while it was sent");
    // The server is alive and serves others.
    let mut o = server.connect();
    o.login("other", "p");
    assert_eq!(o.cmd("RETR 1"), "+OK 7 octets");
    assert_eq!(o.multiline().0, b"hello\r\n");
}

engine_test!(truncation_during_transform_closes_only_that_session);
fn truncation_during_transform_closes_only_that_session(engine: Engine) {
    truncate_mid_retr(engine, "\n");
}

engine_test!(truncation_during_raw_send_closes_only_that_session);
fn truncation_during_raw_send_closes_only_that_session(engine: Engine) {
    truncate_mid_retr(engine, "\r\n");
}

/// Open descriptors of `pid`.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// Mappings of `pid` whose path contains `needle`.
fn maps_of(pid: u32, needle: &str) -> usize {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    maps.lines().filter(|l| l.contains(needle)).count()
}

engine_test!(clients_that_vanish_mid_retr_leave_no_descriptor_or_map_behind);
fn clients_that_vanish_mid_retr_leave_no_descriptor_or_map_behind(engine: Engine) {
    // Each client drops its connection while the server is sending a body
    // (raw mmap ranges for the CRLF file, transformed output for the LF
    // one): on io_uring the send is in flight when the client goes, so its
    // buffers, the map and the socket stay parked until the completion.
    let mut tree = Tree::new();
    let users = ["v0", "v1", "v2", "v3"];
    for user in users {
        tree.user(user, "p");
        tree.deliver(user, 1, &text(2 << 20, "\r\n"));
        tree.deliver(user, 2, &text(2 << 20, "\n"));
    }
    tree.user("after", "p");
    tree.deliver("after", 1, b"still here\n");
    let server = Server::start_with(
        &tree,
        Opts {
            shards: 1,
            ..Opts::new(engine)
        },
    );
    let pid = server.pid();
    // One whole session first, so everything the process opens once (the
    // signal thread's socketpair, ...) is in the baseline.
    let mut c = server.connect();
    c.login("after", "p");
    assert!(c.cmd("QUIT").starts_with("+OK"));
    assert!(c.is_closed());
    drop(c);
    std::thread::sleep(Duration::from_millis(200));
    let baseline = open_fds(pid);
    for round in 0..3 {
        for user in users {
            let mut c = server.connect();
            c.login(user, "p");
            c.send(format!("RETR {}\r\n", 1 + round % 2).as_bytes());
            let mut some = vec![0u8; 64 * 1024];
            c.reader.read_exact(&mut some).unwrap();
            // Dropped with unread data: the kernel answers with RST.
        }
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while open_fds(pid) > baseline || maps_of(pid, "/mail/v") > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "descriptors {} (baseline {baseline}), maps {}: {:?}",
            open_fds(pid),
            maps_of(pid, "/mail/v"),
            std::fs::read_dir(format!("/proc/{pid}/fd"))
                .unwrap()
                .map(|e| std::fs::read_link(e.unwrap().path()))
                .collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Every lock was released, and the server still serves.
    for user in users {
        let mut c = server.connect();
        c.login(user, "p");
        assert!(c.cmd("QUIT").starts_with("+OK"));
    }
    let mut c = server.connect();
    c.login("after", "p");
    assert_eq!(c.cmd("RETR 1"), "+OK 12 octets");
    assert_eq!(c.multiline().0, b"still here\r\n");
}

engine_test!(a_timeout_during_a_stalled_retr_frees_the_session_and_its_map);
fn a_timeout_during_a_stalled_retr_frees_the_session_and_its_map(engine: Engine) {
    // The client stops reading mid-body, so the server's send cannot finish
    // (on io_uring it stays in flight) until the idle timer ends the session:
    // the send is cancelled, and the map, socket and lock are freed.
    let mut tree = Tree::new();
    tree.user("s", "p");
    tree.deliver("s", 1, &text(8 << 20, "\r\n"));
    let server = Server::start_with(
        &tree,
        Opts {
            shards: 1,
            toml: "[limits]\nautologout_ms = 600\n".into(),
            ..Opts::new(engine)
        },
    );
    let pid = server.pid();
    let mut warm = server.connect();
    warm.login("s", "p");
    assert!(warm.cmd("QUIT").starts_with("+OK"));
    assert!(warm.is_closed());
    drop(warm);
    std::thread::sleep(Duration::from_millis(200));
    let baseline = open_fds(pid);
    let mut c = server.connect();
    c.login("s", "p");
    c.send(b"RETR 1\r\n");
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(maps_of(pid, "/mail/s"), 1, "the body is being sent");
    server.wait_log("disconnected for inactivity");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while open_fds(pid) > baseline || maps_of(pid, "/mail/s") > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "descriptors {} (baseline {baseline}), maps {}",
            open_fds(pid),
            maps_of(pid, "/mail/s")
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // The body was cut off: the client gets what the kernel had queued,
    // then EOF (or a reset), never the whole message.
    let mut got = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    while let Ok(n) = c.reader.read(&mut buf) {
        if n == 0 {
            break;
        }
        got += n;
    }
    assert!(got < 8 << 20, "the whole body arrived: {got} bytes");
    drop(c);
    let mut again = server.connect();
    again.login("s", "p");
    assert!(
        again.cmd("STAT").starts_with("+OK 1 "),
        "the lock was released"
    );
}
