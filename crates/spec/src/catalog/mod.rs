//! The service catalog: per service type, which `config` keys are accepted, their rules and
//! their defaults, and the defaults a service's connection gets.
//!
//! Each type lives in its own module as one [`ServiceRules`] value whose [`fields`] table is
//! what validation reads and what `GET /v1/service-types` describes ([`describe`]). Adding a
//! type is a new `ServiceType` variant, one module, and one match arm in [`rules`] (the match
//! is exhaustive, so forgetting the arm does not compile).
//!
//! Validation is strict: unknown keys are rejected. A `null` value reads as "absent".
//! Defaults are not written into the stored spec (the spec echoes what the user wrote);
//! whoever renders a container's configuration asks for [`effective_config`].

pub mod describe;
pub mod example;
pub mod fields;
mod mcp;
mod postgrest;
mod rag;
pub mod schema;

use serde_json::{Map, Value};

use self::fields::{Cond, Field};
use crate::check::{Errors, Obj};
use crate::{FieldError, ServiceType, TargetSessionAttrs};

/// Everything the catalog knows about one service type.
#[derive(Debug)]
pub struct ServiceRules {
    pub service_type: ServiceType,
    /// One sentence: what the service is.
    pub summary: &'static str,
    /// The keys of `config`, in the order errors about them are reported.
    pub fields: &'static [Field],
    /// The `target_session_attrs` its connection string gets when the spec's
    /// `database_connection` sets none.
    pub session_attrs: SessionAttrsRule,
    /// Defaults a table cannot state (rag's pipelines inheriting `defaults`), applied after
    /// the table's own.
    extra_defaults: Option<fn(&mut Map<String, Value>)>,
}

/// The `target_session_attrs` a service type gets by default: the first `when` whose condition
/// holds in the service's effective config, else `default`.
#[derive(Debug, Clone, Copy)]
pub struct SessionAttrsRule {
    pub default: TargetSessionAttrs,
    pub when: &'static [(Cond, TargetSessionAttrs)],
}

/// The rules of a service type.
pub fn rules(service_type: ServiceType) -> &'static ServiceRules {
    match service_type {
        ServiceType::Mcp => &mcp::MCP,
        ServiceType::Postgrest => &postgrest::POSTGREST,
        ServiceType::Rag => &rag::RAG,
    }
}

/// Whether a service of this type may leave `config` out (it then reads as `{}`): none of
/// the type's top-level keys is required unconditionally. A key required only when another
/// holds some value is still checked by [`validate_config`] on the `{}`.
pub fn config_optional(service_type: ServiceType) -> bool {
    rules(service_type).fields.iter().all(|f| !f.required)
}

/// Every error in a service's `config`, with paths under `path` (`spec.services[0].config`).
pub fn validate_config(
    service_type: ServiceType,
    config: &Map<String, Value>,
    path: &str,
) -> Vec<FieldError> {
    let mut e = Errors::default();
    let o = Obj {
        map: config,
        path: path.to_string(),
    };
    fields::check_object(&o, rules(service_type).fields, &mut e);
    e.0
}

/// Fills in a config's defaults in place; never overwrites a given value.
pub fn apply_defaults(service_type: ServiceType, config: &mut Map<String, Value>) {
    let rules = rules(service_type);
    fields::apply_table_defaults(rules.fields, config);
    if let Some(extra) = rules.extra_defaults {
        extra(config);
    }
}

/// The config a service actually runs with: the user's config plus defaults.
pub fn effective_config(
    service_type: ServiceType,
    config: &Map<String, Value>,
) -> Map<String, Value> {
    let mut effective = config.clone();
    apply_defaults(service_type, &mut effective);
    effective
}

/// The `target_session_attrs` a service of `service_type` gets when its spec sets none, from
/// its effective config ([`effective_config`]).
pub fn default_target_session_attrs(
    service_type: ServiceType,
    effective_config: &Map<String, Value>,
) -> TargetSessionAttrs {
    let rules = rules(service_type);
    rules
        .session_attrs
        .when
        .iter()
        .find(|(cond, _)| fields::holds_in(effective_config, rules.fields, cond))
        .map_or(rules.session_attrs.default, |(_, attrs)| *attrs)
}

