//! Bad input on a real control plane: every invalid service field is a 400 naming its path,
//! unknown ids are 404, a duplicate is 409, and none of it changes what is stored.

use e2e::Fleet;
use e2e::reqwest::StatusCode;
use e2e::serde_json::{Value, json};

fn base_spec(host: &str) -> Value {
    json!({
        "database_name": "app",
        "nodes": [{"name": "n1", "host_ids": [host]}],
        "services": [{"service_id": "mcp", "service_type": "mcp", "version": "latest",
                      "host_ids": [host], "config": {}}]
    })
}

fn paths(body: &Value) -> Vec<String> {
    body["errors"]
        .as_array()
        .unwrap_or_else(|| panic!("no errors in {body}"))
        .iter()
        .map(|e| e["path"].as_str().expect("path").to_string())
        .collect()
}

/// What a rejected request could change about a stored database: its spec, its state and
/// when it was made. Not its instances' `last_health_at` or `updated_at`: those move on
/// their own, with the engine's health checks.
fn what_a_request_changes(d: &Value) -> Value {
    json!({"id": d["id"], "spec": d["spec"], "state": d["state"], "created_at": d["created_at"],
           "updated_at": d["updated_at"]})
}

/// Creates the database the bad requests are aimed at and waits until it is at rest.
async fn stored_database(fleet: &Fleet, db: &str) -> Value {
    let spec = base_spec(&fleet.host(1));
    fleet
        .apply("/v1/databases", &json!({"id": db, "spec": spec}))
        .await;
    let (before, took) = fleet
        .wait_for("the database available", || async {
            let d = fleet.database(db).await;
            (d["state"] == "available").then_some(d)
        })
        .await;
    println!("database available after {took:?}");
    what_a_request_changes(&before)
}

async fn current(fleet: &Fleet, db: &str) -> Value {
    what_a_request_changes(&fleet.database(db).await)
}

