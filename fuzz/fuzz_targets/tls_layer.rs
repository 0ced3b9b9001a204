//! `TlsLayer` takes ciphertext straight from the socket: whatever arrives,
//! in whatever pieces, before or after a real ClientHello, on a config whose
//! key is answered in place (ECDSA P-256) or handed out as a `CostlyAnswer`
//! (RSA), it never panics, never takes more than it was given, and once it
//! fails it stays failed.
//!
//! Input: byte 0 picks the config (bit 0: RSA) and whether a real
//! ClientHello goes first (bit 1); byte 1 is the piece size; the rest is
//! fed to `receive`.
#![no_main]

use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use rustls::ServerConfig;
use shardpop::tls::{TlsFiles, TlsLayer, load_server_config};

/// A self-signed certificate made by `openssl` at start (nothing committed).
fn config(kind: &str) -> Arc<ServerConfig> {
    let dir: PathBuf = std::env::temp_dir().join(format!("shardpop-fuzz-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = (dir.join(format!("{kind}.pem")), dir.join(format!("{kind}.key")));
    let newkey = if kind == "rsa" { "rsa:2048" } else { "ec" };
    let mut openssl = Command::new("openssl");
    openssl.args(["req", "-x509", "-nodes", "-days", "2", "-subj", "/CN=localhost", "-newkey", newkey]);
    if kind != "rsa" {
        openssl.args(["-pkeyopt", "ec_paramgen_curve:P-256"]);
    }
    let status = openssl.arg("-keyout").arg(&key).arg("-out").arg(&cert).output().unwrap().status;
    assert!(status.success(), "openssl req failed");
    load_server_config(&TlsFiles::single(cert, key)).unwrap()
}

fn configs() -> &'static [Arc<ServerConfig>; 2] {
    static CONFIGS: OnceLock<[Arc<ServerConfig>; 2]> = OnceLock::new();
    CONFIGS.get_or_init(|| [config("ecdsa"), config("rsa")])
}

fn client_hello() -> Vec<u8> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(std::iter::empty());
    let client = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut conn = rustls::ClientConnection::new(Arc::new(client), name).unwrap();
    let mut hello = Vec::new();
    conn.write_tls(&mut hello).unwrap();
    hello
}

fuzz_target!(|data: &[u8]| {
    let (Some(&mode), Some(&piece)) = (data.first(), data.get(1)) else {
        return;
    };
    let mut input = if mode & 2 != 0 { client_hello() } else { Vec::new() };
    input.extend_from_slice(&data[2..]);
    let piece = usize::from(piece).max(1);
    let mut layer = TlsLayer::new(configs()[usize::from(mode & 1)].clone()).unwrap();
    layer.send_plaintext(b"+OK greeting\r\n").ok();
    let mut failed = false;
    let mut plaintext = [0u8; 4096];
    let mut out = Vec::new();
    for chunk in input.chunks(piece) {
        let mut rest = chunk;
        while !rest.is_empty() {
            match layer.receive(rest) {
                Ok(taken) => {
                    assert!(!failed, "input taken after a failure");
                    assert!(taken <= rest.len());
                    rest = &rest[taken..];
                    if let Some(answer) = layer.take_costly_answer() {
                        if layer.answered(answer.run()).is_err() {
                            failed = true;
                        }
                    }
                    while layer.read_plaintext(&mut plaintext) > 0 {}
                    if taken == 0 && !layer.is_answering() {
                        break;
                    }
                }
                Err(_) => {
                    failed = true;
                    break;
                }
            }
            out.clear();
            layer.write_ciphertext(&mut out);
        }
        if failed {
            assert!(layer.receive(b"\x16\x03\x03\x00\x01\x00").is_err());
            break;
        }
    }
    out.clear();
    layer.write_ciphertext(&mut out);
    layer.send_close_notify();
    layer.write_ciphertext(&mut out);
});
