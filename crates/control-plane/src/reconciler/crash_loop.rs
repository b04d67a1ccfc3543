//! Containers that stop again after they were healed within one task.
//!
//! An instance whose container stops is healed (started or replaced) by the next plan. A
//! task that waits on it (for Patroni to elect a leader, say) would otherwise wait for
//! ever while the container stops again and again: a Patroni container is healthy as
//! soon as Patroni runs, so each heal succeeds, and a failed bootstrap (a restore to a
//! target the archive cannot reach) repeats on every start. The first stop in a task is
//! healed quietly; each later stop of the same instance counts as a failed attempt of the
//! task, with the reason the agent gave (the exit code and the image's last words), so the
//! task fails after its attempts, saying why.

use std::collections::BTreeMap;

use plan::{ApplyReason, ObservedStatus, PlanInput, Step};

use super::ReconcileError;
use crate::instances::InstanceRecord;

/// How often an instance may stop within one task before each further stop counts as a
/// failed attempt: once (a host restarted, a container killed by the OOM killer once).
pub(crate) const QUIET_HEALS: u32 = 1;

/// Counts the heals in `plan` of instances whose container stopped on its own (failed
/// or unhealthy, not stopped on purpose, not missing), in `heals` (by instance, for the
/// current task), and returns a failed attempt's error for those healed more than
/// [`QUIET_HEALS`] times.
pub(crate) fn count_heals(
    plan: &plan::Plan,
    input: &PlanInput,
    records: &BTreeMap<String, InstanceRecord>,
    heals: &mut BTreeMap<String, u32>,
) -> Option<ReconcileError> {
    let mut again = Vec::new();
    for step in plan.phases.iter().flatten() {
        let Step::Apply {
            instance_id,
            host_id,
            reason: ApplyReason::Heal,
        } = step
        else {
            continue;
        };
        let crashed = input.observed.iter().any(|o| {
            &o.instance_id == instance_id
                && &o.host_id == host_id
                && o.status == ObservedStatus::Failed
        });
        if !crashed {
            continue;
        }
        let n = heals.entry(instance_id.clone()).or_default();
        *n += 1;
        if *n > QUIET_HEALS {
            let why = records
                .get(instance_id)
                .and_then(|r| r.observed.error.clone())
                .unwrap_or_else(|| "no reason reported".into());
            again.push(format!(
                "{instance_id} on {host_id} stopped again ({n} times in this task): {why}",
                n = *n
            ));
        }
    }
    (!again.is_empty()).then(|| ReconcileError::Step(again.join("; ")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use plan::{InstanceKind, ObservedInstance};

    fn input(status: ObservedStatus) -> PlanInput {
        PlanInput {
            observed: vec![ObservedInstance {
                instance_id: "i1".into(),
                host_id: "h1".into(),
                kind: InstanceKind::Postgres { node: "n1".into() },
                spec_hash: Some("x".into()),
                status,
                resources: None,
                host_ports: Default::default(),
            }],
            ..PlanInput::default()
        }
    }

    fn heal() -> plan::Plan {
        plan::Plan {
            phases: vec![vec![Step::Apply {
                instance_id: "i1".into(),
                host_id: "h1".into(),
                reason: ApplyReason::Heal,
            }]],
            ..plan::Plan::default()
        }
    }

    #[test]
    fn the_second_stop_of_an_instance_in_a_task_is_a_failed_attempt() {
        let mut heals = BTreeMap::new();
        let failed = input(ObservedStatus::Failed);
        assert!(count_heals(&heal(), &failed, &BTreeMap::new(), &mut heals).is_none());
        let e = count_heals(&heal(), &failed, &BTreeMap::new(), &mut heals).unwrap();
        assert!(
            e.to_string().contains("i1 on h1 stopped again (2 times"),
            "{e}"
        );
        assert!(count_heals(&heal(), &failed, &BTreeMap::new(), &mut heals).is_some());
    }

    #[test]
    fn a_container_stopped_on_purpose_or_missing_is_not_counted() {
        let mut heals = BTreeMap::new();
        for status in [ObservedStatus::Stopped, ObservedStatus::Missing] {
            for _ in 0..3 {
                assert!(
                    count_heals(&heal(), &input(status), &BTreeMap::new(), &mut heals).is_none()
                );
            }
        }
        assert!(heals.is_empty());
    }
}
