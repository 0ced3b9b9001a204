//! `protocol::Session` driven by a script: the input bytes are read as a
//! sequence of client lines (from a dictionary of POP3 commands, or raw) and
//! engine events (login results with a small in-memory maildrop, bodies
//! opened and sent, commits, output drained). The harness plays a correct
//! engine and keeps its own model of the mailbox, and checks that
//! - nothing panics;
//! - every output is whole CRLF-terminated lines (bodies are the engine's
//!   and are not in it);
//! - no input is taken while an effect is out, none once closed;
//! - `Commit` comes only after a QUIT in TRANSACTION, with exactly the
//!   messages DELE'd since login or the last RSET, and to flag \Seen
//!   exactly those RETR sent since then that were not \Seen and are not
//!   DELE'd; a QUIT with neither closes at once;
//! - RETR/TOP stream only existing, non-deleted messages, and RETR's status
//!   line gives the message's size;
//! - STAT and LIST agree with the model (octets of non-deleted messages).
#![no_main]

use std::collections::BTreeSet;
use std::fmt::Write as _;

use libfuzzer_sys::fuzz_target;
use shardpop::protocol::{
    BodyError, Command, Completion, Effect, Limits, LoginFailure, Maildrop, Offer, Session, Status,
    parse,
};

/// The script: bytes taken from the front; zeros once it runs out.
struct Script<'a>(&'a [u8]);

impl Script<'_> {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let (taken, rest) = self.0.split_at(n.min(self.0.len()));
        self.0 = rest;
        taken.to_vec()
    }
}

/// The maildrop a login opens.
struct MemDrop {
    sizes: Vec<u64>,
    uidls: Vec<String>,
    seen: Vec<bool>,
}

impl Maildrop for MemDrop {
    fn count(&self) -> usize {
        self.sizes.len()
    }
    fn octets(&self, index: usize) -> u64 {
        self.sizes[index]
    }
    fn uidl(&self, index: usize) -> &[u8] {
        self.uidls[index].as_bytes()
    }
    fn seen(&self, index: usize) -> bool {
        self.seen[index]
    }
}

fn maildrop(script: &mut Script<'_>) -> MemDrop {
    // Mostly small; sometimes past a 64-bit word of deletion marks; rarely
    // long enough for a listing to pass the output high-water mark.
    let count = match script.byte() {
        b @ 0..=199 => usize::from(b % 8),
        b @ 200..=254 => 10 + usize::from(b - 200) * 2,
        255 => 700,
    };
    let seed = u64::from(script.byte());
    let scale = if script.byte() & 1 == 1 { 1 << 30 } else { 1 };
    let sizes = (0..count as u64)
        .map(|i| ((i + 1) * (seed * 131 + 7)) % 50_000 * scale)
        .collect();
    let uidls = (0..count).map(|i| format!("uid{i}.{seed}")).collect();
    let seen = (0..count as u64).map(|i| (i + seed) % 3 == 0).collect();
    MemDrop { sizes, uidls, seen }
}

/// What the engine owes the session.
#[derive(Debug, PartialEq)]
enum Pending {
    Nothing,
    Login,
    /// `streaming` after `body_ready(Ok)`.
    Body {
        streaming: bool,
    },
    Commit,
    Closed,
}

/// The harness's own view of the mailbox in TRANSACTION.
#[derive(Default)]
struct Model {
    logged_in: bool,
    sizes: Vec<u64>,
    seen: Vec<bool>,
    deleted: BTreeSet<usize>,
    /// Unseen messages RETR sent since login or the last RSET.
    to_flag: BTreeSet<usize>,
    /// Skipping the rest of an overlong line, as the session does.
    discarding: bool,
    /// The last command the session answered in TRANSACTION.
    last: Option<Last>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Last {
    Quit,
    Body(u32, Option<u64>),
    Other,
}

impl Model {
    /// Follows the lines the session consumed in TRANSACTION.
    fn observe(&mut self, mut region: &[u8], line_bytes_max: usize) {
        while !region.is_empty() {
            if self.discarding {
                match region.iter().position(|&b| b == b'\n') {
                    Some(lf) => {
                        region = &region[lf + 1..];
                        self.discarding = false;
                    }
                    None => return,
                }
                continue;
            }
            match parse(region, line_bytes_max) {
                Ok(Status::Complete((command, used))) => {
                    self.apply(&command);
                    region = &region[used..];
                }
                Ok(Status::Partial) => panic!("session consumed a partial line {region:?}"),
                Err(error) => {
                    self.last = Some(Last::Other);
                    self.discarding = error.resync;
                    region = &region[error.consumed..];
                }
            }
        }
    }

