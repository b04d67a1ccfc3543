//! `backup_config` and `restore_config`: where a database's pgBackRest backups go, when they
//! are taken, and which backup a new database or node starts from.
//!
//! Field names, shapes and defaults are the reference pgEdge Control Plane API's
//! (`BackupConfigSpec`, `BackupRepositorySpec`, `BackupScheduleSpec`, `RestoreConfigSpec`),
//! with the repository types berth supports (`posix`, `s3`). The parser
//! ([`crate::parse`], rules in `parse/backup.rs`) checks every field; docs/api.md and ADR 021
//! say what is accepted and why.
//!
//! The control plane acts on them: WAL archiving and backups (ADR 022), schedules (ADR
//! 024), restores (ADR 025).
//!
//! `s3_key` and `s3_key_secret` are secrets, handled as secret service config values are
//! ([`crate::secrets`]): the store seals them in place ([`for_each_repository_object`],
//! [`is_repository_secret_key`]), the API never returns them ([`redact_backups`]), an update
//! that leaves one out keeps the stored one and one sent as `null` is removed, and no Debug
//! output shows them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::{DatabaseSpec, NodeSpec};

/// `spec.backup_config`, or `spec.nodes[i].backup_config`, which replaces the database's
/// whole for that node (no field-by-field merge; ADR 021).
///
/// `{"repositories": [Repository, ...], "schedules": [BackupSchedule, ...]}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BackupConfig {
    /// Where backups and archived WAL go: 1 to 256 ([`MAX_REPOSITORIES`]), ids unique.
    pub repositories: Vec<Repository>,
    /// When backups are taken, in UTC: at most 32 ([`MAX_SCHEDULES`]), ids unique. Absent = none
    /// (backups on request only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub schedules: Vec<BackupSchedule>,
}

/// pgBackRest numbers repositories `repo1` to `repo256`.
pub const MAX_REPOSITORIES: usize = 256;
/// The reference API's bound on `schedules`.
pub const MAX_SCHEDULES: usize = 32;
/// The reference API's bound on `restore_options`.
pub const MAX_RESTORE_OPTIONS: usize = 32;

/// One pgBackRest repository, in `backup_config.repositories[]` or inline as
/// `restore_config.repository` (which has no `retention_full*`).
///
/// `{"id", "type": "posix" | "s3", "base_path"?, "s3_bucket"?, "s3_region"?, "s3_endpoint"?,
/// "s3_key"?, "s3_key_secret"?, "retention_full"?, "retention_full_type"?,
/// "custom_options"?: {option: value}}`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Repository {
    /// Names the repository within its `backup_config` (unique there) and, as in the
    /// reference, where its backups live under `base_path`: 1-63 lowercase letters, digits
    /// or hyphens. Required in berth (optional in the reference; ADR 021).
    pub id: String,
    #[serde(rename = "type")]
    pub repository_type: RepositoryType,
    /// Absolute path of the repository: a directory on the host for `posix` (required),
    /// the key prefix in the bucket for `s3` (optional). At most 256 characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_path: Option<String>,
    /// `s3` only, required: 3-63 lowercase letters, digits, dots or hyphens, starting and
    /// ending with a letter or digit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3_bucket: Option<String>,
    /// `s3` only, required (pgBackRest needs it to sign requests): 1-32 characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3_region: Option<String>,
    /// `s3` only: host name of the S3 service, without scheme (pgBackRest speaks HTTPS).
    /// Absent = `s3.<s3_region>.amazonaws.com`, the reference's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3_endpoint: Option<String>,
    /// `s3` only: access key id; with `s3_key_secret`, or neither (pgBackRest then uses the
    /// host's credentials). Secret: sealed at rest, never returned, kept when an update
    /// leaves it out, removed by `null`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3_key: Option<String>,
    /// `s3` only: the secret access key of `s3_key`. Secret, as `s3_key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3_key_secret: Option<String>,
    /// `backup_config` only: how many full backups (`count`) or days of them (`time`) to
    /// keep, 1 to 9999999 (pgBackRest's `repo-retention-full`). Absent = 7.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 9999999)]
    pub retention_full: Option<u32>,
    /// `backup_config` only: what `retention_full` counts. Absent = `time`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention_full_type: Option<RetentionFullType>,
    /// More pgBackRest repository options, by their name without the `repoN-` prefix
    /// (`"storage-upload-chunk-size": "5MiB"`). Options that have a field here, that berth
    /// sets, or that hold credentials are refused (stored and returned as written).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub custom_options: BTreeMap<String, String>,
}

/// `retention_full` when absent, as in the reference.
pub const DEFAULT_RETENTION_FULL: u32 = 7;

