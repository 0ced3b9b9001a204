//! SCRAM-SHA-256 (RFC 5802 with RFC 7677's hash), server side, in three
//! steps the caller drives:
//!
//! ```text
//! C: client-first   ──► ScramServer::client_first  → the user name to look up
//!                        (pool) Passdb::scram_credentials(user)
//! S: server-first   ◄── ScramServer::server_first(credentials, random nonce bytes)
//! C: client-final   ──► ScramServer::client_final  → server-final ("v=...") or an error
//! ```
//!
//! What is offered: no channel binding (there is no `SCRAM-SHA-256-PLUS`), so
//! a client that asks for it (`p=`) is refused and one that says it could
//! have used it (`y`) is accepted, as RFC 5802 §6 allows when the server
//! does not advertise `-PLUS`. No authorization identity other than the
//! authentication identity (no master users). No mandatory extensions (`m=`).
//!
//! User names: RFC 5802 asks for SASLprep. We apply the `=2C` / `=3D`
//! unescaping, refuse a stray `=`, control characters (C0, DEL, C1) and
//! anything that is not UTF-8, then SASLprep (`auth::saslprep`: printable
//! ASCII is unchanged; the passdb lower-cases ASCII and applies its own
//! name rules). Passwords are not SASLprepped, as in Dovecot (see
//! `auth::scheme::scram`): the stored keys were derived from the bytes as
//! typed, and preparing them here would lock out users whose non-ASCII
//! password SASLprep changes.
//!
//! Unknown users get credentials that look like real ones
//! ([`ScramCredentials`] carries no user then), so the server-first message
//! has the same shape; the exchange then fails in `client_final` with
//! [`ScramError::BadProof`], exactly as a wrong password does.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use crate::auth::UserEntry;
use crate::auth::scheme::ct_eq;
use crate::auth::scheme::scram::{KEY_BYTES, ScramKeys, hmac_sha256, sha256};

/// The fewest random bytes [`ScramServer::server_first`] accepts for its
/// half of the nonce (RFC 5802 §5.1: "sufficiently random").
pub const SERVER_NONCE_BYTES_MIN: usize = 16;

/// The longest client message accepted. RFC 5034 lines are far shorter
/// (255 octets of base64 carry 189 bytes); this bounds the parser on its own.
const MESSAGE_BYTES_MAX: usize = 1024;

/// What a user's SCRAM-SHA-256 exchange is checked against: the keys (from a
/// `{SCRAM-SHA-256}` entry, derived from a `{PLAIN}` one, or made up for an
/// unknown user) and, when a correct proof may log in, the user.
///
/// Without a user (unknown user, locked account, `nologin`, `fail`) the
/// exchange runs to the end and then fails with [`ScramError::BadProof`]:
/// the caller need not, and must not, tell the cases apart before that.
/// `Debug` shows no key material.
pub struct ScramCredentials {
    keys: ScramKeys,
    user: Option<UserEntry>,
}

impl ScramCredentials {
    /// Credentials that log `user` in on a correct proof; `None` for
    /// credentials that can never succeed.
    pub(crate) fn new(keys: ScramKeys, user: Option<UserEntry>) -> ScramCredentials {
        ScramCredentials { keys, user }
    }

    /// The same keys with the user passed through `f` (the userdb); a
    /// user `f` refuses leaves credentials that can never succeed.
    pub(crate) fn map_user<E>(
        self,
        f: impl FnOnce(Option<UserEntry>) -> Result<Option<UserEntry>, E>,
    ) -> Result<Option<ScramCredentials>, E> {
        let user = f(self.user)?;
        Ok(Some(ScramCredentials {
            keys: self.keys,
            user,
        }))
    }

    /// The PBKDF2 iteration count the client is told to use.
    pub fn iterations(&self) -> u32 {
        self.keys.iterations
    }

    /// The salt the client is told to use.
    pub fn salt(&self) -> &[u8] {
        &self.keys.salt
    }
}

impl fmt::Debug for ScramCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramCredentials")
            .field("iterations", &self.keys.iterations)
            .finish_non_exhaustive()
    }
}