#[tokio::test(flavor = "multi_thread")]
async fn every_invalid_service_field_is_a_400_naming_it() {
    let fleet = Fleet::start(1).await;
    let db = fleet.db_id("input");
    let before = stored_database(&fleet, &db).await;
    let tasks_before = fleet.get(&format!("/v1/databases/{db}/tasks")).await;

    let at = |field: &str| format!("spec.services[0].{field}");
    // (what is wrong, the field and its bad value, the path the answer must name)
    let cases: Vec<(&str, &str, Value, String)> = vec![
        (
            "uppercase service_id",
            "service_id",
            json!("Bad_Id"),
            at("service_id"),
        ),
        (
            "service_id not a string",
            "service_id",
            json!(7),
            at("service_id"),
        ),
        (
            "unknown service_type",
            "service_type",
            json!("redis"),
            at("service_type"),
        ),
        (
            "version not semver",
            "version",
            json!("one.two"),
            at("version"),
        ),
        (
            "version not in the manifest",
            "version",
            json!("9.9.9"),
            at("version"),
        ),
        (
            "unregistered host",
            "host_ids",
            json!(["no-such-host"]),
            at("host_ids[0]"),
        ),
        ("no host", "host_ids", json!([]), at("host_ids")),
        (
            "unknown config key",
            "config",
            json!({"bogus": true}),
            at("config.bogus"),
        ),
        ("config not an object", "config", json!("x"), at("config")),
        ("port above 65535", "port", json!(65536), at("port")),
        ("negative port", "port", json!(-1), at("port")),
        ("port not a number", "port", json!("8080"), at("port")),
        ("cpus not a quantity", "cpus", json!("lots"), at("cpus")),
        (
            "cpus below the engine's minimum of 0.01",
            "cpus",
            json!("0.005"),
            at("cpus"),
        ),
        (
            "memory below the engine's minimum of 6 MiB",
            "memory",
            json!("5Mi"),
            at("memory"),
        ),
        ("cpus a number", "cpus", json!(1), at("cpus")),
        (
            "memory not a quantity",
            "memory",
            json!("12 parsecs"),
            at("memory"),
        ),
        (
            "unknown target node",
            "database_connection",
            json!({"target_nodes": ["n9"]}),
            at("database_connection.target_nodes[0]"),
        ),
        (
            "bad target_session_attrs",
            "database_connection",
            json!({"target_session_attrs": "master"}),
            at("database_connection.target_session_attrs"),
        ),
        (
            "unknown service field",
            "replicas",
            json!(2),
            at("replicas"),
        ),
    ];
    for (what, field, value, path) in &cases {
        let mut spec = base_spec(&fleet.host(1));
        spec["services"][0][*field] = value.clone();

        let (status, body) = fleet
            .call(
                "POST",
                &format!("/v1/databases/{db}"),
                Some(&json!({"spec": spec})),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "update, {what}: {body}");
        assert_eq!(body["name"], "invalid_input", "update, {what}: {body}");
        assert_eq!(paths(&body), [path.as_str()], "update, {what}: {body}");
        let message = body["message"].as_str().expect("message");
        assert!(message.contains(path.as_str()), "update, {what}: {body}");

        let fresh = fleet.db_id("never");
        let (status, body) = fleet
            .call(
                "POST",
                "/v1/databases",
                Some(&json!({"id": fresh, "spec": spec})),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "create, {what}: {body}");
        assert_eq!(body["name"], "invalid_input", "create, {what}: {body}");
        assert_eq!(paths(&body), [path.as_str()], "create, {what}: {body}");
        let (status, _) = fleet
            .call("GET", &format!("/v1/databases/{fresh}"), None)
            .await;
        assert_eq!(
            status,
            StatusCode::NOT_FOUND,
            "create, {what} stored a database"
        );

        assert_eq!(current(&fleet, &db).await, before, "after {what}");
    }

    // Several wrong fields at once: every one is named.
    let mut spec = base_spec(&fleet.host(1));
    spec["services"][0]["cpus"] = json!("-1");
    spec["services"][0]["memory"] = json!("lots");
    spec["services"][0]["port"] = json!(70000);
    let (status, body) = fleet
        .call(
            "POST",
            &format!("/v1/databases/{db}"),
            Some(&json!({"spec": spec})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let mut named = paths(&body);
    named.sort();
    assert_eq!(named, [at("cpus"), at("memory"), at("port")], "{body}");

    assert_eq!(current(&fleet, &db).await, before);
    assert_eq!(
        fleet.get(&format!("/v1/databases/{db}/tasks")).await,
        tasks_before,
        "a rejected request made a task"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_unknown_and_duplicate_requests() {
    let fleet = Fleet::start(1).await;
    let db = fleet.db_id("codes");
    let before = stored_database(&fleet, &db).await;
    let tasks = fleet.get(&format!("/v1/databases/{db}/tasks")).await;
    let task_id = tasks["tasks"][0]["task_id"]
        .as_str()
        .expect("task id")
        .to_string();
    let unchanged = |what: &str, now: Value| assert_eq!(now, before, "after {what}");

    // Malformed JSON never reaches validation, on create and on update alike.
    let http = e2e::reqwest::Client::new();
    for (path, body) in [
        ("/v1/databases".to_string(), "{\"spec\": "),
        (format!("/v1/databases/{db}"), "{\"spec\": {]}"),
        (format!("/v1/databases/{db}"), ""),
        (format!("/v1/databases/{db}"), "[1, 2]"),
    ] {
        let resp = http
            .post(format!("{}{path}", fleet.api()))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("POST");
        let status = resp.status();
        let answer: Value = resp.json().await.expect("a JSON error body");
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path} {body:?}: {answer}");
        assert_eq!(answer["name"], "invalid_input", "{path} {body:?}: {answer}");
        unchanged(&format!("POST {path} {body:?}"), current(&fleet, &db).await);
    }

    // Unknown ids: 404 with the one error shape.
    let unknown_task = "01900000-0000-7000-8000-000000000000";
    let no_db = fleet.db_id("missing");
    let not_found = [
        ("GET", format!("/v1/databases/{no_db}")),
        ("POST", format!("/v1/databases/{no_db}")),
        ("DELETE", format!("/v1/databases/{no_db}")),
        ("GET", format!("/v1/databases/{no_db}/tasks")),
        ("GET", format!("/v1/databases/{no_db}/tasks/{task_id}")),
        ("GET", format!("/v1/databases/{db}/tasks/{unknown_task}")),
        ("GET", format!("/v1/databases/{db}/tasks/not-a-task")),
        (
            "GET",
            format!("/v1/databases/{db}/tasks/{unknown_task}/log"),
        ),
        (
            "POST",
            format!("/v1/databases/{db}/tasks/{unknown_task}/cancel"),
        ),
    ];
    for (method, path) in &not_found {
        let body = (*method == "POST" && !path.ends_with("/cancel"))
            .then(|| json!({"spec": base_spec(&fleet.host(1))}));
        let (status, answer) = fleet.call(method, path, body.as_ref()).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{method} {path}: {answer}");
        assert_eq!(answer["name"], "not_found", "{method} {path}: {answer}");
        assert!(answer["message"].is_string(), "{method} {path}: {answer}");
    }
    unchanged("the 404s", current(&fleet, &db).await);

    // A second create of the same id is a conflict and leaves the first alone.
    let mut other = base_spec(&fleet.host(1));
    other["database_name"] = json!("other");
    other["services"] = json!([]);
    let (status, answer) = fleet
        .call(
            "POST",
            "/v1/databases",
            Some(&json!({"id": db, "spec": other})),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{answer}");
    assert_eq!(answer["name"], "database_already_exists", "{answer}");
    unchanged("the duplicate create", current(&fleet, &db).await);

    // The finished create task cannot be canceled any more.
    let (status, answer) = fleet
        .call(
            "POST",
            &format!("/v1/databases/{db}/tasks/{task_id}/cancel"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{answer}");
    assert_eq!(answer["name"], "task_not_cancelable", "{answer}");
    unchanged("the late cancel", current(&fleet, &db).await);
    assert_eq!(
        fleet.get(&format!("/v1/databases/{db}/tasks")).await,
        tasks,
        "a rejected request changed the task history"
    );
}

/// Failure 2: limits the chosen host cannot give passed validation and failed the task
/// with the engine's message. Bounds come from the host as `GET /v1/hosts` shows it.
#[tokio::test(flavor = "multi_thread")]
async fn limits_beyond_the_host_are_a_400_naming_the_field() {
    let fleet = Fleet::start(1).await;
    let h1 = fleet.host(1);
    let host = fleet.get(&format!("/v1/hosts/{h1}")).await;
    let cpus = host["cpus"].as_u64().expect("cpus");
    let memory = host["memory_bytes"].as_u64().expect("memory_bytes");
    let db = fleet.db_id("bounds");
    for (field, value) in [
        ("cpus", json!((cpus + 1).to_string())),
        ("memory", json!((memory + 1).to_string())),
    ] {
        let mut spec = base_spec(&h1);
        spec["services"][0][field] = value.clone();
        let (status, body) = fleet
            .call(
                "POST",
                "/v1/databases",
                Some(&json!({"id": db, "spec": spec})),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{field} {value}: {body}");
        let path = format!("spec.services[0].{field}");
        assert_eq!(paths(&body), [path.as_str()], "{body}");
        assert!(
            body["message"].as_str().unwrap().contains(&h1),
            "names the host: {body}"
        );
    }
    // At the bounds, accepted.
    let mut spec = base_spec(&h1);
    spec["services"][0]["cpus"] = json!(cpus.to_string());
    spec["services"][0]["memory"] = json!("256Mi");
    fleet
        .apply("/v1/databases", &json!({"id": db, "spec": spec}))
        .await;
}
