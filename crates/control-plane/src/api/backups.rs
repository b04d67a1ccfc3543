//! `GET /v1/databases/{database_id}/nodes/{node_name}/backups`: the node's backups in its
//! repositories, as pgBackRest listed them after the node's last backup task (ADR 022).
//! `POST` on the same path is an operation (`super::operations::backup`).

use axum::Json;
use axum::extract::{Path, State};

use super::ApiError;
use super::databases::stored;
use crate::reconciler::backups::BackupList;
use crate::state::AppState;

#[utoipa::path(get, path = "/v1/databases/{database_id}/nodes/{node_name}/backups",
    tag = "databases",
    params(("database_id" = String, Path), ("node_name" = String, Path)),
    responses((status = 200, body = BackupList, description = "the node's backups, oldest \
               first (none before its first backup task)"),
              (status = 404, body = spec::ApiErrorBody)))]
#[tracing::instrument(skip_all, fields(database_id = %id, node = %node))]
pub(crate) async fn list(
    State(app): State<AppState>,
    Path((id, node)): Path<(String, String)>,
) -> Result<Json<BackupList>, ApiError> {
    let d = stored(&app, &id).await?;
    if !d.spec.nodes.iter().any(|n| n.name == node) {
        return Err(ApiError::NotFound(format!(
            "node {node:?} not found in database {id:?}"
        )));
    }
    let list = app
        .store
        .get_backups::<BackupList>(&id, &node)
        .await?
        .unwrap_or_default();
    Ok(Json(list))
}
