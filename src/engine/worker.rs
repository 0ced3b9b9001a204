//! The worker pool: blocking work (password hashing, Maildir scans, unlinks)
//! and costly CPU work (RSA signatures of TLS handshakes) runs here, never on a shard thread. Jobs come in on one bounded queue
//! shared by all workers (`engine/pool.rs`: which worker wakes when); each result goes back to the shard that
//! asked, on that shard's bounded completion channel, and its waker wakes
//! the shard's event loop.
//!
//! Both queues have a bound and a stated behaviour when full:
//! - the job queue ([`Jobs`], `limits.worker_queue_max`): a shard never waits
//!   on it. [`Jobs::submit`] fails at once when it is full and the session is
//!   answered `-ERR [SYS/TEMP]` (a login) or `-ERR` with nothing deleted (a
//!   QUIT's commit); the job is not run.
//! - a shard's completion channel ([`DONE_QUEUE_MAX`]): a worker waits on it
//!   when it is full (the shard drains it every loop turn), so no completion
//!   is ever dropped; only the pool slows down, never a shard.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;

use crossbeam_channel::{Receiver, Sender};

use crate::auth::{Passdb, UserEntry};
use crate::protocol::{Credential, LoginFailure, SitePolicy, Update};
use crate::store::{self, MailLocation, Mailbox, OpenError, Snapshot};

/// Which connection a job belongs to: the slab slot and the connection's
/// unique id, so a result for a connection that is gone is dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnRef {
    /// The shard's slab key.
    pub slot: usize,
    /// Unique per shard for the life of the process.
    pub id: u64,
}

/// Work for the pool.
pub enum Job {
    /// Check credentials, lock and scan the mailbox.
    Login {
        /// Reply here.
        reply: Reply,
        /// The user name as sent.
        user: Vec<u8>,
        /// The proof.
        credential: Credential,
    },
    /// SCRAM-SHA-256: the user's keys (or made-up ones) and a server nonce.
    ScramLookup {
        /// Reply here.
        reply: Reply,
        /// The name from client-first.
        user: String,
    },
    /// A user proven by SCRAM: check allow_nets, lock and scan the mailbox.
    Open {
        /// Reply here.
        reply: Reply,
        /// The proven user.
        entry: UserEntry,
    },
    /// Answer a TLS ClientHello whose signature is too costly for a shard.
    TlsAnswer {
        /// Reply here.
        reply: Reply,
        /// The ClientHello and config.
        answer: Box<crate::tls::CostlyAnswer>,
    },
    /// Remove the messages a session marked (UPDATE state).
    Commit {
        /// Reply here.
        reply: Reply,
        /// The session's snapshot.
        snapshot: Arc<Snapshot>,
        /// What QUIT marked and what RETR retrieved.
        update: Update,
    },
}

/// Completions a shard's channel holds before a worker waits to send more.
pub const DONE_QUEUE_MAX: usize = 1024;

/// A shard's return address: its completion channel and its waker.
pub struct ShardPort {
    /// The shard's completion channel (bounded: [`DONE_QUEUE_MAX`]).
    pub done: Sender<Done>,
    /// Wakes the shard's event loop.
    pub waker: super::waker::Waker,
    /// The shard is in (or about to enter) its wait: a completion must
    /// wake it. While it runs, it looks at its channel before it waits
    /// again, so a wake (a write(2) and an epoll wakeup) is not needed.
    waiting: AtomicBool,
}

impl ShardPort {
    /// A port for a shard woken by `waker`, and the shard's receiving end.
    pub fn new(waker: super::waker::Waker) -> (Arc<ShardPort>, Receiver<Done>) {
        let (done, rx) = crossbeam_channel::bounded(DONE_QUEUE_MAX);
        let waiting = AtomicBool::new(true);
        (
            Arc::new(ShardPort {
                done,
                waker,
                waiting,
            }),
            rx,
        )
    }

