//! The harness over TLS against a small in-process rustls POP3 server
//! (implicit TLS and STLS): handshake counts, resumption, body
//! verification through TLS, and an untrusted certificate. The real-server
//! run (shardpop and Dovecot) is `scripts/bench-vs-dovecot --smoke`.

#[path = "../../tests/common/tls_fixture.rs"]
mod tls_fixture;

use loadtest::corpus::{Corpus, User};
use loadtest::engine::{self, Outcome, RunConfig};
use loadtest::session::{Plan, Scenario};
use loadtest::stats::{ErrorKind, Timer};
use loadtest::template::MailLocation;
use loadtest::tls::{TlsArgs, TlsMode};
use loadtest::unstuff::stuff;
use loadtest::verify::to_crlf;
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tls_fixture::TestCa;

/// A CA, a server certificate and a corpus in a temp dir.
struct World {
    dir: tempfile::TempDir,
    ca: TestCa,
    server: Arc<ServerConfig>,
    users: Vec<User>,
}

/// The message whose RETR the server corrupts (one byte).
const CORRUPT: &str = "1001.M2.h";

impl World {
    fn new(users: usize) -> World {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new(dir.path());
        let leaf = ca.issue(dir.path(), "server");
        let chain = CertificateDer::pem_file_iter(&leaf.cert)
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_file(&leaf.key).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut server = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        server.ticketer = rustls::crypto::ring::Ticketer::new().unwrap();
        let mut list = Vec::new();
        for u in 0..users {
            let name = format!("user{u}");
            let md = dir.path().join("mail").join(&name).join("Maildir");
            for sub in ["cur", "new", "tmp"] {
                std::fs::create_dir_all(md.join(sub)).unwrap();
            }
            std::fs::write(md.join("cur/1000.M1.h:2,S"), b"Subject: a\n\n.\n..x\n").unwrap();
            let big: Vec<u8> = (0..100_000u32)
                .map(|i| {
                    if i % 70 == 69 {
                        b'\n'
                    } else {
                        b'a' + (i % 26) as u8
                    }
                })
                .collect();
            std::fs::write(md.join(format!("new/{CORRUPT}")), big).unwrap();
            list.push(User {
                name: name.clone(),
                pass: format!("pw-{name}"),
            });
        }
        World {
            dir,
            ca,
            server: Arc::new(server),
            users: list,
        }
    }

    fn mail_root(&self) -> PathBuf {
        self.dir.path().join("mail")
    }

    fn config(&self, scenario: Scenario, addr: SocketAddr, tls: TlsArgs) -> RunConfig {
        let location = MailLocation::parse(&format!(
            "maildir:{}/%u/Maildir",
            self.mail_root().display()
        ))
        .unwrap();
        let settings = tls.settings(addr).unwrap().expect("TLS on");
        RunConfig {
            plan: Plan {
                scenario,
                new_share: 0.5,
                stls: settings.mode == TlsMode::Stls,
            },
            addr,
            users: self.users.clone(),
            corpus: Some(Corpus::new(&location, &self.users, 16 << 20).unwrap()),
            concurrency: 4,
            rate: None,
            threads: 2,
            duration: Duration::from_millis(800),
            warmup: Duration::ZERO,
            drain: Duration::from_secs(10),
            timeout: Duration::from_secs(10),
            ramp: 8,
            max_open: 100,
            seed: 3,
            progress: false,
            ready_file: None,
            hold: None,
            tls: Some(settings),
        }
    }
}

/// What the server did.
#[derive(Default)]
struct Served {
    retr: AtomicU64,
    corrupted: AtomicU64,
    resumed: AtomicU64,
}

/// A thread-per-connection POP3 server over TLS (implicit, or after STLS).
fn tls_server(world: &World, mode: TlsMode) -> (SocketAddr, Arc<Served>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let served = Arc::new(Served::default());
    let (config, root, s) = (world.server.clone(), world.mail_root(), served.clone());
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let (config, root, s) = (config.clone(), root.clone(), s.clone());
            std::thread::spawn(move || {
                let _ = serve(stream, config, mode, &root, &s);
            });
        }
    });
    (addr, served)
}

