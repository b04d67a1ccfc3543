//! Carrying out an operation a request asked for (`spec::operations`: switchover, failover,
//! restart, stop and start of an instance). The database's record holds it with the task
//! that carries it; the task's first pass carries it out before it plans, records that it
//! did (the record without it), and then plans as usual: a stop or a start is then the
//! plan's own `Stop` or `Apply`, and the task completes when the database has converged.
//!
//! An operation that fails fails its task, and nothing else: the database keeps its state,
//! since nothing of its spec changed.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{SecondsFormat, Utc};
use serde_json::{Map, json};
use spec::TaskStatus;
use spec::operations::Operation;
use store::StoreError;

use super::pass::Pass;
use super::task_log::fields;
use super::{ReconcileError, Reconciler};
use crate::instances::{InstanceRecord, Phase};

impl Reconciler {
    /// The operation the pass's task carries, if it is not carried out yet.
    pub(crate) fn pending_operation(pass: &Pass) -> Option<Operation> {
        let task = pass.task.as_ref()?;
        let op = pass.db.record.operation.as_ref()?;
        let current = pass.db.record.current_task_id.as_deref() == Some(task.task_id.as_str());
        (current && task.status == TaskStatus::Running && op.task_type() == task.task_type)
            .then(|| op.clone())
    }

    /// Carries out `op`, saying each step on the task, then records that it is done.
    ///
    /// Errors: Patroni refuses or does not carry it out ([`ReconcileError::Step`]), or the
    /// store fails.
    pub(crate) async fn carry_out(
        &self,
        pass: &Pass,
        op: &Operation,
    ) -> Result<(), ReconcileError> {
        let db = pass.db.record.id.as_str();
        let mut after = Stopped {
            instances: pass.db.record.stopped_instances.clone(),
            primaries: pass.db.record.stopped_primaries.clone(),
        };
        let leader_of = |node: &str| pass.patroni.get(node).and_then(|n| n.leader.clone());
        match op {
            Operation::Switchover {
                node,
                leader,
                candidate,
                scheduled_at,
            } => {
                let now = leader_of(node);
                if scheduled_at.is_none() && now.as_deref() != Some(leader.as_str()) {
                    let now = now.as_deref().unwrap_or("no instance");
                    self.say(
                        pass,
                        node,
                        format!("node {node}: its primary is {now} already"),
                    )
                    .await?;
                } else {
                    let host = host_of(pass, leader)?;
                    let new = self
                        .switchover(db, node, leader, &host, candidate.as_deref(), *scheduled_at)
                        .await?;
                    let line = match (new, scheduled_at) {
                        (Some(new), _) => format!("node {node}: Patroni names {new} the primary"),
                        (None, Some(at)) => format!(
                            "node {node}: Patroni switches over from {leader} at {}",
                            at.to_rfc3339_opts(SecondsFormat::Secs, true)
                        ),
                        (None, None) => unreachable!("a switchover for now names its new leader"),
                    };
                    self.say(pass, node, line).await?;
                }
            }
            Operation::Failover {
                node,
                leader,
                candidate,
            } => {
                if leader_of(node).as_deref() == Some(candidate.as_str()) {
                    // A leader that restarted after the failover finds it done.
                    self.say(
                        pass,
                        node,
                        format!("node {node}: its primary is {candidate}"),
                    )
                    .await?;
                    return self.done(pass, after).await;
                }
                let host = host_of(pass, candidate)?;
                let (status, answer) = self
                    .patroni_request(
                        db,
                        node,
                        candidate,
                        &host,
                        "/failover",
                        &json!({ "candidate": candidate }),
                    )
                    .await?;
                if status != 200 {
                    return Err(ReconcileError::Step(format!(
                        "Patroni refused the failover of node {node} to {candidate} (HTTP {status}): {answer}"
                    )));
                }
                let new = self
                    .wait_leader(
                        db,
                        node,
                        leader.as_deref(),
                        Some(candidate),
                        "failover",
                        &answer,
                    )
                    .await?;
                self.say(
                    pass,
                    node,
                    format!("node {node}: Patroni promoted {new}; it is the primary"),
                )
                .await?;
            }
            Operation::RestartInstance {
                instance_id,
                scheduled_at,
            } => {
                let record = record_of(pass, instance_id)?;
                let node = record.kind.node().unwrap_or_default().to_string();
                let body = match scheduled_at {
                    Some(at) => {
                        json!({ "schedule": at.to_rfc3339_opts(SecondsFormat::Secs, true) })
                    }
                    None => json!({}),
                };
                let (status, answer) = self
                    .patroni_request(db, &node, instance_id, &record.host_id, "/restart", &body)
                    .await?;
                let line = match (status, scheduled_at) {
                    (200, _) => format!("{instance_id}: Patroni restarted its Postgres ({answer})"),
                    (202, Some(at)) => format!(
                        "{instance_id}: Patroni restarts its Postgres at {}",
                        at.to_rfc3339_opts(SecondsFormat::Secs, true)
                    ),
                    _ => {
                        return Err(ReconcileError::Step(format!(
                            "Patroni refused to restart {instance_id} (HTTP {status}): {answer}"
                        )));
                    }
                };
                self.say(pass, &node, line).await?;
            }
            Operation::StopInstance {
                instance_id,
                hand_over_to,
            } => {
                let record = record_of(pass, instance_id)?;
                let node = record.kind.node().unwrap_or_default().to_string();
                let leads = leader_of(&node).as_deref() == Some(instance_id.as_str());
                match hand_over_to {
                    Some(candidate) if leads => {
                        self.switchover_step(pass, &node, instance_id, &record.host_id, candidate)
                            .await?;
                    }
                    // A forced stop of the primary: it keeps the node's latest data.
                    _ if leads => {
                        after.primaries.insert(node.clone(), instance_id.clone());
                    }
                    _ => {}
                }
                after.instances.insert(instance_id.clone());
            }
            Operation::Backup {
                node,
                backup_type,
                annotations,
            } => {
                let primary = leader_of(node).ok_or_else(|| {
                    ReconcileError::Step(format!("node {node} has no primary to back up"))
                })?;
                let host = host_of(pass, &primary)?;
                self.backup(pass, node, &primary, &host, *backup_type, annotations)
                    .await?;
            }
            Operation::Restore {
                nodes,
                restore_config,
            } => {
                let record = self.restore(pass, nodes, restore_config).await?;
                // The record named the nodes' new source before their data went; a newer
                // request that replaced it since wins, as for every operation.
                return match self
                    .store
                    .put_database_record(pass.db.spec_revision, &record)
                    .await
                {
                    Ok(()) | Err(StoreError::Conflict) => Ok(()),
                    Err(e) => Err(e.into()),
                };
            }
            Operation::StartInstance { instance_id } => {
                let record = record_of(pass, instance_id)?;
                if let Some(node) = record.kind.node() {
                    // The node runs again from this instance: what the stopped primary alone
                    // had is its own again, or (a forced start) given up.
                    after.primaries.remove(node);
                }
                after.instances.remove(instance_id);
            }
        }
        self.done(pass, after).await
    }

