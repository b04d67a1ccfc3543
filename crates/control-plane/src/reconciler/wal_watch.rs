//! WAL health of every running Postgres instance (`spec::wal`): the leader reads each one's
//! `pg_wal` size, inactive replication slots and archiver state with one read-only query
//! (system views and `pg_ls_waldir()`, inside the container, as the agent's Exec runs psql),
//! and keeps the report on the instance's record, where `GET /v1/databases/{id}` shows it
//! with the warnings it calls for. The same round reads each instance's pglogical
//! subscriptions and slots ([`super::subscription_watch`]), a second query since those live
//! in the database's own database.
//!
//! Records are rewritten only when the warnings change, when an archiving instance's
//! archiver moved (a segment archived or failed since the stored report), or when the last
//! report is older than [`REWRITE_AFTER`]: a check every minute of every instance would
//! otherwise be most of etcd's writes. An instance that archives nothing new (archiving off,
//! or an idle primary between two `archive_timeout` switches) is not rewritten; a busy one
//! is at most once per check, as every report is.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use plan::InstanceKind;
use serde::Deserialize;
use spec::subscriptions::SubscriptionReport;
use spec::wal::{InactiveSlot, WalReport, archives, warnings};

use super::slot_sync;
use super::subscription_watch::{self, NodeRead, PglogicalRead};
use super::{ReconcileError, Reconciler};
use crate::instances::Phase;

/// The default time between two checks of an instance.
pub const WAL_CHECK_PERIOD: Duration = Duration::from_secs(60);
/// A report whose warnings did not change is written again after this long, so that the
/// sizes shown are at most this old.
pub const REWRITE_AFTER: chrono::TimeDelta = chrono::TimeDelta::minutes(5);

