//! The mailbox index end to end, against the real binary: a login on an
//! unchanged Maildir reads no directory (across restarts too), mail delivered
//! or removed by other programs between sessions is seen in the next one
//! every time, broken index files are rebuilt, and a Maildir the server may
//! not write is served without one.

#[macro_use]
mod common;
#[path = "common/scrape.rs"]
mod scrape;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::{Client, Engine, Opts, Server, Tree};
use shardpop::store::index::{self, INDEX_FILE};

/// Logs the store's debug lines: one "maildir read" per login that listed
/// a directory.
fn opts(engine: Engine) -> Opts {
    Opts {
        env: vec![("RUST_LOG", "info,shardpop::store=debug")],
        ..Opts::new(engine)
    }
}

/// Directory times within two seconds of a check are not trusted (the
/// dirty window): let a freshly made tree settle, as a real one has.
fn settle() {
    thread::sleep(index::DIRTY_WINDOW + Duration::from_millis(200));
}

/// A tree with user `alice` (password `pw`) and `messages` small messages,
/// settled.
fn alice_with(messages: u32) -> Tree {
    let mut tree = Tree::new();
    tree.user("alice", "pw");
    for n in 0..messages {
        tree.deliver("alice", n, format!("Subject: {n}\n\nbody {n}\n").as_bytes());
    }
    settle();
    tree
}

/// UIDL and LIST of one session, by UIDL.
fn listing(c: &mut Client) -> BTreeMap<String, u64> {
    assert!(c.cmd("UIDL").starts_with("+OK"));
    let (uidl, _) = c.multiline();
    assert!(c.cmd("LIST").starts_with("+OK"));
    let (list, _) = c.multiline();
    let uidl = String::from_utf8(uidl).unwrap();
    let list = String::from_utf8(list).unwrap();
    let mut out = BTreeMap::new();
    for (u, l) in uidl.lines().zip(list.lines()) {
        let (n, id) = u.split_once(' ').unwrap();
        let (m, octets) = l.split_once(' ').unwrap();
        assert_eq!(n, m);
        assert!(
            out.insert(id.to_string(), octets.parse().unwrap())
                .is_none(),
            "UIDL {id} listed twice"
        );
    }
    assert_eq!(uidl.lines().count(), list.lines().count());
    out
}

fn session(server: &Server, user: &str) -> BTreeMap<String, u64> {
    let mut c = server.connect();
    c.login(user, "pw");
    let seen = listing(&mut c);
    assert!(c.cmd("QUIT").starts_with("+OK"));
    seen
}

fn reads(server: &Server) -> usize {
    server.log().matches("maildir read").count()
}

engine_test!(an_unchanged_mailbox_is_served_from_its_index);
fn an_unchanged_mailbox_is_served_from_its_index(engine: Engine) {
    let tree = alice_with(20);
    let server = Server::start_with(&tree, opts(engine));
    let first = session(&server, "alice");
    assert_eq!(first.len(), 20);
    server.wait_log("maildir read");
    assert!(tree.maildir("alice").join(INDEX_FILE).is_file());
    for _ in 0..3 {
        assert_eq!(session(&server, "alice"), first);
    }
    assert_eq!(reads(&server), 1, "{}", server.log());
    // A restart keeps the index: the new process reads no directory either.
    server.terminate();
    let server = Server::start_with(&tree, opts(engine));
    assert_eq!(session(&server, "alice"), first);
    server.wait_log("pop3 logout");
    assert_eq!(reads(&server), 0, "{}", server.log());
}

engine_test!(a_uidl_source_file_appearing_later_is_used_at_once);
/// A login skips looking up `dovecot-uidlist` (and Courier's files) while
/// the Maildir is as it was when they were found absent; a migration that
/// drops one in changes the Maildir, and the next session uses it.
fn a_uidl_source_file_appearing_later_is_used_at_once(engine: Engine) {
    let mut tree = Tree::new();
    tree.user("mig", "pw");
    tree.deliver("mig", 1, b"Subject: 1\n\none\n");
    tree.deliver("mig", 2, b"Subject: 2\n\ntwo\n");
    settle();
    let server = Server::start_with(&tree, opts(engine));
    let by_name = session(&server, "mig");
    assert!(by_name.contains_key("1700000001.M1.test"), "{by_name:?}");
    // Past the dirty window of the index just written into the Maildir, a
    // session records the Maildir; the next ones rely on the record.
    settle();
    for _ in 0..3 {
        assert_eq!(session(&server, "mig"), by_name);
    }
    let index = index::read(&tree.maildir("mig").join(INDEX_FILE)).expect("an index");
    assert_ne!(
        index.header.root,
        index::Identity::ABSENT,
        "the Maildir is recorded"
    );
    fs::write(
        tree.maildir("mig").join("dovecot-uidlist"),
        "3 V1234 N9 G00112233445566778899aabbccddeeff\n\
         7 :1700000001.M1.test\n\
         8 :1700000002.M2.test\n",
    )
    .unwrap();
    let from_uidlist = session(&server, "mig");
    assert_eq!(
        from_uidlist.keys().collect::<Vec<_>>(),
        ["00000007000004d2", "00000008000004d2"],
        "{}",
        server.log()
    );
}

