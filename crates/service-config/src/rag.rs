//! The pgEdge RAG server's `config.yaml`.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::yaml::{HostPort, host_list, is_empty_mapping, sslmode, to_yaml};
use crate::{ConnectionTarget, Credentials, ParseError, ParsedConnection, RenderedFile, values};

pub(crate) const FILE: &str = "config.yaml";

// Fields are declared in alphabetical order so the YAML's keys come out sorted.
#[derive(Serialize, Deserialize)]
struct File {
    database: Database,
    /// `token_budget`/`top_n` for pipelines that set none.
    #[serde(default, skip_serializing_if = "is_empty_mapping")]
    defaults: serde_yaml::Value,
    #[serde(default)]
    pipelines: serde_yaml::Value,
    server: Server,
}

#[derive(Serialize, Deserialize)]
struct Database {
    database: String,
    hosts: Vec<HostPort>,
    password: String,
    /// libpq's `sslmode`: `verify-full` with a CA, else `disable`.
    sslmode: String,
    /// libpq's `sslrootcert`, with a CA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sslrootcert: Option<String>,
    target_session_attrs: String,
    user: String,
}

#[derive(Serialize, Deserialize)]
struct Server {
    address: String,
    port: u16,
}

pub(crate) fn render(
    config: &Map<String, Value>,
    ro: &Credentials,
    target: &ConnectionTarget,
    listen_port: u16,
) -> RenderedFile {
    let pipelines = match config.get("pipelines") {
        Some(v) if !v.is_null() => values::canonical_yaml(v),
        _ => serde_yaml::Value::Sequence(Vec::new()),
    };
    let file = File {
        database: Database {
            database: target.dbname.clone(),
            hosts: host_list(&target.hosts),
            password: ro.password.clone(),
            sslmode: sslmode(target).into(),
            sslrootcert: target.tls().map(|(_, path)| path.to_owned()),
            target_session_attrs: target.target_session_attrs.clone(),
            user: ro.username.clone(),
        },
        defaults: config
            .get("defaults")
            .map(values::canonical_yaml)
            .unwrap_or(serde_yaml::Value::Null),
        pipelines,
        server: Server {
            address: "0.0.0.0".into(),
            port: listen_port,
        },
    };
    RenderedFile {
        path: FILE.into(),
        content: to_yaml(&file),
    }
}

pub(crate) fn parse(text: &str) -> Result<ParsedConnection, ParseError> {
    let file: File =
        serde_yaml::from_str(text).map_err(|e| ParseError::invalid(FILE, e.to_string()))?;
    Ok(ParsedConnection {
        hosts: file
            .database
            .hosts
            .into_iter()
            .map(|h| (h.host, h.port))
            .collect(),
        dbname: file.database.database,
        username: file.database.user,
        password: file.database.password,
        target_session_attrs: file.database.target_session_attrs,
        sslmode: file.database.sslmode,
        sslrootcert: file.database.sslrootcert,
        listen_port: file.server.port,
    })
}
