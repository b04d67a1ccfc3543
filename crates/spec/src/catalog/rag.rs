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

use super::fields::{Cond, Field, Format, Kind, Lit, text};
use super::{ServiceRules, SessionAttrsRule};
use crate::{ServiceType, TargetSessionAttrs};

/// The settings a pipeline inherits from `defaults`.
const INHERITED: &[&str] = &["token_budget", "top_n"];

const TOKEN_BUDGET: Field = Field::new(
    "token_budget",
    Kind::Int {
        min: 1,
        max: i64::MAX,
    },
    "Most tokens of retrieved text given to the LLM.",
);
const TOP_N: Field = Field::new(
    "top_n",
    Kind::Int { min: 1, max: 100 },
    "How many of the closest rows are retrieved.",
);

const TABLE_FIELDS: &[Field] = &[
    Field::new(
        "table",
        text(Format::TableName),
        "`table` or `schema.table`.",
    )
    .required()
    .example(Lit::Str("documents")),
    Field::new(
        "text_column",
        text(Format::PgIdentifier),
        "The column holding the text.",
    )
    .required()
    .example(Lit::Str("content")),
    Field::new(
        "vector_column",
        text(Format::PgIdentifier),
        "The column holding the text's embedding.",
    )
    .required()
    .example(Lit::Str("embedding")),
];

const HOSTED_EMBEDDING: &[Cond] = &[Cond::new(
    "provider",
    &[Lit::Str("openai"), Lit::Str("voyage")],
)];
const HOSTED_RAG: &[Cond] = &[Cond::new(
    "provider",
    &[Lit::Str("anthropic"), Lit::Str("openai")],
)];
const OLLAMA: &[Cond] = &[Cond::new("provider", &[Lit::Str("ollama")])];

/// `api_key` for the hosted providers, `base_url` for Ollama.
const fn llm_fields(
    providers: &'static [&'static str],
    hosted: &'static [Cond],
    example: &'static str,
) -> [Field; 4] {
    [
        Field::new("provider", Kind::Enum(providers), "Who runs the model.")
            .required()
            .example(Lit::Str(example)),
        Field::new("model", text(Format::Plain), "The provider's model name.")
            .required()
            .example(Lit::Str("example-model")),
        Field::new("api_key", text(Format::Plain), "The provider's API key.")
            .required_when(hosted)
            .example(Lit::Str("sk-example")),
        Field::new(
            "base_url",
            text(Format::HttpUrl),
            "Where the provider's server is; required for Ollama.",
        )
        .required_when(OLLAMA)
        .example(Lit::Str("http://ollama:11434")),
    ]
}

const EMBEDDING_LLM_FIELDS: &[Field] =
    &llm_fields(&["openai", "voyage", "ollama"], HOSTED_EMBEDDING, "openai");
const RAG_LLM_FIELDS: &[Field] =
    &llm_fields(&["anthropic", "openai", "ollama"], HOSTED_RAG, "anthropic");

const PIPELINE_FIELDS: &[Field] = &[
    Field::new(
        "name",
        text(Format::Id),
        "Unique among the pipelines; the path the pipeline is served under.",
    )
    .required()
    .example(Lit::Str("docs")),
    Field::new(
        "description",
        Kind::String {
            min_chars: 0,
            format: Format::Plain,
        },
        "What the pipeline answers questions about.",
    ),
    Field::new(
        "tables",
        Kind::Objects {
            fields: TABLE_FIELDS,
            noun: "table",
            unique: None,
        },
        "The tables searched.",
    )
    .required(),
    Field::new(
        "embedding_llm",
        Kind::Object(EMBEDDING_LLM_FIELDS),
        "The model that embeds questions, the one that embedded the tables.",
    )
    .required(),
    Field::new(
        "rag_llm",
        Kind::Object(RAG_LLM_FIELDS),
        "The model that answers.",
    )
    .required(),
    Field {
        description: "Most tokens of retrieved text given to the LLM; `defaults.token_budget` when absent.",
        ..TOKEN_BUDGET
    },
    Field {
        description: "How many of the closest rows are retrieved; `defaults.top_n` when absent.",
        ..TOP_N
    },
];

const FIELDS: &[Field] = &[
    Field::new(
        "pipelines",
        Kind::Objects {
            fields: PIPELINE_FIELDS,
            noun: "pipeline",
            unique: Some("name"),
        },
        "The named pipelines the server answers with.",
    )
    .required(),
    Field::new(
        "defaults",
        Kind::Object(&[TOKEN_BUDGET, TOP_N]),
        "Settings for pipelines that do not set their own.",
    ),
];

pub(super) const RAG: ServiceRules = ServiceRules {
    service_type: ServiceType::Rag,
    summary: "A retrieval-augmented generation server with named pipelines over the database's tables.",
    fields: FIELDS,
    extra_defaults: Some(inherit_defaults),
    // It only reads.
    session_attrs: SessionAttrsRule {
        default: TargetSessionAttrs::PreferStandby,
        when: &[],
    },
};

/// Copies `defaults.token_budget` and `defaults.top_n` into the pipelines that leave them out.
fn inherit_defaults(config: &mut Map<String, Value>) {
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
