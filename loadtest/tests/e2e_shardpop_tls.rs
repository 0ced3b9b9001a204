//! loadtest over TLS against the real shardpop binary, with an ECDSA and an
//! RSA certificate made at test time: implicit TLS with resumption and body
//! verification, and STLS login.
//!
//! loadtest does not depend on the server crate, so cargo does not build
//! the server for this test: it runs `shardpop` from the same target
//! directory, which `cargo test --workspace` (the project's test command)
//! builds first. Alone: `cargo build -p shardpop && cargo test -p loadtest`.

#[path = "../../tests/common/tls_fixture.rs"]
mod tls_fixture;

use loadtest::corpus::{Corpus, User};
use loadtest::engine::{self, Outcome, RunConfig};
use loadtest::session::{Plan, Scenario};
use loadtest::template::MailLocation;
use loadtest::tls::{TlsArgs, TlsMode};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;
use tls_fixture::TestCa;

/// A running `shardpop serve`, killed when dropped.
struct Shardpop {
    child: Child,
    plain: SocketAddr,
    tls: SocketAddr,
}

impl Drop for Shardpop {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `target/<profile>/shardpop`, next to this test's `deps/` directory.
fn shardpop_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(Path::parent).unwrap();
    let binary = profile_dir.join("shardpop");
    assert!(
        binary.exists(),
        "{} is missing: run `cargo build -p shardpop` (cargo test --workspace does)",
        binary.display()
    );
    binary
}

/// The address from a `listening addr=… tls=BOOL` log line.
fn listening(line: &str) -> Option<(SocketAddr, bool)> {
    if !line.contains("listening") {
        return None;
    }
    let at = line.find("addr=")? + 5;
    let addr = line[at..].split_whitespace().next()?.parse().ok()?;
    Some((addr, line.contains("tls=true")))
}

/// A mail tree, a CA and two server certificates in a temp dir.
struct World {
    dir: tempfile::TempDir,
    ca: TestCa,
    users: Vec<User>,
}

impl World {
    fn new(users: usize) -> World {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new(dir.path());
        let mut passwd = String::new();
        let mut list = Vec::new();
        for u in 0..users {
            let name = format!("user{u}");
            let md = dir.path().join("mail").join(&name).join("Maildir");
            for sub in ["cur", "new", "tmp"] {
                std::fs::create_dir_all(md.join(sub)).unwrap();
            }
            std::fs::write(
                md.join("cur/1700000001.M1.t:2,S"),
                b"Subject: a\n\n.\n..x\n",
            )
            .unwrap();
            let big: Vec<u8> = (0..200_000u32)
                .map(|i| {
                    if i % 70 == 69 {
                        b'\n'
                    } else {
                        b'a' + (i % 26) as u8
                    }
                })
                .collect();
            std::fs::write(md.join("new/1700000002.M2.t"), big).unwrap();
            passwd.push_str(&format!("{name}:{{PLAIN}}pw-{name}:1000:1000::::\n"));
            list.push(User {
                name: name.clone(),
                pass: format!("pw-{name}"),
            });
        }
        std::fs::write(dir.path().join("passwd"), passwd).unwrap();
        World {
            dir,
            ca,
            users: list,
        }
    }

    fn location(&self) -> String {
        format!("maildir:{}/mail/%u/Maildir", self.dir.path().display())
    }

