//! End-to-end tests of the harness's own logic against a tiny in-process POP3
//! server over loopback. They test loadtest (scheduling, verification,
//! re-seeding, open loop, idle), not any real server.

use loadtest::corpus::{Corpus, User};
use loadtest::engine::{self, Outcome, RunConfig};
use loadtest::session::{Plan, Scenario};
use loadtest::template::MailLocation;
use loadtest::unstuff::stuff;
use loadtest::verify::to_crlf;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// What the fake server did, for the tests to compare with the report.
#[derive(Default)]
struct Served {
    retr: AtomicU64,
    corrupted: AtomicU64,
    deleted: AtomicU64,
}

/// A thread-per-connection POP3 server over `root/<user>/Maildir`. UIDL is the
/// Maildir base name; RETR of the file whose base name is `corrupt` sends one
/// byte changed.
fn fake_server(
    root: PathBuf,
    corrupt: Option<String>,
    opaque_uidls: bool,
) -> (SocketAddr, Arc<Served>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let served = Arc::new(Served::default());
    let s = served.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let (root, corrupt, s) = (root.clone(), corrupt.clone(), s.clone());
            std::thread::spawn(move || {
                let _ = serve(stream, &root, corrupt.as_deref(), opaque_uidls, &s);
            });
        }
    });
    (addr, served)
}

fn list_messages(maildir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = ["cur", "new"]
        .iter()
        .flat_map(|sub| {
            std::fs::read_dir(maildir.join(sub))
                .unwrap()
                .flatten()
                .map(|e| e.path())
        })
        .collect();
    files.sort();
    files
}

fn base(path: &Path) -> String {
    let name = path.file_name().unwrap().to_string_lossy();
    name.split(':').next().unwrap().to_string()
}

/// A stable UIDL that names no file, like Dovecot's default `%08Xu%08Xv`.
fn opaque(base: &str) -> String {
    let h = base.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    format!("{h:016x}")
}

