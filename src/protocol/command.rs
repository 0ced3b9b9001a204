//! The POP3 command parser: one line of the receive buffer in, a borrowed
//! [`Command`] out. Nothing is allocated and nothing is copied; arguments are
//! slices of the caller's buffer (the shape of httparse).
//!
//! Line framing is part of parsing: a command ends at LF (CRLF per RFC 1939;
//! a bare LF is accepted as Dovecot does, because real clients send it). A line
//! longer than the limit is an error whose `consumed` lets the caller resync at
//! the next LF without ever buffering the rest of it.

use std::fmt;

/// The outcome of parsing when no error occurred.
#[derive(Debug, PartialEq, Eq)]
pub enum Status<T> {
    /// A whole line was parsed.
    Complete(T),
    /// No line end yet and the line is still within the limit: read more.
    Partial,
}

/// A message number as the client sent it. Out-of-range values are kept so
/// the session can answer "no such message" with RFC wording.
pub type MsgNum = u32;

/// One POP3 command, borrowing its arguments from the receive buffer.
#[derive(PartialEq, Eq)]
pub enum Command<'a> {
    /// `USER name`
    User(&'a [u8]),
    /// `PASS secret`: the rest of the line, spaces included (RFC 1939 §7).
    Pass(&'a [u8]),
    /// `APOP name digest`
    Apop {
        /// The mailbox name.
        name: &'a [u8],
        /// The hex MD5 digest.
        digest: &'a [u8],
    },
    /// `AUTH [mechanism [initial-response]]` (RFC 5034).
    Auth {
        /// The SASL mechanism; `None` asks for the list.
        mechanism: Option<&'a [u8]>,
        /// The initial response, still base64.
        initial: Option<&'a [u8]>,
    },
    /// `CAPA` (RFC 2449).
    Capa,
    /// `STLS` (RFC 2595).
    Stls,
    /// `QUIT`
    Quit,
    /// `STAT`
    Stat,
    /// `LIST [msg]`
    List(Option<MsgNum>),
    /// `RETR msg`
    Retr(MsgNum),
    /// `DELE msg`
    Dele(MsgNum),
    /// `NOOP`
    Noop,
    /// `RSET`
    Rset,
    /// `TOP msg n`
    Top(MsgNum, u64),
    /// `UIDL [msg]`
    Uidl(Option<MsgNum>),
    /// `UTF8` (RFC 6856 §2).
    Utf8,
    /// `LANG [language-range]` (RFC 6856 §3); `None` asks for the list.
    Lang(Option<&'a [u8]>),
}

// Secrets never reach a log: PASS, APOP digests and AUTH responses are redacted.
impl fmt::Debug for Command<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::User(name) => write!(f, "User({:?})", String::from_utf8_lossy(name)),
            Command::Pass(_) => f.write_str("Pass(<redacted>)"),
            Command::Apop { name, .. } => {
                write!(f, "Apop({:?}, <redacted>)", String::from_utf8_lossy(name))
            }
            Command::Auth { mechanism, .. } => write!(
                f,
                "Auth({:?}, <redacted>)",
                mechanism.map(String::from_utf8_lossy)
            ),
            Command::Capa => f.write_str("Capa"),
            Command::Stls => f.write_str("Stls"),
            Command::Quit => f.write_str("Quit"),
            Command::Stat => f.write_str("Stat"),
            Command::List(n) => write!(f, "List({n:?})"),
            Command::Retr(n) => write!(f, "Retr({n})"),
            Command::Dele(n) => write!(f, "Dele({n})"),
            Command::Noop => f.write_str("Noop"),
            Command::Rset => f.write_str("Rset"),
            Command::Top(n, m) => write!(f, "Top({n}, {m})"),
            Command::Uidl(n) => write!(f, "Uidl({n:?})"),
            Command::Utf8 => f.write_str("Utf8"),
            Command::Lang(range) => write!(f, "Lang({:?})", range.map(String::from_utf8_lossy)),
        }
    }
}

