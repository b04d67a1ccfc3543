use std::collections::BTreeSet;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use chrono::Utc;
use spec::parse::{ValidationContext, parse_create_request, parse_update_request};
use spec::{
    CreateDatabaseResponse, Database, DatabaseSpec, DatabaseState, InvalidInput,
    ListDatabasesResponse, Task, TaskType,
};
use store::{DatabaseRecord, StoreError, StoredDatabase};

use super::{ApiError, json_body};
use crate::instances::{InstanceRecord, View, api_view};
use crate::state::AppState;
use crate::tasks::new_task;

/// The API's view of a stored database: secrets removed.
pub(crate) fn database_view(record: &DatabaseRecord, spec: &DatabaseSpec) -> Database {
    Database {
        id: record.id.clone(),
        state: record.state,
        created_at: record.created_at,
        updated_at: record.updated_at,
        spec: spec::secrets::redact_spec(spec),
        instances: Vec::new(),
        service_instances: Vec::new(),
    }
}

/// Hosts as instance views need them: who is unreachable, and each host's addresses.
struct HostFacts {
    unreachable: BTreeSet<String>,
    addresses: std::collections::BTreeMap<String, Vec<String>>,
}

async fn host_facts(app: &AppState) -> Result<HostFacts, ApiError> {
    let alive = app.store.host_liveness().await?;
    let hosts = app.store.list_hosts().await?;
    Ok(HostFacts {
        unreachable: hosts
            .iter()
            .filter(|h| !alive.contains_key(&h.id))
            .map(|h| h.id.clone())
            .collect(),
        addresses: hosts.into_iter().map(|h| (h.id, h.addresses)).collect(),
    })
}

/// A database with what runs for it, from the leader's instance records.
fn full_view(d: &StoredDatabase, records: &[InstanceRecord], facts: &HostFacts) -> Database {
    let mut view = database_view(&d.record, &d.spec);
    for record in records {
        let addresses = facts
            .addresses
            .get(&record.host_id)
            .cloned()
            .unwrap_or_default();
        match api_view(record, &facts.unreachable, &addresses) {
            View::Postgres(i) => view.instances.push(i),
            View::Service(s) => view.service_instances.push(s),
        }
    }
    view
}

/// Parses a request against the registered hosts: the cached set first, and only when that
/// fails, the set read afresh (a host named in the request may have just registered).
async fn parse_with_hosts<T>(
    app: &AppState,
    parse: impl Fn(&BTreeSet<String>) -> Result<T, InvalidInput>,
) -> Result<T, ApiError> {
    let cached = app.known_hosts.cached();
    match parse(&cached) {
        Ok(parsed) => Ok(parsed),
        Err(invalid) => {
            let fresh = app.known_hosts.refresh(&app.store).await?;
            if fresh.len() == cached.len() {
                return Err(ApiError::InvalidInput(invalid));
            }
            parse(&fresh).map_err(ApiError::InvalidInput)
        }
    }
}

/// Refuses cpu and memory limits that a host the service is placed on cannot give, as
/// registered (`GET /v1/hosts`): read only when the spec sets a limit.
async fn check_limits(app: &AppState, spec: &DatabaseSpec) -> Result<(), ApiError> {
    if !spec::limits::has_limits(spec) {
        return Ok(());
    }
    let hosts = app
        .store
        .list_hosts()
        .await?
        .into_iter()
        .map(|h| {
            let capacity = spec::limits::HostCapacity {
                cpus: h.cpus,
                memory_bytes: h.memory_bytes,
            };
            (h.id, capacity)
        })
        .collect();
    spec::limits::check_against_hosts(spec, &hosts).map_err(ApiError::InvalidInput)
}

async fn stored(app: &AppState, id: &str) -> Result<StoredDatabase, ApiError> {
    app.store
        .get_database(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("database {id:?} not found")))
}

#[utoipa::path(post, path = "/v1/databases", tag = "databases",
    request_body(content = spec::CreateDatabaseRequest, description = "`{id?, spec}`"),
    responses((status = 200, body = CreateDatabaseResponse), (status = 400, body = spec::ApiErrorBody),
              (status = 409, body = spec::ApiErrorBody)))]
#[tracing::instrument(skip_all, fields(database_id))]
pub(crate) async fn create(
    State(app): State<AppState>,
    body: Bytes,
) -> Result<Json<CreateDatabaseResponse>, ApiError> {
    let body = json_body(&body)?;
    let request = parse_with_hosts(&app, |hosts| {
        let ctx = ValidationContext {
            manifest: &app.manifest,
            known_hosts: Some(hosts),
            previous: None,
        };
        parse_create_request(&body, &ctx)
    })
    .await?;
    check_limits(&app, &request.spec).await?;
    let id = request
        .id
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    tracing::Span::current().record("database_id", id.as_str());

    let now = Utc::now();
    let task = new_task(&id, TaskType::Create);
    let record = DatabaseRecord {
        id: id.clone(),
        state: DatabaseState::Creating,
        created_at: now,
        updated_at: now,
        generation: 1,
        current_task_id: Some(task.task_id.clone()),
    };
    match app
        .store
        .create_database(&record, &request.spec, &task)
        .await
    {
        Ok(()) => {}
        Err(StoreError::AlreadyExists) => return Err(ApiError::DatabaseAlreadyExists(id)),
        Err(e) => return Err(e.into()),
    }
    tracing::info!(task_id = %task.task_id, "database accepted");
    Ok(Json(CreateDatabaseResponse {
        task,
        database: database_view(&record, &request.spec),
    }))
}

