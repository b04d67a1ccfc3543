//! What should run for a database: every Postgres instance and service instance, as the
//! exact container spec an agent applies, and its hash for the planner. Pure: the same
//! inputs give the same specs byte for byte, so an unchanged service is never touched.

use std::collections::{BTreeMap, BTreeSet};

use agent_proto as pb;
use plan::routing::{PostgresEndpoint, connection_hosts, target_session_attrs};
use plan::{DesiredInstance, InstanceKind, Resources};
use secrecy::ExposeSecret;
use serde::Serialize;
use spec::manifest::Manifest;
use spec::{DatabaseSpec, ServiceSpec};

use crate::credentials::{DatabaseCredentials, role_name};
use crate::patroni::config as patroni;

/// Port every service listens on inside its container.
pub const SERVICE_PORT: u16 = 8080;
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
    /// Node -> the hosts its Postgres instances are on now (their records), wanted or not.
    pub postgres_hosts: BTreeMap<String, BTreeSet<String>>,
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
            bootstrap: false,
            stopped: false,
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
/// Postgres instances run under Patroni with `dcs` as its DCS (ADR 016): each gets its
/// `patroni.yml` and the address its peers dial it at, the node's alias on the database
/// network when every instance of the node is on one engine, else its host's address and
/// published ports (the image's `connect_ports=published`). A service on one engine reaches
/// an instance on another at the host's address and published port
/// ([`plan::routing::reach`]); while such a port is not known yet, the service is returned
/// waiting ([`Desired::waiting_for`]).
pub fn desired_instances(
    database_id: &str,
    spec: &DatabaseSpec,
    manifest: &Manifest,
    creds: &DatabaseCredentials,
    topology: &Topology,
    ca_pem: &str,
    dcs: &patroni::Dcs,
) -> Result<Vec<Desired>, DesiredError> {
    let mut out = Vec::new();
    let postgres = manifest
        .resolve_postgres(spec.postgres_version.as_deref())
        .ok_or_else(|| {
            DesiredError::PostgresVersion(spec.postgres_version.clone().unwrap_or_default())
        })?;
    let network = network_name(database_id);
    let endpoint = |node: &str, host_id: &str| {
        let id = plan::postgres_instance_id(database_id, node, host_id);
        let address = topology.hosts.get(host_id).and_then(|h| h.address.clone());
        PostgresEndpoint {
            node: node.to_string(),
            host_id: host_id.to_string(),
            engine_id: topology.engine(host_id).to_string(),
            alias: postgres_alias(node, host_id),
            port: patroni::POSTGRES_PORT,
            published: address.zip(topology.postgres_ports.get(&id).copied()),
        }
    };
    let endpoints: Vec<PostgresEndpoint> = spec
        .nodes
        .iter()
        .flat_map(|node| node.host_ids.iter().map(|h| endpoint(&node.name, h)))
        .collect();

    for node in &spec.nodes {
        // Every instance of the node, wanted or still there, decides how they dial each
        // other: by alias on one engine, else at host addresses and published ports. Counting
        // the ones still there keeps a node that moves hosts on one way throughout the move.
        let mut node_hosts: BTreeSet<&str> = node.host_ids.iter().map(String::as_str).collect();
        if let Some(existing) = topology.postgres_hosts.get(&node.name) {
            node_hosts.extend(existing.iter().map(String::as_str));
        }
        let engines: BTreeSet<&str> = node_hosts.iter().map(|h| topology.engine(h)).collect();
        let one_engine = node_hosts.len() == 1 || (engines.len() == 1 && !engines.contains(""));
        for (i, host_id) in node.host_ids.iter().enumerate() {
            let id = plan::postgres_instance_id(database_id, &node.name, host_id);
            let alias = postgres_alias(&node.name, host_id);
            let mut unpublished = None;
            let connect = if one_engine {
                format!("connect_host={alias}\nconnect_ports=container\n")
            } else {
                match topology.hosts.get(host_id).and_then(|h| h.address.clone()) {
                    Some(address) => format!("connect_host={address}\nconnect_ports=published\n"),
                    None => {
                        unpublished = Some(format!(
                            "host {host_id} has no address, and node {} spans engines",
                            node.name
                        ));
                        String::new()
                    }
                }
            };
            let mut conf = format!(
                "superuser_password={}\nreplication_password={}\nrestapi_password={}\n{connect}",
                creds.superuser_password.expose_secret(),
                creds.replication_password.expose_secret(),
                creds.restapi_password.expose_secret(),
            );
            // The node's own etcd user (ADR 017), which the entrypoint hands Patroni in its
            // environment like the passwords above.
            if dcs.node_users
                && let Some(user) = creds.etcd_users.get(&node.name)
            {
                conf.push_str(&format!(
                    "etcd_username={}\netcd_password={}\n",
                    store::Keys::new(&dcs.prefix).patroni_user(database_id, &node.name),
                    user.password.expose_secret(),
                ));
            }
            let member = patroni::Member {
                database_id,
                node: &node.name,
                instance_id: &id,
                database_name: &spec.database_name,
                postgres_version: &postgres.version,
            };
            let mut files: BTreeMap<String, String> = [
                ("berth.conf".to_string(), conf),
                ("patroni.yml".to_string(), patroni::render(&member, dcs)),
            ]
            .into_iter()
            .collect();
            files.extend(postgres_tls_files(&id, creds, ca_pem)?);
            let c = ContainerSpec {
                image: postgres.image.clone(),
                command: vec![],
                env: postgres.env.clone(),
                files,
                config_mount_path: POSTGRES_CONFIG_DIR.into(),
                data_mount_path: Some(POSTGRES_DATA_DIR.into()),
                network: network.clone(),
                aliases: vec![alias.clone()],
                // Always published, so that other engines can reach them: Postgres on the
                // spec's port or on one the agent picks once and keeps, Patroni's REST API
                // on one the agent picks.
                ports: vec![
                    (
                        "postgres".into(),
                        patroni::POSTGRES_PORT,
                        Some(spec.port.unwrap_or(0)),
                    ),
                    ("patroni".into(), patroni::REST_API_PORT, Some(0)),
                ],
                // Patroni's liveness, not the manifest's check of Postgres (see
                // `patroni::health_check`).
                health_check: Some(patroni::health_check(&alias)),
                // Postgres needs time to checkpoint on a clean shutdown.
                stop_timeout_seconds: 60,
            };
            let kind = InstanceKind::Postgres {
                node: node.name.clone(),
            };
            let mut d = finish(database_id, id, host_id, kind, "", c, resources(None, 0)?);
            d.plan.bootstrap = i == 0;
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
        let with =
            desired_instances("db", &spec, &manifest(), &c, &one_engine(), CA, &users).unwrap();
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
        let a =
            desired_instances("db", &spec_with(mcp("m1", None)), &m, &c, &t, CA, &dcs()).unwrap();
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
            file(&moving[0], "berth.conf")
                .contains("connect_host=10.0.0.2\nconnect_ports=published\n")
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
}
