//! Hosts as the store keeps them: their records, liveness under their agents' leases, the
//! leader's record of agents it cannot dial, and the leases themselves.

use etcd_client::{GetOptions, TxnOp};
use serde::de::DeserializeOwned;
use spec::Host;

use crate::{HostDialFailure, HostLiveness, Result, Store, decode, encode};

impl Store {
    pub async fn put_host(&self, host: &Host) -> Result<()> {
        self.client
            .kv_client()
            .put(self.keys.host(&host.id), encode(host), None)
            .await?;
        Ok(())
    }

    pub async fn get_host(&self, id: &str) -> Result<Option<Host>> {
        Ok(self.get_json(&self.keys.host(id)).await?.map(|v| v.value))
    }

    pub async fn list_hosts(&self) -> Result<Vec<Host>> {
        self.range_json(&self.keys.hosts(), GetOptions::new().with_prefix())
            .await
    }

    /// Liveness of every host whose lease is alive, by host id.
    pub async fn host_liveness(&self) -> Result<std::collections::BTreeMap<String, HostLiveness>> {
        self.by_host_id(&self.keys.host_alive_prefix()).await
    }

    /// Every value under `prefix`, keyed by the rest of its key (a host id).
    async fn by_host_id<T: DeserializeOwned>(
        &self,
        prefix: &str,
    ) -> Result<std::collections::BTreeMap<String, T>> {
        let resp = self
            .client
            .kv_client()
            .get(prefix, Some(GetOptions::new().with_prefix()))
            .await?;
        let mut out = std::collections::BTreeMap::new();
        for kv in resp.kvs() {
            let key = String::from_utf8_lossy(kv.key());
            if let Some(id) = key.strip_prefix(prefix) {
                out.insert(id.to_string(), decode(kv.key(), kv.value())?);
            }
        }
        Ok(out)
    }

    /// Puts a host's liveness under `lease`: when the lease expires, etcd deletes the key and
    /// the host reads as unreachable without anyone having to notice.
    pub async fn put_host_liveness(
        &self,
        host_id: &str,
        liveness: &HostLiveness,
        lease: i64,
    ) -> Result<()> {
        let options = etcd_client::PutOptions::new().with_lease(lease);
        self.client
            .kv_client()
            .put(
                self.keys.host_alive(host_id),
                encode(liveness),
                Some(options),
            )
            .await?;
        Ok(())
    }

    /// A host's liveness and the lease it lives under, if the lease is alive.
    pub async fn host_liveness_of(&self, host_id: &str) -> Result<Option<(HostLiveness, i64)>> {
        let resp = self
            .client
            .kv_client()
            .get(self.keys.host_alive(host_id), None)
            .await?;
        match resp.kvs().first() {
            None => Ok(None),
            Some(kv) => Ok(Some((decode(kv.key(), kv.value())?, kv.lease()))),
        }
    }

    /// Records that the leader cannot dial `host_id`'s agent (a fenced write).
    pub async fn put_host_dial_failure(
        &self,
        host_id: &str,
        failure: &HostDialFailure,
    ) -> Result<()> {
        let put = TxnOp::put(self.keys.host_dial(host_id), encode(failure), None);
        self.guarded_txn(vec![], vec![put]).await.map(|_| ())
    }

    /// The leader reached `host_id`'s agent again (a fenced delete; absent is fine).
    pub async fn clear_host_dial_failure(&self, host_id: &str) -> Result<()> {
        let delete = TxnOp::delete(self.keys.host_dial(host_id), None);
        self.guarded_txn(vec![], vec![delete]).await.map(|_| ())
    }

    /// Every recorded dial failure, by host id.
    pub async fn host_dial_failures(
        &self,
    ) -> Result<std::collections::BTreeMap<String, HostDialFailure>> {
        self.by_host_id(&self.keys.host_dial_prefix()).await
    }

    pub async fn grant_lease(&self, ttl_seconds: i64) -> Result<i64> {
        Ok(self
            .client
            .lease_client()
            .grant(ttl_seconds, None)
            .await?
            .id())
    }

    /// Renews a lease once. Returns false when the lease has already expired.
    pub async fn keep_alive_once(&self, lease: i64) -> Result<bool> {
        let (mut keeper, mut responses) = self.client.lease_client().keep_alive(lease).await?;
        keeper.keep_alive().await?;
        Ok(responses.message().await?.is_some_and(|r| r.ttl() > 0))
    }
}
