use axum::Json;
use axum::extract::{Path, RawQuery, State};
use base64::Engine;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::json;
use spec::{Host, ListHostsResponse, RemoveHostResponse, Task, TaskScope, TaskStatus, TaskType};

use super::{ApiError, QueryParams};
use crate::hosts::hosts_with_status;
use crate::instances::InstanceRecord;
use crate::state::AppState;

/// How long a re-join token can be used.
const REJOIN_TOKEN_TTL: chrono::Duration = chrono::Duration::hours(1);

#[utoipa::path(get, path = "/v1/hosts", tag = "hosts", responses((status = 200, body = ListHostsResponse)))]
pub(crate) async fn list(State(app): State<AppState>) -> Result<Json<ListHostsResponse>, ApiError> {
    Ok(Json(ListHostsResponse {
        hosts: hosts_with_status(&app.store).await?,
    }))
}

#[utoipa::path(get, path = "/v1/hosts/{host_id}", tag = "hosts", params(("host_id" = String, Path)),
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

/// Whether `host_id` has joined or registered.
async fn host_exists(app: &AppState, host_id: &str) -> Result<bool, ApiError> {
    Ok(app.store.get_host(host_id).await?.is_some()
        || app.store.host_certificate(host_id).await?.is_some())
}

/// What stands on a host: the instances recorded on it, and the databases whose specs place
/// instances on it.
async fn placed_on(app: &AppState, host_id: &str) -> Result<(Vec<String>, Vec<String>), ApiError> {
    let instances = app
        .store
        .list_all_instances::<InstanceRecord>()
        .await?
        .into_iter()
        .filter(|r| r.host_id == host_id)
        .map(|r| r.instance_id)
        .collect();
    let databases = app
        .store
        .list_databases()
        .await?
        .into_iter()
        .filter(|d| {
            let s = &d.spec;
            s.nodes
                .iter()
                .any(|n| n.host_ids.iter().any(|h| h == host_id))
                || s.services
                    .iter()
                    .any(|v| v.host_ids.iter().any(|h| h == host_id))
        })
        .map(|d| d.record.id)
        .collect();
    Ok((instances, databases))
}

/// The log of a removal, given the serial being revoked.
fn removal_log(
    host_id: &str,
    forced: Option<(&[String], &[String])>,
    serial: Option<&str>,
) -> Vec<store::LogLine> {
    let fields = |v: serde_json::Value| v.as_object().cloned().unwrap_or_default();
    let mut lines = vec![(
        format!("removing host {host_id}"),
        fields(json!({"host_id": host_id})),
    )];
    if let Some((instances, databases)) = forced {
        lines.push((
            format!(
                "forced: instances [{}] of databases [{}] are left on it; update those databases' specs",
                instances.join(", "),
                databases.join(", ")
            ),
            fields(json!({"instances": instances, "databases": databases})),
        ));
    }
    lines.push((
        "host record, liveness, dial failures and re-join token removed".to_string(),
        serde_json::Map::new(),
    ));
    lines.push(match serial {
        Some(serial) => (
            format!("certificate {serial} revoked: the host's agent is refused from now on"),
            fields(json!({"revoked_certificate_serial": serial})),
        ),
        None => (
            "no certificate was recorded for the host".to_string(),
            serde_json::Map::new(),
        ),
    });
    lines.push((
        format!("host {host_id} removed; its id may join again with the fleet's join token"),
        serde_json::Map::new(),
    ));
    lines
}

/// Removes a host (as in the reference API): its record goes and its join identity is
/// revoked (its certificate goes on the deny list, its re-join token is deleted), so its agent
/// is refused from then on; the host id may join again with the fleet's join token. Refused
/// (409, naming them) while instances are recorded on the host or a database spec places
/// instances on it, unless `force=true`, for a host that is lost for good: then those
/// instances are left in their databases' specs, to be moved by updating them. The removal is
/// a task of scope `host` whose log says what was done; it has ended when the answer is sent.
#[utoipa::path(delete, path = "/v1/hosts/{host_id}", tag = "hosts",
    params(("host_id" = String, Path),
           ("force" = Option<bool>, Query,
               description = "remove the host even though instances are on it (a host lost for good)")),
    responses((status = 200, body = RemoveHostResponse), (status = 400, body = spec::ApiErrorBody),
        (status = 404, body = spec::ApiErrorBody), (status = 409, body = spec::ApiErrorBody)))]
pub(crate) async fn remove(
    State(app): State<AppState>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Json<RemoveHostResponse>, ApiError> {
    let force = QueryParams::parse(query).flag("force")?;
    if !host_exists(&app, &id).await? {
        return Err(ApiError::NotFound(format!("host {id:?} not found")));
    }
    let (instances, databases) = placed_on(&app, &id).await?;
    let occupied = !instances.is_empty() || !databases.is_empty();
    if occupied && !force {
        return Err(ApiError::Conflict(format!(
            "host {id:?} runs instances [{}] and the specs of databases [{}] place instances on it; \
             move them off it first, or pass force=true for a host that is lost for good",
            instances.join(", "),
            databases.join(", ")
        )));
    }
    let forced = occupied.then_some((instances.as_slice(), databases.as_slice()));
    let (revoked, task) = app
        .store
        .remove_host_recorded(&id, |serial| {
            (removal_task(&id), removal_log(&id, forced, serial))
        })
        .await?;
    app.known_hosts.forget(&id);
    tracing::info!(host_id = %id, task_id = %task.task_id, forced = occupied,
        revoked_serial = revoked.as_deref(), "host removed; its certificate is revoked");
    Ok(Json(RemoveHostResponse {
        task,
        update_database_tasks: Vec::new(),
        revoked_certificate_serial: revoked,
    }))
}

/// The removal's task, ended: the removal is one transaction, written with its task.
fn removal_task(host_id: &str) -> Task {
    let now = Utc::now();
    Task {
        task_id: uuid::Uuid::now_v7().to_string(),
        database_id: String::new(),
        scope: TaskScope::Host.as_str().into(),
        entity_id: host_id.to_string(),
        task_type: TaskType::RemoveHost,
        status: TaskStatus::Completed,
        created_at: now,
        updated_at: now,
        completed_at: Some(now),
        error: None,
    }
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
#[utoipa::path(post, path = "/v1/hosts/{host_id}/rejoin-token", tag = "hosts", params(("host_id" = String, Path)),
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
