//! [`Passdb`]: the one face the engine sees, over whichever passdb the
//! configuration names (passwd-file, PostgreSQL, MySQL / MariaDB, LDAP) and
//! the userdb after it. Built once at startup from the `[passdb]`,
//! `[userdb]` and `[auth]` sections; shared by the worker threads.

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::cache::Cache;
use super::ldap::{self, LdapSettings, LdapSource};
use super::oauth::OAuth;
use super::passdb::FileDb;
use super::remote::{PassSource, Record, RemoteDb};
use super::sasl::ScramCredentials;
use super::sql::{Flavor, SqlSettings, SqlSource};
use super::static_userdb::{UserSource, Userdb, parse_static};
use super::{AuthError, UserEntry};
use crate::config::{self, Config, PassdbDriver, UserdbDriver};

/// The passdb and userdb, shared by the worker pool threads.
pub struct Passdb {
    inner: Inner,
    userdb: Userdb,
    /// `[auth.oauth]`: the token validator, when OAuth logins are on.
    oauth: Option<OAuth>,
}

enum Inner {
    File(FileDb),
    /// Boxed: one per process, and much larger than the file's handle.
    Remote(Box<RemoteDb>),
}

impl Passdb {
    /// A passwd-file passdb (`auth.passwd_file`), loaded now; a missing or
    /// unreadable file is an error.
    pub fn open(path: &Path) -> Result<Passdb, AuthError> {
        Ok(Passdb::from_file(FileDb::open(path)?))
    }

    #[cfg(test)]
    pub(crate) fn open_with_interval(path: &Path, interval: Duration) -> Result<Passdb, AuthError> {
        Ok(Passdb::from_file(FileDb::open_with_interval(
            path, interval,
        )?))
    }

    fn from_file(file: FileDb) -> Passdb {
        Passdb {
            inner: Inner::File(file),
            userdb: Userdb::prefetch(),
            oauth: None,
        }
    }

    /// The passdb and userdb the configuration names: `[passdb]` when it
    /// is there, else `auth.passwd_file`; `[userdb]` when it is there, else
    /// the passdb's own fields. A passwd-file is read now; SQL and LDAP
    /// connect on the first lookup, so the server starts while a database
    /// is down (its logins get `-ERR [SYS/TEMP]` until it is back).
    pub fn from_config(config: &Config) -> Result<Passdb, AuthError> {
        let invalid = |why: String| AuthError::Config { why };
        let inner = match &config.passdb {
            None => {
                let path =
                    config.auth.passwd_file.as_deref().ok_or_else(|| {
                        invalid("no passdb: set [passdb] or auth.passwd_file".into())
                    })?;
                Inner::File(FileDb::open(path)?)
            }
            Some(p) => {
                if config.auth.passwd_file.is_some() {
                    tracing::warn!("[passdb] is set: auth.passwd_file (--passwd-file) is ignored");
                }
                match p.driver {
                    PassdbDriver::PasswdFile => {
                        let path = p
                            .args
                            .as_deref()
                            .ok_or_else(|| invalid("[passdb] args".into()))?;
                        Inner::File(FileDb::open(path)?)
                    }
                    _ => Inner::Remote(Box::new(remote_passdb(config, p).map_err(invalid)?)),
                }
            }
        };
        let userdb = match &config.userdb {
            None => Userdb::prefetch(),
            Some(u) => userdb(config, u).map_err(|e| invalid(format!("[userdb] {e}")))?,
        };
        if let Inner::Remote(_) = inner {
            let p = config
                .passdb
                .as_ref()
                .expect("remote passdbs come from [passdb]");
            tracing::info!(driver = ?p.driver, cache_size = config.auth.cache_size, "passdb ready; connects on the first login");
        }
        let oauth = config
            .auth
            .oauth
            .as_ref()
            .map(OAuth::load)
            .transpose()
            .map_err(|e| invalid(e.to_string()))?;
        Ok(Passdb {
            inner,
            userdb,
            oauth,
        })
    }