fn serve(
    stream: TcpStream,
    root: &Path,
    corrupt: Option<&str>,
    opaque_uidls: bool,
    s: &Served,
) -> std::io::Result<()> {
    let mut out = stream.try_clone()?;
    let mut lines = BufReader::new(stream);
    out.write_all(b"+OK fake ready\r\n")?;
    let (mut user, mut files, mut deleted) = (String::new(), Vec::new(), Vec::new());
    let mut line = String::new();
    while {
        line.clear();
        lines.read_line(&mut line)? > 0
    } {
        let mut words = line.split_whitespace();
        let (cmd, arg) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
        let n = arg.parse::<usize>().unwrap_or(0);
        let reply: Vec<u8> = match cmd {
            "USER" => {
                user = arg.to_string();
                b"+OK\r\n".to_vec()
            }
            "PASS" if arg == format!("pw-{user}") => {
                files = list_messages(&root.join(&user).join("Maildir"));
                b"+OK logged in\r\n".to_vec()
            }
            "PASS" => b"-ERR [AUTH] bad password\r\n".to_vec(),
            "STAT" => format!("+OK {} 0\r\n", files.len()).into_bytes(),
            "LIST" | "UIDL" => {
                let mut r = b"+OK\r\n".to_vec();
                for (i, f) in files.iter().enumerate() {
                    let arg = if cmd == "LIST" {
                        to_crlf(&std::fs::read(f)?).len().to_string()
                    } else if opaque_uidls {
                        opaque(&base(f))
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
                if corrupt == Some(base(&files[n - 1]).as_str()) {
                    body[0] ^= 0x20;
                    s.corrupted.fetch_add(1, Ordering::Relaxed);
                }
                let mut r = format!("+OK {} octets\r\n", body.len()).into_bytes();
                r.extend(stuff(&body));
                r
            }
            "DELE" if (1..=files.len()).contains(&n) => {
                deleted.push(files[n - 1].clone());
                b"+OK\r\n".to_vec()
            }
            "QUIT" => {
                for f in deleted.drain(..) {
                    std::fs::remove_file(f)?;
                    s.deleted.fetch_add(1, Ordering::Relaxed);
                }
                out.write_all(b"+OK bye\r\n")?;
                return Ok(());
            }
            _ => b"-ERR what\r\n".to_vec(),
        };
        out.write_all(&reply)?;
    }
    Ok(())
}

/// Writes a corpus of `users` users; returns (root, users, a base name of user 0).
fn corpus(tag: &str, users: usize) -> (PathBuf, Vec<User>, String) {
    let root = std::env::temp_dir().join(format!("loadtest-e2e-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let big: Vec<u8> = (0..300_000u32)
        .map(|i| {
            if i % 77 == 76 {
                b'\n'
            } else {
                b'A' + (i % 26) as u8
            }
        })
        .collect();
    let mut list = Vec::new();
    for u in 0..users {
        let name = format!("user{u}");
        let md = root.join(&name).join("Maildir");
        for sub in ["cur", "new", "tmp"] {
            std::fs::create_dir_all(md.join(sub)).unwrap();
        }
        std::fs::write(
            md.join("cur/1000.M1.h,S=1:2,S"),
            b"Subject: dots\n\n.\n..\n.x\nend\n",
        )
        .unwrap();
        std::fs::write(
            md.join("cur/1001.M2.h:2,S"),
            b"Subject: crlf\r\n\r\nstored with CRLF\r\n",
        )
        .unwrap();
        std::fs::write(md.join("new/1002.M3.h"), &big).unwrap();
        list.push(User {
            name: name.clone(),
            pass: format!("pw-{name}"),
        });
    }
    (root, list, "1000.M1.h,S=1".to_string())
}

fn config(
    scenario: Scenario,
    addr: SocketAddr,
    users: Vec<User>,
    root: Option<&Path>,
) -> RunConfig {
    let corpus = root.map(|r| {
        let location = MailLocation::parse(&format!("maildir:{}/%u/Maildir", r.display())).unwrap();
        Corpus::new(&location, &users, 64 << 20).unwrap()
    });
    RunConfig {
        plan: Plan {
            scenario,
            new_share: 0.5,
            stls: false,
        },
        addr,
        users,
        corpus,
        concurrency: 4,
        rate: None,
        threads: 2,
        duration: Duration::from_millis(700),
        warmup: Duration::ZERO,
        drain: Duration::from_secs(10),
        timeout: Duration::from_secs(10),
        ramp: 8,
        max_open: 100,
        seed: 3,
        progress: false,
        ready_file: None,
        hold: None,
        tls: None,
    }
}

fn tree(root: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for user in std::fs::read_dir(root).unwrap().flatten() {
        for f in list_messages(&user.path().join("Maildir")) {
            out.push((f.display().to_string(), std::fs::read(&f).unwrap()));
        }
    }
    out.sort();
    out
}

#[test]
fn download_verifies_every_body_and_counts_each_mismatch() {
    let (root, users, corrupt) = corpus("download", 6);
    let (addr, served) = fake_server(root.clone(), Some(corrupt.clone()), false);
    let Outcome {
        stats, measured_s, ..
    } = engine::run(config(Scenario::Download, addr, users, Some(&root))).unwrap();
    assert!(measured_s > 0.5);
    assert!(stats.sessions > 0 && stats.messages >= 3 * stats.sessions);
    assert_eq!(stats.error_total(), 0);
    assert_eq!((stats.unmapped, stats.matched_by_content), (0, 0));
    assert_eq!(stats.size_mismatches, 0);
    // Every served RETR was judged: the corrupted ones as mismatches, the rest as matches.
    let (retr, corrupted) = (
        served.retr.load(Ordering::Relaxed),
        served.corrupted.load(Ordering::Relaxed),
    );
    assert!(corrupted > 0);
    assert_eq!(stats.mismatches, corrupted);
    assert_eq!(stats.verified + stats.mismatches, retr);
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn delete_leaves_the_corpus_as_it_was() {
    let (root, users, _) = corpus("delete", 4);
    let before = tree(&root);
    let (addr, served) = fake_server(root.clone(), None, false);
    let Outcome { stats, .. } =
        engine::run(config(Scenario::Delete, addr, users, Some(&root))).unwrap();
    assert!(stats.sessions > 0);
    assert_eq!(
        (stats.error_total(), stats.mismatches, stats.reseed_failures),
        (0, 0, 0)
    );
    assert!(served.deleted.load(Ordering::Relaxed) >= 3 * stats.sessions);
    assert_eq!(tree(&root), before, "re-seeding restores names and bytes");
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn open_loop_keeps_the_schedule_and_wrong_passwords_count_as_auth_errors() {
    let (root, mut users, _) = corpus("open", 8);
    users[7].pass = "wrong".into();
    let (addr, _) = fake_server(root.clone(), None, false);
    let mut cfg = config(Scenario::Login, addr, users, None);
    cfg.rate = Some(200.0);
    cfg.duration = Duration::from_secs(1);
    let Outcome { stats, .. } = engine::run(cfg).unwrap();
    let started = stats.sessions + stats.error_total();
    assert!(
        (100..=230).contains(&started),
        "{started} sessions started for 200 scheduled"
    );
    assert!(stats.errors[loadtest::stats::ErrorKind::Auth as usize] > 0);
    assert_eq!(
        stats.histogram(loadtest::stats::Timer::Session).len(),
        stats.sessions
    );
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn idle_holds_every_connection_then_quits() {
    let (root, users, _) = corpus("idle", 12);
    let (addr, _) = fake_server(root.clone(), None, false);
    let ready = root.join("ready");
    let mut cfg = config(Scenario::Idle, addr, users, None);
    cfg.concurrency = 12;
    cfg.ready_file = Some(ready.clone());
    cfg.duration = Duration::from_secs(30);
    cfg.hold = Some(Duration::from_millis(300));
    let started = std::time::Instant::now();
    let Outcome {
        stats, idle_peak, ..
    } = engine::run(cfg).unwrap();
    assert_eq!(idle_peak, 12);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "--hold ends the run early"
    );
    assert_eq!(std::fs::read_to_string(&ready).unwrap(), "12\n");
    assert_eq!(
        stats.sessions, 12,
        "every idle session QUITs cleanly at the end"
    );
    assert_eq!((stats.error_total(), stats.aborted), (0, 0));
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn refuses_more_connections_than_mailboxes() {
    let (root, users, _) = corpus("refuse", 2);
    let (addr, _) = fake_server(root.clone(), None, false);
    let err = engine::run(config(Scenario::Login, addr, users, None))
        .err()
        .unwrap();
    assert!(err.contains("--concurrency 4"), "{err}");
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn opaque_uidls_fall_back_to_matching_by_content() {
    let (root, users, corrupt) = corpus("opaque", 4);
    let (addr, served) = fake_server(root.clone(), Some(corrupt), true);
    for scenario in [Scenario::Download, Scenario::Sync] {
        let before = served.retr.load(Ordering::Relaxed);
        let corrupted_before = served.corrupted.load(Ordering::Relaxed);
        let cfg = config(scenario, addr, users.clone(), Some(&root));
        let Outcome { stats, .. } = engine::run(cfg).unwrap();
        let retr = served.retr.load(Ordering::Relaxed) - before;
        let corrupted = served.corrupted.load(Ordering::Relaxed) - corrupted_before;
        assert!(retr > 0 && corrupted > 0, "{scenario:?}");
        assert_eq!(stats.error_total(), 0);
        // Every body went through the fallback; the intact ones matched a file.
        assert_eq!(stats.unmapped, retr, "{scenario:?}");
        assert_eq!(stats.matched_by_content, retr - corrupted, "{scenario:?}");
        assert_eq!(stats.verified, retr - corrupted, "{scenario:?}");
        assert_eq!(stats.mismatches, corrupted, "{scenario:?}");
    }
    let _ = std::fs::remove_dir_all(&root);
}
