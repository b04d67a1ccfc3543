//! Every metric berth exports, in one table: what `# HELP` says, which buckets a histogram
//! has, and what docs/operations.md must list (a test checks it does).

use crate::{FAST_BUCKETS, SLOW_BUCKETS, agent, control_plane as cp, etcd};

/// A metric's Prometheus type.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Kind {
    Counter,
    Gauge,
    /// With its buckets' upper bounds, in seconds.
    Histogram(&'static [f64]),
}

/// One exported metric.
#[derive(Debug, Clone, Copy)]
pub struct Metric {
    pub name: &'static str,
    pub kind: Kind,
    /// The `# HELP` line: one sentence.
    pub help: &'static str,
}

const fn m(name: &'static str, kind: Kind, help: &'static str) -> Metric {
    Metric { name, kind, help }
}

/// Every metric, control plane first, then the agent's.
pub const METRICS: &[Metric] = &[
    m(
        cp::HTTP_REQUESTS,
        Kind::Counter,
        "API requests answered, by method, route template and status code.",
    ),
    m(
        cp::HTTP_REQUEST_DURATION,
        Kind::Histogram(FAST_BUCKETS),
        "Time from an API request's arrival to its response head, by method and route template.",
    ),
    m(
        cp::TASKS_ENDED,
        Kind::Counter,
        "Tasks that reached a terminal status, by type and status.",
    ),
    m(
        cp::TASK_DURATION,
        Kind::Histogram(SLOW_BUCKETS),
        "Time from a task's creation to its end, by type and status.",
    ),
    m(
        cp::RECONCILE_PASSES,
        Kind::Counter,
        "Reconcile passes over one database, by outcome.",
    ),
    m(
        cp::RECONCILE_PASS_DURATION,
        Kind::Histogram(SLOW_BUCKETS),
        "Duration of one reconcile pass over one database, by outcome.",
    ),
    m(
        cp::RECONCILE_STEP_DURATION,
        Kind::Histogram(SLOW_BUCKETS),
        "Duration of one plan step, by step kind and result.",
    ),
    m(
        cp::INSTANCES,
        Kind::Gauge,
        "Containers the leader sees on the fleet, by kind and state (0 on a replica that does not lead).",
    ),
    m(
        cp::HOSTS,
        Kind::Gauge,
        "Registered hosts by state, as the leader last read them (0 on a replica that does not lead).",
    ),
    m(
        cp::LEADER,
        Kind::Gauge,
        "1 while this replica is the elected leader, else 0.",
    ),
    m(etcd::REQUESTS, Kind::Counter, "gRPC calls to etcd, by RPC."),
    m(
        etcd::REQUEST_ERRORS,
        Kind::Counter,
        "gRPC calls to etcd that failed, by RPC.",
    ),
    m(
        etcd::REQUEST_DURATION,
        Kind::Histogram(FAST_BUCKETS),
        "Time to etcd's response head, by RPC.",
    ),
    m(
        agent::APPLY_DURATION,
        Kind::Histogram(SLOW_BUCKETS),
        "Duration of one ApplyInstance until the instance is ready, by what it did.",
    ),
    m(
        agent::CONTAINER_EVENTS,
        Kind::Counter,
        "Container engine events for this agent's containers, by action.",
    ),
    m(
        agent::HEALTH_CHECKS,
        Kind::Counter,
        "Health check results, by source (engine status change or the agent's start probe) and result.",
    ),
];

/// Names the buckets of every histogram.
pub(crate) fn buckets() -> impl Iterator<Item = (&'static str, &'static [f64])> {
    METRICS.iter().filter_map(|m| match m.kind {
        Kind::Histogram(b) => Some((m.name, b)),
        _ => None,
    })
}

/// Gives every metric its `# HELP` text (and its unit, seconds, for histograms).
pub(crate) fn describe() {
    for m in METRICS {
        match m.kind {
            Kind::Counter => metrics::describe_counter!(m.name, m.help),
            Kind::Gauge => metrics::describe_gauge!(m.name, m.help),
            Kind::Histogram(_) => {
                metrics::describe_histogram!(m.name, metrics::Unit::Seconds, m.help)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Kind, METRICS};

    #[test]
    fn names_follow_prometheus_conventions_and_are_unique() {
        let mut seen = std::collections::BTreeSet::new();
        for m in METRICS {
            assert!(seen.insert(m.name), "{} listed twice", m.name);
            assert!(m.name.starts_with("berth_"), "{}", m.name);
            match m.kind {
                Kind::Counter => assert!(m.name.ends_with("_total"), "{}", m.name),
                Kind::Histogram(_) => assert!(m.name.ends_with("_seconds"), "{}", m.name),
                Kind::Gauge => assert!(!m.name.ends_with("_total"), "{}", m.name),
            }
        }
    }

    /// docs/operations.md is the operator's list: it must name every metric.
    #[test]
    fn the_operations_page_lists_every_metric() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/operations.md");
        let page = std::fs::read_to_string(path).expect("docs/operations.md");
        for m in METRICS {
            assert!(
                page.contains(&format!("`{}`", m.name)),
                "docs/operations.md does not list {}",
                m.name
            );
        }
    }
}
