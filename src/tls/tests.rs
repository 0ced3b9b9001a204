//! A rustls client and a [`TlsLayer`] talking in memory: no sockets.
//! Certificates come from the same rcgen fixture the end-to-end tests use.

#[path = "../../tests/common/tls_fixture.rs"]
mod tls_fixture;

use std::io::{ErrorKind, Read, Write};
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, HandshakeKind, RootCertStore, ServerConfig};
use rustls::{SupportedProtocolVersion, version};

use super::*;
use tls_fixture::{Leaf, TestCa};

/// A CA and one leaf in a temp dir that lives as long as this.
struct Fixture {
    dir: tempfile::TempDir,
    ca: TestCa,
    leaf: Leaf,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = TestCa::new(dir.path());
        let leaf = ca.issue(dir.path(), "server");
        Fixture { dir, ca, leaf }
    }

    fn files(&self) -> TlsFiles {
        TlsFiles::single(&self.leaf.cert, &self.leaf.key)
    }

    fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }

    /// A client config trusting the fixture CA, limited to `version`.
    fn client_config(&self, version: &'static SupportedProtocolVersion) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from(self.ca.der()))
            .expect("CA into root store");
        let config =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_protocol_versions(&[version])
                .expect("client versions")
                .with_root_certificates(roots)
                .with_no_client_auth();
        Arc::new(config)
    }
}

/// A client and a server layer, with what each side has received so far.
/// Ciphertext is delivered `chunk_bytes` at a time in both directions.
struct Pair {
    client: ClientConnection,
    server: TlsLayer,
    chunk_bytes: usize,
    server_got: Vec<u8>,
    client_got: Vec<u8>,
    client_saw_close: bool,
    /// ClientHellos whose answer the layer left to the caller (costly keys).
    costly_answers: usize,
}

impl Pair {
    fn new(server: Arc<ServerConfig>, client: Arc<ClientConfig>, chunk_bytes: usize) -> Pair {
        let name = ServerName::try_from("localhost").expect("server name");
        Pair {
            client: ClientConnection::new(client, name).expect("client connection"),
            server: TlsLayer::new(server).expect("server layer"),
            chunk_bytes,
            server_got: Vec::new(),
            client_got: Vec::new(),
            client_saw_close: false,
            costly_answers: 0,
        }
    }

    /// Everything the client has to send, into the server; the server's
    /// plaintext is drained as it arrives. Returns the ciphertext bytes moved.
    fn client_to_server(&mut self) -> usize {
        let mut wire = Vec::new();
        while self.client.wants_write() {
            self.client.write_tls(&mut wire).expect("client write_tls");
        }
        for piece in wire.chunks(self.chunk_bytes) {
            let mut offered = piece;
            while !offered.is_empty() {
                let taken = self.server.receive(offered).expect("server receive");
                offered = &offered[taken..];
                if let Some(answer) = self.server.take_costly_answer() {
                    // As the worker pool would, here on the test's thread.
                    self.costly_answers += 1;
                    self.server.answered(answer.run()).expect("answer");
                    assert!(!self.server.is_answering());
                    continue;
                }
                let drained = self.drain_server();
                assert!(taken > 0 || drained > 0, "receive stalled");
            }
        }
        wire.len()
    }

    fn drain_server(&mut self) -> usize {
        let mut drained = 0;
        let mut buf = [0u8; 1000];
        loop {
            let n = self.server.read_plaintext(&mut buf);
            if n == 0 {
                assert!(!self.server.has_plaintext());
                return drained;
            }
            self.server_got.extend_from_slice(&buf[..n]);
            drained += n;
        }
    }

    /// Everything the server has to send, into the client. Returns the
    /// ciphertext bytes moved.
    fn server_to_client(&mut self) -> usize {
        let mut wire = Vec::new();
        let appended = self.server.write_ciphertext(&mut wire);
        assert_eq!(appended, wire.len());
        assert!(!self.server.wants_write());
        for piece in wire.chunks(self.chunk_bytes) {
            let mut rest = piece;
            while !rest.is_empty() {
                self.client.read_tls(&mut rest).expect("client read_tls");
                self.client.process_new_packets().expect("client process");
                // The client has a plaintext limit too: drain as we go.
                self.drain_client();
            }
        }
        wire.len()
    }

    fn drain_client(&mut self) {
        let mut buf = [0u8; 4096];
        loop {
            match self.client.reader().read(&mut buf) {
                Ok(0) => {
                    self.client_saw_close = true;
                    return;
                }
                Ok(n) => self.client_got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) => panic!("client read: {e}"),
            }
        }
    }

    /// Moves bytes both ways until neither side has anything to send.
    fn run(&mut self) {
        for _ in 0..100 {
            let moved = self.client_to_server() + self.server_to_client();
            if moved == 0 {
                return;
            }
        }
        panic!("still moving bytes after 100 rounds");
    }

    fn handshake(&mut self) {
        assert!(self.server.is_handshaking());
        assert_eq!(self.server.describe(), None);
        self.run();
        assert!(!self.server.is_handshaking());
        assert!(!self.client.is_handshaking());
    }
}

const VERSIONS: [(&SupportedProtocolVersion, &str); 2] = [
    (&version::TLS12, "TLSv1.2 TLS_ECDHE_"),
    (&version::TLS13, "TLSv1.3 TLS13_"),
];

