//! The `agent.v1.Agent` gRPC service over [`Ops`] and [`StateHub`].

use std::sync::Arc;
use std::time::Duration;

use agent_proto::v1::agent_server::Agent;
use agent_proto::v1::{
    ApplyAction, ApplyEvent, ApplyInstanceRequest, ExecRequest, ExecResult, HostInfo,
    InstanceEvent, RemoveInstanceRequest, ResizeInstanceRequest, ResizeResult, WatchRequest,
    apply_event,
};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::ops::{Ops, Progress};
use crate::runtime::ContainerRuntime;
use crate::state::StateHub;

pub struct AgentService<R> {
    ops: Arc<Ops<R>>,
    hub: Arc<StateHub<R>>,
    // Cancelled when the agent starts shutting down: watch streams never end on their own, and the server's
    // graceful shutdown waits for every open stream.
    closing: CancellationToken,
}

impl<R> AgentService<R> {
    pub fn new(ops: Arc<Ops<R>>, hub: Arc<StateHub<R>>, closing: CancellationToken) -> Self {
        Self { ops, hub, closing }
    }
}

const DEFAULT_EXEC_TIMEOUT: Duration = Duration::from_secs(60);

/// The `action` label of an apply's duration ([`telemetry::agent::APPLY_DURATION`]).
fn action_label(action: ApplyAction) -> &'static str {
    match action {
        ApplyAction::Created => "created",
        ApplyAction::Recreated => "recreated",
        ApplyAction::Resized => "resized",
        ApplyAction::Unchanged | ApplyAction::Unspecified => "unchanged",
    }
}

#[tonic::async_trait]
impl<R: ContainerRuntime> Agent for AgentService<R> {
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
        let (tx, rx) = mpsc::channel(64);
        let ops = self.ops.clone();
        let span =
            tracing::info_span!("apply", host_id = %ops.host_id(), instance_id = %spec.instance_id);
        // The operation runs to completion even if the caller goes away, so an instance is never left half-applied.
        tokio::spawn(
            async move {
                let progress = Progress::new(tx.clone());
                let started = std::time::Instant::now();
                let outcome = match ops.apply(spec, &progress).await {
                    Ok(result) => {
                        telemetry::agent::apply(action_label(result.action()), started.elapsed());
                        Ok(ApplyEvent {
                            event: Some(apply_event::Event::Result(result)),
                        })
                    }
                    Err(e) => {
                        telemetry::agent::apply("failed", started.elapsed());
                        tracing::warn!(error = %e, "apply failed");
                        Err(Status::from(e))
                    }
                };
                let _ = tx.send(outcome).await;
            }
            .instrument(span),
        );
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn remove_instance(
        &self,
        request: Request<RemoveInstanceRequest>,
    ) -> Result<Response<Self::RemoveInstanceStream>, Status> {
        let req = request.into_inner();
        let (tx, rx) = mpsc::channel(64);
        let ops = self.ops.clone();
        let span =
            tracing::info_span!("remove", host_id = %ops.host_id(), instance_id = %req.instance_id);
        tokio::spawn(
            async move {
                let progress = Progress::new(tx.clone());
                let outcome = match ops
                    .remove(&req.instance_id, req.delete_data, &progress)
                    .await
                {
                    Ok(result) => Ok(ApplyEvent {
                        event: Some(apply_event::Event::Removed(result)),
                    }),
                    Err(e) => {
                        tracing::warn!(error = %e, "remove failed");
                        Err(Status::from(e))
                    }
                };
                let _ = tx.send(outcome).await;
            }
            .instrument(span),
        );
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn resize_instance(
        &self,
        request: Request<ResizeInstanceRequest>,
    ) -> Result<Response<ResizeResult>, Status> {
        let req = request.into_inner();
        let span = tracing::info_span!("resize", host_id = %self.ops.host_id(), instance_id = %req.instance_id);
        let applied = self
            .ops
            .resize(&req.instance_id, req.nano_cpus, req.memory_bytes)
            .instrument(span)
            .await?;
        Ok(Response::new(ResizeResult {
            applied,
            sequence: self.hub.sequence(),
        }))
    }

    async fn exec_instance(
        &self,
        request: Request<ExecRequest>,
    ) -> Result<Response<ExecResult>, Status> {
        let req = request.into_inner();
        let span = tracing::info_span!("exec", host_id = %self.ops.host_id(), instance_id = %req.instance_id);
        let timeout = if req.timeout_ms == 0 {
            DEFAULT_EXEC_TIMEOUT
        } else {
            Duration::from_millis(u64::from(req.timeout_ms))
        };
        let user = (!req.user.is_empty()).then_some(req.user.as_str());
        let out = self
            .ops
            .exec(&req.instance_id, &req.argv, &req.stdin, user, timeout)
            .instrument(span)
            .await?;
        Ok(Response::new(ExecResult {
            exit_code: i32::try_from(out.exit_code).unwrap_or(-1),
            stdout: out.stdout,
            stderr: out.stderr,
        }))
    }

    async fn watch_instances(
        &self,
        _request: Request<WatchRequest>,
    ) -> Result<Response<Self::WatchInstancesStream>, Status> {
        let (tx, rx) = mpsc::channel(256);
        let hub = self.hub.clone();
        let closing = self.closing.clone();
        tokio::spawn(async move {
            let (snapshot, mut changes) = tokio::select! {
                s = hub.subscribe_synced() => s,
                _ = tx.closed() => return,
                _ = closing.cancelled() => return,
            };
            if tx.send(Ok(snapshot)).await.is_err() {
                return;
            }
            loop {
                let next = tokio::select! {
                    n = changes.recv() => n,
                    _ = tx.closed() => return,
                    _ = closing.cancelled() => {
                        let _ = tx.send(Err(Status::unavailable("agent shutting down"))).await;
                        return;
                    }
                };
                let event = match next {
                    Ok(event) => event,
                    // A slow subscriber that missed changes gets a fresh whole picture instead of a gap.
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        let (snapshot, fresh) = hub.subscribe();
                        changes = fresh;
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
        Ok(Response::new(self.ops.host_info().await))
    }
}
