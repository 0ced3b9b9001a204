//! The RFC 1939 session state machine: AUTHORIZATION → TRANSACTION → UPDATE.
//!
//! Sans-IO: the engine hands in received bytes and completions of pool work;
//! the session writes replies into the engine's send buffer and returns
//! [`Effect`]s for everything it cannot do itself (check a password, stream a
//! body, delete files). It never touches a socket, a file, a thread or a clock.
//!
//! Ordering: a session that returned an effect consumes no more input until
//! the engine says the effect is done ([`Session::complete`] or
//! [`Session::body_sent`]), so pipelined replies always come out in order.

use std::fmt;

use super::capa::{self, Offer, SitePolicy};
use super::command::{self, Command, ErrorKind, MsgNum, Status};
use super::reply::{self, text};
use crate::auth::sasl::BearerMechanism;

/// The mailbox as a session sees it: a snapshot fixed at login.
pub trait Maildrop: Send {
    /// Number of messages (deleted ones included; deletion is session state).
    fn count(&self) -> usize;
    /// RFC 1939 size of message `index` (0-based): octets with CRLF line ends.
    fn octets(&self, index: usize) -> u64;
    /// The unique-id of message `index`: 1–70 bytes in 0x21..=0x7E.
    fn uidl(&self, index: usize) -> &[u8];
    /// The owner's RFC 2449 policy (the site's with the user's overrides),
    /// resolved at login; `None`: the site's ([`Limits::policy`]).
    fn policy(&self) -> Option<SitePolicy> {
        None
    }
    /// The sum of every message's RFC 1939 size (STAT right after login).
    /// A store that keeps it (the mailbox index header) says so here and
    /// spares the session a walk over every message.
    fn total_octets(&self) -> u64 {
        (0..self.count()).map(|i| self.octets(i)).sum()
    }
    /// Whether message `index` already carries the \Seen flag. A store
    /// without flags says yes, and RETR then changes nothing.
    fn seen(&self, _index: usize) -> bool {
        true
    }
}

/// Limits and choices fixed for every session of a listener.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Longest command line, CRLF included (RFC 2449: 255).
    pub line_bytes_max: usize,
    /// Bad commands before the connection is closed.
    pub bad_commands_max: u32,
    /// Commands (of any kind) allowed before a successful login; a client
    /// that keeps talking without logging in is a scanner or a guesser.
    pub commands_before_login_max: u32,
    /// Stop answering pipelined commands while this much output is queued.
    pub output_high_water_bytes: usize,
    /// The site's LOGIN-DELAY and EXPIRE, announced by CAPA before login.
    pub policy: SitePolicy,
    /// Longest SASL response line (RFC 5034 sets no limit; an OAuth token
    /// is 1–2 KiB of base64). At most the engine's receive buffer.
    pub sasl_line_bytes_max: usize,
    /// RETR marks a message \Seen at QUIT, as Dovecot does unless
    /// `pop3_no_flag_updates`: mail fetched by POP3 shows as read in IMAP.
    pub seen_on_retr: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            line_bytes_max: 255,
            bad_commands_max: 20,
            commands_before_login_max: 30,
            output_high_water_bytes: 64 * 1024,
            policy: SitePolicy::default(),
            sasl_line_bytes_max: 4096,
            seen_on_retr: true,
        }
    }
}

/// Credentials the engine must check on the worker pool.
pub enum Credential {
    /// USER/PASS or SASL PLAIN.
    Password(Vec<u8>),
    /// APOP: the digest the client sent over the greeting's challenge.
    Apop {
        /// The `<...>` timestamp from the greeting.
        challenge: Box<str>,
        /// The client's hex MD5.
        digest: Vec<u8>,
    },
    /// OAUTHBEARER or XOAUTH2: an access token, checked with
    /// `Passdb::verify_bearer`. The login's `user` is the name the client
    /// claimed (empty when it named nobody): the token names the user.
    Bearer(Vec<u8>),
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credential::Password(_) => f.write_str("Password(<redacted>)"),
            Credential::Apop { .. } => f.write_str("Apop(<redacted>)"),
            Credential::Bearer(_) => f.write_str("Bearer(<redacted>)"),
        }
    }
}

/// Work the engine does for the session.
#[derive(Debug)]
pub enum Effect {
    /// Check the credentials and open the maildrop; answer with
    /// [`Completion::LoggedIn`] or [`Completion::LoginFailed`].
    Login {
        /// The user name as sent (not yet validated).
        user: Vec<u8>,
        /// What proves it.
        credential: Credential,
    },
    /// Open message `index` (0-based), then answer with
    /// [`Session::body_ready`], stream the body and its terminator, and say
    /// [`Session::body_sent`].
    SendBody {
        /// The message.
        index: usize,
        /// `None` for RETR; `Some(n)` for TOP with n body lines.
        top_lines: Option<u64>,
    },
    /// UPDATE state: remove the marked messages and those the policy
    /// expires, record the retrievals, then answer with
    /// [`Completion::Committed`].
    Commit(Update),
    /// A SASL response for the mechanism the engine holds (SCRAM-SHA-256):
    /// `first` for the client-first-message. Answer with
    /// [`Completion::SaslChallenge`], or with a login result.
    Sasl {
        /// The exchange starts with this response.
        first: bool,
        /// The decoded response.
        data: Vec<u8>,
    },
    /// STLS was accepted: flush the `+OK`, discard any input received after
    /// the STLS line, start TLS, then call [`Session::tls_started`].
    StartTls,
    /// Flush what is queued, then close the connection.
    Close,
}

