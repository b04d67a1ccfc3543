//! Running a plan's steps on the agents, and recording what each one did.

use std::time::Instant;

use agent_proto::{ApplyInstanceRequest, RemoveInstanceRequest, ResizeInstanceRequest};
use chrono::Utc;
use plan::{ApplyReason, InstanceKind, Step};
use serde_json::json;
use spec::TaskStatus;

use super::pass::Pass;
use super::relay::relay;
use super::task_log::{TaskLog, fields};
use super::{ReconcileError, Reconciler, SEEN_TIMEOUT};
use crate::instances::{InstanceRecord, ObservedView, Phase, view_of};

impl Reconciler {
    /// Whether the pass's task was asked to stop: then no further step starts.
    async fn cancel_requested(&self, pass: &Pass) -> Result<bool, ReconcileError> {
        let Some(task) = &pass.task else {
            return Ok(false);
        };
        Ok(self
            .store
            .get_task(&pass.db.record.id, &task.task_id)
            .await?
            .is_some_and(|t| t.value.status == TaskStatus::Canceling))
    }

    /// Runs the plan's phases in order, the steps of a phase together, and stops at the
    /// first failure or when the task is being canceled (the next load of the pass ends it).
    pub(crate) async fn execute(
        &self,
        pass: &mut Pass,
        plan: plan::Plan,
    ) -> Result<(), ReconcileError> {
        for phase in plan.phases {
            if self.cancel_requested(pass).await? {
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
                    if self.cancel_requested(pass).await? {
                        return Ok(());
                    }
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
            if roles_phase {
                pass.creds = self.credentials(&pass.db.record.id).await?;
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
        // `status` and `duration_ms` let a follower (the CLI's progress display) pair a
        // step's start with its end without parsing messages.
        let mut start_fields = f.clone();
        start_fields.insert("status".into(), json!("started"));
        pass.log
            .line(format!("{what} on {host}"), start_fields)
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
            } => match self.guard_leader(pass, instance_id).await {
                Ok(()) => self
                    .remove(&pass.log, host_id, instance_id)
                    .await
                    .map(|_| None),
                Err(e) => Err(e),
            },
            Step::Stop {
                instance_id,
                host_id,
            } => self.stop(pass, host_id, instance_id).await,
            Step::Switchover {
                node,
                instance_id,
                host_id,
                candidate,
            } => self
                .switchover_step(pass, node, instance_id, host_id, candidate)
                .await
                .map(|_| None),
            Step::ForgetNode { node } => {
                let id = &pass.db.record.id;
                self.store.forget_patroni(id, Some(node)).await?;
                // The node's etcd user goes with its keys (ADR 017).
                let (store, dcs) = (&*self.store, &self.dcs);
                crate::patroni::etcd_auth::drop_users(store, dcs, &pass.db, Some(node)).await?;
                Ok(None)
            }
            Step::CreateRoles { service_id } => {
                self.roles(pass, service_id, true).await.map(|_| None)
            }
            Step::Replicate { nodes } => self.replicate(pass, nodes).await.map(|_| None),
            Step::DropRoles { service_id } => {
                match self.roles(pass, service_id, false).await {
                    Ok(()) => Ok(None),
                    Err(ReconcileError::Step(e)) => {
                        // A removed service's cleanup must not hold every later change back.
                        self.keep_roles(pass, service_id, &e).await?;
                        pass.log
                            .line(
                                format!(
                                    "dropping roles of service {service_id} failed: {e}; the roles are kept, \
                                     and dropping them is tried again with the next change of the spec"
                                ),
                                f.clone(),
                            )
                            .await?;
                        return Ok(None);
                    }
                    Err(e) => Err(e),
                }
            }
        };
        let elapsed = started.elapsed();
        telemetry::control_plane::reconcile_step(step_name(step), result.is_ok(), elapsed);
        let took = format!("{:.1}s", elapsed.as_secs_f64());
        let mut f = f;
        f.insert("duration_ms".into(), json!(elapsed.as_millis() as u64));
        let result = result.map_err(|e| match e {
            ReconcileError::Step(m) => ReconcileError::Step(self.in_spec_terms(pass, step, m)),
            other => other,
        });
        match &result {
            Ok(_) => {
                f.insert("status".into(), json!("done"));
                pass.log
                    .line(format!("{what} on {host}: done in {took}"), f)
                    .await?
            }
            Err(e) => {
                f.insert("status".into(), json!("failed"));
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

    /// Records that dropping a removed service's roles failed at this spec generation.
    async fn keep_roles(
        &self,
        pass: &Pass,
        service_id: &str,
        error: &str,
    ) -> Result<(), ReconcileError> {
        let mut creds = self.credentials(&pass.db.record.id).await?;
        if let Some(c) = creds.services.get_mut(service_id) {
            c.drop_error = Some((pass.db.record.generation, error.to_string()));
        }
        self.put_credentials(&pass.db.record.id, &creds).await?;
        Ok(())
    }

    /// An engine's refusal in the terms of the spec field that caused it, so that the task
    /// says what to change (the raw message stays, after it).
    fn in_spec_terms(&self, pass: &Pass, step: &Step, message: String) -> String {
        let Some(instance_id) = step.instance_id() else {
            return message;
        };
        let kind = pass
            .desired
            .get(instance_id)
            .map(|d| d.plan.kind.clone())
            .or_else(|| pass.records.get(instance_id).map(|r| r.kind.clone()));
        let field = |name: &str| match &kind {
            Some(InstanceKind::Service { service_id }) => pass
                .db
                .spec
                .services
                .iter()
                .position(|s| &s.service_id == service_id)
                .map(|i| format!("spec.services[{i}].{name}")),
            Some(InstanceKind::Postgres { .. }) if name == "port" => Some("spec.port".into()),
            _ => None,
        };
        let lower = message.to_lowercase();
        let (name, why) = if lower.contains("cpu") || lower.contains("nanocpus") {
            ("cpus", "the container engine refused this cpu limit")
        } else if lower.contains("memory") {
            ("memory", "the container engine refused this memory limit")
        } else if lower.contains("port is already allocated")
            || lower.contains("address already in use")
        {
            ("port", "the host port is already taken on this host")
        } else {
            return message;
        };
        match field(name) {
            Some(path) => format!("{path}: {why}: {message}"),
            None => message,
        }
    }

    /// Waits until the host's stream has reported what the agent replied with (sequence
    /// `seen`), then makes the record from the stream's view: the view has one writer.
    async fn observed_after(&self, host_id: &str, instance_id: &str, seen: u64) -> ObservedView {
        if !self.fleet.wait_seen(host_id, seen, SEEN_TIMEOUT).await {
            tracing::warn!(
                host_id,
                instance_id,
                seen,
                "the host's stream has not reported the step's result yet"
            );
        }
        let host_sequence = self.fleet.host_sequence(host_id).unwrap_or(0);
        match self.fleet.instance(host_id, instance_id) {
            Some(state) => view_of(Some(&state), host_sequence),
            // Not seen yet: said as such, not guessed.
            None => ObservedView {
                phase: Phase::Creating,
                container_id: None,
                image: None,
                ports: vec![],
                last_health_at: None,
                ready: false,
                error: None,
                sequence: 0,
            },
        }
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
        let outcome = async {
            let mut stream = self
                .agents
                .apply(
                    host_id,
                    ApplyInstanceRequest {
                        spec: Some(desired.spec.clone()),
                    },
                )
                .await
                .map_err(|s| ReconcileError::Step(s.message().to_string()))?;
            let result = relay(&mut stream, &pass.log, host_id, instance_id).await?;
            result.ok_or_else(|| {
                ReconcileError::Step("the agent ended the apply without a result".into())
            })
        }
        .await;
        let previous = pass.records.get(instance_id);
        let now = Utc::now();
        let r = match outcome {
            Ok(r) => r,
            Err(ReconcileError::Step(e)) => {
                // The container may never have started: the record says why, so the API
                // lists the instance as failed with this reason.
                let record = InstanceRecord {
                    apply_error: Some(self.in_spec_terms(
                        pass,
                        &Step::Apply {
                            instance_id: instance_id.to_string(),
                            host_id: host_id.to_string(),
                            reason: ApplyReason::Create,
                        },
                        e.clone(),
                    )),
                    updated_at: now,
                    observed: ObservedView {
                        phase: Phase::Failed,
                        ..self.observed_after(host_id, instance_id, 0).await
                    },
                    ..previous.cloned().unwrap_or_else(|| InstanceRecord {
                        instance_id: instance_id.to_string(),
                        database_id: pass.db.record.id.clone(),
                        host_id: host_id.to_string(),
                        kind: desired.plan.kind.clone(),
                        // Nothing was applied.
                        spec_hash: String::new(),
                        resources: plan::Resources::default(),
                        created_at: now,
                        updated_at: now,
                        observed: view_of(None, 0),
                        apply_error: None,
                        wal: None,
                        subscriptions: None,
                    })
                };
                self.put_record(&record).await?;
                return Err(ReconcileError::Step(e));
            }
            Err(other) => return Err(other),
        };
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
            observed: self.observed_after(host_id, instance_id, r.sequence).await,
            apply_error: None,
            wal: None,
            subscriptions: None,
        };
        self.put_record(&record).await?;
        Ok(record)
    }

    async fn resize(
        &self,
        pass: &Pass,
        host_id: &str,
        instance_id: &str,
        resources: plan::Resources,
    ) -> Result<InstanceRecord, ReconcileError> {
        let reply = self
            .agents
            .resize(
                host_id,
                ResizeInstanceRequest {
                    instance_id: instance_id.to_string(),
                    nano_cpus: resources.nano_cpus,
                    memory_bytes: resources.memory_bytes,
                },
            )
            .await
            .map_err(|s| ReconcileError::Step(s.message().to_string()))?;
        if !reply.applied {
            // The planner replaces a container to lift a limit; this means the container's
            // limits changed since the plan was made.
            return Err(ReconcileError::Step(
                "the container engine cannot lift a cpu or memory limit in place; the next plan replaces the container".into(),
            ));
        }
        let desired = pass.desired.get(instance_id);
        let observed = self
            .observed_after(host_id, instance_id, reply.sequence)
            .await;
        let mut record = match pass.records.get(instance_id) {
            Some(r) => r.clone(),
            None => {
                let d = desired
                    .ok_or_else(|| ReconcileError::Step(format!("{instance_id} is not desired")))?;
                InstanceRecord {
                    instance_id: instance_id.to_string(),
                    database_id: pass.db.record.id.clone(),
                    host_id: host_id.to_string(),
                    kind: d.plan.kind.clone(),
                    spec_hash: d.plan.spec_hash.clone(),
                    resources,
                    created_at: Utc::now(),
                    updated_at: Utc::now(),
                    observed: observed.clone(),
                    apply_error: None,
                    wal: None,
                    subscriptions: None,
                }
            }
        };
        record.resources = resources;
        if let Some(d) = desired {
            // The container already matches (that is why this is a resize): the record catches up.
            record.spec_hash = d.plan.spec_hash.clone();
        }
        if observed.sequence >= record.observed.sequence {
            record.observed = observed;
        }
        record.updated_at = Utc::now();
        self.put_record(&record).await?;
        Ok(record)
    }

    pub(crate) async fn remove(
        &self,
        log: &TaskLog,
        host_id: &str,
        instance_id: &str,
    ) -> Result<(), ReconcileError> {
        let mut stream = self
            .agents
            .remove(
                host_id,
                RemoveInstanceRequest {
                    instance_id: instance_id.to_string(),
                    delete_data: true,
                },
            )
            .await
            .map_err(|s| ReconcileError::Step(s.message().to_string()))?;
        relay(&mut stream, log, host_id, instance_id).await?;
        self.fleet.forget(host_id, instance_id);
        self.store
            .delete_instance(&log.database_id, instance_id)
            .await?;
        Ok(())
    }
}

fn step_name(step: &Step) -> &'static str {
    match step {
        Step::Apply { .. } => "apply",
        Step::Resize { .. } => "resize",
        Step::Remove { .. } => "remove",
        Step::Stop { .. } => "stop",
        Step::CreateRoles { .. } => "create_roles",
        Step::DropRoles { .. } => "drop_roles",
        Step::Switchover { .. } => "switchover",
        Step::ForgetNode { .. } => "forget_node",
        Step::Replicate { .. } => "replicate",
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
    // The primary is the node's leader, or before there is one, the instance that
    // initialises the node.
    let leads =
        |id: &str, node: &str| match pass.patroni.get(node).and_then(|n| n.leader.as_deref()) {
            Some(leader) => leader == id,
            None => pass.desired.get(id).is_some_and(|d| d.plan.bootstrap),
        };
    let noun = |id: &str| match kind_of(id) {
        Some(InstanceKind::Service { service_id }) => format!("service instance {service_id}"),
        Some(InstanceKind::Postgres { node }) if leads(id, &node) => {
            format!("postgres primary of node {node}")
        }
        Some(InstanceKind::Postgres { node }) => format!("postgres replica of node {node}"),
        None => format!("instance {id}"),
    };
    match step {
        Step::Apply {
            instance_id,
            host_id,
            reason,
        } => {
            let what = match reason {
                ApplyReason::Create => format!("creating {}", noun(instance_id)),
                ApplyReason::Update => format!("updating {}", noun(instance_id)),
                ApplyReason::Heal => format!("restoring {}", noun(instance_id)),
                ApplyReason::LiftLimits => format!(
                    "replacing the container of {} to remove a cpu or memory limit",
                    noun(instance_id)
                ),
            };
            (what, host_id.clone(), instance_id.clone())
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
        Step::Stop {
            instance_id,
            host_id,
        } => (
            format!(
                "stopping {} (its data directory is kept)",
                noun(instance_id)
            ),
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
        Step::Switchover {
            node,
            instance_id,
            host_id,
            candidate,
        } => (
            format!("switching node {node}'s primary over from {instance_id} to {candidate}"),
            host_id.clone(),
            instance_id.clone(),
        ),
        Step::ForgetNode { node } => (
            format!("forgetting Patroni's keys of node {node}"),
            "the DCS".into(),
            String::new(),
        ),
        Step::Replicate { nodes } => (
            format!(
                "replicating between nodes {} with pglogical",
                nodes.join(", ")
            ),
            "primaries".into(),
            String::new(),
        ),
    }
}
