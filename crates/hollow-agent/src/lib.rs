//! A SIMULATED berth agent for benchmarks, in the spirit of Kubernetes' kubemark "hollow" nodes.
//!
//! It speaks the real `agent.v1` protocol (it serves `Agent` and is a `Registry` client that registers and
//! heartbeats), but it runs no containers and never talks to Docker: instances live in memory.
//!
//! - `ApplyInstance` optionally streams `apply_log.lines` log lines, then records the instance as RUNNING and
//!   HEALTHY, emits that change on every watch stream, and returns the result. An apply whose spec hash matches
//!   the instance already held is `UNCHANGED` and emits no change, as a real agent whose container already
//!   matches would not see a Docker event.
//! - `RemoveInstance` forgets the instance and emits its removal.
//! - `ExecInstance` answers exit code 0 with empty output for any known instance. The control plane's role
//!   creation through `psql` therefore "succeeds" without any SQL being run.
//! - `WatchInstances` sends a snapshot first, then every change.
//!
//! The spec hash and the reported labels are the real agent's own (`agent::instance`), so the control plane
//! sees what a real host would report. One process hosts
//! any number of simulated hosts, each on its own gRPC port.
//!
//! Each simulated host joins the fleet as a real one does (the join token for a certificate of its host id,
//! through `agent_tls`), serves the agent API over mutual TLS to control planes only, and registers and
//! heartbeats as itself; its certificate is kept in memory.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use agent_proto::v1::agent_server::{Agent, AgentServer};
use agent_proto::v1::registry_client::RegistryClient;
use agent_proto::v1::{
    ApplyAction, ApplyEvent, ApplyInstanceRequest, ApplyResult, ExecRequest, ExecResult, Health,
    HeartbeatRequest, HostInfo, InstanceEvent, InstanceSnapshot, InstanceState, InstanceStatus,
    LogLine, PublishedPort, RegisterRequest, RemoveInstanceRequest, RemoveResult,
    ResizeInstanceRequest, ResizeResult, WatchRequest, apply_event, instance_event,
};
// The real agent's own rules for what makes a new container and what a container reports, so a
// simulated host answers exactly as a real one would.
use agent::instance::{container_labels, spec_hash};
use agent_tls::AgentTls;
use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

/// Version string the simulated hosts register with, so `GET /v1/hosts` shows what they are.
pub const AGENT_VERSION: &str = concat!("hollow-", env!("CARGO_PKG_VERSION"));
/// Every simulated host claims one shared engine, so the control plane wires their
/// instances by alias and never waits for a published port that no container has.
pub const HOLLOW_ENGINE_ID: &str = "hollow";

/// Field of every simulated apply log line: when the line left the agent, in microseconds since the Unix epoch.
/// The follow benchmark compares it with the time a client reads the line.
pub const EMITTED_AT_FIELD: &str = "emitted_at_us";
/// Field of every simulated apply log line: its 1-based position in the apply's stream.
pub const SEQ_FIELD: &str = "seq";

#[derive(Debug, thiserror::Error)]
pub enum HollowError {
    #[error("bind {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("local address: {0}")]
    LocalAddr(std::io::Error),
    #[error("no registry URL given")]
    NoRegistry,
    #[error("{host_id}: {source}")]
    Join {
        host_id: String,
        source: agent_tls::JoinError,
    },
    #[error("{host_id}: serving TLS: {source}")]
    Tls {
        host_id: String,
        source: tonic::transport::Error,
    },
}

/// What a simulated host needs to join the fleet: the fleet's join token and the CA that signed the control
/// plane's certificate.
#[derive(Clone)]
pub struct JoinWith {
    pub token: String,
    pub ca_pem: String,
}

