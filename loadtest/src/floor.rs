//! `loadtest floor`: a canned-reply POP3 responder, the CPU floor a real
//! server is compared with in the same run. It checks no password, touches
//! no disk and keeps no state beyond a line buffer: every login succeeds
//! and every maildrop holds the same `FLOOR_MESSAGES` messages. Whatever a
//! server spends above this per session is its own work (auth, mailbox,
//! logging, worker hops), not the kernel's TCP cost, which both pay.
//!
//! It serves on `--addr` (loopback only; port 0 picks one) with `--threads`
//! event loops (mio, edge-triggered, one shared listener), prints
//! `floor: listening addr=HOST:PORT` on stderr, stops after `--duration`
//! seconds and prints one JSON line: sessions served and its CPU seconds.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use slab::Slab;

/// Messages in every canned maildrop (the size of the issue's login case).
pub const FLOOR_MESSAGES: u64 = 10;
/// RFC 1939 size of each canned message.
pub const FLOOR_MESSAGE_OCTETS: u64 = 2000;
/// A command line longer than this closes the connection (RFC 2449: 255).
const LINE_BYTES_MAX: usize = 512;
const LISTENER: Token = Token(usize::MAX);
/// How often a loop looks at the stop flag.
const POLL_TIMEOUT: Duration = Duration::from_millis(100);

/// The result line.
#[derive(Debug, serde::Serialize)]
pub struct FloorReport {
    /// Always "floor".
    pub scenario: &'static str,
    /// Where it listened.
    pub addr: String,
    /// Sessions that ended (QUIT or close).
    pub sessions_total: u64,
    /// Seconds it ran.
    pub duration_s: f64,
    /// CPU seconds (user + system) of this process over the run.
    pub server_cpu_s: f64,
}

/// Serves until `duration` has passed.
pub fn serve(addr: SocketAddr, threads: usize, duration: Duration) -> io::Result<FloorReport> {
    serve_on(std::net::TcpListener::bind(addr)?, threads, duration)
}

/// [`serve`] on a bound listener.
pub fn serve_on(
    std_listener: std::net::TcpListener,
    threads: usize,
    duration: Duration,
) -> io::Result<FloorReport> {
    std_listener.set_nonblocking(true)?;
    let local = std_listener.local_addr()?;
    eprintln!("floor: listening addr={local}");
    let stop = Arc::new(AtomicBool::new(false));
    let sessions = Arc::new(AtomicU64::new(0));
    let cpu_before = loadtest::stats::process_cpu_s();
    let started = Instant::now();
    let mut handles = Vec::new();
    for i in 0..threads.max(1) {
        let listener = TcpListener::from_std(std_listener.try_clone()?);
        let (stop, sessions) = (Arc::clone(&stop), Arc::clone(&sessions));
        handles.push(
            std::thread::Builder::new()
                .name(format!("floor-{i}"))
                .spawn(move || run_loop(listener, &stop, &sessions))?,
        );
    }
    std::thread::sleep(duration);
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        h.join()
            .map_err(|_| io::Error::other("a floor thread panicked"))??;
    }
    Ok(FloorReport {
        scenario: "floor",
        addr: local.to_string(),
        sessions_total: sessions.load(Ordering::Relaxed),
        duration_s: started.elapsed().as_secs_f64(),
        server_cpu_s: loadtest::stats::process_cpu_s() - cpu_before,
    })
}

struct Conn {
    stream: TcpStream,
    input: Vec<u8>,
    output: Vec<u8>,
    /// QUIT answered (or the client misbehaved): close once output is sent.
    closing: bool,
}

