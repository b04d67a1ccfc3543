//! The one entry point for request bodies: untyped JSON in, a checked [`DatabaseSpec`] or
//! every problem with its JSON path out.
//!
//! The body is read field by field from a `serde_json::Value` rather than deserialized, so
//! one wrong field does not hide the others and no input can make it panic. Paths are rooted
//! at the body: `id`, `spec.nodes[0].host_ids[2]`, `spec.services[0].config.llm_model`.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value};

use crate::catalog;
use crate::check::{Errors, Obj, expect_int, expect_str, index};
use crate::ident::{validate_id, validate_node_name, validate_pg_identifier};
use crate::manifest::{Manifest, validate_version_request};
use crate::quantity::{parse_cpus, parse_memory};
use crate::secrets::carry_over_config;
use crate::{
    DatabaseConnection, DatabaseSpec, InvalidInput, NodeSpec, ServiceSpec, ServiceType,
    TargetSessionAttrs,
};

/// What a request is checked against.
#[derive(Debug, Clone, Copy)]
pub struct ValidationContext<'a> {
    pub manifest: &'a Manifest,
    /// Registered host ids; None = do not check hosts.
    pub known_hosts: Option<&'a BTreeSet<String>>,
    /// The stored spec when this is an update: omitted secrets are carried over before validating.
    pub previous: Option<&'a DatabaseSpec>,
}

/// A checked `POST /v1/databases` body.
#[derive(Debug, Clone, PartialEq)]
pub struct CreateRequest {
    /// The database id the caller chose; `None` lets the control plane pick one.
    pub id: Option<String>,
    /// The owner's identifier ([`crate::ident::validate_tenant_id`]), if given.
    pub tenant_id: Option<String>,
    pub spec: DatabaseSpec,
}

/// A checked `POST /v1/databases/{id}` body.
#[derive(Debug, Clone, PartialEq)]
pub struct UpdateRequest {
    /// The owner's identifier, if given (absent: the stored one is kept).
    pub tenant_id: Option<String>,
    pub spec: DatabaseSpec,
}

/// Checks a database id: 1-36 lowercase letters, digits or hyphens, starting and ending with
/// a letter or digit, without `--`.
pub fn validate_database_id(id: &str) -> Result<(), String> {
    validate_id(id)
}

/// Parses and checks a `POST /v1/databases` body, `{id?, tenant_id?, spec}`.
pub fn parse_create_request(
    body: &Value,
    ctx: &ValidationContext<'_>,
) -> Result<CreateRequest, InvalidInput> {
    let mut e = Errors::default();
    let Some(o) = Obj::of(body, String::new(), &mut e) else {
        return Err(InvalidInput { errors: e.0 });
    };
    o.deny_unknown(&["id", "tenant_id", "spec"], &mut e);
    let id = o
        .get("id")
        .and_then(|v| expect_str(v, "id", &mut e))
        .and_then(|id| match validate_database_id(id) {
            Ok(()) => Some(id.to_string()),
            Err(msg) => {
                e.push("id", msg);
                None
            }
        });
    let tenant_id = tenant_id(o.get("tenant_id"), &mut e);
    let spec = o
        .require("spec", &mut e)
        .and_then(|v| parse_spec(v, ctx, &mut e));
    finish(e, spec).map(|spec| CreateRequest {
        id,
        tenant_id,
        spec,
    })
}

/// Parses and checks a `POST /v1/databases/{id}` body, `{spec}`: the full new spec.
/// A body with `tenant_id` is refused here; [`parse_update_body`] reads it.
pub fn parse_update_request(
    body: &Value,
    ctx: &ValidationContext<'_>,
) -> Result<DatabaseSpec, InvalidInput> {
    let mut e = Errors::default();
    let Some(o) = Obj::of(body, String::new(), &mut e) else {
        return Err(InvalidInput { errors: e.0 });
    };
    o.deny_unknown(&["spec"], &mut e);
    let spec = o
        .require("spec", &mut e)
        .and_then(|v| parse_spec(v, ctx, &mut e));
    finish(e, spec)
}

