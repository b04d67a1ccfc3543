use std::collections::{BTreeMap, BTreeSet};

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use spec::parse::{ValidationContext, parse_create_request, parse_update_body};
use spec::{
    CreateDatabaseResponse, Database, DatabaseSpec, DatabaseState, DryRunPlan, InvalidInput,
    ListDatabasesResponse, Task, TaskType,
};
use store::{DatabaseRecord, StoreError, StoredDatabase};

use super::{ApiError, QueryParams, json_body};
use crate::instances::{InstanceRecord, View, api_view};
use crate::state::AppState;
use crate::tasks::new_task;

mod dry_run;
mod ports;

/// The API's view of a stored database: secrets removed.
pub(crate) fn database_view(record: &DatabaseRecord, spec: &DatabaseSpec) -> Database {
    Database {
        id: record.id.clone(),
        tenant_id: record.tenant_id.clone(),
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

/// A database with what runs for it, from the leader's instance records and Patroni's keys
/// (`patroni`, by node).
fn full_view(
    d: &StoredDatabase,
    records: &[InstanceRecord],
    facts: &HostFacts,
    patroni: &BTreeMap<String, plan::PatroniNode>,
) -> Database {
    let mut view = database_view(&d.record, &d.spec);
    for record in records {
        let addresses = facts
            .addresses
            .get(&record.host_id)
            .cloned()
            .unwrap_or_default();
        let node = record.kind.node().and_then(|n| patroni.get(n));
        match api_view(record, &facts.unreachable, &addresses, node) {
            View::Postgres(mut i) => {
                // A node stopped whole keeps no leader key; its last primary is still the
                // one that holds its latest data, until Patroni names another leader.
                let leaderless = node.is_none_or(|n| n.leader.is_none());
                if leaderless && d.record.stopped_primaries.values().any(|p| *p == i.id) {
                    i.role = spec::InstanceRole::Primary;
                }
                view.instances.push(i)
            }
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

/// Refuses a spec that would lose a node's primary (409 naming `spec.nodes[i]`): see
/// [`crate::patroni::takeover::losses`]. Reads the database's records, Patroni's keys and
/// the hosts' leases.
async fn check_primaries(app: &AppState, id: &str, spec: &DatabaseSpec) -> Result<(), ApiError> {
    let existing: Vec<crate::patroni::takeover::Existing> = app
        .store
        .list_instances::<InstanceRecord>(id)
        .await?
        .into_iter()
        .filter_map(|r| {
            Some(crate::patroni::takeover::Existing {
                node: r.kind.node()?.to_string(),
                instance_id: r.instance_id,
                host_id: r.host_id,
            })
        })
        .collect();
    let patroni = crate::patroni::read(&app.store, id).await?;
    let alive = app.store.host_liveness().await?.into_keys().collect();
    let losses = crate::patroni::takeover::losses(id, spec, &patroni, &existing, &alive);
    if losses.is_empty() {
        return Ok(());
    }
    Err(ApiError::PrimaryWouldBeLost(spec::InvalidInput {
        errors: losses,
    }))
}

pub(super) async fn stored(app: &AppState, id: &str) -> Result<StoredDatabase, ApiError> {
    app.store
        .get_database(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("database {id:?} not found")))
}

#[utoipa::path(post, path = "/v1/databases", tag = "databases",
    params(("dry_run" = Option<bool>, Query, description = "`true`: validate as usual, then answer \
        the plan the reconciler would execute now (`DryRunPlan`) and store nothing: no database, \
        no task, no credentials")),
    request_body(content = spec::CreateDatabaseRequest, description = "`{id?, tenant_id?, spec}`"),
    responses((status = 200, body = ChangeOrPlan,
               description = "the accepted database and its task; with `dry_run=true`, the plan"),
              (status = 400, body = spec::ApiErrorBody), (status = 409, body = spec::ApiErrorBody),
              (status = 413, body = spec::ApiErrorBody)))]
#[tracing::instrument(skip_all, fields(database_id))]
pub(crate) async fn create(
    State(app): State<AppState>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Result<Response, ApiError> {
    let params = QueryParams::parse(query);
    let dry_run = params.flag("dry_run")?;
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
    spec::backup::check_restores(&request.spec, true).map_err(ApiError::InvalidInput)?;
    spec::backup::check_repositories(&request.spec, true).map_err(ApiError::InvalidInput)?;
    check_limits(&app, &request.spec).await?;
    let id = request
        .id
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    tracing::Span::current().record("database_id", id.as_str());
    ports::check_ports(&app, &id, &request.spec).await?;

    let now = Utc::now();
    let task = new_task(&id, TaskType::Create);
    let record = DatabaseRecord {
        id: id.clone(),
        state: DatabaseState::Creating,
        created_at: now,
        updated_at: now,
        generation: 1,
        current_task_id: Some(task.task_id.clone()),
        tenant_id: request.tenant_id,
        forced_generation: 0,
        operation: None,
        stopped_instances: Default::default(),
        stopped_primaries: Default::default(),
        restored_nodes: Default::default(),
    };
    if dry_run {
        if app.store.get_database(&id).await?.is_some() {
            return Err(ApiError::DatabaseAlreadyExists(id));
        }
        let db = StoredDatabase {
            record,
            spec: request.spec,
            spec_revision: 0,
        };
        return plan_only(&app, &db, false).await;
    }
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
    })
    .into_response())
}

