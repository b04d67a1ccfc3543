//! `?dry_run=true`, `tenant_id` and `force_update` on create and update, against a real etcd
//! and the real control plane: a dry-run validates as usual, answers the plan and stores
//! nothing at all (no database, no task, no credentials: etcd holds the same keys and values
//! before and after); `tenant_id` is kept and returned; `force_update` opens a task and makes
//! every instance's desired hash new.

mod common;

use common::ControlPlane;
use reqwest::StatusCode;
use serde_json::{Value, json};
use test_support::EtcdServer;

fn body(model: &str) -> Value {
    json!({
        "id": "shop",
        "spec": {
            "database_name": "shop",
            "nodes": [{"name": "n1", "host_ids": ["host-1"]}],
            "services": [{
                "service_id": "mcp-server",
                "service_type": "mcp",
                "version": "latest",
                "host_ids": ["host-1"],
                "config": {"llm_enabled": true, "llm_provider": "anthropic", "llm_model": model,
                           "anthropic_api_key": "sk-ant-DRY-RUN-SECRET"}
            }]
        }
    })
}

fn update(model: &str) -> Value {
    json!({"spec": body(model)["spec"]})
}

/// Every key and value under the deployment's prefix that a request could write: databases,
/// tasks, logs, instances, credentials (host liveness comes and goes with its lease).
async fn stored(cp: &ControlPlane) -> Vec<(String, Vec<u8>)> {
    let store = cp.store().await;
    let root = store.keys().root();
    store
        .dump()
        .await
        .unwrap()
        .into_iter()
        .filter(|(k, _)| {
            [
                "databases/",
                "tasks/",
                "task-logs/",
                "instances/",
                "credentials/",
            ]
            .iter()
            .any(|p| k.starts_with(&format!("{root}{p}")))
        })
        .collect()
}

