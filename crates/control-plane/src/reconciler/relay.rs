//! An apply's progress lines, from the agent's stream to the task log in batches (ADR 014).

use futures::StreamExt;
use serde_json::{Map, Value, json};

use agent_proto::apply_event;

use super::ReconcileError;
use super::agents::Events;
use super::task_log::TaskLog;

/// An agent's progress lines reach etcd in batches of at most this many lines (ADR 014)...
const LOG_BATCH_LINES: usize = 32;
/// ...written at the latest this long after the batch's first line arrived.
const LOG_BATCH_WINDOW: std::time::Duration = std::time::Duration::from_millis(25);

/// Copies an agent's progress lines into the task log, tagged with host and instance, until
/// the stream ends; returns the apply result if the stream carried one. Lines are written
/// in batches (one etcd transaction each, one key per line), so a chatty apply costs a few
/// writes rather than one per line.
pub(crate) async fn relay(
    stream: &mut Events,
    log: &TaskLog,
    host_id: &str,
    instance_id: &str,
) -> Result<Option<agent_proto::ApplyResult>, ReconcileError> {
    let mut result = None;
    let mut batch: Vec<(String, Map<String, Value>)> = Vec::new();
    let mut deadline = tokio::time::Instant::now();
    loop {
        let next = if batch.is_empty() {
            stream.next().await
        } else {
            match tokio::time::timeout_at(deadline, stream.next()).await {
                Ok(next) => next,
                Err(_) => {
                    log.lines(std::mem::take(&mut batch)).await?;
                    continue;
                }
            }
        };
        let Some(message) = next else { break };
        match message {
            Ok(event) => match event.event {
                Some(apply_event::Event::Log(line)) => {
                    let mut f: Map<String, Value> = line
                        .fields
                        .into_iter()
                        .map(|(k, v)| (k, json!(v)))
                        .collect();
                    f.insert("host_id".into(), json!(host_id));
                    f.insert("instance_id".into(), json!(instance_id));
                    if batch.is_empty() {
                        deadline = tokio::time::Instant::now() + LOG_BATCH_WINDOW;
                    }
                    batch.push((line.message, f));
                    if batch.len() >= LOG_BATCH_LINES {
                        log.lines(std::mem::take(&mut batch)).await?;
                    }
                }
                Some(apply_event::Event::Result(r)) => result = Some(r),
                _ => {}
            },
            Err(s) => {
                log.lines(std::mem::take(&mut batch)).await?;
                return Err(ReconcileError::Step(s.message().to_string()));
            }
        }
    }
    log.lines(batch).await?;
    Ok(result)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use agent_proto::{ApplyEvent, ApplyResult, LogLine};
    use store::{MemoryStore, StateStore};

    use super::*;
    use crate::tasks::new_task;

    /// 40 lines that are all there at once go in two writes (32 and 8), in order, tagged.
    #[tokio::test]
    async fn lines_go_in_batches_in_order() {
        let store = Arc::new(MemoryStore::new());
        let task = new_task("db", spec::TaskType::Update);
        store.create_task(&task).await.unwrap();
        let before = store.writes();
        let mut items: Vec<ApplyEvent> = (0..40)
            .map(|i| ApplyEvent {
                event: Some(apply_event::Event::Log(LogLine {
                    message: format!("line {i}"),
                    ..Default::default()
                })),
            })
            .collect();
        items.push(ApplyEvent {
            event: Some(apply_event::Event::Result(ApplyResult::default())),
        });
        let mut stream: Events = Box::pin(futures::stream::iter(items.into_iter().map(Ok)));
        let log = TaskLog::new(store.clone(), "db", Some(task.task_id.clone()), false);
        let result = relay(&mut stream, &log, "h1", "i1").await.unwrap();
        assert!(result.is_some());
        assert_eq!(store.writes() - before, 2);
        let lines = store
            .read_log("db", &task.task_id, None, 100)
            .await
            .unwrap();
        let messages: Vec<String> = lines.iter().map(|l| l.message.clone()).collect();
        let expected: Vec<String> = (0..40).map(|i| format!("line {i}")).collect();
        assert_eq!(messages, expected);
        assert_eq!(lines[0].fields["instance_id"], "i1");
    }
}
