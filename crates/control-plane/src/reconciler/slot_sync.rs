//! Moving a node's pglogical slots along so that its replicas' copies become ready.
//!
//! `pg_failover_slots` copies each pglogical slot of a primary to its replicas, but a copy
//! is only kept once the primary's slot has moved past the position the replica reserved
//! when it made the copy: its `restart_lsn` and `catalog_xmin` must pass the replica's.
//! Those move only when the slot's subscriber decodes a transaction and a running-xacts
//! record after it. A node nobody writes to never produces either, so a replica added to
//! an idle node would wait forever, and a failover to it would lose every subscription
//! the other nodes have of this node. While a replica's copies are not all ready, each
//! instance check runs one empty transaction with an xid on the node's primary, and logs
//! a running-xacts record at once (Postgres 16 and later; the background writer does
//! within 15 s otherwise): one small WAL record per check, and only until the copies are
//! ready.

use std::collections::BTreeMap;

use super::Reconciler;
use super::subscription_watch::NodeRead;

/// An xid, a commit the subscribers decode and confirm, and a running-xacts record.
/// `pg_logical_emit_message(true, ...)` assigns the transaction an xid; pglogical's output
/// plugin ignores the message itself.
const NUDGE_SQL: &str = r#"\set ON_ERROR_STOP on
BEGIN;
SELECT pg_logical_emit_message(true, 'berth', 'failover slot sync');
COMMIT;
SELECT current_setting('server_version_num')::int >= 160000 AS berth_snapshot \gset
\if :berth_snapshot
SELECT pg_log_standby_snapshot();
\endif
"#;

/// The primaries (instance ids) of nodes with a replica whose ready slot copies are fewer
/// than the primary's pglogical slots. A node's primary is the instance with
/// subscriptions (every primary of a replicated database has one per other node). Pure.
pub(super) fn primaries_to_move(reads: &BTreeMap<String, NodeRead>) -> Vec<String> {
    let mut out = Vec::new();
    for (primary_id, primary) in reads
        .iter()
        .filter(|(_, r)| !r.read.subscriptions.is_empty())
    {
        let slots = primary.read.slots.len();
        let behind = reads.values().any(|r| {
            r.node == primary.node && r.read.slot_copies.is_some_and(|copies| copies < slots)
        });
        if slots > 0 && behind {
            out.push(primary_id.clone());
        }
    }
    out
}

impl Reconciler {
    /// Runs [`NUDGE_SQL`] on each primary of [`primaries_to_move`]; a failure is logged and
    /// left to the next check.
    pub(super) async fn move_slots_for_replicas(
        &self,
        database_id: &str,
        database_name: &str,
        primaries: &[(String, String)],
    ) {
        for (instance_id, host_id) in primaries {
            tracing::info!(
                %database_id,
                %instance_id,
                %host_id,
                "a replica's copies of the primary's pglogical slots are not ready: moving the slots with a transaction"
            );
            let done = self
                .psql(
                    host_id,
                    instance_id,
                    database_name,
                    NUDGE_SQL.to_string(),
                    &[],
                )
                .await;
            if let Err(e) = done {
                tracing::warn!(%database_id, %instance_id, error = %e, "moving the pglogical slots failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reconciler::subscription_watch::{PglogicalRead, SlotRow, SubscriptionRow};

    fn primary() -> PglogicalRead {
        let slot = |name: &str| SlotRow {
            slot_name: name.into(),
            active: true,
            lag_bytes: Some(0),
            lag_seconds: Some(0.0),
        };
        PglogicalRead {
            subscriptions: vec![SubscriptionRow {
                name: "berth_n1_from_n2".into(),
                provider_node: "n2".into(),
                status: "replicating".into(),
                slot_name: "pgl_app_n2_berth_n1_from_n2".into(),
            }],
            slots: vec![slot("a"), slot("b")],
            slot_copies: None,
        }
    }

    fn replica(copies: Option<usize>) -> PglogicalRead {
        PglogicalRead {
            slot_copies: copies,
            ..PglogicalRead::default()
        }
    }

    #[test]
    fn a_primary_moves_its_slots_while_a_replica_lacks_ready_copies() {
        let (p, behind, ready, other) = (primary(), replica(Some(1)), replica(Some(2)), primary());
        let read = |node, read| NodeRead { node, read };
        let reads = BTreeMap::from([
            ("n1-a".to_string(), read("n1", &p)),
            ("n1-b".to_string(), read("n1", &behind)),
            ("n2-a".to_string(), read("n2", &other)),
            ("n2-b".to_string(), read("n2", &ready)),
        ]);
        assert_eq!(primaries_to_move(&reads), ["n1-a"]);
    }

    #[test]
    fn no_copies_to_make_or_none_counted_moves_nothing() {
        // A replica without pg_failover_slots (Postgres 15) counts none; a primary without
        // slots has nothing to copy.
        let (p, pg15) = (primary(), replica(None));
        let lone = PglogicalRead {
            slots: vec![],
            ..primary()
        };
        let empty = replica(Some(0));
        let read = |node, read| NodeRead { node, read };
        let reads = BTreeMap::from([
            ("n1-a".to_string(), read("n1", &p)),
            ("n1-b".to_string(), read("n1", &pg15)),
            ("n2-a".to_string(), read("n2", &lone)),
            ("n2-b".to_string(), read("n2", &empty)),
        ]);
        assert!(primaries_to_move(&reads).is_empty());
    }
}
