//! The store against a real etcd started on free ports.

use serde_json::{Map, json};
use spec::{DatabaseSpec, TaskStatus, TaskType};
use store::{ListOrder, SecretBox, Store, StoreError};
use test_support::EtcdServer;
use test_support::records::{record, task};

fn is_secret(k: &str) -> bool {
    k.contains("api_key")
}

async fn store(etcd: &EtcdServer) -> Store {
    Store::connect(
        &[etcd.endpoint()],
        "/berth-test",
        SecretBox::from_key([9; 32]),
        is_secret,
    )
    .await
    .unwrap()
}

fn spec() -> DatabaseSpec {
    serde_json::from_value(json!({
        "database_name": "example",
        "nodes": [{"name": "n1", "host_ids": ["host-1"]}],
        "services": [{"service_id": "mcp-server", "service_type": "mcp", "version": "latest",
            "host_ids": ["host-1"], "config": {"llm_model": "m1", "anthropic_api_key": "sk-ant-PLAINTEXT"}}]
    }))
    .unwrap()
}

#[tokio::test]
async fn create_get_update_with_revision_checks_and_sealed_secrets() {
    let etcd = EtcdServer::start();
    let s = store(&etcd).await;
    let t1 = task("example", TaskType::Create);
    s.create_database(&record("example", 1), &spec(), &t1)
        .await
        .unwrap();
    let again = s
        .create_database(
            &record("example", 1),
            &spec(),
            &task("example", TaskType::Create),
        )
        .await;
    assert!(matches!(again, Err(StoreError::AlreadyExists)), "{again:?}");

    let got = s.get_database("example").await.unwrap().expect("stored");
    assert_eq!(got.spec, spec(), "secrets open back to what was written");
    assert_eq!(got.record.generation, 1);
    assert!(s.get_database("nope").await.unwrap().is_none());

    // Two writers that read the same revision: exactly one wins.
    let mut changed = spec();
    changed.services[0]
        .config
        .insert("llm_model".into(), json!("m2"));
    let rev = got.spec_revision;
    s.update_database(
        rev,
        &record("example", 2),
        &changed,
        &task("example", TaskType::Update),
    )
    .await
    .unwrap();
    let lost = s
        .update_database(
            rev,
            &record("example", 2),
            &spec(),
            &task("example", TaskType::Update),
        )
        .await;
    assert!(matches!(lost, Err(StoreError::Conflict)), "{lost:?}");
    assert_eq!(
        s.get_database("example").await.unwrap().unwrap().spec,
        changed
    );

    let dump = s.dump().await.unwrap();
    assert!(dump.len() >= 4);
    for (key, value) in dump {
        let text = String::from_utf8_lossy(&value);
        assert!(
            !text.contains("PLAINTEXT"),
            "{key} holds the api key in plain text: {text}"
        );
    }
    assert_eq!(s.list_databases().await.unwrap().len(), 1);
}

#[tokio::test]
async fn tasks_list_newest_first_and_logs_page_with_an_exclusive_cursor() {
    let etcd = EtcdServer::start();
    let s = store(&etcd).await;
    let first = task("db1", TaskType::Create);
    s.create_database(&record("db1", 1), &spec(), &first)
        .await
        .unwrap();
    let mut ids = vec![first.task_id.clone()];
    for _ in 0..4 {
        let d = s.get_database("db1").await.unwrap().unwrap();
        let t = task("db1", TaskType::Update);
        s.update_database(d.spec_revision, &record("db1", 2), &spec(), &t)
            .await
            .unwrap();
        ids.push(t.task_id);
    }
    let newest_first: Vec<String> = ids.iter().rev().cloned().collect();
    let all: Vec<String> = s
        .list_tasks("db1", None, 100, ListOrder::NewestFirst)
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.task_id)
        .collect();
    assert_eq!(all, newest_first);
    let page: Vec<String> = s
        .list_tasks("db1", Some(&newest_first[1]), 2, ListOrder::NewestFirst)
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.task_id)
        .collect();
    assert_eq!(page, newest_first[2..4].to_vec());
    let oldest: Vec<String> = s
        .list_tasks("db1", Some(&ids[0]), 2, ListOrder::OldestFirst)
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.task_id)
        .collect();
    assert_eq!(oldest, ids[1..3].to_vec());

    for i in 0..7 {
        let mut fields = Map::new();
        fields.insert("i".into(), json!(i));
        s.append_log("db1", &first.task_id, format!("line {i}"), fields)
            .await
            .unwrap();
    }
    let head = s.read_log("db1", &first.task_id, None, 3).await.unwrap();
    assert_eq!(
        head.iter().map(|e| e.message.as_str()).collect::<Vec<_>>(),
        ["line 0", "line 1", "line 2"]
    );
    let next = s
        .read_log("db1", &first.task_id, Some(&head[2].id), 100)
        .await
        .unwrap();
    assert_eq!(next.len(), 4);
    assert_eq!(next[0].message, "line 3");
    let past_end = s
        .read_log("db1", &first.task_id, Some(&next[3].id), 100)
        .await
        .unwrap();
    assert!(past_end.is_empty());

    let done = s
        .update_task("db1", &first.task_id, |t| {
            t.status = TaskStatus::Completed;
            true
        })
        .await
        .unwrap();
    assert_eq!(done.status, TaskStatus::Completed);
    let unfinished = s.unfinished_tasks().await.unwrap();
    assert_eq!(unfinished.len(), 4);
    assert!(unfinished.iter().all(|t| t.task_id != first.task_id));
}

