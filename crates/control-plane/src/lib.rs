//! The control plane: the v1 HTTP API, the host registry agents talk to, the task
//! bookkeeping, and (on the elected leader) the reconciler that makes the fleet match the specs.

pub mod api;
pub mod api_tls;
pub mod credentials;
pub mod desired;
pub mod fleet;
pub mod gauges;
pub mod hosts;
pub mod instances;
pub mod leader;
pub(crate) mod operations;
pub mod operator;
pub mod patroni;
pub mod postgres_tls;
pub mod reconciler;
pub mod registry;
pub mod retention;
pub mod retry;
pub mod schedules;
pub mod scram;
pub mod settings;
pub mod state;
pub mod tasks;
pub mod tls;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use etcd_client::WatchOptions;
use fleet::Poke;
use settings::Settings;
use spec::manifest::Manifest;
use state::AppState;
use store::{SecretBox, Store};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

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
    let store = Store::connect_as(
        &settings.etcd_endpoints,
        &settings.etcd_prefix,
        secrets,
        spec::catalog::is_secret_key,
        settings.etcd_credentials()?.as_ref(),
    )
    .await
    .with_context(|| format!("etcd at {}", settings.etcd_endpoints.join(",")))?;
    let mut dcs = settings.dcs()?;
    // With etcd credentials each node's Patroni gets an etcd user of its own (ADR 017).
    dcs.node_users = store.manages_patroni_users();
    if dcs.node_users {
        tracing::info!(
            logged_in = store.is_authenticated(),
            "etcd credentials given: each Postgres node's Patroni logs in as an etcd user of its own"
        );
    }
    Ok(AppState::new(store, manifest, dcs))
}

/// A running replica, until `shutdown` resolves.
pub async fn run(
    settings: Settings,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let authenticate = settings.api_auth_enabled()?;
    settings.api_tls_enabled()?;
    // Refused before anything starts, naming the flag (also checked where the state is built).
    settings.dcs()?;
    telemetry::install();
    let gauges = gauges::FleetGauges::new();
    let state = build_state(&settings).await?;
    let dcs = state.dcs.clone();
    if dcs
        .hosts
        .iter()
        .any(|h| h.starts_with("127.") || h.starts_with("localhost") || h.starts_with("[::1]"))
    {
        tracing::warn!(dcs = ?dcs.hosts, "Patroni's DCS endpoints are loopback addresses, which Postgres containers cannot reach; set --dcs-endpoints");
    }
    let tls = Arc::new(
        tls::FleetTls::load(
            &state.store,
            &settings.data_dir,
            settings
                .join_token
                .as_ref()
                .map(secrecy::ExposeSecret::expose_secret),
        )
        .await
        .context("fleet CA")?,
    );
    let http = TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("listen on {}", settings.listen))?;
    let grpc = TcpListener::bind(settings.grpc_listen)
        .await
        .with_context(|| format!("listen on {}", settings.grpc_listen))?;
    let api_tls = api_tls::server_config(&settings, tls.authority()).context("API TLS")?;
    tracing::info!(
        http = %settings.listen,
        grpc = %settings.grpc_listen,
        api_tls = api_tls.is_some(),
        api_client_certs = settings.api_client_certs,
        "control plane serving"
    );
    if authenticate {
        tracing::info!("API authentication: bearer tokens (berth-control-plane token create)");
    } else {
        tracing::warn!(listen = %settings.listen, "API authentication is OFF: every caller that reaches the API can read and change every database");
    }

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };

    let leading = (!settings.no_reconcile).then(|| {
        tokio::spawn(lead(
            state.clone(),
            settings.clone(),
            tls.clone(),
            gauges.clone(),
            dcs,
        ))
    });

    let registry =
        registry::RegistryService::new(state.store.clone(), settings.host_lease_ttl, tls.clone());
    let grpc_server = tonic::transport::Server::builder()
        .tls_config(tls.registry_server())
        .context("registry TLS")?
        .add_service(agent_proto::registry_server::RegistryServer::new(registry))
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(grpc),
            stopped(stop_rx.clone()),
        );
    let forgetting = tokio::spawn(state.known_hosts.clone().follow(state.store.clone()));
    let auth = api::auth::ApiAuth::new(state.store.clone(), authenticate);
    // /metrics is merged after the API's authentication layer, so it is open (ADR 012,
    // docs/operations.md); the request metrics wrap both, with the matched route known.
    let collect = move || gauges.collect();
    let router = api::router(state, auth)
        .merge(telemetry::http::metrics_router(collect))
        .layer(axum::middleware::from_fn(telemetry::http::track));
    let http_server: std::pin::Pin<
        Box<dyn std::future::Future<Output = std::io::Result<()>> + Send>,
    > = match api_tls {
        Some(config) => Box::pin(
            axum::serve(api_tls::TlsListener::new(http, config)?, router)
                .with_graceful_shutdown(stopped(stop_rx.clone()))
                .into_future(),
        ),
        None => Box::pin(
            axum::serve(http, router)
                .with_graceful_shutdown(stopped(stop_rx.clone()))
                .into_future(),
        ),
    };
    let served = tokio::try_join!(async { grpc_server.await.context("gRPC server") }, async {
        http_server.await.context("HTTP server")
    },);
    forgetting.abort();
    if let Some(l) = leading {
        l.abort();
    }
    served.map(|_| ())
}

