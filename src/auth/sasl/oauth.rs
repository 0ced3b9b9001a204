//! The client messages of OAUTHBEARER (RFC 7628) and XOAUTH2 (Google's),
//! and the server's error challenges. Pure parsing of outside bytes: the
//! token is checked elsewhere ([`crate::auth::oauth`]), on the pool.
//!
//! ```text
//! OAUTHBEARER  C: n,a=alice@example.net,^Ahost=...^Aport=110^Aauth=Bearer <token>^A^A
//!              S: (failure) + base64({"status":"invalid_token",...})
//!              C: ^A                        (the dummy response)
//!              S: -ERR [AUTH] ...
//! XOAUTH2      C: user=alice@example.net^Aauth=Bearer <token>^A^A
//!              S: (failure) + base64({"status":"401",...})
//!              C: (empty line)
//! ```

use std::fmt;

/// The longest user name taken from a message (the passdb refuses longer
/// ones anyway).
const NAME_BYTES_MAX: usize = 255;

/// What a client response carries.
#[derive(PartialEq, Eq)]
pub struct BearerResponse<'a> {
    /// OAUTHBEARER's authzid or XOAUTH2's `user`, unescaped; empty when the
    /// client named nobody (OAUTHBEARER allows that).
    pub user: String,
    /// The access token after `Bearer `.
    pub token: &'a [u8],
}

impl fmt::Debug for BearerResponse<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BearerResponse")
            .field("user", &self.user)
            .field("token", &"<redacted>")
            .finish()
    }
}

/// Why a client response is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BearerError {
    /// Not the syntax of the mechanism.
    Malformed,
    /// OAUTHBEARER with channel binding (`p=`), which is not offered.
    ChannelBinding,
}

/// Which of the two mechanisms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BearerMechanism {
    /// RFC 7628.
    OAuthBearer,
    /// Google's XOAUTH2.
    XOAuth2,
}

impl BearerMechanism {
    /// Parses the client's (decoded) response for this mechanism.
    pub fn parse(self, msg: &[u8]) -> Result<BearerResponse<'_>, BearerError> {
        match self {
            BearerMechanism::OAuthBearer => parse_oauthbearer(msg),
            BearerMechanism::XOAuth2 => parse_xoauth2(msg),
        }
    }

    /// The error challenge sent (base64-encoded by the caller) when the
    /// token is refused; the client answers it with a dummy response.
    pub fn error_challenge(self) -> &'static [u8] {
        match self {
            // RFC 7628 §3.2.2: status is required; we publish no scope and
            // no discovery document.
            BearerMechanism::OAuthBearer => br#"{"status":"invalid_token","schemes":"bearer"}"#,
            // What Gmail answers a bad XOAUTH2 token with.
            BearerMechanism::XOAuth2 => br#"{"status":"401","schemes":"bearer"}"#,
        }
    }
}

/// RFC 7628 §3.1: `gs2-header %x01 *(key "=" value %x01) %x01`, with an
/// `auth` pair of `Bearer <token>`.
pub fn parse_oauthbearer(msg: &[u8]) -> Result<BearerResponse<'_>, BearerError> {
    let malformed = BearerError::Malformed;
    // gs2-header: cbind-flag "," [ "a=" saslname ] ","
    let (flag, rest) = split_once(msg, b',').ok_or(malformed)?;
    match flag {
        b"n" | b"y" => {}
        _ if flag.starts_with(b"p=") => return Err(BearerError::ChannelBinding),
        _ => return Err(malformed),
    }
    let (authzid, pairs) = split_once(rest, b',').ok_or(malformed)?;
    let user = match authzid {
        b"" => String::new(),
        a => saslname(a.strip_prefix(b"a=").ok_or(malformed)?).ok_or(malformed)?,
    };
    let pairs = pairs.strip_prefix(b"\x01").ok_or(malformed)?;
    let token = bearer_pairs(pairs, |_, _| true)?;
    Ok(BearerResponse { user, token })
}

/// XOAUTH2: `user=<name> %x01 auth=Bearer <token> %x01 %x01`.
pub fn parse_xoauth2(msg: &[u8]) -> Result<BearerResponse<'_>, BearerError> {
    let mut user = None;
    let token = bearer_pairs(msg, |key, value| {
        if key == b"user" {
            user = Some(value);
        }
        true
    })?;
    let user = user
        .filter(|u| !u.is_empty() && u.len() <= NAME_BYTES_MAX)
        .and_then(|u| std::str::from_utf8(u).ok())
        .ok_or(BearerError::Malformed)?;
    Ok(BearerResponse {
        user: user.to_owned(),
        token,
    })
}

/// `*(key "=" value %x01) %x01`: the token of the one `auth` pair; every
/// other pair goes to `other`. Keys are ASCII letters (RFC 7628 §3.1);
/// values are VCHAR / SP / HTAB / CR / LF.
fn bearer_pairs<'a>(
    msg: &'a [u8],
    mut other: impl FnMut(&'a [u8], &'a [u8]) -> bool,
) -> Result<&'a [u8], BearerError> {
    let malformed = BearerError::Malformed;
    let body = msg.strip_suffix(b"\x01\x01").ok_or(malformed)?;
    let mut token = None;
    for pair in body.split(|&b| b == 0x01) {
        let (key, value) = split_once(pair, b'=').ok_or(malformed)?;
        let key_ok = !key.is_empty() && key.iter().all(u8::is_ascii_alphabetic);
        let value_ok = value
            .iter()
            .all(|&b| matches!(b, 0x21..=0x7e | b' ' | b'\t' | b'\r' | b'\n'));
        if !key_ok || !value_ok {
            return Err(malformed);
        }
        if key == b"auth" {
            if token.is_some() {
                return Err(malformed);
            }
            token = Some(bearer_token(value).ok_or(malformed)?);
        } else if !other(key, value) {
            return Err(malformed);
        }
    }
    token.ok_or(malformed)
}

