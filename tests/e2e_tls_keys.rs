//! TLS keys with a real client (`openssl s_client`): one certificate per key
//! type, each client served the one its signature algorithms allow; session
//! resumption across shards, and across two server processes that share a
//! ticket key file.

#[macro_use]
mod common;
#[path = "common/scrape.rs"]
mod scrape;
#[path = "common/tls_fixture.rs"]
mod tls_fixture;

use std::path::Path;
use std::process::{Command, Stdio};

use common::{Engine, Opts, Server, Tree};
use tls_fixture::{Leaf, TestCa};

/// A tree with one user, a CA, an ECDSA and an RSA leaf.
struct Keys {
    tree: Tree,
    ca: TestCa,
    ecdsa: Leaf,
    rsa: Leaf,
}

fn keys() -> Keys {
    let mut tree = Tree::new();
    tree.user("alice", "pw");
    tree.deliver("alice", 1, b"Subject: hi\n\nbody\n");
    let ca = TestCa::new(tree.root());
    let ecdsa = ca.issue(tree.root(), "ecdsa");
    let rsa = ca.issue_rsa(tree.root(), "rsa");
    Keys {
        tree,
        ca,
        ecdsa,
        rsa,
    }
}

/// A server with an implicit-TLS listener, the given certificates (flags,
/// in order) and extra TOML.
fn start(k: &Keys, engine: Engine, leaves: &[&Leaf], toml: &str) -> Server {
    let mut args: Vec<String> = vec!["--tls-listen".into(), "127.0.0.1:0".into()];
    args.extend(["--metrics-listen".into(), "127.0.0.1:0".into()]);
    for leaf in leaves {
        args.push("--tls-cert".into());
        args.push(leaf.cert.display().to_string());
        args.push("--tls-key".into());
        args.push(leaf.key.display().to_string());
    }
    Server::start_with(
        &k.tree,
        Opts {
            shards: 2,
            toml: toml.to_string(),
            args,
            ..Opts::new(engine)
        },
    )
}

/// `openssl s_client` to `server`'s implicit-TLS port with `extra` flags;
/// sends QUIT and reads to the server's close (so TLS 1.3 tickets arrive
/// before it exits). Returns everything it printed.
fn s_client(server: &Server, ca: &Path, extra: &[&str]) -> String {
    let out = Command::new("openssl")
        .args(["s_client", "-ign_eof", "-connect"])
        .arg(server.tls_addr().to_string())
        .arg("-CAfile")
        .arg(ca)
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            let mut stdin = child.stdin.take().unwrap();
            stdin.write_all(b"QUIT\r\n")?;
            drop(stdin);
            child.wait_with_output()
        })
        .expect("run openssl s_client");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn assert_rsa(out: &str) {
    assert!(out.contains("Server public key is 2048 bit"), "{out}");
    assert!(out.contains("Peer signature type: RSA"), "{out}");
    assert!(out.contains("Verify return code: 0 (ok)"), "{out}");
    assert!(out.contains("+OK"), "{out}");
}

fn assert_ecdsa(out: &str) {
    assert!(out.contains("Server public key is 256 bit"), "{out}");
    assert!(out.contains("Peer signature type: ECDSA"), "{out}");
    assert!(out.contains("Verify return code: 0 (ok)"), "{out}");
    assert!(out.contains("+OK"), "{out}");
}

const RSA_SIGALGS: &str = "RSA-PSS+SHA256:RSA-PSS+SHA384:RSA+SHA256:RSA+SHA384";

engine_test!(each_client_gets_the_certificate_its_sigalgs_allow);
fn each_client_gets_the_certificate_its_sigalgs_allow(engine: Engine) {
    let k = keys();
    // RSA given first: a modern client still gets ECDSA.
    let server = start(&k, engine, &[&k.rsa, &k.ecdsa], "");
    let metrics = scrape::metrics_addr(&server);
    let offloaded = || {
        scrape::sample(
            &scrape::scrape(&metrics),
            "shardpop_tls_handshakes_offloaded_total",
        )
    };
    let ca = &k.ca.ca_pem;
    for (round, version) in ["-tls1_3", "-tls1_2"].into_iter().enumerate() {
        // ECDSA P-256 signs on the shard; RSA signs on the worker pool.
        assert_ecdsa(&s_client(&server, ca, &[version]));
        assert_eq!(offloaded(), round as f64, "{version}");
        assert_rsa(&s_client(&server, ca, &[version, "-sigalgs", RSA_SIGALGS]));
        assert_eq!(offloaded(), round as f64 + 1.0, "{version}");
        let ecdsa_only = "ECDSA+SHA256:ECDSA+SHA384";
        assert_ecdsa(&s_client(&server, ca, &[version, "-sigalgs", ecdsa_only]));
    }
    assert_eq!(offloaded(), 2.0);
}

