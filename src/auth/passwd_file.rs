//! Dovecot's passwd-file format, parsed from bytes into entries. Pure: no
//! files, no clocks, no logging; problems come back as values with their line
//! numbers so the caller decides how to report them.
//!
//! `user:password:uid:gid:gecos:home:shell:extra_fields`, as Dovecot reads it
//! (checked against Dovecot 2.3.19's auth process):
//! - Blank lines, lines starting with `#` (we also allow white space before
//!   the `#`) and lines starting with `:` are skipped.
//! - Fields may be missing from the right. uid, gid, gecos and shell are
//!   ignored; an empty home is no home. The home is not %-expanded.
//! - Everything after the shell is re-joined with `:` and split on spaces
//!   into `key=value` (or bare `key`) extra fields, so values may hold `:`
//!   (`userdb_mail=maildir:/x`). The old format, an empty eighth field
//!   followed by a mail location, becomes `userdb_mail=<location>`.
//! - Extra field values are %-expanded for the user: `%u`, `%n`, `%d`,
//!   `%s`, `%h`, `%%`, the long forms `%{user}`, `%{username}`,
//!   `%{domain}`, `%{service}`, `%{home}`, and the `L`/`U` case modifiers.
//!   An unknown variable fails the user, as it fails Dovecot's lookup.
//! - `password[13]` and `password[34]` (libpam-pwdfile) mean CRYPT and
//!   PLAIN-MD5. No password, or an empty one, matches nothing, unless the
//!   `nopassword` extra field is set, which then accepts any password.
//!   `nopassword` with a non-empty password is ignored (Dovecot logs it).
//! - A user defined twice keeps the first definition.
//! - Logins are lower-cased before lookup, so a name with upper-case ASCII
//!   letters can never log in; we report and skip it.

use std::collections::HashMap;
use std::collections::hash_map::Entry as MapEntry;
use std::fmt;
use std::path::PathBuf;

use super::scheme::{SchemeProblem, StoredPassword};
use super::username::valid_username;

/// The service name `%s` expands to.
const SERVICE: &str = "pop3";

/// One user of the passwd-file.
#[derive(Debug)]
pub(crate) struct Entry {
    /// 1-based line number, for messages.
    pub(crate) line: usize,
    pub(crate) password: Password,
    pub(crate) home: Option<PathBuf>,
    /// In file order, values already %-expanded.
    pub(crate) extra: Vec<(String, String)>,
    /// `nologin`: the password is checked, but the login is refused.
    pub(crate) nologin: bool,
    /// `fail`: the login is refused whatever the password.
    pub(crate) fail: bool,
}

/// What a login is checked against.
#[derive(Debug)]
pub(crate) enum Password {
    /// No password, or an empty one: nothing matches.
    Locked,
    /// `nopassword` with an empty password: anything matches.
    Any,
    Stored(StoredPassword),
}

/// A parsed passwd-file.
#[derive(Debug, Default)]
pub(crate) struct Parsed {
    pub(crate) users: HashMap<String, Entry>,
    /// In line order.
    pub(crate) problems: Vec<Problem>,
}

/// Something wrong on one line. Holds no part of the password.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Problem {
    pub(crate) line: usize,
    pub(crate) kind: ProblemKind,
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ProblemKind {
    /// Skipped: the line is not UTF-8.
    NotUtf8,
    /// Skipped: the line has no user name (it starts with `:`).
    NoUserName,
    /// Skipped: the user name fails [`valid_username`].
    InvalidUserName,
    /// Skipped: upper-case ASCII in the name, which no login can match.
    UpperCaseUserName,
    /// Skipped: the user was already defined on `first_line`.
    Duplicate { first_line: usize },
    /// Skipped: the password field cannot be used.
    Password(SchemeProblem),
    /// Skipped: an extra field uses a %variable we cannot expand.
    UnknownVariable,
    /// Kept: `nopassword` is ignored because the password is not empty.
    NopasswordIgnored,
    /// Kept: `nopassword` with an empty password accepts any password.
    AcceptsAnyPassword,
}

