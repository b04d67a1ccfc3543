//! `mcp`: a Model Context Protocol server, optionally an LLM proxy and an embedding client.
//!
//! Credentials (`*_api_key`, `ollama_url`) are accepted whatever is enabled: `openai_api_key`
//! and `ollama_url` serve both the LLM and the embeddings, and an update that omits a secret
//! keeps the stored one, so refusing an unused credential would refuse the caller's own
//! earlier spec. Settings (`llm_*`, `embedding_*`) are refused when their feature is off.

use serde_json::{Map, Value};

use super::{ServiceConfigRules, require_provider_credential};
use crate::check::{Errors, Obj, is_http_url};
use crate::{FieldError, ServiceType};

pub(super) struct Mcp;

const KEYS: &[&str] = &[
    "llm_enabled",
    "llm_provider",
    "llm_model",
    "llm_temperature",
    "llm_max_tokens",
    "anthropic_api_key",
    "openai_api_key",
    "voyage_api_key",
    "ollama_url",
    "allow_writes",
    "pool_max_conns",
    "embedding_enabled",
    "embedding_provider",
    "embedding_model",
];

const LLM_PROVIDERS: &[&str] = &["anthropic", "openai", "ollama"];
const EMBEDDING_PROVIDERS: &[&str] = &["openai", "voyage", "ollama"];
const LLM_SETTINGS: &[&str] = &[
    "llm_provider",
    "llm_model",
    "llm_temperature",
    "llm_max_tokens",
];
const EMBEDDING_SETTINGS: &[&str] = &["embedding_provider", "embedding_model"];

fn credential_for(provider: &str) -> Option<&'static str> {
    match provider {
        "anthropic" => Some("anthropic_api_key"),
        "openai" => Some("openai_api_key"),
        "voyage" => Some("voyage_api_key"),
        "ollama" => Some("ollama_url"),
        _ => None,
    }
}

impl ServiceConfigRules for Mcp {
    fn service_type(&self) -> ServiceType {
        ServiceType::Mcp
    }

    fn validate(&self, config: &Map<String, Value>, path: &str) -> Vec<FieldError> {
        let mut e = Errors::default();
        let o = Obj {
            map: config,
            path: path.to_string(),
        };
        o.deny_unknown(KEYS, &mut e);

        let llm_enabled = enabled_flag(&o, "llm_enabled", &mut e);
        let llm_provider = o.one_of("llm_provider", LLM_PROVIDERS, &mut e);
        o.non_empty_str("llm_model", &mut e);
        o.number("llm_temperature", 0.0, 2.0, &mut e);
        o.int("llm_max_tokens", 1, i64::MAX, &mut e);
        for key in ["anthropic_api_key", "openai_api_key", "voyage_api_key"] {
            o.non_empty_str(key, &mut e);
        }
        if let Some(url) = o.str("ollama_url", &mut e)
            && !is_http_url(url)
        {
            e.push(o.at("ollama_url"), "expected an http:// or https:// URL");
        }
        o.bool("allow_writes", &mut e);
        o.int("pool_max_conns", 1, 100, &mut e);
        let embedding_enabled = enabled_flag(&o, "embedding_enabled", &mut e);
        let embedding_provider = o.one_of("embedding_provider", EMBEDDING_PROVIDERS, &mut e);
        o.non_empty_str("embedding_model", &mut e);

        feature_rules(
            &o,
            llm_enabled,
            "llm_enabled",
            LLM_SETTINGS,
            llm_provider,
            "llm_provider",
            &mut e,
        );
        feature_rules(
            &o,
            embedding_enabled,
            "embedding_enabled",
            EMBEDDING_SETTINGS,
            embedding_provider,
            "embedding_provider",
            &mut e,
        );
        e.0
    }

    fn apply_defaults(&self, config: &mut Map<String, Value>) {
        for key in ["llm_enabled", "allow_writes", "embedding_enabled"] {
            config.entry(key).or_insert(Value::Bool(false));
        }
    }
}

/// The state of an on/off flag: absent reads as off; `None` when it has the wrong type, so
/// the rules that depend on it are skipped rather than piling guesses onto the type error.
fn enabled_flag(o: &Obj<'_>, key: &str, e: &mut Errors) -> Option<bool> {
    if o.has(key) {
        o.bool(key, e)
    } else {
        Some(false)
    }
}

