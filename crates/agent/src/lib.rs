//! The berth host agent: serves `agent.v1.Agent` over gRPC, runs instances as containers through the Docker
//! Engine API, watches them through the engine's event stream, and registers with the control plane.
//!
//! Ownership: every container it creates is named `berth-<host_id>-<instance_id>` and labelled
//! `berth.host-id=<host_id>`; it never lists, watches or touches a container without its own host id, so several
//! agents can share one engine.

pub mod blocking;
pub mod instance;
pub mod ops;
pub mod ports_file;
pub mod registration;
pub mod runtime;
pub mod service;
pub mod state;
pub mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;
use std::sync::Arc;

use agent_proto::v1::agent_server::AgentServer;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;

use crate::ops::Ops;
use crate::registration::Registration;
use crate::runtime::{DockerRuntime, RuntimeError};
use crate::service::AgentService;
use crate::state::StateHub;

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Command line and environment (`BERTH_AGENT_*`) configuration.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "berth-agent",
    version,
    about = "berth host agent: runs database and service containers on this host for the berth control plane",
    long_about = "berth host agent: serves the agent.v1.Agent gRPC API, runs Postgres and service instances as \
                  Docker containers it owns (named berth-<host-id>-<instance-id>), pushes their state to \
                  WatchInstances subscribers from the engine's event stream, and registers with the control \
                  plane's Registry when --control-plane is given. On SIGTERM/SIGINT it stops serving but leaves \
                  its containers running."
)]
pub struct AgentConfig {
    /// This host's id, unique in the fleet; part of every container name and ownership label.
    #[arg(long, env = "BERTH_AGENT_HOST_ID")]
    pub host_id: String,
    /// Address the gRPC server listens on.
    #[arg(long, env = "BERTH_AGENT_LISTEN", default_value = "127.0.0.1:7100")]
    pub listen: SocketAddr,
    /// Address the control plane dials to reach this agent (host:port or URL); defaults to the listen address.
    #[arg(long, env = "BERTH_AGENT_ADVERTISE")]
    pub advertise: Option<String>,
    /// gRPC URLs of the control-plane replicas' Registry, comma separated, e.g. http://127.0.0.1:3001; the agent
    /// moves to the next one when a call fails. Without any, the agent runs standalone.
    #[arg(long, env = "BERTH_AGENT_CONTROL_PLANE", value_delimiter = ',')]
    pub control_plane: Vec<String>,
    /// The fleet's join token, needed on the first start only (the control plane writes it to
    /// its data dir as `join-token`).
    #[arg(long, env = "BERTH_AGENT_JOIN_TOKEN", hide_env_values = true)]
    pub join_token: Option<secrecy::SecretString>,
    /// A file holding the join token.
    #[arg(
        long,
        env = "BERTH_AGENT_JOIN_TOKEN_FILE",
        conflicts_with = "join_token"
    )]
    pub join_token_file: Option<PathBuf>,
    /// The fleet CA certificate (the control plane writes it to its data dir as `ca.pem`),
    /// needed on the first start only: the agent joins only a control plane it signed.
    #[arg(long, env = "BERTH_AGENT_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// Where instance directories live; defaults to /var/lib/berth/agent/<host-id>.
    #[arg(long, env = "BERTH_AGENT_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Docker endpoint (unix:///var/run/docker.sock, tcp://host:2375); defaults to DOCKER_HOST or the local socket.
    #[arg(long, env = "BERTH_AGENT_DOCKER_HOST")]
    pub docker_host: Option<String>,
    /// Addresses at which clients reach ports published on this host, comma-separated.
    #[arg(
        long,
        env = "BERTH_AGENT_ADDRESSES",
        value_delimiter = ',',
        default_value = "127.0.0.1"
    )]
    pub addresses: Vec<String>,
    /// Address of a plain-HTTP listener serving Prometheus metrics at `GET /metrics`
    /// (docs/operations.md), e.g. 127.0.0.1:9101. Off when absent.
    #[arg(long, env = "BERTH_AGENT_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
}

