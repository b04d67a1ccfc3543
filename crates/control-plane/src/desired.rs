//! What should run for a database: every Postgres instance and service instance, as the
//! exact container spec an agent applies, and its hash for the planner. Pure: the same
//! inputs give the same specs byte for byte, so an unchanged service is never touched.

use std::collections::BTreeMap;

use agent_proto as pb;
use plan::routing::{PostgresEndpoint, connection_hosts, reach, target_session_attrs};
use plan::{DesiredInstance, InstanceKind, Resources};
use secrecy::ExposeSecret;
use serde::Serialize;
use spec::manifest::Manifest;
use spec::{DatabaseSpec, ServiceSpec};

use crate::credentials::{DatabaseCredentials, role_name};

/// Port every service listens on inside its container.
pub const SERVICE_PORT: u16 = 8080;
pub const POSTGRES_PORT: u16 = 5432;
pub const POSTGRES_CONFIG_DIR: &str = "/etc/berth/postgres";
/// PGDATA itself is the mount: the entrypoint gives it to the postgres user, which a
/// root-owned 0700 parent mount would lock out.
pub const POSTGRES_DATA_DIR: &str = "/var/lib/postgresql/data";
/// Label holding the hash of the desired spec a container was applied from.
pub const DESIRED_HASH_LABEL: &str = "berth.desired-hash";

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DesiredError {
    #[error("postgres version {0:?} is not in the version manifest")]
    PostgresVersion(String),
    #[error(
        "service {service_id:?}: {service_type} version {version:?} is not in the version manifest"
    )]
    ServiceVersion {
        service_id: String,
        service_type: spec::ServiceType,
        version: String,
    },
    #[error("service {0:?} has no credentials yet")]
    MissingCredentials(String),
    #[error("{field}: {message}")]
    Quantity { field: String, message: String },
    #[error("postgres instance {0} has no TLS certificate yet")]
    MissingCertificate(String),
}

/// Where a host is, as instances on other engines reach it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostPlacement {
    /// The host's first advertised address (`Host::addresses[0]`); None if it gave none.
    pub address: Option<String>,
    /// `Host::engine_id`.
    pub engine_id: String,
}

/// What the fleet looks like to one database: where its hosts are, and the host port each
/// of its Postgres instances was published on (the agent picks it at the first create and
/// keeps it; the control plane learns it from the apply's result).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Topology {
    pub hosts: BTreeMap<String, HostPlacement>,
    /// Instance id -> host port of its `postgres` port.
    pub postgres_ports: BTreeMap<String, u16>,
}

impl Topology {
    fn engine(&self, host_id: &str) -> &str {
        self.hosts.get(host_id).map_or("", |h| h.engine_id.as_str())
    }
}

/// The names each Postgres instance of `spec` is dialled by, for its TLS certificate:
/// its alias on the database network (same engine) and its host's address (other engines).
/// Instance id -> names.
pub fn postgres_cert_names(
    database_id: &str,
    spec: &DatabaseSpec,
    topology: &Topology,
) -> BTreeMap<String, Vec<String>> {
    let mut out = BTreeMap::new();
    for node in &spec.nodes {
        for host_id in &node.host_ids {
            let mut names = vec![postgres_alias(&node.name, host_id)];
            if let Some(address) = topology.hosts.get(host_id).and_then(|h| h.address.clone()) {
                names.push(address);
            }
            out.insert(
                plan::postgres_instance_id(database_id, &node.name, host_id),
                names,
            );
        }
    }
    out
}

/// One instance to run: what the planner compares, and what the agent applies.
/// Its `Debug` leaves out the contents of the config files (`berth.conf` holds the superuser
/// and replication passwords, service configs hold API keys and role passwords): the
/// agent protocol's `ConfigFile` redacts them.
#[derive(Debug, Clone, PartialEq)]
pub struct Desired {
    pub plan: DesiredInstance,
    pub spec: pb::InstanceSpec,
    /// Why its spec cannot be written yet (then `plan.waiting` is set and `spec` is not to
    /// be applied).
    pub waiting_for: Option<String>,
}

