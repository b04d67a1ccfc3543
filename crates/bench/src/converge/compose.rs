//! docker-compose: the same containers as one compose project on the machine's engine, brought up in berth's
//! order (Postgres, its health, the roles, the services) with `docker-compose up -d`.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Result;

use agent::runtime::DockerRuntime;

use super::engine::{create_roles, run_tool, wait_healthy};
use super::template::{Captured, duration_ns, health_test};

fn compose(args: &[&str]) -> Result<String> {
    run_tool("docker-compose", args)
}

fn compose_file(cap: &Captured, data: &Path) -> serde_yaml::Value {
    let mut services = serde_yaml::Mapping::new();
    for t in &cap.containers {
        let mut volumes = Vec::new();
        if let Some((src, dst)) = &t.config {
            volumes.push(format!("{}:{dst}:ro", src.display()));
        }
        if let Some(dst) = &t.data {
            volumes.push(format!("{}:{dst}", data.display()));
        }
        let mut s = serde_json::json!({
            "image": t.image,
            "environment": t.env,
            "volumes": volumes,
            "healthcheck": {
                "test": health_test(&t.health),
                "interval": duration_ns(t.health.interval),
                "timeout": duration_ns(t.health.timeout),
                "retries": t.health.retries.unwrap_or(3),
                "start_period": duration_ns(t.health.start_period),
            },
            "networks": {"net": {"aliases": t.aliases}},
        });
        if !t.cmd.is_empty() {
            s["command"] = serde_json::json!(t.cmd);
        }
        if !t.user.is_empty() {
            s["user"] = serde_json::json!(t.user);
        }
        services.insert(
            serde_yaml::Value::String(t.role.clone()),
            serde_yaml::to_value(&s).expect("compose service"),
        );
    }
    let mut file = serde_yaml::Mapping::new();
    file.insert("version".into(), "2.4".into());
    file.insert("services".into(), serde_yaml::Value::Mapping(services));
    file.insert(
        "networks".into(),
        serde_yaml::to_value(serde_json::json!({"net": {}})).expect("networks"),
    );
    serde_yaml::Value::Mapping(file)
}

/// One round as compose project `tag`; its file and data under `dir`. docker-compose 1.29 has no
/// `up --wait`, so health is polled the same way as for every other variant.
pub async fn round(
    engine: &DockerRuntime,
    cap: &Captured,
    tag: &str,
    dir: &Path,
) -> Result<Duration> {
    let docker = &engine.client();
    let data = dir.join(format!("{tag}-data"));
    std::fs::create_dir_all(&data)?;
    let file = dir.join(format!("{tag}.yml"));
    std::fs::write(&file, serde_yaml::to_string(&compose_file(cap, &data))?)?;
    let f = file.display().to_string();
    let started = Instant::now();
    compose(&["-p", tag, "-f", &f, "up", "-d", "pg"])?;
    let name = |role: &str| format!("{tag}_{role}_1");
    wait_healthy(docker, &[name("pg")]).await?;
    create_roles(engine, &name("pg"), cap).await?;
    compose(&["-p", tag, "-f", &f, "up", "-d", "mcp", "rest", "rag"])?;
    wait_healthy(docker, &[name("mcp"), name("rest"), name("rag")]).await?;
    Ok(started.elapsed())
}

/// `down` of project `tag`, volumes and orphans included.
pub fn cleanup(tag: &str, dir: &Path) {
    let f = dir.join(format!("{tag}.yml")).display().to_string();
    let _ = compose(&["-p", tag, "-f", &f, "down", "-v", "--remove-orphans"]);
}
