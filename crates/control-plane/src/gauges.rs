//! The metrics that say what is rather than count what happened: whether this replica
//! leads, the fleet's instances by state, its hosts by state (docs/operations.md). They are
//! computed from what the leader already holds, never with etcd reads per scrape:
//! instances from the leader's live view of the agents' streams ([`Fleet`]) when
//! `/metrics` is scraped, hosts again whenever the leader's watch sees a host record, lease
//! or dial failure change.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use agent_proto::InstanceStatus;
use store::Store;
use telemetry::control_plane::{
    HOST_STATES, INSTANCE_KINDS, INSTANCE_STATES, set_hosts, set_instances, set_leader,
};
use tokio::sync::Notify;

use crate::fleet::Fleet;

const KIND_LABEL: &str = "berth.kind";

/// Shared by the `/metrics` handler and the leader loop. Cloning shares it.
#[derive(Clone, Default)]
pub struct FleetGauges {
    /// The leader's fleet view while this replica leads.
    fleet: Arc<Mutex<Option<Fleet>>>,
    /// Woken when hosts may have changed state.
    hosts: Arc<Notify>,
}

impl FleetGauges {
    /// Gauges of a replica that does not lead (yet): leader 0, no hosts.
    pub fn new() -> Self {
        set_leader(false);
        zero_hosts();
        FleetGauges::default()
    }

    /// This replica leads, and `fleet` is its view of the agents.
    pub fn leading(&self, fleet: Fleet) {
        *self.fleet.lock().expect("gauges lock") = Some(fleet);
        set_leader(true);
        self.hosts.notify_one();
    }

    /// This replica no longer leads: what it saw of the fleet is no longer kept up to date.
    /// Call it after the task of [`FleetGauges::follow_hosts`] was stopped.
    pub fn stepped_down(&self) {
        *self.fleet.lock().expect("gauges lock") = None;
        set_leader(false);
        zero_hosts();
    }

    /// Hosts may have changed state: [`FleetGauges::follow_hosts`] reads them again.
    pub fn hosts_changed(&self) {
        self.hosts.notify_one();
    }

    /// Sets the instance gauges from the leader's view, every combination of kind and state
    /// (0 when not leading), so that a state emptied since the last scrape reads 0.
    pub fn collect(&self) {
        let mut counts = [[0usize; INSTANCE_STATES.len()]; INSTANCE_KINDS.len()];
        if let Some(fleet) = &*self.fleet.lock().expect("gauges lock") {
            fleet.for_each_instance(|synced, state| {
                let kind = match state.labels.get(KIND_LABEL).map(String::as_str) {
                    Some("postgres") => 0,
                    Some("service") => 1,
                    _ => 2,
                };
                counts[kind][state_index(synced, state.state())] += 1;
            });
        }
        for (k, kind) in INSTANCE_KINDS.iter().enumerate() {
            for (s, state) in INSTANCE_STATES.iter().enumerate() {
                set_instances(kind, state, counts[k][s]);
            }
        }
    }

    /// While this replica leads: reads every host's state (as `GET /v1/hosts` does) each
    /// time [`FleetGauges::hosts_changed`] is called, several calls in a row being one read.
    pub async fn follow_hosts(self, store: Store) {
        loop {
            self.hosts.notified().await;
            match crate::hosts::hosts_with_status(&store).await {
                Ok(hosts) => {
                    for state in HOST_STATES {
                        let n = hosts
                            .iter()
                            .filter(|h| host_state_label(h.status.state) == state)
                            .count();
                        set_hosts(state, n);
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "cannot read host states for the metrics; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    self.hosts.notify_one();
                }
            }
        }
    }
}

fn zero_hosts() {
    for state in HOST_STATES {
        set_hosts(state, 0);
    }
}

/// The index in [`INSTANCE_STATES`] of an instance the agent reported as `status`.
fn state_index(synced: bool, status: InstanceStatus) -> usize {
    let label = match (synced, status) {
        (false, _) | (true, InstanceStatus::Unspecified) => "unknown",
        (true, InstanceStatus::Creating) => "creating",
        (true, InstanceStatus::Running) => "running",
        (true, InstanceStatus::Failed) => "failed",
        (true, InstanceStatus::Stopped) => "stopped",
        (true, InstanceStatus::Missing) => "missing",
    };
    INSTANCE_STATES
        .iter()
        .position(|s| *s == label)
        .expect("every label is in INSTANCE_STATES")
}

fn host_state_label(state: spec::HostState) -> &'static str {
    match state {
        spec::HostState::Healthy => "healthy",
        spec::HostState::Degraded => "degraded",
        spec::HostState::Unreachable => "unreachable",
    }
}