/// Parses and checks a `POST /v1/databases/{id}` body, `{tenant_id?, spec}`: the full new
/// spec, and the owner's identifier if the caller gives one.
pub fn parse_update_body(
    body: &Value,
    ctx: &ValidationContext<'_>,
) -> Result<UpdateRequest, InvalidInput> {
    let mut e = Errors::default();
    let Some(o) = Obj::of(body, String::new(), &mut e) else {
        return Err(InvalidInput { errors: e.0 });
    };
    o.deny_unknown(&["tenant_id", "spec"], &mut e);
    let tenant_id = tenant_id(o.get("tenant_id"), &mut e);
    let spec = o
        .require("spec", &mut e)
        .and_then(|v| parse_spec(v, ctx, &mut e));
    finish(e, spec).map(|spec| UpdateRequest { tenant_id, spec })
}

/// `tenant_id`, if present: a string by [`crate::ident::validate_tenant_id`]'s rule.
fn tenant_id(value: Option<&Value>, e: &mut Errors) -> Option<String> {
    let id = expect_str(value?, "tenant_id", e)?;
    match crate::ident::validate_tenant_id(id) {
        Ok(()) => Some(id.to_string()),
        Err(msg) => {
            e.push("tenant_id", msg);
            None
        }
    }
}

fn finish(e: Errors, spec: Option<DatabaseSpec>) -> Result<DatabaseSpec, InvalidInput> {
    match spec {
        Some(spec) if e.is_empty() => Ok(spec),
        // Every path that drops the spec records why; this guards against a silent 200
        // with nothing to say if that ever stops being true.
        None if e.is_empty() => Err(InvalidInput::one("spec", "could not be read")),
        _ => Err(InvalidInput { errors: e.0 }),
    }
}

const SPEC_KEYS: &[&str] = &[
    "database_name",
    "postgres_version",
    "port",
    "nodes",
    "services",
    "backup_config",
    "restore_config",
];
const NODE_KEYS: &[&str] = &[
    "name",
    "host_ids",
    "source_node",
    "backup_config",
    "restore_config",
];
const SERVICE_KEYS: &[&str] = &[
    "service_id",
    "service_type",
    "version",
    "host_ids",
    "config",
    "port",
    "cpus",
    "memory",
    "database_connection",
];
const CONNECTION_KEYS: &[&str] = &["target_nodes", "target_session_attrs"];

/// Deeper configs are refused before any recursive walk, so a pathological value cannot
/// exhaust the stack. No catalog schema nests beyond a handful of levels.
const MAX_CONFIG_DEPTH: usize = 32;

/// A node as far as it could be read: `None`/missing entries were invalid and reported.
struct NodeDraft {
    name: Option<String>,
    /// `(index in host_ids, host id)` of every well-formed host id.
    hosts: Vec<(usize, String)>,
    /// A well-formed `source_node`, checked against the other nodes by [`check_nodes`].
    source_node: Option<String>,
    /// Its `backup_config` and `restore_config` ([`backup`]).
    backups: backup::Configs,
    path: String,
}

struct ServiceDraft {
    path: String,
    service_id: Option<String>,
    service_type: Option<ServiceType>,
    version: Option<String>,
    hosts: Vec<(usize, String)>,
    config: Option<Map<String, Value>>,
    port: Option<u16>,
    cpus: Option<String>,
    memory: Option<String>,
    database_connection: Option<DatabaseConnection>,
    /// `(index, node name)` of the well-formed `database_connection.target_nodes` entries.
    target_nodes: Vec<(usize, String)>,
}

