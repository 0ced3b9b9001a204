//! A small blocking POP3 client for `migrate verify`: connect (plaintext,
//! implicit TLS or STLS), log in, read STAT, LIST and UIDL (and RETR when
//! asked), QUIT. It never sends DELE.
//!
//! The reply parsing and the multi-line un-stuffing are the load
//! generator's (`loadtest::reply`, `loadtest::unstuff`), and so is the TLS
//! client configuration (`loadtest::tls`): one POP3 client side in the
//! project. Everything read is bounded: every read waits at most the I/O
//! timeout, a whole session at most its deadline, a status line at most
//! `STATUS_LINE_BYTES_MAX` bytes and a listing at most
//! [`LISTING_BYTES_MAX`]. Any bytes from a server give an error, never a
//! panic.
#![forbid(unsafe_code)]

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use loadtest::reply::{self, Status, StatusLine};
use loadtest::unstuff::Unstuffer;
use rustls::pki_types::ServerName;

/// The largest multi-line reply read (a UIDL listing of a million messages
/// is about 60 MB).
pub const LISTING_BYTES_MAX: usize = 256 << 20;

/// How a session reaches TLS.
#[derive(Clone, Debug)]
pub enum Security {
    /// No TLS.
    Plain,
    /// TLS from the first byte (port 995 style).
    Implicit(Arc<rustls::ClientConfig>, ServerName<'static>),
    /// Plaintext greeting, then `STLS`.
    Stls(Arc<rustls::ClientConfig>, ServerName<'static>),
}

/// Where and how to connect.
#[derive(Clone, Debug)]
pub struct Target {
    /// The resolved addresses of `HOST:PORT`, tried in order.
    pub addrs: Vec<SocketAddr>,
    /// Plaintext or TLS.
    pub security: Security,
    /// The longest any connect, read or write may wait.
    pub io_timeout: Duration,
    /// The longest one whole session may take.
    pub session_timeout: Duration,
}

/// Why a session failed. Each says which side's fault it most likely is.
#[derive(Debug)]
pub enum ClientError {
    /// No address accepted a connection.
    Connect(io::Error),
    /// A read or write failed (TLS errors arrive here too).
    Io(io::Error),
    /// The server took longer than the timeouts allow.
    Timeout,
    /// The server answered `-ERR` where `+OK` was needed.
    Refused {
        /// The command (never a password).
        command: &'static str,
        /// The server's text.
        text: String,
    },
    /// The server sent something that is not POP3.
    Protocol(String),
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Connect(e) => write!(f, "cannot connect: {e}"),
            ClientError::Io(e) => write!(f, "I/O error: {e}"),
            ClientError::Timeout => f.write_str("timed out"),
            ClientError::Refused { command, text } => write!(f, "{command} refused: -ERR {text}"),
            ClientError::Protocol(why) => write!(f, "protocol error: {why}"),
        }
    }
}

impl std::error::Error for ClientError {}

fn io_error(e: io::Error) -> ClientError {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => ClientError::Timeout,
        _ => ClientError::Io(e),
    }
}

/// A byte stream a session can run over besides TCP (tests and fuzzing
/// drive the client through one).
pub trait Stream: Read + Write + Send {}
impl<T: Read + Write + Send> Stream for T {}

/// Plaintext or TLS over one TCP connection, or another stream.
enum Transport {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
    Other(Box<dyn Stream>),
}

impl Read for Transport {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Transport::Plain(s) => s.read(buf),
            Transport::Tls(s) => s.read(buf),
            Transport::Other(s) => s.read(buf),
        }
    }
}

impl Write for Transport {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Transport::Plain(s) => s.write(buf),
            Transport::Tls(s) => s.write(buf),
            Transport::Other(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Transport::Plain(s) => s.flush(),
            Transport::Tls(s) => s.flush(),
            Transport::Other(s) => s.flush(),
        }
    }
}

/// One message as a server lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listed {
    /// The UIDL (bytes as sent).
    pub uidl: Box<[u8]>,
    /// The size from LIST.
    pub octets: u64,
    /// SHA-256 of the RETR body, when bodies were asked for.
    pub body_sha256: Option<[u8; 32]>,
}

/// What one server shows a user.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Maildrop {
    /// STAT's count.
    pub stat_count: u64,
    /// STAT's octets.
    pub stat_octets: u64,
    /// The messages, in message-number order.
    pub messages: Vec<Listed>,
}