/// Why a login did not succeed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoginFailure {
    /// Unknown user or wrong password: the same answer for both.
    BadCredentials,
    /// Another session holds the mailbox.
    InUse,
    /// The store or passdb failed; the cause is in the engine's log.
    Temporary,
    /// RFC 2449 §8.1.1: the user logged in less than their LOGIN-DELAY ago
    /// (answered only after the credentials were proven).
    LoginDelay,
}

/// What QUIT in TRANSACTION hands to the UPDATE state (0-based indices,
/// ascending).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Update {
    /// Marked with DELE.
    pub deleted: Vec<usize>,
    /// Retrieved with RETR this session and not marked: their first
    /// retrieval time is recorded when the user's policy expires messages
    /// (RFC 2449 §6.7); messages only seen with TOP do not count.
    pub retrieved: Vec<usize>,
    /// Retrieved with RETR since login or the last RSET, not marked, and
    /// not \Seen yet: they get the flag (Dovecot's rule; TOP does not).
    pub seen: Vec<usize>,
}

/// Why a body could not be opened for RETR or TOP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyError {
    /// The file is gone (another process removed it since login).
    Vanished,
    /// Any other failure; the cause is in the engine's log.
    Temporary,
}

/// Results of pool work, fed back through [`Session::complete`].
pub enum Completion {
    /// The login succeeded and this is the snapshot.
    LoggedIn(Box<dyn Maildrop>),
    /// The login failed.
    LoginFailed(LoginFailure),
    /// The UPDATE state finished; `false` when some files could not be removed.
    Committed(bool),
    /// The SASL mechanism's next challenge (sent as `+ base64`).
    SaslChallenge(Vec<u8>),
}

impl fmt::Debug for Completion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Completion::LoggedIn(m) => write!(f, "LoggedIn({} messages)", m.count()),
            Completion::LoginFailed(why) => write!(f, "LoginFailed({why:?})"),
            Completion::Committed(ok) => write!(f, "Committed({ok})"),
            Completion::SaslChallenge(_) => f.write_str("SaslChallenge"),
        }
    }
}

/// What one call to [`Session::handle_input`] did.
#[derive(Debug)]
pub struct Step {
    /// Input bytes used; the engine drops them from its buffer.
    pub consumed: usize,
    /// Work to do before more input is handled.
    pub effect: Option<Effect>,
}

/// Counters for the logout log line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Messages in the maildrop at login.
    pub messages: usize,
    /// RETR and TOP bodies started.
    pub bodies_sent: u64,
    /// Messages removed at QUIT.
    pub deleted: usize,
}

/// A session.
pub struct Session {
    state: State,
    limits: Limits,
    offer: Offer,
    apop_challenge: Option<Box<str>>,
    bad_commands: u32,
    commands_before_login: u32,
    /// Dropping the rest of an overlong line, through its LF.
    discarding: bool,
    /// The client sent UTF8 (RFC 6856): replies may carry UTF-8.
    utf8: bool,
    /// An effect is out; input waits.
    waiting: bool,
    /// The session ended with QUIT answered (not for bad commands or an
    /// error): the engine may close at once instead of lingering.
    quit_answered: bool,
    summary: Summary,
}

enum State {
    Authorization(Authorization),
    Transaction(Transaction),
    /// QUIT was received in TRANSACTION and deletions are being committed.
    Update,
    /// STLS was answered `+OK`: until the engine reports the TLS layer is
    /// on ([`Session::tls_started`]), nothing is read as a command, so
    /// plaintext sent after STLS can never act on the session (RFC 2595 §4).
    StartingTls,
    /// The session is over; only flushing remains.
    Closed,
}

#[derive(Default)]
struct Authorization {
    /// The name from USER, waiting for PASS.
    user: Option<Vec<u8>>,
    /// A SASL exchange is under way: the next line is a response to it.
    sasl: Option<Sasl>,
    /// An OAuth login is out: a refused token is answered with the
    /// mechanism's error challenge, not at once with `-ERR`.
    bearer: Option<BearerMechanism>,
}