/// Everything that defines a container but its resources, in a form whose serialization is
/// stable (sorted maps), so its hash changes exactly when a new container is needed.
#[derive(Debug, Clone, Serialize)]
struct ContainerSpec {
    image: String,
    command: Vec<String>,
    env: BTreeMap<String, String>,
    files: BTreeMap<String, String>,
    config_mount_path: String,
    data_mount_path: Option<String>,
    network: String,
    aliases: Vec<String>,
    ports: Vec<(String, u16, Option<u16>)>,
    health_check: Option<Vec<String>>,
    stop_timeout_seconds: u32,
}

pub fn network_name(database_id: &str) -> String {
    format!("berth-{database_id}")
}

/// The DNS name of a Postgres instance on its database's network.
pub fn postgres_alias(node: &str, host_id: &str) -> String {
    format!("{node}-{host_id}")
}

fn resources(service: Option<&ServiceSpec>, index: usize) -> Result<Resources, DesiredError> {
    let Some(s) = service else {
        return Ok(Resources {
            nano_cpus: 0,
            memory_bytes: 0,
        });
    };
    let quantity = |field: &str, message: String| DesiredError::Quantity {
        field: format!("spec.services[{index}].{field}"),
        message,
    };
    let nano_cpus = match &s.cpus {
        Some(c) => spec::quantity::parse_cpus(c).map_err(|m| quantity("cpus", m))?,
        None => 0,
    };
    let memory_bytes = match &s.memory {
        Some(m) => spec::quantity::parse_memory(m).map_err(|e| quantity("memory", e))? as i64,
        None => 0,
    };
    Ok(Resources {
        nano_cpus,
        memory_bytes,
    })
}

fn health(test: Vec<String>) -> pb::HealthCheck {
    pb::HealthCheck {
        test,
        // Docker 20.10 has no separate start interval, so a short interval is what makes a new
        // instance count as healthy soon after it is.
        interval_ms: 1000,
        timeout_ms: 5000,
        retries: 3,
        start_period_ms: 120_000,
    }
}

fn finish(
    database_id: &str,
    instance_id: String,
    host_id: &str,
    kind: InstanceKind,
    service_id: &str,
    c: ContainerSpec,
    res: Resources,
) -> Desired {
    let hash = plan::spec_hash(&c);
    let host_ports = c
        .ports
        .iter()
        .filter_map(|(_, _, host)| host.filter(|p| *p != 0))
        .collect();
    let pb_kind = match kind {
        InstanceKind::Postgres { .. } => pb::InstanceKind::Postgres,
        InstanceKind::Service { .. } => pb::InstanceKind::Service,
    };
    let labels = [(DESIRED_HASH_LABEL.to_string(), hash.clone())]
        .into_iter()
        .collect();
    let spec = pb::InstanceSpec {
        instance_id: instance_id.clone(),
        database_id: database_id.to_string(),
        service_id: service_id.to_string(),
        kind: pb_kind as i32,
        image: c.image,
        command: c.command,
        env: c.env.into_iter().collect(),
        files: c
            .files
            .into_iter()
            .map(|(path, content)| pb::ConfigFile {
                path,
                content: content.into_bytes(),
            })
            .collect(),
        config_mount_path: c.config_mount_path,
        data_mount_path: c.data_mount_path,
        labels,
        network: Some(pb::NetworkAttachment {
            name: c.network,
            aliases: c.aliases,
        }),
        ports: c
            .ports
            .into_iter()
            .map(|(name, container_port, host_port)| pb::PortSpec {
                name,
                container_port: container_port.into(),
                host_port: host_port.map(Into::into),
            })
            .collect(),
        nano_cpus: res.nano_cpus,
        memory_bytes: res.memory_bytes,
        health_check: c.health_check.map(health),
        user: String::new(),
        stop_timeout_seconds: c.stop_timeout_seconds,
        pull_policy: pb::ImagePullPolicy::Never as i32,
    };
    Desired {
        plan: DesiredInstance {
            instance_id,
            host_id: host_id.to_string(),
            kind,
            spec_hash: hash,
            resources: res,
            waiting: false,
            host_ports,
        },
        spec,
        waiting_for: None,
    }
}