#[utoipa::path(get, path = "/v1/databases", tag = "databases",
    responses((status = 200, body = ListDatabasesResponse)))]
pub(crate) async fn list(
    State(app): State<AppState>,
) -> Result<Json<ListDatabasesResponse>, ApiError> {
    let facts = host_facts(&app).await?;
    // One read of every instance record, not one per database.
    let mut records: std::collections::BTreeMap<String, Vec<InstanceRecord>> = Default::default();
    for r in app.store.list_all_instances::<InstanceRecord>().await? {
        records.entry(r.database_id.clone()).or_default().push(r);
    }
    let databases = app
        .store
        .list_databases()
        .await?
        .iter()
        .map(|d| {
            full_view(
                d,
                records.get(&d.record.id).map_or(&[][..], Vec::as_slice),
                &facts,
            )
        })
        .collect();
    Ok(Json(ListDatabasesResponse { databases }))
}

#[utoipa::path(get, path = "/v1/databases/{database_id}", tag = "databases",
    params(("database_id" = String, Path)),
    responses((status = 200, body = Database), (status = 404, body = spec::ApiErrorBody)))]
pub(crate) async fn get(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Database>, ApiError> {
    let d = stored(&app, &id).await?;
    let records = app.store.list_instances::<InstanceRecord>(&id).await?;
    Ok(Json(full_view(&d, &records, &host_facts(&app).await?)))
}

/// Accepts a new generation of a database's spec with its task, unless another writer
/// changed the spec since it was read here.
async fn write_generation(
    app: &AppState,
    current: &StoredDatabase,
    spec: &DatabaseSpec,
    state: DatabaseState,
    task_type: TaskType,
) -> Result<(DatabaseRecord, Task), ApiError> {
    let task = new_task(&current.record.id, task_type);
    let record = DatabaseRecord {
        state,
        updated_at: Utc::now(),
        generation: current.record.generation + 1,
        current_task_id: Some(task.task_id.clone()),
        ..current.record.clone()
    };
    match app
        .store
        .update_database(current.spec_revision, &record, spec, &task)
        .await
    {
        Ok(()) => {}
        Err(StoreError::Conflict) => {
            return Err(ApiError::Conflict(format!(
                "database {:?} was modified by another request; read it again and resubmit",
                record.id
            )));
        }
        Err(e) => return Err(e.into()),
    }
    tracing::info!(task_id = %task.task_id, generation = record.generation, "database change accepted");
    Ok((record, task))
}

#[utoipa::path(post, path = "/v1/databases/{database_id}", tag = "databases",
    params(("database_id" = String, Path)),
    request_body(content = spec::UpdateDatabaseRequest, description = "`{spec}`: a declarative full replace"),
    responses((status = 200, body = CreateDatabaseResponse), (status = 400, body = spec::ApiErrorBody),
              (status = 404, body = spec::ApiErrorBody), (status = 409, body = spec::ApiErrorBody)))]
#[tracing::instrument(skip_all, fields(database_id = %id))]
pub(crate) async fn update(
    State(app): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<CreateDatabaseResponse>, ApiError> {
    let body = json_body(&body)?;
    let current = stored(&app, &id).await?;
    if current.record.state == DatabaseState::Deleting {
        return Err(ApiError::DatabaseNotModifiable(format!(
            "database {id:?} is being deleted"
        )));
    }
    let spec = parse_with_hosts(&app, |hosts| {
        let ctx = ValidationContext {
            manifest: &app.manifest,
            known_hosts: Some(hosts),
            previous: Some(&current.spec),
        };
        parse_update_request(&body, &ctx)
    })
    .await?;
    check_limits(&app, &spec).await?;
    let (record, task) = write_generation(
        &app,
        &current,
        &spec,
        DatabaseState::Modifying,
        TaskType::Update,
    )
    .await?;
    Ok(Json(CreateDatabaseResponse {
        task,
        database: database_view(&record, &spec),
    }))
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub(crate) struct DeleteDatabaseResponse {
    task: Task,
}

#[utoipa::path(delete, path = "/v1/databases/{database_id}", tag = "databases",
    params(("database_id" = String, Path)),
    responses((status = 200, body = DeleteDatabaseResponse), (status = 404, body = spec::ApiErrorBody),
              (status = 409, body = spec::ApiErrorBody)))]
#[tracing::instrument(skip_all, fields(database_id = %id))]
pub(crate) async fn delete(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<DeleteDatabaseResponse>, ApiError> {
    let current = stored(&app, &id).await?;
    if current.record.state == DatabaseState::Deleting {
        return Err(ApiError::DatabaseNotModifiable(format!(
            "database {id:?} is already being deleted"
        )));
    }
    let (_, task) = write_generation(
        &app,
        &current,
        &current.spec,
        DatabaseState::Deleting,
        TaskType::Delete,
    )
    .await?;
    Ok(Json(DeleteDatabaseResponse { task }))
}
