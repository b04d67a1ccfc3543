//! `--probe URL`: a container health check without curl in the image. Plain HTTP/1.1 GET
//! over a TCP socket; healthy means status 200.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, PartialEq, Eq)]
pub struct Target {
    pub authority: String,
    pub path: String,
}

/// `http://host:port/path`; the port is required because the fixture has no default one.
pub fn parse_url(url: &str) -> Result<Target, String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url}: only http:// URLs are probed"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let port = authority.rsplit_once(':').map(|(_, p)| p).unwrap_or("");
    if port.parse::<u16>().is_err() || authority.ends_with(']') {
        return Err(format!("{url}: the URL needs host:port"));
    }
    Ok(Target {
        authority: authority.to_owned(),
        path: path.to_owned(),
    })
}

/// The response's status code, from its status line.
pub fn status_code(response_head: &str) -> Option<u16> {
    let line = response_head.lines().next()?;
    let mut parts = line.split_whitespace();
    parts.next().filter(|v| v.starts_with("HTTP/"))?;
    parts.next()?.parse().ok()
}

/// Fetches `url` and returns its status line, or why there is none.
pub async fn probe(url: &str) -> Result<(u16, String), String> {
    let target = parse_url(url)?;
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(&target.authority)
            .await
            .map_err(|e| e.to_string())?;
        let request = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nUser-Agent: berth-fixture-probe\r\n\r\n",
            target.path, target.authority
        );
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut response = Vec::new();
        stream
            .read_to_end(&mut response)
            .await
            .map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&response).into_owned();
        let code = status_code(&text).ok_or_else(|| "not an HTTP response".to_owned())?;
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        Ok((code, body))
    };
    tokio::time::timeout(PROBE_TIMEOUT, exchange)
        .await
        .map_err(|_| format!("no answer within {PROBE_TIMEOUT:?}"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            parse_url("http://127.0.0.1:8080/health"),
            Ok(Target {
                authority: "127.0.0.1:8080".into(),
                path: "/health".into()
            })
        );
        assert_eq!(parse_url("http://[::1]:80").unwrap().path, "/");
        assert!(parse_url("https://x:1/").is_err());
        assert!(parse_url("http://localhost/health").is_err());
        assert!(parse_url("http://[::1]/health").is_err());
    }

    #[test]
    fn status_lines() {
        assert_eq!(
            status_code("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"),
            Some(200)
        );
        assert_eq!(
            status_code("HTTP/1.1 503 Service Unavailable\r\n"),
            Some(503)
        );
        assert_eq!(status_code("SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(status_code(""), None);
    }
}
