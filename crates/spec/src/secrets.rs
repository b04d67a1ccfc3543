//! Secret values inside service configs: removing them from what the API returns, splitting
//! them out so the store can encrypt them apart, and carrying them over on updates. Backup
//! repositories' keys follow the same rules ([`crate::backup`]).
//!
//! A secret is the value of any object key for which [`is_secret_key`] holds, at any depth
//! (objects nested in objects or arrays). The whole value is the secret, even when it is an
//! object itself.

use serde_json::{Map, Value};

use crate::DatabaseSpec;
use crate::catalog::is_secret_key;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretsError {
    #[error(
        "secret at \"{0}\" has no place in the config (its parent is missing or not a container)"
    )]
    NoPlace(String),
    #[error("\"{0}\" is not a JSON pointer")]
    BadPointer(String),
}

/// The config without its secrets: secret keys are removed entirely, not masked, so a
/// client cannot tell a stored secret's length or send the mask back as the value.
pub fn redact(config: &Map<String, Value>) -> Map<String, Value> {
    split_secrets(config).0
}

/// The spec with every service config and every backup repository redacted
/// ([`crate::backup::redact_backups`]), as the API returns it.
pub fn redact_spec(spec: &DatabaseSpec) -> DatabaseSpec {
    let mut spec = spec.clone();
    for service in &mut spec.services {
        service.config = redact(&service.config);
    }
    crate::backup::redact_backups(&mut spec);
    spec
}

/// Splits a config into its public part and its secrets, each secret named by the RFC 6901
/// JSON pointer of its place (`/pipelines/0/rag_llm/api_key`).
pub fn split_secrets(config: &Map<String, Value>) -> (Map<String, Value>, Vec<(String, Value)>) {
    let mut secrets = Vec::new();
    let public = split_map(config, "", &mut secrets);
    (public, secrets)
}

fn split_map(
    map: &Map<String, Value>,
    pointer: &str,
    secrets: &mut Vec<(String, Value)>,
) -> Map<String, Value> {
    let mut public = Map::new();
    for (key, value) in map {
        let here = format!("{pointer}/{}", escape(key));
        if is_secret_key(key) {
            secrets.push((here, value.clone()));
        } else {
            public.insert(key.clone(), split_value(value, &here, secrets));
        }
    }
    public
}

