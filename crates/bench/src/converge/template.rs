//! What makes the alternatives equal to berth: berth's first round is inspected (image, command, environment,
//! user, health check, network aliases), its rendered config directories are copied, and the SQL of its role
//! step is rebuilt with the SCRAM verifiers it set, so every alternative starts the same containers with
//! byte-identical configs and does the same role step.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use bollard::models::HealthConfig;
use bollard::query_parameters::InspectContainerOptions;

use agent::runtime::DockerRuntime;
use control_plane::credentials::{RoleVerifiers, create_roles_sql, role_name};

use super::berth::Berth;
use super::engine::psql;

/// One container of the template, as berth ran it.
#[derive(Debug, Clone)]
pub struct Template {
    /// mcp, rest, rag, or "pg".
    pub role: String,
    pub image: String,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub user: String,
    pub health: HealthConfig,
    pub aliases: Vec<String>,
    /// (copied config dir, mount point in the container)
    pub config: Option<(PathBuf, String)>,
    /// Mount point of the data directory, fresh per round.
    pub data: Option<String>,
}

/// berth's containers and role step, for the alternatives to repeat. Postgres comes first.
pub struct Captured {
    pub containers: Vec<Template>,
    /// Role SQL per service, with the SCRAM verifiers berth set (so the copied configs' passwords work).
    pub role_sql: Vec<String>,
    pub database_name: String,
}

/// The engine's health check command, as a list (`CMD ...` or `CMD-SHELL ...`).
pub fn health_test(h: &HealthConfig) -> Vec<String> {
    h.test.clone().unwrap_or_default()
}

/// A health check duration (nanoseconds in the Engine API) as compose and the CLI write it.
pub fn duration_ns(ns: Option<i64>) -> String {
    format!("{}ms", ns.unwrap_or(0) / 1_000_000)
}

/// Inspects the four containers of `db`, which `berth` (on the machine's engine) made, and copies their
/// config dirs under `into`.
pub async fn capture(
    berth: &Berth,
    engine: &DockerRuntime,
    db: &str,
    into: &Path,
) -> Result<Captured> {
    let docker = &engine.client();
    let host = |i: usize| &berth.cluster.hosts[i];
    let n1 = format!("{db}-n1-{}", host(0));
    let members = [
        ("pg", berth.container(0, &n1)),
        ("mcp", berth.container(0, &format!("{db}-mcp-{}", host(0)))),
        (
            "rest",
            berth.container(1, &format!("{db}-rest-{}", host(1))),
        ),
        ("rag", berth.container(2, &format!("{db}-rag-{}", host(2)))),
    ];
    std::fs::create_dir_all(into)?;
    let mut containers = Vec::new();
    for (role, name) in members {
        let c = docker
            .inspect_container(&name, None::<InspectContainerOptions>)
            .await
            .with_context(|| format!("inspect {name}"))?;
        let config = c.config.clone().unwrap_or_default();
        let aliases = c
            .network_settings
            .as_ref()
            .and_then(|n| n.networks.as_ref())
            .and_then(|n| n.values().next().cloned())
            .and_then(|e| e.aliases)
            .unwrap_or_default()
            .into_iter()
            // Docker adds the short container id as an alias of its own.
            .filter(|a| !c.id.as_deref().unwrap_or_default().starts_with(a.as_str()))
            .collect();
        let mut template = Template {
            role: role.into(),
            image: config.image.clone().unwrap_or_default(),
            cmd: config.cmd.clone().unwrap_or_default(),
            env: config.env.clone().unwrap_or_default(),
            user: config.user.clone().unwrap_or_default(),
            health: config.healthcheck.clone().unwrap_or_default(),
            aliases,
            config: None,
            data: None,
        };
        for m in c.mounts.unwrap_or_default() {
            let (Some(src), Some(dst)) = (m.source, m.destination) else {
                continue;
            };
            if m.rw == Some(false) {
                let copy = into.join(role);
                let status = Command::new("cp").arg("-a").arg(&src).arg(&copy).status()?;
                if !status.success() {
                    bail!("copy {src} to {}", copy.display());
                }
                template.config = Some((copy, dst));
            } else {
                template.data = Some(dst);
            }
        }
        containers.push(template);
    }
    let pg = berth.container(0, &n1);
    let database_name = "app".to_string();
    let verifiers = psql(
        engine,
        &pg,
        &database_name,
        &[
            "-At",
            "-F",
            " ",
            "-c",
            "SELECT rolname, rolpassword FROM pg_authid",
        ],
        b"",
    )
    .await?;
    let verifiers: HashMap<String, String> = verifiers
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    // berth's own role SQL, with the SCRAM verifiers it set as the passwords (Postgres stores a verifier as
    // given), so the copied config files' passwords work.
    let mut role_sql = Vec::new();
    for service in ["mcp", "rest", "rag"] {
        let verifier = |suffix: &str| {
            let role = role_name(service, suffix);
            verifiers
                .get(&role)
                .cloned()
                .with_context(|| format!("berth created no role {role}"))
        };
        let verifiers = RoleVerifiers {
            ro: verifier("ro")?,
            rw: verifier("rw")?,
        };
        role_sql.push(create_roles_sql(&database_name, service, &verifiers));
    }
    Ok(Captured {
        containers,
        role_sql,
        database_name,
    })
}