async fn post(cp: &ControlPlane, path: &str, body: &Value) -> (StatusCode, Value) {
    cp.call("POST", path, Some(&body.to_string())).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dry_run_answers_the_plan_and_stores_nothing() {
    let etcd = EtcdServer::start();
    // Hosts stay alive for the whole test without an agent heartbeating.
    let cp = ControlPlane::start_with(&etcd, |s| s.host_lease_ttl = 600).await;
    cp.register("host-1").await;

    // Create: the plan of a new database, and not one key written.
    let before = stored(&cp).await;
    let (status, plan) = post(&cp, "/v1/databases?dry_run=true", &body("m1")).await;
    assert_eq!(status, StatusCode::OK, "{plan}");
    assert_eq!(plan["database_id"], "shop");
    assert_eq!(plan["dry_run"], true);
    let steps: Vec<(String, String)> = plan["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let target = s.get("instance_id").or(s.get("service_id")).unwrap();
            (
                s["action"].as_str().unwrap().to_string(),
                target.as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        steps,
        [
            ("create".to_string(), "shop-n1-host-1".to_string()),
            ("create_roles".into(), "mcp-server".into()),
            ("create".into(), "shop-mcp-server-host-1".into()),
        ]
    );
    assert!(!plan.to_string().contains("DRY-RUN-SECRET"), "{plan}");
    assert_eq!(stored(&cp).await, before, "a dry-run create wrote to etcd");
    let (status, _) = cp.call("GET", "/v1/databases/shop", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = cp.call("GET", "/v1/databases/shop/tasks", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // The same 400 as without the flag, naming the field, and nothing written either.
    let mut bad = body("m1");
    bad["spec"]["services"][0]["cpus"] = json!("lots");
    let (status, err) = post(&cp, "/v1/databases?dry_run=true", &bad).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{err}");
    assert_eq!(err["errors"][0]["path"], "spec.services[0].cpus", "{err}");
    let (status, err) = post(&cp, "/v1/databases?dry_run=maybe", &body("m1")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{err}");
    assert_eq!(err["errors"][0]["path"], "dry_run", "{err}");
    assert_eq!(stored(&cp).await, before);

    // A database that exists: the dry-run of its create is the usual 409.
    let (status, created) = post(&cp, "/v1/databases", &body("m1")).await;
    assert_eq!(status, StatusCode::OK, "{created}");
    let (status, err) = post(&cp, "/v1/databases?dry_run=true", &body("m1")).await;
    assert_eq!(status, StatusCode::CONFLICT, "{err}");
    assert_eq!(err["name"], "database_already_exists");

    // Update: a plan, and the database, its tasks, its credentials all as they were.
    let before = stored(&cp).await;
    let (_, database) = cp.call("GET", "/v1/databases/shop", None).await;
    let (_, tasks) = cp.call("GET", "/v1/databases/shop/tasks", None).await;
    for path in [
        "/v1/databases/shop?dry_run=true",
        "/v1/databases/shop?dry_run=true&force_update=true",
    ] {
        let (status, plan) = post(&cp, path, &update("m2")).await;
        assert_eq!(status, StatusCode::OK, "{path}: {plan}");
        assert_eq!(plan["dry_run"], true);
        assert!(!plan["steps"].as_array().unwrap().is_empty(), "{plan}");
    }
    assert_eq!(stored(&cp).await, before, "a dry-run update wrote to etcd");
    assert_eq!(cp.call("GET", "/v1/databases/shop", None).await.1, database);
    assert_eq!(
        cp.call("GET", "/v1/databases/shop/tasks", None).await.1,
        tasks
    );
    let (status, err) = post(&cp, "/v1/databases/nope?dry_run=true", &update("m2")).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn tenant_id_is_kept_and_force_update_forces_a_new_generation() {
    let etcd = EtcdServer::start();
    let cp = ControlPlane::start(&etcd).await;
    cp.register("host-1").await;

    let mut create = body("m1");
    create["tenant_id"] = json!("engineering");
    let (status, created) = post(&cp, "/v1/databases", &create).await;
    assert_eq!(status, StatusCode::OK, "{created}");
    assert_eq!(created["database"]["tenant_id"], "engineering");
    let (_, got) = cp.call("GET", "/v1/databases/shop", None).await;
    assert_eq!(got["tenant_id"], "engineering");
    let (_, all) = cp.call("GET", "/v1/databases", None).await;
    assert_eq!(all["databases"][0]["tenant_id"], "engineering");

    // Left out on update: kept. Given: replaced. Malformed: a 400 naming it.
    let (status, updated) = post(&cp, "/v1/databases/shop", &update("m1")).await;
    assert_eq!(status, StatusCode::OK, "{updated}");
    assert_eq!(updated["database"]["tenant_id"], "engineering");
    let mut moved = update("m1");
    moved["tenant_id"] = json!("finance");
    let (_, updated) = post(&cp, "/v1/databases/shop", &moved).await;
    assert_eq!(updated["database"]["tenant_id"], "finance");
    moved["tenant_id"] = json!("Finance!");
    let (status, err) = post(&cp, "/v1/databases/shop", &moved).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{err}");
    assert_eq!(err["errors"][0]["path"], "tenant_id", "{err}");

    // force_update of an unchanged spec: a new task, and the generation it was forced at.
    let store = cp.store().await;
    let before = store.get_database("shop").await.unwrap().unwrap();
    assert_eq!(before.record.forced_generation, 0);
    let (status, forced) = post(&cp, "/v1/databases/shop?force_update=true", &update("m1")).await;
    assert_eq!(status, StatusCode::OK, "{forced}");
    assert_eq!(forced["task"]["type"], "update");
    let after = store.get_database("shop").await.unwrap().unwrap();
    assert_eq!(after.record.generation, before.record.generation + 1);
    assert_eq!(after.record.forced_generation, after.record.generation);
    assert_eq!(after.record.tenant_id.as_deref(), Some("finance"));
    // A later update without the flag keeps it, so nothing is replaced again.
    post(&cp, "/v1/databases/shop", &update("m1")).await;
    let later = store.get_database("shop").await.unwrap().unwrap();
    assert_eq!(later.record.forced_generation, after.record.generation);
    let (status, err) = post(&cp, "/v1/databases/shop?force_update=sure", &update("m1")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{err}");
    assert_eq!(err["errors"][0]["path"], "force_update", "{err}");
}
