//! One client session as a sans-IO state machine: it takes the server's bytes and
//! the time, and gives commands (in `out`) and measurements. No sockets here, so
//! every scenario's script can be driven from a test.
//!
//! Scripts (one command in flight at a time, as real clients do):
//! - `login`:    greeting, USER, PASS, STAT, QUIT
//! - `download`: … STAT, LIST, UIDL, RETR every message, QUIT
//! - `sync`:     … STAT, UIDL, RETR the messages not seen before, QUIT
//! - `delete`:   … STAT, UIDL, (RETR, DELE) every message, QUIT; then re-seed
//! - `idle`:     … STAT, then nothing until the run stops, then QUIT
//!
//! With `--stls` every script starts: greeting, STLS, (the engine runs the
//! TLS handshake and calls [`Session::tls_established`]), USER, … With
//! `--tls` the engine runs the handshake before the greeting and the
//! session does not know.

use crate::corpus::{Corpus, Stash, User};
use crate::reply::{self, ReplyError, Status, StatusLine};
use crate::stats::{ErrorKind, Live, Stats, Timer};
use crate::unstuff::Unstuffer;
use crate::verify::{BodyCheck, Verdict};
use std::collections::{HashMap, HashSet};
use std::time::Instant;

/// What a session does after logging in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    Login,
    Download,
    Sync,
    Delete,
    Idle,
}

impl Scenario {
    /// The name used on the command line and in the JSON line.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Login => "login",
            Scenario::Download => "download",
            Scenario::Sync => "sync",
            Scenario::Delete => "delete",
            Scenario::Idle => "idle",
        }
    }
}

/// Settings every session of a run shares.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    pub scenario: Scenario,
    /// `sync`: the share of a mailbox that is new at each session (0..=1).
    pub new_share: f64,
    /// Send `STLS` after the greeting and log in over TLS.
    pub stls: bool,
}

/// A small deterministic PRNG (xorshift64*), one per load thread.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed (zero is mapped to a fixed odd constant).
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// A uniform value in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let x = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D);
        (x >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Everything a session may touch besides itself, lent for one call.
pub struct Ctx<'a> {
    pub now: Instant,
    /// `now` is inside the measured window.
    pub measuring: bool,
    /// The run is over: idle sessions quit, nothing new starts.
    pub stopping: bool,
    pub stats: &'a mut Stats,
    pub live: &'a Live,
    pub corpus: Option<&'a Corpus>,
    pub users: &'a [User],
    pub plan: &'a Plan,
    /// `sync`: the UIDLs each user's client has already downloaded.
    pub seen: &'a mut HashMap<usize, HashSet<Vec<u8>>>,
    pub rng: &'a mut Rng,
}

/// Why a session ended early.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionError {
    pub kind: ErrorKind,
    pub detail: String,
}

impl SessionError {
    fn new(kind: ErrorKind, detail: impl Into<String>) -> Self {
        SessionError {
            kind,
            detail: detail.into(),
        }
    }
}

impl From<ReplyError> for SessionError {
    fn from(e: ReplyError) -> Self {
        SessionError::new(ErrorKind::Protocol, e.to_string())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Greeting,
    /// `STLS` sent.
    Stls,
    /// `+OK` to `STLS` received: the engine runs the handshake.
    Handshake,
    User,
    Pass,
    Stat,
    List,
    Uidl,
    Retr,
    Dele,
    Idle,
    Quit,
    Done,
}

/// Where the lines of a multi-line reply go.
#[derive(Debug)]
enum Sink {
    Listing(Vec<u8>),
    Body(BodyCheck),
}

/// The bytes a LIST/UIDL listing may take before the server is called broken.
const LISTING_BYTES_MAX: usize = 16 << 20;

/// One POP3 session.
#[derive(Debug)]
pub struct Session {
    /// Index into the users list.
    pub user: usize,
    /// Commands waiting to be written; the engine drains it.
    pub out: Vec<u8>,
    phase: Phase,
    /// The intended start (open loop) or the connect call (closed loop).
    started: Instant,
    sent_at: Instant,
    login_at: Instant,
    count: u32,
    sizes: Vec<u64>,
    uidls: Vec<Vec<u8>>,
    fetch: Vec<u32>,
    fetch_at: usize,
    current: u32,
    /// The current RETR's UIDL named no file: the files it may be matched
    /// against by content (see `corpus`). `None`: mapped by name, or no corpus.
    fallback: Option<Vec<Vec<u8>>>,
    /// Files already matched by content in this session (each matches once).
    claimed: HashSet<Vec<u8>>,
    /// The file the current body was matched to, by name or by content.
    matched_file: Option<Vec<u8>>,
    multiline: Option<(Unstuffer, Sink)>,
    stashes: Vec<Stash>,
}

impl Session {
    /// A session for `user` that (intends to) start at `started`.
    pub fn new(user: usize, started: Instant) -> Self {
        Session {
            user,
            out: Vec::with_capacity(64),
            phase: Phase::Greeting,
            started,
            sent_at: started,
            login_at: started,
            count: 0,
            sizes: Vec::new(),
            uidls: Vec::new(),
            fetch: Vec::new(),
            fetch_at: 0,
            current: 0,
            fallback: None,
            claimed: HashSet::new(),
            matched_file: None,
            multiline: None,
            stashes: Vec::new(),
        }
    }

