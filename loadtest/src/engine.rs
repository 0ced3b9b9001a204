//! The load engine: several threads, each a mio (epoll) loop over thousands of
//! non-blocking connections, each connection one `Session`.
//!
//! - Closed loop: each thread keeps its share of `--concurrency` sessions open;
//!   a session that ends is replaced at once (after an error, after 10 ms).
//! - Open loop (`--rate`): each thread starts sessions on a fixed schedule. A
//!   session's connect and session latencies count from its *intended* start, so
//!   when the server falls behind the queueing shows in the numbers (no
//!   coordinated omission). `--max-open` bounds the connections.
//! - Every run ends by itself: at the deadline nothing new starts, running
//!   sessions get `--drain` seconds to finish, the rest are cut and counted.
//!
//! With TLS (`--tls`, `--stls`) a connection's bytes pass through a rustls
//! client (see `tls`); each thread has its own client config and so its own
//! session cache for `--tls-resume`.
//!
//! Users are split across threads (user i goes to thread i mod T) and a user has
//! at most one session at a time, because POP3 servers lock the mailbox. A user
//! is handed out again only after the server closed the previous connection.

use crate::corpus::{Corpus, User};
use crate::session::{Ctx, Plan, Rng, Scenario, Session, SessionError};
use crate::stats::{ErrorKind, Live, Stats, Timer};
use crate::tls::{ClientConfigs, Handshake, TlsConn, TlsMode, TlsSettings};
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use slab::Slab;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Bytes read per `read()` call; one buffer per thread, shared by its connections.
const READ_BYTES: usize = 256 << 10;
/// How long a failed slot waits before it connects again.
const ERROR_BACKOFF: Duration = Duration::from_millis(10);
/// How often timeouts are checked and the loop wakes at the least.
const TICK: Duration = Duration::from_millis(100);
/// How long we wait for the server's close after `+OK` to `QUIT`.
const CLOSE_WAIT: Duration = Duration::from_secs(2);
/// Error details printed per thread (the rest are only counted).
const ERROR_DETAILS_MAX: u32 = 5;

/// Everything a run needs, validated by the CLI.
pub struct RunConfig {
    pub plan: Plan,
    pub addr: SocketAddr,
    pub users: Vec<User>,
    pub corpus: Option<Corpus>,
    pub concurrency: usize,
    pub rate: Option<f64>,
    pub threads: usize,
    pub duration: Duration,
    pub warmup: Duration,
    pub drain: Duration,
    pub timeout: Duration,
    /// Idle: connections per thread that may be between connect and idle at once.
    pub ramp: usize,
    /// Open loop: connections open at once, at most (per run).
    pub max_open: usize,
    pub seed: u64,
    pub progress: bool,
    /// Idle: a file written once every connection is logged in and idling.
    pub ready_file: Option<PathBuf>,
    /// Idle: end the run this long after every connection is idling
    /// (`duration` stays the upper bound).
    pub hold: Option<Duration>,
    /// TLS (`--tls`, `--stls`); `None` for plaintext POP3.
    pub tls: Option<TlsSettings>,
}

/// What a run produced.
pub struct Outcome {
    pub stats: Stats,
    /// Seconds inside the measured window.
    pub measured_s: f64,
    pub idle_peak: u64,
    pub client_cpu_s: f64,
    /// Sessions completed over the whole run (warm-up and drain included).
    pub sessions_total: u64,
}

