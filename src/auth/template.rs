//! Dovecot's %-variables in SQL queries, LDAP filters and static fields:
//! `%u` (the whole login), `%n` (before the `@`), `%d` (after it), their long
//! forms `%{user}`, `%{username}`, `%{domain}`, the `L`/`U` case modifiers
//! (`%Lu`, `%{L:user}` is not Dovecot 2.3 syntax and is refused) and `%%`.
//!
//! The user's name never becomes query text. A SQL query is compiled once,
//! at startup, into text with bound-parameter markers (`$1` for PostgreSQL,
//! `?` for MySQL) and the list of values to bind; a variable quoted alone
//! (`'%u'`, `"%u"`) becomes a marker, quotes and all. A variable inside a
//! longer quoted string (`'%n@example.com'`) cannot be bound and is refused.
//! An LDAP filter is expanded with every value escaped per RFC 4515, a DN
//! per RFC 4514. Pure: no I/O.

use std::borrow::Cow;

/// One variable, with its case modifier.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Var {
    part: Part,
    case: Case,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Part {
    User,
    Username,
    Domain,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Case {
    Keep,
    Lower,
    Upper,
}

impl Var {
    /// The value of this variable for the login `user`.
    pub(crate) fn value(self, user: &str) -> String {
        let (local, domain) = user.split_once('@').unwrap_or((user, ""));
        let text = match self.part {
            Part::User => user,
            Part::Username => local,
            Part::Domain => domain,
        };
        match self.case {
            Case::Keep => text.to_owned(),
            Case::Lower => text.to_lowercase(),
            Case::Upper => text.to_uppercase(),
        }
    }
}

/// What follows a `%`: a variable, or a literal `%` (from `%%`).
enum Token {
    Var(Var),
    Percent,
}

/// Parses the variable after a `%`; `rest` starts just after it. Gives the
/// token and the bytes it used.
fn parse_var(rest: &str) -> Result<(Token, usize), String> {
    if rest.starts_with('%') {
        return Ok((Token::Percent, 1));
    }
    let (case, skip) = match rest.chars().next() {
        Some('L') => (Case::Lower, 1),
        Some('U') => (Case::Upper, 1),
        _ => (Case::Keep, 0),
    };
    let body = &rest[skip..];
    let (name, used) = if let Some(long) = body.strip_prefix('{') {
        let end = long.find('}').ok_or_else(|| "unterminated %{".to_owned())?;
        (&long[..end], end + 2)
    } else {
        let c = body
            .chars()
            .next()
            .ok_or_else(|| "% at the end".to_owned())?;
        (&body[..c.len_utf8()], c.len_utf8())
    };
    let part = match name {
        "u" | "user" => Part::User,
        "n" | "username" => Part::Username,
        "d" | "domain" => Part::Domain,
        other => {
            return Err(format!(
                "unknown variable %{other} (known: %u %n %d, %{{user}} %{{username}} %{{domain}}, %%)"
            ));
        }
    };
    Ok((Token::Var(Var { part, case }), skip + used))
}

/// How a SQL server numbers bound parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Markers {
    /// PostgreSQL: `$1`, `$2`, ...
    Dollar,
    /// MySQL: `?` each time.
    Question,
}

/// A SQL query with its variables turned into bound parameters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SqlQuery {
    /// The text sent to the server (markers, no user data).
    pub(crate) text: String,
    /// What to bind to each marker, in order.
    pub(crate) params: Vec<Var>,
}

