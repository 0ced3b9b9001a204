//! TLS for the load generator: rustls with the ring provider (as shardpop
//! uses), implicit TLS (`--tls`, port 995 style) or STLS (`--stls`).
//!
//! With `--tls-resume` each user has a session store of its own, as each
//! mail client keeps its own session cache: a user's next session resumes
//! from the tickets its last one left. (A user's sessions all run on one
//! load thread, so threads never contend on a store.) One store per thread,
//! as before, held at most 8 TLS 1.3 tickets for the server (rustls' cap),
//! and ran dry whenever more sessions started in one turn of the loop: at
//! c=64, 24-38 % of the handshakes of a "resumed" run against shardpop were
//! full (docs/benchmarks.md, sixth session).
//!
//! The server's certificate is checked against `--tls-ca` (a PEM bundle).
//! `--tls-insecure` skips the chain check for benchmarks against a server
//! whose CA is not at hand; it still verifies the handshake signature, so
//! both sides do the same cryptographic work as with a trusted chain.

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ClientSessionMemoryCache, Resumption};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, RootCertStore};
use rustls::{HandshakeKind, SignatureScheme};
use std::cell::RefCell;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

/// Servers a user's session store remembers with `--tls-resume` (rustls
/// keeps up to 8 TLS 1.3 tickets per server; a run has one server).
const SERVERS_PER_USER: usize = 1;

/// The command-line flags of TLS (flattened into the CLI).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TlsArgs {
    /// Implicit TLS (port 995 style): TLS from the first byte.
    #[arg(long, conflicts_with = "stls")]
    pub tls: bool,
    /// STLS (RFC 2595): plaintext greeting, then STLS and TLS before USER.
    #[arg(long)]
    pub stls: bool,
    /// Reuse TLS sessions (tickets, session ids): each user's session
    /// resumes from what its previous one left, as a mail client does; the
    /// JSON line counts full and resumed handshakes.
    #[arg(long)]
    pub tls_resume: bool,
    /// PEM file with the CA certificate(s) the server's chain must lead to.
    #[arg(long)]
    pub tls_ca: Option<PathBuf>,
    /// Accept ANY server certificate (benchmarks on loopback only: this gives
    /// no protection against an impostor). Handshake signatures are still
    /// verified, so the cryptographic work is the same.
    #[arg(long, conflicts_with = "tls_ca")]
    pub tls_insecure: bool,
    /// The name the server's certificate must carry (default: the IP of
    /// --addr; for `shardpop migrate verify`, the host as given).
    #[arg(long)]
    pub tls_server_name: Option<String>,
}

impl TlsArgs {
    /// The run's TLS settings; `None` for plaintext. `addr` names the
    /// server when `--tls-server-name` is not given.
    pub fn settings(&self, addr: std::net::SocketAddr) -> Result<Option<TlsSettings>, String> {
        let mode = match (self.tls, self.stls) {
            (true, _) => TlsMode::Implicit,
            (false, true) => TlsMode::Stls,
            (false, false) => {
                let any_tls_flag = self.tls_resume
                    || self.tls_ca.is_some()
                    || self.tls_insecure
                    || self.tls_server_name.is_some();
                if any_tls_flag {
                    return Err("--tls-resume, --tls-ca, --tls-insecure and \
                                --tls-server-name need --tls or --stls"
                        .into());
                }
                return Ok(None);
            }
        };
        let trust = match (&self.tls_ca, self.tls_insecure) {
            (Some(path), false) => Trust::Ca(path.clone()),
            (None, true) => Trust::Insecure,
            _ => return Err("TLS needs --tls-ca PEM (or --tls-insecure for benchmarks)".into()),
        };
        let server_name = match &self.tls_server_name {
            Some(name) => ServerName::try_from(name.clone())
                .map_err(|e| format!("--tls-server-name {name}: {e}"))?,
            None => ServerName::IpAddress(addr.ip().into()),
        };
        let settings = TlsSettings {
            mode,
            trust,
            resume: self.tls_resume,
            server_name,
        };
        // Fail on a bad CA file now, not in every load thread.
        settings.client_config()?;
        Ok(Some(settings))
    }
}

/// How a connection gets to TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// TLS from the first byte (`--tls`, RFC 8314).
    Implicit,
    /// Plaintext greeting, then `STLS` (RFC 2595) and the handshake.
    Stls,
}

impl TlsMode {
    /// The name used in the JSON line.
    pub fn name(self) -> &'static str {
        match self {
            TlsMode::Implicit => "implicit",
            TlsMode::Stls => "stls",
        }
    }
}

/// How the server's certificate is checked.
#[derive(Debug, Clone)]
pub enum Trust {
    /// Chains must lead to a certificate in this PEM file.
    Ca(PathBuf),
    /// Any chain is accepted (benchmarks only); handshake signatures are
    /// still verified.
    Insecure,
}

/// The TLS settings of a run, validated by the CLI.
#[derive(Debug, Clone)]
pub struct TlsSettings {
    pub mode: TlsMode,
    pub trust: Trust,
    /// Reuse each user's sessions across its connections.
    pub resume: bool,
    /// The name the certificate must carry (default: the address's IP).
    pub server_name: ServerName<'static>,
}

