//! The passdb: one passwd-file loaded into a `HashMap`, re-read when it
//! changes, and the two ways to check a login against it.
//!
//! Reload: a lookup checks the file's identity (device, inode, size, mtime
//! to the nanosecond) at most once per [`RELOAD_CHECK_INTERVAL`]; only one
//! thread checks at a time and the others keep using the current table. A
//! changed file is read and parsed in full, then swapped in whole. When the
//! file cannot be read, lookups fail with [`AuthError::Io`] (the engine
//! answers `-ERR [SYS/TEMP]`), the last good table stays in memory, and the
//! next check tries again.
//!
//! Timing: an unknown user costs what a wrong password costs. The table
//! keeps a dummy password of the cost class (scheme and work factors) most
//! users have, and a miss verifies the login against it and throws the
//! answer away. Users whose scheme differs from the majority still cost what
//! their own scheme costs; that is the price of mixed files.
//!
//! SCRAM-SHA-256 ([`FileDb::scram_credentials`]): a `{SCRAM-SHA-256}` entry
//! gives its stored keys. A `{PLAIN}` entry gives keys derived with
//! [`SCRAM_PLAIN_ITERATIONS`] and a salt that is stable per user and secret:
//! the first 16 bytes of HMAC-SHA-256(scram secret, label || login name).
//! An unknown user gets made-up keys with the same kind of salt and the
//! iteration count most SCRAM-capable users have, so server-first looks the
//! same for users who exist and users who do not (RFC 5802 §5.1), and costs
//! what the most common kind of user costs (a PBKDF2 when most are `{PLAIN}`).
//! The scram secret is random per process unless the operator sets one
//! ([`FileDb::with_scram_secret`]); servers that share a passwd-file should
//! share the secret too, or the salts of `{PLAIN}` and unknown users differ
//! between them while those of `{SCRAM-SHA-256}` users do not.

use std::fmt;
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use std::collections::HashMap;

use ring::rand::{SecureRandom, SystemRandom};

use super::passwd_file::{self, Entry, Password, Problem};
use super::sasl::ScramCredentials;
use super::scheme::scram::{self, ScramKeys, hmac_sha256};
use super::scheme::{Cost, StoredPassword};
use super::username::{lookup_key, valid_username};
use super::{AuthError, PASSWD_FILE_BYTES_MAX, PASSWORD_BYTES_MAX, UserEntry, apop};

/// How often a lookup may look at the passwd-file for changes.
pub(crate) const RELOAD_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// At most this many problems are logged per load; the rest are counted.
const PROBLEMS_LOGGED_MAX: usize = 100;

/// Used when no user has a verifiable password: SHA512-CRYPT at the default
/// 5000 rounds, of a random password nobody kept.
pub(crate) const FALLBACK_DUMMY: &str = "$6$shardpopdummy.00$W3XwoAbpOhF.N8TfRU.6Gq99F1ODxLq29AvXDv9nx4WXkIyDr6BS6kGrRrXgtsZYhcvj3b.0eUQxwy49jY2.11";

/// Hashed into APOP digests for unknown users, so they cost an MD5 too.
pub(crate) const APOP_DUMMY_PASSWORD: &[u8] = b"shardpop-apop-dummy";

/// PBKDF2 iterations of the SCRAM-SHA-256 keys derived from a `{PLAIN}`
/// password: Dovecot's default and RFC 7677's minimum.
pub const SCRAM_PLAIN_ITERATIONS: u32 = scram::ITERATIONS_DEFAULT;

/// Salt length for derived and made-up SCRAM keys, as `doveadm pw` writes.
const SCRAM_SALT_BYTES: usize = scram::SALT_BYTES;

/// Size of the random scram secret made when the operator sets none.
const SCRAM_SECRET_BYTES: usize = 32;

/// Domain labels, so one secret never gives the same HMAC for two purposes.
const SCRAM_SALT_LABEL: &[u8] = b"shardpop scram salt\0";
const SCRAM_FAKE_PASSWORD_LABEL: &[u8] = b"shardpop scram fake password\0";
const SCRAM_FAKE_STORED_LABEL: &[u8] = b"shardpop scram fake stored key\0";
const SCRAM_FAKE_SERVER_LABEL: &[u8] = b"shardpop scram fake server key\0";

