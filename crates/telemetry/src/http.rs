//! HTTP: the request metrics of an axum router, and `GET /metrics`.

use std::future::Future;
use std::time::Instant;

use axum::Router;
use axum::extract::{MatchedPath, Request};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics::SharedString;

use crate::control_plane;

/// The content type of the text exposition format, version 0.0.4 (Prometheus, "Exposition
/// formats"), which every Prometheus server and most other scrapers read.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Middleware recording [`control_plane::HTTP_REQUESTS`] and
/// [`control_plane::HTTP_REQUEST_DURATION`] for every request: add it with
/// `axum::middleware::from_fn(track)` through [`Router::layer`] (not `route_layer`) once
/// every route is in place, so that it sees the route template the router matched and the
/// requests no route serves too. Labels are the template, never the raw path: one series
/// per route, whatever ids callers send.
pub async fn track(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = method_label(request.method());
    let route = match request.extensions().get::<MatchedPath>() {
        Some(path) => SharedString::from_owned(path.as_str().to_owned()),
        None => SharedString::const_str("unmatched"),
    };
    let response = next.run(request).await;
    control_plane::http_request(
        method,
        route,
        status_label(response.status()),
        started.elapsed(),
    );
    response
}

fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        Method::TRACE => "TRACE",
        Method::CONNECT => "CONNECT",
        _ => "other",
    }
}

/// The status code as a label; the codes this API answers with need no allocation.
fn status_label(status: StatusCode) -> SharedString {
    const COMMON: [&str; 16] = [
        "200", "201", "204", "304", "400", "401", "403", "404", "405", "409", "413", "415", "422",
        "500", "503", "507",
    ];
    let code = status.as_str();
    match COMMON.iter().find(|c| **c == code) {
        Some(c) => SharedString::const_str(c),
        None => SharedString::from_owned(code.to_owned()),
    }
}

/// A router serving `GET /metrics`: `collect` runs first (to set gauges computed from what
/// the process holds in memory), then every metric is rendered in the text exposition
/// format. 503 if [`crate::install`] was never called.
pub fn metrics_router<S>(collect: impl Fn() + Clone + Send + Sync + 'static) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    Router::new().route(
        "/metrics",
        get(move || {
            let collect = collect.clone();
            async move {
                collect();
                scrape()
            }
        }),
    )
}

fn scrape() -> Response {
    match crate::render() {
        Some(text) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response(),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "no metrics recorder is installed in this process",
        )
            .into_response(),
    }
}

/// Serves `GET /metrics` alone on `listener` (an agent's `--metrics-listen`) until
/// `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, metrics_router::<()>(|| {}))
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::Request;
    use prom_text_format_parser::Scrape;
    use tower::ServiceExt;

    use super::*;

    fn app() -> Router {
        Router::new()
            .route("/v1/databases/{id}", get(|| async { "db" }))
            .merge(metrics_router(|| {}))
            .fallback(|| async { StatusCode::NOT_FOUND })
            .layer(axum::middleware::from_fn(track))
    }

    async fn call(app: &Router, uri: &str) -> (StatusCode, String, Option<String>) {
        let response = app
            .clone()
            .oneshot(Request::get(uri).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_string());
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        (
            status,
            String::from_utf8(body.to_vec()).unwrap(),
            content_type,
        )
    }

    /// The value of the sample of `name` whose labels include `labels`; 0 if none.
    fn sample(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
        scrape
            .metrics
            .iter()
            .filter(|m| m.name == name)
            .flat_map(|m| &m.samples)
            .find(|s| {
                labels
                    .iter()
                    .all(|(k, v)| s.labels.iter().any(|l| l.key == *k && l.value == *v))
            })
            .map_or(0.0, |s| s.value.value.as_f64())
    }

    /// Requests are counted under their route template (two ids, one series), requests no
    /// route serves under `unmatched`, and the scrape parses as the text format.
    #[tokio::test]
    async fn requests_are_counted_by_route_template() {
        crate::install();
        let app = app();
        let (_, before, _) = call(&app, "/metrics").await;
        // Nothing recorded yet renders as an empty body, which this parser refuses.
        let before = if before.is_empty() {
            Scrape { metrics: vec![] }
        } else {
            Scrape::parse(&before).expect("the exposition parses")
        };
        call(&app, "/v1/databases/one").await;
        call(&app, "/v1/databases/two").await;
        call(&app, "/no/such/thing").await;
        let (status, text, content_type) = call(&app, "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(content_type.as_deref(), Some(CONTENT_TYPE));
        let after = Scrape::parse(&text).expect("the exposition parses");
        let db = [
            ("method", "GET"),
            ("route", "/v1/databases/{id}"),
            ("status", "200"),
        ];
        let count =
            |s: &Scrape, labels: &[(&str, &str)]| sample(s, control_plane::HTTP_REQUESTS, labels);
        assert_eq!(count(&after, &db) - count(&before, &db), 2.0, "{text}");
        let unmatched = [("route", "unmatched"), ("status", "404")];
        assert_eq!(
            count(&after, &unmatched) - count(&before, &unmatched),
            1.0,
            "{text}"
        );
        assert!(
            !text.contains("/v1/databases/one"),
            "a raw path became a label: {text}"
        );
        assert!(
            text.contains("berth_http_request_duration_seconds_bucket"),
            "request durations are a histogram: {text}"
        );
    }
}
