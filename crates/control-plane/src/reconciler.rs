//! The leader's reconciliation: for each database, compare the whole desired state with the
//! whole observed state, plan, execute, and plan again until nothing is left to do.
//!
//! Level-triggered: a worker per database never learns why it runs (a spec change, an agent
//! event, a host coming back, the safety-net timer), so a restarted leader simply finishes
//! whatever is unfinished. Only one pass per database runs at a time; pokes that arrive
//! meanwhile are coalesced into one more pass.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agent_proto::{
    ApplyInstanceRequest, ExecRequest, Health, InstanceState, InstanceStatus,
    RemoveInstanceRequest, ResizeInstanceRequest, apply_event,
};
use chrono::Utc;
use plan::{ApplyReason, InstanceKind, PlanInput, Step};
use serde_json::{Map, Value, json};
use spec::manifest::Manifest;
use spec::{DatabaseState, Task, TaskStatus};
use store::{Store, StoreError, StoredDatabase};
use tokio::sync::mpsc;

use crate::credentials::{DatabaseCredentials, create_roles_sql, drop_roles_sql, psql_argv};
use crate::desired::{
    DESIRED_HASH_LABEL, Desired, Topology, desired_instances, postgres_cert_names,
};
use crate::fleet::{Fleet, Poke};
use crate::instances::{InstanceRecord, ObservedView, Phase, view_of};
use crate::tasks::transition;

/// How often every database is reconciled even if nothing was heard: the safety net for a
/// lost event, never the main trigger.
/// Every trigger that matters is an event (etcd watch, agent streams that resend a full
/// snapshot on reconnect), so the sweep is rare: it costs a pass over every database.
pub const SAFETY_NET_PERIOD: Duration = Duration::from_secs(300);
const MAX_PASSES: usize = 20;
/// How long a task waits for a host that heartbeats but whose agent cannot be dialled
/// before it fails naming the host and address.
pub const HOST_DIAL_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Step(String),
    #[error("{0}")]
    Desired(#[from] crate::desired::DesiredError),
}

/// Appends to the current task's log (if the change has a task) and to the process log.
#[derive(Clone)]
struct TaskLog {
    store: Store,
    database_id: String,
    task_id: Option<String>,
}

impl TaskLog {
    async fn line(
        &self,
        message: impl Into<String>,
        fields: Map<String, Value>,
    ) -> Result<(), StoreError> {
        let message = message.into();
        tracing::info!(database_id = %self.database_id, task_id = ?self.task_id, fields = %serde_json::Value::Object(fields.clone()), "{message}");
        match &self.task_id {
            Some(task_id) => self
                .store
                .append_log(&self.database_id, task_id, message, fields)
                .await
                .map(|_| ()),
            None => Ok(()),
        }
    }
}

fn fields(pairs: &[(&str, &str)]) -> Map<String, Value> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), json!(v)))
        .collect()
}

pub struct Reconciler {
    store: Store,
    fleet: Fleet,
    tls: Arc<crate::tls::FleetTls>,
    manifest: Arc<Manifest>,
    pokes: mpsc::UnboundedSender<Poke>,
    workers: Mutex<HashMap<String, mpsc::UnboundedSender<()>>>,
    tasks: Mutex<tokio::task::JoinSet<()>>,
}

/// Everything one pass over one database works with.
struct Pass {
    db: StoredDatabase,
    task: Option<Task>,
    log: TaskLog,
    desired: BTreeMap<String, Desired>,
    records: BTreeMap<String, InstanceRecord>,
    creds: DatabaseCredentials,
}

enum Outcome {
    Converged,
    Gone,
}

impl Reconciler {
    pub fn new(
        store: Store,
        manifest: Arc<Manifest>,
        pokes: mpsc::UnboundedSender<Poke>,
        tls: Arc<crate::tls::FleetTls>,
    ) -> Arc<Self> {
        let fleet = Fleet::new(store.clone(), pokes.clone(), tls.clone());
        Arc::new(Reconciler {
            store,
            fleet,
            tls,
            manifest,
            pokes,
            workers: Mutex::default(),
            tasks: Mutex::new(tokio::task::JoinSet::new()),
        })
    }

    /// Stops every worker (they hold the reconciler, so dropping it would not).
    pub fn shutdown(&self) {
        self.tasks.lock().expect("tasks lock").abort_all();
        self.workers.lock().expect("workers lock").clear();
    }

    /// Serves pokes until `stop` resolves.
    pub async fn run(
        self: &Arc<Self>,
        mut pokes: mpsc::UnboundedReceiver<Poke>,
        stop: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(stop);
        let mut safety_net = tokio::time::interval(SAFETY_NET_PERIOD);
        loop {
            let poke = tokio::select! {
                _ = &mut stop => return,
                _ = safety_net.tick() => None,
                p = pokes.recv() => match p { Some(p) => p, None => return },
            };
            match poke {
                Some(db) => self.poke(&db),
                None => {
                    // Sweeps asked for in a burst (a hundred agents reconnecting) are one sweep.
                    let mut also = Vec::new();
                    while let Ok(p) = pokes.try_recv() {
                        also.extend(p);
                    }
                    if let Err(e) = self.poke_all().await {
                        tracing::warn!(error = %e, "full reconcile sweep failed; retrying");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        let _ = self.pokes.send(None);
                    }
                    for db in also {
                        self.poke(&db);
                    }
                }
            }
        }
    }

