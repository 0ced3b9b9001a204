//! What the session asks for (`Effect`) and what the pool answers (`Done`):
//! jobs to the worker pool, bodies to open, TLS to start, SCRAM steps, and
//! the login, failure and audit lines.
#![forbid(unsafe_code)]

use std::sync::Arc;

use super::Conn;
use crate::auth::ScramNext;
use crate::engine::context::Cx;
use crate::engine::worker::{self, ConnRef, Done, Full, Job, Outcome, Reply};
use crate::log_format::Rip;
use crate::metrics::LoginResult;
use crate::protocol::{Completion, Effect, LoginFailure};
use crate::store;
use crate::tls::TlsLayer;

impl Conn {
    /// Where the pool answers this connection.
    fn reply_to(&self, cx: &Cx<'_>) -> Reply {
        Reply {
            port: Arc::clone(&cx.local.port),
            conn: ConnRef {
                slot: cx.slot,
                id: self.id,
            },
            peer: self.peer,
        }
    }

    /// Queues `job` for the pool. When the queue is full the job is not
    /// run and the session gets its temporary-failure answer at once: a
    /// shard never waits for the pool.
    fn submit(&mut self, job: Job, cx: &Cx<'_>) {
        let Err(Full(job)) = cx.process.jobs.submit(job) else {
            return;
        };
        tracing::warn!(
            peer = %self.peer,
            queued = cx.process.jobs.depth(),
            "worker queue full; answering -ERR [SYS/TEMP]"
        );
        match job {
            Job::Commit { .. } => self.complete(Completion::Committed(false), cx),
            Job::Login { user, .. } => {
                let user = String::from_utf8_lossy(&user).into_owned();
                self.login_failed(LoginFailure::Temporary, &user, cx);
            }
            Job::ScramLookup { user, .. } => self.login_failed(LoginFailure::Temporary, &user, cx),
            Job::Open { entry, .. } => self.login_failed(LoginFailure::Temporary, &entry.user, cx),
            // Correct anywhere, only slow: this one handshake runs here.
            Job::TlsAnswer { answer, .. } => self.tls_answered(answer.run(), cx),
        }
    }

    /// Gives the session a completion and carries out what it asks next.
    pub(super) fn complete(&mut self, completion: Completion, cx: &Cx<'_>) {
        let login = match &completion {
            Completion::LoggedIn(_) => Some(LoginResult::Ok),
            Completion::LoginFailed(LoginFailure::BadCredentials) => Some(LoginResult::Failed),
            Completion::LoginFailed(LoginFailure::InUse) => Some(LoginResult::InUse),
            Completion::LoginFailed(LoginFailure::Temporary) => Some(LoginResult::TempFail),
            Completion::LoginFailed(LoginFailure::LoginDelay) => Some(LoginResult::Rejected),
            Completion::Committed(_) | Completion::SaslChallenge(_) => None,
        };
        if let Some(result) = login {
            // From PASS (or SASL's last step) to this reply, any penalty
            // delay included.
            let started = self.login_started.take().unwrap_or(cx.now);
            cx.cells()
                .login(result, cx.now.saturating_duration_since(started));
        }
        if let Some(effect) = self.session.complete(completion, &mut self.out) {
            self.apply(effect, cx);
        }
    }

