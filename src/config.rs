//! Typed configuration: a TOML file (see `shardpop.example.toml`), defaults for
//! everything, and command-line flags that override the file. Every limit is
//! named with its unit last.
#![forbid(unsafe_code)]

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::store::MailLocation;

/// The whole configuration.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Listeners, shards and the worker pool.
    pub server: Server,
    /// The passdb and login behaviour.
    pub auth: Auth,
    /// Where mail lives.
    pub mail: Mail,
    /// RFC 2449 site policy: LOGIN-DELAY and EXPIRE.
    pub pop3: Pop3,
    /// Protocol and resource limits.
    pub limits: Limits,
    /// Certificates and implicit-TLS listeners.
    pub tls: Tls,
    /// The Prometheus endpoint.
    pub metrics: Metrics,
    /// Logging.
    pub log: Log,
    /// Where passwords are checked (Dovecot's `passdb { driver = .. }`).
    /// Without it, `auth.passwd_file` is the passdb.
    pub passdb: Option<Passdb>,
    /// Where a proven user's home and mail location come from (Dovecot's
    /// `userdb { driver = .. }`). Without it, the passdb's own fields.
    pub userdb: Option<Userdb>,
}

/// `[log]`
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Log {
    /// What is logged, in tracing's env-filter syntax ("info", "warn",
    /// "shardpop=debug"); `--log` overrides it, and RUST_LOG applies only
    /// when neither is set. SIGHUP applies a changed value.
    pub level: Option<String>,
}

/// `[metrics]`
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Metrics {
    /// Where `GET /metrics` is served (Prometheus text format); off when
    /// unset. Its own thread and socket, never a POP3 listener.
    pub listen: Option<SocketAddr>,
}

/// `[passdb] driver`
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub enum PassdbDriver {
    /// Dovecot's passwd-file, loaded into memory (`args` = its path).
    #[serde(rename = "passwd-file")]
    PasswdFile,
    /// PostgreSQL.
    #[serde(rename = "pgsql")]
    Pgsql,
    /// MySQL or MariaDB.
    #[serde(rename = "mysql")]
    Mysql,
    /// LDAP (OpenLDAP, 389 DS, Active Directory).
    #[serde(rename = "ldap")]
    Ldap,
}

/// `[userdb] driver`
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub enum UserdbDriver {
    /// Fixed fields from `args` (`uid=vmail gid=vmail home=/srv/%d/%n`),
    /// over what the passdb returned.
    #[serde(rename = "static")]
    Static,
    /// The passdb's own fields (`home`, `mail`, `userdb_*`); the default.
    #[serde(rename = "prefetch")]
    Prefetch,
    /// The passwd-file's home and extra fields (the passdb must be one).
    #[serde(rename = "passwd-file")]
    PasswdFile,
    /// `user_query` against PostgreSQL.
    #[serde(rename = "pgsql")]
    Pgsql,
    /// `user_query` against MySQL or MariaDB.
    #[serde(rename = "mysql")]
    Mysql,
    /// `user_filter` / `user_attrs` against LDAP.
    #[serde(rename = "ldap")]
    Ldap,
}

/// `[passdb]`: Dovecot's vocabulary, so settings carry over. Keys that do
/// not belong to the chosen driver are refused by `validate`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Passdb {
    /// Which database.
    pub driver: PassdbDriver,
    /// passwd-file: its path.
    pub args: Option<PathBuf>,
    /// SQL: `host=.. port=.. dbname=.. user=.. password=..`; `host` may be
    /// given more than once (failover, tried in order). LDAP: the same as
    /// `uris`.
    #[serde(serialize_with = "redacted_connect")]
    pub connect: Option<String>,
    /// SQL: the query, `%u` `%n` `%d` (`%{user}` `%{username}` `%{domain}`)
    /// sent as bound parameters. Columns `user`, `password`, `nopassword`,
    /// `nologin`, `reason`; the others (`home`, `mail`, `userdb_*`, ...)
    /// become the user's fields.
    pub password_query: Option<String>,
    /// The scheme of a stored password without a `{SCHEME}` prefix
    /// (Dovecot's defaults: `MD5` for SQL, `CRYPT` for LDAP).
    pub default_pass_scheme: Option<String>,
    /// LDAP: servers, space separated, tried in order.
    pub uris: Option<String>,
    /// LDAP: the DN and password to bind as for lookups (anonymous without).
    pub dn: Option<String>,
    /// LDAP: the password of `dn`.
    #[serde(serialize_with = "redacted")]
    pub dnpass: Option<String>,
    /// LDAP: the search base.
    pub base: Option<String>,
    /// LDAP: `subtree` (the default), `onelevel` or `base`.
    pub scope: Option<String>,
    /// LDAP: the filter that finds the user (RFC 4515-escaped variables).
    pub pass_filter: Option<String>,
    /// LDAP: `ldapAttr=field,...` (default `uid=user,userPassword=password`).
    pub pass_attrs: Option<String>,
    /// LDAP: check the password by binding as the user's DN, not by
    /// reading a password attribute.
    #[serde(default)]
    pub auth_bind: bool,
    /// LDAP with `auth_bind`: the user's DN template, which skips the search
    /// (`uid=%n,ou=people,dc=example,dc=com`).
    pub auth_bind_userdn: Option<String>,
    /// Connections to the database; 0 (the default) = one per worker thread.
    #[serde(default)]
    pub pool_size: usize,
    /// How long one connection attempt to one host may take.
    #[serde(default = "db_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// How long one query or search may take.
    #[serde(default = "db_timeout_ms")]
    pub query_timeout_ms: u64,
}

/// `[userdb]`: as `[passdb]`; a SQL or LDAP userdb without its own
/// connection settings uses the passdb's when it is the same driver.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Userdb {
    /// Which database.
    pub driver: UserdbDriver,
    /// static: `key=value` fields, space separated, %-expanded.
    pub args: Option<String>,
    /// SQL: as in `[passdb]` (default: the passdb's).
    #[serde(serialize_with = "redacted_connect")]
    pub connect: Option<String>,
    /// SQL: the query; columns `home`, `mail`, `uid`, `gid` and others.
    pub user_query: Option<String>,
    /// LDAP: as in `[passdb]` (default: the passdb's).
    pub uris: Option<String>,
    /// LDAP: as in `[passdb]`.
    pub dn: Option<String>,
    /// LDAP: as in `[passdb]`.
    #[serde(serialize_with = "redacted")]
    pub dnpass: Option<String>,
    /// LDAP: as in `[passdb]`.
    pub base: Option<String>,
    /// LDAP: as in `[passdb]`.
    pub scope: Option<String>,
    /// LDAP: the filter that finds the user.
    pub user_filter: Option<String>,
    /// LDAP: `ldapAttr=field,...` (default
    /// `homeDirectory=home,uidNumber=uid,gidNumber=gid`).
    pub user_attrs: Option<String>,
    /// As in `[passdb]`.
    #[serde(default)]
    pub pool_size: usize,
    /// As in `[passdb]`.
    #[serde(default = "db_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// As in `[passdb]`.
    #[serde(default = "db_timeout_ms")]
    pub query_timeout_ms: u64,
}