/// A passwd-file, shared by the worker pool threads (`Arc<FileDb>`).
pub(crate) struct FileDb {
    path: PathBuf,
    check_interval: Duration,
    current: RwLock<Current>,
    /// When the file was last checked; `try_lock`ed so one thread checks.
    last_check: Mutex<Instant>,
    /// Mirrors `current.table.has_plaintext` for lock-free reads.
    has_plaintext: AtomicBool,
    /// Keys the per-user SCRAM salts of `{PLAIN}` and unknown users.
    scram_secret: Box<[u8]>,
}

#[derive(Clone)]
struct Current {
    table: Arc<Table>,
    /// Set while the file cannot be read; lookups fail until it clears.
    failure: Option<Failure>,
}

/// Why the last check could not read the file (an `io::Error` is not
/// `Clone`, so its kind and text are kept).
#[derive(Clone, Debug, PartialEq, Eq)]
enum Failure {
    Io(io::ErrorKind, String),
    TooLarge(u64),
}

impl Failure {
    fn of(error: &AuthError) -> Failure {
        match error {
            AuthError::TooLarge { bytes, .. } => Failure::TooLarge(*bytes),
            AuthError::Io { source, .. } => Failure::Io(source.kind(), source.to_string()),
            // `load` never fails this way; kept total rather than panicking.
            AuthError::UnknownScheme { name } => Failure::Io(io::ErrorKind::Other, name.clone()),
            other @ (AuthError::Unavailable { .. } | AuthError::Config { .. }) => {
                Failure::Io(io::ErrorKind::Other, other.to_string())
            }
        }
    }

    fn to_error(&self, path: &Path) -> AuthError {
        match self {
            Failure::Io(kind, text) => AuthError::Io {
                path: path.to_owned(),
                source: io::Error::new(*kind, text.clone()),
            },
            Failure::TooLarge(bytes) => AuthError::TooLarge {
                path: path.to_owned(),
                bytes: *bytes,
            },
        }
    }
}

/// Which file a table was read from: a new inode (rename over), a new size
/// or a new mtime means a new file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: i64,
    mtime_nsec: i64,
}

impl Stamp {
    fn of(meta: &fs::Metadata) -> Stamp {
        Stamp {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime: meta.mtime(),
            mtime_nsec: meta.mtime_nsec(),
        }
    }
}

/// One loaded passwd-file.
struct Table {
    users: HashMap<String, Entry>,
    /// What a miss is verified against (see the module doc).
    dummy: StoredPassword,
    stamp: Stamp,
    has_plaintext: bool,
    /// What made-up SCRAM credentials for unknown users look like.
    scram_fake: ScramClass,
}

/// How a user's SCRAM keys look from outside and what they cost to make:
/// the iteration count, and whether a PBKDF2 runs at lookup (`{PLAIN}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct ScramClass {
    pub(crate) iterations: u32,
    pub(crate) derived: bool,
}

impl Table {
    fn new(users: HashMap<String, Entry>, stamp: Stamp) -> Table {
        let has_plaintext = users.values().any(|entry| plaintext(entry).is_some());
        let dummy = pick_dummy(&users);
        let scram_fake = pick_scram_class(&users);
        Table {
            users,
            dummy,
            stamp,
            has_plaintext,
            scram_fake,
        }
    }

    /// Spends what verifying `password` against a real user would, and
    /// throws the answer away.
    fn burn(&self, password: &[u8]) {
        std::hint::black_box(self.dummy.verify(std::hint::black_box(password)));
    }
}

pub(crate) fn plaintext(entry: &Entry) -> Option<&[u8]> {
    match &entry.password {
        Password::Stored(stored) => stored.plaintext(),
        Password::Any | Password::Locked => None,
    }
}

