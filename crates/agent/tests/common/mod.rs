//! Test harness: a real Docker engine, a tiny busybox image built locally, in-process agents on free ports,
//! and cleanup guards that remove every container of a test's host id even when the test panics.

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use agent::AgentConfig;
use agent_proto::v1::agent_client::AgentClient;
use agent_proto::v1::{
    ApplyInstanceRequest, ApplyResult, ConfigFile, HealthCheck, InstanceKind, InstanceSpec,
    LogLine, PortSpec, RemoveInstanceRequest, RemoveResult, apply_event,
};
use bollard::Docker;
use bollard::models::ContainerInspectResponse;
use bollard::query_parameters::InspectContainerOptions;
use tokio::sync::{OnceCell, oneshot};
use tonic::transport::Channel;

pub const TEST_IMAGE: &str = "berth-agent-test:busybox";
const BUSYBOX: &str = "/bin/busybox";

/// A negotiated engine client; panics (fails the test) when there is no engine.
pub async fn docker() -> Docker {
    let docker = Docker::connect_with_local_defaults().expect("docker client");
    let docker = docker
        .negotiate_version()
        .await
        .expect("these tests need a running Docker engine (DOCKER_HOST or /var/run/docker.sock)");
    docker.ping().await.expect("docker ping");
    docker
}

/// Removes a container behind the agent's back (`docker rm -f`).
pub async fn force_remove(docker: &Docker, id: &str) {
    docker
        .remove_container(
            id,
            Some(
                bollard::query_parameters::RemoveContainerOptionsBuilder::new()
                    .force(true)
                    .build(),
            ),
        )
        .await
        .expect("remove the container");
}

static IMAGE: OnceCell<()> = OnceCell::const_new();

