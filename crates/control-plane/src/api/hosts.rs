use axum::Json;
use axum::extract::{Path, State};
use base64::Engine;
use chrono::{DateTime, Utc};
use serde::Serialize;
use spec::{Host, ListHostsResponse};

use super::ApiError;
use crate::hosts::hosts_with_status;
use crate::state::AppState;

/// How long a re-join token can be used.
const REJOIN_TOKEN_TTL: chrono::Duration = chrono::Duration::hours(1);

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

/// The answer to removing a host.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct RemovedHost {
    pub id: String,
    /// The serial number (hex) of the certificate now on the deny list; absent when the host
    /// had none recorded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revoked_certificate_serial: Option<String>,
}

/// Whether `host_id` has joined or registered.
async fn host_exists(app: &AppState, host_id: &str) -> Result<bool, ApiError> {
    Ok(app.store.get_host(host_id).await?.is_some()
        || app.store.host_certificate(host_id).await?.is_some())
}

/// Removes a host: its record goes, its certificate is revoked (refused on every later call),
/// and its host id may join again with the fleet's join token. Refused (409) while a database
/// spec places instances on it.
#[utoipa::path(delete, path = "/v1/hosts/{id}", tag = "hosts", params(("id" = String, Path)),
    responses((status = 200, body = RemovedHost), (status = 404, body = spec::ApiErrorBody),
        (status = 409, body = spec::ApiErrorBody)))]
pub(crate) async fn remove(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<RemovedHost>, ApiError> {
    if !host_exists(&app, &id).await? {
        return Err(ApiError::NotFound(format!("host {id:?} not found")));
    }
    let placed: Vec<String> = app
        .store
        .list_databases()
        .await?
        .into_iter()
        .filter(|d| {
            let s = &d.spec;
            s.nodes.iter().any(|n| n.host_ids.contains(&id))
                || s.services.iter().any(|v| v.host_ids.contains(&id))
        })
        .map(|d| d.record.id)
        .collect();
    if !placed.is_empty() {
        return Err(ApiError::Conflict(format!(
            "host {id:?} is named by the specs of databases {}; move their instances off it first",
            placed.join(", ")
        )));
    }
    let revoked = app.store.remove_host(&id).await?;
    app.known_hosts.forget(&id);
    tracing::info!(host_id = %id, revoked_serial = revoked.as_deref(), "host removed; its certificate is revoked");
    Ok(Json(RemovedHost {
        id,
        revoked_certificate_serial: revoked,
    }))
}

/// A re-join token, returned once.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct RejoinTokenResponse {
    pub host_id: String,
    /// Give it to the host's agent as its join token (`--join-token`). Usable once, by this
    /// host id only, until `expires_at`; the certificate the host had is revoked when it is used.
    pub rejoin_token: String,
    pub expires_at: DateTime<Utc>,
}

/// Issues a host-bound, single-use re-join token, for a host that lost its certificate (a
/// reinstalled machine) or whose certificate must be replaced. A new one replaces an unused one.
#[utoipa::path(post, path = "/v1/hosts/{id}/rejoin-token", tag = "hosts", params(("id" = String, Path)),
    responses((status = 200, body = RejoinTokenResponse), (status = 404, body = spec::ApiErrorBody)))]
pub(crate) async fn rejoin_token(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<RejoinTokenResponse>, ApiError> {
    if !host_exists(&app, &id).await? {
        return Err(ApiError::NotFound(format!(
            "host {id:?} not found; a new host joins with the fleet's join token"
        )));
    }
    let token = format!(
        "berth-rejoin_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
    );
    let now = Utc::now();
    let stored = store::RejoinToken {
        sha256: crate::registry::sha256_hex(&token),
        created_at: now,
        expires_at: now + REJOIN_TOKEN_TTL,
    };
    app.store.put_rejoin_token(&id, &stored).await?;
    tracing::info!(host_id = %id, expires_at = %stored.expires_at, "issued a re-join token");
    Ok(Json(RejoinTokenResponse {
        host_id: id,
        rejoin_token: token,
        expires_at: stored.expires_at,
    }))
}
