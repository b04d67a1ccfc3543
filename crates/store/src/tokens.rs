//! API bearer tokens (RFC 6750) in etcd: one record per token under `{p}/api-tokens/{id}`,
//! holding its name, scope and the SHA-256 of its secret, never the secret. Minting,
//! parsing and checking tokens is the control plane's; this module stores the records.

use chrono::{DateTime, Utc};
use etcd_client::{Compare, CompareOp, GetOptions, Txn, TxnOp};
use serde::{Deserialize, Serialize};

use crate::{Result, Store, StoreError, encode};

/// What a token allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TokenScope {
    /// Reads only (GET and HEAD).
    ReadOnly,
    /// Every call of the API.
    ReadWrite,
}

impl TokenScope {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenScope::ReadOnly => "read-only",
            TokenScope::ReadWrite => "read-write",
        }
    }
}

/// A stored API token: its public id, what it is for, and the hash of its secret.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiTokenRecord {
    /// Public: the part of the token before the secret, used to find the record, in logs and
    /// to revoke it.
    pub id: String,
    /// The operator's label for it ("ci", "alice").
    pub name: String,
    pub scope: TokenScope,
    /// Lower-case hex SHA-256 of the token's secret part.
    pub sha256: String,
    pub created_at: DateTime<Utc>,
}

impl std::fmt::Debug for ApiTokenRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiTokenRecord")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("scope", &self.scope)
            .field("created_at", &self.created_at)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Stores a new token record. [`StoreError::AlreadyExists`] if its id is taken.
    pub async fn create_api_token(&self, record: &ApiTokenRecord) -> Result<()> {
        let key = self.keys.api_token(&record.id);
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key, encode(record), None)]);
        if self.client.kv_client().txn(txn).await?.succeeded() {
            Ok(())
        } else {
            Err(StoreError::AlreadyExists)
        }
    }

    pub async fn api_token(&self, id: &str) -> Result<Option<ApiTokenRecord>> {
        Ok(self
            .get_json(&self.keys.api_token(id))
            .await?
            .map(|v| v.value))
    }

    /// Every token record, by id.
    pub async fn list_api_tokens(&self) -> Result<Vec<ApiTokenRecord>> {
        self.range_json(&self.keys.api_tokens(), GetOptions::new().with_prefix())
            .await
    }

    /// Deletes a token's record, so the token is refused from the next request on. False:
    /// there was no such token.
    pub async fn revoke_api_token(&self, id: &str) -> Result<bool> {
        let resp = self
            .client
            .kv_client()
            .delete(self.keys.api_token(id), None)
            .await?;
        Ok(resp.deleted() > 0)
    }
}
