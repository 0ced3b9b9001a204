//! Streaming RETR from the mmap: bounded memory for a slow reader, the raw
//! CRLF path, and files truncated while they are being sent.

mod common;

use std::fs::OpenOptions;
use std::io::Read;
use std::time::Duration;

use common::{Opts, Server, Tree, crlf};

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

#[test]
fn a_slow_reader_of_50_mb_does_not_grow_server_memory() {
    let mut tree = Tree::new();
    tree.user("u", "p");
    let big = text(50 << 20, "\n");
    tree.deliver("u", 1, &big);
    let server = Server::start_with(
        &tree,
        Opts {
            shards: 1,
            ..Opts::default()
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

#[test]
fn crlf_files_go_out_raw_and_byte_exact() {
    let mut tree = Tree::new();
    tree.user("u", "p");
    let stored = text(3 << 20, "\r\n");
    // Dovecot's names carry the sizes; a CRLF file has S == W.
    let md = tree.maildir("u");
    let name = format!("1700000001.M1.test,S={0},W={0}:2,", stored.len());
    std::fs::write(md.join("cur").join(name), &stored).unwrap();
    tree.deliver("u", 2, b"tail\r\n.\r\n");
    let server = Server::start(&tree);
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
fn truncate_mid_retr(line_end: &str) {
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
            ..Opts::default()
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

#[test]
fn truncation_during_transform_closes_only_that_session() {
    truncate_mid_retr("\n");
}

#[test]
fn truncation_during_raw_send_closes_only_that_session() {
    truncate_mid_retr("\r\n");
}
