//! Leader election through etcd: one replica at a time runs reconciliation.
//!
//! The leader key is created under the replica's lease, only if absent. Its create revision
//! is the fence every leader write carries ([`store::Fence`]); when the lease expires etcd
//! deletes the key, the fence stops matching, and a deposed leader's writes are refused even
//! if it has not yet noticed.

use std::time::Duration;

use etcd_client::{
    Compare, CompareOp, EventType, PutOptions, Txn, TxnOp, TxnOpResponse, WatchOptions,
};
use store::{Fence, Store};
use tokio::sync::watch;

#[derive(Debug, thiserror::Error)]
pub enum ElectionError {
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
}

/// Held while this replica leads. `lost` turns true when the lease could not be renewed.
pub struct Leadership {
    pub fence: Fence,
    pub lost: watch::Receiver<bool>,
    keeper: tokio::task::JoinHandle<()>,
}

impl Drop for Leadership {
    fn drop(&mut self) {
        self.keeper.abort();
    }
}

/// Campaigns until this replica leads. Returns only once the first lease renewal succeeded,
/// so a replica cut off from etcd never starts acting as leader.
pub async fn campaign(
    store: &Store,
    replica_id: &str,
    ttl_seconds: i64,
) -> Result<Leadership, ElectionError> {
    let mut client = store.client();
    let key = store.keys().leader();
    loop {
        let lease = client.lease_grant(ttl_seconds, None).await?.id();
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key.clone(),
                replica_id,
                Some(PutOptions::new().with_lease(lease)),
            )])
            .or_else([TxnOp::get(key.clone(), None)]);
        let resp = client.txn(txn).await?;
        if resp.succeeded() {
            let revision = resp.header().map(|h| h.revision()).unwrap_or_default();
            let (mut keeper, mut acks) = client.lease_keep_alive(lease).await?;
            keeper.keep_alive().await?;
            if acks.message().await?.is_some_and(|a| a.ttl() > 0) {
                let (lost_tx, lost) = watch::channel(false);
                let keeper =
                    tokio::spawn(keep_leading(client.clone(), lease, ttl_seconds, lost_tx));
                tracing::info!(replica_id, revision, "became leader");
                return Ok(Leadership {
                    fence: Fence {
                        key,
                        create_revision: revision,
                    },
                    lost,
                    keeper,
                });
            }
            continue;
        }
        let _ = client.lease_revoke(lease).await;
        // Someone else leads: wait for their key to go, then try again.
        let current = resp.op_responses().into_iter().find_map(|r| match r {
            TxnOpResponse::Get(g) => g
                .kvs()
                .first()
                .map(|kv| (kv.mod_revision(), kv.value_str().unwrap_or("").to_string())),
            _ => None,
        });
        if let Some((revision, holder)) = current {
            tracing::debug!(leader = %holder, "another replica leads; watching");
            let mut stream = client
                .watch(
                    key.clone(),
                    Some(WatchOptions::new().with_start_revision(revision + 1)),
                )
                .await?;
            'watch: while let Some(msg) = stream.message().await? {
                if msg
                    .events()
                    .iter()
                    .any(|e| e.event_type() == EventType::Delete)
                {
                    break 'watch;
                }
            }
        }
    }
}

/// Renews the lease every third of its TTL. A failed renewal is retried quickly (etcd may be
/// restarting); leadership is given up only when no renewal succeeded for a whole TTL, which
/// is when etcd may have let the lease, and the leader key, expire.
async fn keep_leading(
    mut client: etcd_client::Client,
    lease: i64,
    ttl_seconds: i64,
    lost: watch::Sender<bool>,
) {
    let ttl = Duration::from_secs(ttl_seconds.max(1) as u64);
    let period = ttl / 3;
    let mut last_renewed = tokio::time::Instant::now();
    let mut channel: Option<(etcd_client::LeaseKeeper, etcd_client::LeaseKeepAliveStream)> = None;
    loop {
        let renewed = async {
            if channel.is_none() {
                channel = Some(client.lease_keep_alive(lease).await.ok()?);
            }
            let (keeper, acks) = channel.as_mut()?;
            keeper.keep_alive().await.ok()?;
            let ack = tokio::time::timeout(period, acks.message())
                .await
                .ok()?
                .ok()??;
            Some(ack.ttl() > 0)
        }
        .await;
        match renewed {
            Some(true) => {
                last_renewed = tokio::time::Instant::now();
                tokio::time::sleep(period).await;
            }
            Some(false) => {
                tracing::warn!(lease, "the leader lease expired; stepping down");
                let _ = lost.send(true);
                return;
            }
            None => {
                channel = None;
                if last_renewed.elapsed() >= ttl {
                    tracing::warn!(
                        lease,
                        "could not renew the leader lease for a whole TTL; stepping down"
                    );
                    let _ = lost.send(true);
                    return;
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
    }
}
