//! Where a service connects: the ordered Postgres hosts of its libpq connection string and
//! its `target_session_attrs`.
//!
//! libpq tries the hosts in order and keeps the first that satisfies
//! `target_session_attrs`, so the order is a preference: the service's own host first (no
//! network hop), then its node, then the other nodes.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use spec::{DatabaseSpec, NodeSpec, ServiceSpec, ServiceType, TargetSessionAttrs};

/// Where one Postgres instance can be reached from the service's host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PostgresEndpoint {
    pub node: String,
    pub host_id: String,
    /// Informational: libpq finds the primary itself through `target_session_attrs`, so
    /// the order does not depend on it.
    pub primary: bool,
    pub address: String,
    pub port: u16,
}

/// The ordered list of (address, port) a service on `service_host` connects to.
///
/// Without `database_connection.target_nodes`: every node of the spec, the node local to
/// `service_host` (one of its `host_ids` is that host) first, then the others in spec
/// order. With `target_nodes`: exactly those nodes, in that order. Within a node: the
/// instance on `service_host` first, then the node's `host_ids` order.
///
/// Only endpoints of a node and host the spec places an instance on are used (a stale
/// endpoint of a removed instance is left out); an instance without an endpoint is simply
/// absent. Several endpoints of one instance keep their relative order.
pub fn connection_hosts(
    spec: &DatabaseSpec,
    service: &ServiceSpec,
    service_host: &str,
    endpoints: &[PostgresEndpoint],
) -> Vec<(String, u16)> {
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
        hosts.extend(
            instances
                .into_iter()
                .map(|(_, _, e)| (e.address.clone(), e.port)),
        );
    }
    hosts
}

/// The `target_session_attrs` of a service's connection string.
///
/// An explicit `database_connection.target_session_attrs` wins. Otherwise by type: mcp
/// needs the primary only when its (effective) config sets `allow_writes`, and prefers a
/// standby otherwise; postgrest serves writes, so `read-write`; rag only reads, so
/// `prefer-standby`.
pub fn target_session_attrs(
    service: &ServiceSpec,
    effective_config: &Map<String, Value>,
) -> TargetSessionAttrs {
    if let Some(explicit) = service
        .database_connection
        .as_ref()
        .and_then(|c| c.target_session_attrs)
    {
        return explicit;
    }
    match service.service_type {
        ServiceType::Mcp => {
            if effective_config
                .get("allow_writes")
                .and_then(Value::as_bool)
                == Some(true)
            {
                TargetSessionAttrs::Primary
            } else {
                TargetSessionAttrs::PreferStandby
            }
        }
        ServiceType::Postgrest => TargetSessionAttrs::ReadWrite,
        ServiceType::Rag => TargetSessionAttrs::PreferStandby,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use spec::DatabaseConnection;

    use super::*;

    fn node(name: &str, hosts: &[&str]) -> NodeSpec {
        NodeSpec {
            name: name.to_string(),
            host_ids: hosts.iter().map(|h| h.to_string()).collect(),
        }
    }

    fn db(nodes: Vec<NodeSpec>) -> DatabaseSpec {
        DatabaseSpec {
            database_name: "app".to_string(),
            postgres_version: None,
            port: None,
            nodes,
            services: vec![],
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

    /// One endpoint per instance of the spec, addressed `{host}.{node}` on port 5432, in a
    /// scrambled order so that the result cannot come from the input order.
    fn endpoints(spec: &DatabaseSpec) -> Vec<PostgresEndpoint> {
        let mut all: Vec<PostgresEndpoint> = spec
            .nodes
            .iter()
            .flat_map(|n| {
                n.host_ids
                    .iter()
                    .enumerate()
                    .map(|(i, h)| PostgresEndpoint {
                        node: n.name.clone(),
                        host_id: h.clone(),
                        primary: i == 0,
                        address: format!("{h}.{}", n.name),
                        port: 5432,
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
            let got = addresses(connection_hosts(&three, &svc, host, &eps));
            assert_eq!(got, *expected, "{name}");
        }
    }

    #[test]
    fn connection_hosts_use_endpoint_addresses_and_skip_unknown_instances() {
        let spec = db(vec![node("n1", &["a", "b"]), node("n2", &["c"])]);
        let endpoints = vec![
            PostgresEndpoint {
                node: "n2".into(),
                host_id: "c".into(),
                primary: true,
                address: "10.0.0.3".into(),
                port: 6001,
            },
            // A stale endpoint of an instance the spec no longer has.
            PostgresEndpoint {
                node: "n1".into(),
                host_id: "z".into(),
                primary: false,
                address: "10.0.0.26".into(),
                port: 6000,
            },
            // A node that is not in the spec.
            PostgresEndpoint {
                node: "n9".into(),
                host_id: "a".into(),
                primary: true,
                address: "10.0.0.9".into(),
                port: 6000,
            },
            PostgresEndpoint {
                node: "n1".into(),
                host_id: "a".into(),
                primary: true,
                address: "10.0.0.1".into(),
                port: 6000,
            },
            // n1 on b has no endpoint yet: absent from the list.
        ];
        let svc = service(ServiceType::Rag, None, None);
        assert_eq!(
            connection_hosts(&spec, &svc, "c", &endpoints),
            vec![
                ("10.0.0.3".to_string(), 6001),
                ("10.0.0.1".to_string(), 6000)
            ]
        );
        let targets = service(ServiceType::Rag, Some(&["n9", "n1"]), None);
        assert_eq!(
            connection_hosts(&spec, &targets, "c", &endpoints),
            vec![("10.0.0.1".to_string(), 6000)],
            "a target node missing from the spec contributes nothing"
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
