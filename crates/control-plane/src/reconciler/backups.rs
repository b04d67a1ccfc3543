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

/// The annotation berth gives each backup: the id of the task that took it. A task tried
/// again (its leader died while pgBackRest copied, or the agent's stream broke and
/// pgBackRest went on) finds the backup its earlier attempt took by it, and takes no second.
pub const TASK_ANNOTATION: &str = "berth.task_id";

/// How often a backup that waits for another backup of the stanza asks whether it ended.
const RUNNING_POLL: Duration = Duration::from_secs(5);

/// Lock collisions met so far by one pgBackRest command, and the delays left.
struct LockRetries {
    delays: backon::ExponentialBackoff,
    attempt: usize,
}

impl LockRetries {
    fn new() -> Self {
        LockRetries {
            delays: crate::retry::policy()
                .with_max_times(LOCK_ATTEMPTS - 1)
                .build(),
            attempt: 1,
        }
    }
}

impl Reconciler {
    /// Waits out a collision of `what` with another pgBackRest command's lock on the
    /// stanza (the primary's archive-push of the WAL it writes meanwhile, say) with the
    /// project's backoff, saying so in the task's log. Errors: `why` itself once
    /// [`LOCK_ATTEMPTS`] attempts met the lock.
    async fn wait_for_lock(
        &self,
        pass: &Pass,
        on: &Target<'_>,
        retries: &mut LockRetries,
        what: &str,
        why: String,
    ) -> Result<(), ReconcileError> {
        let Some(delay) = retries.delays.next() else {
            return Err(ReconcileError::Step(why));
        };
        retries.attempt += 1;
        pass.log
            .line(
                format!(
                    "{what} met another pgBackRest command's lock on the stanza; trying again \
                     in {:.1} s (attempt {} of {LOCK_ATTEMPTS})",
                    delay.as_secs_f64(),
                    retries.attempt
                ),
                on.log_fields.clone(),
            )
            .await?;
        tokio::time::sleep(delay).await;
        Ok(())
    }

    /// [`Reconciler::exec_postgres`] of a pgBackRest command; its output as text. A command
    /// that meets another's lock on the stanza is tried again ([`Reconciler::wait_for_lock`]).
    /// Errors carry pgBackRest's words with the repository keys masked: an S3 error's
    /// response names the access key.
    async fn pgbackrest(
        &self,
        pass: &Pass,
        on: &Target<'_>,
        argv: Vec<String>,
        timeout: Duration,
        what: &str,
    ) -> Result<String, ReconcileError> {
        let mut retries = LockRetries::new();
        loop {
            match self.pgbackrest_once(on, argv.clone(), timeout, what).await {
                Err(ReconcileError::Step(why)) if pgbackrest::is_lock_collision(&why) => {
                    self.wait_for_lock(pass, on, &mut retries, what, why)
                        .await?;
                }
                outcome => return outcome,
            }
        }
    }

    /// One [`Reconciler::exec_postgres`] of a pgBackRest command, its output as text.
    async fn pgbackrest_once(
        &self,
        on: &Target<'_>,
        argv: Vec<String>,
        timeout: Duration,
        what: &str,
    ) -> Result<String, ReconcileError> {
        let out = self
            .exec_postgres(
                on.host_id,
                on.instance_id,
                argv,
                &[],
                timeout,
                what,
                &on.secrets,
            )
            .await?;
        Ok(String::from_utf8_lossy(&out).into_owned())
    }