/// Why an exchange failed. Peer faults all of them but [`ScramError::OutOfOrder`],
/// which is the caller's. None carries any part of a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScramError {
    /// Not RFC 5802 §7 syntax: a missing or misplaced attribute, bad base64,
    /// a nonce with non-printable characters, not UTF-8, a NUL, too long.
    Malformed,
    /// The user name or authzid has a `=` that is not `=2C` / `=3D`, or a
    /// control character.
    InvalidUsername,
    /// The client asked for channel binding (`p=`), which is not offered.
    ChannelBindingUnsupported,
    /// client-final's `c=` is not the GS2 header of client-first.
    ChannelBindingMismatch,
    /// A mandatory extension (`m=`), which is not supported.
    ExtensionUnsupported,
    /// An authorization identity other than the authentication identity.
    AuthzidNotAllowed,
    /// client-final's nonce is not client-first's nonce followed by ours.
    NonceMismatch,
    /// The proof does not match: a wrong password, an unknown user, or a
    /// user who may not log in. One answer for all of them.
    BadProof,
    /// `client_final` before `server_first`, or after the exchange ended.
    OutOfOrder,
}

impl fmt::Display for ScramError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ScramError::Malformed => "malformed SCRAM message",
            ScramError::InvalidUsername => "invalid SCRAM user name encoding",
            ScramError::ChannelBindingUnsupported => "channel binding is not supported",
            ScramError::ChannelBindingMismatch => "channel binding data does not match",
            ScramError::ExtensionUnsupported => "mandatory SCRAM extension is not supported",
            ScramError::AuthzidNotAllowed => "authorization identity is not allowed",
            ScramError::NonceMismatch => "nonce does not match",
            ScramError::BadProof => "client proof does not match",
            ScramError::OutOfOrder => "SCRAM step out of order",
        })
    }
}

impl std::error::Error for ScramError {}

/// One server side SCRAM-SHA-256 exchange. `Debug` shows the step only.
pub struct ScramServer {
    step: Step,
}

enum Step {
    /// client-first parsed; waiting for the credentials.
    ClientFirst {
        gs2_header: String,
        client_first_bare: String,
        client_nonce: String,
    },
    /// server-first sent; waiting for client-final.
    ServerFirst {
        gs2_header: String,
        /// Client nonce followed by ours.
        nonce: String,
        /// `client-first-message-bare "," server-first-message`, the start
        /// of the AuthMessage.
        auth_message_head: String,
        credentials: ScramCredentials,
    },
    /// The exchange is over; `user` is set when it succeeded.
    Done { user: Option<UserEntry> },
}

impl fmt::Debug for ScramServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let step = match &self.step {
            Step::ClientFirst { .. } => "ClientFirst",
            Step::ServerFirst { .. } => "ServerFirst",
            Step::Done { user: Some(_) } => "Succeeded",
            Step::Done { user: None } => "Failed",
        };
        f.debug_struct("ScramServer").field("step", &step).finish()
    }
}

impl ScramServer {
    /// Parses client-first-message (GS2 header `n,,` or `y,,`, optionally
    /// with an authzid equal to the user name). Returns the exchange and the
    /// user name to look up, unescaped and not yet checked against the
    /// passdb's name rules.
    pub fn client_first(msg: &[u8]) -> Result<(ScramServer, String), ScramError> {
        let text = message_text(msg)?;
        let (flag, rest) = text.split_once(',').ok_or(ScramError::Malformed)?;
        match flag {
            "n" | "y" => {}
            _ if flag.starts_with("p=") => return Err(ScramError::ChannelBindingUnsupported),
            _ => return Err(ScramError::Malformed),
        }
        let (authzid, bare) = rest.split_once(',').ok_or(ScramError::Malformed)?;
        let authzid = match authzid {
            "" => None,
            a => Some(saslname(
                a.strip_prefix("a=").ok_or(ScramError::Malformed)?,
            )?),
        };
        let mut fields = bare.split(',');
        let username = fields.next().unwrap_or_default();
        if username.starts_with("m=") {
            return Err(ScramError::ExtensionUnsupported);
        }
        let user = saslname(username.strip_prefix("n=").ok_or(ScramError::Malformed)?)?;
        // RFC 5802 §5.1: the name is SASLprepped (printable ASCII is left
        // as it is; see `auth::saslprep`).
        let user = crate::auth::saslprep::prepare_str(&user).into_owned();
        let client_nonce = fields
            .next()
            .and_then(|field| field.strip_prefix("r="))
            .filter(|nonce| printable(nonce))
            .ok_or(ScramError::Malformed)?;
        if !fields.all(attr_val) {
            return Err(ScramError::Malformed);
        }
        if authzid.is_some_and(|a| a != user) {
            return Err(ScramError::AuthzidNotAllowed);
        }
        let gs2_header = &text[..text.len() - bare.len()];
        let server = ScramServer {
            step: Step::ClientFirst {
                gs2_header: gs2_header.to_owned(),
                client_first_bare: bare.to_owned(),
                client_nonce: client_nonce.to_owned(),
            },
        };
        Ok((server, user))
    }