    /// Uses `oauth` for OAUTHBEARER and XOAUTH2 logins (tests; the server
    /// loads it from `[auth.oauth]` in [`Passdb::from_config`]).
    pub fn with_oauth(mut self, oauth: OAuth) -> Passdb {
        self.oauth = Some(oauth);
        self
    }

    /// Whether OAuth logins are configured.
    pub fn has_oauth(&self) -> bool {
        self.oauth.is_some()
    }

    /// Checks an OAUTHBEARER or XOAUTH2 login: the access token must be
    /// good now (signature, issuer, audience, expiry: see [`OAuth`]) and
    /// name a user the passdb knows (a `nologin` or `fail` user is refused,
    /// the password is not looked at); `claimed` (the GS2 authzid or
    /// XOAUTH2's `user=`, empty when the client named nobody) must be that
    /// user, ASCII case aside, as names are looked up. The userdb is applied
    /// as for [`Passdb::verify_plain`], and results are as there; without
    /// `[auth.oauth]` every token is refused. Why a token was refused is
    /// logged at info level; the token never is.
    pub fn verify_bearer(
        &self,
        claimed: &str,
        token: &[u8],
    ) -> Result<Option<UserEntry>, AuthError> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.verify_bearer_at(claimed, token, now)
    }

    /// [`Passdb::verify_bearer`] at `now_secs` since the Unix epoch.
    pub fn verify_bearer_at(
        &self,
        claimed: &str,
        token: &[u8],
        now_secs: u64,
    ) -> Result<Option<UserEntry>, AuthError> {
        let Some(oauth) = &self.oauth else {
            return Ok(None);
        };
        let user = match oauth.verify(token, now_secs) {
            Ok(user) => user,
            Err(why) => {
                tracing::info!(claimed = %claimed.escape_debug(), reason = %why, "OAuth token refused");
                return Ok(None);
            }
        };
        if !claimed.is_empty() && !claimed.eq_ignore_ascii_case(&user) {
            tracing::info!(
                claimed = %claimed.escape_debug(),
                token_user = %user.escape_debug(),
                "OAuth token refused: it names another user"
            );
            return Ok(None);
        }
        if !super::valid_username(user.as_bytes()) {
            tracing::info!(token_user = %user.escape_debug(), "OAuth token refused: not a valid user name");
            return Ok(None);
        }
        let found = match &self.inner {
            Inner::File(file) => file.lookup(&user)?,
            Inner::Remote(remote) => remote.lookup(&user)?,
        };
        self.finish(found)
    }

    /// Sets the secret that keys the SCRAM salts of `{PLAIN}` and unknown
    /// users: at least 16 random bytes, private, the same on every server
    /// of one user database.
    pub fn with_scram_secret(mut self, secret: &[u8]) -> Passdb {
        self.inner = match self.inner {
            Inner::File(file) => Inner::File(file.with_scram_secret(secret)),
            Inner::Remote(mut remote) => {
                remote.set_scram_secret(secret);
                Inner::Remote(remote)
            }
        };
        self
    }

    /// Checks a USER/PASS or SASL PLAIN login, name and password prepared
    /// with SASLprep ([`super::saslprep`]). `Ok(Some(user))` on success;
    /// `Ok(None)` for an unknown user, a wrong password, a refused name, a
    /// `nologin` or `fail` user (unknown user and wrong password at the same
    /// cost); `Err` when the passdb or userdb cannot answer (file unreadable,
    /// database down or slow: [`AuthError::Unavailable`]), which the engine
    /// answers with `-ERR [SYS/TEMP]` and no penalty.
    pub fn verify_plain(
        &self,
        user: &str,
        password: &[u8],
    ) -> Result<Option<UserEntry>, AuthError> {
        // RFC 4616 / RFC 6856: both prepared with SASLprep (see `saslprep`).
        let user = super::saslprep::prepare_str(user);
        let password = super::saslprep::prepare(password);
        let (user, password) = (&*user, &*password);
        let found = match &self.inner {
            Inner::File(file) => file.verify_plain(user, password)?,
            Inner::Remote(remote) => remote.verify_plain(user, password)?,
        };
        self.finish(found)
    }

    /// [`Passdb::verify_plain`] when it can be answered on a shard thread:
    /// a passwd-file with a userdb that is `prefetch` or `static` (no
    /// database to ask), and no costly hash
    /// ([`super::passdb::FileDb::verify_plain_now`]). `None`: ask the pool.
    pub fn verify_plain_now(
        &self,
        user: &str,
        password: &[u8],
    ) -> Option<Result<Option<UserEntry>, AuthError>> {
        let Inner::File(file) = &self.inner else {
            return None;
        };
        if !self.userdb.is_in_memory() {
            return None;
        }
        let user = super::saslprep::prepare_str(user);
        let password = super::saslprep::prepare(password);
        let found = file.verify_plain_now(&user, &password)?;
        Some(self.finish(found))
    }

    /// Checks an APOP login: `digest_hex` must be the hex MD5 of
    /// `challenge` (our greeting's timestamp) followed by the password, and
    /// only users with a plaintext password can pass. Results as for
    /// [`Passdb::verify_plain`].
    pub fn verify_apop(
        &self,
        user: &str,
        challenge: &[u8],
        digest_hex: &[u8],
    ) -> Result<Option<UserEntry>, AuthError> {
        let found = match &self.inner {
            Inner::File(file) => file.verify_apop(user, challenge, digest_hex)?,
            Inner::Remote(remote) => remote.verify_apop(user, challenge, digest_hex)?,
        };
        self.finish(found)
    }

    /// The SCRAM-SHA-256 credentials of `user` (made-up ones that can never
    /// succeed for unknown users and users whose stored password cannot do
    /// SCRAM); `Err` as for [`Passdb::verify_plain`]. The userdb is applied
    /// to the user the credentials carry.
    pub fn scram_credentials(&self, user: &str) -> Result<Option<ScramCredentials>, AuthError> {
        let credentials = match &self.inner {
            Inner::File(file) => file.scram_credentials(user)?,
            Inner::Remote(remote) => remote.scram_credentials(user)?,
        };
        let Some(credentials) = credentials else {
            return Ok(None);
        };
        credentials.map_user(|entry| self.finish(entry))
    }

    /// Whether APOP can work: some user has a plaintext password. A SQL or
    /// LDAP passdb cannot tell without reading every user, so it says yes.
    /// Lock-free: safe on a shard thread.
    pub fn has_plaintext(&self) -> bool {
        match &self.inner {
            Inner::File(file) => file.has_plaintext(),
            Inner::Remote(_) => true,
        }
    }

    /// Empties the SQL/LDAP cache (passdb and userdb), so the next login of
    /// every user asks the database. Call on SIGHUP. A passwd-file has no
    /// cache (it reloads itself when the file changes).
    pub fn flush(&self) {
        if let Inner::Remote(remote) = &self.inner {
            remote.flush();
        }
        self.userdb.flush();
        tracing::info!("auth cache flushed");
    }

    fn finish(&self, found: Option<UserEntry>) -> Result<Option<UserEntry>, AuthError> {
        match found {
            Some(entry) => self.userdb.apply(entry),
            None => Ok(None),
        }
    }
}

