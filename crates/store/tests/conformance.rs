//! One suite, two stores: what the reconciler relies on from [`StateStore`] holds for etcd
//! and for the in-memory store its unit tests use.

use serde_json::{Map, json};
use spec::{DatabaseSpec, DatabaseState, Task, TaskStatus, TaskType};
use store::{
    DatabaseRecord, Fence, ListOrder, MemoryStore, SecretBox, StateStore, Store, StoreError,
};
use test_support::EtcdServer;
use test_support::records::{self, task};

fn spec(model: &str) -> DatabaseSpec {
    serde_json::from_value(json!({
        "database_name": "example",
        "nodes": [{"name": "n1", "host_ids": ["host-1"]}],
        "services": [{"service_id": "mcp", "service_type": "mcp", "version": "latest",
            "host_ids": ["host-1"], "config": {"llm_model": model, "anthropic_api_key": "sk-1"}}]
    }))
    .unwrap()
}

/// The record of `id` at `generation`, whose current task is `task`.
fn record(id: &str, generation: u64, task: &Task) -> DatabaseRecord {
    DatabaseRecord {
        current_task_id: Some(task.task_id.clone()),
        ..records::record(id, generation)
    }
}

fn ids(tasks: &[Task]) -> Vec<String> {
    tasks.iter().map(|t| t.task_id.clone()).collect()
}

