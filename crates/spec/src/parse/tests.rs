use std::collections::BTreeSet;

use serde_json::{Value, json};

use super::*;

const SEED: &str = r#"{"id":"example","spec":{"database_name":"example","nodes":[{"name":"n1","host_ids":["host-1"]}],"services":[{"service_id":"mcp-server","service_type":"mcp","version":"latest","host_ids":["host-1"],"config":{"llm_enabled":true,"llm_provider":"anthropic","llm_model":"claude-sonnet-4-5","anthropic_api_key":"sk-ant-..."}}]}}"#;

fn hosts() -> BTreeSet<String> {
    ["host-1", "host-2", "host-3"]
        .into_iter()
        .map(String::from)
        .collect()
}

/// A valid body exercising every optional field, which each case below breaks in one place.
fn base() -> Value {
    json!({
        "id": "example",
        "spec": {
            "database_name": "example",
            "postgres_version": "15",
            "port": 5432,
            "nodes": [
                {"name": "n1", "host_ids": ["host-1"]},
                {"name": "n2", "host_ids": ["host-2"]}
            ],
            "services": [
                {
                    "service_id": "mcp-server",
                    "service_type": "mcp",
                    "version": "latest",
                    "host_ids": ["host-1"],
                    "config": {
                        "llm_enabled": true,
                        "llm_provider": "anthropic",
                        "llm_model": "claude-sonnet-4-5",
                        "anthropic_api_key": "sk-ant-x"
                    },
                    "port": 8080,
                    "cpus": "0.5",
                    "memory": "512Mi",
                    "database_connection": {"target_nodes": ["n1", "n2"], "target_session_attrs": "primary"}
                },
                {
                    "service_id": "api",
                    "service_type": "postgrest",
                    "version": "12.2",
                    "host_ids": ["host-1", "host-2"],
                    "config": {}
                }
            ]
        }
    })
}

/// Sets (or with `None` removes) the value at a JSON pointer whose parent exists.
pub(super) fn set(body: &mut Value, pointer: &str, value: Option<Value>) {
    if pointer.is_empty() {
        *body = value.unwrap_or(Value::Null);
        return;
    }
    let (parent, last) = pointer.rsplit_once('/').expect("pointer");
    let parent = body
        .pointer_mut(parent)
        .unwrap_or_else(|| panic!("no parent for {pointer}"));
    match (parent, value) {
        (Value::Object(m), Some(v)) => {
            m.insert(last.to_string(), v);
        }
        (Value::Object(m), None) => {
            m.remove(last);
        }
        (Value::Array(a), Some(v)) => {
            let i: usize = last.parse().expect("index");
            if i == a.len() { a.push(v) } else { a[i] = v }
        }
        (Value::Array(a), None) => {
            a.remove(last.parse().expect("index"));
        }
        _ => panic!("parent of {pointer} is not a container"),
    }
}

fn edited(edits: &[(&str, Option<Value>)]) -> Value {
    let mut body = base();
    for (pointer, value) in edits {
        set(&mut body, pointer, value.clone());
    }
    body
}

fn create(body: &Value) -> Result<CreateRequest, InvalidInput> {
    let manifest = Manifest::builtin();
    let known = hosts();
    let ctx = ValidationContext {
        manifest: &manifest,
        known_hosts: Some(&known),
        previous: None,
    };
    parse_create_request(body, &ctx)
}

fn errors(body: &Value) -> Vec<(String, String)> {
    match create(body) {
        Ok(_) => Vec::new(),
        Err(e) => e.errors.into_iter().map(|f| (f.path, f.message)).collect(),
    }
}

fn check(edits: &[(&str, Option<Value>)], want: &[(&str, &str)]) {
    let body = edited(edits);
    let got = errors(&body);
    let paths: Vec<&str> = got.iter().map(|(p, _)| p.as_str()).collect();
    let want_paths: Vec<&str> = want.iter().map(|(p, _)| *p).collect();
    assert_eq!(paths, want_paths, "edits {edits:?}: got {got:?}");
    for ((_, message), (_, fragment)) in got.iter().zip(want) {
        assert!(
            message.contains(fragment),
            "edits {edits:?}: message {message:?} lacks {fragment:?}"
        );
    }
}

