//! The passdb over a database (SQL or LDAP), with the auth cache.
//!
//! A lookup gives the database's record of a user: the stored password
//! (with Dovecot's `{SCHEME}` prefix, or in the driver's default scheme),
//! the `nopassword` / `nologin` / `reason` extras and the user's fields.
//! The record is what the cache keeps ([`super::cache`]); every login
//! still verifies its password against the stored credential.
//!
//! Timing: an unknown user is verified against a dummy password of the
//! scheme the database's users were last seen with (a SHA512-CRYPT until a
//! user has been seen), so it costs what a wrong password costs.
//!
//! A password that does not match a *cached* record is checked once more
//! against a fresh lookup, so a user who has just changed their password
//! gets in at once; the old password stops working when its cache entry
//! expires (`auth.cache_ttl_ms`) or is flushed.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::RwLock;

use super::cache::{Cache, Cached};
use super::ldap::LdapSource;
use super::passdb::{
    APOP_DUMMY_PASSWORD, FALLBACK_DUMMY, SCRAM_PLAIN_ITERATIONS, ScramClass, admit, plaintext,
    random_secret, scram_fake, scram_salt,
};
use super::passwd_file::{Entry, Password};
use super::sasl::ScramCredentials;
use super::scheme::StoredPassword;
use super::scheme::scram::{ITERATIONS_DEFAULT, ScramKeys};
use super::sql::{Row, SqlSource};
use super::username::valid_username;
use super::{AuthError, PASSWORD_BYTES_MAX, Scheme, UserEntry, apop, hash_password};

/// Where the records come from.
pub(crate) enum PassSource {
    /// `password_query`.
    Sql(SqlSource),
    /// `pass_filter` / `pass_attrs`, or `auth_bind`.
    Ldap(LdapSource),
}

/// A user's record as the database gave it.
#[derive(Debug)]
pub(crate) struct Record {
    pub(crate) entry: Entry,
    /// The stored password as given, to tell whether a fresh lookup
    /// changed it.
    stored: Option<String>,
    /// The `user` field: the name the database knows the user by.
    name: Option<String>,
}

/// A SQL or LDAP passdb.
pub(crate) struct RemoteDb {
    source: PassSource,
    default_scheme: String,
    auth_bind: bool,
    cache: Option<Cache<Arc<Record>>>,
    /// What unknown users are verified against.
    dummy: RwLock<StoredPassword>,
    /// Set once `dummy` comes from a real user.
    dummy_learned: AtomicBool,
    scram_secret: Box<[u8]>,
}

impl RemoteDb {
    pub(crate) fn new(
        source: PassSource,
        default_scheme: String,
        auth_bind: bool,
        cache: Option<Cache<Arc<Record>>>,
    ) -> RemoteDb {
        RemoteDb {
            source,
            default_scheme,
            auth_bind,
            cache,
            dummy: RwLock::new(
                StoredPassword::parse(FALLBACK_DUMMY).expect("FALLBACK_DUMMY is valid"),
            ),
            dummy_learned: AtomicBool::new(false),
            scram_secret: random_secret(),
        }
    }

    pub(crate) fn set_scram_secret(&mut self, secret: &[u8]) {
        self.scram_secret = secret.into();
    }

    pub(crate) fn flush(&self) {
        if let Some(cache) = &self.cache {
            cache.flush();
        }
    }

    fn burn(&self, password: &[u8]) {
        let dummy = self.dummy.read();
        std::hint::black_box(dummy.verify(std::hint::black_box(password)));
    }

    /// See [`super::Passdb::verify_plain`]. Gives the user and their
    /// passdb fields; the userdb is applied by the caller.
    pub(crate) fn verify_plain(
        &self,
        user: &str,
        password: &[u8],
    ) -> Result<Option<UserEntry>, AuthError> {
        if password.len() > PASSWORD_BYTES_MAX {
            return Ok(None);
        }
        if !valid_username(user.as_bytes()) {
            self.burn(password);
            return Ok(None);
        }
        let key = super::username::lookup_key(user);
        if self.auth_bind {
            return self.verify_bind(&key, password);
        }
        let (record, cached) = self.record(&key)?;
        let Some(mut record) = record else {
            self.burn(password);
            return Ok(None);
        };
        let mut matched = matches(&record.entry, password);
        if !matched && cached {
            // The password may have changed since the record was cached.
            match self.fetch(&key)? {
                Some(fresh) if fresh.stored != record.stored => {
                    matched = matches(&fresh.entry, password);
                    record = fresh;
                }
                Some(fresh) => record = fresh,
                None => return Ok(None),
            }
        }
        Ok(self.admit(matched, key, &record))
    }