    /// server-first-message for the looked-up `credentials`. `server_nonce`
    /// is fresh randomness from the caller, at least
    /// [`SERVER_NONCE_BYTES_MIN`] bytes; it is sent base64-encoded after the
    /// client's nonce.
    ///
    /// Called in any other step than right after `client_first` (a bug in
    /// the caller), it returns RFC 5802's `e=other-error` and the exchange
    /// fails; debug builds panic.
    ///
    /// # Panics
    /// If `server_nonce` is shorter than [`SERVER_NONCE_BYTES_MIN`].
    pub fn server_first(&mut self, credentials: ScramCredentials, server_nonce: &[u8]) -> Vec<u8> {
        assert!(
            server_nonce.len() >= SERVER_NONCE_BYTES_MIN,
            "SCRAM server nonce needs at least {SERVER_NONCE_BYTES_MIN} random bytes"
        );
        self.server_first_with_nonce(credentials, &STANDARD.encode(server_nonce))
    }

    /// [`ScramServer::server_first`] with the server's nonce already in
    /// printable form (RFC 7677's test vector has one that is not base64).
    fn server_first_with_nonce(&mut self, credentials: ScramCredentials, suffix: &str) -> Vec<u8> {
        assert!(printable(suffix), "server nonce must be printable");
        let step = std::mem::replace(&mut self.step, Step::Done { user: None });
        let Step::ClientFirst {
            gs2_header,
            client_first_bare,
            client_nonce,
        } = step
        else {
            debug_assert!(false, "server_first called out of order");
            return b"e=other-error".to_vec();
        };
        let nonce = format!("{client_nonce}{suffix}");
        let server_first = format!(
            "r={nonce},s={},i={}",
            STANDARD.encode(credentials.salt()),
            credentials.iterations()
        );
        self.step = Step::ServerFirst {
            gs2_header,
            nonce,
            auth_message_head: format!("{client_first_bare},{server_first}"),
            credentials,
        };
        server_first.into_bytes()
    }

    /// Verifies client-final-message. On success returns server-final-message
    /// (`v=` and the server signature) and [`ScramServer::user`] is set; on
    /// any error the exchange is over and has failed.
    pub fn client_final(&mut self, msg: &[u8]) -> Result<Vec<u8>, ScramError> {
        let step = std::mem::replace(&mut self.step, Step::Done { user: None });
        let Step::ServerFirst {
            gs2_header,
            nonce,
            auth_message_head,
            credentials,
        } = step
        else {
            return Err(ScramError::OutOfOrder);
        };
        let parsed = ClientFinal::parse(message_text(msg)?)?;
        if parsed.channel_binding != gs2_header.as_bytes() {
            return Err(ScramError::ChannelBindingMismatch);
        }
        if parsed.nonce != nonce {
            return Err(ScramError::NonceMismatch);
        }
        let auth_message = format!("{auth_message_head},{}", parsed.without_proof);
        let keys = &credentials.keys;
        let client_signature = hmac_sha256(&keys.stored_key, &[auth_message.as_bytes()]);
        let mut client_key = parsed.proof;
        for (k, s) in client_key.iter_mut().zip(client_signature) {
            *k ^= s;
        }
        // Compared for every user, so a made-up credential costs the same.
        let matched = ct_eq(&sha256(&client_key), &keys.stored_key);
        if !matched || credentials.user.is_none() {
            return Err(ScramError::BadProof);
        }
        let server_signature = hmac_sha256(&keys.server_key, &[auth_message.as_bytes()]);
        self.step = Step::Done {
            user: credentials.user,
        };
        Ok(format!("v={}", STANDARD.encode(server_signature)).into_bytes())
    }