/// `check-config` prints the configuration: never a database password.
fn redacted<S: serde::Serializer>(value: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    match value {
        Some(_) => s.serialize_str("(set, not shown)"),
        None => s.serialize_none(),
    }
}

/// A connect string with its `password=` value hidden.
fn redacted_connect<S: serde::Serializer>(value: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    match value {
        Some(connect) => {
            let shown: Vec<String> = connect
                .split_whitespace()
                .map(|part| match part.split_once('=') {
                    Some((key, _)) if key.eq_ignore_ascii_case("password") => {
                        format!("{key}=(not shown)")
                    }
                    _ => part.to_string(),
                })
                .collect();
            s.serialize_str(&shown.join(" "))
        }
        None => s.serialize_none(),
    }
}

fn db_timeout_ms() -> u64 {
    5000
}

/// `[tls]`
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Tls {
    /// PEM certificate chains: one path (`cert = "a.pem"`) or a list, one
    /// per key type (`cert = ["rsa.pem", "ecdsa.pem"]`); each client gets
    /// the first its signature algorithms allow, ECDSA before RSA. With
    /// `key`, STLS is offered on the plain listeners. Reloaded on SIGHUP.
    #[serde(deserialize_with = "one_or_many")]
    pub cert: Option<Vec<PathBuf>>,
    /// PEM private keys, in the same order as `cert`: a path or a list.
    #[serde(deserialize_with = "one_or_many")]
    pub key: Option<Vec<PathBuf>>,
    /// Implicit-TLS listeners (RFC 8314; port 995 in production).
    pub listen: Vec<SocketAddr>,
    /// Session ticket keys shared by a cluster (hex lines, see
    /// `docs/operations.md`), so a client resumes on any node. Unset: each
    /// process makes its own. Reloaded on SIGHUP.
    pub ticket_key_file: Option<PathBuf>,
}

/// A TOML value that is one path or a list of paths.
fn one_or_many<'de, D>(deserializer: D) -> Result<Option<Vec<PathBuf>>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(PathBuf),
        Many(Vec<PathBuf>),
    }
    Ok(Some(match OneOrMany::deserialize(deserializer)? {
        OneOrMany::One(path) => vec![path],
        OneOrMany::Many(paths) => paths,
    }))
}

/// `[server]`
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Server {
    /// Plain POP3 listeners (port 110 in production).
    pub listen: Vec<SocketAddr>,
    /// Shards (threads with their own event loop and listener); 0 = one per core.
    pub shards: usize,
    /// Worker-pool threads for hashing, scans and deletions; 0 = 2 per core.
    pub workers: usize,
    /// When started as root: the user to run as once the listeners are bound.
    pub user: Option<String>,
    /// When started as root: the group to run as (default: the user's group).
    pub group: Option<String>,
    /// The I/O backend of every shard.
    pub engine: Engine,
    /// Front ends (HAProxy, nginx) trusted to send a PROXY protocol header
    /// (v1 or v2). A connection from one of these networks must start with
    /// one, and its source address becomes the client's for everything
    /// (penalties, limits, plaintext-auth policy, logs). Peers outside send
    /// no header. Empty by default.
    pub proxy_from: Vec<ipnet::IpNet>,
    /// A v2 header whose PP2_TYPE_SSL says the client spoke TLS to the
    /// proxy makes the connection count as TLS for `auth.plaintext_auth`.
    /// Only for proxies that terminate TLS themselves.
    pub proxy_ssl_counts_as_tls: bool,
    /// A login that needs no wait (a passwd-file with a one-digest scheme,
    /// a Maildir on a local file system whose entries and index are cached
    /// and current) is answered on the shard; every other one
    /// goes to the worker pool. `false`: every login goes to the pool.
    pub login_on_shard: bool,
    /// `--takeover` only (never from the file: it is a way to start, not a
    /// setting): bind beside a process that already listens on the same
    /// addresses, for a zero-downtime restart. Without it such a start
    /// fails.
    #[serde(skip)]
    pub takeover: bool,
}

/// `server.engine` / `--engine`: which pump drives the connections.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    /// Readiness: mio over epoll (every Linux).
    Epoll,
    /// Completion: one io_uring per shard; startup fails if the kernel
    /// refuses it.
    Uring,
    /// io_uring when the kernel allows every operation it uses, else epoll
    /// (one log line says which and why).
    #[default]
    Auto,
}

impl std::str::FromStr for Engine {
    type Err = String;

    fn from_str(s: &str) -> Result<Engine, String> {
        match s {
            "epoll" => Ok(Engine::Epoll),
            "uring" | "io_uring" => Ok(Engine::Uring),
            "auto" => Ok(Engine::Auto),
            _ => Err(format!("unknown engine {s:?} (epoll, uring or auto)")),
        }
    }
}

impl Default for Server {
    fn default() -> Self {
        Server {
            listen: vec![SocketAddr::from(([0, 0, 0, 0], 110))],
            shards: 0,
            workers: 0,
            user: None,
            group: None,
            engine: Engine::Auto,
            proxy_from: Vec::new(),
            proxy_ssl_counts_as_tls: false,
            login_on_shard: true,
            takeover: false,
        }
    }
}

impl Server {
    /// Whether a peer must begin with a PROXY header (an IPv4 peer on an
    /// IPv6 socket counts by its IPv4 address).
    pub fn is_proxy(&self, peer: std::net::IpAddr) -> bool {
        let peer = peer.to_canonical();
        self.proxy_from.iter().any(|net| net.contains(&peer))
    }
}

