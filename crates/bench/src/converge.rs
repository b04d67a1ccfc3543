//! converge: one database (one Postgres node) and three services (mcp, postgrest, rag) over three hosts, from
//! submission until every instance runs healthy, through berth and through what a user would pick instead:
//! docker compose, `docker service create` on a single-node swarm, and raw Docker API calls (the floor).
//!
//! Every variant runs the same containers: berth's first round is inspected (image, command, environment,
//! health check, user, network aliases) and its rendered config directories are copied, so the alternatives
//! start byte-identical configs. Every variant also does the same ordered work berth does: Postgres up and
//! healthy, then the services' managed roles created with the same SQL (`psql` on stdin through a Docker exec),
//! then the services, waited on until healthy.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bollard::Docker;
use bollard::models::{
    ContainerCreateBody, EndpointSettings, HealthConfig, HealthStatusEnum, HostConfig, Mount,
    MountType, NetworkCreateRequest, NetworkingConfig,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, InspectContainerOptions, ListContainersOptionsBuilder,
    RemoveContainerOptionsBuilder, StartContainerOptions,
};

use agent::runtime::{ContainerRuntime, DockerRuntime};
use control_plane::credentials::{ServiceCredentials, create_roles_sql, psql_argv, role_name};

use crate::procs::{Proc, Stack, StackOptions, binary};
use crate::specs::three_services;
use crate::stats::{Table, median, verdict};
use crate::tasks::{TaskWatch, task_id};

/// How often every variant's waiter asks the engine whether the containers are healthy.
const POLL: Duration = Duration::from_millis(50);
const LIMIT: Duration = Duration::from_secs(180);

/// One container of the template, as berth ran it.
#[derive(Debug, Clone)]
struct Template {
    /// mcp, rest, rag, or "pg".
    role: String,
    image: String,
    cmd: Vec<String>,
    env: Vec<String>,
    user: String,
    health: HealthConfig,
    aliases: Vec<String>,
    /// (copied config dir, mount point in the container)
    config: Option<(PathBuf, String)>,
    /// Mount point of the data directory, fresh per round.
    data: Option<String>,
}

struct Captured {
    containers: Vec<Template>,
    /// Role SQL per service, with the SCRAM verifiers berth set (so the copied configs' passwords work).
    role_sql: Vec<String>,
    database_name: String,
}

