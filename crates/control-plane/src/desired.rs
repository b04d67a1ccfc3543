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
use spec::{DatabaseSpec, NodeSpec, ServiceSpec};

use crate::credentials::{DatabaseCredentials, role_name};
use crate::patroni::config as patroni;

/// Port every service listens on inside its container.
pub const SERVICE_PORT: u16 = 8080;
pub const POSTGRES_CONFIG_DIR: &str = "/etc/berth/postgres";
/// PGDATA itself is the mount: the entrypoint gives it to the postgres user, which a
/// root-owned 0700 parent mount would lock out.
pub const POSTGRES_DATA_DIR: &str = "/var/lib/postgresql/data";
/// The directory of Postgres's Unix socket in the image (`unix_socket_directories`).
pub const POSTGRES_SOCKET_DIR: &str = "/var/run/postgresql";
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
/// The node's `pgbackrest.conf` (ADR 022), from its effective `backup_config`; None when it
/// has no usable repository.
pub fn node_backup_conf(database_id: &str, spec: &DatabaseSpec, node: &NodeSpec) -> Option<String> {
    let config = spec::backup::effective_backup_config(spec, node)?;
    pgbackrest::render_conf(database_id, &node.name, &config.repositories, &pg_local())
}

/// What a node that starts from a backup needs (ADR 025).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRestore {
    /// The node's `pgbackrest-restore.conf` (holds repository keys).
    pub conf: String,
    /// The `pgbackrest restore` command Patroni runs (through the image's wrapper,
    /// [`crate::patroni::restore::WRAPPER`]) to bootstrap the node.
    pub argv: Vec<String>,
    /// The database in the backup.
    pub source_database_name: String,
}

/// The backup `node` starts from, when its effective `restore_config` names a repository
/// its instances can use. A repository named by id is one of the node's effective
/// `backup_config` (validated on the way in).
pub fn node_restore(spec: &DatabaseSpec, node: &NodeSpec) -> Option<NodeRestore> {
    let restore = spec::backup::effective_restore_config(spec, node)?;
    let repository = match &restore.repository {
        spec::backup::RestoreRepository::Inline(r) => r,
        spec::backup::RestoreRepository::Id(id) => {
            spec::backup::effective_backup_config(spec, node)?
                .repositories
                .iter()
                .find(|r| &r.id == id)?
        }
    };
    if pgbackrest::conf::usable(std::slice::from_ref(repository)).is_empty() {
        return None;
    }
    let source = pgbackrest::RestoreSource {
        source_database_id: &restore.source_database_id,
        source_node: &restore.source_node_name,
        repository,
    };
    let argv = pgbackrest::restore_argv(
        &crate::patroni::restore::conf_path(),
        &restore.restore_options,
    );
    Some(NodeRestore {
        conf: pgbackrest::render_restore_conf(&node.name, &source, &pg_local()),
        argv,
        source_database_name: restore.source_database_name.clone(),
    })
}

/// Where pgBackRest finds Postgres in an instance's container.
fn pg_local() -> pgbackrest::PgLocal<'static> {
    pgbackrest::PgLocal {
        data_dir: POSTGRES_DATA_DIR,
        socket_dir: POSTGRES_SOCKET_DIR,
        port: patroni::POSTGRES_PORT,
    }
}

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
            let backup_conf = node_backup_conf(database_id, spec, node);
            let restore = node_restore(spec, node);
            let member = patroni::Member {
                database_id,
                node: &node.name,
                instance_id: &id,
                database_name: &spec.database_name,
                postgres_version: &postgres.version,
                archiving: backup_conf.is_some(),
                restore: restore.as_ref().map(|r| crate::patroni::restore::Restore {
                    argv: &r.argv,
                    source_database_name: &r.source_database_name,
                }),
            };
            let mut files: BTreeMap<String, String> = [
                ("berth.conf".to_string(), conf),
                ("patroni.yml".to_string(), patroni::render(&member, dcs)),
            ]
            .into_iter()
            .collect();
            if let Some(text) = backup_conf {
                files.insert(pgbackrest::CONF_FILE.to_string(), text);
            }
            if let Some(restore) = restore {
                files.insert(pgbackrest::RESTORE_CONF_FILE.to_string(), restore.conf);
            }
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
#[path = "desired_tests.rs"]
mod tests;
