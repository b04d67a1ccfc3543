//! A `postgrest` service whose connection string lists every node of a replicated database
//! (issue 16, ADR 019) serves the same rows whichever node answers. Three nodes on three
//! hosts with engines of their own; the service runs on host-1 and host-2, and each instance
//! connects to the node on its own host first (`plan::routing`). Rows written on different
//! nodes come back from both instances; once host-1's node is stopped, host-1's instance
//! reads the same rows from another node.
//!
//! The service is the test fixture standing in for PostgREST: `GET /{table}` reads the
//! table in a transaction that switches to the anonymous role (`SET LOCAL ROLE`), as
//! PostgREST does, so the roles and grants berth made on each node are what lets it read.
//! Timings are printed, never asserted.

use std::time::Instant;

use e2e::Fleet;
use e2e::serde_json::{Value, json};

const NODES: [&str; 3] = ["n1", "n2", "n3"];

/// The fleet-internal address of a host.
fn address(fleet: &Fleet, host: &str) -> String {
    fleet.net_host(host).expect("a net host").address.clone()
}

/// The host port the agent published for a service instance's `http` port.
fn http_port(instance: &Value) -> u64 {
    instance["status"]["ports"]
        .as_array()
        .and_then(|ports| ports.iter().find(|p| p["name"] == "http"))
        .and_then(|p| p["host_port"].as_u64())
        .unwrap_or_else(|| panic!("no published http port in {instance}"))
}

/// One answer of `GET /items`: the host the service's session is on (the fixture's
/// `x-berth-connected-host`) and the rows as `id:node`, sorted.
async fn items(url: &str) -> Option<(String, Vec<String>)> {
    let resp = e2e::reqwest::get(url).await.ok()?;
    if !resp.status().is_success() {
        println!(
            "GET {url}: {} {}",
            resp.status(),
            resp.text().await.unwrap_or_default()
        );
        return None;
    }
    let host = resp
        .headers()
        .get("x-berth-connected-host")?
        .to_str()
        .ok()?
        .to_string();
    let body: Value = resp.json().await.ok()?;
    let mut rows: Vec<String> = body
        .as_array()?
        .iter()
        .map(|r| {
            let text = |k: &str| r[k].as_str().unwrap_or("?").to_string();
            format!("{}:{}", text("id"), text("node"))
        })
        .collect();
    rows.sort();
    Some((host, rows))
}

