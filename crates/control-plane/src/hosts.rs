//! Hosts: registration by agents over gRPC, liveness through etcd leases.

use std::collections::BTreeSet;
use std::sync::{Arc, RwLock};

use chrono::Utc;
use spec::{Host, HostState, HostStatus};
use store::{HostLiveness, Store, StoreError};

/// Every registered host with its status: `unreachable` once its lease expired (etcd removed
/// the liveness key), `degraded` while its agent cannot reach Docker or the leader cannot
/// dial the agent, else `healthy`.
pub async fn hosts_with_status(store: &Store) -> Result<Vec<Host>, StoreError> {
    let liveness = store.host_liveness().await?;
    let dial = store.host_dial_failures().await?;
    let mut hosts = store.list_hosts().await?;
    for host in &mut hosts {
        host.status = match liveness.get(&host.id) {
            Some(alive) if alive.docker_ok && dial.contains_key(&host.id) => {
                let f = &dial[&host.id];
                HostStatus {
                    state: HostState::Degraded,
                    updated_at: alive.updated_at.max(f.since),
                    error: Some(format!(
                        "the control plane cannot reach the agent at {} since {}: {}",
                        f.address,
                        f.since.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                        f.error
                    )),
                }
            }
            None => HostStatus {
                state: HostState::Unreachable,
                updated_at: host.status.updated_at,
                error: Some("the agent stopped renewing its lease".into()),
            },
            Some(HostLiveness {
                docker_ok: false,
                docker_error,
                updated_at,
            }) => HostStatus {
                state: HostState::Degraded,
                updated_at: *updated_at,
                error: docker_error
                    .clone()
                    .or_else(|| Some("Docker is unreachable".into())),
            },
            Some(HostLiveness { updated_at, .. }) => HostStatus {
                state: HostState::Healthy,
                updated_at: *updated_at,
                error: None,
            },
        };
    }
    Ok(hosts)
}

pub(crate) fn liveness(docker_ok: bool, docker_error: &str) -> HostLiveness {
    HostLiveness {
        docker_ok,
        docker_error: (!docker_error.is_empty()).then(|| docker_error.to_string()),
        updated_at: Utc::now(),
    }
}

/// The ids of registered hosts, as this replica last read them, so that validating a spec does
/// not cost a read of every host record per request (it was half the etcd requests of a create).
///
/// An id missing from the cache may be newly registered, which [`KnownHosts::refresh`] settles
/// with one read. Host records are deleted only by an operator (`DELETE /v1/hosts/{id}`, which
/// refuses while a spec names the host): the replica that serves it forgets the id at once, and
/// every replica forgets it when its watch of the host records ([`KnownHosts::follow`]) sees
/// the delete (ADR 010, ADR 011).
#[derive(Clone, Default)]
pub struct KnownHosts(Arc<RwLock<Arc<BTreeSet<String>>>>);

impl KnownHosts {
    pub fn cached(&self) -> Arc<BTreeSet<String>> {
        self.0.read().expect("known hosts lock").clone()
    }

    /// Drops a removed host from the cache.
    pub fn forget(&self, host_id: &str) {
        let mut ids = self.0.write().expect("known hosts lock");
        if ids.contains(host_id) {
            let mut less = (**ids).clone();
            less.remove(host_id);
            *ids = Arc::new(less);
        }
    }

    /// Forgets every host whose record is deleted, for as long as it runs: a watch of the
    /// host records, re-established after errors. Only deletes matter: an id missing from
    /// the cache is read on demand.
    pub async fn follow(self, store: Store) {
        use etcd_client::{EventType, WatchOptions};
        let prefix = store.keys().hosts();
        loop {
            let mut client = store.client();
            match client
                .watch(prefix.as_str(), Some(WatchOptions::new().with_prefix()))
                .await
            {
                Ok(mut stream) => {
                    while let Ok(Some(response)) = stream.message().await {
                        for event in response.events() {
                            if event.event_type() != EventType::Delete {
                                continue;
                            }
                            if let Some(kv) = event.kv() {
                                let key = String::from_utf8_lossy(kv.key());
                                if let Some(id) = key.strip_prefix(&prefix) {
                                    self.forget(id);
                                }
                            }
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "watch of host records failed; retrying"),
            }
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        }
    }

    /// Reads every registered host again; returns the new set.
    pub async fn refresh(&self, store: &Store) -> Result<Arc<BTreeSet<String>>, StoreError> {
        let ids: BTreeSet<String> = store
            .list_hosts()
            .await?
            .into_iter()
            .map(|h| h.id)
            .collect();
        let ids = Arc::new(ids);
        *self.0.write().expect("known hosts lock") = ids.clone();
        Ok(ids)
    }
}
