//! Mail-location templates in the servers' own (Dovecot) syntax, so one string
//! configures the server and the harness: `maildir:/corpus/home/%u/Maildir`.
//!
//! Only what a Maildir path needs is understood: `%u` (the whole user name),
//! `%n` (the part before `@`), `%d` (the part after `@`, empty without one), their
//! long forms `%{user}`, `%{username}`, `%{domain}`, and `%%`. Dovecot options
//! after the path (`:INDEX=…`, `:LAYOUT=…`) are ignored: they do not move mail.
//! Anything else is an error rather than a silently wrong path.

use std::path::PathBuf;

/// Why a template was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplateError {
    /// Only `maildir:` locations are supported.
    NotMaildir,
    /// The path part is empty.
    EmptyPath,
    /// A `%` variable we do not expand (named in the error).
    UnknownVariable(String),
}

impl std::fmt::Display for TemplateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TemplateError::NotMaildir => f.write_str("mail location must start with maildir:"),
            TemplateError::EmptyPath => f.write_str("mail location has an empty path"),
            TemplateError::UnknownVariable(v) => {
                write!(f, "unsupported variable %{v} (use %u, %n, %d)")
            }
        }
    }
}

/// A parsed `maildir:` location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailLocation {
    path: String,
}

impl MailLocation {
    /// Parses `maildir:PATH[:OPTION=VALUE…]`, checking every variable once.
    pub fn parse(text: &str) -> Result<Self, TemplateError> {
        let rest = text
            .strip_prefix("maildir:")
            .ok_or(TemplateError::NotMaildir)?;
        let path = rest.split(':').next().unwrap_or_default();
        if path.is_empty() {
            return Err(TemplateError::EmptyPath);
        }
        let location = MailLocation {
            path: path.to_owned(),
        };
        location.expand("check@example")?;
        Ok(location)
    }

    /// The Maildir of `user`.
    pub fn expand(&self, user: &str) -> Result<PathBuf, TemplateError> {
        let (local, domain) = user.split_once('@').unwrap_or((user, ""));
        let mut out = String::with_capacity(self.path.len() + user.len());
        let mut rest = self.path.as_str();
        while let Some(at) = rest.find('%') {
            out.push_str(&rest[..at]);
            let after = &rest[at + 1..];
            let (name, used) = match after.strip_prefix('{') {
                Some(braced) => {
                    let end = braced
                        .find('}')
                        .ok_or_else(|| TemplateError::UnknownVariable(after.to_owned()))?;
                    (&braced[..end], end + 2)
                }
                None => {
                    let len = after.chars().next().map_or(0, char::len_utf8);
                    (&after[..len], len)
                }
            };
            out.push_str(match name {
                "u" | "user" => user,
                "n" | "username" => local,
                "d" | "domain" => domain,
                "%" => "%",
                other => return Err(TemplateError::UnknownVariable(other.to_owned())),
            });
            rest = &after[used..];
        }
        out.push_str(rest);
        Ok(PathBuf::from(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expand(template: &str, user: &str) -> String {
        let location = MailLocation::parse(template).expect("valid template");
        location.expand(user).unwrap().display().to_string()
    }

    #[test]
    fn variables() {
        let t = "maildir:/corpus/home/%u/Maildir";
        assert_eq!(expand(t, "u0001"), "/corpus/home/u0001/Maildir");
        let t = "maildir:/vmail/%d/%n/Maildir";
        assert_eq!(
            expand(t, "ann@example.org"),
            "/vmail/example.org/ann/Maildir"
        );
        assert_eq!(expand(t, "bob"), "/vmail//bob/Maildir");
        let t = "maildir:/v/%{domain}/%{username}/%{user}/100%%";
        assert_eq!(expand(t, "a@b"), "/v/b/a/a@b/100%");
    }

    #[test]
    fn options_after_the_path_are_ignored() {
        let t = "maildir:/m/%u/Maildir:INDEX=/idx/%u:LAYOUT=fs";
        assert_eq!(expand(t, "x"), "/m/x/Maildir");
    }

    #[test]
    fn refusals() {
        assert_eq!(
            MailLocation::parse("mbox:/m/%u"),
            Err(TemplateError::NotMaildir)
        );
        assert_eq!(
            MailLocation::parse("maildir:"),
            Err(TemplateError::EmptyPath)
        );
        assert_eq!(
            MailLocation::parse("maildir:/m/%h/Maildir"),
            Err(TemplateError::UnknownVariable("h".into()))
        );
        assert!(matches!(
            MailLocation::parse("maildir:/m/%{user"),
            Err(TemplateError::UnknownVariable(_))
        ));
    }
}
