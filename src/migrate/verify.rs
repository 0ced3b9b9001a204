//! `shardpop migrate verify`: logs in to the old and the new server as each
//! user and compares what a POP3 client would see (message count, sizes,
//! UIDLs, order; bodies with `--retr`). Prints one line per user and a
//! summary; the exit status is 0 only when every user is identical.
//!
//! - Read-only on both sides: STAT, LIST, UIDL and QUIT (RETR only with
//!   `--retr`), never DELE.
//! - Rate-limited (`--rate` users started per second over all
//!   `--concurrency` connections), every connect/read/write bounded by
//!   `--timeout-secs` and every session by `--session-timeout-secs`.
//! - Resumable: with `--state FILE` each finished user is appended to the
//!   file; a later run with the same file skips them and counts their
//!   recorded results in the summary.
//! - A server that cannot be reached, refuses the login or sends garbage
//!   is a difference for that user, reported as such; it never stops the run.
#![forbid(unsafe_code)]

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use loadtest::corpus::{User, parse_users};
use loadtest::tls::{TlsArgs, TlsMode};
use rustls::pki_types::ServerName;

use super::client::{Listed, Maildrop, Security, Session, Target};

/// The flags of `migrate verify` (names fixed by the issue: `--old`,
/// `--new`, `--users`, `--tls`).
#[derive(clap::Args, Debug, Clone)]
pub struct VerifyArgs {
    /// The server the users are moving from.
    #[arg(long, value_name = "HOST:PORT")]
    pub old: String,
    /// The server the users are moving to.
    #[arg(long, value_name = "HOST:PORT")]
    pub new: String,
    /// Users to check: lines `user password`, as `loadtest` reads them
    /// (blank lines and `#` comments skipped).
    #[arg(long, value_name = "FILE")]
    pub users: PathBuf,
    /// TLS for both servers: --tls (implicit), --stls, --tls-ca PEM,
    /// --tls-insecure, --tls-server-name, --tls-resume.
    #[command(flatten)]
    pub tls: TlsArgs,
    /// Also RETR every message on both servers and compare the bodies
    /// (SHA-256). Off by default: it reads every byte, and an old server
    /// may mark retrieved mail as seen.
    #[arg(long)]
    pub retr: bool,
    /// Users started per second over all connections (0: no limit).
    #[arg(long, default_value_t = 20.0)]
    pub rate: f64,
    /// Users checked at the same time (each holds one connection per server).
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// Record finished users here; users already in it are skipped and
    /// their recorded results counted (resume after an interruption).
    #[arg(long, value_name = "FILE")]
    pub state: Option<PathBuf>,
    /// The longest a connect, read or write may wait, in seconds.
    #[arg(long, default_value_t = 30)]
    pub timeout_secs: u64,
    /// The longest one session may take, in seconds.
    #[arg(long, default_value_t = 600)]
    pub session_timeout_secs: u64,
    /// Print only the users with differences (and the summary).
    #[arg(long)]
    pub only_differences: bool,
}

/// Which server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// `--old`.
    Old,
    /// `--new`.
    New,
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Side::Old => "old",
            Side::New => "new",
        }
    }
}

/// How many example UIDLs a difference line shows.
const EXAMPLES_MAX: usize = 3;

/// One way the two servers differ for a user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Difference {
    /// A server could not be used: connect, TLS, login or protocol.
    Failed { side: Side, error: String },
    /// STAT counts differ.
    Count { old: u64, new: u64 },
    /// STAT sizes differ.
    Octets { old: u64, new: u64 },
    /// UIDLs only the old server lists (clients lose these messages).
    OnlyOld { total: usize, examples: Vec<String> },
    /// UIDLs only the new server lists (clients download these again).
    OnlyNew { total: usize, examples: Vec<String> },
    /// The same UIDL with another size.
    Size { total: usize, examples: Vec<String> },
    /// The same UIDLs in another message order.
    Order { first_at: usize },
    /// A server lists one UIDL for two messages.
    Duplicate { side: Side, example: String },
    /// The same UIDL with another body (`--retr`).
    Body { total: usize, examples: Vec<String> },
}

