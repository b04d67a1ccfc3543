//! PostgREST's plainest read, as the fixture stands in for it: `GET /{table}` answers the
//! table's rows as a JSON array, read as the anonymous role on the open session.
//!
//! Like PostgREST (docs, "Transactions" and "Anonymous Role"), each request is one
//! transaction in which the login role switches to `db-anon-role` (`SET LOCAL ROLE`, so the
//! login role must be a member of it) and reads from the first of `db-schemas`. So what the
//! answer shows is berth's side: which node the session reached, and whether the roles and
//! grants there let the service read. No filters, ordering or JWTs.
//!
//! Statuses, after PostgREST's mapping of SQLSTATEs: 200 with the rows; 401 `42501`
//! (insufficient privilege, or not a member of the anonymous role, as anonymous requests
//! get); 404 `42P01` (no such table) or a name that is not a plain identifier; 503 without a
//! session (the session is then dropped, as a failed health check drops it); 500 for
//! other errors. Errors are `{"code", "message"}`. The `x-berth-connected-host` header names
//! the host the session is on, so a test can tell which node answered.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::App;

/// How long one read may take before the request answers 503.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// The response header naming the host the answering session is connected to.
pub const CONNECTED_HOST_HEADER: &str = "x-berth-connected-host";

fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    (
        status,
        Json(json!({"code": code, "message": message.into()})),
    )
        .into_response()
}

/// A name PostgREST would take as a table in the URL path without quoting: letters, digits
/// and underscores, not starting with a digit.
fn plain_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The SQL of one read: the role switch and the select, sent as one simple query so that
/// they run in one implicit transaction (Postgres docs, "Multiple Statements in a Simple
/// Query") that nothing else on the session can interleave with.
pub fn read_sql(anon_role: &str, schema: &str, table: &str) -> String {
    format!(
        "SET LOCAL ROLE {}; SELECT coalesce(json_agg(t), '[]'::json)::text FROM {}.{} t",
        quote_ident(anon_role),
        quote_ident(schema),
        quote_ident(table)
    )
}

pub(crate) async fn table(State(app): State<Arc<App>>, Path(table): Path<String>) -> Response {
    let Some(api) = &app.api else {
        return error(
            StatusCode::NOT_FOUND,
            "PGRST000",
            "not a postgrest stand-in",
        );
    };
    if !plain_identifier(&table) {
        return error(
            StatusCode::NOT_FOUND,
            "42P01",
            format!("{table:?} is not a table name"),
        );
    }
    let current = app
        .current
        .read()
        .await
        .as_ref()
        .map(|c| (c.generation, c.client.clone(), c.host.clone()));
    let Some((generation, client, host)) = current else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "PGRST001",
            "no database connection",
        );
    };
    let sql = read_sql(&api.anon_role, &api.schemas[0], &table);
    let answer = tokio::time::timeout(READ_TIMEOUT, client.simple_query(&sql)).await;
    let messages = match answer {
        Ok(Ok(m)) => m,
        Ok(Err(e)) => {
            let Some(db) = e.as_db_error() else {
                let _ = app.failed.send(generation);
                return error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "PGRST001",
                    crate::connect::with_causes(&e),
                );
            };
            let status = match db.code().code() {
                "42501" => StatusCode::UNAUTHORIZED,
                "42P01" => StatusCode::NOT_FOUND,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            };
            return error(status, db.code().code(), db.message());
        }
        Err(_) => {
            let _ = app.failed.send(generation);
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "PGRST001",
                format!("no answer within {READ_TIMEOUT:?}"),
            );
        }
    };
    let rows = messages.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
        _ => None,
    });
    let Some(rows) = rows else {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "PGRST000",
            "the read returned no row",
        );
    };
    let mut response = (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json; charset=utf-8")],
        rows,
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(&host) {
        response.headers_mut().insert(CONNECTED_HOST_HEADER, v);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_identifiers_are_tables() {
        for ok in ["kv", "_t1", "Orders_2024"] {
            assert!(plain_identifier(ok), "{ok}");
        }
        for bad in ["", "1t", "kv;drop", "a.b", "a\"b", "sp ace", "é"] {
            assert!(!plain_identifier(bad), "{bad}");
        }
    }

    #[test]
    fn the_read_quotes_every_name() {
        assert_eq!(
            read_sql("svc_rest_ro", "api", "kv"),
            "SET LOCAL ROLE \"svc_rest_ro\"; SELECT coalesce(json_agg(t), '[]'::json)::text \
             FROM \"api\".\"kv\" t"
        );
        assert!(read_sql("we\"ird", "public", "t").starts_with("SET LOCAL ROLE \"we\"\"ird\";"));
    }
}