impl Repository {
    /// `(retention_full, retention_full_type)` with the reference's defaults (7, `time`).
    pub fn retention(&self) -> (u32, RetentionFullType) {
        (
            self.retention_full.unwrap_or(DEFAULT_RETENTION_FULL),
            self.retention_full_type.unwrap_or(RetentionFullType::Time),
        )
    }

    /// Removes `s3_key` and `s3_key_secret`, as the API returns a repository.
    pub fn redact(&mut self) {
        self.s3_key = None;
        self.s3_key_secret = None;
    }

    /// Whether `other` is the same repository in the same place: same id, type, bucket,
    /// region and endpoint. Only then does an update that leaves the keys out keep the
    /// stored ones: a key is never sent to a place it was not given for.
    pub fn same_place(&self, other: &Repository) -> bool {
        self.id == other.id
            && self.repository_type == other.repository_type
            && self.s3_bucket == other.s3_bucket
            && self.s3_region == other.s3_region
            && self.s3_endpoint == other.s3_endpoint
    }
}

/// Everything but the secrets, which show as `"<redacted>"` when set.
impl std::fmt::Debug for Repository {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hidden = |v: &Option<String>| v.as_ref().map(|_| "<redacted>");
        f.debug_struct("Repository")
            .field("id", &self.id)
            .field("repository_type", &self.repository_type)
            .field("base_path", &self.base_path)
            .field("s3_bucket", &self.s3_bucket)
            .field("s3_region", &self.s3_region)
            .field("s3_endpoint", &self.s3_endpoint)
            .field("s3_key", &hidden(&self.s3_key))
            .field("s3_key_secret", &hidden(&self.s3_key_secret))
            .field("retention_full", &self.retention_full)
            .field("retention_full_type", &self.retention_full_type)
            .field("custom_options", &self.custom_options)
            .finish()
    }
}

/// The repository types berth supports of the reference's `s3`, `gcs`, `azure`, `posix`,
/// `cifs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum RepositoryType {
    Posix,
    S3,
}

impl RepositoryType {
    pub const ALL: [RepositoryType; 2] = [RepositoryType::Posix, RepositoryType::S3];

    pub fn as_str(self) -> &'static str {
        match self {
            RepositoryType::Posix => "posix",
            RepositoryType::S3 => "s3",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

/// What `retention_full` counts: full backups, or days.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum RetentionFullType {
    Count,
    Time,
}

impl RetentionFullType {
    pub const ALL: [RetentionFullType; 2] = [RetentionFullType::Count, RetentionFullType::Time];

    pub fn as_str(self) -> &'static str {
        match self {
            RetentionFullType::Count => "count",
            RetentionFullType::Time => "time",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

/// One element of `schedules`: `{"id", "type": "full" | "incr", "cron_expression"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BackupSchedule {
    /// 1-64 ASCII letters, digits, `-`, `_` or `.`; unique within its `backup_config`.
    pub id: String,
    #[serde(rename = "type")]
    pub backup_type: ScheduledBackupType,
    /// Five fields (minute, hour, day of month, month, day of week), evaluated in UTC, as
    /// Vixie cron reads them (`?` as `*`, `L`, `W` and `#` as croner reads them) or an
    /// `@daily`-style nickname; at most 32 characters; must come due at least once.
    pub cron_expression: String,
}

/// The backups a schedule may take (the reference's; a differential one only on request).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ScheduledBackupType {
    Full,
    Incr,
}

impl ScheduledBackupType {
    pub const ALL: [ScheduledBackupType; 2] =
        [ScheduledBackupType::Full, ScheduledBackupType::Incr];

    pub fn as_str(self) -> &'static str {
        match self {
            ScheduledBackupType::Full => "full",
            ScheduledBackupType::Incr => "incr",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

/// A backup's type, as pgBackRest's `--type` of `backup` names it: `full` copies every
/// file, `diff` what changed since the last full backup, `incr` since the last backup of
/// any type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum BackupType {
    Full,
    Diff,
    Incr,
}

impl BackupType {
    pub fn as_str(self) -> &'static str {
        match self {
            BackupType::Full => "full",
            BackupType::Diff => "diff",
            BackupType::Incr => "incr",
        }
    }

