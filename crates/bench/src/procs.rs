//! The processes a benchmark runs: etcd, the control plane, real agents (on the machine, or each in a host of an
//! engine-per-host fleet) and the simulated (hollow) agent, all release builds, each killed when its handle
//! drops, so a failed run leaves no process behind.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;
use test_support::{EtcdServer, free_port};

use crate::engine_fleet::{EngineFleet, NetHost};

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("workspace root")
}

fn target_dir() -> PathBuf {
    std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| workspace_root().join("target"))
}

/// Where the control-plane and agent binaries come from: `BERTH_BENCH_BIN_DIR` (e.g. a release build of
/// another checkout, to benchmark a given commit), else this workspace's release build.
fn product_bin_dir() -> Option<PathBuf> {
    std::env::var_os("BERTH_BENCH_BIN_DIR").map(PathBuf::from)
}

/// Builds the release binaries the benchmarks start (a no-op when they are current).
pub fn build_binaries() -> Result<()> {
    // The simulated agent and the S3 server are the benchmarks' own tools, always from this workspace.
    let mut args = vec![
        "build",
        "--release",
        "--bin",
        "berth-hollow-agent",
        "--bin",
        "berth-s3-server",
    ];
    if product_bin_dir().is_none() {
        // The CLI with the fleet's binaries, in one build: built alone it would unify features differently
        // and each build would undo the other's.
        args.extend([
            "--bin",
            "berth-control-plane",
            "--bin",
            "berth-agent",
            "--bin",
            "berth",
        ]);
    }
    let mut cargo = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    // What `cargo run` set for the bench itself. Some build scripts (ring's) rerun when CARGO_MANIFEST_DIR
    // changes, so with it this build and `cargo run`'s own would each rebuild the TLS stack and everything
    // above it for the other, minutes on every run.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if name.starts_with("CARGO_PKG_")
            || matches!(
                &*name,
                "CARGO_MANIFEST_DIR"
                    | "CARGO_MANIFEST_PATH"
                    | "CARGO_CRATE_NAME"
                    | "CARGO_BIN_NAME"
                    | "CARGO_PRIMARY_PACKAGE"
            )
        {
            cargo.env_remove(&*name);
        }
    }
    let status = cargo
        .args(&args)
        .current_dir(workspace_root())
        .status()
        .context("run cargo build")?;
    if !status.success() {
        bail!("building the release binaries failed");
    }
    Ok(())
}

pub fn binary(name: &str) -> PathBuf {
    match product_bin_dir() {
        Some(dir) if !matches!(name, "berth-hollow-agent" | "berth-s3-server") => dir.join(name),
        _ => target_dir().join("release").join(name),
    }
}

/// A child process killed (SIGKILL) and reaped on drop.
pub struct Proc {
    pub child: Child,
}

impl Proc {
    pub fn spawn(program: &Path, args: &[String], log: PathBuf) -> Result<Proc> {
        let file = std::fs::File::create(&log).with_context(|| format!("{}", log.display()))?;
        let child = Command::new(program)
            .args(args)
            .env("BERTH_LOG", "warn")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .with_context(|| format!("start {}", program.display()))?;
        Ok(Proc { child })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Peak resident set size in bytes (VmHWM), read from /proc.
    pub fn peak_rss(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
        let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb * 1024)
    }