/// When a feature is on, its provider and model are required along with the provider's
/// credential; when off, none of its settings may be given.
fn feature_rules(
    o: &Obj<'_>,
    enabled: Option<bool>,
    flag: &str,
    settings: &[&str],
    provider: Option<&str>,
    provider_key: &str,
    e: &mut Errors,
) {
    match enabled {
        Some(true) => {
            // settings[0] is the provider key and settings[1] the model key.
            for key in &settings[..2] {
                if !o.has(key) {
                    e.push(o.at(key), format!("is required when {flag} is true"));
                }
            }
            if let Some(provider) = provider {
                require_provider_credential(o, provider, provider_key, credential_for, e);
            }
        }
        Some(false) => {
            for key in settings {
                if o.has(key) {
                    e.push(o.at(key), format!("is only allowed when {flag} is true"));
                }
            }
        }
        None => {}
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::ServiceType::Mcp;
    use crate::catalog::test_util::{assert_errors, assert_valid};

    #[test]
    fn valid_configs() {
        assert_valid(Mcp, json!({}));
        assert_valid(Mcp, json!({"allow_writes": true, "pool_max_conns": 100}));
        assert_valid(
            Mcp,
            json!({"llm_enabled": true, "llm_provider": "anthropic", "llm_model": "claude-sonnet-4-5",
                   "anthropic_api_key": "sk-ant-x", "llm_temperature": 0.7, "llm_max_tokens": 4096}),
        );
        assert_valid(
            Mcp,
            json!({"llm_enabled": true, "llm_provider": "openai", "llm_model": "gpt-4o", "openai_api_key": "k"}),
        );
        assert_valid(
            Mcp,
            json!({"llm_enabled": true, "llm_provider": "ollama", "llm_model": "llama3.2", "ollama_url": "http://ollama:11434"}),
        );
        assert_valid(
            Mcp,
            json!({"embedding_enabled": true, "embedding_provider": "voyage", "embedding_model": "voyage-3", "voyage_api_key": "v"}),
        );
        // Unused credentials are accepted (an update that omits them carries them over).
        assert_valid(
            Mcp,
            json!({"llm_enabled": false, "anthropic_api_key": "sk"}),
        );
        // null reads as absent.
        assert_valid(Mcp, json!({"llm_enabled": null, "llm_provider": null}));
        assert_valid(
            Mcp,
            json!({"llm_temperature": null, "embedding_enabled": false}),
        );
        assert_valid(
            Mcp,
            json!({"llm_enabled": true, "llm_provider": "anthropic", "llm_model": "m",
                                  "anthropic_api_key": "k", "llm_temperature": 0, "llm_max_tokens": 1}),
        );
        assert_valid(
            Mcp,
            json!({"llm_enabled": true, "llm_provider": "anthropic", "llm_model": "m",
                                  "anthropic_api_key": "k", "llm_temperature": 2.0}),
        );
    }

    #[test]
    fn each_rule() {
        let cases: Vec<(serde_json::Value, Vec<(&str, &str)>)> = vec![
            (json!({"bogus": 1}), vec![("c.bogus", "unknown field")]),
            (
                json!({"llm_enabled": "yes"}),
                vec![("c.llm_enabled", "expected true or false")],
            ),
            (
                json!({"llm_enabled": true}),
                vec![
                    ("c.llm_provider", "required when llm_enabled is true"),
                    ("c.llm_model", "required when llm_enabled is true"),
                ],
            ),
            (
                json!({"llm_enabled": true, "llm_provider": "gemini", "llm_model": "m"}),
                vec![(
                    "c.llm_provider",
                    "expected one of: anthropic, openai, ollama",
                )],
            ),
            (
                json!({"llm_enabled": true, "llm_provider": "anthropic", "llm_model": "m"}),
                vec![(
                    "c.anthropic_api_key",
                    "required when llm_provider is anthropic",
                )],
            ),
            (
                json!({"llm_enabled": true, "llm_provider": "openai", "llm_model": "m"}),
                vec![("c.openai_api_key", "required when llm_provider is openai")],
            ),
            (
                json!({"llm_enabled": true, "llm_provider": "ollama", "llm_model": "m"}),
                vec![("c.ollama_url", "required when llm_provider is ollama")],
            ),
            (
                json!({"llm_enabled": true, "llm_provider": "ollama", "llm_model": "m", "ollama_url": "ollama:11434"}),
                vec![("c.ollama_url", "http:// or https://")],
            ),
            (
                json!({"llm_provider": "anthropic", "llm_model": "m", "llm_temperature": 1, "llm_max_tokens": 5}),
                vec![
                    ("c.llm_provider", "only allowed when llm_enabled is true"),
                    ("c.llm_model", "only allowed when llm_enabled is true"),
                    ("c.llm_temperature", "only allowed when llm_enabled is true"),
                    ("c.llm_max_tokens", "only allowed when llm_enabled is true"),
                ],
            ),
            (
                json!({"llm_enabled": true, "llm_provider": "anthropic", "llm_model": "", "anthropic_api_key": "k"}),
                vec![("c.llm_model", "must not be empty")],
            ),
            (
                json!({"llm_enabled": true, "llm_provider": "anthropic", "llm_model": 5, "anthropic_api_key": "k"}),
                vec![("c.llm_model", "expected a string")],
            ),
            (
                json!({"llm_enabled": true, "llm_provider": "anthropic", "llm_model": "m", "anthropic_api_key": "k", "llm_temperature": 2.5}),
                vec![("c.llm_temperature", "from 0 to 2")],
            ),
            (
                json!({"llm_enabled": true, "llm_provider": "anthropic", "llm_model": "m", "anthropic_api_key": "k", "llm_temperature": -0.1}),
                vec![("c.llm_temperature", "from 0 to 2")],
            ),
            (
                json!({"llm_enabled": true, "llm_provider": "anthropic", "llm_model": "m", "anthropic_api_key": "k", "llm_temperature": "hot"}),
                vec![("c.llm_temperature", "expected a number")],
            ),
            (
                json!({"llm_enabled": true, "llm_provider": "anthropic", "llm_model": "m", "anthropic_api_key": "k", "llm_max_tokens": 0}),
                vec![("c.llm_max_tokens", "at least 1")],
            ),
            (
                json!({"llm_enabled": true, "llm_provider": "anthropic", "llm_model": "m", "anthropic_api_key": "k", "llm_max_tokens": 1.5}),
                vec![("c.llm_max_tokens", "integer")],
            ),
            (
                json!({"llm_enabled": true, "llm_provider": "anthropic", "llm_model": "m", "anthropic_api_key": ""}),
                vec![("c.anthropic_api_key", "must not be empty")],
            ),
            (
                json!({"allow_writes": 1}),
                vec![("c.allow_writes", "expected true or false")],
            ),
            (
                json!({"pool_max_conns": 0}),
                vec![("c.pool_max_conns", "from 1 to 100")],
            ),
            (
                json!({"pool_max_conns": 101}),
                vec![("c.pool_max_conns", "from 1 to 100")],
            ),
            (
                json!({"pool_max_conns": 1e300}),
                vec![("c.pool_max_conns", "from 1 to 100")],
            ),
            (
                json!({"embedding_enabled": "true"}),
                vec![("c.embedding_enabled", "expected true or false")],
            ),
            (
                json!({"embedding_enabled": true}),
                vec![
                    (
                        "c.embedding_provider",
                        "required when embedding_enabled is true",
                    ),
                    (
                        "c.embedding_model",
                        "required when embedding_enabled is true",
                    ),
                ],
            ),
            (
                json!({"embedding_enabled": true, "embedding_provider": "anthropic", "embedding_model": "m"}),
                vec![(
                    "c.embedding_provider",
                    "expected one of: openai, voyage, ollama",
                )],
            ),
            (
                json!({"embedding_enabled": true, "embedding_provider": "voyage", "embedding_model": "m"}),
                vec![(
                    "c.voyage_api_key",
                    "required when embedding_provider is voyage",
                )],
            ),
            (
                json!({"embedding_enabled": true, "embedding_provider": "openai", "embedding_model": "m"}),
                vec![(
                    "c.openai_api_key",
                    "required when embedding_provider is openai",
                )],
            ),
            (
                json!({"embedding_enabled": true, "embedding_provider": "ollama", "embedding_model": "m"}),
                vec![("c.ollama_url", "required when embedding_provider is ollama")],
            ),
            (
                json!({"embedding_provider": "openai", "embedding_model": "m"}),
                vec![
                    (
                        "c.embedding_provider",
                        "only allowed when embedding_enabled is true",
                    ),
                    (
                        "c.embedding_model",
                        "only allowed when embedding_enabled is true",
                    ),
                ],
            ),
            // A mistyped flag reports itself only, not the settings that depend on it.
            (
                json!({"llm_enabled": 1, "llm_provider": "openai"}),
                vec![("c.llm_enabled", "expected true or false")],
            ),
        ];
        for (config, want) in cases {
            assert_errors(Mcp, config, &want);
        }
    }

    #[test]
    fn defaults() {
        let mut config = crate::catalog::test_util::map(json!({"llm_enabled": true}));
        crate::catalog::apply_defaults(Mcp, &mut config);
        assert_eq!(
            serde_json::Value::Object(config),
            json!({"llm_enabled": true, "allow_writes": false, "embedding_enabled": false})
        );
    }
}