/// The SASL mechanism in progress (RFC 5034).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sasl {
    /// RFC 4616; the one response carries everything.
    Plain,
    /// RFC 5802/7677; the engine holds the mechanism's state. `first`: the
    /// next response is the client-first-message.
    Scram { first: bool },
    /// OAUTHBEARER or XOAUTH2: the one response carries the token.
    Bearer(BearerMechanism),
    /// The token was refused and the error challenge sent: the client's
    /// dummy response ends the exchange with `-ERR` (RFC 7628 §3.2.3).
    BearerRefused,
}

struct Transaction {
    maildrop: Box<dyn Maildrop>,
    /// The user's policy (CAPA in TRANSACTION, QUIT's UPDATE).
    policy: SitePolicy,
    deleted: Bitset,
    /// Messages whose body RETR started sending.
    retrieved: Bitset,
    /// Of those, the ones to flag \Seen at QUIT (cleared by RSET).
    to_flag_seen: Bitset,
    deleted_count: usize,
    deleted_octets: u64,
    total_octets: u64,
    /// A LIST or UIDL listing that did not fit under the high-water mark.
    listing: Option<Listing>,
    /// The RETR/TOP the engine is opening or streaming: index, TOP lines.
    pending_body: Option<(usize, Option<u64>)>,
}

#[derive(Clone, Copy)]
struct Listing {
    kind: ListingKind,
    next: usize,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum ListingKind {
    List,
    Uidl,
}

impl Session {
    /// A new session in AUTHORIZATION. `apop_challenge` is this
    /// connection's `<...>` timestamp when APOP is enabled.
    pub fn new(limits: Limits, offer: Offer, apop_challenge: Option<Box<str>>) -> Session {
        Session {
            state: State::Authorization(Authorization::default()),
            limits,
            offer,
            apop_challenge,
            bad_commands: 0,
            commands_before_login: 0,
            discarding: false,
            utf8: false,
            waiting: false,
            quit_answered: false,
            summary: Summary::default(),
        }
    }

    /// Writes the greeting (with the APOP challenge when enabled).
    pub fn greet(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"+OK shardpop ready.");
        if let Some(challenge) = &self.apop_challenge {
            out.push(b' ');
            out.extend_from_slice(challenge.as_bytes());
        }
        out.extend_from_slice(b"\r\n");
    }

    /// TLS is now on (RFC 2595 §4): forget what the client said before it
    /// (a USER name, a half-done SASL exchange) and offer what the secured
    /// connection allows.
    pub fn tls_started(&mut self, offer: Offer) {
        self.offer = offer;
        if let State::Authorization(_) | State::StartingTls = self.state {
            self.state = State::Authorization(Authorization::default());
        }
        self.discarding = false;
    }

    /// True from the `+OK` to STLS until [`Session::tls_started`].
    pub fn is_starting_tls(&self) -> bool {
        matches!(self.state, State::StartingTls)
    }

    /// True while an effect is out and input must wait.
    pub fn is_waiting(&self) -> bool {
        self.waiting
    }

