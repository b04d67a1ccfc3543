//! `mcp`: a Model Context Protocol server, optionally an LLM proxy and an embedding client.
//!
//! Credentials (`*_api_key`, `ollama_url`) are accepted whatever is enabled: `openai_api_key`
//! and `ollama_url` serve both the LLM and the embeddings, and an update that omits a secret
//! keeps the stored one, so refusing an unused credential would refuse the caller's own
//! earlier spec. Settings (`llm_*`, `embedding_*`) are refused when their feature is off.

use super::fields::{Cond, Field, Format, Kind, Lit, text};
use super::{ServiceRules, SessionAttrsRule};
use crate::{ServiceType, TargetSessionAttrs};

const LLM_ON: Cond = Cond::new("llm_enabled", &[Lit::Bool(true)]);
const EMBEDDING_ON: Cond = Cond::new("embedding_enabled", &[Lit::Bool(true)]);

const fn llm_provider(provider: &'static [Lit]) -> Cond {
    Cond::new("llm_provider", provider)
}

const fn embedding_provider(provider: &'static [Lit]) -> Cond {
    Cond::new("embedding_provider", provider)
}

const FIELDS: &[Field] = &[
    Field::new(
        "llm_enabled",
        Kind::Bool,
        "Serve an LLM chat endpoint beside the MCP tools.",
    )
    .default(Lit::Bool(false)),
    Field::new(
        "llm_provider",
        Kind::Enum(&["anthropic", "openai", "ollama"]),
        "Who runs the LLM; its credential is then required.",
    )
    .required_when(&[LLM_ON])
    .allowed_when(LLM_ON)
    .example(Lit::Str("anthropic")),
    Field::new(
        "llm_model",
        text(Format::Plain),
        "The provider's model name.",
    )
    .required_when(&[LLM_ON])
    .allowed_when(LLM_ON)
    .example(Lit::Str("claude-sonnet-4-5")),
    Field::new(
        "llm_temperature",
        Kind::Number { min: 0.0, max: 2.0 },
        "Sampling temperature; the provider's default when absent.",
    )
    .allowed_when(LLM_ON),
    Field::new(
        "llm_max_tokens",
        Kind::Int {
            min: 1,
            max: i64::MAX,
        },
        "Most tokens one answer may use; the provider's default when absent.",
    )
    .allowed_when(LLM_ON),
    Field::new(
        "anthropic_api_key",
        text(Format::Plain),
        "Anthropic API key.",
    )
    .required_when(&[llm_provider(&[Lit::Str("anthropic")])])
    .example(Lit::Str("sk-ant-example")),
    Field::new(
        "openai_api_key",
        text(Format::Plain),
        "OpenAI API key, for the LLM and for embeddings.",
    )
    .required_when(&[
        llm_provider(&[Lit::Str("openai")]),
        embedding_provider(&[Lit::Str("openai")]),
    ])
    .example(Lit::Str("sk-example")),
    Field::new("voyage_api_key", text(Format::Plain), "Voyage AI API key.")
        .required_when(&[embedding_provider(&[Lit::Str("voyage")])])
        .example(Lit::Str("pa-example")),
    Field::new(
        "ollama_url",
        text(Format::HttpUrl),
        "Where the Ollama server is, for the LLM and for embeddings.",
    )
    .required_when(&[
        llm_provider(&[Lit::Str("ollama")]),
        embedding_provider(&[Lit::Str("ollama")]),
    ])
    .example(Lit::Str("http://ollama:11434")),
    Field::new(
        "allow_writes",
        Kind::Bool,
        "Let the MCP tools write; the service then connects to the primary.",
    )
    .default(Lit::Bool(false)),
    Field::new(
        "pool_max_conns",
        Kind::Int { min: 1, max: 100 },
        "Most database connections the server keeps open.",
    ),
    Field::new(
        "embedding_enabled",
        Kind::Bool,
        "Compute embeddings for the similarity-search tools.",
    )
    .default(Lit::Bool(false)),
    Field::new(
        "embedding_provider",
        Kind::Enum(&["openai", "voyage", "ollama"]),
        "Who computes the embeddings; its credential is then required.",
    )
    .required_when(&[EMBEDDING_ON])
    .allowed_when(EMBEDDING_ON)
    .example(Lit::Str("openai")),
    Field::new(
        "embedding_model",
        text(Format::Plain),
        "The provider's embedding model name.",
    )
    .required_when(&[EMBEDDING_ON])
    .allowed_when(EMBEDDING_ON)
    .example(Lit::Str("text-embedding-3-small")),
];

pub(super) const MCP: ServiceRules = ServiceRules {
    service_type: ServiceType::Mcp,
    summary: "A Model Context Protocol server over the database, optionally an LLM proxy and an embedding client.",
    fields: FIELDS,
    extra_defaults: None,
    session_attrs: SessionAttrsRule {
        default: TargetSessionAttrs::PreferStandby,
        when: &[(
            Cond::new("allow_writes", &[Lit::Bool(true)]),
            TargetSessionAttrs::Primary,
        )],
    },
};

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
