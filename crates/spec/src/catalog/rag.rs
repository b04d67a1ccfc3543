//! `rag`: a retrieval-augmented generation server with named pipelines.
//!
//! Each pipeline searches one or more tables (a text column and its embedding column),
//! embeds the question with `embedding_llm` and answers with `rag_llm`. `defaults` holds
//! `token_budget`/`top_n` for pipelines that do not set their own.
//!
//! An LLM object is `{provider, model, api_key?, base_url?}`: `api_key` is required for the
//! hosted providers, and `base_url` (where the Ollama server is) for `ollama`, since a
//! container has no local Ollama to fall back to.

use serde_json::{Map, Value};

use super::{ServiceConfigRules, require_provider_credential};
use crate::check::{Errors, Obj, index, is_http_url};
use crate::ident::{validate_id, validate_pg_identifier};
use crate::{FieldError, ServiceType};

pub(super) struct Rag;

const KEYS: &[&str] = &["pipelines", "defaults"];
const PIPELINE_KEYS: &[&str] = &[
    "name",
    "description",
    "tables",
    "embedding_llm",
    "rag_llm",
    "token_budget",
    "top_n",
];
const TABLE_KEYS: &[&str] = &["table", "text_column", "vector_column"];
const LLM_KEYS: &[&str] = &["provider", "model", "api_key", "base_url"];
const DEFAULTS_KEYS: &[&str] = &["token_budget", "top_n"];
const EMBEDDING_PROVIDERS: &[&str] = &["openai", "voyage", "ollama"];
const RAG_PROVIDERS: &[&str] = &["anthropic", "openai", "ollama"];
/// The settings a pipeline inherits from `defaults`.
const INHERITED: &[&str] = &["token_budget", "top_n"];

fn credential_for(provider: &str) -> Option<&'static str> {
    match provider {
        "anthropic" | "openai" | "voyage" => Some("api_key"),
        "ollama" => Some("base_url"),
        _ => None,
    }
}

impl ServiceConfigRules for Rag {
    fn service_type(&self) -> ServiceType {
        ServiceType::Rag
    }

    fn validate(&self, config: &Map<String, Value>, path: &str) -> Vec<FieldError> {
        let mut e = Errors::default();
        let o = Obj {
            map: config,
            path: path.to_string(),
        };
        o.deny_unknown(KEYS, &mut e);

        if o.require("pipelines", &mut e).is_some()
            && let Some(pipelines) = o.array("pipelines", &mut e)
        {
            if pipelines.is_empty() {
                e.push(o.at("pipelines"), "must list at least one pipeline");
            }
            let mut names: Vec<&str> = Vec::new();
            for (i, p) in pipelines.iter().enumerate() {
                if let Some(p) = Obj::of(p, index(&o.at("pipelines"), i), &mut e)
                    && let Some(name) = validate_pipeline(&p, &mut e)
                {
                    if names.contains(&name) {
                        e.push(p.at("name"), format!("duplicate pipeline name \"{name}\""));
                    }
                    names.push(name);
                }
            }
        }
        if let Some(defaults) = o.object("defaults", &mut e) {
            defaults.deny_unknown(DEFAULTS_KEYS, &mut e);
            tuning(&defaults, &mut e);
        }
        e.0
    }

    fn apply_defaults(&self, config: &mut Map<String, Value>) {
        let Some(Value::Object(defaults)) = config.get("defaults") else {
            return;
        };
        let inherited: Vec<(&str, Value)> = INHERITED
            .iter()
            .filter_map(|k| {
                defaults
                    .get(*k)
                    .filter(|v| !v.is_null())
                    .map(|v| (*k, v.clone()))
            })
            .collect();
        let Some(Value::Array(pipelines)) = config.get_mut("pipelines") else {
            return;
        };
        for pipeline in pipelines.iter_mut() {
            if let Value::Object(p) = pipeline {
                for (key, value) in &inherited {
                    if p.get(*key).is_none_or(Value::is_null) {
                        p.insert((*key).to_string(), value.clone());
                    }
                }
            }
        }
    }
}