/// The stored password of the most common cost class, the earliest line on
/// a tie (deterministic, whatever the map's order).
fn pick_dummy(users: &HashMap<String, Entry>) -> StoredPassword {
    let mut classes: HashMap<Cost, (usize, usize, &StoredPassword)> = HashMap::new();
    for entry in users.values() {
        let Password::Stored(stored) = &entry.password else {
            continue;
        };
        let class = classes
            .entry(stored.cost())
            .or_insert((0, entry.line, stored));
        class.0 += 1;
        if entry.line < class.1 {
            (class.1, class.2) = (entry.line, stored);
        }
    }
    let best = classes
        .into_values()
        .max_by_key(|&(count, line, _)| (count, std::cmp::Reverse(line)));
    match best {
        Some((_, _, stored)) => stored.clone(),
        None => {
            StoredPassword::parse(FALLBACK_DUMMY).expect("FALLBACK_DUMMY is a valid SHA512-CRYPT")
        }
    }
}

/// The SCRAM class most SCRAM-capable users have, the earliest line on a
/// tie; 4096 stored iterations when no user can do SCRAM.
fn pick_scram_class(users: &HashMap<String, Entry>) -> ScramClass {
    let mut classes: HashMap<ScramClass, (usize, usize)> = HashMap::new();
    for entry in users.values() {
        let Password::Stored(stored) = &entry.password else {
            continue;
        };
        let class = match (stored.scram_keys(), stored.plaintext()) {
            (Some(keys), _) => ScramClass {
                iterations: keys.iterations,
                derived: false,
            },
            (None, Some(_)) => ScramClass {
                iterations: SCRAM_PLAIN_ITERATIONS,
                derived: true,
            },
            (None, None) => continue,
        };
        let counted = classes.entry(class).or_insert((0, entry.line));
        counted.0 += 1;
        counted.1 = counted.1.min(entry.line);
    }
    classes
        .into_iter()
        .max_by_key(|&(_, (count, line))| (count, std::cmp::Reverse(line)))
        .map_or(
            ScramClass {
                iterations: scram::ITERATIONS_DEFAULT,
                derived: false,
            },
            |(class, _)| class,
        )
}

impl FileDb {
    /// Loads the passwd-file at `path` now. Bad lines are logged and
    /// skipped; a file that cannot be read is an error.
    pub fn open(path: &Path) -> Result<FileDb, AuthError> {
        FileDb::open_with_interval(path, RELOAD_CHECK_INTERVAL)
    }

    pub(crate) fn open_with_interval(
        path: &Path,
        check_interval: Duration,
    ) -> Result<FileDb, AuthError> {
        let table = load(path)?;
        tracing::info!(
            path = %path.display(),
            users = table.users.len(),
            dummy_scheme = %table.dummy.scheme(),
            "passwd-file loaded"
        );
        Ok(FileDb {
            path: path.to_owned(),
            check_interval,
            has_plaintext: AtomicBool::new(table.has_plaintext),
            current: RwLock::new(Current {
                table: Arc::new(table),
                failure: None,
            }),
            last_check: Mutex::new(Instant::now()),
            scram_secret: random_secret(),
        })
    }

    /// Sets the secret that keys the SCRAM salts of `{PLAIN}` and unknown
    /// users (see the module doc). It should be at least 16 random bytes,
    /// kept private, and the same on every server of one passwd-file; while
    /// it stays the same, those salts do too.
    pub fn with_scram_secret(mut self, secret: &[u8]) -> FileDb {
        self.scram_secret = secret.into();
        self
    }

    /// Checks a USER/PASS or SASL PLAIN login. `Ok(Some(user))` on success;
    /// `Ok(None)` for an unknown user, a wrong password, a refused name, a
    /// `nologin` or `fail` user (unknown user and wrong password at the same
    /// cost); `Err` only when the passwd-file cannot be read.
    pub fn verify_plain(
        &self,
        user: &str,
        password: &[u8],
    ) -> Result<Option<UserEntry>, AuthError> {
        // Refused before touching the file.
        if refused(&self.current.read().table, user, password) {
            return Ok(None);
        }
        // Every scheme is checked here, so nothing is left unchecked.
        Ok(verify_in(&*self.table()?, user, password, false).flatten())
    }

