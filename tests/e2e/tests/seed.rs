//! The seed document's flow on a real fleet: create the database with its mcp service,
//! change the model, add and remove services, delete the database.

use e2e::serde_json::{Value, json};
use e2e::{Fleet, seed_spec};

fn roles(fleet: &Fleet, pg: &str, db: &str) -> Vec<String> {
    let out = fleet.psql(
        pg,
        db,
        "SELECT rolname FROM pg_roles WHERE rolname LIKE 'svc\\_%' ORDER BY 1",
    );
    out.lines().map(String::from).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn seed_example_create_update_add_remove_delete() {
    let fleet = Fleet::start(2).await;
    let (h1, h2) = (fleet.host(1), fleet.host(2));
    let db = fleet.db_id("example");

    // Create: the database and its service converge; the task log tells the story.
    let created = fleet
        .post_ok(
            "/v1/databases",
            &json!({"id": db, "spec": seed_spec("example", &h1, "claude-sonnet-4-5")}),
        )
        .await;
    assert_eq!(created["database"]["state"], "creating");
    let task_id = created["task"]["task_id"].as_str().unwrap().to_string();
    let task = fleet.wait_task(&db, &task_id).await;
    let log = fleet.task_log(&db, &task_id).await;
    assert_eq!(task["status"], "completed", "{task}\n{}", log.join("\n"));
    let position = |needle: &str| {
        log.iter()
            .position(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no {needle:?} in\n{}", log.join("\n")))
    };
    assert!(
        position("creating postgres primary of node n1")
            < position("creating roles of service mcp-server")
    );
    assert!(
        position("creating roles of service mcp-server")
            < position("creating service instance mcp-server")
    );
    assert!(log.iter().any(|l| l.contains("done in")));

    let d = fleet.database(&db).await;
    assert_eq!(d["state"], "available", "{d}");
    assert_eq!(d["instances"][0]["role"], "primary");
    assert_eq!(d["instances"][0]["state"], "available");
    let mcp_id = format!("{db}-mcp-server-{h1}");
    let instance = &d["service_instances"][0];
    assert_eq!(instance["service_instance_id"], mcp_id.as_str());
    assert_eq!(instance["state"], "running");
    assert_eq!(instance["status"]["ready"], true);
    assert!(
        d["spec"]["services"][0]["config"]
            .get("anthropic_api_key")
            .is_none()
    );

    // The listing shows the same instances as the database's own page.
    let listed = fleet.get("/v1/databases").await;
    let mine = listed["databases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["id"] == db.as_str())
        .unwrap()
        .clone();
    assert_eq!(mine["service_instances"], d["service_instances"]);
    assert_eq!(mine["instances"], d["instances"]);

    // Roles exist on the primary, and the key is in no container's environment.
    let pg = Fleet::container_name(&h1, &format!("{db}-n1-{h1}"));
    assert_eq!(
        roles(&fleet, &pg, "example"),
        ["svc_mcp_server_ro", "svc_mcp_server_rw"]
    );
    let mcp_container = Fleet::container_name(&h1, &mcp_id);
    let inspect = fleet.inspect(&mcp_container).to_string();
    assert!(
        !inspect.contains("sk-ant-e2e-SECRET"),
        "secret visible in docker inspect"
    );
    let first_container = instance["status"]["container_id"]
        .as_str()
        .unwrap()
        .to_string();
    let created_at = instance["created_at"].clone();

    // Update the model (omitting the key, which is kept): same instance, new container.
    let mut spec = seed_spec("example", &h1, "claude-opus-4");
    spec["services"][0]["config"]
        .as_object_mut()
        .unwrap()
        .remove("anthropic_api_key");
    fleet
        .apply(&format!("/v1/databases/{db}"), &json!({"spec": spec}))
        .await;
    let after = fleet.service_instances(&db).await;
    assert_eq!(after[&mcp_id]["created_at"], created_at);
    assert_eq!(after[&mcp_id]["state"], "running");
    assert_ne!(
        after[&mcp_id]["status"]["container_id"],
        first_container.as_str(),
        "the config change needs a new container"
    );
    let mcp_container_id = after[&mcp_id]["status"]["container_id"].clone();

    // Add a postgrest service on the other host, which carries no database node.
    let mut with_rest = spec.clone();
    with_rest["services"].as_array_mut().unwrap().push(json!({
        "service_id": "rest", "service_type": "postgrest", "version": "1.0", "host_ids": [h2],
        "config": {"db_anon_role": "svc_rest_ro", "jwt_secret": "0123456789abcdef0123456789abcdef"}
    }));
    fleet
        .apply(&format!("/v1/databases/{db}"), &json!({"spec": with_rest}))
        .await;
    let after_add = fleet.service_instances(&db).await;
    assert_eq!(
        after_add[&mcp_id]["status"]["container_id"], mcp_container_id,
        "an unrelated change touched mcp-server"
    );
    assert_eq!(after_add[&format!("{db}-rest-{h2}")]["state"], "running");
    assert_eq!(roles(&fleet, &pg, "example").len(), 4);

    // Remove every service: containers, data dirs and roles go; the database stays.
    let mut no_services = with_rest.clone();
    no_services["services"] = json!([]);
    fleet
        .apply(
            &format!("/v1/databases/{db}"),
            &json!({"spec": no_services}),
        )
        .await;
    assert!(fleet.service_instances(&db).await.is_empty());
    let containers = fleet.containers();
    assert_eq!(
        containers.len(),
        1,
        "only Postgres should remain: {containers:?}"
    );
    assert!(containers.contains_key(&pg));
    assert!(roles(&fleet, &pg, "example").is_empty());
    assert!(
        !fleet.instance_dir(&h1, &mcp_id).exists(),
        "the service's directory was not deleted"
    );

    // Delete: everything goes, and the database is gone from the API.
    let (status, deleted) = fleet
        .call("DELETE", &format!("/v1/databases/{db}"), None)
        .await;
    assert_eq!(status, 200, "{deleted}");
    let task = fleet
        .wait_task(&db, deleted["task"]["task_id"].as_str().unwrap())
        .await;
    assert_eq!(task["status"], "completed", "{task}");
    let (status, _) = fleet
        .call("GET", &format!("/v1/databases/{db}"), None)
        .await;
    assert_eq!(status, 404);
    assert!(fleet.containers().is_empty(), "{:?}", fleet.containers());
    let tasks: Value = fleet.get(&format!("/v1/databases/{db}/tasks")).await;
    assert_eq!(
        tasks["tasks"].as_array().unwrap().len(),
        5,
        "the task history outlives the database"
    );
}
