//! The fleet on an etcd with authentication on (ADR 017): the control plane logs in with its
//! own credentials, and each Postgres node's Patroni logs in as the node's own etcd user,
//! whose role reaches only the node's keys. Made with the node, gone with the database.

use e2e::Fleet;
use e2e::serde_json::{Value, json};

/// A request to etcd's JSON gateway as `root`.
fn etcd_as_root(fleet: &Fleet, path: &str, body: &Value) -> Value {
    let token = fleet.etcd.root_token().expect("auth is on");
    let (status, answer) = fleet.etcd.gateway(path, &body.to_string(), Some(&token));
    assert_eq!(status, 200, "{path}: {answer}");
    e2e::serde_json::from_str(&answer).expect("etcd answers JSON")
}

/// The users (or roles) etcd knows, `root` included.
fn etcd_names(fleet: &Fleet, what: &str) -> Vec<String> {
    let answer = etcd_as_root(fleet, &format!("/v3/auth/{what}/list"), &json!({}));
    answer[format!("{what}s")]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|n| n.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

fn b64(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

#[tokio::test(flavor = "multi_thread")]
async fn patroni_logs_in_as_its_nodes_own_user_and_the_user_goes_with_the_database() {
    let fleet = Fleet::start_with_etcd_auth(2).await;
    let (h1, h2) = (fleet.host(1), fleet.host(2));
    let db = fleet.db_id("auth");
    fleet
        .apply(
            "/v1/databases",
            &json!({"id": db, "spec": {"database_name": "app",
                "nodes": [{"name": "n1", "host_ids": [h1, h2]}]}}),
        )
        .await;

    // A leader and a replica, as Patroni's keys say (read by the control plane as root).
    let (first, second) = (format!("{db}-n1-{h1}"), format!("{db}-n1-{h2}"));
    let d = fleet.database(&db).await;
    let role = |id: &str| {
        d["instances"]
            .as_array()
            .and_then(|a| a.iter().find(|i| i["id"] == id))
            .map(|i| i["role"].clone())
    };
    assert_eq!(role(&first), Some(json!("primary")), "{d}");
    assert_eq!(role(&second), Some(json!("replica")), "{d}");
    let primary = Fleet::container_name(&h1, &first);
    // Patroni 3 calls a replica `running` once its Postgres runs, before it streams.
    let (senders, _) = fleet
        .wait_psql(
            "the replica streaming",
            &primary,
            "app",
            "SELECT application_name || ':' || state FROM pg_stat_replication",
            |senders| senders.ends_with(":streaming"),
        )
        .await;
    assert_eq!(senders, format!("{second}:streaming"));
    fleet.psql(
        &primary,
        "app",
        "CREATE TABLE t (id int); INSERT INTO t VALUES (1)",
    );
    let replica = Fleet::container_name(&h2, &second);
    fleet
        .wait_for("the row on the replica", || async {
            let (ok, out) = fleet.psql_status(&replica, "app", "SELECT count(*) FROM t");
            (ok && out == "1").then_some(())
        })
        .await;

    // The node's user and role: made by the control plane, the role granting readwrite on
    // the node's keys alone.
    let user = format!("berth-patroni-{db}-n1");
    assert!(etcd_names(&fleet, "user").contains(&user));
    let role = etcd_as_root(&fleet, "/v3/auth/role/get", &json!({"role": user}));
    let perms = role["perm"].as_array().cloned().unwrap_or_default();
    assert_eq!(perms.len(), 1, "{role}");
    assert_eq!(
        perms[0]["key"],
        b64(&format!("/berth/patroni/{db}/n1/")),
        "{role}"
    );
    assert_eq!(
        perms[0]["range_end"],
        b64(&format!("/berth/patroni/{db}/n10"))
    );
    let granted = etcd_as_root(&fleet, "/v3/auth/user/get", &json!({"name": user}));
    assert_eq!(granted["roles"], json!([user]), "{granted}");
    // Handed to the container in berth.conf (0600 in its config dir), not its environment.
    let conf = std::fs::read_to_string(fleet.instance_dir(&h1, &first).join("config/berth.conf"))
        .expect("berth.conf");
    assert!(
        conf.contains(&format!("etcd_username={user}\n")),
        "no etcd user in berth.conf"
    );
    let env = fleet.inspect(&primary)["Config"]["Env"].to_string();
    assert!(
        !env.contains("etcd_password") && !env.contains("ETCD3_PASSWORD"),
        "{env}"
    );

    let (status, body) = fleet
        .call("DELETE", &format!("/v1/databases/{db}"), None)
        .await;
    assert!(status.is_success(), "{status} {body}");
    let task = body["task"]["task_id"]
        .as_str()
        .expect("task id")
        .to_string();
    let t = fleet.wait_task(&db, &task).await;
    assert_eq!(t["status"], "completed", "{t}");
    assert_eq!(etcd_names(&fleet, "user"), ["root"]);
    assert_eq!(etcd_names(&fleet, "role"), ["root"]);
}
