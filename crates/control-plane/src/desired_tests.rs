//! What each spec asks for, instance by instance, by table.
use super::*;
use serde_json::json;

fn manifest() -> Manifest {
    Manifest::from_json(spec::manifest::LOCAL_MANIFEST).unwrap()
}

fn spec_with(service: serde_json::Value) -> DatabaseSpec {
    serde_json::from_value(json!({
        "database_name": "example",
        "nodes": [{"name": "n1", "host_ids": ["host-1", "host-2"]}],
        "services": [service]
    }))
    .unwrap()
}

fn mcp(model: &str, cpus: Option<&str>) -> serde_json::Value {
    let mut s = json!({"service_id": "mcp-server", "service_type": "mcp", "version": "latest",
        "host_ids": ["host-1", "host-3"],
        "config": {"llm_enabled": true, "llm_provider": "anthropic", "llm_model": model, "anthropic_api_key": "k"}});
    if let Some(c) = cpus {
        s["cpus"] = json!(c);
    }
    s
}

const CA: &str = "-----BEGIN CERTIFICATE-----\nCA\n-----END CERTIFICATE-----\n";

/// Every host on one engine, as the shared-engine fleets run.
fn one_engine() -> Topology {
    let hosts = ["host-1", "host-2", "host-3"]
        .into_iter()
        .map(|h| {
            let placement = HostPlacement {
                address: Some("127.0.0.1".into()),
                engine_id: "e".into(),
            };
            (h.to_string(), placement)
        })
        .collect();
    Topology {
        hosts,
        postgres_ports: BTreeMap::new(),
        postgres_hosts: BTreeMap::new(),
    }
}

/// host-N at 10.0.0.N on an engine of its own.
fn engine_per_host(ports: &[(&str, u16)]) -> Topology {
    let hosts = (1..=3)
        .map(|n| {
            let placement = HostPlacement {
                address: Some(format!("10.0.0.{n}")),
                engine_id: format!("e{n}"),
            };
            (format!("host-{n}"), placement)
        })
        .collect();
    Topology {
        hosts,
        postgres_ports: ports.iter().map(|(id, p)| (id.to_string(), *p)).collect(),
        postgres_hosts: BTreeMap::new(),
    }
}

fn creds() -> DatabaseCredentials {
    let mut c = DatabaseCredentials::generate();
    c.ensure_services(["mcp-server"]);
    for id in ["db-n1-host-1", "db-n1-host-2"] {
        c.postgres_certs.insert(
            id.into(),
            crate::postgres_tls::PostgresCert {
                cert_pem: format!("cert of {id}"),
                key_pem: format!("key of {id}"),
                names: vec![],
                not_after: chrono::Utc::now(),
            },
        );
    }
    c
}

fn dcs() -> patroni::Dcs {
    patroni::Dcs::from_urls(&["http://10.0.0.254:2379".into()], "/berth").unwrap()
}

fn build(spec: &DatabaseSpec, c: &DatabaseCredentials, t: &Topology) -> Vec<Desired> {
    desired_instances("db", spec, &manifest(), c, t, CA, &dcs()).unwrap()
}

fn file<'a>(d: &'a Desired, path: &str) -> &'a str {
    let f = d.spec.files.iter().find(|f| f.path == path).unwrap();
    std::str::from_utf8(&f.content).unwrap()
}