    /// The shard is about to wait; returns false when completions are
    /// already queued (then it must not wait). A worker queues, then reads
    /// the flag; the shard sets the flag, then looks at the queue: with
    /// both orders sequentially consistent, one of them sees the other.
    pub fn enter_wait(&self, done_rx: &Receiver<Done>) -> bool {
        self.waiting.store(true, Ordering::SeqCst);
        std::sync::atomic::fence(Ordering::SeqCst);
        if done_rx.is_empty() {
            return true;
        }
        self.waiting.store(false, Ordering::SeqCst);
        false
    }

    /// The shard's wait returned.
    pub fn leave_wait(&self) {
        self.waiting.store(false, Ordering::SeqCst);
    }

    /// Queues a completion (waiting while the channel is full) and wakes
    /// the shard when it is waiting. A shard that is gone (shutdown) gets
    /// nothing: nobody waits for the result.
    fn deliver(&self, done: Done) {
        if self.done.send(done).is_err() {
            return;
        }
        std::sync::atomic::fence(Ordering::SeqCst);
        if self.waiting.load(Ordering::SeqCst) {
            let _ = self.waker.wake();
        }
    }
}

/// Where a result goes.
pub struct Reply {
    /// The shard that asked.
    pub port: Arc<ShardPort>,
    /// The connection.
    pub conn: ConnRef,
    /// For log lines.
    pub peer: SocketAddr,
}

/// The pool's job queue, as the shards hold it.
#[derive(Clone)]
pub struct Jobs {
    tx: super::pool::Sender<Job>,
}

/// The job queue was full (or the pool is gone); the job was not queued.
pub struct Full(pub Job);

impl std::fmt::Debug for Full {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Full(..)")
    }
}

impl Jobs {
    /// A queue for `bound` jobs and the workers' receiving end.
    pub fn bounded(bound: usize) -> (Jobs, super::pool::Receiver<Job>) {
        let (tx, rx) = super::pool::bounded(bound);
        (Jobs { tx }, rx)
    }

    /// Queues `job` without waiting; gives it back when the queue is full.
    // The job comes back by value to be answered; boxing it would cost an
    // allocation on every submit.
    #[allow(clippy::result_large_err)]
    pub fn submit(&self, job: Job) -> Result<(), Full> {
        self.tx.try_send(job).map_err(Full)
    }

    /// Jobs waiting for a worker.
    pub fn depth(&self) -> usize {
        self.tx.len()
    }
}

/// A finished job.
pub struct Done {
    /// The connection it belongs to.
    pub conn: ConnRef,
    /// The outcome.
    pub outcome: Outcome,
}

/// What a job produced.
pub enum Outcome {
    /// The user is in and holds the mailbox.
    LoggedIn {
        /// The canonical user name.
        user: String,
        /// Snapshot and lock.
        mailbox: Mailbox,
    },
    /// The login failed; `user` is what the client sent (for the log only).
    LoginFailed {
        /// Why.
        why: LoginFailure,
        /// As sent, lossily decoded.
        user: String,
    },
    /// What a SCRAM exchange continues with; `None` when the user's stored
    /// password cannot do SCRAM.
    ScramCredentials {
        /// The keys to check against.
        credentials: Option<crate::auth::ScramCredentials>,
        /// Fresh random bytes for the server nonce.
        nonce: Vec<u8>,
    },
    /// The ClientHello's answer, for the connection's TLS layer.
    TlsAnswered(Box<crate::tls::Answer>),
    /// UPDATE finished; this many files could not be removed.
    Committed {
        /// Files left behind.
        failed: usize,
    },
}

/// What every login needs, shared by all workers.
pub struct LoginContext {
    /// The passdb.
    pub passdb: Passdb,
    /// The default mail location.
    pub location: MailLocation,
    /// How UIDLs are made (Dovecot's `pop3_uidl_format`).
    pub uidl_format: store::UidlFormat,
    /// The site's LOGIN-DELAY and EXPIRE (`[pop3]`), which a user's
    /// database fields override.
    pub policy: SitePolicy,
    /// `server.login_on_shard`: shards try [`login_now`] first.
    pub on_shard: bool,
}

