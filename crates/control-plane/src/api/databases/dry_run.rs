//! `?dry_run=true` on create and update: the plan the reconciler would execute now for the
//! spec sent, from the same code a pass runs ([`crate::reconciler::inputs`] and
//! [`plan::plan`]), described step by step. Nothing is written: the credentials and
//! certificates a new database or service would get are generated in memory and dropped.
//!
//! The containers are known from the instance records the leader keeps (any replica answers
//! a dry-run, and only the leader holds the agents' streams), and a host counts as reachable
//! while its lease is alive.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use plan::{ApplyReason, InstanceKind, Plan, Step};
use spec::manifest::Manifest;
use spec::{DryRunPlan, PlannedAction, PlannedKind, PlannedStep};
use store::StoredDatabase;

use crate::api::ApiError;
use crate::credentials::DatabaseCredentials;
use crate::desired::Desired;
use crate::instances::InstanceRecord;
use crate::reconciler::inputs::{self, Context, DesiredState};
use crate::state::AppState;

/// What the plan is made from besides the database: the state of the fleet as etcd has it.
pub(crate) struct Facts {
    pub records: BTreeMap<String, InstanceRecord>,
    pub stored_creds: Option<DatabaseCredentials>,
    pub hosts: Vec<spec::Host>,
    /// Hosts whose lease is alive.
    pub alive: BTreeSet<String>,
    /// What Patroni's keys say, by node.
    pub patroni: BTreeMap<String, plan::PatroniNode>,
    /// Patroni's DCS, as every `patroni.yml` names it.
    pub dcs: crate::patroni::config::Dcs,
    pub authority: pki::Authority,
    pub now: DateTime<Utc>,
}

/// Reads the facts for database `db.record.id` from etcd; reads only.
pub(crate) async fn facts(app: &AppState, database_id: &str) -> Result<Facts, ApiError> {
    let records = app
        .store
        .list_instances::<InstanceRecord>(database_id)
        .await?
        .into_iter()
        .map(|r| (r.instance_id.clone(), r))
        .collect();
    let stored_creds = app
        .store
        .get_credentials::<DatabaseCredentials>(database_id)
        .await?;
    let authority = crate::tls::FleetTls::stored_authority(&app.store)
        .await
        .map_err(|e| ApiError::Internal(format!("the fleet CA cannot be read: {e}")))?
        .ok_or_else(|| ApiError::Unavailable("the fleet CA does not exist yet".into()))?;
    Ok(Facts {
        records,
        stored_creds,
        hosts: app.store.list_hosts().await?,
        alive: app.store.host_liveness().await?.into_keys().collect(),
        patroni: crate::patroni::read(&app.store, database_id).await?,
        dcs: app.dcs.clone(),
        authority,
        now: Utc::now(),
    })
}

/// The plan for `db` (its record and spec as they would be stored if the request were
/// accepted), described. `forced`: the request asked for `force_update`.
///
/// Errors: what a pass would fail on before planning (an image the manifest lacks, a
/// certificate the CA cannot issue), as a 500: validation has accepted the spec by then.
pub(crate) fn dry_run_plan(
    db: &StoredDatabase,
    facts: Facts,
    manifest: &Manifest,
    forced: bool,
) -> Result<DryRunPlan, ApiError> {
    let DesiredState { desired, creds, .. } = inputs::desired_state(
        db,
        Context {
            hosts: inputs::placements(&facts.hosts),
            records: &facts.records,
            stored_creds: facts.stored_creds,
            manifest,
            authority: &facts.authority,
            dcs: &facts.dcs,
            now: facts.now,
        },
    )
    .map_err(|e| ApiError::Internal(format!("cannot plan: {e}")))?;
    let observed = inputs::observed_from_records(&facts.records, &facts.alive);
    let input = inputs::plan_input(
        db,
        &desired,
        &facts.records,
        &creds,
        observed,
        &facts.alive,
        &facts.patroni,
    );
    let plan = plan::plan(&input);
    let why = Why {
        desired: &desired,
        records: &facts.records,
        creds: &creds,
        deleting: input.deleting,
        forced,
    };
    let mut steps: Vec<PlannedStep> = plan.steps().map(|s| why.step(s)).collect();
    steps.extend(why.later(&plan));
    Ok(DryRunPlan {
        database_id: db.record.id.clone(),
        dry_run: true,
        steps,
    })
}