/// `[auth]`
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Auth {
    /// A Dovecot passwd-file (`user:{SCHEME}hash:uid:gid::home::extra`).
    pub passwd_file: Option<PathBuf>,
    /// How long a failed login waits before its `-ERR` (Dovecot's
    /// `auth_failure_delay`, 2 s by default).
    pub failure_delay_ms: u64,
    /// Offer APOP (the greeting then carries a challenge). Only users with
    /// plaintext passwords in the passdb can use it.
    pub apop: bool,
    /// Where USER/PASS and SASL PLAIN are allowed (Dovecot's
    /// `disable_plaintext_auth`).
    pub plaintext_auth: PlaintextAuth,
    /// Addresses exempt from login penalties and per-address limits (e.g. a
    /// proxy tier). None by default, loopback included.
    pub trusted_networks: Vec<ipnet::IpNet>,
    /// The most a growing failed-login delay may reach.
    pub penalty_delay_max_ms: u64,
    /// Failed logins from one address before it is refused for a while.
    pub penalty_failures_before_block: u32,
    /// How long an address is refused the first time; doubles on each repeat.
    pub penalty_block_ms: u64,
    /// The longest an address is refused.
    pub penalty_block_max_ms: u64,
    /// An address with no failure for this long starts afresh.
    pub penalty_window_ms: u64,
    /// A file of at least 16 secret bytes that keys the SCRAM salts of
    /// `{PLAIN}` and unknown users. Give every server of one passwd-file the
    /// same file so a user's salt does not change between servers or
    /// restarts; without it the secret is random per process.
    pub scram_secret_file: Option<PathBuf>,
    /// Users the SQL/LDAP cache holds (Dovecot's `auth_cache_size`, here
    /// counted in users); 0 turns the cache off.
    pub cache_size: usize,
    /// How long a found user is answered from the cache (Dovecot's
    /// `auth_cache_ttl`). A password that does not match the cached entry
    /// is checked against the database again, so a new password works at
    /// once and an old one stops working after this long at most.
    pub cache_ttl_ms: u64,
    /// How long "no such user" is answered from the cache (Dovecot's
    /// `auth_cache_negative_ttl`).
    pub cache_negative_ttl_ms: u64,
    /// `[auth.oauth]`: OAUTHBEARER and XOAUTH2 logins with JWT access
    /// tokens checked against a JWKS file. Off (and not in CAPA) when absent.
    pub oauth: Option<OAuth>,
}

/// `[auth.oauth]`: access tokens are JWTs signed by the identity provider
/// (RS256, ES256 or EdDSA), checked here against its public keys; the
/// provider is never asked. The JWKS file is read at startup and again on
/// SIGHUP.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct OAuth {
    /// The provider's public keys as a JWKS document (`{"keys":[...]}`).
    pub jwks_file: PathBuf,
    /// The `iss` every token must carry, exactly.
    pub issuer: String,
    /// A value the token's `aud` (a string or a list) must hold.
    pub audience: String,
    /// The claim that names the user (`sub` by default; `email` or
    /// `preferred_username` are common).
    #[serde(default = "username_claim_default")]
    pub username_claim: String,
}

fn username_claim_default() -> String {
    "sub".into()
}

impl OAuth {
    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |s: &str| Err(ConfigError::Invalid(s.to_string()));
        if self.issuer.is_empty() {
            return invalid("auth.oauth.issuer must not be empty");
        }
        if self.audience.is_empty() {
            return invalid("auth.oauth.audience must not be empty");
        }
        if self.username_claim.is_empty() {
            return invalid("auth.oauth.username_claim must not be empty");
        }
        Ok(())
    }
}

/// Where plaintext logins (USER/PASS, SASL PLAIN) are allowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum PlaintextAuth {
    /// Only over TLS.
    Tls,
    /// Over TLS, or from a loopback address.
    TlsOrLoopback,
    /// Anywhere (like `disable_plaintext_auth = no`).
    Always,
}

impl PlaintextAuth {
    /// Whether a connection may log in with a plaintext password.
    pub fn allows(self, tls: bool, peer: std::net::IpAddr) -> bool {
        match self {
            PlaintextAuth::Tls => tls,
            PlaintextAuth::TlsOrLoopback => tls || peer.to_canonical().is_loopback(),
            PlaintextAuth::Always => true,
        }
    }
}

impl Default for Auth {
    fn default() -> Self {
        Auth {
            passwd_file: None,
            failure_delay_ms: 2000,
            apop: false,
            plaintext_auth: PlaintextAuth::TlsOrLoopback,
            trusted_networks: Vec::new(),
            penalty_delay_max_ms: 15_000,
            penalty_failures_before_block: 10,
            penalty_block_ms: 30_000,
            penalty_block_max_ms: 15 * 60_000,
            penalty_window_ms: 5 * 60_000,
            scram_secret_file: None,
            cache_size: 100_000,
            cache_ttl_ms: 3_600_000,
            cache_negative_ttl_ms: 60_000,
            oauth: None,
        }
    }
}

/// `[mail]`
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Mail {
    /// Dovecot's `mail_location` syntax, e.g. `maildir:~/Maildir` or
    /// `maildir:/srv/mail/%d/%n`. A user's `userdb_mail` extra field wins.
    pub location: Option<String>,
    /// Dovecot's `pop3_uidl_format`: `%08Xu%08Xv` (Dovecot's default, from
    /// `dovecot-uidlist`), `%f` (the Maildir base name), `%g` (the GUID
    /// `dovecot-uidlist` keeps, else the base name), `%v`, `%u`.
    /// Messages Dovecot has not numbered fall back to their base name.
    pub pop3_uidl_format: String,
}

impl Default for Mail {
    fn default() -> Self {
        Mail {
            location: None,
            pop3_uidl_format: "%08Xu%08Xv".into(),
        }
    }
}

/// `[pop3]`: the RFC 2449 policy, announced by CAPA and enforced (a user's
/// `pop3_login_delay_secs` / `pop3_expire_days` field in the user database
/// wins over these, see `docs/operations.md`), and Dovecot's
/// `pop3_no_flag_updates`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Pop3 {
    /// LOGIN-DELAY: a login sooner than this after the user's last one is
    /// refused with `-ERR [LOGIN-DELAY]`; 0 (the default) is off.
    pub login_delay_secs: u32,
    /// EXPIRE: a message retrieved at least this many days ago is deleted
    /// at the end of a later session (0: at the end of the session that
    /// retrieved it), or `"never"`. Absent (the default): not announced,
    /// nothing deleted by policy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expire_days: Option<ExpireDays>,
    /// Dovecot's `pop3_no_flag_updates`: false (the default, as Dovecot's)
    /// gives a message RETR fetched the \Seen flag at QUIT, so it shows as
    /// read in IMAP and webmail; true leaves every file name as it is.
    pub no_flag_updates: bool,
}