engine_test!(both_certificates_from_the_toml_list_and_sighup);
fn both_certificates_from_the_toml_list_and_sighup(engine: Engine) {
    let k = keys();
    let toml = format!(
        "[tls]\ncert = [\"{}\", \"{}\"]\nkey = [\"{}\", \"{}\"]\n",
        k.ecdsa.cert.display(),
        k.rsa.cert.display(),
        k.ecdsa.key.display(),
        k.rsa.key.display()
    );
    let server = start(&k, engine, &[], &toml);
    let ca = &k.ca.ca_pem;
    assert_ecdsa(&s_client(&server, ca, &[]));
    assert_rsa(&s_client(&server, ca, &["-sigalgs", RSA_SIGALGS]));

    // A renewed ECDSA certificate after SIGHUP; RSA still served.
    let before = s_client(&server, ca, &[]);
    k.ca.issue_over(&k.ecdsa.cert, &k.ecdsa.key);
    let renewed = first_pem_block(&std::fs::read_to_string(&k.ecdsa.cert).unwrap());
    assert!(!before.contains(&renewed));
    server.signal(libc::SIGHUP);
    server.wait_log("TLS certificate reloaded");
    let out = s_client(&server, ca, &[]);
    assert_ecdsa(&out);
    assert!(out.contains(&renewed), "{out}");
    assert_rsa(&s_client(&server, ca, &["-sigalgs", RSA_SIGALGS]));
}

/// The leaf of a PEM chain, as `s_client` prints the server certificate.
fn first_pem_block(pem: &str) -> String {
    let end = "-----END CERTIFICATE-----";
    let at = pem.find(end).expect("a certificate") + end.len();
    pem[..at].to_string()
}

/// Connects once saving the session to `sess`, returns whether it resumed
/// the session read from `sess` (if given).
fn connect_with_session(
    server: &Server,
    ca: &Path,
    sess_in: Option<&Path>,
    sess_out: &Path,
) -> bool {
    let mut args = vec!["-sess_out", sess_out.to_str().unwrap()];
    if let Some(path) = sess_in {
        args.extend(["-sess_in", path.to_str().unwrap()]);
    }
    let out = s_client(server, ca, &args);
    assert!(out.contains("+OK"), "{out}");
    if out.contains("Reused, TLSv1.3") || out.contains("Reused, TLSv1.2") {
        return true;
    }
    assert!(out.contains("New, TLSv1"), "{out}");
    false
}

engine_test!(sessions_resume_on_every_shard_of_a_process);
fn sessions_resume_on_every_shard_of_a_process(engine: Engine) {
    let k = keys();
    let server = start(&k, engine, &[&k.ecdsa], "");
    let ca = &k.ca.ca_pem;
    let sess = k.tree.root().join("sess.pem");
    assert!(!connect_with_session(&server, ca, None, &sess));
    // Two shards, new source ports each time: the connections spread over
    // both shards, and every one resumes.
    for i in 0..8 {
        let next = k.tree.root().join(format!("sess{i}.pem"));
        assert!(
            connect_with_session(&server, ca, Some(&sess), &next),
            "connection {i}"
        );
    }
}

fn write_ticket_key(path: &Path, fill: u8) {
    std::fs::write(path, format!("{}\n", format!("{fill:02x}").repeat(64))).unwrap();
}

engine_test!(two_processes_sharing_a_ticket_key_file_resume_each_others_sessions);
fn two_processes_sharing_a_ticket_key_file_resume_each_others_sessions(engine: Engine) {
    let k = keys();
    let ca = &k.ca.ca_pem;
    let ticket_keys = k.tree.root().join("tickets.key");
    write_ticket_key(&ticket_keys, 7);
    let toml = format!("[tls]\nticket_key_file = \"{}\"\n", ticket_keys.display());
    let node_a = start(&k, engine, &[&k.ecdsa], &toml);
    let node_b = start(&k, engine, &[&k.ecdsa], &toml);
    let from_a = k.tree.root().join("a.pem");
    assert!(!connect_with_session(&node_a, ca, None, &from_a));
    let on_b = k.tree.root().join("b.pem");
    assert!(
        connect_with_session(&node_b, ca, Some(&from_a), &on_b),
        "node B resumes node A's session"
    );

    // Control: a node without the file has its own keys.
    let node_c = start(&k, engine, &[&k.ecdsa], "");
    let on_c = k.tree.root().join("c.pem");
    assert!(!connect_with_session(&node_c, ca, Some(&from_a), &on_c));

    // Rotation: node B gets a new key on SIGHUP; node A's old ticket still
    // resumes there (the previous key decrypts), and B's new ticket resumes
    // on a node started with only the new key.
    write_ticket_key(&ticket_keys, 8);
    node_b.signal(libc::SIGHUP);
    node_b.wait_log("TLS certificate reloaded");
    let again = k.tree.root().join("again.pem");
    assert!(connect_with_session(&node_b, ca, Some(&from_a), &again));
    let fresh = k.tree.root().join("fresh.pem");
    assert!(!connect_with_session(&node_b, ca, None, &fresh));
    let node_d = start(&k, engine, &[&k.ecdsa], &toml);
    let on_d = k.tree.root().join("d.pem");
    assert!(connect_with_session(&node_d, ca, Some(&fresh), &on_d));
}
