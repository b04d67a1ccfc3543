//! The planner's input and output.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// CPU and memory limits of one container. `0` means unlimited, as in the Docker API.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Resources {
    pub nano_cpus: i64,
    pub memory_bytes: i64,
}

/// What an instance runs; decides the phase its steps belong to.
///
/// A Postgres instance's role is not part of it: Patroni decides which instance of a node
/// is the primary, and the planner reads that from [`PlanInput::patroni`] (ADR 016).
/// Records written before kept a `primary` flag here; it is ignored when read.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum InstanceKind {
    Postgres { node: String },
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

    /// The node of a Postgres instance, `None` for a service.
    pub fn node(&self) -> Option<&str> {
        match self {
            InstanceKind::Postgres { node } => Some(node),
            InstanceKind::Service { .. } => None,
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
    /// For a Postgres instance: it is on its node's first host (`host_ids[0]`), the one that
    /// initialises a new node. Once the node exists, Patroni's leader decides instead.
    #[serde(default)]
    pub bootstrap: bool,
    /// Stopped by `stop-instance`: its container is kept away (a [`Step::Stop`] when one
    /// runs) and its data directory kept; the node neither waits for it nor hands over to it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stopped: bool,
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
    /// What Patroni reports for each Postgres node of the database (its DCS keys), by node
    /// name. A node absent here has no key at all.
    #[serde(default)]
    pub patroni: BTreeMap<String, PatroniNode>,
    /// The nodes already made one database by replication (recorded by the control plane
    /// after [`Step::Replicate`]); empty before.
    #[serde(default)]
    pub replicated: BTreeSet<String>,
    /// For each node of `replicated`, the hosts of its instances that the other nodes'
    /// subscriptions list (their provider connection strings name every instance of the
    /// node, so that they follow a failover inside it). A node whose instances move is
    /// configured again.
    #[serde(default)]
    pub replicated_hosts: BTreeMap<String, BTreeSet<String>>,
}

/// The most a replica may lag behind its leader, in bytes of WAL, to be switched over to
/// (and Patroni's `maximum_lag_on_failover`, which berth renders with the same value).
pub const MAX_TAKEOVER_LAG_BYTES: u64 = 1 << 20;

/// One Postgres node as Patroni keeps it in its DCS (`{namespace}/{node}/...`, ADR 016).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PatroniNode {
    /// The member (an instance id) holding the node's leader key: the one instance that
    /// accepts writes.
    #[serde(default)]
    pub leader: Option<String>,
    /// The node's cluster was initialised (its `initialize` key holds a system id): a new
    /// instance clones from the leader, it never initialises the node again.
    #[serde(default)]
    pub initialized: bool,
    /// Each member's key, by member name (an instance id).
    #[serde(default)]
    pub members: BTreeMap<String, PatroniMember>,
}

/// One member's key: what its Patroni last wrote about itself.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PatroniMember {
    /// Patroni's role: `primary` (3.x also writes `master`), `replica`, `standby_leader`, ...
    pub role: String,
    /// Patroni's state of its Postgres: `running`, `starting`, `stopped`, `creating
    /// replica`, `crashed`, ...
    pub state: String,
    /// A replica's replication as Patroni 4.0 writes it (`replication_state`): `streaming`,
    /// or `in archive recovery` while it does not stream. Patroni 3.0.2 writes none.
    #[serde(default)]
    pub replication_state: Option<String>,
    /// The timeline its Postgres is on, when Patroni knows it.
    #[serde(default)]
    pub timeline: Option<u64>,
    /// Its WAL position (`xlog_location`): written on a primary, received or replayed
    /// (whichever is further) on a replica, in bytes.
    #[serde(default)]
    pub wal_position: Option<u64>,
    /// A changed parameter waits for a restart of its Postgres.
    #[serde(default)]
    pub pending_restart: bool,
}

impl PatroniMember {
    /// Its Postgres runs, as primary or replica, streaming or not.
    pub fn is_running(&self) -> bool {
        matches!(
            self.state.as_str(),
            "running" | "streaming" | "in archive recovery"
        )
    }

    /// It runs and, as a replica, streams from the leader as far as Patroni tells: 4.0
    /// says so (`replication_state`), 3.0.2 does not (a running replica counts).
    pub fn is_streaming_or_running(&self) -> bool {
        let replication = self.replication_state.as_deref().unwrap_or("streaming");
        matches!(self.state.as_str(), "running" | "streaming") && replication == "streaming"
    }

    /// The state to show: a running replica's replication state where Patroni gives one
    /// (`streaming`, `in archive recovery`), as its `GET /cluster` does, else the state.
    pub fn shown_state(&self) -> &str {
        match (&self.replication_state, self.state.as_str()) {
            (Some(r), "running") => r,
            _ => &self.state,
        }
    }

    /// It runs as a replica (not as the primary).
    pub fn is_replica(&self) -> bool {
        self.role == "replica"
    }
}

