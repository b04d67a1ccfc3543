//! The agent's operations (apply, remove, resize, exec, host info), independent of gRPC plumbing.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agent_proto::v1::{ApplyAction, ApplyResult, HostInfo, InstanceSpec, RemoveResult};

use crate::instance::{
    self, InstanceDir, LABEL_HOST_ID, LABEL_MANAGED, LABEL_SPEC_HASH, SpecError, StoredSpec,
    container_name, port_names,
};
use crate::ports_file;
use crate::runtime::{ContainerInfo, ContainerRuntime, ContainerStatus, ExecOutput, HealthStatus};
use crate::state::{StateHub, exit_reason, published_ports, unhealthy_reason};

mod ports;
mod progress;
mod ready;

pub use progress::{OpError, Progress};

pub struct Ops<R> {
    runtime: Arc<R>,
    hub: Arc<StateHub<R>>,
    host_id: String,
    data_dir: PathBuf,
    addresses: Vec<String>,
    // One operation at a time per instance: a remove racing an apply must not leave a container behind.
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// The engine cannot lift a limit in place (a zero in its update API means "leave as is"), so going back to
/// "unlimited" needs a new container.
fn resizable_in_place(current: &ContainerInfo, nano_cpus: i64, memory_bytes: i64) -> bool {
    let lifts_cpu_limit = current.nano_cpus > 0 && nano_cpus == 0;
    let lifts_memory_limit = current.memory_bytes > 0 && memory_bytes == 0;
    !lifts_cpu_limit && !lifts_memory_limit
}

impl<R: ContainerRuntime> Ops<R> {
    pub fn new(
        runtime: Arc<R>,
        hub: Arc<StateHub<R>>,
        host_id: String,
        data_dir: PathBuf,
        addresses: Vec<String>,
    ) -> Self {
        Self {
            runtime,
            hub,
            host_id,
            data_dir,
            addresses,
            locks: Mutex::new(HashMap::new()),
        }
    }

    pub fn host_id(&self) -> &str {
        &self.host_id
    }

    async fn lock_instance(&self, instance_id: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
            locks.entry(instance_id.to_string()).or_default().clone()
        };
        lock.lock_owned().await
    }

    /// Our container for the instance, if any. A container of that name owned by another host id is not ours
    /// and is treated as absent (the create will then fail loudly on the name clash).
    async fn our_container(&self, instance_id: &str) -> Result<Option<ContainerInfo>, OpError> {
        let info = self
            .runtime
            .inspect(&container_name(&self.host_id, instance_id))
            .await?;
        Ok(info.filter(|i| i.labels.get(LABEL_HOST_ID) == Some(&self.host_id)))
    }

    fn result(
        &self,
        info: &ContainerInfo,
        action: ApplyAction,
        resize_applied: bool,
    ) -> ApplyResult {
        ApplyResult {
            container_id: info.id.clone(),
            image: info.image.clone(),
            ports: published_ports(info, &port_names(&info.labels)),
            action: action as i32,
            resize_applied,
            spec_hash: info
                .labels
                .get(LABEL_SPEC_HASH)
                .cloned()
                .unwrap_or_default(),
            sequence: self.hub.sequence(),
        }
    }