/// The whole exchange for one version and delivery size: greeting queued
/// before the handshake, a command in, a reply out.
fn converse(version: &'static SupportedProtocolVersion, describe_prefix: &str, chunk_bytes: usize) {
    let fx = Fixture::new();
    let server = load_server_config(&fx.files()).expect("load");
    let mut pair = Pair::new(server, fx.client_config(version), chunk_bytes);
    // Implicit TLS: the greeting is written before the client said anything.
    pair.server
        .send_plaintext(b"+OK shardpop ready\r\n")
        .unwrap();
    pair.handshake();

    let described = pair.server.describe().expect("describe after handshake");
    assert!(
        described.starts_with(describe_prefix),
        "{described:?} for chunk {chunk_bytes}"
    );
    let served = pair.client.peer_certificates().expect("server certificate");
    assert_eq!(served[0].as_ref(), fx.leaf.der.as_slice());
    assert_eq!(pair.client_got, b"+OK shardpop ready\r\n");

    pair.client.writer().write_all(b"USER alice\r\n").unwrap();
    pair.run();
    assert_eq!(pair.server_got, b"USER alice\r\n");
    pair.server.send_plaintext(b"+OK\r\n").unwrap();
    pair.run();
    assert_eq!(pair.client_got, b"+OK shardpop ready\r\n+OK\r\n");
}

#[test]
fn tls12_and_tls13_handshake_and_data_at_every_delivery_size() {
    for (version, prefix) in VERSIONS {
        for chunk_bytes in [1, 2, 5, 7, 100, 1 << 20] {
            converse(version, prefix, chunk_bytes);
        }
    }
}

/// Implicit TLS 1.3: the greeting leaves with the server's first flight
/// (0.5-RTT data), so the client reads it without waiting one more round
/// trip for its Finished to reach the server. TLS 1.2 has no such data: the
/// greeting follows the handshake.
#[test]
fn the_greeting_leaves_with_the_first_flight_on_tls13_only() {
    let cases = [(&version::TLS13, true), (&version::TLS12, false)];
    // ECDSA is answered in place; RSA through a costly answer (the pool's
    // path), after which the greeting is handed to rustls.
    for ((version, half_rtt), rsa) in cases.into_iter().flat_map(|c| [(c, false), (c, true)]) {
        let fx = Fixture::new();
        let files = if rsa {
            let leaf = fx.ca.issue_rsa(fx.dir.path(), "rsa");
            TlsFiles::single(&leaf.cert, &leaf.key)
        } else {
            fx.files()
        };
        let server = load_server_config(&files).expect("load");
        let mut pair = Pair::new(server, fx.client_config(version), 1 << 20);
        pair.server
            .send_plaintext(b"+OK shardpop ready\r\n")
            .unwrap();
        pair.client_to_server(); // ClientHello
        pair.server_to_client(); // the server's flight
        assert!(
            pair.server.is_handshaking(),
            "the client's Finished is not in"
        );
        let expected: &[u8] = if half_rtt {
            b"+OK shardpop ready\r\n"
        } else {
            b""
        };
        assert_eq!(pair.client_got, expected, "{version:?} rsa={rsa}");
        assert_eq!(pair.costly_answers, usize::from(rsa));
        pair.handshake();
        assert_eq!(pair.client_got, b"+OK shardpop ready\r\n", "{version:?}");
    }
}

#[test]
fn a_client_defaulting_to_both_versions_gets_tls13() {
    let fx = Fixture::new();
    let mut roots = RootCertStore::empty();
    roots.add(CertificateDer::from(fx.ca.der())).unwrap();
    let client =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    let mut pair = Pair::new(
        load_server_config(&fx.files()).unwrap(),
        Arc::new(client),
        1 << 20,
    );
    pair.handshake();
    assert!(pair.server.describe().unwrap().starts_with("TLSv1.3 "));
}

#[test]
fn bulk_data_both_ways_with_backpressure_on_received_plaintext() {
    for (version, _) in VERSIONS {
        let fx = Fixture::new();
        let server = load_server_config(&fx.files()).unwrap();
        let mut pair = Pair::new(server, fx.client_config(version), 1 << 20);
        pair.handshake();

        let upload: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        pair.client.set_buffer_limit(None);
        pair.client.writer().write_all(&upload).unwrap();
        let mut wire = Vec::new();
        while pair.client.wants_write() {
            pair.client.write_tls(&mut wire).unwrap();
        }
        // Offer everything without reading plaintext: the layer stops
        // taking ciphertext once plaintext piles up, within its bound.
        let taken = pair.server.receive(&wire).unwrap();
        assert!(taken < wire.len(), "{taken} of {}", wire.len());
        assert!(pair.server.has_plaintext());
        let mut got = Vec::new();
        let mut offered = &wire[taken..];
        let mut buf = vec![0u8; PLAINTEXT_BUFFERED_BYTES_MAX + 1];
        loop {
            let n = pair.server.read_plaintext(&mut buf);
            assert!(n <= PLAINTEXT_BUFFERED_BYTES_MAX, "{n} buffered");
            got.extend_from_slice(&buf[..n]);
            if offered.is_empty() && n == 0 {
                break;
            }
            let taken = pair.server.receive(offered).unwrap();
            offered = &offered[taken..];
        }
        assert!(got == upload, "upload arrived intact");

        let download: Vec<u8> = (0..300_000u32).map(|i| (i % 241) as u8).collect();
        for piece in download.chunks(16 * 1024) {
            pair.server.send_plaintext(piece).unwrap();
        }
        pair.run();
        assert!(pair.client_got == download, "download arrived intact");
    }
}