    /// `QUIT` was answered: the session is complete.
    pub fn is_done(&self) -> bool {
        self.phase == Phase::Done
    }

    /// `STLS` was accepted: the engine must start the TLS handshake (no
    /// server byte may come before it) and call
    /// [`tls_established`](Self::tls_established) when it is done.
    pub fn wants_tls(&self) -> bool {
        self.phase == Phase::Handshake
    }

    /// The STLS handshake finished: log in.
    pub fn tls_established(&mut self, ctx: &mut Ctx<'_>) {
        assert!(self.wants_tls(), "tls_established only after STLS");
        self.login(ctx);
    }

    fn login(&mut self, ctx: &mut Ctx<'_>) {
        let user = ctx.users[self.user].name.as_bytes();
        self.send(ctx.now, &[b"USER ", user]);
        self.login_at = ctx.now;
        self.phase = Phase::User;
    }

    /// Logged in and holding the connection (idle scenario).
    pub fn is_idle(&self) -> bool {
        self.phase == Phase::Idle
    }

    /// Takes server bytes; returns how many were consumed (the rest is an
    /// incomplete line the caller keeps and offers again with more bytes).
    pub fn on_bytes(&mut self, input: &[u8], ctx: &mut Ctx<'_>) -> Result<usize, SessionError> {
        let mut at = 0;
        while at < input.len() {
            if matches!(self.phase, Phase::Done | Phase::Idle) {
                // Nothing is outstanding: unsolicited bytes are ignored.
                return Ok(input.len());
            }
            if self.phase == Phase::Handshake {
                // Plaintext after `+OK` to STLS would be read as if it came
                // over TLS (the STARTTLS injection of RFC 2595 section 4).
                return Err(SessionError::new(
                    ErrorKind::Protocol,
                    "bytes after +OK to STLS, before the TLS handshake",
                ));
            }
            if let Some((unstuffer, sink)) = &mut self.multiline {
                let progress = unstuffer.feed(&input[at..], |chunk| match sink {
                    Sink::Listing(buf) => buf.extend_from_slice(chunk),
                    Sink::Body(check) => check.feed(chunk),
                });
                at += progress.consumed;
                if let (false, Sink::Listing(buf)) = (progress.done, &*sink)
                    && buf.len() > LISTING_BYTES_MAX
                {
                    return Err(SessionError::new(ErrorKind::Protocol, "listing too long"));
                }
                if progress.done {
                    let (_, sink) = self.multiline.take().expect("checked above");
                    self.on_multiline(sink, ctx)?;
                }
                continue;
            }
            match reply::parse_status(&input[at..])? {
                Status::Partial => break,
                Status::Complete((line, used)) => {
                    at += used;
                    self.on_status(line, ctx)?;
                }
            }
        }
        Ok(at)
    }

    fn send(&mut self, now: Instant, parts: &[&[u8]]) {
        for part in parts {
            self.out.extend_from_slice(part);
        }
        self.out.extend_from_slice(b"\r\n");
        self.sent_at = now;
    }

