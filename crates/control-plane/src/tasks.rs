//! Task bookkeeping: creating tasks, moving them through their statuses, and cancel.

use chrono::Utc;
use spec::{Task, TaskStatus, TaskType};
use store::{StateStore, StoreError};

pub fn new_task(database_id: &str, task_type: TaskType) -> Task {
    let now = Utc::now();
    Task {
        // UUIDv7: key order in etcd is creation order, which is what listings page by.
        task_id: uuid::Uuid::now_v7().to_string(),
        database_id: database_id.to_string(),
        scope: "database".into(),
        entity_id: database_id.to_string(),
        task_type,
        status: TaskStatus::Pending,
        created_at: now,
        updated_at: now,
        completed_at: None,
        error: None,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CancelError {
    #[error("task {0:?} not found")]
    NotFound(String),
    #[error("task {task_id:?} already ended as {status}")]
    AlreadyEnded { task_id: String, status: TaskStatus },
    /// An operation's task that runs: Patroni may be carrying it out already, and cannot be
    /// stopped half way (ADR 018).
    #[error("task {0:?} is an operation that is being carried out; it cannot be canceled")]
    OperationRunning(String),
    #[error(transparent)]
    Store(StoreError),
}

/// Asks a task to stop. A pending task is canceled at once; a running one is marked
/// `canceling` and its runner stops it between two steps. Either way none of its remaining
/// steps runs, and the database is `failed` until the next spec (ADR 013).
pub async fn cancel(
    store: &dyn StateStore,
    database_id: &str,
    task_id: &str,
) -> Result<Task, CancelError> {
    let mut ended = None;
    let mut canceled = false;
    let mut operation_running = false;
    let result = store
        .update_task(database_id, task_id, &mut |task| {
            // Only the last try of the change (the one stored) says whether it ended the task.
            canceled = false;
            operation_running = false;
            match task.status {
                TaskStatus::Pending => {
                    task.status = TaskStatus::Canceled;
                    task.completed_at = Some(Utc::now());
                    task.error = Some("canceled before it started".into());
                    canceled = true;
                    true
                }
                TaskStatus::Running if task.task_type.is_operation() => {
                    operation_running = true;
                    false
                }
                TaskStatus::Running => {
                    task.status = TaskStatus::Canceling;
                    true
                }
                TaskStatus::Canceling => false,
                status => {
                    ended = Some(status);
                    false
                }
            }
        })
        .await;
    if canceled && let Ok(task) = &result {
        record_end(task);
    }
    match result {
        Err(StoreError::NotFound) => Err(CancelError::NotFound(task_id.to_string())),
        Err(e) => Err(CancelError::Store(e)),
        Ok(_) if operation_running => Err(CancelError::OperationRunning(task_id.to_string())),
        Ok(task) => match ended {
            Some(status) => Err(CancelError::AlreadyEnded {
                task_id: task_id.to_string(),
                status,
            }),
            None => {
                let _ = store
                    .append_log(
                        database_id,
                        task_id,
                        format!("cancel requested; task is {}", task.status),
                        Default::default(),
                    )
                    .await;
                Ok(task)
            }
        },
    }
}

/// Moves a task to `status`, with completion time and error for terminal ones.
/// Returns the task as stored; a task that already ended is left as it is.
pub async fn transition(
    store: &dyn StateStore,
    database_id: &str,
    task_id: &str,
    status: TaskStatus,
    error: Option<String>,
) -> Result<Task, StoreError> {
    // The change may be tried more than once (update_task retries on conflict): only the
    // last try, the one stored, says whether this call ended the task.
    let mut ended = false;
    let task = store
        .update_task(database_id, task_id, &mut |task| {
            ended = false;
            if task.status.is_terminal() || task.status == status {
                return false;
            }
            task.status = status;
            if status.is_terminal() {
                task.completed_at = Some(Utc::now());
                task.error = error.clone();
                ended = true;
            }
            true
        })
        .await?;
    if ended {
        record_end(&task);
    }
    Ok(task)
}

/// Counts a task that just ended ([`telemetry::control_plane::TASKS_ENDED`]), with its
/// time from creation to end. Type and status are labelled as the API spells them.
fn record_end(task: &Task) {
    let took = task
        .completed_at
        .unwrap_or(task.updated_at)
        .signed_duration_since(task.created_at)
        .to_std()
        .unwrap_or_default();
    telemetry::control_plane::task_ended(api_name(task.task_type), api_name(task.status), took);
}

/// A unit enum's name in the API (its serde name); tasks end rarely, so the allocation is
/// nothing next to the etcd write that ended the task.
fn api_name(value: impl serde::Serialize) -> telemetry::SharedString {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(name)) => name.into(),
        _ => "unknown".into(),
    }
}