/// The login context the workers use, replaced whole by SIGHUP (a new
/// passdb, mail location or UIDL format); a job in progress finishes with
/// the one it started with.
pub struct Logins {
    current: parking_lot::RwLock<Arc<LoginContext>>,
}

impl Logins {
    /// Workers start with `ctx`.
    pub fn new(ctx: LoginContext) -> Arc<Logins> {
        Arc::new(Logins {
            current: parking_lot::RwLock::new(Arc::new(ctx)),
        })
    }

    /// The context for the next job.
    pub fn current(&self) -> Arc<LoginContext> {
        Arc::clone(&self.current.read())
    }

    /// Jobs from now on use `ctx`.
    pub fn replace(&self, ctx: LoginContext) {
        *self.current.write() = Arc::new(ctx);
    }
}

/// Starts `threads` workers on `rx`. They stop when every [`Jobs`] handle
/// is dropped.
pub fn start(
    threads: usize,
    rx: super::pool::Receiver<Job>,
    ctx: Arc<Logins>,
) -> Vec<thread::JoinHandle<()>> {
    (0..threads)
        .map(|i| {
            let rx = rx.clone();
            let ctx = Arc::clone(&ctx);
            thread::Builder::new()
                .name(format!("worker-{i}"))
                .spawn(move || {
                    while let Some(job) = rx.next() {
                        run(&ctx.current(), job);
                    }
                })
                .expect("spawning a worker thread")
        })
        .collect()
}

fn run(ctx: &LoginContext, job: Job) {
    let (reply, outcome) = match job {
        Job::Login {
            reply,
            user,
            credential,
        } => {
            let outcome = login(ctx, &user, &credential, reply.peer);
            (reply, outcome)
        }
        Job::ScramLookup { reply, user } => {
            // A passdb that cannot answer is a temporary failure, as for
            // USER/PASS: -ERR [SYS/TEMP] and no penalty.
            let credentials = ctx.passdb.scram_credentials(&user).inspect_err(|e| {
                if !e.logged() {
                    tracing::error!(user = %user, error = %e, "passdb lookup failed");
                }
            });
            let mut nonce = vec![0u8; crate::auth::sasl::SERVER_NONCE_BYTES_MIN + 2];
            let filled =
                ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut nonce);
            let outcome = match (credentials, filled) {
                (Ok(credentials), Ok(())) => Outcome::ScramCredentials { credentials, nonce },
                _ => Outcome::LoginFailed {
                    why: LoginFailure::Temporary,
                    user,
                },
            };
            (reply, outcome)
        }
        Job::Open { reply, entry } => {
            let outcome = if entry.allows_peer(Some(reply.peer.ip())) {
                open(ctx, &entry)
            } else {
                Outcome::LoginFailed {
                    why: LoginFailure::BadCredentials,
                    user: entry.user.clone(),
                }
            };
            (reply, outcome)
        }
        Job::TlsAnswer { reply, answer } => (reply, Outcome::TlsAnswered(Box::new(answer.run()))),
        Job::Commit {
            reply,
            snapshot,
            update,
        } => {
            let failed = store::policy::update(
                &snapshot,
                &update.deleted,
                &update.retrieved,
                &update.seen,
                store::policy::unix_now(),
            );
            (reply, Outcome::Committed { failed })
        }
    };
    // The shard may be gone (shutdown); then nobody waits for this. A full
    // channel makes this worker wait for the shard to drain it.
    reply.port.deliver(Done {
        conn: reply.conn,
        outcome,
    });
}

