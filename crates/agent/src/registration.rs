//! Registration with the control plane's `agent.v1.Registry`: register (retrying until it works), then
//! heartbeat every lease_ttl / 3, registering again whenever the control plane no longer knows this host.

use std::sync::Arc;
use std::time::Duration;

use agent_proto::v1::registry_client::RegistryClient;
use agent_proto::v1::{HeartbeatRequest, RegisterRequest};
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, ClientTlsConfig};

use crate::ops::Ops;
use crate::runtime::ContainerRuntime;

pub struct Registration<R> {
    ops: Arc<Ops<R>>,
    /// One client per control-plane replica; any replica can register or renew, since the
    /// lease lives in etcd. A failed call moves on to the next one.
    clients: Vec<RegistryClient<Channel>>,
    current: usize,
    agent_address: String,
}

const MAX_BACKOFF: Duration = Duration::from_secs(10);

impl<R: ContainerRuntime> Registration<R> {
    pub fn new(
        ops: Arc<Ops<R>>,
        control_planes: &[String],
        agent_address: String,
        tls: ClientTlsConfig,
    ) -> Result<Self, agent_tls::JoinError> {
        let mut clients = Vec::with_capacity(control_planes.len());
        for url in control_planes {
            clients.push(RegistryClient::new(agent_tls::registry_channel(
                url,
                tls.clone(),
            )?));
        }
        Ok(Self {
            ops,
            clients,
            current: 0,
            agent_address,
        })
    }

    fn client(&mut self) -> &mut RegistryClient<Channel> {
        &mut self.clients[self.current]
    }

    fn next_replica(&mut self) {
        self.current = (self.current + 1) % self.clients.len();
    }

    /// Registers, retrying with backoff; returns the lease TTL, or None when cancelled.
    async fn register(&mut self, stop: &CancellationToken) -> Option<Duration> {
        let mut backoff = Duration::from_millis(200);
        loop {
            let info = self.ops.host_info().await;
            let request = RegisterRequest {
                host_id: info.host_id,
                agent_address: self.agent_address.clone(),
                addresses: info.addresses,
                cpus: info.cpus,
                memory_bytes: info.memory_bytes,
                agent_version: info.agent_version,
                docker_ok: info.docker_ok,
                docker_error: info.docker_error,
                engine_id: info.engine_id,
            };
            match self.client().register(request).await {
                Ok(resp) => {
                    let ttl = resp.into_inner().lease_ttl_seconds.max(3);
                    tracing::info!(lease_ttl_seconds = ttl, "registered with the control plane");
                    return Some(Duration::from_secs(u64::from(ttl)));
                }
                Err(status) => {
                    tracing::warn!(error = %status, retry_in = ?backoff, "registration failed");
                    self.next_replica();
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = stop.cancelled() => return None,
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    pub async fn run(mut self, stop: CancellationToken) {
        let Some(mut ttl) = self.register(&stop).await else {
            return;
        };
        loop {
            tokio::select! {
                _ = tokio::time::sleep(ttl / 3) => {}
                _ = stop.cancelled() => return,
            }
            let info = self.ops.host_info().await;
            let request = HeartbeatRequest {
                host_id: info.host_id,
                docker_ok: info.docker_ok,
                docker_error: info.docker_error,
            };
            match self.client().heartbeat(request).await {
                Ok(resp) if resp.get_ref().known => {}
                Ok(_) => {
                    tracing::warn!(
                        "control plane does not know this host any more; registering again"
                    );
                    match self.register(&stop).await {
                        Some(new_ttl) => ttl = new_ttl,
                        None => return,
                    }
                }
                // Keep heartbeating on the same schedule: if the lease runs out meanwhile, the control plane
                // answers known=false and we register again.
                Err(status) => {
                    tracing::warn!(error = %status, "heartbeat failed; trying the next replica");
                    self.next_replica();
                }
            }
        }
    }
}
