//! The etcd client's gRPC channel, with every call counted ([`telemetry::etcd`]): the one
//! place all of the control plane's etcd traffic passes, the store's reads and writes as
//! well as elections, watches and leases built on [`crate::Store::client`].

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use etcd_client::{BalancedChannelBuilder, Channel};
use tonic::transport::channel::Change;
use tower::{BoxError, Service};

type Request = http::Request<tonic::body::Body>;
type Response = http::Response<tonic::body::Body>;

/// Builds etcd-client's balanced tonic channel wrapped in [`Metered`]: pass it to
/// `Client::connect_with_balanced_channel`.
pub(crate) struct MeteredChannel;

impl BalancedChannelBuilder for MeteredChannel {
    type Error = tonic::transport::Error;

    fn balanced_channel(
        self,
        buffer_size: usize,
    ) -> Result<
        (
            Channel,
            tokio::sync::mpsc::Sender<Change<http::Uri, tonic::transport::Endpoint>>,
        ),
        Self::Error,
    > {
        let (channel, endpoints) = tonic::transport::Channel::balance_channel(buffer_size);
        let metered = tower::util::BoxCloneSyncService::new(Metered(channel));
        Ok((Channel::Custom(metered), endpoints))
    }
}

/// A tonic channel that records each call's RPC, duration and failure.
#[derive(Clone)]
struct Metered(tonic::transport::Channel);

impl Service<Request> for Metered {
    type Response = Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.0.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let method = telemetry::etcd::method_label(request.uri().path());
        let started = Instant::now();
        let call = self.0.call(request);
        Box::pin(async move {
            let result = call.await;
            let failed = match &result {
                Err(_) => true,
                Ok(response) => is_error(response),
            };
            telemetry::etcd::request(method, failed, started.elapsed());
            result.map_err(Into::into)
        })
    }
}

/// Whether a response head says the call failed. A failing call usually answers with
/// headers only, its `grpc-status` among them (gRPC over HTTP/2, "Trailers-Only"); a call
/// that succeeds puts `grpc-status: 0` in its trailers, which this head does not see.
fn is_error(response: &Response) -> bool {
    !response.status().is_success()
        || response
            .headers()
            .get("grpc-status")
            .is_some_and(|s| s.as_bytes() != b"0")
}