impl TlsSettings {
    /// The client config of a load thread: no session store; with
    /// `--tls-resume`, [`ClientConfigs::for_user`] gives each user one.
    pub fn client_config(&self) -> Result<Arc<ClientConfig>, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS: {e}"))?;
        let mut config = match &self.trust {
            Trust::Ca(path) => {
                let mut roots = RootCertStore::empty();
                let certs = CertificateDer::pem_file_iter(path)
                    .map_err(|e| format!("--tls-ca {}: {e}", path.display()))?;
                for cert in certs {
                    let cert = cert.map_err(|e| format!("--tls-ca {}: {e}", path.display()))?;
                    roots
                        .add(cert)
                        .map_err(|e| format!("--tls-ca {}: {e}", path.display()))?;
                }
                if roots.is_empty() {
                    return Err(format!("--tls-ca {}: no certificate in it", path.display()));
                }
                builder.with_root_certificates(roots).with_no_client_auth()
            }
            Trust::Insecure => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyChain(
                    provider.signature_verification_algorithms,
                )))
                .with_no_client_auth(),
        };
        config.resumption = Resumption::disabled();
        Ok(Arc::new(config))
    }
}

/// A load thread's client configs: one for every connection, or with
/// `--tls-resume` one per user, each with its own session store.
pub struct ClientConfigs {
    base: Arc<ClientConfig>,
    resume: bool,
    per_user: RefCell<HashMap<usize, Arc<ClientConfig>>>,
}

impl ClientConfigs {
    pub fn new(settings: &TlsSettings) -> Result<ClientConfigs, String> {
        Ok(ClientConfigs {
            base: settings.client_config()?,
            resume: settings.resume,
            per_user: RefCell::new(HashMap::new()),
        })
    }

    /// The config for a session of `user` (an index into the users file).
    pub fn for_user(&self, user: usize) -> Arc<ClientConfig> {
        if !self.resume {
            return Arc::clone(&self.base);
        }
        let mut per_user = self.per_user.borrow_mut();
        let config = per_user.entry(user).or_insert_with(|| {
            let mut config = (*self.base).clone();
            config.resumption =
                Resumption::store(Arc::new(ClientSessionMemoryCache::new(SERVERS_PER_USER)));
            Arc::new(config)
        });
        Arc::clone(config)
    }
}

/// `--tls-insecure`: accepts any certificate chain, verifies the handshake
/// signature with the provider's algorithms.
#[derive(Debug)]
struct AnyChain(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for AnyChain {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

/// What a finished handshake was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handshake {
    Full,
    Resumed,
}

/// One connection's client TLS state and when its handshake began.
pub struct TlsConn {
    pub conn: ClientConnection,
    started: Instant,
    /// The handshake's end was reported.
    reported: bool,
}

impl TlsConn {
    /// A client session starting its handshake now.
    pub fn new(
        config: Arc<ClientConfig>,
        name: ServerName<'static>,
        now: Instant,
    ) -> Result<TlsConn, String> {
        let conn = ClientConnection::new(config, name).map_err(|e| format!("TLS: {e}"))?;
        Ok(TlsConn {
            conn,
            started: now,
            reported: false,
        })
    }

    /// Once, when the handshake has just finished: its kind and how long it
    /// took in microseconds.
    pub fn finished(&mut self, now: Instant) -> Option<(Handshake, u64)> {
        if self.reported || self.conn.is_handshaking() {
            return None;
        }
        self.reported = true;
        let kind = match self.conn.handshake_kind() {
            Some(HandshakeKind::Resumed) => Handshake::Resumed,
            _ => Handshake::Full,
        };
        let micros = now.saturating_duration_since(self.started).as_micros();
        Some((kind, u64::try_from(micros).unwrap_or(u64::MAX)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(trust: Trust, resume: bool) -> TlsSettings {
        TlsSettings {
            mode: TlsMode::Implicit,
            trust,
            resume,
            server_name: ServerName::try_from("127.0.0.1").unwrap().to_owned(),
        }
    }

    #[test]
    fn flags_to_settings() {
        let addr: std::net::SocketAddr = "127.0.0.1:995".parse().unwrap();
        assert!(TlsArgs::default().settings(addr).unwrap().is_none());
        let lonely = TlsArgs {
            tls_resume: true,
            ..TlsArgs::default()
        };
        assert!(lonely.settings(addr).unwrap_err().contains("need --tls"));
        let untrusting = TlsArgs {
            tls: true,
            ..TlsArgs::default()
        };
        assert!(untrusting.settings(addr).unwrap_err().contains("--tls-ca"));
        let insecure = TlsArgs {
            stls: true,
            tls_insecure: true,
            tls_resume: true,
            ..TlsArgs::default()
        };
        let s = insecure.settings(addr).unwrap().unwrap();
        assert_eq!(s.mode, TlsMode::Stls);
        assert!(s.resume);
        assert_eq!(s.server_name, ServerName::try_from("127.0.0.1").unwrap());
        let named = TlsArgs {
            tls: true,
            tls_insecure: true,
            tls_server_name: Some("pop.example.net".into()),
            ..TlsArgs::default()
        };
        let s = named.settings(addr).unwrap().unwrap();
        assert_eq!(s.mode, TlsMode::Implicit);
        assert_eq!(
            s.server_name,
            ServerName::try_from("pop.example.net").unwrap()
        );
        let bad_name = TlsArgs {
            tls_server_name: Some("not a name!".into()),
            ..named
        };
        assert!(bad_name.settings(addr).is_err());
    }

    #[test]
    fn a_ca_file_without_certificates_is_refused() {
        let dir = std::env::temp_dir().join(format!("loadtest-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "nothing here\n").unwrap();
        let error = settings(Trust::Ca(empty.clone()), false)
            .client_config()
            .unwrap_err();
        assert!(error.contains("no certificate"), "{error}");
        let missing = dir.join("missing.pem");
        let error = settings(Trust::Ca(missing), false)
            .client_config()
            .unwrap_err();
        assert!(error.contains("missing.pem"), "{error}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn mode_names() {
        assert_eq!(TlsMode::Implicit.name(), "implicit");
        assert_eq!(TlsMode::Stls.name(), "stls");
    }
}
