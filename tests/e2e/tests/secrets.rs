//! No secret value appears in any log (issue 14, ADR 005): every process of a fleet logs at
//! debug level through a whole create, update and delete of a database with every kind of
//! secret, and then every log is searched for every secret value.

use std::path::Path;

use e2e::Fleet;
use serde_json::{Value, json};

const KEYS: [&str; 5] = [
    "sk-ant-FIRST-0a1b2c3d4e",
    "sk-ant-SECOND-5f6a7b8c9d",
    "sk-embed-3e4f5a6b7c8d",
    "sk-rag-9d8c7b6a5f4e",
    "jwt-secret-that-is-at-least-32-characters-long-0123",
];

fn body(db: &str, host: &str, anthropic_key: &str) -> Value {
    let pipeline = json!({
        "name": "docs",
        "tables": [{"table": "docs", "text_column": "body", "vector_column": "embedding"}],
        "embedding_llm": {"provider": "openai", "model": "text-embedding-3-small", "api_key": KEYS[2]},
        "rag_llm": {"provider": "anthropic", "model": "claude-sonnet-4-5", "api_key": KEYS[3]}
    });
    json!({"id": db, "spec": {
        "database_name": "app",
        "nodes": [{"name": "n1", "host_ids": [host]}],
        "services": [
            {"service_id": "mcp", "service_type": "mcp", "version": "latest", "host_ids": [host], "port": 0,
             "config": {"llm_enabled": true, "llm_provider": "anthropic", "llm_model": "claude-opus-4",
                        "anthropic_api_key": anthropic_key}},
            {"service_id": "rest", "service_type": "postgrest", "version": "1.0", "host_ids": [host], "port": 0,
             "config": {"db_schemas": "public", "jwt_secret": KEYS[4]}},
            {"service_id": "rag", "service_type": "rag", "version": "1.0.1", "host_ids": [host], "port": 0,
             "config": {"pipelines": [pipeline]}}
        ]
    }})
}

/// Secret values in a rendered config file: the value of every `key=value`, `key: value` or
/// `key = "value"` line whose key names a password, and the password of every
/// `postgres://user:password@` URI.
fn secrets_in(text: &str, out: &mut Vec<String>) {
    for line in text.lines() {
        let line = line.trim();
        if let Some((key, value)) = line.split_once(['=', ':'])
            && key.to_ascii_lowercase().contains("password")
        {
            let value = value.trim().trim_matches('"').trim_matches('\'');
            if value.len() >= 16 {
                out.push(value.to_string());
            }
        }
        if let Some(at) = line.find("postgres://") {
            let rest = &line[at + "postgres://".len()..];
            if let Some((userinfo, _)) = rest.split_once('@')
                && let Some((_, password)) = userinfo.split_once(':')
            {
                out.push(password.to_string());
            }
        }
    }
}

/// The body of a PEM private key: each of its base64 lines is a secret.
fn key_lines(pem: &str, out: &mut Vec<String>) {
    out.extend(
        pem.lines()
            .filter(|l| !l.starts_with("-----") && l.len() >= 40)
            .map(String::from),
    );
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

#[tokio::test(flavor = "multi_thread")]
async fn no_secret_reaches_a_debug_log_over_create_update_delete() {
    let fleet = Fleet::start_logging(1, "debug").await;
    let host = fleet.host(1);
    let db = fleet.db_id("secrets");
    fleet
        .apply("/v1/databases", &body(&db, &host, KEYS[0]))
        .await;
    fleet
        .apply(
            &format!("/v1/databases/{db}"),
            &json!({"spec": body(&db, &host, KEYS[1])["spec"]}),
        )
        .await;

    // Generated secrets, read from where they must be: the rendered files.
    let mut secrets: Vec<String> = KEYS.iter().map(|k| k.to_string()).collect();
    let node = format!("{db}-n1-{host}");
    let config = |instance: &str, file: &str| {
        read(
            &fleet
                .instance_dir(&host, instance)
                .join("config")
                .join(file),
        )
    };
    secrets_in(&config(&node, "berth.conf"), &mut secrets);
    key_lines(&config(&node, "server.key"), &mut secrets);
    for (service, file) in [
        ("mcp", "config.yaml"),
        ("rest", "postgrest.conf"),
        ("rag", "config.yaml"),
    ] {
        secrets_in(
            &config(&format!("{db}-{service}-{host}"), file),
            &mut secrets,
        );
    }
    key_lines(
        &read(&fleet.agent_tls_dir(&host).join("agent.key")),
        &mut secrets,
    );
    secrets.push(read(&fleet.join_token_file()).trim().to_string());
    // superuser and replication in berth.conf, the _ro and _rw roles of three services.
    assert!(
        secrets.len() > KEYS.len() + 2 + 6,
        "only {} secret values found",
        secrets.len()
    );

    let (status, deleted) = fleet
        .call("DELETE", &format!("/v1/databases/{db}"), None)
        .await;
    assert_eq!(status, 200, "{deleted}");
    let task = fleet
        .wait_task(&db, deleted["task"]["task_id"].as_str().unwrap())
        .await;
    assert_eq!(task["status"], "completed", "{task}");

    let mut logs = 0;
    let mut debug_lines = 0;
    let mut names_the_database = false;
    for entry in std::fs::read_dir(fleet.log_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "log") {
            continue;
        }
        let text = read(&path);
        logs += 1;
        debug_lines += text.lines().filter(|l| l.contains("DEBUG")).count();
        names_the_database |= text.contains(&db);
        for secret in &secrets {
            if let Some(at) = text.find(secret.as_str()) {
                let line = text[..at].lines().count();
                panic!("{} line {line} holds a secret value", path.display());
            }
        }
    }
    // The control plane's and the agent's logs, and they did log at debug level.
    assert!(logs >= 2, "{logs} logs in {}", fleet.log_dir().display());
    assert!(debug_lines > 0, "no debug lines in the logs");
    // The search reads what the processes said about this database.
    assert!(names_the_database, "no log names {db}");
    println!(
        "{} secret values, none in {logs} logs ({debug_lines} debug lines)",
        secrets.len()
    );
}
