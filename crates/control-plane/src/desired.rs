//! What should run for a database: every Postgres instance and service instance, as the
//! exact container spec an agent applies, and its hash for the planner. Pure: the same
//! inputs give the same specs byte for byte, so an unchanged service is never touched.

use std::collections::BTreeMap;

use agent_proto as pb;
use plan::routing::{PostgresEndpoint, connection_hosts, target_session_attrs};
use plan::{DesiredInstance, InstanceKind, Resources};
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
}

/// One instance to run: what the planner compares, and what the agent applies.
#[derive(Debug, Clone, PartialEq)]
pub struct Desired {
    pub plan: DesiredInstance,
    pub spec: pb::InstanceSpec,
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
    };
    Desired {
        plan: DesiredInstance {
            instance_id,
            host_id: host_id.to_string(),
            kind,
            spec_hash: hash,
            resources: res,
        },
        spec,
    }
}

/// Every instance `spec` asks for. Credentials for every service must already exist.
pub fn desired_instances(
    database_id: &str,
    spec: &DatabaseSpec,
    manifest: &Manifest,
    creds: &DatabaseCredentials,
) -> Result<Vec<Desired>, DesiredError> {
    let mut out = Vec::new();
    let postgres = manifest
        .resolve_postgres(spec.postgres_version.as_deref())
        .ok_or_else(|| {
            DesiredError::PostgresVersion(spec.postgres_version.clone().unwrap_or_default())
        })?;
    let network = network_name(database_id);
    let mut endpoints = Vec::new();

    for node in &spec.nodes {
        let primary_host = &node.host_ids[0];
        for (i, host_id) in node.host_ids.iter().enumerate() {
            let primary = i == 0;
            let alias = postgres_alias(&node.name, host_id);
            endpoints.push(PostgresEndpoint {
                node: node.name.clone(),
                host_id: host_id.clone(),
                primary,
                address: alias.clone(),
                port: POSTGRES_PORT,
            });
            let mut conf = format!(
                "superuser_password={}\ndatabase={}\nreplication_user=replicator\nreplication_password={}\n",
                creds.superuser_password, spec.database_name, creds.replication_password
            );
            if !primary {
                conf.push_str(&format!(
                    "primary_host={}\nprimary_port={POSTGRES_PORT}\n",
                    postgres_alias(&node.name, primary_host)
                ));
            }
            let c = ContainerSpec {
                image: postgres.image.clone(),
                command: vec![],
                env: postgres.env.clone(),
                files: [("berth.conf".to_string(), conf)].into_iter().collect(),
                config_mount_path: POSTGRES_CONFIG_DIR.into(),
                data_mount_path: Some(POSTGRES_DATA_DIR.into()),
                network: network.clone(),
                aliases: vec![alias],
                ports: spec
                    .port
                    .map(|p| vec![("postgres".into(), POSTGRES_PORT, Some(p))])
                    .unwrap_or_default(),
                health_check: postgres.health_check.clone(),
                // Postgres needs time to checkpoint on a clean shutdown.
                stop_timeout_seconds: 60,
            };
            let kind = InstanceKind::Postgres {
                node: node.name.clone(),
                primary,
            };
            let id = plan::postgres_instance_id(database_id, &node.name, host_id);
            out.push(finish(
                database_id,
                id,
                host_id,
                kind,
                "",
                c,
                resources(None, 0)?,
            ));
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
            password: svc_creds.rw_password.clone(),
        };
        let ro = service_config::Credentials {
            username: role_name(&service.service_id, "ro"),
            password: svc_creds.ro_password.clone(),
        };
        let config = spec::catalog::effective_config(service.service_type, &service.config);
        let attrs = target_session_attrs(service, &config);
        let res = resources(Some(service), index)?;
        for host_id in &service.host_ids {
            let target = service_config::ConnectionTarget {
                hosts: connection_hosts(spec, service, host_id, &endpoints),
                dbname: spec.database_name.clone(),
                target_session_attrs: attrs.as_str().to_string(),
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
            out.push(finish(
                database_id,
                id,
                host_id,
                kind,
                &service.service_id,
                c,
                res,
            ));
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

    fn creds() -> DatabaseCredentials {
        let mut c = DatabaseCredentials::generate();
        c.ensure_services(["mcp-server"]);
        c
    }

    #[test]
    fn one_postgres_instance_per_node_host_and_one_service_instance_per_service_host() {
        let d = desired_instances("db", &spec_with(mcp("m", None)), &manifest(), &creds()).unwrap();
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
        let replica_conf = String::from_utf8(d[1].spec.files[0].content.clone()).unwrap();
        assert!(
            replica_conf.contains("primary_host=n1-host-1\n"),
            "{replica_conf}"
        );
        // Secrets reach the container only through files, never its environment.
        let c = creds();
        for inst in desired_instances("db", &spec_with(mcp("m", None)), &manifest(), &c).unwrap() {
            let env = format!("{:?}", inst.spec.env);
            assert!(
                !env.contains(&c.superuser_password)
                    && !env.contains(&c.services["mcp-server"].rw_password)
            );
        }
    }

    #[test]
    fn hashes_are_stable_change_with_config_and_ignore_resources() {
        let c = creds();
        let m = manifest();
        let a = desired_instances("db", &spec_with(mcp("m1", None)), &m, &c).unwrap();
        let again = desired_instances("db", &spec_with(mcp("m1", None)), &m, &c).unwrap();
        assert_eq!(a, again);
        let changed = desired_instances("db", &spec_with(mcp("m2", None)), &m, &c).unwrap();
        assert_eq!(
            a[0].plan.spec_hash, changed[0].plan.spec_hash,
            "postgres untouched by a service change"
        );
        assert_ne!(a[2].plan.spec_hash, changed[2].plan.spec_hash);
        let resized = desired_instances("db", &spec_with(mcp("m1", Some("500m"))), &m, &c).unwrap();
        assert_eq!(a[2].plan.spec_hash, resized[2].plan.spec_hash);
        assert_eq!(resized[2].plan.resources.nano_cpus, 500_000_000);
        assert_eq!(resized[2].spec.nano_cpus, 500_000_000);
    }

    #[test]
    fn service_health_check_gets_the_service_port() {
        let d = desired_instances("db", &spec_with(mcp("m", None)), &manifest(), &creds()).unwrap();
        let test = &d[2].spec.health_check.as_ref().unwrap().test;
        assert!(
            test.iter().any(|a| a == "http://127.0.0.1:8080/health"),
            "{test:?}"
        );
        assert_eq!(d[2].spec.env["BERTH_SERVICE_TYPE"], "mcp");
    }
}
