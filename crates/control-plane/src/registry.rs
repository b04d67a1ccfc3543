//! The gRPC registry agents announce themselves to. A host's liveness key lives under an
//! etcd lease the agent's heartbeats renew, so a dead agent turns `unreachable` when the
//! lease runs out, whichever replica it last talked to, and with no sweeper to run.

use agent_proto::registry_server::Registry;
use agent_proto::{
    HeartbeatRequest, HeartbeatResponse, JoinRequest, JoinResponse, RegisterRequest,
    RegisterResponse,
};
use chrono::Utc;
use spec::{Host, HostState, HostStatus};
use std::sync::Arc;
use store::Store;
use tonic::{Request, Response, Status};

use crate::hosts::liveness;
use crate::tls::{FleetTls, caller_host_id};

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
    if e.is_unavailable() {
        Status::unavailable(e.to_string())
    } else {
        Status::internal(e.to_string())
    }
}

/// The caller must present the certificate of the host it speaks for.
fn authorize<T>(request: &Request<T>, host_id: &str) -> Result<(), Status> {
    match caller_host_id(request) {
        None => Err(Status::unauthenticated(
            "a client certificate of the fleet is required; join first",
        )),
        Some(id) if id != host_id => Err(Status::permission_denied(format!(
            "the certificate of host {id:?} cannot speak for host {host_id:?}"
        ))),
        Some(_) => Ok(()),
    }
}

#[tonic::async_trait]
impl Registry for RegistryService {
    #[tracing::instrument(skip_all, fields(host_id = %request.get_ref().host_id))]
    async fn join(&self, request: Request<JoinRequest>) -> Result<Response<JoinResponse>, Status> {
        let r = request.into_inner();
        spec::ident::validate_id(&r.host_id)
            .map_err(|e| Status::invalid_argument(format!("host_id: {e}")))?;
        if !self.tls.join_token_matches(&r.join_token) {
            tracing::warn!("join refused: wrong token");
            return Err(Status::unauthenticated("the join token is not valid"));
        }
        let identity = self
            .tls
            .issue_agent(&r.host_id)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        tracing::info!("issued a certificate to a joining host");
        Ok(Response::new(JoinResponse {
            cert_pem: identity.cert_pem,
            key_pem: identity.key_pem,
            ca_pem: self.tls.ca_pem().to_string(),
        }))
    }

    #[tracing::instrument(skip_all, fields(host_id = %request.get_ref().host_id))]
    async fn register(
        &self,
        request: Request<RegisterRequest>,
    ) -> Result<Response<RegisterResponse>, Status> {
        authorize(&request, &request.get_ref().host_id)?;
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
        authorize(&request, &request.get_ref().host_id)?;
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
