//! The RFC 2449 capability list, which depends on the session's state and on
//! what the connection allows, and the site policy it announces
//! (LOGIN-DELAY, §6.5, and EXPIRE, §6.7).

use std::fmt;

/// What the connection may offer; fixed per connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Offer {
    /// USER/PASS and SASL PLAIN are allowed on this connection.
    pub plaintext_auth: bool,
    /// STLS can be started (a certificate is configured and TLS is not on yet).
    pub stls: bool,
    /// OAUTHBEARER and XOAUTH2 are configured (`[auth.oauth]`). They are
    /// offered where plaintext logins are: a bearer token is a password
    /// that must not cross the network in clear (RFC 7628 §5).
    pub oauth: bool,
}

impl Offer {
    /// The SASL mechanisms of this connection, as CAPA and `AUTH` list them.
    pub fn mechanisms(self) -> impl Iterator<Item = &'static str> {
        let plaintext = self.plaintext_auth;
        let oauth = plaintext && self.oauth;
        [
            ("PLAIN", plaintext),
            // SCRAM never shows the password, so it is offered on any connection.
            ("SCRAM-SHA-256", true),
            ("OAUTHBEARER", oauth),
            ("XOAUTH2", oauth),
        ]
        .into_iter()
        .filter_map(|(name, on)| on.then_some(name))
    }
}

/// RFC 2449 §6.7: how long a retrieved message may stay on the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expire {
    /// `EXPIRE n`: a message retrieved at least `n` days ago is deleted at
    /// the end of a later session (`0`: at the end of the session that
    /// retrieved it).
    Days(u32),
    /// `EXPIRE NEVER`: nothing is ever deleted by policy.
    Never,
}

/// A policy value that does not parse.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadPolicyValue {
    /// The value as given.
    pub value: String,
    /// What was expected instead.
    pub expected: &'static str,
}

impl fmt::Display for BadPolicyValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: expected {}", self.value, self.expected)
    }
}

impl Expire {
    /// Days beyond which a value is refused (about 27 years; also keeps
    /// `days * 86400` far from overflow).
    pub const DAYS_MAX: u32 = 10_000;

    /// `never` (any case) or a whole number of days up to [`Self::DAYS_MAX`].
    pub fn parse(text: &str) -> Result<Expire, BadPolicyValue> {
        let text = text.trim();
        if text.eq_ignore_ascii_case("never") {
            return Ok(Expire::Never);
        }
        match text.parse::<u32>() {
            Ok(days) if days <= Expire::DAYS_MAX => Ok(Expire::Days(days)),
            _ => Err(BadPolicyValue {
                value: text.to_owned(),
                expected: "a whole number of days (at most 10000) or \"never\"",
            }),
        }
    }

    /// The retention in seconds, or `None` for NEVER.
    pub fn secs(self) -> Option<u64> {
        match self {
            Expire::Days(days) => Some(u64::from(days) * 86_400),
            Expire::Never => None,
        }
    }
}

/// The RFC 2449 policy in effect: the site's (from the configuration) or,
/// after login, the user's (the site's with the user's overrides).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SitePolicy {
    /// LOGIN-DELAY: seconds from one login to the next; 0 is off (not
    /// announced, not enforced).
    pub login_delay_secs: u32,
    /// EXPIRE; `None` is not announced and nothing is deleted by policy.
    pub expire: Option<Expire>,
}

impl SitePolicy {
    /// Seconds beyond which a login delay is refused (one day).
    pub const LOGIN_DELAY_SECS_MAX: u32 = 86_400;

    /// A login delay: a whole number of seconds up to
    /// [`Self::LOGIN_DELAY_SECS_MAX`].
    pub fn parse_login_delay(text: &str) -> Result<u32, BadPolicyValue> {
        match text.trim().parse::<u32>() {
            Ok(secs) if secs <= SitePolicy::LOGIN_DELAY_SECS_MAX => Ok(secs),
            _ => Err(BadPolicyValue {
                value: text.trim().to_owned(),
                expected: "a whole number of seconds (at most 86400)",
            }),
        }
    }

