//! A real Dovecot (Debian's `dovecot-pop3d`) serving POP3 on 127.0.0.1 and a
//! free port over a test's mail tree: its own config, base_dir, state and
//! log in a temp dir, so a system Dovecot is never touched. Dovecot refuses
//! to give root's mail to anyone, so the tree is handed to the `vmail`
//! system user (created if missing) and Dovecot's mail processes run as
//! it. The master runs in the foreground as a child process; `Drop` stops
//! it with SIGTERM (its children exit with it) and waits.

use std::fmt::Write as _;
use std::fs;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A running Dovecot.
pub struct Dovecot {
    child: Child,
    pub addr: SocketAddr,
    dir: tempfile::TempDir,
}

fn run(cmd: &mut Command) {
    let status = cmd.status().unwrap();
    assert!(status.success(), "{cmd:?}: {status}");
}

/// The uid and gid of `vmail`, creating the system user when missing.
fn vmail() -> (u32, u32) {
    let id = |flag: &str| Command::new("id").arg(flag).arg("vmail").output().unwrap();
    if !id("-u").status.success() {
        run(Command::new("useradd")
            .args([
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
            ])
            .arg("vmail"));
    }
    let num = |flag: &str| {
        String::from_utf8_lossy(&id(flag).stdout)
            .trim()
            .parse()
            .unwrap()
    };
    (num("-u"), num("-g"))
}

impl Dovecot {
    /// Starts Dovecot over the Maildirs under `mail_root/%u/Maildir` for
    /// `users` (name, password). The mail tree is chowned to `vmail` and
    /// its parents made enterable.
    pub fn start(mail_root: &Path, users: &[(String, String)]) -> Dovecot {
        Dovecot::start_with(mail_root, users, "%08Xu%08Xv", "")
    }

    /// [`start`](Self::start) with another `pop3_uidl_format`, and `extra`
    /// settings appended to the configuration.
    pub fn start_with(
        mail_root: &Path,
        users: &[(String, String)],
        uidl_format: &str,
        extra: &str,
    ) -> Dovecot {
        assert!(
            Path::new("/usr/lib/dovecot/pop3").exists(),
            "dovecot-pop3d is not installed (.ci/run installs it)"
        );
        let (uid, gid) = vmail();
        let mut up = Some(mail_root);
        while let Some(dir) = up {
            if dir == Path::new("/") || dir == Path::new("/tmp") {
                break;
            }
            let mode = fs::metadata(dir).unwrap().permissions().mode();
            fs::set_permissions(dir, fs::Permissions::from_mode(mode | 0o711)).unwrap();
            up = dir.parent();
        }
        run(Command::new("chown")
            .arg("-R")
            .arg(format!("{uid}:{gid}"))
            .arg(mail_root));
        let dir = tempfile::Builder::new()
            .prefix("dovecot-")
            .tempdir()
            .unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let d = dir.path();
        let mut passwd = String::new();
        for (name, password) in users {
            let home = mail_root.join(name);
            let _ = writeln!(
                passwd,
                "{name}:{{PLAIN}}{password}:{uid}:{gid}::{}::",
                home.display()
            );
        }
        fs::write(d.join("passwd"), passwd).unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        fs::write(
            d.join("dovecot.conf"),
            config(d, mail_root, port, uid, uidl_format) + extra,
        )
        .unwrap();
        let child = Command::new("dovecot")
            .arg("-F")
            .arg("-c")
            .arg(d.join("dovecot.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start dovecot");
        let mut dovecot = Dovecot {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            dir,
        };
        dovecot.wait_listening();
        dovecot
    }

    fn wait_listening(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        while TcpStream::connect(self.addr).is_err() {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("dovecot exited ({status}); log:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "dovecot did not listen; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs `doveadm` against this instance; returns its output, failing
    /// the test when it fails.
    pub fn doveadm(&self, args: &[&str]) -> String {
        let out = Command::new("doveadm")
            .arg("-c")
            .arg(self.dir.path().join("dovecot.conf"))
            .args(args)
            .output()
            .expect("run doveadm");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "doveadm {args:?}: {}\n{text}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        text
    }

    /// Dovecot's log.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("dovecot.log")).unwrap_or_default()
    }
}

/// Defaults but for isolation (own dirs, loopback, no TLS, plaintext
/// passwords allowed, no failure delay); POP3 UIDLs in `uidl_format`
/// (tests use Dovecot's default, `%08Xu%08Xv`, the one a real migration
/// carries over, unless they test another).
fn config(d: &Path, mail_root: &Path, port: u16, uid: u32, uidl_format: &str) -> String {
    let d = d.display();
    let mail = mail_root.display();
    format!(
        "base_dir = {d}/run
state_dir = {d}/state
instance_name = dovecot-e2e-{port}
log_path = {d}/dovecot.log
protocols = pop3
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain
auth_failure_delay = 0
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {d}/passwd
}}
userdb {{
  driver = passwd-file
  args = username_format=%u {d}/passwd
}}
first_valid_uid = {uid}
last_valid_uid = {uid}
mail_location = maildir:{mail}/%u/Maildir
pop3_uidl_format = {uidl_format}
service pop3-login {{
  inet_listener pop3 {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener pop3s {{
    port = 0
  }}
}}
"
    )
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(self.child.id().to_string())
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while let Ok(None) = self.child.try_wait() {
                if Instant::now() > deadline {
                    let _ = self.child.kill();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.child.wait();
        }
    }
}