#[tokio::test(flavor = "multi_thread")]
async fn postgrest_serves_the_same_rows_whichever_node_answers() {
    let fleet = Fleet::start_engine_per_host(3).await;
    let db = fleet.db_id("restnodes");
    let hosts: Vec<String> = (1..=3).map(|i| fleet.host(i)).collect();
    let nodes: Vec<Value> = NODES
        .iter()
        .zip(&hosts)
        .map(|(n, h)| json!({"name": n, "host_ids": [h]}))
        .collect();
    let service_hosts = [hosts[0].clone(), hosts[1].clone()];
    let spec = json!({
        "database_name": "app",
        "nodes": nodes,
        "services": [{
            "service_id": "rest", "service_type": "postgrest", "version": "latest",
            "host_ids": service_hosts, "port": 0, "config": {"db_schemas": "public"}
        }]
    });
    let started = Instant::now();
    fleet
        .apply("/v1/databases", &json!({"id": db, "spec": spec}))
        .await;
    println!(
        "three nodes and two postgrest instances converged in {:?}",
        started.elapsed()
    );
    let containers: Vec<String> = NODES
        .iter()
        .zip(&hosts)
        .map(|(n, h)| Fleet::container_name(h, &format!("{db}-{n}-{h}")))
        .collect();
    let psql = |i: usize, sql: &str| fleet.psql(&containers[i], "app", sql);
    // The host a session on node i names: its alias from its own engine, its host's
    // address from the others (plan::routing::reach).
    let node_of = |service_host: &str, connected: &str| -> String {
        NODES
            .iter()
            .zip(&hosts)
            .find(|(n, h)| {
                (*h == service_host && connected == format!("{n}-{h}"))
                    || (*h != service_host && connected == address(&fleet, h))
            })
            .map(|(n, _)| n.to_string())
            .unwrap_or_else(|| panic!("{connected} from {service_host} is no node"))
    };

    // Each instance lists every node, its own host's first.
    let services = fleet.service_instances(&db).await;
    let mut urls = Vec::new();
    for (i, host) in service_hosts.iter().enumerate() {
        let id = format!("{db}-rest-{host}");
        let conn = fleet.rendered_connection(host, &id, e2e::ServiceType::Postgrest);
        let listed: Vec<String> = conn.hosts.iter().map(|(h, _)| node_of(host, h)).collect();
        let mut expected = vec![NODES[i].to_string()];
        expected.extend(
            NODES
                .iter()
                .filter(|n| **n != NODES[i])
                .map(|n| n.to_string()),
        );
        assert_eq!(listed, expected, "the connection string of {id}");
        assert_eq!(conn.username, "svc_rest_rw", "{id}");
        let instance = services
            .get(&id)
            .unwrap_or_else(|| panic!("no service instance {id} in {services:?}"));
        assert_eq!(instance["state"], "running", "{instance}");
        urls.push(format!(
            "http://{}:{}/items",
            address(&fleet, host),
            http_port(instance)
        ));
    }

    // The service's roles exist on every node, the login role may switch to the anonymous
    // one, and the table created on n1 is readable by the anonymous role wherever it was
    // replayed (default privileges hold on every node).
    psql(
        0,
        "CREATE TABLE items (id text PRIMARY KEY, node text NOT NULL)",
    );
    for (i, node) in NODES.iter().enumerate() {
        fleet
            .wait_for(&format!("table items on {node}"), || async {
                (psql(i, "SELECT to_regclass('public.items') IS NOT NULL") == "t").then_some(())
            })
            .await;
        assert_eq!(
            psql(
                i,
                "SELECT string_agg(rolname, ',' ORDER BY rolname) FROM pg_roles \
                 WHERE rolname LIKE 'svc_rest_%'"
            ),
            "svc_rest_ro,svc_rest_rw",
            "roles on {node}"
        );
        assert_eq!(
            psql(
                i,
                "SELECT pg_has_role('svc_rest_rw', 'svc_rest_ro', 'MEMBER') \
                 AND has_table_privilege('svc_rest_ro', 'public.items', 'SELECT')"
            ),
            "t",
            "svc_rest_rw may become svc_rest_ro, which may read items, on {node}"
        );
    }

    // A row written on each node; both instances serve all three, each from its own node.
    for (i, node) in NODES.iter().enumerate() {
        psql(
            i,
            &format!("INSERT INTO items VALUES ('{node}-row', '{node}')"),
        );
    }
    let mut want: Vec<String> = NODES.iter().map(|n| format!("{n}-row:{n}")).collect();
    for (i, url) in urls.iter().enumerate() {
        let ((connected, _), took) = fleet
            .wait_for(&format!("every row from {url}"), || async {
                items(url).await.filter(|(_, rows)| *rows == want)
            })
            .await;
        let node = node_of(&service_hosts[i], &connected);
        println!("{url} served the three rows from {node} after {took:?}");
        assert_eq!(node, NODES[i], "{url} reads its own host's node");
    }

    // Host-1's node goes: its one instance stopped (force: it is the node's last).
    let stopped_at = Instant::now();
    let n1 = format!("{db}-n1-{}", hosts[0]);
    let (status, resp) = fleet
        .call(
            "POST",
            &format!("/v1/databases/{db}/instances/{n1}/stop-instance?force=true"),
            None,
        )
        .await;
    assert_eq!(status.as_u16(), 200, "{resp}");
    let task = fleet
        .wait_task(&db, resp["task"]["task_id"].as_str().unwrap())
        .await;
    assert_eq!(task["status"], "completed", "{task}");
    let (running, _) = fleet.docker_on_status(&hosts[0], &["inspect", &containers[0]]);
    assert!(!running, "n1's container is still there");

    // A row written on n3 meanwhile reaches n2 (n1's absence stops nothing between them).
    psql(2, "INSERT INTO items VALUES ('n3-later', 'n3')");
    want.push("n3-later:n3".into());
    want.sort();
    for (i, url) in urls.iter().enumerate() {
        let ((connected, _), took) = fleet
            .wait_for(&format!("every row from {url} without n1"), || async {
                items(url).await.filter(|(_, rows)| *rows == want)
            })
            .await;
        let node = node_of(&service_hosts[i], &connected);
        println!(
            "{url} served the four rows from {node} after waiting {took:?}, {:?} after the stop was asked",
            stopped_at.elapsed()
        );
        assert_ne!(node, "n1", "{url} still reads the stopped node");
    }
}
