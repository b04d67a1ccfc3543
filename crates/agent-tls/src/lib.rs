//! A host's side of the fleet's mutual TLS, shared by the real agent and the simulated one.
//!
//! A host joins by presenting the fleet's join token (or a re-join token an operator issued for
//! it) to a control plane it authenticates with the fleet CA (as `control-plane.berth`), with a
//! certificate signing request for a key it made itself, and gets back a certificate for its
//! host id. The key never leaves the host. With the certificate, the host serves the agent API
//! to control planes only and calls the registry as itself.
//! Where the certificate is kept is the caller's business: the agent stores it in its data dir,
//! the simulated agent holds it in memory.

use std::time::Duration;

use agent_proto::v1::JoinRequest;
use agent_proto::v1::registry_client::RegistryClient;
use tokio_util::sync::CancellationToken;
use tonic::transport::{
    Certificate, Channel, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig,
};

#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error("the control plane refused to let this host join: {0}")]
    Refused(String),
    #[error("cannot make a key and certificate signing request: {0}")]
    Csr(#[from] pki::PkiError),
    #[error("invalid control plane URL {url}: {source}")]
    InvalidUrl {
        url: String,
        source: tonic::transport::Error,
    },
}

/// A host's certificate, its key and the fleet CA, PEM.
#[derive(Clone)]
pub struct AgentTls {
    pub cert_pem: String,
    pub key_pem: String,
    pub ca_pem: String,
}

impl std::fmt::Debug for AgentTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentTls")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .field("ca_pem", &self.ca_pem)
            .finish()
    }
}

impl AgentTls {
    /// The host id the certificate was issued to, if it is a readable agent certificate.
    pub fn issued_to(&self) -> Option<String> {
        pki::pem_to_der(&self.cert_pem).and_then(|der| pki::peer_host_id(&der))
    }

    /// Makes a key and asks the control planes, in turn, to sign a certificate for it as
    /// `host_id` in exchange for the join token (the fleet's, or a re-join token for this
    /// host). Unreachable control planes are retried with backoff until `stop` (then `None`); a
    /// refusal (a wrong token, a host id that already joined) is final.
    pub async fn join(
        host_id: &str,
        control_planes: &[String],
        join_token: &str,
        ca_pem: &str,
        stop: &CancellationToken,
    ) -> Result<Option<AgentTls>, JoinError> {
        let trust_control_plane = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(ca_pem))
            .domain_name(pki::CONTROL_PLANE_NAME);
        let own = pki::agent_csr(host_id)?;
        let mut backoff = Duration::from_millis(200);
        for attempt in 0usize.. {
            let url = &control_planes[attempt % control_planes.len()];
            let request = JoinRequest {
                host_id: host_id.to_string(),
                join_token: join_token.to_string(),
                csr_pem: own.csr_pem.clone(),
            };
            let channel = registry_channel(url, trust_control_plane.clone())?;
            match RegistryClient::new(channel).join(request).await {
                Ok(resp) => {
                    let r = resp.into_inner();
                    tracing::info!(host_id, control_plane = %url, "joined the fleet");
                    return Ok(Some(AgentTls {
                        cert_pem: r.cert_pem,
                        key_pem: own.key_pem,
                        ca_pem: r.ca_pem,
                    }));
                }
                Err(s)
                    if matches!(
                        s.code(),
                        tonic::Code::Unauthenticated
                            | tonic::Code::InvalidArgument
                            | tonic::Code::AlreadyExists
                            | tonic::Code::PermissionDenied
                    ) =>
                {
                    return Err(JoinError::Refused(s.message().to_string()));
                }
                Err(s) => {
                    tracing::warn!(host_id, control_plane = %url, error = %s, retry_in = ?backoff, "join failed")
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
    /// interceptor [`require_control_plane`] then requires it to be a control plane's).
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

/// A lazily connecting channel to one control plane's registry over TLS. The registry is only
/// spoken to over TLS, whatever scheme the URL was given with.
pub fn registry_channel(url: &str, tls: ClientTlsConfig) -> Result<Channel, JoinError> {
    let endpoint = Endpoint::from_shared(https(url))
        .and_then(|e| e.tls_config(tls))
        .map_err(|source| JoinError::InvalidUrl {
            url: url.to_string(),
            source,
        })?
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(5));
    Ok(endpoint.connect_lazy())
}

fn https(url: &str) -> String {
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
