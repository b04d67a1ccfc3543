//! The gRPC registry agents announce themselves to. A host's liveness key lives under an
//! etcd lease the agent's heartbeats renew, so a dead agent turns `unreachable` when the
//! lease runs out, whichever replica it last talked to, and with no sweeper to run.
//!
//! Host identity (ADR 011): a host id joins once. The fleet's join token buys a certificate
//! only for a host id that has neither joined nor registered; a host id that has needs the
//! host-bound, single-use re-join token an operator issues for it (or the operator removes the
//! host first). Each join records the certificate's serial as the host's, and `Register` and
//! `Heartbeat` accept only that certificate and never one on the deny list.

use agent_proto::registry_server::Registry;
use agent_proto::{
    HeartbeatRequest, HeartbeatResponse, JoinRequest, JoinResponse, RegisterRequest,
    RegisterResponse,
};
use chrono::Utc;
use spec::{Host, HostState, HostStatus};
use std::sync::Arc;
use store::{CertificateStanding, HostCertificate, Store};
use tonic::{Request, Response, Status};

use crate::hosts::liveness;
use crate::tls::{FleetTls, caller_certificate};

pub struct RegistryService {
    store: Store,
    lease_ttl: i64,
    tls: Arc<FleetTls>,
}

impl RegistryService {
    pub fn new(store: Store, lease_ttl: i64, tls: Arc<FleetTls>) -> Self {
        RegistryService {
            store,
            lease_ttl,
            tls,
        }
    }
}

fn unavailable(e: store::StoreError) -> Status {
    if e.is_out_of_space() {
        Status::resource_exhausted(e.to_string())
    } else if e.is_unavailable() {
        Status::unavailable(e.to_string())
    } else {
        Status::internal(e.to_string())
    }
}

/// The caller must present the certificate of the host it speaks for, and that certificate
/// must be the host's current one and not revoked. A host registered before certificates
/// were recorded has its first one recorded here.
async fn authorize<T>(store: &Store, request: &Request<T>, host_id: &str) -> Result<(), Status> {
    let Some((id, serial)) = caller_certificate(request) else {
        return Err(Status::unauthenticated(
            "a client certificate of the fleet is required; join first",
        ));
    };
    if id != host_id {
        return Err(Status::permission_denied(format!(
            "the certificate of host {id:?} cannot speak for host {host_id:?}"
        )));
    }
    match store
        .certificate_standing(host_id, &serial)
        .await
        .map_err(unavailable)?
    {
        CertificateStanding::Current => Ok(()),
        CertificateStanding::Revoked => {
            tracing::warn!(host_id, serial, "refused a revoked certificate");
            Err(Status::permission_denied(format!(
                "this certificate of host {host_id:?} is revoked"
            )))
        }
        CertificateStanding::NotCurrent => {
            tracing::warn!(
                host_id,
                serial,
                "refused a certificate that is not the host's"
            );
            Err(Status::permission_denied(format!(
                "this certificate is not host {host_id:?}'s current one (the host was removed or joined again)"
            )))
        }
        CertificateStanding::Unrecorded => {
            let cert = HostCertificate {
                serial: serial.clone(),
                issued_at: Utc::now(),
            };
            if store
                .adopt_host_certificate(host_id, &cert)
                .await
                .map_err(unavailable)?
            {
                tracing::info!(
                    host_id,
                    serial,
                    "recorded the certificate of a host that joined before certificates were recorded"
                );
                Ok(())
            } else {
                Err(Status::unavailable("the host's certificate changed; retry"))
            }
        }
    }
}

/// Lower-case hex SHA-256, how re-join tokens are stored.
pub(crate) fn sha256_hex(text: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(text.as_bytes()))
}

fn already_joined(host_id: &str) -> Status {
    Status::already_exists(format!(
        "host {host_id:?} has already joined; to let a machine join as {host_id:?} again, an operator \
         removes the host (DELETE /v1/hosts/{host_id}) or issues a re-join token for it \
         (POST /v1/hosts/{host_id}/rejoin-token) and the agent joins with that token"
    ))
}

