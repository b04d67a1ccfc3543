//! When a started container counts as ready: its health check, run by the engine and, while it
//! starts, by the agent itself.

use std::time::Duration;

use agent_proto::v1::{InstanceSpec, instance_event};
use tokio::sync::broadcast;

use super::{OpError, Ops, Progress};
use crate::runtime::{ContainerInfo, ContainerRuntime, ContainerStatus, HealthStatus};
use crate::state::{exit_reason, unhealthy_reason};

/// Docker's defaults for a health check's zero fields.
fn or_default(ms: u64, default: Duration) -> Duration {
    if ms == 0 {
        default
    } else {
        Duration::from_millis(ms)
    }
}

/// How often the agent runs a starting container's health check itself.
const START_PROBE_PERIOD: Duration = Duration::from_millis(200);
/// A start probe that takes longer is counted as failed; the engine's own check still decides.
const START_PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// The health check as a command to exec: Docker's `CMD` form runs its arguments, `CMD-SHELL` runs
/// its string with the image's shell; anything else (`NONE`) has nothing to probe.
fn start_probe_argv(spec: &InstanceSpec) -> Option<Vec<String>> {
    let test = &spec.health_check.as_ref()?.test;
    match test.split_first()? {
        (kind, args) if kind == "CMD" && !args.is_empty() => Some(args.to_vec()),
        (kind, [command]) if kind == "CMD-SHELL" => {
            Some(vec!["/bin/sh".into(), "-c".into(), command.clone()])
        }
        _ => None,
    }
}

fn ready_deadline(spec: &InstanceSpec) -> Duration {
    match &spec.health_check {
        Some(h) => {
            let interval = or_default(h.interval_ms, Duration::from_secs(30));
            let timeout = or_default(h.timeout_ms, Duration::from_secs(30));
            let retries = if h.retries == 0 { 3 } else { h.retries };
            Duration::from_millis(h.start_period_ms)
                + (interval + timeout) * (retries + 1)
                + Duration::from_secs(30)
        }
        None => Duration::from_secs(30),
    }
}

impl<R: ContainerRuntime> Ops<R> {
    /// While the container starts, the agent also runs its health check itself every [`START_PROBE_PERIOD`]:
    /// the engine runs it only once per interval (Engine API 1.41 has no start interval), so an instance that
    /// is ready just after a check would otherwise wait most of an interval to count as healthy, and every
    /// step after it (roles, services, the task's end) with it.
    pub(super) async fn wait_ready(
        &self,
        spec: &InstanceSpec,
        container_id: &str,
        mut changes: broadcast::Receiver<agent_proto::v1::InstanceEvent>,
        progress: &Progress,
    ) -> Result<ContainerInfo, OpError> {
        let limit = ready_deadline(spec);
        let deadline = tokio::time::Instant::now() + limit;
        let mut ticker = tokio::time::interval(Duration::from_secs(5));
        ticker.tick().await;
        let start_probe = start_probe_argv(spec);
        let mut probe_ticker = tokio::time::interval(START_PROBE_PERIOD);
        probe_ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_reason;
        loop {
            let info =
                self.runtime
                    .inspect(container_id)
                    .await?
                    .ok_or_else(|| OpError::StartFailed {
                        instance_id: spec.instance_id.clone(),
                        reason: "container disappeared while starting".into(),
                    })?;
            let probing = start_probe.is_some()
                && info.status == ContainerStatus::Running
                && info.health == HealthStatus::Starting;
            match (info.status, info.health) {
                (ContainerStatus::Exited | ContainerStatus::Dead, _) => {
                    return Err(OpError::StartFailed {
                        instance_id: spec.instance_id.clone(),
                        reason: exit_reason(&info),
                    });
                }
                (ContainerStatus::Running, HealthStatus::Healthy) => return Ok(info),
                (ContainerStatus::Running, HealthStatus::None) if spec.health_check.is_none() => {
                    return Ok(info);
                }
                (ContainerStatus::Running, HealthStatus::Unhealthy) => {
                    return Err(OpError::StartFailed {
                        instance_id: spec.instance_id.clone(),
                        reason: unhealthy_reason(&info),
                    });
                }
                _ => {
                    last_reason = match &info.last_health_output {
                        Some(out) if !out.trim().is_empty() => {
                            format!("last health check: {}", out.trim())
                        }
                        _ => format!("status {:?}, health {:?}", info.status, info.health),
                    };
                }
            }
            loop {
                tokio::select! {
                    ev = changes.recv() => match ev {
                        Ok(agent_proto::v1::InstanceEvent { event: Some(instance_event::Event::Changed(s)) })
                            if s.instance_id == spec.instance_id => break,
                        Ok(agent_proto::v1::InstanceEvent { event: Some(instance_event::Event::Snapshot(_)) }) => break,
                        Ok(_) => continue,
                        Err(broadcast::error::RecvError::Lagged(_)) => break,
                        Err(broadcast::error::RecvError::Closed) => {
                            tokio::time::sleep(Duration::from_secs(1)).await;
                            break;
                        }
                    },
                    _ = ticker.tick() => {
                        progress.log("waiting for the instance to become ready", &[("detail", last_reason.clone())]).await;
                        break;
                    }
                    _ = probe_ticker.tick(), if probing => {
                        let argv = start_probe.as_deref().unwrap_or_default();
                        if self.start_probe_passes(container_id, argv).await {
                            // A container that exits at once can still answer a check that
                            // ran in its first milliseconds: it counts as started only if it
                            // still runs after the check.
                            let mut info = match self.runtime.inspect(container_id).await? {
                                Some(now) if now.status == ContainerStatus::Running => now,
                                Some(now) => {
                                    return Err(OpError::StartFailed {
                                        instance_id: spec.instance_id.clone(),
                                        reason: exit_reason(&now),
                                    });
                                }
                                None => {
                                    return Err(OpError::StartFailed {
                                        instance_id: spec.instance_id.clone(),
                                        reason: "container disappeared while starting".into(),
                                    });
                                }
                            };
                            self.hub.note_start_probe_passed(&spec.instance_id, container_id);
                            info.health = HealthStatus::Healthy;
                            return Ok(info);
                        }
                    }
                    _ = tokio::time::sleep_until(deadline) => {
                        return Err(OpError::ReadyTimeout {
                            instance_id: spec.instance_id.clone(),
                            waited: limit,
                            reason: last_reason,
                        });
                    }
                }
            }
        }
    }

    /// One run of the container's health check command, as the engine would run it.
    async fn start_probe_passes(&self, container_id: &str, argv: &[String]) -> bool {
        let passed = match self
            .runtime
            .exec(container_id, argv, &[], None, START_PROBE_TIMEOUT)
            .await
        {
            Ok(out) => out.exit_code == 0,
            Err(e) => {
                tracing::debug!(container_id, error = %e, "start probe could not run");
                false
            }
        };
        telemetry::agent::health_check("start_probe", passed);
        passed
    }
}