    /// A user proven another way (an OAuth token): the record's entry,
    /// from the cache or the database; the password is not looked at.
    pub(crate) fn lookup(&self, user: &str) -> Result<Option<UserEntry>, AuthError> {
        if !valid_username(user.as_bytes()) {
            return Ok(None);
        }
        let key = super::username::lookup_key(user);
        let (record, _) = self.record(&key)?;
        Ok(record.and_then(|record| self.admit(true, key, &record)))
    }

    /// See [`super::Passdb::verify_apop`].
    pub(crate) fn verify_apop(
        &self,
        user: &str,
        challenge: &[u8],
        digest_hex: &[u8],
    ) -> Result<Option<UserEntry>, AuthError> {
        let Some(given) = apop::parse_digest(digest_hex) else {
            return Ok(None);
        };
        if challenge.is_empty() || !valid_username(user.as_bytes()) || self.auth_bind {
            return Ok(None);
        }
        let key = super::username::lookup_key(user);
        let (record, _) = self.record(&key)?;
        let stored = record.as_ref().and_then(|r| plaintext(&r.entry));
        let password = stored.unwrap_or(APOP_DUMMY_PASSWORD);
        let matched = apop::digest_matches(challenge, password, &given) && stored.is_some();
        Ok(record.and_then(|record| self.admit(matched, key, &record)))
    }

    /// See [`super::Passdb::scram_credentials`].
    pub(crate) fn scram_credentials(
        &self,
        user: &str,
    ) -> Result<Option<ScramCredentials>, AuthError> {
        let key = super::username::lookup_key(user);
        let fake = || {
            let class = ScramClass {
                iterations: ITERATIONS_DEFAULT,
                derived: false,
            };
            Ok(Some(scram_fake(&self.scram_secret, class, &key)))
        };
        if !valid_username(user.as_bytes()) || self.auth_bind {
            return fake();
        }
        let (record, _) = self.record(&key)?;
        let Some(record) = record else {
            return fake();
        };
        let keys = match &record.entry.password {
            Password::Stored(stored) => match (stored.scram_keys(), stored.plaintext()) {
                (Some(keys), _) => keys.clone(),
                (None, Some(plain)) => ScramKeys::derive(
                    plain,
                    &scram_salt(&self.scram_secret, &key),
                    SCRAM_PLAIN_ITERATIONS,
                ),
                (None, None) => return fake(),
            },
            Password::Locked | Password::Any => return fake(),
        };
        let entry = self.admit(true, key.clone(), &record);
        Ok(Some(ScramCredentials::new(keys, entry)))
    }

    /// The accepted user, named as the database names them.
    fn admit(&self, matched: bool, key: String, record: &Record) -> Option<UserEntry> {
        let mut entry = admit(matched, key, &record.entry)?;
        if let Some(name) = &record.name {
            entry.user = name.clone();
        }
        if record.entry.nologin
            && let Some(reason) = record.entry.extra.iter().find(|(k, _)| k == "reason")
        {
            tracing::info!(user = %entry.user, reason = %reason.1, "nologin");
        }
        Some(entry)
    }

    /// The record for `key`, from the cache or the database; the bool is
    /// whether it came from the cache.
    fn record(&self, key: &str) -> Result<(Option<Arc<Record>>, bool), AuthError> {
        if let Some(cached) = self.cache.as_ref().and_then(|c| c.get(key)) {
            return Ok(match cached {
                Cached::Found(record) => (Some(record), true),
                Cached::Missing => (None, true),
            });
        }
        Ok((self.fetch(key)?, false))
    }

    /// Asks the database and caches the answer.
    fn fetch(&self, key: &str) -> Result<Option<Arc<Record>>, AuthError> {
        let row = match &self.source {
            PassSource::Sql(sql) => sql.lookup(key)?,
            PassSource::Ldap(ldap) => ldap.lookup(key)?.map(|(_, row)| row),
        };
        let record = row.map(|row| Arc::new(self.record_of(key, row)));
        self.remember(key, record.clone());
        Ok(record)
    }

    fn remember(&self, key: &str, record: Option<Arc<Record>>) {
        if let Some(cache) = &self.cache {
            cache.put(key, record.map_or(Cached::Missing, Cached::Found));
        }
    }