#[tokio::test]
async fn a_restarted_etcd_keeps_what_was_written_and_the_client_reconnects() {
    let mut etcd = EtcdServer::start();
    let s = store(&etcd).await;
    s.create_database(
        &record("durable", 1),
        &spec(),
        &task("durable", TaskType::Create),
    )
    .await
    .unwrap();
    etcd.restart();
    let mut last = None;
    for _ in 0..50 {
        match s.get_database("durable").await {
            Ok(found) => {
                last = Some(found);
                break;
            }
            Err(e) => {
                assert!(e.is_unavailable(), "{e}");
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
        }
    }
    assert_eq!(last.flatten().expect("readable after restart").spec, spec());
}

#[tokio::test]
async fn fenced_writes_stop_when_the_leader_key_changes_hands() {
    let etcd = EtcdServer::start();
    let s = store(&etcd).await;
    let t = task("db", TaskType::Create);
    s.create_database(&record("db", 1), &spec(), &t)
        .await
        .unwrap();
    let mut client = s.client();
    let leader_key = s.keys().leader();
    let put = client
        .put(leader_key.clone(), "replica-a", None)
        .await
        .unwrap();
    let fenced = s.fenced(store::Fence {
        key: leader_key.clone(),
        create_revision: put.header().unwrap().revision(),
    });

    fenced
        .append_log("db", &t.task_id, "while leading", Default::default())
        .await
        .unwrap();
    fenced
        .put_instance("db", "i1", &json!({"x": 1}))
        .await
        .unwrap();
    assert_eq!(
        fenced
            .list_instances::<serde_json::Value>("db")
            .await
            .unwrap(),
        vec![json!({"x": 1})]
    );

    // Another replica takes over: the key is deleted (lease expiry) and created again.
    client.delete(leader_key.clone(), None).await.unwrap();
    client.put(leader_key, "replica-b", None).await.unwrap();
    let refused = fenced
        .append_log("db", &t.task_id, "after losing", Default::default())
        .await;
    assert!(matches!(refused, Err(StoreError::Fenced)), "{refused:?}");
    let refused = fenced.update_task("db", &t.task_id, |t| {
        t.status = TaskStatus::Failed;
        true
    });
    assert!(matches!(refused.await, Err(StoreError::Fenced)));
    assert_eq!(
        s.read_log("db", &t.task_id, None, 10).await.unwrap().len(),
        1
    );
    assert_eq!(
        s.get_task("db", &t.task_id)
            .await
            .unwrap()
            .unwrap()
            .value
            .status,
        TaskStatus::Pending
    );
}

#[tokio::test]
async fn credentials_are_sealed_at_rest() {
    let etcd = EtcdServer::start();
    let s = Store::connect(
        &[etcd.endpoint()],
        "/c",
        SecretBox::from_key([3; 32]),
        |k| k.contains("password"),
    )
    .await
    .unwrap();
    let creds =
        json!({"superuser_password": "pw-PLAIN", "services": {"a": {"rw_password": "pw-RW"}}});
    s.put_credentials("db", &creds).await.unwrap();
    assert_eq!(
        s.get_credentials::<serde_json::Value>("db").await.unwrap(),
        Some(creds)
    );
    for (key, value) in s.dump().await.unwrap() {
        let text = String::from_utf8_lossy(&value);
        assert!(!text.contains("pw-"), "{key}: {text}");
    }
}

#[tokio::test]
async fn backup_repository_keys_are_sealed_at_rest_and_open_back() {
    let etcd = EtcdServer::start();
    let s = store(&etcd).await;
    let repository = |id: &str| {
        json!({"id": id, "type": "s3", "s3_bucket": "b-1", "s3_region": "r",
               "s3_key": format!("KEY-PLAIN-{id}"), "s3_key_secret": format!("SECRET-PLAIN-{id}")})
    };
    let restore = json!({"source_database_id": "old", "source_node_name": "n1",
                         "source_database_name": "example", "repository": repository("old")});
    let spec: DatabaseSpec = serde_json::from_value(json!({
        "database_name": "example",
        "backup_config": {"repositories": [repository("db")]},
        "restore_config": restore,
        "nodes": [{"name": "n1", "host_ids": ["host-1"],
                   "backup_config": {"repositories": [repository("node")]},
                   "restore_config": restore}]
    }))
    .unwrap();
    s.create_database(
        &record("example", 1),
        &spec,
        &task("example", TaskType::Create),
    )
    .await
    .unwrap();
    assert_eq!(s.get_database("example").await.unwrap().unwrap().spec, spec);
    assert_eq!(s.list_databases().await.unwrap()[0].spec, spec);
    let mut sealed = 0;
    for (key, value) in s.dump().await.unwrap() {
        let text = String::from_utf8_lossy(&value);
        assert!(
            !text.contains("-PLAIN-"),
            "{key} holds a key in plain text: {text}"
        );
        sealed += text.matches("$sealed").count();
    }
    assert_eq!(sealed, 8, "two keys in each of four repositories");
}
