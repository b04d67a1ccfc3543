//! Desired and observed state in etcd.
//!
//! Typed reads and writes over the key layout in [`keys`]. Every write that must not race
//! another (create, update of a spec, task transitions) is one etcd transaction with a
//! revision compare, so two writers cannot both win: the loser gets [`StoreError::Conflict`].

pub mod etcd_auth;
mod follow;
mod history;
mod host_tasks;
mod hosts;
pub mod identity;
pub mod keys;
pub mod memory;
mod metered;
mod patroni;
mod records;
mod schedules;
pub mod sealed;
mod state;
mod tasks;
pub mod tokens;

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use etcd_client::{Client, Compare, CompareOp, GetOptions, Txn, TxnOp};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use serde_json::Value;
use spec::{DatabaseSpec, DatabaseState, Task};

pub use etcd_auth::EtcdCredentials;
pub use follow::LogFollower;
pub use host_tasks::LogLine;
pub use identity::{CertificateStanding, HostCertificate, RejoinToken, RevokedCertificate};
pub use keys::Keys;
pub use memory::MemoryStore;
pub use schedules::{ScheduleKey, ScheduledFire, StoredMark};
pub use sealed::{SealError, SecretBox};
pub use state::{DocumentChange, StateStore, TaskChange};
pub use tokens::{ApiTokenRecord, TokenScope};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("etcd: {0}")]
    Etcd(etcd_client::Error),
    /// etcd's db reached its quota (`--quota-backend-bytes`, 2 GiB by default) and it raised
    /// its NOSPACE alarm: it refuses every write, but reads work, until an operator compacts,
    /// defragments and disarms the alarm (deploy/systemd/README.md, ADR 014).
    #[error(
        "etcd is out of space: it refuses writes until it is compacted, defragmented and its alarm disarmed ({0})"
    )]
    NoSpace(etcd_client::Error),
    #[error("stored value at {key} does not decode: {source}")]
    Decode {
        key: String,
        source: serde_json::Error,
    },
    #[error(transparent)]
    Seal(#[from] SealError),
    #[error("already exists")]
    AlreadyExists,
    #[error("changed concurrently")]
    Conflict,
    #[error("not found")]
    NotFound,
    #[error("this replica is no longer the leader; the write was refused")]
    Fenced,
    /// A watch ended that its reader needed to go on (etcd closed or canceled it, e.g.
    /// because the revision it needed was compacted); watching again from a cursor resumes.
    #[error("{0}")]
    WatchEnded(String),
}

impl From<etcd_client::Error> for StoreError {
    fn from(e: etcd_client::Error) -> Self {
        // etcd's ErrGRPCNoSpace: RESOURCE_EXHAUSTED "etcdserver: mvcc: database space
        // exceeded" (api/v3rpc/rpctypes). RESOURCE_EXHAUSTED alone also means "too many
        // requests", which is not this.
        match &e {
            etcd_client::Error::GRpcStatus(s)
                if s.message().contains("database space exceeded") =>
            {
                StoreError::NoSpace(e)
            }
            _ => StoreError::Etcd(e),
        }
    }
}

impl StoreError {
    /// Whether trying again later may succeed (etcd down or a leader change), as opposed to
    /// a verdict about the request itself.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Etcd(_) | StoreError::WatchEnded(_))
    }

    /// etcd refuses writes because its db is full ([`StoreError::NoSpace`]).
    pub fn is_out_of_space(&self) -> bool {
        matches!(self, StoreError::NoSpace(_))
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// The bookkeeping of a database beside its spec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatabaseRecord {
    pub id: String,
    pub state: DatabaseState,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Bumped by every accepted spec; the reconciler reports which generation it reached.
    pub generation: u64,
    /// The task that carries the newest accepted change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_task_id: Option<String>,
    /// The owner's identifier, as the caller gave it (`tenant_id` of the reference API's
    /// create and update requests); stored and returned, never interpreted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<String>,
    /// The generation of the last update made with `force_update` (0: none): every
    /// instance's desired hash depends on it, so that update replaces each container once.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub forced_generation: u64,
    /// The operation (switchover, failover, restart, stop or start of an instance) that
    /// `current_task_id` carries, until the reconciler has carried it out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<spec::operations::Operation>,
    /// Instances stopped by `stop-instance`: their containers stay away, their data
    /// directories stay, until `start-instance` (or a spec that drops them).
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub stopped_instances: BTreeSet<String>,
    /// Node -> the instance that was its primary when it was stopped with no replica taking
    /// over: it holds the node's latest data, so it is the one to start first.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub stopped_primaries: BTreeMap<String, String>,
    /// Node -> the backup a `restore` task rebuilt it from (ADR 025): the node's effective
    /// `restore_config` from then on, over the spec's. No keys: a restore request names a
    /// repository of the node by id, or one that uses the host's credentials.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub restored_nodes: BTreeMap<String, spec::backup::RestoreConfig>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// A database as stored: its record and its spec with secrets opened.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredDatabase {
    pub record: DatabaseRecord,
    pub spec: DatabaseSpec,
    /// The spec key's mod revision: what an update must compare against.
    pub spec_revision: i64,
}

