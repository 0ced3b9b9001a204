//! Reply text, written into the caller's send buffer without allocating.
//!
//! Wording follows Dovecot where clients or operators might match on it
//! (e.g. `-ERR [AUTH] Authentication failed.`), and RFC 3206 response codes.

/// Appends `n` in decimal.
pub fn push_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// `+OK text\r\n` (or `+OK\r\n` for empty text).
pub fn ok(out: &mut Vec<u8>, text: &str) {
    out.extend_from_slice(b"+OK");
    if !text.is_empty() {
        out.push(b' ');
        out.extend_from_slice(text.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
}

/// `-ERR text\r\n`; the text carries any `[CODE]` itself.
pub fn err(out: &mut Vec<u8>, text: &str) {
    out.extend_from_slice(b"-ERR ");
    out.extend_from_slice(text.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// `-ERR There's no message N.` — Dovecot's wording.
pub fn no_such_message(out: &mut Vec<u8>, n: u32) {
    out.extend_from_slice(b"-ERR There's no message ");
    push_u64(out, u64::from(n));
    out.extend_from_slice(b".\r\n");
}

/// `a b\r\n` — one scan listing line (STAT reply body, LIST line).
pub fn pair_line(out: &mut Vec<u8>, prefix: &[u8], a: u64, b: u64) {
    out.extend_from_slice(prefix);
    push_u64(out, a);
    out.push(b' ');
    push_u64(out, b);
    out.extend_from_slice(b"\r\n");
}

/// `n messages (m octets)\r\n`, the RFC 1939 wording of LIST and RSET.
pub fn messages_octets(out: &mut Vec<u8>, prefix: &[u8], n: u64, m: u64) {
    out.extend_from_slice(prefix);
    push_u64(out, n);
    out.extend_from_slice(b" messages (");
    push_u64(out, m);
    out.extend_from_slice(b" octets)\r\n");
}

/// `n uidl\r\n` — one unique-id listing line.
pub fn uidl_line(out: &mut Vec<u8>, prefix: &[u8], n: u64, uidl: &[u8]) {
    out.extend_from_slice(prefix);
    push_u64(out, n);
    out.push(b' ');
    out.extend_from_slice(uidl);
    out.extend_from_slice(b"\r\n");
}

/// The end of a multi-line reply.
pub const END: &[u8] = b".\r\n";

/// Fixed replies, so each wording lives in one place.
pub mod text {
    /// A failed login, whatever the reason (unknown user or wrong password).
    pub const AUTH_FAILED: &str = "[AUTH] Authentication failed.";
    /// The mailbox is held by another session.
    pub const IN_USE: &str = "[IN-USE] Mailbox is locked by another POP3 session.";
    /// RFC 2449 §8.1.1: the user's last login is more recent than their
    /// LOGIN-DELAY.
    pub const LOGIN_DELAY: &str =
        "[LOGIN-DELAY] Minimum time between logins has not passed, try again later.";
    /// Disk or other transient trouble; the cause is in the log.
    pub const SYS_TEMP: &str = "[SYS/TEMP] Temporary server failure, try again later.";
    /// A command that exists but not in this state.
    pub const WRONG_STATE: &str = "Command not valid in this state.";
    /// The message was marked by DELE.
    pub const DELETED: &str = "Message is deleted.";
    /// Too many bad commands: the connection closes.
    pub const TOO_MANY_BAD: &str = "Too many bad commands, closing.";
    /// A client kept talking without logging in.
    pub const TOO_MANY_BEFORE_LOGIN: &str = "Too many commands before login, closing.";
    /// The server is going down.
    pub const SHUTTING_DOWN: &str = "[SYS/TEMP] Server shutting down.";
    /// The client was silent too long.
    pub const TIMEOUT: &str = "Disconnected for inactivity.";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers() {
        for n in [0u64, 7, 10, 99, 100, 12345, u64::MAX] {
            let mut out = Vec::new();
            push_u64(&mut out, n);
            assert_eq!(out, n.to_string().into_bytes());
        }
    }

    #[test]
    fn lines() {
        let mut out = Vec::new();
        ok(&mut out, "");
        ok(&mut out, "2 320");
        err(&mut out, text::IN_USE);
        no_such_message(&mut out, 9);
        pair_line(&mut out, b"", 1, 120);
        uidl_line(&mut out, b"+OK ", 2, b"abc");
        assert_eq!(
            out,
            b"+OK\r\n+OK 2 320\r\n-ERR [IN-USE] Mailbox is locked by another POP3 session.\r\n\
              -ERR There's no message 9.\r\n1 120\r\n+OK 2 abc\r\n"
        );
    }
}
