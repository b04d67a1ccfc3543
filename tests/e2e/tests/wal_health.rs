//! WAL health on a Postgres instance (issue 17's WAL health item): an inactive replication
//! slot that holds back more than four times `max_wal_size` shows as critical warnings
//! naming the slot, and the instance turns `degraded`; once the slot is dropped and a
//! checkpoint recycles the WAL, the warnings go and the instance is `available` again.

use e2e::Fleet;
use e2e::serde_json::{Value, json};

fn postgres(d: &Value) -> Value {
    d["instances"][0].clone()
}

fn codes(i: &Value) -> Vec<(String, String)> {
    i["warnings"]
        .as_array()
        .map(|w| {
            w.iter()
                .map(|w| {
                    (
                        w["code"].as_str().unwrap_or("").to_string(),
                        w["level"].as_str().unwrap_or("").to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_leaked_replication_slot_degrades_the_instance_until_it_is_dropped() {
    let fleet = Fleet::start(1).await;
    let h1 = fleet.host(1);
    let db = fleet.db_id("wal");
    fleet
        .apply(
            "/v1/databases",
            &json!({"id": db, "spec": {"database_name": "app",
                "nodes": [{"name": "n1", "host_ids": [h1]}]}}),
        )
        .await;
    let c = Fleet::container_name(&h1, &format!("{db}-n1-{h1}"));
    let (_, took) = fleet
        .wait_seen("a first WAL report", || async {
            let i = postgres(&fleet.database(&db).await);
            i["wal"]["pg_wal_bytes"]
                .is_u64()
                .then_some(())
                .ok_or_else(|| i.to_string())
        })
        .await;
    println!("first WAL report after {took:?}");
    let i = postgres(&fleet.database(&db).await);
    assert!(codes(&i).is_empty(), "a new database has no warning: {i}");

    // A small max_wal_size and no wal_keep_size, so that a test can fill four times what
    // pg_wal should hold; a slot that reserves WAL at once, and that nothing reads.
    // One statement per call: ALTER SYSTEM refuses to run inside psql -c's transaction.
    fleet.psql(&c, "app", "ALTER SYSTEM SET min_wal_size = '32MB'");
    fleet.psql(&c, "app", "ALTER SYSTEM SET max_wal_size = '32MB'");
    fleet.psql(&c, "app", "ALTER SYSTEM SET wal_keep_size = 0");
    fleet.psql(&c, "app", "SELECT pg_reload_conf()");
    fleet.psql(
        &c,
        "app",
        "SELECT pg_create_physical_replication_slot('leaked', true)",
    );
    fleet.psql(
        &c,
        "app",
        "CREATE TABLE filler AS SELECT g, repeat('x', 200) AS pad FROM generate_series(1, 1000000) g",
    );
    fleet.psql(&c, "app", "CHECKPOINT");
    let (i, took) = fleet
        .wait_seen("the instance degraded by the leaked slot", || async {
            // pg_wal also holds segments from before the slot existed, so a check made
            // while the table is written can find pg_wal critical and the slot not yet:
            // wait for the slot's own warning, not for the first degraded state.
            let i = postgres(&fleet.database(&db).await);
            let slot_critical =
                codes(&i).contains(&("inactive_replication_slot".into(), "critical".into()));
            if i["state"] == "degraded" && slot_critical {
                Ok(i)
            } else {
                Err(i.to_string())
            }
        })
        .await;
    println!(
        "degraded {took:?} after the WAL was written: {}",
        i["warnings"]
    );
    let found = codes(&i);
    assert!(
        found.contains(&("inactive_replication_slot".into(), "critical".into())),
        "{found:?}"
    );
    assert!(
        found.contains(&("pg_wal_size".into(), "critical".into())),
        "{found:?}"
    );
    let slot_warning = i["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["code"] == "inactive_replication_slot")
        .unwrap();
    assert!(
        slot_warning["message"].as_str().unwrap().contains("leaked"),
        "{slot_warning}"
    );
    assert_eq!(i["wal"]["inactive_slots"][0]["slot_name"], "leaked", "{i}");

    fleet.psql(&c, "app", "SELECT pg_drop_replication_slot('leaked')");
    fleet.psql(&c, "app", "CHECKPOINT");
    fleet.psql(&c, "app", "SELECT pg_switch_wal()");
    fleet.psql(&c, "app", "CHECKPOINT");
    let (i, took) = fleet
        .wait_seen("the instance available again", || async {
            let i = postgres(&fleet.database(&db).await);
            if i["state"] == "available" {
                Ok(i)
            } else {
                Err(i.to_string())
            }
        })
        .await;
    println!(
        "available {took:?} after the slot was dropped: {}",
        i["wal"]
    );
    let left = codes(&i);
    assert!(
        left.iter()
            .all(|(code, level)| level != "critical" && code != "inactive_replication_slot"),
        "{left:?}"
    );
}