fn run_loop(mut listener: TcpListener, stop: &AtomicBool, sessions: &AtomicU64) -> io::Result<()> {
    let mut poll = Poll::new()?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;
    let mut events = Events::with_capacity(256);
    let mut conns: Slab<Conn> = Slab::new();
    while !stop.load(Ordering::Relaxed) {
        match poll.poll(&mut events, Some(POLL_TIMEOUT)) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => other?,
        }
        for event in &events {
            if event.token() == LISTENER {
                accept_all(&listener, &poll, &mut conns)?;
                continue;
            }
            let key = event.token().0;
            let Some(conn) = conns.get_mut(key) else {
                continue;
            };
            if !pump(conn) {
                let mut conn = conns.remove(key);
                let _ = poll.registry().deregister(&mut conn.stream);
                sessions.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    Ok(())
}

/// Accepts until the queue is empty (edge-triggered); greets each client.
fn accept_all(listener: &TcpListener, poll: &Poll, conns: &mut Slab<Conn>) -> io::Result<()> {
    loop {
        let (mut stream, _) = match listener.accept() {
            Ok(s) => s,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            // Another loop took it, or the client gave up already.
            Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => continue,
            Err(e) => return Err(e),
        };
        let _ = stream.set_nodelay(true);
        let entry = conns.vacant_entry();
        poll.registry().register(
            &mut stream,
            Token(entry.key()),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        entry.insert(Conn {
            stream,
            input: Vec::with_capacity(128),
            output: b"+OK floor ready\r\n".to_vec(),
            closing: false,
        });
    }
}

/// Reads what there is, answers every complete line, writes what it can.
/// False when the connection is finished.
fn pump(conn: &mut Conn) -> bool {
    let mut buf = [0u8; 1024];
    loop {
        match conn.stream.read(&mut buf) {
            Ok(0) => return false,
            Ok(n) => conn.input.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return false,
        }
    }
    while !conn.closing {
        let Some(end) = conn.input.iter().position(|&b| b == b'\n') else {
            if conn.input.len() > LINE_BYTES_MAX {
                conn.output.extend_from_slice(b"-ERR line too long\r\n");
                conn.closing = true;
            }
            break;
        };
        let line: Vec<u8> = conn.input.drain(..=end).collect();
        conn.closing = reply(&line, &mut conn.output);
    }
    while !conn.output.is_empty() {
        match conn.stream.write(&conn.output) {
            Ok(n) => {
                conn.output.drain(..n);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return false,
        }
    }
    !conn.closing
}

/// The canned reply to one command line; true after QUIT.
pub fn reply(line: &[u8], out: &mut Vec<u8>) -> bool {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let word_end = line.iter().position(|&b| b == b' ').unwrap_or(line.len());
    let word = line[..word_end].to_ascii_uppercase();
    match word.as_slice() {
        b"USER" | b"APOP" | b"NOOP" | b"RSET" | b"DELE" => out.extend_from_slice(b"+OK\r\n"),
        b"PASS" => out.extend_from_slice(b"+OK Logged in.\r\n"),
        b"STAT" => {
            let total = FLOOR_MESSAGES * FLOOR_MESSAGE_OCTETS;
            out.extend_from_slice(format!("+OK {FLOOR_MESSAGES} {total}\r\n").as_bytes());
        }
        b"LIST" | b"UIDL" => {
            out.extend_from_slice(b"+OK\r\n");
            for n in 1..=FLOOR_MESSAGES {
                let value = if word == b"LIST" {
                    FLOOR_MESSAGE_OCTETS.to_string()
                } else {
                    format!("floor{n}")
                };
                out.extend_from_slice(format!("{n} {value}\r\n").as_bytes());
            }
            out.extend_from_slice(b".\r\n");
        }
        b"CAPA" => out.extend_from_slice(b"+OK\r\nUSER\r\nUIDL\r\nTOP\r\n.\r\n"),
        b"QUIT" => {
            out.extend_from_slice(b"+OK Bye\r\n");
            return true;
        }
        _ => out.extend_from_slice(b"-ERR not in the floor's script\r\n"),
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(line: &[u8]) -> (String, bool) {
        let mut out = Vec::new();
        let quit = reply(line, &mut out);
        (String::from_utf8(out).unwrap(), quit)
    }

    #[test]
    fn answers_the_login_script() {
        assert_eq!(answer(b"USER a\r\n"), ("+OK\r\n".into(), false));
        assert_eq!(answer(b"pass x\r\n"), ("+OK Logged in.\r\n".into(), false));
        assert_eq!(answer(b"STAT\r\n"), ("+OK 10 20000\r\n".into(), false));
        assert_eq!(answer(b"QUIT\n"), ("+OK Bye\r\n".into(), true));
        let (list, _) = answer(b"LIST\r\n");
        assert_eq!(list.lines().count(), 12);
        assert!(answer(b"XYZZY\r\n").0.starts_with("-ERR"));
    }

    #[test]
    fn serves_real_sessions_and_counts_them() {
        use std::io::{BufRead, BufReader};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let handle = std::thread::spawn(move || serve_on(listener, 2, Duration::from_millis(1500)));
        for _ in 0..3 {
            let s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut w = s;
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            assert!(line.starts_with("+OK"));
            w.write_all(b"USER u\r\nPASS p\r\nSTAT\r\nQUIT\r\n")
                .unwrap();
            let mut all = String::new();
            r.read_to_string(&mut all).unwrap();
            assert_eq!(all, "+OK\r\n+OK Logged in.\r\n+OK 10 20000\r\n+OK Bye\r\n");
        }
        let report = handle.join().unwrap().unwrap();
        assert_eq!(report.sessions_total, 3);
        assert!(report.server_cpu_s >= 0.0);
    }
}