    fn apply(&mut self, command: &Command<'_>) {
        self.last = Some(match *command {
            Command::Quit => Last::Quit,
            Command::Retr(n) => Last::Body(n, None),
            Command::Top(n, lines) => Last::Body(n, Some(lines)),
            Command::Dele(n) => {
                if let Some(i) = self.index(n) {
                    self.deleted.insert(i);
                }
                Last::Other
            }
            Command::Rset => {
                self.deleted.clear();
                self.to_flag.clear();
                Last::Other
            }
            _ => Last::Other,
        });
    }

    /// What QUIT should flag \Seen: unseen and retrieved, not deleted.
    fn flag_at_quit(&self) -> Vec<usize> {
        self.to_flag.difference(&self.deleted).copied().collect()
    }

    fn index(&self, n: u32) -> Option<usize> {
        let i = (n as usize).checked_sub(1)?;
        (i < self.sizes.len()).then_some(i)
    }

    fn visible(&self) -> impl Iterator<Item = (usize, u64)> + '_ {
        (0..self.sizes.len())
            .filter(|i| !self.deleted.contains(i))
            .map(|i| (i, self.sizes[i]))
    }
}

/// Output must be whole lines: every LF after a CR, every CR before an LF.
fn assert_whole_lines(chunk: &[u8]) {
    if chunk.is_empty() {
        return;
    }
    assert!(chunk.ends_with(b"\r\n"), "output ends mid-line: {chunk:?}");
    for (i, &b) in chunk.iter().enumerate() {
        match b {
            b'\n' => assert!(i > 0 && chunk[i - 1] == b'\r', "bare LF: {chunk:?}"),
            b'\r' => assert_eq!(chunk.get(i + 1), Some(&b'\n'), "bare CR: {chunk:?}"),
            _ => {}
        }
    }
}

struct Harness {
    session: Session,
    limits: Limits,
    input: Vec<u8>,
    out: Vec<u8>,
    pending: Pending,
    model: Model,
}

impl Harness {
    fn new(script: &mut Script<'_>) -> Harness {
        // Within what `Config::validate` allows; limits added later keep
        // their defaults.
        #[allow(clippy::needless_update)]
        let limits = Limits {
            line_bytes_max: 16 + usize::from(script.byte()),
            bad_commands_max: 1 + u32::from(script.byte() % 32),
            output_high_water_bytes: 4096 + usize::from(script.byte()) * 64,
            sasl_line_bytes_max: 255 + usize::from(script.byte()) * 16,
            ..Limits::default()
        };
        let flags = script.byte();
        let offer = Offer {
            plaintext_auth: flags & 1 == 0,
            stls: flags & 2 != 0,
            oauth: flags & 8 != 0,
        };
        let challenge = (flags & 4 != 0).then(|| Box::from("<1896.697170952@dbc.mtview.ca.us>"));
        let session = Session::new(limits, offer, challenge);
        let mut out = Vec::new();
        session.greet(&mut out);
        assert_whole_lines(&out);
        Harness {
            session,
            limits,
            input: Vec::new(),
            out,
            pending: Pending::Nothing,
            model: Model::default(),
        }
    }

    /// The engine hands the session what it has received.
    fn pump(&mut self) {
        let waiting = self.session.is_waiting();
        let closed = self.session.is_closed();
        let before = self.out.len();
        let step = self.session.handle_input(&self.input, &mut self.out);
        assert!(step.consumed <= self.input.len());
        if waiting || closed {
            assert_eq!(step.consumed, 0, "input taken while waiting or closed");
            assert_eq!(self.out.len(), before, "output while waiting or closed");
            assert!(step.effect.is_none());
        }
        assert_whole_lines(&self.out[before..]);
        let consumed: Vec<u8> = self.input.drain(..step.consumed).collect();
        if self.model.logged_in {
            self.model.observe(&consumed, self.limits.line_bytes_max);
        }
        if let Some(effect) = step.effect {
            self.effect(effect);
        }
    }

