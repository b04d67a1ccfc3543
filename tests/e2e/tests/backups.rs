//! Backups with pgBackRest to S3 (issue 17, ADR 022), against a real S3 server
//! (`berth-s3-server`, s3s-fs over HTTPS): a backup of a node without a repository is a 400
//! that stores nothing; a repository added to a running node turns WAL archiving on at its
//! primary; a full and an incremental backup are tasks whose logs are pgBackRest's, listed
//! by `GET .../backups` with their WAL range; no repository key reaches an answer or a log.

use e2e::Fleet;
use e2e::reqwest::StatusCode;
use e2e::serde_json::{Value, json};

fn spec(hosts: &[String], backup: Option<Value>) -> Value {
    let mut s = json!({"database_name": "app",
        "nodes": [{"name": "n1", "host_ids": hosts}]});
    if let Some(b) = backup {
        s["backup_config"] = b;
    }
    s
}

#[tokio::test(flavor = "multi_thread")]
async fn backups_to_s3_archive_wal_and_list_what_they_took() {
    let fleet = Fleet::start(2).await;
    let hosts = vec![fleet.host(1), fleet.host(2)];
    let db = fleet.db_id("backups");
    fleet
        .apply(
            "/v1/databases",
            &json!({"id": db, "spec": spec(&hosts, None)}),
        )
        .await;
    let primary = Fleet::container_name(&hosts[0], &format!("{db}-n1-{}", hosts[0]));
    fleet.psql(
        &primary,
        "app",
        "CREATE TABLE t (id int PRIMARY KEY, v text); \
         INSERT INTO t SELECT g, 'row ' || g FROM generate_series(1, 1000) g",
    );

    // No repository: a 400 naming the node, and nothing stored changes.
    let before = fleet.database(&db).await;
    let path = format!("/v1/databases/{db}/nodes/n1/backups");
    let (status, body) = fleet
        .call("POST", &path, Some(&json!({"type": "full"})))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["errors"][0]["path"], "node_name", "{body}");
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap_or("")
            .contains("no backup repository"),
        "{body}"
    );
    let (status, body) = fleet
        .call("POST", &path, Some(&json!({"type": "weekly"})))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["errors"][0]["path"], "type", "{body}");
    let after = fleet.database(&db).await;
    assert_eq!(before["spec"], after["spec"]);
    assert_eq!(
        before["updated_at"], after["updated_at"],
        "no task was added"
    );

    // A repository on the running node: archiving starts on its primary.
    let s3 = fleet.start_s3();
    let backup_config = json!({"repositories": [s3.repository("main", "/berth")]});
    fleet
        .apply(
            &format!("/v1/databases/{db}"),
            &json!({"spec": spec(&hosts, Some(backup_config))}),
        )
        .await;
    let primary = fleet
        .wait_for("a primary after the instances were replaced", || async {
            let d = fleet.database(&db).await;
            d["instances"].as_array()?.iter().find_map(|i| {
                (i["role"] == "primary" && i["state"] == "available").then(|| {
                    Fleet::container_name(i["host_id"].as_str().unwrap(), i["id"].as_str().unwrap())
                })
            })
        })
        .await
        .0;
    fleet.psql(&primary, "app", "INSERT INTO t VALUES (1001, 'archived')");
    let (segment, took) = fleet
        .wait_for("a WAL segment archived by the primary", || async {
            fleet.psql(&primary, "app", "SELECT pg_switch_wal()");
            let last = fleet.psql(
                &primary,
                "app",
                "SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver",
            );
            (!last.is_empty()).then_some(last)
        })
        .await;
    println!("{segment} archived {took:?} after the switch");
    assert_eq!(
        fleet.psql(&primary, "app", "SHOW archive_mode"),
        "on",
        "archive_mode on the primary"
    );

    // A full backup, then an incremental one.
    let mut labels = Vec::new();
    for (kind, annotations) in [("full", json!({"reason": "first"})), ("incr", json!({}))] {
        let task = fleet
            .post_ok(&path, &json!({"type": kind, "annotations": annotations}))
            .await;
        assert_eq!(task["task"]["type"], "node_backup", "{task}");
        let task_id = task["task"]["task_id"].as_str().unwrap().to_string();
        let ended = fleet.wait_task(&db, &task_id).await;
        let log = fleet.task_log(&db, &task_id).await;
        assert_eq!(ended["status"], "completed", "{ended}\n{}", log.join("\n"));
        assert!(
            log.iter()
                .any(|l| l.contains("backup command end: completed successfully")),
            "pgBackRest's lines are in the task log:\n{}",
            log.join("\n")
        );
        assert!(
            !log.iter().any(|l| l.contains(&s3.secret_key)),
            "no key in the task log"
        );
        fleet.psql(
            &primary,
            "app",
            &format!(
                "INSERT INTO t VALUES ({}, 'after {kind}')",
                2000 + labels.len()
            ),
        );
        let list = fleet.get(&path).await;
        let backups = list["backups"].as_array().expect("a list").clone();
        assert_eq!(backups.len(), labels.len() + 1, "{list}");
        let newest = backups.last().unwrap();
        assert_eq!(newest["type"], kind, "{list}");
        assert!(newest["wal_start"].is_string(), "{newest}");
        assert!(
            newest["database_size_bytes"].as_u64().unwrap() > 0,
            "{newest}"
        );
        labels.push(newest["label"].as_str().unwrap().to_string());
    }
    let list = fleet.get(&path).await;
    assert_eq!(
        list["backups"][0]["annotations"]["reason"], "first",
        "{list}"
    );
    assert_eq!(list["backups"][1]["prior"], labels[0].as_str(), "{list}");

    // The keys stay sealed: never in an answer.
    let answer = fleet.database(&db).await.to_string();
    assert!(!answer.contains(&s3.secret_key) && !answer.contains(&s3.access_key));
    // The backups are in the bucket, under the node's path.
    let stanza = s3
        .root
        .join(&s3.bucket)
        .join(format!("berth/databases/{db}/main/n1/backup/db"));
    assert!(stanza.is_dir(), "{} exists", stanza.display());
}
