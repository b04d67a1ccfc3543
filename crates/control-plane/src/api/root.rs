//! `GET /`: where the API is described, for clients that discover it (RFC 8631's
//! `service-desc` link relation).

use axum::Json;
use axum::http::header;
use axum::response::IntoResponse;
use serde::Serialize;

/// The OpenAPI document's path, as the `Link` header of `GET /` names it.
pub const OPENAPI_PATH: &str = "/v1/openapi.json";

/// The answer to `GET /`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct RootResponse {
    pub name: String,
    pub version: String,
    /// The path the v1 API is under.
    pub api: String,
    /// The OpenAPI document, also named by the `Link` header.
    pub service_desc: String,
}

#[utoipa::path(get, path = "/", tag = "system",
    responses((status = 200, body = RootResponse,
        headers(("Link" = String, description = "`</v1/openapi.json>; rel=\"service-desc\"` (RFC 8631)")))))]
pub(crate) async fn root() -> impl IntoResponse {
    (
        [(
            header::LINK,
            format!("<{OPENAPI_PATH}>; rel=\"service-desc\""),
        )],
        Json(RootResponse {
            name: "berth control plane".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            api: "/v1".into(),
            service_desc: OPENAPI_PATH.into(),
        }),
    )
}
