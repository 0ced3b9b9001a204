//! `shardpop demo`: a small but realistic mail tree and passwd-file, so a
//! fresh checkout can be tried with a real client in one command.
#![forbid(unsafe_code)]

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::auth::{Scheme, hash_password};

/// Marks a directory as ours, so a second run may replace it.
const MARKER: &str = ".shardpop-demo";

/// A demo user: name, password, messages.
pub struct DemoUser {
    /// Login name.
    pub name: &'static str,
    /// Its password (it is a demo).
    pub password: &'static str,
}

/// The users the demo creates.
pub const USERS: [DemoUser; 3] = [
    DemoUser {
        name: "alice",
        password: "wonderland",
    },
    DemoUser {
        name: "bob@example.org",
        password: "builder",
    },
    DemoUser {
        name: "carol",
        password: "empty-mailbox",
    },
];

/// What [`create`] made.
pub struct DemoTree {
    /// The passwd-file.
    pub passwd_file: PathBuf,
    /// The mail location to serve it with.
    pub mail_location: String,
}

/// Creates (or recreates) the demo tree under `dir`.
pub fn create(dir: &Path) -> io::Result<DemoTree> {
    if dir.exists() {
        if !dir.join(MARKER).exists() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!(
                    "{} exists and is not a shardpop demo tree; pick another --dir",
                    dir.display()
                ),
            ));
        }
        fs::remove_dir_all(dir)?;
    }
    fs::create_dir_all(dir)?;
    fs::write(
        dir.join(MARKER),
        b"created by shardpop demo; safe to delete\n",
    )?;
    let mut passwd = String::new();
    for (i, user) in USERS.iter().enumerate() {
        // Mixed schemes, as a real passwd-file has after years of migrations.
        let scheme = [Scheme::Plain, Scheme::Sha512Crypt, Scheme::Ssha256][i % 3];
        let hash = hash_password(scheme, user.password.as_bytes());
        passwd.push_str(&format!(
            "{}:{hash}:1000:1000::{}::\n",
            user.name,
            dir.join("home").join(user.name).display()
        ));
    }
    let passwd_file = dir.join("passwd");
    fs::write(&passwd_file, passwd)?;
    for user in &USERS {
        let maildir = dir.join("home").join(user.name).join("Maildir");
        for sub in ["cur", "new", "tmp"] {
            fs::create_dir_all(maildir.join(sub))?;
        }
        if user.name == "carol" {
            continue;
        }
        for (n, body) in messages(user.name).iter().enumerate() {
            let base = format!("{}.M{n}P1.demo", 1_700_000_000 + n);
            let crlf = body.len() + body.iter().filter(|&&b| b == b'\n').count()
                - body.windows(2).filter(|w| w == b"\r\n").count();
            let sub = if n % 2 == 0 { "cur" } else { "new" };
            let name = if sub == "cur" {
                format!("{base},S={},W={crlf}:2,S", body.len())
            } else {
                base
            };
            fs::write(maildir.join(sub).join(name), body)?;
        }
    }
    Ok(DemoTree {
        passwd_file,
        mail_location: format!("maildir:{}/home/%u/Maildir", dir.display()),
    })
}

fn messages(user: &str) -> Vec<Vec<u8>> {
    let header = |n: usize, subject: &str| {
        format!(
            "Return-Path: <news@example.net>\nFrom: Example News <news@example.net>\nTo: {user}\n\
             Subject: {subject}\nDate: Tue, 14 Nov 2023 22:13:{n:02} +0000\n\
             Message-ID: <demo-{n}@example.net>\nMIME-Version: 1.0\n"
        )
    };
    use base64::Engine as _;
    let bytes: Vec<u8> = (0u32..3000)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let encoded = base64::engine::general_purpose::STANDARD.encode(bytes);
    let mut attachment = String::new();
    for line in encoded.as_bytes().chunks(76) {
        attachment.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        attachment.push('\n');
    }
    vec![
        format!("{}Content-Type: text/plain\n\nHello {user},\n\nThis is shardpop's demo mailbox.\n", header(1, "Welcome")).into_bytes(),
        format!(
            "{}Content-Type: text/plain\n\nLines that begin with a dot are stuffed on the wire:\n.\n..\n.hidden\n. spaced\nend\n",
            header(2, "Dots")
        )
        .into_bytes(),
        [header(3, "8-bit").as_bytes(), b"Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\nGr\xc3\xbc\xc3\x9fe aus K\xc3\xb6ln \xe2\x80\x94 \xe2\x82\xac5\n"].concat(),
        format!(
            "{}Content-Type: multipart/mixed; boundary=\"b1\"\n\n--b1\nContent-Type: text/plain\n\nSee attachment.\n--b1\n\
             Content-Type: application/octet-stream\nContent-Transfer-Encoding: base64\n\n{attachment}--b1--\n",
            header(4, "Attachment")
        )
        .into_bytes(),
        format!("{}\r\nStored with CRLF line ends.\r\n.\r\n", header(5, "CRLF").replace('\n', "\r\n")).into_bytes(),
        format!("{}\nNo final newline.", header(6, "Unterminated")).into_bytes(),
    ]
}