/// A database's keys as they are met in a range read: record, and spec (still sealed) with
/// its revision and key.
type PartialDatabase = (Option<DatabaseRecord>, Option<(Value, i64, Vec<u8>)>);

/// The order of a listing by time-ordered id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListOrder {
    NewestFirst,
    OldestFirst,
}

/// A value and the revision it was read at.
#[derive(Debug, Clone, PartialEq)]
pub struct Versioned<T> {
    pub value: T,
    pub mod_revision: i64,
}

/// What a host's agent last said about itself, kept under the host's lease.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostLiveness {
    pub docker_ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub docker_error: Option<String>,
    pub updated_at: DateTime<Utc>,
}

/// The leader cannot open its connection to a host's agent, although the host may well be
/// heartbeating (the agent dials the control plane, not the other way round): a wrong
/// advertised address, a firewall, a route that only works one way.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostDialFailure {
    /// The agent address the leader dialled.
    pub address: String,
    pub error: String,
    /// When the failures began.
    pub since: DateTime<Utc>,
}

/// Proof of leadership: the leader key's create revision. Writes guarded by a fence succeed
/// only while that exact key still exists, so a deposed leader cannot write after a new
/// one was elected (its lease expired, etcd deleted its key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    pub key: String,
    pub create_revision: i64,
}

#[derive(Clone)]
pub struct Store {
    client: Client,
    keys: Keys,
    secrets: SecretBox,
    is_secret_key: fn(&str) -> bool,
    fence: Option<Fence>,
    /// Serialises the log appends of one task within this process, so that entry ids (taken
    /// when a line is written) reach etcd in id order: a follower of the log then sees key
    /// order, and a cursor never skips a line committed after a later id. Striped by task.
    appends: std::sync::Arc<[tokio::sync::Mutex<()>; APPEND_STRIPES]>,
    /// Whether the client logged in, and the Patroni users it manages (ADR 017).
    auth: std::sync::Arc<etcd_auth::AuthState>,
}

/// How many locks the log appends of all tasks share (see `Store::appends`).
const APPEND_STRIPES: usize = 64;

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("keys", &self.keys)
            .finish_non_exhaustive()
    }
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("store types serialize to JSON")
}

fn decode<T: DeserializeOwned>(key: &[u8], bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|source| StoreError::Decode {
        key: String::from_utf8_lossy(key).into_owned(),
        source,
    })
}

impl Store {
    /// Connects lazily: the first request dials, and later requests redial after etcd restarts.
    pub async fn connect(
        endpoints: &[String],
        prefix: &str,
        secrets: SecretBox,
        is_secret_key: fn(&str) -> bool,
    ) -> Result<Self> {
        Store::connect_as(endpoints, prefix, secrets, is_secret_key, None).await
    }

