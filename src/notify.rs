//! systemd's notify protocol (`sd_notify(3)`): one datagram per state change
//! to the unix socket named by `$NOTIFY_SOCKET`, for `Type=notify` units.
//!
//! `READY=1` once every listener is bound, `STOPPING=1` when shutdown
//! begins, `WATCHDOG=1` at half the unit's `WatchdogSec=` while the process
//! is healthy. Outside systemd (no `$NOTIFY_SOCKET`) every call does nothing.
//!
//! Written out rather than taken from the `sd-notify` crate: that crate
//! reads the environment on every call, so a test would have to set
//! `NOTIFY_SOCKET` in its own process (an `unsafe` `set_var` in edition
//! 2024, which this crate does not allow). Here the socket is read once and
//! held, and tests point a [`Notifier`] at a socket of their own.
#![forbid(unsafe_code)]

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::PathBuf;
use std::time::Duration;

/// Where state changes go.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Target {
    /// A socket file.
    Path(PathBuf),
    /// A Linux abstract-namespace socket (`$NOTIFY_SOCKET` starting `@`).
    Abstract(Vec<u8>),
}

/// A handle on the service manager's notify socket, or on nothing.
#[derive(Clone, Debug, Default)]
pub struct Notifier {
    target: Option<Target>,
    watchdog: Option<Duration>,
}

impl Notifier {
    /// From `$NOTIFY_SOCKET`, `$WATCHDOG_USEC` and `$WATCHDOG_PID` (the
    /// watchdog is ours only when the PID is unset or is this process).
    pub fn from_env() -> Notifier {
        let target = std::env::var_os("NOTIFY_SOCKET").and_then(|s| parse_target(&s));
        let pid_ok = std::env::var("WATCHDOG_PID")
            .ok()
            .is_none_or(|p| p.trim().parse::<u32>().ok() == Some(std::process::id()));
        let watchdog = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .filter(|&usec| usec > 0 && pid_ok)
            .map(Duration::from_micros);
        Notifier { target, watchdog }
    }

    /// A notifier for the socket `name` (`$NOTIFY_SOCKET` syntax: a path,
    /// or `@name` for the abstract namespace), without a watchdog.
    pub fn to(name: &OsStr) -> Notifier {
        Notifier {
            target: parse_target(name),
            watchdog: None,
        }
    }

    /// Whether a service manager listens.
    pub fn enabled(&self) -> bool {
        self.target.is_some()
    }

    /// How often to send `WATCHDOG=1`: half the unit's `WatchdogSec=`, as
    /// `sd_watchdog_enabled(3)` advises. `None` when no watchdog is set.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog.map(|d| d / 2)
    }

    /// `READY=1` with a status line and our PID.
    pub fn ready(&self, status: &str) -> io::Result<()> {
        let pid = std::process::id();
        self.send(&format!("READY=1\nSTATUS={status}\nMAINPID={pid}\n"))
    }

    /// `STOPPING=1`: shutdown has begun (sessions are draining).
    pub fn stopping(&self) -> io::Result<()> {
        self.send("STOPPING=1\nSTATUS=draining sessions\n")
    }

    /// `WATCHDOG=1`: still alive.
    pub fn watchdog(&self) -> io::Result<()> {
        self.send("WATCHDOG=1\n")
    }

    /// Sends one datagram of `KEY=VALUE` lines.
    pub fn send(&self, state: &str) -> io::Result<()> {
        let Some(target) = &self.target else {
            return Ok(());
        };
        let socket = UnixDatagram::unbound()?;
        let sent = match target {
            Target::Path(path) => socket.send_to(state.as_bytes(), path)?,
            Target::Abstract(name) => {
                use std::os::linux::net::SocketAddrExt;
                let addr = SocketAddr::from_abstract_name(name)?;
                socket.send_to_addr(state.as_bytes(), &addr)?
            }
        };
        if sent != state.len() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "notify datagram truncated",
            ));
        }
        Ok(())
    }

    /// Sends `WATCHDOG=1` at [`Self::watchdog_interval`] from a thread of its
    /// own for as long as `alive()` says so; the first `false` ends the
    /// thread. Returns `None` when no watchdog is set. `alive` is where the
    /// engine's health check goes (e.g. every shard's loop ticked recently,
    /// and shutdown has not begun): a wedged process stops pinging and
    /// systemd restarts it.
    pub fn spawn_watchdog(
        &self,
        alive: impl Fn() -> bool + Send + 'static,
    ) -> Option<std::thread::JoinHandle<()>> {
        let interval = self.watchdog_interval()?;
        let notifier = self.clone();
        std::thread::Builder::new()
            .name("watchdog".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(interval);
                    if !alive() {
                        return;
                    }
                    let _ = notifier.watchdog();
                }
            })
            .ok()
    }
}

