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

struct Inner {
    states: BTreeMap<String, InstanceState>,
    /// The last observation number given out (see `InstanceState.sequence`). It starts at
    /// the agent's start time in microseconds, so a restarted agent never reuses a number.
    sequence: u64,
    /// Containers the engine asked to terminate gracefully (SIGTERM/SIGINT, `docker stop`): their exit is a stop,
    /// not a failure.
    asked_to_stop: HashSet<String>,
    /// Containers whose health check the agent ran itself while starting and saw pass, before the
    /// engine's next scheduled check did (see `Ops::wait_ready`). They count as healthy until the
    /// engine reports a health of its own.
    passed_start_probe: HashSet<String>,
}

impl Default for Inner {
    fn default() -> Self {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        Inner {
            states: BTreeMap::new(),
            sequence: now,
            asked_to_stop: HashSet::new(),
            passed_start_probe: HashSet::new(),
        }
    }
}

/// Two states equal but for their observation numbers.
fn same_state(a: &InstanceState, b: &InstanceState) -> bool {
    InstanceState {
        sequence: 0,
        ..a.clone()
    } == InstanceState {
        sequence: 0,
        ..b.clone()
    }
}

impl Inner {
    /// Stamps `state` with the next observation number.
    fn stamp(&mut self, state: &mut InstanceState) {
        self.sequence += 1;
        state.sequence = self.sequence;
    }

