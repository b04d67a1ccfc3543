//! The operations on a running database's Postgres instances (`spec::operations`), with the
//! reference API's paths and bodies: each accepted one is a task of the database, carried
//! out by the reconciler (`reconciler::operations`). An operation is refused with 409
//! `operation_already_in_progress` while another task of the database is unfinished, so
//! that operations and spec changes never interleave; what [`crate::operations`] refuses
//! is a 404, 400 or 409 naming the field, and nothing is stored.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use chrono::Utc;
use serde_json::Value;
use spec::DatabaseState;
use spec::operations::{
    Operation, OperationResponse, parse_backup, parse_failover, parse_no_body, parse_restart,
    parse_restore, parse_switchover,
};
use store::StoreError;

use super::databases::stored;
use super::{ApiError, QueryParams, json_body};
use crate::instances::InstanceRecord;
use crate::operations::{self as ops, Facts, Refusal};
use crate::state::AppState;
use crate::tasks::new_task;

/// An optional JSON body: none at all reads as `null`.
fn optional_body(body: &Bytes) -> Result<Value, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Null);
    }
    json_body(body)
}

impl From<Refusal> for ApiError {
    fn from(r: Refusal) -> Self {
        match r {
            Refusal::NotFound(m) => ApiError::NotFound(m),
            Refusal::Invalid(e) => ApiError::InvalidInput(e),
            Refusal::NotPossible(e) => ApiError::OperationNotPossible(e),
        }
    }
}

/// The database's current task, if it has not ended.
async fn unfinished_task(
    app: &AppState,
    current: &store::StoredDatabase,
) -> Result<Option<spec::Task>, ApiError> {
    let Some(task_id) = &current.record.current_task_id else {
        return Ok(None);
    };
    Ok(app
        .store
        .get_task(&current.record.id, task_id)
        .await?
        .map(|t| t.value)
        .filter(|t| !t.status.is_terminal()))
}

/// Refuses a spec change or a delete while an operation's task is unfinished (409
/// `operation_already_in_progress`): superseding it would end it as canceled while
/// Patroni may have carried it out.
pub(super) async fn refuse_during_operation(
    app: &AppState,
    current: &store::StoredDatabase,
) -> Result<(), ApiError> {
    match unfinished_task(app, current).await? {
        Some(task) if task.task_type.is_operation() => Err(ApiError::OperationInProgress(format!(
            "database {:?} has an unfinished {} task {}; wait for it to end",
            current.record.id,
            task.task_type.as_str(),
            task.task_id
        ))),
        _ => Ok(()),
    }
}

/// Reads the database, decides the operation against what runs, and stores it with its
/// task, unless another request changed the database meanwhile.
async fn accept(
    app: &AppState,
    id: &str,
    decide: impl FnOnce(&Facts) -> Result<Operation, Refusal>,
) -> Result<Json<OperationResponse>, ApiError> {
    let current = stored(app, id).await?;
    if current.record.state == DatabaseState::Deleting {
        return Err(ApiError::DatabaseNotModifiable(format!(
            "database {id:?} is being deleted"
        )));
    }
    if let Some(task) = unfinished_task(app, &current).await? {
        return Err(ApiError::OperationInProgress(format!(
            "database {id:?} has an unfinished task {} ({}, {}); wait for it or cancel it",
            task.task_id,
            task.task_type.as_str(),
            task.status
        )));
    }
    let records = app.store.list_instances::<InstanceRecord>(id).await?;
    let patroni = crate::patroni::read(&app.store, id).await?;
    let op = decide(&Facts {
        db: &current,
        records: &records,
        patroni: &patroni,
    })?;
    let task = new_task(id, op.task_type());
    let record = store::DatabaseRecord {
        current_task_id: Some(task.task_id.clone()),
        operation: Some(op),
        updated_at: Utc::now(),
        ..current.record.clone()
    };
    match app
        .store
        .update_database(current.spec_revision, &record, &current.spec, &task)
        .await
    {
        Ok(()) => {}
        Err(StoreError::Conflict) => {
            return Err(ApiError::Conflict(format!(
                "database {id:?} was modified by another request; try again"
            )));
        }
        Err(e) => return Err(e.into()),
    }
    tracing::info!(task_id = %task.task_id, task_type = task.task_type.as_str(), "operation accepted");
    Ok(Json(OperationResponse { task }))
}

#[utoipa::path(post, path = "/v1/databases/{database_id}/nodes/{node_name}/switchover",
    tag = "databases",
    params(("database_id" = String, Path), ("node_name" = String, Path)),
    request_body(content = spec::operations::SwitchoverRequest, description = "optional"),
    responses((status = 200, body = OperationResponse, description = "the task of the switchover"),
              (status = 400, body = spec::ApiErrorBody), (status = 404, body = spec::ApiErrorBody),
              (status = 409, body = spec::ApiErrorBody, description = "another task is unfinished, \
               or the node has no primary or no replica that can take over")))]
#[tracing::instrument(skip_all, fields(database_id = %id, node = %node))]
pub(crate) async fn switchover(
    State(app): State<AppState>,
    Path((id, node)): Path<(String, String)>,
    body: Bytes,
) -> Result<Json<OperationResponse>, ApiError> {
    let request =
        parse_switchover(&optional_body(&body)?, Utc::now()).map_err(ApiError::InvalidInput)?;
    accept(&app, &id, |f| ops::switchover(f, &node, request)).await
}

#[utoipa::path(post, path = "/v1/databases/{database_id}/nodes/{node_name}/failover",
    tag = "databases",
    params(("database_id" = String, Path), ("node_name" = String, Path)),
    request_body(content = spec::operations::FailoverRequest, description = "optional"),
    responses((status = 200, body = OperationResponse, description = "the task of the failover"),
              (status = 400, body = spec::ApiErrorBody), (status = 404, body = spec::ApiErrorBody),
              (status = 409, body = spec::ApiErrorBody, description = "another task is unfinished, \
               the primary is healthy (without skip_validation), or no replica runs")))]