#[test]
fn read_plaintext_into_a_small_buffer_keeps_the_rest() {
    let fx = Fixture::new();
    let server = load_server_config(&fx.files()).unwrap();
    let mut pair = Pair::new(server, fx.client_config(&version::TLS13), 1 << 20);
    pair.handshake();
    pair.client.writer().write_all(b"LIST\r\nSTAT\r\n").unwrap();
    let mut wire = Vec::new();
    while pair.client.wants_write() {
        pair.client.write_tls(&mut wire).unwrap();
    }
    assert_eq!(pair.server.receive(&wire).unwrap(), wire.len());
    let mut four = [0u8; 4];
    assert_eq!(pair.server.read_plaintext(&mut four), 4);
    assert_eq!(&four, b"LIST");
    assert!(pair.server.has_plaintext());
    assert_eq!(pair.server.read_plaintext(&mut []), 0);
    let mut rest = [0u8; 64];
    assert_eq!(pair.server.read_plaintext(&mut rest), 8);
    assert_eq!(&rest[..8], b"\r\nSTAT\r\n");
    assert!(!pair.server.has_plaintext());
    assert_eq!(pair.server.read_plaintext(&mut rest), 0);
}

#[test]
fn an_empty_receive_is_not_eof() {
    let fx = Fixture::new();
    let server = load_server_config(&fx.files()).unwrap();
    let mut pair = Pair::new(server, fx.client_config(&version::TLS13), 1 << 20);
    assert_eq!(pair.server.receive(&[]).unwrap(), 0);
    assert!(!pair.server.wants_write());
    pair.handshake();
    assert_eq!(pair.server.receive(&[]).unwrap(), 0);
    assert!(!pair.server.peer_closed());
    pair.client.writer().write_all(b"NOOP\r\n").unwrap();
    pair.run();
    assert_eq!(pair.server_got, b"NOOP\r\n");
}

#[test]
fn close_notify_both_ways() {
    for (version, _) in VERSIONS {
        let fx = Fixture::new();
        let server = load_server_config(&fx.files()).unwrap();
        let mut pair = Pair::new(server, fx.client_config(version), 3);
        pair.handshake();

        // Client: "QUIT" then close_notify in one flight.
        pair.client.writer().write_all(b"QUIT\r\n").unwrap();
        pair.client.send_close_notify();
        assert!(!pair.server.peer_closed());
        pair.client_to_server();
        assert!(pair.server.peer_closed());
        assert_eq!(pair.server_got, b"QUIT\r\n");
        // Anything after close_notify is taken and ignored (RFC 8446 6.1).
        let junk = b"\x17\x03\x03\x00\x04junk";
        assert_eq!(pair.server.receive(junk).unwrap(), junk.len());
        assert!(!pair.server.has_plaintext());

        // Server: last reply, then close_notify; the client sees a clean EOF.
        pair.server.send_plaintext(b"+OK bye\r\n").unwrap();
        pair.server.send_close_notify();
        assert!(pair.server.wants_write());
        pair.server_to_client();
        assert_eq!(pair.client_got, b"+OK bye\r\n");
        assert!(pair.client_saw_close);
        assert!(matches!(
            pair.server.send_plaintext(b"late"),
            Err(TlsError::Closed)
        ));
    }
}

/// Whatever `receive` rejected, the layer must answer with an alert and
/// refuse to carry on.
fn assert_failed_with_alert(layer: &mut TlsLayer, error: TlsError) -> Vec<u8> {
    assert!(matches!(error, TlsError::Peer(_)), "{error:?}");
    assert!(error.is_peer_fault());
    assert!(layer.wants_write(), "an alert is queued");
    let mut out = Vec::new();
    assert!(layer.write_ciphertext(&mut out) > 0);
    assert!(matches!(layer.send_plaintext(b"x"), Err(TlsError::Closed)));
    // The failure sticks: more input gets the same answer.
    assert!(
        layer
            .receive(&[0x16, 0x03, 0x03, 0x00, 0x01, 0x00])
            .is_err()
    );
    out
}

fn fresh_layer() -> (Fixture, TlsLayer) {
    let fx = Fixture::new();
    let layer = TlsLayer::new(load_server_config(&fx.files()).unwrap()).unwrap();
    (fx, layer)
}

#[test]
fn garbage_ciphertext_fails_and_queues_an_alert() {
    let (_fx, mut layer) = fresh_layer();
    let garbage: Vec<u8> = (0..64u8).map(|i| i.wrapping_mul(37) ^ 0xA5).collect();
    let error = layer.receive(&garbage).unwrap_err();
    let alert = assert_failed_with_alert(&mut layer, error);
    assert_eq!(alert[0], 0x15, "a plaintext alert record: {alert:?}");
}

#[test]
fn a_plaintext_pop3_line_to_a_tls_layer_fails() {
    let (_fx, mut layer) = fresh_layer();
    let error = layer.receive(b"USER x\r\n").unwrap_err();
    // 'U' (0x55) is no TLS record type.
    assert!(
        matches!(
            error,
            TlsError::Peer(rustls::Error::InvalidMessage(
                rustls::InvalidMessage::InvalidContentType
            ))
        ),
        "{error:?}"
    );
    let alert = assert_failed_with_alert(&mut layer, error);
    assert_eq!(alert[0], 0x15, "a plaintext alert record: {alert:?}");
}

