//! Following a task: its log as a stream, then its final state.
//!
//! `GET /v1/databases/{id}/tasks/{task_id}/log?follow=true[&after_entry_id=ID]` answers
//! `application/x-ndjson`: one `TaskLogEntry` per line, in order; blank lines are
//! keep-alives; the body ends when the task has ended and every entry was sent. A stream
//! that breaks first is opened again after the last entry seen, waiting longer after each
//! failure in a row (backon's exponential policy); then `GET .../tasks/{task_id}` tells how
//! the task ended.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use reqwest::Method;
use serde_json::Value;
use spec::{Task, TaskLogEntry};

use crate::client::{Client, decode};
use crate::error::CliError;

/// A stream silent this long is taken as broken and opened again. The control plane sends
/// keep-alive lines well within it.
const SILENCE: Duration = Duration::from_secs(60);

/// Failures in a row before following gives up: with waits from 0.2 s doubling up to 5 s,
/// about a minute and a half without the control plane.
const ATTEMPTS: usize = 20;

fn retry_policy() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(5))
        .with_max_times(ATTEMPTS)
        .with_jitter()
}

/// Splits a byte stream into lines; bytes of a line split across chunks wait for the rest.
#[derive(Debug, Default)]
pub struct Lines {
    buf: Vec<u8>,
}

impl Lines {
    /// Adds a chunk; returns the lines it completed, without their `\n` (or `\r\n`).
    pub fn push(&mut self, chunk: &[u8]) -> Vec<Vec<u8>> {
        self.buf.extend_from_slice(chunk);
        let mut out = Vec::new();
        while let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
            let mut line: Vec<u8> = self.buf.drain(..=i).collect();
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            out.push(line);
        }
        out
    }

    /// What is left once the stream ended: a last line without its `\n`, if any.
    pub fn finish(&mut self) -> Option<Vec<u8>> {
        let rest = std::mem::take(&mut self.buf);
        (!rest.iter().all(u8::is_ascii_whitespace)).then_some(rest)
    }
}

/// Parses one line of the stream; None for a keep-alive (blank) line.
pub fn parse_line(line: &[u8]) -> Result<Option<TaskLogEntry>, String> {
    if line.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    serde_json::from_slice(line)
        .map(Some)
        .map_err(|e| format!("a log line that is not an entry ({e})"))
}

/// Follows a task's log from after `after` (None: the start), calling `on_entry` for every
/// entry once, in order, and `on_retry` before waiting to reopen a broken stream. Returns the
/// task once it has ended, as the API sent it and decoded. Errors: a refusal (unknown task,
/// 4xx), or the last transient failure once the retries are spent.
pub async fn follow(
    client: &Client,
    database_id: &str,
    task_id: &str,
    mut after: Option<String>,
    mut on_entry: impl FnMut(&TaskLogEntry),
    mut on_retry: impl FnMut(&CliError, Duration),
) -> Result<(Task, Value), CliError> {
    let task_path = ["v1", "databases", database_id, "tasks", task_id];
    let mut backoff = retry_policy().build();
    loop {
        let before = after.clone();
        let streamed = stream(client, &task_path, &mut after, &mut on_entry).await;
        let failure = match streamed {
            Ok(()) => {
                let value = client.get(&task_path).await;
                match value.and_then(|v| Ok((decode::<Task>("the task", v.clone())?, v))) {
                    Ok((task, v)) if task.status.is_terminal() => return Ok((task, v)),
                    Ok(_) => CliError::Connection {
                        what: format!("the log of task {task_id}"),
                        reason: "the stream ended before the task did".into(),
                    },
                    Err(e) => e,
                }
            }
            Err(e) => e,
        };
        if !failure.is_transient() {
            return Err(failure);
        }
        if after != before {
            // Entries came through: the control plane is back, count failures anew.
            backoff = retry_policy().build();
        }
        match backoff.next() {
            Some(wait) => {
                on_retry(&failure, wait);
                tokio::time::sleep(wait).await;
            }
            None => return Err(failure),
        }
    }
}