fn parse_spec(v: &Value, ctx: &ValidationContext<'_>, e: &mut Errors) -> Option<DatabaseSpec> {
    let o = Obj::of(v, "spec".to_string(), e)?;
    o.deny_unknown(SPEC_KEYS, e);

    let database_name =
        o.req_str("database_name", e)
            .and_then(|name| match validate_pg_identifier(name) {
                Ok(()) => Some(name.to_string()),
                Err(msg) => {
                    e.push(o.at("database_name"), msg);
                    None
                }
            });
    // The Postgres database of that name is the data: an update cannot rename it (nothing
    // would create the new one, and services would be pointed at it).
    if let (Some(previous), Some(name)) = (ctx.previous, &database_name)
        && previous.database_name != *name
    {
        e.push(
            o.at("database_name"),
            format!(
                "cannot change: the database holds {:?}; create a new database for another name",
                previous.database_name
            ),
        );
    }
    let postgres_version = postgres_version::postgres_version(&o, ctx.manifest, ctx.previous, e);
    let port = o.get("port").and_then(|v| parse_port(v, &o.at("port"), e));
    let stored = backup::Stored {
        backup: ctx.previous.and_then(|p| p.backup_config.as_ref()),
        restore: ctx.previous.and_then(|p| p.restore_config.as_ref()),
    };
    let backups = backup::read_level(&o, stored, e);

    let mut nodes = Vec::new();
    if o.require("nodes", e).is_some()
        && let Some(items) = o.array("nodes", e)
    {
        if items.is_empty() {
            e.push(o.at("nodes"), "must list at least one node");
        }
        for (i, item) in items.iter().enumerate() {
            nodes.push(parse_node(item, index(&o.at("nodes"), i), ctx, e));
        }
    }

    let mut services = Vec::new();
    if let Some(items) = o.array("services", e) {
        for (i, item) in items.iter().enumerate() {
            services.push(parse_service(item, index(&o.at("services"), i), ctx, e));
        }
    }

    check_nodes(&nodes, e);
    let node_levels = nodes.iter().map(|n| (&n.backups, n.source_node.is_some()));
    backup::check_levels(&backups, node_levels, e);
    check_services(&services, &nodes, port, e);
    if let Some(known) = ctx.known_hosts {
        let all_hosts = nodes
            .iter()
            .map(|n| (&n.path, &n.hosts))
            .chain(services.iter().map(|s| (&s.path, &s.hosts)));
        for (path, hosts) in all_hosts {
            for (j, host) in hosts {
                if !known.contains(host) {
                    e.push(
                        index(&format!("{path}.host_ids"), *j),
                        format!("host \"{host}\" is not registered"),
                    );
                }
            }
        }
    }
    check_configs(&mut services, ctx, e);

    Some(DatabaseSpec {
        database_name: database_name?,
        postgres_version,
        port,
        nodes: nodes
            .into_iter()
            .map(|n| {
                Some(NodeSpec {
                    name: n.name?,
                    host_ids: n.hosts.into_iter().map(|(_, h)| h).collect(),
                    source_node: n.source_node,
                    backup_config: n.backups.backup,
                    restore_config: n.backups.restore,
                })
            })
            .collect::<Option<_>>()?,
        services: services
            .into_iter()
            .map(|s| {
                Some(ServiceSpec {
                    service_id: s.service_id?,
                    service_type: s.service_type?,
                    version: s.version?,
                    host_ids: s.hosts.into_iter().map(|(_, h)| h).collect(),
                    config: s.config?,
                    port: s.port,
                    cpus: s.cpus,
                    memory: s.memory,
                    database_connection: s.database_connection,
                })
            })
            .collect::<Option<_>>()?,
        backup_config: backups.backup,
        restore_config: backups.restore,
    })
}

fn parse_node(v: &Value, path: String, ctx: &ValidationContext<'_>, e: &mut Errors) -> NodeDraft {
    let mut draft = NodeDraft {
        name: None,
        hosts: Vec::new(),
        source_node: None,
        backups: backup::Configs::default(),
        path,
    };
    let Some(o) = Obj::of(v, draft.path.clone(), e) else {
        return draft;
    };
    o.deny_unknown(NODE_KEYS, e);
    draft.name = o
        .req_str("name", e)
        .and_then(|name| match validate_node_name(name) {
            Ok(()) => Some(name.to_string()),
            Err(msg) => {
                e.push(o.at("name"), msg);
                None
            }
        });
    draft.hosts = parse_host_ids(&o, e);
    draft.source_node = o.str("source_node", e).map(str::to_string);
    // The stored node of the same name, where omitted secrets come from.
    let stored = ctx.previous.and_then(|p| {
        p.nodes
            .iter()
            .find(|n| Some(&n.name) == draft.name.as_ref())
    });
    let stored = backup::Stored {
        backup: stored.and_then(|n| n.backup_config.as_ref()),
        restore: stored.and_then(|n| n.restore_config.as_ref()),
    };
    draft.backups = backup::read_level(&o, stored, e);
    draft
}

