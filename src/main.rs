//! The `shardpop` command line: `serve`, `check-config`, `demo`, `passwd`,
//! `migrate verify`.
#![forbid(unsafe_code)]

use std::io::{IsTerminal, Read};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use shardpop::auth::{Passdb, Scheme, hash_password};
use shardpop::config::{Config, ConfigError, PlaintextAuth};
use shardpop::notify::Notifier;

#[derive(Parser)]
#[command(
    name = "shardpop",
    version,
    about = "A sharded POP3 server over Maildir"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log filter (tracing env-filter syntax, default "info"); over the
    /// file's log.level; RUST_LOG applies when neither is set.
    #[arg(long, global = true)]
    log: Option<String>,
    /// Log line format on standard error: text, or json (one object per
    /// line, the event's fields at the top level).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Serve POP3 with a config file and/or flags (flags override the file).
    Serve(ServeArgs),
    /// Parse and validate what `serve` would use with the same file and
    /// flags, print the effective configuration, and exit non-zero with the
    /// file, line and reason on a mistake.
    CheckConfig(ServeArgs),
    /// Create a demo mail tree and passwd-file, then serve it on loopback.
    Demo {
        /// Where to create the demo tree (recreated on each run).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Listen address.
        #[arg(long, default_value = "127.0.0.1:1110")]
        listen: SocketAddr,
        /// Shards (0 = one per core).
        #[arg(long, default_value_t = 0)]
        shards: usize,
    },
    /// Moving users from another POP3 server (see docs/migration.md).
    Migrate {
        #[command(subcommand)]
        command: MigrateCommand,
    },
    /// Print a password hash for a passwd-file, like `doveadm pw`.
    Passwd {
        /// Scheme: SHA512-CRYPT, ARGON2ID, SSHA256, SSHA512, SHA256, SHA512, PLAIN, ...
        #[arg(short = 's', long, default_value = "SHA512-CRYPT")]
        scheme: String,
        /// The password; read from standard input when absent.
        #[arg(short = 'p', long)]
        password: Option<String>,
    },
}

#[derive(Subcommand)]
enum MigrateCommand {
    /// Log in to the old and the new server as each user and compare
    /// message count, sizes and UIDLs (read-only: never DELE). Exit status
    /// 0: every user identical; 1: differences (reported); 2: the run could
    /// not start.
    Verify(shardpop::migrate::verify::VerifyArgs),
}