fn serve(
    mut tcp: TcpStream,
    config: Arc<ServerConfig>,
    mode: TlsMode,
    root: &Path,
    s: &Served,
) -> std::io::Result<()> {
    if mode == TlsMode::Stls {
        tcp.write_all(b"+OK plain ready\r\n")?;
        let mut line = [0u8; 6];
        tcp.read_exact(&mut line)?;
        assert_eq!(&line, b"STLS\r\n");
        tcp.write_all(b"+OK begin TLS\r\n")?;
    }
    let conn = rustls::ServerConnection::new(config).map_err(std::io::Error::other)?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    if mode == TlsMode::Implicit {
        tls.write_all(b"+OK tls ready\r\n")?;
    } else {
        // Complete the handshake before reading USER.
        tls.conn.complete_io(&mut tls.sock)?;
    }
    let mut lines = BufReader::new(tls);
    let (mut user, mut files) = (String::new(), Vec::new());
    let mut line = String::new();
    loop {
        line.clear();
        if lines.read_line(&mut line)? == 0 {
            return Ok(());
        }
        if lines.get_ref().conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed)
            && line.starts_with("USER")
        {
            s.resumed.fetch_add(1, Ordering::Relaxed);
        }
        let mut words = line.split_whitespace();
        let (cmd, arg) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
        let n = arg.parse::<usize>().unwrap_or(0);
        let reply = match cmd {
            "USER" => {
                user = arg.to_string();
                b"+OK\r\n".to_vec()
            }
            "PASS" if arg == format!("pw-{user}") => {
                let md = root.join(&user).join("Maildir");
                files = ["cur", "new"]
                    .iter()
                    .flat_map(|d| std::fs::read_dir(md.join(d)).unwrap().flatten())
                    .map(|e| e.path())
                    .collect();
                files.sort();
                b"+OK\r\n".to_vec()
            }
            "STAT" => format!("+OK {} 0\r\n", files.len()).into_bytes(),
            "LIST" | "UIDL" => {
                let mut r = b"+OK\r\n".to_vec();
                for (i, f) in files.iter().enumerate() {
                    let arg = if cmd == "LIST" {
                        to_crlf(&std::fs::read(f)?).len().to_string()
                    } else {
                        base(f)
                    };
                    r.extend(format!("{} {arg}\r\n", i + 1).bytes());
                }
                r.extend(b".\r\n");
                r
            }
            "RETR" if (1..=files.len()).contains(&n) => {
                let mut body = to_crlf(&std::fs::read(&files[n - 1])?);
                s.retr.fetch_add(1, Ordering::Relaxed);
                if base(&files[n - 1]) == CORRUPT && user == "user0" {
                    body[5] ^= 0x01;
                    s.corrupted.fetch_add(1, Ordering::Relaxed);
                }
                let mut r = format!("+OK {} octets\r\n", body.len()).into_bytes();
                r.extend(stuff(&body));
                r
            }
            "QUIT" => {
                let tls = lines.get_mut();
                tls.write_all(b"+OK bye\r\n")?;
                tls.conn.send_close_notify();
                tls.flush()?;
                return Ok(());
            }
            _ => b"-ERR what\r\n".to_vec(),
        };
        lines.get_mut().write_all(&reply)?;
    }
}

fn base(path: &Path) -> String {
    let name = path.file_name().unwrap().to_string_lossy();
    name.split(':').next().unwrap().to_string()
}

fn trusting(world: &World, implicit: bool, resume: bool) -> TlsArgs {
    TlsArgs {
        tls: implicit,
        stls: !implicit,
        tls_resume: resume,
        tls_ca: Some(world.ca.ca_pem.clone()),
        ..TlsArgs::default()
    }
}

