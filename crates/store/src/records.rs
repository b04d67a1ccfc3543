//! Documents the control plane types itself: instance records, a database's credentials
//! (sealed), and documents sealed whole (the fleet CA).

use super::*;

impl Store {
    /// Every instance record of a database.
    pub async fn list_instances<T: DeserializeOwned>(&self, db: &str) -> Result<Vec<T>> {
        self.range_json(&self.keys.instances(db), GetOptions::new().with_prefix())
            .await
    }

    /// Every instance record of every database, in one read.
    pub async fn list_all_instances<T: DeserializeOwned>(&self) -> Result<Vec<T>> {
        self.range_json(&self.keys.all_instances(), GetOptions::new().with_prefix())
            .await
    }

    pub async fn put_instance<T: Serialize>(
        &self,
        db: &str,
        instance_id: &str,
        record: &T,
    ) -> Result<()> {
        let put = TxnOp::put(self.keys.instance(db, instance_id), encode(record), None);
        self.guarded_txn(vec![], vec![put]).await.map(|_| ())
    }

    /// [`crate::StateStore::update_instance_document`]: a compare-and-swap on the document's
    /// revision (on its absence, when there is none), read again and retried on a conflict.
    pub async fn update_instance(
        &self,
        db: &str,
        instance_id: &str,
        mut change: impl FnMut(Option<&Value>) -> Option<Value>,
    ) -> Result<bool> {
        let key = self.keys.instance(db, instance_id);
        loop {
            let stored = self.get_json::<Value>(&key).await?;
            let Some(new) = change(stored.as_ref().map(|v| &v.value)) else {
                return Ok(false);
            };
            let compare = match &stored {
                Some(v) => Compare::mod_revision(key.clone(), CompareOp::Equal, v.mod_revision),
                None => Compare::create_revision(key.clone(), CompareOp::Equal, 0),
            };
            let put = TxnOp::put(key.clone(), encode(&new), None);
            if self.guarded_txn(vec![compare], vec![put]).await? {
                return Ok(true);
            }
        }
    }

    pub async fn delete_instance(&self, db: &str, instance_id: &str) -> Result<()> {
        self.guarded_txn(
            vec![],
            vec![TxnOp::delete(self.keys.instance(db, instance_id), None)],
        )
        .await
        .map(|_| ())
    }

    /// The list of a node's backups, as the reconciler last wrote it; None before any.
    pub async fn get_backups<T: DeserializeOwned>(
        &self,
        db: &str,
        node: &str,
    ) -> Result<Option<T>> {
        Ok(self
            .get_json::<T>(&self.keys.backups(db, node))
            .await?
            .map(|v| v.value))
    }

    /// Replaces the list of a node's backups. Kept when the database is deleted, as the
    /// backups are (they stay in the repository): the same id lists them again.
    pub async fn put_backups<T: Serialize>(&self, db: &str, node: &str, list: &T) -> Result<()> {
        let put = TxnOp::put(self.keys.backups(db, node), encode(list), None);
        self.guarded_txn(vec![], vec![put]).await.map(|_| ())
    }

    /// A database's generated credentials, with every secret value opened.
    pub async fn get_credentials<T: DeserializeOwned>(&self, db: &str) -> Result<Option<T>> {
        let Some(Versioned { value, .. }) =
            self.get_json::<Value>(&self.keys.credentials(db)).await?
        else {
            return Ok(None);
        };
        let Value::Object(mut map) = value else {
            return Ok(None);
        };
        self.secrets.open(&mut map)?;
        serde_json::from_value(Value::Object(map))
            .map(Some)
            .map_err(|source| StoreError::Decode {
                key: self.keys.credentials(db),
                source,
            })
    }

    /// Stores a database's credentials with every value under a secret-looking key sealed.
    pub async fn put_credentials<T: Serialize>(&self, db: &str, credentials: &T) -> Result<()> {
        let Value::Object(mut map) =
            serde_json::to_value(credentials).expect("credentials serialize")
        else {
            panic!("credentials must serialize to a JSON object");
        };
        self.secrets.seal(&mut map, &self.is_secret_key);
        let put = TxnOp::put(self.keys.credentials(db), encode(&Value::Object(map)), None);
        self.guarded_txn(vec![], vec![put]).await.map(|_| ())
    }

    // ---- documents sealed whole (the fleet CA) ----

    /// Stores `value` sealed at `key` unless something is there already; returns what is
    /// stored afterwards. Replicas racing to initialise agree on the first writer's value.
    pub async fn create_sealed_if_absent<T: Serialize + DeserializeOwned + Clone>(
        &self,
        key: &str,
        value: &T,
    ) -> Result<T> {
        let sealed = self
            .secrets
            .seal_document(&serde_json::to_value(value).expect("document serializes"));
        let txn = Txn::new()
            .when([Compare::create_revision(key, CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key, encode(&sealed), None)])
            .or_else([TxnOp::get(key, None)]);
        let resp = self.client.kv_client().txn(txn).await?;
        if resp.succeeded() {
            return Ok(value.clone());
        }
        let stored = resp.op_responses().into_iter().find_map(|r| match r {
            etcd_client::TxnOpResponse::Get(g) => g.kvs().first().map(|kv| kv.value().to_vec()),
            _ => None,
        });
        let bytes = stored.ok_or(StoreError::NotFound)?;
        let document: Value = decode(key.as_bytes(), &bytes)?;
        let opened = self.secrets.open_document(&document)?;
        serde_json::from_value(opened).map_err(|source| StoreError::Decode {
            key: key.to_string(),
            source,
        })
    }

    /// A document stored sealed at `key`, opened; None when there is none. Reads only.
    pub async fn get_sealed<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        let Some(Versioned { value, .. }) = self.get_json::<Value>(key).await? else {
            return Ok(None);
        };
        let opened = self.secrets.open_document(&value)?;
        serde_json::from_value(opened)
            .map(Some)
            .map_err(|source| StoreError::Decode {
                key: key.to_string(),
                source,
            })
    }

    /// Replaces a sealed document (an operator rotating the join token).
    pub async fn put_sealed<T: Serialize>(&self, key: &str, value: &T) -> Result<()> {
        let sealed = self
            .secrets
            .seal_document(&serde_json::to_value(value).expect("document serializes"));
        self.client
            .kv_client()
            .put(key, encode(&sealed), None)
            .await?;
        Ok(())
    }
}