impl ProblemKind {
    /// Whether the line was left out of the passdb.
    pub(crate) fn skips_line(&self) -> bool {
        !matches!(
            self,
            ProblemKind::NopasswordIgnored | ProblemKind::AcceptsAnyPassword
        )
    }
}

impl fmt::Display for ProblemKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProblemKind::NotUtf8 => f.write_str("line is not UTF-8"),
            ProblemKind::NoUserName => f.write_str("no user name"),
            ProblemKind::InvalidUserName => f.write_str("invalid user name"),
            ProblemKind::UpperCaseUserName => f.write_str(
                "user name has upper-case letters; logins are lower-cased, so it can never log in",
            ),
            ProblemKind::Duplicate { first_line } => {
                write!(
                    f,
                    "user already defined on line {first_line}; the first definition is kept"
                )
            }
            ProblemKind::Password(problem) => problem.fmt(f),
            ProblemKind::UnknownVariable => f.write_str("extra field uses an unknown %variable"),
            ProblemKind::NopasswordIgnored => {
                f.write_str("nopassword is ignored because the password is not empty")
            }
            ProblemKind::AcceptsAnyPassword => {
                f.write_str("nopassword with an empty password: any password is accepted")
            }
        }
    }
}

/// Parses a whole passwd-file.
pub(crate) fn parse(text: &[u8]) -> Parsed {
    let mut parsed = Parsed::default();
    for (index, raw) in text.split(|&b| b == b'\n').enumerate() {
        let line = index + 1;
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let outcome = match std::str::from_utf8(raw) {
            Ok(text) => parse_line(line, text, &mut parsed.problems),
            Err(_) => Err(ProblemKind::NotUtf8),
        };
        match outcome {
            Ok(None) => {}
            Ok(Some((name, entry))) => insert(&mut parsed, name, entry),
            Err(kind) => parsed.problems.push(Problem { line, kind }),
        }
    }
    parsed
}

fn insert(parsed: &mut Parsed, name: String, entry: Entry) {
    match parsed.users.entry(name) {
        MapEntry::Vacant(slot) => {
            slot.insert(entry);
        }
        MapEntry::Occupied(first) => {
            let kind = ProblemKind::Duplicate {
                first_line: first.get().line,
            };
            parsed.problems.push(Problem {
                line: entry.line,
                kind,
            });
        }
    }
}

/// One line: `Ok(None)` for comments and blank lines. Warnings about a line
/// that is kept go to `problems`; the reason a line is skipped is the `Err`.
fn parse_line(
    line: usize,
    text: &str,
    problems: &mut Vec<Problem>,
) -> Result<Option<(String, Entry)>, ProblemKind> {
    let trimmed = text.trim_start();
    if trimmed.is_empty() || trimmed.starts_with('#') {
        return Ok(None);
    }
    let fields: Vec<&str> = text.split(':').collect();
    let name = fields[0];
    if name.is_empty() {
        return Err(ProblemKind::NoUserName);
    }
    if !valid_username(name.as_bytes()) {
        return Err(ProblemKind::InvalidUserName);
    }
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(ProblemKind::UpperCaseUserName);
    }
    let home = fields
        .get(5)
        .filter(|home| !home.is_empty())
        .map(PathBuf::from);
    let extra = expand_all(
        extra_fields(fields.get(7..).unwrap_or(&[])),
        name,
        home.as_ref(),
    )?;
    let has = |key: &str| extra.iter().any(|(k, _)| k == key);
    let (nopassword, nologin, fail) = (has("nopassword"), has("nologin"), has("fail"));
    let field = password_field(fields.get(1).copied());
    let password = match field {
        _ if nopassword && field.as_deref().is_none_or(is_empty_after_scheme) => {
            problems.push(Problem {
                line,
                kind: ProblemKind::AcceptsAnyPassword,
            });
            Password::Any
        }
        None => Password::Locked,
        Some(field) => {
            if nopassword {
                problems.push(Problem {
                    line,
                    kind: ProblemKind::NopasswordIgnored,
                });
            }
            Password::Stored(StoredPassword::parse(&field).map_err(ProblemKind::Password)?)
        }
    };
    let entry = Entry {
        line,
        password,
        home,
        extra,
        nologin,
        fail,
    };
    Ok(Some((name.to_owned(), entry)))
}

