//! The leader's reconciliation: for each database, compare the whole desired state with the
//! whole observed state, plan, execute, and plan again until nothing is left to do.
//!
//! Level-triggered: a worker per database never learns why it runs (a spec change, an agent
//! event, a host coming back, the safety-net timer), so a restarted leader simply finishes
//! whatever is unfinished. Only one pass per database runs at a time; pokes that arrive
//! meanwhile are coalesced into one more pass.
//!
//! This module schedules: workers, their retries and their failures. [`pass`] is one pass
//! over one database, [`steps`] runs a plan's steps on agents, [`switchover`] the steps
//! that go to Patroni (a switchover, forgetting a node's keys), [`operations`] the
//! operations a request asks for (ADR 018), [`roles`] the role SQL, [`task_log`] says what
//! happens on the task that carries it, [`task_ends`] how superseded and canceled tasks end,
//! [`wal_watch`] checks each Postgres instance's WAL and, with [`subscription_watch`], its
//! pglogical subscriptions, and [`observe`] turns agent
//! reports into planner input and API records. The store and the agents are traits
//! ([`store::StateStore`], [`agents::Agents`]), so all of it runs in unit tests against an
//! in-memory store and fake agents.

pub mod agents;
pub(crate) mod backups;
mod crash_loop;
mod exec;
pub(crate) mod inputs;
mod observe;
mod operations;
mod pass;
#[cfg(test)]
mod patroni_tests;
mod relay;
mod replication;
mod restore;
mod roles;
mod slot_sync;
mod steps;
mod subscription_watch;
mod switchover;
mod task_ends;
mod task_log;
#[cfg(test)]
mod tests;
mod wal_watch;

pub use wal_watch::WAL_CHECK_PERIOD;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backon::BackoffBuilder;
use serde::Serialize;
use serde::de::DeserializeOwned;
use spec::manifest::Manifest;
use store::{StateStore, StoreError};
use tokio::sync::mpsc;

use crate::credentials::DatabaseCredentials;
use crate::fleet::{Fleet, Poke};
use crate::instances::InstanceRecord;
use agents::Agents;
use pass::Outcome;

