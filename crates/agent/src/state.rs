//! Observed state of this agent's instances, driven by the engine's event stream (no polling), fanned out to
//! every WatchInstances subscriber.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use agent_proto::v1::{
    Health, InstanceEvent, InstanceSnapshot, InstanceState, InstanceStatus, PublishedPort,
    instance_event,
};
use futures::StreamExt;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::instance::{
    InstanceDir, LABEL_HOST_ID, LABEL_INSTANCE_ID, LABEL_SPEC_HASH, container_name, port_names,
    stored_instances,
};
use crate::runtime::{
    ContainerInfo, ContainerRuntime, ContainerStatus, HealthStatus, RuntimeResult,
};

#[derive(Default)]
struct Inner {
    states: BTreeMap<String, InstanceState>,
    /// Containers the engine asked to terminate gracefully (SIGTERM/SIGINT, `docker stop`): their exit is a stop,
    /// not a failure.
    asked_to_stop: HashSet<String>,
}

pub struct StateHub<R> {
    runtime: Arc<R>,
    host_id: String,
    data_dir: PathBuf,
    inner: Mutex<Inner>,
    tx: broadcast::Sender<InstanceEvent>,
    // Flips to true after the first full read of the engine: before that an empty snapshot would be a lie.
    synced: tokio::sync::watch::Sender<bool>,
}

