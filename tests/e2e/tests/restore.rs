//! Restores with pgBackRest from S3 (issue 17, ADR 025), against a real S3 server:
//! - bad restore requests are a 400 or 404 naming the field, and change nothing;
//! - a node restored in place to a time between a full and an incremental backup holds
//!   exactly the rows committed before that time, on its primary and on its replica, and
//!   takes writes again;
//! - a new database created with `spec.restore_config` from another database's backups has
//!   its data (renamed to its own database name) while the source keeps running;
//! - a restore that fails in the container (a backup set that does not exist) fails its
//!   task with pgBackRest's reason and leaves no half-restored node running; the node,
//!   with no running instance, is then restored again;
//! - a deleted database's backups stay in the repository, and a new database restores
//!   from them.

use e2e::Fleet;
use e2e::S3Server;
use e2e::reqwest::StatusCode;
use e2e::serde_json::{Value, json};

fn spec(database_name: &str, hosts: &[String], s3: &S3Server) -> Value {
    json!({"database_name": database_name,
        "nodes": [{"name": "n1", "host_ids": hosts}],
        "backup_config": {"repositories": [s3.repository("main", "/berth")]}})
}

fn restore_config(source: &str, options: Value) -> Value {
    json!({"source_database_id": source, "source_node_name": "n1",
        "source_database_name": "app", "repository": "main", "restore_options": options})
}

/// The container of the node's primary, once the database is available with `instances`
/// Postgres instances running and its replicas streaming.
async fn primary_and_replicas(fleet: &Fleet, db: &str, instances: usize) -> (String, Vec<String>) {
    fleet
        .wait_for("the node's primary and its streaming replicas", || async {
            let d = fleet.database(db).await;
            let all = d["instances"].as_array()?.clone();
            let postgres: Vec<&Value> = all.iter().filter(|i| i["role"].is_string()).collect();
            let ready = d["state"] == "available"
                && postgres.len() == instances
                && postgres.iter().all(|i| i["state"] == "available");
            if !ready {
                return None;
            }
            let name =
                |i: &Value| Fleet::container_name(i["host_id"].as_str()?, i["id"].as_str()?).into();
            let primary = postgres
                .iter()
                .find(|i| i["role"] == "primary")
                .and_then(|i| name(i))?;
            let replicas: Vec<String> = postgres
                .iter()
                .filter(|i| i["role"] != "primary")
                .filter_map(|i| name(i))
                .collect();
            Some((primary, replicas))
        })
        .await
        .0
}

async fn backup(fleet: &Fleet, db: &str, kind: &str) {
    let path = format!("/v1/databases/{db}/nodes/n1/backups");
    let task = fleet.post_ok(&path, &json!({"type": kind})).await;
    let task_id = task["task"]["task_id"].as_str().unwrap().to_string();
    let ended = fleet.wait_task(db, &task_id).await;
    assert_eq!(ended["status"], "completed", "{ended}");
}

/// The `node_backup` task that follows a restore (named in the log of the task that
/// restored, `log`), once it ended: it must complete.
async fn after_restore_backup(fleet: &Fleet, db: &str, log: &[String]) {
    let line = log
        .iter()
        .find(|l| l.contains("follows as task"))
        .unwrap_or_else(|| panic!("a backup follows the restore:\n{}", log.join("\n")));
    let task_id = line
        .split("follows as task ")
        .nth(1)
        .and_then(|rest| rest.split([',', ' ']).next())
        .expect("a task id");
    let ended = fleet.wait_task(db, task_id).await;
    assert_eq!(ended["type"], "node_backup", "{ended}");
    assert_eq!(ended["status"], "completed", "{ended}");
}

