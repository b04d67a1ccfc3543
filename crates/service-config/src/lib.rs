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
//! Given the fleet CA ([`ConnectionTarget::ca_pem`]), the CA is rendered as one more file
//! ([`CA_FILE`]) and every connection string asks libpq for `sslmode=verify-full` with
//! `sslrootcert=`[`CA_PATH`], in the form its format uses: query parameters of PostgREST's
//! libpq URI, `sslmode`/`sslrootcert` keys beside the other connection keys in the YAML files.
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

/// The fleet CA's file among the rendered files, when [`ConnectionTarget::ca_pem`] is set.
pub const CA_FILE: &str = "ca.crt";

/// Where the rendered connection strings tell libpq to find the fleet CA (`sslrootcert`):
/// [`CA_FILE`] in [`DEFAULT_CONFIG_DIR`], an absolute path inside the service's container.
pub const CA_PATH: &str = "/etc/berth/service/ca.crt";

/// The `sslmode` every rendered connection uses when a CA is given: TLS, the server's chain
/// checked against the CA and its certificate's SANs against the host dialled (DNS names,
/// and IP addresses since libpq 14). libpq docs, "SSL Support", table "SSL Mode Descriptions".
pub const SSLMODE_VERIFY_FULL: &str = "verify-full";

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
    /// `(host, port)`: a DNS name or an IP address (IPv6 without brackets), and a TCP port.
    pub hosts: Vec<(String, u16)>,
    pub dbname: String,
    /// libpq's spelling: `primary`, `standby`, `prefer-standby`, `read-write`, `any`.
    pub target_session_attrs: String,
    /// The fleet CA, PEM. `Some`: [`render`] adds it as [`CA_FILE`] and every connection
    /// string asks for `sslmode=verify-full` with `sslrootcert=`[`CA_PATH`], so each host's
    /// certificate must name it as it is listed in `hosts`. `None`: no TLS settings beyond
    /// what each format said before (`sslmode: disable` in the YAML files, nothing in
    /// PostgREST's URI, which leaves libpq's default, `prefer`).
    pub ca_pem: Option<String>,
}

impl ConnectionTarget {
    /// `(sslmode, sslrootcert)` for the rendered files, if TLS is asked for.
    fn tls(&self) -> Option<(&'static str, &'static str)> {
        self.ca_pem.as_ref().map(|_| (SSLMODE_VERIFY_FULL, CA_PATH))
    }
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
    /// libpq's `sslmode` as the file says it; a URI without one gets libpq's default,
    /// `prefer` (libpq docs, "Parameter Key Words").
    pub sslmode: String,
    /// libpq's `sslrootcert`: the path of the CA file the server's chain is checked against,
    /// if the file names one.
    pub sslrootcert: Option<String>,
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
            .field("sslmode", &self.sslmode)
            .field("sslrootcert", &self.sslrootcert)
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

/// The files a service type's image reads its settings from, relative to its config
/// directory. The CA ([`CA_FILE`]), when there is one, is read through the path these name.
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
///
/// That is the type's [`config_files`], then [`CA_FILE`] when `target.ca_pem` is set.
pub fn render(
    service_type: ServiceType,
    config: &Map<String, Value>,
    rw: &Credentials,
    ro: &Credentials,
    target: &ConnectionTarget,
    listen_port: u16,
) -> Vec<RenderedFile> {
    let mut files = match service_type {
        ServiceType::Postgrest => vec![postgrest::render(config, rw, ro, target, listen_port)],
        ServiceType::Mcp => vec![mcp::render(config, rw, ro, target, listen_port)],
        ServiceType::Rag => vec![rag::render(config, ro, target, listen_port)],
    };
    if let Some(ca) = &target.ca_pem {
        files.push(RenderedFile {
            path: CA_FILE.into(),
            content: ca.clone().into_bytes(),
        });
    }
    files
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

/// The API settings of a rendered `postgrest.conf` (see [`postgrest_api`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostgrestApi {
    /// `db-anon-role`: the role PostgREST switches to (`SET LOCAL ROLE`, within each
    /// request's transaction) for a request without a JWT. The role it logs in with must be
    /// a member of it.
    pub anon_role: String,
    /// `db-schemas`, in order; the first is where a plain `GET /{table}` looks.
    pub schemas: Vec<String>,
}

/// Reads the anonymous role and the exposed schemas back from PostgREST's rendered
/// `postgrest.conf` among `files`. Errors: the file is missing, not UTF-8, has a line that is
/// not `key = value`, lacks `db-anon-role`, or its `db-schemas` names no schema.
pub fn postgrest_api(files: &[RenderedFile]) -> Result<PostgrestApi, ParseError> {
    let file = files
        .iter()
        .find(|f| f.path == postgrest::FILE)
        .ok_or_else(|| ParseError::MissingFile {
            service_type: ServiceType::Postgrest,
            path: postgrest::FILE.to_owned(),
        })?;
    let text = std::str::from_utf8(&file.content)
        .map_err(|e| ParseError::invalid(postgrest::FILE, format!("not UTF-8: {e}")))?;
    postgrest::parse_api(text)
}

#[cfg(test)]
mod tests;
