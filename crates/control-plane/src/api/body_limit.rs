//! The largest request body the API reads, and its refusal in the API's error shape. axum's
//! body extractors refuse a larger body with a plain-text 413 ("Failed to buffer the request
//! body: length limit exceeded"); [`json_413`] rewrites any such answer into the
//! `ApiErrorBody` every other refusal has, naming the limit.

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::ApiError;

/// Largest request body, in bytes (2 MiB, axum's default, stated here so the refusal can
/// name it). A full database spec is a few kilobytes.
pub const MAX_BODY_BYTES: usize = 2 * 1024 * 1024;

/// The layer that sets the limit for every body extractor.
pub(crate) fn limit() -> axum::extract::DefaultBodyLimit {
    axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES)
}

/// Turns a 413 that is not already the API's JSON into `ApiError::PayloadTooLarge`.
pub(crate) async fn json_413(response: Response) -> Response {
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if response.status() == StatusCode::PAYLOAD_TOO_LARGE && !is_json {
        ApiError::PayloadTooLarge(MAX_BODY_BYTES).into_response()
    } else {
        response
    }
}