#[test]
fn one_postgres_instance_per_node_host_and_one_service_instance_per_service_host() {
    let d = build(&spec_with(mcp("m", None)), &creds(), &one_engine());
    let ids: Vec<&str> = d.iter().map(|d| d.plan.instance_id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "db-n1-host-1",
            "db-n1-host-2",
            "db-mcp-server-host-1",
            "db-mcp-server-host-3"
        ]
    );
    assert_eq!(d[0].plan.kind, InstanceKind::Postgres { node: "n1".into() });
    assert!(
        d[0].plan.bootstrap && !d[1].plan.bootstrap,
        "host_ids[0] initialises"
    );
    let conf = file(&d[1], "berth.conf");
    assert!(
        conf.contains("connect_host=n1-host-2\nconnect_ports=container\n"),
        "one engine: peers dial the alias: {conf}"
    );
    let yml = file(&d[1], "patroni.yml");
    assert!(
        yml.contains(r#""scope": "n1""#) && yml.contains(r#""name": "db-n1-host-2""#),
        "{yml}"
    );
    assert!(yml.contains("/berth/patroni/db"), "{yml}");
    assert!(yml.contains("10.0.0.254:2379"), "{yml}");
    let ports: Vec<(&str, u32, Option<u32>)> = d[1]
        .spec
        .ports
        .iter()
        .map(|p| (p.name.as_str(), p.container_port, p.host_port))
        .collect();
    assert_eq!(
        ports,
        [("postgres", 5432, Some(0)), ("patroni", 8008, Some(0))]
    );
    let health = &d[1].spec.health_check.as_ref().unwrap().test;
    assert!(
        health.iter().any(|a| a.ends_with("/liveness")),
        "{health:?}"
    );
    assert_eq!(file(&d[0], "server.key"), "key of db-n1-host-1");
    assert_eq!(file(&d[1], "ca.crt"), CA);
    // Secrets reach the container only through files, never its environment.
    let c = creds();
    for inst in build(&spec_with(mcp("m", None)), &c, &one_engine()) {
        let env = format!("{:?}", inst.spec.env);
        assert!(
            !env.contains(c.superuser_password.expose_secret())
                && !env.contains(c.services["mcp-server"].rw_password.expose_secret())
        );
        // And patroni.yml holds none: the entrypoint gives Patroni its passwords.
        if let Some(f) = inst.spec.files.iter().find(|f| f.path == "patroni.yml") {
            let yml = String::from_utf8_lossy(&f.content);
            for secret in [
                &c.superuser_password,
                &c.replication_password,
                &c.restapi_password,
            ] {
                assert!(!yml.contains(secret.expose_secret()));
            }
        }
        let conf = inst.spec.files.iter().find(|f| f.path == "berth.conf");
        if let Some(f) = conf {
            let conf = String::from_utf8_lossy(&f.content);
            assert!(conf.contains(&format!(
                "restapi_password={}\n",
                c.restapi_password.expose_secret()
            )));
        }
    }
}

/// With etcd credentials, each node's instances get the node's etcd user in
/// `berth.conf` (never in `patroni.yml` or the environment); without, nothing changes.
#[test]
fn a_nodes_etcd_user_is_in_berth_conf_only_with_node_users() {
    let mut c = creds();
    c.ensure_etcd_users(["n1"]);
    let password = c.etcd_users["n1"].password.expose_secret().to_string();
    let spec = spec_with(mcp("m", None));
    let without = build(&spec, &c, &one_engine());
    assert!(!file(&without[0], "berth.conf").contains("etcd_"));
    let users = patroni::Dcs {
        node_users: true,
        ..dcs()
    };
    let with = desired_instances("db", &spec, &manifest(), &c, &one_engine(), CA, &users).unwrap();
    for d in with.iter().filter(|d| d.plan.kind.node().is_some()) {
        let conf = file(d, "berth.conf");
        assert!(
            conf.contains(&format!(
                "etcd_username=berth-patroni-db-n1\netcd_password={password}\n"
            )),
            "{conf}"
        );
        assert!(!file(d, "patroni.yml").contains(&password));
        assert!(!format!("{:?}", d.spec.env).contains(&password));
    }
    // A new password is a new container.
    assert_ne!(without[0].plan.spec_hash, with[0].plan.spec_hash);
}