fn login(ctx: &LoginContext, user: &[u8], credential: &Credential, peer: SocketAddr) -> Outcome {
    let shown = String::from_utf8_lossy(user).into_owned();
    let failed = |why| Outcome::LoginFailed {
        why,
        user: shown.clone(),
    };
    let name = match std::str::from_utf8(user) {
        Ok(name) if crate::auth::valid_username(user) => name,
        // OAuth: the token names the user; the client may name nobody.
        Ok("") if matches!(credential, Credential::Bearer(_)) => "",
        _ => return failed(LoginFailure::BadCredentials),
    };
    let verified = match credential {
        Credential::Password(password) => ctx.passdb.verify_plain(name, password),
        Credential::Apop { challenge, digest } => {
            ctx.passdb.verify_apop(name, challenge.as_bytes(), digest)
        }
        Credential::Bearer(token) => ctx.passdb.verify_bearer(name, token),
    };
    let entry = match verified {
        // Dovecot's allow_nets: a right password from the wrong network is a
        // failed login like any other.
        Ok(Some(entry)) if entry.allows_peer(Some(peer.ip())) => entry,
        Ok(_) => return failed(LoginFailure::BadCredentials),
        Err(e) => {
            if !e.logged() {
                tracing::error!(user = %shown, %peer, error = %e, "passdb lookup failed");
            }
            return failed(LoginFailure::Temporary);
        }
    };
    open(ctx, &entry)
}

/// A USER/PASS (or SASL PLAIN) login answered on the calling shard
/// thread, when every step of it is known not to wait: the passdb's
/// [`Passdb::verify_plain_now`] and the store's [`Mailbox::open_now`].
/// `None`: it would have to wait (or do something only the pool does, such
/// as log a database failure or rebuild an index), so the caller queues it
/// for the pool, which does all of it again from the start. What it answers
/// is what the pool would answer.
pub fn login_now(
    ctx: &LoginContext,
    user: &[u8],
    credential: &Credential,
    peer: SocketAddr,
) -> Option<Outcome> {
    let Credential::Password(password) = credential else {
        return None;
    };
    let name = std::str::from_utf8(user)
        .ok()
        .filter(|_| crate::auth::valid_username(user))?;
    let entry = match ctx.passdb.verify_plain_now(name, password)? {
        Ok(Some(entry)) if entry.allows_peer(Some(peer.ip())) => entry,
        Ok(_) => {
            return Some(Outcome::LoginFailed {
                why: LoginFailure::BadCredentials,
                user: name.to_owned(),
            });
        }
        Err(_) => return None,
    };
    let paths = maildir_of(ctx, &entry).ok()?;
    let policy = store::policy::for_user(ctx.policy, |key| entry.extra(key)).ok()?;
    match Mailbox::open_now(&paths, &ctx.uidl_format, policy) {
        Ok(Some(mailbox)) => Some(Outcome::LoggedIn {
            user: entry.user,
            mailbox,
        }),
        Ok(None) | Err(OpenError::Io(_)) | Err(OpenError::LoginDelay { .. }) => None,
        Err(OpenError::InUse) => Some(Outcome::LoginFailed {
            why: LoginFailure::InUse,
            user: entry.user,
        }),
    }
}

/// Locks and scans a proven user's mailbox.
fn open(ctx: &LoginContext, entry: &UserEntry) -> Outcome {
    let failed = |why| Outcome::LoginFailed {
        why,
        user: entry.user.clone(),
    };
    let paths = match maildir_of(ctx, entry) {
        Ok(paths) => paths,
        Err(e) => {
            tracing::error!(user = %entry.user, error = %e, "cannot resolve the mail location");
            return failed(LoginFailure::Temporary);
        }
    };
    let policy = match store::policy::for_user(ctx.policy, |key| entry.extra(key)) {
        Ok(policy) => policy,
        Err(e) => {
            tracing::error!(user = %entry.user, error = %e, "bad RFC 2449 field in the user database");
            return failed(LoginFailure::Temporary);
        }
    };
    let dir = &paths.maildir;
    let now = store::policy::unix_now();
    match Mailbox::open_for(&paths, &ctx.uidl_format, policy, now) {
        Ok(mailbox) => Outcome::LoggedIn {
            user: entry.user.clone(),
            mailbox,
        },
        Err(OpenError::InUse) => failed(LoginFailure::InUse),
        Err(OpenError::LoginDelay { wait_secs }) => {
            tracing::info!(user = %entry.user, wait_secs, "login refused: LOGIN-DELAY");
            failed(LoginFailure::LoginDelay)
        }
        Err(OpenError::Io(e)) => {
            tracing::error!(user = %entry.user, dir = %dir.display(), error = %e, "cannot open the mailbox");
            failed(LoginFailure::Temporary)
        }
    }
}