    /// [`Store::connect`], logged in to etcd as `credentials` when given (ADR 017): every
    /// client of the store (requests, watches, leases, the leader election) then carries
    /// the user's token, renewed when etcd says it expired. Logging in is a request made
    /// here, so with credentials an unreachable etcd fails the connect. etcd with its
    /// authentication off is logged in to without a token; the store still manages
    /// Patroni's users ([`Store::manages_patroni_users`]).
    ///
    /// Errors: a wrong user or password, or (with credentials) etcd unreachable.
    pub async fn connect_as(
        endpoints: &[String],
        prefix: &str,
        secrets: SecretBox,
        is_secret_key: fn(&str) -> bool,
        credentials: Option<&EtcdCredentials>,
    ) -> Result<Self> {
        let mut client = Client::connect_with_balanced_channel(
            endpoints,
            Some(etcd_auth::connect_options()),
            metered::MeteredChannel,
        )
        .await?;
        let auth = etcd_auth::log_in(&mut client, credentials).await?;
        Ok(Store {
            client,
            keys: Keys::new(prefix),
            secrets,
            is_secret_key,
            fence: None,
            appends: std::sync::Arc::new(std::array::from_fn(|_| tokio::sync::Mutex::new(()))),
            auth: std::sync::Arc::new(auth),
        })
    }

    /// A handle whose writes all carry `fence`: the reconciler's handle.
    pub fn fenced(&self, fence: Fence) -> Store {
        Store {
            fence: Some(fence),
            ..self.clone()
        }
    }

    /// `compares` plus this handle's fence, if any.
    fn guarded(&self, mut compares: Vec<Compare>) -> Vec<Compare> {
        if let Some(f) = &self.fence {
            compares.push(Compare::create_revision(
                f.key.clone(),
                CompareOp::Equal,
                f.create_revision,
            ));
        }
        compares
    }

    /// After a failed guarded transaction: was it the fence?
    async fn fence_holds(&self) -> Result<bool> {
        let Some(f) = &self.fence else {
            return Ok(true);
        };
        let resp = self.client.kv_client().get(f.key.as_str(), None).await?;
        Ok(resp
            .kvs()
            .first()
            .is_some_and(|kv| kv.create_revision() == f.create_revision))
    }