/// Edits to the base body, and the `(path, message fragment)` errors they must produce.
type Case = (
    Vec<(&'static str, Option<Value>)>,
    Vec<(&'static str, &'static str)>,
);

fn s(v: &str) -> Option<Value> {
    Some(Value::String(v.to_string()))
}

#[test]
fn seed_example_parses() {
    let body: Value = serde_json::from_str(SEED).unwrap();
    let req = create(&body).unwrap();
    assert_eq!(req.id.as_deref(), Some("example"));
    assert_eq!(req.spec.database_name, "example");
    assert_eq!(
        req.spec.nodes,
        vec![NodeSpec {
            name: "n1".into(),
            host_ids: vec!["host-1".into()],
            source_node: None,
            backup_config: None,
            restore_config: None,
        }]
    );
    let svc = &req.spec.services[0];
    assert_eq!(
        (
            svc.service_id.as_str(),
            svc.service_type,
            svc.version.as_str()
        ),
        ("mcp-server", ServiceType::Mcp, "latest")
    );
    assert_eq!(svc.config["anthropic_api_key"], json!("sk-ant-..."));

    // The local test fleet's manifest accepts it too.
    let local = Manifest::from_json(crate::LOCAL_MANIFEST).unwrap();
    let ctx = ValidationContext {
        manifest: &local,
        known_hosts: None,
        previous: None,
    };
    assert!(parse_create_request(&body, &ctx).is_ok());
}

#[test]
fn base_parses_and_keeps_what_was_written() {
    let req = create(&base()).unwrap();
    let svc = &req.spec.services[0];
    assert_eq!(svc.cpus.as_deref(), Some("0.5"));
    assert_eq!(svc.memory.as_deref(), Some("512Mi"));
    assert_eq!(svc.port, Some(8080));
    assert_eq!(
        svc.database_connection,
        Some(DatabaseConnection {
            target_nodes: Some(vec!["n1".into(), "n2".into()]),
            target_session_attrs: Some(TargetSessionAttrs::Primary),
        })
    );
    assert_eq!(req.spec.services[1].version, "12.2");
    assert_eq!(req.spec.port, Some(5432));
    assert_eq!(req.spec.postgres_version.as_deref(), Some("15"));
}

#[test]
fn accepted_variants() {
    let ok: Vec<Vec<(&str, Option<Value>)>> = vec![
        vec![("/id", None)],
        vec![("/id", Some(Value::Null))],
        vec![("/spec/services", None)],
        vec![("/spec/services", Some(Value::Null))],
        vec![("/spec/services", Some(json!([])))],
        vec![("/spec/postgres_version", s("latest"))],
        vec![("/spec/postgres_version", s("15"))],
        vec![("/spec/postgres_version", None)],
        vec![("/spec/port", Some(json!(0)))],
        vec![("/spec/port", Some(json!(65535)))],
        vec![("/spec/port", None)],
        vec![
            ("/spec/nodes/1/name", s("n10")),
            (
                "/spec/services/0/database_connection/target_nodes/1",
                s("n10"),
            ),
        ],
        vec![("/spec/nodes/0/host_ids", Some(json!(["host-1", "host-3"])))],
        vec![("/spec/services/0/version", s("1.0"))],
        vec![("/spec/services/0/version", s("1"))],
        vec![("/spec/services/0/version", s("1.0.0"))],
        vec![("/spec/services/0/cpus", s("500m"))],
        vec![("/spec/services/0/memory", s("1GiB"))],
        vec![
            ("/spec/services/0/port", Some(json!(0))),
            ("/spec/services/1/port", Some(json!(0))),
        ],
        // The same fixed port on different hosts is fine.
        vec![
            ("/spec/services/1/host_ids", Some(json!(["host-2"]))),
            ("/spec/services/1/port", Some(json!(8080))),
        ],
        vec![("/spec/services/0/database_connection", Some(json!({})))],
        vec![(
            "/spec/services/0/database_connection/target_session_attrs",
            s("prefer-standby"),
        )],
        vec![(
            "/spec/services/0/database_connection/target_session_attrs",
            s("read-write"),
        )],
        vec![(
            "/spec/services/0/database_connection/target_session_attrs",
            s("any"),
        )],
        vec![(
            "/spec/services/0/database_connection/target_nodes",
            Some(json!(["n2"])),
        )],
        vec![(
            "/spec/services/1",
            Some(
                json!({"service_id": "rag", "service_type": "rag", "version": "1.0.0", "host_ids": ["host-3"],
                        "config": {"pipelines": [{"name": "docs",
                            "tables": [{"table": "docs", "text_column": "body", "vector_column": "embedding"}],
                            "embedding_llm": {"provider": "openai", "model": "text-embedding-3-small", "api_key": "k"},
                            "rag_llm": {"provider": "anthropic", "model": "claude-sonnet-4-5", "api_key": "k"}}]}}),
            ),
        )],
    ];
    for edits in ok {
        let body = edited(&edits);
        assert!(create(&body).is_ok(), "{edits:?}: {:?}", errors(&body));
    }
}

#[test]
fn nulls_in_config_are_dropped() {
    let body = edited(&[("/spec/services/0/config/llm_temperature", Some(Value::Null))]);
    let req = create(&body).unwrap();
    assert!(!req.spec.services[0].config.contains_key("llm_temperature"));
}

#[test]
fn body_rules() {
    let body = json!([]);
    assert_eq!(
        errors(&body),
        vec![(
            String::new(),
            "expected an object, got an array".to_string()
        )]
    );
    check(
        &[("/extra", Some(json!(1)))],
        &[("extra", "unknown field; allowed: id, tenant_id, spec")],
    );
    check(&[("/id", s("Bad_Id"))], &[("id", "lowercase letters")]);
    check(&[("/id", s(""))], &[("id", "1-36")]);
    check(&[("/id", Some(json!(5)))], &[("id", "expected a string")]);
    check(&[("/spec", None)], &[("spec", "is required")]);
    check(&[("/spec", s("x"))], &[("spec", "expected an object")]);
}

#[test]
fn spec_rules() {
    let cases: Vec<Case> = vec![
        (
            vec![("/spec/replicas", Some(json!(2)))],
            vec![("spec.replicas", "unknown field")],
        ),
        (
            vec![("/spec/database_name", None)],
            vec![("spec.database_name", "is required")],
        ),
        (
            vec![("/spec/database_name", s("Example-DB"))],
            vec![("spec.database_name", "Postgres identifier")],
        ),
        (
            vec![("/spec/database_name", s(&"a".repeat(64)))],
            vec![("spec.database_name", "63 bytes")],
        ),
        (
            vec![("/spec/database_name", Some(json!(1)))],
            vec![("spec.database_name", "expected a string")],
        ),
        (
            vec![("/spec/postgres_version", s("14"))],
            vec![("spec.postgres_version", "available: latest, 15")],
        ),
        (
            vec![("/spec/postgres_version", s("v17"))],
            vec![("spec.postgres_version", "expected \"latest\" or a version")],
        ),
        (
            vec![("/spec/postgres_version", Some(json!(17)))],
            vec![("spec.postgres_version", "expected a string")],
        ),
        (
            vec![("/spec/port", Some(json!(65536)))],
            vec![("spec.port", "from 0 to 65535")],
        ),
        (
            vec![("/spec/port", Some(json!(-1)))],
            vec![("spec.port", "from 0 to 65535")],
        ),
        (
            vec![("/spec/port", s("5432"))],
            vec![("spec.port", "from 0 to 65535")],
        ),
        (
            vec![("/spec/port", Some(json!(5432.5)))],
            vec![("spec.port", "from 0 to 65535")],
        ),
        (
            vec![
                ("/spec/services/0/database_connection", None),
                ("/spec/nodes", None),
            ],
            vec![("spec.nodes", "is required")],
        ),
        (
            vec![
                ("/spec/services/0/database_connection", None),
                ("/spec/nodes", Some(json!({}))),
            ],
            vec![("spec.nodes", "expected an array")],
        ),
        (
            // With no node the services' target nodes name nothing.
            vec![("/spec/nodes", Some(json!([])))],
            vec![
                ("spec.nodes", "at least one node"),
                (
                    "spec.services[0].database_connection.target_nodes[0]",
                    "\"n1\" is not a node",
                ),
                (
                    "spec.services[0].database_connection.target_nodes[1]",
                    "\"n2\" is not a node",
                ),
            ],
        ),
        (
            vec![("/spec/services", Some(json!({})))],
            vec![("spec.services", "expected an array")],
        ),
    ];
    for (edits, want) in cases {
        check(&edits, &want);
    }
}

#[test]
fn node_rules() {
    let cases: Vec<Case> = vec![
        (
            vec![("/spec/nodes/1", s("n2"))],
            vec![
                ("spec.nodes[1]", "expected an object"),
                (
                    "spec.services[0].database_connection.target_nodes[1]",
                    "not a node",
                ),
            ],
        ),
        (
            vec![("/spec/nodes/0/zone", s("a"))],
            vec![(
                "spec.nodes[0].zone",
                "unknown field; allowed: name, host_ids",
            )],
        ),
        (
            vec![("/spec/nodes/1/name", None)],
            vec![
                ("spec.nodes[1].name", "is required"),
                (
                    "spec.services[0].database_connection.target_nodes[1]",
                    "not a node",
                ),
            ],
        ),
        (
            vec![("/spec/nodes/1/name", s("node2"))],
            vec![
                ("spec.nodes[1].name", "\"n\" followed by digits"),
                (
                    "spec.services[0].database_connection.target_nodes[1]",
                    "not a node",
                ),
            ],
        ),
        (
            vec![("/spec/nodes/1/name", s("n1"))],
            vec![
                ("spec.nodes[1].name", "duplicate node name \"n1\""),
                (
                    "spec.services[0].database_connection.target_nodes[1]",
                    "not a node",
                ),
            ],
        ),
        (
            vec![("/spec/nodes/1/source_node", s("n2"))],
            vec![("spec.nodes[1].source_node", "cannot be copied from itself")],
        ),
        (
            vec![("/spec/nodes/1/source_node", s("n7"))],
            vec![("spec.nodes[1].source_node", "names no node of this spec")],
        ),
        (
            vec![("/spec/nodes/1/source_node", Some(json!(1)))],
            vec![("spec.nodes[1].source_node", "expected a string")],
        ),
        (
            vec![("/spec/nodes/0/host_ids", None)],
            vec![("spec.nodes[0].host_ids", "is required")],
        ),
        (
            vec![("/spec/nodes/0/host_ids", Some(json!([])))],
            vec![("spec.nodes[0].host_ids", "at least one host")],
        ),
        (
            vec![("/spec/nodes/0/host_ids", s("host-1"))],
            vec![("spec.nodes[0].host_ids", "expected an array")],
        ),
        (
            vec![("/spec/nodes/0/host_ids/1", Some(json!(5)))],
            vec![("spec.nodes[0].host_ids[1]", "expected a string")],
        ),
        (
            vec![("/spec/nodes/0/host_ids/1", s("Host_3"))],
            vec![("spec.nodes[0].host_ids[1]", "lowercase letters")],
        ),
        (
            vec![(
                "/spec/nodes/0/host_ids",
                Some(json!(["host-1", "host-3", "host-1"])),
            )],
            vec![(
                "spec.nodes[0].host_ids[2]",
                "host \"host-1\" is listed twice",
            )],
        ),
        (
            vec![("/spec/nodes/1/host_ids", Some(json!(["host-3", "host-1"])))],
            vec![(
                "spec.nodes[1].host_ids[1]",
                "host \"host-1\" already carries node n1",
            )],
        ),
        (
            vec![("/spec/nodes/0/host_ids/2", s("host-9"))],
            vec![
                ("spec.nodes[0].host_ids[1]", "expected a string"),
                (
                    "spec.nodes[0].host_ids[2]",
                    "host \"host-9\" is not registered",
                ),
            ],
        ),
    ];
    for (edits, want) in cases {
        // The one fixture with an index gap: put a null at [1] first so [2] exists.
        let mut edits = edits;
        if edits.iter().any(|(p, _)| *p == "/spec/nodes/0/host_ids/2") {
            edits.insert(0, ("/spec/nodes/0/host_ids/1", Some(Value::Null)));
        }
        check(&edits, &want);
    }
    check(
        &[("/spec/nodes/0/host_ids", Some(json!(["host-9"])))],
        &[(
            "spec.nodes[0].host_ids[0]",
            "host \"host-9\" is not registered",
        )],
    );
}

#[test]
fn service_rules() {
    let cases: Vec<Case> = vec![
        (
            vec![("/spec/services/1", Some(json!(7)))],
            vec![("spec.services[1]", "expected an object, got a number")],
        ),
        (
            vec![("/spec/services/1/image", s("x"))],
            vec![("spec.services[1].image", "unknown field")],
        ),
        (
            vec![("/spec/services/1/service_id", None)],
            vec![("spec.services[1].service_id", "is required")],
        ),
        (
            vec![("/spec/services/1/service_id", s("API"))],
            vec![("spec.services[1].service_id", "lowercase letters")],
        ),
        (
            vec![("/spec/services/1/service_id", s("a--b"))],
            vec![("spec.services[1].service_id", "without \"--\"")],
        ),
        (
            vec![("/spec/services/1/service_id", s(&"a".repeat(37)))],
            vec![("spec.services[1].service_id", "1-36")],
        ),
        (
            vec![("/spec/services/1/service_id", s("mcp-server"))],
            vec![(
                "spec.services[1].service_id",
                "duplicate service_id \"mcp-server\"",
            )],
        ),
        (
            vec![("/spec/services/1/service_type", None)],
            vec![("spec.services[1].service_type", "is required")],
        ),
        (
            vec![("/spec/services/1/service_type", s("redis"))],
            vec![(
                "spec.services[1].service_type",
                "expected one of: mcp, rag, postgrest",
            )],
        ),
        (
            vec![("/spec/services/1/version", None)],
            vec![("spec.services[1].version", "is required")],
        ),
        (
            vec![("/spec/services/1/version", s("v12"))],
            vec![(
                "spec.services[1].version",
                "expected \"latest\" or a version",
            )],
        ),
        (
            vec![("/spec/services/1/version", Some(json!(12)))],
            vec![("spec.services[1].version", "expected a string")],
        ),
        (
            vec![("/spec/services/1/version", s("13.0"))],
            vec![(
                "spec.services[1].version",
                "version \"13.0\" of postgrest is not available; available: latest, 12.2.3",
            )],
        ),
        (
            vec![("/spec/services/0/version", s("1.0.1"))],
            vec![("spec.services[0].version", "available: latest, 1.0.0")],
        ),
        (
            vec![("/spec/services/1/host_ids", None)],
            vec![("spec.services[1].host_ids", "is required")],
        ),
        (
            vec![("/spec/services/1/host_ids", Some(json!([])))],
            vec![("spec.services[1].host_ids", "at least one host")],
        ),
        (
            vec![("/spec/services/1/host_ids/1", s("host-1"))],
            vec![(
                "spec.services[1].host_ids[1]",
                "host \"host-1\" is listed twice",
            )],
        ),
        (
            vec![("/spec/services/1/host_ids/1", s("host-9"))],
            vec![(
                "spec.services[1].host_ids[1]",
                "host \"host-9\" is not registered",
            )],
        ),
        // postgrest requires none of its keys: no config is `{}` (the next test).
        (vec![("/spec/services/1/config", None)], vec![]),
        (
            vec![("/spec/services/1/config", Some(json!([])))],
            vec![("spec.services[1].config", "expected an object")],
        ),
        (
            vec![("/spec/services/1/config/bogus", Some(json!(1)))],
            vec![("spec.services[1].config.bogus", "unknown field")],
        ),
        (
            vec![("/spec/services/0/config/llm_model", None)],
            vec![(
                "spec.services[0].config.llm_model",
                "is required when llm_enabled is true",
            )],
        ),
        (
            vec![("/spec/services/0/port", Some(json!(65536)))],
            vec![("spec.services[0].port", "from 0 to 65535")],
        ),
        (
            vec![("/spec/services/0/port", s("8080"))],
            vec![("spec.services[0].port", "from 0 to 65535")],
        ),
        (
            vec![("/spec/services/1/port", Some(json!(8080)))],
            vec![(
                "spec.services[1].port",
                "port 8080 is already published on host \"host-1\" by spec.services[0]",
            )],
        ),
        (
            vec![("/spec/services/0/port", Some(json!(5432)))],
            vec![("spec.services[0].port", "port 5432 is the database's port")],
        ),
        (
            vec![("/spec/services/0/cpus", s("0"))],
            vec![("spec.services[0].cpus", "at least 0.01")],
        ),
        (
            vec![("/spec/services/0/cpus", s("lots"))],
            vec![("spec.services[0].cpus", "\"500m\"")],
        ),
        (
            vec![("/spec/services/0/cpus", Some(json!(0.5)))],
            vec![(
                "spec.services[0].cpus",
                "expected a string like \"0.5\" or \"500m\"",
            )],
        ),
        (
            vec![("/spec/services/0/memory", s("1m"))],
            vec![("spec.services[0].memory", "ambiguous")],
        ),
        (
            vec![("/spec/services/0/memory", s("-1G"))],
            vec![("spec.services[0].memory", "expected a size")],
        ),
        (
            vec![("/spec/services/0/memory", Some(json!(512)))],
            vec![("spec.services[0].memory", "expected a string like \"512M\"")],
        ),
        (
            vec![("/spec/services/0/database_connection", s("n1"))],
            vec![("spec.services[0].database_connection", "expected an object")],
        ),
        (
            vec![("/spec/services/0/database_connection/pool", Some(json!(1)))],
            vec![(
                "spec.services[0].database_connection.pool",
                "unknown field; allowed: target_nodes, target_session_attrs",
            )],
        ),
        (
            vec![(
                "/spec/services/0/database_connection/target_nodes",
                Some(json!([])),
            )],
            vec![(
                "spec.services[0].database_connection.target_nodes",
                "at least one node",
            )],
        ),
        (
            vec![("/spec/services/0/database_connection/target_nodes", s("n1"))],
            vec![(
                "spec.services[0].database_connection.target_nodes",
                "expected an array",
            )],
        ),
        (
            vec![(
                "/spec/services/0/database_connection/target_nodes/1",
                Some(json!(2)),
            )],
            vec![(
                "spec.services[0].database_connection.target_nodes[1]",
                "expected a string",
            )],
        ),
        (
            vec![(
                "/spec/services/0/database_connection/target_nodes/1",
                s("n3"),
            )],
            vec![(
                "spec.services[0].database_connection.target_nodes[1]",
                "\"n3\" is not a node of this database",
            )],
        ),
        (
            vec![(
                "/spec/services/0/database_connection/target_nodes/1",
                s("n1"),
            )],
            vec![(
                "spec.services[0].database_connection.target_nodes[1]",
                "node \"n1\" is listed twice",
            )],
        ),
        (
            vec![(
                "/spec/services/0/database_connection/target_session_attrs",
                s("master"),
            )],
            vec![(
                "spec.services[0].database_connection.target_session_attrs",
                "expected one of: primary, prefer-standby, standby, read-write, any",
            )],
        ),
    ];
    for (edits, want) in cases {
        check(&edits, &want);
    }
}

#[test]
fn an_invalid_type_skips_version_and_config_checks() {
    // The type is what both are checked against: one error, not three.
    check(
        &[
            ("/spec/services/1/service_type", s("redis")),
            ("/spec/services/1/version", s("9.9.9")),
        ],
        &[("spec.services[1].service_type", "expected one of")],
    );
}

#[test]
fn deeply_nested_config_is_refused_without_recursing() {
    let mut deep = json!(1);
    for _ in 0..100 {
        deep = json!({"a": [deep]});
    }
    check(
        &[("/spec/services/1/config/x", Some(deep))],
        &[("spec.services[1].config", "nested more than 32 levels")],
    );
}

#[test]
fn every_error_is_reported_at_once() {
    let body = edited(&[
        ("/id", s("Bad Id")),
        ("/spec/database_name", s("Bad-Name")),
        ("/spec/nodes/1/host_ids", Some(json!(["host-1"]))),
        ("/spec/services/0/cpus", s("0")),
        ("/spec/services/0/memory", s("lots")),
        ("/spec/services/0/config/llm_provider", s("gemini")),
        ("/spec/services/1/service_type", s("redis")),
        ("/spec/services/1/host_ids/1", s("host-9")),
    ]);
    let got = errors(&body);
    let paths: Vec<&str> = got.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(
        paths,
        [
            "id",
            "spec.database_name",
            "spec.services[0].cpus",
            "spec.services[0].memory",
            "spec.services[1].service_type",
            "spec.nodes[1].host_ids[0]",
            "spec.services[1].host_ids[1]",
            "spec.services[0].config.llm_provider",
        ],
        "{got:?}"
    );
    let message = create(&body).unwrap_err().to_string();
    assert!(message.starts_with("id: "), "{message}");
    assert!(message.contains("; spec.database_name: "), "{message}");
}

#[test]
fn hosts_are_not_checked_without_a_registry() {
    let manifest = Manifest::builtin();
    let ctx = ValidationContext {
        manifest: &manifest,
        known_hosts: None,
        previous: None,
    };
    let body = edited(&[("/spec/nodes/0/host_ids", Some(json!(["host-77"])))]);
    assert!(parse_create_request(&body, &ctx).is_ok());
}

#[test]
fn update_bodies() {
    let manifest = Manifest::builtin();
    let known = hosts();
    let ctx = ValidationContext {
        manifest: &manifest,
        known_hosts: Some(&known),
        previous: None,
    };
    let mut body = base();
    body.as_object_mut().unwrap().remove("id");
    let spec = parse_update_request(&body, &ctx).unwrap();
    assert_eq!(spec, create(&base()).unwrap().spec);

    let err = parse_update_request(&base(), &ctx).unwrap_err();
    assert_eq!(
        err.errors,
        vec![crate::FieldError::new("id", "unknown field; allowed: spec")]
    );
    let err = parse_update_request(&json!({}), &ctx).unwrap_err();
    assert_eq!(
        err.errors,
        vec![crate::FieldError::new("spec", "is required")]
    );
    let err = parse_update_request(&Value::Null, &ctx).unwrap_err();
    assert_eq!(err.errors[0].message, "expected an object, got null");
}

#[test]
fn updates_keep_omitted_secrets() {
    let manifest = Manifest::builtin();
    let previous = create(&base()).unwrap().spec;
    let mut body = edited(&[
        ("/spec/services/0/config/anthropic_api_key", None),
        ("/spec/services/0/config/llm_model", s("m2")),
    ]);
    body.as_object_mut().unwrap().remove("id");

    // Without the stored spec the omission is an error...
    let ctx = ValidationContext {
        manifest: &manifest,
        known_hosts: None,
        previous: None,
    };
    let err = parse_update_request(&body, &ctx).unwrap_err();
    assert_eq!(
        err.errors[0].path,
        "spec.services[0].config.anthropic_api_key"
    );

    // ...with it, the stored secret is carried over before validation.
    let ctx = ValidationContext {
        manifest: &manifest,
        known_hosts: None,
        previous: Some(&previous),
    };
    let spec = parse_update_request(&body, &ctx).unwrap();
    assert_eq!(
        spec.services[0].config["anthropic_api_key"],
        json!("sk-ant-x")
    );
    assert_eq!(spec.services[0].config["llm_model"], json!("m2"));

    // The database's name is its data: an update cannot rename it.
    let mut renamed = body.clone();
    set(&mut renamed, "/spec/database_name", s("other"));
    let err = parse_update_request(&renamed, &ctx).unwrap_err();
    assert_eq!(err.errors.len(), 1, "{err:?}");
    assert_eq!(err.errors[0].path, "spec.database_name");
    assert!(err.errors[0].message.contains("cannot change"), "{err:?}");

    // A service of another type under the same id starts afresh.
    let mut retyped = body.clone();
    set(
        &mut retyped,
        "/spec/services/0/service_type",
        s("postgrest"),
    );
    set(&mut retyped, "/spec/services/0/version", s("latest"));
    let err = parse_update_request(&retyped, &ctx).unwrap_err();
    assert!(
        err.errors
            .iter()
            .all(|e| e.path.starts_with("spec.services[0].config.")),
        "{err:?}"
    );
    assert!(
        err.errors
            .iter()
            .all(|e| e.path != "spec.services[0].config.anthropic_api_key"),
        "{err:?}"
    );

    // Sending null removes the secret, which here makes the config invalid.
    let mut removed = body.clone();
    set(
        &mut removed,
        "/spec/services/0/config/anthropic_api_key",
        Some(Value::Null),
    );
    let err = parse_update_request(&removed, &ctx).unwrap_err();
    assert_eq!(
        err.errors[0].path,
        "spec.services[0].config.anthropic_api_key"
    );
}

#[test]
fn database_ids() {
    assert_eq!(validate_database_id("example"), Ok(()));
    assert_eq!(
        validate_database_id("123e4567-e89b-12d3-a456-426614174000"),
        Ok(())
    );
    assert!(validate_database_id("Example").is_err());
    assert!(validate_database_id("-x").is_err());
}

/// `tenant_id` (the reference API's owner identifier) is optional on create and update,
/// checked by the reference's identifier rule, and named by its path when wrong.
#[test]
fn tenant_ids_on_create_and_update() {
    assert_eq!(create(&base()).unwrap().tenant_id, None);
    let with = edited(&[("/tenant_id", Some(json!("engineering")))]);
    assert_eq!(
        create(&with).unwrap().tenant_id.as_deref(),
        Some("engineering")
    );
    for bad in [json!("Eng"), json!(""), json!(7), json!("a--b")] {
        let body = edited(&[("/tenant_id", Some(bad.clone()))]);
        let paths: Vec<String> = errors(&body).into_iter().map(|(p, _)| p).collect();
        assert_eq!(paths, ["tenant_id"], "{bad}");
    }

    let manifest = Manifest::builtin();
    let known = hosts();
    let ctx = ValidationContext {
        manifest: &manifest,
        known_hosts: Some(&known),
        previous: None,
    };
    let mut body = base();
    body.as_object_mut().unwrap().remove("id");
    let plain = crate::parse_update_body(&body, &ctx).unwrap();
    assert_eq!(plain.tenant_id, None);
    body["tenant_id"] = json!("8210ec10-2dca-406c-ac4a-0661d2189954");
    let owned = crate::parse_update_body(&body, &ctx).unwrap();
    assert_eq!(
        owned.tenant_id.as_deref(),
        Some("8210ec10-2dca-406c-ac4a-0661d2189954")
    );
    assert_eq!(owned.spec, plain.spec);
    body["tenant_id"] = json!("-x");
    let err = crate::parse_update_body(&body, &ctx).unwrap_err();
    assert_eq!(err.errors[0].path, "tenant_id");
}

/// A type none of whose config keys is required may leave `config` out: it reads as `{}`
/// and is validated as such. A type with required keys (rag) still needs it.
#[test]
fn config_may_be_left_out_when_nothing_in_it_is_required() {
    let req = create(&edited(&[("/spec/services/1/config", None)])).expect("accepted");
    assert_eq!(req.spec.services[1].service_type, ServiceType::Postgrest);
    assert!(req.spec.services[1].config.is_empty());

    let rag = json!({"service_id": "docs", "service_type": "rag", "version": "latest",
                     "host_ids": ["host-1"]});
    let got = errors(&edited(&[("/spec/services/2", Some(rag))]));
    assert_eq!(
        got,
        vec![(
            "spec.services[2].config".to_string(),
            "is required".to_string()
        )]
    );
}
