//! [`StateStore`] in memory, for fast unit tests of logic built on the store (the
//! reconciler's). Keeps the same semantics as etcd (revisions, conflicts, fencing, ordered
//! ids); `tests/conformance.rs` checks both against one suite. Secrets are kept as given:
//! sealing is etcd's concern.

use std::collections::BTreeMap;
use std::sync::Mutex;

use async_trait::async_trait;
use chrono::Utc;
use serde_json::{Map, Value};
use spec::{DatabaseSpec, Host, Task, TaskLogEntry};

use crate::state::{DocumentChange, StateStore, TaskChange};
use crate::{
    DatabaseRecord, HostDialFailure, HostLiveness, ListOrder, Result, StoreError, StoredDatabase,
    Versioned,
};

#[derive(Default)]
struct Data {
    /// etcd's store revision: bumped by every write.
    revision: i64,
    /// id -> (record, spec, the spec's mod revision).
    databases: BTreeMap<String, (DatabaseRecord, DatabaseSpec, i64)>,
    /// (database, task id) -> (task, mod revision).
    tasks: BTreeMap<(String, String), (Task, i64)>,
    /// (database, task id, entry id) -> entry.
    logs: BTreeMap<(String, String, String), TaskLogEntry>,
    instances: BTreeMap<(String, String), Value>,
    credentials: BTreeMap<String, Value>,
    backups: BTreeMap<(String, String), Value>,
    hosts: BTreeMap<String, Host>,
    liveness: BTreeMap<String, HostLiveness>,
    dial: BTreeMap<String, HostDialFailure>,
    /// (database, key below its Patroni namespace) -> value, as Patroni would write it.
    patroni: BTreeMap<(String, String), Vec<u8>>,
    /// (database, node) -> the password of the node's etcd user (ADR 017).
    patroni_users: BTreeMap<(String, String), String>,
    /// A deposed leader's handle: every write is refused.
    fenced: bool,
    /// How many writes were made, for tests that count them.
    writes: u64,
}

impl Data {
    fn write(&mut self) -> Result<i64> {
        if self.fenced {
            return Err(StoreError::Fenced);
        }
        self.revision += 1;
        self.writes += 1;
        Ok(self.revision)
    }
}

/// The in-memory store. Clones share nothing: wrap it in an `Arc` to share it.
#[derive(Default)]
pub struct MemoryStore {
    data: Mutex<Data>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Data> {
        self.data.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// From now on every write fails with [`StoreError::Fenced`], as for a leader whose
    /// lease was taken over.
    pub fn depose(&self) {
        self.lock().fenced = true;
    }

    /// The etcd users Patroni logs in as: (database, node, password), in order.
    pub fn patroni_users(&self) -> Vec<(String, String, String)> {
        self.lock()
            .patroni_users
            .iter()
            .map(|((db, node), password)| (db.clone(), node.clone(), password.clone()))
            .collect()
    }

    /// Registers a host (what the registry does when an agent registers).
    pub fn put_host(&self, host: Host) {
        self.lock().hosts.insert(host.id.clone(), host);
    }

    /// Sets (Some) or expires (None) a host's lease.
    pub fn set_liveness(&self, host_id: &str, liveness: Option<HostLiveness>) {
        let mut d = self.lock();
        match liveness {
            Some(l) => d.liveness.insert(host_id.to_string(), l),
            None => d.liveness.remove(host_id),
        };
    }

    /// How many writes succeeded so far.
    pub fn writes(&self) -> u64 {
        self.lock().writes
    }

    /// Writes (Some) or deletes (None) one of Patroni's keys of `db` (`key` below its
    /// namespace, `n1/leader`), as Patroni does: not a write of the control plane, so never
    /// fenced.
    pub fn set_patroni_key(&self, db: &str, key: &str, value: Option<&[u8]>) {
        let mut d = self.lock();
        let k = (db.to_string(), key.to_string());
        match value {
            Some(v) => d.patroni.insert(k, v.to_vec()),
            None => d.patroni.remove(&k),
        };
    }
}

#[async_trait]
impl StateStore for MemoryStore {
    async fn create_database(
        &self,
        record: &DatabaseRecord,
        spec: &DatabaseSpec,
        task: &Task,
    ) -> Result<()> {
        let mut d = self.lock();
        if d.fenced {
            return Err(StoreError::Fenced);
        }
        if d.databases.contains_key(&record.id) {
            return Err(StoreError::AlreadyExists);
        }
        let rev = d.write()?;
        let id = record.id.clone();
        d.tasks.retain(|(db, _), _| db != &id);
        d.logs.retain(|(db, _, _), _| db != &id);
        d.databases
            .insert(id.clone(), (record.clone(), spec.clone(), rev));
        d.tasks
            .insert((id, task.task_id.clone()), (task.clone(), rev));
        Ok(())
    }