    fn record_of(&self, key: &str, row: Row) -> Record {
        let record = record_from_row(key, row, &self.default_scheme);
        if !self.dummy_learned.load(Ordering::Relaxed)
            && let Password::Stored(stored) = &record.entry.password
        {
            *self.dummy.write() = stored.clone();
            self.dummy_learned.store(true, Ordering::Relaxed);
        }
        record
    }

    /// `auth_bind`: the password is right if it binds as the user's DN.
    /// A success is cached as a salted hash of the password, so the next
    /// login with the same password needs no bind and any other password
    /// binds again.
    fn verify_bind(&self, key: &str, password: &[u8]) -> Result<Option<UserEntry>, AuthError> {
        let PassSource::Ldap(ldap) = &self.source else {
            return Ok(None);
        };
        if password.is_empty() {
            return Ok(None);
        }
        if let Some(Cached::Found(record)) = self.cache.as_ref().and_then(|c| c.get(key))
            && matches(&record.entry, password)
        {
            return Ok(self.admit(true, key.to_owned(), &record));
        }
        let (dn, row) = if ldap.has_userdn_template() {
            (ldap.userdn(key).unwrap_or_default(), Row::new())
        } else {
            match ldap.lookup(key)? {
                Some(found) => found,
                None => return Ok(None),
            }
        };
        if !ldap.bind(&dn, password)? {
            return Ok(None);
        }
        let mut record = record_from_row(key, row, &self.default_scheme);
        let proven = hash_password(Scheme::Ssha256, password);
        record.entry.password = match StoredPassword::parse(&proven) {
            Ok(stored) => Password::Stored(stored),
            Err(_) => Password::Locked,
        };
        let record = Arc::new(record);
        if let Some(cache) = &self.cache {
            cache.put(key, Cached::Found(Arc::clone(&record)));
        }
        Ok(self.admit(true, key.to_owned(), &record))
    }
}

fn matches(entry: &Entry, password: &[u8]) -> bool {
    match &entry.password {
        Password::Stored(stored) => stored.verify(password),
        Password::Any => true,
        Password::Locked => false,
    }
}

/// Whether a flag column is set: present, not NULL, and not a "no".
fn truthy(value: Option<&str>) -> bool {
    value.is_some_and(|v| {
        !["", "0", "n", "no", "f", "false"]
            .iter()
            .any(|no| v.eq_ignore_ascii_case(no))
    })
}

/// Turns a row into a record. Columns `user`, `password`, `nopassword`,
/// `nologin`, `fail` are the passdb's; `home` / `userdb_home` is the home;
/// every other non-NULL column is an extra field under its own name.
pub(crate) fn record_from_row(key: &str, row: Row, default_scheme: &str) -> Record {
    let get = |name: &str| {
        row.iter()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| v.as_deref())
    };
    let (nopassword, nologin, fail) = (
        truthy(get("nopassword")),
        truthy(get("nologin")),
        truthy(get("fail")),
    );
    let name = get("user")
        .filter(|n| valid_username(n.as_bytes()))
        .map(str::to_owned);
    let stored = get("password").filter(|p| !p.is_empty()).map(str::to_owned);
    let home = get("home")
        .or_else(|| get("userdb_home"))
        .filter(|h| !h.is_empty())
        .map(PathBuf::from);
    let password = match &stored {
        None if nopassword => Password::Any,
        None => Password::Locked,
        Some(text) => match StoredPassword::parse(&with_scheme(text, default_scheme)) {
            Ok(parsed) => Password::Stored(parsed),
            Err(problem) => {
                tracing::warn!(user = key, %problem, "stored password cannot be used; login refused");
                Password::Locked
            }
        },
    };
    const PASSDB_ONLY: [&str; 7] = [
        "user",
        "password",
        "nopassword",
        "nologin",
        "fail",
        "home",
        "userdb_home",
    ];
    let extra = row
        .into_iter()
        .filter(|(k, _)| !PASSDB_ONLY.contains(&k.as_str()))
        .filter_map(|(k, v)| v.map(|v| (k, v)))
        .chain(nologin.then(|| ("nologin".to_owned(), String::new())))
        .collect();
    Record {
        entry: Entry {
            line: 0,
            password,
            home,
            extra,
            nologin,
            fail,
        },
        stored,
        name,
    }
}

/// The stored text with its scheme: as it is when it carries a `{SCHEME}`
/// prefix or is a crypt(3) string (`$1$`, `$6$`, `$2y$`, ...), else with the
/// default scheme in front.
fn with_scheme(text: &str, default_scheme: &str) -> String {
    if text.starts_with('{')
        || text.starts_with('$')
        || default_scheme.eq_ignore_ascii_case("CRYPT")
    {
        text.to_owned()
    } else {
        format!("{{{default_scheme}}}{text}")
    }
}

