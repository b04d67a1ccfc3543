//! Backup schedule marks against a real etcd (ADR 024): a fire writes the mark, the task,
//! its first log line and the database's record together or not at all; two fires that
//! read the same mark cannot both win; a deposed leader's fire is refused.

use serde_json::{Value, json};
use spec::{DatabaseSpec, DatabaseState, Task, TaskLogEntry, TaskType};
use store::{
    DatabaseRecord, Fence, ScheduleKey, ScheduledFire, SecretBox, Store, StoreError, StoredMark,
};
use test_support::EtcdServer;
use test_support::records::{self, task};

async fn store(etcd: &EtcdServer) -> Store {
    Store::connect(
        &[etcd.endpoint()],
        "/berth-test",
        SecretBox::from_key([9; 32]),
        |_| false,
    )
    .await
    .unwrap()
}

fn spec() -> DatabaseSpec {
    serde_json::from_value(json!({
        "database_name": "app",
        "nodes": [{"name": "n1", "host_ids": ["host-1"]}]
    }))
    .unwrap()
}

/// An available database's record, at generation 1.
fn record(id: &str) -> DatabaseRecord {
    DatabaseRecord {
        state: DatabaseState::Available,
        ..records::record(id, 1)
    }
}

fn key() -> ScheduleKey {
    ScheduleKey {
        database: "db".into(),
        node: "n1".into(),
        schedule: "nightly".into(),
    }
}

/// Fires `due` on what `s` reads now, with the mark read at `mark_revision`.
async fn fire(s: &Store, due: &str, mark_revision: i64) -> Result<Task, StoreError> {
    let db = s.get_database("db").await?.unwrap();
    let t = task("db", TaskType::NodeBackup);
    let record = DatabaseRecord {
        current_task_id: Some(t.task_id.clone()),
        ..db.record.clone()
    };
    let log = TaskLogEntry::new(format!("due at {due}"), Default::default());
    let mark = json!({"last_due": due});
    s.fire_schedule(ScheduledFire {
        expected_spec_revision: db.spec_revision,
        record: &record,
        spec: &db.spec,
        task: &t,
        log: &log,
        key: &key(),
        expected_mark_revision: mark_revision,
        mark: &mark,
    })
    .await
    .map(|()| t)
}

async fn marks(s: &Store) -> Vec<StoredMark<Value>> {
    s.list_schedule_marks().await.unwrap()
}

#[tokio::test]
async fn a_mark_is_written_against_its_revision() {
    let etcd = EtcdServer::start();
    let s = store(&etcd).await;
    s.put_schedule_mark(&key(), 0, &json!({"last_due": null}))
        .await
        .unwrap();
    let again = s.put_schedule_mark(&key(), 0, &json!({"x": 1})).await;
    assert!(matches!(again, Err(StoreError::Conflict)), "{again:?}");
    let listed = marks(&s).await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].key, key());
    assert_eq!(listed[0].mark.value, json!({"last_due": null}));
    let stale = s.delete_schedule_mark(&key(), 1).await;
    assert!(matches!(stale, Err(StoreError::Conflict)), "{stale:?}");
    s.delete_schedule_mark(&key(), listed[0].mark.mod_revision)
        .await
        .unwrap();
    assert!(marks(&s).await.is_empty());
}

#[tokio::test]
async fn one_of_two_fires_of_the_same_mark_wins_and_writes_everything() {
    let etcd = EtcdServer::start();
    let s = store(&etcd).await;
    s.create_database(&record("db"), &spec(), &task("db", TaskType::Create))
        .await
        .unwrap();
    s.put_schedule_mark(&key(), 0, &json!({})).await.unwrap();
    let revision = marks(&s).await[0].mark.mod_revision;

    let (a, b) = tokio::join!(
        fire(&s, "2025-03-10T03:00:00Z", revision),
        fire(&s, "2025-03-10T03:00:00Z", revision)
    );
    let won: Vec<&Task> = [&a, &b]
        .into_iter()
        .filter_map(|r| r.as_ref().ok())
        .collect();
    assert_eq!(won.len(), 1, "{a:?} {b:?}");
    let lost = if a.is_ok() { &b } else { &a };
    assert!(matches!(lost, Err(StoreError::Conflict)), "{lost:?}");
    let t = won[0];
    assert!(s.get_task("db", &t.task_id).await.unwrap().is_some());
    let log = s.read_log("db", &t.task_id, None, 10).await.unwrap();
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].message, "due at 2025-03-10T03:00:00Z");
    let db = s.get_database("db").await.unwrap().unwrap();
    assert_eq!(
        db.record.current_task_id.as_deref(),
        Some(t.task_id.as_str())
    );
    assert_eq!(
        marks(&s).await[0].mark.value,
        json!({"last_due": "2025-03-10T03:00:00Z"})
    );
    let tasks = s
        .list_tasks("db", None, 100, store::ListOrder::OldestFirst)
        .await
        .unwrap();
    assert_eq!(tasks.len(), 2, "the create and one backup");

    // A fire on a stale spec revision writes nothing.
    let mark_revision = marks(&s).await[0].mark.mod_revision;
    let db = s.get_database("db").await.unwrap().unwrap();
    s.put_database_record(db.spec_revision, &db.record)
        .await
        .unwrap();
    let t = task("db", TaskType::NodeBackup);
    let log = TaskLogEntry::new("stale", Default::default());
    let stale = s
        .fire_schedule(ScheduledFire {
            expected_spec_revision: db.spec_revision - 1,
            record: &db.record,
            spec: &db.spec,
            task: &t,
            log: &log,
            key: &key(),
            expected_mark_revision: mark_revision,
            mark: &json!({"last_due": "later"}),
        })
        .await;
    assert!(matches!(stale, Err(StoreError::Conflict)), "{stale:?}");
    assert!(s.get_task("db", &t.task_id).await.unwrap().is_none());
    assert_eq!(marks(&s).await[0].mark.mod_revision, mark_revision);
}

#[tokio::test]
async fn a_deposed_leader_fires_nothing() {
    let etcd = EtcdServer::start();
    let s = store(&etcd).await;
    s.create_database(&record("db"), &spec(), &task("db", TaskType::Create))
        .await
        .unwrap();
    let mut client = s.client();
    let leader_key = s.keys().leader();
    let put = client.put(leader_key.clone(), "a", None).await.unwrap();
    let fenced = s.fenced(Fence {
        key: leader_key.clone(),
        create_revision: put.header().unwrap().revision(),
    });
    fenced
        .put_schedule_mark(&key(), 0, &json!({}))
        .await
        .unwrap();
    let revision = marks(&s).await[0].mark.mod_revision;
    // Another replica leads now: the key was deleted and created again.
    client.delete(leader_key.clone(), None).await.unwrap();
    client.put(leader_key, "b", None).await.unwrap();

    let refused = fire(&fenced, "2025-03-10T03:00:00Z", revision).await;
    assert!(matches!(refused, Err(StoreError::Fenced)), "{refused:?}");
    assert_eq!(marks(&s).await[0].mark.mod_revision, revision);
    let tasks = s
        .list_tasks("db", None, 100, store::ListOrder::OldestFirst)
        .await
        .unwrap();
    assert_eq!(tasks.len(), 1, "only the create");
    let refused = fenced.put_schedule_mark(&key(), revision, &json!({})).await;
    assert!(matches!(refused, Err(StoreError::Fenced)), "{refused:?}");
}
