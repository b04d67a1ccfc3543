//! `GET /v1/tasks`: tasks across every database and host, and the `GET` form of a database
//! task's cancel, both as in the reference API.

use axum::Json;
use axum::extract::{Path, RawQuery, State};
use spec::{ListTasksResponse, Task, TaskScope};

use super::{ApiError, QueryParams, SortOrder};
use crate::state::AppState;

/// Tasks of every database and host, newest first by default. `entity_id` narrows to one
/// database or host and needs `scope`; an entity without tasks gives an empty list.
#[utoipa::path(get, path = "/v1/tasks", tag = "tasks",
    params(("scope" = Option<TaskScope>, Query, description = "only tasks of this scope"),
           ("entity_id" = Option<String>, Query,
               description = "only the tasks of this database or host id; requires `scope`"),
           ("after_task_id" = Option<String>, Query,
               description = "exclusive cursor: the last task id of the previous page, in the chosen order"),
           ("limit" = Option<i64>, Query, description = "1..=1000, default 100"),
           ("sort_order" = Option<SortOrder>, Query,
               description = "`desc` (newest first, the default) or `asc`, or their long forms")),
    responses((status = 200, body = ListTasksResponse), (status = 400, body = spec::ApiErrorBody)))]
pub(crate) async fn list(
    State(app): State<AppState>,
    RawQuery(query): RawQuery,
) -> Result<Json<ListTasksResponse>, ApiError> {
    let params = QueryParams::parse(query);
    let super::TaskPage {
        limit,
        after,
        order,
    } = params.task_page()?;
    let scope = match params.get("scope") {
        None => None,
        Some(s) => Some(TaskScope::parse(s).ok_or_else(|| {
            ApiError::invalid("scope", format!("expected database or host, got {s:?}"))
        })?),
    };
    let after = after.as_deref();
    let tasks = match (scope, params.get("entity_id")) {
        (None, Some(_)) => {
            return Err(ApiError::invalid(
                "entity_id",
                "requires scope (database or host)",
            ));
        }
        (Some(TaskScope::Database), Some(db)) => {
            app.store.list_tasks(db, after, limit, order).await?
        }
        (Some(TaskScope::Host), Some(host)) => {
            app.store.list_host_tasks(host, after, limit, order).await?
        }
        (scope, None) => app.store.list_all_tasks(scope, after, limit, order).await?,
    };
    Ok(Json(ListTasksResponse { tasks }))
}

/// The reference API's form of `POST .../cancel`: the same effect and answer.
#[utoipa::path(get, path = "/v1/databases/{database_id}/tasks/{task_id}/cancel", tag = "tasks",
    params(("database_id" = String, Path), ("task_id" = String, Path)),
    responses((status = 200, body = Task), (status = 404, body = spec::ApiErrorBody),
              (status = 409, body = spec::ApiErrorBody)))]
pub(crate) async fn cancel(
    state: State<AppState>,
    path: Path<(String, String)>,
) -> Result<Json<Task>, ApiError> {
    super::tasks::cancel(state, path).await
}