#[test]
fn a_corrupted_record_after_the_handshake_fails_and_the_client_gets_the_alert() {
    for (version, _) in VERSIONS {
        let fx = Fixture::new();
        let server = load_server_config(&fx.files()).unwrap();
        let mut pair = Pair::new(server, fx.client_config(version), 1 << 20);
        pair.handshake();
        pair.client.writer().write_all(b"PASS secret\r\n").unwrap();
        let mut wire = Vec::new();
        while pair.client.wants_write() {
            pair.client.write_tls(&mut wire).unwrap();
        }
        let last = wire.len() - 1;
        wire[last] ^= 0x01; // the AEAD tag no longer matches
        let error = pair.server.receive(&wire).unwrap_err();
        assert!(!pair.server.has_plaintext());
        let alert = assert_failed_with_alert(&mut pair.server, error);
        let mut rest = alert.as_slice();
        pair.client.read_tls(&mut rest).unwrap();
        let client_error = pair.client.process_new_packets().unwrap_err();
        assert!(
            matches!(client_error, rustls::Error::AlertReceived(_)),
            "{client_error:?}"
        );
    }
}

#[test]
fn resumption_works_for_both_versions() {
    for (version, _) in VERSIONS {
        let fx = Fixture::new();
        let server = load_server_config(&fx.files()).unwrap();
        let client = fx.client_config(version);
        let mut first = Pair::new(server.clone(), client.clone(), 1 << 20);
        first.handshake();
        assert_eq!(first.client.handshake_kind(), Some(HandshakeKind::Full));
        let mut second = Pair::new(server, client, 1 << 20);
        second.handshake();
        assert_eq!(
            second.client.handshake_kind(),
            Some(HandshakeKind::Resumed),
            "{version:?}"
        );
    }
}

/// A client that opens two connections at once after one handshake (a mail
/// client checking two accounts on one server) resumes both: each TLS 1.3
/// handshake leaves it two tickets, and a ticket is used once.
#[test]
fn two_parallel_connections_both_resume_after_one_handshake() {
    let fx = Fixture::new();
    let server = load_server_config(&fx.files()).unwrap();
    let client = fx.client_config(&version::TLS13);
    let mut first = Pair::new(server.clone(), client.clone(), 1 << 20);
    first.handshake();
    let mut a = Pair::new(server.clone(), client.clone(), 1 << 20);
    let mut b = Pair::new(server, client, 1 << 20);
    // Both ClientHellos leave before either handshake ends.
    a.client_to_server();
    b.client_to_server();
    a.handshake();
    b.handshake();
    assert_eq!(a.client.handshake_kind(), Some(HandshakeKind::Resumed));
    assert_eq!(b.client.handshake_kind(), Some(HandshakeKind::Resumed));
}

#[test]
fn tls12_clients_without_tickets_resume_from_the_session_cache() {
    let fx = Fixture::new();
    let server = load_server_config(&fx.files()).unwrap();
    let mut client = (*fx.client_config(&version::TLS12)).clone();
    client.resumption = rustls::client::Resumption::default()
        .tls12_resumption(rustls::client::Tls12Resumption::SessionIdOnly);
    let client = Arc::new(client);
    let mut first = Pair::new(server.clone(), client.clone(), 1 << 20);
    first.handshake();
    assert_eq!(first.client.handshake_kind(), Some(HandshakeKind::Full));
    let mut second = Pair::new(server.clone(), client.clone(), 1 << 20);
    second.handshake();
    assert_eq!(second.client.handshake_kind(), Some(HandshakeKind::Resumed));

    // Control: the same server without its cache cannot resume this client.
    let mut uncached = (*server).clone();
    uncached.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    let mut third = Pair::new(Arc::new(uncached), client, 1 << 20);
    third.handshake();
    assert_eq!(third.client.handshake_kind(), Some(HandshakeKind::Full));
}

fn assert_send_sync<T: Send + Sync>() {}

#[test]
fn reloader_is_shared_between_shards() {
    assert_send_sync::<TlsReloader>();
    fn assert_send<T: Send>() {}
    assert_send::<TlsLayer>();
}

#[test]
fn reload_serves_the_new_certificate_to_new_sessions_only() {
    let fx = Fixture::new();
    let reloader = TlsReloader::new(fx.files()).unwrap();
    assert_eq!(reloader.files(), &fx.files());
    let client = fx.client_config(&version::TLS13);
    let before = reloader.current();
    let mut old = Pair::new(before.clone(), client.clone(), 1 << 20);
    old.handshake();

    let renewed = fx.ca.issue_over(&fx.leaf.cert, &fx.leaf.key);
    assert_ne!(renewed.der, fx.leaf.der);
    reloader.reload().expect("reload");
    assert!(!Arc::ptr_eq(&before, &reloader.current()));

    // A new session gets the new certificate (full handshake with a fresh
    // client config, so it is not a resumption).
    let mut new = Pair::new(
        reloader.current(),
        fx.client_config(&version::TLS13),
        1 << 20,
    );
    new.handshake();
    let served = new.client.peer_certificates().unwrap();
    assert_eq!(served[0].as_ref(), renewed.der.as_slice());

    // The session from before the reload carries on with its own config.
    old.client.writer().write_all(b"STAT\r\n").unwrap();
    old.run();
    assert_eq!(old.server_got, b"STAT\r\n");
    old.server.send_plaintext(b"+OK 0 0\r\n").unwrap();
    old.run();
    assert_eq!(old.client_got, b"+OK 0 0\r\n");

    // Resumption state outlives the reload: the old client resumes.
    let mut again = Pair::new(reloader.current(), client, 1 << 20);
    again.handshake();
    assert_eq!(again.client.handshake_kind(), Some(HandshakeKind::Resumed));
}