    /// Runs `ops` if `compares` and the fence hold. Ok(false): a compare failed, the fence held.
    async fn guarded_txn(&self, compares: Vec<Compare>, ops: Vec<TxnOp>) -> Result<bool> {
        let txn = Txn::new().when(self.guarded(compares)).and_then(ops);
        if self.client.kv_client().txn(txn).await?.succeeded() {
            return Ok(true);
        }
        if self.fence_holds().await? {
            Ok(false)
        } else {
            Err(StoreError::Fenced)
        }
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// The raw etcd client, for leases, watches and elections built on top of the store.
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// The spec as stored: secret service config values and backup repository keys sealed
    /// in place (typed fields hold a sealed value only in the JSON, hence a `Value`).
    fn sealed_spec(&self, spec: &DatabaseSpec) -> Value {
        let mut sealed = spec.clone();
        for service in &mut sealed.services {
            self.secrets.seal(&mut service.config, &self.is_secret_key);
        }
        let mut doc = serde_json::to_value(&sealed).expect("a spec serializes to JSON");
        let sealing = spec::backup::for_each_repository_object(&mut doc, &mut |repository| {
            self.secrets
                .seal(repository, &spec::backup::is_repository_secret_key);
            Ok::<(), std::convert::Infallible>(())
        });
        let Ok(()) = sealing;
        doc
    }

    /// A stored spec (`key`'s value) with its sealed values opened.
    fn opened_spec(&self, key: &[u8], mut doc: Value) -> Result<DatabaseSpec> {
        spec::backup::for_each_repository_object(&mut doc, &mut |repository| {
            self.secrets.open(repository)
        })?;
        let mut spec: DatabaseSpec =
            serde_json::from_value(doc).map_err(|source| StoreError::Decode {
                key: String::from_utf8_lossy(key).into_owned(),
                source,
            })?;
        for service in &mut spec.services {
            self.secrets.open(&mut service.config)?;
        }
        Ok(spec)
    }

    async fn get_json<T: DeserializeOwned>(&self, key: &str) -> Result<Option<Versioned<T>>> {
        let resp = self.client.kv_client().get(key, None).await?;
        match resp.kvs().first() {
            None => Ok(None),
            Some(kv) => Ok(Some(Versioned {
                value: decode(kv.key(), kv.value())?,
                mod_revision: kv.mod_revision(),
            })),
        }
    }

    async fn range_json<T: DeserializeOwned>(
        &self,
        start: &str,
        options: GetOptions,
    ) -> Result<Vec<T>> {
        let resp = self.client.kv_client().get(start, Some(options)).await?;
        resp.kvs()
            .iter()
            .map(|kv| decode(kv.key(), kv.value()))
            .collect()
    }

    // ---- databases ----

    /// Writes a new database's spec, record and first task in one transaction, removing the
    /// tasks and logs of an earlier database of the same id (a deleted database's history
    /// stays readable until its id is taken again). Fails with [`StoreError::AlreadyExists`]
    /// when the id is taken.
    pub async fn create_database(
        &self,
        record: &DatabaseRecord,
        spec: &DatabaseSpec,
        task: &Task,
    ) -> Result<()> {
        let with_prefix = || Some(etcd_client::DeleteOptions::new().with_prefix());
        let k = &self.keys;
        // etcd refuses a put inside a range the same transaction deletes: the old tasks go
        // as the ranges before and after the new task's key.
        let tasks = k.tasks(&record.id);
        let new_task = k.task(&task.database_id, &task.task_id);
        let range = |from: Vec<u8>, to: Vec<u8>| {
            TxnOp::delete(from, Some(etcd_client::DeleteOptions::new().with_range(to)))
        };
        let mut ops = vec![
            range(tasks.clone().into_bytes(), new_task.clone().into_bytes()),
            range(keys::key_after(&new_task), keys::prefix_end(&tasks)),
            TxnOp::delete(k.database_task_logs(&record.id), with_prefix()),
        ];
        ops.extend(self.generation_ops(record, spec, task));
        // An absent key's mod revision is 0.
        let compare = Compare::mod_revision(k.database_spec(&record.id), CompareOp::Equal, 0);
        match self.guarded_txn(vec![compare], ops).await? {
            true => Ok(()),
            false => Err(StoreError::AlreadyExists),
        }
    }

    fn generation_ops(
        &self,
        record: &DatabaseRecord,
        spec: &DatabaseSpec,
        task: &Task,
    ) -> Vec<TxnOp> {
        let k = &self.keys;
        vec![
            TxnOp::put(
                k.database_spec(&record.id),
                encode(&self.sealed_spec(spec)),
                None,
            ),
            TxnOp::put(k.database_record(&record.id), encode(record), None),
            TxnOp::put(k.task(&task.database_id, &task.task_id), encode(task), None),
        ]
    }

    /// Adds a task no request made (the reconciler's `reconcile` tasks), unless its id is taken.
    pub async fn create_task(&self, task: &Task) -> Result<()> {
        let key = self.keys.task(&task.database_id, &task.task_id);
        let compare = Compare::create_revision(key.clone(), CompareOp::Equal, 0);
        let put = TxnOp::put(key, encode(task), None);
        match self.guarded_txn(vec![compare], vec![put]).await? {
            true => Ok(()),
            false => Err(StoreError::AlreadyExists),
        }
    }

    /// Spec, record and task of one accepted request, in one transaction, if the spec key is
    /// still at `expected_spec_revision`.
    async fn write_generation(
        &self,
        expected_spec_revision: i64,
        record: &DatabaseRecord,
        spec: &DatabaseSpec,
        task: &Task,
    ) -> Result<bool> {
        let spec_key = self.keys.database_spec(&record.id);
        let compare = Compare::mod_revision(spec_key, CompareOp::Equal, expected_spec_revision);
        let ops = self.generation_ops(record, spec, task);
        self.guarded_txn(vec![compare], ops).await
    }

    pub async fn get_database(&self, id: &str) -> Result<Option<StoredDatabase>> {
        let prefix = format!("{}{id}/", self.keys.databases());
        let resp = self
            .client
            .kv_client()
            .get(prefix.as_str(), Some(GetOptions::new().with_prefix()))
            .await?;
        self.assemble_databases(resp.kvs()).map(|mut v| v.pop())
    }

    pub async fn list_databases(&self) -> Result<Vec<StoredDatabase>> {
        let prefix = self.keys.databases();
        let resp = self
            .client
            .kv_client()
            .get(prefix.as_str(), Some(GetOptions::new().with_prefix()))
            .await?;
        self.assemble_databases(resp.kvs())
    }

    /// Pairs each database's `spec` and `record` keys (adjacent in key order).
    fn assemble_databases(&self, kvs: &[etcd_client::KeyValue]) -> Result<Vec<StoredDatabase>> {
        let mut records: std::collections::BTreeMap<String, PartialDatabase> = Default::default();
        let base = self.keys.databases();
        for kv in kvs {
            let key = String::from_utf8_lossy(kv.key());
            let Some(rest) = key.strip_prefix(&base) else {
                continue;
            };
            let Some((id, leaf)) = rest.split_once('/') else {
                continue;
            };
            let entry = records.entry(id.to_string()).or_default();
            match leaf {
                "record" => entry.0 = Some(decode(kv.key(), kv.value())?),
                "spec" => {
                    let spec = decode(kv.key(), kv.value())?;
                    entry.1 = Some((spec, kv.mod_revision(), kv.key().to_vec()));
                }
                _ => {}
            }
        }
        let mut out = Vec::with_capacity(records.len());
        for (_, (record, spec)) in records {
            if let (Some(record), Some((spec, spec_revision, key))) = (record, spec) {
                out.push(StoredDatabase {
                    record,
                    spec: self.opened_spec(&key, spec)?,
                    spec_revision,
                });
            }
        }
        Ok(out)
    }

    /// Replaces a database's spec and record and adds its task, only if the spec is still at
    /// `expected_spec_revision`. A concurrent writer that got there first makes this a
    /// [`StoreError::Conflict`].
    pub async fn update_database(
        &self,
        expected_spec_revision: i64,
        record: &DatabaseRecord,
        spec: &DatabaseSpec,
        task: &Task,
    ) -> Result<()> {
        match self
            .write_generation(expected_spec_revision, record, spec, task)
            .await?
        {
            true => Ok(()),
            false => Err(StoreError::Conflict),
        }
    }

    /// Writes a record alone (state changes), only if the spec has not moved since it was read.
    pub async fn put_database_record(
        &self,
        expected_spec_revision: i64,
        record: &DatabaseRecord,
    ) -> Result<()> {
        let spec_key = self.keys.database_spec(&record.id);
        let compare = Compare::mod_revision(spec_key, CompareOp::Equal, expected_spec_revision);
        let put = TxnOp::put(self.keys.database_record(&record.id), encode(record), None);
        if self.guarded_txn(vec![compare], vec![put]).await? {
            Ok(())
        } else {
            Err(StoreError::Conflict)
        }
    }

    /// Removes a database's spec, record, instance records and credentials, if the spec is
    /// still at `expected_spec_revision`; its tasks and logs stay readable.
    pub async fn remove_database(&self, id: &str, expected_spec_revision: i64) -> Result<()> {
        let with_prefix = || Some(etcd_client::DeleteOptions::new().with_prefix());
        let compare = Compare::mod_revision(
            self.keys.database_spec(id),
            CompareOp::Equal,
            expected_spec_revision,
        );
        let ops = vec![
            TxnOp::delete(format!("{}{id}/", self.keys.databases()), with_prefix()),
            TxnOp::delete(self.keys.instances(id), with_prefix()),
            TxnOp::delete(self.keys.credentials(id), None),
        ];
        if self.guarded_txn(vec![compare], ops).await? {
            Ok(())
        } else {
            Err(StoreError::Conflict)
        }
    }

    /// Every key under `prefix`, without values (what retention keeps is bounded, and a key
    /// is about 100 bytes).
    pub(crate) async fn keys_under(&self, prefix: &str) -> Result<Vec<String>> {
        let options = GetOptions::new()
            .with_range(keys::prefix_end(prefix))
            .with_keys_only();
        let resp = self.client.kv_client().get(prefix, Some(options)).await?;
        Ok(resp
            .kvs()
            .iter()
            .map(|kv| String::from_utf8_lossy(kv.key()).into_owned())
            .collect())
    }

    /// Every key and value under the prefix, for audits such as "no secret is stored in plain text".
    pub async fn dump(&self) -> Result<Vec<(String, Vec<u8>)>> {
        let root = self.keys.root();
        let resp = self
            .client
            .kv_client()
            .get(root.as_str(), Some(GetOptions::new().with_prefix()))
            .await?;
        Ok(resp
            .kvs()
            .iter()
            .map(|kv| {
                (
                    String::from_utf8_lossy(kv.key()).into_owned(),
                    kv.value().to_vec(),
                )
            })
            .collect())
    }
}
