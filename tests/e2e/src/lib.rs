//! A real fleet for black-box tests: etcd, control-plane replicas and agents as separate
//! processes on free ports. Tests talk to it only through the HTTP API, `docker` and `psql`
//! (run inside the Postgres containers).
//!
//! Two topologies. [`Fleet::start`]: every agent drives the machine's Docker engine, as on
//! one machine. [`Fleet::start_engine_per_host`]: each host is a network namespace with its
//! own address and its own engine (`deploy/fleet/hosts`, the same script the dev fleet
//! uses), its agent runs inside it, and instances on different hosts reach each other only
//! through host addresses and published ports, as on a real fleet.
//!
//! Every fleet gets host ids with a random prefix, so fleets of parallel tests (and a dev
//! fleet on the same engine) never touch each other's containers. Dropping the fleet kills
//! its processes and removes its containers and networks, also when a test panics.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Once;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use test_support::{EtcdServer, free_port};

pub use reqwest;
pub use serde_json;
pub use spec::ServiceType;
pub use test_support;

mod s3;
pub use s3::{S3_BUCKET, S3_REGION, S3Server};

/// Generous upper bound for anything to converge on a loaded 2-core machine. Waiting is
/// bounded so a broken system fails the test; how long it took is reported, never asserted.
pub const CONVERGE: Duration = Duration::from_secs(180);

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("workspace root")
}

/// Builds the binaries once per test process (a no-op when they are current). The CLI and
/// the S3 test server are built in the same run as the fleet's binaries: built alone, their
/// dependencies' features would unify differently and each build would recompile what the
/// other just compiled.
fn binary(name: &str) -> PathBuf {
    static BUILD: Once = Once::new();
    BUILD.call_once(|| {
        let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args([
                "build",
                "--bin",
                "berth-control-plane",
                "--bin",
                "berth-agent",
                "--bin",
                "berth",
                "--bin",
                "berth-s3-server",
            ])
            .current_dir(workspace_root())
            .status()
            .expect("run cargo build");
        assert!(status.success(), "building the binaries failed");
    });
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| workspace_root().join("target"));
    target.join("debug").join(name)
}

/// The path of a binary of this workspace (`berth-control-plane`, `berth-agent`, `berth`,
/// `berth-s3-server`), built first if needed.
pub fn built_binary(name: &str) -> PathBuf {
    binary(name)
}

fn docker(args: &[&str]) -> String {
    docker_at(None, args)
}

