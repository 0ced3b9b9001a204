//! The SQL drivers: PostgreSQL (`postgres`, the synchronous client) and
//! MySQL / MariaDB (`mysql`, synchronous), each behind a [`Pool`].
//!
//! A query is compiled once ([`SqlQuery`]): the login's parts are sent as
//! bound parameters, never as query text. PostgreSQL statements are
//! prepared once per connection; MySQL's client caches them per connection.
//! Timeouts: connect (per host), and per query (`statement_timeout` on
//! PostgreSQL, socket read and write timeouts on MySQL).
//!
//! A result row becomes `(column, value)` pairs with lower-case column
//! names; NULL is `None`, a boolean false is `None` too (so a `nologin`
//! boolean column can say "no"), numbers become their decimal text.

use std::collections::HashMap;
use std::time::Duration;

use super::AuthError;
use super::pool::{Connector, DbError, Pool};
use super::template::{Markers, SqlQuery};

/// One result row: lower-case column names and their values.
pub(crate) type Row = Vec<(String, Option<String>)>;

/// Which SQL server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Flavor {
    /// PostgreSQL.
    Pg,
    /// MySQL or MariaDB.
    My,
}

/// A SQL query against one database.
pub(crate) struct SqlSource {
    pool: SqlPool,
    query: SqlQuery,
}

enum SqlPool {
    Pg(Pool<PgConnector>),
    My(Pool<MyConnector>),
}

/// Settings common to both flavors.
pub(crate) struct SqlSettings<'a> {
    /// For log lines (`pgsql passdb`).
    pub(crate) name: String,
    pub(crate) connect: &'a str,
    pub(crate) query: &'a str,
    pub(crate) pool_size: usize,
    pub(crate) connect_timeout: Duration,
    pub(crate) query_timeout: Duration,
}

impl SqlSource {
    /// Parses the connect string and compiles the query; connects nothing
    /// (the first lookup does), so the server starts while the database is
    /// down.
    pub(crate) fn new(flavor: Flavor, settings: &SqlSettings<'_>) -> Result<SqlSource, String> {
        let markers = match flavor {
            Flavor::Pg => Markers::Dollar,
            Flavor::My => Markers::Question,
        };
        let query = SqlQuery::compile(settings.query, markers)?;
        let name = settings.name.clone();
        let pool = match flavor {
            Flavor::Pg => {
                let connector = PgConnector::new(settings)?;
                SqlPool::Pg(Pool::new(
                    name,
                    connector,
                    settings.pool_size,
                    settings.connect_timeout,
                ))
            }
            Flavor::My => {
                let connector = MyConnector::new(settings)?;
                SqlPool::My(Pool::new(
                    name,
                    connector,
                    settings.pool_size,
                    settings.connect_timeout,
                ))
            }
        };
        Ok(SqlSource { pool, query })
    }

    /// The first row the query gives for `user`; `Ok(None)` when none.
    pub(crate) fn lookup(&self, user: &str) -> Result<Option<Row>, AuthError> {
        let values = self.query.values(user);
        // No user name can hold NUL (PostgreSQL text cannot); the name
        // check refuses it before any lookup, this is the second line.
        if values.iter().any(|v| v.contains('\0')) {
            return Ok(None);
        }
        match &self.pool {
            SqlPool::Pg(pool) => pool.run(|conn| conn.query(&self.query.text, &values)),
            SqlPool::My(pool) => pool.run(|conn| my_query(conn, &self.query.text, &values)),
        }
    }
}

// ---- PostgreSQL ---------------------------------------------------------

struct PgConnector {
    config: postgres::Config,
    query_timeout: Duration,
}