fn parse_target(s: &OsStr) -> Option<Target> {
    let bytes = s.as_bytes();
    match bytes.first()? {
        b'@' => Some(Target::Abstract(bytes[1..].to_vec())),
        b'/' => Some(Target::Path(PathBuf::from(s))),
        // sd_notify(3) accepts only absolute paths and abstract names
        // (and vsock, which a POP3 server has no use for).
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listener() -> (tempfile::TempDir, PathBuf, UnixDatagram) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        (dir, path, socket)
    }

    fn recv(socket: &UnixDatagram) -> String {
        let mut buf = [0u8; 4096];
        let n = socket.recv(&mut buf).unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[test]
    fn ready_stopping_and_watchdog_reach_the_socket() {
        let (_dir, path, socket) = listener();
        let n = Notifier::to(path.as_os_str());
        assert!(n.enabled());
        n.ready("serving 2 listeners").unwrap();
        let ready = recv(&socket);
        assert!(ready.starts_with("READY=1\n"), "{ready}");
        assert!(ready.contains("STATUS=serving 2 listeners\n"));
        assert!(ready.contains(&format!("MAINPID={}\n", std::process::id())));
        n.watchdog().unwrap();
        assert_eq!(recv(&socket), "WATCHDOG=1\n");
        n.stopping().unwrap();
        assert!(recv(&socket).starts_with("STOPPING=1\n"));
    }

    #[test]
    fn abstract_sockets_work() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("shardpop-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let socket = UnixDatagram::bind_addr(&addr).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        Notifier::to(OsStr::new(&format!("@{name}")))
            .ready("up")
            .unwrap();
        assert!(recv(&socket).starts_with("READY=1\n"));
    }

    #[test]
    fn without_a_socket_nothing_is_sent_and_nothing_fails() {
        let n = Notifier::default();
        assert!(!n.enabled());
        n.ready("x").unwrap();
        n.stopping().unwrap();
        assert!(n.spawn_watchdog(|| true).is_none());
        assert!(!Notifier::to(OsStr::new("relative/path")).enabled());
        assert!(!Notifier::to(OsStr::new("")).enabled());
    }

    #[test]
    fn a_vanished_manager_is_an_error_not_a_panic() {
        let (dir, path, socket) = listener();
        drop(socket);
        drop(dir);
        assert!(Notifier::to(path.as_os_str()).ready("x").is_err());
    }

    #[test]
    fn the_watchdog_pings_at_half_the_interval() {
        let (_dir, path, socket) = listener();
        let n = Notifier {
            target: parse_target(path.as_os_str()),
            watchdog: Some(Duration::from_millis(100)),
        };
        assert_eq!(n.watchdog_interval(), Some(Duration::from_millis(50)));
        let pings = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
        let thread = n
            .spawn_watchdog({
                let pings = pings.clone();
                move || pings.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < 3
            })
            .unwrap();
        for _ in 0..3 {
            assert_eq!(recv(&socket), "WATCHDOG=1\n");
        }
        // Unhealthy: the thread stops and no more pings come.
        thread.join().unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        assert!(socket.recv(&mut [0u8; 64]).is_err());
    }
}