    /// [`FileDb::verify_plain`] when it can be answered at once, without a
    /// costly hash and without looking at the file: `None` when the file is
    /// due for its freshness check or cannot be read, or when the user's
    /// stored password, or the dummy that unknown users are checked against,
    /// is of a costly scheme. Unknown users and wrong passwords cost what
    /// they cost on the pool, so answering here tells nothing more.
    pub fn verify_plain_now(&self, user: &str, password: &[u8]) -> Option<Option<UserEntry>> {
        let due = self
            .last_check
            .try_lock()
            .is_none_or(|last| last.elapsed() >= self.check_interval);
        if due {
            return None;
        }
        let table = {
            let current = self.current.read();
            if current.failure.is_some() || !current.table.dummy.is_cheap() {
                return None;
            }
            Arc::clone(&current.table)
        };
        if refused(&table, user, password) {
            return Some(None);
        }
        verify_in(&table, user, password, true)
    }
}

/// A password longer than any stored one, or a name no user may have: no
/// user, the latter at the cost of a miss.
fn refused(table: &Table, user: &str, password: &[u8]) -> bool {
    if password.len() > PASSWORD_BYTES_MAX {
        return true;
    }
    if !valid_username(user.as_bytes()) {
        table.burn(password);
        return true;
    }
    false
}

/// Checks `password` for the valid name `user` in `table`. `None` (not
/// checked) only when `cheap_only` and the user's password is stored in a
/// costly scheme.
fn verify_in(
    table: &Table,
    user: &str,
    password: &[u8],
    cheap_only: bool,
) -> Option<Option<UserEntry>> {
    let key = lookup_key(user);
    let Some(entry) = table.users.get(&key) else {
        table.burn(password);
        return Some(None);
    };
    let matched = match &entry.password {
        Password::Stored(stored) if cheap_only && !stored.is_cheap() => return None,
        Password::Stored(stored) => stored.verify(password),
        Password::Any => true,
        Password::Locked => {
            table.burn(password);
            false
        }
    };
    Some(admit(matched, key, entry))
}

impl FileDb {
    /// A user proven another way (an OAuth token): their entry, or `None`
    /// when unknown, refused by name, `nologin` or `fail`. `Err` only when
    /// the passwd-file cannot be read.
    pub fn lookup(&self, user: &str) -> Result<Option<UserEntry>, AuthError> {
        if !valid_username(user.as_bytes()) {
            return Ok(None);
        }
        let table = self.table()?;
        let key = lookup_key(user);
        Ok(table
            .users
            .get(&key)
            .and_then(|entry| admit(true, key, entry)))
    }

    /// Checks an APOP login: `digest_hex` must be the hex MD5 of
    /// `challenge` (our greeting's timestamp) followed by the password, and
    /// only users with a plaintext password can pass. Results as for
    /// [`FileDb::verify_plain`].
    pub fn verify_apop(
        &self,
        user: &str,
        challenge: &[u8],
        digest_hex: &[u8],
    ) -> Result<Option<UserEntry>, AuthError> {
        let Some(given) = apop::parse_digest(digest_hex) else {
            return Ok(None);
        };
        if challenge.is_empty() || !valid_username(user.as_bytes()) {
            return Ok(None);
        }
        let table = self.table()?;
        let key = lookup_key(user);
        let entry = table.users.get(&key);
        let stored = entry.and_then(plaintext);
        let password = stored.unwrap_or(APOP_DUMMY_PASSWORD);
        let matched = apop::digest_matches(challenge, password, &given) && stored.is_some();
        Ok(entry.and_then(|entry| admit(matched, key, entry)))
    }

