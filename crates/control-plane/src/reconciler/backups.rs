//! Carrying out a backup of a node (ADR 022): on the node's primary, whichever instance
//! that is now, `pgbackrest stanza-create` (a check when the stanza exists), then a backup
//! into each of the node's repositories, with pgBackRest's own lines in the task's log, and
//! the stanza's list of backups written for `GET .../nodes/{node}/backups`.

use std::collections::BTreeMap;
use std::time::Duration;

use backon::BackoffBuilder;
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

/// How often a pgBackRest command that meets another's lock on the stanza is tried.
const LOCK_ATTEMPTS: usize = 5;

/// What the pgBackRest commands of one backup run with: where, the task log's fields,
/// and the keys to mask in what they print.
struct Target<'a> {
    host_id: &'a str,
    instance_id: &'a str,
    log_fields: serde_json::Map<String, serde_json::Value>,
    secrets: Vec<String>,
}

impl Reconciler {
    /// [`Reconciler::exec_postgres`] of a pgBackRest command; its output as text. A command
    /// that meets another pgBackRest command's lock on the stanza (the primary's
    /// archive-push of the WAL it writes meanwhile, say) is tried again with the project's
    /// backoff, up to [`LOCK_ATTEMPTS`] times, each retry said in the task's log. Errors
    /// carry pgBackRest's words with the repository keys masked: an S3 error's response
    /// names the access key.
    async fn pgbackrest(
        &self,
        pass: &Pass,
        on: &Target<'_>,
        argv: Vec<String>,
        timeout: Duration,
        what: &str,
    ) -> Result<String, ReconcileError> {
        let mut delays = crate::retry::policy()
            .with_max_times(LOCK_ATTEMPTS - 1)
            .build();
        let mut attempt = 1;
        loop {
            let outcome = self
                .exec_postgres(
                    on.host_id,
                    on.instance_id,
                    argv.clone(),
                    &[],
                    timeout,
                    what,
                    &on.secrets,
                )
                .await;
            let why = match outcome {
                Ok(out) => return Ok(String::from_utf8_lossy(&out).into_owned()),
                Err(ReconcileError::Step(why)) if pgbackrest::is_lock_collision(&why) => why,
                Err(e) => return Err(e),
            };
            let Some(delay) = delays.next() else {
                return Err(ReconcileError::Step(why));
            };
            attempt += 1;
            pass.log
                .line(
                    format!(
                        "{what} met another pgBackRest command's lock on the stanza; trying \
                         again in {:.1} s (attempt {attempt} of {LOCK_ATTEMPTS})",
                        delay.as_secs_f64()
                    ),
                    on.log_fields.clone(),
                )
                .await?;
            tokio::time::sleep(delay).await;
        }
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
        let on = Target {
            host_id,
            instance_id: primary,
            log_fields: fields(&[("node", node), ("instance_id", primary)]),
            secrets: crate::desired::node_backup_conf(&pass.db.record.id, spec, node_spec)
                .map(|c| pgbackrest::conf::secrets(&c))
                .unwrap_or_default(),
        };
        let out = self
            .pgbackrest(
                pass,
                &on,
                pgbackrest::stanza_create_argv(&conf),
                STANZA_TIMEOUT,
                "pgbackrest stanza-create",
            )
            .await?;
        self.relay_lines(pass, &out, &on.log_fields).await?;
        for (number, repository) in repositories {
            pass.log
                .line(
                    format!(
                        "{} backup of node {node} on {primary} into repository {} (repo{number})",
                        backup_type.as_str(),
                        repository.id
                    ),
                    on.log_fields.clone(),
                )
                .await?;
            let out = self
                .pgbackrest(
                    pass,
                    &on,
                    pgbackrest::backup_argv(&conf, number, backup_type, annotations),
                    BACKUP_TIMEOUT,
                    "pgbackrest backup",
                )
                .await?;
            self.relay_lines(pass, &out, &on.log_fields).await?;
        }
        let list = self.list_backups(pass, &on).await?;
        pass.log
            .line(
                format!(
                    "node {node} has {} backups; the latest is {}",
                    list.backups.len(),
                    list.backups.last().map_or("none", |b| b.label.as_str())
                ),
                on.log_fields.clone(),
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

    /// The stanza's backups as `pgbackrest info` lists them now on `on`; an error with
    /// pgBackRest's words when it could not read a repository (an empty list would hide
    /// it).
    async fn list_backups(
        &self,
        pass: &Pass,
        on: &Target<'_>,
    ) -> Result<BackupList, ReconcileError> {
        let out = self
            .pgbackrest(
                pass,
                on,
                pgbackrest::info_argv(&archiving::conf_path()),
                INFO_TIMEOUT,
                "pgbackrest info",
            )
            .await?;
        let stanza =
            pgbackrest::parse_stanza(&out).map_err(|e| ReconcileError::Step(e.to_string()))?;
        if let Some(why) = stanza.unreadable() {
            return Err(ReconcileError::Step(format!(
                "pgBackRest cannot read the node's repository: {}",
                super::exec::mask(why, &on.secrets)
            )));
        }
        Ok(BackupList {
            checked_at: Some(Utc::now()),
            backups: stanza.backups,
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