#[tracing::instrument(skip_all, fields(database_id = %id, node = %node))]
pub(crate) async fn failover(
    State(app): State<AppState>,
    Path((id, node)): Path<(String, String)>,
    body: Bytes,
) -> Result<Json<OperationResponse>, ApiError> {
    let request = parse_failover(&optional_body(&body)?).map_err(ApiError::InvalidInput)?;
    accept(&app, &id, |f| ops::failover(f, &node, request)).await
}

#[utoipa::path(post, path = "/v1/databases/{database_id}/instances/{instance_id}/restart",
    tag = "databases",
    params(("database_id" = String, Path), ("instance_id" = String, Path)),
    request_body(content = spec::operations::RestartInstanceRequest, description = "optional"),
    responses((status = 200, body = OperationResponse, description = "the task of the restart"),
              (status = 400, body = spec::ApiErrorBody), (status = 404, body = spec::ApiErrorBody),
              (status = 409, body = spec::ApiErrorBody)))]
#[tracing::instrument(skip_all, fields(database_id = %id, instance_id = %instance))]
pub(crate) async fn restart(
    State(app): State<AppState>,
    Path((id, instance)): Path<(String, String)>,
    body: Bytes,
) -> Result<Json<OperationResponse>, ApiError> {
    let request =
        parse_restart(&optional_body(&body)?, Utc::now()).map_err(ApiError::InvalidInput)?;
    accept(&app, &id, |f| ops::restart(f, &instance, request)).await
}

#[utoipa::path(post, path = "/v1/databases/{database_id}/instances/{instance_id}/stop-instance",
    tag = "databases",
    params(("database_id" = String, Path), ("instance_id" = String, Path),
           ("force" = Option<bool>, Query, description = "`true`: stop even the last running \
               instance of its node, or a primary no replica can take over from")),
    responses((status = 200, body = OperationResponse, description = "the task of the stop"),
              (status = 400, body = spec::ApiErrorBody), (status = 404, body = spec::ApiErrorBody),
              (status = 409, body = spec::ApiErrorBody)))]
#[tracing::instrument(skip_all, fields(database_id = %id, instance_id = %instance))]
pub(crate) async fn stop(
    State(app): State<AppState>,
    Path((id, instance)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Result<Json<OperationResponse>, ApiError> {
    parse_no_body(&optional_body(&body)?).map_err(ApiError::InvalidInput)?;
    let force = QueryParams::parse(query).flag("force")?;
    accept(&app, &id, |f| ops::stop(f, &instance, force)).await
}

#[utoipa::path(post, path = "/v1/databases/{database_id}/instances/{instance_id}/start-instance",
    tag = "databases",
    params(("database_id" = String, Path), ("instance_id" = String, Path),
           ("force" = Option<bool>, Query, description = "`true`: start it even though every \
               instance of its node is stopped and another was the node's primary when it \
               stopped (what only that one has is lost)")),
    responses((status = 200, body = OperationResponse, description = "the task of the start"),
              (status = 404, body = spec::ApiErrorBody), (status = 409, body = spec::ApiErrorBody)))]
#[tracing::instrument(skip_all, fields(database_id = %id, instance_id = %instance))]
pub(crate) async fn start(
    State(app): State<AppState>,
    Path((id, instance)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Result<Json<OperationResponse>, ApiError> {
    parse_no_body(&optional_body(&body)?).map_err(ApiError::InvalidInput)?;
    let force = QueryParams::parse(query).flag("force")?;
    accept(&app, &id, |f| ops::start(f, &instance, force)).await
}

#[utoipa::path(post, path = "/v1/databases/{database_id}/nodes/{node_name}/backups",
    tag = "databases",
    params(("database_id" = String, Path), ("node_name" = String, Path)),
    request_body(content = spec::operations::BackupRequest),
    responses((status = 200, body = OperationResponse, description = "the task of the backup (`node_backup`)"),
              (status = 400, body = spec::ApiErrorBody, description = "a bad body, or the node has no repository"),
              (status = 404, body = spec::ApiErrorBody),
              (status = 409, body = spec::ApiErrorBody, description = "another task is unfinished, \
               or the node has no running primary")))]
#[tracing::instrument(skip_all, fields(database_id = %id, node = %node))]
pub(crate) async fn backup(
    State(app): State<AppState>,
    Path((id, node)): Path<(String, String)>,
    body: Bytes,
) -> Result<Json<OperationResponse>, ApiError> {
    let request = parse_backup(&json_body(&body)?).map_err(ApiError::InvalidInput)?;
    accept(&app, &id, |f| ops::backup(f, &node, request)).await
}

#[utoipa::path(post, path = "/v1/databases/{database_id}/restore",
    tag = "databases",
    params(("database_id" = String, Path)),
    request_body(content = spec::operations::RestoreRequest),
    responses((status = 200, body = OperationResponse, description = "the task of the restore (`restore`)"),
              (status = 400, body = spec::ApiErrorBody, description = "a bad body, or a repository \
               the node cannot restore from"),
              (status = 404, body = spec::ApiErrorBody),
              (status = 409, body = spec::ApiErrorBody, description = "another task is unfinished, \
               the database has several nodes")))]
#[tracing::instrument(skip_all, fields(database_id = %id))]
pub(crate) async fn restore(
    State(app): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<OperationResponse>, ApiError> {
    let request = parse_restore(&json_body(&body)?).map_err(ApiError::InvalidInput)?;
    accept(&app, &id, |f| ops::restore(f, request)).await
}
