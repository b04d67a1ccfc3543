//! TEST FIXTURE: stands in for the third-party mcp, rag and postgrest images, which cannot be
//! fetched on machines without a registry. It is not one of those services.
//!
//! It does what the real images do with what berth gives them, so end-to-end tests check
//! berth's side for real: it reads the files `service-config` rendered, connects to Postgres
//! with the managed credentials following libpq's multi-host rules (see [`connect`]), over
//! TLS verified against the fleet CA when the files say `sslmode=verify-full`, and serves
//! `GET /health` (200 only while its connection answers, checked per request; `ssl` says
//! whether the server sees the session as TLS), `GET /config` (the parsed connection
//! without the password) and, standing in for PostgREST, `GET /{table}` (the table's rows,
//! read as the anonymous role: [`rows`]).

pub mod connect;
pub mod probe;
pub mod rows;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use serde_json::{Value, json};
use service_config::{ParsedConnection, PostgrestApi, RenderedFile};
use spec::ServiceType;
use tokio::sync::{RwLock, mpsc};
use tracing::{info, warn};

use crate::connect::{Role, Session, Tls, Verdict, verdict};

const HEALTH_QUERY_TIMEOUT: Duration = Duration::from_secs(2);
const RECONNECT_MIN: Duration = Duration::from_millis(500);
const RECONNECT_MAX: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Parse(#[from] service_config::ParseError),
    #[error("listening on port {port}: {source}")]
    Listen { port: u16, source: std::io::Error },
    #[error("{0}")]
    Tls(#[from] connect::TlsError),
}

fn read_files(service_type: ServiceType, dir: &Path) -> Result<Vec<RenderedFile>, StartError> {
    let mut files = Vec::new();
    for name in service_config::config_files(service_type) {
        let path = dir.join(name);
        let content = std::fs::read(&path).map_err(|source| StartError::Read { path, source })?;
        files.push(RenderedFile {
            path: (*name).to_owned(),
            content,
        });
    }
    Ok(files)
}

/// Reads and parses the rendered files of `service_type` from `dir`.
pub fn load_config(service_type: ServiceType, dir: &Path) -> Result<ParsedConnection, StartError> {
    Ok(service_config::parse_rendered(
        service_type,
        &read_files(service_type, dir)?,
    )?)
}

/// For `postgrest`, the anonymous role and schemas its rendered file in `dir` names, which
/// `GET /{table}` reads with; None for the other types, which serve no rows.
pub fn load_api(service_type: ServiceType, dir: &Path) -> Result<Option<PostgrestApi>, StartError> {
    if service_type != ServiceType::Postgrest {
        return Ok(None);
    }
    Ok(Some(service_config::postgrest_api(&read_files(
        service_type,
        dir,
    )?)?))
}

struct Current {
    generation: u64,
    client: Arc<tokio_postgres::Client>,
    host: String,
    port: u16,
}

struct App {
    service_type: ServiceType,
    conn: ParsedConnection,
    /// Set for a postgrest stand-in: what `GET /{table}` reads as.
    api: Option<PostgrestApi>,
    tls: Tls,
    current: RwLock<Option<Current>>,
    /// Generations whose session failed a health check; the manager drops that session.
    failed: mpsc::UnboundedSender<u64>,
    /// Last /health answer (0 unknown, 1 healthy, 2 unhealthy), to log changes only.
    last_health: AtomicU8,
}

/// Connects (with `tls`, see [`Tls::from_connection`]), keeps reconnecting, and serves HTTP
/// on `listener` until `shutdown` resolves; with `api` (see [`load_api`]) also the rows of
/// tables.
pub async fn run(
    service_type: ServiceType,
    conn: ParsedConnection,
    api: Option<PostgrestApi>,
    tls: Tls,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (failed_tx, failed_rx) = mpsc::unbounded_channel();
    let app = Arc::new(App {
        service_type,
        conn,
        api,
        tls,
        current: RwLock::new(None),
        failed: failed_tx,
        last_health: AtomicU8::new(0),
    });
    let manager = tokio::spawn(manage_connection(app.clone(), failed_rx));
    let router = axum::Router::new()
        .route("/health", get(health))
        .route("/config", get(config))
        .route("/{table}", get(rows::table))
        .with_state(app);
    let served = axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await;
    manager.abort();
    served
}

/// Binds the rendered listen port on all addresses.
pub async fn bind(port: u16) -> Result<tokio::net::TcpListener, StartError> {
    tokio::net::TcpListener::bind(("0.0.0.0", port))
        .await
        .map_err(|source| StartError::Listen { port, source })
}

async fn manage_connection(app: Arc<App>, mut failed: mpsc::UnboundedReceiver<u64>) {
    let mut generation = 0u64;
    let mut backoff = RECONNECT_MIN;
    loop {
        match connect::connect(&app.conn, &app.tls).await {
            Ok(Session {
                client,
                mut driver,
                host,
                port,
                role,
                ssl,
            }) => {
                generation += 1;
                backoff = RECONNECT_MIN;
                info!(%host, port, in_recovery = role.in_recovery, ssl, user = %app.conn.username, "connected");
                *app.current.write().await = Some(Current {
                    generation,
                    client: Arc::new(client),
                    host: host.clone(),
                    port,
                });
                let reason = loop {
                    tokio::select! {
                        ended = &mut driver => break match ended {
                            Ok(Ok(())) => "the server closed the connection".to_owned(),
                            Ok(Err(e)) => connect::with_causes(&e),
                            Err(e) => format!("connection task ended: {e}"),
                        },
                        Some(g) = failed.recv() => {
                            // Reports about an earlier session are stale.
                            if g == generation {
                                driver.abort();
                                break "a health check failed".to_owned();
                            }
                        }
                    }
                };
                *app.current.write().await = None;
                warn!(%host, port, %reason, "disconnected");
            }
            Err(e) => warn!(error = %e, "no usable database host"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(RECONNECT_MAX);
    }
}

fn base_body(app: &App) -> serde_json::Map<String, Value> {
    let mut body = serde_json::Map::new();
    body.insert("type".into(), json!(app.service_type.as_str()));
    body.insert("user".into(), json!(app.conn.username));
    body.insert(
        "target_session_attrs".into(),
        json!(app.conn.target_session_attrs),
    );
    body.insert("connected_host".into(), Value::Null);
    body.insert("connected_port".into(), Value::Null);
    body.insert("in_recovery".into(), Value::Null);
    body.insert("ssl".into(), Value::Null);
    body
}

async fn health(State(app): State<Arc<App>>) -> (StatusCode, Json<Value>) {
    let mut body = base_body(&app);
    let current = app
        .current
        .read()
        .await
        .as_ref()
        .map(|c| (c.generation, c.client.clone(), c.host.clone(), c.port));
    let (code, status) = match current {
        None => (StatusCode::SERVICE_UNAVAILABLE, "disconnected".to_owned()),
        Some((generation, client, host, port)) => {
            body.insert("connected_host".into(), json!(host));
            body.insert("connected_port".into(), json!(port));
            let answer = tokio::time::timeout(HEALTH_QUERY_TIMEOUT, async {
                client.simple_query("SELECT 1").await?;
                Ok::<_, tokio_postgres::Error>((
                    connect::role_of(&client).await?,
                    connect::ssl_of(&client).await?,
                ))
            })
            .await;
            match answer {
                Ok(Ok((role, ssl))) => {
                    body.insert("in_recovery".into(), json!(role.in_recovery));
                    body.insert("ssl".into(), json!(ssl));
                    // A failover can turn the server under an open session into the wrong
                    // role; libpq would not notice, but a service pinned to the primary
                    // should stop claiming health and reconnect.
                    if verdict(&app.conn.target_session_attrs, role) == Verdict::Reject {
                        let _ = app.failed.send(generation);
                        (StatusCode::SERVICE_UNAVAILABLE, wrong_role(role))
                    } else {
                        (StatusCode::OK, "ok".to_owned())
                    }
                }
                Ok(Err(e)) => {
                    let _ = app.failed.send(generation);
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("query failed: {}", connect::with_causes(&e)),
                    )
                }
                Err(_) => {
                    let _ = app.failed.send(generation);
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("no answer within {HEALTH_QUERY_TIMEOUT:?}"),
                    )
                }
            }
        }
    };
    let healthy = code == StatusCode::OK;
    let now = if healthy { 1 } else { 2 };
    if app.last_health.swap(now, Ordering::Relaxed) != now {
        if healthy {
            info!("health: ok");
        } else {
            warn!(%status, "health: failing");
        }
    }
    body.insert(
        "status".into(),
        json!(if healthy { "ok" } else { "unavailable" }),
    );
    if !healthy {
        body.insert("error".into(), json!(status));
    }
    (code, Json(Value::Object(body)))
}

fn wrong_role(role: Role) -> String {
    format!(
        "server role changed: in_recovery={} read_only={}",
        role.in_recovery, role.read_only
    )
}

async fn config(State(app): State<Arc<App>>) -> Json<Value> {
    let c = &app.conn;
    let hosts: Vec<Value> = c
        .hosts
        .iter()
        .map(|(h, p)| json!({"host": h, "port": p}))
        .collect();
    Json(json!({
        "type": app.service_type.as_str(),
        "hosts": hosts,
        "dbname": c.dbname,
        "username": c.username,
        "target_session_attrs": c.target_session_attrs,
        "sslmode": c.sslmode,
        "sslrootcert": c.sslrootcert,
        "listen_port": c.listen_port,
    }))
}