    fn on_status(&mut self, line: StatusLine<'_>, ctx: &mut Ctx<'_>) -> Result<(), SessionError> {
        if !line.ok {
            let kind = match self.phase {
                Phase::Greeting => ErrorKind::Greeting,
                Phase::Stls => ErrorKind::Tls,
                Phase::User | Phase::Pass if line.text.starts_with(b"[IN-USE]") => ErrorKind::InUse,
                Phase::User | Phase::Pass => ErrorKind::Auth,
                _ => ErrorKind::Command,
            };
            let text = String::from_utf8_lossy(line.text);
            return Err(SessionError::new(
                kind,
                format!("{:?}: -ERR {text}", self.phase),
            ));
        }
        let now = ctx.now;
        match self.phase {
            Phase::Greeting => {
                if ctx.measuring {
                    ctx.stats.record(Timer::Connect, micros(self.started, now));
                }
                if ctx.plan.stls {
                    self.send(now, &[b"STLS"]);
                    self.phase = Phase::Stls;
                } else {
                    self.login(ctx);
                }
            }
            Phase::Stls => self.phase = Phase::Handshake,
            Phase::User => {
                let pass = ctx.users[self.user].pass.as_bytes();
                self.send(now, &[b"PASS ", pass]);
                self.phase = Phase::Pass;
            }
            Phase::Pass => {
                if ctx.measuring {
                    ctx.stats.record(Timer::Login, micros(self.login_at, now));
                }
                self.send(now, &[b"STAT"]);
                self.phase = Phase::Stat;
            }
            Phase::Stat => self.on_stat(line.text, ctx)?,
            Phase::List | Phase::Uidl => {
                self.multiline = Some((Unstuffer::new(), Sink::Listing(Vec::new())));
            }
            Phase::Retr => self.on_retr_status(line.text, ctx),
            Phase::Dele => self.next_message(now),
            Phase::Quit => self.on_quit(ctx),
            Phase::Handshake | Phase::Idle | Phase::Done => {}
        }
        Ok(())
    }

    fn on_stat(&mut self, text: &[u8], ctx: &mut Ctx<'_>) -> Result<(), SessionError> {
        let (count, _octets) = reply::parse_stat(text)
            .ok_or_else(|| SessionError::new(ErrorKind::Protocol, "bad STAT reply"))?;
        self.count = count;
        let now = ctx.now;
        match ctx.plan.scenario {
            Scenario::Login => self.quit(now),
            Scenario::Idle if ctx.stopping => self.quit(now),
            Scenario::Idle => {
                self.phase = Phase::Idle;
                Live::bump(&ctx.live.idling, 1);
            }
            _ if count == 0 => self.quit(now),
            Scenario::Download => {
                self.send(now, &[b"LIST"]);
                self.phase = Phase::List;
            }
            Scenario::Sync | Scenario::Delete => {
                self.send(now, &[b"UIDL"]);
                self.phase = Phase::Uidl;
            }
        }
        Ok(())
    }

    fn quit(&mut self, now: Instant) {
        self.send(now, &[b"QUIT"]);
        self.phase = Phase::Quit;
    }

    /// The run is stopping: an idle session says goodbye.
    pub fn quit_if_idle(&mut self, ctx: &mut Ctx<'_>) {
        if self.phase == Phase::Idle {
            ctx.live
                .idling
                .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            self.quit(ctx.now);
        }
    }

    fn on_multiline(&mut self, sink: Sink, ctx: &mut Ctx<'_>) -> Result<(), SessionError> {
        match (self.phase, sink) {
            (Phase::List, Sink::Listing(body)) => {
                self.sizes = vec![0; self.count as usize];
                for (msg, size) in self.numbered(&body)? {
                    self.sizes[msg] = reply::parse_octets(size)
                        .ok_or_else(|| SessionError::new(ErrorKind::Protocol, "bad LIST size"))?;
                }
                self.send(ctx.now, &[b"UIDL"]);
                self.phase = Phase::Uidl;
            }
            (Phase::Uidl, Sink::Listing(body)) => {
                self.uidls = vec![Vec::new(); self.count as usize];
                for (msg, uidl) in self.numbered(&body)? {
                    self.uidls[msg] = uidl.to_vec();
                }
                self.plan_fetch(ctx);
                self.next_message(ctx.now);
            }
            (Phase::Retr, Sink::Body(check)) => self.on_body(&check, ctx)?,
            _ => unreachable!("a sink is opened only in its phase"),
        }
        Ok(())
    }

