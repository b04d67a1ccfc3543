//! Tasks of scope `host` (a host's removal) and their logs, and the listing of tasks across
//! every database and host (`GET /v1/tasks`).
//!
//! A host's tasks live under their own prefix, apart from the databases' (`keys.rs`), and stay
//! after the host is gone, as a deleted database's do. There is one per removal, so no
//! retention sweeps them.

use etcd_client::{Txn, TxnOp, TxnOpResponse};
use serde_json::{Map, Value};
use spec::{Task, TaskLogEntry, TaskScope};

use crate::{ListOrder, Result, Store, decode, encode};

/// One log line as a writer gives it: the message and its structured fields.
pub type LogLine = (String, Map<String, Value>);

/// etcd refuses a transaction of more than `--max-txn-ops` operations (128 by default).
const GETS_PER_TXN: usize = 100;

impl Store {
    /// Removes a host as [`Store::remove_host`] does and writes, in the same transaction, the
    /// removal's task (scope `host`, `entity_id` the host id) and its log: `record` gets the
    /// serial about to be revoked and returns both. So the removal and its record cannot
    /// part. Returns the revoked serial and the task written.
    pub async fn remove_host_recorded(
        &self,
        host_id: &str,
        record: impl Fn(Option<&str>) -> (Task, Vec<LogLine>),
    ) -> Result<(Option<String>, Task)> {
        let written = std::sync::Mutex::new(None);
        let revoked = self
            .remove_host_with(host_id, |serial| {
                let (task, lines) = record(serial);
                let mut ops = vec![TxnOp::put(
                    self.keys.host_task(host_id, &task.task_id),
                    encode(&task),
                    None,
                )];
                for (message, fields) in lines {
                    let entry = TaskLogEntry::new(message, fields);
                    ops.push(TxnOp::put(
                        self.keys
                            .host_task_log_entry(host_id, &task.task_id, &entry.id),
                        encode(&entry),
                        None,
                    ));
                }
                *written.lock().expect("not poisoned") = Some(task);
                ops
            })
            .await?;
        let task = written
            .into_inner()
            .expect("not poisoned")
            .expect("the transaction ran with the task");
        Ok((revoked, task))
    }

    pub async fn get_host_task(&self, host_id: &str, task_id: &str) -> Result<Option<Task>> {
        Ok(self
            .get_json(&self.keys.host_task(host_id, task_id))
            .await?
            .map(|v| v.value))
    }

    /// A page of a host's tasks in `order`, after `after_task_id` (exclusive) when given.
    pub async fn list_host_tasks(
        &self,
        host_id: &str,
        after_task_id: Option<&str>,
        limit: i64,
        order: ListOrder,
    ) -> Result<Vec<Task>> {
        let cursor = after_task_id.map(|id| self.keys.host_task(host_id, id));
        self.task_page(&self.keys.host_tasks(host_id), cursor, limit, order)
            .await
    }

    /// Up to `limit` entries of a host task's log strictly after `after_entry_id`, oldest first.
    pub async fn read_host_log(
        &self,
        host_id: &str,
        task_id: &str,
        after_entry_id: Option<&str>,
        limit: i64,
    ) -> Result<Vec<TaskLogEntry>> {
        let after = after_entry_id.map(|id| self.keys.host_task_log_entry(host_id, task_id, id));
        self.read_log_page(&self.keys.host_task_logs(host_id, task_id), after, limit)
            .await
    }

    /// A page of every task of `scope` (every scope when `None`), databases' and hosts'
    /// alike, in `order` of task id (UUIDv7: creation order), after `after_task_id`
    /// (exclusive; it may belong to any database or host).
    ///
    /// Task keys are grouped by database or host, not by time, so this reads every task key
    /// of the scope (keys only: what retention keeps, about 100 bytes each) and then the
    /// values of the page alone.
    pub async fn list_all_tasks(
        &self,
        scope: Option<TaskScope>,
        after_task_id: Option<&str>,
        limit: i64,
        order: ListOrder,
    ) -> Result<Vec<Task>> {
        let prefixes = match scope {
            None => vec![self.keys.all_tasks(), self.keys.all_host_tasks()],
            Some(TaskScope::Database) => vec![self.keys.all_tasks()],
            Some(TaskScope::Host) => vec![self.keys.all_host_tasks()],
        };
        // (task id, key) of every task of the scope.
        let mut found: Vec<(String, String)> = Vec::new();
        for prefix in prefixes {
            for key in self.keys_under(&prefix).await? {
                if let Some(id) = key.rsplit('/').next() {
                    found.push((id.to_string(), key.clone()));
                }
            }
        }
        found.sort_unstable();
        if order == ListOrder::NewestFirst {
            found.reverse();
        }
        let page: Vec<String> = found
            .into_iter()
            .filter(|(id, _)| match (after_task_id, order) {
                (None, _) => true,
                (Some(after), ListOrder::OldestFirst) => id.as_str() > after,
                (Some(after), ListOrder::NewestFirst) => id.as_str() < after,
            })
            .take(usize::try_from(limit).unwrap_or(0))
            .map(|(_, key)| key)
            .collect();
        let mut tasks = Vec::with_capacity(page.len());
        for chunk in page.chunks(GETS_PER_TXN) {
            let gets: Vec<TxnOp> = chunk.iter().map(|k| TxnOp::get(k.as_str(), None)).collect();
            let resp = self
                .client
                .kv_client()
                .txn(Txn::new().and_then(gets))
                .await?;
            for op in resp.op_responses() {
                // A task deleted (retention) between the two reads is left out.
                if let TxnOpResponse::Get(get) = op
                    && let Some(kv) = get.kvs().first()
                {
                    tasks.push(decode(kv.key(), kv.value())?);
                }
            }
        }
        Ok(tasks)
    }
}