    pub async fn apply(
        &self,
        spec: InstanceSpec,
        progress: &Progress,
    ) -> Result<ApplyResult, OpError> {
        instance::validate(&spec)?;
        let hash = instance::spec_hash(&spec);
        let _guard = self.lock_instance(&spec.instance_id).await;
        let dir = InstanceDir::new(&self.data_dir, &spec.instance_id);
        progress
            .log(
                "applying instance",
                &[("spec_hash", hash.clone()), ("image", spec.image.clone())],
            )
            .await;

        let existing = self.our_container(&spec.instance_id).await?;
        let mut replace_reason = None;
        if let Some(current) = &existing {
            let same_spec = current.labels.get(LABEL_SPEC_HASH) == Some(&hash);
            let running = current.status == ContainerStatus::Running;
            if !same_spec {
                replace_reason = Some("spec changed".to_string());
            } else if !running {
                replace_reason = Some(format!(
                    "container is not running ({})",
                    exit_reason(current)
                ));
            } else if current.health == HealthStatus::Unhealthy {
                replace_reason = Some(unhealthy_reason(current));
            } else if current.nano_cpus == spec.nano_cpus
                && current.memory_bytes == spec.memory_bytes
            {
                self.store_spec(&dir, &spec, &hash).await?;
                progress
                    .log(
                        "container already matches the spec",
                        &[("container_id", current.id.clone())],
                    )
                    .await;
                if current.health == HealthStatus::Starting {
                    // Unchanged but not ready yet (e.g. a retried apply): the caller still wants "ready" to mean ready.
                    let (_, changes) = self.hub.subscribe();
                    let info = self
                        .wait_ready(&spec, &current.id, changes, progress)
                        .await?;
                    return Ok(self.result(&info, ApplyAction::Unchanged, false));
                }
                return Ok(self.result(current, ApplyAction::Unchanged, false));
            } else if resizable_in_place(current, spec.nano_cpus, spec.memory_bytes) {
                progress
                    .log(
                        "changing cpu and memory limits in place",
                        &[
                            ("nano_cpus", spec.nano_cpus.to_string()),
                            ("memory_bytes", spec.memory_bytes.to_string()),
                        ],
                    )
                    .await;
                self.runtime
                    .update_resources(&current.id, spec.nano_cpus, spec.memory_bytes)
                    .await?;
                self.store_spec(&dir, &spec, &hash).await?;
                let info = self
                    .our_container(&spec.instance_id)
                    .await?
                    .ok_or_else(|| OpError::NotFound(spec.instance_id.clone()))?;
                self.refresh_quietly(&spec.instance_id).await;
                return Ok(self.result(&info, ApplyAction::Resized, true));
            } else {
                replace_reason =
                    Some("removing a cpu or memory limit needs a new container".to_string());
            }
        }

        // Before anything is replaced: a missing image must not cost the running container.
        self.ensure_image(&spec, progress).await?;
        progress
            .log(
                "writing config files",
                &[("count", spec.files.len().to_string())],
            )
            .await;
        // Files are fsynced one by one and may be given to another user recursively: off
        // the async threads, which also carry every other operation and the heartbeats.
        let data = {
            let (dir, spec) = (dir.clone(), spec.clone());
            crate::blocking::run(move || {
                dir.ensure()?;
                dir.write_config(&spec)?;
                spec.data_mount_path
                    .is_some()
                    .then(|| dir.ensure_data_dir(&spec.user))
                    .transpose()
            })
            .await?
        };
        if let Some(data) = data {
            progress
                .log(
                    "data directory ready",
                    &[("path", data.display().to_string())],
                )
                .await;
        }
        let network = spec
            .network
            .as_ref()
            .map(|n| n.name.clone())
            .filter(|n| !n.is_empty());
        let managed = BTreeMap::from([(LABEL_MANAGED.to_string(), "true".to_string())]);
        if let Some(net) = &network {
            self.runtime.ensure_network(net, &managed).await?;
            progress
                .log("network ready", &[("network", net.clone())])
                .await;
        }
        let action = match (&existing, &replace_reason) {
            (Some(current), Some(reason)) => {
                progress
                    .log(
                        "replacing container",
                        &[
                            ("container_id", current.id.clone()),
                            ("reason", reason.clone()),
                        ],
                    )
                    .await;
                self.runtime.stop(&current.id, None).await?;
                self.runtime.remove(&current.id).await?;
                ApplyAction::Recreated
            }
            _ => ApplyAction::Created,
        };

        let mut chosen = {
            let dir = dir.clone();
            crate::blocking::run(move || dir.read_ports()).await?
        };
        let ports::Started { id, told, changes } = self
            .create_and_start(
                &spec,
                &hash,
                &dir,
                &mut chosen,
                network.as_deref(),
                &managed,
                progress,
            )
            .await?;
        progress
            .log("container started", &[("container_id", id.clone())])
            .await;

        let info = self
            .runtime
            .inspect(&id)
            .await?
            .ok_or_else(|| OpError::NotFound(spec.instance_id.clone()))?;
        if self.remember_chosen_ports(&spec, &info, &mut chosen) {
            {
                let (dir, chosen) = (dir.clone(), chosen.clone());
                crate::blocking::run(move || dir.write_ports(&chosen)).await?;
            }
            let list: Vec<String> = chosen.0.iter().map(|(k, v)| format!("{k}={v}")).collect();
            progress
                .log("host ports chosen", &[("ports", list.join(","))])
                .await;
        }
        if ports_file::publishes_ports(&spec) {
            let ports = ports_file::from_engine(&spec, &info.ports);
            if told.as_ref() != Some(&ports) {
                let runtime = dir.runtime_dir();
                let written = ports.clone();
                crate::blocking::run(move || ports_file::write(&runtime, &written)).await?;
                let list: Vec<String> = ports.iter().map(|(k, v)| format!("{k}={v}")).collect();
                progress
                    .log(
                        "published ports written for the container",
                        &[("ports", list.join(","))],
                    )
                    .await;
            }
        }
        self.refresh_quietly(&spec.instance_id).await;
        let info = self.wait_ready(&spec, &id, changes, progress).await?;
        progress
            .log("instance ready", &[("container_id", id.clone())])
            .await;
        Ok(self.result(&info, action, false))
    }

