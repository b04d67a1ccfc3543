//! The operations on a node's Postgres instances (issue 15's item 4), on hosts with engines
//! of their own: switchover under a steady writer (and a service that follows it through
//! its connection string), failover, restart, stop and start, each a task with a log, and
//! each bad input refused with nothing changed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use e2e::Fleet;
use e2e::serde_json::{Value, json};

fn instance<'a>(d: &'a Value, id: &str) -> &'a Value {
    d["instances"]
        .as_array()
        .and_then(|a| a.iter().find(|i| i["id"] == id))
        .unwrap_or_else(|| panic!("no instance {id} in {d}"))
}

/// Submits an operation that must be accepted and waits for its task; returns the task and
/// its log.
async fn operate(
    fleet: &Fleet,
    db: &str,
    path: &str,
    body: Option<&Value>,
) -> (Value, Vec<String>) {
    let (status, resp) = fleet
        .call("POST", &format!("/v1/databases/{db}/{path}"), body)
        .await;
    assert_eq!(status.as_u16(), 200, "POST {path}: {resp}");
    let task_id = resp["task"]["task_id"].as_str().unwrap().to_string();
    let task = fleet.wait_task(db, &task_id).await;
    let log = fleet.task_log(db, &task_id).await;
    println!("{path}: {}\n  {}", task["status"], log.join("\n  "));
    assert_eq!(task["status"], "completed", "{task}\n{}", log.join("\n"));
    (task, log)
}

/// One INSERT of a steady writer: its number, when it was tried, and whether (and on
/// which instance) it committed.
struct Write {
    id: u64,
    at: Instant,
    committed_on: Option<String>,
}

