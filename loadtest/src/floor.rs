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
/// The reply to STAT: `FLOOR_MESSAGES` of `FLOOR_MESSAGE_OCTETS` (a test
/// checks the two agree).
const STAT_REPLY: &[u8] = b"+OK 10 20000\r\n";
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
    prepare(&std_listener)?;
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

/// Non-blocking, and `TCP_NODELAY` set once on the listener, which accepted
/// sockets inherit (as the server does): no setsockopt per connection.
fn prepare(listener: &std::net::TcpListener) -> io::Result<()> {
    listener.set_nonblocking(true)?;
    socket2::SockRef::from(listener).set_tcp_nodelay(true)
}

struct Conn {
    stream: TcpStream,
    input: Vec<u8>,
    output: Vec<u8>,
    /// QUIT answered (or the client misbehaved): close once output is sent.
    closing: bool,
    /// Registered for writability too: a write would have blocked.
    wants_write: bool,
    /// An event said the peer closed its side: read to the end of file, as
    /// a short read may stop just before it and no later event reports it.
    peer_closed: bool,
}

/// Read size: a POP3 command line fits many times over, so a read that
/// fills less than this emptied the socket.
const READ_BYTES: usize = 1024;

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
                accept_all(&listener, &poll, &mut conns, sessions)?;
                continue;
            }
            let key = event.token().0;
            let Some(conn) = conns.get_mut(key) else {
                continue;
            };
            conn.peer_closed |= event.is_read_closed();
            if !pump(
                conn,
                &poll,
                key,
                event.is_readable() || event.is_read_closed(),
            ) {
                // Closing the socket takes it out of the epoll set: no
                // deregister call (the server does not make one either).
                conns.remove(key);
                sessions.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    Ok(())
}