impl<R: ContainerRuntime> StateHub<R> {
    pub fn new(runtime: Arc<R>, host_id: String, data_dir: PathBuf) -> Arc<Self> {
        let (tx, _) = broadcast::channel(1024);
        let (synced, _) = tokio::sync::watch::channel(false);
        Arc::new(Self {
            runtime,
            host_id,
            data_dir,
            inner: Mutex::new(Inner::default()),
            tx,
            synced,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until the engine has been read once, then subscribes.
    pub async fn subscribe_synced(&self) -> (InstanceEvent, broadcast::Receiver<InstanceEvent>) {
        let mut synced = self.synced.subscribe();
        // The sender lives as long as self, so this only returns once synced.
        let _ = synced.wait_for(|s| *s).await;
        self.subscribe()
    }

    /// A snapshot and a receiver for every change after it, taken atomically so nothing falls in between.
    pub fn subscribe(&self) -> (InstanceEvent, broadcast::Receiver<InstanceEvent>) {
        let inner = self.lock();
        let rx = self.tx.subscribe();
        (snapshot_event(&inner.states), rx)
    }

    pub fn snapshot(&self) -> InstanceEvent {
        snapshot_event(&self.lock().states)
    }

    pub fn get(&self, instance_id: &str) -> Option<InstanceState> {
        self.lock().states.get(instance_id).cloned()
    }

    /// Called by RemoveInstance once the instance is gone for good.
    pub fn forget(&self, instance_id: &str) {
        let mut inner = self.lock();
        if inner.states.remove(instance_id).is_some() {
            let _ = self.tx.send(InstanceEvent {
                event: Some(instance_event::Event::RemovedInstanceId(
                    instance_id.to_string(),
                )),
            });
        }
    }

    /// Re-reads one instance from the engine and publishes it if it changed.
    pub async fn refresh(&self, instance_id: &str) -> RuntimeResult<()> {
        let info = self
            .runtime
            .inspect(&container_name(&self.host_id, instance_id))
            .await?;
        let info = info.filter(|i| i.labels.get(LABEL_HOST_ID) == Some(&self.host_id));
        let mut inner = self.lock();
        let new_state = match info {
            Some(info) => Some(state_from_container(
                &info,
                inner.asked_to_stop.contains(&info.id),
            )),
            None => {
                let dir = InstanceDir::new(&self.data_dir, instance_id);
                dir.read_spec()
                    .map(|s| missing_state(instance_id, s.labels, s.spec_hash))
            }
        };
        match new_state {
            Some(state) => {
                if inner.states.get(instance_id) != Some(&state) {
                    inner.states.insert(instance_id.to_string(), state.clone());
                    let _ = self.tx.send(InstanceEvent {
                        event: Some(instance_event::Event::Changed(state)),
                    });
                }
            }
            None => {
                if inner.states.remove(instance_id).is_some() {
                    let _ = self.tx.send(InstanceEvent {
                        event: Some(instance_event::Event::RemovedInstanceId(
                            instance_id.to_string(),
                        )),
                    });
                }
            }
        }
        Ok(())
    }

    /// Rebuilds the whole picture from the engine and the instance directories and publishes it as a snapshot.
    pub async fn resync(&self) -> RuntimeResult<()> {
        let containers = self.runtime.list(&[(LABEL_HOST_ID, &self.host_id)]).await?;
        let stored = stored_instances(&self.data_dir);
        let mut inner = self.lock();
        let mut states = BTreeMap::new();
        for info in &containers {
            let Some(instance_id) = info.labels.get(LABEL_INSTANCE_ID) else {
                continue;
            };
            // Only the canonically named container speaks for the instance.
            if info.name != container_name(&self.host_id, instance_id) {
                continue;
            }
            states.insert(
                instance_id.clone(),
                state_from_container(info, inner.asked_to_stop.contains(&info.id)),
            );
        }
        for s in stored {
            states
                .entry(s.instance_id.clone())
                .or_insert_with(|| missing_state(&s.instance_id, s.labels, s.spec_hash));
        }
        let live: HashSet<&String> = containers.iter().map(|c| &c.id).collect();
        inner.asked_to_stop.retain(|id| live.contains(id));
        inner.states = states;
        let _ = self.tx.send(snapshot_event(&inner.states));
        self.synced.send_replace(true);
        Ok(())
    }

    fn note_event(
        &self,
        container_id: &str,
        action: &str,
        attributes: &std::collections::HashMap<String, String>,
    ) {
        let mut inner = self.lock();
        match action {
            "kill" => {
                let graceful = matches!(
                    attributes.get("signal").map(String::as_str),
                    Some("15" | "2" | "SIGTERM")
                );
                if graceful {
                    inner.asked_to_stop.insert(container_id.to_string());
                }
            }
            "stop" => {
                inner.asked_to_stop.insert(container_id.to_string());
            }
            "start" | "destroy" => {
                inner.asked_to_stop.remove(container_id);
            }
            _ => {}
        }
    }

    /// Follows the engine's events until `stop` flips; reconnects with backoff and resyncs after every break.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let mut backoff = Duration::from_millis(200);
        loop {
            // Events are requested from slightly before the resync so that a change between the two is seen.
            let since = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_secs() as i64 - 1)
                .unwrap_or(0);
            let connected = async {
                self.runtime.ping().await?;
                self.resync().await
            };
            let result = tokio::select! {
                r = connected => r,
                _ = stop.cancelled() => return,
            };
            if let Err(e) = result {
                tracing::warn!(error = %e, retry_in = ?backoff, "cannot read state from the engine");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {},
                    _ = stop.cancelled() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
            tracing::info!("watching engine events");
            let mut events = self.runtime.events((LABEL_HOST_ID, &self.host_id), since);
            loop {
                let next = tokio::select! {
                    n = events.next() => n,
                    _ = stop.cancelled() => return,
                };
                match next {
                    Some(Ok(ev)) => {
                        backoff = Duration::from_millis(200);
                        if ev.action.starts_with("exec_") || ev.action.starts_with("attach") {
                            continue;
                        }
                        self.note_event(&ev.container_id, &ev.action, &ev.attributes);
                        let Some(instance_id) = ev.attributes.get(LABEL_INSTANCE_ID).cloned()
                        else {
                            continue;
                        };
                        tracing::debug!(instance_id = %instance_id, action = %ev.action, "engine event");
                        if let Err(e) = self.refresh(&instance_id).await {
                            tracing::warn!(instance_id = %instance_id, error = %e, "cannot refresh instance");
                        }
                    }
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "engine event stream broke");
                        break;
                    }
                    None => {
                        tracing::warn!("engine event stream ended");
                        break;
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {},
                _ = stop.cancelled() => return,
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }
}

fn snapshot_event(states: &BTreeMap<String, InstanceState>) -> InstanceEvent {
    InstanceEvent {
        event: Some(instance_event::Event::Snapshot(InstanceSnapshot {
            instances: states.values().cloned().collect(),
        })),
    }
}

fn missing_state(
    instance_id: &str,
    labels: BTreeMap<String, String>,
    spec_hash: String,
) -> InstanceState {
    InstanceState {
        instance_id: instance_id.to_string(),
        labels: labels.into_iter().collect(),
        state: InstanceStatus::Missing as i32,
        health: Health::None as i32,
        reason: "container not found".into(),
        spec_hash,
        ..Default::default()
    }
}

/// Why a container is not running, in words an operator can act on.
pub fn exit_reason(info: &ContainerInfo) -> String {
    let mut reason = format!("container exited with code {}", info.exit_code);
    if info.oom_killed {
        reason.push_str(" (killed: out of memory)");
    } else if info.exit_code > 128 && info.exit_code < 160 {
        reason.push_str(&format!(" (killed by signal {})", info.exit_code - 128));
    }
    if !info.error.is_empty() {
        reason.push_str(": ");
        reason.push_str(&info.error);
    }
    reason
}

pub fn unhealthy_reason(info: &ContainerInfo) -> String {
    match info.last_health_output.as_deref().map(str::trim) {
        Some(out) if !out.is_empty() => format!("health check failing: {out}"),
        _ => "health check failing".to_string(),
    }
}

pub fn state_from_container(info: &ContainerInfo, asked_to_stop: bool) -> InstanceState {
    let (state, reason) = match info.status {
        ContainerStatus::Created => (InstanceStatus::Creating, String::new()),
        ContainerStatus::Running | ContainerStatus::Restarting => {
            let reason = if info.health == HealthStatus::Unhealthy {
                unhealthy_reason(info)
            } else {
                String::new()
            };
            (InstanceStatus::Running, reason)
        }
        ContainerStatus::Paused => (InstanceStatus::Running, "paused".to_string()),
        ContainerStatus::Exited | ContainerStatus::Dead | ContainerStatus::Removing => {
            if asked_to_stop && !info.oom_killed {
                (
                    InstanceStatus::Stopped,
                    format!("stopped (exit code {})", info.exit_code),
                )
            } else {
                (InstanceStatus::Failed, exit_reason(info))
            }
        }
    };
    let health = match info.health {
        HealthStatus::None => Health::None,
        HealthStatus::Starting => Health::Starting,
        HealthStatus::Healthy => Health::Healthy,
        HealthStatus::Unhealthy => Health::Unhealthy,
    };
    let names = port_names(&info.labels);
    InstanceState {
        instance_id: info
            .labels
            .get(LABEL_INSTANCE_ID)
            .cloned()
            .unwrap_or_default(),
        labels: info.labels.clone().into_iter().collect(),
        container_id: info.id.clone(),
        image: info.image.clone(),
        state: state as i32,
        health: health as i32,
        reason,
        exit_code: i32::try_from(info.exit_code).unwrap_or(i32::MIN),
        oom_killed: info.oom_killed,
        restart_count: info.restart_count,
        ports: published_ports(info, &names),
        started_at: info.started_at.map(Into::into),
        last_health_at: info.last_health_at.map(Into::into),
        spec_hash: info
            .labels
            .get(LABEL_SPEC_HASH)
            .cloned()
            .unwrap_or_default(),
        finished_at: info.finished_at.map(Into::into),
    }
}

pub fn published_ports(info: &ContainerInfo, names: &BTreeMap<u16, String>) -> Vec<PublishedPort> {
    info.ports
        .iter()
        .map(|(container_port, host_port)| PublishedPort {
            name: names.get(container_port).cloned().unwrap_or_default(),
            container_port: u32::from(*container_port),
            host_port: u32::from(*host_port),
        })
        .collect()
}
