//! A whole SCRAM-SHA-256 exchange as the engine sees it: the engine feeds
//! it each client message and the looked-up credentials, and does what
//! [`ScramNext`] says (a pool lookup, a challenge, opening the mailbox, a
//! failed login). The order of the steps and the arithmetic live here, not
//! in the engine.

use super::scram::{ScramCredentials, ScramServer};
use crate::auth::UserEntry;

/// What the engine does next.
#[derive(Debug)]
pub enum ScramNext {
    /// Look up `user`'s credentials on the worker pool, then call
    /// [`ScramExchange::credentials`].
    Lookup {
        /// The name from client-first.
        user: String,
    },
    /// Send this challenge (server-first or server-final) to the client.
    Challenge(Vec<u8>),
    /// The client proved its password and acknowledged server-final: open
    /// the mailbox for this user.
    Proven(UserEntry),
    /// The exchange failed: a failed login (bad credentials) for `user`,
    /// empty when client-first never named one.
    Failed {
        /// The name the client gave, for the log.
        user: String,
    },
}

/// Where an exchange stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Awaiting {
    ClientFirst,
    Credentials,
    ClientFinal,
    /// The client's empty response to server-final.
    Ack,
    Over,
}

/// One SCRAM-SHA-256 exchange on a connection.
#[derive(Debug)]
pub struct ScramExchange {
    server: Option<ScramServer>,
    user: String,
    awaiting: Awaiting,
}

impl Default for ScramExchange {
    fn default() -> Self {
        ScramExchange::new()
    }
}

impl ScramExchange {
    /// An exchange waiting for client-first.
    pub fn new() -> ScramExchange {
        ScramExchange {
            server: None,
            user: String::new(),
            awaiting: Awaiting::ClientFirst,
        }
    }

    /// The name the client gave (empty before client-first).
    pub fn user(&self) -> &str {
        &self.user
    }

    fn failed(&mut self) -> ScramNext {
        self.awaiting = Awaiting::Over;
        self.server = None;
        ScramNext::Failed {
            user: self.user.clone(),
        }
    }

    /// The client's next (base64-decoded) message.
    pub fn respond(&mut self, data: &[u8]) -> ScramNext {
        match self.awaiting {
            Awaiting::ClientFirst => match ScramServer::client_first(data) {
                Ok((server, user)) => {
                    self.server = Some(server);
                    self.user.clone_from(&user);
                    self.awaiting = Awaiting::Credentials;
                    ScramNext::Lookup { user }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "bad SCRAM client-first");
                    self.failed()
                }
            },
            Awaiting::ClientFinal => {
                let Some(server) = &mut self.server else {
                    return self.failed();
                };
                match server.client_final(data) {
                    Ok(server_final) => {
                        self.awaiting = Awaiting::Ack;
                        ScramNext::Challenge(server_final)
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "SCRAM exchange failed");
                        self.failed()
                    }
                }
            }
            Awaiting::Ack => {
                let entry = self.server.take().and_then(ScramServer::into_user);
                self.awaiting = Awaiting::Over;
                match entry {
                    Some(entry) if data.is_empty() => ScramNext::Proven(entry),
                    _ => self.failed(),
                }
            }
            Awaiting::Credentials | Awaiting::Over => self.failed(),
        }
    }

    /// The pool's answer to [`ScramNext::Lookup`]: the user's keys (`None`
    /// when the lookup failed) and fresh random bytes for the server nonce.
    pub fn credentials(
        &mut self,
        credentials: Option<ScramCredentials>,
        nonce: &[u8],
    ) -> ScramNext {
        match (self.awaiting, &mut self.server, credentials) {
            (Awaiting::Credentials, Some(server), Some(credentials)) => {
                self.awaiting = Awaiting::ClientFinal;
                ScramNext::Challenge(server.server_first(credentials, nonce))
            }
            _ => self.failed(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_out_of_order_fail_and_end_the_exchange() {
        let mut x = ScramExchange::new();
        assert!(matches!(x.respond(b"not scram"), ScramNext::Failed { .. }));
        // Over: nothing more is accepted.
        assert!(matches!(
            x.respond(b"n,,n=alice,r=abc"),
            ScramNext::Failed { .. }
        ));

        let mut x = ScramExchange::new();
        match x.respond(b"n,,n=alice,r=abcdefghijklmnop") {
            ScramNext::Lookup { user } => assert_eq!(user, "alice"),
            other => panic!("{other:?}"),
        }
        assert_eq!(x.user(), "alice");
        // client-final before the credentials came back.
        match x.respond(b"c=biws,r=x,p=y") {
            ScramNext::Failed { user } => assert_eq!(user, "alice"),
            other => panic!("{other:?}"),
        }

        let mut x = ScramExchange::new();
        x.respond(b"n,,n=bob,r=abcdefghijklmnop");
        // The lookup found nothing the mechanism can use.
        match x.credentials(None, &[0; 32]) {
            ScramNext::Failed { user } => assert_eq!(user, "bob"),
            other => panic!("{other:?}"),
        }
    }
}