/// Builds `berth-agent-test:busybox` (FROM scratch + a static busybox) unless the engine already has it.
pub async fn ensure_test_image() {
    IMAGE
        .get_or_init(|| async {
            let docker = docker().await;
            if docker.inspect_image(TEST_IMAGE).await.is_ok() {
                return;
            }
            assert!(
                Path::new(BUSYBOX).exists(),
                "{BUSYBOX} is missing: install it with `apt-get install -y busybox-static`"
            );
            let context = tempfile::tempdir().expect("build context");
            std::fs::copy(BUSYBOX, context.path().join("busybox")).expect("copy busybox");
            std::fs::write(
                context.path().join("Dockerfile"),
                "FROM scratch\nCOPY busybox /bin/busybox\n",
            )
            .expect("Dockerfile");
            let out = tokio::task::spawn_blocking(move || {
                Command::new("docker")
                    .args(["build", "-q", "-t", TEST_IMAGE, "."])
                    .current_dir(context.path())
                    // The classic builder needs nothing beyond the engine itself.
                    .env("DOCKER_BUILDKIT", "0")
                    .output()
            })
            .await
            .unwrap()
            .expect("run docker build");
            assert!(
                out.status.success(),
                "docker build failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        })
        .await;
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

pub fn unique_host_id(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{prefix}-{}-{n}-{:x}", std::process::id(), nanos & 0xffff)
}

/// Removes every container labelled with the host id when dropped, panic or not.
pub struct ContainerGuard {
    host_id: String,
}

impl ContainerGuard {
    pub fn new(host_id: &str) -> Self {
        Self {
            host_id: host_id.to_string(),
        }
    }
}

impl Drop for ContainerGuard {
    fn drop(&mut self) {
        let filter = format!("label=berth.host-id={}", self.host_id);
        let Ok(out) = Command::new("docker")
            .args(["ps", "-aq", "--filter", &filter])
            .output()
        else {
            return;
        };
        let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(String::from)
            .collect();
        if !ids.is_empty() {
            let _ = Command::new("docker")
                .args(["rm", "-f", "-v"])
                .args(&ids)
                .output();
        }
        // The engine can take a moment to release the endpoints of containers it just removed.
        for _ in 0..5 {
            let removed = Command::new("docker")
                .args(["network", "rm", &test_network(&self.host_id)])
                .output();
            match removed {
                Ok(out)
                    if !out.status.success()
                        && String::from_utf8_lossy(&out.stderr).contains("active endpoints") =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(200));
                }
                _ => break,
            }
        }
    }
}

type AgentTask = tokio::task::JoinHandle<Result<(), agent::AgentError>>;

async fn spawn_agent(
    host_id: &str,
    data_dir: &Path,
) -> (oneshot::Sender<()>, AgentTask, AgentClient<Channel>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().unwrap();
    let config = AgentConfig {
        host_id: host_id.to_string(),
        listen: addr,
        advertise: None,
        control_plane: Vec::new(),
        join_token: None,
        join_token_file: None,
        ca_file: None,
        data_dir: Some(data_dir.to_path_buf()),
        docker_host: None,
        addresses: vec!["127.0.0.1".into()],
        metrics_listen: None,
    };
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(agent::serve(config, listener, async {
        let _ = stopped.await;
    }));
    let client = AgentClient::connect(format!("http://{addr}"))
        .await
        .expect("connect to agent");
    (stop, task, client)
}

/// The one network name a test may create; the guard removes it.
pub fn test_network(host_id: &str) -> String {
    format!("berth-test-{host_id}")
}

pub struct TestAgent {
    pub host_id: String,
    pub data_dir: PathBuf,
    pub client: AgentClient<Channel>,
    _tmp: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
    task: Option<AgentTask>,
    // Declared last: dropped after the agent's own handles.
    _guard: ContainerGuard,
}

impl TestAgent {
    pub async fn start(prefix: &str) -> Self {
        ensure_test_image().await;
        let host_id = unique_host_id(prefix);
        let guard = ContainerGuard {
            host_id: host_id.clone(),
        };
        let tmp = tempfile::tempdir().expect("data dir");
        let data_dir = tmp.path().join("agent");
        let (stop, task, client) = spawn_agent(&host_id, &data_dir).await;
        Self {
            host_id,
            data_dir,
            client,
            _tmp: tmp,
            stop: Some(stop),
            task: Some(task),
            _guard: guard,
        }
    }

    /// Stops serving like a SIGTERM would, and checks the agent exits cleanly.
    pub async fn stop_serving(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .expect("agent exits promptly")
                .expect("agent task")
                .expect("agent exits cleanly");
        }
    }

    /// Starts a fresh agent with the same host id and data dir, on a new port.
    pub async fn start_serving(&mut self) {
        assert!(self.task.is_none(), "agent still serving");
        let (stop, task, client) = spawn_agent(&self.host_id, &self.data_dir).await;
        self.stop = Some(stop);
        self.task = Some(task);
        self.client = client;
    }

    pub fn instance_dir(&self, instance_id: &str) -> PathBuf {
        self.data_dir.join("instances").join(instance_id)
    }

    pub fn container_name(&self, instance_id: &str) -> String {
        format!("berth-{}-{}", self.host_id, instance_id)
    }

    pub async fn shutdown(mut self) {
        self.stop_serving().await;
    }

    pub async fn apply(
        &mut self,
        spec: InstanceSpec,
    ) -> Result<(Vec<LogLine>, ApplyResult), tonic::Status> {
        let mut stream = self
            .client
            .apply_instance(ApplyInstanceRequest { spec: Some(spec) })
            .await?
            .into_inner();
        let mut logs = Vec::new();
        let deadline = Duration::from_secs(60);
        loop {
            let msg = tokio::time::timeout(deadline, stream.message())
                .await
                .expect("apply stream stalled")?;
            match msg.and_then(|m| m.event) {
                Some(apply_event::Event::Log(line)) => logs.push(line),
                Some(apply_event::Event::Result(result)) => return Ok((logs, result)),
                Some(apply_event::Event::Removed(_)) => panic!("apply stream sent a remove result"),
                None => panic!("apply stream ended without a result"),
            }
        }
    }

    pub async fn remove(
        &mut self,
        instance_id: &str,
        delete_data: bool,
    ) -> Result<RemoveResult, tonic::Status> {
        let request = RemoveInstanceRequest {
            instance_id: instance_id.into(),
            delete_data,
        };
        let mut stream = self.client.remove_instance(request).await?.into_inner();
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(60), stream.message())
                .await
                .expect("remove stream stalled")?;
            match msg.and_then(|m| m.event) {
                Some(apply_event::Event::Log(_)) => {}
                Some(apply_event::Event::Removed(result)) => return Ok(result),
                Some(apply_event::Event::Result(_)) => panic!("remove stream sent an apply result"),
                None => panic!("remove stream ended without a result"),
            }
        }
    }
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A busybox httpd serving the config directory, with a health check that passes at once.
pub fn web_spec(instance_id: &str, index_html: &str) -> InstanceSpec {
    InstanceSpec {
        instance_id: instance_id.into(),
        database_id: "db-test".into(),
        service_id: "web".into(),
        kind: InstanceKind::Service as i32,
        image: TEST_IMAGE.into(),
        command: vec![
            BUSYBOX.into(),
            "httpd".into(),
            "-f".into(),
            "-p".into(),
            "8080".into(),
            "-h".into(),
            "/config".into(),
        ],
        env: HashMap::from([("GREETING".to_string(), "hello".to_string())]),
        files: vec![ConfigFile {
            path: "index.html".into(),
            content: index_html.as_bytes().to_vec(),
        }],
        config_mount_path: "/config".into(),
        data_mount_path: Some("/data".into()),
        labels: HashMap::from([("test.suite".to_string(), "agent".to_string())]),
        network: None,
        ports: vec![PortSpec {
            name: "http".into(),
            container_port: 8080,
            host_port: Some(0),
        }],
        nano_cpus: 500_000_000,
        memory_bytes: 64 * 1024 * 1024,
        health_check: Some(HealthCheck {
            test: vec!["CMD".into(), BUSYBOX.into(), "true".into()],
            interval_ms: 300,
            timeout_ms: 2_000,
            retries: 3,
            start_period_ms: 0,
        }),
        user: String::new(),
        stop_timeout_seconds: 1,
        pull_policy: agent_proto::v1::ImagePullPolicy::Never as i32,
    }
}

