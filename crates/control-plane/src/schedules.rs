//! Scheduled backups (ADR 024): the leader fires each `backup_config.schedules[]` entry of
//! each node once per due time, as a `node_backup` task like one a request creates.
//!
//! Per (database, node, schedule id) a [`Mark`] in etcd says which due time was fired last.
//! A fire writes the new mark and the task in one fenced transaction that compares the
//! mark's revision ([`store::Store::fire_schedule`]), so a due time is fired by one leader
//! at most, and a leader that starts reads what the last one fired. What is due is decided
//! by a pure function ([`decide`]) of the schedule, its mark and the time:
//! - a schedule without a mark (new, or its expression changed) starts counting now: due
//!   times before a leader first saw it never fire;
//! - otherwise the latest due time at or before now fires if it is newer than the mark's,
//!   once, however many due times passed while no leader ran;
//! - a database with an unfinished task keeps its due time pending, retried every
//!   [`RETRY`], until it is free (or a newer due time replaces it);
//! - a node with no running primary is retried the same way for [`NO_PRIMARY_GRACE`] after
//!   the due time, then that due time is given up with a warning (the mark moves on).
//!
//! The loop sleeps until the next due time of any schedule, at most [`MAX_SLEEP`], so a
//! schedule added to a spec is seen within that.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use spec::backup::{BackupSchedule, BackupType, ScheduledBackupType};
use spec::operations::BackupRequest;
use spec::{DatabaseState, TaskLogEntry};
use store::{ScheduleKey, ScheduledFire, Store, StoreError, StoredDatabase, StoredMark};

use crate::instances::InstanceRecord;
use crate::operations::{self as ops, Facts, Refusal};
use crate::tasks::new_task;

/// The longest the loop sleeps: how late a schedule added to a spec may be seen.
pub const MAX_SLEEP: Duration = Duration::from_secs(30);
/// How soon a pending due time (busy database, no primary, a concurrent write) is tried again.
pub const RETRY: Duration = Duration::from_secs(5);
/// How long after its due time a backup waits for its node to have a running primary; a
/// Patroni failover takes seconds, a host that is down longer is not waited for.
pub const NO_PRIMARY_GRACE: Duration = Duration::from_secs(15 * 60);

/// What etcd keeps per schedule: `{p}/backup-schedules/{db}/{node}/{schedule}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mark {
    /// The expression the mark counts with: another expression is a new schedule.
    pub cron_expression: String,
    /// When a leader first saw the schedule with this expression.
    pub since: DateTime<Utc>,
    /// The newest due time accounted for: fired, given up on, or the latest one before
    /// `since`. None: none came due before `since`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_due: Option<DateTime<Utc>>,
    /// The task of the last fire, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_id: Option<String>,
}

/// What to do about one schedule now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// No mark for this expression: store this one, which counts from now; nothing fires.
    Start(Mark),
    /// `due` has come and is newer than the mark's: fire it.
    Fire(DateTime<Utc>),
    /// Nothing is due.
    Idle,
}

/// The latest due time of `cron` at or before `now` (UTC); None if it never came due.
pub fn latest_due(cron: &croner::Cron, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    cron.find_previous_occurrence(&now, true).ok()
}

/// The first due time of `cron` strictly after `now`.
pub fn next_due(cron: &croner::Cron, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    cron.find_next_occurrence(&now, false).ok()
}

/// What is due for the schedule `expression` (parsed: `cron`) given its stored `mark`, at
/// `now`. Pure: the module docs give the rules.
pub fn decide(
    cron: &croner::Cron,
    expression: &str,
    mark: Option<&Mark>,
    now: DateTime<Utc>,
) -> Decision {
    let latest = latest_due(cron, now);
    match mark {
        Some(m) if m.cron_expression == expression => match latest {
            Some(due) if m.last_due.is_none_or(|last| due > last) => Decision::Fire(due),
            _ => Decision::Idle,
        },
        _ => Decision::Start(Mark {
            cron_expression: expression.to_string(),
            since: now,
            last_due: latest,
            task_id: None,
        }),
    }
}

/// Whether a due time that waits for a primary is given up at `now`.
pub fn gives_up(due: DateTime<Utc>, now: DateTime<Utc>) -> bool {
    now.signed_duration_since(due)
        .to_std()
        .is_ok_and(|waited| waited > NO_PRIMARY_GRACE)
}

/// How long to sleep at `now`: until the earliest of `next` (each schedule's next due
/// time), at most [`MAX_SLEEP`], at most [`RETRY`] while something is `pending`.
pub fn sleep_for(
    now: DateTime<Utc>,
    next: impl IntoIterator<Item = DateTime<Utc>>,
    pending: bool,
) -> Duration {
    let cap = if pending { RETRY } else { MAX_SLEEP };
    next.into_iter()
        .filter_map(|at| at.signed_duration_since(now).to_std().ok())
        .fold(cap, Duration::min)
}