impl Difference {
    /// The short name counted in the summary and kept in the state file.
    pub fn kind(&self) -> String {
        match self {
            Difference::Failed { side, .. } => format!("{}-failed", side.name()),
            Difference::Count { .. } => "count".into(),
            Difference::Octets { .. } => "octets".into(),
            Difference::OnlyOld { .. } => "only-old".into(),
            Difference::OnlyNew { .. } => "only-new".into(),
            Difference::Size { .. } => "size".into(),
            Difference::Order { .. } => "order".into(),
            Difference::Duplicate { side, .. } => format!("{}-duplicate", side.name()),
            Difference::Body { .. } => "body".into(),
        }
    }

    fn describe(&self) -> String {
        let list = |total: usize, examples: &[String]| {
            let more = total.saturating_sub(examples.len());
            let tail = if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            };
            format!("{}{tail}", examples.join(" "))
        };
        match self {
            Difference::Failed { side, error } => format!("{} server: {error}", side.name()),
            Difference::Count { old, new } => format!("message count {old} (old) vs {new} (new)"),
            Difference::Octets { old, new } => format!("total octets {old} (old) vs {new} (new)"),
            Difference::OnlyOld { total, examples } => {
                format!("{total} UIDL(s) only on old: {}", list(*total, examples))
            }
            Difference::OnlyNew { total, examples } => {
                format!("{total} UIDL(s) only on new: {}", list(*total, examples))
            }
            Difference::Size { total, examples } => {
                format!("{total} size(s) differ: {}", list(*total, examples))
            }
            Difference::Order { first_at } => {
                format!("message order differs from message {first_at}")
            }
            Difference::Duplicate { side, example } => {
                format!("{} server lists UIDL {example} twice", side.name())
            }
            Difference::Body { total, examples } => {
                format!("{total} body(ies) differ: {}", list(*total, examples))
            }
        }
    }
}

/// A UIDL as printable text (bytes outside ASCII escaped).
fn show(uidl: &[u8]) -> String {
    uidl.escape_ascii().to_string()
}

/// Compares what the two servers show; empty when a client could not tell
/// them apart.
pub fn compare(old: &Maildrop, new: &Maildrop) -> Vec<Difference> {
    let mut out = Vec::new();
    if old.stat_count != new.stat_count {
        out.push(Difference::Count {
            old: old.stat_count,
            new: new.stat_count,
        });
    }
    if old.stat_octets != new.stat_octets {
        out.push(Difference::Octets {
            old: old.stat_octets,
            new: new.stat_octets,
        });
    }
    for (side, drop) in [(Side::Old, old), (Side::New, new)] {
        let mut seen = HashSet::new();
        if let Some(m) = drop.messages.iter().find(|m| !seen.insert(&m.uidl)) {
            out.push(Difference::Duplicate {
                side,
                example: show(&m.uidl),
            });
        }
    }
    let duplicates = out
        .iter()
        .any(|d| matches!(d, Difference::Duplicate { .. }));
    uidl_differences(old, new, &mut out);
    // With a UIDL listed twice the order has no meaning of its own.
    if let Some(first_at) = order_difference(old, new).filter(|_| !duplicates) {
        out.push(Difference::Order { first_at });
    }
    out
}

/// UIDLs on one side only, and sizes and bodies of the UIDLs on both.
fn uidl_differences(old: &Maildrop, new: &Maildrop, out: &mut Vec<Difference>) {
    let (old_by, new_by) = (by_uidl(old), by_uidl(new));
    let only = |a: &Maildrop, other: &HashMap<&[u8], &Listed>| {
        let missing: Vec<&[u8]> = a
            .messages
            .iter()
            .map(|m| &*m.uidl)
            .filter(|u| !other.contains_key(u))
            .collect();
        (missing.len(), examples(missing.iter().copied()))
    };
    let (total, ex) = only(old, &new_by);
    if total > 0 {
        out.push(Difference::OnlyOld {
            total,
            examples: ex,
        });
    }
    let (total, ex) = only(new, &old_by);
    if total > 0 {
        out.push(Difference::OnlyNew {
            total,
            examples: ex,
        });
    }
    let common: Vec<(&[u8], &Listed, &Listed)> = old
        .messages
        .iter()
        .filter_map(|m| new_by.get(&*m.uidl).map(|n| (&*m.uidl, m, *n)))
        .collect();
    let differing = |differ: fn(&Listed, &Listed) -> bool| -> Vec<(&[u8], &Listed, &Listed)> {
        common
            .iter()
            .copied()
            .filter(|(_, o, n)| differ(o, n))
            .collect()
    };
    let sized = differing(|o, n| o.octets != n.octets);
    if !sized.is_empty() {
        let examples = sized
            .iter()
            .take(EXAMPLES_MAX)
            .map(|(u, o, n)| format!("{} ({} vs {})", show(u), o.octets, n.octets))
            .collect();
        out.push(Difference::Size {
            total: sized.len(),
            examples,
        });
    }
    let bodies = differing(|o, n| o.body_sha256 != n.body_sha256);
    if !bodies.is_empty() {
        out.push(Difference::Body {
            total: bodies.len(),
            examples: examples(bodies.iter().map(|(u, _, _)| *u)),
        });
    }
}

