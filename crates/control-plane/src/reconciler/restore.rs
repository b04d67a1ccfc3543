//! Carrying out a restore in place (ADR 025): each target node is rebuilt from a backup.
//!
//! 1. The backup is checked first, on a running instance of the node, with the very
//!    `pgbackrest-restore.conf` the node will restore from: pgBackRest must be able to read
//!    the repository, the source must have a backup, and for a restore to a time, one that
//!    ended before that time. Otherwise the task fails and nothing was changed. A node with
//!    no running instance (all of them failing, which is when a restore is needed) is not
//!    checked: the task log says so, and `pgbackrest restore` itself fails on the node's
//!    first instance if the backup is not there.
//! 2. The record names the node's new source (`restored_nodes`) before anything is removed,
//!    so that from then on every instance the planner creates for the node restores instead
//!    of running `initdb`, whatever happens to this control plane.
//! 3. The node's instances and their data directories are removed, replicas first, and the
//!    node's service roles are marked missing there (the backup may predate them).
//!
//! The plans that follow rebuild the node as a new one: its Patroni keys are forgotten, its
//! first instance bootstraps with `pgbackrest restore` and promotes at the target, and the
//! others are cloned from it. Once the database has converged, the task completes, and a
//! `node_backup` task of a full backup of the restored node follows it
//! ([`AfterRestoreBackup`]).

use std::time::Duration;

use chrono::{DateTime, NaiveDateTime, Utc};
use spec::backup::{BackupType, RestoreConfig};
use store::{DatabaseRecord, StoreError};

use super::pass::Pass;
use super::task_log::fields;
use super::{ReconcileError, Reconciler};
use crate::patroni::config::RUN_DIR;

/// What `pgbackrest info` may take against a repository.
const INFO_TIMEOUT: Duration = Duration::from_secs(120);

