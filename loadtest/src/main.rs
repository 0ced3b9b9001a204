//! The `loadtest` command line. Stable for scripts:
//! `loadtest SCENARIO --addr HOST:PORT --users FILE [--mail-location TEMPLATE]
//! [--concurrency N] [--duration SECONDS] [--rate SESSIONS_PER_S] …`
#![forbid(unsafe_code)]

mod floor;

use clap::{Parser, ValueEnum};
use loadtest::corpus::{Corpus, parse_users};
use loadtest::engine::{self, RunConfig};
use loadtest::session::{Plan, Scenario};
use loadtest::stats::{Report, ReportInput, Timer};
use loadtest::template::MailLocation;
use std::io::IsTerminal;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Command {
    /// connect, USER/PASS, STAT, QUIT
    Login,
    /// log in, STAT, LIST, UIDL, RETR every message, QUIT (no DELE)
    Download,
    /// log in, STAT, UIDL, RETR only unseen messages (--new-share), QUIT
    Sync,
    /// log in, STAT, UIDL, RETR + DELE every message, QUIT; the harness re-seeds
    Delete,
    /// N logged-in idle connections (memory per connection), QUIT at the end
    Idle,
    /// no server: measure loopback TCP throughput of this machine
    Loopback,
    /// be the server: a canned-reply POP3 responder on --addr (the CPU floor)
    Floor,
}

/// POP3 load generator: closed or open loop, body verification, HDR latencies.
#[derive(Debug, Parser)]
#[command(name = "loadtest", version)]
struct Args {
    /// What each session does.
    #[arg(value_enum)]
    scenario: Command,
    /// `idle N`: the number of idle connections (same as --concurrency).
    count: Option<usize>,
    /// Server address, HOST:PORT (loopback only).
    #[arg(long)]
    addr: Option<String>,
    /// File with `user password` per line.
    #[arg(long)]
    users: Option<PathBuf>,
    /// Server mail location, e.g. `maildir:/corpus/home/%u/Maildir`: verifies every RETR body.
    #[arg(long)]
    mail_location: Option<String>,
    /// Connections (closed loop), or streams for `loopback`.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Seconds measured (after --warmup). Every run stops by itself.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Open loop: start this many sessions per second (latency from the intended start).
    #[arg(long)]
    rate: Option<f64>,
    /// Load threads (default: available cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Seconds of load before measuring starts.
    #[arg(long, default_value_t = 0.0)]
    warmup: f64,
    /// Seconds running sessions get to finish after the deadline; then they are cut.
    #[arg(long, default_value_t = 10.0)]
    drain: f64,
    /// Seconds without a reply before a session counts as timed out.
    #[arg(long, default_value_t = 30.0)]
    timeout: f64,
    /// sync: share of each mailbox that is new at every session (0..1).
    #[arg(long, default_value_t = 0.1)]
    new_share: f64,
    /// idle: connections per thread between connect and idle at once (ramp-up).
    #[arg(long, default_value_t = 64)]
    ramp: usize,
    /// Open loop: most connections open at once.
    #[arg(long, default_value_t = 4000)]
    max_open: usize,
    /// Seed for the sync scenario's choices.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Write an HDR latency plot (SVG) here.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// idle: write this file once all connections are logged in.
    #[arg(long)]
    ready_file: Option<PathBuf>,
    /// idle: stop this many seconds after every connection is logged in
    /// (--duration remains the upper bound).
    #[arg(long)]
    hold: Option<f64>,
    /// Never print the live progress line (it is shown only on a terminal anyway).
    #[arg(long)]
    no_progress: bool,
    /// Most MiB of expected message bodies cached in memory for verification.
    #[arg(long, default_value_t = 4096)]
    verify_cache_mib: usize,
    /// loopback: bytes per write and read call.
    #[arg(long, default_value_t = loadtest::loopback::WRITE_BYTES_DEFAULT)]
    write_bytes: usize,
    #[command(flatten)]
    tls: loadtest::tls::TlsArgs,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let result = match args.scenario {
        Command::Loopback => run_loopback(&args),
        Command::Floor => run_floor(&args),
        _ => run_load(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("loadtest: {e}");
            ExitCode::from(2)
        }
    }
}

fn run_loopback(args: &Args) -> Result<(), String> {
    let report =
        loadtest::loopback::measure(args.concurrency, seconds(args.duration)?, args.write_bytes)
            .map_err(|e| format!("loopback: {e}"))?;
    let ms = |v: Option<f64>| v.map_or("?".to_string(), |v| format!("{v:.3}"));
    eprintln!(
        "loopback: {} stream(s), {:.1} MB/s, {} B writes, CPU ms/MB sender {} receiver {}",
        report.streams,
        report.mb_per_s,
        report.write_bytes,
        ms(report.sender_cpu_ms_per_mb),
        ms(report.receiver_cpu_ms_per_mb)
    );
    println!(
        "{}",
        serde_json::to_string(&report).expect("report serializes")
    );
    Ok(())
}