/// The password field made ready for the scheme parser: `None` when it is
/// missing or empty. libpam-pwdfile's `pw[13]` / `pw[34]` become
/// `{CRYPT}pw` / `{PLAIN-MD5}pw`, as in Dovecot.
fn password_field(field: Option<&str>) -> Option<String> {
    let field = field.filter(|f| !f.is_empty())?;
    let bytes = field.as_bytes();
    let len = bytes.len();
    let libpam = len > 4
        && bytes[0] != b'{'
        && bytes[0] != b'$'
        && bytes[len - 1] == b']'
        && bytes[len - 4] == b'[';
    if !libpam {
        return Some(field.to_owned());
    }
    let body = &field[..len - 4];
    Some(match &field[len - 3..len - 1] {
        "34" => format!("{{PLAIN-MD5}}{body}"),
        "56" => format!("{{DIGEST-MD5}}{body}"),
        _ => format!("{{CRYPT}}{body}"),
    })
}

/// `{SCHEME}` with nothing after it: empty for `nopassword` (Dovecot strips
/// the scheme before it checks), though `{PLAIN}` alone is otherwise the
/// empty password.
fn is_empty_after_scheme(field: &str) -> bool {
    field.starts_with('{') && field.find('}') == Some(field.len() - 1)
}

/// The raw `(key, value)` pairs from the fields after the shell.
fn extra_fields(fields: &[&str]) -> Vec<(String, String)> {
    match fields {
        [] => Vec::new(),
        // Old format: an empty field, then a mail location (when the field
        // after the empty one is not empty, as Dovecot checks).
        ["", first, ..] if !first.is_empty() => {
            vec![("userdb_mail".to_owned(), fields[1..].join(":"))]
        }
        ["", ..] => Vec::new(),
        _ => fields
            .join(":")
            .split(' ')
            .filter(|token| !token.is_empty())
            .map(|token| match token.split_once('=') {
                Some((key, value)) => (key.to_owned(), value.to_owned()),
                None => (token.to_owned(), String::new()),
            })
            .collect(),
    }
}

fn expand_all(
    fields: Vec<(String, String)>,
    user: &str,
    home: Option<&PathBuf>,
) -> Result<Vec<(String, String)>, ProblemKind> {
    let home = home
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_default();
    fields
        .into_iter()
        .map(|(key, value)| {
            let value = expand(&value, user, &home).ok_or(ProblemKind::UnknownVariable)?;
            Ok((key, value))
        })
        .collect()
}

/// Dovecot's %-expansion for the variables a passwd-file user has. `None`
/// on a variable we do not know.
fn expand(value: &str, user: &str, home: &str) -> Option<String> {
    if !value.contains('%') {
        return Some(value.to_owned());
    }
    let (local, domain) = user.split_once('@').unwrap_or((user, ""));
    let mut out = String::with_capacity(value.len() + user.len());
    let mut rest = value;
    while let Some(at) = rest.find('%') {
        out.push_str(&rest[..at]);
        rest = &rest[at + 1..];
        let modifier = rest.chars().next().filter(|c| matches!(c, 'L' | 'U'));
        if let Some(m) = modifier {
            rest = &rest[m.len_utf8()..];
        }
        let (name, after) = if let Some(long) = rest.strip_prefix('{') {
            let end = long.find('}')?;
            (&long[..end], &long[end + 1..])
        } else {
            let c = rest.chars().next()?;
            rest.split_at(c.len_utf8())
        };
        let text = match name {
            "%" if modifier.is_none() => "%",
            "u" | "user" => user,
            "n" | "username" => local,
            "d" | "domain" => domain,
            "s" | "service" => SERVICE,
            "h" | "home" => home,
            _ => return None,
        };
        match modifier {
            Some('L') => out.push_str(&text.to_lowercase()),
            Some(_) => out.push_str(&text.to_uppercase()),
            None => out.push_str(text),
        }
        rest = after;
    }
    out.push_str(rest);
    Some(out)
}

#[cfg(test)]
mod tests;
