//! One pass over one database: load what is desired, applied and observed, plan, execute,
//! and plan again until the plan is empty; then say how it ended on the task.
//!
//! Task rules (ADR 013):
//! - a canceled task's remaining steps never run: while the database's current task is
//!   canceled (or being canceled) nothing is planned for it, and the database is `failed`
//!   until the next spec;
//! - a failed attempt is retried with backoff ([`crate::retry::task_policy`]) within the same
//!   task, each failure said on it; after the last attempt the task and the database fail;
//! - a pass that changes something with no task of a request's opens a `reconcile` task.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use backon::BackoffBuilder;
use chrono::Utc;
use plan::PlanInput;
use serde_json::Map;
use spec::{DatabaseState, Task, TaskStatus};
use store::{StoreError, StoredDatabase};

use super::task_log::{TaskLog, fields};
use super::{HOST_DIAL_TIMEOUT, MAX_PLANS, ReconcileError, Reconciler, WorkerState};
use crate::credentials::DatabaseCredentials;
use crate::desired::Desired;
use crate::instances::{InstanceRecord, Phase};
use crate::tasks::transition;

/// Everything one pass over one database works with.
pub(crate) struct Pass {
    pub db: StoredDatabase,
    /// The request's task this pass works for; None for a pass of the control plane's own.
    pub task: Option<Task>,
    pub log: TaskLog,
    pub desired: BTreeMap<String, Desired>,
    pub records: BTreeMap<String, InstanceRecord>,
    pub creds: DatabaseCredentials,
    /// What Patroni's keys said when the pass was loaded, by node.
    pub patroni: BTreeMap<String, plan::PatroniNode>,
}

/// How a pass ended, for the worker.
#[derive(Debug, PartialEq)]
pub(crate) enum Outcome {
    /// Converged, or waiting for an event: nothing to do until the next poke.
    Done,
    /// An attempt failed; try again after this long.
    RetryIn(Duration),
    /// The task failed after its last attempt; rest this long before anything else.
    GaveUp(Duration),
    /// The database no longer exists.
    Gone,
}

/// What [`Reconciler::load`] found.
pub(crate) enum Loaded {
    Gone,
    /// The current task is canceled or being canceled: nothing may be planned for its spec.
    Canceled(Box<StoredDatabase>, Task),
    Pass(Box<Pass>),
}

impl Reconciler {
    pub(crate) async fn reconcile_database(
        &self,
        database_id: &str,
        state: &mut WorkerState,
    ) -> Result<Outcome, ReconcileError> {
        for _ in 0..MAX_PLANS {
            let mut pass = match self.load(database_id, state).await? {
                Loaded::Gone => {
                    self.collect_orphans(database_id).await?;
                    return Ok(Outcome::Gone);
                }
                Loaded::Canceled(db, task) => {
                    self.halt_canceled(&db, &task).await?;
                    *state = WorkerState::default();
                    return Ok(Outcome::Done);
                }
                Loaded::Pass(p) => *p,
            };
            let (reachable, alive) = self.reachable_hosts().await?;
            self.refresh_views(&mut pass, &reachable).await?;
            if let Some(op) = Self::pending_operation(&pass) {
                match self.carry_out(&pass, &op).await {
                    // The next load reads the record without it, and plans.
                    Ok(()) => continue,
                    Err(e @ ReconcileError::Store(_)) => return Err(e),
                    Err(e) => {
                        self.operation_failed(&pass, &e).await?;
                        *state = WorkerState::default();
                        return Ok(Outcome::Done);
                    }
                }
            }
            if pass.task.is_none()
                && state.quiet.is_some_and(|(generation, until)| {
                    generation == pass.db.record.generation && tokio::time::Instant::now() < until
                })
            {
                // The last task gave up on this very spec a moment ago: observe only, until
                // the spec changes or the quiet time is over (the safety-net sweep then tries).
                return Ok(Outcome::Done);
            }
            let input = self.plan_input(&pass, &reachable);
            let plan = plan::plan(&input);
            if plan.is_empty() {
                return self
                    .settle(pass, &input, &plan.waiting, &alive, state)
                    .await;
            }
            let stopped_again =
                super::crash_loop::count_heals(&plan, &input, &pass.records, &mut state.heals);
            let executed = self.execute(&mut pass, plan).await;
            if pass.task.is_none() {
                // A reconcile task this pass opened goes on in the next pass.
                state.task_id = pass.log.task_id();
            }
            match executed {
                // Healed once more, but the task counts it (crash_loop).
                Ok(()) if let Some(e) = stopped_again => {
                    return self.failed_attempt(&pass, e, state).await;
                }
                Ok(()) => {}
                Err(e @ ReconcileError::Store(_)) => return Err(e),
                Err(e) => return self.failed_attempt(&pass, e, state).await,
            }
        }
        let Loaded::Pass(pass) = self.load(database_id, state).await? else {
            return Ok(Outcome::Done);
        };
        let e = ReconcileError::Step(format!(
            "the database did not converge after {MAX_PLANS} plans: each plan's steps succeeded \
             but the next pass found work again (is something else changing its containers?)"
        ));
        self.failed_attempt(&pass, e, state).await
    }