/// The rows of `t` as "count:max".
fn rows(fleet: &Fleet, container: &str, database: &str) -> String {
    fleet.psql(
        container,
        database,
        "SELECT count(*) || ':' || coalesce(max(id), 0) FROM t",
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn restores_in_place_to_a_time_and_into_new_databases() {
    let fleet = Fleet::start(2).await;
    let hosts = vec![fleet.host(1), fleet.host(2)];
    let s3 = fleet.start_s3();
    let db = fleet.db_id("restore");
    fleet
        .apply(
            "/v1/databases",
            &json!({"id": db, "spec": spec("app", &hosts, &s3)}),
        )
        .await;
    let (primary, _) = primary_and_replicas(&fleet, &db, 2).await;
    let insert = |from: u32, to: u32| {
        format!("INSERT INTO t SELECT g, 'row ' || g FROM generate_series({from}, {to}) g")
    };
    fleet.psql(
        &primary,
        "app",
        "CREATE TABLE t (id int PRIMARY KEY, v text)",
    );
    fleet.psql(&primary, "app", &insert(1, 100));
    backup(&fleet, &db, "full").await;
    fleet.psql(&primary, "app", &insert(101, 200));
    // The target: a time after rows 1-200 committed and before rows 201-300 did.
    let target = fleet.psql(
        &primary,
        "app",
        "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
    );
    std::thread::sleep(std::time::Duration::from_millis(1100));
    fleet.psql(&primary, "app", &insert(201, 300));
    backup(&fleet, &db, "incr").await;
    fleet.psql(&primary, "app", &insert(301, 400));
    println!("restore target: {target}");

    // Bad requests: each a 400 (or 404) at its path; nothing stored changes.
    let before = fleet.database(&db).await;
    let path = format!("/v1/databases/{db}/restore");
    let time = json!({"type": "time", "target": target});
    let inline = s3.repository("main", "/berth");
    for (body, status, at) in [
        (
            json!({"restore_config": {"source_database_id": db, "source_node_name": "n1",
                "source_database_name": "app", "repository": "nope"}}),
            StatusCode::BAD_REQUEST,
            "restore_config.repository",
        ),
        (
            json!({"restore_config": {"source_database_id": db, "source_node_name": "n1",
                "source_database_name": "app", "repository": inline}}),
            StatusCode::BAD_REQUEST,
            "restore_config.repository.s3_key",
        ),
        (
            json!({"restore_config": restore_config(&db, json!({"type": "standby"}))}),
            StatusCode::BAD_REQUEST,
            "restore_config.restore_options.type",
        ),
        (
            json!({"restore_config": restore_config(&db, json!({"type": "time"}))}),
            StatusCode::BAD_REQUEST,
            "restore_config.restore_options.target",
        ),
        (
            json!({"restore_config": restore_config(&db, time.clone()), "target_nodes": ["n1", "n1"]}),
            StatusCode::BAD_REQUEST,
            "target_nodes[1]",
        ),
        (
            json!({"restore_config": restore_config(&db, time.clone()), "target_nodes": ["n9"]}),
            StatusCode::NOT_FOUND,
            "",
        ),
    ] {
        let (got, answer) = fleet.call("POST", &path, Some(&body)).await;
        assert_eq!(got, status, "{body}: {answer}");
        if !at.is_empty() {
            assert!(
                answer["errors"]
                    .as_array()
                    .is_some_and(|e| e.iter().any(|e| e["path"] == at)),
                "{at} in {answer}"
            );
        }
    }
    let after = fleet.database(&db).await;
    assert_eq!(before["spec"], after["spec"]);
    assert_eq!(
        before["updated_at"], after["updated_at"],
        "no task was added"
    );

    // In place, to the target time.
    let task = fleet
        .post_ok(&path, &json!({"restore_config": restore_config(&db, time)}))
        .await;
    assert_eq!(task["task"]["type"], "restore", "{task}");
    let task_id = task["task"]["task_id"].as_str().unwrap().to_string();
    let ended = fleet.wait_task(&db, &task_id).await;
    let log = fleet.task_log(&db, &task_id).await;
    assert_eq!(ended["status"], "completed", "{ended}\n{}", log.join("\n"));
    assert!(
        !log.iter().any(|l| l.contains(&s3.secret_key)),
        "no key in the log"
    );
    let (primary, replicas) = primary_and_replicas(&fleet, &db, 2).await;
    assert_eq!(rows(&fleet, &primary, "app"), "200:200", "on the primary");
    after_restore_backup(&fleet, &db, &log).await;
    for replica in &replicas {
        let (seen, took) = fleet
            .wait_for("the replica to replay the restored primary", || async {
                let got = rows(&fleet, replica, "app");
                (got == "200:200").then_some(got)
            })
            .await;
        println!("{replica} has {seen} after {took:?}");
    }
    // Writable again, and the replica follows.
    fleet.psql(&primary, "app", &insert(1001, 1010));
    fleet.psql(&primary, "app", "SELECT pg_switch_wal()");
    fleet
        .wait_for(
            "the replica to receive a write made after the restore",
            || async { (rows(&fleet, &replicas[0], "app") == "210:1010").then_some(()) },
        )
        .await;
    let answer = fleet.database(&db).await.to_string();
    assert!(!answer.contains(&s3.secret_key) && !answer.contains(&s3.access_key));

    // A full backup of the new timeline followed the restore: the older incremental one
    // lies on the abandoned timeline, and pgBackRest would refuse to restore the latest
    // point of the new one from it.
    let list = fleet
        .get(&format!("/v1/databases/{db}/nodes/n1/backups"))
        .await;
    let newest = list["backups"].as_array().and_then(|b| b.last()).cloned();
    let newest = newest.expect("backups listed");
    assert_eq!(newest["type"], "full", "{list}");
    assert_eq!(newest["annotations"]["berth"], "after-restore", "{list}");

    // A new database from the source's backups, the latest point: every row, in a database
    // of its own name; the source keeps running.
    let copy = fleet.db_id("restore-copy");
    let mut copy_spec = spec("shop", &hosts[..1], &s3);
    copy_spec["restore_config"] = restore_config(&db, json!({}));
    let created = fleet
        .apply("/v1/databases", &json!({"id": copy, "spec": copy_spec}))
        .await;
    let log = fleet
        .task_log(&copy, created["task_id"].as_str().unwrap())
        .await;
    after_restore_backup(&fleet, &copy, &log).await;
    let (copy_primary, _) = primary_and_replicas(&fleet, &copy, 1).await;
    assert_eq!(
        rows(&fleet, &copy_primary, "shop"),
        "210:1010",
        "in the copy"
    );
    fleet.psql(&copy_primary, "shop", &insert(2001, 2001));
    assert_eq!(
        rows(&fleet, &primary, "app"),
        "210:1010",
        "the source is untouched"
    );
    fleet.psql(&primary, "app", &insert(3001, 3001));

    // A restore that fails inside the container (a backup set that does not exist, which
    // only pgBackRest sees) fails its task with pgBackRest's reason, and the node's data
    // directory is never started half restored. A restore of the node, which now has no
    // running instance, then brings it back from its own backup.
    backup(&fleet, &copy, "full").await;
    let copy_restore = format!("/v1/databases/{copy}/restore");
    let own_backup = |options: Value| {
        json!({"restore_config": {"source_database_id": copy, "source_node_name": "n1",
            "source_database_name": "shop", "repository": "main", "restore_options": options}})
    };
    let task = fleet
        .post_ok(
            &copy_restore,
            &own_backup(json!({"set": "20200101-000000F"})),
        )
        .await;
    let task_id = task["task"]["task_id"].as_str().unwrap().to_string();
    let ended = fleet.wait_task(&copy, &task_id).await;
    let log = fleet.task_log(&copy, &task_id).await;
    assert_eq!(ended["status"], "failed", "{ended}\n{}", log.join("\n"));
    let error = ended["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("pgbackrest restore exited") && error.contains("20200101-000000F"),
        "the task says pgBackRest's reason: {error}"
    );
    let copy_now = fleet.database(&copy).await;
    assert!(
        copy_now["instances"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["state"] != "available"),
        "nothing serves the half-restored node: {copy_now}"
    );
    let task = fleet.post_ok(&copy_restore, &own_backup(json!({}))).await;
    let task_id = task["task"]["task_id"].as_str().unwrap().to_string();
    let ended = fleet.wait_task(&copy, &task_id).await;
    let log = fleet.task_log(&copy, &task_id).await;
    assert_eq!(ended["status"], "completed", "{ended}\n{}", log.join("\n"));
    let (copy_primary, _) = primary_and_replicas(&fleet, &copy, 1).await;
    let got = rows(&fleet, &copy_primary, "shop");
    assert_eq!(got, "211:2001", "the copy's own rows, all in its backup");

    // Deleting the source keeps its backups; a new database restores from them.
    let (status, answer) = fleet
        .call("DELETE", &format!("/v1/databases/{db}"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    fleet
        .wait_for("the source database deleted", || async {
            let (status, _) = fleet
                .call("GET", &format!("/v1/databases/{db}"), None)
                .await;
            (status == StatusCode::NOT_FOUND).then_some(())
        })
        .await;
    let stanza = s3
        .root
        .join(&s3.bucket)
        .join(format!("berth/databases/{db}/main/n1/backup/db"));
    assert!(stanza.is_dir(), "{} is kept", stanza.display());
    let again = fleet.db_id("restore-again");
    let mut again_spec = spec("app", &hosts[1..], &s3);
    again_spec["restore_config"] = restore_config(&db, json!({}));
    fleet
        .apply("/v1/databases", &json!({"id": again, "spec": again_spec}))
        .await;
    let (again_primary, _) = primary_and_replicas(&fleet, &again, 1).await;
    let got = rows(&fleet, &again_primary, "app");
    assert!(
        got == "210:1010" || got == "211:3001",
        "the deleted database's rows (row 3001 only if its WAL was archived before the delete): {got}"
    );
}
