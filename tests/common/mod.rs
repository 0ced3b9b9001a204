//! Shared end-to-end helpers: a mail tree in a temp dir, a real
//! `shardpop serve` process on 127.0.0.1:0, and a line-oriented POP3 client.
//! Every process started here is stopped when its handle drops.
//!
//! Every end-to-end test that starts a server runs on both engines:
//! `engine_test!(name);` above `fn name(engine: Engine)` expands into the
//! tests `name::epoll` and `name::uring` (monoio's `test_all`, without a
//! proc macro), and `Opts::new(engine)` passes `--engine` to the server.
#![allow(dead_code)]

/// Runs the function `$name(engine: Engine)` once per engine, as the tests
/// `$name::epoll` and `$name::uring`. A function the macro is not given is
/// never called, and the dead-code lint says so.
macro_rules! engine_test {
    ($name:ident) => {
        mod $name {
            #[test]
            fn epoll() {
                super::$name(crate::common::Engine::Epoll);
            }

            #[test]
            fn uring() {
                super::$name(crate::common::Engine::Uring);
            }
        }
    };
}

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long any single read may wait before a test fails instead of hanging.
pub const IO_TIMEOUT: Duration = Duration::from_secs(20);

/// A mail tree: passwd-file plus one Maildir per user under `root/mail/%u`.
pub struct Tree {
    pub dir: tempfile::TempDir,
    pub users: Vec<(String, String)>,
}

impl Tree {
    pub fn new() -> Tree {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::create_dir_all(dir.path().join("mail")).unwrap();
        Tree {
            dir,
            users: Vec::new(),
        }
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// Adds a user with a `{PLAIN}` password (the scheme tests live in auth).
    pub fn user(&mut self, name: &str, password: &str) -> PathBuf {
        self.users.push((name.to_string(), password.to_string()));
        let md = self.maildir(name);
        for sub in ["cur", "new", "tmp"] {
            fs::create_dir_all(md.join(sub)).unwrap();
        }
        self.write_passwd();
        md
    }

    /// Adds a user whose passwd entry is the given hash, as a real file has.
    pub fn user_with_hash(&mut self, name: &str, hash: &str) -> PathBuf {
        self.users.push((name.to_string(), String::new()));
        let md = self.maildir(name);
        for sub in ["cur", "new", "tmp"] {
            fs::create_dir_all(md.join(sub)).unwrap();
        }
        let mut text = fs::read_to_string(self.passwd()).unwrap_or_default();
        text.push_str(&format!("{name}:{hash}:1000:1000::::\n"));
        fs::write(self.passwd(), text).unwrap();
        md
    }

    fn write_passwd(&self) {
        let mut text = String::new();
        for (name, password) in &self.users {
            if !password.is_empty() {
                text.push_str(&format!("{name}:{{PLAIN}}{password}:1000:1000::::\n"));
            }
        }
        fs::write(self.passwd(), text).unwrap();
    }

    pub fn passwd(&self) -> PathBuf {
        self.root().join("passwd")
    }

    pub fn maildir(&self, user: &str) -> PathBuf {
        self.root().join("mail").join(user).join("Maildir")
    }

    pub fn location(&self) -> String {
        format!("maildir:{}/mail/%u/Maildir", self.root().display())
    }

    /// Delivers `body` to `user` as `cur/<n>.M<n>.test:2,` (delivery order = n).
    pub fn deliver(&self, user: &str, n: u32, body: &[u8]) -> PathBuf {
        let path = self
            .maildir(user)
            .join("cur")
            .join(format!("{}.M{n}.test:2,", 1_700_000_000 + n));
        fs::write(&path, body).unwrap();
        path
    }

    /// Files now in the user's cur/ and new/, sorted.
    pub fn files(&self, user: &str) -> Vec<String> {
        let mut names = Vec::new();
        for sub in ["cur", "new"] {
            for e in fs::read_dir(self.maildir(user).join(sub)).unwrap() {
                let name = e.unwrap().file_name().into_string().unwrap();
                if !name.starts_with('.') {
                    names.push(name);
                }
            }
        }
        names.sort();
        names
    }
}

/// The wire form of a stored message body as a client reassembles it after
/// un-stuffing: LF → CRLF (existing CRLF kept), plus the CRLF the server adds
/// when the message does not end with a newline.
pub fn crlf(stored: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(stored.len() + stored.len() / 40);
    let mut prev = 0u8;
    for &b in stored {
        if b == b'\n' && prev != b'\r' {
            out.push(b'\r');
        }
        out.push(b);
        prev = b;
    }
    out
}

/// A running `shardpop serve`.
pub struct Server {
    child: Child,
    pub addr: SocketAddr,
    log: Arc<Mutex<String>>,
    _config: tempfile::NamedTempFile,
}

/// The server's `--engine`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engine {
    Epoll,
    Uring,
    Auto,
}

