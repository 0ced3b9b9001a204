//! The RFC 2449 capability list, which depends on the session's state and on
//! what the connection allows.

/// What the connection may offer; fixed per connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Offer {
    /// USER/PASS and SASL PLAIN are allowed on this connection.
    pub plaintext_auth: bool,
    /// STLS can be started (a certificate is configured and TLS is not on yet).
    pub stls: bool,
}

/// Writes the whole CAPA reply.
pub fn write(out: &mut Vec<u8>, offer: Offer, authorized: bool) {
    out.extend_from_slice(b"+OK Capability list follows\r\nTOP\r\nUIDL\r\nRESP-CODES\r\nPIPELINING\r\nAUTH-RESP-CODE\r\n");
    // RFC 2449 §6: USER and SASL describe the AUTHORIZATION state only.
    if !authorized {
        // SCRAM never shows the password, so it is offered on any connection.
        if offer.plaintext_auth {
            out.extend_from_slice(b"USER\r\nSASL PLAIN SCRAM-SHA-256\r\n");
        } else {
            out.extend_from_slice(b"SASL SCRAM-SHA-256\r\n");
        }
        if offer.stls {
            out.extend_from_slice(b"STLS\r\n");
        }
    }
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
            },
            false,
        );
        assert!(!none.contains("USER") && !none.contains("STLS"));
    }
}