    /// The SCRAM-SHA-256 credentials of `user`, for
    /// [`ScramServer::server_first`](super::sasl::ScramServer::server_first).
    /// Blocking: a `{PLAIN}` user costs a PBKDF2.
    ///
    /// - `{SCRAM-SHA-256}` and `{PLAIN}` users: their keys, able to succeed
    ///   unless the entry has `nologin` or `fail`.
    /// - Unknown users, names the passdb refuses, users without a password:
    ///   made-up keys that look like a real user's and can never succeed.
    /// - Users whose stored password cannot do SCRAM (crypt and digest
    ///   schemes, `nopassword`): made-up keys too, so their exchange fails at
    ///   the proof like a wrong password and does not reveal the user.
    /// - `Ok(None)` is not returned today; callers still treat it as a failure.
    /// - `Err` only when the passwd-file cannot be read.
    pub fn scram_credentials(&self, user: &str) -> Result<Option<ScramCredentials>, AuthError> {
        let key = lookup_key(user);
        if !valid_username(user.as_bytes()) {
            let table = Arc::clone(&self.current.read().table);
            return Ok(Some(self.scram_fake(&table, &key)));
        }
        let table = self.table()?;
        let Some(entry) = table.users.get(&key) else {
            return Ok(Some(self.scram_fake(&table, &key)));
        };
        let keys = match &entry.password {
            Password::Stored(stored) => match (stored.scram_keys(), stored.plaintext()) {
                (Some(keys), _) => keys.clone(),
                (None, Some(plaintext)) => {
                    ScramKeys::derive(plaintext, &self.scram_salt(&key), SCRAM_PLAIN_ITERATIONS)
                }
                // A crypt or digest hash cannot do SCRAM. Made-up keys make
                // the exchange fail at the proof, like a wrong password,
                // instead of early, which would tell a client the user exists.
                (None, None) => return Ok(Some(self.scram_fake(&table, &key))),
            },
            Password::Locked | Password::Any => return Ok(Some(self.scram_fake(&table, &key))),
        };
        let user = admit(true, key, entry);
        Ok(Some(ScramCredentials::new(keys, user)))
    }

    /// The stable per-user salt of derived and made-up SCRAM keys.
    fn scram_salt(&self, key: &str) -> Vec<u8> {
        scram_salt(&self.scram_secret, key)
    }

    fn scram_fake(&self, table: &Table, key: &str) -> ScramCredentials {
        scram_fake(&self.scram_secret, table.scram_fake, key)
    }

    /// Whether any user has a plaintext password, so APOP can work and the
    /// greeting should carry a timestamp. Lock-free: safe on a shard thread.
    /// It follows reloads but never triggers one.
    pub fn has_plaintext(&self) -> bool {
        self.has_plaintext.load(Ordering::Relaxed)
    }

    /// The current table, after a reload check if one is due.
    fn table(&self) -> Result<Arc<Table>, AuthError> {
        self.maybe_refresh();
        let current = self.current.read();
        match &current.failure {
            Some(failure) => Err(failure.to_error(&self.path)),
            None => Ok(Arc::clone(&current.table)),
        }
    }

    fn maybe_refresh(&self) {
        // Another thread is checking: use the table we have.
        let Some(mut last_check) = self.last_check.try_lock() else {
            return;
        };
        if last_check.elapsed() < self.check_interval {
            return;
        }
        *last_check = Instant::now();
        self.refresh();
    }

    /// Stats the file and re-reads it if it is not the one loaded (or the
    /// last read failed). Runs with `last_check` held.
    fn refresh(&self) {
        let (stamp, failed) = {
            let current = self.current.read();
            (current.table.stamp, current.failure.is_some())
        };
        let unchanged = fs::metadata(&self.path)
            .map(|meta| Stamp::of(&meta) == stamp)
            .unwrap_or(false);
        if unchanged && !failed {
            return;
        }
        match load(&self.path) {
            Ok(table) => {
                tracing::info!(
                    path = %self.path.display(),
                    users = table.users.len(),
                    dummy_scheme = %table.dummy.scheme(),
                    "passwd-file reloaded"
                );
                self.has_plaintext
                    .store(table.has_plaintext, Ordering::Relaxed);
                *self.current.write() = Current {
                    table: Arc::new(table),
                    failure: None,
                };
            }
            Err(error) => {
                let failure = Failure::of(&error);
                let mut current = self.current.write();
                if current.failure.as_ref() != Some(&failure) {
                    tracing::error!(%error, "passwd-file cannot be read; logins fail until it can");
                }
                current.failure = Some(failure);
            }
        }
    }
}