/// An MTA's delivery: write in tmp/, rename into new/. `None` once the
/// Maildir is gone.
fn deliver_new(md: &Path, n: u64) -> Option<String> {
    let base = format!("{}.R{n}.race", 1_700_000_000 + n);
    let tmp = md.join("tmp").join(&base);
    fs::write(&tmp, body(n)).ok()?;
    fs::rename(&tmp, md.join("new").join(&base)).ok()?;
    Some(base)
}

/// A body whose RFC 1939 size tells which message it is.
fn body(n: u64) -> Vec<u8> {
    let mut b = format!("Subject: {n}\n\n").into_bytes();
    b.extend(std::iter::repeat_n(b'y', (n % 97) as usize));
    b.push(b'\n');
    b
}

fn octets(n: u64) -> u64 {
    let b = body(n);
    b.len() as u64 + b.iter().filter(|&&c| c == b'\n').count() as u64
}

/// Sessions in a row while another thread delivers into new/ and removes
/// from cur/: every session sees all mail delivered before it connected,
/// none removed before it connected, nothing twice, every size right.
/// 1,000 sessions per engine (a few seconds each on a loaded debug build).
const RACE_SESSIONS: usize = 1000;

/// What the racing deliverer has finished.
#[derive(Default)]
struct RaceState {
    /// Delivered and not removed (base names).
    live: BTreeSet<String>,
    /// Removed, with the removal's sequence number.
    removed: std::collections::HashMap<String, u64>,
    /// Removals so far.
    removals: u64,
}

engine_test!(deliveries_and_removals_racing_logins_are_seen_by_the_next_session);
fn deliveries_and_removals_racing_logins_are_seen_by_the_next_session(engine: Engine) {
    let mut tree = Tree::new();
    let md = tree.user("race", "pw");
    let server = Server::start_with(&tree, Opts::new(engine));
    let state = Arc::new(parking_lot::Mutex::new(RaceState::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let ops = Arc::new(AtomicU64::new(0));
    let racer = {
        let (md, state, stop, ops) = (
            md.clone(),
            Arc::clone(&state),
            Arc::clone(&stop),
            Arc::clone(&ops),
        );
        thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                // The tree goes away when the test ends (or fails).
                let Some(base) = deliver_new(&md, n) else {
                    break;
                };
                state.lock().live.insert(base);
                // Another program removes mail the server moved to cur/,
                // keeping the mailbox near 20 messages.
                let Ok(cur) = fs::read_dir(md.join("cur")) else {
                    break;
                };
                let cur: Vec<_> = cur.flatten().collect();
                if cur.len() >= 20 {
                    let e = &cur[(n as usize * 7) % cur.len()];
                    let name = e.file_name().into_string().unwrap();
                    // Held across the unlink: a session's expectations are
                    // taken, and checked, either before it or after it.
                    let mut s = state.lock();
                    if fs::remove_file(e.path()).is_ok() {
                        let base = name.split(':').next().unwrap().to_string();
                        s.live.remove(&base);
                        s.removals += 1;
                        let seq = s.removals;
                        s.removed.insert(base, seq);
                    }
                }
                ops.fetch_add(1, Ordering::Relaxed);
                thread::sleep(Duration::from_millis(1));
            }
        })
    };
    let started = Instant::now();
    for i in 0..RACE_SESSIONS {
        let (must, removals) = {
            let s = state.lock();
            (s.live.clone(), s.removals)
        };
        let seen = session(&server, "race");
        let s = state.lock();
        for base in &must {
            assert!(
                seen.contains_key(base) || s.removed.contains_key(base),
                "session {i}: {base} delivered before login, not seen"
            );
        }
        for (uidl, size) in &seen {
            if let Some(&seq) = s.removed.get(uidl) {
                assert!(
                    seq > removals,
                    "session {i}: {uidl} removed before login, seen"
                );
            }
            let n: u64 = uidl
                .split(".R")
                .nth(1)
                .and_then(|t| t.trim_end_matches(".race").parse().ok())
                .unwrap_or_else(|| panic!("session {i}: a UIDL nobody delivered: {uidl}"));
            assert_eq!(*size, octets(n), "session {i}: size of {uidl}");
        }
    }
    stop.store(true, Ordering::Relaxed);
    racer.join().unwrap();
    assert!(ops.load(Ordering::Relaxed) > 50, "the racer ran");
    eprintln!(
        "{RACE_SESSIONS} sessions against {} deliveries in {:?}",
        ops.load(Ordering::Relaxed),
        started.elapsed()
    );
    // Once the racer stops, one more session sees exactly what is on disk.
    let on_disk: BTreeSet<String> = tree
        .files("race")
        .iter()
        .map(|n| n.split(':').next().unwrap().to_string())
        .collect();
    let seen: BTreeSet<String> = session(&server, "race").into_keys().collect();
    assert_eq!(seen, on_disk);
}

