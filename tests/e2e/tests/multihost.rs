//! A fleet whose hosts each have their own network namespace, address and Docker engine:
//! nothing but host addresses and published ports connects them, and every Postgres
//! connection that crosses hosts is TLS.

use e2e::Fleet;
use e2e::serde_json::{Value, json};

fn instance<'a>(d: &'a Value, id: &str) -> &'a Value {
    d["instances"]
        .as_array()
        .and_then(|a| a.iter().find(|i| i["id"] == id))
        .unwrap_or_else(|| panic!("no instance {id} in {d}"))
}

/// The fleet-internal address of a host.
fn address(fleet: &Fleet, host: &str) -> String {
    fleet.net_host(host).expect("a net host").address.clone()
}

/// The TLS flag of every client session of `application_name` on a Postgres instance, with
/// the client address: (client address, ssl).
fn sessions(fleet: &Fleet, container: &str, where_clause: &str) -> Vec<(String, bool)> {
    let sql = format!(
        "SELECT host(a.client_addr) || ' ' || s.ssl FROM pg_stat_activity a \
         JOIN pg_stat_ssl s USING (pid) WHERE {where_clause} ORDER BY 1"
    );
    fleet
        .psql(container, "postgres", &sql)
        .lines()
        .filter_map(|l| l.split_once(' '))
        // A boolean concatenated to text reads `true`/`false`.
        .map(|(addr, ssl)| (addr.to_string(), ssl == "true"))
        .collect()
}