impl SqlQuery {
    /// Compiles Dovecot's query text.
    pub(crate) fn compile(query: &str, markers: Markers) -> Result<SqlQuery, String> {
        let mut out = SqlQuery {
            text: String::with_capacity(query.len()),
            params: Vec::new(),
        };
        let mut rest = query;
        while let Some(at) = rest.find(['%', '\'', '"']) {
            out.text.push_str(&rest[..at]);
            let c = rest.as_bytes()[at];
            rest = &rest[at + 1..];
            if c == b'%' {
                let (token, used) = parse_var(rest)?;
                rest = &rest[used..];
                out.push(token, markers);
                continue;
            }
            let quote = c as char;
            let end = literal_end(rest, quote)
                .ok_or_else(|| format!("unterminated {quote}-quoted string"))?;
            let literal = &rest[..end];
            rest = &rest[end + 1..];
            out.push_literal(quote, literal, markers)?;
        }
        out.text.push_str(rest);
        Ok(out)
    }

    fn push(&mut self, token: Token, markers: Markers) {
        match token {
            Token::Percent => self.text.push('%'),
            Token::Var(var) => {
                self.params.push(var);
                match markers {
                    Markers::Dollar => {
                        self.text.push('$');
                        self.text.push_str(&self.params.len().to_string());
                    }
                    Markers::Question => self.text.push('?'),
                }
            }
        }
    }

    /// A quoted literal (without its quotes): a lone variable becomes a
    /// marker; otherwise it is kept, with `%%` as `%`, and a variable in it
    /// is an error.
    fn push_literal(&mut self, quote: char, literal: &str, markers: Markers) -> Result<(), String> {
        if let Some(after) = literal.strip_prefix('%')
            && let Ok((token @ Token::Var(_), used)) = parse_var(after)
            && used == after.len()
        {
            self.push(token, markers);
            return Ok(());
        }
        self.text.push(quote);
        let mut rest = literal;
        while let Some(at) = rest.find('%') {
            self.text.push_str(&rest[..at]);
            rest = &rest[at + 1..];
            match parse_var(rest)? {
                (Token::Percent, used) => {
                    self.text.push('%');
                    rest = &rest[used..];
                }
                (Token::Var(_), _) => {
                    return Err(format!(
                        "a variable inside the quoted string {quote}{literal}{quote} cannot be \
                         sent as a bound parameter; quote the variable alone ('%u') or split \
                         the string (CONCAT / ||)"
                    ));
                }
            }
        }
        self.text.push_str(rest);
        self.text.push(quote);
        Ok(())
    }

    /// The values to bind for `user`, in marker order.
    pub(crate) fn values(&self, user: &str) -> Vec<String> {
        self.params.iter().map(|var| var.value(user)).collect()
    }
}

/// Where the quoted literal that starts at `rest` ends (the index of the
/// closing quote); a doubled quote is part of the literal.
fn literal_end(rest: &str, quote: char) -> Option<usize> {
    let bytes = rest.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == quote as u8 {
            if bytes.get(i + 1) == Some(&(quote as u8)) {
                i += 2;
                continue;
            }
            return Some(i);
        }
        i += 1;
    }
    None
}

/// A text with variables, expanded with an escape applied to each value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Template {
    pieces: Vec<Piece>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Piece {
    Text(String),
    Var(Var),
}

impl Template {
    /// Parses the template once, at startup.
    pub(crate) fn parse(text: &str) -> Result<Template, String> {
        let mut pieces = Vec::new();
        let mut literal = String::new();
        let mut rest = text;
        while let Some(at) = rest.find('%') {
            literal.push_str(&rest[..at]);
            let (token, used) = parse_var(&rest[at + 1..])?;
            rest = &rest[at + 1 + used..];
            match token {
                Token::Percent => literal.push('%'),
                Token::Var(var) => {
                    if !literal.is_empty() {
                        pieces.push(Piece::Text(std::mem::take(&mut literal)));
                    }
                    pieces.push(Piece::Var(var));
                }
            }
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            pieces.push(Piece::Text(literal));
        }
        Ok(Template { pieces })
    }

    /// The text for `user`, each value passed through `escape`.
    pub(crate) fn expand(&self, user: &str, escape: fn(&str) -> Cow<'_, str>) -> String {
        let mut out = String::new();
        for piece in &self.pieces {
            match piece {
                Piece::Text(text) => out.push_str(text),
                Piece::Var(var) => out.push_str(&escape(&var.value(user))),
            }
        }
        out
    }
}