/// Why a line is not a command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The line exceeds the line limit (RFC 2449 §4: 255 octets).
    LineTooLong,
    /// The keyword is not a POP3 command.
    UnknownCommand,
    /// A required argument is missing, or there are too many.
    BadArguments,
    /// A number is not a plain decimal that fits.
    BadNumber,
    /// The line holds a NUL or another byte no command may carry.
    BadBytes,
}

impl ErrorKind {
    /// The text after `-ERR `.
    pub fn reply_text(self) -> &'static str {
        match self {
            ErrorKind::LineTooLong => "Line too long.",
            ErrorKind::UnknownCommand => "Unknown command.",
            ErrorKind::BadArguments => "Invalid arguments.",
            ErrorKind::BadNumber => "Invalid message number.",
            ErrorKind::BadBytes => "Invalid characters in command.",
        }
    }
}

/// A line that is not a command, and how many bytes to drop to skip it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParseError {
    /// The cause.
    pub kind: ErrorKind,
    /// Bytes of the buffer this error used up (through the LF when there was one).
    pub consumed: usize,
    /// True when the line end has not been seen yet: the caller must keep
    /// discarding input up to and including the next LF.
    pub resync: bool,
}

/// Longest argument RFC 1939 allows (§3: "each argument may be up to 40
/// characters long"); USER names and digests get more room because real
/// deployments use long `user@domain` names.
const ARG_BYTES_MAX: usize = 255;
/// Longest decimal we accept for a message number or line count.
const NUMBER_DIGITS_MAX: usize = 20;

/// Parses one command line from the front of `buf`.
///
/// `line_bytes_max` counts the whole line including its CRLF.
pub fn parse(
    buf: &[u8],
    line_bytes_max: usize,
) -> Result<Status<(Command<'_>, usize)>, ParseError> {
    let window = &buf[..buf.len().min(line_bytes_max)];
    let Some(lf) = memchr::memchr(b'\n', window) else {
        if buf.len() >= line_bytes_max {
            // No line end within the limit. Drop what we have; the caller
            // discards through the next LF.
            let dropped = match memchr::memchr(b'\n', buf) {
                Some(lf) => lf + 1,
                None => buf.len(),
            };
            return Err(ParseError {
                kind: ErrorKind::LineTooLong,
                consumed: dropped,
                resync: dropped == buf.len() && buf.last() != Some(&b'\n'),
            });
        }
        return Ok(Status::Partial);
    };
    let consumed = lf + 1;
    let mut line = &buf[..lf];
    if let Some(stripped) = line.strip_suffix(b"\r") {
        line = stripped;
    }
    let err = |kind| ParseError {
        kind,
        consumed,
        resync: false,
    };
    parse_line(line)
        .map(|cmd| Status::Complete((cmd, consumed)))
        .map_err(err)
}

