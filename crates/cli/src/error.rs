//! What can go wrong, how it is printed, and the exit code it ends the command with.

use spec::ApiErrorBody;

/// How a command ended; the process exits with [`Exit::code`]. The codes are listed in
/// `berth --help` ([`crate::args::EXIT_CODES_HELP`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// 0: done; a followed task completed.
    Ok,
    /// 1: a followed task failed.
    TaskFailed,
    /// 2: a followed task was canceled.
    TaskCanceled,
    /// 3: the API refused the request (4xx), or the command line or spec file is wrong.
    Refused,
    /// 4: the control plane could not be reached, or failed (5xx, or an answer that is not
    /// the API's).
    Unreachable,
}

impl Exit {
    pub fn code(self) -> u8 {
        match self {
            Exit::Ok => 0,
            Exit::TaskFailed => 1,
            Exit::TaskCanceled => 2,
            Exit::Refused => 3,
            Exit::Unreachable => 4,
        }
    }
}

/// An error that ends a command. Its `Display` is what `berth` prints after `error: `
/// (several lines for a refused request: one per offending field). No variant carries the
/// bearer token: requests are named by method and URL only.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A 4xx with the API's error body.
    #[error("{}", render_api_error(body))]
    Refused { status: u16, body: ApiErrorBody },
    /// A 4xx whose body is not the API's error shape ([`ApiErrorBody`]): `--url` names some
    /// other HTTP server (or a proxy that answered for it), so the API refused nothing.
    #[error("the server at {url} did not answer as the berth API (status {status})")]
    NotTheApi { url: String, status: u16 },
    /// A 5xx.
    #[error("{what}: the control plane answered {status}{}", detail(body.as_ref()))]
    Server {
        what: String,
        status: u16,
        body: Option<ApiErrorBody>,
    },
    /// No answer: connection refused, closed or timed out, a TLS failure.
    #[error("{what}: {reason}")]
    Connection { what: String, reason: String },
    /// An answer that is not what the API documents.
    #[error("{what}: unexpected answer: {reason}")]
    Decode { what: String, reason: String },
    /// The command line or a file it names.
    #[error("{0}")]
    Usage(String),
}

impl CliError {
    /// The exit code this error ends the command with.
    pub fn exit(&self) -> Exit {
        match self {
            CliError::Refused { .. } | CliError::Usage(_) => Exit::Refused,
            CliError::Server { .. }
            | CliError::Connection { .. }
            | CliError::Decode { .. }
            | CliError::NotTheApi { .. } => Exit::Unreachable,
        }
    }

    /// Whether asking again may help: a broken connection or a 5xx, not a refusal.
    pub fn is_transient(&self) -> bool {
        matches!(self, CliError::Server { .. } | CliError::Connection { .. })
    }

    /// A [`CliError::Connection`] from a reqwest error, naming every cause in its chain
    /// ("error sending request" alone says nothing) but not the URL again.
    pub fn connection(what: impl Into<String>, e: reqwest::Error) -> CliError {
        let reason = if e.is_timeout() {
            "timed out".to_string()
        } else if is_plain_http_answer(&e) {
            // rustls's own words ("received corrupt message of type InvalidContentType") do
            // not say that the port speaks plain HTTP.
            let server = e
                .url()
                .map(|u| u.origin().ascii_serialization())
                .unwrap_or_else(|| "the URL".into());
            format!("the server at {server} does not speak TLS; use http://")
        } else {
            error_chain(&e.without_url())
        };
        CliError::Connection {
            what: what.into(),
            reason,
        }
    }
}

/// Whether a TLS handshake failed because the first bytes back were not a TLS record
/// (rustls's `InvalidContentType`): what a plain-HTTP server answers to a client hello.
fn is_plain_http_answer(e: &(dyn std::error::Error + 'static)) -> bool {
    use rustls::{Error as Tls, InvalidMessage};
    if matches!(
        e.downcast_ref::<Tls>(),
        Some(Tls::InvalidMessage(InvalidMessage::InvalidContentType))
    ) {
        return true;
    }
    // An io::Error's source() skips the error it wraps (and hyper wraps one io::Error in
    // another): look inside it.
    let wrapped = e
        .downcast_ref::<std::io::Error>()
        .and_then(|io| io.get_ref())
        .is_some_and(|inner| is_plain_http_answer(inner));
    wrapped || e.source().is_some_and(is_plain_http_answer)
}

/// `error: ` and the error, each further line indented: what `berth` prints on stderr.
pub fn render(e: &CliError) -> String {
    let text = e.to_string();
    let mut lines = text.lines();
    let mut out = format!("error: {}", lines.next().unwrap_or_default());
    for l in lines {
        out.push('\n');
        out.push_str(l);
    }
    out
}

/// `<name>: <message>` and, for each offending field, an indented `<path>: <message>`.
pub fn render_api_error(body: &ApiErrorBody) -> String {
    let mut out = format!("{}: {}", body.name, body.message);
    for f in &body.errors {
        out.push_str("\n  ");
        out.push_str(&f.to_string());
    }
    out
}

fn detail(body: Option<&ApiErrorBody>) -> String {
    body.map(|b| format!(": {}", render_api_error(b)))
        .unwrap_or_default()
}

/// An error and its causes joined by `: `, leaving out a cause its parent already quotes.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut parts: Vec<String> = vec![e.to_string()];
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !parts.last().is_some_and(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = s.source();
    }
    parts.join(": ")
}