    /// `full`, `diff` or `incr`; None for anything else.
    pub fn parse(s: &str) -> Option<BackupType> {
        match s {
            "full" => Some(BackupType::Full),
            "diff" => Some(BackupType::Diff),
            "incr" => Some(BackupType::Incr),
            _ => None,
        }
    }
}

/// `spec.restore_config` (a new database starts from a backup) or
/// `spec.nodes[i].restore_config` (a new node does; not with `source_node`). Read only when
/// the database or node is created.
///
/// `{"source_database_id", "source_node_name", "source_database_name", "repository":
/// "<id>" | Repository, "restore_options"?: {option: value}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RestoreConfig {
    /// The database whose backups are restored (a berth database id; it may be deleted).
    pub source_database_id: String,
    /// The node of that database whose backups are restored.
    pub source_node_name: String,
    /// The Postgres database in those backups; renamed to `database_name` once restored.
    pub source_database_name: String,
    pub repository: RestoreRepository,
    /// pgBackRest `restore` options, by name without `--`: `{"type": "time", "target":
    /// "2025-01-01T01:30:00Z"}`, `{"set": "20250505-153628F"}`. Absent = the latest point in
    /// the repository. At most 32.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub restore_options: BTreeMap<String, String>,
}

/// Where a restore reads from: the id of a repository of the same level's effective
/// `backup_config` (its place and keys, nothing resent), or a repository written out, as
/// the reference API takes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum RestoreRepository {
    Id(String),
    Inline(Repository),
}

/// How berth reads a `cron_expression`, here so that what validates a schedule is what will
/// run it: croner's reading of five fields (minute, hour, day of month, month, day of week;
/// Vixie cron's meanings, with `?`, `L`, `W`, `#` and `@daily`-style nicknames), no seconds
/// or years, evaluated in UTC. Errors (for the API): not five fields, a field out of range,
/// a time zone, or an expression that never comes due (`0 0 30 2 *`; finding that out
/// costs croner's whole search, about 0.1 s).
pub fn cron_schedule(expr: &str) -> Result<croner::Cron, String> {
    use croner::parser::{CronParser, Seconds, Year};
    if expr.contains("TZ=") {
        return Err("time zones are not supported: schedules are evaluated in UTC".into());
    }
    let parser = CronParser::builder()
        .seconds(Seconds::Disallowed)
        .year(Year::Disallowed)
        .build();
    let cron = parser.parse(expr).map_err(|err| {
        format!(
            "not a cron expression of five fields (minute hour day-of-month month \
             day-of-week), evaluated in UTC: {err}"
        )
    })?;
    // Every expression repeats at least every few years, so one occurrence after any
    // instant is as good as one after now, and a fixed instant keeps this deterministic.
    match cron.find_next_occurrence(&chrono::DateTime::<chrono::Utc>::UNIX_EPOCH, false) {
        Ok(_) => Ok(cron),
        Err(_) => Err("never comes due: no date matches it (like day 30 of February)".into()),
    }
}

/// The restore types pgBackRest 2.45 knows (`--type`).
pub const RESTORE_TYPES: [&str; 8] = [
    "default",
    "immediate",
    "lsn",
    "name",
    "preserve",
    "standby",
    "time",
    "xid",
];

/// The backup config that applies to `node`: its own, or else the database's.
pub fn effective_backup_config<'a>(
    spec: &'a DatabaseSpec,
    node: &'a NodeSpec,
) -> Option<&'a BackupConfig> {
    node.backup_config.as_ref().or(spec.backup_config.as_ref())
}

/// The restore config that applies to `node`: its own, or else the database's, which is its
/// first node's only (ADR 025: the other nodes are copied from the first by pglogical).
pub fn effective_restore_config<'a>(
    spec: &'a DatabaseSpec,
    node: &'a NodeSpec,
) -> Option<&'a RestoreConfig> {
    let first = spec.nodes.first().is_some_and(|n| n.name == node.name);
    node.restore_config
        .as_ref()
        .or(spec.restore_config.as_ref().filter(|_| first))
}

