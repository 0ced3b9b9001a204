//! The RFC 2449 capability list, which depends on the session's state and on
//! what the connection allows.

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

/// Writes the whole CAPA reply.
pub fn write(out: &mut Vec<u8>, offer: Offer, authorized: bool) {
    out.extend_from_slice(b"+OK Capability list follows\r\nTOP\r\nUIDL\r\nRESP-CODES\r\nPIPELINING\r\nAUTH-RESP-CODE\r\n");
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
        let mut out = Vec::new();
        write(&mut out, offer, authorized);
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
}
