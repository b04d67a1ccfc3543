//! The state the reconciler reads and writes, as a trait: etcd ([`crate::Store`]) in
//! production, [`crate::memory::MemoryStore`] in unit tests of the reconciler's logic. One
//! conformance suite (`tests/conformance.rs`) runs against both, so the in-memory store
//! cannot drift from what etcd does.
//!
//! Semantics every implementation keeps:
//! - a write that names an expected spec revision fails with [`StoreError::Conflict`] when the
//!   spec moved, and changes nothing;
//! - a handle that lost its fence (a deposed leader) fails every write with
//!   [`StoreError::Fenced`] and changes nothing;
//! - task and log-entry ids are time-ordered (UUIDv7): listings page by them;
//! - instance records and credentials are opaque JSON documents to the store.

use std::collections::BTreeMap;

use async_trait::async_trait;
use serde_json::{Map, Value};
use spec::{DatabaseSpec, Host, Task, TaskLogEntry};

use crate::{
    DatabaseRecord, HostDialFailure, HostLiveness, ListOrder, Result, StoredDatabase, Versioned,
};

/// A read-modify-write of one task; returns false to leave the task as it is. It may be
/// called more than once (after a concurrent change), so it must not have other effects.
pub type TaskChange<'a> = &'a mut (dyn FnMut(&mut Task) -> bool + Send);

/// A read-modify-write of one instance document: given what is stored (None: nothing),
/// returns what to store, or None to leave it as it is. It may be called more than once
/// (after a concurrent change), so it must not have other effects.
pub type DocumentChange<'a> = &'a mut (dyn FnMut(Option<&Value>) -> Option<Value> + Send);

#[async_trait]
pub trait StateStore: Send + Sync {
    // ---- databases ----

    /// Writes a new database's spec, record and first task at once. Tasks and logs left by
    /// an earlier database of the same id are removed in the same write, so the new one
    /// starts with a history of its own. [`crate::StoreError::AlreadyExists`] when the id is taken.
    async fn create_database(
        &self,
        record: &DatabaseRecord,
        spec: &DatabaseSpec,
        task: &Task,
    ) -> Result<()>;

    /// Replaces spec and record and adds `task`, if the spec is still at
    /// `expected_spec_revision`; else [`crate::StoreError::Conflict`].
    async fn update_database(
        &self,
        expected_spec_revision: i64,
        record: &DatabaseRecord,
        spec: &DatabaseSpec,
        task: &Task,
    ) -> Result<()>;

    async fn get_database(&self, id: &str) -> Result<Option<StoredDatabase>>;

    async fn list_databases(&self) -> Result<Vec<StoredDatabase>>;

    /// Writes the record alone if the spec is still at `expected_spec_revision`; else
    /// [`crate::StoreError::Conflict`].
    async fn put_database_record(
        &self,
        expected_spec_revision: i64,
        record: &DatabaseRecord,
    ) -> Result<()>;

    /// Removes spec, record, instance records and credentials if the spec is still at
    /// `expected_spec_revision` (else [`crate::StoreError::Conflict`]); tasks and logs stay.
    async fn remove_database(&self, id: &str, expected_spec_revision: i64) -> Result<()>;

    // ---- tasks and their logs ----

    async fn get_task(&self, db: &str, task_id: &str) -> Result<Option<Versioned<Task>>>;

    /// Adds a task that no request created (the reconciler's own, type `reconcile`).
    /// [`crate::StoreError::AlreadyExists`] when its id is taken.
    async fn create_task(&self, task: &Task) -> Result<()>;

    /// A page of a database's tasks in `order`, after `after_task_id` (exclusive).
    async fn list_tasks(
        &self,
        db: &str,
        after_task_id: Option<&str>,
        limit: i64,
        order: ListOrder,
    ) -> Result<Vec<Task>>;

