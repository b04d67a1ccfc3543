//! Tasks and their logs: the records automation polls and follows.

use chrono::Utc;
use etcd_client::{Compare, CompareOp, GetOptions, SortOrder, SortTarget, TxnOp};
use spec::{Task, TaskLogEntry};

use serde_json::{Map, Value};

use crate::{
    APPEND_STRIPES, ListOrder, Result, Store, StoreError, Versioned, decode, encode, keys,
};

impl Store {
    pub async fn get_task(&self, db: &str, task_id: &str) -> Result<Option<Versioned<Task>>> {
        self.get_json(&self.keys.task(db, task_id)).await
    }

    /// A page of a database's tasks in `order`, starting after `after_task_id` (exclusive) when given.
    pub async fn list_tasks(
        &self,
        db: &str,
        after_task_id: Option<&str>,
        limit: i64,
        order: ListOrder,
    ) -> Result<Vec<Task>> {
        let cursor = after_task_id.map(|id| self.keys.task(db, id));
        self.task_page(&self.keys.tasks(db), cursor, limit, order)
            .await
    }

    /// A page of the tasks under `prefix` (a database's or a host's) in `order` of key (task
    /// ids are UUIDv7: creation order), strictly after the task key `cursor` when given.
    pub(crate) async fn task_page(
        &self,
        prefix: &str,
        cursor: Option<String>,
        limit: i64,
        order: ListOrder,
    ) -> Result<Vec<Task>> {
        let (start, end, sort) = match order {
            ListOrder::NewestFirst => (
                prefix.as_bytes().to_vec(),
                cursor.map_or_else(|| keys::prefix_end(prefix), String::into_bytes),
                SortOrder::Descend,
            ),
            ListOrder::OldestFirst => (
                cursor.map_or_else(|| prefix.as_bytes().to_vec(), |c| keys::key_after(&c)),
                keys::prefix_end(prefix),
                SortOrder::Ascend,
            ),
        };
        let options = GetOptions::new()
            .with_range(end)
            .with_sort(SortTarget::Key, sort)
            .with_limit(limit);
        let resp = self.client.kv_client().get(start, Some(options)).await?;
        resp.kvs()
            .iter()
            .map(|kv| decode(kv.key(), kv.value()))
            .collect()
    }

    /// Every task of every database that has not reached a terminal status.
    pub async fn unfinished_tasks(&self) -> Result<Vec<Task>> {
        let tasks: Vec<Task> = self
            .range_json(&self.keys.all_tasks(), GetOptions::new().with_prefix())
            .await?;
        Ok(tasks
            .into_iter()
            .filter(|t| !t.status.is_terminal())
            .collect())
    }

    /// Read-modify-write of one task with a revision compare, retried on conflict.
    /// `change` returns false to leave the task as it is.
    pub async fn update_task(
        &self,
        db: &str,
        task_id: &str,
        mut change: impl FnMut(&mut Task) -> bool,
    ) -> Result<Task> {
        let key = self.keys.task(db, task_id);
        loop {
            let Some(Versioned {
                mut value,
                mod_revision,
            }) = self.get_json::<Task>(&key).await?
            else {
                return Err(StoreError::NotFound);
            };
            if !change(&mut value) {
                return Ok(value);
            }
            value.updated_at = Utc::now();
            let compare = Compare::mod_revision(key.clone(), CompareOp::Equal, mod_revision);
            if self
                .guarded_txn(
                    vec![compare],
                    vec![TxnOp::put(key.clone(), encode(&value), None)],
                )
                .await?
            {
                return Ok(value);
            }
        }
    }

    // ---- task logs ----

    /// Appends one line to a task's log. Entry ids are UUIDv7, monotonic within this process,
    /// so key order is the order lines were written.
    pub async fn append_log(
        &self,
        db: &str,
        task_id: &str,
        message: impl Into<String>,
        fields: Map<String, Value>,
    ) -> Result<TaskLogEntry> {
        let _in_order = self.append_lock(db, task_id).lock().await;
        let entry = TaskLogEntry::new(message, fields);
        let put = TxnOp::put(
            self.keys.task_log_entry(db, task_id, &entry.id),
            encode(&entry),
            None,
        );
        self.guarded_txn(vec![], vec![put]).await?;
        Ok(entry)
    }

    /// The lock that keeps one task's appends in id order (`Store::appends`).
    pub(crate) fn append_lock(&self, db: &str, task_id: &str) -> &tokio::sync::Mutex<()> {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (db, task_id).hash(&mut h);
        &self.appends[(h.finish() % APPEND_STRIPES as u64) as usize]
    }

    /// Up to `limit` entries strictly after `after_entry_id`, oldest first.
    pub async fn read_log(
        &self,
        db: &str,
        task_id: &str,
        after_entry_id: Option<&str>,
        limit: i64,
    ) -> Result<Vec<TaskLogEntry>> {
        let after = after_entry_id.map(|id| self.keys.task_log_entry(db, task_id, id));
        self.read_log_page(&self.keys.task_logs(db, task_id), after, limit)
            .await
    }

    /// Up to `limit` log entries under `prefix` (one task's log, a database's or a host's),
    /// oldest first, strictly after the entry key `after` when given.
    pub(crate) async fn read_log_page(
        &self,
        prefix: &str,
        after: Option<String>,
        limit: i64,
    ) -> Result<Vec<TaskLogEntry>> {
        let start = match after {
            Some(key) => keys::key_after(&key),
            None => prefix.as_bytes().to_vec(),
        };
        let options = GetOptions::new()
            .with_range(keys::prefix_end(prefix))
            .with_sort(SortTarget::Key, SortOrder::Ascend)
            .with_limit(limit);
        let resp = self.client.kv_client().get(start, Some(options)).await?;
        resp.kvs()
            .iter()
            .map(|kv| decode(kv.key(), kv.value()))
            .collect()
    }
}