/// Checks one pipeline; returns its name when valid, for the uniqueness check.
fn validate_pipeline<'a>(p: &Obj<'a>, e: &mut Errors) -> Option<&'a str> {
    p.deny_unknown(PIPELINE_KEYS, e);
    let name = p.req_str("name", e).filter(|name| match validate_id(name) {
        Ok(()) => true,
        Err(msg) => {
            e.push(p.at("name"), msg);
            false
        }
    });
    p.str("description", e);

    if p.require("tables", e).is_some()
        && let Some(tables) = p.array("tables", e)
    {
        if tables.is_empty() {
            e.push(p.at("tables"), "must list at least one table");
        }
        for (i, t) in tables.iter().enumerate() {
            if let Some(t) = Obj::of(t, index(&p.at("tables"), i), e) {
                t.deny_unknown(TABLE_KEYS, e);
                if let Some(table) = t.req_str("table", e) {
                    validate_table_name(table, &t.at("table"), e);
                }
                for key in ["text_column", "vector_column"] {
                    if let Some(column) = t.req_str(key, e)
                        && let Err(msg) = validate_pg_identifier(column)
                    {
                        e.push(t.at(key), msg);
                    }
                }
            }
        }
    }

    for (key, providers) in [
        ("embedding_llm", EMBEDDING_PROVIDERS),
        ("rag_llm", RAG_PROVIDERS),
    ] {
        if p.require(key, e).is_some()
            && let Some(llm) = p.object(key, e)
        {
            validate_llm(&llm, providers, e);
        }
    }
    tuning(p, e);
    name
}

fn validate_llm(llm: &Obj<'_>, providers: &[&'static str], e: &mut Errors) {
    llm.deny_unknown(LLM_KEYS, e);
    let provider = if llm.require("provider", e).is_some() {
        llm.one_of("provider", providers, e)
    } else {
        None
    };
    llm.req_str("model", e);
    llm.non_empty_str("api_key", e);
    if let Some(url) = llm.str("base_url", e)
        && !is_http_url(url)
    {
        e.push(llm.at("base_url"), "expected an http:// or https:// URL");
    }
    if let Some(provider) = provider {
        require_provider_credential(llm, provider, "provider", credential_for, e);
    }
}

/// `token_budget` and `top_n`, in a pipeline or in `defaults`.
fn tuning(o: &Obj<'_>, e: &mut Errors) {
    o.int("token_budget", 1, i64::MAX, e);
    o.int("top_n", 1, 100, e);
}

