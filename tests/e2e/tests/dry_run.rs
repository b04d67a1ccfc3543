//! `?dry_run=true` against a running fleet: the plan is made from what the fleet really
//! runs (the leader's instance records), so the spec a database runs plans nothing, a
//! changed model replaces exactly its service instance, and nothing is stored either way.

use e2e::serde_json::{Value, json};
use e2e::{Fleet, seed_spec};

fn steps(plan: &Value) -> Vec<(String, String, String)> {
    plan["steps"]
        .as_array()
        .unwrap_or_else(|| panic!("no steps in {plan}"))
        .iter()
        .map(|s| {
            (
                s["action"].as_str().unwrap().to_string(),
                s["instance_id"].as_str().unwrap_or_default().to_string(),
                s["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// What a stored change would alter in a database's view (health times move on their own).
fn stable(database: &Value) -> Value {
    let containers = |key: &str| -> Vec<Value> {
        database[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| json!([i["created_at"], i["status"]["container_id"]]))
            .collect()
    };
    json!({
        "state": database["state"],
        "updated_at": database["updated_at"],
        "spec": database["spec"],
        "instances": containers("instances"),
        "service_instances": containers("service_instances"),
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dry_run_plans_from_what_the_fleet_runs_and_stores_nothing() {
    let fleet = Fleet::start(1).await;
    let h1 = fleet.host(1);
    let db = fleet.db_id("dry");
    let path = format!("/v1/databases/{db}");
    fleet
        .apply(
            "/v1/databases",
            &json!({"id": db, "spec": seed_spec("app", &h1, "claude-sonnet-4-5")}),
        )
        .await;
    let database = stable(&fleet.database(&db).await);
    let tasks = fleet.get(&format!("{path}/tasks")).await;

    let same = json!({"spec": seed_spec("app", &h1, "claude-sonnet-4-5")});
    let plan = fleet.post_ok(&format!("{path}?dry_run=true"), &same).await;
    assert_eq!(plan["dry_run"], true);
    assert_eq!(steps(&plan), vec![], "{plan}");

    let changed = json!({"spec": seed_spec("app", &h1, "claude-opus-4-1")});
    let plan = fleet
        .post_ok(&format!("{path}?dry_run=true"), &changed)
        .await;
    assert_eq!(
        steps(&plan),
        [(
            "replace".to_string(),
            format!("{db}-mcp-server-{h1}"),
            "config changed".to_string()
        )],
        "{plan}"
    );

    let plan = fleet
        .post_ok(&format!("{path}?dry_run=true&force_update=true"), &same)
        .await;
    let actions: Vec<(String, String)> = steps(&plan)
        .into_iter()
        .map(|(action, _, reason)| (action, reason))
        .collect();
    let forced = (
        "replace".to_string(),
        "forced update (force_update=true)".to_string(),
    );
    assert_eq!(actions, [forced.clone(), forced], "{plan}");

    // Nothing stored: the same database (same generation, same service instances) and tasks.
    assert_eq!(stable(&fleet.database(&db).await), database);
    assert_eq!(fleet.get(&format!("{path}/tasks")).await, tasks);
}