/// A required, non-empty `host_ids` array of ids; returns the well-formed ones with their index.
fn parse_host_ids(o: &Obj<'_>, e: &mut Errors) -> Vec<(usize, String)> {
    let mut hosts = Vec::new();
    if o.require("host_ids", e).is_none() {
        return hosts;
    }
    let Some(items) = o.array("host_ids", e) else {
        return hosts;
    };
    if items.is_empty() {
        e.push(o.at("host_ids"), "must list at least one host");
    }
    for (j, item) in items.iter().enumerate() {
        let path = index(&o.at("host_ids"), j);
        if let Some(host) = expect_str(item, &path, e) {
            match validate_id(host) {
                Ok(()) => hosts.push((j, host.to_string())),
                Err(msg) => e.push(path, msg),
            }
        }
    }
    hosts
}

fn parse_service(
    v: &Value,
    path: String,
    ctx: &ValidationContext<'_>,
    e: &mut Errors,
) -> ServiceDraft {
    let mut d = ServiceDraft {
        path,
        service_id: None,
        service_type: None,
        version: None,
        hosts: Vec::new(),
        config: None,
        port: None,
        cpus: None,
        memory: None,
        database_connection: None,
        target_nodes: Vec::new(),
    };
    let Some(o) = Obj::of(v, d.path.clone(), e) else {
        return d;
    };
    o.deny_unknown(SERVICE_KEYS, e);

    d.service_id = o
        .req_str("service_id", e)
        .and_then(|id| match validate_id(id) {
            Ok(()) => Some(id.to_string()),
            Err(msg) => {
                e.push(o.at("service_id"), msg);
                None
            }
        });
    if o.require("service_type", e).is_some() {
        let names: Vec<&'static str> = ServiceType::ALL.iter().map(|t| t.as_str()).collect();
        d.service_type = o
            .one_of("service_type", &names, e)
            .and_then(ServiceType::parse);
    }
    if let Some(version) = o.req_str("version", e)
        && check_service_version(version, d.service_type, &o.at("version"), ctx.manifest, e)
    {
        d.version = Some(version.to_string());
    }
    d.hosts = parse_host_ids(&o, e);
    if o.get("config").is_some() {
        d.config = o.object("config", e).map(|c| c.map.clone());
    } else if d.service_type.is_some_and(catalog::config_optional) {
        // Nothing in it is required, so leaving it out says the same as `{}`.
        d.config = Some(Map::new());
    } else {
        o.require("config", e);
    }
    d.port = o.get("port").and_then(|v| parse_port(v, &o.at("port"), e));
    if let Some(v) = o.get("cpus") {
        d.cpus = parse_quantity(
            v,
            &o.at("cpus"),
            "expected a string like \"0.5\" or \"500m\"",
            |s| parse_cpus(s).map(drop),
            e,
        );
    }
    if let Some(v) = o.get("memory") {
        d.memory = parse_quantity(
            v,
            &o.at("memory"),
            "expected a string like \"512M\" or \"1GiB\"",
            |s| parse_memory(s).map(drop),
            e,
        );
    }
    if let Some(c) = o.object("database_connection", e) {
        c.deny_unknown(CONNECTION_KEYS, e);
        let mut connection = DatabaseConnection {
            target_nodes: None,
            target_session_attrs: None,
        };
        if let Some(items) = c.array("target_nodes", e) {
            if items.is_empty() {
                e.push(c.at("target_nodes"), "must list at least one node");
            }
            for (j, item) in items.iter().enumerate() {
                if let Some(name) = expect_str(item, &index(&c.at("target_nodes"), j), e) {
                    d.target_nodes.push((j, name.to_string()));
                }
            }
            connection.target_nodes = Some(d.target_nodes.iter().map(|(_, n)| n.clone()).collect());
        }
        let attrs: Vec<&'static str> = TargetSessionAttrs::ALL.iter().map(|t| t.as_str()).collect();
        connection.target_session_attrs = c
            .one_of("target_session_attrs", &attrs, e)
            .and_then(TargetSessionAttrs::parse);
        d.database_connection = Some(connection);
    }
    d
}

