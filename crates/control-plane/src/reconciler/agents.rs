//! The agent calls a pass makes, as a trait: the fleet's gRPC clients in production, a fake
//! in the reconciler's unit tests.

use std::pin::Pin;

use agent_proto::{
    ApplyEvent, ApplyInstanceRequest, ExecRequest, ExecResult, RemoveInstanceRequest,
    ResizeInstanceRequest, ResizeResult,
};
use async_trait::async_trait;
use futures::{Stream, StreamExt};
use tonic::Status;

use crate::fleet::Fleet;

/// An apply's or a remove's progress lines, ending with its result or an error.
pub type Events = Pin<Box<dyn Stream<Item = Result<ApplyEvent, Status>> + Send>>;

/// One call per agent RPC the reconciler makes; `host_id` picks the agent. A host that is
/// not connected answers `unavailable`.
#[async_trait]
pub trait Agents: Send + Sync {
    async fn apply(&self, host_id: &str, request: ApplyInstanceRequest) -> Result<Events, Status>;
    async fn remove(&self, host_id: &str, request: RemoveInstanceRequest)
    -> Result<Events, Status>;
    async fn resize(
        &self,
        host_id: &str,
        request: ResizeInstanceRequest,
    ) -> Result<ResizeResult, Status>;
    async fn exec(&self, host_id: &str, request: ExecRequest) -> Result<ExecResult, Status>;
}

impl Fleet {
    fn connected(
        &self,
        host_id: &str,
    ) -> Result<agent_proto::agent_client::AgentClient<tonic::transport::Channel>, Status> {
        self.client(host_id)
            .ok_or_else(|| Status::unavailable(format!("host {host_id} is not connected")))
    }
}

#[async_trait]
impl Agents for Fleet {
    async fn apply(&self, host_id: &str, request: ApplyInstanceRequest) -> Result<Events, Status> {
        let stream = self.connected(host_id)?.apply_instance(request).await?;
        Ok(stream.into_inner().boxed())
    }

    async fn remove(
        &self,
        host_id: &str,
        request: RemoveInstanceRequest,
    ) -> Result<Events, Status> {
        let stream = self.connected(host_id)?.remove_instance(request).await?;
        Ok(stream.into_inner().boxed())
    }

    async fn resize(
        &self,
        host_id: &str,
        request: ResizeInstanceRequest,
    ) -> Result<ResizeResult, Status> {
        Ok(self
            .connected(host_id)?
            .resize_instance(request)
            .await?
            .into_inner())
    }

    async fn exec(&self, host_id: &str, request: ExecRequest) -> Result<ExecResult, Status> {
        Ok(self
            .connected(host_id)?
            .exec_instance(request)
            .await?
            .into_inner())
    }
}