impl Reconciler {
    /// Rebuilds `nodes` from `config`'s backup; returns the record to store, with the
    /// operation done.
    pub(super) async fn restore(
        &self,
        pass: &Pass,
        nodes: &[String],
        config: &RestoreConfig,
    ) -> Result<DatabaseRecord, ReconcileError> {
        let mut record = pass.db.record.clone();
        for node in nodes {
            let log_fields = fields(&[("node", node)]);
            if record.restored_nodes.get(node) == Some(config) {
                pass.log
                    .line(
                        format!("node {node}: its restore from this backup is under way already"),
                        log_fields.clone(),
                    )
                    .await?;
            } else {
                self.check_backup(pass, node, config).await?;
                record.restored_nodes.insert(node.clone(), config.clone());
                match self
                    .store
                    .put_database_record(pass.db.spec_revision, &record)
                    .await
                {
                    Ok(()) => {}
                    Err(StoreError::Conflict) => {
                        return Err(ReconcileError::Step(
                            "the database's spec changed meanwhile; nothing was restored".into(),
                        ));
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            let leader = pass.patroni.get(node).and_then(|n| n.leader.clone());
            let mut instances: Vec<(&String, &String)> = pass
                .records
                .values()
                .filter(|r| r.kind.node() == Some(node.as_str()))
                .map(|r| (&r.instance_id, &r.host_id))
                .collect();
            // Replicas first: none of them is promoted in the meantime with nothing to follow.
            instances.sort_by_key(|(id, _)| Some(id.as_str()) == leader.as_deref());
            for (instance_id, host_id) in instances {
                pass.log
                    .line(
                        format!(
                            "node {node}: removing {instance_id} and its data directory, to \
                             restore the node from the backup"
                        ),
                        fields(&[("node", node), ("instance_id", instance_id)]),
                    )
                    .await?;
                self.remove(&pass.log, host_id, instance_id).await?;
                record.stopped_instances.remove(instance_id);
            }
            record.stopped_primaries.remove(node);
            let mut creds = self.credentials(&record.id).await?;
            for service in creds.services.values_mut() {
                service.roles_on.remove(node);
            }
            self.put_credentials(&record.id, &creds).await?;
            pass.log
                .line(
                    format!(
                        "node {node}: its first instance now restores node {} of database {} \
                         with pgBackRest, and its other instances are cloned from it",
                        config.source_node_name, config.source_database_id
                    ),
                    log_fields,
                )
                .await?;
        }
        record.operation = None;
        record.updated_at = Utc::now();
        Ok(record)
    }

    /// Checks on a running instance of `node` that `config` names a backup it can restore;
    /// with no running instance, says so in the task's log and checks nothing.
    ///
    /// Errors (the task fails, nothing was restored): the node cannot use the restore's
    /// repository, `pgbackrest info` fails or pgBackRest cannot read the repository (its
    /// message, keys masked), or no backup fits.
    async fn check_backup(
        &self,
        pass: &Pass,
        node: &str,
        config: &RestoreConfig,
    ) -> Result<(), ReconcileError> {
        let mut spec = pass.db.spec.clone();
        let node_spec = spec
            .nodes
            .iter_mut()
            .find(|n| n.name == node)
            .ok_or_else(|| ReconcileError::Step(format!("node {node} is not in the spec")))?;
        node_spec.restore_config = Some(config.clone());
        let node_spec = node_spec.clone();
        let conf = crate::desired::node_restore(&spec, &node_spec)
            .map(|r| r.conf)
            .ok_or_else(|| {
                ReconcileError::Step(format!(
                    "node {node} cannot use the restore's repository; nothing was restored"
                ))
            })?;
        let leader = pass.patroni.get(node).and_then(|n| n.leader.clone());
        let running = |id: &str| {
            pass.patroni
                .get(node)
                .and_then(|n| n.members.get(id))
                .is_some_and(plan::PatroniMember::is_running)
        };
        let on = pass
            .records
            .values()
            .filter(|r| r.kind.node() == Some(node) && running(&r.instance_id))
            .max_by_key(|r| Some(r.instance_id.as_str()) == leader.as_deref());
        let Some(on) = on else {
            // A node whose instances all fail is what a restore is for; pgBackRest checks the
            // backup anyway when the node's first instance restores from it.
            pass.log
                .line(
                    format!(
                        "node {node} has no running instance to check the backup on: its first \
                         instance checks it as it restores"
                    ),
                    fields(&[("node", node)]),
                )
                .await?;
            return Ok(());
        };
        // The config holds the repository's keys: it goes on stdin, into a private file
        // that the same shell removes.
        let secrets = pgbackrest::conf::secrets(&conf);
        let listed = self
            .exec_postgres(
                &on.host_id,
                &on.instance_id,
                pgbackrest::info_argv_conf_on_stdin(RUN_DIR),
                conf.as_bytes(),
                INFO_TIMEOUT,
                "pgbackrest info of the restore's source",
                &secrets,
            )
            .await
            .map_err(|e| match e {
                ReconcileError::Step(why) => {
                    ReconcileError::Step(format!("{why}; nothing was restored"))
                }
                e => e,
            })?;
        let stanza = pgbackrest::parse_stanza(&String::from_utf8_lossy(&listed))
            .map_err(|e| ReconcileError::Step(format!("{e}; nothing was restored")))?;
        // A repository that refused the keys or could not be reached lists no backup either:
        // said as pgBackRest says it, not as an empty repository.
        if let Some(why) = stanza.unreadable() {
            return Err(ReconcileError::Step(format!(
                "pgBackRest cannot read the restore's repository: {}; nothing was restored",
                super::exec::mask(why, &secrets)
            )));
        }
        let backups = stanza.backups;
        let source = format!(
            "node {} of database {}",
            config.source_node_name, config.source_database_id
        );
        let target = target_time(config);
        let usable = backups
            .iter()
            .filter(|b| !b.error)
            .filter(|b| target.is_none_or(|t| b.stopped_at <= t))
            .count();
        if usable == 0 {
            let why = match target {
                Some(t) => format!("no backup of {source} ended before {t}"),
                None => format!("the repository holds no backup of {source}"),
            };
            return Err(ReconcileError::Step(format!("{why}; nothing was restored")));
        }
        pass.log
            .line(
                format!(
                    "node {node}: {usable} backups of {source} can serve the restore (checked \
                     on {})",
                    on.instance_id
                ),
                fields(&[("node", node)]),
            )
            .await?;
        Ok(())
    }
}

/// The full backup a restored node needs, queued as a `node_backup` task of its own when
/// the `restore` task (or the `create` task of a database that starts from a backup)
/// completes (ADR 025). Without it, the node's newest backups lie on the timeline the
/// restore abandoned (or, for a new database, there are none), and pgBackRest cannot
/// restore the new timeline's latest point from them. Its own task, rather than a step of
/// the restore's, lets automation see the restore end as soon as the node is back, and a
/// failed backup as a failed task rather than a line in a completed one.
pub(super) struct AfterRestoreBackup {
    pub node: String,
    pub task: spec::Task,
}

impl AfterRestoreBackup {
    /// The annotation that marks the backup (`GET .../backups` shows it).
    pub const ANNOTATION: (&'static str, &'static str) = ("berth", "after-restore");

    /// The backup the pass's task leaves to follow it: for a `restore` task, of the node it
    /// restored; for a `create` task, of the node that started from a backup. None for
    /// other tasks, and for a node with no repository berth can reach. A restore of several
    /// nodes is refused (ADR 025), so there is at most one.
    pub fn of(pass: &Pass) -> Option<Self> {
        let task = pass.task.as_ref()?;
        let spec = &pass.db.spec;
        let restored = |n: &&spec::NodeSpec| match task.task_type {
            spec::TaskType::Restore => pass.db.record.restored_nodes.contains_key(&n.name),
            spec::TaskType::Create => crate::desired::node_restore(spec, n).is_some(),
            _ => false,
        };
        let node =
            spec.nodes.iter().filter(restored).find(|n| {
                crate::desired::node_backup_conf(&pass.db.record.id, spec, n).is_some()
            })?;
        Some(Self {
            node: node.name.clone(),
            task: crate::tasks::new_task(&pass.db.record.id, spec::TaskType::NodeBackup),
        })
    }
}

impl Reconciler {
    /// Stores `follow_up` as the database's next task, its backup as the operation, with
    /// the database `available` when `available` (the converged pass's state). A newer
    /// request that changed the database meanwhile wins: the backup is then not queued, and
    /// the log of the task that asked for it says so.
    pub(super) async fn queue_after_restore_backup(
        &self,
        pass: &Pass,
        follow_up: AfterRestoreBackup,
        available: bool,
    ) -> Result<(), StoreError> {
        let (key, value) = AfterRestoreBackup::ANNOTATION;
        let record = DatabaseRecord {
            state: if available {
                spec::DatabaseState::Available
            } else {
                pass.db.record.state
            },
            current_task_id: Some(follow_up.task.task_id.clone()),
            operation: Some(spec::operations::Operation::Backup {
                node: follow_up.node.clone(),
                backup_type: BackupType::Full,
                annotations: [(key.to_string(), value.to_string())].into(),
            }),
            updated_at: Utc::now(),
            ..pass.db.record.clone()
        };
        match self
            .store
            .update_database(
                pass.db.spec_revision,
                &record,
                &pass.db.spec,
                &follow_up.task,
            )
            .await
        {
            Err(StoreError::Conflict) => {
                tracing::info!(
                    database_id = %pass.db.record.id,
                    node = %follow_up.node,
                    "the database changed meanwhile: the backup after its restore is not queued"
                );
                Ok(())
            }
            other => other,
        }
    }
}

/// The time a `type: time` restore stops at, when its `target` reads as one (RFC 3339, or
/// pgBackRest's `YYYY-MM-DD HH:MM:SS[+TZ]`; without a zone, UTC).
fn target_time(config: &RestoreConfig) -> Option<DateTime<Utc>> {
    let options = &config.restore_options;
    if options.get("type").map(String::as_str) != Some("time") {
        return None;
    }
    let target = options.get("target")?.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(target) {
        return Some(t.with_timezone(&Utc));
    }
    for format in ["%Y-%m-%d %H:%M:%S%.f%#z", "%Y-%m-%d %H:%M:%S%#z"] {
        if let Ok(t) = DateTime::parse_from_str(target, format) {
            return Some(t.with_timezone(&Utc));
        }
    }
    NaiveDateTime::parse_from_str(target, "%Y-%m-%d %H:%M:%S%.f")
        .ok()
        .map(|t| t.and_utc())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn config(options: &[(&str, &str)]) -> RestoreConfig {
        RestoreConfig {
            source_database_id: "db".into(),
            source_node_name: "n1".into(),
            source_database_name: "app".into(),
            repository: spec::backup::RestoreRepository::Id("main".into()),
            restore_options: options
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
        }
    }

    #[test]
    fn a_time_target_reads_in_the_forms_pgbackrest_takes() {
        let at = |s: &str| target_time(&config(&[("type", "time"), ("target", s)]));
        let expected = "2026-12-01T06:00:00Z".parse::<DateTime<Utc>>().ok();
        assert_eq!(at("2026-12-01T06:00:00Z"), expected);
        assert_eq!(at("2026-12-01 07:00:00+01"), expected);
        assert_eq!(at("2026-12-01 06:00:00"), expected);
        assert_eq!(at("yesterday"), None);
        assert_eq!(target_time(&config(&[("type", "immediate")])), None);
    }
}