    /// The user who proved who they are: `Some` only after `client_final`
    /// returned `Ok`.
    pub fn user(&self) -> Option<&UserEntry> {
        match &self.step {
            Step::Done { user } => user.as_ref(),
            _ => None,
        }
    }

    /// Ends the exchange, giving up the user as [`ScramServer::user`] would.
    pub fn into_user(self) -> Option<UserEntry> {
        match self.step {
            Step::Done { user } => user,
            _ => None,
        }
    }
}

/// client-final-message, split (RFC 5802 §7):
/// `c=<base64> "," r=<nonce> ["," extensions] "," p=<base64>`.
struct ClientFinal<'a> {
    /// Decoded `c=`: the GS2 header again, as no channel binding data follows.
    channel_binding: Vec<u8>,
    nonce: &'a str,
    /// Everything before `,p=`, which goes into the AuthMessage.
    without_proof: &'a str,
    proof: [u8; KEY_BYTES],
}

impl<'a> ClientFinal<'a> {
    fn parse(text: &'a str) -> Result<ClientFinal<'a>, ScramError> {
        let (without_proof, proof) = text.rsplit_once(',').ok_or(ScramError::Malformed)?;
        let proof = proof
            .strip_prefix("p=")
            .and_then(|b64| STANDARD.decode(b64).ok())
            .and_then(|raw| <[u8; KEY_BYTES]>::try_from(raw).ok())
            .ok_or(ScramError::Malformed)?;
        let mut fields = without_proof.split(',');
        let channel_binding = fields
            .next()
            .and_then(|field| field.strip_prefix("c="))
            .and_then(|b64| STANDARD.decode(b64).ok())
            .ok_or(ScramError::Malformed)?;
        let nonce = fields
            .next()
            .and_then(|field| field.strip_prefix("r="))
            .filter(|nonce| printable(nonce))
            .ok_or(ScramError::Malformed)?;
        if !fields.all(attr_val) {
            return Err(ScramError::Malformed);
        }
        Ok(ClientFinal {
            channel_binding,
            nonce,
            without_proof,
            proof,
        })
    }
}

/// A client message as text: bounded, UTF-8, no NUL (RFC 5802 §7 allows
/// none anywhere).
fn message_text(msg: &[u8]) -> Result<&str, ScramError> {
    if msg.len() > MESSAGE_BYTES_MAX || msg.contains(&0) {
        return Err(ScramError::Malformed);
    }
    std::str::from_utf8(msg).map_err(|_| ScramError::Malformed)
}

/// RFC 5802 `saslname`, unescaped: one or more characters, `=` only as
/// `=2C` (`,`) or `=3D` (`=`), and (our rule) no control characters.
fn saslname(escaped: &str) -> Result<String, ScramError> {
    if escaped.is_empty() {
        return Err(ScramError::Malformed);
    }
    let mut name = String::with_capacity(escaped.len());
    let mut rest = escaped;
    while let Some(c) = rest.chars().next() {
        rest = &rest[c.len_utf8()..];
        let c = match c {
            '=' => {
                let decoded = match rest.get(..2) {
                    Some("2C") => ',',
                    Some("3D") => '=',
                    _ => return Err(ScramError::InvalidUsername),
                };
                rest = &rest[2..];
                decoded
            }
            c if c.is_control() => return Err(ScramError::InvalidUsername),
            c => c,
        };
        name.push(c);
    }
    Ok(name)
}

/// RFC 5802 `printable`, one or more: `%x21-2B / %x2D-7E` (no comma).
fn printable(text: &str) -> bool {
    !text.is_empty()
        && text
            .bytes()
            .all(|b| (0x21..=0x7e).contains(&b) && b != b',')
}

/// RFC 5802 `attr-val`: `ALPHA "=" value`, an extension we may ignore. The
/// value is one or more characters other than `,` and NUL (already excluded).
fn attr_val(field: &str) -> bool {
    let bytes = field.as_bytes();
    bytes.len() > 2 && bytes[0].is_ascii_alphabetic() && bytes[1] == b'='
}

#[cfg(test)]
mod tests;