engine_test!(a_broken_index_is_rebuilt_and_logged_once);
fn a_broken_index_is_rebuilt_and_logged_once(engine: Engine) {
    let mut tree = Tree::new();
    tree.user("bob", "pw");
    for n in 0..5 {
        tree.deliver("bob", n, b"no size in the name\n");
    }
    settle();
    let server = Server::start_with(&tree, opts(engine));
    let good = session(&server, "bob");
    let path = tree.maildir("bob").join(INDEX_FILE);
    let bytes = fs::read(&path).unwrap();
    index::parse(&bytes).unwrap();
    // Torn (half written) and then corrupt (one byte changed).
    fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    assert_eq!(session(&server, "bob"), good);
    index::parse(&fs::read(&path).unwrap()).expect("rebuilt");
    let mut flipped = fs::read(&path).unwrap();
    let last = flipped.len() - 1;
    flipped[last] ^= 1;
    fs::write(&path, &flipped).unwrap();
    assert_eq!(session(&server, "bob"), good);
    index::parse(&fs::read(&path).unwrap()).expect("rebuilt");
    let log = server.wait_log("checksum mismatch");
    assert_eq!(
        log.matches("mailbox index: cannot parse").count(),
        2,
        "{log}"
    );
    // Deleting it is always safe.
    fs::remove_file(&path).unwrap();
    assert_eq!(session(&server, "bob"), good);
}

