//! `docker service create` on a single-node swarm of the machine's engine: one service per container on an
//! attachable overlay network, in berth's order.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use bollard::Docker;
use bollard::query_parameters::ListContainersOptionsBuilder;

use agent::runtime::DockerRuntime;

use super::engine::{LIMIT, POLL, cli, create_roles, wait_healthy};
use super::template::{Captured, Template, duration_ns, health_test};

/// The bridge `swarm init` creates for overlay networks' way out; `swarm leave` keeps it.
const SWARM_BRIDGE: &str = "docker_gwbridge";

/// The machine's engine as a single-node swarm; it leaves the swarm when dropped, whatever happened in
/// between.
pub struct Swarm {
    /// Whether `swarm init` made the bridge, so leaving removes it too.
    created_bridge: bool,
}

impl Swarm {
    /// `docker swarm init` on the loopback address.
    pub fn init() -> Result<Swarm> {
        let had_bridge = cli(&["network", "inspect", SWARM_BRIDGE]).is_ok();
        cli(&["swarm", "init", "--advertise-addr", "127.0.0.1"])?;
        Ok(Swarm {
            created_bridge: !had_bridge,
        })
    }
}

impl Drop for Swarm {
    fn drop(&mut self) {
        let _ = cli(&["swarm", "leave", "--force"]);
        if self.created_bridge {
            let _ = cli(&["network", "rm", SWARM_BRIDGE]);
        }
    }
}

fn shell_join(args: &[String]) -> String {
    args.iter()
        .map(|a| format!("'{}'", a.replace('\'', "'\\''")))
        .collect::<Vec<_>>()
        .join(" ")
}

fn service_create_args(t: &Template, name: &str, network: &str, data: &Path) -> Vec<String> {
    let mut a: Vec<String> = vec![
        "service".into(),
        "create".into(),
        "--detach".into(),
        "--quiet".into(),
        format!("--name={name}"),
        "--restart-condition=none".into(),
        // DNS round robin: the aliases resolve to the task's own address. The default (a virtual IP balanced
        // by the kernel's IPVS) needs ip_vs, which machines like this one lack: connections to the VIP fail
        // with "No route to host". With one task per service both modes reach the same container.
        "--endpoint-mode=dnsrr".into(),
        format!(
            "--network=name={network},{}",
            t.aliases
                .iter()
                .map(|x| format!("alias={x}"))
                .collect::<Vec<_>>()
                .join(",")
        ),
        format!("--label=berth-bench={network}"),
    ];
    for e in &t.env {
        a.push(format!("--env={e}"));
    }
    if !t.user.is_empty() {
        a.push(format!("--user={}", t.user));
    }
    if let Some((src, dst)) = &t.config {
        a.push(format!(
            "--mount=type=bind,src={},dst={dst},readonly",
            src.display()
        ));
    }
    if let Some(dst) = &t.data {
        a.push(format!(
            "--mount=type=bind,src={},dst={dst}",
            data.display()
        ));
    }
    let test = health_test(&t.health);
    // Swarm's --health-cmd is a shell command line; CMD arguments are quoted into one.
    let cmd = match test.first().map(String::as_str) {
        Some("CMD") => shell_join(&test[1..]),
        Some("CMD-SHELL") => test[1..].join(" "),
        _ => String::new(),
    };
    if !cmd.is_empty() {
        a.push(format!("--health-cmd={cmd}"));
        a.push(format!(
            "--health-interval={}",
            duration_ns(t.health.interval)
        ));
        a.push(format!(
            "--health-timeout={}",
            duration_ns(t.health.timeout)
        ));
        a.push(format!(
            "--health-retries={}",
            t.health.retries.unwrap_or(3)
        ));
        a.push(format!(
            "--health-start-period={}",
            duration_ns(t.health.start_period)
        ));
    }
    a.push(t.image.clone());
    a.extend(t.cmd.iter().cloned());
    a
}

/// The container of a swarm service's task, once scheduled.
async fn swarm_container(docker: &Docker, service: &str) -> Result<String> {
    let started = Instant::now();
    loop {
        let options = ListContainersOptionsBuilder::new()
            .all(true)
            .filters(&HashMap::from([(
                "label",
                vec![format!("com.docker.swarm.service.name={service}")],
            )]))
            .build();
        if let Some(id) = docker
            .list_containers(Some(options))
            .await?
            .into_iter()
            .find_map(|c| c.id)
        {
            return Ok(id);
        }
        if started.elapsed() > LIMIT {
            bail!("swarm never scheduled {service}");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// One round on overlay network `tag`, its services named after it; data under `dir`. Needs a [`Swarm`].
pub async fn round(
    engine: &DockerRuntime,
    cap: &Captured,
    tag: &str,
    dir: &Path,
) -> Result<Duration> {
    let docker = &engine.client();
    let data = dir.join(format!("{tag}-data"));
    std::fs::create_dir_all(&data)?;
    let started = Instant::now();
    cli(&["network", "create", "--driver=overlay", "--attachable", tag])?;
    let create = |t: &Template| {
        let args = service_create_args(t, &format!("{tag}-{}", t.role), tag, &data);
        tokio::task::spawn_blocking(move || {
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            cli(&refs)
        })
    };
    create(&cap.containers[0]).await??;
    let pg = swarm_container(docker, &format!("{tag}-pg")).await?;
    wait_healthy(docker, std::slice::from_ref(&pg)).await?;
    create_roles(engine, &pg, cap).await?;
    let handles: Vec<_> = cap.containers[1..].iter().map(create).collect();
    for h in handles {
        h.await??;
    }
    let mut services = Vec::new();
    for t in &cap.containers[1..] {
        services.push(swarm_container(docker, &format!("{tag}-{}", t.role)).await?);
    }
    wait_healthy(docker, &services).await?;
    Ok(started.elapsed())
}

/// Removes round `tag`'s services and network.
pub fn cleanup(tag: &str) {
    if let Ok(list) = cli(&[
        "service",
        "ls",
        "-q",
        "--filter",
        &format!("label=berth-bench={tag}"),
    ]) {
        let ids: Vec<&str> = list.split_whitespace().collect();
        if !ids.is_empty() {
            let mut args = vec!["service", "rm"];
            args.extend(ids);
            let _ = cli(&args);
        }
    }
    // Removing a service returns before its task containers are gone; the network waits for them.
    for _ in 0..100 {
        if cli(&["network", "rm", tag]).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
