//! Where a service connects: the ordered Postgres hosts of its libpq connection string and
//! its `target_session_attrs`.
//!
//! libpq tries the hosts in order and keeps the first that satisfies
//! `target_session_attrs`, so the order is a preference: the service's own host first (no
//! network hop), then its node, then the other nodes.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use spec::{DatabaseSpec, NodeSpec, ServiceSpec, TargetSessionAttrs};

/// One Postgres instance and the two ways to reach it. Which instance is the primary does
/// not matter here: Patroni moves it, and libpq finds it through `target_session_attrs`
/// among every instance of the node the connection string lists.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PostgresEndpoint {
    pub node: String,
    pub host_id: String,
    /// The container engine the instance runs on (`Host::engine_id`); empty when unknown.
    pub engine_id: String,
    /// Its name and port on the database's network, which only containers of the same
    /// engine can use.
    pub alias: String,
    pub port: u16,
    /// Its host's address and the host port Postgres is published on, once known (the
    /// agent picks the port when it first creates the container).
    pub published: Option<(String, u16)>,
}

/// An instance on another engine whose published port is not known yet, so a connection
/// string that must list it cannot be written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("postgres instance of node {node} on {host_id} has no published port yet")]
pub struct Unpublished {
    pub node: String,
    pub host_id: String,
}

/// How a container on `from_host`, driven by engine `from_engine`, reaches `endpoint`: by
/// alias on the database network when both run on one engine (the same host, or hosts
/// whose agents share an engine), else at the host's address and published port.
///
/// An empty engine id matches nothing but its own host: two agents that could not name
/// their engine are not assumed to share one.
pub fn reach(
    endpoint: &PostgresEndpoint,
    from_host: &str,
    from_engine: &str,
) -> Result<(String, u16), Unpublished> {
    let same_engine = endpoint.host_id == from_host
        || (!from_engine.is_empty() && endpoint.engine_id == from_engine);
    if same_engine {
        return Ok((endpoint.alias.clone(), endpoint.port));
    }
    endpoint.published.clone().ok_or_else(|| Unpublished {
        node: endpoint.node.clone(),
        host_id: endpoint.host_id.clone(),
    })
}

/// The ordered list of (address, port) a service on `service_host` (engine
/// `service_engine`) connects to, each reached as [`reach`] says.
///
/// Without `database_connection.target_nodes`: every node of the spec, the node local to
/// `service_host` (one of its `host_ids` is that host) first, then the others in spec
/// order. With `target_nodes`: exactly those nodes, in that order. Within a node: the
/// instance on `service_host` first, then the node's `host_ids` order.
///
/// Only endpoints of a node and host the spec places an instance on are used (a stale
/// endpoint of a removed instance is left out); an instance without an endpoint is simply
/// absent. Several endpoints of one instance keep their relative order.
///
/// Errors: the first listed instance on another engine whose port is not known yet.
pub fn connection_hosts(
    spec: &DatabaseSpec,
    service: &ServiceSpec,
    service_host: &str,
    service_engine: &str,
    endpoints: &[PostgresEndpoint],
) -> Result<Vec<(String, u16)>, Unpublished> {
    let is_local = |node: &NodeSpec| node.host_ids.iter().any(|h| h == service_host);
    let nodes: Vec<&NodeSpec> = match service
        .database_connection
        .as_ref()
        .and_then(|c| c.target_nodes.as_ref())
    {
        Some(targets) => targets
            .iter()
            .filter_map(|name| spec.nodes.iter().find(|n| &n.name == name))
            .collect(),
        None => {
            let (mut local, others): (Vec<&NodeSpec>, Vec<&NodeSpec>) =
                spec.nodes.iter().partition(|n| is_local(n));
            local.extend(others);
            local
        }
    };

    let mut hosts = Vec::new();
    for node in nodes {
        let mut instances: Vec<(bool, usize, &PostgresEndpoint)> = endpoints
            .iter()
            .filter(|e| e.node == node.name)
            .filter_map(|e| {
                let position = node.host_ids.iter().position(|h| *h == e.host_id)?;
                Some((e.host_id != service_host, position, e))
            })
            .collect();
        // Stable, so several endpoints of one instance keep their order.
        instances.sort_by_key(|(remote, position, _)| (*remote, *position));
        for (_, _, e) in instances {
            hosts.push(reach(e, service_host, service_engine)?);
        }
    }
    Ok(hosts)
}

