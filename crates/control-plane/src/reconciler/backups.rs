//! Carrying out a backup of a node (ADR 022): on the node's primary, whichever instance
//! that is now, `pgbackrest stanza-create` (a check when the stanza exists), then a backup
//! into each of the node's repositories, with pgBackRest's own lines in the task's log, and
//! the stanza's list of backups written for `GET .../nodes/{node}/backups`.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::Utc;
use serde::{Deserialize, Serialize};
use spec::backup::BackupType;

use super::pass::Pass;
use super::task_log::fields;
use super::{ReconcileError, Reconciler};
use crate::patroni::archiving;

/// What a stanza-create may take: it writes a few small files to each repository.
const STANZA_TIMEOUT: Duration = Duration::from_secs(300);
/// What one backup may take before the agent kills it.
const BACKUP_TIMEOUT: Duration = Duration::from_secs(6 * 3600);
/// What `info` may take.
const INFO_TIMEOUT: Duration = Duration::from_secs(120);

/// The document `GET /v1/databases/{id}/nodes/{node}/backups` answers with: the node's
/// backups in every repository, oldest first, as pgBackRest listed them at `checked_at`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BackupList {
    #[schema(value_type = Option<String>)]
    pub checked_at: Option<chrono::DateTime<Utc>>,
    #[schema(value_type = Vec<Object>)]
    pub backups: Vec<pgbackrest::BackupInfo>,
}

impl Reconciler {
    /// [`Reconciler::exec_postgres`] of a pgBackRest command; its output as text.
    async fn pgbackrest(
        &self,
        host_id: &str,
        instance_id: &str,
        argv: Vec<String>,
        timeout: Duration,
        what: &str,
    ) -> Result<String, ReconcileError> {
        let out = self
            .exec_postgres(host_id, instance_id, argv, &[], timeout, what, &[])
            .await?;
        Ok(String::from_utf8_lossy(&out).into_owned())
    }

    /// A backup of `node` of type `backup_type` on `primary` (on `host_id`).
    pub(super) async fn backup(
        &self,
        pass: &Pass,
        node: &str,
        primary: &str,
        host_id: &str,
        backup_type: BackupType,
        annotations: &BTreeMap<String, String>,
    ) -> Result<(), ReconcileError> {
        let spec = &pass.db.spec;
        let node_spec = spec
            .nodes
            .iter()
            .find(|n| n.name == node)
            .ok_or_else(|| ReconcileError::Step(format!("node {node} is not in the spec")))?;
        let repositories = spec::backup::effective_backup_config(spec, node_spec)
            .map(|c| pgbackrest::conf::usable(&c.repositories))
            .unwrap_or_default();
        if repositories.is_empty() {
            return Err(ReconcileError::Step(format!(
                "node {node} has no repository to back up to"
            )));
        }
        let conf = archiving::conf_path();
        let log_fields = fields(&[("node", node), ("instance_id", primary)]);
        let out = self
            .pgbackrest(
                host_id,
                primary,
                pgbackrest::stanza_create_argv(&conf),
                STANZA_TIMEOUT,
                "pgbackrest stanza-create",
            )
            .await?;
        self.relay_lines(pass, &out, &log_fields).await?;
        for (number, repository) in repositories {
            pass.log
                .line(
                    format!(
                        "{} backup of node {node} on {primary} into repository {} (repo{number})",
                        backup_type.as_str(),
                        repository.id
                    ),
                    log_fields.clone(),
                )
                .await?;
            let out = self
                .pgbackrest(
                    host_id,
                    primary,
                    pgbackrest::backup_argv(&conf, number, backup_type, annotations),
                    BACKUP_TIMEOUT,
                    "pgbackrest backup",
                )
                .await?;
            self.relay_lines(pass, &out, &log_fields).await?;
        }
        let list = self.list_backups(host_id, primary).await?;
        pass.log
            .line(
                format!(
                    "node {node} has {} backups; the latest is {}",
                    list.backups.len(),
                    list.backups.last().map_or("none", |b| b.label.as_str())
                ),
                log_fields,
            )
            .await?;
        self.store
            .put_backups_document(
                &pass.db.record.id,
                node,
                &serde_json::to_value(&list).expect("a backup list serializes"),
            )
            .await?;
        Ok(())
    }

    /// The stanza's backups as `pgbackrest info` lists them now on `instance_id`.
    async fn list_backups(
        &self,
        host_id: &str,
        instance_id: &str,
    ) -> Result<BackupList, ReconcileError> {
        let out = self
            .pgbackrest(
                host_id,
                instance_id,
                pgbackrest::info_argv(&archiving::conf_path()),
                INFO_TIMEOUT,
                "pgbackrest info",
            )
            .await?;
        let backups =
            pgbackrest::parse_info(&out).map_err(|e| ReconcileError::Step(e.to_string()))?;
        Ok(BackupList {
            checked_at: Some(Utc::now()),
            backups,
        })
    }

    /// pgBackRest's console lines (`P00   INFO: ...`) into the task's log, one entry each.
    async fn relay_lines(
        &self,
        pass: &Pass,
        out: &str,
        log_fields: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<(), ReconcileError> {
        let lines = out
            .lines()
            .map(str::trim_end)
            .filter(|l| !l.is_empty())
            .map(|l| (l.to_string(), log_fields.clone()))
            .collect();
        pass.log.lines(lines).await?;
        Ok(())
    }
}