    /// True once the session has ended and only flushing remains.
    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed)
    }

    /// True once QUIT was answered: the client asked for the end and has
    /// nothing more to say.
    pub fn quit_answered(&self) -> bool {
        self.quit_answered
    }

    /// True once the client sent UTF8 (RFC 6856).
    pub fn is_utf8(&self) -> bool {
        self.utf8
    }

    /// True in TRANSACTION (for the engine's choice of timeout).
    pub fn is_authorized(&self) -> bool {
        matches!(self.state, State::Transaction(_) | State::Update)
    }

    /// True when a listing is half written and more output is due as soon
    /// as the send buffer drains, even without new input.
    pub fn has_pending_output(&self) -> bool {
        matches!(&self.state, State::Transaction(t) if t.listing.is_some())
    }

    /// Counters for the logout line.
    pub fn summary(&self) -> Summary {
        self.summary
    }

    /// Answers every complete command in `input`, in order, until an effect
    /// is needed, the output passes the high-water mark, or input runs out.
    pub fn handle_input(&mut self, input: &[u8], out: &mut Vec<u8>) -> Step {
        let mut consumed = 0;
        while !self.waiting && !self.is_closed() && !self.is_starting_tls() {
            if let State::Transaction(t) = &mut self.state
                && t.listing.is_some()
            {
                t.continue_listing(out, self.limits.output_high_water_bytes);
            }
            if self.has_pending_output() || out.len() >= self.limits.output_high_water_bytes {
                break;
            }
            let rest = &input[consumed..];
            if self.discarding {
                match memchr::memchr(b'\n', rest) {
                    Some(lf) => {
                        consumed += lf + 1;
                        self.discarding = false;
                        continue;
                    }
                    None => {
                        consumed = input.len();
                        break;
                    }
                }
            }
            if self.sasl_pending() {
                match self.sasl_response(rest, out) {
                    Some((used, effect)) => {
                        consumed += used;
                        if effect.is_some() {
                            return Step { consumed, effect };
                        }
                        continue;
                    }
                    None => break,
                }
            }
            match command::parse(rest, self.limits.line_bytes_max) {
                Ok(Status::Partial) => break,
                Ok(Status::Complete((cmd, used))) => {
                    consumed += used;
                    let effect = self.dispatch(cmd, out);
                    if effect.is_some() {
                        return Step { consumed, effect };
                    }
                }
                Err(e) => {
                    consumed += e.consumed;
                    self.discarding = e.resync;
                    if let Some(effect) = self.bad_command(e.kind.reply_text(), out) {
                        return Step {
                            consumed,
                            effect: Some(effect),
                        };
                    }
                }
            }
        }
        Step {
            consumed,
            effect: None,
        }
    }

    /// Resumes a listing that stopped at the high-water mark.
    pub fn continue_output(&mut self, out: &mut Vec<u8>) {
        if let State::Transaction(t) = &mut self.state {
            t.continue_listing(out, self.limits.output_high_water_bytes);
        }
    }

    /// The engine has opened the body it was asked for (`Ok`) or could not
    /// (`Err`): writes the status line. After `Ok` the engine streams the
    /// body and then calls [`Session::body_sent`]; after `Err` input resumes.
    pub fn body_ready(&mut self, opened: Result<(), BodyError>, out: &mut Vec<u8>) {
        let State::Transaction(t) = &mut self.state else {
            return;
        };
        match (opened, t.pending_body) {
            (Ok(()), Some((index, None))) => {
                t.retrieved.set(index);
                if self.limits.seen_on_retr && !t.maildrop.seen(index) {
                    t.to_flag_seen.set(index);
                }
                out.extend_from_slice(b"+OK ");
                reply::push_u64(out, t.maildrop.octets(index));
                out.extend_from_slice(b" octets\r\n");
                self.summary.bodies_sent += 1;
            }
            (Ok(()), Some((_, Some(_)))) => {
                reply::ok(out, "");
                self.summary.bodies_sent += 1;
            }
            (Err(BodyError::Vanished), _) => {
                reply::err(out, "Message was removed by another process.");
                self.body_sent();
            }
            (Err(BodyError::Temporary), _) | (_, None) => {
                reply::err(out, text::SYS_TEMP);
                self.body_sent();
            }
        }
    }

    /// The engine finished streaming the body it was asked for.
    pub fn body_sent(&mut self) {
        if let State::Transaction(t) = &mut self.state {
            t.pending_body = None;
        }
        self.waiting = false;
    }

    /// Feeds back the result of pool work.
    pub fn complete(&mut self, completion: Completion, out: &mut Vec<u8>) -> Option<Effect> {
        self.waiting = false;
        match (completion, &self.state) {
            (Completion::LoggedIn(maildrop), State::Authorization(_)) => {
                let count = maildrop.count();
                let total_octets = maildrop.total_octets();
                self.summary.messages = count;
                self.state = State::Transaction(Transaction {
                    policy: maildrop.policy().unwrap_or(self.limits.policy),
                    deleted: Bitset::new(count),
                    retrieved: Bitset::new(count),
                    to_flag_seen: Bitset::new(count),
                    maildrop,
                    deleted_count: 0,
                    deleted_octets: 0,
                    total_octets,
                    listing: None,
                    pending_body: None,
                });
                reply::ok(out, "Logged in.");
                None
            }
            (Completion::LoginFailed(LoginFailure::BadCredentials), State::Authorization(a))
                if a.bearer.is_some() =>
            {
                let mechanism = a.bearer.expect("checked above");
                self.bearer_refused(mechanism, out);
                None
            }
            (Completion::LoginFailed(why), State::Authorization(_)) => {
                self.end_sasl();
                if let State::Authorization(a) = &mut self.state {
                    a.bearer = None;
                }
                reply::err(
                    out,
                    match why {
                        LoginFailure::BadCredentials => text::AUTH_FAILED,
                        LoginFailure::InUse => text::IN_USE,
                        LoginFailure::Temporary => text::SYS_TEMP,
                        LoginFailure::LoginDelay => text::LOGIN_DELAY,
                    },
                );
                None
            }
            (Completion::SaslChallenge(data), State::Authorization(a)) if a.sasl.is_some() => {
                use base64::Engine as _;
                out.extend_from_slice(b"+ ");
                out.extend_from_slice(
                    base64::engine::general_purpose::STANDARD
                        .encode(data)
                        .as_bytes(),
                );
                out.extend_from_slice(b"\r\n");
                None
            }
            (Completion::Committed(all_removed), State::Update) => {
                if all_removed && self.summary.deleted == 0 {
                    reply::ok(out, "Logging out.");
                } else if all_removed {
                    reply::ok(out, "Logging out, messages deleted.");
                } else {
                    reply::err(out, "[SYS/TEMP] Some deleted messages were not removed.");
                }
                self.state = State::Closed;
                self.quit_answered = true;
                Some(Effect::Close)
            }
            (completion, _) => {
                // An engine bug, not a peer fault: refuse loudly in tests,
                // end the session politely in production.
                debug_assert!(false, "completion {completion:?} in the wrong state");
                reply::err(out, text::SYS_TEMP);
                self.state = State::Closed;
                Some(Effect::Close)
            }
        }
    }

    /// Ends the session from outside (timeout, shutdown) with a last line.
    pub fn abort(&mut self, out: &mut Vec<u8>, why: &str) {
        if !self.is_closed() {
            reply::err(out, why);
            self.state = State::Closed;
        }
    }

    /// RFC 7628 §3.2.2: the error challenge; the exchange stays open for
    /// the client's dummy response.
    fn bearer_refused(&mut self, mechanism: BearerMechanism, out: &mut Vec<u8>) {
        use base64::Engine as _;
        out.extend_from_slice(b"+ ");
        out.extend_from_slice(
            base64::engine::general_purpose::STANDARD
                .encode(mechanism.error_challenge())
                .as_bytes(),
        );
        out.extend_from_slice(b"\r\n");
        if let State::Authorization(a) = &mut self.state {
            a.sasl = Some(Sasl::BearerRefused);
            a.bearer = None;
        }
    }

    fn sasl_pending(&self) -> bool {
        matches!(&self.state, State::Authorization(a) if a.sasl.is_some())
    }

    /// The line after `+ `: a base64 PLAIN response or `*` to cancel.
    /// `None` when the line is not complete yet.
    fn sasl_response(&mut self, rest: &[u8], out: &mut Vec<u8>) -> Option<(usize, Option<Effect>)> {
        let line_max = self
            .limits
            .sasl_line_bytes_max
            .max(self.limits.line_bytes_max);
        let window = &rest[..rest.len().min(line_max)];
        let Some(lf) = memchr::memchr(b'\n', window) else {
            if rest.len() >= line_max {
                self.discarding = true;
                self.end_sasl();
                reply::err(out, ErrorKind::LineTooLong.reply_text());
                return Some((rest.len(), None));
            }
            return None;
        };
        let line = rest[..lf].strip_suffix(b"\r").unwrap_or(&rest[..lf]);
        let mechanism = self.end_sasl();
        if mechanism == Some(Sasl::BearerRefused) {
            // Whatever the client answers (%x01, an empty line, `*`).
            reply::err(out, text::AUTH_FAILED);
            return Some((lf + 1, None));
        }
        if line == b"*" {
            reply::err(out, "Authentication cancelled.");
            return Some((lf + 1, None));
        }
        let effect = match mechanism {
            Some(Sasl::Scram { first }) => self.sasl_scram(line, first, out),
            Some(Sasl::Bearer(m)) => self.sasl_bearer(m, line, out),
            _ => self.sasl_plain(line, out),
        };
        Some((lf + 1, effect))
    }

    /// Ends the exchange in progress, returning its mechanism.
    fn end_sasl(&mut self) -> Option<Sasl> {
        match &mut self.state {
            State::Authorization(a) => a.sasl.take(),
            _ => None,
        }
    }

    /// A SCRAM response: decoded and handed to the engine, which holds the
    /// mechanism and answers with [`Completion::SaslChallenge`] or a login
    /// result. The exchange stays open meanwhile.
    fn sasl_scram(&mut self, b64: &[u8], first: bool, out: &mut Vec<u8>) -> Option<Effect> {
        use base64::Engine as _;
        let Ok(data) = base64::engine::general_purpose::STANDARD.decode(b64) else {
            reply::err(out, "Invalid base64 data.");
            return None;
        };
        if let State::Authorization(a) = &mut self.state {
            a.sasl = Some(Sasl::Scram { first: false });
        }
        self.waiting = true;
        Some(Effect::Sasl { first, data })
    }

    /// An OAUTHBEARER or XOAUTH2 response, base64: the token goes to the
    /// pool with the name the client claimed. A response that does not
    /// parse gets the error challenge, as a refused token does.
    fn sasl_bearer(
        &mut self,
        mechanism: BearerMechanism,
        b64: &[u8],
        out: &mut Vec<u8>,
    ) -> Option<Effect> {
        use base64::Engine as _;
        let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(b64) else {
            reply::err(out, "Invalid base64 data.");
            return None;
        };
        let response = match mechanism.parse(&decoded) {
            Ok(response) => response,
            Err(_) => {
                self.bearer_refused(mechanism, out);
                return None;
            }
        };
        let effect = Effect::Login {
            user: response.user.into_bytes(),
            credential: Credential::Bearer(response.token.to_vec()),
        };
        if let State::Authorization(a) = &mut self.state {
            a.bearer = Some(mechanism);
        }
        self.waiting = true;
        Some(effect)
    }

    /// RFC 4616: `authzid NUL authcid NUL passwd`, base64. An authzid other
    /// than the authcid would be a master-user login, which is not offered.
    fn sasl_plain(&mut self, b64: &[u8], out: &mut Vec<u8>) -> Option<Effect> {
        use base64::Engine as _;
        let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(b64) else {
            reply::err(out, "Invalid base64 data.");
            return None;
        };
        let mut parts = decoded.splitn(3, |&b| b == 0);
        let (Some(authz), Some(authc), Some(pass)) = (parts.next(), parts.next(), parts.next())
        else {
            reply::err(out, "Invalid SASL PLAIN response.");
            return None;
        };
        if !authz.is_empty() && authz != authc {
            reply::err(out, text::AUTH_FAILED);
            return None;
        }
        self.waiting = true;
        Some(Effect::Login {
            user: authc.to_vec(),
            credential: Credential::Password(pass.to_vec()),
        })
    }

    fn bad_command(&mut self, why: &str, out: &mut Vec<u8>) -> Option<Effect> {
        self.bad_commands += 1;
        if self.bad_commands >= self.limits.bad_commands_max {
            reply::err(out, text::TOO_MANY_BAD);
            self.state = State::Closed;
            return Some(Effect::Close);
        }
        reply::err(out, why);
        None
    }

    fn dispatch(&mut self, cmd: Command<'_>, out: &mut Vec<u8>) -> Option<Effect> {
        if let State::Authorization(_) = self.state {
            self.commands_before_login += 1;
            if self.commands_before_login > self.limits.commands_before_login_max {
                reply::err(out, text::TOO_MANY_BEFORE_LOGIN);
                self.state = State::Closed;
                return Some(Effect::Close);
            }
        }
        if let Command::Capa = cmd {
            let policy = match &self.state {
                State::Transaction(t) => &t.policy,
                _ => &self.limits.policy,
            };
            capa::write(out, self.offer, self.is_authorized(), policy);
            return None;
        }
        match &mut self.state {
            State::Authorization(_) => self.authorization(cmd, out),
            State::Transaction(_) => self.transaction(cmd, out),
            // Input waits while UPDATE runs or TLS starts, and nothing is
            // read once closed.
            State::Update | State::StartingTls | State::Closed => None,
        }
    }

    fn authorization(&mut self, cmd: Command<'_>, out: &mut Vec<u8>) -> Option<Effect> {
        let State::Authorization(auth) = &mut self.state else {
            return None;
        };
        let plaintext = self.offer.plaintext_auth;
        match cmd {
            Command::User(_)
            | Command::Pass(_)
            | Command::Auth {
                mechanism: Some(b"PLAIN" | b"plain" | b"Plain"),
                ..
            } if !plaintext => {
                reply::err(
                    out,
                    "[AUTH] Plaintext authentication disallowed on non-secure connections.",
                );
                None
            }
            Command::User(name) => {
                auth.user = Some(name.to_vec());
                reply::ok(out, "");
                None
            }
            Command::Pass(password) => match auth.user.take() {
                Some(user) => {
                    self.waiting = true;
                    Some(Effect::Login {
                        user,
                        credential: Credential::Password(password.to_vec()),
                    })
                }
                None => {
                    reply::err(out, "No username given.");
                    None
                }
            },
            Command::Apop { name, digest } => match &self.apop_challenge {
                Some(challenge) => {
                    auth.user = None;
                    self.waiting = true;
                    Some(Effect::Login {
                        user: name.to_vec(),
                        credential: Credential::Apop {
                            challenge: challenge.clone(),
                            digest: digest.to_vec(),
                        },
                    })
                }
                None => {
                    reply::err(out, "APOP is not enabled.");
                    None
                }
            },
            Command::Auth {
                mechanism: None, ..
            } => {
                out.extend_from_slice(b"+OK\r\n");
                for mechanism in self.offer.mechanisms() {
                    out.extend_from_slice(mechanism.as_bytes());
                    out.extend_from_slice(b"\r\n");
                }
                out.extend_from_slice(reply::END);
                None
            }
            Command::Auth {
                mechanism: Some(mech),
                initial,
            } if bearer_mechanism(mech).is_some() => {
                let mechanism = bearer_mechanism(mech).expect("checked above");
                if !self.offer.oauth {
                    reply::err(out, "Unsupported authentication mechanism.");
                    return None;
                }
                if !plaintext {
                    reply::err(
                        out,
                        "[AUTH] Plaintext authentication disallowed on non-secure connections.",
                    );
                    return None;
                }
                auth.user = None;
                match initial {
                    Some(b64) => self.sasl_bearer(mechanism, b64, out),
                    None => {
                        auth.sasl = Some(Sasl::Bearer(mechanism));
                        out.extend_from_slice(b"+ \r\n");
                        None
                    }
                }
            }
            Command::Auth {
                mechanism: Some(mech),
                initial,
            } if mech.eq_ignore_ascii_case(b"SCRAM-SHA-256") => {
                auth.user = None;
                match initial {
                    Some(b64) => self.sasl_scram(b64, true, out),
                    None => {
                        auth.sasl = Some(Sasl::Scram { first: true });
                        out.extend_from_slice(b"+ \r\n");
                        None
                    }
                }
            }
            Command::Auth {
                mechanism: Some(mech),
                initial,
            } => {
                if !mech.eq_ignore_ascii_case(b"PLAIN") {
                    reply::err(out, "Unsupported authentication mechanism.");
                    return None;
                }
                auth.user = None;
                match initial {
                    // RFC 5034 §4: "=" is an empty initial response.
                    Some(b"=") => self.sasl_plain(b"", out),
                    Some(b64) => self.sasl_plain(b64, out),
                    None => {
                        auth.sasl = Some(Sasl::Plain);
                        out.extend_from_slice(b"+ \r\n");
                        None
                    }
                }
            }
            Command::Quit => {
                reply::ok(out, "Logging out.");
                self.state = State::Closed;
                self.quit_answered = true;
                Some(Effect::Close)
            }
            Command::Stls if self.offer.stls => {
                reply::ok(out, "Begin TLS negotiation now.");
                self.state = State::StartingTls;
                Some(Effect::StartTls)
            }
            Command::Stls => {
                reply::err(out, "TLS is not available.");
                None
            }
            Command::Utf8 => {
                self.utf8 = true;
                reply::ok(out, "UTF8 enabled.");
                None
            }
            Command::Lang(range) => {
                lang(range, out);
                None
            }
            _ => self.bad_command(text::WRONG_STATE, out),
        }
    }

    fn transaction(&mut self, cmd: Command<'_>, out: &mut Vec<u8>) -> Option<Effect> {
        let State::Transaction(t) = &mut self.state else {
            return None;
        };
        match cmd {
            Command::Stat => {
                reply::pair_line(
                    out,
                    b"+OK ",
                    (t.maildrop.count() - t.deleted_count) as u64,
                    t.total_octets - t.deleted_octets,
                );
                None
            }
            Command::List(Some(n)) => {
                if let Some(i) = t.visible(n, out) {
                    reply::pair_line(out, b"+OK ", u64::from(n), t.maildrop.octets(i));
                }
                None
            }
            Command::List(None) => {
                reply::messages_octets(
                    out,
                    b"+OK ",
                    (t.maildrop.count() - t.deleted_count) as u64,
                    t.total_octets - t.deleted_octets,
                );
                t.listing = Some(Listing {
                    kind: ListingKind::List,
                    next: 0,
                });
                t.continue_listing(out, self.limits.output_high_water_bytes);
                None
            }
            Command::Uidl(Some(n)) => {
                if let Some(i) = t.visible(n, out) {
                    reply::uidl_line(out, b"+OK ", u64::from(n), t.maildrop.uidl(i));
                }
                None
            }
            Command::Uidl(None) => {
                reply::ok(out, "");
                t.listing = Some(Listing {
                    kind: ListingKind::Uidl,
                    next: 0,
                });
                t.continue_listing(out, self.limits.output_high_water_bytes);
                None
            }
            Command::Retr(n) => {
                let index = t.visible(n, out)?;
                t.pending_body = Some((index, None));
                self.waiting = true;
                Some(Effect::SendBody {
                    index,
                    top_lines: None,
                })
            }
            Command::Top(n, lines) => {
                let index = t.visible(n, out)?;
                t.pending_body = Some((index, Some(lines)));
                self.waiting = true;
                Some(Effect::SendBody {
                    index,
                    top_lines: Some(lines),
                })
            }
            Command::Dele(n) => {
                let index = t.visible(n, out)?;
                t.deleted.set(index);
                t.deleted_count += 1;
                t.deleted_octets += t.maildrop.octets(index);
                reply::ok(out, "Marked to be deleted.");
                None
            }
            Command::Rset => {
                t.deleted.clear();
                t.to_flag_seen.clear();
                t.deleted_count = 0;
                t.deleted_octets = 0;
                reply::messages_octets(
                    out,
                    b"+OK maildrop has ",
                    t.maildrop.count() as u64,
                    t.total_octets,
                );
                None
            }
            Command::Noop => {
                reply::ok(out, "");
                None
            }
            Command::Lang(range) => {
                lang(range, out);
                None
            }
            Command::Quit => {
                let deleted: Vec<usize> = t.deleted.iter().collect();
                let seen: Vec<usize> = t
                    .to_flag_seen
                    .iter()
                    .filter(|&i| !t.deleted.get(i))
                    .collect();
                // With EXPIRE n the UPDATE state runs at every QUIT: it
                // records this session's retrievals and removes what
                // expired, even when nothing was marked.
                if deleted.is_empty() && seen.is_empty() && !t.policy.expires() {
                    reply::ok(out, "Logging out.");
                    self.state = State::Closed;
                    self.quit_answered = true;
                    return Some(Effect::Close);
                }
                let retrieved = if t.policy.expires() {
                    t.retrieved.iter().filter(|&i| !t.deleted.get(i)).collect()
                } else {
                    Vec::new()
                };
                self.summary.deleted = deleted.len();
                self.state = State::Update;
                self.waiting = true;
                Some(Effect::Commit(Update {
                    deleted,
                    retrieved,
                    seen,
                }))
            }
            _ => self.bad_command(text::WRONG_STATE, out),
        }
    }
}