/// The API's error body an answer carried; None when its body is not that shape.
pub fn api_body(text: &str) -> Option<ApiErrorBody> {
    serde_json::from_str(text).ok()
}

/// The error body a 5xx answer carried, or one made up from its status and text when the
/// answer was not the API's (a proxy's page, say).
pub fn body_of(status: u16, text: &str) -> ApiErrorBody {
    api_body(text).unwrap_or_else(|| {
        let reason = reqwest::StatusCode::from_u16(status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("error");
        let first_line = text.lines().next().unwrap_or_default().trim();
        ApiErrorBody {
            name: format!("http_{status}"),
            message: if first_line.is_empty() {
                reason.to_lowercase()
            } else {
                format!("{}: {first_line}", reason.to_lowercase())
            },
            errors: Vec::new(),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use spec::FieldError;

    #[test]
    fn a_refusal_is_its_name_and_message_then_every_field_path() {
        let e = CliError::Refused {
            status: 400,
            body: ApiErrorBody {
                name: "invalid_input".into(),
                message: "spec.services[0].cpus: too small; spec.nodes: empty".into(),
                errors: vec![
                    FieldError::new("spec.services[0].cpus", "at least 0.01"),
                    FieldError::new("spec.nodes", "at least one node"),
                ],
            },
        };
        assert_eq!(
            render(&e),
            "error: invalid_input: spec.services[0].cpus: too small; spec.nodes: empty\n  \
             spec.services[0].cpus: at least 0.01\n  spec.nodes: at least one node"
        );
        assert_eq!(e.exit(), Exit::Refused);
        assert!(!e.is_transient());
    }

    #[test]
    fn a_server_error_names_the_request_and_is_transient() {
        let e = CliError::Server {
            what: "GET http://cp/v1/hosts".into(),
            status: 503,
            body: Some(body_of(
                503,
                r#"{"name":"unavailable","message":"etcd cannot be reached"}"#,
            )),
        };
        assert_eq!(
            render(&e),
            "error: GET http://cp/v1/hosts: the control plane answered 503: unavailable: etcd cannot be reached"
        );
        assert_eq!(e.exit(), Exit::Unreachable);
        assert!(e.is_transient());
    }

    #[test]
    fn an_answer_that_is_not_the_api_s_gets_a_name_from_its_status() {
        let b = body_of(502, "<html>Bad Gateway</html>\n<body/>");
        assert_eq!(b.name, "http_502");
        assert_eq!(b.message, "bad gateway: <html>Bad Gateway</html>");
        assert_eq!(body_of(404, "").message, "not found");
    }

    #[test]
    fn an_answer_that_is_not_the_api_s_exits_4_naming_the_server() {
        assert!(api_body("<html>404</html>").is_none());
        assert!(api_body(r#"{"name":"not_found","message":"gone"}"#).is_some());
        let e = CliError::NotTheApi {
            url: "http://127.0.0.1:8080/".into(),
            status: 404,
        };
        assert_eq!(
            render(&e),
            "error: the server at http://127.0.0.1:8080/ did not answer as the berth API (status 404)"
        );
        assert_eq!(e.exit(), Exit::Unreachable);
        assert!(!e.is_transient());
    }

    #[test]
    fn exit_codes_are_the_documented_ones() {
        let codes: Vec<u8> = [
            Exit::Ok,
            Exit::TaskFailed,
            Exit::TaskCanceled,
            Exit::Refused,
            Exit::Unreachable,
        ]
        .iter()
        .map(|e| e.code())
        .collect();
        assert_eq!(codes, [0, 1, 2, 3, 4]);
        for code in codes {
            assert!(
                crate::args::EXIT_CODES_HELP.contains(&format!("\n  {code}  ")),
                "exit code {code} is not in --help"
            );
        }
    }

    #[test]
    fn a_cause_chain_leaves_out_repeats() {
        #[derive(Debug)]
        struct E(&'static str, Option<Box<E>>);
        impl std::fmt::Display for E {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.0)
            }
        }
        impl std::error::Error for E {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                self.1.as_deref().map(|e| e as _)
            }
        }
        let e = E(
            "error sending request",
            Some(Box::new(E(
                "client error (Connect)",
                Some(Box::new(E("Connection refused (os error 111)", None))),
            ))),
        );
        assert_eq!(
            error_chain(&e),
            "error sending request: client error (Connect): Connection refused (os error 111)"
        );
    }
}