impl Pop3 {
    /// The site policy the sessions announce and the workers enforce.
    pub fn policy(&self) -> crate::protocol::SitePolicy {
        crate::protocol::SitePolicy {
            login_delay_secs: self.login_delay_secs,
            expire: self.expire_days.map(|e| e.0),
        }
    }
}

/// `expire_days`: a whole number of days or `"never"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExpireDays(pub crate::protocol::Expire);

impl Serialize for ExpireDays {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            crate::protocol::Expire::Days(days) => s.serialize_u32(days),
            crate::protocol::Expire::Never => s.serialize_str("never"),
        }
    }
}

impl<'de> Deserialize<'de> for ExpireDays {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = ExpireDays;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a whole number of days or \"never\"")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<ExpireDays, E> {
                self.visit_str(&v.to_string())
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<ExpireDays, E> {
                self.visit_str(&v.to_string())
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ExpireDays, E> {
                crate::protocol::Expire::parse(v)
                    .map(ExpireDays)
                    .map_err(|e| E::custom(format!("expire_days {e}")))
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// `[limits]`
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Longest command line including CRLF (RFC 2449: 255).
    pub line_bytes_max: usize,
    /// Bad commands before the connection is closed.
    pub bad_commands_max: u32,
    /// Commands of any kind allowed before a successful login.
    pub commands_before_login_max: u32,
    /// Concurrent connections from one address; 0 = no limit (the default:
    /// proxies and carrier-grade NAT put thousands behind one address).
    pub connections_per_address_max: u32,
    /// Idle time allowed before login.
    pub login_timeout_ms: u64,
    /// Idle time allowed after login (RFC 1939: at least 10 minutes).
    pub autologout_ms: u64,
    /// After SIGTERM/SIGINT, how long sessions may finish before they are closed.
    pub shutdown_grace_ms: u64,
    /// Output a connection may queue before it stops reading commands or
    /// reading ahead in a body; bounds memory per connection. A body is
    /// refilled at half of it, so it also sets the size of a RETR's writes.
    pub output_buffer_bytes: usize,
    /// Receive buffer per connection (pipelined commands waiting their turn).
    pub recv_buffer_bytes: usize,
    /// Jobs (logins, commits) waiting for a worker before new ones are
    /// answered `-ERR [SYS/TEMP]` at once: a shard never waits for the pool.
    pub worker_queue_max: usize,
    /// How long a peer in `server.proxy_from` may take to send its whole
    /// PROXY header before the connection is closed.
    pub proxy_header_timeout_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            line_bytes_max: 255,
            bad_commands_max: 20,
            commands_before_login_max: 30,
            connections_per_address_max: 0,
            login_timeout_ms: 60_000,
            autologout_ms: 600_000,
            shutdown_grace_ms: 10_000,
            // 128 KiB: a RETR writes 64 KiB at a time. Against 64 KiB (32 KiB
            // writes), 3 % less server CPU per MB on epoll and 6 % on
            // io_uring (docs/benchmarks.md, sixth session); 256 KiB gained
            // nothing more.
            output_buffer_bytes: 128 * 1024,
            recv_buffer_bytes: 4096,
            worker_queue_max: 1024,
            proxy_header_timeout_ms: 5_000,
        }
    }
}

/// A configuration that cannot run.
#[derive(Debug)]
pub enum ConfigError {
    /// The file could not be read.
    Read(PathBuf, std::io::Error),
    /// The file is not valid TOML for this schema, or a value in it does not
    /// validate: where (1-based line and column, when known) and why.
    At {
        /// The file.
        path: PathBuf,
        /// Line and column of the offending key or value.
        position: Option<(usize, usize)>,
        /// What is wrong.
        reason: String,
    },
    /// A value is out of range or missing (it may come from a flag or a
    /// default, so it has no place in a file).
    Invalid(String),
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Read(p, e) => write!(f, "cannot read {}: {e}", p.display()),
            ConfigError::At {
                path,
                position: Some((line, column)),
                reason,
            } => write!(f, "{}:{line}:{column}: {reason}", path.display()),
            ConfigError::At {
                path,
                position: None,
                reason,
            } => write!(f, "{}: {reason}", path.display()),
            ConfigError::Invalid(s) => f.write_str(s),
        }
    }
}

impl std::error::Error for ConfigError {}

impl ConfigError {
    /// Places a validation error in `path`: the first `section.key` the
    /// reason names that the file sets gives the line. Errors that are
    /// already placed, and keys the file does not set (a default or a
    /// flag), are returned as they are.
    pub fn located(self, path: &Path) -> ConfigError {
        let ConfigError::Invalid(reason) = self else {
            return self;
        };
        let Ok(text) = std::fs::read_to_string(path) else {
            return ConfigError::Invalid(reason);
        };
        let keys = reason
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
            .filter(|w| w.split('.').count() == 2 && !w.starts_with('.') && !w.ends_with('.'));
        for key in keys {
            if let Some(offset) = key_offset(&text, key) {
                return ConfigError::At {
                    path: path.into(),
                    position: Some(line_column(&text, offset)),
                    reason,
                };
            }
        }
        ConfigError::Invalid(reason)
    }
}

/// The byte offset of `section.key` in a TOML document, if it sets it.
fn key_offset(text: &str, dotted: &str) -> Option<usize> {
    let (section, key) = dotted.split_once('.')?;
    let doc = toml::de::DeTable::parse(text).ok()?;
    let (_, table) = doc.get_ref().iter().find(|(k, _)| k.get_ref() == section)?;
    let toml::de::DeValue::Table(table) = table.get_ref() else {
        return None;
    };
    let (name, _) = table.iter().find(|(k, _)| k.get_ref() == key)?;
    Some(name.span().start)
}

/// 1-based line and column (in characters) of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

