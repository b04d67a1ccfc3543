//! Marks of backup schedules (ADR 024): per database, node and schedule id, what the leader
//! last fired, so that a restarted or failed-over leader neither fires a due time again nor
//! skips it. Only the leader writes them, through its fenced handle; the value is opaque
//! JSON to the store (the control plane's `schedules::Mark`).
//!
//! A fire writes the mark and the backup's task (with the database's record and spec, as an
//! accepted operation is written) in one transaction that compares the mark's revision: two
//! writers that read the same mark cannot both fire, and a fire either happened whole or not
//! at all.

use etcd_client::{Compare, CompareOp, GetOptions, TxnOp};
use serde::{Serialize, de::DeserializeOwned};
use spec::{DatabaseSpec, Task, TaskLogEntry};

use crate::{DatabaseRecord, Result, Store, StoreError, Versioned, decode, encode};

/// Which schedule a mark belongs to: `{p}/backup-schedules/{database}/{node}/{schedule}`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ScheduleKey {
    pub database: String,
    pub node: String,
    pub schedule: String,
}

/// A stored mark with its key and revision (what a write of it compares against).
#[derive(Debug, Clone, PartialEq)]
pub struct StoredMark<T> {
    pub key: ScheduleKey,
    pub mark: Versioned<T>,
}

/// What a scheduled backup writes when it fires: the database as an accepted operation
/// leaves it (record naming the task, spec unchanged), the task, its first log line, and
/// the schedule's new mark.
#[derive(Debug)]
pub struct ScheduledFire<'a, T> {
    /// The spec key's revision the record was read at: a spec change meanwhile wins.
    pub expected_spec_revision: i64,
    pub record: &'a DatabaseRecord,
    pub spec: &'a DatabaseSpec,
    pub task: &'a Task,
    /// The task's first line: which schedule fired it, for which due time.
    pub log: &'a TaskLogEntry,
    pub key: &'a ScheduleKey,
    /// The mark's revision when it was read; 0 for none.
    pub expected_mark_revision: i64,
    pub mark: &'a T,
}

impl Store {
    fn schedule_mark_key(&self, key: &ScheduleKey) -> String {
        self.keys
            .schedule_mark(&key.database, &key.node, &key.schedule)
    }

    /// Every schedule mark of every database, in key order. A key that is not
    /// `{db}/{node}/{schedule}` under the prefix is skipped.
    ///
    /// Errors: etcd, or a value that does not decode as `T`.
    pub async fn list_schedule_marks<T: DeserializeOwned>(&self) -> Result<Vec<StoredMark<T>>> {
        let prefix = self.keys.schedule_marks();
        let resp = self
            .client
            .kv_client()
            .get(prefix.as_str(), Some(GetOptions::new().with_prefix()))
            .await?;
        let mut out = Vec::new();
        for kv in resp.kvs() {
            let key = String::from_utf8_lossy(kv.key());
            let Some(rest) = key.strip_prefix(&prefix) else {
                continue;
            };
            let parts: Vec<&str> = rest.split('/').collect();
            let [database, node, schedule] = parts[..] else {
                continue;
            };
            out.push(StoredMark {
                key: ScheduleKey {
                    database: database.to_string(),
                    node: node.to_string(),
                    schedule: schedule.to_string(),
                },
                mark: Versioned {
                    value: decode(kv.key(), kv.value())?,
                    mod_revision: kv.mod_revision(),
                },
            });
        }
        Ok(out)
    }

    /// Writes a schedule's mark if it is still at `expected_revision` (0: absent), else
    /// [`StoreError::Conflict`]; [`StoreError::Fenced`] from a deposed leader.
    pub async fn put_schedule_mark<T: Serialize>(
        &self,
        key: &ScheduleKey,
        expected_revision: i64,
        mark: &T,
    ) -> Result<()> {
        let key = self.schedule_mark_key(key);
        let compare = Compare::mod_revision(key.clone(), CompareOp::Equal, expected_revision);
        let put = TxnOp::put(key, encode(mark), None);
        match self.guarded_txn(vec![compare], vec![put]).await? {
            true => Ok(()),
            false => Err(StoreError::Conflict),
        }
    }

    /// Deletes a schedule's mark (its schedule, node or database is gone) if it is still at
    /// `expected_revision`, else [`StoreError::Conflict`].
    pub async fn delete_schedule_mark(
        &self,
        key: &ScheduleKey,
        expected_revision: i64,
    ) -> Result<()> {
        let key = self.schedule_mark_key(key);
        let compare = Compare::mod_revision(key.clone(), CompareOp::Equal, expected_revision);
        let delete = TxnOp::delete(key, None);
        match self.guarded_txn(vec![compare], vec![delete]).await? {
            true => Ok(()),
            false => Err(StoreError::Conflict),
        }
    }

    /// Fires a scheduled backup: spec, record, task, the task's first log line and the
    /// schedule's mark in one transaction, if the spec is still at
    /// `expected_spec_revision` and the mark at `expected_mark_revision`. Else
    /// [`StoreError::Conflict`] and nothing is written; [`StoreError::Fenced`] from a
    /// deposed leader.
    pub async fn fire_schedule<T: Serialize>(&self, fire: ScheduledFire<'_, T>) -> Result<()> {
        let spec_key = self.keys.database_spec(&fire.record.id);
        let mark_key = self.schedule_mark_key(fire.key);
        let compares = vec![
            Compare::mod_revision(spec_key, CompareOp::Equal, fire.expected_spec_revision),
            Compare::mod_revision(
                mark_key.clone(),
                CompareOp::Equal,
                fire.expected_mark_revision,
            ),
        ];
        let mut ops = self.generation_ops(fire.record, fire.spec, fire.task);
        ops.push(TxnOp::put(
            self.keys
                .task_log_entry(&fire.task.database_id, &fire.task.task_id, &fire.log.id),
            encode(fire.log),
            None,
        ));
        ops.push(TxnOp::put(mark_key, encode(fire.mark), None));
        match self.guarded_txn(compares, ops).await? {
            true => Ok(()),
            false => Err(StoreError::Conflict),
        }
    }
}
