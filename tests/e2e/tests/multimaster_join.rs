//! Nodes join and leave a live database (issue 16, item 3, ADR 020), on four hosts with an
//! engine each: a fourth node added to three that hold data is copied from its
//! `source_node` while the others keep writing, ends with every row (those written during
//! its copy too) and receives new writes both ways; removed again, it leaves no
//! subscription or replication slot on the other nodes. Then n1 gets a replica on the fourth
//! host and fails over to it: the other nodes' subscriptions follow the new primary through
//! the failover slot (item 4), both ways, with no copy. Timings are printed, never asserted.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use e2e::Fleet;
use e2e::serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread")]
async fn a_node_joins_a_live_database_and_leaves_no_slot_behind() {
    let fleet = Fleet::start_engine_per_host(4).await;
    let db = fleet.db_id("join");
    let hosts: Vec<String> = (1..=4).map(|i| fleet.host(i)).collect();
    let node = |i: usize| json!({"name": format!("n{}", i + 1), "host_ids": [hosts[i]]});
    let spec = |nodes: Vec<Value>| json!({"spec": {"database_name": "app", "nodes": nodes}});
    let mut create = spec((0..3).map(node).collect());
    create["id"] = json!(db);
    fleet.apply("/v1/databases", &create).await;
    let container =
        |i: usize| Fleet::container_name(&hosts[i], &format!("{db}-n{}-{}", i + 1, hosts[i]));
    let psql = |i: usize, sql: &str| fleet.psql(&container(i), "app", sql);

    // Data on the three nodes: a table with a primary key, one without, and 20,000 rows.
    psql(
        0,
        "CREATE TABLE kv (id bigint PRIMARY KEY, v text NOT NULL, node text NOT NULL)",
    );
    psql(
        0,
        "CREATE TABLE events (at timestamptz NOT NULL DEFAULT now(), what text)",
    );
    for i in 1..3 {
        fleet
            .wait_for(&format!("table kv on n{}", i + 1), || async {
                (psql(i, "SELECT to_regclass('public.events') IS NOT NULL") == "t").then_some(())
            })
            .await;
    }
    psql(
        0,
        "INSERT INTO kv SELECT g, repeat('x', 100), 'n1' FROM generate_series(1, 20000) g",
    );
    psql(1, "INSERT INTO events (what) VALUES ('before the join')");

    // n2 and n3 keep writing while n4 joins: each commit one row of its own key range.
    let writing = Arc::new(AtomicBool::new(true));
    let writers: Vec<_> = [1usize, 2]
        .into_iter()
        .map(|i| {
            let writing = writing.clone();
            let c = container(i);
            let engine = fleet.engine_of_container(&c);
            std::thread::spawn(move || {
                let mut n = 0u64;
                while writing.load(Ordering::Relaxed) {
                    let id = (i as u64 + 1) * 1_000_000 + n;
                    let sql = format!("INSERT INTO kv VALUES ({id}, 'during', 'n{}')", i + 1);
                    if e2e::test_support::psql::psql(engine.as_deref(), &c, "app", &sql).0 {
                        n += 1;
                    }
                }
                n
            })
        })
        .collect();

    let mut four: Vec<Value> = (0..4).map(node).collect();
    four[3]["source_node"] = json!("n2");
    let started = Instant::now();
    let task = fleet
        .apply(&format!("/v1/databases/{db}"), &spec(four))
        .await;
    println!("n4 joined in {:?}", started.elapsed());
    writing.store(false, Ordering::Relaxed);
    let written: Vec<u64> = writers.into_iter().map(|w| w.join().unwrap()).collect();
    println!("rows committed on n2 and n3 during the join: {written:?}");
    let log = fleet.task_log(&db, task["task_id"].as_str().unwrap()).await;
    assert!(
        log.iter().any(|l| l.contains("node n4 joins: copying n2")),
        "{log:#?}"
    );

    // n4 holds everything: the copy, and every row written on n2 and n3 during it.
    let total = 20_000 + written.iter().sum::<u64>();
    let counts = |i: usize| psql(i, "SELECT count(*) FROM kv");
    for i in 0..4 {
        fleet
            .wait_for(&format!("{total} rows on n{}", i + 1), || async {
                (counts(i) == total.to_string()).then_some(())
            })
            .await;
    }
    assert_eq!(psql(3, "SELECT count(*) FROM events"), "1");
    // Its tables replicate both ways: a write on n4 reaches the others, and theirs n4.
    psql(3, "INSERT INTO kv VALUES (4000000, 'from n4', 'n4')");
    psql(0, "INSERT INTO kv VALUES (4000001, 'to n4', 'n1')");
    psql(3, "CREATE TABLE after_join (id int PRIMARY KEY)");
    for i in 0..4 {
        fleet
            .wait_for(&format!("n4's row and table on n{}", i + 1), || async {
                let rows = psql(i, "SELECT count(*) FROM kv WHERE id IN (4000000, 4000001)");
                let table = psql(i, "SELECT to_regclass('public.after_join') IS NOT NULL");
                (rows == "2" && table == "t").then_some(())
            })
            .await;
    }
    for i in 0..4 {
        let subs = psql(
            i,
            "SELECT string_agg(subscription_name || ' ' || status, ',' ORDER BY 1) \
             FROM pglogical.show_subscription_status()",
        );
        assert_eq!(subs.matches("replicating").count(), 3, "n{}: {subs}", i + 1);
    }
    assert_eq!(
        psql(
            3,
            "SELECT coalesce(cardinality(sub_forward_origins), 0) FROM pglogical.subscription \
             WHERE sub_name = 'berth_n4_from_n2'"
        ),
        "0",
        "once n4 subscribes to every node, its source forwards its own changes alone"
    );

    // n4 leaves: no subscription to it and no slot for it remains.
    fleet
        .apply(
            &format!("/v1/databases/{db}"),
            &spec((0..3).map(node).collect()),
        )
        .await;
    for i in 0..3 {
        assert_eq!(
            psql(
                i,
                "SELECT count(*) FROM pglogical.subscription WHERE sub_name LIKE '%n4%'"
            ),
            "0",
            "n{}'s subscriptions",
            i + 1
        );
        assert_eq!(
            psql(
                i,
                "SELECT count(*) FROM pg_replication_slots WHERE slot_type = 'logical'"
            ),
            "2",
            "n{} keeps one slot per other node and none for n4",
            i + 1
        );
        assert_eq!(
            psql(
                i,
                "SELECT count(*) FROM pglogical.show_subscription_status() WHERE status = 'replicating'"
            ),
            "2",
            "n{} still replicates with the two others",
            i + 1
        );
    }
    psql(2, "INSERT INTO kv VALUES (5000000, 'after n4 left', 'n3')");
    for i in 0..3 {
        fleet
            .wait_for(&format!("the last row on n{}", i + 1), || async {
                (psql(i, "SELECT count(*) FROM kv WHERE id = 5000000") == "1").then_some(())
            })
            .await;
    }

    // n1 gets a replica on host-4, which receives pglogical's slots (pg_failover_slots).
    let mut nodes: Vec<Value> = (0..3).map(node).collect();
    nodes[0]["host_ids"] = json!([hosts[0], hosts[3]]);
    fleet
        .apply(&format!("/v1/databases/{db}"), &spec(nodes))
        .await;
    let replica = Fleet::container_name(&hosts[3], &format!("{db}-n1-{}", hosts[3]));
    let (_, took) = fleet
        .wait_for("n1's two pglogical slots on its replica", || async {
            let n = fleet.psql(
                &replica,
                "app",
                // A copied slot is ready once it has caught up: then it is not active.
                "SELECT count(*) FROM pg_replication_slots \
                 WHERE plugin = 'pglogical_output' AND NOT active",
            );
            (n == "2").then_some(())
        })
        .await;
    println!("the failover slots were on the replica after {took:?}");
    let dsn = psql(
        1,
        "SELECT i.if_dsn FROM pglogical.subscription s JOIN pglogical.node_interface i \
         ON i.if_id = s.sub_origin_if WHERE s.sub_name = 'berth_n2_from_n1'",
    );
    assert!(
        dsn.contains(',') && dsn.contains("target_session_attrs=read-write"),
        "n2 dials every instance of n1: {dsn}"
    );

    // The failover: n1's replica is promoted, and replication goes on both ways.
    let failed_over = Instant::now();
    let task = fleet
        .post_ok(
            &format!("/v1/databases/{db}/nodes/n1/failover"),
            &json!({"candidate_instance_id": format!("{db}-n1-{}", hosts[3]), "skip_validation": true}),
        )
        .await;
    let task = fleet
        .wait_task(&db, task["task"]["task_id"].as_str().unwrap())
        .await;
    assert_eq!(task["status"], "completed", "{task}");
    fleet
        .wait_for("n1's new primary accepts writes", || async {
            (fleet.psql(&replica, "app", "SELECT pg_is_in_recovery()") == "f").then_some(())
        })
        .await;
    fleet.psql(
        &replica,
        "app",
        "INSERT INTO kv VALUES (6000000, 'after the failover', 'n1')",
    );
    psql(
        1,
        "INSERT INTO kv VALUES (6000001, 'to the new primary', 'n2')",
    );
    for i in 1..3 {
        fleet
            .wait_for(&format!("n1's new primary's row on n{}", i + 1), || async {
                (psql(i, "SELECT count(*) FROM kv WHERE id = 6000000") == "1").then_some(())
            })
            .await;
    }
    let (_, took) = fleet
        .wait_psql(
            "n2's row on n1's new primary",
            &replica,
            "app",
            "SELECT count(*) FROM kv WHERE id = 6000001",
            |n| n == "1",
        )
        .await;
    println!(
        "replication went on both ways {:?} after the failover ({took:?} for n2's row)",
        failed_over.elapsed()
    );
    let subs = fleet.psql(
        &replica,
        "app",
        "SELECT count(*) FROM pglogical.show_subscription_status() WHERE status = 'replicating'",
    );
    assert_eq!(subs, "2", "n1's new primary subscribes to both others");
}