/// The clock of a run, the same for every thread.
#[derive(Clone, Copy)]
struct Clock {
    measure_from: Instant,
    deadline: Instant,
    hard_stop: Instant,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ConnState {
    /// `connect()` issued, not yet writable.
    Connecting,
    /// The session runs.
    Open,
    /// `QUIT` was answered; waiting for the server to close.
    Closing,
}

struct Conn {
    stream: TcpStream,
    /// The TLS client once TLS started (at connect, or after `STLS`).
    tls: Option<TlsConn>,
    session: Session,
    /// Bytes of an incomplete reply line, offered again with the next read.
    carry: Vec<u8>,
    /// Bytes of `session.out` already written.
    written: usize,
    state: ConnState,
    /// No progress by then is a timeout.
    deadline: Instant,
    /// Counted in the thread's idle total.
    idle: bool,
}

/// What happened to a connection after I/O.
enum Step {
    Keep,
    /// The session completed (QUIT answered).
    Completed,
    /// The connection is finished and can be dropped.
    Close,
    Fail(SessionError),
}

/// Runs the load and returns the merged measurements.
pub fn run(cfg: RunConfig) -> Result<Outcome, String> {
    if cfg.rate.is_none() && cfg.concurrency > cfg.users.len() {
        return Err(format!(
            "--concurrency {} needs at least that many users (have {}): servers lock mailboxes",
            cfg.concurrency,
            cfg.users.len()
        ));
    }
    let threads = cfg.threads.clamp(1, cfg.users.len());
    let start = Instant::now();
    let measure_from = start + cfg.warmup;
    let deadline = measure_from + cfg.duration;
    let clock = Clock {
        measure_from,
        deadline,
        hard_stop: deadline + cfg.drain,
    };
    let cfg = Arc::new(cfg);
    let live = Arc::new(Live::default());
    let cpu_before = crate::stats::process_cpu_s();
    let mut handles = Vec::with_capacity(threads);
    for id in 0..threads {
        let (cfg, live) = (cfg.clone(), live.clone());
        let handle = std::thread::Builder::new()
            .name(format!("load-{id}"))
            .spawn(move || Worker::new(id, threads, &cfg, &live, clock).map(|w| w.run()))
            .map_err(|e| format!("spawning a load thread: {e}"))?;
        handles.push(handle);
    }
    let idle_peak = watch(&cfg, &live, &handles, start, clock);
    let mut stats = Stats::default();
    for handle in handles {
        let worker_stats = handle
            .join()
            .map_err(|_| "a load thread panicked".to_string())??;
        stats.merge(&worker_stats);
    }
    let ended = Instant::now().min(deadline);
    let measured_s = ended.saturating_duration_since(measure_from).as_secs_f64();
    Ok(Outcome {
        stats,
        measured_s,
        idle_peak,
        client_cpu_s: crate::stats::process_cpu_s() - cpu_before,
        sessions_total: Live::get(&live.sessions),
    })
}

/// The main thread while the load runs: progress line, ready file, idle peak.
fn watch<T>(
    cfg: &RunConfig,
    live: &Live,
    handles: &[std::thread::JoinHandle<T>],
    start: Instant,
    clock: Clock,
) -> u64 {
    let mut idle_peak = 0;
    let mut ready_written = false;
    let mut all_idle_at: Option<Instant> = None;
    let mut last = (Instant::now(), 0u64, 0u64);
    let mut next_print = start + Duration::from_secs(1);
    while !handles.iter().all(|h| h.is_finished()) {
        std::thread::sleep(Duration::from_millis(50));
        let idling = Live::get(&live.idling);
        idle_peak = idle_peak.max(idling);
        if let (Some(path), false) = (&cfg.ready_file, ready_written)
            && idling >= cfg.concurrency as u64
        {
            ready_written = std::fs::write(path, format!("{idling}\n")).is_ok();
        }
        if all_idle_at.is_none()
            && cfg.plan.scenario == Scenario::Idle
            && idling >= cfg.concurrency as u64
        {
            all_idle_at = Some(Instant::now());
            eprintln!(
                "idle: {idling} connections logged in after {:.1}s",
                start.elapsed().as_secs_f64()
            );
        }
        let now = Instant::now();
        if let (Some(at), Some(hold)) = (all_idle_at, cfg.hold)
            && now >= at + hold
        {
            live.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        if cfg.progress && now >= next_print {
            next_print += Duration::from_secs(1);
            let (sessions, bytes) = (Live::get(&live.sessions), Live::get(&live.bytes));
            let dt = now.duration_since(last.0).as_secs_f64().max(1e-3);
            let phase = if now < clock.measure_from {
                "warmup"
            } else if now < clock.deadline {
                "run"
            } else {
                "drain"
            };
            eprint!(
                "\r[{:>5.1}s {phase:<6}] sessions {sessions} ({:.0}/s)  msgs {}  {:.1} MB/s  open {}  idle {idling}  errors {}  mismatches {}   ",
                now.duration_since(start).as_secs_f64(),
                (sessions - last.1) as f64 / dt,
                Live::get(&live.messages),
                (bytes - last.2) as f64 / dt / 1e6,
                Live::get(&live.open),
                Live::get(&live.errors),
                Live::get(&live.mismatches),
            );
            last = (now, sessions, bytes);
        }
    }
    if cfg.progress {
        eprintln!();
    }
    idle_peak
}

struct Worker<'a> {
    cfg: &'a RunConfig,
    live: &'a Live,
    clock: Clock,
    poll: Poll,
    conns: Slab<Conn>,
    free_users: VecDeque<usize>,
    /// Closed loop: when each idle slot may start its next session.
    slots: BinaryHeap<Reverse<Instant>>,
    /// Open loop: the schedule, and intended starts not yet started.
    interval: Option<Duration>,
    next_arrival: Instant,
    backlog: VecDeque<Instant>,
    max_open: usize,
    /// Sessions in progress (connecting or open, not closing).
    active: usize,
    idle: usize,
    stopping: bool,
    stats: Stats,
    seen: HashMap<usize, HashSet<Vec<u8>>>,
    rng: Rng,
    scratch: Vec<u8>,
    error_details: u32,
    /// This thread's TLS client configs (with `--tls-resume`, a session
    /// store per user).
    tls: Option<ClientConfigs>,
}

impl<'a> Worker<'a> {
    fn new(
        id: usize,
        threads: usize,
        cfg: &'a RunConfig,
        live: &'a Live,
        clock: Clock,
    ) -> Result<Self, String> {
        let share = |total: usize| total / threads + usize::from(id < total % threads);
        let slots = if cfg.rate.is_some() {
            0
        } else {
            share(cfg.concurrency)
        };
        let now = Instant::now();
        let interval = cfg
            .rate
            .map(|r| Duration::from_secs_f64(threads as f64 / r.max(1e-6)));
        // Stagger the threads' schedules so the aggregate is evenly spaced.
        let offset = interval.map_or(Duration::ZERO, |i| i.mul_f64(id as f64 / threads as f64));
        Ok(Worker {
            cfg,
            live,
            clock,
            poll: Poll::new().map_err(|e| format!("epoll: {e}"))?,
            conns: Slab::with_capacity(slots.max(64)),
            free_users: (id..cfg.users.len()).step_by(threads).collect(),
            slots: (0..slots).map(|_| Reverse(now)).collect(),
            interval,
            next_arrival: now + offset,
            backlog: VecDeque::new(),
            max_open: share(cfg.max_open).max(1),
            active: 0,
            idle: 0,
            stopping: false,
            stats: Stats::default(),
            seen: HashMap::new(),
            rng: Rng::new(cfg.seed ^ (id as u64 + 1).wrapping_mul(0x5851_F42D_4C95_7F2D)),
            scratch: vec![0; READ_BYTES],
            error_details: 0,
            tls: cfg.tls.as_ref().map(ClientConfigs::new).transpose()?,
        })
    }