impl Config {
    /// Reads a TOML file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read(path.into(), e))?;
        toml::from_str(&text).map_err(|e| ConfigError::At {
            path: path.into(),
            position: e.span().map(|span| line_column(&text, span.start)),
            reason: e.message().trim_end().to_string(),
        })
    }

    /// Checks what can be checked before binding anything.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |s: &str| Err(ConfigError::Invalid(s.to_string()));
        if self.server.listen.is_empty() && self.tls.listen.is_empty() {
            return invalid("no listen address: set server.listen or --listen");
        }
        match (&self.tls.cert, &self.tls.key) {
            (Some(certs), Some(keys))
                if certs.len() == keys.len()
                    && (1..=crate::tls::CERTIFICATES_MAX).contains(&certs.len()) => {}
            (Some(_), Some(_)) => {
                return invalid(
                    "tls.cert and tls.key need one key per certificate, in the same order \
                     (--tls-cert and --tls-key as often), at least 1 and at most 8",
                );
            }
            (None, None) => {}
            _ => return invalid("tls.cert and tls.key go together (--tls-cert, --tls-key)"),
        }
        if !self.tls.listen.is_empty() && self.tls.cert.is_none() {
            return invalid("tls.listen (--tls-listen) needs tls.cert and tls.key");
        }
        if self.tls.ticket_key_file.is_some() && self.tls.cert.is_none() {
            return invalid("tls.ticket_key_file needs tls.cert and tls.key");
        }
        match &self.passdb {
            Some(passdb) => passdb.validate(self.userdb.as_ref())?,
            None if self.auth.passwd_file.is_none() => {
                return invalid("no passdb: set [passdb], auth.passwd_file or --passwd-file");
            }
            None => {}
        }
        if let Some(userdb) = &self.userdb {
            userdb.validate(self.passdb.as_ref())?;
        }
        if let Some(oauth) = &self.auth.oauth {
            oauth.validate()?;
        }
        let Some(location) = &self.mail.location else {
            return invalid("no mail location: set mail.location or --mail-location");
        };
        MailLocation::parse(location).map_err(|e| ConfigError::Invalid(e.to_string()))?;
        crate::store::UidlFormat::parse(&self.mail.pop3_uidl_format)
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        if self.pop3.login_delay_secs > crate::protocol::SitePolicy::LOGIN_DELAY_SECS_MAX {
            return invalid("pop3.login_delay_secs must be at most 86400 (one day)");
        }
        let l = &self.limits;
        if !(16..=8192).contains(&l.line_bytes_max) {
            return invalid("limits.line_bytes_max must be between 16 and 8192");
        }
        if l.recv_buffer_bytes < l.line_bytes_max * 2 {
            return invalid(
                "limits.recv_buffer_bytes must be at least twice limits.line_bytes_max",
            );
        }
        if l.output_buffer_bytes < 4096 {
            return invalid("limits.output_buffer_bytes must be at least 4096");
        }
        if !(100..=60_000).contains(&l.proxy_header_timeout_ms) {
            return invalid("limits.proxy_header_timeout_ms must be between 100 and 60000");
        }
        self.validate_proxy()?;
        if let Some(metrics) = self.metrics.listen
            && (self.server.listen.contains(&metrics) || self.tls.listen.contains(&metrics))
            && metrics.port() != 0
        {
            return invalid("metrics.listen (--metrics-listen) must not be a POP3 listen address");
        }
        if l.bad_commands_max == 0 {
            return invalid("limits.bad_commands_max must be at least 1");
        }
        if l.worker_queue_max == 0 {
            return invalid("limits.worker_queue_max must be at least 1");
        }
        if let Some(level) = &self.log.level
            && let Err(e) = tracing_subscriber::EnvFilter::try_new(level)
        {
            return Err(ConfigError::Invalid(format!(
                "log.level {level:?} is not a log filter: {e}"
            )));
        }
        if l.autologout_ms < 600_000 {
            tracing::warn!(
                autologout_ms = l.autologout_ms,
                "limits.autologout_ms is below the 10 minutes RFC 1939 requires"
            );
        }
        Ok(())
    }

    fn validate_proxy(&self) -> Result<(), ConfigError> {
        let s = &self.server;
        if s.proxy_ssl_counts_as_tls && s.proxy_from.is_empty() {
            return Err(ConfigError::Invalid(
                "server.proxy_ssl_counts_as_tls needs server.proxy_from (--proxy-from)".into(),
            ));
        }
        if !s.proxy_from.is_empty()
            && self.limits.recv_buffer_bytes < crate::protocol::proxy::HEADER_BYTES_MAX
        {
            return Err(ConfigError::Invalid(format!(
                "server.proxy_from needs limits.recv_buffer_bytes of at least {} (the longest PROXY header)",
                crate::protocol::proxy::HEADER_BYTES_MAX
            )));
        }
        for net in &s.proxy_from {
            if net.prefix_len() == 0 {
                // Every address may then claim to be any client: penalties
                // and the plaintext policy see whatever the peer writes.
                tracing::warn!(%net, "server.proxy_from trusts every address to send PROXY headers");
            }
        }
        Ok(())
    }

    /// For a SIGHUP reload: the settings of `new` that differ from `self`
    /// and take effect only at a restart (what is bound, what runs), by
    /// their TOML names, so one log line can say which were not applied.
    pub fn restart_only_changes(&self, new: &Config) -> Vec<&'static str> {
        new.clone().keep_restart_only(self)
    }

    /// For a SIGHUP reload: puts the running values of the restart-only
    /// settings back into `self` (the configuration read anew) and returns
    /// the names of those that differed.
    pub fn keep_restart_only(&mut self, running: &Config) -> Vec<&'static str> {
        let mut changed = Vec::new();
        macro_rules! keep {
            ($($name:literal => $($field:ident).+),* $(,)?) => {$(
                if self.$($field).+ != running.$($field).+ {
                    changed.push($name);
                    self.$($field).+ = running.$($field).+.clone();
                }
            )*};
        }
        keep!("server.listen" => server.listen, "tls.listen" => tls.listen);
        // 0 means "per core": compare what would run.
        if self.shards() != running.shards() {
            changed.push("server.shards");
        }
        if self.workers() != running.workers() {
            changed.push("server.workers");
        }
        self.server.shards = running.server.shards;
        self.server.workers = running.server.workers;
        keep!(
            "server.engine" => server.engine,
            "server.user" => server.user,
            "server.group" => server.group,
            "metrics.listen" => metrics.listen,
            "tls.cert" => tls.cert,
            "tls.key" => tls.key,
            "tls.ticket_key_file" => tls.ticket_key_file,
            "limits.worker_queue_max" => limits.worker_queue_max,
        );
        changed
    }

    /// Shards to run.
    pub fn shards(&self) -> usize {
        match self.server.shards {
            0 => cores(),
            n => n,
        }
    }

    /// Worker-pool threads to run.
    pub fn workers(&self) -> usize {
        match self.server.workers {
            0 => cores() * 2,
            n => n,
        }
    }

    /// The `[limits]` durations.
    pub fn login_timeout(&self) -> Duration {
        Duration::from_millis(self.limits.login_timeout_ms)
    }

    /// Idle time allowed in TRANSACTION.
    pub fn autologout(&self) -> Duration {
        Duration::from_millis(self.limits.autologout_ms)
    }
}

