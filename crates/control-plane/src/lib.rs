//! The control plane: the v1 HTTP API, the host registry agents talk to, the task
//! bookkeeping and (with the reconciler) the loop that makes the fleet match the specs.

pub mod api;
pub mod hosts;
pub mod registry;
pub mod settings;
pub mod state;
pub mod tasks;

use std::sync::Arc;

use anyhow::Context;
use settings::Settings;
use spec::manifest::Manifest;
use state::AppState;
use store::{SecretBox, Store};
use tokio::net::TcpListener;

/// Opens everything a replica needs from its settings: key file, manifest, etcd.
pub async fn build_state(settings: &Settings) -> anyhow::Result<AppState> {
    let key_file = settings.key_file();
    let secrets = SecretBox::load_or_create(&key_file)
        .with_context(|| format!("secret key {}", key_file.display()))?;
    let manifest = match &settings.manifest {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("manifest {}", path.display()))?;
            Manifest::from_json(&text).with_context(|| format!("manifest {}", path.display()))?
        }
        None => Manifest::builtin(),
    };
    let store = Store::connect(
        &settings.etcd_endpoints,
        &settings.etcd_prefix,
        secrets,
        spec::catalog::is_secret_key,
    )
    .await
    .with_context(|| format!("etcd at {}", settings.etcd_endpoints.join(",")))?;
    Ok(AppState {
        store,
        manifest: Arc::new(manifest),
        reconcile: Arc::new(tokio::sync::Notify::new()),
    })
}

/// A running replica; dropping the future stops it.
pub async fn run(
    settings: Settings,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let state = build_state(&settings).await?;
    let http = TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("listen on {}", settings.listen))?;
    let grpc = TcpListener::bind(settings.grpc_listen)
        .await
        .with_context(|| format!("listen on {}", settings.grpc_listen))?;
    tracing::info!(http = %settings.listen, grpc = %settings.grpc_listen, "control plane serving");

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };

    let registry = registry::RegistryService::new(
        state.store.clone(),
        settings.host_lease_ttl,
        state.reconcile.clone(),
    );
    let grpc_server = tonic::transport::Server::builder()
        .add_service(agent_proto::registry_server::RegistryServer::new(registry))
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(grpc),
            stopped(stop_rx.clone()),
        );
    let http_server =
        axum::serve(http, api::router(state)).with_graceful_shutdown(stopped(stop_rx.clone()));
    tokio::try_join!(async { grpc_server.await.context("gRPC server") }, async {
        http_server.await.context("HTTP server")
    },)?;
    Ok(())
}