    fn run(mut self) -> Stats {
        let mut events = Events::with_capacity(1024);
        let mut next_tick = Instant::now() + TICK;
        loop {
            let now = Instant::now();
            let stop_early = self.live.stop.load(std::sync::atomic::Ordering::Relaxed);
            if !self.stopping && (now >= self.clock.deadline || stop_early) {
                self.begin_stop(now);
            }
            if self.stopping && (self.conns.is_empty() || now >= self.clock.hard_stop) {
                break;
            }
            self.launch(now);
            let timeout = self.next_wake(now, next_tick);
            if let Err(e) = self.poll.poll(&mut events, Some(timeout))
                && e.kind() != io::ErrorKind::Interrupted
            {
                eprintln!("loadtest: poll failed: {e}");
                break;
            }
            for event in events.iter() {
                self.on_event(event.token().0);
            }
            let now = Instant::now();
            if now >= next_tick {
                next_tick = now + TICK;
                self.check_timeouts(now);
            }
        }
        self.cut_remaining();
        self.stats
    }

    fn ctx(&mut self, now: Instant) -> (Ctx<'_>, &mut Slab<Conn>, Transport<'_>) {
        let measuring = now >= self.clock.measure_from && now < self.clock.deadline;
        let ctx = Ctx {
            now,
            measuring,
            stopping: self.stopping,
            stats: &mut self.stats,
            live: self.live,
            corpus: self.cfg.corpus.as_ref(),
            users: &self.cfg.users,
            plan: &self.cfg.plan,
            seen: &mut self.seen,
            rng: &mut self.rng,
        };
        let transport = Transport {
            scratch: &mut self.scratch,
            tls: self.cfg.tls.as_ref().zip(self.tls.as_ref()),
        };
        (ctx, &mut self.conns, transport)
    }