/// The agent's pull policy for a manifest entry's. Not part of the spec hash: how an image gets
/// onto the engine does not change the container.
fn pull_policy(p: spec::manifest::PullPolicy) -> pb::ImagePullPolicy {
    match p {
        spec::manifest::PullPolicy::Never => pb::ImagePullPolicy::Never,
        spec::manifest::PullPolicy::IfNotPresent => pb::ImagePullPolicy::IfNotPresent,
    }
}

/// Marks `d` as not writable yet, for `why`.
fn waiting(mut d: Desired, why: String) -> Desired {
    d.plan.waiting = true;
    d.waiting_for = Some(why);
    d
}

/// Files of a Postgres instance's config directory besides `berth.conf`: its certificate
/// and key, and the fleet CA its replicas verify the primary with (the image's contract,
/// deploy/images/postgres/entrypoint).
fn postgres_tls_files(
    instance_id: &str,
    creds: &DatabaseCredentials,
    ca_pem: &str,
) -> Result<[(String, String); 3], DesiredError> {
    let cert = creds
        .postgres_certs
        .get(instance_id)
        .ok_or_else(|| DesiredError::MissingCertificate(instance_id.to_string()))?;
    Ok([
        ("server.crt".to_string(), cert.cert_pem.clone()),
        ("server.key".to_string(), cert.key_pem.clone()),
        ("ca.crt".to_string(), ca_pem.to_string()),
    ])
}