/// What a step's reason is told from.
struct Why<'a> {
    desired: &'a BTreeMap<String, Desired>,
    records: &'a BTreeMap<String, InstanceRecord>,
    creds: &'a DatabaseCredentials,
    deleting: bool,
    forced: bool,
}

fn instance_step(
    action: PlannedAction,
    kind: Option<&InstanceKind>,
    instance_id: &str,
    host_id: &str,
    reason: String,
) -> PlannedStep {
    let (kind, node_name, service_id) = match kind {
        Some(InstanceKind::Postgres { node, .. }) => {
            (PlannedKind::Postgres, Some(node.clone()), None)
        }
        Some(InstanceKind::Service { service_id }) => {
            (PlannedKind::Service, None, Some(service_id.clone()))
        }
        None => (PlannedKind::Service, None, None),
    };
    PlannedStep {
        action,
        kind,
        instance_id: Some(instance_id.to_string()),
        host_id: Some(host_id.to_string()),
        node_name: node_name.filter(|n| !n.is_empty()),
        service_id,
        reason,
    }
}

fn roles_step(action: PlannedAction, service_id: &str, reason: String) -> PlannedStep {
    PlannedStep {
        action,
        kind: PlannedKind::Roles,
        instance_id: None,
        host_id: None,
        node_name: None,
        service_id: Some(service_id.to_string()),
        reason,
    }
}

