//! Replication between the nodes of a database as a primary shows it (ADR 019): the
//! pglogical subscriptions it holds, one per other node, with the status pglogical gives and
//! how far behind the provider each one is; and the warnings a subscription that does not
//! replicate calls for. A subscription that does not replicate means the nodes diverge:
//! writes on its provider do not reach the subscriber.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::wal::{InstanceWarning, WarningLevel};

/// pglogical's status of a subscription whose apply worker runs and has caught up with the
/// initial synchronisation.
pub const REPLICATING: &str = "replicating";
/// An apply worker runs but the synchronisation is not done (nodes that join later).
pub const INITIALIZING: &str = "initializing";
/// The subscription is enabled but no apply worker runs: it cannot reach its provider, or
/// the worker stopped on an error and pglogical is about to start it again.
pub const DOWN: &str = "down";

/// One pglogical subscription of a node's primary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Subscription {
    /// `berth_{subscriber}_from_{provider}` (node names).
    pub name: String,
    /// The node it replicates from.
    pub provider_node: String,
    /// pglogical's status (`pglogical.show_subscription_status()`), passed on as it is:
    /// `replicating`, `initializing`, `down` or `disabled` (pglogical's `unknown` too).
    pub status: String,
    /// Bytes of WAL the provider wrote that the subscriber has not confirmed: from the
    /// provider's slot of this subscription, `pg_current_wal_lsn()` less its
    /// `confirmed_flush_lsn`. Absent when the provider's slot was not read (its primary
    /// unreachable, or no slot of that name there).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag_bytes: Option<u64>,
    /// Seconds between a commit on the provider and the subscriber's confirmation of it
    /// (`pg_stat_replication.replay_lag` of the slot's walsender), 0 when the subscriber
    /// confirmed all the WAL the provider has. Absent while the slot has no walsender, and
    /// while it is behind with no measure (Postgres measures at most once a second).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag_seconds: Option<f64>,
}

/// A primary's subscriptions as last read, kept on its instance record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubscriptionReport {
    /// When they were read.
    pub checked_at: DateTime<Utc>,
    /// Ordered by name; empty on a node without pglogical or without peers.
    #[serde(default)]
    pub subscriptions: Vec<Subscription>,
}

/// The warnings `subscriptions` call for, most severe first. Pure.
///
/// - `subscription_down` (`critical`, so the instance reads `degraded`): the node no longer
///   receives its provider's writes, and nothing but the provider coming back (or a person)
///   ends that. pglogical starts a stopped worker again within seconds, so a provider's
///   restart may show for one check.
/// - `subscription_not_replicating` (`warning`): any other status but `replicating` and
///   `initializing`, such as `disabled`, which only a person sets.
pub fn warnings(subscriptions: &[Subscription]) -> Vec<InstanceWarning> {
    let mut out: Vec<InstanceWarning> = subscriptions
        .iter()
        .filter_map(|s| match s.status.as_str() {
            REPLICATING | INITIALIZING => None,
            DOWN => Some(InstanceWarning {
                code: "subscription_down".into(),
                level: WarningLevel::Critical,
                message: format!(
                    "subscription {} from node {} is down: writes on {} do not reach this \
                     node, and the nodes diverge until it replicates again",
                    s.name, s.provider_node, s.provider_node
                ),
            }),
            other => Some(InstanceWarning {
                code: "subscription_not_replicating".into(),
                level: WarningLevel::Warning,
                message: format!(
                    "subscription {} from node {} is {other}: writes on {} do not reach this \
                     node",
                    s.name, s.provider_node, s.provider_node
                ),
            }),
        })
        .collect();
    out.sort_by_key(|w| std::cmp::Reverse(w.level));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub(provider: &str, status: &str) -> Subscription {
        Subscription {
            name: format!("berth_n1_from_{provider}"),
            provider_node: provider.into(),
            status: status.into(),
            lag_bytes: Some(0),
            lag_seconds: None,
        }
    }

    #[test]
    fn only_a_subscription_that_does_not_replicate_warns() {
        let codes = |subs: &[Subscription]| {
            warnings(subs)
                .into_iter()
                .map(|w| (w.code, w.level))
                .collect::<Vec<_>>()
        };
        assert!(codes(&[sub("n2", "replicating"), sub("n3", "initializing")]).is_empty());
        assert_eq!(
            codes(&[sub("n2", "disabled"), sub("n3", "down")]),
            vec![
                ("subscription_down".to_string(), WarningLevel::Critical),
                (
                    "subscription_not_replicating".to_string(),
                    WarningLevel::Warning
                ),
            ]
        );
        let w = warnings(&[sub("n3", "down")]);
        assert!(w[0].message.contains("berth_n1_from_n3"), "{w:?}");
        assert!(w[0].message.contains("node n3"), "{w:?}");
    }

    #[test]
    fn the_api_shape_leaves_out_unknown_lag() {
        let json = serde_json::to_value(sub("n2", "replicating")).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"name": "berth_n1_from_n2", "provider_node": "n2",
                "status": "replicating", "lag_bytes": 0})
        );
    }
}