    async fn poke_all(self: &Arc<Self>) -> Result<(), StoreError> {
        let hosts = self.store.list_hosts().await?;
        self.fleet.sync_hosts(&hosts);
        let mut ids: BTreeSet<String> = self
            .store
            .list_databases()
            .await?
            .into_iter()
            .map(|d| d.record.id)
            .collect();
        // Containers of databases that no longer exist (a host that was away during a delete).
        ids.extend(self.fleet.databases());
        for id in ids {
            self.poke(&id);
        }
        Ok(())
    }

    fn poke(self: &Arc<Self>, database_id: &str) {
        let mut workers = self.workers.lock().expect("workers lock");
        if let Some(tx) = workers.get(database_id)
            && tx.send(()).is_ok()
        {
            return;
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let _ = tx.send(());
        workers.insert(database_id.to_string(), tx);
        let this = self.clone();
        let db = database_id.to_string();
        self.tasks
            .lock()
            .expect("tasks lock")
            .spawn(async move { this.worker(db, rx).await });
    }

    async fn worker(self: Arc<Self>, database_id: String, mut rx: mpsc::UnboundedReceiver<()>) {
        let mut backoff = Duration::from_millis(500);
        while rx.recv().await.is_some() {
            while rx.try_recv().is_ok() {}
            let span = tracing::info_span!("reconcile", database_id = %database_id);
            let result =
                tracing::Instrument::instrument(self.reconcile_database(&database_id), span).await;
            match result {
                Ok(Outcome::Converged) => backoff = Duration::from_millis(500),
                Ok(Outcome::Gone) => {
                    let mut workers = self.workers.lock().expect("workers lock");
                    // A poke that raced with our exit gets a fresh worker.
                    if rx.try_recv().is_err() {
                        workers.remove(&database_id);
                        return;
                    }
                    drop(workers);
                    let _ = self.pokes.send(Some(database_id.clone()));
                }
                Err(ReconcileError::Store(StoreError::Fenced)) => {
                    tracing::warn!(database_id, "fenced: no longer the leader");
                    return;
                }
                Err(e) => {
                    tracing::warn!(database_id, error = %e, retry_in = ?backoff, "reconcile pass failed");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                    let _ = self.pokes.send(Some(database_id.clone()));
                }
            }
        }
    }

    /// Reachable = the host's lease is alive and its agent stream has delivered a snapshot.
    /// Also returns the hosts whose lease is alive, synced or not.
    async fn reachable_hosts(&self) -> Result<(BTreeSet<String>, BTreeSet<String>), StoreError> {
        let alive: BTreeSet<String> = self.store.host_liveness().await?.into_keys().collect();
        let reachable = self
            .fleet
            .synced_hosts()
            .into_iter()
            .filter(|h| alive.contains(h))
            .collect();
        Ok((reachable, alive))
    }

    async fn reconcile_database(&self, database_id: &str) -> Result<Outcome, ReconcileError> {
        for _ in 0..MAX_PASSES {
            let Some(mut pass) = self.load(database_id).await? else {
                self.collect_orphans(database_id).await?;
                return Ok(Outcome::Gone);
            };
            if let Some(task) = &pass.task
                && task.status == TaskStatus::Canceling
            {
                self.finish_canceled(&pass).await?;
                return Ok(Outcome::Converged);
            }
            let (reachable, alive) = self.reachable_hosts().await?;
            self.refresh_views(&mut pass, &reachable).await?;
            let input = self.plan_input(&pass, &reachable);
            let plan = plan::plan(&input);
            if plan.is_empty() {
                return match unfinished(&input, &alive) {
                    Unfinished::No => self.converged(pass, &input).await,
                    // An event (a snapshot, a health change) will wake this worker again.
                    Unfinished::Waiting => {
                        if let Some(e) = self.undialable(&pass, &input, &alive).await? {
                            self.fail(&pass, &e).await?;
                            return Ok(Outcome::Converged);
                        }
                        for d in pass.desired.values() {
                            if let Some(why) = &d.waiting_for {
                                pass.log
                                    .line(
                                        format!(
                                            "{} on {} waits: {why}",
                                            d.plan.instance_id, d.plan.host_id
                                        ),
                                        fields(&[
                                            ("instance_id", &d.plan.instance_id),
                                            ("host_id", &d.plan.host_id),
                                        ]),
                                    )
                                    .await?;
                            }
                        }
                        Ok(Outcome::Converged)
                    }
                    Unfinished::Unreachable(hosts) => {
                        let e = ReconcileError::Step(format!("hosts {hosts:?} are unreachable"));
                        self.fail(&pass, &e).await?;
                        Ok(Outcome::Converged)
                    }
                };
            }
            if let Err(e) = self.execute(&mut pass, plan).await {
                self.fail(&pass, &e).await?;
                return Err(e);
            }
        }
        Ok(Outcome::Converged)
    }

    /// Hosts the database needs whose lease is alive but whose agent this replica cannot
    /// dial: each wait is logged, and once one has lasted [`HOST_DIAL_TIMEOUT`] the error
    /// naming the host and its address is returned, to fail the task. A poke is scheduled
    /// for when the wait runs out, since nothing else would wake the worker.
    async fn undialable(
        &self,
        pass: &Pass,
        input: &PlanInput,
        alive: &BTreeSet<String>,
    ) -> Result<Option<ReconcileError>, StoreError> {
        let needed: BTreeSet<&str> = input
            .desired
            .iter()
            .map(|d| d.host_id.as_str())
            .chain(input.applied.iter().map(|r| r.host_id.as_str()))
            .filter(|h| input.unreachable_hosts.contains(*h) && alive.contains(*h))
            .collect();
        let mut next_check: Option<Duration> = None;
        for host in needed {
            let Some(f) = self.fleet.dial_failure(host) else {
                continue;
            };
            let waited = f.since.elapsed();
            if waited >= HOST_DIAL_TIMEOUT {
                return Ok(Some(ReconcileError::Step(format!(
                    "host {host} heartbeats but the control plane cannot reach its agent at {} (for {}s): {}",
                    f.address,
                    waited.as_secs(),
                    f.error
                ))));
            }
            pass.log
                .line(
                    format!(
                        "waiting for host {host}: the control plane cannot reach its agent at {}: {}",
                        f.address, f.error
                    ),
                    fields(&[("host_id", host)]),
                )
                .await?;
            let left = HOST_DIAL_TIMEOUT - waited;
            next_check = Some(next_check.map_or(left, |n| n.min(left)));
        }
        if let Some(after) = next_check {
            let pokes = self.pokes.clone();
            let db = pass.db.record.id.clone();
            tokio::spawn(async move {
                tokio::time::sleep(after + Duration::from_millis(100)).await;
                let _ = pokes.send(Some(db));
            });
        }
        Ok(None)
    }

    async fn load(&self, database_id: &str) -> Result<Option<Pass>, ReconcileError> {
        let Some(db) = self.store.get_database(database_id).await? else {
            return Ok(None);
        };
        let mut task = match &db.record.current_task_id {
            Some(id) => self.store.get_task(database_id, id).await?.map(|v| v.value),
            None => None,
        };
        if let Some(t) = &task
            && t.status.is_terminal()
        {
            task = None;
        }
        let log = TaskLog {
            store: self.store.clone(),
            database_id: database_id.to_string(),
            task_id: task.as_ref().map(|t| t.task_id.clone()),
        };
        if let Some(t) = &mut task
            && t.status == TaskStatus::Pending
        {
            *t = transition(
                &self.store,
                database_id,
                &t.task_id,
                TaskStatus::Running,
                None,
            )
            .await?;
            self.supersede_older_tasks(database_id, &t.task_id).await?;
            log.line(
                format!("task started: {:?} of database {database_id}", t.task_type).to_lowercase(),
                Map::new(),
            )
            .await?;
        }
        let deleting = db.record.state == DatabaseState::Deleting;
        let records: BTreeMap<String, InstanceRecord> = self
            .store
            .list_instances::<InstanceRecord>(database_id)
            .await?
            .into_iter()
            .map(|r| (r.instance_id.clone(), r))
            .collect();
        let topology = Topology {
            hosts: self.fleet.placements(),
            postgres_ports: records
                .values()
                .filter_map(|r| Some((r.instance_id.clone(), r.postgres_port()?)))
                .collect(),
        };
        let stored: Option<DatabaseCredentials> = self.store.get_credentials(database_id).await?;
        let mut creds = stored.clone().unwrap_or_else(DatabaseCredentials::generate);
        if !deleting {
            let added =
                creds.ensure_services(db.spec.services.iter().map(|s| s.service_id.as_str()));
            let names = postgres_cert_names(database_id, &db.spec, &topology);
            let issued = crate::postgres_tls::ensure_certs(
                &mut creds.postgres_certs,
                &names,
                self.tls.authority(),
                Utc::now(),
            )
            .map_err(|e| {
                ReconcileError::Step(format!("cannot issue a Postgres certificate: {e}"))
            })?;
            if added || issued || stored.is_none() {
                // Passwords and keys are durable before any container is given them.
                self.store.put_credentials(database_id, &creds).await?;
            }
        }
        let desired = if deleting {
            BTreeMap::new()
        } else {
            desired_instances(
                database_id,
                &db.spec,
                &self.manifest,
                &creds,
                &topology,
                self.tls.ca_pem(),
            )?
            .into_iter()
            .map(|d| (d.plan.instance_id.clone(), d))
            .collect()
        };
        Ok(Some(Pass {
            db,
            task,
            log,
            desired,
            records,
            creds,
        }))
    }

    /// An older unfinished task of the database is replaced by the newer spec: it ends as
    /// canceled, saying which task took over, instead of hanging forever.
    async fn supersede_older_tasks(
        &self,
        database_id: &str,
        current: &str,
    ) -> Result<(), StoreError> {
        let recent = self
            .store
            .list_tasks(
                database_id,
                Some(current),
                50,
                store::ListOrder::NewestFirst,
            )
            .await?;
        for t in recent.into_iter().filter(|t| !t.status.is_terminal()) {
            let note = format!("superseded by task {current}");
            self.store
                .append_log(database_id, &t.task_id, note.clone(), Map::new())
                .await?;
            transition(
                &self.store,
                database_id,
                &t.task_id,
                TaskStatus::Canceled,
                Some(note),
            )
            .await?;
        }
        Ok(())
    }

    fn plan_input(&self, pass: &Pass, reachable: &BTreeSet<String>) -> PlanInput {
        let observed = self
            .fleet
            .observed(&pass.db.record.id)
            .into_iter()
            .filter(|(host, _)| reachable.contains(host))
            .map(|(host, s)| observed_instance(&host, &s, pass.records.get(&s.instance_id)))
            .collect();
        let mut hosts: BTreeSet<String> = pass
            .desired
            .values()
            .map(|d| d.plan.host_id.clone())
            .collect();
        hosts.extend(pass.records.values().map(|r| r.host_id.clone()));
        PlanInput {
            database_id: pass.db.record.id.clone(),
            deleting: pass.db.record.state == DatabaseState::Deleting,
            desired: pass.desired.values().map(|d| d.plan.clone()).collect(),
            observed,
            applied: pass
                .records
                .values()
                .map(|r| plan::AppliedRecord {
                    instance_id: r.instance_id.clone(),
                    host_id: r.host_id.clone(),
                    kind: r.kind.clone(),
                    spec_hash: r.spec_hash.clone(),
                    resources: r.resources,
                })
                .collect(),
            roles: pass
                .creds
                .services
                .iter()
                .filter(|(_, c)| c.roles_created)
                .map(|(id, _)| id.clone())
                .collect(),
            unreachable_hosts: hosts
                .into_iter()
                .filter(|h| !reachable.contains(h))
                .collect(),
        }
    }

    /// Writes what agents report into the records the API reads, where it changed.
    async fn refresh_views(
        &self,
        pass: &mut Pass,
        reachable: &BTreeSet<String>,
    ) -> Result<(), StoreError> {
        let observed: HashMap<String, InstanceState> = self
            .fleet
            .observed(&pass.db.record.id)
            .into_iter()
            .map(|(_, s)| (s.instance_id.clone(), s))
            .collect();
        for record in pass.records.values_mut() {
            if !reachable.contains(&record.host_id) {
                continue;
            }
            let view = view_of(observed.get(&record.instance_id));
            if view != record.observed {
                if view.phase == Phase::Failed && record.observed.phase != Phase::Failed {
                    pass.log
                        .line(
                            format!(
                                "instance {} on {} failed: {}",
                                record.instance_id,
                                record.host_id,
                                view.error.clone().unwrap_or_default()
                            ),
                            fields(&[
                                ("instance_id", &record.instance_id),
                                ("host_id", &record.host_id),
                            ]),
                        )
                        .await?;
                }
                record.observed = view;
                record.updated_at = Utc::now();
                self.store
                    .put_instance(&record.database_id, &record.instance_id, record)
                    .await?;
            }
        }
        Ok(())
    }

    async fn converged(&self, pass: Pass, input: &PlanInput) -> Result<Outcome, ReconcileError> {
        let id = &pass.db.record.id;
        if pass.db.record.state == DatabaseState::Deleting {
            if !input.unreachable_hosts.is_empty() {
                pass.log
                    .line(
                        format!(
                            "hosts {:?} are unreachable; their containers will be removed when they come back",
                            input.unreachable_hosts
                        ),
                        Map::new(),
                    )
                    .await?;
            }
            pass.log
                .line(format!("database {id} deleted"), Map::new())
                .await?;
            match self.store.remove_database(id, pass.db.spec_revision).await {
                // A newer request arrived meanwhile: plan again for it.
                Err(StoreError::Conflict) => return Ok(Outcome::Converged),
                other => other?,
            }
            if let Some(t) = &pass.task {
                transition(&self.store, id, &t.task_id, TaskStatus::Completed, None).await?;
            }
            return Ok(Outcome::Gone);
        }
        let ready = pass
            .records
            .values()
            .all(|r| r.observed.phase == Phase::Running);
        if let Some(t) = &pass.task {
            pass.log
                .line(format!("database {id} is available"), Map::new())
                .await?;
            transition(&self.store, id, &t.task_id, TaskStatus::Completed, None).await?;
        }
        if ready && pass.db.record.state != DatabaseState::Available {
            self.set_state(&pass, DatabaseState::Available).await?;
        }
        Ok(Outcome::Converged)
    }

    async fn fail(&self, pass: &Pass, error: &ReconcileError) -> Result<(), StoreError> {
        let id = &pass.db.record.id;
        let Some(task) = &pass.task else {
            return Ok(());
        };
        pass.log
            .line(format!("task failed: {error}"), Map::new())
            .await?;
        transition(
            &self.store,
            id,
            &task.task_id,
            TaskStatus::Failed,
            Some(error.to_string()),
        )
        .await?;
        if pass.db.record.state != DatabaseState::Deleting {
            self.set_state(pass, DatabaseState::Failed).await?;
        }
        Ok(())
    }

    /// Records the database's state, unless a newer spec arrived meanwhile (its own pass will
    /// decide the state then).
    async fn set_state(&self, pass: &Pass, state: DatabaseState) -> Result<(), StoreError> {
        let record = store::DatabaseRecord {
            state,
            updated_at: Utc::now(),
            ..pass.db.record.clone()
        };
        match self
            .store
            .put_database_record(pass.db.spec_revision, &record)
            .await
        {
            Err(StoreError::Conflict) => Ok(()),
            other => other,
        }
    }

    async fn finish_canceled(&self, pass: &Pass) -> Result<(), StoreError> {
        let Some(task) = &pass.task else {
            return Ok(());
        };
        pass.log
            .line("task canceled between steps", Map::new())
            .await?;
        transition(
            &self.store,
            &pass.db.record.id,
            &task.task_id,
            TaskStatus::Canceled,
            Some("canceled by request".into()),
        )
        .await?;
        if pass.db.record.state != DatabaseState::Deleting {
            self.set_state(pass, DatabaseState::Failed).await?;
        }
        Ok(())
    }

    /// Removes what agents still run for a database that no longer exists.
    async fn collect_orphans(&self, database_id: &str) -> Result<(), ReconcileError> {
        let (reachable, _) = self.reachable_hosts().await?;
        for (host, state) in self.fleet.observed(database_id) {
            if !reachable.contains(&host) {
                continue;
            }
            tracing::info!(database_id, host_id = %host, instance_id = %state.instance_id, "removing an orphaned container");
            let log = TaskLog {
                store: self.store.clone(),
                database_id: database_id.into(),
                task_id: None,
            };
            self.remove(&log, &host, &state.instance_id).await?;
        }
        Ok(())
    }

    async fn execute(&self, pass: &mut Pass, plan: plan::Plan) -> Result<(), ReconcileError> {
        for phase in plan.phases {
            if let Some(task) = &pass.task
                && let Some(current) = self
                    .store
                    .get_task(&pass.db.record.id, &task.task_id)
                    .await?
                && current.value.status == TaskStatus::Canceling
            {
                // Picked up by the next pass, which marks the task canceled.
                return Ok(());
            }
            // Role steps run one at a time: concurrent GRANTs on one database fail with
            // "tuple concurrently updated", and each rewrites the credentials document.
            let roles_phase = phase
                .iter()
                .any(|s| matches!(s, Step::CreateRoles { .. } | Step::DropRoles { .. }));
            let results = if roles_phase {
                let mut results = Vec::with_capacity(phase.len());
                for step in &phase {
                    let result = self.run_step(pass, step).await;
                    let failed = result.is_err();
                    results.push(result);
                    if failed {
                        break;
                    }
                }
                results
            } else if pass.records.is_empty() && phase.len() > 1 {
                // A new database's first container creates its network. Agents sharing one
                // engine would otherwise race to create it, and Docker (API 1.41) lets both
                // win, leaving the name ambiguous; after the first, the rest go in parallel.
                let first = self.run_step(pass, &phase[0]).await;
                let mut results = vec![first];
                if results[0].is_ok() {
                    results.extend(
                        futures::future::join_all(
                            phase[1..].iter().map(|step| self.run_step(pass, step)),
                        )
                        .await,
                    );
                }
                results
            } else {
                futures::future::join_all(phase.iter().map(|step| self.run_step(pass, step))).await
            };
            let mut first_error = None;
            for (step, result) in phase.iter().zip(results) {
                match result {
                    Ok(Some(record)) => {
                        pass.records.insert(record.instance_id.clone(), record);
                    }
                    Ok(None) => {
                        if let Step::Remove { instance_id, .. } = step {
                            pass.records.remove(instance_id);
                        }
                    }
                    Err(e) => {
                        first_error.get_or_insert(e);
                    }
                }
            }
            if let Some(e) = first_error {
                return Err(e);
            }
            // Role changes alter the credentials document; re-read it for the next phase.
            if phase
                .iter()
                .any(|s| matches!(s, Step::CreateRoles { .. } | Step::DropRoles { .. }))
            {
                pass.creds = self
                    .store
                    .get_credentials(&pass.db.record.id)
                    .await?
                    .unwrap_or_default();
            }
        }
        Ok(())
    }

    async fn run_step(
        &self,
        pass: &Pass,
        step: &Step,
    ) -> Result<Option<InstanceRecord>, ReconcileError> {
        let started = Instant::now();
        let (what, host, instance) = describe(pass, step);
        let f = fields(&[
            ("host_id", &host),
            ("instance_id", &instance),
            ("step", step_name(step)),
        ]);
        pass.log
            .line(format!("{what} on {host}"), f.clone())
            .await?;
        let result = match step {
            Step::Apply {
                instance_id,
                host_id,
                ..
            } => self.apply(pass, host_id, instance_id).await.map(Some),
            Step::Resize {
                instance_id,
                host_id,
                resources,
            } => self
                .resize(pass, host_id, instance_id, *resources)
                .await
                .map(Some),
            Step::Remove {
                instance_id,
                host_id,
            } => self
                .remove(&pass.log, host_id, instance_id)
                .await
                .map(|_| None),
            Step::CreateRoles { service_id } => {
                self.roles(pass, service_id, true).await.map(|_| None)
            }
            Step::DropRoles { service_id } => {
                self.roles(pass, service_id, false).await.map(|_| None)
            }
        };
        let took = format!("{:.1}s", started.elapsed().as_secs_f64());
        match &result {
            Ok(_) => {
                pass.log
                    .line(format!("{what} on {host}: done in {took}"), f)
                    .await?
            }
            Err(e) => {
                let mut f = f;
                f.insert("error".into(), json!(e.to_string()));
                pass.log
                    .line(format!("{what} on {host}: failed after {took}: {e}"), f)
                    .await?
            }
        }
        result.map_err(|e| match e {
            ReconcileError::Step(m) => {
                ReconcileError::Step(format!("{what} on {host} failed: {m}"))
            }
            other => other,
        })
    }

    fn agent(
        &self,
        host_id: &str,
    ) -> Result<agent_proto::agent_client::AgentClient<tonic::transport::Channel>, ReconcileError>
    {
        self.fleet
            .client(host_id)
            .ok_or_else(|| ReconcileError::Step(format!("host {host_id} is not connected")))
    }

    async fn apply(
        &self,
        pass: &Pass,
        host_id: &str,
        instance_id: &str,
    ) -> Result<InstanceRecord, ReconcileError> {
        let desired = pass
            .desired
            .get(instance_id)
            .ok_or_else(|| ReconcileError::Step(format!("{instance_id} is not desired")))?;
        let mut client = self.agent(host_id)?;
        let mut stream = client
            .apply_instance(ApplyInstanceRequest {
                spec: Some(desired.spec.clone()),
            })
            .await
            .map_err(|s| ReconcileError::Step(s.message().to_string()))?
            .into_inner();
        let result = relay(&mut stream, &pass.log, host_id, instance_id).await?;
        let r = result.ok_or_else(|| {
            ReconcileError::Step("the agent ended the apply without a result".into())
        })?;
        let now = Utc::now();
        let ports: Vec<spec::PortMapping> = r
            .ports
            .iter()
            .map(|p| spec::PortMapping {
                name: p.name.clone(),
                container_port: p.container_port as u16,
                host_port: (p.host_port != 0).then_some(p.host_port as u16),
            })
            .collect();
        // What the agent just confirmed, so the next plan does not act on an older event.
        let mut labels = desired.spec.labels.clone();
        labels.insert("berth.database-id".into(), pass.db.record.id.clone());
        self.fleet.note(
            host_id,
            InstanceState {
                instance_id: instance_id.to_string(),
                labels,
                container_id: r.container_id.clone(),
                image: r.image.clone(),
                state: InstanceStatus::Running as i32,
                health: Health::Healthy as i32,
                ports: r.ports.clone(),
                // The agent returned only once the instance was healthy.
                last_health_at: Some(std::time::SystemTime::from(now).into()),
                ..Default::default()
            },
        );
        let previous = pass.records.get(instance_id);
        let record = InstanceRecord {
            instance_id: instance_id.to_string(),
            database_id: pass.db.record.id.clone(),
            host_id: host_id.to_string(),
            kind: desired.plan.kind.clone(),
            spec_hash: desired.plan.spec_hash.clone(),
            resources: desired.plan.resources,
            // An update keeps the instance's identity and birth date; only the container changes.
            created_at: previous.map_or(now, |p| p.created_at),
            updated_at: now,
            observed: ObservedView {
                phase: Phase::Running,
                container_id: Some(r.container_id),
                image: Some(r.image),
                ports,
                last_health_at: Some(now),
                ready: true,
                error: None,
            },
        };
        self.store
            .put_instance(&record.database_id, instance_id, &record)
            .await?;
        Ok(record)
    }

    async fn resize(
        &self,
        pass: &Pass,
        host_id: &str,
        instance_id: &str,
        resources: plan::Resources,
    ) -> Result<InstanceRecord, ReconcileError> {
        let mut client = self.agent(host_id)?;
        let applied = client
            .resize_instance(ResizeInstanceRequest {
                instance_id: instance_id.to_string(),
                nano_cpus: resources.nano_cpus,
                memory_bytes: resources.memory_bytes,
            })
            .await
            .map_err(|s| ReconcileError::Step(s.message().to_string()))?
            .into_inner()
            .applied;
        if !applied {
            return Err(ReconcileError::Step(
                "Docker did not apply the new limits".into(),
            ));
        }
        let desired = pass.desired.get(instance_id);
        let mut record = match pass.records.get(instance_id) {
            Some(r) => r.clone(),
            None => {
                let d = desired
                    .ok_or_else(|| ReconcileError::Step(format!("{instance_id} is not desired")))?;
                let observed = self
                    .fleet
                    .observed(&pass.db.record.id)
                    .into_iter()
                    .find(|(_, s)| s.instance_id == instance_id);
                InstanceRecord {
                    instance_id: instance_id.to_string(),
                    database_id: pass.db.record.id.clone(),
                    host_id: host_id.to_string(),
                    kind: d.plan.kind.clone(),
                    spec_hash: d.plan.spec_hash.clone(),
                    resources,
                    created_at: Utc::now(),
                    updated_at: Utc::now(),
                    observed: view_of(observed.as_ref().map(|(_, s)| s)),
                }
            }
        };
        record.resources = resources;
        if let Some(d) = desired {
            // The container already matches (that is why this is a resize): the record catches up.
            record.spec_hash = d.plan.spec_hash.clone();
        }
        record.updated_at = Utc::now();
        self.store
            .put_instance(&record.database_id, instance_id, &record)
            .await?;
        Ok(record)
    }

    async fn remove(
        &self,
        log: &TaskLog,
        host_id: &str,
        instance_id: &str,
    ) -> Result<(), ReconcileError> {
        let mut client = self.agent(host_id)?;
        let mut stream = client
            .remove_instance(RemoveInstanceRequest {
                instance_id: instance_id.to_string(),
                delete_data: true,
            })
            .await
            .map_err(|s| ReconcileError::Step(s.message().to_string()))?
            .into_inner();
        relay(&mut stream, log, host_id, instance_id).await?;
        self.fleet.forget(host_id, instance_id);
        self.store
            .delete_instance(&log.database_id, instance_id)
            .await?;
        Ok(())
    }

    /// Creates (or drops) a service's two roles on every node's primary, with the SQL on
    /// stdin so passwords never appear in a process list, an env or a log.
    async fn roles(
        &self,
        pass: &Pass,
        service_id: &str,
        create: bool,
    ) -> Result<(), ReconcileError> {
        let db = &pass.db;
        let mut creds: DatabaseCredentials = self
            .store
            .get_credentials(&db.record.id)
            .await?
            .unwrap_or_default();
        let sql = if create {
            let svc = creds.services.get(service_id).ok_or_else(|| {
                ReconcileError::Step(format!("no credentials for service {service_id}"))
            })?;
            create_roles_sql(&db.spec.database_name, service_id, svc)
        } else {
            drop_roles_sql(service_id)
        };
        let secrets: Vec<String> = creds
            .services
            .get(service_id)
            .map(|c| vec![c.ro_password.clone(), c.rw_password.clone()])
            .unwrap_or_default();
        // Every desired primary (the planner only asks once each one runs); when dropping,
        // also primaries that were applied, in case a node is on its way out.
        let is_primary =
            |k: &InstanceKind| matches!(k, InstanceKind::Postgres { primary: true, .. });
        let mut primaries: BTreeSet<(String, String)> = pass
            .desired
            .values()
            .filter(|d| is_primary(&d.plan.kind))
            .map(|d| (d.plan.host_id.clone(), d.plan.instance_id.clone()))
            .collect();
        if !create {
            primaries.extend(
                pass.records
                    .values()
                    .filter(|r| is_primary(&r.kind))
                    .map(|r| (r.host_id.clone(), r.instance_id.clone())),
            );
        }
        if primaries.is_empty() {
            return Err(ReconcileError::Step(
                "the database has no Postgres primary".into(),
            ));
        }
        for (host_id, instance_id) in primaries {
            let mut client = self.agent(&host_id)?;
            let out = client
                .exec_instance(ExecRequest {
                    instance_id: instance_id.clone(),
                    argv: psql_argv(&db.spec.database_name),
                    stdin: sql.clone().into_bytes(),
                    user: "postgres".into(),
                    timeout_ms: 30_000,
                })
                .await
                .map_err(|s| ReconcileError::Step(s.message().to_string()))?
                .into_inner();
            if out.exit_code != 0 {
                let mut stderr = String::from_utf8_lossy(&out.stderr).into_owned();
                for s in &secrets {
                    stderr = stderr.replace(s.as_str(), "***");
                }
                return Err(ReconcileError::Step(format!(
                    "psql on {instance_id} exited {}: {}",
                    out.exit_code,
                    stderr.trim()
                )));
            }
        }
        if create {
            if let Some(c) = creds.services.get_mut(service_id) {
                c.roles_created = true;
            }
        } else {
            creds.services.remove(service_id);
        }
        self.store.put_credentials(&db.record.id, &creds).await?;
        Ok(())
    }
}

enum Unfinished {
    No,
    /// Something is still starting, or a live host's agent stream has not delivered its
    /// snapshot yet: nothing to do but wait for the next event.
    Waiting,
    /// Desired instances sit on hosts whose lease expired.
    Unreachable(BTreeSet<String>),
}

/// Whether an empty plan really means done: every desired instance observed running from
/// its desired spec, and no host with work left merely out of sight.
fn unfinished(input: &PlanInput, alive: &BTreeSet<String>) -> Unfinished {
    let (live_but_unsynced, dead): (BTreeSet<String>, BTreeSet<String>) = input
        .unreachable_hosts
        .iter()
        .cloned()
        .partition(|h| alive.contains(h));
    if !live_but_unsynced.is_empty() {
        return Unfinished::Waiting;
    }
    let needed: BTreeSet<String> = input
        .desired
        .iter()
        .map(|d| d.host_id.clone())
        .filter(|h| dead.contains(h))
        .collect();
    if !input.deleting && !needed.is_empty() {
        return Unfinished::Unreachable(needed);
    }
    let running = |d: &plan::DesiredInstance| {
        input.observed.iter().any(|o| {
            o.instance_id == d.instance_id
                && o.host_id == d.host_id
                && o.status == plan::ObservedStatus::Running
                && o.spec_hash.as_deref() == Some(d.spec_hash.as_str())
        })
    };
    if !input.deleting && !input.desired.iter().all(running) {
        return Unfinished::Waiting;
    }
    Unfinished::No
}

fn observed_instance(
    host: &str,
    s: &InstanceState,
    record: Option<&InstanceRecord>,
) -> plan::ObservedInstance {
    let health = Health::try_from(s.health).unwrap_or(Health::Unspecified);
    let status = match InstanceStatus::try_from(s.state).unwrap_or(InstanceStatus::Unspecified) {
        InstanceStatus::Running if health == Health::Unhealthy => plan::ObservedStatus::Failed,
        // Running but not yet healthy: Postgres may still be initialising (answering on its
        // socket before the database exists). Nothing may build on it yet.
        InstanceStatus::Running if health == Health::Starting => plan::ObservedStatus::Creating,
        InstanceStatus::Running => plan::ObservedStatus::Running,
        // Created but never started: only a leader that died between the two leaves this
        // behind, so apply it again (the agent serialises applies of one instance).
        InstanceStatus::Creating => plan::ObservedStatus::Stopped,
        InstanceStatus::Unspecified => plan::ObservedStatus::Creating,
        InstanceStatus::Failed => plan::ObservedStatus::Failed,
        InstanceStatus::Stopped => plan::ObservedStatus::Stopped,
        InstanceStatus::Missing => plan::ObservedStatus::Missing,
    };
    let kind =
        record
            .map(|r| r.kind.clone())
            .unwrap_or_else(|| match s.labels.get("berth.service-id") {
                Some(id) if !id.is_empty() => InstanceKind::Service {
                    service_id: id.clone(),
                },
                _ => InstanceKind::Postgres {
                    node: String::new(),
                    primary: false,
                },
            });
    plan::ObservedInstance {
        instance_id: s.instance_id.clone(),
        host_id: host.to_string(),
        kind,
        spec_hash: s.labels.get(DESIRED_HASH_LABEL).cloned(),
        status,
    }
}

/// Copies an agent's progress lines into the task log, tagged with host and instance, until
/// the stream ends; returns the apply result if the stream carried one.
async fn relay(
    stream: &mut tonic::Streaming<agent_proto::ApplyEvent>,
    log: &TaskLog,
    host_id: &str,
    instance_id: &str,
) -> Result<Option<agent_proto::ApplyResult>, ReconcileError> {
    let mut result = None;
    loop {
        match stream.message().await {
            Ok(Some(event)) => match event.event {
                Some(apply_event::Event::Log(line)) => {
                    let mut f: Map<String, Value> = line
                        .fields
                        .into_iter()
                        .map(|(k, v)| (k, json!(v)))
                        .collect();
                    f.insert("host_id".into(), json!(host_id));
                    f.insert("instance_id".into(), json!(instance_id));
                    log.line(line.message, f).await?;
                }
                Some(apply_event::Event::Result(r)) => result = Some(r),
                _ => {}
            },
            Ok(None) => return Ok(result),
            Err(s) => return Err(ReconcileError::Step(s.message().to_string())),
        }
    }
}

fn step_name(step: &Step) -> &'static str {
    match step {
        Step::Apply { .. } => "apply",
        Step::Resize { .. } => "resize",
        Step::Remove { .. } => "remove",
        Step::CreateRoles { .. } => "create_roles",
        Step::DropRoles { .. } => "drop_roles",
    }
}