    /// Applies `change` to the stored task, retrying on a concurrent change; sets
    /// `updated_at` when it changed anything. [`crate::StoreError::NotFound`] without a task.
    async fn update_task(&self, db: &str, task_id: &str, change: TaskChange<'_>) -> Result<Task>;

    /// Appends a line; entries read back in the order they were appended.
    async fn append_log(
        &self,
        db: &str,
        task_id: &str,
        message: String,
        fields: Map<String, Value>,
    ) -> Result<TaskLogEntry>;

    /// Appends lines in one write, in order (a batch of an agent's progress lines).
    async fn append_logs(
        &self,
        db: &str,
        task_id: &str,
        lines: Vec<(String, Map<String, Value>)>,
    ) -> Result<Vec<TaskLogEntry>>;

    /// Deletes these tasks of `db` with their logs; absent ones are fine (ADR 014).
    async fn delete_tasks(&self, db: &str, task_ids: &[String]) -> Result<()>;

    /// Deletes every task and log of `db` if no database of that id exists, in one write
    /// that checks it; returns whether it deleted (false: the id is taken again).
    async fn forget_history(&self, db: &str) -> Result<bool>;

    /// Ids of the databases that have tasks, existing or deleted.
    async fn databases_with_history(&self) -> Result<Vec<String>>;

    /// Up to `limit` entries after `after_entry_id` (exclusive), oldest first.
    async fn read_log(
        &self,
        db: &str,
        task_id: &str,
        after_entry_id: Option<&str>,
        limit: i64,
    ) -> Result<Vec<TaskLogEntry>>;

    // ---- instance records and credentials, as JSON documents ----

    async fn list_instance_documents(&self, db: &str) -> Result<Vec<Value>>;

    async fn put_instance_document(&self, db: &str, instance_id: &str, doc: &Value) -> Result<()>;

    /// Changes one instance document in a write that fails if another writer changed it
    /// since it was read, retried with a fresh read until it holds: two writers that own
    /// different fields of one document never undo each other. Returns whether it wrote.
    async fn update_instance_document(
        &self,
        db: &str,
        instance_id: &str,
        change: DocumentChange<'_>,
    ) -> Result<bool>;

    /// Absent is fine.
    async fn delete_instance(&self, db: &str, instance_id: &str) -> Result<()>;

    /// The credentials document with every secret opened.
    async fn get_credentials_document(&self, db: &str) -> Result<Option<Value>>;

    async fn put_credentials_document(&self, db: &str, doc: &Value) -> Result<()>;

    /// Replaces the list of a node's backups (a document the control plane types).
    async fn put_backups_document(&self, db: &str, node: &str, doc: &Value) -> Result<()>;

    // ---- hosts ----

    async fn list_hosts(&self) -> Result<Vec<Host>>;

    /// Hosts whose lease is alive.
    async fn host_liveness(&self) -> Result<BTreeMap<String, HostLiveness>>;

    async fn put_host_dial_failure(&self, host_id: &str, failure: &HostDialFailure) -> Result<()>;

    /// Absent is fine.
    async fn clear_host_dial_failure(&self, host_id: &str) -> Result<()>;

    // ---- Patroni's keys (ADR 016): written by Patroni, read here ----

    /// Every key of Patroni's namespace of `db`, as (key below the namespace, value), in
    /// key order: `n1/leader`, `n1/members/{instance}`, ...
    async fn patroni_keys(&self, db: &str) -> Result<Vec<(String, Vec<u8>)>>;

    /// Deletes Patroni's keys of one node of `db`, or of all its nodes when `node` is None.
    async fn forget_patroni(&self, db: &str, node: Option<&str>) -> Result<()>;

    // ---- the etcd users Patroni logs in as (ADR 017) ----

    /// Makes sure node `node` of `db` has its etcd user, with `password`, whose role reaches
    /// that node's Patroni keys and nothing else. Idempotent. Not fenced: etcd's user
    /// management takes no compare.
    async fn ensure_patroni_user(
        &self,
        db: &str,
        node: &str,
        password: &secrecy::SecretString,
    ) -> Result<()>;

    /// Deletes the etcd users and roles of one node of `db`, or of all its nodes when `node`
    /// is None; absent ones are fine. Nothing for a store that manages no users.
    async fn drop_patroni_users(&self, db: &str, node: Option<&str>) -> Result<()>;
}

#[async_trait]
impl StateStore for crate::Store {
    async fn create_database(
        &self,
        record: &DatabaseRecord,
        spec: &DatabaseSpec,
        task: &Task,
    ) -> Result<()> {
        crate::Store::create_database(self, record, spec, task).await
    }

    async fn update_database(
        &self,
        expected_spec_revision: i64,
        record: &DatabaseRecord,
        spec: &DatabaseSpec,
        task: &Task,
    ) -> Result<()> {
        crate::Store::update_database(self, expected_spec_revision, record, spec, task).await
    }

    async fn get_database(&self, id: &str) -> Result<Option<StoredDatabase>> {
        crate::Store::get_database(self, id).await
    }

    async fn list_databases(&self) -> Result<Vec<StoredDatabase>> {
        crate::Store::list_databases(self).await
    }

    async fn put_database_record(
        &self,
        expected_spec_revision: i64,
        record: &DatabaseRecord,
    ) -> Result<()> {
        crate::Store::put_database_record(self, expected_spec_revision, record).await
    }