fn parse_port(v: &Value, path: &str, e: &mut Errors) -> Option<u16> {
    expect_int(v, path, 0, i64::from(u16::MAX), e).and_then(|p| u16::try_from(p).ok())
}

/// A string quantity checked by `check`, kept as written.
fn parse_quantity(
    v: &Value,
    path: &str,
    expected: &str,
    check: impl Fn(&str) -> Result<(), String>,
    e: &mut Errors,
) -> Option<String> {
    let Value::String(s) = v else {
        e.push(path, expected);
        return None;
    };
    match check(s) {
        Ok(()) => Some(s.clone()),
        Err(msg) => {
            e.push(path, msg);
            None
        }
    }
}

/// Checks a service version's syntax and that it resolves; returns whether it is usable.
fn check_service_version(
    version: &str,
    service_type: Option<ServiceType>,
    path: &str,
    manifest: &Manifest,
    e: &mut Errors,
) -> bool {
    if let Err(msg) = validate_version_request(version) {
        e.push(path, msg);
        return false;
    }
    // Without a valid type there is nothing to resolve against; the type error says why.
    let Some(t) = service_type else { return true };
    if manifest.resolve_service(t, version).is_some() {
        return true;
    }
    let available = manifest.service_versions(t);
    if available.is_empty() {
        e.push(
            path,
            format!("no version of {t} is available in the version manifest"),
        );
    } else {
        e.push(
            path,
            format!(
                "version \"{version}\" of {t} is not available; available: latest, {}",
                available.join(", ")
            ),
        );
    }
    false
}

/// Node names unique; hosts unique within a node; a host carries at most one node.
fn check_nodes(nodes: &[NodeDraft], e: &mut Errors) {
    let mut names: BTreeSet<&str> = BTreeSet::new();
    let mut carriers: BTreeMap<&str, &str> = BTreeMap::new();
    for node in nodes {
        if let Some(name) = &node.name
            && !names.insert(name)
        {
            e.push(
                format!("{}.name", node.path),
                format!("duplicate node name \"{name}\""),
            );
        }
        let mut own: BTreeSet<&str> = BTreeSet::new();
        for (j, host) in &node.hosts {
            let path = index(&format!("{}.host_ids", node.path), *j);
            if !own.insert(host) {
                e.push(path, format!("host \"{host}\" is listed twice"));
            } else if let Some(other) = carriers.get(host.as_str()) {
                e.push(
                    path,
                    format!("host \"{host}\" already carries node {other} of this database"),
                );
            } else {
                carriers.insert(host, node.name.as_deref().unwrap_or("?"));
            }
        }
    }
    // A node added to a live database is copied from its source: another node of the spec.
    for node in nodes {
        let Some(source) = &node.source_node else {
            continue;
        };
        if node.name.as_deref() == Some(source.as_str()) {
            e.push(
                format!("{}.source_node", node.path),
                "must name another node: a node cannot be copied from itself",
            );
        } else if !names.contains(source.as_str()) {
            e.push(
                format!("{}.source_node", node.path),
                format!("names no node of this spec: \"{source}\""),
            );
        }
    }
}

