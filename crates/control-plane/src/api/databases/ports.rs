//! Fixed host ports a spec asks for that another database already holds. A host port is
//! published once per engine, so a second database asking for it would be accepted and then
//! fail on every create with "port is already taken"; the API refuses it up front instead.
//! Within one spec the parser already refuses duplicates (`spec::parse`).
//!
//! What counts as taken: the fixed ports (not `0`) of the other databases' desired instances
//! as their stored specs say (the database's `port` on every host of every node, a service's
//! `port` on every host of the service), except databases being deleted, which want nothing.
//! It is read when the request is checked, not in the transaction that stores it: two
//! requests racing for one port can both pass, and the later one fails at run time as before.

use std::collections::BTreeMap;

use spec::{DatabaseSpec, DatabaseState, FieldError, InvalidInput};

use crate::api::ApiError;
use crate::state::AppState;

/// Each fixed host port `spec` publishes, as (field path, host id, port).
fn fixed_ports(spec: &DatabaseSpec) -> Vec<(String, &str, u16)> {
    let mut out = Vec::new();
    if let Some(port) = spec.port.filter(|p| *p != 0) {
        for node in &spec.nodes {
            for host in &node.host_ids {
                out.push(("spec.port".to_string(), host.as_str(), port));
            }
        }
    }
    for (i, s) in spec.services.iter().enumerate() {
        if let Some(port) = s.port.filter(|p| *p != 0) {
            for host in &s.host_ids {
                out.push((format!("spec.services[{i}].port"), host.as_str(), port));
            }
        }
    }
    out
}

/// One error per field of `spec` whose fixed port is in `taken` ((host, port) -> the
/// database holding it and its field), naming the host, the database and its field.
fn conflicts(
    spec: &DatabaseSpec,
    taken: &BTreeMap<(String, u16), (String, String)>,
) -> Vec<FieldError> {
    let mut errors: Vec<FieldError> = Vec::new();
    for (path, host, port) in fixed_ports(spec) {
        if errors.iter().any(|e| e.path == path) {
            continue;
        }
        if let Some((database, field)) = taken.get(&(host.to_string(), port)) {
            errors.push(FieldError::new(
                path,
                format!(
                    "port {port} on host \"{host}\" is already taken by database \"{database}\" ({field})"
                ),
            ));
        }
    }
    errors
}

/// Refuses `spec` (of database `database_id`) with 409 when a fixed host port it asks for
/// is taken on that host by another database (see the module docs). Reads the stored
/// specs only when `spec` fixes a port.
pub(crate) async fn check_ports(
    app: &AppState,
    database_id: &str,
    spec: &DatabaseSpec,
) -> Result<(), ApiError> {
    if fixed_ports(spec).is_empty() {
        return Ok(());
    }
    let mut taken = BTreeMap::new();
    for other in app.store.list_databases().await? {
        if other.record.id == database_id || other.record.state == DatabaseState::Deleting {
            continue;
        }
        for (field, host, port) in fixed_ports(&other.spec) {
            taken
                .entry((host.to_string(), port))
                .or_insert_with(|| (other.record.id.clone(), field));
        }
    }
    let errors = conflicts(spec, &taken);
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ApiError::PortTaken(InvalidInput { errors }))
    }
}
