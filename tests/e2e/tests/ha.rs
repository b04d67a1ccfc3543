//! High availability of a node's primary (ADR 016): Patroni runs each node's instances, a
//! spec change hands the primary over before removing it, and a lost primary's host is
//! replaced by a replica that Patroni promotes.

use e2e::Fleet;
use e2e::serde_json::{Value, json};

fn instances(d: &Value) -> Vec<Value> {
    d["instances"].as_array().cloned().unwrap_or_default()
}

/// The case: `n1` on host-1 (primary) and host-2, a row written, then `n1` on
/// host-2 alone. Afterwards the only instance is on host-2, accepts writes, and has every
/// row committed before the update.
async fn the_primary_moves_with_its_rows(fleet: Fleet) {
    let (h1, h2) = (fleet.host(1), fleet.host(2));
    let db = fleet.db_id("move");
    let spec = |hosts: Value| json!({"database_name": "app", "nodes": [{"name": "n1", "host_ids": hosts}]});
    let created = fleet
        .apply(
            "/v1/databases",
            &json!({"id": db, "spec": spec(json!([h1, h2]))}),
        )
        .await;
    let entries = fleet
        .get(&format!(
            "/v1/databases/{db}/tasks/{}/log?limit=1000",
            created["task_id"].as_str().unwrap()
        ))
        .await;
    for e in entries["entries"].as_array().unwrap() {
        println!(
            "{} {}",
            e["timestamp"].as_str().unwrap_or(""),
            e["message"].as_str().unwrap_or("")
        );
    }
    let (old, new) = (format!("{db}-n1-{h1}"), format!("{db}-n1-{h2}"));
    let d = fleet.database(&db).await;
    let role = |d: &Value, id: &str| {
        instances(d)
            .into_iter()
            .find(|i| i["id"] == id)
            .map(|i| i["role"].clone())
    };
    assert_eq!(role(&d, &old), Some(json!("primary")), "{d}");
    assert_eq!(role(&d, &new), Some(json!("replica")), "{d}");
    let primary = Fleet::container_name(&h1, &old);
    fleet.psql(
        &primary,
        "app",
        "CREATE TABLE kept (id int PRIMARY KEY); INSERT INTO kept SELECT generate_series(1, 1000)",
    );

    let started = std::time::Instant::now();
    let resp = fleet
        .post_ok(
            &format!("/v1/databases/{db}"),
            &json!({"spec": spec(json!([h2]))}),
        )
        .await;
    let task_id = resp["task"]["task_id"].as_str().unwrap().to_string();
    let task = fleet.wait_task(&db, &task_id).await;
    let log = fleet.task_log(&db, &task_id).await;
    println!("moved in {:?}:\n{}", started.elapsed(), log.join("\n"));
    assert_eq!(task["status"], "completed", "{task}");
    let at = |needle: &str| {
        log.iter()
            .position(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no {needle:?} in the log"))
    };
    assert!(at("switching node n1's primary over") < at("removing postgres"));

    let d = fleet.database(&db).await;
    let left = instances(&d);
    assert_eq!(left.len(), 1, "{d}");
    assert_eq!(left[0]["id"], new.as_str());
    assert_eq!(left[0]["host_id"], h2.as_str());
    assert_eq!(left[0]["role"], "primary", "{d}");
    assert_eq!(left[0]["state"], "available", "{d}");
    let only = Fleet::container_name(&h2, &new);
    // Patroni may still be promoting or restarting it when the task ends; a bounded wait.
    let bound = fleet.bound("host-2's instance to accept writes");
    loop {
        let out = fleet.psql_status(&only, "app", "INSERT INTO kept VALUES (1001)");
        if out.0 {
            break;
        }
        if bound.elapsed() > std::time::Duration::from_secs(120) {
            let logs = fleet.docker_on_status(&h2, &["logs", "--tail", "80", &only]);
            let d = fleet.database(&db).await;
            panic!(
                "host-2's instance does not accept writes: {}\n{d}\n{}",
                out.1, logs.1
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    assert_eq!(
        fleet.psql(&only, "app", "SELECT count(*) FROM kept"),
        "1001"
    );
    assert_eq!(fleet.psql(&only, "app", "SELECT pg_is_in_recovery()"), "f");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_primary_moves_with_its_rows_on_one_engine() {
    the_primary_moves_with_its_rows(Fleet::start(2).await).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_primary_moves_with_its_rows_across_engines() {
    the_primary_moves_with_its_rows(Fleet::start_engine_per_host(2).await).await;
}

/// Removing a host the primary runs on, with nothing that could take over, is refused.
#[tokio::test(flavor = "multi_thread")]
async fn a_spec_that_would_lose_the_primary_is_refused() {
    let mut fleet = Fleet::start(2).await;
    let (h1, h2) = (fleet.host(1), fleet.host(2));
    let db = fleet.db_id("lose");
    fleet
        .apply(
            "/v1/databases",
            &json!({"id": db, "spec": {"database_name": "app",
                "nodes": [{"name": "n1", "host_ids": [h1]}]}}),
        )
        .await;
    // host-2's agent stops: a new instance there could not be created.
    fleet.kill_agent(&h2);
    fleet
        .wait_for("host-2 unreachable", || async {
            let host = fleet.get(&format!("/v1/hosts/{h2}")).await;
            (host["status"]["state"] == "unreachable").then_some(())
        })
        .await;
    let (status, body) = fleet
        .call(
            "POST",
            &format!("/v1/databases/{db}"),
            Some(&json!({"spec": {"database_name": "app",
                "nodes": [{"name": "n1", "host_ids": [h2]}]}})),
        )
        .await;
    assert_eq!(status.as_u16(), 409, "{body}");
    assert_eq!(body["errors"][0]["path"], "spec.nodes[0]", "{body}");
}

/// When a round of the checker started, and which instances accepted its write.
type Round = (std::time::Instant, Vec<String>);

/// Which instances accepted a write at each round of a checker that writes to every
/// instance of a node, one after the other, as fast as `docker exec` allows.
struct Checker {
    rounds: std::sync::Arc<std::sync::Mutex<Vec<Round>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Checker {
    /// `targets`: (name, engine DOCKER_HOST, container).
    fn start(targets: Vec<(String, Option<String>, String)>) -> Checker {
        let rounds = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (r, s) = (rounds.clone(), stop.clone());
        let task = tokio::task::spawn_blocking(move || {
            while !s.load(std::sync::atomic::Ordering::Relaxed) {
                let at = std::time::Instant::now();
                let mut writable = Vec::new();
                for (name, engine, container) in &targets {
                    let sql = format!(
                        "SET statement_timeout = '2s'; INSERT INTO checks (who) VALUES ('{name}')"
                    );
                    if test_support::psql::psql(engine.as_deref(), container, "app", &sql).0 {
                        writable.push(name.clone());
                    }
                }
                r.lock().unwrap().push((at, writable));
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        });
        Checker { rounds, stop, task }
    }

    /// The first round, after `since`, in which `name` accepted a write.
    fn first_write(&self, name: &str, since: std::time::Instant) -> Option<std::time::Instant> {
        self.rounds
            .lock()
            .unwrap()
            .iter()
            .find(|(at, w)| *at >= since && w.iter().any(|n| n == name))
            .map(|(at, _)| *at)
    }

    /// Whether `name` accepted a write in the last round.
    fn writable_now(&self, name: &str) -> bool {
        self.rounds
            .lock()
            .unwrap()
            .last()
            .is_some_and(|(_, w)| w.iter().any(|n| n == name))
    }

    async fn finish(self) -> Vec<Round> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.task.await.unwrap();
        std::sync::Arc::try_unwrap(self.rounds)
            .unwrap()
            .into_inner()
            .unwrap()
    }
}

/// The primary's host is cut off: Patroni promotes the replica, which accepts writes; a
/// checker writing to both instances throughout never sees two of them accept writes in one
/// round; once the host is back, the old primary rejoins as a replica.
#[tokio::test(flavor = "multi_thread")]
async fn a_lost_primary_is_replaced_and_rejoins_as_a_replica() {
    let fleet = Fleet::start_engine_per_host(2).await;
    let (h1, h2) = (fleet.host(1), fleet.host(2));
    let db = fleet.db_id("failover");
    fleet
        .apply(
            "/v1/databases",
            &json!({"id": db, "spec": {"database_name": "app",
                "nodes": [{"name": "n1", "host_ids": [h1, h2]}]}}),
        )
        .await;
    let (i1, i2) = (format!("{db}-n1-{h1}"), format!("{db}-n1-{h2}"));
    let (c1, c2) = (
        Fleet::container_name(&h1, &i1),
        Fleet::container_name(&h2, &i2),
    );
    fleet.psql(
        &c1,
        "app",
        "CREATE TABLE checks (id bigserial PRIMARY KEY, who text, at timestamptz DEFAULT now())",
    );
    fleet
        .wait_for("the table on the replica", || async {
            fleet
                .psql_status(&c2, "app", "SELECT count(*) FROM checks")
                .0
                .then_some(())
        })
        .await;
    let checker = Checker::start(vec![
        ("host-1".into(), fleet.engine(&h1), c1.clone()),
        ("host-2".into(), fleet.engine(&h2), c2.clone()),
    ]);
    fleet
        .wait_for("the checker writing to host-1", || async {
            checker.writable_now("host-1").then_some(())
        })
        .await;

    let cut = std::time::Instant::now();
    fleet.cut_host(&h1);
    let (promoted, _) = fleet
        .wait_for("host-2 accepting writes", || async {
            checker.first_write("host-2", cut)
        })
        .await;
    println!(
        "first write accepted on host-2 {:?} after the cut",
        promoted - cut
    );
    fleet
        .wait_for("host-1 refusing writes (Patroni demoted it)", || async {
            (!checker.writable_now("host-1")).then_some(())
        })
        .await;
    let d = fleet.database(&db).await;
    let role = |d: &Value, id: &str| {
        instances(d)
            .into_iter()
            .find(|i| i["id"] == id)
            .map(|i| (i["role"].clone(), i["state"].clone()))
    };
    assert_eq!(role(&d, &i2).map(|r| r.0), Some(json!("primary")), "{d}");

    fleet.heal_host(&h1);
    let healed = std::time::Instant::now();
    fleet
        .wait_for("host-1 back as a replica", || async {
            let d = fleet.database(&db).await;
            let replica = role(&d, &i1) == Some((json!("replica"), json!("available")));
            let recovering = fleet
                .psql_status(&c1, "app", "SELECT pg_is_in_recovery()")
                .1
                == "t";
            (replica && recovering).then_some(())
        })
        .await;
    println!(
        "host-1 rejoined as a replica {:?} after the heal",
        healed.elapsed()
    );
    // It follows the new primary: a row written there reaches it.
    fleet.psql(
        &c2,
        "app",
        "INSERT INTO checks (who) VALUES ('after the heal')",
    );
    fleet
        .wait_for("the new primary's row on host-1", || async {
            (fleet
                .psql_status(
                    &c1,
                    "app",
                    "SELECT count(*) FROM checks WHERE who = 'after the heal'",
                )
                .1
                == "1")
                .then_some(())
        })
        .await;

    let rounds = checker.finish().await;
    let both: Vec<_> = rounds.iter().filter(|(_, w)| w.len() > 1).collect();
    assert!(
        both.is_empty(),
        "{} of {} rounds saw two instances accept writes",
        both.len(),
        rounds.len()
    );
    println!(
        "{} checker rounds, never two writable instances",
        rounds.len()
    );
}