    fn effect(&mut self, effect: Effect) {
        assert_eq!(
            self.pending,
            Pending::Nothing,
            "{effect:?} on top of another"
        );
        self.pending = match effect {
            Effect::Login { .. } => {
                assert!(!self.model.logged_in, "login effect in TRANSACTION");
                Pending::Login
            }
            Effect::SendBody { index, top_lines } => {
                assert!(self.model.logged_in);
                assert!(index < self.model.sizes.len(), "body of message {index}");
                assert!(
                    !self.model.deleted.contains(&index),
                    "body of a deleted message"
                );
                let asked = Last::Body(index as u32 + 1, top_lines);
                assert_eq!(self.model.last, Some(asked));
                Pending::Body { streaming: false }
            }
            Effect::Commit(update) => {
                assert!(self.model.logged_in, "commit before login");
                assert_eq!(self.model.last, Some(Last::Quit), "commit without QUIT");
                let want: Vec<usize> = self.model.deleted.iter().copied().collect();
                assert_eq!(update.deleted, want, "commit of the wrong messages");
                assert_eq!(update.seen, self.model.flag_at_quit(), "wrong \\Seen flags");
                assert!(!update.deleted.is_empty() || !update.seen.is_empty());
                // No EXPIRE here: no retrieval is ever recorded.
                assert!(update.retrieved.is_empty(), "retrievals without EXPIRE");
                assert_eq!(self.session.summary().deleted, update.deleted.len());
                Pending::Commit
            }
            // A SASL step is answered like a login (or, for SCRAM, with a
            // challenge the model does not need).
            Effect::Sasl { .. } => {
                assert!(!self.model.logged_in, "SASL effect in TRANSACTION");
                Pending::Login
            }
            Effect::StartTls => {
                assert!(!self.model.logged_in, "STLS in TRANSACTION");
                self.session.tls_started(shardpop::protocol::Offer {
                    plaintext_auth: true,
                    stls: false,
                    oauth: false,
                });
                Pending::Nothing
            }
            Effect::Close => {
                assert!(self.session.is_closed());
                if self.model.logged_in && self.model.last == Some(Last::Quit) {
                    assert!(self.model.deleted.is_empty(), "QUIT dropped deletions");
                    assert!(self.model.flag_at_quit().is_empty(), "QUIT dropped flags");
                }
                Pending::Closed
            }
        };
    }

    /// The engine finishes what it was asked, as the script says.
    fn complete(&mut self, script: &mut Script<'_>) {
        let choice = script.byte();
        let before = self.out.len();
        match self.pending {
            Pending::Login => {
                self.pending = Pending::Nothing;
                let completion = match choice % 5 {
                    0 => Completion::LoginFailed(LoginFailure::BadCredentials),
                    1 => Completion::LoginFailed(LoginFailure::InUse),
                    2 => Completion::LoginFailed(LoginFailure::Temporary),
                    3 => Completion::LoginFailed(LoginFailure::LoginDelay),
                    _ => {
                        let drop = maildrop(script);
                        self.model = Model {
                            logged_in: true,
                            sizes: drop.sizes.clone(),
                            seen: drop.seen.clone(),
                            ..Model::default()
                        };
                        Completion::LoggedIn(Box::new(drop))
                    }
                };
                assert!(self.session.complete(completion, &mut self.out).is_none());
                assert_eq!(self.session.is_authorized(), self.model.logged_in);
            }
            Pending::Body { streaming: false } => self.body_ready(choice),
            Pending::Body { streaming: true } => {
                self.session.body_sent();
                self.pending = Pending::Nothing;
            }
            Pending::Commit => {
                let effect = self
                    .session
                    .complete(Completion::Committed(choice & 1 == 0), &mut self.out);
                assert!(matches!(effect, Some(Effect::Close)));
                assert!(self.session.is_closed());
                self.pending = Pending::Closed;
            }
            Pending::Nothing | Pending::Closed => {}
        }
        assert_whole_lines(&self.out[before..]);
        if self.pending == Pending::Nothing {
            assert!(!self.session.is_waiting(), "waiting with nothing owed");
        }
    }

    fn body_ready(&mut self, choice: u8) {
        let before = self.out.len();
        let opened = match choice % 4 {
            0 => Err(BodyError::Vanished),
            1 => Err(BodyError::Temporary),
            _ => Ok(()),
        };
        self.session.body_ready(opened, &mut self.out);
        let status = &self.out[before..];
        if opened.is_err() {
            assert!(status.starts_with(b"-ERR "));
            self.pending = Pending::Nothing;
            return;
        }
        if let Some(Last::Body(n, None)) = self.model.last {
            let size = self.model.sizes[n as usize - 1];
            assert_eq!(status, format!("+OK {size} octets\r\n").as_bytes());
            if !self.model.seen[n as usize - 1] {
                self.model.to_flag.insert(n as usize - 1);
            }
        } else {
            assert_eq!(status, b"+OK\r\n");
        }
        self.pending = Pending::Body { streaming: true };
    }

    /// The socket took everything; a paused listing goes on.
    fn drain(&mut self) {
        self.out.clear();
        if self.session.has_pending_output() {
            self.session.continue_output(&mut self.out);
            assert_whole_lines(&self.out);
        }
    }

    /// True when `line` sent now is answered right away, alone.
    fn can_probe(&self) -> bool {
        self.model.logged_in
            && self.pending == Pending::Nothing
            && self.input.is_empty()
            && !self.model.discarding
            && !self.session.has_pending_output()
            && !self.session.is_closed()
    }

