//! [`ContainerRuntime`] over the Docker Engine API (bollard): requests, and the engine's
//! answers turned into the runtime's own types.

use std::collections::{BTreeMap, HashMap};
use std::sync::RwLock;
use std::time::Duration;

use bollard::Docker;
use bollard::exec::{StartExecOptions, StartExecResults};
use bollard::models::{
    ContainerCreateBody, ContainerUpdateBody, EndpointSettings, EventMessage, EventMessageTypeEnum,
    ExecConfig, HealthConfig as DockerHealthConfig, HostConfig, Mount as DockerMount, MountType,
    NetworkCreateRequest, NetworkingConfig, PortBinding as DockerPortBinding, RestartPolicy,
    RestartPolicyNameEnum,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, EventsOptionsBuilder, InspectContainerOptions,
    InspectNetworkOptions, ListContainersOptionsBuilder, LogsOptionsBuilder,
    RemoveContainerOptionsBuilder, StartContainerOptions, StopContainerOptionsBuilder,
};
use futures::StreamExt;
use tokio::io::AsyncWriteExt;

use super::convert::container_info;
use super::*;

/// The engine API version this agent is written against. bollard 0.21 defaults to a newer one than the
/// engines we run on, so the client version is negotiated down at start.
const FALLBACK_API_VERSION: &bollard::ClientVersion = &bollard::ClientVersion {
    major_version: 1,
    minor_version: 41,
};

/// [`ContainerRuntime`] over the Docker Engine API.
pub struct DockerRuntime {
    // Replaced once negotiation succeeds; the engine may be down when the agent starts.
    docker: RwLock<Docker>,
    negotiated: std::sync::atomic::AtomicBool,
    /// Read once: every heartbeat asks for the host's resources.
    engine_id: tokio::sync::OnceCell<String>,
}

