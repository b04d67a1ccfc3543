//! The container runtime boundary: everything the agent asks of the engine, in types free of bollard's,
//! so that the apply and state logic never depends on the engine client's model structs.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, SystemTime};

use futures::Stream;

/// Errors from the engine, classified by what the caller can do about them.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("container engine unreachable: {0}")]
    Unavailable(String),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("engine rejected the request ({status}): {message}")]
    Rejected { status: u16, message: String },
    #[error("engine error: {0}")]
    Other(String),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
}

impl From<bollard::errors::Error> for RuntimeError {
    fn from(e: bollard::errors::Error) -> Self {
        use bollard::errors::Error as E;
        match e {
            E::DockerResponseServerError {
                status_code: 404,
                message,
            } => RuntimeError::NotFound(message),
            E::DockerResponseServerError {
                status_code: 409,
                message,
            } => RuntimeError::Conflict(message),
            E::DockerResponseServerError {
                status_code,
                message,
            } => RuntimeError::Rejected {
                status: status_code,
                message,
            },
            E::HyperResponseError { .. }
            | E::IOError { .. }
            | E::RequestTimeoutError
            | E::SocketNotFoundError(_)
            | E::HyperLegacyError { .. } => RuntimeError::Unavailable(e.to_string()),
            other => RuntimeError::Other(other.to_string()),
        }
    }
}