/// The SASL mechanisms that carry an OAuth token.
fn bearer_mechanism(name: &[u8]) -> Option<BearerMechanism> {
    if name.eq_ignore_ascii_case(b"OAUTHBEARER") {
        Some(BearerMechanism::OAuthBearer)
    } else if name.eq_ignore_ascii_case(b"XOAUTH2") {
        Some(BearerMechanism::XOAuth2)
    } else {
        None
    }
}

/// RFC 6856 §3 LANG, valid in AUTHORIZATION and TRANSACTION. Replies are
/// in English only: `LANG` lists it, `LANG en` (or a range that falls back
/// to it, RFC 4647 lookup: `en-GB`) and `LANG *` select it, anything else
/// is `-ERR`. Each reply starts with the tag in force.
fn lang(range: Option<&[u8]>, out: &mut Vec<u8>) {
    let Some(range) = range else {
        reply::ok(out, "Language listing follows:");
        out.extend_from_slice(b"en English\r\n");
        out.extend_from_slice(reply::END);
        return;
    };
    let english = range == b"*"
        || range.eq_ignore_ascii_case(b"en")
        || range
            .get(..3)
            .is_some_and(|head| head.eq_ignore_ascii_case(b"en-"));
    if english {
        reply::ok(out, "en Language is English.");
    } else {
        reply::err(out, "en Unknown language; only en is available.");
    }
}