    async fn remove_database(&self, id: &str, expected_spec_revision: i64) -> Result<()> {
        crate::Store::remove_database(self, id, expected_spec_revision).await
    }

    async fn get_task(&self, db: &str, task_id: &str) -> Result<Option<Versioned<Task>>> {
        crate::Store::get_task(self, db, task_id).await
    }

    async fn create_task(&self, task: &Task) -> Result<()> {
        crate::Store::create_task(self, task).await
    }

    async fn list_tasks(
        &self,
        db: &str,
        after_task_id: Option<&str>,
        limit: i64,
        order: ListOrder,
    ) -> Result<Vec<Task>> {
        crate::Store::list_tasks(self, db, after_task_id, limit, order).await
    }

    async fn update_task(&self, db: &str, task_id: &str, change: TaskChange<'_>) -> Result<Task> {
        crate::Store::update_task(self, db, task_id, change).await
    }

    async fn append_log(
        &self,
        db: &str,
        task_id: &str,
        message: String,
        fields: Map<String, Value>,
    ) -> Result<TaskLogEntry> {
        crate::Store::append_log(self, db, task_id, message, fields).await
    }

    async fn append_logs(
        &self,
        db: &str,
        task_id: &str,
        lines: Vec<(String, Map<String, Value>)>,
    ) -> Result<Vec<TaskLogEntry>> {
        crate::Store::append_logs(self, db, task_id, lines).await
    }

    async fn delete_tasks(&self, db: &str, task_ids: &[String]) -> Result<()> {
        crate::Store::delete_tasks(self, db, task_ids).await
    }

    async fn forget_history(&self, db: &str) -> Result<bool> {
        crate::Store::forget_history(self, db).await
    }

    async fn databases_with_history(&self) -> Result<Vec<String>> {
        crate::Store::databases_with_history(self).await
    }

    async fn read_log(
        &self,
        db: &str,
        task_id: &str,
        after_entry_id: Option<&str>,
        limit: i64,
    ) -> Result<Vec<TaskLogEntry>> {
        crate::Store::read_log(self, db, task_id, after_entry_id, limit).await
    }

    async fn list_instance_documents(&self, db: &str) -> Result<Vec<Value>> {
        crate::Store::list_instances(self, db).await
    }

    async fn put_instance_document(&self, db: &str, instance_id: &str, doc: &Value) -> Result<()> {
        crate::Store::put_instance(self, db, instance_id, doc).await
    }

    async fn update_instance_document(
        &self,
        db: &str,
        instance_id: &str,
        change: DocumentChange<'_>,
    ) -> Result<bool> {
        crate::Store::update_instance(self, db, instance_id, change).await
    }

    async fn delete_instance(&self, db: &str, instance_id: &str) -> Result<()> {
        crate::Store::delete_instance(self, db, instance_id).await
    }

    async fn get_credentials_document(&self, db: &str) -> Result<Option<Value>> {
        crate::Store::get_credentials(self, db).await
    }

    async fn put_backups_document(&self, db: &str, node: &str, doc: &Value) -> Result<()> {
        crate::Store::put_backups(self, db, node, doc).await
    }

    async fn put_credentials_document(&self, db: &str, doc: &Value) -> Result<()> {
        crate::Store::put_credentials(self, db, doc).await
    }

    async fn list_hosts(&self) -> Result<Vec<Host>> {
        crate::Store::list_hosts(self).await
    }

    async fn host_liveness(&self) -> Result<BTreeMap<String, HostLiveness>> {
        crate::Store::host_liveness(self).await
    }

    async fn put_host_dial_failure(&self, host_id: &str, failure: &HostDialFailure) -> Result<()> {
        crate::Store::put_host_dial_failure(self, host_id, failure).await
    }

    async fn clear_host_dial_failure(&self, host_id: &str) -> Result<()> {
        crate::Store::clear_host_dial_failure(self, host_id).await
    }

    async fn patroni_keys(&self, db: &str) -> Result<Vec<(String, Vec<u8>)>> {
        crate::Store::patroni_keys(self, db).await
    }

    async fn forget_patroni(&self, db: &str, node: Option<&str>) -> Result<()> {
        crate::Store::forget_patroni(self, db, node).await
    }

    async fn ensure_patroni_user(
        &self,
        db: &str,
        node: &str,
        password: &secrecy::SecretString,
    ) -> Result<()> {
        crate::Store::ensure_patroni_user(self, db, node, password).await
    }

    async fn drop_patroni_users(&self, db: &str, node: Option<&str>) -> Result<()> {
        crate::Store::drop_patroni_users(self, db, node).await
    }
}