impl std::fmt::Debug for JoinWith {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinWith")
            .field("token", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// Log lines a simulated apply streams before its result, to make tasks produce log traffic.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApplyLog {
    pub lines: u32,
    pub interval: Duration,
}

#[derive(Debug, Clone)]
pub struct HostConfig {
    pub host_id: String,
    /// Where this host's gRPC server listens; port 0 picks a free port.
    pub listen: SocketAddr,
    /// Registry URLs (`host:port`, any scheme: always TLS) of the control-plane replicas; tried in turn when
    /// one fails.
    pub registries: Vec<String>,
    pub join: JoinWith,
    pub apply_log: ApplyLog,
}

/// Counters of what the control plane asked of a simulated host.
#[derive(Debug, Default)]
pub struct Counters {
    pub applies: std::sync::atomic::AtomicU64,
    pub unchanged_applies: std::sync::atomic::AtomicU64,
    pub removes: std::sync::atomic::AtomicU64,
    pub execs: std::sync::atomic::AtomicU64,
    pub watches: std::sync::atomic::AtomicU64,
}

struct Shared {
    host_id: String,
    instances: Mutex<HashMap<String, InstanceState>>,
    changes: broadcast::Sender<InstanceEvent>,
    apply_log: ApplyLog,
    next_port: AtomicU32,
    counters: Arc<Counters>,
}

/// One running simulated host. Dropping it stops its server and its registration loop.
pub struct HollowHost {
    pub host_id: String,
    /// The URL the control plane dials, as registered.
    pub address: String,
    pub counters: Arc<Counters>,
    server: tokio::task::JoinHandle<()>,
    registration: tokio::task::JoinHandle<()>,
}

impl Drop for HollowHost {
    fn drop(&mut self) {
        self.server.abort();
        self.registration.abort();
    }
}

/// Starts one simulated host: joins the fleet, binds its port, serves `agent.v1.Agent` over mutual TLS, and
/// registers with the registry.
pub async fn start_host(config: HostConfig) -> Result<HollowHost, HollowError> {
    if config.registries.is_empty() {
        return Err(HollowError::NoRegistry);
    }
    let never = tokio_util::sync::CancellationToken::new();
    let tls = AgentTls::join(
        &config.host_id,
        &config.registries,
        &config.join.token,
        &config.join.ca_pem,
        &never,
    )
    .await
    .map_err(|source| HollowError::Join {
        host_id: config.host_id.clone(),
        source,
    })?
    .expect("joining is never cancelled here");
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| HollowError::Bind {
            addr: config.listen,
            source,
        })?;
    let local = listener.local_addr().map_err(HollowError::LocalAddr)?;
    let address = format!("https://{local}");
    let counters = Arc::new(Counters::default());
    // Large enough that a control plane reading at full speed never lags; a lagging subscriber gets a snapshot.
    let (changes, _) = broadcast::channel(4096);
    let shared = Arc::new(Shared {
        host_id: config.host_id.clone(),
        instances: Mutex::new(HashMap::new()),
        changes,
        apply_log: config.apply_log,
        next_port: AtomicU32::new(40_000),
        counters: counters.clone(),
    });
    let service = HollowService {
        shared: shared.clone(),
    };
    let mut builder = tonic::transport::Server::builder()
        .tls_config(tls.server())
        .map_err(|source| HollowError::Tls {
            host_id: config.host_id.clone(),
            source,
        })?;
    let server = tokio::spawn(async move {
        let served = builder
            .add_service(AgentServer::with_interceptor(
                service,
                agent_tls::require_control_plane,
            ))
            .serve_with_incoming(TcpListenerStream::new(listener))
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "hollow agent server stopped");
        }
    });
    let mut registries = Vec::with_capacity(config.registries.len());
    for url in &config.registries {
        let channel =
            agent_tls::registry_channel(url, tls.registry_client()).map_err(|source| {
                HollowError::Join {
                    host_id: config.host_id.clone(),
                    source,
                }
            })?;
        registries.push((url.clone(), RegistryClient::new(channel)));
    }
    let registration = tokio::spawn(register_loop(
        config.host_id.clone(),
        address.clone(),
        registries,
    ));
    Ok(HollowHost {
        host_id: config.host_id,
        address,
        counters,
        server,
        registration,
    })
}