/// Accepts until the queue is empty (edge-triggered); greets each client
/// at once, as a server does, rather than on a first writable event.
fn accept_all(
    listener: &TcpListener,
    poll: &Poll,
    conns: &mut Slab<Conn>,
    sessions: &AtomicU64,
) -> io::Result<()> {
    loop {
        let (stream, _) = match listener.accept() {
            Ok(s) => s,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            // Another loop took it, or the client gave up already.
            Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => continue,
            Err(e) => return Err(e),
        };
        let mut conn = Conn {
            stream,
            input: Vec::with_capacity(128),
            output: b"+OK floor ready\r\n".to_vec(),
            closing: false,
            wants_write: false,
            peer_closed: false,
        };
        if !flush(&mut conn) {
            sessions.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let entry = conns.vacant_entry();
        conn.wants_write = !conn.output.is_empty();
        poll.registry().register(
            &mut conn.stream,
            Token(entry.key()),
            interest(conn.wants_write),
        )?;
        entry.insert(conn);
    }
}

fn interest(wants_write: bool) -> Interest {
    if wants_write {
        Interest::READABLE | Interest::WRITABLE
    } else {
        Interest::READABLE
    }
}

/// Reads what there is, answers every complete line, writes what it can.
/// False when the connection is finished. One read per command when the
/// client waits for each reply: a short read means the socket is empty (a
/// later arrival raises a new edge), so there is no read that only finds
/// `EAGAIN`, as in the server's own pump; except after the peer closed
/// its side, when the end of file may wait behind the data.
fn pump(conn: &mut Conn, poll: &Poll, key: usize, readable: bool) -> bool {
    let mut eof = false;
    if readable {
        let mut buf = [0u8; READ_BYTES];
        loop {
            match conn.stream.read(&mut buf) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => {
                    conn.input.extend_from_slice(&buf[..n]);
                    if n < buf.len() && !conn.peer_closed {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return false,
            }
        }
    }
    let mut used = 0;
    while !conn.closing {
        let rest = &conn.input[used..];
        let Some(end) = rest.iter().position(|&b| b == b'\n') else {
            if rest.len() > LINE_BYTES_MAX {
                conn.output.extend_from_slice(b"-ERR line too long\r\n");
                conn.closing = true;
            }
            break;
        };
        conn.closing = reply(&rest[..=end], &mut conn.output);
        used += end + 1;
    }
    conn.input.drain(..used);
    // Commands that came before the end of file are answered, then the
    // connection closes (as the server does).
    conn.closing |= eof;
    if !flush(conn) {
        return false;
    }
    let wants_write = !conn.output.is_empty();
    if wants_write != conn.wants_write {
        conn.wants_write = wants_write;
        if poll
            .registry()
            .reregister(&mut conn.stream, Token(key), interest(wants_write))
            .is_err()
        {
            return false;
        }
    }
    conn.wants_write || !conn.closing
}

/// Writes what the socket takes; false on a dead connection.
fn flush(conn: &mut Conn) -> bool {
    let mut sent = 0;
    while sent < conn.output.len() {
        match conn.stream.write(&conn.output[sent..]) {
            Ok(n) => sent += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return false,
        }
    }
    conn.output.drain(..sent);
    true
}

/// The canned reply to one command line; true after QUIT.
pub fn reply(line: &[u8], out: &mut Vec<u8>) -> bool {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let word_end = line.iter().position(|&b| b == b' ').unwrap_or(line.len());
    // A word is at most four letters: upper-cased in place, no allocation
    // (the floor should spend nothing a real server need not).
    let mut upper = [0u8; 4];
    let word: &[u8] = if word_end == upper.len() {
        upper.copy_from_slice(&line[..word_end]);
        upper.make_ascii_uppercase();
        &upper
    } else {
        b""
    };
    match word {
        b"USER" | b"APOP" | b"NOOP" | b"RSET" | b"DELE" => out.extend_from_slice(b"+OK\r\n"),
        b"PASS" => out.extend_from_slice(b"+OK Logged in.\r\n"),
        b"STAT" => out.extend_from_slice(STAT_REPLY),
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
        let total = FLOOR_MESSAGES * FLOOR_MESSAGE_OCTETS;
        assert_eq!(
            STAT_REPLY,
            format!("+OK {FLOOR_MESSAGES} {total}\r\n").as_bytes()
        );
        assert!(answer(b"Quit\r\n").1);
        assert!(answer(b"QUITX\r\n").0.starts_with("-ERR"));
        assert!(answer(b"\r\n").0.starts_with("-ERR"));
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

    /// A floor on a free port for `seconds`; its port and the join handle.
    fn floor(seconds: u64) -> (u16, std::thread::JoinHandle<io::Result<FloorReport>>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let handle =
            std::thread::spawn(move || serve_on(listener, 1, Duration::from_secs(seconds)));
        (port, handle)
    }

    #[test]
    fn a_line_split_across_reads_is_answered_once_whole() {
        let (port, handle) = floor(2);
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        for part in [&b"US"[..], b"ER u\r", b"\nQU", b"IT\r\n"] {
            s.write_all(part).unwrap();
            std::thread::sleep(Duration::from_millis(50));
        }
        let mut all = String::new();
        s.read_to_string(&mut all).unwrap();
        assert_eq!(all, "+OK floor ready\r\n+OK\r\n+OK Bye\r\n");
        assert_eq!(handle.join().unwrap().unwrap().sessions_total, 1);
    }

    #[test]
    fn accepted_sockets_have_nodelay() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        prepare(&listener).unwrap();
        listener.set_nonblocking(false).unwrap();
        let port = listener.local_addr().unwrap().port();
        let _client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        assert!(accepted.nodelay().unwrap());
    }

    #[test]
    fn replies_the_socket_cannot_take_at_once_are_all_sent() {
        // 100,000 LISTs (11 MB of replies, more than a loopback socket's
        // send and receive buffers hold) before the client reads a byte:
        // the floor's writes block, and it must finish them on writable
        // events, in order, then close after QUIT.
        let (port, handle) = floor(3);
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let mut script = b"LIST\r\n".repeat(100_000);
        script.extend_from_slice(b"QUIT\r\n");
        s.write_all(&script).unwrap();
        let mut all = String::new();
        s.read_to_string(&mut all).unwrap();
        let mut one = Vec::new();
        reply(b"LIST\r\n", &mut one);
        let one = String::from_utf8(one).unwrap();
        let want = format!("+OK floor ready\r\n{}+OK Bye\r\n", one.repeat(100_000));
        assert_eq!(all.len(), want.len());
        assert!(all == want);
        assert_eq!(handle.join().unwrap().unwrap().sessions_total, 1);
    }

    #[test]
    fn a_command_and_the_end_of_file_together_get_a_reply_and_a_close() {
        let (port, handle) = floor(3);
        for _ in 0..20 {
            let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
            let mut greeting = [0u8; 17];
            s.read_exact(&mut greeting).unwrap();
            std::thread::sleep(Duration::from_millis(10));
            s.write_all(b"NOOP\r\n").unwrap();
            s.shutdown(std::net::Shutdown::Write).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let mut rest = String::new();
            s.read_to_string(&mut rest).unwrap();
            assert_eq!(rest, "+OK\r\n");
        }
        assert_eq!(handle.join().unwrap().unwrap().sessions_total, 20);
    }

    #[test]
    fn an_overlong_line_is_refused_and_closed() {
        let (port, handle) = floor(2);
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.write_all(&[b'x'; 3000]).unwrap();
        let mut all = String::new();
        s.read_to_string(&mut all).unwrap();
        assert_eq!(all, "+OK floor ready\r\n-ERR line too long\r\n");
        assert_eq!(handle.join().unwrap().unwrap().sessions_total, 1);
    }
}