#[tonic::async_trait]
impl Registry for RegistryService {
    #[tracing::instrument(skip_all, fields(host_id = %request.get_ref().host_id))]
    async fn join(&self, request: Request<JoinRequest>) -> Result<Response<JoinResponse>, Status> {
        let r = request.into_inner();
        spec::ident::validate_id(&r.host_id)
            .map_err(|e| Status::invalid_argument(format!("host_id: {e}")))?;
        if r.csr_pem.is_empty() {
            return Err(Status::invalid_argument(
                "csr_pem: required; the agent makes its own key and sends a certificate signing request",
            ));
        }
        // Which token: the fleet's, or this host's re-join token (read with its revision, so
        // that using it and deleting it are one transaction).
        let rejoin = if self.tls.join_token_matches(&r.join_token) {
            None
        } else {
            let stored = self
                .store
                .rejoin_token(&r.host_id)
                .await
                .map_err(unavailable)?;
            let presented = sha256_hex(&r.join_token);
            let valid = stored.filter(|t| {
                use subtle::ConstantTimeEq;
                bool::from(t.value.sha256.as_bytes().ct_eq(presented.as_bytes()))
                    && t.value.expires_at > Utc::now()
            });
            match valid {
                Some(t) => Some(t.mod_revision),
                None => {
                    tracing::warn!("join refused: wrong token");
                    return Err(Status::unauthenticated("the join token is not valid"));
                }
            }
        };
        let issued = self
            .tls
            .sign_agent_csr(&r.host_id, &r.csr_pem)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let cert = HostCertificate {
            serial: issued.serial.clone(),
            issued_at: Utc::now(),
        };
        match rejoin {
            None => {
                if !self
                    .store
                    .claim_host_id(&r.host_id, &cert)
                    .await
                    .map_err(unavailable)?
                {
                    tracing::warn!("join refused: the host id has already joined");
                    return Err(already_joined(&r.host_id));
                }
            }
            Some(token_revision) => {
                let previous = self
                    .store
                    .host_certificate(&r.host_id)
                    .await
                    .map_err(unavailable)?;
                if !self
                    .store
                    .rejoin_host(&r.host_id, token_revision, previous.as_ref(), &cert)
                    .await
                    .map_err(unavailable)?
                {
                    return Err(Status::unauthenticated(
                        "the re-join token was used or replaced meanwhile",
                    ));
                }
                tracing::info!(
                    revoked = previous.as_ref().map(|p| p.value.serial.as_str()),
                    "re-join: the host's previous certificate is revoked"
                );
            }
        }
        tracing::info!(serial = %issued.serial, "signed the certificate of a joining host");
        Ok(Response::new(JoinResponse {
            cert_pem: issued.cert_pem,
            ca_pem: self.tls.ca_pem().to_string(),
        }))
    }

    #[tracing::instrument(skip_all, fields(host_id = %request.get_ref().host_id))]
    async fn register(
        &self,
        request: Request<RegisterRequest>,
    ) -> Result<Response<RegisterResponse>, Status> {
        authorize(&self.store, &request, &request.get_ref().host_id).await?;
        let r = request.into_inner();
        spec::ident::validate_id(&r.host_id)
            .map_err(|e| Status::invalid_argument(format!("host_id: {e}")))?;
        if r.agent_address.is_empty() {
            return Err(Status::invalid_argument("agent_address: required"));
        }
        let previous = self.store.get_host(&r.host_id).await.map_err(unavailable)?;
        let now = Utc::now();
        let host = Host {
            id: r.host_id.clone(),
            agent_address: r.agent_address,
            addresses: r.addresses,
            engine_id: r.engine_id,
            cpus: r.cpus,
            memory_bytes: r.memory_bytes,
            agent_version: r.agent_version,
            registered_at: previous.map_or(now, |p| p.registered_at),
            status: HostStatus {
                state: HostState::Healthy,
                updated_at: now,
                error: None,
            },
        };
        self.store.put_host(&host).await.map_err(unavailable)?;
        let lease = self
            .store
            .grant_lease(self.lease_ttl)
            .await
            .map_err(unavailable)?;
        self.store
            .put_host_liveness(&r.host_id, &liveness(r.docker_ok, &r.docker_error), lease)
            .await
            .map_err(unavailable)?;
        tracing::info!(lease, "host registered");
        Ok(Response::new(RegisterResponse {
            lease_ttl_seconds: self.lease_ttl as u32,
        }))
    }

    async fn heartbeat(
        &self,
        request: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatResponse>, Status> {
        authorize(&self.store, &request, &request.get_ref().host_id).await?;
        let r = request.into_inner();
        let Some((current, lease)) = self
            .store
            .host_liveness_of(&r.host_id)
            .await
            .map_err(unavailable)?
        else {
            return Ok(Response::new(HeartbeatResponse { known: false }));
        };
        if !self
            .store
            .keep_alive_once(lease)
            .await
            .map_err(unavailable)?
        {
            return Ok(Response::new(HeartbeatResponse { known: false }));
        }
        let now = liveness(r.docker_ok, &r.docker_error);
        if now.docker_ok != current.docker_ok || now.docker_error != current.docker_error {
            self.store
                .put_host_liveness(&r.host_id, &now, lease)
                .await
                .map_err(unavailable)?;
            tracing::info!(host_id = %r.host_id, docker_ok = now.docker_ok, "host docker status changed");
        }
        Ok(Response::new(HeartbeatResponse { known: true }))
    }
}