engine_test!(a_read_only_maildir_is_served_without_an_index);
fn a_read_only_maildir_is_served_without_an_index(engine: Engine) {
    // Only root can start the server as another user, who then may read
    // the tree but not write it (root itself writes anywhere).
    if effective_uid() != 0 {
        eprintln!("skipped: needs root to run the server as nobody");
        return;
    }
    let mut tree = Tree::new();
    let md = tree.user("ro", "pw");
    tree.deliver("ro", 1, b"in cur\n");
    fs::write(md.join("new/1700000009.M9.test"), b"still in new\n").unwrap();
    fs::set_permissions(
        tree.root(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let server = Server::start_with(
        &tree,
        Opts {
            shards: 1,
            toml: "[server]\nuser = \"nobody\"\n".into(),
            ..Opts::new(engine)
        },
    );
    server.wait_log("dropped root privileges");
    for _ in 0..2 {
        let mut c = server.connect();
        c.login("ro", "pw");
        assert_eq!(c.cmd("STAT"), "+OK 2 22");
        assert!(c.cmd("RETR 2").starts_with("+OK"));
        assert_eq!(c.multiline().0, b"still in new\r\n");
        assert!(c.cmd("QUIT").starts_with("+OK"));
    }
    assert!(!md.join(INDEX_FILE).exists());
    assert!(md.join("new/1700000009.M9.test").exists(), "not moved");
    let log = server.log();
    assert_eq!(
        log.matches("mailbox index: cannot write").count(),
        1,
        "logged once:\n{log}"
    );
}

#[test]
fn an_index_dir_from_the_mail_location_is_used() {
    for engine in [Engine::Epoll, Engine::Uring] {
        let mut tree = Tree::new();
        let md = tree.user("idx", "pw");
        tree.deliver("idx", 1, b"x\n");
        let index_dir = tree.root().join("index/idx");
        // The user's own location (passwd-file `userdb_mail`) with :INDEX=.
        fs::write(
            tree.passwd(),
            format!(
                "idx:{{PLAIN}}pw:1000:1000::::userdb_mail=maildir:{}:INDEX={}\n",
                md.display(),
                index_dir.display()
            ),
        )
        .unwrap();
        let server = Server::start(&tree, engine);
        assert_eq!(session(&server, "idx").len(), 1);
        assert!(index_dir.join(INDEX_FILE).is_file(), "{}", server.log());
        assert!(!md.join(INDEX_FILE).exists());
    }
}

engine_test!(an_inbox_elsewhere_is_served_and_a_control_dir_is_refused);
/// Dovecot's `:INBOX=` puts INBOX somewhere else than the root Maildir:
/// POP3 serves that one. `:CONTROL=` (where Dovecot keeps
/// `dovecot-uidlist`) stops the server at start, naming the parameter.
fn an_inbox_elsewhere_is_served_and_a_control_dir_is_refused(engine: Engine) {
    let mut tree = Tree::new();
    let md = tree.user("ivy", "pw");
    tree.deliver("ivy", 1, b"Subject: root folder\n\nnot the inbox\n");
    let inbox = md.join(".INBOX");
    for sub in ["cur", "new", "tmp"] {
        fs::create_dir_all(inbox.join(sub)).unwrap();
    }
    for n in 1..=2 {
        fs::write(inbox.join(format!("cur/170000000{n}.M{n}.in:2,")), b"in\n").unwrap();
    }
    fs::write(
        tree.passwd(),
        format!(
            "ivy:{{PLAIN}}pw:1000:1000::::userdb_mail=maildir:{}:INBOX={}\n",
            md.display(),
            inbox.display()
        ),
    )
    .unwrap();
    let server = Server::start(&tree, engine);
    assert_eq!(session(&server, "ivy").len(), 2, "{}", server.log());

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_shardpop"))
        .args(["serve", "--listen", "127.0.0.1:0", "--engine", engine.arg()])
        .arg("--passwd-file")
        .arg(tree.passwd())
        .arg("--mail-location")
        .arg(format!("{}:CONTROL=/var/control/%u", tree.location()))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("CONTROL=/var/control/%u"), "{stderr}");
    assert!(stderr.contains("dovecot-uidlist"), "{stderr}");
}

/// The effective uid, from /proc (no unsafe, no libc call).
fn effective_uid() -> u32 {
    let status = fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    line.split_whitespace().nth(2).unwrap().parse().unwrap()
}

fn with_metrics(mut opts: Opts) -> Opts {
    opts.args
        .extend(["--metrics-listen".to_string(), "127.0.0.1:0".to_string()]);
    opts
}

fn logins_on_shard(metrics: &str) -> f64 {
    scrape::sample(&scrape::scrape(metrics), "shardpop_logins_on_shard_total")
}

engine_test!(a_login_with_nothing_to_wait_for_is_answered_on_its_shard);
/// `server.login_on_shard` (the default): once a mailbox's index is
/// current, a PLAIN-password login is answered on its shard, with the same
/// listing as the pool gives; pipelined commands behind the PASS are
/// answered at once; new mail sends the next login back to the pool, which
/// shows it.
fn a_login_with_nothing_to_wait_for_is_answered_on_its_shard(engine: Engine) {
    let tree = alice_with(5);
    let server = Server::start_with(&tree, with_metrics(opts(engine)));
    let metrics = scrape::metrics_addr(&server);
    // The pool builds the index, then records the Maildir once the
    // index's rename into it has settled.
    let first = session(&server, "alice");
    assert_eq!(first.len(), 5);
    settle();
    assert_eq!(session(&server, "alice"), first);
    let before = logins_on_shard(&metrics);
    for _ in 0..3 {
        assert_eq!(session(&server, "alice"), first);
    }
    let mut c = server.connect();
    c.send(b"USER alice\r\nPASS pw\r\nSTAT\r\nLIST 5\r\nQUIT\r\n");
    assert!(c.line().starts_with("+OK"));
    assert!(c.line().starts_with("+OK Logged in"));
    assert!(c.line().starts_with("+OK 5 "));
    assert_eq!(
        c.line(),
        format!("+OK 5 {}", first.values().last().unwrap())
    );
    assert!(c.line().starts_with("+OK"));
    drop(c);
    // A wrong password there is refused as anywhere.
    let mut c = server.connect();
    c.cmd("USER alice");
    assert!(c.cmd("PASS nope").starts_with("-ERR [AUTH]"));
    drop(c);
    // The passwd-file's once-a-second freshness check sends one login a
    // second to the pool: at least three of these five were the shard's.
    let answered = logins_on_shard(&metrics) - before;
    assert!(answered >= 3.0, "{answered} on the shard\n{}", server.log());
    tree.deliver("alice", 9, b"Subject: 9\n\nnew\n");
    assert_eq!(session(&server, "alice").len(), 6);
}

engine_test!(with_login_on_shard_off_every_login_goes_to_the_pool);
fn with_login_on_shard_off_every_login_goes_to_the_pool(engine: Engine) {
    let mut tree = Tree::new();
    tree.user("alice", "pw");
    tree.deliver("alice", 1, b"Subject: 1\n\none\n");
    settle();
    let server = Server::start_with(
        &tree,
        with_metrics(Opts {
            toml: "[server]\nlogin_on_shard = false\n".into(),
            ..opts(engine)
        }),
    );
    let metrics = scrape::metrics_addr(&server);
    session(&server, "alice");
    settle();
    for _ in 0..4 {
        assert_eq!(session(&server, "alice").len(), 1);
    }
    assert_eq!(logins_on_shard(&metrics), 0.0);
}
