//! The database specs the benchmarks submit.

use serde_json::{Value, json};

/// One node on `node_host` and the three service types (mcp, postgrest, rag), each with one instance on every
/// host of its entry in `hosts` (in that order). `model` is the knob an unrelated update turns.
pub fn three_services(node_host: &str, hosts: [&[String]; 3], model: &str) -> Value {
    json!({
        "database_name": "app",
        "nodes": [{"name": "n1", "host_ids": [node_host]}],
        "services": [
            {"service_id": "mcp", "service_type": "mcp", "version": "latest", "host_ids": hosts[0],
             "config": {"llm_enabled": true, "llm_provider": "anthropic", "llm_model": model,
                        "anthropic_api_key": "sk-ant-bench-SECRET"}},
            {"service_id": "rest", "service_type": "postgrest", "version": "latest", "host_ids": hosts[1],
             "config": {"db_schemas": "public", "max_rows": 250,
                        "jwt_secret": "0123456789abcdef0123456789abcdef"}},
            {"service_id": "rag", "service_type": "rag", "version": "latest", "host_ids": hosts[2],
             "config": {"pipelines": [{
                 "name": "docs",
                 "tables": [{"table": "docs", "text_column": "body", "vector_column": "embedding"}],
                 "embedding_llm": {"provider": "openai", "model": "text-embedding-3-small",
                                   "api_key": "sk-embed-bench-SECRET"},
                 "rag_llm": {"provider": "anthropic", "model": "claude-sonnet-4-5",
                             "api_key": "sk-rag-bench-SECRET"}
             }]}}
        ]
    })
}