impl PgConnector {
    fn new(settings: &SqlSettings<'_>) -> Result<PgConnector, String> {
        let mut config: postgres::Config = settings
            .connect
            .parse()
            .map_err(|e| format!("connect: {e}"))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(settings.connect_timeout);
        }
        config.keepalives(true);
        config.tcp_user_timeout(settings.query_timeout);
        if config.get_application_name().is_none() {
            config.application_name("shardpop");
        }
        Ok(PgConnector {
            config,
            query_timeout: settings.query_timeout,
        })
    }
}

/// A PostgreSQL connection and the statements prepared on it.
struct PgConn {
    client: postgres::Client,
    prepared: HashMap<String, postgres::Statement>,
}

impl Connector for PgConnector {
    type Conn = PgConn;

    /// libpq-style `host=a host=b` (or `host=a,b`): the client tries the
    /// hosts itself, in order, so the pool sees one.
    fn hosts(&self) -> usize {
        1
    }

    fn connect(&self, _index: usize) -> Result<PgConn, String> {
        let mut client = self
            .config
            .connect(postgres::NoTls)
            .map_err(|e| e.to_string())?;
        let timeout_ms = self.query_timeout.as_millis();
        client
            .batch_execute(&format!("SET statement_timeout = {timeout_ms}"))
            .map_err(|e| e.to_string())?;
        Ok(PgConn {
            client,
            prepared: HashMap::new(),
        })
    }
}

impl PgConn {
    fn query(&mut self, text: &str, values: &[String]) -> Result<Option<Row>, DbError> {
        let statement = match self.prepared.get(text) {
            Some(statement) => statement.clone(),
            None => {
                let statement = self.client.prepare(text).map_err(|e| self.classify(e))?;
                self.prepared.insert(text.to_owned(), statement.clone());
                statement
            }
        };
        let params: Vec<&(dyn postgres::types::ToSql + Sync)> = values
            .iter()
            .map(|v| v as &(dyn postgres::types::ToSql + Sync))
            .collect();
        let rows = self
            .client
            .query(&statement, &params)
            .map_err(|e| self.classify(e))?;
        Ok(rows.first().map(pg_row))
    }

    fn classify(&self, error: postgres::Error) -> DbError {
        // The error's own text is only "db error" for server errors.
        let text = match error.as_db_error() {
            Some(db) => format!("{} ({}): {}", db.severity(), db.code().code(), db.message()),
            None => error.to_string(),
        };
        if self.client.is_closed() {
            return DbError::Broken(text);
        }
        match error.as_db_error() {
            // Connection exceptions and shutdowns: this connection is done.
            Some(db)
                if db.code().code().starts_with("08") || db.code().code().starts_with("57P") =>
            {
                DbError::Broken(text)
            }
            Some(_) => DbError::Query(text),
            None if error.is_closed() => DbError::Broken(text),
            // Parameter conversion errors and the like, on the client side.
            None => DbError::Query(text),
        }
    }
}

fn pg_row(row: &postgres::Row) -> Row {
    (0..row.columns().len())
        .map(|i| {
            let name = row.columns()[i].name().to_ascii_lowercase();
            (name, pg_value(row, i))
        })
        .collect()
}

fn pg_value(row: &postgres::Row, i: usize) -> Option<String> {
    use postgres::types::Type;
    let ty = row.columns()[i].type_().clone();
    let text = |v: Option<i64>| v.map(|v| v.to_string());
    match ty {
        Type::BOOL => row
            .try_get::<_, Option<bool>>(i)
            .ok()
            .flatten()
            .and_then(|b| b.then(|| "y".to_owned())),
        Type::INT2 => text(
            row.try_get::<_, Option<i16>>(i)
                .ok()
                .flatten()
                .map(i64::from),
        ),
        Type::INT4 => text(
            row.try_get::<_, Option<i32>>(i)
                .ok()
                .flatten()
                .map(i64::from),
        ),
        Type::INT8 => text(row.try_get::<_, Option<i64>>(i).ok().flatten()),
        Type::OID => text(
            row.try_get::<_, Option<u32>>(i)
                .ok()
                .flatten()
                .map(i64::from),
        ),
        _ => row.try_get::<_, Option<String>>(i).ok().flatten(),
    }
}