/// Everything but fencing, on a store whose writes are allowed.
async fn suite(s: &dyn StateStore) {
    // Databases: create once, then only updates that name the revision they read.
    let t1 = task("db", TaskType::Create);
    s.create_database(&record("db", 1, &t1), &spec("m1"), &t1)
        .await
        .unwrap();
    assert!(matches!(
        s.create_database(&record("db", 1, &t1), &spec("m1"), &t1)
            .await,
        Err(StoreError::AlreadyExists)
    ));
    let d = s.get_database("db").await.unwrap().unwrap();
    assert_eq!(d.spec, spec("m1"), "secrets read back opened");
    assert_eq!(d.record.generation, 1);
    let t2 = task("db", TaskType::Update);
    s.update_database(d.spec_revision, &record("db", 2, &t2), &spec("m2"), &t2)
        .await
        .unwrap();
    let t3 = task("db", TaskType::Update);
    assert!(matches!(
        s.update_database(d.spec_revision, &record("db", 3, &t3), &spec("m3"), &t3)
            .await,
        Err(StoreError::Conflict)
    ));
    let d2 = s.get_database("db").await.unwrap().unwrap();
    assert_eq!(d2.spec, spec("m2"), "a conflicting update changes nothing");
    assert!(d2.spec_revision > d.spec_revision);
    assert!(s.get_task("db", &t3.task_id).await.unwrap().is_none());
    let mut failed = d2.record.clone();
    failed.state = DatabaseState::Failed;
    assert!(matches!(
        s.put_database_record(d.spec_revision, &failed).await,
        Err(StoreError::Conflict)
    ));
    s.put_database_record(d2.spec_revision, &failed)
        .await
        .unwrap();
    let d3 = s.get_database("db").await.unwrap().unwrap();
    assert_eq!(d3.record.state, DatabaseState::Failed);
    assert_eq!(
        d3.spec_revision, d2.spec_revision,
        "a record write is not a spec change"
    );
    assert_eq!(s.list_databases().await.unwrap().len(), 1);

    // Tasks: time-ordered, paged both ways with an exclusive cursor.
    let reconcile = task("db", TaskType::Reconcile);
    s.create_task(&reconcile).await.unwrap();
    assert!(matches!(
        s.create_task(&reconcile).await,
        Err(StoreError::AlreadyExists)
    ));
    let all = [
        t1.task_id.clone(),
        t2.task_id.clone(),
        reconcile.task_id.clone(),
    ];
    let newest = s
        .list_tasks("db", None, 10, ListOrder::NewestFirst)
        .await
        .unwrap();
    assert_eq!(ids(&newest), all.iter().rev().cloned().collect::<Vec<_>>());
    let page = s
        .list_tasks("db", Some(&all[2]), 1, ListOrder::NewestFirst)
        .await
        .unwrap();
    assert_eq!(ids(&page), [all[1].clone()]);
    let oldest = s
        .list_tasks("db", Some(&all[0]), 10, ListOrder::OldestFirst)
        .await
        .unwrap();
    assert_eq!(ids(&oldest), all[1..]);
    assert!(
        s.list_tasks("other", None, 10, ListOrder::NewestFirst)
            .await
            .unwrap()
            .is_empty()
    );

    // A read-modify-write that declines changes nothing; one that changes stamps the time.
    let unchanged = s
        .update_task("db", &t1.task_id, &mut |_| false)
        .await
        .unwrap();
    assert_eq!(unchanged, t1);
    let running = s
        .update_task("db", &t1.task_id, &mut |t| {
            t.status = TaskStatus::Running;
            true
        })
        .await
        .unwrap();
    assert_eq!(running.status, TaskStatus::Running);
    assert!(running.updated_at >= t1.updated_at);
    let stored = s.get_task("db", &t1.task_id).await.unwrap().unwrap();
    assert_eq!(stored.value, running);
    assert!(matches!(
        s.update_task("db", "01900000-0000-7000-8000-000000000000", &mut |_| true)
            .await,
        Err(StoreError::NotFound)
    ));

    // Logs: in append order, paged with an exclusive cursor.
    let mut appended = Vec::new();
    for i in 0..5 {
        let mut f = Map::new();
        f.insert("i".into(), json!(i));
        appended.push(
            s.append_log("db", &t1.task_id, format!("line {i}"), f)
                .await
                .unwrap(),
        );
    }
    let read = s.read_log("db", &t1.task_id, None, 100).await.unwrap();
    assert_eq!(read, appended);
    let rest = s
        .read_log("db", &t1.task_id, Some(&appended[1].id), 2)
        .await
        .unwrap();
    assert_eq!(rest, appended[2..4]);
    assert!(
        s.read_log("db", &t2.task_id, None, 100)
            .await
            .unwrap()
            .is_empty()
    );

    // Instance records and credentials: documents, read back as written.
    let a = json!({"instance_id": "a", "n": 1});
    let b = json!({"instance_id": "b", "n": 2});
    s.put_instance_document("db", "a", &a).await.unwrap();
    s.put_instance_document("db", "b", &b).await.unwrap();
    s.put_instance_document("other", "c", &a).await.unwrap();
    assert_eq!(
        s.list_instance_documents("db").await.unwrap(),
        [a.clone(), b.clone()]
    );
    // An update sees what is stored and changes only what it returns; one that returns
    // nothing, or finds nothing to change, writes nothing.
    let wrote = s
        .update_instance_document("db", "b", &mut |stored| {
            let mut doc = stored?.clone();
            doc["health"] = json!("ok");
            Some(doc)
        })
        .await
        .unwrap();
    assert!(wrote);
    let b = json!({"instance_id": "b", "n": 2, "health": "ok"});
    assert!(
        !s.update_instance_document("db", "gone", &mut |stored| stored.cloned())
            .await
            .unwrap()
    );
    assert!(
        !s.update_instance_document("db", "b", &mut |_| None)
            .await
            .unwrap()
    );
    assert_eq!(
        s.list_instance_documents("db").await.unwrap(),
        [a.clone(), b.clone()]
    );
    s.delete_instance("db", "a").await.unwrap();
    s.delete_instance("db", "never").await.unwrap();
    assert_eq!(
        s.list_instance_documents("db").await.unwrap(),
        std::slice::from_ref(&b)
    );
    let creds = json!({"superuser_password": "pw", "services": {"mcp": {"ro_password": "r"}}});
    assert!(s.get_credentials_document("db").await.unwrap().is_none());
    s.put_credentials_document("db", &creds).await.unwrap();
    assert_eq!(s.get_credentials_document("db").await.unwrap(), Some(creds));

    // Removal is conditional too, and keeps the history readable.
    let d4 = s.get_database("db").await.unwrap().unwrap();
    assert!(matches!(
        s.remove_database("db", d.spec_revision).await,
        Err(StoreError::Conflict)
    ));
    s.remove_database("db", d4.spec_revision).await.unwrap();
    assert!(s.get_database("db").await.unwrap().is_none());
    assert!(s.list_instance_documents("db").await.unwrap().is_empty());
    assert!(s.get_credentials_document("db").await.unwrap().is_none());
    assert_eq!(
        s.list_instance_documents("other").await.unwrap().len(),
        1,
        "another database's records stay"
    );
    assert_eq!(
        s.list_tasks("db", None, 10, ListOrder::NewestFirst)
            .await
            .unwrap()
            .len(),
        3
    );
    assert_eq!(
        s.read_log("db", &t1.task_id, None, 100)
            .await
            .unwrap()
            .len(),
        5
    );

    // A new database of the same id starts with a history of its own.
    let fresh = task("db", TaskType::Create);
    s.create_database(&record("db", 1, &fresh), &spec("m9"), &fresh)
        .await
        .unwrap();
    assert_eq!(
        ids(&s
            .list_tasks("db", None, 10, ListOrder::NewestFirst)
            .await
            .unwrap()),
        std::slice::from_ref(&fresh.task_id)
    );
    assert!(
        s.read_log("db", &t1.task_id, None, 100)
            .await
            .unwrap()
            .is_empty()
    );
}