    fn next_wake(&self, now: Instant, next_tick: Instant) -> Duration {
        let wake = if self.stopping {
            next_tick.min(self.clock.hard_stop)
        } else if self.interval.is_some() {
            next_tick.min(self.clock.deadline).min(self.next_arrival)
        } else {
            let slot = self.slots.peek().map(|Reverse(at)| *at);
            let can_start = !self.free_users.is_empty() && self.may_connect();
            match slot {
                Some(at) if can_start => next_tick.min(self.clock.deadline).min(at),
                _ => next_tick.min(self.clock.deadline),
            }
        };
        wake.saturating_duration_since(now)
    }

    /// Idle runs ramp up: at most `ramp` connections between connect and idle.
    fn may_connect(&self) -> bool {
        self.cfg.plan.scenario != Scenario::Idle || self.active - self.idle < self.cfg.ramp
    }

    /// Starts what the schedule (open loop) or the free slots (closed loop) ask for.
    fn launch(&mut self, now: Instant) {
        if self.stopping {
            return;
        }
        if let Some(interval) = self.interval {
            while self.next_arrival <= now {
                self.backlog.push_back(self.next_arrival);
                self.next_arrival += interval;
            }
            while self.active < self.max_open
                && !self.backlog.is_empty()
                && !self.free_users.is_empty()
            {
                let intended = self.backlog.pop_front().expect("checked non-empty");
                self.start(intended, now);
            }
            return;
        }
        while let Some(&Reverse(at)) = self.slots.peek() {
            if at > now || self.free_users.is_empty() || !self.may_connect() {
                break;
            }
            self.slots.pop();
            self.start(now, now);
        }
    }

    fn start(&mut self, intended: Instant, now: Instant) {
        let user = self
            .free_users
            .pop_front()
            .expect("caller checked a free user");
        self.active += 1;
        Live::bump(&self.live.open, 1);
        let mut stream = match TcpStream::connect(self.cfg.addr) {
            Ok(stream) => stream,
            Err(e) => return self.fail_unregistered(user, now, e),
        };
        let entry = self.conns.vacant_entry();
        let token = Token(entry.key());
        if let Err(e) = self.poll.registry().register(
            &mut stream,
            token,
            Interest::READABLE | Interest::WRITABLE,
        ) {
            return self.fail_unregistered(user, now, e);
        }
        entry.insert(Conn {
            stream,
            tls: None,
            session: Session::new(user, intended),
            carry: Vec::new(),
            written: 0,
            state: ConnState::Connecting,
            deadline: now + self.cfg.timeout,
            idle: false,
        });
    }

