//! The control plane's HTTP API: URLs from path segments, the bearer token, TLS, and the
//! mapping of answers to [`CliError`]s.

use std::path::Path;
use std::time::Duration;

use reqwest::{Method, Response, Url};
use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::args::Global;
use crate::error::{CliError, api_body, body_of};

/// How long a connection may take to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a plain request may take; a log stream has no such bound (it lasts as long as
/// its task) but gives up on a silent connection instead ([`crate::follow`]).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// A client of one control plane.
pub struct Client {
    http: reqwest::Client,
    base: Url,
    token: Option<SecretString>,
}

impl Client {
    /// A client for `--url` with the token, CA and client certificate the options name.
    /// Errors: a URL that is not http(s), an unreadable or invalid PEM file
    /// ([`CliError::Usage`]).
    pub fn new(global: &Global) -> Result<Client, CliError> {
        let base = Url::parse(&global.url)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.has_host())
            .ok_or_else(|| {
                CliError::Usage(format!(
                    "--url {:?}: expected http://HOST:PORT or https://HOST:PORT",
                    global.url
                ))
            })?;
        let mut builder = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .user_agent(concat!("berth/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = &global.ca_cert {
            let pem = read(path, "--ca-cert")?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| CliError::Usage(format!("--ca-cert {}: {e}", path.display())))?;
            if certs.is_empty() {
                return Err(CliError::Usage(format!(
                    "--ca-cert {}: no certificate in the file",
                    path.display()
                )));
            }
            for c in certs {
                builder = builder.add_root_certificate(c);
            }
        }
        if let (Some(cert), Some(key)) = (&global.client_cert, &global.client_key) {
            let mut pem = read(cert, "--client-cert")?;
            pem.push(b'\n');
            pem.extend(read(key, "--client-key")?);
            let identity = reqwest::Identity::from_pem(&pem).map_err(|e| {
                CliError::Usage(format!(
                    "--client-cert {} / --client-key {}: {e}",
                    cert.display(),
                    key.display()
                ))
            })?;
            builder = builder.identity(identity);
        }
        let http = builder
            .build()
            .map_err(|e| CliError::Usage(format!("HTTP client: {e}")))?;
        Ok(Client {
            http,
            base,
            token: global.token.clone().map(SecretString::from),
        })
    }

    /// The URL of `segments` under the base URL, each segment percent-encoded (an id never
    /// turns into another path), with `query` pairs.
    pub fn url(&self, segments: &[&str], query: &[(&str, &str)]) -> Url {
        url_of(&self.base, segments, query)
    }

    /// Sends a request and returns the answer if it is a 2xx. Errors: [`CliError::Refused`]
    /// for a 4xx with the API's error body, [`CliError::NotTheApi`] for a 4xx without it,
    /// [`CliError::Server`] for a 5xx, [`CliError::Connection`] when no answer came.
    pub async fn send(
        &self,
        method: Method,
        url: Url,
        body: Option<&Value>,
        timeout: Option<Duration>,
    ) -> Result<Response, CliError> {
        let what = format!("{method} {url}");
        let mut req = self.http.request(method, url);
        if let Some(t) = timeout {
            req = req.timeout(t);
        }
        if let Some(token) = &self.token {
            req = req.bearer_auth(token.expose_secret());
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| CliError::connection(&what, e))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let text = resp.text().await.unwrap_or_default();
        let status = status.as_u16();
        if (500..600).contains(&status) {
            // A proxy's 502 while the control plane restarts is worth asking again: kept as
            // a server error (transient), whatever its body.
            return Err(CliError::Server {
                what,
                status,
                body: Some(body_of(status, &text)),
            });
        }
        match api_body(&text) {
            Some(body) => Err(CliError::Refused { status, body }),
            None => Err(CliError::NotTheApi {
                url: self.base.to_string(),
                status,
            }),
        }
    }

    /// A request whose 2xx answer is JSON; returns it as sent.
    pub async fn json(
        &self,
        method: Method,
        segments: &[&str],
        query: &[(&str, &str)],
        body: Option<&Value>,
    ) -> Result<Value, CliError> {
        let url = self.url(segments, query);
        let what = format!("{method} {url}");
        let resp = self.send(method, url, body, Some(REQUEST_TIMEOUT)).await?;
        let text = resp
            .text()
            .await
            .map_err(|e| CliError::connection(&what, e))?;
        serde_json::from_str(&text).map_err(|e| CliError::Decode {
            what,
            reason: e.to_string(),
        })
    }

    /// `GET` of `segments`, as JSON.
    pub async fn get(&self, segments: &[&str]) -> Result<Value, CliError> {
        self.json(Method::GET, segments, &[], None).await
    }

    /// `GET` of `segments`; None for a 404.
    pub async fn get_optional(&self, segments: &[&str]) -> Result<Option<Value>, CliError> {
        match self.get(segments).await {
            Ok(v) => Ok(Some(v)),
            Err(CliError::Refused { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// Decodes an answer into one of the API's types, naming what was asked when it does not fit.
pub fn decode<T: DeserializeOwned>(what: &str, v: Value) -> Result<T, CliError> {
    serde_json::from_value(v).map_err(|e| CliError::Decode {
        what: what.to_string(),
        reason: e.to_string(),
    })
}

fn url_of(base: &Url, segments: &[&str], query: &[(&str, &str)]) -> Url {
    let mut url = base.clone();
    url.set_query(None);
    url.set_fragment(None);
    if let Ok(mut path) = url.path_segments_mut() {
        path.pop_if_empty().extend(segments);
    }
    if !query.is_empty() {
        url.query_pairs_mut().extend_pairs(query);
    }
    url
}

fn read(path: &Path, option: &str) -> Result<Vec<u8>, CliError> {
    std::fs::read(path).map_err(|e| CliError::Usage(format!("{option} {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_encoded_and_appended_to_the_base_path() {
        let base = Url::parse("http://127.0.0.1:3000").unwrap();
        assert_eq!(
            url_of(&base, &["v1", "databases", "a/../b?x"], &[]).as_str(),
            "http://127.0.0.1:3000/v1/databases/a%2F..%2Fb%3Fx"
        );
        let behind_a_proxy = Url::parse("https://cp.example.org/berth/").unwrap();
        assert_eq!(
            url_of(
                &behind_a_proxy,
                &["v1", "databases", "x", "tasks", "t", "log"],
                &[("follow", "true"), ("after_entry_id", "e1")]
            )
            .as_str(),
            "https://cp.example.org/berth/v1/databases/x/tasks/t/log?follow=true&after_entry_id=e1"
        );
    }

    fn global(url: &str) -> Global {
        Global {
            url: url.into(),
            token: None,
            ca_cert: None,
            client_cert: None,
            client_key: None,
            output: crate::args::Output::Table,
        }
    }

    #[test]
    fn only_http_urls_are_accepted() {
        assert!(Client::new(&global("http://127.0.0.1:3000")).is_ok());
        for bad in ["127.0.0.1:3000", "ftp://x", "not a url"] {
            let e = Client::new(&global(bad)).err().expect(bad);
            assert!(matches!(e, CliError::Usage(_)), "{bad}: {e}");
        }
    }

    #[test]
    fn an_unreadable_or_empty_ca_file_is_a_usage_error() {
        let mut g = global("https://cp:3000");
        g.ca_cert = Some("/nonexistent/ca.pem".into());
        let e = Client::new(&g).err().unwrap();
        assert!(
            e.to_string().starts_with("--ca-cert /nonexistent/ca.pem:"),
            "{e}"
        );
        let empty = tempfile::NamedTempFile::new().unwrap();
        g.ca_cert = Some(empty.path().to_path_buf());
        let e = Client::new(&g).err().unwrap();
        assert!(e.to_string().contains("no certificate"), "{e}");
    }

    /// A loopback port that nothing listens on.
    fn closed_port() -> u16 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    }

    /// A one-shot server on loopback that answers the first connection with `answer` (raw
    /// bytes, possibly nothing) and closes it.
    async fn answering(answer: &'static [u8]) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
            let _ = s.write_all(answer).await;
            let _ = s.shutdown().await;
        });
        url
    }

    #[tokio::test]
    async fn a_closed_port_is_a_connection_error() {
        let client = Client::new(&global(&format!("http://127.0.0.1:{}", closed_port()))).unwrap();
        let e = client.get(&["v1", "hosts"]).await.unwrap_err();
        assert!(matches!(e, CliError::Connection { .. }), "{e}");
        assert!(e.to_string().contains("/v1/hosts: "), "{e}");
        assert_eq!(e.exit(), crate::error::Exit::Unreachable);
    }

    #[tokio::test]
    async fn https_to_a_plain_http_port_says_to_use_http() {
        let answer = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
        let url = answering(answer).await.replace("http://", "https://");
        let client = Client::new(&global(&url)).unwrap();
        let e = client.get(&["v1", "hosts"]).await.unwrap_err();
        assert!(matches!(e, CliError::Connection { .. }), "{e}");
        assert_eq!(
            e.to_string(),
            format!("GET {url}/v1/hosts: the server at {url} does not speak TLS; use http://")
        );
    }

    #[tokio::test]
    async fn a_connection_closed_without_an_answer_is_a_connection_error() {
        let client = Client::new(&global(&answering(b"").await)).unwrap();
        let e = client.get(&["v1", "hosts"]).await.unwrap_err();
        assert!(matches!(e, CliError::Connection { .. }), "{e}");
    }

    #[tokio::test]
    async fn a_5xx_that_is_not_json_is_a_server_error() {
        let answer = b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 11\r\nconnection: close\r\n\r\nupstream go";
        let client = Client::new(&global(&answering(answer).await)).unwrap();
        let e = client.get(&["v1", "hosts"]).await.unwrap_err();
        assert!(matches!(e, CliError::Server { status: 502, .. }), "{e}");
        assert!(
            e.to_string()
                .ends_with("answered 502: http_502: bad gateway: upstream go"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn a_4xx_that_is_not_the_api_s_exits_4_even_for_get_optional() {
        // Some other HTTP server on --url: a plain 404 page, not the API's error body.
        let answer = b"HTTP/1.1 404 Not Found\r\ncontent-type: text/plain\r\nconnection: close\r\ncontent-length: 9\r\n\r\nnot found";
        let url = answering(answer).await;
        let client = Client::new(&global(&url)).unwrap();
        let e = client
            .get_optional(&["v1", "databases", "x"])
            .await
            .unwrap_err();
        assert!(matches!(e, CliError::NotTheApi { status: 404, .. }), "{e}");
        assert_eq!(
            e.to_string(),
            format!("the server at {url}/ did not answer as the berth API (status 404)")
        );
        assert_eq!(e.exit(), crate::error::Exit::Unreachable);
    }

    #[tokio::test]
    async fn a_404_is_none_for_get_optional_and_a_refusal_otherwise() {
        let answer = b"HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: 48\r\n\r\n{\"name\":\"not_found\",\"message\":\"database x gone\"}";
        let client = Client::new(&global(&answering(answer).await)).unwrap();
        assert!(
            client
                .get_optional(&["v1", "databases", "x"])
                .await
                .unwrap()
                .is_none()
        );
        let client = Client::new(&global(&answering(answer).await)).unwrap();
        let e = client.get(&["v1", "databases", "x"]).await.unwrap_err();
        assert_eq!(e.to_string(), "not_found: database x gone");
    }
}