/// Every instance `spec` asks for. Credentials for every service, and a certificate for
/// every Postgres instance ([`postgres_cert_names`]), must already exist in `creds`.
///
/// An instance on one engine reaches an instance on another at the host's address and
/// published port ([`plan::routing::reach`]); while such a port is not known yet, the
/// instance that needs it is returned waiting ([`Desired::waiting_for`]).
pub fn desired_instances(
    database_id: &str,
    spec: &DatabaseSpec,
    manifest: &Manifest,
    creds: &DatabaseCredentials,
    topology: &Topology,
    ca_pem: &str,
) -> Result<Vec<Desired>, DesiredError> {
    let mut out = Vec::new();
    let postgres = manifest
        .resolve_postgres(spec.postgres_version.as_deref())
        .ok_or_else(|| {
            DesiredError::PostgresVersion(spec.postgres_version.clone().unwrap_or_default())
        })?;
    let network = network_name(database_id);
    let endpoint = |node: &str, host_id: &str, primary: bool| {
        let id = plan::postgres_instance_id(database_id, node, host_id);
        let address = topology.hosts.get(host_id).and_then(|h| h.address.clone());
        PostgresEndpoint {
            node: node.to_string(),
            host_id: host_id.to_string(),
            primary,
            engine_id: topology.engine(host_id).to_string(),
            alias: postgres_alias(node, host_id),
            port: POSTGRES_PORT,
            published: address.zip(topology.postgres_ports.get(&id).copied()),
        }
    };
    let endpoints: Vec<PostgresEndpoint> = spec
        .nodes
        .iter()
        .flat_map(|node| {
            node.host_ids
                .iter()
                .enumerate()
                .map(|(i, h)| endpoint(&node.name, h, i == 0))
        })
        .collect();

    for node in &spec.nodes {
        let primary_host = &node.host_ids[0];
        for (i, host_id) in node.host_ids.iter().enumerate() {
            let primary = i == 0;
            let id = plan::postgres_instance_id(database_id, &node.name, host_id);
            let mut conf = format!(
                "superuser_password={}\ndatabase={}\nreplication_user=replicator\nreplication_password={}\n",
                creds.superuser_password.expose_secret(),
                spec.database_name,
                creds.replication_password.expose_secret()
            );
            let mut unpublished = None;
            if !primary {
                let upstream = endpoint(&node.name, primary_host, true);
                match reach(&upstream, host_id, topology.engine(host_id)) {
                    // The alias names the standby in the primary's pg_stat_replication.
                    Ok((host, port)) => conf.push_str(&format!(
                        "primary_host={host}\nprimary_port={port}\napplication_name={}\n",
                        postgres_alias(&node.name, host_id)
                    )),
                    Err(e) => unpublished = Some(e.to_string()),
                }
            }
            let mut files: BTreeMap<String, String> =
                [("berth.conf".to_string(), conf)].into_iter().collect();
            files.extend(postgres_tls_files(&id, creds, ca_pem)?);
            let c = ContainerSpec {
                image: postgres.image.clone(),
                command: vec![],
                env: postgres.env.clone(),
                files,
                config_mount_path: POSTGRES_CONFIG_DIR.into(),
                data_mount_path: Some(POSTGRES_DATA_DIR.into()),
                network: network.clone(),
                aliases: vec![postgres_alias(&node.name, host_id)],
                // Always published, so that other engines can reach it: on the spec's
                // port, or on one the agent picks once and keeps.
                ports: vec![(
                    "postgres".into(),
                    POSTGRES_PORT,
                    Some(spec.port.unwrap_or(0)),
                )],
                health_check: postgres.health_check.clone(),
                // Postgres needs time to checkpoint on a clean shutdown.
                stop_timeout_seconds: 60,
            };
            let kind = InstanceKind::Postgres {
                node: node.name.clone(),
                primary,
            };
            let mut d = finish(database_id, id, host_id, kind, "", c, resources(None, 0)?);
            d.spec.pull_policy = pull_policy(postgres.pull_policy) as i32;
            out.push(match unpublished {
                Some(why) => waiting(d, why),
                None => d,
            });
        }
    }

    for (index, service) in spec.services.iter().enumerate() {
        let image = manifest
            .resolve_service(service.service_type, &service.version)
            .ok_or_else(|| DesiredError::ServiceVersion {
                service_id: service.service_id.clone(),
                service_type: service.service_type,
                version: service.version.clone(),
            })?;
        let svc_creds = creds
            .services
            .get(&service.service_id)
            .ok_or_else(|| DesiredError::MissingCredentials(service.service_id.clone()))?;
        let rw = service_config::Credentials {
            username: role_name(&service.service_id, "rw"),
            password: svc_creds.rw_password.expose_secret().to_string(),
        };
        let ro = service_config::Credentials {
            username: role_name(&service.service_id, "ro"),
            password: svc_creds.ro_password.expose_secret().to_string(),
        };
        let config = spec::catalog::effective_config(service.service_type, &service.config);
        let attrs = target_session_attrs(service, &config);
        let res = resources(Some(service), index)?;
        for host_id in &service.host_ids {
            let (hosts, unpublished) = match connection_hosts(
                spec,
                service,
                host_id,
                topology.engine(host_id),
                &endpoints,
            ) {
                Ok(hosts) => (hosts, None),
                Err(e) => (Vec::new(), Some(e.to_string())),
            };
            let target = service_config::ConnectionTarget {
                hosts,
                dbname: spec.database_name.clone(),
                target_session_attrs: attrs.as_str().to_string(),
                ca_pem: Some(ca_pem.to_string()),
            };
            let files = service_config::render(
                service.service_type,
                &config,
                &rw,
                &ro,
                &target,
                SERVICE_PORT,
            )
            .into_iter()
            .map(|f| (f.path, String::from_utf8_lossy(&f.content).into_owned()))
            .collect();
            let c = ContainerSpec {
                image: image.image.clone(),
                command: vec![],
                env: image.env.clone(),
                files,
                config_mount_path: service_config::DEFAULT_CONFIG_DIR.into(),
                data_mount_path: None,
                network: network.clone(),
                aliases: vec![format!("{}-{host_id}", service.service_id)],
                ports: service
                    .port
                    .map(|p| vec![("http".into(), SERVICE_PORT, Some(p))])
                    .unwrap_or_default(),
                health_check: image.health_check.as_ref().map(|t| {
                    t.iter()
                        .map(|a| a.replace("{port}", &SERVICE_PORT.to_string()))
                        .collect()
                }),
                stop_timeout_seconds: 10,
            };
            let kind = InstanceKind::Service {
                service_id: service.service_id.clone(),
            };
            let id = plan::service_instance_id(database_id, &service.service_id, host_id);
            let mut d = finish(database_id, id, host_id, kind, &service.service_id, c, res);
            d.spec.pull_policy = pull_policy(image.pull_policy) as i32;
            out.push(match unpublished {
                Some(why) => waiting(d, why),
                None => d,
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
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

    fn build(spec: &DatabaseSpec, c: &DatabaseCredentials, t: &Topology) -> Vec<Desired> {
        desired_instances("db", spec, &manifest(), c, t, CA).unwrap()
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
        assert_eq!(
            d[0].plan.kind,
            InstanceKind::Postgres {
                node: "n1".into(),
                primary: true
            }
        );
        assert_eq!(
            d[1].plan.kind,
            InstanceKind::Postgres {
                node: "n1".into(),
                primary: false
            }
        );
        let replica_conf = file(&d[1], "berth.conf");
        assert!(
            replica_conf.contains("primary_host=n1-host-1\nprimary_port=5432\n"),
            "one engine: the replica clones from the alias: {replica_conf}"
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
        }
    }

    #[test]
    fn hashes_are_stable_change_with_config_and_ignore_resources() {
        let c = creds();
        let m = manifest();
        let t = one_engine();
        let a = desired_instances("db", &spec_with(mcp("m1", None)), &m, &c, &t, CA).unwrap();
        let again = desired_instances("db", &spec_with(mcp("m1", None)), &m, &c, &t, CA).unwrap();
        assert_eq!(a, again);
        let changed = desired_instances("db", &spec_with(mcp("m2", None)), &m, &c, &t, CA).unwrap();
        assert_eq!(
            a[0].plan.spec_hash, changed[0].plan.spec_hash,
            "postgres untouched by a service change"
        );
        assert_ne!(a[2].plan.spec_hash, changed[2].plan.spec_hash);
        let resized =
            desired_instances("db", &spec_with(mcp("m1", Some("500m"))), &m, &c, &t, CA).unwrap();
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
        // Before the primary has a published port, the replica on another engine, and the
        // services that list it, wait; the primary itself does not.
        let d = build(&spec, &c, &engine_per_host(&[]));
        let waiting: Vec<(&str, bool)> = d
            .iter()
            .map(|d| (d.plan.instance_id.as_str(), d.plan.waiting))
            .collect();
        assert_eq!(
            waiting,
            [
                ("db-n1-host-1", false),
                ("db-n1-host-2", true),
                ("db-mcp-server-host-1", true),
                ("db-mcp-server-host-3", true)
            ]
        );
        assert!(d[1].waiting_for.as_deref().unwrap().contains("host-1"));
        assert_eq!(
            d[0].spec.ports[0].host_port,
            Some(0),
            "published on a port the agent picks"
        );

        let d = build(
            &spec,
            &c,
            &engine_per_host(&[("db-n1-host-1", 40001), ("db-n1-host-2", 40002)]),
        );
        assert!(d.iter().all(|d| !d.plan.waiting));
        assert!(
            file(&d[1], "berth.conf").contains("primary_host=10.0.0.1\nprimary_port=40001\n"),
            "{}",
            file(&d[1], "berth.conf")
        );
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
                CA
            ),
            Err(DesiredError::MissingCertificate("db-n1-host-1".into()))
        );
    }
}