/// What create and update answer, for the OpenAPI document: the accepted change, or with
/// `dry_run=true` the plan (the handlers build the response from either directly).
#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(untagged)]
#[allow(dead_code, clippy::large_enum_variant)]
pub(crate) enum ChangeOrPlan {
    Accepted(CreateDatabaseResponse),
    DryRun(DryRunPlan),
}

/// The dry-run answer for `db` as it would be stored (see [`dry_run`]).
async fn plan_only(
    app: &AppState,
    db: &StoredDatabase,
    forced: bool,
) -> Result<Response, ApiError> {
    let facts = dry_run::facts(app, &db.record.id).await?;
    let plan: DryRunPlan = dry_run::dry_run_plan(db, facts, &app.manifest, forced)?;
    tracing::info!(steps = plan.steps.len(), "dry run planned; nothing stored");
    Ok(Json(plan).into_response())
}

#[utoipa::path(get, path = "/v1/databases", tag = "databases",
    responses((status = 200, body = ListDatabasesResponse)))]
pub(crate) async fn list(
    State(app): State<AppState>,
) -> Result<Json<ListDatabasesResponse>, ApiError> {
    let facts = host_facts(&app).await?;
    // One read of every instance record, and one of Patroni's keys, not one per database.
    let mut records: std::collections::BTreeMap<String, Vec<InstanceRecord>> = Default::default();
    for r in app.store.list_all_instances::<InstanceRecord>().await? {
        records.entry(r.database_id.clone()).or_default().push(r);
    }
    let patroni: BTreeMap<String, BTreeMap<String, plan::PatroniNode>> = app
        .store
        .all_patroni_keys()
        .await?
        .into_iter()
        .map(|(db, keys)| (db, crate::patroni::parse(&keys)))
        .collect();
    let no_keys = BTreeMap::new();
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
                patroni.get(&d.record.id).unwrap_or(&no_keys),
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
    let patroni = crate::patroni::read(&app.store, &id).await?;
    Ok(Json(full_view(
        &d,
        &records,
        &host_facts(&app).await?,
        &patroni,
    )))
}

/// The record of the next generation of a database, in `state`.
/// A new spec keeps stopped only the instances it still has, and a node's stopped primary
/// only while the node and that instance stay: an instance the spec drops goes with its
/// data, and one added again later is a new instance that runs.
fn keep_stopped_of(record: &mut DatabaseRecord, spec: &DatabaseSpec) {
    let wanted: BTreeSet<String> = spec
        .nodes
        .iter()
        .flat_map(|n| {
            n.host_ids
                .iter()
                .map(|h| plan::postgres_instance_id(&record.id, &n.name, h))
        })
        .collect();
    record.stopped_instances.retain(|i| wanted.contains(i));
    record.stopped_primaries.retain(|_, i| wanted.contains(i));
}

/// An operation not carried out yet (its task canceled) goes with the new generation.
fn next_record(current: &DatabaseRecord, state: DatabaseState) -> DatabaseRecord {
    DatabaseRecord {
        state,
        updated_at: Utc::now(),
        generation: current.generation + 1,
        operation: None,
        ..current.clone()
    }
}

