//! Reply text, written into the caller's send buffer without allocating.
//!
//! Wording follows Dovecot where clients or operators might match on it
//! (e.g. `-ERR [AUTH] Authentication failed.`), and RFC 3206 response codes.

/// "00" to "99": two digits per division, half the divisions of one at a
/// time (a LIST of 20,000 messages writes 40,000 numbers).
const DIGIT_PAIRS: &[u8; 200] = b"\
    0001020304050607080910111213141516171819\
    2021222324252627282930313233343536373839\
    4041424344454647484950515253545556575859\
    6061626364656667686970717273747576777879\
    8081828384858687888990919293949596979899";

/// Writes `n` in decimal into `buf`, ending just before `end`; returns
/// where it starts. `buf[..end]` must have room for 20 digits.
fn digits_before(buf: &mut [u8], mut end: usize, mut n: u64) -> usize {
    while n >= 100 {
        let pair = (n % 100) as usize * 2;
        n /= 100;
        end -= 2;
        buf[end..end + 2].copy_from_slice(&DIGIT_PAIRS[pair..pair + 2]);
    }
    if n >= 10 {
        let pair = n as usize * 2;
        end -= 2;
        buf[end..end + 2].copy_from_slice(&DIGIT_PAIRS[pair..pair + 2]);
    } else {
        end -= 1;
        buf[end] = b'0' + n as u8;
    }
    end
}

/// Appends `n` in decimal.
pub fn push_u64(out: &mut Vec<u8>, n: u64) {
    let mut digits = [0u8; 20];
    let start = digits_before(&mut digits, 20, n);
    out.extend_from_slice(&digits[start..]);
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

/// The longest LIST line: two 20-digit numbers, a space, CRLF.
pub const LIST_LINE_BYTES_MAX: usize = 20 + 1 + 20 + 2;

/// The longest UIDL line: a 20-digit number, a space, a 70-byte unique-id
/// (RFC 1939's limit), CRLF.
pub const UIDL_LINE_BYTES_MAX: usize = 20 + 1 + 70 + 2;

/// `a b\r\n` — one scan listing line (STAT reply body, LIST line),
/// assembled on the stack and appended with one copy.
pub fn pair_line(out: &mut Vec<u8>, prefix: &[u8], a: u64, b: u64) {
    let mut line = [0u8; LIST_LINE_BYTES_MAX];
    let end = LIST_LINE_BYTES_MAX - 2;
    line[end..].copy_from_slice(b"\r\n");
    let mut start = digits_before(&mut line, end, b) - 1;
    line[start] = b' ';
    start = digits_before(&mut line, start, a);
    out.extend_from_slice(prefix);
    out.extend_from_slice(&line[start..]);
}

/// `n messages (m octets)\r\n`, the RFC 1939 wording of LIST and RSET.
pub fn messages_octets(out: &mut Vec<u8>, prefix: &[u8], n: u64, m: u64) {
    out.extend_from_slice(prefix);
    push_u64(out, n);
    out.extend_from_slice(b" messages (");
    push_u64(out, m);
    out.extend_from_slice(b" octets)\r\n");
}

/// `n uidl\r\n` — one unique-id listing line, assembled on the stack and
/// appended with one copy (a unique-id is at most 70 bytes; a longer one,
/// which no store gives, is written piece by piece).
pub fn uidl_line(out: &mut Vec<u8>, prefix: &[u8], n: u64, uidl: &[u8]) {
    out.extend_from_slice(prefix);
    let mut line = [0u8; UIDL_LINE_BYTES_MAX];
    let end = UIDL_LINE_BYTES_MAX - 2;
    let Some(at) = end.checked_sub(uidl.len()).filter(|&at| at > 20) else {
        push_u64(out, n);
        out.push(b' ');
        out.extend_from_slice(uidl);
        out.extend_from_slice(b"\r\n");
        return;
    };
    line[end..].copy_from_slice(b"\r\n");
    line[at..end].copy_from_slice(uidl);
    line[at - 1] = b' ';
    let start = digits_before(&mut line, at - 1, n);
    out.extend_from_slice(&line[start..]);
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
        for n in (0..10_000u64).chain([12345, 100_000, u64::MAX / 7, u64::MAX]) {
            let mut out = Vec::new();
            push_u64(&mut out, n);
            assert_eq!(out, n.to_string().into_bytes());
        }
    }

    #[test]
    fn listing_lines_at_every_length() {
        let long = [b'u'; 70];
        for n in [0u64, 9, 10, 99, 100, 101, 9_999, 20_000, u64::MAX] {
            for len in [1, 2, 40, 69, 70, 71, 200] {
                let uidl = &vec![b'u'; len][..];
                let mut out = Vec::new();
                uidl_line(&mut out, b"+OK ", n, uidl);
                let want = format!("+OK {n} {}\r\n", "u".repeat(len));
                assert_eq!(out, want.as_bytes());
            }
            let mut out = Vec::new();
            pair_line(&mut out, b"", n, u64::MAX - n);
            assert_eq!(out, format!("{n} {}\r\n", u64::MAX - n).into_bytes());
            let mut out = Vec::new();
            uidl_line(&mut out, b"", u64::MAX, &long);
            assert_eq!(out.len(), UIDL_LINE_BYTES_MAX, "the longest line fits");
        }
        let mut out = Vec::new();
        pair_line(&mut out, b"", u64::MAX, u64::MAX);
        assert_eq!(out.len(), LIST_LINE_BYTES_MAX);
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