/// Batched log lines, deleting tasks, and forgetting a deleted database's history (ADR 014).
async fn history(s: &dyn StateStore) {
    let t1 = task("h", TaskType::Create);
    s.create_database(&record("h", 1, &t1), &spec("m1"), &t1)
        .await
        .unwrap();
    s.append_log("h", &t1.task_id, "first".into(), Map::new())
        .await
        .unwrap();
    let lines = (0..150)
        .map(|i| (format!("line {i}"), Map::new()))
        .collect();
    let batch = s.append_logs("h", &t1.task_id, lines).await.unwrap();
    assert_eq!(batch.len(), 150);
    let log = s.read_log("h", &t1.task_id, None, 1000).await.unwrap();
    let messages: Vec<&str> = log.iter().map(|e| e.message.as_str()).collect();
    assert_eq!(messages.len(), 151);
    assert_eq!((messages[0], messages[150]), ("first", "line 149"));
    assert!(
        messages[1..]
            .iter()
            .enumerate()
            .all(|(i, m)| *m == format!("line {i}"))
    );
    // The reading cursor pages through a batch as through single lines.
    let page = s
        .read_log("h", &t1.task_id, Some(&log[100].id), 10)
        .await
        .unwrap();
    assert_eq!(page[0].message, "line 100");

    let t2 = task("h", TaskType::Update);
    s.create_task(&t2).await.unwrap();
    s.append_log("h", &t2.task_id, "kept".into(), Map::new())
        .await
        .unwrap();
    s.delete_tasks("h", std::slice::from_ref(&t1.task_id))
        .await
        .unwrap();
    assert!(s.get_task("h", &t1.task_id).await.unwrap().is_none());
    assert!(
        s.read_log("h", &t1.task_id, None, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        s.read_log("h", &t2.task_id, None, 10).await.unwrap().len(),
        1
    );
    assert_eq!(s.databases_with_history().await.unwrap(), ["h"]);

    // The history of an existing database is not forgotten; of a deleted one it is.
    assert!(!s.forget_history("h").await.unwrap());
    assert!(s.get_task("h", &t2.task_id).await.unwrap().is_some());
    let d = s.get_database("h").await.unwrap().unwrap();
    s.remove_database("h", d.spec_revision).await.unwrap();
    assert!(s.forget_history("h").await.unwrap());
    assert!(s.get_task("h", &t2.task_id).await.unwrap().is_none());
    assert!(
        s.read_log("h", &t2.task_id, None, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(s.databases_with_history().await.unwrap().is_empty());
}

/// After `depose`, every write of the deposed handle fails as fenced and changes nothing.
async fn fencing(s: &dyn StateStore, depose: impl AsyncFnOnce()) {
    let t = task("fenced", TaskType::Create);
    s.create_database(&record("fenced", 1, &t), &spec("m1"), &t)
        .await
        .unwrap();
    let d = s.get_database("fenced").await.unwrap().unwrap();
    depose().await;
    let fenced = |r: Result<(), StoreError>| matches!(r, Err(StoreError::Fenced));
    let mut failed = d.record.clone();
    failed.state = DatabaseState::Failed;
    assert!(fenced(
        s.put_database_record(d.spec_revision, &failed).await
    ));
    assert!(fenced(
        s.put_instance_document("fenced", "a", &json!({})).await
    ));
    assert!(fenced(
        s.append_log("fenced", &t.task_id, "x".into(), Map::new())
            .await
            .map(drop)
    ));
    assert!(fenced(
        s.update_task("fenced", &t.task_id, &mut |t| {
            t.status = TaskStatus::Running;
            true
        })
        .await
        .map(drop)
    ));
    assert!(fenced(s.remove_database("fenced", d.spec_revision).await));
    let after = s.get_database("fenced").await.unwrap().unwrap();
    assert_eq!(after, d);
    assert_eq!(
        s.get_task("fenced", &t.task_id)
            .await
            .unwrap()
            .unwrap()
            .value,
        t
    );
}

#[tokio::test]
async fn the_in_memory_store_conforms() {
    suite(&MemoryStore::new()).await;
    history(&MemoryStore::new()).await;
    let m = MemoryStore::new();
    fencing(&m, async || m.depose()).await;
}

#[tokio::test]
async fn etcd_conforms() {
    let etcd = EtcdServer::start();
    let connect = |prefix: &'static str| {
        let endpoint = etcd.endpoint();
        async move {
            Store::connect(&[endpoint], prefix, SecretBox::from_key([7; 32]), |k| {
                k.contains("api_key") || k.contains("password")
            })
            .await
            .unwrap()
        }
    };
    suite(&connect("/conformance").await).await;
    history(&connect("/history").await).await;

    // A leader's fenced handle, then the leader key gone (its lease expired).
    let s = connect("/fencing").await;
    let mut kv = s.client().kv_client();
    let key = "/fencing/leader";
    kv.put(key, "me", None).await.unwrap();
    let created = kv.get(key, None).await.unwrap().kvs()[0].create_revision();
    let fenced = s.fenced(Fence {
        key: key.into(),
        create_revision: created,
    });
    fencing(&fenced, async || {
        kv.delete(key, None).await.unwrap();
    })
    .await;
}
