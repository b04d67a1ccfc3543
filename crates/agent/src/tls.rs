//! The agent's side of the fleet's mutual TLS: where the host's certificate is kept.
//!
//! On first start the agent joins through [`agent_tls::AgentTls::join`] and stores what it gets
//! under its data dir; later starts read it back. Serving and calling with it is `agent_tls`'s.

use std::path::{Path, PathBuf};

pub use agent_tls::{AgentTls, JoinError, require_control_plane};
use tokio_util::sync::CancellationToken;

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
    #[error(transparent)]
    Join(#[from] JoinError),
    #[error("stored certificate in {0} was issued to another host")]
    WrongHost(PathBuf),
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

/// The stored certificate, or a new one from the control plane through the join token.
/// Retries unreachable control planes until `stop` (then `None`); a refused token is final.
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
        if tls.issued_to().as_deref() != Some(host_id) {
            return Err(TlsError::WrongHost(cert));
        }
        return Ok(Some(tls));
    }
    let (Some(token), Some(ca_file)) = (join_token, ca_file) else {
        return Err(TlsError::NotJoined);
    };
    let ca_pem = read(ca_file)?;
    let Some(tls) = AgentTls::join(host_id, control_planes, &token, &ca_pem, stop).await? else {
        return Ok(None);
    };
    std::fs::create_dir_all(&dir).map_err(|source| TlsError::File {
        path: dir.clone(),
        source,
    })?;
    write_private(&key, &tls.key_pem)?;
    write_private(&cert, &tls.cert_pem)?;
    write_private(&ca, &tls.ca_pem)?;
    tracing::info!("certificate stored");
    Ok(Some(tls))
}
