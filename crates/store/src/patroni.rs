//! Patroni's keys. Patroni keeps each Postgres node's leader key, member keys and cluster
//! state in the fleet's etcd under `/{prefix}/patroni/{database}/{node}/` (ADR 016). berth
//! reads them to learn which instance is the primary and how each one fares; it writes none
//! of them, and deletes a node's keys only once no instance of the node is left.

use etcd_client::{GetOptions, TxnOp};

use crate::{Result, Store};

impl Store {
    /// Every key of Patroni's namespace of `db`, as (key below the namespace, value), in
    /// key order: `n1/leader`, `n1/members/db-n1-host-1`, ... One read.
    pub async fn patroni_keys(&self, db: &str) -> Result<Vec<(String, Vec<u8>)>> {
        let namespace = self.keys.patroni(db);
        let resp = self
            .client
            .kv_client()
            .get(namespace.as_str(), Some(GetOptions::new().with_prefix()))
            .await?;
        Ok(resp
            .kvs()
            .iter()
            .filter_map(|kv| {
                let key = std::str::from_utf8(kv.key()).ok()?;
                Some((
                    key.strip_prefix(&namespace)?.to_string(),
                    kv.value().to_vec(),
                ))
            })
            .collect())
    }

    /// Deletes Patroni's keys of node `node` of `db`, or of every node of `db` when None.
    /// A write of the leader (fenced).
    pub async fn forget_patroni(&self, db: &str, node: Option<&str>) -> Result<()> {
        let mut prefix = self.keys.patroni(db);
        if let Some(node) = node {
            prefix.push_str(node);
            prefix.push('/');
        }
        let delete = TxnOp::delete(
            prefix.as_str(),
            Some(etcd_client::DeleteOptions::new().with_prefix()),
        );
        self.guarded_txn(vec![], vec![delete]).await.map(|_| ())
    }
}

impl Store {
    /// Patroni's keys of every database, in one read: database id -> (key below its
    /// namespace, value), as [`Store::patroni_keys`] gives them for one.
    pub async fn all_patroni_keys(
        &self,
    ) -> Result<std::collections::BTreeMap<String, Vec<(String, Vec<u8>)>>> {
        let root = self.keys.patroni("");
        let resp = self
            .client
            .kv_client()
            .get(root.as_str(), Some(GetOptions::new().with_prefix()))
            .await?;
        let mut out: std::collections::BTreeMap<String, Vec<(String, Vec<u8>)>> =
            Default::default();
        for kv in resp.kvs() {
            let Some(rest) = std::str::from_utf8(kv.key())
                .ok()
                .and_then(|k| k.strip_prefix(&root))
            else {
                continue;
            };
            if let Some((db, key)) = rest.split_once('/') {
                out.entry(db.to_string())
                    .or_default()
                    .push((key.to_string(), kv.value().to_vec()));
            }
        }
        Ok(out)
    }
}