impl Transaction {
    /// The 0-based index of message number `n` if it exists and is not
    /// deleted; otherwise writes the `-ERR` and returns `None`.
    fn visible(&self, n: MsgNum, out: &mut Vec<u8>) -> Option<usize> {
        let index = (n as usize)
            .checked_sub(1)
            .filter(|&i| i < self.maildrop.count());
        match index {
            None => {
                reply::no_such_message(out, n);
                None
            }
            Some(i) if self.deleted.get(i) => {
                reply::err(out, text::DELETED);
                None
            }
            Some(i) => Some(i),
        }
    }

    /// Writes listing lines until the output reaches `high_water` (or the
    /// listing ends). The output grows once per call, to `high_water` plus
    /// one line, so a long listing costs one buffer per chunk and no
    /// allocation per message; each line is assembled in place.
    fn continue_listing(&mut self, out: &mut Vec<u8>, high_water: usize) {
        let Some(listing) = &mut self.listing else {
            return;
        };
        if out.len() >= high_water {
            return;
        }
        let line_max = match listing.kind {
            ListingKind::List => reply::LIST_LINE_BYTES_MAX,
            ListingKind::Uidl => reply::UIDL_LINE_BYTES_MAX,
        };
        out.reserve(high_water - out.len() + line_max);
        let count = self.maildrop.count();
        let maildrop = &*self.maildrop;
        let deleted = &self.deleted;
        let mut i = listing.next;
        // One loop per kind: the choice is made once, not per line.
        match listing.kind {
            ListingKind::List => {
                while i < count && out.len() < high_water {
                    if !deleted.get(i) {
                        reply::pair_line(out, b"", i as u64 + 1, maildrop.octets(i));
                    }
                    i += 1;
                }
            }
            ListingKind::Uidl => {
                while i < count && out.len() < high_water {
                    if !deleted.get(i) {
                        reply::uidl_line(out, b"", i as u64 + 1, maildrop.uidl(i));
                    }
                    i += 1;
                }
            }
        }
        listing.next = i;
        if i < count {
            return;
        }
        out.extend_from_slice(reply::END);
        self.listing = None;
    }
}

/// Deletion marks, one bit per message.
struct Bitset {
    words: Vec<u64>,
}

impl Bitset {
    fn new(bits: usize) -> Bitset {
        Bitset {
            words: vec![0; bits.div_ceil(64)],
        }
    }

    fn get(&self, i: usize) -> bool {
        self.words[i / 64] & (1 << (i % 64)) != 0
    }

    fn set(&mut self, i: usize) {
        self.words[i / 64] |= 1 << (i % 64);
    }

    fn clear(&mut self) {
        self.words.fill(0);
    }

    fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        self.words.iter().enumerate().flat_map(|(w, &word)| {
            (0..64)
                .filter(move |b| word & (1 << b) != 0)
                .map(move |b| w * 64 + b)
        })
    }
}

#[cfg(test)]
#[path = "session_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "session_oauth_tests.rs"]
mod oauth_tests;
