//! Real clients against a real server: Python's poplib (every command) and
//! curl (LIST, RETR, DELE), bodies compared byte-exact to the files on disk.

#[macro_use]
mod common;

use std::process::Command;

use common::{Engine, Server, Tree, crlf};

fn tree() -> Tree {
    let mut tree = Tree::new();
    tree.user("alice@example.org", "s3cret pass");
    tree.user("empty", "pw");
    let bodies: Vec<Vec<u8>> = vec![
        b"Subject: hello\n\nHi!\n".to_vec(),
        b"Subject: dots\n\n.\n..\n.leading\nnot\n.\n".to_vec(),
        b"Subject: no newline\n\nlast".to_vec(),
        Vec::new(),
        b"Subject: 8bit \xe4\xf6\xfc\n\n\xc3\xa9\xff\x00\x01\n".to_vec(),
        b"Subject: crlf\r\n\r\nbody\r\n.\r\n".to_vec(),
        (0..70_000)
            .map(|i| format!("{i:079}\n"))
            .collect::<String>()
            .into_bytes(),
    ];
    for (n, body) in bodies.iter().enumerate() {
        tree.deliver("alice@example.org", n as u32, body);
    }
    tree
}

engine_test!(python_poplib_every_command);
fn python_poplib_every_command(engine: Engine) {
    let tree = tree();
    let server = Server::start(&tree, engine);
    for (user, password, messages) in [("alice@example.org", "s3cret pass", 7), ("empty", "pw", 0)]
    {
        let out = Command::new("python3")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/clients/poplib_check.py"
            ))
            .arg(server.addr.ip().to_string())
            .arg(server.addr.port().to_string())
            .args([user, password])
            .arg(tree.maildir(user))
            .output()
            .expect("python3 must be installed");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.contains(&format!("checked {messages} messages")),
            "{stdout}"
        );
        assert!(!stdout.contains("FAIL"));
        let retr_checks = stdout
            .lines()
            .filter(|l| l.starts_with("ok retr") && l.contains("byte-exact"))
            .count();
        assert_eq!(retr_checks, messages);
    }
}

fn curl(server: &Server, path: &str, extra: &[&str]) -> Vec<u8> {
    let out = Command::new("curl")
        .args([
            "--silent",
            "--show-error",
            "--max-time",
            "20",
            "--user",
            "alice@example.org:s3cret pass",
        ])
        .args(extra)
        .arg(format!("pop3://{}{path}", server.addr))
        .output()
        .expect("curl must be installed");
    assert!(
        out.status.success(),
        "curl {path}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

engine_test!(curl_list_and_retr);
fn curl_list_and_retr(engine: Engine) {
    let tree = tree();
    let server = Server::start(&tree, engine);
    let files = tree.files("alice@example.org");
    let list = String::from_utf8(curl(&server, "/", &[])).unwrap();
    assert_eq!(list.lines().count(), files.len(), "{list}");
    for (n, name) in files.iter().enumerate() {
        let stored =
            std::fs::read(tree.maildir("alice@example.org").join("cur").join(name)).unwrap();
        let size = crlf(&stored).len();
        assert!(list.contains(&format!("{} {size}\r\n", n + 1)), "{list}");
        let body = curl(&server, &format!("/{}", n + 1), &[]);
        let mut want = crlf(&stored);
        if !want.ends_with(b"\r\n") {
            // The server ends the last line before the terminator; curl keeps
            // that CRLF, and for an empty message it is all curl prints (the
            // wire is "+OK 0 octets\r\n.\r\n", checked in e2e_protocol).
            want.extend_from_slice(b"\r\n");
        }
        assert!(
            body == want,
            "message {}: curl got {} bytes, want {}",
            n + 1,
            body.len(),
            want.len()
        );
    }
}

engine_test!(curl_dele_removes_the_file_at_quit);
fn curl_dele_removes_the_file_at_quit(engine: Engine) {
    let tree = tree();
    let server = Server::start(&tree, engine);
    let before = tree.files("alice@example.org");
    // curl sends DELE 2 then QUIT.
    curl(&server, "/2", &["--request", "DELE", "--list-only"]);
    let after = tree.files("alice@example.org");
    assert_eq!(after.len(), before.len() - 1);
    assert!(!after.contains(&before[1]));
}