fn replica_id(settings: &Settings) -> String {
    settings.replica_id.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        format!("{}-{}", host.trim(), std::process::id())
    })
}

/// Campaigns for leadership and, while leading, reconciles. Loses it gracefully: the
/// reconciler stops, and campaigning starts again.
async fn lead(
    state: AppState,
    settings: Settings,
    tls: Arc<tls::FleetTls>,
    gauges: gauges::FleetGauges,
    dcs: patroni::config::Dcs,
) {
    let id = replica_id(&settings);
    loop {
        let leadership = match leader::campaign(&state.store, &id, settings.leader_lease_ttl).await
        {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "leader election failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let (pokes, poked) = mpsc::unbounded_channel();
        let reconciler = reconciler::Reconciler::new(
            state.store.fenced(leadership.fence.clone()),
            state.manifest.clone(),
            dcs.clone(),
            pokes.clone(),
            tls.clone(),
        );
        gauges.leading(reconciler.fleet().clone());
        let hosts = tokio::spawn(gauges.clone().follow_hosts(state.store.clone()));
        let watcher = tokio::spawn(watch_changes(
            state.store.clone(),
            pokes.clone(),
            gauges.clone(),
        ));
        let retention = tokio::spawn(retention::run(
            Arc::new(state.store.fenced(leadership.fence.clone())),
            settings.retention(),
        ));
        let wal = tokio::spawn(
            reconciler
                .clone()
                .watch_wal(Duration::from_secs(settings.instance_check_seconds.max(1))),
        );
        let schedules = tokio::spawn(schedules::run(state.store.fenced(leadership.fence.clone())));
        let mut lost = leadership.lost.clone();
        reconciler
            .run(poked, async move {
                let _ = lost.wait_for(|l| *l).await;
            })
            .await;
        watcher.abort();
        retention.abort();
        wal.abort();
        schedules.abort();
        hosts.abort();
        gauges.stepped_down();
        reconciler.shutdown();
        tracing::warn!(replica_id = %id, "stepped down as leader");
    }
}

/// Turns etcd changes into pokes: a spec, record or task change wakes its database's worker,
/// a host change wakes them all (and has the host gauges read again), and so does a change
/// of Patroni's keys that matters ([`patroni::watch::Significance`]). The leader's own
/// instance and log writes are not watched.
async fn watch_changes(
    store: Store,
    pokes: mpsc::UnboundedSender<Poke>,
    gauges: gauges::FleetGauges,
) {
    let root = store.keys().root();
    let patroni_root = store.keys().patroni("");
    let mut patroni = patroni::watch::Significance::default();
    loop {
        let mut client = store.client();
        match client
            .watch(root.as_str(), Some(WatchOptions::new().with_prefix()))
            .await
        {
            Ok(mut stream) => {
                // Whatever changed while nobody watched is picked up by one full sweep.
                let _ = pokes.send(None);
                gauges.hosts_changed();
                while let Ok(Some(response)) = stream.message().await {
                    for event in response.events() {
                        let Some(kv) = event.kv() else { continue };
                        let key = String::from_utf8_lossy(kv.key());
                        if let Some(rest) = key.strip_prefix(&patroni_root) {
                            let deleted = event.event_type() == etcd_client::EventType::Delete;
                            let value = (!deleted).then(|| kv.value());
                            if let Some(db) = patroni.changed(rest, value) {
                                let _ = pokes.send(Some(db));
                            }
                            continue;
                        }
                        let Some(rest) = key.strip_prefix(&root) else {
                            continue;
                        };
                        let mut parts = rest.splitn(3, '/');
                        match (parts.next(), parts.next()) {
                            (Some("databases" | "tasks"), Some(db)) => {
                                let _ = pokes.send(Some(db.to_string()));
                            }
                            (Some("hosts" | "host-alive"), _) => {
                                let _ = pokes.send(None);
                                gauges.hosts_changed();
                            }
                            (Some("host-dial"), _) => gauges.hosts_changed(),
                            _ => {}
                        }
                    }
                }
                tracing::warn!("etcd watch ended; re-establishing");
            }
            Err(e) => tracing::warn!(error = %e, "etcd watch failed; retrying"),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
