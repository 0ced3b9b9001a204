//! The LDAP driver (`ldap3`'s synchronous `LdapConn`), behind a [`Pool`].
//!
//! Lookups search `base` with a filter whose variables are escaped per
//! RFC 4515 and map attributes to fields (`pass_attrs`, `user_attrs`:
//! `ldapAttr=field,...`). With `auth_bind` the password is checked by a
//! simple bind as the user's DN on a second pool, whose connections are
//! re-bound on every check; an empty password is refused before it reaches
//! the server, since a bind with one is an anonymous bind that succeeds.

use std::time::Duration;

use ldap3::{LdapConn, LdapConnSettings, LdapError, Scope, SearchEntry};

use super::AuthError;
use super::pool::{Connector, DbError, Pool};
use super::sql::Row;
use super::template::{Template, ldap_dn_escape, ldap_filter_escape};

/// RFC 4511 resultCode invalidCredentials.
const INVALID_CREDENTIALS: u32 = 49;

/// Dovecot's defaults.
pub(crate) const PASS_FILTER_DEFAULT: &str = "(&(objectClass=posixAccount)(uid=%u))";
pub(crate) const PASS_ATTRS_DEFAULT: &str = "uid=user,userPassword=password";
pub(crate) const USER_FILTER_DEFAULT: &str = "(&(objectClass=posixAccount)(uid=%u))";
pub(crate) const USER_ATTRS_DEFAULT: &str = "homeDirectory=home,uidNumber=uid,gidNumber=gid";

/// What an LDAP passdb or userdb is given.
pub(crate) struct LdapSettings<'a> {
    /// For log lines.
    pub(crate) name: String,
    /// Space- or comma-separated URIs, tried in order.
    pub(crate) uris: &'a str,
    pub(crate) dn: Option<&'a str>,
    pub(crate) dnpass: Option<&'a str>,
    pub(crate) base: &'a str,
    pub(crate) scope: Option<&'a str>,
    pub(crate) filter: &'a str,
    pub(crate) attrs: &'a str,
    /// Check passwords by binding (passdb only).
    pub(crate) auth_bind: bool,
    pub(crate) auth_bind_userdn: Option<&'a str>,
    pub(crate) pool_size: usize,
    pub(crate) connect_timeout: Duration,
    pub(crate) query_timeout: Duration,
}

/// One LDAP passdb or userdb.
pub(crate) struct LdapSource {
    pool: Pool<LdapConnector>,
    /// Connections for `auth_bind` checks.
    bind_pool: Option<Pool<LdapConnector>>,
    base: String,
    scope: Scope,
    filter: Template,
    /// `(ldap attribute, field)`.
    attrs: Vec<(String, String)>,
    userdn: Option<Template>,
    query_timeout: Duration,
}

impl LdapSource {
    /// Parses everything; connects nothing.
    pub(crate) fn new(s: &LdapSettings<'_>) -> Result<LdapSource, String> {
        let uris: Vec<String> = s
            .uris
            .split([' ', ','])
            .filter(|u| !u.is_empty())
            .map(str::to_owned)
            .collect();
        if uris.is_empty() {
            return Err("uris: no LDAP server".into());
        }
        for uri in &uris {
            if !uri.starts_with("ldap://") && !uri.starts_with("ldapi://") {
                return Err(format!(
                    "uris: {uri}: only ldap:// and ldapi:// are supported (no TLS to LDAP in this build)"
                ));
            }
        }
        let scope = match s.scope.unwrap_or("subtree") {
            "subtree" | "sub" => Scope::Subtree,
            "onelevel" | "one" => Scope::OneLevel,
            "base" => Scope::Base,
            other => return Err(format!("scope: {other:?} is not subtree, onelevel or base")),
        };
        let connector = |bind: Option<(String, String)>| LdapConnector {
            uris: uris.clone(),
            bind,
            connect_timeout: s.connect_timeout,
            query_timeout: s.query_timeout,
        };
        let bind =
            s.dn.map(|dn| (dn.to_owned(), s.dnpass.unwrap_or("").to_owned()));
        let pool = Pool::new(
            s.name.clone(),
            connector(bind),
            s.pool_size,
            s.connect_timeout,
        );
        let bind_pool = s.auth_bind.then(|| {
            Pool::new(
                format!("{} (auth_bind)", s.name),
                connector(None),
                s.pool_size,
                s.connect_timeout,
            )
        });
        let userdn = s
            .auth_bind_userdn
            .map(Template::parse)
            .transpose()
            .map_err(|e| format!("auth_bind_userdn: {e}"))?;
        Ok(LdapSource {
            pool,
            bind_pool,
            base: s.base.to_owned(),
            scope,
            filter: Template::parse(s.filter).map_err(|e| format!("filter: {e}"))?,
            attrs: parse_attrs(s.attrs)?,
            userdn,
            query_timeout: s.query_timeout,
        })
    }

    /// Whether the user's DN comes from `auth_bind_userdn` (no search).
    pub(crate) fn has_userdn_template(&self) -> bool {
        self.userdn.is_some()
    }

    /// The user's DN from `auth_bind_userdn`.
    pub(crate) fn userdn(&self, user: &str) -> Option<String> {
        self.userdn.as_ref().map(|t| t.expand(user, ldap_dn_escape))
    }

