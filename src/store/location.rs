//! Dovecot's `mail_location` syntax, so an operator's existing setting works
//! as it is: `maildir:~/Maildir`, `maildir:/srv/mail/%d/%n`, with `%u`
//! (whole user), `%n` (user part), `%d` (domain), `%h` (home), `%%`, their
//! long forms `%{user}` `%{username}` `%{domain}` `%{home}`, and Dovecot's
//! trailing `:KEY=value` parameters. `:INDEX=DIR` places the mailbox index
//! (see [`super::index`]) under DIR, expanded like the path, so indexes can
//! sit on local SSD while mail sits on NFS; `:INDEX=MEMORY` keeps none.
//! `:INBOX=PATH` is where the INBOX Maildir is (Dovecot's default: the root
//! path), and that is what POP3 serves. `:CONTROL=DIR` is refused: Dovecot
//! keeps `dovecot-uidlist` there, and serving the tree without it would
//! give every message a new UIDL, so every client would fetch all its mail
//! again. The other parameters tune Dovecot's own files and folders other
//! than INBOX, and are ignored.
#![forbid(unsafe_code)]

use std::fmt;
use std::path::{Path, PathBuf};

/// A parsed `mail_location`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MailLocation {
    /// The Maildir served: `:INBOX=` when given, else the root path.
    template: String,
    /// The `:INDEX=` value, unexpanded.
    index: Option<String>,
}

/// Where a user's mailbox index lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IndexDir {
    /// In the Maildir itself (the default).
    Maildir,
    /// In this directory (`:INDEX=DIR`), created when missing.
    At(PathBuf),
    /// Nowhere (`:INDEX=MEMORY`): every login reads the directories.
    Memory,
}

/// A user's Maildir and the place of its index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MailPaths {
    /// The Maildir (holding `cur/`, `new/`, `tmp/`).
    pub maildir: PathBuf,
    /// Where its index lives.
    pub index: IndexDir,
}

/// Why a location cannot be used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LocationError {
    /// Only `maildir:` is supported.
    UnsupportedFormat(String),
    /// An unknown `%` variable.
    UnknownVariable(String),
    /// `~` was used and the user has no home in the passdb.
    NoHome,
    /// The expanded path is relative.
    Relative(PathBuf),
    /// The user name could escape the mail root (`/`, `..`, NUL, control bytes).
    UnsafeUser,
    /// A parameter that would make shardpop serve something other than
    /// what Dovecot serves.
    UnsupportedParameter(String),
}

impl fmt::Display for LocationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LocationError::UnsupportedFormat(s) => {
                write!(f, "mail location {s:?}: only maildir: is supported")
            }
            LocationError::UnknownVariable(v) => write!(f, "unknown mail location variable {v}"),
            LocationError::NoHome => {
                f.write_str("mail location uses ~ or %h but the user has no home")
            }
            LocationError::Relative(p) => write!(f, "mail location expands to relative path {p:?}"),
            LocationError::UnsafeUser => f.write_str("user name could escape the mail root"),
            LocationError::UnsupportedParameter(p) => write!(
                f,
                "mail location parameter {p}: not supported (Dovecot keeps dovecot-uidlist \
                 there; without it every UIDL would change; see docs/migration.md)"
            ),
        }
    }
}

impl std::error::Error for LocationError {}

impl MailLocation {
    /// Parses `maildir:PATH[:KEY=VALUE...]`.
    pub fn parse(s: &str) -> Result<MailLocation, LocationError> {
        let Some(rest) = s.strip_prefix("maildir:") else {
            return Err(LocationError::UnsupportedFormat(s.to_string()));
        };
        let mut parts = rest.split(':');
        let root = parts.next().unwrap_or_default().to_string();
        let params: Vec<&str> = parts.collect();
        if let Some(control) = params.iter().find(|p| p.starts_with("CONTROL=")) {
            return Err(LocationError::UnsupportedParameter((*control).to_string()));
        }
        // A repeated parameter: the last one counts.
        let last = |key: &str| {
            params
                .iter()
                .rev()
                .find_map(|p| p.strip_prefix(key))
                .map(str::to_string)
        };
        let index = last("INDEX=");
        let template = last("INBOX=").filter(|t| !t.is_empty()).unwrap_or(root);
        // Check the variables now so a typo fails at startup, not at login.
        let probe = MailLocation { template, index };
        probe.expand_paths("u@d", Some(Path::new("/h")))?;
        Ok(probe)
    }

