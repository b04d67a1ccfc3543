//! A node on two hosts: a primary and a streaming replica that serves what the primary wrote.

use e2e::Fleet;
use e2e::serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn a_node_on_two_hosts_replicates_from_its_primary() {
    let fleet = Fleet::start(2).await;
    let (h1, h2) = (fleet.host(1), fleet.host(2));
    let db = fleet.db_id("replica");
    let started = std::time::Instant::now();
    fleet
        .apply(
            "/v1/databases",
            &json!({"id": db, "spec": {
                "database_name": "app",
                "nodes": [{"name": "n1", "host_ids": [h1, h2]}]
            }}),
        )
        .await;
    println!("primary and replica converged in {:?}", started.elapsed());

    let d = fleet.database(&db).await;
    assert_eq!(d["state"], "available", "{d}");
    let instances = d["instances"].as_array().expect("instances");
    assert_eq!(instances.len(), 2, "{d}");
    let find = |role: &str| {
        let matching: Vec<_> = instances.iter().filter(|i| i["role"] == role).collect();
        assert_eq!(matching.len(), 1, "one {role} expected: {d}");
        matching[0].clone()
    };
    let (primary, replica) = (find("primary"), find("replica"));
    for (instance, host) in [(&primary, &h1), (&replica, &h2)] {
        assert_eq!(instance["host_id"], host.as_str(), "{instance}");
        assert_eq!(instance["node_name"], "n1", "{instance}");
        assert_eq!(instance["state"], "available", "{instance}");
        assert_eq!(
            instance["id"],
            format!("{db}-n1-{host}").as_str(),
            "{instance}"
        );
    }

    let primary_pg = Fleet::container_name(&h1, &format!("{db}-n1-{h1}"));
    let replica_pg = Fleet::container_name(&h2, &format!("{db}-n1-{h2}"));
    assert_eq!(
        fleet.psql(&primary_pg, "app", "SELECT pg_is_in_recovery()"),
        "f"
    );
    assert_eq!(
        fleet.psql(&replica_pg, "app", "SELECT pg_is_in_recovery()"),
        "t"
    );

    fleet.psql(
        &primary_pg,
        "app",
        "CREATE TABLE replicated (id int PRIMARY KEY, note text); \
         INSERT INTO replicated VALUES (1, 'written on the primary'), (2, 'second row')",
    );
    let (_, took) = fleet
        .wait_for("the rows on the replica", || async {
            // Ask for the table first: a query naming a table not yet replayed would fail.
            let table = "SELECT to_regclass('public.replicated') IS NOT NULL";
            let present = fleet.psql(&replica_pg, "app", table) == "t"
                && fleet.psql(&replica_pg, "app", "SELECT count(*) FROM replicated") == "2";
            present.then_some(())
        })
        .await;
    println!("rows reached the replica after {took:?}");
    assert_eq!(
        fleet.psql(
            &replica_pg,
            "app",
            "SELECT string_agg(id || ':' || note, ',' ORDER BY id) FROM replicated"
        ),
        "1:written on the primary,2:second row"
    );
}