    /// STAT or LIST sent alone: the answer must match the model.
    fn probe(&mut self, list: bool) {
        if !self.can_probe() {
            self.input
                .extend_from_slice(if list { b"LIST\r\n" } else { b"STAT\r\n" });
            return self.pump();
        }
        self.out.clear();
        self.input
            .extend_from_slice(if list { b"LIST\r\n" } else { b"STAT\r\n" });
        self.pump();
        let mut answer = std::mem::take(&mut self.out);
        while self.session.has_pending_output() {
            self.session.continue_output(&mut self.out);
            assert_whole_lines(&self.out);
            answer.append(&mut self.out);
        }
        let count = self.model.visible().count();
        let octets: u64 = self.model.visible().map(|(_, size)| size).sum();
        let mut want = if list {
            format!("+OK {count} messages ({octets} octets)\r\n")
        } else {
            format!("+OK {count} {octets}\r\n")
        };
        if list {
            for (i, size) in self.model.visible() {
                write!(want, "{} {size}\r\n", i + 1).unwrap();
            }
            want.push_str(".\r\n");
        }
        assert_eq!(String::from_utf8_lossy(&answer), want);
    }
}

/// One client line from a dictionary of POP3 commands and SASL responses.
fn command_line(script: &mut Script<'_>) -> Vec<u8> {
    let kind = script.byte();
    let n = number(script);
    let m = number(script);
    let text = match kind % 28 {
        0 => "USER alice".to_owned(),
        1 => "PASS secret word".to_owned(),
        2 => "APOP alice c4c9334bac560ecc979e58001b3e22fb".to_owned(),
        3 => "AUTH".to_owned(),
        4 => "AUTH PLAIN".to_owned(),
        5 => "AUTH PLAIN AGFsaWNlAHNlY3JldA==".to_owned(),
        6 => "AUTH PLAIN =".to_owned(),
        7 => "AUTH SCRAM-SHA-256".to_owned(),
        8 => "*".to_owned(),
        9 => "AGFsaWNlAHNlY3JldA==".to_owned(),
        10 => "CAPA".to_owned(),
        11 => "STLS".to_owned(),
        12 | 13 => "QUIT".to_owned(),
        14 => "STAT".to_owned(),
        15 => "LIST".to_owned(),
        16 => format!("LIST {n}"),
        17 | 18 => format!("RETR {n}"),
        19..=21 => format!("DELE {n}"),
        22 => "NOOP".to_owned(),
        23 => "RSET".to_owned(),
        24 => format!("TOP {n} {m}"),
        25 => "UIDL".to_owned(),
        26 => format!("UIDL {n}"),
        _ => format!("RETR {n} {m}"),
    };
    let mut line = text.into_bytes();
    if kind & 0x20 != 0 {
        line.make_ascii_lowercase();
    }
    line.extend_from_slice(if kind & 0x40 != 0 { b"\n" } else { b"\r\n" });
    line
}

/// A message number: mostly small, sometimes at the edges.
fn number(script: &mut Script<'_>) -> String {
    match script.byte() {
        b @ 0..=239 => (b % 12).to_string(),
        240 => "0".to_owned(),
        241 => u32::MAX.to_string(),
        242 => (u64::from(u32::MAX) + 1).to_string(),
        243 => u64::MAX.to_string(),
        244 => "99999999999999999999999".to_owned(),
        245 => "-1".to_owned(),
        246 => "+1".to_owned(),
        b => (usize::from(b) * 3).to_string(),
    }
}

fuzz_target!(|data: &[u8]| {
    let mut script = Script(data);
    let mut harness = Harness::new(&mut script);
    let mut steps = 0;
    // Every step takes at least one byte, so this ends; the bound keeps
    // each input cheap.
    while !script.is_empty() && steps < 4096 {
        steps += 1;
        match script.byte() % 16 {
            0..=5 => {
                let line = command_line(&mut script);
                harness.input.extend_from_slice(&line);
                harness.pump();
            }
            6 => {
                let len = usize::from(script.byte() % 64);
                let raw = script.bytes(len);
                harness.input.extend_from_slice(&raw);
                harness.pump();
            }
            7 => {
                // One line, delivered a byte at a time.
                for b in command_line(&mut script) {
                    harness.input.push(b);
                    harness.pump();
                }
            }
            8..=10 => harness.complete(&mut script),
            11 => harness.drain(),
            12 => harness.probe(false),
            13 => harness.probe(true),
            14 => {
                let before = harness.out.len();
                harness
                    .session
                    .abort(&mut harness.out, "[SYS/TEMP] Server shutting down.");
                assert_whole_lines(&harness.out[before..]);
                assert!(harness.session.is_closed());
                // A timeout or shutdown: whatever the pool still owes is dropped.
                harness.pending = Pending::Closed;
            }
            _ => harness.pump(),
        }
    }
});
