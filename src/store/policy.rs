//! RFC 2449 site policy on the mail store: the last-login stamp behind
//! LOGIN-DELAY (§6.5) and the first-retrieval times behind EXPIRE (§6.7).
//!
//! Both live in small files in the Maildir itself, never under `:INDEX=`:
//! indexes may be local to a node, and these must be seen by every node that
//! serves the mailbox from the shared store ("Many nodes" in DESIGN.md), and
//! survive restarts. Each is replaced through a temporary file and a rename
//! while the session holds the mailbox lock, so a reader sees the old file
//! or the new one, never half of one. They are not synced before the rename:
//! a crash can at worst lose the last stamp (one login allowed early) or the
//! last retrievals (those messages expire later than they could), never
//! delete mail early.
//!
//! A file that cannot be read or does not parse is logged once and read as
//! empty; nothing here panics on its content.
//!
//! - `shardpop-pop3-login`: `shardpop-pop3-login 1`, then the Unix time (s)
//!   of the user's last successful login, one line each.
//! - `shardpop-pop3-retrieved`: `shardpop-pop3-retrieved 1`, then one line
//!   per message retrieved (RETR) and still there: `<unix secs> <base name>`.
//!   The base name is the Maildir file name before `:`, so a flag change by
//!   another reader keeps the record.
//!
//! Time is the wall clock of the node that writes, in whole seconds; the
//! rules below say what a stamp from a node whose clock is ahead does.
#![forbid(unsafe_code)]

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use super::commit;
use super::index::warn_once;
use super::maildir::Snapshot;
use crate::protocol::{Expire, SitePolicy};

/// The last-login stamp's file name in the Maildir.
pub const LOGIN_FILE: &str = "shardpop-pop3-login";
/// The retrieval times' file name in the Maildir.
pub const RETRIEVED_FILE: &str = "shardpop-pop3-retrieved";
/// A user database field overriding `[pop3] login_delay_secs` (also read
/// with the `userdb_` prefix, as passwd-file extra fields carry it).
pub const LOGIN_DELAY_FIELD: &str = "pop3_login_delay_secs";
/// A user database field overriding `[pop3] expire_days` (a number of days
/// or `never`; also read with the `userdb_` prefix).
pub const EXPIRE_FIELD: &str = "pop3_expire_days";
/// The prefixed names, spelled out so a login formats none.
const USERDB_LOGIN_DELAY_FIELD: &str = "userdb_pop3_login_delay_secs";
const USERDB_EXPIRE_FIELD: &str = "userdb_pop3_expire_days";
/// A retrieval file larger than this is treated as corrupt (about a
/// million records of long names).
pub const RETRIEVED_FILE_BYTES_MAX: usize = 128 << 20;

const LOGIN_MAGIC: &str = "shardpop-pop3-login 1";
const RETRIEVED_MAGIC: &str = "shardpop-pop3-retrieved 1";

/// Why a policy file did not parse.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParseError {
    /// 1-based line.
    pub line: usize,
    /// What is wrong with it.
    pub why: &'static str,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.why)
    }
}

/// The wall clock in whole Unix seconds (0 before 1970).
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The user's policy: the site's, with the user database's fields
/// ([`LOGIN_DELAY_FIELD`], [`EXPIRE_FIELD`], each also as `userdb_<name>`)
/// over it. `extra` looks a field up. A field that does not parse is an
/// error: guessing could delete mail the operator meant to keep.
pub fn for_user<'a>(
    site: SitePolicy,
    extra: impl Fn(&str) -> Option<&'a str>,
) -> Result<SitePolicy, String> {
    let field = |userdb: &str, name: &str| extra(userdb).or_else(|| extra(name));
    let mut policy = site;
    if let Some(text) = field(USERDB_LOGIN_DELAY_FIELD, LOGIN_DELAY_FIELD) {
        policy.login_delay_secs =
            SitePolicy::parse_login_delay(text).map_err(|e| format!("{LOGIN_DELAY_FIELD}: {e}"))?;
    }
    if let Some(text) = field(USERDB_EXPIRE_FIELD, EXPIRE_FIELD) {
        policy.expire = Some(Expire::parse(text).map_err(|e| format!("{EXPIRE_FIELD}: {e}"))?);
    }
    Ok(policy)
}

/// What the login-delay rule says about a login now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoginCheck {
    /// Go ahead.
    Allowed,
    /// Refuse with `[LOGIN-DELAY]`; this many seconds are left.
    TooSoon {
        /// Seconds until a login is allowed.
        wait_secs: u64,
    },
}