    /// The one entry the filter finds for `user`: its DN and mapped fields.
    /// No entry, or more than one, is `Ok(None)` (more than one is logged:
    /// the filter is ambiguous, and guessing would log in the wrong user).
    pub(crate) fn lookup(&self, user: &str) -> Result<Option<(String, Row)>, AuthError> {
        let filter = self.filter.expand(user, ldap_filter_escape);
        let wanted: Vec<&str> = self.attrs.iter().map(|(a, _)| a.as_str()).collect();
        let entries = self.pool.run(|conn| {
            let (entries, _) = conn
                .with_timeout(self.query_timeout)
                .search(&self.base, self.scope, &filter, &wanted)
                .and_then(|r| r.success())
                .map_err(classify)?;
            Ok(entries)
        })?;
        match entries.len() {
            0 => Ok(None),
            1 => {
                let entry = SearchEntry::construct(entries.into_iter().next().expect("one"));
                Ok(Some((entry.dn.clone(), self.fields(&entry))))
            }
            n => {
                tracing::warn!(
                    user,
                    entries = n,
                    "LDAP filter matches more than one entry; login refused"
                );
                Ok(None)
            }
        }
    }

    /// The mapped attributes of an entry; a multi-valued one gives its
    /// first value.
    fn fields(&self, entry: &SearchEntry) -> Row {
        self.attrs
            .iter()
            .filter_map(|(attr, field)| {
                let values = entry
                    .attrs
                    .iter()
                    .find(|(name, _)| name.eq_ignore_ascii_case(attr))
                    .map(|(_, values)| values)?;
                Some((field.clone(), values.first().cloned()))
            })
            .collect()
    }

    /// Whether `password` binds as `dn`. Refuses an empty password.
    pub(crate) fn bind(&self, dn: &str, password: &[u8]) -> Result<bool, AuthError> {
        let Some(pool) = &self.bind_pool else {
            return Ok(false);
        };
        let Ok(password) = std::str::from_utf8(password) else {
            return Ok(false);
        };
        if password.is_empty() || dn.is_empty() {
            return Ok(false);
        }
        pool.run(|conn| {
            match conn
                .with_timeout(self.query_timeout)
                .simple_bind(dn, password)
            {
                Ok(result) if result.rc == 0 => Ok(true),
                // Unknown DN and wrong password look the same (49 or 32).
                Ok(result) if result.rc == INVALID_CREDENTIALS || result.rc == 32 => Ok(false),
                Ok(result) => Err(DbError::Query(format!("bind: {result}"))),
                Err(e) => Err(classify(e)),
            }
        })
    }
}

/// `uid=user,userPassword=password,mail` → pairs; a bare name maps to a
/// field of the same name.
fn parse_attrs(text: &str) -> Result<Vec<(String, String)>, String> {
    text.split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(|item| {
            let (attr, field) = item.split_once('=').unwrap_or((item, item));
            let (attr, field) = (attr.trim(), field.trim());
            if attr.is_empty() || field.is_empty() || field.contains('%') {
                return Err(format!(
                    "attrs: {item:?} is not ldapAttribute=field (value templates are not supported)"
                ));
            }
            Ok((attr.to_owned(), field.to_ascii_lowercase()))
        })
        .collect()
}

fn classify(error: LdapError) -> DbError {
    match error {
        LdapError::LdapResult { result } => DbError::Query(result.to_string()),
        other => DbError::Broken(other.to_string()),
    }
}

struct LdapConnector {
    uris: Vec<String>,
    /// The DN and password lookups bind as; anonymous without.
    bind: Option<(String, String)>,
    connect_timeout: Duration,
    query_timeout: Duration,
}

impl Connector for LdapConnector {
    type Conn = LdapConn;

    fn hosts(&self) -> usize {
        self.uris.len()
    }

    fn connect(&self, index: usize) -> Result<LdapConn, String> {
        let uri = &self.uris[index];
        let settings = LdapConnSettings::new().set_conn_timeout(self.connect_timeout);
        let mut conn = LdapConn::with_settings(settings, uri).map_err(|e| format!("{uri}: {e}"))?;
        if let Some((dn, password)) = &self.bind {
            conn.with_timeout(self.query_timeout)
                .simple_bind(dn, password)
                .and_then(|r| r.success())
                .map_err(|e| format!("{uri}: bind as {dn}: {e}"))?;
        }
        Ok(conn)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attrs_parse_like_dovecot() {
        assert_eq!(
            parse_attrs("uid=user, userPassword=password,mail").unwrap(),
            vec![
                ("uid".to_owned(), "user".to_owned()),
                ("userPassword".to_owned(), "password".to_owned()),
                ("mail".to_owned(), "mail".to_owned()),
            ]
        );
        assert!(parse_attrs("=home=%{ldap:homeDirectory}").is_err());
    }

    #[test]
    fn settings_are_checked_without_connecting() {
        let settings = |uris| LdapSettings {
            name: "ldap".into(),
            uris,
            dn: None,
            dnpass: None,
            base: "dc=example,dc=com",
            scope: None,
            filter: PASS_FILTER_DEFAULT,
            attrs: PASS_ATTRS_DEFAULT,
            auth_bind: false,
            auth_bind_userdn: None,
            pool_size: 1,
            connect_timeout: Duration::from_secs(1),
            query_timeout: Duration::from_secs(1),
        };
        let source = LdapSource::new(&settings("ldap://127.0.0.1:1 ldap://127.0.0.2:1")).unwrap();
        assert_eq!(source.pool.connector().uris.len(), 2);
        assert!(LdapSource::new(&settings("ldaps://x")).is_err());
        assert!(LdapSource::new(&settings("")).is_err());
    }
}