pub type RuntimeResult<T> = Result<T, RuntimeError>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindMount {
    pub source: String,
    pub target: String,
    pub read_only: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortPublish {
    pub container_port: u16,
    /// None: the engine picks a free host port.
    pub host_port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheckConfig {
    pub test: Vec<String>,
    pub interval: Duration,
    pub timeout: Duration,
    pub retries: u32,
    pub start_period: Duration,
}

#[derive(Debug, Clone, Default)]
pub struct ContainerConfig {
    pub name: String,
    pub image: String,
    pub command: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
    pub mounts: Vec<BindMount>,
    pub ports: Vec<PortPublish>,
    pub network: Option<(String, Vec<String>)>,
    pub nano_cpus: i64,
    pub memory_bytes: i64,
    pub health_check: Option<HealthCheckConfig>,
    pub user: Option<String>,
    pub stop_timeout_seconds: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerStatus {
    Created,
    Running,
    Paused,
    Restarting,
    Removing,
    Exited,
    Dead,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthStatus {
    None,
    Starting,
    Healthy,
    Unhealthy,
}

#[derive(Debug, Clone)]
pub struct ContainerInfo {
    pub id: String,
    pub name: String,
    pub image: String,
    pub labels: BTreeMap<String, String>,
    pub status: ContainerStatus,
    pub exit_code: i64,
    pub oom_killed: bool,
    pub error: String,
    pub restart_count: u32,
    pub started_at: Option<SystemTime>,
    pub finished_at: Option<SystemTime>,
    pub health: HealthStatus,
    pub last_health_output: Option<String>,
    pub last_health_at: Option<SystemTime>,
    /// (container port, host port) for every published tcp port; host port 0 when not bound right now.
    pub ports: Vec<(u16, u16)>,
    pub nano_cpus: i64,
    pub memory_bytes: i64,
    /// The user-defined network the container was created on, if any.
    pub network: Option<String>,
    /// Why an exited container's image said it stopped: the last line of its stderr that
    /// berth's images write themselves (`[berth-...] ...`), when it exited non-zero. Other
    /// programs' lines are left out: they are not known to keep secrets out.
    pub last_words: Option<String>,
}

/// How much of an exited container's log is read for [`ContainerInfo::last_words`].
pub const LAST_WORDS_TAIL: usize = 20;
/// The longest [`ContainerInfo::last_words`], in bytes (cut at a character boundary).
pub const LAST_WORDS_MAX: usize = 600;

/// The last line of `stderr` (the tail of a container's log) that berth's images wrote,
/// shortened to [`LAST_WORDS_MAX`] bytes.
pub fn last_words(stderr: &str) -> Option<String> {
    let line = stderr
        .lines()
        .map(str::trim)
        .rfind(|l| l.starts_with("[berth-"))?;
    let mut end = line.len().min(LAST_WORDS_MAX);
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    Some(line[..end].to_string())
}

#[derive(Debug, Clone)]
pub struct ExecOutput {
    pub exit_code: i64,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostResources {
    pub cpus: u32,
    pub memory_bytes: u64,
    /// Identifies the engine: agents that report the same id share its networks, so their
    /// instances reach each other by alias. See [`ENGINE_ID_VOLUME`].
    pub engine_id: String,
}

/// A volume whose label names its engine. Docker's own `info.ID` comes from
/// `/etc/docker/key.json`, which engines started from one machine image or one config
/// directory share, so it cannot tell two engines apart; a volume lives in the engine's own
/// data root. The first agent to find none creates it with a random id, and every agent of
/// that engine then reads the same id back.
pub const ENGINE_ID_VOLUME: &str = "berth-engine-id";
const ENGINE_ID_LABEL: &str = "berth.engine-id";

/// One container event from the engine.
#[derive(Debug, Clone)]
pub struct ContainerEvent {
    pub container_id: String,
    pub action: String,
    pub attributes: HashMap<String, String>,
}

pub type EventStream = Pin<Box<dyn Stream<Item = RuntimeResult<ContainerEvent>> + Send>>;

/// What the agent needs from a container engine.
pub trait ContainerRuntime: Send + Sync + 'static {
    fn ping(&self) -> impl Future<Output = RuntimeResult<()>> + Send;
    fn host_resources(&self) -> impl Future<Output = RuntimeResult<HostResources>> + Send;
    /// Every container (running or not) carrying all of the given labels.
    fn list(
        &self,
        labels: &[(&str, &str)],
    ) -> impl Future<Output = RuntimeResult<Vec<ContainerInfo>>> + Send;
    /// None when there is no such container.
    fn inspect(
        &self,
        name_or_id: &str,
    ) -> impl Future<Output = RuntimeResult<Option<ContainerInfo>>> + Send;
    fn create(
        &self,
        config: &ContainerConfig,
    ) -> impl Future<Output = RuntimeResult<String>> + Send;
    fn start(&self, id: &str) -> impl Future<Output = RuntimeResult<()>> + Send;
    /// `timeout` None: the container's own stop timeout.
    fn stop(
        &self,
        id: &str,
        timeout: Option<Duration>,
    ) -> impl Future<Output = RuntimeResult<()>> + Send;
    /// Force-removes the container and its anonymous volumes; a missing container is not an error.
    fn remove(&self, id: &str) -> impl Future<Output = RuntimeResult<()>> + Send;
    fn update_resources(
        &self,
        id: &str,
        nano_cpus: i64,
        memory_bytes: i64,
    ) -> impl Future<Output = RuntimeResult<()>> + Send;
    fn ensure_network(
        &self,
        name: &str,
        labels: &BTreeMap<String, String>,
    ) -> impl Future<Output = RuntimeResult<()>> + Send;
    /// Removes the network if it is one the agents made (labelled `berth.managed`) and no
    /// container is attached to it any more; true when it was removed.
    fn remove_network_if_unused(
        &self,
        name: &str,
    ) -> impl Future<Output = RuntimeResult<bool>> + Send;
    fn exec(
        &self,
        id: &str,
        argv: &[String],
        stdin: &[u8],
        user: Option<&str>,
        timeout: Duration,
    ) -> impl Future<Output = RuntimeResult<ExecOutput>> + Send;
    /// Container events for containers carrying the label, from `since` (unix seconds) on.
    fn events(&self, label: (&str, &str), since: i64) -> EventStream;
    /// Whether the engine has `image` (a reference such as `registry:5000/berth/postgres:15`).
    /// The default, for engines that do not say, is yes: creating the container then tells.
    fn image_present(&self, image: &str) -> impl Future<Output = RuntimeResult<bool>> + Send {
        let _ = image;
        async { Ok(true) }
    }
    /// Pulls `image` from the registry its reference names, returning once it is on the engine.
    fn pull_image(&self, image: &str) -> impl Future<Output = RuntimeResult<()>> + Send {
        let image = image.to_string();
        async move {
            Err(RuntimeError::Other(format!(
                "this engine cannot pull {image}"
            )))
        }
    }
}

mod convert;
mod docker;
pub use docker::DockerRuntime;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_words_are_the_last_line_a_berth_image_wrote() {
        let log = "[berth-postgres] starting Patroni\n\
                   2026-12-01 10:00:00 FATAL: password=hunter2 in some program's line\n\
                   [berth-postgres] error: this node's restore failed: no backup set\n\
                   trailing noise\n";
        assert_eq!(
            last_words(log).as_deref(),
            Some("[berth-postgres] error: this node's restore failed: no backup set")
        );
        assert_eq!(last_words("only other programs\n"), None);
        let long = format!("[berth-x] {}", "é".repeat(LAST_WORDS_MAX));
        let cut = last_words(&long).unwrap();
        assert!(cut.len() <= LAST_WORDS_MAX && cut.starts_with("[berth-x] é"));
    }
}