    /// shardpop with both certificates (RSA listed first), UIDL = base name.
    fn start(&self) -> Shardpop {
        let ecdsa = self.ca.issue(self.dir.path(), "ecdsa");
        let rsa = self.ca.issue_rsa(self.dir.path(), "rsa");
        let config = self.dir.path().join("shardpop.toml");
        std::fs::write(
            &config,
            "[auth]\nfailure_delay_ms = 0\nplaintext_auth = \"always\"\n\
             [mail]\npop3_uidl_format = \"%f\"\n",
        )
        .unwrap();
        let mut child = Command::new(shardpop_binary())
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--tls-listen",
                "127.0.0.1:0",
            ])
            .args(["--shards", "2", "--workers", "2", "--engine", "epoll"])
            .arg("--passwd-file")
            .arg(self.dir.path().join("passwd"))
            .args(["--mail-location", &self.location()])
            .arg("--config")
            .arg(&config)
            .arg("--tls-cert")
            .arg(&rsa.cert)
            .arg("--tls-key")
            .arg(&rsa.key)
            .arg("--tls-cert")
            .arg(&ecdsa.cert)
            .arg("--tls-key")
            .arg(&ecdsa.key)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start shardpop");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(found) = listening(&line) {
                    let _ = tx.send(found);
                }
            }
        });
        let (mut plain, mut tls) = (None, None);
        while plain.is_none() || tls.is_none() {
            match rx.recv_timeout(Duration::from_secs(20)) {
                Ok((addr, true)) => tls = Some(addr),
                Ok((addr, false)) => plain = Some(addr),
                Err(_) => {
                    let _ = child.kill();
                    panic!("shardpop did not start");
                }
            }
        }
        Shardpop {
            child,
            plain: plain.unwrap(),
            tls: tls.unwrap(),
        }
    }

    fn run(&self, scenario: Scenario, addr: SocketAddr, tls: TlsArgs) -> Outcome {
        self.run_with(scenario, addr, tls, 4, 2)
    }

    fn run_with(
        &self,
        scenario: Scenario,
        addr: SocketAddr,
        tls: TlsArgs,
        concurrency: usize,
        threads: usize,
    ) -> Outcome {
        let settings = tls.settings(addr).unwrap().expect("TLS on");
        let location = MailLocation::parse(&self.location()).unwrap();
        engine::run(RunConfig {
            plan: Plan {
                scenario,
                new_share: 0.5,
                stls: settings.mode == TlsMode::Stls,
            },
            addr,
            users: self.users.clone(),
            corpus: Some(Corpus::new(&location, &self.users, 16 << 20).unwrap()),
            concurrency,
            rate: None,
            threads,
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
        })
        .unwrap()
    }

    fn trusting(&self, implicit: bool, resume: bool) -> TlsArgs {
        TlsArgs {
            tls: implicit,
            stls: !implicit,
            tls_resume: resume,
            tls_ca: Some(self.ca.ca_pem.clone()),
            ..TlsArgs::default()
        }
    }
}

/// Each user resumes from its own tickets, as a mail client does: a user's
/// first session is its only full handshake, however many sessions start
/// at once on one thread (a store shared by the thread held 8 tickets and
/// ran dry).
#[test]
fn with_resumption_only_each_users_first_handshake_is_full() {
    let users = 24;
    let world = World::new(users);
    let server = world.start();
    let Outcome { stats, .. } = world.run_with(
        Scenario::Login,
        server.tls,
        world.trusting(true, true),
        users,
        1,
    );
    assert_eq!(stats.error_total(), 0);
    assert!(
        stats.sessions > 2 * users as u64,
        "{} sessions",
        stats.sessions
    );
    assert!(
        stats.handshakes_full <= users as u64,
        "full {} resumed {}",
        stats.handshakes_full,
        stats.handshakes_resumed
    );
}

#[test]
fn implicit_tls_download_with_resumption_verifies_every_body() {
    let world = World::new(6);
    let server = world.start();
    let Outcome { stats, .. } =
        world.run(Scenario::Download, server.tls, world.trusting(true, true));
    assert!(stats.sessions > 4, "{} sessions", stats.sessions);
    assert_eq!(stats.error_total(), 0);
    assert_eq!((stats.mismatches, stats.unmapped), (0, 0));
    assert!(stats.verified >= 2 * stats.sessions);
    assert!(stats.handshakes_full >= 1);
    assert!(
        stats.handshakes_resumed > stats.handshakes_full,
        "full {} resumed {}",
        stats.handshakes_full,
        stats.handshakes_resumed
    );
}

#[test]
fn stls_login_full_handshakes() {
    let world = World::new(6);
    let server = world.start();
    let Outcome { stats, .. } =
        world.run(Scenario::Login, server.plain, world.trusting(false, false));
    assert!(stats.sessions > 4, "{} sessions", stats.sessions);
    assert_eq!(stats.error_total(), 0);
    assert_eq!(stats.handshakes_resumed, 0);
    assert!(stats.handshakes_full >= stats.sessions);
}