/// The `target_session_attrs` of a service's connection string.
///
/// An explicit `database_connection.target_session_attrs` wins. Otherwise the service type's
/// default from the catalog ([`spec::catalog::default_target_session_attrs`], which
/// `GET /v1/service-types` shows): mcp needs the primary only when its (effective) config sets
/// `allow_writes`, and prefers a standby otherwise; postgrest serves writes, so `read-write`;
/// rag only reads, so `prefer-standby`.
pub fn target_session_attrs(
    service: &ServiceSpec,
    effective_config: &Map<String, Value>,
) -> TargetSessionAttrs {
    service
        .database_connection
        .as_ref()
        .and_then(|c| c.target_session_attrs)
        .unwrap_or_else(|| {
            spec::catalog::default_target_session_attrs(service.service_type, effective_config)
        })
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use spec::{DatabaseConnection, ServiceType};

    use super::*;

    fn node(name: &str, hosts: &[&str]) -> NodeSpec {
        NodeSpec {
            name: name.to_string(),
            host_ids: hosts.iter().map(|h| h.to_string()).collect(),
            source_node: None,
            backup_config: None,
            restore_config: None,
        }
    }

    fn db(nodes: Vec<NodeSpec>) -> DatabaseSpec {
        DatabaseSpec {
            database_name: "app".to_string(),
            postgres_version: None,
            port: None,
            nodes,
            services: vec![],
            backup_config: None,
            restore_config: None,
        }
    }

    fn service(
        service_type: ServiceType,
        target_nodes: Option<&[&str]>,
        attrs: Option<TargetSessionAttrs>,
    ) -> ServiceSpec {
        let database_connection =
            (target_nodes.is_some() || attrs.is_some()).then(|| DatabaseConnection {
                target_nodes: target_nodes.map(|t| t.iter().map(|n| n.to_string()).collect()),
                target_session_attrs: attrs,
            });
        ServiceSpec {
            service_id: "svc".to_string(),
            service_type,
            version: "latest".to_string(),
            host_ids: vec![],
            config: Map::new(),
            port: None,
            cpus: None,
            memory: None,
            database_connection,
        }
    }

    /// One endpoint per instance of the spec, aliased `{host}.{node}` on port 5432 and all
    /// on one engine, in a scrambled order so that the result cannot come from the input
    /// order.
    fn endpoints(spec: &DatabaseSpec) -> Vec<PostgresEndpoint> {
        let mut all: Vec<PostgresEndpoint> = spec
            .nodes
            .iter()
            .flat_map(|n| {
                n.host_ids.iter().map(|h| PostgresEndpoint {
                    node: n.name.clone(),
                    host_id: h.clone(),
                    engine_id: "shared".into(),
                    alias: format!("{h}.{}", n.name),
                    port: 5432,
                    published: None,
                })
            })
            .collect();
        all.reverse();
        let half = all.len() / 2;
        all.rotate_left(half);
        all
    }

    fn addresses(hosts: Vec<(String, u16)>) -> Vec<String> {
        hosts
            .into_iter()
            .map(|(a, p)| {
                assert_eq!(p, 5432);
                a
            })
            .collect()
    }

    #[test]
    fn connection_order() {
        let three = db(vec![
            node("n1", &["a", "b"]),
            node("n2", &["c", "d", "e"]),
            node("n3", &["f"]),
        ]);
        /// (case, target_nodes, service host, expected addresses)
        type Case<'a> = (&'a str, Option<&'a [&'a str]>, &'a str, &'a [&'a str]);
        let cases: &[Case] = &[
            // Not local to any node: spec order, host_ids order.
            (
                "no local node",
                None,
                "x",
                &["a.n1", "b.n1", "c.n2", "d.n2", "e.n2", "f.n3"],
            ),
            // Local to n1's primary: unchanged.
            (
                "on n1 primary",
                None,
                "a",
                &["a.n1", "b.n1", "c.n2", "d.n2", "e.n2", "f.n3"],
            ),
            // Local node first, own host first within it, then the rest in host_ids order.
            (
                "on n2 replica",
                None,
                "d",
                &["d.n2", "c.n2", "e.n2", "a.n1", "b.n1", "f.n3"],
            ),
            (
                "on n2 last",
                None,
                "e",
                &["e.n2", "c.n2", "d.n2", "a.n1", "b.n1", "f.n3"],
            ),
            (
                "on n3",
                None,
                "f",
                &["f.n3", "a.n1", "b.n1", "c.n2", "d.n2", "e.n2"],
            ),
            (
                "on n1 replica",
                None,
                "b",
                &["b.n1", "a.n1", "c.n2", "d.n2", "e.n2", "f.n3"],
            ),
            // target_nodes: exactly those nodes, in that order, even the local one is not moved.
            (
                "targets",
                Some(&["n3", "n1"]),
                "b",
                &["f.n3", "b.n1", "a.n1"],
            ),
            (
                "targets local not first",
                Some(&["n1", "n2"]),
                "e",
                &["a.n1", "b.n1", "e.n2", "c.n2", "d.n2"],
            ),
            ("one target", Some(&["n2"]), "x", &["c.n2", "d.n2", "e.n2"]),
            ("target elsewhere", Some(&["n3"]), "a", &["f.n3"]),
        ];
        let eps = endpoints(&three);
        for (name, targets, host, expected) in cases {
            let svc = service(ServiceType::Mcp, *targets, None);
            let got = addresses(connection_hosts(&three, &svc, host, "shared", &eps).unwrap());
            assert_eq!(got, *expected, "{name}");
        }
    }

    fn endpoint(node: &str, host: &str, engine: &str, published: Option<u16>) -> PostgresEndpoint {
        PostgresEndpoint {
            node: node.into(),
            host_id: host.into(),
            engine_id: engine.into(),
            alias: format!("{node}-{host}"),
            port: 5432,
            published: published.map(|p| (format!("addr-{host}"), p)),
        }
    }

    #[test]
    fn connection_hosts_skip_instances_the_spec_does_not_place() {
        let spec = db(vec![node("n1", &["a", "b"]), node("n2", &["c"])]);
        let endpoints = vec![
            endpoint("n2", "c", "e", None),
            // A stale endpoint of an instance the spec no longer has.
            endpoint("n1", "z", "e", None),
            // A node that is not in the spec.
            endpoint("n9", "a", "e", None),
            endpoint("n1", "a", "e", None),
            // n1 on b has no endpoint yet: absent from the list.
        ];
        let svc = service(ServiceType::Rag, None, None);
        assert_eq!(
            connection_hosts(&spec, &svc, "c", "e", &endpoints).unwrap(),
            vec![("n2-c".to_string(), 5432), ("n1-a".to_string(), 5432)]
        );
        let targets = service(ServiceType::Rag, Some(&["n9", "n1"]), None);
        assert_eq!(
            connection_hosts(&spec, &targets, "c", "e", &endpoints).unwrap(),
            vec![("n1-a".to_string(), 5432)],
            "a target node missing from the spec contributes nothing"
        );
    }

    #[test]
    fn mixed_engines_use_aliases_locally_and_published_ports_across() {
        // host a and b share engine e1 (one machine, two agents); c and d have their own.
        let spec = db(vec![node("n1", &["a", "c"]), node("n2", &["d", "b"])]);
        let eps = vec![
            endpoint("n1", "a", "e1", Some(6001)),
            endpoint("n1", "c", "e3", Some(6003)),
            endpoint("n2", "d", "e4", Some(6004)),
            endpoint("n2", "b", "e1", Some(6002)),
        ];
        let svc = service(ServiceType::Mcp, None, None);
        let s = |a: &str, p: u16| (a.to_string(), p);
        /// (case, service host, its engine, expected)
        type Case<'a> = (&'a str, &'a str, &'a str, Vec<(String, u16)>);
        let cases: Vec<Case> = vec![
            (
                "on a: own host and same-engine b by alias, c and d published",
                "a",
                "e1",
                vec![
                    s("n1-a", 5432),
                    s("addr-c", 6003),
                    s("addr-d", 6004),
                    s("n2-b", 5432),
                ],
            ),
            (
                "on c: only its own instance by alias",
                "c",
                "e3",
                vec![
                    s("n1-c", 5432),
                    s("addr-a", 6001),
                    s("addr-d", 6004),
                    s("addr-b", 6002),
                ],
            ),
            (
                "on x, an engine with no instance: all published",
                "x",
                "e9",
                vec![
                    s("addr-a", 6001),
                    s("addr-c", 6003),
                    s("addr-d", 6004),
                    s("addr-b", 6002),
                ],
            ),
            (
                "an unknown engine id is never shared",
                "x",
                "",
                vec![
                    s("addr-a", 6001),
                    s("addr-c", 6003),
                    s("addr-d", 6004),
                    s("addr-b", 6002),
                ],
            ),
        ];
        for (name, host, engine, expected) in cases {
            assert_eq!(
                connection_hosts(&spec, &svc, host, engine, &eps).unwrap(),
                expected,
                "{name}"
            );
        }
        // target_nodes still decides which nodes and their order; each is reached as above.
        let targeted = service(ServiceType::Postgrest, Some(&["n2"]), None);
        assert_eq!(
            connection_hosts(&spec, &targeted, "c", "e3", &eps).unwrap(),
            vec![s("addr-d", 6004), s("addr-b", 6002)]
        );
    }

    #[test]
    fn an_unpublished_remote_instance_holds_the_connection_string_back() {
        let spec = db(vec![node("n1", &["a", "b"])]);
        let eps = vec![
            endpoint("n1", "a", "e1", None),
            endpoint("n1", "b", "e2", None),
        ];
        let svc = service(ServiceType::Rag, None, None);
        // From a, its own instance needs no port but b's does.
        assert_eq!(
            connection_hosts(&spec, &svc, "a", "e1", &eps),
            Err(Unpublished {
                node: "n1".into(),
                host_id: "b".into()
            })
        );
        // A service aimed only at instances on its own engine does not wait.
        let spec_a = db(vec![node("n1", &["a"])]);
        assert_eq!(
            connection_hosts(&spec_a, &svc, "a", "e1", &eps[..1]).unwrap(),
            vec![("n1-a".to_string(), 5432)]
        );
    }

    #[test]
    fn session_attrs() {
        use ServiceType::*;
        use TargetSessionAttrs::*;
        let writes = |b: bool| json!({ "allow_writes": b }).as_object().unwrap().clone();
        let none = Map::new();
        /// (case, type, explicit attrs, effective config, expected)
        type Case = (
            &'static str,
            ServiceType,
            Option<TargetSessionAttrs>,
            Map<String, Value>,
            TargetSessionAttrs,
        );
        let cases: Vec<Case> = vec![
            ("mcp allow_writes", Mcp, None, writes(true), Primary),
            ("mcp read-only", Mcp, None, writes(false), PreferStandby),
            (
                "mcp without the key",
                Mcp,
                None,
                none.clone(),
                PreferStandby,
            ),
            ("postgrest", Postgrest, None, none.clone(), ReadWrite),
            (
                "postgrest ignores allow_writes",
                Postgrest,
                None,
                writes(false),
                ReadWrite,
            ),
            ("rag", Rag, None, none.clone(), PreferStandby),
            (
                "rag ignores allow_writes",
                Rag,
                None,
                writes(true),
                PreferStandby,
            ),
            (
                "mcp explicit over allow_writes",
                Mcp,
                Some(Standby),
                writes(true),
                Standby,
            ),
            ("mcp explicit any", Mcp, Some(Any), writes(false), Any),
            (
                "postgrest explicit",
                Postgrest,
                Some(Primary),
                none.clone(),
                Primary,
            ),
            (
                "rag explicit",
                Rag,
                Some(ReadWrite),
                none.clone(),
                ReadWrite,
            ),
        ];
        for (name, t, explicit, config, expected) in cases {
            let svc = service(t, None, explicit);
            assert_eq!(target_session_attrs(&svc, &config), expected, "{name}");
        }
    }

    #[test]
    fn session_attrs_default_follows_effective_config() {
        // The catalog's defaults are what the mcp image sees; the routing must agree.
        let svc = service(ServiceType::Mcp, None, None);
        let effective = spec::catalog::effective_config(ServiceType::Mcp, &Map::new());
        assert_eq!(
            target_session_attrs(&svc, &effective),
            TargetSessionAttrs::PreferStandby
        );
    }
}
