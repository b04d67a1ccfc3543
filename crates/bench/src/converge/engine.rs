//! What every converge variant asks of a Docker engine: the docker CLI, `psql` in a Postgres container through
//! the agent's own exec, the services' role step, and the wait until containers are healthy.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bollard::Docker;
use bollard::models::{ContainerStateStatusEnum, HealthStatusEnum};
use bollard::query_parameters::InspectContainerOptions;

use agent::runtime::{ContainerRuntime, DockerRuntime};
use control_plane::credentials::psql_argv;

use super::template::Captured;

/// How often every variant's waiter asks the engine whether the containers are healthy.
pub const POLL: Duration = Duration::from_millis(50);
/// How long anything may take before the variant is declared broken.
pub const LIMIT: Duration = Duration::from_secs(180);

/// Runs a command line tool; its stdout, or an error with its stderr.
pub fn run_tool(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("run {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The docker CLI against the machine's engine.
pub fn cli(args: &[&str]) -> Result<String> {
    run_tool("docker", args)
}

/// Runs psql in a Postgres container as berth's control plane does on a primary (its argv, through the
/// agent's own exec), with `args` after it and `stdin` as input; psql's stdout.
pub async fn psql(
    engine: &DockerRuntime,
    container: &str,
    database: &str,
    args: &[&str],
    stdin: &[u8],
) -> Result<String> {
    let mut argv = psql_argv(database);
    argv.extend(args.iter().map(|a| a.to_string()));
    let out = engine
        .exec(container, &argv, stdin, Some("postgres"), LIMIT)
        .await?;
    if out.exit_code != 0 {
        bail!(
            "psql in {container} exited {}: {}",
            out.exit_code,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The services' roles, created in Postgres container `pg` with berth's statements, one service at a time as
/// berth does.
pub async fn create_roles(engine: &DockerRuntime, pg: &str, captured: &Captured) -> Result<()> {
    for sql in &captured.role_sql {
        psql(engine, pg, &captured.database_name, &[], sql.as_bytes()).await?;
    }
    Ok(())
}

/// Polls until every named container reports healthy; fails at once if one exits.
pub async fn wait_healthy(docker: &Docker, names: &[String]) -> Result<()> {
    let started = Instant::now();
    loop {
        let mut all = true;
        for n in names {
            let Ok(c) = docker
                .inspect_container(n, None::<InspectContainerOptions>)
                .await
            else {
                all = false;
                continue;
            };
            let state = c.state.unwrap_or_default();
            if state.status == Some(ContainerStateStatusEnum::EXITED) {
                let logs = Command::new("docker")
                    .args(["logs", "--tail", "15", n])
                    .output()
                    .map(|o| {
                        format!(
                            "{}{}",
                            String::from_utf8_lossy(&o.stdout),
                            String::from_utf8_lossy(&o.stderr)
                        )
                    })
                    .unwrap_or_default();
                bail!("{n} exited: {:?}\n{logs}", state.exit_code);
            }
            if state.health.and_then(|h| h.status) != Some(HealthStatusEnum::HEALTHY) {
                all = false;
            }
        }
        if all {
            return Ok(());
        }
        if started.elapsed() > LIMIT {
            bail!("{names:?} not healthy within {LIMIT:?}");
        }
        tokio::time::sleep(POLL).await;
    }
}
