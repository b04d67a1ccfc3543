use std::time::Duration;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Path, RawQuery, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use spec::{ListTasksResponse, Task, TaskLog, TaskLogEntry};
use store::ListOrder;

use super::{ApiError, QueryParams};
use crate::state::AppState;
use crate::tasks::{CancelError, cancel as cancel_task};

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

#[utoipa::path(get, path = "/v1/databases/{database_id}/tasks", tag = "tasks",
    params(("database_id" = String, Path),
           ("after_task_id" = Option<String>, Query, description = "exclusive cursor"),
           ("limit" = Option<i64>, Query, description = "1..=1000, default 100"),
           ("sort_order" = Option<super::SortOrder>, Query, description = "`desc` (newest first, the default) or `asc`, or their long forms")),
    responses((status = 200, body = ListTasksResponse), (status = 404, body = spec::ApiErrorBody)))]
pub(crate) async fn list(
    State(app): State<AppState>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Json<ListTasksResponse>, ApiError> {
    let params = QueryParams::parse(query);
    let super::TaskPage {
        limit,
        after,
        order,
    } = params.task_page()?;
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

#[utoipa::path(get, path = "/v1/databases/{database_id}/tasks/{task_id}", tag = "tasks",
    params(("database_id" = String, Path), ("task_id" = String, Path)),
    responses((status = 200, body = Task), (status = 404, body = spec::ApiErrorBody)))]
pub(crate) async fn get(
    State(app): State<AppState>,
    Path((id, task_id)): Path<(String, String)>,
) -> Result<Json<Task>, ApiError> {
    Ok(Json(find_task(&app, &id, &task_id).await?))
}

#[utoipa::path(get, path = "/v1/databases/{database_id}/tasks/{task_id}/log", tag = "tasks",
    params(("database_id" = String, Path), ("task_id" = String, Path),
           ("after_entry_id" = Option<String>, Query, description = "exclusive cursor: the last entry id already seen"),
           ("limit" = Option<i64>, Query, description = "1..=1000, default 100; ignored with `follow`"),
           ("follow" = Option<bool>, Query, description = "`true`: stream the log as newline-delimited JSON \
               (`application/x-ndjson`), one `TaskLogEntry` per line in entry order, starting after \
               `after_entry_id`: the entries already written, then each new one as it is written. The body \
               ends once the task has ended (completed, failed, canceled) and every entry up to then was sent. \
               When nothing is written for 15 s a blank line is sent as a keep-alive; skip blank lines. A body \
               that breaks off without a clean end is resumed with `after_entry_id` = the last id received.")),
    responses((status = 200, description = "a page of the log; with `follow=true`, the stream of its entries",
               content((TaskLog = "application/json"), (TaskLogEntry = "application/x-ndjson"))),
              (status = 400, body = spec::ApiErrorBody), (status = 404, body = spec::ApiErrorBody)))]
pub(crate) async fn log(
    State(app): State<AppState>,
    Path((id, task_id)): Path<(String, String)>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let params = QueryParams::parse(query);
    let limit = params.limit(100, 1000)?;
    let after = params.uuid("after_entry_id")?;
    if params.flag("follow")? {
        return follow(app, id, task_id, after).await;
    }
    // Read the status before the entries: a caller that sees a terminal status then knows
    // the entries it got include the last one.
    let task = find_task(&app, &id, &task_id).await?;
    let entries = app
        .store
        .read_log(&id, &task_id, after.as_deref(), limit)
        .await?;
    let last_entry_id = entries.last().map(|e| e.id.clone()).or(after);
    Ok(Json(TaskLog {
        scope: "database".into(),
        entity_id: id.clone(),
        database_id: id,
        task_id,
        task_status: task.status,
        last_entry_id,
        entries,
    })
    .into_response())
}

/// With nothing to send for this long, a follower gets a blank line: it keeps proxies and
/// load balancers from closing an idle stream, and tells the client the server is there.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// The log as NDJSON until the task ends (see [`log`]). The follower is owned by the body
/// stream, so a client that goes away drops it, and with it its etcd watch.
async fn follow(
    app: AppState,
    id: String,
    task_id: String,
    after: Option<String>,
) -> Result<Response, ApiError> {
    let not_found = || ApiError::NotFound(format!("task {task_id:?} of database {id:?} not found"));
    if uuid::Uuid::parse_str(&task_id).is_err() {
        return Err(not_found());
    }
    let follower = app
        .store
        .follow_log(&id, &task_id, after.as_deref())
        .await?
        .ok_or_else(not_found)?;
    let lines = futures::stream::unfold(Some(follower), move |state| async move {
        let mut follower = state?;
        match tokio::time::timeout(KEEP_ALIVE, follower.next()).await {
            Err(_) => Some((Ok(Bytes::from_static(b"\n")), Some(follower))),
            Ok(Ok(Some(entry))) => {
                let mut line = serde_json::to_vec(&entry).expect("log entries serialize");
                line.push(b'\n');
                Some((Ok(Bytes::from(line)), Some(follower)))
            }
            Ok(Ok(None)) => None,
            // The body breaks off instead of ending cleanly: the client knows to resume.
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "following a task log failed");
                Some((Err(e), None))
            }
        }
    });
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(lines),
    )
        .into_response())
}

#[utoipa::path(post, path = "/v1/databases/{database_id}/tasks/{task_id}/cancel", tag = "tasks",
    params(("database_id" = String, Path), ("task_id" = String, Path)),
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
        Err(e @ (CancelError::AlreadyEnded { .. } | CancelError::OperationRunning(_))) => {
            Err(ApiError::TaskNotCancelable(e.to_string()))
        }
        Err(CancelError::Store(e)) => Err(e.into()),
    }
}
