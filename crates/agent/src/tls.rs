//! The agent's side of the fleet's mutual TLS.
//!
//! On first start the agent presents the join token to the control plane (trusting only a
//! server that proves `control-plane.berth` with the CA it was given) and gets back a
//! certificate for its host id. It keeps that certificate under its data dir, serves the agent
//! API with it to control planes only, and calls the registry with it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use agent_proto::v1::JoinRequest;
use agent_proto::v1::registry_client::RegistryClient;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {source}")]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "this host has no certificate yet: the first start needs --join-token (or --join-token-file) and \
         --ca-file, both written by the control plane into its data dir"
    )]
    NotJoined,
    #[error("the control plane refused to let this host join: {0}")]
    Refused(String),
    #[error("stored certificate in {0} was issued to another host")]
    WrongHost(PathBuf),
    #[error("invalid control plane URL {url}: {source}")]
    InvalidUrl {
        url: String,
        source: tonic::transport::Error,
    },
}

/// A host's certificate, its key and the fleet CA, PEM.
#[derive(Clone)]
pub struct AgentTls {
    cert_pem: String,
    key_pem: String,
    ca_pem: String,
}

fn read(path: &Path) -> Result<String, TlsError> {
    std::fs::read_to_string(path).map_err(|source| TlsError::File {
        path: path.to_path_buf(),
        source,
    })
}

fn write_private(path: &Path, content: &str) -> Result<(), TlsError> {
    crate::instance::write_atomic(path, content.as_bytes()).map_err(|source| TlsError::File {
        path: path.to_path_buf(),
        source,
    })
}

impl AgentTls {
    /// The stored certificate, or a new one from the control plane through the join token.
    /// Retries unreachable control planes until `stop`; a refused token is final.
    pub async fn obtain(
        host_id: &str,
        data_dir: &Path,
        control_planes: &[String],
        join_token: Option<String>,
        ca_file: Option<&Path>,
        stop: &CancellationToken,
    ) -> Result<Option<AgentTls>, TlsError> {
        let dir = data_dir.join("tls");
        let (cert, key, ca) = (
            dir.join("agent.pem"),
            dir.join("agent.key"),
            dir.join("ca.pem"),
        );
        if cert.exists() && key.exists() && ca.exists() {
            let tls = AgentTls {
                cert_pem: read(&cert)?,
                key_pem: read(&key)?,
                ca_pem: read(&ca)?,
            };
            let issued_to = pki::pem_to_der(&tls.cert_pem).and_then(|der| pki::peer_host_id(&der));
            if issued_to.as_deref() != Some(host_id) {
                return Err(TlsError::WrongHost(cert));
            }
            return Ok(Some(tls));
        }
        let (Some(token), Some(ca_file)) = (join_token, ca_file) else {
            return Err(TlsError::NotJoined);
        };
        let ca_pem = read(ca_file)?;
        let client_tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&ca_pem))
            .domain_name(pki::CONTROL_PLANE_NAME);
        let mut backoff = Duration::from_millis(200);
        for attempt in 0usize.. {
            let url = &control_planes[attempt % control_planes.len()];
            let endpoint = Endpoint::from_shared(https(url))
                .and_then(|e| e.tls_config(client_tls.clone()))
                .map_err(|source| TlsError::InvalidUrl {
                    url: url.clone(),
                    source,
                })?
                .connect_timeout(Duration::from_secs(2))
                .timeout(Duration::from_secs(5));
            let request = JoinRequest {
                host_id: host_id.to_string(),
                join_token: token.clone(),
            };
            match RegistryClient::new(endpoint.connect_lazy())
                .join(request)
                .await
            {
                Ok(resp) => {
                    let r = resp.into_inner();
                    std::fs::create_dir_all(&dir).map_err(|source| TlsError::File {
                        path: dir.clone(),
                        source,
                    })?;
                    write_private(&key, &r.key_pem)?;
                    write_private(&cert, &r.cert_pem)?;
                    write_private(&ca, &r.ca_pem)?;
                    tracing::info!(control_plane = %url, "joined the fleet; certificate stored");
                    return Ok(Some(AgentTls {
                        cert_pem: r.cert_pem,
                        key_pem: r.key_pem,
                        ca_pem: r.ca_pem,
                    }));
                }
                Err(s)
                    if matches!(
                        s.code(),
                        tonic::Code::Unauthenticated | tonic::Code::InvalidArgument
                    ) =>
                {
                    return Err(TlsError::Refused(s.message().to_string()));
                }
                Err(s) => {
                    tracing::warn!(control_plane = %url, error = %s, retry_in = ?backoff, "join failed")
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = stop.cancelled() => return Ok(None),
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
        unreachable!("the join loop only ends by returning")
    }

    /// Serving the agent API: clients must present a certificate of the fleet CA (the
    /// interceptor then requires it to be a control plane's).
    pub fn server(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
            .client_ca_root(Certificate::from_pem(&self.ca_pem))
    }

    /// Calling the registry: prove this host, expect a control plane.
    pub fn registry_client(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
            .domain_name(pki::CONTROL_PLANE_NAME)
    }
}

/// The registry is only spoken to over TLS, whatever scheme the URL was given with.
pub fn https(url: &str) -> String {
    format!(
        "https://{}",
        url.trim_start_matches("http://")
            .trim_start_matches("https://")
    )
}

/// Lets a call through only if the client proved a control plane's certificate. Every
/// certificate the fleet CA signs passes the TLS handshake, agents' included, so one agent
/// could otherwise drive another.
#[allow(clippy::result_large_err)]
pub fn require_control_plane(
    request: tonic::Request<()>,
) -> Result<tonic::Request<()>, tonic::Status> {
    let is_cp = request
        .peer_certs()
        .is_some_and(|certs| certs.first().is_some_and(|c| pki::is_control_plane(c)));
    if is_cp {
        Ok(request)
    } else {
        Err(tonic::Status::permission_denied(
            "only the control plane may call this agent",
        ))
    }
}