    async fn update_database(
        &self,
        expected_spec_revision: i64,
        record: &DatabaseRecord,
        spec: &DatabaseSpec,
        task: &Task,
    ) -> Result<()> {
        let mut d = self.lock();
        if d.fenced {
            return Err(StoreError::Fenced);
        }
        let current = d.databases.get(&record.id).map_or(0, |e| e.2);
        if current != expected_spec_revision {
            return Err(StoreError::Conflict);
        }
        let rev = d.write()?;
        d.databases
            .insert(record.id.clone(), (record.clone(), spec.clone(), rev));
        d.tasks.insert(
            (task.database_id.clone(), task.task_id.clone()),
            (task.clone(), rev),
        );
        Ok(())
    }

    async fn get_database(&self, id: &str) -> Result<Option<StoredDatabase>> {
        Ok(self
            .lock()
            .databases
            .get(id)
            .map(|(r, s, rev)| StoredDatabase {
                record: r.clone(),
                spec: s.clone(),
                spec_revision: *rev,
            }))
    }

    async fn list_databases(&self) -> Result<Vec<StoredDatabase>> {
        Ok(self
            .lock()
            .databases
            .values()
            .map(|(r, s, rev)| StoredDatabase {
                record: r.clone(),
                spec: s.clone(),
                spec_revision: *rev,
            })
            .collect())
    }

    async fn put_database_record(
        &self,
        expected_spec_revision: i64,
        record: &DatabaseRecord,
    ) -> Result<()> {
        let mut d = self.lock();
        if d.fenced {
            return Err(StoreError::Fenced);
        }
        match d.databases.get(&record.id) {
            Some(e) if e.2 == expected_spec_revision => {}
            _ => return Err(StoreError::Conflict),
        }
        d.write()?;
        if let Some(e) = d.databases.get_mut(&record.id) {
            e.0 = record.clone();
        }
        Ok(())
    }

    async fn remove_database(&self, id: &str, expected_spec_revision: i64) -> Result<()> {
        let mut d = self.lock();
        if d.fenced {
            return Err(StoreError::Fenced);
        }
        // etcd compares an absent key's mod revision as 0.
        if d.databases.get(id).map_or(0, |e| e.2) != expected_spec_revision {
            return Err(StoreError::Conflict);
        }
        d.write()?;
        d.databases.remove(id);
        d.instances.retain(|(db, _), _| db != id);
        d.credentials.remove(id);
        Ok(())
    }

    async fn get_task(&self, db: &str, task_id: &str) -> Result<Option<Versioned<Task>>> {
        Ok(self
            .lock()
            .tasks
            .get(&(db.to_string(), task_id.to_string()))
            .map(|(t, rev)| Versioned {
                value: t.clone(),
                mod_revision: *rev,
            }))
    }

    async fn create_task(&self, task: &Task) -> Result<()> {
        let mut d = self.lock();
        if d.fenced {
            return Err(StoreError::Fenced);
        }
        let key = (task.database_id.clone(), task.task_id.clone());
        if d.tasks.contains_key(&key) {
            return Err(StoreError::AlreadyExists);
        }
        let rev = d.write()?;
        d.tasks.insert(key, (task.clone(), rev));
        Ok(())
    }