#[test]
fn a_failed_reload_keeps_the_old_config() {
    let fx = Fixture::new();
    let reloader = TlsReloader::new(fx.files()).unwrap();
    let before = reloader.current();

    std::fs::write(&fx.leaf.cert, "-----BEGIN CERTIFICATE-----\nnot base64!\n").unwrap();
    let error = reloader.reload().unwrap_err();
    assert!(matches!(&error, TlsError::Pem { path, .. } if *path == fx.leaf.cert));
    assert!(
        error
            .to_string()
            .contains(&fx.leaf.cert.display().to_string())
    );
    assert!(Arc::ptr_eq(&before, &reloader.current()));

    // New sessions still get the old, good certificate.
    let mut pair = Pair::new(
        reloader.current(),
        fx.client_config(&version::TLS12),
        1 << 20,
    );
    pair.handshake();
    let served = pair.client.peer_certificates().unwrap();
    assert_eq!(served[0].as_ref(), fx.leaf.der.as_slice());
}

#[test]
fn certificate_and_key_in_one_file_load() {
    let fx = Fixture::new();
    let both = fx.path("both.pem");
    let cert = std::fs::read_to_string(&fx.leaf.cert).unwrap();
    let key = std::fs::read_to_string(&fx.leaf.key).unwrap();
    std::fs::write(&both, format!("{key}{cert}")).unwrap();
    let files = TlsFiles::single(&both, &both);
    let mut pair = Pair::new(
        load_server_config(&files).unwrap(),
        fx.client_config(&version::TLS13),
        1 << 20,
    );
    pair.handshake();
    // The full chain is served: leaf, then the CA.
    assert_eq!(pair.client.peer_certificates().unwrap().len(), 2);
}

/// One load failure: which files, what variant, and the file(s) its message
/// must name.
fn load_error(files: &TlsFiles, named: &[&Path]) -> TlsError {
    let error = load_server_config(files).expect_err("load must fail");
    assert!(!error.is_peer_fault(), "{error:?}");
    let message = error.to_string();
    for path in named {
        assert!(
            message.contains(&path.display().to_string()),
            "{message:?} does not name {}",
            path.display()
        );
    }
    error
}

#[test]
fn load_errors_name_the_file() {
    let fx = Fixture::new();
    let good = fx.files();
    let with_cert = |cert: &Path| TlsFiles::single(cert, &good.key[0]);
    let with_key = |key: &Path| TlsFiles::single(&good.cert[0], key);

    let missing = fx.path("missing.pem");
    let error = load_error(&with_cert(&missing), &[&missing]);
    assert!(matches!(error, TlsError::Read { ref path, .. } if *path == missing));
    let error = load_error(&with_key(&missing), &[&missing]);
    assert!(matches!(error, TlsError::Read { ref path, .. } if *path == missing));

    // A key where the certificate should be, and the other way round.
    let error = load_error(&with_cert(&good.key[0]), &[&good.key[0]]);
    assert!(matches!(error, TlsError::NoCertificate(ref path) if *path == good.key[0]));
    let error = load_error(&with_key(&good.cert[0]), &[&good.cert[0]]);
    assert!(matches!(error, TlsError::NoKey(ref path) if *path == good.cert[0]));

    let text = fx.path("text.pem");
    std::fs::write(&text, "this is not PEM at all\n").unwrap();
    let error = load_error(&with_cert(&text), &[&text]);
    assert!(matches!(error, TlsError::NoCertificate(_)));

    let cut = fx.path("cut.pem");
    let cert_text = std::fs::read_to_string(&good.cert[0]).unwrap();
    std::fs::write(&cut, &cert_text[..cert_text.len() / 3]).unwrap();
    let error = load_error(&with_cert(&cut), &[&cut]);
    assert!(matches!(error, TlsError::Pem { ref path, .. } if *path == cut));

    let huge = fx.path("huge.pem");
    let padding = vec![b'#'; PEM_FILE_BYTES_MAX as usize + 1];
    std::fs::write(&huge, padding).unwrap();
    let error = load_error(&with_cert(&huge), &[&huge]);
    assert!(matches!(error, TlsError::TooLarge { ref path } if *path == huge));

    // A key that belongs to another certificate: rustls refuses the pair.
    let other = fx.ca.issue(fx.dir.path(), "other");
    let error = load_error(&with_key(&other.key), &[&good.cert[0], &other.key]);
    assert!(matches!(error, TlsError::Rejected { .. }), "{error:?}");
}