impl PatroniNode {
    /// How far `member` is behind the leader, in bytes of WAL: None without a leader or
    /// without either position. A member ahead of the leader's last report counts as 0.
    pub fn lag_bytes(&self, member: &str) -> Option<u64> {
        let leader = self.members.get(self.leader.as_deref()?)?.wal_position?;
        let at = self.members.get(member)?.wal_position?;
        Some(leader.saturating_sub(at))
    }

    /// Whether `member` could take over as leader now: it runs as a replica and is at most
    /// [`MAX_TAKEOVER_LAG_BYTES`] behind.
    pub fn can_take_over(&self, member: &str) -> bool {
        self.leader.as_deref() != Some(member)
            && self
                .members
                .get(member)
                .is_some_and(|m| m.is_streaming_or_running() && m.is_replica())
            && self
                .lag_bytes(member)
                .is_some_and(|lag| lag <= MAX_TAKEOVER_LAG_BYTES)
    }
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
    /// Remove the container of a stopped instance, keeping its data directory, its host
    /// ports and its record, for a later start.
    Stop {
        instance_id: String,
        host_id: String,
    },
    CreateRoles {
        service_id: String,
    },
    DropRoles {
        service_id: String,
    },
    /// Ask the node's leader (`instance_id` on `host_id`) to hand the primary role to
    /// `candidate`, a running replica that is caught up, and wait until Patroni names the
    /// candidate leader. Planned before the leader's own removal, which the next plan has.
    Switchover {
        node: String,
        instance_id: String,
        host_id: String,
        candidate: String,
    },
    /// Make the database's nodes one database (ADR 019): on each node's primary, a pglogical
    /// node publishing its tables and its DDL, subscribed to every other node's primary.
    /// `nodes` are the nodes of the spec, each with a running primary: the control plane
    /// compares them with the nodes it last configured, copies each node that joins from a
    /// source node, and unsubscribes every node from each node that left (ADR 020).
    Replicate {
        nodes: Vec<String>,
    },
    /// Delete the node's keys from Patroni's DCS: the node is gone (no instance of it is
    /// left), or it is about to be initialised anew and stale keys would stop that.
    ForgetNode {
        node: String,
    },
}

impl Step {
    /// The host the step acts on; `None` for role steps, which go through the database,
    /// and for [`Step::ForgetNode`], which goes to the DCS.
    pub fn host_id(&self) -> Option<&str> {
        match self {
            Step::Apply { host_id, .. }
            | Step::Resize { host_id, .. }
            | Step::Remove { host_id, .. }
            | Step::Stop { host_id, .. }
            | Step::Switchover { host_id, .. } => Some(host_id),
            Step::CreateRoles { .. }
            | Step::DropRoles { .. }
            | Step::ForgetNode { .. }
            | Step::Replicate { .. } => None,
        }
    }

    /// The instance the step acts on (a switchover's: the leader that hands over); `None`
    /// for role steps and [`Step::ForgetNode`].
    pub fn instance_id(&self) -> Option<&str> {
        match self {
            Step::Apply { instance_id, .. }
            | Step::Resize { instance_id, .. }
            | Step::Remove { instance_id, .. }
            | Step::Stop { instance_id, .. }
            | Step::Switchover { instance_id, .. } => Some(instance_id),
            Step::CreateRoles { .. }
            | Step::DropRoles { .. }
            | Step::ForgetNode { .. }
            | Step::Replicate { .. } => None,
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
            }
            | Step::Stop {
                instance_id,
                host_id,
            }
            | Step::Switchover {
                instance_id,
                host_id,
                ..
            } => (instance_id, host_id),
            Step::CreateRoles { service_id } | Step::DropRoles { service_id } => (service_id, ""),
            Step::ForgetNode { node } => (node, ""),
            Step::Replicate { .. } => ("", ""),
        }
    }
}

/// Phases run in order, stopping at the first failure; the steps of one phase may run in
/// parallel. Empty phases are omitted, so an empty plan has no phases.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub phases: Vec<Vec<Step>>,
    /// What the database waits for that no step can bring about: Patroni electing a
    /// leader, a member starting, a replica catching up before its leader can be removed.
    /// A plan without phases but with waits has not converged.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub waiting: Vec<Wait>,
}

/// Something only Patroni can bring about.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Wait {
    /// A sentence for the task log.
    pub reason: String,
    /// Its end changes no key berth watches closely (a replica's WAL position moves with
    /// every write, so it is not watched): look again after one of Patroni's loops. Without
    /// it, the change of Patroni's keys that ends the wait brings the next plan.
    pub recheck: bool,
}

impl Wait {
    /// Ended by a change of Patroni's keys.
    pub fn on_keys(reason: String) -> Self {
        Wait {
            reason,
            recheck: false,
        }
    }
}

impl Plan {
    /// True when there is no step to run now (the database may still be [`Plan::waiting`]).
    pub fn is_empty(&self) -> bool {
        self.phases.iter().all(Vec::is_empty)
    }

    /// Every step, phase by phase.
    pub fn steps(&self) -> impl Iterator<Item = &Step> {
        self.phases.iter().flatten()
    }
}
