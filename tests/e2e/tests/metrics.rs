//! Prometheus metrics (docs/operations.md): `/metrics` of the control plane and of an agent
//! started with `--metrics-listen` parse as the text exposition format, and the counters move
//! as a create task runs: the task's outcome, reconcile passes and steps, HTTP requests by
//! route template, etcd calls, and the agent's applies and container events.

use std::collections::BTreeMap;

use e2e::Fleet;
use e2e::reqwest::StatusCode;
use e2e::serde_json::json;
use prom_text_format_parser::Scrape;

/// A scrape as (metric name with `_bucket`/`_sum`/`_count` as written, sorted labels) → value.
type Samples = BTreeMap<(String, Vec<(String, String)>), f64>;

async fn scrape(url: &str) -> Samples {
    let response = e2e::reqwest::get(url)
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    assert_eq!(response.status(), StatusCode::OK, "GET {url}");
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "GET {url}: content type {content_type}"
    );
    let text = response.text().await.unwrap();
    let mut samples = Samples::new();
    if text.is_empty() {
        // Nothing recorded yet: an empty exposition, which the parser refuses.
        return samples;
    }
    let parsed =
        Scrape::parse(&text).unwrap_or_else(|e| panic!("{url} is not the text format: {e:?}"));
    for metric in parsed.metrics {
        for sample in metric.samples {
            let suffix = match (metric.kind, sample.value.value_type) {
                (_, prom_text_format_parser::ValueType::Sum) => "_sum",
                (_, prom_text_format_parser::ValueType::Count) => "_count",
                (prom_text_format_parser::Type::Histogram, _) => "_bucket",
                _ => "",
            };
            let mut labels: Vec<(String, String)> = sample
                .labels
                .iter()
                .map(|l| (l.key.clone(), l.value.clone()))
                .collect();
            labels.sort();
            samples.insert(
                (format!("{}{suffix}", metric.name), labels),
                sample.value.value.as_f64(),
            );
        }
    }
    samples
}

/// The sum of every sample of `name` whose labels include `labels`.
fn total(samples: &Samples, name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|((n, l), _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| l.iter().any(|(lk, lv)| lk == k && lv == v))
        })
        .map(|(_, v)| v)
        .sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_parse_and_move_as_a_task_runs() {
    let mut fleet = Fleet::start(1).await;
    let host = fleet.host(1);
    let port = test_support::free_port();
    fleet.restart_agent_with(&host, &[format!("--metrics-listen=127.0.0.1:{port}")]);
    fleet.wait_hosts_healthy().await;
    let cp = format!("{}/metrics", fleet.api());
    let agent = format!("http://127.0.0.1:{port}/metrics");

    let cp_before = scrape(&cp).await;
    let agent_before = scrape(&agent).await;
    assert_eq!(
        total(&cp_before, "berth_leader", &[]),
        1.0,
        "one replica, leading"
    );

    let db = fleet.db_id("metrics");
    let created = fleet
        .post_ok(
            "/v1/databases",
            &json!({"id": db, "spec": {
                "database_name": "app",
                "nodes": [{"name": "n1", "host_ids": [host]}]
            }}),
        )
        .await;
    let task_id = created["task"]["task_id"].as_str().expect("task id");
    let task = fleet.wait_task(&db, task_id).await;
    assert_eq!(task["status"], "completed", "{task}");

    // The task's end is counted just after it is stored, and the pass that ended it when
    // the pass returns: read until both are, which may be a moment after the API said so.
    let ended = [("type", "create"), ("status", "completed")];
    let (cp_after, _) = fleet
        .wait_for("the task's end and a reconcile pass counted", || async {
            let now = scrape(&cp).await;
            let moved = |name: &str, labels: &[(&str, &str)]| {
                total(&now, name, labels) - total(&cp_before, name, labels)
            };
            (moved("berth_tasks_ended_total", &ended) >= 1.0
                && moved("berth_reconcile_passes_total", &[]) >= 1.0)
                .then_some(now)
        })
        .await;
    let moved = |name: &str, labels: &[(&str, &str)]| {
        total(&cp_after, name, labels) - total(&cp_before, name, labels)
    };
    assert_eq!(moved("berth_tasks_ended_total", &ended), 1.0);
    assert_eq!(moved("berth_task_duration_seconds_count", &ended), 1.0);
    assert!(moved("berth_reconcile_passes_total", &[]) >= 1.0);
    assert!(
        moved(
            "berth_reconcile_step_duration_seconds_count",
            &[("step", "apply"), ("result", "ok")]
        ) >= 1.0
    );
    assert_eq!(
        moved(
            "berth_http_requests_total",
            &[
                ("method", "POST"),
                ("route", "/v1/databases"),
                ("status", "200")
            ]
        ),
        1.0
    );
    // wait_task polled the task under its route template (`/v1/databases/{..}/tasks/{..}`),
    // never under its ids.
    let task_route = cp_after
        .keys()
        .filter(|(name, _)| name == "berth_http_requests_total")
        .flat_map(|(_, labels)| labels.iter())
        .find(|(k, v)| {
            k == "route"
                && v.starts_with("/v1/databases/{")
                && v.contains("}/tasks/{")
                && v.ends_with('}')
                && v.matches('/').count() == 5
        })
        .map(|(_, v)| v.clone())
        .expect("requests counted under the task's route template");
    assert!(moved("berth_http_requests_total", &[("route", &task_route)]) >= 1.0);
    assert!(
        !cp_after
            .keys()
            .any(|(_, l)| l.iter().any(|(_, v)| v.contains(task_id)))
    );
    assert!(moved("berth_etcd_requests_total", &[("method", "Txn")]) >= 1.0);
    assert!(moved("berth_etcd_requests_total", &[("method", "Range")]) >= 1.0);
    assert_eq!(total(&cp_after, "berth_leader", &[]), 1.0);

    // The fleet gauges: a running Postgres container, and the one host healthy (kept by
    // the leader from its watch, so read until it has caught up).
    fleet
        .wait_for("the instance and host gauges", || async {
            let now = scrape(&cp).await;
            let running = total(
                &now,
                "berth_instances",
                &[("kind", "postgres"), ("state", "running")],
            );
            let healthy = total(&now, "berth_hosts", &[("state", "healthy")]);
            (running == 1.0 && healthy == 1.0).then_some(())
        })
        .await;

    let agent_after = scrape(&agent).await;
    let agent_moved = |name: &str, labels: &[(&str, &str)]| {
        total(&agent_after, name, labels) - total(&agent_before, name, labels)
    };
    assert!(
        agent_moved(
            "berth_agent_apply_duration_seconds_count",
            &[("action", "created")]
        ) >= 1.0
    );
    assert!(agent_moved("berth_agent_container_events_total", &[("action", "start")]) >= 1.0);
    assert!(
        agent_moved(
            "berth_agent_container_events_total",
            &[("action", "create")]
        ) >= 1.0
    );
    // The engine says when a container turns healthy, and the agent probes a starting one
    // itself: either way a result is counted, if not before the task ended then soon after.
    fleet
        .wait_for("a health check result on the agent", || async {
            let now = scrape(&agent).await;
            (total(&now, "berth_agent_health_checks_total", &[]) >= 1.0).then_some(())
        })
        .await;
}