/// A client config trusting `fx`'s CA that offers only the signature
/// schemes `keep` allows (as an old client offering only RSA does).
fn client_offering(
    fx: &Fixture,
    version: &'static SupportedProtocolVersion,
    keep: fn(rustls::SignatureScheme) -> bool,
) -> Arc<ClientConfig> {
    let mut provider = rustls::crypto::ring::default_provider();
    let algorithms = provider.signature_verification_algorithms;
    let mapping: Vec<_> = algorithms
        .mapping
        .iter()
        .filter(|(scheme, _)| keep(*scheme))
        .copied()
        .collect();
    // Tests only: the provider wants 'static tables.
    provider.signature_verification_algorithms = rustls::crypto::WebPkiSupportedAlgorithms {
        all: algorithms.all,
        mapping: Vec::leak(mapping),
    };
    let mut roots = RootCertStore::empty();
    roots.add(CertificateDer::from(fx.ca.der())).unwrap();
    let config = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[version])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

fn is_rsa(scheme: rustls::SignatureScheme) -> bool {
    use rustls::SignatureScheme as S;
    matches!(
        scheme,
        S::RSA_PKCS1_SHA256
            | S::RSA_PKCS1_SHA384
            | S::RSA_PKCS1_SHA512
            | S::RSA_PSS_SHA256
            | S::RSA_PSS_SHA384
            | S::RSA_PSS_SHA512
    )
}

/// The leaf certificate a client with `client` config is served.
fn served_leaf(server: Arc<ServerConfig>, client: Arc<ClientConfig>) -> Vec<u8> {
    served(server, client).0
}

/// The leaf the client got, and how many ClientHellos the layer left to
/// the caller to answer off the shard.
fn served(server: Arc<ServerConfig>, client: Arc<ClientConfig>) -> (Vec<u8>, usize) {
    let mut pair = Pair::new(server, client, 1 << 20);
    pair.handshake();
    let leaf = pair.client.peer_certificates().unwrap()[0].to_vec();
    (leaf, pair.costly_answers)
}

#[test]
fn each_client_gets_the_certificate_its_signature_schemes_allow() {
    let fx = Fixture::new();
    let rsa = fx.ca.issue_rsa(fx.dir.path(), "rsa");
    // RSA listed first: a modern client still gets ECDSA.
    let files = TlsFiles {
        cert: vec![rsa.cert.clone(), fx.leaf.cert.clone()],
        key: vec![rsa.key.clone(), fx.leaf.key.clone()],
    };
    let server = load_server_config(&files).unwrap();
    for (version, _) in VERSIONS {
        // An ECDSA P-256 signature is answered in place; an RSA one is left
        // for the worker pool.
        let modern = fx.client_config(version);
        assert_eq!(
            served(server.clone(), modern),
            (fx.leaf.der.clone(), 0),
            "{version:?}"
        );
        let old = client_offering(&fx, version, is_rsa);
        assert_eq!(
            served(server.clone(), old),
            (rsa.der.clone(), 1),
            "{version:?}"
        );
        let ecdsa_only = client_offering(&fx, version, |s| !is_rsa(s));
        assert_eq!(served_leaf(server.clone(), ecdsa_only), fx.leaf.der);
    }

    // One RSA certificate alone serves everyone who offers RSA, and a client
    // that offers none of its schemes fails the handshake (an alert, no
    // panic), as with any server: at once, not through the pool.
    let rsa_only = load_server_config(&TlsFiles::single(&rsa.cert, &rsa.key)).unwrap();
    let modern = fx.client_config(&version::TLS13);
    assert_eq!(served(rsa_only.clone(), modern), (rsa.der.clone(), 1));
    let ecdsa_client = client_offering(&fx, &version::TLS13, |s| !is_rsa(s));
    let name = ServerName::try_from("localhost").unwrap();
    let mut client = ClientConnection::new(ecdsa_client, name).unwrap();
    let mut layer = TlsLayer::new(rsa_only).unwrap();
    let mut hello = Vec::new();
    client.write_tls(&mut hello).unwrap();
    assert!(matches!(layer.receive(&hello), Err(TlsError::Peer(_))));
    assert!(layer.take_costly_answer().is_none());
    let mut alert = Vec::new();
    assert!(layer.write_ciphertext(&mut alert) > 0);
}

#[test]
fn a_costly_answer_holds_input_and_plaintext_until_it_is_handed_back() {
    let fx = Fixture::new();
    let rsa = fx.ca.issue_rsa(fx.dir.path(), "rsa");
    let server = load_server_config(&TlsFiles::single(&rsa.cert, &rsa.key)).unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let mut client = ClientConnection::new(fx.client_config(&version::TLS13), name).unwrap();
    let mut layer = TlsLayer::new(server).unwrap();
    // The greeting, queued before the handshake, as on an implicit-TLS port.
    layer.send_plaintext(b"+OK ready\r\n").unwrap();
    let mut hello = Vec::new();
    client.write_tls(&mut hello).unwrap();
    assert_eq!(layer.receive(&hello).unwrap(), hello.len());
    assert!(layer.is_answering());
    assert!(!layer.wants_write(), "nothing to send before the answer");
    // While the answer is out, input waits in the caller's buffer.
    assert_eq!(layer.receive(b"more").unwrap(), 0);
    let answer = layer
        .take_costly_answer()
        .expect("an RSA signature is costly");
    assert!(layer.take_costly_answer().is_none(), "taken once");
    // Computed on another thread, as the worker pool does.
    let answer = std::thread::spawn(move || answer.run()).join().unwrap();
    layer.answered(answer).unwrap();
    assert!(!layer.is_answering());
    let mut flight = Vec::new();
    assert!(layer.write_ciphertext(&mut flight) > 0);
    let mut rest = &flight[..];
    while !rest.is_empty() {
        client.read_tls(&mut rest).unwrap();
        client.process_new_packets().unwrap();
    }
    let mut finished = Vec::new();
    client.write_tls(&mut finished).unwrap();
    layer.receive(&finished).unwrap();
    assert!(!layer.is_handshaking());
    let mut records = Vec::new();
    layer.write_ciphertext(&mut records);
    let mut rest = &records[..];
    while !rest.is_empty() {
        client.read_tls(&mut rest).unwrap();
        client.process_new_packets().unwrap();
    }
    let mut got = [0u8; 64];
    let n = client.reader().read(&mut got).unwrap();
    assert_eq!(&got[..n], b"+OK ready\r\n");
}

