//! `postgrest`: a REST API over the database's schemas.

use serde_json::{Map, Value};

use super::ServiceConfigRules;
use crate::check::{Errors, Obj, expect_str, index, kind};
use crate::ident::validate_pg_identifier;
use crate::{FieldError, ServiceType};

pub(super) struct Postgrest;

const KEYS: &[&str] = &[
    "db_schemas",
    "db_anon_role",
    "db_pool",
    "max_rows",
    "jwt_secret",
    "jwt_aud",
    "server_cors_allowed_origins",
];

/// PostgREST refuses shorter HS256 secrets.
const MIN_JWT_SECRET_CHARS: usize = 32;

pub(super) const DEFAULT_SCHEMAS: &str = "public";
pub(super) const DEFAULT_POOL: i64 = 10;

impl ServiceConfigRules for Postgrest {
    fn service_type(&self) -> ServiceType {
        ServiceType::Postgrest
    }

    fn validate(&self, config: &Map<String, Value>, path: &str) -> Vec<FieldError> {
        let mut e = Errors::default();
        let o = Obj {
            map: config,
            path: path.to_string(),
        };
        o.deny_unknown(KEYS, &mut e);

        if let Some(v) = o.get("db_schemas") {
            validate_schemas(v, &o.at("db_schemas"), &mut e);
        }
        if let Some(role) = o.str("db_anon_role", &mut e) {
            if let Err(msg) = validate_pg_identifier(role) {
                e.push(o.at("db_anon_role"), msg);
            } else if role.starts_with("pg_") {
                e.push(
                    o.at("db_anon_role"),
                    "role names starting with \"pg_\" are reserved by Postgres",
                );
            }
        }
        o.int("db_pool", 1, 30, &mut e);
        o.int("max_rows", 1, 10_000, &mut e);
        if let Some(secret) = o.str("jwt_secret", &mut e)
            && secret.chars().count() < MIN_JWT_SECRET_CHARS
        {
            e.push(
                o.at("jwt_secret"),
                format!("must be at least {MIN_JWT_SECRET_CHARS} characters"),
            );
        }
        o.non_empty_str("jwt_aud", &mut e);
        o.non_empty_str("server_cors_allowed_origins", &mut e);
        e.0
    }

    fn apply_defaults(&self, config: &mut Map<String, Value>) {
        config
            .entry("db_schemas")
            .or_insert_with(|| Value::String(DEFAULT_SCHEMAS.into()));
        config
            .entry("db_pool")
            .or_insert_with(|| Value::from(DEFAULT_POOL));
    }
}

/// `db_schemas` is one schema, a comma-separated list (PostgREST's own syntax), or an
/// array; every schema must be a distinct Postgres identifier.
fn validate_schemas(v: &Value, path: &str, e: &mut Errors) {
    let mut seen: Vec<String> = Vec::new();
    let mut check = |name: &str, at: String, e: &mut Errors| {
        if let Err(msg) = validate_pg_identifier(name) {
            e.push(at, format!("schema \"{name}\" {msg}"));
        } else if seen.iter().any(|s| s == name) {
            e.push(at, format!("schema \"{name}\" is listed twice"));
        }
        seen.push(name.to_string());
    };
    match v {
        Value::String(s) => {
            for name in s.split(',') {
                check(name.trim(), path.to_string(), e);
            }
        }
        Value::Array(items) if items.is_empty() => e.push(path, "must list at least one schema"),
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                if let Some(name) = expect_str(item, &index(path, i), e) {
                    check(name, index(path, i), e);
                }
            }
        }
        other => e.push(
            path,
            format!(
                "expected a string or an array of strings, got {}",
                kind(other)
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::ServiceType::Postgrest;
    use crate::catalog::test_util::{assert_errors, assert_valid, map};

    #[test]
    fn valid_configs() {
        assert_valid(Postgrest, json!({}));
        assert_valid(
            Postgrest,
            json!({"db_schemas": "api, public", "db_anon_role": "web_anon", "db_pool": 30, "max_rows": 10000,
                   "jwt_secret": "0123456789abcdef0123456789abcdef", "jwt_aud": "berth",
                   "server_cors_allowed_origins": "https://example.com"}),
        );
        assert_valid(
            Postgrest,
            json!({"db_schemas": ["api", "public"], "db_pool": 1, "max_rows": 1}),
        );
    }

    #[test]
    fn each_rule() {
        let cases: Vec<(serde_json::Value, Vec<(&str, &str)>)> = vec![
            (
                json!({"db_schema": "x"}),
                vec![("c.db_schema", "unknown field")],
            ),
            (
                json!({"db_schemas": 5}),
                vec![("c.db_schemas", "expected a string or an array of strings")],
            ),
            (
                json!({"db_schemas": []}),
                vec![("c.db_schemas", "at least one schema")],
            ),
            (
                json!({"db_schemas": ["api", 7]}),
                vec![("c.db_schemas[1]", "expected a string")],
            ),
            (
                json!({"db_schemas": ["api", "Bad-Name"]}),
                vec![("c.db_schemas[1]", "schema \"Bad-Name\"")],
            ),
            (
                json!({"db_schemas": ["api", "api"]}),
                vec![("c.db_schemas[1]", "listed twice")],
            ),
            (
                json!({"db_schemas": "api,,public"}),
                vec![("c.db_schemas", "schema \"\"")],
            ),
            (
                json!({"db_schemas": ""}),
                vec![("c.db_schemas", "schema \"\"")],
            ),
            (
                json!({"db_anon_role": "Web Anon"}),
                vec![("c.db_anon_role", "Postgres identifier")],
            ),
            (
                json!({"db_anon_role": "pg_monitor"}),
                vec![("c.db_anon_role", "reserved")],
            ),
            (
                json!({"db_anon_role": false}),
                vec![("c.db_anon_role", "expected a string")],
            ),
            (json!({"db_pool": 0}), vec![("c.db_pool", "from 1 to 30")]),
            (json!({"db_pool": 31}), vec![("c.db_pool", "from 1 to 30")]),
            (
                json!({"db_pool": "10"}),
                vec![("c.db_pool", "from 1 to 30")],
            ),
            (
                json!({"max_rows": 0}),
                vec![("c.max_rows", "from 1 to 10000")],
            ),
            (
                json!({"max_rows": 10001}),
                vec![("c.max_rows", "from 1 to 10000")],
            ),
            (
                json!({"jwt_secret": "short"}),
                vec![("c.jwt_secret", "at least 32 characters")],
            ),
            (
                json!({"jwt_secret": 12}),
                vec![("c.jwt_secret", "expected a string")],
            ),
            (
                json!({"jwt_aud": ""}),
                vec![("c.jwt_aud", "must not be empty")],
            ),
            (
                json!({"server_cors_allowed_origins": ["x"]}),
                vec![("c.server_cors_allowed_origins", "expected a string")],
            ),
        ];
        for (config, want) in cases {
            assert_errors(Postgrest, config, &want);
        }
    }

    #[test]
    fn defaults() {
        let mut config = map(json!({"db_pool": 5}));
        crate::catalog::apply_defaults(Postgrest, &mut config);
        assert_eq!(
            serde_json::Value::Object(config),
            json!({"db_pool": 5, "db_schemas": "public"})
        );
    }
}
