//! Host ports of a new container: the published-ports file it reads, the ports the engine
//! chose for `host_port: 0` (kept for the instance's life, so its address stays put), and
//! what happens when a kept choice is no longer free.

use std::collections::BTreeMap;

use agent_proto::v1::{InstanceEvent, InstanceSpec};
use tokio::sync::broadcast;

use super::{OpError, Ops, Progress};
use crate::instance::{self, ChosenPorts, InstanceDir};
use crate::ports_file;
use crate::runtime::{ContainerInfo, ContainerRuntime, RuntimeError};

/// True when the engine refused to start a container because a host port it publishes is
/// bound already. Docker's words: "port is already allocated" (its own allocator), "address
/// already in use" (the kernel's, through docker-proxy).
pub(crate) fn port_taken(message: &str) -> bool {
    let lower = message.to_lowercase();
    lower.contains("port is already allocated") || lower.contains("address already in use")
}

/// What [`Ops::create_and_start`] leaves: the started container, the published-ports file
/// written before it started (None: the container waits for one written after), and the
/// instance events from before the start.
pub(super) struct Started {
    pub id: String,
    pub told: Option<ports_file::PublishedPorts>,
    pub changes: broadcast::Receiver<InstanceEvent>,
}

impl<R: ContainerRuntime> Ops<R> {
    /// Creates and starts the instance's container. A port the engine chose for an earlier
    /// container of the instance (`host_port: 0`) is asked for again; if something else has
    /// bound it since (another container took it while the instance had none), the choice is
    /// dropped, the engine picks again once, and `chosen` forgets the old port. A fixed port
    /// that is taken fails: the spec names that port, so the operator must change it.
    ///
    /// Errors: the engine refusing the create, or the start ([`OpError::StartFailed`]; the
    /// container is removed, so nothing sits in "created").
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn create_and_start(
        &self,
        spec: &InstanceSpec,
        hash: &str,
        dir: &InstanceDir,
        chosen: &mut ChosenPorts,
        network: Option<&str>,
        managed: &BTreeMap<String, String>,
        progress: &Progress,
    ) -> Result<Started, OpError> {
        loop {
            let told = self.tell_ports_before_start(spec, dir, chosen).await?;
            let config = instance::container_config(&self.host_id, spec, hash, dir, chosen);
            // Subscribe before starting so that no state change between start and wait is missed.
            let (_, changes) = self.hub.subscribe();
            let id = match (self.runtime.create(&config).await, network) {
                // Another agent of this engine removed the network with its last container
                // between our check and this create: make it again, once.
                (Err(RuntimeError::NotFound(message)), Some(net))
                    if message.contains("network") =>
                {
                    self.runtime.ensure_network(net, managed).await?;
                    self.runtime.create(&config).await?
                }
                (created, _) => created?,
            };
            self.store_spec(dir, spec, hash).await?;
            progress
                .log("container created", &[("container_id", id.clone())])
                .await;
            let Err(e) = self.runtime.start(&id).await else {
                return Ok(Started { id, told, changes });
            };
            // A container that never started would sit in "created" forever and look like progress.
            let _ = self.runtime.remove(&id).await;
            let reason = e.to_string();
            let kept: Vec<String> = spec
                .ports
                .iter()
                .filter(|p| p.host_port == Some(0))
                .filter_map(|p| chosen.0.get(&p.name).map(|h| format!("{}={h}", p.name)))
                .collect();
            if port_taken(&reason) && !kept.is_empty() {
                progress
                    .log(
                        "a host port chosen earlier is taken: the engine picks again",
                        &[("ports", kept.join(",")), ("reason", reason)],
                    )
                    .await;
                *chosen = ChosenPorts::default();
                let (dir, forgotten) = (dir.clone(), chosen.clone());
                crate::blocking::run(move || dir.write_ports(&forgotten)).await?;
                continue;
            }
            self.refresh_quietly(&spec.instance_id).await;
            return Err(OpError::StartFailed {
                instance_id: spec.instance_id.clone(),
                reason,
            });
        }
    }

    /// Before a container is created: writes the published-ports file when every published
    /// port is already known (fixed, or chosen by an earlier container), or removes an earlier
    /// container's file so the new one waits for its own. Returns what was written.
    pub(super) async fn tell_ports_before_start(
        &self,
        spec: &InstanceSpec,
        dir: &InstanceDir,
        chosen: &ChosenPorts,
    ) -> std::io::Result<Option<ports_file::PublishedPorts>> {
        if !ports_file::publishes_ports(spec) {
            return Ok(None);
        }
        let known = ports_file::known_before_start(spec, chosen);
        let runtime = dir.runtime_dir();
        let written = known.clone();
        crate::blocking::run(move || match &written {
            Some(ports) => ports_file::write(&runtime, ports),
            None => ports_file::clear(&runtime),
        })
        .await?;
        Ok(known)
    }

    /// Records the host ports the engine picked for `host_port: 0`; true when something new was learned.
    pub(super) fn remember_chosen_ports(
        &self,
        spec: &InstanceSpec,
        info: &ContainerInfo,
        chosen: &mut ChosenPorts,
    ) -> bool {
        let mut changed = false;
        for p in spec.ports.iter().filter(|p| p.host_port == Some(0)) {
            if chosen.0.contains_key(&p.name) {
                continue;
            }
            let bound = info
                .ports
                .iter()
                .find(|(c, h)| u32::from(*c) == p.container_port && *h != 0);
            if let Some((_, host)) = bound {
                chosen.0.insert(p.name.clone(), *host);
                changed = true;
            }
        }
        changed
    }
}
