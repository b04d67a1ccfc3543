//! Requests to a member's Patroni REST API. The control plane cannot dial an instance's
//! alias, and Patroni's connect address may be one, so a request is made inside the
//! member's own container by the agent's Exec with `curl`, to its local port, checking the
//! certificate against the fleet CA under the name its certificate carries. The REST API
//! user's password reaches curl in its config on stdin, never on a command line.

use chrono::{DateTime, SecondsFormat, Utc};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};

use super::config::{REST_API_PORT, REST_API_USER, RUN_DIR};

/// How long curl waits for Patroni: a switchover answers once the new leader has taken
/// over, which takes a loop or two.
pub const REQUEST_TIMEOUT_SECONDS: u32 = 90;

/// The status line curl appends after the body (`--write-out`).
const STATUS_MARK: &str = "\nberth-http-status:";

/// What the agent runs: `argv` as the postgres user (it reads the CA file), `stdin` for
/// curl's config (holds the password: the agent protocol never prints stdin).
pub struct LocalRequest {
    pub argv: Vec<String>,
    pub stdin: Vec<u8>,
}

/// A `method` request of `path` (`/switchover`) with a JSON `body` to the REST API of the
/// member whose certificate names `alias`, authenticated as the REST API user.
pub fn request(
    alias: &str,
    method: &str,
    path: &str,
    body: Option<&Value>,
    password: &SecretString,
) -> LocalRequest {
    let mut argv: Vec<String> = [
        "curl",
        "--silent",
        "--show-error",
        "--config",
        "-",
        "--max-time",
        &REQUEST_TIMEOUT_SECONDS.to_string(),
        "--cacert",
        &format!("{RUN_DIR}/ca.crt"),
        "--resolve",
        &format!("{alias}:{REST_API_PORT}:127.0.0.1"),
        "--request",
        method,
        "--write-out",
        &format!("{STATUS_MARK}%{{http_code}}"),
    ]
    .map(String::from)
    .to_vec();
    if let Some(body) = body {
        argv.extend(
            [
                "--header",
                "Content-Type: application/json",
                "--data",
                &body.to_string(),
            ]
            .map(String::from),
        );
    }
    argv.push(format!("https://{alias}:{REST_API_PORT}{path}"));
    // curl's config syntax: a quoted value takes backslash escapes. Generated passwords are
    // alphanumeric; escaping keeps any other value whole.
    let quoted = password
        .expose_secret()
        .replace('\\', "\\\\")
        .replace('"', "\\\"");
    let stdin = format!("user = \"{REST_API_USER}:{quoted}\"\n").into_bytes();
    LocalRequest { argv, stdin }
}

/// The body of `POST /switchover`: hand the leader role from `leader` to `candidate` (any
/// healthy replica when None), now or at `scheduled_at`.
pub fn switchover_body(
    leader: &str,
    candidate: Option<&str>,
    scheduled_at: Option<DateTime<Utc>>,
) -> Value {
    let mut body = json!({ "leader": leader });
    if let Some(c) = candidate {
        body["candidate"] = json!(c);
    }
    if let Some(at) = scheduled_at {
        body["scheduled_at"] = json!(at.to_rfc3339_opts(SecondsFormat::Secs, true));
    }
    body
}

/// Reads what [`request`]'s curl printed: the HTTP status and the body. Errors: no status
/// (curl failed before any answer; its stderr says why).
pub fn response(stdout: &[u8]) -> Result<(u16, String), String> {
    let text = String::from_utf8_lossy(stdout);
    let (body, status) = text
        .rsplit_once(STATUS_MARK)
        .ok_or_else(|| "no answer from Patroni's REST API".to_string())?;
    let status: u16 = status
        .trim()
        .parse()
        .map_err(|_| format!("no HTTP status from Patroni's REST API: {status:?}"))?;
    if status == 0 {
        return Err("Patroni's REST API did not answer".into());
    }
    Ok((status, body.trim().to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_is_on_stdin_only() {
        let pw: SecretString = "s3cret\"x".into();
        let body = switchover_body("db-n1-h1", Some("db-n1-h2"), None);
        let r = request("n1-h1", "POST", "/switchover", Some(&body), &pw);
        assert!(r.argv.iter().all(|a| !a.contains("s3cret")), "{:?}", r.argv);
        assert_eq!(
            String::from_utf8(r.stdin).unwrap(),
            "user = \"berth:s3cret\\\"x\"\n"
        );
        assert_eq!(r.argv.last().unwrap(), "https://n1-h1:8008/switchover");
        assert!(r.argv.contains(&"n1-h1:8008:127.0.0.1".to_string()));
        assert!(
            r.argv
                .contains(&r#"{"candidate":"db-n1-h2","leader":"db-n1-h1"}"#.to_string())
        );
    }

    #[test]
    fn a_scheduled_switchover_names_its_time() {
        let at = DateTime::parse_from_rfc3339("2030-01-02T03:04:05Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(
            switchover_body("a", None, Some(at)),
            json!({"leader": "a", "scheduled_at": "2030-01-02T03:04:05Z"})
        );
    }

    #[test]
    fn responses() {
        assert_eq!(
            response(b"Successfully switched over to \"b\"\nberth-http-status:200"),
            Ok((200, "Successfully switched over to \"b\"".into()))
        );
        assert_eq!(
            response(b"candidate name does not match\nberth-http-status:412")
                .unwrap()
                .0,
            412
        );
        assert!(response(b"\nberth-http-status:000").is_err());
        assert!(response(b"").is_err());
    }
}
