//! Retention against a real etcd (ADR 014): a database's keys stay bounded across 1,000
//! updates, and a deleted database's history goes after its grace period, unless the id
//! was taken again.

use std::time::Duration;

use chrono::Utc;
use control_plane::retention::{Retention, Swept, sweep};
use control_plane::tasks::{new_task, transition};
use serde_json::{Map, json};
use spec::{DatabaseSpec, DatabaseState, TaskStatus, TaskType};
use store::{DatabaseRecord, ListOrder, SecretBox, Store};
use test_support::EtcdServer;

const LINES_PER_TASK: usize = 5;

fn spec() -> DatabaseSpec {
    serde_json::from_value(json!({
        "database_name": "app",
        "nodes": [{"name": "n1", "host_ids": ["host-1"]}]
    }))
    .unwrap()
}

fn record(id: &str, generation: u64, task_id: &str) -> DatabaseRecord {
    DatabaseRecord {
        state: DatabaseState::Available,
        current_task_id: Some(task_id.into()),
        ..test_support::records::record(id, generation)
    }
}

async fn store(etcd: &EtcdServer) -> Store {
    Store::connect(
        &[etcd.endpoint()],
        "/ret",
        SecretBox::from_key([5; 32]),
        |_| false,
    )
    .await
    .unwrap()
}

/// One accepted update: its task, a batch of log lines, and the task's end.
async fn update(s: &Store, db: &str, generation: u64) {
    let current = s.get_database(db).await.unwrap().unwrap();
    let task = new_task(db, TaskType::Update);
    s.update_database(
        current.spec_revision,
        &record(db, generation, &task.task_id),
        &spec(),
        &task,
    )
    .await
    .unwrap();
    let lines = (0..LINES_PER_TASK)
        .map(|i| (format!("step {i}"), Map::new()))
        .collect();
    s.append_logs(db, &task.task_id, lines).await.unwrap();
    transition(s, db, &task.task_id, TaskStatus::Completed, None)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_databases_keys_stay_bounded_across_1000_updates() {
    let etcd = EtcdServer::start();
    let s = store(&etcd).await;
    let policy = Retention {
        keep_tasks: 20,
        ..Retention::default()
    };
    let create = new_task("db", TaskType::Create);
    s.create_database(&record("db", 1, &create.task_id), &spec(), &create)
        .await
        .unwrap();
    transition(&s, "db", &create.task_id, TaskStatus::Completed, None)
        .await
        .unwrap();
    // The leader sweeps every period; here every 25 updates.
    const SWEEP_EVERY: u64 = 25;
    let keys_per_task = 1 + LINES_PER_TASK as i64;
    let bound = (policy.keep_tasks as i64 + SWEEP_EVERY as i64 + 1) * keys_per_task;
    let mut most = 0;
    for generation in 2..=1001 {
        update(&s, "db", generation).await;
        if generation % SWEEP_EVERY == 0 {
            most = most.max(s.history_key_count("db").await.unwrap());
            sweep(&s, &policy, Utc::now()).await.unwrap();
        }
    }
    assert!(most <= bound, "{most} keys before a sweep, bound {bound}");
    sweep(&s, &policy, Utc::now()).await.unwrap();
    let after = s.history_key_count("db").await.unwrap();
    assert_eq!(after, policy.keep_tasks as i64 * keys_per_task);
    // The newest tasks are the ones kept, with their logs, and the current one among them.
    let tasks = s
        .list_tasks("db", None, 1000, ListOrder::NewestFirst)
        .await
        .unwrap();
    let current = s.get_database("db").await.unwrap().unwrap().record;
    assert_eq!(
        current.current_task_id.as_deref(),
        Some(tasks[0].task_id.as_str())
    );
    let log = s
        .read_log("db", &tasks[0].task_id, None, 100)
        .await
        .unwrap();
    assert_eq!(log.len(), LINES_PER_TASK);

    // Age: with everything older than the policy's age, only the current task stays.
    let later = Utc::now() + chrono::Duration::days(31);
    let swept = sweep(&s, &policy, later).await.unwrap();
    assert_eq!(swept.tasks, policy.keep_tasks - 1);
    assert_eq!(s.history_key_count("db").await.unwrap(), keys_per_task);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deleted_databases_history_goes_after_the_grace_unless_the_id_is_taken_again() {
    let etcd = EtcdServer::start();
    let s = store(&etcd).await;
    let policy = Retention {
        deleted_grace: Duration::from_secs(3600),
        ..Retention::default()
    };
    for db in ["gone", "back"] {
        let create = new_task(db, TaskType::Create);
        s.create_database(&record(db, 1, &create.task_id), &spec(), &create)
            .await
            .unwrap();
        transition(&s, db, &create.task_id, TaskStatus::Completed, None)
            .await
            .unwrap();
        update(&s, db, 2).await;
        let d = s.get_database(db).await.unwrap().unwrap();
        let delete = new_task(db, TaskType::Delete);
        s.update_database(
            d.spec_revision,
            &record(db, 3, &delete.task_id),
            &spec(),
            &delete,
        )
        .await
        .unwrap();
        transition(&s, db, &delete.task_id, TaskStatus::Completed, None)
            .await
            .unwrap();
        let d = s.get_database(db).await.unwrap().unwrap();
        s.remove_database(db, d.spec_revision).await.unwrap();
    }
    // Within the grace, a deleted database's history stays readable.
    assert_eq!(
        sweep(&s, &policy, Utc::now()).await.unwrap(),
        Swept::default()
    );
    assert!(s.history_key_count("gone").await.unwrap() > 0);

    // "back" is created again: it starts with a history of its own, which stays.
    let again = new_task("back", TaskType::Create);
    s.create_database(&record("back", 1, &again.task_id), &spec(), &again)
        .await
        .unwrap();
    let later = Utc::now() + chrono::Duration::hours(2);
    let swept = sweep(&s, &policy, later).await.unwrap();
    assert_eq!(swept.histories, 1);
    assert_eq!(s.history_key_count("gone").await.unwrap(), 0);
    let back = s
        .list_tasks("back", None, 10, ListOrder::NewestFirst)
        .await
        .unwrap();
    assert_eq!(back.len(), 1);
    assert_eq!(back[0].task_id, again.task_id);
    assert_eq!(s.databases_with_history().await.unwrap(), ["back"]);
}