/// Writes numbered rows to whichever instance of the node accepts them, one after the
/// other, as a client with a multi-host connection string would.
struct Writer {
    writes: Arc<Mutex<Vec<Write>>>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Writer {
    /// `targets`: (name, engine DOCKER_HOST, container).
    fn start(targets: Vec<(String, Option<String>, String)>) -> Writer {
        let writes = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (w, s) = (writes.clone(), stop.clone());
        let task = tokio::task::spawn_blocking(move || {
            let mut id = 0;
            while !s.load(Ordering::Relaxed) {
                id += 1;
                let at = Instant::now();
                let sql = format!("SET statement_timeout = '2s'; INSERT INTO steady VALUES ({id})");
                let committed_on = targets.iter().find_map(|(name, engine, container)| {
                    test_support::psql::psql(engine.as_deref(), container, "app", &sql)
                        .0
                        .then(|| name.clone())
                });
                w.lock().unwrap().push(Write {
                    id,
                    at,
                    committed_on,
                });
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        });
        Writer { writes, stop, task }
    }

    fn committed_on(&self, name: &str, since: Instant) -> bool {
        self.writes
            .lock()
            .unwrap()
            .iter()
            .any(|w| w.at >= since && w.committed_on.as_deref() == Some(name))
    }

    async fn finish(self) -> Vec<Write> {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap();
        Arc::try_unwrap(self.writes)
            .ok()
            .unwrap()
            .into_inner()
            .unwrap()
    }
}

/// A switchover while a writer commits a row every ~50 ms: every committed row is on the
/// new primary, the only failed commits are those between the request and the new
/// primary's first commit, and the task log says each step.
#[tokio::test(flavor = "multi_thread")]
async fn a_switchover_under_a_steady_writer_keeps_every_committed_row() {
    let fleet = Fleet::start_engine_per_host(2).await;
    let (h1, h2) = (fleet.host(1), fleet.host(2));
    let db = fleet.db_id("switch");
    fleet
        .apply(
            "/v1/databases",
            &json!({"id": db, "spec": {"database_name": "app",
                "nodes": [{"name": "n1", "host_ids": [h1, h2]}],
                // A service pinned to the primary by its connection string, which lists
                // both instances: it must follow the switchover on its own.
                "services": [{"service_id": "pinned", "service_type": "mcp",
                    "version": "latest", "host_ids": [h1],
                    "database_connection": {"target_session_attrs": "primary"},
                    "config": {"llm_enabled": false}}]}}),
        )
        .await;
    let (i1, i2) = (format!("{db}-n1-{h1}"), format!("{db}-n1-{h2}"));
    let (c1, c2) = (
        Fleet::container_name(&h1, &i1),
        Fleet::container_name(&h2, &i2),
    );
    let service_sessions = |container: &str| {
        fleet
            .psql_status(
                container,
                "postgres",
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE application_name = 'berth-fixture-service'",
            )
            .1
    };
    assert_eq!(
        service_sessions(&c1),
        "1",
        "the service's session is on the primary"
    );
    fleet.psql(&c1, "app", "CREATE TABLE steady (id bigint PRIMARY KEY)");
    let writer = Writer::start(vec![
        (i1.clone(), fleet.engine(&h1), c1.clone()),
        (i2.clone(), fleet.engine(&h2), c2.clone()),
    ]);
    let began = Instant::now();
    fleet
        .wait_for("the writer committing on the primary", || async {
            writer.committed_on(&i1, began).then_some(())
        })
        .await;

    let requested = Instant::now();
    let (_, log) = operate(
        &fleet,
        &db,
        "nodes/n1/switchover",
        Some(&json!({"candidate_instance_id": i2})),
    )
    .await;
    assert!(
        log.iter()
            .any(|l| l.starts_with("task started: switchover")),
        "{log:?}"
    );
    assert!(
        log.iter()
            .any(|l| l.contains(&format!("Patroni names {i2} the primary"))),
        "{log:?}"
    );
    fleet
        .wait_for("the writer committing on the new primary", || async {
            writer.committed_on(&i2, requested).then_some(())
        })
        .await;
    let writes = writer.finish().await;
    let (_, took) = fleet
        .wait_for(
            "the service's session on the new primary, and its health",
            || async {
                let services = fleet.service_instances(&db).await;
                let ready = services
                    .values()
                    .all(|s| s["state"] == "running" && s["status"]["ready"] == true);
                (ready && service_sessions(&c2) == "1").then_some(())
            },
        )
        .await;
    println!("the service reconnected to the new primary {took:?} after the switchover");

    let d = fleet.database(&db).await;
    assert_eq!(instance(&d, &i2)["role"], "primary", "{d}");
    assert_eq!(instance(&d, &i1)["role"], "replica", "{d}");
    let committed: Vec<u64> = writes
        .iter()
        .filter(|w| w.committed_on.is_some())
        .map(|w| w.id)
        .collect();
    let on_new: Vec<u64> = fleet
        .psql(&c2, "app", "SELECT id FROM steady ORDER BY id")
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    assert_eq!(on_new, committed, "every committed row, and only those");
    let first_on_new = writes
        .iter()
        .find(|w| w.at >= requested && w.committed_on.as_deref() == Some(i2.as_str()))
        .map(|w| w.at)
        .unwrap();
    let failed: Vec<&Write> = writes.iter().filter(|w| w.committed_on.is_none()).collect();
    assert!(
        failed
            .iter()
            .all(|w| w.at >= requested && w.at < first_on_new),
        "a commit failed outside the switchover window: {:?}",
        failed.iter().map(|w| w.id).collect::<Vec<_>>()
    );
    println!(
        "{} commits, {} failed within the {:?} window",
        committed.len(),
        failed.len(),
        first_on_new - requested
    );
}

/// What a refused request must leave alone: the database's record and spec, and its tasks.
async fn stored(fleet: &Fleet, db: &str) -> (Value, Value, Value) {
    let d = fleet.database(db).await;
    let tasks = fleet.get(&format!("/v1/databases/{db}/tasks")).await;
    (
        d["updated_at"].clone(),
        d["spec"].clone(),
        tasks["tasks"].clone(),
    )
}

/// Restart, failover, stop and start on a node of three instances, and every bad input the
/// issue names refused with a 4xx naming it while nothing changes.
#[tokio::test(flavor = "multi_thread")]
async fn each_operation_is_a_task_and_bad_input_changes_nothing() {
    let fleet = Fleet::start_engine_per_host(3).await;
    let (h1, h2, h3) = (fleet.host(1), fleet.host(2), fleet.host(3));
    let db = fleet.db_id("ops");
    fleet
        .apply(
            "/v1/databases",
            &json!({"id": db, "spec": {"database_name": "app",
                "nodes": [{"name": "n1", "host_ids": [h1, h2, h3]}]}}),
        )
        .await;
    let [i1, i2, i3] = [&h1, &h2, &h3].map(|h| format!("{db}-n1-{h}"));
    let c1 = Fleet::container_name(&h1, &i1);
    fleet.psql(
        &c1,
        "app",
        "CREATE TABLE t (id int); INSERT INTO t VALUES (1)",
    );

    // Bad input: each refused naming the field, and the database and its tasks unchanged.
    let before = stored(&fleet, &db).await;
    let past = "2001-01-01T00:00:00Z";
    let cases: &[(&str, Value, u16, &str)] = &[
        ("nodes/n9/switchover", json!({}), 404, ""),
        ("instances/nope/restart", json!({}), 404, ""),
        (
            "nodes/n1/switchover",
            json!({"candidate_instance_id": i1}),
            400,
            "candidate_instance_id",
        ),
        (
            "nodes/n1/switchover",
            json!({"scheduled_at": past}),
            400,
            "scheduled_at",
        ),
        (
            &format!("instances/{i2}/restart"),
            json!({"scheduled_at": past}),
            400,
            "scheduled_at",
        ),
        ("nodes/n1/failover", json!({}), 409, "skip_validation"),
        (
            "nodes/n1/failover",
            json!({"candidate_instance_id": "nope", "skip_validation": true}),
            400,
            "candidate_instance_id",
        ),
    ];
    for (path, body, status, field) in cases {
        let (got, resp) = fleet
            .call("POST", &format!("/v1/databases/{db}/{path}"), Some(body))
            .await;
        assert_eq!(got.as_u16(), *status, "{path} {body}: {resp}");
        if !field.is_empty() {
            assert_eq!(resp["errors"][0]["path"], *field, "{path}: {resp}");
        }
    }
    assert_eq!(
        stored(&fleet, &db).await,
        before,
        "a refused operation changed something"
    );

    // Restart: Patroni restarts the replica's Postgres; it stays a replica.
    let (_, log) = operate(&fleet, &db, &format!("instances/{i2}/restart"), None).await;
    assert!(
        log.iter()
            .any(|l| l.contains("Patroni restarted its Postgres")),
        "{log:?}"
    );

    // Failover (the primary is healthy: only with skip_validation) to host-3.
    let (_, log) = operate(
        &fleet,
        &db,
        "nodes/n1/failover",
        Some(&json!({"candidate_instance_id": i3, "skip_validation": true})),
    )
    .await;
    assert!(
        log.iter()
            .any(|l| l.contains(&format!("Patroni promoted {i3}"))),
        "{log:?}"
    );
    let c3 = Fleet::container_name(&h3, &i3);
    fleet
        .wait_for("host-3's instance accepting writes", || async {
            fleet
                .psql_status(&c3, "app", "INSERT INTO t VALUES (3)")
                .0
                .then_some(())
        })
        .await;

    // Stop host-1's instance (now a replica): no container, its data kept. Meanwhile no
    // other operation is accepted.
    let (status, resp) = fleet
        .call(
            "POST",
            &format!("/v1/databases/{db}/instances/{i1}/stop-instance"),
            None,
        )
        .await;
    assert_eq!(status.as_u16(), 200, "{resp}");
    let stop_task = resp["task"]["task_id"].as_str().unwrap().to_string();
    let (status, busy) = fleet
        .call(
            "POST",
            &format!("/v1/databases/{db}/instances/{i3}/restart"),
            None,
        )
        .await;
    assert_eq!(status.as_u16(), 409, "{busy}");
    assert_eq!(busy["name"], "operation_already_in_progress", "{busy}");
    let task = fleet.wait_task(&db, &stop_task).await;
    assert_eq!(task["status"], "completed", "{task}");
    let d = fleet.database(&db).await;
    assert_eq!(instance(&d, &i1)["state"], "stopped", "{d}");
    assert_eq!(d["state"], "available", "{d}");
    let (running, _) = fleet.docker_on_status(&h1, &["inspect", &c1]);
    assert!(!running, "host-1's container is still there");
    assert!(
        fleet.instance_dir(&h1, &i1).join("data").exists(),
        "the stopped instance's data directory is kept"
    );

    // Stop host-2's too; host-3's is then the node's last running instance.
    operate(&fleet, &db, &format!("instances/{i2}/stop-instance"), None).await;
    let (status, refused) = fleet
        .call(
            "POST",
            &format!("/v1/databases/{db}/instances/{i3}/stop-instance"),
            None,
        )
        .await;
    assert_eq!(status.as_u16(), 409, "{refused}");
    assert_eq!(refused["errors"][0]["path"], "force", "{refused}");

    // Forced, the node stops whole. Its primary, host-3's, has a row the replicas stopped
    // before: only it may start first, else Patroni would promote a replica without it.
    fleet.psql(&c3, "app", "INSERT INTO t VALUES (4)");
    operate(
        &fleet,
        &db,
        &format!("instances/{i3}/stop-instance?force=true"),
        None,
    )
    .await;
    let d = fleet.database(&db).await;
    assert_eq!(instance(&d, &i3)["state"], "stopped", "{d}");
    assert_eq!(
        instance(&d, &i3)["role"],
        "primary",
        "the node's last primary: {d}"
    );
    let (status, refused) = fleet
        .call(
            "POST",
            &format!("/v1/databases/{db}/instances/{i1}/start-instance"),
            None,
        )
        .await;
    assert_eq!(status.as_u16(), 409, "{refused}");
    assert_eq!(refused["errors"][0]["path"], "force", "{refused}");
    assert!(
        refused["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains(&i3),
        "names the instance to start first: {refused}"
    );

    // The last primary first, then the others: replicas of it, with every row.
    for i in [&i3, &i1, &i2] {
        operate(&fleet, &db, &format!("instances/{i}/start-instance"), None).await;
    }
    fleet
        .wait_for("both back as streaming replicas", || async {
            let d = fleet.database(&db).await;
            let back = [&i1, &i2].iter().all(|i| {
                let i = instance(&d, i);
                i["role"] == "replica" && i["state"] == "available"
            });
            back.then_some(())
        })
        .await;
    fleet
        .wait_for("host-3's rows on host-1", || async {
            (fleet.psql_status(&c1, "app", "SELECT count(*) FROM t").1 == "3").then_some(())
        })
        .await;
    let d = fleet.database(&db).await;
    assert_eq!(instance(&d, &i3)["role"], "primary", "{d}");
    assert_eq!(d["state"], "available", "{d}");

    // A stopped instance that a spec drops goes; added again, it is a new instance that
    // runs, not a stopped one. A spec change waits while an operation runs.
    operate(&fleet, &db, &format!("instances/{i2}/stop-instance"), None).await;
    let spec = |hosts: Value| json!({"spec": {"database_name": "app", "nodes": [{"name": "n1", "host_ids": hosts}]}});
    fleet
        .apply(&format!("/v1/databases/{db}"), &spec(json!([h1, h3])))
        .await;
    let (status, resp) = fleet
        .call(
            "POST",
            &format!("/v1/databases/{db}/instances/{i1}/restart"),
            None,
        )
        .await;
    assert_eq!(status.as_u16(), 200, "{resp}");
    let (status, busy) = fleet
        .call(
            "POST",
            &format!("/v1/databases/{db}"),
            Some(&spec(json!([h1, h2, h3]))),
        )
        .await;
    assert_eq!(status.as_u16(), 409, "{busy}");
    assert_eq!(busy["name"], "operation_already_in_progress", "{busy}");
    fleet
        .wait_task(&db, resp["task"]["task_id"].as_str().unwrap())
        .await;
    fleet
        .apply(&format!("/v1/databases/{db}"), &spec(json!([h1, h2, h3])))
        .await;
    fleet
        .wait_for("host-2's new instance running as a replica", || async {
            let d = fleet.database(&db).await;
            let i = instance(&d, &i2);
            (i["role"] == "replica" && i["state"] == "available").then_some(())
        })
        .await;
}
