//! The control plane's metrics: its HTTP API, tasks, reconciliation, and the leader's view of
//! the fleet.

use std::time::Duration;

use metrics::{SharedString, counter, gauge, histogram};

/// Counter `berth_http_requests_total{method, route, status}`: API requests answered.
/// `route` is the matched route template (`/v1/databases/{database_id}`), or `unmatched` for a path no
/// route serves; `method` is the HTTP method (`other` for extension methods); `status` the
/// response's status code.
pub const HTTP_REQUESTS: &str = "berth_http_requests_total";
/// Histogram `berth_http_request_duration_seconds{method, route}`: from the request's arrival
/// at the router to its response head (bodies here are small JSON documents).
pub const HTTP_REQUEST_DURATION: &str = "berth_http_request_duration_seconds";
/// Counter `berth_tasks_ended_total{type, status}`: tasks that reached a terminal status.
/// `type` and `status` as the API spells them: `type` `create`, `update`, `delete`,
/// `reconcile`, ...; `status` `completed`, `failed` or `canceled`.
pub const TASKS_ENDED: &str = "berth_tasks_ended_total";
/// Histogram `berth_task_duration_seconds{type, status}`: from a task's creation to its end.
pub const TASK_DURATION: &str = "berth_task_duration_seconds";
/// Counter `berth_reconcile_passes_total{outcome}`: passes of the leader's reconciler over
/// one database, by how they ended ([`PassOutcome`]).
pub const RECONCILE_PASSES: &str = "berth_reconcile_passes_total";
/// Histogram `berth_reconcile_pass_duration_seconds{outcome}`: one pass, load to last write
/// (it includes the steps it ran and the instances' start).
pub const RECONCILE_PASS_DURATION: &str = "berth_reconcile_pass_duration_seconds";
/// Histogram `berth_reconcile_step_duration_seconds{step, result}`: one step of a plan.
/// `step` is `apply`, `resize`, `remove`, `create_roles` or `drop_roles`; `result` is `ok` or
/// `error`.
pub const RECONCILE_STEP_DURATION: &str = "berth_reconcile_step_duration_seconds";
/// Gauge `berth_instances{kind, state}`: containers the leader sees on the fleet, as the
/// agents report them. `kind` is `postgres`, `service` or `unspecified`; `state` is
/// `creating`, `running`, `failed`, `stopped`, `missing` (the agent has the instance's
/// directory but no container) or `unknown` (its host's stream is down). Every combination
/// is exported; all are 0 on a replica that does not lead.
pub const INSTANCES: &str = "berth_instances";
/// Gauge `berth_hosts{state}`: registered hosts by state, `healthy`, `degraded` or
/// `unreachable`, as `GET /v1/hosts` reports them. Kept by the leader (read again when a host
/// record, lease or dial failure changes); 0 on a replica that does not lead.
pub const HOSTS: &str = "berth_hosts";
/// Gauge `berth_leader`: 1 while this replica is the elected leader (it reconciles), else 0.
pub const LEADER: &str = "berth_leader";

/// The values of `kind` in [`INSTANCES`].
pub const INSTANCE_KINDS: [&str; 3] = ["postgres", "service", "unspecified"];
/// The values of `state` in [`INSTANCES`].
pub const INSTANCE_STATES: [&str; 6] = [
    "creating", "running", "failed", "stopped", "missing", "unknown",
];
/// The values of `state` in [`HOSTS`].
pub const HOST_STATES: [&str; 3] = ["healthy", "degraded", "unreachable"];

/// One answered API request.
pub fn http_request(
    method: &'static str,
    route: SharedString,
    status: SharedString,
    took: Duration,
) {
    histogram!(HTTP_REQUEST_DURATION, "method" => method, "route" => route.clone())
        .record(took.as_secs_f64());
    counter!(HTTP_REQUESTS, "method" => method, "route" => route, "status" => status).increment(1);
}

/// A task of `task_type` reached `status` (terminal) after `took` since it was created.
/// Both as the API spells them (`create`, `completed`).
pub fn task_ended(task_type: SharedString, status: SharedString, took: Duration) {
    histogram!(TASK_DURATION, "type" => task_type.clone(), "status" => status.clone())
        .record(took.as_secs_f64());
    counter!(TASKS_ENDED, "type" => task_type, "status" => status).increment(1);
}

/// How a reconcile pass ended: the `outcome` label of [`RECONCILE_PASSES`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PassOutcome {
    /// Converged, or waiting for an event (`done`).
    Done,
    /// An attempt failed and is retried after a delay (`retry`).
    Retry,
    /// The task failed after its last attempt (`gave_up`).
    GaveUp,
    /// The database no longer exists (`gone`).
    Gone,
    /// Another replica leads now; the pass's writes were refused (`fenced`).
    Fenced,
    /// The store failed (etcd away); the pass is retried (`error`).
    Error,
}

impl PassOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            PassOutcome::Done => "done",
            PassOutcome::Retry => "retry",
            PassOutcome::GaveUp => "gave_up",
            PassOutcome::Gone => "gone",
            PassOutcome::Fenced => "fenced",
            PassOutcome::Error => "error",
        }
    }
}

/// One reconcile pass over one database ended as `outcome` after `took`.
pub fn reconcile_pass(outcome: PassOutcome, took: Duration) {
    let outcome = outcome.as_str();
    counter!(RECONCILE_PASSES, "outcome" => outcome).increment(1);
    histogram!(RECONCILE_PASS_DURATION, "outcome" => outcome).record(took.as_secs_f64());
}

/// One step of a plan (`step` as in [`RECONCILE_STEP_DURATION`]) ran for `took`.
pub fn reconcile_step(step: &'static str, ok: bool, took: Duration) {
    let result = if ok { "ok" } else { "error" };
    histogram!(RECONCILE_STEP_DURATION, "step" => step, "result" => result)
        .record(took.as_secs_f64());
}

/// Sets [`INSTANCES`] for one `kind` and `state` (values of [`INSTANCE_KINDS`] and
/// [`INSTANCE_STATES`]).
pub fn set_instances(kind: &'static str, state: &'static str, count: usize) {
    gauge!(INSTANCES, "kind" => kind, "state" => state).set(count as f64);
}

/// Sets [`HOSTS`] for one `state` (a value of [`HOST_STATES`]).
pub fn set_hosts(state: &'static str, count: usize) {
    gauge!(HOSTS, "state" => state).set(count as f64);
}

/// Sets [`LEADER`].
pub fn set_leader(leading: bool) {
    gauge!(LEADER).set(if leading { 1.0 } else { 0.0 });
}
