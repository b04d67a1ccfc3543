//! The HTTP API against a real etcd, with hosts registered through the real gRPC registry.

use std::time::Duration;

mod common;

use common::ControlPlane;
use reqwest::StatusCode;
use serde_json::{Value, json};
use test_support::EtcdServer;

const SEED: &str = r#"{
  "id": "example",
  "spec": {
    "database_name": "example",
    "nodes": [{"name": "n1", "host_ids": ["host-1"]}],
    "services": [{
      "service_id": "mcp-server",
      "service_type": "mcp",
      "version": "latest",
      "host_ids": ["host-1"],
      "config": {
        "llm_enabled": true,
        "llm_provider": "anthropic",
        "llm_model": "claude-sonnet-4-5",
        "anthropic_api_key": "sk-ant-SEED-PLAINTEXT"
      }
    }]
  }
}"#;

fn seed_with_model(model: &str, with_key: bool) -> String {
    let mut v: Value = serde_json::from_str(SEED).unwrap();
    let config = &mut v["spec"]["services"][0]["config"];
    config["llm_model"] = json!(model);
    if !with_key {
        config.as_object_mut().unwrap().remove("anthropic_api_key");
    }
    json!({"spec": v["spec"]}).to_string()
}

fn error_paths(body: &Value) -> Vec<String> {
    body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn seed_example_lifecycle_through_the_api() {
    let etcd = EtcdServer::start();
    let cp = ControlPlane::start(&etcd).await;
    cp.register("host-1").await;

    let (status, created) = cp.call("POST", "/v1/databases", Some(SEED)).await;
    assert_eq!(status, StatusCode::OK, "{created}");
    assert_eq!(created["database"]["id"], "example");
    assert_eq!(created["database"]["state"], "creating");
    assert_eq!(created["task"]["type"], "create");
    assert_eq!(created["task"]["status"], "pending");
    let create_task = created["task"]["task_id"].as_str().unwrap().to_string();

    let (status, got) = cp.call("GET", "/v1/databases/example", None).await;
    assert_eq!(status, StatusCode::OK);
    let config = &got["spec"]["services"][0]["config"];
    assert_eq!(config["llm_model"], "claude-sonnet-4-5");
    assert!(
        config.get("anthropic_api_key").is_none(),
        "secret returned: {got}"
    );
    assert!(!got.to_string().contains("SEED-PLAINTEXT"));

    // Duplicate create: 409, and the stored database is unchanged.
    let (status, dup) = cp.call("POST", "/v1/databases", Some(SEED)).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(dup["name"], "database_already_exists");

    // Update the model, omitting the api key: it is kept, not dropped.
    let (status, updated) = cp
        .call(
            "POST",
            "/v1/databases/example",
            Some(&seed_with_model("claude-opus-4", false)),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{updated}");
    assert_eq!(updated["database"]["state"], "modifying");
    assert_eq!(updated["task"]["type"], "update");
    let stored = cp
        .store()
        .await
        .get_database("example")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        stored.spec.services[0].config["anthropic_api_key"],
        "sk-ant-SEED-PLAINTEXT"
    );
    assert_eq!(stored.spec.services[0].config["llm_model"], "claude-opus-4");
    assert_eq!(stored.record.generation, 2);

    // Tasks newest first, and paging with after_task_id.
    let (_, tasks) = cp.call("GET", "/v1/databases/example/tasks", None).await;
    let ids: Vec<&str> = tasks["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["task_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 2);
    assert_eq!(ids[1], create_task);
    assert_eq!(ids[0], updated["task"]["task_id"]);
    let (_, page) = cp
        .call(
            "GET",
            &format!(
                "/v1/databases/example/tasks?limit=1&after_task_id={}",
                ids[0]
            ),
            None,
        )
        .await;
    assert_eq!(page["tasks"][0]["task_id"], create_task);
    assert_eq!(page["tasks"].as_array().unwrap().len(), 1);
    let (_, asc) = cp
        .call("GET", "/v1/databases/example/tasks?sort_order=asc", None)
        .await;
    assert_eq!(asc["tasks"][0]["task_id"], create_task);

    // The task log pages with an exclusive cursor and echoes it past the end.
    let store = cp.store().await;
    for i in 0..5 {
        store
            .append_log(
                "example",
                &create_task,
                format!("step {i}"),
                Default::default(),
            )
            .await
            .unwrap();
    }
    let log_path = format!("/v1/databases/example/tasks/{create_task}/log");
    let (status, first) = cp.call("GET", &format!("{log_path}?limit=2"), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(first["task_status"], "pending");
    let msgs = |v: &Value| -> Vec<String> {
        v["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["message"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(msgs(&first), ["step 0", "step 1"]);
    let cursor = first["last_entry_id"].as_str().unwrap().to_string();
    let (_, rest) = cp
        .call("GET", &format!("{log_path}?after_entry_id={cursor}"), None)
        .await;
    assert_eq!(msgs(&rest), ["step 2", "step 3", "step 4"]);
    let end = rest["last_entry_id"].as_str().unwrap().to_string();
    let (_, past) = cp
        .call("GET", &format!("{log_path}?after_entry_id={end}"), None)
        .await;
    assert!(past["entries"].as_array().unwrap().is_empty());
    assert_eq!(past["last_entry_id"], end.as_str());

    // No etcd value holds the api key in plain text.
    for (key, value) in store.dump().await.unwrap() {
        assert!(
            !String::from_utf8_lossy(&value).contains("SEED-PLAINTEXT"),
            "{key} holds the key in plain text"
        );
    }

    // 404s in the one error shape.
    for path in [
        "/v1/databases/nope",
        "/v1/databases/nope/tasks",
        "/v1/hosts/nope",
        "/v1/nothing-here",
    ] {
        let (status, body) = cp.call("GET", path, None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(body["name"], "not_found", "{path}");
    }
    let (status, _) = cp
        .call(
            "GET",
            "/v1/databases/example/tasks/0190e2c4-0000-7000-8000-000000000000",
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = cp
        .call(
            "POST",
            "/v1/databases/nope",
            Some(&seed_with_model("m", true)),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn bad_input_is_a_400_naming_every_field_and_changes_nothing() {
    let etcd = EtcdServer::start();
    let cp = ControlPlane::start(&etcd).await;
    cp.register("host-1").await;
    let (status, _) = cp.call("POST", "/v1/databases", Some(SEED)).await;
    assert_eq!(status, StatusCode::OK);
    let before = cp
        .store()
        .await
        .get_database("example")
        .await
        .unwrap()
        .unwrap();

    let (status, body) = cp
        .call("POST", "/v1/databases/example", Some("{\"spec\": "))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["name"], "invalid_input");
    assert!(
        body["message"].as_str().unwrap().contains("malformed JSON"),
        "{body}"
    );

    let (status, body) = cp.call("POST", "/v1/databases", Some("[1,2]")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["name"], "invalid_input");

    let mut bad: Value = serde_json::from_str(SEED).unwrap();
    let service = &mut bad["spec"]["services"][0];
    service["cpus"] = json!("lots");
    service["memory"] = json!("-1");
    service["port"] = json!(70000);
    service["version"] = json!("9.9.9");
    service["host_ids"] = json!(["host-9"]);
    let body = json!({"spec": bad["spec"]}).to_string();
    let (status, resp) = cp.call("POST", "/v1/databases/example", Some(&body)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{resp}");
    let paths = error_paths(&resp);
    for want in [
        "spec.services[0].cpus",
        "spec.services[0].memory",
        "spec.services[0].port",
        "spec.services[0].version",
        "spec.services[0].host_ids[0]",
    ] {
        assert!(
            paths.iter().any(|p| p == want),
            "{want} missing from {paths:?}"
        );
    }

    let after = cp
        .store()
        .await
        .get_database("example")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        after, before,
        "a rejected request changed the stored database"
    );
    let (_, tasks) = cp.call("GET", "/v1/databases/example/tasks", None).await;
    assert_eq!(tasks["tasks"].as_array().unwrap().len(), 1);

    let (status, body) = cp
        .call("GET", "/v1/databases/example/tasks?limit=zero", None)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error_paths(&body), ["limit"]);
}

/// The API keeps the registered hosts' ids in memory; a host that registers after they were
/// read must still be accepted, and one that never registered still refused.
/// Backup repository keys through the API, as secret service config values: never in an
/// answer (create, get, list), sealed in etcd, kept by an update that leaves them out,
/// removed by one that sends them as null.
#[tokio::test]
async fn backup_repository_keys_are_sealed_never_returned_kept_and_removed_by_null() {
    let etcd = EtcdServer::start();
    let cp = ControlPlane::start(&etcd).await;
    cp.register("host-1").await;
    let spec = |keys: Option<Value>, retention: u32| {
        let mut repository = json!({"id": "s3", "type": "s3", "s3_bucket": "app-backups",
            "s3_region": "us-east-1", "retention_full": retention});
        if let Some(Value::Object(keys)) = keys {
            repository.as_object_mut().unwrap().extend(keys);
        }
        json!({"database_name": "app", "nodes": [{"name": "n1", "host_ids": ["host-1"],
            "restore_config": {"source_database_id": "old", "source_node_name": "n1",
                               "source_database_name": "app", "repository": "s3"}}],
            "backup_config": {"repositories": [repository],
                "schedules": [{"id": "nightly", "type": "full", "cron_expression": "0 0 * * *"}]}})
    };
    let keys = json!({"s3_key": "AKIA-API-PLAINTEXT", "s3_key_secret": "SECRET-API-PLAINTEXT"});
    let stored_keys = || async {
        let db = cp.store().await.get_database("app").await.unwrap().unwrap();
        let r = &db.spec.backup_config.unwrap().repositories[0];
        (
            db.record.generation,
            r.s3_key.clone(),
            r.s3_key_secret.clone(),
        )
    };

    let body = json!({"id": "app", "spec": spec(Some(keys.clone()), 2)}).to_string();
    let (status, created) = cp.call("POST", "/v1/databases", Some(&body)).await;
    assert_eq!(status, StatusCode::OK, "{created}");
    let (_, got) = cp.call("GET", "/v1/databases/app", None).await;
    let (_, list) = cp.call("GET", "/v1/databases", None).await;
    for answer in [&created, &got, &list] {
        let text = answer.to_string();
        assert!(
            !text.contains("PLAINTEXT") && !text.contains("s3_key"),
            "{text}"
        );
    }
    assert_eq!(
        got["spec"]["backup_config"]["repositories"][0]["retention_full"],
        2
    );
    assert_eq!(
        got["spec"]["backup_config"]["schedules"][0]["cron_expression"],
        "0 0 * * *"
    );
    assert_eq!(
        got["spec"]["nodes"][0]["restore_config"]["repository"],
        "s3"
    );
    for (key, value) in cp.store().await.dump().await.unwrap() {
        let text = String::from_utf8_lossy(&value);
        assert!(
            !text.contains("PLAINTEXT"),
            "{key} holds a key in plain text: {text}"
        );
    }
    let plain = |k: &str| Some(keys[k].as_str().unwrap().to_string());
    assert_eq!(
        stored_keys().await,
        (1, plain("s3_key"), plain("s3_key_secret"))
    );

    // What GET answered, sent back with one change: the keys are kept.
    let mut resent = got["spec"].clone();
    resent["backup_config"]["repositories"][0]["retention_full"] = json!(3);
    let body = json!({"spec": resent}).to_string();
    let (status, updated) = cp.call("POST", "/v1/databases/app", Some(&body)).await;
    assert_eq!(status, StatusCode::OK, "{updated}");
    assert!(!updated.to_string().contains("PLAINTEXT"), "{updated}");
    assert_eq!(
        stored_keys().await,
        (2, plain("s3_key"), plain("s3_key_secret"))
    );

    // null removes them.
    let nulls = json!({"s3_key": null, "s3_key_secret": null});
    let body = json!({"spec": spec(Some(nulls), 3)}).to_string();
    let (status, updated) = cp.call("POST", "/v1/databases/app", Some(&body)).await;
    assert_eq!(status, StatusCode::OK, "{updated}");
    assert_eq!(stored_keys().await, (3, None, None));
}

#[tokio::test]
async fn a_host_registered_after_the_last_request_is_known_to_the_next() {
    let etcd = EtcdServer::start();
    let cp = ControlPlane::start(&etcd).await;
    cp.register("host-1").await;
    let (status, body) = cp.call("POST", "/v1/databases", Some(SEED)).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let mut spec: Value = serde_json::from_str(SEED).unwrap();
    spec["id"] = json!("second");
    spec["spec"]["services"][0]["host_ids"] = json!(["host-2"]);
    let second = spec.to_string();
    let (status, body) = cp.call("POST", "/v1/databases", Some(&second)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(error_paths(&body), ["spec.services[0].host_ids[0]"]);

    cp.register("host-2").await;
    let (status, body) = cp.call("POST", "/v1/databases", Some(&second)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["database"]["spec"]["services"][0]["host_ids"][0],
        "host-2"
    );
}

#[tokio::test]
async fn concurrent_updates_are_each_accepted_or_refused_with_409() {
    let etcd = EtcdServer::start();
    let cp = ControlPlane::start(&etcd).await;
    cp.register("host-1").await;
    assert_eq!(
        cp.call("POST", "/v1/databases", Some(SEED)).await.0,
        StatusCode::OK
    );

    let mut handles = Vec::new();
    for i in 0..20 {
        let (base, body) = (
            cp.base.clone(),
            seed_with_model(&format!("model-{i}"), false),
        );
        handles.push(tokio::spawn(async move {
            let resp = reqwest::Client::new()
                .post(format!("{base}/v1/databases/example"))
                .body(body)
                .send()
                .await
                .unwrap();
            (i, resp.status(), resp.json::<Value>().await.unwrap())
        }));
    }
    let mut accepted = 0;
    for h in handles {
        let (i, status, body) = h.await.unwrap();
        match status {
            StatusCode::OK => accepted += 1,
            StatusCode::CONFLICT => assert_eq!(body["name"], "conflict", "update {i}: {body}"),
            other => panic!("update {i} answered {other}: {body}"),
        }
    }
    let stored = cp
        .store()
        .await
        .get_database("example")
        .await
        .unwrap()
        .unwrap();
    assert!(accepted >= 1);
    assert_eq!(
        stored.record.generation,
        1 + accepted,
        "every accepted update, and only those, took effect"
    );
    let (_, tasks) = cp
        .call("GET", "/v1/databases/example/tasks?limit=1000", None)
        .await;
    assert_eq!(
        tasks["tasks"].as_array().unwrap().len() as u64,
        1 + accepted
    );
    // The stored spec is the one the newest task carried.
    let newest = &tasks["tasks"][0]["task_id"];
    assert_eq!(stored.record.current_task_id.as_deref(), newest.as_str());
}

#[tokio::test]
async fn cancel_and_delete_tasks() {
    let etcd = EtcdServer::start();
    let cp = ControlPlane::start(&etcd).await;
    cp.register("host-1").await;
    let (_, created) = cp.call("POST", "/v1/databases", Some(SEED)).await;
    let task_id = created["task"]["task_id"].as_str().unwrap();

    let (status, canceled) = cp
        .call(
            "POST",
            &format!("/v1/databases/example/tasks/{task_id}/cancel"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{canceled}");
    assert_eq!(canceled["status"], "canceled");
    assert!(canceled["completed_at"].is_string());
    let (status, again) = cp
        .call(
            "POST",
            &format!("/v1/databases/example/tasks/{task_id}/cancel"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(again["name"], "task_not_cancelable");
    let (_, log) = cp
        .call(
            "GET",
            &format!("/v1/databases/example/tasks/{task_id}/log"),
            None,
        )
        .await;
    assert_eq!(log["task_status"], "canceled");
    assert!(
        log["entries"][0]["message"]
            .as_str()
            .unwrap()
            .contains("cancel")
    );

    let (status, deleted) = cp.call("DELETE", "/v1/databases/example", None).await;
    assert_eq!(status, StatusCode::OK, "{deleted}");
    assert_eq!(deleted["task"]["type"], "delete");
    let (_, got) = cp.call("GET", "/v1/databases/example", None).await;
    assert_eq!(got["state"], "deleting");
    let (status, refused) = cp
        .call(
            "POST",
            "/v1/databases/example",
            Some(&seed_with_model("m", true)),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(refused["name"], "database_not_modifiable");
}

#[tokio::test]
async fn hosts_turn_unreachable_when_their_lease_expires() {
    let etcd = EtcdServer::start();
    let cp = ControlPlane::start(&etcd).await;
    cp.register("host-1").await;
    let (status, hosts) = cp.call("GET", "/v1/hosts", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(hosts["hosts"][0]["id"], "host-1");
    assert_eq!(hosts["hosts"][0]["status"]["state"], "healthy");
    // No heartbeats: the 2 s lease runs out and etcd removes the liveness key.
    let mut state = Value::Null;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        state = cp.call("GET", "/v1/hosts/host-1", None).await.1["status"]["state"].clone();
        if state == "unreachable" {
            break;
        }
    }
    assert_eq!(state, "unreachable");
}

#[tokio::test]
async fn openapi_document_is_served_and_kept_in_specs() {
    let etcd = EtcdServer::start();
    let cp = ControlPlane::start(&etcd).await;
    let (status, doc) = cp.call("GET", "/v1/openapi.json", None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(doc["paths"]["/v1/databases"]["post"].is_object());
    let generated = control_plane::api::openapi_json();
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../specs/openapi.json");
    if std::env::var_os("UPDATE_OPENAPI").is_some() {
        std::fs::write(path, &generated).unwrap();
    }
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        committed == generated,
        "specs/openapi.json is out of date: run `UPDATE_OPENAPI=1 cargo test -p control-plane --test api openapi`"
    );
}