fn run_floor(args: &Args) -> Result<(), String> {
    let addr = loopback_addr(args.addr.as_deref().unwrap_or("127.0.0.1:0"))?;
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from));
    let report =
        floor::serve(addr, threads, seconds(args.duration)?).map_err(|e| format!("floor: {e}"))?;
    println!(
        "{}",
        serde_json::to_string(&report).expect("report serializes")
    );
    Ok(())
}

fn seconds(s: f64) -> Result<Duration, String> {
    Duration::try_from_secs_f64(s).map_err(|_| format!("bad number of seconds: {s}"))
}

/// The server address; only loopback, so a load run can never leave the machine.
fn loopback_addr(text: &str) -> Result<SocketAddr, String> {
    let addr = text
        .to_socket_addrs()
        .map_err(|e| format!("--addr {text}: {e}"))?
        .next()
        .ok_or_else(|| format!("--addr {text}: no address"))?;
    if !addr.ip().is_loopback() {
        return Err(format!(
            "--addr {text}: only loopback addresses are allowed"
        ));
    }
    Ok(addr)
}

fn build_config(args: &Args) -> Result<RunConfig, String> {
    let scenario = match args.scenario {
        Command::Login => Scenario::Login,
        Command::Download => Scenario::Download,
        Command::Sync => Scenario::Sync,
        Command::Delete => Scenario::Delete,
        Command::Idle => Scenario::Idle,
        Command::Loopback | Command::Floor => unreachable!("handled before"),
    };
    let addr = loopback_addr(args.addr.as_deref().ok_or("--addr is required")?)?;
    let users_path = args.users.as_ref().ok_or("--users is required")?;
    let text = std::fs::read_to_string(users_path)
        .map_err(|e| format!("{}: {e}", users_path.display()))?;
    let users = parse_users(&text).map_err(|e| format!("{}: {e}", users_path.display()))?;
    let corpus = match &args.mail_location {
        Some(t) => {
            let location = MailLocation::parse(t).map_err(|e| format!("--mail-location: {e}"))?;
            Some(Corpus::new(&location, &users, args.verify_cache_mib << 20)?)
        }
        None if scenario == Scenario::Delete => {
            return Err("delete needs --mail-location to re-seed".into());
        }
        None => None,
    };
    if !(0.0..=1.0).contains(&args.new_share) {
        return Err("--new-share must be within 0..1".into());
    }
    if args
        .rate
        .is_some_and(|r| r <= 0.0 || scenario == Scenario::Idle)
    {
        return Err("--rate must be positive, and idle runs are closed loop".into());
    }
    let concurrency = args.count.unwrap_or(args.concurrency).max(1);
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from))
        .clamp(1, concurrency.max(1));
    Ok(RunConfig {
        plan: Plan {
            scenario,
            new_share: args.new_share,
            stls: args.tls.stls && !args.tls.tls,
        },
        addr,
        users,
        corpus,
        concurrency,
        rate: args.rate,
        threads,
        duration: seconds(args.duration)?,
        warmup: seconds(args.warmup)?,
        drain: seconds(args.drain)?,
        timeout: seconds(args.timeout)?,
        ramp: args.ramp.max(1),
        max_open: args.max_open.max(1),
        seed: args.seed,
        progress: !args.no_progress && std::io::stderr().is_terminal(),
        ready_file: args.ready_file.clone(),
        hold: args.hold.map(seconds).transpose()?,
        tls: args.tls.settings(addr)?,
    })
}

fn run_load(args: &Args) -> Result<(), String> {
    let cfg = build_config(args)?;
    let (scenario, addr, concurrency, rate, threads) = (
        cfg.plan.scenario,
        cfg.addr,
        cfg.concurrency,
        cfg.rate,
        cfg.threads,
    );
    let verify = cfg.corpus.is_some();
    let tls = cfg.tls.as_ref().map(|t| (t.mode.name(), t.resume));
    let outcome = engine::run(cfg)?;
    let report = Report::new(
        ReportInput {
            scenario: scenario.name(),
            addr: addr.to_string(),
            concurrency: concurrency as u64,
            rate,
            threads,
            duration_s: outcome.measured_s,
            verify,
            idle_peak: outcome.idle_peak,
            client_cpu_s: outcome.client_cpu_s,
            sessions_total: outcome.sessions_total,
            tls: tls.map(|(mode, _)| mode),
            tls_resume: tls.is_some_and(|(_, resume)| resume),
        },
        &outcome.stats,
    );
    eprint!("{}", report.summary());
    if let Some(path) = &args.plot {
        let s = &outcome.stats;
        let title = format!("{} c={} {}", scenario.name(), concurrency, addr);
        let svg = loadtest::plot::svg(
            &title,
            &[
                ("connect+greeting", s.histogram(Timer::Connect)),
                ("login", s.histogram(Timer::Login)),
                ("RETR", s.histogram(Timer::Retr)),
                ("session", s.histogram(Timer::Session)),
            ],
        );
        std::fs::write(path, svg).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    println!("{}", report.json_line());
    Ok(())
}