    /// True when QUIT must go through UPDATE even with nothing marked:
    /// retrievals are recorded and old ones expire.
    pub fn expires(&self) -> bool {
        matches!(self.expire, Some(Expire::Days(_)))
    }

    /// Writes the LOGIN-DELAY and EXPIRE lines. Before login (`per_user`)
    /// the site's values carry RFC 2449's `USER` argument: a user's
    /// database entry may override them, and the client learns its own
    /// values from CAPA after login.
    fn write(&self, out: &mut Vec<u8>, per_user: bool) {
        let suffix: &[u8] = if per_user { b" USER\r\n" } else { b"\r\n" };
        if self.login_delay_secs > 0 {
            out.extend_from_slice(b"LOGIN-DELAY ");
            super::reply::push_u64(out, u64::from(self.login_delay_secs));
            out.extend_from_slice(suffix);
        }
        match self.expire {
            Some(Expire::Days(days)) => {
                out.extend_from_slice(b"EXPIRE ");
                super::reply::push_u64(out, u64::from(days));
                out.extend_from_slice(suffix);
            }
            Some(Expire::Never) => {
                out.extend_from_slice(b"EXPIRE NEVER");
                out.extend_from_slice(suffix);
            }
            None => {}
        }
    }
}

/// Writes the whole CAPA reply: before login with the site's `policy`,
/// after login with the user's.
pub fn write(out: &mut Vec<u8>, offer: Offer, authorized: bool, policy: &SitePolicy) {
    out.extend_from_slice(b"+OK Capability list follows\r\nTOP\r\nUIDL\r\nRESP-CODES\r\nPIPELINING\r\nAUTH-RESP-CODE\r\n");
    policy.write(out, !authorized);
    // RFC 2449 §6: USER and SASL describe the AUTHORIZATION state only.
    if !authorized {
        if offer.plaintext_auth {
            out.extend_from_slice(b"USER\r\n");
        }
        out.extend_from_slice(b"SASL");
        for mechanism in offer.mechanisms() {
            out.push(b' ');
            out.extend_from_slice(mechanism.as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        if offer.stls {
            out.extend_from_slice(b"STLS\r\n");
        }
    }
    // RFC 6856: UTF8 in both states. Its USER argument says USER/PASS take
    // UTF-8 names and passwords, so, like USER itself (RFC 2449 §6), it is
    // shown only where USER is.
    if offer.plaintext_auth && !authorized {
        out.extend_from_slice(b"UTF8 USER\r\n");
    } else {
        out.extend_from_slice(b"UTF8\r\n");
    }
    out.extend_from_slice(b"LANG\r\n");
    out.extend_from_slice(b"IMPLEMENTATION shardpop\r\n.\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn capa(offer: Offer, authorized: bool) -> String {
        capa_with(offer, authorized, &SitePolicy::default())
    }

    fn capa_with(offer: Offer, authorized: bool, policy: &SitePolicy) -> String {
        let mut out = Vec::new();
        write(&mut out, offer, authorized, policy);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn lists_depend_on_state_and_offer() {
        let all = Offer {
            plaintext_auth: true,
            stls: true,
            oauth: false,
        };
        let before = capa(all, false);
        for tag in [
            "TOP",
            "UIDL",
            "RESP-CODES",
            "PIPELINING",
            "AUTH-RESP-CODE",
            "USER",
            "SASL PLAIN SCRAM-SHA-256",
            "STLS",
            "IMPLEMENTATION shardpop",
        ] {
            assert!(
                before.contains(&format!("\r\n{tag}\r\n")),
                "{tag} missing: {before}"
            );
        }
        assert!(before.starts_with("+OK") && before.ends_with("\r\n.\r\n"));
        let after = capa(all, true);
        assert!(!after.contains("USER") && !after.contains("SASL") && !after.contains("STLS"));
        let none = capa(
            Offer {
                plaintext_auth: false,
                stls: false,
                oauth: true,
            },
            false,
        );
        assert!(!none.contains("USER") && !none.contains("STLS"));
        // OAuth goes where plaintext logins go.
        assert!(none.contains("\r\nSASL SCRAM-SHA-256\r\n") && none.contains("\r\nUTF8\r\n"));
    }

    #[test]
    fn oauth_mechanisms_only_when_configured() {
        let mut offer = Offer {
            plaintext_auth: true,
            stls: false,
            oauth: false,
        };
        let before = capa(offer, false);
        assert!(!before.contains("OAUTHBEARER") && !before.contains("XOAUTH2"));
        offer.oauth = true;
        let before = capa(offer, false);
        assert!(
            before.contains("\r\nSASL PLAIN SCRAM-SHA-256 OAUTHBEARER XOAUTH2\r\n"),
            "{before}"
        );
        // After login: no SASL line, but UTF8 and LANG stay (RFC 6856).
        let after = capa(offer, true);
        assert!(!after.contains("SASL") && !after.contains("OAUTH"));
        assert!(after.contains("\r\nUTF8\r\n") && after.contains("\r\nLANG\r\n"));
    }

    #[test]
    fn policy_lines_carry_user_before_login_only() {
        let offer = Offer {
            plaintext_auth: true,
            stls: false,
            oauth: false,
        };
        let site = SitePolicy {
            login_delay_secs: 900,
            expire: Some(Expire::Days(60)),
        };
        let before = capa_with(offer, false, &site);
        assert!(before.contains("\r\nLOGIN-DELAY 900 USER\r\n"), "{before}");
        assert!(before.contains("\r\nEXPIRE 60 USER\r\n"), "{before}");
        let user = SitePolicy {
            login_delay_secs: 0,
            expire: Some(Expire::Never),
        };
        let after = capa_with(offer, true, &user);
        assert!(!after.contains("LOGIN-DELAY"), "{after}");
        assert!(after.contains("\r\nEXPIRE NEVER\r\n"), "{after}");
        let zero = capa_with(
            offer,
            true,
            &SitePolicy {
                login_delay_secs: 30,
                expire: Some(Expire::Days(0)),
            },
        );
        assert!(
            zero.contains("\r\nLOGIN-DELAY 30\r\nEXPIRE 0\r\n"),
            "{zero}"
        );
        // Off: neither is announced.
        let off = capa(offer, false);
        assert!(
            !off.contains("LOGIN-DELAY") && !off.contains("EXPIRE"),
            "{off}"
        );
    }

    #[test]
    fn policy_values_parse_or_are_refused() {
        let table: &[(&str, Option<Expire>)] = &[
            ("0", Some(Expire::Days(0))),
            ("30", Some(Expire::Days(30))),
            (" 7 ", Some(Expire::Days(7))),
            ("never", Some(Expire::Never)),
            ("NEVER", Some(Expire::Never)),
            ("10000", Some(Expire::Days(10_000))),
            ("10001", None),
            ("-1", None),
            ("", None),
            ("3d", None),
            ("nevermore", None),
        ];
        for (text, want) in table {
            assert_eq!(Expire::parse(text).ok(), *want, "{text:?}");
        }
        assert_eq!(SitePolicy::parse_login_delay("900"), Ok(900));
        assert_eq!(SitePolicy::parse_login_delay("0"), Ok(0));
        assert!(SitePolicy::parse_login_delay("86401").is_err());
        assert!(SitePolicy::parse_login_delay("1.5").is_err());
        assert!(SitePolicy::parse_login_delay("-5").is_err());
        assert_eq!(Expire::Days(2).secs(), Some(172_800));
        assert_eq!(Expire::Never.secs(), None);
    }
}
