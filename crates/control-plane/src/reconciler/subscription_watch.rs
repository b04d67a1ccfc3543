//! The pglogical half of the periodic instance check (ADR 019; [`super::wal_watch`] runs
//! it): each running Postgres instance is read with one read-only query in the database's
//! own database (pglogical's catalog lives there, not in `postgres`), and the reads of one
//! database are joined into what `GET /v1/databases/{id}` shows on each primary: its
//! subscriptions, each with its lag behind the provider.
//!
//! A primary reports two sides: as subscriber, pglogical's status of each subscription and
//! the name of the slot it reads on its provider; as provider, each pglogical slot with how
//! much WAL its subscriber has not confirmed. [`join`] puts the provider's numbers on the
//! subscriber's subscription by slot name, which is unique on the provider (pglogical names
//! it after the provider node and the subscription, and subscription names hold the
//! subscriber, `patroni::pglogical::subscription_name`).

use std::collections::BTreeMap;

use serde::Deserialize;
use spec::subscriptions::{Subscription, SubscriptionReport, warnings};

use super::wal_watch::REWRITE_AFTER;

/// One row of JSON. Reads nothing where pglogical is not installed (databases of one node
/// created before ADR 019 may not have it; psql's `\if` keeps the query from naming its
/// functions there). On a replica no subscription runs: where `pg_failover_slots` runs, it
/// counts the copies of the primary's pglogical slots that are ready (caught up and let go
/// by the copying worker, [`super::slot_sync`]). `pg_current_wal_lsn()` is only called on a
/// primary. A walsender's `replay_lag`
/// is NULL once its client has caught up (Postgres clears it then), so a slot with a
/// walsender that confirmed all the WAL there is reads 0 seconds.
pub(super) const PGLOGICAL_SQL: &str = r#"\pset format unaligned
\pset tuples_only on
SELECT to_regclass('pglogical.subscription') IS NOT NULL AND NOT pg_is_in_recovery() AS berth_pglogical,
  pg_is_in_recovery() AND current_setting('shared_preload_libraries') LIKE '%pg_failover_slots%'
    AS berth_slot_copies \gset
\if :berth_pglogical
SELECT json_build_object(
  'subscriptions', (SELECT coalesce(json_agg(json_build_object(
      'name', s.subscription_name,
      'provider_node', s.provider_node,
      'status', s.status,
      'slot_name', s.slot_name) ORDER BY s.subscription_name), '[]')
    FROM pglogical.show_subscription_status() s),
  'slots', (SELECT coalesce(json_agg(json_build_object(
      'slot_name', r.slot_name,
      'active', r.active,
      'lag_bytes', greatest(pg_wal_lsn_diff(pg_current_wal_lsn(), r.confirmed_flush_lsn), 0)::bigint,
      'lag_seconds', CASE WHEN p.replay_lag IS NOT NULL THEN extract(epoch FROM p.replay_lag)
          WHEN p.pid IS NOT NULL AND r.confirmed_flush_lsn = pg_current_wal_lsn() THEN 0 END)
      ORDER BY r.slot_name), '[]')
    FROM pg_replication_slots r LEFT JOIN pg_stat_replication p ON p.pid = r.active_pid
    WHERE r.plugin = 'pglogical_output' AND r.database = current_database())
);
\elif :berth_slot_copies
SELECT json_build_object('subscriptions', '[]'::json, 'slots', '[]'::json,
  'slot_copies', (SELECT count(*) FROM pg_replication_slots
    WHERE plugin = 'pglogical_output' AND NOT active AND database = current_database()));
\else
SELECT '{"subscriptions": [], "slots": []}';
\endif
"#;

/// What [`PGLOGICAL_SQL`] answers on one instance.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub(super) struct PglogicalRead {
    /// Its subscriptions, as subscriber.
    pub subscriptions: Vec<SubscriptionRow>,
    /// Its pglogical slots, as provider.
    pub slots: Vec<SlotRow>,
    /// On a replica running `pg_failover_slots`: how many copies of pglogical slots are
    /// ready there.
    #[serde(default)]
    pub slot_copies: Option<usize>,
}

/// A row of `pglogical.show_subscription_status()`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub(super) struct SubscriptionRow {
    pub name: String,
    pub provider_node: String,
    pub status: String,
    /// The slot it reads on the provider.
    pub slot_name: String,
}

/// A provider's slot of one subscription.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub(super) struct SlotRow {
    pub slot_name: String,
    /// A walsender serves it (the subscriber is connected).
    pub active: bool,
    /// WAL written since the subscriber's last confirmation; absent before its first one.
    pub lag_bytes: Option<u64>,
    /// `replay_lag` of its walsender in seconds, 0 when it confirmed all the WAL there is;
    /// absent without a walsender, or behind with no measure yet.
    pub lag_seconds: Option<f64>,
}