/// A step in words, for the task log: `creating service instance mcp-server`, plus host and instance.
fn describe(pass: &Pass, step: &Step) -> (String, String, String) {
    let kind_of = |id: &str| {
        pass.desired
            .get(id)
            .map(|d| d.plan.kind.clone())
            .or_else(|| pass.records.get(id).map(|r| r.kind.clone()))
    };
    let noun = |id: &str| match kind_of(id) {
        Some(InstanceKind::Service { service_id }) => format!("service instance {service_id}"),
        Some(InstanceKind::Postgres {
            node,
            primary: true,
        }) => format!("postgres primary of node {node}"),
        Some(InstanceKind::Postgres {
            node,
            primary: false,
        }) => format!("postgres replica of node {node}"),
        None => format!("instance {id}"),
    };
    match step {
        Step::Apply {
            instance_id,
            host_id,
            reason,
        } => {
            let verb = match reason {
                ApplyReason::Create => "creating",
                ApplyReason::Update => "updating",
                ApplyReason::Heal => "restoring",
            };
            (
                format!("{verb} {}", noun(instance_id)),
                host_id.clone(),
                instance_id.clone(),
            )
        }
        Step::Resize {
            instance_id,
            host_id,
            resources,
        } => (
            format!(
                "resizing {} to {} nanocpus, {} bytes",
                noun(instance_id),
                resources.nano_cpus,
                resources.memory_bytes
            ),
            host_id.clone(),
            instance_id.clone(),
        ),
        Step::Remove {
            instance_id,
            host_id,
        } => (
            format!("removing {}", noun(instance_id)),
            host_id.clone(),
            instance_id.clone(),
        ),
        Step::CreateRoles { service_id } => (
            format!("creating roles of service {service_id}"),
            "primaries".into(),
            String::new(),
        ),
        Step::DropRoles { service_id } => (
            format!("dropping roles of service {service_id}"),
            "primaries".into(),
            String::new(),
        ),
    }
}
