//! When the nodes of a database become one database (ADR 019), and when a node joins or
//! leaves it (ADR 020): whenever the nodes the spec runs differ from the ones replication
//! was last configured for, and every node to configure has a running primary.

use crate::postgres::Nodes;
use crate::types::{PlanInput, Step};

/// The [`Step::Replicate`] of this plan, if any: the database is not being deleted,
/// `primaries_ready` (every running node's leader runs on a reachable host, its container
/// not replaced by this plan), every node the spec runs has its instances running (none
/// stopped whole), and the set of those nodes differs from `input.replicated`, the set
/// replication was last configured for, or, with two nodes or more, a node's hosts differ
/// from `input.replicated_hosts` (the other nodes' subscriptions list every instance of
/// it). A single node that was never replicated has
/// nothing to do; a replicated database shrinking to one node still unsubscribes it from
/// the node that left.
pub(crate) fn step(input: &PlanInput, nodes: &Nodes, primaries_ready: bool) -> Option<Step> {
    if input.deleting || !primaries_ready {
        return None;
    }
    let wanted: Vec<&str> = nodes
        .0
        .iter()
        .filter(|(_, n)| !n.desired.is_empty())
        .map(|(name, _)| *name)
        .collect();
    // A node whose instances are all stopped has no primary to configure: it waits.
    let all_run = nodes
        .0
        .values()
        .filter(|n| !n.desired.is_empty())
        .all(|n| n.runs());
    let moved = |name: &str, node: &crate::postgres::Node| {
        let hosts: std::collections::BTreeSet<&str> =
            node.desired.iter().map(|d| d.host_id.as_str()).collect();
        let recorded = input.replicated_hosts.get(name);
        !hosts
            .iter()
            .copied()
            .eq(recorded.into_iter().flatten().map(String::as_str))
    };
    let changed = !wanted
        .iter()
        .copied()
        .eq(input.replicated.iter().map(String::as_str))
        || (wanted.len() >= 2
            && nodes
                .0
                .iter()
                .filter(|(_, n)| !n.desired.is_empty())
                .any(|(name, n)| moved(name, n)));
    let worth = wanted.len() >= 2 || !input.replicated.is_empty();
    (all_run && changed && worth && !wanted.is_empty()).then(|| Step::Replicate {
        nodes: wanted.into_iter().map(String::from).collect(),
    })
}
