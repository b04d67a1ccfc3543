//! Services on a real fleet: placement on hosts without a database node, every service type
//! with its rendered config, published ports, resource limits and connection routing.

use std::collections::BTreeMap;

use e2e::Fleet;
use e2e::serde_json::{Value, json};

const JWT_SECRET: &str = "0123456789abcdef0123456789abcdef";

fn spec(nodes: Value, services: Value) -> Value {
    json!({"database_name": "app", "nodes": nodes, "services": services})
}

/// The host port the agent published for an instance's `http` port.
fn host_port(instance: &Value) -> u16 {
    let ports = instance["status"]["ports"]
        .as_array()
        .unwrap_or_else(|| panic!("no ports in {instance}"));
    let http = ports
        .iter()
        .find(|p| p["name"] == "http")
        .unwrap_or_else(|| panic!("no http port in {instance}"));
    assert_eq!(http["container_port"], 8080, "{instance}");
    let port = http["host_port"]
        .as_u64()
        .unwrap_or_else(|| panic!("no host port in {instance}"));
    u16::try_from(port).expect("a port")
}

/// GETs a fixture-service endpoint on a published port until it answers 200.
async fn fixture_get(fleet: &Fleet, port: u16, path: &str) -> Value {
    let url = format!("http://127.0.0.1:{port}{path}");
    let (body, took) = fleet
        .wait_for(&format!("GET {url}"), || async {
            let resp = e2e::reqwest::get(&url).await.ok()?;
            if !resp.status().is_success() {
                return None;
            }
            resp.json::<Value>().await.ok()
        })
        .await;
    println!("GET {url} answered after {took:?}");
    body
}