/// Runs a command line tool; its stdout, or an error with its stderr.
fn run_tool(program: &str, args: &[&str]) -> Result<String> {
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

fn cli(args: &[&str]) -> Result<String> {
    run_tool("docker", args)
}

fn compose(args: &[&str]) -> Result<String> {
    run_tool("docker-compose", args)
}

/// Runs psql in a Postgres container as berth's control plane does on a primary (its argv, through the
/// agent's own exec), with `args` after it and `stdin` as input; psql's stdout.
async fn psql(
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

async fn create_roles(engine: &DockerRuntime, pg: &str, captured: &Captured) -> Result<()> {
    for sql in &captured.role_sql {
        psql(engine, pg, &captured.database_name, &[], sql.as_bytes()).await?;
    }
    Ok(())
}

/// Polls until every named container reports healthy; fails at once if one exits.
async fn wait_healthy(docker: &Docker, names: &[String]) -> Result<()> {
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
            if state.status == Some(bollard::models::ContainerStateStatusEnum::EXITED) {
                let logs = cli(&["logs", "--tail", "15", n]).unwrap_or_default();
                let err = Command::new("docker")
                    .args(["logs", "--tail", "15", n])
                    .output()
                    .map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
                    .unwrap_or_default();
                bail!("{n} exited: {:?}\n{logs}{err}", state.exit_code);
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

// ---------------------------------------------------------------- berth

/// One berth round's task, to read its log back.
struct Timeline {
    db: String,
    task: String,
    posted_at: chrono::DateTime<chrono::Utc>,
}

struct Berth {
    watch: TaskWatch,
    hosts: Vec<String>,
    /// Database ids of this run start with it (so do their networks).
    db_prefix: String,
    _agents: Vec<Proc>,
    stack: Stack,
}

impl Drop for Berth {
    /// Whatever a failed round left: the agents leave containers running when they stop.
    fn drop(&mut self) {
        // Agents first, so no reconcile pass brings back what is removed here.
        self._agents.clear();
        for h in &self.hosts {
            if let Ok(ids) = cli(&["ps", "-aq", "--filter", &format!("label=berth.host-id={h}")]) {
                let ids: Vec<&str> = ids.split_whitespace().collect();
                if !ids.is_empty() {
                    let mut args = vec!["rm", "-f", "-v"];
                    args.extend(ids);
                    let _ = cli(&args);
                }
            }
        }
        if let Ok(names) = cli(&["network", "ls", "--format", "{{.Name}}"]) {
            for n in names
                .lines()
                .filter(|n| n.starts_with(&format!("berth-{}", self.db_prefix)))
            {
                let _ = cli(&["network", "rm", n]);
            }
        }
    }
}

impl Berth {
    async fn start() -> Result<Berth> {
        let stack = Stack::start(StackOptions {
            reconcile: true,
            ..Default::default()
        })
        .await?;
        let prefix = format!("bench{:04x}", std::process::id() & 0xffff);
        let hosts: Vec<String> = (1..=3).map(|i| format!("{prefix}-host-{i}")).collect();
        let mut agents = Vec::new();
        for h in &hosts {
            let port = test_support::free_port();
            let mut args = vec![
                format!("--host-id={h}"),
                format!("--listen=127.0.0.1:{port}"),
                format!("--control-plane={}", stack.registry),
                format!("--data-dir={}", stack.dir.path().join(h).display()),
            ];
            args.extend(stack.join_args());
            agents.push(Proc::spawn(
                &binary("berth-agent"),
                &args,
                stack.dir.path().join(format!("{h}.log")),
            )?);
        }
        stack.wait_hosts_healthy(3, Duration::from_secs(60)).await?;
        let watch = TaskWatch::start(&stack.etcd.endpoint(), "/berth").await?;
        Ok(Berth {
            watch,
            hosts,
            db_prefix: format!("cv{:04x}", std::process::id() & 0xffff),
            _agents: agents,
            stack,
        })
    }

    fn spec(&self) -> serde_json::Value {
        let h = |i: usize| vec![self.hosts[i].clone()];
        let (a, b, c) = (h(0), h(1), h(2));
        three_services(&self.hosts[0], [&a, &b, &c], "claude-sonnet-4-5")
    }

    /// Creates database `db`; returns the time from POST until its task completed, and the task.
    async fn round(&self, db: &str) -> Result<(Duration, Timeline)> {
        let started = Instant::now();
        let posted_at = chrono::Utc::now();
        let resp = self
            .stack
            .post(
                "/v1/databases",
                &serde_json::json!({"id": db, "spec": self.spec()}),
            )
            .await?;
        let task = task_id(&resp)?;
        let ended = self
            .watch
            .wait_all(std::slice::from_ref(&task), LIMIT)
            .await?;
        if ended[0].status != "completed" {
            let log = self
                .stack
                .get(&format!("/v1/databases/{db}/tasks/{task}/log?limit=1000"))
                .await
                .unwrap_or_default();
            let lines: Vec<&str> = log["entries"]
                .as_array()
                .map(|a| a.iter().filter_map(|e| e["message"].as_str()).collect())
                .unwrap_or_default();
            bail!(
                "berth's create of {db} ended {}; its log:\n{}",
                ended[0].status,
                lines.join("\n")
            );
        }
        Ok((
            ended[0].at - started,
            Timeline {
                db: db.to_string(),
                task,
                posted_at,
            },
        ))
    }

    /// The task's log lines, each at its offset from the POST: where berth's time went.
    async fn timeline(&self, t: &Timeline) -> Result<Vec<String>> {
        let log = self
            .stack
            .get(&format!(
                "/v1/databases/{}/tasks/{}/log?limit=1000",
                t.db, t.task
            ))
            .await?;
        Ok(log["entries"]
            .as_array()
            .map(|entries| {
                entries
                    .iter()
                    .filter_map(|e| {
                        let at = e["timestamp"]
                            .as_str()?
                            .parse::<chrono::DateTime<chrono::Utc>>();
                        let offset = (at.ok()? - t.posted_at).num_milliseconds() as f64 / 1000.0;
                        Some(format!("+{offset:.2}s {}", e["message"].as_str()?))
                    })
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn delete(&self, db: &str) -> Result<()> {
        let resp = self
            .stack
            .http
            .delete(format!("{}/v1/databases/{db}", self.stack.api))
            .send()
            .await?;
        let body: serde_json::Value = resp.json().await?;
        let task = task_id(&body)?;
        self.watch.wait_all(&[task], LIMIT).await?;
        Ok(())
    }

    fn container(&self, host: usize, instance: &str) -> String {
        format!("berth-{}-{instance}", self.hosts[host])
    }

    /// Inspects the four containers of `db` and copies their config dirs under `into`.
    async fn capture(&self, engine: &DockerRuntime, db: &str, into: &Path) -> Result<Captured> {
        let docker = &engine.client();
        let n1 = format!("{db}-n1-{}", self.hosts[0]);
        let members = [
            ("pg", self.container(0, &n1)),
            (
                "mcp",
                self.container(0, &format!("{db}-mcp-{}", self.hosts[0])),
            ),
            (
                "rest",
                self.container(1, &format!("{db}-rest-{}", self.hosts[1])),
            ),
            (
                "rag",
                self.container(2, &format!("{db}-rag-{}", self.hosts[2])),
            ),
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
        let pg = self.container(0, &n1);
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
        // berth's own role SQL, with the SCRAM verifiers it set as the passwords (Postgres stores a
        // verifier as given), so the copied config files' passwords work.
        let mut role_sql = Vec::new();
        for service in ["mcp", "rest", "rag"] {
            let verifier = |suffix: &str| {
                let role = role_name(service, suffix);
                verifiers
                    .get(&role)
                    .cloned()
                    .with_context(|| format!("berth created no role {role}"))
            };
            let creds = ServiceCredentials {
                ro_password: verifier("ro")?,
                rw_password: verifier("rw")?,
                roles_created: false,
            };
            role_sql.push(create_roles_sql(&database_name, service, &creds));
        }
        Ok(Captured {
            containers,
            role_sql,
            database_name,
        })
    }
}

// ---------------------------------------------------------------- raw Docker (the floor)

fn create_body(t: &Template, network: &str, data_dir: &Path) -> ContainerCreateBody {
    let mut mounts = Vec::new();
    if let Some((src, dst)) = &t.config {
        mounts.push(Mount {
            target: Some(dst.clone()),
            source: Some(src.display().to_string()),
            typ: Some(MountType::BIND),
            read_only: Some(true),
            ..Default::default()
        });
    }
    if let Some(dst) = &t.data {
        mounts.push(Mount {
            target: Some(dst.clone()),
            source: Some(data_dir.display().to_string()),
            typ: Some(MountType::BIND),
            read_only: Some(false),
            ..Default::default()
        });
    }
    ContainerCreateBody {
        image: Some(t.image.clone()),
        cmd: (!t.cmd.is_empty()).then(|| t.cmd.clone()),
        env: Some(t.env.clone()),
        user: (!t.user.is_empty()).then(|| t.user.clone()),
        healthcheck: Some(t.health.clone()),
        labels: Some(HashMap::from([(
            "berth-bench".to_string(),
            network.to_string(),
        )])),
        networking_config: Some(NetworkingConfig {
            endpoints_config: Some(HashMap::from([(
                network.to_string(),
                EndpointSettings {
                    aliases: Some(t.aliases.clone()),
                    ..Default::default()
                },
            )])),
        }),
        host_config: Some(HostConfig {
            mounts: Some(mounts),
            network_mode: Some(network.to_string()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

async fn run_container(docker: &Docker, name: &str, body: ContainerCreateBody) -> Result<()> {
    let options = CreateContainerOptionsBuilder::new().name(name).build();
    docker.create_container(Some(options), body).await?;
    docker
        .start_container(name, None::<StartContainerOptions>)
        .await?;
    Ok(())
}

async fn floor_round(
    engine: &DockerRuntime,
    cap: &Captured,
    tag: &str,
    dir: &Path,
) -> Result<Duration> {
    let docker = &engine.client();
    let data = dir.join(format!("{tag}-data"));
    std::fs::create_dir_all(&data)?;
    let started = Instant::now();
    docker
        .create_network(NetworkCreateRequest {
            name: tag.to_string(),
            driver: Some("bridge".into()),
            ..Default::default()
        })
        .await?;
    let pg = &cap.containers[0];
    let pg_name = format!("{tag}-pg");
    run_container(docker, &pg_name, create_body(pg, tag, &data)).await?;
    wait_healthy(docker, std::slice::from_ref(&pg_name)).await?;
    create_roles(engine, &pg_name, cap).await?;
    let services: Vec<String> = cap.containers[1..]
        .iter()
        .map(|t| format!("{tag}-{}", t.role))
        .collect();
    let starts = cap.containers[1..]
        .iter()
        .zip(&services)
        .map(|(t, name)| run_container(docker, name, create_body(t, tag, &data)));
    for r in futures::future::join_all(starts).await {
        r?;
    }
    wait_healthy(docker, &services).await?;
    Ok(started.elapsed())
}

async fn floor_cleanup(docker: &Docker, tag: &str) {
    let options = ListContainersOptionsBuilder::new()
        .all(true)
        .filters(&HashMap::from([(
            "label",
            vec![format!("berth-bench={tag}")],
        )]))
        .build();
    if let Ok(list) = docker.list_containers(Some(options)).await {
        for c in list {
            if let Some(id) = c.id {
                let _ = docker
                    .remove_container(
                        &id,
                        Some(
                            RemoveContainerOptionsBuilder::new()
                                .force(true)
                                .v(true)
                                .build(),
                        ),
                    )
                    .await;
            }
        }
    }
    let _ = docker.remove_network(tag).await;
}

// ---------------------------------------------------------------- docker compose

fn health_test(h: &HealthConfig) -> Vec<String> {
    h.test.clone().unwrap_or_default()
}

fn duration_ns(ns: Option<i64>) -> String {
    format!("{}ms", ns.unwrap_or(0) / 1_000_000)
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

/// docker-compose 1.29 has no `up --wait`, so health is polled the same way as for every other variant.
async fn compose_round(
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

fn compose_cleanup(tag: &str, dir: &Path) {
    let f = dir.join(format!("{tag}.yml")).display().to_string();
    let _ = compose(&["-p", tag, "-f", &f, "down", "-v", "--remove-orphans"]);
}

// ---------------------------------------------------------------- swarm

/// Leaves the swarm when dropped, whatever happened in between.
/// The bridge `swarm init` creates for overlay networks' way out; `swarm leave` keeps it.
const SWARM_BRIDGE: &str = "docker_gwbridge";

struct Swarm {
    /// Whether `swarm init` made the bridge, so leaving removes it too.
    created_bridge: bool,
}

impl Swarm {
    fn init() -> Result<Swarm> {
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
        // DNS round robin: the aliases resolve to the task's own address. The default (a virtual IP
        // balanced by the kernel's IPVS) needs ip_vs, which machines like this one lack: connections to
        // the VIP fail with "No route to host". With one task per service both modes reach the same
        // container.
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

async fn swarm_round(
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

fn swarm_cleanup(tag: &str) {
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

// ---------------------------------------------------------------- the benchmark

pub async fn run(rounds: usize) -> Result<Table> {
    let rounds = rounds.max(1);
    let engine = DockerRuntime::connect(None)?;
    let docker = engine.client();
    let berth = Berth::start().await?;
    let dir = berth.stack.dir.path().join("alternatives");
    std::fs::create_dir_all(&dir)?;

    let mut ours = Vec::new();
    let mut captured = None;
    let mut timeline = Vec::new();
    // A create that fails is reported and not timed; the round is run again, within a bound.
    let mut failures: Vec<String> = Vec::new();
    for r in 0..rounds * 3 {
        if ours.len() == rounds {
            break;
        }
        let db = format!("{}-{r}", berth.db_prefix);
        match berth.round(&db).await {
            Ok((took, task)) => {
                ours.push(took.as_secs_f64());
                if captured.is_none() {
                    captured = Some(berth.capture(&engine, &db, &dir.join("template")).await?);
                }
                // The last round's, so the first one's image and page-cache warm-up are not in it.
                timeline = berth
                    .timeline(&task)
                    .await
                    .unwrap_or_else(|e| vec![format!("(task log unreadable: {e})")]);
            }
            Err(e) => {
                let last = e.to_string().lines().last().unwrap_or_default().to_string();
                eprintln!("berth round {r} failed: {e}");
                failures.push(last);
            }
        }
        berth.delete(&db).await?;
    }
    if ours.len() < rounds {
        bail!(
            "berth converged only {} of {} rounds: {failures:?}",
            ours.len(),
            rounds
        );
    }
    let cap = captured.context("no round captured")?;

    let mut floor = Vec::new();
    for r in 0..rounds {
        let tag = format!("bench-floor-{}-{r}", std::process::id());
        let took = floor_round(&engine, &cap, &tag, &dir).await;
        floor_cleanup(&docker, &tag).await;
        floor.push(took?.as_secs_f64());
    }
    let mut compose_t = Vec::new();
    for r in 0..rounds {
        let tag = format!("benchcompose{}x{r}", std::process::id());
        let took = compose_round(&engine, &cap, &tag, &dir).await;
        compose_cleanup(&tag, &dir);
        compose_t.push(took?.as_secs_f64());
    }
    let mut swarm_t = Vec::new();
    {
        let _swarm = Swarm::init()?;
        for r in 0..rounds {
            let tag = format!("bench-swarm-{}-{r}", std::process::id());
            let took = swarm_round(&engine, &cap, &tag, &dir).await;
            swarm_cleanup(&tag);
            swarm_t.push(took?.as_secs_f64());
        }
    }

    let m = |v: &[f64]| median(v).unwrap_or(f64::NAN);
    let (o, c, s, f) = (m(&ours), m(&compose_t), m(&swarm_t), m(&floor));
    let mut table = Table::new(
        &format!(
            "converge: 1 Postgres node + mcp, postgrest, rag over 3 hosts, median of {rounds} rounds"
        ),
        &[
            "variant",
            "median s",
            "rounds (s)",
            "ours / variant",
            "target",
        ],
    );
    let fmt = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.2}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    table.row(vec![
        "berth (POST until the task completed)".into(),
        format!("{o:.2}"),
        fmt(&ours),
        "1.00".into(),
        String::new(),
    ]);
    table.row(vec![
        "docker-compose 1.29 (up pg, poll health, roles, up services, poll health)".into(),
        format!("{c:.2}"),
        fmt(&compose_t),
        format!("**{:.2}**", o / c),
        format!("<= 1.0: {}", verdict(o / c <= 1.0)),
    ]);
    table.row(vec![
        "docker service create, single-node swarm".into(),
        format!("{s:.2}"),
        fmt(&swarm_t),
        format!("**{:.2}**", o / s),
        String::new(),
    ]);
    table.row(vec![
        "floor: raw Engine API create+start, first healthy".into(),
        format!("{f:.2}"),
        fmt(&floor),
        format!("**{:.2}**", o / f),
        format!("<= 1.15: {}", verdict(o / f <= 1.15)),
    ]);
    if !failures.is_empty() {
        table.note(format!(
            "berth creates that FAILED and were run again ({} of {}): {}",
            failures.len(),
            failures.len() + ours.len(),
            failures.join("; ")
        ));
    }
    if !timeline.is_empty() {
        table.note(format!(
            "berth's last round, its task log at offsets from the POST:\n\n```\n{}\n```",
            timeline.join("\n")
        ));
    }
    let hc = &cap.containers[1].health;
    table.note(format!(
        "every variant runs the same images, commands, environment, users, aliases and copied config files, and the same health checks (service interval {}, start period {}); health is polled every {} ms through the Engine API in every non-berth variant",
        duration_ns(hc.interval),
        duration_ns(hc.start_period),
        POLL.as_millis()
    ));
    Ok(table)
}