fn parse_line(line: &[u8]) -> Result<Command<'_>, ErrorKind> {
    if line.iter().any(|&b| b == 0 || b == b'\r' || b == b'\n') {
        return Err(ErrorKind::BadBytes);
    }
    let (keyword, rest) = match memchr::memchr(b' ', line) {
        Some(sp) => (&line[..sp], &line[sp + 1..]),
        None => (line, &line[line.len()..]),
    };
    if keyword.len() != 4 && keyword.len() != 3 {
        return Err(ErrorKind::UnknownCommand);
    }
    let mut kw = [0u8; 4];
    for (dst, src) in kw.iter_mut().zip(keyword) {
        *dst = src.to_ascii_uppercase();
    }
    // PASS keeps its whole argument (RFC 1939 §7 lets passwords hold spaces).
    if &kw == b"PASS" {
        return if rest.is_empty() {
            Err(ErrorKind::BadArguments)
        } else {
            Ok(Command::Pass(rest))
        };
    }
    let mut args = Args::new(rest);
    let cmd = match &kw {
        b"USER" => Command::User(args.required()?),
        b"APOP" => Command::Apop {
            name: args.required()?,
            digest: args.required()?,
        },
        b"AUTH" => Command::Auth {
            mechanism: args.optional()?,
            initial: args.optional()?,
        },
        b"CAPA" => Command::Capa,
        b"STLS" => Command::Stls,
        b"QUIT" => Command::Quit,
        b"STAT" => Command::Stat,
        b"LIST" => Command::List(args.optional()?.map(msg_num).transpose()?),
        b"RETR" => Command::Retr(msg_num(args.required()?)?),
        b"DELE" => Command::Dele(msg_num(args.required()?)?),
        b"NOOP" => Command::Noop,
        b"RSET" => Command::Rset,
        // Three-letter keywords leave the last byte 0; input NULs were refused above.
        b"TOP\0" => Command::Top(msg_num(args.required()?)?, number(args.required()?)?),
        b"UIDL" => Command::Uidl(args.optional()?.map(msg_num).transpose()?),
        b"UTF8" => Command::Utf8,
        b"LANG" => Command::Lang(args.optional()?),
        _ => return Err(ErrorKind::UnknownCommand),
    };
    args.finish()?;
    Ok(cmd)
}

/// Space-separated arguments. Runs of spaces are tolerated (some clients
/// send them); an argument is never empty.
struct Args<'a> {
    rest: &'a [u8],
}

impl<'a> Args<'a> {
    fn new(rest: &'a [u8]) -> Self {
        Args { rest }
    }

    fn optional(&mut self) -> Result<Option<&'a [u8]>, ErrorKind> {
        let start = self
            .rest
            .iter()
            .position(|&b| b != b' ')
            .unwrap_or(self.rest.len());
        let rest = &self.rest[start..];
        if rest.is_empty() {
            self.rest = rest;
            return Ok(None);
        }
        let end = memchr::memchr(b' ', rest).unwrap_or(rest.len());
        let (arg, tail) = rest.split_at(end);
        if arg.len() > ARG_BYTES_MAX {
            return Err(ErrorKind::BadArguments);
        }
        self.rest = tail;
        Ok(Some(arg))
    }

    fn required(&mut self) -> Result<&'a [u8], ErrorKind> {
        self.optional()?.ok_or(ErrorKind::BadArguments)
    }

    fn finish(self) -> Result<(), ErrorKind> {
        if self.rest.iter().all(|&b| b == b' ') {
            Ok(())
        } else {
            Err(ErrorKind::BadArguments)
        }
    }
}

/// A plain decimal: digits only (no sign, no `+`), saturating past `u64::MAX`
/// is not allowed; the line count of TOP may be any u64.
fn number(arg: &[u8]) -> Result<u64, ErrorKind> {
    if arg.is_empty() || arg.len() > NUMBER_DIGITS_MAX || !arg.iter().all(u8::is_ascii_digit) {
        return Err(ErrorKind::BadNumber);
    }
    arg.iter()
        .try_fold(0u64, |n, &d| {
            n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
        })
        .ok_or(ErrorKind::BadNumber)
}