/// Runs the docker CLI against `engine` (a DOCKER_HOST such as `unix:///...sock`), or the
/// machine's engine when None.
fn docker_at(engine: Option<&str>, args: &[&str]) -> String {
    let out = docker_command(engine)
        .args(args)
        .output()
        .expect("docker CLI: is Docker installed?");
    assert!(
        out.status.success(),
        "docker {args:?} on {} failed: {}",
        engine.unwrap_or("the machine's engine"),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn docker_command(engine: Option<&str>) -> Command {
    test_support::psql::docker(engine)
}

/// The engine-per-host fleet of the test run: `deploy/fleet/hosts` fleet `e2e` on
/// 10.213.1.0/24 (index 1; the dev fleet has 0). Tests run one at a time and share its
/// engines; each test's fleet cleans them first. `BERTH_E2E_NET_FLEET=NAME:INDEX` picks
/// another, so that two test runs on one machine do not clean each other's engines.
fn net_fleet() -> (String, String) {
    match std::env::var("BERTH_E2E_NET_FLEET") {
        Ok(v) => {
            let (name, index) = v
                .split_once(':')
                .expect("BERTH_E2E_NET_FLEET is NAME:INDEX, e.g. e2e2:3");
            (name.to_string(), index.to_string())
        }
        Err(_) => ("e2e".to_string(), "1".to_string()),
    }
}
/// Always this many hosts, whatever a test uses: `up` with fewer would stop the engines a
/// later test brings back, at the cost of starting an engine and loading its images.
const NET_FLEET_HOSTS: usize = 4;

use test_support::net_fleet::NetFleet;
pub use test_support::net_fleet::NetHost;

fn fleet_script(args: &[&str]) -> String {
    test_support::net_fleet::fleet_hosts(args).unwrap_or_else(|e| panic!("{e}"))
}

/// Brings up (or finds) at least `count` hosts, with no container or network left on them.
fn net_fleet_up(count: usize) -> NetFleet {
    let count = count.max(NET_FLEET_HOSTS);
    let (name, index) = net_fleet();
    let text = fleet_script(&["up", &name, &count.to_string(), &index]);
    fleet_script(&["clean", &name]);
    NetFleet::parse(&text, count).unwrap_or_else(|e| panic!("{e}"))
}

/// Where containers of the fleet reach the machine: the engine-per-host fleet's gateway, or
/// the machine engine's bridge.
fn dcs_address(net: Option<&NetFleet>) -> std::net::IpAddr {
    match net {
        Some(n) => n.gateway.parse().expect("the fleet's gateway address"),
        None => test_support::docker_bridge_address(),
    }
}

/// One process of the fleet, restartable with the same arguments.
struct Proc {
    /// BERTH_LOG: what the process logs.
    log_filter: &'static str,
    program: PathBuf,
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
}

impl Proc {
    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let child = Command::new(&self.program)
            .args(&self.args)
            .env("BERTH_LOG", self.log_filter)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", self.program.display()));
        self.child = Some(child);
    }

    fn signal(&self, signal: i32) {
        if let Some(c) = &self.child {
            // SAFETY: kill(2) on a pid we spawned and have not reaped.
            unsafe {
                libc::kill(c.id() as i32, signal);
            }
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub struct Bound {
    started: Instant,
    what: String,
    logs: PathBuf,
}

impl Bound {
    pub fn check(&self) {
        if self.started.elapsed() > CONVERGE {
            panic!(
                "timed out after {CONVERGE:?} waiting for {}; logs in {}",
                self.what,
                self.logs.display()
            );
        }
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }
}

pub struct Fleet {
    pub etcd: EtcdServer,
    prefix: String,
    dir: tempfile::TempDir,
    /// None: the control plane's built-in manifest.
    manifest: Option<PathBuf>,
    control_planes: Vec<(Proc, String)>,
    agents: BTreeMap<String, Proc>,
    http: reqwest::Client,
    /// Set for an engine-per-host fleet.
    net: Option<NetFleet>,
    /// BERTH_LOG of every process the fleet starts.
    log_filter: &'static str,
}

/// What the fleet's processes log unless a test asks for more.
const DEFAULT_LOG_FILTER: &str = "info,h2=warn,tower=warn";

impl Fleet {
    /// etcd, one control plane and `agents` agents, all healthy.
    pub async fn start(agents: usize) -> Fleet {
        Fleet::start_with(agents, 1).await
    }

    /// etcd, `replicas` control planes and `agents` agents (which know every replica), all healthy.
    pub async fn start_with(agents: usize, replicas: usize) -> Fleet {
        Fleet::start_on(agents, replicas, None).await
    }

    /// etcd and one control plane on the machine, and `agents` hosts each with its own
    /// network namespace, address and Docker engine, its agent running inside it.
    pub async fn start_engine_per_host(agents: usize) -> Fleet {
        let net = net_fleet_up(agents);
        Fleet::start_on(agents, 1, Some(net)).await
    }

    /// etcd, one control plane reading `manifest` (None: its built-in one, as a deployment
    /// without `--manifest` runs) and `agents` agents, all healthy.
    pub async fn start_with_manifest(agents: usize, manifest: Option<&Path>) -> Fleet {
        Fleet::start_full(
            agents,
            1,
            None,
            manifest.map(Path::to_path_buf),
            DEFAULT_LOG_FILTER,
            None,
        )
        .await
    }

    /// Like [`Fleet::start`] on an etcd whose authentication is on (ADR 017): the control
    /// plane logs in as `root` (--etcd-username, --etcd-password-file) and gives each
    /// Postgres node's Patroni an etcd user of its own. The root password is
    /// `fleet.etcd.root_password()`.
    pub async fn start_with_etcd_auth(agents: usize) -> Fleet {
        let local = workspace_root().join("specs/service-versions.local.json");
        let password = format!("root-{:08x}", rand::random::<u32>());
        Fleet::start_full(
            agents,
            1,
            None,
            Some(local),
            DEFAULT_LOG_FILTER,
            Some(&password),
        )
        .await
    }

    async fn start_on(agents: usize, replicas: usize, net: Option<NetFleet>) -> Fleet {
        let local = workspace_root().join("specs/service-versions.local.json");
        Fleet::start_full(agents, replicas, net, Some(local), DEFAULT_LOG_FILTER, None).await
    }

    /// Like [`Fleet::start`], every process logging at `log_filter` (BERTH_LOG), e.g.
    /// `debug` for a test that reads the logs whole.
    pub async fn start_logging(agents: usize, log_filter: &'static str) -> Fleet {
        let local = workspace_root().join("specs/service-versions.local.json");
        Fleet::start_full(agents, 1, None, Some(local), log_filter, None).await
    }

    async fn start_full(
        agents: usize,
        replicas: usize,
        net: Option<NetFleet>,
        manifest: Option<PathBuf>,
        log_filter: &'static str,
        etcd_root_password: Option<&str>,
    ) -> Fleet {
        docker(&["version", "--format", "{{.Server.Version}}"]);
        let prefix = format!("t{:05x}", rand::random::<u32>() & 0xfffff);
        let dir = tempfile::Builder::new()
            .prefix("berth-e2e-")
            .tempdir()
            .expect("temp dir");
        let mut fleet = Fleet {
            // Patroni in the Postgres containers reaches etcd where they reach the machine:
            // the fleet's gateway, or Docker's bridge on the machine's engine.
            etcd: EtcdServer::start_also_on(dcs_address(net.as_ref())),
            prefix,
            dir,
            manifest,
            control_planes: Vec::new(),
            agents: BTreeMap::new(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("http client"),
            net,
            log_filter,
        };
        if let Some(password) = etcd_root_password {
            fleet.etcd.enable_auth(password);
        }
        for _ in 0..replicas.max(1) {
            fleet.add_control_plane();
        }
        // The first replica writes the fleet CA and the join token on start; agents need both.
        fleet
            .wait_for("the control plane's CA and join token", || async {
                (fleet.join_token_file().exists() && fleet.ca_file().exists()).then_some(())
            })
            .await;
        for i in 1..=agents {
            fleet.add_agent(i);
        }
        fleet.wait_hosts_healthy().await;
        fleet
    }

    /// The id of the `i`-th host (1-based), as the API knows it.
    pub fn host(&self, i: usize) -> String {
        format!("{}-host-{i}", self.prefix)
    }

    /// A database id unique to this fleet.
    pub fn db_id(&self, name: &str) -> String {
        format!("{}-{name}", self.prefix)
    }

    pub fn api(&self) -> String {
        self.control_planes
            .iter()
            .find(|(p, _)| p.child.is_some())
            .map(|(_, url)| url.clone())
            .expect("a running control plane")
    }

    pub fn log_dir(&self) -> &Path {
        self.dir.path()
    }

    fn add_control_plane(&mut self) -> usize {
        let index = self.control_planes.len();
        let (http, grpc) = (free_port(), free_port());
        // Agents in namespaces reach the machine at the fleet's gateway address.
        let grpc_ip = self
            .net
            .as_ref()
            .map_or("127.0.0.1".to_string(), |n| n.gateway.clone());
        let mut args = vec![
            format!("--listen=127.0.0.1:{http}"),
            format!("--grpc-listen={grpc_ip}:{grpc}"),
            format!("--etcd-endpoints={}", self.etcd.endpoint()),
            format!(
                "--dcs-endpoints={}",
                self.etcd.endpoint_on(dcs_address(self.net.as_ref()))
            ),
            format!(
                "--data-dir={}",
                self.dir.path().join(format!("cp{index}")).display()
            ),
            // Every replica must seal secrets with the same key.
            format!(
                "--key-file={}",
                self.dir.path().join("secret.key").display()
            ),
            format!("--replica-id=cp{index}"),
            "--leader-lease-ttl=3".into(),
            "--host-lease-ttl=3".into(),
            // WAL health and subscriptions in GET within seconds rather than a minute.
            "--instance-check-seconds=5".into(),
        ];
        if let Some(m) = &self.manifest {
            args.push(format!("--manifest={}", m.display()));
        }
        if let Some(password) = self.etcd.root_password() {
            let file = self.dir.path().join("etcd-root-password");
            std::fs::write(&file, password).expect("write etcd's root password");
            args.push("--etcd-username=root".into());
            args.push(format!("--etcd-password-file={}", file.display()));
        }
        let mut proc = Proc {
            log_filter: self.log_filter,
            program: binary("berth-control-plane"),
            args,
            log: self.dir.path().join(format!("cp{index}.log")),
            child: None,
        };
        proc.spawn();
        self.control_planes
            .push((proc, format!("http://127.0.0.1:{http}")));
        index
    }

    /// Every replica's registry, as agents are told about them.
    fn registry_urls(&self) -> String {
        let urls: Vec<String> = self
            .control_planes
            .iter()
            .filter_map(|(p, _)| p.args.iter().find_map(|a| a.strip_prefix("--grpc-listen=")))
            .map(|grpc| format!("http://{grpc}"))
            .collect();
        urls.join(",")
    }

    /// Starts the agent of the `i`-th host (1-based).
    fn add_agent(&mut self, i: usize) {
        let host_id = self.host(i);
        let mut args = vec![
            format!("--host-id={host_id}"),
            format!("--control-plane={}", self.registry_urls()),
            format!("--data-dir={}", self.agent_data_dir(&host_id).display()),
            format!("--join-token-file={}", self.join_token_file().display()),
            format!("--ca-file={}", self.ca_file().display()),
        ];
        let program = match self.net_host(&host_id) {
            None => {
                args.push(format!("--listen=127.0.0.1:{}", free_port()));
                binary("berth-agent")
            }
            Some(h) => {
                // nsenter execs the agent, so the child is the agent itself.
                let mut ns = vec![
                    format!("--net={}", h.netns),
                    "--".into(),
                    binary("berth-agent").display().to_string(),
                ];
                ns.extend(args);
                args = ns;
                args.extend([
                    format!("--listen={}:7100", h.address),
                    format!("--addresses={}", h.address),
                    format!("--docker-host={}", h.docker_host),
                ]);
                PathBuf::from("nsenter")
            }
        };
        let mut proc = Proc {
            log_filter: self.log_filter,
            program,
            args,
            log: self.dir.path().join(format!("{host_id}.log")),
            child: None,
        };
        proc.spawn();
        self.agents.insert(host_id, proc);
    }

    /// A command that runs one more agent as `host_id` against this fleet's control planes,
    /// with the fleet's join token and CA, keeping its state in `data_dir` and listening on a
    /// free port of 127.0.0.1; the fleet does not track it. For tests of who may join.
    pub fn extra_agent_command(&self, host_id: &str, data_dir: &Path) -> Command {
        let mut c = Command::new(binary("berth-agent"));
        c.args([
            format!("--host-id={host_id}"),
            format!("--control-plane={}", self.registry_urls()),
            format!("--data-dir={}", data_dir.display()),
            format!("--join-token-file={}", self.join_token_file().display()),
            format!("--ca-file={}", self.ca_file().display()),
            format!("--listen=127.0.0.1:{}", free_port()),
        ])
        .env("BERTH_LOG", "info,h2=warn,tower=warn")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null());
        c
    }

    /// The namespace, address and engine of a host of an engine-per-host fleet.
    pub fn net_host(&self, host_id: &str) -> Option<&NetHost> {
        let n: usize = host_id.rsplit('-').next()?.parse().ok()?;
        self.net.as_ref()?.hosts.get(n.checked_sub(1)?)
    }

    /// The DOCKER_HOST of a host's engine; None: the machine's.
    pub fn engine(&self, host_id: &str) -> Option<String> {
        self.net_host(host_id).map(|h| h.docker_host.clone())
    }

    /// The host whose agent named a container (`berth-{host_id}-{instance_id}`).
    fn host_of_container(&self, container: &str) -> Option<String> {
        self.agents
            .keys()
            .filter(|h| container.starts_with(&format!("berth-{h}-")))
            .max_by_key(|h| h.len())
            .cloned()
    }

    /// The engine (its `DOCKER_HOST`) of the host a container of this fleet runs on; None
    /// for the machine's own engine.
    pub fn engine_of_container(&self, container: &str) -> Option<String> {
        self.host_of_container(container)
            .and_then(|h| self.engine(&h))
    }

    /// Cuts a host of an engine-per-host fleet off the network (its link goes down).
    pub fn cut_host(&self, host_id: &str) {
        let h = self
            .net_host(host_id)
            .expect("an engine-per-host fleet's host");
        fleet_script(&["cut", &net_fleet().0, &h.name]);
    }

    /// Undoes [`Fleet::cut_host`].
    pub fn heal_host(&self, host_id: &str) {
        let h = self
            .net_host(host_id)
            .expect("an engine-per-host fleet's host");
        fleet_script(&["heal", &net_fleet().0, &h.name]);
    }

    /// Runs the docker CLI against the engine of `host_id`.
    pub fn docker_on(&self, host_id: &str, args: &[&str]) -> String {
        docker_at(self.engine(host_id).as_deref(), args)
    }

    /// Like [`Fleet::docker_on`] for a command that may fail: (succeeded, stdout and stderr).
    pub fn docker_on_status(&self, host_id: &str, args: &[&str]) -> (bool, String) {
        let out = docker_command(self.engine(host_id).as_deref())
            .args(args)
            .output()
            .expect("docker CLI");
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        (out.status.success(), text)
    }

    /// Restarts a host's agent with `extra` arguments added (later flags win in clap).
    pub fn restart_agent_with(&mut self, host_id: &str, extra: &[String]) {
        let p = self.agents.get_mut(host_id).expect("known agent");
        p.kill();
        p.args.extend(extra.iter().cloned());
        p.spawn();
    }

    /// The connection a service instance's rendered config files describe, read back from
    /// its config directory on the host.
    pub fn rendered_connection(
        &self,
        host_id: &str,
        instance_id: &str,
        service_type: spec::ServiceType,
    ) -> service_config::ParsedConnection {
        let dir = self.instance_dir(host_id, instance_id).join("config");
        let files: Vec<service_config::RenderedFile> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
            .filter_map(|e| e.ok())
            .filter(|e| e.path().is_file())
            .map(|e| service_config::RenderedFile {
                path: e.file_name().to_string_lossy().into_owned(),
                content: std::fs::read(e.path()).expect("config file"),
            })
            .collect();
        service_config::parse_rendered(service_type, &files)
            .unwrap_or_else(|e| panic!("parse the config in {}: {e}", dir.display()))
    }

    pub fn join_token_file(&self) -> PathBuf {
        self.dir.path().join("cp0").join("join-token")
    }

    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("cp0").join("ca.pem")
    }

    /// Where an agent keeps the certificate it got by joining.
    pub fn agent_tls_dir(&self, host_id: &str) -> PathBuf {
        self.agent_data_dir(host_id).join("tls")
    }

    /// The gRPC address an agent listens on.
    pub fn agent_address(&self, host_id: &str) -> String {
        let p = &self.agents[host_id];
        p.args
            .iter()
            .find_map(|a| a.strip_prefix("--listen="))
            .expect("listen")
            .to_string()
    }

    pub fn agent_data_dir(&self, host_id: &str) -> PathBuf {
        self.dir.path().join("agents").join(host_id)
    }

    /// Where an agent keeps one instance's config and data.
    pub fn instance_dir(&self, host_id: &str, instance_id: &str) -> PathBuf {
        self.agent_data_dir(host_id)
            .join("instances")
            .join(instance_id)
    }

    pub fn kill_agent(&mut self, host_id: &str) {
        self.agents.get_mut(host_id).expect("known agent").kill();
    }

    pub fn restart_agent(&mut self, host_id: &str) {
        let p = self.agents.get_mut(host_id).expect("known agent");
        p.kill();
        p.spawn();
    }

    /// SIGSTOP / SIGCONT: the process stays but stops answering, as behind a partition.
    pub fn pause_agent(&self, host_id: &str) {
        self.agents[host_id].signal(libc::SIGSTOP);
    }

    pub fn resume_agent(&self, host_id: &str) {
        self.agents[host_id].signal(libc::SIGCONT);
    }

    pub fn kill_control_plane(&mut self, index: usize) {
        self.control_planes[index].0.kill();
    }

    pub fn restart_control_plane(&mut self, index: usize) {
        let p = &mut self.control_planes[index].0;
        p.kill();
        p.spawn();
    }

    /// The replica that currently leads: the leader key's value, read through etcd's JSON gateway.
    pub async fn leader(&self) -> Option<String> {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD;
        let body = json!({"key": b64.encode("/berth/leader")});
        let mut request = self
            .http
            .post(format!("{}/v3/kv/range", self.etcd.endpoint()))
            .json(&body);
        if let Some(token) = self.etcd.root_token() {
            request = request.header("Authorization", token);
        }
        let resp = request.send().await.ok()?;
        let v: Value = resp.json().await.ok()?;
        let value = v["kvs"][0]["value"].as_str()?;
        String::from_utf8(b64.decode(value).ok()?).ok()
    }

    // ---- HTTP ----

    pub async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> (StatusCode, Value) {
        let mut last_error = None;
        // A control plane that is restarting refuses connections for a moment: retry those.
        for _ in 0..100 {
            let mut req = self.http.request(
                method.parse().expect("method"),
                format!("{}{path}", self.api()),
            );
            if let Some(b) = body {
                req = req.json(b);
            }
            match req.send().await {
                Ok(resp) => {
                    let status = resp.status();
                    let text = resp.text().await.unwrap_or_default();
                    let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
                    return (status, value);
                }
                Err(e) => last_error = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!("{method} {path}: {last_error:?}");
    }

    pub async fn get(&self, path: &str) -> Value {
        let (status, body) = self.call("GET", path, None).await;
        assert_eq!(status, StatusCode::OK, "GET {path}: {body}");
        body
    }

    /// POST that must be accepted; returns the body.
    pub async fn post_ok(&self, path: &str, body: &Value) -> Value {
        let (status, resp) = self.call("POST", path, Some(body)).await;
        assert_eq!(status, StatusCode::OK, "POST {path}: {resp}");
        resp
    }

    /// Polls `check` until it returns Some, up to [`CONVERGE`]; returns the value and how long it took.
    pub async fn wait_for<T, F, Fut>(&self, what: &str, mut check: F) -> (T, Duration)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        let bound = self.bound(what);
        loop {
            if let Some(v) = check().await {
                return (v, bound.elapsed());
            }
            bound.check();
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Like [`Fleet::wait_for`], for a check that says what it saw when it is not satisfied
    /// (`Err(seen)`): a timeout's panic ends with the last of those, so a failure in CI
    /// says where the system stopped.
    pub async fn wait_seen<T, F, Fut>(&self, what: &str, mut check: F) -> (T, Duration)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, String>>,
    {
        let bound = self.bound(what);
        loop {
            let seen = match check().await {
                Ok(v) => return (v, bound.elapsed()),
                Err(seen) => seen,
            };
            if bound.elapsed() > CONVERGE {
                panic!(
                    "timed out after {CONVERGE:?} waiting for {what}; logs in {}; last seen: {seen}",
                    self.dir.path().display()
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// A bound on a wait a test drives itself: [`Bound::check`] panics once [`CONVERGE`] has
    /// passed, so a broken system fails the test instead of hanging it.
    pub fn bound(&self, what: &str) -> Bound {
        Bound {
            started: Instant::now(),
            what: what.to_string(),
            logs: self.dir.path().to_path_buf(),
        }
    }

    pub async fn wait_hosts_healthy(&self) {
        let want = self.agents.len();
        self.wait_for("every host healthy", || async {
            let (status, hosts) = self.call("GET", "/v1/hosts", None).await;
            let healthy = hosts["hosts"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter(|h| h["status"]["state"] == "healthy")
                        .count()
                })
                .unwrap_or(0);
            (status == StatusCode::OK && healthy == want).then_some(())
        })
        .await;
    }

    /// Waits until a task ends; returns it.
    pub async fn wait_task(&self, db: &str, task_id: &str) -> Value {
        let path = format!("/v1/databases/{db}/tasks/{task_id}");
        let (task, took) = self
            .wait_for(&format!("task {task_id}"), || async {
                let (status, t) = self.call("GET", &path, None).await;
                let done = status == StatusCode::OK
                    && matches!(
                        t["status"].as_str(),
                        Some("completed" | "failed" | "canceled")
                    );
                done.then_some(t)
            })
            .await;
        println!(
            "task {task_id} ({}) ended {} after {took:?}",
            task["type"], task["status"]
        );
        task
    }

    /// Submits a create or update and waits for its task to complete.
    pub async fn apply(&self, path: &str, body: &Value) -> Value {
        let resp = self.post_ok(path, body).await;
        let db = resp["database"]["id"]
            .as_str()
            .expect("database id")
            .to_string();
        let task = self
            .wait_task(&db, resp["task"]["task_id"].as_str().expect("task id"))
            .await;
        if task["status"] != "completed" {
            let log = self
                .task_log(&db, task["task_id"].as_str().unwrap_or_default())
                .await;
            panic!("task did not complete: {task}\n{}", log.join("\n"));
        }
        task
    }

    pub async fn task_log(&self, db: &str, task_id: &str) -> Vec<String> {
        let log = self
            .get(&format!(
                "/v1/databases/{db}/tasks/{task_id}/log?limit=1000"
            ))
            .await;
        log["entries"]
            .as_array()
            .map(|e| {
                e.iter()
                    .map(|e| e["message"].as_str().unwrap_or("").to_string())
                    .collect()
            })
            .unwrap_or_default()
    }

    pub async fn database(&self, db: &str) -> Value {
        self.get(&format!("/v1/databases/{db}")).await
    }

    /// The service instances of a database, by service instance id.
    pub async fn service_instances(&self, db: &str) -> BTreeMap<String, Value> {
        let d = self.database(db).await;
        d["service_instances"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|s| {
                        (
                            s["service_instance_id"].as_str().unwrap_or("").to_string(),
                            s.clone(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    // ---- Docker ----

    /// Containers of this fleet (running or not): name -> (id, state).
    pub fn containers(&self) -> BTreeMap<String, (String, String)> {
        let mut out = BTreeMap::new();
        for host in self.agents.keys() {
            let filter = format!("label=berth.host-id={host}");
            let text = self.docker_on(
                host,
                &[
                    "ps",
                    "-a",
                    "--no-trunc",
                    "--filter",
                    &filter,
                    "--format",
                    "{{.Names}} {{.ID}} {{.State}}",
                ],
            );
            for line in text.lines() {
                let mut parts = line.split_whitespace();
                if let (Some(name), Some(id), Some(state)) =
                    (parts.next(), parts.next(), parts.next())
                {
                    out.insert(name.to_string(), (id.to_string(), state.to_string()));
                }
            }
        }
        out
    }

    /// The container name an agent gives an instance.
    pub fn container_name(host_id: &str, instance_id: &str) -> String {
        format!("berth-{host_id}-{instance_id}")
    }

    pub fn inspect(&self, container: &str) -> Value {
        let engine = self.engine_of_container(container);
        let text = docker_at(engine.as_deref(), &["inspect", container]);
        let v: Value = serde_json::from_str(&text).expect("docker inspect JSON");
        v[0].clone()
    }

    /// Runs SQL with psql inside a Postgres container, as the superuser on the local socket.
    pub fn psql(&self, container: &str, database: &str, sql: &str) -> String {
        let engine = self.engine_of_container(container);
        docker_at(
            engine.as_deref(),
            &[
                "exec",
                container,
                "psql",
                "-XAtq",
                "-h",
                "/var/run/postgresql",
                "-U",
                "postgres",
                "-d",
                database,
                "-c",
                sql,
            ],
        )
        .trim()
        .to_string()
    }

    /// [`Fleet::psql`] of `sql` until `accept` takes its output, bounded as
    /// [`Fleet::wait_for`] is; the output and how long it took.
    pub async fn wait_psql(
        &self,
        what: &str,
        container: &str,
        database: &str,
        sql: &str,
        accept: impl Fn(&str) -> bool,
    ) -> (String, Duration) {
        self.wait_for(what, || async {
            let out = self.psql(container, database, sql);
            accept(&out).then_some(out)
        })
        .await
    }

    /// Like [`Fleet::psql`] for SQL that may fail: (succeeded, stdout and stderr).
    pub fn psql_status(&self, container: &str, database: &str, sql: &str) -> (bool, String) {
        let engine = self.engine_of_container(container);
        test_support::psql::psql(engine.as_deref(), container, database, sql)
    }

    pub fn docker_kill(&self, container: &str) {
        let engine = self.engine_of_container(container);
        docker_at(engine.as_deref(), &["kill", container]);
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for p in self.agents.values_mut() {
            p.signal(libc::SIGCONT);
            p.kill();
        }
        for (p, _) in &mut self.control_planes {
            p.kill();
        }
        let engines: std::collections::BTreeSet<Option<String>> =
            self.agents.keys().map(|h| self.engine(h)).collect();
        for host in self.agents.keys() {
            let filter = format!("label=berth.host-id={host}");
            if let Ok(out) = docker_command(self.engine(host).as_deref())
                .args(["ps", "-aq", "--filter", &filter])
                .output()
            {
                let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
                    .split_whitespace()
                    .map(String::from)
                    .collect();
                if !ids.is_empty() {
                    let _ = docker_command(self.engine(host).as_deref())
                        .arg("rm")
                        .arg("-f")
                        .arg("-v")
                        .args(&ids)
                        .output();
                }
            }
        }
        // Networks are named after databases; this fleet's databases carry its prefix.
        // Removed by id: a name can be ambiguous if two networks ever got it.
        for engine in &engines {
            if let Ok(out) = docker_command(engine.as_deref())
                .args(["network", "ls", "--format", "{{.ID}} {{.Name}}"])
                .output()
            {
                for line in String::from_utf8_lossy(&out.stdout).lines() {
                    if let Some((id, name)) = line.split_once(' ')
                        && name.starts_with(&format!("berth-{}", self.prefix))
                    {
                        let _ = docker_command(engine.as_deref())
                            .args(["network", "rm", id])
                            .output();
                    }
                }
            }
        }
        // A cut host stays cut for the next test otherwise (up heals too, but a test may
        // also run alone).
        if let Some(net) = &self.net {
            for h in &net.hosts {
                let _ = Command::new(workspace_root().join("deploy/fleet/hosts"))
                    .args(["heal", &net_fleet().0, &h.name])
                    .stderr(Stdio::null())
                    .output();
            }
        }
        // Postgres data dirs are owned by the container's postgres user; the test runs as root.
        if std::env::var_os("BERTH_E2E_KEEP").is_some() {
            let kept = self.dir.path().to_path_buf();
            eprintln!("keeping {}", kept.display());
            std::mem::forget(std::mem::replace(
                &mut self.dir,
                tempfile::tempdir().expect("temp dir"),
            ));
        }
    }
}

/// The seed example of the product brief: database `example`, node n1 on `host`, an mcp
/// service `mcp-server` with the LLM proxy on.
pub fn seed_spec(database_name: &str, host: &str, model: &str) -> Value {
    json!({
        "database_name": database_name,
        "nodes": [{"name": "n1", "host_ids": [host]}],
        "services": [{
            "service_id": "mcp-server",
            "service_type": "mcp",
            "version": "latest",
            "host_ids": [host],
            "config": {
                "llm_enabled": true,
                "llm_provider": "anthropic",
                "llm_model": model,
                "anthropic_api_key": "sk-ant-e2e-SECRET"
            }
        }]
    })
}