    /// Makes sure the engine has the spec's image, pulling it if the pull policy allows.
    async fn ensure_image(&self, spec: &InstanceSpec, progress: &Progress) -> Result<(), OpError> {
        if self.runtime.image_present(&spec.image).await? {
            return Ok(());
        }
        let image = spec.image.clone();
        if spec.pull_policy() != agent_proto::v1::ImagePullPolicy::IfNotPresent {
            return Err(OpError::ImageMissing { image });
        }
        progress
            .log("pulling image", &[("image", image.clone())])
            .await;
        match self.runtime.pull_image(&image).await {
            Ok(()) => {
                progress.log("image pulled", &[("image", image)]).await;
                Ok(())
            }
            Err(e) => Err(OpError::ImagePull {
                image,
                reason: e.to_string(),
            }),
        }
    }

    async fn store_spec(
        &self,
        dir: &InstanceDir,
        spec: &InstanceSpec,
        hash: &str,
    ) -> std::io::Result<()> {
        let stored = StoredSpec {
            instance_id: spec.instance_id.clone(),
            spec_hash: hash.to_string(),
            labels: instance::container_labels(&self.host_id, spec, hash),
        };
        let dir = dir.clone();
        crate::blocking::run(move || {
            dir.ensure()?;
            dir.write_spec(&stored)
        })
        .await
    }

    async fn refresh_quietly(&self, instance_id: &str) {
        if let Err(e) = self.hub.refresh(instance_id).await {
            tracing::warn!(instance_id, error = %e, "cannot refresh instance state");
        }
    }