/// A logged-in (or logging-in) session.
pub struct Session {
    transport: Transport,
    buf: Vec<u8>,
    deadline: Instant,
}

impl Session {
    /// Connects and reads the greeting (after the TLS handshake, or before
    /// STLS).
    pub fn connect(target: &Target) -> Result<Session, ClientError> {
        let deadline = Instant::now() + target.session_timeout;
        let tcp = connect_any(&target.addrs, target.io_timeout)?;
        tcp.set_read_timeout(Some(target.io_timeout))
            .map_err(ClientError::Io)?;
        tcp.set_write_timeout(Some(target.io_timeout))
            .map_err(ClientError::Io)?;
        let _ = tcp.set_nodelay(true);
        let transport = match &target.security {
            Security::Implicit(config, name) => tls(config, name, tcp)?,
            Security::Plain | Security::Stls(..) => Transport::Plain(tcp),
        };
        let mut session = Session {
            transport,
            buf: Vec::with_capacity(4096),
            deadline,
        };
        session.expect_ok("greeting")?;
        if let Security::Stls(config, name) = &target.security {
            session.command(b"STLS\r\n", "STLS")?;
            if !session.buf.is_empty() {
                return Err(ClientError::Protocol("bytes after the STLS reply".into()));
            }
            let Transport::Plain(tcp) = session.transport else {
                return Err(ClientError::Protocol("STLS over TLS".into()));
            };
            session.transport = tls(config, name, tcp)?;
        }
        Ok(session)
    }

    /// A session over `stream` (already connected, no TLS): reads the
    /// greeting. `session_timeout` bounds the whole session.
    pub fn over(
        stream: Box<dyn Stream>,
        session_timeout: Duration,
    ) -> Result<Session, ClientError> {
        let mut session = Session {
            transport: Transport::Other(stream),
            buf: Vec::with_capacity(4096),
            deadline: Instant::now() + session_timeout,
        };
        session.expect_ok("greeting")?;
        Ok(session)
    }

    /// USER and PASS.
    pub fn login(&mut self, user: &str, password: &str) -> Result<(), ClientError> {
        if [user, password]
            .iter()
            .any(|s| s.bytes().any(|b| b == b'\r' || b == b'\n'))
        {
            return Err(ClientError::Protocol(
                "a line end in the user or password".into(),
            ));
        }
        self.command(format!("USER {user}\r\n").as_bytes(), "USER")?;
        self.command(format!("PASS {password}\r\n").as_bytes(), "PASS")?;
        Ok(())
    }

    /// STAT, LIST and UIDL, joined by message number; with `bodies`, RETR
    /// of every message too (hashed, never kept).
    pub fn maildrop(&mut self, bodies: bool) -> Result<Maildrop, ClientError> {
        let stat = self.command(b"STAT\r\n", "STAT")?;
        let (count, octets) = reply::parse_stat(&stat)
            .ok_or_else(|| ClientError::Protocol("unreadable STAT reply".into()))?;
        self.command(b"LIST\r\n", "LIST")?;
        let list = self.listing()?;
        self.command(b"UIDL\r\n", "UIDL")?;
        let uidls = self.listing()?;
        let mut messages = join(&list, &uidls)?;
        if bodies {
            for (n, m) in messages.iter_mut().enumerate() {
                self.command(format!("RETR {}\r\n", n + 1).as_bytes(), "RETR")?;
                m.body_sha256 = Some(self.body_digest()?);
            }
        }
        Ok(Maildrop {
            stat_count: u64::from(count),
            stat_octets: octets,
            messages,
        })
    }

    /// QUIT; errors are ignored (the session's results are already read,
    /// and QUIT without DELE changes nothing).
    pub fn quit(mut self) {
        if self.send(b"QUIT\r\n").is_ok() {
            let _ = self.status();
        }
    }

    fn send(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        self.transport.write_all(bytes).map_err(io_error)?;
        self.transport.flush().map_err(io_error)
    }

    /// Sends `line`, reads its status: the text of `+OK`, or `Refused`.
    fn command(&mut self, line: &[u8], name: &'static str) -> Result<Vec<u8>, ClientError> {
        self.send(line)?;
        self.expect_ok(name)
    }