/// No container of this fleet's hosts on the machine's own engine.
fn assert_machine_engine_untouched(hosts: &[String]) {
    for h in hosts {
        let out = std::process::Command::new("docker")
            .args(["ps", "-aq", "--filter", &format!("label=berth.host-id={h}")])
            .output()
            .expect("docker ps");
        assert!(
            String::from_utf8_lossy(&out.stdout).trim().is_empty(),
            "the machine's engine runs containers of {h}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replica_on_another_engine_streams_from_the_primary_over_tls() {
    let fleet = Fleet::start_engine_per_host(2).await;
    let (h1, h2) = (fleet.host(1), fleet.host(2));
    let db = fleet.db_id("xrepl");
    fleet
        .apply(
            "/v1/databases",
            &json!({"id": db, "spec": {
                "database_name": "app",
                "nodes": [{"name": "n1", "host_ids": [h1, h2]}]
            }}),
        )
        .await;
    let d = fleet.database(&db).await;
    let (primary_id, replica_id) = (format!("{db}-n1-{h1}"), format!("{db}-n1-{h2}"));
    let primary_port = instance(&d, &primary_id)["connection_info"]["port"]
        .as_u64()
        .unwrap_or_else(|| panic!("the primary has no published port: {d}"));
    assert_eq!(
        instance(&d, &primary_id)["connection_info"]["addresses"][0],
        address(&fleet, &h1).as_str(),
        "{d}"
    );
    let hosts = fleet.get("/v1/hosts").await;
    let listed: Vec<Value> = hosts["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["addresses"].clone())
        .collect();
    assert!(
        listed.contains(&json!([address(&fleet, &h1)])),
        "GET /v1/hosts shows each host's address: {hosts}"
    );

    let primary = Fleet::container_name(&h1, &primary_id);
    let replica = Fleet::container_name(&h2, &replica_id);
    // The replica streams from host-1's address and published port, not an alias that
    // host-2's engine could never resolve. Patroni 3 calls a replica `running` (and the
    // instance `available`) once its Postgres runs, before its WAL receiver connects.
    let (sender, took) = fleet
        .wait_psql(
            "the replica's WAL receiver",
            &replica,
            "app",
            "SELECT sender_host || ':' || sender_port FROM pg_stat_wal_receiver",
            |sender| !sender.is_empty(),
        )
        .await;
    println!("the replica streamed {took:?} after the create task ended");
    assert_eq!(sender, format!("{}:{primary_port}", address(&fleet, &h1)));
    fleet.psql(
        &primary,
        "app",
        "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1), (2), (3)",
    );
    let (_, took) = fleet
        .wait_for("the rows on the replica", || async {
            let present = fleet.psql(
                &replica,
                "app",
                "SELECT to_regclass('public.t') IS NOT NULL",
            ) == "t"
                && fleet.psql(&replica, "app", "SELECT count(*) FROM t") == "3";
            present.then_some(())
        })
        .await;
    println!("rows crossed engines in {took:?}");

    // The replication connection is TLS, from host-2's address.
    let walsenders = sessions(&fleet, &primary, "a.backend_type = 'walsender'");
    assert_eq!(walsenders, [(address(&fleet, &h2), true)]);

    // From host-2's engine, psql to the primary's published address with `conninfo` added:
    // (succeeded, output).
    let connect = |conninfo: &str| {
        fleet.docker_on_status(
            &h2,
            &[
                "exec",
                "-e",
                "PGCONNECT_TIMEOUT=5",
                &replica,
                "psql",
                "-XAtqw",
                &format!(
                    "host={} port={primary_port} dbname=app user=postgres {conninfo}",
                    address(&fleet, &h1)
                ),
                "-c",
                "SELECT 1",
            ],
        )
    };
    // Without TLS the primary refuses a client from another host outright.
    let refused = connect("sslmode=disable");
    assert!(
        !refused.0 && refused.1.contains("no encryption"),
        "a connection without TLS must be refused by pg_hba: {refused:?}"
    );
    // With TLS and the fleet CA it gets as far as the password.
    let tls = connect("sslmode=verify-full sslrootcert=/etc/berth/postgres/ca.crt");
    assert!(
        !tls.0 && tls.1.contains("password"),
        "verify-full against the fleet CA reaches authentication: {tls:?}"
    );
    assert_machine_engine_untouched(&[h1, h2]);
}

/// The (host, port) list of a service instance's rendered connection, which must be
/// verify-full against the fleet CA.
fn connection_hosts(
    fleet: &Fleet,
    host: &str,
    instance: &str,
    service_type: e2e::ServiceType,
) -> Vec<(String, u64)> {
    let c = fleet.rendered_connection(host, instance, service_type);
    assert_eq!(c.sslmode, "verify-full", "{instance}");
    assert!(c.sslrootcert.is_some(), "{instance}");
    c.hosts
        .into_iter()
        .map(|(h, p)| (h, u64::from(p)))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn services_on_other_engines_reach_postgres_by_host_address_over_tls() {
    let fleet = Fleet::start_engine_per_host(3).await;
    let (h1, h2, h3) = (fleet.host(1), fleet.host(2), fleet.host(3));
    let db = fleet.db_id("xsvc");
    // The seed example, with a postgrest on host-3 where no node runs, and a second node on
    // host-2 that an mcp on host-1 is aimed at explicitly.
    let mut spec = e2e::seed_spec("app", &h1, "claude-sonnet-4-5");
    spec["nodes"] = json!([
        {"name": "n1", "host_ids": [h1]},
        {"name": "n2", "host_ids": [h2]}
    ]);
    let services = spec["services"].as_array_mut().unwrap();
    services.push(json!({
        "service_id": "rest", "service_type": "postgrest", "version": "latest",
        "host_ids": [h3],
        "database_connection": {"target_nodes": ["n1"]},
        "config": {"db_schemas": "public", "jwt_secret": "0123456789abcdef0123456789abcdef"}
    }));
    services.push(json!({
        "service_id": "aimed", "service_type": "mcp", "version": "latest",
        "host_ids": [h1],
        "database_connection": {"target_nodes": ["n2"], "target_session_attrs": "primary"},
        "config": {"llm_enabled": false}
    }));
    fleet
        .apply("/v1/databases", &json!({"id": db, "spec": spec}))
        .await;
    let d = fleet.database(&db).await;
    let port_of = |id: &str| {
        instance(&d, id)["connection_info"]["port"]
            .as_u64()
            .unwrap()
    };
    let (n1, n2) = (format!("{db}-n1-{h1}"), format!("{db}-n2-{h2}"));

    // Every service instance is running, which means its /health passed: its session to
    // the database answered through the connection string berth wrote.
    let services = fleet.service_instances(&db).await;
    for (id, s) in &services {
        assert_eq!(s["state"], "running", "{id}: {s}");
        assert_eq!(s["status"]["ready"], true, "{id}: {s}");
    }
    // postgrest on host-3 lists n1 at host-1's address and published port.
    let rest = format!("{db}-rest-{h3}");
    assert_eq!(
        connection_hosts(&fleet, &h3, &rest, e2e::ServiceType::Postgrest),
        [(address(&fleet, &h1), port_of(&n1))]
    );
    // The mcp on host-1 reaches n1 on its own engine by alias, n2 by address.
    let mcp = format!("{db}-mcp-server-{h1}");
    assert_eq!(
        connection_hosts(&fleet, &h1, &mcp, e2e::ServiceType::Mcp),
        [
            (format!("n1-{h1}"), 5432),
            (address(&fleet, &h2), port_of(&n2))
        ]
    );
    // target_nodes ["n2"] from host-1: only n2, at host-2's address.
    let aimed = format!("{db}-aimed-{h1}");
    assert_eq!(
        connection_hosts(&fleet, &h1, &aimed, e2e::ServiceType::Mcp),
        [(address(&fleet, &h2), port_of(&n2))]
    );

    // Their sessions arrive at the primaries from the other hosts' addresses, over TLS.
    let fixture = "a.application_name = 'berth-fixture-service'";
    let on_n1 = sessions(&fleet, &Fleet::container_name(&h1, &n1), fixture);
    assert!(
        on_n1.contains(&(address(&fleet, &h3), true)),
        "postgrest on host-3 is connected to n1 over TLS: {on_n1:?}"
    );
    let on_n2 = sessions(&fleet, &Fleet::container_name(&h2, &n2), fixture);
    assert!(
        on_n2.contains(&(address(&fleet, &h1), true)),
        "the aimed mcp on host-1 is connected to n2 over TLS: {on_n2:?}"
    );
    assert!(
        on_n1.iter().chain(&on_n2).all(|(_, ssl)| *ssl),
        "every cross-host session is TLS: {on_n1:?} {on_n2:?}"
    );

    // The postgrest is healthy only while its connection reaches the primary: cut host-1
    // and it stops being ready; heal it and it is back, with no duplicate container.
    // The engine counts failed checks only once its own first check passed (before that
    // they fall in the start period, two minutes), so wait for that first.
    let rest_container = Fleet::container_name(&h3, &rest);
    fleet
        .wait_for(
            "the engine's own health check of postgrest passing",
            || async {
                let state = fleet.inspect(&rest_container);
                (state["State"]["Health"]["Status"] == "healthy").then_some(())
            },
        )
        .await;
    fleet.cut_host(&h1);
    let (_, took) = fleet
        .wait_for("postgrest on host-3 to lose its database", || async {
            let s = fleet.service_instances(&db).await;
            (s[&rest]["status"]["ready"] != true).then_some(())
        })
        .await;
    println!("postgrest on host-3 noticed the cut in {took:?}");
    let (_, took) = fleet
        .wait_for("host-1's instances to read unknown", || async {
            let d = fleet.database(&db).await;
            (instance(&d, &n1)["state"] == "unknown").then_some(())
        })
        .await;
    println!("host-1 read unknown after {took:?}");
    fleet.heal_host(&h1);
    fleet.wait_hosts_healthy().await;
    let (_, took) = fleet
        .wait_for("every instance running again", || async {
            let d = fleet.database(&db).await;
            let pg = instance(&d, &n1)["state"] == "available";
            let s = fleet.service_instances(&db).await;
            let svc = s
                .values()
                .all(|s| s["state"] == "running" && s["status"]["ready"] == true);
            (pg && svc).then_some(())
        })
        .await;
    println!("converged after the heal in {took:?}");
    let containers = fleet.containers();
    assert_eq!(
        containers.len(),
        5,
        "two Postgres and three service containers, no duplicates: {containers:?}"
    );
    assert_machine_engine_untouched(&[h1, h2, h3]);
}

#[tokio::test(flavor = "multi_thread")]
async fn self_healing_and_delete_on_engines_of_their_own() {
    let fleet = Fleet::start_engine_per_host(2).await;
    let (h1, h2) = (fleet.host(1), fleet.host(2));
    let db = fleet.db_id("xheal");
    let mut spec = e2e::seed_spec("app", &h1, "claude-sonnet-4-5");
    spec["services"][0]["host_ids"] = json!([h2]);
    fleet
        .apply("/v1/databases", &json!({"id": db, "spec": spec}))
        .await;
    let svc = Fleet::container_name(&h2, &format!("{db}-mcp-server-{h2}"));
    let before = fleet.containers()[&svc].0.clone();
    fleet.docker_kill(&svc);
    let (_, took) = fleet
        .wait_for(
            "the killed service container replaced and running",
            || async {
                let c = fleet.containers();
                let (id, state) = c.get(&svc)?;
                (*id != before && state == "running").then_some(())
            },
        )
        .await;
    println!("healed on host-2's engine in {took:?}");
    let s = fleet.service_instances(&db).await;
    let (_, took) = fleet
        .wait_for("the healed service ready", || async {
            let s = fleet.service_instances(&db).await;
            s.values()
                .all(|s| s["status"]["ready"] == true)
                .then_some(())
        })
        .await;
    println!("ready again after {took:?} ({} instances)", s.len());

    // The primary comes back on the port it had, so the service on host-2, whose
    // connection string names host-1's address and that port, is not touched.
    let pg_id = format!("{db}-n1-{h1}");
    let pg = Fleet::container_name(&h1, &pg_id);
    let port = |d: &Value| instance(d, &pg_id)["connection_info"]["port"].clone();
    let port_before = port(&fleet.database(&db).await);
    let svc_id = fleet.containers()[&svc].0.clone();
    fleet.docker_kill(&pg);
    let (_, took) = fleet
        .wait_for("the killed primary replaced and available", || async {
            let d = fleet.database(&db).await;
            let c = fleet.containers();
            let replaced = c.get(&pg).is_some_and(|(_, state)| state == "running");
            (replaced && instance(&d, &pg_id)["state"] == "available").then_some(())
        })
        .await;
    println!("primary healed in {took:?}");
    assert_eq!(port(&fleet.database(&db).await), port_before);
    fleet
        .wait_for("the service connected again", || async {
            let s = fleet.service_instances(&db).await;
            s.values()
                .all(|s| s["status"]["ready"] == true)
                .then_some(())
        })
        .await;
    assert_eq!(
        fleet.containers()[&svc].0,
        svc_id,
        "the remote service keeps its container"
    );

    let (status, body) = fleet
        .call("DELETE", &format!("/v1/databases/{db}"), None)
        .await;
    assert!(status.is_success(), "{status} {body}");
    let task = body["task"]["task_id"]
        .as_str()
        .expect("task id")
        .to_string();
    let t = fleet.wait_task(&db, &task).await;
    assert_eq!(t["status"], "completed", "{t}");
    assert!(
        fleet.containers().is_empty(),
        "nothing left: {:?}",
        fleet.containers()
    );
    for h in [&h1, &h2] {
        let nets = fleet.docker_on(h, &["network", "ls", "--format", "{{.Name}}"]);
        assert!(
            !nets.lines().any(|n| n.starts_with(&format!("berth-{db}"))),
            "{h} keeps the database's network: {nets}"
        );
    }
    assert_machine_engine_untouched(&[h1, h2]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_host_the_control_plane_cannot_dial_is_degraded_and_its_task_fails_naming_it() {
    let mut fleet = Fleet::start_engine_per_host(2).await;
    let h2 = fleet.host(2);
    // host-2's agent heartbeats (it dials the control plane), but advertises an address
    // where nothing listens.
    let wrong = format!("{}:7199", address(&fleet, &h2));
    fleet.restart_agent_with(&h2, &[format!("--advertise={wrong}")]);
    let (_, took) = fleet
        .wait_for("host-2 degraded with the reason", || async {
            let h = fleet.get(&format!("/v1/hosts/{h2}")).await;
            let degraded = h["status"]["state"] == "degraded"
                && h["status"]["error"]
                    .as_str()
                    .is_some_and(|e| e.contains(&wrong));
            degraded.then_some(())
        })
        .await;
    println!("host-2 read degraded after {took:?}");
    let db = fleet.db_id("xdial");
    let resp = fleet
        .post_ok(
            "/v1/databases",
            &json!({"id": db, "spec": {"database_name": "app",
                "nodes": [{"name": "n1", "host_ids": [h2]}]}}),
        )
        .await;
    let task = resp["task"]["task_id"].as_str().unwrap().to_string();
    let t = fleet.wait_task(&db, &task).await;
    assert_eq!(t["status"], "failed", "{t}");
    let log = fleet.task_log(&db, &task).await.join("\n");
    assert!(
        log.contains(&format!("waiting for host {h2}")) && log.contains(&wrong),
        "the log says what it waits for: {log}"
    );
    let error = t["error"].as_str().unwrap_or_default();
    assert!(
        error.contains(&h2) && error.contains(&wrong),
        "the task's error names host and address: {t}"
    );
}