/// One connection's worth of the log; Ok once the body ended.
async fn stream(
    client: &Client,
    task_path: &[&str],
    after: &mut Option<String>,
    on_entry: &mut impl FnMut(&TaskLogEntry),
) -> Result<(), CliError> {
    let mut segments = task_path.to_vec();
    segments.push("log");
    let mut query = vec![("follow", "true")];
    if let Some(a) = after.as_deref() {
        query.push(("after_entry_id", a));
    }
    let url = client.url(&segments, &query);
    let what = format!("GET {url}");
    let mut resp = client.send(Method::GET, url, None, None).await?;
    let mut lines = Lines::default();
    let mut handle = |line: Vec<u8>, after: &mut Option<String>| -> Result<(), CliError> {
        let entry = parse_line(&line).map_err(|reason| CliError::Decode {
            what: what.clone(),
            reason,
        })?;
        if let Some(e) = entry {
            on_entry(&e);
            *after = Some(e.id);
        }
        Ok(())
    };
    loop {
        let chunk = tokio::time::timeout(SILENCE, resp.chunk())
            .await
            .map_err(|_| CliError::Connection {
                what: what.clone(),
                reason: format!("nothing received for {}s", SILENCE.as_secs()),
            })?
            .map_err(|e| CliError::connection(&what, e))?;
        match chunk {
            Some(bytes) => {
                for line in lines.push(&bytes) {
                    handle(line, after)?;
                }
            }
            None => {
                if let Some(line) = lines.finish() {
                    handle(line, after)?;
                }
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_split_across_chunks_are_joined() {
        let mut l = Lines::default();
        assert!(l.push(b"{\"a\":").is_empty());
        assert_eq!(l.push(b"1}\n\n{\"b\""), [b"{\"a\":1}".to_vec(), Vec::new()]);
        assert_eq!(l.push(b":2}\r\n"), [b"{\"b\":2}".to_vec()]);
        assert_eq!(l.finish(), None);
        l.push(b"{\"c\":3}");
        assert_eq!(l.finish(), Some(b"{\"c\":3}".to_vec()));
    }

    #[test]
    fn a_multibyte_character_split_across_chunks_survives() {
        let text = "{\"message\":\"✓\"}\n".as_bytes();
        let mut l = Lines::default();
        assert!(l.push(&text[..13]).is_empty());
        let lines = l.push(&text[13..]);
        assert_eq!(
            String::from_utf8(lines[0].clone()).unwrap(),
            "{\"message\":\"✓\"}"
        );
    }

    #[test]
    fn blank_lines_are_keep_alives_and_others_must_be_entries() {
        assert_eq!(parse_line(b"").unwrap(), None);
        assert_eq!(parse_line(b"  ").unwrap(), None);
        let e = parse_line(
            br#"{"id":"0192","timestamp":"2025-01-01T00:00:00Z","message":"hi","fields":{"status":"started"}}"#,
        )
        .unwrap()
        .unwrap();
        assert_eq!((e.id.as_str(), e.message.as_str()), ("0192", "hi"));
        assert_eq!(e.fields["status"], "started");
        assert!(parse_line(b"{\"task_status\":\"running\"}").is_err());
    }

    #[test]
    fn the_retry_policy_gives_up() {
        let waits: Vec<Duration> = retry_policy().build().collect();
        assert_eq!(waits.len(), ATTEMPTS);
        assert!(waits.iter().all(|w| *w <= Duration::from_secs(10)));
    }

    use crate::stand_in::{global, json, server};

    fn entry_line(id: &str, message: &str) -> String {
        format!(
            "{{\"id\":\"{id}\",\"timestamp\":\"2025-01-01T00:00:00Z\",\"message\":\"{message}\"}}\n"
        )
    }

    fn chunk(data: &str) -> String {
        format!("{:x}\r\n{data}\r\n", data.len())
    }

    const STREAM_HEAD: &str = "HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\n\
                               transfer-encoding: chunked\r\nconnection: close\r\n\r\n";

    #[tokio::test]
    async fn a_broken_stream_is_resumed_after_the_last_entry_seen() {
        let (e1, e2, e3) = (
            entry_line("01", "one"),
            entry_line("02", "two"),
            entry_line("03", "three"),
        );
        // Broken off mid-line, without the closing chunk.
        let first = format!(
            "{STREAM_HEAD}{}{}",
            chunk(&format!("{e1}\n")),
            chunk(&e2[..10])
        );
        let second = format!("{STREAM_HEAD}{}{}0\r\n\r\n", chunk(&e2), chunk(&e3));
        let task = r#"{"task_id":"t","database_id":"d","scope":"database","entity_id":"d","type":"create","status":"completed","created_at":"2025-01-01T00:00:00Z","updated_at":"2025-01-01T00:00:01Z"}"#;
        let third = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{task}",
            task.len()
        );
        let (url, requests) = server(vec![
            first.into_bytes(),
            second.into_bytes(),
            third.into_bytes(),
        ])
        .await;
        let client = Client::new(&global(&url)).unwrap();
        let mut seen = Vec::new();
        let mut retries = 0;
        let (task, _) = follow(
            &client,
            "d",
            "t",
            None,
            |e| seen.push(e.message.clone()),
            |_, _| retries += 1,
        )
        .await
        .unwrap();
        assert_eq!(seen, ["one", "two", "three"]);
        assert_eq!(retries, 1);
        assert_eq!(task.status, spec::TaskStatus::Completed);
        let requests = requests.lock().unwrap().clone();
        assert_eq!(
            requests,
            [
                "GET /v1/databases/d/tasks/t/log?follow=true HTTP/1.1",
                "GET /v1/databases/d/tasks/t/log?follow=true&after_entry_id=01 HTTP/1.1",
                "GET /v1/databases/d/tasks/t HTTP/1.1",
            ]
        );
    }

    #[tokio::test]
    async fn an_unknown_task_is_refused_at_once() {
        let body = r#"{"name":"not_found","message":"task \"t\" of database \"d\" not found"}"#;
        let (url, requests) = server(vec![json("404 Not Found", body)]).await;
        let client = Client::new(&global(&url)).unwrap();
        let e = follow(
            &client,
            "d",
            "t",
            None,
            |_| {},
            |_, _| panic!("retried a 404"),
        )
        .await
        .unwrap_err();
        assert!(matches!(e, CliError::Refused { status: 404, .. }), "{e}");
        assert_eq!(requests.lock().unwrap().len(), 1);
    }
}
