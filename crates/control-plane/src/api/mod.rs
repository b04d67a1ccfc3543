//! The v1 HTTP API. Handlers are thin: they parse, call the store, and shape the answer.

pub mod auth;
mod databases;
pub mod error;
mod hosts;
mod openapi;
mod tasks;

use axum::Router;
use axum::body::Bytes;
use axum::routing::{get, post};
use serde_json::Value;

use crate::state::AppState;
pub use error::ApiError;
pub use openapi::openapi_json;

/// The API's routes behind bearer-token authentication ([`auth`]), which `auth` may leave off.
pub fn router(state: AppState, auth: auth::ApiAuth) -> Router {
    Router::new()
        .route(
            "/v1/databases",
            get(databases::list).post(databases::create),
        )
        .route(
            "/v1/databases/{id}",
            get(databases::get)
                .post(databases::update)
                .delete(databases::delete),
        )
        .route("/v1/databases/{id}/tasks", get(tasks::list))
        .route("/v1/databases/{id}/tasks/{task_id}", get(tasks::get))
        .route("/v1/databases/{id}/tasks/{task_id}/log", get(tasks::log))
        .route(
            "/v1/databases/{id}/tasks/{task_id}/cancel",
            post(tasks::cancel),
        )
        .route("/v1/hosts", get(hosts::list))
        .route("/v1/hosts/{id}", get(hosts::get).delete(hosts::remove))
        .route("/v1/hosts/{id}/rejoin-token", post(hosts::rejoin_token))
        .route("/v1/version", get(version))
        .route("/v1/openapi.json", get(openapi))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            auth,
            auth::require_token,
        ))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(state)
}

/// Parses a request body ourselves, so malformed JSON gets the API's error shape rather
/// than the framework's plain-text rejection.
pub(crate) fn json_body(body: &Bytes) -> Result<Value, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::invalid(
            "",
            "request body: expected a JSON object",
        ));
    }
    serde_json::from_slice(body).map_err(|e| {
        ApiError::invalid(
            "",
            format!(
                "malformed JSON at line {} column {}: {e}",
                e.line(),
                e.column()
            ),
        )
    })
}

/// Query parameters, read leniently: an unknown parameter is ignored as HTTP clients expect,
/// but a known one with a bad value is a 400 naming it.
pub(crate) struct QueryParams(Vec<(String, String)>);

impl QueryParams {
    pub(crate) fn parse(raw: Option<String>) -> Self {
        let raw = raw.unwrap_or_default();
        QueryParams(
            raw.split('&')
                .filter(|p| !p.is_empty())
                .map(|pair| {
                    let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                    (percent_decode(k), percent_decode(v))
                })
                .collect(),
        )
    }

    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    }

    pub(crate) fn limit(&self, default: i64, max: i64) -> Result<i64, ApiError> {
        match self.get("limit") {
            None => Ok(default),
            Some(v) => match v.parse::<i64>() {
                Ok(n) if (1..=max).contains(&n) => Ok(n),
                _ => Err(ApiError::invalid(
                    "limit",
                    format!("expected an integer from 1 to {max}, got {v:?}"),
                )),
            },
        }
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn version() -> axum::Json<spec::VersionResponse> {
    axum::Json(version_info())
}

/// What this build is: the crate version, and the commit and its time that `build.rs`
/// recorded; the architecture in Go's names, as the reference API reports it.
pub fn version_info() -> spec::VersionResponse {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        other => other,
    };
    spec::VersionResponse {
        version: env!("CARGO_PKG_VERSION").into(),
        api_version: "v1".into(),
        revision: env!("BERTH_REVISION").into(),
        revision_time: chrono::DateTime::parse_from_rfc3339(env!("BERTH_REVISION_TIME"))
            .ok()
            .map(|t| t.with_timezone(&chrono::Utc)),
        arch: arch.into(),
    }
}

async fn openapi() -> axum::response::Response {
    use axum::response::IntoResponse;
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        openapi_json(),
    )
        .into_response()
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::NotFound(format!("no such resource: {}", uri.path()))
}

async fn method_not_allowed(
    method: axum::http::Method,
    uri: axum::http::Uri,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let body = spec::ApiErrorBody {
        name: "method_not_allowed".into(),
        message: format!("{method} is not allowed on {}", uri.path()),
        errors: vec![],
    };
    (axum::http::StatusCode::METHOD_NOT_ALLOWED, axum::Json(body)).into_response()
}