impl DockerRuntime {
    /// [`ContainerInfo::last_words`] of an exited container; None when its log cannot be
    /// read (the reason then says only the exit code).
    async fn last_words(&self, id: &str) -> Option<String> {
        let options = LogsOptionsBuilder::new()
            .stderr(true)
            .tail(&LAST_WORDS_TAIL.to_string())
            .build();
        let mut stream = self.client().logs(id, Some(options));
        let mut stderr = String::new();
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(out) => stderr.push_str(&out.to_string()),
                Err(e) => {
                    tracing::debug!(container_id = id, error = %e, "the exited container's log could not be read");
                    return None;
                }
            }
        }
        last_words(&stderr)
    }

    /// Engine API 1.41 does not refuse a second network of the same name, so two agents of
    /// one engine creating a database's network at the same moment can both succeed, and the
    /// name then resolves to neither. Every agent keeps the oldest (ties by id) and removes
    /// the others, so they all agree without talking to each other.
    async fn settle_duplicate_networks(&self, name: &str) -> RuntimeResult<()> {
        let docker = self.client();
        let filters = HashMap::from([("name".to_string(), vec![name.to_string()])]);
        let options = bollard::query_parameters::ListNetworksOptions {
            filters: Some(filters),
        };
        let mut same: Vec<(String, String)> = docker
            .list_networks(Some(options))
            .await?
            .into_iter()
            .filter(|n| n.name.as_deref() == Some(name))
            .map(|n| (n.created.unwrap_or_default(), n.id.unwrap_or_default()))
            .collect();
        if same.len() > 1 {
            same.sort();
            for (_, id) in &same[1..] {
                tracing::info!(network = name, id = %id, "removing a duplicate network");
                // Already removed by another agent, or briefly in use: either way not ours to keep.
                let _ = docker.remove_network(id).await;
            }
        }
        Ok(())
    }

    /// Connects (lazily) to `docker_host`, or to the local default socket / DOCKER_HOST when None.
    pub fn connect(docker_host: Option<&str>) -> RuntimeResult<Self> {
        let docker = match docker_host {
            Some(host) if host.starts_with("unix://") => {
                Docker::connect_with_unix(host, 120, FALLBACK_API_VERSION)?
            }
            Some(host) if host.starts_with('/') => {
                Docker::connect_with_unix(host, 120, FALLBACK_API_VERSION)?
            }
            Some(host) => Docker::connect_with_http(host, 120, FALLBACK_API_VERSION)?,
            None => Docker::connect_with_local_defaults()?,
        };
        Ok(Self {
            docker: RwLock::new(docker),
            negotiated: std::sync::atomic::AtomicBool::new(false),
            engine_id: tokio::sync::OnceCell::new(),
        })
    }

    /// The engine's identity (see [`ENGINE_ID_VOLUME`]), created on first use.
    async fn engine_id(&self) -> RuntimeResult<String> {
        self.engine_id
            .get_or_try_init(|| self.read_or_create_engine_id())
            .await
            .cloned()
    }

    async fn read_or_create_engine_id(&self) -> RuntimeResult<String> {
        let docker = self.client();
        let read = |v: bollard::models::Volume| v.labels.get(ENGINE_ID_LABEL).cloned();
        match docker.inspect_volume(ENGINE_ID_VOLUME).await {
            Ok(v) => {
                if let Some(id) = read(v) {
                    return Ok(id);
                }
            }
            Err(e) => {
                let e = RuntimeError::from(e);
                if !matches!(e, RuntimeError::NotFound(_)) {
                    return Err(e);
                }
            }
        }
        let request = bollard::models::VolumeCreateRequest {
            name: Some(ENGINE_ID_VOLUME.to_string()),
            labels: Some(HashMap::from([(
                ENGINE_ID_LABEL.to_string(),
                uuid::Uuid::new_v4().to_string(),
            )])),
            ..Default::default()
        };
        // Creating a volume that exists returns the existing one, so two agents racing here
        // both read back the winner's label.
        let created = docker.create_volume(request).await?;
        match read(created) {
            Some(id) => Ok(id),
            None => read(docker.inspect_volume(ENGINE_ID_VOLUME).await?).ok_or_else(|| {
                RuntimeError::Other(format!(
                    "volume {ENGINE_ID_VOLUME} has no {ENGINE_ID_LABEL} label"
                ))
            }),
        }
    }

    /// Negotiates the API version with the engine; harmless to call again once it succeeded.
    pub async fn negotiate(&self) -> RuntimeResult<()> {
        use std::sync::atomic::Ordering;
        if self.negotiated.load(Ordering::Acquire) {
            return Ok(());
        }
        let docker = self.client();
        let negotiated = docker.negotiate_version().await?;
        tracing::info!(api_version = %negotiated.client_version(), "negotiated engine API version");
        *self.docker.write().unwrap_or_else(|e| e.into_inner()) = negotiated;
        self.negotiated.store(true, Ordering::Release);
        Ok(())
    }

    /// The engine client this runtime uses (at the negotiated API version once connected), for
    /// engine calls the runtime has no method for.
    pub fn client(&self) -> Docker {
        self.docker
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

fn millis_to_nanos(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

/// No swap beyond the memory limit: a database that swaps is slower than one that is told it is out of memory,
/// and keeping MemorySwap equal to Memory means a later in-place resize never trips over the engine's
/// "memory must be below memory+swap" check.
fn memory_swap_for(memory_bytes: i64) -> Option<i64> {
    (memory_bytes > 0).then_some(memory_bytes)
}

impl ContainerRuntime for DockerRuntime {
    async fn ping(&self) -> RuntimeResult<()> {
        self.negotiate().await?;
        self.client().ping().await?;
        Ok(())
    }

    async fn host_resources(&self) -> RuntimeResult<HostResources> {
        let info = self.client().info().await?;
        Ok(HostResources {
            cpus: info.ncpu.unwrap_or(0).try_into().unwrap_or(0),
            memory_bytes: info.mem_total.unwrap_or(0).try_into().unwrap_or(0),
            engine_id: self.engine_id().await?,
        })
    }

    async fn list(&self, labels: &[(&str, &str)]) -> RuntimeResult<Vec<ContainerInfo>> {
        let filters: HashMap<&str, Vec<String>> = HashMap::from([(
            "label",
            labels.iter().map(|(k, v)| format!("{k}={v}")).collect(),
        )]);
        let options = ListContainersOptionsBuilder::new()
            .all(true)
            .filters(&filters)
            .build();
        let summaries = self.client().list_containers(Some(options)).await?;
        let mut out = Vec::with_capacity(summaries.len());
        for s in summaries {
            let Some(id) = s.id else { continue };
            // A container can vanish between list and inspect; that is not an error here.
            if let Some(info) = self.inspect(&id).await? {
                out.push(info);
            }
        }
        Ok(out)
    }

    async fn inspect(&self, name_or_id: &str) -> RuntimeResult<Option<ContainerInfo>> {
        match self
            .client()
            .inspect_container(name_or_id, None::<InspectContainerOptions>)
            .await
        {
            Ok(resp) => {
                let mut info = container_info(resp);
                if matches!(info.status, ContainerStatus::Exited | ContainerStatus::Dead)
                    && info.exit_code != 0
                {
                    info.last_words = self.last_words(&info.id).await;
                }
                Ok(Some(info))
            }
            Err(e) => match RuntimeError::from(e) {
                RuntimeError::NotFound(_) => Ok(None),
                other => Err(other),
            },
        }
    }

    async fn create(&self, config: &ContainerConfig) -> RuntimeResult<String> {
        let mut port_bindings = HashMap::new();
        let mut exposed = Vec::new();
        for p in &config.ports {
            let key = format!("{}/tcp", p.container_port);
            exposed.push(key.clone());
            port_bindings.insert(
                key,
                Some(vec![DockerPortBinding {
                    host_ip: None,
                    // An empty host port asks the engine to pick a free one.
                    host_port: Some(p.host_port.map(|p| p.to_string()).unwrap_or_default()),
                }]),
            );
        }
        let mounts = config
            .mounts
            .iter()
            .map(|m| DockerMount {
                source: Some(m.source.clone()),
                target: Some(m.target.clone()),
                typ: Some(MountType::BIND),
                read_only: Some(m.read_only),
                ..Default::default()
            })
            .collect();
        let healthcheck = config.health_check.as_ref().map(|h| DockerHealthConfig {
            test: Some(h.test.clone()),
            interval: Some(millis_to_nanos(h.interval)),
            timeout: Some(millis_to_nanos(h.timeout)),
            retries: Some(i64::from(h.retries)),
            start_period: Some(millis_to_nanos(h.start_period)),
            start_interval: None,
        });
        let networking_config = config
            .network
            .as_ref()
            .map(|(name, aliases)| NetworkingConfig {
                endpoints_config: Some(HashMap::from([(
                    name.clone(),
                    EndpointSettings {
                        aliases: Some(aliases.clone()),
                        ..Default::default()
                    },
                )])),
            });
        let body = ContainerCreateBody {
            image: Some(config.image.clone()),
            cmd: (!config.command.is_empty()).then(|| config.command.clone()),
            env: Some(config.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
            labels: Some(config.labels.clone().into_iter().collect()),
            exposed_ports: Some(exposed),
            healthcheck,
            user: config.user.clone(),
            stop_timeout: config.stop_timeout_seconds.map(i64::from),
            networking_config,
            host_config: Some(HostConfig {
                mounts: Some(mounts),
                port_bindings: Some(port_bindings),
                network_mode: config.network.as_ref().map(|(name, _)| name.clone()),
                restart_policy: Some(RestartPolicy {
                    name: Some(RestartPolicyNameEnum::NO),
                    maximum_retry_count: None,
                }),
                nano_cpus: (config.nano_cpus > 0).then_some(config.nano_cpus),
                memory: (config.memory_bytes > 0).then_some(config.memory_bytes),
                memory_swap: memory_swap_for(config.memory_bytes),
                ..Default::default()
            }),
            ..Default::default()
        };
        let options = CreateContainerOptionsBuilder::new()
            .name(&config.name)
            .build();
        let resp = self.client().create_container(Some(options), body).await?;
        Ok(resp.id)
    }

    async fn start(&self, id: &str) -> RuntimeResult<()> {
        self.client()
            .start_container(id, None::<StartContainerOptions>)
            .await?;
        Ok(())
    }

    async fn stop(&self, id: &str, timeout: Option<Duration>) -> RuntimeResult<()> {
        let options = timeout.map(|t| {
            StopContainerOptionsBuilder::new()
                .t(i32::try_from(t.as_secs()).unwrap_or(i32::MAX))
                .build()
        });
        match self.client().stop_container(id, options).await {
            Ok(()) => Ok(()),
            // 304: already stopped.
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 304, ..
            }) => Ok(()),
            Err(e) => match RuntimeError::from(e) {
                RuntimeError::NotFound(_) => Ok(()),
                other => Err(other),
            },
        }
    }

    async fn remove(&self, id: &str) -> RuntimeResult<()> {
        let options = RemoveContainerOptionsBuilder::new()
            .force(true)
            .v(true)
            .build();
        match self.client().remove_container(id, Some(options)).await {
            Ok(()) => Ok(()),
            Err(e) => match RuntimeError::from(e) {
                RuntimeError::NotFound(_) => Ok(()),
                // "removal already in progress": someone else is removing it, which is what we want.
                RuntimeError::Conflict(m) if m.contains("already in progress") => Ok(()),
                other => Err(other),
            },
        }
    }

    async fn update_resources(
        &self,
        id: &str,
        nano_cpus: i64,
        memory_bytes: i64,
    ) -> RuntimeResult<()> {
        let body = ContainerUpdateBody {
            nano_cpus: (nano_cpus > 0).then_some(nano_cpus),
            memory: (memory_bytes > 0).then_some(memory_bytes),
            memory_swap: memory_swap_for(memory_bytes),
            ..Default::default()
        };
        self.client().update_container(id, body).await?;
        Ok(())
    }

    async fn ensure_network(
        &self,
        name: &str,
        labels: &BTreeMap<String, String>,
    ) -> RuntimeResult<()> {
        let docker = self.client();
        let exists = match docker
            .inspect_network(name, None::<InspectNetworkOptions>)
            .await
        {
            Ok(_) => true,
            Err(e) => match RuntimeError::from(e) {
                RuntimeError::NotFound(_) => false,
                // "ambiguous": two agents of one engine created it at once; settled below.
                other if other.to_string().contains("ambiguous") => true,
                other => return Err(other),
            },
        };
        if !exists {
            let request = NetworkCreateRequest {
                name: name.to_string(),
                driver: Some("bridge".to_string()),
                labels: Some(labels.clone().into_iter().collect()),
                ..Default::default()
            };
            if let Err(e) = docker.create_network(request).await {
                match RuntimeError::from(e) {
                    RuntimeError::Conflict(_) => {}
                    other => return Err(other),
                }
            }
        }
        self.settle_duplicate_networks(name).await
    }

    async fn remove_network_if_unused(&self, name: &str) -> RuntimeResult<bool> {
        let docker = self.client();
        let network = match docker
            .inspect_network(name, None::<InspectNetworkOptions>)
            .await
        {
            Ok(n) => n,
            Err(e) => match RuntimeError::from(e) {
                RuntimeError::NotFound(_) => return Ok(false),
                other => return Err(other),
            },
        };
        let managed = network
            .labels
            .as_ref()
            .and_then(|l| l.get(crate::instance::LABEL_MANAGED))
            .is_some_and(|v| v == "true");
        let in_use = network.containers.as_ref().is_some_and(|c| !c.is_empty());
        if !managed || in_use {
            return Ok(false);
        }
        match docker.remove_network(name).await {
            Ok(()) => Ok(true),
            // Gone already (another agent of this engine), or a container joined it meanwhile:
            // either way there is nothing to remove.
            Err(e) => match RuntimeError::from(e) {
                RuntimeError::NotFound(_) | RuntimeError::Conflict(_) => Ok(false),
                other if other.to_string().contains("active endpoints") => Ok(false),
                other => Err(other),
            },
        }
    }

    async fn exec(
        &self,
        id: &str,
        argv: &[String],
        stdin: &[u8],
        user: Option<&str>,
        timeout: Duration,
    ) -> RuntimeResult<ExecOutput> {
        let docker = self.client();
        let exec = docker
            .create_exec(
                id,
                ExecConfig {
                    attach_stdin: Some(true),
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    tty: Some(false),
                    cmd: Some(argv.to_vec()),
                    user: user.map(str::to_string),
                    ..Default::default()
                },
            )
            .await?;
        let run = async {
            let started = docker
                .start_exec(
                    &exec.id,
                    Some(StartExecOptions {
                        detach: false,
                        tty: false,
                        output_capacity: None,
                    }),
                )
                .await?;
            let StartExecResults::Attached {
                mut output,
                mut input,
            } = started
            else {
                return Err(RuntimeError::Other("exec started detached".into()));
            };
            let stdin = stdin.to_vec();
            // Feed stdin concurrently with reading output so a command that writes a lot before reading all of
            // its input cannot deadlock against us.
            let writer = async move {
                input.write_all(&stdin).await?;
                input.shutdown().await?;
                Ok::<_, std::io::Error>(())
            };
            let reader = async {
                let mut stdout = Vec::new();
                let mut stderr = Vec::new();
                while let Some(chunk) = output.next().await {
                    match chunk? {
                        bollard::container::LogOutput::StdOut { message } => {
                            stdout.extend_from_slice(&message)
                        }
                        bollard::container::LogOutput::StdErr { message } => {
                            stderr.extend_from_slice(&message)
                        }
                        _ => {}
                    }
                }
                Ok::<_, RuntimeError>((stdout, stderr))
            };
            let (written, read) = tokio::join!(writer, reader);
            let (stdout, stderr) = read?;
            if let Err(e) = written {
                // A command that exits without reading its stdin closes the pipe; its output still counts.
                tracing::debug!(error = %e, "exec stdin not fully written");
            }
            let inspect = docker.inspect_exec(&exec.id).await?;
            Ok(ExecOutput {
                exit_code: inspect.exit_code.unwrap_or(-1),
                stdout,
                stderr,
            })
        };
        tokio::time::timeout(timeout, run)
            .await
            .map_err(|_| RuntimeError::Timeout(timeout))?
    }

    async fn image_present(&self, image: &str) -> RuntimeResult<bool> {
        match self.client().inspect_image(image).await {
            Ok(_) => Ok(true),
            Err(e) => match RuntimeError::from(e) {
                RuntimeError::NotFound(_) => Ok(false),
                other => Err(other),
            },
        }
    }

    async fn pull_image(&self, image: &str) -> RuntimeResult<()> {
        // The engine splits a reference into repository and tag itself when given it whole
        // as fromImage; a digest reference works the same way.
        let options = bollard::query_parameters::CreateImageOptions {
            from_image: Some(image.to_string()),
            ..Default::default()
        };
        let mut progress = self.client().create_image(Some(options), None, None);
        while let Some(step) = progress.next().await {
            let step = step?;
            if let Some(detail) = step.error_detail.and_then(|d| d.message) {
                return Err(RuntimeError::Other(detail));
            }
        }
        Ok(())
    }

    fn events(&self, label: (&str, &str), since: i64) -> EventStream {
        let filters: HashMap<&str, Vec<String>> = HashMap::from([
            ("type", vec!["container".to_string()]),
            ("label", vec![format!("{}={}", label.0, label.1)]),
        ]);
        let options = EventsOptionsBuilder::new()
            .since(&since.to_string())
            .filters(&filters)
            .build();
        let stream = self
            .client()
            .events(Some(options))
            .filter_map(|item| async move {
                match item {
                    Ok(EventMessage {
                        typ: Some(EventMessageTypeEnum::CONTAINER),
                        action,
                        actor,
                        ..
                    }) => {
                        let actor = actor.unwrap_or_default();
                        Some(Ok(ContainerEvent {
                            container_id: actor.id.unwrap_or_default(),
                            action: action.unwrap_or_default(),
                            attributes: actor.attributes.unwrap_or_default(),
                        }))
                    }
                    Ok(_) => None,
                    Err(e) => Some(Err(RuntimeError::from(e))),
                }
            });
        Box::pin(stream)
    }
}