impl Passdb {
    /// Required keys present, keys of other drivers absent.
    fn validate(&self, userdb: Option<&Userdb>) -> Result<(), ConfigError> {
        let problem = |s: String| Err(ConfigError::Invalid(format!("[passdb] {s}")));
        let sql = matches!(self.driver, PassdbDriver::Pgsql | PassdbDriver::Mysql);
        let ldap = self.driver == PassdbDriver::Ldap;
        let file = self.driver == PassdbDriver::PasswdFile;
        let given = [
            ("args", self.args.is_some(), file),
            ("connect", self.connect.is_some(), sql || ldap),
            ("password_query", self.password_query.is_some(), sql),
            (
                "default_pass_scheme",
                self.default_pass_scheme.is_some(),
                sql || ldap,
            ),
            ("uris", self.uris.is_some(), ldap),
            ("dn", self.dn.is_some(), ldap),
            ("dnpass", self.dnpass.is_some(), ldap),
            ("base", self.base.is_some(), ldap),
            ("scope", self.scope.is_some(), ldap),
            ("pass_filter", self.pass_filter.is_some(), ldap),
            ("pass_attrs", self.pass_attrs.is_some(), ldap),
            ("auth_bind", self.auth_bind, ldap),
            ("auth_bind_userdn", self.auth_bind_userdn.is_some(), ldap),
        ];
        if let Some((key, ..)) = given.iter().find(|(_, set, allowed)| *set && !allowed) {
            return problem(format!("{key} does not apply to driver {:?}", self.driver));
        }
        match self.driver {
            PassdbDriver::PasswdFile if self.args.is_none() => {
                return problem("driver \"passwd-file\" needs args (the file's path)".into());
            }
            PassdbDriver::Pgsql | PassdbDriver::Mysql => {
                if self.connect.is_none() || self.password_query.is_none() {
                    return problem("a SQL driver needs connect and password_query".into());
                }
            }
            PassdbDriver::Ldap => {
                if self.uris.is_none() && self.connect.is_none() {
                    return problem("driver \"ldap\" needs uris".into());
                }
                if self.base.is_none() && self.auth_bind_userdn.is_none() {
                    return problem("driver \"ldap\" needs base".into());
                }
                if self.uris.is_some() && self.connect.is_some() {
                    return problem("give uris or connect, not both".into());
                }
            }
            PassdbDriver::PasswdFile => {}
        }
        if self.connect_timeout_ms == 0 || self.query_timeout_ms == 0 {
            return problem("connect_timeout_ms and query_timeout_ms must be above 0".into());
        }
        let _ = userdb;
        crate::auth::check_passdb_config(self)
            .map_err(|e| ConfigError::Invalid(format!("[passdb] {e}")))
    }
}