/// A database that ran with one node, then got a second (a newcomer's trial found its
/// tables, made before any replication existed, in no replication set: the new node had
/// their structure but no rows, and writes to them never left the first node).
#[tokio::test(flavor = "multi_thread")]
async fn a_database_that_ran_alone_shares_its_rows_with_a_node_added_later() {
    let fleet = Fleet::start_engine_per_host(2).await;
    let db = fleet.db_id("alone");
    let hosts: Vec<String> = (1..=2).map(|i| fleet.host(i)).collect();
    let node = |i: usize| json!({"name": format!("n{}", i + 1), "host_ids": [hosts[i]]});
    let spec = |nodes: Vec<Value>| json!({"spec": {"database_name": "app", "nodes": nodes}});
    let mut create = spec(vec![node(0)]);
    create["id"] = json!(db);
    fleet.apply("/v1/databases", &create).await;
    let container =
        |i: usize| Fleet::container_name(&hosts[i], &format!("{db}-n{}-{}", i + 1, hosts[i]));
    let psql = |i: usize, sql: &str| fleet.psql(&container(i), "app", sql);
    psql(0, "CREATE TABLE items (id int PRIMARY KEY, v text)");
    psql(0, "CREATE TABLE notes (v text)");
    psql(
        0,
        "INSERT INTO items SELECT g, 'alone' FROM generate_series(1, 500) g",
    );
    psql(0, "INSERT INTO notes VALUES ('alone')");

    let task = fleet
        .apply(
            &format!("/v1/databases/{db}"),
            &spec(vec![node(0), node(1)]),
        )
        .await;
    let log = fleet.task_log(&db, task["task_id"].as_str().unwrap()).await;
    assert!(
        log.iter().any(|l| l.contains("node n2 joins: copying n1")),
        "{log:#?}"
    );
    assert_eq!(psql(1, "SELECT count(*) FROM items"), "500");
    assert_eq!(psql(1, "SELECT count(*) FROM notes"), "1");
    psql(0, "INSERT INTO items VALUES (501, 'after')");
    psql(0, "INSERT INTO notes VALUES ('after')");
    psql(1, "INSERT INTO items VALUES (502, 'from n2')");
    for i in 0..2 {
        fleet
            .wait_for(&format!("every row on n{}", i + 1), || async {
                let items = psql(i, "SELECT count(*) FROM items");
                let notes = psql(i, "SELECT count(*) FROM notes");
                (items == "502" && notes == "2").then_some(())
            })
            .await;
    }
}