/// The rule. `last`: the stamp of the last login, if any. A stamp up to one
/// delay ahead of `now` (a node whose clock is ahead) counts as "just now",
/// so skew never shortens the delay and lengthens it by at most the skew;
/// a stamp further ahead is a clock that jumped and is ignored, so a bad
/// clock can never lock a user out.
pub fn login_check(last: Option<u64>, delay_secs: u32, now: u64) -> LoginCheck {
    let delay = u64::from(delay_secs);
    match last {
        Some(last) if delay > 0 && last <= now.saturating_add(delay) => {
            let elapsed = now.saturating_sub(last);
            if elapsed >= delay {
                LoginCheck::Allowed
            } else {
                LoginCheck::TooSoon {
                    wait_secs: delay - elapsed,
                }
            }
        }
        _ => LoginCheck::Allowed,
    }
}

/// Reads the stamp of the Maildir `dir` and applies [`login_check`].
pub fn check_login(dir: &Path, delay_secs: u32, now: u64) -> LoginCheck {
    if delay_secs == 0 {
        return LoginCheck::Allowed;
    }
    let path = dir.join(LOGIN_FILE);
    let last = read_file(&path, 64).and_then(|bytes| match parse_login(&bytes) {
        Ok(last) => Some(last),
        Err(e) => {
            warn_once(&path, "parse", &e);
            None
        }
    });
    login_check(last, delay_secs, now)
}

/// Stamps a successful login of the Maildir `dir` at `now`.
pub fn record_login(dir: &Path, now: u64) -> io::Result<()> {
    write_atomic(&dir.join(LOGIN_FILE), encode_login(now).as_bytes())
}

/// Parses a last-login file.
pub fn parse_login(bytes: &[u8]) -> Result<u64, ParseError> {
    let text = std::str::from_utf8(bytes).map_err(|_| ParseError {
        line: 1,
        why: "not UTF-8",
    })?;
    let mut lines = text.lines();
    if lines.next() != Some(LOGIN_MAGIC) {
        return Err(ParseError {
            line: 1,
            why: "not a shardpop login stamp (version 1)",
        });
    }
    let stamp = lines.next().and_then(parse_secs).ok_or(ParseError {
        line: 2,
        why: "expected the Unix time in seconds",
    })?;
    if lines.next().is_some() {
        return Err(ParseError {
            line: 3,
            why: "trailing data",
        });
    }
    Ok(stamp)
}

/// The text of a last-login file.
pub fn encode_login(now: u64) -> String {
    format!("{LOGIN_MAGIC}\n{now}\n")
}

/// First-retrieval times by base name.
pub type Retrieved = HashMap<String, u64>;

/// Parses a retrieval file. A name appearing twice keeps its earlier time.
pub fn parse_retrieved(bytes: &[u8]) -> Result<Retrieved, ParseError> {
    let text = std::str::from_utf8(bytes).map_err(|_| ParseError {
        line: 1,
        why: "not UTF-8",
    })?;
    let mut lines = text.split_terminator('\n').enumerate();
    if lines.next().map(|(_, l)| l) != Some(RETRIEVED_MAGIC) {
        return Err(ParseError {
            line: 1,
            why: "not a shardpop retrieval file (version 1)",
        });
    }
    let mut times = Retrieved::new();
    for (i, line) in lines {
        let bad = |why| ParseError { line: i + 1, why };
        let (secs, name) = line
            .split_once(' ')
            .ok_or(bad("expected `<secs> <name>`"))?;
        let secs = parse_secs(secs).ok_or(bad("expected the Unix time in seconds"))?;
        if name.is_empty() {
            return Err(bad("empty message name"));
        }
        let first = times.entry(name.to_owned()).or_insert(secs);
        *first = (*first).min(secs);
    }
    Ok(times)
}

/// The text of a retrieval file (sorted by name, so it is stable).
/// Names that cannot be written on one line are left out.
pub fn encode_retrieved(times: &Retrieved) -> String {
    let mut entries: Vec<(&String, &u64)> = times
        .iter()
        .filter(|(name, _)| !name.is_empty() && !name.contains('\n'))
        .collect();
    entries.sort();
    let mut text = String::with_capacity(32 + entries.len() * 48);
    text.push_str(RETRIEVED_MAGIC);
    text.push('\n');
    for (name, secs) in entries {
        text.push_str(&format!("{secs} {name}\n"));
    }
    text
}

/// Messages (indices into `bases`, ascending) retrieved first at least
/// `keep_secs` before `now`. A time ahead of `now` (another node's clock)
/// counts as `now`: a skewed clock delays an expiry, never hastens one,
/// except that EXPIRE 0 removes whatever was retrieved.
pub fn expired<'a>(
    bases: impl Iterator<Item = &'a str>,
    times: &Retrieved,
    keep_secs: u64,
    now: u64,
) -> Vec<usize> {
    bases
        .enumerate()
        .filter(|(_, base)| {
            times
                .get(*base)
                .is_some_and(|&first| now.saturating_sub(first) >= keep_secs)
        })
        .map(|(i, _)| i)
        .collect()
}