    /// The maildir of `user`, whose home (if any) comes from the passdb.
    pub fn expand(&self, user: &str, home: Option<&Path>) -> Result<PathBuf, LocationError> {
        expand_template(&self.template, user, home)
    }

    /// The maildir of `user` and where its index lives (`:INDEX=`).
    pub fn expand_paths(
        &self,
        user: &str,
        home: Option<&Path>,
    ) -> Result<MailPaths, LocationError> {
        let maildir = self.expand(user, home)?;
        let index = match self.index.as_deref() {
            None | Some("") => IndexDir::Maildir,
            Some("MEMORY") => IndexDir::Memory,
            Some(template) => IndexDir::At(expand_template(template, user, home)?),
        };
        Ok(MailPaths { maildir, index })
    }
}

/// Expands one path template for `user`.
fn expand_template(
    template: &str,
    user: &str,
    home: Option<&Path>,
) -> Result<PathBuf, LocationError> {
    let (name, domain) = user.split_once('@').unwrap_or((user, ""));
    // Each part becomes a path component: it must stay one.
    let unsafe_part =
        |p: &str| p == "." || p == ".." || p.bytes().any(|b| b == b'/' || b < 0x20 || b == 0x7f);
    if name.is_empty() || unsafe_part(name) || unsafe_part(domain) {
        return Err(LocationError::UnsafeUser);
    }
    let home_str = home.map(|h| h.to_string_lossy());
    let mut out = String::with_capacity(template.len() + user.len());
    let mut rest = template;
    if let Some(after) = rest.strip_prefix('~') {
        out.push_str(home_str.as_deref().ok_or(LocationError::NoHome)?);
        rest = after;
    }
    while let Some(pct) = rest.find('%') {
        out.push_str(&rest[..pct]);
        let after = &rest[pct + 1..];
        let (var, tail) = if let Some(long) = after.strip_prefix('{') {
            let end = long
                .find('}')
                .ok_or_else(|| LocationError::UnknownVariable(after.to_string()))?;
            (&long[..end], &long[end + 1..])
        } else {
            let len = after.chars().next().map_or(0, char::len_utf8);
            (&after[..len], &after[len..])
        };
        match var {
            "u" | "user" => out.push_str(user),
            "n" | "username" => out.push_str(name),
            "d" | "domain" => out.push_str(domain),
            "h" | "home" => out.push_str(home_str.as_deref().ok_or(LocationError::NoHome)?),
            "%" => out.push('%'),
            other => return Err(LocationError::UnknownVariable(format!("%{other}"))),
        }
        rest = tail;
    }
    out.push_str(rest);
    let path = PathBuf::from(out);
    if path.is_relative() {
        return Err(LocationError::Relative(path));
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expand(template: &str, user: &str, home: Option<&str>) -> Result<PathBuf, LocationError> {
        MailLocation::parse(template)?.expand(user, home.map(Path::new))
    }

    #[test]
    fn inbox_is_served_and_control_is_refused() {
        let paths = MailLocation::parse("maildir:~/Maildir:INBOX=~/Maildir/.INBOX:LAYOUT=fs")
            .unwrap()
            .expand_paths("a", Some(Path::new("/home/a")))
            .unwrap();
        assert_eq!(paths.maildir, PathBuf::from("/home/a/Maildir/.INBOX"));
        assert_eq!(paths.index, IndexDir::Maildir);
        assert_eq!(
            MailLocation::parse("maildir:~/Maildir:INDEX=/idx/%u:CONTROL=/ctl/%u"),
            Err(LocationError::UnsupportedParameter(
                "CONTROL=/ctl/%u".into()
            ))
        );
        assert!(
            LocationError::UnsupportedParameter("CONTROL=/x".into())
                .to_string()
                .contains("dovecot-uidlist")
        );
    }

    #[test]
    fn dovecot_forms() {
        let ok =
            |t, u, h, want: &str| assert_eq!(expand(t, u, h).unwrap(), PathBuf::from(want), "{t}");
        ok(
            "maildir:~/Maildir",
            "a@b.org",
            Some("/home/a"),
            "/home/a/Maildir",
        );
        ok(
            "maildir:/srv/mail/%d/%n",
            "alice@example.com",
            None,
            "/srv/mail/example.com/alice",
        );
        ok("maildir:/srv/%u/Maildir", "bob", None, "/srv/bob/Maildir");
        ok(
            "maildir:/srv/%{domain}/%{username}",
            "c@d",
            None,
            "/srv/d/c",
        );
        ok("maildir:%h/mail", "x", Some("/v/x"), "/v/x/mail");
        ok(
            "maildir:/m/%%/%n:INDEX=/var/idx/%u:LAYOUT=fs",
            "z@q",
            None,
            "/m/%/z",
        );
    }

    #[test]
    fn index_parameter() {
        let paths = |t: &str, u: &str| {
            MailLocation::parse(t)
                .unwrap()
                .expand_paths(u, Some(Path::new("/home/x")))
                .unwrap()
        };
        let p = paths("maildir:/m/%d/%n:INDEX=/var/idx/%d/%n:LAYOUT=fs", "a@b.org");
        assert_eq!(p.maildir, PathBuf::from("/m/b.org/a"));
        assert_eq!(p.index, IndexDir::At(PathBuf::from("/var/idx/b.org/a")));
        assert_eq!(
            paths("maildir:~/Maildir:INDEX=%h/idx", "u").index,
            IndexDir::At(PathBuf::from("/home/x/idx"))
        );
        assert_eq!(paths("maildir:~/M", "u").index, IndexDir::Maildir);
        assert_eq!(
            paths("maildir:~/M:INDEX=MEMORY", "u").index,
            IndexDir::Memory
        );
        assert!(matches!(
            MailLocation::parse("maildir:/m/%u:INDEX=/i/%q"),
            Err(LocationError::UnknownVariable(_))
        ));
        assert!(matches!(
            MailLocation::parse("maildir:/m/%u:INDEX=rel/%u"),
            Err(LocationError::Relative(_))
        ));
        // The index dir is checked for unsafe users like the Maildir.
        let l = MailLocation::parse("maildir:/m/%u:INDEX=/i/%u").unwrap();
        assert_eq!(l.expand_paths("..", None), Err(LocationError::UnsafeUser));
    }

    #[test]
    fn errors() {
        assert!(matches!(
            expand("mbox:~/mail", "a", None),
            Err(LocationError::UnsupportedFormat(_))
        ));
        assert!(matches!(
            MailLocation::parse("maildir:/m/%x"),
            Err(LocationError::UnknownVariable(_))
        ));
        assert_eq!(
            expand("maildir:~/Maildir", "a", None),
            Err(LocationError::NoHome)
        );
        assert!(matches!(
            expand("maildir:rel/%u", "a", None),
            Err(LocationError::Relative(_))
        ));
        for user in ["", "..", "a/b", "x@..", "x@a/b", "@d", "a\nb", "../../etc"] {
            assert_eq!(
                expand("maildir:/srv/%d/%n", user, None),
                Err(LocationError::UnsafeUser),
                "{user:?}"
            );
        }
    }
}