impl fmt::Debug for Passdb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.inner {
            Inner::File(file) => file.fmt(f),
            Inner::Remote(_) => f.debug_struct("Passdb").finish_non_exhaustive(),
        }
    }
}

/// Connections per database when `pool_size` is 0: one per worker thread,
/// so no lookup waits for a connection.
fn pool_size(config: &Config, size: usize) -> usize {
    if size == 0 { config.workers() } else { size }
}

fn ms(value: u64) -> Duration {
    Duration::from_millis(value)
}

fn cache<V: Clone>(config: &Config) -> Option<Cache<V>> {
    let auth = &config.auth;
    Cache::new(
        auth.cache_size,
        ms(auth.cache_ttl_ms),
        ms(auth.cache_negative_ttl_ms),
    )
}

fn remote_passdb(config: &Config, p: &config::Passdb) -> Result<RemoteDb, String> {
    let (source, default_scheme) = pass_source(config, p)?;
    let cache = cache::<Arc<Record>>(config);
    Ok(RemoteDb::new(source, default_scheme, p.auth_bind, cache))
}

/// The passdb's source and its default scheme, connecting nothing.
fn pass_source(config: &Config, p: &config::Passdb) -> Result<(PassSource, String), String> {
    let size = pool_size(config, p.pool_size);
    let (connect_timeout, query_timeout) = (ms(p.connect_timeout_ms), ms(p.query_timeout_ms));
    let flavor = match p.driver {
        PassdbDriver::Pgsql => Flavor::Pg,
        PassdbDriver::Mysql => Flavor::My,
        PassdbDriver::Ldap => {
            let settings = LdapSettings {
                name: "ldap passdb".into(),
                uris: p.uris.as_deref().or(p.connect.as_deref()).ok_or("uris")?,
                dn: p.dn.as_deref(),
                dnpass: p.dnpass.as_deref(),
                base: p.base.as_deref().unwrap_or(""),
                scope: p.scope.as_deref(),
                filter: p
                    .pass_filter
                    .as_deref()
                    .unwrap_or(ldap::PASS_FILTER_DEFAULT),
                attrs: p.pass_attrs.as_deref().unwrap_or(ldap::PASS_ATTRS_DEFAULT),
                auth_bind: p.auth_bind,
                auth_bind_userdn: p.auth_bind_userdn.as_deref(),
                pool_size: size,
                connect_timeout,
                query_timeout,
            };
            let scheme = p
                .default_pass_scheme
                .clone()
                .unwrap_or_else(|| "CRYPT".into());
            return Ok((PassSource::Ldap(LdapSource::new(&settings)?), scheme));
        }
        PassdbDriver::PasswdFile => return Err("passwd-file is not a remote passdb".into()),
    };
    let settings = SqlSettings {
        name: format!("{} passdb", driver_name(flavor)),
        connect: p.connect.as_deref().ok_or("connect")?,
        query: p.password_query.as_deref().ok_or("password_query")?,
        pool_size: size,
        connect_timeout,
        query_timeout,
    };
    let source = SqlSource::new(flavor, &settings).map_err(|e| format!("password_query: {e}"))?;
    let scheme = p
        .default_pass_scheme
        .clone()
        .unwrap_or_else(|| "MD5".into());
    check_scheme(&scheme)?;
    Ok((PassSource::Sql(source), scheme))
}