/// How often every database is reconciled even if nothing was heard: the safety net for a
/// lost event, never the main trigger.
/// Every trigger that matters is an event (etcd watch, agent streams that resend a full
/// snapshot on reconnect), so the sweep is rare: it costs a pass over every database.
pub const SAFETY_NET_PERIOD: Duration = Duration::from_secs(300);
/// How often the times of passing health checks are written to the instance records: they
/// move every second or so, and one write per check per instance would be most of etcd's load.
pub const HEALTH_WRITE_PERIOD: Duration = Duration::from_secs(15);
/// How many plans one pass executes before it gives up on converging (each plan is executed
/// whole, then observed; a plan that keeps coming back means something undoes it).
pub const MAX_PLANS: usize = 20;
/// How long a task waits for a host that heartbeats but whose agent cannot be dialled
/// before it fails naming the host and address.
pub const HOST_DIAL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a step waits for the host's stream to deliver what the agent's reply reported.
pub const SEEN_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Step(String),
    #[error("{0}")]
    Desired(#[from] crate::desired::DesiredError),
    #[error("a stored {what} does not decode: {error}")]
    Decode { what: &'static str, error: String },
}

/// What a worker keeps between passes.
#[derive(Default)]
pub(crate) struct WorkerState {
    /// Delays before the next attempts of the current task; None: no attempt failed.
    retries: Option<backon::ExponentialBackoff>,
    /// Failed attempts of the current task.
    failures: usize,
    /// The task the attempts are counted for.
    task_id: Option<String>,
    /// After a task gave up: the spec generation it gave up on, and until when passes with
    /// no request's task only observe. Without it, every event (a health check, a container
    /// of the database changing) would open another reconcile task that fails the same way.
    quiet: Option<(u64, tokio::time::Instant)>,
    /// What the last pass said it waits for on Patroni, so that each wait is said once.
    waits_noted: Vec<plan::Wait>,
    /// Heals of instances whose container stopped on its own, in the current task, by
    /// instance ([`crash_loop`]).
    heals: BTreeMap<String, u32>,
}

pub struct Reconciler {
    store: Arc<dyn StateStore>,
    fleet: Fleet,
    agents: Arc<dyn Agents>,
    authority: Arc<pki::Authority>,
    manifest: Arc<Manifest>,
    /// Patroni's DCS, as every `patroni.yml` names it.
    dcs: crate::patroni::config::Dcs,
    pokes: mpsc::UnboundedSender<Poke>,
    workers: Mutex<HashMap<String, mpsc::UnboundedSender<()>>>,
    tasks: Mutex<tokio::task::JoinSet<()>>,
    /// Which database each worker task serves, to know whose worker ended.
    running: Mutex<HashMap<tokio::task::Id, String>>,
}

impl Reconciler {
    pub fn new(
        store: store::Store,
        manifest: Arc<Manifest>,
        dcs: crate::patroni::config::Dcs,
        pokes: mpsc::UnboundedSender<Poke>,
        tls: Arc<crate::tls::FleetTls>,
    ) -> Arc<Self> {
        let store: Arc<dyn StateStore> = Arc::new(store);
        let fleet = Fleet::new(store.clone(), pokes.clone(), tls.clone());
        let authority = pki::Authority::from_identity(tls.authority().identity().clone());
        Reconciler::with_parts(
            store,
            fleet.clone(),
            Arc::new(fleet),
            Arc::new(authority),
            manifest,
            dcs,
            pokes,
        )
    }

    /// A reconciler over any store and agents; `fleet` is what it observes.
    pub fn with_parts(
        store: Arc<dyn StateStore>,
        fleet: Fleet,
        agents: Arc<dyn Agents>,
        authority: Arc<pki::Authority>,
        manifest: Arc<Manifest>,
        dcs: crate::patroni::config::Dcs,
        pokes: mpsc::UnboundedSender<Poke>,
    ) -> Arc<Self> {
        Arc::new(Reconciler {
            store,
            fleet,
            agents,
            authority,
            manifest,
            dcs,
            pokes,
            workers: Mutex::default(),
            tasks: Mutex::new(tokio::task::JoinSet::new()),
            running: Mutex::default(),
        })
    }

    /// The leader's live view of the hosts' instances.
    pub fn fleet(&self) -> &Fleet {
        &self.fleet
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
        let mut health = tokio::time::interval(HEALTH_WRITE_PERIOD);
        let mut ended = tokio::time::interval(Duration::from_millis(500));
        let mut sweep_retries = crate::retry::policy().build();
        loop {
            let poke = tokio::select! {
                _ = &mut stop => return,
                _ = safety_net.tick() => None,
                _ = health.tick() => {
                    for db in self.fleet.take_health_changes() {
                        self.poke(&db);
                    }
                    continue;
                }
                _ = ended.tick() => {
                    self.reap().await;
                    continue;
                }
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
                    match self.poke_all().await {
                        Ok(()) => sweep_retries = crate::retry::policy().build(),
                        Err(e) => {
                            let delay = sweep_retries.next().unwrap_or(crate::retry::MAX_DELAY);
                            tracing::warn!(error = %e, retry_in = ?delay, "full reconcile sweep failed");
                            let pokes = self.pokes.clone();
                            tokio::spawn(async move {
                                tokio::time::sleep(delay).await;
                                let _ = pokes.send(None);
                            });
                        }
                    }
                    for db in also {
                        self.poke(&db);
                    }
                }
            }
        }
    }

    /// Collects workers that ended. One that panicked would otherwise leave its database
    /// without reconciliation while the leader keeps its lease: it is logged, said on the
    /// database's task, and started again (its next pass begins from what is).
    async fn reap(self: &Arc<Self>) {
        loop {
            let next = self
                .tasks
                .lock()
                .expect("tasks lock")
                .try_join_next_with_id();
            let Some(result) = next else { return };
            let (id, panic) = match result {
                Ok((id, ())) => (id, None),
                Err(e) if e.is_panic() => {
                    let id = e.id();
                    let payload = e.into_panic();
                    let message = payload
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_else(|| "a panic".into());
                    (id, Some(message))
                }
                Err(e) => (e.id(), None),
            };
            let Some(database_id) = self.running.lock().expect("running lock").remove(&id) else {
                continue;
            };
            let Some(message) = panic else { continue };
            tracing::error!(database_id, panic = %message, "the database's reconcile worker panicked; starting a new one");
            self.workers
                .lock()
                .expect("workers lock")
                .remove(&database_id);
            if let Err(e) = self.note_crash(&database_id, &message).await {
                tracing::warn!(database_id, error = %e, "cannot record the worker's panic");
            }
            let pokes = self.pokes.clone();
            tokio::spawn(async move {
                tokio::time::sleep(crate::retry::MIN_DELAY).await;
                let _ = pokes.send(Some(database_id));
            });
        }
    }

    /// Says on the database's unfinished task that its worker crashed.
    async fn note_crash(&self, database_id: &str, message: &str) -> Result<(), StoreError> {
        let Some(db) = self.store.get_database(database_id).await? else {
            return Ok(());
        };
        let Some(task_id) = db.record.current_task_id else {
            return Ok(());
        };
        let unfinished = self
            .store
            .get_task(database_id, &task_id)
            .await?
            .is_some_and(|t| !t.value.status.is_terminal());
        if unfinished {
            self.store
                .append_log(
                    database_id,
                    &task_id,
                    format!("the reconciler's worker for this database crashed ({message}); it starts again"),
                    Default::default(),
                )
                .await?;
        }
        Ok(())
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

    /// Wakes the database's worker, starting one if it has none.
    pub fn poke(self: &Arc<Self>, database_id: &str) {
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
        let handle = self
            .tasks
            .lock()
            .expect("tasks lock")
            .spawn(async move { this.worker(db, rx).await });
        self.running
            .lock()
            .expect("running lock")
            .insert(handle.id(), database_id.to_string());
    }

    async fn worker(self: Arc<Self>, database_id: String, mut rx: mpsc::UnboundedReceiver<()>) {
        let mut state = WorkerState::default();
        while rx.recv().await.is_some() {
            while rx.try_recv().is_ok() {}
            let span = tracing::info_span!("reconcile", database_id = %database_id);
            let started = std::time::Instant::now();
            let result = tracing::Instrument::instrument(
                self.reconcile_database(&database_id, &mut state),
                span,
            )
            .await;
            telemetry::control_plane::reconcile_pass(pass_outcome(&result), started.elapsed());
            match result {
                Ok(Outcome::Done) => {}
                Ok(Outcome::RetryIn(delay)) => {
                    tokio::time::sleep(delay).await;
                    let _ = self.pokes.send(Some(database_id.clone()));
                }
                Ok(Outcome::GaveUp(delay)) => {
                    // The task failed after its attempts; wait out the longest delay, then only
                    // an event (a change, an agent report, the safety net) starts another.
                    tokio::time::sleep(delay).await;
                }
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
                    // The store itself failed (etcd away): nothing can be recorded; retry.
                    let retries = state
                        .retries
                        .get_or_insert_with(|| crate::retry::policy().build());
                    let delay = retries.next().unwrap_or(crate::retry::MAX_DELAY);
                    tracing::warn!(database_id, error = %e, retry_in = ?delay, "reconcile pass failed");
                    tokio::time::sleep(delay).await;
                    let _ = self.pokes.send(Some(database_id.clone()));
                }
            }
        }
    }

    // ---- typed documents over the store ----

    async fn records(
        &self,
        database_id: &str,
    ) -> Result<std::collections::BTreeMap<String, InstanceRecord>, ReconcileError> {
        self.store
            .list_instance_documents(database_id)
            .await?
            .into_iter()
            .map(|v| {
                decode::<InstanceRecord>(v, "instance record").map(|r| (r.instance_id.clone(), r))
            })
            .collect()
    }

    /// Writes what the database's worker owns of an instance record; the health reports
    /// ([`crate::instances::HEALTH_FIELDS`]) stay as stored, since only the health watch
    /// writes them and the worker's copy may be older than the stored one.
    async fn put_record(&self, record: &InstanceRecord) -> Result<(), StoreError> {
        let doc = encode(record);
        self.store
            .update_instance_document(&record.database_id, &record.instance_id, &mut |stored| {
                Some(crate::instances::with_health_of(doc.clone(), stored))
            })
            .await
            .map(|_| ())
    }

    /// Writes an instance's health reports into its stored record, leaving every other
    /// field as stored; a record that is gone (the instance was removed) stays gone.
    async fn put_health(
        &self,
        database_id: &str,
        instance_id: &str,
        wal: Option<&spec::wal::WalReport>,
        subscriptions: Option<&spec::subscriptions::SubscriptionReport>,
    ) -> Result<(), StoreError> {
        self.store
            .update_instance_document(database_id, instance_id, &mut |stored| {
                let mut doc = stored?.clone();
                let fields = doc.as_object_mut()?;
                if let Some(w) = wal {
                    fields.insert("wal".into(), encode(w));
                }
                if let Some(s) = subscriptions {
                    fields.insert("subscriptions".into(), encode(s));
                }
                Some(doc)
            })
            .await
            .map(|_| ())
    }

    async fn credentials(&self, database_id: &str) -> Result<DatabaseCredentials, ReconcileError> {
        Ok(self
            .stored_credentials(database_id)
            .await?
            .unwrap_or_default())
    }

    async fn stored_credentials(
        &self,
        database_id: &str,
    ) -> Result<Option<DatabaseCredentials>, ReconcileError> {
        self.store
            .get_credentials_document(database_id)
            .await?
            .map(|v| decode(v, "credentials document"))
            .transpose()
    }

    async fn put_credentials(
        &self,
        database_id: &str,
        creds: &DatabaseCredentials,
    ) -> Result<(), StoreError> {
        self.store
            .put_credentials_document(database_id, &encode(creds))
            .await
    }
}

/// The `outcome` label of a pass ([`telemetry::control_plane::RECONCILE_PASSES`]).
fn pass_outcome(result: &Result<Outcome, ReconcileError>) -> telemetry::control_plane::PassOutcome {
    use telemetry::control_plane::PassOutcome as P;
    match result {
        Ok(Outcome::Done) => P::Done,
        Ok(Outcome::RetryIn(_)) => P::Retry,
        Ok(Outcome::GaveUp(_)) => P::GaveUp,
        Ok(Outcome::Gone) => P::Gone,
        Err(ReconcileError::Store(StoreError::Fenced)) => P::Fenced,
        Err(_) => P::Error,
    }
}

fn decode<T: DeserializeOwned>(
    v: serde_json::Value,
    what: &'static str,
) -> Result<T, ReconcileError> {
    serde_json::from_value(v).map_err(|e| ReconcileError::Decode {
        what,
        // serde's message names the field, never the value.
        error: e.to_string(),
    })
}

fn encode<T: Serialize>(value: &T) -> serde_json::Value {
    serde_json::to_value(value).expect("store documents serialize to JSON")
}
