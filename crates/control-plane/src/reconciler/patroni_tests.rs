//! The reconciler with Patroni (ADR 016), on the in-memory store and fake agents that play
//! Patroni's part in its keys: an instance that starts registers, and leads when its node
//! has no leader; a switchover through the REST API moves the leader key.

use serde_json::json;
use spec::{DatabaseSpec, TaskStatus};
use store::StateStore;

use super::WorkerState;
use super::pass::{Loaded, Outcome};
use super::tests::{DB, HOST, HOST2, harness};

fn spec(nodes: serde_json::Value, services: serde_json::Value) -> DatabaseSpec {
    serde_json::from_value(json!({"database_name": "app", "nodes": nodes, "services": services}))
        .unwrap()
}

fn pg(node: &str, host: &str) -> String {
    plan::postgres_instance_id(DB, node, host)
}

async fn leader(h: &super::tests::Harness, node: &str) -> Option<String> {
    crate::patroni::read(&*h.store, DB)
        .await
        .unwrap()
        .remove(node)
        .and_then(|n| n.leader)
}

/// The issue's case: `n1` on h1 and h2, then on h2 alone. The primary on h1 hands over to
/// h2 through Patroni's REST API before its container and data directory are removed.
#[tokio::test(start_paused = true)]
async fn the_primary_hands_over_before_its_host_is_dropped() {
    let h = harness();
    h.create(spec(
        json!([{"name": "n1", "host_ids": [HOST, HOST2]}]),
        json!([]),
    ))
    .await;
    assert_eq!(h.settle().await, Outcome::Done);
    assert_eq!(leader(&h, "n1").await, Some(pg("n1", HOST)));

    let task = h
        .update(spec(
            json!([{"name": "n1", "host_ids": [HOST2]}]),
            json!([]),
        ))
        .await;
    assert_eq!(h.settle().await, Outcome::Done);
    assert_eq!(h.task(&task.task_id).await.status, TaskStatus::Completed);
    assert_eq!(leader(&h, "n1").await, Some(pg("n1", HOST2)));
    let calls = h.agents.calls();
    let asked = calls
        .iter()
        .position(|c| c == &format!("exec {}", pg("n1", HOST)))
        .expect("the switchover asked of the leader");
    let removed = calls
        .iter()
        .position(|c| c == &format!("remove {}", pg("n1", HOST)))
        .expect("the old primary removed");
    assert!(asked < removed, "{calls:?}");
    let log = h.log(&task.task_id).await.join("\n");
    assert!(
        log.contains(&format!(
            "switching node n1's primary over from {} to {}",
            pg("n1", HOST),
            pg("n1", HOST2)
        )),
        "{log}"
    );
    assert!(log.contains(&format!("Patroni names {} the primary", pg("n1", HOST2))));
    let records = h.reconciler.records(DB).await.unwrap();
    assert_eq!(records.keys().collect::<Vec<_>>(), [&pg("n1", HOST2)]);
}

/// The step refuses to remove a node's leader, whatever the plan said: Patroni's keys are
/// read again when it runs.
#[tokio::test(start_paused = true)]
async fn a_remove_step_refuses_the_nodes_leader() {
    let h = harness();
    h.create(spec(
        json!([{"name": "n1", "host_ids": [HOST, HOST2]}]),
        json!([]),
    ))
    .await;
    assert_eq!(h.settle().await, Outcome::Done);
    let Loaded::Pass(pass) = h
        .reconciler
        .load(DB, &mut WorkerState::default())
        .await
        .unwrap()
    else {
        panic!("a pass")
    };
    let refused = h
        .reconciler
        .guard_leader(&pass, &pg("n1", HOST))
        .await
        .unwrap_err()
        .to_string();
    assert!(refused.contains("primary of node n1"), "{refused}");
    h.reconciler
        .guard_leader(&pass, &pg("n1", HOST2))
        .await
        .unwrap();
}

/// A new database: nothing builds on its node before Patroni has a running leader. The
/// pass waits (an event of Patroni's keys wakes it), says why once, and goes on after.
#[tokio::test(start_paused = true)]
async fn roles_and_services_wait_for_a_running_leader() {
    let h = harness();
    *h.agents.patroni_slow.lock().unwrap() = true;
    let task = h
        .create(spec(
            json!([{"name": "n1", "host_ids": [HOST]}]),
            json!([{"service_id": "s", "service_type": "mcp", "version": "latest",
                   "host_ids": [HOST], "config": {}}]),
        ))
        .await;
    assert_eq!(h.settle().await, Outcome::Done);
    assert_eq!(h.task(&task.task_id).await.status, TaskStatus::Running);
    let log = h.log(&task.task_id).await;
    let waits: Vec<&String> = log
        .iter()
        .filter(|l| l.contains("Patroni reports it starting"))
        .collect();
    assert_eq!(waits.len(), 1, "said once: {log:?}");
    assert!(
        !h.agents.calls().iter().any(|c| c.starts_with("exec")),
        "no role yet"
    );

    // Patroni elects it.
    h.store
        .set_patroni_key(DB, "n1/leader", Some(pg("n1", HOST).as_bytes()));
    h.store.set_patroni_key(
        DB,
        &format!("n1/members/{}", pg("n1", HOST)),
        Some(br#"{"role":"master","state":"running","xlog_location":1,"timeline":1}"#),
    );
    assert_eq!(h.settle().await, Outcome::Done);
    assert_eq!(h.task(&task.task_id).await.status, TaskStatus::Completed);
    let calls = h.agents.calls();
    assert!(
        calls.contains(&format!("exec {}", pg("n1", HOST))),
        "{calls:?}"
    );
}

/// A removed node's keys go after its instances; a deleted database's namespace goes whole.
#[tokio::test(start_paused = true)]
async fn keys_go_with_their_node_and_database() {
    let h = harness();
    h.create(spec(
        json!([{"name": "n1", "host_ids": [HOST]}, {"name": "n2", "host_ids": [HOST2]}]),
        json!([]),
    ))
    .await;
    assert_eq!(h.settle().await, Outcome::Done);
    assert_eq!(leader(&h, "n2").await, Some(pg("n2", HOST2)));
    h.update(spec(json!([{"name": "n1", "host_ids": [HOST]}]), json!([])))
        .await;
    assert_eq!(h.settle().await, Outcome::Done);
    let nodes = crate::patroni::read(&*h.store, DB).await.unwrap();
    assert_eq!(nodes.keys().collect::<Vec<_>>(), ["n1"]);

    let current = h.store.get_database(DB).await.unwrap().unwrap();
    let task = crate::tasks::new_task(DB, spec::TaskType::Delete);
    let record = store::DatabaseRecord {
        state: spec::DatabaseState::Deleting,
        generation: current.record.generation + 1,
        current_task_id: Some(task.task_id.clone()),
        ..current.record.clone()
    };
    h.store
        .update_database(current.spec_revision, &record, &current.spec, &task)
        .await
        .unwrap();
    assert_eq!(h.settle().await, Outcome::Gone);
    assert!(h.store.patroni_keys(DB).await.unwrap().is_empty());
}