/// Reads [`PGLOGICAL_SQL`]'s answer. Errors: not that JSON.
pub(super) fn parse(out: &str) -> Result<PglogicalRead, String> {
    serde_json::from_str(out.trim()).map_err(|e| e.to_string())
}

/// One instance's read, with the node it belongs to.
pub(super) struct NodeRead<'a> {
    pub node: &'a str,
    pub read: &'a PglogicalRead,
}

/// Each instance's subscriptions (by instance id; every instance read gets an entry), with
/// the lag of the provider's slot of the same name on an instance of the provider node:
/// the one whose slot has a walsender if several do (a slot copied to a replica never has
/// one). `lag_seconds` comes only from a slot with a walsender. Pure.
pub(super) fn join(reads: &BTreeMap<String, NodeRead>) -> BTreeMap<String, Vec<Subscription>> {
    let slot = |provider: &str, name: &str| {
        reads
            .values()
            .filter(|r| r.node == provider)
            .flat_map(|r| &r.read.slots)
            .filter(|s| s.slot_name == name)
            .max_by_key(|s| s.active)
    };
    reads
        .iter()
        .map(|(instance_id, r)| {
            let subscriptions = r
                .read
                .subscriptions
                .iter()
                .map(|s| {
                    let provided = slot(&s.provider_node, &s.slot_name);
                    Subscription {
                        name: s.name.clone(),
                        provider_node: s.provider_node.clone(),
                        status: s.status.clone(),
                        lag_bytes: provided.and_then(|p| p.lag_bytes),
                        lag_seconds: provided.filter(|p| p.active).and_then(|p| p.lag_seconds),
                    }
                })
                .collect();
            (instance_id.clone(), subscriptions)
        })
        .collect()
}

/// A lag that moved by this many bytes (a WAL segment) since the record was written is
/// written again: a subscriber falling behind shows at the next check, while the small moves
/// of a busy database wait for [`REWRITE_AFTER`].
pub(super) const LAG_BYTES_MOVE: u64 = 16 << 20;
/// The same for a lag in seconds.
pub(super) const LAG_SECONDS_MOVE: f64 = 1.0;

/// Whether `new` is worth a write over `old`: a subscription came, went, changed status or
/// provider, or its lag became known or unknown (what warnings and automation read), its
/// lag moved by [`LAG_BYTES_MOVE`] or [`LAG_SECONDS_MOVE`], or `old` is [`REWRITE_AFTER`]
/// old (so the lag shown is at most that old).
pub(super) fn worth_writing(old: Option<&SubscriptionReport>, new: &SubscriptionReport) -> bool {
    let summary = |r: &SubscriptionReport| {
        r.subscriptions
            .iter()
            .map(|s| {
                (
                    s.name.clone(),
                    s.provider_node.clone(),
                    s.status.clone(),
                    s.lag_bytes.is_some(),
                )
            })
            .collect::<Vec<_>>()
    };
    let Some(old) = old else {
        return true;
    };
    if summary(old) != summary(new) || new.checked_at - old.checked_at >= REWRITE_AFTER {
        return true;
    }
    // Same names in the same order, as the summaries are equal.
    old.subscriptions
        .iter()
        .zip(&new.subscriptions)
        .any(|(o, n)| {
            let bytes = o.lag_bytes.unwrap_or(0).abs_diff(n.lag_bytes.unwrap_or(0));
            let seconds = (o.lag_seconds.unwrap_or(0.0) - n.lag_seconds.unwrap_or(0.0)).abs();
            bytes >= LAG_BYTES_MOVE || seconds >= LAG_SECONDS_MOVE
        })
}