/// `table` or `schema.table`, each part a Postgres identifier.
fn validate_table_name(name: &str, path: &str, e: &mut Errors) {
    let parts: Vec<&str> = name.split('.').collect();
    if parts.len() > 2 {
        e.push(path, "expected \"table\" or \"schema.table\"");
        return;
    }
    for part in parts {
        if let Err(msg) = validate_pg_identifier(part) {
            e.push(path, format!("\"{part}\" {msg}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use crate::ServiceType::Rag;
    use crate::catalog::test_util::{assert_errors, assert_valid, map};

    fn pipeline(name: &str) -> Value {
        json!({
            "name": name,
            "tables": [{"table": "docs", "text_column": "body", "vector_column": "embedding"}],
            "embedding_llm": {"provider": "openai", "model": "text-embedding-3-small", "api_key": "sk-1"},
            "rag_llm": {"provider": "anthropic", "model": "claude-sonnet-4-5", "api_key": "sk-2"}
        })
    }

    /// A valid config whose first pipeline is changed by `edit`.
    fn with_pipeline(edit: impl FnOnce(&mut serde_json::Map<String, Value>)) -> Value {
        let mut p = map(pipeline("docs"));
        edit(&mut p);
        json!({"pipelines": [Value::Object(p)]})
    }

    #[test]
    fn valid_configs() {
        assert_valid(Rag, json!({"pipelines": [pipeline("docs")]}));
        assert_valid(
            Rag,
            json!({"pipelines": [pipeline("a"), pipeline("b")], "defaults": {"token_budget": 4000, "top_n": 10}}),
        );
        assert_valid(
            Rag,
            with_pipeline(|p| {
                p.insert("description".into(), json!("product docs"));
                p.insert("token_budget".into(), json!(2000));
                p.insert("top_n".into(), json!(100));
                p.insert(
                    "tables".into(),
                    json!([{"table": "app.docs", "text_column": "body", "vector_column": "v"}]),
                );
                p.insert("embedding_llm".into(), json!({"provider": "ollama", "model": "nomic-embed-text", "base_url": "http://ollama:11434"}));
                p.insert(
                    "rag_llm".into(),
                    json!({"provider": "openai", "model": "gpt-4o", "api_key": "k"}),
                );
            }),
        );
        assert_valid(
            Rag,
            with_pipeline(|p| {
                p.insert(
                    "embedding_llm".into(),
                    json!({"provider": "voyage", "model": "voyage-3", "api_key": "k"}),
                );
            }),
        );
    }

    #[test]
    fn each_rule() {
        let cases: Vec<(Value, Vec<(&str, &str)>)> = vec![
            (json!({}), vec![("c.pipelines", "is required")]),
            (
                json!({"pipelines": []}),
                vec![("c.pipelines", "at least one pipeline")],
            ),
            (
                json!({"pipelines": {}}),
                vec![("c.pipelines", "expected an array")],
            ),
            (
                json!({"pipelines": [pipeline("a")], "extra": 1}),
                vec![("c.extra", "unknown field")],
            ),
            (
                json!({"pipelines": ["x"]}),
                vec![("c.pipelines[0]", "expected an object")],
            ),
            (
                json!({"pipelines": [pipeline("a"), pipeline("b"), pipeline("a")]}),
                vec![("c.pipelines[2].name", "duplicate pipeline name \"a\"")],
            ),
            (
                json!({"pipelines": [pipeline("Bad_Name")]}),
                vec![("c.pipelines[0].name", "lowercase letters")],
            ),
            (
                with_pipeline(|p| {
                    p.remove("name");
                }),
                vec![("c.pipelines[0].name", "is required")],
            ),
            (
                with_pipeline(|p| {
                    p.insert("name".into(), json!(""));
                }),
                vec![("c.pipelines[0].name", "must not be empty")],
            ),
            (
                with_pipeline(|p| {
                    p.insert("colour".into(), json!("blue"));
                }),
                vec![("c.pipelines[0].colour", "unknown field")],
            ),
            (
                with_pipeline(|p| {
                    p.insert("description".into(), json!(3));
                }),
                vec![("c.pipelines[0].description", "expected a string")],
            ),
            (
                with_pipeline(|p| {
                    p.remove("tables");
                }),
                vec![("c.pipelines[0].tables", "is required")],
            ),
            (
                with_pipeline(|p| {
                    p.insert("tables".into(), json!([]));
                }),
                vec![("c.pipelines[0].tables", "at least one table")],
            ),
            (
                with_pipeline(|p| {
                    p.insert("tables".into(), json!([{"table": "docs"}]));
                }),
                vec![
                    ("c.pipelines[0].tables[0].text_column", "is required"),
                    ("c.pipelines[0].tables[0].vector_column", "is required"),
                ],
            ),
            (
                with_pipeline(|p| {
                    p.insert("tables".into(), json!([{"table": "a.b.c", "text_column": "Body", "vector_column": "v", "x": 1}]));
                }),
                vec![
                    ("c.pipelines[0].tables[0].x", "unknown field"),
                    (
                        "c.pipelines[0].tables[0].table",
                        "\"table\" or \"schema.table\"",
                    ),
                    (
                        "c.pipelines[0].tables[0].text_column",
                        "Postgres identifier",
                    ),
                ],
            ),
            (
                with_pipeline(|p| {
                    p.insert(
                        "tables".into(),
                        json!([{"table": "My.docs", "text_column": "b", "vector_column": "v"}]),
                    );
                }),
                vec![("c.pipelines[0].tables[0].table", "\"My\"")],
            ),
            (
                with_pipeline(|p| {
                    p.remove("embedding_llm");
                }),
                vec![("c.pipelines[0].embedding_llm", "is required")],
            ),
            (
                with_pipeline(|p| {
                    p.insert("rag_llm".into(), json!("claude"));
                }),
                vec![("c.pipelines[0].rag_llm", "expected an object")],
            ),
            (
                with_pipeline(|p| {
                    p.insert(
                        "embedding_llm".into(),
                        json!({"provider": "anthropic", "model": "m", "api_key": "k"}),
                    );
                }),
                vec![(
                    "c.pipelines[0].embedding_llm.provider",
                    "expected one of: openai, voyage, ollama",
                )],
            ),
            (
                with_pipeline(|p| {
                    p.insert(
                        "rag_llm".into(),
                        json!({"provider": "voyage", "model": "m", "api_key": "k"}),
                    );
                }),
                vec![(
                    "c.pipelines[0].rag_llm.provider",
                    "expected one of: anthropic, openai, ollama",
                )],
            ),
            (
                with_pipeline(|p| {
                    p.insert("rag_llm".into(), json!({}));
                }),
                vec![
                    ("c.pipelines[0].rag_llm.provider", "is required"),
                    ("c.pipelines[0].rag_llm.model", "is required"),
                ],
            ),
            (
                with_pipeline(|p| {
                    p.insert(
                        "rag_llm".into(),
                        json!({"provider": "anthropic", "model": "m"}),
                    );
                }),
                vec![(
                    "c.pipelines[0].rag_llm.api_key",
                    "required when provider is anthropic",
                )],
            ),
            (
                with_pipeline(|p| {
                    p.insert(
                        "embedding_llm".into(),
                        json!({"provider": "openai", "model": "m"}),
                    );
                }),
                vec![(
                    "c.pipelines[0].embedding_llm.api_key",
                    "required when provider is openai",
                )],
            ),
            (
                with_pipeline(|p| {
                    p.insert(
                        "embedding_llm".into(),
                        json!({"provider": "voyage", "model": "m"}),
                    );
                }),
                vec![(
                    "c.pipelines[0].embedding_llm.api_key",
                    "required when provider is voyage",
                )],
            ),
            (
                with_pipeline(|p| {
                    p.insert(
                        "embedding_llm".into(),
                        json!({"provider": "ollama", "model": "m"}),
                    );
                }),
                vec![(
                    "c.pipelines[0].embedding_llm.base_url",
                    "required when provider is ollama",
                )],
            ),
            (
                with_pipeline(|p| {
                    p.insert("embedding_llm".into(), json!({"provider": "ollama", "model": "m", "base_url": "ollama", "temperature": 1}));
                }),
                vec![
                    ("c.pipelines[0].embedding_llm.temperature", "unknown field"),
                    (
                        "c.pipelines[0].embedding_llm.base_url",
                        "http:// or https://",
                    ),
                ],
            ),
            (
                with_pipeline(|p| {
                    p.insert("token_budget".into(), json!(0));
                }),
                vec![("c.pipelines[0].token_budget", "at least 1")],
            ),
            (
                with_pipeline(|p| {
                    p.insert("top_n".into(), json!(0));
                }),
                vec![("c.pipelines[0].top_n", "from 1 to 100")],
            ),
            (
                with_pipeline(|p| {
                    p.insert("top_n".into(), json!(101));
                }),
                vec![("c.pipelines[0].top_n", "from 1 to 100")],
            ),
            (
                json!({"pipelines": [pipeline("a")], "defaults": 5}),
                vec![("c.defaults", "expected an object")],
            ),
            (
                json!({"pipelines": [pipeline("a")], "defaults": {"top_n": 0, "token_budget": -1, "k": 1}}),
                vec![
                    ("c.defaults.k", "unknown field"),
                    ("c.defaults.token_budget", "at least 1"),
                    ("c.defaults.top_n", "from 1 to 100"),
                ],
            ),
        ];
        for (config, want) in cases {
            assert_errors(Rag, config, &want);
        }
    }

    #[test]
    fn defaults_are_inherited_by_pipelines() {
        let mut a = map(pipeline("a"));
        a.insert("top_n".into(), json!(3));
        let mut config = map(
            json!({"pipelines": [Value::Object(a), pipeline("b")], "defaults": {"top_n": 10, "token_budget": 500}}),
        );
        crate::catalog::apply_defaults(Rag, &mut config);
        assert_eq!(config["pipelines"][0]["top_n"], json!(3));
        assert_eq!(config["pipelines"][0]["token_budget"], json!(500));
        assert_eq!(config["pipelines"][1]["top_n"], json!(10));
        assert_eq!(config["pipelines"][1]["token_budget"], json!(500));
    }
}
