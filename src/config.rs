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
    /// Protocol and resource limits.
    pub limits: Limits,
    /// Certificates and implicit-TLS listeners.
    pub tls: Tls,
    /// The Prometheus endpoint.
    pub metrics: Metrics,
}

/// `[metrics]`
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Metrics {
    /// Where `GET /metrics` is served (Prometheus text format); off when
    /// unset. Its own thread and socket, never a POP3 listener.
    pub listen: Option<SocketAddr>,
}

/// `[tls]`
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Tls {
    /// PEM certificate chain. With `key`, STLS is offered on the plain
    /// listeners. Reloaded on SIGHUP.
    pub cert: Option<PathBuf>,
    /// PEM private key.
    pub key: Option<PathBuf>,
    /// Implicit-TLS listeners (RFC 8314; port 995 in production).
    pub listen: Vec<SocketAddr>,
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
    /// `dovecot-uidlist`), `%f` (the Maildir base name), `%v`, `%u`.
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
    /// reading ahead in a body; bounds memory per connection.
    pub output_buffer_bytes: usize,
    /// Receive buffer per connection (pipelined commands waiting their turn).
    pub recv_buffer_bytes: usize,
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
            output_buffer_bytes: 64 * 1024,
            recv_buffer_bytes: 4096,
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
            (Some(_), Some(_)) | (None, None) => {}
            _ => return invalid("tls.cert and tls.key go together (--tls-cert, --tls-key)"),
        }
        if !self.tls.listen.is_empty() && self.tls.cert.is_none() {
            return invalid("tls.listen (--tls-listen) needs tls.cert and tls.key");
        }
        if self.auth.passwd_file.is_none() {
            return invalid("no passdb: set auth.passwd_file or --passwd-file");
        }
        let Some(location) = &self.mail.location else {
            return invalid("no mail location: set mail.location or --mail-location");
        };
        MailLocation::parse(location).map_err(|e| ConfigError::Invalid(e.to_string()))?;
        crate::store::UidlFormat::parse(&self.mail.pop3_uidl_format)
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
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
        let (a, b) = (&self.server, &new.server);
        [
            ("server.listen", a.listen != b.listen),
            ("tls.listen", self.tls.listen != new.tls.listen),
            ("server.shards", self.shards() != new.shards()),
            ("server.workers", self.workers() != new.workers()),
            ("server.engine", a.engine != b.engine),
            ("server.user", a.user != b.user),
            ("server.group", a.group != b.group),
            ("metrics.listen", self.metrics.listen != new.metrics.listen),
        ]
        .into_iter()
        .filter_map(|(name, differs)| differs.then_some(name))
        .collect()
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
}