/// The user's Maildir: `userdb_mail` (or `mail`) from the passwd-file's extra
/// fields wins over the configured location, as in Dovecot.
fn maildir_of(
    ctx: &LoginContext,
    entry: &UserEntry,
) -> Result<store::MailPaths, store::LocationError> {
    let own = entry.extra("userdb_mail").or_else(|| entry.extra("mail"));
    let parsed;
    let location = match own {
        Some(template) => {
            parsed = MailLocation::parse(template)?;
            &parsed
        }
        None => &ctx.location,
    };
    location.expand_paths(&entry.user, entry.home.as_deref())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    struct NoWake;
    impl super::super::waker::Wake for NoWake {
        fn wake(&self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn done(id: u64) -> Done {
        Done {
            conn: ConnRef { slot: 0, id },
            outcome: Outcome::Committed { failed: 0 },
        }
    }

    #[test]
    fn a_full_job_queue_gives_the_job_back_at_once() {
        let (jobs, _rx) = Jobs::bounded(1);
        let (port, _done) = ShardPort::new(Arc::new(NoWake));
        let job = || Job::ScramLookup {
            reply: Reply {
                port: Arc::clone(&port),
                conn: ConnRef { slot: 0, id: 1 },
                peer: "127.0.0.1:1".parse().unwrap(),
            },
            user: "alice".into(),
        };
        assert!(jobs.submit(job()).is_ok());
        assert_eq!(jobs.depth(), 1);
        // Never blocks: the second job comes back to be answered.
        assert!(matches!(
            jobs.submit(job()),
            Err(Full(Job::ScramLookup { .. }))
        ));
    }

    struct CountWakes(std::sync::atomic::AtomicUsize);
    impl super::super::waker::Wake for CountWakes {
        fn wake(&self) -> std::io::Result<()> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    }

    #[test]
    fn a_completion_wakes_a_waiting_shard_only() {
        let wakes = Arc::new(CountWakes(Default::default()));
        let (port, done_rx) = ShardPort::new(Arc::clone(&wakes) as super::super::waker::Waker);
        let woken = || wakes.0.load(Ordering::SeqCst);
        // Running (between waits): queued, no wake; the shard must not
        // wait with it queued.
        port.leave_wait();
        port.deliver(done(1));
        assert_eq!(woken(), 0);
        assert!(
            !port.enter_wait(&done_rx),
            "a queued completion keeps it awake"
        );
        assert_eq!(done_rx.try_recv().unwrap().conn.id, 1);
        // Waiting: woken.
        assert!(port.enter_wait(&done_rx));
        port.deliver(done(2));
        assert_eq!(woken(), 1);
        port.leave_wait();
        assert_eq!(done_rx.try_recv().unwrap().conn.id, 2);
    }

    #[test]
    fn a_full_completion_channel_makes_the_worker_wait_and_loses_nothing() {
        let (port, done_rx) = ShardPort::new(Arc::new(NoWake));
        for id in 0..DONE_QUEUE_MAX as u64 {
            port.done.try_send(done(id)).unwrap();
        }
        let sender = Arc::clone(&port);
        let worker = std::thread::spawn(move || sender.done.send(done(u64::MAX)).is_ok());
        std::thread::sleep(Duration::from_millis(100));
        assert!(!worker.is_finished(), "the worker did not wait for room");
        // The shard drains: the waiting completion goes in, none is lost.
        let mut seen = 0;
        while let Ok(d) = done_rx.recv_timeout(Duration::from_secs(5)) {
            seen += 1;
            if d.conn.id == u64::MAX {
                break;
            }
        }
        assert!(worker.join().unwrap());
        assert_eq!(seen, DONE_QUEUE_MAX + 1);
    }
}