#[derive(Args, Clone)]
struct ServeArgs {
    /// TOML configuration file (see shardpop.example.toml).
    #[arg(long, short = 'c')]
    config: Option<PathBuf>,
    /// Listen address (repeatable); replaces server.listen.
    #[arg(long)]
    listen: Vec<SocketAddr>,
    /// Dovecot passwd-file.
    #[arg(long)]
    passwd_file: Option<PathBuf>,
    /// Dovecot mail_location, e.g. 'maildir:~/Maildir' or 'maildir:/srv/mail/%d/%n'.
    #[arg(long)]
    mail_location: Option<String>,
    /// Shards (0 = one per core).
    #[arg(long)]
    shards: Option<usize>,
    /// Worker-pool threads (0 = two per core).
    #[arg(long)]
    workers: Option<usize>,
    /// Where USER/PASS and SASL PLAIN are allowed.
    #[arg(long, value_enum)]
    plaintext_auth: Option<PlaintextAuth>,
    /// Implicit-TLS listen address (repeatable); replaces tls.listen.
    #[arg(long)]
    tls_listen: Vec<SocketAddr>,
    /// PEM certificate chain (STLS is offered on plain listeners when set).
    /// Repeatable, one per key type (RSA and ECDSA); replaces tls.cert.
    #[arg(long)]
    tls_cert: Vec<PathBuf>,
    /// PEM private key; repeatable, in the same order as --tls-cert.
    #[arg(long)]
    tls_key: Vec<PathBuf>,
    /// Session ticket key file shared by a cluster; replaces tls.ticket_key_file.
    #[arg(long)]
    tls_ticket_key_file: Option<PathBuf>,
    /// I/O engine: epoll, uring (io_uring; fails if the kernel refuses it)
    /// or auto (io_uring when allowed, else epoll); replaces server.engine.
    #[arg(long, value_parser = ["epoll", "uring", "auto"])]
    engine: Option<String>,
    /// A network whose connections begin with a PROXY protocol header
    /// (repeatable, CIDR); replaces server.proxy_from.
    #[arg(long, value_name = "CIDR")]
    proxy_from: Vec<ipnet::IpNet>,
    /// Count PP2_TYPE_SSL (client used TLS to the proxy) as TLS for the
    /// plaintext-auth policy; sets server.proxy_ssl_counts_as_tls.
    #[arg(long)]
    proxy_ssl_counts_as_tls: bool,
    /// Serve Prometheus metrics at GET /metrics on this address; replaces
    /// metrics.listen.
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,
    /// Start even though another process listens on the same addresses,
    /// sharing them (SO_REUSEPORT) for a zero-downtime restart: start the
    /// new process with this flag, then SIGTERM the old one to drain it.
    #[arg(long)]
    takeover: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = init_logging(cli.log.as_deref(), cli.log_format);
    let result = match cli.command {
        Command::Serve(args) => serve(args, cli.log, filter),
        Command::CheckConfig(args) => check_config(args),
        Command::Demo {
            dir,
            listen,
            shards,
        } => demo(dir, listen, shards),
        Command::Passwd { scheme, password } => passwd(&scheme, password),
        Command::Migrate {
            command: MigrateCommand::Verify(args),
        } => {
            return match shardpop::migrate::verify::run(&args) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::from(1),
                Err(e) => {
                    eprintln!("shardpop migrate verify: {e}");
                    ExitCode::from(2)
                }
            };
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shardpop: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Sets the log filter while running (SIGHUP's `log.level`).
type SetFilter = Box<dyn Fn(&str) -> std::result::Result<(), String> + Send + Sync>;

/// Text for people, JSON for log shippers; the same events and fields in
/// both (JSON puts the fields, `message` included, at the top level). The
/// filter is `--log`, else RUST_LOG, else "info" until the configuration's
/// `log.level` is known; the returned setter changes it later.
fn init_logging(log: Option<&str>, format: LogFormat) -> SetFilter {
    use tracing_subscriber::EnvFilter;
    let filter = match log {
        Some(log) => EnvFilter::new(log),
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_timer(shardpop::log_format::Rfc3339Micros)
        .with_writer(shardpop::engine::log_batch::Stderr);
    fn setter<L, S>(handle: tracing_subscriber::reload::Handle<L, S>) -> SetFilter
    where
        L: From<EnvFilter> + Send + Sync + 'static,
        S: 'static,
    {
        Box::new(move |level: &str| {
            let filter = EnvFilter::try_new(level).map_err(|e| e.to_string())?;
            handle.reload(filter).map_err(|e| e.to_string())
        })
    }
    match format {
        LogFormat::Text => {
            // Colours first: `with_ansi` configures the writer that the
            // event format then asks (`Text` leaves coloured lines to the
            // stock format).
            let builder = builder
                .fmt_fields(shardpop::log_format::Fields)
                .with_ansi(std::io::stderr().is_terminal())
                .event_format(shardpop::log_format::Text::new(
                    shardpop::log_format::Rfc3339Micros,
                ))
                .with_filter_reloading();
            let set = setter(builder.reload_handle());
            builder.init();
            set
        }
        LogFormat::Json => {
            let builder = builder
                .json()
                .flatten_event(true)
                .with_current_span(true)
                .with_filter_reloading();
            let set = setter(builder.reload_handle());
            builder.init();
            set
        }
    }
}

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// The file (if any), then the flags over it, validated; a mistake in the
/// file is reported with its line.
fn effective_config(args: ServeArgs) -> std::result::Result<Config, ConfigError> {
    let mut config = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    if !args.listen.is_empty() {
        config.server.listen = args.listen;
    }
    if let Some(p) = args.passwd_file {
        config.auth.passwd_file = Some(p);
    }
    if let Some(l) = args.mail_location {
        config.mail.location = Some(l);
    }
    if let Some(n) = args.shards {
        config.server.shards = n;
    }
    if let Some(n) = args.workers {
        config.server.workers = n;
    }
    if let Some(p) = args.plaintext_auth {
        config.auth.plaintext_auth = p;
    }
    if !args.tls_listen.is_empty() {
        config.tls.listen = args.tls_listen;
    }
    if !args.tls_cert.is_empty() {
        config.tls.cert = Some(args.tls_cert);
    }
    if !args.tls_key.is_empty() {
        config.tls.key = Some(args.tls_key);
    }
    if let Some(p) = args.tls_ticket_key_file {
        config.tls.ticket_key_file = Some(p);
    }
    if let Some(e) = args.engine {
        config.server.engine = e.parse().map_err(ConfigError::Invalid)?;
    }
    if !args.proxy_from.is_empty() {
        config.server.proxy_from = args.proxy_from;
    }
    if args.proxy_ssl_counts_as_tls {
        config.server.proxy_ssl_counts_as_tls = true;
    }
    if let Some(addr) = args.metrics_listen {
        config.metrics.listen = Some(addr);
    }
    config.server.takeover = args.takeover;
    if let Err(e) = config.validate() {
        return Err(match &args.config {
            Some(path) => e.located(path),
            None => e,
        });
    }
    Ok(config)
}

fn serve(args: ServeArgs, log_flag: Option<String>, set_filter: SetFilter) -> Result<()> {
    let config = effective_config(args.clone())?;
    // The file's log.level, unless --log says otherwise.
    if log_flag.is_none()
        && let Some(level) = &config.log.level
    {
        set_filter(level)?;
    }
    // systemd (Type=notify): READY=1 once every listener is bound,
    // STOPPING=1 when shutdown starts.
    let notifier = std::sync::Arc::new(Notifier::from_env());
    let on_stop = std::sync::Arc::clone(&notifier);
    let hooks = shardpop::engine::Hooks {
        ready: Box::new(|bound: &[(SocketAddr, bool)]| {
            let status = format!("serving POP3 on {} address(es)", bound.len());
            if let Err(e) = notifier.ready(&status) {
                tracing::warn!(error = %e, "cannot notify the service manager");
            }
        }),
        // SIGHUP reads the file again, with the same flags over it.
        reload: Some(Box::new(move || {
            let mut config = effective_config(args.clone()).map_err(|e| e.to_string())?;
            if let Some(level) = &log_flag {
                config.log.level = Some(level.clone());
            }
            Ok(config)
        })),
        log_level: Some(Box::new(move |level: &str| set_filter(level))),
        stopping: Some(Box::new(move || {
            let _ = on_stop.stopping();
        })),
    };
    shardpop::engine::serve_hooked(&config, hooks)?;
    Ok(())
}

/// Everything `serve` reads before it binds: the configuration, the passdb,
/// the SCRAM secret, the TLS certificate and key. Prints the effective
/// configuration (defaults and flags applied) as TOML.
fn check_config(args: ServeArgs) -> Result<()> {
    let config = effective_config(args)?;
    Passdb::from_config(&config)?;
    if let Some(path) = &config.auth.scram_secret_file {
        let secret = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        if secret.len() < 16 {
            return Err(
                format!("{}: a SCRAM secret needs at least 16 bytes", path.display()).into(),
            );
        }
    }
    shardpop::tls::TlsReloader::from_config(&config.tls)?;
    let text = toml::to_string(&config)?;
    println!(
        "# effective configuration: {} shard(s), {} worker(s)\n{text}",
        config.shards(),
        config.workers()
    );
    eprintln!("shardpop: configuration OK");
    Ok(())
}

fn demo(dir: Option<PathBuf>, listen: SocketAddr, shards: usize) -> Result<()> {
    let dir = dir.unwrap_or_else(|| std::env::temp_dir().join("shardpop-demo"));
    let tree = shardpop::demo::create(&dir)?;
    let mut config = Config::default();
    config.server.listen = vec![listen];
    config.server.shards = shards;
    config.auth.passwd_file = Some(tree.passwd_file);
    config.mail.location = Some(tree.mail_location);
    config.auth.apop = true;
    let print_help = |bound: &[(SocketAddr, bool)]| {
        let addr = bound.first().map_or(listen, |&(addr, _)| addr);
        let url = format!("pop3://{addr}");
        println!("shardpop demo: mail tree in {}", dir.display());
        println!(
            "users (password): alice (wonderland), bob@example.org (builder), carol (empty-mailbox)"
        );
        println!("try, in another terminal:");
        println!("  curl {url}/ --user alice:wonderland          # LIST");
        println!("  curl {url}/2 --user alice:wonderland         # RETR 2 (dot-stuffed lines)");
        println!("  curl {url}/ --user alice:wonderland -X UIDL  # UIDL");
        println!(
            "  python3 -c \"import poplib; p=poplib.POP3('{}', {}); p.apop('alice', 'wonderland'); print(p.stat()); p.quit()\"",
            addr.ip(),
            addr.port()
        );
        println!("stop with Ctrl-C; each run recreates the tree.");
    };
    shardpop::engine::serve_with(&config, print_help)?;
    Ok(())
}

fn passwd(scheme: &str, password: Option<String>) -> Result<()> {
    let scheme: Scheme = scheme
        .parse()
        .map_err(|_| format!("unknown scheme {scheme:?}"))?;
    let password = match password {
        Some(p) => p,
        None => {
            let mut line = String::new();
            std::io::stdin().read_to_string(&mut line)?;
            line.trim_end_matches(['\r', '\n']).to_string()
        }
    };
    println!("{}", hash_password(scheme, password.as_bytes()));
    Ok(())
}