impl Userdb {
    /// Required keys present, keys of other drivers absent, and a
    /// connection to borrow from the passdb when none is given.
    fn validate(&self, passdb: Option<&Passdb>) -> Result<(), ConfigError> {
        let problem = |s: String| Err(ConfigError::Invalid(format!("[userdb] {s}")));
        let sql = matches!(self.driver, UserdbDriver::Pgsql | UserdbDriver::Mysql);
        let ldap = self.driver == UserdbDriver::Ldap;
        let given = [
            (
                "args",
                self.args.is_some(),
                self.driver == UserdbDriver::Static,
            ),
            ("connect", self.connect.is_some(), sql || ldap),
            ("user_query", self.user_query.is_some(), sql),
            ("uris", self.uris.is_some(), ldap),
            ("dn", self.dn.is_some(), ldap),
            ("dnpass", self.dnpass.is_some(), ldap),
            ("base", self.base.is_some(), ldap),
            ("scope", self.scope.is_some(), ldap),
            ("user_filter", self.user_filter.is_some(), ldap),
            ("user_attrs", self.user_attrs.is_some(), ldap),
        ];
        if let Some((key, ..)) = given.iter().find(|(_, set, allowed)| *set && !allowed) {
            return problem(format!("{key} does not apply to driver {:?}", self.driver));
        }
        let same = |d: PassdbDriver| passdb.is_some_and(|p| p.driver == d);
        match self.driver {
            UserdbDriver::Pgsql | UserdbDriver::Mysql => {
                let passdb_driver = if self.driver == UserdbDriver::Pgsql {
                    PassdbDriver::Pgsql
                } else {
                    PassdbDriver::Mysql
                };
                if self.user_query.is_none() {
                    return problem("a SQL driver needs user_query".into());
                }
                if self.connect.is_none() && !same(passdb_driver) {
                    return problem("connect is needed (the passdb is not the same driver)".into());
                }
            }
            UserdbDriver::Ldap => {
                if self.uris.is_none() && self.connect.is_none() && !same(PassdbDriver::Ldap) {
                    return problem("uris is needed (the passdb is not LDAP)".into());
                }
                if self.base.is_none() && passdb.is_none_or(|p| p.base.is_none()) {
                    return problem("driver \"ldap\" needs base".into());
                }
            }
            UserdbDriver::PasswdFile => {
                let file = passdb.is_none_or(|p| p.driver == PassdbDriver::PasswdFile);
                if !file {
                    return problem(
                        "driver \"passwd-file\" needs the passdb to be the passwd-file".into(),
                    );
                }
            }
            UserdbDriver::Static | UserdbDriver::Prefetch => {}
        }
        crate::auth::check_userdb_config(self)
            .map_err(|e| ConfigError::Invalid(format!("[userdb] {e}")))
    }
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_file_parses_and_validates() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("shardpop.example.toml");
        let config = Config::load(&path).unwrap();
        config.validate().unwrap();
        assert_eq!(config.limits.line_bytes_max, 255);
    }

    #[test]
    fn the_example_oauth_section_parses_when_uncommented() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("shardpop.example.toml");
        let text = std::fs::read_to_string(path).unwrap();
        let start = text
            .find("# [auth.oauth]")
            .expect("the example has [auth.oauth]");
        let section: String = text[start..]
            .lines()
            .take_while(|l| l.starts_with("# "))
            .map(|l| format!("{}\n", &l[2..]))
            .collect();
        let c: Config = toml::from_str(&section).unwrap();
        let oauth = c.auth.oauth.unwrap();
        assert_eq!(oauth.username_claim, "email");
        assert_eq!(oauth.jwks_file, PathBuf::from("/etc/shardpop/jwks.json"));
    }

    #[test]
    fn auth_oauth_keys_and_checks() {
        let base =
            "[auth.oauth]\njwks_file = \"/k.json\"\nissuer = \"https://i\"\naudience = \"a\"\n";
        let c: Config = toml::from_str(base).unwrap();
        assert_eq!(c.auth.oauth.as_ref().unwrap().username_claim, "sub");
        assert!(Config::default().auth.oauth.is_none());
        assert!(toml::from_str::<Config>(&format!("{base}scope = \"x\"\n")).is_err());
        assert!(toml::from_str::<Config>("[auth.oauth]\njwks_file = \"/k\"\n").is_err());
        let mut c: Config = toml::from_str(&base.replace("\"a\"", "\"\"")).unwrap();
        c.server.listen = vec!["127.0.0.1:1110".parse().unwrap()];
        c.auth.passwd_file = Some("/p".into());
        c.mail.location = Some("maildir:~/Maildir".into());
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("auth.oauth.audience"), "{err}");
    }

    #[test]
    fn engine_parses_from_toml_and_flags() {
        let c: Config = toml::from_str("[server]\nengine = \"uring\"\n").unwrap();
        assert_eq!(c.server.engine, Engine::Uring);
        assert_eq!(Config::default().server.engine, Engine::Auto);
        assert!(toml::from_str::<Config>("[server]\nengine = \"kqueue\"\n").is_err());
        assert_eq!("epoll".parse::<Engine>(), Ok(Engine::Epoll));
        assert!(
            "kqueue"
                .parse::<Engine>()
                .unwrap_err()
                .contains("epoll, uring or auto")
        );
    }

    #[test]
    fn tls_cert_and_key_are_a_path_or_a_list() {
        let one: Config = toml::from_str("[tls]\ncert = \"a.pem\"\nkey = \"a.key\"\n").unwrap();
        assert_eq!(one.tls.cert, Some(vec![PathBuf::from("a.pem")]));
        assert_eq!(one.tls.key, Some(vec![PathBuf::from("a.key")]));
        assert_eq!(one.tls.ticket_key_file, None);
        let two: Config = toml::from_str(
            "[tls]\ncert = [\"rsa.pem\", \"ec.pem\"]\nkey = [\"rsa.key\", \"ec.key\"]\n\
             ticket_key_file = \"/etc/shardpop/tickets.key\"\n",
        )
        .unwrap();
        assert_eq!(
            two.tls.cert,
            Some(vec![PathBuf::from("rsa.pem"), PathBuf::from("ec.pem")])
        );
        assert_eq!(
            two.tls.ticket_key_file.as_deref(),
            Some(Path::new("/etc/shardpop/tickets.key"))
        );
        assert_eq!(Config::default().tls.cert, None);
        assert!(toml::from_str::<Config>("[tls]\ncert = 3\n").is_err());
    }

    #[test]
    fn tls_validation() {
        let mut c = Config::default();
        c.auth.passwd_file = Some("/etc/users".into());
        c.mail.location = Some("maildir:~/Maildir".into());
        c.server.listen = vec!["127.0.0.1:110".parse().unwrap()];
        c.tls.cert = Some(vec!["a.pem".into(), "b.pem".into()]);
        c.tls.key = Some(vec!["a.key".into()]);
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("one key per")
        );
        c.tls.key = Some(vec!["a.key".into(), "b.key".into()]);
        c.validate().unwrap();
        c.tls.cert = Some(Vec::new());
        c.tls.key = Some(Vec::new());
        assert!(c.validate().is_err());
        c.tls.cert = None;
        c.tls.key = None;
        c.tls.ticket_key_file = Some("t.key".into());
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("ticket_key_file")
        );
    }

    #[test]
    fn unknown_keys_are_errors() {
        assert!(toml::from_str::<Config>("[limits]\nline_bytes = 3\n").is_err());
    }

    #[test]
    fn validation_names_the_problem() {
        let mut c = Config::default();
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("passwd_file")
        );
        c.auth.passwd_file = Some("/etc/users".into());
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("mail location")
        );
        c.mail.location = Some("mbox:~/mail".into());
        assert!(c.validate().unwrap_err().to_string().contains("maildir"));
        c.mail.location = Some("maildir:~/Maildir".into());
        c.validate().unwrap();
        c.limits.recv_buffer_bytes = 100;
        assert!(c.validate().is_err());
    }

    #[test]
    fn pop3_policy_keys_parse_and_validate() {
        use crate::protocol::{Expire, SitePolicy};
        let policy = |toml: &str| toml::from_str::<Config>(toml).map(|c| c.pop3.policy());
        assert_eq!(policy("").unwrap(), SitePolicy::default());
        assert_eq!(
            policy("[pop3]\nlogin_delay_secs = 900\nexpire_days = 30\n").unwrap(),
            SitePolicy {
                login_delay_secs: 900,
                expire: Some(Expire::Days(30)),
            }
        );
        for never in ["\"never\"", "\"NEVER\""] {
            let toml = format!("[pop3]\nexpire_days = {never}\n");
            assert_eq!(policy(&toml).unwrap().expire, Some(Expire::Never));
        }
        assert_eq!(
            policy("[pop3]\nexpire_days = 0\n").unwrap().expire,
            Some(Expire::Days(0))
        );
        for bad in [
            "expire_days = -1",
            "expire_days = \"nevr\"",
            "expire_days = 1.5",
            "expire_days = 10001",
            "login_delay_secs = -1",
            "login_delay = 5",
        ] {
            assert!(policy(&format!("[pop3]\n{bad}\n")).is_err(), "{bad}");
        }
        let mut c = valid();
        c.pop3.login_delay_secs = 86_401;
        assert!(c.validate().is_err());
        c.pop3.login_delay_secs = 86_400;
        c.validate().unwrap();
        // What `toml::to_string` writes reads back the same.
        c.pop3.expire_days = Some(ExpireDays(Expire::Never));
        let back: Config = toml::from_str(&toml::to_string(&c).unwrap()).unwrap();
        assert_eq!(back.pop3, c.pop3);
    }

    fn valid() -> Config {
        let mut c = Config::default();
        c.auth.passwd_file = Some("/etc/users".into());
        c.mail.location = Some("maildir:~/Maildir".into());
        c
    }

    #[test]
    fn proxy_from_parses_and_matches_mapped_addresses() {
        let c: Config = toml::from_str(
            "[server]\nproxy_from = [\"10.20.0.0/16\", \"2001:db8::/32\"]\nproxy_ssl_counts_as_tls = true\n",
        )
        .unwrap();
        assert!(c.server.proxy_ssl_counts_as_tls);
        assert!(c.server.is_proxy("10.20.3.4".parse().unwrap()));
        assert!(c.server.is_proxy("::ffff:10.20.3.4".parse().unwrap()));
        assert!(c.server.is_proxy("2001:db8::9".parse().unwrap()));
        assert!(!c.server.is_proxy("10.21.0.1".parse().unwrap()));
        assert!(
            !Config::default()
                .server
                .is_proxy("127.0.0.1".parse().unwrap())
        );
        assert!(toml::from_str::<Config>("[server]\nproxy_from = [\"10.20.0.0/33\"]\n").is_err());
        assert!(toml::from_str::<Config>("[server]\nproxy_from = [\"haproxy\"]\n").is_err());
    }

    #[test]
    fn proxy_options_are_validated() {
        let mut c = valid();
        c.server.proxy_ssl_counts_as_tls = true;
        assert!(c.validate().unwrap_err().to_string().contains("proxy_from"));
        c.server.proxy_from = vec!["10.0.0.0/8".parse().unwrap()];
        c.validate().unwrap();
        c.limits.recv_buffer_bytes = 600;
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("recv_buffer_bytes")
        );
        c.limits.recv_buffer_bytes = 4096;
        c.limits.proxy_header_timeout_ms = 0;
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("proxy_header_timeout_ms")
        );
    }

    #[test]
    fn metrics_never_share_a_pop3_listener() {
        let mut c = valid();
        c.server.listen = vec!["127.0.0.1:110".parse().unwrap()];
        c.metrics.listen = Some("127.0.0.1:110".parse().unwrap());
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("metrics.listen")
        );
        c.metrics.listen = Some("127.0.0.1:9110".parse().unwrap());
        c.validate().unwrap();
    }

    #[test]
    fn a_reload_names_what_needs_a_restart() {
        let old = valid();
        let mut new = old.clone();
        assert!(old.restart_only_changes(&new).is_empty());
        // Reloadable settings are not named.
        new.server.proxy_from = vec!["10.0.0.0/8".parse().unwrap()];
        new.limits.login_timeout_ms = 1000;
        new.auth.penalty_block_ms = 1;
        assert!(old.restart_only_changes(&new).is_empty());
        new.server.listen = vec!["127.0.0.1:1110".parse().unwrap()];
        new.server.engine = Engine::Epoll;
        new.metrics.listen = Some("127.0.0.1:9110".parse().unwrap());
        assert_eq!(
            old.restart_only_changes(&new),
            vec!["server.listen", "server.engine", "metrics.listen"]
        );
    }

    #[test]
    fn metrics_listen_is_off_by_default() {
        assert_eq!(Config::default().metrics.listen, None);
        let c: Config = toml::from_str("[metrics]\nlisten = \"127.0.0.1:9110\"\n").unwrap();
        assert_eq!(c.metrics.listen, Some("127.0.0.1:9110".parse().unwrap()));
    }

    /// The issue's smallest configurations, exactly as written.
    const SMALLEST_PGSQL: &str = r#"
