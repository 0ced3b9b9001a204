//! TLS certificates for tests, made with rcgen at test time (nothing is
//! committed, nothing expires, no openssl CLI needed).
//!
//! A [`TestCa`] writes `ca.pem` (give it to clients: `openssl s_client
//! -CAfile`, `curl --cacert`, Python's `ssl.create_default_context(cafile=)`,
//! or a rustls `RootCertStore` via [`TestCa::der`]); [`TestCa::issue`] writes
//! a leaf for `localhost`, `127.0.0.1` and `::1` with its key, which is what
//! `--tls-cert` / `--tls-key` take. Issue a second leaf over the same paths
//! with [`TestCa::issue_over`] to test a SIGHUP reload: clients that trust
//! the CA accept both, and the leaf's DER tells which one was served.
//!
//! [`TestCa::issue_rsa`] makes an RSA-2048 leaf: ring cannot generate RSA
//! keys, so that one key comes from `openssl genpkey` (the e2e tests already
//! need the openssl CLI; `.ci/run` installs it).
//!
//! Used by end-to-end tests (`#[path = "common/tls_fixture.rs"] mod
//! tls_fixture;`) and by the unit tests in `src/tls/`.
#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};

/// A throwaway certificate authority; its certificate is in `ca.pem`.
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
    /// `ca.pem` in the directory given to [`TestCa::new`].
    pub ca_pem: PathBuf,
}

/// A leaf certificate and its key, as PEM files.
pub struct Leaf {
    /// The certificate file (leaf, then the CA: a full chain).
    pub cert: PathBuf,
    /// The key file (PKCS#8).
    pub key: PathBuf,
    /// The leaf certificate, DER: compare with what a client was served.
    pub der: Vec<u8>,
}

impl Leaf {
    /// The `serve` flags for this certificate; with `implicit_tls`, also an
    /// implicit-TLS listener on a free loopback port.
    pub fn serve_args(&self, implicit_tls: bool) -> Vec<String> {
        let mut args = Vec::new();
        if implicit_tls {
            args.extend(["--tls-listen".to_string(), "127.0.0.1:0".to_string()]);
        }
        args.extend([
            "--tls-cert".to_string(),
            self.cert.display().to_string(),
            "--tls-key".to_string(),
            self.key.display().to_string(),
        ]);
        args
    }
}

impl TestCa {
    /// Makes a CA and writes its certificate to `dir/ca.pem`.
    pub fn new(dir: &Path) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params
            .distinguished_name
            .push(DnType::CommonName, "shardpop test CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("CA key");
        let issuer = CertifiedIssuer::self_signed(params, key).expect("CA certificate");
        let ca_pem = dir.join("ca.pem");
        fs::write(&ca_pem, issuer.pem()).expect("write ca.pem");
        TestCa { issuer, ca_pem }
    }

    /// The CA certificate, DER (for a rustls client's root store).
    pub fn der(&self) -> Vec<u8> {
        self.issuer.der().to_vec()
    }

    /// Issues a leaf for localhost and loopback; writes `dir/NAME.crt.pem`
    /// and `dir/NAME.key.pem`.
    pub fn issue(&self, dir: &Path, name: &str) -> Leaf {
        let cert = dir.join(format!("{name}.crt.pem"));
        let key = dir.join(format!("{name}.key.pem"));
        self.issue_over(&cert, &key)
    }

    /// Issues a new leaf (new key) and writes it over `cert` and `key`.
    pub fn issue_over(&self, cert: &Path, key: &Path) -> Leaf {
        let leaf_key = KeyPair::generate().expect("leaf key");
        self.issue_with(cert, key, leaf_key)
    }

    /// Issues a leaf with a new RSA-2048 key (from `openssl genpkey`);
    /// writes `dir/NAME.crt.pem` and `dir/NAME.key.pem`.
    pub fn issue_rsa(&self, dir: &Path, name: &str) -> Leaf {
        let cert = dir.join(format!("{name}.crt.pem"));
        let key = dir.join(format!("{name}.key.pem"));
        let status = std::process::Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
            ])
            .arg("-out")
            .arg(&key)
            .stderr(std::process::Stdio::null())
            .status()
            .expect("run openssl genpkey (is the openssl CLI installed?)");
        assert!(status.success(), "openssl genpkey failed");
        let pem = fs::read_to_string(&key).expect("read RSA key");
        let leaf_key =
            KeyPair::from_pem_and_sign_algo(&pem, &rcgen::PKCS_RSA_SHA256).expect("RSA key");
        self.issue_with(&cert, &key, leaf_key)
    }

    fn issue_with(&self, cert: &Path, key: &Path, leaf_key: KeyPair) -> Leaf {
        let names = vec![
            "localhost".to_string(),
            "127.0.0.1".to_string(),
            "::1".to_string(),
        ];
        let params = CertificateParams::new(names).expect("leaf params");
        let leaf = params
            .signed_by(&leaf_key, &self.issuer)
            .expect("leaf certificate");
        fs::write(cert, format!("{}{}", leaf.pem(), self.issuer.pem())).expect("write cert");
        fs::write(key, leaf_key.serialize_pem()).expect("write key");
        Leaf {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            der: leaf.der().to_vec(),
        }
    }
}
