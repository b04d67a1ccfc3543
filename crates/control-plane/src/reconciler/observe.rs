//! What agents report, in the planner's terms and in the records the API reads.

use std::collections::BTreeSet;

use agent_proto::{Health, InstanceState, InstanceStatus};
use chrono::Utc;
use plan::InstanceKind;
use store::StoreError;

use super::Reconciler;
use super::pass::Pass;
use super::task_log::fields;
use crate::desired::DESIRED_HASH_LABEL;
use crate::instances::{InstanceRecord, Phase, view_of};

/// The planner's view of one reported container.
pub(crate) fn observed_instance(
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
                },
            });
    let resources = match (s.nano_cpus, s.memory_bytes) {
        (Some(nano_cpus), Some(memory_bytes)) => Some(plan::Resources {
            nano_cpus,
            memory_bytes,
        }),
        _ => None,
    };
    // Only a live container holds its ports.
    let host_ports: BTreeSet<u16> = match status {
        plan::ObservedStatus::Running | plan::ObservedStatus::Creating => s
            .ports
            .iter()
            .filter_map(|p| u16::try_from(p.host_port).ok().filter(|p| *p != 0))
            .collect(),
        _ => BTreeSet::new(),
    };
    plan::ObservedInstance {
        instance_id: s.instance_id.clone(),
        host_id: host.to_string(),
        kind,
        spec_hash: s.labels.get(DESIRED_HASH_LABEL).cloned(),
        status,
        resources,
        host_ports,
    }
}

impl Reconciler {
    /// Writes what agents report into the records the API reads, where it changed. The
    /// agent's stream is the only source: a view made from an older observation than the
    /// record's never replaces it.
    pub(crate) async fn refresh_views(
        &self,
        pass: &mut Pass,
        reachable: &BTreeSet<String>,
    ) -> Result<(), StoreError> {
        for record in pass.records.values_mut() {
            if !reachable.contains(&record.host_id) {
                continue;
            }
            let Some(host_sequence) = self.fleet.host_sequence(&record.host_id) else {
                continue;
            };
            let state = self.fleet.instance(&record.host_id, &record.instance_id);
            let mut view = view_of(state.as_ref(), host_sequence);
            if pass
                .db
                .record
                .stopped_instances
                .contains(&record.instance_id)
                && view.phase != Phase::Running
            {
                // Away on purpose: not a failure to report, nor to heal.
                view.phase = Phase::Stopped;
                view.error = None;
            }
            if view == record.observed || view.sequence < record.observed.sequence {
                continue;
            }
            // An instance that was stopped and is started again is missing until it is
            // applied: not a failure.
            let was_stopped = record.observed.phase == Phase::Stopped;
            if view.phase == Phase::Failed && record.observed.phase != Phase::Failed && !was_stopped
            {
                pass.log
                    .note(
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
            self.put_record(record).await?;
        }
        Ok(())
    }
}
