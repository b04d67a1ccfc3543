//! The desired state an operator submits: a database spec and its services.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::backup::{BackupConfig, RestoreConfig};

/// The full, declarative spec of one database.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DatabaseSpec {
    pub database_name: String,
    /// Postgres major version, resolved through the version manifest; absent = the default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgres_version: Option<String>,
    /// Host port every Postgres instance is published on (each instance is published,
    /// ADR 004). A fixed port must be free on each of the nodes' hosts: another database's
    /// fixed port there is refused with 409. `0` or absent = a free host port the agent has
    /// the engine pick at the instance's first create and keeps from then on (across
    /// container recreation and agent restarts); `connection_info` shows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    pub nodes: Vec<NodeSpec>,
    #[serde(default)]
    pub services: Vec<ServiceSpec>,
    /// Where every node's pgBackRest backups go and when they are taken, unless a node has
    /// its own (the reference API's `backup_config`; see `BackupConfig`). Accepted and
    /// validated; berth takes no backups yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_config: Option<BackupConfig>,
    /// The backup a new database starts from (the reference API's `restore_config`;
    /// see `RestoreConfig`). Accepted and validated; berth restores nothing yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_config: Option<RestoreConfig>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NodeSpec {
    /// `n<digits>`.
    pub name: String,
    /// The first host runs the node's primary, the others its streaming replicas.
    pub host_ids: Vec<String>,
    /// The node a node added to a live database copies its structure and data from before
    /// it joins replication (the reference API's `source_node`); absent = the first node of
    /// the spec that already replicates. Read only when the node joins (ADR 020).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_node: Option<String>,
    /// This node's backup config, replacing the database's whole (not merged; ADR 021).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_config: Option<BackupConfig>,
    /// The backup this node starts from when it is added, instead of copying `source_node`
    /// (refused together with it). Accepted and validated; berth restores nothing yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_config: Option<RestoreConfig>,
}

#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum ServiceType {
    Mcp,
    Rag,
    Postgrest,
}

impl ServiceType {
    pub const ALL: [ServiceType; 3] = [ServiceType::Mcp, ServiceType::Rag, ServiceType::Postgrest];

    pub fn as_str(self) -> &'static str {
        match self {
            ServiceType::Mcp => "mcp",
            ServiceType::Rag => "rag",
            ServiceType::Postgrest => "postgrest",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

impl std::fmt::Display for ServiceType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One element of `services`: a supporting service with one instance per host.
#[derive(Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ServiceSpec {
    pub service_id: String,
    pub service_type: ServiceType,
    /// Semver (`1.0`, `1.0.0`) or `latest`, as the user wrote it.
    pub version: String,
    pub host_ids: Vec<String>,
    /// The service type's settings (`GET /v1/service-types` lists them). May be left out,
    /// reading as `{}`, when the type requires none of its keys (`postgrest`).
    #[serde(default)]
    #[schema(value_type = Object)]
    pub config: Map<String, Value>,
    /// Host port the service's HTTP port is published on, on each of its hosts; `0` = a free
    /// port the engine picks; absent = not published (reached only on the database's
    /// network). A fixed port must be free on those hosts: another database's fixed port
    /// there is refused with 409.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// `"0.5"`, `"2"` or `"500m"`, echoed back as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<String>,
    /// SI or IEC (`"512M"`, `"1GiB"`), echoed back as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database_connection: Option<DatabaseConnection>,
}

/// The config without its secrets, naming where they were ([`crate::secrets::split_secrets`]):
/// a spec in a log or an assertion message shows no API key.
impl std::fmt::Debug for ServiceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (config, secrets) = crate::secrets::split_secrets(&self.config);
        let secrets: Vec<String> = secrets.into_iter().map(|(pointer, _)| pointer).collect();
        f.debug_struct("ServiceSpec")
            .field("service_id", &self.service_id)
            .field("service_type", &self.service_type)
            .field("version", &self.version)
            .field("host_ids", &self.host_ids)
            .field("config", &config)
            .field("redacted_secrets", &secrets)
            .field("port", &self.port)
            .field("cpus", &self.cpus)
            .field("memory", &self.memory)
            .field("database_connection", &self.database_connection)
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DatabaseConnection {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_nodes: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_session_attrs: Option<TargetSessionAttrs>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum TargetSessionAttrs {
    Primary,
    PreferStandby,
    Standby,
    ReadWrite,
    Any,
}

impl TargetSessionAttrs {
    pub const ALL: [TargetSessionAttrs; 5] = [
        TargetSessionAttrs::Primary,
        TargetSessionAttrs::PreferStandby,
        TargetSessionAttrs::Standby,
        TargetSessionAttrs::ReadWrite,
        TargetSessionAttrs::Any,
    ];

    /// The libpq spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            TargetSessionAttrs::Primary => "primary",
            TargetSessionAttrs::PreferStandby => "prefer-standby",
            TargetSessionAttrs::Standby => "standby",
            TargetSessionAttrs::ReadWrite => "read-write",
            TargetSessionAttrs::Any => "any",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == s)
    }
}