/// Whether a config key holds a secret: it contains `api_key`, `secret` or `password`, or
/// ends with `token` (case-insensitive). Applies at any nesting depth.
///
/// `llm_max_tokens` and `token_budget` are not secrets: the first ends with `tokens`, the
/// second only starts with `token`.
pub fn is_secret_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    key.contains("api_key")
        || key.contains("secret")
        || key.contains("password")
        || key.ends_with("token")
}

/// Removes `null` values from objects, recursively, so a stored config never carries them.
pub(crate) fn strip_nulls(config: &mut Map<String, Value>) {
    config.retain(|_, v| !v.is_null());
    for v in config.values_mut() {
        strip_nulls_value(v);
    }
}

fn strip_nulls_value(v: &mut Value) {
    match v {
        Value::Object(map) => strip_nulls(map),
        Value::Array(items) => items.iter_mut().for_each(strip_nulls_value),
        _ => {}
    }
}

#[cfg(test)]
mod table_tests;

#[cfg(test)]
pub(crate) mod test_util {
    use serde_json::{Map, Value};

    use crate::ServiceType;

    /// Validates a config literal under the path `c`; returns `(path, message)` pairs.
    pub(crate) fn errors(t: ServiceType, config: Value) -> Vec<(String, String)> {
        let Value::Object(map) = config else {
            panic!("test config must be an object")
        };
        super::validate_config(t, &map, "c")
            .into_iter()
            .map(|e| (e.path, e.message))
            .collect()
    }

    /// Asserts that a config is valid.
    pub(crate) fn assert_valid(t: ServiceType, config: Value) {
        let errs = errors(t, config.clone());
        assert!(errs.is_empty(), "{config} should be valid, got {errs:?}");
    }

    /// Asserts that a config fails with exactly these paths, and that each message contains
    /// the paired fragment.
    pub(crate) fn assert_errors(t: ServiceType, config: Value, want: &[(&str, &str)]) {
        let errs = errors(t, config.clone());
        let paths: Vec<&str> = errs.iter().map(|(p, _)| p.as_str()).collect();
        let want_paths: Vec<&str> = want.iter().map(|(p, _)| *p).collect();
        assert_eq!(paths, want_paths, "{config}: got {errs:?}");
        for ((_, message), (_, fragment)) in errs.iter().zip(want) {
            assert!(
                message.contains(fragment),
                "{config}: message {message:?} lacks {fragment:?}"
            );
        }
    }

    pub(crate) fn map(v: Value) -> Map<String, Value> {
        let Value::Object(map) = v else {
            panic!("not an object")
        };
        map
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::test_util::map;
    use super::*;

    #[test]
    fn secret_keys() {
        for key in [
            "anthropic_api_key",
            "openai_api_key",
            "voyage_api_key",
            "api_key",
            "jwt_secret",
            "client_secret_id",
            "password",
            "db_password",
            "access_token",
            "token",
            "Refresh_Token",
            "API_KEY",
        ] {
            assert!(is_secret_key(key), "{key} should be secret");
        }
        for key in [
            "llm_max_tokens",
            "max_tokens",
            "token_budget",
            "tokens",
            "llm_model",
            "ollama_url",
            "top_n",
            "name",
            "jwt_aud",
            "tokenizer",
        ] {
            assert!(!is_secret_key(key), "{key} should not be secret");
        }
    }

    #[test]
    fn every_type_has_its_own_rules() {
        for t in ServiceType::ALL {
            assert_eq!(rules(t).service_type, t);
        }
    }

    #[test]
    fn strip_nulls_is_recursive() {
        let mut config =
            map(json!({"a": null, "b": {"c": null, "d": 1}, "e": [{"f": null}, null]}));
        strip_nulls(&mut config);
        assert_eq!(
            Value::Object(config),
            json!({"b": {"d": 1}, "e": [{}, null]})
        );
    }

    #[test]
    fn effective_config_keeps_given_values() {
        let config = map(json!({"allow_writes": true}));
        let effective = effective_config(ServiceType::Mcp, &config);
        assert_eq!(effective["allow_writes"], json!(true));
        assert_eq!(effective["llm_enabled"], json!(false));
    }
}