    async fn list_tasks(
        &self,
        db: &str,
        after_task_id: Option<&str>,
        limit: i64,
        order: ListOrder,
    ) -> Result<Vec<Task>> {
        let d = self.lock();
        let of_db = d
            .tasks
            .iter()
            .filter(|((d, _), _)| d == db)
            .map(|((_, id), (t, _))| (id, t));
        let picked: Vec<Task> = match order {
            ListOrder::NewestFirst => of_db
                .rev()
                .filter(|(id, _)| after_task_id.is_none_or(|a| id.as_str() < a))
                .map(|(_, t)| t.clone())
                .collect(),
            ListOrder::OldestFirst => of_db
                .filter(|(id, _)| after_task_id.is_none_or(|a| id.as_str() > a))
                .map(|(_, t)| t.clone())
                .collect(),
        };
        Ok(picked
            .into_iter()
            .take(usize::try_from(limit).unwrap_or(0))
            .collect())
    }

    async fn update_task(&self, db: &str, task_id: &str, change: TaskChange<'_>) -> Result<Task> {
        let mut d = self.lock();
        let key = (db.to_string(), task_id.to_string());
        let Some((task, _)) = d.tasks.get(&key) else {
            return Err(StoreError::NotFound);
        };
        let mut task = task.clone();
        if !change(&mut task) {
            return Ok(task);
        }
        task.updated_at = Utc::now();
        let rev = d.write()?;
        d.tasks.insert(key, (task.clone(), rev));
        Ok(task)
    }

    async fn append_log(
        &self,
        db: &str,
        task_id: &str,
        message: String,
        fields: Map<String, Value>,
    ) -> Result<TaskLogEntry> {
        let mut d = self.lock();
        d.write()?;
        let entry = TaskLogEntry::new(message, fields);
        d.logs.insert(
            (db.to_string(), task_id.to_string(), entry.id.clone()),
            entry.clone(),
        );
        Ok(entry)
    }

    async fn append_logs(
        &self,
        db: &str,
        task_id: &str,
        lines: Vec<(String, Map<String, Value>)>,
    ) -> Result<Vec<TaskLogEntry>> {
        let mut d = self.lock();
        d.write()?;
        let mut out = Vec::with_capacity(lines.len());
        for (message, fields) in lines {
            let entry = TaskLogEntry::new(message, fields);
            let key = (db.to_string(), task_id.to_string(), entry.id.clone());
            d.logs.insert(key, entry.clone());
            out.push(entry);
        }
        Ok(out)
    }

    async fn delete_tasks(&self, db: &str, task_ids: &[String]) -> Result<()> {
        let mut d = self.lock();
        d.write()?;
        let gone: std::collections::BTreeSet<&String> = task_ids.iter().collect();
        d.tasks.retain(|(d, t), _| d != db || !gone.contains(t));
        d.logs.retain(|(d, t, _), _| d != db || !gone.contains(t));
        Ok(())
    }

    async fn forget_history(&self, db: &str) -> Result<bool> {
        let mut d = self.lock();
        if d.fenced {
            return Err(StoreError::Fenced);
        }
        if d.databases.contains_key(db) {
            return Ok(false);
        }
        d.write()?;
        d.tasks.retain(|(d, _), _| d != db);
        d.logs.retain(|(d, _, _), _| d != db);
        Ok(true)
    }

    async fn databases_with_history(&self) -> Result<Vec<String>> {
        let d = self.lock();
        let ids: std::collections::BTreeSet<String> =
            d.tasks.keys().map(|(db, _)| db.clone()).collect();
        Ok(ids.into_iter().collect())
    }

    async fn read_log(
        &self,
        db: &str,
        task_id: &str,
        after_entry_id: Option<&str>,
        limit: i64,
    ) -> Result<Vec<TaskLogEntry>> {
        Ok(self
            .lock()
            .logs
            .iter()
            .filter(|((d, t, id), _)| {
                d == db && t == task_id && after_entry_id.is_none_or(|a| id.as_str() > a)
            })
            .map(|(_, e)| e.clone())
            .take(usize::try_from(limit).unwrap_or(0))
            .collect())
    }

