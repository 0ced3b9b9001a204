//! The `/metrics` endpoint: a small HTTP/1.x server on its own threads,
//! never a shard's or the worker pool's, so no HTTP client can hold either.
//!
//! Every connection gets one response and is closed. Hostile clients are
//! bounded: at most [`CONNECTIONS_MAX`] are served at once (more are closed
//! unanswered), the request head must arrive whole within
//! [`REQUEST_DEADLINE`] (a slowloris trickling bytes is cut off at the
//! deadline, not at each read's timeout) and within [`REQUEST_BYTES_MAX`]
//! bytes, and the response must drain within [`WRITE_TIMEOUT`]. Request
//! parsing is httparse's; [`route`] is the whole policy, pure and fuzzed.
#![forbid(unsafe_code)]

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::Metrics;

/// Requests served at the same time; Prometheus needs one.
pub const CONNECTIONS_MAX: usize = 8;
/// The longest request head (request line and headers).
pub const REQUEST_BYTES_MAX: usize = 8192;
/// Headers a request may carry.
const HEADERS_MAX: usize = 32;
/// How long a client has to send its whole request head.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(5);
/// How long a response may take to drain.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// What to do with the bytes of a request head received so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// The head is not complete yet: read more.
    Partial,
    /// `GET /metrics`: 200 with the exposition.
    Metrics,
    /// Any other method or path: 404.
    NotFound,
    /// Not HTTP/1.x: 400.
    BadRequest,
    /// Past [`REQUEST_BYTES_MAX`] or too many headers: 431.
    TooLarge,
}

/// Decides on a request head (`buf`: every byte received so far).
pub fn route(buf: &[u8]) -> Route {
    let mut headers = [httparse::EMPTY_HEADER; HEADERS_MAX];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(buf) {
        Ok(httparse::Status::Complete(_)) => {
            let path = request.path.unwrap_or("");
            let path = path.split_once('?').map_or(path, |(p, _)| p);
            if request.method == Some("GET") && path == "/metrics" {
                Route::Metrics
            } else {
                Route::NotFound
            }
        }
        Ok(httparse::Status::Partial) if buf.len() >= REQUEST_BYTES_MAX => Route::TooLarge,
        Ok(httparse::Status::Partial) => Route::Partial,
        Err(httparse::Error::TooManyHeaders) => Route::TooLarge,
        Err(_) => Route::BadRequest,
    }
}

/// The running endpoint. Dropping it stops accepting and joins the accept
/// thread (requests in flight finish on their own threads).
#[derive(Debug)]
pub struct MetricsServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl MetricsServer {
    /// Where it listens (port 0 resolved).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // Wake the blocking accept with a connection of our own.
        let wake = match self.addr.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        let _ = TcpStream::connect_timeout(&SocketAddr::new(wake, self.addr.port()), WRITE_TIMEOUT);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Binds `addr` now (so a bad address fails at startup) and serves
/// `GET /metrics` from `metrics` on a thread of its own.
pub fn serve(addr: SocketAddr, metrics: Arc<Metrics>) -> io::Result<MetricsServer> {
    let listener = TcpListener::bind(addr)?;
    let addr = listener.local_addr()?;
    let stop = Arc::new(AtomicBool::new(false));
    let thread = std::thread::Builder::new().name("metrics".into()).spawn({
        let stop = stop.clone();
        move || accept_loop(&listener, &metrics, &stop)
    })?;
    tracing::info!(%addr, "metrics endpoint listening");
    Ok(MetricsServer {
        addr,
        stop,
        thread: Some(thread),
    })
}

fn accept_loop(listener: &TcpListener, metrics: &Arc<Metrics>, stop: &AtomicBool) {
    let busy = Arc::new(AtomicUsize::new(0));
    loop {
        let accepted = listener.accept();
        if stop.load(Ordering::Acquire) {
            return;
        }
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "metrics endpoint: accept failed");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        if busy.load(Ordering::Acquire) >= CONNECTIONS_MAX {
            // Closed unanswered: a flood costs it nothing but the accept.
            continue;
        }
        busy.fetch_add(1, Ordering::AcqRel);
        let guard = Busy(busy.clone());
        let metrics = metrics.clone();
        let spawned = std::thread::Builder::new()
            .name("metrics-conn".into())
            .spawn(move || {
                let _guard = guard;
                let _ = handle(stream, &metrics);
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "metrics endpoint: cannot start a thread");
        }
    }
}

/// Releases a connection slot however its thread ends.
struct Busy(Arc<AtomicUsize>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

fn handle(mut stream: TcpStream, metrics: &Metrics) -> io::Result<()> {
    stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
    let deadline = Instant::now() + REQUEST_DEADLINE;
    let mut buf = vec![0u8; REQUEST_BYTES_MAX];
    let mut len = 0;
    let verdict = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break None;
        }
        stream.set_read_timeout(Some(left))?;
        let n = match stream.read(&mut buf[len..]) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                break None;
            }
            Err(e) => return Err(e),
        };
        len += n;
        match route(&buf[..len]) {
            Route::Partial => {}
            done => break Some(done),
        }
    };
    let response = match verdict {
        None => response("408 Request Timeout", "text/plain", "request timeout\n"),
        Some(Route::Metrics) => response(
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            &metrics.render(),
        ),
        Some(Route::NotFound) => response("404 Not Found", "text/plain", "not found\n"),
        Some(Route::TooLarge) => response(
            "431 Request Header Fields Too Large",
            "text/plain",
            "request too large\n",
        ),
        Some(Route::BadRequest | Route::Partial) => {
            response("400 Bad Request", "text/plain", "bad request\n")
        }
    };
    stream.write_all(response.as_bytes())?;
    let _ = stream.shutdown(std::net::Shutdown::Write);
    Ok(())
}

fn response(status: &str, content_type: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}
