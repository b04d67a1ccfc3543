//! Tests only: a stand-in for the control plane on loopback, answering each connection with
//! canned raw HTTP/1.1, and the options a test client is made with.

use std::sync::{Arc, Mutex};

use crate::args::{Global, Output};

/// The request lines (`GET /v1/hosts HTTP/1.1`) a stand-in got, in order.
pub type Seen = Arc<Mutex<Vec<String>>>;

/// A stand-in that answers its connections, in order, with `answers` (raw HTTP/1.1),
/// closing each after its answer; returns its URL and the request lines it got.
pub async fn server(answers: Vec<Vec<u8>>) -> (String, Seen) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    let seen: Seen = Arc::default();
    let requests = seen.clone();
    tokio::spawn(async move {
        for answer in answers {
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = vec![0u8; 8192];
            let n = s.read(&mut buf).await.unwrap_or(0);
            let head = String::from_utf8_lossy(&buf[..n]).to_string();
            requests
                .lock()
                .unwrap()
                .push(head.lines().next().unwrap_or_default().to_string());
            let _ = s.write_all(&answer).await;
            let _ = s.shutdown().await;
        }
    });
    (url, seen)
}

/// A complete answer: `status` (`404 Not Found`) with `body` as its JSON.
pub fn json(status: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// The global options of a client of `url`, tables for output.
pub fn global(url: &str) -> Global {
    Global {
        url: url.into(),
        token: None,
        ca_cert: None,
        client_cert: None,
        client_key: None,
        output: Output::Table,
    }
}

/// A loopback port that nothing listens on.
pub fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}
