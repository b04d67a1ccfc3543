//! How much task history etcd keeps (ADR 014): per database, the newest `keep_tasks` tasks
//! and none that ended more than `max_age` ago; a deleted database's tasks and logs go
//! `deleted_grace` after its last task ended. Without this every task and every log line
//! stays in etcd forever, and at its quota etcd refuses every write.
//!
//! The leader sweeps every `period` through its fenced store. A task that has not ended,
//! and a database's current task, are never deleted.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use spec::Task;
use store::{ListOrder, StateStore, StoreError};

/// The retention policy; see the module docs. Set by the control plane's flags.
#[derive(Debug, Clone, PartialEq)]
pub struct Retention {
    /// Tasks kept per database, newest first (the ones beyond are deleted once ended).
    pub keep_tasks: usize,
    /// An ended task older than this is deleted even within `keep_tasks`.
    pub max_age: Duration,
    /// How long a deleted database's history stays readable after its last task ended.
    pub deleted_grace: Duration,
    /// How often the leader sweeps.
    pub period: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            keep_tasks: 100,
            max_age: Duration::from_secs(30 * 24 * 3600),
            deleted_grace: Duration::from_secs(7 * 24 * 3600),
            period: Duration::from_secs(60),
        }
    }
}

/// What one sweep deleted.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Swept {
    /// Tasks deleted, with their logs, from databases that exist.
    pub tasks: usize,
    /// Deleted databases whose whole history went.
    pub histories: usize,
}

/// When a task ended (or last changed, for one that has not).
fn ended_at(task: &Task) -> DateTime<Utc> {
    task.completed_at.unwrap_or(task.updated_at)
}

fn before(now: DateTime<Utc>, age: Duration) -> DateTime<Utc> {
    now - chrono::Duration::from_std(age).unwrap_or(chrono::Duration::MAX)
}

/// One pass of the policy over every database with history, as of `now`.
pub async fn sweep(
    store: &dyn StateStore,
    policy: &Retention,
    now: DateTime<Utc>,
) -> Result<Swept, StoreError> {
    let existing: std::collections::BTreeMap<String, Option<String>> = store
        .list_databases()
        .await?
        .into_iter()
        .map(|d| (d.record.id, d.record.current_task_id))
        .collect();
    let mut swept = Swept::default();
    for db in store.databases_with_history().await? {
        let tasks = store
            .list_tasks(&db, None, i64::MAX, ListOrder::NewestFirst)
            .await?;
        match existing.get(&db) {
            Some(current) => {
                let too_old = before(now, policy.max_age);
                let doomed: Vec<String> = tasks
                    .iter()
                    .enumerate()
                    .filter(|(i, t)| {
                        t.status.is_terminal()
                            && current.as_deref() != Some(t.task_id.as_str())
                            && (*i >= policy.keep_tasks || ended_at(t) < too_old)
                    })
                    .map(|(_, t)| t.task_id.clone())
                    .collect();
                if !doomed.is_empty() {
                    store.delete_tasks(&db, &doomed).await?;
                    swept.tasks += doomed.len();
                }
            }
            None => {
                let settled = tasks.iter().all(|t| t.status.is_terminal());
                let last = tasks.iter().map(ended_at).max();
                let expired = last.is_none_or(|l| l < before(now, policy.deleted_grace));
                // The store checks again that no database of this id exists: one created
                // since the listing keeps its history.
                if settled && expired && store.forget_history(&db).await? {
                    swept.histories += 1;
                }
            }
        }
    }
    Ok(swept)
}

/// Sweeps every `policy.period` until dropped (the leader aborts it when it steps down).
pub async fn run(store: Arc<dyn StateStore>, policy: Retention) {
    let mut every = tokio::time::interval(policy.period);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        match sweep(&*store, &policy, Utc::now()).await {
            Ok(s) if s != Swept::default() => {
                tracing::info!(
                    tasks = s.tasks,
                    histories = s.histories,
                    "retention: deleted task history"
                );
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "retention sweep failed; trying again next period")
            }
        }
    }
}