/// The backup type a schedule takes.
fn backup_type(t: ScheduledBackupType) -> BackupType {
    match t {
        ScheduledBackupType::Full => BackupType::Full,
        ScheduledBackupType::Incr => BackupType::Incr,
    }
}

/// The schedules the leader runs for one database: those of nodes with a repository their
/// instances can use, by key.
fn schedules_of(db: &StoredDatabase) -> Vec<(ScheduleKey, BackupSchedule)> {
    let mut out = Vec::new();
    for node in &db.spec.nodes {
        let Some(config) = spec::backup::effective_backup_config(&db.spec, node) else {
            continue;
        };
        if pgbackrest::conf::usable(&config.repositories).is_empty() {
            continue;
        }
        for schedule in &config.schedules {
            let key = ScheduleKey {
                database: db.record.id.clone(),
                node: node.name.clone(),
                schedule: schedule.id.clone(),
            };
            out.push((key, schedule.clone()));
        }
    }
    out
}

/// What became of one due time.
#[derive(Debug)]
enum Fired {
    /// Its task was written.
    Task(String),
    /// The database has an unfinished task, or changed while this was written: later.
    Later(String),
    /// The node has no running primary to take it.
    NoPrimary(String),
    /// The database, node or schedule went, or no longer allows a backup.
    Gone(String),
}