impl Why<'_> {
    fn step(&self, step: &Step) -> PlannedStep {
        match step {
            Step::Apply {
                instance_id,
                host_id,
                reason,
            } => {
                let d = self.desired.get(instance_id);
                let record = self.records.get(instance_id);
                let (action, text) = self.apply(*reason, d, record);
                instance_step(action, d.map(|d| &d.plan.kind), instance_id, host_id, text)
            }
            Step::Resize {
                instance_id,
                host_id,
                resources,
            } => {
                let d = self.desired.get(instance_id);
                let record = self.records.get(instance_id);
                let text = match record {
                    Some(r) if r.resources != *resources => "cpu/memory changed in place",
                    _ => "the record of the running container is brought up to date",
                };
                let kind = d.map(|d| &d.plan.kind).or(record.map(|r| &r.kind));
                instance_step(
                    PlannedAction::Resize,
                    kind,
                    instance_id,
                    host_id,
                    text.into(),
                )
            }
            Step::Remove {
                instance_id,
                host_id,
            } => {
                let text = if self.deleting {
                    "the database is deleted"
                } else {
                    "no longer in the spec"
                };
                let kind = self.records.get(instance_id).map(|r| &r.kind);
                instance_step(
                    PlannedAction::Remove,
                    kind,
                    instance_id,
                    host_id,
                    text.into(),
                )
            }
            Step::Stop {
                instance_id,
                host_id,
            } => instance_step(
                PlannedAction::Stop,
                self.records.get(instance_id).map(|r| &r.kind),
                instance_id,
                host_id,
                "stopped by stop-instance".into(),
            ),
            Step::CreateRoles { service_id } => {
                let known = self
                    .creds
                    .services
                    .get(service_id)
                    .is_some_and(|c| c.roles_created);
                let text = if known {
                    "a node's primary lacks the service's roles".to_string()
                } else {
                    format!(
                        "new service: its roles {} and {}",
                        crate::credentials::role_name(service_id, "ro"),
                        crate::credentials::role_name(service_id, "rw")
                    )
                };
                roles_step(PlannedAction::CreateRoles, service_id, text)
            }
            Step::DropRoles { service_id } => roles_step(
                PlannedAction::DropRoles,
                service_id,
                "the service is no longer in the spec".into(),
            ),
            Step::Switchover {
                instance_id,
                host_id,
                candidate,
                ..
            } => {
                let kind = self.records.get(instance_id).map(|r| &r.kind);
                instance_step(
                    PlannedAction::Switchover,
                    kind,
                    instance_id,
                    host_id,
                    format!(
                        "the node's primary is no longer in the spec: it hands over to {candidate} \
                         before it is removed"
                    ),
                )
            }
            Step::ForgetNode { node } => PlannedStep {
                action: PlannedAction::ForgetNode,
                kind: PlannedKind::Postgres,
                instance_id: None,
                host_id: None,
                node_name: Some(node.clone()),
                service_id: None,
                reason: if self
                    .desired
                    .values()
                    .any(|d| d.plan.kind.node() == Some(node))
                {
                    "keys Patroni left from an earlier node of this name".into()
                } else {
                    "the node is no longer in the spec".into()
                },
            },
            Step::Replicate { nodes } => PlannedStep {
                action: PlannedAction::Replicate,
                kind: PlannedKind::Postgres,
                instance_id: None,
                host_id: None,
                node_name: None,
                service_id: None,
                reason: format!(
                    "nodes {} each have a running primary: each publishes to and subscribes \
                     from every other one",
                    nodes.join(", ")
                ),
            },
        }
    }

    fn apply(
        &self,
        reason: ApplyReason,
        d: Option<&Desired>,
        record: Option<&InstanceRecord>,
    ) -> (PlannedAction, String) {
        match reason {
            ApplyReason::Create => (PlannedAction::Create, "new instance".into()),
            ApplyReason::Update => {
                let was = record.and_then(|r| r.observed.image.as_deref());
                let image = d.map(|d| d.spec.image.as_str());
                let text = match (was, image) {
                    (Some(was), Some(now)) if was != now => {
                        format!("image changed ({was} -> {now})")
                    }
                    _ if self.forced => "forced update (force_update=true)".into(),
                    _ => "config changed".into(),
                };
                (PlannedAction::Replace, text)
            }
            ApplyReason::Heal => {
                let observed = record.map(|r| &r.observed);
                let text = match observed.and_then(|o| o.error.clone()) {
                    Some(e) => format!("the container is down ({e}): it is brought back"),
                    None => "the container is down: it is brought back".into(),
                };
                let exists = observed.is_some_and(|o| o.container_id.is_some());
                let action = if exists {
                    PlannedAction::Replace
                } else {
                    PlannedAction::Create
                };
                (action, text)
            }
            ApplyReason::LiftLimits => (
                PlannedAction::Replace,
                "a cpu or memory limit is removed, which the engine cannot do in place".into(),
            ),
        }
    }

    /// What the plan cannot include yet but a later plan of the same task does: new
    /// instances that wait for a port an earlier step publishes, a host that is away, or a
    /// node's primary Patroni has yet to elect (a new node's other instances, roles and the
    /// services that use them); in the planner's phase order.
    fn later(&self, plan: &Plan) -> Vec<PlannedStep> {
        let planned: BTreeSet<&str> = plan.steps().filter_map(Step::instance_id).collect();
        let new = |d: &&Desired| {
            !self.records.contains_key(&d.plan.instance_id)
                && !planned.contains(d.plan.instance_id.as_str())
        };
        let create = |d: &Desired| {
            let why = d
                .waiting_for
                .as_deref()
                .unwrap_or("the node's primary runs under Patroni");
            instance_step(
                PlannedAction::Create,
                Some(&d.plan.kind),
                &d.plan.instance_id,
                &d.plan.host_id,
                format!("new instance, after the steps above, once {why}"),
            )
        };
        let (postgres, services): (Vec<&Desired>, Vec<&Desired>) = self
            .desired
            .values()
            .filter(new)
            .partition(|d| d.plan.kind.node().is_some());
        let roles_planned: BTreeSet<&str> = plan
            .steps()
            .filter_map(|s| match s {
                Step::CreateRoles { service_id } => Some(service_id.as_str()),
                _ => None,
            })
            .collect();
        let roles_later: BTreeSet<&str> = services
            .iter()
            .filter_map(|d| d.plan.kind.service_id())
            .filter(|s| !roles_planned.contains(s))
            .filter(|s| !self.creds.services.get(*s).is_some_and(|c| c.roles_created))
            .collect();
        let mut out: Vec<PlannedStep> = postgres.into_iter().map(create).collect();
        out.extend(roles_later.into_iter().map(|s| {
            roles_step(
                PlannedAction::CreateRoles,
                s,
                format!(
                    "new service: its roles {} and {}, once every node's primary runs",
                    crate::credentials::role_name(s, "ro"),
                    crate::credentials::role_name(s, "rw")
                ),
            )
        }));
        out.extend(services.into_iter().map(create));
        // A primary that hands over is removed by the plan that sees the new leader.
        out.extend(plan.steps().filter_map(|s| match s {
            Step::Switchover {
                instance_id,
                host_id,
                candidate,
                ..
            } => Some(instance_step(
                PlannedAction::Remove,
                self.records.get(instance_id).map(|r| &r.kind),
                instance_id,
                host_id,
                format!("no longer in the spec: removed once {candidate} is the primary"),
            )),
            _ => None,
        }));
        out
    }
}

#[cfg(test)]
mod tests;
