//! A host's tasks (its removals) and their logs, as in the reference API:
//! `GET /v1/hosts/{host_id}/tasks`, `.../tasks/{task_id}`, `.../tasks/{task_id}/logs`.
//! A removed host's tasks stay readable, as a deleted database's do.

use axum::Json;
use axum::extract::{Path, RawQuery, State};
use spec::{ListTasksResponse, Task, TaskLog};

use super::{ApiError, QueryParams, SortOrder};
use crate::state::AppState;

/// A host "exists" here while it has a record, a certificate, or any task.
async fn ensure_host(app: &AppState, host_id: &str) -> Result<(), ApiError> {
    let known = app.store.get_host(host_id).await?.is_some()
        || app.store.host_certificate(host_id).await?.is_some()
        || !app
            .store
            .list_host_tasks(host_id, None, 1, store::ListOrder::NewestFirst)
            .await?
            .is_empty();
    if known {
        Ok(())
    } else {
        Err(ApiError::NotFound(format!("host {host_id:?} not found")))
    }
}

async fn find_task(app: &AppState, host_id: &str, task_id: &str) -> Result<Task, ApiError> {
    let not_found =
        || ApiError::NotFound(format!("task {task_id:?} of host {host_id:?} not found"));
    if uuid::Uuid::parse_str(task_id).is_err() {
        return Err(not_found());
    }
    app.store
        .get_host_task(host_id, task_id)
        .await?
        .ok_or_else(not_found)
}

#[utoipa::path(get, path = "/v1/hosts/{host_id}/tasks", tag = "hosts",
    params(("host_id" = String, Path),
           ("after_task_id" = Option<String>, Query, description = "exclusive cursor"),
           ("limit" = Option<i64>, Query, description = "1..=1000, default 100"),
           ("sort_order" = Option<SortOrder>, Query,
               description = "`desc` (newest first, the default) or `asc`, or their long forms")),
    responses((status = 200, body = ListTasksResponse), (status = 400, body = spec::ApiErrorBody),
              (status = 404, body = spec::ApiErrorBody)))]
pub(crate) async fn list(
    State(app): State<AppState>,
    Path(host_id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Json<ListTasksResponse>, ApiError> {
    let params = QueryParams::parse(query);
    let super::TaskPage {
        limit,
        after,
        order,
    } = params.task_page()?;
    ensure_host(&app, &host_id).await?;
    let tasks = app
        .store
        .list_host_tasks(&host_id, after.as_deref(), limit, order)
        .await?;
    Ok(Json(ListTasksResponse { tasks }))
}

#[utoipa::path(get, path = "/v1/hosts/{host_id}/tasks/{task_id}", tag = "hosts",
    params(("host_id" = String, Path), ("task_id" = String, Path)),
    responses((status = 200, body = Task), (status = 404, body = spec::ApiErrorBody)))]
pub(crate) async fn get(
    State(app): State<AppState>,
    Path((host_id, task_id)): Path<(String, String)>,
) -> Result<Json<Task>, ApiError> {
    Ok(Json(find_task(&app, &host_id, &task_id).await?))
}

/// A page of the log, read with an exclusive cursor as a database task's is.
#[utoipa::path(get, path = "/v1/hosts/{host_id}/tasks/{task_id}/logs", tag = "hosts",
    params(("host_id" = String, Path), ("task_id" = String, Path),
           ("after_entry_id" = Option<String>, Query, description = "exclusive cursor: the last entry id already seen"),
           ("limit" = Option<i64>, Query, description = "1..=1000, default 100")),
    responses((status = 200, body = TaskLog), (status = 400, body = spec::ApiErrorBody),
              (status = 404, body = spec::ApiErrorBody)))]
pub(crate) async fn log(
    State(app): State<AppState>,
    Path((host_id, task_id)): Path<(String, String)>,
    RawQuery(query): RawQuery,
) -> Result<Json<TaskLog>, ApiError> {
    let params = QueryParams::parse(query);
    let limit = params.limit(100, 1000)?;
    let after = params.uuid("after_entry_id")?;
    // The status first: once it reads terminal, the entries read after it include the last.
    let task = find_task(&app, &host_id, &task_id).await?;
    let entries = app
        .store
        .read_host_log(&host_id, &task_id, after.as_deref(), limit)
        .await?;
    let last_entry_id = entries.last().map(|e| e.id.clone()).or(after);
    Ok(Json(TaskLog {
        database_id: String::new(),
        scope: "host".into(),
        entity_id: host_id,
        task_id,
        task_status: task.status,
        last_entry_id,
        entries,
    }))
}