// ---- MySQL / MariaDB ----------------------------------------------------

struct MyConnector {
    hosts: Vec<String>,
    port: u16,
    dbname: Option<String>,
    user: Option<String>,
    password: Option<String>,
    connect_timeout: Duration,
    query_timeout: Duration,
}

impl MyConnector {
    /// Dovecot's MySQL connect string: `host=` (more than once for
    /// failover; a path is a Unix socket), `port=`, `dbname=`, `user=`,
    /// `password=`, `connect_timeout=`, `read_timeout=`, `write_timeout=`
    /// (seconds; the last two are one query timeout here). Values may be
    /// quoted with `'` or `"`.
    fn new(settings: &SqlSettings<'_>) -> Result<MyConnector, String> {
        let mut c = MyConnector {
            hosts: Vec::new(),
            port: 3306,
            dbname: None,
            user: None,
            password: None,
            connect_timeout: settings.connect_timeout,
            query_timeout: settings.query_timeout,
        };
        for (key, value) in conninfo(settings.connect)? {
            let seconds = |v: &str| {
                v.parse::<u64>()
                    .map(Duration::from_secs)
                    .map_err(|_| format!("connect: {key} must be seconds"))
            };
            match key.as_str() {
                "host" => c.hosts.push(value),
                "port" => c.port = value.parse().map_err(|_| "connect: bad port".to_owned())?,
                "dbname" => c.dbname = Some(value),
                "user" => c.user = Some(value),
                "password" => c.password = Some(value),
                "connect_timeout" => c.connect_timeout = seconds(&value)?,
                "read_timeout" | "write_timeout" => c.query_timeout = seconds(&value)?,
                "client_flags" | "option_file" | "option_group" | "character_set" => {}
                k if k.starts_with("ssl_") => {
                    return Err(format!("connect: {k}: TLS to MySQL is not supported"));
                }
                other => return Err(format!("connect: unknown key {other:?}")),
            }
        }
        if c.hosts.is_empty() {
            c.hosts.push("localhost".to_owned());
        }
        Ok(c)
    }
}

impl Connector for MyConnector {
    type Conn = mysql::Conn;

    fn hosts(&self) -> usize {
        self.hosts.len()
    }

    fn connect(&self, index: usize) -> Result<mysql::Conn, String> {
        let host = &self.hosts[index];
        let mut opts = mysql::OptsBuilder::new()
            .db_name(self.dbname.clone())
            .user(self.user.clone())
            .pass(self.password.clone())
            .prefer_socket(false)
            .tcp_connect_timeout(Some(self.connect_timeout))
            .read_timeout(Some(self.query_timeout))
            .write_timeout(Some(self.query_timeout));
        opts = if host.starts_with('/') {
            opts.socket(Some(host.clone()))
        } else {
            opts.ip_or_hostname(Some(host.clone())).tcp_port(self.port)
        };
        mysql::Conn::new(opts).map_err(|e| format!("{host}: {e}"))
    }
}

fn my_query(conn: &mut mysql::Conn, text: &str, values: &[String]) -> Result<Option<Row>, DbError> {
    use mysql::prelude::Queryable;
    let params = mysql::Params::Positional(
        values
            .iter()
            .map(|v| mysql::Value::from(v.as_str()))
            .collect(),
    );
    let row: Option<mysql::Row> = conn.exec_first(text, params).map_err(my_classify)?;
    Ok(row.map(|row| my_row(&row)))
}

fn my_classify(error: mysql::Error) -> DbError {
    match &error {
        // 1053 server shutdown, 1927 connection killed.
        mysql::Error::MySqlError(e) if e.code == 1053 || e.code == 1927 => {
            DbError::Broken(error.to_string())
        }
        mysql::Error::MySqlError(_)
        | mysql::Error::FromValueError(_)
        | mysql::Error::FromRowError(_) => DbError::Query(error.to_string()),
        _ => DbError::Broken(error.to_string()),
    }
}