#[test]
fn hashes_are_stable_change_with_config_and_ignore_resources() {
    let c = creds();
    let m = manifest();
    let t = one_engine();
    let a = desired_instances("db", &spec_with(mcp("m1", None)), &m, &c, &t, CA, &dcs()).unwrap();
    let again =
        desired_instances("db", &spec_with(mcp("m1", None)), &m, &c, &t, CA, &dcs()).unwrap();
    assert_eq!(a, again);
    let changed =
        desired_instances("db", &spec_with(mcp("m2", None)), &m, &c, &t, CA, &dcs()).unwrap();
    assert_eq!(
        a[0].plan.spec_hash, changed[0].plan.spec_hash,
        "postgres untouched by a service change"
    );
    assert_ne!(a[2].plan.spec_hash, changed[2].plan.spec_hash);
    let resized = desired_instances(
        "db",
        &spec_with(mcp("m1", Some("500m"))),
        &m,
        &c,
        &t,
        CA,
        &dcs(),
    )
    .unwrap();
    assert_eq!(a[2].plan.spec_hash, resized[2].plan.spec_hash);
    assert_eq!(resized[2].plan.resources.nano_cpus, 500_000_000);
    assert_eq!(resized[2].spec.nano_cpus, 500_000_000);
}

#[test]
fn service_health_check_gets_the_service_port() {
    let d = build(&spec_with(mcp("m", None)), &creds(), &one_engine());
    let test = &d[2].spec.health_check.as_ref().unwrap().test;
    assert!(
        test.iter().any(|a| a == "http://127.0.0.1:8080/health"),
        "{test:?}"
    );
    assert_eq!(d[2].spec.env["BERTH_SERVICE_TYPE"], "mcp");
}

#[test]
fn across_engines_instances_are_reached_at_the_host_address_and_published_port() {
    let spec = spec_with(mcp("m", None));
    let c = creds();
    // Postgres instances never wait: Patroni finds its peers' addresses in the DCS. The
    // services that list an instance on another engine wait for its published port.
    let d = build(&spec, &c, &engine_per_host(&[]));
    let waiting: Vec<(&str, bool)> = d
        .iter()
        .map(|d| (d.plan.instance_id.as_str(), d.plan.waiting))
        .collect();
    assert_eq!(
        waiting,
        [
            ("db-n1-host-1", false),
            ("db-n1-host-2", false),
            ("db-mcp-server-host-1", true),
            ("db-mcp-server-host-3", true)
        ]
    );
    assert!(
        file(&d[1], "berth.conf").contains("connect_host=10.0.0.2\nconnect_ports=published\n"),
        "{}",
        file(&d[1], "berth.conf")
    );

    let d = build(
        &spec,
        &c,
        &engine_per_host(&[("db-n1-host-1", 40001), ("db-n1-host-2", 40002)]),
    );
    assert!(d.iter().all(|d| !d.plan.waiting));
    // mcp prefers a standby: on host-1 its own instance by alias, then host-2's published
    // port; on host-3 (no instance) both published.
    let conn = |d: &Desired| file(d, "config.yaml").to_string();
    let on_1 = conn(&d[2]);
    assert!(on_1.contains("n1-host-1"), "{on_1}");
    assert!(on_1.contains("10.0.0.2"), "{on_1}");
    let on_3 = conn(&d[3]);
    assert!(
        on_3.contains("10.0.0.1") && on_3.contains("10.0.0.2") && !on_3.contains("n1-host-"),
        "{on_3}"
    );
}

/// A node's instances dial each other one way while it moves: the hosts it is on now
/// count with the ones the spec names, so a node leaving host-1 for host-2 of another
/// engine stays on published ports until host-1's instance is gone.
#[test]
fn a_node_moving_across_engines_keeps_one_way_of_dialling() {
    let spec: DatabaseSpec = serde_json::from_value(json!({
        "database_name": "example",
        "nodes": [{"name": "n1", "host_ids": ["host-2"]}]
    }))
    .unwrap();
    let c = creds();
    let mut t = engine_per_host(&[]);
    let alone = build(&spec, &c, &t);
    assert!(file(&alone[0], "berth.conf").contains("connect_ports=container"));
    t.postgres_hosts
        .insert("n1".into(), ["host-1".to_string()].into());
    let moving = build(&spec, &c, &t);
    assert!(
        file(&moving[0], "berth.conf").contains("connect_host=10.0.0.2\nconnect_ports=published\n")
    );
    // On one engine the alias serves throughout.
    let mut shared = one_engine();
    shared
        .postgres_hosts
        .insert("n1".into(), ["host-1".to_string()].into());
    let d = build(&spec, &c, &shared);
    assert!(file(&d[0], "berth.conf").contains("connect_ports=container"));
}

