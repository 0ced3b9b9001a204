//! POP3 replies as a client reads them: status lines (`+OK …` / `-ERR …`) and the
//! lines of a multi-line listing (`LIST`, `UIDL`). Pure functions over bytes; the
//! multi-line framing itself (dot-stuffing, the final `.CRLF`) is `unstuff`'s job.
//!
//! The parser follows httparse: it borrows from the caller's buffer and says
//! `Partial` until a whole line is there, then `Complete` with the bytes consumed.

use memchr::memchr;

/// The longest status line we accept, CRLF included. RFC 2449 caps replies at
/// 512 octets; real servers stay far below. Anything longer is a broken peer,
/// and the bound keeps a connection's carry-over buffer small.
pub const STATUS_LINE_BYTES_MAX: usize = 4096;

/// The outcome of a push parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status<T> {
    /// A whole item was parsed; the caller advances by the consumed count inside.
    Complete(T),
    /// More bytes are needed.
    Partial,
}

/// Why a reply could not be read. Each is the peer's fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyError {
    /// No line end within `STATUS_LINE_BYTES_MAX` bytes.
    LineTooLong,
    /// The line starts with neither `+OK` nor `-ERR`.
    NotStatus,
    /// A listing line is not `msg-number SP argument`.
    BadListing,
}

impl std::fmt::Display for ReplyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ReplyError::LineTooLong => "status line too long",
            ReplyError::NotStatus => "line is neither +OK nor -ERR",
            ReplyError::BadListing => "malformed listing line",
        })
    }
}

/// One status line, borrowed from the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusLine<'a> {
    /// `true` for `+OK`, `false` for `-ERR`.
    pub ok: bool,
    /// The text after the status indicator and its space, without the line end.
    pub text: &'a [u8],
}

/// Parses one status line at the start of `buf`.
pub fn parse_status(buf: &[u8]) -> Result<Status<(StatusLine<'_>, usize)>, ReplyError> {
    let Some(lf) = memchr(b'\n', buf) else {
        if buf.len() >= STATUS_LINE_BYTES_MAX {
            return Err(ReplyError::LineTooLong);
        }
        return Ok(Status::Partial);
    };
    if lf + 1 > STATUS_LINE_BYTES_MAX {
        return Err(ReplyError::LineTooLong);
    }
    let line = buf[..lf].strip_suffix(b"\r").unwrap_or(&buf[..lf]);
    let (ok, rest) = if let Some(rest) = line.strip_prefix(b"+OK") {
        (true, rest)
    } else if let Some(rest) = line.strip_prefix(b"-ERR") {
        (false, rest)
    } else {
        return Err(ReplyError::NotStatus);
    };
    let text = match rest {
        [] => rest,
        [b' ', text @ ..] => text,
        _ => return Err(ReplyError::NotStatus),
    };
    Ok(Status::Complete((StatusLine { ok, text }, lf + 1)))
}

/// Reads a leading decimal number from `text`, as in `+OK 12 3456` or `+OK 120 octets`.
fn leading_number(text: &[u8]) -> Option<(u64, &[u8])> {
    let digits = text.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || digits > 19 {
        return None;
    }
    let value = text[..digits]
        .iter()
        .fold(0u64, |acc, &b| acc * 10 + u64::from(b - b'0'));
    Some((value, &text[digits..]))
}

/// Parses the text of a `STAT` reply: `count octets`.
pub fn parse_stat(text: &[u8]) -> Option<(u32, u64)> {
    let (count, rest) = leading_number(text)?;
    let (octets, _) = leading_number(rest.strip_prefix(b" ")?)?;
    Some((u32::try_from(count).ok()?, octets))
}

/// Parses the size a `RETR` reply announces (`+OK 1234 octets`), if it gives one.
/// RFC 1939 does not require it, so `None` is not an error.
pub fn parse_octets(text: &[u8]) -> Option<u64> {
    leading_number(text).map(|(n, _)| n)
}

/// Parses the un-stuffed body of a multi-line `LIST` or `UIDL` reply into
/// `(msg-number, argument)` pairs, in the order the server sent them.
pub fn parse_listing(body: &[u8]) -> Result<Vec<(u32, &[u8])>, ReplyError> {
    let mut entries = Vec::new();
    for line in body.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            continue;
        }
        let (msg, rest) = leading_number(line).ok_or(ReplyError::BadListing)?;
        let arg = rest.strip_prefix(b" ").ok_or(ReplyError::BadListing)?;
        let arg = arg.split(|&b| b == b' ').next().unwrap_or(arg);
        if arg.is_empty() {
            return Err(ReplyError::BadListing);
        }
        let msg = u32::try_from(msg).map_err(|_| ReplyError::BadListing)?;
        entries.push((msg, arg));
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn complete(buf: &[u8]) -> (bool, &[u8], usize) {
        match parse_status(buf).expect("valid status line") {
            Status::Complete((line, used)) => (line.ok, line.text, used),
            Status::Partial => panic!("partial for {buf:?}"),
        }
    }

    #[test]
    fn status_lines() {
        assert_eq!(complete(b"+OK ready\r\n"), (true, &b"ready"[..], 11));
        assert_eq!(complete(b"+OK\r\nrest"), (true, &b""[..], 5));
        assert_eq!(
            complete(b"-ERR [IN-USE] locked\r\n"),
            (false, &b"[IN-USE] locked"[..], 22)
        );
        // A bare LF ends a line too: be liberal in what we accept.
        assert_eq!(complete(b"+OK x\n"), (true, &b"x"[..], 6));
    }

    #[test]
    fn status_partial_at_every_split() {
        let line = b"+OK 2 320\r\n";
        for cut in 0..line.len() {
            assert_eq!(parse_status(&line[..cut]), Ok(Status::Partial), "cut {cut}");
        }
    }

    #[test]
    fn status_errors() {
        assert_eq!(parse_status(b"* OK imap\r\n"), Err(ReplyError::NotStatus));
        assert_eq!(parse_status(b"+OKAY\r\n"), Err(ReplyError::NotStatus));
        let long = vec![b'+'; STATUS_LINE_BYTES_MAX];
        assert_eq!(parse_status(&long), Err(ReplyError::LineTooLong));
    }

    #[test]
    fn stat_and_octets() {
        assert_eq!(parse_stat(b"2 320"), Some((2, 320)));
        assert_eq!(parse_stat(b"0 0"), Some((0, 0)));
        assert_eq!(parse_stat(b"2"), None);
        assert_eq!(parse_stat(b"x 1"), None);
        assert_eq!(parse_octets(b"1234 octets"), Some(1234));
        assert_eq!(parse_octets(b"message follows"), None);
    }

    #[test]
    fn listings() {
        let body = b"1 120\r\n2 5000\r\n";
        assert_eq!(
            parse_listing(body).unwrap(),
            vec![(1, &b"120"[..]), (2, &b"5000"[..])]
        );
        let uidl = b"1 1700000000.M1P2Q3.corpus,S=10,W=12\r\n";
        assert_eq!(
            parse_listing(uidl).unwrap(),
            vec![(1, &b"1700000000.M1P2Q3.corpus,S=10,W=12"[..])]
        );
        assert_eq!(parse_listing(b""), Ok(vec![]));
        assert_eq!(parse_listing(b"1\r\n"), Err(ReplyError::BadListing));
        assert_eq!(parse_listing(b"a b\r\n"), Err(ReplyError::BadListing));
    }
}