fn my_row(row: &mysql::Row) -> Row {
    row.columns_ref()
        .iter()
        .enumerate()
        .map(|(i, column)| {
            let name = column.name_str().to_ascii_lowercase();
            (name, row.as_ref(i).and_then(my_value))
        })
        .collect()
}

fn my_value(value: &mysql::Value) -> Option<String> {
    match value {
        mysql::Value::NULL => None,
        mysql::Value::Bytes(bytes) => String::from_utf8(bytes.clone()).ok(),
        mysql::Value::Int(i) => Some(i.to_string()),
        mysql::Value::UInt(u) => Some(u.to_string()),
        mysql::Value::Float(f) => Some(f.to_string()),
        mysql::Value::Double(d) => Some(d.to_string()),
        // Dates and times are not user fields.
        mysql::Value::Date(..) | mysql::Value::Time(..) => None,
    }
}

/// `key=value key='value with spaces'` pairs (libpq's conninfo syntax,
/// which Dovecot's connect strings follow).
pub(crate) fn conninfo(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut pairs = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Ok(pairs);
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|&c| c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            return Err(format!("connect: {key:?} has no value"));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        match chars.next_if(|&c| c == '\'' || c == '"') {
            Some(quote) => loop {
                match chars.next() {
                    Some('\\') => value.push(chars.next().ok_or("connect: dangling \\")?),
                    Some(c) if c == quote => break,
                    Some(c) => value.push(c),
                    None => return Err(format!("connect: unterminated quote after {key}=")),
                }
            },
            None => {
                while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                    value.push(c);
                }
            }
        }
        pairs.push((key.to_ascii_lowercase(), value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conninfo_pairs_quotes_and_errors() {
        let pairs =
            conninfo("host=db1 host=db2  port = 3307 password='a b\\'c' user=\"m\"").unwrap();
        let want: Vec<(String, String)> = [
            ("host", "db1"),
            ("host", "db2"),
            ("port", "3307"),
            ("password", "a b'c"),
            ("user", "m"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(pairs, want);
        assert!(conninfo("host").is_err());
        assert!(conninfo("password='open").is_err());
        assert_eq!(conninfo("  ").unwrap(), vec![]);
    }

    fn settings(connect: &str) -> SqlSettings<'_> {
        SqlSettings {
            name: "test".into(),
            connect,
            query: "SELECT password FROM users WHERE username = '%u'",
            pool_size: 2,
            connect_timeout: Duration::from_secs(1),
            query_timeout: Duration::from_secs(2),
        }
    }

    #[test]
    fn mysql_connect_strings() {
        let c = MyConnector::new(&settings(
            "host=10.0.0.1 host=/run/mysqld/mysqld.sock port=3307 dbname=mail user=mail password=secret read_timeout=3",
        ))
        .unwrap();
        assert_eq!(c.hosts, ["10.0.0.1", "/run/mysqld/mysqld.sock"]);
        assert_eq!(c.port, 3307);
        assert_eq!(c.query_timeout, Duration::from_secs(3));
        assert_eq!(c.connect_timeout, Duration::from_secs(1));
        assert!(MyConnector::new(&settings("host=x ssl_ca=/ca.pem")).is_err());
        assert!(MyConnector::new(&settings("host=x bogus=1")).is_err());
    }

    #[test]
    fn pgsql_connect_strings() {
        let c = PgConnector::new(&settings(
            "host=127.0.0.1 port=5432 dbname=mail user=mail password=secret",
        ))
        .unwrap();
        assert_eq!(c.config.get_dbname(), Some("mail"));
        assert_eq!(
            c.config.get_connect_timeout(),
            Some(&Duration::from_secs(1))
        );
        assert!(PgConnector::new(&settings("host=x nonsense=1")).is_err());
    }
}
