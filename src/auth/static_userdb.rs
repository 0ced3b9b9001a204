//! The userdb: after the passdb has proved a user, where their home and mail
//! location come from. `prefetch` (the default) keeps what the passdb gave;
//! `static` sets fixed, %-expanded fields (`uid=vmail gid=vmail
//! home=/srv/mail/%d/%n`); `pgsql` / `mysql` run `user_query`; `ldap`
//! searches `user_filter`. Fields from the userdb win over the passdb's:
//! `home` (or `userdb_home`) is the home, the others are extra fields under
//! their names without the `userdb_` prefix (`mail`, `uid`, `gid`, ...).
//! SQL and LDAP answers are cached like the passdb's.

use std::path::PathBuf;
use std::sync::Arc;

use super::cache::{Cache, Cached};
use super::ldap::LdapSource;
use super::sql::{Row, SqlSource};
use super::template::{Template, verbatim};
use super::{AuthError, UserEntry};

/// Fields a userdb gives: `(name, value)`.
type Fields = Vec<(String, String)>;

/// Where the fields come from.
pub(crate) enum UserSource {
    /// The passdb's own fields.
    Prefetch,
    /// Fixed fields, %-expanded per user.
    Static(Vec<(String, Template)>),
    /// `user_query`.
    Sql(SqlSource),
    /// `user_filter` / `user_attrs`.
    Ldap(LdapSource),
}

/// A userdb.
pub(crate) struct Userdb {
    source: UserSource,
    cache: Option<Cache<Arc<Fields>>>,
}

impl Userdb {
    pub(crate) fn new(source: UserSource, cache: Option<Cache<Arc<Fields>>>) -> Userdb {
        Userdb { source, cache }
    }

    /// Answers from memory (`prefetch` or `static`): no database to ask.
    pub(crate) fn is_in_memory(&self) -> bool {
        matches!(self.source, UserSource::Prefetch | UserSource::Static(_))
    }

    /// The passdb's fields only.
    pub(crate) fn prefetch() -> Userdb {
        Userdb::new(UserSource::Prefetch, None)
    }

    pub(crate) fn flush(&self) {
        if let Some(cache) = &self.cache {
            cache.flush();
        }
    }

    /// The proven user with the userdb's fields over the passdb's.
    /// `Ok(None)` when the userdb does not know the user (logged: the two
    /// databases disagree).
    pub(crate) fn apply(&self, mut entry: UserEntry) -> Result<Option<UserEntry>, AuthError> {
        let fields = match &self.source {
            UserSource::Prefetch => return Ok(Some(entry)),
            UserSource::Static(fields) => Arc::new(
                fields
                    .iter()
                    .map(|(k, t)| (k.clone(), t.expand(&entry.user, verbatim)))
                    .collect(),
            ),
            UserSource::Sql(_) | UserSource::Ldap(_) => match self.lookup(&entry.user)? {
                Some(fields) => fields,
                None => {
                    tracing::warn!(user = %entry.user, "the passdb accepted a user the userdb does not know; login refused");
                    return Ok(None);
                }
            },
        };
        for (key, value) in fields.iter() {
            let key = key.strip_prefix("userdb_").unwrap_or(key);
            if key == "home" {
                entry.home = (!value.is_empty()).then(|| PathBuf::from(value));
                continue;
            }
            let prefixed = format!("userdb_{key}");
            entry.extra.retain(|(k, _)| k != key && *k != prefixed);
            entry.extra.push((key.to_owned(), value.clone()));
        }
        Ok(Some(entry))
    }

    fn lookup(&self, user: &str) -> Result<Option<Arc<Fields>>, AuthError> {
        if let Some(cached) = self.cache.as_ref().and_then(|c| c.get(user)) {
            return Ok(match cached {
                Cached::Found(fields) => Some(fields),
                Cached::Missing => None,
            });
        }
        let row = match &self.source {
            UserSource::Sql(sql) => sql.lookup(user)?,
            UserSource::Ldap(ldap) => ldap.lookup(user)?.map(|(_, row)| row),
            UserSource::Prefetch | UserSource::Static(_) => return Ok(None),
        };
        let fields = row.map(|row| Arc::new(non_null(row)));
        if let Some(cache) = &self.cache {
            cache.put(user, fields.clone().map_or(Cached::Missing, Cached::Found));
        }
        Ok(fields)
    }
}

fn non_null(row: Row) -> Fields {
    row.into_iter()
        .filter_map(|(k, v)| v.map(|v| (k, v)))
        .collect()
}

/// Parses static `args`: `key=value` fields, space separated.
pub(crate) fn parse_static(args: &str) -> Result<Vec<(String, Template)>, String> {
    args.split_whitespace()
        .filter(|item| *item != "allow_all_users=yes")
        .map(|item| {
            let (key, value) = item.split_once('=').unwrap_or((item, ""));
            let template = Template::parse(value).map_err(|e| format!("args: {key}: {e}"))?;
            Ok((key.to_ascii_lowercase(), template))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alice() -> UserEntry {
        UserEntry {
            user: "alice@example.com".into(),
            home: Some("/old".into()),
            extra: vec![("userdb_mail".into(), "maildir:/old".into())],
        }
    }

    #[test]
    fn static_fields_win_over_the_passdb() {
        let fields = parse_static("uid=vmail home=/srv/%d/%n mail=maildir:~/Maildir").unwrap();
        let db = Userdb::new(UserSource::Static(fields), None);
        let e = db.apply(alice()).unwrap().unwrap();
        assert_eq!(
            e.home.as_deref(),
            Some(std::path::Path::new("/srv/example.com/alice"))
        );
        assert_eq!(e.extra("mail"), Some("maildir:~/Maildir"));
        assert_eq!(e.extra("userdb_mail"), None);
        assert_eq!(e.extra("uid"), Some("vmail"));
        assert!(parse_static("home=/srv/%x").is_err());
    }

    #[test]
    fn prefetch_keeps_the_passdb_fields() {
        let e = Userdb::prefetch().apply(alice()).unwrap().unwrap();
        assert_eq!(e.extra("userdb_mail"), Some("maildir:/old"));
    }
}