    /// A backup of `node` of type `backup_type` on `primary` (on `host_id`), into each of
    /// the node's repositories, each backup annotated with `annotations` and
    /// [`TASK_ANNOTATION`]. Taken at most once per repository and task: a repository that
    /// already holds a backup of the pass's task keeps it, and a backup of the stanza still
    /// running (an earlier attempt's) is waited for first ([`Reconciler::settled_stanza`]).
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
        let task_id = pass.task.as_ref().map(|t| t.task_id.as_str());
        let mut annotations = annotations.clone();
        if let Some(id) = task_id {
            annotations.insert(TASK_ANNOTATION.to_string(), id.to_string());
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
        // stanza-create takes every lock of the stanza: it would meet a running backup's.
        // What info said then holds until a command meets a lock again: stanza-create adds
        // no backup, and a backup of this task adds one to its own repository only.
        let mut stanza = self.settled_stanza(pass, &on).await?;
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
            let mut retries = LockRetries::new();
            loop {
                let taken = task_id.and_then(|id| {
                    let number = u32::try_from(number).ok()?;
                    stanza.annotated(number, TASK_ANNOTATION, id)
                });
                if let Some(taken) = taken {
                    pass.log
                        .line(
                            format!(
                                "repository {} (repo{number}) already holds backup {} of this \
                                 task, taken by an earlier attempt",
                                repository.id, taken.label
                            ),
                            on.log_fields.clone(),
                        )
                        .await?;
                    break;
                }
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
                let what = "pgbackrest backup";
                let argv = pgbackrest::backup_argv(&conf, number, backup_type, &annotations);
                match self.pgbackrest_once(&on, argv, BACKUP_TIMEOUT, what).await {
                    Ok(out) => {
                        self.relay_lines(pass, &out, &on.log_fields).await?;
                        break;
                    }
                    // Another backup may have taken the lock: ask again what the repository
                    // holds before trying again.
                    Err(ReconcileError::Step(why)) if pgbackrest::is_lock_collision(&why) => {
                        self.wait_for_lock(pass, &on, &mut retries, what, why)
                            .await?;
                        stanza = self.settled_stanza(pass, &on).await?;
                    }
                    Err(e) => return Err(e),
                }
            }
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

    /// What `info` says of the stanza on `on` once no backup of it runs there: a backup an
    /// earlier attempt of the task started (its control plane died, or its exec's stream
    /// broke, while pgBackRest went on) is waited for, for as long as a backup may take,
    /// saying so in the task's log each minute. A repository `info` cannot read is not an
    /// error here: the command that follows says why in its own words.
    ///
    /// Errors: `info` fails or prints what [`pgbackrest::parse_stanza`] cannot read, or a
    /// backup still runs after [`BACKUP_TIMEOUT`].
    async fn settled_stanza(
        &self,
        pass: &Pass,
        on: &Target<'_>,
    ) -> Result<pgbackrest::StanzaInfo, ReconcileError> {
        let started = tokio::time::Instant::now();
        let mut said: Option<tokio::time::Instant> = None;
        loop {
            let stanza = self.info(pass, on).await?;
            if !stanza.backup_running {
                return Ok(stanza);
            }
            if started.elapsed() > BACKUP_TIMEOUT {
                return Err(ReconcileError::Step(format!(
                    "another backup of the stanza still runs on {} after {} s",
                    on.instance_id,
                    BACKUP_TIMEOUT.as_secs()
                )));
            }
            if said.is_none_or(|at| at.elapsed() >= Duration::from_secs(60)) {
                said = Some(tokio::time::Instant::now());
                pass.log
                    .line(
                        format!(
                            "another backup of the stanza runs on {} (an earlier attempt of \
                             this task, or of another); waiting for it to end",
                            on.instance_id
                        ),
                        on.log_fields.clone(),
                    )
                    .await?;
            }
            tokio::time::sleep(RUNNING_POLL).await;
        }
    }

    /// The stanza's backups as `pgbackrest info` lists them now on `on`; an error with
    /// pgBackRest's words when it could not read a repository (an empty list would hide
    /// it).
    async fn list_backups(
        &self,
        pass: &Pass,
        on: &Target<'_>,
    ) -> Result<BackupList, ReconcileError> {
        let stanza = self.info(pass, on).await?;
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

    /// What `pgbackrest info` says of the stanza now on `on`.
    async fn info(
        &self,
        pass: &Pass,
        on: &Target<'_>,
    ) -> Result<pgbackrest::StanzaInfo, ReconcileError> {
        let out = self
            .pgbackrest(
                pass,
                on,
                pgbackrest::info_argv(&archiving::conf_path()),
                INFO_TIMEOUT,
                "pgbackrest info",
            )
            .await?;
        pgbackrest::parse_stanza(&out).map_err(|e| ReconcileError::Step(e.to_string()))
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