    /// Listing entries as zero-based indexes, each checked against STAT's count.
    fn numbered<'b>(&self, body: &'b [u8]) -> Result<Vec<(usize, &'b [u8])>, SessionError> {
        let mut out = Vec::new();
        for (msg, arg) in reply::parse_listing(body)? {
            if msg == 0 || msg > self.count {
                return Err(SessionError::new(
                    ErrorKind::Protocol,
                    "listing number out of range",
                ));
            }
            out.push((msg as usize - 1, arg));
        }
        Ok(out)
    }

    /// Decides which messages to RETR.
    fn plan_fetch(&mut self, ctx: &mut Ctx<'_>) {
        self.fetch_at = 0;
        if ctx.plan.scenario != Scenario::Sync {
            self.fetch = (1..=self.count).collect();
            return;
        }
        let share = ctx.plan.new_share;
        let rng = &mut *ctx.rng;
        let uidls = &self.uidls;
        // First sight of this mailbox: the client already has all but `share` of it.
        let seen = ctx.seen.entry(self.user).or_insert_with(|| {
            uidls
                .iter()
                .filter(|_| rng.unit() >= share)
                .cloned()
                .collect()
        });
        self.fetch = (1..=self.count)
            .filter(|&n| !seen.contains(&self.uidls[n as usize - 1]))
            .collect();
    }

    fn next_message(&mut self, now: Instant) {
        let Some(&msg) = self.fetch.get(self.fetch_at) else {
            self.quit(now);
            return;
        };
        self.fetch_at += 1;
        self.current = msg;
        self.send(now, &[b"RETR ", msg.to_string().as_bytes()]);
        self.phase = Phase::Retr;
    }

    fn current_uidl(&self) -> Option<&[u8]> {
        self.uidls
            .get(self.current as usize - 1)
            .map(Vec::as_slice)
            .filter(|u| !u.is_empty())
    }

    fn on_retr_status(&mut self, text: &[u8], ctx: &mut Ctx<'_>) {
        self.fallback = None;
        let Some(corpus) = ctx.corpus else {
            self.multiline = Some((Unstuffer::new(), Sink::Body(BodyCheck::new(None))));
            return;
        };
        let by_name = self
            .current_uidl()
            .and_then(|uidl| corpus.expected(self.user, uidl));
        let check = match by_name {
            Some(expected) => BodyCheck::new(Some(expected)),
            None => {
                // Content fallback: the files of the announced size not yet matched.
                let listed = self.sizes.get(self.current as usize - 1).copied();
                let octets = reply::parse_octets(text).or(listed);
                let mut candidates = corpus.candidates(self.user, octets);
                candidates.retain(|base| !self.claimed.contains(base));
                let check = match candidates.as_slice() {
                    [only] => BodyCheck::new(corpus.expected(self.user, only)),
                    _ => BodyCheck::hashing(),
                };
                self.fallback = Some(candidates);
                check
            }
        };
        self.multiline = Some((Unstuffer::new(), Sink::Body(check)));
    }

    /// Judges a body whose UIDL named no file: did it match one of the
    /// candidate files by content?
    fn judge_by_content(
        &mut self,
        check: &BodyCheck,
        candidates: Vec<Vec<u8>>,
        ctx: &mut Ctx<'_>,
    ) -> bool {
        let Some(corpus) = ctx.corpus else {
            return false;
        };
        let matched = match (check.hash(), check.verdict()) {
            (None, Verdict::Match) => candidates.into_iter().next(),
            (Some(hash), _) => candidates.into_iter().find(|base| {
                corpus.content_hash(self.user, base) == Some(hash)
                    && corpus
                        .expected(self.user, base)
                        .is_some_and(|e| e.len() == check.len())
            }),
            _ => None,
        };
        let Some(base) = matched else {
            return false;
        };
        self.claimed.insert(base.clone());
        self.matched_file = Some(base);
        true
    }