/// A container that just sleeps, without a health check.
pub fn sleeper_spec(instance_id: &str) -> InstanceSpec {
    InstanceSpec {
        instance_id: instance_id.into(),
        database_id: "db-test".into(),
        kind: InstanceKind::Postgres as i32,
        image: TEST_IMAGE.into(),
        command: vec![BUSYBOX.into(), "sleep".into(), "3600".into()],
        stop_timeout_seconds: 1,
        ..Default::default()
    }
}

/// Waits until the engine's own health check has passed (bounded, for a check that passes at once).
pub async fn wait_engine_healthy(docker: &Docker, name: &str) {
    for _ in 0..300 {
        let health = inspect(docker, name)
            .await
            .and_then(|c| c.state)
            .and_then(|s| s.health)
            .and_then(|h| h.status);
        if health == Some(bollard::models::HealthStatusEnum::HEALTHY) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{name}: the engine never saw its health check pass");
}

pub async fn inspect(docker: &Docker, name: &str) -> Option<ContainerInspectResponse> {
    match docker
        .inspect_container(name, None::<InspectContainerOptions>)
        .await
    {
        Ok(c) => Some(c),
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => None,
        Err(e) => panic!("inspect {name}: {e}"),
    }
}

/// The host port Docker bound for a container port, read from the engine.
pub fn bound_host_port(c: &ContainerInspectResponse, container_port: u16) -> u16 {
    let ports = c
        .network_settings
        .as_ref()
        .and_then(|n| n.ports.as_ref())
        .expect("port map");
    ports
        .get(&format!("{container_port}/tcp"))
        .and_then(|b| b.as_ref())
        .and_then(|b| b.iter().find_map(|b| b.host_port.as_deref()?.parse().ok()))
        .expect("published port")
}

/// GET over plain HTTP/1.0, returning the body.
pub async fn http_get(port: u16, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("http response");
    assert!(
        head.starts_with("HTTP/1.") && head.contains(" 200 "),
        "unexpected response: {head}"
    );
    body.to_string()
}