/// UIDL → message (the first, when a server lists one twice).
fn by_uidl(d: &Maildrop) -> HashMap<&[u8], &Listed> {
    let mut map = HashMap::with_capacity(d.messages.len());
    for m in &d.messages {
        map.entry(&*m.uidl).or_insert(m);
    }
    map
}

fn examples<'a>(uidls: impl Iterator<Item = &'a [u8]>) -> Vec<String> {
    uidls.take(EXAMPLES_MAX).map(show).collect()
}

/// The first message number (in the old server's numbering) where the
/// UIDLs both servers list are in another order.
fn order_difference(old: &Maildrop, new: &Maildrop) -> Option<usize> {
    let old_set: HashSet<&[u8]> = old.messages.iter().map(|m| &*m.uidl).collect();
    let new_set: HashSet<&[u8]> = new.messages.iter().map(|m| &*m.uidl).collect();
    let old_common = old
        .messages
        .iter()
        .enumerate()
        .filter(|(_, m)| new_set.contains(&*m.uidl));
    let mut new_common = new.messages.iter().filter(|m| old_set.contains(&*m.uidl));
    for (i, m) in old_common {
        if new_common.next().map(|n| &n.uidl) != Some(&m.uidl) {
            return Some(i + 1);
        }
    }
    None
}

/// The result of one user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserReport {
    /// The user name.
    pub user: String,
    /// Messages and octets the old server lists (when it could be read).
    pub old_size: Option<(usize, u64)>,
    /// What differs; empty: identical.
    pub differences: Vec<Difference>,
}

impl UserReport {
    /// The report line.
    pub fn line(&self) -> String {
        if self.differences.is_empty() {
            let (n, octets) = self.old_size.unwrap_or_default();
            return format!("{}: identical ({n} messages, {octets} octets)", self.user);
        }
        let mut line = format!("{}: DIFFERENT:", self.user);
        for (i, d) in self.differences.iter().enumerate() {
            let sep = if i == 0 { " " } else { "; " };
            let _ = write!(line, "{sep}{}", d.describe());
        }
        line
    }
}

/// Reads one side; a failure is the user's difference.
fn read_side(target: &Target, user: &User, bodies: bool) -> Result<Maildrop, String> {
    let mut session = Session::connect(target).map_err(|e| e.to_string())?;
    session
        .login(&user.name, &user.pass)
        .map_err(|e| e.to_string())?;
    let drop = session.maildrop(bodies).map_err(|e| e.to_string())?;
    session.quit();
    Ok(drop)
}

/// Checks one user against both servers (the old one first, then the new).
pub fn check_user(old: &Target, new: &Target, user: &User, bodies: bool) -> UserReport {
    let a = read_side(old, user, bodies);
    let b = read_side(new, user, bodies);
    let old_size = a.as_ref().ok().map(|d| (d.messages.len(), d.stat_octets));
    let differences = match (a, b) {
        (Ok(a), Ok(b)) => compare(&a, &b),
        (a, b) => [(Side::Old, a.err()), (Side::New, b.err())]
            .into_iter()
            .filter_map(|(side, e)| e.map(|error| Difference::Failed { side, error }))
            .collect(),
    };
    UserReport {
        user: user.name.clone(),
        old_size,
        differences,
    }
}