/// Refuses what berth cannot restore yet (ADR 025), each at its path: a node of a database
/// of several nodes with a `restore_config` of its own (it would join pglogical replication
/// without a copy of the data it has), and a database created with several nodes and a
/// `restore_config` (`creating`: the first spec; later, nodes added to a database that
/// started from a backup are copied from its first node).
pub fn check_restores(spec: &DatabaseSpec, creating: bool) -> Result<(), crate::InvalidInput> {
    if spec.nodes.len() < 2 {
        return Ok(());
    }
    let message = "a database of several nodes cannot start from a backup yet: create it with \
                   one node and spec.restore_config, then add the others (they are copied \
                   from the first)";
    let mut errors = Vec::new();
    if creating && spec.restore_config.is_some() {
        errors.push(crate::FieldError::new("spec.restore_config", message));
    }
    for (i, node) in spec.nodes.iter().enumerate() {
        if node.restore_config.is_some() {
            errors.push(crate::FieldError::new(
                format!("spec.nodes[{i}].restore_config"),
                message,
            ));
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(crate::InvalidInput { errors })
    }
}

/// Why berth refuses a `posix` repository where it would have to use one (ADR 021): a path
/// on one host, which the fleet's other hosts, and the containers on them, cannot reach.
pub const POSIX_UNREACHABLE: &str = "berth backs up to and restores from s3 repositories \
    only for now: a posix repository is a path on one host, which the other hosts of the \
    fleet cannot reach";

/// Refuses, each at its path, what would silently not happen because its repository is
/// `posix` (ADR 021): schedules of a node none of whose repositories is `s3` (they would
/// never fire), and, when `creating`, a `restore_config` whose repository is `posix` (the
/// node would start empty instead of from the backup). A node's own `restore_config` is
/// checked on every write, as it applies when the node is created.
pub fn check_repositories(spec: &DatabaseSpec, creating: bool) -> Result<(), crate::InvalidInput> {
    let mut errors: Vec<crate::FieldError> = Vec::new();
    let mut refuse = |path: String, why: &str| {
        if !errors.iter().any(|e| e.path == path) {
            errors.push(crate::FieldError::new(path, why));
        }
    };
    for (i, node) in spec.nodes.iter().enumerate() {
        let scope = match node.backup_config {
            Some(_) => format!("spec.nodes[{i}].backup_config"),
            None => "spec.backup_config".to_string(),
        };
        let config = effective_backup_config(spec, node);
        if let Some(c) = config
            && !c.schedules.is_empty()
            && c.repositories
                .iter()
                .all(|r| r.repository_type == RepositoryType::Posix)
        {
            refuse(
                format!("{scope}.schedules"),
                &format!("would never fire: {POSIX_UNREACHABLE}"),
            );
        }
        let restores = [
            (
                format!("spec.nodes[{i}].restore_config"),
                node.restore_config.as_ref(),
            ),
            (
                "spec.restore_config".to_string(),
                spec.restore_config.as_ref().filter(|_| creating && i == 0),
            ),
        ];
        for (path, restore) in restores {
            let Some(restore) = restore else { continue };
            let repository_type = match &restore.repository {
                RestoreRepository::Inline(r) => Some(r.repository_type),
                RestoreRepository::Id(id) => config
                    .and_then(|c| c.repositories.iter().find(|r| &r.id == id))
                    .map(|r| r.repository_type),
            };
            if repository_type == Some(RepositoryType::Posix) {
                refuse(format!("{path}.repository"), POSIX_UNREACHABLE);
            }
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(crate::InvalidInput { errors })
    }
}

/// Whether a key of a repository object holds a secret (`s3_key`, `s3_key_secret`): what
/// the store seals with the predicate it seals service config secrets with.
pub fn is_repository_secret_key(key: &str) -> bool {
    matches!(key, "s3_key" | "s3_key_secret")
}

/// Removes every repository secret from `spec`, as the API returns it.
pub fn redact_backups(spec: &mut DatabaseSpec) {
    let nodes = spec.nodes.iter_mut();
    let scopes = std::iter::once((&mut spec.backup_config, &mut spec.restore_config))
        .chain(nodes.map(|n| (&mut n.backup_config, &mut n.restore_config)));
    for (backup, restore) in scopes {
        for repository in backup.iter_mut().flat_map(|b| b.repositories.iter_mut()) {
            repository.redact();
        }
        if let Some(RestoreConfig {
            repository: RestoreRepository::Inline(repository),
            ..
        }) = restore
        {
            repository.redact();
        }
    }
}

/// What [`for_each_repository_object`] calls on each repository's JSON object.
pub type RepositoryVisitor<'f, E> = dyn FnMut(&mut Map<String, Value>) -> Result<(), E> + 'f;

/// Calls `f` on the JSON object of every repository in a serialized spec (each
/// `backup_config.repositories[]` and inline `restore_config.repository`, of the database
/// and of each node), stopping at the first error: how the store seals and opens them.
pub fn for_each_repository_object<E>(
    spec: &mut Value,
    f: &mut RepositoryVisitor<'_, E>,
) -> Result<(), E> {
    let Value::Object(root) = spec else {
        return Ok(());
    };
    repositories_of_scope(root, f)?;
    if let Some(Value::Array(nodes)) = root.get_mut("nodes") {
        for node in nodes {
            if let Value::Object(node) = node {
                repositories_of_scope(node, f)?;
            }
        }
    }
    Ok(())
}

fn repositories_of_scope<E>(
    scope: &mut Map<String, Value>,
    f: &mut RepositoryVisitor<'_, E>,
) -> Result<(), E> {
    if let Some(Value::Array(repositories)) = scope
        .get_mut("backup_config")
        .and_then(|b| b.get_mut("repositories"))
    {
        for repository in repositories {
            if let Value::Object(repository) = repository {
                f(repository)?;
            }
        }
    }
    if let Some(Value::Object(repository)) = scope
        .get_mut("restore_config")
        .and_then(|r| r.get_mut("repository"))
    {
        f(repository)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