/// Registers, then heartbeats every ttl/3, registering again when the control plane forgot the host (its lease
/// expired) and moving to the next registry when a call fails: the real agent's schedule.
async fn register_loop(
    host_id: String,
    address: String,
    mut registries: Vec<(String, RegistryClient<Channel>)>,
) {
    let mut index = 0usize;
    loop {
        let replicas = registries.len();
        let (url, client) = &mut registries[index % replicas];
        let url = url.clone();
        let registered = client
            .register(RegisterRequest {
                host_id: host_id.clone(),
                agent_address: address.clone(),
                addresses: vec!["127.0.0.1".into()],
                cpus: 2,
                memory_bytes: 4 << 30,
                agent_version: AGENT_VERSION.into(),
                docker_ok: true,
                docker_error: String::new(),
                engine_id: HOLLOW_ENGINE_ID.into(),
            })
            .await;
        let ttl = match registered {
            Ok(r) => r.into_inner().lease_ttl_seconds.max(3),
            Err(status) => {
                tracing::warn!(host_id, %url, error = %status, "register failed");
                index += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let period = Duration::from_millis(u64::from(ttl) * 1000 / 3);
        // Simulated hosts all register within a moment, so without a spread they would heartbeat in
        // lockstep: bursts of 2 etcd requests per host that real hosts, started at different times, do not
        // make, and that land in some measurement windows and not others.
        tokio::time::sleep(period.mul_f64(spread_of(&host_id))).await;
        loop {
            tokio::time::sleep(period).await;
            let beat = client
                .heartbeat(HeartbeatRequest {
                    host_id: host_id.clone(),
                    docker_ok: true,
                    docker_error: String::new(),
                })
                .await;
            match beat {
                Ok(r) if r.get_ref().known => {}
                Ok(_) => break,
                Err(status) => {
                    tracing::warn!(host_id, %url, error = %status, "heartbeat failed");
                    index += 1;
                    break;
                }
            }
        }
    }
}

/// A fraction in [0, 1) fixed by the host id.
fn spread_of(host_id: &str) -> f64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    host_id.hash(&mut hasher);
    (hasher.finish() % 1000) as f64 / 1000.0
}

/// Starts `count` simulated hosts named `{prefix}-{i}` (1-based), each on its own port of `ip`. They join a few
/// at a time: each join is a key generation and a signature on the control plane.
pub async fn start_hosts(
    prefix: &str,
    count: usize,
    ip: std::net::IpAddr,
    registries: &[String],
    join: &JoinWith,
    apply_log: ApplyLog,
) -> Result<Vec<HollowHost>, HollowError> {
    use futures::stream::{StreamExt, TryStreamExt};
    futures::stream::iter(1..=count)
        .map(|i| {
            start_host(HostConfig {
                host_id: format!("{prefix}-{i}"),
                listen: SocketAddr::new(ip, 0),
                registries: registries.to_vec(),
                join: join.clone(),
                apply_log,
            })
        })
        .buffered(8)
        .try_collect()
        .await
}

struct HollowService {
    shared: Arc<Shared>,
}

fn now_timestamp() -> prost_types::Timestamp {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    prost_types::Timestamp {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

fn unix_micros() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros()
}

impl Shared {
    /// Records the instance as running from `spec`; returns the result and whether anything changed.
    fn apply(&self, spec: &agent_proto::v1::InstanceSpec) -> (ApplyResult, bool) {
        let hash = spec_hash(spec);
        let mut instances = self.instances.lock().expect("hollow state lock");
        if let Some(existing) = instances.get(&spec.instance_id)
            && existing.spec_hash == hash
        {
            let result = ApplyResult {
                container_id: existing.container_id.clone(),
                image: existing.image.clone(),
                ports: existing.ports.clone(),
                action: ApplyAction::Unchanged as i32,
                resize_applied: false,
                spec_hash: hash,
                // No observation numbers: a reader takes every state as the newest.
                sequence: 0,
            };
            return (result, false);
        }
        let recreated = instances.contains_key(&spec.instance_id);
        let ports: Vec<PublishedPort> = spec
            .ports
            .iter()
            .map(|p| PublishedPort {
                name: p.name.clone(),
                container_port: p.container_port,
                host_port: match p.host_port {
                    None => 0,
                    Some(0) => self.next_port.fetch_add(1, Ordering::Relaxed),
                    Some(port) => port,
                },
            })
            .collect();
        let container_id = format!("hollow-{}-{}", self.host_id, &hash[..12.min(hash.len())]);
        let labels = container_labels(&self.host_id, spec, &hash);
        let now = now_timestamp();
        let state = InstanceState {
            instance_id: spec.instance_id.clone(),
            labels: labels.into_iter().collect(),
            container_id: container_id.clone(),
            image: spec.image.clone(),
            state: InstanceStatus::Running as i32,
            health: if spec.health_check.is_some() {
                Health::Healthy as i32
            } else {
                Health::None as i32
            },
            ports: ports.clone(),
            started_at: Some(now),
            last_health_at: Some(now),
            spec_hash: hash.clone(),
            ..Default::default()
        };
        instances.insert(spec.instance_id.clone(), state.clone());
        // Sent under the lock so that watchers see changes in the order they were made.
        let _ = self.changes.send(InstanceEvent {
            event: Some(instance_event::Event::Changed(state)),
        });
        let result = ApplyResult {
            container_id,
            image: spec.image.clone(),
            ports,
            action: if recreated {
                ApplyAction::Recreated
            } else {
                ApplyAction::Created
            } as i32,
            resize_applied: false,
            spec_hash: hash,
            sequence: 0,
        };
        (result, true)
    }

    fn remove(&self, instance_id: &str) -> bool {
        let mut instances = self.instances.lock().expect("hollow state lock");
        let existed = instances.remove(instance_id).is_some();
        if existed {
            let _ = self.changes.send(InstanceEvent {
                event: Some(instance_event::Event::RemovedInstanceId(
                    instance_id.to_string(),
                )),
            });
        }
        existed
    }

    fn knows(&self, instance_id: &str) -> bool {
        self.instances
            .lock()
            .expect("hollow state lock")
            .contains_key(instance_id)
    }

    /// A snapshot and a subscription taken under one lock, so no change falls between them.
    fn subscribe(&self) -> (InstanceEvent, broadcast::Receiver<InstanceEvent>) {
        let instances = self.instances.lock().expect("hollow state lock");
        let rx = self.changes.subscribe();
        let snapshot = InstanceEvent {
            event: Some(instance_event::Event::Snapshot(InstanceSnapshot {
                instances: instances.values().cloned().collect(),
                sequence: 0,
            })),
        };
        (snapshot, rx)
    }
}

#[tonic::async_trait]
impl Agent for HollowService {
    type ApplyInstanceStream = ReceiverStream<Result<ApplyEvent, Status>>;
    type RemoveInstanceStream = ReceiverStream<Result<ApplyEvent, Status>>;
    type WatchInstancesStream = ReceiverStream<Result<InstanceEvent, Status>>;

    async fn apply_instance(
        &self,
        request: Request<ApplyInstanceRequest>,
    ) -> Result<Response<Self::ApplyInstanceStream>, Status> {
        let spec = request
            .into_inner()
            .spec
            .ok_or_else(|| Status::invalid_argument("spec is required"))?;
        if spec.instance_id.is_empty() {
            return Err(Status::invalid_argument("spec.instance_id is required"));
        }
        let shared = self.shared.clone();
        shared.counters.applies.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            let log = shared.apply_log;
            for seq in 1..=log.lines {
                if seq > 1 && !log.interval.is_zero() {
                    tokio::time::sleep(log.interval).await;
                }
                let line = LogLine {
                    timestamp: Some(now_timestamp()),
                    message: format!("simulated apply of {}: step {seq}", spec.instance_id),
                    fields: [
                        (EMITTED_AT_FIELD.to_string(), unix_micros().to_string()),
                        (SEQ_FIELD.to_string(), seq.to_string()),
                    ]
                    .into_iter()
                    .collect(),
                };
                let event = ApplyEvent {
                    event: Some(apply_event::Event::Log(line)),
                };
                if tx.send(Ok(event)).await.is_err() {
                    break;
                }
            }
            let (result, changed) = shared.apply(&spec);
            if !changed {
                shared
                    .counters
                    .unchanged_applies
                    .fetch_add(1, Ordering::Relaxed);
            }
            let _ = tx
                .send(Ok(ApplyEvent {
                    event: Some(apply_event::Event::Result(result)),
                }))
                .await;
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn remove_instance(
        &self,
        request: Request<RemoveInstanceRequest>,
    ) -> Result<Response<Self::RemoveInstanceStream>, Status> {
        let request = request.into_inner();
        self.shared.counters.removes.fetch_add(1, Ordering::Relaxed);
        let removed = self.shared.remove(&request.instance_id);
        let (tx, rx) = mpsc::channel(1);
        tx.send(Ok(ApplyEvent {
            event: Some(apply_event::Event::Removed(RemoveResult {
                container_removed: removed,
                data_deleted: request.delete_data,
            })),
        }))
        .await
        .map_err(|_| Status::internal("remove stream closed"))?;
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn resize_instance(
        &self,
        request: Request<ResizeInstanceRequest>,
    ) -> Result<Response<ResizeResult>, Status> {
        let request = request.into_inner();
        if !self.shared.knows(&request.instance_id) {
            return Err(Status::not_found(format!(
                "no instance {}",
                request.instance_id
            )));
        }
        Ok(Response::new(ResizeResult {
            applied: true,
            sequence: 0,
        }))
    }

    async fn exec_instance(
        &self,
        request: Request<ExecRequest>,
    ) -> Result<Response<ExecResult>, Status> {
        let request = request.into_inner();
        self.shared.counters.execs.fetch_add(1, Ordering::Relaxed);
        if !self.shared.knows(&request.instance_id) {
            return Err(Status::not_found(format!(
                "no instance {}",
                request.instance_id
            )));
        }
        Ok(Response::new(ExecResult {
            exit_code: 0,
            stdout: Vec::new(),
            stderr: Vec::new(),
        }))
    }

    async fn watch_instances(
        &self,
        _request: Request<WatchRequest>,
    ) -> Result<Response<Self::WatchInstancesStream>, Status> {
        self.shared.counters.watches.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(256);
        let shared = self.shared.clone();
        tokio::spawn(async move {
            let (snapshot, mut changes) = shared.subscribe();
            if tx.send(Ok(snapshot)).await.is_err() {
                return;
            }
            loop {
                let event = match changes.recv().await {
                    Ok(event) => event,
                    // Like a real agent that lost track of the engine: start over with a fresh snapshot.
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        let (snapshot, rx) = shared.subscribe();
                        changes = rx;
                        snapshot
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                if tx.send(Ok(event)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn get_host_info(&self, _request: Request<()>) -> Result<Response<HostInfo>, Status> {
        Ok(Response::new(HostInfo {
            host_id: self.shared.host_id.clone(),
            cpus: 2,
            memory_bytes: 4 << 30,
            agent_version: AGENT_VERSION.into(),
            docker_ok: true,
            docker_error: String::new(),
            addresses: vec!["127.0.0.1".into()],
            engine_id: HOLLOW_ENGINE_ID.into(),
        }))
    }
}