    fn expect_ok(&mut self, name: &'static str) -> Result<Vec<u8>, ClientError> {
        let (ok, text) = self.status()?;
        if ok {
            Ok(text)
        } else {
            Err(ClientError::Refused {
                command: name,
                text: String::from_utf8_lossy(&text).into_owned(),
            })
        }
    }

    /// Reads one status line.
    fn status(&mut self) -> Result<(bool, Vec<u8>), ClientError> {
        loop {
            match reply::parse_status(&self.buf) {
                Ok(Status::Complete((StatusLine { ok, text }, used))) => {
                    let text = text.to_vec();
                    self.buf.drain(..used);
                    return Ok((ok, text));
                }
                Ok(Status::Partial) => self.fill()?,
                Err(e) => return Err(ClientError::Protocol(e.to_string())),
            }
        }
    }

    /// Reads more bytes into the buffer; end of stream is an error.
    fn fill(&mut self) -> Result<(), ClientError> {
        if Instant::now() >= self.deadline {
            return Err(ClientError::Timeout);
        }
        let mut chunk = [0u8; 16 * 1024];
        let n = self.transport.read(&mut chunk).map_err(io_error)?;
        if n == 0 {
            return Err(ClientError::Protocol(
                "the server closed the connection".into(),
            ));
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }

    /// Reads a multi-line reply's body, un-stuffed, feeding it to `sink`.
    fn multiline(&mut self, mut sink: impl FnMut(&[u8]) -> bool) -> Result<(), ClientError> {
        let mut unstuffer = Unstuffer::new();
        let mut room = true;
        loop {
            let progress = unstuffer.feed(&self.buf, |chunk| room = room && sink(chunk));
            self.buf.drain(..progress.consumed);
            if !room {
                return Err(ClientError::Protocol(format!(
                    "a listing over {LISTING_BYTES_MAX} bytes"
                )));
            }
            if progress.done {
                return Ok(());
            }
            self.fill()?;
        }
    }

    /// A LIST or UIDL body as `(number, argument)` pairs.
    fn listing(&mut self) -> Result<Vec<(u32, Vec<u8>)>, ClientError> {
        let mut body = Vec::new();
        self.multiline(|chunk| {
            body.extend_from_slice(chunk);
            body.len() <= LISTING_BYTES_MAX
        })?;
        let entries =
            reply::parse_listing(&body).map_err(|e| ClientError::Protocol(e.to_string()))?;
        Ok(entries.into_iter().map(|(n, a)| (n, a.to_vec())).collect())
    }

    /// The SHA-256 of a RETR body.
    fn body_digest(&mut self) -> Result<[u8; 32], ClientError> {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        self.multiline(|chunk| {
            ctx.update(chunk);
            true
        })?;
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.finish().as_ref());
        Ok(out)
    }
}

/// Joins LIST and UIDL by message number; they must list the same numbers.
pub fn join(list: &[(u32, Vec<u8>)], uidls: &[(u32, Vec<u8>)]) -> Result<Vec<Listed>, ClientError> {
    if list.len() != uidls.len() {
        return Err(ClientError::Protocol(format!(
            "LIST has {} messages, UIDL {}",
            list.len(),
            uidls.len()
        )));
    }
    let mut out = Vec::with_capacity(list.len());
    for (i, ((ln, size), (un, uidl))) in list.iter().zip(uidls).enumerate() {
        let expected = u32::try_from(i + 1).ok();
        if Some(*ln) != expected || Some(*un) != expected {
            return Err(ClientError::Protocol(format!(
                "message numbers out of sequence at {}",
                i + 1
            )));
        }
        let octets = std::str::from_utf8(size)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| ClientError::Protocol(format!("LIST size of message {ln}")))?;
        out.push(Listed {
            uidl: uidl.clone().into_boxed_slice(),
            octets,
            body_sha256: None,
        });
    }
    Ok(out)
}

fn connect_any(addrs: &[SocketAddr], timeout: Duration) -> Result<TcpStream, ClientError> {
    let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
    for addr in addrs {
        match TcpStream::connect_timeout(addr, timeout) {
            Ok(s) => return Ok(s),
            Err(e) => last = e,
        }
    }
    Err(ClientError::Connect(last))
}