    /// User + system CPU time consumed so far, from /proc/<pid>/stat.
    pub fn cpu_time(&self) -> Option<Duration> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).ok()?;
        // Fields after the command name, which is in parentheses and may hold spaces.
        let rest = &stat[stat.rfind(')')? + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let utime: u64 = fields.get(11)?.parse().ok()?;
        let stime: u64 = fields.get(12)?.parse().ok()?;
        // SAFETY: sysconf has no preconditions.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
        Some(Duration::from_millis((utime + stime) * 1000 / ticks))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// etcd and one control plane, with a scratch dir for their files.
pub struct Stack {
    pub etcd: EtcdServer,
    pub control_plane: Proc,
    pub api: String,
    pub registry: String,
    pub dir: tempfile::TempDir,
    pub http: reqwest::Client,
}

#[derive(Default)]
pub struct StackOptions {
    pub reconcile: bool,
    /// `--host-lease-ttl`, when not the control plane's default.
    pub host_lease_ttl_seconds: Option<u32>,
    /// The address the agents' registry (gRPC) listens on; 127.0.0.1 when None. Agents in network
    /// namespaces reach the machine only at their fleet's gateway address.
    pub grpc_ip: Option<String>,
    /// Flags for etcd beyond test-support's (an `--auto-compaction-*` replaces its compaction).
    pub etcd_args: Vec<&'static str>,
    /// Flags for the control plane beyond the stack's own.
    pub control_plane_args: Vec<String>,
}

impl Stack {
    pub async fn start(options: StackOptions) -> Result<Stack> {
        let dir = tempfile::Builder::new().prefix("berth-bench-").tempdir()?;
        // Patroni in the Postgres containers reaches etcd where containers reach the machine:
        // the fleet's gateway (the registry's address), or Docker's bridge.
        let dcs_ip: std::net::IpAddr = match &options.grpc_ip {
            Some(ip) => ip.parse()?,
            None => test_support::docker_bridge_address(),
        };
        let etcd = EtcdServer::start_with_also_on(&options.etcd_args, &[dcs_ip]);
        let (http_port, grpc_port) = (free_port(), free_port());
        let grpc_ip = options.grpc_ip.as_deref().unwrap_or("127.0.0.1");
        let mut args = vec![
            format!("--listen=127.0.0.1:{http_port}"),
            format!("--grpc-listen={grpc_ip}:{grpc_port}"),
            format!("--etcd-endpoints={}", etcd.endpoint()),
            format!("--dcs-endpoints={}", etcd.endpoint_on(dcs_ip)),
            format!("--data-dir={}", dir.path().join("cp").display()),
            format!("--key-file={}", dir.path().join("secret.key").display()),
            format!(
                "--manifest={}",
                workspace_root()
                    .join("specs/service-versions.local.json")
                    .display()
            ),
            "--replica-id=bench".into(),
        ];
        if !options.reconcile {
            args.push("--no-reconcile".into());
        }
        if let Some(ttl) = options.host_lease_ttl_seconds {
            args.push(format!("--host-lease-ttl={ttl}"));
        }
        args.extend(options.control_plane_args.iter().cloned());
        let control_plane = Proc::spawn(
            &binary("berth-control-plane"),
            &args,
            dir.path().join("control-plane.log"),
        )?;
        let stack = Stack {
            etcd,
            control_plane,
            api: format!("http://127.0.0.1:{http_port}"),
            registry: format!("http://{grpc_ip}:{grpc_port}"),
            dir,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .pool_max_idle_per_host(512)
                .build()?,
        };
        stack
            .wait_for(
                "the control plane's API",
                Duration::from_secs(30),
                || async {
                    stack
                        .http
                        .get(format!("{}/v1/version", stack.api))
                        .send()
                        .await
                        .ok()
                        .filter(|r| r.status().is_success())
                        .map(|_| ())
                },
            )
            .await?;
        Ok(stack)
    }

    /// The arguments an agent needs to join this stack's fleet: the token and CA the control plane wrote to
    /// its data dir.
    pub fn join_args(&self) -> [String; 2] {
        let cp = self.dir.path().join("cp");
        [
            format!("--join-token-file={}", cp.join("join-token").display()),
            format!("--ca-file={}", cp.join("ca.pem").display()),
        ]
    }

    /// The last `lines` lines of every process's log in the stack's dir (the benchmarks run them at `warn`,
    /// so these are their recent complaints): the dir goes with the stack, this is what stays of it.
    pub fn log_tails(&self, lines: usize) -> String {
        let mut logs: Vec<PathBuf> = std::fs::read_dir(self.dir.path())
            .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
            .unwrap_or_default();
        logs.retain(|p| p.extension().is_some_and(|e| e == "log"));
        logs.sort();
        let mut out = String::new();
        for log in logs {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let all: Vec<&str> = text.lines().collect();
            let tail = &all[all.len().saturating_sub(lines)..];
            if !tail.is_empty() {
                let name = log.file_name().unwrap_or_default().to_string_lossy();
                out.push_str(&format!("--- {name} (last {} lines)\n", tail.len()));
                for l in tail {
                    out.push_str(l);
                    out.push('\n');
                }
            }
        }
        out
    }

    pub async fn wait_for<T, F, Fut>(&self, what: &str, limit: Duration, mut check: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        let started = Instant::now();
        loop {
            if let Some(v) = check().await {
                return Ok(v);
            }
            if started.elapsed() > limit {
                bail!(
                    "timed out after {limit:?} waiting for {what}; logs in {}",
                    self.dir.path().display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn get(&self, path: &str) -> Result<Value> {
        let resp = self.http.get(format!("{}{path}", self.api)).send().await?;
        let status = resp.status();
        let body: Value = resp.json().await?;
        if !status.is_success() {
            bail!("GET {path}: {status} {body}");
        }
        Ok(body)
    }

    pub async fn post(&self, path: &str, body: &Value) -> Result<Value> {
        let resp = self
            .http
            .post(format!("{}{path}", self.api))
            .json(body)
            .send()
            .await?;
        let status = resp.status();
        let text = resp.text().await?;
        if !status.is_success() {
            bail!("POST {path}: {status} {text}");
        }
        Ok(serde_json::from_str(&text)?)
    }

    pub async fn wait_hosts_healthy(&self, want: usize, limit: Duration) -> Result<()> {
        self.wait_for(&format!("{want} healthy hosts"), limit, || async {
            (self.healthy_hosts().await? >= want).then_some(())
        })
        .await
    }

    /// How many hosts the API calls healthy; None while it does not answer.
    pub async fn healthy_hosts(&self) -> Option<usize> {
        let hosts = self.get("/v1/hosts").await.ok()?;
        Some(
            hosts["hosts"]
                .as_array()?
                .iter()
                .filter(|h| h["status"]["state"] == "healthy")
                .count(),
        )
    }

    /// Sum of etcd's handled unary gRPC requests, by method, from its /metrics.
    pub async fn etcd_requests(&self) -> Result<EtcdCounts> {
        etcd_requests(&self.http, &self.etcd.endpoint()).await
    }
}

#[derive(Debug, Default, Clone)]
pub struct EtcdCounts {
    pub by_method: std::collections::BTreeMap<String, f64>,
}

impl EtcdCounts {
    pub fn total(&self) -> f64 {
        self.by_method.values().sum()
    }

    pub fn since(&self, before: &EtcdCounts) -> EtcdCounts {
        EtcdCounts {
            by_method: self
                .by_method
                .iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        v - before.by_method.get(k).copied().unwrap_or(0.0),
                    )
                })
                .filter(|(_, v)| *v > 0.0)
                .collect(),
        }
    }

    pub fn summary(&self) -> String {
        self.by_method
            .iter()
            .map(|(k, v)| format!("{k} {v:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Unary requests (Range, Txn, Put, LeaseGrant, ...) count one each; streams (Watch, LeaseKeepAlive) are
/// counted by the messages etcd received on them, since one stream carries many requests.
pub async fn etcd_requests(http: &reqwest::Client, endpoint: &str) -> Result<EtcdCounts> {
    let text = http
        .get(format!("{endpoint}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    let mut counts = EtcdCounts::default();
    for line in text.lines() {
        let (metric, unary) = if let Some(rest) = line.strip_prefix("grpc_server_handled_total{") {
            (rest, true)
        } else if let Some(rest) = line.strip_prefix("grpc_server_msg_received_total{") {
            (rest, false)
        } else {
            continue;
        };
        let is_unary = metric.contains("grpc_type=\"unary\"");
        if unary != is_unary {
            continue;
        }
        let Some(method) = metric
            .split("grpc_method=\"")
            .nth(1)
            .and_then(|m| m.split('"').next())
        else {
            continue;
        };
        let Some(value) = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) else {
            continue;
        };
        *counts.by_method.entry(method.to_string()).or_default() += value;
    }
    Ok(counts)
}

/// The simulated agent process with `hosts` hosts registered with the stack's control plane.
pub fn start_hollow(
    stack: &Stack,
    prefix: &str,
    hosts: usize,
    apply_log_lines: u32,
    apply_log_interval_ms: u64,
) -> Result<Proc> {
    let mut args = vec![
        format!("--hosts={hosts}"),
        format!("--host-prefix={prefix}"),
        format!("--control-plane={}", stack.registry),
        format!("--apply-log-lines={apply_log_lines}"),
        format!("--apply-log-interval-ms={apply_log_interval_ms}"),
    ];
    args.extend(stack.join_args());
    Proc::spawn(
        &binary("berth-hollow-agent"),
        &args,
        stack.dir.path().join(format!("{prefix}.log")),
    )
}

/// Starts a real agent for each of `host_ids`, on the machine (`fleet` None) or host N in host N of `fleet`
/// (see [`start_agent`]), and waits until every host is healthy.
///
/// An agent on the machine listens on a port [`free_port`] found free a moment before it starts; another
/// process may take it in between (the machine runs other work), and the agent then exits. Such an agent is
/// started again on another port, a few times at most; any other exit is a failure, with the logs' tails.
pub async fn start_agents(
    stack: &Stack,
    host_ids: &[String],
    fleet: Option<&EngineFleet>,
) -> Result<Vec<Proc>> {
    const RESTARTS: usize = 3;
    let limit = Duration::from_secs(60);
    let on = |i: usize| fleet.map(|f| &f.hosts[i]);
    let mut agents = Vec::new();
    for (i, h) in host_ids.iter().enumerate() {
        agents.push(start_agent(stack, h, on(i))?);
    }
    let (started, mut restarts) = (Instant::now(), 0);
    while stack.healthy_hosts().await.unwrap_or(0) < host_ids.len() {
        for (i, agent) in agents.iter_mut().enumerate() {
            if agent.child.try_wait()?.is_none() {
                continue;
            }
            let log = stack.dir.path().join(format!("{}.log", host_ids[i]));
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if !text.contains("Address already in use") || restarts == RESTARTS {
                bail!(
                    "the agent of {} exited\n{}",
                    host_ids[i],
                    stack.log_tails(20)
                );
            }
            eprintln!(
                "the agent of {} lost its port to another process; starting it on another",
                host_ids[i]
            );
            restarts += 1;
            *agent = start_agent(stack, &host_ids[i], on(i))?;
        }
        if started.elapsed() > limit {
            bail!(
                "{} hosts not healthy within {limit:?}\n{}",
                host_ids.len(),
                stack.log_tails(20)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(agents)
}

/// Starts a real agent for `host_id` joined to the stack's fleet. With `on` None it runs on the machine and
/// drives the machine's engine (every host then shares it); with a host of an [`EngineFleet`] it runs inside
/// that host's namespace, listens and publishes at its address and drives its engine.
fn start_agent(stack: &Stack, host_id: &str, on: Option<&NetHost>) -> Result<Proc> {
    let mut args = vec![
        format!("--host-id={host_id}"),
        format!("--control-plane={}", stack.registry),
        format!("--data-dir={}", stack.dir.path().join(host_id).display()),
    ];
    args.extend(stack.join_args());
    let log = stack.dir.path().join(format!("{host_id}.log"));
    match on {
        None => {
            args.push(format!("--listen=127.0.0.1:{}", free_port()));
            Proc::spawn(&binary("berth-agent"), &args, log)
        }
        Some(h) => {
            args.extend([
                // The namespace is the host's alone, so the agent's usual port is free.
                format!("--listen={}:7100", h.address),
                format!("--addresses={}", h.address),
                format!("--docker-host={}", h.docker_host),
            ]);
            // nsenter execs the agent, so the process killed on drop is the agent itself. Only the network
            // namespace is entered: the agent's data dir and the engine's bind mounts stay the machine's.
            // (`ip netns exec` would remount /sys; deploy/fleet/hosts explains why that matters.)
            let mut ns = vec![
                format!("--net={}", h.netns),
                "--".into(),
                binary("berth-agent").display().to_string(),
            ];
            ns.extend(args);
            Proc::spawn(Path::new("nsenter"), &ns, log)
        }
    }
}
