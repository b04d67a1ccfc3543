//! When the nodes of a database become one database (ADR 019): once, when the database has
//! two nodes or more and every one of them has a running primary.

use crate::postgres::Nodes;
use crate::types::{PlanInput, Step};

/// The [`Step::Replicate`] of this plan, if any: the database is not being deleted, its
/// replication was never configured (`input.replicated` is empty), the spec has two nodes or
/// more, each with an instance to run, and `primaries_ready` (every such node's leader runs
/// on a reachable host, its container not replaced by this plan).
///
/// Nodes added to or removed from a replicated database are not planned here (issue 16,
/// item 3): the recorded set stays as configured.
pub(crate) fn step(input: &PlanInput, nodes: &Nodes, primaries_ready: bool) -> Option<Step> {
    if input.deleting || !input.replicated.is_empty() || !primaries_ready {
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
    (wanted.len() >= 2 && all_run).then(|| Step::Replicate {
        nodes: wanted.into_iter().map(String::from).collect(),
    })
}
