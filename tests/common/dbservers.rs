//! Real database servers for the user-database tests: PostgreSQL, MariaDB
//! and OpenLDAP (`slapd`) from Debian's packages, each started as a child
//! process in a temp dir on 127.0.0.1 and a free port, as its own system
//! user where it refuses root.
//!
//! Every server gets a watchdog (`sh`) that stops it, and removes its
//! directory, once the test process is gone, so servers shared through a
//! `static` (never dropped) cannot outlive the test binary. Per-test
//! servers are stopped by `Drop` as well.

use std::fs;
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long a server may take to start.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The password of the `mail` account every database has.
pub const DB_PASSWORD: &str = "secret";

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn system_user(name: &str) -> (u32, u32) {
    let out = Command::new("id").arg("-u").arg(name).output().unwrap();
    let uid = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    let out = Command::new("id").arg("-g").arg(name).output().unwrap();
    let gid = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    (uid, gid)
}

fn chown(path: &Path, user: &str) {
    let status = Command::new("chown")
        .arg("-R")
        .arg(user)
        .arg(path)
        .status()
        .unwrap();
    assert!(status.success());
}

/// A temp dir others may enter (servers run as their own users).
fn open_tempdir(prefix: &str) -> tempfile::TempDir {
    let dir = tempfile::Builder::new().prefix(prefix).tempdir().unwrap();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// Removes `dir` once the test process is gone (for statics, which are
/// never dropped).
fn remove_when_gone(dir: &Path) {
    // The watchdog runs in the background of a shell that exits at once,
    // so nothing is left to wait for here.
    let status = Command::new("sh")
        .arg("-c")
        .arg("(while kill -0 \"$0\" 2>/dev/null; do sleep 0.5; done; rm -rf \"$1\") >/dev/null 2>&1 &")
        .arg(std::process::id().to_string())
        .arg(dir)
        .stdin(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
}

/// A running server process and its watchdog.
struct Proc {
    child: Child,
    watchdog: Child,
}

impl Proc {
    fn spawn(command: &mut Command, log: &Path, dir: &Path) -> Proc {
        let log = fs::File::create(log).unwrap();
        let child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {command:?}: {e}"));
        let script = "while kill -0 \"$0\" 2>/dev/null && kill -0 \"$1\" 2>/dev/null; do sleep 0.5; done; \
                      kill \"$1\" 2>/dev/null; \
                      if ! kill -0 \"$0\" 2>/dev/null; then sleep 3; kill -9 \"$1\" 2>/dev/null; rm -rf \"$2\"; fi";
        let watchdog = Command::new("sh")
            .arg("-c")
            .arg(script)
            .arg(std::process::id().to_string())
            .arg(child.id().to_string())
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Proc { child, watchdog }
    }

    /// Sends `signal` and waits for the process to exit.
    fn stop(mut self, signal: &str) {
        let _ = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = self.watchdog.kill();
        let _ = self.watchdog.wait();
    }
}

fn wait_for(what: &str, log: &Path, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + START_TIMEOUT;
    while !ready() {
        assert!(
            Instant::now() < deadline,
            "{what} did not start; log:\n{}",
            fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn run(command: &mut Command) {
    let out = command.output().unwrap();
    assert!(
        out.status.success(),
        "{command:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

// ---- PostgreSQL ----------------------------------------------------------

const PG_SUPERUSER_PASSWORD: &str = "supersecret";

fn pg_bin(name: &str) -> PathBuf {
    let mut versions: Vec<PathBuf> = fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is installed (apt-get install postgresql)")
        .map(|e| e.unwrap().path())
        .collect();
    versions.sort();
    versions.last().unwrap().join("bin").join(name)
}

/// One initdb per test binary; each server copies it (initdb is slow).
fn pg_template() -> &'static Path {
    static TEMPLATE: OnceLock<tempfile::TempDir> = OnceLock::new();
    TEMPLATE
        .get_or_init(|| {
            let dir = open_tempdir("pg-template");
            remove_when_gone(dir.path());
            let pwfile = dir.path().join("pw");
            fs::write(&pwfile, PG_SUPERUSER_PASSWORD).unwrap();
            chown(dir.path(), "postgres");
            let (uid, gid) = system_user("postgres");
            run(Command::new(pg_bin("initdb"))
                .arg("-D")
                .arg(dir.path().join("data"))
                .args([
                    "-U",
                    "postgres",
                    "--auth-local=trust",
                    "--auth-host=scram-sha-256",
                ])
                .args(["--no-sync", "-E", "UTF8", "--locale=C.UTF-8"])
                .arg(format!("--pwfile={}", pwfile.display()))
                .uid(uid)
                .gid(gid));
            dir
        })
        .path()
}

/// A PostgreSQL server with a database `mail` owned by the role `mail`
/// (password [`DB_PASSWORD`], scram-sha-256 over TCP).
pub struct Postgres {
    dir: tempfile::TempDir,
    pub port: u16,
    proc: Mutex<Option<Proc>>,
}

impl Postgres {
    /// One server per test binary, for tests that do not stop it.
    pub fn shared() -> &'static Postgres {
        static SHARED: OnceLock<Postgres> = OnceLock::new();
        SHARED.get_or_init(Postgres::start)
    }

    pub fn start() -> Postgres {
        let dir = open_tempdir("pg");
        run(Command::new("cp")
            .arg("-a")
            .arg(pg_template().join("data"))
            .arg(dir.path().join("data")));
        chown(dir.path(), "postgres");
        let pg = Postgres {
            dir,
            port: free_port(),
            proc: Mutex::new(None),
        };
        pg.resume();
        let mut admin = pg.superuser("postgres");
        admin
            .batch_execute(&format!("CREATE ROLE mail LOGIN PASSWORD '{DB_PASSWORD}'"))
            .unwrap();
        admin
            .batch_execute("CREATE DATABASE mail OWNER mail")
            .unwrap();
        pg
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    /// Starts the server again on the same port and data.
    pub fn resume(&self) {
        let (uid, gid) = system_user("postgres");
        let mut command = Command::new(pg_bin("postgres"));
        command
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-k")
            .arg(self.dir.path())
            .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"])
            .args(["-c", "max_connections=200"])
            .uid(uid)
            .gid(gid);
        *self.proc.lock().unwrap() = Some(Proc::spawn(&mut command, &self.log(), self.dir.path()));
        wait_for("postgres", &self.log(), || {
            self.try_superuser("postgres").is_ok()
        });
    }

    /// Stops the server (fast shutdown: clients are disconnected).
    pub fn stop(&self) {
        if let Some(proc) = self.proc.lock().unwrap().take() {
            proc.stop("INT");
        }
    }

    fn try_superuser(&self, db: &str) -> Result<postgres::Client, postgres::Error> {
        postgres::Config::new()
            .host("127.0.0.1")
            .port(self.port)
            .user("postgres")
            .password(PG_SUPERUSER_PASSWORD)
            .dbname(db)
            .connect_timeout(Duration::from_secs(2))
            .connect(postgres::NoTls)
    }

    fn superuser(&self, db: &str) -> postgres::Client {
        self.try_superuser(db).unwrap()
    }

    /// A connection to `mail` as `mail`.
    pub fn client(&self) -> postgres::Client {
        postgres::Config::new()
            .host("127.0.0.1")
            .port(self.port)
            .user("mail")
            .password(DB_PASSWORD)
            .dbname("mail")
            .connect(postgres::NoTls)
            .unwrap()
    }

    /// The connect string of the smallest configuration.
    pub fn connect_string(&self) -> String {
        format!(
            "host=127.0.0.1 port={} dbname=mail user=mail password={DB_PASSWORD}",
            self.port
        )
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
    }
}

// ---- MariaDB -------------------------------------------------------------

/// A MariaDB server with a database `mail` and a user `mail`@`127.0.0.1`
/// (password [`DB_PASSWORD`]).
pub struct Mariadb {
    dir: tempfile::TempDir,
    pub port: u16,
    proc: Mutex<Option<Proc>>,
}

impl Mariadb {
    /// One server per test binary, for tests that do not stop it.
    pub fn shared() -> &'static Mariadb {
        static SHARED: OnceLock<Mariadb> = OnceLock::new();
        SHARED.get_or_init(Mariadb::start)
    }

    pub fn start() -> Mariadb {
        let dir = open_tempdir("mariadb");
        // A private tmpdir: with the default /tmp, a bootstrap once failed
        // deleting its own Aria temp table while other servers started beside it.
        fs::create_dir(dir.path().join("tmp")).unwrap();
        chown(dir.path(), "mysql");
        run(Command::new("mariadb-install-db")
            .args([
                "--no-defaults",
                "--user=mysql",
                "--auth-root-authentication-method=normal",
            ])
            .args(["--skip-test-db", "--skip-name-resolve"])
            .arg(format!("--datadir={}", dir.path().join("data").display()))
            .arg(format!("--tmpdir={}", dir.path().join("tmp").display())));
        chown(dir.path(), "mysql");
        let db = Mariadb {
            dir,
            port: free_port(),
            proc: Mutex::new(None),
        };
        db.resume();
        let mut root = db.root();
        use mysql::prelude::Queryable;
        root.query_drop(format!(
            "CREATE DATABASE mail CHARACTER SET utf8mb4 COLLATE utf8mb4_bin; \
             CREATE USER 'mail'@'127.0.0.1' IDENTIFIED BY '{DB_PASSWORD}'; \
             GRANT ALL ON mail.* TO 'mail'@'127.0.0.1';"
        ))
        .unwrap();
        db
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("mysqld.sock")
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("mariadb.log")
    }

    /// Starts the server again on the same port and data.
    pub fn resume(&self) {
        let dir = self.dir.path();
        let mut command = Command::new("mariadbd");
        command
            .arg("--no-defaults")
            .arg(format!("--datadir={}", dir.join("data").display()))
            .arg(format!("--socket={}", self.socket().display()))
            .arg(format!("--pid-file={}", dir.join("mysqld.pid").display()))
            .arg(format!("--tmpdir={}", dir.join("tmp").display()))
            .arg(format!("--port={}", self.port))
            .args([
                "--bind-address=127.0.0.1",
                "--user=mysql",
                "--skip-name-resolve",
            ])
            .args([
                "--innodb-buffer-pool-size=16M",
                "--innodb-flush-log-at-trx-commit=0",
            ])
            .args(["--skip-log-bin", "--max-connections=300"]);
        *self.proc.lock().unwrap() = Some(Proc::spawn(&mut command, &self.log(), dir));
        wait_for("mariadbd", &self.log(), || {
            TcpStream::connect(("127.0.0.1", self.port)).is_ok() && self.try_root().is_ok()
        });
    }

    /// Stops the server.
    pub fn stop(&self) {
        if let Some(proc) = self.proc.lock().unwrap().take() {
            proc.stop("TERM");
        }
    }

    fn try_root(&self) -> Result<mysql::Conn, mysql::Error> {
        let opts = mysql::OptsBuilder::new()
            .socket(Some(self.socket().display().to_string()))
            .user(Some("root"));
        mysql::Conn::new(opts)
    }

    fn root(&self) -> mysql::Conn {
        self.try_root().unwrap()
    }

    /// A connection to `mail` as `mail`, over TCP.
    pub fn client(&self) -> mysql::Conn {
        let opts = mysql::OptsBuilder::new()
            .ip_or_hostname(Some("127.0.0.1"))
            .tcp_port(self.port)
            .prefer_socket(false)
            .user(Some("mail"))
            .pass(Some(DB_PASSWORD))
            .db_name(Some("mail"));
        mysql::Conn::new(opts).unwrap()
    }

    /// A Dovecot-style MySQL connect string.
    pub fn connect_string(&self) -> String {
        format!(
            "host=127.0.0.1 port={} dbname=mail user=mail password={DB_PASSWORD}",
            self.port
        )
    }
}

impl Drop for Mariadb {
    fn drop(&mut self) {
        self.stop();
    }
}

// ---- OpenLDAP ------------------------------------------------------------

/// The directory's suffix.
pub const LDAP_BASE: &str = "dc=example,dc=com";
/// The rootdn, password [`DB_PASSWORD`].
pub const LDAP_ADMIN: &str = "cn=admin,dc=example,dc=com";

/// A slapd with `dc=example,dc=com` and `ou=people` under it; everything is
/// readable anonymously except `userPassword`, which only the rootdn and
/// `cn=reader` (password [`DB_PASSWORD`]) read.
pub struct Slapd {
    dir: tempfile::TempDir,
    pub port: u16,
    proc: Mutex<Option<Proc>>,
}

impl Slapd {
    /// One server per test binary, for tests that do not stop it.
    pub fn shared() -> &'static Slapd {
        static SHARED: OnceLock<Slapd> = OnceLock::new();
        SHARED.get_or_init(Slapd::start)
    }

    pub fn start() -> Slapd {
        let dir = open_tempdir("slapd");
        let d = dir.path();
        fs::create_dir(d.join("db")).unwrap();
        let conf = format!(
            "include /etc/ldap/schema/core.schema\n\
             include /etc/ldap/schema/cosine.schema\n\
             include /etc/ldap/schema/nis.schema\n\
             include /etc/ldap/schema/inetorgperson.schema\n\
             pidfile {pid}\n\
             modulepath /usr/lib/ldap\n\
             moduleload back_mdb\n\
             database mdb\n\
             maxsize 104857600\n\
             suffix \"{LDAP_BASE}\"\n\
             rootdn \"{LDAP_ADMIN}\"\n\
             rootpw {DB_PASSWORD}\n\
             directory {db}\n\
             access to attrs=userPassword by dn.exact=\"cn=reader,{LDAP_BASE}\" read by anonymous auth by * none\n\
             access to * by * read\n",
            pid = d.join("slapd.pid").display(),
            db = d.join("db").display(),
        );
        fs::write(d.join("slapd.conf"), conf).unwrap();
        let ldap = Slapd {
            dir,
            port: free_port(),
            proc: Mutex::new(None),
        };
        ldap.resume();
        let mut admin = ldap.admin();
        let add = |admin: &mut ldap3::LdapConn, dn: &str, attrs: Vec<(&str, Vec<&str>)>| {
            let attrs = attrs
                .into_iter()
                .map(|(k, v)| (k, v.into_iter().collect()))
                .collect::<Vec<(&str, std::collections::HashSet<&str>)>>();
            admin.add(dn, attrs).unwrap().success().unwrap();
        };
        add(
            &mut admin,
            LDAP_BASE,
            vec![
                ("objectClass", vec!["dcObject", "organization"]),
                ("o", vec!["example"]),
                ("dc", vec!["example"]),
            ],
        );
        add(
            &mut admin,
            &format!("ou=people,{LDAP_BASE}"),
            vec![
                ("objectClass", vec!["organizationalUnit"]),
                ("ou", vec!["people"]),
            ],
        );
        add(
            &mut admin,
            &format!("cn=reader,{LDAP_BASE}"),
            vec![
                ("objectClass", vec!["person"]),
                ("cn", vec!["reader"]),
                ("sn", vec!["reader"]),
                ("userPassword", vec![DB_PASSWORD]),
            ],
        );
        ldap
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("slapd.log")
    }

    /// Starts the server again on the same port and data.
    pub fn resume(&self) {
        let d = self.dir.path();
        let mut command = Command::new("slapd");
        command
            .arg("-h")
            .arg(format!("ldap://127.0.0.1:{}/", self.port))
            .arg("-f")
            .arg(d.join("slapd.conf"))
            .args(["-d", "0"]);
        *self.proc.lock().unwrap() = Some(Proc::spawn(&mut command, &self.log(), d));
        wait_for("slapd", &self.log(), || {
            ldap3::LdapConn::new(&self.uri())
                .and_then(|mut c| c.simple_bind(LDAP_ADMIN, DB_PASSWORD)?.success())
                .is_ok()
        });
    }

    /// Stops the server.
    pub fn stop(&self) {
        if let Some(proc) = self.proc.lock().unwrap().take() {
            proc.stop("TERM");
        }
    }

    pub fn uri(&self) -> String {
        format!("ldap://127.0.0.1:{}", self.port)
    }

    /// A connection bound as the rootdn.
    pub fn admin(&self) -> ldap3::LdapConn {
        let mut conn = ldap3::LdapConn::new(&self.uri()).unwrap();
        conn.simple_bind(LDAP_ADMIN, DB_PASSWORD)
            .unwrap()
            .success()
            .unwrap();
        conn
    }

    /// Adds a posixAccount under `ou=<ou>,dc=example,dc=com` (made if
    /// missing) with the given `userPassword`, or none.
    pub fn add_user(&self, ou: &str, uid: &str, password: Option<&str>) {
        let mut admin = self.admin();
        let ou_dn = format!("ou={},{LDAP_BASE}", ldap3::dn_escape(ou));
        let _ = admin.add(
            &ou_dn,
            vec![
                ("objectClass", ["organizationalUnit"].into_iter().collect()),
                ("ou", [ou].into_iter().collect()),
            ],
        );
        let dn = format!("uid={},{ou_dn}", ldap3::dn_escape(uid));
        // homeDirectory is IA5 (ASCII): the mailbox comes from the login.
        let home = "/nonexistent".to_owned();
        let mut attrs: Vec<(&str, std::collections::HashSet<&str>)> = vec![
            (
                "objectClass",
                ["account", "posixAccount"].into_iter().collect(),
            ),
            ("uid", [uid].into_iter().collect()),
            ("cn", [uid].into_iter().collect()),
            ("uidNumber", ["1000"].into_iter().collect()),
            ("gidNumber", ["1000"].into_iter().collect()),
            ("homeDirectory", [home.as_str()].into_iter().collect()),
        ];
        if let Some(password) = password {
            attrs.push(("userPassword", [password].into_iter().collect()));
        }
        admin.add(&dn, attrs).unwrap().success().unwrap();
    }

    /// Replaces a user's `userPassword`.
    pub fn set_password(&self, ou: &str, uid: &str, password: &str) {
        let dn = format!(
            "uid={},ou={},{LDAP_BASE}",
            ldap3::dn_escape(uid),
            ldap3::dn_escape(ou)
        );
        self.admin()
            .modify(
                &dn,
                vec![ldap3::Mod::Replace(
                    "userPassword",
                    [password].into_iter().collect(),
                )],
            )
            .unwrap()
            .success()
            .unwrap();
    }
}

impl Drop for Slapd {
    fn drop(&mut self) {
        self.stop();
    }
}