impl AgentConfig {
    pub fn data_dir(&self) -> PathBuf {
        self.data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("/var/lib/berth/agent").join(&self.host_id))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("invalid host id: {0}")]
    InvalidHostId(#[from] instance::SpecError),
    #[error("cannot create data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot set up the container engine client: {0}")]
    Runtime(#[from] RuntimeError),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("gRPC server: {0}")]
    Serve(#[from] tonic::transport::Error),
    #[error("metrics server: {0}")]
    Metrics(std::io::Error),
}

fn advertised_url(config: &AgentConfig, local: SocketAddr) -> String {
    let addr = config
        .advertise
        .clone()
        .unwrap_or_else(|| local.to_string());
    if addr.contains("://") {
        addr
    } else {
        format!("https://{addr}")
    }
}

/// Binds `config.listen` (and `config.metrics_listen`, if set) and serves until `shutdown`
/// resolves.
pub async fn run(
    config: AgentConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), AgentError> {
    let bind = |addr: SocketAddr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|source| AgentError::Listen { addr, source })
    };
    let listener = bind(config.listen).await?;
    let Some(metrics_addr) = config.metrics_listen else {
        return serve(config, listener, shutdown).await;
    };
    let metrics = bind(metrics_addr).await?;
    telemetry::install();
    tracing::info!(listen = %metrics_addr, "serving metrics at /metrics");
    let stop = CancellationToken::new();
    let metrics = tokio::spawn(telemetry::http::serve(
        metrics,
        stop.clone().cancelled_owned(),
    ));
    let served = serve(config, listener, shutdown).await;
    stop.cancel();
    match metrics.await {
        Ok(Err(e)) if served.is_ok() => Err(AgentError::Metrics(e)),
        _ => served,
    }
}

/// Serves on an already bound listener until `shutdown` resolves. Containers are left running on the way out:
/// an agent restart must not take databases down.
pub async fn serve(
    config: AgentConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), AgentError> {
    instance::validate_instance_id(&config.host_id)?;
    let data_dir = config.data_dir();
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(instance::instances_root(&data_dir))
        .map_err(|source| AgentError::DataDir {
            path: data_dir.clone(),
            source,
        })?;
    let local = listener.local_addr().map_err(|source| AgentError::Listen {
        addr: config.listen,
        source,
    })?;

    let runtime = Arc::new(DockerRuntime::connect(config.docker_host.as_deref())?);
    if let Err(e) = runtime.negotiate().await {
        // Not fatal: the engine may come up after the agent; every ping retries the negotiation.
        tracing::warn!(error = %e, "container engine not reachable at start");
    }
    let stop = CancellationToken::new();
    let hub = StateHub::new(runtime.clone(), config.host_id.clone(), data_dir.clone());
    let watcher = tokio::spawn(hub.clone().run(stop.clone()));
    let ops = Arc::new(Ops::new(
        runtime,
        hub.clone(),
        config.host_id.clone(),
        data_dir,
        config.addresses.clone(),
    ));
    // With a control plane, everything is mutual TLS. Without one (a standalone agent driven
    // directly, as its own tests do) the API is served in plain text.
    let fleet_tls = if config.control_plane.is_empty() {
        None
    } else {
        let token = match (&config.join_token, &config.join_token_file) {
            (Some(t), _) => Some(secrecy::ExposeSecret::expose_secret(t).to_string()),
            (None, Some(path)) => Some(
                std::fs::read_to_string(path)
                    .map_err(|source| tls::TlsError::File {
                        path: path.clone(),
                        source,
                    })?
                    .trim()
                    .to_string(),
            ),
            (None, None) => None,
        };
        let obtained = tls::obtain(
            &config.host_id,
            &config.data_dir(),
            &config.control_plane,
            token,
            config.ca_file.as_deref(),
            &stop,
        )
        .await?;
        match obtained {
            Some(t) => Some(t),
            // Stopped before the control plane ever answered.
            None => return Ok(()),
        }
    };
    let registration = match &fleet_tls {
        None => None,
        Some(t) => {
            let reg = Registration::new(
                ops.clone(),
                &config.control_plane,
                advertised_url(&config, local),
                t.registry_client(),
            )
            .map_err(tls::TlsError::from)?;
            Some(tokio::spawn(reg.run(stop.clone())))
        }
    };

    tracing::info!(host_id = %config.host_id, listen = %local, "agent serving");
    let closing = CancellationToken::new();
    let signal = {
        let closing = closing.clone();
        async move {
            shutdown.await;
            tracing::info!("shutting down: closing watch streams, finishing operations in flight");
            closing.cancel();
        }
    };
    let mut server = tonic::transport::Server::builder();
    if let Some(t) = &fleet_tls {
        server = server.tls_config(t.server()).map_err(AgentError::Serve)?;
    }
    let require_cp = fleet_tls.is_some();
    let service =
        AgentServer::with_interceptor(AgentService::new(ops, hub, closing), move |request| {
            if require_cp {
                tls::require_control_plane(request)
            } else {
                Ok(request)
            }
        });
    let served = server
        .add_service(service)
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), signal)
        .await;
    stop.cancel();
    let _ = watcher.await;
    if let Some(r) = registration {
        let _ = r.await;
    }
    tracing::info!(host_id = %config.host_id, "agent stopped; containers left running");
    Ok(served?)
}

/// Installs the tracing subscriber: JSON lines when BERTH_LOG_FORMAT=json, human-readable otherwise;
/// BERTH_LOG filters (default info), as in the control plane.
pub fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("BERTH_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("BERTH_LOG_FORMAT").is_ok_and(|v| v.eq_ignore_ascii_case("json"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .init();
    } else {
        builder.init();
    }
}