    fn on_body(&mut self, check: &BodyCheck, ctx: &mut Ctx<'_>) -> Result<(), SessionError> {
        let now = ctx.now;
        let len = check.len() as u64;
        if ctx.measuring {
            ctx.stats.messages += 1;
            ctx.stats.bytes += len;
            ctx.stats.record(Timer::Retr, micros(self.sent_at, now));
        }
        Live::bump(&ctx.live.messages, 1);
        Live::bump(&ctx.live.bytes, len);
        let index = self.current as usize - 1;
        if self.sizes.get(index).is_some_and(|&size| size != len) {
            ctx.stats.size_mismatches += 1;
        }
        self.matched_file = None;
        let verdict = match self.fallback.take() {
            None => {
                self.matched_file = self.current_uidl().map(<[u8]>::to_vec);
                check.verdict()
            }
            Some(candidates) => {
                ctx.stats.unmapped += 1;
                if self.judge_by_content(check, candidates, ctx) {
                    ctx.stats.matched_by_content += 1;
                    Verdict::Match
                } else {
                    Verdict::Mismatch
                }
            }
        };
        match verdict {
            Verdict::Match => ctx.stats.verified += 1,
            Verdict::Mismatch => {
                ctx.stats.mismatches += 1;
                Live::bump(&ctx.live.mismatches, 1);
            }
            Verdict::Unchecked => {}
        }
        match ctx.plan.scenario {
            Scenario::Sync => {
                let uidl = self.uidls[index].clone();
                ctx.seen.entry(self.user).or_default().insert(uidl);
                self.next_message(now);
            }
            Scenario::Delete => self.delete_current(ctx)?,
            _ => self.next_message(now),
        }
        Ok(())
    }

    /// Stashes the message for re-seeding, then sends `DELE`.
    fn delete_current(&mut self, ctx: &mut Ctx<'_>) -> Result<(), SessionError> {
        let corpus = ctx
            .corpus
            .ok_or_else(|| SessionError::new(ErrorKind::Command, "delete needs --mail-location"))?;
        // The file found by UIDL, or by content when the UIDL names no file.
        let file = self.matched_file.take().unwrap_or_default();
        match corpus.stash(self.user, &file) {
            Ok(stash) => self.stashes.push(stash),
            Err(_) => {
                // Without a copy we must not delete: the corpus would shrink.
                ctx.stats.reseed_failures += 1;
                self.next_message(ctx.now);
                return Ok(());
            }
        }
        let msg = self.current.to_string();
        self.send(ctx.now, &[b"DELE ", msg.as_bytes()]);
        self.phase = Phase::Dele;
        Ok(())
    }

    fn on_quit(&mut self, ctx: &mut Ctx<'_>) {
        let now = ctx.now;
        if ctx.measuring {
            ctx.stats.sessions += 1;
            ctx.stats.record(Timer::Session, micros(self.started, now));
        }
        Live::bump(&ctx.live.sessions, 1);
        if ctx.plan.scenario == Scenario::Sync {
            // New mail arrives: the client will see `share` of the box as new.
            let share = ctx.plan.new_share;
            let rng = &mut *ctx.rng;
            if let Some(seen) = ctx.seen.get_mut(&self.user) {
                seen.retain(|_| rng.unit() >= share);
            }
        }
        self.settle(ctx);
        self.phase = Phase::Done;
    }

    /// Puts back what the server deleted; call when the session ends, however.
    pub fn settle(&mut self, ctx: &mut Ctx<'_>) {
        let Some(corpus) = ctx.corpus else { return };
        for stash in self.stashes.drain(..) {
            if corpus.settle(stash).is_err() {
                ctx.stats.reseed_failures += 1;
            }
        }
    }

    /// The session is being dropped early (error, timeout, end of drain).
    pub fn abandon(&mut self, ctx: &mut Ctx<'_>) {
        if self.phase == Phase::Idle {
            ctx.live
                .idling
                .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        }
        self.settle(ctx);
        self.phase = Phase::Done;
    }
}

