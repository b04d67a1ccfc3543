use axum::Json;
use axum::extract::{Path, State};
use spec::{Host, ListHostsResponse};

use super::ApiError;
use crate::hosts::hosts_with_status;
use crate::state::AppState;

#[utoipa::path(get, path = "/v1/hosts", tag = "hosts", responses((status = 200, body = ListHostsResponse)))]
pub(crate) async fn list(State(app): State<AppState>) -> Result<Json<ListHostsResponse>, ApiError> {
    Ok(Json(ListHostsResponse {
        hosts: hosts_with_status(&app.store).await?,
    }))
}

#[utoipa::path(get, path = "/v1/hosts/{id}", tag = "hosts", params(("id" = String, Path)),
    responses((status = 200, body = Host), (status = 404, body = spec::ApiErrorBody)))]
pub(crate) async fn get(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Host>, ApiError> {
    hosts_with_status(&app.store)
        .await?
        .into_iter()
        .find(|h| h.id == id)
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("host {id:?} not found")))
}
