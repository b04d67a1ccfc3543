//! What the API returns and what the store keeps: database records, instances, tasks,
//! task log entries and hosts.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::model::DatabaseSpec;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DatabaseState {
    Creating,
    Modifying,
    Available,
    Failed,
    Deleting,
}

/// A database as the API shows it: the spec with secrets removed, plus what runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Database {
    pub id: String,
    /// The owner's identifier given at create or update (the reference API's `tenant_id`),
    /// returned as given; absent when none was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<String>,
    pub state: DatabaseState,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub spec: DatabaseSpec,
    #[serde(default)]
    pub instances: Vec<Instance>,
    #[serde(default)]
    pub service_instances: Vec<ServiceInstance>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum InstanceState {
    Creating,
    Available,
    Failed,
    /// Stopped by `stop-instance`: no container, its data directory kept, until a
    /// `start-instance`.
    Stopped,
    /// It runs, but a `critical` warning holds (`warnings`): left alone, it will stop.
    Degraded,
    Unknown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum InstanceRole {
    Primary,
    Replica,
}

/// One Postgres container of a database node. Patroni runs the node's instances and
/// decides which one is the primary: `role`, `patroni_state`, `timeline`, `lag_bytes` and
/// `pending_restart` are what its keys in the DCS say (ADR 016), read when the database is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Instance {
    pub id: String,
    pub database_id: String,
    pub node_name: String,
    pub host_id: String,
    /// `primary` for the instance holding the node's leader key (the one that accepts
    /// writes), `replica` for every other.
    pub role: InstanceRole,
    /// `available` once Patroni reports its Postgres running; `unknown` while its host is.
    pub state: InstanceState,
    /// Patroni's state of the instance's Postgres: `running`, `starting`, `stopped`,
    /// `creating replica`, `crashed`, ...; absent until Patroni registered the instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patroni_state: Option<String>,
    /// The timeline its Postgres is on (it moves at every promotion).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeline: Option<u64>,
    /// How far behind the primary it is, in bytes of WAL, as of Patroni's last loop on
    /// both (0 for the primary).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag_bytes: Option<u64>,
    /// A changed parameter takes effect only after a restart of its Postgres.
    #[serde(default)]
    pub pending_restart: bool,
    /// Its WAL as last checked ([`crate::wal`]): `pg_wal`'s size, inactive replication
    /// slots, the archiver; absent until a check read it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wal: Option<crate::wal::WalReport>,
    /// Its WAL archiver, from the same check ([`crate::wal::archive_status`]): the last
    /// segment archived, the last that failed, the failure count, the backlog, and whether
    /// archiving fails now (then `error` says so too). Absent where the instance archives
    /// nothing (`archive_mode` off, or `on` on a replica, [`crate::wal::archives`]) and
    /// until a check read it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wal_archive: Option<crate::wal::WalArchive>,
    /// A primary's pglogical subscriptions, one per other node of the database, as last
    /// checked ([`crate::subscriptions`]): status and lag behind each provider. Absent on
    /// replicas, on databases of one node, and until a check read them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subscriptions: Vec<crate::subscriptions::Subscription>,
    /// What the last checks found wrong (WAL, subscriptions), most severe first; a
    /// `critical` one makes the instance `degraded`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<crate::wal::InstanceWarning>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_info: Option<ConnectionInfo>,
    /// What is wrong with it, absent when nothing is: first why it does not run (its host is
    /// unreachable, its container failed or could not be created), then, after `; `, WAL
    /// archiving that fails ([`crate::wal::archive_error`], while `wal_archive.failing`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ConnectionInfo {
    pub addresses: Vec<String>,
    pub port: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ServiceInstanceState {
    Creating,
    Running,
    Failed,
    Deleting,
    Unknown,
}

/// One container of a service, on one host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ServiceInstance {
    /// `{database_id}-{service_id}-{host_id}`.
    pub service_instance_id: String,
    pub service_id: String,
    pub database_id: String,
    pub host_id: String,
    pub state: ServiceInstanceState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<ServiceInstanceStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ServiceInstanceStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default)]
    pub addresses: Vec<String>,
    #[serde(default)]
    pub ports: Vec<PortMapping>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_health_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub ready: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PortMapping {
    pub name: String,
    pub container_port: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_port: Option<u16>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TaskType {
    Create,
    Update,
    Delete,
    /// A change the control plane made on its own, outside any request: healing a container
    /// that died, or finishing what a failed task left undone. Its log says what and why.
    Reconcile,
    /// `DELETE /v1/hosts/{host_id}`: a task of scope `host`.
    RemoveHost,
    /// `POST .../nodes/{node_name}/switchover` ([`crate::operations`]).
    Switchover,
    /// `POST .../nodes/{node_name}/failover`.
    Failover,
    /// `POST .../instances/{instance_id}/restart`.
    RestartInstance,
    /// `POST .../instances/{instance_id}/stop-instance`.
    StopInstance,
    /// `POST .../instances/{instance_id}/start-instance`.
    StartInstance,
    /// `POST .../nodes/{node_name}/backups`: a pgBackRest backup of the node (ADR 022).
    NodeBackup,
    /// `POST .../restore`: nodes rebuilt from a pgBackRest backup (ADR 025).
    Restore,
}

impl TaskType {
    /// One of the operations on a running database's instances ([`crate::operations`]).
    pub fn is_operation(self) -> bool {
        matches!(
            self,
            TaskType::Switchover
                | TaskType::Failover
                | TaskType::RestartInstance
                | TaskType::StopInstance
                | TaskType::StartInstance
                | TaskType::NodeBackup
                | TaskType::Restore
        )
    }

    /// The API's name of the type (`create`, `restart_instance`, ...), as serialized.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskType::Create => "create",
            TaskType::Update => "update",
            TaskType::Delete => "delete",
            TaskType::Reconcile => "reconcile",
            TaskType::RemoveHost => "remove_host",
            TaskType::Switchover => "switchover",
            TaskType::Failover => "failover",
            TaskType::RestartInstance => "restart_instance",
            TaskType::StopInstance => "stop_instance",
            TaskType::StartInstance => "start_instance",
            TaskType::NodeBackup => "node_backup",
            TaskType::Restore => "restore",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    Pending,
    Running,
    Completed,
    Failed,
    Canceling,
    Canceled,
}

impl TaskStatus {
    /// The API's name of the status (`pending`, `running`, `completed`, `failed`,
    /// `canceling`, `canceled`), as serialized: what messages show too.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Pending => "pending",
            TaskStatus::Running => "running",
            TaskStatus::Completed => "completed",
            TaskStatus::Failed => "failed",
            TaskStatus::Canceling => "canceling",
            TaskStatus::Canceled => "canceled",
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            TaskStatus::Completed | TaskStatus::Failed | TaskStatus::Canceled
        )
    }
}