/// False when [`update`] would touch no file: nothing marked, no flag to
/// set and no EXPIRE policy. Most sessions of a polling client end so, and
/// the engine then answers QUIT without a trip through the worker pool.
pub fn update_has_work(snapshot: &Snapshot, deleted: &[usize], seen: &[usize]) -> bool {
    !deleted.is_empty() || !seen.is_empty() || expire_days(snapshot).is_some()
}

/// The owner's EXPIRE n, when the policy has one.
fn expire_days(snapshot: &Snapshot) -> Option<u32> {
    match snapshot.policy.and_then(|p| p.expire) {
        Some(Expire::Days(days)) => Some(days),
        _ => None,
    }
}

/// The UPDATE state for `snapshot`: removes `deleted`, and when the owner's
/// policy is EXPIRE n, records `retrieved` (first retrieval: an earlier
/// record is kept), removes every message retrieved at least n days before
/// `now` (EXPIRE 0: including those retrieved in this session), and
/// rewrites the retrieval file without the records of messages removed or
/// no longer there; then flags `seen` \Seen. Returns how many files could
/// not be removed.
pub fn update(
    snapshot: &Snapshot,
    deleted: &[usize],
    retrieved: &[usize],
    seen: &[usize],
    now: u64,
) -> usize {
    let failed = remove(snapshot, deleted, retrieved, now);
    // A message EXPIRE just removed is simply not found by its base name.
    commit::mark_seen(snapshot, seen);
    failed
}

/// [`update`]'s removals, and the retrieval records EXPIRE keeps.
fn remove(snapshot: &Snapshot, deleted: &[usize], retrieved: &[usize], now: u64) -> usize {
    let Some(days) = expire_days(snapshot) else {
        return commit::commit(snapshot, deleted);
    };
    let keep_secs = u64::from(days) * 86_400;
    let path = snapshot.dir.join(RETRIEVED_FILE);
    let old = read_retrieved(&path);
    let mut times = old.clone();
    for &i in retrieved.iter().filter(|&&i| i < snapshot.messages.len()) {
        times.entry(snapshot.base_name(i).to_owned()).or_insert(now);
    }
    let count = snapshot.messages.len();
    let bases = (0..count).map(|i| snapshot.base_name(i));
    let expiring = expired(bases, &times, keep_secs, now);
    let mut remove: Vec<usize> = deleted.iter().copied().filter(|&i| i < count).collect();
    remove.extend(&expiring);
    remove.sort_unstable();
    remove.dedup();
    let failed = commit::commit(snapshot, &remove);
    if !expiring.is_empty() {
        tracing::info!(dir = %snapshot.dir.display(), expired = expiring.len(), "EXPIRE: removed messages retrieved long enough ago");
    }
    let gone: HashSet<usize> = remove.into_iter().collect();
    let kept: Retrieved = (0..count)
        .filter(|i| !gone.contains(i))
        .filter_map(|i| {
            let base = snapshot.base_name(i);
            times.get(base).map(|&t| (base.to_owned(), t))
        })
        .collect();
    if kept != old {
        let result = if kept.is_empty() {
            match fs::remove_file(&path) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                other => other,
            }
        } else {
            write_atomic(&path, encode_retrieved(&kept).as_bytes())
        };
        if let Err(e) = result {
            warn_once(&path, "write", &e);
        }
    }
    failed
}

/// The retrieval file at `path`, or empty (logged once) when it is missing,
/// unreadable or corrupt.
fn read_retrieved(path: &Path) -> Retrieved {
    let Some(bytes) = read_file(path, RETRIEVED_FILE_BYTES_MAX) else {
        return Retrieved::new();
    };
    parse_retrieved(&bytes).unwrap_or_else(|e| {
        warn_once(path, "parse", &e);
        Retrieved::new()
    })
}

/// The bytes of `path`; `None` when it is missing (silently) or cannot be
/// read or is over `bytes_max` (logged once).
fn read_file(path: &Path, bytes_max: usize) -> Option<Vec<u8>> {
    match fs::read(path) {
        Ok(bytes) if bytes.len() <= bytes_max => Some(bytes),
        Ok(_) => {
            warn_once(path, "read", &"file too large");
            None
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => {
            warn_once(path, "read", &e);
            None
        }
    }
}

fn parse_secs(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// Replaces `path` with `bytes` through a temporary file beside it (a dot
/// file, unique per process and call, so no Maildir reader takes it for
/// anything) and a rename.
fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let name = path
        .file_name()
        .map_or_else(|| "policy".into(), |n| n.to_string_lossy().into_owned());
    let tmp: PathBuf = path.with_file_name(format!(
        ".{name}.{}.{}.tmp",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let result = fs::write(&tmp, bytes).and_then(|()| fs::rename(&tmp, path));
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
#[path = "policy_tests.rs"]
mod tests;