#[test]
fn resolver_prefers_ecdsa_then_configuration_order() {
    let fx = Fixture::new();
    let rsa = fx.ca.issue_rsa(fx.dir.path(), "rsa");
    let provider = rustls::crypto::ring::default_provider();
    let load = |leaf: &tls_fixture::Leaf| {
        let chain = CertificateDer::pem_file_iter(&leaf.cert)
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = rustls::pki_types::PrivateKeyDer::from_pem_file(&leaf.key).unwrap();
        rustls::sign::CertifiedKey::from_der(chain, key, &provider).unwrap()
    };
    let resolver = ByKeyType::new(vec![load(&rsa), load(&fx.leaf)]);
    assert_eq!(
        resolver.algorithms(),
        [
            rustls::SignatureAlgorithm::ECDSA,
            rustls::SignatureAlgorithm::RSA
        ]
    );
}

#[test]
fn certificates_and_keys_must_pair_up() {
    let fx = Fixture::new();
    let unpaired = TlsFiles {
        cert: vec![fx.leaf.cert.clone(), fx.leaf.cert.clone()],
        key: vec![fx.leaf.key.clone()],
    };
    let error = load_error(&unpaired, &[]);
    assert!(matches!(error, TlsError::Unpaired { certs: 2, keys: 1 }));
    let none = TlsFiles {
        cert: Vec::new(),
        key: Vec::new(),
    };
    assert!(matches!(
        load_error(&none, &[]),
        TlsError::Unpaired { certs: 0, keys: 0 }
    ));
    // A bad second pair names its own files.
    let other = fx.ca.issue(fx.dir.path(), "other");
    let mismatched = TlsFiles {
        cert: vec![fx.leaf.cert.clone(), other.cert.clone()],
        key: vec![fx.leaf.key.clone(), fx.leaf.key.clone()],
    };
    let error = load_error(&mismatched, &[&other.cert]);
    assert!(matches!(error, TlsError::Rejected { ref cert, .. } if *cert == other.cert));
}

#[test]
fn reload_keeps_serving_both_key_types() {
    let fx = Fixture::new();
    let rsa = fx.ca.issue_rsa(fx.dir.path(), "rsa");
    let files = TlsFiles {
        cert: vec![fx.leaf.cert.clone(), rsa.cert.clone()],
        key: vec![fx.leaf.key.clone(), rsa.key.clone()],
    };
    let reloader = TlsReloader::new(files).unwrap();
    let renewed = fx.ca.issue_over(&fx.leaf.cert, &fx.leaf.key);
    reloader.reload().unwrap();
    let modern = fx.client_config(&version::TLS13);
    assert_eq!(served_leaf(reloader.current(), modern), renewed.der);
    let old = client_offering(&fx, &version::TLS12, is_rsa);
    assert_eq!(served_leaf(reloader.current(), old), rsa.der);
}

/// Writes a ticket key file of `lines` (each one key, 64 bytes of `fill`).
fn write_ticket_keys(path: &Path, fills: &[u8]) {
    let text: String = fills
        .iter()
        .map(|fill| format!("{}\n", format!("{fill:02x}").repeat(TICKET_KEY_BYTES)))
        .collect();
    std::fs::write(path, text).unwrap();
}

/// How `client`'s next handshake with `server` went.
fn handshake_kind(server: Arc<ServerConfig>, client: Arc<ClientConfig>) -> HandshakeKind {
    let mut pair = Pair::new(server, client, 1 << 20);
    pair.handshake();
    // TLS 1.3 tickets come after the handshake: let them arrive.
    pair.client.writer().write_all(b"NOOP\r\n").unwrap();
    pair.run();
    pair.client.handshake_kind().unwrap()
}

#[test]
fn two_processes_with_one_ticket_key_file_resume_each_others_sessions() {
    let fx = Fixture::new();
    let keys = fx.path("tickets.key");
    write_ticket_keys(&keys, &[1]);
    for (version, _) in VERSIONS {
        // Two reloaders are two processes: nothing is shared but the files.
        let node_a = TlsReloader::with_ticket_key_file(fx.files(), Some(keys.clone())).unwrap();
        let node_b = TlsReloader::with_ticket_key_file(fx.files(), Some(keys.clone())).unwrap();
        let client = fx.client_config(version);
        assert_eq!(
            handshake_kind(node_a.current(), client.clone()),
            HandshakeKind::Full
        );
        assert_eq!(
            handshake_kind(node_b.current(), client),
            HandshakeKind::Resumed,
            "{version:?}"
        );
    }
}

