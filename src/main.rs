//! The `shardpop` command line: `serve`, `demo`, `passwd`.
#![forbid(unsafe_code)]

use std::io::{IsTerminal, Read};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use shardpop::auth::{Scheme, hash_password};
use shardpop::config::{Config, PlaintextAuth};

#[derive(Parser)]
#[command(
    name = "shardpop",
    version,
    about = "A sharded POP3 server over Maildir"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log filter (tracing env-filter syntax); RUST_LOG wins when set.
    #[arg(long, global = true, default_value = "info")]
    log: String,
}

#[derive(Subcommand)]
enum Command {
    /// Serve POP3 with a config file and/or flags (flags override the file).
    Serve(ServeArgs),
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

#[derive(Args)]
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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&cli.log));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let result = match cli.command {
        Command::Serve(args) => serve(args),
        Command::Demo {
            dir,
            listen,
            shards,
        } => demo(dir, listen, shards),
        Command::Passwd { scheme, password } => passwd(&scheme, password),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shardpop: {e}");
            ExitCode::FAILURE
        }
    }
}

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn serve(args: ServeArgs) -> Result<()> {
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
        config.server.engine = e.parse()?;
    }
    shardpop::engine::serve(&config)?;
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