/// Counts for the summary.
#[derive(Debug, Default)]
pub struct Summary {
    /// Users checked in this run or recorded in the state file.
    pub users: usize,
    /// Of those, identical.
    pub identical: usize,
    /// Taken from the state file.
    pub resumed: usize,
    /// Users per difference kind.
    pub kinds: std::collections::BTreeMap<String, usize>,
}

impl Summary {
    fn add(&mut self, kinds: &[String]) {
        self.users += 1;
        if kinds.is_empty() {
            self.identical += 1;
        }
        for k in kinds {
            *self.kinds.entry(k.clone()).or_default() += 1;
        }
    }

    /// The summary lines.
    pub fn text(&self) -> String {
        let different = self.users - self.identical;
        let mut out = format!(
            "summary: {} users, {} identical, {} with differences",
            self.users, self.identical, different
        );
        if self.resumed > 0 {
            let _ = write!(out, " ({} from the state file)", self.resumed);
        }
        for (kind, n) in &self.kinds {
            let _ = write!(out, "\n  {kind}: {n} user(s)");
        }
        out
    }
}

/// The state file: finished users, one `user TAB ok|diff TAB kinds` line each.
struct State {
    file: Option<Mutex<File>>,
    done: HashSet<String>,
}

impl State {
    fn open(path: Option<&Path>, summary: &mut Summary) -> Result<State, String> {
        let Some(path) = path else {
            return Ok(State {
                file: None,
                done: HashSet::new(),
            });
        };
        let mut done = HashSet::new();
        match File::open(path) {
            Ok(f) => {
                for line in BufReader::new(f).split(b'\n') {
                    let line = line.map_err(|e| format!("{}: {e}", path.display()))?;
                    let Some((user, kinds)) = parse_state_line(&line) else {
                        // A line cut short by a crash: that user is checked again.
                        continue;
                    };
                    if done.insert(user.to_owned()) {
                        summary.add(&kinds);
                        summary.resumed += 1;
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("{}: {e}", path.display())),
        }
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        if ends_mid_line(&file) {
            // End a line cut short by a crash so the next record is whole.
            file.write_all(b"\n")
                .map_err(|e| format!("{}: {e}", path.display()))?;
        }
        Ok(State {
            file: Some(Mutex::new(file)),
            done,
        })
    }

    fn record(&self, report: &UserReport) -> std::io::Result<()> {
        let Some(file) = &self.file else {
            return Ok(());
        };
        let kinds: Vec<String> = report.differences.iter().map(Difference::kind).collect();
        let verdict = if kinds.is_empty() { "ok" } else { "diff" };
        let line = format!("{}\t{verdict}\t{}\n", report.user, kinds.join(","));
        let mut file = file.lock().unwrap_or_else(|p| p.into_inner());
        file.write_all(line.as_bytes())
    }
}

/// True when the file's last byte is not a line end.
fn ends_mid_line(file: &File) -> bool {
    use std::os::unix::fs::FileExt;
    let len = file.metadata().map_or(0, |m| m.len());
    let mut last = [b'\n'];
    len > 0 && file.read_at(&mut last, len - 1).is_ok() && last[0] != b'\n'
}

/// One state line: the user and the difference kinds; `None` for a line
/// that is not whole (it is checked again).
pub fn parse_state_line(line: &[u8]) -> Option<(&str, Vec<String>)> {
    let line = std::str::from_utf8(line).ok()?;
    let mut fields = line.split('\t');
    let (user, verdict, kinds) = (fields.next()?, fields.next()?, fields.next()?);
    if user.is_empty() || fields.next().is_some() {
        return None;
    }
    let kinds: Vec<String> = kinds
        .split(',')
        .filter(|k| !k.is_empty())
        .map(str::to_owned)
        .collect();
    match (verdict, kinds.is_empty()) {
        ("ok", true) | ("diff", false) => Some((user, kinds)),
        _ => None,
    }
}

/// Spaces user starts `1/rate` seconds apart over all workers.
struct Pacer {
    interval: Option<Duration>,
    next: Mutex<Instant>,
}

impl Pacer {
    fn new(rate: f64) -> Pacer {
        let interval = (rate > 0.0).then(|| Duration::from_secs_f64(1.0 / rate.min(1e6)));
        Pacer {
            interval,
            next: Mutex::new(Instant::now()),
        }
    }

    fn wait(&self) {
        let Some(interval) = self.interval else {
            return;
        };
        let at = {
            let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
            let at = (*next).max(Instant::now());
            *next = at + interval;
            at
        };
        std::thread::sleep(at.saturating_duration_since(Instant::now()));
    }
}

/// `HOST:PORT` → a connect target with this run's TLS.
fn target(spec: &str, args: &VerifyArgs, flag: &str) -> Result<Target, String> {
    let addrs: Vec<SocketAddr> = spec
        .to_socket_addrs()
        .map_err(|e| format!("--{flag} {spec}: {e}"))?
        .collect();
    let first = *addrs
        .first()
        .ok_or_else(|| format!("--{flag} {spec}: no address"))?;
    let security = match args.tls.settings(first)? {
        None => Security::Plain,
        Some(mut settings) => {
            let host = spec.rsplit_once(':').map_or(spec, |(h, _)| h);
            let host = host.trim_start_matches('[').trim_end_matches(']');
            if args.tls.tls_server_name.is_none() && host.parse::<IpAddr>().is_err() {
                settings.server_name = ServerName::try_from(host.to_owned())
                    .map_err(|e| format!("--{flag} {spec}: {e}"))?;
            }
            let config = settings.client_config()?;
            match settings.mode {
                TlsMode::Implicit => Security::Implicit(config, settings.server_name),
                TlsMode::Stls => Security::Stls(config, settings.server_name),
            }
        }
    };
    Ok(Target {
        addrs,
        security,
        io_timeout: Duration::from_secs(args.timeout_secs.max(1)),
        session_timeout: Duration::from_secs(args.session_timeout_secs.max(1)),
    })
}

/// Runs the verification. `Ok(true)`: every user identical; `Ok(false)`:
/// differences (reported); `Err`: the run could not start (bad flags or
/// files).
pub fn run(args: &VerifyArgs) -> Result<bool, String> {
    let text = std::fs::read_to_string(&args.users)
        .map_err(|e| format!("--users {}: {e}", args.users.display()))?;
    let users = parse_users(&text).map_err(|e| format!("--users {}: {e}", args.users.display()))?;
    let old = target(&args.old, args, "old")?;
    let new = target(&args.new, args, "new")?;
    let mut summary = Summary::default();
    let state = State::open(args.state.as_deref(), &mut summary)?;
    let summary = Mutex::new(summary);
    let pacer = Pacer::new(args.rate);
    let next = AtomicUsize::new(0);
    let state_error = Mutex::new(None);
    std::thread::scope(|scope| {
        for _ in 0..args.concurrency.clamp(1, 1024) {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(user) = users.get(i) else { break };
                    if state.done.contains(&user.name) {
                        continue;
                    }
                    pacer.wait();
                    let report = check_user(&old, &new, user, args.retr);
                    if !(args.only_differences && report.differences.is_empty()) {
                        println!("{}", report.line());
                    }
                    if let Err(e) = state.record(&report) {
                        *state_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                    }
                    let kinds: Vec<String> =
                        report.differences.iter().map(Difference::kind).collect();
                    summary
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .add(&kinds);
                }
            });
        }
    });
    let summary = summary.into_inner().unwrap_or_else(|p| p.into_inner());
    println!("{}", summary.text());
    if let Some(e) = state_error.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(format!("writing the state file: {e}"));
    }
    Ok(summary.identical == summary.users)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drop_of(msgs: &[(&str, u64)]) -> Maildrop {
        Maildrop {
            stat_count: msgs.len() as u64,
            stat_octets: msgs.iter().map(|m| m.1).sum(),
            messages: msgs
                .iter()
                .map(|(u, n)| Listed {
                    uidl: u.as_bytes().into(),
                    octets: *n,
                    body_sha256: None,
                })
                .collect(),
        }
    }

    fn kinds(d: &[Difference]) -> Vec<String> {
        d.iter().map(Difference::kind).collect()
    }

    #[test]
    fn identical_mailboxes_have_no_difference() {
        let a = drop_of(&[("a", 10), ("b", 20)]);
        assert!(compare(&a, &a.clone()).is_empty());
        assert!(compare(&Maildrop::default(), &Maildrop::default()).is_empty());
    }

    #[test]
    fn every_kind_of_difference_is_named() {
        let old = drop_of(&[("a", 10), ("b", 20), ("c", 30)]);
        let new = drop_of(&[("b", 21), ("a", 10), ("d", 30)]);
        let d = compare(&old, &new);
        assert_eq!(
            kinds(&d),
            ["octets", "only-old", "only-new", "size", "order"]
        );
        let report = UserReport {
            user: "u".into(),
            old_size: Some((3, 60)),
            differences: d,
        };
        let line = report.line();
        assert!(line.starts_with("u: DIFFERENT: "), "{line}");
        assert!(line.contains("1 UIDL(s) only on old: c"), "{line}");
        assert!(line.contains("1 UIDL(s) only on new: d"), "{line}");
        assert!(line.contains("b (20 vs 21)"), "{line}");
        assert!(
            line.contains("message order differs from message 1"),
            "{line}"
        );
        let dup = drop_of(&[("a", 1), ("a", 1)]);
        assert_eq!(
            kinds(&compare(&dup, &drop_of(&[("a", 1)]))),
            ["count", "octets", "old-duplicate"]
        );
    }

    #[test]
    fn many_missing_uidls_are_summarised() {
        let old: Vec<(String, u64)> = (0..10).map(|i| (format!("m{i}"), 1)).collect();
        let old: Vec<(&str, u64)> = old.iter().map(|(u, n)| (u.as_str(), *n)).collect();
        let d = compare(&drop_of(&old), &drop_of(&old[..2]));
        let only = d.iter().find(|d| d.kind() == "only-old").unwrap();
        assert_eq!(
            only.describe(),
            "8 UIDL(s) only on old: m2 m3 m4 and 5 more"
        );
    }

    #[test]
    fn state_lines_round_trip_and_torn_lines_are_ignored() {
        assert_eq!(parse_state_line(b"alice\tok\t"), Some(("alice", vec![])));
        assert_eq!(
            parse_state_line(b"bob\tdiff\tcount,only-new"),
            Some(("bob", vec!["count".into(), "only-new".into()]))
        );
        for torn in [
            &b"bob\tdiff"[..],
            b"bob\tdiff\t",
            b"bob\tok\tcount",
            b"",
            b"\tok\t",
            b"x\xff\tok\t",
        ] {
            assert_eq!(parse_state_line(torn), None, "{torn:?}");
        }
    }

    #[test]
    fn the_state_file_resumes_after_a_torn_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        std::fs::write(&path, "alice\tok\t\nbob\tdiff\tcount\ncarol\tdi").unwrap();
        let mut summary = Summary::default();
        let state = State::open(Some(&path), &mut summary).unwrap();
        assert_eq!(state.done.len(), 2);
        assert!(state.done.contains("bob") && !state.done.contains("carol"));
        assert_eq!(
            (summary.users, summary.identical, summary.resumed),
            (2, 1, 2)
        );
        let report = UserReport {
            user: "carol".into(),
            old_size: None,
            differences: vec![Difference::Count { old: 1, new: 2 }],
        };
        state.record(&report).unwrap();
        drop(state);
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "alice\tok\t\nbob\tdiff\tcount\ncarol\tdi\ncarol\tdiff\tcount\n"
        );
        let mut again = Summary::default();
        let state = State::open(Some(&path), &mut again).unwrap();
        assert_eq!(state.done.len(), 3);
        assert_eq!(std::fs::read(&path).unwrap().last(), Some(&b'\n'));
    }

    #[test]
    fn the_summary_counts_users_per_kind() {
        let mut s = Summary::default();
        s.add(&[]);
        s.add(&["count".into(), "only-new".into()]);
        s.add(&["only-new".into()]);
        let text = s.text();
        assert!(
            text.starts_with("summary: 3 users, 1 identical, 2 with differences"),
            "{text}"
        );
        assert!(text.contains("\n  only-new: 2 user(s)"), "{text}");
    }
}