#[test]
fn without_a_key_file_each_process_has_its_own_ticket_keys() {
    let fx = Fixture::new();
    let node_a = TlsReloader::new(fx.files()).unwrap();
    let node_b = TlsReloader::new(fx.files()).unwrap();
    let client = fx.client_config(&version::TLS13);
    assert_eq!(
        handshake_kind(node_a.current(), client.clone()),
        HandshakeKind::Full
    );
    assert_eq!(
        handshake_kind(node_b.current(), client.clone()),
        HandshakeKind::Full
    );
    // Within one process every config (every shard) shares them.
    assert_eq!(
        handshake_kind(node_b.current(), client),
        HandshakeKind::Resumed
    );
}

#[test]
fn ticket_keys_rotate_on_reload() {
    let fx = Fixture::new();
    let keys = fx.path("tickets.key");
    write_ticket_keys(&keys, &[1]);
    let node = TlsReloader::with_ticket_key_file(fx.files(), Some(keys.clone())).unwrap();
    assert_eq!(node.ticket_key_file(), Some(keys.as_path()));
    let early = fx.client_config(&version::TLS13);
    assert_eq!(
        handshake_kind(node.current(), early.clone()),
        HandshakeKind::Full
    );

    write_ticket_keys(&keys, &[2]);
    node.reload().unwrap();
    // A ticket from before the rotation still resumes here…
    assert_eq!(
        handshake_kind(node.current(), early),
        HandshakeKind::Resumed
    );
    // …and a ticket made now resumes on a node that loaded only the new key.
    let late = fx.client_config(&version::TLS13);
    assert_eq!(
        handshake_kind(node.current(), late.clone()),
        HandshakeKind::Full
    );
    let fresh_node = TlsReloader::with_ticket_key_file(fx.files(), Some(keys.clone())).unwrap();
    assert_eq!(
        handshake_kind(fresh_node.current(), late),
        HandshakeKind::Resumed
    );

    // A broken key file fails the reload and changes nothing.
    std::fs::write(&keys, "not hex\n").unwrap();
    let before = node.current();
    let error = node.reload().unwrap_err();
    assert!(
        matches!(error, TlsError::TicketKeys { line: 1, .. }),
        "{error}"
    );
    assert!(error.to_string().contains(&keys.display().to_string()));
    assert!(Arc::ptr_eq(&before, &node.current()));
    // And a missing one stops startup, naming it.
    let missing = fx.path("missing.key");
    let error = TlsReloader::with_ticket_key_file(fx.files(), Some(missing.clone()))
        .err()
        .unwrap();
    assert!(matches!(error, TlsError::Read { ref path, .. } if *path == missing));
}

#[test]
fn from_config_reads_the_tls_section() {
    let fx = Fixture::new();
    assert!(
        TlsReloader::from_config(&crate::config::Tls::default())
            .unwrap()
            .is_none()
    );
    let keys = fx.path("tickets.key");
    write_ticket_keys(&keys, &[5]);
    let rsa = fx.ca.issue_rsa(fx.dir.path(), "rsa");
    let section = crate::config::Tls {
        cert: Some(vec![fx.leaf.cert.clone(), rsa.cert.clone()]),
        key: Some(vec![fx.leaf.key.clone(), rsa.key.clone()]),
        ticket_key_file: Some(keys.clone()),
        ..crate::config::Tls::default()
    };
    let a = TlsReloader::from_config(&section).unwrap().unwrap();
    let b = TlsReloader::from_config(&section).unwrap().unwrap();
    assert_eq!(a.ticket_key_file(), Some(keys.as_path()));
    assert_eq!(a.files().cert.len(), 2);
    let old = client_offering(&fx, &version::TLS13, is_rsa);
    assert_eq!(served_leaf(a.current(), old), rsa.der);
    let client = fx.client_config(&version::TLS13);
    assert_eq!(
        handshake_kind(a.current(), client.clone()),
        HandshakeKind::Full
    );
    assert_eq!(handshake_kind(b.current(), client), HandshakeKind::Resumed);
}

#[test]
fn the_server_picks_aes_128_whatever_the_client_prefers() {
    let fx = Fixture::new();
    let server = load_server_config(&fx.files()).unwrap();
    for (version, prefix) in VERSIONS {
        // rustls' own client lists AES-256 first, as OpenSSL and Schannel do.
        let mut pair = Pair::new(server.clone(), fx.client_config(version), 1 << 20);
        pair.handshake();
        let described = pair.server.describe().unwrap();
        assert!(described.starts_with(prefix), "{described}");
        assert!(described.contains("AES_128_GCM_SHA256"), "{described}");
    }
    // A client without AES offers only ChaCha20 and gets it.
    let chacha_only = |version: &'static SupportedProtocolVersion| {
        let mut provider = rustls::crypto::ring::default_provider();
        provider
            .cipher_suites
            .retain(|s| format!("{:?}", s.suite()).contains("CHACHA20"));
        let mut roots = RootCertStore::empty();
        roots.add(CertificateDer::from(fx.ca.der())).unwrap();
        Arc::new(
            ClientConfig::builder_with_provider(Arc::new(provider))
                .with_protocol_versions(&[version])
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth(),
        )
    };
    for (version, _) in VERSIONS {
        let mut pair = Pair::new(server.clone(), chacha_only(version), 1 << 20);
        pair.handshake();
        assert!(
            pair.server
                .describe()
                .unwrap()
                .contains("CHACHA20_POLY1305")
        );
    }
}