    fn state_of(&mut self, info: &ContainerInfo) -> InstanceState {
        let mut state = state_from_container(info, self.asked_to_stop.contains(&info.id));
        if info.health != HealthStatus::Starting {
            self.passed_start_probe.remove(&info.id);
        } else if self.passed_start_probe.contains(&info.id) {
            state.health = Health::Healthy as i32;
        }
        state
    }
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
        (snapshot_event(&inner), rx)
    }

    pub fn snapshot(&self) -> InstanceEvent {
        snapshot_event(&self.lock())
    }

    pub fn get(&self, instance_id: &str) -> Option<InstanceState> {
        self.lock().states.get(instance_id).cloned()
    }

    /// The last observation number published: a subscriber that has seen it has seen every
    /// state published before.
    pub fn sequence(&self) -> u64 {
        self.lock().sequence
    }

    /// Called by RemoveInstance once the instance is gone for good.
    pub fn forget(&self, instance_id: &str) {
        let mut inner = self.lock();
        if inner.states.remove(instance_id).is_some() {
            inner.sequence += 1;
            let _ = self.tx.send(InstanceEvent {
                event: Some(instance_event::Event::RemovedInstanceId(
                    instance_id.to_string(),
                )),
            });
        }
    }

    /// Records that the agent's own run of a starting container's health check passed: the
    /// instance is healthy from now on, not from the engine's next scheduled check.
    pub fn note_start_probe_passed(&self, instance_id: &str, container_id: &str) {
        let mut inner = self.lock();
        inner.passed_start_probe.insert(container_id.to_string());
        let Some(mut state) = inner.states.get(instance_id).cloned() else {
            return;
        };
        if state.container_id == container_id && state.health == Health::Starting as i32 {
            state.health = Health::Healthy as i32;
            inner.stamp(&mut state);
            inner.states.insert(instance_id.to_string(), state.clone());
            let _ = self.tx.send(InstanceEvent {
                event: Some(instance_event::Event::Changed(state)),
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
            Some(info) => Some(inner.state_of(&info)),
            None => {
                let dir = InstanceDir::new(&self.data_dir, instance_id);
                dir.read_spec()
                    .map(|s| missing_state(instance_id, s.labels, s.spec_hash))
            }
        };
        match new_state {
            Some(mut state) => {
                if inner
                    .states
                    .get(instance_id)
                    .is_none_or(|old| !same_state(old, &state))
                {
                    inner.stamp(&mut state);
                    inner.states.insert(instance_id.to_string(), state.clone());
                    let _ = self.tx.send(InstanceEvent {
                        event: Some(instance_event::Event::Changed(state)),
                    });
                }
            }
            None => {
                if inner.states.remove(instance_id).is_some() {
                    inner.sequence += 1;
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
            states.insert(instance_id.clone(), inner.state_of(info));
        }
        for s in stored {
            states
                .entry(s.instance_id.clone())
                .or_insert_with(|| missing_state(&s.instance_id, s.labels, s.spec_hash));
        }
        let live: HashSet<&String> = containers.iter().map(|c| &c.id).collect();
        inner.asked_to_stop.retain(|id| live.contains(id));
        inner.passed_start_probe.retain(|id| live.contains(id));
        for (id, state) in &mut states {
            match inner.states.get(id) {
                Some(old) if same_state(old, state) => state.sequence = old.sequence,
                _ => inner.stamp(state),
            }
        }
        inner.states = states;
        let _ = self.tx.send(snapshot_event(&inner));
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
                        telemetry::agent::container_event(&ev.action);
                        // The engine runs each health check as an exec and says so only
                        // through `exec_start` (its `health_status` event comes on changes
                        // only): re-reading the container then is what moves
                        // `last_health_at` with every check that passed.
                        let health_check_ran = ev.action.starts_with("exec_start");
                        if (ev.action.starts_with("exec_") && !health_check_ran)
                            || ev.action.starts_with("attach")
                        {
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

fn snapshot_event(inner: &Inner) -> InstanceEvent {
    InstanceEvent {
        event: Some(instance_event::Event::Snapshot(InstanceSnapshot {
            instances: inner.states.values().cloned().collect(),
            sequence: inner.sequence,
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
    if let Some(words) = &info.last_words {
        reason.push_str(": ");
        reason.push_str(words);
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
        nano_cpus: Some(info.nano_cpus),
        memory_bytes: Some(info.memory_bytes),
        // Stamped when published.
        sequence: 0,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::{
        ContainerConfig, ContainerEvent, EventStream, ExecOutput, HostResources, RuntimeError,
    };
    use std::collections::HashMap;
    use tokio::sync::mpsc;

    /// An engine in memory: containers the test edits, and event streams the test feeds and breaks.
    struct FakeEngine {
        containers: Mutex<Vec<ContainerInfo>>,
        streams: Mutex<Vec<mpsc::UnboundedReceiver<RuntimeResult<ContainerEvent>>>>,
    }

    impl ContainerRuntime for FakeEngine {
        async fn ping(&self) -> RuntimeResult<()> {
            Ok(())
        }
        async fn host_resources(&self) -> RuntimeResult<HostResources> {
            Ok(HostResources {
                cpus: 1,
                memory_bytes: 1,
                engine_id: "fake".into(),
            })
        }
        async fn list(&self, labels: &[(&str, &str)]) -> RuntimeResult<Vec<ContainerInfo>> {
            let all = self.containers.lock().unwrap().clone();
            Ok(all
                .into_iter()
                .filter(|c| {
                    labels
                        .iter()
                        .all(|(k, v)| c.labels.get(*k).map(String::as_str) == Some(*v))
                })
                .collect())
        }
        async fn inspect(&self, name_or_id: &str) -> RuntimeResult<Option<ContainerInfo>> {
            Ok(self
                .containers
                .lock()
                .unwrap()
                .iter()
                .find(|c| c.name == name_or_id || c.id == name_or_id)
                .cloned())
        }
        async fn create(&self, _: &ContainerConfig) -> RuntimeResult<String> {
            Err(RuntimeError::Other("not used".into()))
        }
        async fn start(&self, _: &str) -> RuntimeResult<()> {
            Ok(())
        }
        async fn stop(&self, _: &str, _: Option<Duration>) -> RuntimeResult<()> {
            Ok(())
        }
        async fn remove(&self, _: &str) -> RuntimeResult<()> {
            Ok(())
        }
        async fn update_resources(&self, _: &str, _: i64, _: i64) -> RuntimeResult<()> {
            Ok(())
        }
        async fn ensure_network(&self, _: &str, _: &BTreeMap<String, String>) -> RuntimeResult<()> {
            Ok(())
        }
        async fn remove_network_if_unused(&self, _: &str) -> RuntimeResult<bool> {
            Ok(false)
        }
        async fn exec(
            &self,
            _: &str,
            _: &[String],
            _: &[u8],
            _: Option<&str>,
            _: Duration,
        ) -> RuntimeResult<ExecOutput> {
            Err(RuntimeError::Other("not used".into()))
        }
        fn events(&self, _: (&str, &str), _: i64) -> EventStream {
            let next = self.streams.lock().unwrap().pop();
            match next {
                Some(rx) => Box::pin(tokio_stream::wrappers::UnboundedReceiverStream::new(rx)),
                None => Box::pin(futures::stream::pending()),
            }
        }
    }

    fn container(
        host: &str,
        instance: &str,
        status: ContainerStatus,
        exit_code: i64,
    ) -> ContainerInfo {
        ContainerInfo {
            id: format!("id-{instance}"),
            name: container_name(host, instance),
            image: "img".into(),
            labels: BTreeMap::from([
                (LABEL_HOST_ID.to_string(), host.to_string()),
                (LABEL_INSTANCE_ID.to_string(), instance.to_string()),
            ]),
            status,
            exit_code,
            oom_killed: false,
            error: String::new(),
            restart_count: 0,
            started_at: None,
            finished_at: None,
            health: HealthStatus::None,
            last_health_output: None,
            last_health_at: None,
            ports: Vec::new(),
            nano_cpus: 0,
            memory_bytes: 0,
            network: None,
            last_words: None,
        }
    }

    async fn next(rx: &mut broadcast::Receiver<InstanceEvent>) -> InstanceEvent {
        tokio::time::timeout(Duration::from_secs(30), rx.recv())
            .await
            .expect("event in time")
            .expect("channel open")
    }

    #[tokio::test(start_paused = true)]
    async fn a_broken_event_stream_is_reconnected_and_followed_by_a_fresh_snapshot() {
        let tmp = tempfile::tempdir().unwrap();
        let (feed, stream) = mpsc::unbounded_channel();
        let engine = Arc::new(FakeEngine {
            containers: Mutex::new(vec![
                container("h1", "i1", ContainerStatus::Running, 0),
                container("other-host", "i9", ContainerStatus::Running, 0),
            ]),
            streams: Mutex::new(vec![stream]),
        });
        let hub = StateHub::new(engine.clone(), "h1".into(), tmp.path().to_path_buf());
        let stop = CancellationToken::new();
        let task = tokio::spawn(hub.clone().run(stop.clone()));

        let (snapshot, mut rx) = hub.subscribe_synced().await;
        let Some(instance_event::Event::Snapshot(s)) = snapshot.event else {
            panic!("snapshot first")
        };
        assert_eq!(s.instances.len(), 1, "only this host's containers");
        assert_eq!(s.instances[0].state(), InstanceStatus::Running);

        engine.containers.lock().unwrap()[0] = container("h1", "i1", ContainerStatus::Exited, 1);
        let attributes = HashMap::from([(LABEL_INSTANCE_ID.to_string(), "i1".to_string())]);
        feed.send(Ok(ContainerEvent {
            container_id: "id-i1".into(),
            action: "die".into(),
            attributes,
        }))
        .unwrap();
        let Some(instance_event::Event::Changed(s)) = next(&mut rx).await.event else {
            panic!("a change")
        };
        assert_eq!(s.state(), InstanceStatus::Failed);
        assert_eq!(s.reason, "container exited with code 1");

        // The engine comes back with the container running again, and the stream breaks.
        engine.containers.lock().unwrap()[0] = container("h1", "i1", ContainerStatus::Running, 0);
        drop(feed);
        let Some(instance_event::Event::Snapshot(s)) = next(&mut rx).await.event else {
            panic!("a fresh snapshot")
        };
        assert_eq!(s.instances.len(), 1);
        assert_eq!(s.instances[0].state(), InstanceStatus::Running);
        stop.cancel();
        task.await.unwrap();
    }

    #[test]
    fn graceful_stops_are_not_failures_but_oom_kills_always_are() {
        let mut c = container("h", "i", ContainerStatus::Exited, 0);
        assert_eq!(
            state_from_container(&c, true).state(),
            InstanceStatus::Stopped
        );
        assert_eq!(
            state_from_container(&c, false).state(),
            InstanceStatus::Failed
        );
        c.exit_code = 137;
        c.oom_killed = true;
        let s = state_from_container(&c, true);
        assert_eq!(s.state(), InstanceStatus::Failed);
        assert!(s.oom_killed);
        assert!(s.reason.contains("out of memory"), "{}", s.reason);
        let mut sick = container("h", "i", ContainerStatus::Running, 0);
        sick.health = HealthStatus::Unhealthy;
        sick.last_health_output = Some("pg_isready: no response\n".into());
        let s = state_from_container(&sick, false);
        assert_eq!(
            (s.state(), s.health()),
            (InstanceStatus::Running, Health::Unhealthy)
        );
        assert_eq!(s.reason, "health check failing: pg_isready: no response");
    }
}
