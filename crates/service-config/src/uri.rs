//! libpq connection URIs with several hosts: `postgresql://user:pass@h1:p1,h2:p2/db?k=v&...`
//! (libpq docs, "Connection URIs": every part and every query parameter's key and value may
//! be percent-encoded).

use crate::ParseError;

/// Percent-encodes everything but RFC 3986's unreserved characters, so a password may hold
/// `@`, `:`, `/`, `,` or `%` without changing how the URI splits.
pub(crate) fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// [`encode`], but keeping `/`, which RFC 3986 allows in a query and libpq reads as itself,
/// so a path such as `sslrootcert=/etc/berth/service/ca.crt` stays readable. `&` and `=`,
/// which split libpq's parameters, are still encoded.
fn encode_query_value(s: &str) -> String {
    s.split('/').map(encode).collect::<Vec<_>>().join("/")
}

pub(crate) fn decode(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .ok_or_else(|| format!("truncated escape in {s:?}"))?;
            let b =
                u8::from_str_radix(hex, 16).map_err(|_| format!("bad escape %{hex} in {s:?}"))?;
            out.push(b);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("{s:?} does not decode to UTF-8"))
}

/// IPv6 literals need brackets so their colons are not read as the port separator.
pub(crate) fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// The URI of `user` with `password` to `dbname` on `hosts`; `tls` is `(sslmode,
/// sslrootcert)`, added as query parameters after `target_session_attrs` when given.
pub(crate) fn build(
    user: &str,
    password: &str,
    hosts: &[(String, u16)],
    dbname: &str,
    tsa: &str,
    tls: Option<(&str, &str)>,
) -> String {
    let hosts: Vec<String> = hosts.iter().map(|(h, p)| host_port(h, *p)).collect();
    let mut uri = format!(
        "postgresql://{}:{}@{}/{}?target_session_attrs={}",
        encode(user),
        encode(password),
        hosts.join(","),
        encode(dbname),
        encode_query_value(tsa)
    );
    if let Some((sslmode, sslrootcert)) = tls {
        uri.push_str("&sslmode=");
        uri.push_str(&encode_query_value(sslmode));
        uri.push_str("&sslrootcert=");
        uri.push_str(&encode_query_value(sslrootcert));
    }
    uri
}

pub(crate) struct ParsedUri {
    pub user: String,
    pub password: String,
    pub hosts: Vec<(String, u16)>,
    pub dbname: String,
    pub target_session_attrs: String,
    pub sslmode: String,
    pub sslrootcert: Option<String>,
}

/// Parses what [`build`] writes (and the general libpq URI shape with the same parts).
/// `file` names the file in errors.
pub(crate) fn parse(uri: &str, file: &str) -> Result<ParsedUri, ParseError> {
    let bad = |m: String| ParseError::invalid(file, format!("db-uri: {m}"));
    let rest = uri
        .strip_prefix("postgresql://")
        .or_else(|| uri.strip_prefix("postgres://"))
        .ok_or_else(|| bad("not a postgresql:// URI".into()))?;
    let (authority, path_query) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, ""),
    };
    let (userinfo, hostlist) = authority
        .rsplit_once('@')
        .ok_or_else(|| bad("no user in the URI".into()))?;
    let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
    let mut hosts = Vec::new();
    for item in hostlist.split(',').filter(|s| !s.is_empty()) {
        let (host, port) = if let Some(v6) = item.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| bad(format!("unclosed [ in {item:?}")))?;
            (h, after.strip_prefix(':'))
        } else {
            match item.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (item, None),
            }
        };
        let port = match port {
            Some(p) => p
                .parse()
                .map_err(|_| bad(format!("bad port in {item:?}")))?,
            None => 5432,
        };
        hosts.push((decode(host).map_err(bad)?, port));
    }
    let (path, query) = path_query.split_once('?').unwrap_or((path_query, ""));
    // libpq's defaults for what the URI leaves out.
    let mut tsa = "any".to_owned();
    let mut sslmode = "prefer".to_owned();
    let mut sslrootcert = None;
    for pair in query.split('&').filter(|s| !s.is_empty()) {
        let (key, value) = pair
            .split_once('=')
            .ok_or_else(|| bad(format!("query parameter {pair:?} has no value")))?;
        let value = decode(value).map_err(bad)?;
        match decode(key).map_err(bad)?.as_str() {
            "target_session_attrs" => tsa = value,
            "sslmode" => sslmode = value,
            "sslrootcert" => sslrootcert = Some(value),
            _ => {}
        }
    }
    Ok(ParsedUri {
        user: decode(user).map_err(bad)?,
        password: decode(password).map_err(bad)?,
        hosts,
        dbname: decode(path).map_err(bad)?,
        target_session_attrs: tsa,
        sslmode,
        sslrootcert,
    })
}