    async fn list_instance_documents(&self, db: &str) -> Result<Vec<Value>> {
        Ok(self
            .lock()
            .instances
            .iter()
            .filter(|((d, _), _)| d == db)
            .map(|(_, v)| v.clone())
            .collect())
    }

    async fn put_instance_document(&self, db: &str, instance_id: &str, doc: &Value) -> Result<()> {
        let mut d = self.lock();
        d.write()?;
        d.instances
            .insert((db.to_string(), instance_id.to_string()), doc.clone());
        Ok(())
    }

    async fn update_instance_document(
        &self,
        db: &str,
        instance_id: &str,
        change: DocumentChange<'_>,
    ) -> Result<bool> {
        let mut d = self.lock();
        let key = (db.to_string(), instance_id.to_string());
        let Some(new) = change(d.instances.get(&key)) else {
            return Ok(false);
        };
        d.write()?;
        d.instances.insert(key, new);
        Ok(true)
    }

    async fn delete_instance(&self, db: &str, instance_id: &str) -> Result<()> {
        let mut d = self.lock();
        d.write()?;
        d.instances
            .remove(&(db.to_string(), instance_id.to_string()));
        Ok(())
    }

    async fn get_credentials_document(&self, db: &str) -> Result<Option<Value>> {
        Ok(self.lock().credentials.get(db).cloned())
    }

    async fn put_backups_document(&self, db: &str, node: &str, doc: &Value) -> Result<()> {
        let mut d = self.lock();
        d.write()?;
        d.backups
            .insert((db.to_string(), node.to_string()), doc.clone());
        Ok(())
    }

    async fn put_credentials_document(&self, db: &str, doc: &Value) -> Result<()> {
        let mut d = self.lock();
        d.write()?;
        d.credentials.insert(db.to_string(), doc.clone());
        Ok(())
    }

    async fn list_hosts(&self) -> Result<Vec<Host>> {
        Ok(self.lock().hosts.values().cloned().collect())
    }

    async fn host_liveness(&self) -> Result<BTreeMap<String, HostLiveness>> {
        Ok(self.lock().liveness.clone())
    }

    async fn put_host_dial_failure(&self, host_id: &str, failure: &HostDialFailure) -> Result<()> {
        let mut d = self.lock();
        d.write()?;
        d.dial.insert(host_id.to_string(), failure.clone());
        Ok(())
    }

    async fn clear_host_dial_failure(&self, host_id: &str) -> Result<()> {
        let mut d = self.lock();
        d.write()?;
        d.dial.remove(host_id);
        Ok(())
    }

    async fn patroni_keys(&self, db: &str) -> Result<Vec<(String, Vec<u8>)>> {
        Ok(self
            .lock()
            .patroni
            .iter()
            .filter(|((d, _), _)| d == db)
            .map(|((_, k), v)| (k.clone(), v.clone()))
            .collect())
    }

    async fn forget_patroni(&self, db: &str, node: Option<&str>) -> Result<()> {
        let mut d = self.lock();
        d.write()?;
        let prefix = node.map(|n| format!("{n}/"));
        d.patroni.retain(|(database, key), _| {
            database != db
                || prefix
                    .as_ref()
                    .is_some_and(|p| !key.starts_with(p.as_str()))
        });
        Ok(())
    }

    // Users are etcd's auth store, not its keys: neither counted as writes nor fenced.
    async fn ensure_patroni_user(
        &self,
        db: &str,
        node: &str,
        password: &secrecy::SecretString,
    ) -> Result<()> {
        use secrecy::ExposeSecret;
        self.lock().patroni_users.insert(
            (db.to_string(), node.to_string()),
            password.expose_secret().to_string(),
        );
        Ok(())
    }

    async fn drop_patroni_users(&self, db: &str, node: Option<&str>) -> Result<()> {
        self.lock()
            .patroni_users
            .retain(|(d, n), _| d != db || node.is_some_and(|node| node != n));
        Ok(())
    }
}