/// No escaping (static userdb fields, which are never parsed again).
pub(crate) fn verbatim(value: &str) -> Cow<'_, str> {
    Cow::Borrowed(value)
}

/// RFC 4515 §3: `*`, `(`, `)`, `\` and NUL become `\2a`, `\28`, `\29`,
/// `\5c`, `\00`. Other bytes, UTF-8 included, are valid in a filter value.
pub(crate) fn ldap_filter_escape(value: &str) -> Cow<'_, str> {
    ldap3::ldap_escape(value)
}

/// RFC 4514 §2.4: a value placed in a DN.
pub(crate) fn ldap_dn_escape(value: &str) -> Cow<'_, str> {
    ldap3::dn_escape(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pg(query: &str) -> Result<SqlQuery, String> {
        SqlQuery::compile(query, Markers::Dollar)
    }

    #[test]
    fn the_issue_query_binds_the_quoted_variable() {
        let q = pg("SELECT username AS user, password FROM users WHERE username = '%u'").unwrap();
        assert_eq!(
            q.text,
            "SELECT username AS user, password FROM users WHERE username = $1"
        );
        assert_eq!(q.values("a'b"), ["a'b"]);
        let m = SqlQuery::compile(
            "SELECT password FROM users WHERE userid = \"%n\" AND domain = '%d'",
            Markers::Question,
        )
        .unwrap();
        assert_eq!(
            m.text,
            "SELECT password FROM users WHERE userid = ? AND domain = ?"
        );
        assert_eq!(m.values("bob@example.com"), ["bob", "example.com"]);
    }

    #[test]
    fn long_forms_modifiers_bare_and_percent() {
        let q =
            pg("SELECT 1 WHERE a = %{username} AND b = '%{domain}' AND c = %Lu AND d LIKE 'x%%'")
                .unwrap();
        assert_eq!(
            q.text,
            "SELECT 1 WHERE a = $1 AND b = $2 AND c = $3 AND d LIKE 'x%'"
        );
        assert_eq!(q.values("Bob@Ex.COM"), ["Bob", "Ex.COM", "bob@ex.com"]);
    }

    #[test]
    fn quotes_inside_literals_are_kept() {
        let q = pg("SELECT 'it''s' AS note, password FROM t WHERE u = '%u'").unwrap();
        assert_eq!(
            q.text,
            "SELECT 'it''s' AS note, password FROM t WHERE u = $1"
        );
    }

    #[test]
    fn refused_templates_say_why() {
        for bad in [
            "SELECT 1 WHERE u = '%n@example.com'",
            "SELECT 1 WHERE u = '%u",
            "SELECT 1 WHERE u = %x",
            "SELECT 1 WHERE u = %{user",
            "SELECT 1 WHERE u = %",
        ] {
            assert!(pg(bad).is_err(), "{bad}");
        }
        assert!(
            pg("SELECT 1 WHERE u = '%n@example.com'")
                .unwrap_err()
                .contains("bound parameter")
        );
    }

    #[test]
    fn ldap_filters_escape_every_special_byte() {
        let t = Template::parse("(&(objectClass=posixAccount)(uid=%u))").unwrap();
        assert_eq!(
            t.expand("a*b(c)d\\e\0f", ldap_filter_escape),
            "(&(objectClass=posixAccount)(uid=a\\2ab\\28c\\29d\\5ce\\00f))"
        );
        assert_eq!(
            t.expand("jos\u{e9}", ldap_filter_escape),
            "(&(objectClass=posixAccount)(uid=jos\u{e9}))"
        );
        let dn = Template::parse("uid=%n,ou=%d").unwrap();
        assert_eq!(dn.expand("a,b+c@x", ldap_dn_escape), "uid=a\\2cb\\2bc,ou=x");
    }
}