    fn fail_unregistered(&mut self, user: usize, now: Instant, e: io::Error) {
        self.free_users.push_back(user);
        let error = SessionError {
            kind: ErrorKind::Connect,
            detail: format!("connect: {e}"),
        };
        self.count_error(&error);
        self.session_ended(now + ERROR_BACKOFF);
    }

    /// A session stopped being active: its slot may start again at `slot_at`.
    fn session_ended(&mut self, slot_at: Instant) {
        self.active -= 1;
        self.live
            .open
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        if self.interval.is_none() {
            self.slots.push(Reverse(slot_at));
        }
    }

    fn count_error(&mut self, error: &SessionError) {
        self.stats.errors[error.kind as usize] += 1;
        Live::bump(&self.live.errors, 1);
        if self.error_details < ERROR_DETAILS_MAX {
            self.error_details += 1;
            eprintln!("loadtest: {} error: {}", error.kind.name(), error.detail);
        }
    }

    fn on_event(&mut self, key: usize) {
        let now = Instant::now();
        let timeout = self.cfg.timeout;
        let (mut ctx, conns, mut transport) = self.ctx(now);
        let Some(conn) = conns.get_mut(key) else {
            return;
        };
        let step = match conn.state {
            ConnState::Connecting => match connected(&conn.stream) {
                Ok(false) => Step::Keep,
                Ok(true) => {
                    conn.state = ConnState::Open;
                    let _ = conn.stream.set_nodelay(true);
                    match transport.tls {
                        Some((settings, config)) if settings.mode == TlsMode::Implicit => {
                            start_tls(conn, settings, config, now)
                        }
                        _ => Ok(()),
                    }
                    .map_or_else(Step::Fail, |()| {
                        pump(conn, &mut transport, &mut ctx, timeout)
                    })
                }
                Err(e) => Step::Fail(SessionError {
                    kind: ErrorKind::Connect,
                    detail: format!("connect: {e}"),
                }),
            },
            ConnState::Open => pump(conn, &mut transport, &mut ctx, timeout),
            ConnState::Closing => drain_to_eof(conn, transport.scratch),
        };
        self.after_step(key, step, now);
    }

    fn after_step(&mut self, key: usize, step: Step, now: Instant) {
        let timeout = self.cfg.timeout;
        let conn = &mut self.conns[key];
        let became_idle = conn.session.is_idle() && !conn.idle;
        conn.idle |= became_idle;
        if became_idle {
            conn.deadline = self.clock.hard_stop + timeout;
            self.idle += 1;
        }
        match step {
            Step::Keep => {}
            Step::Completed => {
                conn.state = ConnState::Closing;
                conn.deadline = now + CLOSE_WAIT;
                // The server's close may have come with the reply (edge-triggered:
                // no new event would tell us), so read on now.
                let closed = matches!(drain_to_eof(conn, &mut self.scratch), Step::Close);
                self.session_ended(now);
                if closed {
                    self.close(key);
                }
            }
            Step::Close => self.close(key),
            Step::Fail(error) => {
                self.count_error(&error);
                self.abandon(key, now);
                self.session_ended(now + ERROR_BACKOFF);
            }
        }
    }

    /// Drops a connection whose session is over; its user becomes free.
    fn close(&mut self, key: usize) {
        let mut conn = self.conns.remove(key);
        let _ = self.poll.registry().deregister(&mut conn.stream);
        self.free_users.push_back(conn.session.user);
    }

    /// Ends a session early: re-seeds what it stashed, frees the user.
    fn abandon(&mut self, key: usize, now: Instant) {
        if self.conns[key].idle {
            self.idle -= 1;
        }
        let (mut ctx, conns, _) = self.ctx(now);
        conns[key].session.abandon(&mut ctx);
        self.close(key);
    }