fn split_value(value: &Value, pointer: &str, secrets: &mut Vec<(String, Value)>) -> Value {
    match value {
        Value::Object(map) => Value::Object(split_map(map, pointer, secrets)),
        Value::Array(items) => Value::Array(
            items
                .iter()
                .enumerate()
                .map(|(i, v)| split_value(v, &format!("{pointer}/{i}"), secrets))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// Puts secrets split off by [`split_secrets`] back in place.
///
/// Fails, changing nothing, when a pointer's parent is not in the config: the public part
/// and the secrets no longer belong together, and silently dropping a secret would lose it.
pub fn merge_secrets(
    config: &mut Map<String, Value>,
    secrets: Vec<(String, Value)>,
) -> Result<(), SecretsError> {
    let mut merged = config.clone();
    for (pointer, value) in secrets {
        let tokens =
            parse_pointer(&pointer).ok_or_else(|| SecretsError::BadPointer(pointer.clone()))?;
        let Some((last, parents)) = tokens.split_last() else {
            return Err(SecretsError::BadPointer(pointer));
        };
        let map = parent_object(&mut merged, parents)
            .ok_or_else(|| SecretsError::NoPlace(pointer.clone()))?;
        map.insert(last.clone(), value);
    }
    *config = merged;
    Ok(())
}

/// The object that `parents` (pointer tokens) lead to from `root`.
fn parent_object<'m>(
    root: &'m mut Map<String, Value>,
    parents: &[String],
) -> Option<&'m mut Map<String, Value>> {
    let Some((first, rest)) = parents.split_first() else {
        return Some(root);
    };
    let mut at = root.get_mut(first)?;
    for token in rest {
        at = match at {
            Value::Object(m) => m.get_mut(token)?,
            Value::Array(items) => items.get_mut(token.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    match at {
        Value::Object(m) => Some(m),
        _ => None,
    }
}

/// For every service present in both specs with the same `service_id` and `service_type`,
/// copies each secret the new config leaves out from the old one, so an update need not
/// resend secrets it cannot read back.
///
/// A key present in the new config, even as `null`, is the caller's choice and is kept:
/// sending `null` is how a secret is removed. Array elements are paired by their `name`
/// field when they have one (RAG pipelines can be reordered), otherwise by position. An
/// object whose `provider` changed gets no secrets from the old one: a key for one provider
/// is never sent to another.
pub fn carry_over_secrets(new: &mut DatabaseSpec, old: &DatabaseSpec) {
    for service in &mut new.services {
        let previous = old
            .services
            .iter()
            .find(|s| s.service_id == service.service_id && s.service_type == service.service_type);
        if let Some(previous) = previous {
            carry_over_config(&mut service.config, &previous.config);
        }
    }
}

/// [`carry_over_secrets`] for one service's config.
pub(crate) fn carry_over_config(new: &mut Map<String, Value>, old: &Map<String, Value>) {
    carry_map(new, old);
}

fn carry_map(new: &mut Map<String, Value>, old: &Map<String, Value>) {
    let same_provider = new.get("provider") == old.get("provider");
    for (key, old_value) in old {
        if is_secret_key(key) {
            if same_provider && !new.contains_key(key) {
                new.insert(key.clone(), old_value.clone());
            }
        } else if let Some(new_value) = new.get_mut(key) {
            carry_value(new_value, old_value);
        }
    }
}

fn carry_value(new: &mut Value, old: &Value) {
    match (new, old) {
        (Value::Object(n), Value::Object(o)) => carry_map(n, o),
        (Value::Array(n), Value::Array(o)) => {
            for (i, item) in n.iter_mut().enumerate() {
                let partner = match name_of(item) {
                    Some(name) => o
                        .iter()
                        .find(|candidate| name_of(candidate) == Some(name.clone())),
                    None => o.get(i).filter(|candidate| name_of(candidate).is_none()),
                };
                if let Some(partner) = partner {
                    carry_value(item, partner);
                }
            }
        }
        _ => {}
    }
}

fn name_of(v: &Value) -> Option<String> {
    v.get("name").and_then(Value::as_str).map(str::to_string)
}

fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

fn parse_pointer(pointer: &str) -> Option<Vec<String>> {
    let rest = pointer.strip_prefix('/')?;
    Some(
        rest.split('/')
            .map(|t| t.replace("~1", "/").replace("~0", "~"))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::catalog::test_util::map;
    use crate::{NodeSpec, ServiceSpec, ServiceType};

    fn nested() -> Map<String, Value> {
        map(json!({
            "llm_model": "m",
            "anthropic_api_key": "sk-ant",
            "llm_max_tokens": 100,
            "weird/key~": {"password": "p", "keep": 1},
            "pipelines": [
                {"name": "a", "token_budget": 5, "rag_llm": {"provider": "openai", "api_key": "k1"}},
                {"name": "b", "rag_llm": {"provider": "anthropic", "api_key": {"nested": "whole"}}}
            ]
        }))
    }

    #[test]
    fn redact_removes_secrets_at_every_depth() {
        let redacted = redact(&nested());
        assert_eq!(
            Value::Object(redacted),
            json!({
                "llm_model": "m",
                "llm_max_tokens": 100,
                "weird/key~": {"keep": 1},
                "pipelines": [
                    {"name": "a", "token_budget": 5, "rag_llm": {"provider": "openai"}},
                    {"name": "b", "rag_llm": {"provider": "anthropic"}}
                ]
            })
        );
    }

    #[test]
    fn split_then_merge_round_trips() {
        let config = nested();
        let (mut public, secrets) = split_secrets(&config);
        let pointers: Vec<&str> = secrets.iter().map(|(p, _)| p.as_str()).collect();
        assert!(pointers.contains(&"/anthropic_api_key"));
        assert!(pointers.contains(&"/weird~1key~0/password"));
        assert!(pointers.contains(&"/pipelines/0/rag_llm/api_key"));
        assert!(pointers.contains(&"/pipelines/1/rag_llm/api_key"));
        assert_eq!(secrets.len(), 4);
        merge_secrets(&mut public, secrets).unwrap();
        assert_eq!(public, config);
    }

    #[test]
    fn merge_refuses_secrets_without_a_place() {
        let mut public = map(json!({"pipelines": []}));
        let before = public.clone();
        let err = merge_secrets(
            &mut public,
            vec![
                ("/top_api_key".into(), json!("ok")),
                ("/pipelines/0/rag_llm/api_key".into(), json!("k")),
            ],
        )
        .unwrap_err();
        assert_eq!(
            err,
            SecretsError::NoPlace("/pipelines/0/rag_llm/api_key".into())
        );
        assert_eq!(public, before, "a failed merge changes nothing");
        assert!(matches!(
            merge_secrets(&mut public, vec![("nope".into(), json!(1))]),
            Err(SecretsError::BadPointer(_))
        ));
        assert!(matches!(
            merge_secrets(&mut public, vec![("/llm_model/api_key".into(), json!(1))]),
            Err(SecretsError::NoPlace(_))
        ));
    }

    fn spec_with(services: Vec<ServiceSpec>) -> DatabaseSpec {
        DatabaseSpec {
            database_name: "db".into(),
            postgres_version: None,
            port: None,
            nodes: vec![NodeSpec {
                name: "n1".into(),
                host_ids: vec!["h".into()],
                source_node: None,
                backup_config: None,
                restore_config: None,
            }],
            services,
            backup_config: None,
            restore_config: None,
        }
    }

    fn service(id: &str, t: ServiceType, config: Value) -> ServiceSpec {
        ServiceSpec {
            service_id: id.into(),
            service_type: t,
            version: "latest".into(),
            host_ids: vec!["h".into()],
            config: map(config),
            port: None,
            cpus: None,
            memory: None,
            database_connection: None,
        }
    }

    #[test]
    fn carry_over() {
        let old = spec_with(vec![
            service(
                "mcp",
                ServiceType::Mcp,
                json!({"llm_model": "a", "anthropic_api_key": "old-key", "openai_api_key": "o"}),
            ),
            service(
                "other",
                ServiceType::Mcp,
                json!({"anthropic_api_key": "other-key"}),
            ),
            service(
                "typed",
                ServiceType::Mcp,
                json!({"anthropic_api_key": "typed-key"}),
            ),
            service(
                "rag",
                ServiceType::Rag,
                json!({"pipelines": [
                    {"name": "x", "rag_llm": {"provider": "openai", "api_key": "x-key"}},
                    {"name": "y", "rag_llm": {"provider": "openai", "api_key": "y-key"}},
                    {"name": "z", "rag_llm": {"provider": "openai", "api_key": "z-key"}}
                ]}),
            ),
        ]);
        let mut new = spec_with(vec![
            // Omitted key carried; a key sent as null stays null (the caller removes it).
            service(
                "mcp",
                ServiceType::Mcp,
                json!({"llm_model": "b", "openai_api_key": null}),
            ),
            // A new service gets nothing.
            service("fresh", ServiceType::Mcp, json!({})),
            // Same id, other type: nothing.
            service("typed", ServiceType::Postgrest, json!({})),
            service(
                "rag",
                ServiceType::Rag,
                json!({"pipelines": [
                    {"name": "y", "rag_llm": {"provider": "openai"}},
                    {"name": "x", "rag_llm": {"provider": "openai", "api_key": "new-x"}},
                    {"name": "z", "rag_llm": {"provider": "anthropic"}},
                    {"name": "w", "rag_llm": {"provider": "openai"}}
                ]}),
            ),
        ]);
        carry_over_secrets(&mut new, &old);
        assert_eq!(
            Value::Object(new.services[0].config.clone()),
            json!({"llm_model": "b", "anthropic_api_key": "old-key", "openai_api_key": null})
        );
        assert!(new.services[1].config.is_empty());
        assert!(new.services[2].config.is_empty());
        assert_eq!(
            new.services[3].config["pipelines"],
            json!([
                {"name": "y", "rag_llm": {"provider": "openai", "api_key": "y-key"}},
                {"name": "x", "rag_llm": {"provider": "openai", "api_key": "new-x"}},
                {"name": "z", "rag_llm": {"provider": "anthropic"}},
                {"name": "w", "rag_llm": {"provider": "openai"}}
            ])
        );
    }

    #[test]
    fn redact_spec_redacts_every_service() {
        let spec = spec_with(vec![
            service(
                "a",
                ServiceType::Postgrest,
                json!({"jwt_secret": "s", "db_pool": 3}),
            ),
            service("b", ServiceType::Mcp, json!({"voyage_api_key": "v"})),
        ]);
        let redacted = redact_spec(&spec);
        assert_eq!(
            Value::Object(redacted.services[0].config.clone()),
            json!({"db_pool": 3})
        );
        assert!(redacted.services[1].config.is_empty());
        assert_eq!(redacted.nodes, spec.nodes);
    }

    #[test]
    fn debug_of_a_spec_shows_no_secret() {
        let spec = spec_with(vec![service(
            "a",
            ServiceType::Rag,
            json!({"pipelines": [{"rag_llm": {"api_key": "sk-NESTED"}}], "jwt_secret": "JWT-X"}),
        )]);
        let debug = format!("{spec:?}");
        assert!(
            !debug.contains("sk-NESTED") && !debug.contains("JWT-X"),
            "{debug}"
        );
        assert!(debug.contains("/pipelines/0/rag_llm/api_key"), "{debug}");
    }
}