/// Whole microseconds from `from` to `to` (zero if `to` is earlier).
pub fn micros(from: Instant, to: Instant) -> u64 {
    u64::try_from(to.saturating_duration_since(from).as_micros()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::unstuff::stuff;

    struct Harness {
        stats: Stats,
        live: Live,
        users: Vec<User>,
        plan: Plan,
        seen: HashMap<usize, HashSet<Vec<u8>>>,
        rng: Rng,
    }

    impl Harness {
        fn new(scenario: Scenario) -> Self {
            Harness {
                stats: Stats::default(),
                live: Live::default(),
                users: vec![User {
                    name: "ann".into(),
                    pass: "pw".into(),
                }],
                plan: Plan {
                    scenario,
                    new_share: 0.5,
                    stls: false,
                },
                seen: HashMap::new(),
                rng: Rng::new(7),
            }
        }

        fn ctx(&mut self) -> Ctx<'_> {
            Ctx {
                now: Instant::now(),
                measuring: true,
                stopping: false,
                stats: &mut self.stats,
                live: &self.live,
                corpus: None,
                users: &self.users,
                plan: &self.plan,
                seen: &mut self.seen,
                rng: &mut self.rng,
            }
        }

        /// Feeds `reply` (split in two to exercise partial lines) and returns
        /// the command the session sent next.
        fn step(&mut self, s: &mut Session, reply: &[u8]) -> String {
            let mut ctx = self.ctx();
            let cut = reply.len() / 2;
            let used = s.on_bytes(&reply[..cut], &mut ctx).unwrap();
            let mut rest = reply[used..cut].to_vec();
            rest.extend_from_slice(&reply[cut..]);
            assert_eq!(s.on_bytes(&rest, &mut ctx).unwrap(), rest.len());
            String::from_utf8(std::mem::take(&mut s.out)).unwrap()
        }
    }

    fn login(h: &mut Harness, s: &mut Session, messages: u32) {
        assert_eq!(h.step(s, b"+OK ready\r\n"), "USER ann\r\n");
        assert_eq!(h.step(s, b"+OK\r\n"), "PASS pw\r\n");
        assert_eq!(h.step(s, b"+OK logged in\r\n"), "STAT\r\n");
        let _ = messages;
    }

    #[test]
    fn login_script() {
        let mut h = Harness::new(Scenario::Login);
        let mut s = Session::new(0, Instant::now());
        login(&mut h, &mut s, 0);
        assert_eq!(h.step(&mut s, b"+OK 2 300\r\n"), "QUIT\r\n");
        assert_eq!(h.step(&mut s, b"+OK bye\r\n"), "");
        assert!(s.is_done());
        assert_eq!(h.stats.sessions, 1);
        assert_eq!(h.stats.histogram(Timer::Login).len(), 1);
        assert_eq!(h.stats.histogram(Timer::Connect).len(), 1);
    }

    #[test]
    fn stls_comes_before_login_and_waits_for_the_handshake() {
        let mut h = Harness::new(Scenario::Login);
        h.plan.stls = true;
        let mut s = Session::new(0, Instant::now());
        assert_eq!(h.step(&mut s, b"+OK ready\r\n"), "STLS\r\n");
        assert!(!s.wants_tls());
        assert_eq!(h.step(&mut s, b"+OK begin TLS\r\n"), "");
        assert!(s.wants_tls());
        s.tls_established(&mut h.ctx());
        assert!(!s.wants_tls());
        assert_eq!(
            String::from_utf8(std::mem::take(&mut s.out)).unwrap(),
            "USER ann\r\n"
        );
        assert_eq!(h.step(&mut s, b"+OK\r\n"), "PASS pw\r\n");
        assert_eq!(h.step(&mut s, b"+OK\r\n"), "STAT\r\n");
        assert_eq!(h.step(&mut s, b"+OK 0 0\r\n"), "QUIT\r\n");
        assert_eq!(h.step(&mut s, b"+OK\r\n"), "");
        assert!(s.is_done());
        assert_eq!(h.stats.histogram(Timer::Login).len(), 1);
    }

    #[test]
    fn stls_refused_or_followed_by_plaintext_is_an_error() {
        let mut h = Harness::new(Scenario::Login);
        h.plan.stls = true;
        let mut s = Session::new(0, Instant::now());
        h.step(&mut s, b"+OK ready\r\n");
        let e = s
            .on_bytes(b"-ERR no TLS here\r\n", &mut h.ctx())
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::Tls);

        let mut s = Session::new(0, Instant::now());
        h.step(&mut s, b"+OK ready\r\n");
        let e = s
            .on_bytes(b"+OK begin\r\n+OK injected\r\n", &mut h.ctx())
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::Protocol);
    }

    #[test]
    fn download_script_counts_bytes_and_sizes() {
        let mut h = Harness::new(Scenario::Download);
        let mut s = Session::new(0, Instant::now());
        login(&mut h, &mut s, 2);
        assert_eq!(h.step(&mut s, b"+OK 2 14\r\n"), "LIST\r\n");
        assert_eq!(h.step(&mut s, b"+OK\r\n1 8\r\n2 6\r\n.\r\n"), "UIDL\r\n");
        assert_eq!(h.step(&mut s, b"+OK\r\n1 a\r\n2 b\r\n.\r\n"), "RETR 1\r\n");
        let mut reply = b"+OK 8 octets\r\n".to_vec();
        reply.extend(stuff(b".hello\r\n"));
        assert_eq!(h.step(&mut s, &reply), "RETR 2\r\n");
        let mut reply = b"+OK\r\n".to_vec();
        reply.extend(stuff(b"12345\r\n")); // 7 bytes where LIST said 6
        assert_eq!(h.step(&mut s, &reply), "QUIT\r\n");
        assert_eq!(h.step(&mut s, b"+OK\r\n"), "");
        assert_eq!((h.stats.messages, h.stats.bytes), (2, 15));
        assert_eq!(h.stats.size_mismatches, 1);
        assert_eq!(h.stats.mismatches, 0, "no corpus: nothing verified");
    }

    #[test]
    fn sync_fetches_only_unseen_mail() {
        let mut h = Harness::new(Scenario::Sync);
        let listing: Vec<u8> = {
            let mut l = b"+OK\r\n".to_vec();
            for n in 1..=40 {
                l.extend(format!("{n} uid{n}\r\n").bytes());
            }
            l.extend(b".\r\n");
            l
        };
        let mut fetched = 0;
        for _round in 0..3 {
            let mut s = Session::new(0, Instant::now());
            login(&mut h, &mut s, 40);
            assert_eq!(h.step(&mut s, b"+OK 40 4000\r\n"), "UIDL\r\n");
            let mut next = h.step(&mut s, &listing);
            while next.starts_with("RETR") {
                fetched += 1;
                let mut body = b"+OK\r\n".to_vec();
                body.extend(stuff(b"x\r\n"));
                next = h.step(&mut s, &body);
            }
            assert_eq!(next, "QUIT\r\n");
            h.step(&mut s, b"+OK\r\n");
        }
        // Half of 40 is new each time, give or take the dice.
        assert!((30..=90).contains(&fetched), "fetched {fetched}");
        assert!(h.seen[&0].len() < 40);
    }

    #[test]
    fn idle_waits_then_quits() {
        let mut h = Harness::new(Scenario::Idle);
        let mut s = Session::new(0, Instant::now());
        login(&mut h, &mut s, 0);
        assert_eq!(h.step(&mut s, b"+OK 0 0\r\n"), "");
        assert!(s.is_idle());
        assert_eq!(Live::get(&h.live.idling), 1);
        let mut ctx = h.ctx();
        s.quit_if_idle(&mut ctx);
        assert_eq!(std::mem::take(&mut s.out), b"QUIT\r\n");
        assert_eq!(Live::get(&h.live.idling), 0);
    }

    #[test]
    fn errors_are_classified() {
        let mut h = Harness::new(Scenario::Login);
        let mut s = Session::new(0, Instant::now());
        let mut ctx = h.ctx();
        assert_eq!(
            s.on_bytes(b"-ERR go away\r\n", &mut ctx).unwrap_err().kind,
            ErrorKind::Greeting
        );
        let mut s = Session::new(0, Instant::now());
        s.on_bytes(b"+OK\r\n+OK\r\n", &mut ctx).unwrap();
        let e = s
            .on_bytes(b"-ERR [IN-USE] locked\r\n", &mut ctx)
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::InUse);
        let mut s = Session::new(0, Instant::now());
        s.on_bytes(b"+OK\r\n+OK\r\n", &mut ctx).unwrap();
        let e = s.on_bytes(b"-ERR [AUTH] wrong\r\n", &mut ctx).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Auth);
        let mut s = Session::new(0, Instant::now());
        assert_eq!(
            s.on_bytes(b"* OK imap\r\n", &mut ctx).unwrap_err().kind,
            ErrorKind::Protocol
        );
    }

    #[test]
    fn rng_is_deterministic_and_uniform() {
        let mut a = Rng::new(1);
        let mut b = Rng::new(1);
        let xs: Vec<f64> = (0..1000).map(|_| a.unit()).collect();
        assert!(xs.iter().all(|&x| (0.0..1.0).contains(&x) && x == b.unit()));
        let mean = xs.iter().sum::<f64>() / 1000.0;
        assert!((0.45..0.55).contains(&mean), "mean {mean}");
    }
}