    /// Waits, driven by the state watcher's events, until the container is healthy (or merely running when it
    /// has no health check); a container that exits or turns unhealthy ends the wait with the reason.
    ///
    pub async fn remove(
        &self,
        instance_id: &str,
        delete_data: bool,
        progress: &Progress,
    ) -> Result<RemoveResult, OpError> {
        instance::validate_instance_id(instance_id)?;
        let _guard = self.lock_instance(instance_id).await;
        let mut container_removed = false;
        if let Some(current) = self.our_container(instance_id).await? {
            progress
                .log(
                    "stopping container",
                    &[("container_id", current.id.clone())],
                )
                .await;
            self.runtime.stop(&current.id, None).await?;
            self.runtime.remove(&current.id).await?;
            container_removed = true;
            progress
                .log("container removed", &[("container_id", current.id.clone())])
                .await;
            // A database's network outlives its last container otherwise, and the engine's
            // address pools hold only about 30 bridge networks: a host that saw that many
            // databases come and go could create no more.
            if let Some(network) = &current.network {
                match self.runtime.remove_network_if_unused(network).await {
                    Ok(true) => {
                        progress
                            .log("network removed", &[("network", network.clone())])
                            .await
                    }
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(network, error = %e, "cannot remove an unused network")
                    }
                }
            }
        } else {
            progress.log("no container to remove", &[]).await;
        }
        let dir = InstanceDir::new(&self.data_dir, instance_id);
        // A data directory can be large: deleting it must not hold up the async threads.
        let data_deleted = {
            let dir = dir.clone();
            crate::blocking::run(move || dir.remove(delete_data)).await?
        };
        progress
            .log(
                if delete_data {
                    "instance directory deleted"
                } else {
                    "config deleted, data kept"
                },
                &[("path", dir.root().display().to_string())],
            )
            .await;
        self.hub.forget(instance_id);
        Ok(RemoveResult {
            container_removed,
            data_deleted,
        })
    }

    pub async fn resize(
        &self,
        instance_id: &str,
        nano_cpus: i64,
        memory_bytes: i64,
    ) -> Result<bool, OpError> {
        instance::validate_instance_id(instance_id)?;
        if nano_cpus < 0 || memory_bytes < 0 {
            return Err(SpecError::Invalid {
                field: "nano_cpus/memory_bytes".into(),
                message: "must not be negative".into(),
            }
            .into());
        }
        let _guard = self.lock_instance(instance_id).await;
        let current = self
            .our_container(instance_id)
            .await?
            .ok_or_else(|| OpError::NotFound(instance_id.into()))?;
        if !resizable_in_place(&current, nano_cpus, memory_bytes) {
            return Ok(false);
        }
        self.runtime
            .update_resources(&current.id, nano_cpus, memory_bytes)
            .await?;
        tracing::info!(instance_id, nano_cpus, memory_bytes, "resized in place");
        self.refresh_quietly(instance_id).await;
        Ok(true)
    }

    pub async fn exec(
        &self,
        instance_id: &str,
        argv: &[String],
        stdin: &[u8],
        user: Option<&str>,
        timeout: Duration,
    ) -> Result<ExecOutput, OpError> {
        instance::validate_instance_id(instance_id)?;
        if argv.is_empty() {
            return Err(SpecError::Invalid {
                field: "argv".into(),
                message: "must not be empty".into(),
            }
            .into());
        }
        let current = self
            .our_container(instance_id)
            .await?
            .ok_or_else(|| OpError::NotFound(instance_id.into()))?;
        if current.status != ContainerStatus::Running {
            return Err(OpError::NotRunning(instance_id.into()));
        }
        Ok(self
            .runtime
            .exec(&current.id, argv, stdin, user, timeout)
            .await?)
    }

    pub async fn host_info(&self) -> HostInfo {
        let (docker_ok, docker_error) = match self.runtime.ping().await {
            Ok(()) => (true, String::new()),
            Err(e) => (false, e.to_string()),
        };
        let resources = if docker_ok {
            self.runtime.host_resources().await.ok()
        } else {
            None
        };
        let (cpus, memory_bytes, engine_id) = match resources {
            Some(r) => (r.cpus, r.memory_bytes, r.engine_id),
            None => {
                let (cpus, memory) = local_resources();
                (cpus, memory, String::new())
            }
        };
        HostInfo {
            host_id: self.host_id.clone(),
            cpus,
            memory_bytes,
            agent_version: crate::VERSION.to_string(),
            docker_ok,
            docker_error,
            addresses: self.addresses.clone(),
            engine_id,
        }
    }
}

/// What this machine has, for when the engine cannot tell us.
pub fn local_resources() -> (u32, u64) {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(0);
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0);
    (cpus, memory)
}