/// One pass over every database: marks new schedules, fires what is due, forgets marks of
/// schedules that went. Returns how long to sleep.
///
/// Errors: the store's ([`StoreError::Fenced`] once this replica no longer leads).
pub async fn tick(store: &Store, now: DateTime<Utc>) -> Result<Duration, StoreError> {
    let databases = store.list_databases().await?;
    let mut marks: BTreeMap<ScheduleKey, (Option<Mark>, i64)> = store
        .list_schedule_marks::<Mark>()
        .await?
        .into_iter()
        .map(|StoredMark { key, mark }| (key, (Some(mark.value), mark.mod_revision)))
        .collect();
    let mut seen = BTreeSet::new();
    let mut next = Vec::new();
    let mut pending = false;
    for db in &databases {
        let deleting = db.record.state == DatabaseState::Deleting;
        for (key, schedule) in schedules_of(db) {
            seen.insert(key.clone());
            if deleting {
                continue;
            }
            let cron = match spec::backup::cron_schedule(&schedule.cron_expression) {
                Ok(c) => c,
                Err(e) => {
                    // Validated when stored; a later, stricter parser would land here.
                    tracing::warn!(database_id = %key.database, node = %key.node,
                        schedule = %key.schedule, error = %e, "schedule not run");
                    continue;
                }
            };
            next.extend(next_due(&cron, now));
            let (mark, revision) = marks.remove(&key).unwrap_or((None, 0));
            match decide(&cron, &schedule.cron_expression, mark.as_ref(), now) {
                Decision::Idle => {}
                Decision::Start(new) => match store.put_schedule_mark(&key, revision, &new).await {
                    Ok(()) => tracing::info!(database_id = %key.database, node = %key.node,
                            schedule = %key.schedule, cron_expression = %new.cron_expression,
                            "backup schedule counts from now"),
                    Err(StoreError::Conflict) => pending = true,
                    Err(e) => return Err(e),
                },
                Decision::Fire(due) => {
                    let mark = mark.expect("a fire follows a mark");
                    let fired = fire(store, &key, &schedule, due, &mark, revision).await?;
                    let ctx = (
                        &key.database,
                        &key.node,
                        &key.schedule,
                        due.to_rfc3339_opts(SecondsFormat::Secs, true),
                    );
                    match fired {
                        Fired::Task(task_id) => tracing::info!(database_id = %ctx.0,
                            node = %ctx.1, schedule = %ctx.2, due = %ctx.3, %task_id,
                            "scheduled backup fired"),
                        Fired::Later(why) => {
                            pending = true;
                            tracing::debug!(database_id = %ctx.0, node = %ctx.1,
                                schedule = %ctx.2, due = %ctx.3, why, "scheduled backup waits");
                        }
                        Fired::NoPrimary(why) if gives_up(due, now) => {
                            let skipped = Mark {
                                last_due: Some(due),
                                ..mark
                            };
                            match store.put_schedule_mark(&key, revision, &skipped).await {
                                Ok(()) | Err(StoreError::Conflict) => {}
                                Err(e) => return Err(e),
                            }
                            tracing::warn!(database_id = %ctx.0, node = %ctx.1,
                                schedule = %ctx.2, due = %ctx.3, why,
                                "scheduled backup skipped: no running primary since its due time");
                        }
                        Fired::NoPrimary(why) => {
                            pending = true;
                            // Every RETRY for up to NO_PRIMARY_GRACE: the give-up is the warning.
                            tracing::debug!(database_id = %ctx.0, node = %ctx.1,
                                schedule = %ctx.2, due = %ctx.3, why,
                                "scheduled backup waits for a running primary");
                        }
                        Fired::Gone(why) => tracing::info!(database_id = %ctx.0,
                            node = %ctx.1, schedule = %ctx.2, due = %ctx.3, why,
                            "scheduled backup not fired"),
                    }
                }
            }
        }
    }
    // What is left has no schedule any more: a schedule added again later starts afresh.
    for (key, (_, revision)) in marks {
        if seen.contains(&key) {
            continue;
        }
        match store.delete_schedule_mark(&key, revision).await {
            Ok(()) | Err(StoreError::Conflict) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(sleep_for(now, next, pending))
}

/// Fires `due` of `schedule` as an accepted backup request would be (the same checks,
/// [`ops::backup`]), on the database as read now, with the mark read at `revision`.
async fn fire(
    store: &Store,
    key: &ScheduleKey,
    schedule: &BackupSchedule,
    due: DateTime<Utc>,
    mark: &Mark,
    revision: i64,
) -> Result<Fired, StoreError> {
    let id = key.database.as_str();
    let Some(db) = store.get_database(id).await? else {
        return Ok(Fired::Gone("the database is gone".into()));
    };
    if db.record.state == DatabaseState::Deleting {
        return Ok(Fired::Gone("the database is being deleted".into()));
    }
    // The schedule as the spec says it now: it may have changed since the pass read it.
    let same = schedules_of(&db)
        .into_iter()
        .any(|(k, s)| &k == key && s == *schedule);
    if !same {
        return Ok(Fired::Later("the schedule changed".into()));
    }
    if let Some(task_id) = &db.record.current_task_id
        && let Some(task) = store.get_task(id, task_id).await?
        && !task.value.status.is_terminal()
    {
        return Ok(Fired::Later(format!(
            "task {task_id} ({}) is unfinished",
            task.value.task_type.as_str()
        )));
    }
    let due_text = due.to_rfc3339_opts(SecondsFormat::Secs, true);
    let records = store.list_instances::<InstanceRecord>(id).await?;
    let patroni = crate::patroni::read(store, id).await?;
    let request = BackupRequest {
        backup_type: backup_type(schedule.backup_type),
        annotations: [
            ("schedule".to_string(), schedule.id.clone()),
            ("due".to_string(), due_text.clone()),
        ]
        .into(),
    };
    let facts = Facts {
        db: &db,
        records: &records,
        patroni: &patroni,
    };
    let op = match ops::backup(&facts, &key.node, request) {
        Ok(op) => op,
        Err(Refusal::NotPossible(e)) => return Ok(Fired::NoPrimary(e.to_string())),
        Err(Refusal::NotFound(m)) => return Ok(Fired::Gone(m)),
        Err(Refusal::Invalid(e)) => return Ok(Fired::Gone(e.to_string())),
    };
    let task = new_task(id, op.task_type());
    let record = store::DatabaseRecord {
        current_task_id: Some(task.task_id.clone()),
        operation: Some(op),
        updated_at: Utc::now(),
        ..db.record.clone()
    };
    let fields = [
        ("node", key.node.as_str()),
        ("schedule", schedule.id.as_str()),
        ("due", due_text.as_str()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), serde_json::Value::from(v)))
    .collect();
    let log = TaskLogEntry::new(
        format!(
            "scheduled {} backup of node {}: schedule {} ({}) came due at {due_text}",
            schedule.backup_type.as_str(),
            key.node,
            schedule.id,
            schedule.cron_expression
        ),
        fields,
    );
    let new_mark = Mark {
        last_due: Some(due),
        task_id: Some(task.task_id.clone()),
        ..mark.clone()
    };
    let fire = ScheduledFire {
        expected_spec_revision: db.spec_revision,
        record: &record,
        spec: &db.spec,
        task: &task,
        log: &log,
        key,
        expected_mark_revision: revision,
        mark: &new_mark,
    };
    match store.fire_schedule(fire).await {
        Ok(()) => Ok(Fired::Task(task.task_id)),
        Err(StoreError::Conflict) => Ok(Fired::Later(
            "the database or the mark changed meanwhile".into(),
        )),
        Err(e) => Err(e),
    }
}

/// The leader's scheduler: [`tick`] after tick until this replica no longer leads. `store`
/// is the leader's fenced handle.
pub async fn run(store: Store) {
    loop {
        let sleep = match tick(&store, Utc::now()).await {
            Ok(sleep) => sleep,
            Err(StoreError::Fenced) => {
                tracing::info!("no longer the leader: backup schedules stop here");
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "backup schedules: a pass failed; trying again");
                RETRY
            }
        };
        tokio::time::sleep(sleep).await;
    }
}

#[cfg(test)]
#[path = "schedules_tests.rs"]
mod tests;