fn check_scheme(scheme: &str) -> Result<(), String> {
    if scheme.eq_ignore_ascii_case("CRYPT") {
        return Ok(());
    }
    scheme
        .parse::<super::Scheme>()
        .map(|_| ())
        .map_err(|_| format!("default_pass_scheme: unknown scheme {scheme:?}"))
}

fn driver_name(flavor: Flavor) -> &'static str {
    match flavor {
        Flavor::Pg => "pgsql",
        Flavor::My => "mysql",
    }
}

fn userdb(config: &Config, u: &config::Userdb) -> Result<Userdb, String> {
    let passdb = config.passdb.as_ref();
    let size = pool_size(config, u.pool_size);
    let (connect_timeout, query_timeout) = (ms(u.connect_timeout_ms), ms(u.query_timeout_ms));
    let source = match u.driver {
        UserdbDriver::Prefetch | UserdbDriver::PasswdFile => UserSource::Prefetch,
        UserdbDriver::Static => UserSource::Static(parse_static(u.args.as_deref().unwrap_or(""))?),
        UserdbDriver::Pgsql | UserdbDriver::Mysql => {
            let flavor = if u.driver == UserdbDriver::Pgsql {
                Flavor::Pg
            } else {
                Flavor::My
            };
            let connect = u
                .connect
                .as_deref()
                .or_else(|| passdb.and_then(|p| p.connect.as_deref()))
                .ok_or("connect")?;
            let settings = SqlSettings {
                name: format!("{} userdb", driver_name(flavor)),
                connect,
                query: u.user_query.as_deref().ok_or("user_query")?,
                pool_size: size,
                connect_timeout,
                query_timeout,
            };
            UserSource::Sql(
                SqlSource::new(flavor, &settings).map_err(|e| format!("user_query: {e}"))?,
            )
        }
        UserdbDriver::Ldap => {
            let from_passdb = |f: fn(&config::Passdb) -> Option<&String>| {
                passdb
                    .filter(|p| p.driver == PassdbDriver::Ldap)
                    .and_then(f)
                    .map(String::as_str)
            };
            let uris = u
                .uris
                .as_deref()
                .or(u.connect.as_deref())
                .or_else(|| from_passdb(|p| p.uris.as_ref().or(p.connect.as_ref())))
                .ok_or("uris")?;
            let settings = LdapSettings {
                name: "ldap userdb".into(),
                uris,
                dn: u.dn.as_deref().or_else(|| from_passdb(|p| p.dn.as_ref())),
                dnpass: u
                    .dnpass
                    .as_deref()
                    .or_else(|| from_passdb(|p| p.dnpass.as_ref())),
                base: u
                    .base
                    .as_deref()
                    .or_else(|| from_passdb(|p| p.base.as_ref()))
                    .ok_or("base")?,
                scope: u
                    .scope
                    .as_deref()
                    .or_else(|| from_passdb(|p| p.scope.as_ref())),
                filter: u
                    .user_filter
                    .as_deref()
                    .unwrap_or(ldap::USER_FILTER_DEFAULT),
                attrs: u.user_attrs.as_deref().unwrap_or(ldap::USER_ATTRS_DEFAULT),
                auth_bind: false,
                auth_bind_userdn: None,
                pool_size: size,
                connect_timeout,
                query_timeout,
            };
            UserSource::Ldap(LdapSource::new(&settings)?)
        }
    };
    let cached = matches!(source, UserSource::Sql(_) | UserSource::Ldap(_));
    Ok(Userdb::new(
        source,
        if cached { cache(config) } else { None },
    ))
}