/// Logs the warnings `report` calls for, as the WAL check logs its own.
pub(super) fn log_warnings(database_id: &str, instance_id: &str, report: &SubscriptionReport) {
    for w in warnings(&report.subscriptions) {
        tracing::warn!(%database_id, %instance_id, code = %w.code, level = ?w.level, "{}", w.message);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;

    #[test]
    fn a_read_parses_from_the_querys_json() {
        let out = r#"{"subscriptions" : [{"name" : "berth_n1_from_n2", "provider_node" : "n2",
            "status" : "replicating", "slot_name" : "pgl_app_n2_berth_n1_from_n2"}],
            "slots" : [{"slot_name" : "pgl_app_n1_berth_n2_from_n1", "active" : true,
            "lag_bytes" : 56, "lag_seconds" : 0.001234}]}"#;
        let r = parse(out).unwrap();
        assert_eq!(r.subscriptions[0].provider_node, "n2");
        assert_eq!(r.slots[0].lag_bytes, Some(56));
        assert_eq!(r.slots[0].lag_seconds, Some(0.001234));
        // Without pglogical, or on a replica.
        assert_eq!(
            parse(r#"{"subscriptions": [], "slots": []}"#).unwrap(),
            PglogicalRead::default()
        );
        assert!(parse("psql: error").is_err());
    }

    fn sub(subscriber: &str, provider: &str, status: &str) -> SubscriptionRow {
        let name = format!("berth_{subscriber}_from_{provider}");
        SubscriptionRow {
            slot_name: format!("pgl_app_{provider}_{name}"),
            name,
            provider_node: provider.into(),
            status: status.into(),
        }
    }

    fn slot(subscriber: &str, provider: &str, active: bool, lag: u64) -> SlotRow {
        SlotRow {
            slot_name: format!("pgl_app_{provider}_berth_{subscriber}_from_{provider}"),
            active,
            lag_bytes: Some(lag),
            lag_seconds: Some(0.5),
        }
    }

    /// Two nodes subscribed to each other, n2 with a replica that holds a stale copy of a
    /// slot, and a third node whose primary was not read this round.
    #[test]
    fn each_subscription_gets_the_lag_of_its_providers_slot() {
        let n1 = PglogicalRead {
            subscriptions: vec![sub("n1", "n2", "replicating"), sub("n1", "n3", "down")],
            slots: vec![slot("n2", "n1", true, 10)],
            slot_copies: None,
        };
        let n2 = PglogicalRead {
            subscriptions: vec![sub("n2", "n1", "replicating")],
            slots: vec![slot("n1", "n2", true, 20)],
            slot_copies: None,
        };
        let n2_replica = PglogicalRead {
            subscriptions: vec![],
            slots: vec![slot("n1", "n2", false, 9999)],
            slot_copies: Some(1),
        };
        let reads: BTreeMap<String, NodeRead> = [
            ("db-n1-h1", "n1", &n1),
            ("db-n2-h2", "n2", &n2),
            ("db-n2-h3", "n2", &n2_replica),
        ]
        .into_iter()
        .map(|(id, node, read)| (id.to_string(), NodeRead { node, read }))
        .collect();
        let joined = join(&reads);
        let on_n1 = &joined["db-n1-h1"];
        assert_eq!(on_n1.len(), 2);
        assert_eq!(
            (on_n1[0].name.as_str(), on_n1[0].provider_node.as_str()),
            ("berth_n1_from_n2", "n2")
        );
        assert_eq!(on_n1[0].lag_bytes, Some(20), "the active slot's lag");
        assert_eq!(on_n1[0].lag_seconds, Some(0.5));
        assert_eq!(on_n1[1].status, "down");
        assert_eq!(on_n1[1].lag_bytes, None, "n3 was not read");
        let on_n2 = &joined["db-n2-h2"];
        assert_eq!(
            (on_n2[0].lag_bytes, on_n2[0].lag_seconds),
            (Some(10), Some(0.5))
        );
        assert!(joined["db-n2-h3"].is_empty(), "a replica has none");

        // A slot without a walsender has a byte lag but no time lag.
        let idle = PglogicalRead {
            slots: vec![slot("n2", "n1", false, 30)],
            ..n1.clone()
        };
        let reads: BTreeMap<String, NodeRead> = [("a", "n1", &idle), ("b", "n2", &n2)]
            .into_iter()
            .map(|(id, node, read)| (id.to_string(), NodeRead { node, read }))
            .collect();
        let on_n2 = &join(&reads)["b"];
        assert_eq!((on_n2[0].lag_bytes, on_n2[0].lag_seconds), (Some(30), None));
    }

    #[test]
    fn only_a_change_or_an_old_report_is_written() {
        let t0 = Utc::now();
        let report = |minutes: i64, status: &str, lag: Option<u64>| SubscriptionReport {
            checked_at: t0 + chrono::TimeDelta::minutes(minutes),
            subscriptions: vec![Subscription {
                name: "berth_n1_from_n2".into(),
                provider_node: "n2".into(),
                status: status.into(),
                lag_bytes: lag,
                lag_seconds: None,
            }],
        };
        let first = report(0, "replicating", Some(10));
        assert!(worth_writing(None, &first));
        assert!(
            !worth_writing(Some(&first), &report(1, "replicating", Some(99))),
            "the lag moved a little"
        );
        assert!(
            worth_writing(
                Some(&first),
                &report(1, "replicating", Some(10 + LAG_BYTES_MOVE))
            ),
            "the lag moved by a segment"
        );
        let mut slow = report(1, "replicating", Some(10));
        slow.subscriptions[0].lag_seconds = Some(LAG_SECONDS_MOVE);
        assert!(worth_writing(Some(&first), &slow), "a second behind");
        assert!(worth_writing(Some(&first), &report(1, "down", Some(10))));
        assert!(worth_writing(Some(&first), &report(1, "replicating", None)));
        assert!(worth_writing(
            Some(&first),
            &report(5, "replicating", Some(10))
        ));
        let none = SubscriptionReport {
            checked_at: t0,
            subscriptions: vec![],
        };
        assert!(worth_writing(Some(&first), &none), "it became a replica");
    }
}