/// Accepts a new generation of a database's spec with its task, unless another writer
/// changed the spec since it was read here. `current`'s record may carry what else changes
/// (tenant, force); its spec revision is the one compared.
async fn write_generation(
    app: &AppState,
    current: &StoredDatabase,
    spec: &DatabaseSpec,
    state: DatabaseState,
    task_type: TaskType,
) -> Result<(DatabaseRecord, Task), ApiError> {
    let task = new_task(&current.record.id, task_type);
    let record = DatabaseRecord {
        current_task_id: Some(task.task_id.clone()),
        ..next_record(&current.record, state)
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
    params(("database_id" = String, Path),
           ("dry_run" = Option<bool>, Query, description = "`true`: validate as usual, then answer \
               the plan the reconciler would execute now (`DryRunPlan`) and store nothing"),
           ("force_update" = Option<bool>, Query, description = "`true`: apply even an unchanged \
               spec: the task replaces every instance (Postgres and services; data directories \
               are kept), as the reference API's `force_update` updates every resource")),
    request_body(content = spec::UpdateDatabaseRequest, description = "`{tenant_id?, spec}`: a declarative full \
        replace of the spec; `tenant_id` left out keeps the stored one"),
    responses((status = 200, body = ChangeOrPlan,
               description = "the database and the task of the change; with `dry_run=true`, the plan"),
              (status = 400, body = spec::ApiErrorBody),
              (status = 404, body = spec::ApiErrorBody),
              (status = 409, description = "the database is being deleted or was changed meanwhile, a fixed port \
               is taken, or the spec would lose a node's primary (`errors` names each such `spec.nodes[i]`)",
               body = spec::ApiErrorBody),
              (status = 413, body = spec::ApiErrorBody)))]
#[tracing::instrument(skip_all, fields(database_id = %id))]
pub(crate) async fn update(
    State(app): State<AppState>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Result<Response, ApiError> {
    let params = QueryParams::parse(query);
    let dry_run = params.flag("dry_run")?;
    let forced = params.flag("force_update")?;
    let body = json_body(&body)?;
    let current = stored(&app, &id).await?;
    if current.record.state == DatabaseState::Deleting {
        return Err(ApiError::DatabaseNotModifiable(format!(
            "database {id:?} is being deleted"
        )));
    }
    let request = parse_with_hosts(&app, |hosts| {
        let ctx = ValidationContext {
            manifest: &app.manifest,
            known_hosts: Some(hosts),
            previous: Some(&current.spec),
        };
        parse_update_body(&body, &ctx)
    })
    .await?;
    let spec = request.spec;
    super::operations::refuse_during_operation(&app, &current).await?;
    spec::backup::check_restores(&spec, false).map_err(ApiError::InvalidInput)?;
    spec::backup::check_repositories(&spec, false).map_err(ApiError::InvalidInput)?;
    check_limits(&app, &spec).await?;
    ports::check_ports(&app, &id, &spec).await?;
    // Refused alike with dry_run: the plan it would show could not be carried out.
    check_primaries(&app, &id, &spec).await?;
    // What the change does to the record besides the generation: the tenant if one is
    // given, and a force makes every instance's hash new (`reconciler::inputs`).
    let mut base = current.clone();
    if let Some(tenant) = request.tenant_id {
        base.record.tenant_id = Some(tenant);
    }
    if forced {
        base.record.forced_generation = current.record.generation + 1;
    }
    keep_stopped_of(&mut base.record, &spec);
    if dry_run {
        let db = StoredDatabase {
            record: next_record(&base.record, DatabaseState::Modifying),
            spec,
            spec_revision: current.spec_revision,
        };
        return plan_only(&app, &db, forced).await;
    }
    let (record, task) = write_generation(
        &app,
        &base,
        &spec,
        DatabaseState::Modifying,
        TaskType::Update,
    )
    .await?;
    if forced {
        tracing::info!(task_id = %task.task_id, "force_update: every instance is replaced");
    }
    Ok(Json(CreateDatabaseResponse {
        task,
        database: database_view(&record, &spec),
    })
    .into_response())
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
    super::operations::refuse_during_operation(&app, &current).await?;
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