impl std::fmt::Display for TaskStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One asynchronous operation on a database (scope `database`) or on a host (scope `host`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Task {
    pub task_id: String,
    /// The database, for tasks of scope `database`; absent for a host's tasks.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub database_id: String,
    /// `database` or `host` ([`TaskScope`]), as in the reference API.
    #[schema(value_type = crate::TaskScope)]
    pub scope: String,
    /// The database id or the host id the task belongs to, per `scope`.
    pub entity_id: String,
    #[serde(rename = "type")]
    pub task_type: TaskType,
    pub status: TaskStatus,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TaskLogEntry {
    pub id: String,
    pub timestamp: DateTime<Utc>,
    pub message: String,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    #[schema(value_type = Object)]
    pub fields: Map<String, Value>,
}

impl TaskLogEntry {
    /// A new entry written now. Its id is a UUIDv7, so ids sort in the order entries are
    /// made: the log's key order and the `after_entry_id` cursor rely on it.
    pub fn new(message: impl Into<String>, fields: Map<String, Value>) -> Self {
        TaskLogEntry {
            id: uuid::Uuid::now_v7().to_string(),
            timestamp: Utc::now(),
            message: message.into(),
            fields,
        }
    }
}

/// A page of a task's log, read with an exclusive cursor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TaskLog {
    /// The database, for a task of scope `database` (the reference API keeps it beside
    /// `entity_id`, deprecated); absent for a host's task.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub database_id: String,
    /// `database` or `host`.
    #[schema(value_type = crate::TaskScope)]
    pub scope: String,
    /// The database id or the host id, per `scope`.
    pub entity_id: String,
    pub task_id: String,
    pub task_status: TaskStatus,
    /// The id of the last entry returned, or the cursor the caller sent when there was none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_entry_id: Option<String>,
    pub entries: Vec<TaskLogEntry>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum HostState {
    Healthy,
    Degraded,
    Unreachable,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HostStatus {
    pub state: HostState,
    pub updated_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A host of the fleet, as its agent registered it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Host {
    pub id: String,
    /// Where the control plane reaches the host's agent (`host:port`).
    pub agent_address: String,
    /// Addresses other hosts and clients use to reach published ports; the first is the one
    /// instances on other hosts are given.
    pub addresses: Vec<String>,
    /// The container engine the agent drives. Hosts with the same engine id share its
    /// networks, so their instances reach each other by alias; others go through
    /// `addresses[0]` and a published port. Empty for an agent that could not tell.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub engine_id: String,
    pub cpus: u32,
    pub memory_bytes: u64,
    pub agent_version: String,
    pub registered_at: DateTime<Utc>,
    pub status: HostStatus,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CreateDatabaseResponse {
    pub task: Task,
    pub database: Database,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ListDatabasesResponse {
    pub databases: Vec<Database>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ListTasksResponse {
    pub tasks: Vec<Task>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ListHostsResponse {
    pub hosts: Vec<Host>,
}

/// `GET /v1/version`; `revision`, `revision_time` and `arch` as in the reference API's
/// `VersionInfo`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VersionResponse {
    pub version: String,
    pub api_version: String,
    /// The git commit the server was built from, or `unknown` when it was not built from a
    /// git checkout.
    pub revision: String,
    /// The commit's time; absent when the revision is unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision_time: Option<DateTime<Utc>>,
    /// The CPU architecture the server was built for, in Go's terms as the reference API
    /// reports it (`amd64`, `arm64`).
    pub arch: String,
}

/// The one error body of the API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ApiErrorBody {
    /// `invalid_input`, `not_found`, `database_already_exists`, `database_not_modifiable`, ...
    pub name: String,
    pub message: String,
    /// Every offending field, for `invalid_input`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<crate::FieldError>,
}

/// What `POST /v1/databases?dry_run=true` and `POST /v1/databases/{id}?dry_run=true` answer:
/// the plan the reconciler would execute now for the spec sent, after the same validation as
/// without `dry_run`. Nothing is stored: no spec, no task, no credentials.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DryRunPlan {
    pub database_id: String,
    /// Always `true`: says the answer is a plan, not an accepted change.
    pub dry_run: bool,
    /// In execution order (the planner's phases one after another); empty when the spec
    /// changes nothing.
    pub steps: Vec<PlannedStep>,
}

/// One step of a [`DryRunPlan`]. Optional fields are omitted when they do not apply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PlannedStep {
    pub action: PlannedAction,
    pub kind: PlannedKind,
    /// The container the step acts on (absent for role steps).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_id: Option<String>,
    /// The Postgres node, for Postgres instances.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    /// The service, for service instances and role steps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_id: Option<String>,
    /// Why, for a person: `new instance`, `config changed`, `image changed (a -> b)`,
    /// `cpu/memory changed in place`, `no longer in the spec`, ...
    pub reason: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PlannedAction {
    /// A container that does not exist yet.
    Create,
    /// A new container in place of the current one (its data directory is kept).
    Replace,
    /// New cpu or memory limits on the running container.
    Resize,
    /// The container and its record go.
    Remove,
    /// A stopped instance's container goes; its data directory and record stay.
    Stop,
    /// A service's two managed Postgres roles are created on every node's primary.
    CreateRoles,
    /// A removed service's roles are dropped.
    DropRoles,
    /// The node's primary hands over to a replica (Patroni's switchover) before its
    /// instance is removed by a later step of the same task.
    Switchover,
    /// Patroni's keys of a node are deleted from the DCS.
    ForgetNode,
    /// The nodes become one database: each node's primary publishes to and subscribes from
    /// every other node's primary with pglogical (ADR 019).
    Replicate,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PlannedKind {
    Postgres,
    Service,
    Roles,
}

#[cfg(test)]
mod tests {
    use super::TaskStatus;

    #[test]
    fn a_task_status_reads_as_it_serializes() {
        use TaskStatus::*;
        for status in [Pending, Running, Completed, Failed, Canceling, Canceled] {
            let json = serde_json::to_value(status).unwrap();
            assert_eq!(json.as_str(), Some(status.to_string().as_str()));
        }
    }
}
