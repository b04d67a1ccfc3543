//! The v1 HTTP API. Handlers are thin: they parse, call the store, and shape the answer.
//!
//! [`routes`] is the one list of what the API serves: [`router`] is built from it alone, and
//! a test compares it with the OpenAPI document ([`openapi_json`]), so a route cannot be
//! served without being documented, nor documented without being served.

mod all_tasks;
pub mod auth;
mod backups;
mod body_limit;
mod databases;
pub mod error;
mod host_tasks;
mod hosts;
mod openapi;
mod operations;
mod root;
mod service_types;
mod tasks;

use axum::Router;
use axum::body::Bytes;
use axum::http::Method;
use axum::routing::{MethodFilter, MethodRouter, on};
use serde_json::Value;

use crate::state::AppState;
pub use body_limit::MAX_BODY_BYTES;
pub use error::ApiError;
pub use openapi::openapi_json;

/// One route: its method, its path (axum's `{param}` syntax, which is OpenAPI's) and its
/// handler.
pub struct Route {
    pub method: Method,
    pub path: &'static str,
    handler: MethodRouter<AppState>,
}

/// A [`Route`] whose method is named once, for the table and for the handler's filter.
macro_rules! route {
    ($method:ident $path:literal => $handler:expr) => {
        Route {
            method: Method::$method,
            path: $path,
            handler: on(MethodFilter::$method, $handler),
        }
    };
}

/// Every route the API serves, with the reference API's paths and parameter names.
pub fn routes() -> Vec<Route> {
    vec![
        route!(GET "/" => root::root),
        route!(GET "/v1/databases" => databases::list),
        route!(POST "/v1/databases" => databases::create),
        route!(GET "/v1/databases/{database_id}" => databases::get),
        route!(POST "/v1/databases/{database_id}" => databases::update),
        route!(DELETE "/v1/databases/{database_id}" => databases::delete),
        route!(POST "/v1/databases/{database_id}/nodes/{node_name}/switchover" => operations::switchover),
        route!(POST "/v1/databases/{database_id}/nodes/{node_name}/failover" => operations::failover),
        route!(POST "/v1/databases/{database_id}/nodes/{node_name}/backups" => operations::backup),
        route!(GET "/v1/databases/{database_id}/nodes/{node_name}/backups" => backups::list),
        route!(POST "/v1/databases/{database_id}/restore" => operations::restore),
        route!(POST "/v1/databases/{database_id}/instances/{instance_id}/restart" => operations::restart),
        route!(POST "/v1/databases/{database_id}/instances/{instance_id}/stop-instance" => operations::stop),
        route!(POST "/v1/databases/{database_id}/instances/{instance_id}/start-instance" => operations::start),
        route!(GET "/v1/databases/{database_id}/tasks" => tasks::list),
        route!(GET "/v1/databases/{database_id}/tasks/{task_id}" => tasks::get),
        route!(GET "/v1/databases/{database_id}/tasks/{task_id}/log" => tasks::log),
        route!(GET "/v1/databases/{database_id}/tasks/{task_id}/cancel" => all_tasks::cancel),
        route!(POST "/v1/databases/{database_id}/tasks/{task_id}/cancel" => tasks::cancel),
        route!(GET "/v1/tasks" => all_tasks::list),
        route!(GET "/v1/hosts" => hosts::list),
        route!(GET "/v1/hosts/{host_id}" => hosts::get),
        route!(DELETE "/v1/hosts/{host_id}" => hosts::remove),
        route!(POST "/v1/hosts/{host_id}/rejoin-token" => hosts::rejoin_token),
        route!(GET "/v1/hosts/{host_id}/tasks" => host_tasks::list),
        route!(GET "/v1/hosts/{host_id}/tasks/{task_id}" => host_tasks::get),
        route!(GET "/v1/hosts/{host_id}/tasks/{task_id}/logs" => host_tasks::log),
        route!(GET "/v1/service-types" => service_types::list),
        route!(GET "/v1/version" => version),
        route!(GET "/v1/openapi.json" => openapi),
    ]
}

/// Routes that other routers add to the API's listener (`crate::run` merges them after the
/// authentication layer): documented in the OpenAPI document too.
pub const MERGED_ROUTES: &[(&str, &str)] = &[("GET", "/metrics")];

/// The API's routes behind bearer-token authentication ([`auth`]), which `auth` may leave off.
pub fn router(state: AppState, auth: auth::ApiAuth) -> Router {
    // Routes of one path merge into one method router; a method listed twice panics here.
    let mut router = Router::new();
    for route in routes() {
        router = router.route(route.path, route.handler);
    }
    router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(body_limit::limit())
        .layer(axum::middleware::map_response(body_limit::json_413))
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

/// The page [`QueryParams::task_page`] asks for.
pub(crate) struct TaskPage {
    pub(crate) limit: i64,
    pub(crate) after: Option<String>,
    pub(crate) order: store::ListOrder,
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

/// `sort_order`'s spellings, the reference API's: the short and the long forms of each.
#[derive(Debug, Clone, Copy, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
#[allow(dead_code)] // Read by the OpenAPI document only; `QueryParams::sort_order` parses.
pub(crate) enum SortOrder {
    Asc,
    Ascend,
    Ascending,
    Desc,
    Descend,
    Descending,
}

impl QueryParams {
    /// `sort_order`: `asc`, `ascend` or `ascending` for oldest first, `desc`, `descend` or
    /// `descending` (the default) for newest first.
    pub(crate) fn sort_order(&self) -> Result<store::ListOrder, ApiError> {
        match self.get("sort_order") {
            None | Some("desc" | "descend" | "descending") => Ok(store::ListOrder::NewestFirst),
            Some("asc" | "ascend" | "ascending") => Ok(store::ListOrder::OldestFirst),
            Some(other) => Err(ApiError::invalid(
                "sort_order",
                format!(
                    "expected asc, ascend, ascending, desc, descend or descending, got {other:?}"
                ),
            )),
        }
    }

    /// A page of a task list, as every task list of the reference API takes it: `limit`
    /// (1..=1000, default 100), `after_task_id` (an exclusive cursor) and `sort_order`.
    pub(crate) fn task_page(&self) -> Result<TaskPage, ApiError> {
        Ok(TaskPage {
            limit: self.limit(100, 1000)?,
            after: self.uuid("after_task_id")?,
            order: self.sort_order()?,
        })
    }

    /// A task or log entry id the API returned (a UUID), as a cursor.
    pub(crate) fn uuid(&self, name: &str) -> Result<Option<String>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => uuid::Uuid::parse_str(v)
                .map(|u| Some(u.to_string()))
                .map_err(|_| {
                    ApiError::invalid(
                        name,
                        format!("expected an id returned by this API, got {v:?}"),
                    )
                }),
        }
    }

    /// `true` or `false` (also `1` / `0`); absent is false.
    pub(crate) fn flag(&self, name: &str) -> Result<bool, ApiError> {
        match self.get(name) {
            None | Some("false" | "0") => Ok(false),
            Some("true" | "1") => Ok(true),
            Some(other) => Err(ApiError::invalid(
                name,
                format!("expected true or false, got {other:?}"),
            )),
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

#[utoipa::path(get, path = "/v1/version", tag = "system",
    responses((status = 200, body = spec::VersionResponse)))]
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

/// This document.
#[utoipa::path(get, path = "/v1/openapi.json", tag = "system",
    responses((status = 200, description = "the OpenAPI 3.1 document", content_type = "application/json")))]
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