#[test]
fn implicit_tls_download_verifies_bodies_and_resumes_sessions() {
    let world = World::new(6);
    let (addr, served) = tls_server(&world, TlsMode::Implicit);
    let cfg = world.config(Scenario::Download, addr, trusting(&world, true, true));
    let Outcome { stats, .. } = engine::run(cfg).unwrap();
    assert!(stats.sessions > 4, "{} sessions", stats.sessions);
    assert_eq!(stats.error_total(), 0);
    // Every body crossed TLS and was checked: corrupted ones caught.
    let (retr, corrupted) = (
        served.retr.load(Ordering::Relaxed),
        served.corrupted.load(Ordering::Relaxed),
    );
    assert!(corrupted > 0);
    assert_eq!(stats.mismatches, corrupted);
    assert_eq!(stats.verified + stats.mismatches, retr);
    // Each user's first connection is a full handshake, the rest resume.
    assert!(stats.handshakes_full >= 1);
    assert!(
        stats.handshakes_resumed > stats.handshakes_full,
        "full {} resumed {}",
        stats.handshakes_full,
        stats.handshakes_resumed
    );
    assert!(served.resumed.load(Ordering::Relaxed) >= stats.handshakes_resumed);
    assert_eq!(
        stats.histogram(Timer::Handshake).len(),
        stats.handshakes_full + stats.handshakes_resumed
    );
}

#[test]
fn stls_login_without_resumption_is_all_full_handshakes() {
    let world = World::new(6);
    let (addr, served) = tls_server(&world, TlsMode::Stls);
    let cfg = world.config(Scenario::Login, addr, trusting(&world, false, false));
    let Outcome { stats, .. } = engine::run(cfg).unwrap();
    assert!(stats.sessions > 4, "{} sessions", stats.sessions);
    assert_eq!(stats.error_total(), 0);
    assert!(stats.handshakes_full >= stats.sessions);
    assert_eq!(stats.handshakes_resumed, 0);
    assert_eq!(served.resumed.load(Ordering::Relaxed), 0);
    // Login is timed after the handshake, over TLS; a session that logged
    // in before the deadline may QUIT after it (then it is not counted).
    let logins = stats.histogram(Timer::Login).len();
    assert!(
        (stats.sessions..=stats.sessions + 4).contains(&logins),
        "{logins} logins, {} sessions",
        stats.sessions
    );
}

#[test]
fn stls_with_resumption_resumes() {
    let world = World::new(6);
    let (addr, _) = tls_server(&world, TlsMode::Stls);
    let cfg = world.config(Scenario::Login, addr, trusting(&world, false, true));
    let Outcome { stats, .. } = engine::run(cfg).unwrap();
    assert_eq!(stats.error_total(), 0);
    assert!(stats.handshakes_resumed > stats.handshakes_full);
}

#[test]
fn an_untrusted_certificate_is_a_tls_error() {
    let world = World::new(6);
    let other = tempfile::tempdir().unwrap();
    let stranger = TestCa::new(other.path());
    let (addr, _) = tls_server(&world, TlsMode::Implicit);
    let args = TlsArgs {
        tls: true,
        tls_ca: Some(stranger.ca_pem.clone()),
        ..TlsArgs::default()
    };
    let mut cfg = world.config(Scenario::Login, addr, args);
    cfg.duration = Duration::from_millis(300);
    let Outcome { stats, .. } = engine::run(cfg).unwrap();
    assert_eq!(stats.sessions, 0);
    assert!(stats.errors[ErrorKind::Tls as usize] > 0);
    assert_eq!(stats.error_total(), stats.errors[ErrorKind::Tls as usize]);

    // --tls-insecure accepts it (and says so in its help).
    let insecure = TlsArgs {
        tls: true,
        tls_insecure: true,
        ..TlsArgs::default()
    };
    let mut cfg = world.config(Scenario::Login, addr, insecure);
    cfg.duration = Duration::from_millis(300);
    let Outcome { stats, .. } = engine::run(cfg).unwrap();
    assert!(stats.sessions > 0);
    assert_eq!(stats.error_total(), 0);
}
