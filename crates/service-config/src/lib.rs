//! What each service type's image expects on disk.
//!
//! The agent writes the files [`render`] returns into the directory it mounts at
//! [`DEFAULT_CONFIG_DIR`] in the service's container. The formats are modelled on what the
//! real images read (PostgREST's `postgrest.conf`, the pgEdge MCP and RAG servers'
//! `config.yaml`), and the test fixture reads them back with [`parse_rendered`].
//!
//! The managed credentials appear only in these files, never in the container's environment
//! or labels. Rendering is deterministic (fixed key order, maps sorted), because a change of
//! the rendered bytes is what tells the control plane a service's container must be updated.
//!
//! Config keys read per type (the service catalog in `spec` decides which are allowed):
//! - `postgrest`: `db_schemas` (string or list, default `public`), `db_anon_role` (default
//!   the read-only role), `db_pool` (default 10), `max_rows`, `jwt_secret`, `jwt_aud`,
//!   `server_cors_allowed_origins`. Connects with the read-write role.
//! - `mcp`: `allow_writes` (default false: connect with the read-only role), `pool_max_conns`
//!   (default 4); the `llm_*` and `embedding_*` keys become the `llm` and `embedding`
//!   sections without their prefix, each with the provider credentials it may use
//!   (`anthropic_api_key`, `openai_api_key`, `voyage_api_key`, `ollama_url`).
//! - `rag`: `pipelines` and `defaults`, copied with their maps sorted. Connects read-only.
//!
//! The defaults above match the service catalog's; callers pass the config as stored.

mod mcp;
mod postgrest;
mod rag;
mod uri;
mod values;
mod yaml;

use serde_json::{Map, Value};
use spec::ServiceType;

/// First line of every rendered file: a `#` comment in all three formats.
const HEADER: &str = "# Rendered by berth; holds credentials. Edits are overwritten.\n";

/// Where the service's container finds its rendered files.
pub const DEFAULT_CONFIG_DIR: &str = "/etc/berth/service";

/// A managed Postgres role. `Debug` hides the password so that logging a value is safe.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Where a service connects: the database nodes in the order libpq should try them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionTarget {
    pub hosts: Vec<(String, u16)>,
    pub dbname: String,
    /// libpq's spelling: `primary`, `standby`, `prefer-standby`, `read-write`, `any`.
    pub target_session_attrs: String,
}

/// One file of a service's config directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedFile {
    /// Relative to the config directory.
    pub path: String,
    pub content: Vec<u8>,
}

/// What a service's rendered files say about its database connection and listener.
/// `Debug` hides the password.
#[derive(Clone, PartialEq, Eq)]
pub struct ParsedConnection {
    pub hosts: Vec<(String, u16)>,
    pub dbname: String,
    pub username: String,
    pub password: String,
    pub target_session_attrs: String,
    pub listen_port: u16,
}

impl std::fmt::Debug for ParsedConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParsedConnection")
            .field("hosts", &self.hosts)
            .field("dbname", &self.dbname)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .field("target_session_attrs", &self.target_session_attrs)
            .field("listen_port", &self.listen_port)
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("{service_type} reads {path}, which is not among the rendered files")]
    MissingFile {
        service_type: ServiceType,
        path: String,
    },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

impl ParseError {
    fn invalid(path: &str, message: impl Into<String>) -> Self {
        ParseError::Invalid {
            path: path.to_owned(),
            message: message.into(),
        }
    }
}

/// The files a service type's image reads, relative to its config directory.
pub fn config_files(service_type: ServiceType) -> &'static [&'static str] {
    match service_type {
        ServiceType::Postgrest => &[postgrest::FILE],
        ServiceType::Mcp => &[mcp::FILE],
        ServiceType::Rag => &[rag::FILE],
    }
}

/// The files `service_type`'s image needs in its config directory, with `listen_port` being
/// the port the service listens on inside its container. `rw` and `ro` are the service's two
/// managed roles; each type picks the one it connects with (see the crate docs).
pub fn render(
    service_type: ServiceType,
    config: &Map<String, Value>,
    rw: &Credentials,
    ro: &Credentials,
    target: &ConnectionTarget,
    listen_port: u16,
) -> Vec<RenderedFile> {
    match service_type {
        ServiceType::Postgrest => vec![postgrest::render(config, rw, ro, target, listen_port)],
        ServiceType::Mcp => vec![mcp::render(config, rw, ro, target, listen_port)],
        ServiceType::Rag => vec![rag::render(config, ro, target, listen_port)],
    }
}

/// Reads back the connection a service of `service_type` would make from its rendered files.
pub fn parse_rendered(
    service_type: ServiceType,
    files: &[RenderedFile],
) -> Result<ParsedConnection, ParseError> {
    let name = config_files(service_type)[0];
    let file = files
        .iter()
        .find(|f| f.path == name)
        .ok_or_else(|| ParseError::MissingFile {
            service_type,
            path: name.to_owned(),
        })?;
    let text = std::str::from_utf8(&file.content)
        .map_err(|e| ParseError::invalid(name, format!("not UTF-8: {e}")))?;
    let parsed = match service_type {
        ServiceType::Postgrest => postgrest::parse(text)?,
        ServiceType::Mcp => mcp::parse(text)?,
        ServiceType::Rag => rag::parse(text)?,
    };
    if parsed.hosts.is_empty() {
        return Err(ParseError::invalid(name, "no database host"));
    }
    Ok(parsed)
}

#[cfg(test)]
mod tests;