impl Engine {
    pub fn arg(self) -> &'static str {
        match self {
            Engine::Epoll => "epoll",
            Engine::Uring => "uring",
            Engine::Auto => "auto",
        }
    }

    /// The start of the one log line that names the engine in use.
    fn log_line(self) -> Option<&'static str> {
        match self {
            Engine::Epoll => Some("engine: epoll"),
            Engine::Uring => Some("engine: io_uring"),
            Engine::Auto => None,
        }
    }
}

/// How to start the server: engine, shards, extra TOML appended to the
/// defaults the tests use, environment variables, and a descriptor limit.
pub struct Opts {
    pub engine: Engine,
    pub shards: usize,
    pub toml: String,
    pub env: Vec<(&'static str, &'static str)>,
    pub nofile: Option<usize>,
    /// Extra `serve` flags.
    pub args: Vec<String>,
}

impl Opts {
    /// The defaults on `engine`; there is no engine-less default, so no
    /// test forgets to pass it.
    pub fn new(engine: Engine) -> Opts {
        Opts {
            engine,
            shards: 2,
            toml: String::new(),
            args: Vec::new(),
            env: Vec::new(),
            nofile: None,
        }
    }
}

impl Server {
    pub fn start(tree: &Tree, engine: Engine) -> Server {
        Server::start_with(tree, Opts::new(engine))
    }

