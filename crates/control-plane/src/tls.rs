//! Mutual TLS between the control plane and agents.
//!
//! The fleet CA and the join token live sealed in etcd, created by whichever replica starts
//! first, so every replica signs with the same CA. Each replica issues itself a
//! `control-plane.berth` certificate at start. Agents get theirs by presenting the join token
//! once with a certificate signing request (Registry.Join; the registry decides who may join);
//! after that every call in either direction is mutually authenticated.
//! For operators (and the dev fleet), a replica writes the CA certificate and the join token
//! into its data dir.

use std::path::Path;

use serde::{Deserialize, Serialize};
use store::Store;
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

#[derive(Clone, Serialize, Deserialize)]
struct PkiDocument {
    ca_cert_pem: String,
    ca_key_pem: String,
    join_token: String,
}

/// A new join token; it is written to the data dir in plain text, so it leaves the secret
/// wrapper here.
fn generate_token() -> String {
    use secrecy::ExposeSecret;
    crate::credentials::generate_password()
        .expose_secret()
        .to_string()
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error(transparent)]
    Pki(#[from] pki::PkiError),
    #[error("{path}: {source}")]
    File {
        path: String,
        source: std::io::Error,
    },
}

pub struct FleetTls {
    authority: pki::Authority,
    own: pki::Identity,
    join_token: String,
}

impl FleetTls {
    /// Loads (or, on the fleet's first start, creates) the CA and join token. A join token
    /// given by the operator replaces the stored one.
    pub async fn load(
        store: &Store,
        data_dir: &Path,
        join_token: Option<&str>,
    ) -> Result<FleetTls, TlsError> {
        let fresh_ca = pki::Authority::generate()?;
        let candidate = PkiDocument {
            ca_cert_pem: fresh_ca.identity().cert_pem.clone(),
            ca_key_pem: fresh_ca.identity().key_pem.clone(),
            join_token: join_token.map_or_else(generate_token, str::to_string),
        };
        let key = store.keys().pki();
        let mut doc: PkiDocument = store.create_sealed_if_absent(&key, &candidate).await?;
        if let Some(token) = join_token
            && doc.join_token != token
        {
            doc.join_token = token.to_string();
            store.put_sealed(&key, &doc).await?;
        }
        let authority = pki::Authority::from_identity(pki::Identity {
            cert_pem: doc.ca_cert_pem,
            key_pem: doc.ca_key_pem,
        });
        let own = authority.issue_control_plane()?;
        write_file(&data_dir.join("ca.pem"), authority.cert_pem(), 0o644)?;
        write_file(&data_dir.join("join-token"), &doc.join_token, 0o600)?;
        Ok(FleetTls {
            authority,
            own,
            join_token: doc.join_token,
        })
    }

    /// The fleet CA alone, for operator commands: written to no file. Like a replica's first
    /// start, it creates the CA if the fleet has none yet.
    pub async fn authority_of(store: &Store) -> Result<pki::Authority, TlsError> {
        let fresh_ca = pki::Authority::generate()?;
        let candidate = PkiDocument {
            ca_cert_pem: fresh_ca.identity().cert_pem.clone(),
            ca_key_pem: fresh_ca.identity().key_pem.clone(),
            join_token: generate_token(),
        };
        let doc: PkiDocument = store
            .create_sealed_if_absent(&store.keys().pki(), &candidate)
            .await?;
        Ok(pki::Authority::from_identity(pki::Identity {
            cert_pem: doc.ca_cert_pem,
            key_pem: doc.ca_key_pem,
        }))
    }

    /// The fleet CA as stored, without creating one (None before any replica started):
    /// for readers that must write nothing, such as a dry-run.
    pub async fn stored_authority(store: &Store) -> Result<Option<pki::Authority>, TlsError> {
        let doc: Option<PkiDocument> = store.get_sealed(&store.keys().pki()).await?;
        Ok(doc.map(|d| {
            pki::Authority::from_identity(pki::Identity {
                cert_pem: d.ca_cert_pem,
                key_pem: d.ca_key_pem,
            })
        }))
    }

    pub fn ca_pem(&self) -> &str {
        self.authority.cert_pem()
    }

    /// The fleet CA, which also signs each Postgres instance's server certificate.
    pub fn authority(&self) -> &pki::Authority {
        &self.authority
    }

    /// Whether `token` is the fleet's join token, compared in constant time.
    pub fn join_token_matches(&self, token: &str) -> bool {
        use subtle::ConstantTimeEq;
        self.join_token.as_bytes().ct_eq(token.as_bytes()).into()
    }

    /// Signs a joining agent's certificate signing request as `host_id` (see
    /// [`pki::Authority::sign_agent_csr`]).
    pub fn sign_agent_csr(
        &self,
        host_id: &str,
        csr_pem: &str,
    ) -> Result<pki::Issued, pki::PkiError> {
        self.authority.sign_agent_csr(host_id, csr_pem)
    }

    /// The registry's server side: clients may come without a certificate (to join), and
    /// each call checks the one they present.
    pub fn registry_server(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(Identity::from_pem(&self.own.cert_pem, &self.own.key_pem))
            .client_ca_root(Certificate::from_pem(self.ca_pem()))
            .client_auth_optional(true)
    }

    /// Dialing `host_id`'s agent: it must prove that exact host name, and we prove we are a
    /// control plane.
    pub fn agent_client(&self, host_id: &str) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(self.ca_pem()))
            .identity(Identity::from_pem(&self.own.cert_pem, &self.own.key_pem))
            .domain_name(pki::agent_server_name(host_id))
    }
}

pub(crate) fn write_file(path: &Path, content: &str, mode: u32) -> Result<(), TlsError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let err = |source| TlsError::File {
        path: path.display().to_string(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(err)?;
    f.write_all(content.as_bytes()).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

/// The host id of the agent certificate a gRPC caller presented, if any.
pub fn caller_host_id<T>(request: &tonic::Request<T>) -> Option<String> {
    caller_certificate(request).map(|(host, _)| host)
}

/// The host id and serial number (lower-case hex) of the agent certificate a gRPC caller
/// presented, if any.
pub fn caller_certificate<T>(request: &tonic::Request<T>) -> Option<(String, String)> {
    let certs = request.peer_certs()?;
    let der = certs.first()?;
    Some((
        pki::peer_host_id(der.as_ref())?,
        pki::serial_hex(der.as_ref())?,
    ))
}