#[test]
fn certificate_names_are_the_alias_and_the_host_address() {
    let names = postgres_cert_names("db", &spec_with(mcp("m", None)), &engine_per_host(&[]));
    assert_eq!(
        names["db-n1-host-2"],
        ["n1-host-2".to_string(), "10.0.0.2".to_string()]
    );
    let c = DatabaseCredentials::generate();
    assert_eq!(
        desired_instances(
            "db",
            &spec_with(mcp("m", None)),
            &manifest(),
            &c,
            &one_engine(),
            CA,
            &dcs()
        ),
        Err(DesiredError::MissingCertificate("db-n1-host-1".into()))
    );
}

#[test]
fn a_node_that_starts_from_a_backup_restores_instead_of_initdb() {
    let spec: DatabaseSpec = serde_json::from_value(json!({
        "database_name": "shop",
        "nodes": [{"name": "n1", "host_ids": ["host-1", "host-2"]}],
        "backup_config": {"repositories": [{"id": "main", "type": "s3", "s3_bucket": "b",
            "s3_region": "eu-west-1", "s3_key": "AKIA", "s3_key_secret": "s3cr3t"}]},
        "restore_config": {"source_database_id": "old", "source_node_name": "n2",
            "source_database_name": "app", "repository": "main",
            "restore_options": {"type": "time", "target": "2026-12-01T06:00:00Z"}}
    }))
    .unwrap();
    let d = build(&spec, &creds(), &one_engine());
    let postgres: Vec<&Desired> = d.iter().filter(|d| d.plan.kind.node().is_some()).collect();
    assert_eq!(postgres.len(), 2);
    for p in postgres {
        let conf = file(p, pgbackrest::RESTORE_CONF_FILE);
        assert!(
            conf.contains("repo1-path=/databases/old/main/n2\n"),
            "{conf}"
        );
        let yml = file(p, "patroni.yml");
        let doc: serde_json::Value =
            serde_json::from_str(yml.split_once('\n').unwrap().1.split_once('\n').unwrap().1)
                .unwrap();
        let bootstrap = &doc["bootstrap"];
        assert_eq!(bootstrap["method"], "berth_restore");
        assert!(bootstrap.get("initdb").is_none());
        let command = bootstrap["berth_restore"]["command"].as_str().unwrap();
        assert!(
            command.starts_with("berth-restore-bootstrap run pgbackrest "),
            "{command}"
        );
        assert!(
            command.ends_with(
                "'--target=2026-12-01 06:00:00.000000+00' --target-action=promote --type=time restore"
            ),
            "{command}"
        );
        assert_eq!(
            bootstrap["berth_restore"]["keep_existing_recovery_conf"],
            true
        );
        assert_eq!(
            bootstrap["post_bootstrap"],
            "berth-restore-bootstrap finish app shop"
        );
    }
    // Without a restore_config, initdb as before, and no restore file.
    let mut plain = spec.clone();
    plain.restore_config = None;
    let d = build(&plain, &creds(), &one_engine());
    let p = d.iter().find(|d| d.plan.kind.node().is_some()).unwrap();
    assert!(
        !p.spec
            .files
            .iter()
            .any(|f| f.path == pgbackrest::RESTORE_CONF_FILE)
    );
    assert!(file(p, "patroni.yml").contains("CREATE DATABASE"));
}
