//! `postgrest`: a REST API over the database's schemas.

use super::fields::{Field, Format, Kind, Lit, text};
use super::{ServiceRules, SessionAttrsRule};
use crate::{ServiceType, TargetSessionAttrs};

/// PostgREST refuses shorter HS256 secrets.
const MIN_JWT_SECRET_CHARS: usize = 32;

const FIELDS: &[Field] = &[
    Field::new(
        "db_schemas",
        Kind::SchemaList,
        "The schemas to serve: one name, a comma-separated list, or an array.",
    )
    .default(Lit::Str("public")),
    Field::new(
        "db_anon_role",
        Kind::String {
            min_chars: 0,
            format: Format::PgRole,
        },
        "The role unauthenticated requests run as; not one starting with `pg_`.",
    )
    .example(Lit::Str("web_anon")),
    Field::new(
        "db_pool",
        Kind::Int { min: 1, max: 30 },
        "Database connections in PostgREST's pool.",
    )
    .default(Lit::Int(10)),
    Field::new(
        "max_rows",
        Kind::Int {
            min: 1,
            max: 10_000,
        },
        "Most rows one response returns.",
    ),
    Field::new(
        "jwt_secret",
        Kind::String {
            min_chars: MIN_JWT_SECRET_CHARS,
            format: Format::Plain,
        },
        "The HS256 secret that signs accepted JWTs, at least 32 characters.",
    )
    .example(Lit::Str("an-example-secret-of-32-characters")),
    Field::new(
        "jwt_aud",
        text(Format::Plain),
        "The audience a JWT must name.",
    ),
    Field::new(
        "server_cors_allowed_origins",
        text(Format::Plain),
        "Origins allowed to call the API from a browser, comma-separated.",
    )
    .example(Lit::Str("https://example.com")),
];

pub(super) const POSTGREST: ServiceRules = ServiceRules {
    service_type: ServiceType::Postgrest,
    summary: "A REST API over the database's schemas.",
    fields: FIELDS,
    extra_defaults: None,
    // It serves writes.
    session_attrs: SessionAttrsRule {
        default: TargetSessionAttrs::ReadWrite,
        when: &[],
    },
};

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
