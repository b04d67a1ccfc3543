//! The engine's answers in the runtime's own types: a container's inspect response as
//! [`ContainerInfo`].

use std::time::SystemTime;

use bollard::models::{
    ContainerInspectResponse, ContainerStateStatusEnum, HealthStatusEnum,
    PortBinding as DockerPortBinding,
};

use super::*;

fn parse_time(s: Option<&str>) -> Option<SystemTime> {
    let s = s?;
    // The engine reports "0001-01-01T00:00:00Z" for "never".
    if s.is_empty() || s.starts_with("0001-") {
        return None;
    }
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()
        .map(SystemTime::from)
}

pub(super) fn container_info(resp: ContainerInspectResponse) -> ContainerInfo {
    let state = resp.state.unwrap_or_default();
    let config = resp.config.unwrap_or_default();
    let host_config = resp.host_config.unwrap_or_default();
    let status = match state.status {
        Some(ContainerStateStatusEnum::CREATED) => ContainerStatus::Created,
        Some(ContainerStateStatusEnum::RUNNING) => ContainerStatus::Running,
        Some(ContainerStateStatusEnum::PAUSED) => ContainerStatus::Paused,
        Some(ContainerStateStatusEnum::RESTARTING) => ContainerStatus::Restarting,
        Some(ContainerStateStatusEnum::REMOVING) => ContainerStatus::Removing,
        Some(ContainerStateStatusEnum::DEAD) => ContainerStatus::Dead,
        Some(ContainerStateStatusEnum::STOPPING) => ContainerStatus::Running,
        Some(ContainerStateStatusEnum::EXITED) | Some(ContainerStateStatusEnum::EMPTY) | None => {
            ContainerStatus::Exited
        }
    };
    let (health, last_health_output, last_health_at) = match state.health {
        Some(h) => {
            let status = match h.status {
                Some(HealthStatusEnum::STARTING) => HealthStatus::Starting,
                Some(HealthStatusEnum::HEALTHY) => HealthStatus::Healthy,
                Some(HealthStatusEnum::UNHEALTHY) => HealthStatus::Unhealthy,
                _ => HealthStatus::None,
            };
            let log = h.log.unwrap_or_default();
            let output = log.last().and_then(|r| r.output.clone());
            // When the check last passed: a failing run is not a sign of health.
            let at = log
                .iter()
                .rev()
                .find(|r| r.exit_code == Some(0))
                .and_then(|r| parse_time(r.end.as_deref()));
            (status, output, at)
        }
        None => (HealthStatus::None, None, None),
    };
    let mut ports: Vec<(u16, u16)> = Vec::new();
    let live = resp
        .network_settings
        .and_then(|n| n.ports)
        .unwrap_or_default();
    let configured = host_config.port_bindings.clone().unwrap_or_default();
    for (key, bindings) in configured.iter() {
        let Some(container_port) = key.strip_suffix("/tcp").and_then(|p| p.parse::<u16>().ok())
        else {
            continue;
        };
        let host_port_of = |b: &Option<Vec<DockerPortBinding>>| {
            b.as_ref()
                .and_then(|v| {
                    v.iter()
                        .find_map(|b| b.host_port.as_deref()?.parse::<u16>().ok())
                })
                .filter(|p| *p != 0)
        };
        let host_port = live
            .get(key)
            .and_then(host_port_of)
            .or_else(|| host_port_of(bindings))
            .unwrap_or(0);
        ports.push((container_port, host_port));
    }
    ports.sort_unstable();
    // "default", "bridge", "host", "none" and "container:<id>" are the engine's own.
    let network = host_config
        .network_mode
        .clone()
        .filter(|m| !matches!(m.as_str(), "" | "default" | "bridge" | "host" | "none"))
        .filter(|m| !m.starts_with("container:"));
    ContainerInfo {
        id: resp.id.unwrap_or_default(),
        name: resp
            .name
            .unwrap_or_default()
            .trim_start_matches('/')
            .to_string(),
        image: config.image.unwrap_or_default(),
        labels: config.labels.unwrap_or_default().into_iter().collect(),
        status,
        exit_code: state.exit_code.unwrap_or(0),
        oom_killed: state.oom_killed.unwrap_or(false),
        error: state.error.unwrap_or_default(),
        restart_count: resp.restart_count.unwrap_or(0).try_into().unwrap_or(0),
        started_at: parse_time(state.started_at.as_deref()),
        finished_at: parse_time(state.finished_at.as_deref()),
        health,
        last_health_output,
        last_health_at,
        ports,
        nano_cpus: host_config.nano_cpus.unwrap_or(0),
        memory_bytes: host_config.memory.unwrap_or(0),
        network,
        // Read from the log by the runtime, which has the client.
        last_words: None,
    }
}