    fn begin_stop(&mut self, now: Instant) {
        self.stopping = true;
        let timeout = self.cfg.timeout;
        let keys: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, c)| c.idle)
            .map(|(k, _)| k)
            .collect();
        for key in keys {
            self.idle -= 1;
            let (mut ctx, conns, _) = self.ctx(now);
            let conn = &mut conns[key];
            conn.idle = false;
            conn.deadline = now + timeout;
            conn.session.quit_if_idle(&mut ctx);
            let step = match flush(conn) {
                Ok(()) => Step::Keep,
                Err(e) => Step::Fail(io_error(e)),
            };
            self.after_step(key, step, now);
        }
    }

    fn check_timeouts(&mut self, now: Instant) {
        let late: Vec<(usize, ConnState)> = self
            .conns
            .iter()
            .filter(|(_, c)| c.deadline <= now)
            .map(|(k, c)| (k, c.state))
            .collect();
        for (key, state) in late {
            let step = if state == ConnState::Closing {
                Step::Close
            } else {
                Step::Fail(SessionError {
                    kind: ErrorKind::Timeout,
                    detail: "no reply in time".into(),
                })
            };
            self.after_step(key, step, now);
        }
    }

    /// The drain period is over: whatever still runs is cut and counted.
    fn cut_remaining(&mut self) {
        let now = Instant::now();
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for key in keys {
            if self.conns[key].state != ConnState::Closing {
                self.stats.aborted += 1;
                self.abandon(key, now);
                self.session_ended(now);
            } else {
                self.close(key);
            }
        }
    }
}

/// Whether a non-blocking connect finished; an error if it failed.
fn connected(stream: &TcpStream) -> io::Result<bool> {
    if let Some(e) = stream.take_error()? {
        return Err(e);
    }
    match stream.peer_addr() {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(false),
        Err(e) => Err(e),
    }
}

fn io_error(e: io::Error) -> SessionError {
    SessionError {
        kind: ErrorKind::Io,
        detail: e.to_string(),
    }
}

/// What moves a thread's bytes: its read buffer and, with TLS, the run's
/// settings and the thread's client configs.
struct Transport<'a> {
    scratch: &'a mut Vec<u8>,
    tls: Option<(&'a TlsSettings, &'a ClientConfigs)>,
}

fn tls_error(detail: impl std::fmt::Display) -> SessionError {
    SessionError {
        kind: ErrorKind::Tls,
        detail: format!("TLS: {detail}"),
    }
}

/// Starts the TLS client (the ClientHello goes out with the next flush).
fn start_tls(
    conn: &mut Conn,
    settings: &TlsSettings,
    configs: &ClientConfigs,
    now: Instant,
) -> Result<(), SessionError> {
    let config = configs.for_user(conn.session.user);
    let tls = TlsConn::new(config, settings.server_name.clone(), now).map_err(tls_error)?;
    conn.tls = Some(tls);
    Ok(())
}

/// Reads everything available (edge-triggered: until `WouldBlock`), feeds the
/// session, and writes what it answered.
fn pump(conn: &mut Conn, t: &mut Transport<'_>, ctx: &mut Ctx<'_>, timeout: Duration) -> Step {
    loop {
        let read = if conn.tls.is_some() {
            read_tls(conn, t.scratch, ctx)
        } else {
            read_plain(conn, t, ctx)
        };
        match read {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) => return Step::Fail(e),
        }
        if !conn.idle {
            conn.deadline = ctx.now + timeout;
        }
        if conn.session.is_done() {
            return Step::Completed;
        }
    }
    match flush(conn) {
        Ok(()) => Step::Keep,
        Err(e) => Step::Fail(io_error(e)),
    }
}