/// A message number: a decimal that fits the mailbox index type. Numbers
/// too large for any mailbox are refused here; 0 and numbers past the end
/// are the session's "no such message".
fn msg_num(arg: &[u8]) -> Result<MsgNum, ErrorKind> {
    MsgNum::try_from(number(arg)?).map_err(|_| ErrorKind::BadNumber)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 255;

    fn complete(input: &[u8]) -> (Command<'_>, usize) {
        match parse(input, MAX) {
            Ok(Status::Complete(c)) => c,
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(input)),
        }
    }

    fn error(input: &[u8]) -> ParseError {
        match parse(input, MAX) {
            Err(e) => e,
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(input)),
        }
    }

    #[test]
    fn every_command_parses() {
        let table: &[(&[u8], Command<'_>)] = &[
            (b"USER alice\r\n", Command::User(b"alice")),
            (b"PASS a b  c\r\n", Command::Pass(b"a b  c")),
            (
                b"APOP bob c4c9\r\n",
                Command::Apop {
                    name: b"bob",
                    digest: b"c4c9",
                },
            ),
            (
                b"AUTH\r\n",
                Command::Auth {
                    mechanism: None,
                    initial: None,
                },
            ),
            (
                b"AUTH PLAIN\r\n",
                Command::Auth {
                    mechanism: Some(b"PLAIN"),
                    initial: None,
                },
            ),
            (
                b"AUTH PLAIN AGFsaWNl\r\n",
                Command::Auth {
                    mechanism: Some(b"PLAIN"),
                    initial: Some(b"AGFsaWNl"),
                },
            ),
            (b"CAPA\r\n", Command::Capa),
            (b"STLS\r\n", Command::Stls),
            (b"QUIT\r\n", Command::Quit),
            (b"STAT\r\n", Command::Stat),
            (b"LIST\r\n", Command::List(None)),
            (b"LIST 7\r\n", Command::List(Some(7))),
            (b"RETR 1\r\n", Command::Retr(1)),
            (b"DELE 12\r\n", Command::Dele(12)),
            (b"NOOP\r\n", Command::Noop),
            (b"RSET\r\n", Command::Rset),
            (b"TOP 3 0\r\n", Command::Top(3, 0)),
            (b"TOP 3 18446744073709551615\r\n", Command::Top(3, u64::MAX)),
            (b"UIDL\r\n", Command::Uidl(None)),
            (b"UIDL 4294967295\r\n", Command::Uidl(Some(u32::MAX))),
            (b"UTF8\r\n", Command::Utf8),
            (b"LANG\r\n", Command::Lang(None)),
            (b"lang en-GB\r\n", Command::Lang(Some(b"en-GB"))),
            (b"LANG *\r\n", Command::Lang(Some(b"*"))),
        ];
        for (input, want) in table {
            let (got, consumed) = complete(input);
            assert_eq!(&got, want, "{:?}", String::from_utf8_lossy(input));
            assert_eq!(consumed, input.len());
        }
    }

    #[test]
    fn keywords_are_case_insensitive_and_bare_lf_is_a_line_end() {
        assert_eq!(complete(b"stat\n"), (Command::Stat, 5));
        assert_eq!(complete(b"ReTr 2\r\n").0, Command::Retr(2));
        assert_eq!(complete(b"top 1 2\n").0, Command::Top(1, 2));
        assert_eq!(complete(b"LIST  3 \r\n").0, Command::List(Some(3)));
    }

    #[test]
    fn partial_until_line_end() {
        assert_eq!(parse(b"", MAX), Ok(Status::Partial));
        assert_eq!(parse(b"STA", MAX), Ok(Status::Partial));
        assert_eq!(parse(b"STAT\r", MAX), Ok(Status::Partial));
    }

    #[test]
    fn pipelined_lines_parse_one_at_a_time() {
        let buf = b"STAT\r\nLIST 1\r\nQUIT\r\n";
        let (c1, n1) = complete(buf);
        let (c2, n2) = complete(&buf[n1..]);
        let (c3, n3) = complete(&buf[n1 + n2..]);
        assert_eq!(
            (c1, c2, c3),
            (Command::Stat, Command::List(Some(1)), Command::Quit)
        );
        assert_eq!(n1 + n2 + n3, buf.len());
    }

    #[test]
    fn bad_lines_are_errors_that_consume_the_line() {
        let table: &[(&[u8], ErrorKind)] = &[
            (b"\r\n", ErrorKind::UnknownCommand),
            (b"FOO\r\n", ErrorKind::UnknownCommand),
            (b"STATS\r\n", ErrorKind::UnknownCommand),
            (b"TOPX 1 1\r\n", ErrorKind::UnknownCommand),
            (b"USER\r\n", ErrorKind::BadArguments),
            (b"USER a b\r\n", ErrorKind::BadArguments),
            (b"PASS\r\n", ErrorKind::BadArguments),
            (b"STAT 1\r\n", ErrorKind::BadArguments),
            (b"RETR\r\n", ErrorKind::BadArguments),
            (b"RETR -1\r\n", ErrorKind::BadNumber),
            (b"RETR +1\r\n", ErrorKind::BadNumber),
            (b"RETR 1x\r\n", ErrorKind::BadNumber),
            (b"RETR 4294967296\r\n", ErrorKind::BadNumber),
            (b"DELE 99999999999999999999999\r\n", ErrorKind::BadNumber),
            (b"TOP 1\r\n", ErrorKind::BadArguments),
            (b"TOP 1 -5\r\n", ErrorKind::BadNumber),
            (b"TOP 1 99999999999999999999\r\n", ErrorKind::BadNumber),
            (b"LIST 1 2\r\n", ErrorKind::BadArguments),
            (b"UTF8 USER\r\n", ErrorKind::BadArguments),
            (b"LANG en de\r\n", ErrorKind::BadArguments),
            (b"ST\0T\r\n", ErrorKind::BadBytes),
            (b"USER a\rb\r\n", ErrorKind::BadBytes),
        ];
        for (input, kind) in table {
            let e = error(input);
            assert_eq!(e.kind, *kind, "{:?}", String::from_utf8_lossy(input));
            assert_eq!(
                e.consumed,
                input.len(),
                "{:?}",
                String::from_utf8_lossy(input)
            );
            assert!(!e.resync);
        }
    }

    #[test]
    fn overlong_line_without_end_asks_for_resync() {
        let buf = vec![b'A'; 300];
        let e = error(&buf);
        assert_eq!(
            e,
            ParseError {
                kind: ErrorKind::LineTooLong,
                consumed: 300,
                resync: true
            }
        );
    }

    #[test]
    fn overlong_line_with_end_in_buffer_is_skipped_whole() {
        let mut buf = vec![b'A'; 300];
        buf.extend_from_slice(b"\r\nSTAT\r\n");
        let e = error(&buf);
        assert_eq!(e.kind, ErrorKind::LineTooLong);
        assert_eq!(e.consumed, 302);
        assert!(!e.resync);
        assert_eq!(complete(&buf[e.consumed..]).0, Command::Stat);
    }

    #[test]
    fn line_at_the_limit_parses() {
        let mut line = b"USER ".to_vec();
        line.resize(MAX - 2, b'u');
        line.extend_from_slice(b"\r\n");
        assert_eq!(line.len(), MAX);
        assert!(
            matches!(parse(&line, MAX), Ok(Status::Complete((Command::User(_), n))) if n == MAX)
        );
        let mut longer = line.clone();
        longer.insert(6, b'u');
        assert_eq!(error(&longer).kind, ErrorKind::LineTooLong);
    }

    #[test]
    fn debug_redacts_secrets() {
        let shown = format!("{:?}", complete(b"PASS hunter2\r\n").0);
        assert!(!shown.contains("hunter2"), "{shown}");
        let shown = format!("{:?}", complete(b"AUTH PLAIN c2VjcmV0\r\n").0);
        assert!(!shown.contains("c2VjcmV0"), "{shown}");
    }

    #[test]
    fn every_byte_value_in_a_keyword_is_handled() {
        for b in 0..=255u8 {
            let line = [b'S', b'T', b'A', b, b'\r', b'\n'];
            let result = parse(&line, MAX);
            if b.eq_ignore_ascii_case(&b'T') {
                assert_eq!(result, Ok(Status::Complete((Command::Stat, 6))));
            } else {
                assert!(result.is_err() || b == b'\n', "byte {b}: {result:?}");
            }
        }
    }
}