    /// Records that the pass's operation is carried out, with the stopped instances it
    /// leaves; a newer request that replaced the record meanwhile wins.
    async fn done(&self, pass: &Pass, after: Stopped) -> Result<(), ReconcileError> {
        let record = store::DatabaseRecord {
            operation: None,
            stopped_instances: after.instances,
            stopped_primaries: after.primaries,
            updated_at: Utc::now(),
            ..pass.db.record.clone()
        };
        match self
            .store
            .put_database_record(pass.db.spec_revision, &record)
            .await
        {
            Ok(()) | Err(StoreError::Conflict) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// The operation failed: its task fails with `error`, and the operation is dropped (a
    /// request may ask again). The database's state is left as it is.
    pub(crate) async fn operation_failed(
        &self,
        pass: &Pass,
        error: &ReconcileError,
    ) -> Result<(), ReconcileError> {
        pass.log
            .line(format!("task failed: {error}"), Map::new())
            .await?;
        pass.log
            .end(TaskStatus::Failed, Some(error.to_string()))
            .await?;
        let unchanged = Stopped {
            instances: pass.db.record.stopped_instances.clone(),
            primaries: pass.db.record.stopped_primaries.clone(),
        };
        self.done(pass, unchanged).await
    }

    async fn say(&self, pass: &Pass, node: &str, line: String) -> Result<(), ReconcileError> {
        pass.log.line(line, fields(&[("node", node)])).await?;
        Ok(())
    }
}

/// What an operation leaves stopped: the record's `stopped_instances` and
/// `stopped_primaries`.
struct Stopped {
    instances: BTreeSet<String>,
    primaries: BTreeMap<String, String>,
}

fn record_of<'a>(pass: &'a Pass, instance_id: &str) -> Result<&'a InstanceRecord, ReconcileError> {
    pass.records
        .get(instance_id)
        .ok_or_else(|| ReconcileError::Step(format!("instance {instance_id} no longer exists")))
}

fn host_of(pass: &Pass, instance_id: &str) -> Result<String, ReconcileError> {
    record_of(pass, instance_id).map(|r| r.host_id.clone())
}

impl Reconciler {
    /// Carries out a stopped instance's [`plan::Step::Stop`]: its container goes, its data
    /// directory and host ports stay (`delete_data: false`), and its record stays, marked
    /// stopped, for the API and for a later start.
    pub(crate) async fn stop(
        &self,
        pass: &Pass,
        host_id: &str,
        instance_id: &str,
    ) -> Result<Option<InstanceRecord>, ReconcileError> {
        let mut stream = self
            .agents
            .remove(
                host_id,
                agent_proto::RemoveInstanceRequest {
                    instance_id: instance_id.to_string(),
                    delete_data: false,
                },
            )
            .await
            .map_err(|s| ReconcileError::Step(s.message().to_string()))?;
        super::relay::relay(&mut stream, &pass.log, host_id, instance_id).await?;
        let Some(mut record) = pass.records.get(instance_id).cloned() else {
            return Ok(None);
        };
        record.observed.phase = Phase::Stopped;
        record.observed.ready = false;
        record.observed.error = None;
        record.observed.container_id = None;
        record.updated_at = Utc::now();
        self.put_record(&record).await?;
        Ok(Some(record))
    }
}
