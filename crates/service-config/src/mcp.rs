//! The pgEdge MCP server's `config.yaml`.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::yaml::{HostPort, host_list, is_empty_mapping, sslmode, to_yaml};
use crate::{ConnectionTarget, Credentials, ParseError, ParsedConnection, RenderedFile, values};

pub(crate) const FILE: &str = "config.yaml";

// Fields are declared in alphabetical order so the YAML's keys come out sorted.
#[derive(Serialize, Deserialize)]
struct File {
    databases: Vec<Database>,
    #[serde(default, skip_serializing_if = "is_empty_mapping")]
    embedding: serde_yaml::Value,
    http: Http,
    #[serde(default, skip_serializing_if = "is_empty_mapping")]
    llm: serde_yaml::Value,
}

/// The provider credentials each section may need; the catalog accepts them at the top level
/// because `openai_api_key` and `ollama_url` serve both the LLM and the embeddings.
const LLM_CREDENTIALS: &[&str] = &["anthropic_api_key", "ollama_url", "openai_api_key"];
const EMBEDDING_CREDENTIALS: &[&str] = &["ollama_url", "openai_api_key", "voyage_api_key"];

#[derive(Serialize, Deserialize)]
struct Database {
    allow_writes: bool,
    database: String,
    hosts: Vec<HostPort>,
    name: String,
    password: String,
    pool_max_conns: i64,
    /// libpq's `sslmode`: `verify-full` with a CA, else `disable`.
    sslmode: String,
    /// libpq's `sslrootcert`, with a CA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sslrootcert: Option<String>,
    target_session_attrs: String,
    user: String,
}

#[derive(Serialize, Deserialize)]
struct Http {
    address: String,
    enabled: bool,
}

pub(crate) fn render(
    config: &Map<String, Value>,
    rw: &Credentials,
    ro: &Credentials,
    target: &ConnectionTarget,
    listen_port: u16,
) -> RenderedFile {
    let allow_writes = values::boolean(config, "allow_writes").unwrap_or(false);
    // A read-only server gets a role that cannot write, so a prompt cannot talk it into writing.
    let creds = if allow_writes { rw } else { ro };
    let file = File {
        databases: vec![Database {
            allow_writes,
            database: target.dbname.clone(),
            hosts: host_list(&target.hosts),
            name: target.dbname.clone(),
            password: creds.password.clone(),
            pool_max_conns: values::integer(config, "pool_max_conns").unwrap_or(4),
            sslmode: sslmode(target).into(),
            sslrootcert: target.tls().map(|(_, path)| path.to_owned()),
            target_session_attrs: target.target_session_attrs.clone(),
            user: creds.username.clone(),
        }],
        embedding: values::section(config, "embedding_", EMBEDDING_CREDENTIALS),
        http: Http {
            address: format!("0.0.0.0:{listen_port}"),
            enabled: true,
        },
        llm: values::section(config, "llm_", LLM_CREDENTIALS),
    };
    RenderedFile {
        path: FILE.into(),
        content: to_yaml(&file),
    }
}

pub(crate) fn parse(text: &str) -> Result<ParsedConnection, ParseError> {
    let file: File =
        serde_yaml::from_str(text).map_err(|e| ParseError::invalid(FILE, e.to_string()))?;
    let (_, port) = file.http.address.rsplit_once(':').ok_or_else(|| {
        ParseError::invalid(
            FILE,
            format!("http.address {:?} has no port", file.http.address),
        )
    })?;
    let listen_port = port.parse().map_err(|_| {
        ParseError::invalid(
            FILE,
            format!("http.address {:?} has a bad port", file.http.address),
        )
    })?;
    let db = file
        .databases
        .into_iter()
        .next()
        .ok_or_else(|| ParseError::invalid(FILE, "databases is empty"))?;
    Ok(ParsedConnection {
        hosts: db.hosts.into_iter().map(|h| (h.host, h.port)).collect(),
        dbname: db.database,
        username: db.user,
        password: db.password,
        target_session_attrs: db.target_session_attrs,
        sslmode: db.sslmode,
        sslrootcert: db.sslrootcert,
        listen_port,
    })
}
