//! Properties over arbitrary input: the parser never panics, accepted specs re-parse to
//! themselves, and redaction never lets a secret key through.

use std::collections::BTreeSet;

use proptest::prelude::*;
use serde_json::{Map, Value, json};
use spec::catalog::is_secret_key;
use spec::secrets::{merge_secrets, redact, split_secrets};
use spec::{Manifest, ValidationContext, parse_create_request, parse_update_request};

/// Keys drawn from the real schema, secret-looking names and noise, so generated objects
/// hit both the known-field paths and the unknown-field ones.
const KEYS: &[&str] = &[
    "id",
    "spec",
    "database_name",
    "postgres_version",
    "port",
    "nodes",
    "services",
    "name",
    "host_ids",
    "service_id",
    "service_type",
    "version",
    "config",
    "cpus",
    "memory",
    "database_connection",
    "target_nodes",
    "target_session_attrs",
    "llm_enabled",
    "llm_provider",
    "llm_model",
    "anthropic_api_key",
    "pipelines",
    "tables",
    "rag_llm",
    "api_key",
    "jwt_secret",
    "password",
    "access_token",
    "llm_max_tokens",
    "token_budget",
    "db_schemas",
    "x",
    "",
];

fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        prop::sample::select(vec![
            "",
            "latest",
            "1.0",
            "n1",
            "host-1",
            "mcp",
            "rag",
            "postgrest",
            "0.5",
            "500m",
            "1GiB",
            "primary",
            "anthropic",
            "openai",
            "ollama",
            "voyage",
            "public",
            "http://o:1",
        ])
        .prop_map(|s| Value::String(s.to_string())),
        ".{0,12}".prop_map(Value::String),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    scalar().prop_recursive(6, 64, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((prop::sample::select(KEYS), inner), 0..6).prop_map(|kv| {
                Value::Object(kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
            }),
        ]
    })
}

fn seed() -> Value {
    json!({"id": "example", "spec": {"database_name": "example", "port": 5432,
    "nodes": [{"name": "n1", "host_ids": ["host-1"]}, {"name": "n2", "host_ids": ["host-2"]}],
    "services": [
        {"service_id": "mcp-server", "service_type": "mcp", "version": "latest", "host_ids": ["host-1"],
         "port": 8080, "cpus": "0.5", "memory": "1GiB",
         "database_connection": {"target_nodes": ["n1"], "target_session_attrs": "primary"},
         "config": {"llm_enabled": true, "llm_provider": "anthropic", "llm_model": "claude-sonnet-4-5",
                    "anthropic_api_key": "sk-ant-..."}},
        {"service_id": "rag", "service_type": "rag", "version": "1.0", "host_ids": ["host-2"],
         "config": {"pipelines": [{"name": "docs",
            "tables": [{"table": "docs", "text_column": "body", "vector_column": "embedding"}],
            "embedding_llm": {"provider": "openai", "model": "m", "api_key": "k"},
            "rag_llm": {"provider": "anthropic", "model": "m", "api_key": "k"}}]}},
        {"service_id": "api", "service_type": "postgrest", "version": "12", "host_ids": ["host-1", "host-2"],
         "config": {"db_schemas": ["public"], "db_pool": 5}}
    ]}})
}

/// Every JSON pointer inside `v`, so a mutation can land anywhere in a realistic body.
fn pointers(v: &Value, at: String, out: &mut Vec<String>) {
    out.push(at.clone());
    match v {
        Value::Object(m) => m
            .iter()
            .for_each(|(k, v)| pointers(v, format!("{at}/{k}"), out)),
        Value::Array(a) => a
            .iter()
            .enumerate()
            .for_each(|(i, v)| pointers(v, format!("{at}/{i}"), out)),
        _ => {}
    }
}

fn seed_pointers() -> Vec<String> {
    let mut out = Vec::new();
    pointers(&seed(), String::new(), &mut out);
    out
}

fn check_parse(body: &Value) {
    let manifest = Manifest::builtin();
    let known: BTreeSet<String> = ["host-1", "host-2"].into_iter().map(String::from).collect();
    let ctx = ValidationContext {
        manifest: &manifest,
        known_hosts: Some(&known),
        previous: None,
    };
    match parse_create_request(body, &ctx) {
        Ok(req) => {
            // What was accepted, sent back as an update, is accepted unchanged.
            let again = parse_update_request(
                &json!({"spec": serde_json::to_value(&req.spec).unwrap()}),
                &ctx,
            );
            assert_eq!(again.as_ref(), Ok(&req.spec));
        }
        Err(err) => assert!(!err.errors.is_empty()),
    }
    let previous = parse_create_request(&seed(), &ctx).unwrap().spec;
    let ctx = ValidationContext {
        previous: Some(&previous),
        ..ctx
    };
    let _ = parse_update_request(body, &ctx);
}

fn assert_no_secret_key(v: &Value) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                assert!(!is_secret_key(k), "secret key {k:?} survived redaction");
                assert_no_secret_key(v);
            }
        }
        Value::Array(a) => a.iter().for_each(assert_no_secret_key),
        _ => {}
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn parse_never_panics_on_arbitrary_json(body in json_value()) {
        check_parse(&body);
        check_parse(&json!({"spec": body}));
    }

    #[test]
    fn parse_never_panics_on_a_mutated_seed(
        edits in prop::collection::vec((prop::sample::select(seed_pointers()), json_value()), 1..4)
    ) {
        let mut body = seed();
        for (pointer, value) in edits {
            if let Some(slot) = body.pointer_mut(&pointer) {
                *slot = value;
            }
        }
        check_parse(&body);
    }

    #[test]
    fn redact_never_returns_a_secret_key(config in json_value()) {
        let map = match config {
            Value::Object(m) => m,
            other => Map::from_iter([("nested".to_string(), other)]),
        };
        let redacted = redact(&map);
        assert_no_secret_key(&Value::Object(redacted.clone()));

        let (mut public, secrets) = split_secrets(&map);
        prop_assert_eq!(&public, &redacted);
        merge_secrets(&mut public, secrets).unwrap();
        prop_assert_eq!(public, map);
    }
}

#[test]
fn the_seed_is_valid_and_round_trips() {
    let manifest = Manifest::builtin();
    let ctx = ValidationContext {
        manifest: &manifest,
        known_hosts: None,
        previous: None,
    };
    parse_create_request(&seed(), &ctx).unwrap();
    check_parse(&seed());
}
