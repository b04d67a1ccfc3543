use axum::Json;
use axum::extract::{Path, RawQuery, State};
use spec::{ListTasksResponse, Task, TaskLog};
use store::ListOrder;

use super::{ApiError, QueryParams};
use crate::state::AppState;
use crate::tasks::{CancelError, cancel as cancel_task};

fn uuid_param(params: &QueryParams, name: &str) -> Result<Option<String>, ApiError> {
    match params.get(name) {
        None => Ok(None),
        Some(v) => uuid::Uuid::parse_str(v)
            .map(|u| Some(u.to_string()))
            .map_err(|_| {
                ApiError::invalid(
                    name,
                    format!("expected an id returned by this API, got {v:?}"),
                )
            }),
    }
}

async fn ensure_database(app: &AppState, id: &str) -> Result<(), ApiError> {
    // A deleted database's tasks stay readable, so a database "exists" for this purpose
    // while it has a record or any task.
    if app.store.get_database(id).await?.is_some()
        || !app
            .store
            .list_tasks(id, None, 1, ListOrder::NewestFirst)
            .await?
            .is_empty()
    {
        Ok(())
    } else {
        Err(ApiError::NotFound(format!("database {id:?} not found")))
    }
}

#[utoipa::path(get, path = "/v1/databases/{id}/tasks", tag = "tasks",
    params(("id" = String, Path),
           ("after_task_id" = Option<String>, Query, description = "exclusive cursor"),
           ("limit" = Option<i64>, Query, description = "1..=1000, default 100"),
           ("sort_order" = Option<String>, Query, description = "`desc` (newest first, default) or `asc`")),
    responses((status = 200, body = ListTasksResponse), (status = 404, body = spec::ApiErrorBody)))]
pub(crate) async fn list(
    State(app): State<AppState>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Json<ListTasksResponse>, ApiError> {
    let params = QueryParams::parse(query);
    let limit = params.limit(100, 1000)?;
    let after = uuid_param(&params, "after_task_id")?;
    let order = match params.get("sort_order") {
        None | Some("desc") => ListOrder::NewestFirst,
        Some("asc") => ListOrder::OldestFirst,
        Some(other) => {
            return Err(ApiError::invalid(
                "sort_order",
                format!("expected asc or desc, got {other:?}"),
            ));
        }
    };
    ensure_database(&app, &id).await?;
    let tasks = app
        .store
        .list_tasks(&id, after.as_deref(), limit, order)
        .await?;
    Ok(Json(ListTasksResponse { tasks }))
}

async fn find_task(app: &AppState, id: &str, task_id: &str) -> Result<Task, ApiError> {
    let not_found = || ApiError::NotFound(format!("task {task_id:?} of database {id:?} not found"));
    if uuid::Uuid::parse_str(task_id).is_err() {
        return Err(not_found());
    }
    app.store
        .get_task(id, task_id)
        .await?
        .map(|v| v.value)
        .ok_or_else(not_found)
}

#[utoipa::path(get, path = "/v1/databases/{id}/tasks/{task_id}", tag = "tasks",
    params(("id" = String, Path), ("task_id" = String, Path)),
    responses((status = 200, body = Task), (status = 404, body = spec::ApiErrorBody)))]
pub(crate) async fn get(
    State(app): State<AppState>,
    Path((id, task_id)): Path<(String, String)>,
) -> Result<Json<Task>, ApiError> {
    Ok(Json(find_task(&app, &id, &task_id).await?))
}

#[utoipa::path(get, path = "/v1/databases/{id}/tasks/{task_id}/log", tag = "tasks",
    params(("id" = String, Path), ("task_id" = String, Path),
           ("after_entry_id" = Option<String>, Query, description = "exclusive cursor: the last entry id already seen"),
           ("limit" = Option<i64>, Query, description = "1..=1000, default 100")),
    responses((status = 200, body = TaskLog), (status = 404, body = spec::ApiErrorBody)))]
pub(crate) async fn log(
    State(app): State<AppState>,
    Path((id, task_id)): Path<(String, String)>,
    RawQuery(query): RawQuery,
) -> Result<Json<TaskLog>, ApiError> {
    let params = QueryParams::parse(query);
    let limit = params.limit(100, 1000)?;
    let after = uuid_param(&params, "after_entry_id")?;
    // Read the status before the entries: a caller that sees a terminal status then knows
    // the entries it got include the last one.
    let task = find_task(&app, &id, &task_id).await?;
    let entries = app
        .store
        .read_log(&id, &task_id, after.as_deref(), limit)
        .await?;
    let last_entry_id = entries.last().map(|e| e.id.clone()).or(after);
    Ok(Json(TaskLog {
        database_id: id,
        task_id,
        task_status: task.status,
        last_entry_id,
        entries,
    }))
}

#[utoipa::path(post, path = "/v1/databases/{id}/tasks/{task_id}/cancel", tag = "tasks",
    params(("id" = String, Path), ("task_id" = String, Path)),
    responses((status = 200, body = Task), (status = 404, body = spec::ApiErrorBody),
              (status = 409, body = spec::ApiErrorBody)))]
pub(crate) async fn cancel(
    State(app): State<AppState>,
    Path((id, task_id)): Path<(String, String)>,
) -> Result<Json<Task>, ApiError> {
    find_task(&app, &id, &task_id).await?;
    match cancel_task(&app.store, &id, &task_id).await {
        Ok(task) => Ok(Json(task)),
        Err(CancelError::NotFound(m)) => Err(ApiError::NotFound(m)),
        Err(e @ CancelError::AlreadyEnded { .. }) => {
            Err(ApiError::TaskNotCancelable(e.to_string()))
        }
        Err(CancelError::Store(e)) => Err(e.into()),
    }
}
