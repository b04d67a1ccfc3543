//! The planner's input and output.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

/// CPU and memory limits of one container. `0` means unlimited, as in the Docker API.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Resources {
    pub nano_cpus: i64,
    pub memory_bytes: i64,
}

/// What an instance runs; decides the phase its steps belong to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum InstanceKind {
    Postgres { node: String, primary: bool },
    Service { service_id: String },
}

impl InstanceKind {
    /// The service id for a service instance, `None` for Postgres.
    pub fn service_id(&self) -> Option<&str> {
        match self {
            InstanceKind::Service { service_id } => Some(service_id),
            InstanceKind::Postgres { .. } => None,
        }
    }
}

/// One container the spec asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredInstance {
    pub instance_id: String,
    pub host_id: String,
    pub kind: InstanceKind,
    /// Hash of everything that needs a new container (image, files, env, ports, ...), resources excluded.
    pub spec_hash: String,
    pub resources: Resources,
    /// Its spec cannot be written yet: it names another instance whose published port is
    /// not known (it is created in an earlier phase of this very plan, or its host is
    /// away). The planner neither applies nor removes it; a later plan does, once the port
    /// is known. `spec_hash` is then meaningless.
    #[serde(default)]
    pub waiting: bool,
    /// Host ports it publishes on a fixed number (the spec's `port`; not the ones an agent
    /// picks). A step that takes one waits for the steps on the same host that free it.
    #[serde(default)]
    pub host_ports: BTreeSet<u16>,
}

/// What an agent reports about a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ObservedStatus {
    Creating,
    Running,
    Failed,
    Stopped,
    /// The agent knows the instance (its data directory or a record) but its container is gone.
    Missing,
}

impl ObservedStatus {
    /// Whether the container needs to be brought back rather than left alone.
    pub fn is_down(self) -> bool {
        matches!(
            self,
            ObservedStatus::Failed | ObservedStatus::Stopped | ObservedStatus::Missing
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObservedInstance {
    pub instance_id: String,
    pub host_id: String,
    pub kind: InstanceKind,
    /// The desired spec_hash the container was created from (a label), None if unknown.
    pub spec_hash: Option<String>,
    pub status: ObservedStatus,
    /// The container's limits as the engine reports them; None when the agent does not say
    /// (then the record's resources stand in for them).
    #[serde(default)]
    pub resources: Option<Resources>,
    /// Host ports the container holds now.
    #[serde(default)]
    pub host_ports: BTreeSet<u16>,
}

/// What the control plane recorded after a successful step (etcd), so a restarted leader knows what it applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedRecord {
    pub instance_id: String,
    pub host_id: String,
    pub kind: InstanceKind,
    pub spec_hash: String,
    pub resources: Resources,
}

/// Everything the planner looks at for one database.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanInput {
    pub database_id: String,
    /// True while the database is being deleted: the desired set is then empty
    /// (whatever `desired` holds is ignored).
    pub deleting: bool,
    pub desired: Vec<DesiredInstance>,
    /// What the agents of reachable hosts report for this database. Instances of hosts in `unreachable_hosts` are absent here.
    pub observed: Vec<ObservedInstance>,
    pub applied: Vec<AppliedRecord>,
    /// Service ids whose two managed Postgres roles exist (recorded by the control plane).
    pub roles: BTreeSet<String>,
    /// Hosts whose agent is not reachable: nothing is planned on them, and nothing is removed from them.
    pub unreachable_hosts: BTreeSet<String>,
}

/// Why an instance is (re)applied; for task logs and instance status, not for the step's effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApplyReason {
    /// Nothing was ever applied (no record).
    Create,
    /// The container was created from another spec_hash.
    Update,
    /// The container failed, stopped or disappeared.
    Heal,
    /// Only a cpu or memory limit is lifted. The engine cannot do that in place (a zero in
    /// its update API means "leave as is", and it refuses the values that would mean
    /// "unlimited"), so the container is replaced with one without the limit.
    LiftLimits,
}

/// One idempotent action. `Apply` means "ensure the container matches the desired instance
/// (create or recreate it), then record it"; the executor takes the spec and resources from
/// the desired instance with that id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Step {
    Apply {
        instance_id: String,
        host_id: String,
        reason: ApplyReason,
    },
    /// Change the container's limits in place, then record them with the desired spec_hash
    /// (the container already runs it; the record may be missing or stale).
    Resize {
        instance_id: String,
        host_id: String,
        resources: Resources,
    },
    /// Remove the container (and its record) from the host.
    Remove {
        instance_id: String,
        host_id: String,
    },
    CreateRoles {
        service_id: String,
    },
    DropRoles {
        service_id: String,
    },
}

impl Step {
    /// The host the step acts on; `None` for role steps, which go through the database.
    pub fn host_id(&self) -> Option<&str> {
        match self {
            Step::Apply { host_id, .. }
            | Step::Resize { host_id, .. }
            | Step::Remove { host_id, .. } => Some(host_id),
            Step::CreateRoles { .. } | Step::DropRoles { .. } => None,
        }
    }

    /// The instance the step acts on; `None` for role steps.
    pub fn instance_id(&self) -> Option<&str> {
        match self {
            Step::Apply { instance_id, .. }
            | Step::Resize { instance_id, .. }
            | Step::Remove { instance_id, .. } => Some(instance_id),
            Step::CreateRoles { .. } | Step::DropRoles { .. } => None,
        }
    }

    /// The order within a phase: by instance or service id, then host.
    pub(crate) fn sort_key(&self) -> (&str, &str) {
        match self {
            Step::Apply {
                instance_id,
                host_id,
                ..
            }
            | Step::Resize {
                instance_id,
                host_id,
                ..
            }
            | Step::Remove {
                instance_id,
                host_id,
            } => (instance_id, host_id),
            Step::CreateRoles { service_id } | Step::DropRoles { service_id } => (service_id, ""),
        }
    }
}

/// Phases run in order, stopping at the first failure; the steps of one phase may run in
/// parallel. Empty phases are omitted, so an empty plan has no phases.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub phases: Vec<Vec<Step>>,
}

impl Plan {
    /// True when the database has converged: nothing to do.
    pub fn is_empty(&self) -> bool {
        self.phases.iter().all(Vec::is_empty)
    }

    /// Every step, phase by phase.
    pub fn steps(&self) -> impl Iterator<Item = &Step> {
        self.phases.iter().flatten()
    }
}