    /// An empty plan: done, waiting for something, or stuck on a host.
    async fn settle(
        &self,
        pass: Pass,
        input: &PlanInput,
        waiting: &[plan::Wait],
        alive: &BTreeSet<String>,
        state: &mut WorkerState,
    ) -> Result<Outcome, ReconcileError> {
        match unfinished(input, waiting, alive) {
            Unfinished::No => {
                *state = WorkerState::default();
                self.converged(pass, input).await
            }
            // An event (a snapshot, a health change) will wake this worker again.
            Unfinished::Waiting => {
                if let Some(e) = self.undialable(&pass, input, alive).await? {
                    self.fail(&pass, &e.to_string()).await?;
                    *state = WorkerState::default();
                    return Ok(Outcome::Done);
                }
                self.note_patroni_waits(&pass, waiting, state).await?;
                for d in pass.desired.values() {
                    if let Some(why) = &d.waiting_for {
                        pass.log
                            .note(
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
                Ok(Outcome::Done)
            }
            // Without a request's task nothing was asked that could fail: the instances on
            // those hosts read unknown, and the pass that follows the hosts' return heals.
            // Failing a reconcile task here opened and failed one on every event for as long
            // as a host stayed away (dozens a second).
            Unfinished::Unreachable(hosts) if pass.task.is_none() => {
                tracing::info!(database_id = %pass.db.record.id, ?hosts, "waiting for unreachable hosts");
                Ok(Outcome::Done)
            }
            Unfinished::Unreachable(hosts) => {
                self.fail(&pass, &format!("hosts {hosts:?} are unreachable"))
                    .await?;
                *state = WorkerState::default();
                Ok(Outcome::Done)
            }
        }
    }

    /// One attempt failed: retried after a delay, or, after the last, the task fails.
    async fn failed_attempt(
        &self,
        pass: &Pass,
        error: ReconcileError,
        state: &mut WorkerState,
    ) -> Result<Outcome, ReconcileError> {
        state.failures += 1;
        let retries = state
            .retries
            .get_or_insert_with(|| crate::retry::task_policy().build());
        match retries.next() {
            Some(delay) => {
                pass.log
                    .line(
                        format!(
                            "attempt {} of {} failed: {error}; trying again in {:.1}s",
                            state.failures,
                            crate::retry::TASK_ATTEMPTS,
                            delay.as_secs_f64()
                        ),
                        Map::new(),
                    )
                    .await?;
                state.task_id = pass.log.task_id();
                Ok(Outcome::RetryIn(delay))
            }
            None => {
                let attempts = state.failures;
                *state = WorkerState {
                    quiet: Some((
                        pass.db.record.generation,
                        tokio::time::Instant::now() + super::SAFETY_NET_PERIOD,
                    )),
                    ..WorkerState::default()
                };
                self.fail(pass, &format!("{error} (after {attempts} attempts)"))
                    .await?;
                Ok(Outcome::GaveUp(crate::retry::MAX_DELAY))
            }
        }
    }

    /// Reachable = the host's lease is alive and its agent stream has delivered a snapshot.
    /// Also returns the hosts whose lease is alive, synced or not.
    pub(crate) async fn reachable_hosts(
        &self,
    ) -> Result<(BTreeSet<String>, BTreeSet<String>), StoreError> {
        let alive: BTreeSet<String> = self.store.host_liveness().await?.into_keys().collect();
        let reachable = self
            .fleet
            .synced_hosts()
            .into_iter()
            .filter(|h| alive.contains(h))
            .collect();
        Ok((reachable, alive))
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
                .note(
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

    pub(crate) async fn load(
        &self,
        database_id: &str,
        state: &mut WorkerState,
    ) -> Result<Loaded, ReconcileError> {
        let Some(db) = self.store.get_database(database_id).await? else {
            return Ok(Loaded::Gone);
        };
        let mut task = match &db.record.current_task_id {
            Some(id) => self.store.get_task(database_id, id).await?.map(|v| v.value),
            None => None,
        };
        if let Some(t) = &mut task
            && t.status == TaskStatus::Pending
        {
            // The cancel of a pending task may win this race: then the task never starts.
            *t = transition(
                &*self.store,
                database_id,
                &t.task_id,
                TaskStatus::Running,
                None,
            )
            .await?;
            if t.status == TaskStatus::Running {
                self.supersede_older_tasks(database_id, &t.task_id).await?;
                self.store
                    .append_log(
                        database_id,
                        &t.task_id,
                        format!(
                            "task started: {} of database {database_id}",
                            t.task_type.as_str()
                        ),
                        Map::new(),
                    )
                    .await?;
            }
        }
        if let Some(t) = &task
            && matches!(t.status, TaskStatus::Canceled | TaskStatus::Canceling)
        {
            return Ok(Loaded::Canceled(Box::new(db), t.clone()));
        }
        let task = task.filter(|t| !t.status.is_terminal());
        // A background episode's reconcile task gives way to a request's task.
        let episode = state.task_id.clone().filter(|_| task.is_none());
        if let (Some(t), Some(old)) = (&task, &state.task_id)
            && &t.task_id != old
        {
            self.end_episode(database_id, old, &t.task_id).await?;
            *state = WorkerState::default();
        }
        let log = TaskLog::new(
            self.store.clone(),
            database_id,
            task.as_ref().map(|t| t.task_id.clone()).or(episode),
            true,
        );
        let records = self.records(database_id).await?;
        let stored = self.stored_credentials(database_id).await?;
        let super::inputs::DesiredState {
            desired,
            creds,
            creds_changed,
        } = super::inputs::desired_state(
            &db,
            super::inputs::Context {
                hosts: self.fleet.placements(),
                records: &records,
                stored_creds: stored,
                manifest: &self.manifest,
                authority: &self.authority,
                dcs: &self.dcs,
                now: Utc::now(),
            },
        )?;
        if creds_changed {
            // Passwords and keys are durable before any container is given them.
            self.put_credentials(database_id, &creds).await?;
        }
        // Each node's etcd user exists before a container logs in with it (ADR 017).
        crate::patroni::etcd_auth::ensure_users(&*self.store, &self.dcs, &db, &creds).await?;
        let patroni = crate::patroni::read(&*self.store, database_id).await?;
        Ok(Loaded::Pass(Box::new(Pass {
            db,
            task,
            log,
            desired,
            records,
            creds,
            patroni,
        })))
    }

    pub(crate) fn plan_input(&self, pass: &Pass, reachable: &BTreeSet<String>) -> PlanInput {
        let observed = self
            .fleet
            .observed(&pass.db.record.id)
            .into_iter()
            .filter(|(host, _)| reachable.contains(host))
            .map(|(host, s)| {
                super::observe::observed_instance(&host, &s, pass.records.get(&s.instance_id))
            })
            .collect();
        super::inputs::plan_input(
            &pass.db,
            &pass.desired,
            &pass.records,
            &pass.creds,
            observed,
            reachable,
            &pass.patroni,
        )
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
            // Patroni's keys go with the database: an instance left on an unreachable host
            // is removed when it comes back, and a new database of this id starts afresh.
            self.store.forget_patroni(id, None).await?;
            crate::patroni::etcd_auth::drop_users(&*self.store, &self.dcs, &pass.db, None).await?;
            pass.log
                .line(format!("database {id} deleted"), Map::new())
                .await?;
            match self.store.remove_database(id, pass.db.spec_revision).await {
                // A newer request arrived meanwhile: plan again for it.
                Err(StoreError::Conflict) => return Ok(Outcome::Done),
                other => other?,
            }
            pass.log.end(TaskStatus::Completed, None).await?;
            return Ok(Outcome::Gone);
        }
        let ready = pass.records.values().all(|r| {
            r.observed.phase == Phase::Running
                || pass.db.record.stopped_instances.contains(&r.instance_id)
        });
        let becomes_available = ready && pass.db.record.state != DatabaseState::Available;
        let follow_up = super::restore::AfterRestoreBackup::of(&pass);
        if pass.log.task_id().is_some() || becomes_available {
            // Without a request's task, this line opens a reconcile task: the state moves,
            // and automation should see why.
            pass.log
                .line(format!("database {id} is available"), Map::new())
                .await?;
            if let Some(f) = &follow_up {
                pass.log
                    .line(
                        format!(
                            "node {}: a full backup of the restored data follows as task {}, \
                             so that its new timeline can be restored",
                            f.node, f.task.task_id
                        ),
                        super::task_log::fields(&[("node", &f.node)]),
                    )
                    .await?;
            }
            pass.log.end(TaskStatus::Completed, None).await?;
        }
        match follow_up {
            Some(f) => {
                self.queue_after_restore_backup(&pass, f, becomes_available)
                    .await?
            }
            None if becomes_available => {
                set_state(&*self.store, &pass.db, DatabaseState::Available).await?
            }
            None => {}
        }
        Ok(Outcome::Done)
    }

    /// Fails the pass's task (opening a reconcile task if it has none) and the database.
    pub(crate) async fn fail(&self, pass: &Pass, error: &str) -> Result<(), StoreError> {
        pass.log
            .line(format!("task failed: {error}"), Map::new())
            .await?;
        pass.log
            .end(TaskStatus::Failed, Some(error.to_string()))
            .await?;
        if !matches!(
            pass.db.record.state,
            DatabaseState::Deleting | DatabaseState::Failed
        ) {
            set_state(&*self.store, &pass.db, DatabaseState::Failed).await?;
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
            let log = TaskLog::new(self.store.clone(), database_id, None, false);
            self.remove(&log, &host, &state.instance_id).await?;
        }
        Ok(())
    }
}

/// Records the database's state, unless a newer spec arrived meanwhile (its own pass will
/// decide the state then).
pub(crate) async fn set_state(
    store: &dyn store::StateStore,
    db: &StoredDatabase,
    state: DatabaseState,
) -> Result<(), StoreError> {
    let record = store::DatabaseRecord {
        state,
        updated_at: Utc::now(),
        ..db.record.clone()
    };
    match store.put_database_record(db.spec_revision, &record).await {
        Err(StoreError::Conflict) => Ok(()),
        other => other,
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
/// its desired spec, nothing Patroni has yet to do (`waiting`), and no host with work left
/// merely out of sight.
fn unfinished(input: &PlanInput, waiting: &[plan::Wait], alive: &BTreeSet<String>) -> Unfinished {
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
    let settled = |d: &plan::DesiredInstance| d.stopped || running(d);
    if !input.deleting && (!input.desired.iter().all(settled) || !waiting.is_empty()) {
        return Unfinished::Waiting;
    }
    Unfinished::No
}
