//! A database's task history in etcd: log lines appended in batches, and the deletes that
//! keep tasks and logs bounded (ADR 014). What to delete is the control plane's policy
//! (`control_plane::retention`); the store only deletes what it is told, fenced.

use std::collections::BTreeSet;

use etcd_client::{Compare, CompareOp, DeleteOptions, GetOptions, TxnOp};
use serde_json::{Map, Value};
use spec::TaskLogEntry;

use crate::{Result, Store, encode};

/// etcd refuses a transaction of more than `--max-txn-ops` operations (128 by default):
/// deletes go in chunks of this many tasks, two operations each.
const TASKS_PER_TXN: usize = 50;

impl Store {
    /// Appends `lines` to a task's log in one transaction, one key per line, in order.
    /// Entry ids are UUIDv7, monotonic within this process, so key order is line order; the
    /// appends of one task are serialised, so revision order is key order too (what a
    /// follower of the log relies on, `follow`).
    pub async fn append_logs(
        &self,
        db: &str,
        task_id: &str,
        lines: Vec<(String, Map<String, Value>)>,
    ) -> Result<Vec<TaskLogEntry>> {
        // Ids are taken and committed under the task's lock, so etcd holds them in id order.
        let _in_order = self.append_lock(db, task_id).lock().await;
        let entries: Vec<TaskLogEntry> = lines
            .into_iter()
            .map(|(message, fields)| TaskLogEntry::new(message, fields))
            .collect();
        // A caller batches a few dozen lines; chunks keep a long batch under --max-txn-ops.
        for chunk in entries.chunks(2 * TASKS_PER_TXN) {
            let puts = chunk
                .iter()
                .map(|e| {
                    TxnOp::put(
                        self.keys.task_log_entry(db, task_id, &e.id),
                        encode(e),
                        None,
                    )
                })
                .collect();
            self.guarded_txn(vec![], puts).await?;
        }
        Ok(entries)
    }

    /// Deletes these tasks of `db` and their logs (absent ones are fine).
    pub async fn delete_tasks(&self, db: &str, task_ids: &[String]) -> Result<()> {
        for chunk in task_ids.chunks(TASKS_PER_TXN) {
            let mut ops = Vec::with_capacity(2 * chunk.len());
            for id in chunk {
                ops.push(TxnOp::delete(self.keys.task(db, id), None));
                ops.push(TxnOp::delete(
                    self.keys.task_logs(db, id),
                    Some(DeleteOptions::new().with_prefix()),
                ));
            }
            self.guarded_txn(vec![], ops).await?;
        }
        Ok(())
    }

    /// Deletes every task and log of `db`, only if no database of that id exists (checked in
    /// the same transaction, so a database re-created meanwhile keeps its history). Returns
    /// whether it deleted.
    pub async fn forget_history(&self, db: &str) -> Result<bool> {
        let absent = Compare::create_revision(self.keys.database_spec(db), CompareOp::Equal, 0);
        let with_prefix = || Some(DeleteOptions::new().with_prefix());
        let ops = vec![
            TxnOp::delete(self.keys.tasks(db), with_prefix()),
            TxnOp::delete(self.keys.database_task_logs(db), with_prefix()),
        ];
        self.guarded_txn(vec![absent], ops).await
    }

    /// The ids of databases that have tasks, existing or deleted (keys only).
    pub async fn databases_with_history(&self) -> Result<Vec<String>> {
        let prefix = self.keys.all_tasks();
        let ids: BTreeSet<String> = self
            .keys_under(&prefix)
            .await?
            .iter()
            .filter_map(|key| {
                let rest = key.strip_prefix(&prefix)?;
                rest.split_once('/').map(|(db, _)| db.to_string())
            })
            .collect();
        Ok(ids.into_iter().collect())
    }

    /// How many keys a database has under the task and log prefixes: what retention bounds.
    pub async fn history_key_count(&self, db: &str) -> Result<i64> {
        let mut count = 0;
        for prefix in [self.keys.tasks(db), self.keys.database_task_logs(db)] {
            let options = GetOptions::new().with_prefix().with_count_only();
            let resp = self
                .client
                .kv_client()
                .get(prefix.as_str(), Some(options))
                .await?;
            count += resp.count();
        }
        Ok(count)
    }
}