/// The fuzz target's entry (`fuzz/fuzz_targets/userdb_row.rs`): what a
/// database sends back is outside input. `data` is split on `0xff` into
/// alternating column names and values (an empty value is NULL); the first
/// byte picks the default scheme. The row becomes a record, and the last
/// part is tried as a password against it. Never panics; a locked record
/// matches nothing.
#[doc(hidden)]
pub fn fuzz_userdb_row(data: &[u8]) {
    const SCHEMES: [&str; 5] = ["MD5", "CRYPT", "PLAIN", "SHA512-CRYPT", "SSHA256"];
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let scheme = SCHEMES[usize::from(pick) % SCHEMES.len()];
    let parts: Vec<&[u8]> = rest.split(|&b| b == 0xff).collect();
    let password = parts.last().copied().unwrap_or_default();
    let row: Row = parts
        .chunks(2)
        .map(|pair| {
            let name = String::from_utf8_lossy(pair[0]).to_ascii_lowercase();
            let value = pair
                .get(1)
                .filter(|v| !v.is_empty())
                .map(|v| String::from_utf8_lossy(v).into_owned());
            (name, value)
        })
        .collect();
    let record = record_from_row("fuzz", row, scheme);
    let matched = matches(&record.entry, password);
    if matches!(record.entry.password, Password::Locked) {
        assert!(!matched);
    }
    if let Some(name) = &record.name {
        assert!(valid_username(name.as_bytes()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(pairs: &[(&str, Option<&str>)]) -> Row {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.map(str::to_owned)))
            .collect()
    }

    #[test]
    fn rows_become_records() {
        let r = record_from_row(
            "bob",
            row(&[
                ("user", Some("Bob")),
                ("password", Some("{PLAIN}pw")),
                ("home", Some("/home/bob")),
                ("mail", Some("maildir:~/Maildir")),
                ("uid", Some("1000")),
                ("quota", None),
                ("nologin", Some("f")),
            ]),
            "MD5",
        );
        assert!(matches(&r.entry, b"pw"));
        assert!(!matches(&r.entry, b"PW"));
        assert!(!r.entry.nologin);
        assert_eq!(
            r.entry.home.as_deref(),
            Some(std::path::Path::new("/home/bob"))
        );
        assert_eq!(r.name.as_deref(), Some("Bob"));
        let keys: Vec<_> = r.entry.extra.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["mail", "uid"]);
    }

    #[test]
    fn the_fuzz_entry_takes_any_bytes() {
        fuzz_userdb_row(b"");
        fuzz_userdb_row(b"\x02password\xff{PLAIN}x\xffuser\xff\xc3(\xffx");
        fuzz_userdb_row(b"\x00password\xff$6$\xffnopassword\xffy\xff");
        fuzz_userdb_row(b"\x01\xff\xff\xff");
    }

    #[test]
    fn default_schemes_and_flags() {
        let plain = record_from_row("a", row(&[("password", Some("secret"))]), "PLAIN");
        assert!(matches(&plain.entry, b"secret"));
        let md5 = record_from_row(
            "a",
            row(&[("password", Some("5ebe2294ecd0e0f08eab7690d2a6ee69"))]),
            "MD5",
        );
        assert!(matches(&md5.entry, b"secret"));
        let crypt = hash_password(Scheme::Sha512Crypt, b"secret");
        let crypt = crypt.trim_start_matches("{SHA512-CRYPT}");
        for scheme in ["MD5", "CRYPT", "PLAIN"] {
            let r = record_from_row("a", row(&[("password", Some(crypt))]), scheme);
            assert!(matches(&r.entry, b"secret"), "{scheme}");
        }
        let any = record_from_row(
            "a",
            row(&[("password", None), ("nopassword", Some("Y"))]),
            "MD5",
        );
        assert!(matches(&any.entry, b"whatever"));
        let locked = record_from_row("a", row(&[("password", Some(""))]), "PLAIN");
        assert!(!matches(&locked.entry, b""));
        let nologin = record_from_row(
            "a",
            row(&[
                ("password", Some("{PLAIN}x")),
                ("nologin", Some("y")),
                ("reason", Some("unpaid")),
            ]),
            "MD5",
        );
        assert!(nologin.entry.nologin);
        assert!(admit(true, "a".into(), &nologin.entry).is_none());
        let broken = record_from_row("a", row(&[("password", Some("{NOSUCH}x"))]), "MD5");
        assert!(!matches(&broken.entry, b"x"));
    }
}
