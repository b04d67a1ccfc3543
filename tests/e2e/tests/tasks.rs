//! Tasks as automation sees them: listing and paging, following a log with its cursor,
//! canceling a running task, and a delete that takes every container with it.

use std::time::Duration;

use e2e::Fleet;
use e2e::serde_json::{Value, json};

fn node_only(host: &str) -> Value {
    json!({"database_name": "app", "nodes": [{"name": "n1", "host_ids": [host]}]})
}

fn ids(tasks: &Value) -> Vec<String> {
    tasks["tasks"]
        .as_array()
        .unwrap_or_else(|| panic!("no tasks in {tasks}"))
        .iter()
        .map(|t| t["task_id"].as_str().expect("task id").to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn tasks_are_listed_newest_first_and_paged_with_a_cursor() {
    let fleet = Fleet::start(1).await;
    let h1 = fleet.host(1);
    let db = fleet.db_id("paging");
    let body = json!({"id": db, "spec": node_only(&h1)});
    let mut created = vec![fleet.apply("/v1/databases", &body).await];
    for _ in 0..3 {
        let update = json!({"spec": node_only(&h1)});
        created.push(fleet.apply(&format!("/v1/databases/{db}"), &update).await);
    }
    let oldest_first: Vec<String> = created
        .iter()
        .map(|t| t["task_id"].as_str().expect("task id").to_string())
        .collect();
    let newest_first: Vec<String> = oldest_first.iter().rev().cloned().collect();

    let base = format!("/v1/databases/{db}/tasks");
    let all = fleet.get(&base).await;
    assert_eq!(ids(&all), newest_first);
    let listed = all["tasks"].as_array().expect("tasks");
    let types: Vec<&str> = listed.iter().map(|t| t["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["update", "update", "update", "create"]);
    for t in listed {
        assert_eq!(t["status"], "completed", "{t}");
        assert_eq!(t["database_id"], db.as_str(), "{t}");
    }
    for pair in listed.windows(2) {
        let (newer, older) = (&pair[0]["created_at"], &pair[1]["created_at"]);
        let parse = |v: &Value| v.as_str().expect("timestamp").to_string();
        // RFC 3339 in UTC with the same precision sorts as text.
        assert!(parse(newer) >= parse(older), "{newer} before {older}");
    }

    // Newest first, two at a time.
    let page1 = fleet.get(&format!("{base}?limit=2")).await;
    assert_eq!(ids(&page1), newest_first[..2]);
    let page2 = fleet
        .get(&format!("{base}?limit=2&after_task_id={}", newest_first[1]))
        .await;
    assert_eq!(ids(&page2), newest_first[2..]);
    let page3 = fleet
        .get(&format!("{base}?limit=2&after_task_id={}", newest_first[3]))
        .await;
    assert!(ids(&page3).is_empty(), "{page3}");

    // Oldest first, with and without a cursor.
    let asc = fleet.get(&format!("{base}?sort_order=asc")).await;
    assert_eq!(ids(&asc), oldest_first);
    let asc_page = fleet
        .get(&format!(
            "{base}?sort_order=asc&limit=2&after_task_id={}",
            oldest_first[0]
        ))
        .await;
    assert_eq!(ids(&asc_page), oldest_first[1..3]);
    let desc = fleet.get(&format!("{base}?sort_order=desc&limit=1")).await;
    assert_eq!(ids(&desc), newest_first[..1]);

    for bad in [
        "limit=0",
        "limit=1001",
        "limit=x",
        "sort_order=up",
        "after_task_id=nope",
    ] {
        let (status, body) = fleet.call("GET", &format!("{base}?{bad}"), None).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert_eq!(body["name"], "invalid_input", "{bad}: {body}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn following_a_log_with_the_cursor_sees_every_line_once_in_order() {
    let fleet = Fleet::start(2).await;
    let (h1, h2) = (fleet.host(1), fleet.host(2));
    let db = fleet.db_id("follow");
    let resp = fleet
        .post_ok(
            "/v1/databases",
            &json!({"id": db, "spec": {
                "database_name": "app",
                "nodes": [{"name": "n1", "host_ids": [h1]}],
                "services": [{"service_id": "mcp", "service_type": "mcp", "version": "latest",
                              "host_ids": [h1, h2], "config": {}}]
            }}),
        )
        .await;
    let task_id = resp["task"]["task_id"]
        .as_str()
        .expect("task id")
        .to_string();
    let path = format!("/v1/databases/{db}/tasks/{task_id}/log");

    // Small pages, so the cursor is used many times while the task is still writing.
    let bound = fleet.bound(&format!("task {task_id} to end"));
    let mut cursor: Option<String> = None;
    let mut followed: Vec<(String, String)> = Vec::new();
    let mut requests = 0;
    let status = loop {
        let url = match &cursor {
            Some(c) => format!("{path}?limit=3&after_entry_id={c}"),
            None => format!("{path}?limit=3"),
        };
        let page = fleet.get(&url).await;
        requests += 1;
        let entries = page["entries"].as_array().expect("entries");
        for e in entries {
            followed.push((
                e["id"].as_str().expect("entry id").to_string(),
                e["message"].as_str().expect("message").to_string(),
            ));
        }
        if let Some(last) = page["last_entry_id"].as_str() {
            cursor = Some(last.to_string());
        }
        let status = page["task_status"].as_str().expect("status").to_string();
        // The status is read before the entries: a terminal status with an empty page
        // means nothing more will come.
        if entries.is_empty() && matches!(status.as_str(), "completed" | "failed" | "canceled") {
            break status;
        }
        bound.check();
        if entries.is_empty() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    println!(
        "followed {} lines in {requests} requests; task {status} after {:?}",
        followed.len(),
        bound.elapsed()
    );
    assert_eq!(status, "completed");

    let full = fleet.get(&format!("{path}?limit=1000")).await;
    let all: Vec<(String, String)> = full["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| {
            (
                e["id"].as_str().unwrap().to_string(),
                e["message"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(followed, all, "the followed log differs from one full read");
    let unique: std::collections::BTreeSet<&String> = all.iter().map(|(id, _)| id).collect();
    assert_eq!(unique.len(), all.len(), "entry ids repeat");
    assert!(
        all.len() > 6,
        "a create with two service instances logs more: {all:?}"
    );
    assert!(all[0].1.starts_with("task started"), "{all:?}");
    assert!(
        all.iter()
            .any(|(_, m)| m == &format!("database {db} is available")),
        "{all:?}"
    );
    // A cursor at the end gives an empty page that echoes the cursor.
    let last = &all.last().unwrap().0;
    let end = fleet.get(&format!("{path}?after_entry_id={last}")).await;
    assert_eq!(end["entries"], json!([]), "{end}");
    assert_eq!(end["last_entry_id"], last.as_str(), "{end}");
    assert_eq!(end["task_status"], "completed", "{end}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_running_task_can_be_canceled() {
    let fleet = Fleet::start(2).await;
    let (h1, h2) = (fleet.host(1), fleet.host(2));
    let db = fleet.db_id("cancel");
    let spec = json!({
        "database_name": "app",
        "nodes": [{"name": "n1", "host_ids": [h1]}],
        "services": [{"service_id": "mcp", "service_type": "mcp", "version": "latest",
                      "host_ids": [h2], "config": {}}]
    });
    let resp = fleet
        .post_ok("/v1/databases", &json!({"id": db, "spec": spec}))
        .await;
    let task_id = resp["task"]["task_id"]
        .as_str()
        .expect("task id")
        .to_string();
    let task_path = format!("/v1/databases/{db}/tasks/{task_id}");

    // Once the task runs, its first step (the Postgres primary on h1) is in flight. Freezing
    // h1's agent keeps that step from finishing, so the cancel surely lands mid-task.
    let bound = fleet.bound("the task to run");
    loop {
        let task = fleet.get(&task_path).await;
        match task["status"].as_str() {
            Some("running") => break,
            Some("pending") => {}
            other => panic!("task went {other:?} before it could be canceled: {task}"),
        }
        bound.check();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    fleet.pause_agent(&h1);
    let (status, canceling) = fleet
        .call("POST", &format!("{task_path}/cancel"), None)
        .await;
    // Resume before judging anything, so a failed assertion cannot leave h1 frozen for long.
    fleet.resume_agent(&h1);
    assert_eq!(status, 200, "{canceling}");
    assert_eq!(canceling["status"], "canceling", "{canceling}");

    let task = fleet.wait_task(&db, &task_id).await;
    println!("canceled {:?} after the task started", bound.elapsed());
    let log = fleet.task_log(&db, &task_id).await;
    assert_eq!(task["status"], "canceled", "{task}\n{}", log.join("\n"));
    assert_eq!(task["error"], "canceled by request", "{task}");
    assert!(task["completed_at"].is_string(), "{task}");
    assert!(
        log.iter().any(|l| l.starts_with("cancel requested")),
        "{}",
        log.join("\n")
    );
    assert!(
        !log.iter().any(|l| l.contains("creating service instance")),
        "the service was started after the cancel:\n{}",
        log.join("\n")
    );
    assert_eq!(fleet.database(&db).await["state"], "failed");

    // A canceled task stays canceled.
    let (status, again) = fleet
        .call("POST", &format!("{task_path}/cancel"), None)
        .await;
    assert_eq!(status, 409, "{again}");
    assert_eq!(again["name"], "task_not_cancelable", "{again}");

    // Resubmitting the spec finishes the job.
    fleet
        .apply(&format!("/v1/databases/{db}"), &json!({"spec": spec}))
        .await;
    let instances = fleet.service_instances(&db).await;
    assert_eq!(instances[&format!("{db}-mcp-{h2}")]["state"], "running");
    assert_eq!(fleet.database(&db).await["state"], "available");
}

#[tokio::test(flavor = "multi_thread")]
async fn deleting_a_database_with_services_removes_every_container() {
    let fleet = Fleet::start(2).await;
    let (h1, h2) = (fleet.host(1), fleet.host(2));
    let db = fleet.db_id("delete");
    fleet
        .apply(
            "/v1/databases",
            &json!({"id": db, "spec": {
                "database_name": "app",
                "nodes": [{"name": "n1", "host_ids": [h1]}],
                "services": [
                    {"service_id": "mcp", "service_type": "mcp", "version": "latest",
                     "host_ids": [h1, h2], "config": {}},
                    {"service_id": "rest", "service_type": "postgrest", "version": "latest",
                     "host_ids": [h2], "port": 0, "config": {}}
                ]
            }}),
        )
        .await;
    let service_ids = [
        (h1.clone(), format!("{db}-mcp-{h1}")),
        (h2.clone(), format!("{db}-mcp-{h2}")),
        (h2.clone(), format!("{db}-rest-{h2}")),
    ];
    let containers = fleet.containers();
    assert_eq!(containers.len(), 4, "{containers:?}");
    for (host, id) in &service_ids {
        assert!(
            containers.contains_key(&Fleet::container_name(host, id)),
            "{containers:?}"
        );
        assert!(
            fleet.instance_dir(host, id).exists(),
            "{id} has no directory"
        );
    }

    let (status, deleted) = fleet
        .call("DELETE", &format!("/v1/databases/{db}"), None)
        .await;
    assert_eq!(status, 200, "{deleted}");
    assert_eq!(deleted["task"]["type"], "delete", "{deleted}");
    let task = fleet
        .wait_task(&db, deleted["task"]["task_id"].as_str().expect("task id"))
        .await;
    assert_eq!(task["status"], "completed", "{task}");

    let containers = fleet.containers();
    assert!(containers.is_empty(), "left behind: {containers:?}");
    for (host, id) in &service_ids {
        assert!(
            !fleet.instance_dir(host, id).exists(),
            "{id}'s directory was left behind"
        );
    }
    let (status, body) = fleet
        .call("GET", &format!("/v1/databases/{db}"), None)
        .await;
    assert_eq!(status, 404, "{body}");
    let listed = fleet.get("/v1/databases").await;
    assert!(
        !listed["databases"]
            .as_array()
            .expect("databases")
            .iter()
            .any(|d| d["id"] == db.as_str()),
        "{listed}"
    );
}