    pub fn start_with(tree: &Tree, opts: Opts) -> Server {
        let mut config = tempfile::NamedTempFile::new().unwrap();
        let toml = if opts.toml.contains("[auth]") {
            opts.toml.clone()
        } else {
            format!("[auth]\nfailure_delay_ms = 0\n{}", opts.toml)
        };
        config.write_all(toml.as_bytes()).unwrap();
        // With a descriptor limit, `prlimit` sets it before the server starts
        // (a limit lowered later would not reach an accept already armed).
        let mut command = match opts.nofile {
            Some(n) => {
                let mut c = Command::new("prlimit");
                c.arg(format!("--nofile={n}:{n}"))
                    .arg("--")
                    .arg(env!("CARGO_BIN_EXE_shardpop"));
                c
            }
            None => Command::new(env!("CARGO_BIN_EXE_shardpop")),
        };
        let mut child = command
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--shards",
                &opts.shards.to_string(),
                "--workers",
                "2",
                "--engine",
                opts.engine.arg(),
            ])
            .arg("--passwd-file")
            .arg(tree.passwd())
            .arg("--mail-location")
            .arg(tree.location())
            .arg("--config")
            .arg(config.path())
            .args(&opts.args)
            .env("RUST_LOG", "info")
            .envs(opts.env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start shardpop");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        {
            let log = Arc::clone(&log);
            std::thread::spawn(move || {
                let mut sent = false;
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    if !sent && let Some(addr) = listening_addr(&line) {
                        let _ = tx.send(addr);
                        sent = true;
                    }
                    let mut log = log.lock().unwrap();
                    log.push_str(&line);
                    log.push('\n');
                }
            });
        }
        let addr = match rx.recv_timeout(IO_TIMEOUT) {
            Ok(addr) => addr,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("server did not start; log:\n{}", log.lock().unwrap());
            }
        };
        let server = Server {
            child,
            addr,
            log,
            _config: config,
        };
        // The engine line is logged before the listeners are bound.
        if let Some(line) = opts.engine.log_line() {
            let log = server.log();
            assert!(log.contains(line), "not on {:?}:\n{log}", opts.engine);
        }
        server
    }

    /// The configuration file the server was started with (to rewrite it
    /// before a SIGHUP).
    pub fn config_path(&self) -> &Path {
        self._config.path()
    }

    /// The log as it grows, readable after the server is gone.
    pub fn log_handle(&self) -> Arc<Mutex<String>> {
        Arc::clone(&self.log)
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits until the log contains `needle` (log lines arrive asynchronously).
    pub fn wait_log(&self, needle: &str) -> String {
        let deadline = Instant::now() + IO_TIMEOUT;
        loop {
            let log = self.log();
            if log.contains(needle) {
                return log;
            }
            assert!(
                Instant::now() < deadline,
                "log never contained {needle:?}:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The implicit-TLS listener (started with `--tls-listen 127.0.0.1:0`).
    pub fn tls_addr(&self) -> SocketAddr {
        let log = self.wait_log("tls=true");
        let line = log
            .lines()
            .find(|l| l.contains("listening") && l.contains("tls=true"))
            .unwrap();
        listening_addr(line).expect("a listening line with an address")
    }

    pub fn connect(&self) -> Client {
        Client::connect(self.addr)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and waits for a clean exit.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        self.signal(libc::SIGTERM);
        let deadline = Instant::now() + IO_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "server did not stop after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn signal(&self, signal: i32) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Stops the process without any chance to clean up, as a crash would.
    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn listening_addr(line: &str) -> Option<SocketAddr> {
    if !line.contains("listening") {
        return None;
    }
    // Text (`addr=127.0.0.1:1234`) or `--log-format json` (`"addr":"..."`).
    if let Some(at) = line.find("\"addr\":\"") {
        let rest = &line[at + 8..];
        return rest[..rest.find('"')?].parse().ok();
    }
    let at = line.find("addr=")? + 5;
    line[at..].split_whitespace().next()?.parse().ok()
}

/// A minimal POP3 client for scripted transcripts.
pub struct Client {
    pub reader: BufReader<TcpStream>,
    pub stream: TcpStream,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        let mut c = Client::connect_silent(addr);
        let greeting = c.line();
        assert!(greeting.starts_with("+OK"), "{greeting}");
        c
    }

    /// Connects without reading the greeting (a proxy's header goes first).
    pub fn connect_silent(addr: SocketAddr) -> Client {
        Client::from_stream(TcpStream::connect(addr).expect("connect"))
    }

    /// A client on a stream connected elsewhere; the greeting is not read.
    pub fn from_stream(stream: TcpStream) -> Client {
        stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        let reader = BufReader::new(stream.try_clone().unwrap());
        Client { reader, stream }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    /// One reply line, without CRLF.
    pub fn line(&mut self) -> String {
        let mut buf = Vec::new();
        self.reader
            .read_until(b'\n', &mut buf)
            .expect("read a reply line");
        assert!(
            buf.ends_with(b"\r\n"),
            "reply line not CRLF-terminated: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.truncate(buf.len() - 2);
        String::from_utf8_lossy(&buf).into_owned()
    }

    /// Sends a command, returns the first reply line.
    pub fn cmd(&mut self, line: &str) -> String {
        self.send(format!("{line}\r\n").as_bytes());
        self.line()
    }

    /// Reads a multi-line body up to ".\r\n" and undoes dot-stuffing; returns
    /// the raw wire bytes too.
    pub fn multiline(&mut self) -> (Vec<u8>, Vec<u8>) {
        let mut raw = Vec::new();
        let mut body = Vec::new();
        loop {
            let mut line = Vec::new();
            let n = self.reader.read_until(b'\n', &mut line).expect("read body");
            assert!(n > 0, "connection closed inside a multi-line reply");
            raw.extend_from_slice(&line);
            if line == b".\r\n" {
                return (body, raw);
            }
            let content = if line.starts_with(b".") {
                &line[1..]
            } else {
                &line[..]
            };
            body.extend_from_slice(content);
        }
    }

    pub fn login(&mut self, user: &str, password: &str) {
        assert_eq!(self.cmd(&format!("USER {user}")), "+OK");
        let reply = self.cmd(&format!("PASS {password}"));
        assert!(reply.starts_with("+OK"), "login {user}: {reply}");
    }

    /// True once the server has closed the connection (reads EOF).
    pub fn is_closed(&mut self) -> bool {
        let mut byte = [0u8; 1];
        matches!(self.reader.read(&mut byte), Ok(0))
    }
}

/// Runs a Python 3 script (a real client such as poplib or ssl) and returns
/// what it printed; fails the test with its stderr when it fails.
pub fn python(script: &str) -> String {
    let out = Command::new("python3")
        .args(["-c", script])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}