/// One row of JSON; works on a primary and on a replica (where `pg_current_wal_lsn()`
/// would fail), on Postgres 15 and 17.
const WAL_SQL: &str = r#"\pset format unaligned
\pset tuples_only on
SELECT json_build_object(
  'pg_wal_bytes', (SELECT coalesce(sum(size), 0) FROM pg_ls_waldir()),
  'max_wal_size_bytes', (SELECT setting::bigint * 1048576 FROM pg_settings WHERE name = 'max_wal_size'),
  'wal_keep_size_bytes', (SELECT setting::bigint * 1048576 FROM pg_settings WHERE name = 'wal_keep_size'),
  'oldest_segment_age_seconds', (SELECT extract(epoch FROM now() - min(modification))::bigint
      FROM pg_ls_waldir() WHERE name ~ '^[0-9A-F]{24}$'),
  'inactive_slots', (SELECT coalesce(json_agg(json_build_object(
      'slot_name', slot_name,
      'retained_bytes', greatest(pg_wal_lsn_diff(CASE WHEN pg_is_in_recovery()
          THEN pg_last_wal_receive_lsn() ELSE pg_current_wal_lsn() END, restart_lsn), 0)::bigint)),
      '[]') FROM pg_replication_slots WHERE NOT active AND restart_lsn IS NOT NULL),
  'archive_mode', current_setting('archive_mode'),
  'in_recovery', pg_is_in_recovery(),
  'archive_destination', current_setting('archive_command') NOT IN ('', '(disabled)')
      OR current_setting('archive_library') <> '',
  'archive_ready', (SELECT count(*) FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready'),
  'last_archived_wal', a.last_archived_wal,
  'last_archived_at', a.last_archived_time,
  'last_failed_wal', a.last_failed_wal,
  'last_failed_at', a.last_failed_time,
  'archive_failed_count', a.failed_count
) FROM pg_stat_archiver a;
"#;

/// What [`WAL_SQL`] answers; `checked_at` is the control plane's.
#[derive(Deserialize)]
struct Row {
    pg_wal_bytes: u64,
    max_wal_size_bytes: u64,
    wal_keep_size_bytes: u64,
    oldest_segment_age_seconds: Option<u64>,
    inactive_slots: Vec<InactiveSlot>,
    archive_mode: String,
    in_recovery: bool,
    archive_destination: bool,
    archive_ready: u64,
    last_archived_wal: Option<String>,
    last_archived_at: Option<DateTime<Utc>>,
    last_failed_wal: Option<String>,
    last_failed_at: Option<DateTime<Utc>>,
    archive_failed_count: u64,
}

/// Reads [`WAL_SQL`]'s answer. Errors: not that JSON.
fn parse(out: &str, checked_at: DateTime<Utc>) -> Result<WalReport, String> {
    let row: Row = serde_json::from_str(out.trim()).map_err(|e| e.to_string())?;
    Ok(WalReport {
        checked_at,
        pg_wal_bytes: row.pg_wal_bytes,
        max_wal_size_bytes: row.max_wal_size_bytes,
        wal_keep_size_bytes: row.wal_keep_size_bytes,
        oldest_segment_age_seconds: row.oldest_segment_age_seconds,
        inactive_slots: row.inactive_slots,
        archive_mode: row.archive_mode,
        in_recovery: row.in_recovery,
        archive_destination: row.archive_destination,
        archive_ready: row.archive_ready,
        last_archived_wal: row.last_archived_wal,
        last_archived_at: row.last_archived_at,
        last_failed_wal: row.last_failed_wal,
        last_failed_at: row.last_failed_at,
        archive_failed_count: row.archive_failed_count,
    })
}

/// Whether `new` is worth a write over `old`: the warnings (codes and levels) changed, the
/// archiver moved while archiving is on (`wal_archive` would show another last archived or
/// failed segment, or another failure count), or `old` is [`REWRITE_AFTER`] old.
fn worth_writing(old: Option<&WalReport>, new: &WalReport) -> bool {
    let summary = |r: &WalReport| {
        warnings(r)
            .into_iter()
            .map(|w| (w.code, w.level))
            .collect::<Vec<_>>()
    };
    let archiver = |r: &WalReport| {
        (
            r.last_archived_wal.clone(),
            r.last_failed_wal.clone(),
            r.archive_failed_count,
        )
    };
    match old {
        None => true,
        Some(old) => {
            summary(old) != summary(new)
                || (archives(new) && archiver(old) != archiver(new))
                || new.checked_at - old.checked_at >= REWRITE_AFTER
        }
    }
}

impl Reconciler {
    /// Checks every running Postgres instance's WAL every `every`, until the task is
    /// aborted (the leader steps down). A check that fails (an instance restarting, a host
    /// going away) is logged at debug level and tried again at the next round.
    pub async fn watch_wal(self: Arc<Self>, every: Duration) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = self.check_wal().await {
                tracing::warn!(error = %e, "WAL health round failed");
            }
        }
    }

    /// One round over every database. A database whose check fails (its records
    /// unreadable, a write refused) is logged and the round goes on with the next: one
    /// database must not leave the others' reports stale.
    async fn check_wal(&self) -> Result<(), ReconcileError> {
        let (reachable, _) = self.reachable_hosts().await?;
        for db in self.store.list_databases().await? {
            let database_id = db.record.id.clone();
            if let Err(e) = self.check_database_wal(db, &reachable).await {
                tracing::warn!(%database_id, error = %e, "WAL health check of the database failed");
            }
        }
        Ok(())
    }

    /// One database of a round: every running Postgres instance read, then the reports worth
    /// writing written.
    async fn check_database_wal(
        &self,
        db: store::StoredDatabase,
        reachable: &BTreeSet<String>,
    ) -> Result<(), ReconcileError> {
        let database_id = db.record.id;
        let records = self.records(&database_id).await?;
        // Every instance is read before any is written: a primary's subscriptions take
        // their lag from the other nodes' primaries' reads of this round.
        let mut reads: BTreeMap<String, (Option<WalReport>, Option<PglogicalRead>)> =
            BTreeMap::new();
        for (instance_id, record) in &records {
            let running = matches!(record.kind, InstanceKind::Postgres { .. })
                && record.observed.phase == Phase::Running
                && reachable.contains(&record.host_id);
            if !running {
                continue;
            }
            let wal = self
                .read_wal(&database_id, &record.host_id, instance_id)
                .await;
            let pglogical = self
                .read_pglogical(
                    &database_id,
                    &record.host_id,
                    instance_id,
                    &db.spec.database_name,
                )
                .await;
            reads.insert(instance_id.clone(), (wal, pglogical));
        }
        let checked_at = Utc::now();
        let node_reads: BTreeMap<String, NodeRead> = reads
            .iter()
            .filter_map(|(id, (_, read))| {
                let node = records.get(id)?.kind.node()?;
                Some((
                    id.clone(),
                    NodeRead {
                        node,
                        read: read.as_ref()?,
                    },
                ))
            })
            .collect();
        let mut joined = subscription_watch::join(&node_reads);
        let to_move: Vec<(String, String)> = slot_sync::primaries_to_move(&node_reads)
            .into_iter()
            .filter_map(|id| Some((id.clone(), records.get(&id)?.host_id.clone())))
            .collect();
        self.move_slots_for_replicas(&database_id, &db.spec.database_name, &to_move)
            .await;
        for (instance_id, (wal, _)) in reads {
            let Some(record) = records.get(&instance_id) else {
                continue;
            };
            let wal = wal.filter(|w| worth_writing(record.wal.as_ref(), w));
            let subscriptions = joined
                .remove(&instance_id)
                .map(|subscriptions| SubscriptionReport {
                    checked_at,
                    subscriptions,
                })
                .filter(|s| subscription_watch::worth_writing(record.subscriptions.as_ref(), s));
            if wal.is_none() && subscriptions.is_none() {
                continue;
            }
            if let Some(report) = &wal {
                for w in warnings(report) {
                    tracing::warn!(%database_id, %instance_id, code = %w.code, level = ?w.level, "{}", w.message);
                }
            }
            if let Some(report) = &subscriptions {
                subscription_watch::log_warnings(&database_id, &instance_id, report);
            }
            // Only the reports change: the database's worker may rewrite the rest of
            // the record meanwhile, and neither write undoes the other.
            self.put_health(
                &database_id,
                &instance_id,
                wal.as_ref(),
                subscriptions.as_ref(),
            )
            .await?;
        }
        Ok(())
    }

    /// One instance's WAL report, or None when the check failed (logged).
    async fn read_wal(
        &self,
        database_id: &str,
        host_id: &str,
        instance_id: &str,
    ) -> Option<WalReport> {
        let out = self
            .psql(host_id, instance_id, "postgres", WAL_SQL.to_string(), &[])
            .await;
        match out.map(|o| parse(&o, Utc::now())) {
            Ok(Ok(r)) => Some(r),
            Ok(Err(e)) => {
                tracing::warn!(%database_id, %instance_id, error = %e, "unreadable WAL report");
                None
            }
            Err(e) => {
                tracing::debug!(%database_id, %instance_id, error = %e, "WAL check failed");
                None
            }
        }
    }

    /// One instance's pglogical subscriptions and slots, read in `database_name`, or None
    /// when the check failed (logged).
    async fn read_pglogical(
        &self,
        database_id: &str,
        host_id: &str,
        instance_id: &str,
        database_name: &str,
    ) -> Option<PglogicalRead> {
        let sql = subscription_watch::PGLOGICAL_SQL.to_string();
        let out = self
            .psql(host_id, instance_id, database_name, sql, &[])
            .await;
        match out.map(|o| subscription_watch::parse(&o)) {
            Ok(Ok(r)) => Some(r),
            Ok(Err(e)) => {
                tracing::warn!(%database_id, %instance_id, error = %e, "unreadable pglogical report");
                None
            }
            Err(e) => {
                tracing::debug!(%database_id, %instance_id, error = %e, "pglogical check failed");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use spec::wal::WarningLevel;

    #[test]
    fn a_report_reads_from_the_querys_json() {
        let out = r#"{"pg_wal_bytes" : 50331648, "max_wal_size_bytes" : 1073741824, "wal_keep_size_bytes" : 268435456,
            "oldest_segment_age_seconds" : 120, "inactive_slots" : [{"slot_name" : "leaked",
            "retained_bytes" : 16777216}], "archive_mode" : "off", "in_recovery" : false, "archive_destination" : false,
            "archive_ready" : 0, "last_archived_wal" : null, "last_archived_at" : null,
            "last_failed_wal" : null, "last_failed_at" : null, "archive_failed_count" : 0}"#;
        let r = parse(out, Utc::now()).unwrap();
        assert_eq!(r.pg_wal_bytes, 48 << 20);
        assert_eq!(r.inactive_slots[0].slot_name, "leaked");
        assert!(parse("psql: error", Utc::now()).is_err());
    }

    #[test]
    fn only_a_change_of_warnings_or_an_old_report_is_written() {
        let t0 = Utc::now();
        let ok = WalReport {
            checked_at: t0,
            pg_wal_bytes: 1,
            max_wal_size_bytes: 100,
            archive_mode: "off".into(),
            ..WalReport::default()
        };
        let later = |r: &WalReport, minutes| WalReport {
            checked_at: t0 + chrono::TimeDelta::minutes(minutes),
            ..r.clone()
        };
        assert!(worth_writing(None, &ok));
        assert!(
            !worth_writing(Some(&ok), &later(&ok, 1)),
            "same warnings, new sizes"
        );
        assert!(worth_writing(Some(&ok), &later(&ok, 5)), "five minutes old");
        let full = WalReport {
            pg_wal_bytes: 400,
            ..later(&ok, 1)
        };
        assert_eq!(warnings(&full)[0].level, WarningLevel::Critical);
        assert!(worth_writing(Some(&ok), &full), "a warning appeared");
    }

    #[test]
    fn an_archiver_that_moved_is_written_while_archiving_is_on() {
        let t0 = Utc::now();
        let archiving = WalReport {
            checked_at: t0,
            pg_wal_bytes: 1,
            max_wal_size_bytes: 100,
            archive_mode: "on".into(),
            archive_destination: true,
            last_archived_wal: Some("000000010000000000000006".into()),
            last_archived_at: Some(t0),
            ..WalReport::default()
        };
        let next = |changes: fn(&mut WalReport)| {
            let mut r = WalReport {
                checked_at: t0 + chrono::TimeDelta::minutes(1),
                ..archiving.clone()
            };
            changes(&mut r);
            r
        };
        assert!(
            !worth_writing(Some(&archiving), &next(|r| r.archive_ready = 3)),
            "only the backlog moved"
        );
        assert!(
            worth_writing(
                Some(&archiving),
                &next(|r| r.last_archived_wal = Some("000000010000000000000007".into()))
            ),
            "a segment archived"
        );
        // A second failure of the same segment: the warning was there already.
        let failed = next(|r| {
            r.last_failed_wal = Some("000000010000000000000007".into());
            r.last_failed_at = Some(r.checked_at);
            r.archive_failed_count = 1;
        });
        let again = WalReport {
            archive_failed_count: 2,
            checked_at: failed.checked_at + chrono::TimeDelta::minutes(1),
            ..failed.clone()
        };
        assert_eq!(summary_codes(&failed), summary_codes(&again));
        assert!(worth_writing(Some(&failed), &again), "one more failure");

        // Archiving off: pg_stat_archiver's leftovers moving (a reset) write nothing.
        let off = WalReport {
            archive_mode: "off".into(),
            ..archiving.clone()
        };
        let reset = WalReport {
            last_archived_wal: None,
            checked_at: t0 + chrono::TimeDelta::minutes(1),
            ..off.clone()
        };
        assert!(!worth_writing(Some(&off), &reset));
    }

    fn summary_codes(r: &WalReport) -> Vec<String> {
        warnings(r).into_iter().map(|w| w.code).collect()
    }
}