/// One `read()` of plaintext POP3 into the session; `Ok(false)` when the
/// socket has nothing more now. After `+OK` to `STLS` it starts TLS.
fn read_plain(
    conn: &mut Conn,
    t: &mut Transport<'_>,
    ctx: &mut Ctx<'_>,
) -> Result<bool, SessionError> {
    let n = match conn.stream.read(t.scratch) {
        Ok(0) => return Err(io_error(io::ErrorKind::UnexpectedEof.into())),
        Ok(n) => n,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
        Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(true),
        Err(e) => return Err(io_error(e)),
    };
    ctx.now = Instant::now();
    feed(conn, &t.scratch[..n], ctx)?;
    if conn.session.wants_tls() {
        if !conn.carry.is_empty() {
            return Err(SessionError {
                kind: ErrorKind::Protocol,
                detail: "bytes after +OK to STLS, before the TLS handshake".into(),
            });
        }
        let (settings, config) = t.tls.ok_or_else(|| tls_error("STLS without settings"))?;
        start_tls(conn, settings, config, ctx.now)?;
        flush(conn).map_err(io_error)?;
    }
    Ok(true)
}

/// One read of ciphertext: decrypts it, notes a finished handshake, and
/// feeds the plaintext to the session; `Ok(false)` when the socket has
/// nothing more now.
fn read_tls(conn: &mut Conn, scratch: &mut [u8], ctx: &mut Ctx<'_>) -> Result<bool, SessionError> {
    let tls = conn.tls.as_mut().expect("caller checked");
    match tls.conn.read_tls(&mut conn.stream) {
        Ok(0) => return Err(io_error(io::ErrorKind::UnexpectedEof.into())),
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
        Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(true),
        Err(e) => return Err(io_error(e)),
    }
    ctx.now = Instant::now();
    tls.conn.process_new_packets().map_err(tls_error)?;
    if let Some((kind, micros)) = tls.finished(ctx.now) {
        if ctx.measuring {
            ctx.stats.record(Timer::Handshake, micros);
            match kind {
                Handshake::Full => ctx.stats.handshakes_full += 1,
                Handshake::Resumed => ctx.stats.handshakes_resumed += 1,
            }
        }
        if conn.session.wants_tls() {
            conn.session.tls_established(ctx);
        }
    }
    loop {
        let tls = conn.tls.as_mut().expect("caller checked");
        let n = match tls.conn.reader().read(scratch) {
            // close_notify: fine after QUIT's reply, an early close before.
            Ok(0) if conn.session.is_done() => break,
            Ok(0) => return Err(io_error(io::ErrorKind::UnexpectedEof.into())),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(io_error(e)),
        };
        feed(conn, &scratch[..n], ctx)?;
    }
    flush(conn).map_err(io_error)?;
    Ok(true)
}

/// Offers new bytes (after any carried partial line) to the session.
fn feed(conn: &mut Conn, input: &[u8], ctx: &mut Ctx<'_>) -> Result<(), SessionError> {
    if conn.carry.is_empty() {
        let used = conn.session.on_bytes(input, ctx)?;
        conn.carry.extend_from_slice(&input[used..]);
    } else {
        conn.carry.extend_from_slice(input);
        let used = conn.session.on_bytes(&conn.carry, ctx)?;
        conn.carry.drain(..used);
    }
    flush(conn).map_err(io_error)
}

/// Writes pending commands (through TLS if on) until done or `WouldBlock`.
fn flush(conn: &mut Conn) -> io::Result<()> {
    if let Some(tls) = &mut conn.tls {
        if !conn.session.out.is_empty() {
            // rustls keeps what it is given (encrypting it once the
            // handshake allows); the socket takes it below.
            tls.conn.writer().write_all(&conn.session.out)?;
            conn.session.out.clear();
        }
        while tls.conn.wants_write() {
            match tls.conn.write_tls(&mut conn.stream) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        return Ok(());
    }
    while conn.written < conn.session.out.len() {
        match conn.stream.write(&conn.session.out[conn.written..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => conn.written += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    conn.session.out.clear();
    conn.written = 0;
    Ok(())
}

/// After `QUIT`: read until the server closes, then the connection can go.
fn drain_to_eof(conn: &mut Conn, scratch: &mut [u8]) -> Step {
    loop {
        match conn.stream.read(scratch) {
            Ok(0) => return Step::Close,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Step::Keep,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Step::Close,
        }
    }
}