/// Service ids unique; hosts unique within a service; ports; connection targets.
fn check_services(
    services: &[ServiceDraft],
    nodes: &[NodeDraft],
    database_port: Option<u16>,
    e: &mut Errors,
) {
    let node_names: BTreeSet<&str> = nodes.iter().filter_map(|n| n.name.as_deref()).collect();
    let mut ids: BTreeSet<&str> = BTreeSet::new();
    // (host, port) -> the path of the service publishing it.
    let mut published: BTreeMap<(&str, u16), &str> = BTreeMap::new();
    for s in services.iter() {
        if let Some(id) = &s.service_id
            && !ids.insert(id)
        {
            e.push(
                format!("{}.service_id", s.path),
                format!("duplicate service_id \"{id}\""),
            );
        }
        let mut own: BTreeSet<&str> = BTreeSet::new();
        for (j, host) in &s.hosts {
            if !own.insert(host) {
                e.push(
                    index(&format!("{}.host_ids", s.path), *j),
                    format!("host \"{host}\" is listed twice"),
                );
            }
        }
        if let Some(port) = s.port.filter(|p| *p != 0) {
            let port_path = format!("{}.port", s.path);
            if database_port == Some(port) {
                e.push(&port_path, format!("port {port} is the database's port"));
            } else if let Some((host, other)) = own
                .iter()
                .find_map(|h| published.get(&(*h, port)).map(|other| (*h, *other)))
            {
                e.push(
                    &port_path,
                    format!("port {port} is already published on host \"{host}\" by {other}"),
                );
            } else {
                for host in &own {
                    published.insert((*host, port), s.path.as_str());
                }
            }
        }
        let mut targets: BTreeSet<&str> = BTreeSet::new();
        for (j, node) in &s.target_nodes {
            let path = index(&format!("{}.database_connection.target_nodes", s.path), *j);
            if !node_names.contains(node.as_str()) {
                e.push(path, format!("\"{node}\" is not a node of this database"));
            } else if !targets.insert(node) {
                e.push(path, format!("node \"{node}\" is listed twice"));
            }
        }
    }
}

/// Carries omitted secrets over from the stored spec, drops nulls, then runs the catalog.
fn check_configs(services: &mut [ServiceDraft], ctx: &ValidationContext<'_>, e: &mut Errors) {
    for s in services.iter_mut() {
        let path = format!("{}.config", s.path);
        let Some(config) = s.config.as_mut() else {
            continue;
        };
        if config.values().any(|v| exceeds_depth(v, MAX_CONFIG_DEPTH)) {
            e.push(
                path,
                format!("is nested more than {MAX_CONFIG_DEPTH} levels deep"),
            );
            continue;
        }
        let Some(t) = s.service_type else { continue };
        if let (Some(previous), Some(id)) = (ctx.previous, &s.service_id)
            && let Some(old) = previous
                .services
                .iter()
                .find(|p| &p.service_id == id && p.service_type == t)
        {
            carry_over_config(config, &old.config);
        }
        catalog::strip_nulls(config);
        e.0.extend(catalog::validate_config(t, config, &path));
    }
}

/// Whether `v` nests deeper than `max` levels, checked without recursion.
fn exceeds_depth(v: &Value, max: usize) -> bool {
    let mut stack = vec![(v, 1usize)];
    while let Some((v, depth)) = stack.pop() {
        if depth > max {
            return true;
        }
        match v {
            Value::Array(items) => stack.extend(items.iter().map(|i| (i, depth + 1))),
            Value::Object(map) => stack.extend(map.values().map(|i| (i, depth + 1))),
            _ => {}
        }
    }
    false
}

mod backup;
mod postgres_version;

/// Reads a `restore_config` given on its own at `path` (the body of `POST
/// /v1/databases/{id}/restore`), by the rules a spec's `restore_config` follows, except that
/// a repository named by id is checked by the caller against the node it restores.
pub(crate) fn restore_config_at(
    v: &Value,
    path: &str,
    errors: &mut Vec<crate::FieldError>,
) -> Option<crate::backup::RestoreConfig> {
    let mut e = Errors::default();
    let config = Obj::of(v, path.to_string(), &mut e)
        .and_then(|o| backup::restore_config(&o, None, &mut e).0);
    errors.extend(e.0);
    config
}

#[cfg(test)]
mod tests;
