//! HTTPS, and optionally mutual TLS, for the HTTP API (ADR 012, amended).
//!
//! The server certificate is either issued by the fleet CA at every start for the names the
//! operator lists (`--api-tls-names`; clients trust the CA's `ca.pem`), or read from files the
//! operator gives (`--api-tls-cert`, `--api-tls-key`). With `--api-client-certs`, the TLS
//! handshake refuses every client that does not present a certificate the fleet CA signed;
//! bearer tokens are still checked after it (the certificate does not stand in for one).
//!
//! Handshakes run in tasks of their own, each bounded by [`HANDSHAKE_LIMIT`], so a client
//! that connects and never speaks holds nothing but its own task; finished connections are
//! handed to `axum::serve` through [`TlsListener`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::settings::Settings;

/// How long a client may take to finish its TLS handshake.
pub const HANDSHAKE_LIMIT: Duration = Duration::from_secs(10);
/// How long a certificate the fleet CA issues for the API is valid; a replica issues a new
/// one at every start.
const FLEET_CERT_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum ApiTlsError {
    #[error("API certificate file {path}: {source}")]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("API certificate file {path} holds no {what}")]
    Pem { path: PathBuf, what: &'static str },
    #[error("issuing the API certificate with the fleet CA: {0}")]
    Issue(#[from] pki::PkiError),
    #[error("fleet CA certificate: {0}")]
    Ca(String),
    #[error("API TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("API client certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

/// The API's TLS server configuration from `settings`, or None when the API serves plain
/// HTTP. `authority` is the fleet CA: it issues the certificate for `--api-tls-names` and
/// is the only issuer client certificates are accepted from.
pub fn server_config(
    settings: &Settings,
    authority: &pki::Authority,
) -> Result<Option<Arc<rustls::ServerConfig>>, ApiTlsError> {
    let (certs, key) =
        if let (Some(cert), Some(key)) = (&settings.api_tls_cert, &settings.api_tls_key) {
            (read_certs(cert)?, read_key(key)?)
        } else if !settings.api_tls_names().is_empty() {
            let issued = authority.issue_server(&settings.api_tls_names(), FLEET_CERT_VALIDITY)?;
            let certs = CertificateDer::pem_slice_iter(issued.cert_pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| ApiTlsError::Ca(e.to_string()))?;
            let key = PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes())
                .map_err(|e| ApiTlsError::Ca(e.to_string()))?;
            (certs, key)
        } else {
            return Ok(None);
        };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let mut config = if settings.api_client_certs {
        let mut roots = rustls::RootCertStore::empty();
        for ca in CertificateDer::pem_slice_iter(authority.cert_pem().as_bytes()) {
            roots
                .add(ca.map_err(|e| ApiTlsError::Ca(e.to_string()))?)
                .map_err(ApiTlsError::Rustls)?;
        }
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider).build()?;
        builder
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs, key)?
    } else {
        builder.with_no_client_auth().with_single_cert(certs, key)?
    };
    // axum serves HTTP/1.1 here (its http2 feature is off).
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Some(Arc::new(config)))
}

fn read(path: &Path) -> Result<Vec<u8>, ApiTlsError> {
    std::fs::read(path).map_err(|source| ApiTlsError::File {
        path: path.to_path_buf(),
        source,
    })
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, ApiTlsError> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&read(path)?)
        .filter_map(Result::ok)
        .collect();
    if certs.is_empty() {
        return Err(ApiTlsError::Pem {
            path: path.to_path_buf(),
            what: "certificate",
        });
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, ApiTlsError> {
    // The error names the file only: its content is a secret.
    PrivateKeyDer::from_pem_slice(&read(path)?).map_err(|_| ApiTlsError::Pem {
        path: path.to_path_buf(),
        what: "private key",
    })
}

/// A listener for `axum::serve` that hands over connections whose TLS handshake finished.
pub struct TlsListener {
    local: SocketAddr,
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    accepting: tokio::task::JoinHandle<()>,
}

impl TlsListener {
    pub fn new(listener: TcpListener, config: Arc<rustls::ServerConfig>) -> std::io::Result<Self> {
        let local = listener.local_addr()?;
        let acceptor = TlsAcceptor::from(config);
        let (tx, ready) = mpsc::channel(64);
        let accepting = tokio::spawn(async move {
            loop {
                let (tcp, peer) = match listener.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        // Out of file descriptors, say: retrying at once would spin.
                        tracing::warn!(error = %e, "API accept failed");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                };
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_LIMIT, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        // Plain HTTP, an untrusted or missing client certificate: the
                        // client learns it from the alert; a debug line is enough here.
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "API TLS handshake failed")
                        }
                        Err(_) => tracing::debug!(%peer, "API TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(TlsListener {
            local,
            ready,
            accepting,
        })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(c) => c,
            // The accepting task never ends while we hold it; if it panicked, serve nothing.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}