/// Checks a `[passdb]` section as far as can be done without connecting:
/// connect strings, query templates, filters, schemes.
pub fn check_passdb_config(p: &config::Passdb) -> Result<(), String> {
    if p.driver == PassdbDriver::PasswdFile {
        return Ok(());
    }
    let config = Config {
        passdb: Some(p.clone()),
        ..Config::default()
    };
    pass_source(&config, p).map(|_| ())
}

/// As [`check_passdb_config`], for `[userdb]` (borrowing nothing from the
/// passdb: a missing connection there is reported by `validate`).
pub fn check_userdb_config(u: &config::Userdb) -> Result<(), String> {
    let config = Config::default();
    match u.driver {
        UserdbDriver::Pgsql | UserdbDriver::Mysql if u.connect.is_none() => {
            let query = u.user_query.as_deref().unwrap_or("");
            let markers = if u.driver == UserdbDriver::Pgsql {
                super::template::Markers::Dollar
            } else {
                super::template::Markers::Question
            };
            super::template::SqlQuery::compile(query, markers)
                .map(|_| ())
                .map_err(|e| format!("user_query: {e}"))
        }
        UserdbDriver::Ldap if u.uris.is_none() && u.connect.is_none() => Ok(()),
        UserdbDriver::Ldap if u.base.is_none() => Ok(()),
        _ => userdb(&config, u).map(|_| ()),
    }
}