/// The stable per-user salt of derived and made-up SCRAM keys.
pub(crate) fn scram_salt(secret: &[u8], key: &str) -> Vec<u8> {
    let mac = hmac_sha256(secret, &[SCRAM_SALT_LABEL, key.as_bytes()]);
    mac[..SCRAM_SALT_BYTES].to_vec()
}

/// Credentials for a user who is not there, deterministic per name so
/// that asking twice gives the same salt, as for a real user.
pub(crate) fn scram_fake(secret: &[u8], class: ScramClass, key: &str) -> ScramCredentials {
    let salt = scram_salt(secret, key);
    let mac = |label: &[u8]| hmac_sha256(secret, &[label, key.as_bytes()]);
    let keys = if class.derived {
        // Costs the PBKDF2 a `{PLAIN}` user costs.
        ScramKeys::derive(&mac(SCRAM_FAKE_PASSWORD_LABEL), &salt, class.iterations)
    } else {
        ScramKeys {
            iterations: class.iterations,
            salt,
            stored_key: mac(SCRAM_FAKE_STORED_LABEL),
            server_key: mac(SCRAM_FAKE_SERVER_LABEL),
        }
    };
    ScramCredentials::new(keys, None)
}

/// The answer for a user whose password did or did not match.
pub(crate) fn admit(matched: bool, key: String, entry: &Entry) -> Option<UserEntry> {
    (matched && !entry.nologin && !entry.fail).then(|| UserEntry {
        user: key,
        home: entry.home.clone(),
        extra: entry.extra.clone(),
    })
}

/// A fresh scram secret from the system RNG.
///
/// # Panics
/// If the operating system's random number generator fails.
pub(crate) fn random_secret() -> Box<[u8]> {
    let mut secret = [0u8; SCRAM_SECRET_BYTES];
    SystemRandom::new()
        .fill(&mut secret)
        .expect("system random number generator failed");
    secret.into()
}

/// Opens, reads and parses the passwd-file, logging its problems.
fn load(path: &Path) -> Result<Table, AuthError> {
    let io_error = |source| AuthError::Io {
        path: path.to_owned(),
        source,
    };
    let file = File::open(path).map_err(io_error)?;
    // fstat the open file, so the stamp belongs to the bytes we read.
    let meta = file.metadata().map_err(io_error)?;
    if meta.len() > PASSWD_FILE_BYTES_MAX {
        return Err(AuthError::TooLarge {
            path: path.to_owned(),
            bytes: meta.len(),
        });
    }
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    file.take(PASSWD_FILE_BYTES_MAX + 1)
        .read_to_end(&mut bytes)
        .map_err(io_error)?;
    let read = bytes.len() as u64;
    if read > PASSWD_FILE_BYTES_MAX {
        return Err(AuthError::TooLarge {
            path: path.to_owned(),
            bytes: read,
        });
    }
    let parsed = passwd_file::parse(&bytes);
    report(path, &parsed.problems);
    if parsed.users.is_empty() {
        tracing::warn!(path = %path.display(), "passwd-file has no usable users; every login will fail");
    }
    Ok(Table::new(parsed.users, Stamp::of(&meta)))
}

/// Logs a file's problems by line number. Never a password, and never a
/// user name either: on a broken line the "name" may be anything.
fn report(path: &Path, problems: &[Problem]) {
    for problem in problems.iter().take(PROBLEMS_LOGGED_MAX) {
        let action = if problem.kind.skips_line() {
            "skipped"
        } else {
            "kept"
        };
        tracing::warn!(
            path = %path.display(),
            line = problem.line,
            "passwd-file line {action}: {}",
            problem.kind
        );
    }
    if problems.len() > PROBLEMS_LOGGED_MAX {
        tracing::warn!(
            path = %path.display(),
            more = problems.len() - PROBLEMS_LOGGED_MAX,
            "passwd-file has more problems than are logged"
        );
    }
}

impl fmt::Debug for FileDb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let current = self.current.read();
        f.debug_struct("FileDb")
            .field("path", &self.path)
            .field("users", &current.table.users.len())
            .field("failure", &current.failure)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests;
