//! PostgREST's `postgrest.conf`: `key = value` lines, strings double-quoted.

use serde_json::{Map, Value};

use crate::{
    ConnectionTarget, Credentials, HEADER, ParseError, ParsedConnection, PostgrestApi,
    RenderedFile, uri, values,
};

pub(crate) const FILE: &str = "postgrest.conf";

fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn unquote(s: &str) -> Result<String, String> {
    let inner = s
        .strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .ok_or_else(|| format!("expected a quoted string, got {s}"))?;
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('n') => out.push('\n'),
                Some(c @ ('"' | '\\')) => out.push(c),
                other => {
                    return Err(format!(
                        "bad escape \\{}",
                        other.map(String::from).unwrap_or_default()
                    ));
                }
            }
        } else {
            out.push(c);
        }
    }
    Ok(out)
}

pub(crate) fn render(
    config: &Map<String, Value>,
    rw: &Credentials,
    ro: &Credentials,
    target: &ConnectionTarget,
    listen_port: u16,
) -> RenderedFile {
    let db_uri = uri::build(
        &rw.username,
        &rw.password,
        &target.hosts,
        &target.dbname,
        &target.target_session_attrs,
        target.tls(),
    );
    // Sorted by key; optional keys are left out so PostgREST applies its own defaults.
    let mut lines: Vec<(&str, String)> = vec![(
        "db-anon-role",
        quote(&values::text(config, "db_anon_role").unwrap_or_else(|| ro.username.clone())),
    )];
    if let Some(n) = values::integer(config, "max_rows") {
        lines.push(("db-max-rows", n.to_string()));
    }
    lines.push((
        "db-pool",
        values::integer(config, "db_pool").unwrap_or(10).to_string(),
    ));
    lines.push((
        "db-schemas",
        quote(&values::text(config, "db_schemas").unwrap_or_else(|| "public".into())),
    ));
    lines.push(("db-uri", quote(&db_uri)));
    if let Some(aud) = values::text(config, "jwt_aud") {
        lines.push(("jwt-aud", quote(&aud)));
    }
    if let Some(secret) = values::text(config, "jwt_secret") {
        lines.push(("jwt-secret", quote(&secret)));
    }
    if let Some(origins) = values::text(config, "server_cors_allowed_origins") {
        lines.push(("server-cors-allowed-origins", quote(&origins)));
    }
    // PostgREST listens on localhost only by default; in a container it must take the
    // published port's traffic.
    lines.push(("server-host", quote("*")));
    lines.push(("server-port", listen_port.to_string()));

    let mut out = String::from(HEADER);
    for (k, v) in lines {
        out.push_str(k);
        out.push_str(" = ");
        out.push_str(&v);
        out.push('\n');
    }
    RenderedFile {
        path: FILE.into(),
        content: out.into_bytes(),
    }
}

/// The `key = value` settings of a rendered `postgrest.conf`, in order, key and (still
/// quoted) value trimmed; blank lines and `#` comments skipped.
fn settings(text: &str) -> Result<Vec<(&str, &str)>, ParseError> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (key, value) = line.split_once('=').ok_or_else(|| {
            ParseError::invalid(FILE, format!("line {}: expected key = value", n + 1))
        })?;
        out.push((key.trim(), value.trim()));
    }
    Ok(out)
}

/// What a rendered `postgrest.conf` says about the API PostgREST serves: the role an
/// anonymous request runs as (`db-anon-role`) and the exposed schemas (`db-schemas`, a
/// comma-separated list whose first is the default for a request without a profile header).
pub(crate) fn parse_api(text: &str) -> Result<PostgrestApi, ParseError> {
    let mut anon_role = None;
    let mut schemas = None;
    for (key, value) in settings(text)? {
        let slot = match key {
            "db-anon-role" => &mut anon_role,
            "db-schemas" => &mut schemas,
            _ => continue,
        };
        *slot = Some(unquote(value).map_err(|m| ParseError::invalid(FILE, format!("{key}: {m}")))?);
    }
    let anon_role = anon_role.ok_or_else(|| ParseError::invalid(FILE, "no db-anon-role"))?;
    let schemas: Vec<String> = schemas
        .unwrap_or_else(|| "public".into())
        .split(',')
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect();
    if schemas.is_empty() {
        return Err(ParseError::invalid(FILE, "db-schemas names no schema"));
    }
    Ok(PostgrestApi { anon_role, schemas })
}

pub(crate) fn parse(text: &str) -> Result<ParsedConnection, ParseError> {
    let mut db_uri = None;
    let mut port = None;
    for (key, value) in settings(text)? {
        match key {
            "db-uri" => {
                db_uri = Some(
                    unquote(value)
                        .map_err(|m| ParseError::invalid(FILE, format!("db-uri: {m}")))?,
                )
            }
            "server-port" => {
                port = Some(value.parse::<u16>().map_err(|_| {
                    ParseError::invalid(FILE, format!("server-port: {value} is not a port"))
                })?)
            }
            _ => {}
        }
    }
    let db_uri = db_uri.ok_or_else(|| ParseError::invalid(FILE, "no db-uri"))?;
    let listen_port = port.ok_or_else(|| ParseError::invalid(FILE, "no server-port"))?;
    let u = uri::parse(&db_uri, FILE)?;
    Ok(ParsedConnection {
        hosts: u.hosts,
        dbname: u.dbname,
        username: u.user,
        password: u.password,
        target_session_attrs: u.target_session_attrs,
        sslmode: u.sslmode,
        sslrootcert: u.sslrootcert,
        listen_port,
    })
}