    pub(super) fn apply(&mut self, effect: Effect, cx: &Cx<'_>) {
        match effect {
            Effect::Login { user, credential } => {
                self.login_started = Some(cx.now);
                // Answered here when nothing in it can wait (see
                // `worker::login_now`): no hand-off to a worker and back.
                let ctx = cx.process.logins.current();
                if ctx.on_shard
                    && let Some(outcome) = worker::login_now(&ctx, &user, &credential, self.peer)
                {
                    cx.cells().login_on_shard();
                    let conn = ConnRef {
                        slot: cx.slot,
                        id: self.id,
                    };
                    return self.on_done(Done { conn, outcome }, cx);
                }
                let reply = self.reply_to(cx);
                self.submit(
                    Job::Login {
                        reply,
                        user,
                        credential,
                    },
                    cx,
                );
            }
            Effect::SendBody { index, top_lines } => {
                let before = self.bytes_sent + self.queued_bytes() as u64;
                self.retr_started = Some((cx.now, before));
                self.open_body(index, top_lines);
            }
            Effect::Commit(update) => {
                let Some(mailbox) = &self.mailbox else {
                    debug_assert!(false, "commit without a mailbox");
                    return self.complete(Completion::Committed(false), cx);
                };
                if !store::policy::update_has_work(&mailbox.snapshot, &update.deleted, &update.seen)
                {
                    return self.complete(Completion::Committed(true), cx);
                }
                let snapshot = Arc::clone(&mailbox.snapshot);
                self.commit_marked = update.deleted.len();
                let reply = self.reply_to(cx);
                self.submit(
                    Job::Commit {
                        reply,
                        snapshot,
                        update,
                    },
                    cx,
                );
            }
            Effect::Sasl { first, data } => {
                if first {
                    self.scram = Some(Box::default());
                }
                let next = match &mut self.scram {
                    Some(exchange) => exchange.respond(&data),
                    None => ScramNext::Failed {
                        user: String::new(),
                    },
                };
                self.scram_next(next, cx);
            }
            Effect::StartTls => {
                let Some(reloader) = &cx.process.tls else {
                    debug_assert!(false, "STLS offered without a certificate");
                    self.closing = true;
                    return;
                };
                match TlsLayer::new(reloader.current()) {
                    Ok(layer) => {
                        self.start_tls(layer, cx.settings.offer(self.peer, true, false, true))
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "cannot start TLS");
                        self.closing = true;
                    }
                }
            }
            Effect::Close => {
                self.closing = true;
                // The session is over (QUIT answered, deletions committed):
                // free the mailbox before the reply reaches the client, so
                // its next login never meets its own lock.
                self.mailbox = None;
            }
        }
    }

    /// Carries out a SCRAM step.
    fn scram_next(&mut self, next: ScramNext, cx: &Cx<'_>) {
        match next {
            ScramNext::Lookup { user } => {
                let reply = self.reply_to(cx);
                self.submit(Job::ScramLookup { reply, user }, cx);
            }
            ScramNext::Challenge(challenge) => {
                self.complete(Completion::SaslChallenge(challenge), cx)
            }
            ScramNext::Proven(entry) => {
                self.scram = None;
                self.login_started = Some(cx.now);
                let reply = self.reply_to(cx);
                self.submit(Job::Open { reply, entry }, cx);
            }
            ScramNext::Failed { user } => {
                self.login_started.get_or_insert(cx.now);
                self.login_failed(LoginFailure::BadCredentials, &user, cx)
            }
        }
    }

    /// Pool work for this connection finished.
    pub fn on_done(&mut self, done: Done, cx: &Cx<'_>) {
        let completion = match done.outcome {
            Outcome::LoggedIn { user, mailbox } => {
                let tls = self.tls.as_ref().and_then(|t| t.describe());
                tracing::info!(
                    "pop3 login: user=<{user}>, rip={}, shard={}, messages={}, tls={}",
                    Rip(self.peer.ip()),
                    cx.local.shard,
                    mailbox.snapshot.messages.len(),
                    tls.as_deref().unwrap_or("no")
                );
                let maildrop = Box::new(Arc::clone(&mailbox.snapshot));
                self.mailbox = Some(mailbox);
                self.user = Some(user);
                Completion::LoggedIn(maildrop)
            }
            Outcome::LoginFailed { why, user } => return self.login_failed(why, &user, cx),
            Outcome::ScramCredentials { credentials, nonce } => {
                let next = match &mut self.scram {
                    Some(exchange) => exchange.credentials(credentials, &nonce),
                    None => ScramNext::Failed {
                        user: String::new(),
                    },
                };
                return self.scram_next(next, cx);
            }
            Outcome::TlsAnswered(answer) => return self.tls_answered(*answer, cx),
            Outcome::Committed { failed } => {
                let removed = self.commit_marked.saturating_sub(failed);
                cx.cells().deleted(removed as u64);
                Completion::Committed(failed == 0)
            }
        };
        self.complete(completion, cx);
    }

    /// Sends a ClientHello whose answer signs with a costly key to the pool,
    /// so the shard's other connections do not wait for the signature.
    pub(super) fn offload_tls_answer(&mut self, cx: &Cx<'_>) {
        let Some(answer) = self.tls.as_deref_mut().and_then(|t| t.take_costly_answer()) else {
            return;
        };
        cx.cells().tls_offloaded();
        let reply = self.reply_to(cx);
        self.submit(
            Job::TlsAnswer {
                reply,
                answer: Box::new(answer),
            },
            cx,
        );
    }

    /// The ClientHello is answered: the handshake goes on, or its alert is
    /// sent and the connection closes.
    fn tls_answered(&mut self, answer: crate::tls::Answer, cx: &Cx<'_>) {
        let Some(tls) = self.tls.as_deref_mut() else {
            return;
        };
        if let Err(e) = tls.answered(answer) {
            tls.count_handshake(cx.cells(), false);
            crate::engine::error::ConnError::from(e).log(self.peer);
            self.closing = true;
        }
    }

    /// Logs a failed login and answers it, after the address's penalty delay
    /// for bad credentials.
    pub(super) fn login_failed(&mut self, why: LoginFailure, user: &str, cx: &Cx<'_>) {
        self.scram = None;
        // One line per failure, in a shape fail2ban can match:
        // user=<...>, rip=ADDR.
        tracing::warn!(
            "pop3 login failed ({why:?}): user=<{}>, rip={}, shard={}",
            user.escape_debug(),
            Rip(self.peer.ip()),
            cx.local.shard
        );
        if why == LoginFailure::BadCredentials {
            // The delay grows with the address's recent failures.
            let delay = cx.process.guard.login_failed(self.peer.ip(), cx.now);
            if !delay.is_zero() {
                cx.cells().auth_penalty();
                self.held = Some((cx.now + delay, Completion::LoginFailed(why)));
                return;
            }
        }
        self.complete(Completion::LoginFailed(why), cx);
    }
}