/// RFC 6750 §2.1: `Bearer` (any case) 1*SP b64token.
fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = split_once(value, b' ')?;
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return None;
    }
    let token = &rest[rest.iter().position(|&b| b != b' ')?..];
    let b64token = |b: &u8| b.is_ascii_alphanumeric() || b"-._~+/=".contains(b);
    token.iter().all(b64token).then_some(token)
}

/// RFC 5801 saslname: UTF-8 with `,` as `=2C` and `=` as `=3D`.
fn saslname(raw: &[u8]) -> Option<String> {
    if raw.is_empty() || raw.len() > NAME_BYTES_MAX * 3 {
        return None;
    }
    let text = std::str::from_utf8(raw).ok()?;
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(eq) = rest.find('=') {
        out.push_str(&rest[..eq]);
        let code = rest.get(eq + 1..eq + 3)?;
        out.push(match code {
            "2C" => ',',
            "3D" => '=',
            _ => return None,
        });
        rest = &rest[eq + 3..];
    }
    out.push_str(rest);
    (out.len() <= NAME_BYTES_MAX && !out.chars().any(char::is_control)).then_some(out)
}

fn split_once(bytes: &[u8], sep: u8) -> Option<(&[u8], &[u8])> {
    let at = memchr::memchr(sep, bytes)?;
    Some((&bytes[..at], &bytes[at + 1..]))
}

/// Fuzzing entry: both parsers over any bytes. Never panics.
#[doc(hidden)]
pub fn fuzz_bearer_responses(data: &[u8]) {
    for mechanism in [BearerMechanism::OAuthBearer, BearerMechanism::XOAuth2] {
        if let Ok(response) = mechanism.parse(data) {
            assert!(!response.token.is_empty());
            assert!(response.user.len() <= NAME_BYTES_MAX);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oauthbearer_messages() {
        let ok: &[(&[u8], &str, &[u8])] = &[
            (
                b"n,a=alice@example.net,\x01host=pop.example.net\x01port=110\x01auth=Bearer abc.def-_.ghi\x01\x01",
                "alice@example.net",
                b"abc.def-_.ghi",
            ),
            (b"n,,\x01auth=Bearer tok\x01\x01", "", b"tok"),
            (b"y,,\x01auth=bearer  tok==\x01\x01", "", b"tok=="),
            (b"n,a=a=2Cb=3Dc,\x01auth=Bearer t\x01\x01", "a,b=c", b"t"),
        ];
        for (msg, user, token) in ok {
            let r = parse_oauthbearer(msg).unwrap();
            assert_eq!((r.user.as_str(), r.token), (*user, *token));
        }
        let bad: &[&[u8]] = &[
            b"",
            b"\x01",
            b"n,,",
            b"n,,\x01\x01",
            b"n,,\x01auth=Bearer tok\x01",
            b"n,,auth=Bearer tok\x01\x01",
            b"x,,\x01auth=Bearer tok\x01\x01",
            b"n,b=alice,\x01auth=Bearer tok\x01\x01",
            b"n,a=,\x01auth=Bearer tok\x01\x01",
            b"n,a=x=41,\x01auth=Bearer tok\x01\x01",
            b"n,,\x01auth=Basic dXNlcjpwYXNz\x01\x01",
            b"n,,\x01auth=Bearer\x01\x01",
            b"n,,\x01auth=Bearer \x01\x01",
            b"n,,\x01auth=Bearer t\x01auth=Bearer u\x01\x01",
            b"n,,\x01auth=Bearer t o\x01\x01",
            b"n,,\x01host\x01auth=Bearer t\x01\x01",
            b"n,,\x01ho-st=x\x01auth=Bearer t\x01\x01",
            b"n,,\x01host=\x00\x01auth=Bearer t\x01\x01",
        ];
        for msg in bad {
            assert_eq!(
                parse_oauthbearer(msg),
                Err(BearerError::Malformed),
                "{msg:?}"
            );
        }
        assert_eq!(
            parse_oauthbearer(b"p=tls-unique,,\x01auth=Bearer t\x01\x01"),
            Err(BearerError::ChannelBinding)
        );
    }

    #[test]
    fn xoauth2_messages() {
        let r = parse_xoauth2(b"user=bob@example.net\x01auth=Bearer ya29.tok\x01\x01").unwrap();
        assert_eq!(
            (r.user.as_str(), r.token),
            ("bob@example.net", &b"ya29.tok"[..])
        );
        for msg in [
            &b"auth=Bearer t\x01\x01"[..],
            b"user=\x01auth=Bearer t\x01\x01",
            b"user=bob\x01\x01",
            b"user=bob\x01auth=Bearer t\x01",
            b"user=\xff\x01auth=Bearer t\x01\x01",
        ] {
            assert!(parse_xoauth2(msg).is_err(), "{msg:?}");
        }
    }

    #[test]
    fn debug_hides_the_token() {
        let r = parse_xoauth2(b"user=bob\x01auth=Bearer SECRET\x01\x01").unwrap();
        assert!(!format!("{r:?}").contains("SECRET"));
    }

    #[test]
    fn error_challenges_are_json() {
        for m in [BearerMechanism::OAuthBearer, BearerMechanism::XOAuth2] {
            let v: serde_json::Value = serde_json::from_slice(m.error_challenge()).unwrap();
            assert!(v["status"].is_string());
        }
    }

    #[test]
    fn the_fuzz_entry_takes_any_bytes() {
        for data in [&b""[..], b"n,,\x01auth=Bearer t\x01\x01", &[0x01; 40]] {
            fuzz_bearer_responses(data);
        }
    }
}
