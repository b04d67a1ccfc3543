//! Hosts: registration by agents over gRPC, liveness through etcd leases.

use chrono::Utc;
use spec::{Host, HostState, HostStatus};
use store::{HostLiveness, Store, StoreError};

/// Every registered host with its status: `unreachable` once its lease expired (etcd removed
/// the liveness key), `degraded` while its agent cannot reach Docker, else `healthy`.
pub async fn hosts_with_status(store: &Store) -> Result<Vec<Host>, StoreError> {
    let liveness = store.host_liveness().await?;
    let mut hosts = store.list_hosts().await?;
    for host in &mut hosts {
        host.status = match liveness.get(&host.id) {
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