fn config_file(fleet: &Fleet, host: &str, instance: &str, name: &str) -> String {
    let path = fleet.instance_dir(host, instance).join("config").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn running(instances: &BTreeMap<String, Value>, id: &str) -> Value {
    let i = instances
        .get(id)
        .unwrap_or_else(|| panic!("no service instance {id} in {instances:?}"));
    assert_eq!(i["state"], "running", "{i}");
    assert_eq!(i["status"]["ready"], true, "{i}");
    i.clone()
}

fn hosts_of(config: &Value) -> Vec<String> {
    config["hosts"]
        .as_array()
        .unwrap_or_else(|| panic!("no hosts in {config}"))
        .iter()
        .map(|h| {
            assert_eq!(h["port"], 5432, "{config}");
            h["host"].as_str().expect("host").to_string()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn one_instance_per_host_including_hosts_without_a_node() {
    let fleet = Fleet::start(3).await;
    let hosts: Vec<String> = (1..=3).map(|i| fleet.host(i)).collect();
    let db = fleet.db_id("spread");
    let body = json!({"id": db, "spec": spec(
        json!([{"name": "n1", "host_ids": [hosts[0]]}]),
        json!([{"service_id": "mcp", "service_type": "mcp", "version": "latest",
                "host_ids": hosts, "config": {}}]),
    )});
    let started = std::time::Instant::now();
    fleet.apply("/v1/databases", &body).await;
    println!(
        "database with a service on 3 hosts converged in {:?}",
        started.elapsed()
    );

    let instances = fleet.service_instances(&db).await;
    assert_eq!(instances.len(), 3, "{instances:?}");
    let containers = fleet.containers();
    assert_eq!(
        containers.len(),
        4,
        "one Postgres and three services: {containers:?}"
    );
    for host in &hosts {
        let id = format!("{db}-mcp-{host}");
        let instance = running(&instances, &id);
        assert_eq!(instance["host_id"], host.as_str());
        assert_eq!(instance["service_id"], "mcp");
        assert_eq!(instance["database_id"], db.as_str());

        let name = Fleet::container_name(host, &id);
        let (container_id, state) = containers
            .get(&name)
            .unwrap_or_else(|| panic!("no container {name} in {containers:?}"));
        assert_eq!(state, "running");
        assert_eq!(instance["status"]["container_id"], container_id.as_str());
        let labels = &fleet.inspect(&name)["Config"]["Labels"];
        assert_eq!(labels["berth.host-id"], host.as_str(), "{labels}");
        assert_eq!(labels["berth.instance-id"], id.as_str(), "{labels}");
        assert_eq!(labels["berth.database-id"], db.as_str(), "{labels}");
        assert_eq!(labels["berth.service-id"], "mcp", "{labels}");
        assert_eq!(labels["berth.kind"], "service", "{labels}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_service_type_runs_with_its_rendered_config() {
    let fleet = Fleet::start(1).await;
    let h1 = fleet.host(1);
    let db = fleet.db_id("types");
    let pipeline = json!({
        "name": "docs",
        "tables": [{"table": "docs", "text_column": "body", "vector_column": "embedding"}],
        "embedding_llm": {"provider": "openai", "model": "text-embedding-3-small", "api_key": "sk-embed-SECRET"},
        "rag_llm": {"provider": "anthropic", "model": "claude-sonnet-4-5", "api_key": "sk-rag-SECRET"},
        "top_n": 7
    });
    let body = json!({"id": db, "spec": spec(
        json!([{"name": "n1", "host_ids": [h1]}]),
        json!([
            {"service_id": "mcp", "service_type": "mcp", "version": "latest", "host_ids": [h1], "port": 0,
             "config": {"llm_enabled": true, "llm_provider": "anthropic", "llm_model": "claude-opus-4",
                        "anthropic_api_key": "sk-ant-SECRET", "pool_max_conns": 6}},
            {"service_id": "rest", "service_type": "postgrest", "version": "1.0", "host_ids": [h1], "port": 0,
             "config": {"db_schemas": "public", "max_rows": 250, "jwt_secret": JWT_SECRET}},
            {"service_id": "rag", "service_type": "rag", "version": "1.0.1", "host_ids": [h1], "port": 0,
             "config": {"pipelines": [pipeline]}}
        ]),
    )});
    let started = std::time::Instant::now();
    fleet.apply("/v1/databases", &body).await;
    println!("three service types converged in {:?}", started.elapsed());

    let instances = fleet.service_instances(&db).await;
    assert_eq!(instances.len(), 3, "{instances:?}");
    let node_address = format!("n1-{h1}");
    // (service id, type, managed role the service logs in with, default session attrs, file)
    let cases = [
        ("mcp", "mcp", "svc_mcp_ro", "prefer-standby", "config.yaml"),
        (
            "rest",
            "postgrest",
            "svc_rest_rw",
            "read-write",
            "postgrest.conf",
        ),
        ("rag", "rag", "svc_rag_ro", "prefer-standby", "config.yaml"),
    ];
    let mut ports = Vec::new();
    for (service, service_type, role, attrs, file) in cases {
        let id = format!("{db}-{service}-{h1}");
        let instance = running(&instances, &id);
        let port = host_port(&instance);
        ports.push(port);

        let config = fixture_get(&fleet, port, "/config").await;
        assert_eq!(config["type"], service_type, "{config}");
        assert_eq!(hosts_of(&config), [node_address.as_str()], "{config}");
        assert_eq!(config["dbname"], "app", "{config}");
        assert_eq!(config["username"], role, "{config}");
        assert_eq!(config["target_session_attrs"], attrs, "{config}");
        assert_eq!(config["listen_port"], 8080, "{config}");
        let health = fixture_get(&fleet, port, "/health").await;
        assert_eq!(health["status"], "ok", "{health}");
        assert_eq!(health["user"], role, "{health}");
        assert_eq!(health["connected_host"], node_address.as_str(), "{health}");
        assert_eq!(health["in_recovery"], false, "{health}");

        let text = config_file(&fleet, &h1, &id, file);
        assert!(
            text.contains(role),
            "{file} of {service} lacks {role}:\n{text}"
        );
        assert!(text.contains(&node_address), "{file} of {service}:\n{text}");
    }
    let distinct: std::collections::BTreeSet<u16> = ports.iter().copied().collect();
    assert_eq!(
        distinct.len(),
        3,
        "each instance gets its own host port: {ports:?}"
    );

    let mcp = config_file(&fleet, &h1, &format!("{db}-mcp-{h1}"), "config.yaml");
    for expected in [
        "claude-opus-4",
        "anthropic",
        "pool_max_conns: 6",
        "sk-ant-SECRET",
    ] {
        assert!(
            mcp.contains(expected),
            "mcp config.yaml lacks {expected:?}:\n{mcp}"
        );
    }
    let rest = config_file(&fleet, &h1, &format!("{db}-rest-{h1}"), "postgrest.conf");
    for expected in [
        "db-max-rows = 250\n",
        "db-schemas = \"public\"\n",
        "db-anon-role = \"svc_rest_ro\"\n",
        "server-port = 8080\n",
        &format!("jwt-secret = \"{JWT_SECRET}\"\n"),
    ] {
        assert!(
            rest.contains(expected),
            "postgrest.conf lacks {expected:?}:\n{rest}"
        );
    }
    assert!(
        rest.lines()
            .any(|l| l.starts_with("db-uri = \"postgres") && l.contains("svc_rest_rw")),
        "postgrest.conf has no db-uri for svc_rest_rw:\n{rest}"
    );
    let rag = config_file(&fleet, &h1, &format!("{db}-rag-{h1}"), "config.yaml");
    for expected in [
        "name: docs",
        "text-embedding-3-small",
        "claude-sonnet-4-5",
        "vector_column: embedding",
        "top_n: 7",
    ] {
        assert!(
            rag.contains(expected),
            "rag config.yaml lacks {expected:?}:\n{rag}"
        );
    }

    // The secrets went to the files the services read, never back out through the API.
    let d = fleet.database(&db).await.to_string();
    for secret in [
        "sk-ant-SECRET",
        "sk-embed-SECRET",
        "sk-rag-SECRET",
        JWT_SECRET,
    ] {
        assert!(!d.contains(secret), "{secret} returned by GET: {d}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_chosen_host_port_is_kept_across_a_config_update() {
    let fleet = Fleet::start(1).await;
    let h1 = fleet.host(1);
    let db = fleet.db_id("port");
    let with_pool = |pool: u64| {
        spec(
            json!([{"name": "n1", "host_ids": [h1]}]),
            json!([{"service_id": "mcp", "service_type": "mcp", "version": "latest",
                    "host_ids": [h1], "port": 0, "config": {"pool_max_conns": pool}}]),
        )
    };
    fleet
        .apply("/v1/databases", &json!({"id": db, "spec": with_pool(4)}))
        .await;
    let id = format!("{db}-mcp-{h1}");
    let first = running(&fleet.service_instances(&db).await, &id);
    let port = host_port(&first);
    assert_ne!(port, 0);
    fixture_get(&fleet, port, "/config").await;

    let started = std::time::Instant::now();
    fleet
        .apply(
            &format!("/v1/databases/{db}"),
            &json!({"spec": with_pool(9)}),
        )
        .await;
    println!("config update converged in {:?}", started.elapsed());
    let second = running(&fleet.service_instances(&db).await, &id);
    assert_ne!(
        second["status"]["container_id"], first["status"]["container_id"],
        "a config change needs a new container"
    );
    assert_eq!(host_port(&second), port, "the host port moved: {second}");
    let bindings =
        &fleet.inspect(&Fleet::container_name(&h1, &id))["HostConfig"]["PortBindings"]["8080/tcp"];
    assert_eq!(bindings[0]["HostPort"], port.to_string(), "{bindings}");
    let config = config_file(&fleet, &h1, &id, "config.yaml");
    assert!(config.contains("pool_max_conns: 9"), "{config}");
    // The new container answers on the same port.
    let health = fixture_get(&fleet, port, "/health").await;
    assert_eq!(health["status"], "ok", "{health}");
}

#[tokio::test(flavor = "multi_thread")]
async fn cpus_and_memory_are_limits_changed_in_place() {
    let fleet = Fleet::start(1).await;
    let h1 = fleet.host(1);
    let db = fleet.db_id("limits");
    let with_limits = |cpus: &str, memory: &str| {
        spec(
            json!([{"name": "n1", "host_ids": [h1]}]),
            json!([{"service_id": "mcp", "service_type": "mcp", "version": "latest",
                    "host_ids": [h1], "config": {}, "cpus": cpus, "memory": memory}]),
        )
    };
    fleet
        .apply(
            "/v1/databases",
            &json!({"id": db, "spec": with_limits("0.5", "256MiB")}),
        )
        .await;
    let id = format!("{db}-mcp-{h1}");
    let name = Fleet::container_name(&h1, &id);
    let first = running(&fleet.service_instances(&db).await, &id);
    let inspect = fleet.inspect(&name);
    assert_eq!(inspect["HostConfig"]["NanoCpus"], 500_000_000_u64);
    assert_eq!(inspect["HostConfig"]["Memory"], 256_u64 * 1024 * 1024);
    let container_id = inspect["Id"].as_str().expect("container id").to_string();
    assert_eq!(first["status"]["container_id"], container_id.as_str());

    let started = std::time::Instant::now();
    fleet
        .apply(
            &format!("/v1/databases/{db}"),
            &json!({"spec": with_limits("1500m", "512M")}),
        )
        .await;
    println!("resize converged in {:?}", started.elapsed());
    let inspect = fleet.inspect(&name);
    assert_eq!(
        inspect["Id"],
        container_id.as_str(),
        "a resize must not recreate"
    );
    assert_eq!(inspect["State"]["Running"], true);
    assert_eq!(inspect["HostConfig"]["NanoCpus"], 1_500_000_000_u64);
    assert_eq!(inspect["HostConfig"]["Memory"], 512_000_000_u64);
    let second = running(&fleet.service_instances(&db).await, &id);
    assert_eq!(second["status"]["container_id"], container_id.as_str());
    assert_eq!(second["created_at"], first["created_at"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn database_connection_orders_hosts_and_sets_session_attrs() {
    let fleet = Fleet::start(2).await;
    let (h1, h2) = (fleet.host(1), fleet.host(2));
    let db = fleet.db_id("routing");
    let body = json!({"id": db, "spec": spec(
        json!([{"name": "n1", "host_ids": [h1]}, {"name": "n2", "host_ids": [h2]}]),
        json!([
            {"service_id": "routed", "service_type": "mcp", "version": "latest", "host_ids": [h1], "port": 0,
             "config": {}, "database_connection": {"target_nodes": ["n2", "n1"], "target_session_attrs": "any"}},
            {"service_id": "local", "service_type": "mcp", "version": "latest", "host_ids": [h1, h2], "port": 0,
             "config": {}}
        ]),
    )});
    let started = std::time::Instant::now();
    fleet.apply("/v1/databases", &body).await;
    println!(
        "two nodes and two services converged in {:?}",
        started.elapsed()
    );
    let instances = fleet.service_instances(&db).await;
    assert_eq!(instances.len(), 3, "{instances:?}");
    let (n1, n2) = (format!("n1-{h1}"), format!("n2-{h2}"));

    // Explicit targets win over locality: n2 first although the service runs beside n1.
    let routed = running(&instances, &format!("{db}-routed-{h1}"));
    let port = host_port(&routed);
    let config = fixture_get(&fleet, port, "/config").await;
    assert_eq!(hosts_of(&config), [n2.clone(), n1.clone()], "{config}");
    assert_eq!(config["target_session_attrs"], "any", "{config}");
    let health = fixture_get(&fleet, port, "/health").await;
    assert_eq!(health["connected_host"], n2.as_str(), "{health}");

    // Without database_connection: the node local to each instance's host comes first.
    for (host, expected) in [
        (&h1, [n1.clone(), n2.clone()]),
        (&h2, [n2.clone(), n1.clone()]),
    ] {
        let local = running(&instances, &format!("{db}-local-{host}"));
        let config = fixture_get(&fleet, host_port(&local), "/config").await;
        assert_eq!(hosts_of(&config), expected, "{config}");
        assert_eq!(config["target_session_attrs"], "prefer-standby", "{config}");
    }
}