[passdb]
driver = "pgsql"
connect = "host=127.0.0.1 port=5432 dbname=mail user=mail password=secret"
password_query = "SELECT username AS user, password FROM users WHERE username = '%u'"

[userdb]
driver = "static"

[mail]
location = "maildir:/srv/mail/%u"
"#;

    #[test]
    fn the_smallest_user_database_configs_validate() {
        let mysql = SMALLEST_PGSQL
            .replace("\"pgsql\"", "\"mysql\"")
            .replace("port=5432", "port=3306");
        let ldap = "[passdb]\ndriver = \"ldap\"\nuris = \"ldap://127.0.0.1\"\n\
                    base = \"ou=people,dc=example,dc=com\"\n\n[userdb]\ndriver = \"static\"\n\n\
                    [mail]\nlocation = \"maildir:/srv/mail/%u\"\n";
        for text in [SMALLEST_PGSQL, &mysql, ldap] {
            let config: Config = toml::from_str(text).unwrap();
            config.validate().unwrap_or_else(|e| panic!("{e}\n{text}"));
            assert!(config.auth.passwd_file.is_none());
        }
        let config: Config = toml::from_str(SMALLEST_PGSQL).unwrap();
        let passdb = config.passdb.unwrap();
        assert_eq!(passdb.driver, PassdbDriver::Pgsql);
        assert_eq!(config.userdb.unwrap().driver, UserdbDriver::Static);
        assert_eq!(passdb.query_timeout_ms, 5000);
    }

    #[test]
    fn user_database_mistakes_are_named() {
        let check = |text: &str| {
            let config: Config =
                toml::from_str(&format!("[mail]\nlocation = \"maildir:~/Maildir\"\n{text}"))
                    .map_err(|e| e.to_string())?;
            config.validate().map_err(|e| e.to_string())
        };
        let err = |text: &str| check(text).unwrap_err();
        assert!(
            err("[passdb]\ndriver = \"pgsql\"\nconnect = \"host=x\"\n").contains("password_query")
        );
        assert!(
            err("[passdb]\ndriver = \"mysql\"\nconnect = \"host=x\"\n\
                 password_query = \"SELECT password FROM u WHERE n = '%n@example.com'\"\n")
            .contains("bound parameter")
        );
        assert!(err("[passdb]\ndriver = \"ldap\"\nuris = \"ldap://x\"\n").contains("base"));
        assert!(
            err(
                "[passdb]\ndriver = \"pgsql\"\nconnect = \"host=x\"\nbase = \"dc=x\"\n\
                 password_query = \"SELECT 1\"\n"
            )
            .contains("base does not apply")
        );
        assert!(
            err("[passdb]\ndriver = \"pgsql\"\nconnect = \"host=x\"\npassword_query = \"SELECT 1\"\n\
                 default_pass_scheme = \"ROT13\"\n")
            .contains("ROT13")
        );
        assert!(
            err("[userdb]\ndriver = \"pgsql\"\nuser_query = \"SELECT 1\"\n\
                     [auth]\npasswd_file = \"/etc/users\"\n")
            .contains("connect")
        );
        assert!(err("[passdb]\ndriver = \"oracle\"\n").contains("unknown variant"));
        // A SQL userdb borrows the passdb's connection.
        check(
            "[passdb]\ndriver = \"pgsql\"\nconnect = \"host=x\"\npassword_query = \"SELECT 1\"\n\
             [userdb]\ndriver = \"pgsql\"\nuser_query = \"SELECT home FROM u WHERE n = '%u'\"\n",
        )
        .unwrap();
    }
}
