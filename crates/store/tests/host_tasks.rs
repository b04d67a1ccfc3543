//! Host-scoped tasks and the listing of tasks across databases and hosts, on a real etcd.

use chrono::Utc;
use serde_json::{Map, json};
use spec::{Task, TaskScope, TaskStatus, TaskType};
use store::{CertificateStanding, HostCertificate, ListOrder, SecretBox, Store};
use test_support::EtcdServer;

async fn store(etcd: &EtcdServer) -> Store {
    Store::connect(
        &[etcd.endpoint()],
        "/berth-host-tasks",
        SecretBox::from_key([3; 32]),
        |_| false,
    )
    .await
    .unwrap()
}

fn task(scope: TaskScope, entity: &str, t: TaskType) -> Task {
    Task {
        task_id: uuid::Uuid::now_v7().to_string(),
        database_id: if scope == TaskScope::Database {
            entity.into()
        } else {
            String::new()
        },
        scope: scope.as_str().into(),
        entity_id: entity.into(),
        task_type: t,
        status: TaskStatus::Completed,
        created_at: Utc::now(),
        updated_at: Utc::now(),
        completed_at: Some(Utc::now()),
        error: None,
    }
}

fn ids(tasks: &[Task]) -> Vec<&str> {
    tasks.iter().map(|t| t.task_id.as_str()).collect()
}

/// Removes `host` recording a task whose log names the serial revoked.
async fn remove(s: &Store, host: &str) -> (Option<String>, Task) {
    s.remove_host_recorded(host, |serial| {
        let lines = vec![
            (format!("removing host {host}"), Map::new()),
            (
                "certificate revoked".to_string(),
                json!({"serial": serial}).as_object().unwrap().clone(),
            ),
        ];
        (task(TaskScope::Host, host, TaskType::RemoveHost), lines)
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn a_removal_is_a_host_task_with_its_log_written_with_the_revocation() {
    let etcd = EtcdServer::start();
    let s = store(&etcd).await;
    let cert = HostCertificate {
        serial: "0a1b".into(),
        issued_at: Utc::now(),
    };
    assert!(s.claim_host_id("host-9", &cert).await.unwrap());
    let (revoked, t) = remove(&s, "host-9").await;
    assert_eq!(revoked.as_deref(), Some("0a1b"));
    assert_eq!(
        s.certificate_standing("host-9", "0a1b").await.unwrap(),
        CertificateStanding::Revoked
    );
    assert_eq!(
        s.get_host_task("host-9", &t.task_id).await.unwrap(),
        Some(t.clone())
    );
    assert_eq!(s.get_host_task("host-8", &t.task_id).await.unwrap(), None);
    let log = s
        .read_host_log("host-9", &t.task_id, None, 100)
        .await
        .unwrap();
    assert_eq!(log.len(), 2);
    assert_eq!(log[1].fields["serial"], "0a1b");
    let rest = s
        .read_host_log("host-9", &t.task_id, Some(&log[0].id), 100)
        .await
        .unwrap();
    assert_eq!(rest, log[1..]);
    // A second removal of the same id: a second task, nothing left to revoke.
    let (revoked, t2) = remove(&s, "host-9").await;
    assert_eq!(revoked, None);
    let newest = s
        .list_host_tasks("host-9", None, 10, ListOrder::NewestFirst)
        .await
        .unwrap();
    assert_eq!(ids(&newest), vec![t2.task_id.as_str(), t.task_id.as_str()]);
    let after = s
        .list_host_tasks("host-9", Some(&t.task_id), 10, ListOrder::OldestFirst)
        .await
        .unwrap();
    assert_eq!(ids(&after), vec![t2.task_id.as_str()]);
}

#[tokio::test]
async fn all_tasks_page_by_creation_across_databases_and_hosts() {
    let etcd = EtcdServer::start();
    let s = store(&etcd).await;
    // Interleaved: the key order (by database, then host) is not creation order.
    let mut created = Vec::new();
    for (scope, entity) in [
        (TaskScope::Database, "zeta"),
        (TaskScope::Host, "host-1"),
        (TaskScope::Database, "alpha"),
        (TaskScope::Database, "zeta"),
        (TaskScope::Host, "host-2"),
        (TaskScope::Database, "alpha"),
    ] {
        let t = match scope {
            TaskScope::Database => {
                let t = task(scope, entity, TaskType::Update);
                s.create_task(&t).await.unwrap();
                t
            }
            TaskScope::Host => remove(&s, entity).await.1,
        };
        created.push(t);
    }
    let all: Vec<&str> = ids(&created);
    let oldest = s
        .list_all_tasks(None, None, 100, ListOrder::OldestFirst)
        .await
        .unwrap();
    assert_eq!(ids(&oldest), all);
    assert_eq!(oldest, created);
    let newest = s
        .list_all_tasks(None, None, 100, ListOrder::NewestFirst)
        .await
        .unwrap();
    let mut reversed = all.clone();
    reversed.reverse();
    assert_eq!(ids(&newest), reversed);

    // Pages of 2, oldest first, following the cursor across scopes.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = s
            .list_all_tasks(None, cursor.as_deref(), 2, ListOrder::OldestFirst)
            .await
            .unwrap();
        let Some(last) = page.last() else { break };
        cursor = Some(last.task_id.clone());
        seen.extend(page.iter().map(|t| t.task_id.clone()));
    }
    assert_eq!(seen, all);
    // Newest first after the fourth task: the three before it.
    let before = s
        .list_all_tasks(None, Some(all[3]), 10, ListOrder::NewestFirst)
        .await
        .unwrap();
    assert_eq!(ids(&before), vec![all[2], all[1], all[0]]);

    let hosts = s
        .list_all_tasks(Some(TaskScope::Host), None, 10, ListOrder::OldestFirst)
        .await
        .unwrap();
    assert_eq!(ids(&hosts), vec![all[1], all[4]]);
    assert!(hosts.iter().all(|t| t.scope == "host"));
    let databases = s
        .list_all_tasks(Some(TaskScope::Database), None, 10, ListOrder::OldestFirst)
        .await
        .unwrap();
    assert_eq!(ids(&databases), vec![all[0], all[2], all[3], all[5]]);
}