fn tls(
    config: &Arc<rustls::ClientConfig>,
    name: &ServerName<'static>,
    tcp: TcpStream,
) -> Result<Transport, ClientError> {
    let conn = rustls::ClientConnection::new(config.clone(), name.clone())
        .map_err(|e| ClientError::Protocol(format!("TLS: {e}")))?;
    let mut stream = rustls::StreamOwned::new(conn, tcp);
    // Finish the handshake now, so its failure is reported as such.
    while stream.conn.is_handshaking() {
        stream
            .conn
            .complete_io(&mut stream.sock)
            .map_err(|e| match io_error(e) {
                ClientError::Io(e) => ClientError::Protocol(format!("TLS handshake: {e}")),
                other => other,
            })?;
    }
    Ok(Transport::Tls(Box::new(stream)))
}

/// Runs a whole read-only session (greeting, login, STAT, LIST, UIDL,
/// RETR of every message, QUIT) against `server_bytes` as the server's
/// side of the conversation: what the fuzz target and the tests feed.
pub fn script(server_bytes: &[u8]) -> Result<Maildrop, ClientError> {
    let stream = Scripted {
        input: io::Cursor::new(server_bytes.to_vec()),
    };
    let mut session = Session::over(Box::new(stream), Duration::from_secs(60))?;
    session.login("user", "password")?;
    let drop = session.maildrop(true)?;
    session.quit();
    Ok(drop)
}

/// Reads come from a script; writes are dropped.
struct Scripted {
    input: io::Cursor<Vec<u8>>,
}

impl Read for Scripted {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.input.read(buf)
    }
}

impl Write for Scripted {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &[u8] = b"+OK hi\r\n+OK\r\n+OK\r\n+OK 2 9\r\n\
        +OK\r\n1 4\r\n2 5\r\n.\r\n+OK\r\n1 a\r\n2 b\r\n.\r\n\
        +OK\r\nab\r\n.\r\n+OK\r\n..x\r\n.\r\n+OK bye\r\n";

    #[test]
    fn a_scripted_session_reads_the_maildrop() {
        let drop = script(GOOD).unwrap();
        assert_eq!((drop.stat_count, drop.stat_octets), (2, 9));
        let uidls: Vec<&[u8]> = drop.messages.iter().map(|m| &*m.uidl).collect();
        assert_eq!(uidls, [&b"a"[..], b"b"]);
        let digest = ring::digest::digest(&ring::digest::SHA256, b".x\r\n");
        assert_eq!(drop.messages[1].body_sha256.unwrap(), digest.as_ref());
    }

    #[test]
    fn every_prefix_and_garbage_is_an_error_not_a_panic() {
        for cut in 0..GOOD.len() - b"+OK bye\r\n".len() {
            assert!(script(&GOOD[..cut]).is_err(), "cut {cut}");
        }
        let refused = script(b"+OK\r\n+OK\r\n-ERR [AUTH] no\r\n").unwrap_err();
        assert_eq!(refused.to_string(), "PASS refused: -ERR [AUTH] no");
        for garbage in [
            &b"* OK IMAP4rev1\r\n"[..],
            b"+OK\r\n+OK\r\n+OK\r\n+OK x y\r\n",
            b"+OK\r\n+OK\r\n+OK\r\n+OK 1 1\r\n+OK\r\n1\r\n.\r\n",
            b"+OK\r\n+OK\r\n+OK\r\n+OK 1 1\r\n+OK\r\n1 1\r\n.\r\n+OK\r\n7 a\r\n.\r\n",
            &[b'+'; 10_000][..],
        ] {
            assert!(
                script(garbage).is_err(),
                "{:?}",
                garbage.escape_ascii().to_string()
            );
        }
    }

    fn l(n: u32, a: &str) -> (u32, Vec<u8>) {
        (n, a.as_bytes().to_vec())
    }

    #[test]
    fn list_and_uidl_join_by_number() {
        let got = join(&[l(1, "10"), l(2, "20")], &[l(1, "a"), l(2, "b")]).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!((&*got[1].uidl, got[1].octets), (&b"b"[..], 20));
        for (list, uidls) in [
            (vec![l(1, "10")], vec![]),
            (vec![l(2, "10")], vec![l(2, "a")]),
            (vec![l(1, "x")], vec![l(1, "a")]),
            (vec![l(1, "10"), l(1, "10")], vec![l(1, "a"), l(2, "b")]),
        ] {
            assert!(join(&list, &uidls).is_err(), "{list:?} {uidls:?}");
        }
    }
}
