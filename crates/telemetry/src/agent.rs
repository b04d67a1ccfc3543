//! The agent's metrics: applies, the engine's container events, health check results.

use std::time::Duration;

use metrics::{counter, histogram};

/// Histogram `berth_agent_apply_duration_seconds{action}`: one ApplyInstance, from the
/// request to its result, the wait for the instance to become ready included. `action` is
/// what the apply did: `created`, `recreated`, `resized`, `unchanged`, or `failed`.
pub const APPLY_DURATION: &str = "berth_agent_apply_duration_seconds";
/// Counter `berth_agent_container_events_total{action}`: events the container engine
/// reported for this agent's containers, by the engine's action (`create`, `start`, `die`,
/// `kill`, `oom`, `stop`, `destroy`, `restart`, `health_status`, `exec_start`, ...; Docker
/// Engine API, "Monitor events"), without its detail (`exec_start: pg_isready` counts as
/// `exec_start`); `other` for an action not in that list.
pub const CONTAINER_EVENTS: &str = "berth_agent_container_events_total";
/// Counter `berth_agent_health_checks_total{source, result}`: health check results.
/// `source` `engine`: the engine reported a container's health changing (Docker says so
/// only on a change), `result` `pass` for healthy, `fail` for unhealthy. `source`
/// `start_probe`: one run of the agent's own probe of a starting container (ADR 009),
/// `pass` or `fail`.
pub const HEALTH_CHECKS: &str = "berth_agent_health_checks_total";

/// Docker's container event actions (Engine API, "Monitor events"), the values of `action`
/// in [`CONTAINER_EVENTS`] besides `other`.
const ACTIONS: [&str; 25] = [
    "attach",
    "commit",
    "copy",
    "create",
    "destroy",
    "detach",
    "die",
    "exec_create",
    "exec_detach",
    "exec_die",
    "exec_start",
    "export",
    "health_status",
    "kill",
    "oom",
    "pause",
    "rename",
    "resize",
    "restart",
    "start",
    "stop",
    "top",
    "unpause",
    "update",
    "prune",
];

/// An apply ended having done `action` (see [`APPLY_DURATION`]) after `took`.
pub fn apply(action: &'static str, took: Duration) {
    histogram!(APPLY_DURATION, "action" => action).record(took.as_secs_f64());
}

/// The engine reported `action` (as Docker spells it, detail included) for a container of
/// this agent. A health status change counts as an `engine` health check too.
pub fn container_event(action: &str) {
    let (name, detail) = match action.split_once(':') {
        Some((name, detail)) => (name.trim(), detail.trim()),
        None => (action.trim(), ""),
    };
    let label = ACTIONS
        .iter()
        .find(|a| **a == name)
        .copied()
        .unwrap_or("other");
    counter!(CONTAINER_EVENTS, "action" => label).increment(1);
    if label == "health_status" {
        match detail {
            "healthy" => health_check("engine", true),
            "unhealthy" => health_check("engine", false),
            _ => {}
        }
    }
}

/// One health check result from `source` (`engine` or `start_probe`, see [`HEALTH_CHECKS`]).
pub fn health_check(source: &'static str, passed: bool) {
    let result = if passed { "pass" } else { "fail" };
    counter!(HEALTH_CHECKS, "source" => source, "result" => result).increment(1);
}
